#!/usr/bin/env node
// run.mjs: the driver of `make bench` (tests/bench/README.md).
//
// For every scenario of issue 7 it starts each server fresh (chatgw from build-bench, and the
// peers: Node ws, uWebSockets.js, nginx nchan / Lua echo, libwebsockets' mirror test server),
// runs build-bench/tests/bench/chatgw-bench against it with the same messages, stops it, and
// moves on to the next target: round 1 runs every scenario against every target (A B C ...),
// round 2 does it again, and so on, so that noise on this shared machine spreads over all of
// them. It takes the median of the rounds, prints a table with ratios and writes BENCHMARKS.md.
// Loopback only; every run is bounded by the generator's own limits and a kill timer here,
// and the whole driver by BENCH_BUDGET_S (rounds that would not fit are skipped, and the
// report says so).
//
// Environment: BENCH_RUNS (rounds, default 3), BENCH_BUDGET_S (default 540),
// BENCH_QUICK=1 (short phases, one round: a smoke test), BENCH_ONLY=scenario,scenario,
// BENCH_TARGETS=target,target (e.g. chatgw,chatgw-nopolicy: chatgw alone, no peer needed),
// BENCH_OUT (default BENCHMARKS.md in the repository root; "-" = do not write),
// BENCH_REDIS (redis-server for the "redis" scenario, default /usr/bin/redis-server).
import { spawn, spawnSync, execFileSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { HERE, ROOT, BUILD, GEN, GW, portFinder, stop, runGen, fmtN, median, sleep } from "./bench_lib.mjs";

const WORK = path.join(BUILD, "bench-work");
const QUICK = process.env.BENCH_QUICK === "1";
const RUNS = Number(process.env.BENCH_RUNS || (QUICK ? 1 : 3));
const BUDGET_S = Number(process.env.BENCH_BUDGET_S || 540);
const ONLY = (process.env.BENCH_ONLY || "").split(",").filter(Boolean);
const ONLY_TARGETS = (process.env.BENCH_TARGETS || "").split(",").filter(Boolean);
const OUT = process.env.BENCH_OUT || path.join(ROOT, "BENCHMARKS.md");
const REDIS = process.env.BENCH_REDIS || (fs.existsSync("/usr/bin/redis-server") ? "/usr/bin/redis-server" : "redis-server");
const T0 = Date.now();
const elapsed = () => (Date.now() - T0) / 1000;

// ---- limits of this machine ----
function nofileHard() {
  try { return Number(execFileSync("sh", ["-c", "ulimit -Hn"]).toString().trim()) || 1024; } catch { return 1024; }
}
const NOFILE = nofileHard();
const IDLE_WANT = 20000;
// both the server and the generator hold one descriptor per connection plus a few of their own
const IDLE_CONNS = Math.min(IDLE_WANT, Math.floor((NOFILE - 150) / 10) * 10);
const notes = [];
if (IDLE_CONNS < IDLE_WANT && (!ONLY.length || ONLY.includes("idle")))
  notes.push(`ulimit -n is ${NOFILE} (hard) and cannot be raised here (setrlimit is refused even as root), so the idle scenario holds ${IDLE_CONNS} connections instead of ${IDLE_WANT}; both the server and the generator need one descriptor per connection.`);

// ---- policy directories for chatgw ----
function preparePolicies() {
  fs.rmSync(WORK, { recursive: true, force: true });
  fs.mkdirSync(WORK, { recursive: true });
  const def = path.join(WORK, "policy-default");
  fs.mkdirSync(def);
  for (const f of fs.readdirSync(path.join(ROOT, "scripts")))
    if (f.endsWith(".lua")) fs.copyFileSync(path.join(ROOT, "scripts", f), path.join(def, f));
  // The default policy as shipped, with the benchmarks' limits (secrets.lua beside this file).
  fs.copyFileSync(path.join(HERE, "secrets.lua"), path.join(def, "secrets.lua"));
  const none = path.join(WORK, "policy-none");
  fs.mkdirSync(none);
  fs.writeFileSync(path.join(none, "policy.lua"), "-- no hooks at all: the policy-overhead baseline\nreturn {}\n");
  return { def, none };
}

// ---- targets ----
const gwHelp = fs.existsSync(GW) ? execFileSync(GW, ["--help"]).toString() : "";
function gwArgs(port, scripts) {
  const a = ["serve", "--listen", `127.0.0.1:${port}`, "--echo", "true", "--log-level", "warn",
    "--scripts-dir", scripts, "--max-connections", "100000", "--max-connections-per-ip", "100000",
    "--rate-msgs-per-sec", "1000000", "--rate-burst", "1000000", "--max-room-members", "100000",
    "--max-rooms-per-conn", "16"];
  if (gwHelp.includes("--accept-rate-per-ip")) a.push("--accept-rate-per-ip", "0");
  return a;
}
let POL;
const CHAT = "/ws?room={room}&name=b{conn}";
// A target's start(port, run, aux) gives [cmd, args, opts] for one server process; with
// `replicas: N` runOne starts N of them on N ports (the generator spreads its connections over
// them with --ports), and with `redis: true` it first starts a fresh redis-server of its own
// (aux.redisPort) and stops it after the run.
const redisArgs = (port, aux) => [...gwArgs(port, POL.def), "--redis-url", `redis://127.0.0.1:${aux.redisPort}/0`];
const TARGETS = {
  "chatgw-redis-1": { label: "chatgw, 1 replica + Redis", redis: true, replicas: 1,
    start: (port, run, aux) => [GW, redisArgs(port, aux)], path: { room: CHAT } },
  "chatgw-redis-3": { label: "chatgw, 3 replicas + Redis", redis: true, replicas: 3,
    start: (port, run, aux) => [GW, redisArgs(port, aux)], path: { room: CHAT } },
  chatgw: { label: "chatgw", start: (port) => [GW, gwArgs(port, POL.def)], path: { echo: "/echo", room: CHAT } },
  "chatgw-nopolicy": { label: "chatgw, no hooks", start: (port) => [GW, gwArgs(port, POL.none)], path: { room: CHAT } },
  // shadow mode's cost (docs/policy-rollout.md): the default policy with a copy of itself as the
  // candidate, so every hook runs twice and every decision is compared (no diffs)
  "chatgw-shadow": { label: "chatgw, shadow candidate", path: { room: CHAT },
    start: (port) => [GW, [...gwArgs(port, POL.def), "--policy-candidate-dir", POL.def, "--policy-candidate-mode", "shadow"]] },
  "chatgw-reload": {
    label: "chatgw, reload every 1 s",
    start: (port, run) => {
      const dir = path.join(WORK, `policy-reload-${run}`);
      fs.cpSync(POL.def, dir, { recursive: true });
      return [GW, gwArgs(port, dir), { reloadFile: path.join(dir, "policy.lua") }];
    },
    path: { room: CHAT },
  },
  "chatgw-workers-2": { label: "chatgw, workers=2", start: (port) => [GW, [...gwArgs(port, POL.def), "--workers", "2"]], path: { room: CHAT } },
  "chatgw-deflate": { label: "chatgw, permessage-deflate", start: (port) => [GW, gwArgs(port, POL.def)], path: { room: CHAT }, gen: ["--deflate"] },
  "chatgw-plain": { label: "chatgw, no deflate", start: (port) => [GW, gwArgs(port, POL.def)], path: { room: CHAT } },
  ws: { label: "Node ws", start: (port) => [process.execPath, [path.join(HERE, "peers/ws-server.mjs"), String(port)]], path: { echo: "/echo", room: CHAT } },
  uws: { label: "uWS.js", start: (port) => [process.execPath, [path.join(HERE, "peers/uws-server.mjs"), String(port)]], path: { echo: "/echo", room: CHAT } },
  nginx: {
    label: "nginx (Lua echo / nchan)",
    start: (port) => {
      const prefix = path.join(WORK, `nginx-${port}`);
      fs.rmSync(prefix, { recursive: true, force: true });
      fs.mkdirSync(prefix, { recursive: true });
      const conf = fs.readFileSync(path.join(HERE, "peers/nginx.conf.in"), "utf8")
        .replaceAll("@PREFIX@", prefix).replaceAll("@PORT@", String(port));
      fs.writeFileSync(path.join(prefix, "nginx.conf"), conf);
      return ["nginx", ["-p", prefix, "-c", path.join(prefix, "nginx.conf"), "-e", path.join(prefix, "error.log")]];
    },
    path: { echo: "/echo", room: "/ws?room={room}", idle: "/ws?room={room}" },
  },
  lws: {
    label: "libwebsockets mirror",
    start: (port) => ["libwebsockets-test-server", [`--port=${port}`, "--interface=lo", "-d", "1"]],
    // the mirror protocol keys instances by ?mirror= and allows at most 10 of them
    path: { room: "/?mirror={room}", idle: "/?mirror=idle" },
    gen: ["--protocol", "lws-mirror-protocol"],
  },
};

// ---- scenarios ----
const D = QUICK ? 0.6 : 1.5; // seconds per measured phase
const SCENARIOS = [
  { id: "echo", title: "1. echo, 100 connections, 64 B and 1 KiB", kind: "echo",
    targets: ["chatgw", "ws", "uws", "nginx"],
    gen: ["--mode", "echo", "--conns", "100", "--phases", `flat@64:${D},flat@1024:${D}`] },
  { id: "room", title: "2. one room, 1000 members, 10 publishers", kind: "room",
    targets: ["chatgw", "ws", "uws", "nginx", "lws"],
    gen: ["--mode", "room", "--conns", "1000", "--publishers", "10", "--window", "8", "--src-addrs", "4",
      "--phases", `flat:${D},frac=0.5:${D},rate=100:${D}`] },
  { id: "room-variants", title: "5-7. policy, reload, deflate (scenario 2, flat out)", kind: "room",
    targets: ["chatgw-nopolicy", "chatgw-reload", "chatgw-deflate", "chatgw-plain"],
    gen: ["--mode", "room", "--conns", "1000", "--publishers", "10", "--window", "8", "--src-addrs", "4",
      "--phases", `flat:${D}`],
    // chatgw compresses frames of 256 bytes and more, once per broadcast: deflate runs at 1 KiB
    extra: { "chatgw-reload": ["--phases", `flat:${QUICK ? 2.5 : 4}`, "--reload-ms", "1000"],
      "chatgw-deflate": ["--phases", `flat@1024:${D}`], "chatgw-plain": ["--phases", `flat@1024:${D}`] } },
  { id: "rooms", title: "3. 1000 rooms of 10 members", kind: "room",
    targets: ["chatgw", "chatgw-nopolicy", "chatgw-shadow", "ws", "uws", "nginx"],
    gen: ["--mode", "rooms", "--conns", "10000", "--members", "10", "--publishers", "1", "--window", "8",
      "--src-addrs", "8", "--phases", `flat:${D}`] },
  // Scale-out through Redis (docs/redis.md): the same room on 1 replica without Redis, 1 replica
  // with Redis, and 3 replicas with Redis (members and publishers spread over the 3 ports, so
  // two thirds of the deliveries cross replicas). Sized for a shared 2-core machine.
  // --settle-ms 2500: with Redis a join completes asynchronously (presence, room snapshot);
  // publishing 300 ms after the last handshake lost messages for members whose join was still
  // in flight in about one Redis run in four (chatgw's issue, not the generator's: see
  // BENCHMARKS.md, "Redis scale-out"); 2.5 s lets every join finish before the first message.
  { id: "redis", title: "8. one room across replicas through Redis: 300 members, 6 publishers", kind: "room",
    targets: ["chatgw", "chatgw-redis-1", "chatgw-redis-3"],
    gen: ["--mode", "room", "--conns", "300", "--publishers", "6", "--window", "32", "--settle-ms", "2500",
      "--phases", `flat:${D},rate=100:${QUICK ? D : 3}`] },
  // Latency at equal loads, chatgw against the performance anchor: the room of scenario 2 at
  // 100, 200 and 300 msgs/s (100k to 300k deliveries/s, up to about uWS.js's half peak here).
  { id: "latency", title: "10. one room at equal loads: 1000 members, 100 / 200 / 300 msgs/s", kind: "room",
    targets: ["chatgw", "uws"],
    gen: ["--mode", "room", "--conns", "1000", "--publishers", "10", "--window", "8", "--src-addrs", "4",
      "--phases", `rate=100:${D},rate=200:${D},rate=300:${D}`] },
  // Multi-core: the same room on workers=1 and workers=2 (two event loops, SO_REUSEPORT, the
  // room spanning both through the in-process bus). The generator shares the 2 cores.
  { id: "workers", title: "9. one room on 1 worker and on 2: 1000 members, 10 publishers", kind: "room",
    targets: ["chatgw", "chatgw-workers-2"],
    gen: ["--mode", "room", "--conns", "1000", "--publishers", "10", "--window", "8", "--src-addrs", "4",
      "--phases", `flat:${D},rate=100:${D}`] },
  { id: "idle", title: `4. idle, ${IDLE_CONNS} connections`, kind: "idle",
    targets: ["chatgw", "ws", "uws", "nginx", "lws"],
    gen: ["--mode", "idle", "--conns", String(QUICK ? Math.min(IDLE_CONNS, 5000) : IDLE_CONNS), "--members", "10",
      "--src-addrs", "8", "--concurrency", "256", "--duration", "0.5", "--settle-ms", "1000"] },
].filter((s) => !ONLY.length || ONLY.includes(s.id));

// ---- process handling ----
const freePort = portFinder(20000 + (process.pid % 400) * 20);

async function waitPort(port, proc, ms = 10000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (proc.spawnError) throw new Error(`cannot start ${proc.spawnfile}: ${proc.spawnError.message}`);
    if (proc.exitCode !== null) throw new Error(`server exited with ${proc.exitCode}`);
    const ok = await new Promise((res) => {
      const s = net.connect(port, "127.0.0.1");
      s.once("connect", () => { s.destroy(); res(true); });
      s.once("error", () => res(false));
    });
    if (ok) return;
    await sleep(50);
  }
  throw new Error(`port ${port} not ready`);
}

const results = []; // { scenario, target, run, res, cmd }
const commands = new Map();

async function runOne(sc, tname, run) {
  const t = TARGETS[tname];
  const servers = [], ports = [], lines = [];
  let redis = null, opts = {}, res;
  const launch = (cmd, args, suffix) => {
    const log = fs.openSync(path.join(WORK, `${sc.id}-${tname}-${run}${suffix}.log`), "w");
    const proc = spawn(cmd, args, { cwd: ROOT, stdio: ["ignore", log, log] });
    proc.on("error", (e) => (proc.spawnError = e)); // e.g. redis-server not installed
    fs.closeSync(log);
    lines.push([cmd, ...args].map(q).join(" "));
    return proc;
  };
  try {
    const aux = {};
    if (t.redis) { // a fresh Redis per run: no history, presence or seqs from earlier runs
      aux.redisPort = await freePort();
      redis = launch(REDIS, ["--port", String(aux.redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], "-redis");
      await waitPort(aux.redisPort, redis);
    }
    const n = t.replicas || 1;
    for (let k = 0; k < n; k++) {
      const port = await freePort();
      const [cmd, args, o = {}] = t.start(port, run, aux);
      Object.assign(opts, o);
      servers.push(launch(cmd, args, n > 1 ? `-${k + 1}` : ""));
      ports.push(port);
    }
    for (let k = 0; k < n; k++) await waitPort(ports[k], servers[k]);
    const kind = sc.id === "idle" ? "idle" : sc.kind;
    const p = t.path[kind] || t.path.room;
    // server CPU and RSS: the replicas, then the Redis (srv_cpu_each keeps them apart)
    const pids = [...servers, ...(redis ? [redis] : [])].map((x) => x.pid).join(",");
    let gen = [...sc.gen, n > 1 ? "--ports" : "--port", ports.join(","), "--path", p, "--pid", pids, "--label", `${sc.id}/${tname}`];
    if (t.gen) gen = gen.concat(t.gen);
    if (sc.extra && sc.extra[tname]) {
      const ex = sc.extra[tname];
      if (ex.includes("--phases")) { const i = gen.indexOf("--phases"); gen.splice(i, 2); }
      gen = gen.concat(ex);
    }
    if (opts.reloadFile) gen.push("--reload-file", opts.reloadFile);
    commands.set(`${sc.id}/${tname}`, `${lines.join("\n")}\n${[path.relative(ROOT, GEN), ...gen].map(q).join(" ")}`);
    res = await runGen(GEN, gen, 120);
  } catch (e) {
    res = { error: String(e.message || e) };
  }
  await Promise.all(servers.map(stop));
  if (redis) await stop(redis);
  results.push({ scenario: sc.id, target: tname, run, res });
  fs.appendFileSync(path.join(WORK, "results.jsonl"), JSON.stringify({ scenario: sc.id, target: tname, run, res }) + "\n");
  const ph = (res.phases || [])[0];
  const brief = res.error ? `ERROR ${res.error}`
    : sc.kind === "idle" ? `${res.connected} conns, ${fmtKB(res.rss_per_conn_b)} KB/conn`
    : res.phases.map((x) => `${fmtN(x.deliveries_per_s)}/s p99 ${fmtMs(x.lat_us.p99)} ms`).join(" | ");
  console.log(`  [${elapsed().toFixed(0).padStart(3)}s] ${sc.id.padEnd(13)} ${tname.padEnd(16)} run ${run}: ${brief}${res.note ? ` (${res.note})` : ""}`);
  void ph;
}

const q = (s) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${String(s).replaceAll("'", "'\\''")}'`);
const fmtMs = (us) => (us == null ? "n/a" : us / 1e3 >= 100 ? (us / 1e3).toFixed(0) : (us / 1e3).toFixed(1));
const fmtKB = (b) => (b == null ? "n/a" : (b / 1024).toFixed(2));

// ---- main ----
async function main() {
  if (!fs.existsSync(GEN) || !fs.existsSync(GW)) {
    console.error(`run.mjs: build first (${path.relative(ROOT, GEN)}, ${path.relative(ROOT, GW)})`);
    process.exit(2);
  }
  POL = preparePolicies();
  const load0 = os.loadavg();
  // a rough cost of one round, to stop before the budget runs out
  let roundsDone = 0;
  for (let run = 1; run <= RUNS; run++) {
    const t = elapsed();
    if (run > 1 && t + t / (run - 1) > BUDGET_S) {
      notes.push(`time budget (${BUDGET_S} s): ran ${run - 1} of ${RUNS} rounds; medians are over ${run - 1} run(s).`);
      break;
    }
    console.log(`round ${run} of ${RUNS}`);
    for (const sc of SCENARIOS)
      for (const tn of sc.targets) if (!ONLY_TARGETS.length || ONLY_TARGETS.includes(tn)) await runOne(sc, tn, run);
    roundsDone = run;
  }
  const load1 = os.loadavg();
  const md = report(roundsDone, load0, load1);
  console.log("\n" + md.table);
  if (OUT !== "-") {
    fs.writeFileSync(OUT, md.doc);
    console.log(`\nwrote ${path.relative(process.cwd(), OUT) || OUT} (${elapsed().toFixed(0)} s)`);
  }
}

// Median over runs of f(res) for one scenario/target.
function med(sc, tn, f) {
  return median(results.filter((r) => r.scenario === sc && r.target === tn && !r.res.error).map((r) => {
    try { return f(r.res); } catch { return null; }
  }));
}
function sum(sc, tn, f) {
  return results.filter((r) => r.scenario === sc && r.target === tn && !r.res.error)
    .reduce((a, r) => a + (f(r.res) || 0), 0);
}
function nruns(sc, tn) {
  return results.filter((r) => r.scenario === sc && r.target === tn && !r.res.error).length;
}

function report(rounds, load0, load1) {
  const PEERS = ["ws", "uws", "nginx", "lws"];
  const rows = [];
  // higher: true when more is better
  const row = (name, sc, f, fmt, higher, unit, self = "chatgw", ratios = true) => {
    const v = { chatgw: med(sc, self, f) };
    for (const p of PEERS) v[p] = med(sc, p, f);
    const ratio = (p) => {
      if (!ratios || v.chatgw == null || v[p] == null || v[p] === 0 || v.chatgw === 0) return "";
      const r = higher ? v.chatgw / v[p] : v[p] / v.chatgw;
      return `${r.toFixed(2)}×`;
    };
    rows.push([name, unit, fmt(v.chatgw), ...PEERS.map((p) => fmt(v[p])), ...PEERS.map(ratio)]);
  };
  const ph = (i) => (r) => r.phases[i];
  const dps = (i) => (r) => ph(i)(r).deliveries_per_s;
  const p50 = (i) => (r) => ph(i)(r).lat_us.p50;
  const p99 = (i) => (r) => ph(i)(r).lat_us.p99;
  // throughput per CPU-second the server used: steadier than wall-clock rates on a shared machine
  const cpuEff = (i) => (r) => ph(i)(r).deliveries_per_s / Math.max(ph(i)(r).srv_cpu, 0.01);
  const has = (s) => SCENARIOS.some((x) => x.id === s);
  if (has("echo")) {
    row("1. echo 100 conns, 64 B", "echo", dps(0), fmtN, true, "round trips/s");
    row("1. echo 100 conns, 1 KiB", "echo", dps(1), fmtN, true, "round trips/s");
    row("1. echo 64 B, p99", "echo", p99(0), fmtMs, false, "ms");
    row("1. echo 64 B per server CPU-second", "echo", cpuEff(0), fmtN, true, "round trips/CPU-s");
  }
  if (has("room")) {
    row("2. room 1000×10 pub, flat out", "room", dps(0), fmtN, true, "deliveries/s");
    row("2. … per server CPU-second", "room", cpuEff(0), fmtN, true, "deliveries/CPU-s");
    row("2. … at ½ own peak: load", "room", dps(1), fmtN, true, "deliveries/s");
    row("2. … at ½ own peak: p50", "room", p50(1), fmtMs, false, "ms");
    row("2. … at ½ own peak: p99", "room", p99(1), fmtMs, false, "ms");
    row("2. … at 100 msgs/s (100k deliveries/s): p50", "room", p50(2), fmtMs, false, "ms");
    row("2. … at 100 msgs/s (100k deliveries/s): p99", "room", p99(2), fmtMs, false, "ms");
  }
  if (has("rooms")) {
    row("3. 1000 rooms × 10, flat out", "rooms", dps(0), fmtN, true, "deliveries/s");
    row("3. … per server CPU-second", "rooms", cpuEff(0), fmtN, true, "deliveries/CPU-s");
    row("3. … p99", "rooms", p99(0), fmtMs, false, "ms");
  }
  if (has("idle")) {
    row(`4. idle ${IDLE_CONNS} conns, RSS per connection`, "idle", (r) => r.rss_per_conn_b, fmtKB, false, "KB");
    row("4. … connections held", "idle", (r) => r.connected - r.closed, (v) => (v == null ? "n/a" : String(Math.round(v))), true, "", "chatgw", false);
  }
  const head = ["scenario", "unit", "chatgw", "Node ws", "uWS.js", "nginx", "lws", "vs ws", "vs uWS", "vs nginx", "vs lws"];
  const mdTable = (h, rs) => [`| ${h.join(" | ")} |`, `|${h.map(() => "---").join("|")}|`, ...rs.map((r) => `| ${r.join(" | ")} |`)].join("\n");
  const main = mdTable(head, rows);

  // chatgw against itself: policy, reload, deflate
  const own = [];
  const cmp = (name, a, b, unit, fmt = fmtN) => {
    const r = a != null && b ? `${(a / b).toFixed(2)}×` : "";
    own.push([name, unit, fmt(a), fmt(b), r]);
  };
  if (has("room") && has("room-variants")) {
    cmp("5. policy: room flat out, default policy vs no hooks", med("room", "chatgw", dps(0)), med("room-variants", "chatgw-nopolicy", dps(0)), "deliveries/s");
    cmp("5. … per server CPU-second", med("room", "chatgw", cpuEff(0)), med("room-variants", "chatgw-nopolicy", cpuEff(0)), "deliveries/CPU-s");
  }
  if (has("rooms")) {
    cmp("5. policy: 1000 rooms × 10, default policy vs no hooks", med("rooms", "chatgw", dps(0)), med("rooms", "chatgw-nopolicy", dps(0)), "deliveries/s");
    cmp("5. … per server CPU-second", med("rooms", "chatgw", cpuEff(0)), med("rooms", "chatgw-nopolicy", cpuEff(0)), "deliveries/CPU-s");
    cmp("5. shadow mode: 1000 rooms × 10, default policy shadowed by itself vs alone", med("rooms", "chatgw-shadow", dps(0)), med("rooms", "chatgw", dps(0)), "deliveries/s");
    cmp("5. … per server CPU-second", med("rooms", "chatgw-shadow", cpuEff(0)), med("rooms", "chatgw", cpuEff(0)), "deliveries/CPU-s");
  }
  if (has("room") && has("room-variants")) {
    cmp("6. reload every 1 s during scenario 2 vs none", med("room-variants", "chatgw-reload", dps(0)), med("room", "chatgw", dps(0)), "deliveries/s");
    own.push(["6. … reloads per run / worst 100 ms window below median", "", String(med("room-variants", "chatgw-reload", (r) => r.reloads) ?? "n/a"),
      `${(med("room-variants", "chatgw-reload", (r) => r.phases[0].dip_pct) ?? NaN).toFixed(0)}% (no reload: ${(med("room", "chatgw", (r) => r.phases[0].dip_pct) ?? NaN).toFixed(0)}%)`, ""]);
    own.push(["6. … lost messages (all runs)", "deliveries", String(sum("room-variants", "chatgw-reload", (r) => r.phases.reduce((a, p) => a + p.lost, 0))),
      String(sum("room", "chatgw", (r) => r.phases.reduce((a, p) => a + p.lost, 0))), ""]);
    cmp("7. permessage-deflate on vs off (scenario 2 flat out, 1 KiB)", med("room-variants", "chatgw-deflate", dps(0)), med("room-variants", "chatgw-plain", dps(0)), "deliveries/s");
    cmp("7. … per server CPU-second", med("room-variants", "chatgw-deflate", cpuEff(0)), med("room-variants", "chatgw-plain", cpuEff(0)), "deliveries/CPU-s");
    cmp("7. … p99", med("room-variants", "chatgw-deflate", p99(0)), med("room-variants", "chatgw-plain", p99(0)), "ms", fmtMs);
    const cpus = (tn) => `generator ${(med("room-variants", tn, (r) => r.phases[0].gen_cpu) ?? NaN).toFixed(2)}, server ${(med("room-variants", tn, (r) => r.phases[0].srv_cpu) ?? NaN).toFixed(2)}`;
    own.push(["7. … CPU used (cores)", "", cpus("chatgw-deflate"), cpus("chatgw-plain"), ""]);
  }
  // latency rows: the last column is A − B (what A adds)
  const lat = (name, a, b) => {
    const d = a != null && b != null ? a - b : null;
    own.push([name, "ms", fmtMs(a), fmtMs(b), d == null ? "" : `${d < 0 ? "−" : "+"}${fmtMs(Math.abs(d))} ms`]);
  };
  if (has("rooms")) lat("5. shadow mode: 1000 rooms × 10 flat out, p99, shadowed vs alone", med("rooms", "chatgw-shadow", p99(0)), med("rooms", "chatgw", p99(0)));
  if (has("redis")) {
    const R = "redis", one = "chatgw-redis-1", three = "chatgw-redis-3";
    // cores the server processes used flat out: each chatgw replica, then redis-server
    const cpuSplit = (tn) => {
      const e = med(R, tn, (r) => (r.phases[0].srv_cpu_each || [r.phases[0].srv_cpu]).slice(0, -1).reduce((a, x) => a + x, 0));
      const rd = med(R, tn, (r) => r.phases[0].srv_cpu_each.at(-1));
      return `chatgw ${(e ?? NaN).toFixed(2)} + redis ${(rd ?? NaN).toFixed(2)}`;
    };
    cmp("8. Redis, one room 300 × 6 pub, flat out: 3 replicas vs 1 replica (both + Redis)", med(R, three, dps(0)), med(R, one, dps(0)), "deliveries/s");
    cmp("8. … 3 replicas + Redis vs 1 replica without Redis", med(R, three, dps(0)), med(R, "chatgw", dps(0)), "deliveries/s");
    cmp("8. … 1 replica + Redis vs 1 replica without Redis", med(R, one, dps(0)), med(R, "chatgw", dps(0)), "deliveries/s");
    cmp("8. … per server CPU-second (chatgw + redis-server), 3 replicas vs 1 (+ Redis)", med(R, three, cpuEff(0)), med(R, one, cpuEff(0)), "deliveries/CPU-s");
    cmp("8. … per server CPU-second, 3 replicas + Redis vs 1 replica without Redis", med(R, three, cpuEff(0)), med(R, "chatgw", cpuEff(0)), "deliveries/CPU-s");
    own.push(["8. … server CPU flat out (cores), 3 replicas vs 1 (+ Redis)", "", cpuSplit(three), cpuSplit(one),
      `no Redis: chatgw ${(med(R, "chatgw", (r) => r.phases[0].srv_cpu) ?? NaN).toFixed(2)}`]);
    lat("8. … at 100 msgs/s (30k deliveries/s): p50, 1 replica + Redis vs without Redis", med(R, one, p50(1)), med(R, "chatgw", p50(1)));
    lat("8. … at 100 msgs/s: p99, 1 replica + Redis vs without Redis", med(R, one, p99(1)), med(R, "chatgw", p99(1)));
    lat("8. … at 100 msgs/s: p50, 3 replicas + Redis vs 1 replica without Redis", med(R, three, p50(1)), med(R, "chatgw", p50(1)));
    lat("8. … at 100 msgs/s: p99, 3 replicas + Redis vs 1 replica without Redis", med(R, three, p99(1)), med(R, "chatgw", p99(1)));
    const lost = (tn) => String(sum(R, tn, (r) => r.phases.reduce((a, p) => a + p.lost, 0)));
    own.push(["8. … lost messages (all runs, both phases), 3 replicas vs 1 replica (+ Redis)", "messages", lost(three), lost(one), `no Redis: ${lost("chatgw")}`]);
  }
  if (has("workers")) {
    const W = "workers", two = "chatgw-workers-2";
    cmp("9. workers: room flat out, workers=2 vs workers=1", med(W, two, dps(0)), med(W, "chatgw", dps(0)), "deliveries/s");
    cmp("9. … per server CPU-second", med(W, two, cpuEff(0)), med(W, "chatgw", cpuEff(0)), "deliveries/CPU-s");
    const cores = (tn) => (med(W, tn, (r) => r.phases[0].srv_cpu) ?? NaN).toFixed(2);
    own.push(["9. … server CPU flat out (cores)", "", cores(two), cores("chatgw"), ""]);
    lat("9. … at 100 msgs/s (100k deliveries/s): p50, workers=2 vs workers=1", med(W, two, p50(1)), med(W, "chatgw", p50(1)));
    lat("9. … at 100 msgs/s: p99, workers=2 vs workers=1", med(W, two, p99(1)), med(W, "chatgw", p99(1)));
    const lost = (tn) => String(sum(W, tn, (r) => r.phases.reduce((a, p) => a + p.lost, 0)));
    own.push(["9. … lost messages (all runs, both phases)", "messages", lost(two), lost("chatgw"), ""]);
  }
  if (has("latency")) {
    const L = "latency";
    [100, 200, 300].forEach((rate, i) => {
      cmp(`10. equal load ${rate} msgs/s: p50, uWS.js / chatgw`, med(L, "uws", p50(i)), med(L, "chatgw", p50(i)), "ms", fmtMs);
      cmp(`10. … ${rate} msgs/s: p99, uWS.js / chatgw`, med(L, "uws", p99(i)), med(L, "chatgw", p99(i)), "ms", fmtMs);
      const cores = (tn) => (med(L, tn, (r) => r.phases[i].srv_cpu) ?? NaN).toFixed(2);
      own.push([`10. … ${rate} msgs/s: server CPU (cores), uWS.js / chatgw`, "", cores("uws"), cores("chatgw"), ""]);
    });
  }
  const ownTable = mdTable(["comparison", "unit", "A", "B", "A/B"], own);

  // losses and errors
  const issues = [];
  for (const r of results) {
    const lost = r.res.phases ? r.res.phases.reduce((a, p) => a + p.lost, 0) : 0;
    if (r.res.error || lost || r.res.failed || r.res.server_errors || r.res.closed)
      issues.push(`- ${r.scenario}/${r.target} run ${r.run}: ${r.res.error ? `error: ${r.res.error}` : `lost ${lost}, failed ${r.res.failed}, closed ${r.res.closed}, server errors ${r.res.server_errors}`}${r.res.note ? ` (${r.res.note})` : ""}`);
  }
  const cpu = fs.readFileSync("/proc/cpuinfo", "utf8").match(/model name\s*:\s*(.*)/);
  let rev = "";
  try { rev = execFileSync("git", ["-C", ROOT, "rev-parse", "--short", "HEAD"]).toString().trim(); } catch {}
  const ver = (c, a) => {
    const r = spawnSync(c, a, { encoding: "utf8" });
    return `${r.stdout || ""}${r.stderr || ""}`.trim().split("\n")[0] || "n/a";
  };
  const table = `${main}\n\n${ownTable}`;
  const doc = `# Benchmarks

Written by \`make bench\` (tests/bench/run.mjs); rerun it to refresh. Issue 7 has the targets.
Numbers from one shared, noisy 2-core machine: compare columns of the same run, not runs of
different days. Each figure is the median of ${rounds} run(s); the runs of all targets
alternate (round 1 runs every scenario against every target, then round 2, ...).

## Machine

- CPU: ${cpu ? cpu[1] : "?"} × ${os.cpus().length}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, ${os.type()} ${os.release()}
- load average at start ${load0.map((x) => x.toFixed(1)).join(" ")}, at end ${load1.map((x) => x.toFixed(1)).join(" ")} (other work shares the machine)
- chatgw ${rev} (Release, build-bench), Node ${process.version}, ${ver("nginx", ["-v"])}, libwebsockets-test-server ${ver("dpkg-query", ["-W", "-f=${Version}", "libwebsockets-test-server"])}, uWS.js ${pkgVersion("@trufflesuite/uws-js-unofficial")}, ws ${pkgVersion("ws")}
- ulimit -n ${NOFILE}; the server and the generator (one process, one libuv loop, C) share the 2 cores.
- wall time ${elapsed().toFixed(0)} s.

## Results

Ratios: chatgw against the peer, > 1× means chatgw is better (more throughput, or less latency
or memory). "½ own peak" runs each server at half of the flat-out publish rate it reached in the
same run; "100 msgs/s" is the same load for all (the issue's reference point).

${main}

chatgw against itself (A/B > 1× means A is faster; for the reload row, 1× = no cost; the
latency rows of 8 and 9 give A − B instead, the latency that Redis or the second worker adds;
in 10, A is uWS.js and B chatgw, so > 1× means chatgw's latency is lower):

${ownTable}

How to read it: the generator and the server share 2 cores with other people's builds and
tests, so wall-clock rates swing by 2× between rounds; the "per server CPU-second" rows
(deliveries divided by the CPU time the server process used during the measurement, from
/proc) are steadier. With permessage-deflate the generator has to inflate every delivery (1000
per message) and becomes the limit: compare row 7 per server CPU-second, not deliveries/s.
In 8 the replicas, redis-server and the generator all share the same 2 cores, so "3 replicas vs
1" shows what the bus costs, not the scale-out that one machine per replica would give; its
per CPU-second rows count chatgw's and redis-server's CPU time together. 9 is the multi-core
figure: with the generator on the same 2 cores, workers=2 can only show what a second event
loop gains when the generator leaves it a core; a machine with more cores than the generator
needs is the real test.

Lost messages, failed connections and server errors:
${issues.length ? issues.join("\n") : "- none"}

${notes.length ? "Notes:\n" + notes.map((n) => `- ${n}`).join("\n") + "\n" : ""}
## Scenarios and peers

${SCENARIOS.map((s) => `- **${s.title}**: ${s.targets.map((t) => TARGETS[t].label).join("; ")}`).join("\n")}

- The generator (\`tests/bench/chatgw-bench\`) sends the same JSON message to every server:
  \`{"type":"msg","room":R,"text":"~b…:<publisher>:<seq>:<send ns>:<padding>","cid":N}\`.
  A receipt is recognised by the marker in the text, whatever envelope the server puts around it,
  and timed against the send time written into it.
- Flat out = closed loop: each publisher keeps at most 8 messages (echo: 1 per connection) that
  have not yet reached every member; a message is counted lost if some member has not got it
  5 s after the end of its phase.
- **chatgw**: \`/echo\` and \`/ws?room=\` with the default policy (scripts/) plus a
  \`secrets.lua\` that only raises its flood limits and room capacities; server-side rate
  limits, per-IP and connection limits raised by flags. Presence, history, acks and moderation
  run as usual. "no hooks" is a policy.lua that returns \`{}\`.
- **Node ws** (\`peers/ws-server.mjs\`) and **uWS.js** (\`peers/uws-server.mjs\`): \`/echo\`, and
  \`/ws?room=\` that serialises the same msg envelope once, sends it to every member (uWS through
  its own \`publish\`) and acks the sender. No presence, history or policy.
- **nginx** (\`peers/nginx.conf.in\`, private \`-p\` prefix, one process): \`/echo\` is
  lua-resty-websocket, \`/ws?room=\` is nchan \`nchan_pubsub\` (pub/sub in C); frames are relayed
  byte for byte, no envelope and no ack.
- **libwebsockets** (\`libwebsockets-test-server\`, \`lws-mirror-protocol\`): every frame goes to
  every connection of the same \`?mirror=\` instance, byte for byte. It has no echo, and at
  most 10 instances, so it runs scenario 2 (one instance) and the idle test (all connections in
  one instance), not scenario 3. Its receive buffer is 128 bytes, so messages stay under that.
- Idle: connections join rooms of 10 (lws: one mirror instance); RSS is the server's VmRSS after
  connecting minus before, over the connections held.

## Commands

\`make bench\` = install \`tests/bench/debs-bench.txt\`, \`npm ci\` in tests/bench, Release build in
build-bench, then \`node tests/bench/run.mjs\`. One run of each target (ports vary):

\`\`\`
${[...commands.entries()].map(([k, v]) => `# ${k}\n${v.replaceAll(ROOT + "/", "")}`).join("\n\n")}
\`\`\`
`;
  return { table, doc };
}

function pkgVersion(name) {
  try { return JSON.parse(fs.readFileSync(path.join(HERE, "node_modules", name, "package.json"), "utf8")).version; } catch { return "n/a"; }
}

main().catch((e) => { console.error(e); process.exit(1); });
