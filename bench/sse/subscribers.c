/* Stream subscribers for the bench's `live` scenario: N idle keep-alive connections to
 * flashgate's event stream (GET /api/v1/events/{id}/stream, Server-Sent Events over
 * HTTP/1.1 chunked), read by one epoll loop, every frame timed on arrival.
 *
 * Compiled by the bench with the system's cc (bench/live.py); one file, libc only.
 *
 *   subscribers HOST PORT PATH N [BATCH [PENDING [READY_TIMEOUT_S [PAUSE_US [FIRST]]]]]
 *
 * Connects N subscribers, at most BATCH (200) per pass of the loop and at most PENDING
 * (2000) of them connected but not yet subscribed, so the server's accept queue never
 * overflows. A subscriber is subscribed once its answer's head (200) and first frame
 * (the snapshot) have arrived. Then it prints one line
 *
 *   ready {"subscribed":..,"refused":..,"failed":..,"statuses":{..},"connect_s":..}
 *
 * (with FIRST, once the first FIRST are, and again once all are: the command `more`
 * connects the rest) and reads commands on stdin, one a line:
 *   start   begin a measurement window (every figure below counts from here)
 *   stop    print `window {...}`: the window's figures
 *   more    connect the subscribers beyond FIRST
 *   quit    (or end of input) close every connection and exit
 *
 * After handling a batch of readable sockets the loop sleeps PAUSE_US (0) before it
 * waits again: a reader asleep in epoll_wait is woken by every frame the server writes,
 * and on one machine the server pays for that wake-up (on a network the clients'
 * machines would); a frame's arrival is then stamped at most PAUSE_US late.
 *
 * A frame is the events up to and including the one with an `id:` line (the server
 * puts the id on the last event of a frame). flashgate opens a tick's frame with the
 * comment `: t=<ms>`, the tick's wall-clock time: a frame's delivery latency is its
 * arrival (CLOCK_REALTIME when epoll_wait returned with the socket readable, the whole
 * frame then in the socket: the server writes it in one call) minus that time. Frames
 * without it (the snapshot) only set where a subscriber's ids start. A frame id
 * `<boot>.<seq>` that skips sequence numbers counts as missed frames (the bench
 * subscribes to one event of one worker, whose frame ids are consecutive). `: hb`
 * comments are heartbeats.
 *
 *   subscribers --parse STEP < response
 *
 * feeds a recorded response to one subscriber's parser STEP bytes at a time and prints
 * what it saw (the bench's tests).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define LINE_CAP 64          /* the start of a line kept (ids, comments; data lines skipped) */
#define HIST_US 50           /* latency histogram: 50 µs buckets */
#define HIST_N 40000         /* up to 2 s; later: the last bucket (max kept exactly) */
#define TICKS 8192           /* per-frame figures, by sequence number modulo this */
#define LATE_US 50000        /* the scenario's bound: 50 ms */
#define STDIN_TAG UINT32_MAX

enum { S_CONNECTING, S_HEAD, S_BODY, S_CLOSED };
enum { C_SIZE, C_EXT, C_SIZE_LF, C_DATA, C_DATA_CR, C_DATA_LF, C_END };

typedef struct {
    int fd;
    uint8_t state, cstate;
    uint8_t subscribed;      /* head 200 and a first frame seen */
    uint8_t head_match;      /* bytes of "\r\n\r\n" matched */
    uint8_t blk_id, blk_hb, blk_other;  /* the current event block's lines */
    uint16_t head_len;
    uint16_t status;
    uint16_t missed_window;  /* last window in which this subscriber missed a frame */
    uint32_t line_len;
    uint32_t chunk_left;
    int64_t frame_t;         /* ": t=" of the frame being read, -1 none */
    int64_t seq;             /* id of the frame being read (its id line), -1 none */
    int64_t last_seq;        /* the last complete frame's id, -1 none */
    char line[LINE_CAP];
} conn_t;

typedef struct {
    int64_t seq, t_ms;
    uint64_t n;              /* deliveries in the window */
    int64_t first_us, last_us;
    uint16_t window;
} tick_t;

static struct {
    uint64_t deliveries;     /* stamped frames received */
    uint64_t unstamped;      /* frames without ": t=" (snapshots) */
    uint64_t within;         /* deliveries within LATE_US */
    uint64_t heartbeats, bytes, reads, missed, subs_missed, repeats, closed, errors;
    int64_t max_us, min_us;
    uint64_t hist[HIST_N];
} W;

static conn_t *conns;
static tick_t ticks[TICKS];
static uint16_t window_id = 1;
static int64_t now_us;       /* CLOCK_REALTIME of the epoll_wait return being handled */
static int parse_mode;       /* --parse: print every frame */
static uint32_t n_subscribed, n_refused, n_failed, n_open;
static uint32_t statuses[600];

static int64_t realtime_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* ------------------------------------------------------------------ one subscriber */

static int64_t digits(const char *p, size_t n) {
    int64_t v = 0;
    size_t i = 0;
    for (; i < n && p[i] >= '0' && p[i] <= '9'; i++) v = v * 10 + (p[i] - '0');
    return i ? v : -1;
}

static void on_frame(conn_t *c) {
    int64_t seq = c->seq, t = c->frame_t;
    if (seq >= 0 && c->last_seq >= 0) {
        if (seq > c->last_seq + 1) {
            W.missed += (uint64_t)(seq - c->last_seq - 1);
            if (c->missed_window != window_id) {
                c->missed_window = window_id;
                W.subs_missed++;
            }
        } else if (seq <= c->last_seq) {
            W.repeats++;
        }
    }
    if (seq >= 0) c->last_seq = seq;
    if (!c->subscribed) {
        c->subscribed = 1;
        n_subscribed++;
    }
    if (parse_mode) printf("frame %" PRId64 " %" PRId64 "\n", seq, t);
    if (t < 0) {
        W.unstamped++;
        return;
    }
    int64_t lat = now_us - t * 1000;
    if (lat < 0) lat = 0;  /* (t is whole ms: at most 1 ms early) */
    W.deliveries++;
    if (lat <= LATE_US) W.within++;
    if (lat > W.max_us) W.max_us = lat;
    if (W.min_us < 0 || lat < W.min_us) W.min_us = lat;
    int64_t b = lat / HIST_US;
    W.hist[b < HIST_N ? b : HIST_N - 1]++;
    if (seq >= 0) {
        tick_t *k = &ticks[seq % TICKS];
        if (k->seq != seq || k->window != window_id) {
            k->seq = seq;
            k->t_ms = t;
            k->n = 0;
            k->first_us = k->last_us = now_us;
            k->window = window_id;
        }
        k->n++;
        if (now_us < k->first_us) k->first_us = now_us;
        if (now_us > k->last_us) k->last_us = now_us;
    }
}

/* a complete line of the event stream (its first LINE_CAP bytes in c->line) */
static void on_line(conn_t *c) {
    size_t n = c->line_len < LINE_CAP ? c->line_len : LINE_CAP;
    const char *l = c->line;
    if (n && l[n - 1] == '\r') n--;
    if (c->line_len == 0 || (c->line_len == 1 && l[0] == '\r')) {  /* blank: end of an event */
        if (c->blk_id) {
            on_frame(c);
            c->frame_t = -1;
            c->seq = -1;
        } else if (c->blk_hb && !c->blk_other) {
            W.heartbeats++;
            if (parse_mode) printf("heartbeat\n");
        }
        c->blk_id = c->blk_hb = c->blk_other = 0;
        return;
    }
    if (n >= 4 && memcmp(l, ": t=", 4) == 0) {
        c->frame_t = digits(l + 4, n - 4);
    } else if (n >= 4 && memcmp(l, ": hb", 4) == 0) {
        c->blk_hb = 1;
    } else if (n >= 4 && memcmp(l, "id: ", 4) == 0) {
        const char *dot = memchr(l + 4, '.', n - 4);
        c->seq = dot ? digits(dot + 1, (size_t)(l + n - dot - 1)) : -1;
        c->blk_id = 1;
    } else if (l[0] != ':') {
        c->blk_other = 1;
    }
}

static void sse_feed(conn_t *c, const char *p, size_t n) {
    while (n) {
        const char *nl = memchr(p, '\n', n);
        size_t seg = nl ? (size_t)(nl - p) : n;
        if (c->line_len < LINE_CAP) {
            size_t k = LINE_CAP - c->line_len;
            memcpy(c->line + c->line_len, p, seg < k ? seg : k);
        }
        c->line_len += (uint32_t)seg;
        if (!nl) return;
        on_line(c);
        c->line_len = 0;
        p += seg + 1;
        n -= seg + 1;
    }
}

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* the chunked body; -1 on a framing error, 1 once the last chunk came */
static int body_feed(conn_t *c, const char *p, size_t n) {
    while (n) {
        switch (c->cstate) {
        case C_SIZE: {
            int v = hexval(*p);
            if (v >= 0) {
                if (c->chunk_left > (UINT32_MAX >> 4)) return -1;
                c->chunk_left = c->chunk_left * 16 + (uint32_t)v;
            } else if (*p == ';') c->cstate = C_EXT;
            else if (*p == '\r') c->cstate = C_SIZE_LF;
            else return -1;
            p++, n--;
            break;
        }
        case C_EXT:
            if (*p == '\r') c->cstate = C_SIZE_LF;
            p++, n--;
            break;
        case C_SIZE_LF:
            if (*p != '\n') return -1;
            p++, n--;
            if (c->chunk_left == 0) {
                c->cstate = C_END;
                return 1;
            }
            c->cstate = C_DATA;
            break;
        case C_DATA: {
            size_t k = n < c->chunk_left ? n : c->chunk_left;
            sse_feed(c, p, k);
            p += k, n -= k;
            c->chunk_left -= (uint32_t)k;
            if (c->chunk_left == 0) c->cstate = C_DATA_CR;
            break;
        }
        case C_DATA_CR:
            if (*p != '\r') return -1;
            p++, n--;
            c->cstate = C_DATA_LF;
            break;
        case C_DATA_LF:
            if (*p != '\n') return -1;
            p++, n--;
            c->cstate = C_SIZE;
            break;
        default:
            return 1;
        }
    }
    return 0;
}

/* the answer's head, then its body; -1: this subscriber is done (refused, error, end) */
static int conn_feed(conn_t *c, const char *p, size_t n) {
    while (c->state == S_HEAD && n) {
        char ch = *p++;
        n--;
        if (c->head_len >= 9 && c->head_len < 12 && ch >= '0' && ch <= '9')
            c->status = (uint16_t)(c->status * 10 + (ch - '0'));
        c->head_len++;
        static const char end[] = "\r\n\r\n";
        c->head_match = ch == end[c->head_match] ? c->head_match + 1 : (ch == '\r');
        if (c->head_match == 4) {
            statuses[c->status < 600 ? c->status : 0]++;
            if (c->status != 200) return -1;
            c->state = S_BODY;
        } else if (c->head_len > 8192) {
            return -1;
        }
    }
    if (c->state == S_BODY && n) {
        int r = body_feed(c, p, n);
        if (r != 0) return -1;
    }
    return 0;
}

static void conn_init(conn_t *c, int fd) {
    memset(c, 0, sizeof *c);
    c->fd = fd;
    c->frame_t = c->seq = c->last_seq = -1;
}

/* ------------------------------------------------------------------ --parse */

static int parse_main(int step) {
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, stdin);
    conn_t c;
    conn_init(&c, -1);
    c.state = S_HEAD;
    parse_mode = 1;
    W.min_us = -1;
    int r = 0;
    for (size_t i = 0; i < n && r == 0; i += (size_t)step) {
        size_t k = n - i < (size_t)step ? n - i : (size_t)step;
        now_us = realtime_us();
        r = conn_feed(&c, buf + i, k);
    }
    printf("status %u\nend %s\nmissed %" PRIu64 "\nrepeats %" PRIu64 "\nunstamped %" PRIu64
           "\ndeliveries %" PRIu64 "\n", c.status,
           r < 0 ? (c.cstate == C_END ? "last-chunk" : "error") : "open", W.missed, W.repeats,
           W.unstamped, W.deliveries);
    return 0;
}

/* ------------------------------------------------------------------ the loop */

static int64_t pct_us(double p) {
    if (!W.deliveries) return -1;
    uint64_t want = (uint64_t)(p / 100.0 * (double)W.deliveries + 0.999999);
    if (want < 1) want = 1;
    uint64_t seen = 0;
    for (int i = 0; i < HIST_N; i++) {
        seen += W.hist[i];
        if (seen >= want) {
            int64_t up = (int64_t)(i + 1) * HIST_US;
            return up < W.max_us ? up : W.max_us;
        }
    }
    return W.max_us;
}

static double w_start_mono, w_start_cpu;

static void window_start(void) {
    memset(&W, 0, sizeof W);
    W.min_us = -1;
    window_id++;
    w_start_mono = mono_s();
    w_start_cpu = cpu_s();
}

static void window_print(void) {
    double wall = mono_s() - w_start_mono, cpu = cpu_s() - w_start_cpu;
    printf("window {\"open\":%u,\"deliveries\":%" PRIu64 ",\"unstamped\":%" PRIu64
           ",\"within_50ms\":%" PRIu64 ",\"heartbeats\":%" PRIu64 ",\"bytes\":%" PRIu64
           ",\"reads\":%" PRIu64 ",\"missed\":%" PRIu64 ",\"subs_missed\":%" PRIu64
           ",\"repeats\":%" PRIu64 ",\"closed\":%" PRIu64 ",\"errors\":%" PRIu64
           ",\"wall_s\":%.3f,\"cpu_s\":%.3f,\"latency_us\":{\"min\":%" PRId64 ",\"p50\":%" PRId64
           ",\"p90\":%" PRId64 ",\"p99\":%" PRId64 ",\"p999\":%" PRId64 ",\"max\":%" PRId64
           "},\"ticks\":[",
           n_open, W.deliveries, W.unstamped, W.within, W.heartbeats, W.bytes, W.reads,
           W.missed, W.subs_missed, W.repeats, W.closed, W.errors, wall, cpu, W.min_us,
           pct_us(50), pct_us(90), pct_us(99), pct_us(99.9), W.deliveries ? W.max_us : -1);
    int first = 1;
    for (int i = 0; i < TICKS; i++) {
        tick_t *k = &ticks[i];
        if (k->window != window_id || !k->n) continue;
        printf("%s[%" PRId64 ",%" PRId64 ",%" PRIu64 ",%" PRId64 ",%" PRId64 "]", first ? "" : ",",
               k->seq, k->t_ms, k->n, k->first_us - k->t_ms * 1000, k->last_us - k->t_ms * 1000);
        first = 0;
    }
    printf("]}\n");
    fflush(stdout);
}

static void conn_close(int ep, conn_t *c, int error) {
    if (c->state == S_CLOSED) return;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->subscribed) {
        n_open--;
        W.closed++;
        if (error) W.errors++;
    } else if (c->state == S_BODY || (c->state == S_HEAD && c->status == 200)) {
        n_failed++;  /* a 200 that ended before its first frame */
    } else if (c->status && c->status != 200) {
        n_refused++;
    } else {
        n_failed++;
    }
    c->state = S_CLOSED;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--parse") == 0) return parse_main(atoi(argv[2]));
    if (argc < 5) {
        fprintf(stderr, "usage: %s HOST PORT PATH N [BATCH [PENDING [READY_TIMEOUT_S]]]\n"
                        "       %s --parse STEP < response\n", argv[0], argv[0]);
        return 2;
    }
    const char *host = argv[1], *path = argv[3];
    int port = atoi(argv[2]);
    uint32_t n = (uint32_t)atoi(argv[4]);
    uint32_t batch = argc > 5 ? (uint32_t)atoi(argv[5]) : 200;
    uint32_t max_pending = argc > 6 ? (uint32_t)atoi(argv[6]) : 2000;
    double ready_timeout = argc > 7 ? atof(argv[7]) : 60.0;
    long pause_us = argc > 8 ? atol(argv[8]) : 0;
    uint32_t target = argc > 9 ? (uint32_t)atoi(argv[9]) : n;
    if (target > n || target == 0) target = n;

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)n + 64) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
        if (rl.rlim_cur < (rlim_t)n + 64) {
            fprintf(stderr, "subscribers: %u connections need more open files than the "
                            "limit %lu\n", n, (unsigned long)rl.rlim_cur);
            return 2;
        }
    }
    conns = calloc(n ? n : 1, sizeof *conns);
    static char buf[1 << 16];
    char req[1024];
    int reqlen = snprintf(req, sizeof req,
                          "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
                          "Cache-Control: no-cache\r\n\r\n", path, host, port);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "subscribers: HOST must be an IPv4 address\n");
        return 2;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = STDIN_TAG};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
    static struct epoll_event events[4096];
    static char cmd[256];
    size_t cmdlen = 0;
    uint32_t issued = 0;
    int ready = 0, stdin_open = 1;
    double t0 = mono_s();
    W.min_us = -1;

    for (;;) {
        /* connect the next batch while few are still on their way */
        uint32_t pending = issued - n_subscribed - n_refused - n_failed;
        if (issued < target && pending < max_pending) {
            uint32_t k = batch;
            if (k > max_pending - pending) k = max_pending - pending;
            for (; k && issued < target; k--, issued++) {
                conn_t *c = &conns[issued];
                int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
                conn_init(c, fd);
                if (fd < 0) {
                    c->state = S_CLOSED;
                    n_failed++;
                    continue;
                }
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                int r = connect(fd, (struct sockaddr *)&addr, sizeof addr);
                if (r < 0 && errno != EINPROGRESS) {
                    close(fd);
                    c->state = S_CLOSED;
                    n_failed++;
                    continue;
                }
                c->state = S_CONNECTING;
                struct epoll_event e = {.events = EPOLLOUT | EPOLLIN, .data.u32 = issued};
                epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
            }
        }
        if (!ready && (n_subscribed + n_refused + n_failed >= target ||
                       mono_s() - t0 > ready_timeout)) {
            ready = 1;
            printf("ready {\"subscribed\":%u,\"refused\":%u,\"failed\":%u,\"not_yet\":%u,"
                   "\"connect_s\":%.3f,\"statuses\":{", n_subscribed, n_refused, n_failed,
                   target - n_subscribed - n_refused - n_failed, mono_s() - t0);
            int first = 1;
            for (int s = 0; s < 600; s++)
                if (statuses[s]) {
                    printf("%s\"%d\":%u", first ? "" : ",", s, statuses[s]);
                    first = 0;
                }
            printf("}}\n");
            fflush(stdout);
        }
        int timeout = issued < target ? 1 : (ready ? 1000 : 10);
        int got = epoll_wait(ep, events, 4096, timeout);
        if (got < 0) {
            if (errno == EINTR) continue;
            perror("epoll_wait");
            return 2;
        }
        now_us = realtime_us();
        for (int i = 0; i < got; i++) {
            uint32_t tag = events[i].data.u32;
            if (tag == STDIN_TAG) {
                ssize_t r = read(0, cmd + cmdlen, sizeof cmd - 1 - cmdlen);
                if (r <= 0) {
                    stdin_open = 0;
                    break;
                }
                cmdlen += (size_t)r;
                char *nl;
                while ((nl = memchr(cmd, '\n', cmdlen)) != NULL) {
                    *nl = 0;
                    if (strcmp(cmd, "start") == 0) window_start();
                    else if (strcmp(cmd, "stop") == 0) window_print();
                    else if (strcmp(cmd, "quit") == 0) stdin_open = 0;
                    else if (strcmp(cmd, "more") == 0 && target < n) {
                        target = n;
                        ready = 0;
                        t0 = mono_s();
                    }
                    size_t used = (size_t)(nl - cmd) + 1;
                    memmove(cmd, nl + 1, cmdlen - used);
                    cmdlen -= used;
                }
                if (cmdlen == sizeof cmd - 1) cmdlen = 0;
                continue;
            }
            conn_t *c = &conns[tag];
            if (c->state == S_CLOSED) continue;
            if (c->state == S_CONNECTING) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err || (events[i].events & (EPOLLERR | EPOLLHUP))) {
                    conn_close(ep, c, 1);
                    continue;
                }
                if (send(c->fd, req, (size_t)reqlen, MSG_NOSIGNAL) != reqlen) {
                    conn_close(ep, c, 1);
                    continue;
                }
                c->state = S_HEAD;
                struct epoll_event e = {.events = EPOLLIN, .data.u32 = tag};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
                continue;
            }
            for (;;) {
                ssize_t r = recv(c->fd, buf, sizeof buf, 0);
                if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
                if (r < 0 && errno == EINTR) continue;
                if (r <= 0) {
                    conn_close(ep, c, r < 0);
                    break;
                }
                W.reads++;
                W.bytes += (uint64_t)r;
                uint8_t was = c->subscribed;
                if (conn_feed(c, buf, (size_t)r) < 0) {
                    if (c->subscribed && !was) n_open++;
                    conn_close(ep, c, 0);
                    break;
                }
                if (c->subscribed && !was) n_open++;
                if ((size_t)r < sizeof buf) break;
            }
        }
        if (!stdin_open) break;
        if (pause_us > 0 && got > 0 && ready) {
            struct timespec ts = {0, pause_us * 1000};
            nanosleep(&ts, NULL);
        }
    }
    for (uint32_t i = 0; i < issued; i++)
        if (conns[i].state != S_CLOSED) close(conns[i].fd);
    return 0;
}
