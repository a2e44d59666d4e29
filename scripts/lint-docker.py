#!/usr/bin/env python3
"""
lint-docker.py: checks docker/Dockerfile and docker/compose.yaml against what the project asks
of them, since no Docker engine runs in CI (scripts/check-packaging calls it).

  scripts/lint-docker.py [--dockerfile F] [--compose F] [--dockerignore F]
                         [--ghlproxy BIN --config FILE]

Dockerfile: multi-stage, built on Debian 12 and run on debian:12-slim; the build stage runs
scripts/build-release and installs at least `scripts/build-release --deps build`, the final
stage at least `--deps runtime` (plus curl when the health check uses it); apt-get with -y,
--no-install-recommends, update and list removal in the same RUN; a non-root USER; a
HEALTHCHECK on /healthz at the admin port; EXPOSE of the listen port; a VOLUME for the state
directory; exec-form ENTRYPOINT/CMD (the proxy is PID 1 and gets SIGTERM); no secret in
ENV/ARG, COPY/ADD sources or values.

.dockerignore: the build context keeps what the build needs and leaves out .git, build trees
and secret-looking files.

compose.yaml: a Redis service and at least two proxies built from the Dockerfile that share one
quota (limits.backend = redis, the same redis.url naming the Redis service, the same key
prefix), health checks on every service, proxies starting once Redis is healthy, secrets as
compose file secrets or mounted files named by GHLPROXY_*_FILE (never as environment values),
a stop grace period longer than server.drain_timeout, proxy ports published on loopback only.

With --ghlproxy, each configuration the files define (the image's ENV, and each proxy's ENV plus
its environment) is checked by `ghlproxy -t -c CONFIG`.

Prints one "file[:line]: message" line per problem; exit 0 when there are none, else 1.
"""
import argparse
import os
import re
import shlex
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

problems = []


def problem(where, msg):
    problems.append(f"{where}: {msg}")


# A name whose value would be a secret: its last word is one of these (GHLPROXY_REDIS_KEY_PREFIX
# is not; GHLPROXY_ADMIN_KEY and REDIS_PASSWORD are). *_FILE names a file and is fine.
SECRET_NAME = re.compile(r"(^|_)(PASSWORD|PASSWD|PASS|SECRET|TOKEN|KEY|APIKEY|CREDENTIALS?)$", re.I)
# Values that look like a credential whatever their name: a JWT, a HighLevel PIT, a PEM key,
# a bearer token, user:password@ in a URL.
SECRET_VALUE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.|\bpit-[0-9a-f]{8}|-----BEGIN|Bearer\s+\S|"
                          r"://[^/\s:@]*:[^/\s@]+@")
SECRET_PATH = re.compile(r"(^|/)(secrets?|\.env|id_rsa|id_ed25519)(/|$)|\.(key|pem|token|secret)$",
                         re.I)
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
ANY_HOSTS = {"0.0.0.0", "::", "[::]", ""}


def secret_name(name):
    return not name.upper().endswith("_FILE") and SECRET_NAME.search(name) is not None


def deps(kind):
    out = subprocess.run([os.path.join(HERE, "build-release"), "--deps", kind], check=True,
                         capture_output=True, text=True).stdout
    return set(out.split())


def parse_duration_ms(s):
    """'25s', '1m30s', '250ms', '2h' (Docker's and ghlproxy's units) in ms, or None."""
    s = str(s).strip()
    units = {"ms": 1, "s": 1000, "m": 60000, "h": 3600000, "d": 86400000}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", s)
    if not parts or "".join(a + b for a, b in parts) != s:
        return None
    return sum(float(a) * units[b] for a, b in parts)


def split_hostport(addr):
    """'0.0.0.0:8080' -> ('0.0.0.0', '8080'); '[::]:8080' -> ('[::]', '8080'); unix: -> None."""
    addr = addr.strip()
    if addr.startswith("unix:") or ":" not in addr:
        return None
    host, _, port = addr.rpartition(":")
    return host, port


def truthy(v):
    return str(v).strip().lower() in ("yes", "true", "on", "1")


# ---- Dockerfile ----


class Instr:
    def __init__(self, line, cmd, args):
        self.line, self.cmd, self.args = line, cmd, args


def parse_dockerfile(path):
    """Instructions with their first line: continuations joined, comments and directives out."""
    instrs = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    buf, start = "", None
    for i, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and start is None):
            continue  # comments may sit inside a continued instruction, and are dropped
        if start is None:
            start = i
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        if buf.strip():
            cmd, _, args = buf.strip().partition(" ")
            instrs.append(Instr(start, cmd.upper(), args.strip()))
        buf, start = "", None
    if buf.strip():
        cmd, _, args = buf.strip().partition(" ")
        instrs.append(Instr(start, cmd.upper(), args.strip()))
    return instrs


def exec_form(args):
    return args.startswith("[") and args.endswith("]")


def env_pairs(args):
    """ENV/ARG arguments as (name, value) pairs; value None for `ARG NAME`."""
    toks = shlex.split(args, posix=True)
    if toks and "=" not in toks[0]:
        if len(toks) == 1:
            return [(toks[0], None)]
        return [(toks[0], " ".join(toks[1:]))]  # legacy `ENV NAME value`
    return [tuple(t.split("=", 1)) if "=" in t else (t, None) for t in toks]


def apt_packages(run):
    """The package names every `apt-get install` of a RUN line names."""
    pkgs = set()
    for m in re.finditer(r"apt-get\s+install\s+((?:[^&|;]|\\\n)*)", run):
        for tok in m.group(1).split():
            if not tok.startswith("-"):
                pkgs.add(tok.split("=")[0])
    return pkgs


def lint_dockerfile(path):
    """Returns the final stage's environment (name -> value)."""
    instrs = parse_dockerfile(path)
    where = lambda ins: f"{path}:{ins.line}"  # noqa: E731
    stages = []  # (from instr, name, [instrs])
    for ins in instrs:
        if ins.cmd == "FROM":
            toks = ins.args.split()
            toks = [t for t in toks if not t.startswith("--platform")]
            name = toks[2] if len(toks) >= 3 and toks[1].upper() == "AS" else None
            stages.append((ins, toks[0] if toks else "", name, []))
        elif stages:
            stages[-1][3].append(ins)
        elif ins.cmd != "ARG":
            problem(where(ins), f"{ins.cmd} before the first FROM")
    if len(stages) < 2:
        problem(path, "not multi-stage: build in one stage, run in a slim one")
        if not stages:
            return {}

    for fins, image, _, _ in stages:
        if image.endswith(":latest") or (":" not in image and "@" not in image):
            problem(where(fins), f"FROM {image}: pin the release (debian:12...), never latest")
        base = image.split("@")[0]
        if not re.fullmatch(r"debian:(12|bookworm)(-slim|-\d{8}(-slim)?)?", base):
            problem(where(fins), f"FROM {image}: stages must be Debian 12 (bookworm), the ABI "
                    "the runtime stage's libraries have")
    final_from, final_image, _, final = stages[-1]
    if final_image.split("@")[0] not in ("debian:12-slim", "debian:bookworm-slim"):
        problem(where(final_from), f"the final stage runs on {final_image}, not debian:12-slim")

    # apt-get hygiene, in every stage.
    for _, _, _, body in stages:
        for ins in body:
            if ins.cmd != "RUN":
                continue
            run = ins.args
            if re.search(r"(^|[;&|]\s*)apt\s", run):
                problem(where(ins), "use apt-get in scripts, not apt")
            if "apt-get install" not in run:
                continue
            if "--no-install-recommends" not in run:
                problem(where(ins), "apt-get install without --no-install-recommends")
            if not re.search(r"apt-get install\s+(\S+\s+)*-y\b|apt-get -y install|--yes", run):
                problem(where(ins), "apt-get install without -y")
            if "apt-get update" not in run:
                problem(where(ins), "apt-get install without apt-get update in the same RUN "
                        "(a cached update layer goes stale)")
            if not re.search(r"rm -rf /var/lib/apt/lists/\*?", run):
                problem(where(ins), "apt lists not removed in the same RUN "
                        "(rm -rf /var/lib/apt/lists/*)")

    # What each stage installs.
    def installed(body):
        s = set()
        for ins in body:
            if ins.cmd == "RUN":
                s |= apt_packages(ins.args)
        return s

    build_stages = stages[:-1]
    build_pkgs = set().union(*(installed(b) for _, _, _, b in build_stages)) if build_stages \
        else set()
    missing = deps("build") - build_pkgs
    if build_stages and missing:
        problem(where(build_stages[0][0]), "the build stage lacks `scripts/build-release --deps "
                f"build` packages: {' '.join(sorted(missing))}")
    if build_stages and not any(ins.cmd == "RUN" and "scripts/build-release" in ins.args
                                for _, _, _, b in build_stages for ins in b):
        problem(where(build_stages[0][0]), "the build stage does not run scripts/build-release "
                "(the build CI checks)")
    final_pkgs = installed(final)
    missing = deps("runtime") - final_pkgs
    if missing:
        problem(where(final_from), "the final stage lacks runtime packages "
                f"(scripts/build-release --deps runtime): {' '.join(sorted(missing))}")
    extra_dev = sorted(p for p in final_pkgs if p.endswith("-dev") or p in ("build-essential",
                                                                              "gcc", "meson"))
    if extra_dev:
        problem(where(final_from), f"build tools in the final stage: {' '.join(extra_dev)}")
    stage_names = {n for _, _, n, _ in build_stages if n} | {str(i) for i in
                                                            range(len(build_stages))}
    if not any(ins.cmd == "COPY" and re.search(r"--from=(\S+)", ins.args) and
               re.search(r"--from=(\S+)", ins.args).group(1) in stage_names for ins in final):
        problem(where(final_from), "the final stage copies nothing from the build stage")

    # Secrets.
    for _, _, _, body in stages:
        for ins in body:
            if ins.cmd in ("ENV", "ARG"):
                for name, value in env_pairs(ins.args):
                    if secret_name(name):
                        problem(where(ins), f"{ins.cmd} {name}: a secret baked into the image "
                                "(name a file with *_FILE and mount it)")
                    if value and SECRET_VALUE.search(value):
                        problem(where(ins), f"{ins.cmd} {name}: the value looks like a credential")
                    if value and name.upper().endswith("_FILE") and not value.startswith("/"):
                        problem(where(ins), f"{ins.cmd} {name}: not an absolute path")
            elif ins.cmd in ("COPY", "ADD"):
                toks = [t for t in shlex.split(ins.args) if not t.startswith("--")]
                if exec_form(ins.args):
                    toks = re.findall(r'"([^"]*)"', ins.args)
                for src in toks[:-1]:
                    if SECRET_PATH.search(src):
                        problem(where(ins), f"{ins.cmd} {src}: looks like a secret file")
                    if ins.cmd == "ADD" and re.match(r"https?://", src):
                        problem(where(ins), f"ADD {src}: fetch nothing at build time by URL")
            elif ins.cmd == "RUN" and SECRET_VALUE.search(ins.args):
                problem(where(ins), "RUN: a value that looks like a credential")

    # The final stage's runtime settings.
    env = {}
    for ins in final:
        if ins.cmd == "ENV":
            env.update({k: v for k, v in env_pairs(ins.args)})
    users = [ins for ins in final if ins.cmd == "USER"]
    if not users:
        problem(where(final_from), "the final stage has no USER: it would run as root")
    else:
        u = users[-1].args.split(":")[0].strip()
        if u in ("root", "0", ""):
            problem(where(users[-1]), f"USER {users[-1].args}: runs as root")

    listen = env.get("GHLPROXY_SERVER_LISTEN", "127.0.0.1:8080")
    admin = env.get("GHLPROXY_SERVER_ADMIN_LISTEN", "127.0.0.1:8081")
    hp = split_hostport(listen.split(",")[0])
    exposes = [ins for ins in final if ins.cmd == "EXPOSE"]
    if not exposes:
        problem(where(final_from), "the final stage has no EXPOSE")
    elif hp:
        ports = {p.split("/")[0] for ins in exposes for p in ins.args.split()}
        if hp[1] not in ports:
            problem(where(exposes[0]), f"EXPOSE {' '.join(sorted(ports))} does not include the "
                    f"listen port {hp[1]} (GHLPROXY_SERVER_LISTEN={listen})")
        if hp[0] in LOOPBACK_HOSTS:
            problem(where(final_from), f"GHLPROXY_SERVER_LISTEN={listen}: on the container's "
                    "loopback nothing outside can reach the proxy")
    volumes = [ins for ins in final if ins.cmd == "VOLUME"]
    if not any("/var/lib/ghlproxy" in ins.args for ins in volumes):
        problem(where(final_from), "no VOLUME for the state directory /var/lib/ghlproxy "
                "(the token store)")

    hcs = [ins for ins in final if ins.cmd == "HEALTHCHECK"]
    if not hcs or hcs[-1].args.upper().startswith("NONE"):
        problem(where(final_from), "the final stage has no HEALTHCHECK")
    else:
        check_healthcheck(where(hcs[-1]), hcs[-1].args, admin)
        if re.search(r"\bcurl\b", hcs[-1].args) and "curl" not in final_pkgs:
            problem(where(hcs[-1]), "the health check runs curl, which the final stage does not "
                    "install")

    for cmd in ("ENTRYPOINT", "CMD"):
        ins = [i for i in final if i.cmd == cmd]
        if cmd == "ENTRYPOINT" and not ins:
            problem(where(final_from), "no ENTRYPOINT")
        if ins and not exec_form(ins[-1].args):
            problem(where(ins[-1]), f"{cmd} in shell form: a shell would be PID 1 and the proxy "
                    "would not get SIGTERM; use the exec form [\"...\"]")
    for ins in final:
        if ins.cmd == "STOPSIGNAL" and ins.args.strip() not in ("SIGTERM", "15", "TERM"):
            problem(where(ins), f"STOPSIGNAL {ins.args}: the proxy drains on SIGTERM")
    return env


def check_healthcheck(where, text, admin_listen):
    """The check hits /healthz on the admin listener, reachable from inside the container."""
    m = re.search(r"https?://([^/\s\"']+)(/[^\s\"']*)?", text)
    if "/healthz" not in text or not m:
        problem(where, "the health check does not fetch the admin listener's /healthz")
        return
    host, port = split_hostport(m.group(1)) or (m.group(1), "80")
    targets = [split_hostport(a) for a in admin_listen.split(",")]
    ok = any(t and t[1] == port and (t[0] in ANY_HOSTS or t[0] == host or
                                     (t[0] in LOOPBACK_HOSTS and host in LOOPBACK_HOSTS))
             for t in targets)
    if not ok:
        problem(where, f"the health check fetches {m.group(1)}, where the admin listener "
                f"({admin_listen or 'none'}) is not")


# ---- .dockerignore ----


def ignore_regex(pattern):
    """A .dockerignore pattern (Go filepath.Match, plus '**' for any depth) as a regex."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(out + r"\Z")


def ignore_rules(path):
    rules = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            neg = line.startswith("!")
            pat = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            rules.append((neg, ignore_regex(pat)))
    return rules


def ignored(rules, rel):
    """Whether the build context leaves rel out: the last rule matching it or a parent wins."""
    parts = rel.split("/")
    out = False
    for neg, rx in rules:
        if any(rx.match("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            out = not neg
    return out


# What the build stage needs from the context, and what must never be sent to it.
CONTEXT_NEEDED = re.compile(r"(meson\.build|meson_options\.txt|src/.*|conf/ghlproxy\.conf|"
                            r"scripts/build-release)\Z")
CONTEXT_EXCLUDED = [".git/HEAD", "build/build.ninja", "build-asan/build.ninja",
                    "docker/secrets/redis_password", ".env", "conf/store.key"]


def lint_dockerignore(path, root):
    if not os.path.exists(path):
        problem(path, "missing: the build context would carry .git, build trees and secrets")
        return
    rules = ignore_rules(path)
    needed = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".git" and not d.startswith("build")]
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), root)
            if CONTEXT_NEEDED.match(rel):
                needed.append(rel)
    lost = sorted(r for r in needed if ignored(rules, r))
    if lost:
        problem(path, f"leaves out what the build needs: {' '.join(lost[:8])}")
    kept = [r for r in CONTEXT_EXCLUDED if not ignored(rules, r)]
    if kept:
        problem(path, f"sends to the build context: {' '.join(kept)}")


# ---- compose.yaml ----


def service_env(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        out = {}
        for item in env:
            k, _, v = str(item).partition("=")
            out[k] = v if "=" in str(item) else None
        return out
    return {str(k): (None if v is None else str(v)) for k, v in env.items()}


def secret_targets(svc):
    """Where each of the service's secrets appears: name -> path in the container."""
    out = {}
    for s in svc.get("secrets") or []:
        if isinstance(s, str):
            out[s] = f"/run/secrets/{s}"
        elif isinstance(s, dict) and "source" in s:
            t = s.get("target", s["source"])
            out[s["source"]] = t if t.startswith("/") else f"/run/secrets/{t}"
    return out


def mount_targets(svc):
    out = []
    for v in svc.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            if len(parts) >= 2:
                out.append(parts[1])
        elif isinstance(v, dict) and "target" in v:
            out.append(v["target"])
    return out


def healthcheck_text(hc):
    t = hc.get("test")
    return " ".join(t) if isinstance(t, list) else str(t or "")


def lint_compose(path, dockerfile, image_env):
    try:
        import yaml
    except ImportError:
        problem(path, "cannot check: python3-yaml is not installed")
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            doc = yaml.safe_load(f)
        except yaml.YAMLError as e:
            problem(path, f"not valid YAML: {e}")
            return {}
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        problem(path, "no services")
        return {}
    if "version" in doc:
        problem(path, "top-level 'version' is obsolete in the Compose specification")
    services = doc["services"]
    top_secrets = doc.get("secrets") or {}
    where = lambda name: f"{path}: services.{name}"  # noqa: E731

    redis = [n for n, s in services.items()
             if str(s.get("image", "")).split(":")[0].split("/")[-1] in ("redis", "valkey")]
    if not redis:
        problem(path, "no Redis service (image redis:...)")
    df_base = os.path.basename(dockerfile)

    def is_proxy(s):
        b = s.get("build")
        if isinstance(b, dict) and os.path.basename(str(b.get("dockerfile", ""))) == df_base:
            return True
        return False

    proxies = [n for n, s in services.items() if is_proxy(s)]
    if len(proxies) < 2:
        problem(path, f"{len(proxies)} proxy service(s) built from {df_base}: the example needs "
                "two sharing one quota")

    # Secrets: defined as files, never from the environment or inline.
    for name, s in top_secrets.items():
        if not isinstance(s, dict) or not ("file" in s or s.get("external")):
            problem(f"{path}: secrets.{name}", "a secret must come from a file (file:) or be "
                    "external, not from an environment variable or inline content")

    envs = {}
    for name, svc in services.items():
        env = service_env(svc)
        for k, v in env.items():
            if secret_name(k):
                problem(where(name), f"environment {k}: a secret as an environment value "
                        "(use a compose secret and a *_FILE variable)")
            if v and SECRET_VALUE.search(v):
                problem(where(name), f"environment {k}: the value looks like a credential")
        cmd = svc.get("command")
        cmd_text = " ".join(cmd) if isinstance(cmd, list) else str(cmd or "")
        if re.search(r"--requirepass\s+[^\s\"']", cmd_text) or SECRET_VALUE.search(cmd_text):
            problem(where(name), "a secret on the command line (visible in ps)")
        hc = svc.get("healthcheck")
        if not isinstance(hc, dict) or hc.get("disable") or not hc.get("test") or \
                healthcheck_text(hc).strip().upper() == "NONE":
            problem(where(name), "no healthcheck")
        targets = secret_targets(svc)
        for sname in targets:
            if sname not in top_secrets:
                problem(where(name), f"secret {sname} is not defined under the top-level secrets")
        mounts = mount_targets(svc)
        for k, v in env.items():
            if not (k.upper().endswith("_FILE") and v):
                continue
            if v not in targets.values() and not any(v.startswith(m.rstrip("/") + "/")
                                                     for m in mounts):
                problem(where(name), f"{k}={v}: not one of the service's secrets "
                        f"({', '.join(sorted(targets.values())) or 'none'}) nor a mounted file")
        envs[name] = env

    for name in proxies:
        svc = services[name]
        env = dict(image_env)
        env.update({k: v for k, v in envs[name].items() if v is not None})
        envs[name] = env
        if env.get("GHLPROXY_LIMITS_BACKEND", "local").lower() != "redis":
            problem(where(name), "GHLPROXY_LIMITS_BACKEND is not redis: the proxies would not "
                    "share one quota")
        url = env.get("GHLPROXY_REDIS_URL", "redis://127.0.0.1:6379/0")
        m = re.match(r"redis://([^:/]+)", url)
        if not m or m.group(1) not in redis:
            problem(where(name), f"GHLPROXY_REDIS_URL={url} does not name the Redis service "
                    f"({', '.join(redis) or 'none'})")
        deps_on = svc.get("depends_on") or {}
        if isinstance(deps_on, list) or not any(
                r in deps_on and (deps_on[r] or {}).get("condition") == "service_healthy"
                for r in redis):
            problem(where(name), "does not wait for Redis to be healthy "
                    "(depends_on: {redis: {condition: service_healthy}})")
        hc = svc.get("healthcheck")
        if isinstance(hc, dict) and hc.get("test"):
            check_healthcheck(where(name), healthcheck_text(hc),
                              env.get("GHLPROXY_SERVER_ADMIN_LISTEN", "127.0.0.1:8081"))
        drain = parse_duration_ms(env.get("GHLPROXY_SERVER_DRAIN_TIMEOUT", "25s")) or 25000
        grace = parse_duration_ms(svc.get("stop_grace_period", "10s"))
        if grace is None or grace <= drain:
            problem(where(name), f"stop_grace_period {svc.get('stop_grace_period', '10s')} is not "
                    f"longer than server.drain_timeout ({drain / 1000:g}s): the drain is cut")
        for p in svc.get("ports") or []:
            if isinstance(p, dict):
                host_ip = p.get("host_ip", "")
            else:
                parts = str(p).split(":")
                host_ip = parts[0] if len(parts) == 3 else ""
            if host_ip not in ("127.0.0.1", "::1", "[::1]"):
                problem(where(name), f"port {p} is published on every host interface: bind it "
                        "to 127.0.0.1 (the image allows remote clients)")

    keys = {(envs[n].get("GHLPROXY_REDIS_URL"), envs[n].get("GHLPROXY_REDIS_KEY_PREFIX",
                                                              "ghlproxy")) for n in proxies}
    if len(keys) > 1:
        problem(path, "the proxies use different Redis URLs or key prefixes: they would not "
                "share one quota")
    return {n: envs[n] for n in proxies}


def check_with_binary(binary, config, where, env):
    """`ghlproxy -t -c CONFIG` with exactly this GHLPROXY_* environment."""
    run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    run_env.update({k: v for k, v in env.items() if k.startswith("GHLPROXY_") and v is not None})
    r = subprocess.run([binary, "-t", "-c", config], env=run_env, capture_output=True, text=True)
    if r.returncode != 0:
        for line in (r.stdout + r.stderr).strip().splitlines() or ["(no output)"]:
            problem(where, f"ghlproxy -t: {line}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dockerfile", default=os.path.join(ROOT, "docker", "Dockerfile"))
    ap.add_argument("--compose", default=os.path.join(ROOT, "docker", "compose.yaml"))
    ap.add_argument("--dockerignore", default=os.path.join(ROOT, ".dockerignore"))
    ap.add_argument("--ghlproxy", help="binary to check each configuration with (-t)")
    ap.add_argument("--config", help="configuration file the image ships (for --ghlproxy)")
    a = ap.parse_args()

    image_env = lint_dockerfile(a.dockerfile)
    lint_dockerignore(a.dockerignore, ROOT)
    proxy_envs = lint_compose(a.compose, a.dockerfile, image_env)
    if a.ghlproxy:
        if not a.config:
            ap.error("--ghlproxy needs --config")
        check_with_binary(a.ghlproxy, a.config, f"{a.dockerfile} (ENV)", image_env)
        for name, env in proxy_envs.items():
            check_with_binary(a.ghlproxy, a.config, f"{a.compose}: services.{name}", env)

    for p in problems:
        print(p)
    if problems:
        print(f"lint-docker: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"lint-docker: {os.path.relpath(a.dockerfile)} and {os.path.relpath(a.compose)} are "
          "clean", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
