-- settings.lua: the tunables of the default chatgw policy, in one table.
--
-- This is the file operators edit (the `settings.lua` key of the chatgw-policy ConfigMap).
-- gw.config only exposes chatgw's own config keys, so every policy knob lives here.
-- Each module (rooms.lua, moderation.lua, routing.lua) has a built-in default for every key:
-- a key left out (or this whole section left out) keeps that default. Set a key to
-- `false` to turn a feature off where the comment says so.
--
-- The new values take effect on the next reload, like any other script change. policy.lua's
-- self_test checks them (Lua patterns must compile, numbers must be numbers, ...), so a typo
-- here rejects the reload and the last good policy keeps serving: watch /readyz.
--
-- Secrets: a ConfigMap is not secret. Passwords and JWT secrets can live in an optional
-- `secrets.lua` (a Kubernetes Secret projected into the same directory, see
-- docs/writing-policy.md) that returns a table of the same shape; it is merged over this one.
--
-- Lua patterns, not regular expressions: `%w` letter or digit, `%-` a literal '-', `^`/`$`
-- anchors. https://www.lua.org/manual/5.4/manual.html#6.4.1

local settings = {
  rooms = {
    name_max = 48,                       -- room name length, in characters
    -- allowed room names (a Lua pattern; false = anything chatgw itself accepts)
    name_pattern = "^[%w][%w_.%-]*$",
    -- names nobody may join (compared case-insensitively); they clash with HTTP routes
    reserved = { "admin", "api", "ws", "echo", "healthz", "readyz", "metrics", "static",
                 "assets", "system", "server", "root" },
    -- capacity per room: the first pattern that matches wins, otherwise capacity_default.
    -- A join is refused with room_full once the room holds `max` members.
    capacity = {
      -- mesh voice does not scale past a handful; sfu_max applies instead when the server
      -- mixes voice (janus_url set): each member then sends one stream and receives one
      { pattern = "^voice%-", max = 8, sfu_max = 200 },
      { pattern = "^lobby$",  max = 500 },
    },
    capacity_default = 200,
    -- members in voice through the server's mixer (janus_url), per room and per replica:
    -- a voice_join beyond is refused with voice_full. The mesh has no such count: its cap is
    -- the room capacity above.
    voice_sfu_max = 50,
    -- password rooms: exact room name -> { password = "...", jwt_secret = "..." }.
    -- A join needs ?password=P or ?token=P on the WebSocket URL, or ?token=<JWT> signed
    -- (HS256) with jwt_secret (or the global jwt_secret below) whose `room` claim is the
    -- room (a string, a list of rooms, or "*").
    protected = {
      -- staff = { password = "change-me" },
    },
    jwt_secret = false,                  -- default HS256 secret for room tokens; false = none
    -- rooms matching these patterns need a JWT (as above) even when not listed in protected
    jwt_rooms = {},                      -- e.g. { "^team%-" }
    -- rooms matching these patterns never show in the public directory
    private = { "^_", "^private%-", "^dm%-", "^probe%-" },
    -- synthetic probe rooms (`chatgw probe`): a msg there is echoed to the room and never
    -- kept in history; keep the pattern in `private` too. false = no probe rooms
    probe = "^probe%-",
    directory_max = 100,                 -- rooms listed by the "rooms" request
    directory_cache_seconds = 2,         -- a burst of "rooms" requests shares one answer
  },

  moderation = {
    -- flood control (gw.limit token buckets); rate in messages per second
    conn_rate = 5, conn_burst = 10,      -- per connection
    ip_rate = 20, ip_burst = 40,         -- per client IP (all its connections together)
    connect_rate = 2, connect_burst = 10, -- new WebSockets per IP; false = no limit
    max_text_chars = 2000,               -- longer msg/dm text is dropped with too_large
    max_char_run = 4,                    -- "sooooooo" -> "soooo"; false = keep runs
    repeat_limit = 3,                    -- the Nth identical msg/dm in a row is dropped (repeated)
    repeat_window = 300,                 -- seconds after which the same text counts as new
    -- word filter: whole words, case-insensitive (ASCII letters)
    words = {},                          -- e.g. { "spamword", "slur" }
    word_action = "mask",                -- "mask" (replace with word_mask) or "drop" (forbidden)
    word_mask = "***",
    -- strikes: each violation below adds one; at max_strikes the connection is kicked
    strike_codes = { rate_limited = true, too_large = true, forbidden = true, repeated = true },
    strike_on_mask = true,               -- a masked word counts as a violation too
    max_strikes = 5,
    strike_ttl = 600,                    -- seconds a strike is remembered
    -- escalation: kicks_to_ban kicks of one IP within kick_window seconds ban that IP
    kicks_to_ban = 3,
    kick_window = 3600,
    ban_seconds = 600,                   -- also the default length of moderation.ban()
  },

  routing = {
    -- slash commands in msg text ("//text" sends "/text" literally); false disables one
    commands = { nick = true, me = true, kick = true },
    kick_notice = true,                  -- tell the room when its owner kicks someone
    typing_rate = 1, typing_burst = 3,   -- typing events per second per connection (extra ones are ignored)
    state_ttl = 86400,                   -- seconds kept: room owners, memberships, nicknames
    -- announcements sent by on_tick: { room = "lobby", every = 3600, text = "..." }
    announcements = {},
  },
}

-- Merge the optional secrets.lua (same shape) over the table above.
local function merge(dst, src)
  for k, v in pairs(src) do
    if type(v) == "table" and type(dst[k]) == "table" and v[1] == nil then
      merge(dst[k], v)
    else
      dst[k] = v
    end
  end
end

local ok, secrets = pcall(require, "secrets")
if ok and type(secrets) == "table" then
  merge(settings, secrets)
end

return settings
