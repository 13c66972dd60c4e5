// A real Redis Cluster for the cluster tests: masters (3 by default) and optionally one replica
// per master, each a redis-server with --cluster-enabled on free loopback ports (client port and
// cluster bus port both picked free), in a temp dir, no persistence. `redis-cli --cluster
// create` assigns the slots; startRedisCluster resolves once every node reports
// cluster_state:ok, knows every other node in its role, and lists every synced replica in
// CLUSTER SLOTS. Every process started here is killed
// when the test process exits, whatever happened to the test.
import { spawn, execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { waitFor, withTimeout, tempDir, HOST } from './lib.mjs';
import { freePort, REDIS_BIN } from './redis_lib.mjs';

export const REDIS_CLI = process.env.REDIS_CLI || '/usr/bin/redis-cli';
/** Why the cluster tests cannot run here, or null. */
export const clusterMissing = !fs.existsSync(REDIS_BIN) ? `no ${REDIS_BIN}`
  : !fs.existsSync(REDIS_CLI) ? `no ${REDIS_CLI}` : null;

const procs = new Set();
process.on('exit', () => { for (const p of procs) { try { p.kill('SIGKILL'); } catch { /* gone */ } } });

/** redis-cli against HOST:port with args; resolves its stdout (bounded), rejects on failure. */
export function cli(port, args, ms = 5000) {
  return new Promise((resolve, reject) => {
    execFile(REDIS_CLI, ['-h', HOST, '-p', String(port), ...args.map(String)], { timeout: ms },
      (e, stdout, stderr) => (e ? reject(new Error(`redis-cli -p ${port} ${args.join(' ')}: ${e.message}\n${stderr}`))
        : resolve(stdout)));
  });
}

/** Free ports, all distinct (a bus port must not be another node's client port). */
async function freePorts(n) {
  const got = new Set();
  for (let tries = 0; got.size < n && tries < n * 20; tries++) got.add(await freePort());
  if (got.size < n) throw new Error(`only ${got.size} free ports of ${n}`);
  return [...got];
}

function startNode(dir, port, busPort) {
  const nodeDir = path.join(dir, String(port));
  fs.mkdirSync(nodeDir);
  const p = spawn(REDIS_BIN, ['--port', String(port), '--bind', HOST, '--cluster-enabled', 'yes',
    '--cluster-port', String(busPort), '--cluster-config-file', path.join(nodeDir, 'nodes.conf'),
    '--cluster-node-timeout', '2000', '--dir', nodeDir, '--save', '', '--appendonly', 'no',
    '--protected-mode', 'no', '--loglevel', 'warning'], { stdio: ['ignore', 'pipe', 'pipe'] });
  procs.add(p);
  const out = [];
  p.stdout.on('data', (d) => out.push(d.toString()));
  p.stderr.on('data', (d) => out.push(d.toString()));
  p.exited = new Promise((r) => p.once('exit', () => { procs.delete(p); r(); }));
  p.unref();
  return { port, busPort, proc: p, tail: () => out.join('').slice(-2000) };
}

/** CLUSTER NODES of port as [{id, addr, port, flags[], master, slots[]}]. */
export async function clusterNodes(port) {
  const text = await cli(port, ['CLUSTER', 'NODES']);
  return text.trim().split('\n').filter(Boolean).map((line) => {
    const f = line.split(' ');
    return { id: f[0], addr: f[1], port: Number(f[1].split('@')[0].split(':').pop()), flags: f[2].split(','),
      master: f[3], slots: f.slice(8) };
  });
}

/**
 * CLUSTER SLOTS of port as [{lo, hi, master: port, replicas: [ports]}], sorted by lo (read
 * through redis-cli --json -2, independent of the C codec the tests check).
 */
export async function clusterSlots(port) {
  const rows = JSON.parse(await cli(port, ['--json', '-2', 'CLUSTER', 'SLOTS']));
  return rows.map((r) => ({ lo: r[0], hi: r[1], master: r[2][1], replicas: r.slice(3).map((n) => n[1]) }))
    .sort((a, b) => a.lo - b.lo);
}

/** Field name of CLUSTER INFO at port. */
export async function clusterInfo(port, name) {
  const text = await cli(port, ['CLUSTER', 'INFO']);
  const m = text.match(new RegExp(`^${name}:(.*)$`, 'm'));
  return m ? m[1].trim() : null;
}

/**
 * Starts the cluster. Resolves {nodes: [{port, busPort, proc}], masters: [ports], replicas:
 * [ports], stop(), cli(port, args)}; nodes come in creation order (masters first, as
 * redis-cli --cluster create assigns them).
 */
export async function startRedisCluster({ masters = 3, replicas = 0, timeoutMs = 30000 } = {}) {
  if (masters < 3) throw new Error('Redis Cluster needs at least 3 masters');
  if (replicas !== 0 && replicas !== 1) throw new Error('replicas per master: 0 or 1');
  const total = masters * (1 + replicas);
  const dir = tempDir('chatgw-cluster-');
  const ports = await freePorts(total * 2);
  const nodes = [];
  const cluster = {
    nodes,
    dir,
    masters: [],
    replicas: [],
    cli,
    async stop() {
      await Promise.all(nodes.map(async (n) => {
        try { n.proc.kill('SIGKILL'); } catch { /* gone */ }
        await withTimeout(n.proc.exited, 5000, `redis-server ${n.port} exit`).catch(() => {});
      }));
    },
  };
  try {
    for (let i = 0; i < total; i++) nodes.push(startNode(dir, ports[i], ports[total + i]));
    for (const n of nodes) {
      await waitFor(async () => (await cli(n.port, ['PING'], 1000).catch(() => '')).trim() === 'PONG',
        { timeoutMs: 10000, intervalMs: 50, what: `redis-server on ${n.port}\n${n.tail()}` });
    }
    await cli(nodes[0].port, ['--cluster', 'create', ...nodes.map((n) => `${HOST}:${n.port}`),
      '--cluster-replicas', String(replicas), '--cluster-yes'], timeoutMs);
    await waitFor(async () => {
      for (const n of nodes) {
        if (await clusterInfo(n.port, 'cluster_state').catch(() => null) !== 'ok') return false;
        const seen = await clusterNodes(n.port).catch(() => []);
        if (seen.length !== total) return false;
        if (seen.filter((s) => s.flags.includes('master') && s.slots.length).length !== masters) return false;
        if (seen.filter((s) => s.flags.includes('slave')).length !== masters * replicas) return false;
        // A replica shows in CLUSTER SLOTS once it has synced with its master.
        const slots = await clusterSlots(n.port).catch(() => []);
        if (!slots.length || slots.some((r) => r.replicas.length !== replicas)) return false;
      }
      return true;
    }, { timeoutMs, intervalMs: 100, what: `cluster of ${total} nodes ok\n${nodes.map((n) => n.tail()).join('')}` });
    const view = await clusterNodes(nodes[0].port);
    cluster.masters = view.filter((s) => s.flags.includes('master')).map((s) => s.port).sort((a, b) => a - b);
    cluster.replicas = view.filter((s) => s.flags.includes('slave')).map((s) => s.port).sort((a, b) => a - b);
  } catch (e) {
    await cluster.stop();
    throw e;
  }
  return cluster;
}
