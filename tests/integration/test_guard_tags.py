#!/usr/bin/env python3
"""Issue #20, items 1 and 3: the address guard knows every address of the
host, and a sandbox cannot overwrite trusted tool-call tags.

    python3 tests/integration/test_guard_tags.py --airlock build/proxy/airlock [-k NAME]

Guard tests run airlock *inside* a network namespace of their own (netns.py)
whose loopback carries addresses that look like the host's public ones:
203.0.114.7 and 2600:0:a1::7 are outside every special-purpose range, so
the guard classifies them public and only the self check can refuse them
(the documentation ranges would not do: a wildcard listener's port was
already refused for every non-public address). 203.0.113.7 (documentation)
is opened with allow_addresses to show that no exemption reaches airlock's
own ports. The addresses exist only inside the namespace; nothing is routed
off the machine. The tag tests use the host namespace (explicit proxy) and a
redirected sandbox namespace (transparent mode), as test_transparent.py does.

Needs root, iproute2 and nftables (netns.nat_supported()). Every namespace
and process made here is removed by PID / name at the end of its test.
"""

import base64
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import altest  # noqa: E402
import netns  # noqa: E402
import upstream as upstream_mod  # noqa: E402
from altest import check, eq, test, wait_until  # noqa: E402

PUB4 = "203.0.114.7"  # classified public; exists only inside the test namespace
PUB6 = "2600:0:a1::7"
DOC4 = "203.0.113.7"  # documentation range, opened by allow_addresses
LATE4 = "203.0.114.9"  # added after airlock started
LATE6 = "2600:0:a1::9"
PPORT, PPORT6, APORT, CPORT = 3128, 3138, 9180, 8080  # fresh namespace: all free
ADMIN_TOKEN = "adm-t0ken-20"
SBX_TOKEN = "sbx-t0ken-20"
FAKE = "203.0.113.5"  # transparent tests: the destination the sandbox dials (redirected)


def tok_hash(tok):
    return hashlib.sha256(tok.encode()).hexdigest()


def need_nat():
    ok, why = netns.nat_supported()
    if not ok:
        raise altest.TestFailure("namespaces / nftables unavailable: " + why)


# ---------------------------------------------------------------------------
# audit rows


def rows(al):
    path = os.path.join(al.dir, "audit.db")
    if not os.path.isfile(path):
        return []
    try:
        c = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=5)
        c.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in c.execute("SELECT * FROM requests ORDER BY id")]
        finally:
            c.close()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return []
        raise


def wait_row(al, what, timeout=5, **want):
    def find():
        for r in rows(al):
            if all(r.get(k) == v for k, v in want.items()):
                return r
        return None
    try:
        return wait_until(find, timeout, "an audit row with %s (%s)" % (want, what))
    except altest.TestFailure as e:
        summary = [{k: r.get(k) for k in ("mode", "sandbox", "session", "tool_call", "method",
                                          "host", "port", "decision", "reason", "status")}
                   for r in rows(al)]
        raise altest.TestFailure("%s; rows: %s" % (e, json.dumps(summary)))


def fields(r, what, **want):
    bad = {k: (r.get(k), v) for k, v in want.items() if r.get(k) != v}
    if bad:
        raise altest.TestFailure("%s: audit row differs (got, want): %s" % (what, bad))


# ---------------------------------------------------------------------------
# airlock inside a namespace


def make_ns(t, **kw):
    need_nat()
    ns = netns.Netns(**kw)
    ns.create()
    t.defer(_ns_cleanup, ns)
    return ns


def _ns_cleanup(ns):
    problems = ns.cleanup()
    if problems:
        print("# netns cleanup problems: %s" % "; ".join(problems), flush=True)


def ns_addr_add(ns, addr):
    fam = "-6" if ":" in addr else "-4"
    pfx = "/128" if ":" in addr else "/32"
    cmd = ["ip", "-n", ns.name, fam, "addr", "add", addr + pfx, "dev", "lo"]
    if ":" in addr:
        cmd.append("nodad")
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
    eq(p.returncode, 0, "%s: %s" % (" ".join(cmd), p.stderr.decode().strip()))


def ns_listening(ns, port):
    p = ns.run_in_ns(["ss", "-Hltn"], timeout=10)
    return (":%d " % port).encode() in p.stdout


class NsAirlock(altest.Airlock):
    """airlock run inside `ns` (`ip netns exec` execs it: the PID is airlock's)."""

    def __init__(self, run, ns, **kw):
        super().__init__(run, **kw)
        self.ns = ns

    def start(self, timeout=10):
        self.port, self.admin_port = PPORT, APORT
        self._write_config()
        logf = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns.name, self.run.airlock_bin, "run", "--config",
                 self.cfg_path], stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                cwd=self.dir)
        finally:
            logf.close()
        self.run.procs.append(self.proc)
        self.pid = self.proc.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.exit_rc = self.proc.returncode
                raise altest.TestFailure("airlock exited at start (rc=%s)\n%s"
                                         % (self.exit_rc, self.log_tail()))
            if all(ns_listening(self.ns, p) for p in (PPORT, PPORT6, APORT)):
                return self
            time.sleep(0.05)
        self.kill()
        raise altest.TestFailure("airlock did not listen in %s\n%s"
                                 % (self.ns.name, self.log_tail()))


def start_in_ns(t, ns):
    """airlock in `ns`: forward listeners on 0.0.0.0:PPORT and [::]:PPORT6, the
    admin API on 0.0.0.0:APORT with a token, a policy allowing any host."""
    cfg = {"listen": [{"addr": "0.0.0.0:%d" % PPORT, "mode": "forward"},
                      {"addr": "[::]:%d" % PPORT6, "mode": "forward"}],
           "admin": {"addr": "0.0.0.0:%d" % APORT, "token_sha256": tok_hash(ADMIN_TOKEN)},
           "dns": {"servers": ["127.0.0.1:53"], "timeout_ms": 500},
           "audit": {"db": "audit.db", "flush_ms": 20}}
    pol = {"default": "deny", "allow_addresses": [DOC4 + "/32"],
           "rules": [{"name": "any", "hosts": ["*"], "cidrs": [DOC4 + "/32"]}]}
    a = NsAirlock(t.run, ns, config=cfg, policy=pol, limits={"connect_timeout_s": 2})
    t.airlocks.append(a)
    a.start()
    return a


def ns_proxy(ns, url, args=(), port=PPORT, timeout=8):
    """curl through airlock's proxy inside the namespace: (status, X-Airlock-Reason,
    body) of the final answer (status 0 when curl got none)."""
    rc, out, err = ns.curl(["-i", "-x", "http://127.0.0.1:%d" % port] + list(args) + [url],
                           timeout=timeout)
    text = out.decode("latin-1")
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return 0, "", "curl rc=%d %s" % (rc, err.strip())
    reason = ""
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        if k.strip().lower() == "x-airlock-reason":
            reason = v.strip()
    return status, reason, body


def expect_guard(al, ns, url, what, args=(), port=PPORT):
    st, reason, body = ns_proxy(ns, url, args, port=port)
    check(st == 403 and reason == "address_not_allowed",
          "%s: %s -> %d %s %r (want 403 address_not_allowed from the guard)"
          % (what, url, st, reason, body[:120]))


def control_server(t, ns):
    """A plain HTTP server in the namespace on 0.0.0.0:CPORT and [::]:CPORT."""
    d = os.path.join(t.tmp, "www")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "index.html"), "w") as fh:
        fh.write("control\n")
    ns.popen_in_ns(["python3", "-m", "http.server", str(CPORT), "--bind", "::"],
                   cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: ns_listening(ns, CPORT), 10, "control server :%d" % CPORT)


# ---------------------------------------------------------------------------
# 1. the host's own addresses


@test
def test_wildcard_listeners_refuse_host_public_addresses(t):
    """Through the proxy, the host's public-looking addresses on airlock's own
    ports (wildcard proxy listener, wildcard admin listener, v4 and v6) are
    refused by the guard and audited; the same addresses on another port and
    the exempted documentation address are let through (controls)."""
    ns = make_ns(t)
    for a in (PUB4, PUB6, DOC4):
        ns_addr_add(ns, a)
    control_server(t, ns)
    al = start_in_ns(t, ns)

    # controls: the policy lets these addresses through on another port
    for url in ("http://%s:%d/" % (PUB4, CPORT), "http://[%s]:%d/" % (PUB6, CPORT),
                "http://%s:%d/" % (DOC4, CPORT)):
        st, reason, body = ns_proxy(ns, url)
        check(st == 200 and "control" in body, "control %s -> %d %s %r"
              % (url, st, reason, body[:120]))

    # the proxy's own wildcard listener at the public address
    expect_guard(al, ns, "http://%s:%d/x" % (PUB4, PPORT), "proxy port, v4")
    expect_guard(al, ns, "http://[%s]:%d/x" % (PUB6, PPORT6), "v6 proxy port, v6")
    # the admin API (token configured) at the public address: the requests
    expect_guard(al, ns, "http://%s:%d/healthz" % (PUB4, APORT), "admin /healthz")
    expect_guard(al, ns, "http://%s:%d/v1/sandboxes/sbx/tool-call" % (PUB4, APORT),
                 "admin tool-call PUT",
                 ["-X", "PUT", "-H", "Authorization: Bearer " + ADMIN_TOKEN,
                  "-d", '{"session":"s1","tool_call":"forged"}'])
    expect_guard(al, ns, "http://%s:%d/reload" % (PUB4, APORT), "admin POST /reload",
                 ["-X", "POST", "-H", "Authorization: Bearer " + ADMIN_TOKEN])
    expect_guard(al, ns, "http://[%s]:%d/healthz" % (PUB6, APORT), "admin port, v6 address")
    # an exemption (rule cidrs + allow_addresses) never opens airlock's own ports
    expect_guard(al, ns, "http://%s:%d/healthz" % (DOC4, APORT), "exempted address, admin port")
    # spellings of the same host: IPv4-mapped IPv6
    expect_guard(al, ns, "http://[::ffff:%s]:%d/healthz" % (PUB4, APORT), "mapped v6 spelling")

    r = wait_row(al, "guard row", host=PUB4, port=APORT, path="/reload")
    fields(r, "refused /reload", decision="deny", reason="address_not_allowed", status=403)
    r = wait_row(al, "guard row v6", host=PUB6, port=PPORT6)
    fields(r, "refused v6", decision="deny", reason="address_not_allowed", status=403)
    check("reloaded" not in al.log(), "a reload happened through the proxy")


@test
def test_address_added_after_start_is_refused(t):
    """An address added to an interface while airlock runs is airlock itself
    within the refresh interval (netlink, or the 2 s re-read), v4 and v6."""
    ns = make_ns(t)
    ns_addr_add(ns, PUB4)
    al = start_in_ns(t, ns)
    expect_guard(al, ns, "http://%s:%d/healthz" % (PUB4, APORT), "address present at start")
    t0 = time.monotonic()
    ns_addr_add(ns, LATE4)
    ns_addr_add(ns, LATE6)
    for url, port in (("http://%s:%d/healthz" % (LATE4, APORT), PPORT),
                      ("http://[%s]:%d/x" % (LATE6, PPORT6), PPORT)):
        seen = []

        def refused():
            st, reason, _ = ns_proxy(ns, url, port=port, timeout=4)
            seen.append((st, reason))
            return st == 403 and reason == "address_not_allowed"
        try:
            wait_until(refused, 6, "guard refusing %s" % url, interval=0.2)
        except altest.TestFailure:
            raise altest.TestFailure("%s never refused by the guard within 6 s of being added; "
                                     "answers: %s" % (url, seen[-5:]))
    check(time.monotonic() - t0 < 12, "refresh took %.1f s" % (time.monotonic() - t0))


@test
def test_admin_off_loopback_needs_token(t):
    """`admin` on a non-loopback address without a token: `airlock check` is an
    error naming the key and the fix, and `airlock run` refuses to start."""
    d = os.path.join(t.tmp, "cfg")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "policy.json"), "w") as fh:
        json.dump({"rules": []}, fh)
    for admin in ("0.0.0.0:%d" % altest.free_port(), {"addr": "[::]:9181"}):
        cfg = os.path.join(d, "airlock.json")
        with open(cfg, "w") as fh:
            json.dump({"admin": admin, "policy": "policy.json",
                       "listen": [{"addr": "127.0.0.1:%d" % altest.free_port()}],
                       "audit": {"db": None}}, fh)
        p = subprocess.run([t.run.airlock_bin, "check", "--config", cfg], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=20)
        out = p.stdout.decode("utf-8", "replace")
        eq(p.returncode, 2, "check exit code for admin %r (%s)" % (admin, out.strip()))
        check("admin" in out and "needs a token" in out and "token_sha256" in out,
              "check message for admin %r: %r" % (admin, out))
        p = subprocess.run([t.run.airlock_bin, "run", "--config", cfg], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=20)
        out = p.stdout.decode("utf-8", "replace")
        eq(p.returncode, 2, "run exit code for admin %r (%s)" % (admin, out.strip()[-300:]))
        check("needs a token" in out, "run message for admin %r: %r" % (admin, out[-300:]))
    # with a token the same address is accepted
    with open(cfg, "w") as fh:
        json.dump({"admin": {"addr": "0.0.0.0:9181", "token_sha256": tok_hash(ADMIN_TOKEN)},
                   "policy": "policy.json"}, fh)
    p = subprocess.run([t.run.airlock_bin, "check", "--config", cfg], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=20)
    eq(p.returncode, 0, "check with a token (%s)" % p.stdout.decode().strip())


# ---------------------------------------------------------------------------
# 3. trusted tags win over X-Airlock-* headers


def admin_call(al, method, path, body=None):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    data = None if body is None else json.dumps(body).encode()
    rq = urllib.request.Request(al.admin + path, data=data, method=method)
    try:
        with opener.open(rq, timeout=5) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def no_tag_headers(up, path, what):
    got = up.find(path)
    check(got, "%s: the upstream saw no %s" % (what, path))
    raw = got[-1]["raw_head"].lower()
    check("x-airlock" not in raw and "forged" not in raw,
          "%s: X-Airlock-* tag headers reached the upstream: %r" % (what, raw))


class TAirlock(altest.Airlock):
    """A forward listener plus a transparent one on 0.0.0.0:tport."""

    def _write_config(self):
        self.tport = altest.free_port("0.0.0.0")
        self.extra["listen"] = [{"addr": "127.0.0.1:%d" % self.port, "mode": "forward"},
                                {"addr": "0.0.0.0:%d" % self.tport, "mode": "transparent"}]
        super()._write_config()

    def start(self, timeout=10):
        super().start(timeout)
        wait_until(lambda: altest.listening(self.tport), timeout,
                   "transparent listener :%d" % self.tport)
        return self


@test
def test_transparent_operator_tags_win(t):
    """A transparent sandbox tagged by the operator sends forged
    X-Airlock-Session / X-Airlock-Tool-Call: the row keeps the operator's
    tags and the upstream never sees the headers. Without an operator tag a
    header still fills the gap."""
    need_nat()
    up = upstream_mod.Upstream(None, host="127.0.0.1")
    t.defer(up.stop)
    cfg = {"resolve": {"api.test": "127.0.0.1"}, "audit": {"db": "audit.db", "flush_ms": 20},
           "sandboxes": [{"name": "sbx", "cidrs": ["10.231.0.0/16"]}]}
    pol = {"default": "deny",
           "rules": [{"name": "api", "hosts": ["api.test"], "cidrs": ["127.0.0.1/32"]}]}
    al = TAirlock(t.run, config=cfg, policy=pol)
    t.airlocks.append(al)
    al.start()
    ns = make_ns(t, redirect={up.port: al.tport})
    st, body = admin_call(al, "PUT", "/v1/sandboxes/sbx/tool-call",
                          {"session": "op-sess", "tool_call": "op-call"})
    eq(st, 200, "PUT tool-call (%s)" % body)
    forged = ["-H", "X-Airlock-Session: forged-sess", "-H", "X-Airlock-Tool-Call: forged"]
    base = ["--resolve", "api.test:%d:%s" % (up.port, FAKE)]
    rc, out, err = ns.curl(base + forged + ["-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                            "http://api.test:%d/echo/tagged" % up.port])
    eq(out, b"200", "transparent request (rc=%d %s)" % (rc, err))
    no_tag_headers(up, "/echo/tagged", "operator-tagged request")
    r = wait_row(al, "operator-tagged", path="/echo/tagged")
    fields(r, "operator-tagged row", mode="transparent", sandbox="sbx", session="op-sess",
           tool_call="op-call")
    # only a tool call from the operator: the session header fills that gap
    st, body = admin_call(al, "PUT", "/v1/sandboxes/sbx/tool-call", {"tool_call": "op-call2"})
    eq(st, 200, "PUT tool-call only (%s)" % body)
    rc, out, err = ns.curl(base + forged + ["-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                            "http://api.test:%d/echo/partial" % up.port])
    eq(out, b"200", "transparent request 2 (rc=%d %s)" % (rc, err))
    no_tag_headers(up, "/echo/partial", "partly tagged request")
    r = wait_row(al, "partly tagged", path="/echo/partial")
    fields(r, "partly tagged row", session="forged-sess", tool_call="op-call2")


@test
def test_explicit_auth_tags_win(t):
    """Explicit proxy, Proxy-Authorization user sbx+sess+call and forged tag
    headers: the row keeps the credentials' tags. A bare `sbx` user with an
    operator tag keeps the operator's; with neither the headers tag."""
    up = t.upstream()
    cfg = {"sandboxes": [{"name": "sbx", "token_sha256": tok_hash(SBX_TOKEN)}],
           "audit": {"db": "audit.db", "flush_ms": 20}}
    pol = {"default": "deny",
           "rules": [{"name": "up", "hosts": ["upstream.test"], "cidrs": ["127.0.0.1/32"]}]}
    al = t.airlock(config=cfg, policy=pol)
    forged = ["-H", "X-Airlock-Session: forged-sess", "-H", "X-Airlock-Tool-Call: forged"]
    url = "http://upstream.test:%d" % up.port

    r = al.curl(["-U", "sbx+sess+call:" + SBX_TOKEN] + forged + [url + "/echo/auth"])
    eq(r.status, 200, "auth-tagged request (%r)" % r)
    no_tag_headers(up, "/echo/auth", "auth-tagged request")
    fields(wait_row(al, "auth", path="/echo/auth"), "auth-tagged row", sandbox="sbx",
           session="sess", tool_call="call")

    # raw request: two forged tool-call headers, odd case
    auth = "Basic " + base64.b64encode(("sbx+s2+c2:" + SBX_TOKEN).encode()).decode()
    resp = al.raw(("GET %s/echo/raw HTTP/1.1\r\nHost: upstream.test:%d\r\n"
                   "Proxy-Authorization: %s\r\nx-airlock-tool-call: forged1\r\n"
                   "X-AIRLOCK-TOOL-CALL: forged2\r\nConnection: close\r\n\r\n"
                   % (url, up.port, auth)).encode())
    eq(resp.status, 200, "raw auth-tagged request")
    fields(wait_row(al, "raw", path="/echo/raw"), "raw auth-tagged row", session="s2",
           tool_call="c2")

    st, body = admin_call(al, "PUT", "/v1/sandboxes/sbx/tool-call",
                          {"session": "op-sess", "tool_call": "op-call"})
    eq(st, 200, "PUT tool-call (%s)" % body)
    r = al.curl(["-U", "sbx:" + SBX_TOKEN] + forged + [url + "/echo/operator"])
    eq(r.status, 200, "operator-tagged request (%r)" % r)
    fields(wait_row(al, "operator", path="/echo/operator"), "operator-tagged row",
           session="op-sess", tool_call="op-call")
    # the credentials' tags still beat the operator's
    r = al.curl(["-U", "sbx+sess3+call3:" + SBX_TOKEN] + forged + [url + "/echo/both"])
    eq(r.status, 200, "auth + operator (%r)" % r)
    fields(wait_row(al, "both", path="/echo/both"), "auth + operator row", session="sess3",
           tool_call="call3")

    st, body = admin_call(al, "DELETE", "/v1/sandboxes/sbx/tool-call")
    eq(st, 200, "DELETE tool-call (%s)" % body)
    r = al.curl(["-U", "sbx:" + SBX_TOKEN] + forged + [url + "/echo/headers"])
    eq(r.status, 200, "header-tagged request (%r)" % r)
    fields(wait_row(al, "headers", path="/echo/headers"), "header-tagged row",
           session="forged-sess", tool_call="forged")


@test
def test_intercepted_tunnel_keeps_auth_tags(t):
    """CONNECT with Proxy-Authorization sbx+sess+call, intercepted; the inner
    request forges X-Airlock-* headers: its row keeps the tunnel's tags and the
    upstream never sees the headers."""
    cadir = os.path.join(t.tmp, "interception-ca")
    p = subprocess.run([t.run.airlock_bin, "ca", "init", "--dir", cadir],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    eq(p.returncode, 0, "airlock ca init (%s)" % p.stdout.decode().strip())
    up = t.upstream(tls=True)
    cfg = {"sandboxes": [{"name": "sbx", "token_sha256": tok_hash(SBX_TOKEN)}],
           "ca": {"dir": cadir}, "upstream_ca": t.run.ca_pem,
           "audit": {"db": "audit.db", "flush_ms": 20}}
    pol = {"default": "deny",
           "rules": [{"name": "up", "hosts": ["upstream.test"], "cidrs": ["127.0.0.1/32"],
                      "intercept": True}]}
    al = t.airlock(config=cfg, policy=pol)
    r = al.curl(["-U", "sbx+sess+call:" + SBX_TOKEN, "--cacert", os.path.join(cadir, "ca.pem"),
                 "-H", "X-Airlock-Session: forged-sess", "-H", "X-Airlock-Tool-Call: forged",
                 "https://upstream.test:%d/echo/mitm" % up.port])
    eq(r.status, 200, "intercepted request (%r)" % r)
    no_tag_headers(up, "/echo/mitm", "intercepted request")
    fields(wait_row(al, "inner", path="/echo/mitm", method="GET"), "inner request row",
           sandbox="sbx", session="sess", tool_call="call")


if __name__ == "__main__":
    sys.exit(altest.main())
