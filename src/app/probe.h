/* probe: `chatgw probe URL`, the synthetic user for monitoring from outside the cluster.
 *
 * It does what a user does against a ws:// or wss:// URL: connect (name resolution and TCP),
 * TLS (wss: verified against the system's CAs or --cacert, with SNI and the host name checked),
 * the WebSocket upgrade and the welcome frame, a join of a fresh probe room (`_probe-<hex>`),
 * a message sent and received back, and then GET /readyz on the same host when it answers
 * (a 404 or a refused request there is reported as skipped; a 503 fails the probe). It prints
 * one JSON line on stdout with each step's milliseconds, and exits 0, or PROBE_EXIT_BASE plus
 * the failed step's index (the line names the step). One deadline (--timeout-ms) bounds the
 * whole probe, name resolution included. It is a short-lived command: blocking I/O bounded by
 * poll, never part of the server's loops. */
#ifndef CHATGW_PROBE_H
#define CHATGW_PROBE_H

#define PROBE_EXIT_BASE 10   /* exit status = 10 + step: 10 connect, 11 tls, 12 upgrade, 13 join,
                              * 14 echo, 15 readyz; 2 = usage */

/* argv: the arguments after "probe". Returns the exit status. */
int probe_main(int argc, char **argv);

#endif
