// The first-join race: the first member of a room on a replica makes that replica SUBSCRIBE to
// the room's channel while its snapshot reads the shared history on the other connection. A
// msg posted after that read but before the SUBSCRIBE took effect must not be lost. A proxy in
// front of Redis holds back one replica's room SUBSCRIBEs to open that window wide.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { HOST } from './lib.mjs';
import { startRedis, startReplica, freePort, waitRedis, clientPool, uniqueRoom, waitMembers } from './redis_lib.mjs';

const T = { timeout: 40000 };
const HOLD_MS = 800;

/** A TCP proxy to Redis that delays everything a client sends after a room SUBSCRIBE by
 * HOLD_MS (order kept). */
async function delayingProxy(redisPort) {
  const port = await freePort();
  const socks = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect({ host: HOST, port: redisPort });
    socks.add(client);
    socks.add(upstream);
    let chain = Promise.resolve();
    client.on('data', (d) => {
      const held = d.includes('SUBSCRIBE') && d.includes('chatgw:room:');
      chain = chain.then(() => new Promise((r) => setTimeout(r, held ? HOLD_MS : 0))).then(() => upstream.write(d));
    });
    upstream.on('data', (d) => client.write(d));
    const end = () => { client.destroy(); upstream.destroy(); };
    client.on('error', end); upstream.on('error', end);
    client.on('close', end); upstream.on('close', end);
  });
  await new Promise((r) => server.listen(port, HOST, r));
  return {
    port,
    close() { for (const s of socks) s.destroy(); return new Promise((r) => server.close(r)); },
  };
}

describe('redis: a first joiner misses nothing posted before its subscription took effect', () => {
  let redis, proxy;
  const reps = [];
  const cs = clientPool();
  before(async () => {
    redis = await startRedis();
    proxy = await delayingProxy(redis.port);
    reps.push(await startReplica(redis.url, 'race-a'));
    reps.push(await startReplica(`redis://${HOST}:${proxy.port}/0`, 'race-b', ['--redis-command-timeout-ms', '5000']));
    await Promise.all(reps.map((s) => waitRedis(s, 'up')));
  });
  after(async () => {
    await cs.closeAll();
    await Promise.all(reps.map((s) => s.stop().catch(() => s.stop('SIGKILL').catch(() => {}))));
    if (proxy) await proxy.close();
    if (redis) await redis.stop();
  });

  it('a msg posted right after the first joiner\'s room frame reaches it', T, async () => {
    const [a, b] = reps;
    for (let round = 0; round < 3; round++) {
      const room = uniqueRoom('race');
      const ca = await cs.open(a.port, `/ws?room=${room}&name=alice${round}`);
      await ca.next('room', 5000);
      await ca.say(room, 'before', 5000);
      const cb = await cs.open(b.port, `/ws?room=${room}&name=bob${round}`);   // b's first member
      const snap = await cb.next('room', 5000);
      assert.deepEqual(snap.history.map((m) => m.text), ['before']);
      const { id } = await ca.say(room, `after ${round}`, 5000);
      const got = await cb.next((m) => m.type === 'msg' && m.room === room, 5000, `msg ${id} on b`);
      assert.equal(got.id, id);
      assert.deepEqual(cb.inbox.filter((m) => m.type === 'error'), []);
      await waitMembers(reps, room, [ca.id, cb.id]);
      await cb.close();
      await ca.close();
    }
  });
});
