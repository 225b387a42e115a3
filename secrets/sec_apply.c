/*
 * sec_apply.c - request-head rewriting: scope checks, header templates,
 * placeholder substitution in header values (and inside Basic credentials),
 * path and query, and the refusals that stop a placeholder from leaving
 * where it must not.
 *
 * A placeholder of secret A found at location L toward destination D:
 *   A in scope of D:   cleartext without allow_plaintext -> secret_plaintext;
 *                      L not in A's "in" -> secret_location_not_allowed;
 *                      else substituted (A is then "injected").
 *   D is passthrough:  left as is (inert data).
 *   otherwise:         secret_out_of_scope.
 * The first refusal wins; the caller forwards nothing. Everything written
 * to the output buffers goes through the wipe-on-grow append.
 */
#include "sec_int.h"

#include <openssl/crypto.h>
#include <string.h>

static int
sec_dest_host(const struct sec_dest *d, size_t *hlen)
{
    *hlen = d->host != NULL ? strlen(d->host) : 0;
    return sec_host_is_ip(d->host, *hlen);
}

int
sec_in_scope(const struct sec_store *s, int i, const struct sec_dest *d)
{
    const struct sec_secret *x = &s->secs[i];
    size_t                   hl;
    int                      ip = sec_dest_host(d, &hl);

    if (d->only != 0 && !(d->only >> i & 1))
        return 0; /* the rule that allowed this request injects other secrets */
    for (int k = 0; k < x->nscopes; k++) {
        if (sec_scope_match(&x->scopes[k], d->host, hl, ip, d->port, d->path, d->path_len, 1))
            return 1;
    }
    return 0;
}

int
sec_is_passthrough(const struct sec_store *s, int i, const struct sec_dest *d)
{
    const struct sec_secret *x = &s->secs[i];
    size_t                   hl;
    int                      ip = sec_dest_host(d, &hl);

    for (int k = 0; k < x->npass; k++) {
        if (sec_scope_match(&x->pass[k], d->host, hl, ip, d->port, d->path, d->path_len, 1))
            return 1;
    }
    return 0;
}

/* Secrets whose scope names host:port, on any path. The proxy forces
 * interception and Accept-Encoding: identity toward such a destination, and
 * scrubs its responses of them: that origin may hold their values (sent on an
 * earlier request, or to a path inside a path-restricted scope) and echo one
 * back in a response to any request. */
static uint64_t
sec_host_mask(const struct sec_store *s, const char *host, uint16_t port)
{
    size_t   hl = host != NULL ? strlen(host) : 0;
    int      ip = sec_host_is_ip(host, hl);
    uint64_t m = 0;

    for (int i = 0; s != NULL && i < s->n; i++) {
        for (int k = 0; k < s->secs[i].nscopes; k++) {
            if (sec_scope_match(&s->secs[i].scopes[k], host, hl, ip, port, NULL, 0, 0)) {
                m |= (uint64_t)1 << i;
                break;
            }
        }
    }
    return m;
}

int
sec_any_scope_host(const struct sec_store *s, const char *host, uint16_t port)
{
    return sec_host_mask(s, host, port) != 0;
}

int
sec_placeholder_in_host(const struct sec_store *s, const char *host, size_t n)
{
    for (int i = 0; s != NULL && i < s->n; i++) {
        const char *ph = s->secs[i].placeholder;
        size_t      pl = s->secs[i].ph_len;

        if (ph == NULL || pl == 0 || pl > n)
            continue;
        for (size_t k = 0; k + pl <= n; k++) {
            if (al_strcaseeq_n(host + k, pl, ph))
                return i;
        }
    }
    return -1;
}

static int
sec_refuse(struct sec_result *res, const char *why, int secret)
{
    if (res->refusal == NULL) {
        res->refusal = why;
        res->refusal_secret = secret;
    }
    return AL_DECLINED;
}

/* Verdict for placeholders seen at location loc but not substituted. */
static int
sec_check_seen(const struct sec_store *s, const struct sec_dest *d, uint64_t inscope, uint64_t seen,
               uint64_t substituted, unsigned loc, struct sec_result *res)
{
    uint64_t rest = seen & ~substituted;

    for (int i = 0; rest != 0 && i < s->n; i++) {
        if (!(rest >> i & 1))
            continue;
        if (inscope >> i & 1) {
            if (!d->tls && !s->secs[i].allow_plaintext)
                return sec_refuse(res, SEC_REFUSE_PLAINTEXT, i);
            if (!(s->secs[i].in & loc))
                return sec_refuse(res, SEC_REFUSE_LOCATION, i);
            continue; /* would have been substituted */
        }
        if (sec_is_passthrough(s, i, d))
            continue;
        return sec_refuse(res, SEC_REFUSE_OUT_OF_SCOPE, i);
    }
    return AL_OK;
}

static uint64_t
sec_loc_mask(const struct sec_store *s, uint64_t elig, unsigned loc)
{
    uint64_t m = 0;

    for (int i = 0; i < s->n; i++) {
        if ((elig >> i & 1) && (s->secs[i].in & loc))
            m |= (uint64_t)1 << i;
    }
    return m;
}

/* Strict standard base64 (padding optional) into out; AL_DECLINED if not base64. */
static int
sec_b64_decode(const char *in, size_t n, struct al_dbuf *out)
{
    uint32_t acc = 0;
    int      bits = 0, rc = AL_OK;
    size_t   i;

    while (n > 0 && in[n - 1] == '=')
        n--;
    if (n == 0 || n % 4 == 1)
        return AL_DECLINED;
    for (i = 0; i < n && rc == AL_OK; i++) {
        char     c = in[i];
        unsigned v;

        if (c >= 'A' && c <= 'Z')
            v = (unsigned)(c - 'A');
        else if (c >= 'a' && c <= 'z')
            v = (unsigned)(c - 'a' + 26);
        else if (c >= '0' && c <= '9')
            v = (unsigned)(c - '0' + 52);
        else if (c == '+')
            v = 62;
        else if (c == '/')
            v = 63;
        else
            return AL_DECLINED;
        acc = (acc << 6) | v;
        bits += 6;
        if (bits >= 8) {
            char b = (char)((acc >> (bits - 8)) & 0xff);

            bits -= 8;
            rc = sec_dbuf_add(out, &b, 1);
        }
    }
    acc = 0;
    return rc;
}

/*
 * Runs the placeholder scanner over one header value (with the Basic
 * credentials decoded when present) and appends the result.
 */
static int
sec_apply_value(struct sec_stream *st, const char *v, size_t n, struct al_dbuf *out)
{
    struct al_dbuf dec, sub;
    size_t         sp = 0;
    int            rc = AL_OK;

    al_dbuf_init(&dec, SEC_MAX_VALUE_BYTES * 8);
    al_dbuf_init(&sub, SEC_MAX_VALUE_BYTES * 8);
    while (sp < n && (v[sp] == ' ' || v[sp] == '\t'))
        sp++;
    if (n - sp > 6 && al_strcaseeq_n(v + sp, 5, "basic") && (v[sp + 5] == ' ')) {
        size_t b = sp + 6, e = n;

        while (b < e && v[b] == ' ')
            b++;
        while (e > b && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        rc = sec_b64_decode(v + b, e - b, &dec);
        if (rc == AL_OK) {
            uint64_t rep = st->replaced;

            rc = sec_stream_oneshot(st, dec.data, dec.len, &sub);
            if (rc == AL_OK && st->replaced != rep) {
                rc = sec_dbuf_add(out, v, b);
                if (rc == AL_OK)
                    rc = sec_b64_encode(out, sub.data, sub.len);
                goto out;
            }
        }
        if (rc == AL_ERROR)
            goto out;
        rc = AL_OK;
    }
    rc = sec_stream_oneshot(st, v, n, out);
out:
    sec_dbuf_wipe(&dec);
    sec_dbuf_wipe(&sub);
    return rc;
}

static int
sec_method_is_trace(const char *m)
{
    size_t n = m != NULL ? strlen(m) : 0;

    return al_strcaseeq_n(m, n, "TRACE") || al_strcaseeq_n(m, n, "TRACK");
}

static int
sec_lowest(uint64_t m)
{
    for (int i = 0; i < 64; i++) {
        if (m >> i & 1)
            return i;
    }
    return -1;
}

int
sec_apply_head(const struct sec_store *s, const struct sec_dest *d, const char *method,
               const struct sec_hdr *hdrs, int nhdrs, const char *target, size_t target_len,
               struct al_dbuf *out_headers, struct al_dbuf *out_target, struct sec_result *res)
{
    struct sec_stream st;
    uint64_t          inscope = 0, elig = 0, tmpl = 0, m;
    int               rc = AL_ERROR, st_ok = 0;

    memset(res, 0, sizeof(*res));
    res->refusal_secret = -1;
    for (int i = 0; i < s->n; i++) {
        if (!sec_in_scope(s, i, d))
            continue;
        inscope |= (uint64_t)1 << i;
        if (d->tls || s->secs[i].allow_plaintext)
            elig |= (uint64_t)1 << i;
    }
    if (inscope != 0 && sec_method_is_trace(method)) {
        rc = sec_refuse(res, SEC_REFUSE_TRACE, sec_lowest(inscope));
        goto out;
    }
    /* templates to add: the first eligible secret per header name */
    for (int i = 0; i < s->n; i++) {
        int dup = 0;

        if (!(elig >> i & 1) || s->secs[i].hdr_name == NULL)
            continue;
        for (int j = 0; j < i; j++) {
            if ((tmpl >> j & 1) &&
                al_strcaseeq_n(s->secs[i].hdr_name, s->secs[i].hdr_name_len, s->secs[j].hdr_name))
                dup = 1;
        }
        if (!dup)
            tmpl |= (uint64_t)1 << i;
    }
    res->body_mask = sec_loc_mask(s, elig, SEC_IN_BODY);
    res->ws_mask = sec_loc_mask(s, elig, SEC_IN_WS);
    if (sec_stream_init(&st, s, s->ph_ac, SEC_MODE_SUBST, 0) != AL_OK)
        goto out;
    st_ok = 1;
    for (int h = 0; h < nhdrs; h++) {
        const struct sec_hdr *x = &hdrs[h];
        int                   drop = 0;

        for (int i = 0; i < s->n && !drop; i++) {
            if ((tmpl >> i & 1) && al_strcaseeq_n(x->name, x->name_len, s->secs[i].hdr_name))
                drop = 1;
        }
        if (drop)
            continue;
        if (res->body_mask != 0 && al_strcaseeq_n(x->name, x->name_len, "content-encoding") &&
            !al_strcaseeq_n(x->value, x->value_len, "identity")) {
            rc = sec_refuse(res, SEC_REFUSE_COMPRESSED, sec_lowest(res->body_mask));
            goto out;
        }
        /* header names: never substituted, but checked */
        st.seen = st.replaced = 0;
        st.repl_mask = 0;
        st.mode = SEC_MODE_SUBST;
        if (sec_stream_oneshot(&st, x->name, x->name_len, out_headers) != AL_OK)
            goto out;
        if (sec_check_seen(s, d, inscope, st.seen, 0, 0, res) != AL_OK) {
            rc = AL_DECLINED;
            goto out;
        }
        if (sec_dbuf_add(out_headers, ": ", 2) != AL_OK)
            goto out;
        st.seen = st.replaced = 0;
        st.repl_mask = sec_loc_mask(s, elig, SEC_IN_HEADER);
        if (sec_apply_value(&st, x->value, x->value_len, out_headers) != AL_OK)
            goto out;
        if (sec_check_seen(s, d, inscope, st.seen, st.replaced, SEC_IN_HEADER, res) != AL_OK) {
            rc = AL_DECLINED;
            goto out;
        }
        res->injected |= st.replaced;
        if (sec_dbuf_add(out_headers, "\r\n", 2) != AL_OK)
            goto out;
    }
    /* target: path, then query */
    {
        const char *q = memchr(target, '?', target_len);
        size_t      plen = q != NULL ? (size_t)(q - target) : target_len;

        st.seen = st.replaced = 0;
        st.mode = SEC_MODE_SUBST_PCT;
        st.repl_mask = sec_loc_mask(s, elig, SEC_IN_PATH);
        if (sec_stream_oneshot(&st, target, plen, out_target) != AL_OK)
            goto out;
        if (sec_check_seen(s, d, inscope, st.seen, st.replaced, SEC_IN_PATH, res) != AL_OK) {
            rc = AL_DECLINED;
            goto out;
        }
        res->injected |= st.replaced;
        if (q != NULL) {
            st.seen = st.replaced = 0;
            st.repl_mask = sec_loc_mask(s, elig, SEC_IN_QUERY);
            if (sec_stream_oneshot(&st, q, target_len - plen, out_target) != AL_OK)
                goto out;
            if (sec_check_seen(s, d, inscope, st.seen, st.replaced, SEC_IN_QUERY, res) != AL_OK) {
                rc = AL_DECLINED;
                goto out;
            }
            res->injected |= st.replaced;
        }
    }
    /* templates */
    for (int i = 0; i < s->n; i++) {
        const struct sec_secret *x = &s->secs[i];

        if (!(tmpl >> i & 1))
            continue;
        if (sec_dbuf_add(out_headers, x->hdr_name, x->hdr_name_len) != AL_OK ||
            sec_dbuf_add(out_headers, ": ", 2) != AL_OK ||
            sec_dbuf_add(out_headers, x->hdr_pre, x->hdr_pre_len) != AL_OK ||
            sec_dbuf_add(out_headers, x->value, x->value_len) != AL_OK ||
            sec_dbuf_add(out_headers, x->hdr_post, x->hdr_post_len) != AL_OK ||
            sec_dbuf_add(out_headers, "\r\n", 2) != AL_OK)
            goto out;
        res->injected |= (uint64_t)1 << i;
    }
    m = res->injected | res->body_mask | res->ws_mask | sec_host_mask(s, d->host, d->port);
    res->redact_mask = m;
    rc = AL_OK;
out:
    if (st_ok)
        sec_stream_fini(&st);
    if (rc == AL_ERROR && res->refusal == NULL)
        res->refusal_secret = -1;
    return rc;
}

static int
sec_loc_verdict(const struct sec_store *s, const struct sec_dest *d, uint64_t seen, unsigned loc,
                struct sec_result *res)
{
    uint64_t inscope = 0, elig = 0;

    for (int i = 0; i < s->n; i++) {
        if (!(seen >> i & 1) || !sec_in_scope(s, i, d))
            continue;
        inscope |= (uint64_t)1 << i;
        if (d->tls || s->secs[i].allow_plaintext)
            elig |= (uint64_t)1 << i;
    }
    return sec_check_seen(s, d, inscope, seen, sec_loc_mask(s, elig, loc), loc, res);
}

int
sec_body_verdict(const struct sec_store *s, const struct sec_dest *d, uint64_t seen,
                 struct sec_result *res)
{
    return sec_loc_verdict(s, d, seen, SEC_IN_BODY, res);
}

int
sec_ws_verdict(const struct sec_store *s, const struct sec_dest *d, uint64_t seen,
               struct sec_result *res)
{
    return sec_loc_verdict(s, d, seen, SEC_IN_WS, res);
}
