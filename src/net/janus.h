/* janus: chatgw's client of a Janus media server (its HTTP API), for voice rooms mixed by the
 * AudioBridge plugin. Clients never see Janus: chatgw holds one Janus session per loop (kept
 * alive by a keepalive every keepalive_ms: Janus's long poll does not count), one plugin handle per member in voice, and one control handle for
 * room-wide requests (create, destroy, mute). Outgoing HTTP goes through httpc (libcurl multi).
 *
 * Contract:
 * - One janus_t per loop, used only from that loop's thread. It connects at once and, while
 *   Janus is down or lost the session (a restart), tries again with backoff (250 ms doubling to
 *   5 s). handlers.state says when the link goes up or down.
 * - A chat room maps to one AudioBridge room whose numeric id is derived from the room's name
 *   (sha256, 52 bits): every replica sharing one Janus finds the same room. The first join
 *   creates it ("already exists" counts as created); when this client's last member of the room
 *   leaves, the room is destroyed if Janus lists no participant in it (another replica's).
 * - janus_peer_join answers at once with GW_EDOWN while the session is not up. A peer it
 *   returns is the caller's until janus_peer_leave, whatever happens to it: its join ends in
 *   exactly one of handlers.answer or handlers.lost, and a live peer may get lost later (the
 *   session went away). After lost, the peer is inert (trickle and mute are ignored) until
 *   left. A handler may call janus_peer_leave on the peer it was given.
 * - Every request has a total timeout (timeout_ms); a join that Janus does not answer in time
 *   is lost with "voice_timeout".
 * - Mute is enforced in the mixer (AudioBridge mute/unmute by participant id), not in the
 *   member's browser. */
#ifndef CHATGW_JANUS_H
#define CHATGW_JANUS_H

#include <stdint.h>

#include <jansson.h>
#include <uv.h>

typedef struct janus janus_t;
typedef struct janus_peer janus_peer_t;

typedef struct {
    /* p's join succeeded: sdp is Janus's answer (borrowed for the call). */
    void (*answer)(void *ud, janus_peer_t *p, const char *sdp);
    /* p's voice ended without its owner asking: code is voice_unavailable (Janus refused or
     * failed the join), voice_timeout or voice_lost (the session went away). */
    void (*lost)(void *ud, janus_peer_t *p, const char *code, const char *message);
    /* A participant of p's room started or stopped talking; member is the id it joined with
     * (any replica's). Every local peer of the room may report the same event. */
    void (*talking)(void *ud, janus_peer_t *p, const char *member, int talking);
    /* The session came up (1) or went away (0). arg is janus_new's arg. */
    void (*state)(void *arg, int up);
} janus_handlers_t;

/* url: the Janus HTTP API base, e.g. http://127.0.0.1:8088/janus. NULL on allocation failure.
 * keepalive_ms must be below Janus's session_timeout. */
janus_t *janus_new(uv_loop_t *loop, const char *url, unsigned timeout_ms, unsigned keepalive_ms,
                   const janus_handlers_t *handlers, void *arg);
/* Drops every request and peer (no callbacks; peers must not be used afterwards); Janus ends
 * the session by its own timeout. The memory goes once libuv closed the handles. */
void janus_free(janus_t *j);
int janus_up(const janus_t *j);    /* 1 while the session is up, else 0 */
size_t janus_peer_count(const janus_t *j);

/* Joins room as member with the browser's SDP offer. ud is handed to the handlers. Returns the
 * peer, or NULL with *err GW_EDOWN (no session), GW_EINVAL or GW_ENOMEM. */
janus_peer_t *janus_peer_join(janus_t *j, const char *room, const char *member, const char *offer_sdp, int muted,
                              void *ud, int *err);
/* A trickled ICE candidate of the browser ({candidate, sdpMid, sdpMLineIndex}), or NULL when
 * its gathering completed. Borrowed. 0, or GW_EINVAL for a candidate of the wrong shape. */
int janus_peer_trickle(janus_peer_t *p, json_t *candidate);
/* Mutes or unmutes p in the mixer (before the join's answer: applied with it). */
void janus_peer_mute(janus_peer_t *p, int muted);
/* Leaves the room and frees p (its handle is detached; pending requests are dropped). */
void janus_peer_leave(janus_peer_t *p);

/* The AudioBridge room id for a chat room (1..2^52). */
uint64_t janus_room_id(const char *room);

#endif
