-- routing.lua: what happens to msg, dm, signal and custom messages once moderation passed them.
--
--   msg     delivered; text starting with '/' is a slash command ("//text" sends "/text"):
--             /nick NewName  1..32 characters, no control characters, allowed by
--                            routing.name_allowed; broadcasts {type="nick", room, id, name} to
--                            the room (the sender included) and keeps the nickname for /me.
--                            The hub still owns conn.name: clients show the nickname.
--             /me action     delivered as msg {text="* name action", action=true}
--             /kick who      room owner only (else "forbidden"): kicks the member with that id
--                            or name (case-insensitive) via gw.kick(id, "kicked",
--                            "kicked by room owner"); "not_found" when no such member
--             /other         "bad_command"
--   dm      allowed only when sender and recipient share a room (checked with gw.members over
--           the sender's rooms, at most max_rooms_per_conn of them), else "forbidden"
--   signal, mute, unmute, history: passed through unchanged (policy.lua leaves them out of its
--           message_types, so chatgw delivers them without calling on_message at all)
--   typing  custom type {type="typing", room}: delivered as {type="typing", room} to the other
--           members (the hub adds `from`); over typing_rate it is silently dropped
--   other custom types: "bad_type" (policy.lua claims the ones it knows first)
--
-- Room owners: the first member to join a room owns it (gw.store "owner:<room>"); when the
-- owner leaves, the longest-present remaining member (the first in gw.members) takes over; when
-- the room empties, the record goes.
-- The rooms of each connection are kept in gw.store "rooms:<id>" for the dm rule. When a
-- connection leaves its last room (chatgw calls on_leave for each room on disconnect too),
-- on_leave deletes its per-connection keys ("rooms:<id>", "nick:<id>") and returns true so that
-- policy.lua can drop the other modules' ones. Every such key also has a TTL (state_ttl).
-- on_tick sends settings.routing.announcements as {type="notice", room, text}.
--
-- Tuned by settings.routing: commands, kick_notice, typing_rate, typing_burst, state_ttl,
-- announcements. Cost per message: O(1); /kick and dm O(members); join and leave O(1) given
-- the room's member count (policy.lua passes it), else O(members).

local settings = require "settings"

local M = {}

M.DEFAULTS = {
  commands = { nick = true, me = true, kick = true },
  kick_notice = true,
  typing_rate = 1, typing_burst = 3,
  state_ttl = 86400,
  announcements = {},
}

local cfg
local next_announcement = {}     -- index -> gw.now() time of the next send (lost on reload: fine)
local PER_CONN = { shared = false }   -- gw.limit: a connection lives on one replica

function M.configure(overrides)
  local c = {}
  for k, v in pairs(M.DEFAULTS) do c[k] = v end
  for k, v in pairs(settings.routing or {}) do c[k] = v end
  for k, v in pairs(overrides or {}) do c[k] = v end
  c.commands = c.commands or {}
  c.announcements = c.announcements or {}
  cfg = c
  M.cfg = c
  next_announcement = {}
  return c
end

-- Set by policy.lua to veto nicknames (bans, word filter). Returns true or false.
M.name_allowed = function(name) return true end

-- Pure helpers ------------------------------------------------------------------------------

-- true when s is a valid display name: 1..32 characters of UTF-8, no C0/C1 controls or DEL,
-- not only spaces.
function M.valid_name(s)
  if type(s) ~= "string" or s == "" then return false end
  local n = utf8.len(s)
  if not n or n > 32 then return false end
  if string.find(s, "[%c\127]") or string.find(s, "\194[\128-\159]") then return false end
  if not string.find(s, "%S") then return false end
  return true
end

-- "/cmd args" -> "cmd", "args" (trimmed); nil when text is not a command. O(#text): two
-- anchored matches, each with one greedy item whose backtracking tries one O(1) item per step
-- ("^/(%S*)%s*" never backtracks: whatever %s* takes, the pattern ends there; "^.*%S" backs
-- off over the trailing whitespace only). The single match "^/(%S*)%s*(.-)%s*$" it replaces
-- was quadratic: at every step of (.-) inside a run of whitespace, %s*$ took the rest of the
-- run and failed ("/x a" .. (" \t"):rep(990) .. "b" cost milliseconds, in C, out of
-- policy_budget's sight). Same results on every input.
function M.parse_command(text)
  if string.sub(text, 1, 1) ~= "/" or string.sub(text, 2, 2) == "/" then return nil end
  local _, e, cmd = string.find(text, "^/(%S*)%s*")
  return string.lower(cmd), string.match(text, "^.*%S", e + 1) or ""
end

-- Room state in gw.store ----------------------------------------------------------------------

local function rooms_key(id) return "rooms:" .. id end
local function owner_key(room) return "owner:" .. room end
local function nick_key(id) return "nick:" .. id end

-- The rooms recorded for a connection, as a list.
function M.rooms_of(id)
  local list, n = {}, 0
  local s = gw.store.get(rooms_key(id))
  if type(s) == "string" then
    for r in string.gmatch(s, "[^\n]+") do
      n = n + 1
      list[n] = r
    end
  end
  return list
end

local find, byte = string.find, string.byte
local type, gw_now = type, gw.now     -- read once, not as globals on every message

-- true when the "\n"-framed list s holds room. Plain finds, no new string.
local function listed(s, room)
  local init = 1
  while true do
    local i, j = find(s, room, init, true)
    if not i then return false end
    if byte(s, i - 1) == 10 and byte(s, j + 1) == 10 then return true end
    init = i + 1
  end
end

local function track(id, room)
  local s = gw.store.get(rooms_key(id))
  if type(s) ~= "string" then s = "\n" end
  if not listed(s, room) then
    gw.store.set(rooms_key(id), s .. room .. "\n", cfg.state_ttl)
  end
end

-- A msg re-records its room (track), as self-healing for a record that expired or was evicted,
-- at most once a HEAL_SECONDS per connection and room: a store round trip on every msg was a
-- tenth of the default policy's cost. healed[id][room] = gw.now() of the last check; the VM
-- forgets a connection with its record (untrack), and a reload starts over.
local HEAL_SECONDS = 60
local healed = {}

local function heal(id, room)
  local by_room = healed[id]
  if not by_room then
    by_room = {}
    healed[id] = by_room
  end
  local now = gw.now()
  local last = by_room[room]
  if last and now - last < HEAL_SECONDS then return end
  by_room[room] = now
  track(id, room)
end

-- true when the connection id has room in its recorded rooms.
function M.in_room(id, room)
  local s = gw.store.get(rooms_key(id))
  return type(s) == "string" and listed(s, room)
end

local function untrack(id, room)
  local s = gw.store.get(rooms_key(id))
  if type(s) ~= "string" then
    healed[id] = nil                     -- no record: the caller takes it as the last room
    return ""
  end
  local i, j = string.find(s, "\n" .. room .. "\n", 1, true)
  if i then s = string.sub(s, 1, i) .. string.sub(s, j + 1) end
  if healed[id] then healed[id][room] = nil end
  if s == "\n" then
    healed[id] = nil
    gw.store.del(rooms_key(id))
  else
    gw.store.set(rooms_key(id), s, cfg.state_ttl)
  end
  return s
end

function M.owner(room)
  return gw.store.get(owner_key(room))
end

local function find_member(members, id)
  for i = 1, #members do
    if members[i].id == id then return members[i] end
  end
  return nil
end

-- The first member of room other than except_id, or nil.
local function first_other(members, except_id)
  for i = 1, #members do
    if members[i].id ~= except_id then return members[i] end
  end
  return nil
end

-- Hooks -------------------------------------------------------------------------------------

-- The owner rule with the full member list: the first member owns an empty room; a missing or
-- stale owner (not a member any more) is replaced by the oldest member. O(members).
local function elect(conn, room, members)
  local other = first_other(members, conn.id)
  local owner = M.owner(room)
  if not other then
    gw.store.set(owner_key(room), conn.id, cfg.state_ttl)           -- first in: owner
  elseif owner == nil or (owner ~= conn.id and not find_member(members, owner)) then
    gw.store.set(owner_key(room), other.id, cfg.state_ttl)          -- stale owner: oldest member
  end
end

-- Called once rooms.check_join allowed the join. others: the number of members of room besides
-- conn when the caller knows it (policy.lua passes rooms' counter); nil asks gw.members.
-- With others, a join costs O(1) unless the owner record needs repair: an empty-looking room is
-- confirmed with gw.members (nil, so O(1), for a room that does not exist yet), and an owner
-- that is not in the room by its own "rooms:<id>" record is checked against the member list.
function M.on_join(conn, room, others)
  if conn.id == nil then return end
  track(conn.id, room)
  if others ~= nil and others > 0 then
    local owner = M.owner(room)
    if owner ~= nil and (owner == conn.id or M.in_room(owner, room)) then return end
  end
  elect(conn, room, gw.members(room) or {})
end

-- Returns true when conn has left its last room (its per-connection keys are gone then).
-- remaining: the members room still has when the caller knows it (policy.lua passes rooms'
-- counter); 0 drops the owner record whoever it names.
function M.on_leave(conn, room, remaining)
  if conn.id == nil then return false end
  local left = untrack(conn.id, room)
  local last = left == "" or left == "\n"
  if last then gw.store.del(nick_key(conn.id)) end
  if remaining == 0 then
    gw.store.del(owner_key(room))
  elseif M.owner(room) == conn.id then
    local next_owner = first_other(gw.members(room) or {}, conn.id)
    if next_owner then
      gw.store.set(owner_key(room), next_owner.id, cfg.state_ttl)
    else
      gw.store.del(owner_key(room))
    end
  end
  return last
end

function M.display_name(conn)
  local nick = conn.id and gw.store.get(nick_key(conn.id))
  if type(nick) == "string" then return nick end
  return conn.name or "?"
end

-- true when a and b are members of one room (over a's recorded rooms).
function M.share_room(a, b)
  local rooms = M.rooms_of(a)
  for i = 1, #rooms do
    local members = gw.members(rooms[i])
    if members then
      local has_a, has_b = false, false
      for j = 1, #members do
        local id = members[j].id
        if id == a then has_a = true elseif id == b then has_b = true end
        if has_a and has_b then return true end
      end
    end
  end
  return false
end

local commands = {}

function commands.nick(conn, room, msg, arg)
  if not M.valid_name(arg) then return nil, "bad_field" end
  if not M.name_allowed(arg) then return nil, "forbidden" end
  gw.store.set(nick_key(conn.id), arg, cfg.state_ttl)
  gw.broadcast(room, { type = "nick", room = room, id = conn.id, name = arg })
  return false
end

function commands.me(conn, room, msg, arg)
  if arg == "" then return nil, "bad_command" end
  msg.text = "* " .. M.display_name(conn) .. " " .. arg
  msg.action = true
  return msg
end

function commands.kick(conn, room, msg, arg)
  if arg == "" then return nil, "bad_field" end
  if M.owner(room) ~= conn.id then return nil, "forbidden" end
  local members = gw.members(room) or {}
  local target = find_member(members, arg)
  if not target then
    local want = string.lower(arg)
    for i = 1, #members do
      if type(members[i].name) == "string" and string.lower(members[i].name) == want then
        target = members[i]
        break
      end
    end
  end
  if not target then return nil, "not_found" end
  if target.id == conn.id then return nil, "bad_field" end
  gw.kick(target.id, "kicked", "kicked by room owner")
  gw.log("info", "policy: owner kick", { room = room, by = conn.id, target = target.id })
  if cfg.kick_notice then
    gw.broadcast(room, { type = "notice", room = room,
                         text = tostring(target.name) .. " was kicked by " .. M.display_name(conn) },
                 { except = target.id })
  end
  return false
end

local function on_msg(conn, room, msg, plain)
  if plain then return true end                        -- the caller saw a text not starting with "/"
  local text = msg.text
  if type(text) ~= "string" or byte(text, 1) ~= 47 then return true end   -- not "/..."
  if byte(text, 2) == 47 then                                              -- "//text"
    msg.text = string.sub(text, 2)
    return msg
  end
  local cmd, arg = M.parse_command(text)
  local fn = cfg.commands[cmd] and commands[cmd]
  if not fn then return nil, "bad_command" end
  if type(room) ~= "string" then room = msg.room end
  return fn(conn, room, msg, arg)
end

local function on_dm(conn, room, msg)
  local to = msg.to
  if type(to) ~= "string" or to == "" or to == conn.id then return nil, "bad_field" end
  if not M.share_room(conn.id, to) then return nil, "forbidden" end
  return true
end

local function on_typing(conn, room, msg)
  local r = msg.room
  if type(r) ~= "string" or r == "" or (type(room) == "string" and room ~= r) then
    return nil, "bad_field"
  end
  if cfg.typing_rate and not gw.limit("typing:" .. conn.id, cfg.typing_rate, cfg.typing_burst, PER_CONN) then
    return false                         -- too chatty: swallow silently
  end
  return { type = "typing", room = r }
end

local function pass() return true end

M.handlers = {
  msg = on_msg, dm = on_dm, typing = on_typing,
  signal = pass, mute = pass, unmute = pass, history = pass,
}

-- The on_message part of routing; same return conventions as the hook. plain (optional) is
-- true when the caller knows msg is a "msg" whose text is a string not starting with "/".
function M.on_message(conn, room, msg, plain)
  local t = msg.type
  local h = M.handlers[t]
  if not h then return nil, "bad_type" end
  if t == "msg" then
    local id = conn.id
    if id and type(room) == "string" then                        -- the hub only lets members send msg
      local by_room = healed[id]                                 -- heal's check, without the call
      local last = by_room and by_room[room]
      if not last or gw_now() - last >= HEAL_SECONDS then heal(id, room) end
    end
    if plain and h == on_msg then return true end       -- on_msg's answer, without the call
  end
  return h(conn, room, msg, plain)
end

function M.on_tick(now)
  local list = cfg.announcements
  for i = 1, #list do
    local a = list[i]
    local due = next_announcement[i]
    if not due then
      next_announcement[i] = now + a.every
    elseif now >= due then
      next_announcement[i] = now + a.every
      gw.broadcast(a.room, { type = "notice", room = a.room, text = a.text })
    end
  end
end

function M.self_test()
  local c = cfg
  assert(type(c.commands) == "table", "settings.routing.commands must be a table")
  assert(type(c.state_ttl) == "number" and c.state_ttl > 0, "settings.routing.state_ttl must be a positive number")
  assert(c.typing_rate == false or type(c.typing_rate) == "number", "settings.routing.typing_rate must be a number or false")
  for i, a in ipairs(c.announcements) do
    assert(type(a) == "table" and type(a.room) == "string" and type(a.text) == "string"
           and type(a.every) == "number" and a.every >= 1,
           "settings.routing.announcements[" .. i .. "] must be { room = \"...\", every = seconds, text = \"...\" }")
  end
  assert(M.valid_name("Alice") and M.valid_name("Zoë 2"), "valid_name rejects good names")
  assert(not M.valid_name("") and not M.valid_name("   ") and not M.valid_name("a\tb")
         and not M.valid_name(string.rep("x", 33)) and not M.valid_name("a\194\133"), "valid_name accepts bad names")
  local cmd, arg = M.parse_command("/NICK  Bob  ")
  assert(cmd == "nick" and arg == "Bob", "parse_command")
  assert(M.parse_command("hello") == nil and M.parse_command("//x") == nil, "parse_command non-commands")
  return true
end

M.configure()

return M
