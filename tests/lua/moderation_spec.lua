-- Specs for scripts/moderation.lua: flood control, length, repetition, word filter, strikes,
-- kicks and bans.
local mock = dofile((debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./") .. "mock_gw.lua")

local function msg(text) return { type = "msg", room = "lobby", text = text } end

describe("moderation", function()
  local gw, mod

  -- Generous limits by default so that each test exercises one rule.
  local function load(overrides)
    local m = {
      conn_rate = 100, conn_burst = 100, ip_rate = 100, ip_burst = 100,
      connect_rate = 100, connect_burst = 100,
      words = { "darn", "heck" }, word_action = "mask", word_mask = "***",
      max_strikes = 3, strike_ttl = 600, kicks_to_ban = 2, kick_window = 3600, ban_seconds = 600,
      max_text_chars = 20, max_char_run = 3, repeat_limit = 3, repeat_window = 300,
    }
    for k, v in pairs(overrides or {}) do m[k] = v end
    return mock.load("moderation", { moderation = m })
  end

  before_each(function()
    gw = mock.install()
    mod = load()
  end)

  describe("pure helpers", function()
    it("masks whole words only, case-insensitively", function()
      local out, hits = mod.filter_words("Darn! darned HECK, heck-no")
      assert.equal("***! darned ***, ***-no", out)
      assert.equal(3, hits)
    end)

    it("keeps UTF-8 words whole", function()
      local out, hits = mod.filter_words("darné darn", { darn = true }, "#")
      assert.equal("darné #", out)
      assert.equal(1, hits)
    end)

    it("collapses runs longer than the limit, ASCII and UTF-8", function()
      assert.equal("nooo way!!!", mod.collapse_runs("noooooooo way!!!!!!", 3))
      assert.equal("ééé ok", mod.collapse_runs("éééééé ok", 3))
      assert.equal("aaab", mod.collapse_runs("aaab", 3))
      assert.equal("x", mod.collapse_runs("x", 3))
      -- the ASCII hint takes the byte pattern: the same result for ASCII text
      assert.equal("nooo way!!!", mod.collapse_runs("noooooooo way!!!!!!", 3, true))
      assert.equal("ééé ok!!!", mod.collapse_runs("éééééé ok!!!!", 3, false))
      assert.equal("ééé aaa", mod.collapse_runs("éééé aaaa", 3))
    end)

    it("collapses a long run in linear work", function()
      local long = string.rep("a", 4096)
      assert.equal("aaa", mod.collapse_runs(long, 3))
    end)

    it("normalizes for the repetition check", function()
      assert.equal("a b", mod.normalize("  A \t B "))
    end)

    -- The helpers skip copies when the text needs no change; they must answer exactly what the
    -- straightforward versions below answer, on random texts over a small alphabet.
    it("matches the reference helpers on random texts", function()
      local function ref_normalize(text)
        local s = string.gsub(string.lower(text), "%s+", " ")
        return (string.match(s, "^ ?(.-) ?$"))
      end
      local function ref_collapse(text, max)
        if not max or max < 1 or #text <= max then return text end
        local out = string.gsub(text, "([\0-\127\194-\244][\128-\191]*)", "%1")  -- a copy
        local pat = "([\0-\127\194-\244][\128-\191]*)" .. string.rep("%1", max)
        local parts, pos = {}, 1
        while true do
          local s, e, c = string.find(out, pat, pos)
          if not s then break end
          while string.sub(out, e + 1, e + #c) == c do e = e + #c end
          parts[#parts + 1] = string.sub(out, pos, s - 1) .. string.rep(c, max)
          pos = e + 1
        end
        parts[#parts + 1] = string.sub(out, pos)
        return table.concat(parts)
      end
      local function ref_filter(text, set, mask)
        local hits = 0
        local out = string.gsub(text, "[%w_\128-\255]+", function(w)
          if set[string.lower(w)] then hits = hits + 1; return mask end
        end)
        return out, hits
      end
      local alphabet = { "a", "A", "b", " ", "  ", "\t", "\n", "é", "É", "x", "darn", "DaRn", "!", "" }
      local seed = 12345
      local function rnd(n) seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n + 1 end
      local set = { darn = true, a = true }
      for _ = 1, 3000 do
        local parts = {}
        for i = 1, rnd(12) - 1 do parts[i] = alphabet[rnd(#alphabet)] end
        local text = table.concat(parts)
        assert.equal(ref_normalize(text), mod.normalize(text), ("%q"):format(text))
        for max = 1, 3 do
          assert.equal(ref_collapse(text, max), mod.collapse_runs(text, max), ("%q %d"):format(text, max))
        end
        local o1, h1 = ref_filter(text, set, "*")
        local o2, h2 = mod.filter_words(text, set, "*")
        assert.equal(o1, o2, ("%q"):format(text))
        assert.equal(h1, h2, ("%q"):format(text))
      end
    end)

    it("counts repeats of any text, also texts with newlines or digits only", function()
      local c = mock.conn("c1")
      for _, t in ipairs({ "a\nb", "12", "\n" }) do
        assert.is_nil(mod.check(c, "lobby", msg(t)))
        assert.is_nil(mod.check(c, "lobby", msg(t)))
        assert.equal("repeated", mod.check(c, "lobby", msg(t)), ("%q"):format(t))
        mock.advance(301)
      end
    end)
  end)

  describe("flood control", function()
    it("drops with rate_limited past the per-connection bucket", function()
      mod = load({ conn_rate = 1, conn_burst = 2 })
      local c = mock.conn("c1")
      assert.is_nil(mod.check(c, "lobby", msg("one")))
      assert.is_nil(mod.check(c, "lobby", msg("two")))
      assert.equal("rate_limited", mod.check(c, "lobby", msg("three")))
      mock.advance(1)
      assert.is_nil(mod.check(c, "lobby", msg("four")))
    end)

    it("drops with rate_limited past the per-IP bucket across connections", function()
      mod = load({ ip_rate = 1, ip_burst = 2 })
      assert.is_nil(mod.check(mock.conn("a", { ip = "1.2.3.4" }), "lobby", msg("x1")))
      assert.is_nil(mod.check(mock.conn("b", { ip = "1.2.3.4" }), "lobby", msg("x2")))
      assert.equal("rate_limited", mod.check(mock.conn("c", { ip = "1.2.3.4" }), "lobby", msg("x3")))
      assert.is_nil(mod.check(mock.conn("d", { ip = "5.6.7.8" }), "lobby", msg("x4")))
    end)

    it("uses per-conn and per-IP keys in gw.limit", function()
      mod.check(mock.conn("c1", { ip = "9.9.9.9" }), "lobby", msg("hi"))
      assert.is_not_nil(mock.buckets["conn:c1"])
      assert.is_not_nil(mock.buckets["ip:9.9.9.9"])
    end)

    it("can be turned off", function()
      mod = load({ conn_rate = false, ip_rate = false })
      mod.check(mock.conn("c1"), "lobby", msg("hi"))
      assert.same({}, mock.buckets)
    end)
  end)

  describe("text limits", function()
    it("drops text longer than max_text_chars with too_large (counting characters)", function()
      local c = mock.conn("c1")
      assert.equal("too_large", mod.check(c, "lobby", msg(string.rep("ab", 11))))
      assert.is_nil(mod.check(c, "lobby", msg(string.rep("é", 20))))
    end)

    it("rewrites runs of one character", function()
      local m = msg("sooooo good")
      local code, changed = mod.check(mock.conn("c1"), "lobby", m)
      assert.is_nil(code)
      assert.is_true(changed)
      assert.equal("sooo good", m.text)
    end)

    it("reports unchanged text as unchanged", function()
      local m = msg("fine")
      local code, changed = mod.check(mock.conn("c1"), "lobby", m)
      assert.is_nil(code)
      assert.is_false(changed)
      assert.equal("fine", m.text)
    end)

    it("applies to dm text too", function()
      local m = { type = "dm", to = "c2", text = "heck" }
      assert.is_nil(mod.check(mock.conn("c1"), nil, m))
      assert.equal("***", m.text)
    end)

    it("leaves non-text messages alone", function()
      local m = { type = "typing", room = "lobby" }
      assert.is_nil(mod.check(mock.conn("c1"), "lobby", m))
    end)
  end)

  describe("repetition", function()
    it("drops the repeat_limit-th identical text in a row with repeated", function()
      local c = mock.conn("c1")
      assert.is_nil(mod.check(c, "lobby", msg("hello")))
      assert.is_nil(mod.check(c, "lobby", msg("HELLO ")))
      assert.equal("repeated", mod.check(c, "lobby", msg("hello")))
    end)

    it("resets on a different text and is per connection", function()
      local c, d = mock.conn("c1"), mock.conn("c2")
      mod.check(c, "lobby", msg("hello"))
      mod.check(c, "lobby", msg("hello"))
      assert.is_nil(mod.check(d, "lobby", msg("hello")))
      assert.is_nil(mod.check(c, "lobby", msg("other")))
      assert.is_nil(mod.check(c, "lobby", msg("hello")))
    end)

    it("forgets after repeat_window", function()
      local c = mock.conn("c1")
      mod.check(c, "lobby", msg("hello"))
      mod.check(c, "lobby", msg("hello"))
      mock.advance(301)
      assert.is_nil(mod.check(c, "lobby", msg("hello")))
    end)
  end)

  describe("word filter", function()
    it("masks filtered words by default", function()
      local m = msg("oh Darn it")
      assert.is_nil(mod.check(mock.conn("c1"), "lobby", m))
      assert.equal("oh *** it", m.text)
    end)

    it("drops with forbidden when word_action is drop", function()
      mod = load({ word_action = "drop" })
      local m = msg("oh darn")
      assert.equal("forbidden", mod.check(mock.conn("c1"), "lobby", m))
      assert.equal("oh darn", m.text)
    end)

    it("does not touch words that merely contain a filtered word", function()
      local m = msg("darning")
      assert.is_nil(mod.check(mock.conn("c1"), "lobby", m))
      assert.equal("darning", m.text)
    end)
  end)

  describe("strikes and kicks", function()
    it("kicks at max_strikes violations", function()
      mod = load({ word_action = "drop" })
      local c = mock.conn("c1")
      mod.check(c, "lobby", msg("darn"))
      mod.check(c, "lobby", msg("heck"))
      assert.same({}, mock.kicks)
      mod.check(c, "lobby", msg("darn 2"))
      assert.equal(1, #mock.kicks)
      assert.same({ id = "c1", code = "kicked", reason = "too many violations" }, mock.kicks[1])
      assert.is_nil(gw.store.get("strikes:c1"))
    end)

    it("counts a masked word as a strike when strike_on_mask", function()
      local c = mock.conn("c1")
      for i = 1, 3 do mod.check(c, "lobby", msg("darn " .. i)) end
      assert.equal(1, #mock.kicks)
    end)

    it("does not strike masked words when strike_on_mask is false", function()
      mod = load({ strike_on_mask = false })
      local c = mock.conn("c1")
      for i = 1, 5 do mod.check(c, "lobby", msg("darn " .. i)) end
      assert.equal(0, #mock.kicks)
    end)

    it("lets strikes expire after strike_ttl", function()
      mod = load({ word_action = "drop" })
      local c = mock.conn("c1")
      mod.check(c, "lobby", msg("darn"))
      mod.check(c, "lobby", msg("heck"))
      mock.advance(601)
      mod.check(c, "lobby", msg("darn"))
      assert.equal(0, #mock.kicks)
    end)

    it("counts rate_limited drops as strikes", function()
      mod = load({ conn_rate = 0.001, conn_burst = 1 })
      local c = mock.conn("c1")
      for i = 1, 4 do mod.check(c, "lobby", msg("m" .. i)) end
      assert.equal(1, #mock.kicks)
    end)

    it("bans the IP after kicks_to_ban kicks within kick_window", function()
      mod = load({ word_action = "drop" })
      for n = 1, 2 do
        local c = mock.conn("c" .. n, { ip = "6.6.6.6" })
        for i = 1, 3 do mod.check(c, "lobby", msg("darn " .. i)) end
      end
      assert.equal(2, #mock.kicks)
      assert.is_not_nil(mod.banned("ip", "6.6.6.6"))
      local ok, why = mod.on_connect(mock.conn("c9", { ip = "6.6.6.6" }))
      assert.is_false(ok)
      assert.equal("banned", why)
      mock.advance(601)
      assert.is_true(mod.on_connect(mock.conn("c10", { ip = "6.6.6.6" })))
    end)

    it("does not ban when the kicks are further apart than kick_window", function()
      mod = load({ word_action = "drop" })
      local c = mock.conn("c1", { ip = "6.6.6.6" })
      for i = 1, 3 do mod.check(c, "lobby", msg("darn " .. i)) end
      mock.advance(3601)
      c = mock.conn("c2", { ip = "6.6.6.6" })
      for i = 1, 3 do mod.check(c, "lobby", msg("darn " .. i)) end
      assert.equal(2, #mock.kicks)
      assert.is_nil(mod.banned("ip", "6.6.6.6"))
    end)
  end)

  describe("bans", function()
    it("refuses a banned IP or name on connect with banned", function()
      mod.ban("ip", "1.1.1.1", 60)
      mod.ban("name", "Mallory", 60)
      local ok, why = mod.on_connect(mock.conn("a", { ip = "1.1.1.1" }))
      assert.is_false(ok); assert.equal("banned", why)
      ok, why = mod.on_connect(mock.conn("b", { name = "mallory" }))
      assert.is_false(ok); assert.equal("banned", why)
      assert.is_true(mod.on_connect(mock.conn("c", { name = "alice", ip = "2.2.2.2" })))
    end)

    it("expires bans (store TTL and the stored expiry)", function()
      mod.ban("ip", "1.1.1.1", 60)
      mock.advance(59)
      assert.is_not_nil(mod.banned("ip", "1.1.1.1"))
      mock.advance(2)
      assert.is_nil(mod.banned("ip", "1.1.1.1"))
    end)

    it("honours the stored expiry even if the store kept the key", function()
      mod.ban("ip", "1.1.1.1", 60)
      mock.store["ban:ip:1.1.1.1"].expires = nil
      mock.advance(61)
      assert.is_nil(mod.banned("ip", "1.1.1.1"))
    end)

    it("uses ban_seconds when no duration is given, and logs the ban", function()
      local expiry = mod.ban("name", "eve")
      assert.equal(gw.now() + 600, expiry)
      assert.equal("warn", mock.last(mock.logs).level)
    end)

    it("unbans", function()
      mod.ban("ip", "1.1.1.1", 60)
      mod.unban("ip", "1.1.1.1")
      assert.is_nil(mod.banned("ip", "1.1.1.1"))
    end)

    it("rejects a bad kind", function()
      assert.has_error(function() mod.ban("email", "x@y", 1) end)
    end)

    it("limits connections per IP with rate_limited", function()
      mod = load({ connect_rate = 1, connect_burst = 2 })
      assert.is_true(mod.on_connect(mock.conn("a")))
      assert.is_true(mod.on_connect(mock.conn("b")))
      local ok, why = mod.on_connect(mock.conn("c"))
      assert.is_false(ok); assert.equal("rate_limited", why)
    end)
  end)

  describe("self_test", function()
    it("passes with the shipped settings", function()
      mock.install()
      assert.is_true(mock.load("moderation").self_test())
    end)

    it("rejects a bad word_action", function()
      mod = load({ word_action = "shout" })
      assert.has_error(function() mod.self_test() end)
    end)

    it("rejects a phrase in the word list", function()
      mod = load({ words = { "two words" } })
      assert.has_error(function() mod.self_test() end)
    end)
  end)
end)
