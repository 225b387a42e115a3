/*
 * px_fake.h - a fake worker, configuration snapshot and connection for unit
 * tests that drive the real connection code (px_h1.c, px_filter.c,
 * px_inject.c, px_decide.c, px_pool.c) without sockets: the worker has its
 * own ev_loop, the snapshot holds a policy and secrets loaded with the real
 * loaders, the connection's queues (cl.out toward the client, up.out toward
 * the upstream) collect what the codec writes. The helpers at the bottom do
 * what the machine (px_conn.c) does between a paused head and the bytes it
 * writes, so a test reads like the machine's path through one exchange.
 *
 * Header-only (static functions): each test binary includes it once. A
 * libFuzzer harness includes it without cmocka (tests/fuzz/fuzz_h1_diff.c):
 * the assertions then abort.
 */
#ifndef PX_FAKE_H
#define PX_FAKE_H

#include <arpa/inet.h>
#include <string.h>

#include "proxy/px_phase.h"

/* Without cmocka (a fuzz harness, tests/fuzz/fuzz_h1_diff.c): a failed
 * check aborts, which is what the fuzzer reports. */
#ifndef CMOCKA_H_
#include <stdio.h>
#include <stdlib.h>
#define fail_msg(...) (fprintf(stderr, __VA_ARGS__), fputc('\n', stderr), abort())
#define assert_true(c) ((c) ? (void)0 : abort())
#define assert_non_null(p) assert_true((p) != NULL)
#define assert_int_equal(a, b) assert_true((a) == (b))
#define assert_string_equal(a, b) assert_true(strcmp((a), (b)) == 0)
#endif

/* Not every test uses every helper. */
#define PXF_FN static __attribute__((unused))

struct pxf {
    struct px_worker w;
    struct px_conf  *conf; /* the worker's reference */
    struct px_conn  *c;
};

/* Loads a policy from text (fails the test on errors). */
PXF_FN struct pol_policy *
pxf_policy(const char *text)
{
    struct al_errs     errs;
    struct pol_policy *p;

    al_errs_init(&errs);
    p = pol_load_text("t-policy.json", text, strlen(text), NULL, 0, 0, &errs);
    if (p == NULL)
        fail_msg("policy: %s", errs.text.data);
    al_errs_free(&errs);
    return p;
}

/* Loads secrets from text (explicit placeholders: no key dir). */
PXF_FN struct sec_store *
pxf_secrets(const char *text)
{
    struct al_errs    errs;
    struct sec_store *s;

    al_errs_init(&errs);
    s = sec_load_text("t-secrets.json", text, strlen(text), NULL, &errs);
    if (s == NULL)
        fail_msg("secrets: %s", errs.text.data);
    al_errs_free(&errs);
    return s;
}

/* A fresh connection on f's worker (the previous one, if any, freed). */
PXF_FN void
pxf_conn_free(struct px_conn *c)
{
    if (c == NULL)
        return;
    px_exch_free(c->x);
    al_bufq_free(&c->cl.out);
    al_bufq_free(&c->up.out);
    al_free(c->cin);
    px_conf_unref(c->conf);
    al_free(c);
}

PXF_FN struct px_conn *
pxf_conn_new(struct pxf *f)
{
    static uint64_t     next_id = 1;
    struct px_conn     *c = al_calloc(1, sizeof(*c));
    struct sockaddr_in *sin;

    assert_non_null(c);
    c->id = next_id++;
    c->worker = &f->w;
    c->conf = px_conf_ref(f->conf);
    c->cl.fd = c->up.fd = -1;
    c->cl.pipe[0] = c->cl.pipe[1] = c->up.pipe[0] = c->up.pipe[1] = -1;
    c->cl.conn = c->up.conn = c;
    al_bufq_init(&c->cl.out, PX_BUF_HIGH_BYTES);
    al_bufq_init(&c->up.out, PX_BUF_HIGH_BYTES);
    sin = (struct sockaddr_in *)&c->peer;
    sin->sin_family = AF_INET;
    sin->sin_port = htons(40000);
    sin->sin_addr.s_addr = htonl(0x7f000001); /* 127.0.0.1 */
    px_h1_request_parser(c);
    return c;
}

/*
 * A worker with its own loop and a snapshot holding pol and sec (both
 * owned by the snapshot from now on; either may be NULL), and one
 * connection on it (f->c) with a fresh request parser.
 */
PXF_FN void
pxf_init(struct pxf *f, struct pol_policy *pol, struct sec_store *sec)
{
    struct px_conf *conf = al_calloc(1, sizeof(*conf));

    assert_non_null(conf);
    memset(f, 0, sizeof(*f));
    f->w.loop = ev_loop_new(0);
    assert_non_null(f->w.loop);
    f->w.spare_fd = -1;
    conf->refs = 1;
    conf->limits.max_connections = PX_DEFAULT_MAX_CONNECTIONS;
    conf->limits.header_bytes = PX_DEFAULT_HEADER_BYTES;
    conf->limits.header_timeout_s = PX_DEFAULT_HEADER_TIMEOUT_S;
    conf->limits.idle_timeout_s = PX_DEFAULT_IDLE_TIMEOUT_S;
    conf->limits.connect_timeout_s = PX_DEFAULT_CONNECT_TIMEOUT_S;
    conf->limits.tls_handshake_timeout_s = PX_DEFAULT_TLS_TIMEOUT_S;
    conf->limits.drain_timeout_s = PX_DEFAULT_DRAIN_TIMEOUT_S;
    conf->policy = pol;
    conf->secrets = sec;
    f->conf = conf;
    f->w.conf = conf;
    f->c = pxf_conn_new(f);
}

/* Adds a sandbox (cidr and/or token_sha256 may be NULL) to the snapshot. */
PXF_FN void
pxf_sandbox(struct pxf *f, const char *name, const char *cidr, const char *token_sha256)
{
    struct px_conf    *conf = f->conf;
    struct px_sandbox *sb;

    conf->sandboxes =
        al_realloc(conf->sandboxes, (size_t)(conf->nsandboxes + 1) * sizeof(*conf->sandboxes));
    assert_non_null(conf->sandboxes);
    sb = &conf->sandboxes[conf->nsandboxes++];
    memset(sb, 0, sizeof(*sb));
    sb->name = al_strdup(name);
    if (cidr != NULL) {
        sb->cidrs = al_calloc(1, sizeof(*sb->cidrs));
        assert_int_equal(pol_cidr_parse(cidr, sb->cidrs), AL_OK);
        sb->ncidrs = 1;
    }
    if (token_sha256 != NULL) {
        al_strlcpy(sb->token_sha256, sizeof(sb->token_sha256), token_sha256);
        conf->any_token = 1;
    }
}

PXF_FN void
pxf_free(struct pxf *f)
{
    pxf_conn_free(f->c);
    f->c = NULL;
    px_pool_clear(&f->w);
    sec_dbuf_wipe(&f->w.filter_out);
    px_conf_unref(f->conf);
    ev_loop_destroy(f->w.loop);
}

/* Everything queued in q, taken out, as a NUL-terminated string (al_free it). */
PXF_FN char *
pxf_take(struct al_bufq *q)
{
    struct al_dbuf d;
    const char    *p;
    size_t         n;

    al_dbuf_init(&d, 64 << 20);
    assert_int_equal(al_dbuf_add(&d, "", 0), AL_OK);
    while ((p = al_bufq_peek(q, &n)) != NULL && n > 0) {
        assert_int_equal(al_dbuf_add(&d, p, n), AL_OK);
        al_bufq_skip(q, n);
    }
    return d.data;
}

/* Asserts q holds exactly `want` (and empties it). */
#define pxf_expect_q(q, want)                                                                      \
    do {                                                                                           \
        char *pxf_got_ = pxf_take(q);                                                              \
        assert_string_equal(pxf_got_, want);                                                       \
        al_free(pxf_got_);                                                                         \
    } while (0)

/* ---- the machine's steps, for tests ----------------------------------------- */

/*
 * Feeds the request parser from *at (len bytes). Returns what llhttp
 * returned; *at moves past the bytes consumed (to the pause or the error).
 */
PXF_FN llhttp_errno_t
pxf_req_exec(struct px_conn *c, const char **at, size_t *len)
{
    llhttp_errno_t e = llhttp_execute(&c->rq, *at, *len);
    size_t         used = e == HPE_OK ? *len : (size_t)(llhttp_get_error_pos(&c->rq) - *at);

    assert_true(used <= *len);
    *at += used;
    *len -= used;
    return e;
}

/* As px_conn_http_on_head does for a forward-proxy request: method flags and
 * the absolute-form target into x->target. AL_OK or AL_DECLINED. */
PXF_FN int
pxf_on_head(struct px_conn *c)
{
    struct px_exch *x = c->x;
    struct px_msg  *m = &x->req;
    const char     *err = NULL;

    x->head_done = 1;
    x->is_connect = c->rq.method == HTTP_CONNECT;
    x->is_head = c->rq.method == HTTP_HEAD;
    x->req_chunked = (c->rq.flags & F_CHUNKED) != 0;
    if (x->is_connect) {
        if (px_authority_parse(px_msg_str(m, m->url), m->url_len, 0, &x->target, &err) != AL_OK)
            return AL_DECLINED;
    } else if (px_url_parse_absolute(px_msg_str(m, m->url), m->url_len, &x->target, &err) !=
               AL_OK) {
        return AL_DECLINED;
    }
    if (c->rq.upgrade && !x->is_connect) {
        int u = px_msg_find(m, "upgrade", 0);

        x->want_upgrade =
            u >= 0 && m->hdrs[u].val != UINT32_MAX &&
            al_strcaseeq_n(px_msg_str(m, m->hdrs[u].val), m->hdrs[u].val_len, "websocket");
        if (!x->want_upgrade)
            c->rq.upgrade = 0;
    }
    px_h1_pool_key(&x->target, x->pool_key, sizeof(x->pool_key));
    return AL_OK;
}

/* The connection as accepted on a transparent listener whose original
 * destination was 192.0.2.1:port (origin-form requests, Host names the host). */
PXF_FN void
pxf_transparent(struct px_conn *c, uint16_t port)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)&c->orig_dst;

    memset(&c->orig_dst, 0, sizeof(c->orig_dst));
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    sin->sin_addr.s_addr = htonl(0xc0000201); /* 192.0.2.1 */
    c->has_orig_dst = 1;
    c->mode = PX_LISTEN_TRANSPARENT;
}

/*
 * As px_conn_http_on_head on a plain (not intercepted) connection, every check
 * in its order up to the request head: HTTP/1.x only, the target
 * (absolute-form on a forward listener, origin-form + Host on a transparent
 * one), https and transfer codings other than chunked refused, an upgrade
 * kept for websocket only, px_decide (identity, policy, the path to
 * forward), the Connection header. AL_OK, or AL_DECLINED with c->refusal
 * saying what the machine would answer. A CONNECT is declined too (status
 * 0, "connect"): a tunnel follows it, not a request head.
 */
PXF_FN int
pxf_on_head_checked(struct px_conn *c)
{
    struct px_exch *x = c->x;
    struct px_msg  *m = &x->req;
    const char     *err = NULL;
    const char     *url = px_msg_str(m, m->url);
    int             rc;

    x->head_done = 1;
    if (c->rq.http_major != 1)
        return px_refuse(c, 505, "http_version", NULL);
    x->is_connect = c->rq.method == HTTP_CONNECT;
    x->is_head = c->rq.method == HTTP_HEAD;
    x->req_chunked = (c->rq.flags & F_CHUNKED) != 0;
    if (x->is_connect)
        return px_refuse(c, 0, "connect", "a tunnel follows");
    if (c->mode == PX_LISTEN_TRANSPARENT) {
        rc = px_conn_transparent_target(c, &err);
    } else if (m->url_len > 0 && url[0] == '/') {
        return px_refuse(c, 400, "bad_target", "origin-form request to a forward proxy");
    } else {
        rc = px_url_parse_absolute(url, m->url_len, &x->target, &err);
        if (rc == AL_OK && x->target.tls)
            return px_refuse(c, 501, "https_without_connect", "use CONNECT for https");
    }
    if (rc != AL_OK)
        return px_refuse(c, 400, err != NULL ? err : "bad_target", NULL);
    if (!px_msg_te_chunked_only(m) ||
        ((c->rq.flags & F_TRANSFER_ENCODING) && !(c->rq.flags & F_CHUNKED)))
        return px_refuse(c, 501, "unsupported_transfer_coding", "only chunked is supported");
    if (c->rq.upgrade) {
        int u = px_msg_find(m, "upgrade", 0);

        x->want_upgrade =
            u >= 0 && m->hdrs[u].val != UINT32_MAX &&
            al_strcaseeq_n(px_msg_str(m, m->hdrs[u].val), m->hdrs[u].val_len, "websocket");
        if (!x->want_upgrade)
            c->rq.upgrade = 0;
    }
    px_h1_pool_key(&x->target, x->pool_key, sizeof(x->pool_key));
    if (px_decide(c) != AL_OK)
        return AL_DECLINED;
    if ((err = px_msg_connection_forbidden(m)) != NULL) {
        x->decided = 0;
        return px_refuse(c, 400, "bad_connection_header", err);
    }
    return AL_OK;
}

/* The driver's own request head (px_conn_http_request_head): prepare,
 * inject (with secrets) or write the kept headers, then the codec's head
 * into up.out. */
PXF_FN int
pxf_request_head(struct px_conn *c)
{
    return px_conn_http_request_head(c);
}

/*
 * As px_conn_http_start once a request's head is queued in up.out: a
 * fresh response parser, the request parser resumed and run on no bytes
 * (a request without a body completes now). Returns llhttp's answer
 * (HPE_PAUSED_UPGRADE marks the request done, as the machine does); an
 * error is px_conn_http_parse_error's, which drops up.out with the upstream.
 */
PXF_FN llhttp_errno_t
pxf_req_resume(struct px_conn *c)
{
    llhttp_errno_t e;

    px_h1_response_parser(c);
    llhttp_resume(&c->rq);
    e = llhttp_execute(&c->rq, "", 0);
    if (e == HPE_PAUSED_UPGRADE)
        c->x->req_done = 1;
    return e;
}

/* As px_conn_http_done on a kept-alive connection: the exchange
 * readied for the next request and the request parser resumed. */
PXF_FN void
pxf_next_request(struct px_conn *c)
{
    c->nreqs++;
    px_exch_reset(c->x, c->conf->limits.header_bytes);
    llhttp_resume(&c->rq);
}

/*
 * Response bytes through the response parser as px_conn_http_upstream_readable
 * runs them: at each paused head, px_inject_response (with secrets) then
 * px_h1_response_head, and on. Returns llhttp's last answer, or
 * HPE_USER with *rc set when inject or the codec did not say AL_OK.
 * *at moves past what was consumed.
 */
PXF_FN llhttp_errno_t
pxf_resp_exec(struct px_conn *c, const char **at, size_t *len, int *rc)
{
    struct px_exch *x = c->x;
    llhttp_errno_t  e;

    *rc = AL_OK;
    for (;;) {
        const char *pos;
        size_t      used;

        e = llhttp_execute(&c->rs, *at, *len);
        used = e == HPE_OK ? *len : (size_t)(llhttp_get_error_pos(&c->rs) - *at);
        assert_true(used <= *len);
        pos = *at + used;
        *at = pos;
        *len -= used;
        if (e != HPE_PAUSED || !x->resp_head_ready)
            return e;
        x->resp_head_ready = 0;
        if (c->conf->secrets != NULL)
            *rc = px_inject_response(c);
        if (*rc == AL_OK)
            *rc = px_h1_response_head(c);
        if (*rc != AL_OK)
            return HPE_USER;
        llhttp_resume(&c->rs);
    }
}

#endif
