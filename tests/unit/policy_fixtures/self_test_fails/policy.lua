return {
  on_message = function(_, _, msg) return msg end,
  self_test = function()
    local function check(v) if not v then error("self test says no") end end
    check(1 + 1 == 3)
  end,
}
