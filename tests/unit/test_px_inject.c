/*
 * test_px_inject.c - the secrets seam (proxy/px_inject.c) with a real
 * secret store on a fake connection (tests/unit/px_fake.h), through the
 * real codec: placeholders in a header and the target are replaced in
 * scope (Accept-Encoding becomes identity toward a secret's host), an
 * out-of-scope one refuses the request (403 secret_out_of_scope, the
 * secret named) before anything is queued; the request body's chain
 * substitutes where the secret opts in (re-framed chunked, held until
 * scanned) and refuses an out-of-scope placeholder (x->body_refusal);
 * responses from a host that got a secret are redacted in the head (in
 * place) and in the body through the chain, across piece boundaries, a
 * gzip body decoded then redacted, two codings refused (502). The chain
 * runner itself (px_filter.c): hold-back, refusal, framing, its cap.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <zlib.h>

#include "tests/unit/px_fake.h"

#define TOK_VAL "tok-VALUE-3f9a1c77"
#define TOK_PH "PH-TOK-000000"
#define OTH_VAL "oth-VALUE-0b1e2d"
#define OTH_PH "PH-OTH-000000"
#define HDR_VAL "hdr-VALUE-55aa"

static const char t_secrets[] =
    "{\"secrets\": {"
    "\"tok\": {\"from\": {\"value\": \"" TOK_VAL "\"}, \"hosts\": [\"api.test\"], "
    "\"in\": [\"header\", \"query\", \"path\", \"body\"], \"allow_plaintext\": true, "
    "\"placeholder\": \"" TOK_PH "\"},"
    "\"oth\": {\"from\": {\"value\": \"" OTH_VAL "\"}, \"hosts\": [\"other.test\"], "
    "\"allow_plaintext\": true, \"placeholder\": \"" OTH_PH "\"},"
    "\"hdr\": {\"from\": {\"value\": \"" HDR_VAL "\"}, \"hosts\": [\"api.test\"], "
    "\"header\": {\"name\": \"X-Key\", \"format\": \"K {}\"}, \"allow_plaintext\": true, "
    "\"placeholder\": \"PH-HDR-000000\"}"
    "}}";

static void
t_init(struct pxf *f)
{
    pxf_init(f, NULL, pxf_secrets(t_secrets));
}

/* Feeds the whole request to the head's pause; *rest / *rlen: the body. */
static void
t_head(struct pxf *f, const char *req, const char **rest, size_t *rlen)
{
    *rest = req;
    *rlen = strlen(req);
    assert_int_equal(pxf_req_exec(f->c, rest, rlen), HPE_PAUSED);
    assert_int_equal(pxf_on_head(f->c), AL_OK);
}

static llhttp_errno_t
t_resume(struct pxf *f, const char **rest, size_t *rlen)
{
    llhttp_resume(&f->c->rq);
    return pxf_req_exec(f->c, rest, rlen);
}

/* The data of a chunked body (sizes checked), into a string (al_free it). */
static char *
t_unchunk(const char *s)
{
    struct al_dbuf d;

    al_dbuf_init(&d, 1 << 20);
    assert_int_equal(al_dbuf_add(&d, "", 0), AL_OK);
    for (;;) {
        char         *end;
        unsigned long n = strtoul(s, &end, 16);

        assert_true(end > s);
        assert_memory_equal(end, "\r\n", 2);
        s = end + 2;
        if (n == 0) {
            assert_string_equal(s, "\r\n");
            return d.data;
        }
        assert_true(strlen(s) >= n + 2);
        assert_int_equal(al_dbuf_add(&d, s, n), AL_OK);
        s += n;
        assert_memory_equal(s, "\r\n", 2);
        s += 2;
    }
}

/* ---- the chain runner (px_filter.c) ------------------------------------------ */

/* A filter that holds everything back until the end, then passes it on
 * upper-cased in one piece. */
static char   t_held[64];
static size_t t_nheld;

static int
t_upper_at_end(struct px_chain *ch, int i, const char *p, size_t n, int last)
{
    for (size_t k = 0; k < n && t_nheld < sizeof(t_held); k++)
        t_held[t_nheld++] = (char)(p[k] >= 'a' && p[k] <= 'z' ? p[k] - 32 : p[k]);
    if (!last)
        return AL_OK;
    return px_chain_feed(ch, i + 1, t_held, t_nheld, 1);
}

static int
t_refuse_x(struct px_chain *ch, int i, const char *p, size_t n, int last)
{
    if (n > 0 && memchr(p, 'x', n) != NULL)
        return AL_DECLINED;
    return px_chain_feed(ch, i + 1, p, n, last);
}

static void
test_chain_runner(void **state)
{
    struct pxf      f;
    struct px_chain ch;

    (void)state;
    pxf_init(&f, NULL, NULL);
    px_chain_init(&ch, f.c);
    /* No destination yet: a body before its head is a bug, not bytes. */
    assert_int_equal(px_chain_feed(&ch, 0, "a", 1, 0), AL_ERROR);
    ch.out = &f.c->cl.out;
    assert_int_equal(px_chain_feed(&ch, 0, "as is", 5, 0), AL_OK);
    assert_int_equal(px_chain_feed(&ch, 0, NULL, 0, 1), AL_OK);
    pxf_expect_q(&f.c->cl.out, "as is");

    t_nheld = 0;
    ch.chunked = 1;
    assert_int_equal(px_chain_add(&ch, t_refuse_x), AL_OK);
    assert_int_equal(px_chain_add(&ch, t_upper_at_end), AL_OK);
    assert_int_equal(px_chain_feed(&ch, 0, "abc", 3, 0), AL_OK);
    assert_int_equal(px_chain_feed(&ch, 0, "de", 2, 0), AL_OK);
    assert_int_equal(al_bufq_len(&f.c->cl.out), 0); /* held back */
    assert_int_equal(px_chain_feed(&ch, 0, NULL, 0, 1), AL_OK);
    pxf_expect_q(&f.c->cl.out, "5\r\nABCDE\r\n0\r\n\r\n");
    assert_int_equal(px_chain_feed(&ch, 0, "six", 3, 0), AL_DECLINED);
    assert_int_equal(al_bufq_len(&f.c->cl.out), 0);

    assert_int_equal(px_chain_add(&ch, t_refuse_x), AL_OK);
    assert_int_equal(px_chain_add(&ch, t_refuse_x), AL_OK);
    assert_int_equal(ch.n, PX_CHAIN_MAX);
    assert_int_equal(px_chain_add(&ch, t_refuse_x), AL_ERROR);
    pxf_free(&f);
}

/* ---- request heads ----------------------------------------------------------- */

static void
test_head_in_scope(void **state)
{
    struct pxf      f;
    const char     *rest;
    size_t          rlen;
    struct px_exch *x;
    int             tok;

    (void)state;
    t_init(&f);
    tok = sec_find(f.conf->secrets, "tok");
    t_head(&f,
           "GET http://api.test/v1/" TOK_PH "?key=" TOK_PH " HTTP/1.1\r\n"
           "X-Api-Key: " TOK_PH "\r\n"
           "X-Key: the client's own\r\n"
           "Accept-Encoding: gzip, br\r\n"
           "\r\n",
           &rest, &rlen);
    x = f.c->x;
    assert_int_equal(pxf_request_head(f.c), AL_OK);
    assert_int_equal(f.c->up.out.sensitive, 1); /* chunks holding values are wiped */
    /* Values in scope; the template replaces the client's X-Key; the
     * origin is asked for an identity body it can be scanned in. */
    pxf_expect_q(&f.c->up.out, "GET /v1/" TOK_VAL "?key=" TOK_VAL " HTTP/1.1\r\n"
                               "Host: api.test\r\n"
                               "X-Api-Key: " TOK_VAL "\r\n"
                               "X-Key: K " HDR_VAL "\r\n"
                               "Accept-Encoding: identity\r\n"
                               "\r\n");
    assert_int_equal(x->secret_host, 1);
    assert_true(x->injected & (1ULL << tok));
    assert_true(x->injected & (1ULL << sec_find(f.conf->secrets, "hdr")));
    assert_true(x->redact_mask & (1ULL << tok));
    assert_int_equal(x->req_chain.n, 0); /* no body: nothing to scan */
    assert_int_equal(x->hold_up, 0);
    pxf_free(&f);
}

/* Toward a host no secret is scoped to: the head goes as it is (not even
 * Accept-Encoding is touched), the response is not redacted. */
static void
test_head_no_secret_host(void **state)
{
    struct pxf  f;
    const char *rest;
    size_t      rlen;

    (void)state;
    t_init(&f);
    t_head(&f, "GET http://plain.test/ HTTP/1.1\r\nAccept-Encoding: gzip\r\n\r\n", &rest, &rlen);
    assert_int_equal(pxf_request_head(f.c), AL_OK);
    pxf_expect_q(&f.c->up.out,
                 "GET / HTTP/1.1\r\nHost: plain.test\r\nAccept-Encoding: gzip\r\n\r\n");
    assert_int_equal(f.c->x->secret_host, 0);
    assert_int_equal(f.c->x->redact_mask, 0);
    assert_int_equal(f.c->up.out.sensitive, 0);
    pxf_free(&f);
}

static void
test_head_out_of_scope(void **state)
{
    static const char *const reqs[] = {
        /* a header */
        "GET http://api.test/ HTTP/1.1\r\nX-Other: Bearer " OTH_PH "\r\n\r\n",
        /* the target of a host that is not the secret's */
        "GET http://other.test/?k=" TOK_PH " HTTP/1.1\r\n\r\n",
        /* a host nobody's */
        "GET http://elsewhere.test/ HTTP/1.1\r\nAuthorization: " TOK_PH "\r\n\r\n",
    };
    static const char *const secret[] = {"oth", "tok", "tok"};

    (void)state;
    for (size_t k = 0; k < sizeof(reqs) / sizeof(reqs[0]); k++) {
        struct pxf  f;
        const char *rest;
        size_t      rlen;

        t_init(&f);
        t_head(&f, reqs[k], &rest, &rlen);
        assert_int_equal(pxf_request_head(f.c), AL_DECLINED);
        assert_int_equal(f.c->refusal.status, 403);
        assert_string_equal(f.c->refusal.reason, SEC_REFUSE_OUT_OF_SCOPE);
        assert_non_null(f.c->refusal.secret);
        assert_string_equal(f.c->refusal.secret, secret[k]);
        assert_int_equal(f.c->refusal.deny, 1);
        assert_string_equal(f.c->x->secret_refused, secret[k]);
        assert_int_equal(f.c->x->decision.verdict, POL_DENY);
        assert_int_equal(al_bufq_len(&f.c->up.out), 0); /* nothing queued */
        pxf_free(&f);
    }
}

/* TRACE toward a secret's host (405) and a websocket that would carry an
 * value toward a secret's host (allowed: scanned after the 101). */
static void
test_head_other_refusals(void **state)
{
    struct pxf  f;
    const char *rest;
    size_t      rlen;

    (void)state;
    t_init(&f);
    t_head(&f, "TRACE http://api.test/ HTTP/1.1\r\n\r\n", &rest, &rlen);
    assert_int_equal(pxf_request_head(f.c), AL_DECLINED);
    assert_int_equal(f.c->refusal.status, 405);
    assert_string_equal(f.c->refusal.reason, SEC_REFUSE_TRACE);
    pxf_free(&f);

    /* A websocket toward a secret's host goes out like any request (its
     * frames are scanned after the 101, px_ws.c), with no extension
     * offered: a compressed frame would pass the scanners. */
    t_init(&f);
    t_head(&f,
           "GET http://api.test/ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
           &rest, &rlen);
    assert_int_equal(pxf_request_head(f.c), AL_OK);
    assert_true(f.c->x->ws_scan);
    {
        char *out = pxf_take(&f.c->up.out);

        assert_null(strstr(out, "Sec-WebSocket-Extensions"));
        assert_non_null(strstr(out, "Connection: upgrade\r\n"));
        al_free(out);
    }
    pxf_free(&f);
}

/* The allowing rule's "inject" list: only the secrets it names may go out
 * on this request, in scope or not (decided by px_decide first). */
static void
test_head_rule_inject_list(void **state)
{
    static const char policy[] = "{\"default\": \"deny\", \"rules\": ["
                                 "{\"name\": \"api\", \"hosts\": [\"api.test\"], "
                                 "\"action\": \"allow\", \"inject\": [\"hdr\"]}]}";
    struct pxf        f;
    const char       *rest;
    size_t            rlen;

    (void)state;
    pxf_init(&f, pxf_policy(policy), pxf_secrets(t_secrets));
    t_head(&f, "GET http://api.test/ HTTP/1.1\r\nX-Api-Key: " TOK_PH "\r\n\r\n", &rest, &rlen);
    assert_int_equal(px_decide(f.c), AL_OK);
    assert_string_equal(f.c->x->decision.rule, "api");
    assert_int_equal(pxf_request_head(f.c), AL_DECLINED);
    assert_string_equal(f.c->refusal.reason, SEC_REFUSE_OUT_OF_SCOPE);
    assert_string_equal(f.c->refusal.secret, "tok");
    assert_int_equal(f.c->x->inject_only, 1ULL << sec_find(f.conf->secrets, "hdr"));
    pxf_free(&f);

    /* Without the placeholder: the named template goes out. */
    pxf_init(&f, pxf_policy(policy), pxf_secrets(t_secrets));
    t_head(&f, "GET http://api.test/ HTTP/1.1\r\n\r\n", &rest, &rlen);
    assert_int_equal(px_decide(f.c), AL_OK);
    assert_int_equal(pxf_request_head(f.c), AL_OK);
    pxf_expect_q(&f.c->up.out, "GET / HTTP/1.1\r\nHost: api.test\r\nX-Key: K " HDR_VAL "\r\n"
                               "Accept-Encoding: identity\r\n\r\n");
    pxf_free(&f);
}

/* ---- request bodies ---------------------------------------------------------- */

/* A placeholder split over two reads: substituted all the same; the body
 * is re-framed chunked (its length changed) and held until scanned. */
static void
test_body_substituted(void **state)
{
    static const char body[] = "{\"key\": \"" TOK_PH "\", \"n\": 1}";
    struct pxf        f;
    struct al_dbuf    req;
    const char       *rest;
    size_t            rlen, cut;
    struct px_exch   *x;
    char             *out, *data;

    (void)state;
    t_init(&f);
    al_dbuf_init(&req, 4096);
    assert_int_equal(al_dbuf_addf(&req,
                                  "POST http://api.test/v1/b HTTP/1.1\r\n"
                                  "Content-Length: %zu\r\n\r\n%s",
                                  strlen(body), body),
                     AL_OK);
    t_head(&f, req.data, &rest, &rlen);
    x = f.c->x;
    assert_int_equal(pxf_request_head(f.c), AL_OK);
    assert_int_equal(x->req_chunked, 1);
    assert_int_equal(x->req_chain.n, 1);
    assert_int_equal(x->hold_up, 1);
    assert_int_equal(f.c->up.out.max, PX_HOLD_QUEUE_BYTES);
    assert_int_equal(f.c->up.out.sensitive, 1);
    out = pxf_take(&f.c->up.out);
    assert_string_equal(out, "POST /v1/b HTTP/1.1\r\nHost: api.test\r\nX-Key: K " HDR_VAL "\r\n"
                             "Accept-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n");
    al_free(out);

    cut = (size_t)(strstr(rest, TOK_PH) - rest) + 5; /* inside the placeholder */
    llhttp_resume(&f.c->rq);
    {
        const char *p = rest;
        size_t      n = cut;

        assert_int_equal(pxf_req_exec(f.c, &p, &n), HPE_OK);
        /* Not a byte of the placeholder went out yet. */
        out = pxf_take(&f.c->up.out);
        assert_null(strstr(out, "PH-TO"));
        data = out;
        rest += cut;
        rlen -= cut;
    }
    assert_int_equal(pxf_req_exec(f.c, &rest, &rlen), HPE_PAUSED);
    assert_int_equal(x->req_done, 1);
    assert_int_equal(x->hold_up, 0); /* scanned whole: it may go */
    {
        char *more = pxf_take(&f.c->up.out);
        char *all = al_malloc(strlen(data) + strlen(more) + 1);
        char *plain;

        strcpy(all, data);
        strcat(all, more);
        plain = t_unchunk(all);
        assert_string_equal(plain, "{\"key\": \"" TOK_VAL "\", \"n\": 1}");
        al_free(plain);
        al_free(all);
        al_free(more);
    }
    al_free(data);
    assert_true(x->injected & (1ULL << sec_find(f.conf->secrets, "tok")));
    al_dbuf_free(&req);
    pxf_free(&f);
}

/* Placeholders in a body that may not go there: out of scope (split over
 * chunks, or toward a host nobody's), or in scope but in a location the
 * secret did not opt into. Refused before the whole placeholder is queued. */
static void
test_body_refused(void **state)
{
    static const struct {
        const char *req, *reason, *secret;
    } cases[] = {
        {"POST http://api.test/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
         "6\r\nx=PH-O\r\n8\r\nTH-00000\r\n1\r\n0\r\n0\r\n\r\n",
         SEC_REFUSE_OUT_OF_SCOPE, "oth"},
        {"POST http://other.test/ HTTP/1.1\r\nContent-Length: 15\r\n\r\nv=" OTH_PH,
         SEC_REFUSE_LOCATION, "oth"},
        {"POST http://elsewhere.test/ HTTP/1.1\r\nContent-Length: 13\r\n\r\n" TOK_PH,
         SEC_REFUSE_OUT_OF_SCOPE, "tok"},
    };

    (void)state;
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        struct pxf     f;
        const char    *rest;
        size_t         rlen;
        llhttp_errno_t e;
        char          *out;

        t_init(&f);
        t_head(&f, cases[k].req, &rest, &rlen);
        assert_int_equal(pxf_request_head(f.c), AL_OK);
        assert_int_equal(f.c->x->hold_up, 1);
        e = t_resume(&f, &rest, &rlen);
        if (e == HPE_OK || e == HPE_PAUSED)
            fail_msg("case %zu: body accepted", k);
        assert_non_null(f.c->x->body_refusal);
        assert_string_equal(f.c->x->body_refusal, cases[k].reason);
        assert_non_null(f.c->x->secret_refused);
        assert_string_equal(f.c->x->secret_refused, cases[k].secret);
        out = pxf_take(&f.c->up.out);
        assert_null(strstr(out, "PH-"));
        al_free(out);
        px_inject_body_refusal(f.c);
        assert_int_equal(f.c->refusal.status, 403);
        assert_string_equal(f.c->refusal.reason, cases[k].reason);
        assert_string_equal(f.c->refusal.secret, cases[k].secret);
        assert_int_equal(f.c->refusal.deny, 1);
        pxf_free(&f);
    }
}

/* A body longer than PX_HOLD_BODY_BYTES is not held (it streams with a
 * placeholder's length held back); an empty one has no chain at all. */
static void
test_body_hold_cap(void **state)
{
    struct pxf  f;
    const char *rest;
    size_t      rlen;
    char        req[256];

    (void)state;
    t_init(&f);
    snprintf(req, sizeof(req), "POST http://api.test/ HTTP/1.1\r\nContent-Length: %d\r\n\r\n",
             PX_HOLD_BODY_BYTES + 1);
    t_head(&f, req, &rest, &rlen);
    assert_int_equal(pxf_request_head(f.c), AL_OK);
    assert_int_equal(f.c->x->req_chain.n, 1);
    assert_int_equal(f.c->x->hold_up, 0);
    assert_int_equal(f.c->up.out.max, PX_BUF_HIGH_BYTES);
    pxf_free(&f);

    t_init(&f);
    t_head(&f, "POST http://api.test/ HTTP/1.1\r\nContent-Length: 0\r\n\r\n", &rest, &rlen);
    assert_int_equal(pxf_request_head(f.c), AL_OK);
    assert_int_equal(f.c->x->req_chain.n, 0);
    assert_int_equal(f.c->x->hold_up, 0);
    pxf_expect_q(&f.c->up.out, "POST / HTTP/1.1\r\nHost: api.test\r\nX-Key: K " HDR_VAL
                               "\r\nAccept-Encoding: identity\r\nContent-Length: 0\r\n\r\n");
    pxf_free(&f);
}

/* A body toward a host where no secret opts into bodies is scanned but
 * goes as it is, its length kept (toward api.test, where "tok" may be
 * substituted, any body is re-framed chunked: its length may change). */
static void
test_body_plain(void **state)
{
    struct pxf  f;
    const char *rest;
    size_t      rlen;

    (void)state;
    t_init(&f);
    t_head(&f, "POST http://other.test/ HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", &rest, &rlen);
    assert_int_equal(pxf_request_head(f.c), AL_OK);
    pxf_expect_q(&f.c->up.out, "POST / HTTP/1.1\r\nHost: other.test\r\n"
                               "Accept-Encoding: identity\r\nContent-Length: 5\r\n\r\n");
    assert_int_equal(f.c->x->body_mask, 0);
    assert_int_equal(f.c->x->req_chain.n, 1); /* scanned all the same */
    assert_int_equal(t_resume(&f, &rest, &rlen), HPE_PAUSED);
    pxf_expect_q(&f.c->up.out, "hello");
    pxf_free(&f);
}

/* ---- responses --------------------------------------------------------------- */

/* A request to api.test that carried the secret, answered through the
 * codec with inject in between (as the machine does). */
static void
t_exchange(struct pxf *f)
{
    const char *rest;
    size_t      rlen;

    t_init(f);
    t_head(f, "GET http://api.test/ HTTP/1.1\r\nX-Api-Key: " TOK_PH "\r\n\r\n", &rest, &rlen);
    assert_int_equal(pxf_request_head(f->c), AL_OK);
    al_free(pxf_take(&f->c->up.out));
    rest = "";
    assert_int_equal(t_resume(f, &rest, &rlen), HPE_PAUSED);
    assert_true(f->c->x->redact_mask != 0);
    px_h1_response_parser(f->c);
}

static llhttp_errno_t
t_resp(struct pxf *f, const char *at, size_t len, int *rc)
{
    llhttp_errno_t e = pxf_resp_exec(f->c, &at, &len, rc);

    if (e == HPE_PAUSED || e == HPE_OK)
        assert_int_equal(len, 0);
    return e;
}

static void
test_resp_redacted(void **state)
{
    static const char body[] = "0123456789 " TOK_VAL " 0123456789!!!";
    char              head[256];
    struct pxf        f;
    int               rc;
    char             *out, *plain;
    const char       *b;
    size_t            half;

    (void)state;
    snprintf(head, sizeof(head),
             "HTTP/1.1 200 echo " TOK_VAL "\r\n"
             "X-Echo: key=" TOK_VAL "\r\n"
             "X-Hdr: " HDR_VAL "\r\n"
             "Content-Length: %zu\r\n"
             "\r\n",
             strlen(body));
    t_exchange(&f);
    assert_int_equal(t_resp(&f, head, strlen(head), &rc), HPE_OK);
    assert_int_equal(rc, AL_OK);
    /* The length changes with redaction: chunked toward the client. */
    assert_int_equal(f.c->x->resp_chunked_out, 1);
    out = pxf_take(&f.c->cl.out);
    assert_string_equal(out, "HTTP/1.1 200 echo " TOK_PH "\r\n"
                             "X-Echo: key=" TOK_PH "\r\n"
                             "X-Hdr: PH-HDR-000000\r\n"
                             "Transfer-Encoding: chunked\r\n"
                             "\r\n");
    al_free(out);
    /* The body in two reads split inside the value. */
    b = body;
    half = (size_t)(strstr(body, TOK_VAL) - body) + 7;
    assert_int_equal(t_resp(&f, b, half, &rc), HPE_OK);
    out = pxf_take(&f.c->cl.out);
    assert_null(strstr(out, "tok-VAL"));
    assert_int_equal(t_resp(&f, b + half, strlen(body) - half, &rc), HPE_PAUSED);
    assert_int_equal(f.c->x->resp_done, 1);
    {
        char *more = pxf_take(&f.c->cl.out);
        char *all = al_malloc(strlen(out) + strlen(more) + 1);

        strcpy(all, out);
        strcat(all, more);
        plain = t_unchunk(all);
        assert_string_equal(plain, "0123456789 " TOK_PH " 0123456789!!!");
        al_free(plain);
        al_free(all);
        al_free(more);
    }
    al_free(out);
    pxf_free(&f);
}

/* A head without any form of a secret is left as it is; the body is still
 * scanned (re-chunked). */
static void
test_resp_clean_head(void **state)
{
    static const char resp[] = "HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nok";
    struct pxf        f;
    int               rc;

    (void)state;
    t_exchange(&f);
    assert_int_equal(t_resp(&f, resp, strlen(resp), &rc), HPE_PAUSED);
    pxf_expect_q(&f.c->cl.out, "HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
                               "2\r\nok\r\n0\r\n\r\n");
    pxf_free(&f);
}

static size_t
t_gzip(const char *in, size_t n, unsigned char *out, size_t outsz)
{
    z_stream z;

    memset(&z, 0, sizeof(z));
    assert_int_equal(deflateInit2(&z, 6, Z_DEFLATED, 16 + 15, 8, Z_DEFAULT_STRATEGY), Z_OK);
    z.next_in = (unsigned char *)(uintptr_t)in;
    z.avail_in = (uInt)n;
    z.next_out = out;
    z.avail_out = (uInt)outsz;
    assert_int_equal(deflate(&z, Z_FINISH), Z_STREAM_END);
    n = outsz - z.avail_out;
    deflateEnd(&z);
    return n;
}

/* The origin answered gzip anyway: decoded, redacted, passed on decoded
 * (Content-Encoding dropped), fed a byte at a time. */
static void
test_resp_gzip(void **state)
{
    static const char body[] = "gzipped body " TOK_VAL " end\n";
    unsigned char     gz[512];
    size_t            gzn = t_gzip(body, strlen(body), gz, sizeof(gz));
    struct pxf        f;
    struct al_dbuf    resp;
    int               rc;
    char             *out, *plain;
    llhttp_errno_t    e = HPE_OK;

    (void)state;
    t_exchange(&f);
    al_dbuf_init(&resp, 4096);
    assert_int_equal(al_dbuf_addf(&resp,
                                  "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n"
                                  "Content-Length: %zu\r\n\r\n",
                                  gzn),
                     AL_OK);
    assert_int_equal(al_dbuf_add(&resp, gz, gzn), AL_OK);
    for (size_t i = 0; i < resp.len; i++) {
        e = t_resp(&f, resp.data + i, 1, &rc);
        assert_int_equal(rc, AL_OK);
        if (e != HPE_OK)
            break;
    }
    assert_int_equal(e, HPE_PAUSED);
    assert_int_equal(f.c->x->resp_done, 1);
    assert_non_null(f.c->x->inflater);
    assert_int_equal(f.c->x->resp_chain.n, 2);
    out = pxf_take(&f.c->cl.out);
    {
        const char *sep = strstr(out, "\r\n\r\n");

        assert_non_null(sep);
        assert_memory_equal(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                            (size_t)(sep + 4 - out));
        plain = t_unchunk(sep + 4);
    }
    assert_string_equal(plain, "gzipped body " TOK_PH " end\n");
    al_free(plain);
    al_free(out);
    al_dbuf_free(&resp);
    pxf_free(&f);
}

/* Two codings (or one airlock can't decode) from a secret's host: refused
 * before anything reaches the client. */
static void
test_resp_compressed_refused(void **state)
{
    static const char *const resps[] = {
        "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Encoding: br\r\n"
        "Content-Length: 3\r\n\r\nabc",
        "HTTP/1.1 200 OK\r\nContent-Encoding: identity, gzip, gzip\r\nContent-Length: 3\r\n\r\nabc",
        "HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 3\r\n\r\nabc",
    };

    (void)state;
    for (size_t k = 0; k < sizeof(resps) / sizeof(resps[0]); k++) {
        struct pxf f;
        int        rc;

        t_exchange(&f);
        assert_int_equal(t_resp(&f, resps[k], strlen(resps[k]), &rc), HPE_USER);
        assert_int_equal(rc, AL_DECLINED);
        assert_int_equal(f.c->refusal.status, 502);
        assert_string_equal(f.c->refusal.reason, "compressed_response");
        assert_int_equal(f.c->refusal.upstream, 1);
        assert_string_equal(f.c->x->resp_refusal, "compressed_response");
        assert_int_equal(f.c->x->resp_started, 0);
        assert_int_equal(al_bufq_len(&f.c->cl.out), 0);
        pxf_free(&f);
    }
}

/* A 304 / HEAD answer has no body: only its head is redacted; a
 * compressed coding on it does not matter. */
static void
test_resp_nobody_redacted(void **state)
{
    static const char resp[] = "HTTP/1.1 304 Not Modified\r\nETag: \"" TOK_VAL "\"\r\n"
                               "Content-Encoding: br\r\n\r\n";
    struct pxf        f;
    int               rc;

    (void)state;
    t_exchange(&f);
    assert_int_equal(t_resp(&f, resp, strlen(resp), &rc), HPE_PAUSED);
    assert_int_equal(rc, AL_OK);
    pxf_expect_q(&f.c->cl.out, "HTTP/1.1 304 Not Modified\r\nETag: \"" TOK_PH
                               "\"\r\nContent-Encoding: br\r\n\r\n");
    pxf_free(&f);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chain_runner),
        cmocka_unit_test(test_head_in_scope),
        cmocka_unit_test(test_head_no_secret_host),
        cmocka_unit_test(test_head_out_of_scope),
        cmocka_unit_test(test_head_other_refusals),
        cmocka_unit_test(test_head_rule_inject_list),
        cmocka_unit_test(test_body_substituted),
        cmocka_unit_test(test_body_refused),
        cmocka_unit_test(test_body_hold_cap),
        cmocka_unit_test(test_body_plain),
        cmocka_unit_test(test_resp_redacted),
        cmocka_unit_test(test_resp_clean_head),
        cmocka_unit_test(test_resp_gzip),
        cmocka_unit_test(test_resp_compressed_refused),
        cmocka_unit_test(test_resp_nobody_redacted),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
