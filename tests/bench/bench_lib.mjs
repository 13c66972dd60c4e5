// bench_lib.mjs: what the benchmark drivers (run.mjs, cluster.mjs) share: free loopback
// ports, where the build is, stopping a server, running the load generator, and the figures'
// median and format.
import { spawn } from "node:child_process";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const HOST = "127.0.0.1";
/** The repository, the build under test (BENCH_BUILD, default build-bench) and its binaries. */
export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(HERE, "../..");
export const BUILD = path.resolve(ROOT, process.env.BENCH_BUILD || "build-bench");
export const GEN = path.join(BUILD, "tests/bench/chatgw-bench");
export const GW = path.join(BUILD, "chatgw");
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A free-port finder starting at base (each driver its own range), wrapping there at 60000. */
export function portFinder(base) {
  let next = base;
  return async function freePort() {
    for (let i = 0; i < 500; i++) {
      const p = next++;
      if (next > 60000) next = base;
      const ok = await new Promise((res) => {
        const s = net.createServer();
        s.once("error", () => res(false));
        s.listen(p, HOST, () => s.close(() => res(true)));
      });
      if (ok) return p;
    }
    throw new Error("no free port");
  };
}

/** SIGTERM, SIGKILL after 3 s; resolves once the process is gone. */
export async function stop(proc) {
  if (proc.exitCode !== null || proc.signalCode !== null || proc.spawnError) return;
  const done = new Promise((r) => proc.once("exit", r));
  proc.kill("SIGTERM");
  const t = setTimeout(() => proc.kill("SIGKILL"), 3000);
  await done;
  clearTimeout(t);
}

/** Runs the generator gen with args, killed after timeoutS; resolves its last stdout line as
 * JSON, or {error}. track (a Set, optional) holds it while it runs. */
export function runGen(gen, args, timeoutS, track) {
  return new Promise((resolve) => {
    const p = spawn(gen, args, { stdio: ["ignore", "pipe", "pipe"] });
    track?.add(p);
    let out = "", err = "";
    p.stdout.on("data", (d) => (out += d));
    p.stderr.on("data", (d) => (err += d));
    const t = setTimeout(() => p.kill("SIGKILL"), timeoutS * 1000);
    p.on("exit", (code) => {
      track?.delete(p);
      clearTimeout(t);
      try { resolve(JSON.parse(out.trim().split("\n").pop())); } catch { resolve({ error: `generator exit ${code}: ${err.trim().slice(0, 300)}` }); }
    });
  });
}

export const fmtN = (v) => (v == null || Number.isNaN(v) ? "n/a" : v >= 1e6 ? `${(v / 1e6).toFixed(2)}M` : v >= 1e4 ? `${(v / 1e3).toFixed(0)}k` : v >= 1e3 ? `${(v / 1e3).toFixed(1)}k` : v.toFixed(0));

/** The median of the numbers in xs (null, NaN left out), or null. */
export function median(xs) {
  const v = xs.filter((x) => x != null && !Number.isNaN(x)).sort((a, b) => a - b);
  if (!v.length) return null;
  return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
}
