-- Policy for the policy_fuzz target (tests/fuzz/policy_fuzz.c). on_message dispatches on the
-- fuzzed message's type to an op that drives one part of the C side of the sandbox: the
-- JSON <-> Lua conversion both ways (arrays, holes, gw.null, deep and cyclic tables, NaN, keys
-- that are not strings, strings that are not UTF-8), every verdict shape, the gw.* host API with
-- values taken from the message, the store and token buckets, errors, and the budget and
-- memory cap. Built-in types go through a small moderation pass like the default policy's.
local ops = {}

local function copy(v, depth)
  if type(v) ~= "table" or depth > 40 then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = copy(x, depth + 1) end
  return t
end

local function count(v, depth)
  if type(v) ~= "table" or depth > 80 then return 1 end
  local n = 1
  for k, x in pairs(v) do n = n + count(x, depth + 1) end
  return n
end

local function str(v)
  if type(v) == "string" then return v end
  if type(v) == "number" or type(v) == "boolean" then return tostring(v) end
  return ""
end

function ops.echo(conn, room, msg) return msg end
function ops.pass() return true end
function ops.nothing() end
function ops.handled(conn, room, msg)
  gw.send(conn.id, { type = "private", n = count(msg, 1), room = room })
  return false
end
function ops.drop(conn, room, msg) return nil, str(msg.code) end
function ops.refuse(conn, room, msg) return false, str(msg.code) end
function ops.copy(conn, room, msg) return copy(msg, 1) end
function ops.err(conn, room, msg) error(msg.text or msg) end
function ops.errtable(conn, room, msg) error(msg) end
function ops.number(conn, room, msg) return tonumber(msg.n) or 42 end
function ops.string(conn, room, msg) return str(msg.text) end
function ops.loop() while true do end end
function ops.membomb()
  local t, i = {}, 0
  while true do
    i = i + 1
    t[i] = string.rep("x", 4096) .. i
  end
end

-- Lua values the converter must refuse or map.
function ops.weird(conn, room, msg)
  local k = math.tointeger(msg.n) or 0
  local shapes = {
    function() return { [1] = 1, [3] = 3 } end,                       -- a hole
    function() return { 1, 2, x = 3 } end,                            -- mixed keys
    function() return { [1.5] = 1 } end,                              -- a float key
    function() return { [true] = 1 } end,                             -- a boolean key
    function() return { v = 0 / 0 } end,                              -- NaN
    function() return { v = math.huge } end,                          -- infinity
    function() return { v = string.char(255, 254) } end,              -- not UTF-8
    function() return { [string.char(200)] = 1 } end,                 -- key not UTF-8
    function() local t = {} t.self = t return t end,                  -- a cycle
    function() return { f = print } end,                              -- a function
    function() return { gw.null, gw.null } end,                       -- nulls in an array
    function() return setmetatable({}, getmetatable(msg.list or {})) end,
    function() return { v = math.mininteger, w = math.maxinteger, x = -0.0 } end,
    function() return { ["a\0b"] = "c\0d" } end,                      -- NULs
    function() return gw.config end,
    function() return { c = gw.config } end,
  }
  return shapes[k % #shapes + 1]()
end

-- Nesting as deep as the message asks.
function ops.deep(conn, room, msg)
  local n = math.tointeger(msg.n) or 10
  if n < 0 then n = -n end
  n = n % 300
  local t = { leaf = str(msg.text) }
  for i = 1, n do t = { t } end
  return { type = "deep", v = t }
end

function ops.host(conn, room, msg)
  local target = str(msg.to)
  local r = str(msg.room ~= nil and msg.room or room)
  local _, sent = pcall(gw.send, target, msg)
  local _, cast = pcall(gw.broadcast, r, msg, { except = msg.except or conn.id })
  if msg.kick then pcall(gw.kick, target, msg.code, msg.text) end
  local m = gw.members(r)
  local rs = gw.rooms()
  local logged = pcall(gw.log, str(msg.level), str(msg.text), msg.fields or msg)
  return { type = "host", sent = sent, cast = cast, members = m, rooms = rs, logged = logged,
           now = gw.now() > 0 }
end

function ops.store(conn, room, msg)
  local key = str(msg.key)
  if key == "" then key = "k" end
  local ttl = tonumber(msg.ttl)
  local ok, err = pcall(gw.store.set, key, msg.value, ttl)
  local got = gw.store.get(key)
  pcall(gw.store.incr, key .. ":n", tonumber(msg.n) or 1)
  if msg.del then gw.store.del(key) end
  return { type = "store", ok = ok, value = got }
end

function ops.limit(conn, room, msg)
  local ok, res = pcall(gw.limit, str(msg.key), tonumber(msg.rate) or 1, tonumber(msg.burst) or 1)
  return { type = "limit", ok = ok, res = res }
end

function ops.jwt(conn, room, msg)
  local ok, claims, err = pcall(gw.jwt_verify, str(msg.token), str(msg.secret))
  return { type = "jwt", ok = ok, claims = claims, err = err }
end

function ops.strings(conn, room, msg)
  local text = str(msg.text)
  local out = {
    upper = text:upper(),
    len = #text,
    ulen = utf8.len(text),
    rev = text:reverse(),
    sub = text:sub(2, -2),
    found = text:find(str(msg.needle), 1, true),
    rep = string.rep(text, 3, ","),
    fmt = string.format("%q", text),
  }
  if utf8.len(text) then
    local cps = {}
    for _, c in utf8.codes(text) do cps[#cps + 1] = c end
    out.cps = cps
    out.back = utf8.char(table.unpack(cps, 1, math.min(#cps, 200)))
  end
  return { type = "strings", out = out }
end

-- The built-in types: a word filter and a length cap, as moderation.lua does.
local function moderate(conn, room, msg)
  if type(msg.text) ~= "string" then return true end
  if #msg.text > 2000 then return nil, "too_large" end
  local text, hits = msg.text:gsub("[Ss][Pp][Aa][Mm]", "****")
  if text:find("^/drop") then return nil, "dropped" end
  if hits > 0 then
    msg.text = text
    msg.filtered = hits
    return msg
  end
  return true
end

return {
  on_message = function(conn, room, msg)
    local t = msg.type
    local op = type(t) == "string" and ops[t:match("^x%.(.*)$") or ""]
    if op then return op(conn, room, msg) end
    return moderate(conn, room, msg)
  end,

  self_test = function()
    assert(ops.echo(nil, nil, { a = 1 }).a == 1)
    assert(moderate(nil, nil, { text = "spam" }).text == "****")
  end,
}
