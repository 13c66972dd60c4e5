-- Specs that the default policy does work linear in the length of what clients send.
--
-- A client may not stall chatgw through the policy: every pattern applied to client text (msg
-- and dm text, slash commands, names, room names, dm/typing fields, query values, headers, JWT
-- claims) and every loop over it must cost O(length). Lua's backtracking matcher makes that easy
-- to lose: "^/(%S*)%s*(.-)%s*$" (routing.parse_command until it was rewritten) took a few
-- milliseconds on a 2 KB "/x a \t \t ... b", growing with the square of the length.
--
-- How it is measured, without wall-clock assertions (the project allows none):
--   * Lua-level work: the VM instructions of the hook call, counted with a debug count hook.
--   * Pattern work: string.find/match/gmatch/gsub run in C, where neither the count hook nor
--     chatgw's policy_budget sees it. So while a hook runs, this spec records every call to
--     them (wrappers installed before the scripts load, so their cached locals get them too),
--     and afterwards replays each call through pattern_cost.lua, a step-counting port of Lua
--     5.4's matcher (same backtracking order as lstrlib.c). Each replay must give the result
--     the real call gave, so the port cannot drift from what it stands for.
--   * Each case feeds one input shape, at n, 2n and 4n bytes, into one client-controlled field
--     (shapes that trouble backtracking: long runs of whitespace between other characters,
--     runs of one character, many short words, long commands, invalid UTF-8, NUL bytes, ...).
--     Linear work at most doubles when the input doubles (a + 2bn <= 2(a + bn)); quadratic
--     work nearly quadruples. Both counts must grow by less than GROWTH (2.5) per doubling.
--   * The check has teeth: with the old parse_command swapped back in, the same measure flags
--     the "/x a \t \t ... b" case (growth > 3.5 per doubling).
-- The sizes stay within what the shipped settings let through (max_text_chars 2000), so the
-- cases reach the code a real client reaches.
--
-- Also here: routing.parse_command gives the same results as the old implementation on edge
-- cases, on every short string over a small alphabet, and on random strings.
local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./"
local mock = dofile(here .. "mock_gw.lua")
local cost = dofile(here .. "pattern_cost.lua")

local GROWTH = 2.5
-- LINEAR_SPEC_VERBOSE=1 prints every case's counts (information only, never asserted).
local VERBOSE = os.getenv("LINEAR_SPEC_VERBOSE") ~= nil
local SIZES = { 400, 800, 1600 }

-- The implementation routing.parse_command replaced (quadratic; kept as the reference).
local function old_parse_command(text)
  if string.sub(text, 1, 1) ~= "/" or string.sub(text, 2, 2) == "/" then return nil end
  local cmd, rest = string.match(text, "^/(%S*)%s*(.-)%s*$")
  return string.lower(cmd or ""), rest or ""
end

describe("routing.parse_command", function()
  local routing

  before_each(function()
    mock.install()
    routing = mock.load("routing")
  end)

  local function same_as_old(text)
    local a1, a2 = old_parse_command(text)
    local b1, b2 = routing.parse_command(text)
    assert.equal(a1, b1, string.format("cmd of %q", text))
    assert.equal(a2, b2, string.format("args of %q", text))
  end

  it("gives the old results on edge cases", function()
    local cases = {
      "", "/", "//", "//x", "///", "/ ", "/  ", "/\t", "/ \t \n", "/x", "/X", "/x ", "/x  y",
      "/NICK  Bob  ", "/nick Bob", "/me \t waves \t ", "/me\twaves", "/me\nwaves\n", "/nick\0x",
      "/nick \0", "/\0", "/é ü", "/É", "/x \194\160y\194\160", "/x a\nb\n", " /x", "x/", "/x\r\n",
      "/\v\f", "/\v\fx\v\f", "/a/b c", "/ leading", "/x //y", "/x" .. string.rep(" ", 50),
      string.rep("/", 5), "/x a" .. string.rep(" \t", 20) .. "b", "/KICK Some Body ",
      "/me  two  spaces  inside  ", "/\255\254 \255", "/x \128\129", "hello", "a/b", "\t/x",
    }
    for _, text in ipairs(cases) do same_as_old(text) end
  end)

  it("gives the old results on every string of up to 6 characters over / space tab a B newline", function()
    local alphabet = { "/", " ", "\t", "a", "B", "\n" }
    local function all(prefix, depth)
      same_as_old(prefix)
      if depth == 0 then return end
      for _, c in ipairs(alphabet) do all(prefix .. c, depth - 1) end
    end
    all("", 6)
  end)

  it("gives the old results on random strings", function()
    local alphabet = { "/", " ", "\t", "\n", "\r", "\v", "\f", "a", "B", "\0", "é", "\194\160",
                       "x", "\255", "nick", "me", "  ", "\t\t" }
    local seed = 12345
    local function rnd(m)                                 -- a fixed sequence on every run
      seed = (seed * 1103515245 + 12345) % 2147483648
      return seed % m + 1
    end
    for _ = 1, 20000 do
      local t = { rnd(3) > 1 and "/" or "" }
      for i = 1, rnd(16) - 1 do t[#t + 1] = alphabet[rnd(#alphabet)] end
      same_as_old(table.concat(t))
    end
  end)

  it("still passes routing's self_test", function()
    assert.is_true(routing.self_test())
  end)
end)

describe("pattern_cost (the step-counting matcher)", function()
  it("agrees with string.find/match/gmatch/gsub", function()
    local pats = { "^/(%S*)%s*(.-)%s*$", "^/(%S*)%s*", "^.*%S", "%s+", "[%w_\128-\255]+",
                   "([\0-\127\194-\244][\128-\191]*)%1%1%1%1", "(.)%1%1", "^/[Nn][Ii][Cc][Kk]%f[%s\0]",
                   "[%c\127]", "\194[\128-\159]", "%S", "^[%w][%w_.%-]*$", "^(%d+) (%d+)$", "[^\n]+",
                   "%bxy", "()a()", "a?b", "a-b", "^(a+)(b*)$", "%f[%w]%w+", "[%]]", "[a-]", "x$y",
                   "^%^", "a.-b.-c", "%%", "[%a%d]+", "%u", "%p+" }
    local alphabet = { "a", "b", "c", "x", "y", " ", "\t", "/", "%", "]", "\0", "é", "\128", "1", "N",
                       "ick", "$", "^" }
    local seed = 99
    local function rnd(m)
      seed = (seed * 1103515245 + 12345) % 2147483648
      return seed % m + 1
    end
    for _ = 1, 5000 do
      local t = {}
      for i = 1, rnd(13) - 1 do t[i] = alphabet[rnd(#alphabet)] end
      local s, p = table.concat(t), pats[rnd(#pats)]
      local init = rnd(3) == 1 and rnd(20) - 6 or nil
      local r = table.pack(string.find(s, p, init))
      local _, i, j, caps = cost.find(s, p, init)
      assert.equal(r[1], i)
      assert.equal(r[2], j)
      for k = 3, r.n do assert.equal(r[k], caps[k - 2]) end
      local m = table.pack(string.match(s, p, init))
      local _, mc = cost.match(s, p, init)
      if m[1] == nil then assert.is_nil(mc) else assert.same({ table.unpack(m, 1, m.n) }, mc) end
      local _, n = string.gsub(s, p, "")
      assert.equal(n, select(2, cost.gsub(s, p)))
      local items = 0
      for _ in string.gmatch(s, p, init) do items = items + 1 end
      assert.equal(items, select(2, cost.gmatch(s, p, init)))
      local q = alphabet[rnd(#alphabet)] .. alphabet[rnd(#alphabet)]
      local a, b = string.find(s, q, init, true)
      local _, c, d = cost.find(s, q, init, true)
      assert.equal(a, c)
      assert.equal(b, d)
    end
  end)

  it("counts a quadratic pattern as quadratic and its linear rewrite as linear", function()
    local function text(n) return "/x a" .. string.rep(" \t", n) .. "b  " end
    local q1, q2 = cost.match(text(200), "^/(%S*)%s*(.-)%s*$"), cost.match(text(400), "^/(%S*)%s*(.-)%s*$")
    assert.is_true(q2 / q1 > 3.5, q2 / q1)
    local function linear(t)
      local s1, _, e = cost.find(t, "^/(%S*)%s*")
      return s1 + cost.match(t, "^.*%S", e + 1)
    end
    local l1, l2 = linear(text(200)), linear(text(400))
    assert.is_true(l2 / l1 < 2.1, l2 / l1)
  end)
end)

describe("the default policy's work on client input", function()
  local real = { find = string.find, match = string.match, gmatch = string.gmatch, gsub = string.gsub }
  local log                                   -- the pattern calls of the hook call being measured
  local seen = {}                             -- every pattern replayed, over all cases

  setup(function()
    string.find = function(s, p, init, plain)
      local r = table.pack(real.find(s, p, init, plain))
      if log then log[#log + 1] = { kind = "find", s = s, p = p, init = init, plain = plain, r = r } end
      return table.unpack(r, 1, r.n)
    end
    string.match = function(s, p, init)
      local r = table.pack(real.match(s, p, init))
      if log then log[#log + 1] = { kind = "match", s = s, p = p, init = init, r = r } end
      return table.unpack(r, 1, r.n)
    end
    string.gsub = function(s, p, repl, n)
      local r = table.pack(real.gsub(s, p, repl, n))
      if log then log[#log + 1] = { kind = "gsub", s = s, p = p, max = n, r = r } end
      return table.unpack(r, 1, r.n)
    end
    string.gmatch = function(s, p, init)
      local it = real.gmatch(s, p, init)
      if not log then return it end
      local rec = { kind = "gmatch", s = s, p = p, init = init, items = 0, done = false }
      log[#log + 1] = rec
      return function()
        local r = table.pack(it())
        if r[1] == nil then rec.done = true else rec.items = rec.items + 1 end
        return table.unpack(r, 1, r.n)
      end
    end
  end)

  teardown(function()
    for k, f in pairs(real) do string[k] = f end
  end)

  -- The steps of one recorded call; checks that the port gives the real call's result.
  local function replay(c)
    local s = tostring(c.s)
    seen[c.p] = true
    if c.kind == "find" then
      local steps, i, j, caps = cost.find(s, c.p, c.init, c.plain)
      assert(i == c.r[1] and j == c.r[2], "pattern_cost disagrees on find " .. string.format("%q", c.p))
      for k = 3, c.r.n do assert(caps[k - 2] == c.r[k], "pattern_cost disagrees on a capture of " .. c.p) end
      return steps
    elseif c.kind == "match" then
      local steps, caps = cost.match(s, c.p, c.init)
      assert((caps == nil) == (c.r[1] == nil), "pattern_cost disagrees on match " .. string.format("%q", c.p))
      for k = 1, caps and c.r.n or 0 do assert(caps[k] == c.r[k], "pattern_cost disagrees on match " .. c.p) end
      return steps
    elseif c.kind == "gsub" then
      local steps, n = cost.gsub(s, c.p, c.max)
      assert(n == c.r[2], "pattern_cost disagrees on gsub " .. string.format("%q", c.p))
      return steps
    else
      local steps, items = cost.gmatch(s, c.p, c.init, not c.done and c.items or nil)
      assert(items == c.items, "pattern_cost disagrees on gmatch " .. string.format("%q", c.p))
      return steps
    end
  end

  -- VM instructions and pattern steps of fn().
  local function measure(fn)
    log = {}
    local instr = 0
    debug.sethook(function() instr = instr + 1 end, "", 1)
    local ok, err = pcall(fn)
    debug.sethook()
    local calls = log
    log = nil
    assert(ok, err)
    local steps = 0
    for _, c in ipairs(calls) do steps = steps + replay(c) end
    return instr, steps
  end

  -- Settings: "shipped" as they ship; "all_on" with the word filter, password and JWT rooms and
  -- any room name chatgw accepts, and runs of one character kept (max_char_run = false), so
  -- that more code sees the input as sent (the shipped max_char_run shortens "/me x      " to
  -- "/me x    " before routing sees it).
  local CONFIGS = {
    shipped = nil,
    all_on = {
      moderation = { words = { "darn", "a", "heck" }, max_char_run = false },
      rooms = { name_pattern = false, jwt_secret = "k", jwt_rooms = { "^team%-" },
                protected = { vip = { password = "pw" } } },
    },
  }

  -- A fresh gateway with alice (owner) and bob in the lobby; returns the policy and alice.
  local function fresh(config)
    mock.install()
    local policy = mock.load("policy", CONFIGS[config])
    local alice = mock.conn("a1", { name = "Alice" })
    local bob = mock.conn("b1", { name = "Bob" })
    assert.is_true(policy.on_join(alice, "lobby")); mock.join("lobby", "a1", "Alice")
    assert.is_true(policy.on_join(bob, "lobby")); mock.join("lobby", "b1", "Bob")
    return policy, alice
  end

  -- Input shapes: n -> a string of about n bytes.
  local SHAPES = {
    cmd_spaces = function(n) return "/x a" .. string.rep(" \t", n // 2) .. "b" end,
    cmd_trailing = function(n) return "/me x" .. string.rep(" ", n) end,
    cmd_inner_run = function(n) return "/me a" .. string.rep(" ", n) .. "b" end,
    cmd_inner_mixed = function(n) return "/kick a" .. string.rep(" \t\n\r\v\f", n // 6) .. "b " end,
    cmd_long_name = function(n) return "/" .. string.rep("a", n) .. " x" end,
    cmd_leading = function(n) return "/nick" .. string.rep(" ", n) .. "Bob" end,
    cmd_words = function(n) return "/me " .. string.rep("a ", n // 2) end,
    cmd_kick = function(n) return "/kick " .. string.rep("\t", n) .. "x" .. string.rep(" ", 10) end,
    cmd_me_padded = function(n) return "/me " .. string.rep(" \t", n // 4) .. "x" .. string.rep(" ", n // 2) end,
    cmd_nul = function(n) return "/NICK" .. string.rep("\0", n) end,
    nick_long = function(n) return "/nick " .. string.rep("a", n) end,
    nick_words = function(n) return "/nick " .. string.rep("a ", n // 2) end,
    kick_long = function(n) return "/kick " .. string.rep("Bo", n // 2) end,
    slashes = function(n) return string.rep("/", n) end,
    double_slash = function(n) return "//" .. string.rep(" ", n) .. "x" end,
    spaces_then_x = function(n) return string.rep(" ", n) .. "x" end,
    mixed_space = function(n) return string.rep(" \t\n", n // 3) .. "x" end,
    space_pairs = function(n) return string.rep("  x", n // 3) end,
    one_char = function(n) return string.rep("a", n) end,
    pairs = function(n) return string.rep("ab", n // 2) end,
    near_runs = function(n) return string.rep("aaaab", n // 5) end,
    utf8_run = function(n) return string.rep("é", n // 2) end,
    utf8_near_runs = function(n) return string.rep("éééé.", n // 9) end,
    nbsp = function(n) return string.rep("\194\160", n // 2) .. "x" end,
    continuation = function(n) return "a" .. string.rep("\128", n) end,
    lead_continuation = function(n) return string.rep("\194" .. string.rep("\128", 7), n // 8) end,
    words = function(n) return string.rep("a ", n // 2) end,
    masked_words = function(n) return string.rep("darn ", n // 5) end,
    long_word = function(n) return string.rep("xy", n // 2) end,
    upper_words = function(n) return string.rep("DaRn! ", n // 6) end,
  }

  -- Cases: name -> function(n) returning the call to measure (state prepared outside it).
  local CASES = {}
  for name, shape in pairs(SHAPES) do
    for _, config in ipairs({ "shipped", "all_on" }) do
      CASES["msg text " .. name .. " (" .. config .. ")"] = function(n)
        local policy, alice = fresh(config)
        local msg = { type = "msg", room = "lobby", text = shape(n) }
        return function() mock.on_message(policy, alice, "lobby", msg) end
      end
    end
    CASES["dm text " .. name] = function(n)
      local policy, alice = fresh("all_on")
      local msg = { type = "dm", to = "b1", text = shape(n) }
      return function() mock.on_message(policy, alice, nil, msg) end
    end
    CASES["dm to " .. name] = function(n)
      local policy, alice = fresh("shipped")
      local msg = { type = "dm", to = shape(n), text = "hi" }
      return function() mock.on_message(policy, alice, nil, msg) end
    end
    CASES["typing room " .. name] = function(n)
      local policy, alice = fresh("shipped")
      local msg = { type = "typing", room = shape(n) }
      return function() mock.on_message(policy, alice, nil, msg) end
    end
    CASES["connect name, ip, query, header " .. name] = function(n)
      local policy = fresh("all_on")
      local s = shape(n)
      local conn = mock.conn("c9", { name = s, ip = s, query = { name = s, room = s, token = s },
                                     headers = { ["user-agent"] = s, ["x-forwarded-for"] = s } })
      return function() policy.on_connect(conn) end
    end
    for _, config in ipairs({ "shipped", "all_on" }) do
      CASES["join room name " .. name .. " (" .. config .. ")"] = function(n)
        local policy = fresh(config)
        local conn = mock.conn("c9")
        local room = shape(n)
        return function() policy.on_join(conn, room) end
      end
    end
    CASES["join with password and token " .. name] = function(n)
      local policy = fresh("all_on")
      local s = shape(n)
      local conn = mock.conn("c9", { query = { password = s, token = s } })
      return function() policy.on_join(conn, "vip"); policy.on_join(conn, "team-x") end
    end
  end
  CASES["join with a JWT of many room claims"] = function(n)
    local policy = fresh("all_on")
    local claims = { room = {}, exp = "9" .. string.rep("0", n), nbf = string.rep(" ", n) .. "1" }
    for i = 1, n // 4 do claims.room[i] = "r" .. i end
    mock.add_jwt("tok", "k", claims)
    local conn = mock.conn("c9", { query = { token = "tok" } })
    return function() policy.on_join(conn, "team-x") end
  end
  CASES["join with a JWT room claim of every shape"] = function(n)
    local policy = fresh("all_on")
    mock.add_jwt("tok", "k", { room = SHAPES.cmd_spaces(n) })
    local conn = mock.conn("c9", { query = { token = "tok" } })
    return function() policy.on_join(conn, "team-x") end
  end

  local function growth(a, b) return (b + 1) / (a + 1) end

  -- { instr = {..}, steps = {..} } over SIZES.
  local function profile(case)
    local out = { instr = {}, steps = {} }
    for i, n in ipairs(SIZES) do
      out.instr[i], out.steps[i] = measure(case(n))
    end
    return out
  end

  local names = {}
  for name in pairs(CASES) do names[#names + 1] = name end
  table.sort(names)

  it("grows at most linearly with the input, in every case (" .. #names .. " cases)", function()
    local bad = {}
    for _, name in ipairs(names) do
      local p = profile(CASES[name])
      if VERBOSE then
        print(string.format("%-58s instr %s  steps %s", name, table.concat(p.instr, " "),
                            table.concat(p.steps, " ")))
      end
      for _, what in ipairs({ "instr", "steps" }) do
        local v = p[what]
        for i = 2, #v do
          local g = growth(v[i - 1], v[i])
          if g >= GROWTH then
            bad[#bad + 1] = string.format("%s: %s %d -> %d (x%.2f) at %d bytes", name, what,
                                          v[i - 1], v[i], g, SIZES[i])
          end
        end
      end
    end
    assert.same({}, bad)
    local n = 0
    for _ in pairs(seen) do n = n + 1 end
    assert.is_true(n >= 8, "only " .. n .. " distinct patterns reached: the cases miss the code")
  end)

  it("flags the old parse_command (the check has teeth)", function()
    local case = CASES["msg text cmd_spaces (shipped)"]
    local function with_old(n)
      local call = case(n)
      require("routing").parse_command = old_parse_command
      return call
    end
    local p = profile(with_old)
    for i = 2, #SIZES do
      assert.is_true(growth(p.steps[i - 1], p.steps[i]) > 3.5,
                     string.format("steps %d -> %d", p.steps[i - 1], p.steps[i]))
    end
    local now = profile(case)
    assert.is_true(now.steps[#SIZES] * 20 < p.steps[#SIZES],
                   string.format("new %d, old %d steps", now.steps[#SIZES], p.steps[#SIZES]))
  end)
end)
