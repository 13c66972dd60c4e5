// Shared helpers for the Kubernetes suite (tests/k8s): rendering the kustomize overlays, running
// processes with bounded waits, HTTP probes and chat WebSocket clients on loopback.
// Every wait has a timeout, and every process started here is killed when the test exits.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import YAML from 'yaml';

const here = path.dirname(fileURLToPath(import.meta.url));
export const HERE = here;
export const SRC = path.resolve(process.env.CHATGW_SRC || path.join(here, '..', '..'));
export const BUILD = path.resolve(process.env.CHATGW_BUILD || path.join(SRC, 'build'));
export const BIN = path.resolve(process.env.CHATGW_BIN || path.join(BUILD, 'chatgw'));
export const OVERLAYS = ['dev', 'prod', 'budget'];
export const HOST = '127.0.0.1';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function withTimeout(p, ms, what) {
  let t;
  return Promise.race([
    p,
    new Promise((_, rej) => { t = setTimeout(() => rej(new Error(`timeout after ${ms} ms waiting for ${what}`)), ms); }),
  ]).finally(() => clearTimeout(t));
}

/** Polls fn() until it returns a truthy value; throws with `what` after timeoutMs. */
export async function waitFor(fn, { timeoutMs = 10000, intervalMs = 100, what = 'condition' } = {}) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) { last = e; }
    if (Date.now() > end) throw new Error(`timeout after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${last.message})` : ''}`);
    await sleep(intervalMs);
  }
}

/** Runs a command to completion (bounded); returns {code, stdout, stderr}. */
export function run(cmd, args, { cwd = SRC, timeoutMs = 120000, input, env } = {}) {
  const r = spawnSync(cmd, args, {
    cwd, input, encoding: 'utf8', timeout: timeoutMs, maxBuffer: 256 << 20,
    env: env ? { ...process.env, ...env } : process.env,
  });
  if (r.error) return { code: -1, stdout: r.stdout || '', stderr: `${r.stderr || ''}\n${r.error.message}` };
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr, signal: r.signal };
}

export function which(cmd) {
  for (const dir of (process.env.PATH || '').split(':').concat(['/usr/sbin', '/sbin'])) {
    const p = path.join(dir, cmd);
    try { fs.accessSync(p, fs.constants.X_OK); return p; } catch { /* next */ }
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// manifests

/** `kubectl kustomize` of a folder (relative to the repo); returns the YAML text. */
export function kustomize(dir) {
  const kubectl = which('kubectl');
  if (!kubectl) throw new Error('kubectl is not installed: the manifests are rendered with `kubectl kustomize`');
  const r = run(kubectl, ['kustomize', path.join(SRC, dir)], { timeoutMs: 60000 });
  if (r.code !== 0) throw new Error(`kubectl kustomize ${dir} failed (${r.code}):\n${r.stderr}`);
  return r.stdout;
}

/** Parses a multi-document YAML stream into plain objects (null documents dropped). */
export function parseDocs(text) {
  const out = [];
  for (const doc of YAML.parseAllDocuments(text)) {
    if (doc.errors.length) throw new Error(`YAML error: ${doc.errors[0].message}`);
    const o = doc.toJS({ maxAliasCount: -1 });
    if (o != null) out.push(o);
  }
  return out;
}

const renderCache = new Map();
/** The rendered objects of an overlay (cached per process). */
export function renderOverlay(name) {
  if (!renderCache.has(name)) renderCache.set(name, parseDocs(kustomize(`deploy/k8s/overlays/${name}`)));
  return renderCache.get(name);
}

export function findObj(objs, kind, name) {
  return objs.find((o) => o.kind === kind && (name === undefined || o.metadata?.name === name));
}

/** The ConfigMap whose name is `base` or `base-<kustomize hash>`. */
export function findGenerated(objs, kind, base) {
  return objs.find((o) => o.kind === kind && new RegExp(`^${base}(-[a-z0-9]{10})?$`).test(o.metadata?.name || ''));
}

/** The chatgw workload of an overlay: the Deployment, or the budget overlay's DaemonSet. */
export function gatewayWorkload(objs) {
  return objs.find((o) => (o.kind === 'Deployment' || o.kind === 'DaemonSet') && o.metadata?.name === 'chatgw');
}

/** The policy directory of the sorted scripts/*.lua. */
export function scriptFiles() {
  return fs.readdirSync(path.join(SRC, 'scripts')).filter((f) => f.endsWith('.lua') && !f.startsWith('.')).sort();
}

// ---------------------------------------------------------------------------------------------
// processes

const live = new Set();
function killAll() {
  for (const p of live) { try { p.kill('SIGKILL'); } catch { /* gone */ } }
  live.clear();
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(sig, () => { killAll(); process.exit(128 + { SIGINT: 2, SIGTERM: 15, SIGHUP: 1 }[sig]); });
}

/**
 * Starts a long-running process; collects its output lines (JSON lines parsed into .logs).
 * Returns {proc, logs, lines, waitLog(pred, ms), waitExit(ms), kill(sig), tail(n), exitInfo}.
 */
export function startProcess(cmd, args, { cwd = SRC, env = process.env, name = path.basename(cmd) } = {}) {
  const proc = spawn(cmd, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(proc);
  const logs = [];
  const lines = [];
  const waiters = new Set();
  let exitInfo = null;
  const exited = new Promise((resolve) => {
    proc.on('exit', (code, signal) => { exitInfo = { code, signal }; live.delete(proc); resolve(exitInfo); });
    proc.on('error', (error) => { exitInfo = { code: null, signal: null, error }; live.delete(proc); resolve(exitInfo); });
  });
  for (const [stream, tag] of [[proc.stdout, 'out'], [proc.stderr, 'err']]) {
    readline.createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) => {
      if (!line.trim()) return;
      lines.push(`${name} ${tag}: ${line}`);
      if (lines.length > 3000) lines.shift();
      let obj = null;
      if (line.startsWith('{')) { try { obj = JSON.parse(line); } catch { /* not JSON */ } }
      if (obj) {
        logs.push(obj);
        for (const w of waiters) w(obj);
      }
    });
  }
  return {
    proc,
    logs,
    lines,
    get exitInfo() { return exitInfo; },
    waitLog(pred, ms = 10000, what = 'log line') {
      const seen = logs.find(pred);
      if (seen) return Promise.resolve(seen);
      let fn;
      const p = new Promise((resolve) => { fn = (o) => { if (pred(o)) resolve(o); }; waiters.add(fn); });
      const early = exited.then((r) => { throw new Error(`${name} exited (code ${r.code}, signal ${r.signal}) before ${what}`); });
      return withTimeout(Promise.race([p, early]), ms, what).finally(() => waiters.delete(fn));
    },
    waitExit(ms = 10000) { return withTimeout(exited, ms, `${name} exit`); },
    kill(sig = 'SIGTERM') { try { proc.kill(sig); } catch { /* gone */ } },
    async stop(ms = 10000) {
      if (exitInfo) return exitInfo;
      this.kill('SIGTERM');
      try { return await this.waitExit(ms); } catch { this.kill('SIGKILL'); return withTimeout(exited, 5000, `${name} exit after SIGKILL`).catch(() => null); }
    },
    tail(n = 40) { return lines.slice(-n).join('\n'); },
  };
}

/** A free TCP port on 127.0.0.1 (bound then released). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, HOST, () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

/** True when a TCP connection to host:port opens within ms (kubelet's tcpSocket probe). */
export function tcpProbe(port, { host = HOST, ms = 1000 } = {}) {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    const done = (ok) => { clearTimeout(t); s.destroy(); resolve(ok); };
    const t = setTimeout(() => done(false), ms);
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

// ---------------------------------------------------------------------------------------------
// HTTP

/** GET http://127.0.0.1:port/path; resolves {status, headers, text, json()} (bounded). */
export function httpGet(port, pathname, { headers = {}, timeoutMs = 3000, host = HOST } = {}) {
  return withTimeout(new Promise((resolve, reject) => {
    const req = http.get({ host, port, path: pathname, headers, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        resolve({ status: res.statusCode, headers: res.headers, text, json: () => JSON.parse(text) });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`GET ${pathname}: socket timeout`)));
  }), timeoutMs + 500, `GET :${port}${pathname}`);
}

/** The value of a metric sample (name + exact label text) in Prometheus text, or undefined. */
export function metricValue(text, series) {
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    if (i > 0 && line.slice(0, i) === series) return Number(line.slice(i + 1));
  }
  return undefined;
}

/** Label sets of every sample of one metric name, e.g. [{version: "..."}]. */
export function metricSamples(text, name) {
  const out = [];
  const re = new RegExp(`^${name}(\\{([^}]*)\\})? (\\S+)$`);
  for (const line of text.split('\n')) {
    const m = re.exec(line);
    if (!m) continue;
    const labels = {};
    for (const lm of (m[2] || '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[lm[1]] = lm[2];
    out.push({ labels, value: Number(m[3]) });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// chat clients

/**
 * Opens a chat WebSocket (ws://host:port/ws?room=R&name=N) and queues every JSON message.
 * Returns {ws, messages, next(pred, ms, what), send(obj), closed (promise of {code, reason}),
 * closeInfo}.
 */
export function chatClient(port, { room = 'lobby', name = 'k8s', host = HOST, origin, timeoutMs = 5000 } = {}) {
  return withTimeout(new Promise((resolve, reject) => {
    const url = `ws://${host}:${port}/ws?room=${encodeURIComponent(room)}&name=${encodeURIComponent(name)}`;
    const ws = new WebSocket(url, 'chatgw.v1', { handshakeTimeout: timeoutMs, ...(origin ? { origin } : {}) });
    const messages = [];
    const waiters = new Set();
    const c = {
      ws,
      messages,
      closeInfo: null,
      closed: new Promise((r) => ws.once('close', (code, reason) => {
        c.closeInfo = { code, reason: reason.toString() };
        for (const w of waiters) w(null);
        r(c.closeInfo);
      })),
      send(obj) { ws.send(JSON.stringify(obj)); },
      /** Resolves with the first queued message (seen or future) matching pred, and consumes it. */
      next(pred = () => true, ms = 5000, what = 'message') {
        const i = messages.findIndex(pred);
        if (i >= 0) return Promise.resolve(messages.splice(i, 1)[0]);
        let fn;
        const p = new Promise((res, rej) => {
          fn = (m) => {
            if (m === null) { rej(new Error(`connection closed (${c.closeInfo?.code}) while waiting for ${what}`)); return; }
            const j = messages.indexOf(m);
            if (pred(m) && j >= 0) { messages.splice(j, 1); res(m); }
          };
          waiters.add(fn);
        });
        if (c.closeInfo) return Promise.reject(new Error(`connection closed (${c.closeInfo.code}) before ${what}`));
        return withTimeout(p, ms, what).finally(() => waiters.delete(fn));
      },
    };
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      let m;
      try { m = JSON.parse(data.toString('utf8')); } catch { return; }
      messages.push(m);
      for (const w of [...waiters]) w(m);
    });
    ws.once('open', () => resolve(c));
    ws.once('unexpected-response', (req, res) => { reject(new Error(`WebSocket upgrade answered ${res.statusCode}`)); req.destroy(); });
    ws.once('error', reject);
    ws.on('error', () => {});
  }), timeoutMs + 1000, `chat WebSocket to :${port}`);
}

/** Two clients in one room exchange a message; returns the welcome of the first. */
export async function chatRoundTrip(port, { room = `k8s-${process.pid}`, host = HOST } = {}) {
  const a = await chatClient(port, { room, name: 'alice', host });
  const b = await chatClient(port, { room, name: 'bob', host });
  try {
    const welcome = await a.next((m) => m.type === 'welcome', 5000, 'welcome (alice)');
    await b.next((m) => m.type === 'welcome', 5000, 'welcome (bob)');
    await b.next((m) => m.type === 'room' && m.room === room, 5000, 'room snapshot (bob)');
    const text = `hello through the gateway ${Date.now()}`;
    a.send({ type: 'msg', room, text, cid: 'k8s-1' });
    const ack = await a.next((m) => m.type === 'ack' && m.cid === 'k8s-1', 5000, 'ack');
    const got = await b.next((m) => m.type === 'msg' && m.text === text, 5000, 'msg at bob');
    return { welcome, ack, got };
  } finally {
    a.ws.terminate();
    b.ws.terminate();
  }
}

export { WebSocket, YAML };
