#!/usr/bin/env python3
"""Operations suite (issue 19): health, metrics, logs.

- /healthz is liveness (200 while the main loop answers); /readyz is 503
  with a JSON reason while the audit writer cannot commit (the database on
  a full tmpfs, strict durability) and while draining, 200 otherwise.
- sd_notify: READY=1 once airlock serves, WATCHDOG=1 with WATCHDOG_USEC,
  STOPPING=1 at SIGTERM, on a unix datagram socket named by NOTIFY_SOCKET.
- /metrics passes `promtool check metrics` (Debian's prometheus package),
  its latency histograms move with traffic, and no label value comes from
  request data.
- log_format "json": every line is one JSON object {time, level, message,
  fields}; access_log: one line per finished request with its fields, the
  path without its query; neither ever carries a secret value; control
  characters in a logged value are escaped (never '?', never raw).

    python3 tests/integration/test_ops.py --airlock build/proxy/airlock [-k NAME]

The tmpfs test needs root (mount); every process started here is killed by
PID at the end and the tmpfs is unmounted.
"""

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import altest  # noqa: E402
from altest import TestFailure, check, eq, test, wait_until  # noqa: E402

SECRET = "SECRET-VALUE-0b5e55ed-4242"
PLACEHOLDER = "al_ph_opsTestPlaceholder0001"
QUERY_MARK = "QUERYMARK7x"
POLICY = {"default": "deny", "allow_addresses": ["127.0.0.0/8", "::1/128"],
          "rules": [{"name": "up-rule", "hosts": ["upstream.test"], "action": "allow"},
                    {"name": "tls-rule", "hosts": ["localhost"], "action": "allow",
                     "intercept": True}]}
RESOLVE = {"upstream.test": "127.0.0.1", "denied.test": "127.0.0.1"}


def url(up, path, host="upstream.test"):
    return "http://%s:%d%s" % (host, up.port, path)


def get(al, path):
    """GET on the admin listener: (status, body bytes)."""
    st, _, body = altest.http_get_direct(al.admin + path)
    return st, body


def readyz(al):
    st, body = get(al, "/readyz")
    try:
        doc = json.loads(body.decode())
    except ValueError:
        raise TestFailure("/readyz answered %d with a body that is not JSON: %r" % (st, body[:200]))
    return st, doc


def start(t, config=None, policy=None, **kw):
    cfg = {"resolve": dict(RESOLVE), "log_level": "info"}
    cfg.update(config or {})
    return t.airlock(config=cfg, policy=policy or POLICY, **kw)


def closed_request(port, path="/x"):
    """An allowed request to a closed port: one audit row, 502 (or 503 when
    the audit trail refuses it)."""
    auth = "upstream.test:%d" % port
    return ("GET http://%s%s HTTP/1.1\r\nHost: %s\r\n\r\n" % (auth, path, auth)).encode()


def secrets_file(t):
    doc = {"secrets": {"tok": {"from": {"value": SECRET}, "hosts": ["upstream.test"],
                               "header": {"name": "Authorization", "format": "Bearer {}"},
                               "placeholder": PLACEHOLDER, "allow_plaintext": True,
                               "in": ["header", "query"]}}}
    return t.file("secrets.json", json.dumps(doc).encode())


def secret_forms():
    v = SECRET.encode()
    return [v, base64.b64encode(v), v.hex().encode(), SECRET.replace("-", "%2D").encode()]


def no_secret(blob, what):
    for f in secret_forms():
        check(f not in blob, "%s carries the secret value (%r)" % (what, f))


# ---------------------------------------------------------------------------
# health


@test
def test_readyz_audit_full_disk(t):
    if os.geteuid() != 0:
        print("    skipped: needs root to mount a tmpfs")
        return
    mnt = os.path.join(t.tmp, "mnt")
    os.makedirs(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", mnt], check=True)

    def _umount():
        subprocess.run(["umount", "-l", mnt], check=False)
    t.defer(_umount)  # runs after the airlock is stopped (close() stops airlocks first)
    al = start(t, config={"audit": {"db": os.path.join(mnt, "audit.db"),
                                    "durability": "strict"}, "log_level": "warn"})
    st, doc = readyz(al)
    eq((st, doc), (200, {"ready": True}), "/readyz with a healthy audit writer")
    port = altest.closed_port()
    eq(al.raw(closed_request(port)).status, 502, "request before the disk fills")
    # fill the file system, then ask for rows until the writer fails
    fill = os.path.join(mnt, "fill")
    fd = os.open(fill, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for blk in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * blk)
            except OSError:
                pass
    finally:
        os.close(fd)

    def unready():
        try:
            al.raw(closed_request(port, "/" + "f" * 1500), timeout=5)
        except (OSError, TestFailure):
            pass
        st, doc = readyz(al)
        return (st, doc) if st != 200 else None
    st, doc = wait_until(unready, 20, "/readyz to report the full disk")
    eq(st, 503, "/readyz status on a full disk")
    eq(doc.get("ready"), False, "/readyz ready on a full disk")
    eq(doc.get("reason"), "audit_unavailable", "/readyz reason on a full disk (%r)" % doc)
    check(isinstance(doc.get("detail"), str) and doc["detail"],
          "/readyz on a full disk has no detail: %r" % doc)
    st, body = get(al, "/healthz")
    eq(st, 200, "/healthz while the audit writer fails (liveness)")
    eq(altest.Metrics(get(al, "/metrics")[1].decode()).need("airlock_audit_healthy"), 0,
       "airlock_audit_healthy on a full disk")
    # room again: the writer recovers by itself and /readyz follows
    os.unlink(fill)

    def ready():
        try:
            al.raw(closed_request(port), timeout=5)
        except (OSError, TestFailure):
            pass
        return readyz(al)[0] == 200
    wait_until(ready, 20, "/readyz 200 after the disk has room again", interval=0.2)
    eq(readyz(al), (200, {"ready": True}), "/readyz after recovery")


@test
def test_readyz_draining(t):
    up = t.upstream()
    al = start(t, limits={"drain_timeout_s": 5})
    eq(readyz(al), (200, {"ready": True}), "/readyz while serving")
    eq(al.metrics().need("airlock_ready"), 1, "airlock_ready while serving")
    eq(get(al, "/healthz")[0], 200, "/healthz while serving")
    out = os.path.join(t.tmp, "slow.body")
    p = t.popen(altest.curl_popen(["-x", al.proxy, url(up, "/slow/200000?rate=40000")], out,
                                  timeout=30))
    wait_until(lambda: al.metrics().get("airlock_connections_open") == 1, 10,
               "the slow request in progress")
    al.signal(signal.SIGTERM)

    def draining():
        try:
            st, doc = readyz(al)
        except OSError as e:
            raise TestFailure("admin listener gone while draining: %s" % e)
        return (st, doc) if st != 200 else None
    st, doc = wait_until(draining, 5, "/readyz to report draining")
    eq(st, 503, "/readyz status while draining")
    eq(al.metrics().need("airlock_ready"), 0, "airlock_ready while draining")
    eq(doc.get("reason"), "draining", "/readyz reason while draining (%r)" % doc)
    eq(get(al, "/healthz")[0], 200, "/healthz while draining")
    check(al.alive(), "airlock exited while a request was in progress")
    check(p.wait(20) == 0, "the slow request did not complete during the drain: rc %s" %
          p.returncode)
    check(al.wait(10) == 0, "airlock did not exit 0 after the drain (rc %s)" % al.exit_rc)


@test
def test_sd_notify(t):
    path = os.path.join(t.tmp, "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    t.defer(s.close)
    s.bind(path)
    s.settimeout(10)
    al = start(t, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "300000"})
    seen = []

    def until(word, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                d = s.recv(4096).decode()
            except socket.timeout:
                break
            seen.append(d)
            if word in d.split("\n"):
                return d
        raise TestFailure("no %s from airlock within %ds (got %r)" % (word, timeout, seen))
    until("READY=1")
    # READY=1 means serving: the listener answers now
    up = t.upstream()
    eq(al.curl([url(up, "/bytes/10")]).status, 200, "request after READY=1")
    until("WATCHDOG=1", 3)
    al.signal(signal.SIGHUP)
    d = until("RELOADING=1")
    check(re.search(r"^MONOTONIC_USEC=\d+$", d, re.M), "RELOADING=1 without MONOTONIC_USEC: %r" % d)
    until("READY=1")
    al.signal(signal.SIGTERM)
    until("STOPPING=1")
    check(al.wait(10) == 0, "airlock did not exit 0 (rc %s)" % al.exit_rc)
    check(not any("READY=1" in d.split("\n") for d in seen[seen.index(next(
        d for d in seen if "STOPPING=1" in d.split("\n"))):]),
        "READY=1 after STOPPING=1: %r" % seen)


@test
def test_sd_notify_abstract_socket(t):
    name = "airlock-ops-test-%d" % os.getpid()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    t.defer(s.close)
    s.bind("\0" + name)
    s.settimeout(10)
    al = start(t, env={"NOTIFY_SOCKET": "@" + name})
    d = s.recv(4096).decode()
    check("READY=1" in d.split("\n"), "first datagram on the abstract socket: %r" % d)
    al.signal(signal.SIGTERM)
    d = s.recv(4096).decode()
    check("STOPPING=1" in d.split("\n"), "datagram at SIGTERM: %r" % d)


# ---------------------------------------------------------------------------
# metrics


def promtool(text, what):
    if shutil.which("promtool") is None:
        raise TestFailure("promtool not installed (Debian package prometheus; `make test` "
                          "installs it)")
    p = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    check(p.returncode == 0, "promtool check metrics (%s) failed:\n%s" %
          (what, p.stdout.decode("utf-8", "replace")[:3000]))


def hist_count(m, name, labels=None):
    return m.get(name + "_count", labels) or 0.0


@test
def test_metrics_promtool_and_histograms(t):
    aca = os.path.join(t.tmp, "aca")
    p = subprocess.run([altest.RUN.airlock_bin, "ca", "init", "--dir", aca],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    check(p.returncode == 0, "airlock ca init: %r" % p.stdout)
    up = t.upstream()
    tup = t.upstream(tls=True)
    al = start(t, workers=1, config={"ca": {"dir": aca}, "upstream_ca": altest.RUN.ca_pem})
    m0 = al.metrics()
    promtool(m0.text, "at start")
    for name in ("airlock_build_info", "process_open_fds", "process_resident_memory_bytes",
                 "process_start_time_seconds",
                 "airlock_config_last_reload_success_timestamp_seconds"):
        check(m0.has(name), "%s missing from /metrics" % name)
    bi = [ls for n, ls, _ in m0.series if n == "airlock_build_info"]
    check(len(bi) == 1 and set(bi[0]) == {"version", "commit", "openssl"} and
          bi[0]["version"] and re.match(r"\d+\.\d+", bi[0]["openssl"]),
          "airlock_build_info labels: %r" % bi)
    check(m0.need("process_open_fds") >= 5, "process_open_fds %r" % m0.need("process_open_fds"))
    check(m0.need("process_resident_memory_bytes") > 1 << 20, "process_resident_memory_bytes")
    check(abs(m0.need("process_start_time_seconds") - time.time()) < 120,
          "process_start_time_seconds %r is not about now" % m0.need("process_start_time_seconds"))
    families = set(re.findall(r"^# TYPE (\S+) ", m0.text, re.M))
    helps = set(re.findall(r"^# HELP (\S+) ", m0.text, re.M))
    eq(families - helps, set(), "families without # HELP")
    for h in ("airlock_request_duration_seconds", "airlock_upstream_connect_duration_seconds",
              "airlock_tls_handshake_duration_seconds", "airlock_dns_duration_seconds"):
        check(re.search(r"^# TYPE %s histogram$" % h, m0.text, re.M), "%s is not a histogram" % h)

    # traffic: plain, intercepted TLS, denied, and a request full of odd data
    for i in range(3):
        r = al.curl([url(up, "/bytes/1000")])
        eq(r.status, 200, "plain GET %d" % i)
    r = al.curl(["--cacert", os.path.join(aca, "ca.pem"),
                 "https://localhost:%d/bytes/100" % tup.port])
    eq(r.status, 200, "intercepted GET (%r)" % r)
    r = al.curl(["http://denied.test:%d/evilpath-zq9?evilquery-zq9=1" % up.port])
    eq(r.status, 403, "denied GET")
    r = al.raw(b"GET http://upstream.test:%d/bytes/5?zq9-path HTTP/1.1\r\nHost: upstream.test\r\n"
               b"X-Airlock-Tool-Call: evil-zq9\r\nUser-Agent: zq9-agent\r\n\r\n" % up.port)
    eq(r.status, 200, "GET with odd headers")
    m1 = al.metrics()
    promtool(m1.text, "after traffic")
    bad = []
    for name, labels, want in [
            ("airlock_request_duration_seconds", None, 6),
            ("airlock_upstream_connect_duration_seconds", None, 2),
            ("airlock_dns_duration_seconds", None, 2),
            ("airlock_tls_handshake_duration_seconds", {"side": "client"}, 1),
            ("airlock_tls_handshake_duration_seconds", {"side": "upstream"}, 1)]:
        d = hist_count(m1, name, labels) - hist_count(m0, name, labels)
        if d < want:
            bad.append("%s%s count moved by %g, want >= %d" % (name, labels or "", d, want))
        inf = dict(labels or {}, le="+Inf")
        if m1.get(name + "_bucket", inf) != m1.get(name + "_count", labels):
            bad.append("%s: +Inf bucket != count" % name)
    check(not bad, "; ".join(bad))
    check(m1.need("airlock_request_duration_seconds_sum") >
          (m0.get("airlock_request_duration_seconds_sum") or 0), "request duration sum did not grow")
    eq(m1.need("airlock_requests_total", {"decision": "deny", "reason": "host_not_allowed"}), 1,
       "airlock_requests_total{deny, host_not_allowed}")
    check(m1.need("airlock_requests_total", {"decision": "allow", "class": "2xx"}) >= 6,
          "airlock_requests_total{allow, 2xx}")
    check(m1.need("airlock_rule_requests_total", {"rule": "up-rule", "decision": "allow"}) >= 4,
          "airlock_rule_requests_total{up-rule}")
    check(m1.need("airlock_rule_requests_total", {"rule": "tls-rule", "decision": "allow"}) >= 2,
          "airlock_rule_requests_total{tls-rule} (the CONNECT and the inner request)")
    # label values: airlock's vocabulary and policy names only
    for n, ls, _ in m1.series:
        for k, v in ls.items():
            check("zq9" not in v and "denied.test" not in v and "upstream.test" not in v,
                  "request data in a label: %s{%s=%r}" % (n, k, v))
    # a reload moves the reload timestamp
    before = m1.need("airlock_config_last_reload_success_timestamp_seconds")
    time.sleep(0.05)
    req = altest.urllib.request.Request(al.admin + "/reload", data=b"", method="POST")
    with altest.urllib.request.build_opener(
            altest.urllib.request.ProxyHandler({})).open(req, timeout=5) as resp:
        eq(resp.status, 200, "POST /reload")
    m2 = al.metrics()
    check(m2.need("airlock_config_last_reload_success_timestamp_seconds") > before,
          "reload timestamp did not move")
    eq(m2.need("airlock_config_last_reload_successful"), 1, "last reload successful")
    promtool(m2.text, "after a reload")
    check(not any(" access " in ln for ln in log_lines(al)), "an access line without access_log")


# ---------------------------------------------------------------------------
# logs


def log_lines(al):
    return [ln for ln in al.log().split("\n") if ln]


@test
def test_json_logs_parse_and_carry_no_secret(t):
    up = t.upstream()
    al = start(t, config={"secrets": secrets_file(t), "log_format": "json", "access_log": True,
                          "log_level": "debug"})
    r = al.curl(["-H", "X-Api: " + PLACEHOLDER,
                 url(up, "/echo?key=%s&%s=1" % (PLACEHOLDER, QUERY_MARK))])
    eq(r.status, 200, "GET with an injected secret (%r)" % r)
    recs = up.find("/echo")
    check(recs and SECRET in recs[0]["raw_head"],
          "the upstream did not get the secret injected: %r" % (recs[:1],))
    no_secret(r.body, "the response (redacted)")
    r = al.curl(["http://denied.test:%d/x" % up.port])
    eq(r.status, 403, "denied request")
    # a reload that fails, with a key holding a newline: logged as one line
    al.signal(signal.SIGTERM)
    al.wait(10)
    raw = open(al.log_path, "rb").read()
    no_secret(raw, "the log")
    lines = raw.decode("utf-8").split("\n")
    check(lines[-1] == "", "log does not end with a newline")
    access = []
    for ln in lines[:-1]:
        try:
            o = json.loads(ln)
        except ValueError as e:
            raise TestFailure("log line is not JSON (%s): %r" % (e, ln[:300]))
        check(isinstance(o, dict) and set(o) == {"time", "level", "message", "fields"},
              "log object keys: %r" % ln[:300])
        check(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", o["time"]), "time %r" % o["time"])
        check(o["level"] in ("debug", "info", "warn", "error"), "level %r" % o["level"])
        check(isinstance(o["fields"], dict), "fields is not an object: %r" % ln[:300])
        if o["message"] == "access":
            access.append(o["fields"])
    eq(len(access), 2, "access lines (one per request)")
    a = access[0]
    for k in ("sandbox", "session", "tool_call", "method", "host", "port", "path", "decision",
              "rule", "reason", "status", "bytes_up", "bytes_down", "duration_us", "secrets"):
        check(k in a, "access line without %s: %r" % (k, a))
    eq((a["method"], a["host"], a["port"], a["path"], a["decision"], a["rule"], a["status"],
        a["secrets"]), ("GET", "upstream.test", up.port, "/echo", "allow", "up-rule", 200, "tok"),
       "access line fields")
    check(a["bytes_down"] > 0 and a["duration_us"] > 0, "bytes/duration: %r" % a)
    eq((access[1]["decision"], access[1]["reason"], access[1]["status"], access[1]["rule"]),
       ("deny", "host_not_allowed", 403, "default"), "denied request's access line")
    check(QUERY_MARK.encode() not in b"".join(json.dumps(x).encode() for x in access),
          "an access line carries the query")


def parse_kv(s):
    """key=value and key="quoted \\" value" pairs of a text log line."""
    out = {}
    for m in re.finditer(r'(\w+)=("((?:[^"\\]|\\.)*)"|\S*)', s):
        out[m.group(1)] = m.group(3) if m.group(3) is not None else m.group(2)
    return out


@test
def test_access_log_text(t):
    up = t.upstream()
    # access lines do not depend on log_level (only "off" silences them)
    al = start(t, config={"secrets": secrets_file(t), "access_log": True, "log_level": "warn",
                          "sandboxes": [{"name": "dev", "cidrs": ["127.0.0.0/8"]}]})
    r = al.curl(["-H", "X-Airlock-Session: sess-1", "-H", "X-Airlock-Tool-Call: toolu_ops1",
                 url(up, "/echo?key=%s&%s=1" % (PLACEHOLDER, QUERY_MARK))])
    eq(r.status, 200, "GET (%r)" % r)
    r = al.curl(["-X", "POST", "--data-binary", "hello", url(up, "/upload?%s" % QUERY_MARK)])
    eq(r.status, 200, "POST")
    r = al.curl([url(up, "/x", host="denied.test")])
    eq(r.status, 403, "denied")

    def acc():
        ls = [ln for ln in log_lines(al) if re.search(r" info  access ", ln)]
        return ls if len(ls) >= 3 else None
    lines = wait_until(acc, 5, "three access lines")
    eq(len(lines), 3, "access lines")
    raw = al.log().encode()
    no_secret(raw, "the log")
    for ln in lines:
        check(QUERY_MARK not in ln and PLACEHOLDER not in ln, "access line with the query: %r" % ln)
    a = parse_kv(lines[0])
    want = {"sandbox": "dev", "session": "sess-1", "tool_call": "toolu_ops1", "method": "GET",
            "host": "upstream.test", "port": str(up.port), "path": "/echo", "decision": "allow",
            "rule": "up-rule", "reason": "allowed_by_rule", "status": "200", "secrets": "tok"}
    eq({k: a.get(k) for k in want}, want, "access line fields (%r)" % lines[0])
    check(int(a["bytes_down"]) > 0 and int(a["duration_us"]) > 0, "bytes/duration: %r" % a)
    b = parse_kv(lines[1])
    eq((b.get("method"), b.get("path"), b.get("status")), ("POST", "/upload", "200"), "POST line")
    check(int(b["bytes_up"]) >= 5, "POST bytes_up %r" % b.get("bytes_up"))
    c = parse_kv(lines[2])
    eq((c.get("decision"), c.get("reason"), c.get("status"), c.get("host")),
       ("deny", "host_not_allowed", "403", "denied.test"), "denied line")


def _control_chars(t, fmt):
    al = start(t, config={"log_format": fmt} if fmt != "text" else None)  # text: the default
    # signals are handled once the start is complete
    wait_until(lambda: "listening on" in al.log(), 10, "the start to complete")
    # a config whose unknown key holds a newline and an ESC: the reload's
    # error message names it
    with open(al.cfg_path) as fh:
        cfg = json.load(fh)
    cfg["bad\nkey\x1b[31mred"] = 1
    with open(al.cfg_path, "w") as fh:
        json.dump(cfg, fh)
    al.signal(signal.SIGHUP)
    wait_until(lambda: "reload failed" in al.log(), 5, "the failed reload's log line")
    raw = open(al.log_path, "rb").read()
    check(b"\x1b" not in raw, "a raw ESC byte in the log")
    line = [ln for ln in raw.decode().split("\n") if "reload failed" in ln]
    eq(len(line), 1, "lines saying reload failed")
    line = line[0]
    check("?" not in line.replace("?query", ""), "a '?' replaced a character: %r" % line)
    return al, line


@test
def test_log_control_chars_escaped_text(t):
    al, line = _control_chars(t, "text")
    check("bad\\nkey\\x1b[31mred" in line, "escaped key not in the line: %r" % line)
    check("\\n" in line.split("reload failed", 1)[1], "the message's newline is not \\n: %r" % line)


@test
def test_log_control_chars_escaped_json(t):
    al, line = _control_chars(t, "json")
    o = json.loads(line)
    check("bad\nkey\x1b[31mred" in o["message"], "the decoded message lost the key: %r" % o)
    check("\\u001b" in line and "bad\\nkey" in line, "JSON escapes: %r" % line)
    for ln in log_lines(al):
        json.loads(ln)


@test
def test_config_log_keys_checked(t):
    d = os.path.join(t.tmp, "cfg")
    os.makedirs(d)
    with open(os.path.join(d, "policy.json"), "w") as fh:
        json.dump(POLICY, fh)
    for keys, rc, msg in (({"log_format": "json", "access_log": True}, 0, "ok"),
                          ({"log_format": "text", "access_log": False}, 0, "ok"),
                          ({"log_format": "xml"}, 2, 'log_format: expected "text" or "json"'),
                          ({"access_log": "yes"}, 2, "access_log: expected true or false")):
        cfg = dict({"policy": "policy.json", "audit": {"db": None}}, **keys)
        path = os.path.join(d, "airlock.json")
        with open(path, "w") as fh:
            json.dump(cfg, fh)
        p = subprocess.run([altest.RUN.airlock_bin, "check", "--config", path],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        eq(p.returncode, rc, "check with %r (%r)" % (keys, p.stdout))
        check(msg in p.stdout.decode(), "check with %r says %r: %r" % (keys, msg, p.stdout))


if __name__ == "__main__":
    sys.exit(altest.main())
