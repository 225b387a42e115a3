#!/usr/bin/env python3
"""bench/run_sink.py - the fleet audit sink (issue 18).

(a) Shipper throughput: a local audit file of ROWS rows in airlock's real
    schema (airlock creates it; rows are added with the sqlite3 CLI from a
    recursive CTE: realistic widths, 300 sandboxes, 18 hosts, paths of
    20-60 bytes, some secrets), then airlock starts with audit.sink pointing
    at a fresh PostgreSQL 15 (tests/integration/pgfix.py: initdb as the
    postgres user in a temp dir, fsync on, default settings) and ships the
    backlog. Reported: rows/s from the first shipped row to the last
    (airlock_audit_sink_rows_total polled every 50 ms), and the bytes per
    row in PostgreSQL (pg_total_relation_size of the partitions + indexes).
(b) Proxy HTTP GET /100b keep-alive through airlock (wrk -t1 -cCONNS with
    bench/proxy.lua, workers 1, batched audit) with the sink off and on, two
    airlocks side by side in the same run, rounds interleaved, best round
    kept; the sink-on airlock ships to the same PostgreSQL meanwhile.

Knobs (environment): AIRLOCK [build-release/proxy/airlock], ROWS [1000000],
DURATION [5], WARMUP [1], ROUNDS [3], CONNS [50], PART [ab].
Everything listens on 127.0.0.1, lives in a temp dir removed at the end;
every process is stopped by its PID. Report: stdout and
bench/results/sink-latest.txt.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import pgfix  # noqa: E402

AIRLOCK = os.environ.get("AIRLOCK", os.path.join(ROOT, "build-release/proxy/airlock"))
if not os.path.isabs(AIRLOCK):
    AIRLOCK = os.path.join(ROOT, AIRLOCK)
ROWS = int(os.environ.get("ROWS", "1000000"))
DURATION = int(os.environ.get("DURATION", "5"))
WARMUP = int(os.environ.get("WARMUP", "1"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
CONNS = int(os.environ.get("CONNS", "50"))
PART = os.environ.get("PART", "ab")
PROCS = []
REPORT = []
T0 = time.time()


def log(msg):
    print("[sink %3ds] %s" % (time.time() - T0, msg), file=sys.stderr, flush=True)


def out(line=""):
    REPORT.append(line)
    print(line, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(proc, port, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def start(argv, cwd, logpath):
    fh = open(logpath, "ab")
    p = subprocess.Popen(argv, cwd=cwd, stdout=fh, stderr=fh, stdin=subprocess.DEVNULL)
    fh.close()
    PROCS.append(p)
    return p


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def metric(admin_port, name):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % admin_port, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def airlock(tmp, name, audit):
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    port, admin = free_port(), free_port()
    with open(os.path.join(d, "policy.json"), "w") as fh:
        json.dump({"default": "allow", "allow_addresses": ["127.0.0.0/8"], "rules": []}, fh)
    with open(os.path.join(d, "cfg.json"), "w") as fh:
        json.dump({"listen": [{"addr": "127.0.0.1:%d" % port, "mode": "forward"}],
                   "admin": "127.0.0.1:%d" % admin, "workers": 1, "policy": "policy.json",
                   "audit": audit, "log_level": "warn"}, fh)
    p = start([AIRLOCK, "run", "--config", "cfg.json"], d, os.path.join(d, "airlock.log"))
    if not wait_port(p, port):
        raise SystemExit("airlock %s did not start: %s" % (name, open(os.path.join(d, "airlock.log")).read()[-500:]))
    return p, port, admin, d


FILL_SQL = """
PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < %(rows)d)
INSERT INTO requests (ts, duration_us, conn_id, sandbox, session, tool_call, client, mode, method,
    scheme, host, port, path, upstream, orig_dst, decision, rule, reason, secrets, status,
    bytes_up, bytes_down, error, pending, sni, addr)
SELECT %(t0)d + i * 1000, 1000 + i %% 50000, i / 3, 'sb-' || (i %% 300), 'sess-' || (i %% 5000),
    CASE WHEN i %% 2 = 0 THEN 'toolu_' || (i / 10) ELSE '' END, '10.0.' || (i %% 250) || '.7:' || (30000 + i %% 30000),
    'forward', CASE WHEN i %% 7 = 0 THEN 'POST' ELSE 'GET' END, 'https',
    CASE i %% 18 WHEN 0 THEN 'api.github.com' WHEN 1 THEN 'pypi.org' WHEN 2 THEN 'files.pythonhosted.org'
      WHEN 3 THEN 'registry.npmjs.org' WHEN 4 THEN 'api.openai.com' ELSE 'host' || (i %% 18) || '.example.com' END,
    443, '/v1/repos/org-' || (i %% 977) || '/items/' || i || substr('?abcdefghijklmnopqrstuvwxyz', 1, i %% 28),
    '140.82.112.' || (i %% 200) || ':443', '',
    CASE WHEN i %% 50 = 0 THEN 'deny' ELSE 'allow' END, 'rule-' || (i %% 40),
    CASE WHEN i %% 50 = 0 THEN 'host_not_allowed' ELSE '' END,
    CASE WHEN i %% 10 = 0 THEN 'github_token' WHEN i %% 10 = 1 THEN 'openai_key,npm_token' ELSE '' END,
    CASE WHEN i %% 50 = 0 THEN 403 ELSE 200 END, 300 + i %% 2000, 1000 + i %% 60000, '', 0,
    'api.github.com', '140.82.112.3:443'
FROM n;
COMMIT;
"""


def part_a(tmp, pg):
    al, port, admin, d = airlock(tmp, "fill", {"db": "audit.db"})
    stop(al)
    db = os.path.join(d, "audit.db")
    t = time.time()
    subprocess.run(["sqlite3", db], input=(FILL_SQL % {"rows": ROWS, "t0": int(time.time() * 1e6) - ROWS * 1000}).encode(),
                   check=True, stdout=subprocess.DEVNULL)
    log("filled %d rows in %.1fs (%.0f MiB)" % (ROWS, time.time() - t, os.path.getsize(db) / 2**20))
    with open(os.path.join(d, "cfg.json")) as fh:
        cfg = json.load(fh)
    cfg["audit"]["sink"] = {"postgres": pg.uri() + os.environ.get("SINK_URI_EXTRA", ""), "instance": "bench-a"}
    with open(os.path.join(d, "cfg.json"), "w") as fh:
        json.dump(cfg, fh)
    if os.environ.get("PRESQL"):  # experiments: change the schema before shipping
        subprocess.run([AIRLOCK, "audit", "migrate", "--db", pg.uri()], check=True,
                       stdout=subprocess.DEVNULL)
        pg.psql(os.environ["PRESQL"])
    t_start = time.monotonic()
    p = start([AIRLOCK, "run", "--config", "cfg.json"], d, os.path.join(d, "airlock.log"))
    port, admin = cfg["listen"][0]["addr"].split(":")[1], int(cfg["admin"].split(":")[1])
    if not wait_port(p, admin):
        raise SystemExit("airlock (ship) did not start")
    first = last = None
    n = 0
    cpu0 = None
    while True:
        v = metric(admin, "airlock_audit_sink_rows_total") or 0
        now = time.monotonic()
        if v > 0 and first is None:
            first, n_first = now, v
            cpu0 = cpu_ticks(p.pid)
            bpid = int(pg.psql("SELECT pid FROM pg_stat_activity WHERE application_name = "
                               "'airlock-audit'")[0][0])
            bcpu0 = cpu_ticks(bpid)
        if v >= ROWS:
            last = now
            n = v
            break
        if now - t_start > 600:
            raise SystemExit("shipping %d rows took over 10 minutes (at %d)" % (ROWS, v))
        time.sleep(0.05)
    cpu1 = cpu_ticks(p.pid)
    bcpu1 = cpu_ticks(bpid)
    stop(p)
    rate = (n - n_first) / (last - first) if last > first else 0
    size = int(pg.psql("SELECT sum(pg_total_relation_size(c.oid)) FROM pg_inherits i JOIN pg_class c "
                       "ON c.oid = i.inhrelid WHERE i.inhparent = 'requests'::regclass")[0][0])
    local = os.path.getsize(db)
    cnt = int(pg.psql("SELECT count(*) FROM requests WHERE instance = 'bench-a'")[0][0])
    hz = os.sysconf("SC_CLK_TCK")
    out("(a) Shipper: %d-row backlog from a local file to PostgreSQL 15 (fsync on), batches of 5000, one COPY each" % ROWS)
    out("    %-40s %12.0f rows/s   (target >= 50000: %s)" % ("shipper throughput", rate, "PASS" if rate >= 50000 else "FAIL"))
    out("    %-40s %12.1f s" % ("start to last row (connect, schema)", last - t_start))
    out("    %-40s %12.1f us/row" % ("airlock CPU while shipping", (cpu1 - cpu0) * 1e6 / hz / max(n - n_first, 1)))
    bus = (bcpu1 - bcpu0) * 1e6 / hz / max(n - n_first, 1)
    out("    %-40s %12.1f us/row  (one core: %.0f rows/s)" % ("PostgreSQL backend CPU (COPY etc.)", bus,
                                                            1e6 / bus if bus > 0 else 0))
    out("    (load average at the end: %s)" % open("/proc/loadavg").read().split()[0])
    out("    %-40s %12.0f bytes/row (local sqlite: %.0f)" % ("PostgreSQL size, table + indexes", size / max(cnt, 1), local / ROWS))
    out("    rows in PostgreSQL: %d (expected %d)" % (cnt, ROWS))
    out()


def cpu_ticks(pid):
    try:
        with open("/proc/%d/stat" % pid) as fh:
            f = fh.read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    except OSError:
        return 0


def part_b(tmp, pg):
    www = os.path.join(tmp, "www")
    os.makedirs(www)
    with open(os.path.join(www, "100b"), "w") as fh:
        fh.write("a" * 100)
    od = os.path.join(tmp, "origin")
    os.makedirs(os.path.join(od, "tmp"))
    oport = free_port()
    with open(os.path.join(od, "nginx.conf"), "w") as fh:
        fh.write("worker_processes 1; daemon off; master_process on; pid %s/nginx.pid;\n"
                 "error_log %s/error.log warn; events { worker_connections 4096; }\n"
                 "http { access_log off; default_type application/octet-stream; "
                 "keepalive_timeout 300s; keepalive_requests 1000000; tcp_nodelay on;\n"
                 "client_body_temp_path %s/tmp/body; proxy_temp_path %s/tmp/proxy; "
                 "fastcgi_temp_path %s/tmp/f; uwsgi_temp_path %s/tmp/u; scgi_temp_path %s/tmp/s;\n"
                 "server { listen 127.0.0.1:%d; root %s; } }\n"
                 % (od, od, od, od, od, od, od, oport, www))
    os.chmod(tmp, 0o755)
    for root, dirs, files in os.walk(www):
        os.chmod(root, 0o755)
    os.chmod(os.path.join(www, "100b"), 0o644)
    ng = start(["nginx", "-e", os.path.join(od, "error.log"), "-p", od, "-c", os.path.join(od, "nginx.conf")], od,
               os.path.join(od, "out.log"))
    if not wait_port(ng, oport):
        raise SystemExit("origin nginx did not start")
    modes = {"off": {"db": "audit.db"},
             "on": {"db": "audit.db", "sink": {"postgres": pg.uri(), "instance": "bench-b"}}}
    als = {m: airlock(tmp, "al-" + m, a) for m, a in modes.items()}
    target = "http://127.0.0.1:%d/100b" % oport
    best = {}
    cpu = {m: 0 for m in als}
    nreq = {m: 0 for m in als}
    for r in range(1, ROUNDS + 1):
        for m, (p, port, admin, d) in als.items():
            env = dict(os.environ, BENCH_TARGET=target)
            url = "http://127.0.0.1:%d/" % port
            lua = os.path.join(BENCH, "proxy.lua")
            subprocess.run(["wrk", "-t1", "-c%d" % CONNS, "-s", lua, "-d%ds" % WARMUP, url], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            c0 = cpu_ticks(p.pid)
            o = subprocess.run(["wrk", "-t1", "-c%d" % CONNS, "-s", lua, "-d%ds" % DURATION, url], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT).stdout.decode()
            cpu[m] += cpu_ticks(p.pid) - c0
            for line in o.splitlines():
                if "requests in" in line:
                    nreq[m] += int(line.split()[0])
            rps = 0.0
            for line in o.splitlines():
                if line.startswith("Requests/sec:"):
                    rps = float(line.split()[1])
            bad = "Non-2xx" in o or "Socket errors" in o
            log("r%d sink=%s: %.0f req/s%s" % (r, m, rps, " (errors)" if bad else ""))
            if rps > best.get(m, 0):
                best[m] = rps
    p, port, admin, d = als["on"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (metric(admin, "airlock_audit_sink_lag_rows") or 0) > 0:
        time.sleep(0.2)
    shipped = metric(admin, "airlock_audit_sink_rows_total")
    lag = metric(admin, "airlock_audit_sink_lag_rows")
    for m in als:
        stop(als[m][0])
    stop(ng)
    ratio = best.get("on", 0) / best["off"] if best.get("off") else 0
    out("(b) Proxy HTTP GET /100b keep-alive, %d connections, workers 1, batched audit "
        "(wrk -t1 -c%d -s bench/proxy.lua; best of %d x %ds, interleaved)" % (CONNS, CONNS, ROUNDS, DURATION))
    hz = os.sysconf("SC_CLK_TCK")
    us = {m: cpu[m] * 1e6 / hz / nreq[m] if nreq[m] else 0 for m in als}
    out("    %-10s %12.0f req/s   airlock CPU %.1f us/req" % ("sink off", best.get("off", 0), us["off"]))
    out("    %-10s %12.0f req/s   airlock CPU %.1f us/req (shipper included; rows shipped %d, lag after the run %d)"
        % ("sink on", best.get("on", 0), us["on"], shipped or 0, lag or 0))
    out("    %-36s %8.2f  %-8s %s" % ("sink on / sink off", ratio, ">= 0.95", "PASS" if ratio >= 0.95 else "FAIL"))
    out()


def main():
    if not os.access(AIRLOCK, os.X_OK):
        raise SystemExit("no airlock binary at %s" % AIRLOCK)
    for tool in ("sqlite3", "wrk", "nginx"):
        if shutil.which(tool) is None and not os.path.exists("/usr/sbin/" + tool):
            raise SystemExit("%s is required" % tool)
    tmp = tempfile.mkdtemp(prefix="airlock-bench-sink.")
    pg = None
    try:
        pg = pgfix.Postgres(fsync=True)
        out("airlock sink benchmark  %s  %d cores  PostgreSQL %s" % (
            time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.cpu_count(),
            pg.psql("SHOW server_version")[0][0]))
        out("airlock: %s" % AIRLOCK)
        out()
        if "a" in PART:
            part_a(tmp, pg)
        if "b" in PART:
            part_b(tmp, pg)
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        if pg is not None:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(os.path.join(BENCH, "results"), exist_ok=True)
        with open(os.path.join(BENCH, "results", "sink-latest.txt"), "w") as fh:
            fh.write("\n".join(REPORT) + "\n")


if __name__ == "__main__":
    main()
