//! Counts the syscall sites of ELF files the way the rewrite tier will see them: `svc #0`
//! or `syscall` instructions (with the number loaded right before, or not), and on aarch64
//! the calls cancel-wrapper promotion would redirect, and whether it is allowed for the
//! file (static, no site that may create a thread or process).
//!
//!     cargo run -p kbox-arch --example sites -- FILE...

use kbox_arch::elf::{self, Machine};
use kbox_arch::site::{self, SiteClass};

fn main() {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        eprintln!("usage: sites ELF...");
        std::process::exit(2);
    }
    let mut failed = false;
    for path in &files {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("sites: {path}: {e}");
                failed = true;
                continue;
            }
        };
        let image = match elf::parse(&data) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("sites: {path}: not an ELF kbox can read: {e:?}");
                failed = true;
                continue;
            }
        };
        let sites = site::scan(&image);
        let wrappers = sites
            .iter()
            .filter(|s| matches!(s.class, SiteClass::Wrapper { .. }))
            .count();
        let mut line = format!(
            "{path}: {:?}, {}, {} sites ({wrappers} with the number beside them, {} bare)",
            image.machine,
            if image.is_static() {
                "static"
            } else {
                "dynamic"
            },
            sites.len(),
            sites.len() - wrappers
        );
        if image.machine == Machine::Aarch64 {
            let promotable: usize = image
                .code
                .iter()
                .map(|seg| kbox_arch::aarch64::cancel::find(seg.bytes, seg.vaddr).len())
                .sum();
            let allowed = kbox_arch::aarch64::cancel::promotion_allowed(&image);
            line.push_str(&format!(
                "; {promotable} cancel-wrapper calls, promotion {}",
                if allowed {
                    "allowed"
                } else {
                    "not allowed (dynamic, or it may fork or start threads)"
                }
            ));
        }
        println!("{line}");
    }
    if failed {
        std::process::exit(1);
    }
}
