"""Test upstream for airlock's integration tests (python3 stdlib only).

A threaded HTTP/1.1 server on 127.0.0.1 (or ::1), port 0, optionally TLS. It
counts accepted TCP connections and records every request it receives as it
received it (method, target, version, headers in order, body length and
sha256, and which connection carried it), so tests can assert what went past
the proxy.

Endpoints:
  /echo            any method; JSON of the request as received
  /bytes/N         N bytes of pattern(N), Content-Length (HEAD: no body)
  /chunked/N       N bytes of pattern(N), chunked
  /close/N         N bytes of pattern(N), no Content-Length, connection closed
  /closereset/N    the same, then a TCP RST instead of the close (a cut body)
  /quietclose/N    N bytes of pattern(N), Content-Length, then the connection
                   is closed without a word (an origin ending an idle keep-alive)
  /slow/N?rate=R   N bytes of pattern(N), Content-Length, ~R bytes/s
  /status/CODE     that status (204/304 without body)
  /head            Content-Length 1234; body only for GET
  /upload          POST/PUT: reads the body (Content-Length or chunked) and
                   returns {"len": .., "sha256": ..}
  /count           {"connections": N}
  /reset           closes the connection with a TCP RST, no response
  /nothing         closes the connection cleanly without a response
  /respheaders?K=V&...  200 with those response headers in that order
  /badresp         a malformed status line, then close

Also EofEchoServer: a raw TCP server that reads until EOF, then writes
"got N sha256\n" and closes (tests half-close through CONNECT).
"""

import hashlib
import http.server
import json
import socket
import socketserver
import ssl
import struct
import threading
import time
import urllib.parse

_BLOCK = bytes(range(251)) * 262  # period 251 shows misaligned/shifted bytes


def pattern(n, offset=0):
    """The deterministic body of /bytes/N (bytes offset..offset+n)."""
    out = bytearray()
    pos = offset
    while len(out) < n:
        start = pos % 251
        take = min(len(_BLOCK) - start, n - len(out))
        out += _BLOCK[start:start + take]
        pos += take
    return bytes(out)


def pattern_sha256(n):
    h = hashlib.sha256()
    done = 0
    while done < n:
        k = min(1 << 20, n - done)
        h.update(pattern(k, done))
        done += k
    return h.hexdigest()


class _Tee:
    """Wraps the handler's rfile to keep the raw head lines (http.server's
    parsed headers hide malformed lines)."""

    def __init__(self, f):
        self.f = f
        self.on = True
        self.lines = []

    def readline(self, *a):
        line = self.f.readline(*a)
        if self.on:
            self.lines.append(line)
        return line

    def read(self, *a):
        return self.f.read(*a)

    def take(self):
        out, self.lines = b"".join(self.lines), []
        return out

    def __getattr__(self, k):
        return getattr(self.f, k)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "altest-upstream/1"
    timeout = 60  # socket timeout so stray handler threads end

    def log_message(self, fmt, *args):  # quiet
        pass

    def setup(self):
        super().setup()
        self.rfile = self.tee = _Tee(self.rfile)
        self.conn_id = self.server.note_connection()

    # -- body reading --------------------------------------------------------
    def _read_body(self):
        te = self.headers.get("Transfer-Encoding", "")
        h = hashlib.sha256()
        n = 0
        if "chunked" in te.lower():
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("eof in chunk size")
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while True:  # trailers
                        t = self.rfile.readline(65537)
                        if t in (b"\r\n", b"\n", b""):
                            break
                    break
                left = size
                while left:
                    d = self.rfile.read(min(left, 65536))
                    if not d:
                        raise ConnectionError("eof in chunk")
                    h.update(d)
                    n += len(d)
                    left -= len(d)
                self.rfile.readline(3)
        else:
            left = int(self.headers.get("Content-Length", "0") or "0")
            while left:
                d = self.rfile.read(min(left, 65536))
                if not d:
                    raise ConnectionError("eof in body")
                h.update(d)
                n += len(d)
                left -= len(d)
        return n, h.hexdigest()

    def handle_expect_100(self):
        self._expect_seen = True
        return super().handle_expect_100()

    # -- dispatch ------------------------------------------------------------
    def _record(self, body_len, body_sha):
        rec = {
            "method": self.command,
            "path": self.path,
            "version": self.request_version,
            "requestline": self.requestline,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_len": body_len,
            "body_sha256": body_sha,
            "conn": self.conn_id,
            "raw_head": self.raw_head.decode("latin-1"),
            "expect_100": getattr(self, "_expect_seen", False),
        }
        self.server.note_request(rec)
        return rec

    def _send(self, code, body=b"", ctype="application/octet-stream", extra=()):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        for k, v in extra:
            self.send_header(k, v)
        if code in (204, 304) or code < 200:
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, code=200):
        self._send(code, json.dumps(obj).encode(), "application/json")

    def _write_pattern(self, n, step=65536, rate=None):
        done = 0
        t0 = time.monotonic()
        while done < n:
            k = min(step, n - done)
            self.wfile.write(pattern(k, done))
            done += k
            self.server.add_sent(k)
            if rate:
                due = t0 + done / rate
                d = due - time.monotonic()
                if d > 0:
                    time.sleep(d)  # simulated slowness, not synchronisation

    def _do(self):
        self._expect_seen = getattr(self, "_expect_seen", False)
        self.server.note_started(self.path)
        self.raw_head = self.tee.take()
        self.tee.on = False
        try:
            self._do2()
        finally:
            self.tee.on = True

    def _do2(self):
        try:
            body_len, body_sha = self._read_body()
        except (ConnectionError, ValueError, OSError):
            self.close_connection = True
            self._record(-1, "")
            return
        rec = self._record(body_len, body_sha)
        self._expect_seen = False
        u = urllib.parse.urlsplit(self.path)
        parts = u.path.split("/")
        q = urllib.parse.parse_qs(u.query)
        top = parts[1] if len(parts) > 1 else ""
        arg = parts[2] if len(parts) > 2 else ""
        if top == "echo":
            self._json(rec)
        elif top == "bytes":
            n = int(arg)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            if self.command != "HEAD":
                self._write_pattern(n)
        elif top == "slow":
            n = int(arg)
            rate = float(q.get("rate", ["65536"])[0])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            self.wfile.flush()
            self._write_pattern(n, step=max(1, min(65536, int(rate / 20) or 1)), rate=rate)
        elif top == "chunked":
            n = int(arg)
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            done = 0
            while done < n:
                k = min(8191, n - done)
                self.wfile.write(b"%x\r\n" % k + pattern(k, done) + b"\r\n")
                done += k
            self.wfile.write(b"0\r\n\r\n")
        elif top in ("close", "closereset"):
            n = int(arg)
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self._write_pattern(n)
            self.close_connection = True
            if top == "closereset":  # a TCP RST instead of the close
                self.wfile.flush()
                time.sleep(0.2)
                try:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
                    self.connection.close()
                except OSError:
                    pass
        elif top == "quietclose":
            n = int(arg)
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            self._write_pattern(n)
            self.close_connection = True
        elif top == "status":
            code = int(arg)
            body = b"" if code in (204, 304) else b"status %d\n" % code
            self._send(code, body, "text/plain")
        elif top == "head":
            self.send_response(200)
            self.send_header("Content-Length", "1234")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(pattern(1234))
        elif top == "upload":
            self._json({"len": body_len, "sha256": body_sha})
        elif top == "count":
            self._json({"connections": self.server.connections})
        elif top == "reset":
            self.close_connection = True
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.connection.close()  # RST now, before any FIN
            except OSError:
                pass
        elif top == "respheaders":
            # /respheaders?Name=Value&... : those response headers, in order
            body = b"hdrs\n"
            self.send_response(200)
            for k, v in urllib.parse.parse_qsl(u.query, keep_blank_values=True):
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif top == "badresp":
            self.close_connection = True
            self.wfile.write(b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok")
        elif top == "nothing":
            self.close_connection = True
        else:
            self._send(404, b"not found\n", "text/plain")

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = do_OPTIONS = do_PATCH = _do


class Upstream(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """Start with Upstream(tls_ctx=None, host='127.0.0.1'); .port; .stop()."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, tls_ctx=None, host="127.0.0.1"):
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.tls_ctx = tls_ctx
        self.lock = threading.Lock()
        self.connections = 0
        self.requests = []
        self.started = []  # paths whose head arrived (recorded before the body)
        self.bytes_sent = 0
        self._socks = []
        super().__init__((host, 0), _Handler)
        self.host = host
        self.port = self.server_address[1]
        self._thread = threading.Thread(target=self.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def note_connection(self):
        with self.lock:
            self.connections += 1
            return self.connections

    def note_started(self, path):
        with self.lock:
            self.started.append(path)

    def note_request(self, rec):
        with self.lock:
            self.requests.append(rec)

    def add_sent(self, n):
        with self.lock:
            self.bytes_sent += n

    def finish_request(self, request, client_address):
        with self.lock:
            self._socks.append(request)
        if self.tls_ctx is not None:
            try:
                request.settimeout(30)
                request = self.tls_ctx.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return
        try:
            self.RequestHandlerClass(request, client_address, self)
        except (ConnectionError, ssl.SSLError, OSError, ValueError):
            pass

    def handle_error(self, request, client_address):  # quiet
        pass

    def find(self, path_prefix):
        with self.lock:
            return [r for r in self.requests if r["path"].startswith(path_prefix)]

    def stop(self):
        self.shutdown()
        self.server_close()
        with self.lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass


class EofEchoServer:
    """Raw TCP: read until EOF, reply b'got N SHA\\n', close."""

    def __init__(self, host="127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(c,), daemon=True).start()

    def _one(self, c):
        try:
            c.settimeout(30)
            h = hashlib.sha256()
            n = 0
            while True:
                d = c.recv(65536)
                if not d:
                    break
                h.update(d)
                n += len(d)
            c.sendall(b"got %d %s\n" % (n, h.hexdigest().encode()))
        except OSError:
            pass
        finally:
            c.close()

    def stop(self):
        self._stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
