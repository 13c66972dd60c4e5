// Redis Sentinel: a master and a replica, both with a password, watched by three real
// redis-sentinel processes (with a password of their own), all on loopback. Two chatgw replicas
// find the master through the sentinels. Kill the master: the sentinels promote the replica,
// chatgw follows, messages cross replicas again, and no client silently misses a message (a
// loss shows as history_gap).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { waitFor, withTimeout, tempDir, parseMsgId, HOST } from './lib.mjs';
import { freePort, startReplica, waitRedis, clientPool, uniqueRoom, waitMembers, REDIS_BIN, resp, redisExchange } from './redis_lib.mjs';

const T = { timeout: 90000 };
const PW = 'master-s3cret';
const SPW = 'sentinel-s3cret';
const NAME = 'chatgw-main';
const SENTINEL_BIN = fs.existsSync('/usr/bin/redis-sentinel') ? '/usr/bin/redis-sentinel' : null;

const procs = new Set();
process.on('exit', () => { for (const p of procs) { try { p.kill('SIGKILL'); } catch { /* gone */ } } });

function run(bin, args) {
  const p = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  procs.add(p);
  const out = [];
  p.stdout.on('data', (d) => out.push(d.toString()));
  p.stderr.on('data', (d) => out.push(d.toString()));
  p.exited = new Promise((r) => p.once('exit', () => { procs.delete(p); r(); }));
  p.tail = () => out.join('').slice(-2000);
  p.unref();
  return p;
}

async function stop(p) {
  try { p.kill('SIGKILL'); } catch { /* gone */ }
  await withTimeout(p.exited, 5000, 'exit').catch(() => {});
}

/** One command on a fresh connection after AUTH; resolves the raw reply of the command. */
function rawAuthed(port, args, pw) {
  const afterAuth = (buf) => {
    const i = buf.indexOf('\r\n');
    return i >= 0 && buf.length > i + 2 && buf.endsWith('\r\n') ? buf.slice(i + 2) : undefined;
  };
  return redisExchange(port, Buffer.concat([resp(['AUTH', pw]), resp(args)]), afterAuth, 3000, `redis ${args[0]}`);
}

describe('redis: Sentinel failover', { skip: !SENTINEL_BIN && 'redis-sentinel is not installed (tests/e2e/debs.txt)' }, () => {
  let master, replica, replica2, masterPort, replicaPort, replica2Port;
  const sentinels = [];
  const reps = [];
  const cs = clientPool();
  const dir = tempDir('chatgw-sentinel-');

  before(async () => {
    masterPort = await freePort();
    replicaPort = await freePort();
    replica2Port = await freePort();
    const common = ['--bind', HOST, '--save', '', '--appendonly', 'no', '--protected-mode', 'no', '--loglevel', 'warning',
      '--dir', dir,   // a replica's full sync writes its RDB there
      '--requirepass', PW, '--masterauth', PW];
    master = run(REDIS_BIN, ['--port', String(masterPort), ...common]);
    replica = run(REDIS_BIN, ['--port', String(replicaPort), ...common, '--replicaof', HOST, String(masterPort),
      '--replica-priority', '10']);  // the first to be promoted
    replica2 = run(REDIS_BIN, ['--port', String(replica2Port), ...common, '--replicaof', HOST, String(masterPort)]);
    for (const [p, proc] of [[replicaPort, replica], [replica2Port, replica2]]) {
      await waitFor(async () => /master_link_status:up/.test(await rawAuthed(p, ['INFO', 'replication'], PW).catch(() => '')),
        { timeoutMs: 10000, intervalMs: 100, what: `replica ${p} in sync\n${proc.tail()}` });
    }
    for (let i = 0; i < 3; i++) {
      const port = await freePort();
      const conf = path.join(dir, `sentinel-${i}.conf`);
      fs.writeFileSync(conf, [
        `port ${port}`, `bind ${HOST}`, 'protected-mode no', `dir ${dir}`, `requirepass ${SPW}`,
        `sentinel monitor ${NAME} ${HOST} ${masterPort} 2`, `sentinel auth-pass ${NAME} ${PW}`,
        `sentinel down-after-milliseconds ${NAME} 1000`, `sentinel failover-timeout ${NAME} 5000`,
        `sentinel parallel-syncs ${NAME} 1`, `sentinel sentinel-pass ${SPW}`, '',
      ].join('\n'));
      const p = run(SENTINEL_BIN, [conf]);
      p.port = port;
      sentinels.push(p);
    }
    for (const s of sentinels) {
      await waitFor(async () => (await rawAuthed(s.port, ['SENTINEL', 'get-master-addr-by-name', NAME], SPW).catch(() => ''))
        .includes(String(masterPort)), { timeoutMs: 10000, intervalMs: 100, what: `sentinel ${s.port} knows the master\n${s.tail()}` });
    }
    const pwFile = path.join(dir, 'redis-password');
    const spwFile = path.join(dir, 'sentinel-password');
    fs.writeFileSync(pwFile, `${PW}\n`);
    fs.writeFileSync(spwFile, `${SPW}\n`);
    const list = sentinels.map((s) => `${HOST}:${s.port}`).join(',');
    for (const n of ['a', 'b']) {
      reps.push(await startReplica('redis://unused-host/0', `sen-${n}`, ['--redis-password-file', pwFile,
        '--redis-sentinels', list, '--redis-sentinel-master', NAME, '--redis-sentinel-password-file', spwFile,
        '--redis-command-timeout-ms', '1000', '--redis-connect-timeout-ms', '1000', '--redis-backoff-max-ms', '300',
        '--presence-ttl-ms', '3000']));
    }
    await Promise.all(reps.map((s) => waitRedis(s, 'up')));
  });

  after(async () => {
    await cs.closeAll();
    await Promise.all(reps.map((s) => s.stop('SIGKILL').catch(() => {})));
    for (const p of [...sentinels, master, replica, replica2]) if (p) await stop(p);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('finds the master through the sentinels; after the master dies, follows the failover', T, async () => {
    const [a, b] = reps;
    const room = uniqueRoom('sen');
    const ca = await cs.open(a.port, `/ws?room=${room}&name=alice`);
    await ca.next('room', 5000);
    const cb = await cs.open(b.port, `/ws?room=${room}&name=bob`);
    await cb.next('room', 5000);
    await waitMembers(reps, room, [ca.id, cb.id]);
    const m1 = await ca.say(room, 'before', 5000);
    assert.equal((await cb.next((m) => m.type === 'msg' && m.text === 'before', 5000)).id, m1.id);
    // the write reached the replica too
    await waitFor(async () => (await rawAuthed(replicaPort, ['EXISTS', `chatgw:{${room}}:seq`], PW)).startsWith(':1'),
      { timeoutMs: 5000, intervalMs: 50, what: 'replicated' });

    await stop(master);
    await Promise.all(reps.map((s) => waitRedis(s, 'down', 10000)));
    await waitFor(async () => (await rawAuthed(sentinels[0].port, ['SENTINEL', 'get-master-addr-by-name', NAME], SPW)
      .catch(() => '')).includes(String(replicaPort)), { timeoutMs: 30000, intervalMs: 200, what: 'failover done' });
    await Promise.all(reps.map((s) => waitRedis(s, 'up', 20000)));
    assert.match(a.tail(200), /redis link up/);

    // messages flow again across replicas, in order or with history_gap first
    cb.drain();
    const m2 = await ca.say(room, 'after', 8000);
    const got = await cb.next((m) => m.type === 'msg' && m.text === 'after', 8000, 'after on b');
    assert.equal(got.id, m2.id);
    const i1 = parseMsgId(m1.id), i2 = parseMsgId(m2.id);
    if (i2.epoch !== i1.epoch || i2.seq !== i1.seq + 1) {
      assert.ok(cb.all.some((m) => m.type === 'error' && m.code === 'history_gap'), 'a discontinuity is reported');
    }
    const m3 = await cb.say(room, 'back', 8000);
    assert.equal((await ca.next((m) => m.type === 'msg' && m.text === 'back', 8000)).id, m3.id);
  });

  it('a manual failover with the master alive: the sentinels\' +switch-master moves chatgw at once', T, async () => {
    const [a, b] = reps;
    const room = uniqueRoom('switch');
    const ca = await cs.open(a.port, `/ws?room=${room}&name=carol`);
    await ca.next('room', 5000);
    const cb = await cs.open(b.port, `/ws?room=${room}&name=dave`);
    await cb.next('room', 5000);
    await waitMembers(reps, room, [ca.id, cb.id]);
    // the remaining replica follows the promoted one before it can be promoted in turn
    await waitFor(async () => /master_link_status:up/.test(await rawAuthed(replica2Port, ['INFO', 'replication'], PW).catch(() => '')) &&
      (await rawAuthed(replica2Port, ['INFO', 'replication'], PW)).includes(`master_port:${replicaPort}`),
    { timeoutMs: 30000, intervalMs: 200, what: 'replica2 follows the new master' });
    const before = await ca.say(room, 'one', 5000);
    await cb.next((m) => m.type === 'msg' && m.id === before.id, 5000);
    // -INPROG while the sentinels still finish the first failover (reconfiguring replicas)
    await waitFor(async () => /^\+OK/.test(await rawAuthed(sentinels[1].port, ['SENTINEL', 'FAILOVER', NAME], SPW)),
      { timeoutMs: 30000, intervalMs: 500, what: 'SENTINEL FAILOVER accepted' });
    await waitFor(async () => (await rawAuthed(sentinels[0].port, ['SENTINEL', 'get-master-addr-by-name', NAME], SPW)
      .catch(() => '')).includes(String(replica2Port)), { timeoutMs: 30000, intervalMs: 200, what: 'manual failover done' });
    for (const s of reps) {
      await waitFor(async () => /sentinel switched the master/.test(s.tail(400)),
        { timeoutMs: 15000, intervalMs: 100, what: `${s.nodeId} heard +switch-master` });
      await waitRedis(s, 'up', 20000);
    }
    cb.drain();
    const m = await ca.say(room, 'two', 8000);
    const got = await cb.next((x) => x.type === 'msg' && x.text === 'two', 8000, 'two on b');
    assert.equal(got.id, m.id);
    const i1 = parseMsgId(before.id), i2 = parseMsgId(m.id);
    if (i2.epoch !== i1.epoch || i2.seq !== i1.seq + 1)
      assert.ok(cb.all.some((x) => x.type === 'error' && x.code === 'history_gap'), 'a discontinuity is reported');
  });
});
