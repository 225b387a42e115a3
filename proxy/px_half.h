/*
 * px_half.h - one side of a connection (px_half.c). Internal to proxy/.
 */
#ifndef PX_HALF_H
#define PX_HALF_H

#include <sys/types.h>

#include <openssl/err.h>

#include "px_exch.h"

void px_half_init(struct px_half *h, struct px_conn *c, int fd,
                  void (*cb)(struct ev_loop *, ev_io *, int));
/* The half's socket from now on (its watchers, inactive, follow it). */
void px_half_attach(struct px_half *h, int fd);
/* Stops its watchers, frees TLS, closes the socket and the splice pipe. */
void px_half_close(struct px_conn *c, struct px_half *h);
/* Writes as much of h->out as the socket takes: AL_OK empty, AL_AGAIN, AL_ERROR. */
int px_half_flush(struct px_conn *c, struct px_half *h);
/* Reads decrypted (or plain) bytes: >0, 0 at EOF, -1 would block, -2 error. */
ssize_t px_half_recv(struct px_conn *c, struct px_half *h, char *buf, size_t n);
/* Reads the client side into the connection's input buffer c->cin
 * (allocated on first use; the request parser and the peeks take from it):
 * AL_OK bytes added, AL_DONE end of stream (cl.eof set), AL_AGAIN nothing
 * now, AL_ERROR (*why: a read error, no memory). */
int px_half_read_cin(struct px_conn *c, const char **why);
/* A client half's TLS reads its socket through a socket BIO from now on
 * (the memory BIO freed): AL_OK, AL_AGAIN (the memory BIO not empty yet),
 * AL_ERROR (no memory). */
int px_half_tls_direct(struct px_half *h);
/* Does the half hold decrypted or undecrypted bytes no socket event will announce? */
int px_half_tls_buffered(const struct px_half *h);
/* One step of a TLS handshake: AL_OK done, AL_AGAIN waiting, AL_ERROR failed. */
int px_half_handshake(struct px_conn *c, struct px_half *h);
/* One direction of an opaque tunnel: src's bytes through src's pipe to dst.
 * AL_OK (moved what it could), AL_ERROR. */
int px_half_pump(struct px_conn *c, struct px_half *src, struct px_half *dst);

/* Empties OpenSSL's error queue before an SSL call whose SSL_get_error()
 * matters. ERR_clear_error() walks all of its slots (~800 instructions in
 * OpenSSL 3.0) even when the queue is already empty, the usual case on the
 * request path: peek first. */
static inline void
px_tls_clear_errors(void)
{
    if (ERR_peek_error() != 0)
        ERR_clear_error();
}

#endif
