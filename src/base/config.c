/* config: layered, table-driven configuration. One row of config_keys describes each key: its
 * name, kind, where it lives in config_t, its default (as text, parsed by the same code as an
 * environment value, so defaults obey the same rules), its bounds and its help line. Layers
 * apply in order: defaults, the JSON file (--config FILE, else config/chatgw.json when it
 * exists), CHATGW_<KEY> environment variables, then flags. A bad value stops the load with one
 * line naming the key, what was expected, what was given and where it came from. Secrets are
 * never echoed in errors nor in config_to_json. This module never touches the network or
 * keeps global state. */
#define _GNU_SOURCE 1 /* sched_getaffinity, CPU_COUNT */
#include "base/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <jansson.h>

#include "base/buf.h"
#include "base/err.h"
#include "base/log.h"

#define CONFIG_DEFAULT_FILE "config/chatgw.json"
#define CONFIG_WORKERS_MAX 1024

typedef enum {
    CK_STRING,      /* char * */
    CK_BOOL,        /* int 0/1 */
    CK_LONG,        /* long within [min, max] */
    CK_DOUBLE,      /* double within [min, max] */
    CK_LOG_LEVEL,   /* int LOG_* */
    CK_WORKERS,     /* int within [min, max], or "auto" */
    CK_LISTEN,      /* char *, host:port or [v6]:port */
    CK_POLICY_FAIL, /* char *, "closed" or "open" */
    CK_POLICY_BOOT, /* char *, "exit" or "wait" */
    CK_JSON_ARRAY,  /* char *, compact JSON array text */
    CK_CIDRS,       /* char *, comma list of CIDRs */
    CK_REDIS_URL,   /* char *, redis:// URL (the bus has no unix socket or TLS transport) */
    CK_NODE_ID,     /* char *, 1..CONFIG_NODE_ID_MAX bytes without a newline (the bus's framing), or empty */
    CK_POLICY_MODE, /* char *, "off", "shadow" or "canary" */
    CK_COUNT
} config_kind_t;

enum {
    CF_SECRET = 1,    /* never echoed in errors; redacted by config_to_json */
    CF_NONEMPTY = 2,  /* the empty string is not a valid value */
};

typedef struct {
    const char *name;
    config_kind_t kind;
    size_t offset;
    const char *def;
    double min, max;
    unsigned flags;
    const char *help;
} config_key_t;

#define OFF(f) offsetof(config_t, f)
#define MS_DAY 86400000

static const config_key_t config_keys[] = {
    { "listen", CK_LISTEN, OFF(listen), "0.0.0.0:8888", 0, 0, CF_NONEMPTY,
      "public listener: WebSocket, probes, API, web client (port 0 = any free port)" },
    { "admin_listen", CK_LISTEN, OFF(admin_listen), "", 0, 0, 0,
      "when set, /metrics and admin routes move there and answer 404 on listen" },
    { "workers", CK_WORKERS, OFF(workers), "1", 1, CONFIG_WORKERS_MAX, 0,
      "event-loop threads, each with its own SO_REUSEPORT listener, hub and Lua VM; auto = CPUs allowed" },
    { "log_level", CK_LOG_LEVEL, OFF(log_level), "info", 0, 0, 0,
      "debug, info, warn or error" },
    { "scripts_dir", CK_STRING, OFF(scripts_dir), "scripts", 0, 0, CF_NONEMPTY,
      "the Lua policy directory (the ConfigMap mount in Kubernetes)" },
    { "web_dir", CK_STRING, OFF(web_dir), "web", 0, 0, CF_NONEMPTY,
      "static web client directory" },
    { "echo", CK_BOOL, OFF(echo), "false", 0, 0, 0,
      "enables the /echo WebSocket endpoint (conformance tests, benchmarks)" },
    { "drain_timeout_ms", CK_LONG, OFF(drain_timeout_ms), "10000", 0, MS_DAY, 0,
      "graceful drain on SIGTERM; 0 = close at once" },
    { "ping_interval_ms", CK_LONG, OFF(ping_interval_ms), "25000", 0, MS_DAY, 0,
      "WebSocket keepalive ping interval; 0 = no pings" },
    { "idle_timeout_ms", CK_LONG, OFF(idle_timeout_ms), "60000", 1, MS_DAY, 0,
      "closes a connection silent for this long" },
    { "header_timeout_ms", CK_LONG, OFF(header_timeout_ms), "10000", 1, MS_DAY, 0,
      "request headers must arrive within this time (slowloris: 408)" },
    { "max_header_bytes", CK_LONG, OFF(max_header_bytes), "16384", 512, 16777216, 0,
      "request header size limit (431)" },
    { "max_frame_bytes", CK_LONG, OFF(max_frame_bytes), "1048576", 125, 1073741824, 0,
      "WebSocket frame payload limit (close 1009 beyond)" },
    { "max_message_bytes", CK_LONG, OFF(max_message_bytes), "1048576", 125, 1073741824, 0,
      "WebSocket message limit after reassembly and inflation (close 1009 beyond)" },
    { "permessage_deflate", CK_BOOL, OFF(permessage_deflate), "true", 0, 0, 0,
      "offers RFC 7692 compression" },
    { "write_queue_bytes", CK_LONG, OFF(write_queue_bytes), "1048576", 1024, 1073741824, 0,
      "per-connection write queue limit (slow-consumer policy)" },
    { "slow_grace_ms", CK_LONG, OFF(slow_grace_ms), "5000", 0, MS_DAY, 0,
      "how long a queue may stay over write_queue_bytes before close 1008" },
    { "max_connections", CK_LONG, OFF(max_connections), "10000", 1, 10000000, 0,
      "connections per process (503 before upgrade beyond)" },
    { "max_connections_per_ip", CK_LONG, OFF(max_connections_per_ip), "256", 1, 10000000, 0,
      "connections per client address (429 before upgrade beyond)" },
    { "accept_rate_per_ip", CK_DOUBLE, OFF(accept_rate_per_ip), "50", 0, 1000000, 0,
      "new connections per second per client address, burst twice that (429 beyond); 0 = off" },
    { "max_text_bytes", CK_LONG, OFF(max_text_bytes), "4096", 1, 16777216, 0,
      "chat text size (too_large)" },
    { "rate_msgs_per_sec", CK_DOUBLE, OFF(rate_msgs_per_sec), "20", 0.001, 1000000, 0,
      "per-connection token bucket rate (rate_limited)" },
    { "rate_burst", CK_LONG, OFF(rate_burst), "40", 1, 1000000, 0,
      "per-connection token bucket size" },
    { "max_rooms_per_conn", CK_LONG, OFF(max_rooms_per_conn), "16", 1, 100000, 0,
      "rooms one connection may join (room_full)" },
    { "max_room_members", CK_LONG, OFF(max_room_members), "1000", 1, 10000000, 0,
      "members per room (room_full)" },
    { "history_size", CK_LONG, OFF(history_size), "100", 0, 100000, 0,
      "per-room history ring / stream length; 0 = no history" },
    { "api_token", CK_STRING, OFF(api_token), "", 0, 0, CF_SECRET,
      "bearer token for POST /api/rooms/{id}/messages; empty disables it" },
    { "allowed_origins", CK_STRING, OFF(allowed_origins), "", 0, 0, 0,
      "comma list of WebSocket origins; empty = same host as the request, * = any" },
    { "redis_url", CK_REDIS_URL, OFF(redis_url), "", 0, 0, 0,
      "redis://[user:password@]host:port[/db]; empty = single node" },
    { "redis_password_file", CK_STRING, OFF(redis_password_file), "", 0, 0, 0,
      "file holding the Redis password (a Kubernetes Secret); replaces the URL's password" },
    { "redis_connect_timeout_ms", CK_LONG, OFF(redis_connect_timeout_ms), "2000", 1, MS_DAY, 0,
      "Redis resolve + connect + AUTH limit per try" },
    { "redis_command_timeout_ms", CK_LONG, OFF(redis_command_timeout_ms), "2000", 1, MS_DAY, 0,
      "oldest unanswered Redis command; the link is reset after" },
    { "redis_backoff_min_ms", CK_LONG, OFF(redis_backoff_min_ms), "100", 1, MS_DAY, 0,
      "first Redis reconnect delay, doubled per failed try, jittered" },
    { "redis_backoff_max_ms", CK_LONG, OFF(redis_backoff_max_ms), "5000", 1, MS_DAY, 0,
      "cap on the Redis reconnect delay" },
    { "redis_required", CK_BOOL, OFF(redis_required), "false", 0, 0, 0,
      "whether Redis being down fails /readyz (with redis_url set)" },
    { "janus_url", CK_STRING, OFF(janus_url), "", 0, 0, 0,
      "Janus HTTP API (http://host:port/janus): voice through its AudioBridge; empty = peer-to-peer mesh" },
    { "janus_timeout_ms", CK_LONG, OFF(janus_timeout_ms), "5000", 100, 120000, 0,
      "limit per Janus request; a voice join gets voice_timeout after twice this" },
    { "janus_keepalive_ms", CK_LONG, OFF(janus_keepalive_ms), "20000", 100, 3600000, 0,
      "keepalive of chatgw's Janus session; below Janus's session_timeout (60 s by default)" },
    { "presence_ttl_ms", CK_LONG, OFF(presence_ttl_ms), "15000", 300, MS_DAY, 0,
      "node heartbeat TTL: members of a dead replica leave within about this time" },
    { "redis_room_ttl_ms", CK_LONG, OFF(redis_room_ttl_ms), "604800000", 0, 366L * MS_DAY, 0,
      "a room's Redis keys expire this long after its last activity; 0 = never" },
    { "redis_sentinels", CK_STRING, OFF(redis_sentinels), "", 0, 0, 0,
      "host:port,... of Redis Sentinels naming the master (with redis_url for user, password, db)" },
    { "redis_sentinel_master", CK_STRING, OFF(redis_sentinel_master), "", 0, 0, 0,
      "the Sentinel service name of the master (redis_sentinels)" },
    { "redis_sentinel_password_file", CK_STRING, OFF(redis_sentinel_password_file), "", 0, 0, 0,
      "file holding the sentinels' password; empty = they take no AUTH" },
    { "redis_cluster_nodes", CK_STRING, OFF(redis_cluster_nodes), "", 0, 0, 0,
      "host:port,... seed nodes of a Redis Cluster (with redis_url for user and password)" },
    { "node_id", CK_NODE_ID, OFF(node_id), "", 0, 0, 0,
      "this replica's id on the bus (1-63 bytes); empty = hostname-RANDOM" },
    { "policy_timeout_ms", CK_LONG, OFF(policy_timeout_ms), "50", 1, 60000, 0,
      "wall-clock limit of one Lua hook call (self_test and load included)" },
    { "policy_budget", CK_LONG, OFF(policy_budget), "0", 0, 1000000000, 0,
      "optional exact limit: Lua VM instructions per hook call; 0 = off (policy_timeout_ms guards)" },
    { "policy_memory_mb", CK_LONG, OFF(policy_memory_mb), "64", 1, 65536, 0,
      "Lua VM memory cap in MiB" },
    { "policy_store_mb", CK_LONG, OFF(policy_store_mb), "16", 1, 65536, 0,
      "gw.store memory cap in MiB (keys, values and bookkeeping; outside the VM, kept across reloads)" },
    { "policy_fail", CK_POLICY_FAIL, OFF(policy_fail), "closed", 0, 0, 0,
      "what a failing on_connect/on_join hook means: closed (refuse) or open (allow)" },
    { "policy_boot", CK_POLICY_BOOT, OFF(policy_boot), "exit", 0, 0, 0,
      "a first policy load that fails: exit (status 1) or wait (serve unready, refusing chat, until a reload loads it)" },
    { "reload_poll_ms", CK_LONG, OFF(reload_poll_ms), "0", 0, MS_DAY, 0,
      "polling fallback for the scripts directory; 0 = off" },
    { "tls_cert", CK_STRING, OFF(tls_cert), "", 0, 0, 0,
      "PEM certificate chain for direct TLS termination; empty = plain TCP" },
    { "tls_key", CK_STRING, OFF(tls_key), "", 0, 0, 0,
      "PEM private key for tls_cert" },
    { "trusted_proxies", CK_CIDRS, OFF(trusted_proxies), "", 0, 0, 0,
      "comma list of CIDRs whose X-Forwarded-For (and PROXY header) is believed" },
    { "proxy_protocol", CK_BOOL, OFF(proxy_protocol), "false", 0, 0, 0,
      "the public listener expects a PROXY protocol v1/v2 header, from trusted_proxies only" },
    { "ipv6_prefix_bits", CK_LONG, OFF(ipv6_prefix_bits), "64", 32, 128, 0,
      "per-IP limits count an IPv6 client by this prefix of its address (128 = each address)" },
    { "ice_servers", CK_JSON_ARRAY, OFF(ice_servers), "[]", 0, 0, 0,
      "JSON list of ICE servers handed to the web client by /api/config" },
    { "policy_candidate_dir", CK_STRING, OFF(policy_candidate_dir), "", 0, 0, 0,
      "a candidate policy directory beside scripts_dir (loaded, watched and reloaded the same way); empty = none" },
    { "policy_candidate_mode", CK_POLICY_MODE, OFF(policy_candidate_mode), "off", 0, 0, 0,
      "off, shadow (both run, stable applies, diffs counted) or canary (policy_candidate_percent of connections)" },
    { "policy_candidate_percent", CK_DOUBLE, OFF(policy_candidate_percent), "5", 0, 100, 0,
      "canary: percent of connections (by a stable hash of the connection id) the candidate serves" },
    { "policy_rollback_window_ms", CK_LONG, OFF(policy_rollback_window_ms), "60000", 100, MS_DAY, 0,
      "canary: the window over which the candidate's error and drop rates are measured" },
    { "policy_rollback_min_calls", CK_LONG, OFF(policy_rollback_min_calls), "20", 1, 1000000000, 0,
      "canary: candidate calls a window needs before its rates can roll the candidate back" },
    { "policy_rollback_error_rate", CK_DOUBLE, OFF(policy_rollback_error_rate), "0.05", 0, 1, 0,
      "canary: share of the candidate's calls failing (error, timeout, memory) that rolls it back" },
    { "policy_rollback_drop_rate", CK_DOUBLE, OFF(policy_rollback_drop_rate), "0.5", 0, 1, 0,
      "canary: share of the candidate's connect/join/message calls refusing that rolls it back" },
    { "policy_record_file", CK_STRING, OFF(policy_record_file), "", 0, 0, 0,
      "JSON-lines file the policy's hook inputs and stable decisions are appended to (personal data); empty = off" },
    { "policy_record_sample", CK_DOUBLE, OFF(policy_record_sample), "1", 0, 1, 0,
      "share of connections recorded (chosen by a hash of the connection id: whole lives)" },
    { "policy_record_redact", CK_BOOL, OFF(policy_record_redact), "true", 0, 0, 0,
      "records replace message text, names and query values with same-length placeholders" },
    { "sentry_dsn", CK_STRING, OFF(sentry_dsn), "", 0, 0, CF_SECRET,
      "Sentry (or GlitchTip) DSN: policy errors, rejected reloads, bus errors and crashes go there; empty = none" },
    { "sentry_dsn_file", CK_STRING, OFF(sentry_dsn_file), "", 0, 0, 0,
      "file holding the DSN (a Kubernetes Secret); replaces sentry_dsn" },
    { "environment", CK_STRING, OFF(environment), "production", 0, 0, CF_NONEMPTY,
      "the environment name on error reports (production, staging, ...)" },
    { "crash_dir", CK_STRING, OFF(crash_dir), "", 0, 0, 0,
      "directory for crash records (an emptyDir); each is reported at the next start; empty = none" },
};

#define CONFIG_NKEYS (sizeof config_keys / sizeof config_keys[0])

/* Where a value came from, for the error line: "CHATGW_X", "--x", or a file path. */
typedef struct {
    const char *what;
    char *err;
    size_t errlen;
} config_src_t;

/* ---- field access ---- */

static void *config_field(config_t *cfg, const config_key_t *k) { return (char *)cfg + k->offset; }

static const void *config_field_const(const config_t *cfg, const config_key_t *k)
{
    return (const char *)cfg + k->offset;
}

static void config_string_replace(config_t *cfg, const config_key_t *k, char *value)
{
    char **slot = config_field(cfg, k);
    free(*slot);
    *slot = value;
}

static const config_key_t *config_key_find(const char *name)
{
    for (size_t i = 0; i < CONFIG_NKEYS; i++)
        if (strcmp(config_keys[i].name, name) == 0) return &config_keys[i];
    return NULL;
}

/* ---- value parsers: text in, 0 and the field set, or GW_EINVAL and the field untouched ---- */

static int config_long_parse(const char *s, long *out)
{
    if (!*s || isspace((unsigned char)*s)) return GW_EINVAL;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end) return GW_EINVAL;
    *out = v;
    return 0;
}

/* 1 or 0 for a yes or no word, else GW_EINVAL. */
static int config_bool_parse(const char *s)
{
    static const char *const yes[] = { "true", "1", "yes", "on" };
    static const char *const no[] = { "false", "0", "no", "off" };
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) return 1;
        if (strcasecmp(s, no[i]) == 0) return 0;
    }
    return GW_EINVAL;
}

/* CPUs this process may run on; a cgroup v2 CPU quota (a Kubernetes limit) lowers it, since
 * affinity alone shows every CPU of the node. */
static int config_cpus_allowed(void)
{
    int n = 0;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
    if (n < 1) n = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    FILE *f = fopen("/sys/fs/cgroup/cpu.max", "r");
    if (f) {
        long quota, period;
        if (fscanf(f, "%ld %ld", &quota, &period) == 2 && quota > 0 && period > 0) {
            long q = (quota + period - 1) / period;
            if (q >= 1 && q < n) n = (int)q;
        }
        fclose(f);
    }
    return n > CONFIG_WORKERS_MAX ? CONFIG_WORKERS_MAX : n;
}

/* Port: 1 to 5 digits, 0..65535 (0 = any free port, for tests). */
static int config_port_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 5 || strspn(s, "0123456789") != n) return 0;
    return atol(s) <= 65535;
}

/* The hosts server.c can bind without a resolver: an IPv4 literal, localhost, or * / empty
 * for every interface. Checking here turns a bad address into a config error, not a failed
 * start. */
static int config_host_valid(const char *h, size_t n)
{
    char tmp[INET_ADDRSTRLEN];
    struct in_addr a;
    if (n == 0 || (n == 1 && h[0] == '*') || (n == 9 && memcmp(h, "localhost", 9) == 0)) return 1;
    if (n >= sizeof tmp) return 0;
    memcpy(tmp, h, n);
    tmp[n] = '\0';
    return inet_pton(AF_INET, tmp, &a) == 1;
}

static int config_listen_valid(const char *s)
{
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':') return 0;
        size_t n = (size_t)(close - s - 1);
        char tmp[INET6_ADDRSTRLEN + 1];
        struct in6_addr a;
        if (n == 0 || n >= sizeof tmp) return 0;
        memcpy(tmp, s + 1, n);
        tmp[n] = '\0';
        return inet_pton(AF_INET6, tmp, &a) == 1 && config_port_valid(close + 2);
    }
    const char *colon = strrchr(s, ':');
    if (!colon || memchr(s, ':', (size_t)(colon - s))) return 0; /* bare IPv6 needs [] */
    return config_host_valid(s, (size_t)(colon - s)) && config_port_valid(colon + 1);
}

/* One CIDR "addr/len" (IPv4 or IPv6), or a bare address meaning one host. */
static int config_cidr_valid(const char *s, size_t n)
{
    char tmp[INET6_ADDRSTRLEN + 8];
    unsigned char addr[sizeof(struct in6_addr)];
    if (n == 0 || n >= sizeof tmp) return 0;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    char *slash = strchr(tmp, '/');
    if (slash) *slash = '\0';
    int family = strchr(tmp, ':') ? AF_INET6 : AF_INET;
    if (inet_pton(family, tmp, addr) != 1) return 0;
    if (!slash) return 1;
    const char *len = slash + 1;
    size_t digits = strspn(len, "0123456789");
    if (digits < 1 || digits > 3 || len[digits]) return 0;
    return atoi(len) <= (family == AF_INET6 ? 128 : 32);
}

static int config_cidrs_valid(const char *s)
{
    while (*s) {
        size_t n = strcspn(s, ",");
        const char *item = s;
        size_t len = n;
        while (len && isspace((unsigned char)*item)) item++, len--;
        while (len && isspace((unsigned char)item[len - 1])) len--;
        if (!config_cidr_valid(item, len)) return 0;
        s += n;
        if (*s == ',') {
            s++;
            if (!*s) return 0; /* trailing comma */
        }
    }
    return 1;
}

static int config_redis_url_valid(const char *s)
{
    if (!*s) return 1;
    if (strncmp(s, "redis://", 8) == 0) return s[8] != '\0' && s[8] != '/';
    return 0;
}

/* Compact text of a JSON array, or NULL. */
static char *config_json_array_text(const char *s)
{
    json_error_t jerr;
    json_t *v = json_loads(s, JSON_DECODE_ANY, &jerr);
    char *text = NULL;
    if (v && json_is_array(v)) {
        char *dumped = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (dumped) text = xstrdup(dumped);
        free(dumped);
    }
    json_decref(v);
    return text;
}

static int config_value_parse(config_t *cfg, const config_key_t *k, const char *s)
{
    void *field = config_field(cfg, k);
    long l;
    int i;
    switch (k->kind) {
    case CK_STRING:
        if ((k->flags & CF_NONEMPTY) && !*s) return GW_EINVAL;
        config_string_replace(cfg, k, xstrdup(s));
        return 0;
    case CK_BOOL:
        if ((i = config_bool_parse(s)) < 0) return GW_EINVAL;
        *(int *)field = i;
        return 0;
    case CK_LONG:
        if (config_long_parse(s, &l) < 0 || l < (long)k->min || l > (long)k->max) return GW_EINVAL;
        *(long *)field = l;
        return 0;
    case CK_DOUBLE: {
        char *end;
        if (!*s || isspace((unsigned char)*s)) return GW_EINVAL;
        double d = strtod(s, &end);
        if (*end || !isfinite(d) || d < k->min || d > k->max) return GW_EINVAL;
        *(double *)field = d;
        return 0;
    }
    case CK_LOG_LEVEL:
        if ((i = log_level_parse(s)) < 0) return GW_EINVAL;
        *(int *)field = i;
        return 0;
    case CK_WORKERS:
        if (strcmp(s, "auto") == 0) {
            *(int *)field = config_cpus_allowed();
            return 0;
        }
        if (config_long_parse(s, &l) < 0 || l < (long)k->min || l > (long)k->max) return GW_EINVAL;
        *(int *)field = (int)l;
        return 0;
    case CK_LISTEN:
        if (*s ? !config_listen_valid(s) : (k->flags & CF_NONEMPTY) != 0) return GW_EINVAL;
        config_string_replace(cfg, k, xstrdup(s));
        return 0;
    case CK_POLICY_FAIL:
        if (strcmp(s, "closed") && strcmp(s, "open")) return GW_EINVAL;
        config_string_replace(cfg, k, xstrdup(s));
        return 0;
    case CK_POLICY_BOOT:
        if (strcmp(s, "exit") && strcmp(s, "wait")) return GW_EINVAL;
        config_string_replace(cfg, k, xstrdup(s));
        return 0;
    case CK_POLICY_MODE:
        if (strcmp(s, "off") && strcmp(s, "shadow") && strcmp(s, "canary")) return GW_EINVAL;
        config_string_replace(cfg, k, xstrdup(s));
        return 0;
    case CK_JSON_ARRAY: {
        char *text = config_json_array_text(s);
        if (!text) return GW_EINVAL;
        config_string_replace(cfg, k, text);
        return 0;
    }
    case CK_CIDRS:
        if (!config_cidrs_valid(s)) return GW_EINVAL;
        config_string_replace(cfg, k, xstrdup(s));
        return 0;
    case CK_REDIS_URL:
        if (!config_redis_url_valid(s)) return GW_EINVAL;
        config_string_replace(cfg, k, xstrdup(s));
        return 0;
    case CK_NODE_ID:
        if (strlen(s) > CONFIG_NODE_ID_MAX || strchr(s, '\n')) return GW_EINVAL;
        config_string_replace(cfg, k, xstrdup(s));
        return 0;
    case CK_COUNT:
        break;
    }
    return GW_EINVAL;
}

/* ---- error lines ---- */

static void config_expect_describe(const config_key_t *k, buf_t *b)
{
    switch (k->kind) {
    case CK_STRING: buf_append_str(b, "a non-empty string"); break;
    case CK_BOOL: buf_append_str(b, "a boolean (true/false, 1/0, yes/no, on/off)"); break;
    case CK_LONG: buf_printf(b, "an integer between %ld and %ld", (long)k->min, (long)k->max); break;
    case CK_DOUBLE: buf_printf(b, "a number between %g and %g", k->min, k->max); break;
    case CK_LOG_LEVEL: buf_append_str(b, "one of debug, info, warn, error"); break;
    case CK_WORKERS:
        buf_printf(b, "an integer between %ld and %ld or \"auto\"", (long)k->min, (long)k->max);
        break;
    case CK_LISTEN:
        buf_append_str(b, "host:port or [ipv6]:port (host an IPv4 address, localhost, * or empty; "
                          "port 0 to 65535)");
        if (!(k->flags & CF_NONEMPTY)) buf_append_str(b, ", or empty");
        break;
    case CK_POLICY_FAIL: buf_append_str(b, "\"closed\" or \"open\""); break;
    case CK_POLICY_BOOT: buf_append_str(b, "\"exit\" or \"wait\""); break;
    case CK_POLICY_MODE: buf_append_str(b, "\"off\", \"shadow\" or \"canary\""); break;
    case CK_JSON_ARRAY: buf_append_str(b, "a JSON array"); break;
    case CK_CIDRS: buf_append_str(b, "a comma list of CIDRs such as 10.0.0.0/8,fd00::/8"); break;
    case CK_REDIS_URL:
        buf_append_str(b, "redis://[user:password@]host:port[/db] or empty");
        break;
    case CK_NODE_ID: buf_printf(b, "1 to %d bytes without a newline, or empty", CONFIG_NODE_ID_MAX); break;
    case CK_COUNT: break;
    }
}

/* The given value, quoted and escaped so that the error stays one line, and cut when long.
 * A URL is shown without its userinfo: it may hold a password. */
static void config_got_describe(const config_key_t *k, const char *s, buf_t *b)
{
    if (k->flags & CF_SECRET) {
        buf_append_str(b, "a value (hidden)");
        return;
    }
    if (k->kind == CK_REDIS_URL && strchr(s, '@')) {
        buf_append_str(b, "a URL with credentials (hidden)");
        return;
    }
    buf_append_str(b, "\"");
    size_t i;
    for (i = 0; s[i] && i < 80; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') buf_printf(b, "\\%c", c);
        else if (c < 0x20 || c == 0x7f) buf_printf(b, "\\x%02x", c);
        else buf_append(b, &s[i], 1);
    }
    buf_append_str(b, s[i] ? "...\"" : "\"");
}

static void config_err_write(const config_src_t *src, buf_t *b)
{
    snprintf(src->err, src->errlen, "%.*s", (int)b->len, b->data);
}

static void config_err_printf(const config_src_t *src, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void config_err_printf(const config_src_t *src, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(src->err, src->errlen, fmt, ap);
    va_end(ap);
}

/* Writes "config: KEY: expected ..., got ... (from SRC)". got replaces the quoted value s
 * when set (a JSON value shown in its own spelling). */
static void config_value_err(const config_key_t *k, const char *s, const char *got,
                             const config_src_t *src)
{
    buf_t b;
    buf_init(&b);
    buf_printf(&b, "config: %s: expected ", k->name);
    config_expect_describe(k, &b);
    buf_append_str(&b, ", got ");
    if (got) buf_append_str(&b, got);
    else config_got_describe(k, s, &b);
    buf_printf(&b, " (from %s)", src->what);
    config_err_write(src, &b);
    buf_free(&b);
}

static int config_value_set(config_t *cfg, const config_key_t *k, const char *s,
                            const config_src_t *src)
{
    int rc = config_value_parse(cfg, k, s);
    if (rc == 0) return 0;
    config_value_err(k, s, NULL, src);
    return rc;
}

/* ---- layers ---- */

static int config_defaults_apply(config_t *cfg, char *err, size_t errlen)
{
    config_src_t src = { "built-in defaults", err, errlen };
    for (size_t i = 0; i < CONFIG_NKEYS; i++) {
        int rc = config_value_set(cfg, &config_keys[i], config_keys[i].def, &src);
        if (rc < 0) return rc;
    }
    return 0;
}

/* Whether a JSON value has a type that key k accepts. Strings fit every key, so operators can
 * paste environment values into the file. */
static int config_json_type_ok(const config_key_t *k, const json_t *v)
{
    if (json_is_string(v)) return 1;
    switch (k->kind) {
    case CK_BOOL: return json_is_boolean(v);
    case CK_LONG:
    case CK_WORKERS: /* 1e3 is fine; 2.5 then fails as text, like the same value in env */
    case CK_DOUBLE: return json_is_number(v);
    case CK_JSON_ARRAY: return json_is_array(v);
    default: return 0;
    }
}

/* Converts a JSON value to the text an environment variable would hold; caller frees. */
static char *config_json_text(const json_t *v)
{
    char tmp[64];
    if (json_is_string(v)) return xstrdup(json_string_value(v));
    if (json_is_true(v)) return xstrdup("true");
    if (json_is_false(v)) return xstrdup("false");
    if (json_is_integer(v)) {
        snprintf(tmp, sizeof tmp, "%lld", (long long)json_integer_value(v));
        return xstrdup(tmp);
    }
    if (json_is_real(v)) {
        snprintf(tmp, sizeof tmp, "%.17g", json_real_value(v));
        return xstrdup(tmp);
    }
    char *dumped = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
    char *text = xstrdup(dumped ? dumped : "");
    free(dumped);
    return text;
}

static int config_json_value_apply(config_t *cfg, const config_key_t *k, const json_t *v,
                                   const config_src_t *src)
{
    char *text = config_json_text(v);
    int rc = 0;
    if (!config_json_type_ok(k, v) || config_value_parse(cfg, k, text) < 0) {
        /* A string shows quoted; any other JSON value in its own spelling (got true, got 3.5),
         * cut short so the error stays one readable line. */
        int is_string = json_is_string(v);
        if (!is_string && strlen(text) > 80) strcpy(text + 77, "...");
        config_value_err(k, text, is_string ? NULL : text, src);
        rc = GW_EINVAL;
    }
    free(text);
    return rc;
}

static int config_file_apply(config_t *cfg, const char *path, char *err, size_t errlen)
{
    config_src_t src = { path, err, errlen };
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        if (jerr.line < 0)
            config_err_printf(&src, "config: cannot read %s: %s", path, jerr.text);
        else
            config_err_printf(&src, "config: %s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
        return jerr.line < 0 ? GW_ENOTFOUND : GW_EINVAL;
    }
    int rc = 0;
    if (!json_is_object(root)) {
        config_err_printf(&src, "config: %s: the top level must be a JSON object", path);
        rc = GW_EINVAL;
    }
    const char *name;
    json_t *v;
    json_object_foreach(root, name, v) {
        if (rc < 0) break;
        const config_key_t *k = config_key_find(name);
        if (!k) {
            config_err_printf(&src, "config: %s: unknown key (from %s)", name, path);
            rc = GW_EINVAL;
            break;
        }
        rc = config_json_value_apply(cfg, k, v, &src);
    }
    json_decref(root);
    return rc;
}

static int config_env_apply(config_t *cfg, char *err, size_t errlen)
{
    for (size_t i = 0; i < CONFIG_NKEYS; i++) {
        const config_key_t *k = &config_keys[i];
        char var[64] = "CHATGW_";
        size_t n = strlen(var);
        for (const char *p = k->name; *p && n + 1 < sizeof var; p++)
            var[n++] = (char)toupper((unsigned char)*p);
        var[n] = '\0';
        const char *value = getenv(var);
        if (!value) continue;
        config_src_t src = { var, err, errlen };
        int rc = config_value_set(cfg, k, value, &src);
        if (rc < 0) return rc;
    }
    return 0;
}

/* "--max-frame-bytes=9" -> "max_frame_bytes" in name (NUL-terminated) and "9" in *value
 * (NULL without '='). Returns 0, GW_EINVAL when arg is not a long option, or GW_ETOOBIG when
 * its name does not fit name. */
static int config_flag_split(const char *arg, char *name, size_t namelen, const char **value)
{
    if (strncmp(arg, "--", 2) != 0 || !arg[2]) return GW_EINVAL;
    const char *p = arg + 2;
    size_t n = strcspn(p, "=");
    if (n == 0) return GW_EINVAL;
    if (n >= namelen) return GW_ETOOBIG;
    for (size_t i = 0; i < n; i++) name[i] = p[i] == '-' ? '_' : p[i];
    name[n] = '\0';
    *value = p[n] == '=' ? p + n + 1 : NULL;
    return 0;
}

/* The flag as written, without "=value", for error lines. */
static void config_flag_label(const char *arg, char *out, size_t outlen)
{
    snprintf(out, outlen, "%.*s", (int)strcspn(arg, "="), arg);
}

/* Finds the last --config FILE / --config=FILE, so the file layer can go in before env and
 * flags. Returns 0 (*path NULL when absent) or GW_EINVAL when --config has no value. */
static int config_file_find(int argc, char **argv, const char **path, char *err, size_t errlen)
{
    *path = NULL;
    for (int i = 0; i < argc; i++) {
        char name[64];
        const char *value;
        if (config_flag_split(argv[i], name, sizeof name, &value) < 0 || strcmp(name, "config")) continue;
        if (!value) {
            if (i + 1 >= argc || !*argv[i + 1]) {
                snprintf(err, errlen, "config: --config: missing FILE");
                return GW_EINVAL;
            }
            value = argv[++i];
        }
        *path = value;
    }
    return 0;
}

/* A flag takes the next argument as its value unless that starts with "--" (use --key=--value
 * for such values). A boolean flag with no value ("--echo" last, or before another flag)
 * means true; otherwise it is missing its value. */
static int config_flags_apply(config_t *cfg, int argc, char **argv, char *err, size_t errlen)
{
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        char name[64], label[80];
        const char *value;
        config_flag_label(arg, label, sizeof label);
        if (config_flag_split(arg, name, sizeof name, &value) < 0) {
            if (arg[0] == '-')
                snprintf(err, errlen, "config: unknown option %s", label);
            else
                snprintf(err, errlen, "config: unexpected argument \"%.80s\"", arg);
            return GW_EINVAL;
        }
        if (strcmp(name, "config") == 0) {
            if (!value) i++; /* already applied as the file layer */
            continue;
        }
        const config_key_t *k = config_key_find(name);
        if (!k) {
            snprintf(err, errlen, "config: unknown option %s", label);
            return GW_EINVAL;
        }
        if (!value) {
            const char *next = i + 1 < argc ? argv[i + 1] : NULL;
            if (next && strncmp(next, "--", 2) != 0) {
                value = argv[++i];
            } else if (k->kind == CK_BOOL) {
                value = "true";
            } else {
                snprintf(err, errlen, "config: %s: missing value (from %s)", k->name, label);
                return GW_EINVAL;
            }
        }
        config_src_t src = { label, err, errlen };
        int rc = config_value_set(cfg, k, value, &src);
        if (rc < 0) return rc;
    }
    return 0;
}

/* Keys that only make sense together, once every layer is in. */
static int config_pairs_check(const config_t *cfg, char *err, size_t errlen)
{
    if (cfg->proxy_protocol && !cfg->trusted_proxies[0]) {
        snprintf(err, errlen, "config: proxy_protocol: needs trusted_proxies (the load balancer's addresses); "
                              "without it every connection would be refused");
        return GW_EINVAL;
    }
    if (cfg->redis_sentinels[0] && (!cfg->redis_sentinel_master[0] || !cfg->redis_url[0])) {
        snprintf(err, errlen, "config: redis_sentinels: needs redis_sentinel_master (the service name) and "
                              "redis_url (its user, password and db; the host is what the sentinels name)");
        return GW_EINVAL;
    }
    if (cfg->redis_cluster_nodes[0] && (cfg->redis_sentinels[0] || !cfg->redis_url[0])) {
        snprintf(err, errlen, "config: redis_cluster_nodes: needs redis_url (its user and password; the host is "
                              "what the cluster names) and excludes redis_sentinels");
        return GW_EINVAL;
    }
    if (cfg->redis_room_ttl_ms && cfg->redis_room_ttl_ms < cfg->presence_ttl_ms) {
        snprintf(err, errlen, "config: redis_room_ttl_ms: must be 0 or at least presence_ttl_ms (%ld): the "
                              "heartbeat refreshes the rooms of live members", cfg->presence_ttl_ms);
        return GW_EINVAL;
    }
    if (cfg->janus_url[0] && strncmp(cfg->janus_url, "http://", 7) && strncmp(cfg->janus_url, "https://", 8)) {
        snprintf(err, errlen, "config: janus_url: must be an http:// or https:// URL of Janus's HTTP API");
        return GW_EINVAL;
    }
    return 0;
}

static int config_layers_apply(config_t *cfg, int argc, char **argv, char *err, size_t errlen)
{
    const char *path;
    int rc;
    if ((rc = config_defaults_apply(cfg, err, errlen)) < 0) return rc;
    if ((rc = config_file_find(argc, argv, &path, err, errlen)) < 0) return rc;
    if (path) {
        /* An explicit file must exist: a typo must not silently fall back to defaults. */
        if (access(path, R_OK) != 0) {
            snprintf(err, errlen, "config: --config: cannot read \"%.200s\": %s", path, strerror(errno));
            return GW_ENOTFOUND;
        }
        if ((rc = config_file_apply(cfg, path, err, errlen)) < 0) return rc;
    } else if (access(CONFIG_DEFAULT_FILE, F_OK) == 0) {
        if ((rc = config_file_apply(cfg, CONFIG_DEFAULT_FILE, err, errlen)) < 0) return rc;
    }
    if ((rc = config_env_apply(cfg, err, errlen)) < 0) return rc;
    if ((rc = config_flags_apply(cfg, argc, argv, err, errlen)) < 0) return rc;
    return config_pairs_check(cfg, err, errlen);
}

int config_load(config_t *cfg, int argc, char **argv, char *err, size_t errlen)
{
    char scratch[8];
    if (!err || !errlen) {
        err = scratch;
        errlen = sizeof scratch;
    }
    err[0] = '\0';
    memset(cfg, 0, sizeof *cfg);
    int rc = config_layers_apply(cfg, argc, argv, err, errlen);
    if (rc == 0) return 0;
    config_free(cfg); /* on failure nothing stays allocated; config_free again is harmless */
    return rc;
}

static int config_kind_is_string(config_kind_t kind)
{
    return kind == CK_STRING || kind == CK_LISTEN || kind == CK_POLICY_FAIL || kind == CK_POLICY_BOOT
        || kind == CK_JSON_ARRAY || kind == CK_POLICY_MODE
        || kind == CK_CIDRS || kind == CK_REDIS_URL || kind == CK_NODE_ID;
}

void config_free(config_t *cfg)
{
    if (!cfg) return;
    for (size_t i = 0; i < CONFIG_NKEYS; i++)
        if (config_kind_is_string(config_keys[i].kind)) config_string_replace(cfg, &config_keys[i], NULL);
}

/* ---- output ---- */

/* redis://user:secret@host -> redis://user:***@host; userinfo without ':' is all secret. */
static char *config_url_redact(const char *url)
{
    const char *scheme = strstr(url, "://");
    if (!scheme) return xstrdup(url);
    const char *auth = scheme + 3;
    size_t authlen = strcspn(auth, "/");
    const char *at = memchr(auth, '@', authlen);
    if (!at) return xstrdup(url);
    const char *colon = memchr(auth, ':', (size_t)(at - auth));
    const char *secret = colon ? colon + 1 : auth;
    if (secret == at) return xstrdup(url); /* "user:@host": empty password */
    buf_t b;
    buf_init(&b);
    buf_append(&b, url, (size_t)(secret - url));
    buf_append_str(&b, "***");
    buf_append_str(&b, at);
    buf_append(&b, "", 1);
    char *out = xstrdup(b.data);
    buf_free(&b);
    return out;
}

static json_t *config_value_json(const config_t *cfg, const config_key_t *k)
{
    const void *field = config_field_const(cfg, k);
    switch (k->kind) {
    case CK_BOOL: return json_boolean(*(const int *)field);
    case CK_LONG: return json_integer(*(const long *)field);
    case CK_DOUBLE: return json_real(*(const double *)field);
    case CK_WORKERS: return json_integer(*(const int *)field);
    case CK_LOG_LEVEL: {
        static const char *const names[] = { "debug", "info", "warn", "error" };
        int level = *(const int *)field;
        return json_string(level >= LOG_DEBUG && level <= LOG_ERROR ? names[level] : "info");
    }
    case CK_JSON_ARRAY: {
        const char *text = *(const char *const *)field;
        json_t *v = text ? json_loads(text, 0, NULL) : NULL;
        return v ? v : json_array();
    }
    case CK_REDIS_URL: {
        const char *url = *(const char *const *)field;
        char *redacted = config_url_redact(url ? url : "");
        json_t *v = json_string(redacted);
        free(redacted);
        return v;
    }
    default: {
        const char *s = *(const char *const *)field;
        if (!s) s = "";
        if ((k->flags & CF_SECRET) && *s) s = "***";
        return json_string(s);
    }
    }
}

char *config_to_json(const config_t *cfg)
{
    json_t *obj = json_object();
    for (size_t i = 0; i < CONFIG_NKEYS; i++) {
        json_t *v = config_value_json(cfg, &config_keys[i]);
        json_object_set_new(obj, config_keys[i].name, v ? v : json_null());
    }
    char *dumped = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(obj);
    char *text = xstrdup(dumped ? dumped : "{}"); /* callers free with free(), like xmalloc */
    free(dumped);
    return text;
}

static const char *config_metavar(const config_key_t *k)
{
    switch (k->kind) {
    case CK_BOOL: return "[BOOL]";
    case CK_LONG: return "N";
    case CK_DOUBLE: return "X";
    case CK_LOG_LEVEL: return "LEVEL";
    case CK_WORKERS: return "N|auto";
    case CK_LISTEN: return "HOST:PORT";
    case CK_POLICY_FAIL: return "closed|open";
    case CK_POLICY_BOOT: return "exit|wait";
    case CK_POLICY_MODE: return "off|shadow|canary";
    case CK_JSON_ARRAY: return "JSON";
    case CK_CIDRS: return "CIDRS";
    case CK_REDIS_URL: return "URL";
    default: return "VALUE";
    }
}

void config_print_help(void)
{
    printf("Options (each also CHATGW_<KEY> in the environment, or \"key\" in the config file):\n"
           "  %-36s JSON config file; it must exist (default: %s when it exists)\n",
           "--config FILE", CONFIG_DEFAULT_FILE);
    for (size_t i = 0; i < CONFIG_NKEYS; i++) {
        const config_key_t *k = &config_keys[i];
        char flag[96];
        int n = snprintf(flag, sizeof flag, "--%s %s", k->name, config_metavar(k));
        for (int j = 2; j < n && flag[j] != ' '; j++)
            if (flag[j] == '_') flag[j] = '-';
        printf("  %-36s %s (default: %s)\n", flag, k->help, *k->def ? k->def : "empty");
    }
    printf("Later layers win: defaults < config file < environment < flags.\n"
           "Flags take \"--key value\" or \"--key=value\"; '-' and '_' are the same in key names.\n"
           "Booleans are true/false, 1/0, yes/no or on/off. A boolean flag with no value (\"--echo\"\n"
           "last, or followed by another --flag) means true; \"--echo false\" and \"--echo=off\" work.\n");
}
