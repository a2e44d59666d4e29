#!/usr/bin/env python3
"""Sum the results of one `meson test` run at the level of individual test cases.

Reads meson's testlog.json (one JSON object per test binary). A Criterion binary reports its
cases on its "[====] Synthesis:" line; a binary without one (a plain program, or one that
crashed before reporting) counts as one case, passed or failed by its exit status.
Prints one line per binary: "<pass>/<binary> <passed> <failed> <skipped>".
"""
import json
import re
import sys

SYNTH = re.compile(r"Synthesis: Tested: (\d+) \| Passing: (\d+) \| Failing: (\d+) \| Crashing: (\d+)")


def main(path, name):
    try:
        lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
    except OSError:
        print(f"{name}/no-testlog 0 1 0")
        return
    for line in lines:
        if not line.strip():
            continue
        t = json.loads(line)
        out = (t.get("stdout") or "") + (t.get("stderr") or "")
        result = t.get("result", "FAIL")
        test = f"{name}/{t.get('name', '?').replace(' ', '_')}"
        m = None
        for m in SYNTH.finditer(out):
            pass
        if result == "SKIP":
            print(f"{test} 0 0 1")
        elif m:
            tested, passing, failing, crashing = map(int, m.groups())
            failed = failing + crashing
            # A binary that exited non-zero after a clean synthesis (e.g. a sanitizer report at
            # exit) still failed.
            if result != "OK" and failed == 0:
                failed = 1
            print(f"{test} {passing} {failed} {tested - passing - failing - crashing}")
        else:
            print(f"{test} {1 if result == 'OK' else 0} {0 if result == 'OK' else 1} 0")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
