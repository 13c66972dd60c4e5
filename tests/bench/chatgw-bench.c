/* chatgw-bench: a WebSocket load generator on libuv for chatgw and its peers (issue 7).
 *
 * One process, one loop, thousands of client connections. It speaks just enough RFC 6455 to
 * load a server: the upgrade handshake, masked client frames, an incremental parser for server
 * frames (ping answered, close noted, continuation tolerated) and, on request, RFC 7692
 * permessage-deflate (inflate of server frames, client frames compressed without context).
 *
 * Every connection belongs to a room (`--members` per room, `--conns` in all); the first
 * `--publishers` members of each room publish. A published message carries a marker inside
 * its text, "~b:<publisher>:<seq>:<send time ns>:", followed by padding up to `--size` bytes of
 * frame payload. Whatever the server wraps around it (chatgw's msg envelope, Node's, nchan's
 * raw copy), a receipt is found by the marker, which gives the end-to-end latency (same clock:
 * sender and receiver live in this process) and the delivery count of that message.
 *
 *   echo   each connection is a room of one at /echo: closed loop, --window frames in flight
 *   room   one or more rooms; flat out (at most --window messages per publisher not yet
 *          delivered to every member) or at a fixed rate (open loop)
 *   rooms  the same with many small rooms
 *   idle   connects --conns, holds them for --duration and reads the server's RSS (--pid)
 *
 * With `--ports P1,P2,...` connection i connects to the i-th port modulo their count (several
 * replicas of one server: the members of a room, and its publishers when there are two or
 * more, are spread over all of them); `--pid` then takes the replicas' pids (and a Redis's)
 * and sums their CPU time and RSS.
 *
 * A run measures one or more phases on the same connections (--phases), one after the other,
 * each with warm-up, measurement and drain: "flat" (closed loop), "rate=X" (X msgs/s over all
 * publishers), "frac=F" (F times the publish rate the last flat phase reached: the "half of
 * peak" point), each optionally "@SIZE", then ":SECONDS". Messages not delivered to every
 * member by the end of a phase's drain count as lost.
 *
 * Output: one JSON line on stdout. Bounded by --duration, --max-msgs and --timeout; it never
 * loops without end and only connects where --host points (meant for loopback).
 * It must never block on the server: all socket I/O is non-blocking through libuv. */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <unistd.h>
#include <uv.h>
#include <zlib.h>

#include "hist.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define container_of(p, t, m) ((t *)((char *)(p) - offsetof(t, m)))
#define RING_MAX 65536

/* ---- options ---- */
typedef struct {
    const char *mode, *host, *path, *proto, *label, *msg, *reload_file, *room_prefix;
    int port, conns, members, publishers, size, window, src_addrs, concurrency, self, deflate;
    int reload_ms, stall_ms, drain_ms, settle_ms, timeline_ms;
    double rate, duration, warmup, timeout;
    uint64_t marker, start_at;     /* --marker (0 = random), --start-at (uv_hrtime ns, 0 = now) */
    int hist;                      /* --hist: each phase's histogram buckets in the JSON */
    uint64_t max_msgs;
    const char *phases;
} opts_t;

static opts_t o = {
    .mode = "echo", .host = "127.0.0.1", .path = NULL, .proto = NULL, .label = "",
    .msg = "{\"type\":\"msg\",\"room\":\"{room}\",\"text\":\"{text}\",\"cid\":{cid}}",
    .reload_file = NULL, .room_prefix = "r",
    .port = 8888, .conns = 100, .members = 1, .publishers = 1, .size = 64, .window = 1,
    .src_addrs = 1, .concurrency = 128, .self = 1, .deflate = 0, .reload_ms = 1000,
    .stall_ms = 5000, .drain_ms = 5000, .settle_ms = 300, .timeline_ms = 100,
    .rate = 0, .duration = 3, .warmup = 0.5, .timeout = 0, .max_msgs = 0, .phases = NULL,
};

/* --ports and --pid take comma lists: connection i connects to ports[i % nports]; the server's
 * CPU time and RSS are summed over the pids (several replicas, a Redis beside them). */
#define MAX_PORTS 16
#define MAX_PIDS 16
static int ports[MAX_PORTS], nports, pids[MAX_PIDS], npids;

/* One measured phase and its results. */
typedef struct {
    char kind;          /* 'f' flat out, 'r' total rate, 'h' fraction of the last flat phase */
    double value, duration;
    int size;
    double rate_total;  /* msgs/s over all publishers, once known */
    uint64_t t0, t1, t_end;
    uint64_t sent, deliveries, lost;
    hist_t lat;
    uint64_t *timeline;
    size_t timeline_n, timeline_cap;
    uint64_t timeline_last;
    double cpu_t0, cpu_t1, srv0, srv1, gen0, gen1; /* CPU seconds over the measured windows */
    double srv0_each[MAX_PIDS], srv1_each[MAX_PIDS]; /* per --pid process */
} phase_t;

#define MAX_PHASES 8
static phase_t phases[MAX_PHASES];
static int nphases, cur_phase;

/* ---- state ---- */
enum { C_NEW, C_CONNECTING, C_HANDSHAKE, C_OPEN, C_CLOSED };

typedef struct {
    uint64_t seq, ts;
    uint32_t got;
} slot_t;

typedef struct conn_s conn_t;

typedef struct {
    conn_t *c;
    int room;
    uint64_t next, base, sent_due; /* next seq to send; oldest not complete; rate credit */
    slot_t *ring;
} pub_t;

struct conn_s {
    uv_tcp_t tcp;
    int idx, room, pub, state;
    int pmd, pmd_reset;        /* permessage-deflate agreed; server_no_context_takeover */
    z_stream *inf;             /* per-connection inflater when the server keeps context */
    uint8_t *pend;             /* bytes of an incomplete frame or response, carried over */
    size_t pend_len, pend_cap;
    uint8_t *msg;              /* fragmented message reassembly (rare) */
    size_t msg_len, msg_cap;
    int msg_op, msg_rsv1;
};

typedef struct {
    uv_write_t req;
    uv_buf_t buf;
} wreq_t;

static uv_loop_t *loop;
static conn_t *conns;
static pub_t *pubs;
static int npubs, nrooms, expected;
static size_t ring_size;
static int next_to_connect, in_flight, n_open, n_failed, n_closed, n_handshaked;
static uint64_t t_connect0, t_connected, t_start;
static int phase; /* 0 connecting, 1 settle, 2 sending (warm-up, measurement), 3 draining, 4 done */
static phase_t *P; /* the current phase */
static uint64_t deliveries_all, sent_all, dups, late, errors_srv;
static uint64_t other_frames, retired_lost, reloads, throttled;
static long rss_before = -1, rss_after = -1, rss_end = -1;
static char note[512];
static char marker_prefix[32];
static size_t marker_len;
static uv_timer_t t_tick, t_rate, t_phase, t_guard, t_reload;
static uint8_t rbuf[1 << 18];
static z_stream deflater, shared_inflater;
static uint8_t *zbuf;
static size_t zbuf_cap;
static uint32_t rng = 2463534242u;
static char req_prefix[1024];

static uint32_t xs32(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("chatgw-bench: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory");
    return p;
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) die("out of memory");
    return p;
}

static long rss_kb1(int pid)
{
    char path[64], line[256];
    long kb = -1;
    if (pid <= 0) return -1;
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = strtol(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kb;
}

/* CPU seconds (user + system) a process has used so far; -1 when unknown. */
static double proc_cpu_s1(int pid)
{
    char path[64], buf[1024];
    if (pid <= 0) return -1;
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* Sums over every --pid; -1 when none is given or one of them cannot be read. */
static long rss_kb(void)
{
    long sum = 0;
    if (npids == 0) return -1;
    for (int i = 0; i < npids; i++) {
        long v = rss_kb1(pids[i]);
        if (v < 0) return -1;
        sum += v;
    }
    return sum;
}

static double proc_cpu_s(double *each)
{
    double sum = 0;
    int bad = npids == 0;
    for (int i = 0; i < npids; i++) {
        each[i] = proc_cpu_s1(pids[i]);
        if (each[i] < 0) bad = 1;
        sum += each[i];
    }
    return bad ? -1 : sum;
}

/* "1,2,3" into out[]; returns the count (dies on more than max or a bad number). */
static int parse_int_list(const char *v, int *out, int max, const char *what)
{
    int n = 0;
    const char *t = v;
    while (*t) {
        char *end;
        long x = strtol(t, &end, 10);
        if (end == t || x <= 0 || x > 0x7fffffff || (*end && *end != ',')) die("bad %s list \"%s\"", what, v);
        if (n == max) die("at most %d entries in %s", max, what);
        out[n++] = (int)x;
        t = *end ? end + 1 : end;
    }
    if (n == 0) die("empty %s list", what);
    return n;
}

static double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* ---- output ---- */
static void finish(void);

static void stop_all(void)
{
    /* abortive close (RST): no TIME_WAIT pile-up across runs */
    struct linger lg = {1, 0};
    for (int i = 0; i < o.conns; i++) {
        uv_os_fd_t fd;
        if (conns[i].state != C_NEW && conns[i].state != C_CLOSED &&
            uv_fileno((uv_handle_t *)&conns[i].tcp, &fd) == 0)
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    finish();
    fflush(stdout);
    _exit(0);
}

static double pct_dip(const phase_t *ph)
{
    /* worst timeline window inside the measurement against the median window */
    size_t n = ph->timeline_n;
    if (n < 3) return 0;
    uint64_t *v = xmalloc(n * sizeof *v);
    memcpy(v, ph->timeline, n * sizeof *v);
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && v[j - 1] > v[j]; j--) {
            uint64_t t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    double med = (double)v[n / 2], mn = (double)v[0];
    free(v);
    return med > 0 ? 100.0 * (1.0 - mn / med) : 0;
}

static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') putchar('\\');
        if ((unsigned char)*s < 0x20) continue;
        putchar(*s);
    }
    putchar('"');
}

static void phase_settle_lost(void);

static void finish(void)
{
    if (phase == 2 || phase == 3) phase_settle_lost();
    printf("{\"label\":");
    json_str(o.label);
    printf(",\"mode\":\"%s\",\"conns\":%d,\"members\":%d,\"rooms\":%d,\"publishers\":%d,"
           "\"window\":%d,\"deflate\":%d,",
           o.mode, o.conns, o.members, nrooms, npubs, o.window, o.deflate);
    printf("\"ports\":%d,\"pids\":%d,", nports, npids);
    printf("\"connected\":%d,\"failed\":%d,\"closed\":%d,\"connect_s\":%.3f,", n_handshaked,
           n_failed, n_closed, t_connected ? (double)(t_connected - t_connect0) / 1e9 : -1.0);
    printf("\"sent\":%" PRIu64 ",\"deliveries\":%" PRIu64 ",\"dups\":%" PRIu64 ",\"late\":%" PRIu64
           ",\"server_errors\":%" PRIu64 ",\"other_frames\":%" PRIu64 ",\"throttled\":%" PRIu64
           ",\"retired\":%" PRIu64 ",",
           sent_all, deliveries_all, dups, late, errors_srv, other_frames, throttled, retired_lost);
    printf("\"rss_before_kb\":%ld,\"rss_after_kb\":%ld,\"rss_end_kb\":%ld,", rss_before, rss_after,
           rss_end);
    if (rss_before >= 0 && rss_after >= 0 && n_handshaked > 0)
        printf("\"rss_per_conn_b\":%.0f,", (double)(rss_after - rss_before) * 1024.0 / n_handshaked);
    printf("\"reloads\":%" PRIu64 ",\"phases\":[", reloads);
    for (int i = 0; i < nphases; i++) {
        phase_t *ph = &phases[i];
        if (!ph->t0) break;
        uint64_t t1 = ph->t1;
        uint64_t now = uv_hrtime();
        if (t1 > now) t1 = now;
        double secs = t1 > ph->t0 ? (double)(t1 - ph->t0) / 1e9 : 1e-9;
        printf("%s{\"kind\":\"%s\",\"size\":%d,\"rate_total\":%.1f,\"duration_s\":%.3f,",
               i ? "," : "", ph->kind == 'f' ? "flat" : ph->kind == 'r' ? "rate" : "frac", ph->size,
               ph->rate_total, secs);
        printf("\"sent\":%" PRIu64 ",\"sent_per_s\":%.1f,\"deliveries\":%" PRIu64
               ",\"deliveries_per_s\":%.1f,\"lost\":%" PRIu64 ",",
               ph->sent, (double)ph->sent / secs, ph->deliveries, (double)ph->deliveries / secs, ph->lost);
        printf("\"lat_us\":{\"n\":%" PRIu64 ",\"p50\":%.1f,\"p99\":%.1f,\"p999\":%.1f,\"max\":%.1f,"
               "\"mean\":%.1f},",
               ph->lat.count, hist_quantile(&ph->lat, 0.50) / 1e3, hist_quantile(&ph->lat, 0.99) / 1e3,
               hist_quantile(&ph->lat, 0.999) / 1e3, (double)ph->lat.max / 1e3, hist_mean(&ph->lat) / 1e3);
        double wall = ph->cpu_t1 - ph->cpu_t0;
        if (wall > 0) {
            printf("\"gen_cpu\":%.2f,", (ph->gen1 - ph->gen0) / wall);
            if (ph->srv0 >= 0 && ph->srv1 >= 0) {
                printf("\"srv_cpu\":%.2f,", (ph->srv1 - ph->srv0) / wall);
                if (npids > 1) {
                    printf("\"srv_cpu_each\":[");
                    for (int k = 0; k < npids; k++)
                        printf("%s%.2f", k ? "," : "", (ph->srv1_each[k] - ph->srv0_each[k]) / wall);
                    printf("],");
                }
            }
        }
        if (o.hist) {
            printf("\"hist\":[");
            for (unsigned k = 0, first = 1; k < HIST_BUCKETS; k++)
                if (ph->lat.b[k]) printf("%s[%u,%" PRIu64 "]", first ? "" : ",", k, ph->lat.b[k]), first = 0;
            printf("],");
        }
        printf("\"dip_pct\":%.1f,\"timeline_ms\":%d,\"timeline\":[", pct_dip(ph), o.timeline_ms);
        for (size_t k = 0; k < ph->timeline_n; k++) printf("%s%" PRIu64, k ? "," : "", ph->timeline[k]);
        printf("]}");
    }
    printf("],\"note\":");
    json_str(note);
    printf("}\n");
}

/* ---- writing ---- */
static void on_written(uv_write_t *req, int status)
{
    wreq_t *w = container_of(req, wreq_t, req);
    free(w->buf.base);
    free(w);
    (void)status;
}

/* Sends bytes now if the socket takes them, else queues a copy. The caller keeps `data`. */
static void conn_write(conn_t *c, const uint8_t *data, size_t len)
{
    if (c->state == C_CLOSED) return;
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    size_t off = 0;
    if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) == 0) {
        int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        if (n > 0) off = (size_t)n;
        if (off == len) return;
    }
    wreq_t *w = xmalloc(sizeof *w);
    w->buf = uv_buf_init(xmalloc(len - off), (unsigned)(len - off));
    memcpy(w->buf.base, data + off, len - off);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &w->buf, 1, on_written) != 0) {
        free(w->buf.base);
        free(w);
    }
}

/* Builds one masked client frame around payload (and compresses it when agreed). */
static void conn_send_frame(conn_t *c, int opcode, const uint8_t *payload, size_t len)
{
    static uint8_t *fb;
    static size_t fb_cap;
    int rsv1 = 0;
    if (c->pmd && opcode == 1 && len > 0) {
        size_t bound = deflateBound(&deflater, len) + 16;
        if (zbuf_cap < bound) zbuf = xrealloc(zbuf, zbuf_cap = bound);
        deflater.next_in = (Bytef *)payload;
        deflater.avail_in = (uInt)len;
        deflater.next_out = zbuf;
        deflater.avail_out = (uInt)zbuf_cap;
        if (deflate(&deflater, Z_SYNC_FLUSH) == Z_OK && deflater.avail_in == 0) {
            size_t zl = zbuf_cap - deflater.avail_out;
            if (zl >= 4) zl -= 4; /* drop 00 00 ff ff */
            payload = zbuf;
            len = zl;
            rsv1 = 1;
        }
        deflateReset(&deflater);
    }
    size_t need = len + 14;
    if (fb_cap < need) fb = xrealloc(fb, fb_cap = need);
    size_t h = 0;
    fb[h++] = (uint8_t)(0x80 | (rsv1 ? 0x40 : 0) | opcode);
    if (len < 126) {
        fb[h++] = (uint8_t)(0x80 | len);
    } else if (len < 65536) {
        fb[h++] = 0x80 | 126;
        fb[h++] = (uint8_t)(len >> 8);
        fb[h++] = (uint8_t)len;
    } else {
        fb[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--) fb[h++] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    uint32_t key = xs32();
    uint8_t mk[4];
    memcpy(mk, &key, 4);
    memcpy(fb + h, mk, 4);
    h += 4;
    for (size_t i = 0; i < len; i++) fb[h + i] = payload[i] ^ mk[i & 3];
    conn_write(c, fb, h + len);
}

/* ---- messages ---- */
static const char PAD[] = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

static void room_name(int room, char *out, size_t n)
{
    snprintf(out, n, "%s%d", o.room_prefix, room);
}

/* Writes v in decimal with alternating alphabets ("0-9" at even positions, "a-j" at odd ones)
 * so that no character repeats: a policy that shortens runs of one character (chatgw's
 * default max_char_run) cannot change the marker. Returns the length. */
static int put_num(char *out, uint64_t v)
{
    char tmp[24];
    int n = 0;
    do tmp[n++] = (char)(v % 10), v /= 10;
    while (v);
    for (int i = 0; i < n; i++) {
        int d = tmp[n - 1 - i];
        out[i] = (char)((i & 1) ? 'a' + d : '0' + d);
    }
    return n;
}

/* Expands the --msg template for one message of publisher p; the text is padded so that the
 * whole payload is --size bytes (never shorter than the marker). */
static size_t build_msg(pub_t *p, uint64_t seq, uint64_t ts, char *out, size_t cap)
{
    char room[64], marker[96], cid[32];
    room_name(p->room, room, sizeof room);
    int ml = snprintf(marker, sizeof marker, "%s", marker_prefix);
    ml += put_num(marker + ml, (uint64_t)(p - pubs));
    marker[ml++] = ':';
    ml += put_num(marker + ml, seq);
    marker[ml++] = ':';
    ml += put_num(marker + ml, ts);
    marker[ml++] = ':';
    snprintf(cid, sizeof cid, "%" PRIu64, seq);
    /* length of the template without the text */
    size_t fixed = 0;
    for (const char *t = o.msg; *t;) {
        if (strncmp(t, "{room}", 6) == 0) fixed += strlen(room), t += 6;
        else if (strncmp(t, "{cid}", 5) == 0) fixed += strlen(cid), t += 5;
        else if (strncmp(t, "{text}", 6) == 0) t += 6;
        else fixed++, t++;
    }
    size_t textlen = (size_t)ml;
    if ((size_t)P->size > fixed + (size_t)ml) textlen = (size_t)P->size - fixed;
    if (fixed + textlen + 1 > cap) textlen = cap - fixed - 1;
    size_t n = 0;
    for (const char *t = o.msg; *t && n < cap - 1;) {
        if (strncmp(t, "{room}", 6) == 0) {
            n += (size_t)snprintf(out + n, cap - n, "%s", room);
            t += 6;
        } else if (strncmp(t, "{cid}", 5) == 0) {
            n += (size_t)snprintf(out + n, cap - n, "%s", cid);
            t += 5;
        } else if (strncmp(t, "{text}", 6) == 0) {
            memcpy(out + n, marker, (size_t)ml);
            for (size_t i = (size_t)ml; i < textlen; i++) out[n + i] = PAD[(i + seq) % (sizeof PAD - 1)];
            n += textlen;
            t += 6;
        } else {
            out[n++] = *t++;
        }
    }
    out[n] = 0;
    return n;
}

static int measuring(uint64_t now)
{
    return phase == 2 && now >= P->t0 && now < P->t1;
}

static void ring_give_up(pub_t *p)
{
    slot_t *old = &p->ring[p->base & (ring_size - 1)];
    if (old->seq == p->base && old->got < (uint32_t)expected) {
        P->lost += expected - old->got;
        retired_lost++;
    }
    p->base++;
}

static void pub_send(pub_t *p, uint64_t now)
{
    static char m[1 << 16];
    if (p->c->state != C_OPEN) return;
    if (o.max_msgs && sent_all >= o.max_msgs) return;
    if (uv_stream_get_write_queue_size((uv_stream_t *)&p->c->tcp) > (1u << 20)) {
        throttled++;
        return;
    }
    uint64_t s = p->next;
    while (s - p->base >= ring_size) ring_give_up(p); /* the ring is full: the oldest goes */
    slot_t *sl = &p->ring[s & (ring_size - 1)];
    sl->seq = s;
    sl->ts = now;
    sl->got = 0;
    p->next = s + 1;
    size_t n = build_msg(p, s, now, m, sizeof m);
    conn_send_frame(p->c, 1, (uint8_t *)m, n);
    sent_all++;
    if (measuring(now)) P->sent++;
}

static void pub_fill_window(pub_t *p, uint64_t now)
{
    while (phase == 2 && P->kind == 'f' && p->next - p->base < (uint64_t)o.window &&
           p->c->state == C_OPEN) {
        uint64_t before = p->next;
        pub_send(p, now);
        if (p->next == before) break;
    }
}

static void pub_advance(pub_t *p)
{
    while (p->base < p->next) {
        slot_t *sl = &p->ring[p->base & (ring_size - 1)];
        if (sl->seq == p->base && sl->got < (uint32_t)expected) break;
        p->base++;
    }
}

static int parse_u64(const uint8_t **pp, const uint8_t *end, uint64_t *v)
{
    const uint8_t *p = *pp;
    uint64_t x = 0;
    const uint8_t *start = p;
    for (; p < end; p++) {
        if (*p >= '0' && *p <= '9') x = x * 10 + (uint64_t)(*p - '0');
        else if (*p >= 'a' && *p <= 'j') x = x * 10 + (uint64_t)(*p - 'a');
        else break;
    }
    if (p == start) return -1;
    if (p >= end || *p != ':') return -1;
    *pp = p + 1;
    *v = x;
    return 0;
}

/* One receipt: the marker's publisher, seq and send time, parsed after the prefix at p. */
static void on_receipt(const uint8_t *p, const uint8_t *end)
{
    uint64_t pi, seq, ts;
    if (parse_u64(&p, end, &pi) || parse_u64(&p, end, &seq) || parse_u64(&p, end, &ts) ||
        (npubs && pi >= (uint64_t)npubs)) {
        other_frames++;
        return;
    }
    uint64_t now = uv_hrtime();
    deliveries_all++;
    if (measuring(now)) {
        P->deliveries++;
        hist_add(&P->lat, now > ts ? now - ts : 0);
    }
    if (!npubs) return;            /* receive-only: the publishers are another process's */
    pub_t *pb = &pubs[pi];
    if (seq < pb->base || seq >= pb->next) {
        late++;
        return;
    }
    slot_t *sl = &pb->ring[seq & (ring_size - 1)];
    if (sl->seq != seq) {
        late++;
        return;
    }
    if (sl->got >= (uint32_t)expected) {
        dups++;
        return;
    }
    if (++sl->got == (uint32_t)expected && seq == pb->base) {
        pub_advance(pb);
        pub_fill_window(pb, now);
    }
}

/* One complete text/binary message from the server. Every marker in it is a receipt: a room
 * snapshot (chatgw's "room" frame, sent when a join completes) carries the messages published
 * while the join was in flight as its history, several to a frame. */
static void on_message(conn_t *c, const uint8_t *d, size_t n)
{
    const uint8_t *end = d + n;
    const uint8_t *m = memmem(d, n, marker_prefix, marker_len);
    (void)c;
    if (!m) {
        if (memmem(d, n, "\"type\":\"error\"", 14)) errors_srv++;
        else other_frames++;
        return;
    }
    for (; m; m = memmem(m + marker_len, (size_t)(end - m - marker_len), marker_prefix, marker_len))
        on_receipt(m + marker_len, end);
}

static void conn_close(conn_t *c);

static int inflate_msg(conn_t *c, const uint8_t *d, size_t n, const uint8_t **out, size_t *outn)
{
    static const uint8_t tail[4] = {0, 0, 0xff, 0xff};
    static uint8_t *ib;
    static size_t ib_cap;
    z_stream *z = c->pmd_reset ? &shared_inflater : c->inf;
    if (!z) {
        z = c->inf = xmalloc(sizeof *z);
        memset(z, 0, sizeof *z);
        if (inflateInit2(z, -15) != Z_OK) die("inflateInit2");
    }
    if (ib_cap < n * 4 + 4096) ib = xrealloc(ib, ib_cap = n * 4 + 4096);
    size_t got = 0;
    for (int part = 0; part < 2; part++) {
        z->next_in = (Bytef *)(part ? tail : d);
        z->avail_in = (uInt)(part ? 4 : n);
        while (z->avail_in > 0) {
            if (got == ib_cap) ib = xrealloc(ib, ib_cap *= 2);
            z->next_out = ib + got;
            z->avail_out = (uInt)(ib_cap - got);
            int rc = inflate(z, Z_SYNC_FLUSH);
            got = ib_cap - z->avail_out;
            if (rc != Z_OK && rc != Z_BUF_ERROR) return -1;
            if (rc == Z_BUF_ERROR && z->avail_out != 0) break;
        }
    }
    if (c->pmd_reset) inflateReset(z);
    *out = ib;
    *outn = got;
    return 0;
}

static void deliver(conn_t *c, int op, int rsv1, const uint8_t *d, size_t n)
{
    if (rsv1 && c->pmd) {
        const uint8_t *u;
        size_t un;
        if (inflate_msg(c, d, n, &u, &un) != 0) {
            snprintf(note, sizeof note, "inflate error");
            conn_close(c);
            return;
        }
        d = u;
        n = un;
    }
    (void)op;
    on_message(c, d, n);
}

/* Parses frames in d[0..n); returns the bytes consumed (the rest is an incomplete frame). */
static size_t parse_frames(conn_t *c, const uint8_t *d, size_t n)
{
    size_t off = 0;
    while (n - off >= 2 && c->state == C_OPEN) {
        const uint8_t *f = d + off;
        int fin = f[0] & 0x80, rsv1 = (f[0] & 0x40) != 0, op = f[0] & 0x0f;
        uint64_t len = f[1] & 0x7f;
        size_t h = 2;
        if (f[1] & 0x80) h += 4; /* a masked server frame is a protocol error; tolerate it */
        if (len == 126) {
            if (n - off < 4) break;
            len = ((uint64_t)f[2] << 8) | f[3];
            h += 2;
        } else if (len == 127) {
            if (n - off < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = (len << 8) | f[2 + i];
            h += 8;
        }
        if (n - off < h + len) break;
        const uint8_t *pl = f + h;
        off += h + (size_t)len;
        if (op == 0x9) {
            conn_send_frame(c, 0xA, pl, (size_t)len);
        } else if (op == 0x8) {
            conn_close(c);
        } else if (op == 0xA) {
        } else if (op == 0 || !fin) { /* fragmented message: reassemble */
            if (op != 0) {
                c->msg_len = 0;
                c->msg_op = op;
                c->msg_rsv1 = rsv1;
            }
            if (c->msg_cap < c->msg_len + len) c->msg = xrealloc(c->msg, c->msg_cap = c->msg_len + len);
            memcpy(c->msg + c->msg_len, pl, (size_t)len);
            c->msg_len += (size_t)len;
            if (fin) deliver(c, c->msg_op, c->msg_rsv1, c->msg, c->msg_len);
        } else {
            deliver(c, op, rsv1, pl, (size_t)len);
        }
    }
    return off;
}

/* ---- connection lifecycle ---- */
static void connect_more(void);

static void on_closed(uv_handle_t *h)
{
    (void)h;
}

static void conn_close(conn_t *c)
{
    if (c->state == C_CLOSED) return;
    if (c->state == C_OPEN) n_open--;
    if (c->state == C_CONNECTING || c->state == C_HANDSHAKE) {
        in_flight--;
        n_failed++;
    } else {
        n_closed++;
    }
    c->state = C_CLOSED;
    if (!uv_is_closing((uv_handle_t *)&c->tcp)) uv_close((uv_handle_t *)&c->tcp, on_closed);
    if (phase == 0) connect_more();
}

static void on_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    (void)h;
    (void)sz;
    *b = uv_buf_init((char *)rbuf, sizeof rbuf);
}

static void pend_keep(conn_t *c, const uint8_t *d, size_t n)
{
    if (n == 0) {
        c->pend_len = 0;
        return;
    }
    if (c->pend_cap < n) {
        uint8_t *nb = xmalloc(n);
        memcpy(nb, d, n);
        free(c->pend);
        c->pend = nb;
        c->pend_cap = n;
    } else {
        memmove(c->pend, d, n);
    }
    c->pend_len = n;
}

static void handshake_done(conn_t *c, const char *hdr)
{
    c->state = C_OPEN;
    in_flight--;
    n_open++;
    n_handshaked++;
    const char *ext = strcasestr(hdr, "\r\nSec-WebSocket-Extensions:");
    if (ext) {
        const char *eol = strstr(ext + 2, "\r\n");
        char line[256];
        size_t l = eol ? (size_t)(eol - ext) : strlen(ext);
        if (l >= sizeof line) l = sizeof line - 1;
        memcpy(line, ext, l);
        line[l] = 0;
        if (strstr(line, "permessage-deflate")) {
            c->pmd = 1;
            c->pmd_reset = strstr(line, "server_no_context_takeover") != NULL;
        }
    }
    if (phase == 0) connect_more();
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    conn_t *c = container_of((uv_tcp_t *)s, conn_t, tcp);
    if (nread < 0) {
        conn_close(c);
        return;
    }
    if (nread == 0) return;
    const uint8_t *d = (const uint8_t *)b->base;
    size_t n = (size_t)nread;
    uint8_t *joined = NULL;
    if (c->pend_len) { /* prepend the carried-over bytes */
        joined = xmalloc(c->pend_len + n);
        memcpy(joined, c->pend, c->pend_len);
        memcpy(joined + c->pend_len, d, n);
        d = joined;
        n += c->pend_len;
        c->pend_len = 0;
    }
    size_t off = 0;
    if (c->state == C_HANDSHAKE) {
        const uint8_t *e = memmem(d, n, "\r\n\r\n", 4);
        if (!e) {
            if (n > 16384) conn_close(c);
            else pend_keep(c, d, n);
            free(joined);
            return;
        }
        size_t hl = (size_t)(e - d) + 4;
        char *hdr = xmalloc(hl + 1);
        memcpy(hdr, d, hl);
        hdr[hl] = 0;
        if (strncmp(hdr, "HTTP/1.1 101", 12) != 0) {
            if (!note[0]) {
                char *eol = strstr(hdr, "\r\n");
                if (eol) *eol = 0;
                snprintf(note, sizeof note, "handshake refused: %.200s", hdr);
            }
            free(hdr);
            free(joined);
            conn_close(c);
            return;
        }
        handshake_done(c, hdr);
        free(hdr);
        off = hl;
    }
    if (c->state == C_OPEN) {
        off += parse_frames(c, d + off, n - off);
        if (c->state == C_OPEN) pend_keep(c, d + off, n - off);
    }
    free(joined);
}

static void on_connect(uv_connect_t *req, int status)
{
    conn_t *c = req->data;
    free(req);
    if (status != 0) {
        if (!note[0]) snprintf(note, sizeof note, "connect: %s", uv_strerror(status));
        conn_close(c);
        return;
    }
    c->state = C_HANDSHAKE;
    char path[512], room[64], req_buf[2048];
    room_name(c->room, room, sizeof room);
    size_t n = 0;
    for (const char *t = o.path; *t && n < sizeof path - 64;) {
        if (strncmp(t, "{room}", 6) == 0) n += (size_t)snprintf(path + n, sizeof path - n, "%s", room), t += 6;
        else if (strncmp(t, "{conn}", 6) == 0) n += (size_t)snprintf(path + n, sizeof path - n, "%d", c->idx), t += 6;
        else path[n++] = *t++;
    }
    path[n] = 0;
    int l = snprintf(req_buf, sizeof req_buf, "GET %s HTTP/1.1\r\n%s\r\n", path, req_prefix);
    conn_write(c, (uint8_t *)req_buf, (size_t)l);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static void conn_start(conn_t *c)
{
    struct sockaddr_in dst, src;
    uv_ip4_addr(o.host, ports[c->idx % nports], &dst);
    c->state = C_CONNECTING;
    in_flight++;
    if (uv_tcp_init_ex(loop, &c->tcp, AF_INET) != 0) die("uv_tcp_init_ex");
    if (o.src_addrs > 1) {
        uv_os_fd_t fd;
        int one = 1;
        char a[32];
        snprintf(a, sizeof a, "127.0.0.%d", 1 + c->idx % o.src_addrs);
        uv_ip4_addr(a, 0, &src);
        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
            setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        uv_tcp_bind(&c->tcp, (struct sockaddr *)&src, 0);
    }
    uv_tcp_nodelay(&c->tcp, 1);
    uv_connect_t *req = xmalloc(sizeof *req);
    req->data = c;
    int rc = uv_tcp_connect(req, &c->tcp, (struct sockaddr *)&dst, on_connect);
    if (rc != 0) {
        free(req);
        if (!note[0]) snprintf(note, sizeof note, "connect: %s", uv_strerror(rc));
        conn_close(c);
    }
}

static void start_running(void);

static void phase_settled(uv_timer_t *t)
{
    (void)t;
    start_running();
}

static void connect_more(void)
{
    while (phase == 0 && in_flight < o.concurrency && next_to_connect < o.conns)
        conn_start(&conns[next_to_connect++]);
    if (phase == 0 && in_flight == 0 && next_to_connect >= o.conns) {
        phase = 1;
        t_connected = uv_hrtime();
        uint64_t wait_ms = (uint64_t)o.settle_ms, now = uv_hrtime();
        if (o.start_at > now && (o.start_at - now) / 1000000 > wait_ms) wait_ms = (o.start_at - now) / 1000000;
        uv_timer_start(&t_phase, phase_settled, wait_ms, 0);
    }
}

/* ---- phases and timers ---- */
static void phase_start(int i);

/* Everything still incomplete at the end of a phase's drain is lost. */
static void phase_settle_lost(void)
{
    for (int p = 0; p < npubs; p++)
        while (pubs[p].base < pubs[p].next) ring_give_up(&pubs[p]);
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
    uint64_t now = uv_hrtime();
    if (phase == 2 && now >= P->t0) { /* whole windows inside the measurement only */
        if (P->timeline_last == UINT64_MAX) {
            P->timeline_last = P->deliveries;
            P->cpu_t0 = P->cpu_t1 = (double)now / 1e9;
            P->srv0 = P->srv1 = proc_cpu_s(P->srv0_each);
            memcpy(P->srv1_each, P->srv0_each, sizeof P->srv1_each);
            P->gen0 = P->gen1 = self_cpu_s();
        } else if (now <= P->t1) {
            P->cpu_t1 = (double)now / 1e9;
            P->srv1 = proc_cpu_s(P->srv1_each);
            P->gen1 = self_cpu_s();
            if (P->timeline_n == P->timeline_cap)
                P->timeline = xrealloc(P->timeline, (P->timeline_cap = P->timeline_cap ? P->timeline_cap * 2 : 64) *
                                                        sizeof *P->timeline);
            P->timeline[P->timeline_n++] = P->deliveries - P->timeline_last;
            P->timeline_last = P->deliveries;
        }
    }
    /* flat out: a message that some member never gets is given up after stall_ms */
    if (phase >= 2 && P->kind == 'f') {
        for (int i = 0; i < npubs; i++) {
            pub_t *p = &pubs[i];
            int moved = 0;
            while (p->base < p->next) {
                slot_t *sl = &p->ring[p->base & (ring_size - 1)];
                if (sl->seq == p->base && sl->got < (uint32_t)expected &&
                    now - sl->ts < (uint64_t)o.stall_ms * 1000000ull)
                    break;
                ring_give_up(p);
                moved = 1;
            }
            if (moved) pub_fill_window(p, now);
        }
    }
    if (phase == 2 && now >= P->t_end) {
        phase = 3;
        uv_timer_stop(&t_rate);
        if (cur_phase == nphases - 1) {
            uv_timer_stop(&t_reload);
            rss_end = rss_kb();
        }
    }
    if (phase == 3) {
        int pending = 0;
        for (int i = 0; i < npubs && !pending; i++) {
            pub_advance(&pubs[i]);
            pending = pubs[i].base < pubs[i].next;
        }
        if (!pending || now >= P->t_end + (uint64_t)o.drain_ms * 1000000ull) {
            phase_settle_lost();
            if (cur_phase + 1 < nphases) {
                phase_start(cur_phase + 1);
            } else {
                phase = 4;
                stop_all();
            }
        }
    }
}

static void on_rate(uv_timer_t *t)
{
    (void)t;
    uint64_t now = uv_hrtime();
    double el = (double)(now - t_start) / 1e9, per = P->rate_total / npubs;
    for (int i = 0; i < npubs; i++) {
        pub_t *p = &pubs[i];
        /* publishers are staggered inside one period so that they do not beat in phase */
        double due = floor(el * per + (double)i / npubs);
        int burst = 0;
        while ((double)p->sent_due < due && burst++ < 1000) {
            p->sent_due++;
            pub_send(p, now);
        }
    }
}

static void on_reload(uv_timer_t *t)
{
    (void)t;
    int fd = open(o.reload_file, O_WRONLY | O_APPEND);
    if (fd < 0) {
        snprintf(note, sizeof note, "reload file: %s", strerror(errno));
        return;
    }
    char line[64];
    int l = snprintf(line, sizeof line, "-- bench reload %" PRIu64 "\n", ++reloads);
    if (write(fd, line, (size_t)l) != l) snprintf(note, sizeof note, "reload write failed");
    close(fd);
}

static void on_guard(uv_timer_t *t)
{
    (void)t;
    if (!note[0]) snprintf(note, sizeof note, "timeout in phase %d", phase);
    stop_all();
}

/* Sizes every publisher's ring for the coming phase (all rings are empty between phases). */
static void rings_size(size_t want)
{
    size_t rs = 64;
    while (rs < want && rs < RING_MAX) rs <<= 1;
    if (rs == ring_size) return;
    ring_size = rs;
    for (int i = 0; i < npubs; i++) {
        free(pubs[i].ring);
        pubs[i].ring = xmalloc(ring_size * sizeof *pubs[i].ring);
        for (size_t k = 0; k < ring_size; k++) pubs[i].ring[k].seq = UINT64_MAX;
    }
}

static void phase_start(int i)
{
    uint64_t now = uv_hrtime();
    cur_phase = i;
    P = &phases[i];
    phase = 2;
    t_start = now;
    P->timeline_last = UINT64_MAX;
    P->t0 = now + (uint64_t)(o.warmup * 1e9);
    P->t1 = P->t0 + (uint64_t)(P->duration * 1e9);
    P->t_end = P->t1;
    if (!strcmp(o.mode, "idle")) {
        P->t0 = now;
        P->t1 = P->t_end = now + (uint64_t)(P->duration * 1e9);
        return;
    }
    if (P->kind == 'h') { /* a fraction of what the last flat phase published */
        double peak = 0;
        for (int k = i - 1; k >= 0; k--)
            if (phases[k].kind == 'f') {
                double secs = (double)(phases[k].t1 - phases[k].t0) / 1e9;
                peak = secs > 0 ? (double)phases[k].sent / secs : 0;
                break;
            }
        P->rate_total = P->value * peak;
        if (P->rate_total < 1) P->rate_total = 1;
    } else if (P->kind == 'r') {
        P->rate_total = P->value;
    }
    double per = npubs ? P->rate_total / npubs : 0;
    rings_size(P->kind == 'f' ? (size_t)o.window * 2 : (size_t)(per * (o.drain_ms / 1000.0 + 2)) + 64);
    for (int k = 0; k < npubs; k++) pubs[k].sent_due = 0;
    if (P->kind == 'f') {
        for (int k = 0; k < npubs; k++) pub_fill_window(&pubs[k], now);
    } else {
        uv_timer_start(&t_rate, on_rate, 1, 1);
    }
}

static void start_running(void)
{
    rss_after = rss_kb();
    if (o.reload_file)
        uv_timer_start(&t_reload, on_reload, (uint64_t)(o.warmup * 1000) + (uint64_t)o.reload_ms,
                       (uint64_t)o.reload_ms);
    phase_start(0);
}

/* "flat:2,frac=0.5:2,rate=100@1024:1" */
static void parse_phases(const char *spec)
{
    char *dup = strdup(spec), *save = NULL;
    for (char *tok = strtok_r(dup, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (nphases == MAX_PHASES) die("at most %d phases", MAX_PHASES);
        phase_t *ph = &phases[nphases++];
        ph->size = o.size;
        ph->duration = o.duration;
        char *colon = strchr(tok, ':'), *at = strchr(tok, '@'), *eq = strchr(tok, '=');
        if (colon) *colon = 0, ph->duration = atof(colon + 1);
        if (at) *at = 0, ph->size = atoi(at + 1);
        if (eq) *eq = 0, ph->value = atof(eq + 1);
        if (!strcmp(tok, "flat")) ph->kind = 'f';
        else if (!strcmp(tok, "rate") && eq) ph->kind = 'r';
        else if (!strcmp(tok, "frac") && eq) ph->kind = 'h';
        else die("bad phase \"%s\" (flat, rate=X, frac=F; @SIZE; :SECONDS)", tok);
        if (ph->duration <= 0 || ph->size < 1 || ph->size > 60000 || (ph->kind != 'f' && ph->value <= 0))
            die("bad phase values in \"%s\"", spec);
        hist_init(&ph->lat);
    }
    free(dup);
    if (nphases == 0) die("no phases");
}

/* ---- setup ---- */
static void usage(void)
{
    fputs(
        "usage: chatgw-bench [options]   (one JSON line per run on stdout)\n"
        "  --mode echo|room|rooms|idle   preset (default echo)\n"
        "  --host H --port P             server (default 127.0.0.1:8888)\n"
        "  --ports P1,P2,...             several servers (replicas): connection i goes to\n"
        "                                port i % n; Host and Origin name the first\n"
        "  --path TPL                    request target; {room} {conn} expand\n"
        "                                (default /echo for echo, else /ws?room={room}&name=b{conn})\n"
        "  --protocol NAME               Sec-WebSocket-Protocol to offer\n"
        "  --conns N                     connections in all (default 100)\n"
        "  --members M                   connections per room (echo: 1)\n"
        "  --publishers P                publishers per room (idle: 0)\n"
        "  --self 0|1                    a publisher receives its own messages (default 1)\n"
        "  --msg TPL                     message template; {room} {text} {cid} expand\n"
        "  --size B                      client frame payload bytes (default 64)\n"
        "  --rate X                      msgs/s per publisher; 0 = flat out (default 0)\n"
        "  --phases LIST                 e.g. flat:2,frac=0.5:2,rate=100@1024:1 (kind[=v][@size][:s])\n"
        "  --window W                    flat out: messages per publisher not yet delivered to all\n"
        "  --duration S --warmup S       measurement window and warm-up (default 3, 0.5)\n"
        "  --max-msgs N                  stop sending after N messages\n"
        "  --timeout S                   hard limit for the whole run (default duration + 60)\n"
        "  --src-addrs K                 bind sources 127.0.0.1..127.0.0.K (default 1)\n"
        "  --concurrency N               handshakes in flight while connecting (default 128)\n"
        "  --deflate                     offer permessage-deflate\n"
        "  --pid PID[,PID...]            server process(es): VmRSS and CPU time, summed\n"
        "  --reload-file F --reload-ms N append a comment to F every N ms while measuring\n"
        "  --stall-ms N --drain-ms N --settle-ms N --timeline-ms N\n"
        "  --label TEXT                  copied into the JSON line\n"
        "  --marker N --start-at NS --hist  several processes on one room: the same marker id, the\n"
        "                                first phase at uv_hrtime NS (CLOCK_MONOTONIC), histogram\n"
        "                                buckets in the JSON; a process with --publishers 0 counts\n"
        "                                every delivery it gets (receive-only)\n",
        stderr);
    exit(2);
}

static void parse_args(int argc, char **argv)
{
    int explicit_members = 0, explicit_pubs = 0, explicit_window = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (strcmp(a, name) == 0 && (v || (usage(), 0)) && (i++, 1))
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) usage();
        else if (!strcmp(a, "--deflate")) o.deflate = 1;
        else if (ARG("--mode")) o.mode = v;
        else if (ARG("--host")) o.host = v;
        else if (ARG("--port")) o.port = atoi(v), nports = 0;
        else if (ARG("--ports")) nports = parse_int_list(v, ports, MAX_PORTS, "--ports"), o.port = ports[0];
        else if (ARG("--path")) o.path = v;
        else if (ARG("--protocol")) o.proto = v;
        else if (ARG("--conns")) o.conns = atoi(v);
        else if (ARG("--members")) o.members = atoi(v), explicit_members = 1;
        else if (ARG("--publishers")) o.publishers = atoi(v), explicit_pubs = 1;
        else if (ARG("--self")) o.self = atoi(v);
        else if (ARG("--msg")) o.msg = v;
        else if (ARG("--size")) o.size = atoi(v);
        else if (ARG("--rate")) o.rate = atof(v);
        else if (ARG("--phases")) o.phases = v;
        else if (ARG("--window")) o.window = atoi(v), explicit_window = 1;
        else if (ARG("--duration")) o.duration = atof(v);
        else if (ARG("--warmup")) o.warmup = atof(v);
        else if (ARG("--max-msgs")) o.max_msgs = strtoull(v, NULL, 10);
        else if (ARG("--timeout")) o.timeout = atof(v);
        else if (ARG("--src-addrs")) o.src_addrs = atoi(v);
        else if (ARG("--concurrency")) o.concurrency = atoi(v);
        else if (ARG("--pid")) npids = parse_int_list(v, pids, MAX_PIDS, "--pid");
        else if (ARG("--reload-file")) o.reload_file = v;
        else if (ARG("--reload-ms")) o.reload_ms = atoi(v);
        else if (ARG("--stall-ms")) o.stall_ms = atoi(v);
        else if (ARG("--drain-ms")) o.drain_ms = atoi(v);
        else if (ARG("--settle-ms")) o.settle_ms = atoi(v);
        else if (ARG("--timeline-ms")) o.timeline_ms = atoi(v);
        else if (ARG("--label")) o.label = v;
        else if (ARG("--room-prefix")) o.room_prefix = v;
        else if (ARG("--marker")) o.marker = strtoull(v, NULL, 10);
        else if (ARG("--start-at")) o.start_at = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--hist")) o.hist = 1;
        else die("unknown option %s (--help)", a);
#undef ARG
    }
    if (!strcmp(o.mode, "echo")) {
        if (!explicit_members) o.members = 1;
        if (!explicit_pubs) o.publishers = 1;
        if (!o.path) o.path = "/echo";
    } else if (!strcmp(o.mode, "room") || !strcmp(o.mode, "rooms")) {
        if (!explicit_members) o.members = !strcmp(o.mode, "room") ? o.conns : 10;
        if (!explicit_pubs) o.publishers = !strcmp(o.mode, "room") ? 10 : 1;
        if (!explicit_window) o.window = 16;
    } else if (!strcmp(o.mode, "idle")) {
        if (!explicit_members) o.members = 10;
        o.publishers = 0;
    } else {
        die("unknown mode %s", o.mode);
    }
    if (!o.path) o.path = "/ws?room={room}&name=b{conn}";
    if (nports == 0) ports[nports++] = o.port;
    if (o.conns < 1 || o.members < 1 || o.members > o.conns || o.publishers < 0 ||
        o.publishers > o.members || o.window < 1 || o.size < 1 || o.size > 60000 ||
        o.duration <= 0 || o.src_addrs < 1 || o.src_addrs > 250 || o.concurrency < 1 ||
        o.timeline_ms < 10)
        die("bad option values (--help)");
    if (o.timeout <= 0) o.timeout = 8 * (o.duration + o.warmup) + 60;
}

/* Raises RLIMIT_NOFILE for the connections (root may raise the hard limit); with too few
 * descriptors it runs fewer connections and says so in "note". */
static void raise_nofile(void)
{
    struct rlimit rl;
    rlim_t want = (rlim_t)o.conns + 64;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    if (rl.rlim_cur >= want) return;
    if (rl.rlim_max < want) {
        struct rlimit r2 = {want, want};
        if (setrlimit(RLIMIT_NOFILE, &r2) == 0) return;
    }
    rl.rlim_cur = rl.rlim_max < want ? rl.rlim_max : want;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < want) {
        int n = (int)rl.rlim_cur - 64;
        n -= n % o.members;
        if (n < o.members) die("RLIMIT_NOFILE %lu is too low", (unsigned long)rl.rlim_cur);
        snprintf(note, sizeof note, "RLIMIT_NOFILE %lu: ran %d of %d connections",
                 (unsigned long)rl.rlim_cur, n, o.conns);
        o.conns = n;
    }
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    loop = uv_default_loop();
    nrooms = o.conns / o.members;
    o.conns = nrooms * o.members;
    expected = o.self ? o.members : o.members - 1;
    if (expected < 1) expected = 1;
    npubs = nrooms * o.publishers;
    conns = calloc((size_t)o.conns, sizeof *conns);
    pubs = calloc((size_t)(npubs ? npubs : 1), sizeof *pubs);
    if (!conns || !pubs) die("out of memory");
    for (int i = 0; i < o.conns; i++) {
        conns[i].idx = i;
        conns[i].room = i / o.members;
        conns[i].pub = -1;
        int k = i % o.members;
        if (k < o.publishers) {
            pub_t *p = &pubs[conns[i].room * o.publishers + k];
            p->c = &conns[i];
            p->room = conns[i].room;
            conns[i].pub = (int)(p - pubs);
        }
    }
    if (o.phases) {
        parse_phases(o.phases);
    } else {
        char spec[64];
        if (o.rate > 0) snprintf(spec, sizeof spec, "rate=%g", o.rate * (npubs ? npubs : 1));
        else snprintf(spec, sizeof spec, "flat");
        parse_phases(spec);
    }
    if (!strcmp(o.mode, "idle")) nphases = 1;
    P = &phases[0];
    /* a per-run nonce keeps messages of earlier runs (chatgw's room history) out of the counts */
    memcpy(marker_prefix, "~b", 2);
    marker_len = 2 + (size_t)put_num(marker_prefix + 2, o.marker ? o.marker % 1000000
                                                              : (uv_hrtime() ^ (uint64_t)getpid()) % 1000000);
    marker_prefix[marker_len++] = ':';
    marker_prefix[marker_len] = 0;
    rng ^= (uint32_t)uv_hrtime();
    memset(&deflater, 0, sizeof deflater);
    memset(&shared_inflater, 0, sizeof shared_inflater);
    if (deflateInit2(&deflater, 1, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK) die("deflateInit2");
    if (inflateInit2(&shared_inflater, -15) != Z_OK) die("inflateInit2");
    int l = snprintf(req_prefix, sizeof req_prefix,
                     "Host: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                     "Origin: http://%s:%d\r\n",
                     o.host, o.port, o.host, o.port);
    if (o.proto) l += snprintf(req_prefix + l, sizeof req_prefix - (size_t)l, "Sec-WebSocket-Protocol: %s\r\n", o.proto);
    if (o.deflate)
        snprintf(req_prefix + l, sizeof req_prefix - (size_t)l,
                 "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n");
    rss_before = rss_kb();
    t_connect0 = uv_hrtime();
    uv_timer_init(loop, &t_tick);
    uv_timer_init(loop, &t_rate);
    uv_timer_init(loop, &t_phase);
    uv_timer_init(loop, &t_guard);
    uv_timer_init(loop, &t_reload);
    uv_timer_start(&t_tick, on_tick, (uint64_t)o.timeline_ms, (uint64_t)o.timeline_ms);
    uv_timer_start(&t_guard, on_guard, (uint64_t)(o.timeout * 1000), 0);
    connect_more();
    uv_run(loop, UV_RUN_DEFAULT);
    stop_all();
    return 0;
}
