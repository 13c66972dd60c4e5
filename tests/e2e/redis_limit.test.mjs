// Shared gw.limit: with Redis, a key limited with gw.limit(key, rate, burst) allows about burst
// across the whole cluster, not burst on every replica. gw.limit still decides at once from the
// replica's own bucket; each take it allows is mirrored to Redis (one server-side token bucket,
// key chatgw:limit:KEY) and the answer lowers the local bucket to what the cluster has left, so
// replicas agree within one round trip. With Redis down every replica falls back to its own
// bucket, without errors.
//
// The fixture policy (fixtures/shared_limit) takes one token per chat message from the bucket
// "e2e:shared:<room>" (burst 5, 0.001 tokens/s: practically no refill) and drops with "limited".
// Messages go round-robin through the replicas, one at a time: each is answered (ack or error)
// and then given a short pause, so the mirrored take's answer from Redis (loopback) has arrived
// before that replica sees its next message.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, scriptsDir, readLuaFiles, FIXTURES, sleep } from './lib.mjs';
import {
  redisCluster, waitRedis, uniqueRoom, redisArgs, FAST,
} from './redis_lib.mjs';
import path from 'node:path';

const T = { timeout: 60000 };
const BURST = 5;
const REPLICAS = 3;
const ROUNDS = 6;                  // ROUNDS * REPLICAS messages: purely local limits allow them all
const LINK = ['--redis-command-timeout-ms', '1000', '--redis-connect-timeout-ms', '1000',
  '--redis-backoff-max-ms', '400'];

let cidSeq = 0;
/** Sends one chat msg and resolves 'ack' or the error frame's code (bounded). */
async function attempt(c, room) {
  const cid = `lim-${++cidSeq}`;
  c.send({ type: 'msg', room, text: `m ${cid}`, cid });
  const r = await c.next((m) => (m.type === 'ack' || m.type === 'error') && (m.cid === cid || m.ref === cid),
    5000, `ack or error for ${cid}`);
  return r.type === 'ack' ? 'ack' : r.code;
}

/** One message per replica per round; returns the outcomes per replica. */
async function roundRobin(clients, room) {
  const out = clients.map(() => []);
  for (let round = 0; round < ROUNDS; round++) {
    for (let i = 0; i < clients.length; i++) {
      out[i].push(await attempt(clients[i], room));
      await sleep(50);             // the mirrored take's answer (loopback) lands meanwhile
    }
  }
  return out;
}

const count = (outcomes, what) => outcomes.flat().filter((o) => o === what).length;

/** One client per replica in room (names prefix0, prefix1, ...), each past its room frame. */
async function onePerReplica(cs, reps, room, prefix) {
  const clients = [];
  for (const [i, s] of reps.entries()) {
    const c = await cs.open(s.port, `/ws?room=${room}&name=${prefix}${i}`);
    await c.next('room');
    clients.push(c);
  }
  return clients;
}

describe('redis: gw.limit shared across replicas', () => {
  const cluster = redisCluster(async (redis) => {
    const dir = scriptsDir(readLuaFiles(path.join(FIXTURES, 'shared_limit')));
    return Promise.all(Array.from({ length: REPLICAS }, (_, i) => startServer([
      '--scripts-dir', dir, ...FAST, '--redis-url', redis.url, '--node-id', `lim-${i}`, ...LINK,
    ]).then((s) => Object.assign(s, { nodeId: `lim-${i}` }))));
  });
  const { reps, cs } = cluster;

  it('one key allows about burst across the cluster, not burst per replica', T, async () => {
    const room = uniqueRoom('lim');
    const clients = await onePerReplica(cs, reps, room, 'u');
    const out = await roundRobin(clients, room);
    const allowed = count(out, 'ack');
    const limited = count(out, 'limited');
    assert.equal(allowed + limited, ROUNDS * REPLICAS, `only acks and "limited": ${JSON.stringify(out)}`);
    // Purely local buckets would allow BURST on every replica (15 here). Shared: BURST, plus at
    // most one take per replica that its local bucket allowed before a Redis answer told it
    // that the cluster was empty.
    assert.ok(allowed >= BURST, `at least burst allowed: ${JSON.stringify(out)}`);
    assert.ok(allowed <= BURST + REPLICAS, `about burst across ${REPLICAS} replicas, got ${allowed}: ` +
      JSON.stringify(out));
    assert.ok(allowed < BURST * REPLICAS, 'not burst per replica');
    // every replica ends limited: each learned that the cluster's bucket is empty
    for (const [i, o] of out.entries()) assert.equal(o.at(-1), 'limited', `replica ${i} limited at the end: ${o}`);
    // the bucket lives in Redis under the bus's namespace, nearly empty
    const tokens = await redisArgs(cluster.redis.port, ['HGET', `chatgw:limit:e2e:shared:${room}`, 'tokens']);
    const m = /^\$\d+\r\n([^\r]*)\r\n$/.exec(tokens);
    assert.ok(m, `Redis holds the shared bucket: ${JSON.stringify(tokens)}`);
    assert.ok(Number(m[1]) < 1, `the cluster's bucket is empty: ${m[1]}`);
    for (const s of reps) assert.equal(s.exitInfo, null, `${s.nodeId} is alive`);
  });

  it('with Redis down, every replica falls back to its own bucket without errors', T, async () => {
    await cluster.redis.stop('SIGKILL');
    cluster.redis = null;
    await Promise.all(reps.map((s) => waitRedis(s, 'down')));
    const room = uniqueRoom('limdown');
    const clients = await onePerReplica(cs, reps, room, 'd');
    const out = await roundRobin(clients, room);
    assert.equal(count(out, 'ack') + count(out, 'limited'), ROUNDS * REPLICAS, `only acks and "limited": ${JSON.stringify(out)}`);
    for (const [i, o] of out.entries()) {
      assert.deepEqual(o, [...Array(BURST).fill('ack'), ...Array(ROUNDS - BURST).fill('limited')],
        `replica ${i}: its own bucket of ${BURST}`);
    }
    for (const s of reps) {
      assert.equal(s.exitInfo, null, `${s.nodeId} is alive`);
      const errs = s.logs.filter((l) => l.level === 'error' && /limit|policy/.test(JSON.stringify(l)));
      assert.deepEqual(errs, [], `${s.nodeId}: no policy or limit errors`);
    }
  });
});
