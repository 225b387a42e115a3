#!/usr/bin/env python3
"""Listening addresses belong to one airlock process (issue 15, defect 2).

    python3 tests/integration/test_listen.py --airlock build/proxy/airlock [-k NAME]

Workers share their listeners through SO_REUSEPORT, and the kernel lets any
socket of the same user join a reuseport group: a second airlock (or any
process) started on a busy address used to bind it too, and new connections
alternated between the two processes and their policies. Now a start on an
address another process listens on, with or without SO_REUSEPORT, exits 1
naming the address, and the running instance keeps every connection.

altest.Airlock.start retries on another port when the log says "in use", so
the instances that must fail are started here with subprocess.
"""

import json
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import altest  # noqa: E402
from altest import TestFailure, check, eq, test, wait_until  # noqa: E402

HOST = "upstream.test"
DENY_ALL = {"default": "deny", "rules": []}
ALLOW_ALL = {"default": "allow", "allow_addresses": ["127.0.0.0/8", "::1/128"], "rules": []}


class Raw:
    """An airlock run by hand: its own config, log and exit code."""

    seq = 0

    def __init__(self, t, listen, policy, admin=None, workers=2):
        Raw.seq += 1
        self.dir = os.path.join(t.tmp, "raw%d" % Raw.seq)
        os.makedirs(self.dir)
        cfg = {
            "listen": listen,
            "workers": workers,
            "log_level": "debug",
            "policy": "policy.json",
            "audit": {"db": "audit.db"},
            "resolve": {HOST: "127.0.0.1"},
            "dns": {"servers": ["127.0.0.1:%d" % t.run.dns.port], "timeout_ms": 1000},
        }
        if admin is not None:
            cfg["admin"] = admin
        self.cfg_path = os.path.join(self.dir, "airlock.json")
        with open(self.cfg_path, "w") as fh:
            json.dump(cfg, fh, indent=1)
        with open(os.path.join(self.dir, "policy.json"), "w") as fh:
            json.dump(policy, fh)
        self.log_path = os.path.join(self.dir, "airlock.log")
        self.proc = None
        self.t = t

    def spawn(self):
        with open(self.log_path, "ab") as logf:
            self.proc = self.t.popen(subprocess.Popen(
                [self.t.run.airlock_bin, "run", "--config", self.cfg_path],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, cwd=self.dir))
        return self

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log(self):
        with open(self.log_path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            if self.wait(10) is None:
                self.proc.kill()
                self.proc.wait(5)


def expect_refused(t, listen, addr, policy=ALLOW_ALL, admin=None, timeout=8, show=None):
    """Starts an airlock that must exit 1 within timeout naming addr. show():
    what the traffic looks like when it did start anyway (for the message)."""
    r = Raw(t, listen, policy, admin=admin).spawn()
    rc = r.wait(timeout)
    if rc is None:
        seen = show() if show is not None else ""
        r.stop()
        raise TestFailure("airlock started on %s, which another process listens on "
                          "(still running after %ds) %s\n%s"
                          % (addr, timeout, seen, r.log()[-2000:]))
    log = r.log()
    eq(rc, 1, "exit code of the refused start (log: %s)" % log[-600:])
    check(addr in log and "in use" in log,
          "the error names %s and says it is in use:\n%s" % (addr, log[-1000:]))
    return log


def get(port, path="/bytes/5"):
    data = ("GET http://%s:%d%s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n"
            % (HOST, port[1], path, HOST, port[1])).encode()
    return altest.raw_request(port[0], data)


def statuses(proxy_port, up_port, n):
    return [get((proxy_port, up_port)).status for _ in range(n)]


def listeners_on(port):
    """LISTEN sockets on this TCP port (any address), from /proc/net/tcp{,6}."""
    want = ":%04X" % port
    n = 0
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(f) as fh:
            next(fh)
            for line in fh:
                p = line.split()
                if len(p) > 3 and p[1].endswith(want) and p[3] == "0A":
                    n += 1
    return n


def foreign_listener(host, port, reuseport):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    s.listen(16)
    return s


@test
def test_second_instance_refused(t):
    up = t.upstream()
    a = t.airlock(policy=DENY_ALL)
    eq(statuses(a.port, up.port, 3), [403] * 3, "deny-all instance answers 403")
    addr = "127.0.0.1:%d" % a.port
    expect_refused(t, [{"addr": addr, "mode": "forward"}], addr,
                   admin="127.0.0.1:%d" % altest.free_port(),
                   show=lambda: "; 20 requests got %s" % statuses(a.port, up.port, 20))
    check(a.alive(), "the first instance still runs")
    got = statuses(a.port, up.port, 20)
    eq(got, [403] * 20, "every request through %s decided by the first (deny-all) instance" % addr)
    eq(len(up.requests), 0, "nothing reached the upstream")
    eq(listeners_on(a.port), a.workers, "listening sockets on the port (one per worker)")
    # Listeners are not re-bound on reload: after SIGHUP the address is
    # still the first instance's alone.
    a.signal(1)
    wait_until(lambda: "reloaded" in a.log(), 10, "reload logged")
    expect_refused(t, [{"addr": addr, "mode": "forward"}], addr)
    eq(statuses(a.port, up.port, 10), [403] * 10, "after reload: still the first instance")
    eq(listeners_on(a.port), a.workers, "listening sockets on the port after reload")


@test
def test_second_instance_transparent_refused(t):
    a = t.airlock(policy=DENY_ALL)
    addr = "127.0.0.1:%d" % a.port
    expect_refused(t, [{"addr": addr, "mode": "transparent"}], addr)
    eq(listeners_on(a.port), a.workers, "listening sockets on the port")


@test
def test_foreign_reuseport_listener_refused(t):
    for reuseport in (True, False):
        port = altest.free_port()
        s = foreign_listener("127.0.0.1", port, reuseport)
        t.defer(s.close)
        addr = "127.0.0.1:%d" % port
        expect_refused(t, [{"addr": addr, "mode": "forward"}], addr)
        eq(listeners_on(port), 1, "only the foreign socket listens (reuseport=%s)" % reuseport)
    # a wildcard SO_REUSEPORT listener covers 127.0.0.1 too
    port = altest.free_port()
    s = foreign_listener("0.0.0.0", port, True)
    t.defer(s.close)
    expect_refused(t, [{"addr": "127.0.0.1:%d" % port, "mode": "forward"}],
                   "127.0.0.1:%d" % port)
    # and a transparent listener the same
    port = altest.free_port()
    s = foreign_listener("127.0.0.1", port, True)
    t.defer(s.close)
    expect_refused(t, [{"addr": "127.0.0.1:%d" % port, "mode": "transparent"}],
                   "127.0.0.1:%d" % port)
    eq(listeners_on(port), 1, "only the foreign socket listens (transparent)")


@test
def test_foreign_reuseport_listener_ipv6_refused(t):
    try:
        port = altest.free_port("::1")
        s = foreign_listener("::1", port, True)
    except OSError:
        print("# no IPv6 loopback here: skipped")
        return
    t.defer(s.close)
    addr = "[::1]:%d" % port
    expect_refused(t, [{"addr": addr, "mode": "forward"}], addr)


@test
def test_admin_address_in_use_refused(t):
    port = altest.free_port()
    s = foreign_listener("127.0.0.1", port, True)
    t.defer(s.close)
    addr = "127.0.0.1:%d" % altest.free_port()
    admin = "127.0.0.1:%d" % port
    log = expect_refused(t, [{"addr": addr, "mode": "forward"}], admin, admin=admin)
    check("admin" in log, "the error says it is the admin address:\n%s" % log[-600:])


@test
def test_simultaneous_starts_one_wins_at_most(t):
    """Two instances started at the same instant: never both serving."""
    up = t.upstream()
    for _ in range(4):
        port = altest.free_port()
        addr = "127.0.0.1:%d" % port
        a = Raw(t, [{"addr": addr, "mode": "forward"}], DENY_ALL)
        b = Raw(t, [{"addr": addr, "mode": "forward"}], ALLOW_ALL)
        a.spawn()
        b.spawn()
        # a start ends (exit 1) or listens within a few seconds
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            done = [r.proc.poll() is not None for r in (a, b)]
            if all(done) or (any(done) and listeners_on(port) > 0):
                break
            time.sleep(0.05)
        time.sleep(0.5)  # a survivor that is going to give up has done so
        alive = [r for r in (a, b) if r.proc.poll() is None]
        for r in (a, b):
            if r.proc.poll() is not None:
                eq(r.proc.returncode, 1, "exit code of a refused start")
        check(len(alive) <= 1, "both instances listen on %s" % addr)
        if alive:
            want = 403 if alive[0] is a else 200
            eq(statuses(port, up.port, 6), [want] * 6, "answers of the one instance")
        for r in alive:
            r.stop()


def worker_wakeups(pid):
    """Voluntary context switches per worker thread (airlock-wN)."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as fh:
                name = fh.read().strip()
            if not name.startswith("airlock-w"):
                continue
            with open("/proc/%d/task/%s/status" % (pid, tid)) as fh:
                for line in fh:
                    if line.startswith("voluntary_ctxt_switches:"):
                        out[name] = int(line.split()[1])
        except OSError:
            pass
    return out


@test
def test_workers_share_their_listeners(t):
    """The check does not take a process's own workers for strangers: one
    SO_REUSEPORT socket per worker, and connections spread over them."""
    up = t.upstream()
    a = t.airlock(workers=3)
    eq(listeners_on(a.port), 3, "one SO_REUSEPORT socket per worker")
    before = worker_wakeups(a.pid)
    eq(len(before), 3, "worker threads")
    eq(statuses(a.port, up.port, 60), [200] * 60, "connections through the shared listeners")
    after = worker_wakeups(a.pid)
    busy = [k for k in before if after.get(k, 0) > before[k]]
    check(len(busy) >= 2, "connections reached more than one worker (%s -> %s)" % (before, after))


altest.main()
