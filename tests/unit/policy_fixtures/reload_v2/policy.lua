-- Second version for the reload test: reads what version one stored.
return {
  on_message = function(_, _, msg)
    return { value = gw.store.get(msg.key), version = gw.version }
  end,
}
