// Helpers for the multi-replica tests (redis_*.test.mjs): a real redis-server on a free
// loopback port (no persistence), and chatgw replicas wired to it. Every process started here
// is killed when the test process exits, whatever happened to the test.
import { spawn } from 'node:child_process';
import { before, after } from 'node:test';
import net from 'node:net';
import {
  startServer, passthroughPolicyDir, httpGet, waitFor, withTimeout, clientPool, HOST,
} from './lib.mjs';

export { clientPool };

export const REDIS_BIN = process.env.REDIS_SERVER || '/usr/bin/redis-server';

const procs = new Set();
process.on('exit', () => {
  for (const p of procs) { try { p.kill('SIGKILL'); } catch { /* gone */ } }
});

/** A loopback port that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, HOST, () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

/** One command as a RESP array; args are strings or Buffers. */
export function resp(args) {
  const parts = [Buffer.from(`*${args.length}\r\n`)];
  for (const a of args) {
    const b = Buffer.isBuffer(a) ? a : Buffer.from(String(a));
    parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'));
  }
  return Buffer.concat(parts);
}

/** Writes bytes on a fresh connection and resolves done(reply text so far) once that is not
 * undefined (bounded by ms; what names the exchange in a timeout). */
export function redisExchange(port, bytes, done, ms, what) {
  return withTimeout(new Promise((resolve, reject) => {
    const s = net.connect({ host: HOST, port });
    let buf = '';
    s.once('error', reject);
    s.on('data', (d) => {
      buf += d.toString('latin1');
      const out = done(buf);
      if (out !== undefined) { s.destroy(); resolve(out); }
    });
    s.once('connect', () => s.write(bytes));
  }), ms, what);
}

/** Sends one command as a RESP array (any bytes in args) and resolves the raw reply text (bounded). */
export function redisArgs(port, args, ms = 3000) {
  return redisExchange(port, resp(args), (buf) => (buf.endsWith('\r\n') ? buf : undefined), ms, `redis ${args[0]}`);
}

/** Sends a command of space-separated words and resolves the first reply line (bounded). */
export function redisCommand(port, line, ms = 3000) {
  return redisArgs(port, line.split(' '), ms).then((r) => r.slice(0, r.indexOf('\r\n')));
}

/**
 * Starts redis-server on port (a free one when omitted), without persistence. Resolves
 * {port, proc, stop()} once it answers PING.
 */
export async function startRedis(port) {
  port = port || await freePort();
  const proc = spawn(REDIS_BIN, ['--port', String(port), '--bind', HOST, '--save', '', '--appendonly', 'no',
    '--protected-mode', 'no', '--loglevel', 'warning'], { stdio: ['ignore', 'pipe', 'pipe'] });
  procs.add(proc);
  const out = [];
  proc.stdout.on('data', (d) => out.push(d.toString()));
  proc.stderr.on('data', (d) => out.push(d.toString()));
  const exited = new Promise((resolve) => proc.once('exit', (code, signal) => { procs.delete(proc); resolve({ code, signal }); }));
  proc.unref();
  await waitFor(async () => (await redisCommand(port, 'PING', 500).catch(() => '')) === '+PONG',
    { timeoutMs: 10000, intervalMs: 50, what: `redis-server on ${port}\n${out.join('')}` });
  return {
    port,
    proc,
    url: `redis://${HOST}:${port}/0`,
    async stop(signal = 'SIGTERM') {
      try { proc.kill(signal); } catch { /* gone */ }
      await withTimeout(exited, 10000, 'redis-server exit').catch(() => { try { proc.kill('SIGKILL'); } catch { /* gone */ } });
    },
  };
}

export const FAST = ['--rate-msgs-per-sec', '100000', '--rate-burst', '100000'];

let policyDir;
/** chatgw on a free port with a pass-through policy, wired to redisUrl as node nodeId. */
export async function startReplica(redisUrl, nodeId, args = []) {
  policyDir ||= passthroughPolicyDir();
  const srv = await startServer(['--scripts-dir', policyDir, ...FAST, '--redis-url', redisUrl, '--node-id', nodeId,
    '--redis-backoff-max-ms', '400', ...args]);
  srv.nodeId = nodeId;
  return srv;
}

/**
 * The before/after hooks of a describe block over one Redis: a fresh redis-server, the
 * replicas start(redis) resolves (each waited for until /readyz says redis up) and a client
 * pool; after, the clients close, the replicas stop (SIGTERM, else SIGKILL; `stop: 'SIGKILL'`
 * for blocks that kill or drain replicas themselves) and Redis stops. Returns the live state
 * {redis, reps, cs}; reps is filled in place, so it can be taken apart at describe time, and a
 * test that restarts Redis stores the new one in state.redis.
 */
export function redisCluster(start, { stop = 'SIGTERM' } = {}) {
  const state = { redis: null, reps: [], cs: clientPool() };
  before(async () => {
    state.redis = await startRedis();
    state.reps.push(...await start(state.redis));
    await Promise.all(state.reps.map((s) => waitRedis(s, 'up')));
  });
  after(async () => {
    await state.cs.closeAll();
    await Promise.all(state.reps.map((s) => s.stop(stop).catch(() => s.stop('SIGKILL').catch(() => {}))));
    if (state.redis) await state.redis.stop();
  });
  return state;
}

/** GET /readyz body. */
export async function readyBody(port) {
  const r = await httpGet(port, '/readyz');
  return { status: r.status, body: r.json() };
}

/** Waits until /readyz of srv reports redis as want ("up" or "down"). */
export function waitRedis(srv, want, timeoutMs = 15000) {
  return waitFor(async () => (await readyBody(srv.port).catch(() => null))?.body?.redis === want,
    { timeoutMs, intervalMs: 50, what: `${srv.nodeId} /readyz redis=${want}\n${srv.tail(10)}` });
}

/** Sorted member ids of room as /api/rooms/{room} of srv shows them ([] when no such room). */
export async function apiMembers(srv, room) {
  const r = await httpGet(srv.port, `/api/rooms/${encodeURIComponent(room)}`);
  if (r.status === 404) return [];
  return r.json().members.map((m) => m.id).sort();
}


let roomSeq = 0;
export const uniqueRoom = (prefix = 'room') => `${prefix}-${process.pid}-${++roomSeq}`;

/** Waits until every replica's /api/rooms/{room} lists exactly ids (sorted compare). */
export function waitMembers(replicas, room, ids, timeoutMs = 10000) {
  const want = JSON.stringify([...ids].sort());
  return waitFor(async () => {
    for (const s of replicas) if (JSON.stringify(await apiMembers(s, room)) !== want) return false;
    return true;
  }, { timeoutMs, intervalMs: 50, what: `members of ${room} = ${want}` });
}
