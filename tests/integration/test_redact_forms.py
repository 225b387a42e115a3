#!/usr/bin/env python3
"""Response redaction of the case-folded and MIME line-wrapped base64 forms
of a secret (issue #14): an in-scope origin echoes the injected value
lower-cased, upper-cased, and inside a larger base64 document wrapped at
60/64/76 characters with LF or CRLF (the document holds the value at several
byte offsets, so the wrap falls at every position relative to it). The
client must see the placeholder and never the value in any form.

    python3 tests/integration/test_redact_forms.py --airlock build/proxy/airlock [-k NAME]

Plain HTTP with `allow_plaintext` keeps the setup small (no interception CA);
the redactor is the same for intercepted TLS.
"""

import base64
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import altest  # noqa: E402
import upstream as upstream_mod  # noqa: E402
from altest import TestFailure, check, eq, test, wait_until  # noqa: E402

VAL = "sk-live-TESTSECRET-9f8e7d6c5b4a3210-QwErTy"  # 41 bytes
VAL_LONG = ("sk-live-TESTSECRET-LONG-" +
            "".join("%s%d" % ("AbCdEfGhIjKlMnOpQrStUvWxYz"[i % 26], i % 10) for i in range(88)))
PH = {"tok": "al_ph_TESTFORMS_tok_0001", "long": "al_ph_TESTFORMS_long_0002"}
VALUES = {"tok": VAL, "long": VAL_LONG}
HOST = "echo.test"
OFFSETS = [0, 1, 2, 3, 37, 58, 59, 60, 100, 101, 102, 150]


def b64_doc(v, pre, post=90):
    """A base64 document of pre filler bytes, the value, post filler bytes."""
    return base64.b64encode(upstream_mod.pattern(pre) + v + upstream_mod.pattern(post, 7))


def wrap(b, width, eol):
    return eol.join(b[i:i + width] for i in range(0, len(b), width))


class Handler(upstream_mod._Handler):
    """/forms/FORM?...: echoes the X-Api-Key request header (the injected
    value) as FORM: lower, upper, wrapped (&w=WIDTH&eol=lf|crlf: one base64
    document per offset in OFFSETS, MIME-wrapped)."""

    def _do2(self):
        if not self.path.startswith("/forms/"):
            return super()._do2()
        self._read_body()
        self._record(0, "")
        v = (self.headers.get("X-Api-Key") or "").encode("latin-1")
        form, _, query = self.path[len("/forms/"):].partition("?")
        q = dict(kv.partition("=")[::2] for kv in query.split("&") if kv)
        if form == "lower":
            body = b'{"error": "invalid token ' + v.lower() + b'"}\n'
        elif form == "upper":
            body = b"ERROR: TOKEN " + v.upper() + b" NOT RECOGNISED\n"
        elif form == "wrapped":
            width = int(q["w"])
            eol = b"\r\n" if q.get("eol") == "crlf" else b"\n"
            parts = []
            for off in OFFSETS:
                parts.append(b"--doc %d" % off + eol + wrap(b64_doc(v, off), width, eol) + eol)
            body = b"".join(parts)
        elif form == "contents":
            # GitHub's contents API: base64 wrapped at W inside a JSON
            # string, the line breaks being the escape \n (or \r\n), '/'
            # escaped as \/ with slash=1 (PHP's json_encode)
            width = int(q.get("w", "60"))
            esc = "\\r\\n" if q.get("eol") == "crlf" else "\\n"
            docs = []
            for off in OFFSETS:
                text = wrap(b64_doc(v, off), width, b"\n").decode() + "\n"
                s = json.dumps({"name": "doc%d" % off, "content": text, "encoding": "base64"})
                s = s.replace("\\n", esc)
                if q.get("slash") == "1":
                    s = s.replace("/", "\\/")
                docs.append(s)
            body = ("[" + ",\n".join(docs) + "]\n").encode()
        else:
            body = b"unknown form\n"
        self._send(200, body, "text/plain")


def forms_of(v):
    """What must never reach the client: the value raw and case-folded, and
    its base64 at the three alignments (the characters the value alone
    determines), looked for with the line breaks taken out."""
    out = {"raw": v, "lower": v.lower(), "upper": v.upper()}
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + v)
        first, last = (8 * k + 5) // 6, (8 * k + 8 * len(v)) // 6
        out["b64@%d" % k] = enc[first:last]
    return out


def no_value(body, what):
    flat = body.replace(b"\r", b"").replace(b"\n", b"")
    # and with the JSON escapes taken out (\/ read as /)
    jflat = body.replace(b"\\r", b"").replace(b"\\n", b"").replace(b"\\/", b"/")
    for name, v in VALUES.items():
        for form, f in forms_of(v.encode()).items():
            if f in body or f in flat or f in jflat:
                raise TestFailure("%s: secret %s visible (%s form): %r" %
                                  (what, name, form, body[:400]))


def start(t):
    up = upstream_mod.Upstream(None)
    up.RequestHandlerClass = Handler
    t.defer(up.stop)
    secrets = {"secrets": {
        name: {"from": {"value": VALUES[name]}, "hosts": [HOST], "allow_plaintext": True,
               "placeholder": PH[name]} for name in VALUES}}
    path = t.file("secrets.json", json.dumps(secrets).encode())
    al = t.airlock(config={"secrets": path, "resolve": {HOST: "127.0.0.1"}})
    return up, al


def fetch(al, up, name, form, query=""):
    url = "http://%s:%d/forms/%s?%s" % (HOST, up.port, form, query)
    r = al.curl(["-H", "X-Api-Key: " + PH[name], url])
    check(r.rc == 0 and r.status == 200, "%s %s: %r" % (name, url, r))
    # the origin did get the real value (else the test proves nothing)
    rec = wait_until(lambda: [x for x in up.find("/forms/%s" % form)
                              if x["path"].endswith(query)], 5, "upstream request")
    hv = [v for k, v in rec[-1]["headers"] if k.lower() == "x-api-key"]
    eq(hv, [VALUES[name]], "X-Api-Key at the upstream")
    return r.body


@test
def test_case_folded(t):
    up, al = start(t)
    for name in VALUES:
        for form in ("lower", "upper"):
            body = fetch(al, up, name, form, "s=" + name)
            no_value(body, "%s %s" % (name, form))
            eq(body.count(PH[name].encode()), 1, "%s %s: placeholders in %r" % (name, form, body))


@test
def test_wrapped_base64(t):
    up, al = start(t)
    for name in VALUES:
        for width in (60, 64, 76):
            for eol in ("lf", "crlf"):
                q = "w=%d&eol=%s&s=%s" % (width, eol, name)
                body = fetch(al, up, name, "wrapped", q)
                no_value(body, "%s wrapped %s" % (name, q))
                eq(body.count(PH[name].encode()), len(OFFSETS),
                   "%s %s: placeholders (one per document)" % (name, q))
                # the documents' line structure outside the value is kept
                check(body.count(b"--doc ") == len(OFFSETS), "documents: %r" % body[:300])
                if eol == "crlf":
                    check(b"\r\n" in body, "CRLF kept around the placeholder")


@test
def test_json_wrapped_base64(t):
    """A JSON document like GitHub's contents API answer: the base64 of a
    file holding the value, wrapped at 60 (64, 76) with the escape \\n (or
    \\r\\n) inside a JSON string: each document shows the placeholder and
    no form of the value, and the JSON still parses."""
    up, al = start(t)
    for name in VALUES:
        for width, eol, slash in ((60, "lf", 0), (60, "crlf", 0), (64, "lf", 0), (76, "crlf", 0),
                                  (60, "lf", 1)):
            q = "w=%d&eol=%s&slash=%d&s=%s" % (width, eol, slash, name)
            body = fetch(al, up, name, "contents", q)
            no_value(body, "%s contents %s" % (name, q))
            docs = json.loads(body)
            eq(len(docs), len(OFFSETS), "documents")
            for d in docs:
                eq(d["content"].count(PH[name]), 1, "%s %s: placeholder in %r" % (name, q, d))


if __name__ == "__main__":
    sys.exit(altest.main())
