// A store that lost its last writes (a failover to a replica that had not copied them yet, a
// restart from an older snapshot) must not hand out ids already used: replicas drop a msg whose
// id is not after the newest they delivered, which would lose it silently. Staged on one real
// redis-server: the room's seq is set back and its newest stream entries deleted while every
// replica's links are cut; after they reconnect, the room continues in a new epoch, and a
// client that had seen the lost ids gets history_gap.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { parseMsgId, waitFor } from './lib.mjs';
import { redisCluster, startReplica, uniqueRoom, waitMembers, redisArgs, waitRedis } from './redis_lib.mjs';

const T = { timeout: 40000 };

describe('redis: lost writes start a new epoch', () => {
  const cluster = redisCluster((redis) =>
    Promise.all(['a', 'b'].map((n) => startReplica(redis.url, `fence-${n}`, ['--history-size', '50']))));
  const { reps, cs } = cluster;

  it('ids are never handed out twice; what was lost shows as history_gap', T, async () => {
    const room = uniqueRoom('fence');
    const a = await cs.joined(reps[0].port, `/ws?room=${room}&name=a`, 3000);
    const b = await cs.joined(reps[1].port, `/ws?room=${room}&name=b`, 3000);
    await waitMembers(reps, room, [a.id, b.id]);
    a.drain();
    b.drain();
    const ids = [];
    for (let i = 0; i < 5; i++) ids.push((await a.say(room, `kept or lost ${i}`)).id);
    await b.nextN(5, (m) => m.type === 'msg' && m.room === room, 5000);
    const { epoch } = parseMsgId(ids[4]);

    // the store loses msgs 4 and 5 while both replicas are cut off
    const port = cluster.redis.port;
    await redisArgs(port, ['SET', `chatgw:{${room}}:seq`, '3']);
    await redisArgs(port, ['XDEL', `chatgw:{${room}}:hist`, '4-0', '5-0']);
    await redisArgs(port, ['CLIENT', 'KILL', 'TYPE', 'normal']);
    await redisArgs(port, ['CLIENT', 'KILL', 'TYPE', 'pubsub']);
    await waitFor(async () => {
      for (const s of reps) if (!s.logs.some((l) => l.msg === 'bus: redis link down')) return false;
      return true;
    }, { timeoutMs: 5000, what: 'both links dropped' });
    await Promise.all(reps.map((s) => waitRedis(s, 'up')));

    const after = (await a.say(room, 'after the loss', 5000)).id;
    assert.notEqual(parseMsgId(after).epoch, epoch, `a new epoch, not ${epoch}:4 again (got ${after})`);
    const got = await b.next((m) => m.type === 'msg' && m.id === after, 5000);
    assert.equal(got.text, 'after the loss', 'the other replica delivers it: not dropped as old');
    assert.ok(reps.some((s) => s.logs.some((l) => /lost writes/.test(l.msg || ''))), 'the fence logged it');

    // a client that saw the lost ids comes back: history_gap, then the new epoch's msgs
    const c = await cs.open(reps[1].port, `/ws?room=${room}&name=c&since=${encodeURIComponent(ids[4])}`);
    const first = await c.next((m) => m.type === 'room' || m.type === 'error', 5000);
    assert.equal(first.code, 'history_gap', JSON.stringify(first));
    const snap = await c.next('room', 5000);
    assert.ok(snap.history.some((m) => m.id === after), 'the snapshot has the new epoch');
  });
});
