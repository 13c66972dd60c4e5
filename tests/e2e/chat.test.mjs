// Chat protocol v1 end to end: rooms, presence, identity, dm/signal routing, recovery and
// history, protocol errors (each answered with an error frame on a connection that stays open),
// and the chat metrics. Real `ws` clients against the real binary on loopback.
//
// Every server here runs a pass-through policy (`return {}`) so that what is tested is the
// gateway's own protocol, not the default policy's moderation.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, clientPool, passthroughPolicyDir, parseMsgId, scrape, metricSum, waitFor, sleep, httpGet,
} from './lib.mjs';

const T = { timeout: 30000 };
const FAST = ['--rate-msgs-per-sec', '100000', '--rate-burst', '100000'];

let policyDir;
const serverWith = (args = []) => startServer(['--scripts-dir', policyDir, ...args]);

let roomSeq = 0;
const uniqueRoom = (prefix = 'room') => `${prefix}-${process.pid}-${++roomSeq}`;

const memberIds = (snap) => snap.members.map((m) => m.id).sort();

let okSeq = 0;
/** Proves the connection is still open and served: a msg in room gets its ack and its echo. */
async function provesOpen(c, room, label) {
  assert.ok(c.isOpen, `${label}: connection still open`);
  const text = `ok ${++okSeq}`;            // short: some servers run with a tiny max_text_bytes
  const { id } = await c.say(room, text).catch((e) => { throw new Error(`after ${label}: ${e.message}`); });
  const echo = await c.next((m) => m.type === 'msg' && m.id === id, 3000, `echo after ${label}`);
  assert.equal(echo.text, text);
}

before(() => { policyDir = passthroughPolicyDir(); });

// -----------------------------------------------------------------------------------------------

describe('chat: identity, rooms and fan-out', () => {
  let srv;
  const cs = clientPool();
  before(async () => { srv = await serverWith([...FAST, '--history-size', '50']); });
  after(async () => { await cs.closeAll(); if (srv) await srv.stop('SIGKILL').catch(() => {}); });

  it('welcome gives an unguessable id and the name from ?name=, or a random default', T, async () => {
    const a = await cs.open(srv.port, '/ws?name=alice');
    assert.equal(a.welcome.type, 'welcome');
    assert.equal(a.welcome.name, 'alice');
    assert.equal(typeof a.welcome.server, 'string');
    // policy: the version (sha256) of the policy serving, as /readyz shows it
    assert.match(String(a.welcome.policy), /^[0-9a-f]{64}$/, `welcome.policy is a sha256: ${a.welcome.policy}`);
    const ready = (await httpGet(srv.port, '/readyz')).json();
    if (ready.policy?.version) assert.equal(a.welcome.policy, ready.policy.version, 'welcome.policy = /readyz policy.version');
    const ids = new Set([a.id]);
    const names = [];
    for (let i = 0; i < 6; i++) {
      const c = await cs.open(srv.port, '/ws');
      assert.equal(typeof c.name, 'string');
      assert.ok(c.name.trim().length >= 1, `default name is not empty: ${JSON.stringify(c.name)}`);
      assert.ok([...c.name].length <= 32, `default name within 32 code points: ${c.name}`);
      names.push(c.name);
      ids.add(c.id);
    }
    assert.equal(ids.size, 7, 'every connection gets its own id');
    for (const id of ids) {
      // at least 96 bits of randomness: 16 base64url characters (or 24 hex, or longer)
      assert.match(id, /^[A-Za-z0-9_-]{16,}$/, `id ${id} is long and url-safe`);
      assert.ok(!/^\d+$/.test(id), `id ${id} is not a counter`);
    }
    assert.ok(new Set(names).size >= 2, `random default names vary: ${names.join(', ')}`);
  });

  it('the subprotocol chatgw.v1 is negotiated when offered', T, async () => {
    const c = await cs.open(srv.port, '/ws?name=proto', { protocols: ['chatgw.v1'] });
    assert.equal(c.ws.protocol, 'chatgw.v1');
    const d = await cs.open(srv.port, '/ws?name=noproto');
    assert.equal(d.ws.protocol, '', 'none when not offered');
  });

  it('join.name names the connection (seen in the snapshot and in msg.from)', T, async () => {
    const room = uniqueRoom('named');
    const c = await cs.open(srv.port, '/ws');
    const snap = await c.join(room, { name: 'bob the builder' });
    const me = snap.members.find((m) => m.id === c.id);
    assert.ok(me, 'the joiner is in its own snapshot');
    assert.equal(me.name, 'bob the builder');
    const { id } = await c.say(room, 'hi');
    const echo = await c.next((m) => m.type === 'msg' && m.id === id);
    assert.deepEqual(echo.from, { id: c.id, name: 'bob the builder' });
    // 32 code points (64 bytes of UTF-8) is still a valid name
    const long = 'é'.repeat(32);
    const snap2 = await c.join(uniqueRoom('named'), { name: long });
    assert.equal(snap2.members.find((m) => m.id === c.id).name, long);
  });

  it('invalid names (control characters, too long) get bad_field and the connection stays open', T, async () => {
    const room = uniqueRoom('badname');
    const c = await cs.open(srv.port, `/ws?room=${room}&name=carol`);
    await c.next('room');
    for (const name of ['bad\u0001name', 'tab\there', 'nl\nname', 'del\u007f', 'x'.repeat(33), 'é'.repeat(33), '', 42]) {
      const e = await c.expectError({ type: 'join', room: uniqueRoom('badname'), name }, 'bad_field');
      assert.equal(typeof e.message, 'string');
      await provesOpen(c, room, `bad name ${JSON.stringify(name)}`);
    }
    // the refused names did not stick
    const snap = await c.join(room);
    assert.equal(snap.members.find((m) => m.id === c.id).name, 'carol');
    // the same names in the URL: refused before the upgrade (400) or answered with bad_field
    for (const bad of ['bad%01name', 'x'.repeat(33)]) {
      let refused = null;
      let d = null;
      try {
        d = await cs.open(srv.port, `/ws?name=${bad}`);
      } catch (e) {
        refused = e.statusCode;
      }
      if (refused !== null) {
        assert.equal(refused, 400, `?name=${bad} refused with 400`);
      } else {
        assert.notEqual(d.name, decodeURIComponent(bad), 'an invalid URL name is not taken as is');
        const e = await d.next('error');
        assert.equal(e.code, 'bad_field');
      }
    }
  });

  it('three clients see every message in the same order; ids are epoch:seq; the sender gets ack {cid,id}', T, async () => {
    const room = uniqueRoom('trio');
    const a = await cs.open(srv.port, `/ws?room=${room}&name=a`);
    const b = await cs.open(srv.port, `/ws?room=${room}&name=b`);
    const c = await cs.open(srv.port, `/ws?room=${room}&name=c`);
    for (const x of [a, b, c]) await x.next('room');
    const all = [a, b, c];
    const N = 8;
    const t0 = Date.now();
    const sent = {};
    // all three send at once, interleaved
    const acks = await Promise.all(all.map(async (x, k) => {
      const out = [];
      for (let i = 0; i < N; i++) {
        const text = `from ${x.name} #${i}`;
        const cid = `cid-${x.name}-${i}`;
        x.send({ type: 'msg', room, text, cid });
        out.push({ cid, text });
      }
      const got = [];
      for (const o of out) {
        const ack = await x.next((m) => m.type === 'ack' && m.cid === o.cid, 5000, `ack ${o.cid}`);
        got.push({ ...o, id: ack.id, from: x.id });
      }
      sent[k] = got;
      return got;
    }));
    const seqs = all.map(() => []);
    for (const [k, x] of all.entries()) {
      const msgs = await x.nextN(3 * N, (m) => m.type === 'msg' && m.room === room, 5000);
      seqs[k] = msgs;
    }
    const t1 = Date.now();
    // same order everywhere
    const order = seqs[0].map((m) => m.id);
    assert.deepEqual(seqs[1].map((m) => m.id), order, 'b saw the same order as a');
    assert.deepEqual(seqs[2].map((m) => m.id), order, 'c saw the same order as a');
    // ids: one epoch, strictly increasing sequence, unique
    const parsed = order.map(parseMsgId);
    assert.equal(new Set(parsed.map((p) => p.epoch)).size, 1, 'one epoch per room');
    for (let i = 1; i < parsed.length; i++) assert.ok(parsed[i].seq > parsed[i - 1].seq, `seq increases at ${i}: ${order}`);
    // every message exactly once, with its sender, text, ts; each ack id names the echoed message
    const byId = new Map(seqs[0].map((m) => [m.id, m]));
    assert.equal(byId.size, 3 * N);
    for (const got of acks) {
      let last = 0;
      for (const s of got) {
        const m = byId.get(s.id);
        assert.ok(m, `ack id ${s.id} names a delivered message`);
        assert.equal(m.text, s.text);
        assert.equal(m.from.id, s.from);
        assert.equal(typeof m.from.name, 'string');
        assert.equal(typeof m.ts, 'number');
        assert.ok(m.ts >= t0 - 5000 && m.ts <= t1 + 5000, `ts ${m.ts} is wall-clock milliseconds`);
        const seq = parseMsgId(s.id).seq;
        assert.ok(seq > last, 'one sender\'s messages keep their order');
        last = seq;
      }
    }
    // nothing extra
    for (const x of all) assert.deepEqual(await x.none((m) => m.type === 'msg', 200), []);
  });

  it('one connection in several rooms: URL room plus join messages; fan-out stays per room', T, async () => {
    const [r1, r2, r3] = [uniqueRoom('multi'), uniqueRoom('multi'), uniqueRoom('multi')];
    const x = await cs.open(srv.port, `/ws?room=${r1}&name=x`);
    assert.equal((await x.next('room')).room, r1);
    await x.join(r2);
    await x.join(r3);
    const y2 = await cs.open(srv.port, `/ws?room=${r2}&name=y2`);
    const y3 = await cs.open(srv.port, `/${r3}?name=y3`);
    await y2.next('room');
    await y3.next('room');
    await y2.say(r2, 'in r2');
    await y3.say(r3, 'in r3');
    const m2 = await x.next((m) => m.type === 'msg' && m.text === 'in r2');
    const m3 = await x.next((m) => m.type === 'msg' && m.text === 'in r3');
    assert.equal(m2.room, r2);
    assert.equal(m3.room, r3);
    await x.say(r1, 'in r1');
    await x.next((m) => m.type === 'msg' && m.text === 'in r1');
    assert.deepEqual(await y2.none((m) => m.type === 'msg' && m.room !== r2, 200), [], 'y2 sees only r2');
    assert.deepEqual(await y3.none((m) => m.type === 'msg' && m.room !== r3, 50), [], 'y3 sees only r3');
    // x's own messages in different rooms get ids from different rooms' sequences
    const a2 = await x.say(r2, 'x in r2');
    const a3 = await x.say(r3, 'x in r3');
    assert.notEqual(parseMsgId(a2.id).epoch, parseMsgId(a3.id).epoch, 'each room has its own epoch');
    assert.equal((await y2.next((m) => m.type === 'msg' && m.text === 'x in r2')).room, r2);
    assert.equal((await y3.next((m) => m.type === 'msg' && m.text === 'x in r3')).room, r3);
  });
});

// -----------------------------------------------------------------------------------------------

describe('chat: presence', () => {
  let srv;
  const cs = clientPool();
  before(async () => { srv = await serverWith([...FAST, '--history-size', '50']); });
  after(async () => { await cs.closeAll(); if (srv) await srv.stop('SIGKILL').catch(() => {}); });

  it('join via /ws?room=, via /ROOM and via join; join/leave/mute/unmute reach the others; snapshot has mute state and history', T, async () => {
    const room = uniqueRoom('presence');
    // a: /ws?room=R
    const a = await cs.open(srv.port, `/ws?room=${room}&name=ann`);
    const snapA = await a.next('room');
    assert.equal(snapA.room, room);
    assert.deepEqual(snapA.members, [{ id: a.id, name: 'ann', muted: false }]);
    assert.deepEqual(snapA.history, []);

    // b: upgrade at /R
    const b = await cs.open(srv.port, `/${room}?name=ben`);
    const snapB = await b.next('room');
    assert.equal(snapB.room, room);
    assert.deepEqual(memberIds(snapB), [a.id, b.id].sort());
    const jb = await a.next((m) => m.type === 'join' && m.room === room);
    assert.deepEqual(jb.member, { id: b.id, name: 'ben', muted: false });

    // a mutes: b hears it
    a.send({ type: 'mute', room });
    const mu = await b.next((m) => m.type === 'mute' && m.room === room);
    assert.deepEqual(mu.member, { id: a.id, name: 'ann', muted: true });

    // some history, then c joins with a join message and sees mute state and history
    await a.say(room, 'h1');
    await b.say(room, 'h2');
    const c = await cs.open(srv.port, '/ws?name=cat');
    const snapC = await c.join(room);
    assert.deepEqual(memberIds(snapC), [a.id, b.id, c.id].sort());
    const byId = Object.fromEntries(snapC.members.map((m) => [m.id, m]));
    assert.equal(byId[a.id].muted, true, 'snapshot shows a muted');
    assert.equal(byId[b.id].muted, false);
    assert.equal(byId[c.id].muted, false);
    assert.equal(byId[b.id].name, 'ben');
    assert.deepEqual(snapC.history.map((m) => m.text), ['h1', 'h2'], 'snapshot carries recent history');
    for (const h of snapC.history) {
      assert.equal(h.type, 'msg');
      assert.equal(h.room, room);
      parseMsgId(h.id);
      assert.equal(typeof h.ts, 'number');
    }
    for (const x of [a, b]) {
      const j = await x.next((m) => m.type === 'join' && m.room === room && m.member.id === c.id);
      assert.deepEqual(j.member, { id: c.id, name: 'cat', muted: false });
    }
    assert.deepEqual(await c.none((m) => m.type === 'join' && m.member?.id === c.id, 100), [],
      'the joiner gets the snapshot, not its own join event');

    // unmute reaches both others
    a.send({ type: 'unmute', room });
    for (const x of [b, c]) {
      const u = await x.next((m) => m.type === 'unmute' && m.room === room);
      assert.deepEqual(u.member, { id: a.id, name: 'ann', muted: false });
    }

    // b leaves with a leave message
    b.send({ type: 'leave', room });
    for (const x of [a, c]) {
      const l = await x.next((m) => m.type === 'leave' && m.room === room);
      assert.equal(l.member.id, b.id);
      assert.equal(l.member.name, 'ben');
    }
    // b is out: its msg is not_in_room, and it no longer gets room traffic
    await b.expectError({ type: 'msg', room, text: 'ghost', cid: 'g1' }, 'not_in_room');
    await a.say(room, 'after b left');
    await c.next((m) => m.type === 'msg' && m.text === 'after b left');
    assert.deepEqual(await b.none((m) => m.type === 'msg' && m.text === 'after b left', 200), []);

    // c disconnects: a sees it leave
    await c.close();
    const lc = await a.next((m) => m.type === 'leave' && m.room === room);
    assert.equal(lc.member.id, c.id);
  });

  it('a mute does not travel to other rooms', T, async () => {
    const [r1, r2] = [uniqueRoom('m1'), uniqueRoom('m2')];
    const a = await cs.open(srv.port, `/ws?room=${r1}`);
    await a.next('room');
    await a.join(r2);
    const b1 = await cs.open(srv.port, `/ws?room=${r1}`);
    const b2 = await cs.open(srv.port, `/ws?room=${r2}`);
    await b1.next('room');
    await b2.next('room');
    a.send({ type: 'mute', room: r1 });
    await b1.next((m) => m.type === 'mute' && m.member.id === a.id);
    assert.deepEqual(await b2.none((m) => m.type === 'mute', 200), []);
    const s = await cs.open(srv.port, '/ws');
    const snap2 = await s.join(r2);
    assert.equal(snap2.members.find((m) => m.id === a.id).muted, false, 'a is not muted in r2');
  });
});

// -----------------------------------------------------------------------------------------------

describe('chat: dm and signal', () => {
  let srv;
  const cs = clientPool();
  before(async () => { srv = await serverWith(FAST); });
  after(async () => { await cs.closeAll(); if (srv) await srv.stop('SIGKILL').catch(() => {}); });

  it('dm reaches exactly its target; an unknown target gets unknown_peer', T, async () => {
    const room = uniqueRoom('dm');
    const a = await cs.open(srv.port, `/ws?room=${room}&name=amy`);
    const b = await cs.open(srv.port, `/ws?name=bo`);           // not in any room: dm needs none
    const c = await cs.open(srv.port, `/ws?room=${room}&name=cy`);
    await a.next('room');
    await c.next('room');
    const t0 = Date.now();
    a.send({ type: 'dm', to: b.id, text: 'psst' });
    const d = await b.next('dm');
    assert.deepEqual(d.from, { id: a.id, name: 'amy' });
    assert.equal(d.text, 'psst');
    assert.equal(typeof d.ts, 'number');
    assert.ok(d.ts >= t0 - 5000 && d.ts <= Date.now() + 5000);
    assert.deepEqual(await c.none('dm', 200), [], 'a bystander in the same room gets nothing');
    assert.deepEqual(await a.none('dm', 0), [], 'the sender gets no copy');

    const e = await a.expectError({ type: 'dm', to: 'AAAAAAAAAAAAAAAA', text: 'anyone?' }, 'unknown_peer');
    assert.equal(typeof e.message, 'string');
    await provesOpen(a, room, 'unknown_peer dm');
  });

  it('signal reaches exactly one member of the same room and nobody else', T, async () => {
    const room = uniqueRoom('voice');
    const other = uniqueRoom('elsewhere');
    const a = await cs.open(srv.port, `/ws?room=${room}`);
    const b = await cs.open(srv.port, `/ws?room=${room}`);
    const c = await cs.open(srv.port, `/ws?room=${room}`);
    const d = await cs.open(srv.port, `/ws?room=${other}`);
    for (const x of [a, b, c, d]) await x.next('room');
    const data = { sdp: 'v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n', type: 'offer', nested: { n: [1, 2, 3] } };
    a.send({ type: 'signal', room, to: b.id, data });
    const s = await b.next('signal');
    assert.equal(s.room, room);
    assert.equal(s.from, a.id);
    assert.deepEqual(s.data, data);
    assert.deepEqual(await c.none('signal', 200), [], 'c (same room) gets nothing');
    assert.deepEqual(await d.none('signal', 0), [], 'd (other room) gets nothing');
    assert.deepEqual(await a.none('signal', 0), [], 'the sender gets no copy');

    // the answer goes back the other way
    b.send({ type: 'signal', room, to: a.id, data: { type: 'answer' } });
    assert.deepEqual((await a.next('signal')).data, { type: 'answer' });

    // a connection that exists but is not in the room, and one that does not exist
    await a.expectError({ type: 'signal', room, to: d.id, data: {} }, 'unknown_peer');
    await provesOpen(a, room, 'signal to a non-member');
    assert.deepEqual(await d.none('signal', 100), []);
    await a.expectError({ type: 'signal', room, to: 'nope-nope-nope-nope', data: {} }, 'unknown_peer');
    await provesOpen(a, room, 'signal to an unknown id');
    // a signal into a room the sender is not in
    await d.expectError({ type: 'signal', room, to: a.id, data: {} }, 'not_in_room');
    await provesOpen(d, other, 'signal from outside the room');
  });
});

// -----------------------------------------------------------------------------------------------

describe('chat: recovery and history', () => {
  let srv;
  const cs = clientPool();
  before(async () => { srv = await serverWith([...FAST, '--history-size', '50']); });
  after(async () => { await cs.closeAll(); if (srv) await srv.stop('SIGKILL').catch(() => {}); });

  /** A room with two stayers; c saw msg "before"; returns what c last saw. */
  async function setup(room) {
    const a = await cs.open(srv.port, `/ws?room=${room}&name=a`);
    const b = await cs.open(srv.port, `/ws?room=${room}&name=b`);
    const c = await cs.open(srv.port, `/ws?room=${room}&name=c`);
    for (const x of [a, b, c]) await x.next('room');
    await a.say(room, 'before');
    const last = await c.next((m) => m.type === 'msg' && m.text === 'before');
    await c.close();
    await a.next((m) => m.type === 'leave' && m.member.id === c.id);
    const missed = [];
    for (let i = 1; i <= 5; i++) missed.push((await b.say(room, `missed ${i}`)).id);
    return { a, b, lastId: last.id, missed };
  }

  it('a client that reconnects with join {room, since} gets exactly the 5 it missed, in order', T, async () => {
    const room = uniqueRoom('recover');
    const { a, lastId, missed } = await setup(room);
    const c2 = await cs.open(srv.port, '/ws?name=c');
    const snap = await c2.join(room, { since: lastId });
    assert.deepEqual(snap.history.map((m) => m.id), missed, 'exactly the missed ids, in order');
    assert.deepEqual(snap.history.map((m) => m.text), ['missed 1', 'missed 2', 'missed 3', 'missed 4', 'missed 5']);
    assert.deepEqual(await c2.none((m) => m.type === 'msg' || m.type === 'error' || m.type === 'history', 300), [],
      'no duplicates and no gap error after the snapshot');
    // live traffic resumes after the recovered history
    const { id } = await a.say(room, 'live');
    const live = await c2.next('msg');
    assert.equal(live.id, id);
    assert.ok(parseMsgId(live.id).seq > parseMsgId(missed[4]).seq);
  });

  it('recovery with ?since= in the URL', T, async () => {
    const room = uniqueRoom('recover-url');
    const { lastId, missed } = await setup(room);
    const c2 = await cs.open(srv.port, `/ws?room=${room}&name=c&since=${encodeURIComponent(lastId)}`);
    const snap = await c2.next('room');
    assert.deepEqual(snap.history.map((m) => m.id), missed);
    assert.deepEqual(await c2.none((m) => m.type === 'msg' || m.type === 'error', 200), []);
  });

  it('history {room, since} answers exactly the messages after since; without since, all kept', T, async () => {
    const room = uniqueRoom('hist');
    const { a, lastId, missed } = await setup(room);
    a.drain();
    a.send({ type: 'history', room, since: lastId });
    const h = await a.next('history');
    assert.equal(h.room, room);
    assert.deepEqual(h.messages.map((m) => m.id), missed);
    assert.ok(h.messages.every((m) => m.type === 'msg' && m.room === room));

    a.send({ type: 'history', room, since: missed[4] });
    assert.deepEqual((await a.next('history')).messages, [], 'nothing after the newest id');

    a.send({ type: 'history', room });
    const all = await a.next('history');
    assert.deepEqual(all.messages.map((m) => m.text), ['before', 'missed 1', 'missed 2', 'missed 3', 'missed 4', 'missed 5']);

    // history of a room one is not in
    const other = uniqueRoom('hist-other');
    await a.expectError({ type: 'history', room: other }, 'not_in_room');
    await provesOpen(a, room, 'history of a foreign room');
  });
});

describe('chat: history_gap', () => {
  let srv;
  const cs = clientPool();
  before(async () => { srv = await serverWith([...FAST, '--history-size', '3']); });
  after(async () => { await cs.closeAll(); if (srv) await srv.stop('SIGKILL').catch(() => {}); });

  it('since older than the ring: history_gap, then the snapshot with what is kept', T, async () => {
    const room = uniqueRoom('gap');
    const a = await cs.open(srv.port, `/ws?room=${room}`);
    await a.next('room');
    const first = await a.say(room, 'm0');
    const ids = [];
    for (let i = 1; i <= 6; i++) ids.push((await a.say(room, `m${i}`)).id);
    const c = await cs.open(srv.port, '/ws');
    c.send({ type: 'join', room, since: first.id });
    const gap = await c.next('error');
    assert.equal(gap.code, 'history_gap');
    const snap = await c.next('room');
    assert.deepEqual(snap.history.map((m) => m.id), ids.slice(-3), 'the snapshot carries the 3 kept');
    assert.deepEqual(memberIds(snap), [a.id, c.id].sort(), 'the join itself succeeded');
    await provesOpen(c, room, 'history_gap on join');

    // history request with the same stale id
    c.drain();
    await c.expectError({ type: 'history', room, since: first.id }, 'history_gap');
    await provesOpen(c, room, 'history_gap on history');

    // since = the id just before the oldest kept one is not a gap: all 3 after it are kept
    const marker = await a.say(room, 'marker');
    const ids2 = [];
    for (let i = 0; i < 3; i++) ids2.push((await a.say(room, `n${i}`)).id);
    c.drain();
    c.send({ type: 'history', room, since: marker.id });
    assert.deepEqual((await c.next('history')).messages.map((m) => m.id), ids2, 'since = the id just before the ring is not a gap');
  });

  it('a history request with a stale since gets history_gap followed by what is kept', T, async () => {
    // README, Recovery: "the answer is an error with code history_gap, followed by what is kept"
    const room = uniqueRoom('gap-hist');
    const a = await cs.open(srv.port, `/ws?room=${room}`);
    await a.next('room');
    const first = await a.say(room, 'm0');
    const ids = [];
    for (let i = 1; i <= 5; i++) ids.push((await a.say(room, `m${i}`)).id);
    a.drain();
    a.send({ type: 'history', room, since: first.id });
    const gap = await a.next((m) => m.type === 'error' || m.type === 'history');
    assert.equal(gap.type, 'error');
    assert.equal(gap.code, 'history_gap');
    const h = await a.next('history', 3000, 'the history of what is kept, after history_gap');
    assert.equal(h.room, room);
    assert.deepEqual(h.messages.map((m) => m.id), ids.slice(-3));
  });

  it('since from another epoch (room emptied and recreated, or a made-up epoch) is history_gap', T, async () => {
    const room = uniqueRoom('epoch');
    const a = await cs.open(srv.port, `/ws?room=${room}`);
    await a.next('room');
    const old = await a.say(room, 'old life');
    await a.close();
    // the room is gone; wait for that (bounded) through a fresh client's snapshot
    const b = await cs.open(srv.port, '/ws');
    await waitFor(async () => {
      const snap = await b.join(room);
      if (snap.members.length === 1) return true;
      b.send({ type: 'leave', room });
      await sleep(50);
      return false;
    }, { timeoutMs: 5000, what: 'the emptied room to be recreated' });
    const fresh = await b.say(room, 'new life');
    assert.notEqual(parseMsgId(fresh.id).epoch, parseMsgId(old.id).epoch, 'a recreated room has a new epoch');
    const c = await cs.open(srv.port, '/ws');
    c.send({ type: 'join', room, since: old.id });
    assert.equal((await c.next('error')).code, 'history_gap');
    const snap = await c.next('room');
    assert.deepEqual(snap.history.map((m) => m.text), ['new life']);
    await c.expectError({ type: 'history', room, since: `ffffffffffff:${parseMsgId(fresh.id).seq}` }, 'history_gap');
    await provesOpen(c, room, 'history_gap for another epoch');
  });
});

// -----------------------------------------------------------------------------------------------

describe('chat: protocol errors keep the connection open', () => {
  let srv;
  const cs = clientPool();
  before(async () => {
    srv = await serverWith([...FAST, '--max-room-members', '2', '--max-rooms-per-conn', '2', '--max-text-bytes', '64']);
  });
  after(async () => { await cs.closeAll(); if (srv) await srv.stop('SIGKILL').catch(() => {}); });

  it('bad_json, bad_type, bad_field, too_large, not_in_room, unknown_peer: error frame, then service as usual', T, async () => {
    const room = uniqueRoom('errs');
    const a = await cs.open(srv.port, `/ws?room=${room}`);
    await a.next('room');
    const cases = [
      ['bad_json', '{"type":"msg","room":'],
      ['bad_json', 'not json at all'],
      ['bad_json', '[1,2,3]'],
      ['bad_type', { type: 'zz_no_such_type', room }],
      ['bad_type', { room, text: 'no type' }],
      ['bad_field', { type: 'msg', room, text: 42 }],
      ['bad_field', { type: 'msg', room: 'has space', text: 'x' }],
      ['bad_field', { type: 'join', room: '' }],
      ['too_large', { type: 'msg', room, text: 'x'.repeat(65), cid: 'big' }],
      ['too_large', { type: 'dm', to: a.id, text: 'é'.repeat(33) }],
      ['not_in_room', { type: 'msg', room: uniqueRoom('elsewhere'), text: 'hi', cid: 'nir-1' }],
      ['not_in_room', { type: 'mute', room: uniqueRoom('elsewhere') }],
      ['not_in_room', { type: 'leave', room: uniqueRoom('elsewhere') }],
      ['unknown_peer', { type: 'dm', to: 'Zz0Zz0Zz0Zz0Zz0Z', text: 'hello?' }],
    ];
    for (const [code, payload] of cases) {
      const e = await a.expectError(payload, code).catch((err) => {
        throw new Error(`${JSON.stringify(payload).slice(0, 80)}: ${err.message}`);
      });
      assert.equal(typeof e.message, 'string', `${code} carries a message`);
      await provesOpen(a, room, `${code} for ${JSON.stringify(payload).slice(0, 40)}`);
    }
    // exactly at the limit is fine
    await a.say(room, 'y'.repeat(64));
    // ref: the error names the cid it answers
    const e = await a.expectError({ type: 'msg', room: uniqueRoom('elsewhere'), text: 'hi', cid: 'ref-me' }, 'not_in_room');
    assert.equal(e.ref, 'ref-me');
    assert.deepEqual(await a.none('error', 100), [], 'one error per bad message');
  });

  it('room_full: --max-room-members, by URL and by join; the refused client stays open', T, async () => {
    const room = uniqueRoom('full');
    const a = await cs.open(srv.port, `/ws?room=${room}`);
    const b = await cs.open(srv.port, `/ws?room=${room}`);
    await a.next('room');
    await b.next('room');
    // by URL: the WebSocket opens (welcome), then room_full
    const c = await cs.open(srv.port, `/ws?room=${room}`);
    const e1 = await c.next('error');
    assert.equal(e1.code, 'room_full');
    assert.deepEqual(await c.none('room', 100), [], 'no snapshot for a refused join');
    // by join
    await c.expectError({ type: 'join', room }, 'room_full');
    const other = uniqueRoom('roomy');
    await c.join(other);
    await provesOpen(c, other, 'room_full');
    // the full room never saw c
    assert.deepEqual(await a.none((m) => m.type === 'join' && m.member.id === c.id, 100), []);
    await c.expectError({ type: 'msg', room, text: 'let me in', cid: 'x' }, 'not_in_room');
    // a seat frees up: now c gets in
    await b.close();
    await a.next((m) => m.type === 'leave' && m.member.id === b.id);
    const snap = await c.join(room);
    assert.deepEqual(memberIds(snap), [a.id, c.id].sort());
  });

  it('room_full: --max-rooms-per-conn', T, async () => {
    const [r1, r2, r3] = [uniqueRoom('rpc'), uniqueRoom('rpc'), uniqueRoom('rpc')];
    const a = await cs.open(srv.port, `/ws?room=${r1}`);
    await a.next('room');
    await a.join(r2);
    await a.expectError({ type: 'join', room: r3 }, 'room_full');
    await provesOpen(a, r1, 'rooms-per-conn room_full');
    // rejoining a room it is already in is not a new room
    const again = await a.join(r2);
    assert.deepEqual(memberIds(again), [a.id]);
    // leave one, then the third works
    a.send({ type: 'leave', room: r2 });
    await a.expectError({ type: 'msg', room: r2, text: 'gone?', cid: 'l' }, 'not_in_room');
    await a.join(r3);
    await provesOpen(a, r3, 'join after leave');
  });
});

describe('chat: rate_limited', () => {
  let srv;
  const cs = clientPool();
  // 1 message per second, burst 3: a burst of 12 must be cut long before tokens refill
  before(async () => { srv = await serverWith(['--rate-msgs-per-sec', '1', '--rate-burst', '3']); });
  after(async () => { await cs.closeAll(); if (srv) await srv.stop('SIGKILL').catch(() => {}); });

  it('a burst over the token bucket gets rate_limited, the connection stays open and recovers', T, async () => {
    const room = uniqueRoom('rate');
    const a = await cs.open(srv.port, `/ws?room=${room}`);
    const b = await cs.open(srv.port, `/ws?room=${room}`);
    await a.next('room');
    await b.next('room');
    const N = 12;
    for (let i = 0; i < N; i++) a.send({ type: 'msg', room, text: `burst ${i}`, cid: `r${i}` });
    const answers = await a.nextN(N, (m) => m.type === 'ack' || m.type === 'error', 8000);
    const acks = answers.filter((m) => m.type === 'ack');
    const limited = answers.filter((m) => m.type === 'error');
    assert.ok(limited.length >= 1, 'some of the burst was refused');
    for (const e of limited) assert.equal(e.code, 'rate_limited');
    assert.ok(acks.length >= 1 && acks.length <= 5, `about the burst got through (${acks.length} acks)`);
    // b saw exactly the acked messages, nothing refused
    const seen = await b.nextN(acks.length, 'msg', 3000);
    assert.deepEqual(seen.map((m) => m.id), acks.map((m) => m.id));
    assert.deepEqual(await b.none('msg', 200), [], 'refused messages were not delivered');
    assert.ok(a.isOpen, 'rate limiting does not close the connection');
    // tokens refill: a later message is accepted (bounded retries)
    let ok = null;
    for (let i = 0; i < 40 && !ok; i++) {
      const cid = `later-${i}`;
      a.send({ type: 'msg', room, text: 'later', cid });
      const m = await a.next((x) => (x.type === 'ack' && x.cid === cid) || x.type === 'error', 3000);
      if (m.type === 'ack') ok = m;
      else { assert.equal(m.code, 'rate_limited'); await sleep(250); }
    }
    assert.ok(ok, 'a message after the refill is acked');
    assert.ok(a.isOpen);
  });
});

// -----------------------------------------------------------------------------------------------

describe('chat: metrics', () => {
  let srv;
  const cs = clientPool();
  before(async () => { srv = await serverWith(FAST); });
  after(async () => { await cs.closeAll(); if (srv) await srv.stop('SIGKILL').catch(() => {}); });

  it('chatgw_rooms, chatgw_room_members, chatgw_messages_received_total, chatgw_messages_delivered_total move', T, async () => {
    const get = async () => {
      const s = (await scrape(srv.port)).samples;
      return {
        rooms: metricSum(s, 'chatgw_rooms'),
        members: metricSum(s, 'chatgw_room_members'),
        received: metricSum(s, 'chatgw_messages_received_total'),
        delivered: metricSum(s, 'chatgw_messages_delivered_total'),
        dropped: (reason) => metricSum(s, 'chatgw_messages_dropped_total', { reason }),
      };
    };
    const m0 = await get();
    const [r1, r2] = [uniqueRoom('met'), uniqueRoom('met')];
    const a = await cs.open(srv.port, `/ws?room=${r1}`);
    const b = await cs.open(srv.port, `/ws?room=${r1}`);
    const c = await cs.open(srv.port, `/ws?room=${r2}`);
    for (const x of [a, b, c]) await x.next('room');
    await c.join(r1);                       // c: two memberships
    const m1 = await get();
    assert.equal(m1.rooms - m0.rooms, 2, 'two rooms');
    assert.equal(m1.members - m0.members, 4, 'four memberships (c counts twice)');
    assert.ok(m1.received - m0.received >= 1, 'the join message was received');

    for (let i = 0; i < 3; i++) await a.say(r1, `count ${i}`);
    for (const x of [b, c]) await x.nextN(3, 'msg');
    const m2 = await get();
    assert.ok(m2.received - m1.received >= 3, `received grew by ${m2.received - m1.received} (>= 3)`);
    assert.ok(m2.delivered - m1.delivered >= 9, `delivered grew by ${m2.delivered - m1.delivered} (>= 3 msgs x 3 members)`);

    // a refused message counts as dropped, not delivered
    await a.expectError({ type: 'msg', room: uniqueRoom('nowhere'), text: 'x', cid: 'd' }, 'not_in_room');
    const m3 = await get();
    assert.ok(m3.dropped('not_in_room') - m2.dropped('not_in_room') >= 1, 'dropped{reason="not_in_room"} grew');
    assert.equal(m3.delivered, m2.delivered, 'nothing delivered for a refused message');

    // everyone leaves: gauges return
    c.send({ type: 'leave', room: r2 });
    await waitFor(async () => (await get()).rooms === m0.rooms + 1, { timeoutMs: 5000, what: 'r2 to disappear from chatgw_rooms' });
    await cs.closeAll();
    await waitFor(async () => {
      const m = await get();
      return m.rooms === m0.rooms && m.members === m0.members;
    }, { timeoutMs: 5000, what: 'chatgw_rooms and chatgw_room_members back to their start values' });
  });
});
