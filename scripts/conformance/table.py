#!/usr/bin/env python3
"""table.py: the conformance table, one row per CPython test, native beside kbox.

Each run is read from two files regrtest wrote: its log (one progress line per test:
"[ 3/27] test_os passed", "... failed (2 failures)", "... skipped", "... crashed",
"... timed out") and its JUnit XML (one <testcase> per test method, with a <failure>,
<error> or <skipped> child when it did not pass, and its time). Exits 0 when kbox's result
equals native's for every test, 1 otherwise.
"""
import argparse
import collections
import re
import sys
import xml.etree.ElementTree as ET

PROGRESS = re.compile(r"\[\s*\d+/\d+(?:/\d+)?\]\s+(test_\w+)\s+(.*?)(?:\s+--\s.*)?$")
MODULE = re.compile(r"\b(test_\w+)")


def results_from_log(path):
    """test name -> one word: pass, fail, skip, env (changed the environment), crash,
    timeout; tests the log never reports are missing (the run was cut short)."""
    out = {}
    try:
        lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
    except OSError:
        return out
    for line in lines:
        m = PROGRESS.search(line)
        if not m:
            continue
        name, text = m.group(1), m.group(2)
        if text.startswith("passed"):
            word = "pass"
        elif text.startswith("skipped") or "resource denied" in text:
            word = "skip"
        elif "env changed" in text:
            word = "env"
        elif "timed out" in text or "Timeout" in text:
            word = "timeout"
        elif text.startswith("crashed"):
            word = "crash"
        elif text.startswith("failed"):
            word = "fail"
        else:
            continue
        out[name] = word
    return out


def cases_from_xml(path):
    """test name -> [passed, failed, skipped, seconds] over its test methods."""
    counts = collections.defaultdict(lambda: [0, 0, 0, 0.0])
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return counts
    for case in root.iter("testcase"):
        where = case.get("classname") or case.get("name") or ""
        m = MODULE.search(where)
        if not m:
            continue
        c = counts[m.group(1)]
        kinds = {child.tag for child in case}
        if "failure" in kinds or "error" in kinds:
            c[1] += 1
        elif "skipped" in kinds:
            c[2] += 1
        else:
            c[0] += 1
        try:
            c[3] += float(case.get("time") or 0)
        except ValueError:
            pass
    return counts


def cell(result, cases):
    if result is None:
        return "not run"
    ok, bad, skip, secs = cases if cases else (0, 0, 0, 0.0)
    return f"{result:<7} {ok:>4}/{bad:>3}/{skip:>3} {secs:>7.1f}s"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--native-log", required=True)
    p.add_argument("--native-xml", required=True)
    p.add_argument("--kbox-log", required=True)
    p.add_argument("--kbox-xml", required=True)
    p.add_argument("--native-time", type=int, default=0)
    p.add_argument("--kbox-time", type=int, default=0)
    p.add_argument("tests", nargs="+")
    a = p.parse_args()
    native, kbox = results_from_log(a.native_log), results_from_log(a.kbox_log)
    ncases, kcases = cases_from_xml(a.native_xml), cases_from_xml(a.kbox_xml)
    width = max(len(t) for t in a.tests)
    head = "result   ok/fail/skip    time"
    print(f"| {'test':<{width}} | native: {head} | kbox: {head} | same |")
    print(f"|{'-' * (width + 2)}|{'-' * 39}|{'-' * 37}|------|")
    differ = 0
    for t in a.tests:
        n, k = native.get(t), kbox.get(t)
        # The same per-module result, and no test method failing under kbox that passed
        # natively (counts may differ where a test skips on timing or resources).
        nc, kc = ncases.get(t), kcases.get(t)
        same = n is not None and n == k and (kc is None or nc is None or kc[1] <= nc[1])
        differ += not same
        print(f"| {t:<{width}} | {cell(n, nc):<39}| {cell(k, kc):<37}| {'yes' if same else 'NO':<4} |")
    print(f"\nwhole runs: native {a.native_time}s, kbox {a.kbox_time}s; "
          f"{len(a.tests) - differ} of {len(a.tests)} tests give native's result under kbox")
    return 0 if differ == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
