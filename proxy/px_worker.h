/* px_worker.h - worker lifecycle, used by px_main.c. Internal to proxy/. */
#ifndef PX_WORKER_H
#define PX_WORKER_H

#include "px.h"

/* Binds the worker's listeners and creates its loop and resolver (main
 * thread). On failure err says why; px_worker_destroy() cleans up. */
int px_worker_init(struct px_worker *w, int index, struct px_conf *conf, char *err, size_t errsz);
/* Before any px_worker_init: each listening address (and the admin
 * address) is bound once without SO_REUSEPORT and released, so an address
 * another process listens on, with or without SO_REUSEPORT, fails the
 * start here ("listen ADDR: address already in use by another process"). */
int px_listen_probe(const struct px_conf *c, char *err, size_t errsz);
/* After every px_worker_init, before px_worker_start: AL_ERROR when a TCP
 * listener that is not one of the workers' sockets covers a configured
 * address (another process joined between the probe and the binds). When
 * the host's listeners cannot be listed it logs a warning and returns AL_OK. */
int px_listen_verify(const struct px_worker *w, int nworkers, const struct px_conf *c, char *err,
                     size_t errsz);
int px_worker_start(struct px_worker *w);
/* Thread-safe: asks the worker to drain and/or pick up the current config. */
void px_worker_signal(struct px_worker *w, int drain, int reload);
void px_worker_destroy(struct px_worker *w);

#endif
