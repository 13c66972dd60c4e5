/* cidr: matching an address against a comma list of CIDRs ("10.0.0.0/8,fd00::/8"), for
 * trusted_proxies. Pure functions, no allocation. */
#ifndef CHATGW_CIDR_H
#define CHATGW_CIDR_H

#include <stddef.h>

#define CIDR_KEY_MAX 52            /* INET6_ADDRSTRLEN, "/128" */

/* 1 when ip (textual IPv4 or IPv6) lies in one of the list's CIDRs; a bare address is a /32 or
 * /128. IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) match IPv4 CIDRs. 0 otherwise. */
int cidr_list_match(const char *list, const char *ip);

/* The client address from an X-Forwarded-For value: the rightmost entry that is not a trusted
 * proxy. Copies it into out and returns 0; GW_ENOTFOUND when there is no header or every
 * entry is a trusted proxy, GW_EINVAL when the first untrusted entry from the right is empty,
 * too long or not an address. */
int cidr_forwarded_client(const char *xff, const char *trusted, char *out, size_t outlen);

/* The key per-IP limits count ip under: an IPv4 address (also written as ::ffff:a.b.c.d) as
 * itself, an IPv6 address as its first v6_bits bits ("2001:db8:1:2::/64"; v6_bits 128, the
 * address), so one client's /64 cannot rotate past the limits. Text that is no address is
 * copied as it is (cut to outlen - 1 bytes). CIDR_KEY_MAX bytes hold any address's key. */
void cidr_limit_key(const char *ip, int v6_bits, char *out, size_t outlen);

#endif
