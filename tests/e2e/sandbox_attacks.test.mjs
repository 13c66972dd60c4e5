// The policy sandbox under attack, end to end: scripts that try to hang a worker (endless loops
// in every hook, loops that catch the watchdog's error, single C calls that run for ever or ask
// for gigabytes, a gw.store filled far past its cap, 10 MiB log messages) and clients that try
// to make the default policy do expensive work (a 510 KB signal of 170k empty arrays from 16
// connections, a slash command built for a backtracking pattern).
//
// For every attack the test checks, while it runs:
//   (a) no stall: a separate thread polls GET /healthz every ~20 ms (bounded in count and time)
//       and the worst latency stays under STALL_MS: the bound on a loop stall, not a
//       speed target;
//   (b) two bystanders in another room, from another address (BYSTANDER_ADDR), keep chatting
//       during and after the attack, not one message refused;
//   (c) the attacked hook's failure mode (policy_error frame, refused upgrade or join, rejected
//       reload) and the kind counted in chatgw_policy_errors_total{hook,kind};
//   (d) RSS stays bounded where memory is involved;
// and, at the end of each server's life, (e) SIGTERM ends it within drain_timeout_ms plus a few
// seconds, also when a worker is stuck in Lua.
//
// Trips: after a hook call timed out, that hook is tripped for the client's address for 20
// timeouts (TRIP_MS): its calls from that address fail at once (the same failure mode, counted as
// kind "tripped", no log line, Lua not entered); other addresses notice nothing; on_tick trips
// for the whole worker; a reload of a new version clears every trip. So attackers connect from
// 127.0.0.1 (127.0.0.2 too where there are 16 of them), the bystanders from BYSTANDER_ADDR, and an
// attack repeated from one address is checked as timeout + tripped (its first call runs into the
// watchdog). Where every call must run Lua to show that each one ends in the watchdog, each call
// comes from an address of its own (freshClient), one after the other.
//
// Fixtures: tests/e2e/fixtures/attacks/<group>/policy.lua (see fixtures/README.md); the client
// attacks run against the default policy (scripts/).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import net from 'node:net';
import {
  startServer, chatClient, scrape, waitFor, sleep, rawWebSocket, readyz, fixture, scriptsDir,
  defaultScripts, writeFiles, runCheck, procRssKb, parseResponse, HOST, withTimeout,
} from './lib.mjs';

const T = { timeout: 60000 };
const STALL_MS = 200;                 // the issue: no stall of the loop beyond this
const DRAIN_MS = 1000;
const EXIT_GRACE_MS = 6500;           // "drain_timeout_ms plus a few seconds"
const TIMEOUT_MS = 50;                // policy_timeout_ms (the default), passed explicitly
const MEMORY_MB = 64;                 // policy_memory_mb (default)
const STORE_MB = 16;                  // policy_store_mb (default), passed explicitly
const RSS_SLACK_MB = 64;              // the process itself: loop, buffers, allocator slack
const BASE = ['--policy-timeout-ms', TIMEOUT_MS, '--drain-timeout-ms', DRAIN_MS];
const FAST = ['--rate-msgs-per-sec', '100000', '--rate-burst', '100000'];
// under an ASan build freed blocks sit in a quarantine and would read as RSS growth (as limits.test.mjs)
const ASAN_ENV = {
  ASAN_OPTIONS: [process.env.ASAN_OPTIONS, 'quarantine_size_mb=1', 'thread_local_quarantine_size_kb=64']
    .filter(Boolean).join(':'),
};
const TIMEOUT_RE = /timeout|timed out|time limit|policy_timeout_ms/i;
const TRIP_MS = 20 * TIMEOUT_MS;       // a timed-out hook fails at once for this long (per address)
const ATTACKER_ADDR = '127.0.0.1';    // what a client without localAddress connects from
const BYSTANDER_ADDR = '127.0.0.3';
const PROBE_ADDRS = ['127.0.0.20', '127.0.0.21', '127.0.0.22', '127.0.0.23'];   // under accept_rate_per_ip

let seq = 0;
const uniq = (p = 'hello') => `${p} number ${++seq}`;
const nextCid = (p = 'atk') => `${p}-${++seq}`;

// ---------------------------------------------------------------------------------------------
// (a) the stall probe: GET /healthz on a fresh connection every ~20 ms, from a worker thread, so
// that the test's own busy main thread (big frames, JSON) does not show up as server latency.

const PROBE_CODE = `
const { parentPort, workerData } = require('node:worker_threads');
const net = require('node:net');
const { port, intervalMs, maxSamples, maxMs, addrs } = workerData;
const started = Date.now();
let stop = false;
const lat = [];
const failures = [];
parentPort.on('message', () => { stop = true; });
function once(i) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    let buf = '';
    let done = false;
    const finish = (ok, why) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve({ ms: performance.now() - t0, ok, why });
    };
    const s = net.connect({ host: '127.0.0.1', port, localAddress: addrs[i % addrs.length] });
    const timer = setTimeout(() => finish(false, 'no answer in 5 s'), 5000);
    s.on('connect', () => s.write('GET /healthz HTTP/1.1\\r\\nHost: probe\\r\\nConnection: close\\r\\n\\r\\n'));
    s.on('data', (d) => {
      buf += d.toString('latin1');
      if (buf.includes('\\r\\n\\r\\n')) finish(/^HTTP\\/1\\.1 200 /.test(buf), buf.slice(0, 40));
    });
    s.on('close', () => finish(/^HTTP\\/1\\.1 200 /.test(buf), 'closed: ' + JSON.stringify(buf.slice(0, 40))));
    s.on('error', (e) => finish(false, e.code || e.message));
  });
}
(async () => {
  let i = 0;
  while (!stop && lat.length < maxSamples && Date.now() - started < maxMs) {
    const r = await once(i++);
    lat.push(r.ms);
    if (!r.ok) failures.push(r.why);
    if (lat.length === 1) parentPort.postMessage({ ready: true });
    await new Promise((res) => setTimeout(res, intervalMs));
  }
  parentPort.postMessage({ lat, failures });
})();
`;

/** Starts polling /healthz; ready resolves after the first sample; stop() resolves {max, n, failures, lat}. */
function stallProbe(port, { intervalMs = 20, maxSamples = 3000, maxMs = 60000 } = {}) {
  const w = new Worker(PROBE_CODE, { eval: true, workerData: { port, intervalMs, maxSamples, maxMs, addrs: PROBE_ADDRS } });
  let isReady;
  const ready = new Promise((resolve) => { isReady = resolve; });
  const done = new Promise((resolve, reject) => {
    w.on('message', (m) => { if (m.ready) isReady(); else { isReady(); resolve(m); } });
    w.once('error', (e) => { isReady(); reject(e); });
  });
  return {
    ready,
    async stop() {
      w.postMessage('stop');
      const r = await done;
      await w.terminate();
      const sorted = [...r.lat].sort((a, b) => a - b);
      return { ...r, n: r.lat.length, max: sorted.at(-1) ?? 0, p50: sorted[sorted.length >> 1] ?? 0 };
    },
  };
}

// ---------------------------------------------------------------------------------------------
// (b) bystanders: two clients in another room chatting through the same policy

/** c says text in room; resolves once peer got it (and c got its own echo). */
async function relay(c, peer, room, text, ms = 5000) {
  const cid = nextCid('say');
  c.send({ type: 'msg', room, text, cid });
  const r = await c.next((m) => (m.type === 'ack' && m.cid === cid) || (m.type === 'error' && m.ref === cid), ms, `ack ${cid}`);
  if (r.type === 'error') throw new Error(`${JSON.stringify(text.slice(0, 40))} was refused: ${JSON.stringify(r)}`);
  const { id } = r;
  const own = await c.next((m) => m.type === 'msg' && m.id === id, ms, `own echo of ${id}`);
  const got = await peer.next((m) => m.type === 'msg' && m.id === id, ms, `peer copy of ${id}`);
  assert.equal(got.text, text);
  return own;
}

async function bystanders(srv, room = 'calm') {
  const opts = { wsOpts: { localAddress: BYSTANDER_ADDR } };
  const a = await chatClient(srv.port, `/ws?room=${room}&name=bystander-a`, opts);
  const b = await chatClient(srv.port, `/ws?room=${room}&name=bystander-b`, opts);
  await a.next((m) => m.type === 'room' && m.room === room, 5000, 'bystander a joined');
  await b.next((m) => m.type === 'room' && m.room === room, 5000, 'bystander b joined');
  a.drain();
  b.drain();
  return { a, b, room, close() { a.terminate(); b.terminate(); } };
}

/** The bystanders talk (alternately) until stop(); stop() resolves {delivered, errors}. */
function chatter(by) {
  let stop = false;
  const stats = { delivered: 0, errors: [] };
  const loop = (async () => {
    for (let turn = 0; !stop; turn++) {
      const [from, to] = turn % 2 ? [by.b, by.a] : [by.a, by.b];
      try {
        await relay(from, to, by.room, uniq('bystander'));
        stats.delivered++;
      } catch (e) {
        stats.errors.push(e.message.slice(0, 300));
        if (stats.errors.length >= 3) break;
      }
      from.drain();
      await sleep(150);
    }
  })();
  return { async stop() { stop = true; await loop; return stats; } };
}

/**
 * Runs attack() while the stall probe polls /healthz and the bystanders chat (for at least
 * minMs, so that a quick attack is watched a little after it too); then checks (a) and (b) and
 * that the process is still up. Those checks are soft: a failure is recorded and reported at the
 * end of the test (see check()) together with whatever the test found next, so that one run
 * shows every property an attack broke. Resolves what attack() resolved.
 */
async function underAttack(srv, by, attack, what = 'the attack', { minMs = 300 } = {}) {
  const probe = stallProbe(srv.port);
  await withTimeout(probe.ready, 5000, 'the first /healthz sample').catch(() => {});   // watching before the attack starts
  const t0 = Date.now();
  const talk = chatter(by);
  let out, err;
  try { out = await attack(); } catch (e) { err = e; }
  if (!err && Date.now() - t0 < minMs) await sleep(minMs - (Date.now() - t0));
  const talked = await talk.stop();
  const p = await probe.stop();
  if (process.env.CHATGW_E2E_STALL_STATS) {
    process.stderr.write(`stall probe: ${what}: max ${p.max.toFixed(1)} ms, median ${p.p50.toFixed(1)} ms, ` +
      `${p.n} samples, ${p.failures.length} failed; bystanders ${talked.delivered}\n`);
  }
  softly(() => assert.equal(srv.exitInfo, null, `the process is still running\n${srv.tail(10)}`));
  softly(() => assert.ok(p.n >= 3, `the /healthz probe ran (${p.n} samples)`));
  softly(() => assert.deepEqual(p.failures.slice(0, 5), [],
    `every /healthz during ${what} answered 200 (${p.failures.length} of ${p.n} did not)`));
  softly(() => assert.ok(p.max < STALL_MS,
    `worst /healthz latency during ${what}: ${p.max.toFixed(0)} ms (bound ${STALL_MS} ms; median ` +
    `${p.p50.toFixed(1)} ms over ${p.n} samples)`));
  softly(() => assert.deepEqual(talked.errors, [], `the bystanders kept chatting during ${what} ` +
    `(${talked.delivered} messages got through)`));
  softly(() => assert.ok(talked.delivered >= 1, `a bystander message got through during ${what}`));
  if (err) throw err;
  // and after it: a bystander message gets through within a few seconds
  const after = Date.now();
  let last = null;
  for (let i = 0; i < 10; i++) {
    try {
      await relay(by.a, by.b, by.room, uniq('bystander after'), 3000);
      last = null;
      break;
    } catch (e) {
      last = e;
      by.a.drain();
      by.b.drain();
      await sleep(300);
      if (Date.now() - after > 3000) break;
    }
  }
  softly(() => assert.equal(last, null, `a bystander message after ${what}: ${last?.message}`));
  return out;
}

// soft failures of the current test (underAttack's checks), reported by check() at its end
let soft = [];
function softly(fn) {
  try { fn(); } catch (e) { soft.push(e.message.split('\n').slice(0, 12).join('\n')); }
}
async function softlyAsync(fn) {
  try { await fn(); } catch (e) { soft.push(e.message.split('\n').slice(0, 12).join('\n')); }
}

/** it(), with the soft failures of underAttack reported at the end, after the test's own checks. */
function check(name, fn) {
  return it(name, T, async (t) => {
    soft = [];
    let err = null;
    try { await fn(t); } catch (e) { err = e; }
    const found = soft;
    soft = [];
    if (found.length) {
      const own = err ? `\n--- and then:\n${err.message.split('\n').slice(0, 12).join('\n')}` : '';
      assert.fail(`${found.join('\n---\n')}${own}`);
    }
    if (err) throw err;
  });
}

// ---------------------------------------------------------------------------------------------
// (c) outcomes, metrics and logs

/** Sends msg with a fresh cid; resolves the first frame naming that cid (ack, error ref, reply). */
async function outcome(c, msg, ms = 5000) {
  const cid = nextCid();
  c.send({ ...msg, cid });
  return c.next((m) => m.ref === cid || m.cid === cid, ms,
    `the outcome of ${msg.type} ${JSON.stringify(String(msg.text ?? msg.room ?? '').slice(0, 40))} (${cid})`);
}

/** Runs fn(i) sequentially for about ms (at least min, at most max times); resolves the count. */
async function repeatFor(ms, fn, { min = 2, max = 40 } = {}) {
  const end = Date.now() + ms;
  let n = 0;
  while (n < max && (n < min || Date.now() < end)) await fn(n++);
  return n;
}

/** chatgw_policy_errors_total as {"hook/kind": value}. */
async function policyErrorCounts(port) {
  const { samples } = await scrape(port);
  const out = {};
  for (const s of samples) {
    if (s.name === 'chatgw_policy_errors_total') out[`${s.labels.hook}/${s.labels.kind}`] = s.value;
  }
  return out;
}

/** The counters that changed between a and b, as {"hook/kind": delta}. */
function deltaOf(a, b) {
  const d = {};
  for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) {
    const v = (b[k] || 0) - (a[k] || 0);
    if (v) d[k] = v;
  }
  return d;
}

/** Waits until the policy error counters moved by exactly want (bounded), then asserts it. */
async function expectErrorDelta(port, before, want, what) {
  let d;
  await waitFor(async () => {
    d = deltaOf(before, await policyErrorCounts(port));
    return JSON.stringify(d) === JSON.stringify(want);
  }, { timeoutMs: 3000, intervalMs: 100, what: `chatgw_policy_errors_total to move by ${JSON.stringify(want)}` })
    .catch(() => {});
  assert.deepEqual(d, want, `chatgw_policy_errors_total{hook,kind} after ${what}`);
}

const hookFailures = (srv, mark) => srv.logs.slice(mark).filter((o) => o.msg === 'policy hook failed');
const isReloadFailed = (o) => typeof o.msg === 'string' && o.msg.startsWith('policy reload failed');

/** Asserts that l is the log line of a timed-out call of hook, which tripped the hook. */
function assertTimeoutLine(l, hook) {
  assert.equal(l.hook, hook);
  assert.equal(l.kind, 'timeout', `kind of ${JSON.stringify(l.error)}`);
  assert.match(String(l.error), TIMEOUT_RE, `the error names the timeout: ${l.error}`);
  assert.equal(l.tripped_ms, TRIP_MS, `the line says how long the hook is tripped: ${JSON.stringify(l).slice(0, 300)}`);
}

/**
 * The checks of an attack whose every call must end in the watchdog (each from an address of its
 * own, so that no trip stands in the way): first what the calls that ran did (each logged one
 * with kind timeout and tripped_ms), then (soft, so that both show) that every one of the n calls
 * ran into the guard on its own: n timeouts counted (none tripped), n log lines.
 */
async function everyCallTimedOut(srv, before, mark, n, hook, what) {
  await waitFor(() => hookFailures(srv, mark).length >= 1, { timeoutMs: 3000, what: '"policy hook failed" log lines' })
    .catch(() => {});
  const logs = hookFailures(srv, mark);
  assert.ok(logs.length >= 1, `${what}: no "policy hook failed" line`);
  for (const l of logs) assertTimeoutLine(l, hook);
  await softlyAsync(() => expectErrorDelta(srv.port, before, { [`${hook}/timeout`]: n }, `${n} x ${what}`));
  softly(() => assert.equal(hookFailures(srv, mark).length, n, `${what}: one "policy hook failed" line per call`));
}

/**
 * The checks of an attack of n calls of hook repeated from one address: the calls that ran Lua
 * ended in the watchdog (each logged once, kind timeout, tripped_ms), the others failed at once
 * (tripped, not logged): timeout + tripped == n, nothing else, at least minTimeouts timeouts.
 * Resolves the delta.
 */
async function timedOutOrTripped(srv, before, mark, n, hook, what, { minTimeouts = 1 } = {}) {
  const T_ = `${hook}/timeout`, R_ = `${hook}/tripped`;
  let d;
  await waitFor(async () => {
    d = deltaOf(before, await policyErrorCounts(srv.port));
    return (d[T_] || 0) + (d[R_] || 0) >= n && hookFailures(srv, mark).length >= (d[T_] || 0);
  }, { timeoutMs: 3000, intervalMs: 100, what: `${n} ${hook} failures counted` }).catch(() => {});
  for (const k of Object.keys(d)) {
    assert.ok(k === T_ || k === R_, `only ${hook} timed out or was tripped (${what}): ${JSON.stringify(d)}`);
  }
  assert.equal((d[T_] || 0) + (d[R_] || 0), n, `every one of the ${n} calls counted once, as timeout or tripped (${what}): ${JSON.stringify(d)}`);
  assert.ok((d[T_] || 0) >= minTimeouts, `at least ${minTimeouts} ran into the watchdog (${what}): ${JSON.stringify(d)}`);
  const logs = hookFailures(srv, mark);
  for (const l of logs) assertTimeoutLine(l, hook);
  assert.equal(logs.length, d[T_], `${what}: one "policy hook failed" line per timeout, none for a tripped call`);
  return d;
}

// Addresses that no client used before, one per attacking call where each call must run Lua:
// 127.0.1.1, 127.0.1.2, ... (all of 127.0.0.0/8 is loopback on Linux).
let freshN = 0;
function freshAddr() {
  const n = freshN++;
  return `127.0.${1 + Math.floor(n / 250)}.${1 + (n % 250)}`;
}

/** A chat client from a fresh address, joined to room. */
async function freshClient(srv, room, name = `fresh${freshN}`) {
  const c = await chatClient(srv.port, `/ws?room=${room}&name=${name}`, { wsOpts: { localAddress: freshAddr() } });
  await c.next((m) => m.type === 'room' && m.room === room, 5000, `${name} joined ${room}`);
  return c;
}

/** The status and body a WebSocket upgrade at reqPath from localAddress gets (any non-101 answer). */
function handshakeFrom(port, reqPath, localAddress) {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: HOST, port, localAddress });
    let buf = Buffer.alloc(0);
    let done = false;
    const finish = (eof) => {
      if (done) return;
      let r = null;
      try { r = parseResponse(buf, { eof }); } catch (e) { done = true; s.destroy(); reject(e); return; }
      if (!r && !eof) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      if (!r) reject(new Error(`no answer to ${reqPath} from ${localAddress}: ${JSON.stringify(buf.toString('latin1').slice(0, 200))}`));
      else resolve({ status: r.status, body: r.text });
    };
    const timer = setTimeout(() => finish(true), 5000);
    s.on('connect', () => s.write(`GET ${reqPath} HTTP/1.1\r\nHost: ${HOST}:${port}\r\nUpgrade: websocket\r\n` +
      'Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n'));
    s.on('data', (d) => { buf = Buffer.concat([buf, d]); finish(false); });
    s.on('close', () => finish(true));
    s.on('error', () => finish(true));
  });
}

/** c's next message gets through (retried for a few seconds after an attack). */
async function relayEventually(c, peer, room, text, ms = 3000) {
  const end = Date.now() + ms;
  for (;;) {
    try {
      return await relay(c, peer, room, text);
    } catch (e) {
      c.drain();
      if (Date.now() > end) throw e;
      await sleep(200);
    }
  }
}

/** The "policy hook failed" log lines after mark, once there are n of them (bounded wait). */
async function failureLogs(srv, mark, n) {
  await waitFor(() => hookFailures(srv, mark).length >= n, { timeoutMs: 3000, what: `${n} "policy hook failed" log lines` })
    .catch(() => {});
  const logs = hookFailures(srv, mark);
  assert.equal(logs.length, n, `one "policy hook failed" line per failure: ${JSON.stringify(logs.map((l) => [l.hook, l.kind]))}`);
  return logs;
}

/** The status (and body) a WebSocket upgrade at reqPath gets. */
async function handshake(port, reqPath) {
  const r = await rawWebSocket(port, reqPath, {}, { timeoutMs: 5000 });
  try { return { status: r.status, body: r.body ? r.body.toString('utf8') : '' }; } finally { r.close?.(); }
}

/** Writes files into the served directory and waits for pred among the logs after that (SIGHUP
 * as a second trigger when the directory watch stays silent). */
async function reloadWith(srv, dir, files, pred, what) {
  const mark = srv.logs.length;
  writeFiles(dir, files);
  const seen = () => srv.logs.slice(mark).find(pred);
  try {
    return await waitFor(seen, { timeoutMs: 3000, what });
  } catch {
    srv.proc.kill('SIGHUP');
    return waitFor(seen, { timeoutMs: 5000, what: `${what} (after SIGHUP too)\n${srv.tail(10)}` });
  }
}

// ---------------------------------------------------------------------------------------------
// (e) SIGTERM

async function sigtermEndsIt(srv, { code0 = true } = {}) {
  assert.equal(srv.exitInfo, null, 'the server was still running before SIGTERM');
  const t0 = Date.now();
  srv.proc.kill('SIGTERM');
  let r;
  try {
    r = await srv.waitExit(DRAIN_MS + EXIT_GRACE_MS);
  } catch {
    srv.proc.kill('SIGKILL');
    assert.fail(`still running ${Date.now() - t0} ms after SIGTERM (drain_timeout_ms ${DRAIN_MS})\n${srv.tail(10)}`);
  }
  if (code0) assert.equal(r.code, 0, `exit code ${r.code} signal ${r.signal}\n${srv.tail(10)}`);
  return r;
}

// ---------------------------------------------------------------------------------------------
// a server of its own for each group of attacks

/**
 * Serves tests/e2e/fixtures/attacks/<group>/policy.lua (copied into a scripts directory of its
 * own) with args, opens a chat client in room for each of names and waits for their 'room'
 * snapshots, then brings in the bystanders. Resolves {srv, dir, s, peer, by}: s and peer are the
 * first two clients. Where a step fails, what was started is ended before the error goes on.
 */
async function attackSetup(group, room, args = [...BASE, ...FAST], names = ['attacker', 'peer']) {
  const dir = scriptsDir({ 'policy.lua': fixture(`attacks/${group}/policy.lua`) }, `chatgw-e2e-attacks-${group}-`);
  const srv = await startServer(['--scripts-dir', dir, ...args], { env: ASAN_ENV });
  const clients = [];
  let by;
  try {
    for (const name of names) clients.push(await chatClient(srv.port, `/ws?room=${room}&name=${name}`));
    for (const c of clients) await c.next('room');
    by = await bystanders(srv);
  } catch (e) {
    await attackTeardown(srv, by, ...clients);
    throw e;
  }
  const [s, peer] = clients;
  return { srv, dir, s, peer, by };
}

/** Ends what a block started (any of it may be missing): the clients, the bystanders, the server. */
async function attackTeardown(srv, by, ...clients) {
  for (const c of clients) c?.terminate();
  by?.close();
  if (srv) await srv.stop('SIGKILL').catch(() => {});
}

// =============================================================================================
// 1. endless loops in every hook: only the wall-clock watchdog can end them (no budget)

describe('watchdog: an endless loop in any hook ends at policy_timeout_ms (no instruction budget)', () => {
  let srv, dir, s, peer, by, good;
  const room = 'arena';
  const SPIN = fixture('attacks/spin/policy.lua');
  before(async () => {
    ({ srv, dir, s, peer, by } = await attackSetup('spin', room));
    good = (await readyz(srv.port)).body.policy.version;
  });
  after(() => attackTeardown(srv, by, s, peer));

  // ms: how long the attacker repeats it. 'spin' goes on, paced, past the trip (TRIP_MS after its
  // first timeout), so that its calls run into the watchdog again once the trip is over.
  const modes = [
    ['spin', 'while true do end', { ms: 1500, gapMs: 40, minTimeouts: 2 }],
    ['count', 'a counting loop', { ms: 600 }],
    ['tail', 'an endless tail call', { ms: 600 }],
    ['gsub_cb', 'a string.gsub callback that loops (Lua under C)', { ms: 600 }],
    ['sort_cb', 'a table.sort comparator that loops', { ms: 600 }],
    ['index_mm', 'an __index metamethod that loops', { ms: 600 }],
    ['load_spin', 'a load()ed chunk that loops', { ms: 600 }],
  ];
  const FRESH = 2;                    // calls from addresses of their own, after the repeated ones
  for (const [mode, what, { ms, gapMs = 0, minTimeouts = 1 }] of modes) {
    check(`on_message: ${what} -> policy_error to the sender, kind timeout (then tripped for that address); no stall, bystanders chat`, async () => {
      const fresh = [];
      try {
        const before = await policyErrorCounts(srv.port);
        const mark = srv.logs.length;
        let n = 0, mid, midMark;
        await underAttack(srv, by, async () => {
          n = await repeatFor(ms, async (i) => {
            const r = await outcome(s, { type: 'msg', room, text: `spin:${mode}` });
            assert.equal(r.type, 'error', `the hook must fail: ${JSON.stringify(r)}`);
            assert.equal(r.code, 'policy_error', JSON.stringify(r));
            if (i === 0) {                                          // the first one ran into the watchdog
              await expectErrorDelta(srv.port, before, { 'on_message/timeout': 1 }, `the first spin:${mode}`);
            }
            if (gapMs) await sleep(gapMs);
          }, { max: gapMs ? 60 : 40 });
          // every call from an address of its own runs Lua, and each ends in the watchdog
          mid = await policyErrorCounts(srv.port);
          midMark = srv.logs.length;
          for (let k = 0; k < FRESH; k++) {
            const c = await freshClient(srv, room);
            fresh.push(c);
            const r = await outcome(c, { type: 'msg', room, text: `spin:${mode}` });
            assert.equal(r.type, 'error', `the hook must fail: ${JSON.stringify(r)}`);
            assert.equal(r.code, 'policy_error', JSON.stringify(r));
          }
        }, `spin:${mode}`);
        assert.equal(peer.all.filter((m) => m.type === 'msg' && String(m.text).startsWith('spin:')).length, 0,
          'a failed message is never delivered');
        await everyCallTimedOut(srv, mid, midMark, FRESH, 'on_message', `spin:${mode} from ${FRESH} other addresses`);
        await timedOutOrTripped(srv, before, mark, n + FRESH, 'on_message', `${n} x spin:${mode} from ${ATTACKER_ADDR}`,
          { minTimeouts: minTimeouts + FRESH });
        const own = await relayEventually(s, peer, room, uniq('attacker again'));
        assert.equal(own.via, 'spin', 'the next message goes through the same policy');
      } finally {
        for (const c of fresh) c.terminate();
      }
      s.drain();
      peer.drain();
    });
  }

  // The point of the trip: 80 messages that each would run to the timeout would hold the loop
  // 80 x 50 ms; tripped per address, they cost about one timeout per address.
  const BURST_ADDRS = [ATTACKER_ADDR, '127.0.0.2'];
  check('on_message: 16 connections over 2 addresses send 5 endless loops each at once: every one fails, about one timeout per address, no stall, bystanders chat', async (t) => {
    const conns = [];
    try {
      for (let i = 0; i < 16; i++) {
        const c = await chatClient(srv.port, `/ws?room=${room}&name=burst${i}`,
          { wsOpts: { localAddress: BURST_ADDRS[i % BURST_ADDRS.length] } });
        await c.next('room');
        conns.push(c);
      }
      const before = await policyErrorCounts(srv.port);
      const mark = srv.logs.length;
      const outcomes = await underAttack(srv, by, () => Promise.all(conns.flatMap((c) =>
        Array.from({ length: 5 }, () => outcome(c, { type: 'msg', room, text: 'spin:spin' }, 20000)))),
      '80 endless loops at once from 16 connections of 2 addresses');
      const bad = outcomes.filter((r) => r.type !== 'error' || r.code !== 'policy_error');
      assert.deepEqual(bad.slice(0, 3), [], 'every looping message failed with policy_error');
      // each address's first message ran Lua into the watchdog (neither was tripped before)
      const d = await timedOutOrTripped(srv, before, mark, 80, 'on_message', '80 endless loops from 2 addresses',
        { minTimeouts: BURST_ADDRS.length });
      t.diagnostic(`80 endless loops from ${BURST_ADDRS.length} addresses: ${JSON.stringify(d)}`);
    } finally {
      for (const c of conns) c.terminate();
    }
    peer.drain();
  });

  /** A plain client from BYSTANDER_ADDR is admitted and joins a room: the attacker's trips are not its own. */
  async function otherAddressServed(what) {
    const o = await chatClient(srv.port, `/ws?room=calm-too&name=other`, { wsOpts: { localAddress: BYSTANDER_ADDR } })
      .catch((e) => assert.fail(`a connection from ${BYSTANDER_ADDR} during ${what}: ${e.message}`));
    try {
      await o.next((m) => m.type === 'room' && m.room === 'calm-too', 5000, `the other address joined calm-too during ${what}`);
      await o.join('calm-three');
    } finally {
      o.terminate();
    }
  }

  check('on_connect: an endless loop refuses the upgrade (policy_fail closed: 503 policy_error), kind timeout, then tripped for that address', async () => {
    const before = await policyErrorCounts(srv.port);
    const mark = srv.logs.length;
    const FRESH_CONNECTS = 3;
    let n = 0, mid, midMark;
    await underAttack(srv, by, async () => {
      n = await repeatFor(1000, async (i) => {
        const r = await handshake(srv.port, `/ws?room=${room}&name=x${i}&attack=${i % 2 ? 'count' : 'spin'}`);
        assert.equal(r.status, 503, `refused (fail closed): ${r.status} ${r.body}`);
        assert.match(r.body, /policy_error/);
        if (i === 0) {
          await expectErrorDelta(srv.port, before, { 'on_connect/timeout': 1 }, 'the first looping on_connect');
          await otherAddressServed('the on_connect trip');
        }
      });
      mid = await policyErrorCounts(srv.port);
      midMark = srv.logs.length;
      for (let k = 0; k < FRESH_CONNECTS; k++) {
        const r = await handshakeFrom(srv.port, `/ws?room=${room}&name=f${k}&attack=${k % 2 ? 'count' : 'spin'}`, freshAddr());
        assert.equal(r.status, 503, `refused (fail closed): ${r.status} ${r.body}`);
        assert.match(r.body, /policy_error/);
      }
    }, 'on_connect loops');
    await everyCallTimedOut(srv, mid, midMark, FRESH_CONNECTS, 'on_connect', `looping on_connect from ${FRESH_CONNECTS} other addresses`);
    // otherAddressServed's connect and join ran their hooks without a failure (only on_connect counted)
    await timedOutOrTripped(srv, before, mark, n + FRESH_CONNECTS, 'on_connect', `${n} looping on_connect from ${ATTACKER_ADDR}`,
      { minTimeouts: 1 + FRESH_CONNECTS });
    const c = await waitFor(() => chatClient(srv.port, `/ws?room=${room}&name=fine`).catch(() => null),
      { timeoutMs: 3000, intervalMs: 200, what: 'a plain connection admitted after the attack' });
    await c.close();
  });

  check('on_join: an endless loop refuses the join with policy_error, kind timeout, then tripped for that address; the connection stays', async () => {
    const before = await policyErrorCounts(srv.port);
    const mark = srv.logs.length;
    const FRESH_JOINS = 3;
    const fresh = [];
    try {
      let n = 0, mid, midMark;
      await underAttack(srv, by, async () => {
        n = await repeatFor(1000, async (i) => {
          const target = i % 2 ? 'spin-count' : 'spin-spin';
          const e = await s.expectError({ type: 'join', room: target }, 'policy_error', 5000);
          assert.equal(e.ref, target);
          if (i === 0) {
            await expectErrorDelta(srv.port, before, { 'on_join/timeout': 1 }, 'the first looping on_join');
            await otherAddressServed('the on_join trip');
          }
        });
        mid = await policyErrorCounts(srv.port);
        midMark = srv.logs.length;
        for (let k = 0; k < FRESH_JOINS; k++) {
          const c = await freshClient(srv, room);
          fresh.push(c);
          const target = k % 2 ? 'spin-count' : 'spin-spin';
          const e = await c.expectError({ type: 'join', room: target }, 'policy_error', 5000);
          assert.equal(e.ref, target);
        }
      }, 'on_join loops');
      assert.ok(s.isOpen);
      for (const c of fresh) assert.ok(c.isOpen, 'a refused join leaves the connection open');
      await everyCallTimedOut(srv, mid, midMark, FRESH_JOINS, 'on_join', `looping on_join from ${FRESH_JOINS} other addresses`);
      await timedOutOrTripped(srv, before, mark, n + FRESH_JOINS, 'on_join', `${n} looping on_join from ${ATTACKER_ADDR}`,
        { minTimeouts: 1 + FRESH_JOINS });
    } finally {
      for (const c of fresh) c.terminate();
    }
    await relayEventually(s, peer, room, uniq('after join loops'));
    // once the trip is over, the attacker's address joins again (tripped attempts until then)
    await waitFor(async () => {
      s.send({ type: 'join', room: 'after-join-loops' });
      const r = await s.next((m) => (m.type === 'room' && m.room === 'after-join-loops') ||
        (m.type === 'error' && m.ref === 'after-join-loops'), 3000, 'the join after the attack');
      return r.type === 'room' || (assert.equal(r.code, 'policy_error', JSON.stringify(r)), false);
    }, { timeoutMs: 3000, intervalMs: 200, what: 'a join from the attacker\'s address admitted after the attack' });
    s.send({ type: 'leave', room: 'after-join-loops' });
    s.drain();
  });

  check('on_leave: an endless loop is ended (kind timeout, then tripped for that address); the leave still happens', async () => {
    const before = await policyErrorCounts(srv.port);
    const mark = srv.logs.length;
    const FRESH_LEAVES = 2;
    let n = 0, freshLeaves = 0;
    await underAttack(srv, by, async () => {
      n = await repeatFor(800, async (i) => {
        const r = `spinleave-${i}`;
        await s.join(r);
        await peer.join(r);
        s.send({ type: 'leave', room: r });                         // on_leave loops for s ...
        const left = await peer.next((m) => m.type === 'leave' && m.room === r, 5000, `leave presence in ${r}`);
        assert.equal(left.member?.id ?? left.id, s.id);
        if (i === 0) await expectErrorDelta(srv.port, before, { 'on_leave/timeout': 1 }, 'the first looping on_leave');
        peer.send({ type: 'leave', room: r });                      // ... and for peer (the same address)
        await sleep(TIMEOUT_MS * 2);
      }, { min: 2, max: 5 });
      // a leaver from an address of its own runs Lua, into the watchdog, and still leaves. It is
      // in no other room: its close calls no on_leave (which the trip would fail at once)
      for (let k = 0; k < FRESH_LEAVES; k++) {
        const r = `spinleave-fresh-${k}`;
        const f = await chatClient(srv.port, `/ws?name=leaver${k}`, { wsOpts: { localAddress: freshAddr() } });
        try {
          await f.join(r);
          await peer.join(r);
          const c0 = await policyErrorCounts(srv.port);
          f.send({ type: 'leave', room: r });
          const left = await peer.next((m) => m.type === 'leave' && m.room === r, 5000, `leave presence in ${r}`);
          assert.equal(left.member?.id ?? left.id, f.id);
          await expectErrorDelta(srv.port, c0, { 'on_leave/timeout': 1 }, `a looping on_leave from another address (${r})`);
          freshLeaves++;
          peer.send({ type: 'leave', room: r });                    // timeout or tripped: counted below
          assert.ok(f.isOpen, 'the leaver was not disconnected');
        } finally {
          f.terminate();
        }
      }
    }, 'on_leave loops');
    assert.ok(s.isOpen && peer.isOpen, 'nobody was disconnected');
    assert.equal(freshLeaves, FRESH_LEAVES);
    await timedOutOrTripped(srv, before, mark, 2 * n + 2 * FRESH_LEAVES, 'on_leave', `${2 * n + 2 * FRESH_LEAVES} looping on_leave`,
      { minTimeouts: 1 + FRESH_LEAVES });
    s.drain();
    peer.drain();
  });

  check('on_tick: an endless loop every second is ended each time (kind timeout; the ticks between tripped) while chat goes on', async () => {
    const before = await policyErrorCounts(srv.port);
    const mark = srv.logs.length;
    const ticks = () => policyErrorCounts(srv.port).then((c) => (c['on_tick/timeout'] || 0) - (before['on_tick/timeout'] || 0));
    await relay(s, peer, room, 'tick:on');
    try {
      await underAttack(srv, by, () => waitFor(async () => (await ticks()) >= 3,
        { timeoutMs: 10000, intervalMs: 200, what: 'three on_tick timeouts' }), 'looping on_tick');
    } finally {
      await relay(s, peer, room, 'tick:off');
    }
    // on_tick has no client: a timeout trips it for the whole worker, so a tick within TRIP_MS of
    // the last timeout fails at once; every tick that ran Lua ran into the guard
    const d = deltaOf(before, await policyErrorCounts(srv.port));
    softly(() => assert.deepEqual(Object.keys(d).filter((k) => k !== 'on_tick/timeout' && k !== 'on_tick/tripped'), [],
      `every looping on_tick ran into the guard or was tripped: ${JSON.stringify(d)}`));
    softly(() => assert.ok((d['on_tick/timeout'] || 0) >= 3, `three on_tick timeouts: ${JSON.stringify(d)}`));
    const logs = hookFailures(srv, mark);
    softly(() => assert.ok(logs.length >= 3, `a "policy hook failed" line per on_tick timeout: ${logs.length}`));
    for (const l of logs) softly(() => assertTimeoutLine(l, 'on_tick'));
    s.drain();
    peer.drain();
  });

  check('self_test: an endless loop rejects the reload, /readyz last_error names the timeout, the last good policy serves', async () => {
    const before = await policyErrorCounts(srv.port);
    const failed0 = (await scrape(srv.port)).samples
      .filter((x) => x.name === 'chatgw_policy_reloads_total' && x.labels.result === 'failed').reduce((a, x) => a + x.value, 0);
    const logged = await underAttack(srv, by, () => reloadWith(srv, dir, { 'policy.lua': fixture('attacks/self_test_spin/policy.lua') },
      isReloadFailed, '"policy reload failed" for a looping self_test'), 'a reload with a looping self_test');
    assert.match(String(logged.error), TIMEOUT_RE, `the reload error names the timeout: ${logged.error}`);

    const rz = await readyz(srv.port);
    assert.equal(rz.status, 200, 'a failed reload does not fail readiness');
    assert.equal(rz.body.policy.version, good, 'the last good policy keeps serving');
    assert.equal(rz.body.checks.policy, 'reload_failed');
    assert.match(String(rz.body.policy.last_error), TIMEOUT_RE, `last_error: ${rz.body.policy.last_error}`);
    assert.ok(!String(rz.body.policy.last_error).includes('\n'), 'last_error is one line');
    const d = deltaOf(before, await policyErrorCounts(srv.port));
    assert.deepEqual(Object.keys(d), ['self_test/timeout'], `counted as a self_test timeout: ${JSON.stringify(d)}`);
    const failed1 = (await scrape(srv.port)).samples
      .filter((x) => x.name === 'chatgw_policy_reloads_total' && x.labels.result === 'failed').reduce((a, x) => a + x.value, 0);
    assert.ok(failed1 >= failed0 + 1, `chatgw_policy_reloads_total{result="failed"} grew: ${failed0} -> ${failed1}`);
    const own = await relay(s, peer, room, uniq('after the rejected reload'));
    assert.equal(own.via, 'spin', 'the old policy still handles messages');

    writeFiles(dir, { 'policy.lua': SPIN });                      // back to the serving sources
    await waitFor(async () => (await readyz(srv.port)).body.policy.last_error === null,
      { timeoutMs: 8000, intervalMs: 100, what: 'last_error to clear after the revert' })
      .catch(() => { srv.proc.kill('SIGHUP'); });
    s.drain();
    peer.drain();
  });

  check('load: a main chunk that never returns rejects the reload, last_error names the timeout', async () => {
    const logged = await underAttack(srv, by, () => reloadWith(srv, dir, { 'policy.lua': fixture('attacks/load_spin/policy.lua') },
      isReloadFailed, '"policy reload failed" for a looping main chunk'), 'a reload with a looping main chunk');
    assert.match(String(logged.error), TIMEOUT_RE, `the reload error names the timeout: ${logged.error}`);
    const rz = await readyz(srv.port);
    assert.equal(rz.body.policy.version, good);
    assert.match(String(rz.body.policy.last_error), TIMEOUT_RE, `last_error: ${rz.body.policy.last_error}`);
    const own = await relay(s, peer, room, uniq('after the rejected load'));
    assert.equal(own.via, 'spin');
    writeFiles(dir, { 'policy.lua': SPIN });
    await waitFor(async () => (await readyz(srv.port)).body.policy.last_error === null,
      { timeoutMs: 8000, intervalMs: 100, what: 'last_error to clear after the revert' })
      .catch(() => { srv.proc.kill('SIGHUP'); });
    s.drain();
    peer.drain();
  });

  check('chatgw check: a looping self_test or main chunk exits non-zero promptly, naming the timeout', async () => {
    for (const fx of ['attacks/self_test_spin/policy.lua', 'attacks/load_spin/policy.lua']) {
      const d = scriptsDir({ 'policy.lua': fixture(fx) }, 'chatgw-e2e-attacks-check-');
      const r = await runCheck(d, [], { timeoutMs: 8000 });        // rejects when it had to be killed
      assert.notEqual(r.code, 0, `${fx}: exit ${r.code}; stdout ${r.stdout} stderr ${r.stderr}`);
      assert.ok(!/^ok /m.test(r.stdout), `${fx}: no "ok" line`);
      assert.match(r.stderr, TIMEOUT_RE, `${fx}: stderr names the timeout: ${r.stderr}`);
    }
  });

  // Shown only when the reload came while the trip still stood (the server's own timestamps);
  // a slower reload proves nothing and is tried again.
  check('a reload of a new version clears the trips: the tripped address is served at once', async (t) => {
    const isReloaded = (o) => o.msg === 'policy reloaded';
    for (let attempt = 1; ; attempt++) {
      const before = await policyErrorCounts(srv.port);
      const mark = srv.logs.length;
      const r = await outcome(s, { type: 'msg', room, text: 'spin:spin' });
      assert.equal(r.code, 'policy_error', JSON.stringify(r));
      const [l] = await failureLogs(srv, mark, 1);
      assertTimeoutLine(l, 'on_message');
      const v0 = (await readyz(srv.port)).body.policy.version;
      const loaded = await reloadWith(srv, dir, { 'policy.lua': `${SPIN}
-- version ${attempt} ${Date.now()}
` },
        isReloaded, '"policy reloaded" for a new version');
      const sentAt = Date.now();
      const own = await relay(s, peer, room, uniq('right after the reload'));   // refused if still tripped
      assert.equal(own.via, 'spin');
      assert.notEqual((await readyz(srv.port)).body.policy.version, v0, 'a new version serves');
      await expectErrorDelta(srv.port, before, { 'on_message/timeout': 1 }, 'a timeout, a reload, a message');
      const within = sentAt - Date.parse(l.ts);
      t.diagnostic(`attempt ${attempt}: reloaded ${Date.parse(loaded.ts) - Date.parse(l.ts)} ms after the timeout, ` +
        `message sent ${within} ms after it`);
      if (within < TRIP_MS - 100) break;
      if (attempt === 3) {
        t.skip(`no reload came within the trip (${TRIP_MS} ms) of its timeout: nothing shown`);
        break;
      }
      await sleep(TRIP_MS);
    }
    s.drain();
    peer.drain();
  });

  check('SIGTERM ends the process within drain_timeout_ms plus a few seconds', async () => {
    await sigtermEndsIt(srv);
  });
});

describe('watchdog: a worker stuck in Lua anyway (policy_timeout_ms 60000)', () => {
  let srv, s;
  after(() => attackTeardown(srv, null, s));

  check('SIGTERM still ends the process within drain_timeout_ms plus a few seconds', async () => {
    const dir = scriptsDir({ 'policy.lua': fixture('attacks/spin/policy.lua') }, 'chatgw-e2e-attacks-stuck-');
    srv = await startServer(['--scripts-dir', dir, '--policy-timeout-ms', '60000', '--drain-timeout-ms', DRAIN_MS, ...FAST], { env: ASAN_ENV });
    s = await chatClient(srv.port, '/ws?room=stuck&name=attacker');
    await s.next('room');
    s.send({ type: 'msg', room: 'stuck', text: 'spin:spin', cid: 'stuck' });
    await sleep(300);                                             // the only worker is in the loop now
    await sigtermEndsIt(srv, { code0: false });
  });
});

// =============================================================================================
// 2. loops that try to survive the watchdog by catching its error

describe('watchdog: the timeout cannot be caught (pcall, xpcall handlers, __close, __tostring)', () => {
  let srv, s, peer, by;
  const room = 'escape';
  before(async () => {
    ({ srv, s, peer, by } = await attackSetup('escape', room));
  });
  after(() => attackTeardown(srv, by, s, peer));

  const attacks = [
    ['xpcall', 'xpcall(spin, spin): the message handler loops too'],
    ['xpcall_loop', 'xpcall(spin, spin) in a loop'],
    ['pcall_loop', 'while true do pcall(function() while true do end end) end'],
    ['pcall_report', 'pcall(spin) then gw.send "caught" (must never arrive)'],
    ['close', 'a <close> variable whose __close loops, then a loop'],
    ['close_pcall', 'the <close> loop inside pcall, over and over'],
    ['close_nested', 'a __close that loops on pcall(spin)'],
    ['tostring_error', 'error(obj) whose __tostring loops (chatgw\'s handler converts it)'],
    ['tostring_loop', 'tostring() of a caught error object whose __tostring loops, in a loop'],
    ['nested_xpcall', 'nested xpcall handlers, each running the next protected spin'],
    ['handler_pcall', 'an xpcall handler looping on pcall(spin)'],
    ['handler_error', 'an xpcall handler raising an error whose __tostring loops, in a loop'],
  ];
  // Each attack is sent EACH times, every time from an address of its own (one after the other),
  // so that every call runs Lua: a trip would answer a repeat from one address without it.
  const EACH = 5;
  for (const [name, what] of attacks) {
    check(`${what} -> policy_error, kind timeout, ${EACH} times from ${EACH} addresses; nothing caught; no stall`, async () => {
      const before = await policyErrorCounts(srv.port);
      const mark = srv.logs.length;
      const fresh = [];
      try {
        await underAttack(srv, by, async () => {
          for (let k = 0; k < EACH; k++) {
            const c = await freshClient(srv, room);
            fresh.push(c);
            const r = await outcome(c, { type: 'msg', room, text: `escape:${name}` });
            assert.equal(r.type, 'error', `the hook must fail: ${JSON.stringify(r)}`);
            assert.equal(r.code, 'policy_error', JSON.stringify(r));
          }
        }, `escape:${name}`);
        const caught = [s, ...fresh].flatMap((c) => c.all.filter((m) => m.type === 'caught'));
        assert.deepEqual(caught.slice(0, 3), [], 'the script never caught the watchdog\'s error');
        assert.equal(peer.all.filter((m) => m.type === 'msg' && String(m.text).startsWith('escape:')).length, 0);
        await everyCallTimedOut(srv, before, mark, EACH, 'on_message', `escape:${name}`);
        for (const c of fresh) assert.ok(c.isOpen, 'a failed message leaves its sender connected');
      } finally {
        for (const c of fresh) c.terminate();
      }
      const own = await relayEventually(s, peer, room, uniq('attacker again'));
      assert.equal(own.via, 'escape');
      s.drain();
      peer.drain();
    });
  }

  check('SIGTERM ends the process within drain_timeout_ms plus a few seconds', async () => {
    await sigtermEndsIt(srv);
  });
});

// =============================================================================================
// 3. single C calls: each works quickly or raises a Lua error

describe('bounded C functions: string.rep, table.*, string.format, utf8.*, os.date, patterns', () => {
  let srv, s, peer, by, rss0, rssMax = 0;
  const room = 'cfuncs';
  before(async () => {
    ({ srv, s, peer, by } = await attackSetup('cfuncs', room, [...BASE, '--policy-store-mb', STORE_MB, ...FAST]));
    rss0 = procRssKb(srv.proc.pid);
  });
  after(() => attackTeardown(srv, by, s, peer));

  const ANY = ['result', 'error', 'memory', 'timeout'];
  const PATTERN = /pattern too complex/;
  // expect: outcomes allowed ('result' = the call returned; a kind = the hook failed so). Where
  // the attack is several MiB of honest work (copying, building arguments), the watchdog ending
  // it (timeout) is as good as the library refusing it: what matters is no stall. Where the
  // spec says the call is refused at once (table.* over huge ranges), only that kind passes. A
  // backtracking pattern stops at the matcher's step limit (10 M steps, ~40 ms here) or at the
  // time guard, whichever comes first on the machine (ASan is ~3 times slower): both end it.
  const cases = [
    { name: 'rep_empty_maxint', what: 'string.rep("", math.maxinteger) (also with "" as separator) returns ""', expect: ['result'], info: '0' },
    { name: 'rep_1e9', what: 'string.rep("x", 1e9)', expect: ['memory', 'error'] },
    { name: 'rep_sep_1e9', what: 'string.rep("", 1e9, ",")', expect: ['memory', 'error'] },
    { name: 'rep_ab_1e7_x100', what: 'string.rep("ab", 1e7) 100 times', expect: ANY },
    { name: 'move_maxint', what: 'table.move({}, 1, math.maxinteger - 1, 1)', expect: ['error'] },
    { name: 'move_maxint_to', what: 'table.move({}, 1, math.maxinteger - 1, 2, {})', expect: ['error'] },
    { name: 'concat_len', what: 'table.concat of a table whose __len is math.maxinteger', expect: ['error'] },
    { name: 'concat_range', what: 'table.concat(t, ",", 1, math.maxinteger)', expect: ['error'] },
    { name: 'unpack_len', what: 'table.unpack of a table whose __len is math.maxinteger', expect: ['error'] },
    { name: 'unpack_1e8', what: 'table.unpack({}, 1, 1e8)', expect: ['error'] },
    { name: 'insert_len', what: 'table.insert(t, 1, v) where __len is math.maxinteger', expect: ['error'] },
    { name: 'remove_len', what: 'table.remove(t, 1) where __len is math.maxinteger', expect: ['error'] },
    { name: 'sort_len', what: 'table.sort of a table whose __len is math.maxinteger', expect: ['error'] },
    { name: 'format_huge', what: 'string.format("%s%s%s") of 2 MiB each', expect: ['memory', 'error', 'timeout'] },
    { name: 'format_many', what: 'string.format with 60k "%s" of 1 KiB', expect: ['memory', 'error', 'timeout'] },
    { name: 'utf8_len_huge', what: 'utf8.len over 4 MiB, 100 times', expect: ANY },
    { name: 'utf8_codepoint_huge', what: 'utf8.codepoint(s, 1, -1) over 128k characters', expect: ['error', 'memory'] },
    { name: 'utf8_char_many', what: 'utf8.char with 60k arguments', expect: ANY },
    { name: 'os_date_huge', what: 'os.date with a million "%c"', expect: ['result', 'error', 'memory'] },
    { name: 'os_date_huge_utc', what: 'os.date("!" .. 1.5M conversions)', expect: ['result', 'error', 'memory'] },
    { name: 'find_fine', what: 'not an attack: ("a"):rep(300):find("(.-)(.-)(.-)a") still works', expect: ['result'], info: '1' },
    { name: 'find_backtrack', what: '("a"):rep(300):find("(.-)(.-)(.-)x")', expect: ['error', 'timeout'], re: PATTERN },
    { name: 'match_backtrack', what: 'string.match of the same', expect: ['error', 'timeout'], re: PATTERN },
    { name: 'gmatch_backtrack', what: 'string.gmatch of the same', expect: ['error', 'timeout'], re: PATTERN },
    { name: 'gsub_backtrack', what: 'string.gsub of the same', expect: ['error', 'timeout'], re: PATTERN },
    { name: 'find_quadratic', what: '("a"):rep(1 MiB):find(".-b")', expect: ['error', 'timeout'], re: PATTERN },
  ];
  for (const tc of cases) {
    check(`${tc.what}: ${tc.expect.join(' or ')}; no stall`, async () => {
      const before = await policyErrorCounts(srv.port);
      const mark = srv.logs.length;
      let failures = 0;
      // every call from an address of its own: after a timeout, a trip would answer the same
      // address's next call without running the C function at all
      const n = await underAttack(srv, by, () => repeatFor(400, async () => {
        const c = await freshClient(srv, room);
        let r;
        try { r = await outcome(c, { type: 'msg', room, text: `cfunc:${tc.name}` }, 10000); } finally { c.terminate(); }
        if (r.type === 'result') {
          assert.ok(tc.expect.includes('result'), `${tc.name} must not complete: ${JSON.stringify(r).slice(0, 200)}`);
          if (tc.info !== undefined) assert.equal(r.info, tc.info);
        } else {
          assert.equal(r.type, 'error', JSON.stringify(r).slice(0, 200));
          assert.equal(r.code, 'policy_error', JSON.stringify(r).slice(0, 200));
          failures++;
        }
      }, { min: 2, max: 5 }), `cfunc:${tc.name}`);
      if (failures) {
        await waitFor(() => hookFailures(srv, mark).length >= failures, { timeoutMs: 3000, what: 'log lines' }).catch(() => {});
      }
      const logs = hookFailures(srv, mark);
      assert.ok(logs.length >= Math.min(failures, 1), `${tc.name}: a failed call is logged`);
      for (const l of logs) {
        assert.equal(l.hook, 'on_message');
        assert.ok(tc.expect.includes(l.kind), `${tc.name}: kind ${l.kind} (allowed ${tc.expect}): ${l.error}`);
        if (tc.re && l.kind === 'error') assert.match(String(l.error), tc.re);
      }
      let d;
      await waitFor(async () => {
        d = deltaOf(before, await policyErrorCounts(srv.port));
        return Object.values(d).reduce((a, v) => a + v, 0) >= failures;
      }, { timeoutMs: 3000, what: 'the failures counted' }).catch(() => {});
      softly(() => {
        for (const [k, v] of Object.entries(d)) {
          const [hook, kind] = k.split('/');
          assert.equal(hook, 'on_message', `only on_message failed: ${JSON.stringify(d)}`);
          assert.ok(tc.expect.includes(kind), `${tc.name}: counted as ${kind} x${v}: ${JSON.stringify(d)}`);
        }
      });
      softly(() => assert.equal(Object.values(d).reduce((a, v) => a + v, 0), failures,
        `every failure counted once: ${JSON.stringify(d)}`));
      softly(() => assert.equal(logs.length, failures, `${tc.name}: one "policy hook failed" line per failed call`));
      assert.ok(n >= 2);
      const rss = procRssKb(srv.proc.pid);
      if (rss) rssMax = Math.max(rssMax, rss);
      s.drain();
    });
  }

  check('RSS stayed within policy_memory_mb + policy_store_mb + a base', async () => {
    assert.ok(rss0 > 0);
    const grew = (rssMax - rss0) / 1024;
    assert.ok(grew <= MEMORY_MB + STORE_MB + RSS_SLACK_MB, `RSS grew by ${grew.toFixed(0)} MiB (from ${(rss0 / 1024).toFixed(0)} MiB)`);
    const own = await relay(s, peer, room, uniq('still here'));
    assert.equal(own.via, 'cfuncs');
  });

  check('SIGTERM ends the process within drain_timeout_ms plus a few seconds', async () => {
    await sigtermEndsIt(srv);
  });
});

// =============================================================================================
// 4. gw.store past its cap

describe('gw.store cap: a full store raises an error to the script and never grows the process', () => {
  let srv, s, by, rss0, rssMax = 0;
  const room = 'hoard';
  const sample = () => { const r = procRssKb(srv.proc.pid); if (r) rssMax = Math.max(rssMax, r); return r; };
  const FULL = /gw\.store\.set: .*full/;
  before(async () => {
    // the store's cap is under test, not the clock: batches of 64 KiB values on a loaded
    // machine (page faults, ASan) may take longer than 50 ms, and a timeout would trip the client
    ({ srv, s, by } = await attackSetup('store', room,
      [...BASE, '--policy-timeout-ms', '2000', '--policy-store-mb', STORE_MB, ...FAST], ['hoarder']));
    rss0 = procRssKb(srv.proc.pid);
  });
  after(() => attackTeardown(srv, by, s));

  /** Sends "<op> a b" and resolves the fixture's reply (fill/cleared), failing on anything else. */
  async function op(text) {
    const r = await outcome(s, { type: 'msg', room, text }, 10000);
    assert.ok(r.type === 'fill' || r.type === 'cleared', `${text}: ${JSON.stringify(r).slice(0, 300)}\n${srv.tail(3)}`);
    return r;
  }

  /** "clear a b" in slices small enough for one hook call; resolves how many keys went. */
  async function clearRange(a, b) {
    let n = 0;
    for (let i = a; i <= b; i += 1000) n += (await op(`clear ${i} ${Math.min(b, i + 999)}`)).n;
    return n;
  }

  const BATCH = 10;                   // 64 KiB values per hook call: well within policy_timeout_ms on a busy machine
  let stored = 0;
  check('10,000 values of 64 KiB: the cap (policy_store_mb) refuses them with "gw.store.set: ... full", RSS bounded', async () => {
    const before = await policyErrorCounts(srv.port);
    let failed = 0, err = null;
    await underAttack(srv, by, async () => {
      for (let i = 0; i < 10000 / BATCH; i++) {
        const r = await op(`fill ${i * BATCH + 1} ${(i + 1) * BATCH}`);
        stored += r.ok;
        failed += r.failed;
        err = err || r.err;
        sample();
      }
    }, '10,000 x 64 KiB into gw.store');
    assert.equal(stored + failed, 10000);
    assert.ok(stored * 64 <= STORE_MB * 1024, `at most ${STORE_MB} MiB of values were kept: ${stored} x 64 KiB`);
    assert.ok(stored >= 64, `a ${STORE_MB} MiB store holds a fair share of ${STORE_MB} MiB: ${stored} x 64 KiB`);
    assert.match(String(err), FULL, 'the script got the error');
    const grew = (rssMax - rss0) / 1024;
    assert.ok(grew <= MEMORY_MB + STORE_MB + RSS_SLACK_MB, `RSS grew by ${grew.toFixed(0)} MiB filling the store`);
    await expectErrorDelta(srv.port, before, {}, 'pcall()ed store errors');   // caught by the script: no hook failed
  });

  check('without pcall, the full store fails the hook: policy_error, kind error', async () => {
    const before = await policyErrorCounts(srv.port);
    const mark = srv.logs.length;
    const r = await outcome(s, { type: 'msg', room, text: 'fill_raw 20001' });
    assert.equal(r.type, 'error', JSON.stringify(r));
    assert.equal(r.code, 'policy_error');
    const [l] = await failureLogs(srv, mark, 1);
    assert.equal(l.kind, 'error');
    assert.match(String(l.error), FULL);
    await expectErrorDelta(srv.port, before, { 'on_message/error': 1 }, 'a store error without pcall');
  });

  check('deleting frees the cap: after a clear the same values fit again', async () => {
    assert.equal(await clearRange(1, 10000), stored, 'every stored value was deleted once');
    let ok = 0;
    for (let i = 0; i < 200 / BATCH; i++) ok += (await op(`fill ${i * BATCH + 1} ${(i + 1) * BATCH}`)).ok;
    assert.ok(ok >= 64, `values fit again after the clear: ${ok}`);
    assert.equal(await clearRange(1, 200), ok);
  });

  // The fixture stops at the first refused key of a batch (what a sane script does): with the
  // store full, a refused set may cost more than a granted one.
  check('keys count too: 1000-byte keys stop at the cap, RSS bounded', async () => {
    let ok = 0, err = null;
    await underAttack(srv, by, async () => {
      for (let i = 0; i < 120 && !err; i++) {
        const r = await op(`keys ${i * 1000 + 1} ${(i + 1) * 1000}`);
        ok += r.ok;
        err = r.err;
        sample();
      }
    }, '1000-byte keys into gw.store');
    assert.match(String(err), FULL, `the store filled up (${ok} keys)`);
    assert.ok(ok * 1000 <= STORE_MB * 1024 * 1024, `at most ${STORE_MB} MiB of keys: ${ok} x 1000 B`);
    const grew = (rssMax - rss0) / 1024;
    assert.ok(grew <= MEMORY_MB + STORE_MB + RSS_SLACK_MB, `RSS grew by ${grew.toFixed(0)} MiB`);
    assert.equal(await clearRange(1, Math.min(120000, ok + 2000)), ok, 'every key was deleted once');
  });

  check('SIGTERM ends the process within drain_timeout_ms plus a few seconds', async () => {
    await sigtermEndsIt(srv);
  });
});

// =============================================================================================
// 5. log floods

// The sandbox itself refuses strings over 4 MiB (one library call, one allocation), so the fixture
// floods with 10 MiB where it can and with just under 4 MiB otherwise. Building a few MiB takes
// tens of ms on a small machine, so this server runs with policy_timeout_ms 1000: what is under
// test here is the log line, not the watchdog (a timeout would log no flood at all).
describe('log floods: policy errors, gw.log and print write about 1 KiB of message, marked as cut', () => {
  let srv, s, by;
  const room = 'flood';
  const LINE_MAX = 4096;             // a whole JSON log line, fields and traceback included
  const MSG_MAX = 1536;              // "about 1 KiB of message" plus the cut marker
  const CUT_AT = 1024;               // bytes of the message kept (SECURITY.md: at most 1 KiB)
  before(async () => {
    ({ srv, s, by } = await attackSetup('logflood', room,
      ['--policy-timeout-ms', '1000', '--drain-timeout-ms', DRAIN_MS, ...FAST], ['flooder']));
    // The process's first multi-MiB strings grow its heap: on a small VM the page faults of the
    // first two floods hold the loop 50-150 ms each, once per process. That growth happens here,
    // before a probe watches (as it did before the probe waited for its first sample): the cases
    // measure what a flood costs each time. Its log lines are not counted (see seen0 below).
    for (let i = 0; i < 2; i++) {
      const r = await outcome(s, { type: 'msg', room, text: 'flood:error_huge' }, 10000);
      assert.equal(r.code, 'policy_error', JSON.stringify(r));
    }
  });
  after(() => attackTeardown(srv, by, s));

  const cases = [
    { name: 'error_huge', what: 'error(huge string)', marker: 'FLOOD_ERROR ', fails: true, field: 'error' },
    { name: 'error_huge_level0', what: 'error(huge string, 0)', marker: 'FLOOD_ERROR0 ', fails: true, field: 'error' },
    { name: 'error_tostring_huge', what: 'error(obj) whose __tostring returns a huge string', marker: 'FLOOD_TOSTRING ', fails: true, field: 'error' },
    { name: 'log_huge', what: 'gw.log("warn", huge string)', marker: 'FLOOD_LOG ', field: 'msg' },
    { name: 'print_huge', what: 'print(huge string)', marker: 'FLOOD_PRINT ', field: 'msg' },
    { name: 'print_many', what: 'print of four arguments, 3 MiB in all', marker: 'FLOOD_PRINTMANY', field: 'msg' },
    { name: 'log_lines', what: 'gw.log of 800k lines', marker: 'FLOOD_LINES ', field: 'msg' },
  ];
  for (const tc of cases) {
    check(`${tc.what}: each log line stays under ${LINE_MAX} bytes and says cut; no stall`, async () => {
      const before = await policyErrorCounts(srv.port);
      // each marker is used by one case only (and error_huge's by the warm-up before: seen0)
      const seen0 = srv.rawLines.filter((x) => x.includes(tc.marker)).length;
      const marked = () => srv.rawLines.filter((x) => x.includes(tc.marker)).slice(seen0);
      const n = await underAttack(srv, by, () => repeatFor(300, async () => {
        const r = await outcome(s, { type: 'msg', room, text: `flood:${tc.name}` }, 10000);
        if (tc.fails) {
          assert.equal(r.type, 'error', JSON.stringify(r).slice(0, 300));
          assert.equal(r.code, 'policy_error');
        } else {
          assert.equal(r.type, 'done', JSON.stringify(r).slice(0, 300));
          assert.ok(r.bytes >= 3 * 1024 * 1024, `the flood was real: ${r.bytes} bytes`);
        }
      }, { min: 3, max: 5 }), `flood:${tc.name}`);
      const last = await outcome(s, { type: 'msg', room, text: 'flood:last' });
      assert.equal(last.type, 'last', JSON.stringify(last));
      const built = last.bytes;                                   // every repeat built the same
      assert.ok(built >= 3 * 1024 * 1024, `the flood was real: ${built} bytes`);
      const lines = await waitFor(() => (marked().length >= n ? marked() : null),
        { timeoutMs: 5000, what: `${n} log lines with ${tc.marker}` }).catch(() => marked());
      assert.equal(lines.length, n, `one log line per flood (${tc.marker})`);
      for (const raw of lines) {
        assert.ok(raw.startsWith('stdout: '), `logged as a JSON line on stdout: ${raw.slice(0, 120)}`);
        const line = raw.slice('stdout: '.length);
        const bytes = Buffer.byteLength(line);
        assert.ok(bytes <= LINE_MAX, `log line of ${bytes} bytes: ${line.slice(0, 200)}...`);
        const o = JSON.parse(line);
        const text = String(o[tc.field]);
        assert.ok(Buffer.byteLength(text) <= MSG_MAX, `${tc.field} of ${Buffer.byteLength(text)} bytes`);
        // "<at most 1 KiB of the message> [cut: N bytes more]", N what was left out
        const m = /^([^]*) \[cut: (\d+) bytes more\]$/.exec(text);
        assert.ok(m, `the ${tc.field} ends with the cut marker: ...${JSON.stringify(text.slice(-80))}`);
        const kept = Buffer.byteLength(m[1]);
        assert.ok(kept <= CUT_AT, `${kept} bytes kept of the ${tc.field}`);
        const at = m[1].indexOf(tc.marker);
        assert.ok(at >= 0, `the kept ${tc.field} holds the message's start: ${JSON.stringify(m[1].slice(0, 80))}`);
        // the whole message: what Lua put before it (error()'s position), then what the fixture built
        const whole = Buffer.byteLength(m[1].slice(0, at)) + built;
        assert.equal(Number(m[2]), whole - kept,
          `the marker counts the bytes left out of a ${whole}-byte ${tc.field}: ${JSON.stringify(text.slice(-60))}`);
      }
      const tooLong = srv.rawLines.filter((x) => x.length > 2 * LINE_MAX);
      assert.equal(tooLong.length, 0, `no log line of ${tooLong[0]?.length} bytes anywhere`);
      await expectErrorDelta(srv.port, before, tc.fails ? { 'on_message/error': n } : {}, `flood:${tc.name}`);
      s.drain();
    });
  }

  check('SIGTERM ends the process within drain_timeout_ms plus a few seconds', async () => {
    await sigtermEndsIt(srv);
  });
});

// =============================================================================================
// 6. message_types and too_complex: what never reaches Lua

/** n empty arrays. */
const flat = (n) => Array.from({ length: n }, () => []);
/** Arrays nested n deep. */
function nested(n) {
  let d = [];
  for (let i = 1; i < n; i++) d = [d];
  return d;
}

describe('message_types and too_complex: costly or undeclared messages never reach Lua', () => {
  let srv, s, p, by;
  const room = 'cx';
  before(async () => {
    ({ srv, s, peer: p, by } = await attackSetup('complex', room, [...BASE, ...FAST], ['sender', 'peer']));
  });
  after(() => attackTeardown(srv, by, s, p));

  async function calls() {
    const r = await outcome(s, { type: 'msg', room, text: 'calls?' });
    assert.equal(r.type, 'calls', JSON.stringify(r));
    return r;
  }
  /** Sends a raw message; resolves the next error frame (too_complex frames carry no ref). */
  async function refused(c, obj, ms = 5000) {
    c.send(obj);
    return c.next('error', ms, `an error for ${obj.type}`);
  }

  check('a declared custom type within the limits reaches on_message (2000 values; 20 levels)', async () => {
    const c0 = await calls();
    assert.equal((await outcome(s, { type: 'blob', room, data: flat(2000) })).type, 'blob_seen');
    assert.equal((await outcome(s, { type: 'blob', room, data: nested(20) })).type, 'blob_seen');
    assert.equal((await calls()).blob, c0.blob + 2);
  });

  check('more than 4096 values, from 16 connections: too_complex before conversion, on_message never called; no stall', async () => {
    const conns = [];
    try {
      for (let i = 0; i < 16; i++) {
        const c = await chatClient(srv.port, `/ws?room=${room}&name=blob${i}`);
        await c.next('room');
        conns.push(c);
      }
      const c0 = await calls();
      const before = await policyErrorCounts(srv.port);
      const data = flat(10000);
      await underAttack(srv, by, () => Promise.all(conns.map((c) => repeatFor(1000, async () => {
        const e = await refused(c, { type: 'blob', room, cid: nextCid('blob'), data });
        assert.equal(e.code, 'too_complex', JSON.stringify(e));
        await sleep(20);
      }, { min: 5, max: 60 }))), '16 connections of 10,000-value blobs');
      assert.equal((await calls()).blob, c0.blob, 'on_message never saw a refused blob');
      await expectErrorDelta(srv.port, before, {}, 'too_complex messages');
      for (const c of conns) assert.ok(c.isOpen, 'a too_complex message leaves the connection open');
    } finally {
      for (const c of conns) c.terminate();
    }
  });

  check('nested deeper than 32 levels: too_complex; on_message never called', async () => {
    const c0 = await calls();
    const e = await refused(s, { type: 'blob', room, cid: nextCid(), data: nested(40) });
    assert.equal(e.code, 'too_complex');
    assert.equal((await calls()).blob, c0.blob);
  });

  check('a declared signal of 170k empty arrays (510 KB): too_complex; the peer gets nothing', async () => {
    const c0 = await calls();
    const e = await refused(s, { type: 'signal', room, to: p.id, data: flat(170000) }, 10000);
    assert.equal(e.code, 'too_complex');
    assert.deepEqual(await p.none('signal', 300), []);
    assert.equal((await calls()).signal, c0.signal);
  });

  check('an undeclared built-in type (mute) is carried out by the hub without entering Lua', async () => {
    s.send({ type: 'mute', room });
    const m = await p.next((x) => x.type === 'mute' && x.room === room, 5000, 'mute presence');
    assert.equal(m.member?.id ?? m.id, s.id);
    s.send({ type: 'unmute', room });
    await p.next((x) => x.type === 'unmute' && x.room === room, 5000, 'unmute presence');
    const c = await calls();
    assert.equal(c.mute, 0, 'on_message never saw mute');
  });

  check('an undeclared custom type gets bad_type from chatgw without entering Lua', async () => {
    const r = await outcome(s, { type: 'other', room, text: 'x' });
    assert.equal(r.type, 'error');
    assert.equal(r.code, 'bad_type');
    assert.equal((await calls()).other, 0, 'on_message never saw it');
  });

  check('SIGTERM ends the process within drain_timeout_ms plus a few seconds', async () => {
    await sigtermEndsIt(srv);
  });
});

// =============================================================================================
// 7. client attacks against the default policy (scripts/), from 16 connections over 2 addresses

/**
 * Keeps big frames (signals) out of the JSON inbox: they are only measured, so the test's own
 * thread does not spend its time parsing 510 KB arrays. Everything else lands in the inbox.
 */
function lighten(c) {
  c.signals = [];
  c.ws.removeAllListeners('message');
  c.ws.on('message', (data) => {
    if (data.length > 65536) {
      c.signals.push({ bytes: data.length, head: data.toString('latin1', 0, 120), tail: data.toString('latin1', data.length - 8) });
    } else {
      let m;
      try { m = JSON.parse(data.toString('utf8')); } catch { m = { type: '__unparsable' }; }
      c.inbox.push(m);
      c.all.push(m);
    }
    for (const w of c.wake) w();
  });
  return c;
}

describe('client attacks on the default policy: 16 connections over 2 addresses', () => {
  let srv, by;
  const attackers = [];
  const room = 'sig';
  const N = 16;
  before(async () => {
    const dir = scriptsDir(defaultScripts(), 'chatgw-e2e-attacks-default-');
    srv = await startServer(['--scripts-dir', dir, ...BASE], { env: ASAN_ENV });
    for (let i = 0; i < N; i++) {
      const c = lighten(await chatClient(srv.port, `/ws?room=${room}&name=sig${i}`,
        { wsOpts: { localAddress: i % 2 ? '127.0.0.2' : '127.0.0.1' } }));
      await c.next((m) => m.type === 'room' && m.room === room, 5000, `attacker ${i} joined`);
      attackers.push(c);
    }
    for (const c of attackers) c.drain();
    by = await bystanders(srv, 'lounge');
  });
  after(() => attackTeardown(srv, by, ...attackers));

  check('a 510 KB signal of 170k empty arrays, 3 rounds from 16 connections: never enters Lua, handled consistently; no stall', async (t) => {
    const ARRAYS = 170000;
    const data = '[' + '[],'.repeat(ARRAYS - 1) + '[]]';
    const ROUNDS = 3;
    const before = await policyErrorCounts(srv.port);
    for (const c of attackers) { c.drain(); c.signals.length = 0; }
    const frame = (i, r) => `{"type":"signal","room":"${room}","to":"${attackers[(i + 1) % N].id}","cid":"sig-${i}-${r}","data":${data}}`;
    assert.ok(frame(0, 0).length > 500000);
    const outcomes = () => attackers.map((c, i) => ({
      refused: c.inbox.filter((m) => m.type === 'error' && m.code === 'too_complex').length,
      delivered: attackers[(i + 1) % N].signals.length,
    }));
    await underAttack(srv, by, async () => {
      for (let r = 0; r < ROUNDS; r++) {
        for (let i = 0; i < N; i++) attackers[i].send(frame(i, r));
        await sleep(400);
      }
      await waitFor(() => outcomes().every((o) => o.refused + o.delivered >= ROUNDS),
        { timeoutMs: 15000, intervalMs: 50, what: `an outcome for each of ${N * ROUNDS} signals: ${JSON.stringify(outcomes())}` });
    }, `${N * ROUNDS} signals of ${ARRAYS} arrays`);
    const o = outcomes();
    const refused = o.reduce((a, x) => a + x.refused, 0);
    const delivered = o.reduce((a, x) => a + x.delivered, 0);
    t.diagnostic(`signals: ${refused} refused with too_complex, ${delivered} delivered`);
    assert.equal(refused + delivered, N * ROUNDS, 'each signal once: refused or delivered');
    assert.ok(refused === 0 || delivered === 0, `handled one way: ${refused} refused, ${delivered} delivered`);
    for (const [i, c] of attackers.entries()) {
      const others = c.inbox.filter((m) => m.type === 'error' && m.code !== 'too_complex');
      assert.deepEqual(others, [], `attacker ${i}: no other error (policy_error, rate_limited, unknown_peer, ...)`);
      const from = attackers[(i + N - 1) % N];
      for (const sg of c.signals) {
        assert.ok(sg.head.startsWith('{"type":"signal"'), sg.head);
        assert.ok(sg.head.includes(`"from":"${from.id}"`), `from its sender: ${sg.head}`);
        assert.ok(sg.bytes >= data.length, `the data arrived whole: ${sg.bytes} bytes`);
        assert.ok(sg.tail.endsWith('[]]}'), sg.tail);
      }
      assert.ok(c.isOpen, `attacker ${i} is still connected`);
    }
    await expectErrorDelta(srv.port, before, {}, 'the signal flood (it never enters Lua)');
  });

  check('"/x a" .. (" \\t"):rep(990) .. "b" from 16 connections: parsed in linear time (bad_command); no stall', async () => {
    const WS = ' \t'.repeat(990);
    const before = await policyErrorCounts(srv.port);
    for (const c of attackers) c.drain();
    const codes = {};
    await underAttack(srv, by, () => Promise.all(attackers.map(async (c, i) => {
      const one = async () => {
        const text = `/x a${WS}b${++seq}`;                        // unique: no "repeated"
        const r = await outcome(c, { type: 'msg', room, text }, 10000);
        const code = r.type === 'error' ? r.code : r.type;
        codes[code] = (codes[code] || 0) + 1;
      };
      await Promise.all([one(), one(), one(), one()]);             // a burst, within every limit
      for (let k = 0; k < 5; k++) {
        await sleep(300);
        await one();
      }
    })), `16 connections of backtracking command text`);
    const bad = Object.keys(codes).filter((k) => k !== 'bad_command' && k !== 'rate_limited');
    assert.deepEqual(bad, [], `every outcome is bad_command (or the flood limit): ${JSON.stringify(codes)}`);
    assert.ok((codes.bad_command || 0) >= N * 4, `the commands were parsed: ${JSON.stringify(codes)}`);
    await expectErrorDelta(srv.port, before, {}, 'the command text');
    for (const [i, c] of attackers.entries()) assert.ok(c.isOpen, `attacker ${i} is still connected`);
  });

  check('SIGTERM ends the process within drain_timeout_ms plus a few seconds', async () => {
    await sigtermEndsIt(srv);
  });
});
