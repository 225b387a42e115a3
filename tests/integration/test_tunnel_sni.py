#!/usr/bin/env python3
"""Opaque CONNECT tunnels check the ClientHello's SNI (issue 15, defect 1):
a tunnel to one host whose TLS names another (domain fronting) is closed
before any byte goes upstream, with an audit row (deny, sni_mismatch); the
same host, no SNI (an IP literal), non-TLS protocols and upstreams that speak
first pass.

    python3 tests/integration/test_tunnel_sni.py --airlock build/proxy/airlock [-k NAME]
"""

import os
import socket
import sqlite3
import subprocess
import ssl
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import altest  # noqa: E402
from altest import TestFailure, check, eq, test, wait_until  # noqa: E402

HOST = "upstream.test"  # the harness's server certificate names it


class Recorder:
    """A TCP server that records every byte each connection sends it; with
    a TLS context it completes handshakes and echoes one line; with a
    banner it speaks first."""

    def __init__(self, tls_ctx=None, banner=None):
        self.tls_ctx, self.banner = tls_ctx, banner
        self.lock = threading.Lock()
        self.conns = []  # bytes received per connection (plain), or "tls:<line>"
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        idx = None
        with self.lock:
            self.conns.append(b"")
            idx = len(self.conns) - 1
        try:
            c.settimeout(10)
            if self.banner:
                c.sendall(self.banner)
            if self.tls_ctx is not None:
                peek = c.recv(1, socket.MSG_PEEK)
                if not peek:
                    return
                with self.lock:
                    self.conns[idx] = b"tls"
                s = self.tls_ctx.wrap_socket(c, server_side=True)
                line = s.recv(100)
                s.sendall(b"echo:" + line)
                s.close()
                return
            while True:
                d = c.recv(65536)
                if not d:
                    return
                with self.lock:
                    self.conns[idx] += d
                c.sendall(b"echo:" + d)
        except (OSError, ssl.SSLError):
            return
        finally:
            c.close()

    def stop(self):
        self.sock.close()


def recorder(t, **kw):
    r = Recorder(**kw)
    t.defer(r.stop)
    return r


def start(t):
    pol = {"default": "deny", "rules": [
        {"name": "tunnels", "hosts": [HOST, "127.0.0.1"], "cidrs": ["127.0.0.1/32"],
         "action": "allow"}]}
    return t.airlock(config={"resolve": {HOST: "127.0.0.1"},
                             "audit": {"db": "audit.db", "flush_ms": 20}}, policy=pol)


def rows(al):
    c = sqlite3.connect("file:%s?mode=ro" % os.path.join(al.dir, "audit.db"), uri=True, timeout=5)
    c.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in c.execute("SELECT * FROM requests ORDER BY id")]
    except sqlite3.OperationalError:
        return []
    finally:
        c.close()


def connect(t, al, authority):
    c = t.conn(al.port)
    c.send(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority, authority)).encode())
    r = c.read_response("CONNECT")
    eq(r.status, 200, "CONNECT %s" % authority)
    return c


def tls_through(c, sni, cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = ctx.wrap_socket(c.sock, server_hostname=sni, do_handshake_on_connect=False)
    s.settimeout(5)
    s.do_handshake()
    s.sendall(b"hello\n")
    return s.recv(100)


@test
def test_sni_mismatch_closed_before_upstream(t):
    up = recorder(t, tls_ctx=t.run.server_ctx())
    al = start(t)
    c = connect(t, al, "%s:%d" % (HOST, up.port))
    try:
        tls_through(c, "other.example", t.run.ca_pem)
        raise TestFailure("a ClientHello for another host went through the tunnel")
    except (ssl.SSLError, OSError):
        pass
    row = wait_until(lambda: next((r for r in rows(al) if r["reason"] == "sni_mismatch"), None),
                     5, "a sni_mismatch row")
    eq((row["decision"], row["method"], row["host"]), ("deny", "CONNECT", HOST), "row")
    # the upstream's socket may have been opened, but it never got a byte
    check(all(b == b"" for b in up.conns), "bytes reached the upstream: %r" % up.conns)


@test
def test_same_sni_passes(t):
    up = recorder(t, tls_ctx=t.run.server_ctx())
    al = start(t)
    c = connect(t, al, "%s:%d" % (HOST, up.port))
    eq(tls_through(c, HOST, t.run.ca_pem), b"echo:hello\n", "echo through the tunnel")
    c = connect(t, al, "%s:%d" % (HOST.upper(), up.port))
    eq(tls_through(c, HOST + ".", t.run.ca_pem), b"echo:hello\n", "case and trailing dot")
    # the tunnel's row records the SNI it checked (policy replay's input)
    row = wait_until(lambda: next((r for r in rows(al) if r["method"] == "CONNECT" and
                                   r["sni"]), None), 5, "a tunnel row with its SNI")
    eq(row["sni"], HOST, "SNI in the tunnel's row")


def s_client(al, target, servername):
    """openssl s_client through airlock's CONNECT; True when the handshake
    completed (a Protocol line and a cipher in the summary)."""
    p = subprocess.run(["openssl", "s_client", "-proxy", "127.0.0.1:%d" % al.port, "-connect",
                        target, "-servername", servername, "-brief"],
                       input=b"", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=20)
    out = p.stdout.decode("utf-8", "replace")
    return "Protocol version" in out or "CONNECTION ESTABLISHED" in out, out


@test
def test_sni_with_the_port_passes(t):
    """Some clients (Go's) send "host:port" as the SNI: with the CONNECT's own
    host and port it is the same destination, not fronting."""
    up = recorder(t, tls_ctx=t.run.server_ctx())
    al = start(t)
    ok, out = s_client(al, "127.0.0.1:%d" % up.port, "127.0.0.1:%d" % up.port)
    check(ok, "SNI ip:port refused: %s" % out[-300:])
    ok, out = s_client(al, "%s:%d" % (HOST, up.port), "%s:%d" % (HOST, up.port))
    check(ok, "SNI host:port refused: %s" % out[-300:])
    ok, out = s_client(al, "%s:%d" % (HOST, up.port), "other.example:%d" % up.port)
    check(not ok, "SNI of another host with the port went through: %s" % out[-300:])
    ok, out = s_client(al, "%s:%d" % (HOST, up.port), "%s:%d" % (HOST, up.port + 1))
    check(not ok, "SNI with another port went through: %s" % out[-300:])


@test
def test_ip_literal_without_sni_passes(t):
    up = recorder(t, tls_ctx=t.run.server_ctx())
    al = start(t)
    c = connect(t, al, "127.0.0.1:%d" % up.port)
    eq(tls_through(c, None, t.run.ca_pem), b"echo:hello\n", "echo through the tunnel")


@test
def test_plain_protocol_and_server_first(t):
    up = recorder(t)
    al = start(t)
    c = connect(t, al, "%s:%d" % (HOST, up.port))
    c.send(b"PING not tls\n")
    eq(c.read_n(len(b"echo:PING not tls\n")), b"echo:PING not tls\n", "plain bytes relayed")
    banner = recorder(t, banner=b"SSH-2.0-test\r\n")
    c = connect(t, al, "%s:%d" % (HOST, banner.port))
    eq(c.read_n(14), b"SSH-2.0-test\r\n", "an upstream that speaks first is heard")
    c.send(b"client\n")
    eq(c.read_n(len(b"echo:client\n")), b"echo:client\n", "then the client")


altest.main()
