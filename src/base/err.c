#include "base/err.h"

#include <uv.h>

const char *gw_strerror(int code)
{
    switch (code) {
#define GW_ERR_CASE(name, value, words) case value: return words;
        GW_ERR_MAP(GW_ERR_CASE)
#undef GW_ERR_CASE
    default: return code >= 0 ? "ok" : uv_strerror(code);
    }
}
