// Room lifetime in Redis: a room's keys (ids, history, presence) carry a TTL of
// redis_room_ttl_ms, refreshed by activity and by the replicas holding its members; once
// nobody is left they expire, and a client coming back later with its since gets history_gap.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { sleep, waitFor, parseMsgId } from './lib.mjs';
import fs from 'node:fs';
import path from 'node:path';
import { SRC } from './lib.mjs';
import { redisCluster, startReplica, uniqueRoom, redisCommand, redisArgs, waitMembers, readyBody } from './redis_lib.mjs';

const T = { timeout: 40000 };
const TTL = 1500;
const ARGS = ['--presence-ttl-ms', '900', '--redis-room-ttl-ms', String(TTL)];
const SUFFIXES = ['seq', 'epoch', 'hist', 'presence', 'alive'];

async function pttl(port, key) {
  const line = await redisCommand(port, `PTTL ${key}`);
  return Number(line.slice(1));
}

describe('redis: room keys expire after the last activity', () => {
  const cluster = redisCluster((redis) => Promise.all([
    startReplica(redis.url, 'life-a', ARGS),
    startReplica(redis.url, 'life-b', ARGS),
  ]));
  const { reps, cs } = cluster;

  it('keys carry the TTL, live members keep them, then they expire and since gets history_gap', T, async () => {
    const [a, b] = reps;
    const port = cluster.redis.port;
    const room = uniqueRoom('life');
    const ca = await cs.open(a.port, `/ws?room=${room}&name=alice`);
    await ca.next('room', 5000);
    const cb = await cs.open(b.port, `/ws?room=${room}&name=bob`);
    await cb.next('room', 5000);
    await waitMembers(reps, room, [ca.id, cb.id]);
    const m1 = await ca.say(room, 'one', 5000);
    const m2 = await cb.say(room, 'two', 5000);
    await ca.next((m) => m.type === 'msg' && m.id === m2.id, 5000);

    for (const s of SUFFIXES) {
      const t = await pttl(port, `chatgw:{${room}}:${s}`);
      assert.ok(t > 0 && t <= TTL, `chatgw:{${room}}:${s} has a TTL within ${TTL} ms (PTTL ${t})`);
    }
    // quiet, but members stay: their replicas' reapers keep the room alive past the TTL
    await sleep(TTL + 1000);
    for (const s of SUFFIXES)
      assert.ok(await pttl(port, `chatgw:{${room}}:${s}`) > 0, `${s} kept alive while members stay`);

    await ca.close();
    await cb.close();
    await waitFor(async () => {
      for (const s of SUFFIXES) if (await redisCommand(port, `EXISTS chatgw:{${room}}:${s}`) !== ':0') return false;
      return true;
    }, { timeoutMs: TTL + 6000, intervalMs: 100, what: `keys of ${room} expired` });

    // coming back later with the old position: the history is gone, and it is said
    const back = await cs.open(b.port, `/ws?room=${room}&name=carol&since=${encodeURIComponent(m1.id)}`);
    const gap = await back.next((m) => m.type === 'error', 5000, 'history_gap');
    assert.equal(gap.code, 'history_gap');
    assert.equal(gap.ref, room);
    const snap = await back.next('room', 5000);
    assert.deepEqual(snap.history, [], 'nothing is kept');
    const m3 = await back.say(room, 'three', 5000);
    assert.notEqual(parseMsgId(m3.id).epoch, parseMsgId(m1.id).epoch, 'a new epoch starts');
    assert.equal(parseMsgId(m3.id).seq, 1);
  });

  it('a room nobody touches expires even though Redis keeps other rooms', T, async () => {
    const port = cluster.redis.port;
    const room = uniqueRoom('idle');
    const c = await cs.open(reps[0].port, `/ws?room=${room}&name=dave`);
    await c.next('room', 5000);
    await c.say(room, 'hello', 5000);
    await c.close();
    await waitFor(async () => await redisCommand(port, `EXISTS chatgw:{${room}}:hist`) === ':0',
      { timeoutMs: TTL + 6000, intervalMs: 100, what: 'idle room expired' });
    assert.notEqual(await redisCommand(port, `EXISTS chatgw:node:life-a`), ':0', 'heartbeats stay');
  });
});

/** The --flag values the shipped Redis runs with (deploy/k8s/base/redis.yaml). */
function shippedRedisArg(flag) {
  const lines = fs.readFileSync(path.join(SRC, 'deploy', 'k8s', 'base', 'redis.yaml'), 'utf8').split('\n');
  const i = lines.findIndex((l) => l.trim() === `- ${flag}`);
  assert.ok(i >= 0, `redis.yaml passes ${flag}`);
  return lines[i + 1].trim().replace(/^- /, '').replace(/^"(.*)"$/, '$1');
}

describe('redis: the shipped eviction policy evicts stale rooms, not heartbeats', () => {
  const cluster = redisCluster((redis) => Promise.all([
    startReplica(redis.url, 'evict-a', ['--presence-ttl-ms', '3000']),
    startReplica(redis.url, 'evict-b', ['--presence-ttl-ms', '3000']),
  ]));
  const { reps, cs } = cluster;

  it('at maxmemory, idle rooms go first; live rooms and heartbeats stay and writes go on', T, async () => {
    const port = cluster.redis.port;
    const policy = shippedRedisArg('--maxmemory-policy');
    assert.equal(await redisCommand(port, `CONFIG SET maxmemory-policy ${policy}`), '+OK');
    assert.equal(await redisCommand(port, `CONFIG SET maxmemory-samples ${shippedRedisArg('--maxmemory-samples')}`), '+OK');
    // 3000 stale rooms' streams, as chatgw leaves them: with a TTL, untouched since
    const fill = "for i = 1, 3000 do redis.call('SET', 'chatgw:{stale-' .. i .. '}:hist', string.rep('x', 1000), " +
      "'PX', 86400000) end return 1";
    assert.equal(await redisArgs(port, ['EVAL', fill, '0']), ':1\r\n');
    await sleep(2500);             // older than the LRU clock's resolution (1 s)
    const info = await redisArgs(port, ['INFO', 'memory']);
    const used = Number(/used_memory:(\d+)/.exec(info)[1]);
    assert.equal(await redisCommand(port, `CONFIG SET maxmemory ${used + 300000}`), '+OK');
    try {
      const room = uniqueRoom('busy');
      const ca = await cs.open(reps[0].port, `/ws?room=${room}&name=erin`);
      await ca.next('room', 5000);
      const cb = await cs.open(reps[1].port, `/ws?room=${room}&name=fred`);
      await cb.next('room', 5000);
      const text = 'y'.repeat(4000);
      // ~1.6 MB more than the room left: Redis must evict to take them (the stream keeps 100)
      for (let i = 0; i < 400; i++) {
        ca.send({ type: 'msg', room, text, cid: `e${i}` });
        if (i % 50 === 49) await ca.next((m) => m.type === 'ack' && m.cid === `e${i}`, 10000, `ack e${i}`);
      }
      assert.deepEqual(ca.inbox.filter((m) => m.type === 'error'), [], 'no write was refused');
      assert.equal(ca.inbox.filter((m) => m.type === 'ack').length, 400 - 8, 'every msg acked');
      const got = await cb.nextN(400, (m) => m.type === 'msg' && m.room === room, 20000);
      assert.equal(got.length, 400);
      const stats = await redisArgs(port, ['INFO', 'stats']);
      assert.ok(Number(/evicted_keys:(\d+)/.exec(stats)[1]) > 0, 'Redis had to evict');
      for (const n of ['evict-a', 'evict-b'])
        assert.equal(await redisCommand(port, `EXISTS chatgw:node:${n}`), ':1', `heartbeat of ${n} kept`);
      assert.equal(await redisCommand(port, `EXISTS chatgw:{${room}}:hist`), ':1', 'the live room kept');
      for (const s of reps) assert.equal((await readyBody(s.port)).body.redis, 'up');
    } finally {
      await redisCommand(port, 'CONFIG SET maxmemory 0');
    }
  });
});
