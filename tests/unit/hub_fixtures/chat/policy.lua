-- Test policy for tests/unit/hub.c: each room name or message text below triggers one
-- behaviour of the hub's policy path (connect and join refusals, failures, rewrite, drop,
-- custom types, kick, the host API and on_leave).

local function on_msg(conn, msg)
  local t = msg.text
  if t == "spam" then return nil, "no_spam" end
  if t == "loop" then while true do end end
  if t == "color" then
    msg.text = "colored"
    msg.color = "red"
    return msg
  end
  if t == "elsewhere" then
    msg.room = "elsewhere"
    return msg
  end
  if t == "tojoin" then
    msg.type = "join"
    return msg
  end
  if t == "badtext" then
    msg.text = 5
    return msg
  end
  if t == "kickme" then
    gw.kick(conn.id, "bye", "you asked")
    return true
  end
  return true
end

return {
  on_connect = function(conn)
    if conn.name == "banned" then return false, "banned user" end
    if conn.name == "crash" then error("connect exploded") end
    if conn.headers and conn.headers["x-block"] then return false, "blocked:" .. conn.headers["x-block"] end
    if conn.query and conn.query.deny then return false, "denied:" .. conn.query.deny end
    return true
  end,

  on_join = function(conn, room)
    if room == "vip" then return false, "vip_only" end
    if room == "ticketed" and not (conn.query and conn.query.ticket == "yes") then return false, "no_ticket" end
    if room == "boom" then error("join exploded") end
    return true
  end,

  on_message = function(conn, room, msg)
    if msg.type == "msg" then return on_msg(conn, msg) end
    if msg.type == "dm" and msg.text == "spam" then return nil, "no_spam" end
    if msg.type == "typing" then return true end
    if msg.type == "who" then
      gw.send(conn.id, { type = "who", room = room, members = gw.members(room) })
      return false
    end
    if msg.type == "rooms" then
      gw.send(conn.id, { type = "rooms", rooms = gw.rooms() })
      return false
    end
    if msg.type == "shout" then
      gw.broadcast(room, { type = "shout", text = msg.text }, { except = conn.id })
      return false
    end
    if msg.type == "kick" then
      local ok = gw.kick(msg.target, "kicked_by_policy", "go away")
      gw.send(conn.id, { type = "kicked", ok = ok })
      return false
    end
    if msg.type == "nope" then return nil, "bad_type" end
    return true
  end,

  on_leave = function(conn, room)
    gw.broadcast(room, { type = "left", id = conn.id, room = room })
  end,
}
