#!/usr/bin/env python3
"""bench/run_transparent.py - transparent vs explicit listener throughput (issue #6).

Needs root, iproute2, nftables (see tests/integration/netns.py), nginx, wrk, cc,
libssl-dev.

Setup (everything removed at exit, processes stopped by PID):
  origin   nginx on 127.0.0.1: http P_HTTP (/100b, /64k) and https P_TLS
           (self-signed; transparent TLS is relayed opaquely, clients don't verify)
  netns    one namespace from tests/integration/netns.py; tcp from it to
           ports P_HTTP and P_TLS (any address) is REDIRECTed to airlock's
           transparent listener; /etc/netns/NAME/hosts maps api.test to
           203.0.113.5 (TEST-NET-3: nowhere, the redirect catches it)
  airlock  one process, workers 1, two listeners on the namespace's host-side
           address: transparent :P_TP and forward (explicit) :P_EX;
           "resolve": {"api.test": "127.0.0.1"}, policy allows api.test with
           cidrs ["127.0.0.1/32"]; audit batched (same for both listeners)

Measured from inside the namespace, rounds interleaving transparent and
explicit, best round kept:
  1. HTTP GET /100b keep-alive, 50 conns, wrk -t1 -c50:
       transparent  wrk http://api.test:P_HTTP/100b   (redirected; Host: api.test)
       explicit     wrk -s bench/proxy.lua http://HOSTADDR:P_EX/ with absolute-form
                    GET http://api.test:P_HTTP/100b
  2. TLS tunnel, keep-alive GET /64k inside TLS, 50 conns (bench/tls_bench.c):
       transparent  tls_bench -a 203.0.113.5:P_TLS -S api.test   (SNI-decided relay)
       explicit     tls_bench -a HOSTADDR:P_EX -T api.test:P_TLS -S api.test (CONNECT)
  3. (info) TLS new connection per request, GET /100b: connection set-up cost.
Target: transparent within 10% of explicit (ratio >= 0.9).
Report: bench/results/transparent-latest.txt.

Knobs (env): AIRLOCK, DURATION [5], WARMUP [1], ROUNDS [2], CONNS [50].
"""

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import netns  # noqa: E402

T0 = time.time()
AIRLOCK = os.environ.get("AIRLOCK", os.path.join(ROOT, "build-release/proxy/airlock"))
if not AIRLOCK.startswith("/"):
    AIRLOCK = os.path.join(ROOT, AIRLOCK)
DURATION = int(os.environ.get("DURATION", "5"))
WARMUP = int(os.environ.get("WARMUP", "1"))
ROUNDS = int(os.environ.get("ROUNDS", "2"))
CONNS = int(os.environ.get("CONNS", "50"))
FAKE_IP = "203.0.113.5"


def log(msg):
    print("[transparent %3ds] %s" % (time.time() - T0, msg), file=sys.stderr, flush=True)


def free_port(used):
    import random
    import socket
    for _ in range(500):
        p = random.randint(20000, 32767)
        if p in used:
            continue
        s = socket.socket()
        try:
            s.bind(("0.0.0.0", p))
        except OSError:
            continue
        finally:
            s.close()
        used.add(p)
        return p
    raise SystemExit("no free port")


def wait_port(proc, addr, port, secs=10):
    import socket
    end = time.time() + secs
    while time.time() < end:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection((addr, port), 0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def stop(proc):
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def main():
    ok, why = netns.nat_supported()
    if not ok:
        print("transparent benchmark needs namespaces + nftables NAT: %s" % why)
        return 1
    for t in ("nginx", "wrk", "cc", "openssl"):
        if shutil.which(t) is None:
            print("fatal: %s is required" % t)
            return 1
    if not os.access(AIRLOCK, os.X_OK):
        print("fatal: no airlock binary at %s" % AIRLOCK)
        return 1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, hard), hard))

    tmp = tempfile.mkdtemp(prefix="airlock-bench-tp.")
    os.chmod(tmp, 0o755)
    procs = []
    try:
        return run(tmp, procs)
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


def run(tmp, procs):
    tb = os.path.join(tmp, "tls_bench")
    subprocess.run(["cc", "-O2", "-o", tb, os.path.join(BENCH, "tls_bench.c"), "-lssl", "-lcrypto"],
                   check=True)
    used = set()
    p_http, p_tls, p_tp, p_ex = (free_port(used) for _ in range(4))

    # ---- origin
    www = os.path.join(tmp, "www")
    os.makedirs(www)
    os.makedirs(os.path.join(tmp, "origin", "tmp"))
    with open(os.path.join(www, "100b"), "wb") as f:
        f.write(b"a" * 100)
    with open(os.path.join(www, "64k"), "wb") as f:
        f.write(b"b" * 65536)
    od = os.path.join(tmp, "origin")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=api.test",
                    "-addext", "subjectAltName=DNS:api.test", "-days", "2",
                    "-keyout", od + "/key.pem", "-out", od + "/cert.pem"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    conf = """worker_processes 1;
worker_rlimit_nofile %(nf)d;
daemon off;
master_process on;
pid %(d)s/nginx.pid;
error_log %(d)s/error.log warn;
events { worker_connections %(wc)d; }
http {
    access_log off;
    default_type application/octet-stream;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    tcp_nodelay on;
    sendfile on;
    client_body_temp_path %(d)s/tmp/body;
    proxy_temp_path %(d)s/tmp/proxy;
    fastcgi_temp_path %(d)s/tmp/fastcgi;
    uwsgi_temp_path %(d)s/tmp/uwsgi;
    scgi_temp_path %(d)s/tmp/scgi;
    server { listen 127.0.0.1:%(ph)d; root %(www)s; }
    server { listen 127.0.0.1:%(pt)d ssl; ssl_certificate %(d)s/cert.pem;
             ssl_certificate_key %(d)s/key.pem; ssl_session_tickets off; root %(www)s; }
}
""" % {"nf": nofile, "wc": nofile // 2, "d": od, "ph": p_http, "pt": p_tls, "www": www}
    with open(od + "/nginx.conf", "w") as f:
        f.write(conf)
    origin = subprocess.Popen(["nginx", "-e", od + "/error.log", "-p", od, "-c", od + "/nginx.conf"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(origin)
    if not (wait_port(origin, "127.0.0.1", p_http) and wait_port(origin, "127.0.0.1", p_tls)):
        print("fatal: origin nginx did not start")
        return 1
    log("origin nginx pid %d: http :%d https :%d" % (origin.pid, p_http, p_tls))

    with netns.Netns(redirect={p_http: p_tp, p_tls: p_tp}) as ns:
        hd = "/etc/netns/" + ns.name
        os.makedirs(hd, exist_ok=True)
        with open(hd + "/hosts", "w") as f:
            f.write("127.0.0.1 localhost\n%s api.test\n" % FAKE_IP)
        log("namespace %s: host side %s, inside %s; tcp to :%d/:%d -> :%d"
            % (ns.name, ns.host_addr, ns.ns_addr, p_http, p_tls, p_tp))

        # ---- airlock
        ad = os.path.join(tmp, "airlock")
        os.makedirs(ad)
        with open(ad + "/policy.json", "w") as f:
            f.write('{"default": "deny", "rules": [{"name": "origin", "hosts": ["api.test"], '
                    '"cidrs": ["127.0.0.1/32"], "action": "allow"}]}\n')
        with open(ad + "/cfg.json", "w") as f:
            f.write('{"listen": [{"addr": "%s:%d", "mode": "transparent"}, '
                    '{"addr": "%s:%d", "mode": "forward"}], "workers": 1, '
                    '"policy": "policy.json", "resolve": {"api.test": "127.0.0.1"}, '
                    '"audit": {"db": "audit.db"}, "log_level": "warn"}\n'
                    % (ns.host_addr, p_tp, ns.host_addr, p_ex))
        alout = open(os.path.join(tmp, "airlock.out"), "wb")
        al = subprocess.Popen([AIRLOCK, "run", "--config", "cfg.json"], cwd=ad, stdout=alout,
                              stderr=subprocess.STDOUT)
        procs.append(al)
        if not (wait_port(al, ns.host_addr, p_tp) and wait_port(al, ns.host_addr, p_ex)):
            alout.close()
            print("fatal: airlock did not start: %s" % open(os.path.join(tmp, "airlock.out")).read()[-400:])
            return 1
        log("airlock pid %d: transparent %s:%d, explicit %s:%d"
            % (al.pid, ns.host_addr, p_tp, ns.host_addr, p_ex))

        # ---- sanity: both paths answer, and the transparent one really is airlock's
        rc, out, err = ns.curl(["-o", "/dev/null", "-w", "%{http_code}", "http://api.test:%d/100b" % p_http])
        rc2, out2, err2 = ns.curl(["-o", "/dev/null", "-w", "%{http_code}", "-x",
                                   "http://%s:%d" % (ns.host_addr, p_ex), "http://api.test:%d/100b" % p_http])
        rc3, out3, err3 = ns.curl(["-k", "-o", "/dev/null", "-w", "%{http_code}", "https://api.test:%d/64k" % p_tls])
        log("sanity: transparent http %s, explicit http %s, transparent tls %s"
            % (out.decode() or err.strip(), out2.decode() or err2.strip(), out3.decode() or err3.strip()))
        rows = subprocess.run([AIRLOCK, "audit", "query", "--db", ad + "/audit.db", "--format", "jsonl"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30).stdout.decode()
        modes = re.findall(r'"mode":\s*"(\w+)"', rows)
        log("audit rows so far: modes %s" % ",".join(modes))
        if out != b"200" or out2 != b"200" or out3 != b"200":
            print("fatal: sanity check failed; airlock said: %s"
                  % open(os.path.join(tmp, "airlock.out")).read()[-400:])
            return 1

        lua = os.path.join(BENCH, "proxy.lua")
        results = {}

        def keep(key, val, err):
            r = results.setdefault(key, {"best": None, "err": 0, "runs": []})
            r["runs"].append(val)
            r["err"] += err
            if r["best"] is None or val > r["best"]:
                r["best"] = val

        def wrk(key, args, env=None):
            e = dict(netns._clean_env())
            e.update(env or {})
            base = ["ip", "netns", "exec", ns.name, "wrk", "-t1", "-c%d" % CONNS]
            subprocess.run(base + ["-d%ds" % WARMUP] + args, env=e, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=WARMUP + 30)
            p = subprocess.run(base + ["-d%ds" % DURATION] + args, env=e, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=DURATION + 30)
            o = p.stdout.decode()
            m = re.search(r"Requests/sec:\s+([\d.]+)", o)
            rps = float(m.group(1)) if m else 0.0
            err = 0
            m = re.search(r"Non-2xx or 3xx responses: (\d+)", o)
            if m:
                err += int(m.group(1))
            m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", o)
            if m:
                err += int(m.group(1)) + int(m.group(2)) + int(m.group(3)) + int(m.group(4))
            keep(key, rps, err)
            log("%s: %.0f req/s, errors %d" % (key, rps, err))

        def tls(key, args):
            cmd = ["ip", "netns", "exec", ns.name, tb, "load"] + args + [
                "-S", "api.test", "-c", str(CONNS), "-d", str(DURATION), "-w", str(WARMUP)]
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               timeout=DURATION + WARMUP + 30)
            o = p.stdout.decode()
            m = re.search(r"rps ([\d.]+) mbps ([\d.]+) errors (\d+)", o)
            if not m:
                keep(key, 0.0, 1)
                log("%s: failed: %s" % (key, o.strip()[:200]))
                return
            keep(key, float(m.group(1)), int(m.group(3)))
            results[key].setdefault("mbps", []).append(float(m.group(2)))
            log("%s: %s req/s, %s MB/s, errors %s" % (key, m.group(1), m.group(2), m.group(3)))

        for r in range(1, ROUNDS + 1):
            log("round %d/%d" % (r, ROUNDS))
            wrk("http-transparent", ["http://api.test:%d/100b" % p_http])
            wrk("http-explicit", ["-s", lua, "http://%s:%d/" % (ns.host_addr, p_ex)],
                {"BENCH_TARGET": "http://api.test:%d/100b" % p_http})
            tls("tls64k-transparent", ["-a", "%s:%d" % (FAKE_IP, p_tls), "-P", "/64k"])
            tls("tls64k-explicit", ["-a", "%s:%d" % (ns.host_addr, p_ex), "-T", "api.test:%d" % p_tls,
                                    "-P", "/64k"])
            tls("tlsnew-transparent", ["-a", "%s:%d" % (FAKE_IP, p_tls), "-P", "/100b", "-n"])
            tls("tlsnew-explicit", ["-a", "%s:%d" % (ns.host_addr, p_ex), "-T", "api.test:%d" % p_tls,
                                    "-P", "/100b", "-n"])

        rows = subprocess.run([AIRLOCK, "audit", "stats", "--db", ad + "/audit.db"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60).stdout.decode()
        stop(al)
        alout.close()

    # ---- report
    def ratio(a, b):
        return "n/a" if not a or not b else "%.2f" % (a / b)

    def verdict(v, t):
        return "n/a" if v == "n/a" else ("PASS" if float(v) >= t else "FAIL")

    lines = []
    lines.append("airlock transparent vs explicit benchmark  %s  %d cores  %s"
                 % (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.cpu_count(), os.uname().release))
    lines.append("airlock: %s (workers 1, both listeners in one process); nginx origin on 127.0.0.1; "
                 "clients inside namespace %s" % (AIRLOCK, "al-<pid>-1"))
    lines.append("settings: ROUNDS=%d (best kept) DURATION=%ds WARMUP=%ds CONNS=%d"
                 % (ROUNDS, DURATION, WARMUP, CONNS))
    lines.append("")
    fmt = "   %-44s %12s %10s %8s   %s"
    lines.append(fmt % ("measurement", "req/s", "MB/s", "errors", "all rounds"))
    names = [("http-transparent", "HTTP 100 B keep-alive, transparent (wrk)"),
             ("http-explicit", "HTTP 100 B keep-alive, explicit (wrk)"),
             ("tls64k-transparent", "TLS tunnel GET /64k, transparent (SNI)"),
             ("tls64k-explicit", "TLS tunnel GET /64k, explicit (CONNECT)"),
             ("tlsnew-transparent", "TLS new conn/request 100 B, transparent"),
             ("tlsnew-explicit", "TLS new conn/request 100 B, explicit")]
    for k, label in names:
        r = results.get(k)
        if not r:
            lines.append(fmt % (label, "n/a", "", "", ""))
            continue
        mb = "%.1f" % max(r["mbps"]) if r.get("mbps") and k.startswith("tls64k") else ""
        lines.append(fmt % (label, "%.0f" % r["best"], mb, r["err"],
                            ",".join("%.0f" % v for v in r["runs"])))
    lines.append("")
    lines.append("Targets (issue #6): transparent within 10% of explicit")
    b = lambda k: results.get(k, {}).get("best")  # noqa: E731
    r1 = ratio(b("http-transparent"), b("http-explicit"))
    r2 = ratio(b("tls64k-transparent"), b("tls64k-explicit"))
    r3 = ratio(b("tlsnew-transparent"), b("tlsnew-explicit"))
    lines.append("   %-44s %8s  %-8s %s" % ("HTTP 100 B transparent / explicit", r1, ">= 0.9", verdict(r1, 0.9)))
    lines.append("   %-44s %8s  %-8s %s" % ("TLS tunnel 64 KiB transparent / explicit", r2, ">= 0.9", verdict(r2, 0.9)))
    lines.append("   %-44s %8s  %-8s %s" % ("TLS new connection transparent / explicit", r3, "", "(info)"))
    lines.append("")
    lines.append("audit stats of the run (both listeners):")
    lines += ["   " + l for l in rows.strip().splitlines()[:12]]
    lines.append("")
    lines.append("run took %d s" % (time.time() - T0))
    rep = "\n".join(lines) + "\n"
    os.makedirs(os.path.join(BENCH, "results"), exist_ok=True)
    with open(os.path.join(BENCH, "results", "transparent-latest.txt"), "w") as f:
        f.write(rep)
    print()
    print(rep, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
