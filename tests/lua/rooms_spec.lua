-- Specs for scripts/rooms.lua: names, reserved rooms, capacity, password/JWT rooms, directory.
local mock = dofile((debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./") .. "mock_gw.lua")

describe("rooms", function()
  local gw, rooms

  before_each(function()
    gw = mock.install()
    rooms = mock.load("rooms", {
      rooms = {
        capacity = { { pattern = "^voice%-", max = 2 }, { pattern = "^big", max = 5 } },
        capacity_default = 3,
        protected = { vip = { password = "s3cret" }, staff = { jwt_secret = "k1" } },
        jwt_secret = "global",
        jwt_rooms = { "^team%-" },
        private = { "^_" },
        directory_max = 3,
      },
    })
  end)

  describe("names", function()
    it("accepts ordinary names", function()
      assert.is_true(rooms.check_join(mock.conn("c1"), "lobby"))
      assert.is_true(rooms.check_join(mock.conn("c1"), "room-1.b_c"))
    end)

    it("refuses empty, over-long and badly formed names with bad_field", function()
      local c = mock.conn("c1")
      for _, name in ipairs({ "", string.rep("a", 49), "-lead", "has space", "sl/ash", "é" }) do
        local ok, code = rooms.check_join(c, name)
        assert.is_false(ok, name)
        assert.equal("bad_field", code, name)
      end
      assert.is_true(rooms.check_join(c, string.rep("a", 48)))
    end)

    it("refuses reserved names case-insensitively with forbidden", function()
      for _, name in ipairs({ "admin", "API", "Healthz", "metrics" }) do
        local ok, code = rooms.check_join(mock.conn("c1"), name)
        assert.is_false(ok)
        assert.equal("forbidden", code)
      end
    end)

    it("allows any name chatgw accepts when name_pattern is false", function()
      rooms.configure({ name_pattern = false })
      assert.is_true(rooms.valid_name("héllo wörld"))
    end)
  end)

  describe("voice through the server's mixer", function()
    it("refuses a voice_join with voice_full once voice_sfu_max members are in voice", function()
      rooms.configure({ voice_sfu_max = 2 })
      local c = mock.conn("c1")
      assert.is_true(rooms.check_voice(c, "lobby", { type = "voice_join", voice_members = 0 }))
      assert.is_true(rooms.check_voice(c, "lobby", { type = "voice_join", voice_members = 1 }))
      assert.same({ nil, "voice_full" }, { rooms.check_voice(c, "lobby", { type = "voice_join", voice_members = 2 }) })
    end)

    it("gives mesh-sized rooms their sfu_max only when the server mixes voice", function()
      local caps = { { pattern = "^voice%-", max = 2, sfu_max = 40 } }
      rooms.configure({ capacity = caps, sfu = false })
      assert.equal(2, rooms.capacity("voice-1"))
      rooms.configure({ capacity = caps, sfu = true })
      assert.equal(40, rooms.capacity("voice-1"))
      gw.config = { janus_url = "http://janus:8088/janus" }
      rooms.configure({ capacity = caps })
      assert.equal(40, rooms.capacity("voice-1"))
    end)
  end)

  describe("capacity", function()
    it("uses the first matching pattern, else the default", function()
      assert.equal(2, rooms.capacity("voice-1"))
      assert.equal(5, rooms.capacity("bigroom"))
      assert.equal(3, rooms.capacity("lobby"))
    end)

    it("refuses a join with room_full once the room holds cap members", function()
      mock.fill("voice-1", 1)
      assert.is_true(rooms.check_join(mock.conn("c1"), "voice-1"))
      mock.join("voice-1", "c1")
      local ok, code = rooms.check_join(mock.conn("c2"), "voice-1")
      assert.is_false(ok)
      assert.equal("room_full", code)
    end)

    it("does not count the joiner when the host already lists it", function()
      mock.fill("voice-1", 1)
      mock.join("voice-1", "c1")
      assert.is_true(rooms.check_join(mock.conn("c1"), "voice-1"))
    end)

    it("treats an unknown room as empty", function()
      assert.is_true(rooms.check_join(mock.conn("c1"), "newroom"))
    end)
  end)

  describe("protected rooms", function()
    it("forbids a password room without credentials", function()
      local ok, code = rooms.check_join(mock.conn("c1"), "vip")
      assert.is_false(ok)
      assert.equal("forbidden", code)
    end)

    it("forbids a wrong password", function()
      local ok, code = rooms.check_join(mock.conn("c1", { query = { password = "nope" } }), "vip")
      assert.is_false(ok)
      assert.equal("forbidden", code)
    end)

    it("admits ?password= or ?token= equal to the password", function()
      assert.is_true(rooms.check_join(mock.conn("c1", { query = { password = "s3cret" } }), "vip"))
      assert.is_true(rooms.check_join(mock.conn("c2", { query = { token = "s3cret" } }), "vip"))
    end)

    it("admits a JWT whose room claim matches (global secret)", function()
      mock.add_jwt("jwt-vip", "global", { room = "vip", sub = "u1" })
      assert.is_true(rooms.check_join(mock.conn("c1", { query = { token = "jwt-vip" } }), "vip"))
    end)

    it("refuses a JWT for another room", function()
      mock.add_jwt("jwt-other", "global", { room = "other" })
      local ok, code = rooms.check_join(mock.conn("c1", { query = { token = "jwt-other" } }), "vip")
      assert.is_false(ok)
      assert.equal("forbidden", code)
    end)

    it("refuses a JWT signed with the wrong secret (per-room secret wins)", function()
      mock.add_jwt("jwt-staff-global", "global", { room = "staff" })
      mock.add_jwt("jwt-staff", "k1", { room = "staff" })
      assert.is_false(rooms.check_join(mock.conn("c1", { query = { token = "jwt-staff-global" } }), "staff"))
      assert.is_true(rooms.check_join(mock.conn("c2", { query = { token = "jwt-staff" } }), "staff"))
    end)

    it("refuses an expired JWT even if the host did not check exp", function()
      mock.add_jwt("old", "global", { room = "vip", exp = gw.now() - 1 })
      assert.is_false(rooms.check_join(mock.conn("c1", { query = { token = "old" } }), "vip"))
      mock.add_jwt("fresh", "global", { room = "vip", exp = gw.now() + 60 })
      assert.is_true(rooms.check_join(mock.conn("c1", { query = { token = "fresh" } }), "vip"))
    end)

    it("accepts a list or '*' as the room claim", function()
      mock.add_jwt("list", "global", { room = { "a", "vip" } })
      mock.add_jwt("star", "global", { room = "*" })
      assert.is_true(rooms.check_join(mock.conn("c1", { query = { token = "list" } }), "vip"))
      assert.is_true(rooms.check_join(mock.conn("c1", { query = { token = "star" } }), "vip"))
    end)

    it("requires a JWT for jwt_rooms patterns", function()
      assert.is_false(rooms.check_join(mock.conn("c1"), "team-x"))
      mock.add_jwt("tx", "global", { room = "team-x" })
      assert.is_true(rooms.check_join(mock.conn("c1", { query = { token = "tx" } }), "team-x"))
    end)

    it("reads the credentials from conn.query (chatgw passes it to every hook) and stores nothing", function()
      local c = mock.conn("c1", { query = { password = "s3cret" } })
      assert.is_true(rooms.check_join(c, "vip"))
      assert.same({}, mock.store)
      c.query = nil
      assert.is_false(rooms.check_join(c, "vip"))
      assert.is_nil(rooms.remember_auth)
    end)
  end)

  describe("directory", function()
    before_each(function()
      mock.fill("lobby", 3)
      mock.fill("games", 5)
      mock.fill("_hidden", 9)
      mock.fill("vip", 7)
      mock.fill("team-x", 8)
      mock.fill("quiet", 1)
      mock.fill("alpha", 2)
    end)

    it("lists public rooms busiest first, capped at directory_max", function()
      assert.same({ { name = "games", online = 5 }, { name = "lobby", online = 3 }, { name = "alpha", online = 2 } },
                  rooms.directory())
    end)

    it("never lists private, password or JWT rooms", function()
      rooms.configure({ directory_max = 100 })
      for _, r in ipairs(rooms.directory()) do
        assert.is_not.equal("_hidden", r.name)
        assert.is_not.equal("vip", r.name)
        assert.is_not.equal("team-x", r.name)
      end
      assert.equal(4, #rooms.directory())
    end)

    it("indexes anchored patterns without changing what they match", function()
      rooms.configure({ private = { "^_", "^%-x", "^a*b", "secret", "^z?q" }, jwt_rooms = { "^t+" } })
      for name, want in pairs({ _x = true, ["-xy"] = true, b = true, aab = true, mysecret = true,
                                q = true, zq = true, tt = true, lobby = false, a = false, x = false }) do
        assert.equal(want, rooms.is_private(name), name)
      end
    end)

    it("caches the answer for directory_cache_seconds", function()
      rooms.configure({ directory_cache_seconds = 2 })
      local first = rooms.directory()
      mock.fill("new", 50)
      assert.equal(first, rooms.directory())
      mock.advance(2)
      assert.equal("new", rooms.directory()[1].name)
    end)

    it("marks the list with gw.array so that an empty directory encodes as []", function()
      mock.rooms = {}
      rooms.configure({})
      local list = rooms.directory()
      assert.equal(0, #list)
      assert.equal(mock.ARRAY_MT, getmetatable(list))
    end)

    it("answers the rooms request with gw.send and returns false", function()
      local res = rooms.on_rooms(mock.conn("c1"))
      assert.is_false(res)
      local s = mock.last(mock.sent)
      assert.equal("c1", s.to)
      assert.equal("rooms", s.msg.type)
      assert.equal(3, #s.msg.rooms)
    end)
  end)

  describe("self_test", function()
    it("passes with the shipped settings", function()
      mock.install()
      assert.is_true(mock.load("rooms").self_test())
    end)

    it("rejects a bad pattern in settings", function()
      rooms.configure({ private = { "[unclosed" } })
      assert.has_error(function() rooms.self_test() end)
    end)

    it("rejects a malformed capacity entry", function()
      rooms.configure({ capacity = { { pattern = "^x" } } })
      assert.has_error(function() rooms.self_test() end)
    end)
  end)
end)
