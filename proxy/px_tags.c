/*
 * px_tags.c - live per-sandbox state shared by the admin API (main thread)
 * and the workers: the current session/tool-call tag an operator set with
 * PUT /v1/sandboxes/{name}/tool-call (for sandboxes that cannot carry tags
 * themselves, e.g. behind a transparent listener), and request counters for
 * GET /v1/sandboxes. One mutex; workers take it once per request, briefly.
 * Entries are keyed by sandbox name and survive reloads.
 */
#include "px.h"

#include <stdio.h>
#include <string.h>

#define PX_TAGS_MAX 4096

struct px_tag_entry {
    char     sandbox[POL_SANDBOX_MAX_BYTES + 1];
    char     session[POL_TAG_MAX_BYTES + 1];
    char     tool_call[POL_TAG_MAX_BYTES + 1];
    uint64_t requests, denied, bytes_up, bytes_down;
};

static pthread_mutex_t      px_tags_lock = PTHREAD_MUTEX_INITIALIZER;
static struct px_tag_entry *px_tags;
static int                  px_ntags, px_tags_cap;

/* Returns the entry for `name`, creating it when `create`; lock held. */
static struct px_tag_entry *
px_tags_find(const char *name, int create)
{
    for (int i = 0; i < px_ntags; i++) {
        if (strcmp(px_tags[i].sandbox, name) == 0)
            return &px_tags[i];
    }
    if (!create || px_ntags >= PX_TAGS_MAX)
        return NULL;
    if (px_ntags == px_tags_cap) {
        int                  ncap = px_tags_cap ? px_tags_cap * 2 : 16;
        struct px_tag_entry *n = al_realloc(px_tags, (size_t)ncap * sizeof(*n));

        if (n == NULL)
            return NULL;
        px_tags = n;
        px_tags_cap = ncap;
    }
    memset(&px_tags[px_ntags], 0, sizeof(px_tags[0]));
    snprintf(px_tags[px_ntags].sandbox, sizeof(px_tags[0].sandbox), "%s", name);
    return &px_tags[px_ntags++];
}

int
px_tags_set(const char *sandbox, const char *session, const char *tool_call)
{
    struct px_tag_entry *e;
    int                  rc = AL_ERROR;

    pthread_mutex_lock(&px_tags_lock);
    e = px_tags_find(sandbox, 1);
    if (e != NULL) {
        snprintf(e->session, sizeof(e->session), "%s", session ? session : "");
        snprintf(e->tool_call, sizeof(e->tool_call), "%s", tool_call ? tool_call : "");
        rc = AL_OK;
    }
    pthread_mutex_unlock(&px_tags_lock);
    return rc;
}

void
px_tags_get(const char *sandbox, char *session, size_t ssz, char *tool_call, size_t tsz)
{
    struct px_tag_entry *e;

    pthread_mutex_lock(&px_tags_lock);
    e = px_tags_find(sandbox, 0);
    if (e != NULL) {
        if (session[0] == '\0')
            snprintf(session, ssz, "%s", e->session);
        if (tool_call[0] == '\0')
            snprintf(tool_call, tsz, "%s", e->tool_call);
    }
    pthread_mutex_unlock(&px_tags_lock);
}

void
px_tags_count(const char *sandbox, int denied, uint64_t up, uint64_t down)
{
    struct px_tag_entry *e;

    if (sandbox == NULL || sandbox[0] == '\0')
        return;
    pthread_mutex_lock(&px_tags_lock);
    e = px_tags_find(sandbox, 1);
    if (e != NULL) {
        e->requests++;
        e->denied += denied ? 1 : 0;
        e->bytes_up += up;
        e->bytes_down += down;
    }
    pthread_mutex_unlock(&px_tags_lock);
}

static void
px_tags_json_str(struct al_dbuf *o, const char *s)
{
    cJSON *j = cJSON_CreateString(s);
    char  *t = j != NULL ? cJSON_PrintUnformatted(j) : NULL;

    al_dbuf_adds(o, t != NULL ? t : "\"\"");
    cJSON_free(t);
    cJSON_Delete(j);
}

void
px_tags_render(const struct px_conf *c, struct al_dbuf *o)
{
    al_dbuf_adds(o, "{\"sandboxes\":[");
    pthread_mutex_lock(&px_tags_lock);
    for (int i = 0; i < c->nsandboxes; i++) {
        const struct px_tag_entry *e = px_tags_find(c->sandboxes[i].name, 0);

        al_dbuf_adds(o, i ? ",{\"name\":" : "{\"name\":");
        px_tags_json_str(o, c->sandboxes[i].name);
        al_dbuf_adds(o, ",\"session\":");
        px_tags_json_str(o, e ? e->session : "");
        al_dbuf_adds(o, ",\"tool_call\":");
        px_tags_json_str(o, e ? e->tool_call : "");
        al_dbuf_addf(
            o, ",\"requests\":%llu,\"denied\":%llu,\"bytes_up\":%llu,\"bytes_down\":%llu}",
            (unsigned long long)(e ? e->requests : 0), (unsigned long long)(e ? e->denied : 0),
            (unsigned long long)(e ? e->bytes_up : 0), (unsigned long long)(e ? e->bytes_down : 0));
    }
    pthread_mutex_unlock(&px_tags_lock);
    al_dbuf_adds(o, "]}\n");
}

void
px_tags_free_all(void)
{
    pthread_mutex_lock(&px_tags_lock);
    al_safefree(px_tags);
    px_ntags = px_tags_cap = 0;
    pthread_mutex_unlock(&px_tags_lock);
}
