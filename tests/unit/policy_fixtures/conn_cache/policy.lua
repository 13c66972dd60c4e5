-- Test policy for tests/unit/policy.c (test_conn_cache): on_message ops that look at, keep and
-- change the conn table, so that the test can check that hooks always see what a freshly built
-- conn table would hold, whatever an earlier call did to the one it got.
local seen = {}
local ops = {}

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  return table.concat(keys, ",")
end

function ops.show(conn)
  local q = {}
  if type(conn.query) == "table" then
    for k, v in pairs(conn.query) do q[#q + 1] = tostring(k) .. "=" .. (type(v) == "string" and v or type(v)) end
    table.sort(q)
  end
  return {
    keys = sorted_keys(conn), id = conn.id, ip = conn.ip, name = conn.name,
    query = type(conn.query) == "table" and table.concat(q, "&") or type(conn.query),
    mt = getmetatable(conn) ~= nil or (type(conn.query) == "table" and getmetatable(conn.query) ~= nil),
  }
end

function ops.add(conn) conn.extra = true end
function ops.rename(conn) conn.name = "mallory" end
function ops.set_id(conn) conn.id = "other" end
function ops.set_ip(conn) conn.ip = "192.0.2.1" end
function ops.query(conn) conn.query.room = "hacked"; conn.query.added = "x" end
function ops.query_del(conn) conn.query.room = nil end
function ops.query_set(conn) conn.query.room = "hacked" end
function ops.query_swap(conn) conn.query.room, conn.query.name = conn.query.name, conn.query.room end
function ops.rawset(conn) rawset(conn, "extra", 1) end
function ops.long_name(conn) conn.name = string.rep("a", 50); conn.name = nil; conn.name = "alice" end
function ops.query_meta(conn) setmetatable(conn.query, { __index = function() return "meta" end }) end
function ops.drop_query(conn) conn.query = nil end
function ops.meta(conn) setmetatable(conn, { __index = function() return "meta" end }) end
function ops.keep(conn) seen.last = conn end
function ops.same(conn) return { same = rawequal(seen.last, conn), last_name = seen.last and seen.last.name } end
function ops.late() seen.last.extra = "late" end   -- changes a kept table outside its call
function ops.noop() end
function ops.same_joined(conn) return { same = rawequal(seen.joined, conn) } end

-- a gw.kick that the test's host answers by re-entering on_leave for the same conn
function ops.nested(conn)
  conn.name = "outer"
  gw.kick(conn.id, "reenter", "x")
  return { inner_same = rawequal(seen.inner, conn), name_after = conn.name, inner_name = seen.inner_name }
end

return {
  on_join = function(conn) seen.joined = conn end,
  on_message = function(conn, room, msg)
    return ops[msg.op](conn, room, msg)
  end,
  on_leave = function(conn)
    seen.inner = conn
    seen.inner_name = conn.name
  end,
}
