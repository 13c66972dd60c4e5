// Redis refusing writes: a full Redis (maxmemory reached, noeviction) answers OOM. chatgw must
// not fall back quietly: the sender gets an `unavailable` error, chatgw_bus_errors_total{op}
// counts the refusals, chatgw_bus_refusing and /readyz (redis "refusing", 503 with
// redis_required) show it, and all of it clears once Redis takes writes again.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { scrape, metricSum, waitFor } from './lib.mjs';
import { redisCluster, startReplica, readyBody, uniqueRoom, redisCommand } from './redis_lib.mjs';

const T = { timeout: 40000 };

describe('redis: an out-of-memory Redis is a visible error', () => {
  const cluster = redisCluster((redis) => Promise.all([
    startReplica(redis.url, 'oom-a', ['--redis-required', 'true', '--presence-ttl-ms', '1500']),
    startReplica(redis.url, 'oom-b', ['--presence-ttl-ms', '1500']),
  ]));
  const { reps, cs } = cluster;

  it('OOM: the post is refused with unavailable, counted, readiness shows it; then it recovers', T, async () => {
    const [a, b] = reps;
    const room = uniqueRoom('oom');
    const ca = await cs.open(a.port, `/ws?room=${room}&name=alice`);
    await ca.next('room', 5000);
    const cb = await cs.open(b.port, `/ws?room=${room}&name=bob`);
    await cb.next('room', 5000);
    const first = await ca.say(room, 'before', 5000);
    await cb.next((m) => m.type === 'msg' && m.id === first.id, 5000);

    const port = cluster.redis.port;
    assert.equal(await redisCommand(port, 'CONFIG SET maxmemory-policy noeviction'), '+OK');
    assert.equal(await redisCommand(port, 'CONFIG SET maxmemory 1'), '+OK');
    try {
      ca.drain();
      cb.drain();
      ca.send({ type: 'msg', room, text: 'while full', cid: 'full-1' });
      const err = await ca.next((m) => m.type === 'error', 5000, 'the refusal');
      assert.equal(err.code, 'unavailable');
      assert.equal(err.ref, 'full-1');
      assert.deepEqual(await ca.none((m) => m.type === 'msg' || m.type === 'ack', 300), [], 'not delivered here');
      assert.deepEqual(await cb.none((m) => m.type === 'msg', 300), [], 'nor elsewhere');

      await waitFor(async () => (await readyBody(a.port)).body.redis === 'refusing',
        { timeoutMs: 5000, intervalMs: 50, what: 'readyz redis=refusing' });
      const ra = await readyBody(a.port);
      assert.equal(ra.status, 503, 'redis_required: not ready while Redis refuses writes');
      assert.equal(ra.body.status, 'redis_refusing');
      assert.equal(ra.body.checks.redis, 'refusing');
      // the other replica's heartbeat is refused too (within a heartbeat period): it stays ready
      await waitFor(async () => (await readyBody(b.port)).body.redis === 'refusing',
        { timeoutMs: 5000, intervalMs: 50, what: 'b readyz redis=refusing' });
      assert.equal((await readyBody(b.port)).status, 200, 'without redis_required it stays ready');

      const { samples } = await scrape(a.port);
      assert.ok(metricSum(samples, 'chatgw_bus_errors_total', { op: 'post' }) >= 1, 'post error counted');
      await waitFor(async () => metricSum((await scrape(a.port)).samples, 'chatgw_bus_refusing') === 1,
        { timeoutMs: 5000, intervalMs: 100, what: 'chatgw_bus_refusing 1' });
      await waitFor(async () => metricSum((await scrape(a.port)).samples, 'chatgw_bus_errors_total',
        { op: 'heartbeat' }) >= 1, { timeoutMs: 5000, intervalMs: 100, what: 'heartbeat error counted' });
      assert.ok(samples.some((x) => x.name === 'chatgw_bus_errors_total' && x.labels.op === 'link'),
        'every op label is exported');
      assert.match(a.tail(200), /out of memory/, 'logged as an error');
    } finally {
      await redisCommand(port, 'CONFIG SET maxmemory 0');
    }
    for (const s of reps) {
      await waitFor(async () => (await readyBody(s.port)).body.redis === 'up',
        { timeoutMs: 5000, intervalMs: 50, what: `${s.nodeId} readyz redis=up again` });
    }
    assert.equal((await readyBody(a.port)).status, 200);
    await waitFor(async () => metricSum((await scrape(a.port)).samples, 'chatgw_bus_refusing') === 0,
      { timeoutMs: 5000, intervalMs: 100, what: 'chatgw_bus_refusing 0 (copied once a second)' });
    const after = await ca.say(room, 'after', 5000);
    await cb.next((m) => m.type === 'msg' && m.id === after.id, 5000);
  });
});
