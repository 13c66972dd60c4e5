// Redis outage: redis-server is killed mid-test and started again on the same port. Nothing
// crashes, local rooms keep delivering, /readyz and /metrics show the outage (and, with
// redis_required, readiness fails), and after the reconnect presence is registered again and
// cross-replica delivery resumes with no duplicated message.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { parseMsgId, scrape, metricSum, waitFor, sleep, HOST } from './lib.mjs';
import {
  redisCluster, startRedis, startReplica, waitRedis, readyBody, uniqueRoom, waitMembers,
} from './redis_lib.mjs';

const T = { timeout: 50000 };
const LINK = ['--redis-command-timeout-ms', '1000', '--redis-connect-timeout-ms', '1000', '--presence-ttl-ms', '3000'];

const msgIds = (c, room) => c.all.filter((m) => m.type === 'msg' && m.room === room).map((m) => m.id);

describe('redis: outage and recovery', () => {
  const cluster = redisCluster((redis) => Promise.all([
    startReplica(redis.url, 'out-a', LINK),
    startReplica(redis.url, 'out-b', LINK),
    startReplica(redis.url, 'out-c', [...LINK, '--redis-required', 'true']),
  ]));
  const { reps, cs } = cluster;

  it('local delivery continues while Redis is down; cross-replica delivery resumes after', T, async () => {
    const room = uniqueRoom('out');
    const a1 = await cs.open(reps[0].port, `/ws?room=${room}&name=a1`);
    await a1.next('room');
    const a2 = await cs.open(reps[0].port, `/ws?room=${room}&name=a2`);
    await a2.next('room');
    const b1 = await cs.open(reps[1].port, `/ws?room=${room}&name=b1`);
    await b1.next('room');
    const c1 = await cs.open(reps[2].port, `/ws?room=${room}&name=c1`);
    await c1.next('room');
    const everyone = [a1.id, a2.id, b1.id, c1.id];
    await waitMembers(reps, room, everyone);

    const before = (await a1.say(room, 'before')).id;
    await b1.next((m) => m.type === 'msg' && m.id === before, 5000, 'cross-replica msg before the outage');

    // ---- outage
    await cluster.redis.stop('SIGKILL');
    await Promise.all(reps.map((s) => waitRedis(s, 'down')));
    const ra = await readyBody(reps[0].port);
    assert.equal(ra.status, 200, 'redis_required=false: still ready');
    assert.equal(ra.body.checks.redis, 'down');
    const rc = await readyBody(reps[2].port);
    assert.equal(rc.status, 503, 'redis_required=true: not ready');
    assert.equal(rc.body.redis, 'down');
    assert.equal(metricSum((await scrape(reps[0].port)).samples, 'chatgw_bus_up'), 0);

    const during = await a1.say(room, 'during', 5000);
    const local = await a2.next((m) => m.type === 'msg' && m.id === during.id, 5000, 'local delivery while down');
    assert.equal(local.text, 'during');
    assert.notEqual(parseMsgId(during.id).epoch, parseMsgId(before).epoch, 'a local id, not Redis\'s');
    await a1.expectError({ type: 'dm', to: b1.id, text: 'hi' }, 'unknown_peer');
    for (const s of reps) assert.equal(s.exitInfo, null, `${s.nodeId} is alive`);

    // ---- recovery on the same port
    cluster.redis = await startRedis(cluster.redis.port);
    await Promise.all(reps.map((s) => waitRedis(s, 'up', 20000)));
    assert.equal((await readyBody(reps[2].port)).status, 200, 'ready again');
    await waitMembers(reps, room, everyone, 15000);

    // cross-replica delivery resumes (bounded retries while subscriptions settle)
    let resumed = null;
    for (let i = 0; i < 40 && !resumed; i++) {
      const { id } = await a1.say(room, `after ${i}`, 5000);
      resumed = await b1.next((m) => m.type === 'msg' && m.id === id, 500, 'after').catch(() => null);
    }
    assert.ok(resumed, 'b1 hears a1 again');
    const last = (await b1.say(room, 'back')).id;
    await a1.next((m) => m.type === 'msg' && m.id === last, 5000, 'a1 hears b1');
    await c1.next((m) => m.type === 'msg' && m.id === last, 5000, 'c1 hears b1');
    await sleep(200);
    for (const c of [a1, a2, b1, c1]) {
      const ids = msgIds(c, room);
      assert.equal(new Set(ids).size, ids.length, `${c.name}: no duplicated msg`);
    }
    const { samples } = await scrape(reps[0].port);
    assert.equal(metricSum(samples, 'chatgw_bus_up'), 1);
    assert.ok(metricSum(samples, 'chatgw_bus_reconnects_total') >= 1, 'a reconnect counted');
    for (const s of reps) assert.equal(s.exitInfo, null, `${s.nodeId} is alive`);
  });

  it('joins during an outage get local members and the local ring, then everything heals', T, async () => {
    const room = uniqueRoom('out2');
    const a = await cs.open(reps[0].port, `/ws?room=${room}&name=a`);
    await a.next('room');
    const b = await cs.open(reps[1].port, `/ws?room=${room}&name=b`);
    await b.next('room');
    await waitMembers([reps[0], reps[1]], room, [a.id, b.id]);

    await cluster.redis.stop('SIGKILL');
    await Promise.all(reps.map((s) => waitRedis(s, 'down')));
    const a2 = await cs.open(reps[0].port, `/ws?room=${room}&name=a2`);
    const snap = await a2.next('room', 5000);
    assert.ok(snap.members.some((m) => m.id === a.id), 'local members are listed');
    assert.equal(new Set(snap.members.map((m) => m.id)).size, snap.members.length, 'no duplicates');

    cluster.redis = await startRedis(cluster.redis.port);
    await Promise.all(reps.map((s) => waitRedis(s, 'up', 20000)));
    await waitMembers([reps[0], reps[1]], room, [a.id, a2.id, b.id], 15000);
    await b.next((m) => m.type === 'join' && m.member?.id === a2.id, 10000, 'b learns of a2 after the reconnect');
  });
});

/** A TCP relay to Redis that a test can cut (every connection dropped, new ones refused) and heal. */
async function redisRelay(redisPort) {
  let open = true;
  const socks = new Set();
  const srv = net.createServer((c) => {
    if (!open) { c.destroy(); return; }
    const u = net.connect({ host: HOST, port: redisPort });
    for (const s of [c, u]) { socks.add(s); s.on('error', () => {}); s.on('close', () => { socks.delete(s); c.destroy(); u.destroy(); }); }
    c.pipe(u);
    u.pipe(c);
  });
  await new Promise((r) => srv.listen(0, HOST, r));
  return {
    url: `redis://${HOST}:${srv.address().port}/0`,
    cut() { open = false; for (const s of socks) s.destroy(); },
    heal() { open = true; },
    close() { open = false; for (const s of socks) s.destroy(); srv.close(); },
  };
}

describe('redis: one replica cut off while the others keep talking', () => {
  let relay;
  const cluster = redisCluster(async (redis) => {
    relay = await redisRelay(redis.port);
    return [await startReplica(relay.url, 'cut-a', LINK), await startReplica(redis.url, 'cut-b', LINK)];
  });
  const { reps, cs } = cluster;
  after(() => relay?.close());

  it('after the reconnect its members get what they missed, in order, once, then live msgs', T, async () => {
    const room = uniqueRoom('cut');
    const a = await cs.open(reps[0].port, `/ws?room=${room}&name=a`);
    await a.next('room');
    const b = await cs.open(reps[1].port, `/ws?room=${room}&name=b`);
    await b.next('room');
    await waitMembers(reps, room, [a.id, b.id]);
    const first = (await b.say(room, 'first')).id;
    await a.next((m) => m.type === 'msg' && m.id === first, 5000, 'first');

    relay.cut();
    await waitRedis(reps[0], 'down');
    const missed = [];
    for (let i = 0; i < 5; i++) missed.push((await b.say(room, `missed ${i}`)).id);
    relay.heal();
    await waitRedis(reps[0], 'up', 20000);
    const got = await a.nextN(missed.length, (m) => m.type === 'msg' && m.room === room, 10000, 'the missed msgs');
    assert.deepEqual(got.map((m) => m.id), missed, 'the missed msgs, in order');
    const live = (await b.say(room, 'live')).id;
    await a.next((m) => m.type === 'msg' && m.id === live, 5000, 'live after the refill');
    await sleep(200);
    const ids = msgIds(a, room);
    assert.deepEqual(ids, [first, ...missed, live], 'each once, in the room order');
    assert.deepEqual(a.all.filter((m) => m.type === 'error'), [], 'the stream was kept: no history_gap');
  });
});
