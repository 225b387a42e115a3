#!/usr/bin/env python3
"""replay_kept.py - `airlock policy replay` over the audit files an
integration run left behind (issue 17: replay decides as the daemon did).

    python3 tests/integration/test_policy.py --airlock BIN --keep   # any suites
    python3 tests/integration/replay_kept.py --airlock BIN /tmp/airlock-integ-XXXX ...

For every airlockN/ directory with an audit.db, replays the file under the
policy.json next to it (with --dry-run when that airlock ran with it) and
expects no decision to change. Airlocks whose policy was reloaded during the
test (its log says so) decided part of their rows under another policy:
they are listed, not judged. Exit 0 when every judged file replays
unchanged, 1 otherwise.
"""

import argparse
import glob
import json
import os
import subprocess
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--airlock", required=True)
    ap.add_argument("dirs", nargs="+")
    args = ap.parse_args()
    args.airlock = os.path.abspath(args.airlock)
    bad = judged = rows = 0
    for top in args.dirs:
        for d in sorted(glob.glob(os.path.join(top, "airlock*"))):
            db, cfg = os.path.join(d, "audit.db"), os.path.join(d, "airlock.json")
            if not (os.path.exists(db) and os.path.exists(cfg)):
                continue
            log = open(os.path.join(d, "airlock.log"), errors="replace").read()
            if "reload" in log.lower():
                print("skip %s: its policy was reloaded during the test" % d)
                continue
            cmd = [args.airlock, "policy", "replay", "--config", cfg, "--policy",
                   os.path.join(d, "policy.json"), "--db", db, "--since", "30d",
                   "--format", "json"]
            if "dry-run: denies are recorded as would_deny" in log:
                cmd.append("--dry-run")
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=d)
            if p.returncode == 2:
                print("skip %s: its policy does not load (%s)" %
                      (d, p.stderr.decode(errors="replace").strip().splitlines()[0]))
                continue
            judged += 1
            try:
                j = json.loads(p.stdout)
            except ValueError:
                print("FAIL %s: exit %d, %s" % (d, p.returncode, p.stderr.decode(errors="replace")))
                bad += 1
                continue
            rows += j["replayed"]
            if p.returncode != 0 or j["changed"] != 0:
                bad += 1
                print("FAIL %s: %d of %d replayed rows change: %s" %
                      (d, j["changed"], j["replayed"], json.dumps(j["transitions"])))
    print("%d audit files judged, %d rows replayed, %d with changes" % (judged, rows, bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
