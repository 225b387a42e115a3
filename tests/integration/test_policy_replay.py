#!/usr/bin/env python3
"""`airlock policy replay` (issue 17): real traffic recorded by a real airlock
(allowed, denied, dry-run, an intercepted tunnel and its inner request, an
opaque tunnel, a guard refusal, two sandboxes), then replayed under the same,
a stricter and a looser policy.

    python3 tests/integration/test_policy_replay.py --airlock build/proxy/airlock [-k NAME]

Every name is pinned with the config's "resolve" map (meta.test to
169.254.169.254, which the guard refuses before connecting); nothing leaves
127.0.0.1.
"""

import csv
import hashlib
import io
import json
import os
import re
import sqlite3
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import altest  # noqa: E402
from altest import check, eq, test  # noqa: E402

TOK_A = "tok-a-0123456789"
TOK_B = "tok-b-9876543210"
LOOP = ["127.0.0.1/32"]
RESOLVE = {"upstream.test": "127.0.0.1", "other.test": "127.0.0.1", "tun.test": "127.0.0.1",
           "meta.test": "169.254.169.254"}


def tok_hash(tok):
    return hashlib.sha256(tok.encode()).hexdigest()


def rule(name, hosts, **kw):
    r = {"name": name, "hosts": hosts}
    r.update(kw)
    return r


BASE_RULES = [
    rule("stage-delete", ["upstream.test"], methods=["DELETE"], action="deny", mode="dry-run"),
    rule("up", ["upstream.test"], cidrs=LOOP, intercept=True),
    rule("other-a", ["other.test"], sandboxes=["a"], cidrs=LOOP),
    rule("tun", ["tun.test"], cidrs=LOOP),
    rule("meta", ["meta.test"]),
    rule("block", ["blocked.test"], action="deny"),
]


def policy(rules):
    return {"default": "deny", "rules": rules}


def cli(t, *args, timeout=60):
    p = subprocess.run([altest.RUN.airlock_bin] + list(args), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout, cwd=t.tmp)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def write(t, name, obj):
    path = os.path.join(t.tmp, name)
    with open(path, "w") as fh:
        fh.write(obj if isinstance(obj, str) else json.dumps(obj, indent=1))
    return path


def record(t):
    """Runs real traffic through an airlock under BASE_RULES, stops it (every
    row committed) and returns it."""
    cadir = os.path.join(t.tmp, "interception-ca")
    p = subprocess.run([t.run.airlock_bin, "ca", "init", "--dir", cadir],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    eq(p.returncode, 0, "airlock ca init (%s)" % p.stdout.decode().strip())
    up = t.upstream()
    tup = t.upstream(tls=True)
    cfg = {"sandboxes": [{"name": "a", "token_sha256": tok_hash(TOK_A)},
                         {"name": "b", "token_sha256": tok_hash(TOK_B)}],
           "ca": {"dir": cadir}, "upstream_ca": t.run.ca_pem, "resolve": dict(RESOLVE),
           "audit": {"db": "audit.db", "flush_ms": 20}}
    al = t.airlock(config=cfg, policy=policy(BASE_RULES))
    ua, ub = ["-U", "a:" + TOK_A], ["-U", "b:" + TOK_B]

    def get(user, url, status, *extra):
        r = al.curl(user + list(extra) + [url])
        eq(r.status, status, "%s %s (%r)" % (" ".join(extra), url, r))

    u = "http://upstream.test:%d" % up.port
    get(ua, u + "/bytes/10", 200)
    get(ub, u + "/bytes/11", 200)
    get(ua, u + "/echo/del", 200, "-X", "DELETE")  # staged deny: would_deny, let through
    get(ua, "http://other.test:%d/echo/o" % up.port, 200)
    get(ub, "http://other.test:%d/echo/o" % up.port, 403)  # sandbox_not_allowed
    get(ua, "http://nowhere.test:%d/x" % up.port, 403)  # host_not_allowed
    get(ua, "http://meta.test:%d/latest/meta-data" % up.port, 403)  # address_not_allowed
    get(ua, "http://blocked.test:%d/b" % up.port, 403)  # denied_by_rule
    # intercepted: the CONNECT and the inner request, each its own row
    get(ua, "https://upstream.test:%d/echo/mitm" % tup.port, 200,
        "--cacert", os.path.join(cadir, "ca.pem"))
    # an opaque tunnel carrying plain HTTP
    c = al.conn()
    c.send(b"CONNECT tun.test:%d HTTP/1.1\r\nHost: tun.test:%d\r\n"
           b"Proxy-Authorization: Basic %s\r\n\r\n" %
           (up.port, up.port, __import__("base64").b64encode(("b:" + TOK_B).encode())))
    r = c.read_response("CONNECT")
    eq(r.status, 200, "CONNECT tun.test")
    c.send(b"GET /bytes/5 HTTP/1.1\r\nHost: tun.test\r\nConnection: close\r\n\r\n")
    r = c.read_response()
    eq(r.status, 200, "GET through the opaque tunnel")
    c.close()
    altest.wait_until(lambda: len(rows(al)) >= 11, 10, "11 audit rows")
    problem = al.stop()
    check(problem is None, "airlock stop: %s" % problem)
    return al


def rows(al):
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(al.dir, "audit.db"), uri=True)
    try:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM requests ORDER BY id")]
    finally:
        db.close()


def replay(t, al, pol, *args):
    path = write(t, "candidate.json", pol)
    return cli(t, "policy", "replay", "--config", al.cfg_path, "--policy", path, *args)


def changed_hosts(j, frm, to):
    out = set()
    for tr in j["transitions"]:
        if tr["from"] == frm and tr["to"] == to:
            out |= {g["host"] for g in tr["groups"]}
    return out


def all_transitions(j):
    return {(tr["from"], tr["to"]) for tr in j["transitions"]}


@test
def test_replay(t):
    al = record(t)
    rs = rows(al)
    # the recorded rows hold what the replay needs (schema v4)
    by = {(r["method"], r["host"], r["path"]): r for r in rs}
    meta = [r for r in rs if r["host"] == "meta.test"]
    check(meta and meta[0]["reason"] == "address_not_allowed" and
          meta[0]["addr"].startswith("169.254.169.254:"), "guard refusal row: %r" % meta)
    inner = [r for r in rs if r["scheme"] == "https"]
    check(inner and inner[0]["sni"] == "upstream.test" and inner[0]["addr"].startswith("127.0.0.1:"),
          "inner request row (sni, addr): %r" % inner)
    check(("DELETE", "upstream.test", "/echo/del") in by and
          by[("DELETE", "upstream.test", "/echo/del")]["decision"] == "would_deny",
          "staged DELETE row: %r" % rs)
    decisions = sorted(r["decision"] for r in rs)
    check("allow" in decisions and "deny" in decisions and "would_deny" in decisions,
          "decisions recorded: %r" % decisions)
    check({r["sandbox"] for r in rs} == {"a", "b"}, "sandboxes: %r" % {r["sandbox"] for r in rs})
    check(any(r["scheme"] == "connect" and r["host"] == "tun.test" for r in rs), "tunnel row")

    # 1. the same policy: nothing changes, every row replayed
    rc, out, err = replay(t, al, policy(BASE_RULES), "--format", "json")
    eq(rc, 0, "same policy exit (out %r err %r)" % (out, err))
    j = json.loads(out)
    eq(j["changed"], 0, "same policy: changed")
    eq(j["transitions"], [], "same policy: transitions")
    eq(j["replayed"], len(rs), "same policy: every row replayed (%r)" % j)
    eq(j["lacked_input"]["rows"], 0, "v4 rows lack nothing")
    eq(j["schema_version"], 5, "schema version")
    rc, out, err = replay(t, al, policy(BASE_RULES))
    eq(rc, 0, "same policy, table exit")
    check("changed:    0" in out and "\u2192" not in out, "same policy table: %r" % out)

    # 2. stricter: other.test and tun.test no longer allowed; DELETE enforced
    strict = [r for r in BASE_RULES if r["name"] not in ("other-a", "tun", "stage-delete")]
    strict.insert(0, rule("no-delete", ["upstream.test"], methods=["DELETE"], action="deny"))
    rc, out, err = replay(t, al, policy(strict), "--format", "json")
    eq(rc, 3, "stricter exit (out %r err %r)" % (out, err))
    j = json.loads(out)
    eq(changed_hosts(j, "allow", "deny"), {"other.test", "tun.test"}, "stricter allow->deny hosts")
    eq(changed_hosts(j, "would_deny", "deny"), {"upstream.test"}, "stricter would_deny->deny")
    eq(all_transitions(j), {("allow", "deny"), ("would_deny", "deny")}, "stricter transitions")
    g = [g for tr in j["transitions"] for g in tr["groups"] if g["host"] == "tun.test"][0]
    eq((g["rule_was"], g["rule"], g["reason"], g["count"]), ("tun", "default", "host_not_allowed", 1),
       "tun.test group")
    check(g["first"].endswith("Z") and g["examples"], "group time/examples: %r" % g)
    rc, out, err = replay(t, al, policy(strict))
    eq(rc, 3, "stricter table exit")
    check("allow \u2192 deny: 2 requests" in out and "other.test" in out and "tun.test" in out,
          "stricter table: %r" % out)
    check("/echo/o" in out, "stricter table lists an example path: %r" % out)

    # the tunnel first: an inner request of an intercepted tunnel is decided
    # as its CONNECT when the tunnel is refused, or no longer intercepted
    no_tunnel = [rule("no-tunnel", ["upstream.test"], methods=["CONNECT"], action="deny")]
    rc, out, err = replay(t, al, policy(no_tunnel + BASE_RULES), "--format", "json")
    eq(rc, 3, "tunnel refused exit (%r)" % err)
    j = json.loads(out)
    g = [g for tr in j["transitions"] for g in tr["groups"]]
    eq([(x["host"], x["rule"], x["count"]) for x in g], [("upstream.test", "no-tunnel", 2)],
       "the CONNECT and its inner request, both refused (%r)" % g)
    opaque = [dict(r, intercept=False) if r["name"] == "up" else r for r in BASE_RULES]
    rc, out, err = replay(t, al, policy(opaque), "--format", "json")
    j = json.loads(out)
    eq((rc, j["opaque"], j["changed"]), (0, 1, 0), "not intercepted: the inner request unseen")

    # 3. looser: other.test for every sandbox, blocked.test allowed, meta.test
    # within its cidrs (the guard's address comes from the row)
    loose = [r for r in BASE_RULES if r["name"] not in ("other-a", "block", "meta")]
    loose += [rule("other", ["other.test"], cidrs=LOOP), rule("blk", ["blocked.test"]),
              rule("meta", ["meta.test"], cidrs=["169.254.169.254/32"])]
    rc, out, err = replay(t, al, policy(loose), "--format", "json")
    eq(rc, 3, "looser exit (out %r err %r)" % (out, err))
    j = json.loads(out)
    eq(changed_hosts(j, "deny", "allow"), {"other.test", "blocked.test", "meta.test"},
       "looser deny->allow hosts")
    eq(all_transitions(j), {("deny", "allow")}, "looser transitions")
    # blocked.test and b's other.test were denied before any lookup: decided
    # without an address for the guard (and said so)
    eq(j["lacked_input"]["addr"], 2, "looser: rows without the guard's address")

    # --dry-run decides as `airlock run --dry-run`: policy denies become
    # would_deny, the guard's refusal stays a deny
    rc, out, err = replay(t, al, policy(BASE_RULES), "--format", "json", "--dry-run")
    eq(rc, 3, "--dry-run exit (%r)" % err)
    j = json.loads(out)
    eq(all_transitions(j), {("deny", "would_deny")}, "--dry-run transitions")
    eq(changed_hosts(j, "deny", "would_deny"), {"other.test", "nowhere.test", "blocked.test"},
       "--dry-run hosts (meta.test's guard refusal stays)")

    # csv
    rc, out, err = replay(t, al, policy(loose), "--format", "csv")
    eq(rc, 3, "csv exit")
    recs = list(csv.DictReader(io.StringIO(out)))
    eq({r["host"] for r in recs}, {"other.test", "blocked.test", "meta.test"}, "csv hosts")
    check(all(r["from"] == "deny" and r["to"] == "allow" and int(r["count"]) >= 1 for r in recs),
          "csv rows: %r" % recs)

    # filters: --sandbox, --host, --limit
    rc, out, err = replay(t, al, policy(strict), "--format", "json", "--sandbox", "b")
    eq(rc, 3, "--sandbox b exit")
    eq(changed_hosts(json.loads(out), "allow", "deny"), {"tun.test"}, "--sandbox b hosts")
    rc, out, err = replay(t, al, policy(strict), "--format", "json", "--host", "other.*")
    eq(changed_hosts(json.loads(out), "allow", "deny"), {"other.test"}, "--host glob")
    rc, out, err = replay(t, al, policy(strict), "--format", "json", "--limit", "1")
    eq(json.loads(out)["rows"], 1, "--limit 1")
    rc, out, err = replay(t, al, policy(strict), "--format", "json", "--since", "2000-01-01",
                          "--until", "2000-01-02")
    eq((rc, json.loads(out)["rows"]), (0, 0), "an empty window")


@test
def test_replay_bad_input(t):
    cfg = write(t, "airlock.json", {"listen": [{"addr": "127.0.0.1:%d" % altest.free_port(),
                                               "mode": "forward"}],
                                   "policy": "policy.json", "audit": {"db": "none.db"}})
    write(t, "policy.json", policy([]))
    bad = write(t, "bad.json", '{"rules": [\n  {"name": "x", "hosts": ["a.test"],}\n]}\n')
    rc, out, err = cli(t, "policy", "replay", "--config", cfg, "--policy", bad)
    eq(rc, 2, "syntax error exit (out %r err %r)" % (out, err))
    check("bad.json:2:" in err, "error names file:line:col: %r" % err)
    unknown = write(t, "unk.json", policy([rule("x", ["a.test"], bogus=1)]))
    rc, out, err = cli(t, "policy", "replay", "--config", cfg, "--policy", unknown)
    eq(rc, 2, "invalid policy exit (%r)" % err)
    good = write(t, "good.json", policy([]))
    for args in (["--format", "yaml"], ["--since", "yesterday"], ["--limit", "0"], ["--bogus", "1"]):
        rc, out, err = cli(t, "policy", "replay", "--config", cfg, "--policy", good, *args)
        eq(rc, 2, "%r exit (err %r)" % (args, err))
    rc, out, err = cli(t, "policy", "replay", "--config", cfg, "--policy", good)
    eq(rc, 1, "a missing database is a runtime failure (err %r)" % err)
    check("none.db" in err, "names the database: %r" % err)


@test
def test_policy_check_https_decides_the_connect(t):
    """`policy check METHOD https://...` decides what the daemon decides: the
    client's CONNECT first, the inner request only when intercepted. A rule
    with "methods": ["GET"] and no intercept refuses the CONNECT
    (method_not_allowed), in the CLI as on the wire."""
    up = t.upstream(tls=True)
    pol = policy([rule("pypi", ["pypi.test"], methods=["GET"], cidrs=LOOP),
                  rule("mitm", ["mitm.test"], methods=["GET"], paths=["/simple/**"], cidrs=LOOP,
                       intercept=True),
                  rule("plain", ["plain.test"], cidrs=LOOP)])
    al = t.airlock(config={"resolve": {"pypi.test": "127.0.0.1"}}, policy=pol)
    r = al.curl(["--cacert", t.ca, "https://pypi.test:%d/simple/" % up.port])
    check(r.status == 403 or "403" in r.stderr, "daemon: CONNECT under a GET-only rule: %r" % r)
    check("method_not_allowed" in al.log(), "daemon refuses the CONNECT method_not_allowed")
    cfg = al.cfg_path

    rc, out, err = cli(t, "policy", "check", "--config", cfg, "--no-resolve", "--json",
                       "GET", "https://pypi.test:8443/simple/")
    eq(rc, 3, "GET https under a GET-only, non-intercepting rule (out %r err %r)" % (out, err))
    j = json.loads(out)
    eq((j["decision"], j["reason"], j["tunnel"]), ("deny", "method_not_allowed", "refused"),
       "https GET-only decision")
    eq(j["connect"]["decision"], "deny", "connect decision")
    rc, out, err = cli(t, "policy", "check", "--config", cfg, "--no-resolve",
                       "GET", "https://pypi.test:8443/simple/")
    eq(rc, 3, "text exit")
    check("CONNECT pypi.test:8443" in out and "method_not_allowed" in out, "text: %r" % out)
    # the same URL over http is a plain request: GET allowed
    rc, out, err = cli(t, "policy", "check", "--config", cfg, "--no-resolve",
                       "GET", "http://pypi.test:8443/simple/")
    eq(rc, 0, "http GET under the GET-only rule")
    # intercepted: the CONNECT passes, the inner request is decided
    rc, out, err = cli(t, "policy", "check", "--config", cfg, "--no-resolve", "--json",
                       "GET", "https://mitm.test/simple/x")
    eq(rc, 0, "intercepted GET in /simple/ (out %r)" % out)
    j = json.loads(out)
    eq((j["decision"], j["tunnel"], j["connect"]["decision"]), ("allow", "intercepted", "allow"),
       "intercepted allow")
    rc, out, err = cli(t, "policy", "check", "--config", cfg, "--no-resolve", "--json",
                       "POST", "https://mitm.test/simple/x")
    eq(rc, 3, "intercepted POST")
    j = json.loads(out)
    eq((j["reason"], j["tunnel"]), ("method_not_allowed", "intercepted"), "inner POST refused")
    rc, out, err = cli(t, "policy", "check", "--config", cfg, "--no-resolve", "--json",
                       "GET", "https://mitm.test/other")
    eq((rc, json.loads(out)["reason"]), (3, "path_not_allowed"), "inner path refused")
    # opaque: the CONNECT's decision stands, and the output says the request is unseen
    rc, out, err = cli(t, "policy", "check", "--config", cfg, "--no-resolve",
                       "DELETE", "https://plain.test/anything")
    eq(rc, 0, "opaque tunnel exit (%r)" % out)
    check("opaque" in out and "not checked" in out, "opaque tunnel said so: %r" % out)


# ---------------------------------------------------------------------------
# policy lint


def lint_conf(t, pol, secrets=None, sandboxes=("ci",)):
    d = os.path.join(t.tmp, "lint")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "policy.json"), "w") as fh:
        fh.write(pol if isinstance(pol, str) else json.dumps(pol, indent=1))
    cfg = {"listen": [{"addr": "127.0.0.1:%d" % altest.free_port(), "mode": "forward"}],
           "policy": "policy.json", "sandboxes": [{"name": s, "cidrs": ["127.0.0.0/8"]}
                                                  for s in sandboxes]}
    if secrets is not None:
        with open(os.path.join(d, "secrets.json"), "w") as fh:
            json.dump({"secrets": secrets}, fh)
        cfg["secrets"] = "secrets.json"
    path = os.path.join(d, "airlock.json")
    with open(path, "w") as fh:
        json.dump(cfg, fh, indent=1)
    return path


@test
def test_lint_cli(t):
    etc = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "etc")
    rc, out, err = cli(t, "policy", "lint", "--config", os.path.join(etc, "airlock.json"))
    eq(rc, 0, "the shipped etc/ policy lints clean of errors (out %r err %r)" % (out, err))
    check("0 errors" in out or "no findings" in out, "summary line: %r" % out)
    # the design's example (sandboxes, an injected secret, a staged rule)
    rc, out, err = cli(t, "policy", "lint", "--config", os.path.join(etc, "airlock.example.json"))
    eq(rc, 0, "the example policy lints (out %r err %r)" % (out, err))
    check("no findings" in out, "the example policy has findings: %r" % out)
    # a clean policy: exit 0, one summary line
    clean = policy([rule("gh", ["api.gh.test"], ports=[443], methods=["GET"], paths=["/repos/**"],
                         intercept=True, sandboxes=["ci"], inject=["gh"])])
    secrets = {"gh": {"from": {"value": "ghp_0123456789abcdef"}, "hosts": ["api.gh.test"],
                      "placeholder": "AIRLOCK_PLACEHOLDER_GH_0123456789abcdef",
                      "header": {"name": "Authorization", "format": "Bearer {}"}}}
    c = lint_conf(t, clean, secrets)
    rc, out, err = cli(t, "policy", "lint", "--config", c)
    eq((rc, out.count("\n")), (0, 1), "clean policy (out %r err %r)" % (out, err))
    check("no findings" in out, "clean summary: %r" % out)
    # secret warnings (scopes read from the secrets file): exit 0
    sec2 = dict(secrets)
    # a value lint cannot read (an unset variable): lint needs names and scopes only
    sec2["lonely"] = {"from": {"env": "AIRLOCK_TEST_LINT_UNSET"}, "hosts": ["lonely.test:443/v1/"],
                      "placeholder": "AIRLOCK_PLACEHOLDER_LONELY_0123456789"}
    wild = policy(clean["rules"] + [rule("wild", ["*.gh.test"], ports=[443], intercept=True)])
    c = lint_conf(t, wild, sec2)
    rc, out, err = cli(t, "policy", "lint", "--config", c, "--format", "json")
    eq(rc, 0, "secret warnings exit (out %r err %r)" % (out, err))
    codes = sorted((f["code"], f.get("rule", "")) for f in json.loads(out)["findings"])
    eq(codes, [("secret_unreachable", ""), ("wildcard_wider", "wild")], "secret warnings")
    check("lonely" in out, "names the unreachable secret: %r" % out)
    # every error kind at once, with file:line:col and both rules named
    bad = policy([rule("wide", ["*.gh.test"], ports=[443], intercept=True),
                  rule("narrow", ["api.gh.test"], ports=[443], intercept=True),
                  rule("dup1", ["d.test"], ports=[80]), rule("dup2", ["d.test"], ports=[80]),
                  rule("get-only", ["pypi.test"], methods=["GET"]),
                  rule("who", ["w.test"], ports=[443], sandboxes=["prod"]),
                  rule("leak", ["api.other.test"], ports=[443], intercept=True, inject=["gh"])])
    c = lint_conf(t, bad, secrets)
    rc, out, err = cli(t, "policy", "lint", "--config", c)
    eq(rc, 3, "errors exit (out %r err %r)" % (out, err))
    for code, frag in (("shadowed", 'earlier rule "wide" (rules[0])'),
                       ("duplicate", 'duplicates earlier rule "dup1"'),
                       ("tls_unseen", "get-only"), ("unknown_sandbox", '"prod"'),
                       ("inject_out_of_scope", "api.other.test")):
        line = [x for x in out.splitlines() if x.endswith("[%s]" % code)]
        check(line and frag in line[0] and re.match(r".*policy\.json:\d+:\d+: error: rules\[\d+\]",
                                                    line[0]),
              "%s finding (%r) in %r" % (code, frag, out))
    rc, out, err = cli(t, "policy", "lint", "--config", c, "--format", "json")
    eq(rc, 3, "json exit")
    j = json.loads(out)
    eq(j["errors"], 5, "json error count: %r" % j)
    check(all(f["line"] > 0 for f in j["findings"] if "rule" in f), "json lines: %r" % j)
    # --policy replaces the config's; a broken one is bad input with file:line:col
    bad_json = write(t, "broken.json", '{"rules": [\n  {"name": "x"\n')
    rc, out, err = cli(t, "policy", "lint", "--config", c, "--policy", bad_json)
    eq(rc, 2, "broken policy exit (%r)" % err)
    check("broken.json:" in err, "location: %r" % err)
    rc, out, err = cli(t, "policy", "lint", "--config", c, "--policy",
                       write(t, "p2.json", clean))
    eq(rc, 0, "--policy clean (%r)" % out)


@test
def test_lint_db(t):
    """--db: rules no request of the window matched, and the most denied
    hosts, from traffic a real airlock recorded."""
    al = record(t)
    rules = BASE_RULES + [rule("never", ["never.test"], ports=[443])]
    path = write(t, "lint.json", policy(rules))
    rc, out, err = cli(t, "policy", "lint", "--config", al.cfg_path, "--policy", path,
                       "--db", os.path.join(al.dir, "audit.db"), "--format", "json")
    eq(rc, 3, "lint --db exit (out %r err %r)" % (out, err))
    j = json.loads(out)
    # the staged DELETE rule does not intercept: HTTPS DELETEs never meet it
    eq([(f["code"], f["rule"]) for f in j["findings"] if f["severity"] == "error"],
       [("tls_unseen", "stage-delete")], "errors")
    unused = {f["rule"] for f in j["findings"] if f["code"] == "unused"}
    eq(unused, {"never"}, "unused rules")
    denied = [f["message"] for f in j["findings"] if f["code"] == "top_denied"]
    check(any("nowhere.test" in m for m in denied) and any("blocked.test" in m for m in denied),
          "top denied hosts: %r" % denied)
    check(not [f for f in j["findings"] if f["code"] == "staged_old"], "no staged_old yet")
    # a window after the traffic: the staged rule has recorded would_deny
    # since before it (staged longer than the window), and nothing matched
    rc, out, err = cli(t, "policy", "lint", "--config", al.cfg_path, "--policy", path,
                       "--db", os.path.join(al.dir, "audit.db"), "--since", "2100-01-01",
                       "--format", "json")
    j = json.loads(out)
    eq([f["rule"] for f in j["findings"] if f["code"] == "staged_old"], ["stage-delete"],
       "staged_old (%r)" % j)
    eq(len([f for f in j["findings"] if f["code"] == "unused"]), len(rules), "all unused")


if __name__ == "__main__":
    sys.exit(altest.main())
