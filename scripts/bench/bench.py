#!/usr/bin/env python3
"""make bench's guest part: the same micro-benchmark and workloads natively, under kbox (each
tier that exists) and under proot, in one run, printed as one markdown table.

Native and proot run on a copy of the image's tree extracted to a host directory; kbox runs
on a copy of the image itself. Every figure is a median of repeated runs; a command that
fails stops the benchmark (a wrong result is not a time).

usage: bench.py --kbox KBOX --image ROOTFS [--debian IMAGE] [--calls N] [--runs N] [--save DIR]
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

# (name, prepare (untimed), run (timed)); {R} is the tree's root, "" inside a sandbox.
WORKLOADS = [
    (
        "tar c + tar x, 2,000 small files",
        "mkdir -p {R}/var/wl/src && cd {R}/var/wl/src && i=0; "
        "while [ $i -lt {F} ]; do echo file $i > f$i; i=$((i+1)); done",
        "cd {R}/var/wl && rm -rf x t.tar && tar cf t.tar src && mkdir x && cd x && tar xf ../t.tar "
        "&& [ $(ls | wc -l) -eq 1 ] && [ $(ls src | wc -l) -eq {F} ]",
    ),
    ("find / -type f | wc -l", None, "find {R}/ -xdev -type f | wc -l >/dev/null"),
    (
        "shell loop, 1,000 × echo/test/[",
        None,
        "i=0; while [ $i -lt {N} ]; do echo $i >/dev/null; test $i -ge 0; [ $i -lt {N} ]; "
        "i=$((i+1)); done",
    ),
    (
        "sort of a 10 MB file",
        "mkdir -p {R}/var/wl && awk 'BEGIN { srand(1); for (i = 0; i < {L}; i++) "
        'printf "%09d\\n", int(rand() * 1e9) }\' > {R}/var/wl/big',
        "sort {R}/var/wl/big > {R}/var/wl/sorted && [ $(wc -l < {R}/var/wl/sorted) -eq {L} ]",
    ),
]

PYTHON_SCRIPT = (
    "import os, sys; n = sum(1 for _ in os.scandir(sys.prefix + '/lib/python3.11')); "
    "assert n > 10, n; print(n)"
)


def fill(template, **values):
    """Substitutes {NAME} placeholders (str.format would trip over awk's braces)."""
    for k, v in values.items():
        template = template.replace("{" + k + "}", str(v))
    return template


def die(msg):
    print(f"bench: {msg}", file=sys.stderr)
    sys.exit(1)


def run(argv, env=None, cwd=None):
    """Runs argv, returns (seconds, stdout); a failure stops the benchmark."""
    start = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, env=env, cwd=cwd)
    elapsed = time.perf_counter() - start
    if p.returncode != 0:
        die(f"{' '.join(argv[:6])}... exited {p.returncode}: {p.stderr.decode(errors='replace')[-400:]}")
    return elapsed, p.stdout.decode(errors="replace")


def extract(image, into):
    os.makedirs(into, exist_ok=True)
    p = subprocess.run(["debugfs", "-R", f"rdump / {into}", image], capture_output=True)
    if p.returncode != 0:
        die(f"cannot extract {image}")


def copy_image(image, into):
    subprocess.run(["cp", "--sparse=always", image, into], check=True)
    return into


class Env:
    """One column: how to run a shell command and a program in it."""

    def __init__(self, name, tree=None, image=None, kbox=None, opts=()):
        self.name, self.tree, self.image, self.kbox = name, tree, image, kbox
        self.opts = list(opts)

    def root(self):
        return self.tree if self.name == "native" else ""

    def argv(self, prog_args):
        if self.name == "native":
            return [self.tree + prog_args[0]] + prog_args[1:]
        if self.name == "proot":
            return ["proot", "-r", self.tree, "-b", "/proc", "-b", "/dev", "-w", "/"] + prog_args
        return [self.kbox] + self.opts + ["-S", self.image, "--"] + prog_args

    def env(self):
        """kbox keeps exec copies per image under $HOME/.cache; the bench's image copies are
        temporary, so their stores go with them."""
        if self.kbox:
            return dict(os.environ, HOME=os.path.dirname(self.image))
        return None

    def sh(self, script):
        if self.name == "native":
            env = dict(os.environ, PATH=f"{self.tree}/bin:{self.tree}/usr/bin:{self.tree}/sbin")
            return [self.tree + "/bin/busybox", "sh", "-c", script], env
        return self.argv(["/bin/sh", "-c", script]), self.env()


def micro(env, calls):
    work = "/tmp/bench-" + env.name.replace(" ", "-")
    if env.name == "native":
        os.makedirs(env.tree + work, exist_ok=True)
        argv = [env.tree + "/opt/kbox-tests/bench", env.tree + work, str(calls)]
    else:
        if env.name == "proot":
            os.makedirs(env.tree + work, exist_ok=True)
            argv = env.argv(["/opt/kbox-tests/bench", work, str(calls)])
        else:
            argv = env.argv(["/opt/kbox-tests/bench", work, str(calls)])
    _, out = run(argv, env=env.env())
    return {line.split()[0]: float(line.split()[1]) for line in out.splitlines() if line.strip()}


def workloads(env, runs, scale):
    results = {}
    sizes = dict(F=max(1, 2000 // scale), L=max(1, 1000000 // scale), N=max(1, 1000 // scale))
    for name, prep, body in WORKLOADS:
        r = env.root()
        if prep:
            argv, e = env.sh(fill(prep, R=r, **sizes))
            run(argv, env=e)
        times = []
        for _ in range(runs):
            argv, e = env.sh(fill(body, R=r, **sizes))
            t, _ = run(argv, env=e)
            times.append(t)
        results[name] = statistics.median(times)
    return results


NET_MODES = (("kbox --net=host", "--net=host", "127.0.0.1"), ("kbox --net=user", "--net=user", "10.0.2.2"))


HTTP_DOWNLOADS = 5


def serve_files(served):
    """A host HTTP/1.0 server on 127.0.0.1 for the files in `served`: a thread per
    connection, the body sent with sendfile. Python's http.server copies each file
    through Python and its speed drifts by more than the ways differ; this one keeps up
    with any client, so the client's side is what the row compares. Returns (server
    socket, port)."""
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)

    def answer(conn):
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                got = conn.recv(4096)
                if not got:
                    return
                request += got
            name = os.path.basename(request.split()[1].decode())
            path = os.path.join(served, name)
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                conn.sendfile(f)

    def accept_all():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_all, daemon=True).start()
    return listener, listener.getsockname()[1]


def http_throughput(kbox, image, tree, runs, megabytes):
    """MB/s of busybox wget fetching a file from an HTTP server on the host's 127.0.0.1:
    natively, and in kbox with --net=host (at 127.0.0.1) and --net=user (at 10.0.2.2, the
    host's loopback through passt); the server is the same for all. Each run is a shell
    loop of HTTP_DOWNLOADS downloads, which spreads kbox's start-up (and its variation)
    over them; each way's time for the same loop over a one-byte file (programs and kbox
    starting, passt included, the connections, the requests) is taken off its time for
    the large one: the transfers are what is compared."""
    served = tempfile.mkdtemp(prefix="kbox-bench-http.")
    with open(os.path.join(served, "blob"), "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(megabytes):
            f.write(chunk)
    with open(os.path.join(served, "byte"), "wb") as f:
        f.write(b"k")

    listener, port = serve_files(served)
    loop = ('i=0; while [ $i -lt {n} ]; do "$0" wget -q -O /dev/null "$1" || exit 1; '
            'i=$((i+1)); done').format(n=HTTP_DOWNLOADS)
    try:
        home = dict(os.environ, HOME=os.path.dirname(image))
        ways = {"native": ([tree + "/bin/busybox", "sh", "-c", loop, tree + "/bin/busybox"],
                           "127.0.0.1", None)}
        for name, flag, host in NET_MODES:
            ways[name] = ([kbox, flag, "-S", image, "--", "/bin/busybox", "sh", "-c", loop,
                           "/bin/busybox"], host, home)
        # Rounds of one run of each file each way, in turn, so that every way meets the
        # same state of the machine.
        secs = {name: {"blob": [], "byte": []} for name in ways}
        for _ in range(runs):
            for name, (prefix, host, env) in ways.items():
                for f in ("blob", "byte"):
                    argv = prefix + [f"http://{host}:{port}/{f}"]
                    secs[name][f].append(run(argv, env=env)[0])
        out = {}
        for name, s in secs.items():
            transfer = statistics.median(s["blob"]) - statistics.median(s["byte"])
            out[name] = megabytes * HTTP_DOWNLOADS / max(transfer, 1e-6)
        return out
    finally:
        listener.close()
        shutil.rmtree(served, ignore_errors=True)


CONNECT_SCRIPT = """
import socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t = time.perf_counter()
for _ in range(n):
    s = socket.create_connection((host, port))
    assert s.recv(1) == b"k"
    s.close()
print((time.perf_counter() - t) / n * 1e6)
"""


def connection_setup(dtree, dimage, kbox, count):
    """µs per TCP connection (connect, first byte from the server, close) to a server on
    the host's 127.0.0.1, timed by python3 itself: natively (the Debian tree's python3)
    and in kbox on the Debian image, in each network mode."""
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.sendall(b"k")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    home = dict(os.environ, HOME=os.path.dirname(dimage))
    try:
        argv = [dtree + "/usr/bin/python3", "-c", CONNECT_SCRIPT, "127.0.0.1", str(port), str(count)]
        p = subprocess.run(argv, capture_output=True, text=True, check=True)
        out = {"native": float(p.stdout)}
        for name, flag, host in NET_MODES:
            argv = [kbox, flag, "-S", dimage, "--", "/usr/bin/python3", "-c", CONNECT_SCRIPT,
                    host, str(port), str(count)]
            p = subprocess.run(argv, capture_output=True, text=True, env=home)
            if p.returncode != 0:
                die(f"{name} connection run failed: {p.stderr.strip()}")
            out[name] = float(p.stdout)
        return out
    finally:
        listener.close()


def python_workload(env, runs):
    if env.name == "native":
        argv = [env.tree + "/usr/bin/python3", "-c", PYTHON_SCRIPT]
    else:
        argv = env.argv(["/usr/bin/python3", "-c", PYTHON_SCRIPT])
    return statistics.median(run(argv, env=env.env())[0] for _ in range(runs))


def kbox_startup_and_rss(kbox, image, runs):
    home = dict(os.environ, HOME=os.path.dirname(image))
    times = [run([kbox, "-S", image, "--", "/bin/true"], env=home)[0] for _ in range(runs)]
    p = subprocess.Popen([kbox, "-S", image, "--", "/bin/sh", "-c", "find / -xdev -type f | wc -l"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=home)
    _, status, usage = os.wait4(p.pid, 0)
    if status != 0:
        die("kbox find run failed")
    return statistics.median(times), usage.ru_maxrss / 1024


def counting_cost(kbox, image):
    """The median of kbox's own measure of --stats bookkeeping per call (overhead_ns)."""
    home = dict(os.environ, HOME=os.path.dirname(image))
    costs = []
    for _ in range(5):
        p = subprocess.run([kbox, "--stats=json", "-S", image, "--", "/bin/true"], env=home,
                           capture_output=True, text=True)
        if p.returncode != 0:
            die(f"kbox --stats run failed: {p.stderr.strip()}")
        costs.append(json.loads(p.stderr.strip().splitlines()[-1])["overhead_ns"])
    return statistics.median(costs)


def fmt_ratio(value, base):
    if value is None:
        return "—"
    return f"{value:.3g} ({value / base:.1f}×)"


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kbox", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--debian")
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--save")
    ap.add_argument("--scale-down", type=int, default=1,
                    help="divide workload sizes by this (make check runs everything tiny)")
    a = ap.parse_args()
    have_proot = shutil.which("proot") is not None
    with tempfile.TemporaryDirectory(prefix="kbox-bench.") as tmp:
        tree = os.path.join(tmp, "tree")
        extract(a.image, tree)
        image = copy_image(a.image, os.path.join(tmp, "rootfs.ext4"))
        def tier(mode, img=image):
            return Env(f"kbox {mode}", image=img, kbox=a.kbox, opts=[f"--syscall-mode={mode}"])

        # auto picks per program: a column of its own shows what that gives.
        envs = [Env("native", tree=tree)] + [tier(t) for t in ("seccomp", "trap", "rewrite", "auto")]
        if have_proot:
            envs.append(Env("proot", tree=tree))
        m, w, py = {}, {}, {}
        for e in envs:
            print(f"bench: {e.name}: micro-benchmark", file=sys.stderr)
            m[e.name] = micro(e, a.calls)
            print(f"bench: {e.name}: workloads", file=sys.stderr)
            w[e.name] = workloads(e, a.runs, a.scale_down)
        # What --stats costs: the micro-benchmark with counting on (a column of its own),
        # and kbox's own timing of its per-call bookkeeping.
        counted = Env("kbox seccomp --stats", image=image, kbox=a.kbox,
                      opts=["--syscall-mode=seccomp", "--stats=json"])
        print(f"bench: {counted.name}: micro-benchmark", file=sys.stderr)
        m[counted.name] = micro(counted, a.calls)
        envs.insert(2, counted)
        stats_cost = counting_cost(a.kbox, image)
        if a.debian:
            dtree = os.path.join(tmp, "debian")
            extract(a.debian, dtree)
            dimage = copy_image(a.debian, os.path.join(tmp, "debian.ext4"))
            denvs = [Env("native", tree=dtree)] + [tier(t, dimage) for t in
                                                    ("seccomp", "trap", "rewrite", "auto")]
            if have_proot:
                denvs.append(Env("proot", tree=dtree))
            for e in denvs:
                print(f"bench: {e.name}: python3", file=sys.stderr)
                # Start-up is short and the machine noisy: more runs for a steady median.
                py[e.name] = python_workload(e, max(a.runs, 10))
        startup, rss = kbox_startup_and_rss(a.kbox, image, max(a.runs, 5))
        megabytes = max(1, 100 // a.scale_down)
        print(f"bench: HTTP, {megabytes} MB", file=sys.stderr)
        http = http_throughput(a.kbox, image, tree, max(a.runs, 5), megabytes)
        conn = None
        if a.debian:
            print("bench: TCP connection set-up", file=sys.stderr)
            conn = connection_setup(dtree, dimage, a.kbox, max(1, 1000 // a.scale_down))

    cols = [e.name for e in envs]
    lines = [
        f"kbox bench, {datetime.date.today()}, {cpu_name()}, {os.cpu_count()} CPUs, "
        f"host kernel {platform.release()}; micro: median of 7 batches of {a.calls} calls; "
        f"workloads: median of {a.runs} runs",
        "",
        "| operation | " + " | ".join(cols) + " | seccomp ÷ floor | trap ÷ SIGSYS |",
        "|---|" + "---|" * (len(cols) + 2),
    ]
    # The notification floor: a call kbox's seccomp tier answers ENOSYS at once (bench.c's
    # "enosys" row), measured in the same run; each seccomp row is also given as a multiple
    # of it.
    floor = m["kbox seccomp"].get("enosys")
    # The trap tier's floor: a bare SIGSYS round trip (bench.c's "sigsys" row, a process
    # trapping a syscall to a handler of its own), measured natively in the same run.
    sigsys = m["native"].get("sigsys")
    for op, base in m["native"].items():
        cells = [f"{base:.3g} µs"] + [fmt_ratio(m[c].get(op), base) for c in cols[1:]]
        value = m["kbox seccomp"].get(op)
        cells.append(f"{value / floor:.2f}×" if floor and value else "—")
        value = m["kbox trap"].get(op)
        cells.append(f"{value / sigsys:.2f}×" if sigsys and value and op != "sigsys" else "—")
        label = {"enosys": "enosys: notification floor",
                 "sigsys": "sigsys: bare SIGSYS round trip"}.get(op, op)
        lines.append(f"| {label} (µs/call) | " + " | ".join(cells) + " |")
    for op, base in w["native"].items():
        cells = [f"{base:.3g} s"] + [fmt_ratio(w.get(c, {}).get(op), base) for c in cols[1:]]
        cells += ["", ""]
        label = op.replace("|", "\\|")
        lines.append(f"| {label} (s) | " + " | ".join(cells) + " |")
    if py:
        base = py["native"]
        cells = [f"{base:.3g} s"] + [fmt_ratio(py.get(c), base) for c in cols[1:]] + ["", ""]
        lines.append("| python3 start-up + script, Debian image (s) | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"kbox start-up (boot the kernel library, mount the image, exec /bin/true, exit): "
        f"{startup * 1000:.1f} ms; kbox peak RSS during `find / -type f`: {rss:.1f} MiB",
        f"--stats bookkeeping: {stats_cost:.0f} ns per answered call (kbox's own timing of "
        f"100000 rounds at exit; the --stats column is the same calls end to end)",
        f"HTTP download of {megabytes} MB from a sendfile server on the host's 127.0.0.1 "
        f"(busybox wget, {HTTP_DOWNLOADS} a run, medians of {max(a.runs, 5)} runs, each way's "
        f"time for one-byte files taken off): native "
        f"{http['native']:.0f} MB/s, "
        + ", ".join(f"{name} {http[name]:.0f} MB/s ({http[name] / http['native']:.2f}×)"
                    for name, _, _ in NET_MODES),
    ]
    if conn:
        lines.append(
            f"TCP connection set-up to the host's 127.0.0.1 (connect, first byte, close; python3 "
            f"on the Debian image): native {conn['native']:.0f} µs, "
            + ", ".join(f"{name} {conn[name]:.0f} µs ({conn[name] / conn['native']:.2f}×)"
                        for name, _, _ in NET_MODES))
    table = "\n".join(lines)
    print(table)
    if a.save:
        os.makedirs(a.save, exist_ok=True)
        cpu = "".join(ch if ch.isalnum() else "-" for ch in cpu_name()).strip("-").lower()
        path = os.path.join(a.save, f"{datetime.date.today()}-{cpu}.md")
        with open(path, "w") as f:
            f.write(table + "\n")
        print(f"bench: saved {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
