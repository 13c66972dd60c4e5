-- mock_gw.lua: an in-memory stand-in for chatgw's host API (`gw`) for busted specs.
--
-- Usage in a spec (paths work from any working directory):
--   local mock = dofile((debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./") .. "mock_gw.lua")
--   local gw = mock.install()          -- fresh state, sets _G.gw and package.path
--   local rooms = mock.load("rooms")   -- re-requires scripts/rooms.lua (and settings.lua)
--
-- State: members per room (join order), a store with TTLs, token buckets, a clock that only
-- moves with mock.advance(seconds). Every send/broadcast/kick/log is recorded in
-- mock.sent / mock.broadcasts / mock.kicks / mock.logs. mock.on_message(policy, conn, room,
-- msg) hands a client message to the policy the way chatgw does (it honours message_types).

local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./"
local scripts = here .. "../../scripts/"

local mock = { here = here, scripts = scripts }

local SCRIPT_MODULES = { "settings", "secrets", "rooms", "moderation", "routing", "policy" }

local function set_path()
  local p = scripts .. "?.lua;" .. here .. "?.lua;"
  if package.path:sub(1, #p) ~= p then package.path = p .. package.path end
end

-- Resets every piece of state and installs a fresh gw as _G.gw. Returns it.
function mock.install()
  set_path()
  mock.clock = 1000000.0
  mock.rooms = {}         -- name -> { {id,name,muted}, ... } in join order
  mock.conns = {}         -- id -> true
  mock.store = {}         -- key -> { value, expires|nil }
  mock.buckets = {}       -- key -> { tokens, at }
  mock.jwts = {}          -- token -> { secret, claims }
  mock.sent, mock.broadcasts, mock.kicks, mock.logs = {}, {}, {}, {}
  mock.dispatched = 0

  local gw = { version = "mock", store = {} }
  gw.config = setmetatable({}, {
    __index = { max_text_bytes = 4096, max_room_members = 1000, max_rooms_per_conn = 16 },
    __newindex = function() error("gw.config is read-only", 2) end,
  })

  function gw.now() return mock.clock end

  -- gw.fold(text): lower case, whitespace runs squeezed to one space, trimmed (chatgw does it in
  -- C; tests/unit/policy.c checks the two agree).
  -- gw.byte_runs(text, max): every run of more than max equal bytes cut to max (C in chatgw;
  -- tests/unit/policy.c checks it against the pattern search it replaces).
  function gw.byte_runs(text, max)
    assert(math.type(max) == "integer" or (type(max) == "number" and max == math.floor(max)), "gw.byte_runs: max")
    assert(max >= 1, "gw.byte_runs: max must be at least 1")
    local out, n, prev, run = {}, 0, nil, 0
    for i = 1, #text do
      local c = string.byte(text, i)
      if c == prev then run = run + 1 else prev, run = c, 1 end
      if run <= max then n = n + 1; out[n] = string.char(c) end
    end
    return table.concat(out)
  end

  function gw.fold(text)
    assert(type(text) == "string" or type(text) == "number", "gw.fold: text must be a string")
    local s = string.gsub(string.lower(text), "%s+", " ")
    return (string.match(s, "^ ?(.-) ?$"))
  end

  -- gw.array([t]): marks t so that chatgw encodes it as a JSON array even when empty.
  mock.ARRAY_MT = mock.ARRAY_MT or { __name = "chatgw.array" }
  function gw.array(t)
    t = t or {}
    assert(type(t) == "table", "gw.array: t must be a table")
    return setmetatable(t, mock.ARRAY_MT)
  end
  gw.null = setmetatable({}, { __name = "gw.null" })

  function gw.send(conn_id, tbl)
    assert(type(conn_id) == "string", "gw.send: conn_id must be a string")
    assert(type(tbl) == "table", "gw.send: message must be a table")
    mock.sent[#mock.sent + 1] = { to = conn_id, msg = tbl }
    return mock.conns[conn_id] == true
  end

  function gw.broadcast(room, tbl, opts)
    assert(type(room) == "string", "gw.broadcast: room must be a string")
    assert(type(tbl) == "table", "gw.broadcast: message must be a table")
    assert(opts == nil or type(opts) == "table", "gw.broadcast: opts must be a table")
    mock.broadcasts[#mock.broadcasts + 1] = { room = room, msg = tbl, except = opts and opts.except }
    return mock.rooms[room] ~= nil
  end

  function gw.kick(conn_id, code, reason)
    assert(type(conn_id) == "string" and type(code) == "string", "gw.kick: bad arguments")
    mock.kicks[#mock.kicks + 1] = { id = conn_id, code = code, reason = reason }
    if not mock.conns[conn_id] then return false end
    for room in pairs(mock.rooms) do mock.leave(room, conn_id) end
    mock.conns[conn_id] = nil
    return true
  end

  function gw.members(room)
    local list = mock.rooms[room]
    if not list then return nil end
    local out = {}
    for i, m in ipairs(list) do out[i] = { id = m.id, name = m.name, muted = m.muted } end
    return out
  end

  function gw.rooms()
    local out = {}
    for name, list in pairs(mock.rooms) do out[#out + 1] = { name = name, online = #list } end
    return out
  end

  function gw.log(level, msg, fields)
    assert(type(level) == "string" and type(msg) == "string", "gw.log: bad arguments")
    mock.logs[#mock.logs + 1] = { level = level, msg = msg, fields = fields }
  end

  -- Token bucket: rate tokens per second, at most burst; true when a token was taken.
  function gw.limit(key, rate, burst)
    assert(type(key) == "string" and type(rate) == "number" and type(burst) == "number", "gw.limit: bad arguments")
    local b = mock.buckets[key]
    if not b then
      b = { tokens = burst, at = mock.clock }
      mock.buckets[key] = b
    end
    b.tokens = math.min(burst, b.tokens + (mock.clock - b.at) * rate)
    b.at = mock.clock
    if b.tokens >= 1 then
      b.tokens = b.tokens - 1
      return true
    end
    return false
  end

  local function live(key)
    local e = mock.store[key]
    if e and e.expires and e.expires <= mock.clock then
      mock.store[key] = nil
      return nil
    end
    return e
  end

  local function check_value(v)
    local t = type(v)
    assert(t == "string" or t == "number" or t == "boolean", "gw.store: values must be strings, numbers or booleans")
  end

  function gw.store.get(key)
    assert(type(key) == "string", "gw.store.get: key must be a string")
    local e = live(key)
    return e and e.value
  end

  function gw.store.set(key, value, ttl)
    assert(type(key) == "string", "gw.store.set: key must be a string")
    assert(ttl == nil or (type(ttl) == "number" and ttl >= 0), "gw.store.set: ttl must be >= 0")
    if value == nil then mock.store[key] = nil; return end   -- as chatgw: set(key, nil) deletes
    check_value(value)
    mock.store[key] = { value = value, expires = (ttl and ttl > 0) and (mock.clock + ttl) or nil }
  end

  function gw.store.del(key)
    assert(type(key) == "string", "gw.store.del: key must be a string")
    mock.store[key] = nil
    return true
  end

  -- incr: the new value; ttl applies when the key is created (a fixed window).
  function gw.store.incr(key, n, ttl)
    assert(type(key) == "string", "gw.store.incr: key must be a string")
    local e = live(key)
    if not e then
      e = { value = 0, expires = (ttl and ttl > 0) and (mock.clock + ttl) or nil }
      mock.store[key] = e
    end
    e.value = (tonumber(e.value) or 0) + (n or 1)
    return e.value
  end

  function gw.jwt_verify(token, secret)
    local j = mock.jwts[token]
    if not j then return nil, "malformed" end
    if j.secret ~= secret then return nil, "bad signature" end
    local out = {}
    for k, v in pairs(j.claims) do out[k] = v end
    return out
  end

  mock.gw = gw
  _G.gw = gw
  return gw
end

-- (Re)loads a script module and its dependencies from scripts/ with the current settings.
-- settings: optional table merged over scripts/settings.lua (per section, shallow).
function mock.load(name, settings)
  set_path()
  for _, m in ipairs(SCRIPT_MODULES) do package.loaded[m] = nil end
  if settings then
    local base = require "settings"
    for section, values in pairs(settings) do
      base[section] = base[section] or {}
      for k, v in pairs(values) do base[section][k] = v end
    end
  end
  return require(name)
end

function mock.advance(seconds) mock.clock = mock.clock + seconds end

-- A conn table as the hooks see it.
function mock.conn(id, opts)
  opts = opts or {}
  mock.conns[id] = true
  return { id = id, ip = opts.ip or "10.0.0.1", name = opts.name or id,
           query = opts.query or {}, headers = opts.headers or {} }
end

-- Adds conn (or an id + name) to a room, as the hub does after an allowed join.
function mock.join(room, id, name)
  mock.conns[id] = true
  mock.rooms[room] = mock.rooms[room] or {}
  table.insert(mock.rooms[room], { id = id, name = name or id, muted = false })
end

function mock.leave(room, id)
  local list = mock.rooms[room]
  if not list then return end
  for i = #list, 1, -1 do
    if list[i].id == id then table.remove(list, i) end
  end
  if #list == 0 then mock.rooms[room] = nil end
end

-- Fills a room with n anonymous members.
function mock.fill(room, n, prefix)
  for i = 1, n do mock.join(room, (prefix or room .. "-m") .. i) end
end

-- The built-in message types that reach on_message (join and leave never do).
mock.BUILTIN_TYPES = { msg = true, dm = true, signal = true, mute = true, unmute = true, history = true }

-- What chatgw does with a client message: it calls policy.on_message only when the policy has
-- one and, when the policy declares message_types (an array of type strings), only for the
-- types listed there. Any other message gets the default: a built-in type is delivered
-- unchanged (true, as with no on_message), a custom type is refused with bad_type.
-- mock.dispatched counts the on_message calls made.
mock.dispatched = 0
function mock.on_message(policy, conn, room, msg)
  local wanted = policy.message_types
  local listed = wanted == nil
  if wanted ~= nil then
    assert(type(wanted) == "table", "message_types must be an array of strings")
    for i = 1, #wanted do
      assert(type(wanted[i]) == "string", "message_types must be an array of strings")
      if wanted[i] == msg.type then listed = true end
    end
  end
  if policy.on_message and listed then
    mock.dispatched = mock.dispatched + 1
    return policy.on_message(conn, room, msg)
  end
  if mock.BUILTIN_TYPES[msg.type] then return true end
  return nil, "bad_type"
end

function mock.add_jwt(token, secret, claims) mock.jwts[token] = { secret = secret, claims = claims } end

-- The last recorded entry of a list (sent, broadcasts, kicks, logs).
function mock.last(list) return list[#list] end

return mock
