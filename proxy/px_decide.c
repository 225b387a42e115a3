/*
 * px_decide.c - where a request meets the policy. Until the policy module
 * is wired in (issue 3), every request is allowed; the hooks exist so the
 * connection state machine already calls them at the right two points:
 * after the head (names, method, path) and after DNS (addresses).
 */
#include "px_conn.h"

int
px_decide(struct px_conn *c)
{
    (void)c;
    return AL_OK;
}

int
px_decide_addrs(struct px_conn *c)
{
    (void)c;
    return AL_OK;
}
