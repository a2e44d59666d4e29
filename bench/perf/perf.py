#!/usr/bin/env python3
"""
bench/perf/perf.py: ghlproxy side by side with what a user would pick instead (issue 8).

Everything runs on loopback, started and stopped here: the fast mock upstream
(bench/perf/fastmock.c, plain HTTP and TLS), ghlproxy (one instance per case, configs
bench/perf/ghlproxy-*.conf), nginx (one worker, upstream keep-alive: bench/perf/nginx.conf),
HAProxy (one thread: bench/perf/haproxy.cfg), redis-server (unix socket), and the load: wrk for
closed-loop throughput (32 keep-alive connections), bench/perf/loadgen.c for a fixed rate (open
loop), for 100,000 distinct keys and for admission precision.

Cases
  (a) plain-HTTP upstream, 32 connections, 1,000 keys, limits not binding: direct, ghlproxy,
      nginx, HAProxy, alternating, --reps times; throughput (wrk), CPU per request, and the
      latency each adds at a fixed rate (loadgen, open loop; median over reps of target - direct);
      also "evhttp", bench/perf/evhttp_floor.c: evhttp alone as a reverse proxy, the library
      ghlproxy is built on (DESIGN.md) with none of the proxy's own work, to tell its cost apart
  (b) the same with a TLS upstream, verified by all three
  (c) ghlproxy with the Redis backend against ghlproxy local, alternating: throughput ratio
      (target >= 0.70) and Redis round trips per admission decision (EVALSHA per forwarded)
  (d) bench/waiting (10,000 waiting requests over 1,000 keys): memory and CPU while waiting
  (e) 100,000 distinct keys seen once: proxy memory per key, the keys' eviction once their
      windows pass, Redis memory per key
  (f) one key saturated: how late after its earliest legal moment each request reached the
      upstream (p50, p99; target p99 <= 5 ms); idle RSS (target <= 8 MiB)

Usage: perf.py [--build DIR] [--out FILE] [--smoke] [--reps N] [--seconds S] [--cases abcdef]
  --smoke: every case for a second or two, to show that the benchmark runs (CI); it checks that
  every case produced its figures and that no request failed, not speed.
Exit 0 when every case ran and no request failed; 1 otherwise. Figures are "key: value" lines;
the file ends with a summary table (the README's Performance section quotes it).

The machine is shared by the load generator, the proxy and the mock (and, here, 2 cores): read
ratios, not absolute figures.
"""
import argparse
import atexit
import http.client
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
# A made-up token of PIT shape: never a real secret (the proxy keys it by its fingerprint).
BENCH_PIT = "pit-00000000-0000-4000-8000-00000000be4c"
KEYS = 1000       # keys in cases (a), (b), (c)
CONNS = 32        # keep-alive client connections in (a), (b), (c)

PROCS = []        # every child still running, stopped at exit
# Servers run with a service's environment, not a login shell's: a bundle named by
# SSL_CERT_FILE would be read whole at start (ghlproxy otherwise reads the hashed /etc/ssl/certs
# one certificate at a time, when a chain needs it: 1.4 MiB less of its idle memory).
SHELL_ONLY_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR")


class BenchError(Exception):
    pass


def log(msg):
    print("perf: " + msg, file=sys.stderr, flush=True)


# ---- processes ----------------------------------------------------------------------------

class Proc:
    def __init__(self, name, argv, tmp, env=None, stdout=None):
        self.name = name
        self.log_path = os.path.join(tmp, name + ".log")
        self.logf = open(self.log_path, "ab")
        full_env = dict(os.environ)
        full_env.pop("NOTIFY_SOCKET", None)
        for k in SHELL_ONLY_ENV:
            full_env.pop(k, None)
        full_env.update(env or {})
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                  stdout=stdout if stdout is not None else self.logf,
                                  stderr=self.logf, env=full_env, cwd=tmp)
        self.pid = self.p.pid
        PROCS.append(self)

    def alive(self):
        return self.p.poll() is None

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.logf.close()
        if self in PROCS:
            PROCS.remove(self)

    def tail(self, n=2000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""


def stop_all():
    for p in list(reversed(PROCS)):
        try:
            p.stop()
        except Exception:  # cleanup must go on
            pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_tcp(addr, proc, timeout=20.0):
    host, port = addr.rsplit(":", 1)
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if proc is not None and not proc.alive():
            raise BenchError("%s exited at start:\n%s" % (proc.name, proc.tail()))
        try:
            socket.create_connection((host, int(port)), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError("%s did not listen on %s" % (proc.name if proc else "?", addr))


def http_get(addr, path, timeout=30):
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


def metric(admin, series):
    """One sample of ghlproxy's /metrics ("name" or "name{labels}"); None when absent."""
    _, text = http_get(admin, "/metrics")
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def proc_status(pid):
    """VmRSS, RssAnon, RssFile of a process, KiB."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[k] = int(v.split()[0])
    return out


def children(pid):
    """pid and its descendants (nginx: master and worker)."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st[st.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def redis_cmd(sock_path, *args):
    """One command to redis-server over its unix socket (RESP); returns the decoded reply."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(sock_path)
    req = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
    s.sendall(req)
    f = s.makefile("rb")

    def read():
        line = f.readline()
        t, rest = line[:1], line[1:-2]
        if t in (b"+", b"-"):
            return rest.decode()
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = f.read(n + 2)[:-2]
            return data.decode(errors="replace")
        if t == b"*":
            return [read() for _ in range(int(rest))]
        raise BenchError("redis: unexpected reply %r" % line)
    try:
        return read()
    finally:
        f.close()
        s.close()


def redis_info(sock_path, section):
    out = {}
    for line in redis_cmd(sock_path, "INFO", section).splitlines():
        k, _, v = line.partition(":")
        out[k] = v
    return out


def evalsha_calls(sock_path):
    info = redis_info(sock_path, "commandstats")
    n = 0
    for k, v in info.items():
        if k.startswith("cmdstat_eval"):  # evalsha, evalsha_ro, eval (after NOSCRIPT)
            n += int(re.search(r"calls=(\d+)", v).group(1))
    return n


# ---- load ---------------------------------------------------------------------------------

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def to_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    return float(m.group(1)) * UNITS[m.group(2)]


def run_wrk(ctx, url, seconds, conns=CONNS, keys=KEYS):
    argv = ["wrk", "-t1", "-c%d" % conns, "-d%ds" % max(1, round(seconds)), "--latency",
            "-s", ctx.wrk_script, url]
    env = dict(os.environ, PERF_KEYS=str(keys), PERF_PIT=BENCH_PIT)
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + 60)
    out = r.stdout
    if r.returncode != 0 or "Requests/sec" not in out:
        raise BenchError("wrk %s failed:\n%s%s" % (url, out, r.stderr))
    res = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
           "requests": int(re.search(r"(\d+) requests in", out).group(1))}
    for pct in ("50", "90", "99"):
        m = re.search(r"^\s+%s%%\s+(\S+)" % pct, out, re.M)
        res["p%s_ms" % pct] = to_ms(m.group(1)) if m else -1
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["errors"] = sum(int(x) for x in m.groups()) if m else 0
    return res


def run_loadgen(ctx, target, *args, timeout=600):
    argv = [ctx.loadgen, "--target", target] + [str(a) for a in args]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    res = {}
    for line in r.stdout.splitlines():
        k, _, v = line.partition(": ")
        try:
            res[k] = float(v)
        except ValueError:
            pass
    if "requests" not in res:
        raise BenchError("loadgen %s failed (%d):\n%s%s" % (target, r.returncode, r.stdout,
                                                          r.stderr))
    res["exit"] = r.returncode
    return res


# ---- the pieces ---------------------------------------------------------------------------

def fill(template, values):
    with open(os.path.join(HERE, template)) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace("@%s@" % k, str(v))
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise BenchError("%s: unfilled %s" % (template, left))
    return text


def make_certs(tmp):
    """A CA and a certificate it signs for localhost and 127.0.0.1, made here, with openssl."""
    def ossl(*args):
        subprocess.run(["openssl"] + list(args), check=True, capture_output=True, cwd=tmp)
    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=ghlproxy bench CA")
    ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", "key.pem", "-out", "cert.csr", "-subj", "/CN=localhost")
    with open(os.path.join(tmp, "ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                "extendedKeyUsage=serverAuth\n")
    ossl("x509", "-req", "-in", "cert.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "cert.pem", "-days", "2", "-extfile", "ext.cnf")
    return os.path.join(tmp, "ca.pem")


def start_fastmock(ctx, name, hl_headers):
    """The fast mock; hl_headers "MAX,INTERVAL_MS,DAILY" makes it send HighLevel's headers."""
    argv = [ctx.fastmock, "--listen", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0",
            "--cert", os.path.join(ctx.tmp, "cert.pem"), "--key", os.path.join(ctx.tmp, "key.pem")]
    if hl_headers:
        argv += ["--hl-headers", hl_headers]
    p = Proc(name, argv, ctx.tmp, stdout=subprocess.PIPE)
    addrs = {}
    for _ in range(3):
        line = p.p.stdout.readline().decode().strip()
        if line == "ready":
            break
        kind, _, addr = line.partition(" ")
        addrs[kind] = addr
    if "plain" not in addrs or "tls" not in addrs:
        raise BenchError("fastmock did not start:\n" + p.tail())
    p.plain, p.tls = addrs["plain"], addrs["tls"]
    return p


def start_ghlproxy(ctx, name, template, extra=None):
    listen, admin = "127.0.0.1:%d" % free_port(), "127.0.0.1:%d" % free_port()
    values = {"LISTEN": listen, "ADMIN": admin, "MOCK_PLAIN": ctx.mock.plain,
              "MOCK_TLS": ctx.mock.tls, "CA": ctx.ca, "REDIS_SOCK": ctx.redis_sock}
    values.update(extra or {})
    conf = os.path.join(ctx.tmp, name + ".conf")
    with open(conf, "w") as f:
        f.write(fill(template, values))
    p = Proc(name, [ctx.ghlproxy, "-c", conf], ctx.tmp)
    wait_tcp(admin, p)
    until = time.monotonic() + 20
    while http_get(admin, "/healthz")[0] != 200 and time.monotonic() < until:
        time.sleep(0.05)
    wait_tcp(listen, p)
    p.addr, p.admin = listen, admin
    return p


def start_redis(ctx, name):
    sock = os.path.join(ctx.tmp, name + ".sock")
    p = Proc(name, ["redis-server", "--port", "0", "--unixsocket", sock, "--unixsocketperm",
                    "700", "--save", "", "--appendonly", "no", "--dir", ctx.tmp], ctx.tmp)
    until = time.monotonic() + 20
    while time.monotonic() < until:
        try:
            if redis_cmd(sock, "PING") == "PONG":
                p.sock = sock
                return p
        except OSError:
            time.sleep(0.05)
        if not p.alive():
            break
    raise BenchError("redis-server did not start:\n" + p.tail())


def start_evhttp_floor(ctx):
    """evhttp alone as a reverse proxy (bench/perf/evhttp_floor.c) to the plain mock: what the
    library ghlproxy is built on costs per request, with none of the proxy's own work."""
    addr = "127.0.0.1:%d" % free_port()
    p = Proc("evhttp-floor", [ctx.floor, "--listen", addr, "--upstream", ctx.mock.plain],
             ctx.tmp)
    wait_tcp(addr, p)
    p.addr = addr
    return p


def start_nginx(ctx):
    plain, tls = "127.0.0.1:%d" % free_port(), "127.0.0.1:%d" % free_port()
    ndir = os.path.join(ctx.tmp, "nginx")
    os.makedirs(os.path.join(ndir, "logs"), exist_ok=True)
    with open(os.path.join(ndir, "nginx.conf"), "w") as f:
        f.write(fill("nginx.conf", {"DIR": ndir, "MOCK_PLAIN": ctx.mock.plain,
                                    "MOCK_TLS": ctx.mock.tls, "CA": ctx.ca,
                                    "NGINX_PLAIN": plain, "NGINX_TLS": tls}))
    p = Proc("nginx", [ctx.nginx, "-p", ndir, "-c", "nginx.conf", "-e", "stderr"], ctx.tmp)
    wait_tcp(plain, p)
    wait_tcp(tls, p)
    p.plain, p.tls = plain, tls
    return p


def start_haproxy(ctx):
    plain, tls = "127.0.0.1:%d" % free_port(), "127.0.0.1:%d" % free_port()
    cfg = os.path.join(ctx.tmp, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(fill("haproxy.cfg", {"MOCK_PLAIN": ctx.mock.plain, "MOCK_TLS": ctx.mock.tls,
                                     "CA": ctx.ca, "HAPROXY_PLAIN": plain,
                                     "HAPROXY_TLS": tls}))
    p = Proc("haproxy", [ctx.haproxy, "-db", "-f", cfg], ctx.tmp)
    wait_tcp(plain, p)
    wait_tcp(tls, p)
    p.plain, p.tls = plain, tls
    return p


# ---- output -------------------------------------------------------------------------------

class Out:
    def __init__(self):
        self.lines = []
        self.summary = []
        self.failures = []

    def put(self, key, value):
        if isinstance(value, float):
            value = "%.3f" % value if abs(value) < 100 else "%.1f" % value
        line = "%s: %s" % (key, value)
        self.lines.append(line)
        print(line, flush=True)

    def section(self, title):
        self.lines.append("")
        self.lines.append("# " + title)
        print("\n# " + title, flush=True)

    def fail(self, why):
        self.failures.append(why)
        self.put("FAILED", why)


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def machine(ctx):
    def first_line(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unknown"
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    buildtype = "unknown"
    try:
        import json
        opts = json.loads(subprocess.run(["meson", "introspect", ctx.build, "--buildoptions"],
                                         capture_output=True, text=True).stdout)
        o = {x["name"]: x["value"] for x in opts}
        buildtype = "%s sanitize=%s" % (o.get("buildtype"), o.get("b_sanitize"))
    except Exception:  # not a meson build dir: binaries given by hand
        pass
    return [
        ("date", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
        ("commit", commit),
        ("cpu", "%s x %d" % (cpu, os.cpu_count())),
        ("memory", "%.1f GiB" % (mem_kib / 1048576)),
        ("kernel", platform.release()),
        ("build", buildtype),
        ("nginx", first_line([ctx.nginx, "-v"])),
        ("haproxy", first_line([ctx.haproxy, "-v"])),
        ("wrk", first_line(["wrk", "--version"]).split(" [")[0]),
        ("redis", first_line(["redis-server", "--version"])),
    ]


# ---- cases --------------------------------------------------------------------------------

def throughput_case(ctx, out, case, targets, latency=True):
    """Alternate wrk runs over targets ([(name, url, addr, pids)]), reps times; then, as
    many times, open-loop runs at a fixed rate for the latency each adds over 'direct'."""
    reps, secs = ctx.reps, ctx.seconds
    for name, url, _, _ in targets:  # warm-up: keys created, pools and TLS sessions up
        run_wrk(ctx, url, 1)
    res = {t[0]: [] for t in targets}
    for rep in range(reps):
        order = targets[rep % len(targets):] + targets[:rep % len(targets)]
        for name, url, _, pids in order:
            cpu0 = cpu_seconds(pids())
            r = run_wrk(ctx, url, secs)
            r["cpu_us"] = (cpu_seconds(pids()) - cpu0) * 1e6 / max(1, r["requests"])
            res[name].append(r)
            out.put("%s_%s_rep%d_rps" % (case, name, rep + 1), r["rps"])
            if r["non2xx"] or r["errors"]:
                out.fail("%s %s: %d non-2xx answers, %d socket errors" % (
                    case, name, r["non2xx"], r["errors"]))
    summary = {}
    for name, _, _, _ in targets:
        rps = med([r["rps"] for r in res[name]])
        summary[name] = {"rps": rps,
                         "cpu_us": med([r["cpu_us"] for r in res[name]]),
                         "wrk_p99_ms": med([r["p99_ms"] for r in res[name]])}
        out.put("%s_%s_rps" % (case, name), rps)
        out.put("%s_%s_cpu_us_per_request" % (case, name), summary[name]["cpu_us"])
        out.put("%s_%s_wrk_p50_ms" % (case, name), med([r["p50_ms"] for r in res[name]]))
        out.put("%s_%s_wrk_p99_ms" % (case, name), summary[name]["wrk_p99_ms"])
    if not latency:
        return summary
    lat = {t[0]: [] for t in targets}
    for rep in range(reps):
        order = targets[rep % len(targets):] + targets[:rep % len(targets)]
        for name, _, addr, _ in order:
            r = run_loadgen(ctx, addr, "--rate", ctx.rate, "--seconds", ctx.lat_seconds,
                            "--connections", CONNS, "--keys", KEYS)
            if r["non_200"] or r["errors"]:
                out.fail("%s %s open loop: %d non-200, %d errors" % (
                    case, name, r["non_200"], r["errors"]))
            lat[name].append(r)
    base = targets[0][0]
    for name, _, _, _ in targets:
        p50 = med([r["p50_ms"] for r in lat[name]])
        p99 = med([r["p99_ms"] for r in lat[name]])
        summary[name].update(p50_ms=p50, p99_ms=p99)
        out.put("%s_%s_at_%d_rps_p50_ms" % (case, name, ctx.rate), p50)
        out.put("%s_%s_at_%d_rps_p99_ms" % (case, name, ctx.rate), p99)
        if name != base:
            add50 = med([a["p50_ms"] - b["p50_ms"] for a, b in zip(lat[name], lat[base])])
            add99 = med([a["p99_ms"] - b["p99_ms"] for a, b in zip(lat[name], lat[base])])
            summary[name].update(add_p50_ms=add50, add_p99_ms=add99)
            out.put("%s_%s_added_p50_ms" % (case, name), add50)
            out.put("%s_%s_added_p99_ms" % (case, name), add99)
    return summary


def ratios(out, case, summary, who="ghlproxy"):
    for other in ("nginx", "haproxy", "evhttp"):
        if other != who and who in summary and other in summary:
            r = summary[who]["rps"] / summary[other]["rps"]
            out.put("%s_throughput_ratio_%s_vs_%s" % (case, who, other), r)
            summary[who]["ratio_" + other] = r
            if "add_p99_ms" in summary[who] and "add_p99_ms" in summary[other]:
                out.put("%s_added_p99_ms_%s_minus_%s" % (case, who, other),
                        summary[who]["add_p99_ms"] - summary[other]["add_p99_ms"])


QUEUED = "ghlproxy_requests_queued_total"


def check_not_binding(out, case, name, admin, before):
    """Limits must not bind in (a)-(c): no request may have waited in ghlproxy's queues."""
    queued = metric(admin, QUEUED) - before
    out.put("%s_%s_requests_queued" % (case, name), int(queued))
    if queued > 0:
        out.fail("%s: %d requests waited in %s's queues: the limits bound" % (case, queued,
                                                                           name))


def proxies_case(ctx, out, case, g, direct_url, nginx_addr, haproxy_addr, floor=None):
    """Cases (a) and (b): the same load directly and through each proxy, alternating; with
    floor, also through evhttp alone (the reference for the library's own cost)."""
    n, h, m = ctx.nginx_p, ctx.haproxy_p, ctx.mock
    targets = [("direct", direct_url, m.plain, lambda: [m.pid]),
               ("ghlproxy", "http://%s/" % g.addr, g.addr, lambda: [g.pid]),
               ("nginx", "http://%s/" % nginx_addr, nginx_addr, lambda: children(n.pid)),
               ("haproxy", "http://%s/" % haproxy_addr, haproxy_addr, lambda: [h.pid])]
    if floor:
        targets.append(("evhttp", "http://%s/" % floor.addr, floor.addr, lambda: [floor.pid]))
    q0 = metric(g.admin, QUEUED)
    s = throughput_case(ctx, out, case, targets)
    check_not_binding(out, case, "ghlproxy", g.admin, q0)
    ratios(out, case, s)
    if floor:
        ratios(out, case, s, who="evhttp")
    ctx.summary[case] = s


def case_a(ctx, out):
    out.section("(a) plain-HTTP upstream, %d keep-alive connections, %d keys, limits not binding"
                % (CONNS, KEYS))
    proxies_case(ctx, out, "a", ctx.gl_plain, "http://%s/" % ctx.mock.plain,
                 ctx.nginx_p.plain, ctx.haproxy_p.plain, floor=ctx.floor_p)
    out.put("a_ghlproxy_rss_after_kib", proc_status(ctx.gl_plain.pid)["VmRSS"])


def case_b(ctx, out):
    out.section("(b) TLS upstream (verified by all), %d keep-alive connections, %d keys"
                % (CONNS, KEYS))
    out.put("b_note", "direct throughput is wrk over TLS to the mock; direct latency is plain")
    proxies_case(ctx, out, "b", ctx.gl_tls, "https://%s/" % ctx.mock.tls, ctx.nginx_p.tls,
                 ctx.haproxy_p.tls)


def list_key(sock_path):
    """One burst list of the benchmark's keys (the script's KEYS[1], "<prefix>:{...}:b:...")."""
    for k in redis_cmd(sock_path, "KEYS", "*}:b:*"):
        return k
    return "none"


def case_c(ctx, out):
    out.section("(c) Redis backend, %d keys, against the local backend" % KEYS)
    redis = start_redis(ctx, "redis-c")
    ctx.redis_sock = redis.sock
    gr = start_ghlproxy(ctx, "ghlproxy-redis", "ghlproxy-redis.conf")
    try:
        until = time.monotonic() + 20
        while metric(gr.admin, "ghlproxy_redis_up") != 1 and time.monotonic() < until:
            time.sleep(0.1)
        if metric(gr.admin, "ghlproxy_redis_up") != 1:
            raise BenchError("the redis proxy never reached Redis:\n" + gr.tail())
        g = ctx.gl_plain
        fwd = 'ghlproxy_requests_total{outcome="forwarded"}'
        targets = [("ghlproxy", "http://%s/" % g.addr, g.addr, lambda: [g.pid]),
                   ("ghlproxy_redis", "http://%s/" % gr.addr, gr.addr,
                    lambda: [gr.pid, redis.pid])]
        if not ctx.smoke:
            # Steady state first. A key's Redis list holds the admissions of its last window
            # (W + guard, at most N): here about rate x 1.25 s; a key of HighLevel's 100 per
            # 10 s near its limit holds up to 100. The sample below says what this run held.
            for _, _, addr, _ in targets:
                run_loadgen(ctx, addr, "--requests", 101 * KEYS, "--keys", KEYS,
                            "--connections", CONNS)
        out.put("c_redis_list_len_sample", redis_cmd(redis.sock, "LLEN", list_key(redis.sock)))
        q0 = metric(g.admin, QUEUED)
        redis_cmd(redis.sock, "CONFIG", "RESETSTAT")  # usec_per_call: the measured runs only
        f0, e0 = metric(gr.admin, fwd), evalsha_calls(redis.sock)
        fb0 = metric(gr.admin, "ghlproxy_redis_fallbacks_total")
        r0 = cpu_seconds([redis.pid])
        s = throughput_case(ctx, out, "c", targets, latency=False)
        r1 = cpu_seconds([redis.pid])
        f1, e1 = metric(gr.admin, fwd), evalsha_calls(redis.sock)
        check_not_binding(out, "c", "ghlproxy", g.admin, q0)
        # (The Redis proxy queues every request while its script call is out: its queued
        # count says nothing about binding. Same limits, same load: the local check stands.)
        out.put("c_redis_server_cpu_us_per_request", (r1 - r0) * 1e6 / max(1, f1 - f0))
        usec = redis_info(redis.sock, "commandstats").get("cmdstat_evalsha", "")
        m = re.search(r"usec_per_call=([\d.]+)", usec)
        out.put("c_redis_evalsha_usec_per_call", float(m.group(1)) if m else -1)
        ratio = s["ghlproxy_redis"]["rps"] / s["ghlproxy"]["rps"]
        out.put("c_throughput_ratio_redis_vs_local", ratio)
        per = (e1 - e0) / max(1, f1 - f0)
        out.put("c_redis_forwarded", int(f1 - f0))
        # Every script call counts: admissions, feedback (a key's first answer teaches its
        # limits) and the heartbeat. Two round trips per decision would show as >= 2.
        out.put("c_redis_evalsha_per_forwarded", per)
        if metric(gr.admin, "ghlproxy_redis_fallbacks_total") != fb0:
            out.fail("c: the redis proxy fell back to local decisions during the runs")
        if per > 1.1:
            out.fail("c: more than one Redis round trip per admission decision (%.3f)" % per)
        s["ratio_local"] = ratio
        s["evalsha_per"] = per
        ctx.summary["c"] = s
    finally:
        gr.stop()
        redis.stop()


def case_d(ctx, out):
    out.section("(d) waiting requests (bench/waiting)")
    exe = os.path.join(ctx.build, "bench", "bench_waiting")
    mockbin = os.path.join(ctx.build, "tests", "support", "mock_upstream")
    if not os.access(exe, os.X_OK) or not os.access(mockbin, os.X_OK):
        out.fail("d: %s or %s is not built" % (exe, mockbin))
        return
    args = ["--keys", "20", "--per-key", "3", "--seconds", "1"] if ctx.smoke else []
    # bench_waiting opens every connection before it sends on any: they must be allowed more
    # than the default header_timeout (10 s from the accept) to speak. The proxy it starts
    # inherits this environment (config keys may come from it: GHLPROXY_SECTION_KEY).
    env = dict(os.environ, GHLPROXY_BIN=ctx.ghlproxy, GHLPROXY_MOCK_BIN=mockbin,
               GHLPROXY_SERVER_HEADER_TIMEOUT="10m")
    for k in SHELL_ONLY_ENV:  # as for the servers started here (Proc)
        env.pop(k, None)
    r = subprocess.run([exe] + args, capture_output=True, text=True, env=env, timeout=600)
    figs = {}
    for line in r.stdout.splitlines():
        k, _, v = line.partition(": ")
        out.put("d_" + k, v)
        figs[k] = v
    if r.returncode != 0:
        out.fail("d: bench_waiting exited %d: %s" % (r.returncode, r.stderr[-2000:]))
    ctx.summary["d"] = figs


def wait_keys(admin, pred, timeout):
    """Poll ghlproxy_live_keys until pred(live) or timeout; (live, seconds waited)."""
    t0 = time.monotonic()
    while True:
        live = metric(admin, "ghlproxy_live_keys")
        if pred(live) or time.monotonic() - t0 > timeout:
            return live, time.monotonic() - t0
        time.sleep(0.5)


def case_e(ctx, out):
    n = ctx.e_keys
    out.section("(e) %d distinct keys seen once each" % n)
    fig = {}
    for backend in ("local", "redis"):
        redis = start_redis(ctx, "redis-e") if backend == "redis" else None
        ctx.redis_sock = redis.sock if redis else os.path.join(ctx.tmp, "none.sock")
        ctx.mock_nohl_for_conf = True
        g = start_ghlproxy(ctx, "ghlproxy-keys-" + backend, "ghlproxy-keys.conf",
                           {"BACKEND": backend, "MOCK_PLAIN": ctx.mock_nohl.plain})
        try:
            if redis:
                until = time.monotonic() + 20
                while metric(g.admin, "ghlproxy_redis_up") != 1 and time.monotonic() < until:
                    time.sleep(0.1)
            # Warm-up on other keys: pools, buffers, the key table's first growth.
            run_loadgen(ctx, g.addr, "--requests", 2000, "--keys", 2000, "--key-base",
                        90000000, "--connections", CONNS)
            time.sleep(1)
            live0, st0 = metric(g.admin, "ghlproxy_live_keys"), proc_status(g.pid)
            rm0 = int(redis_info(redis.sock, "memory")["used_memory"]) if redis else 0
            db0 = redis_cmd(redis.sock, "DBSIZE") if redis else 0
            r = run_loadgen(ctx, g.addr, "--requests", n, "--keys", n, "--key-base", 0,
                            "--connections", CONNS)
            if r["ok"] != n:
                out.fail("e %s: %d of %d requests answered 200" % (backend, r["ok"], n))
            time.sleep(1)
            live1, st1 = metric(g.admin, "ghlproxy_live_keys"), proc_status(g.pid)
            pre = "e_%s_" % backend
            out.put(pre + "locations", n)
            out.put(pre + "live_keys_added", int(live1 - live0))
            out.put(pre + "rss_before_kib", st0["VmRSS"])
            out.put(pre + "rss_after_kib", st1["VmRSS"])
            per_key = (st1["VmRSS"] - st0["VmRSS"]) * 1024 / max(1, live1 - live0)
            per_loc = (st1["VmRSS"] - st0["VmRSS"]) * 1024 / n
            out.put(pre + "bytes_per_key", per_key)
            out.put(pre + "bytes_per_location", per_loc)
            fig[backend] = {"per_key": per_key, "per_loc": per_loc,
                            "keys_per_loc": (live1 - live0) / n}
            if redis:
                rm1 = int(redis_info(redis.sock, "memory")["used_memory"])
                db1 = redis_cmd(redis.sock, "DBSIZE")
                out.put(pre + "redis_keys_per_location", (db1 - db0) / n)
                out.put(pre + "redis_bytes_per_location", (rm1 - rm0) / n)
                fig[backend]["redis_per_loc"] = (rm1 - rm0) / n
            # The burst windows (2 s + 250 ms) pass; then the sweep may drop what is idle.
            # A shared key's mirror goes; a local key keeps its daily counts for a day.
            if backend == "redis":
                live2, waited = wait_keys(g.admin, lambda v: v <= live0, ctx.evict_timeout)
            else:
                time.sleep(ctx.local_settle)
                live2, waited = metric(g.admin, "ghlproxy_live_keys"), ctx.local_settle
            st2 = proc_status(g.pid)
            out.put(pre + "live_keys_before", int(live0))
            out.put(pre + "live_keys_after_windows", int(live2))
            out.put(pre + "seconds_waited", waited)
            out.put(pre + "rss_after_windows_kib", st2["VmRSS"])
            fig[backend]["live_after"] = max(0, live2 - live0)
            fig[backend]["waited_s"] = waited
            if backend == "redis":
                fig[backend]["evicted"] = live2 <= live0
                if not fig[backend]["evicted"]:
                    out.fail("e redis: %d keys still live after %.0f s" % (live2 - live0,
                                                                          waited))
                db2 = redis_cmd(redis.sock, "DBSIZE")
                rm2 = int(redis_info(redis.sock, "memory")["used_memory"])
                out.put(pre + "redis_keys_per_location_after_windows", (db2 - db0) / n)
                out.put(pre + "redis_bytes_per_location_after_windows", (rm2 - rm0) / n)
                fig[backend]["redis_per_loc_after"] = (rm2 - rm0) / n
        finally:
            g.stop()
            if redis:
                redis.stop()
    ctx.summary["e"] = fig


def pct(v, p):
    """Nearest-rank percentile of a list (nan when empty)."""
    if not v:
        return float("nan")
    v = sorted(v)
    return v[min(len(v) - 1, max(0, int(p / 100 * len(v) + 0.999999) - 1))]


def precision_run(ctx, g, key):
    """One saturated run on one fresh key: (lateness of the requests the window held, of all,
    gaps of N at the upstream, requests per second admitted, failures)."""
    http_get(ctx.mock_nohl.plain, "/__perf/arrivals")  # forget earlier arrivals
    sends = os.path.join(ctx.tmp, "sends.txt")
    r = run_loadgen(ctx, g.addr, "--keys", 1, "--key-base", key, "--connections", 64,
                    "--seconds", ctx.f_seconds, "--seq", "--sends", sends)
    _, text = http_get(ctx.mock_nohl.plain, "/__perf/arrivals")
    arr = sorted((int(ns), int(seq)) for seq, ns in (l.split() for l in text.splitlines()))
    send = {}
    with open(sends) as f:
        for line in f:
            i, ns = line.split()
            send[int(i)] = int(ns)
    # The limits of bench/perf/ghlproxy-precision.conf: N = 100, W = 1 s, guard 100 ms.
    n_burst, span_ns = 100, (1000 + 100) * 1000000
    late_all, late_waited = [], []
    for k, (t, seq) in enumerate(arr):
        # The earliest legal moment: the request reached the proxy, and (once N are out) the
        # N-th before it left W + guard earlier (the proxy's own rule, on its send times; the
        # mock's arrival times stand for them here).
        legal = send[seq]
        bound = k >= n_burst and arr[k - n_burst][0] + span_ns > legal
        if bound:
            legal = arr[k - n_burst][0] + span_ns
        late_ms = (t - legal) / 1e6
        late_all.append(late_ms)
        if bound:
            late_waited.append(late_ms)
    gaps = [arr[k][0] - arr[k - n_burst][0] for k in range(n_burst, len(arr))]
    bad = int(r["non_200"] + r["errors"])
    return late_waited, late_all, gaps, len(arr) / max(1e-9, r["seconds"]), bad


def case_f(ctx, out):
    out.section("(f) admission precision: one key saturated (100 per 1 s + 100 ms guard), "
                "%d runs of %d s" % (ctx.reps, ctx.f_seconds))
    g = start_ghlproxy(ctx, "ghlproxy-precision", "ghlproxy-precision.conf",
                       {"MOCK_PLAIN": ctx.mock_nohl.plain})
    window_ns, span_ns = 1000 * 1000000, 1100 * 1000000
    try:
        out.put("f_idle_rss_kib", proc_status(g.pid)["VmRSS"])
        p50s, p99s, maxs, all99, breaches, inside, min_gap, n_waited = [], [], [], [], 0, 0, [], 0
        for rep in range(ctx.reps):
            waited, every, gaps, rate, bad = precision_run(ctx, g, 7000000 + rep)
            if bad:
                out.fail("f: %d requests failed" % bad)
            # The contract at the upstream's door, as tests/support/oracle.c judges it: no
            # N + 1 arrivals within W (the guard absorbs jitter on the way there).
            breaches += sum(1 for x in gaps if x < window_ns)
            inside += sum(1 for x in gaps if x < span_ns)
            if gaps:
                min_gap.append(min(gaps) / 1e6)
            n_waited += len(waited)
            p50s.append(pct(waited, 50))
            p99s.append(pct(waited, 99))
            maxs.append(pct(waited, 100))
            all99.append(pct(every, 99))
            out.put("f_rep%d_admitted_per_s" % (rep + 1), rate)
            out.put("f_rep%d_lateness_p50_ms" % (rep + 1), p50s[-1])
            out.put("f_rep%d_lateness_p99_ms" % (rep + 1), p99s[-1])
            out.put("f_rep%d_lateness_max_ms" % (rep + 1), maxs[-1])
        out.put("f_window_breaches", breaches)
        out.put("f_gaps_inside_guard", inside)
        out.put("f_min_gap_of_n_ms", min(min_gap) if min_gap else float("nan"))
        out.put("f_waited_samples", n_waited)
        fig = {"waited_p50": med(p50s), "waited_p99": med(p99s), "waited_max": max(maxs),
               "all_p99": med(all99)}
        out.put("f_lateness_p50_ms", fig["waited_p50"])
        out.put("f_lateness_p99_ms", fig["waited_p99"])
        out.put("f_lateness_max_ms", fig["waited_max"])
        out.put("f_lateness_all_requests_p99_ms", fig["all_p99"])
        if breaches:
            out.fail("f: %d admissions broke the window (N in W at the upstream)" % breaches)
        if not n_waited:
            out.fail("f: no request waited for the window (not saturated)")
        ctx.summary["f"] = fig
    finally:
        g.stop()


def callgrind_ir(ctx, name, argv, addr, n):
    """User-space instructions per request of a server under callgrind (counted, not timed: the
    one figure here that a busy machine cannot move)."""
    cg = os.path.join(ctx.tmp, "cg-%s.out" % name)
    p = Proc("cg-" + name, ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + cg] + argv,
             ctx.tmp)
    try:
        wait_tcp(addr, p, timeout=120)
        run_loadgen(ctx, addr, "--requests", 500, "--keys", KEYS, "--connections", CONNS)
        subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True, timeout=120)
        r = run_loadgen(ctx, addr, "--requests", n, "--keys", KEYS, "--connections", CONNS)
        subprocess.run(["callgrind_control", "-d", str(p.pid)], capture_output=True, timeout=120)
    finally:
        p.stop()
    dumps = [f for f in os.listdir(ctx.tmp) if f.startswith("cg-%s.out." % name)]
    if not dumps or r["ok"] != n:
        raise BenchError("callgrind of %s: no dump, or %d of %d answered" % (name, r["ok"], n))
    with open(os.path.join(ctx.tmp, sorted(dumps)[-1])) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1]) / n
    raise BenchError("callgrind of %s: no totals" % name)


def syscalls(ctx, pids, addr, n):
    """System calls per request of running processes (strace -c), and epoll_ctl's share."""
    path = os.path.join(ctx.tmp, "strace-%d.txt" % pids[0])
    argv = ["strace", "-c", "-f", "-o", path]
    for pid in pids:
        argv += ["-p", str(pid)]
    s = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)  # attached
    r = run_loadgen(ctx, addr, "--requests", n, "--keys", KEYS, "--connections", CONNS)
    s.send_signal(signal.SIGINT)
    s.wait(60)
    total = epoll = 0
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 5 and fields[3].isdigit():
                if fields[-1] == "total":
                    total = int(fields[3])
                elif fields[-1] == "epoll_ctl":
                    epoll = int(fields[3])
    if r["ok"] != n or total == 0:
        raise BenchError("strace: %d of %d answered, %d calls seen" % (r["ok"], n, total))
    return total / n, epoll / n


def case_p(ctx, out):
    n = 300 if ctx.smoke else 5000
    out.section("(p) what one request costs each proxy, counted: user-space instructions "
                "(callgrind) and system calls (strace), %d requests of case (a)" % n)
    fig = {}
    g, ng, h, ev = ctx.gl_plain, ctx.nginx_p, ctx.haproxy_p, ctx.floor_p
    for name, pids, addr in (("ghlproxy", [g.pid], g.addr),
                             ("nginx", [p for p in children(ng.pid) if p != ng.pid], ng.plain),
                             ("haproxy", [h.pid], h.plain), ("evhttp", [ev.pid], ev.addr)):
        calls, epoll = syscalls(ctx, pids, addr, n)
        out.put("p_%s_syscalls_per_request" % name, calls)
        out.put("p_%s_epoll_ctl_per_request" % name, epoll)
        fig[name] = {"syscalls": calls, "epoll_ctl": epoll}
    # Fresh instances under callgrind, on ports of their own, with the configs of case (a).
    listen, admin = "127.0.0.1:%d" % free_port(), "127.0.0.1:%d" % free_port()
    conf = os.path.join(ctx.tmp, "cg-ghlproxy.conf")
    with open(conf, "w") as f:
        f.write(fill("ghlproxy-plain.conf", {"LISTEN": listen, "ADMIN": admin,
                                             "MOCK_PLAIN": ctx.mock.plain}))
    fig["ghlproxy"]["ir"] = callgrind_ir(ctx, "ghlproxy", [ctx.ghlproxy, "-c", conf], listen, n)
    ndir = os.path.join(ctx.tmp, "nginx-cg")
    os.makedirs(os.path.join(ndir, "logs"), exist_ok=True)
    nplain = "127.0.0.1:%d" % free_port()
    with open(os.path.join(ndir, "nginx.conf"), "w") as f:  # one process: valgrind follows it
        f.write(fill("nginx.conf", {"DIR": ndir, "MOCK_PLAIN": ctx.mock.plain,
                                    "MOCK_TLS": ctx.mock.tls, "CA": ctx.ca,
                                    "NGINX_PLAIN": nplain,
                                    "NGINX_TLS": "127.0.0.1:%d" % free_port()})
                .replace("master_process on;", "master_process off;"))
    fig["nginx"]["ir"] = callgrind_ir(ctx, "nginx", [ctx.nginx, "-p", ndir, "-c", "nginx.conf",
                                                     "-e", "stderr"], nplain, n)
    hplain, cfg = "127.0.0.1:%d" % free_port(), os.path.join(ctx.tmp, "haproxy-cg.cfg")
    with open(cfg, "w") as f:
        f.write(fill("haproxy.cfg", {"MOCK_PLAIN": ctx.mock.plain, "MOCK_TLS": ctx.mock.tls,
                                     "CA": ctx.ca, "HAPROXY_PLAIN": hplain,
                                     "HAPROXY_TLS": "127.0.0.1:%d" % free_port()}))
    fig["haproxy"]["ir"] = callgrind_ir(ctx, "haproxy", [ctx.haproxy, "-db", "-f", cfg], hplain,
                                        n)
    eplain = "127.0.0.1:%d" % free_port()
    fig["evhttp"]["ir"] = callgrind_ir(ctx, "evhttp", [ctx.floor, "--listen", eplain,
                                                       "--upstream", ctx.mock.plain], eplain, n)
    for name in ("ghlproxy", "nginx", "haproxy", "evhttp"):
        out.put("p_%s_instructions_per_request" % name, round(fig[name]["ir"]))
    ctx.summary["p"] = fig


def idle_rss(ctx, out):
    out.section("idle memory (right after start, before any request)")
    g = start_ghlproxy(ctx, "ghlproxy-idle", "ghlproxy-plain.conf")
    time.sleep(0.5)
    st = proc_status(g.pid)
    g.stop()
    for k, v in st.items():
        out.put("idle_ghlproxy_%s_kib" % k, v)
    ng = sum(proc_status(p)["VmRSS"] for p in children(ctx.nginx_p.pid))
    out.put("idle_nginx_master_and_worker_rss_kib", ng)
    out.put("idle_haproxy_rss_kib", proc_status(ctx.haproxy_p.pid)["VmRSS"])
    ctx.summary["idle"] = st


# ---- summary ------------------------------------------------------------------------------

def fmt(v, spec="%.2f"):
    try:
        if v != v:  # nan
            return "n/a"
        return spec % v
    except TypeError:
        return "n/a"


def summary_table(ctx, out):
    s = ctx.summary
    rows = []
    for case, title in (("a", "(a) plain upstream"), ("b", "(b) TLS upstream")):
        if case not in s:
            continue
        t = s[case]
        for name in ("direct", "ghlproxy", "nginx", "haproxy", "evhttp"):
            if name not in t:
                continue
            x = t[name]
            rows.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                title, name, fmt(x["rps"], "%.0f"),
                fmt(x["rps"] / t["ghlproxy"]["rps"]) if name != "ghlproxy" else "1.00",
                fmt(x.get("cpu_us"), "%.1f"),
                fmt(x.get("add_p50_ms"), "%.3f") if name != "direct" else "-",
                fmt(x.get("add_p99_ms"), "%.3f") if name != "direct" else "-"))
    out.lines.append("")
    out.lines.append("# summary (medians over %d repetitions; ratio: that target's throughput"
                     " / ghlproxy's)" % ctx.reps)
    out.lines.append("| case | target | req/s | ratio to ghlproxy | CPU us/req | added p50 ms"
                     " (at %d req/s) | added p99 ms |" % ctx.rate)
    out.lines.append("|---|---|---|---|---|---|---|")
    out.lines.extend(rows)
    checks = []
    for case in ("a", "b"):
        if case in s:
            g = s[case]["ghlproxy"]
            checks.append("(%s) ghlproxy / nginx %s, / HAProxy %s (target >= 1.0); added p99 "
                          "%s ms vs nginx %s, HAProxy %s" % (
                              case, fmt(g.get("ratio_nginx")), fmt(g.get("ratio_haproxy")),
                              fmt(g.get("add_p99_ms"), "%.3f"),
                              fmt(s[case]["nginx"].get("add_p99_ms"), "%.3f"),
                              fmt(s[case]["haproxy"].get("add_p99_ms"), "%.3f")))
            if "evhttp" in s[case]:
                e = s[case]["evhttp"]
                checks.append("(%s) evhttp alone, the library without the proxy's work: / nginx "
                              "%s, / HAProxy %s; added p99 %s ms; ghlproxy / evhttp alone %s" % (
                                  case, fmt(e.get("ratio_nginx")), fmt(e.get("ratio_haproxy")),
                                  fmt(e.get("add_p99_ms"), "%.3f"), fmt(g.get("ratio_evhttp"))))
    if "c" in s:
        checks.append("(c) Redis backend / local: %s (target >= 0.70); EVALSHA per forwarded "
                      "request %s (target <= 1)" % (fmt(s["c"]["ratio_local"]),
                                                    fmt(s["c"]["evalsha_per"], "%.3f")))
    if "d" in s:
        d = s["d"]
        checks.append("(d) %s waiting: %s bytes each (target <= 4096), %s%% of a core "
                      "(target < 1)" % (d.get("waiting_requests"),
                                        d.get("bytes_per_waiting_request"),
                                        d.get("cpu_percent_while_waiting")))
    if "e" in s:
        e = s["e"]
        loc, red = e.get("local", {}), e.get("redis", {})
        checks.append("(e) %s bytes per key (%s keys per location) in the proxy, local "
                      "backend (target <= 1024); Redis backend: %s bytes per key, mirrors "
                      "evicted %s s after the burst (%s left); Redis %s bytes per location, "
                      "%s once the burst windows passed" % (
                          fmt(loc.get("per_key"), "%.0f"), fmt(loc.get("keys_per_loc"), "%.0f"),
                          fmt(red.get("per_key"), "%.0f"), fmt(red.get("waited_s"), "%.0f"),
                          fmt(red.get("live_after"), "%.0f"),
                          fmt(red.get("redis_per_loc"), "%.0f"),
                          fmt(red.get("redis_per_loc_after"), "%.0f")))
    if "f" in s:
        f = s["f"]
        checks.append("(f) lateness after the earliest legal moment, requests the window held"
                      " (medians over runs): p50 %s ms, p99 %s ms (target <= 5), max %s ms" % (
                          fmt(f.get("waited_p50"), "%.3f"), fmt(f.get("waited_p99"), "%.3f"),
                          fmt(f.get("waited_max"), "%.3f")))
    if "p" in s:
        p = s["p"]
        checks.append("(p) per request: " + "; ".join(
            "%s %s instructions, %s system calls (%s epoll_ctl)" % (
                name, fmt(p[name].get("ir"), "%.0f"), fmt(p[name].get("syscalls"), "%.1f"),
                fmt(p[name].get("epoll_ctl"), "%.1f"))
            for name in ("ghlproxy", "nginx", "haproxy", "evhttp") if name in p))
    if "idle" in s:
        checks.append("idle RSS %s KiB (target <= 8192)" % s["idle"].get("VmRSS"))
    out.lines.append("")
    out.lines.extend("- " + c for c in checks)
    print("\n".join(out.lines[-(len(rows) + len(checks) + 5):]), flush=True)


# ---- main ---------------------------------------------------------------------------------

class Ctx:
    pass


def find_tool(name, env):
    path = os.environ.get(env) or shutil.which(name) or shutil.which(name, path="/usr/sbin")
    if not path:
        raise BenchError("%s not found: apt-get install %s" % (name, name))
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.environ.get("BUILD_DIR", os.path.join(ROOT, "build")))
    ap.add_argument("--tools", help="where perf_fastmock and perf_loadgen are "
                    "(default BUILD/bench/perf)")
    ap.add_argument("--out", help="results file (default bench/results/perf.txt; "
                    "with --smoke none unless given)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--cases", default="abcdefp")
    a = ap.parse_args()

    ctx = Ctx()
    ctx.smoke = a.smoke
    ctx.build = os.path.abspath(a.build)
    tools = os.path.abspath(a.tools) if a.tools else os.path.join(ctx.build, "bench", "perf")
    ctx.ghlproxy = os.environ.get("GHLPROXY_BIN", os.path.join(ctx.build, "ghlproxy"))
    ctx.fastmock = os.path.join(tools, "perf_fastmock")
    ctx.loadgen = os.path.join(tools, "perf_loadgen")
    ctx.floor = os.path.join(tools, "perf_evhttp_floor")
    ctx.reps = a.reps or (1 if a.smoke else 5)
    ctx.seconds = a.seconds or (1 if a.smoke else 10)
    ctx.lat_seconds = 1 if a.smoke else 5
    ctx.rate = 500 if a.smoke else 5000
    ctx.e_keys = 2000 if a.smoke else 100000
    ctx.evict_timeout = 60 if a.smoke else 600
    ctx.local_settle = 3 if a.smoke else 10
    ctx.f_seconds = 2 if a.smoke else 10
    ctx.summary = {}
    out = Out()
    for exe in (ctx.ghlproxy, ctx.fastmock, ctx.loadgen, ctx.floor):
        if not os.access(exe, os.X_OK):
            raise BenchError("%s is not built (ninja -C BUILD ghlproxy bench/perf/perf_fastmock "
                             "bench/perf/perf_loadgen bench/perf/perf_evhttp_floor)" % exe)
    ctx.nginx = find_tool("nginx", "NGINX_BIN")
    ctx.haproxy = find_tool("haproxy", "HAPROXY_BIN")
    find_tool("wrk", "WRK_BIN")
    find_tool("redis-server", "REDIS_BIN")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    ctx.tmp = tempfile.mkdtemp(prefix="ghlproxy-perf-")
    os.chmod(ctx.tmp, 0o755)  # nginx's worker (nobody, when run as root) reads its temp dirs
    atexit.register(lambda: shutil.rmtree(ctx.tmp, ignore_errors=True))
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    ctx.wrk_script = os.path.join(ctx.tmp, "keys.lua")
    with open(ctx.wrk_script, "w") as f:
        f.write('-- request i is for location BenchLoc<i mod PERF_KEYS>, as loadgen sends\n'
                'local n = tonumber(os.getenv("PERF_KEYS"))\n'
                'local pit = os.getenv("PERF_PIT")\n'
                'local reqs = {}\n'
                'for i = 0, n - 1 do\n'
                '  reqs[i + 1] = wrk.format("GET", string.format('
                '"/contacts/?locationId=BenchLoc%07d", i),\n'
                '    {["Host"] = "bench", ["Version"] = "2021-07-28",\n'
                '     ["Authorization"] = "Bearer " .. pit})\n'
                'end\n'
                'local i = 0\n'
                'request = function()\n'
                '  i = i % n + 1\n'
                '  return reqs[i]\n'
                'end\n')

    for k, v in machine(ctx):
        out.put(k, v)
    out.put("mode", "smoke" if a.smoke else "full")
    out.put("repetitions", ctx.reps)
    out.put("seconds_per_run", ctx.seconds)
    out.put("connections", CONNS)

    ctx.ca = make_certs(ctx.tmp)
    # Cases (a)-(c): the limits of bench/perf/ghlproxy-plain.conf, as HighLevel would say them.
    ctx.mock = start_fastmock(ctx, "fastmock", hl_headers="100,1000,200000")
    # Cases (e), (f): no headers, so that each instance's configured limits rule.
    ctx.mock_nohl = start_fastmock(ctx, "fastmock-nohl", hl_headers=None)
    ctx.redis_sock = os.path.join(ctx.tmp, "none.sock")
    ctx.nginx_p = start_nginx(ctx)
    ctx.haproxy_p = start_haproxy(ctx)
    ctx.gl_plain = start_ghlproxy(ctx, "ghlproxy-plain", "ghlproxy-plain.conf")
    ctx.gl_tls = start_ghlproxy(ctx, "ghlproxy-tls", "ghlproxy-tls.conf")
    ctx.floor_p = start_evhttp_floor(ctx)

    cases = {"a": case_a, "b": case_b, "c": case_c, "d": case_d, "e": case_e, "f": case_f,
             "p": case_p}
    if "f" in a.cases:
        idle_rss(ctx, out)
    for c in a.cases:
        if c not in cases:
            raise BenchError("unknown case %s" % c)
        try:
            cases[c](ctx, out)
        except (BenchError, subprocess.TimeoutExpired, OSError) as e:
            out.fail("case %s did not run: %s" % (c, e))
    for c in a.cases:  # the smoke run's assertion: every case produced its figures
        if c not in ctx.summary:
            out.fail("case %s produced no figures" % c)
    for p in list(PROCS):
        if not p.alive():
            out.fail("%s died:\n%s" % (p.name, p.tail()))
    if out.failures:  # what the servers said, for the failures above (no secret is logged)
        out.lines.append("")
        out.lines.append("# the end of each server's log")
        for p in PROCS:
            text = p.tail(1500).strip()
            if text:
                out.lines.append("## " + p.name)
                out.lines.extend(text.splitlines())
    summary_table(ctx, out)
    out.lines.append("")
    out.lines.append("verdict: %s" % ("FAILED: " + "; ".join(out.failures).replace("\n", " ")
                                      if out.failures else "ok"))
    print(out.lines[-1])
    dest = a.out or (None if a.smoke else os.path.join(ROOT, "bench", "results", "perf.txt"))
    if dest:
        header = ["# bench: ghlproxy against nginx and HAProxy (bench/perf/perf.py%s)" %
                  (" --smoke" if a.smoke else ""),
                  "# one run, targets alternating; medians over repetitions; read ratios"]
        with open(dest + ".tmp", "w") as f:
            f.write("\n".join(header + out.lines) + "\n")
        os.replace(dest + ".tmp", dest)
        log("results in " + dest)
    return 1 if out.failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        log(str(e))
        sys.exit(1)
