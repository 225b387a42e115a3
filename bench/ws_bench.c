/* ws_bench.c - WebSocket (RFC 6455) over TLS echo load generator, idle-socket
 * holder and echo origin, for bench/run_ws.sh (issue 16).
 *
 * Single thread, level-triggered epoll, non-blocking sockets, OpenSSL.
 * Connects only to the numeric address given with -a, which must be in
 * 127.0.0.0/8.
 *
 *   ws_bench server -l IP:PORT -k CERT.pem -K KEY.pem [-A "Authorization value"]
 *       TLS WebSocket echo origin: answers any GET with a valid upgrade with
 *       101 (no extensions), then echoes every text/binary message as one
 *       unmasked frame of the same opcode, answers pings with pongs and a
 *       close with a close. -A: an upgrade whose Authorization header is not
 *       exactly this value gets 403 (so a run proves the injection).
 *       Client frames must be masked (else it drops the connection).
 *
 *   ws_bench load -a IP:PORT [-T HOST:PORT] -S SNI [-c CONNS] [-d SEC] [-w SEC]
 *                 [-m BYTES] [-C CAFILE] [-H "Name: value"] [-p PID,PID...]
 *       CONNS sockets to -a. With -T each first sends
 *       "CONNECT HOST:PORT HTTP/1.1" and waits for a 200; then TLS with SNI
 *       (verified against CAFILE and the name SNI when -C is given), then
 *       "GET /echo" with Upgrade: websocket (Host: SNI, -H added) and the 101
 *       checked (Sec-WebSocket-Accept). Then each socket sends one masked
 *       text frame of BYTES (default 1024) and waits for the echo, compares it
 *       byte for byte, and sends the next (one message in flight per socket).
 *       After -w warm-up seconds (default 1) it counts echoed messages for -d
 *       seconds (default 5) and prints
 *         "messages N seconds S mps R errors E client_cpu C busy B"
 *       then, per -p PID, "cpu PID SECONDS" (user+sys of that process during
 *       the window, from /proc/PID/stat). client_cpu: this process's
 *       user+sys in the window; busy: CPU-seconds all CPUs spent non-idle in
 *       the window (/proc/stat), so busy - client - the PIDs = other work.
 *
 *   ws_bench idle -a IP:PORT [-T HOST:PORT] -S SNI -c N [-C CAFILE] [-s SEC]
 *       Opens N sockets as above (at most 64 not yet upgraded at a time),
 *       each sends one message and reads its echo, then idles. Prints
 *       "ready N" when all are idle (or "failed ready R errors E" and exits 1),
 *       then holds them until SIGTERM/SIGINT or -s seconds (default 120);
 *       prints "lost N" if any is closed meanwhile.
 *
 * Build: cc -O2 -o ws_bench ws_bench.c -lssl -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum state {
    S_DEAD,
    S_TCP,     /* client: connect() in progress */
    S_CONNECT, /* client: CONNECT sent, waiting for the 200 */
    S_TLS,     /* TLS handshake (either side) */
    S_UPGRADE, /* client: upgrade sent, waiting for the 101 */
    S_REQ,     /* server: waiting for the upgrade request */
    S_WS,      /* frames */
};

struct conn {
    int            fd;
    SSL           *ssl;
    enum state     st;
    int            server;
    unsigned       events; /* registered epoll events */
    unsigned char *in;
    size_t         inlen, incap;
    unsigned char *out;
    size_t         outoff, outlen, outcap;
    int            idle;    /* idle mode: echoed its message, now just held */
    int            closing; /* server: close sent, drop after the flush */
    char           accept[64];
};

static struct sockaddr_in    addr;
static const char           *target, *sni, *cafile, *xhdr, *want_auth;
static SSL_CTX              *ctx;
static int                   ep, lfd, mode_idle, mode_server;
static volatile sig_atomic_t stop_flag;
static long long             n_msgs, n_errors;
static int                   n_ready, n_open, n_lost;
static size_t                msg_size = 1024;
static unsigned char        *payload;
static uint64_t              rng = 0x9E3779B97F4A7C15ULL;
static const char            GUID[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

static double
now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static void
usage(void)
{
    fprintf(stderr,
            "usage: ws_bench load|idle -a IP:PORT [-T HOST:PORT] -S SNI [-c N] [-d SEC] [-w SEC]\n"
            "                [-m BYTES] [-C CAFILE] [-H HDR] [-p PID,...] [-s SEC]\n"
            "       ws_bench server -l IP:PORT -k CERT -K KEY [-A AUTHVALUE]\n");
    exit(2);
}

static uint32_t
rnd(void)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (uint32_t)((rng * 0x2545F4914F6CDD1DULL) >> 32);
}

static void
set_events(struct conn *c, unsigned ev)
{
    if (c->events == ev)
        return;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
    c->events = ev;
}

static void
drop(struct conn *c, const char *why)
{
    static int shown;
    if (why != NULL) {
        if (getenv("WB_DEBUG") && shown++ < 5) {
            fprintf(stderr, "ws_bench: %s (state %d)\n", why, c->st);
            ERR_print_errors_fp(stderr);
        }
        if (!c->server && !stop_flag) {
            n_errors++;
            if (c->idle)
                n_lost++;
        }
    }
    ERR_clear_error();
    if (c->ssl) {
        SSL_set_quiet_shutdown(c->ssl, 1);
        SSL_free(c->ssl);
    }
    c->ssl = NULL;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    if (c->st != S_DEAD)
        n_open--;
    c->st = S_DEAD;
    c->idle = 0;
    c->inlen = c->outoff = c->outlen = 0;
    if (c->server) {
        free(c->in);
        free(c->out);
        free(c);
    }
}

static int
grow(unsigned char **b, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 4096;
    while (n < need)
        n *= 2;
    if (n > (64u << 20))
        return -1;
    unsigned char *p = realloc(*b, n);
    if (!p)
        return -1;
    *b = p;
    *cap = n;
    return 0;
}

static int
queue(struct conn *c, const void *p, size_t n)
{
    if (c->outoff == c->outlen)
        c->outoff = c->outlen = 0;
    if (grow(&c->out, &c->outcap, c->outlen + n) < 0)
        return -1;
    memcpy(c->out + c->outlen, p, n);
    c->outlen += n;
    return 0;
}

/* Write what is queued: 0 when all is out or the socket is full (EPOLLOUT
 * registered), -1 on an error. */
static int
flush(struct conn *c)
{
    while (c->outoff < c->outlen) {
        ssize_t k;
        if (c->ssl && SSL_is_init_finished(c->ssl)) {
            int r = SSL_write(c->ssl, c->out + c->outoff, (int)(c->outlen - c->outoff));
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_WRITE) {
                    set_events(c, EPOLLIN | EPOLLOUT);
                    return 0;
                }
                if (e == SSL_ERROR_WANT_READ)
                    return 0;
                return -1;
            }
            k = r;
        } else {
            k = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
            if (k < 0) {
                if (errno == EAGAIN) {
                    set_events(c, EPOLLIN | EPOLLOUT);
                    return 0;
                }
                return -1;
            }
        }
        c->outoff += (size_t)k;
    }
    c->outoff = c->outlen = 0;
    set_events(c, EPOLLIN);
    return 0;
}

/* Read all there is into c->in: 0 (nothing more for now), -1 on EOF/error. */
static int
fill(struct conn *c)
{
    for (;;) {
        if (grow(&c->in, &c->incap, c->inlen + 16384) < 0)
            return -1;
        if (c->ssl) {
            int r = SSL_read(c->ssl, c->in + c->inlen, (int)(c->incap - c->inlen));
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_READ)
                    return 0;
                if (e == SSL_ERROR_WANT_WRITE) {
                    set_events(c, EPOLLIN | EPOLLOUT);
                    return 0;
                }
                return -1;
            }
            c->inlen += (size_t)r;
        } else {
            ssize_t r = recv(c->fd, c->in + c->inlen, c->incap - c->inlen, 0);
            if (r < 0)
                return errno == EAGAIN ? 0 : -1;
            if (r == 0)
                return -1;
            c->inlen += (size_t)r;
        }
    }
}

static void
consume(struct conn *c, size_t n)
{
    memmove(c->in, c->in + n, c->inlen - n);
    c->inlen -= n;
}

static void
ws_accept(const char *key, size_t keylen, char *out)
{
    unsigned char md[SHA_DIGEST_LENGTH];
    char          buf[256];
    if (keylen > 200)
        keylen = 200;
    memcpy(buf, key, keylen);
    memcpy(buf + keylen, GUID, sizeof GUID - 1);
    SHA1((unsigned char *)buf, keylen + sizeof GUID - 1, md);
    EVP_EncodeBlock((unsigned char *)out, md, SHA_DIGEST_LENGTH);
}

/* The value of header `name` in the head [h, h+n), or NULL. */
static const char *
header(const char *h, size_t n, const char *name, size_t *vlen)
{
    size_t      nl = strlen(name);
    const char *p = memmem(h, n, "\r\n", 2), *end = h + n;
    while (p && p + 2 < end) {
        p += 2;
        const char *eol = memmem(p, end - p, "\r\n", 2);
        if (!eol)
            break;
        if ((size_t)(eol - p) > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            const char *e = eol;
            while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
                e--;
            *vlen = (size_t)(e - v);
            return v;
        }
        p = eol;
    }
    return NULL;
}

/* A frame onto c's queue: masked when the client sends. */
static int
frame(struct conn *c, int opcode, const unsigned char *p, size_t n)
{
    unsigned char h[14];
    size_t        hl = 2;
    h[0] = (unsigned char)(0x80 | opcode);
    if (n < 126) {
        h[1] = (unsigned char)n;
    } else if (n <= 0xFFFF) {
        h[1] = 126;
        h[2] = (unsigned char)(n >> 8);
        h[3] = (unsigned char)n;
        hl = 4;
    } else {
        h[1] = 127;
        for (int k = 0; k < 8; k++)
            h[2 + k] = (unsigned char)((uint64_t)n >> (56 - 8 * k));
        hl = 10;
    }
    if (c->server) {
        if (queue(c, h, hl) < 0 || queue(c, p, n) < 0)
            return -1;
        return 0;
    }
    uint32_t      r = rnd();
    unsigned char key[4];
    memcpy(key, &r, 4);
    h[1] |= 0x80;
    memcpy(h + hl, key, 4);
    hl += 4;
    if (queue(c, h, hl) < 0 || grow(&c->out, &c->outcap, c->outlen + n) < 0)
        return -1;
    unsigned char *o = c->out + c->outlen;
    for (size_t i = 0; i < n; i++)
        o[i] = p[i] ^ key[i & 3];
    c->outlen += n;
    return 0;
}

/* A complete frame at the start of c->in? Returns its total length (header +
 * payload), 0 when incomplete, -1 when bad; fills opcode/fin/payload. */
static long long
parse(struct conn *c, int *opcode, int *fin, unsigned char **pl, size_t *plen)
{
    unsigned char *h = c->in;
    size_t         n = c->inlen, o = 2;
    if (n < 2)
        return 0;
    uint64_t len = h[1] & 0x7F;
    int      masked = (h[1] & 0x80) != 0;
    if (len == 126) {
        if (n < 4)
            return 0;
        len = (uint64_t)h[2] << 8 | h[3];
        o = 4;
    } else if (len == 127) {
        if (n < 10)
            return 0;
        len = 0;
        for (int k = 0; k < 8; k++)
            len = len << 8 | h[2 + k];
        o = 10;
    }
    if (masked != c->server || (h[0] & 0x70) || len > (32u << 20))
        return -1;
    size_t ko = o;
    if (masked)
        o += 4;
    if (n < o + len)
        return 0;
    *opcode = h[0] & 0x0F;
    *fin = (h[0] & 0x80) != 0;
    *pl = h + o;
    *plen = (size_t)len;
    if (masked)
        for (size_t i = 0; i < len; i++)
            h[o + i] ^= h[ko + (i & 3)];
    return (long long)(o + len);
}

static int
send_msg(struct conn *c)
{
    return frame(c, 1, payload, msg_size);
}

static void
start_tls(struct conn *c)
{
    c->ssl = SSL_new(ctx);
    if (!c->ssl) {
        drop(c, "SSL_new");
        return;
    }
    SSL_set_fd(c->ssl, c->fd);
    if (c->server) {
        SSL_set_accept_state(c->ssl);
    } else {
        SSL_set_tlsext_host_name(c->ssl, sni);
        if (cafile)
            SSL_set1_host(c->ssl, sni);
        SSL_set_connect_state(c->ssl);
    }
    c->st = S_TLS;
}

static void
send_upgrade(struct conn *c)
{
    unsigned char raw[16];
    char          key[32], req[1024];
    for (int i = 0; i < 16; i++)
        raw[i] = (unsigned char)rnd();
    EVP_EncodeBlock((unsigned char *)key, raw, 16);
    ws_accept(key, strlen(key), c->accept);
    int n = snprintf(req, sizeof req,
                     "GET /echo HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                     "Sec-WebSocket-Key: %s\r\n%s%s\r\n",
                     target ? target : sni, key, xhdr ? xhdr : "", xhdr ? "\r\n" : "");
    queue(c, req, (size_t)n);
    c->st = S_UPGRADE;
}

/* Server: a complete upgrade request head of hl bytes in c->in. */
static int
server_upgrade(struct conn *c, size_t hl)
{
    const char *h = (const char *)c->in, *k, *a;
    size_t      kl, al;
    char        acc[64], resp[512];
    if (hl < 4 || memcmp(h, "GET ", 4) != 0 || !(k = header(h, hl, "Sec-WebSocket-Key", &kl)))
        return -1;
    if (want_auth) {
        a = header(h, hl, "Authorization", &al);
        if (!a || al != strlen(want_auth) || memcmp(a, want_auth, al) != 0) {
            static const char r403[] = "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n"
                                       "Connection: close\r\n\r\n";
            queue(c, r403, sizeof r403 - 1);
            c->closing = 1;
            consume(c, hl);
            return 0;
        }
    }
    ws_accept(k, kl, acc);
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                     acc);
    queue(c, resp, (size_t)n);
    consume(c, hl);
    c->st = S_WS;
    return 0;
}

/* Frames in c->in: the server echoes, the client checks and counts. Returns
 * the number of data messages handled, -1 to drop the connection. */
static int
frames(struct conn *c)
{
    int done = 0;
    for (;;) {
        int            op, fin;
        unsigned char *pl;
        size_t         pn;
        long long      t = parse(c, &op, &fin, &pl, &pn);
        if (t < 0)
            return -1;
        if (t == 0)
            return done;
        if (c->server) {
            if (!fin) /* the bench never fragments */
                return -1;
            if (op == 1 || op == 2) {
                if (frame(c, op, pl, pn) < 0)
                    return -1;
                done++;
            } else if (op == 9) {
                if (frame(c, 10, pl, pn) < 0)
                    return -1;
            } else if (op == 8) {
                frame(c, 8, pl, pn < 2 ? pn : 2);
                c->closing = 1;
            }
        } else {
            if (op == 1 && fin) {
                if (pn != msg_size || memcmp(pl, payload, pn) != 0)
                    return -1;
                done++;
                n_msgs++;
            } else if (op == 9) {
                if (frame(c, 10, pl, pn) < 0)
                    return -1;
            } else if (op != 10) {
                return -1; /* a close or anything unexpected */
            }
        }
        consume(c, (size_t)t);
    }
}

static void
drive(struct conn *c)
{
    for (;;) {
        switch (c->st) {
        case S_DEAD:
            return;
        case S_TCP: {
            int       e = 0;
            socklen_t l = sizeof e;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &l);
            if (e != 0) {
                drop(c, "connect");
                return;
            }
            if (target) {
                char req[600];
                int n = snprintf(req, sizeof req, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target,
                                 target);
                queue(c, req, (size_t)n);
                c->st = S_CONNECT;
            } else {
                start_tls(c);
            }
            set_events(c, EPOLLIN);
            continue;
        }
        case S_CONNECT: {
            if (flush(c) < 0 || fill(c) < 0) {
                drop(c, "CONNECT i/o");
                return;
            }
            char *e = memmem(c->in, c->inlen, "\r\n\r\n", 4);
            if (!e)
                return;
            if (c->inlen < 12 || memcmp(c->in + 9, "200", 3) != 0 ||
                (size_t)(e + 4 - (char *)c->in) != c->inlen) {
                drop(c, "CONNECT refused");
                return;
            }
            c->inlen = 0;
            start_tls(c);
            continue;
        }
        case S_TLS: {
            int r = SSL_do_handshake(c->ssl);
            if (r == 1) {
                if (c->server) {
                    c->st = S_REQ;
                } else {
                    send_upgrade(c);
                }
                set_events(c, EPOLLIN);
                continue;
            }
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ) {
                set_events(c, EPOLLIN);
                return;
            }
            if (e == SSL_ERROR_WANT_WRITE) {
                set_events(c, EPOLLIN | EPOLLOUT);
                return;
            }
            drop(c, "TLS handshake");
            return;
        }
        case S_UPGRADE: {
            if (flush(c) < 0 || fill(c) < 0) {
                drop(c, "upgrade i/o");
                return;
            }
            char *e = memmem(c->in, c->inlen, "\r\n\r\n", 4);
            if (!e)
                return;
            size_t      hl = (size_t)(e + 4 - (char *)c->in), al;
            const char *a = header((char *)c->in, hl, "Sec-WebSocket-Accept", &al);
            if (hl < 12 || memcmp(c->in + 9, "101", 3) != 0 || !a || al != strlen(c->accept) ||
                memcmp(a, c->accept, al) != 0 ||
                header((char *)c->in, hl, "Sec-WebSocket-Extensions", &al)) {
                if (getenv("WB_DEBUG"))
                    fprintf(stderr, "ws_bench: upgrade answer: %.*s\n", (int)hl, c->in);
                drop(c, "upgrade refused");
                return;
            }
            consume(c, hl);
            c->st = S_WS;
            if (send_msg(c) < 0) {
                drop(c, "queue");
                return;
            }
            continue;
        }
        case S_REQ: {
            if (fill(c) < 0) {
                drop(c, NULL);
                return;
            }
            char *e = memmem(c->in, c->inlen, "\r\n\r\n", 4);
            if (!e) {
                if (c->inlen > 16384)
                    drop(c, "huge head");
                return;
            }
            if (server_upgrade(c, (size_t)(e + 4 - (char *)c->in)) < 0) {
                drop(c, "bad upgrade");
                return;
            }
            if (c->closing) {
                flush(c);
                drop(c, NULL);
                return;
            }
            continue;
        }
        case S_WS: {
            if (flush(c) < 0) {
                drop(c, "write");
                return;
            }
            int eof = fill(c) < 0;
            int k = frames(c);
            if (k < 0) {
                drop(c, "bad frame");
                return;
            }
            if (c->server) {
                if (flush(c) < 0 || c->closing) {
                    drop(c, NULL);
                    return;
                }
                if (eof) {
                    drop(c, NULL);
                    return;
                }
                if (k == 0)
                    return;
                continue;
            }
            if (eof) {
                drop(c, "closed");
                return;
            }
            if (k == 0)
                return;
            if (mode_idle) {
                if (!c->idle) {
                    c->idle = 1;
                    n_ready++;
                }
                return;
            }
            if (send_msg(c) < 0) {
                drop(c, "queue");
                return;
            }
            continue;
        }
        }
    }
}

static int
open_conn(struct conn *c)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    c->fd = fd;
    c->st = S_TCP;
    c->ssl = NULL;
    c->inlen = c->outoff = c->outlen = 0;
    c->idle = 0;
    c->events = EPOLLIN | EPOLLOUT;
    struct epoll_event ev = {.events = c->events, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    n_open++;
    return 0;
}

static int
parse_addr(const char *s, struct sockaddr_in *a)
{
    char        host[64];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof host)
        return -1;
    memcpy(host, s, colon - s);
    host[colon - s] = 0;
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
        return -1;
    if ((ntohl(a->sin_addr.s_addr) >> 24) != 127)
        return -1;
    return 0;
}

static double
proc_cpu(const char *pid)
{
    char  path[64], buf[2048];
    FILE *f;
    snprintf(path, sizeof path, "/proc/%s/stat", pid);
    if (!(f = fopen(path, "r")))
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    unsigned long ut = 0, st = 0;
    /* after ") ": state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
     * utime(14) stime(15) */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double
self_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static double
busy_cpu(void)
{
    unsigned long long v[10] = {0};
    FILE              *f = fopen("/proc/stat", "r");
    if (!f)
        return -1;
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n < 8)
        return -1;
    /* user nice system idle iowait irq softirq steal: busy = all but idle, iowait */
    return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
}

static int
run_server(const char *listen_at, const char *cert, const char *key)
{
    struct sockaddr_in la;
    if (parse_addr(listen_at, &la) < 0)
        usage();
    ctx = SSL_CTX_new(TLS_server_method());
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        ERR_print_errors_fp(stderr);
        return 1;
    }
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 0);
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&la, sizeof la) < 0 || listen(lfd, 4096) < 0) {
        perror("ws_bench: listen");
        return 1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event evs[256];
    while (!stop_flag) {
        int n = epoll_wait(ep, evs, 256, 500);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c == NULL) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    c = calloc(1, sizeof *c);
                    if (!c) {
                        close(fd);
                        continue;
                    }
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    c->fd = fd;
                    c->server = 1;
                    c->events = EPOLLIN;
                    struct epoll_event e2 = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e2);
                    n_open++;
                    start_tls(c);
                }
                continue;
            }
            drive(c);
        }
    }
    return 0;
}

int
main(int argc, char **argv)
{
    int         nconns = 50, opt;
    double      dur = 5, warm = 1, hold = 120;
    const char *a = NULL, *pids = NULL, *listen_at = NULL, *cert = NULL, *key = NULL;
    if (argc < 2)
        usage();
    const char *mode = argv[1];
    if (strcmp(mode, "load") != 0 && strcmp(mode, "idle") != 0 && strcmp(mode, "server") != 0)
        usage();
    mode_idle = strcmp(mode, "idle") == 0;
    mode_server = strcmp(mode, "server") == 0;
    optind = 2;
    while ((opt = getopt(argc, argv, "a:T:S:c:d:w:m:C:H:p:s:l:k:K:A:")) != -1) {
        switch (opt) {
        case 'a':
            a = optarg;
            break;
        case 'T':
            target = optarg;
            break;
        case 'S':
            sni = optarg;
            break;
        case 'c':
            nconns = atoi(optarg);
            break;
        case 'd':
            dur = atof(optarg);
            break;
        case 'w':
            warm = atof(optarg);
            break;
        case 'm':
            msg_size = (size_t)atol(optarg);
            break;
        case 'C':
            cafile = optarg;
            break;
        case 'H':
            xhdr = optarg;
            break;
        case 'p':
            pids = optarg;
            break;
        case 's':
            hold = atof(optarg);
            break;
        case 'l':
            listen_at = optarg;
            break;
        case 'k':
            cert = optarg;
            break;
        case 'K':
            key = optarg;
            break;
        case 'A':
            want_auth = optarg;
            break;
        default:
            usage();
        }
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (mode_server) {
        if (!listen_at || !cert || !key)
            usage();
        return run_server(listen_at, cert, key);
    }
    if (!a || !sni || nconns < 1 || msg_size < 1 || parse_addr(a, &addr) < 0)
        usage();
    rng ^= (uint64_t)getpid() << 32 ^ (uint64_t)time(NULL);
    payload = malloc(msg_size);
    for (size_t i = 0; i < msg_size; i++) /* ASCII text, valid UTF-8 */
        payload[i] =
            (unsigned char)"abcdefghijklmnopqrstuvwxyz0123456789 .,-ABCDEFGHIJKLMNOPQRSTUVWXYZ"[i %
                                                                                                66];
    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (cafile) {
        if (SSL_CTX_load_verify_locations(ctx, cafile, NULL) != 1) {
            ERR_print_errors_fp(stderr);
            return 1;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    }
    struct conn *cs = calloc((size_t)nconns, sizeof *cs);
    for (int i = 0; i < nconns; i++)
        cs[i].fd = -1;
    struct epoll_event *evs = calloc(1024, sizeof *evs);
    int                 next = 0, inflight_cap = mode_idle ? 64 : nconns;
    double              t0 = now(), t_up = 0, t_w = 0, cpu_w = 0, busy_w = 0;
    long long           msgs_w = 0;
    double              pcpu_w[16];
    char               *pidv[16];
    int                 npid = 0;
    if (pids) {
        char *s = strdup(pids), *save = NULL;
        for (char *t = strtok_r(s, ",", &save); t && npid < 16; t = strtok_r(NULL, ",", &save))
            pidv[npid++] = t;
    }
    for (;;) {
        /* open more while under the in-flight cap */
        while (next < nconns && (n_open - n_ready) < inflight_cap) {
            if (open_conn(&cs[next]) < 0) {
                n_errors++;
            }
            next++;
        }
        if (stop_flag)
            break;
        int n = epoll_wait(ep, evs, 1024, 50);
        for (int i = 0; i < n; i++)
            drive((struct conn *)evs[i].data.ptr);
        double t = now();
        if (mode_idle) {
            if (t_up == 0 && n_ready == nconns) {
                t_up = t;
                printf("ready %d\n", n_ready);
                fflush(stdout);
            } else if (t_up == 0 && next == nconns && n_open == n_ready) {
                printf("failed ready %d errors %lld\n", n_ready, n_errors);
                return 1;
            } else if (t_up == 0 && t - t0 > 120) {
                printf("failed ready %d errors %lld (timeout)\n", n_ready, n_errors);
                return 1;
            }
            if (t_up > 0 && t - t_up > hold)
                break;
            continue;
        }
        if (t_up == 0) {
            int up = 0;
            for (int i = 0; i < nconns; i++)
                up += cs[i].st == S_WS;
            if (up == nconns) {
                t_up = t;
            } else if (n_errors > 0 || t - t0 > 60) {
                printf("failed up %d errors %lld\n", up, n_errors);
                return 1;
            }
            continue;
        }
        if (t_w == 0 && t - t_up >= warm) {
            t_w = t;
            msgs_w = n_msgs;
            cpu_w = self_cpu();
            busy_w = busy_cpu();
            for (int k = 0; k < npid; k++)
                pcpu_w[k] = proc_cpu(pidv[k]);
        }
        if (t_w > 0 && t - t_w >= dur) {
            double    el = t - t_w;
            long long m = n_msgs - msgs_w;
            printf("messages %lld seconds %.3f mps %.0f errors %lld client_cpu %.2f busy %.2f\n", m,
                   el, m / el, n_errors, self_cpu() - cpu_w, busy_cpu() - busy_w);
            for (int k = 0; k < npid; k++)
                printf("cpu %s %.2f\n", pidv[k], proc_cpu(pidv[k]) - pcpu_w[k]);
            fflush(stdout);
            break;
        }
    }
    if (mode_idle && t_up > 0 && n_lost > 0)
        printf("lost %d\n", n_lost);
    for (int i = 0; i < nconns; i++)
        if (cs[i].st != S_DEAD) {
            stop_flag = 1;
            drop(&cs[i], NULL);
        }
    return 0;
}
