/* connect_bench.c - tunnel load generator and idle-tunnel holder for bench/run.sh.
 *
 * Single thread, epoll, non-blocking sockets. Only ever connects to the
 * address given with -a (the run script passes 127.0.0.1 ports only).
 *
 *   connect_bench load -a HOST:PORT [-T HOST:PORT] -c CONNS -d SECONDS -w WARMUP -P PATH
 *       Opens CONNS connections to -a. With -T, each sends
 *       "CONNECT HOST:PORT HTTP/1.1" first and waits for a 2xx; without -T
 *       the connection goes straight to the origin. Then each does
 *       keep-alive "GET PATH HTTP/1.1" requests one after another (no
 *       pipelining) and reads full responses (Content-Length bodies).
 *       Prints: "requests N seconds S rps R mbps M errors E".
 *
 *   connect_bench idle -a PROXY -T HOST:PORT -c N [-P PATH] [-s SECONDS]
 *       Opens N CONNECT tunnels (at most 64 handshakes in flight), and if -P
 *       is given does one GET of PATH through each. Prints "ready N" once all
 *       are established (or "failed ..." and exits 1), then holds them open
 *       until SIGTERM/SIGINT or -s seconds (default 120). Prints "lost N
 *       tunnels" if the proxy or origin closes any while they are held.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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

enum state { ST_CONNECTING, ST_CONNECT_SENT, ST_REQ, ST_HDR, ST_BODY, ST_IDLE, ST_DEAD };

struct conn {
    int        fd;
    enum state st;
    char       hdr[4096];
    size_t     hlen;
    long long  body_left;
    size_t     wr_off;
};

static struct sockaddr_in    addr;
static const char           *target; /* HOST:PORT for CONNECT, or NULL */
static const char           *path = "/64k";
static char                  connect_req[512];
static char                  get_req[1024];
static size_t                connect_len, get_len;
static int                   ep;
static volatile sig_atomic_t stop_flag;
static long long             n_requests, n_bytes, n_errors;
static int                   counting;
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

static int
parse_hostport(const char *s, struct sockaddr_in *out)
{
    char        host[256];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof host)
        return -1;
    memcpy(host, s, colon - s);
    host[colon - s] = 0;
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    out->sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &out->sin_addr) != 1)
        return -1;
    /* Loopback only: this tool is for the local benchmark. */
    if ((ntohl(out->sin_addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "connect_bench: refusing non-loopback address %s\n", s);
        exit(2);
    }
    return 0;
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
    c->st = ST_CONNECTING;
    c->hlen = 0;
    c->wr_off = 0;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    return 0;
}

static void
set_events(struct conn *c, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void
kill_conn(struct conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->st = ST_DEAD;
}

/* Write the pending request (CONNECT or GET). Returns 1 when done, 0 if it
 * would block, -1 on error. */
static int
write_pending(struct conn *c, const char *buf, size_t len)
{
    while (c->wr_off < len) {
        ssize_t n = write(c->fd, buf + c->wr_off, len - c->wr_off);
        if (n < 0) {
            if (errno == EAGAIN)
                return 0;
            return -1;
        }
        c->wr_off += (size_t)n;
    }
    c->wr_off = 0;
    return 1;
}

static long long
content_length(const char *hdr, size_t len)
{
    const char *p = hdr, *end = hdr + len;
    while (p < end) {
        const char *eol = memmem(p, end - p, "\r\n", 2);
        if (!eol)
            break;
        if (eol - p > 15 && strncasecmp(p, "Content-Length:", 15) == 0)
            return atoll(p + 15);
        p = eol + 2;
    }
    return -1;
}

/* Append bytes to the header buffer; returns offset just past the header end
 * inside [data, data+n), or -1 if the header is not complete yet, -2 on
 * overflow. */
static long
feed_header(struct conn *c, const char *data, size_t n)
{
    size_t room = sizeof c->hdr - 1 - c->hlen;
    size_t take = n < room ? n : room;
    size_t prev = c->hlen;
    memcpy(c->hdr + c->hlen, data, take);
    c->hlen += take;
    c->hdr[c->hlen] = 0;
    char *e = memmem(c->hdr, c->hlen, "\r\n\r\n", 4);
    if (!e)
        return c->hlen >= sizeof c->hdr - 1 ? -2 : -1;
    size_t hend = (size_t)(e - c->hdr) + 4;
    return (long)(hend - prev);
}

static int
status_ok(const struct conn *c)
{
    /* "HTTP/1.x 2xx" */
    return c->hlen >= 12 && strncmp(c->hdr, "HTTP/1.", 7) == 0 && c->hdr[9] == '2';
}

static int idle_mode, idle_get;
static int n_ready;

static void
start_get(struct conn *c)
{
    c->st = ST_REQ;
    c->wr_off = 0;
    int r = write_pending(c, get_req, get_len);
    if (r < 0) {
        n_errors++;
        kill_conn(c);
        return;
    }
    if (r == 0) {
        set_events(c, EPOLLIN | EPOLLOUT);
        return;
    }
    c->st = ST_HDR;
    c->hlen = 0;
    set_events(c, EPOLLIN);
}

static void
tunnel_ready(struct conn *c)
{
    if (idle_mode && !idle_get) {
        c->st = ST_IDLE;
        set_events(c, EPOLLIN);
        n_ready++;
        return;
    }
    start_get(c);
}

static void
response_done(struct conn *c)
{
    if (counting)
        n_requests++;
    if (idle_mode) {
        c->st = ST_IDLE;
        set_events(c, EPOLLIN);
        n_ready++;
        return;
    }
    start_get(c);
}

/* Handle bytes of a response (after header or body chunk). */
static void
handle_body(struct conn *c, const char *data, size_t n)
{
    (void)data;
    if ((long long)n > c->body_left) {
        /* Extra bytes with no request outstanding: protocol error. */
        n_errors++;
        kill_conn(c);
        return;
    }
    c->body_left -= (long long)n;
    if (c->body_left == 0)
        response_done(c);
}

static void
on_event(struct conn *c, uint32_t events)
{
    if (c->st == ST_DEAD)
        return;
    if (c->st == ST_CONNECTING) {
        int       err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            n_errors++;
            kill_conn(c);
            return;
        }
        if (target) {
            c->st = ST_CONNECT_SENT;
            c->wr_off = 0;
            int r = write_pending(c, connect_req, connect_len);
            if (r < 0) {
                n_errors++;
                kill_conn(c);
                return;
            }
            /* CONNECT requests are tiny; treat a short write as an error. */
            if (r == 0) {
                n_errors++;
                kill_conn(c);
                return;
            }
            c->hlen = 0;
            set_events(c, EPOLLIN);
        } else {
            tunnel_ready(c);
        }
        return;
    }
    if (c->st == ST_REQ && (events & EPOLLOUT)) {
        int r = write_pending(c, get_req, get_len);
        if (r < 0) {
            n_errors++;
            kill_conn(c);
            return;
        }
        if (r == 0)
            return;
        c->st = ST_HDR;
        c->hlen = 0;
        set_events(c, EPOLLIN);
        return;
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return;
    for (;;) {
        if (c->st == ST_DEAD || c->st == ST_REQ)
            return;
        ssize_t n = read(c->fd, rbuf, sizeof rbuf);
        if (n < 0) {
            if (errno == EAGAIN)
                return;
            n_errors++;
            kill_conn(c);
            return;
        }
        if (n == 0) {
            if (!(idle_mode && stop_flag))
                n_errors++;
            kill_conn(c);
            return;
        }
        if (counting)
            n_bytes += n;
        if (c->st == ST_IDLE) {
            /* Unexpected data on an idle tunnel: ignore. */
            continue;
        }
        if (c->st == ST_CONNECT_SENT || c->st == ST_HDR) {
            long off = feed_header(c, rbuf, (size_t)n);
            if (off == -1)
                continue;
            if (off == -2 || !status_ok(c)) {
                if (c->st == ST_CONNECT_SENT && getenv("CB_DEBUG"))
                    fprintf(stderr, "CONNECT refused: %.80s\n", c->hdr);
                n_errors++;
                kill_conn(c);
                return;
            }
            if (c->st == ST_CONNECT_SENT) {
                if ((size_t)off != (size_t)n) { /* data after the 200 */
                    n_errors++;
                    kill_conn(c);
                    return;
                }
                tunnel_ready(c);
                continue;
            }
            long long cl = content_length(c->hdr, c->hlen);
            if (cl < 0) {
                n_errors++;
                kill_conn(c);
                return;
            }
            c->st = ST_BODY;
            c->body_left = cl;
            if (cl == 0 && (size_t)off == (size_t)n) {
                response_done(c);
                continue;
            }
            handle_body(c, rbuf + off, (size_t)n - (size_t)off);
            continue;
        }
        if (c->st == ST_BODY) {
            handle_body(c, rbuf, (size_t)n);
            continue;
        }
    }
}

static void
usage(void)
{
    fprintf(stderr, "usage: connect_bench load|idle -a HOST:PORT [-T HOST:PORT] [-c N] [-d SEC] "
                    "[-w SEC] [-P PATH] "
                    "[-s SEC]\n");
    exit(2);
}

int
main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    const char *mode = argv[1];
    const char *a = NULL;
    int         nconns = 50;
    double      duration = 10, warmup = 1, hold = 120;
    int         path_given = 0;
    int         opt;
    optind = 2;
    while ((opt = getopt(argc, argv, "a:T:c:d:w:P:s:")) != -1) {
        switch (opt) {
        case 'a':
            a = optarg;
            break;
        case 'T':
            target = optarg;
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
        case 's':
            hold = atof(optarg);
            break;
        default:
            usage();
        }
    }
    if (!a || parse_hostport(a, &addr) < 0)
        usage();
    if (strcmp(mode, "idle") == 0) {
        idle_mode = 1;
        idle_get = path_given;
        if (!target)
            usage();
    } else if (strcmp(mode, "load") != 0) {
        usage();
    }
    const char *host = target ? target : a;
    if (target) {
        struct sockaddr_in tmp;
        if (parse_hostport(target, &tmp) < 0)
            usage();
    }
    connect_len = (size_t)snprintf(connect_req, sizeof connect_req,
                                   "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", host, host);
    get_len = (size_t)snprintf(get_req, sizeof get_req, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path,
                               host);

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
        conns[i].fd = -1, conns[i].st = ST_DEAD;

    struct epoll_event evs[256];

    if (idle_mode) {
        int    opened = 0;
        double t0 = now();
        while (!stop_flag) {
            /* Keep at most 64 handshakes in flight. */
            while (opened < nconns && opened - n_ready - (int)n_errors < 64) {
                if (open_conn(&conns[opened]) < 0) {
                    n_errors++;
                }
                opened++;
            }
            if (n_ready + n_errors >= nconns)
                break;
            if (now() - t0 > 60)
                break;
            int n = epoll_wait(ep, evs, 256, 200);
            for (int i = 0; i < n; i++)
                on_event(evs[i].data.ptr, evs[i].events);
        }
        if (n_errors || n_ready < nconns) {
            printf("failed ready %d errors %lld\n", n_ready, n_errors);
            fflush(stdout);
            return 1;
        }
        printf("ready %d\n", n_ready);
        fflush(stdout);
        double t1 = now();
        int    lost = 0;
        while (!stop_flag && now() - t1 < hold) {
            int n = epoll_wait(ep, evs, 256, 100);
            for (int i = 0; i < n; i++)
                on_event(evs[i].data.ptr, evs[i].events);
            if (n_errors && !lost) {
                lost = 1;
                printf("lost %lld tunnels\n", n_errors);
                fflush(stdout);
            }
        }
        return 0;
    }

    for (int i = 0; i < nconns; i++)
        if (open_conn(&conns[i]) < 0)
            n_errors++;
    double start = now();
    double mstart = start + warmup, mend = mstart + duration;
    int    reopen_budget = nconns * 100;
    for (;;) {
        double t = now();
        if (!counting && t >= mstart) {
            counting = 1;
            n_requests = n_bytes = n_errors = 0;
        }
        if (t >= mend || stop_flag)
            break;
        int n = epoll_wait(ep, evs, 256, 50);
        for (int i = 0; i < n; i++)
            on_event(evs[i].data.ptr, evs[i].events);
        /* Reconnect dead connections (server closed keep-alive etc.). */
        for (int i = 0; i < nconns && reopen_budget > 0; i++)
            if (conns[i].st == ST_DEAD) {
                reopen_budget--;
                open_conn(&conns[i]);
            }
    }
    double secs = now() - mstart;
    if (secs <= 0)
        secs = 1e-9;
    printf("requests %lld seconds %.3f rps %.1f mbps %.2f errors %lld\n", n_requests, secs,
           n_requests / secs, n_bytes / secs / 1e6, n_errors);
    return 0;
}
