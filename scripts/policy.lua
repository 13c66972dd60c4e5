-- policy.lua: the entry point of chatgw's default policy. It returns the table of hooks that
-- chatgw calls and composes the modules in this (flat) directory:
--
--   settings.lua    every tunable, in one table: the file operators edit
--   rooms.lua       room names, capacities, password/JWT rooms, the public directory
--   moderation.lua  flood control, length/repetition limits, word filter, strikes, bans
--   routing.lua     slash commands (/nick /me /kick), dm and signal rules, room owners, typing
--
-- Hooks (docs/writing-policy.md has the full contract):
--   on_connect(conn)          bans and connection rate        -> false, "banned"|"rate_limited"
--   on_join(conn, room)       rooms.check_join, then owner, membership and member-count
--                             bookkeeping             -> false, "bad_field"|"forbidden"|"room_full"
--   on_message(conn, room, m) moderation.check, then the custom "rooms" request, then routing;
--                             returns a table (deliver it), true (deliver unchanged), false
--                             (handled here) or nil, code (drop with an error frame)
--   on_leave(conn, room)      owner hand-over, membership and member-count bookkeeping; when
--                             the connection has left its last room (chatgw calls on_leave for
--                             every room on disconnect) its per-connection keys are deleted
--   on_tick(now)              scheduled announcements
--   self_test()               checks settings.lua and each module's pure functions; an error
--                             rejects the reload and the last good policy keeps serving
--   message_types             not a hook: the types on_message handles ("dm", "msg", "rooms",
--                             "typing"), made from `custom`, routing.handlers and `passthrough`
--                             below. chatgw calls on_message for those only: signal, mute,
--                             unmute and history are delivered unchanged without entering Lua,
--                             and any other custom type gets bad_type from chatgw itself.
--
-- gw.store keys: per connection ("rooms:<id>", "nick:<id>", "strikes:<id>") are
-- deleted when it leaves its last room and carry a TTL in case it never joined one; per room
-- ("owner:<room>", "members:<room>") are deleted when the room empties, with a TTL too; per IP
-- or name ("kicks:<ip>", "ban:...") expire by TTL. Nothing is kept without a TTL.
--
-- Custom message types claimed here: "rooms" (the public directory) and "typing"; any other
-- custom type gets bad_type. Add your own in `custom` below (message_types follows).
-- Sandbox: only string, table, math, utf8, os.time/clock/date, pcall/error/assert and gw.*.

local settings = require "settings"
local rooms = require "rooms"
local moderation = require "moderation"
local routing = require "routing"

-- Nicknames must pass the same ban list and word filter as everything else.
routing.name_allowed = function(name)
  if moderation.banned("name", name) then return false end
  if moderation.cfg.has_words then
    local _, hits = moderation.filter_words(name)
    if hits > 0 then return false end
  end
  return true
end

local VOICE_LIMIT = { shared = false }

-- Custom types answered by the policy itself (before routing sees them).
local custom = {
  rooms = function(conn, room, msg) return rooms.on_rooms(conn) end,
  -- each voice join costs the media server a handle, a room check and a negotiation: a few per
  -- connection, then one every two seconds (the web client's re-join backoff stays under it)
  voice_join = function(conn, room, msg)
    if not gw.limit("voice_join:" .. conn.id, 0.5, 3, VOICE_LIMIT) then return nil, "rate_limited" end
    return rooms.check_voice(conn, room, msg)
  end,
}

-- Built-in types that the policy leaves alone (the hub rate-limits them itself). They are left
-- out of message_types, so chatgw never calls on_message for them; on_message still passes
-- them through unchanged, for a caller that hands it every type (a spec, or this table with
-- message_types taken out).
local passthrough = { signal = true, mute = true, unmute = true, history = true }
local NICK_OPTS = { skip_words = true }
local byte, find, type = string.byte, string.find, type

-- Probe rooms (settings.rooms.probe): the msg goes back to the room by gw.broadcast, which
-- keeps nothing, so a synthetic probe leaves no history behind.
local PROBE = settings.rooms and settings.rooms.probe
-- room -> whether it is a probe room, so that the pattern runs once per room, not per message
-- (a pattern find is a few per cent of a message's cost); starts over past PROBE_MEMO_MAX rooms.
local PROBE_MEMO_MAX = 4096
local probe_memo, probe_memo_n = {}, 0
local function is_probe(room)
  local hit = probe_memo[room]
  if hit == nil then
    if probe_memo_n >= PROBE_MEMO_MAX then probe_memo, probe_memo_n = {}, 0 end
    hit = find(room, PROBE) ~= nil
    probe_memo[room], probe_memo_n = hit, probe_memo_n + 1
  end
  return hit
end
local function probe_echo(conn, room, msg)
  gw.broadcast(room, { type = "msg", room = room, from = { id = conn.id, name = conn.name },
                       text = msg.text, ts = math.floor(gw.now() * 1000) })
  return false
end

local policy = {}

-- The message types on_message handles, sorted: the custom types above and the types routing
-- dispatches on, less the pass-through ones. Declared to chatgw as message_types.
local function handled_types()
  local list = {}
  for t in pairs(custom) do list[#list + 1] = t end
  for t in pairs(routing.handlers) do
    if not passthrough[t] and not custom[t] then list[#list + 1] = t end
  end
  table.sort(list)
  return list
end

policy.message_types = handled_types()

function policy.on_connect(conn)
  local ok, why = moderation.on_connect(conn)
  if not ok then return false, why end
  return true
end

function policy.on_join(conn, room)
  local ok, code = rooms.check_join(conn, room)
  if not ok then return false, code end
  routing.on_join(conn, room, rooms.count(room) or 0)   -- members besides conn
  rooms.joined(conn, room)
  return true
end

function policy.on_message(conn, room, msg)
  local t = msg.type
  if passthrough[t] then return true end   -- not in message_types: chatgw does not send them
  -- A /nick is vetted whole by routing.name_allowed (a masked nickname would be "***").
  local text = msg.text
  local first = t == "msg" and type(text) == "string" and byte(text, 1)   -- 47 is "/"
  local nick = first == 47 and find(text, "^/[Nn][Ii][Cc][Kk]%f[%s\0]")
  local code, changed = moderation.check(conn, room, msg, nick and NICK_OPTS or nil)
  if code then return nil, code end
  if PROBE and t == "msg" then
    local hit = probe_memo[room]                 -- is_probe's memo, read here without the call
    if hit == nil then hit = is_probe(room) end
    if hit then return probe_echo(conn, room, msg) end
  end
  local handler = custom[t]
  if handler then return handler(conn, room, msg) end
  -- plain: a msg whose text moderation left alone and that does not start with "/", so routing
  -- need not look at it again
  local res, err = routing.on_message(conn, room, msg, first and first ~= 47 and not changed)
  if res == true and changed then return msg end
  return res, err
end

function policy.on_leave(conn, room)
  local remaining = rooms.left(conn, room)
  if routing.on_leave(conn, room, remaining) then moderation.forget(conn) end
end

function policy.on_tick(now)
  routing.on_tick(now)
end

function policy.self_test()
  assert(type(settings) == "table", "settings.lua must return a table")
  for _, t in ipairs(policy.message_types) do
    assert(custom[t] or routing.handlers[t], "message_types: no handler for " .. tostring(t))
  end
  assert(not PROBE or pcall(find, "", PROBE), "settings.rooms.probe: not a Lua pattern")
  rooms.self_test()
  moderation.self_test()
  routing.self_test()
  return true
end

return policy
