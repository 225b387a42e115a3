"""A UDP DNS stub on 127.0.0.1:0 for airlock's integration tests.

Answers NXDOMAIN (RCODE 3) for every name, except names given in `answers`
(lower-case, no trailing dot -> IPv4 string): for those an A query gets one A
record (TTL 5) and any other type gets NOERROR with no answers. The question
is echoed back; EDNS and other additional records are dropped. Never touches
the network beyond loopback.
"""

import socket
import struct
import threading


def _qname(msg, off):
    labels = []
    while True:
        n = msg[off]
        if n == 0:
            return ".".join(labels), off + 1
        if n & 0xC0:
            raise ValueError("compression in question")
        labels.append(msg[off + 1:off + 1 + n].decode("ascii", "replace"))
        off += 1 + n


class DnsStub:
    def __init__(self, answers=None, host="127.0.0.1"):
        self.answers = {k.lower().rstrip("."): v for k, v in (answers or {}).items()}
        self.queries = []  # (name, qtype)
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.2)
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _answer(self, msg):
        qid, flags, qd = struct.unpack("!HHH", msg[:6])
        if qd < 1:
            return None
        name, off = _qname(msg, 12)
        qtype, qclass = struct.unpack("!HH", msg[off:off + 4])
        question = msg[12:off + 4]
        with self.lock:
            self.queries.append((name, qtype))
        ip = self.answers.get(name.lower().rstrip("."))
        rd = flags & 0x0100
        opcode = flags & 0x7800
        if ip is None:
            rflags = 0x8000 | opcode | rd | 0x0080 | 3
            return struct.pack("!HHHHHH", qid, rflags, 1, 0, 0, 0) + question
        rflags = 0x8000 | 0x0400 | opcode | rd | 0x0080
        if qtype == 1:
            rr = struct.pack("!HHHIH", 0xC00C, 1, 1, 5, 4) + socket.inet_aton(ip)
            return struct.pack("!HHHHHH", qid, rflags, 1, 1, 0, 0) + question + rr
        return struct.pack("!HHHHHH", qid, rflags, 1, 0, 0, 0) + question

    def _loop(self):
        while not self._stopped:
            try:
                msg, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                resp = self._answer(msg)
            except (ValueError, IndexError, struct.error):
                resp = None
            if resp is not None:
                try:
                    self.sock.sendto(resp, peer)
                except OSError:
                    pass

    def stop(self):
        self._stopped = True
        self._thread.join(2)
        try:
            self.sock.close()
        except OSError:
            pass
