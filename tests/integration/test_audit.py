#!/usr/bin/env python3
"""Audit suite (issue 4): one sqlite row per request (allowed, denied, failed,
malformed, 407, keep-alive, CONNECT tunnels), tags, batched and strict
durability (SIGTERM after a burst, kill -9 under load), fail closed when the
database cannot be written and recovery, secrets never stored, file modes, and
the `airlock audit query|stats|tail` CLI against the daemon's database.

    python3 tests/integration/test_audit.py --airlock build/proxy/airlock [-k NAME]

The database is read with python's sqlite3 module, opened read-only
(file:...?mode=ro). Every name is pinned to 127.0.0.1 with the config's
"resolve" map (nosuch.invalid goes to the harness's NXDOMAIN DNS stub).
"""

import base64
import csv
import glob
import hashlib
import io
import json
import os
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import altest  # noqa: E402
from altest import check, eq, expect_error, test, wait_until  # noqa: E402

TOKEN = "tok-audit-5f3a9c"
RESOLVE = {"upstream.test": "127.0.0.1", "upstream2.test": "127.0.0.1",
           "denied.test": "127.0.0.1"}
LOOP = ["127.0.0.0/8", "::1/128"]
POLICY = {"default": "deny", "allow_addresses": LOOP,
          "rules": [{"name": "up", "hosts": ["upstream.test", "upstream2.test", "nosuch.invalid"],
                     "action": "allow"}]}
SECRET = "SECRET-VALUE-c0ffee-1234"
COLUMNS = {"id", "ts", "duration_us", "conn_id", "sandbox", "session", "tool_call", "client",
           "mode", "method", "scheme", "host", "port", "path", "upstream", "orig_dst",
           "decision", "rule", "reason", "secrets", "status", "bytes_up", "bytes_down",
           "error", "pending"}


def tok_hash(tok):
    return hashlib.sha256(tok.encode()).hexdigest()


def url(up, path, host="upstream.test"):
    return "http://%s:%d%s" % (host, up.port, path)


def req(port, path, host="upstream.test", method="GET", headers=(), body=b""):
    auth = "%s:%d" % (host, port)
    lines = ["%s http://%s%s HTTP/1.1" % (method, auth, path), "Host: " + auth]
    lines += ["%s: %s" % kv for kv in headers]
    if body:
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def basic(user, pw):
    return "Basic " + base64.b64encode(("%s:%s" % (user, pw)).encode()).decode()


def start(t, audit=None, policy=None, config=None, **kw):
    cfg = {"resolve": dict(RESOLVE), "audit": {"db": "audit.db", "flush_ms": 50}}
    if audit:
        cfg["audit"].update(audit)
    if config:
        cfg.update(config)
    return t.airlock(config=cfg, policy=policy or POLICY, **kw)


def dbpath(al):
    return os.path.join(al.dir, "audit.db")


def _connect_ro(path):
    c = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=5)
    c.row_factory = sqlite3.Row
    return c


def rows(al_or_path, where="", args=()):
    """All rows (dicts, by id) of the requests table, read-only. After a
    kill -9 a read-only open may be refused (stale -shm); then read a copy."""
    path = al_or_path if isinstance(al_or_path, str) else dbpath(al_or_path)
    if not os.path.isfile(path):
        return []
    sql = "SELECT * FROM requests %s ORDER BY id" % where
    try:
        c = _connect_ro(path)
        try:
            return [dict(r) for r in c.execute(sql, args)]
        finally:
            c.close()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return []
        raise


def rows_copy(path, tmpdir):
    """Reads a copy of the db (+ -wal) so a crashed writer's files stay as they are."""
    d = os.path.join(tmpdir, "dbcopy")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for suf in ("", "-wal"):
        if os.path.exists(path + suf):
            shutil.copy(path + suf, os.path.join(d, "audit.db" + suf))
    c = sqlite3.connect(os.path.join(d, "audit.db"))
    c.row_factory = sqlite3.Row
    try:
        integ = c.execute("PRAGMA integrity_check").fetchone()[0]
        return [dict(r) for r in c.execute("SELECT * FROM requests ORDER BY id")], integ
    finally:
        c.close()


def wait_nrows(al, n, timeout=5, where="", args=()):
    return wait_until(lambda: len(rows(al, where, args)) >= n and rows(al, where, args), timeout,
                      "%d audit rows%s (have %d)" % (n, " " + where if where else "",
                                                     len(rows(al, where, args))))


def one(rs, what, **match):
    got = [r for r in rs if all(r.get(k) == v for k, v in match.items())]
    if len(got) != 1:
        raise altest.TestFailure("%s: want exactly one row with %r, got %d (rows: %s)" %
                                 (what, match, len(got), brief(rs)))
    return got[0]


def brief(rs):
    keys = ("id", "method", "host", "path", "decision", "reason", "status", "error", "pending")
    return "[" + "; ".join(" ".join("%s=%r" % (k, r.get(k)) for k in keys) for r in rs) + "]"


def fields(r, what, **want):
    bad = ["%s=%r (want %r)" % (k, r.get(k), v) for k, v in want.items() if r.get(k) != v]
    if bad:
        raise altest.TestFailure("%s: row has %s; row %s" % (what, ", ".join(bad), brief([r])))


def cli(t, *args, timeout=20):
    p = subprocess.run([t.run.airlock_bin] + list(args), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def cli_ok(t, *args):
    rc, out, err = cli(t, *args)
    if rc != 0 or "runtime error" in err or "Sanitizer" in err:
        raise altest.TestFailure("airlock %s: rc=%d stderr=%r" % (" ".join(args), rc, err[-400:]))
    return out


def cli_json(t, *args):
    out = cli_ok(t, *args)
    try:
        return json.loads(out)
    except ValueError as e:
        raise altest.TestFailure("airlock %s: output is not JSON (%s): %r" %
                                 (" ".join(args), e, out[:300]))


def grep_files(paths, needle):
    hits = []
    for p in paths:
        try:
            with open(p, "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        if needle in data:
            hits.append(os.path.basename(p))
    return hits


# ---------------------------------------------------------------------------
# schema and one row per request


@test
def test_schema_columns(t):
    up = t.upstream()
    al = start(t)
    r = al.curl([url(up, "/echo/s1")])
    eq(r.status, 200, "status (%r)" % r)
    wait_nrows(al, 1)
    c = _connect_ro(dbpath(al))
    try:
        cols = {row[1] for row in c.execute("PRAGMA table_info(requests)")}
        idx = [row[0] for row in c.execute(
            "SELECT sql FROM sqlite_master WHERE type='index' AND tbl_name='requests'") if row[0]]
        jm = c.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        c.close()
    missing = COLUMNS - cols
    check(not missing, "requests lacks columns %s (has %s)" % (sorted(missing), sorted(cols)))
    eq(jm.lower(), "wal", "journal_mode")
    idx_text = " ".join(idx)
    for col in ("ts", "sandbox", "host", "decision", "tool_call"):
        check("(%s" % col in idx_text.replace(" ", "") or "(%s," % col in idx_text,
              "no index on %s (indexes: %s)" % (col, idx))


@test
def test_rows_one_per_request(t):
    """Allowed, POST with body, denied, refused, NXDOMAIN, malformed, three
    keep-alive requests and a CONNECT tunnel -> exactly 10 rows, right fields."""
    up = t.upstream()
    echo = t.eof_echo()
    al = start(t)
    t0 = int(time.time() * 1e6)
    closed = altest.closed_port()

    r1 = al.curl([url(up, "/echo/m1")])
    eq(r1.status, 200, "allowed GET (%r)" % r1)
    body = b"x" * 1000
    r2 = al.curl(["--data-binary", "@" + t.file("b", body), url(up, "/upload/m2")])
    eq(r2.status, 200, "POST (%r)" % r2)
    r3 = al.curl([url(up, "/echo/m3", host="denied.test")])
    expect_error(r3, 403, "host_not_allowed")
    r4 = al.curl(["http://upstream.test:%d/m4" % closed])
    expect_error(r4, 502, "upstream_refused")
    r5 = al.curl(["http://nosuch.invalid/m5"])
    expect_error(r5, 502, "dns_not_found")
    c = al.conn(timeout=5)
    c.send(b"GARBAGE\r\n\r\n")
    r6 = c.read_response()
    eq(r6.status, 400, "malformed request status")
    c.close()
    c = al.conn(timeout=10)
    ka = []
    for k in (1, 2, 3):
        c.send(req(up.port, "/echo/k%d" % k))
        ka.append(c.read_response())
    c.close()
    eq([x.status for x in ka], [200, 200, 200], "keep-alive statuses")
    # CONNECT tunnel: 5000 bytes up, the echo server's line down
    c = al.conn(timeout=10)
    c.send(b"CONNECT upstream.test:%d HTTP/1.1\r\nHost: upstream.test:%d\r\n\r\n" %
           (echo.port, echo.port))
    rc = c.read_response(method="CONNECT")
    eq(rc.status, 200, "CONNECT status")
    c.send(b"u" * 5000)
    time.sleep(0.2)  # a measurable tunnel duration (not synchronisation)
    c.sock.shutdown(socket.SHUT_WR)
    reply = c.read_all()
    check(reply.startswith(b"got 5000 "), "tunnel reply %r" % reply[:80])
    c.close()

    want = 10
    rs = wait_nrows(al, want, timeout=5)
    time.sleep(0.3)  # several flush_ms windows: no late extra rows
    rs = rows(al)
    eq(len(rs), want, "row count (rows: %s)" % brief(rs))
    t1 = int(time.time() * 1e6)
    for r in rs:
        check(t0 - 1000000 <= r["ts"] <= t1, "ts %r not within the test (%d..%d)" % (r["ts"], t0, t1))
        eq(r["mode"], "forward", "mode of row %d" % r["id"])
        check(r["client"].startswith("127.0.0.1:"), "client %r" % r["client"])
        eq(r["pending"], 0, "pending of row %d" % r["id"])
        check(r["duration_us"] >= 0, "negative duration in row %d" % r["id"])

    a = one(rs, "allowed GET", path="/echo/m1")
    fields(a, "allowed GET", method="GET", scheme="http", host="upstream.test", port=up.port,
           upstream="127.0.0.1:%d" % up.port, decision="allow", status=200, bytes_up=0,
           bytes_down=len(r1.body), error="")
    p = one(rs, "POST", path="/upload/m2")
    fields(p, "POST", method="POST", decision="allow", status=200, bytes_up=1000,
           bytes_down=len(r2.body))
    d = one(rs, "denied", host="denied.test")
    fields(d, "denied", decision="deny", rule="default", reason="host_not_allowed", status=403,
           path="/echo/m3", upstream="")
    e = one(rs, "refused", path="/m4")
    fields(e, "refused", decision="allow", status=502, error="upstream_refused",
           port=closed, host="upstream.test")
    n = one(rs, "nxdomain", host="nosuch.invalid")
    fields(n, "nxdomain", decision="allow", status=502, error="dns_not_found", path="/m5")
    b = one(rs, "malformed", status=400)
    fields(b, "malformed", decision="error", reason="bad_request")
    ks = [r for r in rs if r["path"].startswith("/echo/k")]
    eq(sorted(r["path"] for r in ks), ["/echo/k1", "/echo/k2", "/echo/k3"], "keep-alive rows")
    eq(len({r["conn_id"] for r in ks}), 1, "keep-alive rows' conn_id (one connection)")
    others = {r["conn_id"] for r in rs if r not in ks}
    check(ks[0]["conn_id"] not in others, "conn_id %d reused by another connection's row" %
          ks[0]["conn_id"])
    for r, x in zip(ks, ka):
        fields(r, "keep-alive %s" % r["path"], status=200, decision="allow", bytes_down=len(x.body))
    tn = one(rs, "CONNECT tunnel", method="CONNECT")
    fields(tn, "CONNECT tunnel", scheme="connect", host="upstream.test", port=echo.port,
           decision="allow", status=200, bytes_up=5000, bytes_down=len(reply),
           upstream="127.0.0.1:%d" % echo.port)
    check(tn["duration_us"] >= 150000, "tunnel duration_us %d < the 0.2 s it was open" %
          tn["duration_us"])


@test
def test_query_string_dropped_unless_log_query(t):
    up = t.upstream()
    al = start(t)
    r = al.curl([url(up, "/echo/lq?a=1&b=2#frag")])
    eq(r.status, 200, "status")
    rs = wait_nrows(al, 1)
    eq(rs[0]["path"], "/echo/lq", "path with log_query false")
    al2 = start(t, audit={"log_query": True})
    r = al2.curl([url(up, "/echo/lq?a=1&b=2")])
    eq(r.status, 200, "status")
    rs = wait_nrows(al2, 1)
    eq(rs[0]["path"], "/echo/lq?a=1&b=2", "path with log_query true")


@test
def test_rows_407(t):
    up = t.upstream()
    al = start(t, config={"sandboxes": [{"name": "sb", "token_sha256": tok_hash(TOKEN)}]})
    r = al.curl([url(up, "/echo/n1")])
    eq(r.status, 407, "no credentials (%r)" % r)
    r = al.curl(["-U", "sb:wrong-token", url(up, "/echo/n2")])
    eq(r.status, 407, "wrong token (%r)" % r)
    r = al.curl(["-U", "nosb:" + TOKEN, url(up, "/echo/n3")])
    eq(r.status, 407, "unknown sandbox (%r)" % r)
    r = al.curl(["-U", "sb:" + TOKEN, url(up, "/echo/n4")])
    eq(r.status, 200, "good credentials (%r)" % r)
    rs = wait_nrows(al, 4)
    time.sleep(0.3)
    rs = rows(al)
    eq(len(rs), 4, "row count (rows: %s)" % brief(rs))
    for r in rs[:3]:
        fields(r, "407 row", decision="deny", status=407)
        check(r["reason"], "407 row without a reason: %s" % brief([r]))
    check(not up.find("/echo/n1") and not up.find("/echo/n2") and not up.find("/echo/n3"),
          "a 407 request reached the upstream")
    fields(one(rs, "authenticated", path="/echo/n4"), "authenticated", sandbox="sb",
           decision="allow", status=200)


@test
def test_tags(t):
    up = t.upstream()
    al = start(t, config={"sandboxes": [{"name": "sb", "token_sha256": tok_hash(TOKEN)}]})
    r = al.curl(["-U", "sb+sess1+call1:" + TOKEN, url(up, "/echo/t1")])
    eq(r.status, 200, "sb+sess1+call1 (%r)" % r)
    r = al.curl(["-U", "sb+call2:" + TOKEN, url(up, "/echo/t2")])
    eq(r.status, 200, "sb+call2 (%r)" % r)
    r = al.curl(["-U", "sb:" + TOKEN, "-H", "X-Airlock-Session: sess3",
                 "-H", "X-Airlock-Tool-Call: toolu_01ABC", url(up, "/echo/t3")])
    eq(r.status, 200, "headers (%r)" % r)
    j = json.loads(r.body)
    check(not [k for k, _ in j["headers"] if k.lower().startswith("x-airlock")],
          "X-Airlock-* tag headers reached the upstream: %r" % j["headers"])
    r = al.curl(["-U", "sb+sess4+call4:" + TOKEN, url(up, "/echo/t4", host="denied.test")])
    expect_error(r, 403, "host_not_allowed")
    rs = wait_nrows(al, 4)
    fields(one(rs, "basic user sb+sess1+call1", path="/echo/t1"), "sb+sess1+call1",
           sandbox="sb", session="sess1", tool_call="call1")
    fields(one(rs, "basic user sb+call2", path="/echo/t2"), "sb+call2",
           sandbox="sb", session="", tool_call="call2")
    fields(one(rs, "tag headers", path="/echo/t3"), "tag headers",
           sandbox="sb", session="sess3", tool_call="toolu_01ABC")
    fields(one(rs, "denied, tagged", host="denied.test"), "denied, tagged",
           sandbox="sb", session="sess4", tool_call="call4", decision="deny")


# ---------------------------------------------------------------------------
# durability


def _load(al, up, prefix, stop, counts, nthreads=8, raw_new_conn_every=5):
    """nthreads clients sending GET /echo/PREFIX-T-I over keep-alive
    connections (a new connection every few requests) until stop is set."""
    def worker(tid):
        i = 0
        c = None
        while not stop.is_set():
            try:
                if c is None or i % raw_new_conn_every == 0:
                    if c is not None:
                        c.close()
                    c = altest.Conn(al.port, timeout=5)
                c.send(req(up.port, "/echo/%s-%d-%d" % (prefix, tid, i)))
                i += 1
                r = c.read_response()
                with lock:
                    counts[r.status] = counts.get(r.status, 0) + 1
            except (altest.TestFailure, OSError):
                with lock:
                    counts["err"] = counts.get("err", 0) + 1
                if c is not None:
                    c.close()
                c = None
                i += 1
                if stop.wait(0.01):
                    break
        if c is not None:
            c.close()
    lock = threading.Lock()
    ths = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(nthreads)]
    for th in ths:
        th.start()
    return ths


@test
def test_sigterm_burst_loses_nothing(t):
    up = t.upstream()
    # a long flush window: most rows are still queued when SIGTERM arrives
    al = start(t, audit={"durability": "batched", "flush_ms": 2000})
    n_threads, per = 8, 25
    statuses = []
    lock = threading.Lock()

    def worker(tid):
        c = altest.Conn(al.port, timeout=10)
        try:
            for i in range(per):
                c.send(req(up.port, "/echo/b-%d-%d" % (tid, i)))
                r = c.read_response()
                with lock:
                    statuses.append(r.status)
        finally:
            c.close()
    ths = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(n_threads)]
    for th in ths:
        th.start()
    for th in ths:
        th.join(30)
    n = n_threads * per
    eq(len(statuses), n, "answers")
    eq(statuses.count(200), n, "200 answers")
    before = len(rows(al))
    al.signal(signal.SIGTERM)
    rc = al.wait(15)
    eq(rc, 0, "airlock exit code after SIGTERM")
    rs = rows(al)
    paths = [r["path"] for r in rs]
    want = sorted("/echo/b-%d-%d" % (k, i) for k in range(n_threads) for i in range(per))
    missing = sorted(set(want) - set(paths))
    check(not missing, "%d of %d rows lost at SIGTERM (%d were committed before it): %s" %
          (len(missing), n, before, missing[:5]))
    eq(len(rs), n, "row count after SIGTERM")
    eq(sorted(paths), want, "row paths")
    check(all(r["status"] == 200 and r["pending"] == 0 for r in rs), "incomplete rows")


@test
def test_batched_rows_within_flush_ms(t):
    up = t.upstream()
    al = start(t, audit={"durability": "batched", "flush_ms": 50})
    for i in range(5):
        r = al.curl([url(up, "/echo/w%d" % i)])
        eq(r.status, 200, "status")
        t0 = time.monotonic()
        wait_until(lambda: rows(al, "WHERE path = ?", ("/echo/w%d" % i,)), 2,
                   "row of /echo/w%d" % i, interval=0.01)
        dt = time.monotonic() - t0
        check(dt < 1.0, "row of a finished request committed after %.2fs with flush_ms 50" % dt)


@test
def test_strict_row_before_forwarding(t):
    """Strict: while the upstream is still sending the response, the row
    already exists (pending); at the end it is completed."""
    up = t.upstream()
    al = start(t, audit={"durability": "strict"})
    n = 120000
    p = t.popen(altest.curl_popen(["-x", al.proxy, url(up, "/slow/%d?rate=60000" % n)],
                                  os.path.join(t.tmp, "slow.out"), timeout=30))
    wait_until(lambda: "/slow/%d?rate=60000" % n in up.started, 10, "upstream got /slow")
    rs = rows(al, "WHERE path LIKE '/slow/%'")
    check(len(rs) == 1, "no committed row while the upstream serves the request (rows: %s)" %
          brief(rows(al)))
    eq(rs[0]["pending"], 1, "pending while in flight")
    p.wait(30)
    eq(p.returncode, 0, "curl exit")
    rs = wait_until(lambda: [r for r in rows(al, "WHERE path LIKE '/slow/%'")
                             if r["pending"] == 0], 5, "completed row")
    eq(len(rows(al)), 1, "rows (the completion updates, not inserts)")
    fields(rs[0], "completed strict row", status=200, bytes_down=n, decision="allow")
    check(rs[0]["duration_us"] >= 1000000, "duration_us %d for a ~2 s response" %
          rs[0]["duration_us"])
    # the begin and the completion were committed: both show as commits
    check(al.metrics().need("airlock_audit_commits_total") >= 2, "airlock_audit_commits_total")


@test
def test_strict_kill9_under_load(t):
    up = t.upstream()
    al = start(t, audit={"durability": "strict", "flush_ms": 50}, workers=2)
    stop = threading.Event()
    counts = {}
    ths = _load(al, up, "s", stop, counts)
    time.sleep(2.0)  # the load runs ~2 s (duration of the experiment, not a sync)
    os.kill(al.pid, signal.SIGKILL)
    al.wait(5)
    stop.set()
    for th in ths:
        th.join(10)
    received = {r["path"] for r in up.find("/echo/s-")}
    check(counts.get(200, 0) >= 50, "load too small to mean anything: %r" % counts)
    try:
        rs = rows(al)
        integ = None
    except sqlite3.Error as e:
        rs, integ = rows_copy(dbpath(al), t.tmp)
        print("# read-only open after kill -9 failed (%s); read a copy" % e)
    if integ is not None:
        eq(integ, "ok", "integrity_check after kill -9")
    have = {r["path"] for r in rs}
    missing = sorted(received - have)
    check(not missing, "%d of %d requests the upstream received have no row after kill -9 "
          "(e.g. %s); %d rows, answers %r" % (len(missing), len(received), missing[:5], len(rs),
                                               counts))
    # every row's request is not necessarily at the upstream (killed between
    # commit and forwarding), but rows must not be invented
    extra = sorted(p for p in have - received if not p.startswith("/echo/s-"))
    check(not extra, "rows for paths never sent: %s" % extra[:5])


# ---------------------------------------------------------------------------
# fail closed


def _replace_db_with_dir(al):
    db = dbpath(al)
    for f in glob.glob(db + "*"):
        os.unlink(f)
    os.mkdir(db)


def _recover(al, up, tag, timeout=10):
    os.rmdir(dbpath(al))
    t0 = time.monotonic()
    seen = []

    def ok():
        r = al.curl([url(up, "/echo/%s-%d" % (tag, len(seen)))], timeout=5)
        seen.append(r.status)
        return r.status == 200
    wait_until(ok, timeout, "a 200 after the database directory was removed (got %s)" % seen,
               interval=0.2)
    return time.monotonic() - t0, seen


def _fail_closed(t, durability):
    up = t.upstream()
    al = start(t, audit={"durability": durability})
    r = al.curl([url(up, "/echo/before")])
    eq(r.status, 200, "before (%r)" % r)
    wait_nrows(al, 1)
    eq(al.metrics().need("airlock_audit_healthy"), 1, "airlock_audit_healthy before")
    _replace_db_with_dir(al)
    slipped = []
    if durability == "batched":
        # rows are written when a request ends: the writer learns of the
        # failure at its next batch, so one request may pass before it knows.
        r = al.curl([url(up, "/echo/probe")])
        check(r.status in (200, 503), "probe status %r" % r)
        if r.status == 200:
            slipped.append("/echo/probe")
        wait_until(lambda: al.metrics().need("airlock_audit_healthy") == 0, 5,
                   "airlock_audit_healthy 0 after the database was replaced by a directory")
    refused = []
    for i in range(5):
        p = "/echo/fc%d" % i
        r = al.curl([url(up, p)])
        if r.status != 503 or r.header("X-Airlock-Reason") not in ("audit_unavailable",
                                                                    "audit_backlog"):
            raise altest.TestFailure("%s while the db is a directory: got %d %r (want 503 "
                                     "audit_unavailable|audit_backlog)" %
                                     (p, r.status, r.header("X-Airlock-Reason")))
        refused.append(p)
    eq(al.metrics().need("airlock_audit_healthy"), 0, "airlock_audit_healthy while failing")
    got = [x["path"] for x in up.requests if x["path"] not in ("/echo/before",) + tuple(slipped)]
    check(not got, "the upstream received requests while audit was unavailable: %s" % got)
    check("audit" in al.log() and ("error" in al.log().lower()),
          "nothing logged about the audit failure")
    took, seen = _recover(al, up, "rec")
    check(took < 8, "recovery took %.1fs" % took)
    eq(al.metrics().need("airlock_audit_healthy"), 1, "airlock_audit_healthy after recovery")
    check(os.path.isfile(dbpath(al)), "database file not recreated")
    r = al.curl([url(up, "/echo/after")])
    eq(r.status, 200, "after recovery (%r)" % r)
    wait_until(lambda: rows(al, "WHERE path = '/echo/after'"), 5, "row of /echo/after")
    mode = os.stat(dbpath(al)).st_mode & 0o777
    eq(oct(mode), oct(0o600), "mode of the recreated database")
    return al, up, refused, slipped


@test
def test_fail_closed_batched(t):
    al, up, refused, slipped = _fail_closed(t, "batched")
    # the request that passed before the writer noticed is not lost
    if slipped:
        wait_until(lambda: rows(al, "WHERE path = '/echo/probe'"), 5,
                   "row of the request forwarded before the writer noticed (%s)" % slipped)


@test
def test_fail_closed_strict(t):
    up = t.upstream()
    al = start(t, audit={"durability": "strict"})
    r = al.curl([url(up, "/echo/before")])
    eq(r.status, 200, "before (%r)" % r)
    _replace_db_with_dir(al)
    # strict: no commit, no forwarding, from the very first request on
    r = al.curl([url(up, "/echo/first")])
    check(r.status == 503 and r.header("X-Airlock-Reason") in ("audit_unavailable",
                                                              "audit_backlog"),
          "first request after the db was replaced: %r" % r)
    for i in range(3):
        r = al.curl([url(up, "/echo/fs%d" % i)])
        expect_error(r, 503, "audit_unavailable")
    eq(al.metrics().need("airlock_audit_healthy"), 0, "airlock_audit_healthy while failing")
    eq([x["path"] for x in up.requests], ["/echo/before"], "paths at the upstream")
    took, _ = _recover(al, up, "rec")
    eq(al.metrics().need("airlock_audit_healthy"), 1, "airlock_audit_healthy after recovery")


@test
def test_fail_closed_refused_rows_kept(t):
    """The 503s answered while the db was unwritable are audited after
    recovery, and each row says what the request tried to reach."""
    up = t.upstream()
    al = start(t)
    r = al.curl([url(up, "/echo/before")])
    eq(r.status, 200, "before")
    wait_nrows(al, 1)
    _replace_db_with_dir(al)
    al.curl([url(up, "/echo/probe")])
    wait_until(lambda: al.metrics().need("airlock_audit_healthy") == 0, 5, "healthy 0")
    for i in range(3):
        r = al.curl([url(up, "/echo/rk%d" % i)])
        eq(r.status, 503, "status while failing")
    _recover(al, up, "rec")
    wait_until(lambda: rows(al, "WHERE path LIKE '/echo/rec-%' AND status = 200"), 5,
               "row of the recovery request")
    rs = rows(al)
    r503 = [r for r in rs if r["status"] == 503]
    check(len(r503) >= 3, "want >= 3 rows with status 503 after recovery, got %s" % brief(rs))
    for p in ("/echo/rk0", "/echo/rk1", "/echo/rk2"):
        got = [r for r in r503 if r["path"] == p]
        check(len(got) == 1, "no row for the refused request %s: the 503 rows are %s" %
              (p, brief(r503)))
        fields(got[0], "refused " + p, method="GET", host="upstream.test", port=up.port)
        check(got[0]["reason"] in ("audit_unavailable", "audit_backlog") or
              got[0]["error"] in ("audit_unavailable", "audit_backlog"),
              "refused row without audit_* reason/error: %s" % brief(got))


# ---------------------------------------------------------------------------
# secrets and files


@test
def test_secrets_never_stored(t):
    up = t.upstream()
    echo = t.eof_echo()
    stok = SECRET + "-tok"
    al = start(t, config={"sandboxes": [{"name": "sb", "token_sha256": tok_hash(stok)}]})
    auth = ["-U", "sb+s+c:" + stok]
    hdrs = ["-H", "Authorization: Bearer " + SECRET, "-H", "Cookie: sid=" + SECRET,
            "-H", "X-Api-Key: " + SECRET]
    r = al.curl(auth + hdrs + [url(up, "/echo/x1?key=%s&a=1" % SECRET)])
    eq(r.status, 200, "GET with secret headers and query (%r)" % r)
    check(SECRET.encode() in r.body, "the upstream did not get the values (test is void)")
    r = al.curl(auth + hdrs + ["--data-binary", "token=" + SECRET, url(up, "/upload/x2")])
    eq(r.status, 200, "POST with the value in the body")
    r = al.curl(auth + hdrs + [url(up, "/echo/x3?key=" + SECRET, host="denied.test")])
    eq(r.status, 403, "denied request with secret headers")
    r = al.curl(["-U", "sb:" + SECRET + "-wrong"] + hdrs + [url(up, "/echo/x4")])
    eq(r.status, 407, "wrong token")
    # malformed request carrying the value in a header and the query
    c = al.conn(timeout=5)
    c.send(("GET http://upstream.test:%d/echo/x5?k=%s HTTP/1.1\r\nHost: upstream.test\r\n"
            "X-Api-Key: %s\r\nX A: b\r\n\r\n" % (up.port, SECRET, SECRET)).encode())
    eq(c.read_response().status, 400, "malformed request")
    c.close()
    # and through a tunnel
    c = al.conn(timeout=5)
    c.send(("CONNECT upstream.test:%d HTTP/1.1\r\nHost: upstream.test:%d\r\n"
            "Proxy-Authorization: %s\r\n\r\n" % (echo.port, echo.port, basic("sb", stok))).encode())
    eq(c.read_response(method="CONNECT").status, 200, "CONNECT")
    c.send(SECRET.encode() * 3)
    c.sock.shutdown(socket.SHUT_WR)
    c.read_all()
    c.close()
    rs = wait_nrows(al, 6)
    db = dbpath(al)
    needle = SECRET.encode()
    files = [db, db + "-wal", db + "-shm"]
    hits = grep_files(files, needle)
    check(not hits, "the secret value is in %s while airlock runs" % hits)
    for r in rs:
        for k, v in r.items():
            check(SECRET not in str(v), "the secret value is in column %s: %s" % (k, brief([r])))
    x1 = one(rs, "GET with query", path="/echo/x1")  # query dropped (log_query false)
    check("?" not in x1["path"], "query kept")
    # after a clean stop the files are complete
    al.signal(signal.SIGTERM)
    eq(al.wait(15), 0, "exit code")
    hits = grep_files(files, needle)
    check(not hits, "the secret value is in %s after exit" % hits)
    hits = grep_files([al.log_path], needle)
    check(not hits, "the secret value is in airlock's log: %s" %
          [ln for ln in al.log().splitlines() if SECRET in ln][:3])


@test
def test_db_file_modes(t):
    up = t.upstream()
    old = os.umask(0o022)
    try:
        al = start(t)
    finally:
        os.umask(old)
    r = al.curl([url(up, "/echo/f1")])
    eq(r.status, 200, "status")
    wait_nrows(al, 1)
    db = dbpath(al)
    for f in (db, db + "-wal"):
        check(os.path.exists(f), "%s missing while airlock runs" % os.path.basename(f))
        m = os.stat(f).st_mode & 0o777
        eq(oct(m), oct(0o600), "mode of %s" % os.path.basename(f))
    if os.path.exists(db + "-shm"):
        m = os.stat(db + "-shm").st_mode & 0o777
        check(m & 0o077 == 0, "mode of audit.db-shm is %s (group/other access)" % oct(m))


# ---------------------------------------------------------------------------
# CLI against the daemon's database


def _cli_fixture(t):
    """5 rows: sb/s1/c1 x2 allowed (upstream.test), sb/s1/c2 denied
    (denied.test), sb/s2/c3 allowed (upstream2.test), sb/s2/c3 denied."""
    up = t.upstream()
    al = start(t, config={"sandboxes": [{"name": "sb", "token_sha256": tok_hash(TOKEN)},
                                        {"name": "other", "token_sha256": tok_hash(TOKEN)}]})
    plan = [("sb+s1+c1", "upstream.test", "/echo/q1", 200),
            ("sb+s1+c1", "upstream.test", "/echo/q2", 200),
            ("sb+s1+c2", "denied.test", "/echo/q3", 403),
            ("sb+s2+c3", "upstream2.test", "/echo/q4", 200),
            ("sb+s2+c3", "denied.test", "/echo/q5", 403)]
    for user, host, path, st in plan:
        r = al.curl(["-U", user + ":" + TOKEN, url(up, path, host=host)])
        eq(r.status, st, "%s %s (%r)" % (user, path, r))
    wait_nrows(al, 5)
    return up, al, dbpath(al)


def _paths(rs):
    return sorted(r["path"] for r in rs)


@test
def test_cli_query_formats(t):
    up, al, db = _cli_fixture(t)
    j = cli_json(t, "audit", "query", "--db", db, "--format", "json")
    check(isinstance(j, list), "json output is not an array")
    eq(_paths(j), ["/echo/q%d" % i for i in range(1, 6)], "json rows")
    r = [x for x in j if x["path"] == "/echo/q1"][0]
    for k, v in (("sandbox", "sb"), ("session", "s1"), ("tool_call", "c1"), ("decision", "allow"),
                 ("host", "upstream.test"), ("status", 200), ("method", "GET")):
        eq(r.get(k), v, "json field %s" % k)
    out = cli_ok(t, "audit", "query", "--db", db, "--format", "jsonl")
    lines = [ln for ln in out.splitlines() if ln.strip()]
    eq(len(lines), 5, "jsonl lines")
    eq(_paths([json.loads(ln) for ln in lines]), _paths(j), "jsonl rows")
    out = cli_ok(t, "audit", "query", "--db", db, "--format", "csv")
    cr = list(csv.DictReader(io.StringIO(out)))
    eq(len(cr), 5, "csv rows")
    for col in ("sandbox", "tool_call", "decision", "host", "path", "status"):
        check(col in cr[0], "csv lacks column %s (%s)" % (col, list(cr[0])))
    eq(sorted(x["path"] for x in cr), _paths(j), "csv paths")
    eq(sorted(x["decision"] for x in cr), ["allow"] * 3 + ["deny"] * 2, "csv decisions")
    out = cli_ok(t, "audit", "query", "--db", db, "--format", "table")
    tl = [ln for ln in out.splitlines() if ln.strip()]
    eq(len(tl), 6, "table lines (header + 5): %r" % out)
    long_lines = [ln for ln in tl if len(ln) > 120]
    check(not long_lines, "table lines over 120 columns: %r" % long_lines[:2])
    check(all("/echo/q%d" % i in out for i in range(1, 6)), "table lacks paths: %r" % out)
    check("sb/c1" in out or "c1" in out, "table lacks the tool call")


@test
def test_cli_query_filters(t):
    up, al, db = _cli_fixture(t)
    q = ["audit", "query", "--db", db, "--format", "json"]
    eq(_paths(cli_json(t, *q, "--sandbox", "sb")), ["/echo/q%d" % i for i in range(1, 6)],
       "--sandbox sb")
    eq(cli_json(t, *q, "--sandbox", "other"), [], "--sandbox other")
    eq(_paths(cli_json(t, *q, "--tool-call", "c1")), ["/echo/q1", "/echo/q2"], "--tool-call c1")
    eq(_paths(cli_json(t, *q, "--tool-call", "c3")), ["/echo/q4", "/echo/q5"], "--tool-call c3")
    eq(_paths(cli_json(t, *q, "--session", "s2")), ["/echo/q4", "/echo/q5"], "--session s2")
    eq(_paths(cli_json(t, *q, "--host", "up*")), ["/echo/q1", "/echo/q2", "/echo/q4"],
       "--host up*")
    eq(_paths(cli_json(t, *q, "--host", "upstream.test")), ["/echo/q1", "/echo/q2"],
       "--host upstream.test")
    eq(_paths(cli_json(t, *q, "--decision", "deny")), ["/echo/q3", "/echo/q5"],
       "--decision deny")
    eq(_paths(cli_json(t, *q, "--since", "1h")), ["/echo/q%d" % i for i in range(1, 6)],
       "--since 1h")
    eq(cli_json(t, *q, "--until", "1h"), [], "--until 1h (an hour ago)")
    eq(_paths(cli_json(t, *q, "--limit", "2")), ["/echo/q4", "/echo/q5"], "--limit 2 (newest)")
    eq(_paths(cli_json(t, *q, "--status", "403")), ["/echo/q3", "/echo/q5"], "--status 403")
    eq(_paths(cli_json(t, *q, "--tool-call", "c3", "--decision", "allow")), ["/echo/q4"],
       "--tool-call c3 --decision allow")
    # hostile values are data, not SQL
    eq(cli_json(t, *q, "--sandbox", "sb' OR '1'='1"), [], "quote in --sandbox")
    eq(cli_json(t, *q, "--host", "%"), [], "--host %")


@test
def test_cli_query_config(t):
    up, al, db = _cli_fixture(t)
    j = cli_json(t, "audit", "query", "--config", al.cfg_path, "--format", "json")
    eq(_paths(j), ["/echo/q%d" % i for i in range(1, 6)], "query --config")
    # from another working directory: the db path is relative to the config
    p = subprocess.run([t.run.airlock_bin, "audit", "query", "--config", al.cfg_path,
                        "--format", "json", "--decision", "deny"], cwd="/",
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    eq(p.returncode, 0, "query --config from / (stderr %r)" % p.stderr[-300:])
    eq(_paths(json.loads(p.stdout)), ["/echo/q3", "/echo/q5"], "query --config from /")


@test
def test_cli_stats(t):
    up, al, db = _cli_fixture(t)
    j = cli_json(t, "audit", "stats", "--db", db, "--format", "json")
    eq(j.get("total"), 5, "stats total")
    eq(j.get("decisions"), {"allow": 3, "deny": 2}, "stats decisions")
    j = cli_json(t, "audit", "stats", "--db", db, "--format", "json", "--since", "1h")
    eq(j.get("total"), 5, "stats --since 1h total")
    j = cli_json(t, "audit", "stats", "--db", db, "--format", "json", "--tool-call", "c3")
    eq(j.get("decisions"), {"allow": 1, "deny": 1}, "stats --tool-call c3 decisions")
    out = cli_ok(t, "audit", "stats", "--db", db)
    check("5" in out and "deny" in out, "table stats: %r" % out[:300])


@test
def test_cli_tail(t):
    up, al, db = _cli_fixture(t)
    out = cli_ok(t, "audit", "tail", "--db", db, "-n", "3", "--format", "jsonl")
    got = [json.loads(ln) for ln in out.splitlines() if ln.strip()]
    eq([x["path"] for x in got], ["/echo/q3", "/echo/q4", "/echo/q5"], "tail -n 3 (oldest first)")
    out = cli_ok(t, "audit", "tail", "--db", db, "-n", "3")
    eq(len([ln for ln in out.splitlines() if "/echo/q" in ln]), 3, "tail -n 3 table rows")


@test
def test_cli_tail_follow(t):
    up, al, db = _cli_fixture(t)
    p = t.popen(subprocess.Popen([t.run.airlock_bin, "audit", "tail", "--db", db, "--follow",
                                  "-n", "2", "--format", "jsonl"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 stdin=subprocess.DEVNULL))
    buf = b""
    fd = p.stdout.fileno()

    def read_until(needle, timeout):
        nonlocal buf
        deadline = time.monotonic() + timeout
        while needle not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or p.poll() is not None:
                return False
            rd, _, _ = select.select([fd], [], [], left)
            if rd:
                d = os.read(fd, 65536)
                if not d:
                    return False
                buf += d
        return True
    check(read_until(b"/echo/q5", 5), "tail --follow did not print the last rows: %r" % buf)
    check(b"/echo/q3" not in buf, "tail --follow -n 2 printed more than 2 rows: %r" % buf)
    r = al.curl(["-U", "sb+s9+c9:" + TOKEN, url(up, "/echo/late")])
    eq(r.status, 200, "late request")
    check(read_until(b"/echo/late", 5),
          "tail --follow did not print a row for a request made after it started: %r" % buf)
    line = [ln for ln in buf.splitlines() if b"/echo/late" in ln][0]
    j = json.loads(line)
    eq((j["tool_call"], j["status"]), ("c9", 200), "followed row")
    p.send_signal(signal.SIGINT)
    try:
        rc = p.wait(5)
    except subprocess.TimeoutExpired:
        raise altest.TestFailure("tail --follow did not exit within 5 s of SIGINT")
    err = p.stderr.read().decode("utf-8", "replace")
    eq(rc, 0, "tail --follow exit code after SIGINT (stderr %r)" % err[-300:])


@test
def test_cli_bad_values(t):
    up, al, db = _cli_fixture(t)
    for args, flag in ((["--since", "yesterday"], "--since"),
                       (["--until", "soon"], "--until"),
                       (["--decision", "maybe"], "--decision"),
                       (["--limit", "-3"], "--limit"),
                       (["--format", "xml"], "--format")):
        rc, out, err = cli(t, "audit", "query", "--db", db, *args)
        eq(rc, 2, "exit code for %s" % " ".join(args))
        check(flag in err, "message for %s does not name the flag: %r" % (" ".join(args), err))
        check(not out.strip(), "output for a bad %s: %r" % (flag, out[:200]))
    rc, out, err = cli(t, "audit", "stats", "--db", db, "--since", "yesterday")
    eq(rc, 2, "stats --since yesterday exit code")
    check("--since" in err, "stats message: %r" % err)
    rc, out, err = cli(t, "audit", "tail", "--db", db, "--decision", "maybe")
    eq(rc, 2, "tail --decision maybe exit code")
    rc, out, err = cli(t, "audit", "query", "--db", os.path.join(t.tmp, "nonexistent.db"))
    check(rc != 0, "query of a missing db: rc 0")
    check(not os.path.exists(os.path.join(t.tmp, "nonexistent.db")),
          "query created the missing db (must open read-only)")


if __name__ == "__main__":
    sys.exit(altest.main())
