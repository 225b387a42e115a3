/*
 * px_admin.c - the admin listener on the main thread's loop:
 * GET /healthz (liveness: the main loop answers), GET /readyz (readiness:
 * 503 with a JSON reason while the audit writer cannot commit or is
 * backlogged, while draining, or while a listener does not accept),
 * GET /metrics (Prometheus text), POST /reload, and the
 * sandbox API: GET /v1/sandboxes, PUT|DELETE /v1/sandboxes/{name}/tool-call.
 * With admin.token_sha256 configured every route but /healthz and /readyz
 * needs "Authorization: Bearer TOKEN". Requests are parsed with
 * llhttp; each connection has a small capped buffer and a 5 s deadline, and
 * is closed after one answer. Nothing here blocks the main loop.
 * px_admin_start also starts the host address watcher (px_ifaddrs.c) on
 * the same loop, whether or not an admin listener is configured.
 */
#include "px.h"
#include "px_ifaddrs.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define PX_ADMIN_MAX_REQ 8192
#define PX_ADMIN_TIMEOUT_S 5.0
/* /readyz says audit_backlog from this queue depth on: three quarters of the
 * admission bound, so a balancer moves traffic before requests are refused. */
#define PX_READY_AUDIT_DEPTH (AUD_DEFAULT_QUEUE_MAX / 4 * 3)

struct px_admin_conn {
    int            fd;
    ev_io          rio, wio;
    ev_timer       timer;
    llhttp_t       parser;
    struct al_dbuf url, out, body, field, auth;
    int            in_auth; /* the header being read is Authorization */
    size_t         sent;
    int            done, method;
};

static int               px_admin_fd = -1;
static px_reload_fn      px_admin_reload;
static void             *px_admin_reload_arg;
static ev_io             px_admin_accept_w;
static ev_timer          px_admin_accept_pause; /* accept ran out of descriptors */
static llhttp_settings_t px_admin_settings;
static struct px_worker *px_admin_workers; /* for /readyz; main thread only */
static int               px_admin_nworkers;
static int               px_admin_draining;

void
px_admin_set_workers(struct px_worker *w, int n)
{
    px_admin_workers = w;
    px_admin_nworkers = n;
}

void
px_admin_set_draining(int on)
{
    px_admin_draining = on;
}

int
px_admin_ready(const char **reason, char *detail, size_t detailsz)
{
    struct px_conf *c;
    uint64_t        open;
    int             maxc;

    if (px_admin_draining) {
        *reason = "draining";
        snprintf(detail, detailsz, "shutting down: finishing requests in progress");
        return AL_DECLINED;
    }
    if (px_audit != NULL) {
        struct aud_stats st;

        if (!aud_writer_healthy(px_audit)) {
            *reason = "audit_unavailable";
            snprintf(detail, detailsz,
                     "the audit writer cannot commit (disk full or database unwritable): "
                     "requests are refused");
            return AL_DECLINED;
        }
        aud_writer_stats(px_audit, &st);
        if (st.depth >= PX_READY_AUDIT_DEPTH) {
            *reason = "audit_backlog";
            snprintf(detail, detailsz, "%llu audit rows wait for their commit (limit %d)",
                     (unsigned long long)st.depth, AUD_DEFAULT_QUEUE_MAX);
            return AL_DECLINED;
        }
    }
    for (int i = 0; i < px_admin_nworkers; i++) {
        if (atomic_load_explicit(&px_admin_workers[i].accept_paused, memory_order_relaxed)) {
            *reason = "listener_paused";
            snprintf(detail, detailsz,
                     "worker %d stopped accepting after accept(2) failed (out of file "
                     "descriptors or memory)",
                     i);
            return AL_DECLINED;
        }
    }
    c = px_conf_current();
    maxc = c != NULL ? c->limits.max_connections : 0;
    px_conf_unref(c);
    open = atomic_load_explicit(&px_metrics.conns_open, memory_order_relaxed);
    if (maxc > 0 && open >= (uint64_t)maxc) {
        *reason = "connection_limit";
        snprintf(detail, detailsz, "%llu client connections open (limits.max_connections %d)",
                 (unsigned long long)open, maxc);
        return AL_DECLINED;
    }
    return AL_OK;
}

static void
px_admin_conn_free(struct ev_loop *loop, struct px_admin_conn *a)
{
    ev_io_stop(loop, &a->rio);
    ev_io_stop(loop, &a->wio);
    ev_timer_stop(loop, &a->timer);
    close(a->fd);
    al_dbuf_free(&a->url);
    al_dbuf_free(&a->out);
    al_dbuf_free(&a->body);
    al_dbuf_free(&a->field);
    al_dbuf_free(&a->auth);
    al_free(a);
}

static int
px_admin_on_url(llhttp_t *p, const char *at, size_t len)
{
    struct px_admin_conn *a = p->data;

    return al_dbuf_add(&a->url, at, len) == AL_OK ? 0 : -1;
}

static int
px_admin_on_field(llhttp_t *p, const char *at, size_t len)
{
    struct px_admin_conn *a = p->data;

    return al_dbuf_add(&a->field, at, len) == AL_OK ? 0 : -1;
}

static int
px_admin_on_field_done(llhttp_t *p)
{
    struct px_admin_conn *a = p->data;

    a->in_auth = a->field.data != NULL && strcasecmp(a->field.data, "authorization") == 0;
    al_dbuf_reset(&a->field);
    return 0;
}

static int
px_admin_on_value(llhttp_t *p, const char *at, size_t len)
{
    struct px_admin_conn *a = p->data;

    if (!a->in_auth)
        return 0;
    return al_dbuf_add(&a->auth, at, len) == AL_OK ? 0 : -1;
}

static int
px_admin_on_body(llhttp_t *p, const char *at, size_t len)
{
    struct px_admin_conn *a = p->data;

    return al_dbuf_add(&a->body, at, len) == AL_OK ? 0 : -1;
}

static int
px_admin_on_complete(llhttp_t *p)
{
    struct px_admin_conn *a = p->data;

    a->done = 1;
    a->method = p->method;
    return HPE_PAUSED;
}

static const char *
px_admin_status_text(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 422:
        return "Unprocessable Content";
    case 401:
        return "Unauthorized";
    case 503:
        return "Service Unavailable";
    default:
        return "Bad Request";
    }
}

static void
px_admin_respond(struct px_admin_conn *a, int status, const char *ctype, const struct al_dbuf *body)
{
    al_dbuf_addf(&a->out,
                 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                 "Connection: close\r\n\r\n",
                 status, px_admin_status_text(status), ctype, body ? body->len : 0);
    if (body != NULL && body->len > 0)
        al_dbuf_add(&a->out, body->data, body->len);
}

/* /healthz stays 200 whatever the fleet sink does (rows wait in the local
 * file); it says how the sink is doing. Never the connection string. */
static void
px_admin_sink_state(struct al_dbuf *body)
{
    struct aud_sink_stats ss;

    aud_writer_sink_stats(px_audit, &ss);
    if (ss.configured)
        al_dbuf_addf(body, "audit_sink: %s instance=%s lag_rows=%llu shipped_id=%lld\n",
                     ss.up ? "up" : "down", ss.instance, (unsigned long long)ss.lag,
                     (long long)ss.shipped_id);
}

/* "Authorization: Bearer TOKEN" against admin.token_sha256, when configured. */
static int
px_admin_authorized(const struct px_admin_conn *a, const struct px_conf *c)
{
    const char *v = a->auth.data;

    if (c->admin_token_sha256[0] == '\0')
        return 1;
    if (v == NULL || strncasecmp(v, "Bearer ", 7) != 0)
        return 0;
    return pol_ident_token_ok(v + 7, strlen(v + 7), c->admin_token_sha256);
}

/* PUT/DELETE /v1/sandboxes/{name}/tool-call */
static void
px_admin_tool_call(struct px_admin_conn *a, const struct px_conf *c, const char *name,
                   struct al_dbuf *body)
{
    cJSON       *j = NULL;
    const cJSON *sess, *call;
    const char  *bad = NULL;

    if (px_conf_sandbox(c, name) == NULL) {
        al_dbuf_adds(body, "{\"error\":\"unknown sandbox\"}\n");
        px_admin_respond(a, 404, "application/json", body);
        return;
    }
    if (a->method == HTTP_DELETE) {
        px_tags_set(name, "", "");
        al_dbuf_adds(body, "{\"ok\":true}\n");
        px_admin_respond(a, 200, "application/json", body);
        return;
    }
    if (a->method != HTTP_PUT) {
        al_dbuf_adds(body, "{\"error\":\"use PUT or DELETE\"}\n");
        px_admin_respond(a, 405, "application/json", body);
        return;
    }
    j = cJSON_ParseWithLength(a->body.data ? a->body.data : "", a->body.len);
    sess = cJSON_GetObjectItemCaseSensitive(j, "session");
    call = cJSON_GetObjectItemCaseSensitive(j, "tool_call");
    if (!cJSON_IsObject(j))
        bad = "body must be a JSON object {\"session\", \"tool_call\"}";
    else if (!cJSON_IsString(call) ||
             !pol_ident_tag_valid(call->valuestring, strlen(call->valuestring), POL_TAG_MAX_BYTES))
        bad = "tool_call must be 1-128 of [A-Za-z0-9._:-]";
    else if (sess != NULL && (!cJSON_IsString(sess) ||
                              (sess->valuestring[0] != '\0' &&
                               !pol_ident_tag_valid(sess->valuestring, strlen(sess->valuestring),
                                                    POL_TAG_MAX_BYTES))))
        bad = "session must be 1-128 of [A-Za-z0-9._:-]";
    if (bad != NULL) {
        al_dbuf_addf(body, "{\"error\":\"%s\"}\n", bad);
        px_admin_respond(a, 400, "application/json", body);
    } else if (px_tags_set(name, sess != NULL ? sess->valuestring : "", call->valuestring) !=
               AL_OK) {
        al_dbuf_adds(body, "{\"error\":\"no memory\"}\n");
        px_admin_respond(a, 500, "application/json", body);
    } else {
        al_dbuf_adds(body, "{\"ok\":true}\n");
        px_admin_respond(a, 200, "application/json", body);
    }
    cJSON_Delete(j);
}

/* A JSON string's contents: " \ and control characters escaped. */
static void
px_admin_json_str(struct al_dbuf *b, const char *s)
{
    for (; *s != '\0'; s++) {
        if (*s == '"' || *s == '\\')
            al_dbuf_addf(b, "\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            al_dbuf_addf(b, "\\u%04x", (unsigned char)*s);
        else
            al_dbuf_add(b, s, 1);
    }
}

static void
px_admin_readyz(struct px_admin_conn *a, struct al_dbuf *body)
{
    const char *reason = NULL;
    char        detail[256];

    if (a->method != HTTP_GET) {
        al_dbuf_adds(body, "{\"error\":\"use GET\"}\n");
        px_admin_respond(a, 405, "application/json", body);
        return;
    }
    if (px_admin_ready(&reason, detail, sizeof(detail)) == AL_OK) {
        al_dbuf_adds(body, "{\"ready\":true}\n");
        px_admin_respond(a, 200, "application/json", body);
        return;
    }
    al_dbuf_addf(body, "{\"ready\":false,\"reason\":\"%s\",\"detail\":\"", reason);
    px_admin_json_str(body, detail);
    al_dbuf_adds(body, "\"}\n");
    px_admin_respond(a, 503, "application/json", body);
}

static void
px_admin_route(struct px_admin_conn *a)
{
    struct al_dbuf    body;
    const char       *u = a->url.data ? a->url.data : "";
    struct px_conf   *c = px_conf_current();
    static const char pfx[] = "/v1/sandboxes/", sfx[] = "/tool-call";
    size_t            ul = strlen(u);

    al_dbuf_init(&body, 1 << 20);
    if (strcmp(u, "/healthz") == 0) {
        al_dbuf_adds(&body, "ok\n");
        px_admin_sink_state(&body);
        px_admin_respond(a, a->method == HTTP_GET ? 200 : 405, "text/plain", &body);
    } else if (strcmp(u, "/readyz") == 0) {
        px_admin_readyz(a, &body);
    } else if (!px_admin_authorized(a, c)) {
        al_dbuf_adds(&body, "admin token required\n");
        px_admin_respond(a, 401, "text/plain", &body);
    } else if (strcmp(u, "/reload") == 0) {
        if (a->method != HTTP_POST) {
            al_dbuf_adds(&body, "use POST\n");
            px_admin_respond(a, 405, "text/plain", &body);
        } else if (px_admin_reload(px_admin_reload_arg, &body) == AL_OK) {
            px_admin_respond(a, 200, "text/plain", &body);
        } else {
            px_admin_respond(a, 422, "text/plain", &body);
        }
    } else if (strcmp(u, "/metrics") == 0 && a->method == HTTP_GET) {
        const char *why = NULL;
        char        detail[256];

        px_metrics_render(&body, px_admin_ready(&why, detail, sizeof(detail)) == AL_OK);
        px_admin_respond(a, 200, "text/plain; version=0.0.4", &body);
    } else if (strcmp(u, "/v1/sandboxes") == 0 && a->method == HTTP_GET) {
        px_tags_render(c, &body);
        px_admin_respond(a, 200, "application/json", &body);
    } else if (ul > sizeof(pfx) - 1 + sizeof(sfx) - 1 && strncmp(u, pfx, sizeof(pfx) - 1) == 0 &&
               strcmp(u + ul - (sizeof(sfx) - 1), sfx) == 0 &&
               ul - (sizeof(pfx) - 1) - (sizeof(sfx) - 1) <= POL_SANDBOX_MAX_BYTES) {
        char name[POL_SANDBOX_MAX_BYTES + 1];

        snprintf(name, sizeof(name), "%.*s", (int)(ul - (sizeof(pfx) - 1) - (sizeof(sfx) - 1)),
                 u + sizeof(pfx) - 1);
        px_admin_tool_call(a, c, name, &body);
    } else {
        al_dbuf_adds(&body, "not found\n");
        px_admin_respond(a, 404, "text/plain", &body);
    }
    al_dbuf_free(&body);
    px_conf_unref(c);
}

static void
px_admin_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct px_admin_conn *a = w->data;

    if (revents & EV_READ) {
        char    buf[2048];
        ssize_t n = recv(a->fd, buf, sizeof(buf), 0);

        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n <= 0) {
            px_admin_conn_free(loop, a);
            return;
        }
        if (llhttp_execute(&a->parser, buf, (size_t)n) != HPE_PAUSED || !a->done) {
            if (llhttp_get_errno(&a->parser) != HPE_OK) {
                al_dbuf_reset(&a->out);
                px_admin_respond(a, 400, "text/plain", NULL);
            } else {
                return; /* need more */
            }
        } else {
            px_admin_route(a);
        }
        ev_io_stop(loop, &a->rio);
        ev_io_start(loop, &a->wio);
        return;
    }
    if (revents & EV_WRITE) {
        ssize_t n = send(a->fd, a->out.data + a->sent, a->out.len - a->sent, MSG_NOSIGNAL);

        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n <= 0) {
            px_admin_conn_free(loop, a);
            return;
        }
        a->sent += (size_t)n;
        if (a->sent >= a->out.len)
            px_admin_conn_free(loop, a);
    }
}

static void
px_admin_timeout_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    px_admin_conn_free(loop, t->data);
}

static void
px_admin_accept_resume_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)t;
    (void)revents;
    if (px_admin_fd >= 0)
        ev_io_start(loop, &px_admin_accept_w);
}

static void
px_admin_accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)w;
    (void)revents;
    for (;;) {
        int                   fd = accept4(px_admin_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        struct px_admin_conn *a;

        if (fd < 0) {
            /* Out of descriptors (or memory): the level-triggered listener
             * would fire again at once and spin a core. Rest it, as the
             * workers' listeners do (counted there too). */
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                ev_io_stop(loop, &px_admin_accept_w);
                ev_timer_stop(loop, &px_admin_accept_pause);
                ev_timer_set(&px_admin_accept_pause, PX_ACCEPT_PAUSE_S, 0.);
                ev_timer_start(loop, &px_admin_accept_pause);
            }
            return;
        }
        a = al_calloc(1, sizeof(*a));
        if (a == NULL) {
            close(fd);
            return;
        }
        a->fd = fd;
        al_dbuf_init(&a->url, PX_ADMIN_MAX_REQ);
        al_dbuf_init(&a->body, PX_ADMIN_MAX_REQ);
        al_dbuf_init(&a->field, 256);
        al_dbuf_init(&a->auth, 512);
        al_dbuf_init(&a->out, 4 << 20);
        llhttp_init(&a->parser, HTTP_REQUEST, &px_admin_settings);
        a->parser.data = a;
        ev_io_init(&a->rio, px_admin_io_cb, fd, EV_READ);
        ev_io_init(&a->wio, px_admin_io_cb, fd, EV_WRITE);
        a->rio.data = a->wio.data = a;
        ev_timer_init(&a->timer, px_admin_timeout_cb, PX_ADMIN_TIMEOUT_S, 0.);
        a->timer.data = a;
        ev_io_start(loop, &a->rio);
        ev_timer_start(loop, &a->timer);
    }
}

static const char *
px_admin_addr_text(const struct px_conf *conf, char *out, size_t outsz)
{
    char a[INET6_ADDRSTRLEN] = "?";

    if (conf->admin_addr.ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&conf->admin_addr;

        inet_ntop(AF_INET, &sin->sin_addr, a, sizeof(a));
        snprintf(out, outsz, "%s:%u", a, ntohs(sin->sin_port));
    } else {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&conf->admin_addr;

        inet_ntop(AF_INET6, &sin6->sin6_addr, a, sizeof(a));
        snprintf(out, outsz, "[%s]:%u", a, ntohs(sin6->sin6_port));
    }
    return out;
}

int
px_admin_start(struct ev_loop *loop, const struct px_conf *conf, px_reload_fn reload, void *arg)
{
    int  one = 1;
    char text[80];

    px_admin_reload = reload;
    px_admin_reload_arg = arg;
    /* The main loop also keeps the host's address list for the address
     * guard (wildcard listeners answer on every one of them). */
    if (px_ifaddrs_start(loop) != AL_OK) {
        al_log_err("cannot read the host's addresses (getifaddrs)");
        return AL_ERROR;
    }
    if (!conf->has_admin)
        return AL_OK;
    llhttp_settings_init(&px_admin_settings);
    px_admin_settings.on_url = px_admin_on_url;
    px_admin_settings.on_header_field = px_admin_on_field;
    px_admin_settings.on_header_field_complete = px_admin_on_field_done;
    px_admin_settings.on_header_value = px_admin_on_value;
    px_admin_settings.on_body = px_admin_on_body;
    px_admin_settings.on_message_complete = px_admin_on_complete;
    px_admin_fd = socket(conf->admin_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (px_admin_fd < 0) {
        al_log_err("admin %s: socket: %s", px_admin_addr_text(conf, text, sizeof(text)),
                   strerror(errno));
        return AL_ERROR;
    }
    /* No SO_REUSEPORT: the admin address is this process's alone (a second
     * airlock, or anything else listening there, fails the bind). */
    (void)setsockopt(px_admin_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(px_admin_fd, (const struct sockaddr *)&conf->admin_addr, conf->admin_addrlen) != 0 ||
        listen(px_admin_fd, 64) != 0) {
        int e = errno;

        al_log_err("admin %s: %s", px_admin_addr_text(conf, text, sizeof(text)),
                   e == EADDRINUSE ? "address already in use" : strerror(e));
        close(px_admin_fd);
        px_admin_fd = -1;
        return AL_ERROR;
    }
    ev_io_init(&px_admin_accept_w, px_admin_accept_cb, px_admin_fd, EV_READ);
    ev_timer_init(&px_admin_accept_pause, px_admin_accept_resume_cb, PX_ACCEPT_PAUSE_S, 0.);
    ev_io_start(loop, &px_admin_accept_w);
    al_log_info("admin listener on %s (/healthz, /readyz, /metrics%s)",
                px_admin_addr_text(conf, text, sizeof(text)),
                conf->admin_token_sha256[0] != '\0' ? "; bearer token required" : "");
    return AL_OK;
}

void
px_admin_stop(struct ev_loop *loop)
{
    px_ifaddrs_stop(loop);
    if (px_admin_fd < 0)
        return;
    ev_io_stop(loop, &px_admin_accept_w);
    ev_timer_stop(loop, &px_admin_accept_pause);
    close(px_admin_fd);
    px_admin_fd = -1;
}
