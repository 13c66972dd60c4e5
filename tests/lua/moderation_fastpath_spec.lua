-- Specs that moderation's cheaper per-message paths answer exactly what the straightforward
-- implementations they replaced answer:
--   * collapse_runs: ASCII text goes to gw.byte_runs (here the mock's; tests/unit/policy.c
--     checks chatgw's own against the pattern search); compared with the old function (the
--     search on every text) on random and adversarial texts, every max from 1 to 9, ascii given
--     or not.
--   * the repetition check, kept in the VM beside the connection's table: compared, message
--     by message, with a plain per-connection record (forgotten connections, new conn tables,
--     the window's edge).
local mock = dofile((debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./") .. "mock_gw.lua")

local find, sub, rep = string.find, string.sub, string.rep

-- The old collapse_runs, verbatim but for the pattern tables.
local CHAR = "[\0-\127\194-\244][\128-\191]*"
local function old_collapse_runs(text, max, ascii)
  if not max or max < 1 or #text <= max then return text end
  if ascii == nil then ascii = utf8.len(text) == #text end
  local pat = "(" .. (ascii and "." or CHAR) .. ")" .. rep("%1", max)
  local s, e, c = find(text, pat)
  if not s then return text end
  local parts, n, pos = {}, 0, 1
  repeat
    local len = #c
    while sub(text, e + 1, e + len) == c do e = e + len end
    n = n + 1
    parts[n] = sub(text, pos, s - 1) .. rep(c, max)
    pos = e + 1
    s, e, c = find(text, pat, pos)
  until not s
  parts[n + 1] = sub(text, pos)
  return table.concat(parts)
end

-- The old normalize.
local function old_normalize(text)
  local s = string.gsub(string.lower(text), "%s+", " ")
  return (string.match(s, "^ ?(.-) ?$"))
end

local seed = 4242
local function rnd(n) seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n + 1 end

describe("moderation fast paths", function()
  local mod

  before_each(function()
    mock.install()
    mod = mock.load("moderation", { moderation = {
      conn_rate = false, ip_rate = false, words = {}, max_text_chars = 100000,
      max_char_run = 4, repeat_limit = 3, repeat_window = 300,
      strike_codes = {},
    } })
  end)

  describe("collapse_runs", function()
    local function same(text)
      for max = 1, 9 do
        for _, ascii in ipairs({ "nil", true, false }) do
          local a = ascii
          if a == "nil" then a = nil end
          if a ~= false or max <= 4 then   -- the UTF-8 path is unchanged: a few maxes suffice
            local want = old_collapse_runs(text, max, a)
            assert.equal(want, mod.collapse_runs(text, max, a),
                         ("%q max %d ascii %s"):format(text, max, tostring(ascii)))
          end
        end
      end
    end

    it("matches the old function on runs of every length at every offset", function()
      local filler = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKL"
      for len = 1, 12 do
        for at = 1, 40 do
          local text = sub(filler, 1, at - 1) .. rep("z", len) .. sub(filler, at, at + 20)
          same(text)
          same(rep("z", len) .. text)                      -- two runs
          same(text .. rep(".", len))
        end
      end
    end)

    it("matches the old function on random texts", function()
      local alphabets = {
        { "a", "a", "a", "b", " ", "!" },
        { "a", "b", "c", "d", "e", "f", "g", "aa", "aaa", "aaaa" },
        { "x", "é", "éé", "\0", "\255", "\128", "ab", " " },
        { "0", "1", "00000", "1", ":" },
      }
      for _ = 1, 1500 do
        local alpha = alphabets[rnd(#alphabets)]
        local parts = {}
        for i = 1, rnd(40) - 1 do parts[i] = alpha[rnd(#alpha)] end
        same(table.concat(parts))
      end
    end)

    it("still errors on a max that is no integer, with or without a run", function()
      assert.has_error(function() mod.collapse_runs("abcdefgh", 4.5) end)
      assert.has_error(function() mod.collapse_runs("aaaaaaaa", 4.5) end)
      assert.equal("aaaa", mod.collapse_runs("aaaaaaaa", 4.0))
    end)
  end)

  describe("the repetition check", function()
    it("counts as a plain record per connection: text, count, last time", function()
      local texts = { "hi", "Hi", "hi ", "  HI", "yo", "yo  yo", "a\tb", "a b", "", " ", "3", "1\n2",
                      "sooooooo", "soooo", "SOOOOO" }
      local ids = { "c1", "c2", "c3" }
      local conns, model = {}, {}
      for _, id in ipairs(ids) do conns[id] = mock.conn(id) end
      for step = 1, 6000 do
        local id = ids[rnd(#ids)]
        local r = rnd(100)
        if r <= 3 then
          mod.forget(conns[id])                              -- left its last room
          model[id] = nil
        elseif r <= 5 then
          conns[id] = mock.conn(id)                          -- chatgw hands a new conn table
          model[id] = nil
        elseif r <= 6 then
          mock.advance(rnd(2) == 1 and 299 or 300)           -- just inside, or past, the window
        end
        local text = texts[rnd(#texts)]
        local norm = old_normalize(old_collapse_runs(text, 4))
        local m = model[id]
        local count = 1
        if m and m.norm == norm and mock.clock - m.time < 300 then count = m.count + 1 end
        model[id] = { norm = norm, count = count, time = mock.clock }
        local want_code = count >= 3 and "repeated" or nil
        local code = mod.check(conns[id], "lobby", { type = "msg", room = "lobby", text = text })
        assert.equal(want_code, code, ("step %d %s %q (count %d)"):format(step, id, text, count))
        if rnd(4) == 1 then mock.advance(1) end
      end
    end)

    it("keeps nothing in gw.store", function()
      local c = mock.conn("c1")
      for _ = 1, 3 do mod.check(c, "lobby", { type = "msg", room = "lobby", text = "same" }) end
      assert.same({}, mock.store)
    end)
  end)
end)
