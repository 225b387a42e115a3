#!/usr/bin/env python3
"""Client TLS session resumption across hosts, and accepting under file
descriptor exhaustion (issue 20 item 5, issue 14).

    python3 tests/integration/test_tls_accept.py --airlock build/proxy/airlock [-k NAME]

Resumption: a client with a session cache that talks to two hosts through an
intercepting airlock offers host A's session in the tunnel to host B. airlock
must decline the resumption and do a full handshake with B's certificate (as
RFC 5246/6066 servers do), not fail the handshake; A's session still resumes
in a tunnel to A. Covered for TLS 1.2 session ids, TLS 1.2 tickets and TLS 1.3
tickets.

Exhaustion: airlock's RLIMIT_NOFILE is lowered (prlimit on the running
process) until idle clients use up its descriptors. Further connections must
not make it spin on the listener (CPU) or log every failed accept; a client
waiting in the backlog gets 503 fd_exhausted now and then, and once the idle
clients leave, new clients are served normally again.
"""

import os
import re
import resource
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import altest  # noqa: E402
from altest import TestFailure, check, eq, test, wait_until  # noqa: E402

HOST_A = "upstream.test"  # both names are on the harness's upstream certificate
HOST_B = "localhost"


class _G:
    aca_pem = None


G = _G()


def airlock_ca():
    """airlock's interception CA (one per run)."""
    if G.aca_pem is None:
        d = os.path.join(altest.RUN.tmp, "aca")
        p = subprocess.run([altest.RUN.airlock_bin, "ca", "init", "--dir", d],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        if p.returncode != 0:
            raise TestFailure("airlock ca init failed: %r" % p.stdout)
        G.aca_dir = d
        G.aca_pem = os.path.join(d, "ca.pem")
    return G.aca_dir


def start_mitm(t):
    d = airlock_ca()
    pol = {"default": "deny", "allow_addresses": ["127.0.0.0/8", "::1/128"],
           "rules": [{"name": "mitm", "hosts": [HOST_A, HOST_B], "action": "allow",
                      "intercept": True}]}
    cfg = {"ca": {"dir": d}, "upstream_ca": altest.RUN.ca_pem,
           "resolve": {HOST_A: "127.0.0.1", HOST_B: "127.0.0.1"}}
    return t.airlock(config=cfg, policy=pol)


def client_ctx(max_version=None, tickets=True):
    ctx = ssl.create_default_context(cafile=G.aca_pem)
    if max_version is not None:
        ctx.maximum_version = max_version
    if not tickets:  # TLS 1.2 resumption by session id (server cache) only
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


def tunnel(t, al, host, port, ctx, session=None):
    """CONNECT host:port, then TLS with `session` offered. Returns the SSL
    socket (handshake done) or raises TestFailure with the handshake error."""
    c = t.conn(al.port)
    c.send(("CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (host, port, host, port)).encode())
    r = c.read_response("CONNECT")
    eq(r.status, 200, "CONNECT %s" % host)
    try:
        s = ctx.wrap_socket(c.sock, server_hostname=host, session=session)
    except (ssl.SSLError, OSError) as e:
        raise TestFailure("TLS handshake in the tunnel to %s failed: %s" % (host, e))
    c.sock = s
    return s


def get(s, host, port, path="/bytes/5"):
    """One inner request (also makes a TLS 1.3 client read its ticket)."""
    s.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (path, host, port)).encode())
    r = altest.Conn(0, sock=s).read_response()
    return r


def leaf_names(s):
    return [v for k, v in s.getpeercert().get("subjectAltName", ()) if k == "DNS"]


def _resume_across_hosts(t, max_version, tickets):
    up = t.upstream(tls=True)
    al = start_mitm(t)
    ctx = client_ctx(max_version, tickets)
    # a full handshake with A, one request (a TLS 1.3 ticket arrives after
    # the handshake), then the session
    sa = tunnel(t, al, HOST_A, up.port, ctx)
    eq(leaf_names(sa), [HOST_A], "SANs of A's leaf")
    eq(get(sa, HOST_A, up.port).status, 200, "request to A")
    sess_a = sa.session
    check(sess_a is not None, "no session from A")
    # (the tunnel to A stays open: airlock frees a connection the client
    # closed without a TLS shutdown, and OpenSSL then drops its session id
    # from the server cache; tickets survive that)
    # A's session offered to B: a full handshake with B's certificate
    sb = tunnel(t, al, HOST_B, up.port, ctx, session=sess_a)
    eq(sb.session_reused, False, "session of %s reused in a tunnel to %s" % (HOST_A, HOST_B))
    eq(leaf_names(sb), [HOST_B], "SANs of the leaf in the tunnel to B")
    eq(get(sb, HOST_B, up.port).status, 200, "request to B")
    sb.close()
    # A's session still resumes with A
    sa2 = tunnel(t, al, HOST_A, up.port, ctx, session=sess_a)
    eq(sa2.session_reused, True, "A's session resumed with A")
    eq(get(sa2, HOST_A, up.port).status, 200, "request to A after resumption")
    sa2.close()
    sa.close()
    log = al.log()
    check("sni_mismatch" not in log, "a tunnel was refused sni_mismatch:\n%s" % al.log_tail())
    m = al.metrics()
    eq(m.need("airlock_tls_failures_total"), 0.0, "TLS failures")


@test
def test_tls12_session_id_other_host_full_handshake(t):
    """TLS 1.2 session id (no tickets) of host A offered in a tunnel to B."""
    _resume_across_hosts(t, ssl.TLSVersion.TLSv1_2, tickets=False)


@test
def test_tls12_ticket_other_host_full_handshake(t):
    """TLS 1.2 session ticket of host A offered in a tunnel to B."""
    _resume_across_hosts(t, ssl.TLSVersion.TLSv1_2, tickets=True)


@test
def test_tls13_ticket_other_host_full_handshake(t):
    """TLS 1.3 ticket of host A offered in a tunnel to B: airlock must not
    resume it there (B's tunnel would run on A's authentication)."""
    _resume_across_hosts(t, None, tickets=True)


@test
def test_tls12_session_id_resumes_after_close(t):
    """A TLS 1.2 session id (no tickets) still resumes after the client
    closed the tunnel it was minted in: airlock's close of a connection whose
    handshake completed keeps the session in the server cache (RFC 5246 does
    not ask to drop it; OpenSSL did when freed without a shutdown)."""
    up = t.upstream(tls=True)
    al = start_mitm(t)
    ctx = client_ctx(ssl.TLSVersion.TLSv1_2, tickets=False)
    sa = tunnel(t, al, HOST_A, up.port, ctx)
    eq(get(sa, HOST_A, up.port).status, 200, "request to A")
    sess_a = sa.session
    sa.close()
    wait_until(lambda: al.metrics().need("airlock_connections_open") == 0, 5,
               "the first tunnel closed")
    sa2 = tunnel(t, al, HOST_A, up.port, ctx, session=sess_a)
    eq(sa2.session_reused, True, "A's session id resumed after its tunnel closed")
    eq(get(sa2, HOST_A, up.port).status, 200, "request after resumption")
    sa2.close()


@test
def test_tls12_resume_with_other_sni_refused(t):
    """CONNECT A, then a ClientHello naming B that offers A's TLS 1.2
    session: the SNI must still name the CONNECT host. (OpenSSL reports the
    session's name, A, as the SNI of a resumed TLS 1.2 handshake, so this
    resumed unseen before.)"""
    up = t.upstream(tls=True)
    al = start_mitm(t)
    for tickets in (False, True):
        ctx = client_ctx(ssl.TLSVersion.TLSv1_2, tickets)
        sa = tunnel(t, al, HOST_A, up.port, ctx)
        sess_a = sa.session
        c = t.conn(al.port)
        c.send(("CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n" %
                (HOST_A, up.port, HOST_A, up.port)).encode())
        eq(c.read_response("CONNECT").status, 200, "CONNECT A")
        try:
            s = ctx.wrap_socket(c.sock, server_hostname=HOST_B, session=sess_a)
            raise TestFailure("handshake naming %s in a tunnel to %s succeeded (reused=%r)" %
                              (HOST_B, HOST_A, s.session_reused))
        except ssl.SSLError as e:
            check("UNRECOGNIZED_NAME" in str(e).upper(), "handshake error: %s" % e)
        sa.close()
    wait_until(lambda: al.log().count("refused: sni_mismatch") >= 2, 5,
               "two tunnels refused sni_mismatch in the log")


# ---------------------------------------------------------------------------
# accept under descriptor exhaustion

def cpu_ticks(pid):
    """utime + stime of the whole process, in clock ticks."""
    with open("/proc/%d/stat" % pid) as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])


ACCEPT_LINE = re.compile(r"accept on worker")


def _connect(port, timeout=2):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s


@test
def test_accept_fd_exhaustion(t):
    up = t.upstream()
    al = t.airlock(workers=1, limits={"header_timeout_s": 60, "idle_timeout_s": 60})
    url = "http://upstream.test:%d/bytes/10" % up.port
    r = al.curl([url])
    check(r.rc == 0 and r.status == 200, "before: %r" % r)
    # leave a handful of descriptors, then use them up with idle clients
    base = al.fd_count()
    limit = base + 12
    resource.prlimit(al.pid, resource.RLIMIT_NOFILE, (limit, limit))
    idle = []
    t.defer(lambda: [s.close() for s in idle])
    for _ in range(40):
        idle.append(_connect(al.port))
    wait_until(lambda: al.fd_count() >= limit - 1, 5, "airlock's descriptors to run out")
    log0 = len(ACCEPT_LINE.findall(al.log()))
    # keep connecting for 2 s: the listener stays readable all along
    pending = []
    t.defer(lambda: [s.close() for s in pending])
    ticks = os.sysconf("SC_CLK_TCK")
    c0, w0 = cpu_ticks(al.pid), time.monotonic()
    while time.monotonic() - w0 < 2.0:
        pending.append(_connect(al.port))
        time.sleep(0.02)
    cpu = (cpu_ticks(al.pid) - c0) / ticks
    wall = time.monotonic() - w0
    lines = len(ACCEPT_LINE.findall(al.log())) - log0
    check(al.alive(), "airlock died")
    print("#   exhausted for %.2fs: airlock CPU %.2fs (%.0f%%), %d accept-failure log lines" %
          (wall, cpu, 100 * cpu / wall, lines))
    check(lines <= 6, "%d accept-failure log lines in %.1fs (want a few)" % (lines, wall))
    check(cpu < 0.5 * wall, "airlock used %.2fs CPU in %.2fs while out of descriptors" %
          (cpu, wall))
    # some waiting clients were shed with 503 fd_exhausted (one per pause)
    shed = 0
    for s in pending + idle:
        s.setblocking(False)
        try:
            d = s.recv(4096)
        except (BlockingIOError, ConnectionResetError):
            continue
        if d.startswith(b"HTTP/1.1 503") and b"X-Airlock-Reason: fd_exhausted" in d:
            shed += 1
    check(shed >= 1, "no waiting client was answered 503 fd_exhausted")
    # the clients leave: airlock serves again
    for s in idle + pending:
        s.close()
    idle.clear()
    pending.clear()

    def served():
        r = al.curl([url], timeout=5)
        return r if r.rc == 0 and r.status == 200 else None
    wait_until(served, 10, "a client served after the descriptors came back", interval=0.1)
    m = al.metrics()
    check(m.need("airlock_accept_errors_total", {"reason": "fd_exhausted"}) >= 1,
          "airlock_accept_errors_total{reason=fd_exhausted} did not count")
    check(m.need("airlock_connections_refused_total") >= shed, "shed clients not counted")


@test
def test_admin_accept_fd_exhaustion(t):
    """The admin listener rests too when accept runs out of descriptors
    (it spun a core at ~80 % before, with clients waiting on the admin port)."""
    al = t.airlock(workers=1, limits={"header_timeout_s": 60, "idle_timeout_s": 60})
    base = al.fd_count()
    limit = base + 8
    resource.prlimit(al.pid, resource.RLIMIT_NOFILE, (limit, limit))
    idle = []
    t.defer(lambda: [s.close() for s in idle])
    for _ in range(20):
        idle.append(_connect(al.port))
    wait_until(lambda: al.fd_count() >= limit - 1, 5, "airlock's descriptors to run out")
    for _ in range(5):
        idle.append(_connect(al.admin_port))
    ticks = os.sysconf("SC_CLK_TCK")
    c0, w0 = cpu_ticks(al.pid), time.monotonic()
    while time.monotonic() - w0 < 2.0:
        time.sleep(0.05)
    cpu = (cpu_ticks(al.pid) - c0) / ticks
    wall = time.monotonic() - w0
    print("#   admin port waiting, descriptors out for %.2fs: airlock CPU %.2fs" % (wall, cpu))
    check(cpu < 0.5 * wall, "airlock used %.2fs CPU in %.2fs (admin accept spinning)" % (cpu, wall))
    for s in idle:
        s.close()
    idle.clear()
    wait_until(lambda: altest.http_get_direct(al.admin + "/healthz")[0] == 200, 10,
               "the admin API answers again", interval=0.1)


if __name__ == "__main__":
    sys.exit(altest.main())
