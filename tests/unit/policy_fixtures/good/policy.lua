-- Test policy for tests/unit/policy.c: each on_message "op" exercises one behaviour;
-- op "eval" runs msg.code inside the sandbox and reports {ok, result, err}.
local helper = require "helper"

local ops = {}

function ops.rewrite(conn, room, msg)
  msg.text = helper.shout(msg.text)
  msg.by = conn.name
  msg.room = room
  return msg
end

function ops.drop() return nil, "no_spam" end
function ops.drop_false() return false, "muted" end
function ops.handled(conn) gw.send(conn.id, { type = "private" }) return false end
function ops.pass() return true end
function ops.nothing() end
function ops.echo(_, _, msg) return msg end
function ops.number() return 42 end
function ops.array() return { 1, 2, 3 } end
function ops.loop() while true do end end
function ops.pcall_loop()
  while true do pcall(function() while true do end end) end
end
function ops.membomb()
  local t, i = {}, 0
  while true do
    i = i + 1
    t[i] = string.rep("x", 1024) .. i
  end
end
function ops.rep() return { s = string.rep("x", 1e9) } end
function ops.store(_, _, msg) return { value = gw.store.get(msg.key) } end

function ops.eval(_, _, msg)
  local f, err = load(msg.code, "=eval")
  if not f then return { ok = false, err = err } end
  local ok, result = pcall(f)
  if ok then return { ok = true, result = result } end
  return { ok = false, err = tostring(result) }
end

return {
  on_connect = function(conn)
    if conn.name == "banned" then return false, "banned user" end
    if conn.name == "err" then error("connect exploded") end
    if conn.query and conn.query.deny then return false, "denied:" .. conn.query.deny end
    if conn.headers and conn.headers["x-block"] then return nil, "blocked_header" end
  end,

  on_join = function(conn, room)
    if room == "secret" then return false end
    if room == "vip" then return nil, "vip_only" end
    return true
  end,

  on_message = function(conn, room, msg)
    local op = ops[msg.op]
    if not op then return msg end
    return op(conn, room, msg)
  end,

  on_leave = function(conn, room)
    gw.store.incr("leaves:" .. room)
  end,

  on_tick = function(now)
    gw.store.set("tick", now)
  end,

  self_test = function()
    assert(helper.shout("a") == "A!")
    assert(gw.version and #gw.version == 64)
  end,
}
