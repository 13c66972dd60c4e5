-- Specs for scripts/policy.lua (the hooks chatgw calls, end to end over every module) and
-- scripts/settings.lua.
local mock = dofile((debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./") .. "mock_gw.lua")

describe("policy", function()
  local gw, policy

  local function load(overrides)
    local s = {
      moderation = { words = { "darn" }, word_action = "mask", max_strikes = 3,
                     conn_rate = 100, conn_burst = 100, ip_rate = 100, ip_burst = 100 },
      rooms = { protected = { vip = { password = "pw" } }, capacity = { { pattern = "^duo$", max = 2 } } },
    }
    for section, values in pairs(overrides or {}) do
      s[section] = s[section] or {}
      for k, v in pairs(values) do s[section][k] = v end
    end
    return mock.load("policy", s)
  end

  -- What chatgw does on a join frame: ask the policy, then add the member if allowed.
  local function join(conn, room)
    local ok, code = policy.on_join(conn, room)
    if ok ~= false and ok ~= nil or code == nil then mock.join(room, conn.id, conn.name) end
    return ok, code
  end

  -- Messages go through mock.on_message, which dispatches as chatgw does (message_types).
  local function say(conn, room, text)
    return mock.on_message(policy, conn, room, { type = "msg", room = room, text = text })
  end

  before_each(function()
    gw = mock.install()
    policy = load()
  end)

  it("returns a table of hooks", function()
    for _, h in ipairs({ "on_connect", "on_join", "on_message", "on_leave", "on_tick", "self_test" }) do
      assert.is_function(policy[h], h)
    end
  end)

  it("returns nothing but hooks and message_types (chatgw rejects unknown keys)", function()
    local hooks = { on_connect = true, on_join = true, on_message = true, on_leave = true,
                    on_tick = true, self_test = true }
    for k, v in pairs(policy) do
      if k == "message_types" then
        assert.is_table(v)
      else
        assert.is_true(hooks[k], "unknown key " .. tostring(k))
        assert.is_function(v)
      end
    end
  end)

  describe("message_types", function()
    it("declares exactly the types on_message handles", function()
      assert.same({ "dm", "msg", "rooms", "typing", "voice_join" }, policy.message_types)
      for i, t in ipairs(policy.message_types) do assert.is_string(t, i) end
    end)

    it("leaves out the built-in types the policy passes through untouched", function()
      local listed = {}
      for _, t in ipairs(policy.message_types) do listed[t] = true end
      for _, t in ipairs({ "signal", "mute", "unmute", "history" }) do
        assert.is_nil(listed[t], t)
        local res = policy.on_message(mock.conn("a1"), "lobby", { type = t, room = "lobby" })
        assert.is_true(res, t)            -- what chatgw does for them without on_message
      end
    end)

    it("holds every custom type the policy answers (anything else is bad_type)", function()
      local listed = {}
      for _, t in ipairs(policy.message_types) do listed[t] = true end
      for _, t in ipairs({ "rooms", "typing" }) do assert.is_true(listed[t], t) end
      assert.is_nil(listed.poke)
      local res, code = policy.on_message(mock.conn("a1"), "lobby", { type = "poke", room = "lobby" })
      assert.is_nil(res)
      assert.equal("bad_type", code)
    end)

    it("follows a custom type added to routing.handlers", function()
      local routing = require "routing"
      package.loaded.policy = nil
      routing.handlers.wave = function() return true end
      local p = require "policy"
      assert.same({ "dm", "msg", "rooms", "typing", "voice_join", "wave" }, p.message_types)
      assert.is_true(p.self_test())
      routing.handlers.wave = nil
    end)

    it("is checked by self_test", function()
      table.insert(policy.message_types, "nonesuch")
      assert.has_error(function() policy.self_test() end)
    end)
  end)

  it("passes self_test with the shipped settings", function()
    mock.install()
    assert.is_true(mock.load("policy").self_test())
  end)

  it("fails self_test on a broken settings.lua value", function()
    policy = load({ rooms = { capacity = { { pattern = "%", max = 1 } } } })
    assert.has_error(function() policy.self_test() end)
  end)

  describe("on_connect", function()
    it("allows an ordinary client", function()
      assert.is_true(policy.on_connect(mock.conn("c1")))
    end)

    it("refuses banned IPs and names with banned", function()
      require("moderation").ban("ip", "10.9.9.9", 60)
      local ok, why = policy.on_connect(mock.conn("c1", { ip = "10.9.9.9" }))
      assert.is_false(ok)
      assert.equal("banned", why)
    end)

    it("stores nothing per connection (URL credentials reach every later join in conn.query)", function()
      local c = mock.conn("c1", { query = { password = "pw" } })
      assert.is_true(policy.on_connect(c))
      assert.same({}, mock.store)
      assert.is_true(join(c, "vip"))
    end)
  end)

  describe("on_join", function()
    it("allows and records the owner", function()
      assert.is_true(join(mock.conn("c1"), "lobby"))
      assert.equal("c1", require("routing").owner("lobby"))
    end)

    it("refuses reserved, malformed, full and password rooms", function()
      local ok, code = join(mock.conn("c1"), "admin")
      assert.is_false(ok); assert.equal("forbidden", code)
      ok, code = join(mock.conn("c1"), "bad name")
      assert.is_false(ok); assert.equal("bad_field", code)
      ok, code = join(mock.conn("c1"), "vip")
      assert.is_false(ok); assert.equal("forbidden", code)
      join(mock.conn("a"), "duo"); join(mock.conn("b"), "duo")
      ok, code = join(mock.conn("c"), "duo")
      assert.is_false(ok); assert.equal("room_full", code)
    end)

    it("does not list the room on every join or leave (O(1) amortized, not O(members))", function()
      policy = load({ rooms = { capacity_default = 5000 } })
      local listed, calls = 0, 0
      local members = gw.members
      gw.members = function(room)
        local list = members(room)
        calls = calls + 1
        listed = listed + (list and #list or 0)
        return list
      end
      local n = 2000
      for i = 1, n do assert.is_true(join(mock.conn("m" .. i), "big")) end
      assert.equal(n, require("rooms").count("big"))
      assert.equal("m1", require("routing").owner("big"))
      -- a recount when the joins since the last one reach half the count: about 2n members
      -- listed in all (n^2 before: two full lists per join)
      assert.is_true(listed <= 3 * n, "listed " .. listed .. " members in " .. calls .. " calls")
      listed = 0
      for i = n, 2, -1 do
        mock.leave("big", "m" .. i)
        policy.on_leave(mock.conn("m" .. i), "big")
      end
      assert.equal(1, require("rooms").count("big"))
      assert.is_true(listed <= n, "listed " .. listed .. " members on leave")
      gw.members = members
    end)

    it("does not record a refused join", function()
      join(mock.conn("c1"), "admin")
      assert.is_nil(gw.store.get("owner:admin"))
      assert.is_nil(gw.store.get("rooms:c1"))
    end)
  end)

  describe("on_message", function()
    local alice, bob

    before_each(function()
      alice = mock.conn("a1", { name = "Alice" })
      bob = mock.conn("b1", { name = "Bob" })
      join(alice, "lobby")
      join(bob, "lobby")
    end)

    it("delivers plain text unchanged (true)", function()
      assert.is_true(say(alice, "lobby", "hello"))
    end)

    it("hands plain text to an operator's own msg handler, and checks a masked text for commands", function()
      local routing = require("routing")
      local seen = {}
      routing.handlers.msg = function(conn, room, msg) seen[#seen + 1] = msg.text return true end
      assert.is_true(say(alice, "lobby", "hello"))
      assert.same({ "hello" }, seen)
      -- a mask that starts with "/" turns the masked text into a command: routing sees it as one
      policy = load({ moderation = { word_mask = "/me" } })
      local res = say(alice, "lobby", "darn waves")
      assert.is_table(res)
      assert.equal("* Alice waves", res.text)
      assert.is_true(res.action)
    end)

    it("returns the rewritten table when moderation changed the text", function()
      local res = say(alice, "lobby", "oh darn")
      assert.is_table(res)
      assert.equal("oh ***", res.text)
      assert.equal("msg", res.type)
    end)

    it("drops with the moderation code", function()
      local res, code = say(alice, "lobby", string.rep("x ", 1500))
      assert.is_nil(res)
      assert.equal("too_large", code)
    end)

    it("runs slash commands after moderation", function()
      assert.equal("* Alice waves", say(alice, "lobby", "/me waves").text)
      assert.is_false(say(alice, "lobby", "/kick Bob"))
      assert.equal("b1", mock.kicks[1].id)
      local _, code = say(alice, "lobby", "/frobnicate")
      assert.equal("bad_command", code)
    end)

    it("refuses nicknames that are banned or filtered", function()
      require("moderation").ban("name", "Mallory", 60)
      local _, code = say(alice, "lobby", "/nick mallory")
      assert.equal("forbidden", code)
      _, code = say(alice, "lobby", "/nick Darn")
      assert.equal("forbidden", code)
      assert.is_false(say(alice, "lobby", "/nick Ally"))
    end)

    it("routes dm only between room mates", function()
      assert.is_true(mock.on_message(policy, alice, nil, { type = "dm", to = "b1", text = "psst" }))
      local carol = mock.conn("c1")
      join(carol, "games")
      local res, code = mock.on_message(policy, carol, nil, { type = "dm", to = "a1", text = "hi" })
      assert.is_nil(res)
      assert.equal("forbidden", code)
    end)

    it("passes signal through untouched, even for a flooder", function()
      policy = load({ moderation = { conn_rate = 0.001, conn_burst = 1 } })
      local sig = { type = "signal", room = "lobby", to = "b1", data = { candidate = "x" } }
      for _ = 1, 5 do assert.is_true(mock.on_message(policy, alice, "lobby", sig)) end
      assert.equal(0, mock.dispatched)                 -- not in message_types: never enters Lua
      -- on_message alone passes it through as well (a caller that hands it every type)
      for _ = 1, 5 do assert.is_true(policy.on_message(alice, "lobby", sig)) end
      assert.same({}, mock.kicks)
      assert.same({}, mock.store["strikes:a1"] or {})
    end)

    it("never sees mute, unmute or history", function()
      for _, t in ipairs({ "mute", "unmute", "history" }) do
        assert.is_true(mock.on_message(policy, alice, "lobby", { type = t, room = "lobby" }), t)
      end
      assert.equal(0, mock.dispatched)
    end)

    it("answers the rooms request with the directory", function()
      join(mock.conn("x"), "_secret")
      assert.is_false(mock.on_message(policy, alice, nil, { type = "rooms" }))
      local s = mock.last(mock.sent)
      assert.equal("a1", s.to)
      assert.same({ type = "rooms", rooms = { { name = "lobby", online = 2 } } }, s.msg)
    end)

    it("delivers typing as a new table", function()
      assert.same({ type = "typing", room = "lobby" },
                  mock.on_message(policy, alice, "lobby", { type = "typing", room = "lobby" }))
    end)

    it("refuses unclaimed custom types with bad_type (from chatgw, without entering Lua)", function()
      local res, code = mock.on_message(policy, alice, "lobby", { type = "poke", room = "lobby" })
      assert.is_nil(res)
      assert.equal("bad_type", code)
      assert.equal(0, mock.dispatched)
    end)

    it("rate-limits custom types too", function()
      policy = load({ moderation = { conn_rate = 0.001, conn_burst = 1 } })
      assert.is_false(mock.on_message(policy, alice, nil, { type = "rooms" }))
      local _, code = mock.on_message(policy, alice, nil, { type = "rooms" })
      assert.equal("rate_limited", code)
    end)

    it("kicks after repeated violations and then bans the IP", function()
      policy = load({ moderation = { word_action = "drop", max_strikes = 2, kicks_to_ban = 1 } })
      say(alice, "lobby", "darn")
      local _, code = say(alice, "lobby", "darn darn")
      assert.equal("forbidden", code)
      assert.same({ id = "a1", code = "kicked", reason = "too many violations" }, mock.kicks[1])
      local ok, why = policy.on_connect(mock.conn("a2", { ip = alice.ip }))
      assert.is_false(ok)
      assert.equal("banned", why)
    end)
  end)

  describe("voice_join", function()
    it("passes within voice_sfu_max, refuses past it with voice_full, and rate-limits joins", function()
      local c = mock.conn("v1", { name = "vera" })
      local function vj(n) return mock.on_message(policy, c, "lobby", { type = "voice_join", room = "lobby", voice_members = n }) end
      assert.is_true(vj(0))
      assert.same({ nil, "voice_full" }, { vj(1000) })
      assert.is_true(vj(0))
      assert.same({ nil, "rate_limited" }, { vj(0) })   -- the burst of 3 is spent
      mock.clock = mock.clock + 2
      assert.is_true(vj(0))
    end)
  end)

  describe("on_leave and on_tick", function()
    it("hands the room over when its owner leaves", function()
      local a, b = mock.conn("a1"), mock.conn("b1")
      join(a, "lobby"); join(b, "lobby")
      mock.leave("lobby", "a1")
      policy.on_leave(a, "lobby")
      assert.equal("b1", require("routing").owner("lobby"))
    end)

    it("sends scheduled announcements", function()
      policy = load({ routing = { announcements = { { room = "lobby", every = 60, text = "hi all" } } } })
      policy.on_tick(gw.now())
      policy.on_tick(gw.now() + 60)
      assert.equal("hi all", mock.last(mock.broadcasts).msg.text)
    end)
  end)

  describe("probe rooms", function()
    it("echo a msg to the room by broadcast, never delivered into history, and stay private", function()
      local c = mock.conn("p1", { name = "probe" })
      assert.is_true(join(c, "probe-1a2b"))
      local res = say(c, "probe-1a2b", "probe 1a2b")
      assert.is_false(res)                                  -- handled here: the hub keeps nothing
      local b = mock.broadcasts[#mock.broadcasts]
      assert.equals("probe-1a2b", b.room)
      assert.equals("msg", b.msg.type)
      assert.equals("probe 1a2b", b.msg.text)
      assert.same({ id = "p1", name = "probe" }, b.msg.from)
      assert.is_true(require("rooms").is_private("probe-1a2b"))
    end)

    it("are ordinary rooms when settings.rooms.probe is false", function()
      policy = load({ rooms = { probe = false } })
      local c = mock.conn("p2")
      assert.is_true(join(c, "probe-x"))
      local res = say(c, "probe-x", "hello")
      assert.is_true(res == true or type(res) == "table")
      assert.equals(0, #mock.broadcasts)
    end)
  end)
end)

describe("settings", function()
  before_each(function() mock.install() end)
  after_each(function() package.preload.secrets = nil end)

  it("returns a table with the three sections", function()
    local s = mock.load("settings")
    assert.is_table(s.rooms)
    assert.is_table(s.moderation)
    assert.is_table(s.routing)
  end)

  it("holds a value for every module default", function()
    local s = mock.load("settings")
    for _, mod in ipairs({ "rooms", "moderation", "routing" }) do
      local m = require(mod)
      for k in pairs(m.DEFAULTS) do
        assert.is_not_nil(s[mod][k], mod .. "." .. k)
      end
    end
  end)

  it("merges an optional secrets.lua over itself", function()
    package.preload.secrets = function()
      return { rooms = { protected = { staff = { password = "from-secret" } }, jwt_secret = "k" } }
    end
    local s = mock.load("settings")
    assert.equal("from-secret", s.rooms.protected.staff.password)
    assert.equal("k", s.rooms.jwt_secret)
    assert.equal(48, s.rooms.name_max)
    local rooms = require "rooms"
    assert.is_true(rooms.check_join(mock.conn("c1", { query = { password = "from-secret" } }), "staff"))
  end)

  it("falls back to module defaults for keys it leaves out", function()
    local s = mock.load("settings")
    s.moderation.max_strikes = nil
    package.loaded.moderation = nil
    assert.equal(5, require("moderation").cfg.max_strikes)
  end)
end)
