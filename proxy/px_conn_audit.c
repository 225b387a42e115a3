/*
 * px_conn_audit.c - a connection's audit rows: filled from the exchange as far
 * as it got (plain copies, no printf: this runs per request), handed to the
 * writer once per request (px_conn_audit) or once per tunnel at its close,
 * and, in strict mode, begun and committed before anything goes upstream:
 * the writer thread's commit notice comes back to the worker through a
 * locked list and the worker's ev_async (px_conns_audit_committed). A
 * websocket's row is handed over pending at its 101 in batched mode too
 * (px_conn_ws_audit_begin, no wait) and completed at its close.
 * With "access_log": true the finished row is also logged as one line
 * (px_conn_access_log); off, that costs one test per request.
 */
#include "px_phase.h"
#include "px_ca.h"

#include <stdio.h>
#include <string.h>

#define PX_CPY(field, src) al_strlcpy((field), sizeof(field), (src))

/* Fills an audit row from the request as far as it got. */
void
px_conn_audit_fill(const struct px_conn *c, struct aud_record *r)
{
    const struct px_exch      *x = c->x;
    const struct pol_decision *d = &x->decision;

    r->ts_us = x->start_us;
    r->duration_us = al_now_us() - x->start_us;
    r->conn_id = c->id;
    PX_CPY(r->sandbox, x->sandbox);
    PX_CPY(r->session, x->session);
    PX_CPY(r->tool_call, x->tool_call);
    px_sockaddr_str((const struct sockaddr *)&c->peer, r->client, sizeof(r->client));
    PX_CPY(r->mode, c->mode == PX_LISTEN_FORWARD ? "forward" : "transparent");
    if (c->has_orig_dst)
        px_sockaddr_str((const struct sockaddr *)&c->orig_dst, r->orig_dst, sizeof(r->orig_dst));
    if (x->method_name != NULL) {
        PX_CPY(r->method, x->method_name);
        PX_CPY(r->scheme, x->is_connect ? "connect" : "http");
    } else if (x->head_done) {
        PX_CPY(r->method, llhttp_method_name(c->rq.method));
        PX_CPY(r->scheme, x->is_connect ? "connect" : x->target.tls ? "https" : "http");
    }
    PX_CPY(r->host, x->target.host);
    r->port = x->target.port;
    if (x->fwd_path != NULL)
        PX_CPY(r->path, x->fwd_path);
    else if (x->target.path != NULL && !x->is_connect) {
        size_t slash = x->target.path_needs_slash ? 1 : 0;

        r->path[0] = '/';
        al_strlcpy_n(r->path + slash, sizeof(r->path) - slash, x->target.path,
                     x->target.path_len > 2000 ? 2000 : x->target.path_len);
    }
    PX_CPY(r->upstream, x->upstream_str);
    /* The inputs `policy replay` needs besides the request: the address the
     * guard checked (kept and connected, or the first refused) and the
     * client's SNI where airlock terminated its TLS. */
    if (x->upstream_str[0] != '\0')
        PX_CPY(r->addr, x->upstream_str);
    else if (x->decided && d->refused_addr.ss_family != 0)
        px_sockaddr_str((const struct sockaddr *)&d->refused_addr, r->addr, sizeof(r->addr));
    if (c->cl.ssl != NULL) {
        const char *sni = px_tls_sni(c->cl.ssl);

        if (sni != NULL)
            PX_CPY(r->sni, sni);
    } else if (x->sni[0] != '\0') { /* an opaque tunnel's ClientHello */
        PX_CPY(r->sni, x->sni);
    }
    if (x->decided) {
        PX_CPY(r->decision, pol_verdict_name(d->verdict));
        PX_CPY(r->rule, d->verdict == POL_WOULD_DENY && d->staged_rule ? d->staged_rule : d->rule);
        PX_CPY(r->reason, d->reason);
        if (x->err_reason != NULL && d->verdict != POL_DENY)
            PX_CPY(r->error, x->err_reason);
    } else {
        PX_CPY(r->decision, x->deny ? "deny" : "error");
        PX_CPY(r->reason, x->err_reason ? x->err_reason : "");
        if (!x->deny && x->err_reason != NULL)
            PX_CPY(r->error, x->err_reason);
    }
    if (x->injected != 0 && c->conf->secrets != NULL) {
        size_t n = 0;

        for (int i = 0; i < sec_count(c->conf->secrets) && i < 64; i++) {
            if (!(x->injected & (1ULL << i)))
                continue;
            if (n > 0 && n + 1 < sizeof(r->secrets))
                r->secrets[n++] = ',';
            al_strlcpy(r->secrets + n, sizeof(r->secrets) - n, sec_name(c->conf->secrets, i));
            n += strlen(r->secrets + n);
            if (n + 1 >= sizeof(r->secrets))
                break;
        }
    }
    if (x->ws != NULL) /* a websocket: what flowed each way and how each side closed */
        snprintf(r->detail, sizeof(r->detail),
                 "{\"ws\":{\"messages_up\":%llu,\"messages_down\":%llu,"
                 "\"close_client\":%d,\"close_upstream\":%d}}",
                 (unsigned long long)x->ws->up.msgs, (unsigned long long)x->ws->down.msgs,
                 x->ws->up.close_code, x->ws->down.close_code);
    if (x->secret_refused != NULL)
        snprintf(r->error, sizeof(r->error), "%s: %s", x->err_reason ? x->err_reason : "refused",
                 x->secret_refused);
    r->status = x->status;
    r->bytes_up = (int64_t)x->bytes_up;
    r->bytes_down = (int64_t)x->bytes_down;
}

/* Metrics of one finished request: decision, reason and rule as its row
 * has them (px_conn_audit_fill), its status class and duration. */
static void
px_conn_metrics(const struct px_exch *x, int64_t duration_us)
{
    const struct pol_decision *d = &x->decision;

    if (x->decided)
        px_metrics_request((int)d->verdict, d->reason,
                           d->verdict == POL_WOULD_DENY && d->staged_rule ? d->staged_rule
                                                                          : d->rule,
                           x->status, duration_us);
    else
        px_metrics_request(x->deny ? 1 : 3, x->err_reason ? x->err_reason : "", NULL, x->status,
                           duration_us);
}

/*
 * access_log: one line per finished request, from its audit row, so it
 * carries exactly what the row does (names of secrets, never a value; no
 * header value) and the path without its query.
 */
static void
px_conn_access_log(const struct aud_record *r)
{
    char                path[sizeof(r->path)];
    size_t              n = strcspn(r->path, "?#");
    struct al_log_field f[] = {
        {"sandbox", r->sandbox, 0},
        {"session", r->session, 0},
        {"tool_call", r->tool_call, 0},
        {"client", r->client, 0},
        {"mode", r->mode, 0},
        {"method", r->method, 0},
        {"host", r->host, 0},
        {"port", NULL, r->port},
        {"path", path, 0},
        {"decision", r->decision, 0},
        {"rule", r->rule, 0},
        {"reason", r->reason, 0},
        {"status", NULL, r->status},
        {"bytes_up", NULL, (long long)r->bytes_up},
        {"bytes_down", NULL, (long long)r->bytes_down},
        {"duration_us", NULL, (long long)r->duration_us},
        {"secrets", r->secrets, 0},
        {"error", r->error, 0},
    };

    memcpy(path, r->path, n);
    path[n] = '\0';
    al_log_record("access", f, (int)(sizeof(f) / sizeof(f[0]))); /* whatever log_level says */
}

static void
px_audit_hand_over(struct aud_writer *a, struct aud_record *r, struct aud_row *row)
{
    int rc = row != NULL      ? aud_complete_row(a, r, row)
             : r->row_id != 0 ? aud_complete(a, r)
                              : aud_submit(a, r);

    if (rc == AL_DECLINED)
        PX_MINC(audit_refusals);
}

/*
 * Hands this request's row to the writer, once. `error` describes an abort
 * (client gone, upstream reset mid-response) when there is one.
 */
void
px_conn_audit(struct px_conn *c, const char *error)
{
    struct px_exch    *x = c->x;
    struct aud_record *r;

    if (x == NULL || x->audited || x->start_us == 0)
        return;
    x->audited = 1;
    if (x->decided)
        atomic_fetch_add_explicit(&px_metrics.decisions[x->decision.verdict], 1,
                                  memory_order_relaxed);
    px_tags_count(x->sandbox, x->deny || (x->decided && x->decision.verdict == POL_DENY),
                  x->bytes_up, x->bytes_down);
    px_conn_metrics(x, al_now_us() - x->start_us);
    if (c->worker->rt.audit == NULL && !c->conf->access_log)
        return;
    r = x->rec != NULL ? x->rec : aud_record_new();
    x->rec = NULL;
    if (r == NULL) {
        al_log_err("conn %llu: audit row lost: out of memory", (unsigned long long)c->id);
        return;
    }
    px_conn_audit_fill(c, r);
    if (error != NULL && r->error[0] == '\0')
        snprintf(r->error, sizeof(r->error), "%s", error);
    if (c->conf->access_log)
        px_conn_access_log(r);
    if (c->worker->rt.audit != NULL)
        px_audit_hand_over(c->worker->rt.audit, r, x->aud_row);
    else
        aud_record_free(r);
    x->aud_row = NULL; /* handed over with r */
}

/* A tunnel's row is written when it closes, with its bytes and duration. */
void
px_conn_tunnel_audit_open(struct px_conn *c)
{
    struct px_exch *x = c->x;

    x->audited = 1;
    if (x->decided)
        atomic_fetch_add_explicit(&px_metrics.decisions[x->decision.verdict], 1,
                                  memory_order_relaxed);
    px_conn_metrics(x, al_now_us() - x->start_us);
    if (c->worker->rt.audit == NULL && !c->conf->access_log)
        return;
    c->trec = x->rec != NULL ? x->rec : aud_record_new();
    x->rec = NULL;
    if (c->trec == NULL) {
        al_log_err("conn %llu: audit row lost: out of memory", (unsigned long long)c->id);
        return;
    }
    px_conn_audit_fill(c, c->trec);
    c->tun_start_us = x->start_us;
    c->tun_up = x->bytes_up;
    c->tun_down = x->bytes_down;
}

void
px_conn_tunnel_audit_close(struct px_conn *c, const char *why)
{
    struct aud_record *r = c->trec;

    if (r == NULL)
        return;
    c->trec = NULL;
    r->duration_us = al_now_us() - c->tun_start_us;
    r->bytes_up = (int64_t)c->tun_up;
    r->bytes_down = (int64_t)c->tun_down;
    if (why != NULL && strcmp(why, "tunnel done") != 0)
        snprintf(r->error, sizeof(r->error), "%s", why);
    px_tags_count(r->sandbox, 0, c->tun_up, c->tun_down);
    if (c->conf->access_log)
        px_conn_access_log(r);
    if (c->worker->rt.audit != NULL)
        px_audit_hand_over(c->worker->rt.audit, r, NULL);
    else
        aud_record_free(r);
}

/* Writer thread: a strict row committed (or failed); bounce to the worker.
 * The notice lives in the connection (one begin at a time, and the begin's
 * reference keeps the connection alive until the worker has read it). */
static void
px_conn_audit_done(void *arg, int ok, int64_t row_id)
{
    struct px_conn     *c = arg;
    struct px_worker   *w = c->worker;
    struct px_aud_done *d = &c->aud_done;

    d->conn = c;
    d->ok = ok;
    d->row_id = row_id;
    pthread_mutex_lock(&w->done_lock);
    d->next = w->done_head;
    w->done_head = d;
    pthread_mutex_unlock(&w->done_lock);
    ev_async_send(w->loop, &w->wake);
}

/*
 * Strict durability: the row exists, committed with synchronous=FULL, before
 * a single byte of the request goes upstream. Returns AL_AGAIN while the
 * commit is pending (the machine waits in PX_ST_AUDIT for
 * px_conn_audit_committed), AL_DECLINED (503) when the row can't be begun.
 */
int
px_conn_audit_begin(struct px_conn *c)
{
    struct px_exch *x = c->x;
    int             rc;

    if (c->aud_waiting) /* cannot happen: the machine waits in PX_ST_AUDIT */
        return px_refuse(c, 503, "audit_unavailable", "audit commit already pending");
    x->rec = aud_record_new();
    if (x->rec == NULL)
        return px_refuse(c, 503, "audit_unavailable", "out of memory");
    px_conn_audit_fill(c, x->rec);
    c->aud_waiting = 1;
    rc = aud_begin_held(c->worker->rt.audit, x->rec, px_conn_audit_done, c);
    if (rc != AL_OK) {
        c->aud_waiting = 0;
        aud_record_free(x->rec);
        x->rec = NULL;
        PX_MINC(audit_refusals);
        return px_refuse(c, 503, rc == AL_DECLINED ? "audit_backlog" : "audit_unavailable", NULL);
    }
    c->worker->aud_held = 1; /* released when this loop iteration ends */
    return AL_AGAIN;
}

/*
 * A websocket's row exists from its 101 on, so a crash or a kill while the
 * socket is open leaves it (pending), as strict mode's begun row does: in
 * batched durability it is handed to the writer now and lands with the next
 * batch (the loop does not wait), and the close completes that same row
 * through the handle (px_conn_audit). Strict mode began the row before the
 * upgrade left: nothing to do. A writer that refuses (backlog, failing)
 * fails the socket closed as a refused strict begin fails its request: no
 * frame moves unaudited; the row is then written at the close as usual.
 */
int
px_conn_ws_audit_begin(struct px_conn *c)
{
    struct px_exch    *x = c->x;
    struct aud_record *r;
    int                rc;

    if (c->worker->rt.audit == NULL || x->aud_row != NULL ||
        (x->rec != NULL && x->rec->row_id != 0))
        return AL_OK;
    r = aud_record_new();
    if (r == NULL) {
        rc = AL_ERROR;
    } else {
        px_conn_audit_fill(c, r);
        r->detail[0] = '\0'; /* what flowed: at the close */
        rc = aud_begin_nowait(c->worker->rt.audit, r, &x->aud_row);
    }
    if (rc == AL_OK)
        return AL_OK;
    PX_MINC(audit_refusals);
    x->err_reason = rc == AL_DECLINED ? "audit_backlog" : "audit_unavailable";
    return AL_DECLINED;
}

/* ev_prepare: the loop is about to poll, so every strict begin this
 * iteration queued is in: one group commit for all of them. */
void
px_worker_audit_release(struct ev_loop *loop, ev_prepare *p, int revents)
{
    struct px_worker *w = p->data;

    (void)loop;
    (void)revents;
    if (w->aud_held) {
        w->aud_held = 0;
        aud_release(w->rt.audit);
    }
}
