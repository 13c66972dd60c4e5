-- Specs that every script in scripts/ runs inside a sandbox like chatgw's (no io, debug,
-- coroutine, package, load/dofile, string.dump; os only time/clock/date; require only from the
-- flat scripts directory; strict globals), and that the hooks stay well inside the
-- instruction count of 1,000,000 (policy_budget's scale; chatgw's own guard is the 50 ms
-- policy_timeout_ms) on worst-case inputs.
local mock = dofile((debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./") .. "mock_gw.lua")

local BUDGET = 1000000

-- A fresh sandboxed environment with scripts/ as its only module source.
local function sandbox(gw)
  local loaded = {}
  local env = {
    assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs, pcall = pcall,
    xpcall = xpcall, select = select, tonumber = tonumber, tostring = tostring, type = type,
    rawequal = rawequal, rawget = rawget, rawset = rawset, rawlen = rawlen,
    setmetatable = setmetatable, getmetatable = getmetatable,
    math = math, table = table, utf8 = utf8,
    os = { time = os.time, clock = os.clock, date = os.date },
    gw = gw,
  }
  local str = {}
  for k, v in pairs(string) do if k ~= "dump" then str[k] = v end end
  env.string = str
  env._G = env
  env.require = function(name)
    if loaded[name] ~= nil then return loaded[name] end
    assert(type(name) == "string" and name:match("^[%w_%-]+$"), "require: bad module name")
    local path = mock.scripts .. name .. ".lua"
    local f = io.open(path, "r")
    if not f then error("module '" .. name .. "' not found in the scripts directory", 2) end
    f:close()
    local chunk = assert(loadfile(path, "t", env))
    local v = chunk(name)
    if v == nil then v = true end
    loaded[name] = v
    return v
  end
  -- Strict: reading or writing an undeclared global is an error.
  setmetatable(env, {
    __index = function(_, k) error("sandbox: global '" .. tostring(k) .. "' is not available", 2) end,
    __newindex = function(_, k) error("sandbox: scripts may not set global '" .. tostring(k) .. "'", 2) end,
  })
  return env
end

-- Runs fn under a count hook and returns the VM instructions it took (and its results).
local function cost(fn, ...)
  local n = 0
  debug.sethook(function() n = n + 1 end, "", 1)
  local r = table.pack(pcall(fn, ...))
  debug.sethook()
  assert(r[1], r[2])
  return n, table.unpack(r, 2, r.n)
end

local function script_files()
  local files = {}
  local p = io.popen('ls "' .. mock.scripts .. '"')
  for f in p:lines() do
    if f:match("%.lua$") then files[#files + 1] = f end
  end
  p:close()
  return files
end

describe("sandbox", function()
  local gw, policy

  before_each(function()
    gw = mock.install()
    policy = sandbox(gw).require("policy")
  end)

  it("loads policy.lua and runs self_test with only the sandbox's globals", function()
    assert.is_true(policy.self_test())
  end)

  it("keeps scripts/ flat and every file a Lua script", function()
    local files = script_files()
    assert.is_true(#files >= 5)
    for _, f in ipairs(files) do assert.is_nil(f:find("/"), f) end
  end)

  it("never mentions what the sandbox lacks", function()
    local forbidden = { "io%.", "os%.getenv", "os%.execute", "os%.exit", "os%.remove", "debug%.",
                        "coroutine%.", "string%.dump", "package%.", "loadstring", "dofile",
                        "loadfile", "%f[%w]load%s*%(", "setfenv", "collectgarbage" }
    for _, f in ipairs(script_files()) do
      local fh = assert(io.open(mock.scripts .. f))
      local src = fh:read("a")
      fh:close()
      -- strip comments so that documentation may name things
      src = src:gsub("%-%-%[%[.-%]%]", ""):gsub("%-%-[^\n]*", "")
      for _, pat in ipairs(forbidden) do
        assert.is_nil(src:find(pat), f .. " uses " .. pat)
      end
    end
  end)

  it("runs every hook end to end in the sandbox", function()
    local a = mock.conn("a1", { name = "Alice" })
    local b = mock.conn("b1", { name = "Bob" })
    assert.is_true(policy.on_connect(a))
    assert.is_true(policy.on_join(a, "lobby")); mock.join("lobby", "a1", "Alice")
    assert.is_true(policy.on_join(b, "lobby")); mock.join("lobby", "b1", "Bob")
    assert.is_true(policy.on_message(a, "lobby", { type = "msg", room = "lobby", text = "hi" }))
    assert.is_table(policy.on_message(a, "lobby", { type = "msg", room = "lobby", text = "/me waves" }))
    assert.is_true(policy.on_message(a, nil, { type = "dm", to = "b1", text = "psst" }))
    assert.is_false(policy.on_message(a, nil, { type = "rooms" }))
    assert.is_table(policy.on_message(a, "lobby", { type = "typing", room = "lobby" }))
    assert.is_false(policy.on_message(a, "lobby", { type = "msg", room = "lobby", text = "/kick bob" }))
    policy.on_leave(a, "lobby")
    policy.on_tick(gw.now())
  end)

  describe("instruction budget (worst cases stay under a fifth of " .. BUDGET .. ")", function()
    local limit = BUDGET / 5

    it("a 4096-byte message of one-letter words through the word filter", function()
      policy = mock.load("policy", { moderation = { words = { "a", "darn", "heck" }, max_text_chars = 5000 } })
      mock.join("lobby", "a1")
      local text = string.rep("a ", 2048)
      local n, res = cost(policy.on_message, mock.conn("a1"), "lobby", { type = "msg", room = "lobby", text = text })
      assert.is_table(res)
      assert.is_true(n < limit, "took " .. n)
    end)

    it("a 4096-byte run of one character", function()
      policy = mock.load("policy", { moderation = { max_text_chars = 5000 } })
      local n = cost(policy.on_message, mock.conn("a1"), "lobby",
                     { type = "msg", room = "lobby", text = string.rep("é", 2048) })
      assert.is_true(n < limit, "took " .. n)
    end)

    it("a join, a /kick and a dm in a room of 1000 members", function()
      mock.fill("lobby", 999, "m")
      mock.join("games", "a1"); mock.join("games", "m999")
      local a = mock.conn("a1")
      for i = 1, 15 do mock.join("r" .. i, "a1") ; gw.store.set("rooms:a1", (gw.store.get("rooms:a1") or "\n") .. "r" .. i .. "\n", 100) end
      local n = cost(policy.on_join, a, "lobby")
      assert.is_true(n < limit, "join took " .. n)
      mock.join("lobby", "a1")
      gw.store.set("owner:lobby", "a1", 100)
      n = cost(policy.on_message, a, "lobby", { type = "msg", room = "lobby", text = "/kick M998" })
      assert.is_true(n < limit, "kick took " .. n)
      n = cost(policy.on_message, a, nil, { type = "dm", to = "m999", text = "hi" })
      assert.is_true(n < limit, "dm took " .. n)
    end)

    it("the directory over 5000 rooms (gw.rooms itself is C in chatgw: not counted)", function()
      for i = 1, 5000 do mock.join("room" .. i, "x" .. i) end
      local host = cost(gw.rooms)
      local n = cost(policy.on_message, mock.conn("a1"), nil, { type = "rooms" }) - host
      assert.is_true(n < limit, "took " .. n)
      assert.equal(100, #mock.last(mock.sent).msg.rooms)
    end)
  end)
end)
