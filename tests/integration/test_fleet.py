#!/usr/bin/env python3
"""Fleet audit suite (issue 18): replicas ship their sqlite rows to a real
PostgreSQL 15 (started here by pgfix.py as the `postgres` user on a free
loopback port, password auth; stopped and removed at the end even on
failure): two replicas through a database outage mid-traffic (every request
served, PostgreSQL ends with exactly the rows of both local files, each
once, with the right instance), a kill -9 between a batch's commit and the
local high-water mark, bad sink configurations (clear error at start, or
logged and counted retries; never a crash, never the password), retention
keeping unshipped rows, pending rows (websockets, strict requests under
way) shipped at once and completed in place later (across restarts and
crashes too), and `airlock audit migrate|query|stats|tail --db
postgresql://...`.

    python3 tests/integration/test_fleet.py --airlock build/proxy/airlock [-k NAME]
"""

import base64
import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import altest  # noqa: E402
import pgfix  # noqa: E402
import upstream  # noqa: E402
from altest import check, eq, test, wait_until  # noqa: E402

RESOLVE = {"upstream.test": "127.0.0.1", "other.test": "127.0.0.1"}
LOOP = ["127.0.0.0/8", "::1/128"]
POLICY = {"default": "deny", "allow_addresses": LOOP,
          "rules": [{"name": "up", "hosts": ["upstream.test"], "action": "allow"}]}

PG = None


def pg():
    global PG
    if PG is None:  # TLS too, with the harness's certificate (localhost, 127.0.0.1)
        PG = pgfix.Postgres(ssl=(altest.RUN.server_pem, altest.RUN.server_key))
    if PG.pid is None:
        PG.start()
    return PG


def reset_pg():
    p = pg()
    p.psql("DROP TABLE IF EXISTS requests, sink_state, schema_version CASCADE; "
           "DROP SEQUENCE IF EXISTS requests_seq")
    return p


def start(t, sink=None, audit=None, env=None, **kw):
    cfg = {"resolve": dict(RESOLVE), "audit": {"db": "audit.db", "flush_ms": 20}}
    if sink is not None:
        cfg["audit"]["sink"] = sink
    if audit:
        cfg["audit"].update(audit)
    return t.airlock(config=cfg, policy=POLICY, env=env, **kw)


def req(port, path, host="upstream.test", tags=()):
    auth = "%s:%d" % (host, port)
    lines = ["GET http://%s%s HTTP/1.1" % (auth, path), "Host: " + auth, "Connection: close"]
    lines += ["%s: %s" % kv for kv in tags]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def send(al, up, path, host="upstream.test", tags=()):
    return al.raw(req(up.port, path, host, tags))


def local_rows(al):
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(al.dir, "audit.db"), uri=True)
    try:
        return db.execute("SELECT id, ts, host, path, status, decision FROM requests "
                          "ORDER BY id").fetchall()
    finally:
        db.close()


def pg_rows(p, instance):
    rows = p.psql("SELECT id, (extract(epoch from ts) * 1000000)::bigint, host, path, status, "
                  "decision FROM requests WHERE instance = '%s' ORDER BY id" % instance)
    return [(int(r[0]), int(r[1]), r[2], r[3], int(r[4]), r[5]) for r in rows]


def pg_count(p, instance):
    try:
        return int(p.psql("SELECT count(*) FROM requests WHERE instance = '%s'" % instance)[0][0])
    except RuntimeError as e:
        if "does not exist" in str(e):  # no replica connected yet
            return 0
        raise


def wait_shipped(al, p, instance, want, timeout=40):
    """Waits until the local file holds `want` rows and PostgreSQL all of them."""
    wait_until(lambda: len(local_rows(al)) == want, 10, "%d local rows" % want, interval=0.05)

    def done():
        return pg_count(p, instance) == want
    try:
        wait_until(done, timeout, "all %s rows in PostgreSQL" % instance, interval=0.2)
    except altest.TestFailure as e:
        m = al.metrics() if al.alive() else None
        raise altest.TestFailure("%s: PostgreSQL has %d, want %d; sink_rows %s lag %s up %s" % (
            e, pg_count(p, instance), want, m and m.get("airlock_audit_sink_rows_total"),
            m and m.get("airlock_audit_sink_lag_rows"), m and m.get("airlock_audit_sink_up")))


def healthz(al):
    st, _, body = altest.http_get_direct(al.admin + "/healthz")
    return st, body.decode()


def no_password(al, p, extra=()):
    texts = [al.log(), al.metrics().text if al.alive() else "", healthz(al)[1] if al.alive() else ""]
    texts += list(extra)
    for s in texts:
        check(p.password not in s, "the sink password appears in airlock's output")


class Traffic(threading.Thread):
    """Requests through one replica until stopped; counts what was served."""

    def __init__(self, al, up, name):
        super().__init__(daemon=True)
        self.al, self.up, self.name = al, up, name
        self.stop_flag = False
        self.sent = self.ok = 0
        self.bad = []

    def run(self):
        while not self.stop_flag:
            self.sent += 1
            try:
                r = send(self.al, self.up, "/echo/%s/%d" % (self.name, self.sent),
                         tags=(("X-Airlock-Sandbox", "sbx-" + self.name),))
                if r.status == 200:
                    self.ok += 1
                else:
                    self.bad.append(r.status)
            except Exception as e:  # noqa: BLE001
                self.bad.append(str(e))
            time.sleep(0.005)


@test
def two_replicas_outage_exactly_once(t):
    p = reset_pg()
    up = t.upstream()
    a = start(t, sink={"postgres": p.uri(), "instance": "replica-a"})
    b = start(t, sink={"postgres": p.uri(), "instance": "replica-b"})
    ta, tb = Traffic(a, up, "a"), Traffic(b, up, "b")
    ta.start()
    tb.start()
    try:
        wait_until(lambda: pg_count(p, "replica-a") > 20 and pg_count(p, "replica-b") > 20, 30,
                   "rows shipped before the outage", interval=0.2)
        p.stop_server("fast")
        t0 = time.monotonic()
        # The proxy keeps serving; the sink goes down and says so.
        wait_until(lambda: "audit_sink: down" in healthz(a)[1], 15, "healthz reporting the sink down")
        st, body = healthz(b)
        eq(st, 200, "healthz status while PostgreSQL is down")
        wait_until(lambda: a.metrics().get("airlock_audit_sink_up") == 0, 10, "sink_up 0")
        while time.monotonic() - t0 < 3:
            time.sleep(0.1)
        served_during = ta.ok + tb.ok
        p.start()
        time.sleep(0.5)
    finally:
        ta.stop_flag = tb.stop_flag = True
        ta.join(20)
        tb.join(20)
    check(not ta.bad and not tb.bad, "requests failed: %r %r" % (ta.bad[:5], tb.bad[:5]))
    check(served_during > 0 and ta.ok > 0 and tb.ok > 0, "traffic was served")
    for al, inst in ((a, "replica-a"), (b, "replica-b")):
        wait_shipped(al, p, inst, (ta if al is a else tb).sent)
        loc = local_rows(al)
        rem = pg_rows(p, inst)
        eq(len(rem), len(loc), "%s: rows in PostgreSQL" % inst)
        eq(rem, loc, "%s: PostgreSQL rows equal the local file's" % inst)
        m = al.metrics()
        eq(m.get("airlock_audit_sink_rows_total"), len(loc), "%s: sink_rows_total" % inst)
        wait_until(lambda al=al: al.metrics().get("airlock_audit_sink_lag_rows") == 0, 10,
                   "%s lag 0" % inst)
        check((m.get("airlock_audit_sink_errors_total") or 0) >= 1, "%s: the outage was counted" % inst)
        eq(m.get("airlock_audit_sink_up"), 1, "%s: sink_up after the outage" % inst)
        check("audit_sink: up instance=%s lag_rows=0" % inst in healthz(al)[1] or
              "audit_sink: up instance=%s" % inst in healthz(al)[1], "%s: healthz says up" % inst)
        check("retrying in" in al.log(), "%s: the outage was logged" % inst)
        no_password(al, p)
    eq(len(local_rows(a)), ta.sent, "replica-a: one local row per request")
    eq(len(local_rows(b)), tb.sent, "replica-b: one local row per request")
    dup = p.psql("SELECT instance, id, count(*) FROM requests GROUP BY 1, 2 HAVING count(*) > 1")
    eq(dup, [], "duplicated (instance, id)")
    # every row carries the instance that wrote it
    sb = p.psql("SELECT DISTINCT instance, split_part(path, '/', 3) FROM requests ORDER BY 1")
    eq(sb, [["replica-a", "a"], ["replica-b", "b"]], "instance of every row")
    # the local high-water mark is saved in the sqlite file
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(a.dir, "audit.db"), uri=True)
    mark = db.execute("SELECT shipped_id FROM sink_state WHERE instance = 'replica-a'").fetchone()
    db.close()
    eq(mark[0], local_rows(a)[-1][0], "local high-water mark")


@test
def slow_database_does_not_slow_requests(t):
    """PostgreSQL stalls (sink_state locked by another session for 4 s): the
    proxy answers at its usual pace meanwhile and the rows arrive after."""
    p = reset_pg()
    up = t.upstream()
    a = start(t, sink={"postgres": p.uri(), "instance": "slow"})
    for i in range(5):
        send(a, up, "/echo/before/%d" % i)
    wait_shipped(a, p, "slow", 5)
    env = dict(os.environ, PGPASSWORD=p.password)
    locker = t.popen(subprocess.Popen(
        [os.path.join(p.bindir, "psql"), "-X", "-q", "-h", "127.0.0.1", "-p", str(p.port), "-U",
         p.user, "-d", p.db, "-c", "BEGIN; LOCK TABLE sink_state IN ACCESS EXCLUSIVE MODE; "
         "SELECT pg_sleep(4); COMMIT;"], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL))
    time.sleep(0.3)
    slowest = 0.0
    for i in range(40):
        t0 = time.monotonic()
        eq(send(a, up, "/echo/during/%d" % i).status, 200, "served while PostgreSQL stalls")
        slowest = max(slowest, time.monotonic() - t0)
        time.sleep(0.05)
    if locker.poll() is None:  # still holding it: the shipper is stuck behind the lock
        eq(pg_count(p, "slow"), 5, "nothing shipped while sink_state is locked")
    check(slowest < 1.0, "a request took %.2fs while PostgreSQL stalled" % slowest)
    wait_shipped(a, p, "slow", 45)
    eq(pg_rows(p, "slow"), local_rows(a), "every row once after the stall")
    locker.wait(10)


@test
def kill9_between_commit_and_mark(t):
    p = reset_pg()
    up = t.upstream()
    sink = {"postgres": p.uri(), "instance": "crashy"}
    a = start(t, sink=sink, env={"AIRLOCK_TEST_SINK_KILL_AFTER_COMMITS": "2"})
    for i in range(200):
        if not a.alive():
            break
        try:
            send(a, up, "/echo/k/%d" % i)
        except Exception:  # noqa: BLE001
            break
        time.sleep(0.01)
    check(a.wait(20) is not None, "airlock killed itself by the test hook")
    eq(a.exit_rc, -signal.SIGKILL, "exit by SIGKILL")
    db = sqlite3.connect(os.path.join(a.dir, "audit.db"))
    row = db.execute("SELECT shipped_id FROM sink_state WHERE instance = 'crashy'").fetchone()
    db.close()
    local_mark = row[0] if row else 0
    pg_mark = int(p.psql("SELECT shipped_id FROM sink_state WHERE instance = 'crashy'")[0][0])
    check(pg_mark > local_mark, "the crash left PostgreSQL ahead of the local mark "
          "(pg %d, local %d)" % (pg_mark, local_mark))
    # restart in the same dir without the hook: no duplicate, nothing lost
    a.env = None
    a.start()
    before = len(local_rows(a))
    for i in range(30):
        eq(send(a, up, "/echo/after/%d" % i).status, 200, "served after the restart")
    wait_shipped(a, p, "crashy", before + 30)
    eq(pg_rows(p, "crashy"), local_rows(a), "rows after the restart")
    check("PostgreSQL already has rows up to id %d" % pg_mark in a.log(),
          "the restart took PostgreSQL's mark")


@test
def bad_uri_fails_start_without_password(t):
    p = pg()
    for bad in ("postgresql://airlock:%s@[::1/audit" % p.password,
                "host=127.0.0.1 password=%s bogus" % p.password,
                "postgresql://airlock:%s@127.0.0.1/audit?nosuch=1" % p.password):
        a = altest.Airlock(t.run, config={"resolve": dict(RESOLVE),
                                          "audit": {"db": "audit.db",
                                                    "sink": {"postgres": bad,
                                                             "instance": "x"}}},
                           policy=POLICY)
        t.airlocks.append(a)
        try:  # the listeners may be bound before the audit trail opens: then it exits
            a.start(timeout=10)
        except altest.TestFailure:
            pass
        check(a.wait(10) == 1, "exit code for a bad sink URI: %r" % a.exit_rc)
        log = a.log()
        check("audit.sink.postgres: invalid connection string" in log,
              "a clear error names the key:\n" + log[-600:])
        check(p.password not in log, "the password is not in the error")
    a = altest.Airlock(t.run, config={"audit": {"db": "audit.db", "sink": {
        "postgres": p.uri(), "instance": "bad name!"}}}, policy=POLICY)
    t.airlocks.append(a)
    try:
        a.start(timeout=10)
    except altest.TestFailure:
        pass
    check(a.wait(10) == 1, "exit code for a bad instance name: %r" % a.exit_rc)
    check("audit.sink.instance" in a.log(), "instance error names the key")


@test
def wrong_password_and_unreachable_retry(t):
    p = pg()
    up = t.upstream()
    wrong = "Wr0ng-pass-77aa"
    a = start(t, sink={"postgres": p.uri(password=wrong), "instance": "wrongpw"})
    b = start(t, sink={"postgres": "host=127.0.0.1 port=%d user=airlock dbname=audit "
                                   "password=%s connect_timeout=2"
                                   % (altest.closed_port(), p.password),
                       "instance": "unreach"})
    for al in (a, b):
        for i in range(5):
            eq(send(al, up, "/echo/x/%d" % i).status, 200, "served while the sink fails")
        wait_until(lambda al=al: (al.metrics().get("airlock_audit_sink_errors_total") or 0) >= 2, 20,
                   "counted retries")
        m = al.metrics()
        eq(m.get("airlock_audit_sink_up"), 0, "sink_up")
        wait_until(lambda al=al: (al.metrics().get("airlock_audit_sink_lag_rows") or 0) >= 5, 5,
                   "lag counting the waiting rows")
        st, body = healthz(al)
        eq(st, 200, "healthz stays 200")
        check("audit_sink: down" in body, "healthz says down: %r" % body)
        check("audit sink:" in al.log() and "retrying in" in al.log(), "the failure is logged")
        check(al.alive(), "no crash")
    check("password authentication failed" in a.log(), "wrong password named in the log")
    no_password(a, p, extra=[wrong])
    check(wrong not in a.log(), "the wrong password is not logged either")
    no_password(b, p)


@test
def retention_keeps_unshipped_rows(t):
    p = reset_pg()
    up = t.upstream()
    a = start(t)
    send(a, up, "/seed")
    a.stop()
    path = os.path.join(a.dir, "audit.db")
    db = sqlite3.connect(path)
    old = int((time.time() - 10 * 86400) * 1e6)
    for i in range(50):
        db.execute("INSERT INTO requests (ts, host, path, decision, status) VALUES "
                   "(?, 'old.test', ?, 'allow', 200)", (old + i, "/old/%d" % i))
    # a broken clock (before 1970) must not wedge the shipper: requests_default takes it
    db.execute("INSERT INTO requests (ts, host, path, decision, status) VALUES "
               "(-5000000, 'clock.test', '/1969', 'allow', 200)")
    db.commit()
    db.close()

    def n_old():
        c = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
        try:
            return c.execute("SELECT count(*) FROM requests WHERE host = 'old.test'").fetchone()[0]
        finally:
            c.close()
    # The sink cannot log in: retention (runs at start) must keep the unshipped old rows.
    a.extra["audit"]["retention_days"] = 1
    a.extra["audit"]["sink"] = {"postgres": p.uri(password="nope-nope"), "instance": "ret"}
    a.start()
    wait_until(lambda: (a.metrics().get("airlock_audit_sink_errors_total") or 0) >= 1, 15, "sink error")
    time.sleep(1)
    eq(n_old(), 50, "old unshipped rows kept by retention")
    a.stop()
    # With a working sink they ship; the next retention pass deletes them locally.
    a.extra["audit"]["sink"] = {"postgres": p.uri(), "instance": "ret"}
    a.start()
    def shipped_old():
        try:
            return int(p.psql("SELECT count(*) FROM requests WHERE instance = 'ret' AND "
                              "host = 'old.test'")[0][0]) == 50
        except RuntimeError:  # not created yet
            return False
    wait_until(shipped_old, 30, "old rows shipped", interval=0.2)
    eq(p.psql("SELECT tableoid::regclass, extract(epoch FROM ts) FROM requests "
              "WHERE host = 'clock.test'"), [["requests_default", "-5.000000"]],
       "a row from before 1970 shipped into the default partition")
    a.stop()
    a.start()
    wait_until(lambda: n_old() == 0, 15, "retention deleting shipped old rows", interval=0.2)
    # PostgreSQL: retention (at connect, then hourly) dropped the old day's whole partition
    old_part = "requests_p" + time.strftime("%Y%m%d", time.gmtime(old / 1e6))

    def parts():
        return {r[0] for r in p.psql("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON "
                                     "c.oid = i.inhrelid WHERE i.inhparent = 'requests'::regclass")}
    wait_until(lambda: old_part not in parts(), 15, "partition %s dropped" % old_part)
    check("requests_p" + time.strftime("%Y%m%d", time.gmtime()) in parts() and
          "requests_default" in parts(), "today's and the default partition stay: %s" % parts())
    eq(p.psql("SELECT count(*) FROM requests WHERE host = 'old.test'"), [["0"]],
       "old rows gone from PostgreSQL with their partition")
    check("retention dropped partition " + old_part in a.log(), "the drop is logged")


TOKEN = "tok-fleet-81c2"


def tok_hash(tok):
    import hashlib
    return hashlib.sha256(tok.encode()).hexdigest()


@test
def tls_verify_full_and_password_from_env(t):
    """sslmode=verify-full with sslrootcert, and the password from PGPASSWORD
    (not in the config): rows ship over TLS; a CA that did not sign the
    server's certificate is a logged, counted retry."""
    p = reset_pg()
    up = t.upstream()
    base = "postgresql://%s@localhost:%d/%s?sslmode=verify-full&sslrootcert=" % (
        p.user, p.port, p.db)
    a = start(t, sink={"postgres": base + t.ca, "instance": "tls-a"},
              env={"PGPASSWORD": p.password})
    for i in range(5):
        eq(send(a, up, "/echo/tls/%d" % i).status, 200, "served")
    wait_shipped(a, p, "tls-a", 5)
    ssl = p.psql("SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                 "WHERE a.application_name = 'airlock-audit'")
    eq(ssl, [["t"]], "the shipper's connection uses TLS")
    check(p.password not in open(a.cfg_path).read(), "the password is not in the config")
    other_ca = t.file("other-ca.pem", open("/etc/ssl/certs/ca-certificates.crt", "rb").read())
    b = start(t, sink={"postgres": base + other_ca, "instance": "tls-b"},
              env={"PGPASSWORD": p.password})
    eq(send(b, up, "/echo/tls-b").status, 200, "served while TLS verification fails")
    wait_until(lambda: (b.metrics().get("airlock_audit_sink_errors_total") or 0) >= 1, 15,
               "the verification failure counted")
    check("certificate verify failed" in b.log(), "the TLS failure is logged:\n" + b.log()[-800:])
    eq(b.metrics().get("airlock_audit_sink_up"), 0, "sink_up with an untrusted server")
    eq(pg_count(p, "tls-b"), 0, "nothing shipped to an unverified server")
    no_password(a, p)
    no_password(b, p)


def cli(t, *args, timeout=60, env=None):
    p = subprocess.run([t.run.airlock_bin, "audit"] + list(args), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout,
                       env=dict(os.environ, **(env or {})))
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def cli_json(t, *args, env=None):
    rc, out, err = cli(t, *args, env=env)
    eq(rc, 0, "airlock audit %s: %s" % (" ".join(args), err))
    return json.loads(out)


def _key(r):
    return (r["ts_us"], r.get("instance", ""), r["id"])


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "instance"} for r in rows]


@test
def cli_on_the_shared_store(t):
    p = reset_pg()
    up = t.upstream()
    sbx = {"sandboxes": [{"name": "sb", "token_sha256": tok_hash(TOKEN)},
                         {"name": "other", "token_sha256": tok_hash(TOKEN)}]}
    reps = {}
    for inst in ("rep-a", "rep-b"):
        cfg = {"resolve": dict(RESOLVE), "audit": {"db": "audit.db", "flush_ms": 20,
                                                   "sink": {"postgres": p.uri(),
                                                            "instance": inst}}}
        cfg.update(sbx)
        reps[inst] = t.airlock(config=cfg, policy=POLICY)
    plan = {"rep-a": [("sb+s1+c1", "upstream.test", "/echo/q1", 200),
                      ("sb+s1+c1", "upstream.test", "/echo/q2", 200),
                      ("sb+s1+c2", "other.test", "/echo/q3", 403),
                      ("other+s9+c9", "upstream.test", "/nope/q4", 404)],
            "rep-b": [("sb+s2+c3", "upstream.test", "/echo/q5", 200),
                      ("sb+s2+c3", "other.test", "/echo/q6", 403),
                      ("other", "upstream.test", "/echo/q7", 200)]}
    for inst, steps in plan.items():
        for user, host, path, st in steps:
            r = reps[inst].curl(["-U", user + ":" + TOKEN,
                                 "http://%s:%d%s" % (host, up.port, path)])
            eq(r.status, st, "%s %s (%r)" % (user, path, r))
    # Rows the proxy does not make here: secrets, an IPv6 client, escapes in fields.
    wait_until(lambda: len(local_rows(reps["rep-a"])) == 4, 10, "rep-a rows")
    db = sqlite3.connect(os.path.join(reps["rep-a"].dir, "audit.db"), timeout=10)
    now = int(time.time() * 1e6)
    db.execute("INSERT INTO requests (ts, sandbox, client, method, scheme, host, port, path, "
               "decision, rule, secrets, status, bytes_up, bytes_down, error) VALUES "
               "(?, 'sb', '[::1]:5555', 'POST', 'https', 'api.upstream.test', 443, ?, 'allow', "
               "'up', 'api_key,db_pw', 201, 10, 20, '')", (now, "/p\tq\\r\u00e9\x01"))
    db.execute("INSERT INTO requests (ts, client, method, host, path, decision, reason, secrets, "
               "status, error) VALUES (?, '10.1.2.3:1', 'GET', 'upstream.test', '/e', 'error', "
               "'upstream_unreachable', 'db_pw', 502, 'connect: refused')", (now + 1,))
    db.commit()
    db.close()
    wait_shipped(reps["rep-a"], p, "rep-a", 6)
    wait_shipped(reps["rep-b"], p, "rep-b", 3)
    uri = "postgresql://%s@127.0.0.1:%d/%s" % (p.user, p.port, p.db)
    env = {"PGPASSWORD": p.password}
    dbs = {inst: os.path.join(al.dir, "audit.db") for inst, al in reps.items()}
    future = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    filters = [[], ["--sandbox", "sb"], ["--sandbox", ""], ["--session", "s1"],
               ["--tool-call", "c3"], ["--host", "*.test"], ["--host", "UPSTREAM.test"],
               ["--host", "api.*"], ["--decision", "deny"], ["--decision", "allow"],
               ["--status", "2xx"], ["--status", "404"], ["--rule", "up"],
               ["--secret", "db_pw"], ["--secret", "api"], ["--since", "1h"],
               ["--until", future], ["--since", "1h", "--until", future, "--sandbox", "sb"],
               ["--limit", "3"]]
    for fl in filters:
        union = []
        for inst, path in dbs.items():
            loc = cli_json(t, "query", "--db", path, "--format", "json", *fl)
            rem = cli_json(t, "query", "--db", uri, "--instance", inst, "--format", "json", *fl,
                           env=env)
            check(all(r["instance"] == inst for r in rem), "instance field (%s)" % fl)
            eq(_strip(rem), loc, "query %s --instance %s" % (fl, inst))
            for r in loc:
                r["instance"] = inst
            union += loc
        union.sort(key=_key)
        if fl[:1] == ["--limit"]:
            union = union[-int(fl[1]):]
        rem = cli_json(t, "query", "--db", uri, "--format", "json", *fl, env=env)
        eq(rem, union, "query %s on PostgreSQL = the union of the sqlite files" % fl)
    # jsonl, csv, table carry the instance too
    rc, out, err = cli(t, "query", "--db", uri, "--format", "jsonl", env=env)
    eq([json.loads(x)["instance"] for x in out.splitlines()].count("rep-b"), 3, "jsonl instance")
    rc, out, err = cli(t, "query", "--db", uri, "--format", "csv", "--instance", "rep-b", env=env)
    lines = out.splitlines()
    check(lines[0].startswith("id,instance,ts,"), "csv header: %r" % lines[0])
    eq(len(lines), 4, "csv rows")
    check(all(x.split(",")[1] == "rep-b" for x in lines[1:]), "csv instance column")
    rc, out, err = cli(t, "query", "--db", uri, "--format", "table", env=env)
    tl = out.splitlines()
    check(tl[0].startswith("INSTANCE") and len(tl) == 10, "table: %r" % out)
    rc, loc, err = cli(t, "query", "--db", dbs["rep-a"], "--format", "table")
    check(max(len(x) for x in tl) <= max(len(x) for x in loc.splitlines()),
          "the INSTANCE column makes the table wider than a local file's")
    # stats: per instance equal to the file's, whole store = the sums
    for fl in ([], ["--by", "host"], ["--by", "secret"], ["--by", "sandbox", "--decision", "deny"],
               ["--by", "tool-call"], ["--by", "rule"]):
        tot = 0
        for inst, path in dbs.items():
            loc = cli_json(t, "stats", "--db", path, "--format", "json", *fl)
            rem = cli_json(t, "stats", "--db", uri, "--instance", inst, "--format", "json", *fl,
                           env=env)
            eq(rem, loc, "stats %s --instance %s" % (fl, inst))
            tot += loc["total"]
        rem = cli_json(t, "stats", "--db", uri, "--format", "json", *fl, env=env)
        eq(rem["total"], tot, "stats %s total" % fl)
    st = cli_json(t, "stats", "--db", uri, "--by", "instance", "--format", "json", env=env)
    eq(sorted((g["key"], g["total"]) for g in st["groups"]), [("rep-a", 6), ("rep-b", 3)],
       "stats --by instance")
    rc, out, err = cli(t, "stats", "--db", uri, env=env)
    eq(rc, 0, "stats table: " + err)
    # tail: per instance the file's order; --follow sees rows shipped later
    for inst, path in dbs.items():
        loc = cli_json(t, "tail", "--db", path, "-n", "2", "--format", "json")
        rem = cli_json(t, "tail", "--db", uri, "--instance", inst, "-n", "2", "--format", "json",
                       env=env)
        eq(_strip(rem), loc, "tail -n 2 --instance %s" % inst)
    f = subprocess.Popen([t.run.airlock_bin, "audit", "tail", "--db", uri, "-n", "1000", "--follow",
                          "--format", "jsonl", "--host", "upstream.test"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=dict(os.environ, **env))
    t.popen(f)
    time.sleep(0.5)
    for inst, al in reps.items():
        r = al.curl(["-U", "sb:" + TOKEN, "http://upstream.test:%d/echo/follow-%s" % (up.port, inst)])
        eq(r.status, 200, "request while following")
    wait_shipped(reps["rep-a"], p, "rep-a", 7)
    wait_shipped(reps["rep-b"], p, "rep-b", 4)
    time.sleep(0.6)
    f.send_signal(signal.SIGTERM)
    out, err = f.communicate(timeout=10)
    got = sorted((json.loads(x)["instance"], json.loads(x)["path"]) for x in out.decode().splitlines())
    want = sorted(tuple(r) for r in p.psql("SELECT instance, path FROM requests "
                                           "WHERE host = 'upstream.test'"))
    check(("rep-a", "/echo/follow-rep-a") in want and ("rep-b", "/echo/follow-rep-b") in want,
          "the followed rows are in PostgreSQL")
    eq(got, want, "tail --follow: every row once (the old ones, then the new ones)")
    # policy replay on the store: per instance the same report as on that replica's file,
    # and the store's counts are the sums (a stricter policy: upstream.test denied)
    stricter = {"default": "deny", "allow_addresses": LOOP, "rules": []}
    pol_path = t.file("stricter.json", json.dumps(stricter).encode())
    tot = {}
    for inst, al in reps.items():
        def replay(db, *extra):
            p2 = subprocess.run([t.run.airlock_bin, "policy", "replay", "--config", al.cfg_path,
                                 "--policy", pol_path, "--db", db, "--format", "json"]
                                + list(extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                timeout=60, env=dict(os.environ, **env))
            check(p2.returncode in (0, 3), "policy replay --db %s: rc %d %s" % (
                db, p2.returncode, p2.stderr.decode()))
            return json.loads(p2.stdout.decode())
        loc = replay(dbs[inst])
        rem_all = replay(uri)
        for k in ("rows", "replayed", "unchanged"):
            tot[k] = loc[k] + tot.get(k, 0)
    for k in ("rows", "replayed", "unchanged"):
        eq(rem_all[k], tot[k], "policy replay --db postgresql://: %s = the files' sum" % k)
    check(rem_all["replayed"] > rem_all["unchanged"], "the stricter policy changes decisions")

    # errors: no schema, bad URI, wrong password: exit 1 with a message, never the password
    rc, out, err = cli(t, "query", "--db", p.uri(password="Bad-pw-123x"))
    eq(rc, 1, "wrong password exit code")
    check("password authentication failed" in err and "Bad-pw-123x" not in err, err)
    rc, out, err = cli(t, "query", "--db", p.uri(db="postgres"))
    eq(rc, 1, "no schema exit code")
    check("airlock audit migrate" in err and p.password not in err, err)
    rc, out, err = cli(t, "query", "--db", "postgresql://u:Secr3t-x@[::1/db")
    eq(rc, 1, "bad URI exit code")
    check("invalid connection string" in err and "Secr3t-x" not in err, err)


def read_head(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(4096)
        if not d:
            break
        buf += d
    return buf


class WsOrigin(upstream.EofEchoServer):
    """A plain-HTTP websocket origin (EofEchoServer's accept loop): answers
    every upgrade with 101 and the client's close frame with its own, and
    holds the socket until then."""

    def _one(self, c):
        try:
            c.settimeout(30)
            key = [ln.split(b":", 1)[1].strip() for ln in read_head(c).split(b"\r\n")
                   if ln.lower().startswith(b"sec-websocket-key:")][0]
            acc = base64.b64encode(hashlib.sha1(
                key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + acc + b"\r\n\r\n")
            while True:
                d = c.recv(4096)
                if not d:
                    return
                if d[0] & 0x0F == 8:  # the client's close (one small frame)
                    c.sendall(b"\x88\x02\x03\xe8")
                    return
        except (OSError, IndexError):
            pass
        finally:
            c.close()


def open_ws(al, o, path):
    """A websocket through the forward listener (plain HTTP), upgraded."""
    s = socket.create_connection(("127.0.0.1", al.port), timeout=10)
    auth = "upstream.test:%d" % o.port
    s.sendall(("GET http://%s%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n" % (auth, path, auth)).encode())
    buf = read_head(s)
    check(buf.startswith(b"HTTP/1.1 101"), "upgrade answered %r" % buf[:100])
    return s


def close_ws(s):
    s.sendall(b"\x88\x82abcd" + bytes(b ^ k for b, k in zip(b"\x03\xe8", b"ab")))
    while s.recv(4096):
        pass
    s.close()


def pg_ws(p, instance, path):
    try:
        return p.psql("SELECT id, pending, status, detail FROM requests WHERE instance = '%s' "
                      "AND path = '%s' ORDER BY id" % (instance, path))
    except RuntimeError as e:
        if "does not exist" in str(e):  # no replica connected yet
            return []
        raise


def ws_send(s, payload):
    """One masked text frame from the client (payload < 126 bytes)."""
    key = b"wxyz"
    s.sendall(bytes([0x81, 0x80 | len(payload)]) + key +
              bytes(b ^ key[i % 4] for i, b in enumerate(payload)))


FULL = ("id, %s, duration_us, status, bytes_up, bytes_down, pending, error, detail, decision, "
        "path, upstream")


def local_full(al):
    """Every column a completion changes, per row of the local file."""
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(al.dir, "audit.db"), uri=True)
    try:
        rows = db.execute("SELECT " + FULL % "ts" + " FROM requests ORDER BY id").fetchall()
    finally:
        db.close()
    return [r[:6] + (bool(r[6]),) + r[7:] for r in rows]


def pg_full(p, instance):
    rows = p.psql("SELECT " + FULL % "(extract(epoch from ts) * 1000000)::bigint" +
                  " FROM requests WHERE instance = '%s' ORDER BY id" % instance)
    return [tuple(int(v) for v in r[:6]) + (r[6] == "t",) + tuple(r[7:]) for r in rows]


def wait_equal(al, p, instance, timeout=10):
    """Waits until PostgreSQL holds exactly the local file's rows, every
    column a completion changes equal (the pending ones completed too)."""
    try:
        wait_until(lambda: pg_full(p, instance) == local_full(al), timeout,
                   "PostgreSQL equal to the local file", interval=0.1)
    except altest.TestFailure:
        eq(pg_full(p, instance), local_full(al), "PostgreSQL's rows (vs the local file's)")


def local_ws(al, path):
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(al.dir, "audit.db"), uri=True)
    try:
        return db.execute("SELECT pending, status FROM requests WHERE path = ?",
                          (path,)).fetchall()
    finally:
        db.close()


def ws_fleet(t, instance, **kw):
    """A fresh store, an upstream, a websocket origin and a replica shipping there."""
    p = reset_pg()
    up = t.upstream()
    o = WsOrigin()
    t.defer(o.stop)
    return p, up, o, start(t, sink={"postgres": p.uri(), "instance": instance}, **kw)


@test
def batched_websocket_pending_row(t):
    """Batched durability: a websocket's row is in the local file pending
    from its 101 and reaches PostgreSQL pending at once; the rows after it
    are not held back (issue 16: they waited up to 60 s). Its close ships
    the completed row as an update of that same PostgreSQL row. A socket
    cut by a crash leaves its row pending in both stores."""
    p, up, o, a = ws_fleet(t, "wsi")
    eq(send(a, up, "/echo/before").status, 200, "a request before the socket")
    wait_shipped(a, p, "wsi", 1)
    s = open_ws(a, o, "/ws")
    wait_until(lambda: [r[3] for r in local_rows(a)] == ["/echo/before", "/ws"], 5,
               "the socket's row in the local file while it is open", interval=0.05)
    t0 = time.monotonic()
    for i in range(3):
        eq(send(a, up, "/echo/after/%d" % i).status, 200, "a request while the socket is open")
    wait_until(lambda: pg_count(p, "wsi") == 5, 5,
               "the rows after the open socket in PostgreSQL within seconds", interval=0.05)
    check(time.monotonic() - t0 < 5, "rows past an open socket took %.1fs" %
          (time.monotonic() - t0))
    eq([(r[1], r[2]) for r in pg_ws(p, "wsi", "/ws")], [("t", "101")],
       "the open socket's row, pending")
    eq(pg_full(p, "wsi"), local_full(a), "PostgreSQL's rows equal the local file's (one pending)")
    ws_send(s, b"hello")
    ws_send(s, b"again")
    time.sleep(0.3)
    eq(send(a, up, "/echo/during").status, 200, "a request later")
    close_ws(s)
    wait_until(lambda: local_ws(a, "/ws") == [(0, 101)], 5, "completed locally", interval=0.05)
    wait_equal(a, p, "wsi")
    got = pg_ws(p, "wsi", "/ws")
    eq([(r[1], r[2]) for r in got], [("f", "101")], "the socket's row, completed, once")
    d = json.loads(got[0][3])["ws"]
    eq((d["close_client"], d["messages_up"]), (1000, 2), "its detail")
    check(a.metrics().get("airlock_audit_sink_completions_total") == 1, "counted completion")

    # a crash with a socket open: the row stays pending, here and there
    s = open_ws(a, o, "/cut")
    wait_until(lambda: [(r[1], r[2]) for r in pg_ws(p, "wsi", "/cut")] == [("t", "101")], 5,
               "the /cut row in PostgreSQL, pending", interval=0.05)
    a.kill()
    s.close()
    eq(local_ws(a, "/cut"), [(1, 101)], "the cut socket's row after kill -9")
    a.start()
    eq(send(a, up, "/echo/restarted").status, 200, "served after the restart")
    wait_shipped(a, p, "wsi", 8)
    wait_equal(a, p, "wsi")
    eq([(r[1], r[2]) for r in pg_ws(p, "wsi", "/cut")], [("t", "101")],
       "the cut socket's row stays pending")
    check("forgot 1 id(s) in sink_pending" in a.log(), "the restart forgot the cut row's id")


@test
def websocket_completes_after_old_threshold(t):
    """A socket that outlives the old 60 s rule (it shipped pending and its
    completion stayed local for good): its row is pending in PostgreSQL
    while open, and equal to the local one (status, bytes, duration,
    detail, pending false) once it closes, with other traffic around it.
    There is no age threshold any more: the row ships pending within the
    grace, so the test needs no ageing."""
    p, up, o, a = ws_fleet(t, "wso")
    s = open_ws(a, o, "/long")
    wait_until(lambda: [(r[1], r[2]) for r in pg_ws(p, "wso", "/long")] == [("t", "101")], 5,
               "the open socket's row shipped pending", interval=0.05)
    for i in range(5):
        ws_send(s, b"m%d" % i)
        eq(send(a, up, "/echo/x/%d" % i).status, 200, "traffic while the socket is open")
    wait_shipped(a, p, "wso", 6)
    close_ws(s)
    wait_until(lambda: local_ws(a, "/long") == [(0, 101)], 5, "completed locally",
               interval=0.05)
    wait_equal(a, p, "wso")
    row = p.psql("SELECT pending, status, bytes_up, duration_us > 0, detail FROM requests "
                 "WHERE instance = 'wso' AND path = '/long'")
    eq(len(row), 1, "one row for the socket")
    eq(row[0][:4], ["f", "101", "10", "t"], "completed: status, payload bytes, duration")
    eq(json.loads(row[0][4])["ws"]["messages_up"], 5, "detail")


@test
def completion_ships_after_restart(t):
    """The socket's row shipped pending, then it closed while PostgreSQL
    was down and airlock was stopped (SIGTERM) or killed (kill -9) before
    the completion could go: the next start ships it."""
    p, up, o, a = ws_fleet(t, "wsr")
    eq(send(a, up, "/echo/first").status, 200, "served")
    for how in ("stop", "kill"):
        path = "/ws-" + how
        s = open_ws(a, o, path)
        wait_until(lambda: [r[1] for r in pg_ws(p, "wsr", path)] == ["t"], 5,
                   "%s shipped pending" % path, interval=0.05)
        p.stop_server()
        ws_send(s, b"bye")
        close_ws(s)
        wait_until(lambda: local_ws(a, path) == [(0, 101)], 5, "completed locally",
                   interval=0.05)
        eq(send(a, up, "/echo/down-" + how).status, 200, "served while PostgreSQL is down")
        if how == "stop":
            a.stop()
        else:  # once the batched row of /echo/down-kill is committed
            wait_until(lambda: local_rows(a)[-1][3] == "/echo/down-kill", 5, "committed",
                       interval=0.05)
            a.kill()
        p.start()
        a.start()
        wait_equal(a, p, "wsr")
        eq([r[1] for r in pg_ws(p, "wsr", path)], ["f"], "%s completed after the restart" % path)


@test
def kill9_after_shipping_a_pending_row(t):
    """The batch holding a pending row commits in PostgreSQL and airlock
    dies before it saves the mark (and the row's id) locally; the row was
    completed locally meanwhile (edited in here: that window is a COPY
    long). The restart takes PostgreSQL's mark, finds the row pending there,
    and ships the completion."""
    p, up, o, a = ws_fleet(t, "wsk", env={"AIRLOCK_TEST_SINK_KILL_AFTER_COMMITS": "2"})
    eq(send(a, up, "/echo/one").status, 200, "served")
    wait_shipped(a, p, "wsk", 1)
    s = open_ws(a, o, "/ws")
    check(a.wait(20) is not None, "airlock killed itself after the pending row's commit")
    s.close()
    eq(a.exit_rc, -signal.SIGKILL, "exit by SIGKILL")
    eq([r[1] for r in pg_ws(p, "wsk", "/ws")], ["t"], "the row pending in PostgreSQL")
    db = sqlite3.connect(os.path.join(a.dir, "audit.db"))
    eq(db.execute("SELECT shipped_id FROM sink_state").fetchall(), [(1,)], "local mark behind")
    db.execute("UPDATE requests SET pending = 0, duration_us = 4321, bytes_up = 3, "
               "bytes_down = 4, detail = '{\"ws\": {\"messages_up\": 1}}' WHERE path = '/ws'")
    db.commit()
    db.close()
    a.env = None
    a.start()
    eq(send(a, up, "/echo/two").status, 200, "served after the restart")
    wait_equal(a, p, "wsk")
    eq(p.psql("SELECT pending, duration_us, detail FROM requests WHERE instance = 'wsk' AND "
              "path = '/ws'"), [["f", "4321", '{"ws": {"messages_up": 1}}']], "completed")


@test
def strict_pending_rows_ship_and_complete(t):
    """Strict durability: every row is pending from the request's start. A
    long one (a slow response, a websocket) ships pending once older than
    the grace, the rows after it follow at once, and its completion
    updates it; short ones ship once, completed."""
    p, up, o, a = ws_fleet(t, "strict", audit={"durability": "strict"})
    eq(send(a, up, "/echo/first").status, 200, "served")
    wait_shipped(a, p, "strict", 1)
    s = open_ws(a, o, "/ws")
    res = {}
    th = threading.Thread(target=lambda: res.update(r=send(a, up, "/slow/3000?rate=1000")))
    th.start()
    wait_until(lambda: len(local_rows(a)) == 3, 5, "the slow request's row, begun",
               interval=0.05)
    t0 = time.monotonic()
    for i in range(3):
        eq(send(a, up, "/echo/after/%d" % i).status, 200, "served")
    wait_until(lambda: pg_count(p, "strict") == 6, 5,
               "the rows after the pending ones in PostgreSQL within seconds", interval=0.05)
    check(time.monotonic() - t0 < 5, "took %.1fs" % (time.monotonic() - t0))
    pend = {r[1]: r[0] for r in p.psql("SELECT pending, path FROM requests "
                                       "WHERE instance = 'strict'")}
    eq((pend["/ws"], pend["/slow/3000"]), ("t", "t"), "the long rows pending while under way")
    th.join(20)
    eq(res["r"].status, 200, "the slow response")
    ws_send(s, b"x")
    close_ws(s)
    wait_until(lambda: all(not r[6] for r in local_full(a)), 5, "all completed locally",
               interval=0.05)
    wait_equal(a, p, "strict")
    check(a.metrics().get("airlock_audit_sink_completions_total") >= 2, "completions counted")


@test
def migrate_creates_schema_and_partition(t):
    p = reset_pg()
    uri = "postgresql://%s@127.0.0.1:%d/%s" % (p.user, p.port, p.db)
    env = {"PGPASSWORD": p.password}
    rc, out, err = cli(t, "migrate", "--db", uri, env=env)
    eq(rc, 0, "migrate: " + err)
    check("schema version 2 (created)" in out and p.password not in out, out)
    rc, out, err = cli(t, "migrate", "--db", uri, env=env)
    check(rc == 0 and "already current" in out, out + err)
    eq(p.psql("SELECT max(version) FROM schema_version"), [["2"]], "schema_version")
    types = dict((r[0], r[1]) for r in p.psql(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = 'requests'"))
    eq((types["ts"], types["client"], types["secrets"], types["pending"]),
       ("timestamp with time zone", "inet", "jsonb", "boolean"), "native types")
    parts = p.psql("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                   "WHERE i.inhparent = 'requests'::regclass")
    eq(sorted(r[0] for r in parts),
       ["requests_default", "requests_p" + time.strftime("%Y%m%d", time.gmtime())],
       "today's partition (and the default one for broken clocks)")
    idx = {r[0] for r in p.psql("SELECT indexname FROM pg_indexes WHERE tablename = 'requests'")}
    for want in ("requests_ts", "requests_host_ts", "requests_sandbox_ts",
                 "requests_tool_call_ts", "requests_decision_ts", "requests_instance_id"):
        check(want in idx, "index %s (have %s)" % (want, sorted(idx)))
    # PGPASSFILE works as libpq's way to keep the password out of the URI
    pgpass = os.path.join(t.tmp, "pgpass")
    with open(pgpass, "w") as fh:
        fh.write("127.0.0.1:%d:%s:%s:%s\n" % (p.port, p.db, p.user, p.password))
    os.chmod(pgpass, 0o600)
    rc, out, err = cli(t, "migrate", "--db", uri, env={"PGPASSFILE": pgpass})
    eq(rc, 0, "migrate with PGPASSFILE: " + err)
    rc, out, err = cli(t, "migrate", "--db", "/nonexistent-dir/x.db")
    eq(rc, 1, "sqlite migrate of an impossible path")


if __name__ == "__main__":
    try:
        sys.exit(altest.main())
    finally:
        if PG is not None:
            PG.stop()
