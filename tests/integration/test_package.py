"""Install and package (issue 19): `cmake --install` layout (what `make
install` runs), the Debian package (built with packaging/deb/build.sh from
this build, installed with dpkg -i, run as the unit runs it and as root
dropping to the airlock user, one request audited in /var/lib/airlock, then
purged without a trace), and the `user` key's privilege drop.

The package test changes this machine (a package, a system user, /etc and
/var/lib folders) and undoes it, even on failure; it runs only as root and
skips itself when airlock is already installed here or the user airlock
exists (never touching someone's installation), and waits for another run
of itself through a lock file. Without systemd as PID 1 the unit's commands
are run with setpriv as the unit would (User=, AmbientCapabilities=,
NoNewPrivileges=).
"""

import fcntl
import grp
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import tempfile
import time

import altest
from altest import check, eq, test, wait_until

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD_SH = os.path.join(SRC, "packaging", "deb", "build.sh")
UNIT = "/lib/systemd/system/airlock.service"
LOCK = os.path.join(tempfile.gettempdir(), "airlock-test-package.lock")


def build_dir():
    """The cmake tree the airlock binary under test comes from."""
    d = os.path.dirname(os.path.dirname(altest.RUN.airlock_bin))
    return d if os.path.exists(os.path.join(d, "CMakeCache.txt")) else None


def run(cmd, timeout=60, check_rc=True, **kw):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                       **kw)
    out, err = p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
    if check_rc and p.returncode != 0:
        raise altest.TestFailure("%s: exit %d\n%s%s" % (" ".join(cmd), p.returncode, out, err))
    return p.returncode, out, err


def mode_owner(path):
    st = os.lstat(path)
    return (stat.S_IMODE(st.st_mode), pwd.getpwuid(st.st_uid).pw_name,
            grp.getgrgid(st.st_gid).gr_name)


def proc_status(pid):
    """/proc/PID/status as {key: value string}."""
    out = {}
    with open("/proc/%d/status" % pid) as fh:
        for line in fh:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def ids(v):
    return [int(x) for x in v.split()]


def check_dropped(pid, uid, gid, what):
    """Every thread of pid runs as uid/gid, only in group gid, with no
    capability and no_new_privs."""
    tasks = os.listdir("/proc/%d/task" % pid)
    check(len(tasks) >= 2, "%s: expected worker threads, got %d tasks" % (what, len(tasks)))
    for tid in tasks:
        st = proc_status(int(tid))
        eq(ids(st["Uid"]), [uid] * 4, "%s: thread %s Uid (real, effective, saved, fs)"
           % (what, tid))
        eq(ids(st["Gid"]), [gid] * 4, "%s: thread %s Gid" % (what, tid))
        eq(ids(st.get("Groups", "")), [gid], "%s: thread %s supplementary groups" % (what, tid))
        for cap in ("CapPrm", "CapEff", "CapAmb"):
            eq(int(st[cap], 16), 0, "%s: thread %s %s" % (what, tid, cap))
        eq(st.get("NoNewPrivs"), "1", "%s: thread %s NoNewPrivs" % (what, tid))


def free_low_port():
    """A port below 1024 nothing listens on at 127.0.0.1 (we are root)."""
    for port in range(980, 700, -1):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise altest.TestFailure("no free port below 1024")


def audit_rows(db, where="1"):
    """Rows of the audit table (read-only, from the file's owner's side)."""
    con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=5)
    try:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("SELECT * FROM requests WHERE " + where)]
    finally:
        con.close()


class Daemon:
    """An airlock process started by hand (not through altest.Airlock: the
    package's binary and config, maybe under setpriv)."""

    def __init__(self, t, argv, log_path, ports):
        self.log_path = log_path
        self.ports = ports
        logf = open(log_path, "ab")
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=logf, cwd="/")
        finally:
            logf.close()
        t.popen(self.proc)
        self.pid = self.proc.pid

    def log(self):
        with open(self.log_path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")

    def wait_ready(self, what):
        def up():
            if self.proc.poll() is not None:
                raise altest.TestFailure("%s exited at start (rc=%s):\n%s" %
                                         (what, self.proc.returncode, self.log()[-3000:]))
            return all(altest.listening(p) for p in self.ports)
        wait_until(up, 20, "%s to listen on %s" % (what, self.ports))

    def stop(self, what):
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        try:
            rc = self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(5)
            raise altest.TestFailure("%s did not stop on SIGTERM" % what)
        log = self.log()
        for pat in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            check(pat not in log, "%s: sanitizer report in its log:\n%s" % (what, log[-3000:]))
        eq(rc, 0, "%s exit code (log:\n%s)" % (what, log[-2000:]))


# ---------------------------------------------------------------------------
# make install layout


@test
def test_install_layout(t):
    bd = build_dir()
    if bd is None:
        print("    skipped: %s is not in a cmake build tree" % altest.RUN.airlock_bin)
        return
    usr = os.path.join(t.tmp, "usr-root")
    run(["cmake", "--install", bd, "--prefix", "/usr"], env=dict(os.environ, DESTDIR=usr))
    want = {
        "usr/bin/airlock": 0o755,
        "etc/airlock/airlock.json": 0o644,
        "etc/airlock/policy.json": 0o644,
        "lib/systemd/system/airlock.service": 0o644,
        "usr/share/doc/airlock/README.md": 0o644,
        "usr/share/doc/airlock/examples/policy.example.json": 0o644,
        "usr/share/doc/airlock/examples/secrets.example.json": 0o644,
    }
    got = {}
    for root, _, files in os.walk(usr):
        for f in files:
            p = os.path.join(root, f)
            got[os.path.relpath(p, usr)] = stat.S_IMODE(os.stat(p).st_mode)
    eq(got, want, "files and modes under DESTDIR for --prefix /usr")
    with open(os.path.join(usr, "etc/airlock/airlock.json")) as fh:
        cfg = json.load(fh)
    eq(cfg.get("user"), "airlock", "packaged config: user")
    eq(cfg["policy"], "/etc/airlock/policy.json", "packaged config: policy")
    eq(cfg["audit"]["db"], "/var/lib/airlock/audit.db", "packaged config: audit.db")
    eq(cfg["ca"]["dir"], "/var/lib/airlock/ca", "packaged config: ca.dir")
    with open(os.path.join(usr, "lib/systemd/system/airlock.service")) as fh:
        unit = fh.read()
    check("ExecStart=/usr/bin/airlock run --config /etc/airlock/airlock.json" in unit,
          "unit's ExecStart: %r" % unit)

    # another prefix: the config and the unit name that prefix's paths
    loc = os.path.join(t.tmp, "local-root")
    run(["cmake", "--install", bd, "--prefix", "/usr/local"], env=dict(os.environ, DESTDIR=loc))
    check(os.access(os.path.join(loc, "usr/local/bin/airlock"), os.X_OK), "/usr/local/bin/airlock")
    with open(os.path.join(loc, "usr/local/etc/airlock/airlock.json")) as fh:
        cfg = json.load(fh)
    eq(cfg["policy"], "/usr/local/etc/airlock/policy.json", "/usr/local config: policy")
    eq(cfg["audit"]["db"], "/var/lib/airlock/audit.db", "/usr/local config: audit.db")
    with open(os.path.join(loc, "usr/local/lib/systemd/system/airlock.service")) as fh:
        unit = fh.read()
    check("ExecStart=/usr/local/bin/airlock run --config /usr/local/etc/airlock/airlock.json"
          in unit, "/usr/local unit's ExecStart")
    check("/usr/bin/" not in unit, "/usr/local unit still names /usr/bin")

    # a second install keeps an edited config
    p = os.path.join(usr, "etc/airlock/airlock.json")
    with open(p, "w") as fh:
        fh.write('{"policy": "mine.json"}\n')
    run(["cmake", "--install", bd, "--prefix", "/usr"], env=dict(os.environ, DESTDIR=usr))
    with open(p) as fh:
        eq(fh.read(), '{"policy": "mine.json"}\n', "config after a second install")


# ---------------------------------------------------------------------------
# the user key: privilege drop


def nobody_dir(t, name):
    """A folder under /tmp that the user nobody owns (its audit database)."""
    d = tempfile.mkdtemp(prefix="airlock-%s-" % name)
    t.defer(shutil.rmtree, d, True)
    os.chown(d, 65534, 65534)
    return d


@test
def test_privilege_drop(t):
    if os.geteuid() != 0:
        print("    skipped: needs root")
        return
    pw = pwd.getpwnam("nobody")
    d = nobody_dir(t, "drop")
    db = os.path.join(d, "audit.db")
    up = t.upstream()
    al = t.airlock(config={"user": "nobody", "audit": {"db": db}, "log_level": "info"})
    r = al.curl(["http://127.0.0.1:%d/echo" % up.port])
    eq(r.status, 200, "request through airlock running as nobody")
    # the worker served it, so the start (and its drop) is over
    check_dropped(al.pid, pw.pw_uid, pw.pw_gid, "airlock with \"user\": \"nobody\"")
    check("running as user nobody (uid %d, gid %d)" % (pw.pw_uid, pw.pw_gid) in al.log(),
          "no log line about the switch:\n%s" % al.log_tail())
    check("running as root" not in al.log(), "root warning despite \"user\"")
    rows = wait_until(lambda: audit_rows(db, "path = '/echo'"), 10, "the request's audit row")
    eq(rows[0]["status"], 200, "audit row status")
    _, owner, group = mode_owner(db)
    eq((owner, group), ("nobody", "nogroup"), "audit.db owner (opened after the drop)")
    m = al.metrics()
    check(m.get("process_open_fds") > 0, "process_open_fds after the drop")
    # SIGHUP as nobody: the config is not readable any more; the running
    # configuration stays and airlock keeps serving
    al.signal(signal.SIGHUP)
    wait_until(lambda: "reload" in al.log(), 10, "the reload's log line")
    eq(al.curl(["http://127.0.0.1:%d/echo" % up.port]).status, 200, "request after SIGHUP")


@test
def test_root_without_user_warns(t):
    if os.geteuid() != 0:
        print("    skipped: needs root")
        return
    al = t.airlock()
    wait_until(lambda: "running as root" in al.log(), 10, "the warning about root")
    line = [ln for ln in al.log().splitlines() if "running as root" in ln][0]
    check(" warn" in line or "WARN" in line.upper(), "not a warning: %r" % line)
    check("\"user\"" in line, "the warning does not name the key: %r" % line)
    st = proc_status(al.pid)
    eq(ids(st["Uid"])[1], 0, "still root")

    al2 = t.airlock(config={"user": "root"})
    wait_until(lambda: "running as root (\"user\": \"root\")" in al2.log(), 10,
               "the info line for \"user\": \"root\"")
    check("to give up root" not in al2.log(), "warning despite \"user\": \"root\"")


@test
def test_user_errors(t):
    if os.geteuid() != 0:
        print("    skipped: needs root")
        return
    airlock = altest.RUN.airlock_bin
    d = nobody_dir(t, "uerr")
    pol = os.path.join(d, "policy.json")
    with open(pol, "w") as fh:
        json.dump({"default": "deny", "rules": []}, fh)
    os.chmod(pol, 0o644)

    def cfg(name, **kw):
        c = {"listen": [{"addr": "127.0.0.1:%d" % altest.free_port(), "mode": "forward"}],
             "policy": "policy.json", "audit": {"db": os.path.join(d, name + ".db")}}
        c.update(kw)
        p = os.path.join(d, name + ".json")
        with open(p, "w") as fh:
            json.dump(c, fh)
        os.chmod(p, 0o644)
        return p

    # an unknown user: check and run refuse the config, with its location
    p = cfg("nouser", user="no-such-user-airlock-test")
    rc, out, err = run([airlock, "check", "--config", p], check_rc=False)
    eq(rc, 2, "check with an unknown user")
    check("user" in err and "no such user" in err and ":1:" in err, "check's message: %r" % err)
    rc, out, err = run([airlock, "run", "--config", p], check_rc=False, timeout=30)
    eq(rc, 2, "run with an unknown user")

    # an audit folder the user can't write: the start fails and says so
    root_only = tempfile.mkdtemp(prefix="airlock-rootonly-")
    t.defer(shutil.rmtree, root_only, True)
    p = cfg("rootdb", user="nobody", audit={"db": os.path.join(root_only, "audit.db")})
    rc, out, err = run([airlock, "run", "--config", p], check_rc=False, timeout=30)
    eq(rc, 1, "run whose audit folder nobody can't write (%s)" % err[-500:])
    check("as user nobody" in err and "writable" in err, "message: %r" % err[-800:])
    check(not os.path.exists(os.path.join(root_only, "audit.db")), "audit.db made as root")

    # not root, "user" naming someone else: refused
    p = cfg("other", user="daemon")
    rc, out, err = run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                        airlock, "run", "--config", p], check_rc=False, timeout=30)
    eq(rc, 1, "run as nobody with \"user\": \"daemon\" (%s)" % err[-500:])
    check("cannot switch users" in err, "message: %r" % err[-800:])


# ---------------------------------------------------------------------------
# the Debian package


def unit_fields(path):
    out = {}
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if line and not line.startswith(("#", "[")) and "=" in line:
                k, _, v = line.partition("=")
                out.setdefault(k, []).append(v)
    return out


def setpriv_argv(unit):
    """setpriv arguments that start a command as the unit's [Service] would:
    User=/Group=, AmbientCapabilities=, CapabilityBoundingSet=,
    NoNewPrivileges=."""
    argv = ["setpriv", "--reuid=" + unit["User"][0], "--regid=" + unit["Group"][0],
            "--init-groups"]
    amb = " ".join(unit.get("AmbientCapabilities", [])).split()
    caps = ",".join("+" + c.lower().replace("cap_", "") for c in amb)
    if caps:
        argv += ["--inh-caps=" + caps, "--ambient-caps=" + caps]
    bnd = " ".join(unit.get("CapabilityBoundingSet", [])).split()
    argv += ["--bounding-set=-all" + "".join(",+" + c.lower().replace("cap_", "") for c in bnd)]
    if unit.get("NoNewPrivileges", ["no"])[0] == "yes":
        argv.append("--no-new-privs")
    return argv


def dpkg(args, timeout=120):
    """dpkg ARGS, waiting out someone else's dpkg/apt lock."""
    deadline = time.monotonic() + 60
    while True:
        rc, out, err = run(["dpkg"] + args, check_rc=False, timeout=timeout)
        if rc == 0 or "lock" not in err or time.monotonic() > deadline:
            return rc, out, err
        time.sleep(1)


def installed():
    rc, out, _ = run(["dpkg-query", "-W", "-f=${Status}", "airlock"], check_rc=False)
    return rc == 0 and "installed" in out.split() and "not-installed" not in out.split()


def user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def group_exists(name):
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def purge_everything():
    """Cleanup after the package test, whatever state it stopped in."""
    dpkg(["--purge", "airlock"])
    if user_exists("airlock") and pwd.getpwnam("airlock").pw_dir == "/var/lib/airlock":
        run(["userdel", "airlock"], check_rc=False)
    if group_exists("airlock") and not user_exists("airlock"):
        run(["groupdel", "airlock"], check_rc=False)
    for p in ("/etc/airlock", "/var/lib/airlock"):
        shutil.rmtree(p, ignore_errors=True)


@test
def test_deb_install_run_purge(t):
    if os.geteuid() != 0:
        print("    skipped: needs root")
        return
    for tool in ("dpkg", "dpkg-deb", "setpriv", "cmake"):
        if shutil.which(tool) is None:
            print("    skipped: %s missing" % tool)
            return
    bd = build_dir()
    if bd is None:
        print("    skipped: %s is not in a cmake build tree" % altest.RUN.airlock_bin)
        return
    lockf = open(LOCK, "w")
    t.defer(lockf.close)
    wait_until(lambda: _try_lock(lockf), 60, "another package test to finish (%s)" % LOCK,
               interval=0.5)
    if installed() or user_exists("airlock") or os.path.exists("/etc/airlock") or \
            os.path.exists("/var/lib/airlock"):
        print("    skipped: airlock is installed here (package, user or folders): not touching it")
        return

    # build
    out_dir = os.path.join(t.tmp, "deb")
    _, out, _ = run(["sh", BUILD_SH, bd, out_dir, "--fast"], timeout=120)
    deb = out.strip().splitlines()[-1]
    check(deb.endswith(".deb") and os.path.exists(deb), "build.sh printed %r" % out)
    _, fields, _ = run(["dpkg-deb", "-f", deb, "Package", "Depends"])
    check("Package: airlock" in fields and "libssl3" in fields, "control: %r" % fields)

    # install
    t.defer(purge_everything)
    rc, out, err = dpkg(["-i", deb])
    eq(rc, 0, "dpkg -i (%s%s)" % (out, err))
    check(installed(), "dpkg-query: airlock not installed")
    pw = pwd.getpwnam("airlock")
    check(pw.pw_uid < 1000, "airlock is not a system user (uid %d)" % pw.pw_uid)
    eq(pw.pw_dir, "/var/lib/airlock", "airlock's home")
    eq(pw.pw_shell, "/usr/sbin/nologin", "airlock's shell")
    eq(grp.getgrgid(pw.pw_gid).gr_name, "airlock", "airlock's group")
    for path, want in (("/usr/bin/airlock", (0o755, "root", "root")),
                       ("/etc/airlock", (0o750, "root", "airlock")),
                       ("/etc/airlock/airlock.json", (0o640, "root", "airlock")),
                       ("/etc/airlock/policy.json", (0o640, "root", "airlock")),
                       ("/var/lib/airlock", (0o750, "airlock", "airlock")),
                       (UNIT, (0o644, "root", "root"))):
        eq(mode_owner(path), want, "%s mode and owner" % path)
    _, conff, _ = run(["dpkg-query", "-W", "-f=${Conffiles}", "airlock"])
    for f in ("/etc/airlock/airlock.json", "/etc/airlock/policy.json"):
        check(f in conff, "%s is not a conffile: %r" % (f, conff))
    wants = "/etc/systemd/system/multi-user.target.wants/airlock.service"
    if shutil.which("systemctl") and not os.path.isdir("/run/systemd/system"):
        check(os.path.islink(wants), "the unit is not enabled (%s)" % wants)
    if shutil.which("systemd-analyze"):
        rc, out, err = run(["systemd-analyze", "verify", UNIT], check_rc=False)
        eq(rc, 0, "systemd-analyze verify %s: %s%s" % (UNIT, out, err))
    unit = unit_fields(UNIT)
    eq(unit["User"], ["airlock"], "unit User=")
    eq(unit["CapabilityBoundingSet"], ["CAP_NET_BIND_SERVICE"], "unit CapabilityBoundingSet=")
    eq(unit["AmbientCapabilities"], ["CAP_NET_BIND_SERVICE"], "unit AmbientCapabilities=")
    eq(unit["ProtectSystem"], ["strict"], "unit ProtectSystem=")
    eq(unit["ReadWritePaths"], ["/var/lib/airlock"], "unit ReadWritePaths=")
    eq(unit["Type"], ["notify"], "unit Type=")
    check("WatchdogSec" in unit, "unit WatchdogSec=")

    # the admin's edits: free ports (the proxy's below 1024, to need the
    # unit's capability) and a policy that reaches the local upstream
    up = t.upstream()
    port, admin = free_low_port(), altest.free_port()
    with open("/etc/airlock/airlock.json") as fh:
        cfg = json.load(fh)
    cfg["listen"] = [{"addr": "127.0.0.1:%d" % port, "mode": "forward"}]
    cfg["admin"] = "127.0.0.1:%d" % admin
    with open("/etc/airlock/airlock.json", "w") as fh:
        json.dump(cfg, fh, indent=1)
    with open("/etc/airlock/policy.json", "w") as fh:
        json.dump({"default": "deny", "allow_addresses": ["127.0.0.1/32"],
                   "rules": [{"name": "test-upstream", "hosts": ["127.0.0.1"],
                              "ports": [up.port], "action": "allow"}]}, fh)
    eq(mode_owner("/etc/airlock/airlock.json"), (0o640, "root", "airlock"), "edited config")
    # installing the package again (an upgrade's path) keeps the edits
    rc, out, err = dpkg(["-i", deb])
    eq(rc, 0, "dpkg -i over the installed package (%s%s)" % (out, err))
    with open("/etc/airlock/airlock.json") as fh:
        eq(json.load(fh)["listen"], cfg["listen"], "edited config after reinstalling")
    eq(mode_owner("/etc/airlock/airlock.json"), (0o640, "root", "airlock"), "config after reinstall")

    # 1. as the unit runs it: ExecStartPre (CA on first start), ExecStart
    priv = setpriv_argv(unit)
    for pre in unit.get("ExecStartPre", []):
        run(priv + shlex.split(pre), timeout=60)
    eq(mode_owner("/var/lib/airlock/ca/ca.key"), (0o600, "airlock", "airlock"), "CA key")
    eq(mode_owner("/var/lib/airlock/ca"), (0o700, "airlock", "airlock"), "CA folder")
    for pre in unit.get("ExecStartPre", []):  # a second start keeps the CA
        before = os.stat("/var/lib/airlock/ca/ca.key").st_ino
        run(priv + shlex.split(pre), timeout=60)
        eq(os.stat("/var/lib/airlock/ca/ca.key").st_ino, before, "CA after a second start")
    argv = priv + shlex.split(unit["ExecStart"][0])
    eq(argv[len(priv):], ["/usr/bin/airlock", "run", "--config", "/etc/airlock/airlock.json"],
       "unit's ExecStart")
    d = Daemon(t, argv, os.path.join(t.tmp, "unit.log"), [port, admin])
    d.wait_ready("airlock as the unit runs it")
    r = altest.curl(["http://127.0.0.1:%d/echo?unit" % up.port],
                    proxy="http://127.0.0.1:%d" % port)
    eq(r.status, 200, "request through the packaged airlock (unit-style start)")
    check_dropped(d.pid, pw.pw_uid, pw.pw_gid, "unit-style start")
    d.stop("airlock as the unit runs it")

    # 2. started as root without systemd: the packaged config's "user"
    d = Daemon(t, ["/usr/bin/airlock", "run", "--config", "/etc/airlock/airlock.json"],
               os.path.join(t.tmp, "root.log"), [port, admin])
    d.wait_ready("airlock started as root")
    r = altest.curl(["http://127.0.0.1:%d/echo?root" % up.port],
                    proxy="http://127.0.0.1:%d" % port)
    eq(r.status, 200, "request through the packaged airlock (started as root)")
    check_dropped(d.pid, pw.pw_uid, pw.pw_gid, "root start with \"user\": \"airlock\"")
    check("running as user airlock" in d.log(), "no log line about the switch:\n%s" % d.log())
    d.stop("airlock started as root")

    db = "/var/lib/airlock/audit.db"
    eq(mode_owner(db), (0o600, "airlock", "airlock"), "audit.db mode and owner")
    rows = audit_rows(db, "path = '/echo'")
    eq(sorted((r["method"], r["host"], r["port"], r["status"], r["decision"]) for r in rows),
       [("GET", "127.0.0.1", up.port, 200, "allow")] * 2, "audit rows of both requests")
    rc, out, err = run(["/usr/bin/airlock", "audit", "query", "--config",
                        "/etc/airlock/airlock.json", "--format", "json"])
    eq(len([r for r in json.loads(out) if r["path"] == "/echo"]), 2, "airlock audit query rows")

    # purge: nothing of it stays
    rc, out, err = dpkg(["--purge", "airlock"])
    eq(rc, 0, "dpkg --purge (%s%s)" % (out, err))
    check(not installed(), "still installed after purge")
    rc, out, _ = run(["dpkg-query", "-W", "-f=${Status}", "airlock"], check_rc=False)
    check(rc != 0 or "not-installed" in out, "dpkg still knows airlock: %r" % out)
    for p in ("/usr/bin/airlock", "/etc/airlock", "/var/lib/airlock", UNIT, wants,
              "/usr/share/doc/airlock"):
        check(not os.path.lexists(p), "%s left after purge" % p)
    check(not user_exists("airlock"), "user airlock left after purge")
    check(not group_exists("airlock"), "group airlock left after purge")


def _try_lock(fh):
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


altest.main()
