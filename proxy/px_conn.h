/*
 * px_conn.h - the connection machine (px_conn.c): one client connection
 * and, while it needs one, its upstream. Its entry points for the workers
 * (accept, drain, strict audit notices) are in px.h; the data is in
 * px_exch.h and the contract with the phases and codecs it calls in
 * px_phase.h. Internal to proxy/.
 */
#ifndef PX_CONN_H
#define PX_CONN_H

#include "px_exch.h"

#endif
