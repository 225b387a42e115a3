"""Command-line gaps of issue 19: --help on every subcommand, `check` on the
audit path and risky setups, `audit tail -n 0`, `audit stats --format csv`,
the table's full method and its rule/reason column, a client that leaves
while waiting for a slow answer audited as such, `secrets env` without the
secret values.

    python3 test_cli.py --airlock build/proxy/airlock
"""

import csv
import io
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import altest
from altest import TestFailure, check, eq, test, wait_until


def cli(*args, env=None, timeout=30, user=None):
    cmd = [altest.RUN.airlock_bin] + list(args)
    if user is not None:
        cmd = ["setpriv", "--reuid=%s" % user, "--regid=nogroup", "--clear-groups"] + cmd
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                       env=env)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def rows(al):
    path = os.path.join(al.dir, "audit.db")
    if not os.path.isfile(path):
        return []
    c = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=5)
    c.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in c.execute("SELECT * FROM requests ORDER BY id")]
    finally:
        c.close()


def wait_rows(al, n, timeout=10):
    return wait_until(lambda: rows(al) if len(rows(al)) >= n else None, timeout,
                      "%d audit rows" % n)


HELP = [["run"], ["check"], ["policy", "check"], ["policy", "replay"], ["policy", "lint"],
        ["audit", "query"], ["audit", "stats"], ["audit", "tail"], ["audit", "migrate"],
        ["secrets", "env"], ["sandbox", "env"], ["ca", "init"], ["ca", "env"], ["policy"],
        ["audit"], ["ca"], ["secrets"], ["sandbox"]]


@test
def test_help_on_every_subcommand(t):
    for sub in HELP:
        for flag in ("--help", "-h"):
            rc, out, err = cli(*(sub + [flag]))
            eq(rc, 0, "%s %s exit code (%s)" % (" ".join(sub), flag, err.strip()[:200]))
            check(out.startswith("usage:"), "%s %s: usage on stdout: %r" % (sub, flag, out[:200]))
            eq(err, "", "%s %s: nothing on stderr" % (sub, flag))
    # a real option error is still exit 2 on stderr
    rc, out, err = cli("run", "--bogus")
    eq(rc, 2, "run --bogus")
    check("unknown option" in err and out == "", "run --bogus: %r %r" % (out, err))


def write_cfg(t, name, cfg, policy=None):
    d = os.path.join(t.tmp, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "policy.json"), "w") as fh:
        json.dump(policy or {"default": "deny", "rules": []}, fh)
    cfg = dict({"policy": "policy.json"}, **cfg)
    path = os.path.join(d, "airlock.json")
    with open(path, "w") as fh:
        json.dump(cfg, fh)
    return d, path


@test
def test_check_audit_path(t):
    """`check` fails (exit 2, the path named) when the audit database cannot
    be written where the config puts it."""
    d, cfg = write_cfg(t, "nodir", {"audit": {"db": "missing/dir/audit.db"}})
    rc, out, err = cli("check", "--config", cfg)
    eq(rc, 2, "check with an audit folder that does not exist (%s)" % err)
    check(os.path.join(d, "missing/dir") in err and "audit.db" in err, "message: %r" % err)
    check("ok" not in out, "check said ok: %r" % out)
    d, cfg = write_cfg(t, "isdir", {"audit": {"db": "adir"}})
    os.makedirs(os.path.join(d, "adir"))
    rc, out, err = cli("check", "--config", cfg)
    eq(rc, 2, "check with a folder as the audit database (%s)" % err)
    check("not a regular file" in err, "message: %r" % err)
    # a folder the checking user cannot write (root would bypass the mode)
    if os.geteuid() == 0:
        import tempfile
        import shutil
        base = tempfile.mkdtemp(prefix="airlock-cli-")
        t.defer(shutil.rmtree, base, True)
        os.chmod(base, 0o755)
        ro = os.path.join(base, "ro")
        os.makedirs(ro)
        os.chmod(ro, 0o755)  # root's, not writable by nobody
        with open(os.path.join(base, "policy.json"), "w") as fh:
            json.dump({"default": "deny", "rules": []}, fh)
        cfgp = os.path.join(base, "airlock.json")
        with open(cfgp, "w") as fh:
            json.dump({"policy": "policy.json", "audit": {"db": os.path.join(ro, "a.db")}}, fh)
        os.chmod(cfgp, 0o644)
        rc, out, err = cli("check", "--config", cfgp, user="nobody")
        eq(rc, 2, "check as nobody with a root-owned audit folder (%s)" % err)
        check(ro in err and "not writable" in err, "message: %r" % err)
        rc, out, err = cli("check", "--config", cfgp)
        eq(rc, 0, "the same as root (%s)" % err)
    # a writable place: ok
    d, cfg = write_cfg(t, "good", {"audit": {"db": "audit.db"}})
    rc, out, err = cli("check", "--config", cfg)
    eq(rc, 0, "check with a writable audit path (%s)" % err)
    check(out.strip().endswith(": ok"), "check output: %r" % out)
    eq(err, "", "no warning for a safe setup")


@test
def test_check_warns_about_risky_setups(t):
    d, cfg = write_cfg(t, "risky", {"listen": [{"addr": "0.0.0.0:%d" % altest.free_port()}],
                                    "audit": {"db": None}},
                       policy={"default": "allow", "rules": []})
    rc, out, err = cli("check", "--config", cfg)
    eq(rc, 0, "warnings keep exit 0 (%s)" % err)
    check("0.0.0.0" in err and "no sandboxes" in err, "non-loopback listener warning: %r" % err)
    check("audit.db is null" in err, "audit off warning: %r" % err)
    check('"default": "allow"' in err, "default allow warning: %r" % err)
    check(out.strip().endswith(": ok"), "check output: %r" % out)
    # with a sandbox the listener is fine
    d, cfg = write_cfg(t, "sbx", {"listen": [{"addr": "0.0.0.0:%d" % altest.free_port()}],
                                  "sandboxes": [{"name": "a", "cidrs": ["10.0.0.0/8"]}]})
    rc, out, err = cli("check", "--config", cfg)
    eq((rc, err), (0, ""), "a sandboxed public listener")


def traffic(t):
    """An airlock with rows: two allowed GETs, a denied GET, a denied CONNECT."""
    up = t.upstream()
    policy = {"default": "deny", "allow_addresses": ["127.0.0.0/8", "::1/128"],
              "rules": [{"name": "up-allowed", "hosts": ["upstream.test"], "ports": [up.port],
                         "action": "allow"}]}
    al = t.airlock(policy=policy)
    for path in ("/echo/a", "/echo/b"):
        r = al.curl(["http://upstream.test:%d%s" % (up.port, path)])
        eq(r.status, 200, "GET " + path)
    r = al.curl(["http://denied.test:%d/x" % up.port])
    eq(r.status, 403, "denied GET")
    c = al.conn()
    c.send(b"CONNECT denied.test:443 HTTP/1.1\r\nHost: denied.test:443\r\n\r\n")
    eq(c.read_response("CONNECT").status, 403, "denied CONNECT")
    c.close()
    wait_rows(al, 4)
    return up, al


@test
def test_audit_tail_n0_and_follow(t):
    up, al = traffic(t)
    db = os.path.join(al.dir, "audit.db")
    for fmt, want in (("table", ""), ("jsonl", ""), ("csv", ""), ("json", "[]\n")):
        rc, out, err = cli("audit", "tail", "--db", db, "-n", "0", "--format", fmt)
        eq(rc, 0, "tail -n 0 --format %s: %s" % (fmt, err))
        eq(out, want, "tail -n 0 --format %s prints no row" % fmt)
    rc, out, err = cli("audit", "tail", "--db", db, "-n", "2", "--format", "jsonl")
    eq(len(out.splitlines()), 2, "tail -n 2")
    # -n 0 --follow: only what comes next
    outp = os.path.join(t.tmp, "follow.out")
    with open(outp, "wb") as fh:
        p = t.popen(subprocess.Popen([altest.RUN.airlock_bin, "audit", "tail", "--db", db, "-n",
                                      "0", "--follow", "--format", "jsonl"], stdout=fh,
                                     stderr=subprocess.PIPE))
    time.sleep(0.5)  # the first poll has run (not synchronisation of the result)
    r = al.curl(["http://upstream.test:%d/echo/later" % up.port])
    eq(r.status, 200, "later GET")

    def got():
        with open(outp) as fh:
            lines = [x for x in fh.read().splitlines() if x.strip()]
        return lines if lines else None
    lines = wait_until(got, 10, "the followed row")
    time.sleep(0.5)
    lines = got()
    p.terminate()
    p.wait(5)
    eq([json.loads(x)["path"] for x in lines], ["/echo/later"], "tail -n 0 --follow rows")


@test
def test_audit_stats_csv(t):
    up, al = traffic(t)
    db = os.path.join(al.dir, "audit.db")
    rc, out, err = cli("audit", "stats", "--db", db, "--format", "csv")
    eq(rc, 0, "stats --format csv: " + err)
    cr = list(csv.DictReader(io.StringIO(out)))
    tot = [x for x in cr if x["section"] == "total"]
    eq(len(tot), 1, "one total row: %r" % out)
    eq((tot[0]["total"], tot[0]["allow"], tot[0]["deny"]), ("4", "2", "2"), "totals")
    hosts = {x["key"]: x for x in cr if x["section"] == "host"}
    eq(hosts["upstream.test"]["allow"], "2", "host upstream.test")
    eq(hosts["denied.test"]["deny"], "2", "host denied.test")
    check(any(x["section"] == "denied_host" for x in cr), "denied hosts section")
    rc, out, err = cli("audit", "stats", "--db", db, "--format", "csv", "--by", "rule")
    eq(rc, 0, "stats --by rule csv: " + err)
    cr = list(csv.DictReader(io.StringIO(out)))
    eq(sorted((x["section"], x["key"], x["total"]) for x in cr),
       [("rule", "default", "2"), ("rule", "up-allowed", "2"), ("total", "", "4")],
       "stats --by rule csv")


@test
def test_audit_table_method_rule_reason(t):
    up, al = traffic(t)
    db = os.path.join(al.dir, "audit.db")
    rc, out, err = cli("audit", "query", "--db", db)
    eq(rc, 0, "query table: " + err)
    lines = out.splitlines()
    check("RULE/REASON" in lines[0], "header: %r" % lines[0])
    check(all(len(x) <= 120 for x in lines), "table lines over 120 columns")
    conn = [x for x in lines if "denied.test" in x and "CONNECT" in x]
    check(len(conn) == 1 and "CONNE~" not in out, "CONNECT in full: %r" % out)
    check("default/host_not_al" in conn[0], "rule/reason of the CONNECT: %r" % conn[0])
    ok = [x for x in lines if "/echo/a" in x]
    check(len(ok) == 1 and ok[0].rstrip().endswith("up-allowed"), "allowed row: %r" % ok)


class SlowHead:
    """Answers every request after `delay` seconds (the head too)."""

    def __init__(self, delay):
        self.delay = delay
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(c,), daemon=True).start()

    def _one(self, c):
        try:
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = c.recv(4096)
                if not d:
                    return
                buf += d
            time.sleep(self.delay)  # the slow answer under test
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            time.sleep(0.5)
        except OSError:
            pass
        finally:
            c.close()

    def stop(self):
        self.stopped = True
        self.sock.close()


@test
def test_client_gone_while_waiting_is_audited(t):
    """A client that closes while airlock waits for a slow answer: the row
    says so (error client_closed), not a clean 200; a client that waits
    gets a row without error."""
    s = SlowHead(1.0)
    t.defer(s.stop)
    al = t.airlock()
    c = al.conn()
    c.send(b"GET http://upstream.test:%d/gone HTTP/1.1\r\nHost: upstream.test:%d\r\n\r\n" %
           (s.port, s.port))
    time.sleep(0.3)  # the request is upstream, the answer not begun
    c.close()
    c = al.conn()
    c.send(b"GET http://upstream.test:%d/stays HTTP/1.1\r\nHost: upstream.test:%d\r\n"
           b"Connection: close\r\n\r\n" % (s.port, s.port))
    eq(c.read_response().status, 200, "the waiting client's answer")
    c.close()
    rs = wait_rows(al, 2, timeout=15)
    by = {r["path"]: r for r in rs}
    eq(by["/gone"]["error"], "client_closed", "row of the client that left: %r" % by["/gone"])
    eq(by["/stays"]["error"], "", "row of the client that waited")
    eq(by["/stays"]["status"], 200, "status of the client that waited")


@test
def test_audit_secret_filter_finds_refusals(t):
    """`audit query|stats --secret X` also returns X's refusals (the name is
    in the row's error, "<reason>: X"), not only the rows X went out in."""
    up = t.upstream()
    sec = t.file("secrets.json", json.dumps({"secrets": {
        "tok": {"from": {"value": "real-secret-value-1234"}, "placeholder": "PH_TOK_12345678",
                "hosts": ["api.test"], "allow_plaintext": True,
                "header": {"name": "X-Key", "format": "{}"}}}}).encode())
    al = t.airlock(config={"secrets": sec, "resolve": {"api.test": "127.0.0.1"}})
    r = al.curl(["-H", "X-Key: PH_TOK_12345678", "http://api.test:%d/echo/in" % up.port])
    eq(r.status, 200, "injected")
    r = al.curl(["-H", "X-Key: PH_TOK_12345678", "http://upstream.test:%d/echo/out" % up.port])
    eq(r.status, 403, "refused out of scope")
    r = al.curl(["http://upstream.test:%d/echo/none" % up.port])
    eq(r.status, 200, "no secret")
    wait_rows(al, 3)
    db = os.path.join(al.dir, "audit.db")
    rc, out, err = cli("audit", "query", "--db", db, "--secret", "tok", "--format", "json")
    eq(rc, 0, "query --secret: " + err)
    got = sorted((x["path"], x["decision"], x["error"]) for x in json.loads(out))
    eq(got, [("/echo/in", "allow", ""), ("/echo/out", "deny", "secret_out_of_scope: tok")],
       "query --secret tok")
    rc, out, err = cli("audit", "stats", "--db", db, "--secret", "tok", "--format", "json")
    eq(json.loads(out)["total"], 2, "stats --secret tok total")
    # grouped by secret: the refusal counts under the secret it was about
    rc, out, err = cli("audit", "stats", "--db", db, "--by", "secret", "--format", "json")
    eq(rc, 0, "stats --by secret: " + err)
    g = [x for x in json.loads(out)["groups"] if x["key"] == "tok"]
    eq([(x["total"], x["allow"], x["deny"]) for x in g], [(2, 1, 1)],
       "stats --by secret: tok's injection and its refusal")


if __name__ == "__main__":
    sys.exit(altest.main())
