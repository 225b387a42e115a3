/*
 * test_px_h1.c - the real HTTP/1.1 codec (proxy/px_h1.c) driven with bytes
 * on a fake connection (tests/unit/px_fake.h), the way the machine drives
 * it: the request parser pauses at the head with the exchange filled
 * (method, target, headers, framing); the head written toward the upstream
 * has the request line, Host from the target, no hop-by-hop header and
 * framing of airlock's own; body pieces are framed into up.out and the
 * message end pauses again; a pipelined request is parsed only after a
 * resume; smuggling shapes are llhttp errors (or caught by the raw head
 * scan). Responses: the parser pauses at each head, the head written
 * toward the client carries framing from the parser's state (length kept,
 * chunked re-chunked, close-delimited chunked for HTTP/1.1 clients and
 * close-delimited for HTTP/1.0 ones), interim answers pass before the
 * final one, 204/304/HEAD answers end with their head, and refused heads
 * say why in x->resp_refusal.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "tests/unit/px_fake.h"

/* ---- requests ------------------------------------------------------------------ */

/* Feeds req up to the head's pause; asserts the pause and the target. The
 * bytes after the head are left in *rest / *rlen. */
static void
t_head(struct pxf *f, const char *req, const char **rest, size_t *rlen)
{
    *rest = req;
    *rlen = strlen(req);
    assert_int_equal(pxf_req_exec(f->c, rest, rlen), HPE_PAUSED);
    assert_non_null(f->c->x);
    assert_int_equal(pxf_on_head(f->c), AL_OK);
}

/* Resumes after a pause and feeds the rest; returns llhttp's answer. */
static llhttp_errno_t
t_resume(struct pxf *f, const char **rest, size_t *rlen)
{
    llhttp_resume(&f->c->rq);
    return pxf_req_exec(f->c, rest, rlen);
}

static const char *
t_hdr(const struct px_msg *m, const char *name)
{
    int i = px_msg_find(m, name, 0);

    if (i < 0)
        return NULL;
    return m->hdrs[i].val == UINT32_MAX ? "" : px_msg_str(m, m->hdrs[i].val);
}

static void
test_req_content_length(void **state)
{
    static const char req[] = "POST http://a.test/up?q=1 HTTP/1.1\r\n"
                              "Host: a.test\r\n"
                              "Content-Length: 0005\r\n"
                              "Connection: keep-alive, X-Hop\r\n"
                              "X-Hop: 1\r\n"
                              "Proxy-Connection: keep-alive\r\n"
                              "Keep-Alive: 300\r\n"
                              "TE: trailers\r\n"
                              "X-Keep: yes\r\n"
                              "\r\n"
                              "hello";
    struct pxf        f;
    const char       *rest;
    size_t            rlen;
    struct px_exch   *x;

    (void)state;
    pxf_init(&f, NULL, NULL);
    t_head(&f, req, &rest, &rlen);
    x = f.c->x;
    /* Paused right after the head: no body byte consumed yet. */
    assert_int_equal(rlen, 5);
    assert_memory_equal(rest, "hello", 5);
    assert_int_equal(f.c->rq.method, HTTP_POST);
    assert_string_equal(px_msg_str(&x->req, x->req.url), "http://a.test/up?q=1");
    assert_int_equal(x->req.nhdrs, 8);
    assert_string_equal(t_hdr(&x->req, "x-keep"), "yes");
    assert_string_equal(t_hdr(&x->req, "content-length"), "0005");
    assert_int_equal(x->req_framing.kind, PX_BODY_LENGTH);
    assert_int_equal(x->req_framing.len, 5);
    assert_int_equal(x->client_keepalive, 1);
    assert_int_equal(x->req_done, 0);
    assert_string_equal(x->target.host, "a.test");
    assert_int_equal(x->target.port, 80);
    assert_string_equal(x->pool_key, "a.test:80");

    assert_int_equal(pxf_request_head(f.c), AL_OK);
    pxf_expect_q(&f.c->up.out, "POST /up?q=1 HTTP/1.1\r\n"
                               "Host: a.test\r\n"
                               "X-Keep: yes\r\n"
                               "Content-Length: 5\r\n"
                               "\r\n");
    assert_ptr_equal(x->req_chain.out, &f.c->up.out);
    assert_int_equal(x->req_chain.chunked, 0);

    assert_int_equal(t_resume(&f, &rest, &rlen), HPE_PAUSED);
    assert_int_equal(rlen, 0);
    assert_int_equal(x->req_done, 1);
    assert_int_equal(x->bytes_up, 5);
    pxf_expect_q(&f.c->up.out, "hello");
    pxf_free(&f);
}

/* A body that arrives one byte per read: each piece goes up as it comes. */
static void
test_req_content_length_split(void **state)
{
    static const char head[] = "PUT http://a.test/p HTTP/1.1\r\nHost: a.test\r\n"
                               "Content-Length: 3\r\n\r\n";
    struct pxf        f;
    const char       *rest;
    size_t            rlen;

    (void)state;
    pxf_init(&f, NULL, NULL);
    t_head(&f, head, &rest, &rlen);
    assert_int_equal(rlen, 0);
    assert_int_equal(pxf_request_head(f.c), AL_OK);
    pxf_expect_q(&f.c->up.out, "PUT /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\n");
    llhttp_resume(&f.c->rq);
    for (int i = 0; i < 2; i++) {
        const char *b = &"xyz"[i];
        size_t      n = 1;

        assert_int_equal(pxf_req_exec(f.c, &b, &n), HPE_OK);
        assert_int_equal(f.c->x->req_done, 0);
    }
    pxf_expect_q(&f.c->up.out, "xy");
    rest = "z";
    rlen = 1;
    assert_int_equal(pxf_req_exec(f.c, &rest, &rlen), HPE_PAUSED);
    assert_int_equal(f.c->x->req_done, 1);
    pxf_expect_q(&f.c->up.out, "z");
    pxf_free(&f);
}

static void
test_req_chunked(void **state)
{
    static const char req[] = "POST http://a.test/c HTTP/1.1\r\n"
                              "Host: other.test\r\n"
                              "Transfer-Encoding: chunked\r\n"
                              "Trailer: X-T\r\n"
                              "\r\n"
                              "5;ext=1\r\nhello\r\n"
                              "1A\r\nabcdefghijklmnopqrstuvwxyz\r\n"
                              "0\r\nX-T: t\r\n\r\n";
    struct pxf        f;
    const char       *rest;
    size_t            rlen;
    struct px_exch   *x;

    (void)state;
    pxf_init(&f, NULL, NULL);
    t_head(&f, req, &rest, &rlen);
    x = f.c->x;
    assert_int_equal(x->req_framing.kind, PX_BODY_CHUNKED);
    assert_int_equal(x->req_chunked, 1);
    assert_int_equal(pxf_request_head(f.c), AL_OK);
    /* Host from the target, not the client's Host; its own chunked framing. */
    pxf_expect_q(&f.c->up.out, "POST /c HTTP/1.1\r\n"
                               "Host: a.test\r\n"
                               "Transfer-Encoding: chunked\r\n"
                               "\r\n");
    assert_int_equal(x->req_chain.chunked, 1);
    assert_int_equal(t_resume(&f, &rest, &rlen), HPE_PAUSED);
    assert_int_equal(rlen, 0);
    assert_int_equal(x->req_done, 1);
    assert_int_equal(x->bytes_up, 31);
    /* Re-chunked from the parsed data: extensions and trailers dropped. */
    pxf_expect_q(&f.c->up.out, "5\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n");
    pxf_free(&f);
}

/* The same chunked request one byte at a time: same bytes out. */
static void
test_req_chunked_bytewise(void **state)
{
    static const char req[] = "POST http://a.test/c HTTP/1.1\r\n"
                              "Transfer-Encoding: chunked\r\n"
                              "\r\n"
                              "5\r\nhello\r\n"
                              "3\r\nabc\r\n"
                              "0\r\n\r\n";
    struct pxf        f;
    size_t            i = 0, n = strlen(req);
    llhttp_errno_t    e = HPE_OK;
    char             *body;

    (void)state;
    pxf_init(&f, NULL, NULL);
    for (; i < n; i++) {
        const char *b = req + i;
        size_t      one = 1;

        e = pxf_req_exec(f.c, &b, &one);
        if (e == HPE_PAUSED)
            break;
        assert_int_equal(e, HPE_OK);
    }
    assert_int_equal(e, HPE_PAUSED);
    assert_int_equal(pxf_on_head(f.c), AL_OK);
    assert_int_equal(pxf_request_head(f.c), AL_OK);
    pxf_expect_q(&f.c->up.out,
                 "POST /c HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n");
    llhttp_resume(&f.c->rq);
    for (i++; i < n; i++) {
        const char *b = req + i;
        size_t      one = 1;

        e = pxf_req_exec(f.c, &b, &one);
        if (e == HPE_PAUSED)
            break;
        assert_int_equal(e, HPE_OK);
    }
    assert_int_equal(e, HPE_PAUSED);
    assert_int_equal(i, n - 1);
    assert_int_equal(f.c->x->req_done, 1);
    body = pxf_take(&f.c->up.out);
    /* One chunk per piece llhttp handed over: a byte each. */
    assert_string_equal(body, "1\r\nh\r\n1\r\ne\r\n1\r\nl\r\n1\r\nl\r\n1\r\no\r\n"
                              "1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n");
    al_free(body);
    pxf_free(&f);
}

/* No body: the message ends with its head (the machine feeds "" after the
 * resume); a non-default port and IPv6 hosts are spelled in Host. */
static void
test_req_no_body(void **state)
{
    static const char *const reqs[][2] = {
        {"GET http://a.test:8080/x?y=%2F HTTP/1.1\r\nHost: a.test:8080\r\nAccept: */*\r\n\r\n",
         "GET /x?y=%2F HTTP/1.1\r\nHost: a.test:8080\r\nAccept: */*\r\n\r\n"},
        {"GET http://[::1]/ HTTP/1.1\r\n\r\n", "GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n"},
        {"DELETE http://10.0.0.1:81 HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
         "DELETE / HTTP/1.1\r\nHost: 10.0.0.1:81\r\nContent-Length: 0\r\n\r\n"},
    };

    (void)state;
    for (size_t k = 0; k < sizeof(reqs) / sizeof(reqs[0]); k++) {
        struct pxf  f;
        const char *rest;
        size_t      rlen;

        pxf_init(&f, NULL, NULL);
        t_head(&f, reqs[k][0], &rest, &rlen);
        assert_int_equal(rlen, 0);
        assert_int_equal(pxf_request_head(f.c), AL_OK);
        pxf_expect_q(&f.c->up.out, reqs[k][1]);
        rest = "";
        assert_int_equal(t_resume(&f, &rest, &rlen), HPE_PAUSED);
        assert_int_equal(f.c->x->req_done, 1);
        assert_int_equal(al_bufq_len(&f.c->up.out), 0);
        pxf_free(&f);
    }
}

/* Two requests in one read: the second is parsed only after the first's
 * message end was resumed (it waits for the first's response). */
static void
test_req_pipelined(void **state)
{
    static const char two[] = "POST http://a.test/1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                              "GET http://b.test/2 HTTP/1.1\r\nConnection: close\r\n\r\n";
    struct pxf        f;
    const char       *rest;
    size_t            rlen;
    struct px_exch   *x;

    (void)state;
    pxf_init(&f, NULL, NULL);
    t_head(&f, two, &rest, &rlen);
    x = f.c->x;
    assert_string_equal(px_msg_str(&x->req, x->req.url), "http://a.test/1");
    assert_int_equal(pxf_request_head(f.c), AL_OK);
    pxf_expect_q(&f.c->up.out, "POST /1 HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\n");
    assert_int_equal(t_resume(&f, &rest, &rlen), HPE_PAUSED);
    assert_int_equal(x->req_done, 1);
    pxf_expect_q(&f.c->up.out, "abc");
    /* The second request is untouched until the machine resumes. */
    assert_int_equal(rlen, strlen(two) - (size_t)(strstr(two, "GET ") - two));
    assert_memory_equal(rest, "GET http://b.test/2", 19);
    assert_string_equal(px_msg_str(&x->req, x->req.url), "http://a.test/1");

    f.c->nreqs++;
    assert_int_equal(t_resume(&f, &rest, &rlen), HPE_PAUSED);
    assert_ptr_equal(f.c->x, x); /* reset, not reallocated */
    assert_int_equal(x->req_done, 0);
    assert_int_equal(x->bytes_up, 0);
    assert_int_equal(x->client_keepalive, 0);
    assert_int_equal(x->req_framing.kind, PX_BODY_NONE);
    assert_string_equal(px_msg_str(&x->req, x->req.url), "http://b.test/2");
    assert_int_equal(rlen, 0);
    assert_int_equal(pxf_on_head(f.c), AL_OK);
    assert_int_equal(pxf_request_head(f.c), AL_OK);
    pxf_expect_q(&f.c->up.out, "GET /2 HTTP/1.1\r\nHost: b.test\r\n\r\n");
    rest = "";
    assert_int_equal(t_resume(&f, &rest, &rlen), HPE_PAUSED);
    assert_int_equal(x->req_done, 1);
    pxf_free(&f);
}

/* A reload between keep-alive requests: the request in progress keeps its
 * snapshot, the next one is parsed and decided under the worker's new one. */
static void
test_req_reload_between_requests(void **state)
{
    static const char two[] =
        "GET http://a.test/1 HTTP/1.1\r\n\r\nGET http://a.test/2 HTTP/1.1\r\n\r\n";
    struct pxf      f;
    struct px_conf *next = al_calloc(1, sizeof(*next));
    const char     *rest;
    size_t          rlen;

    (void)state;
    assert_non_null(next);
    pxf_init(&f, NULL, NULL);
    next->refs = 1;
    next->limits = f.conf->limits;
    next->limits.header_bytes = 1024;
    t_head(&f, two, &rest, &rlen);
    assert_int_equal(pxf_request_head(f.c), AL_OK);
    al_free(pxf_take(&f.c->up.out));
    f.w.conf = next; /* the reload lands mid-request */
    assert_ptr_equal(f.c->conf, f.conf);
    assert_int_equal(t_resume(&f, &rest, &rlen), HPE_PAUSED);
    assert_int_equal(f.c->x->req_done, 1);
    assert_ptr_equal(f.c->conf, f.conf);
    f.c->nreqs++;
    assert_int_equal(t_resume(&f, &rest, &rlen), HPE_PAUSED);
    assert_ptr_equal(f.c->conf, next);
    assert_int_equal(next->refs, 2);
    assert_int_equal(f.conf->refs, 1); /* the connection let go of the old one */
    assert_int_equal(f.c->x->req.buf.max, 1024);
    assert_string_equal(px_msg_str(&f.c->x->req, f.c->x->req.url), "http://a.test/2");
    pxf_free(&f); /* the worker's old reference and the connection's new one */
    px_conf_unref(next);
}

/* A websocket upgrade keeps Upgrade and says "Connection: upgrade"; any
 * other upgrade is a plain request with the upgrade headers dropped. */
static void
test_req_upgrade(void **state)
{
    struct pxf  f;
    const char *rest;
    size_t      rlen;

    (void)state;
    pxf_init(&f, NULL, NULL);
    t_head(&f,
           "GET http://a.test/ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           "Sec-WebSocket-Key: k\r\n\r\n",
           &rest, &rlen);
    assert_int_equal(f.c->x->want_upgrade, 1);
    assert_int_equal(pxf_request_head(f.c), AL_OK);
    pxf_expect_q(&f.c->up.out, "GET /ws HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\n"
                               "Sec-WebSocket-Key: k\r\nConnection: upgrade\r\n\r\n");
    pxf_free(&f);

    pxf_init(&f, NULL, NULL);
    t_head(&f,
           "GET http://a.test/ HTTP/1.1\r\nConnection: Upgrade, HTTP2-Settings\r\n"
           "Upgrade: h2c\r\nHTTP2-Settings: AAA\r\n\r\n",
           &rest, &rlen);
    assert_int_equal(f.c->x->want_upgrade, 0);
    assert_int_equal(pxf_request_head(f.c), AL_OK);
    pxf_expect_q(&f.c->up.out, "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
    pxf_free(&f);
}

/* Feeds req from the start; the head may pause, then the body resumes. */
static llhttp_errno_t
t_req_all(struct pxf *f, const char *req)
{
    const char    *rest = req;
    size_t         rlen = strlen(req);
    llhttp_errno_t e = pxf_req_exec(f->c, &rest, &rlen);

    if (e != HPE_PAUSED)
        return e;
    if (pxf_on_head(f->c) != AL_OK || pxf_request_head(f->c) != AL_OK)
        return HPE_USER;
    return t_resume(f, &rest, &rlen);
}

static void
test_req_errors(void **state)
{
    static const struct {
        const char    *req;
        llhttp_errno_t e;
    } cases[] = {
        /* bad chunk size (in the body, after the head was let through) */
        {"POST http://a.test/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
         HPE_INVALID_CHUNK_SIZE},
        /* chunk size overflow */
        {"POST http://a.test/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
         "fffffffffffffffff\r\n",
         HPE_INVALID_CHUNK_SIZE},
        /* Content-Length and Transfer-Encoding: chunked */
        {"POST http://a.test/ HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
         "0\r\n\r\n",
         HPE_UNEXPECTED_CONTENT_LENGTH},
        {"POST http://a.test/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
         "0\r\n\r\n",
         HPE_UNEXPECTED_CONTENT_LENGTH},
        /* duplicate Content-Length, equal or not */
        {"POST http://a.test/ HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
         HPE_UNEXPECTED_CONTENT_LENGTH},
        {"POST http://a.test/ HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
         HPE_UNEXPECTED_CONTENT_LENGTH},
        /* Content-Length that is not a number */
        {"POST http://a.test/ HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nhello",
         HPE_INVALID_CONTENT_LENGTH},
        {"POST http://a.test/ HTTP/1.1\r\nContent-Length: -1\r\n\r\n", HPE_INVALID_CONTENT_LENGTH},
        /* chunked not last */
        {"POST http://a.test/ HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
         HPE_INVALID_TRANSFER_ENCODING},
        /* bare LF / CR inside a header, a space before the colon */
        {"GET http://a.test/ HTTP/1.1\r\nX-A: a\rb\r\n\r\n", HPE_LF_EXPECTED},
        {"GET http://a.test/ HTTP/1.1\r\nX-A: a\nX-B: b\r\n\r\n", HPE_INVALID_HEADER_TOKEN},
        {"GET http://a.test/ HTTP/1.1\r\nX-A : b\r\n\r\n", HPE_INVALID_HEADER_TOKEN},
        /* a chunk's data not followed by CRLF */
        {"POST http://a.test/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
         HPE_STRICT},
    };

    (void)state;
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        struct pxf     f;
        llhttp_errno_t e;

        pxf_init(&f, NULL, NULL);
        e = t_req_all(&f, cases[k].req);
        if (e != cases[k].e)
            fail_msg("case %zu: %s, want %s (%s)", k, llhttp_errno_name(e),
                     llhttp_errno_name(cases[k].e), llhttp_get_error_reason(&f.c->rq));
        pxf_free(&f);
    }
}

/* obs-fold and a sloppy request line pass llhttp 8.1: the raw head scan
 * the machine runs over the consumed bytes catches them. */
static void
test_req_raw_scan(void **state)
{
    static const char *const bad[] = {
        "GET http://a.test/ HTTP/1.1\r\nX-A: b\r\n c\r\n\r\n",
        "GET http://a.test/ HTTP/1.1\r\nX-A: b\r\n\tc\r\n\r\n",
        "GET  http://a.test/ HTTP/1.1\r\n\r\n",
    };

    (void)state;
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        struct pxf          f;
        struct px_head_scan hs = {0, 0};
        const char         *rest = bad[k];
        size_t              rlen = strlen(bad[k]);
        llhttp_errno_t      e;

        pxf_init(&f, NULL, NULL);
        e = pxf_req_exec(f.c, &rest, &rlen);
        if (e == HPE_PAUSED || e == HPE_OK) {
            if (px_http_head_scan(&hs, bad[k], (size_t)(rest - bad[k])) == NULL)
                fail_msg("case %zu passed llhttp (%s) and the raw scan", k, llhttp_errno_name(e));
        }
        pxf_free(&f);
    }
}

/* A head over header_bytes: the parser stops with the exchange marked. */
static void
test_req_too_big(void **state)
{
    struct pxf     f;
    struct al_dbuf d;
    const char    *rest;
    size_t         rlen;

    (void)state;
    pxf_init(&f, NULL, NULL);
    f.conf->limits.header_bytes = 256;
    al_dbuf_init(&d, 4096);
    assert_int_equal(al_dbuf_adds(&d, "GET http://a.test/ HTTP/1.1\r\nX-Big: "), AL_OK);
    for (int i = 0; i < 300; i++)
        assert_int_equal(al_dbuf_add(&d, "x", 1), AL_OK);
    assert_int_equal(al_dbuf_adds(&d, "\r\n\r\n"), AL_OK);
    rest = d.data;
    rlen = d.len;
    assert_int_equal(pxf_req_exec(f.c, &rest, &rlen), HPE_USER);
    assert_int_equal(f.c->x->req.too_big, 1);
    al_dbuf_free(&d);
    pxf_free(&f);
}

/* ---- responses ----------------------------------------------------------------- */

/* A fake connection whose request (req: a complete message) went up, with
 * the response parser ready. */
static void
t_exchange(struct pxf *f, const char *req)
{
    const char *rest;
    size_t      rlen;

    pxf_init(f, NULL, NULL);
    t_head(f, req, &rest, &rlen);
    assert_int_equal(pxf_request_head(f->c), AL_OK);
    assert_int_equal(t_resume(f, &rest, &rlen), HPE_PAUSED);
    assert_int_equal(f->c->x->req_done, 1);
    al_free(pxf_take(&f->c->up.out));
    px_h1_response_parser(f->c);
}

/* Response bytes in one read; returns llhttp's answer (rc: inject/codec). */
static llhttp_errno_t
t_resp(struct pxf *f, const char *resp, size_t *left)
{
    const char    *at = resp;
    size_t         len = strlen(resp);
    int            rc;
    llhttp_errno_t e = pxf_resp_exec(f->c, &at, &len, &rc);

    assert_int_equal(rc, AL_OK);
    if (left != NULL)
        *left = len;
    return e;
}

static const char t_get[] = "GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n";

static void
test_resp_content_length(void **state)
{
    struct pxf      f;
    size_t          left;
    struct px_exch *x;

    (void)state;
    t_exchange(&f, t_get);
    x = f.c->x;
    assert_int_equal(t_resp(&f,
                            "HTTP/1.1 200 Fine Thanks\r\n"
                            "Content-Length: 0005\r\n"
                            "Connection: keep-alive, X-Hop\r\n"
                            "X-Hop: 1\r\n"
                            "Keep-Alive: timeout=5\r\n"
                            "X-A: 1\r\n"
                            "\r\n"
                            "hello",
                            &left),
                     HPE_PAUSED);
    assert_int_equal(left, 0);
    assert_int_equal(x->resp_done, 1);
    assert_int_equal(x->resp_started, 1);
    assert_int_equal(x->status, 200);
    assert_int_equal(x->upstream_reusable, 1);
    assert_int_equal(x->bytes_down, 5);
    assert_int_equal(f.c->close_after_flush, 0);
    pxf_expect_q(&f.c->cl.out, "HTTP/1.1 200 Fine Thanks\r\n"
                               "X-A: 1\r\n"
                               "Content-Length: 5\r\n"
                               "\r\n"
                               "hello");
    pxf_free(&f);
}

/* The head pauses the parser before any body byte is read: the machine
 * writes the head (and readies filters) before the body flows. */
static void
test_resp_head_pause(void **state)
{
    static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    struct pxf        f;
    const char       *at = resp;
    size_t            len = strlen(resp);
    struct px_exch   *x;

    (void)state;
    t_exchange(&f, t_get);
    x = f.c->x;
    assert_int_equal(llhttp_execute(&f.c->rs, at, len), HPE_PAUSED);
    assert_int_equal(x->resp_head_ready, 1);
    assert_int_equal(x->resp_nobody, 0);
    assert_ptr_equal(llhttp_get_error_pos(&f.c->rs), resp + len - 2);
    assert_int_equal(al_bufq_len(&f.c->cl.out), 0);
    assert_string_equal(t_hdr(&x->resp, "content-length"), "2");
    assert_int_equal(x->resp.hdrs[px_msg_find(&x->resp, "content-length", 0)].drop, 1);
    pxf_free(&f);
}

static void
test_resp_chunked(void **state)
{
    static const char resp[] = "HTTP/1.1 201 Created\r\n"
                               "Transfer-Encoding: chunked\r\n"
                               "\r\n"
                               "5;x=y\r\nhello\r\n"
                               "3\r\nabc\r\n"
                               "0\r\nX-Trailer: 1\r\n\r\n";
    struct pxf        f;
    size_t            left;

    (void)state;
    t_exchange(&f, t_get);
    assert_int_equal(t_resp(&f, resp, &left), HPE_PAUSED);
    assert_int_equal(left, 0);
    assert_int_equal(f.c->x->resp_chunked_out, 1);
    assert_int_equal(f.c->x->resp_done, 1);
    assert_int_equal(f.c->x->upstream_reusable, 1);
    pxf_expect_q(&f.c->cl.out, "HTTP/1.1 201 Created\r\n"
                               "Transfer-Encoding: chunked\r\n"
                               "\r\n"
                               "5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n");
    pxf_free(&f);
}

/* No length: read until the upstream closes; re-framed chunked toward an
 * HTTP/1.1 client (who keeps its connection), the upstream not reused. */
static void
test_resp_close_delimited(void **state)
{
    struct pxf f;
    size_t     left;

    (void)state;
    t_exchange(&f, t_get);
    assert_int_equal(t_resp(&f, "HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nhel", &left), HPE_OK);
    assert_int_equal(t_resp(&f, "lo", &left), HPE_OK);
    assert_int_equal(f.c->x->resp_done, 0);
    assert_int_equal(llhttp_finish(&f.c->rs), HPE_PAUSED); /* the upstream closed */
    assert_int_equal(f.c->x->resp_done, 1);
    assert_int_equal(f.c->x->upstream_reusable, 0);
    assert_int_equal(f.c->x->resp_chunked_out, 1);
    assert_int_equal(f.c->close_after_flush, 0);
    pxf_expect_q(&f.c->cl.out, "HTTP/1.1 200 OK\r\n"
                               "X-A: 1\r\n"
                               "Transfer-Encoding: chunked\r\n"
                               "\r\n"
                               "3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n");
    pxf_free(&f);
}

/* An HTTP/1.0 client can't read chunks: close-delimited, Connection: close. */
static void
test_resp_http10_client(void **state)
{
    struct pxf f;

    (void)state;
    t_exchange(&f, "GET http://a.test/ HTTP/1.0\r\n\r\n");
    assert_int_equal(f.c->x->client_keepalive, 0);
    assert_int_equal(
        t_resp(&f, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
               NULL),
        HPE_PAUSED);
    assert_int_equal(f.c->x->resp_close_delim, 1);
    assert_int_equal(f.c->x->resp_chunked_out, 0);
    assert_int_equal(f.c->close_after_flush, 1);
    pxf_expect_q(&f.c->cl.out, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nok");
    pxf_free(&f);

    /* A length passes as it is; the 1.0 client still gets its close. */
    t_exchange(&f, "GET http://a.test/ HTTP/1.0\r\n\r\n");
    assert_int_equal(t_resp(&f, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", NULL),
                     HPE_PAUSED);
    assert_int_equal(f.c->x->resp_close_delim, 0);
    pxf_expect_q(&f.c->cl.out,
                 "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    pxf_free(&f);
}

/* A client that asked to close, and a draining worker, get Connection: close. */
static void
test_resp_connection_close(void **state)
{
    struct pxf f;

    (void)state;
    t_exchange(&f, "GET http://a.test/ HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_int_equal(t_resp(&f, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", NULL), HPE_PAUSED);
    pxf_expect_q(&f.c->cl.out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    pxf_free(&f);

    t_exchange(&f, t_get);
    f.c->draining = 1;
    assert_int_equal(
        t_resp(&f, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", NULL),
        HPE_PAUSED);
    assert_int_equal(f.c->close_after_flush, 1);
    assert_int_equal(f.c->x->upstream_reusable, 0); /* the upstream said close */
    pxf_expect_q(&f.c->cl.out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    pxf_free(&f);
}

/* 1xx answers pass before the final one, which still can fail (502). */
static void
test_resp_interim(void **state)
{
    static const char resp[] = "HTTP/1.1 100 Continue\r\n\r\n"
                               "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                               "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    struct pxf        f;
    const char       *at = resp;
    size_t            len = strlen(resp);
    int               rc;

    (void)state;
    t_exchange(&f, t_get);
    /* Head by head, as the machine sees them. */
    assert_int_equal(llhttp_execute(&f.c->rs, at, len), HPE_PAUSED);
    assert_int_equal(f.c->x->resp_head_ready, 1);
    assert_int_equal(f.c->x->resp_nobody, 1);
    f.c->x->resp_head_ready = 0;
    assert_int_equal(px_h1_response_head(f.c), AL_OK);
    assert_int_equal(f.c->x->resp_started, 0);
    pxf_expect_q(&f.c->cl.out, "HTTP/1.1 100 Continue\r\n\r\n");
    len -= (size_t)(llhttp_get_error_pos(&f.c->rs) - at);
    at = llhttp_get_error_pos(&f.c->rs);
    llhttp_resume(&f.c->rs);
    assert_int_equal(pxf_resp_exec(f.c, &at, &len, &rc), HPE_PAUSED);
    assert_int_equal(rc, AL_OK);
    assert_int_equal(len, 0);
    assert_int_equal(f.c->x->resp_started, 1);
    assert_int_equal(f.c->x->resp_done, 1);
    assert_int_equal(f.c->x->status, 200);
    assert_int_equal(f.c->x->upstream_reusable, 1);
    pxf_expect_q(&f.c->cl.out, "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                               "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    pxf_free(&f);
}

/* 204 and 304 (and any answer to HEAD) end with their head whatever it
 * says: bytes after it are not read as its body. */
static void
test_resp_no_body(void **state)
{
    static const struct {
        const char *req, *resp, *out;
        size_t      left;
    } cases[] = {
        {t_get, "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
         "HTTP/1.1 204 No Content\r\n\r\n", 5},
        {t_get, "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
         "HTTP/1.1 204 No Content\r\n\r\n", 5},
        {t_get, "HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\nContent-Length: 10\r\n\r\n",
         "HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\nContent-Length: 10\r\n\r\n", 0},
        {"HEAD http://a.test/ HTTP/1.1\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
         "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", 0},
        {"HEAD http://a.test/ HTTP/1.1\r\n\r\n",
         "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.1 200 OK\r\n\r\n", 0},
        {"HEAD http://a.test/ HTTP/1.1\r\n\r\n", "HTTP/1.1 200 OK\r\n\r\n",
         "HTTP/1.1 200 OK\r\n\r\n", 0},
    };

    (void)state;
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        struct pxf f;
        size_t     left;

        t_exchange(&f, cases[k].req);
        assert_int_equal(t_resp(&f, cases[k].resp, &left), HPE_PAUSED);
        assert_int_equal(f.c->x->resp_nobody, 1);
        assert_int_equal(f.c->x->resp_done, 1);
        assert_int_equal(f.c->x->resp_chunked_out, 0);
        assert_int_equal(left, cases[k].left);
        assert_int_equal(f.c->x->bytes_down, 0);
        pxf_expect_q(&f.c->cl.out, cases[k].out);
        pxf_free(&f);
    }
}

/* Refused response heads: llhttp stops with x->resp_refusal saying why,
 * and nothing reached the client. */
static void
test_resp_refused(void **state)
{
    static const struct {
        const char *resp, *reason, *detail;
    } cases[] = {
        {"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello",
         "bad_connection_header", "content-length"},
        {"HTTP/1.1 200 OK\r\nConnection: close, Transfer-Encoding\r\n"
         "Transfer-Encoding: chunked\r\n\r\n",
         "bad_connection_header", "transfer-encoding"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "upstream_transfer_coding",
         NULL},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
         "upstream_transfer_coding", NULL},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
         "upstream_transfer_coding", NULL},
        /* a switch nobody asked for: refused without a reason of its own */
        {"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
         NULL, NULL},
    };

    (void)state;
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        struct pxf     f;
        llhttp_errno_t e;

        t_exchange(&f, t_get);
        e = t_resp(&f, cases[k].resp, NULL);
        if (e == HPE_OK || e == HPE_PAUSED)
            fail_msg("case %zu accepted", k);
        assert_int_equal(e, HPE_CB_HEADERS_COMPLETE);
        if (cases[k].reason == NULL) {
            assert_null(f.c->x->resp_refusal);
        } else {
            assert_non_null(f.c->x->resp_refusal);
            assert_string_equal(f.c->x->resp_refusal, cases[k].reason);
        }
        if (cases[k].detail != NULL) {
            assert_non_null(f.c->x->resp_refusal_detail);
            assert_string_equal(f.c->x->resp_refusal_detail, cases[k].detail);
        }
        assert_int_equal(f.c->x->resp_started, 0);
        assert_int_equal(al_bufq_len(&f.c->cl.out), 0);
        pxf_free(&f);
    }
}

/* Response framing errors llhttp itself refuses. */
static void
test_resp_llhttp_errors(void **state)
{
    static const struct {
        const char    *resp;
        llhttp_errno_t e;
    } cases[] = {
        {"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
         HPE_UNEXPECTED_CONTENT_LENGTH},
        {"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
         HPE_UNEXPECTED_CONTENT_LENGTH},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nq\r\n", HPE_INVALID_CHUNK_SIZE},
        {"HTTP/1.1 2000 OK\r\n\r\n", HPE_INVALID_STATUS},
        {"HTTP/1.1 200 OK\r\nX A: b\r\n\r\n", HPE_INVALID_HEADER_TOKEN},
        {"HTTP/1.1 200 OK\r\nX-A: b\rc\r\n\r\n", HPE_LF_EXPECTED},
        {"HTTP/3.0 200 OK\r\n\r\n", HPE_INVALID_VERSION},
    };

    (void)state;
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        struct pxf     f;
        llhttp_errno_t e;

        t_exchange(&f, t_get);
        e = t_resp(&f, cases[k].resp, NULL);
        if (e != cases[k].e)
            fail_msg("case %zu: %s, want %s", k, llhttp_errno_name(e),
                     llhttp_errno_name(cases[k].e));
        pxf_free(&f);
    }
}

/* A websocket the client asked for: 101 passes with Upgrade and no
 * framing; the bytes after its head are the tunnel's and stay unconsumed.
 * (llhttp answers HPE_PAUSED here, not HPE_PAUSED_UPGRADE, because
 * on_message_complete pauses: the machine drops those bytes; see the
 * report of issue 15's tests. Either answer is accepted here.) */
static void
test_resp_upgrade(void **state)
{
    struct pxf     f;
    const char    *rest;
    size_t         rlen;
    int            rc;
    llhttp_errno_t e;
    const char    *resp = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Accept: a\r\n\r\n\x81\x02hi";
    size_t         len = strlen(resp);

    (void)state;
    pxf_init(&f, NULL, NULL);
    t_head(&f, "GET http://a.test/ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
           &rest, &rlen);
    assert_int_equal(pxf_request_head(f.c), AL_OK);
    al_free(pxf_take(&f.c->up.out));
    rest = "";
    assert_int_equal(t_resume(&f, &rest, &rlen), HPE_PAUSED);
    assert_int_equal(f.c->x->req_done, 1);
    px_h1_response_parser(f.c);
    rest = resp;
    e = pxf_resp_exec(f.c, &rest, &len, &rc);
    assert_true(e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE);
    assert_int_equal(rc, AL_OK);
    assert_int_equal(len, 4); /* the frame after the head is the tunnel's */
    assert_memory_equal(rest, "\x81\x02hi", 4);
    assert_int_equal(f.c->x->status, 101);
    assert_int_equal(f.c->x->resp_done, 1);
    assert_int_equal(f.c->x->upstream_reusable, 0);
    pxf_expect_q(&f.c->cl.out, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                               "Sec-WebSocket-Accept: a\r\nConnection: upgrade\r\n\r\n");
    pxf_free(&f);
}

/* Two responses on one upstream connection (keep-alive): the parser pauses
 * at the first's end, the second waits for a resume. */
static void
test_resp_two_messages(void **state)
{
    static const char two[] = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"
                              "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb";
    struct pxf        f;
    const char       *at = two;
    size_t            len = strlen(two);
    int               rc;

    (void)state;
    t_exchange(&f, t_get);
    assert_int_equal(pxf_resp_exec(f.c, &at, &len, &rc), HPE_PAUSED);
    assert_int_equal(f.c->x->resp_done, 1);
    assert_int_equal(len, strlen(two) / 2);
    pxf_expect_q(&f.c->cl.out, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na");
    pxf_free(&f);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_req_content_length),
        cmocka_unit_test(test_req_content_length_split),
        cmocka_unit_test(test_req_chunked),
        cmocka_unit_test(test_req_chunked_bytewise),
        cmocka_unit_test(test_req_no_body),
        cmocka_unit_test(test_req_pipelined),
        cmocka_unit_test(test_req_reload_between_requests),
        cmocka_unit_test(test_req_upgrade),
        cmocka_unit_test(test_req_errors),
        cmocka_unit_test(test_req_raw_scan),
        cmocka_unit_test(test_req_too_big),
        cmocka_unit_test(test_resp_content_length),
        cmocka_unit_test(test_resp_head_pause),
        cmocka_unit_test(test_resp_chunked),
        cmocka_unit_test(test_resp_close_delimited),
        cmocka_unit_test(test_resp_http10_client),
        cmocka_unit_test(test_resp_connection_close),
        cmocka_unit_test(test_resp_interim),
        cmocka_unit_test(test_resp_no_body),
        cmocka_unit_test(test_resp_refused),
        cmocka_unit_test(test_resp_llhttp_errors),
        cmocka_unit_test(test_resp_upgrade),
        cmocka_unit_test(test_resp_two_messages),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
