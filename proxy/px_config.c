/*
 * px_config.c - the daemon's configuration file (DESIGN "Files and formats").
 *
 * The JSON is checked against small per-section key tables: unknown keys and
 * wrong types are errors with file:line:col and the JSON path, and every
 * problem is reported before failing. The result is one immutable,
 * refcounted snapshot (struct px_conf); reload builds a new one and swaps
 * the current pointer under a mutex, so no reader ever sees a half-built
 * config and a failed reload changes nothing.
 */
#include "px.h"

#include <arpa/inet.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

const char px_conf_default_json[] =
    "{\n"
    "  \"listen\": [{\"addr\": \"127.0.0.1:3128\", \"mode\": \"forward\"}],\n"
    "  \"admin\": \"127.0.0.1:9180\",\n"
    "  \"policy\": \"etc/policy.json\",\n"
    "  \"audit\": {\"db\": \"var/audit.db\"}\n"
    "}\n";

static pthread_mutex_t px_conf_lock = PTHREAD_MUTEX_INITIALIZER;
static struct px_conf *px_conf_cur;

struct px_conf *
px_conf_ref(struct px_conf *c)
{
    if (c != NULL)
        atomic_fetch_add(&c->refs, 1);
    return c;
}

void
px_conf_unref(struct px_conf *c)
{
    if (c == NULL || atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    al_free(c->path);
    al_free(c->policy_path);
    al_free(c->secrets_path);
    al_free(c->ca_dir);
    al_free(c->upstream_ca);
    al_free(c->audit_db);
    al_free(c->user);
    if (c->audit_sink_postgres != NULL)
        explicit_bzero(c->audit_sink_postgres, strlen(c->audit_sink_postgres));
    al_free(c->audit_sink_postgres);
    al_free(c->audit_sink_instance);
    for (int i = 0; i < c->noverrides; i++) {
        al_free((char *)(uintptr_t)c->overrides[i].name);
        al_free((char *)(uintptr_t)c->overrides[i].addr);
    }
    al_free(c->overrides);
    for (int i = 0; i < c->ndns_servers; i++)
        al_free(c->dns_servers[i]);
    al_free(c->dns_servers);
    for (int i = 0; i < c->nsandboxes; i++) {
        al_free(c->sandboxes[i].name);
        al_free(c->sandboxes[i].cidrs);
    }
    al_free(c->sandboxes);
    pol_policy_unref(c->policy);
    sec_store_unref(c->secrets);
    al_free(c);
}

struct px_conf *
px_conf_current(void)
{
    struct px_conf *c;

    pthread_mutex_lock(&px_conf_lock);
    c = px_conf_ref(px_conf_cur);
    pthread_mutex_unlock(&px_conf_lock);
    return c;
}

void
px_conf_set_current(struct px_conf *c)
{
    struct px_conf *old;

    pthread_mutex_lock(&px_conf_lock);
    old = px_conf_cur;
    px_conf_cur = c;
    pthread_mutex_unlock(&px_conf_lock);
    px_conf_unref(old);
}

int
px_parse_sockaddr(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
    struct px_target t;
    const char      *err = NULL;

    memset(ss, 0, sizeof(*ss));
    if (px_authority_parse(s, strlen(s), 0, &t, &err) != AL_OK)
        return AL_ERROR;
    if (t.kind == PX_HOST_IPV4) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;

        sin->sin_family = AF_INET;
        sin->sin_port = htons(t.port);
        if (inet_pton(AF_INET, t.host, &sin->sin_addr) != 1)
            return AL_ERROR;
        *len = sizeof(*sin);
        return AL_OK;
    }
    if (t.kind == PX_HOST_IPV6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(t.port);
        if (inet_pton(AF_INET6, t.host, &sin6->sin6_addr) != 1)
            return AL_ERROR;
        *len = sizeof(*sin6);
        return AL_OK;
    }
    return AL_ERROR; /* names are not accepted for listening addresses */
}

/* Writes v in decimal (no NUL); returns the number of digits. */
static size_t
px_u32_str(char *out, uint32_t v)
{
    char   tmp[10];
    size_t n = 0;

    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

void
px_sockaddr_str(const struct sockaddr *sa, char *out, size_t outsz)
{
    char ip[INET6_ADDRSTRLEN];

    if (outsz == 0)
        return;
    if (sa->sa_family == AF_INET) {
        /* Per request (audit rows): digits by hand, no printf machinery. */
        const struct sockaddr_in *sin = (const struct sockaddr_in *)(const void *)sa;
        const unsigned char      *a = (const unsigned char *)&sin->sin_addr;
        char                      tmp[sizeof("255.255.255.255:65535")];
        size_t                    n = 0;

        for (int i = 0; i < 4; i++) {
            n += px_u32_str(tmp + n, a[i]);
            tmp[n++] = i < 3 ? '.' : ':';
        }
        n += px_u32_str(tmp + n, ntohs(sin->sin_port));
        if (n >= outsz)
            n = outsz - 1;
        memcpy(out, tmp, n);
        out[n] = '\0';
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)(const void *)sa;

        inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
        snprintf(out, outsz, "[%s]:%u", ip, ntohs(sin6->sin6_port));
    } else {
        snprintf(out, outsz, "?");
    }
}

void
px_raise_nofile(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int
px_conf_user_lookup(const char *name, uid_t *uid, gid_t *gid)
{
    struct passwd pw, *res = NULL;
    char          buf[16384];

    if (getpwnam_r(name, &pw, buf, sizeof(buf), &res) != 0 || res == NULL)
        return AL_ERROR;
    if (uid != NULL)
        *uid = pw.pw_uid;
    if (gid != NULL)
        *gid = pw.pw_gid;
    return AL_OK;
}

/* ---- typed getters that report wrong types with a location ------------ */

struct px_cfgctx {
    struct al_errs       *errs;
    const struct al_json *doc;
};

static void
px_cfg_path(char *out, size_t outsz, const char *parent, const char *key)
{
    snprintf(out, outsz, "%s%s%s", parent, parent[0] ? "." : "", key);
}

static const cJSON *
px_cfg_get(struct px_cfgctx *x, const cJSON *obj, const char *parent, const char *key, int type,
           const char *tname)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    char         p[256];

    if (v == NULL || cJSON_IsNull(v))
        return NULL;
    if ((v->type & 0xff) != type && !(type == cJSON_True && cJSON_IsBool(v))) {
        px_cfg_path(p, sizeof(p), parent, key);
        al_json_err(x->errs, x->doc, p, "expected %s", tname);
        return NULL;
    }
    return v;
}

static char *
px_cfg_string(struct px_cfgctx *x, const cJSON *obj, const char *parent, const char *key)
{
    const cJSON *v = px_cfg_get(x, obj, parent, key, cJSON_String, "a string");
    char         p[256];

    if (v == NULL)
        return NULL;
    if (v->valuestring[0] == '\0') {
        px_cfg_path(p, sizeof(p), parent, key);
        al_json_err(x->errs, x->doc, p, "must not be empty");
        return NULL;
    }
    return al_strdup(v->valuestring);
}

/* Path-valued keys resolve against the config file's folder. */
static char *
px_cfg_pathval(struct px_cfgctx *x, const cJSON *obj, const char *parent, const char *key,
               const char *cfgpath)
{
    char *s = px_cfg_string(x, obj, parent, key);
    char *r;

    if (s == NULL)
        return NULL;
    r = al_path_join_dir(cfgpath, s);
    al_free(s);
    return r;
}

static void
px_cfg_int(struct px_cfgctx *x, const cJSON *obj, const char *parent, const char *key, long min,
           long max, int *out)
{
    const cJSON *v = px_cfg_get(x, obj, parent, key, cJSON_Number, "an integer");
    char         p[256];

    if (v == NULL)
        return;
    px_cfg_path(p, sizeof(p), parent, key);
    if (v->valuedouble != (double)(long)v->valuedouble || v->valuedouble < (double)min ||
        v->valuedouble > (double)max) {
        al_json_err(x->errs, x->doc, p, "expected an integer in [%ld, %ld]", min, max);
        return;
    }
    *out = (int)v->valuedouble;
}

static void
px_cfg_bool(struct px_cfgctx *x, const cJSON *obj, const char *parent, const char *key, int *out)
{
    const cJSON *v = px_cfg_get(x, obj, parent, key, cJSON_True, "true or false");

    if (v != NULL)
        *out = cJSON_IsTrue(v);
}

static void
px_cfg_listen(struct px_cfgctx *x, struct px_conf *c, const cJSON *arr)
{
    static const char *const keys[] = {"addr", "mode", NULL};
    const cJSON             *it;
    int                      i = 0;

    if (!cJSON_IsArray(arr)) {
        al_json_err(x->errs, x->doc, "listen", "expected an array of {addr, mode}");
        return;
    }
    cJSON_ArrayForEach (it, arr) {
        char                   p[64], pa[80];
        const cJSON           *addr, *mode;
        struct px_listen_conf *l;

        snprintf(p, sizeof(p), "listen[%d]", i);
        i++;
        if (!cJSON_IsObject(it)) {
            al_json_err(x->errs, x->doc, p, "expected an object");
            continue;
        }
        al_json_check_keys(x->errs, x->doc, it, p, keys);
        if (c->nlisten >= PX_MAX_LISTENERS) {
            al_json_err(x->errs, x->doc, p, "at most %d listeners", PX_MAX_LISTENERS);
            continue;
        }
        l = &c->listen[c->nlisten];
        addr = px_cfg_get(x, it, p, "addr", cJSON_String, "a string \"ip:port\"");
        mode = px_cfg_get(x, it, p, "mode", cJSON_String, "a string");
        snprintf(pa, sizeof(pa), "%s.addr", p);
        if (addr == NULL) {
            if (cJSON_GetObjectItemCaseSensitive(it, "addr") == NULL)
                al_json_err(x->errs, x->doc, p, "missing \"addr\"");
            continue;
        }
        if (px_parse_sockaddr(addr->valuestring, &l->addr, &l->addrlen) != AL_OK) {
            al_json_err(x->errs, x->doc, pa, "expected \"ip:port\" or \"[ipv6]:port\", got \"%s\"",
                        addr->valuestring);
            continue;
        }
        snprintf(l->text, sizeof(l->text), "%s", addr->valuestring);
        l->mode = PX_LISTEN_FORWARD;
        if (mode != NULL) {
            snprintf(pa, sizeof(pa), "%s.mode", p);
            if (strcmp(mode->valuestring, "forward") == 0)
                l->mode = PX_LISTEN_FORWARD;
            else if (strcmp(mode->valuestring, "transparent") == 0)
                l->mode = PX_LISTEN_TRANSPARENT;
            else {
                al_json_err(x->errs, x->doc, pa, "expected \"forward\" or \"transparent\"");
                continue;
            }
        }
        c->nlisten++;
    }
}

static void
px_cfg_resolve(struct px_cfgctx *x, struct px_conf *c, const cJSON *obj)
{
    const cJSON *it;
    int          n = cJSON_GetArraySize(obj);

    c->overrides = al_calloc((size_t)n + 1, sizeof(*c->overrides));
    if (c->overrides == NULL) {
        al_errs_add(x->errs, "out of memory");
        return;
    }
    cJSON_ArrayForEach (it, obj) {
        char              p[300], host[PX_HOST_MAX + 1];
        enum px_host_kind kind;
        const char       *err = NULL;
        unsigned char     tmp[16];

        snprintf(p, sizeof(p), "resolve.%s", it->string);
        if (!cJSON_IsString(it)) {
            al_json_err(x->errs, x->doc, p, "expected an IP address string");
            continue;
        }
        if (px_host_normalize(it->string, strlen(it->string), host, sizeof(host), &kind, &err) !=
                AL_OK ||
            kind != PX_HOST_NAME) {
            al_json_err(x->errs, x->doc, p, "\"%s\" is not a valid host name", it->string);
            continue;
        }
        if (inet_pton(AF_INET, it->valuestring, tmp) != 1 &&
            inet_pton(AF_INET6, it->valuestring, tmp) != 1) {
            al_json_err(x->errs, x->doc, p, "\"%s\" is not an IPv4 or IPv6 address",
                        it->valuestring);
            continue;
        }
        c->overrides[c->noverrides].name = al_strdup(host);
        c->overrides[c->noverrides].addr = al_strdup(it->valuestring);
        c->noverrides++;
    }
}

static void
px_cfg_dns(struct px_cfgctx *x, struct px_conf *c, const cJSON *obj)
{
    static const char *const keys[] = {"servers", "timeout_ms", NULL};
    const cJSON             *servers, *it;
    int                      i = 0;

    al_json_check_keys(x->errs, x->doc, obj, "dns", keys);
    px_cfg_int(x, obj, "dns", "timeout_ms", 100, 60000, &c->dns_timeout_ms);
    servers = px_cfg_get(x, obj, "dns", "servers", cJSON_Array, "an array of \"ip:port\"");
    if (servers == NULL)
        return;
    c->dns_servers = al_calloc((size_t)cJSON_GetArraySize(servers) + 1, sizeof(char *));
    if (c->dns_servers == NULL)
        return;
    cJSON_ArrayForEach (it, servers) {
        struct sockaddr_storage ss;
        socklen_t               sl;
        char                    p[64];

        snprintf(p, sizeof(p), "dns.servers[%d]", i++);
        if (!cJSON_IsString(it) || px_parse_sockaddr(it->valuestring, &ss, &sl) != AL_OK) {
            al_json_err(x->errs, x->doc, p, "expected \"ip:port\" or \"[ipv6]:port\"");
            continue;
        }
        c->dns_servers[c->ndns_servers++] = al_strdup(it->valuestring);
    }
}

static void
px_cfg_audit(struct px_cfgctx *x, struct px_conf *c, const cJSON *obj, const char *cfgpath)
{
    static const char *const keys[] = {"db",        "durability", "flush_ms", "retention_days",
                                       "log_query", "sink",       NULL};
    static const char *const sink_keys[] = {"postgres", "instance", NULL};
    const cJSON             *dur, *sink;

    al_json_check_keys(x->errs, x->doc, obj, "audit", keys);
    if (cJSON_GetObjectItemCaseSensitive(obj, "db") != NULL) {
        /* "db": null switches the audit trail off (benchmarks only; logged loudly). */
        al_safefree(c->audit_db);
        c->audit_db = px_cfg_pathval(x, obj, "audit", "db", cfgpath);
    }
    px_cfg_int(x, obj, "audit", "flush_ms", 1, 10000, &c->audit_flush_ms);
    px_cfg_int(x, obj, "audit", "retention_days", 0, 36500, &c->audit_retention_days);
    px_cfg_bool(x, obj, "audit", "log_query", &c->audit_log_query);
    dur = px_cfg_get(x, obj, "audit", "durability", cJSON_String, "\"batched\" or \"strict\"");
    if (dur != NULL) {
        if (strcmp(dur->valuestring, "batched") == 0)
            c->audit_strict = 0;
        else if (strcmp(dur->valuestring, "strict") == 0)
            c->audit_strict = 1;
        else
            al_json_err(x->errs, x->doc, "audit.durability", "expected \"batched\" or \"strict\"");
    }
    /* Fleet sink (docs/FLEET.md): checked and started with the audit writer. */
    sink = px_cfg_get(x, obj, "audit", "sink", cJSON_Object, "an object");
    if (sink != NULL) {
        al_json_check_keys(x->errs, x->doc, sink, "audit.sink", sink_keys);
        al_safefree(c->audit_sink_postgres);
        al_safefree(c->audit_sink_instance);
        c->audit_sink_postgres = px_cfg_string(x, sink, "audit.sink", "postgres");
        c->audit_sink_instance = px_cfg_string(x, sink, "audit.sink", "instance");
        if (c->audit_sink_postgres == NULL)
            al_json_err(x->errs, x->doc, "audit.sink.postgres",
                        "required (a libpq URI or key=value connection string)");
    }
}

static void
px_cfg_limits(struct px_cfgctx *x, struct px_conf *c, const cJSON *obj)
{
    static const char *const keys[] = {
        "max_connections", "header_bytes",      "header_timeout_s",
        "idle_timeout_s",  "connect_timeout_s", "tls_handshake_timeout_s",
        "drain_timeout_s", "ws_message_bytes",  NULL};
    int hb = (int)c->limits.header_bytes;
    int wsb = (int)c->limits.ws_message_bytes;

    al_json_check_keys(x->errs, x->doc, obj, "limits", keys);
    px_cfg_int(x, obj, "limits", "max_connections", 1, 1000000, &c->limits.max_connections);
    px_cfg_int(x, obj, "limits", "header_bytes", 1024, 1 << 20, &hb);
    c->limits.header_bytes = (size_t)hb;
    px_cfg_int(x, obj, "limits", "header_timeout_s", 1, 3600, &c->limits.header_timeout_s);
    px_cfg_int(x, obj, "limits", "idle_timeout_s", 1, 86400, &c->limits.idle_timeout_s);
    px_cfg_int(x, obj, "limits", "connect_timeout_s", 1, 600, &c->limits.connect_timeout_s);
    px_cfg_int(x, obj, "limits", "tls_handshake_timeout_s", 1, 600,
               &c->limits.tls_handshake_timeout_s);
    px_cfg_int(x, obj, "limits", "drain_timeout_s", 0, 3600, &c->limits.drain_timeout_s);
    px_cfg_int(x, obj, "limits", "ws_message_bytes", 1024, 1 << 30, &wsb);
    c->limits.ws_message_bytes = (size_t)wsb;
}

/* A token digest: 64 hex digits (`sha256sum` output), stored lowercase in out[65]. */
static int
px_cfg_sha256_hex(struct px_cfgctx *x, const cJSON *v, const char *jpath, char *out)
{
    size_t n = strlen(v->valuestring);

    for (size_t k = 0; k < n; k++) {
        if (strchr("0123456789abcdefABCDEF", v->valuestring[k]) == NULL)
            n = 0;
    }
    if (n != 64) {
        al_json_err(x->errs, x->doc, jpath, "expected 64 hex digits (sha256sum of the token)");
        return AL_ERROR;
    }
    for (size_t k = 0; k < n; k++)
        out[k] = (char)(v->valuestring[k] | 0x20);
    out[n] = '\0';
    return AL_OK;
}

static void
px_cfg_sandbox_cidrs(struct px_cfgctx *x, struct px_sandbox *sb, const cJSON *arr, const char *p)
{
    const cJSON *it;
    int          k = 0;

    sb->cidrs = al_calloc((size_t)cJSON_GetArraySize(arr) + 1, sizeof(*sb->cidrs));
    if (sb->cidrs == NULL)
        return;
    cJSON_ArrayForEach (it, arr) {
        char pc[96];

        snprintf(pc, sizeof(pc), "%s.cidrs[%d]", p, k++);
        if (!cJSON_IsString(it) || pol_cidr_parse(it->valuestring, &sb->cidrs[sb->ncidrs]) != AL_OK)
            al_json_err(x->errs, x->doc, pc, "expected a CIDR like \"10.0.0.0/8\" or \"fd00::/8\"");
        else
            sb->ncidrs++;
    }
}

static void
px_cfg_sandboxes(struct px_cfgctx *x, struct px_conf *c, const cJSON *arr)
{
    static const char *const keys[] = {"name", "cidrs", "token_sha256", NULL};
    const cJSON             *it;
    int                      i = 0;

    if (!cJSON_IsArray(arr)) {
        al_json_err(x->errs, x->doc, "sandboxes", "expected an array");
        return;
    }
    c->sandboxes = al_calloc((size_t)cJSON_GetArraySize(arr) + 1, sizeof(*c->sandboxes));
    if (c->sandboxes == NULL)
        return;
    cJSON_ArrayForEach (it, arr) {
        char               p[64], pn[80];
        const cJSON       *name, *cidrs, *tok;
        struct px_sandbox *sb = &c->sandboxes[c->nsandboxes];
        struct pol_ident   id;

        snprintf(p, sizeof(p), "sandboxes[%d]", i++);
        if (!cJSON_IsObject(it)) {
            al_json_err(x->errs, x->doc, p, "expected an object");
            continue;
        }
        al_json_check_keys(x->errs, x->doc, it, p, keys);
        name = px_cfg_get(x, it, p, "name", cJSON_String, "a string");
        cidrs = px_cfg_get(x, it, p, "cidrs", cJSON_Array, "an array of CIDRs");
        tok = px_cfg_get(x, it, p, "token_sha256", cJSON_String, "a hex SHA-256 string");
        snprintf(pn, sizeof(pn), "%s.name", p);
        if (name == NULL) {
            al_json_err(x->errs, x->doc, p, "missing \"name\"");
            continue;
        }
        /* A name must be usable as the user part of Proxy-Authorization. */
        if (pol_ident_split_user(name->valuestring, &id) != AL_OK ||
            strcmp(id.sandbox, name->valuestring) != 0) {
            al_json_err(x->errs, x->doc, pn, "sandbox names are 1-%d of [A-Za-z0-9._:-]",
                        POL_SANDBOX_MAX_BYTES);
            continue;
        }
        if (px_conf_sandbox(c, name->valuestring) != NULL) {
            al_json_err(x->errs, x->doc, pn, "duplicate sandbox \"%s\"", name->valuestring);
            continue;
        }
        if (cidrs == NULL && tok == NULL) {
            al_json_err(x->errs, x->doc, p, "needs \"cidrs\" or \"token_sha256\" (or both)");
            continue;
        }
        if (tok != NULL) {
            snprintf(pn, sizeof(pn), "%s.token_sha256", p);
            if (px_cfg_sha256_hex(x, tok, pn, sb->token_sha256) != AL_OK)
                continue;
            c->any_token = 1;
        }
        sb->name = al_strdup(name->valuestring);
        if (cidrs != NULL)
            px_cfg_sandbox_cidrs(x, sb, cidrs, p);
        c->nsandboxes++;
    }
}

const struct px_sandbox *
px_conf_sandbox(const struct px_conf *c, const char *name)
{
    for (int i = 0; i < c->nsandboxes; i++) {
        if (c->sandboxes[i].name != NULL && strcmp(c->sandboxes[i].name, name) == 0)
            return &c->sandboxes[i];
    }
    return NULL;
}

/* "admin": "ip:port" or {"addr": "ip:port", "token_sha256": "<hex>"}. */
static void
px_cfg_admin(struct px_cfgctx *x, struct px_conf *c, const cJSON *v)
{
    static const char *const keys[] = {"addr", "token_sha256", NULL};
    const cJSON             *addr = v, *tok = NULL;
    const char              *p = "admin";

    if (cJSON_IsObject(v)) {
        al_json_check_keys(x->errs, x->doc, v, "admin", keys);
        addr = cJSON_GetObjectItemCaseSensitive(v, "addr");
        tok = px_cfg_get(x, v, "admin", "token_sha256", cJSON_String, "a hex SHA-256 string");
        p = "admin.addr";
    }
    if (addr == NULL || !cJSON_IsString(addr) ||
        px_parse_sockaddr(addr->valuestring, &c->admin_addr, &c->admin_addrlen) != AL_OK) {
        al_json_err(x->errs, x->doc, p, "expected \"ip:port\" or \"[ipv6]:port\"");
        return;
    }
    if (tok != NULL &&
        px_cfg_sha256_hex(x, tok, "admin.token_sha256", c->admin_token_sha256) != AL_OK)
        return;
    /* Without a token anyone who reaches the admin port can reload and
     * re-tag sandboxes: only loopback may go without one. */
    if (tok == NULL &&
        pol_addr_classify((const struct sockaddr *)&c->admin_addr) != POL_ADDR_LOOPBACK) {
        al_json_err(x->errs, x->doc, p,
                    "admin listener on %s, which is not a loopback address, needs a token: "
                    "use {\"addr\": \"%s\", \"token_sha256\": \"<sha256 of the token>\"} "
                    "or bind it to 127.0.0.1",
                    addr->valuestring, addr->valuestring);
        return;
    }
    c->has_admin = 1;
}

static struct px_conf *
px_conf_from_doc(const struct al_json *doc, const char *cfgpath, struct al_errs *errs)
{
    static const char *const keys[] = {
        "listen",  "admin",     "workers",     "policy",
        "secrets", "ca",        "upstream_ca", "upstream_verify_cache_s",
        "audit",   "resolve",   "dns",         "sandboxes",
        "limits",  "log_level", "log_format",  "access_log",
        "user",    NULL};
    struct px_cfgctx x = {errs, doc};
    const cJSON     *root = doc->root, *v;
    struct px_conf  *c;
    unsigned         before = errs->count;

    if (!cJSON_IsObject(root)) {
        al_json_err(errs, doc, "", "expected a JSON object");
        return NULL;
    }
    c = al_calloc(1, sizeof(*c));
    if (c == NULL) {
        al_errs_add(errs, "out of memory");
        return NULL;
    }
    atomic_store(&c->refs, 1);
    c->path = al_strdup(cfgpath);
    c->limits.max_connections = PX_DEFAULT_MAX_CONNECTIONS;
    c->limits.header_bytes = PX_DEFAULT_HEADER_BYTES;
    c->limits.ws_message_bytes = 16u << 20;
    c->limits.header_timeout_s = PX_DEFAULT_HEADER_TIMEOUT_S;
    c->limits.idle_timeout_s = PX_DEFAULT_IDLE_TIMEOUT_S;
    c->limits.connect_timeout_s = PX_DEFAULT_CONNECT_TIMEOUT_S;
    c->limits.tls_handshake_timeout_s = PX_DEFAULT_TLS_TIMEOUT_S;
    c->limits.drain_timeout_s = PX_DEFAULT_DRAIN_TIMEOUT_S;
    c->audit_flush_ms = 50;
    c->audit_retention_days = 30;
    c->upstream_verify_cache_s = PX_DEFAULT_VERIFY_CACHE_S;
    c->log_level = AL_LOG_INFO;
    c->audit_db = al_path_join_dir(cfgpath, "airlock-audit.db");

    al_json_check_keys(errs, doc, root, "", keys);

    v = cJSON_GetObjectItemCaseSensitive(root, "listen");
    if (v != NULL)
        px_cfg_listen(&x, c, v);
    else {
        struct px_listen_conf *l = &c->listen[0];

        (void)px_parse_sockaddr("127.0.0.1:3128", &l->addr, &l->addrlen);
        snprintf(l->text, sizeof(l->text), "127.0.0.1:3128");
        c->nlisten = 1;
    }
    v = cJSON_GetObjectItemCaseSensitive(root, "admin");
    if (v != NULL && !cJSON_IsNull(v))
        px_cfg_admin(&x, c, v);
    px_cfg_int(&x, root, "", "workers", 0, 256, &c->workers);
    if (c->workers == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);

        c->workers = n > 0 ? (int)(n > 64 ? 64 : n) : 1;
    }
    if (cJSON_GetObjectItemCaseSensitive(root, "policy") == NULL)
        al_json_err(errs, doc, "", "missing \"policy\" (path of the policy file)");
    c->policy_path = px_cfg_pathval(&x, root, "", "policy", cfgpath);
    c->secrets_path = px_cfg_pathval(&x, root, "", "secrets", cfgpath);
    v = px_cfg_get(&x, root, "", "ca", cJSON_Object, "an object {\"dir\": ...}");
    if (v != NULL) {
        static const char *const cakeys[] = {"dir", NULL};

        al_json_check_keys(errs, doc, v, "ca", cakeys);
        c->ca_dir = px_cfg_pathval(&x, v, "ca", "dir", cfgpath);
    }
    v = px_cfg_get(&x, root, "", "upstream_ca", cJSON_String, "\"system\" or a file path");
    if (v != NULL)
        c->upstream_ca = strcmp(v->valuestring, "system") == 0
                             ? NULL
                             : px_cfg_pathval(&x, root, "", "upstream_ca", cfgpath);
    px_cfg_int(&x, root, "", "upstream_verify_cache_s", 0, 3600, &c->upstream_verify_cache_s);
    v = px_cfg_get(&x, root, "", "audit", cJSON_Object, "an object");
    if (v != NULL)
        px_cfg_audit(&x, c, v, cfgpath);
    v = px_cfg_get(&x, root, "", "resolve", cJSON_Object, "an object {\"name\": \"ip\"}");
    if (v != NULL)
        px_cfg_resolve(&x, c, v);
    v = px_cfg_get(&x, root, "", "dns", cJSON_Object, "an object");
    if (v != NULL)
        px_cfg_dns(&x, c, v);
    v = cJSON_GetObjectItemCaseSensitive(root, "sandboxes");
    if (v != NULL)
        px_cfg_sandboxes(&x, c, v);
    v = px_cfg_get(&x, root, "", "limits", cJSON_Object, "an object");
    if (v != NULL)
        px_cfg_limits(&x, c, v);
    v = px_cfg_get(&x, root, "", "log_level", cJSON_String, "a string");
    if (v != NULL && al_log_level_parse(v->valuestring, &c->log_level) != AL_OK)
        al_json_err(errs, doc, "log_level", "expected debug, info, warn, error or off");
    v = px_cfg_get(&x, root, "", "log_format", cJSON_String, "\"text\" or \"json\"");
    if (v != NULL && al_log_format_parse(v->valuestring, &c->log_format) != AL_OK)
        al_json_err(errs, doc, "log_format", "expected \"text\" or \"json\"");
    px_cfg_bool(&x, root, "", "access_log", &c->access_log);
    c->user = px_cfg_string(&x, root, "", "user");
    if (c->user != NULL && px_conf_user_lookup(c->user, NULL, NULL) != AL_OK)
        al_json_err(errs, doc, "user", "no such user \"%s\" on this system", c->user);

    for (int i = 0; i < c->nlisten && c->nself < PX_MAX_LISTENERS; i++)
        c->self[c->nself++] = c->listen[i].addr;
    if (c->has_admin)
        c->self[c->nself++] = c->admin_addr;
    if (errs->count > before) {
        px_conf_unref(c);
        return NULL;
    }
    return c;
}

struct px_conf *
px_conf_load(const char *path, struct al_errs *errs)
{
    struct al_json *doc;
    struct px_conf *c;

    if (path == NULL)
        doc = al_json_parse("(embedded default)", px_conf_default_json,
                            strlen(px_conf_default_json), errs);
    else
        doc = al_json_load(path, errs);
    if (doc == NULL)
        return NULL;
    /* The embedded default resolves its relative paths against the cwd. */
    c = px_conf_from_doc(doc, path != NULL ? path : "./airlock.json", errs);
    al_json_free(doc);
    return c;
}

struct px_conf *
px_conf_load_all(const char *path, int dry_run, struct al_errs *errs)
{
    struct px_conf *c = px_conf_load(path, errs);
    const char    **names = NULL;

    if (c == NULL)
        return NULL;
    c->dry_run = dry_run;
    names = al_calloc((size_t)c->nsandboxes + 1, sizeof(*names));
    if (names == NULL) {
        al_errs_add(errs, "out of memory");
        goto fail;
    }
    for (int i = 0; i < c->nsandboxes; i++)
        names[i] = c->sandboxes[i].name;
    c->policy = pol_load(c->policy_path, names, c->nsandboxes, dry_run, errs);
    if (c->secrets_path != NULL) {
        /* Placeholders are derived with a key kept next to the CA. */
        c->secrets = sec_load(c->secrets_path, c->ca_dir, errs);
        if (c->secrets == NULL)
            goto fail;
    }
    if (c->policy == NULL)
        goto fail;
    for (int i = 0; i < pol_policy_rule_count(c->policy); i++) {
        const char *const *inj = NULL;
        int                n = pol_policy_rule_inject(c->policy, i, &inj);

        for (int k = 0; k < n; k++) {
            if (c->secrets == NULL || sec_find(c->secrets, inj[k]) < 0)
                al_errs_add(errs, "%s: rule \"%s\" injects \"%s\", which %s", c->policy_path,
                            pol_policy_rule_name(c->policy, i), inj[k],
                            c->secrets == NULL ? "needs a \"secrets\" file in the config"
                                               : "the secrets file does not define");
        }
    }
    if (errs->count > 0)
        goto fail;
    al_free(names);
    return c;
fail:
    al_free(names);
    px_conf_unref(c);
    return NULL;
}

/* ---- settings a reload cannot change --------------------------------------- */

static int
px_cfg_streq(const char *a, const char *b)
{
    return (a == NULL || b == NULL) ? a == b : strcmp(a, b) == 0;
}

static int
px_cfg_listen_eq(const struct px_conf *a, const struct px_conf *b)
{
    if (a->nlisten != b->nlisten || a->has_admin != b->has_admin ||
        (a->has_admin && (a->admin_addrlen != b->admin_addrlen ||
                          memcmp(&a->admin_addr, &b->admin_addr, a->admin_addrlen) != 0)))
        return 0;
    for (int i = 0; i < a->nlisten; i++) {
        if (a->listen[i].mode != b->listen[i].mode ||
            a->listen[i].addrlen != b->listen[i].addrlen ||
            memcmp(&a->listen[i].addr, &b->listen[i].addr, a->listen[i].addrlen) != 0)
            return 0;
    }
    return 1;
}

static int
px_cfg_dns_eq(const struct px_conf *a, const struct px_conf *b)
{
    if (a->noverrides != b->noverrides || a->ndns_servers != b->ndns_servers ||
        a->dns_timeout_ms != b->dns_timeout_ms)
        return 0;
    for (int i = 0; i < a->noverrides; i++) {
        if (!px_cfg_streq(a->overrides[i].name, b->overrides[i].name) ||
            !px_cfg_streq(a->overrides[i].addr, b->overrides[i].addr))
            return 0;
    }
    for (int i = 0; i < a->ndns_servers; i++) {
        if (!px_cfg_streq(a->dns_servers[i], b->dns_servers[i]))
            return 0;
    }
    return 1;
}

size_t
px_conf_restart_only(const struct px_conf *running, const struct px_conf *next, char *out,
                     size_t outsz)
{
    struct {
        int         same;
        const char *what;
    } k[] = {
        {px_cfg_listen_eq(running, next), "listen/admin"},
        {running->workers == next->workers, "workers"},
        {px_cfg_streq(running->ca_dir, next->ca_dir), "ca.dir"},
        {px_cfg_streq(running->upstream_ca, next->upstream_ca), "upstream_ca"},
        {running->upstream_verify_cache_s == next->upstream_verify_cache_s,
         "upstream_verify_cache_s"},
        {px_cfg_streq(running->audit_db, next->audit_db) &&
             running->audit_strict == next->audit_strict &&
             running->audit_flush_ms == next->audit_flush_ms &&
             running->audit_retention_days == next->audit_retention_days &&
             running->audit_log_query == next->audit_log_query &&
             px_cfg_streq(running->audit_sink_postgres, next->audit_sink_postgres) &&
             px_cfg_streq(running->audit_sink_instance, next->audit_sink_instance),
         "audit"},
        {px_cfg_dns_eq(running, next), "resolve/dns"},
        {px_cfg_streq(running->user, next->user), "user"},
    };
    size_t n = 0, len = 0;

    if (outsz > 0)
        out[0] = '\0';
    for (size_t i = 0; i < sizeof(k) / sizeof(k[0]); i++) {
        if (k[i].same)
            continue;
        if (outsz > len)
            len += (size_t)snprintf(out + len, outsz - len, "%s%s", n ? ", " : "", k[i].what);
        n++;
    }
    return n;
}
