#!/usr/bin/env python3
"""The secret scan: no secret the integration suite configured appears in anything the proxy
produced during the run (issue 7, acceptance 2).

    secret_scan.py TRANSCRIPT_DIR            scan (meson: the `secret_scan` test, run last)
    secret_scan.py --reset TRANSCRIPT_DIR    empty it (meson: `transcript_reset`, run first)

What is scanned: the transcript the harness writes when GHLPROXY_TEST_TRANSCRIPT_DIR is set
(tests/support/harness.h): the stderr of every process the tests spawned (log-*.txt: the proxy's
log lines, the token CLI's output...), and every HTTP response the tests read with httpc
(http-*.txt: heads and bodies, so /status, /metrics, admin answers and the proxy's own error
bodies). What is searched for: each secret the tests registered with harness_secret()
(secrets.txt, hex), whole, and its first 16 characters (so a log line cut after 16+ characters
of a token still counts). Values under 8 characters are not searched for (they would turn up
by chance); the summary counts them.

What is not scanned, because it is the upstream's view, where secrets the proxy is supposed to
send upstream (the PIT it injects, the bearer it passes through, the refresh token and client
secret it gives the token endpoint) rightly appear:
  - the mock upstream's own stderr and every response read straight from a mock (its API port
    and its control port, /__mock/log included): upstream-log-*.txt, upstream-http-*.txt;
  - a body the proxy relayed from the mock's echo (a JSON object with method, uri, headers,
    body_len and body_sha256: what the mock received, the injected Authorization included).
    The head of such a response is still scanned, and so is every other body.

A finding names the file, the byte offset, and the secret by a fingerprint (its length and the
first 12 hex digits of its SHA-256), never the secret itself. Exit 0 clean, 1 on a finding or
when there is nothing to scan, 2 on bad usage.
"""
import hashlib
import json
import os
import re
import shutil
import sys

PREFIX_LEN = 16
MIN_SECRET_LEN = 8
MAX_LINES = 200
MARKER = re.compile(
    rb"\n=== response peer=(\S*) status=(-?\d+) complete=([01]) head=(\d+) body=(\d+) "
    rb"stored=(\d+)\n")
ECHO_KEYS = {"method", "uri", "headers", "body_len", "body_sha256"}
ECHO_START = re.compile(rb'\{"method":"[A-Z]+","uri":"(?:[^"\\]|\\.)*","headers":\[')


def fingerprint(secret):
    return f"{len(secret)} bytes, sha256 {hashlib.sha256(secret).hexdigest()[:12]}"


def load_secrets(path):
    """(secrets to scan for, number too short to scan for, problems)."""
    secrets = set()
    short = set()
    bad = []
    if not os.path.exists(path):
        return secrets, 0, bad
    for n, line in enumerate(open(path, "rb").read().split(b"\n"), 1):
        line = line.strip()
        if not line:
            continue
        try:
            s = bytes.fromhex(line.decode())
        except ValueError:
            bad.append(f"secrets.txt:{n}: not hex")
            continue
        # A short value ("pw", "k") would turn up by chance: not a secret worth the name.
        (short if len(s) < MIN_SECRET_LEN else secrets).add(s)
    return secrets, len(short), bad


def by_needle(secrets):
    """The first PREFIX_LEN bytes of each secret (the whole secret when shorter), each with the
    secrets that start with it. (bytes.find per needle: several times faster here than one
    regex of alternatives.)"""
    out = {}
    for s in secrets:
        out.setdefault(s[:PREFIX_LEN], []).append(s)
    return out


def find_all(data, needle):
    i = data.find(needle)
    while i >= 0:
        yield i
        i = data.find(needle, i + 1)


def is_echo(body, truncated):
    """Is this body the mock's echo of a request (see the head comment)? A truncated one (the
    transcript keeps the first 1 MiB) is judged by its start: the echo's members come in a fixed
    order, method, uri, headers."""
    if not body.startswith(b'{"method":"'):
        return False
    if truncated:
        return ECHO_START.match(body) is not None
    try:
        j = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(j, dict) and ECHO_KEYS <= set(j)


def blank_echo_bodies(data, stats):
    """An http-*.txt transcript with the relayed echo bodies zeroed (offsets are kept)."""
    out = bytearray(data)
    for m in MARKER.finditer(data):
        head_len, body_len, stored = int(m.group(4)), int(m.group(5)), int(m.group(6))
        body_at = m.end() + head_len
        stats["responses"] += 1
        if stored and is_echo(data[body_at:body_at + stored], stored < body_len):
            stats["echo_bodies"] += 1
            out[body_at:body_at + stored] = bytes(stored)
    return bytes(out)


def scan(tdir):
    if not os.path.isdir(tdir):
        print(f"secret_scan: no transcript directory {tdir}: run the integration tests with "
              "GHLPROXY_TEST_TRANSCRIPT_DIR set (meson test does)")
        return 1
    secrets, n_short, problems = load_secrets(os.path.join(tdir, "secrets.txt"))
    stats = {"responses": 0, "echo_bodies": 0, "logs": 0, "http": 0, "bytes": 0, "skipped": 0}
    findings = []
    needles = by_needle(secrets)
    for name in sorted(os.listdir(tdir)):
        path = os.path.join(tdir, name)
        if name == "secrets.txt" or not os.path.isfile(path):
            continue
        if name.startswith("upstream-"):
            stats["skipped"] += 1
            continue
        data = open(path, "rb").read()
        stats["bytes"] += len(data)
        if name.startswith("http-"):
            stats["http"] += 1
            data = blank_echo_bodies(data, stats)
        else:
            stats["logs"] += 1
        for needle, with_it in needles.items():
            for off in find_all(data, needle):
                whole = [s for s in with_it if data.startswith(s, off)]
                if whole:
                    what = f"a secret ({fingerprint(whole[0])}), whole"
                elif len(with_it) == 1:
                    what = (f"the first {PREFIX_LEN} characters of a secret "
                            f"({fingerprint(with_it[0])})")
                else:  # JWTs share their header: name the prefix once
                    what = (f"the first {PREFIX_LEN} characters of {len(with_it)} secrets "
                            f"(e.g. {fingerprint(with_it[0])})")
                findings.append((name, off, what))
    # One line per file and finding: its first place and how many more.
    grouped = {}
    for name, off, what in sorted(findings):
        grouped.setdefault((name, what), []).append(off)
    for (name, what), offs in list(grouped.items())[:MAX_LINES]:
        more = f" (and {len(offs) - 1} more in this file)" if len(offs) > 1 else ""
        problems.append(f"{name}: offset {offs[0]}: {what}{more}")
    if len(grouped) > MAX_LINES:
        problems.append(f"... and {len(grouped) - MAX_LINES} more")
    summary = (f"{len(secrets)} secrets ({n_short} under {MIN_SECRET_LEN} characters not "
               f"scanned for), {stats['logs']} process logs, {stats['http']} response "
               f"files ({stats['responses']} responses, {stats['echo_bodies']} relayed echo "
               f"bodies not scanned), {stats['bytes']} bytes; {stats['skipped']} upstream "
               f"files not scanned")
    for p in problems:
        print(f"secret_scan: {p}")
    if problems:
        print(f"secret_scan: FAILED, {len(findings)} finding(s); {summary}")
        return 1
    if not secrets or stats["logs"] + stats["http"] == 0:
        print(f"secret_scan: FAILED, nothing to scan ({summary}): did the integration tests "
              "run with GHLPROXY_TEST_TRANSCRIPT_DIR set?")
        return 1
    print(f"secret_scan: ok, no secret found; {summary}")
    return 0


def main(argv):
    if len(argv) == 3 and argv[1] == "--reset":
        shutil.rmtree(argv[2], ignore_errors=True)
        os.makedirs(argv[2])
        print(f"secret_scan: emptied {argv[2]}")
        return 0
    if len(argv) != 2 or argv[1].startswith("-"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    return scan(argv[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
