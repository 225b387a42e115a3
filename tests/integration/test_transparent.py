#!/usr/bin/env python3
"""Transparent-mode suite (issue 6): a sandbox network namespace whose TCP
is REDIRECTed by nftables to airlock's transparent listener, real curl and
python ssl clients inside the namespace, audit rows, and the admin
tool-call tag API.

    python3 tests/integration/test_transparent.py --airlock build/proxy/airlock [-k NAME]

Needs root, iproute2 and nftables with NAT (netns.nat_supported()); without
them every test says why and fails. Each test makes one namespace (netns.py:
10.231.X.2 inside, 10.231.X.1 on the host side) whose connections to the
listed destination ports are redirected to airlock's transparent listener on
0.0.0.0. Clients use --resolve to 203.0.113.5 (a documentation address):
those connections are redirected and never leave the machine; airlock
resolves the names itself through the config's "resolve" pins (127.0.0.1)
where the test upstreams listen. Raw-TCP and IP-only cases use the host
side's address (a local address). Everything made (namespace, veth, nft
table, processes) is removed even when a test fails; the last test checks
that nothing of this run is left.

Diagnosis only: TTP_DIAG_LOG_LEVEL=info overrides airlock's log_level
(the harness default is debug).
"""

import hashlib
import json
import time
import os
import re
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
import sqlite3

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import altest  # noqa: E402
import netns  # noqa: E402
import rawhttp  # noqa: E402
import upstream as upstream_mod  # noqa: E402
from altest import check, eq, pattern, sha256, test, wait_until  # noqa: E402

FAKE = "203.0.113.5"  # original destination the sandbox "chooses"; redirected, never routed
SBX_CIDRS = ["10.231.0.0/16", "fdac:1a::/32"]
LOOP = ["127.0.0.1/32"]
RESOLVE = {"api.test": "127.0.0.1", "evil.test": "127.0.0.1", "other.test": "127.0.0.1"}
API_RULE = {"name": "api", "hosts": ["api.test"], "cidrs": LOOP}
ADMIN_TOKEN = "adm-t0ken-5f1e"


def tok_hash(tok):
    return hashlib.sha256(tok.encode()).hexdigest()


# ---------------------------------------------------------------------------
# fixtures


def need_nat():
    ok, why = netns.nat_supported()
    if not ok:
        raise altest.TestFailure("nftables NAT / namespaces unavailable: " + why)


class TAirlock(altest.Airlock):
    """An airlock with a transparent listener on 0.0.0.0:tport (and, with
    v6, one on [::]:tport6) besides the forward one, and optionally an admin
    bearer token."""

    def __init__(self, run, admin_token=None, v6=False, **kw):
        super().__init__(run, **kw)
        self.admin_token = admin_token
        self.v6 = v6
        self.tport = self.tport6 = None

    def _write_config(self):
        self.tport = altest.free_port("0.0.0.0")
        listen = [{"addr": "127.0.0.1:%d" % self.port, "mode": "forward"},
                  {"addr": "0.0.0.0:%d" % self.tport, "mode": "transparent"}]
        if self.v6:
            self.tport6 = altest.free_port("::")
            listen.append({"addr": "[::]:%d" % self.tport6, "mode": "transparent"})
        self.extra["listen"] = listen
        if self.admin_token:
            self.extra["admin"] = {"addr": "127.0.0.1:%d" % self.admin_port,
                                   "token_sha256": tok_hash(self.admin_token)}
        super()._write_config()

    def start(self, timeout=10):
        super().start(timeout)
        wait_until(lambda: altest.listening(self.tport), timeout,
                   "transparent listener :%d" % self.tport)
        if self.tport6:
            wait_until(lambda: altest.listening(self.tport6), timeout,
                       "transparent listener [::]:%d" % self.tport6)
        return self


def start(t, rules, sandboxes=None, config=None, policy_extra=None, **kw):
    need_nat()
    cfg = {"resolve": dict(RESOLVE), "audit": {"db": "audit.db", "flush_ms": 50},
           "sandboxes": sandboxes if sandboxes is not None
           else [{"name": "sbx", "cidrs": SBX_CIDRS}]}
    altest._merge(cfg, config or {})
    if os.environ.get("TTP_DIAG_LOG_LEVEL"):
        cfg["log_level"] = os.environ["TTP_DIAG_LOG_LEVEL"]
    pol = {"default": "deny", "rules": list(rules)}
    pol.update(policy_extra or {})
    a = TAirlock(t.run, config=cfg, policy=pol, **kw)
    t.airlocks.append(a)
    a.start()
    return a


def make_ns(t, redirect, ipv6=False):
    """A namespace whose tcp to the listed ports is redirected; removed at
    the end of the test (also on failure); leftovers are reported by the
    no_leftovers test."""
    ns = netns.Netns(redirect=redirect, ipv6=ipv6)
    ns.create()
    t.defer(_ns_cleanup, ns)
    return ns


def _ns_cleanup(ns):
    problems = ns.cleanup()
    if problems:
        print("# netns cleanup problems: %s" % "; ".join(problems), flush=True)


_api_cert = []


def api_server_ctx(run):
    """A server context whose certificate (signed by the run's test CA)
    names api.test, evil.test and other.test."""
    if not _api_cert:
        d = run.tmp
        run._openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                     "-nodes", "-keyout", "api.key", "-out", "api.csr", "-subj", "/CN=api.test")
        with open(os.path.join(d, "api.ext"), "w") as fh:
            fh.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                     "extendedKeyUsage=serverAuth\n"
                     "subjectAltName=DNS:api.test,DNS:evil.test,DNS:other.test\n")
        run._openssl("x509", "-req", "-in", "api.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                     "-CAcreateserial", "-out", "api.pem", "-days", "2", "-extfile", "api.ext")
        _api_cert.append((os.path.join(d, "api.pem"), os.path.join(d, "api.key")))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*_api_cert[0])
    return ctx


def tls_upstream(t, host="127.0.0.1"):
    u = upstream_mod.Upstream(api_server_ctx(t.run), host=host)
    t.defer(u.stop)
    return u


def plain_upstream(t, host="127.0.0.1"):
    u = upstream_mod.Upstream(None, host=host)
    t.defer(u.stop)
    return u


# ---------------------------------------------------------------------------
# clients inside the namespace


_seq = [0]


def ns_curl(t, ns, args, timeout=15):
    """curl inside the namespace; returns an altest.CurlResult (status,
    headers of the last response, body; stdout = "%{http_code} ...")."""
    _seq[0] += 1
    base = os.path.join(t.tmp, "nscurl%d" % _seq[0])
    rc, out, err = ns.curl(["-o", base + ".body", "-D", base + ".head", "-w", "%{http_code}"]
                           + list(args), timeout=timeout)
    body = b""
    if os.path.exists(base + ".body"):
        with open(base + ".body", "rb") as fh:
            body = fh.read()
    heads = []
    if os.path.exists(base + ".head"):
        with open(base + ".head", "rb") as fh:
            heads = altest._parse_dump(fh.read().decode("latin-1"))
    try:
        status = int(out.decode("latin-1").split()[0])
    except (ValueError, IndexError):
        status = 0
    return altest.CurlResult(rc, body, err, status, heads, 0.0, out)


NSCLIENT = r'''
import json, socket, ssl, sys, time

def http_done(buf):
    if b"\r\n\r\n" not in buf:
        return False
    head, _, body = buf.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return len(body) >= int(v.strip())
    return False

def op_tls(s):
    r = {"handshake": False, "error": "", "response": "", "hello_len": 0, "got": ""}
    ctx = ssl.create_default_context(cafile=s["cafile"]) if s.get("cafile") else \
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = bool(s.get("check_hostname"))
    if not s.get("cafile"):
        ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_side=False, server_hostname=s.get("sni"))
    sock = socket.create_connection((s["addr"], s["port"]), timeout=s.get("timeout", 10))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = out.read()
        r["hello_len"] = len(hello)
        cuts = [0] + [c for c in s.get("split", []) if 0 < c < len(hello)] + [len(hello)]
        for i in range(len(cuts) - 1):
            if i:
                time.sleep(s.get("pause", 0.3))
            sock.sendall(hello[cuts[i]:cuts[i + 1]])
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                d = out.read()
                if d:
                    sock.sendall(d)
                d = sock.recv(65536)
                if not d:
                    r["error"] = "eof during handshake"
                    return r
                if len(r["got"]) < 400:
                    r["got"] += d[:200].hex()
                inc.write(d)
        r["handshake"] = True
        r["version"] = obj.version()
        d = out.read()
        if d:
            sock.sendall(d)
        if s.get("request"):
            obj.write(s["request"].encode("latin-1"))
            sock.sendall(out.read())
            buf = b""
            while not http_done(buf):
                try:
                    buf += obj.read(65536)
                    continue
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLZeroReturnError:
                    break
                d = sock.recv(65536)
                if not d:
                    break
                inc.write(d)
            r["response"] = buf.decode("latin-1")
    except (OSError, ssl.SSLError) as e:
        r["error"] = "%s: %s" % (type(e).__name__, e)
    finally:
        sock.close()
    return r

def op_raw(s):
    r = {"recv": "", "eof": False, "error": ""}
    try:
        sock = socket.create_connection((s["addr"], s["port"]), timeout=s.get("timeout", 5))
    except OSError as e:
        r["error"] = "connect: %s" % e
        return r
    try:
        data = bytes.fromhex(s.get("send", ""))
        if data:
            sock.sendall(data)
        if s.get("shut_wr"):
            sock.shutdown(socket.SHUT_WR)
        buf = b""
        deadline = time.monotonic() + s.get("timeout", 5)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                d = sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                r["eof"] = True
                r["reset"] = True
                break
            if not d:
                r["eof"] = True
                break
            buf += d
        r["recv"] = buf.hex()
    except OSError as e:
        r["error"] = "%s: %s" % (type(e).__name__, e)
    finally:
        sock.close()
    return r

spec = json.loads(sys.stdin.read())
print(json.dumps({"tls": op_tls, "raw": op_raw}[spec["op"]](spec)))
'''


def ns_py(t, ns, spec, timeout=30):
    path = os.path.join(t.run.tmp, "nsclient.py")
    if not os.path.exists(path):
        with open(path, "w") as fh:
            fh.write(NSCLIENT)
    p = ns.run_in_ns(["python3", path], input=json.dumps(spec).encode(), timeout=timeout)
    try:
        return json.loads(p.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise altest.TestFailure("namespace client failed rc=%d: %s" %
                                 (p.returncode, p.stderr.decode("utf-8", "replace")[-800:]))


def status_of(resp):
    m = re.match(r"HTTP/1\.[01] (\d{3})", resp)
    return int(m.group(1)) if m else 0


# ---------------------------------------------------------------------------
# audit rows (read-only) and the admin API


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
    """The first audit row whose columns equal `want`."""
    def find():
        for r in rows(al):
            if all(r.get(k) == v for k, v in want.items()):
                return r
        return None
    try:
        return wait_until(find, timeout, "an audit row with %s (%s)" % (want, what))
    except altest.TestFailure as e:
        summary = [{k: r.get(k) for k in ("mode", "sandbox", "session", "tool_call", "method",
                                          "host", "port", "orig_dst", "upstream", "decision",
                                          "reason", "status", "error")} for r in rows(al)]
        raise altest.TestFailure("%s; rows: %s" % (e, json.dumps(summary)))


def fields(r, what, **want):
    bad = {k: (r.get(k), v) for k, v in want.items() if r.get(k) != v}
    if bad:
        raise altest.TestFailure("%s: audit row differs (got, want): %s; row %s" %
                                 (what, bad, {k: r.get(k) for k in r if k != "ts"}))


def admin(al, method, path, body=None, token=None, timeout=5):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    data = None if body is None else (body if isinstance(body, bytes)
                                      else json.dumps(body).encode())
    rq = urllib.request.Request(al.admin + path, data=data, method=method)
    if data is not None:
        rq.add_header("Content-Type", "application/json")
    if token is not None:
        rq.add_header("Authorization", "Bearer " + token)
    try:
        with opener.open(rq, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def sandboxes(al, token=None):
    st, body = admin(al, "GET", "/v1/sandboxes", token=token)
    eq(st, 200, "GET /v1/sandboxes status (%s)" % body[:200])
    try:
        j = json.loads(body)
    except ValueError:
        raise altest.TestFailure("GET /v1/sandboxes: not JSON: %r" % body[:300])
    lst = j["sandboxes"] if isinstance(j, dict) else j
    return {s["name"]: s for s in lst}


def curl_ok(r, what):
    if r.rc != 0 or r.status != 200:
        raise altest.TestFailure("%s: %r" % (what, r))


# ---------------------------------------------------------------------------
# the environment


@test
def test_nat_supported(t):
    ok, why = netns.nat_supported()
    check(ok, "nftables NAT / namespaces unavailable here, transparent mode cannot be "
          "tested: " + why)


# ---------------------------------------------------------------------------
# HTTP


@test
def test_http_allowed_own_resolution(t):
    up = plain_upstream(t)
    al = start(t, [API_RULE])
    ns = make_ns(t, {up.port: al.tport})
    r = ns_curl(t, ns, ["--resolve", "api.test:%d:%s" % (up.port, FAKE),
                        "http://api.test:%d/echo?x=1" % up.port])
    curl_ok(r, "curl http://api.test/ from the sandbox")
    j = json.loads(r.body)
    eq(j["requestline"], "GET /echo?x=1 HTTP/1.1", "request line at the upstream")
    eq([v for k, v in j["headers"] if k.lower() == "host"], ["api.test:%d" % up.port],
       "Host at the upstream")
    eq(up.connections, 1, "upstream connections")
    row = wait_row(al, "allowed transparent GET", method="GET", host="api.test")
    fields(row, "allowed transparent GET", mode="transparent", sandbox="sbx",
           orig_dst="%s:%d" % (FAKE, up.port), port=up.port, decision="allow", rule="api",
           upstream="127.0.0.1:%d" % up.port, status=200, path="/echo")
    check(row["client"].startswith(ns.ns_addr), "client column %r, want the sandbox address %s"
          % (row["client"], ns.ns_addr))


class UpstreamAt(upstream_mod.Upstream):
    """A plain Upstream bound to a given port (Upstream itself takes port 0)."""

    def __init__(self, host, port):
        self._want_port = port
        super().__init__(None, host=host)

    def server_bind(self):
        self.server_address = (self.server_address[0], self._want_port)
        super().server_bind()


@test
def test_http_not_original_destination(t):
    """The original destination is a local address where a decoy server
    listens on the same port as the real upstream: airlock must connect to
    its own resolution of the Host name (127.0.0.1), never to the decoy."""
    need_nat()
    port = altest.free_port()
    al = start(t, [API_RULE])
    ns = make_ns(t, {port: al.tport})
    try:
        real = UpstreamAt("127.0.0.1", port)
        t.defer(real.stop)
        decoy = UpstreamAt(ns.host_addr, port)
        t.defer(decoy.stop)
    except OSError as e:
        raise altest.TestFailure("cannot bind upstream/decoy on port %d: %s" % (port, e))
    r = ns_curl(t, ns, ["--resolve", "api.test:%d:%s" % (port, ns.host_addr),
                        "http://api.test:%d/echo" % port])
    curl_ok(r, "curl with the original destination = decoy")
    eq(decoy.connections, 0, "connections at the decoy (the original destination)")
    eq(real.connections, 1, "connections at airlock's own resolution")
    row = wait_row(al, "decoy case", method="GET", host="api.test")
    fields(row, "decoy case", orig_dst="%s:%d" % (ns.host_addr, port),
           upstream="127.0.0.1:%d" % port, decision="allow")


@test
def test_http_keepalive_and_bodies(t):
    up = plain_upstream(t)
    al = start(t, [API_RULE])
    ns = make_ns(t, {up.port: al.tport})
    base = "http://api.test:%d" % up.port
    res = ["--resolve", "api.test:%d:%s" % (up.port, FAKE)]
    rc, out, err = ns.curl(res + ["-w", "%{http_code} %{num_connects}\\n",
                                  "-o", "/dev/null", base + "/bytes/10",
                                  "-o", "/dev/null", base + "/echo?i=2",
                                  "-o", "/dev/null", base + "/chunked/5000"])
    eq(rc, 0, "curl rc (%s)" % err.strip())
    eq(out.decode().split(), ["200", "1", "200", "0", "200", "0"],
       "status / new connections per transfer (keep-alive through the transparent listener)")
    eq([r["path"] for r in up.requests], ["/bytes/10", "/echo?i=2", "/chunked/5000"],
       "requests at the upstream")
    n = 3 * altest.MiB + 7
    r = ns_curl(t, ns, res + [base + "/bytes/%d" % n], timeout=30)
    curl_ok(r, "3 MiB download")
    check(r.body == pattern(n), "3 MiB body not byte-exact (len %d)" % len(r.body))
    data = pattern(700001)
    p = t.file("up.bin", data)
    r = ns_curl(t, ns, res + ["--data-binary", "@" + p, base + "/upload"], timeout=30)
    curl_ok(r, "POST upload")
    eq(json.loads(r.body), {"len": len(data), "sha256": sha256(data)},
       "upload as seen by the upstream")


@test
def test_http_denied_403(t):
    up = plain_upstream(t)
    al = start(t, [API_RULE])
    ns = make_ns(t, {up.port: al.tport})
    r = ns_curl(t, ns, ["--resolve", "evil.test:%d:%s" % (up.port, FAKE),
                        "http://evil.test:%d/echo" % up.port])
    check(r.rc == 0 and r.status == 403, "unlisted host: want 403, got %r" % r)
    eq(r.header("X-Airlock-Reason"), "host_not_allowed", "X-Airlock-Reason")
    eq(up.connections, 0, "upstream connections for a denied host")
    row = wait_row(al, "denied transparent GET", host="evil.test")
    fields(row, "denied transparent GET", mode="transparent", sandbox="sbx", method="GET",
           orig_dst="%s:%d" % (FAKE, up.port), decision="deny", status=403, upstream="")
    # the same connection can go on to an allowed host (keep-alive after a 403)
    rc, out, err = ns.curl(["--resolve", "evil.test:%d:%s" % (up.port, FAKE),
                            "--resolve", "api.test:%d:%s" % (up.port, FAKE),
                            "-w", "%{http_code}\\n", "-o", "/dev/null",
                            "http://evil.test:%d/x" % up.port, "-o", "/dev/null",
                            "http://api.test:%d/echo" % up.port])
    eq(out.decode().split(), ["403", "200"], "403 then 200 (%s)" % err.strip())


@test
def test_http_unknown_sandbox(t):
    """Sandboxes are configured but the namespace's source matches none."""
    up = plain_upstream(t)
    al = start(t, [API_RULE], sandboxes=[{"name": "elsewhere", "cidrs": ["10.99.0.0/16"]}])
    ns = make_ns(t, {up.port: al.tport})
    r = ns_curl(t, ns, ["--resolve", "api.test:%d:%s" % (up.port, FAKE),
                        "http://api.test:%d/echo" % up.port])
    check(r.status == 403 and r.header("X-Airlock-Reason") == "unknown_sandbox",
          "source outside every sandbox: want 403 unknown_sandbox, got %r" % r)
    eq(up.connections, 0, "upstream connections")


@test
def test_http_ipv6(t):
    up = plain_upstream(t)
    al = start(t, [API_RULE], v6=True)
    ns = make_ns(t, {up.port: al.tport6}, ipv6=True)
    r = ns_curl(t, ns, ["--resolve", "api.test:%d:[2001:db8::5]" % up.port,
                        "http://api.test:%d/echo" % up.port])
    curl_ok(r, "curl over IPv6 (IP6T_SO_ORIGINAL_DST)")
    row = wait_row(al, "IPv6 transparent GET", host="api.test")
    fields(row, "IPv6 transparent GET", mode="transparent", sandbox="sbx", decision="allow",
           upstream="127.0.0.1:%d" % up.port)
    check(row["orig_dst"] in ("[2001:db8::5]:%d" % up.port, "2001:db8::5:%d" % up.port),
          "orig_dst %r, want [2001:db8::5]:%d" % (row["orig_dst"], up.port))


# ---------------------------------------------------------------------------
# TLS (SNI)


@test
def test_tls_sni_allowed_own_resolution(t):
    up = tls_upstream(t)
    al = start(t, [API_RULE])
    ns = make_ns(t, {up.port: al.tport})
    r = ns_curl(t, ns, ["--cacert", t.ca, "--resolve", "api.test:%d:%s" % (up.port, FAKE),
                        "https://api.test:%d/echo" % up.port])
    curl_ok(r, "curl https://api.test/ from the sandbox (original destination %s)" % FAKE)
    j = json.loads(r.body)
    eq(j["path"], "/echo", "path at the upstream")
    eq(up.connections, 1, "upstream connections")
    row = wait_row(al, "TLS tunnel", method="TLS", host="api.test")
    fields(row, "TLS tunnel", mode="transparent", sandbox="sbx", port=up.port,
           orig_dst="%s:%d" % (FAKE, up.port), upstream="127.0.0.1:%d" % up.port,
           decision="allow", rule="api")
    check(row["bytes_up"] > 0 and row["bytes_down"] > 0,
          "tunnel bytes up/down %r/%r" % (row["bytes_up"], row["bytes_down"]))


@test
def test_tls_intercepted_with_secret(t):
    """A secret's host reached through the transparent listener is
    intercepted exactly like a CONNECT (minus the 200): airlock's minted leaf
    (trusted by the sandbox), the header template injected toward the
    upstream, the echoed value redacted back to the placeholder, one row per
    request with the secret's name, and the value nowhere in the audit file
    or the log."""
    secret = "SECRET-VALUE-transparent-7e57"
    up = tls_upstream(t)
    cadir = os.path.join(t.tmp, "interception-ca")
    p = subprocess.run([t.run.airlock_bin, "ca", "init", "--dir", cadir],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    eq(p.returncode, 0, "airlock ca init")
    sec = os.path.join(t.tmp, "secrets.json")
    with open(sec, "w") as fh:
        json.dump({"secrets": {"api_token": {
            "from": {"value": secret}, "hosts": ["api.test"],
            "header": {"name": "Authorization", "format": "Bearer {}"}}}}, fh)
    al = start(t, [API_RULE], config={"ca": {"dir": cadir}, "upstream_ca": t.run.ca_pem,
                                      "secrets": sec})
    ns = make_ns(t, {up.port: al.tport})
    r = ns_curl(t, ns, ["--cacert", os.path.join(cadir, "ca.pem"),
                        "--resolve", "api.test:%d:%s" % (up.port, FAKE),
                        "https://api.test:%d/echo" % up.port])
    curl_ok(r, "intercepted curl from the sandbox")
    got = up.requests[-1]
    auth = [v for k, v in got["headers"] if k.lower() == "authorization"]
    eq(auth, ["Bearer " + secret], "Authorization at the upstream")
    check(secret.encode() not in r.body, "the echoed value reached the sandbox")
    check(b"al_ph_" in r.body, "the echo shows the placeholder instead")
    row = wait_row(al, "inner request", method="GET", host="api.test")
    fields(row, "inner request", mode="transparent", sandbox="sbx", status=200)
    check("api_token" in str(row["secrets"]), "secret name in the row: %r" % row["secrets"])
    time.sleep(0.3)
    db = os.path.join(al.dir, "audit.db")
    for path in (db, db + "-wal", al.log_path):
        if os.path.exists(path):
            with open(path, "rb") as fh:
                check(secret.encode() not in fh.read(), "secret value found in %s" % path)


@test
def test_tls_clienthello_split(t):
    """The ClientHello arrives in three writes with pauses (inside the record
    header, then mid-hello): the SNI is still found, the handshake completes
    end to end."""
    up = tls_upstream(t)
    al = start(t, [API_RULE])
    ns = make_ns(t, {up.port: al.tport})
    req = "GET /echo HTTP/1.1\r\nHost: api.test:%d\r\nConnection: close\r\n\r\n" % up.port
    for split in ([3], [3, 60], [150]):
        res = ns_py(t, ns, {"op": "tls", "addr": FAKE, "port": up.port, "sni": "api.test",
                            "cafile": t.ca, "check_hostname": True, "split": split,
                            "pause": 0.3, "request": req})
        check(res["handshake"], "split %s (ClientHello %d bytes): handshake failed: %s" %
              (split, res["hello_len"], res["error"]))
        eq(status_of(res["response"]), 200, "split %s: status (response %r, error %r)" %
           (split, res["response"][:200], res["error"]))
        check(res["hello_len"] > 150, "ClientHello only %d bytes" % res["hello_len"])
    eq(up.connections, 3, "upstream connections")
    wait_until(lambda: len([r for r in rows(al) if r["method"] == "TLS"]) >= 3, 5,
               "3 TLS rows")
    rs = [r for r in rows(al) if r["method"] == "TLS"]
    eq([(r["host"], r["decision"]) for r in rs], [("api.test", "allow")] * 3, "TLS rows")


@test
def test_tls_sni_denied_closed(t):
    up = tls_upstream(t)
    al = start(t, [API_RULE])
    ns = make_ns(t, {up.port: al.tport})
    r = ns_curl(t, ns, ["--cacert", t.ca, "--resolve", "evil.test:%d:%s" % (up.port, FAKE),
                        "https://evil.test:%d/echo" % up.port], timeout=10)
    check(r.rc != 0 and r.status == 0, "denied SNI: want the connection closed, got %r" % r)
    check(r.rc != 28, "denied SNI: curl timed out instead of being closed: %r" % r)
    res = ns_py(t, ns, {"op": "tls", "addr": FAKE, "port": up.port, "sni": "evil.test",
                        "cafile": t.ca, "check_hostname": True, "timeout": 5})
    check(not res["handshake"], "denied SNI: the handshake completed")
    check("timed out" not in res["error"], "denied SNI: not closed, the client timed out (%s)"
          % res["error"])
    eq(bytes.fromhex(res["got"]), b"", "bytes a TLS client got from airlock for a denied SNI "
       "(want a bare close; client error %r)" % res["error"])
    eq(up.connections, 0, "upstream connections for a denied SNI")
    row = wait_row(al, "denied SNI", method="TLS", host="evil.test")
    fields(row, "denied SNI", mode="transparent", sandbox="sbx", decision="deny",
           orig_dst="%s:%d" % (FAKE, up.port), upstream="")


@test
def test_tls_no_sni_denied(t):
    up = tls_upstream(t)
    al = start(t, [API_RULE])
    ns = make_ns(t, {up.port: al.tport})
    res = ns_py(t, ns, {"op": "tls", "addr": FAKE, "port": up.port, "sni": None,
                        "timeout": 5})
    check(not res["handshake"], "TLS without SNI to an unlisted IP: handshake completed")
    check("timed out" not in res["error"], "not closed, the client timed out (%s)" %
          res["error"])
    eq(bytes.fromhex(res["got"]), b"", "bytes the TLS client got from airlock (want a bare "
       "close; client error %r)" % res["error"])
    eq(up.connections, 0, "upstream connections")
    row = wait_row(al, "TLS without SNI", method="TLS", host=FAKE)
    fields(row, "TLS without SNI", mode="transparent", sandbox="sbx", decision="deny",
           orig_dst="%s:%d" % (FAKE, up.port), upstream="")


@test
def test_tls_no_sni_allowed_by_ip(t):
    """IP-only TLS to the host side's address: allowed by a rule naming that
    IP (hosts + cidrs); airlock connects to the original destination."""
    need_nat()
    up = tls_upstream(t, host="0.0.0.0")
    octet, host_addr = _ns_addr_first(t)
    al = start(t, [{"name": "ip", "hosts": [host_addr], "cidrs": [host_addr + "/32"]}])
    ns = _ns_at(t, octet, {up.port: al.tport})
    req = "GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    res = ns_py(t, ns, {"op": "tls", "addr": ns.host_addr, "port": up.port, "sni": None,
                        "cafile": t.ca, "check_hostname": False, "request": req})
    check(res["handshake"], "TLS without SNI to an allowed IP: %s" % res["error"])
    eq(status_of(res["response"]), 200, "status (%r)" % res["response"][:200])
    eq(up.connections, 1, "upstream connections")
    row = wait_row(al, "IP-only TLS", method="TLS", host=ns.host_addr)
    fields(row, "IP-only TLS", mode="transparent", sandbox="sbx", decision="allow",
           orig_dst="%s:%d" % (ns.host_addr, up.port),
           upstream="%s:%d" % (ns.host_addr, up.port))


# ---------------------------------------------------------------------------
# raw TCP


def _ns_addr_first(t):
    """The host-side address a new namespace will get (creates and removes
    one to learn a free octet; returns (octet, host_addr))."""
    ns_tmp = make_ns(t, {})
    octet, host_addr = ns_tmp.octet, ns_tmp.host_addr
    _ns_cleanup(ns_tmp)
    return octet, host_addr


def _ns_at(t, octet, redirect):
    ns = netns.Netns(redirect=redirect, octet=octet)
    ns.create()
    t.defer(_ns_cleanup, ns)
    return ns


@test
def test_raw_tcp_denied(t):
    up = plain_upstream(t)
    al = start(t, [API_RULE, {"name": "sub", "hosts": ["*.api.test"], "cidrs": LOOP}])
    ns = make_ns(t, {up.port: al.tport})
    res = ns_py(t, ns, {"op": "raw", "addr": FAKE, "port": up.port,
                        "send": b"\x00\x01hello raw\n".hex(), "timeout": 5})
    check(res["eof"], "raw TCP to an unlisted IP: not closed within 5s (%r)" % res)
    eq(bytes.fromhex(res["recv"]), b"", "bytes received on a refused raw TCP connection "
       "(want a bare close)")
    eq(up.connections, 0, "upstream connections")
    row = wait_row(al, "raw TCP denied", method="TCP", host=FAKE)
    fields(row, "raw TCP denied", mode="transparent", sandbox="sbx", decision="deny",
           orig_dst="%s:%d" % (FAKE, up.port), upstream="")


@test
def test_raw_tcp_allowed_by_ip(t):
    need_nat()
    echo = upstream_mod.EofEchoServer(host="0.0.0.0")
    t.defer(echo.stop)
    octet, host_addr = _ns_addr_first(t)
    al = start(t, [{"name": "ip", "hosts": [host_addr], "cidrs": [host_addr + "/32"]}])
    ns = _ns_at(t, octet, {echo.port: al.tport})
    data = pattern(100000)
    res = ns_py(t, ns, {"op": "raw", "addr": ns.host_addr, "port": echo.port,
                        "send": data.hex(), "shut_wr": True, "timeout": 10})
    got = bytes.fromhex(res["recv"])
    eq(got, b"got %d %s\n" % (len(data), sha256(data).encode()),
       "echo answer through the raw TCP relay (%s)" % res.get("error"))
    row = wait_row(al, "raw TCP allowed", method="TCP", host=ns.host_addr)
    fields(row, "raw TCP allowed", mode="transparent", sandbox="sbx", decision="allow",
           orig_dst="%s:%d" % (ns.host_addr, echo.port),
           upstream="%s:%d" % (ns.host_addr, echo.port))


@test
def test_raw_tcp_ip_needs_cidrs(t):
    """A rule naming the (non-public) IP in hosts but without cidrs does not
    let raw TCP through; nor does a cidrs-only rule for other hosts."""
    need_nat()
    echo = upstream_mod.EofEchoServer(host="0.0.0.0")
    t.defer(echo.stop)
    octet, host_addr = _ns_addr_first(t)
    al = start(t, [{"name": "nocidr", "hosts": [host_addr]},
                   {"name": "other", "hosts": ["api.test"], "cidrs": [host_addr + "/32"]}])
    ns = _ns_at(t, octet, {echo.port: al.tport})
    res = ns_py(t, ns, {"op": "raw", "addr": ns.host_addr, "port": echo.port,
                        "send": b"\x00raw".hex(), "timeout": 5})
    eq(bytes.fromhex(res["recv"]), b"", "raw TCP to a private IP allowed without cidrs: "
       "bytes received (want a bare close)")
    check(res["eof"], "not closed within 5s: %r" % res)
    row = wait_row(al, "raw TCP no cidrs", method="TCP", host=ns.host_addr)
    fields(row, "raw TCP no cidrs", mode="transparent", sandbox="sbx", decision="deny",
           upstream="")


# ---------------------------------------------------------------------------
# loop guard


@test
def test_loop_guard(t):
    up = plain_upstream(t)
    al = start(t, [API_RULE, {"name": "ip", "hosts": ["*"], "cidrs": ["10.231.0.0/16"]}])
    ns = make_ns(t, {up.port: al.tport, al.tport: al.tport})
    req = "GET /echo HTTP/1.1\r\nHost: api.test:%d\r\n\r\n" % up.port
    res = ns_py(t, ns, {"op": "raw", "addr": ns.host_addr, "port": al.tport,
                        "send": req.encode().hex(), "timeout": 5})
    check(res["eof"], "connection to airlock's own listener: not closed (%r)" % res)
    eq(res["recv"], "", "answer on a looped connection")
    eq(up.connections, 0, "upstream connections")
    row = wait_row(al, "loop guard", reason="loop")
    fields(row, "loop guard", mode="transparent", sandbox="sbx", orig_dst="%s:%d" % (ns.host_addr, al.tport),
           upstream="")
    check(al.alive(), "airlock died")
    # still serving
    r = ns_curl(t, ns, ["--resolve", "api.test:%d:%s" % (up.port, FAKE),
                        "http://api.test:%d/echo" % up.port])
    curl_ok(r, "request after the loop refusal")


# ---------------------------------------------------------------------------
# tool-call tags through the admin API


@test
def test_tool_call_tags(t):
    up = plain_upstream(t)
    tup = tls_upstream(t)
    al = start(t, [API_RULE])
    ns = make_ns(t, {up.port: al.tport, tup.port: al.tport})
    http = ["--resolve", "api.test:%d:%s" % (up.port, FAKE)]
    https = ["--cacert", t.ca, "--resolve", "api.test:%d:%s" % (tup.port, FAKE)]

    def get(path):
        r = ns_curl(t, ns, http + ["http://api.test:%d%s" % (up.port, path)])
        curl_ok(r, "GET " + path)

    def tls(path):
        r = ns_curl(t, ns, https + ["https://api.test:%d%s" % (tup.port, path)])
        curl_ok(r, "https GET " + path)

    get("/echo/before")
    st, body = admin(al, "PUT", "/v1/sandboxes/sbx/tool-call",
                     {"session": "s1", "tool_call": "toolu_01"})
    eq(st, 200, "PUT tool-call status (%s)" % body)
    sb = sandboxes(al)
    check("sbx" in sb, "GET /v1/sandboxes lacks sbx: %r" % sb)
    eq((sb["sbx"].get("session"), sb["sbx"].get("tool_call")), ("s1", "toolu_01"),
       "tags listed for sbx")
    get("/echo/tagged")
    tls("/echo/tagged-tls")
    st, body = admin(al, "PUT", "/v1/sandboxes/sbx/tool-call",
                     {"session": "s1", "tool_call": "toolu_02"})
    eq(st, 200, "PUT replacing tool-call (%s)" % body)
    get("/echo/replaced")
    st, body = admin(al, "DELETE", "/v1/sandboxes/sbx/tool-call")
    eq(st, 200, "DELETE tool-call status (%s)" % body)
    get("/echo/after")
    tls("/echo/after-tls")
    r = wait_row(al, "before", path="/echo/before")
    fields(r, "row before PUT", sandbox="sbx", session="", tool_call="", mode="transparent")
    r = wait_row(al, "tagged", path="/echo/tagged")
    fields(r, "row after PUT", sandbox="sbx", session="s1", tool_call="toolu_01")
    r = wait_row(al, "replaced", path="/echo/replaced")
    fields(r, "row after second PUT", session="s1", tool_call="toolu_02")
    r = wait_row(al, "after", path="/echo/after")
    fields(r, "row after DELETE", sandbox="sbx", session="", tool_call="")
    tl = wait_until(lambda: len([x for x in rows(al) if x["method"] == "TLS"]) >= 2 and
                    [x for x in rows(al) if x["method"] == "TLS"], 5, "2 TLS rows")
    eq([(x["session"], x["tool_call"]) for x in tl], [("s1", "toolu_01"), ("", "")],
       "TLS tunnel rows (tagged, then after DELETE)")
    sb = sandboxes(al)
    s = sb["sbx"]
    eq((s.get("session"), s.get("tool_call")), ("", ""), "tags listed after DELETE")


@test
def test_sandbox_counters(t):
    """GET /v1/sandboxes counts every request of the sandbox: an allowed and
    a denied HTTP request, an allowed TLS tunnel, a denied raw connection."""
    up = plain_upstream(t)
    tup = tls_upstream(t)
    al = start(t, [API_RULE])
    ns = make_ns(t, {up.port: al.tport, tup.port: al.tport})
    eq({k: sandboxes(al)["sbx"].get(k) for k in ("requests", "denied")},
       {"requests": 0, "denied": 0}, "counters at start")
    r = ns_curl(t, ns, ["--resolve", "api.test:%d:%s" % (up.port, FAKE),
                        "http://api.test:%d/echo" % up.port])
    curl_ok(r, "allowed HTTP")
    r = ns_curl(t, ns, ["--resolve", "evil.test:%d:%s" % (up.port, FAKE),
                        "http://evil.test:%d/echo" % up.port])
    eq(r.status, 403, "denied HTTP")
    r = ns_curl(t, ns, ["--cacert", t.ca, "--resolve", "api.test:%d:%s" % (tup.port, FAKE),
                        "https://api.test:%d/echo" % tup.port])
    curl_ok(r, "allowed TLS tunnel")
    ns_py(t, ns, {"op": "raw", "addr": FAKE, "port": up.port, "send": b"\x00raw".hex(),
                  "timeout": 5})
    wait_until(lambda: len(rows(al)) >= 4, 5, "4 audit rows")
    s = sandboxes(al)["sbx"]
    eq({k: s.get(k) for k in ("requests", "denied")}, {"requests": 4, "denied": 2},
       "sbx counters after 2 allowed (HTTP, TLS tunnel) and 2 denied (HTTP, raw) (%r)" % s)
    tl = [x for x in rows(al) if x["method"] == "TLS"][0]
    check(s.get("bytes_down", 0) >= tl["bytes_down"],
          "bytes_down counter %r lacks the TLS tunnel's %d bytes" % (s.get("bytes_down"),
                                                                       tl["bytes_down"]))


@test
def test_peeked_bytes_counted(t):
    """The bytes airlock peeked to classify a connection (ClientHello, the
    first raw segment) are relayed and counted in the row's bytes_up."""
    need_nat()
    echo = upstream_mod.EofEchoServer(host="0.0.0.0")
    t.defer(echo.stop)
    tup = tls_upstream(t)
    octet, host_addr = _ns_addr_first(t)
    al = start(t, [API_RULE,
                   {"name": "ip", "hosts": [host_addr], "cidrs": [host_addr + "/32"]}])
    ns = _ns_at(t, octet, {echo.port: al.tport, tup.port: al.tport})
    data = pattern(100000)
    res = ns_py(t, ns, {"op": "raw", "addr": ns.host_addr, "port": echo.port,
                        "send": data.hex(), "shut_wr": True, "timeout": 10})
    eq(bytes.fromhex(res["recv"]), b"got %d %s\n" % (len(data), sha256(data).encode()),
       "echo answer (%s)" % res.get("error"))
    row = wait_row(al, "raw TCP", method="TCP")
    eq((row["bytes_up"], row["bytes_down"]), (len(data), len(bytes.fromhex(res["recv"]))),
       "raw TCP row bytes_up/bytes_down (sent %d, received %d)" %
       (len(data), len(bytes.fromhex(res["recv"]))))
    req = "GET /echo HTTP/1.1\r\nHost: api.test:%d\r\nConnection: close\r\n\r\n" % tup.port
    res = ns_py(t, ns, {"op": "tls", "addr": FAKE, "port": tup.port, "sni": "api.test",
                        "cafile": t.ca, "check_hostname": True, "request": req})
    eq(status_of(res["response"]), 200, "TLS request (%s)" % res["error"])
    row = wait_row(al, "TLS tunnel", method="TLS")
    check(row["bytes_up"] >= res["hello_len"] + len(req),
          "TLS row bytes_up %d < ClientHello %d + request %d bytes" %
          (row["bytes_up"], res["hello_len"], len(req)))


@test
def test_raw_tcp_short_then_eof(t):
    """Raw TCP that sends a few bytes (which could still be the start of an
    HTTP method) and half-closes is still relayed to an allowed original
    destination."""
    need_nat()
    echo = upstream_mod.EofEchoServer(host="0.0.0.0")
    t.defer(echo.stop)
    octet, host_addr = _ns_addr_first(t)
    al = start(t, [{"name": "ip", "hosts": [host_addr], "cidrs": [host_addr + "/32"]}])
    ns = _ns_at(t, octet, {echo.port: al.tport})
    res = ns_py(t, ns, {"op": "raw", "addr": ns.host_addr, "port": echo.port,
                        "send": b"ping".hex(), "shut_wr": True, "timeout": 5})
    eq(bytes.fromhex(res["recv"]), b"got 4 %s\n" % sha256(b"ping").encode(),
       "echo answer for 4 bytes + FIN (%s)" % (res.get("error") or "eof=%s" % res["eof"]))
    row = wait_row(al, "short raw", host=ns.host_addr)
    fields(row, "short raw", method="TCP", sandbox="sbx", decision="allow")


@test
def test_admin_errors(t):
    al = start(t, [API_RULE])
    st, body = admin(al, "PUT", "/v1/sandboxes/nosuch/tool-call",
                     {"session": "s1", "tool_call": "toolu_01"})
    eq(st, 404, "unknown sandbox (%s)" % body)
    st, body = admin(al, "DELETE", "/v1/sandboxes/nosuch/tool-call")
    eq(st, 404, "DELETE unknown sandbox (%s)" % body)
    for bad in ({"session": "s1", "tool_call": "bad tag!"},
                {"session": "s 1", "tool_call": "ok"},
                {"session": "s1"},
                {"session": "s1", "tool_call": ""},
                {"session": "s1", "tool_call": "x" * 200},
                b"not json"):
        st, body = admin(al, "PUT", "/v1/sandboxes/sbx/tool-call", bad)
        eq(st, 400, "invalid tag %r (%s)" % (bad, body))
    eq(sandboxes(al)["sbx"].get("tool_call"), "", "tool_call after rejected PUTs")


@test
def test_admin_token(t):
    al = start(t, [API_RULE], admin_token=ADMIN_TOKEN)
    st, body = admin(al, "GET", "/healthz")
    eq(st, 200, "/healthz without a token")
    for tok in (None, "wrong-token", ADMIN_TOKEN + "x", ""):
        st, _ = admin(al, "GET", "/v1/sandboxes", token=tok)
        eq(st, 401, "GET /v1/sandboxes with token %r" % tok)
        st, _ = admin(al, "PUT", "/v1/sandboxes/sbx/tool-call",
                      {"session": "s", "tool_call": "c"}, token=tok)
        eq(st, 401, "PUT tool-call with token %r" % tok)
        st, _ = admin(al, "DELETE", "/v1/sandboxes/sbx/tool-call", token=tok)
        eq(st, 401, "DELETE tool-call with token %r" % tok)
        st, _ = admin(al, "GET", "/metrics", token=tok)
        eq(st, 401, "GET /metrics with token %r" % tok)
    eq(sandboxes(al, token=ADMIN_TOKEN)["sbx"].get("tool_call"), "",
       "no tag set by the refused PUTs")
    st, body = admin(al, "PUT", "/v1/sandboxes/sbx/tool-call",
                     {"session": "s9", "tool_call": "toolu_09"}, token=ADMIN_TOKEN)
    eq(st, 200, "PUT with the token (%s)" % body)
    eq(sandboxes(al, token=ADMIN_TOKEN)["sbx"].get("tool_call"), "toolu_09", "tag set")
    st, _ = admin(al, "GET", "/metrics", token=ADMIN_TOKEN)
    eq(st, 200, "/metrics with the token")


# ---------------------------------------------------------------------------
# request smuggling (issue 14)


def _smuggle_req(port, vector, smuggled):
    """A GET whose Connection header names its own framing, with a second
    request as its body (what a desynced origin would parse as a request)."""
    if "chunked" in vector:
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled)
    else:
        body = smuggled
        vector = "Content-Length: %d\r\n%s" % (len(smuggled), vector)
    return ("GET /public/x HTTP/1.1\r\nHost: api.test:%d\r\n%s\r\n" %
            (port, vector)).encode() + body


@test
def test_http_connection_names_framing(t):
    """A transparent sandbox cannot hide a second request in a body by
    naming the body's framing in Connection: refused 400
    bad_connection_header before anything reaches the origin, audited with
    the sandbox; the namespace still gets honest requests through."""
    need_nat()
    o = rawhttp.RawOrigin(host="127.0.0.1")
    t.defer(o.stop)
    al = start(t, [{"name": "public", "hosts": ["api.test"], "paths": ["/public/**"],
                    "cidrs": LOOP, "action": "allow"}])
    ns = make_ns(t, {o.port: al.tport})
    smuggled = (b"DELETE /admin/secret-stuff HTTP/1.1\r\nHost: api.test:%d\r\n"
                b"Content-Length: 0\r\n\r\n" % o.port)
    vectors = [("Connection: content-length\r\n", "content-length"),
               ("Connection: keep-alive, Content-Length\r\n", "content-length"),
               ("Transfer-Encoding: chunked\r\nConnection: transfer-encoding\r\n",
                "transfer-encoding")]
    for vector, name in vectors:
        res = ns_py(t, ns, {"op": "raw", "addr": FAKE, "port": o.port,
                            "send": _smuggle_req(o.port, vector, smuggled).hex(),
                            "timeout": 5})
        resp = bytes.fromhex(res["recv"]).decode("latin-1")
        head, _, body = resp.partition("\r\n\r\n")
        what = "%r (origin parsed %r)" % (vector, o.lines())
        eq(status_of(resp), 400, "status for %s: %r" % (what, resp[:300]))
        check(re.search(r"\r\nX-Airlock-Reason: bad_connection_header\r\n", head + "\r\n",
                        re.I) is not None, "X-Airlock-Reason for %s: %r" % (what, head))
        check(name in body, "detail names %s: %r" % (name, body))
        check(res["eof"], "connection closed after the refusal of %s: %r" % (what, res))
    eq(o.lines(), [], "requests the origin parsed (nothing may reach it)")
    wait_until(lambda: len([r for r in rows(al) if r["reason"] == "bad_connection_header"])
               == len(vectors), 5, "one audit row per refused request")
    for r in rows(al):
        if r["reason"] == "bad_connection_header":
            fields(r, "refused smuggling attempt", mode="transparent", sandbox="sbx",
                   method="GET", host="api.test", port=o.port, path="/public/x", status=400,
                   orig_dst="%s:%d" % (FAKE, o.port))
    # the namespace still gets an honest request through
    res = ns_py(t, ns, {"op": "raw", "addr": FAKE, "port": o.port,
                        "send": (b"GET /public/ok HTTP/1.1\r\nHost: api.test:%d\r\n"
                                 b"Connection: close\r\n\r\n" % o.port).hex(),
                        "timeout": 5})
    resp = bytes.fromhex(res["recv"]).decode("latin-1")
    eq(status_of(resp), 200, "honest GET /public/ok: %r" % resp[:300])
    check(resp.endswith("ok GET /public/ok\n"), "honest GET body: %r" % resp[-200:])
    eq(o.lines(), ["GET /public/ok"], "origin log")
    row = wait_row(al, "honest GET", method="GET", path="/public/ok")
    fields(row, "honest GET", mode="transparent", sandbox="sbx", decision="allow",
           rule="public", status=200)


WS_CLIENT = r'''
import asyncio, json, socket, ssl, sys
import websockets

spec = json.loads(sys.stdin.read())


async def main():
    s = socket.create_connection((spec["addr"], spec["port"]), timeout=10)
    ctx = ssl.create_default_context(cafile=spec["ca"])
    async with websockets.connect(spec["uri"], sock=s, ssl=ctx,
                                  server_hostname=spec["host"]) as ws:
        await ws.send("say")
        got = []
        while True:
            m = await ws.recv()
            got.append(m)
            if m == "done":
                break
        print(json.dumps(got))

asyncio.run(asyncio.wait_for(main(), 20))
'''


@test
def test_websocket_intercepted_with_secret(t):
    """A websocket from a transparent sandbox to a secret's host: intercepted
    like a CONNECT's, the credential injected on the upgrade, the origin's
    echo of it in a frame redacted back to the placeholder, one row (101,
    mode transparent)."""
    import asyncio
    import threading
    try:
        import websockets
    except ImportError:
        sys.path.append("/usr/lib/python3/dist-packages")
        import websockets
    secret = "SECRET-VALUE-transparent-ws-5d2b"
    cadir = os.path.join(t.tmp, "interception-ca")
    p = subprocess.run([t.run.airlock_bin, "ca", "init", "--dir", cadir],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    eq(p.returncode, 0, "airlock ca init")
    sec = os.path.join(t.tmp, "secrets.json")
    with open(sec, "w") as fh:
        json.dump({"secrets": {"api_token": {
            "from": {"value": secret}, "hosts": ["api.test"],
            "header": {"name": "Authorization", "format": "Bearer {}"}}}}, fh)
    seen = {}
    ready = threading.Event()
    loop = asyncio.new_event_loop()

    async def handler(ws, path=None):
        auth = ws.request_headers.get("Authorization", "")
        seen["auth"] = auth
        async for msg in ws:
            await ws.send("text:" + auth[7:])
            await ws.send("done")

    async def serve():
        srv = await websockets.serve(handler, "127.0.0.1", 0, ssl=api_server_ctx(t.run))
        seen["port"] = srv.sockets[0].getsockname()[1]
        seen["srv"] = srv
        ready.set()
        await srv.wait_closed()

    th = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    th.start()
    check(ready.wait(10), "websocket origin started")
    t.defer(lambda: (loop.call_soon_threadsafe(seen["srv"].close), th.join(5)))
    port = seen["port"]
    al = start(t, [API_RULE], config={"ca": {"dir": cadir}, "upstream_ca": t.run.ca_pem,
                                      "secrets": sec})
    ns = make_ns(t, {port: al.tport})
    path = os.path.join(t.run.tmp, "nswsclient.py")
    with open(path, "w") as fh:
        fh.write(WS_CLIENT)
    spec = {"addr": FAKE, "port": port, "host": "api.test", "uri": "wss://api.test:%d/ws" % port,
            "ca": os.path.join(cadir, "ca.pem")}
    r = ns.run_in_ns(["/usr/bin/python3", path], input=json.dumps(spec).encode(), timeout=40)
    eq(r.returncode, 0, "websocket client in the sandbox: %s" % r.stderr.decode()[-500:])
    got = json.loads(r.stdout.decode().strip().splitlines()[-1])
    eq(seen.get("auth"), "Bearer " + secret, "Authorization injected on the upgrade")
    check(secret not in got[0] and "al_ph_" in got[0], "the echo reached the sandbox redacted: %r"
          % got[0])
    row = wait_row(al, "websocket", method="GET", host="api.test", status=101, pending=0)
    fields(row, "websocket", mode="transparent", sandbox="sbx")
    # its row was begun at the 101 (pending) and completed in place: one row
    eq(len([r for r in rows(al) if r["method"] == "GET" and r["path"] == "/ws"]), 1,
       "one row per socket")
    check(json.loads(row["detail"])["ws"]["messages_up"] == 1, "detail: %r" % row["detail"])


# ---------------------------------------------------------------------------
# cleanup


@test
def test_cleanup_on_failure(t):
    need_nat()
    ns = netns.Netns(redirect={80: 1})
    p = None
    try:
        with ns:
            p = ns.popen_in_ns(["sleep", "300"])
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    check(p is not None and p.poll() is not None, "process in the namespace still running")
    eq(ns.leftovers(), [], "left behind after a failing body")


@test
def test_no_leftovers(t):
    """Runs last: nothing this process created is left (namespaces, veths,
    nft tables), apart from what the running test itself holds (nothing)."""
    pid = os.getpid()
    out = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=10).stdout.decode()
    left = [ln for ln in out.splitlines() if ln.startswith("al-%d-" % pid)]
    out = subprocess.run(["nft", "list", "tables"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=10).stdout.decode()
    left += [ln for ln in out.splitlines() if "al_%d_" % pid in ln]
    out = subprocess.run(["ip", "-o", "link", "show"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=10).stdout.decode()
    left += [ln.split(":")[1].strip() for ln in out.splitlines()
             if re.match(r"\d+: al%dh\d+[@:]" % pid, ln)]
    eq(left, [], "left behind by this run")


if __name__ == "__main__":
    sys.exit(altest.main())
