/* px_worker.h - worker lifecycle, used by px_main.c. Internal to proxy/. */
#ifndef PX_WORKER_H
#define PX_WORKER_H

#include "px.h"

/* Binds the worker's listeners and creates its loop and resolver (main
 * thread). On failure err says why; px_worker_destroy() cleans up. */
int px_worker_init(struct px_worker *w, int index, struct px_conf *conf, char *err, size_t errsz);
int px_worker_start(struct px_worker *w);
/* Thread-safe: asks the worker to drain and/or pick up the current config. */
void px_worker_signal(struct px_worker *w, int drain, int reload);
void px_worker_destroy(struct px_worker *w);

#endif
