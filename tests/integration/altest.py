"""altest - shared harness for airlock's integration tests (python3 stdlib only).

A test file defines functions decorated with @test taking one argument, the
per-test Case, and ends with `altest.main()`. Usage of a test file:

    python3 test_core.py --airlock build/proxy/airlock [-k SUBSTRING ...] [--keep]

Each run gets a temp dir with a throwaway CA and a server certificate for
localhost / 127.0.0.1 / ::1 / upstream.test made with the openssl CLI, and a
DNS stub that answers NXDOMAIN. Each test gets fresh upstreams and a fresh
airlock (ports picked at run time, config written to the temp dir), all torn
down afterwards even on failure. Output: "ok NAME" or "FAIL NAME: reason" per
test (failures followed by '# '-prefixed log tails), then "N passed, N failed".
Traffic goes only to 127.0.0.1 / ::1. Nothing sleeps to synchronise: waits
poll a condition with a deadline.
"""

import argparse
import atexit
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import dnsstub  # noqa: E402
import upstream as upstream_mod  # noqa: E402
from upstream import pattern, pattern_sha256  # noqa: E402,F401

MiB = 1 << 20
KiB = 1 << 10


class TestFailure(AssertionError):
    pass


class TestTimeout(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def eq(got, want, what):
    if got != want:
        raise TestFailure("%s: got %r, want %r" % (what, got, want))


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def wait_until(pred, timeout, what, interval=0.02):
    """Polls pred() until it returns a truthy value; returns that value or
    raises TestFailure("timed out after Ns waiting for WHAT")."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TestFailure("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


# ---------------------------------------------------------------------------
# ports and sockets


def free_port(host="127.0.0.1"):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def closed_port(host="127.0.0.1"):
    """A port nothing listens on (bound then closed)."""
    return free_port(host)


def listening(port):
    """True when some socket is in LISTEN on this TCP port (read from
    /proc/net/tcp{,6}, so probing creates no connection in airlock)."""
    want = ":%04X" % port
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(f) as fh:
                next(fh)
                for line in fh:
                    parts = line.split()
                    if len(parts) > 3 and parts[1].endswith(want) and parts[3] == "0A":
                        return True
        except OSError:
            pass
    return False


def can_connect(port, host="127.0.0.1", timeout=0.5):
    try:
        s = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return False
    s.close()
    return True


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Blackhole:
    """A loopback address:port where connect() hangs: a listening socket with
    backlog 0 that never accepts, its queue filled with pending connections,
    so the kernel drops further SYNs."""

    def __init__(self):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(0)
        self.port = self.lsock.getsockname()[1]
        self.fillers = []
        for _ in range(4):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", self.port))
            except (BlockingIOError, InterruptedError):
                pass
            self.fillers.append(s)
        # verify: a fresh connect must not complete quickly
        p = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        p.settimeout(0.5)
        try:
            p.connect(("127.0.0.1", self.port))
            self.works = False
        except socket.timeout:
            self.works = True
        except OSError:
            self.works = False
        finally:
            p.close()

    def close(self):
        for s in self.fillers:
            s.close()
        self.lsock.close()


# ---------------------------------------------------------------------------
# raw HTTP over sockets


class Resp:
    def __init__(self, version, status, reason, headers, body, head_raw):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # [(name, value)] in received order
        self.body = body
        self.head_raw = head_raw

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def __repr__(self):
        return "<Resp %d %s reason=%r len=%d>" % (self.status, self.reason,
                                                 self.header("X-Airlock-Reason"), len(self.body))


class Conn:
    """A client TCP connection with a read buffer and an HTTP/1.1 response
    parser. Every read is bounded by `timeout` (seconds)."""

    def __init__(self, port, host="127.0.0.1", timeout=10, sock=None):
        if sock is None:
            sock = socket.create_connection((host, port), timeout=timeout)
        self.sock = sock
        self.sock.settimeout(timeout)
        self.buf = b""
        self.eof = False

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        if self.eof:
            return False
        try:
            d = self.sock.recv(65536)
        except ConnectionResetError:
            d = b""
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def read_line(self):
        while b"\n" not in self.buf:
            if not self._fill():
                if not self.buf:
                    raise TestFailure("peer closed the connection before answering")
                raise TestFailure("connection closed before a full line (got %r)" % self.buf[:200])
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r")

    def read_n(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise TestFailure("connection closed after %d of %d body bytes" % (len(self.buf), n))
        d, self.buf = self.buf[:n], self.buf[n:]
        return d

    def read_all(self):
        while self._fill():
            pass
        d, self.buf = self.buf, b""
        return d

    def read_some(self, n):
        """Reads until at least n bytes arrived (or EOF); returns them."""
        while len(self.buf) < n and self._fill():
            pass
        d, self.buf = self.buf, b""
        return d

    def read_head(self):
        lines = []
        while True:
            line = self.read_line()
            if line == b"":
                if not lines:
                    continue  # tolerate a stray CRLF between responses
                break
            lines.append(line)
        raw = b"\r\n".join(lines)
        first = lines[0].decode("latin-1")
        m = re.match(r"(HTTP/\d\.\d) (\d{3})(?: (.*))?$", first)
        if not m:
            raise TestFailure("bad status line %r" % first)
        headers = []
        for line in lines[1:]:
            k, _, v = line.decode("latin-1").partition(":")
            headers.append((k.strip(), v.strip()))
        return m.group(1), int(m.group(2)), m.group(3) or "", headers, raw

    def read_response(self, method="GET", interim=False):
        """Reads one response; skips 1xx unless interim=True."""
        while True:
            version, status, reason, headers, raw = self.read_head()
            if 100 <= status < 200 and not interim:
                continue
            break
        r = Resp(version, status, reason, headers, b"", raw)
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return r
        if method == "CONNECT" and 200 <= status < 300:
            return r
        te = (r.header("Transfer-Encoding") or "").lower()
        cl = r.header("Content-Length")
        if "chunked" in te:
            body = bytearray()
            while True:
                size = int(self.read_line().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.read_line() != b"":
                        pass
                    break
                body += self.read_n(size)
                self.read_line()
            r.body = bytes(body)
        elif cl is not None:
            r.body = self.read_n(int(cl))
        else:
            r.body = self.read_all()
        return r

    def wait_closed(self, timeout):
        """True if the peer closes (EOF or RST) within timeout; discards data."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                d = self.sock.recv(65536)
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not d:
                return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def raw_request(port, data, n=1, method="GET", timeout=10, host="127.0.0.1"):
    """Sends data in one write, reads n responses; returns a list of Resp
    (or one Resp when n == 1). method: one method or a list, per response."""
    methods = method if isinstance(method, (list, tuple)) else [method] * n
    c = Conn(port, host=host, timeout=timeout)
    try:
        c.send(data)
        out = [c.read_response(method=m) for m in methods[:n]]
    finally:
        c.close()
    return out[0] if n == 1 else out


def expect_error(r, status, reason):
    """Asserts an airlock error answer: status, X-Airlock-Reason, short body."""
    got = r.header("X-Airlock-Reason") if isinstance(r, Resp) else r.header("X-Airlock-Reason")
    if r.status != status or got != reason:
        raise TestFailure("want %d %s, got %d X-Airlock-Reason=%r body=%r" %
                          (status, reason, r.status, got, (r.body or b"")[:200]))


# ---------------------------------------------------------------------------
# curl


def _clean_env():
    env = dict(os.environ)
    for k in list(env):
        if k.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy",
                         "ftp_proxy", "curl_home", "ssl_cert_file", "curl_ca_bundle"):
            del env[k]
    env["HOME"] = "/nonexistent"  # no ~/.curlrc
    return env


class CurlResult:
    def __init__(self, rc, body, stderr, status, heads, elapsed, stdout):
        self.rc = rc
        self.body = body
        self.stderr = stderr
        self.status = status
        self.heads = heads  # every response head seen: [[(k, v)...]...] with status lines
        self.headers = heads[-1][1] if heads else []
        self.elapsed = elapsed
        self.stdout = stdout

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def __repr__(self):
        return "<curl rc=%d status=%d reason=%r len=%d err=%r>" % (
            self.rc, self.status, self.header("X-Airlock-Reason"), len(self.body),
            self.stderr.strip()[-300:])


def _parse_dump(text):
    heads = []
    cur = None
    for line in text.split("\n"):
        line = line.rstrip("\r")
        if line.startswith("HTTP/"):
            cur = (line, [])
            heads.append(cur)
        elif line == "":
            cur = None
        elif cur is not None and ":" in line:
            k, _, v = line.partition(":")
            cur[1].append((k.strip(), v.strip()))
    return heads


_curl_seq = [0]


def curl(args, proxy=None, timeout=60, tmp=None, check_rc=False, write_out=""):
    """Runs the curl binary: `curl -q -sS [-x proxy] ARGS` with the body to a
    file and the heads to a dump file. Returns a CurlResult; .stdout holds
    "%{http_code} WRITE_OUT" (write_out: extra curl -w variables)."""
    tmp = tmp or RUN.tmp
    _curl_seq[0] += 1
    base = os.path.join(tmp, "curl%d" % _curl_seq[0])
    cmd = ["curl", "-q", "-sS", "-o", base + ".body", "-D", base + ".head",
           "-w", "%{http_code} " + write_out, "--max-time", str(timeout)]
    if proxy:
        cmd += ["-x", proxy]
    cmd += list(args)
    t0 = time.monotonic()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=_clean_env(), timeout=timeout + 15)
    elapsed = time.monotonic() - t0
    body = b""
    if os.path.exists(base + ".body"):
        with open(base + ".body", "rb") as fh:
            body = fh.read()
        os.unlink(base + ".body")
    heads = []
    if os.path.exists(base + ".head"):
        with open(base + ".head", "rb") as fh:
            heads = _parse_dump(fh.read().decode("latin-1"))
        os.unlink(base + ".head")
    out = p.stdout.decode("latin-1")
    try:
        status = int(out.split()[0])
    except (ValueError, IndexError):
        status = 0
    r = CurlResult(p.returncode, body, p.stderr.decode("utf-8", "replace"), status, heads,
                   elapsed, p.stdout)
    if check_rc and r.rc != 0:
        raise TestFailure("curl failed: %r (%s)" % (r, " ".join(cmd)))
    return r


def curl_run(args, timeout=60):
    """Runs `curl -q -sS ARGS` as is; returns (rc, stdout bytes, stderr str)."""
    p = subprocess.run(["curl", "-q", "-sS", "--max-time", str(timeout)] + list(args),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_clean_env(),
                       timeout=timeout + 15)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


def curl_popen(args, out_path, timeout=60):
    """Starts curl in the background writing the body to out_path."""
    cmd = ["curl", "-q", "-sS", "--max-time", str(timeout), "-o", out_path] + list(args)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=_clean_env())


# ---------------------------------------------------------------------------
# metrics


class Metrics:
    def __init__(self, text):
        self.text = text
        self.series = []  # (name, {labels}, value)
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            m = re.match(r'([A-Za-z_:][A-Za-z0-9_:]*)(\{([^}]*)\})?\s+(\S+)', line)
            if not m:
                continue
            labels = dict(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"',
                                     m.group(3) or ""))
            try:
                val = float(m.group(4))
            except ValueError:
                continue
            self.series.append((m.group(1), labels, val))

    def has(self, name):
        return any(n == name for n, _, _ in self.series)

    def get(self, name, labels=None):
        """Sum of the series named `name` whose labels include `labels`;
        None when no such series exists."""
        labels = labels or {}
        found = None
        for n, ls, v in self.series:
            if n == name and all(ls.get(k) == str(val) for k, val in labels.items()):
                found = (found or 0.0) + v
        return found

    def need(self, name, labels=None):
        v = self.get(name, labels)
        if v is None:
            raise TestFailure("metric %s%s missing from /metrics" %
                              (name, json.dumps(labels) if labels else ""))
        return v


def http_get_direct(url, timeout=5):
    """GET without any proxy (urllib). Returns (status, headers, body)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as r:
            return r.status, list(r.headers.items()), r.read()
    except urllib.error.HTTPError as e:
        return e.code, list(e.headers.items()), e.read()


# ---------------------------------------------------------------------------
# the run and its airlocks


class Run:
    """Per-process state: temp dir, certificates, DNS stub."""

    def __init__(self, airlock_bin, keep=False):
        self.airlock_bin = os.path.abspath(airlock_bin)
        self.tmp = tempfile.mkdtemp(prefix="airlock-integ-")
        self.keep = keep
        self.procs = []  # every Popen started, for atexit
        self.dns = None
        atexit.register(self.cleanup)
        self._make_certs()
        self.dns = dnsstub.DnsStub(answers={"viadns.test": "127.0.0.1"})

    def _openssl(self, *args):
        p = subprocess.run(["openssl"] + list(args), cwd=self.tmp, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        if p.returncode != 0:
            raise RuntimeError("openssl %s failed: %s" % (args[0], p.stderr.decode()))

    def _make_certs(self):
        t = self.tmp
        self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                      "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
                      "-subj", "/CN=airlock integration test CA",
                      "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        self._openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                      "-nodes", "-keyout", "server.key", "-out", "server.csr",
                      "-subj", "/CN=localhost")
        with open(os.path.join(t, "server.ext"), "w") as fh:
            fh.write("basicConstraints=CA:FALSE\n"
                     "keyUsage=critical,digitalSignature\n"
                     "extendedKeyUsage=serverAuth\n"
                     "subjectAltName=DNS:localhost,DNS:upstream.test,IP:127.0.0.1,IP:::1\n")
        self._openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                      "-CAcreateserial", "-out", "server.pem", "-days", "2",
                      "-extfile", "server.ext")
        self.ca_pem = os.path.join(t, "ca.pem")
        self.server_pem = os.path.join(t, "server.pem")
        self.server_key = os.path.join(t, "server.key")

    def server_ctx(self):
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.server_pem, self.server_key)
        return ctx

    def client_ctx(self):
        ctx = ssl.create_default_context(cafile=self.ca_pem)
        return ctx

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait(5)
                except (OSError, subprocess.TimeoutExpired):
                    pass
        if self.dns:
            self.dns.stop()
            self.dns = None
        if not self.keep and os.path.isdir(self.tmp):
            shutil.rmtree(self.tmp, ignore_errors=True)


RUN = None


def _merge(base, over):
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        elif v is None:
            base.pop(k, None)
        else:
            base[k] = v
    return base


class Airlock:
    """One airlock process with its own dir, config and log."""

    seq = 0

    def __init__(self, run, workers=2, limits=None, config=None, policy=None, args=None,
                 env=None):
        Airlock.seq += 1
        self.env = env  # extra environment variables for the process
        self.run = run
        self.dir = os.path.join(run.tmp, "airlock%d" % Airlock.seq)
        os.makedirs(self.dir)
        self.log_path = os.path.join(self.dir, "airlock.log")
        self.proc = None
        self.exit_rc = None
        self.workers = workers
        self.limits = {"max_connections": 10000, "header_bytes": 65536,
                       "header_timeout_s": 10, "idle_timeout_s": 60,
                       "connect_timeout_s": 10, "drain_timeout_s": 5}
        self.limits.update(limits or {})
        self.extra = config or {}
        self.args = list(args or [])  # extra `airlock run` arguments, e.g. ["--dry-run"]
        self.policy = policy or {"default": "allow",
                                 "allow_addresses": ["127.0.0.0/8", "::1/128"],
                                 "rules": []}

    def _write_config(self):
        cfg = {
            "listen": [{"addr": "127.0.0.1:%d" % self.port, "mode": "forward"}],
            "admin": "127.0.0.1:%d" % self.admin_port,
            "workers": self.workers,
            "log_level": "debug",
            "policy": "policy.json",
            "audit": {"db": "audit.db"},
            "resolve": {"upstream.test": "127.0.0.1"},
            "dns": {"servers": ["127.0.0.1:%d" % self.run.dns.port], "timeout_ms": 1000},
            "limits": self.limits,
        }
        _merge(cfg, json.loads(json.dumps(self.extra)))
        self.cfg_path = os.path.join(self.dir, "airlock.json")
        with open(self.cfg_path, "w") as fh:
            json.dump(cfg, fh, indent=1)
        with open(os.path.join(self.dir, "policy.json"), "w") as fh:
            json.dump(self.policy, fh, indent=1)

    def start(self, timeout=10):
        last = ""
        for attempt in range(4):
            self.port = free_port()
            self.admin_port = free_port()
            if self.admin_port == self.port:
                continue
            self._write_config()
            logf = open(self.log_path, "ab")
            try:
                self.proc = subprocess.Popen([self.run.airlock_bin, "run", "--config", self.cfg_path]
                                             + self.args,
                                             stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                             cwd=self.dir,
                                             env=dict(os.environ, **self.env) if self.env else None)
            finally:
                logf.close()
            self.run.procs.append(self.proc)
            self.pid = self.proc.pid
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if listening(self.port) and listening(self.admin_port):
                    return self
                time.sleep(0.02)
            if self.proc.poll() is None:
                self.kill()
                raise TestFailure("airlock did not listen on :%d and admin :%d within %ds\n%s" %
                                  (self.port, self.admin_port, timeout, self.log_tail()))
            self.exit_rc = self.proc.returncode
            last = self.log_tail()
            if "in use" not in last.lower():
                break
        raise TestFailure("airlock exited at start (rc=%s)\n%s" % (self.exit_rc, last))

    @property
    def proxy(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def admin(self):
        return "http://127.0.0.1:%d" % self.admin_port

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def curl(self, args, **kw):
        return curl(args, proxy=self.proxy, **kw)

    def conn(self, timeout=10):
        return Conn(self.port, timeout=timeout)

    def raw(self, data, **kw):
        return raw_request(self.port, data, **kw)

    def metrics(self):
        st, _, body = http_get_direct(self.admin + "/metrics")
        if st != 200:
            raise TestFailure("GET /metrics: status %d" % st)
        return Metrics(body.decode("utf-8", "replace"))

    def fd_count(self):
        return fd_count(self.pid)

    def log(self):
        try:
            with open(self.log_path, "rb") as fh:
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=40):
        lines = self.log().splitlines()
        return "\n".join(lines[-n:])

    def signal(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def wait(self, timeout):
        """Waits for exit; returns the exit code or None on timeout."""
        try:
            self.exit_rc = self.proc.wait(timeout)
            return self.exit_rc
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def stop(self):
        """SIGTERM, bounded wait, then SIGKILL. Returns a problem string when
        airlock had crashed or a sanitizer reported, else None."""
        if self.proc is None:
            return None
        problem = None
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            if self.wait(self.limits.get("drain_timeout_s", 5) + 3) is None:
                self.kill()
                problem = None  # slow drain is judged by the SIGTERM test
        rc = self.proc.returncode
        if rc is not None and rc < 0 and rc != -signal.SIGKILL and rc != -signal.SIGTERM:
            problem = "airlock died with signal %d" % -rc
        log = self.log()
        for pat in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            if pat in log:
                problem = "sanitizer report in airlock log (%s)" % pat
        return problem


class Case:
    """Per-test fixtures; everything made here is torn down by close()."""

    def __init__(self, run, name):
        self.run = run
        self.name = name
        self.tmp = os.path.join(run.tmp, "t-" + name)
        os.makedirs(self.tmp, exist_ok=True)
        self.airlocks = []
        self._cleanups = []

    @property
    def ca(self):
        return self.run.ca_pem

    def defer(self, fn, *args):
        self._cleanups.append((fn, args))

    def upstream(self, tls=False, host="127.0.0.1"):
        u = upstream_mod.Upstream(self.run.server_ctx() if tls else None, host=host)
        self.defer(u.stop)
        return u

    def eof_echo(self):
        e = upstream_mod.EofEchoServer()
        self.defer(e.stop)
        return e

    def blackhole(self):
        b = Blackhole()
        self.defer(b.close)
        return b

    def airlock(self, **kw):
        a = Airlock(self.run, **kw)
        self.airlocks.append(a)
        a.start()
        return a

    def conn(self, port, **kw):
        c = Conn(port, **kw)
        self.defer(c.close)
        return c

    def file(self, name, data):
        p = os.path.join(self.tmp, name)
        with open(p, "wb") as fh:
            fh.write(data)
        return p

    def popen(self, p):
        """Registers a background process to be killed (by PID) at the end."""
        self.run.procs.append(p)

        def _k():
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(5)
        self.defer(_k)
        return p

    def close(self):
        """Tears everything down; returns problems found (crashes)."""
        problems = []
        for a in self.airlocks:
            try:
                pr = a.stop()
                if pr:
                    problems.append(pr)
            except Exception as e:  # noqa: BLE001
                problems.append("stopping airlock: %s" % e)
        for fn, args in reversed(self._cleanups):
            try:
                fn(*args)
            except Exception:  # noqa: BLE001
                pass
        self._cleanups = []
        if not self.run.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return problems


# ---------------------------------------------------------------------------
# runner

_TESTS = []


def test(fn):
    _TESTS.append(fn)
    return fn


def _name(fn):
    return fn.__name__[5:] if fn.__name__.startswith("test_") else fn.__name__


def _alarm(signum, frame):
    raise TestTimeout("test exceeded its time limit")


def main():
    global RUN
    ap = argparse.ArgumentParser()
    ap.add_argument("--airlock", required=True, help="path to the airlock binary")
    ap.add_argument("-k", action="append", default=[], help="run tests whose name contains this")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--test-timeout", type=int, default=90)
    args = ap.parse_args()
    tests = [t for t in _TESTS if not args.k or any(k in _name(t) for k in args.k)]
    if args.list:
        for t in tests:
            print(_name(t))
        return 0
    if not os.access(args.airlock, os.X_OK):
        print("FAIL setup: airlock binary %s not executable" % args.airlock)
        print("0 passed, 1 failed")
        return 1
    RUN = Run(args.airlock, keep=args.keep)
    signal.signal(signal.SIGALRM, _alarm)
    passed = failed = 0
    for fn in tests:
        name = _name(fn)
        case = Case(RUN, name)
        err = None
        tb = ""
        signal.alarm(args.test_timeout)
        try:
            fn(case)
        except TestFailure as e:
            err = str(e)
        except TestTimeout as e:
            err = str(e)
            tb = traceback.format_exc(limit=6)
        except Exception as e:  # noqa: BLE001
            err = "%s: %s" % (type(e).__name__, e)
            tb = traceback.format_exc(limit=6)
        finally:
            signal.alarm(0)
        try:
            problems = case.close()
        except Exception as e:  # noqa: BLE001
            problems = ["cleanup: %s" % e]
        if err is None and problems:
            err = "; ".join(problems)
        if err is None:
            passed += 1
            print("ok %s" % name, flush=True)
        else:
            failed += 1
            first, _, rest = err.partition("\n")
            print("FAIL %s: %s" % (name, first), flush=True)
            for line in (rest + "\n" + tb).strip().splitlines():
                print("#   " + line)
            for a in case.airlocks:
                print("#   --- airlock log tail (%s, rc=%s) ---" % (a.log_path, a.exit_rc))
                for line in a.log_tail(30).splitlines():
                    print("#   " + line)
            sys.stdout.flush()
    if args.keep:
        print("# kept %s" % RUN.tmp)
    print("%d passed, %d failed" % (passed, failed), flush=True)
    return 0 if failed == 0 else 1
