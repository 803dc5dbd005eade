#!/usr/bin/env python3
"""test-list.py: reads cargo's --message-format=json on stdin (a `cargo test --no-run`)
and writes the list suite.sh runs: each test executable as "test NAME PATH". Arguments
NAME=VALUE become "env NAME=VALUE" lines first; --skip=TEST:REASON a "skip TEST REASON"
line (suite.sh leaves TEST out and says why)."""
import json
import sys

for arg in sys.argv[1:]:
    if arg.startswith("--skip="):
        test, _, reason = arg[len("--skip="):].partition(":")
        print(f"skip {test} {reason}")
    else:
        print(f"env {arg}")
seen = set()
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    exe = msg.get("executable")
    if msg.get("reason") != "compiler-artifact" or not exe or not msg.get("profile", {}).get("test"):
        continue
    if exe in seen:
        continue
    seen.add(exe)
    name = msg["target"]["name"]
    if "bin" in msg["target"]["kind"]:
        name += "-unit"
    print(f"test {name} {exe}")
