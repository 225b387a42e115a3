#!/usr/bin/env python3
"""replay_gen.py - a synthetic audit database and policies for the
`airlock policy replay` bench (issue 17).

    python3 bench/replay_gen.py DIR [ROWS]

Writes into DIR:
  audit.db        ROWS rows (default 10,000,000) in airlock's schema v4, over
                  the last 6 days, 20 sandboxes, 1,200 hosts (1,000 named by
                  the policy, 200 not), 30 % CONNECT tunnels, 70 % plain
                  requests with paths; recorded decisions as policy.json
                  decides them (allow by rule rK, or default deny); the
                  guard's address is a public one. The schema's indexes are
                  created after the load, as a real file has them.
  policy.json     1,000 rules: rK allows hK.example.com (every tenth also
                  limited to GET/POST and /api/**, every fiftieth to sandboxes
                  s0-s9), 50 suffix rules *.zoneN.example.net, then a deny.
  stricter.json   policy.json with the rules of the first 100 hosts turned
                  into denies (about 8 % of the rows change allow -> deny).
  airlock.json    a config naming audit.db and policy.json.

Rows are generated inside sqlite (a recursive CTE), so 10 M rows take about a
minute; the file is ~1.4 GB.
"""

import json
import os
import sqlite3
import sys
import time

SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL, applied_us INTEGER NOT NULL);
CREATE TABLE requests (id INTEGER PRIMARY KEY, ts INTEGER NOT NULL,
 duration_us INTEGER NOT NULL DEFAULT 0, sandbox TEXT NOT NULL DEFAULT '',
 session TEXT NOT NULL DEFAULT '', tool_call TEXT NOT NULL DEFAULT '',
 client TEXT NOT NULL DEFAULT '', method TEXT NOT NULL DEFAULT '',
 scheme TEXT NOT NULL DEFAULT '', host TEXT NOT NULL DEFAULT '',
 port INTEGER NOT NULL DEFAULT 0, path TEXT NOT NULL DEFAULT '',
 upstream TEXT NOT NULL DEFAULT '', decision TEXT NOT NULL DEFAULT '',
 rule TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '',
 secrets TEXT NOT NULL DEFAULT '', status INTEGER NOT NULL DEFAULT 0,
 bytes_up INTEGER NOT NULL DEFAULT 0, bytes_down INTEGER NOT NULL DEFAULT 0,
 error TEXT NOT NULL DEFAULT '', mode TEXT NOT NULL DEFAULT '',
 orig_dst TEXT NOT NULL DEFAULT '', conn_id INTEGER NOT NULL DEFAULT 0,
 pending INTEGER NOT NULL DEFAULT 0, sni TEXT NOT NULL DEFAULT '',
 addr TEXT NOT NULL DEFAULT '');
"""
INDEXES = """
CREATE INDEX requests_ts ON requests(ts);
CREATE INDEX requests_host_ts ON requests(host, ts);
CREATE INDEX requests_sandbox_ts ON requests(sandbox, ts) WHERE sandbox != '';
CREATE INDEX requests_tool_call_ts ON requests(tool_call, ts) WHERE tool_call != '';
CREATE INDEX requests_decision_ts ON requests(decision, ts) WHERE decision != 'allow';
"""

NHOST = 1200  # h0..h999 named by rules, h1000..h1199 not


def policy(deny_first=0):
    rules = []
    for k in range(1000):
        r = {"name": "r%d" % k, "hosts": ["h%d.example.com" % k], "ports": [80, 443]}
        if k < deny_first:
            rules.append({"name": "deny%d" % k, "hosts": r["hosts"], "action": "deny"})
            continue
        if k % 10 == 0:
            r["methods"] = ["GET", "POST"]
            r["paths"] = ["/api/**"]
            r["intercept"] = True  # so a CONNECT still matches it
        if k % 50 == 0:
            r["sandboxes"] = ["s%d" % i for i in range(10)]
        rules.append(r)
    for k in range(50):
        rules.append({"name": "zone%d" % k, "hosts": ["*.zone%d.example.net" % k]})
    rules.append({"name": "no-uploads", "hosts": ["*"], "methods": ["PUT"], "action": "deny"})
    return {"default": "deny", "rules": rules}


def main():
    d = sys.argv[1]
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000_000
    os.makedirs(d, exist_ok=True)
    db_path = os.path.join(d, "audit.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db_path + suffix):
            os.unlink(db_path + suffix)
    now_us = int(time.time() * 1e6)
    span = 6 * 86400 * 10**6
    t0 = time.time()
    db = sqlite3.connect(db_path)
    db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;" + SCHEMA)
    db.execute("INSERT INTO schema_version VALUES (4, ?)", (now_us,))
    # i -> host index hk = (i * 7919) % NHOST; sandbox s(i % 20); every
    # tenth host's rule wants GET/POST under /api/ (the rows comply); every
    # fiftieth host's rule is limited to s0-s9 (rows from s10-s19 denied).
    db.execute("""
WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < ?1 - 1),
r AS (SELECT i, (i * 7919) % %d AS hk, i %% 20 AS sb, (i %% 10) < 3 AS tun FROM c)
INSERT INTO requests (ts, duration_us, sandbox, client, mode, method, scheme, host, port, path,
                      upstream, decision, rule, reason, status, bytes_up, bytes_down, addr)
SELECT ?2 - ?3 + (i * ?3) / ?1, 1000 + i %% 5000, 's' || sb, '10.0.0.' || sb || ':40000',
       'forward',
       CASE WHEN tun THEN 'CONNECT' WHEN i %% 7 = 0 THEN 'POST' ELSE 'GET' END,
       CASE WHEN tun THEN 'connect' ELSE 'http' END,
       'h' || hk || '.example.com', CASE WHEN tun THEN 443 ELSE 80 END,
       CASE WHEN tun THEN '' ELSE '/api/v1/items/' || (i %% 997) || '/detail' END,
       CASE WHEN hk < 1000 AND NOT (hk %% 50 = 0 AND sb >= 10)
            THEN '93.184.216.' || (hk %% 250) || ':' || CASE WHEN tun THEN 443 ELSE 80 END
            ELSE '' END,
       CASE WHEN hk < 1000 AND NOT (hk %% 50 = 0 AND sb >= 10) THEN 'allow' ELSE 'deny' END,
       CASE WHEN hk < 1000 AND NOT (hk %% 50 = 0 AND sb >= 10) THEN 'r' || hk ELSE 'default' END,
       CASE WHEN hk < 1000 AND NOT (hk %% 50 = 0 AND sb >= 10) THEN 'allowed_by_rule'
            WHEN hk < 1000 THEN 'sandbox_not_allowed' ELSE 'host_not_allowed' END,
       CASE WHEN hk < 1000 AND NOT (hk %% 50 = 0 AND sb >= 10) THEN 200 ELSE 403 END,
       i %% 4096, i %% 65536,
       CASE WHEN hk < 1000 AND NOT (hk %% 50 = 0 AND sb >= 10)
            THEN '93.184.216.' || (hk %% 250) || ':' || CASE WHEN tun THEN 443 ELSE 80 END
            ELSE '' END
FROM r
""".replace("%d", str(NHOST)).replace("%%", "%"), (rows, now_us, span))
    db.commit()
    t1 = time.time()
    db.executescript(INDEXES)
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    t2 = time.time()
    with open(os.path.join(d, "policy.json"), "w") as fh:
        json.dump(policy(), fh, indent=1)
    with open(os.path.join(d, "stricter.json"), "w") as fh:
        json.dump(policy(deny_first=100), fh, indent=1)
    with open(os.path.join(d, "airlock.json"), "w") as fh:
        json.dump({"listen": [{"addr": "127.0.0.1:39128", "mode": "forward"}],
                   "policy": "policy.json", "audit": {"db": "audit.db"},
                   "sandboxes": [{"name": "s%d" % i, "cidrs": ["10.0.%d.0/24" % i]}
                                 for i in range(20)]}, fh, indent=1)
    print("%s: %d rows (%.1f s load, %.1f s indexes), %.0f MB" %
          (db_path, rows, t1 - t0, t2 - t1, os.path.getsize(db_path) / 1e6))


if __name__ == "__main__":
    main()
