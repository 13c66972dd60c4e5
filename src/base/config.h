/* config: layered configuration. Built-in defaults, then a JSON file (config/chatgw.json, or
 * --config FILE), then CHATGW_<KEY> environment variables, then --key value / --key=value flags.
 * Every key is validated; a wrong value yields a one-line error naming the key. The key names
 * are part of the public contract (README, DESIGN.md). */
#ifndef CHATGW_CONFIG_H
#define CHATGW_CONFIG_H

#include <stddef.h>

/* node_id's length limit: the bus keeps node ids in fixed arrays (BUS_NODE_MAX in bus/bus.h,
 * this plus the NUL) and frames its Redis envelopes with newlines, hence no '\n' either. */
#define CONFIG_NODE_ID_MAX 63

typedef struct {
    char *listen;                  /* host:port, [v6]:port */
    char *admin_listen;            /* "" = metrics and admin routes on listen */
    int workers;                   /* "auto" resolves to the CPUs allowed */
    int log_level;                 /* LOG_* */
    char *scripts_dir;
    char *web_dir;
    int echo;
    long drain_timeout_ms;
    long ping_interval_ms;
    long idle_timeout_ms;
    long header_timeout_ms;
    long max_header_bytes;
    long max_frame_bytes;
    long max_message_bytes;
    int permessage_deflate;
    long write_queue_bytes;
    long slow_grace_ms;
    long max_connections;
    long max_connections_per_ip;
    double accept_rate_per_ip;
    long max_text_bytes;
    double rate_msgs_per_sec;
    long rate_burst;
    long max_rooms_per_conn;
    long max_room_members;
    long history_size;
    char *api_token;
    char *allowed_origins;
    char *redis_url;
    char *redis_password_file;     /* "" = the URL's password, if any */
    long redis_connect_timeout_ms;
    long redis_command_timeout_ms;
    long redis_backoff_min_ms;
    long redis_backoff_max_ms;
    int redis_required;            /* redis down fails /readyz */
    char *janus_url;               /* "" = voice is the browsers' mesh */
    long janus_timeout_ms;
    long janus_keepalive_ms;       /* Janus ends a session idle for its session_timeout */
    long presence_ttl_ms;
    long redis_room_ttl_ms;        /* a room's keys expire this long after its last activity; 0 = never */
    char *redis_sentinels;         /* "" = none; else host:port,... naming redis_sentinel_master */
    char *redis_sentinel_master;
    char *redis_sentinel_password_file;
    char *redis_cluster_nodes;     /* "" = none; else host:port,... seeds of a Redis Cluster */
    char *node_id;                 /* "" = hostname-RANDOM; else 1..CONFIG_NODE_ID_MAX bytes, no '\n' */
    long policy_timeout_ms;
    long policy_budget;            /* 0 = no instruction limit */
    long policy_memory_mb;
    long policy_store_mb;
    char *policy_fail;             /* "closed" or "open" */
    char *policy_boot;             /* "exit" or "wait": a first policy load that fails */
    long reload_poll_ms;
    char *tls_cert;
    char *tls_key;
    char *trusted_proxies;
    int proxy_protocol;            /* the public listener expects a PROXY header (trusted_proxies only) */
    long ipv6_prefix_bits;         /* per-IP limits key IPv6 clients by this prefix */
    char *ice_servers;             /* JSON array text */
    char *policy_candidate_dir;    /* "" = no candidate policy */
    char *policy_candidate_mode;   /* "off", "shadow" or "canary" */
    double policy_candidate_percent;     /* canary: share of connections, 0..100 */
    long policy_rollback_window_ms;
    long policy_rollback_min_calls;
    double policy_rollback_error_rate;   /* 0..1 of the candidate's calls in a window */
    double policy_rollback_drop_rate;
    char *policy_record_file;      /* "" = no recording */
    double policy_record_sample;   /* 0..1 of connections recorded */
    int policy_record_redact;
    char *sentry_dsn;              /* "" = no error reports (app/sentry_app checks the format) */
    char *sentry_dsn_file;         /* "" = sentry_dsn; else the file's first line replaces it */
    char *environment;             /* on error reports */
    char *crash_dir;               /* "" = no crash records */
} config_t;

/* Fills cfg from all layers. args are the flags after the subcommand (argv style, argc items).
 * config_file is the --config value or NULL (then config/chatgw.json if it exists).
 * Returns 0, or a negative code with a one-line message naming the key in err: GW_ENOTFOUND
 * when a config file cannot be read, GW_EINVAL for anything else (a bad value, an unknown key
 * or option, a file that is not a JSON object). */
int config_load(config_t *cfg, int argc, char **argv, char *err, size_t errlen);
void config_free(config_t *cfg);
/* The config as a JSON object text (api_token and secrets redacted); caller frees. */
char *config_to_json(const config_t *cfg);
/* Prints every key with its default and meaning (for --help). */
void config_print_help(void);

#endif
