/*
 * test_px_pool.c - the per-worker upstream keep-alive pool (proxy/px_pool.c)
 * with real socketpair descriptors on a fake worker's loop
 * (tests/unit/px_fake.h): a parked connection comes back for its key (with
 * its peer) and only once, never for another key; one whose upstream
 * speaks or closes while parked is dropped (closed) as soon as the loop
 * sees it; the pool holds PX_POOL_MAX_PER_WORKER at most (the oldest goes);
 * a draining worker parks nothing; parked TLS upstreams are apart from
 * plain ones, taken only for the same SSL_CTX, PX_POOL_TLS_PER_HOST per key.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tests/unit/px_fake.h"

/* A connected pair: sv[0] is parked, sv[1] plays the upstream. */
static void
t_pair(int sv[2])
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
}

static int
t_is_open(int fd)
{
    return fcntl(fd, F_GETFD) != -1 || errno != EBADF;
}

/* The upstream's end sees the pooled end closed (a reset when it left
 * bytes unread there). */
static void
t_peer_sees_close(int fd)
{
    char    b;
    ssize_t n = recv(fd, &b, 1, MSG_DONTWAIT);

    assert_true(n == 0 || (n == -1 && errno == ECONNRESET));
}

static struct sockaddr_storage
t_addr(const char *ip, int port)
{
    struct sockaddr_storage ss;
    struct sockaddr_in     *sin = (struct sockaddr_in *)&ss;

    memset(&ss, 0, sizeof(ss));
    sin->sin_family = AF_INET;
    sin->sin_port = htons((uint16_t)port);
    assert_int_equal(inet_pton(AF_INET, ip, &sin->sin_addr), 1);
    return ss;
}

static void
test_same_key(void **state)
{
    struct pxf              f;
    int                     a[2], b[2];
    struct sockaddr_storage pa = t_addr("192.0.2.1", 80), pb = t_addr("192.0.2.2", 8080), got;

    (void)state;
    pxf_init(&f, NULL, NULL);
    t_pair(a);
    t_pair(b);
    px_pool_put(&f.w, "a.test:80", a[0], &pa);
    px_pool_put(&f.w, "b.test:8080", b[0], &pb);
    assert_int_equal(f.w.npool, 2);
    ev_run(f.w.loop, EVRUN_NOWAIT); /* nothing to see: both stay */
    assert_int_equal(f.w.npool, 2);

    assert_int_equal(px_pool_get(&f.w, "c.test:80", &got), -1);
    assert_int_equal(px_pool_get(&f.w, "a.test:8080", &got), -1);
    assert_int_equal(px_pool_get(&f.w, "a.test:80", &got), a[0]);
    assert_memory_equal(&got, &pa, sizeof(pa));
    assert_int_equal(px_pool_get(&f.w, "a.test:80", &got), -1); /* taken once */
    assert_int_equal(f.w.npool, 1);
    /* Taken out, it is the caller's: no watcher left on it. */
    assert_int_equal(send(a[1], "x", 1, 0), 1);
    ev_run(f.w.loop, EVRUN_NOWAIT);
    assert_true(t_is_open(a[0]));

    assert_int_equal(px_pool_get(&f.w, "b.test:8080", &got), b[0]);
    assert_memory_equal(&got, &pb, sizeof(pb));
    assert_int_equal(f.w.npool, 0);
    for (int i = 0; i < 2; i++) {
        close(a[i]);
        close(b[i]);
    }
    pxf_free(&f);
}

/* Most recent first: two parked for one key come back newest first. */
static void
test_newest_first(void **state)
{
    struct pxf              f;
    int                     a[2], b[2];
    struct sockaddr_storage p = t_addr("192.0.2.1", 80), got;

    (void)state;
    pxf_init(&f, NULL, NULL);
    t_pair(a);
    t_pair(b);
    px_pool_put(&f.w, "a.test:80", a[0], &p);
    px_pool_put(&f.w, "a.test:80", b[0], &p);
    assert_int_equal(px_pool_get(&f.w, "a.test:80", &got), b[0]);
    assert_int_equal(px_pool_get(&f.w, "a.test:80", &got), a[0]);
    for (int i = 0; i < 2; i++) {
        close(a[i]);
        close(b[i]);
    }
    pxf_free(&f);
}

/* An idle upstream that sends a byte, or closes, is not reusable: dropped
 * (and closed) when the loop delivers the event. */
static void
test_dropped_when_readable(void **state)
{
    struct pxf              f;
    int                     talk[2], gone[2], quiet[2];
    struct sockaddr_storage p = t_addr("192.0.2.1", 80), got;

    (void)state;
    pxf_init(&f, NULL, NULL);
    t_pair(talk);
    t_pair(gone);
    t_pair(quiet);
    px_pool_put(&f.w, "talk.test:80", talk[0], &p);
    px_pool_put(&f.w, "gone.test:80", gone[0], &p);
    px_pool_put(&f.w, "quiet.test:80", quiet[0], &p);
    assert_int_equal(send(talk[1], "H", 1, 0), 1);
    close(gone[1]);
    ev_run(f.w.loop, EVRUN_NOWAIT);
    assert_int_equal(f.w.npool, 1);
    assert_int_equal(px_pool_get(&f.w, "talk.test:80", &got), -1);
    assert_int_equal(px_pool_get(&f.w, "gone.test:80", &got), -1);
    t_peer_sees_close(talk[1]);
    assert_int_equal(px_pool_get(&f.w, "quiet.test:80", &got), quiet[0]);
    close(talk[1]);
    close(quiet[0]);
    close(quiet[1]);
    pxf_free(&f);
}

/* A draining worker parks nothing: the connection is closed at once. */
static void
test_draining(void **state)
{
    struct pxf              f;
    int                     a[2];
    struct sockaddr_storage p = t_addr("192.0.2.1", 80), got;

    (void)state;
    pxf_init(&f, NULL, NULL);
    t_pair(a);
    f.w.draining = 1;
    px_pool_put(&f.w, "a.test:80", a[0], &p);
    assert_int_equal(f.w.npool, 0);
    assert_int_equal(px_pool_get(&f.w, "a.test:80", &got), -1);
    t_peer_sees_close(a[1]);
    close(a[1]);
    pxf_free(&f);
}

/* At most PX_POOL_MAX_PER_WORKER parked: one more drops the oldest. */
static void
test_cap(void **state)
{
    struct pxf              f;
    struct rlimit           rl;
    int                     sv[2], fds[PX_POOL_MAX_PER_WORKER + 1];
    struct sockaddr_storage p = t_addr("192.0.2.1", 80), got;
    char                    key[64];

    (void)state;
    px_raise_nofile();
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur < PX_POOL_MAX_PER_WORKER + 64)
        skip();
    pxf_init(&f, NULL, NULL);
    t_pair(sv);
    for (int i = 0; i <= PX_POOL_MAX_PER_WORKER; i++) {
        fds[i] = dup(sv[0]);
        assert_true(fds[i] >= 0);
        snprintf(key, sizeof(key), "h%d.test:80", i);
        px_pool_put(&f.w, key, fds[i], &p);
        assert_int_equal(f.w.npool, i < PX_POOL_MAX_PER_WORKER ? i + 1 : PX_POOL_MAX_PER_WORKER);
    }
    assert_int_equal(px_pool_get(&f.w, "h0.test:80", &got), -1); /* the oldest went */
    assert_false(t_is_open(fds[0]));
    assert_int_equal(px_pool_get(&f.w, "h1.test:80", &got), fds[1]);
    snprintf(key, sizeof(key), "h%d.test:80", PX_POOL_MAX_PER_WORKER);
    assert_int_equal(px_pool_get(&f.w, key, &got), fds[PX_POOL_MAX_PER_WORKER]);
    close(fds[1]);
    close(fds[PX_POOL_MAX_PER_WORKER]);
    pxf_free(&f); /* closes the rest */
    close(sv[0]);
    close(sv[1]);
}

/* Parked TLS upstreams: never handed to a plain request (nor the
 * reverse), only for the SSL_CTX they were verified under, at most
 * PX_POOL_TLS_PER_HOST per host:port (the oldest goes). */
static void
test_tls(void **state)
{
    struct pxf              f;
    SSL_CTX                *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX                *other = SSL_CTX_new(TLS_client_method());
    int                     plain[2], sv[2], fds[PX_POOL_TLS_PER_HOST + 1];
    SSL                    *ssls[PX_POOL_TLS_PER_HOST + 1], *got_ssl = NULL;
    struct sockaddr_storage p = t_addr("192.0.2.1", 443), got;

    (void)state;
    assert_non_null(ctx);
    assert_non_null(other);
    pxf_init(&f, NULL, NULL);
    t_pair(plain);
    t_pair(sv);
    px_pool_put(&f.w, "api.test:443", plain[0], &p);
    for (int i = 0; i <= PX_POOL_TLS_PER_HOST; i++) {
        fds[i] = dup(sv[0]);
        ssls[i] = SSL_new(ctx);
        assert_non_null(ssls[i]);
        px_pool_put_tls(&f.w, "api.test:443", fds[i], ssls[i], &p);
    }
    assert_int_equal(f.w.npool, 1 + PX_POOL_TLS_PER_HOST);
    assert_false(t_is_open(fds[0])); /* the oldest TLS one went */
    assert_int_equal(px_pool_get_tls(&f.w, "api.test:443", other, &got, &got_ssl), -1);
    assert_int_equal(px_pool_get_tls(&f.w, "api.test:443", ctx, &got, &got_ssl),
                     fds[PX_POOL_TLS_PER_HOST]);
    assert_ptr_equal(got_ssl, ssls[PX_POOL_TLS_PER_HOST]);
    /* The plain request gets the plain one, never a TLS one. */
    assert_int_equal(px_pool_get(&f.w, "api.test:443", &got), plain[0]);
    assert_int_equal(px_pool_get(&f.w, "api.test:443", &got), -1);
    SSL_free(got_ssl);
    close(fds[PX_POOL_TLS_PER_HOST]);
    close(plain[0]);
    close(plain[1]);
    pxf_free(&f); /* frees the parked SSLs */
    close(sv[0]);
    close(sv[1]);
    SSL_CTX_free(ctx);
    SSL_CTX_free(other);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_key),
        cmocka_unit_test(test_newest_first),
        cmocka_unit_test(test_dropped_when_readable),
        cmocka_unit_test(test_draining),
        cmocka_unit_test(test_cap),
        cmocka_unit_test(test_tls),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
