/* tls_bench.c - HTTPS load generator and idle-TLS-connection holder for the
 * bench/run_tls.sh and bench/run_transparent.sh benchmarks.
 *
 * Single thread, epoll (edge-triggered), non-blocking sockets, OpenSSL.
 * Connects only to the numeric address given with -a, which must be in
 * 127.0.0.0/8, 10.0.0.0/8 (bench namespaces) or 203.0.113.0/24 (TEST-NET-3,
 * redirected inside a bench namespace).
 *
 *   tls_bench load -a IP:PORT [-T HOST:PORT] -S SNI [-c CONNS] [-d SEC] [-w SEC]
 *                  [-P PATH] [-n] [-C CAFILE] [-H "Name: value"]
 *       CONNS connections to -a. With -T each first sends
 *       "CONNECT HOST:PORT HTTP/1.1" and waits for a 2xx, then does TLS with
 *       SNI (and Host:) SNI; without -T, TLS starts right away. Then
 *       keep-alive "GET PATH" requests one after another (no pipelining);
 *       responses may use Content-Length or chunked framing. -n: a new
 *       connection (TCP [+ CONNECT] + full TLS handshake, no session
 *       resumption) for every request. -C: verify the server certificate
 *       against CAFILE and the name SNI (default: no verification).
 *       Prints "requests N seconds S rps R mbps M errors E handshakes H".
 *
 *   tls_bench idle -a IP:PORT -T HOST:PORT -S SNI -c N [-P PATH] [-C CAFILE] [-s SEC]
 *       Opens N connections as above (at most 64 handshakes in flight); with
 *       -P each does one GET first. Prints "ready N" when all are up (or
 *       "failed ready R errors E" and exits 1), then holds them until
 *       SIGTERM/SIGINT or -s seconds (default 120); prints "lost N" if any
 *       is closed meanwhile.
 *
 * Build: cc -O2 -o tls_bench tls_bench.c -lssl -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
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

enum state { ST_DEAD, ST_TCP, ST_CONNECT_SENT, ST_HANDSHAKE, ST_WRITE, ST_HDR, ST_BODY, ST_IDLE };
enum body { B_LEN, B_CHUNK_SIZE, B_CHUNK_DATA, B_CHUNK_CRLF, B_TRAILER };

struct conn {
    int        fd;
    SSL       *ssl;
    enum state st;
    enum body  bst;
    char       hdr[8192];
    size_t     hlen;
    long long  left;     /* B_LEN: body bytes left; B_CHUNK_DATA: chunk bytes left */
    char       line[64]; /* chunk size / trailer line */
    size_t     llen;
    size_t     wr_off;
    int        done_one; /* idle mode: counted as ready */
};

static struct sockaddr_in    addr;
static const char           *target, *sni, *path = "/100b", *cafile, *xhdr;
static char                  connect_req[512], get_req[2048];
static size_t                connect_len, get_len;
static SSL_CTX              *ctx;
static int                   ep, new_conn_mode, idle_mode, idle_get;
static volatile sig_atomic_t stop_flag;
static long long             n_requests, n_bytes, n_errors, n_handshakes;
static int                   counting, n_ready;
static char                  rbuf[256 * 1024];

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
    fprintf(stderr, "usage: tls_bench load|idle -a IP:PORT [-T HOST:PORT] -S SNI [-c N] [-d SEC] "
                    "[-w SEC] [-P PATH] [-n] [-C CAFILE] [-H HDR] [-s SEC]\n");
    exit(2);
}

static void
err(struct conn *c, const char *why)
{
    static int shown;
    if (getenv("TB_DEBUG") && shown++ < 5) {
        fprintf(stderr, "tls_bench: %s (state %d)\n", why, c->st);
        ERR_print_errors_fp(stderr);
    }
    ERR_clear_error();
    if (!(idle_mode && stop_flag))
        n_errors++;
    if (c->ssl)
        SSL_free(c->ssl);
    c->ssl = NULL;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->st = ST_DEAD;
}

static void
close_conn(struct conn *c)
{
    if (c->ssl) {
        SSL_set_quiet_shutdown(c->ssl, 1);
        SSL_free(c->ssl);
    }
    c->ssl = NULL;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->st = ST_DEAD;
}

static void drive(struct conn *c);

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
    memset(c, 0, sizeof *c);
    c->fd = fd;
    c->st = ST_TCP;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET | EPOLLRDHUP, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    return 0;
}

static void
start_tls(struct conn *c)
{
    c->ssl = SSL_new(ctx);
    if (!c->ssl) {
        err(c, "SSL_new");
        return;
    }
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_tlsext_host_name(c->ssl, sni);
    if (cafile)
        SSL_set1_host(c->ssl, sni);
    SSL_set_connect_state(c->ssl);
    c->st = ST_HANDSHAKE;
}

static long long
content_length(const char *hdr, size_t len, int *chunked)
{
    const char *p = hdr, *end = hdr + len;
    long long   cl = -1;
    *chunked = 0;
    while (p < end) {
        const char *eol = memmem(p, end - p, "\r\n", 2);
        if (!eol)
            break;
        if (eol - p > 15 && strncasecmp(p, "Content-Length:", 15) == 0)
            cl = atoll(p + 15);
        else if (eol - p > 18 && strncasecmp(p, "Transfer-Encoding:", 18) == 0 &&
                 memmem(p, eol - p, "chunked", 7))
            *chunked = 1;
        p = eol + 2;
    }
    return cl;
}

static void
start_request(struct conn *c)
{
    c->st = ST_WRITE;
    c->wr_off = 0;
}

static void
response_done(struct conn *c)
{
    if (counting)
        n_requests++;
    if (idle_mode) {
        c->st = ST_IDLE;
        if (!c->done_one) {
            c->done_one = 1;
            n_ready++;
        }
        return;
    }
    if (new_conn_mode) {
        close_conn(c);
        if (open_conn(c) < 0)
            n_errors++;
        return;
    }
    start_request(c);
}

/* Consumes body bytes; returns 0 when the response completed with no extra
 * bytes, 1 when more is expected, -1 on a framing error. */
static int
body_bytes(struct conn *c, const char *d, size_t n)
{
    while (n > 0) {
        switch (c->bst) {
        case B_LEN: {
            if ((long long)n > c->left)
                return -1;
            c->left -= (long long)n;
            n = 0;
            if (c->left == 0)
                return 0;
            break;
        }
        case B_CHUNK_SIZE:
        case B_TRAILER:
            while (n > 0) {
                char ch = *d++;
                n--;
                if (c->llen < sizeof c->line - 1)
                    c->line[c->llen++] = ch;
                if (ch == '\n') {
                    c->line[c->llen] = 0;
                    int empty = c->llen <= 2;
                    c->llen = 0;
                    if (c->bst == B_TRAILER) {
                        if (empty)
                            return n == 0 ? 0 : -1;
                        break;
                    }
                    long long sz = strtoll(c->line, NULL, 16);
                    if (sz < 0)
                        return -1;
                    if (sz == 0) {
                        c->bst = B_TRAILER;
                    } else {
                        c->bst = B_CHUNK_DATA;
                        c->left = sz;
                    }
                    break;
                }
            }
            break;
        case B_CHUNK_DATA: {
            size_t take = (long long)n < c->left ? n : (size_t)c->left;
            c->left -= (long long)take;
            d += take;
            n -= take;
            if (c->left == 0) {
                c->bst = B_CHUNK_CRLF;
                c->llen = 0;
            }
            break;
        }
        case B_CHUNK_CRLF:
            while (n > 0 && c->bst == B_CHUNK_CRLF) {
                d++;
                n--;
                if (++c->llen == 2) {
                    c->llen = 0;
                    c->bst = B_CHUNK_SIZE;
                }
            }
            break;
        }
    }
    return 1;
}

/* Plain-socket read of the CONNECT answer. */
static void
read_connect_reply(struct conn *c)
{
    for (;;) {
        ssize_t n = read(c->fd, c->hdr + c->hlen, sizeof c->hdr - 1 - c->hlen);
        if (n < 0) {
            if (errno != EAGAIN)
                err(c, "read CONNECT reply");
            return;
        }
        if (n == 0) {
            err(c, "proxy closed after CONNECT");
            return;
        }
        c->hlen += (size_t)n;
        c->hdr[c->hlen] = 0;
        char *e = memmem(c->hdr, c->hlen, "\r\n\r\n", 4);
        if (!e) {
            if (c->hlen >= sizeof c->hdr - 1)
                err(c, "CONNECT reply too long");
            continue;
        }
        if (!(c->hlen >= 12 && strncmp(c->hdr, "HTTP/1.", 7) == 0 && c->hdr[9] == '2') ||
            (size_t)(e + 4 - c->hdr) != c->hlen) {
            if (getenv("TB_DEBUG"))
                fprintf(stderr, "CONNECT refused: %.100s\n", c->hdr);
            err(c, "CONNECT refused");
            return;
        }
        start_tls(c);
        return;
    }
}

/* Runs c's state machine until it would block (edge-triggered epoll). */
static void
drive(struct conn *c)
{
    for (;;) {
        switch (c->st) {
        case ST_DEAD:
            return;
        case ST_TCP: {
            int       e = 0;
            socklen_t el = sizeof e;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &el);
            if (e) {
                err(c, "connect failed");
                return;
            }
            struct sockaddr_in peer;
            socklen_t          pl = sizeof peer;
            if (getpeername(c->fd, (struct sockaddr *)&peer, &pl) < 0)
                return; /* still connecting */
            if (target) {
                if (write(c->fd, connect_req, connect_len) != (ssize_t)connect_len) {
                    err(c, "write CONNECT");
                    return;
                }
                c->st = ST_CONNECT_SENT;
                c->hlen = 0;
            } else {
                start_tls(c);
            }
            break;
        }
        case ST_CONNECT_SENT:
            read_connect_reply(c);
            if (c->st == ST_CONNECT_SENT)
                return;
            break;
        case ST_HANDSHAKE: {
            int r = SSL_do_handshake(c->ssl);
            if (r == 1) {
                if (counting || idle_mode)
                    n_handshakes++;
                if (idle_mode && !idle_get) {
                    c->st = ST_IDLE;
                    c->done_one = 1;
                    n_ready++;
                    break;
                }
                start_request(c);
                break;
            }
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                return;
            err(c, "TLS handshake failed");
            return;
        }
        case ST_WRITE: {
            int r = SSL_write(c->ssl, get_req + c->wr_off, (int)(get_len - c->wr_off));
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                    return;
                err(c, "SSL_write");
                return;
            }
            c->wr_off += (size_t)r;
            if (c->wr_off == get_len) {
                c->st = ST_HDR;
                c->hlen = 0;
            }
            break;
        }
        case ST_HDR:
        case ST_BODY:
        case ST_IDLE: {
            int r = SSL_read(c->ssl, rbuf, sizeof rbuf);
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                    return;
                err(c, c->st == ST_IDLE ? "idle connection closed" : "SSL_read");
                return;
            }
            if (counting)
                n_bytes += r;
            if (c->st == ST_IDLE)
                break; /* ignore */
            size_t off = 0;
            if (c->st == ST_HDR) {
                size_t room = sizeof c->hdr - 1 - c->hlen;
                size_t take = (size_t)r < room ? (size_t)r : room;
                size_t prev = c->hlen;
                memcpy(c->hdr + c->hlen, rbuf, take);
                c->hlen += take;
                c->hdr[c->hlen] = 0;
                char *e = memmem(c->hdr, c->hlen, "\r\n\r\n", 4);
                if (!e) {
                    if (c->hlen >= sizeof c->hdr - 1)
                        err(c, "response head too long");
                    break;
                }
                size_t hend = (size_t)(e - c->hdr) + 4;
                off = hend - prev;
                if (!(strncmp(c->hdr, "HTTP/1.", 7) == 0 && c->hdr[9] == '2')) {
                    if (getenv("TB_DEBUG"))
                        fprintf(stderr, "response: %.200s\n", c->hdr);
                    err(c, "non-2xx response");
                    return;
                }
                int       chunked;
                long long cl = content_length(c->hdr, hend, &chunked);
                if (chunked) {
                    c->bst = B_CHUNK_SIZE;
                    c->llen = 0;
                } else if (cl >= 0) {
                    c->bst = B_LEN;
                    c->left = cl;
                } else {
                    err(c, "response without length");
                    return;
                }
                c->st = ST_BODY;
                if (c->bst == B_LEN && cl == 0) {
                    if (off != (size_t)r) {
                        err(c, "extra bytes");
                        return;
                    }
                    response_done(c);
                    break;
                }
            }
            if (off < (size_t)r) {
                int b = body_bytes(c, rbuf + off, (size_t)r - off);
                if (b < 0) {
                    err(c, "bad body framing");
                    return;
                }
                if (b == 0)
                    response_done(c);
            }
            break;
        }
        }
    }
}

static int
addr_allowed(uint32_t a)
{
    return (a >> 24) == 127 || (a >> 24) == 10 || (a >> 8) == ((203u << 16) | (0u << 8) | 113u);
}

int
main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    const char *mode = argv[1], *a = NULL;
    int         nconns = 50, opt, path_given = 0;
    double      duration = 5, warmup = 1, hold = 120;
    optind = 2;
    while ((opt = getopt(argc, argv, "a:T:S:c:d:w:P:nC:H:s:")) != -1) {
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
            duration = atof(optarg);
            break;
        case 'w':
            warmup = atof(optarg);
            break;
        case 'P':
            path = optarg;
            path_given = 1;
            break;
        case 'n':
            new_conn_mode = 1;
            break;
        case 'C':
            cafile = optarg;
            break;
        case 'H':
            xhdr = optarg;
            break;
        case 's':
            hold = atof(optarg);
            break;
        default:
            usage();
        }
    }
    if (!a || !sni || nconns <= 0)
        usage();
    {
        char        host[64];
        const char *colon = strrchr(a, ':');
        if (!colon || (size_t)(colon - a) >= sizeof host)
            usage();
        memcpy(host, a, colon - a);
        host[colon - a] = 0;
        addr.sin_family = AF_INET;
        addr.sin_port = htons((uint16_t)atoi(colon + 1));
        if (inet_pton(AF_INET, host, &addr.sin_addr) != 1)
            usage();
        if (!addr_allowed(ntohl(addr.sin_addr.s_addr))) {
            fprintf(stderr, "tls_bench: refusing address %s (bench addresses only)\n", a);
            return 2;
        }
    }
    if (strcmp(mode, "idle") == 0) {
        idle_mode = 1;
        idle_get = path_given;
    } else if (strcmp(mode, "load") != 0) {
        usage();
    }
    if (target)
        connect_len = (size_t)snprintf(connect_req, sizeof connect_req,
                                       "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target);
    /* Host: the SNI plus the port of the CONNECT target or -a. */
    const char *hp = target ? strrchr(target, ':') : strrchr(a, ':');
    get_len = (size_t)snprintf(get_req, sizeof get_req, "GET %s HTTP/1.1\r\nHost: %s%s\r\n%s%s\r\n",
                               path, sni, hp ? hp : "", xhdr ? xhdr : "", xhdr ? "\r\n" : "");

    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1);
    if (cafile) {
        if (SSL_CTX_load_verify_locations(ctx, cafile, NULL) != 1) {
            fprintf(stderr, "tls_bench: cannot load %s\n", cafile);
            return 2;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct conn *conns = calloc((size_t)nconns, sizeof *conns);
    if (!conns)
        return 1;
    for (int i = 0; i < nconns; i++)
        conns[i].fd = -1;
    struct epoll_event evs[256];

    if (idle_mode) {
        int    opened = 0;
        double t0 = now();
        while (!stop_flag) {
            while (opened < nconns && opened - n_ready - (int)n_errors < 64) {
                if (open_conn(&conns[opened]) < 0)
                    n_errors++;
                opened++;
            }
            if (n_ready + n_errors >= nconns)
                break;
            if (now() - t0 > 90)
                break;
            int n = epoll_wait(ep, evs, 256, 100);
            for (int i = 0; i < n; i++)
                drive(evs[i].data.ptr);
        }
        if (n_errors || n_ready < nconns) {
            printf("failed ready %d errors %lld\n", n_ready, n_errors);
            fflush(stdout);
            return 1;
        }
        printf("ready %d handshakes %lld\n", n_ready, n_handshakes);
        fflush(stdout);
        double t1 = now();
        int    lost = 0;
        while (!stop_flag && now() - t1 < hold) {
            int n = epoll_wait(ep, evs, 256, 100);
            for (int i = 0; i < n; i++)
                drive(evs[i].data.ptr);
            if (n_errors && !lost) {
                lost = 1;
                printf("lost %lld\n", n_errors);
                fflush(stdout);
            }
        }
        return 0;
    }

    for (int i = 0; i < nconns; i++)
        if (open_conn(&conns[i]) < 0)
            n_errors++;
    double start = now(), mstart = start + warmup, mend = mstart + duration;
    long   reopen_budget = 1000000;
    for (;;) {
        double t = now();
        if (!counting && t >= mstart) {
            counting = 1;
            n_requests = n_bytes = n_errors = n_handshakes = 0;
        }
        if (t >= mend || stop_flag)
            break;
        int n = epoll_wait(ep, evs, 256, 50);
        for (int i = 0; i < n; i++)
            drive(evs[i].data.ptr);
        for (int i = 0; i < nconns && reopen_budget > 0; i++)
            if (conns[i].st == ST_DEAD) {
                reopen_budget--;
                if (open_conn(&conns[i]) < 0) {
                    n_errors++;
                    conns[i].st = ST_DEAD;
                }
            }
    }
    double secs = now() - mstart;
    if (secs <= 0)
        secs = 1e-9;
    printf("requests %lld seconds %.3f rps %.1f mbps %.2f errors %lld handshakes %lld\n",
           n_requests, secs, n_requests / secs, n_bytes / secs / 1e6, n_errors, n_handshakes);
    return 0;
}
