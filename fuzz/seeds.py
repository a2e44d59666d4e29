#!/usr/bin/env python3
"""Write the seed corpora of the fuzz targets: fuzz/corpus/<target>/<name>.

Each seed is framed the way its target reads input (see the head comment of fuzz_<target>.c):
a flags byte first, then the text. Realistic inputs: HighLevel-shaped JWTs (fractional iat/exp),
the shipped config and the unit tests' configs, HighLevel answer headers, API requests from
tests/vectors/endpoint-resource-map-v2.csv, and HTTP requests with smuggling attempts.
Inputs that once found a bug are kept under a "regress-" name.

Usage: fuzz/seeds.py   (rewrites every seed it knows; other files in corpus/ are left alone)
"""
import base64
import csv
import json
import os
import re
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("latin-1")
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def b64url(b, pad=False):
    s = base64.urlsafe_b64encode(b).decode()
    return s if pad else s.rstrip("=")


# ---- JWTs -------------------------------------------------------------------------------------

RS256 = {"alg": "RS256", "typ": "JWT"}
HS256 = {"alg": "HS256", "typ": "JWT"}
APP = "6650e2b7c1d8f2a1b3c4d5e6"
LOC = "ve9EPM428h8vShlRW1KT"
CO = "Xq2LmN7pQr8sTu9vWx0Y"

LOCATION_PAYLOAD = {
    "authClass": "Location", "authClassId": LOC, "primaryAuthClassId": LOC,
    "source": "INTEGRATION", "sourceId": APP + "-lxyz12ab", "channel": "OAUTH",
    "oauthMeta": {"scopes": ["contacts.readonly", "contacts.write", "locations.readonly"],
                  "client": APP, "clientKey": APP + "-lxyz12ab", "versionId": APP},
    "iat": 1751436979.849, "exp": 1751523379.849,
}
COMPANY_PAYLOAD = {
    "authClass": "Company", "authClassId": CO, "source": "INTEGRATION", "channel": "OAUTH",
    "oauthMeta": {"scopes": ["locations.readonly"], "client": "66a0b1c2d3e4f5a6b7c8d9e0",
                  "clientKey": "66a0b1c2d3e4f5a6b7c8d9e0-m1abcd",
                  "versionId": "66a0b1c2d3e4f5a6b7c8d9e0"},
    "iat": 1720000000, "exp": 1720086399,
}
SIG = b64url(bytes(range(1, 33)) + bytes([250, 251, 252]))


def jwt(payload, header=RS256, sig=SIG, pad=False):
    p = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
    h = json.dumps(header, separators=(",", ":")).encode()
    return b64url(h, pad) + "." + b64url(p, pad) + "." + sig


def seeds_jwt():
    raw = {
        "location-fractional": jwt(LOCATION_PAYLOAD),
        "company-integer": jwt(COMPANY_PAYLOAD, HS256),
        "location-padded": jwt(LOCATION_PAYLOAD, pad=True),
        "empty-signature": jwt(LOCATION_PAYLOAD, sig=""),
        "agency-exp-exponent": jwt(dict(COMPANY_PAYLOAD, iat=1.751436979849e9, exp=1.7515e9)),
        "no-authclass": jwt({k: v for k, v in LOCATION_PAYLOAD.items() if k != "authClass"}),
        "lower-authclass": jwt(dict(LOCATION_PAYLOAD, authClass="location")),
        "client-not-string": jwt(dict(LOCATION_PAYLOAD, oauthMeta={"client": 12345})),
        "id-too-long": jwt(dict(LOCATION_PAYLOAD, authClassId="A" * 65)),
        "standard-base64": jwt(LOCATION_PAYLOAD).replace("-", "+").replace("_", "/"),
        "pit": "pit-3f8a2c1e-9b7d-4e6f-a5c3-1d2e4f6a8b9c",
        "api-key-v1": "eyJhbGciOiJIUzI1NiJ9.eyJsb2NhdGlvbl9pZCI6ImxvYzEyMyIsInZlcnNpb24iOjF9",
        "four-parts": jwt(LOCATION_PAYLOAD) + ".x",
        "not-json": b64url(b'{"alg":"none"}') + "." + b64url(b"not json at all") + ".",
        "array-payload": jwt(b"[1,2,3]"),
        "deep-array": jwt(b"[" * 3000 + b"]" * 3000),
        "undefined": "undefined",
    }
    for name, tok in raw.items():
        write("jwt", name, b"\x00" + tok.encode())
    payloads = {
        "json-location": json.dumps(LOCATION_PAYLOAD).encode(),
        "json-company": json.dumps(COMPANY_PAYLOAD).encode(),
        "json-duplicate-keys": b'{"authClassId":"a","authClassId":"' + LOC.encode() +
        b'","oauthMeta":{"client":"x","client":"' + APP.encode() + b'"},"iat":1.5,"exp":1e300}',
        "json-unicode-escapes": b'{"authClassId":"\\u0041bc","oauthMeta":{"client":"\\ud83d\\ude00"}}',
        "json-nul-in-string": b'{"authClassId":"ab\\u0000cd","oauthMeta":{"client":"' + APP.encode() + b'"}}',
        "json-huge-number": b'{"authClassId":"a","oauthMeta":{"client":"b"},"iat":1e999,"exp":-0.0}',
        "json-deep-object": b'{"a":' * 500 + b"1" + b"}" * 500,
        # over JWT_MAX_LEN once base64-encoded and wrapped
        "json-over-max-len": json.dumps(dict(LOCATION_PAYLOAD, pad="x" * 12400)).encode(),
        "json-trailing-garbage": json.dumps(LOCATION_PAYLOAD).encode() + b"xx",
    }
    for i, (name, p) in enumerate(payloads.items()):
        write("jwt", name, bytes([1 | (i % 8) << 1]) + p)


# ---- config -----------------------------------------------------------------------------------

CONFIGS = {
    "minimal": "[server]\nlisten = 127.0.0.1:8080\n",
    "inject-pit": "[server]\nmode = inject\n\n[pit]\nve9EPM428h8vShlRW1KT = /etc/ghlproxy/pit/loc1\n"
                  "Xq2LmN7pQr8sTu9vWx0Y = /etc/ghlproxy/pit/a,/etc/ghlproxy/pit/b\n",
    "redis": "[limits]\nbackend = redis\nwindow = 10s\nguard = 250ms\nburst = 100\ndaily = 200000\n"
             "on_redis_down = reject\n\n[redis]\nurl = redis://10.0.0.5:6379/2\n"
             "password_file = /run/credentials/ghlproxy/redis\ninstances = 4\nkey_prefix = ghl:prod\n",
    "redis-unix": "[limits]\nbackend = redis\n[redis]\nurl = unix:///run/redis/redis.sock?db=3\n",
    "clients-remote": "[server]\nlisten = 0.0.0.0:8080, [::]:8080, unix:/run/ghlproxy/proxy.sock\n"
                      "socket_owner = ghlproxy\nsocket_group = www-data\nsocket_mode = 0660\n\n"
                      "[clients]\nci = /etc/ghlproxy/clients/ci.key\nci.resources = LOC1,LOC2\n"
                      "ci.read_only = yes\nworker = /etc/ghlproxy/clients/worker.key\n",
    "oauth": "[oauth]\nclient_id = 6650e2b7c1d8f2a1b3c4d5e6-lxyz12ab\n"
             "client_secret_file = /etc/ghlproxy/oauth-secret\n"
             "redirect_uri = http://127.0.0.1:8081/oauth/callback\n"
             "scopes = contacts.readonly contacts.write locations.readonly\n"
             "refresh_ahead = 10m\n\n[store]\npath = /var/lib/ghlproxy/tokens.json\n"
             "key_file = /etc/ghlproxy/store.key\n",
    "v1-keys": "[v1_keys]\nagency = /etc/ghlproxy/v1/agency\nLOC123 = /etc/ghlproxy/v1/loc123\n"
               "[upstream]\nv1_url = https://rest.gohighlevel.com/\nurl = https://[::1]:8443/base\n",
    "sizes-durations": "[server]\nmax_body = 64MiB\nmax_header_size = 1MB\nmax_request_line = 8KiB\n"
                       "max_headers = 200\nheader_timeout = 1500ms\nbody_timeout = 2m\nidle_timeout = 1h\n"
                       "drain_timeout = 0s\nmax_connections = 100000\n[upstream]\ntimeout = 1d\n",
    "errors-everywhere": "burst = 5\n[limits]\nburst = 5 # five\nburst = 6\nwindow = 10\n"
                         "guard = 20s\n[bogus]\nx = 1\n  indented = 1\n[server\nA:B = /x\n"
                         "[pit]\nbad id! = /x\nLOC1 =\nLOC2 = /a,,/b\n",
    "url-with-password": "[upstream]\nurl = https://user:S3cretPassw0rd@services.leadconnectorhq.com\n"
                         "[redis]\nurl = redis://:R3disPassw0rd1@127.0.0.1:6379/0\n",
    "crlf-bom-comments": "\xef\xbb\xbf; comment\r\n# another\r\n[log] ; inline\r\nlevel = debug ; x\r\n"
                         "format = JSON\r\n",
    "long-line": "[oauth]\nscopes = " + "contacts.readonly " * 12 + "\n",
    "rules-broken": "[server]\nmax_request_line = 2MiB\nmax_header_size = 1MiB\nlisten = 10.1.2.3:80\n"
                    "admin_listen = 127.0.0.1:8080,[::]:81\nlisten = 127.0.0.1:8080\n[limits]\n"
                    "max_queue_per_key = 5000\nmax_queue = 100\nbackend = redis\n[redis]\nurl =\n"
                    "[oauth]\nclient_id = abc\n[clients]\nx.resources = A,B\n",
    "listen-65": "[server]\nallow_remote = yes\nlisten = " +
                 ",".join("10.0.0.%d:80" % i for i in range(65)) + "\n",
    "redis-ipv6": "[limits]\nbackend = redis\n[redis]\nurl = redis://[::1]:6380/15\n"
                  "[upstream]\nurl = http://[fe80::1]x:80\n",
    "redis-ipv6-junk": "[redis]\nurl = redis://[::1]x/0\n",
}

OVERRIDES = {
    "overrides": "[server]\nmode = inject\n\n%%\nlimits.max_wait=5s\npit.LOC1=/run/pit\n"
                 "clients.ci=/k\nclients.ci.read_only=no\nGHLPROXY_LIMITS_BURST=50\n"
                 "GHLPROXY_SERVER_LISTEN=127.0.0.1:9090\nlog.level=warn\n",
    "override-errors": "\n%%\nnodot=1\npit.bad id=S3cretT0kenValue\nupstream.url=https://a:P4ss@b\n"
                       "GHLPROXY_PIT_X=/y\nGHLPROXY_V1_KEYS_agency=/z\nGHLPROXY_NOPE=S3cretEnvValue9\n"
                       "server.unknown=H1ddenValue99\nlimits.window=10\nGHLPROXY_TEST_FOO=1\n",
}


def seeds_config():
    with open(os.path.join(ROOT, "conf", "ghlproxy.conf"), "rb") as f:
        shipped = f.read()
    write("config", "shipped", b"\x00" + shipped)
    write("config", "shipped-file", b"\x01" + shipped)
    # the shipped file with every key uncommented at its default
    uncommented = b"\n".join(l[1:] if l.startswith(b"#") and b" = " in l else l
                             for l in shipped.split(b"\n"))
    write("config", "shipped-uncommented", b"\x00" + uncommented)
    for name, text in CONFIGS.items():
        write("config", name, b"\x00" + text.encode("latin-1"))
    for name, text in OVERRIDES.items():
        write("config", name, b"\x00" + text.encode("latin-1"))
    # fuzz_config found -o echoing a URL's password in front of its message
    write("config", "regress-override-url-password",
          b"\x00\n%%\nupstream.url=https://user:S3cretPassw0rd@example.com\n"
          b"redis.url=redis://:R3disPassw0rd1@127.0.0.1/0\n")
    write("config", "nul-in-file", b"\x01[server]\nlisten = 127.0.0.1:80\x0080\n[log]\nlevel = info\n")


# ---- classify ---------------------------------------------------------------------------------

PIT = "pit-3f8a2c1e-9b7d-4e6f-a5c3-1d2e4f6a8b9c"


def req(flags, method, target, headers, body=b""):
    s = method + "\n" + target + "\n" + "".join(f"{k}: {v}\n" for k, v in headers) + "\n"
    return bytes([flags]) + s.encode("latin-1") + body


def seeds_classify():
    tok = jwt(LOCATION_PAYLOAD)
    co_tok = jwt(COMPANY_PAYLOAD)
    host = ("Host", "services.leadconnectorhq.com")
    ver = ("Version", "2021-07-28")
    auth = lambda t: ("Authorization", "Bearer " + t)
    js = ("Content-Type", "application/json")
    s = {
        "oauth-contacts": req(0, "GET", f"/contacts/?locationId={LOC}&limit=20",
                              [host, ver, auth(tok), ("Accept", "application/json")]),
        "oauth-company": req(0, "GET", f"/locations/search?companyId={CO}", [host, ver, auth(co_tok)]),
        "pit-path": req(0, "GET", f"/locations/{LOC}/customFields", [host, ver, auth(PIT)]),
        "pit-body": req(0, "POST", "/contacts/", [host, ver, auth(PIT), js, ("Content-Length", "80")],
                        json.dumps({"firstName": "Ada", "locationId": LOC, "tags": ["a", "b"]}).encode()),
        "pit-body-alt": req(0, "POST", "/payments/orders", [host, ver, auth(PIT), ("Content-Type", "application/vnd.api+json; charset=utf-8")],
                            b'{"meta":{"x":[1,{"y":"}"}]},"altType":"location","altId":"' + LOC.encode() + b'"}'),
        "pit-mapped": req(2, "GET", "/contacts/", [host, ver, auth(PIT)]),
        "pit-mapped-bad": req(2 | 4, "GET", "/contacts/", [host, ver, auth(PIT)]),
        "opaque-long-mapped": req(2 | 16, "GET", "/opportunities/search", [host, auth("a" * 40)]),
        "v1-key": req(0, "GET", "/v1/contacts/?query=ada", [("Host", "rest.gohighlevel.com"), auth("eyJhbGciOiJIUzI1NiJ9.eyJsb2NhdGlvbl9pZCI6IkxPQzEyMyJ9.c2ln")]),
        "hint-header": req(0, "GET", "/users/", [host, auth("opaque-token-123456789"), ("x-location-id", " " + LOC + " "), ("companyId", CO)]),
        "query-alt": req(0, "GET", f"/invoices/?altId={LOC}&altType=location&limit=10", [host, auth(PIT)]),
        "query-pct": req(0, "GET", "/contacts/?location%49d=ve9EPM%34%32%38h8vShlRW1KT&locationId=bad%2Fid", [host, auth(PIT)]),
        "absolute-form": req(0, "GET", f"https://services.leadconnectorhq.com/locations/{LOC}?x=1", [host, auth(PIT)]),
        "absolute-form-other-host": req(0, "GET", "http://evil.example:80/locations/x", [host, auth(PIT)]),
        "absolute-form-port": req(0, "GET", "https://SERVICES.leadconnectorhq.com:443", [host]),
        "social-oauth": req(0, "GET", f"/social-media-posting/oauth/{LOC}/facebook/accounts/abc", [host, auth(PIT)]),
        "social-oauth-reserved": req(0, "GET", "/social-media-posting/oauth/google/start?locationId=" + LOC, [host, auth(tok)]),
        "saas-company": req(0, "POST", f"/saas-api/public-api/bulk-disable-saas/{CO}", [host, auth(co_tok), js], b"{}"),
        "oauth-token-not-counted": req(0, "POST", "/oauth/token", [host, ("Content-Type", "application/x-www-form-urlencoded")],
                                       b"client_id=x&client_secret=y&grant_type=refresh_token&refresh_token=z"),
        "bearer-undefined": req(0, "GET", "/contacts/", [host, auth("undefined")]),
        "bearer-empty": req(0, "GET", "/contacts/", [host, ("Authorization", "Bearer")]),
        "malformed-jwt": req(0, "GET", "/contacts/", [host, auth("eyJ.eyJ.sig!")]),
        "inject-oauth": req(1 | 2 << 5, "GET", f"/contacts/?locationId={LOC}", [host, ("x-fuzz-app", APP), ("x-fuzz-fp", "0123456789abcdefXYZ")]),
        "inject-pit": req(1 | 4 << 5, "GET", f"/locations/{LOC}", [host, auth("client-key-ignored"), ("x-fuzz-fp", "deadbeef")]),
        "connection-drops": req(0, "GET", "/contacts/", [host, ("Connection", "keep-alive, X-Secret, te"), ("X-Secret", "1"), ("TE", "trailers"),
                                                         ("X-GHL-Max-Wait", "100"), ("Expect", "100-continue"), ("Content-Length", "0"), auth(PIT)]),
        "conflicting-length": req(0, "POST", "/contacts/", [host, ("Content-Length", "5"), ("content-length", "6")], b"hello"),
        "te-gzip": req(0, "POST", "/contacts/", [host, ("Transfer-Encoding", "gzip")]),
        "body-cut": req(0, "PUT", "/contacts/abc", [host, auth(PIT), js], b'{"locationId":"' + LOC.encode() + b'","companyId":"' + CO.encode()),
        "body-escapes": req(0, "PUT", "/contacts/abc", [host, auth(PIT), js], b'{"loc\\u0061tionId":1,"locationId":"\\u0041bc\\/d","locationId":"ok_1"}'),
        "query-company": req(0, "GET", f"/invoices/?altType=Company&altId={CO}", [host, auth(PIT)]),
        "body-company": req(0, "POST", "/x", [host, ("Content-Type", " application/problem+json ; q=1")],
                            b'{"altType":"company","altId":"' + CO.encode() + b'"}'),
        "header-blanks": req(0, "GET", "/x", [host, ("x-company-id", "\t " + CO + "\t")]),
        # route_parse_url took "[" as a host, whose Host header it could not match again
        "regress-route-bracket-host": req(0, "GET", "https://[[]/oauth]ps://[[]=", [host]),
        "body-deep": req(0, "POST", "/x", [host, js], b'{"a":' + b"[" * 2000 + b"]" * 2000 + b',"companyId":"' + CO.encode() + b'"}'),
    }
    # every path form of the API, with its ids filled in
    with open(os.path.join(ROOT, "tests", "vectors", "endpoint-resource-map-v2.csv")) as f:
        rows = list(csv.DictReader(f))
    picked = [r for r in rows if "path:" in r["location_ref"] + r["company_ref"]][:40]
    picked += rows[::40]
    for i, r in enumerate(picked):
        path = r["path"]
        for p in ("{locationId}", "{companyId}"):
            path = path.replace(p, LOC if "location" in p else CO)
        path = re.sub(r"\{[^}]+\}", "id_" + str(i), path)
        s[f"api-{i:02d}"] = req(0, r["method"], path, [host, ver, auth(PIT)])
    for name, data in s.items():
        write("classify", name, data)


# ---- ratelimit_headers ------------------------------------------------------------------------


def rl(flags, window_ms, lines, now=None):
    b = bytes([flags])
    if flags & 1:
        b += struct.pack("<q", now)
    b += struct.pack("<I", window_ms)
    return b + "".join(l + "\n" for l in lines).encode("latin-1")


def seeds_ratelimit():
    ok = ["x-ratelimit-limit-daily: 200000", "x-ratelimit-daily-remaining: 199873",
          "x-ratelimit-interval-milliseconds: 10000", "x-ratelimit-max: 100",
          "x-ratelimit-remaining: 97", "x-ratelimit-daily-reset: 43200000"]
    s = {
        "highlevel-200": rl(0, 10000, ["content-type: application/json; charset=utf-8"] + ok),
        "highlevel-429-burst": rl(0, 10000, ok[:4] + ["x-ratelimit-remaining: 0", "retry-after: 3"]),
        "highlevel-429-daily": rl(0, 10000, ["x-ratelimit-limit-daily: 200000", "x-ratelimit-daily-remaining: 0"]),
        "retry-after-date": rl(0, 10000, ["Retry-After: Wed, 02 Jul 2025 06:17:00 GMT"]),
        "retry-after-date-past": rl(0, 10000, ["Retry-After: Sun, 06 Nov 1994 08:49:37 GMT"]),
        "retry-after-leap": rl(1, 1, ["retry-after: Thu, 29 Feb 2024 23:59:60 GMT"], now=-(2**63)),
        "retry-after-huge": rl(1, 0xFFFFFFFF, ["retry-after: 99999999999999999999999", "Retry-After: 172801"], now=2**63 - 1),
        "duplicates-and-lists": rl(0, 10000, ["X-RateLimit-Max: 100, 50", "x-ratelimit-max: 80",
                                              "X-RATELIMIT-REMAINING:\t 5 \t", "x-ratelimit-interval-milliseconds: 10000,20000"]),
        "junk": rl(0, 10000, ["x-ratelimit-max: -1", "x-ratelimit-max: 0x10", "x-ratelimit-max: 1e3",
                              "x-ratelimit-max: 1000001", "x-ratelimit-remaining: ", "x-ratelimit-daily-reset: 9223372036854775808",
                              "x-ratelimit-limit-daily: +5", "retry-after: -3", "retry-after: Sun, 31 Feb 2025 00:00:00 GMT"]),
    }
    for name, data in s.items():
        write("ratelimit_headers", name, data)


# ---- http_guard -------------------------------------------------------------------------------

GUARD = {
    "get": "GET /contacts/?locationId=ve9EPM428h8vShlRW1KT HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
           "Authorization: Bearer pit-3f8a2c1e-9b7d-4e6f-a5c3-1d2e4f6a8b9c\r\nVersion: 2021-07-28\r\n"
           "Accept: application/json\r\n\r\n",
    "post-cl": "POST /contacts/ HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
               "Content-Length: 35\r\n\r\n{\"locationId\":\"ve9EPM428h8vShlRW1\"}",
    "chunked-ext-trailers": "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                            "5;name=\"va\\\"l\";x\r\nhello\r\n0A \t; e = t\r\n0123456789\r\n"
                            "0\r\nX-Trailer: 1\r\nY: 2\r\n\r\n",
    "pipelined": "GET /a HTTP/1.1\r\nHost: a\r\n\r\nPUT /b HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
                 "\r\n\r\nDELETE /c HTTP/1.0\r\n\r\nOPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    "expect-continue": "PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue \r\nContent-Length: 4\r\n\r\nbody",
    "http10-expect": "POST / HTTP/1.0\r\nExpect: x\r\nContent-Length: 1\r\n\r\n!",
    "absolute-form": "GET https://services.leadconnectorhq.com/locations/x HTTP/1.1\r\nHost: services.leadconnectorhq.com\r\n\r\n",
    "cl-list-equal": "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\nabc",
    # smuggling and framing attacks
    "cl-te": "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
    "te-cl": "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
    "two-cl": "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n",
    "te-gzip": "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nContent-Length: 2\r\n\r\nab",
    "te-chunked-gzip": "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "te-twice": "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-tab": "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n",
    "te-xchunked": "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te-obs-fold": "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "te-space-before-colon": "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "te-http10": "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "chunk-size-overflow": "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000001\r\nx\r\n0\r\n\r\n",
    "chunk-size-negative": "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nx\r\n0\r\n\r\n",
    "chunk-size-0x": "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "chunk-bare-lf": "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
    "chunk-data-overrun": "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
    "bare-cr-header": "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
    "bare-lf-header": "GET / HTTP/1.1\nHost: a\n\n",
    "nul-in-value": "GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    "obs-fold": "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
    "head-with-body": "HEAD / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    "two-hosts": "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "no-host": "GET / HTTP/1.1\r\n\r\n",
    "connect": "CONNECT services.leadconnectorhq.com:443 HTTP/1.1\r\nHost: services.leadconnectorhq.com:443\r\n\r\n",
    "lower-method": "get / HTTP/1.1\r\nHost: a\r\n\r\n",
    "http2-preface": "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "http09": "GET /\r\n",
    "fragment": "GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n",
    "expect-other": "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue, x\r\nContent-Length: 1\r\n\r\n!",
    "empty-lines-first": "\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "cl-plus": "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
    "empty-lines-9": "\r\n" * 9 + "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "chunk-ext-long": "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;" + "a" * 1030 +
                      "\r\nx\r\n0\r\n\r\n",
    "cl-huge": "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
}


def seeds_guard():
    for i, (name, data) in enumerate(GUARD.items()):
        # defaults, cut in pieces of 1, 1-8, 1-64 or 1-512 bytes
        write("http_guard", name, bytes([(i % 4) << 1, i]) + data.encode("latin-1"))
    # small limits: request line 64, header block 200, 4 fields, body 16
    small = struct.pack("<HHBH", 64, 200, 4, 16)
    for name in ("get", "post-cl", "chunked-ext-trailers", "pipelined"):
        write("http_guard", name + "-small-limits", bytes([1 | 2, 7]) + small + GUARD[name].encode("latin-1"))


# ---- token_store ------------------------------------------------------------------------------


def ts_entry(resource, user_type="Location", **kw):
    e = {
        "resource": resource, "user_type": user_type,
        "access_token": jwt(LOCATION_PAYLOAD if user_type == "Location" else COMPANY_PAYLOAD),
        "access_expires_ms": 1751523379849,
        "refresh_token": jwt({"authClass": user_type, "authClassId": resource, "refresh": True,
                              "iat": 1751436979.849}, HS256),
        "company_id": CO, "location_id": resource if user_type == "Location" else "",
        "user_id": "u7Kd93LmQp2RsT4vWx6Y",
        "scope": "contacts.readonly contacts.write locations.readonly conversations.write",
        "state": "ok", "generation": 7, "updated_ms": 1751436980123,
    }
    e.update(kw)
    return e


def seeds_token_store():
    one = ts_entry(LOC)
    co = ts_entry(CO, "Company", state="needs_reinstall", generation=1)
    f = lambda entries, **kw: json.dumps(dict({"version": 1, "tokens": entries}, **kw), indent=1).encode()
    s = {
        "file-two": (0, f([one, co])),
        "file-empty": (0, b'{"version":1,"tokens":[]}\n'),
        "file-unknown-fields": (0, f([dict(one, extra={"a": [1, 2]}, note="x")], comment="hi")),
        "file-unsorted-dup": (0, f([co, one, dict(one, generation=8)])),
        "file-version-2": (0, f([one], version=2)),
        "file-bad-resource": (0, f([dict(one, resource="bad id/..")])),
        "file-negative": (0, f([dict(one, access_expires_ms=-1)])),
        "file-float-gen": (0, f([dict(one, generation=1.5)])),
        "file-control-char": (0, f([dict(one, access_token="abc\u0001def")])),
        "file-dup-key": (0, b'{"version":1,"version":1,"tokens":[]}'),
        "file-deep": (0, b'{"version":1,"tokens":[{"x":' + b"[" * 10 + b"]" * 10 + b"}]}"),
        "file-truncated": (0, f([one])[:200]),
        "entry": (1, json.dumps(one).encode()),
        "entry-company": (1, json.dumps(co).encode()),
        "entry-inactive": (1, json.dumps(dict(one, state="inactive", access_token="")).encode()),
        "sealed-file": (4, f([one, co])),
        "sealed-entry": (5, json.dumps(one).encode()),
        "sealed-twice-shape": (4, b'{"version":1,"cipher":"aes-256-gcm","nonce":"AAAAAAAAAAAAAAAA",'
                                  b'"tag":"AAAAAAAAAAAAAAAAAAAAAA==","data":""}'),
        "envelope-wrong-tag": (2, b'{"version":1,"cipher":"aes-256-gcm","nonce":"AQIDBAUGBwgJCgsM",'
                                  b'"tag":"AAAAAAAAAAAAAAAAAAAAAA==","data":"' +
                                  base64.b64encode(b"x" * 40) + b'"}\n'),
        "envelope-bad-b64": (3, b'{"version":1,"cipher":"aes-256-gcm","nonce":"AQIDBAUGBwgJCgs=",'
                                b'"tag":"AAAA","data":"A==="}'),
        "plain-under-key": (2, f([one])),
        "key-raw": (8, bytes(range(32))),
        "key-hex": (8, b"3c1f8a52770e94d12b6ac305e84f9013a75d21fe680bb439c6721e8d54f02a97\n"),
        "key-b64": (8, b"  " + base64.b64encode(bytes(range(100, 132))) + b"\r\n"),
        "key-b64-nopad": (8, base64.b64encode(bytes(range(32))).rstrip(b"=")),
        "key-short": (8, b"S3cretKeyMaterial99\n"),
    }
    for name, (flags, data) in s.items():
        write("token_store", name, bytes([flags]) + data)


if __name__ == "__main__":
    seeds_jwt()
    seeds_config()
    seeds_classify()
    seeds_ratelimit()
    seeds_guard()
    seeds_token_store()
