"""netns - throwaway network namespaces for airlock's transparent-mode tests
(python3 stdlib only; needs root, iproute2 and nftables).

    with netns.Netns(redirect={80: port, 443: port}) as ns:
        airlock listens on ns.host_addr:port (mode "transparent")
        r = ns.curl(["--resolve", "api.test:443:203.0.113.5", "https://api.test/"])

One Netns is: a namespace "al-<pid>-<n>", a veth pair "al<pid>h<n>" (host
side, ns.host_addr = 10.231.X.1/30) and "al<pid>s<n>" (inside, ns.ns_addr =
10.231.X.2/30, default route via the host side), optionally IPv6
(fdac:1a:X::1/64 and ::2), and one nftables table "inet al_<pid>_<n>":

  prerouting (nat)  tcp from the namespace to a listed destination port is
                    REDIRECTed to a local port; REDIRECT rewrites the
                    destination to the address of the interface the packet
                    came in on, so the listener must be bound to
                    ns.host_addr (or 0.0.0.0 / ::), not to 127.0.0.1.
  forward (filter)  everything from or to the host-side veth is dropped.

Nothing is routed off the machine: redirected connections and connections
to ns.host_addr are local deliveries, anything else from the namespace has
nowhere to go (no masquerade, forward dropped, net.ipv4.ip_forward left as
it is). No sysctl is changed.

Everything created is removed in __exit__ (also when the body raised), by
an atexit hook (interpreter exit, SIGTERM turned into SystemExit) and, for
leftovers of runs that were SIGKILLed, by sweep_stale() on the next run: it
removes al-<pid>-* namespaces, veths and tables whose pid is gone.

`python3 netns.py` runs a self-test (direct, redirect + SO_ORIGINAL_DST,
IPv6, cleanup) with altest's output format.
"""

import atexit
import itertools
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading

SO_ORIGINAL_DST = 80  # <linux/netfilter_ipv4.h>
IP6T_SO_ORIGINAL_DST = 80  # <linux/netfilter_ipv6/ip6_tables.h>

_seq = itertools.count(1)
_live = []  # Netns objects with something possibly left to remove
_lock = threading.Lock()
_swept = [False]
_hooks = [False]
_probe = []


class NetnsError(Exception):
    pass


def _run(cmd, check=True, timeout=20, input=None):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                       input=input)
    if check and p.returncode != 0:
        raise NetnsError("%s: rc=%d: %s" % (" ".join(cmd), p.returncode,
                                            p.stderr.decode("utf-8", "replace").strip()))
    return p


def _clean_env():
    env = dict(os.environ)
    for k in list(env):
        if k.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy",
                         "curl_home", "ssl_cert_file", "curl_ca_bundle"):
            del env[k]
    env["HOME"] = "/nonexistent"
    return env


def nat_supported():
    """Returns (True, "") when namespaces, veth pairs and nftables NAT
    (redirect) all work here, else (False, a reason a person can act on).
    The probe creates and removes a namespace, a veth pair and a table."""
    if _probe:
        return _probe[0]
    res = _nat_probe()
    _probe.append(res)
    return res


def _nat_probe():
    if os.geteuid() != 0:
        return False, "not root: namespaces, veth pairs and nftables need root (CI runs as root)"
    if shutil.which("ip") is None:
        return False, "'ip' (iproute2) not found"
    if shutil.which("nft") is None:
        return False, "'nft' not found: install the nftables package"
    tag = "%d" % os.getpid()
    table = "al_probe_" + tag
    ruleset = ("table inet %s {\n"
               " chain prerouting { type nat hook prerouting priority dstnat; policy accept;\n"
               "  iifname \"alprobe-none\" tcp dport { 80, 443 } redirect to :tcp dport map"
               " { 80 : 1, 443 : 2 }\n }\n"
               " chain forward { type filter hook forward priority filter; policy accept;\n"
               "  iifname \"alprobe-none\" drop\n }\n}\n" % table)
    p = _run(["nft", "-f", "-"], check=False, input=ruleset.encode())
    _run(["nft", "delete", "table", "inet", table], check=False)
    if p.returncode != 0:
        return False, ("nftables NAT is missing: `nft` could not load a nat/redirect chain (%s); "
                       "the kernel needs nf_tables, nft_nat, nft_redir, nf_nat and nf_conntrack "
                       "(CONFIG_NFT_NAT, CONFIG_NFT_REDIR)"
                       % p.stderr.decode("utf-8", "replace").strip())
    ns = "al-probe-" + tag
    p = _run(["ip", "netns", "add", ns], check=False)
    if p.returncode != 0:
        return False, "cannot create a network namespace: %s" % p.stderr.decode().strip()
    try:
        p = _run(["ip", "link", "add", "alprb" + tag[-8:], "type", "veth", "peer", "name",
                  "alprbs" + tag[-8:], "netns", ns], check=False)
        if p.returncode != 0:
            return False, "cannot create a veth pair: %s" % p.stderr.decode().strip()
        _run(["ip", "link", "del", "alprb" + tag[-8:]], check=False)
    finally:
        _run(["ip", "netns", "del", ns], check=False)
    return True, ""


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale():
    """Removes namespaces, veths and nft tables left by earlier runs of
    this module whose process no longer exists. Returns what it removed."""
    removed = []
    p = _run(["nft", "list", "tables"], check=False)
    for line in p.stdout.decode().splitlines():
        m = re.match(r"table inet (al_(\d+)_\d+)$", line.strip())
        if m and not _pid_alive(int(m.group(2))):
            _run(["nft", "delete", "table", "inet", m.group(1)], check=False)
            removed.append("table " + m.group(1))
    p = _run(["ip", "-o", "link", "show"], check=False)
    for line in p.stdout.decode().splitlines():
        m = re.match(r"\d+: (al(\d+)h\d+)[@:]", line)
        if m and not _pid_alive(int(m.group(2))):
            _run(["ip", "link", "del", m.group(1)], check=False)
            removed.append("link " + m.group(1))
    p = _run(["ip", "netns", "list"], check=False)
    for line in p.stdout.decode().splitlines():
        m = re.match(r"(al-(\d+)-\d+)\b", line.strip())
        if m and not _pid_alive(int(m.group(2))):
            _run(["ip", "netns", "del", m.group(1)], check=False)
            shutil.rmtree("/etc/netns/" + m.group(1), ignore_errors=True)
            removed.append("netns " + m.group(1))
    return removed


def _atexit():
    for ns in list(_live):
        ns.cleanup()


def _sigterm(signum, frame):
    raise SystemExit(128 + signum)


def _install_hooks():
    if _hooks[0]:
        return
    _hooks[0] = True
    atexit.register(_atexit)
    # SIGTERM would skip atexit; make it an exit unless someone handles it.
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL):
        signal.signal(signal.SIGTERM, _sigterm)


def _used_octets():
    out = _run(["ip", "-o", "addr", "show"], check=False).stdout.decode()
    out += _run(["ip", "route", "show", "table", "all"], check=False).stdout.decode()
    return {int(x) for x in re.findall(r"\b10\.231\.(\d+)\.", out)}


class Netns:
    """One namespace + veth pair + nft table; a context manager."""

    def __init__(self, redirect=None, redirect_all=None, octet=None, ipv6=False,
                 nameserver=None):
        """redirect: {destination port: local port} for tcp from the namespace
        (any destination address, the host side's included).
        redirect_all: a local port for every other tcp connection from the
        namespace except those to the host side's own addresses.
        octet: X in 10.231.X.0/30 (default: a free one).
        ipv6: also give both ends fdac:1a:X::1/64 and ::2 (same redirects).
        nameserver: write /etc/netns/NAME/resolv.conf with this server
        (seen by processes started through run_in_ns/popen_in_ns)."""
        self.n = next(_seq)
        pid = os.getpid()
        self.name = "al-%d-%d" % (pid, self.n)
        self.host_if = "al%dh%d" % (pid, self.n)
        self.ns_if = "al%ds%d" % (pid, self.n)
        self.table = "al_%d_%d" % (pid, self.n)
        if len(self.host_if) > 15:
            raise NetnsError("interface name %s too long" % self.host_if)
        self.redirect = dict(redirect or {})
        self.redirect_all = redirect_all
        self.octet = octet
        self.ipv6 = ipv6
        self.nameserver = nameserver
        self.host_addr = self.ns_addr = None
        self.host_addr6 = self.ns_addr6 = None
        self._procs = []
        self._created = False

    # ---- lifecycle

    def __enter__(self):
        self.create()
        return self

    def __exit__(self, exc_type, exc, tb):
        problems = self.cleanup()
        if problems and exc_type is None:
            raise NetnsError("cleanup: " + "; ".join(problems))
        return False

    def create(self):
        ok, why = nat_supported()
        if not ok:
            raise NetnsError(why)
        _install_hooks()
        with _lock:
            if not _swept[0]:
                _swept[0] = True
                sweep_stale()
            if self.octet is None:
                used = _used_octets() | {ns.octet for ns in _live}
                start = (os.getpid() * 7 + self.n) % 250 + 1
                for i in range(250):
                    cand = (start + i) % 250 + 1
                    if cand not in used:
                        self.octet = cand
                        break
                else:
                    raise NetnsError("no free 10.231.X.0/30")
            _live.append(self)
        self._created = True
        x = self.octet
        self.host_addr = "10.231.%d.1" % x
        self.ns_addr = "10.231.%d.2" % x
        if self.ipv6:
            self.host_addr6 = "fdac:1a:%x::1" % x
            self.ns_addr6 = "fdac:1a:%x::2" % x
        try:
            _run(["ip", "netns", "add", self.name])
            _run(["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if,
                  "netns", self.name])
            _run(["ip", "addr", "add", self.host_addr + "/30", "dev", self.host_if])
            _run(["ip", "-n", self.name, "addr", "add", self.ns_addr + "/30", "dev", self.ns_if])
            if self.ipv6:
                _run(["ip", "-6", "addr", "add", self.host_addr6 + "/64", "dev", self.host_if,
                      "nodad"])
                _run(["ip", "-n", self.name, "-6", "addr", "add", self.ns_addr6 + "/64", "dev",
                      self.ns_if, "nodad"])
            _run(["ip", "link", "set", self.host_if, "up"])
            _run(["ip", "-n", self.name, "link", "set", "lo", "up"])
            _run(["ip", "-n", self.name, "link", "set", self.ns_if, "up"])
            _run(["ip", "-n", self.name, "route", "add", "default", "via", self.host_addr])
            if self.ipv6:
                _run(["ip", "-n", self.name, "-6", "route", "add", "default", "via",
                      self.host_addr6])
            _run(["nft", "-f", "-"], input=self.ruleset().encode())
            if self.nameserver:
                d = "/etc/netns/" + self.name
                os.makedirs(d, exist_ok=True)
                with open(os.path.join(d, "resolv.conf"), "w") as fh:
                    fh.write("nameserver %s\n" % self.nameserver)
        except BaseException:
            self.cleanup()
            raise
        return self

    def ruleset(self):
        """The nft table this namespace uses (text for `nft -f -`)."""
        iif = 'iifname "%s"' % self.host_if
        pre = []
        if self.redirect:
            ports = ", ".join(str(p) for p in sorted(self.redirect))
            pmap = ", ".join("%d : %d" % (p, self.redirect[p]) for p in sorted(self.redirect))
            pre.append("%s meta l4proto tcp tcp dport { %s } redirect to :tcp dport map { %s }"
                       % (iif, ports, pmap))
        if self.redirect_all:
            pre.append("%s ip daddr != %s meta l4proto tcp redirect to :%d"
                       % (iif, self.host_addr, self.redirect_all))
            if self.ipv6:
                pre.append("%s ip6 daddr != %s meta l4proto tcp redirect to :%d"
                           % (iif, self.host_addr6, self.redirect_all))
        return ("table inet %s {\n"
                "  chain prerouting {\n"
                "    type nat hook prerouting priority dstnat; policy accept;\n"
                "%s"
                "  }\n"
                "  chain forward {\n"
                "    type filter hook forward priority filter; policy accept;\n"
                "    %s counter drop\n"
                "    oifname \"%s\" counter drop\n"
                "  }\n"
                "}\n" % (self.table, "".join("    %s\n" % r for r in pre), iif, self.host_if))

    def cleanup(self):
        """Removes everything this namespace made; idempotent. Returns a
        list of problems (empty when all is gone)."""
        problems = []
        if not self._created:
            return problems
        for p in self._procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait(5)
                except (OSError, subprocess.TimeoutExpired) as e:
                    problems.append("killing pid %d: %s" % (p.pid, e))
        self._procs = []
        steps = [
            (["nft", "list", "table", "inet", self.table],
             ["nft", "delete", "table", "inet", self.table]),
            (["ip", "link", "show", self.host_if], ["ip", "link", "del", self.host_if]),
            (["ip", "netns", "pids", self.name], ["ip", "netns", "del", self.name]),
        ]
        for probe, rm in steps:
            try:
                if _run(probe, check=False).returncode == 0:
                    _run(rm)
            except (NetnsError, subprocess.TimeoutExpired, OSError) as e:
                problems.append(str(e))
        shutil.rmtree("/etc/netns/" + self.name, ignore_errors=True)
        problems += self.leftovers()
        if not problems:
            with _lock:
                if self in _live:
                    _live.remove(self)
            self._created = False
        return problems

    def leftovers(self):
        """What of this namespace still exists (for tests of the cleanup)."""
        left = []
        if _run(["nft", "list", "table", "inet", self.table], check=False).returncode == 0:
            left.append("nft table inet %s" % self.table)
        if _run(["ip", "link", "show", self.host_if], check=False).returncode == 0:
            left.append("link %s" % self.host_if)
        names = _run(["ip", "netns", "list"], check=False).stdout.decode().split()
        if self.name in names:
            left.append("netns %s" % self.name)
        return left

    # ---- running things inside

    def _cmd(self, cmd):
        return ["ip", "netns", "exec", self.name] + list(cmd)

    def run_in_ns(self, cmd, timeout=30, input=None, check=False):
        """Runs cmd inside the namespace; returns a CompletedProcess with
        stdout/stderr as bytes. check=True raises NetnsError on rc != 0."""
        p = subprocess.run(self._cmd(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           input=input, timeout=timeout, env=_clean_env())
        if check and p.returncode != 0:
            raise NetnsError("in %s: %s: rc=%d: %s" % (self.name, " ".join(cmd), p.returncode,
                                                       p.stderr.decode("utf-8", "replace")))
        return p

    def popen_in_ns(self, cmd, **kw):
        """Starts cmd inside the namespace; killed (by pid) at cleanup."""
        kw.setdefault("env", _clean_env())
        p = subprocess.Popen(self._cmd(cmd), **kw)
        self._procs.append(p)
        return p

    def curl(self, args, timeout=20):
        """`curl -q -sS --max-time T ARGS` inside the namespace; returns
        (rc, stdout bytes, stderr str)."""
        p = self.run_in_ns(["curl", "-q", "-sS", "--max-time", str(timeout)] + list(args),
                           timeout=timeout + 15)
        return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


def orig_dst(sock):
    """(address, port) the connection on `sock` was sent to before NAT."""
    if sock.family == socket.AF_INET6:
        try:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
            port = struct.unpack_from("!H", raw, 2)[0]
            return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
        except OSError:
            pass  # an IPv4 connection on a dual-stack socket
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntoa(raw[4:8]), port


# ---------------------------------------------------------------------------
# self-test: python3 netns.py


class _Server:
    """Answers every connection with one HTTP/1.0 response whose body names
    the original destination ("orig=ADDR:PORT") or, for direct connections,
    the local address."""

    def __init__(self, host, port=0):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stop_ev = threading.Event()
        self.t = threading.Thread(target=self._loop, daemon=True)
        self.t.start()

    def _loop(self):
        self.sock.settimeout(0.2)
        while not self.stop_ev.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                c.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    d = c.recv(4096)
                    if not d:
                        break
                    data += d
                try:
                    a, p = orig_dst(c)
                    body = "orig=%s:%d" % (a, p)
                except OSError as e:
                    body = "orig-error=%s" % e
                body += " local=%s:%d" % c.getsockname()[:2]
                c.sendall(("HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                           % (len(body), body)).encode())
            except OSError:
                pass
            finally:
                c.close()

    def stop(self):
        self.stop_ev.set()
        self.sock.close()
        self.t.join(2)


def _selftest():
    results = []

    def case(name, fn):
        try:
            fn()
            results.append((name, None))
            print("ok %s" % name, flush=True)
        except Exception as e:  # noqa: BLE001
            results.append((name, e))
            print("FAIL %s: %s" % (name, str(e).splitlines()[0] if str(e) else repr(e)),
                  flush=True)
            for line in str(e).splitlines()[1:]:
                print("#   " + line)

    def expect(cond, msg):
        if not cond:
            raise AssertionError(msg)

    def t_probe():
        ok, why = nat_supported()
        expect(ok, why)

    def t_direct():
        with Netns() as ns:
            srv = _Server(ns.host_addr)
            try:
                rc, out, err = ns.curl(["http://%s:%d/" % (ns.host_addr, srv.port)], timeout=5)
                expect(rc == 0, "curl rc=%d %s" % (rc, err))
                # no NAT happened: conntrack may know nothing (orig-error=ENOENT)
                expect(out.endswith(b" local=%s:%d" % (ns.host_addr.encode(), srv.port)),
                       "body %r" % out)
            finally:
                srv.stop()

    def t_redirect():
        srv = _Server("0.0.0.0")
        try:
            with Netns(redirect={80: srv.port, 443: srv.port}) as ns:
                rc, out, err = ns.curl(["http://203.0.113.5/"], timeout=5)
                expect(rc == 0, "curl rc=%d %s" % (rc, err))
                expect(out.startswith(b"orig=203.0.113.5:80 local=%s:%d"
                                      % (ns.host_addr.encode(), srv.port)), "body %r" % out)
                rc, out, err = ns.curl(["http://198.51.100.7:443/x"], timeout=5)
                expect(rc == 0 and out.startswith(b"orig=198.51.100.7:443 "),
                       "443: rc=%d %r %s" % (rc, out, err))
                # an unlisted port goes nowhere: not redirected, not forwarded
                rc, out, err = ns.curl(["--connect-timeout", "1", "http://203.0.113.5:81/"],
                                       timeout=3)
                expect(rc != 0, "port 81 was answered: %r" % out)
        finally:
            srv.stop()

    def t_redirect_all():
        srv = _Server("0.0.0.0")
        direct = None
        try:
            with Netns(redirect_all=srv.port) as ns:
                direct = _Server(ns.host_addr)
                rc, out, err = ns.curl(["http://203.0.113.9:8443/"], timeout=5)
                expect(rc == 0 and out.startswith(b"orig=203.0.113.9:8443 "),
                       "rc=%d %r %s" % (rc, out, err))
                rc, out, err = ns.curl(["http://%s:%d/" % (ns.host_addr, direct.port)],
                                       timeout=5)
                expect(rc == 0 and out.startswith(b"orig=%s:%d" % (ns.host_addr.encode(),
                                                                     direct.port)),
                       "direct: rc=%d %r %s" % (rc, out, err))
        finally:
            srv.stop()
            if direct:
                direct.stop()

    def t_ipv6():
        srv = _Server("::")
        try:
            with Netns(redirect={80: srv.port}, ipv6=True) as ns:
                rc, out, err = ns.curl(["http://[2001:db8::5]/"], timeout=5)
                expect(rc == 0 and out.startswith(b"orig=2001:db8::5:80 "),
                       "v6: rc=%d %r %s" % (rc, out, err))
                rc, out, err = ns.curl(["http://203.0.113.5/"], timeout=5)
                expect(rc == 0 and out.startswith(b"orig=203.0.113.5:80 "),
                       "v4 on a dual-stack listener: rc=%d %r %s" % (rc, out, err))
        finally:
            srv.stop()

    def t_cleanup_on_failure():
        ns = Netns(redirect={80: 1})
        try:
            with ns:
                p = ns.popen_in_ns(["sleep", "300"])
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        expect(p.poll() is not None, "process in the namespace still running")
        expect(ns.leftovers() == [], "left behind: %s" % ns.leftovers())
        names = _run(["ip", "netns", "list"]).stdout.decode()
        expect(ns.name not in names, "namespace still listed")

    def t_nameserver():
        with Netns(nameserver="10.231.0.53") as ns:
            p = ns.run_in_ns(["cat", "/etc/resolv.conf"], check=True)
            expect(p.stdout == b"nameserver 10.231.0.53\n", "resolv.conf %r" % p.stdout)
        expect(not os.path.exists("/etc/netns/" + ns.name), "/etc/netns entry left")

    case("probe", t_probe)
    if results[0][1] is None:
        case("direct", t_direct)
        case("redirect", t_redirect)
        case("redirect_all", t_redirect_all)
        case("ipv6", t_ipv6)
        case("cleanup_on_failure", t_cleanup_on_failure)
        case("nameserver", t_nameserver)
    passed = sum(1 for _, e in results if e is None)
    failed = len(results) - passed
    print("%d passed, %d failed" % (passed, failed), flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(_selftest())
