#!/usr/bin/env python3
"""status_page.py: the admin listener's /status.html, rendered by a real headless Chromium.

Usage: status_page.py [BUILD_DIR]        (default: build)

Starts the mock HighLevel upstream and the proxy from BUILD_DIR (plain HTTP, loopback, port 0,
readiness over NOTIFY_SOCKET like the C harness), sends requests for three rate-limit keys (one
of them blocked by an upstream 429), then asks Chromium for the page's DOM after its scripts ran
and checks that it shows one row per key with the right resource ids, bars and the blocked key,
and no credential. A screenshot goes to BUILD_DIR/status-page.png (kept as a CI artifact).

Exit status: 0 passed, 1 failed, 77 skipped (no `chromium`). The last line printed is
"N passed, N failed[, N skipped]". Chromium is started with every background service off and a
proxy on a closed loopback port, so nothing it does leaves this machine. Python 3 stdlib only.
"""

import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

READY_S = 20
CHROMIUM_S = 120


def log(msg):
    print("status page: " + msg, file=sys.stderr, flush=True)


class Failed(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failed(msg)


def b64url(data):
    return base64.urlsafe_b64encode(data.encode()).rstrip(b"=").decode()


def make_jwt(app, location):
    """A HighLevel-shaped OAuth access token (unsigned: the mock decodes, never verifies)."""
    claims = {
        "authClass": "Location", "authClassId": location, "source": "INTEGRATION",
        "sourceId": app + "-mbx1", "channel": "OAUTH", "primaryAuthClassId": location,
        "oauthMeta": {"scopes": ["contacts.readonly"], "client": app, "versionId": app,
                      "clientKey": app + "-mbx1"},
        "iat": 4102358400, "exp": 4102444800,
    }
    return ".".join([b64url('{"alg":"RS256","typ":"JWT"}'), b64url(json.dumps(claims)),
                     b64url("browser-test-signature-%s" % location)])


class Proc:
    """A child with its own NOTIFY_SOCKET, stderr to a file, killed at the end."""

    def __init__(self, tmp, name, argv):
        self.name = name
        self.notify_path = os.path.join(tmp, name + ".notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.notify_path)
        self.log_path = os.path.join(tmp, name + ".log")
        self.vars = {}
        env = dict(os.environ, NOTIFY_SOCKET=self.notify_path)
        with open(self.log_path, "ab") as err:
            self.p = subprocess.Popen(argv, cwd=tmp, env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=err)

    def wait_ready(self):
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536).decode(errors="replace")
            except socket.timeout:
                break
            for line in data.splitlines():
                k, _, v = line.partition("=")
                self.vars[k] = v
            if self.vars.get("READY") == "1":
                return
        raise Failed("%s did not become ready:\n%s" % (self.name, self.log()))

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                return self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
                return -1
        return self.p.returncode

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        self.sock.close()


def request(addr, path, headers):
    host, _, port = addr.rpartition(":")
    c = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        c.request("GET", path, headers=headers)
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def chromium(args, url):
    base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
            "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-default-apps",
            "--disable-extensions", "--disable-domain-reliability", "--no-pings",
            "--disable-client-side-phishing-detection", "--metrics-recording-only",
            "--disable-features=MediaRouter,OptimizationHints,Translate",
            # Anything not on loopback would go to a closed port here: nothing leaves.
            "--proxy-server=http://127.0.0.1:9", "--hide-scrollbars"]
    r = subprocess.run(base + args + [url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=CHROMIUM_S, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise Failed("chromium exited %d:\n%s" % (r.returncode, r.stderr.decode(errors="replace")[-3000:]))
    return r.stdout.decode(errors="replace")


def run(build, tmp):
    ghlproxy = os.path.join(build, "ghlproxy")
    mock_bin = os.path.join(build, "tests", "support", "mock_upstream")
    for b in (ghlproxy, mock_bin):
        check(os.access(b, os.X_OK), "%s is not built" % b)

    mock = Proc(tmp, "mock", [mock_bin, "--listen", "127.0.0.1:0"])
    procs = [mock]
    try:
        mock.wait_ready()
        up = mock.vars["X_MOCK_LISTEN"]
        with open(os.path.join(tmp, "ghlproxy.conf"), "w") as f:
            f.write("[server]\nlisten = 127.0.0.1:0\nadmin_listen = 127.0.0.1:0\n"
                    "[upstream]\nurl = http://%s\nv1_url = http://%s\n"
                    "[limits]\nburst = 5\nwindow = 10s\ndaily = 1000\n" % (up, up))
        proxy = Proc(tmp, "proxy", [ghlproxy, "-c", os.path.join(tmp, "ghlproxy.conf")])
        procs.append(proxy)
        proxy.wait_ready()
        addr = proxy.vars["X_GHLPROXY_LISTEN"].split(",")[0]
        admin = proxy.vars["X_GHLPROXY_ADMIN"].split(",")[0]

        app = "65f0a1b2c3d4e5f6a7b8c9f0"
        keys = {"LocBrowserOne0000001": 1, "LocBrowserTwo0000002": 3, "LocBrowserThree00003": 5}
        tokens = {}
        for loc, n in keys.items():
            tokens[loc] = make_jwt(app, loc)
            h = {"Authorization": "Bearer " + tokens[loc], "Version": "2021-07-28"}
            for _ in range(n):
                check(request(addr, "/contacts/?limit=1", h) == 200, "request for %s failed" % loc)
        # HighLevel's 429 blocks the second key for its window.
        h = {"Authorization": "Bearer " + tokens["LocBrowserTwo0000002"], "X-GHL-Max-Wait": "0"}
        check(request(addr, "/mock/status/429", h) == 429, "the upstream 429 did not come through")

        url = "http://%s/status.html" % admin
        dom = chromium(["--user-data-dir=" + os.path.join(tmp, "profile-dom"),
                        "--virtual-time-budget=5000", "--dump-dom"], url)
        with open(os.path.join(tmp, "dom.html"), "w") as f:
            f.write(dom)
        check('data-loaded="1"' in dom, "the page never rendered /status:\n" + dom[-2000:])
        rows = re.findall(r'<tr class="key"[^>]*data-resource="([^"]*)"', dom)
        check(sorted(rows) == sorted(keys), "key rows %s, expected %s" % (rows, sorted(keys)))
        check(dom.count('role="progressbar"') >= 6, "not two bars per key")
        check('aria-valuenow="5"' in dom, "the full key's bar does not say 5")
        check("pill bad" in dom, "the blocked key is not shown blocked")
        check("No managed token." in dom, "the tokens section is missing")
        check("Cannot read /status" not in dom or 'id="error" role="alert" style="display: none;"' in dom,
              "the page shows an error")
        for loc, t in tokens.items():
            check(t not in dom and t.rsplit(".", 1)[1] not in dom, "a token is in the page")

        shot = os.path.join(build, "status-page.png")
        if os.path.exists(shot):
            os.unlink(shot)
        chromium(["--user-data-dir=" + os.path.join(tmp, "profile-shot"),
                  "--virtual-time-budget=5000", "--window-size=1400,760",
                  "--screenshot=" + os.path.abspath(shot)], url)
        check(os.path.exists(shot), "no screenshot at " + shot)
        with open(shot, "rb") as f:
            png = f.read()
        check(png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10000, "the screenshot is not a PNG page")
        log("screenshot: %s (%d bytes)" % (shot, len(png)))

        rc = proxy.stop()
        check(rc == 0, "the proxy exited %s:\n%s" % (rc, proxy.log()))
        plog = proxy.log()
        for t in tokens.values():
            check(t.rsplit(".", 1)[1] not in plog, "a token is in the proxy's log")
    finally:
        for p in reversed(procs):
            p.close()


def main(argv):
    build = os.path.abspath(argv[1] if len(argv) > 1 else "build")
    if not shutil.which("chromium"):
        log("SKIP: chromium is not installed (Debian package `chromium`)")
        print("0 passed, 0 failed, 1 skipped")
        return 77
    tmp = tempfile.mkdtemp(prefix="ghlp-browser.", dir="/tmp")
    try:
        run(build, tmp)
    except (Failed, subprocess.TimeoutExpired, OSError, KeyError) as e:
        log("FAIL: %s (kept %s)" % (e, tmp))
        print("0 passed, 1 failed")
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    log("PASS")
    print("1 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
