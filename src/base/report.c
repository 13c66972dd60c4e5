/* report: the sink is two words written before the workers start and read after (see
 * report.h): relaxed atomics, no lock on the error path. */
#include "base/report.h"

#include <stdio.h>
#include <string.h>

#include "base/err.h"

static report_sink_fn report_fn;
static void *report_ud;

void report_sink_set(report_sink_fn fn, void *ud)
{
    __atomic_store_n(&report_ud, ud, __ATOMIC_RELAXED);
    __atomic_store_n(&report_fn, fn, __ATOMIC_RELEASE);
}

void report_emit(const report_t *r)
{
    report_sink_fn fn = __atomic_load_n(&report_fn, __ATOMIC_ACQUIRE);
    if (fn && r) fn(__atomic_load_n(&report_ud, __ATOMIC_RELAXED), r);
}

int report_where(const char *msg, char *out, unsigned outlen)
{
    if (!msg || !outlen) return GW_ENOTFOUND;
    for (const char *p = strstr(msg, ".lua:"); p; p = strstr(p + 1, ".lua:")) {
        const char *d = p + 5;
        size_t digits = strspn(d, "0123456789");
        if (!digits) continue;
        const char *start = p;   /* back to the name's start: after a space, tab, quote or newline */
        while (start > msg && !strchr(" \t\n\"'[:", start[-1])) start--;
        size_t n = (size_t)(d + digits - start);
        if (n >= outlen) n = outlen - 1;
        memcpy(out, start, n);
        out[n] = '\0';
        return 0;
    }
    return GW_ENOTFOUND;
}
