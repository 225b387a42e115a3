"""rawhttp - an HTTP/1.1 origin that logs every request it parses, for the
smuggling and framing tests (python3 stdlib only).

Unlike nginx or http.server, it does not re-frame or tidy anything: it reads
request after request off each connection exactly by the framing the bytes
carry (Transfer-Encoding: chunked, else Content-Length, else no body), logs
what it parsed (connection number, method, target, header list, body), and
answers. A request smuggled inside another's body shows up here as a request
of its own, on the connection it arrived on.

Answers, by target path:
  .../resp/<name> a canned response from responses() (raw bytes, framing and all)
  .../early      answers at once without reading the body, then goes on
                 parsing the connection (what a real server does)
  .../ws-refuse  403 to a websocket upgrade
  anything else  200 "ok METHOD TARGET", Content-Length framed
"""

import gzip
import socket
import ssl
import threading


def _gz(b):
    return gzip.compress(b, mtime=0)


def responses(secret=b""):
    """Canned raw responses; `secret` is a value an in-scope origin echoes."""
    gz = _gz(b"gzipped body " + secret + b"\n")
    return {
        # the peer's framing header named in Connection: must be refused
        "connection-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
                         b"Connection: content-length\r\n\r\nhello",
        "connection-te": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                         b"Connection: keep-alive, Transfer-Encoding\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        # a length spelled oddly: what goes on is the parsed number
        "cl-zeros": b"HTTP/1.1 200 OK\r\nContent-Length: 0005\r\n\r\nhello",
        # bytes after the response's end: the connection is never reused
        "extra": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\n"
                 b"Content-Length: 6\r\n\r\nforged",
        # identity first, then gzip: still a gzip body
        "ce-dup": b"HTTP/1.1 200 OK\r\nContent-Encoding: identity\r\nContent-Encoding: gzip\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(gz) + gz,
        "ce-list": b"HTTP/1.1 200 OK\r\nContent-Encoding: identity, gzip\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(gz) + gz,
        "ce-two": b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Encoding: br\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(gz) + gz,
        "head-len": b"HTTP/1.1 200 OK\r\nContent-Length: 0042\r\n\r\n",
        "early-hints": b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
                       b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        # "chunked<TAB>": chunked to a lax reader, not to llhttp (read to the close)
        "te-tab": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\t\r\n\r\n"
                  b"5\r\nhello\r\n0\r\n\r\n",
    }


class RawOrigin:
    def __init__(self, host="127.0.0.1", tls_ctx=None, secret=b""):
        self.lock = threading.Lock()
        self.log = []  # one dict per parsed request
        self.nconns = 0
        self.tls_ctx = tls_ctx
        self.canned = responses(secret)
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        self.conns = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def requests(self):
        with self.lock:
            return list(self.log)

    def lines(self):
        """'METHOD TARGET' of every request parsed, in order."""
        return ["%s %s" % (r["method"], r["target"]) for r in self.requests()]

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.nconns += 1
                n = self.nconns
                self.conns.append(c)
            threading.Thread(target=self._serve, args=(c, n), daemon=True).start()

    def _serve(self, c, n):
        try:
            c.settimeout(20)
            if self.tls_ctx is not None:
                c = self.tls_ctx.wrap_socket(c, server_side=True)
            f = c.makefile("rb")
            while True:
                req = self._read_request(f, n)
                if req is None:
                    return
                with self.lock:
                    self.log.append(req)
                if not self._answer(c, f, req):
                    return
        except (OSError, ValueError, ssl.SSLError):
            return
        finally:
            try:
                c.close()
            except OSError:
                pass

    def _read_request(self, f, n):
        line = f.readline(65537)
        while line in (b"\r\n", b"\n"):
            line = f.readline(65537)
        if not line:
            return None
        parts = line.rstrip(b"\r\n").split(b" ")
        method = parts[0].decode("latin-1")
        target = parts[1].decode("latin-1") if len(parts) > 1 else ""
        headers = []
        while True:
            h = f.readline(65537)
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.rstrip(b"\r\n").partition(b":")
            headers.append((name.decode("latin-1").strip(), value.decode("latin-1").strip()))
        req = {"conn": n, "method": method, "target": target, "headers": headers, "body": b""}
        if target.split("?")[0].endswith("/early"):
            return req  # the body (if any) is left for the next parse
        te = ",".join(v for k, v in headers if k.lower() == "transfer-encoding").lower()
        cl = [v for k, v in headers if k.lower() == "content-length"]
        body = b""
        if "chunked" in te:
            while True:
                size = int(f.readline(65537).split(b";")[0].strip(), 16)
                if size == 0:
                    while f.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                body += f.read(size)
                f.readline(3)
        elif cl:
            body = f.read(int(cl[0]))
        req["body"] = body
        return req

    def _answer(self, c, f, req):
        path = req["target"].split("?")[0]
        if "/resp/" in path:
            c.sendall(self.canned[path.split("/resp/", 1)[1]])
            return True
        if path.endswith("/ws-refuse"):
            c.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return True
        body = ("ok %s %s\n" % (req["method"], req["target"])).encode()
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        return True

    def stop(self):
        self.stopped = True
        try:
            self.sock.close()
        except OSError:
            pass
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                try:
                    c.close()
                except OSError:
                    pass
