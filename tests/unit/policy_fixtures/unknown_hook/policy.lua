return {
  on_mesage = function(_, _, msg) return msg end,
}
