#!/usr/bin/env python3
"""Framing and request smuggling (issue 14): raw-socket clients against an
origin that logs every request it parses (rawhttp.RawOrigin, not nginx,
which re-frames and would hide a desync).

    python3 tests/integration/test_framing.py --airlock build/proxy/airlock [-k NAME]

The policy allows only GET/POST/HEAD on /public/** of upstream.test; a request
smuggled past it shows up in the origin's log as a request of its own. The
transparent-mode variant lives in test_transparent.py (it needs its
namespace fixtures).
"""

import base64
import hashlib
import json
import os
import socket
import sqlite3
import ssl
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import altest  # noqa: E402
import rawhttp  # noqa: E402
from altest import TestFailure, check, eq, expect_error, test, wait_until  # noqa: E402

SECRET = "SECRET-VALUE-framing-7c1d0e"
HOST = "upstream.test"  # the harness's server certificate names it
TOK_A, TOK_B = "tok-a-91f2", "tok-b-55e0"

# Every shape of "Connection names the message's own framing".
CONN_VECTORS = [
    ("Content-Length: 82\r\nConnection: content-length\r\n", "content-length"),
    ("Content-Length: 82\r\nConnection: keep-alive, Content-Length\r\n", "content-length"),
    ("Content-Length: 82\r\nConnection: close\r\nConnection: CONTENT-LENGTH\r\n",
     "content-length"),
    ("Transfer-Encoding: chunked\r\nConnection: transfer-encoding\r\n", "transfer-encoding"),
    ("Content-Length: 82\r\nConnection: host\r\n", "host"),
]
SMUGGLED = (b"DELETE /admin/secret-stuff HTTP/1.1\r\nHost: upstream.test\r\n"
            b"Content-Length: 0\r\n\r\n")


def sha(tok):
    return hashlib.sha256(tok.encode()).hexdigest()


def start(t, secrets=None, sandboxes=None, ca=False, config=None):
    cfg = {"resolve": {HOST: "127.0.0.1"}, "audit": {"db": "audit.db", "flush_ms": 20}}
    if secrets is not None:
        cfg["secrets"] = t.file("secrets.json", json.dumps({"secrets": secrets}).encode())
    if sandboxes is not None:
        cfg["sandboxes"] = sandboxes
    if ca:
        d = os.path.join(t.tmp, "ca")
        p = subprocess.run([t.run.airlock_bin, "ca", "init", "--dir", d], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        if p.returncode != 0:
            raise TestFailure("ca init: %r" % p.stdout)
        cfg["ca"] = {"dir": d}
        cfg["upstream_ca"] = t.run.ca_pem
        t.aca_pem = os.path.join(d, "ca.pem")
    cfg.update(config or {})
    pol = {"default": "deny", "rules": [
        {"name": "public", "hosts": ["upstream.test"], "methods": ["GET", "POST", "HEAD"],
         "paths": ["/public/**"], "cidrs": ["127.0.0.1/32"], "action": "allow",
         "intercept": ca}]}
    return t.airlock(config=cfg, policy=pol)


def origin(t, **kw):
    o = rawhttp.RawOrigin(**kw)
    t.defer(o.stop)
    return o


def rows(al):
    path = os.path.join(al.dir, "audit.db")
    if not os.path.isfile(path):
        return []
    c = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=5)
    c.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in c.execute("SELECT * FROM requests ORDER BY id")]
    except sqlite3.OperationalError:
        return []
    finally:
        c.close()


def wait_row(al, what, **want):
    def find():
        for r in rows(al):
            if all(r.get(k) == v for k, v in want.items()):
                return r
        return None
    try:
        return wait_until(find, 5, "audit row %s (%s)" % (want, what))
    except TestFailure as e:
        raise TestFailure("%s; rows: %s" % (e, [{k: r.get(k) for k in (
            "method", "path", "decision", "reason", "status", "error")} for r in rows(al)]))


def smuggle_head(port, vector, target="/public/x", absolute=True, auth=None):
    """A GET whose Connection header names its own framing, with a second
    request as its body (what the origin would parse as a request)."""
    url = ("http://upstream.test:%d%s" % (port, target)) if absolute else target
    extra = ""
    if auth:
        extra = "Proxy-Authorization: Basic %s\r\n" % base64.b64encode(auth.encode()).decode()
    body = SMUGGLED
    if "chunked" in vector:
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    else:
        vector = vector.replace("Content-Length: 82", "Content-Length: %d" % len(SMUGGLED))
    return ("GET %s HTTP/1.1\r\nHost: upstream.test:%d\r\n%s%s\r\n" %
            (url, port, extra, vector)).encode() + body


def tls_tunnel(t, al, host, port):
    c = t.conn(al.port)
    c.send(("CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (host, port, host, port)).encode())
    r = c.read_response("CONNECT")
    eq(r.status, 200, "CONNECT status")
    ctx = ssl.create_default_context(cafile=t.aca_pem)
    s = ctx.wrap_socket(c.sock, server_hostname=host)
    tc = altest.Conn(0, sock=s, timeout=10)
    t.defer(tc.close)
    return tc


# ---------------------------------------------------------------------------


@test
def test_connection_names_framing_forward(t):
    o = origin(t)
    al = start(t)
    for vector, name in CONN_VECTORS:
        r = al.raw(smuggle_head(o.port, vector))
        expect_error(r, 400, "bad_connection_header")
        check(name in r.body.decode("latin-1"), "detail names %s: %r" % (name, r.body))
    eq(o.lines(), [], "requests the origin parsed (nothing may reach it)")
    # each refusal is audited as what it is
    wait_until(lambda: len([r for r in rows(al) if r["reason"] == "bad_connection_header"])
               == len(CONN_VECTORS), 5, "one audit row per refused request")
    row = wait_row(al, "refused", reason="bad_connection_header")
    eq((row["method"], row["path"], row["status"]), ("GET", "/public/x", 400), "row")
    # the proxy still serves an honest request
    r = al.raw(b"GET http://upstream.test:%d/public/ok HTTP/1.1\r\nHost: upstream.test\r\n\r\n" %
               o.port)
    eq(r.status, 200, "honest request")
    eq(o.lines(), ["GET /public/ok"], "origin log")


@test
def test_framing_generated_not_copied(t):
    """What goes upstream is the parsed length (or chunked), never the
    peer's header text; Content-Length is never sent twice."""
    o = origin(t)
    al = start(t)
    c = t.conn(al.port)
    c.send(b"POST http://upstream.test:%d/public/cl HTTP/1.1\r\nHost: upstream.test\r\n"
           b"Content-Length: 0005\r\n\r\nhello" % o.port)
    eq(c.read_response().status, 200, "POST with a zero-padded length")
    c.send(b"POST http://upstream.test:%d/public/te HTTP/1.1\r\nHost: upstream.test\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: 1\r\n\r\n" %
           o.port)
    eq(c.read_response().status, 200, "chunked POST")
    c.send(b"POST http://upstream.test:%d/public/zero HTTP/1.1\r\nHost: upstream.test\r\n"
           b"Content-Length: 0\r\n\r\n" % o.port)
    eq(c.read_response().status, 200, "empty POST")
    reqs = o.requests()
    eq([(r["method"], r["target"], r["body"]) for r in reqs],
       [("POST", "/public/cl", b"hello"), ("POST", "/public/te", b"abcde"),
        ("POST", "/public/zero", b"")], "origin log")

    def framing(r):
        return [(k.lower(), v) for k, v in r["headers"]
                if k.lower() in ("content-length", "transfer-encoding")]
    eq(framing(reqs[0]), [("content-length", "5")], "framing of the zero-padded POST")
    eq(framing(reqs[1]), [("transfer-encoding", "chunked")], "framing of the chunked POST")
    eq(framing(reqs[2]), [("content-length", "0")], "framing of the empty POST")


@test
def test_response_framing(t):
    o = origin(t)
    al = start(t)
    base = b"http://upstream.test:%d/public/resp/" % o.port
    c = t.conn(al.port)
    c.send(b"GET " + base + b"cl-zeros HTTP/1.1\r\nHost: upstream.test\r\n\r\n")
    r = c.read_response()
    eq((r.status, r.body, r.header("Content-Length")), (200, b"hello", "5"),
       "a zero-padded length goes on as the parsed number")
    c.send(b"HEAD " + base + b"head-len HTTP/1.1\r\nHost: upstream.test\r\n\r\n")
    r = c.read_response("HEAD")
    eq((r.status, r.header("Content-Length")), (200, "42"), "HEAD answer keeps its length")
    for name in ("connection-cl", "connection-te"):
        r = al.raw(b"GET " + base + name.encode() + b" HTTP/1.1\r\nHost: upstream.test\r\n\r\n")
        expect_error(r, 502, "bad_connection_header")
        check(b"hello" not in r.body, "no byte of the refused body: %r" % r.body)
    wait_row(al, "refused response", error="bad_connection_header", status=502)


@test
def test_response_extra_bytes_never_reused(t):
    """An upstream that sent more than its response said is not reused: the
    next request gets a fresh connection and never sees the forged bytes."""
    o = origin(t)
    al = start(t, config={"workers": 1})
    c = t.conn(al.port)
    c.send(b"GET http://upstream.test:%d/public/resp/extra HTTP/1.1\r\nHost: upstream.test\r\n\r\n"
           % o.port)
    r = c.read_response()
    eq((r.status, r.body), (200, b"hello"), "first response")
    for i in range(3):
        c.send(b"GET http://upstream.test:%d/public/next%d HTTP/1.1\r\nHost: upstream.test\r\n\r\n"
               % (o.port, i))
        r = c.read_response()
        eq((r.status, r.body), (200, b"ok GET /public/next%d\n" % i), "next response %d" % i)
    reqs = o.requests()
    check(reqs[1]["conn"] != reqs[0]["conn"], "the desynchronised upstream was reused")
    eq(reqs[2]["conn"], reqs[1]["conn"], "a clean upstream is reused")


@test
def test_pool_two_sandboxes(t):
    """Sandbox A tries to leave an unterminated prefix on a pooled upstream
    connection; sandbox B's next request must reach the origin intact on its
    own, and only B's response comes back to B."""
    o = origin(t)
    al = start(t, sandboxes=[{"name": "a", "token_sha256": sha(TOK_A)},
                             {"name": "b", "token_sha256": sha(TOK_B)}],
               config={"workers": 1})
    prefix = (b"POST /public/collect HTTP/1.1\r\nHost: upstream.test\r\n"
              b"Content-Length: 400\r\n\r\nstolen=")
    head = ("GET http://upstream.test:%d/public/x HTTP/1.1\r\nHost: upstream.test\r\n"
            "Proxy-Authorization: Basic %s\r\nContent-Length: %d\r\n"
            "Connection: keep-alive, content-length\r\n\r\n" %
            (o.port, base64.b64encode(b"a:" + TOK_A.encode()).decode(), len(prefix)))
    ca = t.conn(al.port)
    ca.send(head.encode() + prefix)
    expect_error(ca.read_response(), 400, "bad_connection_header")
    # a clean request of A parks a connection in the pool
    ca = t.conn(al.port)
    ca.send(("GET http://upstream.test:%d/public/a HTTP/1.1\r\nHost: upstream.test\r\n"
             "Proxy-Authorization: Basic %s\r\n\r\n" %
             (o.port, base64.b64encode(b"a:" + TOK_A.encode()).decode())).encode())
    eq(ca.read_response().body, b"ok GET /public/a\n", "A's clean request")
    ca.close()
    cb = t.conn(al.port)
    cb.send(("GET http://upstream.test:%d/public/b?q=mine HTTP/1.1\r\nHost: upstream.test\r\n"
             "Cookie: session=b-only\r\nProxy-Authorization: Basic %s\r\n\r\n" %
             (o.port, base64.b64encode(b"b:" + TOK_B.encode()).decode())).encode())
    r = cb.read_response()
    eq((r.status, r.body), (200, b"ok GET /public/b?q=mine\n"), "B's response")
    reqs = o.requests()
    eq(o.lines(), ["GET /public/a", "GET /public/b?q=mine"], "origin log")
    check(("Cookie", "session=b-only") in reqs[1]["headers"], "B's cookie reached the origin")
    eq(reqs[1]["conn"], reqs[0]["conn"], "a clean pooled connection is reused")
    wait_row(al, "A refused", sandbox="a", reason="bad_connection_header")


@test
def test_intercepted_tunnel_with_secret(t):
    """Inside an intercepted tunnel where a secret is injected: the same
    vectors are refused, nothing reaches the origin, and a later honest
    request gets the value while the client never sees it."""
    o = origin(t, tls_ctx=t.run.server_ctx())
    al = start(t, ca=True, secrets={"tok": {
        "from": {"value": SECRET}, "hosts": ["upstream.test"],
        "header": {"name": "Authorization", "format": "Bearer {}"}}})
    for vector, name in CONN_VECTORS:
        tc = tls_tunnel(t, al, "upstream.test", o.port)
        tc.send(smuggle_head(o.port, vector, absolute=False))
        r = tc.read_response()
        expect_error(r, 400, "bad_connection_header")
        check(SECRET.encode() not in r.head_raw + r.body, "secret in the answer")
    # an unterminated prefix meant to swallow the next request's head
    tc = tls_tunnel(t, al, "upstream.test", o.port)
    prefix = b"POST /public/store HTTP/1.1\r\nHost: upstream.test\r\nContent-Length: 300\r\n\r\n"
    tc.send(b"GET /public/x HTTP/1.1\r\nHost: upstream.test\r\nContent-Length: %d\r\n"
            b"Connection: content-length\r\n\r\n%s" % (len(prefix), prefix))
    expect_error(tc.read_response(), 400, "bad_connection_header")
    eq(o.lines(), [], "requests the origin parsed")
    tc = tls_tunnel(t, al, "upstream.test", o.port)
    tc.send(b"GET /public/honest HTTP/1.1\r\nHost: upstream.test\r\n\r\n")
    r = tc.read_response()
    eq((r.status, r.body), (200, b"ok GET /public/honest\n"), "honest request in the tunnel")
    reqs = o.requests()
    eq(o.lines(), ["GET /public/honest"], "origin log")
    check(("Authorization", "Bearer " + SECRET) in reqs[0]["headers"], "the value was injected")
    wait_row(al, "refused in tunnel", reason="bad_connection_header", status=400)


@test
def test_duplicate_content_encoding_from_secret_host(t):
    """identity then gzip (two headers, or one list) from a host that holds
    a secret is still a gzip body: decoded and scanned, never passed as is;
    two codings are refused."""
    o = origin(t, secret=SECRET.encode())
    al = start(t, ca=True, secrets={"tok": {
        "from": {"value": SECRET}, "hosts": ["upstream.test"], "allow_plaintext": True,
        "header": {"name": "X-Api-Key", "format": "{}"}}})
    for name in ("ce-dup", "ce-list"):
        r = al.raw(b"GET http://upstream.test:%d/public/resp/%s HTTP/1.1\r\nHost: upstream.test\r\n\r\n"
                   % (o.port, name.encode()))
        eq(r.status, 200, name + " status")
        check(r.body.startswith(b"gzipped body "), "%s: body decoded: %r" % (name, r.body[:40]))
        check(SECRET.encode() not in r.body, "%s: the secret reached the client" % name)
        check(r.header("Content-Encoding") is None, "%s: Content-Encoding passed on" % name)
    r = al.raw(b"GET http://upstream.test:%d/public/resp/ce-two HTTP/1.1\r\nHost: upstream.test\r\n\r\n"
               % o.port)
    expect_error(r, 502, "compressed_response")
    check(SECRET.encode() not in r.body, "ce-two: the secret reached the client")


@test
def test_query_without_path_kept(t):
    """http://host?q goes upstream as "/?q", not "/" (found by fuzz_h1_diff):
    what the row records is what went upstream."""
    o = origin(t)
    al = start(t)
    r = al.raw(b"GET http://upstream.test:%d?q=1&r=2 HTTP/1.1\r\nHost: upstream.test\r\n\r\n" %
               o.port)
    eq(r.status, 403, "the policy sees the path '/' (not under /public/)")
    al2 = t.airlock(config={"resolve": {HOST: "127.0.0.1"}},
                    policy={"default": "deny", "rules": [
                        {"name": "all", "hosts": [HOST], "cidrs": ["127.0.0.1/32"],
                         "action": "allow"}]})
    r = al2.raw(b"GET http://upstream.test:%d?q=1&r=2 HTTP/1.1\r\nHost: upstream.test\r\n\r\n" %
                o.port)
    eq(r.status, 200, "status")
    eq(o.lines(), ["GET /?q=1&r=2"], "what the origin parsed")


@test
def test_transfer_encoding_chunked_tab(t):
    """"chunked<TAB>" is not chunked to llhttp: a request with it is refused
    501, a response with it 502, never relayed as something else."""
    o = origin(t)
    al = start(t)
    r = al.raw(b"POST http://upstream.test:%d/public/x HTTP/1.1\r\nHost: upstream.test\r\n"
               b"Transfer-Encoding: chunked\t\r\n\r\n5\r\nhello\r\n0\r\n\r\n" % o.port)
    check(r.status in (400, 501), "request with chunked<TAB>: %d" % r.status)
    eq(o.lines(), [], "nothing reached the origin")
    r = al.raw(b"GET http://upstream.test:%d/public/resp/te-tab HTTP/1.1\r\nHost: upstream.test\r\n\r\n"
               % o.port)
    expect_error(r, 502, "upstream_transfer_coding")


@test
def test_interim_answers_not_to_http10_clients(t):
    """A 1xx (an origin's unprompted 103 Early Hints: airlock always speaks
    HTTP/1.1 upstream) never reaches an HTTP/1.0 client, which would read it
    as the final answer (RFC 9110 15.2); an HTTP/1.1 client gets it."""
    o = origin(t)
    al = start(t)
    c = t.conn(al.port)
    c.send(b"GET http://upstream.test:%d/public/resp/early-hints HTTP/1.0\r\n\r\n" % o.port)
    r = c.read_response(interim=True)
    eq((r.status, r.body), (200, b"ok"), "HTTP/1.0 client: the first answer it reads")
    c = t.conn(al.port)
    c.send(b"GET http://upstream.test:%d/public/resp/early-hints HTTP/1.1\r\nHost: x\r\n\r\n"
           % o.port)
    r = c.read_response(interim=True)
    eq(r.status, 103, "HTTP/1.1 client: the 103 first")
    eq((c.read_response().status), 200, "then the 200")


@test
def test_h2c_upgrade_does_not_wedge(t):
    """Upgrade: h2c is not performed: stripped (with HTTP2-Settings), the
    request answered, and the pipelined request after it answered too."""
    o = origin(t)
    al = start(t)
    c = t.conn(al.port)
    c.send(b"GET http://upstream.test:%d/public/one HTTP/1.1\r\nHost: upstream.test\r\n"
           b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
           b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
           b"GET http://upstream.test:%d/public/two HTTP/1.1\r\nHost: upstream.test\r\n\r\n"
           % (o.port, o.port))
    r1 = c.read_response()
    r2 = c.read_response()
    eq((r1.status, r1.body), (200, b"ok GET /public/one\n"), "first response")
    eq((r2.status, r2.body), (200, b"ok GET /public/two\n"), "pipelined response")
    reqs = o.requests()
    eq(o.lines(), ["GET /public/one", "GET /public/two"], "origin log")
    names = [k.lower() for k, _ in reqs[0]["headers"]]
    check("upgrade" not in names and "http2-settings" not in names,
          "upgrade headers forwarded: %r" % reqs[0]["headers"])
    c.send(b"GET http://upstream.test:%d/public/three HTTP/1.1\r\nHost: upstream.test\r\n\r\n"
           % o.port)
    eq(c.read_response().status, 200, "the connection goes on")
    eq(len(wait_until(lambda: [r for r in rows(al) if r["status"] == 200] if
                      len(rows(al)) >= 3 else None, 5, "three rows")), 3, "rows")


@test
def test_refused_websocket_upgrade_closes(t):
    """A websocket upgrade answered without 101: the connection ends after
    the answer (the client asked for another protocol) instead of hanging."""
    o = origin(t)
    al = start(t)
    c = t.conn(al.port, timeout=5)
    c.send(b"GET http://upstream.test:%d/public/ws-refuse HTTP/1.1\r\nHost: upstream.test\r\n"
           b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n" % o.port)
    r = c.read_response()
    eq(r.status, 403, "refused upgrade status")
    eq((r.header("Connection") or "").lower(), "close", "Connection header")
    c.wait_closed(5)


altest.main()
