#!/usr/bin/env python3
"""Core forward-proxy suite (issue 2): HTTP absolute-form and CONNECT through
airlock with real curl and raw sockets, against local upstreams.

    python3 tests/integration/test_core.py --airlock build/proxy/airlock [-k NAME]
"""

import json
import os
import signal
import socket
import sqlite3
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import altest  # noqa: E402
from altest import (KiB, MiB, check, eq, expect_error, pattern, pattern_sha256,  # noqa: E402
                    sha256, test, wait_until)


def url(up, path, host="upstream.test"):
    return "http://%s:%d%s" % (host, up.port, path)


def req(up, path, method="GET", headers=(), body=b"", host="upstream.test", version="HTTP/1.1"):
    """An absolute-form request to the upstream through the proxy, as bytes."""
    auth = "%s:%d" % (host, up.port)
    lines = ["%s http://%s%s %s" % (method, auth, path, version), "Host: " + auth]
    lines += ["%s: %s" % kv for kv in headers]
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def up_headers(rec):
    return [(k, v) for k, v in rec["headers"]]


def curl_ok(r, what):
    if r.rc != 0 or r.status != 200:
        raise altest.TestFailure("%s: %r" % (what, r))


# ---------------------------------------------------------------------------
# plain HTTP through the forward listener


@test
def test_get_small(t):
    up = t.upstream()
    al = t.airlock()
    r = al.curl([url(up, "/bytes/1000")])
    curl_ok(r, "GET /bytes/1000")
    check(r.body == pattern(1000), "body differs from the upstream's")
    r = al.curl([url(up, "/echo?a=1&b=two")])
    curl_ok(r, "GET /echo")
    j = json.loads(r.body)
    eq(j["requestline"], "GET /echo?a=1&b=two HTTP/1.1", "request line at the upstream")
    eq([v for k, v in j["headers"] if k.lower() == "host"], ["upstream.test:%d" % up.port],
       "Host at the upstream")


@test
def test_get_10mib(t):
    up = t.upstream()
    al = t.airlock()
    n = 10 * MiB
    r = al.curl([url(up, "/bytes/%d" % n)])
    curl_ok(r, "GET 10 MiB")
    eq(len(r.body), n, "body length")
    check(sha256(r.body) == pattern_sha256(n), "10 MiB body is not byte-exact")


@test
def test_head(t):
    up = t.upstream()
    al = t.airlock()
    r = al.curl(["-I", url(up, "/head")])
    curl_ok(r, "curl -I")
    eq(r.header("Content-Length"), "1234", "Content-Length of HEAD answer")
    c = t.conn(al.port)
    c.send(req(up, "/head", "HEAD"))
    r = c.read_response("HEAD")
    eq(r.status, 200, "HEAD status")
    eq(r.header("Content-Length"), "1234", "HEAD Content-Length")
    # the proxy must not wait for (or invent) a body: the next request on the
    # same connection gets its own answer
    c.send(req(up, "/bytes/77"))
    r = c.read_response()
    eq(r.status, 200, "GET after HEAD status")
    check(r.body == pattern(77), "GET after HEAD: wrong body %r" % r.body[:40])


@test
def test_status_204_304(t):
    up = t.upstream()
    al = t.airlock()
    r = al.curl([url(up, "/status/204")])
    eq((r.rc, r.status, r.body), (0, 204, b""), "curl 204")
    c = t.conn(al.port)
    for code in (204, 304):
        c.send(req(up, "/status/%d" % code))
        r = c.read_response()
        eq(r.status, code, "status")
        c.send(req(up, "/bytes/31"))
        r = c.read_response()
        check(r.status == 200 and r.body == pattern(31),
              "request after %d on the same connection: %r" % (code, r))


@test
def test_chunked_response(t):
    up = t.upstream()
    al = t.airlock()
    n = 300000
    r = al.curl([url(up, "/chunked/%d" % n)])
    curl_ok(r, "GET chunked")
    check(r.body == pattern(n), "chunked body not byte-exact (len %d)" % len(r.body))
    c = t.conn(al.port)
    c.send(req(up, "/chunked/10000"))
    r = c.read_response()
    check(r.status == 200 and r.body == pattern(10000), "raw chunked: %r" % r)
    c.send(req(up, "/bytes/5"))
    r = c.read_response()
    check(r.status == 200 and r.body == pattern(5), "keep-alive after chunked: %r" % r)


@test
def test_close_delimited_response(t):
    up = t.upstream()
    al = t.airlock()
    n = 300000
    r = al.curl([url(up, "/close/%d" % n)])
    curl_ok(r, "GET close-delimited")
    check(r.body == pattern(n), "close-delimited body not byte-exact (len %d)" % len(r.body))
    c = t.conn(al.port)
    c.send(req(up, "/close/5000"))
    r = c.read_response()  # either re-framed (chunked) or closed after the body
    check(r.status == 200 and r.body == pattern(5000), "raw close-delimited: %r" % r)


@test
def test_post_content_length(t):
    up = t.upstream()
    al = t.airlock()
    data = pattern(1 * MiB + 3)
    p = t.file("up.bin", data)
    r = al.curl(["--data-binary", "@" + p, "-H", "Content-Type: application/octet-stream",
                 url(up, "/upload")])
    curl_ok(r, "POST")
    j = json.loads(r.body)
    eq((j["len"], j["sha256"]), (len(data), sha256(data)), "upload as seen by the upstream")
    rec = up.find("/upload")[-1]
    eq(rec["method"], "POST", "method at upstream")
    eq([v for k, v in rec["headers"] if k.lower() == "content-length"], [str(len(data))],
       "Content-Length at upstream")


@test
def test_post_10mib(t):
    up = t.upstream()
    al = t.airlock()
    data = pattern(10 * MiB)
    p = t.file("up.bin", data)
    r = al.curl(["-X", "PUT", "--data-binary", "@" + p, url(up, "/upload")])
    curl_ok(r, "PUT 10 MiB")
    j = json.loads(r.body)
    eq((j["len"], j["sha256"]), (len(data), sha256(data)), "10 MiB upload at the upstream")


@test
def test_post_chunked(t):
    up = t.upstream()
    al = t.airlock()
    data = pattern(700001)
    p = t.file("up.bin", data)
    r = al.curl(["-H", "Transfer-Encoding: chunked", "--data-binary", "@" + p,
                 url(up, "/upload")])
    curl_ok(r, "chunked POST")
    rec = up.find("/upload")[-1]
    eq((rec["body_len"], rec["body_sha256"]), (len(data), sha256(data)),
       "chunked upload at the upstream")
    # raw: chunks of odd sizes, a chunk extension and a trailer
    body = b"5;ext=1\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\nX-Trailer: t\r\n\r\n"
    c = t.conn(al.port)
    c.send(req(up, "/upload", "POST", headers=[("Transfer-Encoding", "chunked")]) + body)
    r = c.read_response()
    eq(r.status, 200, "raw chunked POST status")
    j = json.loads(r.body)
    eq((j["len"], j["sha256"]), (12, sha256(b"hello world!")), "raw chunked body at upstream")


@test
def test_expect_100_continue(t):
    up = t.upstream()
    al = t.airlock()
    data = pattern(200000)
    p = t.file("up.bin", data)
    r = al.curl(["-H", "Expect: 100-continue", "--expect100-timeout", "6",
                 "--data-binary", "@" + p, url(up, "/upload")])
    curl_ok(r, "POST with Expect")
    j = json.loads(r.body)
    eq((j["len"], j["sha256"]), (len(data), sha256(data)), "upload at the upstream")
    check(r.elapsed < 5, "took %.1fs: no 100 Continue reached curl (it waited out "
          "--expect100-timeout)" % r.elapsed)
    # raw: the client must see a 100 before it sends the body
    c = t.conn(al.port, timeout=5)
    c.send(req(up, "/upload", "POST", headers=[("Content-Length", "5"),
                                                ("Expect", "100-continue")]))
    r = c.read_response(interim=True)
    eq(r.status, 100, "interim answer to Expect: 100-continue")
    c.send(b"abcde")
    r = c.read_response()
    eq(r.status, 200, "final status")
    eq(json.loads(r.body)["len"], 5, "body length at upstream")


@test
def test_hop_by_hop_stripped(t):
    up = t.upstream()
    al = t.airlock()
    hdrs = [("X-First", "1"),
            ("Proxy-Connection", "keep-alive"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Trailer", "X-Trail"),
            ("Upgrade", "h2c"),
            ("Connection", "X-Foo, x-bar"),
            ("X-Foo", "1"),
            ("X-Middle", "a"),
            ("X-Bar", "2"),
            ("X-Dup", "one"),
            ("User-Agent", "altest"),
            ("X-Dup", "two"),
            ("Accept", "*/*"),
            ("X-Last", "z")]
    c = t.conn(al.port)
    c.send(req(up, "/echo", headers=hdrs))
    r = c.read_response()
    eq(r.status, 200, "status")
    rec = up.find("/echo")[-1]
    eq(rec["requestline"], "GET /echo HTTP/1.1", "request line at the upstream (origin-form)")
    got = up_headers(rec)
    names = [k.lower() for k, _ in got]
    bad = [n for n in names if n in ("proxy-connection", "proxy-authorization", "keep-alive",
                                     "te", "trailer", "upgrade", "x-foo", "x-bar")]
    check(not bad, "hop-by-hop headers reached the upstream: %s (all: %s)" % (bad, got))
    conn_vals = [v.lower() for k, v in got if k.lower() == "connection"]
    check(all("x-foo" not in v and "x-bar" not in v for v in conn_vals),
          "Connection header still names X-Foo: %s" % conn_vals)
    kept = [(k.lower(), v) for k, v in got
            if k.lower() in ("x-first", "x-middle", "x-dup", "user-agent", "accept", "x-last")]
    eq(kept, [("x-first", "1"), ("x-middle", "a"), ("x-dup", "one"), ("user-agent", "altest"),
              ("x-dup", "two"), ("accept", "*/*"), ("x-last", "z")],
       "end-to-end headers at the upstream (order)")
    eq(names.count("host"), 1, "Host headers at upstream")


@test
def test_proxy_authorization_stripped(t):
    """A sandbox's credentials identify it to airlock and never reach the upstream."""
    import base64
    import hashlib
    up = t.upstream()
    token = "t0ken-for-altest"
    al = t.airlock(config={"sandboxes": [
        {"name": "sbx", "token_sha256": hashlib.sha256(token.encode()).hexdigest()}]})
    cred = base64.b64encode(b"sbx:" + token.encode()).decode()
    c = t.conn(al.port)
    c.send(req(up, "/echo", headers=[("X-A", "1"), ("Proxy-Authorization", "Basic " + cred),
                                     ("X-B", "2")]))
    r = c.read_response()
    eq(r.status, 200, "status with a valid sandbox credential (reason %r)" %
       r.header("X-Airlock-Reason"))
    rec = up.find("/echo")[-1]
    check(token not in rec["raw_head"] and cred not in rec["raw_head"],
          "the sandbox credential reached the upstream: %r" % rec["raw_head"])
    names = [k.lower() for k, _ in rec["headers"]]
    check("proxy-authorization" not in names, "Proxy-Authorization reached the upstream")
    r = al.curl(["-U", "sbx:" + token, url(up, "/echo")])
    curl_ok(r, "curl -U sandbox credential")
    check(token not in up.find("/echo")[-1]["raw_head"], "credential at upstream (curl -U)")


@test
def test_hop_by_hop_curl(t):
    up = t.upstream()
    al = t.airlock()
    r = al.curl(["-H", "Connection: X-Foo", "-H", "X-Foo: 1", "-H", "X-Keep: 2",
                 "-H", "Proxy-Connection: keep-alive", url(up, "/echo")])
    curl_ok(r, "curl")
    j = json.loads(r.body)
    names = [k.lower() for k, _ in j["headers"]]
    check("x-foo" not in names, "X-Foo (named by Connection) reached the upstream: %s" % names)
    check("proxy-connection" not in names, "Proxy-Connection reached the upstream")
    check("x-keep" in names, "X-Keep was dropped: %s" % names)
    eq(j["path"], "/echo", "origin-form path")


@test
def test_hop_by_hop_response(t):
    up = t.upstream()
    al = t.airlock()
    q = ("X-Begin=1&Connection=X-Secret&X-Secret=s&Keep-Alive=timeout%3D5&"
         "Proxy-Connection=keep-alive&Trailer=X-T&Upgrade=h2c&X-Dup=a&X-Dup=b&X-End=z")
    c = t.conn(al.port)
    c.send(req(up, "/respheaders?" + q))
    r = c.read_response()
    eq(r.status, 200, "status")
    names = [k.lower() for k, _ in r.headers]
    bad = [n for n in names if n in ("x-secret", "keep-alive", "proxy-connection", "trailer",
                                     "upgrade")]
    check(not bad, "hop-by-hop response headers reached the client: %s (all: %s)" %
          (bad, r.headers))
    kept = [(k.lower(), v) for k, v in r.headers if k.lower() in ("x-begin", "x-dup", "x-end")]
    eq(kept, [("x-begin", "1"), ("x-dup", "a"), ("x-dup", "b"), ("x-end", "z")],
       "end-to-end response headers (order)")
    eq(r.body, b"hdrs\n", "body")
    c.send(req(up, "/bytes/9"))
    r = c.read_response()
    check(r.status == 200 and r.body == pattern(9), "keep-alive after it: %r" % r)


@test
def test_keepalive_client_reuse(t):
    up = t.upstream()
    al = t.airlock()
    urls = [url(up, "/echo?i=%d" % i) for i in range(3)]
    args = ["-x", al.proxy, "-w", "%{http_code} %{num_connects}\\n"]
    for u in urls:
        args += ["-o", "/dev/null", u]
    rc, out, err = altest.curl_run(args)
    eq(rc, 0, "curl rc (%s)" % err.strip())
    lines = out.decode().split()
    eq(lines, ["200", "1", "200", "0", "200", "0"],
       "curl status / new connections per transfer (client side keep-alive)")
    recs = up.find("/echo")
    eq(len(recs), 3, "requests at the upstream")
    eq(up.connections, 1, "upstream TCP connections for 3 keep-alive requests")


@test
def test_pool_reuse_across_clients(t):
    up = t.upstream()
    al = t.airlock(workers=1)
    m0 = al.metrics()
    for i in range(3):
        r = al.curl([url(up, "/bytes/%d" % (1000 + i))])
        curl_ok(r, "curl #%d" % i)
        check(r.body == pattern(1000 + i), "body #%d" % i)
    eq(up.connections, 1, "upstream connections for 3 sequential clients (pool per worker)")
    m1 = al.metrics()
    d = m1.need("airlock_pool_hits_total") - (m0.get("airlock_pool_hits_total") or 0)
    check(d >= 2, "airlock_pool_hits_total moved by %g, want >= 2" % d)


@test
def test_kept_upstream_switch_and_drop(t):
    """A client connection keeps its upstream between requests: a request to
    another destination parks it in the worker's pool (and the way back takes
    it from there), and one the origin closes while idle is dropped, the next
    request opening a new connection rather than failing."""
    up1 = t.upstream()
    up2 = t.upstream()
    al = t.airlock(workers=1)
    c = t.conn(al.port)
    for i, u in enumerate((up1, up2, up1, up1)):
        c.send(req(u, "/bytes/%d" % (10 + i)))
        r = c.read_response()
        check(r.status == 200 and r.body == pattern(10 + i), "request %d: %r" % (i, r))
    eq(up1.connections, 1, "connections to the first upstream (parked, then taken back)")
    eq(up2.connections, 1, "connections to the second upstream")
    c.send(req(up1, "/quietclose/7"))
    r = c.read_response()
    check(r.status == 200 and r.body == pattern(7), "response before the origin's close: %r" % r)
    # Sent at once: airlock either saw the FIN already (the kept upstream is
    # dropped) or the request races it (replayed once on a fresh connection).
    c.send(req(up1, "/bytes/20"))
    r = c.read_response()
    check(r.status == 200 and r.body == pattern(20), "request after the origin closed: %r" % r)
    eq(up1.connections, 2, "connections to the first upstream after its close")
    check(up1.requests[-1]["conn"] != up1.requests[0]["conn"],
          "the last request went over the new connection")


@test
def test_pipelining(t):
    up = t.upstream()
    al = t.airlock()
    data = req(up, "/bytes/10") + req(up, "/echo?n=2") + req(up, "/chunked/5000") + \
        req(up, "/head", "HEAD") + req(up, "/upload", "POST", body=b"xyz")
    rs = al.raw(data, n=5, method=["GET", "GET", "GET", "HEAD", "POST"])
    eq([r.status for r in rs], [200] * 5, "statuses")
    check(rs[0].body == pattern(10), "response 1 body")
    eq(json.loads(rs[1].body)["path"], "/echo?n=2", "response 2 is /echo?n=2")
    check(rs[2].body == pattern(5000), "response 3 body")
    eq(rs[3].header("Content-Length"), "1234", "response 4 (HEAD)")
    eq(json.loads(rs[4].body)["len"], 3, "response 5 (POST)")
    eq([r["path"] for r in up.requests],
       ["/bytes/10", "/echo?n=2", "/chunked/5000", "/head", "/upload"], "upstream order")


@test
def test_half_close_after_request(t):
    """A client that shuts down writing right after its request (the watcher
    stays on during the response) still gets the whole answer, then EOF; so
    do requests it pipelined before the FIN."""
    up = t.upstream()
    al = t.airlock()
    c = t.conn(al.port)
    c.send(req(up, "/slow/200000?rate=400000"))
    c.sock.shutdown(socket.SHUT_WR)
    r = c.read_response()
    check(r.status == 200 and r.body == pattern(200000), "response after half-close: %r" % r)
    check(c.wait_closed(3), "proxy kept the connection open after the client's FIN")
    c = t.conn(al.port)
    c.send(req(up, "/slow/100000?rate=400000") + req(up, "/bytes/10"))
    time.sleep(0.05)
    c.sock.shutdown(socket.SHUT_WR)
    r1 = c.read_response()
    r2 = c.read_response()
    check(r1.status == 200 and r1.body == pattern(100000), "pipelined response 1: %r" % r1)
    check(r2.status == 200 and r2.body == pattern(10), "pipelined response 2: %r" % r2)
    check(c.wait_closed(3), "proxy kept the connection open after the pipelined answers")
    c = t.conn(al.port)
    c.send(req(up, "/slow/100000?rate=400000") + b"GET http://upstream.test")
    time.sleep(0.05)
    c.sock.shutdown(socket.SHUT_WR)
    r1 = c.read_response()
    check(r1.status == 200, "response before the cut head: %r" % r1)
    r2 = c.read_response()
    eq(r2.status, 400, "an incomplete head after the FIN")


@test
def test_client_connection_close(t):
    up = t.upstream()
    al = t.airlock()
    c = t.conn(al.port)
    c.send(req(up, "/bytes/100", headers=[("Connection", "close")]))
    r = c.read_response()
    check(r.status == 200 and r.body == pattern(100), "Connection: close request: %r" % r)
    check(c.wait_closed(3), "proxy kept the connection open after Connection: close")
    c = t.conn(al.port)
    c.send(req(up, "/bytes/100", version="HTTP/1.0"))
    r = c.read_response()
    check(r.status == 200 and r.body == pattern(100), "HTTP/1.0 request: %r" % r)
    check(c.wait_closed(3), "proxy kept an HTTP/1.0 connection open (no keep-alive asked)")


@test
def test_streaming_not_buffered(t):
    up = t.upstream()
    al = t.airlock()
    n = 200000
    r = al.curl([url(up, "/slow/%d?rate=100000" % n)], write_out="%{time_starttransfer}")
    curl_ok(r, "slow GET")
    check(r.body == pattern(n), "slow body not byte-exact")
    ttfb = float(r.stdout.split()[1])
    check(ttfb < 1.0, "first byte after %.2fs of a ~2s body: the proxy buffers the body" % ttfb)


@test
def test_concurrent_downloads(t):
    up = t.upstream()
    tup = t.upstream(tls=True)
    al = t.airlock()
    n = 2 * MiB
    procs = []
    for i in range(8):
        out = os.path.join(t.tmp, "dl%d" % i)
        if i % 4 == 3:
            args = ["-x", al.proxy, "--cacert", t.ca,
                    "https://localhost:%d/bytes/%d" % (tup.port, n + i)]
        else:
            args = ["-x", al.proxy, url(up, "/bytes/%d" % (n + i))]
        procs.append((i, out, t.popen(altest.curl_popen(args, out))))
    want = {}
    for i, out, p in procs:
        rc = p.wait(60)
        err = p.stderr.read().decode(errors="replace")
        eq(rc, 0, "curl #%d rc (%s)" % (i, err.strip()))
        with open(out, "rb") as fh:
            got = fh.read()
        if n + i not in want:
            want[n + i] = pattern_sha256(n + i)
        check(len(got) == n + i and sha256(got) == want[n + i], "download #%d not byte-exact" % i)


@test
def test_backpressure_download(t):
    up = t.upstream()
    al = t.airlock(workers=1)
    rss0 = altest.rss_kib(al.pid)
    total = 256 * MiB
    c = t.conn(al.port, timeout=10)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
    c.send(req(up, "/bytes/%d" % total))
    wait_until(lambda: up.bytes_sent > 0, 5, "the upstream to start sending")
    # poll until the upstream has stopped making progress (the client reads
    # nothing, so a proxy with backpressure stalls it)
    hist = []

    def stalled():
        hist.append(up.bytes_sent)
        return len(hist) > 10 and hist[-1] == hist[-10]
    wait_until(stalled, 15, "the upstream to stall", interval=0.05)
    sent = up.bytes_sent
    grew = altest.rss_kib(al.pid) - rss0
    check(sent < 128 * MiB, "upstream sent %d MiB into a client that reads nothing" %
          (sent // MiB))
    check(grew < 64 * 1024, "airlock RSS grew by %d MiB while the client read nothing" %
          (grew // 1024))
    head = c.read_some(1 * MiB)
    check(head.startswith(b"HTTP/1.1 200"), "status line: %r" % head[:40])


# ---------------------------------------------------------------------------
# CONNECT


@test
def test_connect_https(t):
    up = t.upstream(tls=True)
    al = t.airlock()
    r = al.curl(["--cacert", t.ca, "https://localhost:%d/echo?x=1" % up.port])
    curl_ok(r, "CONNECT localhost")
    eq(json.loads(r.body)["path"], "/echo?x=1", "path at upstream")
    check(r.heads and r.heads[0][0].startswith("HTTP/1.1 200"),
          "first head: %r" % (r.heads[0][0] if r.heads else None))
    r = al.curl(["--cacert", t.ca, "https://upstream.test:%d/bytes/1000" % up.port])
    curl_ok(r, "CONNECT upstream.test (pinned by resolve)")
    check(r.body == pattern(1000), "body via upstream.test")


@test
def test_connect_10mib(t):
    up = t.upstream(tls=True)
    al = t.airlock()
    n = 10 * MiB
    r = al.curl(["--cacert", t.ca, "https://localhost:%d/bytes/%d" % (up.port, n)])
    curl_ok(r, "CONNECT 10 MiB")
    check(len(r.body) == n and sha256(r.body) == pattern_sha256(n),
          "10 MiB through the tunnel not byte-exact (len %d)" % len(r.body))
    data = pattern(3 * MiB + 1)
    p = t.file("up.bin", data)
    r = al.curl(["--cacert", t.ca, "--data-binary", "@" + p,
                 "https://localhost:%d/upload" % up.port])
    curl_ok(r, "CONNECT upload")
    j = json.loads(r.body)
    eq((j["len"], j["sha256"]), (len(data), sha256(data)), "upload through the tunnel")


@test
def test_connect_raw_tunnel(t):
    up = t.upstream(tls=True)
    al = t.airlock()
    c = t.conn(al.port)
    c.send(b"CONNECT localhost:%d HTTP/1.1\r\nHost: localhost:%d\r\n\r\n" % (up.port, up.port))
    version, status, reason, headers, raw = c.read_head()
    first = raw.split(b"\r\n")[0]
    eq(first, b"HTTP/1.1 200 Connection established", "CONNECT status line")
    check(not c.buf, "bytes after the CONNECT answer: %r" % c.buf[:50])
    s = t.run.client_ctx().wrap_socket(c.sock, server_hostname="localhost")
    tc = altest.Conn(0, sock=s)
    for i in range(2):
        tc.send(b"GET /bytes/%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % (5000 + i))
        r = tc.read_response()
        check(r.status == 200 and r.body == pattern(5000 + i), "request %d in tunnel: %r" % (i, r))


@test
def test_connect_half_close(t):
    e = t.eof_echo()
    al = t.airlock()
    c = t.conn(al.port)
    c.send(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (e.port, e.port))
    r = c.read_response("CONNECT")
    eq(r.status, 200, "CONNECT status")
    data = pattern(300000)
    c.send(data)
    c.sock.shutdown(socket.SHUT_WR)
    got = c.read_all()
    eq(got, b"got %d %s\n" % (len(data), sha256(data).encode()),
       "reply after half-close (the proxy must pass the FIN and keep reading)")


@test
def test_connect_early_data(t):
    """Bytes sent in the same write as the CONNECT head belong to the tunnel."""
    e = t.eof_echo()
    al = t.airlock()
    c = t.conn(al.port)
    data = pattern(1000)
    c.send(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (e.port, e.port) +
           data)
    r = c.read_response("CONNECT")
    eq(r.status, 200, "CONNECT status")
    c.sock.shutdown(socket.SHUT_WR)
    got = c.read_all()
    eq(got, b"got %d %s\n" % (len(data), sha256(data).encode()),
       "bytes that followed the CONNECT head in one write")


# ---------------------------------------------------------------------------
# names and addresses


@test
def test_dns_resolves_via_server(t):
    up = t.upstream()
    al = t.airlock()
    r = al.curl([url(up, "/echo", host="viadns.test")])
    curl_ok(r, "GET via the DNS stub")
    check(any(q[0].rstrip(".") == "viadns.test" for q in t.run.dns.queries),
          "the DNS stub never saw viadns.test")


@test
def test_ipv6_upstream(t):
    try:
        up = t.upstream(host="::1")
    except OSError as e:
        raise altest.TestFailure("environment: cannot bind ::1 (%s)" % e)
    al = t.airlock()
    r = al.curl(["http://[::1]:%d/echo" % up.port])
    curl_ok(r, "GET http://[::1]:port/")
    eq(json.loads(r.body)["path"], "/echo", "path")


# ---------------------------------------------------------------------------
# errors


@test
def test_err_upstream_refused(t):
    al = t.airlock()
    port = altest.closed_port()
    r = al.curl(["http://upstream.test:%d/x" % port])
    expect_error(r, 502, "upstream_refused")
    check(r.body, "error answer without a body")
    r = al.raw(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (port, port),
               method="CONNECT")
    expect_error(r, 502, "upstream_refused")


@test
def test_err_dns_not_found(t):
    al = t.airlock()
    r = al.curl(["http://nosuch.invalid/x"])
    expect_error(r, 502, "dns_not_found")
    check(r.elapsed < 5, "took %.1fs" % r.elapsed)
    r = al.raw(b"CONNECT nosuch.invalid:443 HTTP/1.1\r\nHost: nosuch.invalid:443\r\n\r\n",
               method="CONNECT")
    expect_error(r, 502, "dns_not_found")


@test
def test_err_connect_timeout(t):
    b = t.blackhole()
    check(b.works, "environment: could not build a loopback blackhole")
    al = t.airlock(limits={"connect_timeout_s": 1})
    r = al.curl(["http://127.0.0.1:%d/x" % b.port], timeout=20)
    expect_error(r, 504, "connect_timeout")
    check(r.elapsed < 3, "504 after %.1fs with connect_timeout_s 1" % r.elapsed)


@test
def test_err_upstream_reset(t):
    up = t.upstream()
    al = t.airlock()
    for path in ("/reset", "/nothing"):
        r = al.curl([url(up, path)])
        eq(r.status, 502, "status for %s (%r)" % (path, r))
        check(r.header("X-Airlock-Reason"), "no X-Airlock-Reason on the 502 for %s" % path)
    r = al.curl([url(up, "/bytes/10")])
    curl_ok(r, "request after the errors")


@test
def test_err_upstream_bad_response(t):
    up = t.upstream()
    al = t.airlock()
    r = al.curl([url(up, "/badresp")])
    eq(r.status, 502, "status for a malformed upstream status line (%r)" % r)
    check(r.header("X-Airlock-Reason"), "no X-Airlock-Reason on the 502")
    check(b"ok" != r.body, "the malformed response's body reached the client")


def _bad(al, data, status, reason, what):
    c = altest.Conn(al.port, timeout=5)
    try:
        try:
            c.send(data)
        except OSError:
            pass
        try:
            r = c.read_response()
        except (altest.TestFailure, OSError) as e:
            raise altest.TestFailure("%s: no answer (%s)" % (what, e))
        if r.status != status or (reason and r.header("X-Airlock-Reason") != reason) or \
                not r.header("X-Airlock-Reason"):
            raise altest.TestFailure("%s: want %d %s, got %d X-Airlock-Reason=%r" %
                                     (what, status, reason or "<any>", r.status,
                                      r.header("X-Airlock-Reason")))
        check(r.body, "%s: error answer without a body" % what)
        check(c.wait_closed(3), "%s: connection not closed after the error" % what)
    finally:
        c.close()


@test
def test_err_malformed_cl_te(t):
    up = t.upstream()
    al = t.airlock()
    h = "upstream.test:%d" % up.port
    _bad(al, ("GET http://%s/echo HTTP/1.1\r\nHost: %s\r\nContent-Length: 1\r\n"
              "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" % (h, h)).encode(),
         400, "bad_request", "CL+TE")
    check(not up.requests, "the CL+TE request reached the upstream")


@test
def test_err_obs_fold(t):
    up = t.upstream()
    al = t.airlock()
    h = "upstream.test:%d" % up.port
    _bad(al, ("GET http://%s/echo HTTP/1.1\r\nHost: %s\r\nX-A: 1\r\n  folded\r\n\r\n" %
              (h, h)).encode(), 400, "bad_request", "obs-fold")
    check(not up.requests, "the obs-fold request reached the upstream")


@test
def test_err_bad_request_line(t):
    up = t.upstream()
    al = t.airlock()
    h = "upstream.test:%d" % up.port
    cases = [
        (b"GARBAGE\r\n\r\n", "garbage line"),
        (("GET http://%s/ HTTP/1.1 x\r\nHost: %s\r\n\r\n" % (h, h)).encode(), "trailing junk"),
        (("G\x00T http://%s/ HTTP/1.1\r\nHost: %s\r\n\r\n" % (h, h)).encode(), "NUL in method"),
    ]
    for data, what in cases:
        _bad(al, data, 400, "bad_request", what)
    check(not up.requests, "a malformed request reached the upstream")


@test
def test_err_smuggling_shapes(t):
    up = t.upstream()
    al = t.airlock()
    h = "upstream.test:%d" % up.port
    _bad(al, ("POST http://%s/upload HTTP/1.1\r\nHost: %s\r\nContent-Length: 3\r\n"
              "Content-Length: 4\r\n\r\nabcd" % (h, h)).encode(), 400, None, "duplicate CL")
    _bad(al, ("GET http://%s/echo HTTP/1.1\r\nHost: %s\r\nX-A: a\x00b\r\n\r\n" %
              (h, h)).encode(), 400, None, "NUL in header value")
    for bad, what in (("X A: b", "space in header name"),
                      ("X-A : b", "space before colon (RFC 9112 5.1: MUST 400)"),
                      ("X-A\t: b", "tab before colon")):
        try:
            _bad(al, ("GET http://%s/echo HTTP/1.1\r\nHost: %s\r\n%s\r\n\r\n" %
                      (h, h, bad)).encode(), 400, None, what)
        except altest.TestFailure as e:
            fwd = [r["raw_head"] for r in up.requests]
            raise altest.TestFailure("%s; upstream received %r" % (e, fwd))
    check(not up.requests, "a smuggling-shaped request reached the upstream: %s" %
          [r["raw_head"] for r in up.requests])
    _bad(al, ("POST http://%s/upload HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
              "zz\r\nabc\r\n0\r\n\r\n" % (h, h)).encode(), 400, None, "bad chunk size")


@test
def test_err_header_too_large(t):
    up = t.upstream()
    al = t.airlock(limits={"header_bytes": 65536})
    h = "upstream.test:%d" % up.port
    big = "a" * (70 * KiB)
    _bad(al, ("GET http://%s/echo HTTP/1.1\r\nHost: %s\r\nX-Big: %s\r\n\r\n" %
              (h, h, big)).encode(), 431, "header_too_large", "70 KiB head")
    r = al.curl([url(up, "/echo")], )
    curl_ok(r, "normal request afterwards")
    r = al.curl(["-H", "X-Near: " + "b" * (60 * KiB), url(up, "/echo")])
    curl_ok(r, "a 60 KiB head (under header_bytes 65536)")
    rec = up.find("/echo")[-1]
    eq(len([v for k, v in rec["headers"] if k == "X-Near"][0]), 60 * KiB, "X-Near at upstream")


@test
def test_err_max_connections(t):
    up = t.upstream()
    al = t.airlock(limits={"max_connections": 2})
    # Accepted connections, as airlock counts them against the limit (an fd
    # count also sees the address guard's transient netlink socket).
    def conns_open():
        return al.metrics().need("airlock_connections_open")

    c1 = t.conn(al.port)
    c2 = t.conn(al.port)
    wait_until(lambda: conns_open() >= 2, 5, "airlock to accept two connections")
    c3 = t.conn(al.port, timeout=5)
    try:
        r = c3.read_response()
    except (altest.TestFailure, OSError) as e:
        raise altest.TestFailure("third connection got no 503 answer (%s)" % e)
    expect_error(r, 503, "too_many_connections")
    check(c3.wait_closed(3), "third connection not closed after its 503")
    c1.close()
    wait_until(lambda: conns_open() <= 1, 5, "airlock to drop the closed connection")
    c4 = t.conn(al.port)
    c4.send(req(up, "/bytes/10"))
    r = c4.read_response()
    check(r.status == 200 and r.body == pattern(10), "request after a slot freed: %r" % r)
    c2.send(req(up, "/bytes/11"))
    r = c2.read_response()
    check(r.status == 200, "request on an early idle connection: %r" % r)


@test
def test_err_header_timeout(t):
    up = t.upstream()
    al = t.airlock(limits={"header_timeout_s": 1})
    c = t.conn(al.port, timeout=6)
    t0 = time.monotonic()
    c.send(("GET http://upstream.test:%d/echo HTTP/1.1\r\nHost: upstr" % up.port).encode())
    try:
        r = c.read_response()
    except (altest.TestFailure, OSError) as e:
        raise altest.TestFailure("no 408 for a slow client after %.1fs (%s)" %
                                 (time.monotonic() - t0, e))
    expect_error(r, 408, "header_timeout")
    check(c.wait_closed(3), "connection not closed after the 408")
    el = time.monotonic() - t0
    check(el < 3.5, "closed after %.1fs with header_timeout_s 1" % el)


@test
def test_err_header_timeout_silent(t):
    al = t.airlock(limits={"header_timeout_s": 1})
    # a connection that never sends a byte is closed too (slowloris)
    c2 = t.conn(al.port, timeout=6)
    check(c2.wait_closed(4), "silent connection still open after 4s with header_timeout_s 1 "
          "(idle_timeout_s is 60)")


@test
def test_idle_timeout(t):
    up = t.upstream()
    al = t.airlock(limits={"idle_timeout_s": 1, "header_timeout_s": 1})
    c = t.conn(al.port)
    c.send(req(up, "/bytes/10"))
    r = c.read_response()
    eq(r.status, 200, "status")
    t0 = time.monotonic()
    check(c.wait_closed(4), "idle keep-alive connection still open after 4s (idle_timeout_s 1)")
    check(time.monotonic() - t0 >= 0.5, "connection closed right after the response "
          "(no client keep-alive?), not by the idle timeout")


@test
def test_body_timeout(t):
    """A request body that stops arriving is the client's stall, not the
    upstream's: 408 body_timeout after idle_timeout_s, audited as such."""
    up = t.upstream()
    al = t.airlock(limits={"idle_timeout_s": 1, "header_timeout_s": 5})
    c = t.conn(al.port, timeout=6)
    c.send(req(up, "/upload", method="POST", headers=[("Content-Length", "1000")]) + b"x" * 10)
    t0 = time.monotonic()
    r = c.read_response()
    expect_error(r, 408, "body_timeout")
    check(time.monotonic() - t0 < 4, "answered after %.1fs (idle_timeout_s 1)" % (time.monotonic() - t0))
    def row():
        db = sqlite3.connect("file:%s?mode=ro" % os.path.join(al.dir, "audit.db"), uri=True, timeout=5)
        try:
            return db.execute("SELECT status, error FROM requests WHERE path = '/upload'").fetchall()
        except sqlite3.OperationalError:
            return None
        finally:
            db.close()
    eq(wait_until(row, 5, "audit row"), [(408, "body_timeout")], "audit row")


@test
def test_err_bad_target(t):
    up = t.upstream()
    al = t.airlock()
    c = t.conn(al.port, timeout=5)
    c.send(b"GET / HTTP/1.1\r\nHost: upstream.test:%d\r\n\r\n" % up.port)
    r = c.read_response()
    expect_error(r, 400, "bad_target")
    check(r.body, "error answer without a body")
    check(not up.requests, "an origin-form request was forwarded")


# ---------------------------------------------------------------------------
# resources and lifecycle


def _fd_settle(al, base, what):
    wait_until(lambda: al.fd_count() <= base, 5,
               "airlock fds back to %d after %s (now %d)" % (base, what, al.fd_count()))


@test
def test_abort_mid_download_no_fd_leak(t):
    up = t.upstream()
    warm = t.upstream()
    al = t.airlock(workers=1)
    r = al.curl([url(warm, "/bytes/100")])  # lazily created resources exist now
    curl_ok(r, "warm-up")
    base = al.fd_count()
    for i in range(3):
        c = altest.Conn(al.port, timeout=10)
        c.send(req(up, "/bytes/%d" % (10 * MiB)))
        got = c.read_some(100 * KiB)
        check(got.startswith(b"HTTP/1.1 200"), "abort #%d: %r" % (i, got[:40]))
        if i == 2:  # last one ends with a RST instead of a FIN
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    _fd_settle(al, base, "3 aborted downloads")
    check(al.alive(), "airlock died")


@test
def test_abort_mid_upload_no_fd_leak(t):
    up = t.upstream()
    warm = t.upstream()
    al = t.airlock(workers=1)
    r = al.curl([url(warm, "/bytes/100")])
    curl_ok(r, "warm-up")
    base = al.fd_count()
    for i in range(3):
        c = altest.Conn(al.port, timeout=10)
        c.send(req(up, "/upload", "POST", headers=[("Content-Length", str(10 * MiB))]))
        c.send(pattern(1 * MiB))
        wait_until(lambda: len(up.started) > i, 5, "the upload to reach the upstream")
        if i == 1:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    _fd_settle(al, base, "3 aborted uploads")
    # the upstream saw truncated bodies, never a complete one
    wait_until(lambda: len(up.find("/upload")) == 3, 5, "the upstream to see 3 ended uploads")
    check(all(r["body_len"] == -1 for r in up.find("/upload")),
          "upstream got a complete body from an aborted upload")


@test
def test_abort_connect_tunnel_no_fd_leak(t):
    up = t.upstream(tls=True)
    al = t.airlock(workers=1)
    base = al.fd_count()
    for i in range(3):
        c = altest.Conn(al.port, timeout=10)
        c.send(b"CONNECT localhost:%d HTTP/1.1\r\nHost: localhost:%d\r\n\r\n" % (up.port, up.port))
        eq(c.read_response("CONNECT").status, 200, "CONNECT")
        s = t.run.client_ctx().wrap_socket(c.sock, server_hostname="localhost")
        s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % (10 * MiB))
        s.recv(10000)
        s.close()
    _fd_settle(al, base, "3 aborted tunnels")


@test
def test_sigterm_drain(t):
    up = t.upstream()
    al = t.airlock(limits={"drain_timeout_s": 10})
    n = 10 * MiB
    out = os.path.join(t.tmp, "dl")
    p = t.popen(altest.curl_popen(["-x", al.proxy, "--limit-rate", "4M",
                                   url(up, "/bytes/%d" % n)], out))
    wait_until(lambda: os.path.exists(out) and os.path.getsize(out) > 256 * KiB, 10,
               "the download to start")
    check(p.poll() is None, "download finished before SIGTERM (make it slower)")
    t0 = time.monotonic()
    al.signal(signal.SIGTERM)
    wait_until(lambda: not altest.can_connect(al.port, timeout=0.3), 3,
               "new connections to be refused after SIGTERM")
    rc = p.wait(30)
    err = p.stderr.read().decode(errors="replace")
    eq(rc, 0, "curl rc during drain (%s)" % err.strip())
    with open(out, "rb") as fh:
        got = fh.read()
    check(len(got) == n and sha256(got) == pattern_sha256(n),
          "download during drain not byte-exact (len %d)" % len(got))
    arc = al.wait(max(0.5, 12 - (time.monotonic() - t0)))
    check(arc is not None, "airlock still running %.1fs after SIGTERM" % (time.monotonic() - t0))
    eq(arc, 0, "airlock exit code after SIGTERM")


@test
def test_sigterm_idle_exits_fast(t):
    up = t.upstream()
    al = t.airlock(limits={"drain_timeout_s": 10})
    c = t.conn(al.port)  # an idle keep-alive client must not hold the drain
    c.send(req(up, "/bytes/10"))
    eq(c.read_response().status, 200, "status")
    t0 = time.monotonic()
    al.signal(signal.SIGTERM)
    rc = al.wait(5)
    check(rc is not None, "airlock not gone 5s after SIGTERM with only an idle client")
    eq(rc, 0, "exit code")
    check(c.wait_closed(2), "idle client connection not closed at exit")


# ---------------------------------------------------------------------------
# admin


@test
def test_admin_healthz(t):
    al = t.airlock()
    st, _, body = altest.http_get_direct(al.admin + "/healthz")
    eq(st, 200, "GET /healthz")
    st, _, _ = altest.http_get_direct(al.admin + "/nope")
    eq(st, 404, "unknown admin path")


@test
def test_admin_metrics(t):
    up = t.upstream()
    al = t.airlock(workers=1)
    m0 = al.metrics()
    for name in ("airlock_connections_open", "airlock_connections_total"):
        check(m0.has(name), "%s missing from /metrics" % name)

    def g(m, name, labels=None):
        return m.get(name, labels) or 0.0
    r = al.curl([url(up, "/bytes/100000")])
    curl_ok(r, "GET 1")
    r = al.curl([url(up, "/bytes/100000")])
    curl_ok(r, "GET 2 (pool hit)")
    data = pattern(50000)
    r = al.curl(["--data-binary", "@" + t.file("u", data), url(up, "/upload")])
    curl_ok(r, "POST")
    r = al.raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    eq(r.status, 400, "origin-form status")
    r = al.curl(["http://upstream.test:%d/" % altest.closed_port()])
    eq(r.status, 502, "refused status")
    m1 = al.metrics()
    checks = [
        ("airlock_connections_total", None, lambda d: d >= 5, ">= 5"),
        ("airlock_requests_total", {"class": "2xx"}, lambda d: d == 3, "== 3"),
        ("airlock_requests_total", {"class": "4xx"}, lambda d: d == 1, "== 1"),
        ("airlock_requests_total", {"class": "5xx"}, lambda d: d == 1, "== 1"),
        ("airlock_bytes_total", {"dir": "down"}, lambda d: d >= 200000, ">= 200000"),
        ("airlock_bytes_total", {"dir": "up"}, lambda d: d >= 50000, ">= 50000"),
        ("airlock_upstream_errors_total", {"kind": "refused"}, lambda d: d == 1, "== 1"),
        ("airlock_pool_hits_total", None, lambda d: d >= 2, ">= 2"),
    ]
    bad = []
    for name, labels, ok, want in checks:
        if m1.get(name, labels) is None:
            bad.append("%s%s missing" % (name, json.dumps(labels) if labels else ""))
            continue
        d = g(m1, name, labels) - g(m0, name, labels)
        if not ok(d):
            bad.append("%s%s moved by %g, want %s" %
                       (name, json.dumps(labels) if labels else "", d, want))
    check(not bad, "; ".join(bad))
    # the clients above are gone; their connections may still be closing
    # (a loaded machine), which would hide the one opened next
    wait_until(lambda: g(al.metrics(), "airlock_connections_open") == 0, 5,
               "airlock_connections_open to settle at 0")
    open0 = 0
    c = t.conn(al.port)
    wait_until(lambda: g(al.metrics(), "airlock_connections_open") >= open0 + 1, 5,
               "airlock_connections_open to count an open client")
    c.close()
    wait_until(lambda: g(al.metrics(), "airlock_connections_open") <= open0, 5,
               "airlock_connections_open to drop back")


if __name__ == "__main__":
    sys.exit(altest.main())
