-- tests/bench/secrets.lua: the benchmarks' limits over the default policy (run.mjs,
-- callgrind.sh and scale.sh copy it next to scripts/*.lua). secrets.lua is merged over
-- settings.lua by design; only flood limits and room capacities are raised, so that benchmark
-- traffic is not refused. Moderation (word filter, run collapsing, repeat check, strikes) still
-- runs on every message.
return {
  rooms = { capacity = {}, capacity_default = 1000000 },
  moderation = { conn_rate = 1e9, conn_burst = 1e9, ip_rate = 1e9, ip_burst = 1e9, connect_rate = false },
}
