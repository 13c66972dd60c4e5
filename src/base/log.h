/* log: JSON-lines logs on stdout: {"ts":"...","level":"info","msg":"...", fields...}.
 * One line per call, written with a single write so lines from threads never interleave. */
#ifndef CHATGW_LOG_H
#define CHATGW_LOG_H

#include <jansson.h>            /* json_int_t for "I" fields */

enum { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };

void log_level_set(int level);
int log_level_get(void);
int log_level_parse(const char *s);          /* LOG_* or GW_EINVAL (base/err.h) */
/* fields: a jansson json_pack() format for an object ("{s:s, s:i}") followed by its
 * arguments, or NULL for none. A bad format is logged as a field error, never dropped. */
void log_write(int level, const char *msg, const char *fields, ...);

#define log_debug(...) log_write(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_write(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_write(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, __VA_ARGS__)

#endif
