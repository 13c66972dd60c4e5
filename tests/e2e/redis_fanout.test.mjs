// Rooms across replicas: three chatgw processes on one real redis-server, clients spread over
// them. Every room message reaches every member exactly once and in one order; presence lists
// agree on every replica; dm and signal cross replicas; /readyz and /metrics show the bus.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  parseMsgId, scrape, metricSum, waitFor, startServer, passthroughPolicyDir, httpGet, httpRequest,
} from './lib.mjs';
import {
  redisCluster, startReplica, readyBody, apiMembers, uniqueRoom, waitMembers, redisCommand,
} from './redis_lib.mjs';

const T = { timeout: 40000 };

describe('redis: fan-out, presence, dm and signal across three replicas', () => {
  const cluster = redisCluster((redis) =>
    Promise.all(['a', 'b', 'c'].map((n) => startReplica(redis.url, `fan-${n}`, ['--api-token', 'tok3n']))));
  const { reps, cs } = cluster;

  it('/readyz shows redis up; /metrics has the chatgw_bus_* series', T, async () => {
    for (const s of reps) {
      const { status, body } = await readyBody(s.port);
      assert.equal(status, 200);
      assert.equal(body.redis, 'up');
      assert.equal(body.checks.redis, 'up');
      const { samples } = await scrape(s.port);
      assert.equal(metricSum(samples, 'chatgw_bus_up'), 1);
      for (const n of ['chatgw_bus_reconnects_total', 'chatgw_bus_published_total', 'chatgw_bus_received_total'])
        assert.ok(samples.some((x) => x.name === n), `${n} present`);
    }
  });

  it('every msg reaches every member exactly once, in one order, with the acked id', T, async () => {
    const room = uniqueRoom('fan');
    const members = [];
    for (let i = 0; i < 6; i++) {
      const c = await cs.open(reps[i % 3].port, `/ws?room=${room}&name=u${i}`);
      await c.next('room', 5000);
      members.push(c);
    }
    await waitMembers(reps, room, members.map((c) => c.id));
    for (const c of members) c.drain();

    const PER = 8;
    const acks = await Promise.all(members.map(async (c, i) => {
      const out = [];
      for (let k = 0; k < PER; k++) out.push(c.say(room, `m ${i}.${k}`, 8000));
      return Promise.all(out);
    }));
    const total = members.length * PER;
    const ackedIds = new Set(acks.flat().map((a) => a.id));
    assert.equal(ackedIds.size, total, 'every ack has its own id');

    const orders = [];
    for (const c of members) {
      const got = await c.nextN(total, (m) => m.type === 'msg' && m.room === room, 15000);
      const ids = got.map((m) => m.id);
      assert.equal(new Set(ids).size, total, 'no duplicate');
      for (const id of ids) assert.ok(ackedIds.has(id), `received id ${id} was acked to its sender`);
      const seqs = ids.map((id) => parseMsgId(id));
      for (let k = 1; k < seqs.length; k++) {
        assert.equal(seqs[k].epoch, seqs[0].epoch, 'one epoch');
        assert.ok(seqs[k].seq > seqs[k - 1].seq, `ids increase: ${ids[k - 1]} then ${ids[k]}`);
      }
      orders.push(ids.join(','));
      assert.deepEqual(await c.none((m) => m.type === 'msg' && m.room === room, 300), [], 'nothing more');
    }
    for (const o of orders) assert.equal(o, orders[0], 'every member saw the same order');

    // each sender's own msgs arrive in the order it sent them
    for (let i = 0; i < members.length; i++) {
      const mine = orders[0].split(',').filter((id) => acks[i].some((a) => a.id === id));
      assert.deepEqual(mine, acks[i].map((a) => a.id));
    }
  });

  it('presence agrees on every replica: snapshots, join and leave events, /api/rooms', T, async () => {
    const room = uniqueRoom('pres');
    const a = await cs.open(reps[0].port, `/ws?room=${room}&name=alice`);
    await a.next('room');
    const b = await cs.open(reps[1].port, `/ws?room=${room}&name=bob`);
    const snapB = await b.next('room', 5000);
    assert.deepEqual(snapB.members.map((m) => m.id).sort(), [a.id, b.id].sort(), 'b sees alice on another replica');
    const joinB = await a.next((m) => m.type === 'join' && m.member?.id === b.id, 5000, 'join of bob at alice');
    assert.equal(joinB.member.name, 'bob');

    const c = await cs.open(reps[2].port, `/ws?room=${room}&name=carol`);
    const snapC = await c.next('room', 5000);
    const names = snapC.members.map((m) => m.name).sort();
    assert.deepEqual(names, ['alice', 'bob', 'carol']);
    assert.equal(new Set(snapC.members.map((m) => m.id)).size, 3, 'no duplicates');
    await a.next((m) => m.type === 'join' && m.member?.id === c.id, 5000, 'join of carol at alice');
    await b.next((m) => m.type === 'join' && m.member?.id === c.id, 5000, 'join of carol at bob');
    await waitMembers(reps, room, [a.id, b.id, c.id]);
    const api = (await httpGet(reps[0].port, `/api/rooms/${room}`)).json();
    assert.equal(api.online, 3);

    // mute crosses replicas as a mute event
    b.send({ type: 'mute', room });
    const mute = await a.next((m) => m.type === 'mute' && m.member?.id === b.id, 5000, 'mute of bob at alice');
    assert.equal(mute.member.muted, true);

    await b.close();
    await a.next((m) => m.type === 'leave' && m.member?.id === b.id, 5000, 'leave of bob at alice');
    await c.next((m) => m.type === 'leave' && m.member?.id === b.id, 5000, 'leave of bob at carol');
    // b has no local member left, and still answers for the whole cluster
    await waitMembers(reps, room, [a.id, c.id]);
  });

  it('dm and signal cross replicas', T, async () => {
    const room = uniqueRoom('dm');
    const a = await cs.open(reps[0].port, `/ws?room=${room}&name=alice`);
    await a.next('room');
    const c = await cs.open(reps[2].port, `/ws?room=${room}&name=carol`);
    await c.next('room');
    await waitMembers([reps[0], reps[2]], room, [a.id, c.id]);

    a.send({ type: 'dm', to: c.id, text: 'psst', cid: 'd1' });
    await a.next((m) => m.type === 'ack' && m.cid === 'd1', 5000, 'dm ack');
    const dm = await c.next('dm', 5000);
    assert.equal(dm.text, 'psst');
    assert.equal(dm.from.id, a.id);
    assert.equal(dm.from.name, 'alice');

    const data = { sdp: 'v=0 offer', kind: 'offer' };
    c.send({ type: 'signal', room, to: a.id, data });
    const sig = await a.next('signal', 5000);
    assert.equal(sig.room, room);
    assert.equal(sig.from, c.id);
    assert.deepEqual(sig.data, data);

    // a made-up peer in the room is still unknown_peer
    await c.expectError({ type: 'signal', room, to: 'nobody-here', data: 1 }, 'unknown_peer');
    assert.deepEqual(await a.none('dm', 200), []);
  });

  it('POST /api/rooms/{id}/messages reaches the members on every replica', T, async () => {
    const room = uniqueRoom('api');
    const a = await cs.open(reps[0].port, `/ws?room=${room}&name=alice`);
    await a.next('room');
    const c = await cs.open(reps[2].port, `/ws?room=${room}&name=carol`);
    await c.next('room');
    await waitMembers([reps[0], reps[2]], room, [a.id, c.id]);
    const r = await httpRequest(reps[0].port, 'POST', `/api/rooms/${room}/messages`,
      { headers: { Authorization: 'Bearer tok3n', 'Content-Type': 'application/json' }, body: { text: 'notice', from: 'ops' } });
    assert.equal(r.status, 200, r.text);
    const ma = await a.next((m) => m.type === 'msg' && m.text === 'notice', 5000);
    const mc = await c.next((m) => m.type === 'msg' && m.text === 'notice', 5000);
    assert.equal(ma.id, mc.id, 'one id everywhere');
    assert.equal(mc.from.name, 'ops');
  });

  it('bus counters move: published on the sender, received on the others', T, async () => {
    await waitFor(async () => {
      for (const s of reps) {
        const { samples } = await scrape(s.port);
        if (metricSum(samples, 'chatgw_bus_published_total') < 1 || metricSum(samples, 'chatgw_bus_received_total') < 1) return false;
      }
      return true;
    }, { timeoutMs: 5000, what: 'bus counters' });
  });
});

describe('redis: a replica that drains says goodbye', () => {
  const cluster = redisCluster((redis) =>
    Promise.all(['a', 'b'].map((n) => startReplica(redis.url, `bye-${n}`))), { stop: 'SIGKILL' });
  const { reps, cs } = cluster;

  it('SIGTERM: its members leave the other replicas at once (not after the TTL); exit 0', T, async () => {
    const room = uniqueRoom('bye');
    const a = await cs.open(reps[0].port, `/ws?room=${room}&name=stay`);
    await a.next('room');
    const b = await cs.open(reps[1].port, `/ws?room=${room}&name=go`);
    await b.next('room');
    await waitMembers(reps, room, [a.id, b.id]);
    const code = await reps[1].stop('SIGTERM');
    assert.equal(code, 0);
    // the default TTL is 15 s: a leave well before that is the goodbye
    await a.next((m) => m.type === 'leave' && m.member?.id === b.id, 5000, 'leave of the drained member');
    assert.deepEqual(await apiMembers(reps[0], room), [a.id]);
    assert.equal(await redisCommand(cluster.redis.port, 'EXISTS chatgw:node:bye-b'), ':0', 'heartbeat removed');
  });
});

describe('redis: a replica without redis_url is single node', () => {
  it('/readyz has no redis field; chatgw_bus_up is 1', T, async () => {
    const srv = await startServer(['--scripts-dir', passthroughPolicyDir()]);
    try {
      const { status, body } = await readyBody(srv.port);
      assert.equal(status, 200);
      assert.equal(body.redis, undefined);
      assert.equal(body.checks.redis, undefined);
      const { samples } = await scrape(srv.port);
      assert.equal(metricSum(samples, 'chatgw_bus_up'), 1);
      assert.equal(metricSum(samples, 'chatgw_bus_published_total'), 0);
    } finally {
      await srv.stop('SIGKILL').catch(() => {});
    }
  });

  it('a bad redis_url or an unreadable password file is a one-line config error, exit 2', T, async () => {
    for (const args of [['--redis-url', 'redis://'], ['--redis-url', 'redis://127.0.0.1:1', '--redis-password-file', '/nonexistent/pw']]) {
      const srv = await startServer(args).catch((e) => e);
      assert.ok(srv instanceof Error, 'does not start');
      assert.match(srv.message, /code 2/);
      assert.match(srv.message, /config: (redis_url|redis_password_file)/);
    }
  });
});
