-- rooms.lua: who may join which room, and the public room directory.
--
--   rooms.check_join(conn, room) -> true, or false + code     (called from on_join)
--     * the name: 1..name_max characters, matching name_pattern     -> else "bad_field"
--     * reserved names (admin, api, ...; case-insensitive)          -> "forbidden"
--     * protected rooms: password / token / JWT with a `room` claim -> else "forbidden"
--     * capacity: the first `capacity` pattern that matches the name gives the cap
--       (else capacity_default); a room already holding cap members -> "room_full"
--   rooms.check_voice(conn, room, msg) -> true, or nil + "voice_full": a voice_join through
--     the server's mixer (janus_url); chatgw sets msg.voice_members (members of the room in
--     voice through this replica, the joiner not counted) and the cap is voice_sfu_max.
--     Capacity entries may carry sfu_max: the room cap when the server mixes voice.
--   rooms.directory() -> { {name=, online=}, ... }: gw.rooms() without private rooms
--     (private patterns, protected rooms, jwt_rooms), busiest first, at most directory_max.
--   rooms.on_rooms(conn): the custom message {type="rooms"}; replies with
--     gw.send(conn.id, {type="rooms", rooms=rooms.directory()}).
--   rooms.joined(conn, room) / rooms.left(conn, room) -> members now: the member count of each
--     room, kept in gw.store "members:<room>" (see count_of below) so that a join does not list
--     the room. policy.lua calls them from on_join (once allowed) and on_leave.
--   Credentials come from conn.query, which chatgw passes to every hook (join frames too);
--   nothing about them is stored.
--
-- Tuned by settings.rooms: name_max, name_pattern, reserved, capacity, capacity_default,
-- protected, jwt_secret, jwt_rooms, private, directory_max, directory_cache_seconds.
-- Cost per join and leave: O(1) amortized (a store counter, re-checked against gw.members now
-- and then, see count_of); a join refused as room_full: O(members); directory: O(rooms log max).

local settings = require "settings"

local M = {}

M.DEFAULTS = {
  name_max = 48,
  name_pattern = "^[%w][%w_.%-]*$",
  reserved = { "admin", "api", "ws", "echo", "healthz", "readyz", "metrics", "static",
               "assets", "system", "server", "root" },
  capacity = {},
  capacity_default = 200,
  voice_sfu_max = 50,
  protected = {},
  jwt_secret = false,
  jwt_rooms = {},
  private = { "^_" },
  directory_max = 100,
  directory_cache_seconds = 2,
}

-- The member counter of a room lives as long as its room has joins or leaves; an idle room's
-- counter may expire (it is then recounted from gw.members).
local COUNT_TTL = 86400
-- A counter is re-checked against gw.members once the joins since the last recount reach
-- RECOUNT_MIN and half the count: the recounts of a filling room list about 32, 64, 128, ...
-- members, so a join costs O(1) amortized, and a counter that drifted (a hook that failed
-- half-way) heals.
local RECOUNT_MIN = 32

local cfg
local cache_list, cache_at      -- the last directory() answer and its gw.now() time

-- Indexes the private/jwt_rooms patterns by the literal first byte they anchor ("^_",
-- "^dm%-"), so that the directory tries only the patterns that can match a name.
-- Patterns without such a prefix go to index.any and are always tried.
local function index_patterns(lists)
  local index = { any = {}, by_byte = {} }
  for _, list in ipairs(lists) do
    for _, p in ipairs(list) do
      local ch, nxt = string.match(p, "^%^([^%^%$%(%)%%%.%[%]%*%+%-%?])(.?)")
      if not ch then ch, nxt = string.match(p, "^%^%%(%p)(.?)") end
      if ch and nxt ~= "*" and nxt ~= "-" and nxt ~= "?" then
        local b = string.byte(ch)
        index.by_byte[b] = index.by_byte[b] or {}
        table.insert(index.by_byte[b], p)
      else
        table.insert(index.any, p)
      end
    end
  end
  return index
end

local function matches_any(name, patterns)
  for i = 1, #patterns do
    if string.find(name, patterns[i]) then return true end
  end
  return false
end

-- (Re)builds the effective configuration: DEFAULTS, then settings.rooms, then overrides.
function M.configure(overrides)
  local c = {}
  for k, v in pairs(M.DEFAULTS) do c[k] = v end
  for k, v in pairs(settings.rooms or {}) do c[k] = v end
  for k, v in pairs(overrides or {}) do c[k] = v end
  c.reserved_set = {}
  for _, name in ipairs(c.reserved or {}) do c.reserved_set[string.lower(name)] = true end
  c.protected = c.protected or {}
  c.capacity = c.capacity or {}
  if c.sfu == nil then   -- the server mixes voice: rooms sized for the mesh may grow
    local conf = type(gw) == "table" and type(gw.config) == "table" and gw.config or {}
    c.sfu = type(conf.janus_url) == "string" and conf.janus_url ~= ""
  end
  c.jwt_rooms = c.jwt_rooms or {}
  c.private = c.private or {}
  c.hidden_index = index_patterns({ c.private, c.jwt_rooms })
  cfg = c
  M.cfg = c
  cache_list, cache_at = nil, nil
  return c
end

-- true, or false + "bad_field" | "forbidden". Pure.
function M.valid_name(room)
  if type(room) ~= "string" or room == "" then return false, "bad_field" end
  local n = utf8.len(room)
  if not n or n > cfg.name_max then return false, "bad_field" end
  if cfg.name_pattern and not string.find(room, cfg.name_pattern) then return false, "bad_field" end
  if cfg.reserved_set[string.lower(room)] then return false, "forbidden" end
  return true
end

-- The member cap of a room. Pure.
function M.capacity(room)
  local caps = cfg.capacity
  for i = 1, #caps do
    if string.find(room, caps[i].pattern) then return cfg.sfu and caps[i].sfu_max or caps[i].max end
  end
  return cfg.capacity_default
end

-- true when the room never shows in the directory. Pure.
function M.is_private(room)
  if cfg.protected[room] ~= nil then return true end
  local idx = cfg.hidden_index
  local list = idx.by_byte[string.byte(room, 1)]
  return (list ~= nil and matches_any(room, list)) or matches_any(room, idx.any)
end

-- The number of members of room other than except_id (the joiner may or may not be listed).
-- O(members): the host lists them all.
local function count_members(room, except_id)
  local members = gw.members(room)
  if not members then return 0 end
  local n = 0
  for i = 1, #members do
    if members[i].id ~= except_id then n = n + 1 end
  end
  return n
end

-- Member counters: gw.store "members:<room>" = "<count> <joins since the last recount>".
-- chatgw calls on_join before it adds the member and on_leave after it removed it, so the
-- counter is exact as long as every hook runs to the end; the recounts (a missing counter, a
-- room that looks full, enough joins since the last recount) repair it when one did not.
local function count_key(room) return "members:" .. room end

-- count, joins since the last recount; nil when there is no counter.
local function count_get(room)
  local v = gw.store.get(count_key(room))
  if type(v) ~= "string" then return nil end
  local n, since = string.match(v, "^(%d+) (%d+)$")
  if not n then return nil end
  return tonumber(n), tonumber(since)
end

local function count_set(room, n, since)
  if n <= 0 then
    gw.store.del(count_key(room))
  else
    gw.store.set(count_key(room), n .. " " .. since, COUNT_TTL)
  end
end

-- check_join's count for the on_join in progress (room, members besides the joiner, joins
-- since the last recount), handed to count() and joined(). check_join never creates a counter
-- (joined() does), so it stays exact when used alone: no counter, it asks gw.members each time.
local pending_room, pending_n, pending_since

-- The members of room other than except_id (the joiner), from the counter; recounted with
-- gw.members when there is none, when the room looks full, or when a recount is due. A recount
-- corrects an existing counter at once (a refused join included).
local function count_of(room, except_id, cap)
  local n, since = count_get(room)
  if n == nil or n >= cap or (since >= RECOUNT_MIN and 2 * since >= n) then
    local had = n ~= nil
    n, since = count_members(room, except_id), 0  -- cheap for a new room: gw.members is nil
    if had then count_set(room, n, 0) end
  end
  pending_room, pending_n, pending_since = room, n, since
  return n
end

-- The members of room besides the joiner during an on_join (after check_join), else the
-- counter as it stands (nil when there is none). No recount.
function M.count(room)
  if pending_room == room then return pending_n end
  return (count_get(room))
end

-- After an allowed join (check_join, then the other bookkeeping): one more member. Returns the
-- count.
function M.joined(conn, room)
  local n, since
  if pending_room == room then
    n, since = pending_n, pending_since
  else
    n, since = count_get(room)
    if n == nil then n, since = count_members(room, conn.id), 0 end
  end
  pending_room = nil
  n, since = n + 1, since + 1
  count_set(room, n, since)
  return n
end

-- After a leave (chatgw has removed the member): one fewer. Returns the members left. A count
-- that reaches 0 is confirmed with gw.members (O(1) when the room really is empty) and the
-- counter deleted.
function M.left(conn, room)
  pending_room = nil
  local n, since = count_get(room)
  if n ~= nil and n > 1 then
    count_set(room, n - 1, since)
    return n - 1
  end
  n = count_members(room, conn.id)
  count_set(room, n, 0)
  return n
end

-- A JWT `room` claim grants room when it is the room, "*", or a list holding it. Pure.
function M.claim_allows(claim, room)
  if claim == room or claim == "*" then return true end
  if type(claim) == "table" then
    for i = 1, #claim do
      if claim[i] == room or claim[i] == "*" then return true end
    end
  end
  return false
end

-- The URL's ?password= and ?token=. chatgw passes conn.query (the WebSocket URL's query) to
-- every hook, so a later join frame sees them too; nothing is kept in gw.store.
local function credentials(conn)
  local q = conn.query
  local pw, tok
  if type(q) == "table" then pw, tok = q.password, q.token end
  if type(pw) ~= "string" then pw = nil end
  if type(tok) ~= "string" then tok = nil end
  return pw, tok
end

local function jwt_allows(token, secret, room)
  if not token or not secret then return false end
  local claims = gw.jwt_verify(token, secret)
  if type(claims) ~= "table" then return false end
  local exp = tonumber(claims.exp)
  if exp and exp <= gw.now() then return false end
  local nbf = tonumber(claims.nbf)
  if nbf and nbf > gw.now() + 30 then return false end
  return M.claim_allows(claims.room, room)
end

-- true, or false + "forbidden": the password/token/JWT rules for room.
function M.check_access(conn, room)
  local prot = cfg.protected[room]
  local needs_jwt = matches_any(room, cfg.jwt_rooms)
  if not prot and not needs_jwt then return true end
  local pw, tok = credentials(conn)
  if prot and prot.password and prot.password ~= "" then
    if pw == prot.password or tok == prot.password then return true end
  end
  local secret = (prot and prot.jwt_secret) or cfg.jwt_secret
  if jwt_allows(tok, secret, room) then return true end
  return false, "forbidden"
end

-- The on_join rules. true, or false + code.
function M.check_join(conn, room)
  local ok, code = M.valid_name(room)
  if not ok then return false, code end
  ok, code = M.check_access(conn, room)
  if not ok then return false, code end
  local cap = M.capacity(room)
  if count_of(room, conn.id, cap) >= cap then
    pending_room = nil
    return false, "room_full"
  end
  return true
end

-- The voice_join rule (through the server's mixer). true, or nil + "voice_full". Pure.
function M.check_voice(conn, room, msg)
  local n = type(msg) == "table" and tonumber(msg.voice_members) or 0
  if n >= cfg.voice_sfu_max then return nil, "voice_full" end
  return true
end

-- Directory order: busiest first, then by name.
local function better(a, b)
  if a.online ~= b.online then return a.online > b.online end
  return a.name < b.name
end

-- A min-heap of at most max entries whose root is the worst kept room: O(rooms log max).
local function heap_push(h, n, e)
  n = n + 1
  h[n] = e
  local i = n
  while i > 1 do
    local p = i // 2
    if better(h[p], h[i]) then h[p], h[i] = h[i], h[p]; i = p else break end
  end
  return n
end

local function heap_replace_root(h, n, e)
  h[1] = e
  local i = 1
  while true do
    local l, r, w = 2 * i, 2 * i + 1, i
    if l <= n and better(h[w], h[l]) then w = l end
    if r <= n and better(h[w], h[r]) then w = r end
    if w == i then return end
    h[w], h[i] = h[i], h[w]
    i = w
  end
end


-- The public directory: { {name=, online=}, ... }, busiest first, then by name, at most
-- directory_max entries (rooms tied at the cut-off: those gw.rooms() lists first). Cached for directory_cache_seconds (a burst of requests costs one).
function M.directory()
  local now = gw.now()
  if cache_list and cache_at and now - cache_at < (cfg.directory_cache_seconds or 0) then
    return cache_list
  end
  local all = gw.rooms() or {}
  local max = cfg.directory_max or math.huge
  local find, byte, prot = string.find, string.byte, cfg.protected
  local by_byte, any = cfg.hidden_index.by_byte, cfg.hidden_index.any
  local heap, n = {}, 0
  for i = 1, #all do                     -- the hot loop: M.is_private inlined
    local r = all[i]
    local name = r.name
    if name ~= nil and prot[name] == nil then
      local hidden = false
      local list = by_byte[byte(name, 1)]
      if list then
        for j = 1, #list do
          if find(name, list[j]) then hidden = true; break end
        end
      end
      if not hidden then
        for j = 1, #any do
          if find(name, any[j]) then hidden = true; break end
        end
      end
      if not hidden then
        local online = r.online or 0
        if n < max then
          n = heap_push(heap, n, { name = name, online = online })
        elseif max > 0 then
          local worst = heap[1]
          if online > worst.online then  -- ties at the cut keep the earlier room (cheap)
            heap_replace_root(heap, n, { name = name, online = online })
          end
        end
      end
    end
  end
  table.sort(heap, better)
  if gw.array then gw.array(heap) end    -- an empty directory still encodes as [] (not {})
  cache_list, cache_at = heap, now
  return heap
end

-- The custom message {type="rooms"}: answered directly, never broadcast.
function M.on_rooms(conn)
  gw.send(conn.id, { type = "rooms", rooms = M.directory() })
  return false
end

local function check_patterns(what, patterns)
  assert(type(patterns) == "table", "settings.rooms." .. what .. " must be a list")
  for i = 1, #patterns do
    local p = patterns[i]
    assert(type(p) == "string", "settings.rooms." .. what .. "[" .. i .. "] must be a string")
    local ok, err = pcall(string.find, "", p)
    assert(ok, "settings.rooms." .. what .. "[" .. i .. "]: bad pattern: " .. tostring(err))
  end
end

-- Checks the settings and the pure functions; errors reject the policy.
function M.self_test()
  local c = cfg
  assert(type(c.name_max) == "number" and c.name_max >= 1, "settings.rooms.name_max must be a number >= 1")
  if c.name_pattern then check_patterns("name_pattern", { c.name_pattern }) end
  assert(type(c.capacity_default) == "number", "settings.rooms.capacity_default must be a number")
  assert(type(c.voice_sfu_max) == "number" and c.voice_sfu_max >= 0, "settings.rooms.voice_sfu_max must be a number >= 0")
  for i, e in ipairs(c.capacity) do
    assert(type(e) == "table" and type(e.max) == "number",
           "settings.rooms.capacity[" .. i .. "] must be { pattern = \"...\", max = N }")
    check_patterns("capacity[" .. i .. "].pattern", { e.pattern })
  end
  check_patterns("private", c.private)
  check_patterns("jwt_rooms", c.jwt_rooms)
  for name, p in pairs(c.protected) do
    assert(type(name) == "string" and type(p) == "table",
           "settings.rooms.protected must map room names to { password = ..., jwt_secret = ... }")
  end
  assert(M.valid_name("") == false, "empty room name accepted")
  assert(M.valid_name(string.rep("a", c.name_max + 1)) == false, "over-long room name accepted")
  if c.reserved[1] then
    local ok, code = M.valid_name(string.upper(c.reserved[1]))
    assert(not ok and code == "forbidden", "reserved room name accepted")
  end
  assert(type(M.capacity("x")) == "number", "capacity() must give a number")
  assert(M.claim_allows({ "a", "b" }, "b") and not M.claim_allows("a", "b"), "claim_allows")
  return true
end

M.configure()

return M
