#!/usr/bin/env node
// cluster.mjs: Redis Cluster against one Redis (`make bench-cluster`, tests/bench/README.md).
//
// Three chatgw replicas (Release build in BENCH_BUILD), one workload, four back ends, fresh for
// every run: `single` (one redis-server, redis_url) and `cluster-1`, `cluster-2`, `cluster-3`
// (a Redis Cluster of 1, 2 or 3 masters, no replicas, the 16384 slots split evenly, chatgw with
// redis_cluster_nodes). A cluster of fewer than 3 masters is built by hand (CLUSTER
// ADDSLOTSRANGE, CLUSTER MEET): `redis-cli --cluster create` wants 3. The workload:
// chatgw-bench --mode rooms, 100 rooms of 6 members over the 3 replicas (connection i on
// replica i mod 3, so every room has 2 members on each and its 3 publishers on 3 replicas),
// 64-byte msgs, a policy without hooks; phase `flat` (closed loop, window 8) then `rate=300`
// (300 msgs/s = 1800 deliveries/s) for publish->deliver latency at equal load. Rooms r0..r99
// fall on the shards by their hash slots. Server CPU is read by the generator from
// /proc/PID/stat of the three chatgw and every redis-server, over each phase; deliveries per
// CPU-second = deliveries/s divided by those cores. Targets alternate within each round;
// figures are medians of the rounds. Loopback only; bounded by BENCH_BUDGET_S (default 170 s:
// rounds that would not fit are skipped and the report says so).
//
// Environment: BENCH_BUILD (default build-bench), BENCH_RUNS (rounds, default 3),
// BENCH_BUDGET_S, BENCH_TARGETS (e.g. single,cluster-3), BENCH_QUICK=1 (short phases, one
// round), BENCH_OUT (also write the markdown there), BENCH_REDIS, BENCH_REDIS_CLI.
import { spawn, spawnSync, execFile } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { HOST as H, HERE, ROOT, BUILD, GEN, GW, portFinder, stop, runGen, fmtN, median, sleep } from "./bench_lib.mjs";

const WORK = path.join(BUILD, "bench-cluster");
const REDIS = process.env.BENCH_REDIS || "/usr/bin/redis-server";
const REDIS_CLI = process.env.BENCH_REDIS_CLI || "/usr/bin/redis-cli";
const QUICK = process.env.BENCH_QUICK === "1";
const RUNS = Number(process.env.BENCH_RUNS || (QUICK ? 1 : 3));
const BUDGET_S = Number(process.env.BENCH_BUDGET_S || 170);
const ALL = ["single", "cluster-1", "cluster-2", "cluster-3"];
const TARGETS = (process.env.BENCH_TARGETS || ALL.join(",")).split(",").filter((t) => ALL.includes(t));
const OUT = process.env.BENCH_OUT || "";
const REPLICAS = 3;
const RATE = 300;
const PHASES = QUICK ? `flat:1,rate=${RATE}:1` : `flat:2,rate=${RATE}:3`;
const GEN_ARGS = ["--mode", "rooms", "--conns", "600", "--members", "6", "--publishers", "3", "--window", "8",
  "--settle-ms", "2000", "--phases", PHASES, "--path", "/ws?room={room}&name=b{conn}"];
const T0 = Date.now();
const elapsed = () => (Date.now() - T0) / 1000;

const procs = new Set();
process.on("exit", () => { for (const p of procs) { try { p.kill("SIGKILL"); } catch { /* gone */ } } });
for (const sig of ["SIGINT", "SIGTERM"]) process.once(sig, () => process.exit(130));

const freePort = portFinder(30000 + (process.pid % 500) * 20);

function cli(port, args, ms = 5000) {
  return new Promise((resolve, reject) => {
    execFile(REDIS_CLI, ["-h", H, "-p", String(port), ...args.map(String)], { timeout: ms },
      (e, out, err) => (e ? reject(new Error(`redis-cli -p ${port} ${args.join(" ")}: ${e.message} ${err}`)) : resolve(out.trim())));
  });
}

async function waitFor(pred, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    if (await pred().catch(() => false)) return;
    if (Date.now() > end) throw new Error(`timeout waiting for ${what}`);
    await sleep(50);
  }
}

function launch(cmd, args, log) {
  const fd = fs.openSync(log, "w");
  const p = spawn(cmd, args, { cwd: ROOT, stdio: ["ignore", fd, fd] });
  fs.closeSync(fd);
  procs.add(p);
  p.on("error", (e) => (p.spawnError = e));
  p.once("exit", () => procs.delete(p));
  return p;
}

/** Starts the back end of target: {procs, chatgwArgs, desc}. */
async function startBackend(target, dir) {
  const base = ["--bind", H, "--save", "", "--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning"];
  if (target === "single") {
    const port = await freePort();
    const p = launch(REDIS, ["--port", String(port), ...base], path.join(dir, "redis.log"));
    await waitFor(async () => (await cli(port, ["PING"], 1000)) === "PONG", 10000, "redis-server");
    return { procs: [p], chatgwArgs: ["--redis-url", `redis://${H}:${port}/0`], desc: `redis-server --port ${port}` };
  }
  const n = Number(target.split("-")[1]);
  const nodes = [];
  for (let k = 0; k < n; k++) {
    const port = await freePort(), bus = await freePort();
    const nd = path.join(dir, `node-${k}`);
    fs.mkdirSync(nd);
    const p = launch(REDIS, ["--port", String(port), "--cluster-enabled", "yes", "--cluster-port", String(bus),
      "--cluster-config-file", path.join(nd, "nodes.conf"), "--dir", nd, ...base], path.join(nd, "redis.log"));
    nodes.push({ port, bus, p });
  }
  for (const x of nodes) await waitFor(async () => (await cli(x.port, ["PING"], 1000)) === "PONG", 10000, "cluster node");
  for (let k = 0; k < n; k++) {
    const lo = Math.floor((k * 16384) / n), hi = Math.floor(((k + 1) * 16384) / n) - 1;
    await cli(nodes[k].port, ["CLUSTER", "ADDSLOTSRANGE", lo, hi]);
  }
  for (let k = 1; k < n; k++) await cli(nodes[0].port, ["CLUSTER", "MEET", H, nodes[k].port, nodes[k].bus]);
  await waitFor(async () => {
    for (const x of nodes) {
      if (!/cluster_state:ok/.test(await cli(x.port, ["CLUSTER", "INFO"], 1000))) return false;
      if ((await cli(x.port, ["CLUSTER", "NODES"], 1000)).split("\n").filter(Boolean).length !== n) return false;
    }
    return true;
  }, 20000, `cluster of ${n} ok`);
  // how the generator's rooms r0..r99 fall on the masters (slot ranges as assigned above)
  const lines = Array.from({ length: 100 }, (_, i) => `CLUSTER KEYSLOT chatgw:{r${i}}:seq`).join("\n");
  const slots = spawnSync(REDIS_CLI, ["-h", H, "-p", String(nodes[0].port)], { input: lines, timeout: 10000 })
    .stdout.toString().trim().split("\n").map(Number);
  const per = nodes.map((_, k) => slots.filter((sl) => sl >= Math.floor((k * 16384) / n) && sl < Math.floor(((k + 1) * 16384) / n)).length);
  return { procs: nodes.map((x) => x.p), chatgwArgs: ["--redis-url", `redis://${H}:1/0`,
    "--redis-cluster-nodes", nodes.map((x) => `${H}:${x.port}`).join(",")],
  desc: `${n} cluster masters ${nodes.map((x) => x.port).join(",")}; rooms per master ${per.join("/")}` };
}

// No hooks: what is measured is the bus, and on a loaded 2-core machine the default policy's
// 50 ms hook watchdog tripped now and then (a second of refused msgs, counted as lost).
function preparePolicy() {
  fs.rmSync(WORK, { recursive: true, force: true });
  const pol = path.join(WORK, "policy-none");
  fs.mkdirSync(pol, { recursive: true });
  fs.writeFileSync(path.join(pol, "policy.lua"), "-- no hooks: the bus alone\nreturn {}\n");
  return pol;
}

function gwArgs(port, pol, nodeId) {
  return ["serve", "--listen", `${H}:${port}`, "--log-level", "warn", "--scripts-dir", pol,
    "--max-connections", "100000", "--max-connections-per-ip", "100000", "--rate-msgs-per-sec", "1000000",
    "--rate-burst", "1000000", "--max-room-members", "100000", "--max-rooms-per-conn", "16",
    "--accept-rate-per-ip", "0", "--node-id", nodeId];
}

async function readyRedis(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, H);
    let buf = "";
    s.setTimeout(1000, () => { s.destroy(); resolve(false); });
    s.once("error", () => resolve(false));
    s.on("data", (d) => (buf += d));
    s.on("close", () => resolve(/"redis":"up"/.test(buf)));
    s.once("connect", () => s.write(`GET /readyz HTTP/1.1\r\nHost: ${H}\r\nConnection: close\r\n\r\n`));
  });
}

const results = [];
const commands = new Map();

async function runOne(target, run, pol) {
  const dir = path.join(WORK, `${target}-${run}`);
  fs.mkdirSync(dir, { recursive: true });
  let be = null, res;
  const gws = [];
  try {
    be = await startBackend(target, dir);
    const ports = [];
    for (let k = 0; k < REPLICAS; k++) {
      const port = await freePort();
      const args = [...gwArgs(port, pol, `bench-${k}`), ...be.chatgwArgs];
      gws.push(launch(GW, args, path.join(dir, `chatgw-${k}.log`)));
      ports.push(port);
      if (k === 0) commands.set(target, `# ${be.desc}\n${[path.relative(ROOT, GW), ...args].join(" ")}   (and 2 more replicas)`);
    }
    for (const [k, port] of ports.entries()) {
      await waitFor(async () => {
        if (gws[k].exitCode !== null) throw new Error(`chatgw exited ${gws[k].exitCode}`);
        return readyRedis(port);
      }, 20000, `chatgw ${k} redis up`);
    }
    const pids = [...gws, ...be.procs].map((p) => p.pid).join(",");
    const gen = [...GEN_ARGS, "--ports", ports.join(","), "--pid", pids, "--label", `cluster/${target}`];
    commands.set(target, `${commands.get(target)}\n${path.relative(ROOT, GEN)} ${gen.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a}'`)).join(" ")}`);
    res = await runGen(GEN, gen, 60, procs);
  } catch (e) {
    res = { error: String(e.message || e) };
  }
  await Promise.all(gws.map(stop));
  if (be) await Promise.all(be.procs.map(stop));
  results.push({ target, run, res });
  fs.appendFileSync(path.join(WORK, "results.jsonl"), JSON.stringify({ target, run, res }) + "\n");
  const brief = res.error ? `ERROR ${res.error}` : res.phases.map((x) =>
    `${x.kind} ${fmtN(x.deliveries_per_s)}/s ${fmtN(x.deliveries_per_s / Math.max(x.srv_cpu, 0.01))}/CPU-s p50 ${fmtMs(x.lat_us.p50)} p99 ${fmtMs(x.lat_us.p99)} ms lost ${x.lost}`).join(" | ");
  console.log(`  [${elapsed().toFixed(0).padStart(3)}s] ${target.padEnd(10)} run ${run}: ${brief}`);
}

const fmtMs = (us) => (us == null ? "n/a" : (us / 1e3).toFixed(us >= 1e5 ? 0 : 2));
const ok = (t) => results.filter((r) => r.target === t && !r.res.error);
const med = (t, f) => median(ok(t).map((r) => { try { return f(r.res); } catch { return null; } }));

function report(rounds, load0, load1, note) {
  const ph = (i) => (r) => r.phases[i];
  const dps = (i) => (r) => ph(i)(r).deliveries_per_s;
  const eff = (i) => (r) => ph(i)(r).deliveries_per_s / Math.max(ph(i)(r).srv_cpu, 0.01);
  const gwCpu = (i) => (r) => ph(i)(r).srv_cpu_each.slice(0, REPLICAS).reduce((a, b) => a + b, 0);
  const rdCpu = (i) => (r) => ph(i)(r).srv_cpu_each.slice(REPLICAS).reduce((a, b) => a + b, 0);
  const lost = (t) => ok(t).reduce((a, r) => a + r.res.phases.reduce((b, x) => b + x.lost, 0), 0);
  const head = ["back end", "flat: deliveries/s", "deliveries per server CPU-s", "cores: chatgw + redis",
    `${RATE} msgs/s: p50 ms`, "p99 ms", "lost", "runs"];
  const rows = TARGETS.map((t) => [t, fmtN(med(t, dps(0))), fmtN(med(t, eff(0))),
    `${(med(t, gwCpu(0)) ?? NaN).toFixed(2)} + ${(med(t, rdCpu(0)) ?? NaN).toFixed(2)}`,
    fmtMs(med(t, (r) => ph(1)(r).lat_us.p50)), fmtMs(med(t, (r) => ph(1)(r).lat_us.p99)), String(lost(t)), String(ok(t).length)]);
  const table = [`| ${head.join(" | ")} |`, `|${head.map(() => "---").join("|")}|`, ...rows.map((r) => `| ${r.join(" | ")} |`)].join("\n");
  const rel = [];
  const base = med("single", (r) => ph(1)(r).lat_us.p50), base99 = med("single", (r) => ph(1)(r).lat_us.p99);
  for (const t of TARGETS.filter((x) => x !== "single")) {
    const p50 = med(t, (r) => ph(1)(r).lat_us.p50), p99 = med(t, (r) => ph(1)(r).lat_us.p99);
    if (base != null && p50 != null)
      rel.push(`${t} vs single: p50 ${p50 >= base ? "+" : ""}${((p50 - base) / 1e3).toFixed(2)} ms, p99 ${p99 >= base99 ? "+" : ""}${((p99 - base99) / 1e3).toFixed(2)} ms`);
  }
  const errors = results.filter((r) => r.res.error).map((r) => `${r.target} run ${r.run}: ${r.res.error}`);
  const head2 = `${rounds} round(s), ${os.cpus().length} CPUs, load average ${load0.map((x) => x.toFixed(1)).join(" ")} -> ${load1.map((x) => x.toFixed(1)).join(" ")}, ${elapsed().toFixed(0)} s`;
  const cmds = TARGETS.filter((t) => commands.has(t)).map((t) => `# ${t}\n${commands.get(t)}`).join("\n\n").replaceAll(`${ROOT}/`, "");
  return { table, text: [head2, table, "", ...rel, ...(note ? [note] : []), ...(errors.length ? ["errors:", ...errors] : [])].join("\n"), cmds };
}

async function main() {
  for (const f of [GEN, GW, REDIS, REDIS_CLI]) {
    if (!fs.existsSync(f)) { console.error(`cluster.mjs: missing ${f} (make bench-build; Debian redis-server, redis-tools)`); process.exit(2); }
  }
  const pol = preparePolicy();
  const load0 = os.loadavg();
  let rounds = 0, note = "";
  for (let run = 1; run <= RUNS; run++) {
    const t = elapsed();
    if (run > 1 && t + t / (run - 1) > BUDGET_S) { note = `time budget (${BUDGET_S} s): ran ${run - 1} of ${RUNS} rounds`; break; }
    console.log(`round ${run} of ${RUNS}`);
    for (const target of TARGETS) await runOne(target, run, pol);
    rounds = run;
  }
  const md = report(rounds, load0, os.loadavg(), note);
  console.log(`\n${md.text}\n\n${md.cmds}`);
  if (OUT) fs.writeFileSync(OUT, `${md.text}\n\n\`\`\`\n${md.cmds}\n\`\`\`\n`);
}

main().catch((e) => { console.error(e); process.exit(1); });
