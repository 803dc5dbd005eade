//! `make bench-lkl` (second table): disks through the kernel library vs the host.
//!
//! An ext4 image built by mke2fs from a tree holding one large file and a directory of
//! small ones is served by the virtio block device and mounted inside the kernel. We
//! measure a sequential read of the large file (cold: the first read after mount, with
//! the image also dropped from the host's page cache; warm: the second read), stat of
//! every small file (cold, then warm) and open+close of one file, and the same
//! operations on the host tree the image was built from. Prints a markdown table.
//!
//! Sizes: `KBOX_BENCH_DISK_MIB` (default 64) and `KBOX_BENCH_FILES` (default 10000);
//! `KBOX_BENCH_CALLS` (default 20000) open+close calls per batch; `KBOX_BENCH_MEM_MIB`
//! the kernel's RAM (default: twice the file plus 64 MiB, so the warm read is cached).
use kbox_lkl::sys::{self, Syscalls};
use kbox_lkl::{BootConfig, Kernel, add_disk};
use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const CHUNK: usize = 1 << 20;
const BATCHES: usize = 7;

fn env_num(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn c(s: &str) -> CString {
    CString::new(s).expect("bench paths have no NUL")
}

/// Drops `path` from the host's page cache (it must be clean: sync it first).
fn drop_host_cache(path: &Path) {
    let file = File::open(path).expect("open for fadvise");
    file.sync_all().expect("sync before dropping the cache");
    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).expect("fadvise");
}

/// Seconds to read `path` from the start to the end in 1 MiB reads, through the kernel.
fn kernel_read(k: &Kernel, path: &str, expect: u64) -> f64 {
    let mut buf = vec![0u8; CHUNK];
    let start = Instant::now();
    let fd = k.open(&c(path), sys::O_RDONLY, 0).expect("open in kernel");
    let mut total = 0u64;
    loop {
        let n = k.read(fd, &mut buf).expect("read in kernel");
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    k.close(fd).expect("close");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(total, expect, "short read through the kernel");
    secs
}

/// The same on the host.
fn host_read(path: &Path, expect: u64) -> f64 {
    let mut buf = vec![0u8; CHUNK];
    let start = Instant::now();
    let mut file = File::open(path).expect("open on host");
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).expect("read on host");
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(total, expect, "short read on the host");
    secs
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// µs per call, the median of several batches.
fn per_call_us(calls: u32, mut body: impl FnMut()) -> f64 {
    median(
        (0..BATCHES)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..calls {
                    body();
                }
                start.elapsed().as_secs_f64() * 1e6 / f64::from(calls)
            })
            .collect(),
    )
}

/// µs per stat over every name, once.
fn stat_all_us(names: &[CString], mut stat: impl FnMut(&CString)) -> f64 {
    let start = Instant::now();
    for name in names {
        stat(name);
    }
    start.elapsed().as_secs_f64() * 1e6 / names.len() as f64
}

fn build_tree(dir: &Path, mib: u32, files: u32) -> (PathBuf, PathBuf) {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("many")).expect("tree dirs");
    // Incompressible-looking bytes (xorshift), written in 1 MiB pieces.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut big = File::create(tree.join("big.bin")).expect("big file");
    let mut chunk = vec![0u8; CHUNK];
    for _ in 0..mib {
        for word in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        std::io::Write::write_all(&mut big, &chunk).expect("write big file");
    }
    drop(big);
    for i in 0..files {
        std::fs::write(tree.join(format!("many/f{i}")), i.to_le_bytes()).expect("small file");
    }
    let image = dir.join("bench.ext4");
    // Room for the data, the inodes and the journal.
    let size_mib = u64::from(mib) * 5 / 4 + u64::from(files) / 64 + 64;
    let made = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-N"])
        .arg((files + 1024).to_string())
        .arg("-d")
        .arg(&tree)
        .arg(&image)
        .arg(format!("{size_mib}M"))
        .output()
        .expect("mke2fs runs");
    assert!(
        made.status.success(),
        "mke2fs failed: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    (tree, image)
}

fn main() {
    let mib = env_num("KBOX_BENCH_DISK_MIB", 64).max(1);
    let files = env_num("KBOX_BENCH_FILES", 10_000).max(1);
    let calls = env_num("KBOX_BENCH_CALLS", 20_000).max(1);
    let dir = std::env::temp_dir().join(format!("kbox-bench-disk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let (tree, image) = build_tree(&dir, mib, files);
    let big_len = u64::from(mib) << 20;
    let host_big = tree.join("big.bin");

    // Host side first: cold (dropped from the page cache), then warm.
    drop_host_cache(&host_big);
    let host_cold = host_read(&host_big, big_len);
    let host_warm = host_read(&host_big, big_len);
    let host_names: Vec<CString> = (0..files)
        .map(|i| c(&format!("{}/many/f{i}", tree.display())))
        .collect();
    let host_stat_warm = {
        let stat = |n: &CString| {
            rustix::fs::stat(n.as_c_str()).expect("host stat");
        };
        stat_all_us(&host_names, stat); // fills the host's dentry cache
        stat_all_us(&host_names, stat)
    };
    let host_file = c(&format!("{}/many/f0", tree.display()));
    let host_open_close = per_call_us(calls, || {
        let fd = rustix::fs::open(
            host_file.as_c_str(),
            rustix::fs::OFlags::RDONLY,
            rustix::fs::Mode::empty(),
        )
        .expect("host open");
        drop(fd);
    });

    // Kernel side: enough RAM that the warm read is served from its page cache.
    drop_host_cache(&image);
    let disk = add_disk(&image, false).expect("add disk");
    let k = Kernel::boot(&BootConfig {
        memory_mib: env_num("KBOX_BENCH_MEM_MIB", mib.saturating_mul(2).max(128) + 64),
        ..BootConfig::default()
    })
    .expect("kernel boots");
    k.mount_disk(disk, "ext4", "/mnt/bench", false)
        .expect("mount image");
    let lkl_cold = kernel_read(&k, "/mnt/bench/big.bin", big_len);
    let lkl_warm = kernel_read(&k, "/mnt/bench/big.bin", big_len);
    let names: Vec<CString> = (0..files)
        .map(|i| c(&format!("/mnt/bench/many/f{i}")))
        .collect();
    let lkl_stat_cold = stat_all_us(&names, |n| {
        k.stat(n).expect("kernel stat");
    });
    let lkl_stat_warm = stat_all_us(&names, |n| {
        k.stat(n).expect("kernel stat");
    });
    let lkl_open_close = per_call_us(calls, || {
        let fd = k
            .open(c"/mnt/bench/many/f0", sys::O_RDONLY, 0)
            .expect("kernel open");
        k.close(fd).expect("kernel close");
    });
    k.halt().expect("halt");

    let mbps = |secs: f64| big_len as f64 / secs / f64::from(1u32 << 20);
    println!(
        "| disk: ext4 image, {mib} MiB file, {files} files | kernel library | host | kernel/host time |"
    );
    println!("|---|---|---|---|");
    println!(
        "| sequential read, cold (first after mount) | {:.0} MiB/s | {:.0} MiB/s | {:.2}x |",
        mbps(lkl_cold),
        mbps(host_cold),
        lkl_cold / host_cold
    );
    println!(
        "| sequential read, warm (second) | {:.0} MiB/s | {:.0} MiB/s | {:.2}x |",
        mbps(lkl_warm),
        mbps(host_warm),
        lkl_warm / host_warm
    );
    println!("| stat of {files} files, cold (first after mount) | {lkl_stat_cold:.2} µs | | |");
    println!(
        "| stat of {files} files, warm | {lkl_stat_warm:.2} µs | {host_stat_warm:.2} µs | {:.2}x |",
        lkl_stat_warm / host_stat_warm
    );
    println!(
        "| open+close (one file) | {lkl_open_close:.3} µs | {host_open_close:.3} µs | {:.2}x |",
        lkl_open_close / host_open_close
    );
    let _ = std::fs::remove_dir_all(&dir);
}
