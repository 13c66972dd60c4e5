// History and presence across replicas on one real redis-server: recovery with `since` after
// reconnecting to a different replica gets exactly the missed msgs; a lost stream changes the
// epoch (history_gap, never silent loss); the members of a replica killed with SIGKILL leave
// every presence list within the heartbeat TTL while the others keep chatting.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { parseMsgId, waitFor, sleep } from './lib.mjs';
import {
  redisCluster, startReplica, apiMembers, uniqueRoom, waitMembers, redisCommand, redisArgs,
} from './redis_lib.mjs';

const T = { timeout: 40000 };
const TTL = 1500;

describe('redis: recovery with since across replicas', () => {
  const cluster = redisCluster((redis) =>
    Promise.all(['a', 'b', 'c'].map((n) => startReplica(redis.url, `rec-${n}`, ['--history-size', '50']))));
  const { reps, cs } = cluster;

  it('disconnect from A, others talk via B, reconnect to C with since: exactly the missed msgs', T, async () => {
    const room = uniqueRoom('rec');
    const keeper = await cs.open(reps[1].port, `/ws?room=${room}&name=keeper`);   // keeps the room alive on B
    await keeper.next('room');
    const a = await cs.open(reps[0].port, `/ws?room=${room}&name=roamer`);
    await a.next('room');
    const seen = (await a.say(room, 'before I go')).id;
    await a.next((m) => m.type === 'msg' && m.id === seen, 5000);
    await a.close();

    const missed = [];
    for (let i = 0; i < 5; i++) missed.push((await keeper.say(room, `while away ${i}`)).id);

    const c = await cs.open(reps[2].port, `/ws?room=${room}&name=roamer&since=${encodeURIComponent(seen)}`);
    const first = await c.next((m) => m.type === 'room' || m.type === 'error', 5000);
    assert.equal(first.type, 'room', `no history_gap: ${JSON.stringify(first)}`);
    assert.deepEqual(first.history.map((m) => m.id), missed, 'exactly the missed msgs, in order');
    assert.deepEqual(first.history.map((m) => m.text), missed.map((_, i) => `while away ${i}`));

    // live msgs continue after the snapshot, none twice
    const next = (await keeper.say(room, 'welcome back')).id;
    const live = await c.next((m) => m.type === 'msg' && m.room === room, 5000);
    assert.equal(live.id, next);
    assert.deepEqual(await c.none((m) => m.type === 'msg', 200), []);

    // a history request on yet another replica answers from the shared stream
    const h = await cs.open(reps[0].port, `/ws?room=${room}&name=reader`);
    await h.next('room');
    h.send({ type: 'history', room, since: seen });
    const hist = await h.next('history', 5000);
    assert.deepEqual(hist.messages.map((m) => m.id), [...missed, next]);
  });

  it('a join without since gets the shared history kept by the other replicas', T, async () => {
    const room = uniqueRoom('hist');
    const w = await cs.open(reps[0].port, `/ws?room=${room}&name=writer`);
    await w.next('room');
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push((await w.say(room, `h${i}`)).id);
    const r = await cs.open(reps[1].port, `/ws?room=${room}&name=reader`);
    const snap = await r.next('room', 5000);
    assert.deepEqual(snap.history.map((m) => m.id), ids);
  });

  it('joining mid-stream: snapshot history then live msgs, contiguous ids, none twice', T, async () => {
    const room = uniqueRoom('mid');
    const w = await cs.open(reps[0].port, `/ws?room=${room}&name=writer`);
    await w.next('room');
    let sent = 0;
    let stop = false;
    const writer = (async () => {
      while (!stop && sent < 2000) {
        const batch = [];
        for (let i = 0; i < 10; i++) batch.push(w.say(room, `s${sent++}`, 8000));
        await Promise.all(batch);
      }
    })();
    await waitFor(() => sent >= 60, { timeoutMs: 10000, what: 'some traffic' });
    const readers = [];
    for (const s of [reps[1], reps[2], reps[0]]) readers.push(await cs.open(s.port, `/ws?room=${room}&name=reader`));
    await sleep(300);
    stop = true;
    await writer;
    const lastId = (await w.say(room, 'last')).id;
    for (const r of readers) {
      const snap = await r.next('room', 5000);
      await r.next((m) => m.type === 'msg' && m.id === lastId, 8000, 'the last msg');
      const live = r.all.filter((m) => m.type === 'msg' && m.room === room).map((m) => m.id);
      const ids = [...snap.history.map((m) => m.id), ...live];
      const seqs = ids.map((id) => parseMsgId(id).seq);
      for (let k = 1; k < seqs.length; k++)
        assert.equal(seqs[k], seqs[k - 1] + 1, `contiguous at ${k}: ${ids[k - 1]} then ${ids[k]}`);
      assert.ok(live.length >= 1);
    }
  });

  it('fresh rooms, everyone posting at once from three replicas: every member sees 1..N once, in order', T, async () => {
    for (let round = 0; round < 4; round++) {
      const room = uniqueRoom('burst');
      const members = await Promise.all(reps.map((s, i) => cs.open(s.port, `/ws?room=${room}&name=p${i}`)));
      const PER = 10;
      const acks = await Promise.all(members.map(async (c, i) => {
        const out = [];
        for (let k = 0; k < PER; k++) out.push(c.say(room, `r${round} p${i} m${k}`, 8000));
        return Promise.all(out);
      }));
      const N = members.length * PER;
      const epochs = new Set(acks.flat().map((a) => parseMsgId(a.id).epoch));
      assert.equal(epochs.size, 1, 'one epoch');
      for (const c of members) {
        const view = () => {
          const snap = c.all.find((m) => m.type === 'room' && m.room === room);
          if (!snap) return null;
          const live = c.all.filter((m) => m.type === 'msg' && m.room === room);
          return [...snap.history, ...live].map((m) => parseMsgId(m.id).seq);
        };
        await waitFor(() => view()?.includes(N), { timeoutMs: 10000, what: `${c.name} sees msg ${N}` });
        await sleep(100);
        assert.deepEqual(view(), Array.from({ length: N }, (_, k) => k + 1), `${c.name}: 1..${N} once, in order`);
        assert.deepEqual(c.all.filter((m) => m.type === 'error'), [], 'no error');
      }
      await Promise.all(members.map((c) => c.close()));
    }
  });

  it('a msg the channel never brought (a hole in the ids) is fetched from the stream, in order', T, async () => {
    const room = uniqueRoom('hole');
    const w = await cs.open(reps[0].port, `/ws?room=${room}&name=writer`);
    await w.next('room');
    const r = await cs.open(reps[1].port, `/ws?room=${room}&name=reader`);
    await r.next('room');
    const first = (await w.say(room, 'one')).id;
    for (const c of [r, w]) await c.next((m) => m.type === 'msg' && m.id === first, 5000);
    // what a lost PUBLISH looks like: the next id taken and kept in the stream, never published
    const inject = "local s = redis.call('INCR', KEYS[1]) local e = redis.call('GET', KEYS[2]) " +
      "local p = string.gsub(ARGV[1], 'IDX', e .. ':' .. s) " +
      "redis.call('XADD', KEYS[3], 'MAXLEN', '~', 100, s .. '-0', 'p', p) return s";
    const ghost = JSON.stringify({ type: 'msg', room, id: 'IDX', from: { id: 'ghost', name: 'ghost' }, text: 'lost', ts: Date.now() });
    const reply = await redisArgs(cluster.redis.port, ['EVAL', inject, '3', `chatgw:{${room}}:seq`, `chatgw:{${room}}:epoch`,
      `chatgw:{${room}}:hist`, ghost]);
    assert.match(reply, /^:\d+/, reply);
    const next = (await w.say(room, 'three')).id;
    for (const c of [r, w]) {
      const got = await c.nextN(2, (m) => m.type === 'msg' && m.room === room, 5000, 'the hole and the next msg');
      assert.deepEqual(got.map((m) => m.text), ['lost', 'three'], `${c.name}: the lost msg first`);
      assert.equal(got[1].id, next);
      assert.equal(parseMsgId(got[0].id).seq + 1, parseMsgId(next).seq);
      assert.deepEqual(await c.none((m) => m.type === 'msg' || m.type === 'error', 200), []);
    }
  });

  it('a lost stream starts a new epoch: an old since gets history_gap', T, async () => {
    const room = uniqueRoom('epoch');
    const w = await cs.open(reps[0].port, `/ws?room=${room}&name=writer`);
    await w.next('room');
    const old = (await w.say(room, 'old life')).id;
    assert.equal(await redisCommand(cluster.redis.port, 'FLUSHALL'), '+OK');
    const fresh = (await w.say(room, 'new life')).id;
    assert.notEqual(parseMsgId(fresh).epoch, parseMsgId(old).epoch, 'a new epoch');
    const c = await cs.open(reps[2].port, `/ws?room=${room}&name=late&since=${encodeURIComponent(old)}`);
    const gap = await c.next((m) => m.type === 'room' || m.type === 'error', 5000);
    assert.equal(gap.type, 'error');
    assert.equal(gap.code, 'history_gap');
    const snap = await c.next('room', 5000);
    assert.deepEqual(snap.history.map((m) => m.id), [fresh]);
    // presence was flushed too: the heartbeat notices and every replica registers again
    await waitMembers([reps[0], reps[2]], room, [w.id, c.id], 15000);
  });
});

describe('redis: joining during a burst of more than history_size msgs', () => {
  const cluster = redisCluster((redis) =>
    Promise.all(['a', 'b'].map((n) => startReplica(redis.url, `burst-${n}`, ['--history-size', '5']))));
  const { reps, cs } = cluster;

  // A joiner's snapshot (presence + the newest history_size msgs) takes a round trip to Redis;
  // what the channel brings meanwhile is held for it. Every msg posted after its join must
  // reach it, in the room frame or live, even when more than history_size fly meanwhile.
  it('each joiner gets every msg posted after its join, once', T, async () => {
    const room = uniqueRoom('burst');
    const w = await cs.open(reps[1].port, `/ws?room=${room}&name=writer`);
    await w.next('room');
    const sent = [];               // {text, t}: t = when the writer sent it
    let stop = false;
    const flood = (async () => {
      while (!stop && sent.length < 4000) {
        for (let i = 0; i < 20; i++) {
          const text = `b${sent.length}`;
          sent.push({ text, t: performance.now() });
          w.send({ type: 'msg', room, text });
        }
        await new Promise((r) => setImmediate(r));
      }
    })();
    const joiners = [];
    for (let i = 0; i < 8; i++) {
      const c = await cs.open(reps[0].port, `/ws?room=${room}&name=j${i}`);
      c.joinedAt = performance.now();   // the welcome came after the server ran the join
      joiners.push(c);
      await sleep(15);
    }
    stop = true;
    await flood;
    const last = (await w.say(room, 'last', 15000)).id;
    for (const [i, c] of joiners.entries()) {
      const snap = await c.next('room', 10000);
      await c.next((m) => m.type === 'msg' && m.id === last, 15000, `joiner ${i}: the last msg`);
      const got = [...snap.history, ...c.all.filter((m) => m.type === 'msg' && m.room === room)].map((m) => m.text);
      assert.equal(new Set(got).size, got.length, `joiner ${i}: no msg twice`);
      const have = new Set(got);
      const missing = sent.filter((x) => x.t > c.joinedAt && !have.has(x.text)).map((x) => x.text);
      assert.deepEqual(missing.slice(0, 10), [], `joiner ${i} missed ${missing.length} msgs posted after its join`);
      assert.ok(!c.all.some((m) => m.type === 'error'), `joiner ${i}: no error frame`);
    }
  });
});

describe('redis: a replica killed with SIGKILL', () => {
  const cluster = redisCluster((redis) => Promise.all(['a', 'b', 'c'].map((n) =>
    startReplica(redis.url, `kill-${n}`, ['--presence-ttl-ms', String(TTL)]))), { stop: 'SIGKILL' });
  const { reps, cs } = cluster;

  it('its members leave every presence list within the TTL; the others keep chatting', T, async () => {
    const room = uniqueRoom('kill');
    const a = await cs.open(reps[0].port, `/ws?room=${room}&name=alice`);
    await a.next('room');
    const b = await cs.open(reps[1].port, `/ws?room=${room}&name=bob`);
    await b.next('room');
    const c1 = await cs.open(reps[2].port, `/ws?room=${room}&name=carol`);
    await c1.next('room');
    const c2 = await cs.open(reps[2].port, `/ws?room=${room}&name=dave`);
    await c2.next('room');
    await waitMembers(reps, room, [a.id, b.id, c1.id, c2.id]);
    a.drain();
    b.drain();

    const t0 = Date.now();
    reps[2].proc.kill('SIGKILL');
    await reps[2].waitExit(5000);
    // generous bound: TTL, one reaper period (TTL/3), and scheduling slack
    for (const cl of [a, b]) {
      for (const gone of [c1, c2]) {
        const ev = await cl.next((m) => m.type === 'leave' && m.member?.id === gone.id, 4 * TTL + 5000,
          `leave of ${gone.name}`);
        assert.equal(ev.room, room);
      }
    }
    await waitMembers([reps[0], reps[1]], room, [a.id, b.id], 5000);
    const took = Date.now() - t0;
    assert.ok(took < 4 * TTL + 5000, `within a bounded time (${took} ms)`);

    const { id } = await a.say(room, 'still here?');
    const got = await b.next((m) => m.type === 'msg' && m.id === id, 5000);
    assert.equal(got.text, 'still here?');
    assert.deepEqual(await apiMembers(reps[0], room), [a.id, b.id].sort());
  });
});
