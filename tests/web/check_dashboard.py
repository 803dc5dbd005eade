#!/usr/bin/env python3
"""Checks kbox's --web dashboard in a real headless Chromium.

Usage: check_dashboard.py URL SCREENSHOT.png [--timeout SECONDS]

Starts Chromium with a fresh profile and drives it over the DevTools protocol on a pipe
(--remote-debugging-pipe: Chromium reads NUL-terminated JSON commands on fd 3 and writes
NUL-terminated replies and events on fd 4). Loads URL, waits until the page has applied at
least three snapshots, shows at least one row in table#syscalls and its call count has
grown, then saves a PNG screenshot and checks it is not blank. Any JavaScript exception,
console.error/console.assert or error-level log entry fails the check.

Exit status: 0 ok, 1 check failed, 2 Chromium missing or bad usage.
Standard library only.
"""

import argparse
import base64
import collections
import fcntl
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib

DEFAULT_CHROMIUM = "/usr/bin/chromium"
# The screenshot passes with at least this many distinct colours...
MIN_COLOURS = 50
# ...and with its most common colour covering less than this share of the pixels.
MAX_DOMINANT = 0.98
# Snapshots the page must have applied (the initial /api/stats one counts).
MIN_UPDATES = 3
POLL_INTERVAL = 0.2
# Quiet time after the page is ready, so late errors and the last drawing show up.
SETTLE = 0.7


class CheckFailed(Exception):
    """The dashboard (or the browser) failed the check: exit 1."""


class ProtocolError(CheckFailed):
    """Chromium answered a command with an error."""


class NoChromium(Exception):
    """No Chromium to run: exit 2."""


def find_chromium():
    for cand in (os.environ.get("CHROMIUM"), DEFAULT_CHROMIUM, shutil.which("chromium")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise NoChromium(
        f"chromium not found at {DEFAULT_CHROMIUM} (install the Debian package: apt-get install chromium)"
    )


def high_fd(fd):
    """A close-on-exec duplicate of fd numbered 10 or above; closes fd."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class Browser:
    """A headless Chromium and its DevTools pipe."""

    def __init__(self, binary, width=1280, height=1000):
        self.binary = binary
        self.size = (width, height)
        self.proc = None
        self.profile = None
        self.log_path = None
        self.log_fd = None
        self.to_chrome = None    # our write end (Chromium's fd 3)
        self.from_chrome = None  # our read end (Chromium's fd 4)
        self.buf = bytearray()
        self.next_id = 0
        self.replies = {}
        self.events = collections.deque()
        self.eof = False

    # ----- process -----

    def start(self):
        self.profile = tempfile.mkdtemp(prefix="kbox-dashboard-chromium-")
        # Chromium's stdout and stderr, kept for messages. Like the pipes below, at a high
        # fd, since fds 3 and 4 get replaced for a moment.
        self.log_path = os.path.join(self.profile, "chromium-output.log")
        self.log_fd = high_fd(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600))
        cmd = [
            self.binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            f"--user-data-dir={os.path.join(self.profile, 'profile')}",
            "--remote-debugging-pipe",
            f"--window-size={self.size[0]},{self.size[1]}",
            "about:blank",
        ]
        # Two pipes; all four ends are moved to fds >= 10 so none of them is 3 or 4.
        child_in, ours_out = (high_fd(fd) for fd in os.pipe())
        ours_in, child_out = (high_fd(fd) for fd in os.pipe())
        self.to_chrome, self.from_chrome = ours_out, ours_in
        os.set_blocking(self.to_chrome, False)
        os.set_blocking(self.from_chrome, False)
        # Chromium wants its ends at exactly fds 3 and 4. pass_fds keeps fd numbers as
        # they are, so put the child's ends at 3 and 4 here for the spawn (saving and
        # then restoring whatever this process had there).
        saved = {}
        try:
            for target in (3, 4):
                try:
                    saved[target] = (fcntl.fcntl(target, fcntl.F_DUPFD_CLOEXEC, 10), os.get_inheritable(target))
                except OSError:
                    saved[target] = None
            os.dup2(child_in, 3, inheritable=False)
            os.dup2(child_out, 4, inheritable=False)
            # HOME, XDG dirs and TMPDIR inside the temporary dir too, so that nothing (the
            # crash reporter's database, caches, the profile's singleton socket dir, shared
            # memory files) lands in the user's home or stays behind in /tmp.
            home = os.path.join(self.profile, "home")
            tmp = os.path.join(self.profile, "tmp")
            os.mkdir(home)
            os.mkdir(tmp)
            env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=os.path.join(home, ".config"),
                       XDG_CACHE_HOME=os.path.join(home, ".cache"), TMPDIR=tmp)
            self.proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self.log_fd,
                stderr=self.log_fd,
                pass_fds=(3, 4),
                start_new_session=True,  # its own process group, killed as one at the end
            )
        finally:
            for target, keep in saved.items():
                try:
                    if keep is None:
                        os.close(target)
                    else:
                        fd, inheritable = keep
                        os.dup2(fd, target, inheritable=inheritable)
                        os.close(fd)
                except OSError:
                    pass
            os.close(child_in)
            os.close(child_out)

    def chromium_said(self):
        """The last meaningful line Chromium wrote on stdout/stderr, for messages."""
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read()[-65536:].decode("utf-8", "replace").splitlines()
        except (OSError, TypeError):
            return ""
        lines = [ln.strip() for ln in lines if ln.strip() and "unexpected operator" not in ln and "dbus" not in ln]
        return lines[-1][:300] if lines else ""

    def close(self):
        """Stops Chromium (politely, then by force) and removes the temporary profile."""
        if self.proc is not None:
            if self.proc.poll() is None and not self.eof:
                try:
                    self.send("Browser.close")
                except (CheckFailed, OSError):
                    pass
                try:
                    self.proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    pass
            # The whole group: the browser's zygote, renderer and utility processes too.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            # The crash handler runs in a session of its own, outside the group; it goes
            # away with the browser, but make sure: it is known by our unique temp path.
            self._kill_leftovers()
        for fd in (self.to_chrome, self.from_chrome):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.to_chrome = self.from_chrome = None
        if self.log_fd is not None:
            os.close(self.log_fd)
            self.log_fd = None
        if self.profile is not None:
            # Children may still be going away for a moment after SIGKILL.
            for _ in range(20):
                shutil.rmtree(self.profile, ignore_errors=True)
                if not os.path.exists(self.profile):
                    break
                time.sleep(0.1)
            self.profile = None

    def _kill_leftovers(self):
        if not self.profile:
            return
        mark = self.profile.encode()
        try:
            entries = os.listdir("/proc")
        except OSError:
            return
        for entry in entries:
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if mark not in f.read():
                        continue
                os.kill(int(entry), signal.SIGKILL)
            except (OSError, ValueError):
                pass

    # ----- protocol -----

    def send(self, method, params=None, session=None, deadline=None):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        deadline = deadline if deadline is not None else time.monotonic() + 5
        while data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CheckFailed(f"timed out sending {method} to chromium")
            _, writable, _ = select.select([], [self.to_chrome], [], left)
            if not writable:
                continue
            try:
                n = os.write(self.to_chrome, data)
            except BlockingIOError:
                continue
            except BrokenPipeError:
                raise CheckFailed(f"chromium went away (sending {method}); it said: {self.chromium_said()!r}")
            data = data[n:]
        return self.next_id

    def pump(self, deadline):
        """Reads what Chromium has sent until deadline or the first complete message(s)."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.eof:
                raise CheckFailed(f"chromium closed the DevTools pipe (exited?); it said: {self.chromium_said()!r}")
            readable, _, _ = select.select([self.from_chrome], [], [], left)
            if not readable:
                return False
            try:
                chunk = os.read(self.from_chrome, 1 << 20)
            except BlockingIOError:
                continue
            if not chunk:
                self.eof = True
                continue
            self.buf += chunk
            got = False
            while True:
                end = self.buf.find(b"\0")
                if end < 0:
                    break
                raw = bytes(self.buf[:end])
                del self.buf[: end + 1]
                try:
                    msg = json.loads(raw)
                except ValueError:
                    raise CheckFailed("chromium sent a malformed DevTools message")
                if "id" in msg:
                    self.replies[msg["id"]] = msg
                else:
                    self.events.append(msg)
                got = True
            if got:
                return True

    def call(self, method, params=None, session=None, timeout=10, deadline=None):
        """Sends a command and waits for its reply; returns the result."""
        end = time.monotonic() + timeout
        if deadline is not None:
            end = min(end, deadline)
        cid = self.send(method, params, session, end)
        while cid not in self.replies:
            if time.monotonic() >= end:
                raise CheckFailed(f"timed out waiting for chromium to answer {method}")
            self.pump(end)
        reply = self.replies.pop(cid)
        if "error" in reply:
            err = reply["error"]
            raise ProtocolError(f"chromium refused {method}: {err.get('message', err)}")
        return reply.get("result", {})


def describe_exception(details):
    exc = details.get("exception") or {}
    text = exc.get("description") or exc.get("value") or details.get("text") or "exception"
    text = str(text).splitlines()[0] if str(text) else "exception"
    where = details.get("url") or ""
    line = details.get("lineNumber")
    if where or line is not None:
        text += f" at {where or '?'}:{(line or 0) + 1}"
    return text


def remote_object_text(obj):
    if "value" in obj:
        return obj["value"] if isinstance(obj["value"], str) else json.dumps(obj["value"])
    return obj.get("description") or obj.get("unserializableValue") or obj.get("type", "?")


class ErrorWatch:
    """Turns DevTools events into the page's errors."""

    def __init__(self):
        self.errors = []
        self.notes = []

    def feed(self, ev):
        method = ev.get("method")
        params = ev.get("params") or {}
        if method == "Runtime.exceptionThrown":
            self.errors.append("uncaught exception: " + describe_exception(params.get("exceptionDetails") or {}))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = " ".join(str(remote_object_text(a)) for a in params.get("args") or [])
            self.errors.append(f"console.{params.get('type')}: {args}".rstrip())
        elif method == "Log.entryAdded":
            entry = params.get("entry") or {}
            if entry.get("level") != "error":
                return
            text = str(entry.get("text", ""))
            url = str(entry.get("url", ""))
            if "favicon.ico" in url and entry.get("source") == "network":
                # The browser asks for /favicon.ico by itself; the page does not use it.
                self.notes.append(f"ignored a failed /favicon.ico request ({text}); the server should answer it")
                return
            self.errors.append(f"log {entry.get('source', '?')} error: {text}" + (f" ({url})" if url else ""))
        elif method in ("Inspector.targetCrashed", "Target.targetCrashed"):
            self.errors.append("the page's renderer crashed")
        elif method == "Target.detachedFromTarget":
            self.errors.append("chromium detached from the page")


# ----- PNG -----

def _unfilter(raw, width, height, bpp):
    stride = width * bpp
    out = bytearray(stride * height)
    prev = bytearray(stride)
    pos = 0
    for y in range(height):
        ftype = raw[pos]
        line = bytearray(raw[pos + 1 : pos + 1 + stride])
        pos += 1 + stride
        if len(line) != stride:
            raise CheckFailed("screenshot PNG is truncated")
        if ftype == 0:
            pass
        elif ftype == 1:  # Sub
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif ftype == 2:  # Up
            # bytewise add without carries between bytes, on the whole line at once
            a = int.from_bytes(line, "little")
            b = int.from_bytes(prev, "little")
            low = int.from_bytes(b"\x7f" * stride, "little")
            high = int.from_bytes(b"\x80" * stride, "little")
            line = bytearray((((a & low) + (b & low)) ^ ((a ^ b) & high)).to_bytes(stride, "little"))
        elif ftype == 3:  # Average
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:  # Paeth
            for i in range(stride):
                if i >= bpp:
                    a = line[i - bpp]
                    c = prev[i - bpp]
                else:
                    a = c = 0
                b = prev[i]
                p = a + b - c
                pa = abs(p - a)
                pb = abs(p - b)
                pc = abs(p - c)
                if pa <= pb and pa <= pc:
                    pred = a
                elif pb <= pc:
                    pred = b
                else:
                    pred = c
                line[i] = (line[i] + pred) & 0xFF
        else:
            raise CheckFailed(f"screenshot PNG uses unknown filter type {ftype}")
        out[y * stride : (y + 1) * stride] = line
        prev = line
    return out


def png_colours(data):
    """(width, height, distinct colours, share of the most common colour) of an 8-bit RGB(A) PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise CheckFailed("screenshot is not a PNG")
    pos = 8
    idat = bytearray()
    header = None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    if header is None:
        raise CheckFailed("screenshot PNG has no IHDR")
    width, height, depth, ctype, _, _, interlace = header
    if depth != 8 or ctype not in (2, 6) or interlace != 0:
        raise CheckFailed(f"screenshot PNG format not handled (depth {depth}, colour type {ctype}, interlace {interlace})")
    if width == 0 or height == 0:
        raise CheckFailed("screenshot PNG is empty")
    bpp = 3 if ctype == 2 else 4
    try:
        raw = zlib.decompress(bytes(idat))
    except zlib.error as e:
        raise CheckFailed(f"screenshot PNG does not decompress: {e}")
    if len(raw) < height * (1 + width * bpp):
        raise CheckFailed("screenshot PNG is truncated")
    pixels = bytes(_unfilter(raw, width, height, bpp))
    counts = collections.Counter(pixels[i : i + bpp] for i in range(0, len(pixels), bpp))
    top = counts.most_common(1)[0][1]
    return width, height, len(counts), top / (width * height)


# ----- the check -----

PROBE = """(() => {
  const b = document.body;
  const t = document.querySelector('#syscalls');
  const body = t && t.tBodies && t.tBodies[0];
  return JSON.stringify({
    ready: document.readyState,
    hasBody: !!b,
    updates: b ? b.dataset.updates ?? null : null,
    calls: b ? b.dataset.calls ?? null : null,
    table: !!t,
    rows: body ? body.rows.length : 0,
  });
})()"""


def to_int(x):
    try:
        return int(str(x).strip())
    except (TypeError, ValueError):
        return None


def check(url, shot_path, timeout, binary):
    deadline = time.monotonic() + timeout
    browser = Browser(binary)
    watch = ErrorWatch()

    def drain():
        while browser.events:
            watch.feed(browser.events.popleft())
        if watch.errors:
            more = f" (+{len(watch.errors) - 1} more)" if len(watch.errors) > 1 else ""
            raise CheckFailed(f"page error: {watch.errors[0]}{more}")

    def wait(seconds):
        end = min(deadline, time.monotonic() + seconds)
        while time.monotonic() < end:
            browser.pump(end)
            drain()

    try:
        browser.start()
        c = lambda *a, **k: browser.call(*a, deadline=deadline, **k)
        try:
            targets = c("Target.getTargets", timeout=timeout)
        except CheckFailed as e:
            if time.monotonic() >= deadline:
                raise CheckFailed(f"chromium did not answer on the DevTools pipe within {timeout:g}s")
            raise e
        pages = [t for t in targets.get("targetInfos", []) if t.get("type") == "page"]
        if pages:
            target_id = pages[0]["targetId"]
        else:
            target_id = c("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = c("Target.attachToTarget", {"targetId": target_id, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Page", "Log"):
            c(f"{domain}.enable", session=session)
        drain()
        try:
            nav = c("Page.navigate", {"url": url}, session=session, timeout=timeout)
        except ProtocolError:
            raise
        except CheckFailed:
            raise CheckFailed(f"timed out after {timeout:g}s loading {url} (is the server answering?)")
        if nav.get("errorText"):
            raise CheckFailed(f"could not load {url}: {nav['errorText']}")

        first_calls = None
        state = {}
        while True:
            drain()
            if time.monotonic() >= deadline:
                raise CheckFailed(
                    f"timed out after {timeout:g}s waiting for the dashboard to update: "
                    f"updates={state.get('updates')!s} (need >= {MIN_UPDATES}), "
                    f"calls first={first_calls} latest={state.get('calls')}, "
                    f"#syscalls body rows={state.get('rows')}" + ("" if state.get("table", True) else " (no table#syscalls)")
                )
            try:
                res = c("Runtime.evaluate", {"expression": PROBE, "returnByValue": True}, session=session)
            except ProtocolError:
                # e.g. the context went away while the page was (re)loading: ask again
                wait(POLL_INTERVAL)
                continue
            if "exceptionDetails" in res:
                raise CheckFailed("the probe script failed: " + describe_exception(res["exceptionDetails"]))
            try:
                state = json.loads(res.get("result", {}).get("value") or "{}")
            except ValueError:
                state = {}
            updates = to_int(state.get("updates"))
            calls = to_int(state.get("calls"))
            if updates is not None and updates >= 1 and calls is not None and first_calls is None:
                first_calls = calls
            if (
                updates is not None
                and updates >= MIN_UPDATES
                and state.get("rows", 0) >= 1
                and first_calls is not None
                and calls is not None
                and calls > first_calls
            ):
                break
            wait(POLL_INTERVAL)

        wait(SETTLE)
        res = c("Runtime.evaluate", {"expression": PROBE, "returnByValue": True}, session=session)
        try:
            state = json.loads(res.get("result", {}).get("value") or "{}")
        except ValueError:
            pass
        shot = c("Page.captureScreenshot", {"format": "png"}, session=session, timeout=max(1.0, timeout))
        drain()
        png = base64.b64decode(shot.get("data", ""))
        try:
            with open(shot_path, "wb") as f:
                f.write(png)
        except OSError as e:
            raise CheckFailed(f"cannot write the screenshot to {shot_path}: {e}")
        width, height, colours, dominant = png_colours(png)
        if colours < MIN_COLOURS or dominant >= MAX_DOMINANT:
            raise CheckFailed(
                f"screenshot {shot_path} looks blank: {colours} colours (need >= {MIN_COLOURS}), "
                f"most common colour on {dominant:.1%} of {width}x{height} pixels (need < {MAX_DOMINANT:.0%})"
            )
        drain()
        for note in watch.notes:
            print(f"note: {note}", file=sys.stderr)
        print(
            f"dashboard ok: {to_int(state.get('updates'))} updates, calls {first_calls} -> {to_int(state.get('calls'))}, "
            f"{state.get('rows')} syscall rows, screenshot {shot_path} "
            f"({colours} colours, need >= {MIN_COLOURS}; most common {dominant:.1%}, need < {MAX_DOMINANT:.0%})"
        )
    finally:
        # no interruption half way through the clean-up
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        browser.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description="Check kbox's --web dashboard in headless Chromium.")
    ap.add_argument("url")
    ap.add_argument("screenshot")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds for the whole check (default 30)")
    args = ap.parse_args(argv)
    if not args.timeout > 0:
        ap.error("--timeout must be positive")

    def on_signal(signum, _frame):
        raise CheckFailed(f"interrupted by signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        binary = find_chromium()
        check(args.url, args.screenshot, args.timeout, binary)
    except NoChromium as e:
        print(f"check_dashboard: {e}", file=sys.stderr)
        return 2
    except CheckFailed as e:
        print(f"check_dashboard: FAIL: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"check_dashboard: FAIL: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
