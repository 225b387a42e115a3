/*
 * fuzz_redact.c - the response redactor (sec_redactor_new + sec_stream_feed)
 * and sec_redact_value, on a store of two secrets loaded once.
 *
 * Input: byte 0 = mask (bits 0-1, 0 means both); byte 1 = piece size
 * (1 + b % 32, or the whole input in one piece when b >= 224); the rest =
 * response bytes. The stream is fed piece by piece and finished, then fed
 * the whole input again in one piece (a finished stream is reset and may be
 * fed again) and finished, then piece by piece again with the last piece
 * fed and finished in one step (sec_stream_feed_last).
 *
 * Oracle: the output never contains the raw value of a secret in the mask,
 * nor its all-lower or all-upper-cased form (abort). The placeholders use
 * only '~' and '.', which no value holds, so a value in the output can only
 * be a missed occurrence in the input. The four runs (in pieces, in one
 * piece, in pieces ending with feed_last, sec_redact_value) give the same
 * output: which matches count (a MIME-wrapped base64 form is checked against
 * its line breaks) must not depend on where the input was cut.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "secrets/secrets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* A self-overlapping value (KMP-style "abcabcabd") and one full of bytes
 * that JSON and percent encoding rewrite. */
#define FZ_V1 "abcabcabd/Zq+9=x"
#define FZ_V2 "hunter2\"q\\x y%zz"

static const char *const fz_values[6] = {FZ_V1,
                                         FZ_V2,
                                         "abcabcabd/zq+9=x",
                                         "hunter2\"q\\x y%zz",
                                         "ABCABCABD/ZQ+9=X",
                                         "HUNTER2\"Q\\X Y%ZZ"};
static struct sec_store *fz_store;

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const char json[] = "{\"secrets\": {"
                               "\"one\": {\"from\": {\"value\": \"abcabcabd/Zq+9=x\"}, "
                               "\"hosts\": [\"a.test\"], \"placeholder\": \"~~~~....~~~~\"},"
                               "\"two\": {\"from\": {\"value\": \"hunter2\\\"q\\\\x y%zz\"}, "
                               "\"hosts\": [\"b.test\"], \"placeholder\": \"....~~~~....\"}}}";
    struct al_errs    errs;

    (void)argc;
    (void)argv;
    al_log_set_level(AL_LOG_OFF);
    al_errs_init(&errs);
    fz_store = sec_load_text("fuzz-secrets.json", json, strlen(json), NULL, &errs);
    al_errs_free(&errs);
    if (fz_store == NULL || sec_count(fz_store) != 2 || sec_find(fz_store, "one") != 0 ||
        sec_find(fz_store, "two") != 1)
        abort();
    return 0;
}

static void
fz_same(const struct al_dbuf *a, const struct al_dbuf *b)
{
    if (a->len != b->len || (a->len > 0 && memcmp(a->data, b->data, a->len) != 0))
        abort(); /* the output depends on how the input was cut */
}

static void
fz_check(const struct al_dbuf *out, uint64_t mask)
{
    for (int i = 0; i < 6; i++) {
        if (!(mask & ((uint64_t)1 << (i % 2))) || out->data == NULL)
            continue;
        if (memmem(out->data, out->len, fz_values[i], strlen(fz_values[i])) != NULL)
            abort(); /* a raw secret value went through the redactor */
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct sec_stream *st;
    struct al_dbuf     out, first;
    const char        *in;
    size_t             n, piece;
    uint64_t           mask;

    if (size < 2)
        return 0;
    mask = data[0] & 3;
    if (mask == 0)
        mask = 3;
    piece = data[1] >= 224 ? (size_t)-1 : (size_t)(1 + data[1] % 32);
    in = (const char *)data + 2;
    n = size - 2;

    st = sec_redactor_new(fz_store, mask);
    if (st == NULL)
        abort();
    al_dbuf_init(&out, (size_t)1 << 24);
    for (size_t off = 0; off < n;) {
        size_t k = n - off < piece ? n - off : piece;

        if (sec_stream_feed(st, in + off, k, &out) != AL_OK)
            abort();
        off += k;
    }
    if (sec_stream_finish(st, &out) != AL_OK)
        abort();
    fz_check(&out, mask);
    if (sec_stream_replaced(st) & ~mask)
        abort(); /* replaced a secret outside the mask */
    first = out;

    /* The finished stream is reset: the same input again, in one piece. */
    al_dbuf_init(&out, (size_t)1 << 24);
    if (sec_stream_feed(st, in, n, &out) != AL_OK || sec_stream_finish(st, &out) != AL_OK)
        abort();
    fz_check(&out, mask);
    fz_same(&first, &out);
    sec_dbuf_wipe(&out);

    /* In pieces again, the last one fed and finished in one step. */
    al_dbuf_init(&out, (size_t)1 << 24);
    for (size_t off = 0;;) {
        size_t k = n - off < piece ? n - off : piece;
        int    end = off + k == n;

        if ((end ? sec_stream_feed_last(st, in + off, k, &out)
                 : sec_stream_feed(st, in + off, k, &out)) != AL_OK)
            abort();
        if (end)
            break;
        off += k;
    }
    fz_same(&first, &out);
    sec_dbuf_wipe(&out);
    sec_stream_free(st);

    /* Header values go through the one-shot form. */
    al_dbuf_init(&out, (size_t)1 << 24);
    if (sec_redact_value(fz_store, mask, in, n, &out) != AL_OK)
        abort();
    fz_check(&out, mask);
    fz_same(&first, &out);
    sec_dbuf_wipe(&out);
    sec_dbuf_wipe(&first);
    return 0;
}
