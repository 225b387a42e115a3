#!/usr/bin/env python3
"""WebSockets through interception (issue 16): a real python `websockets`
client and server (Debian python3-websockets) over a TLS connection that
airlock intercepts, trusting airlock's CA.

    python3 tests/integration/test_websocket.py --airlock build/proxy/airlock [-k NAME]

The upgrade is a request (decided, injected, audited); after the 101 every
frame is parsed, scanned and re-framed by airlock: the origin's echo of the
injected value reaches the client as its placeholder only, a placeholder in a
client frame is substituted where the secret opts into "ws" and closes the
socket with 1008 where it may not go. Protocol violations close with 1002 /
1009. Everything the client saw is checked for the secret value at the end.
"""

import asyncio
import base64
import hashlib
import json
import os
import signal
import socket
import sqlite3
import ssl
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import altest  # noqa: E402
from altest import TestFailure, check, eq, test, wait_until  # noqa: E402

try:
    import websockets  # noqa: E402
except ImportError:  # Debian's python3-websockets under another python3
    sys.path.append("/usr/lib/python3/dist-packages")
    import websockets  # noqa: E402

HOST = "upstream.test"      # the harness's server certificate names it
OTHER = "other.test"
SECRET = "SECRET-VALUE-ws-8e1f2a"      # injected as a header on the upgrade
WS_VALUE = "SECRET-VALUE-wskey-41c9"   # placeholder-only, opted into "ws"
OTHER_VALUE = "SECRET-VALUE-other-77d0"  # scoped to other.test only
SEEN = []  # everything a client received, for the final leak check


# ---------------------------------------------------------------------------
# the origin: a real websockets server over TLS

class Origin:
    def __init__(self, tls_ctx):
        self.got = []         # (path, message) the origin received
        self.headers = {}     # path -> upgrade request headers
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.tls_ctx = tls_ctx
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(10):
            raise TestFailure("websocket origin did not start")

    def _run(self):
        asyncio.set_event_loop(self.loop)

        async def main():
            self.server = await websockets.serve(self._handler, "127.0.0.1", 0,
                                                 ssl=self.tls_ctx, max_size=8 << 20,
                                                 compression="deflate")
            self.port = self.server.sockets[0].getsockname()[1]
            self.ready.set()
            await self.server.wait_closed()

        try:
            self.loop.run_until_complete(main())
        except Exception:  # noqa: BLE001
            pass

    async def _handler(self, ws, path=None):
        path = path or ws.path
        self.headers[path] = dict(ws.request_headers.raw_items())
        auth = ws.request_headers.get("Authorization", "")
        value = auth[7:] if auth.startswith("Bearer ") else auth
        half = len(value) // 2
        try:
            if path.startswith("/lazy"):  # the socket's first frames: the value split
                await ws.send(["lazy:" + value[:half], value[half:] + ":end"])
            async for msg in ws:
                self.got.append((path, msg))
                if msg == "split":
                    await ws.send(["split:" + value[:half], value[half:] + ":end"])
                elif msg == "say":
                    await ws.send("text:" + value)
                    await ws.send(("binary:" + value).encode())
                    await ws.send(["frag:" + value[:half], value[half:] + ":end"])
                    big = "x" * (512 << 10) + value + "y" * (512 << 10)
                    await ws.send(big)
                    await ws.send("done")
                elif isinstance(msg, bytes):
                    await ws.send(msg)
                else:
                    await ws.send("echo:" + msg)
        except websockets.ConnectionClosed:
            pass

    def stop(self):
        def _stop():
            self.server.close()
        try:
            self.loop.call_soon_threadsafe(_stop)
        except RuntimeError:
            pass
        self.thread.join(5)


# ---------------------------------------------------------------------------
# fixtures

class G:
    aca = None


def airlock_ca(t):
    if G.aca is None:
        d = os.path.join(t.run.tmp, "ws-ca")
        p = subprocess.run([t.run.airlock_bin, "ca", "init", "--dir", d], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        if p.returncode != 0:
            raise TestFailure("ca init: %r" % p.stdout)
        G.aca = d
    return G.aca


def start(t, limits=None, config=None):
    d = airlock_ca(t)
    secrets = {"secrets": {
        "tok": {"from": {"value": SECRET}, "hosts": [HOST],
                "header": {"name": "Authorization", "format": "Bearer {}"}},
        "wskey": {"from": {"value": WS_VALUE}, "hosts": [HOST], "in": ["header", "ws"]},
        "other": {"from": {"value": OTHER_VALUE}, "hosts": [OTHER]},
    }}
    cfg = {"ca": {"dir": d}, "upstream_ca": t.run.ca_pem,
           "secrets": t.file("secrets.json", json.dumps(secrets).encode()),
           "resolve": {HOST: "127.0.0.1", OTHER: "127.0.0.1"},
           "audit": {"db": "audit.db", "flush_ms": 20}}
    cfg.update(config or {})
    pol = {"default": "deny", "rules": [
        {"name": "ws", "hosts": [HOST, OTHER], "cidrs": ["127.0.0.1/32"], "action": "allow",
         "intercept": True}]}
    al = t.airlock(config=cfg, policy=pol, limits=limits)
    p = subprocess.run([t.run.airlock_bin, "secrets", "env", "--config", al.cfg_path],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    if p.returncode != 0:
        raise TestFailure("secrets env: %r" % p.stderr)
    al.ph = {}
    for line in p.stdout.decode().splitlines():
        k, _, v = line.partition("=")
        al.ph[k.strip().lower()] = v.strip()
    return al


def origin(t):
    o = Origin(t.run.server_ctx())
    t.defer(o.stop)
    return o


def ph(al, name):
    for k, v in al.ph.items():
        if name in k:
            return v
    raise TestFailure("no placeholder for %s in %r" % (name, list(al.ph)))


def tunnel_sock(al, host, port):
    """A socket with an answered CONNECT host:port (airlock intercepts)."""
    s = socket.create_connection(("127.0.0.1", al.port), timeout=10)
    s.sendall(("CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (host, port, host, port)).encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(4096)
        if not d:
            raise TestFailure("CONNECT: closed")
        buf += d
    if not buf.startswith(b"HTTP/1.1 200"):
        raise TestFailure("CONNECT: %r" % buf[:80])
    s.setblocking(False)
    return s


def client_ctx():
    return ssl.create_default_context(cafile=os.path.join(G.aca, "ca.pem"))


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def rows(al):
    c = sqlite3.connect("file:%s?mode=ro" % os.path.join(al.dir, "audit.db"), uri=True, timeout=5)
    c.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in c.execute("SELECT * FROM requests ORDER BY id")]
    except sqlite3.OperationalError:
        return []
    finally:
        c.close()


def ws_row(al, path):
    """The socket's completed row (it is pending while the socket is open)."""
    return wait_until(lambda: next((r for r in rows(al) if r["path"] == path and
                                    r["method"] == "GET" and not r["pending"]), None), 10,
                      "the row of %s" % path)


def sock_rows(al, path):
    return [r for r in rows(al) if r["path"] == path and r["method"] == "GET"]


# ---------------------------------------------------------------------------


@test
def test_inject_and_redact(t):
    o = origin(t)
    al = start(t)

    async def go():
        sock = tunnel_sock(al, HOST, o.port)
        async with websockets.connect("wss://%s:%d/say" % (HOST, o.port), sock=sock,
                                      ssl=client_ctx(), server_hostname=HOST,
                                      max_size=8 << 20) as ws:
            await ws.send("say")
            got = []
            while True:
                m = await ws.recv()
                got.append(m)
                if m == "done":
                    return got, ws.response_headers
    got, rh = run(go())
    SEEN.extend(got)
    auth = o.headers["/say"].get("Authorization", "")
    eq(auth, "Bearer " + SECRET, "the value injected on the upgrade")
    check("Sec-WebSocket-Extensions" not in o.headers["/say"],
          "an extension was offered toward a secret's host: %r" % o.headers["/say"])
    tokph = ph(al, "tok")
    eq(got[0], "text:" + tokph, "text frame echo")
    eq(got[1], ("binary:" + tokph).encode(), "binary frame echo")
    eq(got[2], "frag:" + tokph + ":end", "fragmented echo")
    check(len(got[3]) >= (1 << 20) and tokph in got[3] and SECRET not in got[3],
          "1 MiB message echo redacted")
    for m in got:
        check((SECRET.encode() if isinstance(m, bytes) else SECRET) not in m, "secret in %r" % m)
    r = ws_row(al, "/say")
    eq((r["status"], r["decision"]), (101, "allow"), "row status/decision")
    check("tok" in r["secrets"], "row names the injected secret: %r" % r["secrets"])


@test
def test_placeholder_substituted_and_refused(t):
    o = origin(t)
    al = start(t)
    wsph, otherph = ph(al, "wskey"), ph(al, "other")

    async def go():
        sock = tunnel_sock(al, HOST, o.port)
        async with websockets.connect("wss://%s:%d/sub" % (HOST, o.port), sock=sock,
                                      ssl=client_ctx(), server_hostname=HOST) as ws:
            await ws.send("key=" + wsph)
            first = await ws.recv()
            await ws.send("leak=" + otherph)
            try:
                more = await ws.recv()
                return first, more, None
            except websockets.ConnectionClosed as e:
                return first, None, e.code
    first, more, code = run(go())
    SEEN.append(first)
    eq(o.got[0], ("/sub", "key=" + WS_VALUE), "the origin got the value (secret opts into ws)")
    eq(first, "echo:key=" + wsph, "the echo came back as the placeholder")
    eq(code, 1008, "close code for a placeholder that may not go there (got %r)" % (more,))
    check(all("leak" not in m for _, m in o.got if isinstance(m, str)),
          "the origin saw the refused message: %r" % o.got)
    r = ws_row(al, "/sub")
    eq((r["decision"], r["reason"]), ("deny", "secret_out_of_scope"), "row")
    check("other" in r["error"], "row names the refused secret: %r" % r["error"])


@test
def test_scanners_first_frames_and_after_idle(t):
    """Each direction's scanner is made with the first data frame that goes
    its way (not at the 101) and holds no buffer between messages: a value
    split across the socket's first two frames is found both ways (the
    origin's echo of the injected value, the client's placeholder), and so it
    is again after the socket idled."""
    o = origin(t)
    al = start(t)
    wsph, tokph = ph(al, "wskey"), ph(al, "tok")

    async def go():
        sock = tunnel_sock(al, HOST, o.port)
        async with websockets.connect("wss://%s:%d/lazy" % (HOST, o.port), sock=sock,
                                      ssl=client_ctx(), server_hostname=HOST) as ws:
            got = [await ws.recv()]             # the origin's first frames
            await ws.send(["key=" + wsph[:5], wsph[5:]])  # the client's first frames
            got.append(await ws.recv())
            for _ in range(2):
                await asyncio.sleep(1.2)        # idle, then again both ways
                await ws.send("split")
                got.append(await ws.recv())
                await ws.send(["key=" + wsph[:-3], wsph[-3:]])
                got.append(await ws.recv())
            return got
    got = run(go())
    SEEN.extend(got)
    eq(got[0], "lazy:" + tokph + ":end", "the origin's first two frames, redacted")
    eq(got[1], "echo:key=" + wsph, "the echo of the client's first two frames")
    eq(got[2:], ["split:" + tokph + ":end", "echo:key=" + wsph] * 2, "after idling")
    eq([m for p, m in o.got if p == "/lazy" and m != "split"], ["key=" + WS_VALUE] * 3,
       "the origin got the value each time (the placeholder split across two frames)")


@test
def test_binary_roundtrip_and_close_handshake(t):
    o = origin(t)
    al = start(t)
    blob = os.urandom(1 << 20)

    async def go():
        sock = tunnel_sock(al, HOST, o.port)
        ws = await websockets.connect("wss://%s:%d/bin" % (HOST, o.port), sock=sock,
                                      ssl=client_ctx(), server_hostname=HOST, max_size=4 << 20)
        await ws.send(blob)
        back = await ws.recv()
        await ws.ping(b"p1")
        await ws.close(1000, "bye")
        return back, ws.close_code
    back, code = run(go())
    check(back == blob, "1 MiB random binary not byte-exact (%d bytes back)" % len(back))
    eq(code, 1000, "close code from the origin")
    r = ws_row(al, "/bin")
    eq((r["status"], r["error"]), (101, ""), "a clean close leaves no error")
    eq(json.loads(r["detail"]), {"ws": {"messages_up": 1, "messages_down": 1,
                                        "close_client": 1000, "close_upstream": 1000}},
       "the row's websocket detail")
    check(r["bytes_up"] >= (1 << 20) and r["bytes_down"] >= (1 << 20), "bytes each way: %r" %
          ((r["bytes_up"], r["bytes_down"]),))


def raw_ws(al, port, path, key=b"dGhlIHNhbXBsZSBub25jZQ=="):
    """A TLS socket through the tunnel with a completed upgrade."""
    s = tunnel_sock(al, HOST, port)
    s.setblocking(True)
    s.settimeout(10)
    ts = client_ctx().wrap_socket(s, server_hostname=HOST)
    ts.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n" %
                (path, HOST, port, key.decode())).encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = ts.recv(4096)
        if not d:
            raise TestFailure("upgrade: closed")
        buf += d
    if not buf.startswith(b"HTTP/1.1 101"):
        raise TestFailure("upgrade: %r" % buf[:200])
    return ts, buf.split(b"\r\n\r\n", 1)[1]


def frame(opcode, payload, fin=True, mask=True, rsv=0):
    h = bytes([(0x80 if fin else 0) | rsv | opcode])
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        h += bytes([m | n])
    elif n < 65536:
        h += bytes([m | 126]) + struct.pack(">H", n)
    else:
        h += bytes([m | 127]) + struct.pack(">Q", n)
    if not mask:
        return h + payload
    key = os.urandom(4)
    return h + key + bytes(b ^ key[i & 3] for i, b in enumerate(payload))


def read_close(ts, rest):
    """Reads server frames until a close frame; returns its code."""
    buf = rest
    while True:
        while len(buf) < 2:
            d = ts.recv(65536)
            if not d:
                return None
            buf += d
        n = buf[1] & 0x7F
        o = 2
        if n == 126:
            n = struct.unpack(">H", buf[2:4])[0]
            o = 4
        elif n == 127:
            n = struct.unpack(">Q", buf[2:10])[0]
            o = 10
        while len(buf) < o + n:
            d = ts.recv(65536)
            if not d:
                return None
            buf += d
        op, payload, buf = buf[0] & 0x0F, buf[o:o + n], buf[o + n:]
        if op == 8:
            return struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005


@test
def test_protocol_violations(t):
    o = origin(t)
    al = start(t, limits={"ws_message_bytes": 65536})
    cases = [
        ("unmasked", frame(1, b"hello", mask=False), 1002),
        ("bad opcode", frame(3, b"x"), 1002),
        ("reserved bit", frame(1, b"x", rsv=0x40), 1002),
        ("too big", frame(2, b"z" * 70000), 1009),
        ("too big in pieces", frame(2, b"z" * 40000, fin=False) + frame(0, b"z" * 40000), 1009),
        ("continuation first", frame(0, b"x"), 1002),
        ("long ping", frame(9, b"p" * 126), 1002),
    ]
    for name, data, want in cases:
        ts, rest = raw_ws(al, o.port, "/v-" + name.replace(" ", "-"))
        ts.sendall(data)
        eq(read_close(ts, rest), want, "close code for %s" % name)
        ts.close()
    eq([m for p, m in o.got if p.startswith("/v-")], [], "the origin got none of it")


class ExtOrigin:
    """A TLS origin that answers every upgrade with permessage-deflate,
    offered or not (or, ext=None, with no extension and `first` frame
    bytes in the same send as the 101)."""

    def __init__(self, tls_ctx, ext=b"permessage-deflate", first=b""):
        self.ext, self.first = ext, first
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.ctx = tls_ctx
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                c.settimeout(5)
                s = self.ctx.wrap_socket(c, server_side=True)
                buf = b""
                while b"\r\n\r\n" not in buf:
                    d = s.recv(4096)
                    if not d:
                        break
                    buf += d
                key = [ln.split(b":", 1)[1].strip() for ln in buf.split(b"\r\n")
                       if ln.lower().startswith(b"sec-websocket-key:")]
                acc = base64.b64encode(hashlib.sha1(
                    (key[0] if key else b"") + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
                ext = b"Sec-WebSocket-Extensions: " + self.ext + b"\r\n" if self.ext else b""
                s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + acc +
                          b"\r\n" + ext + b"\r\n" + self.first)
                if self.first:
                    s.recv(100)  # until the client closes
                s.close()
            except (OSError, ssl.SSLError):
                pass

    def stop(self):
        self.sock.close()


@test
def test_extension_nobody_offered(t):
    o = ExtOrigin(t.run.server_ctx())
    t.defer(o.stop)
    al = start(t)
    s = tunnel_sock(al, HOST, o.port)
    s.setblocking(True)
    s.settimeout(10)
    ts = client_ctx().wrap_socket(s, server_hostname=HOST)
    ts.sendall(("GET /ext HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n" % (HOST, o.port)).encode())
    c = altest.Conn(0, sock=ts)
    r = c.read_response()
    altest.expect_error(r, 502, "ws_extension_not_offered")
    row = wait_until(lambda: next((x for x in rows(al) if x["path"] == "/ext"), None), 5, "row")
    eq((row["status"], row["error"]), (502, "ws_extension_not_offered"), "row")


@test
def test_strict_audit_pending_row(t):
    """Strict durability: the upgrade's row is committed (pending) before
    the upgrade goes out, so a crash while the socket is open leaves a row;
    the close completes that same row (one row per socket)."""
    o = origin(t)
    al = start(t, config={"audit": {"db": "audit.db", "durability": "strict"}})

    async def go():
        sock = tunnel_sock(al, HOST, o.port)
        async with websockets.connect("wss://%s:%d/strict" % (HOST, o.port), sock=sock,
                                      ssl=client_ctx(), server_hostname=HOST) as ws:
            await ws.send("hi")
            await ws.recv()
            pending = [r for r in rows(al) if r["path"] == "/strict"]
            await ws.close()
            return pending
    pending = run(go())
    eq([(r["pending"], r["status"]) for r in pending], [(1, 0)],
       "the socket's row while it is open")
    r = wait_until(lambda: next((x for x in rows(al) if x["path"] == "/strict" and
                                 x["pending"] == 0), None), 10, "the completed row")
    eq(r["status"], 101, "status")
    eq(len([x for x in rows(al) if x["path"] == "/strict"]), 1, "one row per socket")


TAGS = {"X-Airlock-Session": "sess-ws", "X-Airlock-Tool-Call": "toolu_ws1"}


def start_batched(t, limits=None):
    """Batched durability (the default), a sandbox by address, tags on the
    upgrade."""
    return start(t, limits=limits, config={
        "audit": {"db": "audit.db", "flush_ms": 20},
        "sandboxes": [{"name": "agent", "cidrs": ["127.0.0.0/8"]}]})


async def open_socket(al, o, path):
    sock = tunnel_sock(al, HOST, o.port)
    ws = await websockets.connect("wss://%s:%d%s" % (HOST, o.port, path), sock=sock,
                                  ssl=client_ctx(), server_hostname=HOST, extra_headers=TAGS)
    await ws.send("hi")
    eq(await ws.recv(), "echo:hi", "echo")
    return ws


async def wait_pending(al, path):
    """The socket's pending row, in the file while the socket is open (the
    next batch: flush_ms)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < 5:
        got = sock_rows(al, path)
        if got:
            return got
        await asyncio.sleep(0.02)
    raise TestFailure("no row for the open socket %s within 5 s (batched durability): %r" %
                      (path, [(r["path"], r["pending"]) for r in rows(al)]))


def pending_row_ok(r, what):
    eq((r["pending"], r["status"], r["host"], r["port"] > 0, r["decision"]),
       (1, 101, HOST, True, "allow"), what + ": pending, 101, host, decision")
    eq((r["sandbox"], r["session"], r["tool_call"]), ("agent", "sess-ws", "toolu_ws1"),
       what + ": sandbox and tags")


@test
def test_batched_kill9_leaves_pending_row(t):
    """Batched durability: the socket's row reaches the file at the 101
    (pending, with the next batch; the worker does not wait), so a kill -9
    while the socket is open leaves it, and `airlock audit query` shows it
    pending."""
    o = origin(t)
    al = start_batched(t)

    async def go():
        ws = await open_socket(al, o, "/killed")
        got = await wait_pending(al, "/killed")
        al.kill()
        try:
            await asyncio.wait_for(ws.recv(), 5)
        except (websockets.ConnectionClosed, asyncio.TimeoutError):
            pass
        return got
    open_rows = run(go())
    eq(al.proc.returncode, -9, "airlock killed")
    eq(len(open_rows), 1, "one row while open")
    pending_row_ok(open_rows[0], "while open")
    after = sock_rows(al, "/killed")
    eq([r["id"] for r in after], [open_rows[0]["id"]], "the row after the kill")
    pending_row_ok(after[0], "after kill -9")
    p = subprocess.run([t.run.airlock_bin, "audit", "query", "--db",
                        os.path.join(al.dir, "audit.db"), "--format", "json"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    eq(p.returncode, 0, "audit query: %r" % p.stderr[-300:])
    q = [r for r in json.loads(p.stdout) if r["path"] == "/killed"]
    eq([(r["pending"], r["status"], r["host"]) for r in q], [(True, 101, HOST)],
       "audit query shows the socket pending")


@test
def test_batched_close_completes_the_row(t):
    """Batched durability, a normal close: the pending row of the 101 is
    completed in place: one row per socket (not two), with what flowed."""
    o = origin(t)
    al = start_batched(t)

    async def go():
        ws = await open_socket(al, o, "/done")
        await ws.send("again")
        await ws.recv()
        got = await wait_pending(al, "/done")
        await ws.close(1000, "bye")
        return got
    open_rows = run(go())
    eq(len(open_rows), 1, "one row while open")
    pending_row_ok(open_rows[0], "while open")
    r = ws_row(al, "/done")
    eq(r["id"], open_rows[0]["id"], "the close completed the row begun at the 101")
    eq(len(sock_rows(al, "/done")), 1, "one row per socket")
    eq((r["pending"], r["status"], r["error"]), (0, 101, ""), "completed, clean close")
    eq(json.loads(r["detail"]), {"ws": {"messages_up": 2, "messages_down": 2,
                                        "close_client": 1000, "close_upstream": 1000}},
       "the row's websocket detail")
    eq((r["sandbox"], r["session"], r["tool_call"]), ("agent", "sess-ws", "toolu_ws1"), "tags")
    check(r["duration_us"] > 0 and r["bytes_up"] > 0 and r["bytes_down"] > 0,
          "duration and bytes: %r" % ((r["duration_us"], r["bytes_up"], r["bytes_down"]),))


@test
def test_batched_drain_completes_the_row(t):
    """SIGTERM with a socket open: after drain_timeout_s the socket is told
    1001, and its completion is written before the writer stops (the one
    row, completed, in the file when airlock has exited)."""
    o = origin(t)
    al = start_batched(t, limits={"drain_timeout_s": 1})

    async def go():
        ws = await open_socket(al, o, "/drained")
        got = await wait_pending(al, "/drained")
        al.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(ws.recv(), 10)
        except websockets.ConnectionClosed:
            pass
        return got, ws.close_code
    open_rows, code = run(go())
    eq(code, 1001, "close code on drain")
    eq(al.wait(15), 0, "airlock exit code after the drain")
    after = sock_rows(al, "/drained")
    eq([(r["id"], r["pending"], r["status"]) for r in after], [(open_rows[0]["id"], 0, 101)],
       "one completed row after the drain")
    check(after[0]["error"] != "", "the row says why the socket ended: %r" % after[0]["error"])
    check(json.loads(after[0]["detail"])["ws"]["messages_up"] == 1,
          "detail: %r" % after[0]["detail"])


class SSEOrigin:
    """Answers every request with a close-delimited (HTTP/1.0 style) or
    chunked event stream: one event, a 3 s pause, a second event."""

    def __init__(self, tls_ctx=None, chunked=True):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.ctx, self.chunked = tls_ctx, chunked
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(c,), daemon=True).start()

    def _one(self, c):
        try:
            c.settimeout(10)
            s = self.ctx.wrap_socket(c, server_side=True) if self.ctx else c
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = s.recv(4096)
                if not d:
                    return
                buf += d
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            ev1, ev2 = b"data: first\n\n", b"data: second\n\n"
            if self.chunked:
                s.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n" +
                          b"%x\r\n%s\r\n" % (len(ev1), ev1))
                time.sleep(3)
                s.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(ev2), ev2))
            else:
                s.sendall(head + b"Connection: close\r\n\r\n" + ev1)
                time.sleep(3)
                s.sendall(ev2)
            s.close()
        except (OSError, ssl.SSLError):
            pass

    def stop(self):
        self.sock.close()


def first_event_delay(sock):
    """Seconds until b"data: first" arrives on sock (HTTP response bytes)."""
    t0 = time.monotonic()
    buf = b""
    sock.settimeout(10)
    while b"data: first" not in buf:
        d = sock.recv(65536)
        if not d:
            raise TestFailure("closed before the first event: %r" % buf[:200])
        buf += d
    return time.monotonic() - t0


@test
def test_sse_streams_flow(t):
    """A long event stream reaches the client as it comes: through a plain
    forward request, an opaque tunnel and interception with redaction on
    (only a tail that may start a secret is held back)."""
    al = start(t)
    for chunked in (True, False):
        o = SSEOrigin(None, chunked)
        t.defer(o.stop)
        s = socket.create_connection(("127.0.0.1", al.port), timeout=10)
        s.sendall(b"GET http://%s:%d/events HTTP/1.1\r\nHost: %s\r\n\r\n" %
                  (OTHER.encode(), o.port, OTHER.encode()))
        d = first_event_delay(s)
        s.close()
        check(d < 1.5, "plain forward (chunked=%s): first event after %.1fs" % (chunked, d))
        o = SSEOrigin(t.run.server_ctx(), chunked)
        t.defer(o.stop)
        s = tunnel_sock(al, HOST, o.port)
        s.setblocking(True)
        ts = client_ctx().wrap_socket(s, server_hostname=HOST)
        ts.sendall(b"GET /events HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (HOST.encode(), o.port))
        d = first_event_delay(ts)
        ts.close()
        check(d < 1.5, "intercepted + redaction (chunked=%s): first event after %.1fs" % (chunked, d))


@test
def test_first_frame_with_the_101(t):
    """The origin's first frame in the same read as its 101 reaches the
    client (found by the codec's unit tests: it was dropped)."""
    o = ExtOrigin(t.run.server_ctx(), ext=None, first=b"\x81\x02hi")
    t.defer(o.stop)
    al = start(t)
    ts, rest = raw_ws(al, o.port, "/first")
    buf = rest
    while len(buf) < 4:
        d = ts.recv(100)
        if not d:
            break
        buf += d
    eq(buf[:4], b"\x81\x02hi", "the first frame after the 101")
    ts.close()


@test
def test_client_drop_ends_socket_at_once(t):
    """A client that goes away without a close frame: the origin is told
    1001, the row says so, and the connection is gone at once (it lingered
    10 s for a client that was not there)."""
    o = origin(t)
    al = start(t)
    ts, rest = raw_ws(al, o.port, "/drop")
    ts.sendall(frame(1, b"hello"))
    ts.recv(100)  # the echo
    ts.close()
    t0 = time.monotonic()
    wait_until(lambda: al.metrics().need("airlock_connections_open") == 0, 5,
               "the connection to close")
    check(time.monotonic() - t0 < 2.0, "the dropped socket lingered %.1fs" %
          (time.monotonic() - t0))
    r = ws_row(al, "/drop")
    eq(r["error"], "client closed websocket", "row error")


@test
def test_no_secret_in_client_output(t):
    for m in SEEN:
        b = m.encode() if isinstance(m, str) else m
        for v in (SECRET, WS_VALUE, OTHER_VALUE):
            check(v.encode() not in b, "a secret value reached a client")


altest.main()
