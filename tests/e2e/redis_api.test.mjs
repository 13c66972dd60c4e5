// The HTTP API across replicas: /api/stats, /api/rooms/{id} and the publish API answer the same
// on every replica behind a Service, including one with no local member of the room, and the
// publish API answers with the id Redis assigned.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { httpGet, httpRequest, waitFor, parseMsgId } from './lib.mjs';
import { redisCluster, startReplica, uniqueRoom, waitMembers } from './redis_lib.mjs';

const T = { timeout: 40000 };
const TOKEN = 'tok3n';

/** /api/stats of srv restricted to rooms, as a comparable string. */
async function statsOf(srv, rooms) {
  const r = await httpGet(srv.port, '/api/stats');
  assert.equal(r.status, 200, r.text);
  const body = r.json();
  const mine = body.rooms.filter((x) => rooms.includes(x.name)).map((x) => `${x.name}=${x.online}`).sort();
  return { online: body.online, rooms: mine.join(',') };
}

function publish(srv, room, text) {
  return httpRequest(srv.port, 'POST', `/api/rooms/${encodeURIComponent(room)}/messages`,
    { headers: { Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'application/json' }, body: { text, from: 'ops' } });
}

describe('redis: the HTTP API answers the same on every replica', () => {
  const cluster = redisCluster((redis) =>
    Promise.all(['a', 'b', 'c'].map((n) => startReplica(redis.url, `api-${n}`, ['--api-token', TOKEN]))));
  const { reps, cs } = cluster;

  it('/api/stats counts every replica\'s clients and members', T, async () => {
    const [a, b, c] = reps;
    const r1 = uniqueRoom('st1');
    const r2 = uniqueRoom('st2');
    const a1 = await cs.open(a.port, `/ws?room=${r1}&name=a1`);
    const a2 = await cs.open(a.port, `/ws?room=${r1}&name=a2`);
    const c1 = await cs.open(c.port, `/ws?room=${r1}&name=c1`);
    const c2 = await cs.open(c.port, `/ws?room=${r2}&name=c2`);
    for (const x of [a1, a2, c1, c2]) await x.next('room', 5000);
    const want = { online: 4, rooms: [`${r1}=3`, `${r2}=1`].sort().join(',') };
    for (const s of reps) {
      await waitFor(async () => JSON.stringify(await statsOf(s, [r1, r2])) === JSON.stringify(want),
        { timeoutMs: 5000, intervalMs: 100, what: `${s.nodeId} /api/stats = ${JSON.stringify(want)}` });
    }
    await c2.close();
    await a2.close();
    const after = { online: 2, rooms: `${r1}=2` };
    for (const s of [b, a, c]) {
      await waitFor(async () => JSON.stringify(await statsOf(s, [r1, r2])) === JSON.stringify(after),
        { timeoutMs: 5000, intervalMs: 100, what: `${s.nodeId} /api/stats after leaving` });
    }
  });

  it('/api/rooms/{id} lists every member on a replica without a local one; 404 for none', T, async () => {
    const [a, b, c] = reps;
    const room = uniqueRoom('rm');
    const x = await cs.open(a.port, `/ws?room=${room}&name=xena`);
    await x.next('room', 5000);
    const y = await cs.open(c.port, `/ws?room=${room}&name=yuri`);
    await y.next('room', 5000);
    await waitMembers(reps, room, [x.id, y.id]);
    const r = await httpGet(b.port, `/api/rooms/${room}`);
    assert.equal(r.status, 200);
    const body = r.json();
    assert.equal(body.name, room);
    assert.equal(body.online, 2);
    assert.deepEqual(body.members.map((m) => m.name).sort(), ['xena', 'yuri']);
    // the replica holding a member lists it first
    assert.equal((await httpGet(c.port, `/api/rooms/${room}`)).json().members[0].name, 'yuri');
    for (const s of reps) {
      const none = await httpGet(s.port, `/api/rooms/${uniqueRoom('nobody')}`);
      assert.equal(none.status, 404);
      assert.equal(none.json().error, 'not_found');
    }
  });

  it('the publish API answers with Redis\'s id, from any replica; 404 for an empty room', T, async () => {
    const [a, b, c] = reps;
    const room = uniqueRoom('pub');
    const x = await cs.open(a.port, `/ws?room=${room}&name=xena`);
    await x.next('room', 5000);
    const y = await cs.open(c.port, `/ws?room=${room}&name=yuri`);
    await y.next('room', 5000);
    await waitMembers(reps, room, [x.id, y.id]);
    const ids = [];
    for (const s of [b, a, c]) {          // b holds no member of the room
      const r = await publish(s, room, `from ${s.nodeId}`);
      assert.equal(r.status, 200, r.text);
      const { id } = JSON.parse(r.text);
      parseMsgId(id);
      const mx = await x.next((m) => m.type === 'msg' && m.text === `from ${s.nodeId}`, 5000);
      const my = await y.next((m) => m.type === 'msg' && m.text === `from ${s.nodeId}`, 5000);
      assert.equal(mx.id, id, 'the answer carries the id the members got');
      assert.equal(my.id, id);
      ids.push(parseMsgId(id));
    }
    assert.equal(new Set(ids.map((i) => i.epoch)).size, 1, 'one epoch: Redis numbered them all');
    assert.deepEqual(ids.map((i) => i.seq), [ids[0].seq, ids[0].seq + 1, ids[0].seq + 2]);
    for (const s of reps) {
      const r = await publish(s, uniqueRoom('nobody'), 'hello?');
      assert.equal(r.status, 404, r.text);
    }
  });

  it('pipelined requests are answered in order while one waits for Redis', T, async () => {
    const [, b] = reps;
    const room = uniqueRoom('pipe');
    const x = await cs.open(reps[0].port, `/ws?room=${room}&name=xena`);
    await x.next('room', 5000);
    await waitMembers(reps, room, [x.id]);
    const { httpRaw } = await import('./lib.mjs');
    const req = (p) => `GET ${p} HTTP/1.1\r\nHost: x\r\n\r\n`;
    const raw = await httpRaw(b.port, req(`/api/rooms/${room}`) + req('/healthz') + req('/api/stats') +
      `GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    const text = raw.toString();
    const statuses = [...text.matchAll(/HTTP\/1\.1 (\d+)/g)].map((m) => m[1]);
    assert.deepEqual(statuses, ['200', '200', '200', '200']);
    const bodies = text.split('HTTP/1.1 ').slice(1);
    assert.match(bodies[0], /"members":\[\{"id":"[^"]+","name":"xena"/);
    assert.match(bodies[1], /"status":"ok"/);
    assert.match(bodies[2], /"online":/);
  });
});

describe('redis: max_room_members holds across replicas', () => {
  const cluster = redisCluster((redis) =>
    Promise.all(['a', 'b', 'c'].map((n) => startReplica(redis.url, `cap-${n}`, ['--max-room-members', '3']))));
  const { reps, cs } = cluster;

  it('six joiners racing on three replicas: exactly three get in, the rest get room_full', T, async () => {
    const room = uniqueRoom('cap');
    const clients = await Promise.all([0, 1, 2, 3, 4, 5].map((i) => cs.open(reps[i % 3].port, `/ws?name=j${i}`)));
    for (const c of clients) c.send({ type: 'join', room });
    const outcomes = await Promise.all(clients.map((c) =>
      c.next((m) => (m.type === 'room' && m.room === room) || (m.type === 'error' && m.ref === room), 8000, 'room or room_full')));
    const inside = clients.filter((c, i) => outcomes[i].type === 'room');
    const refused = outcomes.filter((o) => o.type === 'error');
    assert.equal(inside.length, 3, `three admitted: ${JSON.stringify(outcomes.map((o) => o.type))}`);
    for (const e of refused) assert.equal(e.code, 'room_full');
    await waitMembers(reps, room, inside.map((c) => c.id));
    // the admitted see each other's joins, never a refused one
    const refusedIds = new Set(clients.filter((c) => !inside.includes(c)).map((c) => c.id));
    for (const c of inside) {
      assert.deepEqual(await c.none((m) => (m.type === 'join' || m.type === 'leave') && refusedIds.has(m.member?.id), 300), []);
    }
    // a place frees: the next joiner, on any replica, gets it
    await inside[0].close();
    await waitMembers(reps, room, inside.slice(1).map((c) => c.id));
    const late = await cs.open(reps[1].port, `/ws?room=${room}&name=late`);
    await late.next('room', 5000);
    const over = await cs.open(reps[2].port, `/ws?room=${room}&name=over`);
    const e = await over.next((m) => m.type === 'error', 5000, 'room_full');
    assert.equal(e.code, 'room_full');
  });
});

describe('redis: a dm to an id no replica holds gets unknown_peer', () => {
  const cluster = redisCluster((redis) =>
    Promise.all(['a', 'b'].map((n) => startReplica(redis.url, `dm-${n}`))));
  const { reps, cs } = cluster;

  it('held elsewhere: acked and delivered; held nowhere (never, or gone): unknown_peer', T, async () => {
    const [a, b] = reps;
    const x = await cs.open(a.port, '/ws?name=xena');
    const y = await cs.open(b.port, '/ws?name=yuri');       // in no room: a dm target all the same
    x.send({ type: 'dm', to: y.id, text: 'hi', cid: 'k1' });
    await x.next((m) => m.type === 'ack' && m.cid === 'k1', 5000, 'dm ack');
    assert.equal((await y.next('dm', 5000)).text, 'hi');

    const e1 = await x.expectError({ type: 'dm', to: 'NoSuchConnection', text: 'hello?', cid: 'k2' }, 'unknown_peer', 5000);
    assert.equal(e1.ref, 'k2');

    const gone = y.id;
    await y.close();
    await waitFor(async () => {
      x.send({ type: 'dm', to: gone, text: 'still there?', cid: 'k3' });
      const m = await x.next((f) => f.cid === 'k3' || f.ref === 'k3', 5000, 'k3 answer');
      return m.type === 'error' && m.code === 'unknown_peer';
    }, { timeoutMs: 5000, intervalMs: 50, what: 'dm to a closed connection is unknown_peer' });
  });
});
