#!/usr/bin/env python3
"""Policy suite (issue 3): rules, address guard (SSRF), sandbox identity, tags,
paths/methods, dry-run, hot reload and the `policy check` / `check` CLI,
with real curl and raw sockets against local upstreams.

    python3 tests/integration/test_policy.py --airlock build/proxy/airlock [-k NAME]

Every name used here is pinned with the config's "resolve" map to a loopback
address (or to 169.254.169.254, which airlock must refuse before connecting);
nothing resolves a real name and nothing leaves 127.0.0.1 / ::1.
"""

import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import altest  # noqa: E402
from altest import (MiB, check, eq, expect_error, pattern, pattern_sha256,  # noqa: E402
                    sha256, test, wait_until)

TOKEN_A = "tok-a-0123456789"
TOKEN_B = "tok-b-9876543210"
RESOLVE = {
    "upstream.test": "127.0.0.1",
    "other.test": "127.0.0.1",
    "loop.test": "127.0.0.1",
    "meta.test": "169.254.169.254",
}
LOOP = ["127.0.0.1/32"]


def tok_hash(tok):
    return hashlib.sha256(tok.encode()).hexdigest()


def rule(name, hosts, **kw):
    r = {"name": name, "hosts": hosts}
    r.update(kw)
    return r


def pol(*rules, **top):
    p = {"rules": list(rules)}
    p.update(top)
    return p


UP_RULE = rule("up", ["upstream.test"], cidrs=LOOP)


def start(t, policy, config=None, args=None):
    cfg = {"resolve": dict(RESOLVE)}
    altest._merge(cfg, config or {})
    return t.airlock(policy=policy, config=cfg, args=args)


def req(host_port, path, method="GET", headers=(), target=None, body=b""):
    """Absolute-form request bytes; Host = the authority of the URI."""
    target = target or "http://%s%s" % (host_port, path)
    lines = ["%s %s HTTP/1.1" % (method, target), "Host: " + host_port]
    lines += ["%s: %s" % kv for kv in headers]
    if body:
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def up_req(up, path, **kw):
    return req("upstream.test:%d" % up.port, path, **kw)


def nothing_upstream(up, what):
    """The upstream accepted no connection and saw no request."""
    with up.lock:
        n, reqs = up.connections, list(up.requests)
    if n != 0 or reqs:
        raise altest.TestFailure("%s: upstream saw %d connection(s), requests %r" %
                                 (what, n, [r["requestline"] for r in reqs]))


def reason(r):
    return r.header("X-Airlock-Reason")


def curl_ok(r, what):
    if r.rc != 0 or r.status != 200:
        raise altest.TestFailure("%s: %r" % (what, r))


def curl_err(r, status, why, what):
    if r.status != status or r.header("X-Airlock-Reason") != why:
        raise altest.TestFailure("%s: want %d %s, got %r" % (what, status, why, r))


def write_policy(al, policy):
    """Rewrites the running airlock's policy.json (atomically)."""
    p = os.path.join(al.dir, "policy.json")
    text = policy if isinstance(policy, str) else json.dumps(policy, indent=1)
    with open(p + ".tmp", "w") as fh:
        fh.write(text)
    os.rename(p + ".tmp", p)


def admin_post(al, path, timeout=10):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    rq = urllib.request.Request(al.admin + path, data=b"", method="POST")
    try:
        with opener.open(rq, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def reloads(al, result):
    return al.metrics().get("airlock_reloads_total", {"result": result}) or 0.0


def sighup_and_wait(al, result="ok"):
    before = reloads(al, result)
    al.signal(signal.SIGHUP)
    wait_until(lambda: reloads(al, result) > before, 10,
               "airlock_reloads_total{result=%r} to grow after SIGHUP" % result)


# ---------------------------------------------------------------------------
# rules: allowed / denied, nothing reaches the upstream


@test
def test_allowed_200_unlisted_403(t):
    up = t.upstream()
    al = start(t, pol(UP_RULE))
    r = al.curl(["http://upstream.test:%d/bytes/100" % up.port])
    curl_ok(r, "allowed host")
    check(r.body == pattern(100), "allowed body differs")
    up2 = t.upstream()
    r = al.curl(["http://other.test:%d/echo" % up2.port])
    curl_err(r, 403, "host_not_allowed", "unlisted host")
    nothing_upstream(up2, "unlisted host")


@test
def test_deny_reasons(t):
    up = t.upstream()
    al = start(t, pol(rule("ports", ["upstream.test"], ports=[1], cidrs=LOOP),
                      rule("block", ["other.test"], action="deny"),
                      rule("meth", ["loop.test"], methods=["GET"], cidrs=LOOP)))
    r = al.raw(up_req(up, "/echo"))
    expect_error(r, 403, "port_not_allowed")
    r = al.raw(req("other.test:%d" % up.port, "/echo"))
    expect_error(r, 403, "denied_by_rule")
    r = al.raw(req("loop.test:%d" % up.port, "/upload", method="POST", body=b"xyz"))
    expect_error(r, 403, "method_not_allowed")
    r = al.raw(req("nowhere.test:%d" % up.port, "/echo"))
    expect_error(r, 403, "host_not_allowed")
    nothing_upstream(up, "denied requests")
    # the allowed control through the same proxy
    r = al.raw(req("loop.test:%d" % up.port, "/echo"))
    eq(r.status, 200, "GET loop.test allowed by rule meth")


@test
def test_connect_denied_nothing_upstream(t):
    up = t.upstream(tls=True)
    al = start(t, pol(rule("other", ["other.test"], cidrs=LOOP)))
    c = t.conn(al.port)
    c.send(b"CONNECT upstream.test:%d HTTP/1.1\r\nHost: upstream.test:%d\r\n\r\n" %
           (up.port, up.port))
    r = c.read_response("CONNECT")
    expect_error(r, 403, "host_not_allowed")
    r = al.curl(["--cacert", t.ca, "https://upstream.test:%d/bytes/10" % up.port])
    check(r.status == 403 or "403" in r.stderr, "curl CONNECT to a denied host: %r" % r)
    nothing_upstream(up, "denied CONNECT")


@test
def test_connect_path_rules(t):
    """CONNECT: an allow rule limited by paths/methods matches a tunnel only
    when it intercepts or lists CONNECT (policy/README.md)."""
    up = t.upstream(tls=True)
    al = start(t, pol(rule("paths", ["upstream.test"], paths=["/echo/**"], cidrs=LOOP),
                      rule("conn", ["loop.test"], methods=["CONNECT"], cidrs=LOOP)))
    c = t.conn(al.port)
    c.send(b"CONNECT upstream.test:%d HTTP/1.1\r\nHost: upstream.test:%d\r\n\r\n" %
           (up.port, up.port))
    r = c.read_response("CONNECT")
    check(r.status == 403, "CONNECT under a path-limited, non-intercepting rule: %r" % r)
    nothing_upstream(up, "CONNECT under a path rule")
    c = t.conn(al.port)
    c.send(b"CONNECT loop.test:%d HTTP/1.1\r\nHost: loop.test:%d\r\n\r\n" % (up.port, up.port))
    r = c.read_response("CONNECT")
    eq(r.status, 200, "CONNECT loop.test under a rule listing CONNECT")
    # The SNI names the CONNECT host (another name is domain fronting: an
    # opaque tunnel refuses it); the harness certificate does not name it.
    ctx = altest.RUN.client_ctx()
    ctx.check_hostname = False
    tls = ctx.wrap_socket(c.sock, server_hostname="loop.test")
    tc = altest.Conn(0, sock=tls)
    tc.send(b"GET /bytes/64 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    r = tc.read_response()
    check(r.status == 200 and r.body == pattern(64), "request through the tunnel: %r" % r)
    tc.close()


@test
def test_host_header_mismatch(t):
    """An absolute-form URI whose Host header names another host: 421, or the
    Host rewritten to the URI authority; never the other host's name upstream."""
    up = t.upstream()
    al = start(t, pol(UP_RULE))
    data = ("GET http://upstream.test:%d/echo HTTP/1.1\r\nHost: evil.test\r\n\r\n" %
            up.port).encode()
    r = al.raw(data)
    if r.status == 421:
        nothing_upstream(up, "421")
        return
    eq(r.status, 200, "status (want 421 or 200 with Host rewritten)")
    hosts = [v for k, v in up.find("/echo")[-1]["headers"] if k.lower() == "host"]
    eq(hosts, ["upstream.test:%d" % up.port], "Host at the upstream")


# ---------------------------------------------------------------------------
# address guard


STAR = rule("all", ["*"])


@test
def test_guard_names(t):
    up = t.upstream()
    al = start(t, pol(STAR))
    r = al.raw(req("loop.test:%d" % up.port, "/echo"))
    expect_error(r, 403, "address_not_allowed")
    r = al.raw(up_req(up, "/echo"))
    expect_error(r, 403, "address_not_allowed")
    nothing_upstream(up, "names pinned to 127.0.0.1")
    t0 = time.monotonic()
    r = al.raw(req("meta.test", "/latest/meta-data/"), timeout=10)
    dt = time.monotonic() - t0
    expect_error(r, 403, "address_not_allowed")
    check(dt < 1.5, "169.254.169.254 refused only after %.2fs (connect attempted?)" % dt)
    r = al.curl(["http://meta.test/latest/meta-data/"], timeout=10)
    curl_err(r, 403, "address_not_allowed", "curl to meta.test")


def _literal_targets(port, port6):
    return [
        ("decimal", "2130706433:%d" % port),
        ("hex", "0x7f.1:%d" % port),
        ("octal", "0177.0.0.1:%d" % port),
        ("short", "127.1:%d" % port),
        ("dotted", "127.0.0.1:%d" % port),
        ("mapped", "[::ffff:127.0.0.1]:%d" % port),
        ("v6loop", "[::1]:%d" % port6),
    ]


def _up6(t):
    try:
        return t.upstream(host="::1")
    except OSError as e:
        raise altest.TestFailure("environment: cannot bind ::1 (%s)" % e)


@test
def test_guard_literals(t):
    up = t.upstream()
    up6 = _up6(t)
    al = start(t, pol(STAR))
    bad = []
    seen = {}
    for name, auth in _literal_targets(up.port, up6.port):
        r = al.raw(req(auth, "/echo"))
        seen[name] = (r.status, reason(r))
        if r.status != 403:
            bad.append("%s http://%s/ -> %d %s" % (name, auth, r.status, reason(r)))
    check(not bad, "IP literals of loopback not refused: " + "; ".join(bad))
    nothing_upstream(up, "IP literals of 127.0.0.1")
    nothing_upstream(up6, "[::1]")
    # `*` matches IP literals (policy/README.md), so the guard is what refuses
    odd = {k: v for k, v in seen.items() if v[1] != "address_not_allowed"}
    check(not odd, "literal denied, but not by the address guard: %r" % odd)


@test
def test_guard_literals_curl(t):
    up = t.upstream()
    al = start(t, pol(STAR))
    for u in ("http://2130706433:%d/echo", "http://0x7f.1:%d/echo", "http://0177.0.0.1:%d/echo",
              "http://127.1:%d/echo", "http://[::ffff:127.0.0.1]:%d/echo"):
        r = al.curl([u % up.port])
        check(r.status == 403, "curl %s: %r" % (u % up.port, r))
    nothing_upstream(up, "curl IP literals")


@test
def test_guard_connect_literal(t):
    up = t.upstream(tls=True)
    al = start(t, pol(STAR))
    for auth in ("127.0.0.1:%d" % up.port, "2130706433:%d" % up.port,
                 "upstream.test:%d" % up.port, "[::ffff:127.0.0.1]:%d" % up.port):
        c = t.conn(al.port)
        c.send(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (auth, auth)).encode())
        r = c.read_response("CONNECT")
        check(r.status == 403, "CONNECT %s: %r" % (auth, r))
    nothing_upstream(up, "CONNECT to loopback")


@test
def test_guard_cidrs_allow(t):
    up = t.upstream()
    up6 = _up6(t)
    al = start(t, pol(rule("all", ["*"], cidrs=LOOP)))
    r = al.curl(["http://loop.test:%d/echo" % up.port])
    curl_ok(r, "loop.test with cidrs 127.0.0.1/32")
    for name, auth in _literal_targets(up.port, up6.port):
        if name in ("mapped", "v6loop"):
            continue
        r = al.raw(req(auth, "/echo"))
        eq((r.status, reason(r)), (200, None), "%s http://%s/ with cidrs 127.0.0.1/32" %
           (name, auth))
    # an IPv4 CIDR never covers ::ffff:127.0.0.1 (README), nor ::1
    r = al.raw(req("[::ffff:127.0.0.1]:%d" % up.port, "/echo"))
    expect_error(r, 403, "address_not_allowed")
    r = al.raw(req("[::1]:%d" % up6.port, "/echo"))
    expect_error(r, 403, "address_not_allowed")
    nothing_upstream(up6, "[::1] not in cidrs")
    # still no way to the metadata address
    r = al.raw(req("meta.test", "/"))
    expect_error(r, 403, "address_not_allowed")


@test
def test_guard_literal_rule(t):
    up = t.upstream(tls=True)
    al = start(t, pol(rule("lit", ["127.0.0.1"], cidrs=LOOP)))
    up2 = t.upstream()
    for auth in ("127.0.0.1", "0x7f.1", "2130706433"):
        r = al.raw(req("%s:%d" % (auth, up2.port), "/echo"))
        eq((r.status, reason(r)), (200, None), "http://%s:%d/ with hosts [127.0.0.1]" %
           (auth, up2.port))
    # CONNECT to the literal, then TLS through the tunnel
    r = al.curl(["--cacert", t.ca, "https://127.0.0.1:%d/bytes/1000" % up.port])
    curl_ok(r, "CONNECT 127.0.0.1 allowed by cidrs")
    check(r.body == pattern(1000), "body through the tunnel")
    # the rule names the literal only: the name pinned to it is another host
    r = al.raw(req("loop.test:%d" % up2.port, "/echo"))
    expect_error(r, 403, "host_not_allowed")


@test
def test_guard_allow_addresses(t):
    up = t.upstream()
    al = start(t, pol(STAR, allow_addresses=["127.0.0.0/8"]))
    r = al.curl(["http://loop.test:%d/echo" % up.port])
    curl_ok(r, "allow_addresses 127.0.0.0/8")
    r = al.raw(req("127.1:%d" % up.port, "/echo"))
    eq(r.status, 200, "127.1 with allow_addresses")
    r = al.raw(req("meta.test", "/"))
    expect_error(r, 403, "address_not_allowed")


# ---------------------------------------------------------------------------
# sandboxes


SB_TOKEN = {"sandboxes": [{"name": "a", "token_sha256": tok_hash(TOKEN_A)},
                          {"name": "b", "token_sha256": tok_hash(TOKEN_B)}]}


@test
def test_sandbox_token_auth(t):
    up = t.upstream()
    al = start(t, pol(UP_RULE), config=SB_TOKEN)
    u = "http://upstream.test:%d/echo" % up.port
    r = al.curl([u])
    curl_err(r, 407, "auth_required", "no credentials")
    eq(r.header("Proxy-Authenticate"), 'Basic realm="airlock"', "Proxy-Authenticate")
    r = curl_p(al, "a", "wrong", [u])
    curl_err(r, 407, "bad_credentials", "wrong token")
    eq(r.header("Proxy-Authenticate"), 'Basic realm="airlock"', "Proxy-Authenticate (bad)")
    r = curl_p(al, "a", TOKEN_B, [u])
    curl_err(r, 407, "bad_credentials", "another sandbox's token")
    r = curl_p(al, "nobody", TOKEN_A, [u])
    curl_err(r, 407, "unknown_sandbox", "unknown sandbox user")
    nothing_upstream(up, "407s")
    r = altest.curl([u], proxy="http://a:%s@127.0.0.1:%d" % (TOKEN_A, al.port))
    curl_ok(r, "correct token in the proxy URL")
    # (no ':' in these users: curl splits --proxy-user at the first colon)
    for user in ("a+call1", "a+sess1+call1", "b+sess.2+toolu_01-X_y"):
        tok = TOKEN_B if user.startswith("b") else TOKEN_A
        r = al.curl(["--proxy-user", "%s:%s" % (user, tok), u])
        curl_ok(r, "--proxy-user %s" % user)
    for bad in ("a+", "a++x", "a+b+c+d", "a+sp ace"):
        r = al.curl(["--proxy-user", "%s:%s" % (bad, TOKEN_A), u])
        check(r.status == 407, "user %r: %r" % (bad, r))
    for rec in up.requests:
        check("proxy-authorization" not in rec["raw_head"].lower(),
              "Proxy-Authorization reached the upstream: %r" % rec["raw_head"])


def curl_p(al, user, pw, args):
    return al.curl(["--proxy-user", "%s:%s" % (user, pw)] + args)


@test
def test_sandbox_connect_auth(t):
    up = t.upstream(tls=True)
    al = start(t, pol(UP_RULE), config=SB_TOKEN)
    u = "https://upstream.test:%d/bytes/10" % up.port
    c = t.conn(al.port)
    c.send(b"CONNECT upstream.test:%d HTTP/1.1\r\nHost: upstream.test:%d\r\n\r\n" %
           (up.port, up.port))
    r = c.read_response("CONNECT")
    expect_error(r, 407, "auth_required")
    r = al.curl(["--cacert", t.ca, "--proxy-user", "a+t1:" + TOKEN_A, u])
    curl_ok(r, "CONNECT with credentials")


@test
def test_sandbox_by_cidr(t):
    up = t.upstream()
    al = start(t, pol(rule("up", ["upstream.test"], cidrs=LOOP, sandboxes=["dev"])),
               config={"sandboxes": [{"name": "dev", "cidrs": ["127.0.0.0/8"]}]})
    r = al.curl(["http://upstream.test:%d/echo" % up.port])
    curl_ok(r, "CIDR sandbox without credentials")


@test
def test_sandbox_restricted_rule(t):
    up = t.upstream()
    al = start(t, pol(rule("only-a", ["upstream.test"], cidrs=LOOP, sandboxes=["a"])),
               config=SB_TOKEN)
    u = "http://upstream.test:%d/echo" % up.port
    r = curl_p(al, "a", TOKEN_A, [u])
    curl_ok(r, "sandbox a on its rule")
    n = len(up.requests)
    r = curl_p(al, "b", TOKEN_B, [u])
    curl_err(r, 403, "sandbox_not_allowed", "sandbox b on a's rule")
    eq(len(up.requests), n, "requests at the upstream after b's denial")


@test
def test_sandbox_unknown_source(t):
    up = t.upstream()
    al = start(t, pol(UP_RULE),
               config={"sandboxes": [{"name": "far", "cidrs": ["10.9.0.0/16"]}]})
    r = al.curl(["http://upstream.test:%d/echo" % up.port])
    curl_err(r, 403, "unknown_sandbox", "source matching no sandbox")
    nothing_upstream(up, "unknown sandbox")


# ---------------------------------------------------------------------------
# tags


@test
def test_tags_stripped(t):
    up = t.upstream()
    al = start(t, pol(UP_RULE), config=SB_TOKEN)
    r = al.curl(["--proxy-user", "a+sess9+call9:" + TOKEN_A,
                 "-H", "X-Airlock-Session: sess-1", "-H", "X-Airlock-Tool-Call: toolu_abc",
                 "-H", "X-Keep: yes", "http://upstream.test:%d/echo" % up.port])
    curl_ok(r, "tagged request")
    raw = up.find("/echo")[-1]["raw_head"].lower()
    for h in ("x-airlock-session", "x-airlock-tool-call", "proxy-authorization", "sess-1",
              "toolu_abc", TOKEN_A.lower()):
        check(h not in raw, "%r reached the upstream: %r" % (h, raw))
    check("x-keep: yes" in raw, "an ordinary header was lost: %r" % raw)
    # raw, lowercase and odd-case header names, two of each
    auth = "Basic " + base64.b64encode(b"a:" + TOKEN_A.encode()).decode()
    r = al.raw(up_req(up, "/echo?raw", headers=[("Proxy-Authorization", auth),
                                                ("x-airlock-session", "s1"),
                                                ("X-AIRLOCK-TOOL-CALL", "c1"),
                                                ("X-Airlock-Tool-Call", "c2")]))
    eq(r.status, 200, "raw tagged request")
    raw = up.find("/echo?raw")[-1]["raw_head"].lower()
    check("x-airlock" not in raw and "proxy-authorization" not in raw,
          "tags/credentials reached the upstream: %r" % raw)


@test
def test_tags_invalid(t):
    up = t.upstream()
    al = start(t, pol(UP_RULE))
    u = up_req
    for hdr, val in (("X-Airlock-Session", "has space"), ("X-Airlock-Tool-Call", "x" * 200),
                     ("X-Airlock-Tool-Call", "a/b"), ("X-Airlock-Session", "")):
        r = al.raw(u(up, "/echo", headers=[(hdr, val)]))
        check(r.status == 400 and reason(r) == "bad_tag",
              "%s: %r -> %d %s" % (hdr, val[:20], r.status, reason(r)))
    r = al.curl(["-H", "X-Airlock-Session: has space", "http://upstream.test:%d/echo" % up.port])
    curl_err(r, 400, "bad_tag", "curl bad tag")
    nothing_upstream(up, "bad tags")
    r = al.raw(u(up, "/echo", headers=[("X-Airlock-Tool-Call", "x" * 128)]))
    eq(r.status, 200, "a 128-byte tool call id")


# ---------------------------------------------------------------------------
# paths and methods

# The test upstream answers /echo/... (any suffix), so the path rule is
# "/echo/**" rather than "/repos/**"; the semantics are the same.
PATH_RULE = rule("api", ["upstream.test"], paths=["/echo/**"], methods=["GET"], cidrs=LOOP)


@test
def test_paths_methods(t):
    up = t.upstream()
    al = start(t, pol(PATH_RULE))
    r = al.raw(up_req(up, "/echo/a/b"))
    eq(r.status, 200, "GET /echo/a/b")
    r = al.raw(up_req(up, "/echo"))
    eq(r.status, 200, "GET /echo (** matches zero segments)")
    n = len(up.requests)
    r = al.raw(up_req(up, "/other"))
    expect_error(r, 403, "path_not_allowed")
    r = al.raw(up_req(up, "/echo/x", method="POST", body=b"abc"))
    expect_error(r, 403, "method_not_allowed")
    r = al.raw(up_req(up, "/echo/../admin"))
    expect_error(r, 403, "path_not_allowed")
    r = al.raw(up_req(up, "/echo/%2e%2e/admin"))
    expect_error(r, 403, "path_not_allowed")
    r = al.raw(up_req(up, "/echo/a%2Fb"))
    expect_error(r, 400, "encoded_slash")
    r = al.raw(up_req(up, "/echo/a%5cb"))
    expect_error(r, 400, "encoded_slash")
    r = al.raw(up_req(up, "/echo/a%zzb"))
    expect_error(r, 400, "bad_path")
    eq(len(up.requests), n, "requests at the upstream after the denials")
    r = al.raw(up_req(up, "/echo/./a/%2e%2e/b?q=1"))
    eq(r.status, 200, "GET /echo/./a/%2e%2e/b?q=1")
    eq(up.requests[-1]["requestline"], "GET /echo/b?q=1 HTTP/1.1",
       "request line at the upstream (normalised path)")
    r = al.curl(["--path-as-is", "http://upstream.test:%d/echo/x/../../admin" % up.port])
    curl_err(r, 403, "path_not_allowed", "curl --path-as-is ..")


# ---------------------------------------------------------------------------
# dry-run


DRY_RULES = [rule("other", ["other.test"]), rule("loop", ["loop.test"], cidrs=LOOP)]


@test
def test_dryrun_top_level(t):
    up = t.upstream()
    al = start(t, pol(*DRY_RULES, mode="dry-run", allow_addresses=["127.0.0.0/8"]))
    r = al.curl(["http://upstream.test:%d/echo" % up.port])
    curl_ok(r, "dry-run: a denied request passes")
    eq(len(up.find("/echo")), 1, "requests at the upstream")
    wait_until(lambda: re.search(r"would_deny.*upstream\.test", al.log()), 5,
               "a would_deny line for upstream.test in airlock's log")
    _dryrun_never_relaxes(al, up)


def _dryrun_never_relaxes(al, up):
    n = len(up.requests)
    r = al.raw(req("meta.test", "/"))
    expect_error(r, 403, "address_not_allowed")
    r = al.raw(req("loop.test:%d" % up.port, "/echo/a%2Fb"))
    expect_error(r, 400, "encoded_slash")
    r = al.raw(up_req(up, "/echo/a%zz"))
    expect_error(r, 400, "bad_path")
    r = al.raw(req("loop.test:%d" % up.port, "/echo/a%zz"))
    expect_error(r, 400, "bad_path")
    r = al.raw(req("[::1]:%d" % altest.free_port("127.0.0.1"), "/"))
    expect_error(r, 403, "address_not_allowed")
    eq(len(up.requests), n, "requests at the upstream after the refusals")


@test
def test_dryrun_encoded_slash_would_deny(t):
    """A request dry-run lets through as would_deny must still be refused
    for an encoded slash (README: never relaxed: encoded_slash)."""
    up = t.upstream()
    al = start(t, pol(*DRY_RULES, mode="dry-run", allow_addresses=["127.0.0.0/8"]))
    r = al.raw(up_req(up, "/echo/a%2Fb"))
    expect_error(r, 400, "encoded_slash")
    eq(len(up.requests), 0, "requests at the upstream")


@test
def test_dryrun_cli_flag(t):
    up = t.upstream()
    al = start(t, pol(*DRY_RULES, allow_addresses=["127.0.0.0/8"]), args=["--dry-run"])
    r = al.curl(["http://upstream.test:%d/echo" % up.port])
    curl_ok(r, "--dry-run: a denied request passes")
    wait_until(lambda: "would_deny" in al.log(), 5, "a would_deny line in airlock's log")
    _dryrun_never_relaxes(al, up)


@test
def test_dryrun_staged_rule(t):
    up = t.upstream()
    al = start(t, pol(rule("stage-block", ["upstream.test"], action="deny", mode="dry-run"),
                      UP_RULE))
    r = al.curl(["http://upstream.test:%d/echo" % up.port])
    curl_ok(r, "staged deny in front of an allow")
    wait_until(lambda: re.search(r"would_deny.*stage-block", al.log()), 5,
               "a would_deny line naming stage-block")
    # enforce mode otherwise: an unlisted host is still denied
    r = al.raw(req("other.test:%d" % up.port, "/echo"))
    expect_error(r, 403, "host_not_allowed")
    r = al.raw(req("meta.test", "/"))
    expect_error(r, 403, "host_not_allowed")


# ---------------------------------------------------------------------------
# reload


@test
def test_reload_sighup_during_download(t):
    up = t.upstream()
    al = start(t, pol(UP_RULE))
    n = 10 * MiB
    out = os.path.join(t.tmp, "slow.bin")
    p = t.popen(altest.curl_popen(["-x", al.proxy, "http://upstream.test:%d/slow/%d?rate=%d" %
                                   (up.port, n, 4 * MiB)], out, timeout=30))
    wait_until(lambda: up.bytes_sent >= 256 * 1024, 10, "the slow download to start")
    write_policy(al, pol(rule("other", ["other.test"], cidrs=LOOP)))
    sighup_and_wait(al, "ok")
    r = al.raw(up_req(up, "/echo"))
    expect_error(r, 403, "host_not_allowed")
    check(p.poll() is None, "download already over before the denial was checked "
                            "(test did not overlap)")
    rc = p.wait(30)
    err = p.stderr.read().decode("utf-8", "replace")
    eq(rc, 0, "curl exit of the running download (%s)" % err.strip())
    with open(out, "rb") as fh:
        data = fh.read()
    eq(len(data), n, "downloaded length")
    check(sha256(data) == pattern_sha256(n), "download across reload not byte-exact")
    eq(len(up.find("/echo")), 0, "requests for /echo at the upstream")


@test
def test_reload_admin_and_invalid(t):
    up = t.upstream()
    al = start(t, pol(UP_RULE))
    u = "http://upstream.test:%d/echo" % up.port
    curl_ok(al.curl([u]), "before reload")
    write_policy(al, pol(rule("other", ["other.test"], cidrs=LOOP)))
    st, body = admin_post(al, "/reload")
    eq((st, body.strip()), (200, "reloaded"), "POST /reload")
    curl_err(al.curl([u]), 403, "host_not_allowed", "after reload")
    curl_ok(al.curl(["http://other.test:%d/echo" % up.port]), "other.test after reload")
    # invalid: two errors; the admin answer names file:line:col for each
    bad = ('{\n "rules": [\n  {"name": "x", "hosts": ["*.com"]},\n'
           '  {"name": "y", "hosts": ["upstream.test"], "colour": "red"}\n ]\n}\n')
    write_policy(al, bad)
    failed0 = reloads(al, "failed")
    st, body = admin_post(al, "/reload")
    eq(st, 422, "POST /reload with an invalid policy (body %r)" % body)
    locs = re.findall(r"policy\.json:(\d+):(\d+):", body)
    check(len(locs) >= 2, "want file:line:col for both errors, got %r" % body)
    check({int(a) for a, _ in locs} >= {3, 4}, "error lines %r, want 3 and 4: %r" % (locs, body))
    eq(reloads(al, "failed"), failed0 + 1, "reloads_total{failed} after POST")
    # old policy still in force
    curl_err(al.curl([u]), 403, "host_not_allowed", "after failed reload (old policy)")
    curl_ok(al.curl(["http://other.test:%d/echo" % up.port]), "other.test after failed reload")
    # SIGHUP with it: same, counted
    sighup_and_wait(al, "failed")
    curl_err(al.curl([u]), 403, "host_not_allowed", "after failed SIGHUP (old policy)")
    curl_ok(al.curl(["http://other.test:%d/echo" % up.port]), "other.test after failed SIGHUP")
    check(al.alive(), "airlock died")
    wait_until(lambda: "policy.json:3:" in al.log(), 5, "the reload error in airlock's log")
    # GET /reload is not a reload
    st2, _, _ = altest.http_get_direct(al.admin + "/reload")
    eq(st2, 405, "GET /reload")


@test
def test_reload_restart_only_settings_warned(t):
    """A reload that changes a setting read only at start (here resolve and
    workers) still applies the rest, and says which ones wait for a restart,
    in the /reload answer and the log; the running resolver is unchanged."""
    up = t.upstream()
    al = start(t, pol(UP_RULE))
    u = "http://upstream.test:%d/echo" % up.port
    curl_ok(al.curl([u]), "before reload")
    with open(al.cfg_path) as fh:
        cfg = json.load(fh)
    cfg["resolve"]["upstream.test"] = "127.0.0.9"
    cfg["workers"] = 3
    with open(al.cfg_path + ".tmp", "w") as fh:
        json.dump(cfg, fh)
    os.rename(al.cfg_path + ".tmp", al.cfg_path)
    write_policy(al, pol(rule("both", ["upstream.test", "other.test"], cidrs=LOOP)))
    st, body = admin_post(al, "/reload")
    eq(st, 200, "POST /reload (body %r)" % body)
    check(body.startswith("reloaded\n") and
          "takes effect at the next start: workers, resolve/dns" in body,
          "want the restart-only settings named: %r" % body)
    curl_ok(al.curl(["http://other.test:%d/echo" % up.port]), "the new policy applies")
    curl_ok(al.curl([u]), "upstream.test still resolves as at start")
    wait_until(lambda: "resolve/dns changed" in al.log(), 5, "the warning in airlock's log")


@test
def test_reload_keepalive_connection(t):
    up = t.upstream()
    al = start(t, pol(UP_RULE))
    c = t.conn(al.port)
    c.send(up_req(up, "/echo/1"))
    r = c.read_response()
    eq(r.status, 200, "request 1 before reload")
    write_policy(al, pol(rule("other", ["other.test"], cidrs=LOOP)))
    st, body = admin_post(al, "/reload")
    eq(st, 200, "POST /reload (%s)" % body)
    # the reload is in force for a new connection ...
    r = al.raw(up_req(up, "/echo/new"))
    expect_error(r, 403, "host_not_allowed")
    # ... and must be for the next request on the existing keep-alive one
    c.send(up_req(up, "/echo/2"))
    r = c.read_response()
    if r.status != 403:
        raise altest.TestFailure(
            "request 2 on the keep-alive connection opened before the reload: got %d %s "
            "(upstream saw %r) while a new connection got 403 host_not_allowed: the "
            "connection is still decided by the old policy" %
            (r.status, reason(r), [x["requestline"] for x in up.find("/echo/2")]))
    expect_error(r, 403, "host_not_allowed")
    eq(len(up.find("/echo/2")), 0, "request 2 at the upstream")


# ---------------------------------------------------------------------------
# CLI


def _cli(t, *args, timeout=20):
    p = subprocess.run([altest.RUN.airlock_bin] + list(args), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout, cwd=t.tmp)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def _cli_conf(t, policy_text, extra=None):
    d = os.path.join(t.tmp, "cli")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "policy.json"), "w") as fh:
        fh.write(policy_text if isinstance(policy_text, str) else json.dumps(policy_text, indent=1))
    cfg = {"listen": [{"addr": "127.0.0.1:%d" % altest.free_port(), "mode": "forward"}],
           "admin": "127.0.0.1:%d" % altest.free_port(), "policy": "policy.json",
           "resolve": dict(RESOLVE)}
    cfg.update(extra or {})
    path = os.path.join(d, "airlock.json")
    with open(path, "w") as fh:
        json.dump(cfg, fh, indent=1)
    return path


@test
def test_cli_policy_check(t):
    c = _cli_conf(t, pol(rule("api", ["api.example.org"], methods=["GET"], paths=["/v1/**"]),
                         rule("all-loop", ["loop.test"]),
                         rule("meta", ["meta.test"], cidrs=["169.254.169.254/32"])))
    rc, out, err = _cli(t, "policy", "check", "--config", c, "--no-resolve",
                        "GET", "http://api.example.org/v1/x")
    eq(rc, 0, "allowed exit (out %r err %r)" % (out, err))
    check(re.search(r"^decision:\s+allow$", out, re.M) and "decision:  allow" in out,
          "allowed output: %r" % out)
    rc, out, err = _cli(t, "policy", "check", "--config", c, "--no-resolve",
                        "POST", "http://api.example.org/v1/x")
    eq(rc, 3, "denied exit (out %r err %r)" % (out, err))
    check("deny" in out and "method_not_allowed" in out, "denied output: %r" % out)
    rc, out, err = _cli(t, "policy", "check", "--config", c, "--no-resolve",
                        "GET", "http://nowhere.test/")
    eq(rc, 3, "unlisted host exit")
    check("host_not_allowed" in out, "unlisted output %r" % out)
    for bad in (["GET", "ht!tp:/"], ["GET", "http://"], ["GET", "ftp://x.test/"],
                ["--bogus", "GET", "http://x.test/"], ["GET"]):
        rc, out, err = _cli(t, "policy", "check", "--config", c, *bad)
        eq(rc, 2, "policy check %r exit (out %r err %r)" % (bad, out, err))
    # --json
    rc, out, err = _cli(t, "policy", "check", "--config", c, "--json", "--no-resolve",
                        "GET", "http://api.example.org/v1/x")
    eq(rc, 0, "--json allow exit")
    j = json.loads(out)
    for k in ("decision", "rule", "reason", "explain"):
        check(k in j, "--json lacks %r: %r" % (k, j))
    eq((j["decision"], j["rule"]), ("allow", "api"), "--json decision/rule")
    # address guard: a name pinned to 127.0.0.1 under a rule without cidrs
    rc, out, err = _cli(t, "policy", "check", "--config", c, "--json", "GET", "http://loop.test/")
    eq(rc, 3, "loop.test exit (out %r err %r)" % (out, err))
    j = json.loads(out)
    eq((j["decision"], j["reason"]), ("deny", "address_not_allowed"), "loop.test --json")
    check(isinstance(j.get("addresses"), list) and j["addresses"], "addresses: %r" % j)
    a = j["addresses"][0]
    check(a.get("addr", "").startswith("127.0.0.1") and a.get("class") == "loopback" and
          a.get("allowed") is False, "address entry %r" % a)
    rc, out, err = _cli(t, "policy", "check", "--config", c, "GET", "http://loop.test/")
    eq(rc, 3, "loop.test text exit")
    check(re.search(r"^decision:\s+deny", out, re.M) and "address_not_allowed" in out,
          "loop.test text: %r" % out)
    rc, out, err = _cli(t, "policy", "check", "--config", c, "--no-resolve", "--json",
                        "GET", "http://loop.test/")
    eq(rc, 0, "--no-resolve skips the guard")
    j = json.loads(out)
    eq(j["decision"], "allow", "--no-resolve decision")
    check(not j.get("addresses"), "--no-resolve still lists addresses: %r" % j)
    # metadata allowed only by its cidrs
    rc, out, err = _cli(t, "policy", "check", "--config", c, "--json", "GET",
                        "http://meta.test/latest/")
    eq(rc, 0, "meta.test with cidrs exit (%r)" % out)
    j = json.loads(out)
    eq(j["addresses"][0].get("allowed"), True, "metadata address allowed by cidrs")
    # literal spellings, CONNECT form
    rc, out, err = _cli(t, "policy", "check", "--config", c, "--json", "GET",
                        "http://0x7f.1/")
    eq(rc, 3, "0x7f.1 exit (%r)" % out)
    eq(json.loads(out)["decision"], "deny", "0x7f.1 decision")
    rc, out, err = _cli(t, "policy", "check", "--config", c, "CONNECT", "loop.test:443")
    eq(rc, 3, "CONNECT loop.test:443 exit (%r %r)" % (out, err))


@test
def test_cli_policy_check_sandbox_dryrun(t):
    c = _cli_conf(t, pol(rule("only-a", ["a.test"], sandboxes=["a"])),
                  dict(SB_TOKEN))
    rc, out, err = _cli(t, "policy", "check", "--config", c, "--no-resolve", "--sandbox", "a",
                        "GET", "http://a.test/")
    eq(rc, 0, "--sandbox a (out %r err %r)" % (out, err))
    rc, out, err = _cli(t, "policy", "check", "--config", c, "--no-resolve", "--sandbox", "b",
                        "GET", "http://a.test/")
    eq(rc, 3, "--sandbox b (out %r err %r)" % (out, err))
    check("sandbox_not_allowed" in out, "--sandbox b reason: %r" % out)
    rc, out, err = _cli(t, "policy", "check", "--config", c, "--no-resolve", "--sandbox", "ghost",
                        "GET", "http://a.test/")
    eq(rc, 2, "--sandbox ghost (out %r err %r)" % (out, err))
    c = _cli_conf(t, pol(rule("x", ["x.test"]), mode="dry-run"))
    rc, out, err = _cli(t, "policy", "check", "--config", c, "--no-resolve", "--json",
                        "GET", "http://y.test/")
    eq(rc, 0, "would_deny exits 0 (out %r err %r)" % (out, err))
    eq(json.loads(out)["decision"], "would_deny", "dry-run decision")
    # dry-run never relaxes the guard in policy check either
    rc, out, err = _cli(t, "policy", "check", "--config", c, "--json", "GET", "http://meta.test/")
    eq(rc, 3, "dry-run meta.test exit (out %r err %r)" % (out, err))
    eq(json.loads(out)["reason"], "address_not_allowed", "dry-run meta.test reason")


@test
def test_cli_check_warnings(t):
    c = _cli_conf(t, pol(rule("all", ["*.example.org"]), rule("shadowed", ["api.example.org"])))
    rc, out, err = _cli(t, "check", "--config", c)
    eq(rc, 0, "check with a shadowed rule: exit (out %r err %r)" % (out, err))
    check("warning:" in out + err and "shadowed" in out + err,
          "no warning naming the shadowed rule: out %r err %r" % (out, err))
    c = _cli_conf(t, pol(rule("x", ["a.test"], sandboxes=["ghost"])),
                  {"sandboxes": [{"name": "dev", "cidrs": ["127.0.0.0/8"]}]})
    rc, out, err = _cli(t, "check", "--config", c)
    eq(rc, 0, "check with an unknown sandbox name: exit")
    check("warning:" in out + err and "ghost" in out + err,
          "no warning for the unknown sandbox: out %r err %r" % (out, err))


@test
def test_cli_check_errors(t):
    text = ('{\n'
            ' "rules": [\n'
            '  {"name": "tld", "hosts": ["*.com"]},\n'
            '  {"name": "key", "hosts": ["a.test"], "colour": "red"},\n'
            '  {"name": "mid", "hosts": ["a.*.test"]},\n'
            '  {"name": "act", "hosts": ["b.test"], "action": "maybe"}\n'
            ' ]\n'
            '}\n')
    c = _cli_conf(t, text)
    rc, out, err = _cli(t, "check", "--config", c)
    eq(rc, 2, "check with an invalid policy: exit (out %r err %r)" % (out, err))
    text_out = out + err
    locs = re.findall(r"policy\.json:(\d+):(\d+):", text_out)
    lines = sorted({int(a) for a, _ in locs})
    check({3, 4, 5, 6} <= set(lines),
          "want errors on lines 3,4,5,6 (every error), got %r in %r" % (lines, text_out))
    # syntax error: location too
    c = _cli_conf(t, '{\n "rules": [\n  {"name": "a", "hosts": ["a.test"],}\n ]\n}\n')
    rc, out, err = _cli(t, "check", "--config", c)
    eq(rc, 2, "check with a JSON syntax error")
    check(re.search(r"policy\.json:3:\d+:", out + err), "syntax error location: %r" % (out + err))
    # valid policy
    c = _cli_conf(t, pol(UP_RULE))
    rc, out, err = _cli(t, "check", "--config", c)
    eq(rc, 0, "check of a valid config (out %r err %r)" % (out, err))
    check("warning" not in out + err, "unexpected warning %r" % (out + err))


if __name__ == "__main__":
    sys.exit(altest.main())
