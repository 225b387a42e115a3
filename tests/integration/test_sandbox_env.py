"""`airlock sandbox env` (issue 19): one block a sandbox launcher sources -
proxy variables in both cases with the sandbox's credentials and tool-call
tag, NO_PROXY, every runtime's CA trust variable pointing at public files
outside the 0700 key folder, and the placeholders - computed without the
secret values. The sh output is sourced by a real shell as a non-root user
(setpriv --reuid nobody) and used by curl, python urllib and requests (when
installed), over plain http:// and https:// through interception; the audit
rows show each request attributed to the sandbox and its tool call, and no
secret value appears anywhere in the output.

    python3 test_sandbox_env.py --airlock build/proxy/airlock
"""

import functools
import hashlib
import http.server
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading

import altest
from altest import TestFailure, check, eq, test, wait_until

TOKEN = "0123456789abcdef0123456789abcdef"
VAL_ENV = "sk-live-ENVVALUE-7f3a9c2e1b"
VAL_FILE = "sk-live-FILEVALUE-2b8d4e6f0a"
ENV_VAR = "AIRLOCK_T_SANDBOX_SECRET"


def sha(s):
    return hashlib.sha256(s.encode()).hexdigest()


def cli(*args, env=None, timeout=30):
    p = subprocess.run([altest.RUN.airlock_bin] + list(args), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout,
                       env=env if env is not None else clean_env())
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def clean_env():
    """The CLI's environment: no secret value, no proxy variable."""
    env = {k: v for k, v in os.environ.items()
           if k != ENV_VAR and "proxy" not in k.lower() and k != "AIRLOCK_TOKEN"}
    return env


def no_values(*texts):
    for x in texts:
        for v in (VAL_ENV, VAL_FILE):
            check(v not in x, "a secret value in the output: %r" % x[:300])


def rows(al):
    path = os.path.join(al.dir, "audit.db")
    if not os.path.isfile(path):
        return []
    c = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=5)
    c.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in c.execute("SELECT * FROM requests ORDER BY id")]
    finally:
        c.close()


class FileServer:
    """Static files over HTTP or HTTPS (git's dumb protocol reads a bare
    repository's info/refs this way)."""

    def __init__(self, root, ctx=None):
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *a):
                pass
        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Quiet, directory=root))
        if ctx is not None:
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def git_repo(base):
    """A bare repository with one commit on main, served as dumb HTTP."""
    root = os.path.join(base, "git")
    work = os.path.join(base, "gitwork")
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", HOME=base)
    for cmd in (["git", "init", "-q", "--bare", os.path.join(root, "repo.git")],
                ["git", "init", "-q", work],
                ["git", "-C", work, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q",
                 "--allow-empty", "-m", "one"],
                ["git", "-C", work, "push", "-q", os.path.join(root, "repo.git"),
                 "HEAD:refs/heads/main"],
                ["git", "-C", os.path.join(root, "repo.git"), "update-server-info"]):
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, timeout=30)
    return root


def setup(t, public_base=True, git=False):
    """A world-traversable base folder (so `nobody` reaches the public trust
    files and the env file), a CA in base/ca (0700), a secrets file whose
    values only the daemon has, and airlock running on it."""
    base = tempfile.mkdtemp(prefix="airlock-sbenv-")
    t.defer(shutil.rmtree, base, True)
    os.chmod(base, 0o755)
    ca = os.path.join(base, "ca")
    rc, out, err = cli("ca", "init", "--dir", ca)
    eq(rc, 0, "ca init: " + err)
    vfile = os.path.join(base, "value.txt")
    with open(vfile, "w") as fh:
        fh.write(VAL_FILE + "\n")
    os.chmod(vfile, 0o600)
    up = t.upstream()
    ups = t.upstream(tls=True)
    gits = []
    if git:
        root = git_repo(base)
        for ctx in (None, altest.RUN.server_ctx()):
            g = FileServer(root, ctx)
            t.defer(g.stop)
            gits.append(g)
    secrets = {"secrets": {
        "api-env": {"from": {"env": ENV_VAR}, "hosts": ["upstream.test:%d" % ups.port],
                    "header": {"name": "X-Api-Key", "format": "{}"}},
        "file_key": {"from": {"file": vfile}, "hosts": ["upstream.test:%d" % ups.port],
                     "env": "FILE_KEY"},
    }}
    spath = os.path.join(base, "secrets.json")
    with open(spath, "w") as fh:
        json.dump(secrets, fh)
    policy = {"default": "deny", "allow_addresses": ["127.0.0.0/8", "::1/128"],
              "rules": [{"name": "plain-up", "hosts": ["upstream.test"], "ports": [up.port],
                         "action": "allow"},
                        {"name": "tls-up", "hosts": ["upstream.test"], "ports": [ups.port],
                         "action": "allow", "intercept": True}]}
    if gits:
        policy["rules"] += [{"name": "git-plain", "hosts": ["upstream.test"],
                             "ports": [gits[0].port], "action": "allow"},
                            {"name": "git-tls", "hosts": ["upstream.test"],
                             "ports": [gits[1].port], "action": "allow", "intercept": True}]
    cfg = {"secrets": spath, "ca": {"dir": ca}, "upstream_ca": altest.RUN.ca_pem,
           "sandboxes": [{"name": "sb", "token_sha256": sha(TOKEN)},
                         {"name": "local", "cidrs": ["127.0.0.0/8"]}]}
    al = t.airlock(config=cfg, policy=policy, env={ENV_VAR: VAL_ENV})
    if git:
        return base, ca, al, up, ups, gits
    return base, ca, al, up, ups


def parse_sh_exports(out):
    got = {}
    for line in out.splitlines():
        check(line.startswith("export "), "not an export line: %r" % line)
        k, _, v = line[7:].partition("=")
        got[k] = v
    return got


TRUST_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS",
              "GIT_SSL_CAINFO", "PIP_CERT", "AWS_CA_BUNDLE")


@test
def test_sandbox_env_formats(t):
    """Every variable, in sh/json/dotenv; the token from --token-env,
    --token-file or a ${AIRLOCK_TOKEN} reference; public trust files 0644
    outside the key folder; no secret value needed or printed."""
    base, ca, al, up, ups = setup(t)
    rc, out, err = cli("sandbox", "env", "--config", al.cfg_path, "--sandbox", "sb",
                       "--tool-call", "call-1")
    eq(rc, 0, "sandbox env (sh): " + err)
    no_values(out, err)
    ex = parse_sh_exports(out)
    want_url = '"http://sb+call-1:${AIRLOCK_TOKEN:?set AIRLOCK_TOKEN to the sandbox token}' \
               '@127.0.0.1:%d"' % al.port
    for k in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        eq(ex.get(k), want_url, k)
    check("localhost" in ex.get("NO_PROXY", "") and "127.0.0.1" in ex["NO_PROXY"],
          "NO_PROXY: %r" % ex.get("NO_PROXY"))
    eq(ex.get("no_proxy"), ex["NO_PROXY"], "no_proxy")
    eq(ex.get("NODE_USE_ENV_PROXY"), "'1'", "NODE_USE_ENV_PROXY")
    eq(ex.get("GIT_HTTP_PROXY_AUTHMETHOD"), "'basic'", "git sends the credentials at once")
    pub = os.path.join(base, "ca-public")
    for k in TRUST_VARS:
        f = "ca.pem" if k == "NODE_EXTRA_CA_CERTS" else "bundle.pem"
        eq(ex.get(k), "'%s/%s'" % (pub, f), k)
    # placeholders: the same as the daemon's, without the values
    env_with = dict(clean_env(), **{ENV_VAR: VAL_ENV})
    rc2, sout, serr = cli("secrets", "env", "--config", al.cfg_path, env=env_with)
    eq(rc2, 0, "secrets env with the values: " + serr)
    for line in sout.splitlines():
        k, _, v = line.partition("=")
        eq(ex.get(k), "'%s'" % v, "placeholder %s" % k)
    check(set(x.split("=")[0] for x in sout.splitlines()) == {"API_ENV", "FILE_KEY"},
          "secrets env names: %r" % sout)
    # `secrets env` needs no value either (the env var unset, the file unreadable)
    os.chmod(os.path.join(base, "value.txt"), 0o000)
    rc3, sout2, serr2 = cli("secrets", "env", "--config", al.cfg_path)
    eq(rc3, 0, "secrets env without the values: " + serr2)
    eq(sout2, sout, "secrets env without the values")
    no_values(sout2, serr2)
    # the public files: 0644, a folder others may enter, outside the 0700 key folder
    eq(stat.S_IMODE(os.stat(ca).st_mode), 0o700, "CA folder mode")
    eq(stat.S_IMODE(os.stat(pub).st_mode) & 0o755, 0o755, "public folder mode")
    for f in ("ca.pem", "bundle.pem"):
        eq(stat.S_IMODE(os.stat(os.path.join(pub, f)).st_mode), 0o644, f + " mode")
        with open(os.path.join(pub, f)) as fh:
            text = fh.read()
        check("PRIVATE KEY" not in text, "%s holds a key" % f)
    with open(os.path.join(pub, "ca.pem")) as fh:
        eq(fh.read().count("BEGIN CERTIFICATE"), 1, "ca.pem: the CA certificate only")
    check(not os.path.exists(os.path.join(ca, "bundle.pem")), "a bundle in the key folder")
    # json with --token-env: the token percent-encoded into the URL
    env_tok = dict(clean_env(), SB_TOKEN=TOKEN)
    rc, out, err = cli("sandbox", "env", "--config", al.cfg_path, "--sandbox", "sb",
                       "--tool-call", "call-2", "--session", "s1", "--token-env", "SB_TOKEN",
                       "--format", "json", env=env_tok)
    eq(rc, 0, "json: " + err)
    j = json.loads(out)
    eq(j["https_proxy"], "http://sb+s1+call-2:%s@127.0.0.1:%d" % (TOKEN, al.port), "json url")
    eq(j["API_ENV"], ex["API_ENV"].strip("'"), "json placeholder")
    no_values(out, err)
    # dotenv with --token-file
    tf = os.path.join(base, "token")
    with open(tf, "w") as fh:
        fh.write(TOKEN + "\n")
    rc, out, err = cli("sandbox", "env", "--config", al.cfg_path, "--sandbox", "sb",
                       "--token-file", tf, "--format", "dotenv")
    eq(rc, 0, "dotenv: " + err)
    d = dict(line.split("=", 1) for line in out.splitlines())
    eq(d["HTTP_PROXY"], "http://sb:%s@127.0.0.1:%d" % (TOKEN, al.port), "dotenv url")
    eq(d["SSL_CERT_FILE"], os.path.join(pub, "bundle.pem"), "dotenv trust")
    # a CIDR sandbox: no credentials, unless a tag travels (empty password)
    rc, out, err = cli("sandbox", "env", "--config", al.cfg_path, "--sandbox", "local",
                       "--format", "json")
    eq(rc, 0, "cidr sandbox: " + err)
    eq(json.loads(out)["http_proxy"], "http://127.0.0.1:%d" % al.port, "cidr sandbox url")
    check("GIT_HTTP_PROXY_AUTHMETHOD" not in json.loads(out), "no credentials, no auth method")
    rc, out, err = cli("sandbox", "env", "--config", al.cfg_path, "--sandbox", "local",
                       "--tool-call", "t9", "--format", "json", "--proxy-host", "10.0.0.1")
    eq(rc, 0, "cidr sandbox tagged: " + err)
    eq(json.loads(out)["http_proxy"], "http://local+t9:@10.0.0.1:%d" % al.port, "tagged url")
    # refusals: wrong token, json without a token, unknown sandbox, bad tag, --ca-out inside
    for args, env, what in (
            (["--sandbox", "sb", "--token-env", "SB_TOKEN"], dict(clean_env(), SB_TOKEN="nope"),
             "does not match"),
            (["--sandbox", "sb", "--format", "json"], None, "--token-env"),
            (["--sandbox", "ghost"], None, "unknown sandbox"),
            (["--sandbox", "sb", "--tool-call", "a b"], None, "--tool-call"),
            (["--sandbox", "local", "--ca-out", os.path.join(ca, "pub")], None, "must not go"),
            (["--sandbox", "local", "--format", "yaml"], None, "--format"),
            ([], None, "--sandbox S is required")):
        rc, out, err = cli("sandbox", "env", "--config", al.cfg_path, *args, env=env)
        eq(rc, 2, "sandbox env %s: %s" % (args, err))
        check(what in err, "sandbox env %s says %r: %r" % (args, what, err))
        eq(out, "", "no output on a refusal %s" % args)


def run_as_nobody(t, base, script, token):
    path = os.path.join(base, "sandbox.sh")
    with open(path, "w") as fh:
        fh.write(script)
    os.chmod(path, 0o755)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8",
           "AIRLOCK_TOKEN": token}
    p = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                        "bash", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=env, timeout=120, cwd="/")
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


@test
def test_sandbox_env_sourced_by_nobody(t):
    """The sh output sourced by bash as `nobody`: curl, python urllib and
    requests reach plain http:// and https:// (intercepted, secret injected)
    through airlock, attributed to sb/call-7 in the audit trail."""
    if os.geteuid() != 0:
        raise TestFailure("needs root to switch to nobody (setpriv)")
    have_git = shutil.which("git") is not None
    if have_git:
        base, ca, al, up, ups, gits = setup(t, git=True)
    else:
        base, ca, al, up, ups = setup(t)
    rc, out, err = cli("sandbox", "env", "--config", al.cfg_path, "--sandbox", "sb",
                       "--tool-call", "call-7")
    eq(rc, 0, "sandbox env: " + err)
    no_values(out, err)
    envfile = os.path.join(base, "airlock.env")
    with open(envfile, "w") as fh:
        fh.write(out)
    os.chmod(envfile, 0o644)
    # python3-requests (Debian) for the sandbox user's python3, when installed
    have_requests = run_as_nobody(t, base, "python3 -c 'import requests'\n", "")[0] == 0
    http_url = "http://upstream.test:%d/echo/plain" % up.port
    https_url = "https://upstream.test:%d/echo/tls" % ups.port
    # the placeholder goes only where the secret is scoped (https); a plain
    # request carrying it would be refused (secret_out_of_scope)
    py = ("import json, os, sys, urllib.request\n"
          "def get(u, h):\n"
          "    r = urllib.request.Request(u, headers=h)\n"
          "    return urllib.request.urlopen(r, timeout=20).status\n"
          "h = {'X-Api-Key': os.environ['API_ENV']}\n"
          "print('urllib', get(sys.argv[1] + '/urllib', {}), get(sys.argv[2] + '/urllib', h))\n")
    pyr = ("import os, sys, requests\n"
           "h = {'X-Api-Key': os.environ['API_ENV']}\n"
           "a = requests.get(sys.argv[1] + '/requests', timeout=20)\n"
           "b = requests.get(sys.argv[2] + '/requests', headers=h, timeout=20)\n"
           "print('requests', a.status_code, b.status_code)\n")
    script = ("set -eu\n"
              "id -un\n"
              ". %s\n"
              "curl -sS -o /dev/null -w 'curl %%{http_code}\\n' %s/curl\n"
              "curl -sS -o /dev/null -w 'curl %%{http_code}\\n' -H \"X-Api-Key: $API_ENV\" "
              "%s/curl\n"
              "python3 -c %s %s %s\n" % (envfile, http_url, https_url, sh_quote(py), http_url,
                                         https_url))
    if have_requests:
        script += "python3 -c %s %s %s\n" % (sh_quote(pyr), http_url, https_url)
    if have_git:  # git (libcurl): the proxy variables and GIT_SSL_CAINFO
        for g, scheme in zip(gits, ("http", "https")):
            script += ("git ls-remote %s://upstream.test:%d/repo.git | "
                       "sed 's/^[0-9a-f]*\\t/git /'\n" % (scheme, g.port))
    rc, sout, serr = run_as_nobody(t, base, script, TOKEN)
    no_values(sout, serr)
    eq(rc, 0, "the sandbox script failed: %s %s" % (sout, serr))
    lines = sout.splitlines()
    eq(lines[0], "nobody", "ran as")
    eq(lines[1:3], ["curl 200", "curl 200"], "curl statuses")
    eq(lines[3], "urllib 200 200", "urllib statuses")
    if have_requests:
        eq(lines[4], "requests 200 200", "requests statuses")
    if have_git:
        eq(lines[-2:], ["git refs/heads/main", "git refs/heads/main"], "git ls-remote")
        def git_rows():
            rs_ = [r for r in rows(al) if r["path"].startswith("/repo.git/")]
            return rs_ if {r["port"] for r in rs_} >= {g.port for g in gits} else None
        grows = wait_until(git_rows, 10, "git rows on both ports")
        for g in gits:
            mine = [r for r in grows if r["port"] == g.port]
            check(mine and all((r["sandbox"], r["tool_call"], r["status"]) == ("sb", "call-7", 200)
                               for r in mine), "git rows on :%d: %r" % (g.port, mine))
    n = 6 if have_requests else 4
    rs = wait_until(lambda: [r for r in rows(al) if r["path"].startswith("/echo")]
                    if len([r for r in rows(al) if r["path"].startswith("/echo")]) >= n else None,
                    10, "%d audit rows" % n)
    for r in rs:
        eq((r["sandbox"], r["tool_call"], r["decision"], r["status"]),
           ("sb", "call-7", "allow", 200), "row %s" % r["path"])
    plain = [r for r in rs if r["port"] == up.port]
    tls = [r for r in rs if r["port"] == ups.port]
    eq(len(plain), n // 2, "plain http rows: %r" % [r["path"] for r in rs])
    eq(len(tls), n // 2, "https rows: %r" % [r["path"] for r in rs])
    check(all(r["rule"] == "plain-up" for r in plain), "plain rows' rule")
    check(all(r["rule"] == "tls-up" and r["secrets"] == "api-env" for r in tls),
          "https rows: intercepted and injected: %r" % [(r["rule"], r["secrets"]) for r in tls])
    # the tunnels (CONNECT) were the sandbox's too
    conn = [r for r in rows(al) if r["method"] == "CONNECT"]
    check(conn and all(r["sandbox"] == "sb" for r in conn), "CONNECT rows: %r" % conn)
    # without the token the same block fails loudly instead of going out unauthenticated
    rc, sout, serr = run_as_nobody(t, base, ". %s\necho sourced\n" % envfile, "")
    check(rc != 0 and "AIRLOCK_TOKEN" in serr and "sourced" not in sout,
          "sourcing without AIRLOCK_TOKEN: rc=%d %r %r" % (rc, sout, serr))


@test
def test_sandbox_env_unreachable_public_folder_warns(t):
    """A public folder other users cannot reach is written, with a warning."""
    d = os.path.join(t.tmp, "priv")  # under the run's 0700 temp dir
    os.makedirs(d)
    rc, out, err = cli("ca", "init", "--dir", os.path.join(d, "ca"))
    eq(rc, 0, "ca init: " + err)
    rc, out, err = cli("ca", "env", "--dir", os.path.join(d, "ca"))
    eq(rc, 0, "ca env: " + err)
    check("other users cannot enter" in err, "no reachability warning: %r" % err)
    check("'%s/ca-public/bundle.pem'" % os.path.realpath(d) in out, "ca env paths: %r" % out)


def sh_quote(s):
    return "'" + s.replace("'", "'\\''") + "'"


if __name__ == "__main__":
    sys.exit(altest.main())
