// workers > 1: several event-loop threads in one process, each with its own SO_REUSEPORT
// listener, hub and Lua VM; rooms span them through the in-process bus. Clients land on
// workers as the kernel spreads them (the "client attached" debug log names the worker), and
// the tests pick clients on different workers: every room msg reaches every member exactly
// once in one order, presence agrees, dm/signal and history recovery cross workers, /metrics
// sums the workers, SIGHUP reloads every worker's policy, SIGTERM drains them all with exit 0.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import {
  startServer, chatClient, passthroughPolicyDir, parseMsgId, scrape, metricSum, waitFor, httpGet, httpRequest,
  scriptsDir, readLuaFiles, FIXTURES, sleep,
} from './lib.mjs';
import { startRedis, startReplica, redisCommand } from './redis_lib.mjs';

const T = { timeout: 40000 };
const FAST = ['--rate-msgs-per-sec', '100000', '--rate-burst', '100000'];
const WORKERS = 3;

let roomSeq = 0;
const uniqueRoom = (prefix = 'room') => `${prefix}-${process.pid}-${++roomSeq}`;

/** Clients of one server, each tagged with the worker that holds it; all closed at the end. */
function pool(srv) {
  const open = [];
  const api = {
    async open(p) {
      const c = await chatClient(srv.port, p);
      open.push(c);
      const line = await srv.waitLog((o) => o.msg === 'client attached' && o.client === c.id, 5000);
      c.worker = line.worker;
      return c;
    },
    /** Opens at p until the client lands on a worker for which want(worker) holds (bounded). */
    async openWhere(p, want, what) {
      for (let i = 0; i < 60; i++) {
        const c = await api.open(p);
        if (want(c.worker)) return c;
        await c.close().catch(() => c.terminate());
      }
      throw new Error(`no client landed on ${what} in 60 tries`);
    },
    async closeAll() {
      await Promise.all(open.splice(0).map((c) => c.close().catch(() => c.terminate())));
    },
  };
  return api;
}

/** Every member id the room snapshot lists, sorted. */
const ids = (snap) => snap.members.map((m) => m.id).sort();

describe('workers: rooms across event-loop threads', () => {
  let srv;
  let cs;
  before(async () => {
    srv = await startServer(['--scripts-dir', passthroughPolicyDir(), '--workers', WORKERS, '--log-level', 'debug',
      '--history-size', '50', '--api-token', 'tok3n', ...FAST]);
    await srv.waitLog((o) => o.msg === 'started');   // every worker listens
    cs = pool(srv);
  });
  after(async () => { if (cs) await cs.closeAll(); if (srv) await srv.stop('SIGKILL').catch(() => {}); });

  it('every worker listens on the one port; connections spread over more than one worker', T, async () => {
    const listening = srv.logs.filter((o) => o.msg === 'listening' && o.role !== 'admin');
    assert.equal(new Set(listening.map((o) => o.worker)).size, WORKERS, 'a listener per worker');
    assert.equal(new Set(listening.map((o) => o.addr)).size, 1, 'all on one address');
    const room = uniqueRoom('spread');
    const seen = new Set();
    for (let i = 0; i < 24 && seen.size < 2; i++) seen.add((await cs.open(`/ws?room=${room}`)).worker);
    assert.ok(seen.size >= 2, `connections reached ${seen.size} worker(s)`);
  });

  it('every msg reaches every member exactly once, in one order, with the acked id', T, async () => {
    const room = uniqueRoom('fan');
    const members = [];
    for (let i = 0; i < 9; i++) {
      const c = await cs.open(`/ws?room=${room}&name=u${i}`);
      await c.next('room', 5000);
      members.push(c);
    }
    assert.ok(new Set(members.map((c) => c.worker)).size >= 2, 'members on several workers');
    // every member sees all 9 before anyone talks
    for (const c of members) {
      await waitFor(async () => {
        const body = (await httpGet(srv.port, `/api/rooms/${room}`)).json();
        return body.online === members.length;
      }, { what: 'all members listed' });
    }
    for (const c of members) c.drain();

    const PER = 10;
    const acks = await Promise.all(members.map(async (c, i) => {
      const out = [];
      for (let k = 0; k < PER; k++) out.push(c.say(room, `m ${i}.${k}`, 8000));
      return Promise.all(out);
    }));
    const total = members.length * PER;
    const acked = new Set(acks.flat().map((a) => a.id));
    assert.equal(acked.size, total, 'every ack has its own id');

    const orders = [];
    for (const c of members) {
      const got = await c.nextN(total, (m) => m.type === 'msg' && m.room === room, 15000);
      const gotIds = got.map((m) => m.id);
      assert.equal(new Set(gotIds).size, total, 'no duplicate');
      for (const id of gotIds) assert.ok(acked.has(id), `received id ${id} was acked to its sender`);
      const seqs = gotIds.map(parseMsgId);
      for (let k = 1; k < seqs.length; k++) {
        assert.equal(seqs[k].epoch, seqs[0].epoch, 'one epoch');
        assert.equal(seqs[k].seq, seqs[k - 1].seq + 1, `ids follow each other: ${gotIds[k - 1]} then ${gotIds[k]}`);
      }
      orders.push(gotIds.join(','));
      assert.deepEqual(await c.none((m) => m.type === 'msg' && m.room === room, 200), [], 'nothing more');
    }
    for (const o of orders) assert.equal(o, orders[0], 'every member saw the same order');
    for (let i = 0; i < members.length; i++) {
      const mine = orders[0].split(',').filter((id) => acks[i].some((a) => a.id === id));
      assert.deepEqual(mine, acks[i].map((a) => a.id), 'a sender\'s msgs keep its order');
    }
  });

  it('presence agrees across workers: snapshots, join, mute and leave events', T, async () => {
    const room = uniqueRoom('pres');
    const a = await cs.open(`/ws?room=${room}&name=alice`);
    await a.next('room');
    const b = await cs.openWhere(`/ws?room=${room}&name=bob`, (w) => w !== a.worker, 'a worker other than alice\'s');
    const snapB = await b.next('room', 5000);
    assert.deepEqual(ids(snapB), [a.id, b.id].sort(), 'bob sees alice on another worker');
    await a.next((m) => m.type === 'join' && m.member?.id === b.id, 5000, 'join of bob at alice');
    const c = await cs.openWhere(`/ws?room=${room}&name=carol`, (w) => w !== b.worker, 'a worker other than bob\'s');
    const snapC = await c.next('room', 5000);
    assert.deepEqual(snapC.members.map((m) => m.name).sort(), ['alice', 'bob', 'carol']);
    await b.next((m) => m.type === 'join' && m.member?.id === c.id, 5000, 'join of carol at bob');

    b.send({ type: 'mute', room });
    const mute = await (a.worker !== b.worker ? a : c)
      .next((m) => m.type === 'mute' && m.member?.id === b.id, 5000, 'mute of bob on another worker');
    assert.equal(mute.member.muted, true);

    await b.close();
    await a.next((m) => m.type === 'leave' && m.member?.id === b.id, 5000, 'leave of bob at alice');
    await c.next((m) => m.type === 'leave' && m.member?.id === b.id, 5000, 'leave of bob at carol');
    const again = await a.join(room);
    assert.deepEqual(ids(again), [a.id, c.id].sort(), 'a fresh snapshot agrees');
  });

  it('dm and signal cross workers', T, async () => {
    const room = uniqueRoom('dm');
    const a = await cs.open(`/ws?room=${room}&name=alice`);
    await a.next('room');
    const c = await cs.openWhere(`/ws?room=${room}&name=carol`, (w) => w !== a.worker, 'another worker');
    await c.next('room');
    await a.next((m) => m.type === 'join' && m.member?.id === c.id, 5000, 'join of carol');

    a.send({ type: 'dm', to: c.id, text: 'psst', cid: 'd1' });
    await a.next((m) => m.type === 'ack' && m.cid === 'd1', 5000, 'dm ack');
    const dm = await c.next('dm', 5000);
    assert.equal(dm.text, 'psst');
    assert.equal(dm.from.id, a.id);

    const data = { sdp: 'v=0 offer', kind: 'offer' };
    c.send({ type: 'signal', room, to: a.id, data });
    const sig = await a.next('signal', 5000);
    assert.equal(sig.from, c.id);
    assert.deepEqual(sig.data, data);
    await c.expectError({ type: 'signal', room, to: 'nobody-here', data: 1 }, 'unknown_peer');
  });

  it('history recovery with since works on another worker', T, async () => {
    const room = uniqueRoom('hist');
    const a = await cs.open(`/ws?room=${room}&name=alice`);
    await a.next('room');
    const sent = [];
    for (let k = 0; k < 6; k++) sent.push((await a.say(room, `h${k}`)).id);
    const since = sent[1];
    const b = await cs.openWhere(`/ws?room=${room}&name=bob&since=${encodeURIComponent(since)}`,
      (w) => w !== a.worker, 'a worker other than the sender\'s');
    const snap = await b.next('room', 5000);
    assert.deepEqual(snap.history.map((m) => m.id), sent.slice(2), 'the msgs after since, from the shared ring');
    b.send({ type: 'history', room, since: sent[3] });
    const h = await b.next('history', 5000);
    assert.deepEqual(h.messages.map((m) => m.id), sent.slice(4));
    b.send({ type: 'history', room, since: 'nope:1' });
    await b.next((m) => m.type === 'error' && m.code === 'history_gap', 5000, 'history_gap for an unknown epoch');
  });

  it('/metrics and /readyz count every worker', T, async () => {
    const room = uniqueRoom('metrics');
    const open = [];
    for (let i = 0; i < 8; i++) open.push(await cs.open(`/ws?room=${room}`));
    const workers = new Set(open.map((c) => c.worker));
    assert.ok(workers.size >= 2, 'clients on several workers');
    // readyz and metrics answered by whichever worker: the numbers are the process's
    const { samples } = await scrape(srv.port);
    const ws = metricSum(samples, 'chatgw_websockets_open');
    const ready = (await httpGet(srv.port, '/readyz')).json();
    assert.equal(ready.websockets, ws, '/readyz websockets = chatgw_websockets_open');
    assert.ok(ws >= open.length, `websockets_open ${ws} counts clients on every worker`);
    assert.equal(metricSum(samples, 'chatgw_bus_up'), 1);
    assert.equal(ready.redis, undefined, 'no redis field without redis_url');
  });

  it('/api/stats, /api/rooms/{id} and the publish API see every worker, whichever answers', T, async () => {
    const room = uniqueRoom('api');
    const a = await cs.open(`/ws?room=${room}&name=alice`);
    await a.next('room');
    const b = await cs.openWhere(`/ws?room=${room}&name=bob`, (w) => w !== a.worker, 'another worker');
    await b.next('room');
    for (let i = 0; i < 8; i++) {   // new connections: the kernel picks the worker each time
      const r = (await httpGet(srv.port, `/api/rooms/${room}`)).json();
      assert.equal(r.online, 2);
      assert.deepEqual(r.members.map((m) => m.name), ['alice', 'bob'], 'join order');
      const st = (await httpGet(srv.port, '/api/stats')).json();
      assert.equal(st.rooms.find((x) => x.name === room)?.online, 2);
      assert.ok(st.online >= 2);
    }
    for (let i = 0; i < 4; i++) {
      const r = await httpRequest(srv.port, 'POST', `/api/rooms/${room}/messages`,
        { headers: { Authorization: 'Bearer tok3n', 'Content-Type': 'application/json' }, body: { text: `notice ${i}`, from: 'ops' } });
      assert.equal(r.status, 200, r.text);
      const ma = await a.next((m) => m.type === 'msg' && m.text === `notice ${i}`, 5000);
      const mb = await b.next((m) => m.type === 'msg' && m.text === `notice ${i}`, 5000);
      assert.equal(ma.id, mb.id, 'one id everywhere');
      assert.equal(JSON.parse(r.text).id, ma.id, 'the answer carries the id');
    }
    assert.equal((await httpGet(srv.port, `/api/rooms/${uniqueRoom('none')}`)).status, 404);
  });

  it('SIGTERM with members in rooms on every worker: exit 0 (a sanitizer build checks leaks here)', T, async () => {
    assert.equal(await srv.stop('SIGTERM', 15000), 0, srv.tail());
  });
});

describe('workers: gw.limit buckets are shared between workers', () => {
  // fixtures/shared_limit: every chat msg takes a token from one bucket per room (burst 5, no
  // refill to speak of). Each worker decides from its own bucket at once, mirrors the take to
  // the in-process bus's bucket and lowers its own to what is left: about 5 in all, not 5 each.
  it('one key allows about burst across the workers, not burst per worker', T, async () => {
    const BURST = 5;
    const srv = await startServer(['--scripts-dir', scriptsDir(readLuaFiles(path.join(FIXTURES, 'shared_limit'))),
      '--workers', 2, '--log-level', 'debug', ...FAST]);
    const cs = pool(srv);
    try {
      const room = uniqueRoom('lim');
      const a = await cs.openWhere(`/ws?room=${room}&name=a`, (w) => w === 0, 'worker 0');
      const b = await cs.openWhere(`/ws?room=${room}&name=b`, (w) => w === 1, 'worker 1');
      const out = [];
      let cid = 0;
      for (let round = 0; round < 6; round++) {
        for (const c of [a, b]) {
          const id = `l${++cid}`;
          c.send({ type: 'msg', room, text: id, cid: id });
          const r = await c.next((m) => (m.type === 'ack' && m.cid === id) || (m.type === 'error' && m.ref === id), 5000);
          out.push(r.type === 'ack' ? 'ack' : r.code);
          await sleep(30);         // the mirrored take's answer lands meanwhile
        }
      }
      const allowed = out.filter((o) => o === 'ack').length;
      assert.equal(allowed + out.filter((o) => o === 'limited').length, out.length, JSON.stringify(out));
      assert.ok(allowed >= BURST && allowed <= BURST + 2, `about ${BURST} across 2 workers, got ${allowed}: ${out}`);
    } finally {
      await cs.closeAll();
      await srv.stop('SIGKILL').catch(() => {});
    }
  });
});

describe('workers: policy reload and drain reach every worker', () => {
  it('SIGHUP reloads the policy on every worker; SIGTERM drains them all, exit 0', T, async () => {
    const dir = passthroughPolicyDir();
    const srv = await startServer(['--scripts-dir', dir, '--workers', WORKERS, '--log-level', 'debug', ...FAST]);
    const cs = pool(srv);
    try {
      const before = (await httpGet(srv.port, '/readyz')).json().policy.version;
      fs.writeFileSync(path.join(dir, 'policy.lua'), '-- e2e: v2\nreturn {}\n');
      srv.proc.kill('SIGHUP');
      await waitFor(() => new Set(srv.logs.filter((o) => o.msg === 'policy reloaded').map((o) => o.worker)).size === WORKERS,
        { timeoutMs: 8000, what: `policy reloaded on ${WORKERS} workers` });
      const after = srv.logs.find((o) => o.msg === 'policy reloaded').version;
      assert.notEqual(after, before);
      const room = uniqueRoom('drain');
      const clients = [];
      for (let i = 0; i < 12; i++) {
        const c = await cs.open(`/ws?room=${room}`);
        assert.equal(c.welcome.policy, after, `worker ${c.worker} serves the new policy`);
        clients.push(c);
      }
      assert.ok(new Set(clients.map((c) => c.worker)).size >= 2, 'clients on several workers');
      for (let i = 0; i < 5; i++) assert.equal((await httpGet(srv.port, '/readyz')).json().policy.version, after);

      const code = await srv.stop('SIGTERM', 15000);
      assert.equal(code, 0, `exit 0 after the drain\n${srv.tail()}`);
      for (const c of clients) {
        const info = await c.closedP;
        assert.equal(info.code, 1001, 'going away');
      }
      const stopped = srv.logs.filter((o) => o.msg === 'stopped' && o.worker !== undefined);
      assert.equal(new Set(stopped.map((o) => o.worker)).size, WORKERS, 'every worker stopped');
    } finally {
      await cs.closeAll();
      await srv.stop('SIGKILL').catch(() => {});
    }
  });

  it('admin_listen is worker 0\'s alone; an address that cannot be bound stops the start (exit 1)', T, async () => {
    const srv = await startServer(['--scripts-dir', passthroughPolicyDir(), '--workers', 2, '--admin-listen', '127.0.0.1:0']);
    try {
      const admin = await srv.waitLog((o) => o.msg === 'listening' && o.role === 'admin');
      assert.equal(admin.worker, 0);
      await srv.waitLog((o) => o.msg === 'started');
      assert.equal(srv.logs.filter((o) => o.msg === 'listening' && o.role === 'admin').length, 1, 'one admin listener');
      const port = Number(/:(\d+)$/.exec(admin.addr)[1]);
      assert.equal((await httpGet(port, '/metrics')).status, 200);
      for (let i = 0; i < 4; i++) assert.equal((await httpGet(srv.port, '/metrics')).status, 404, 'not on listen');
      assert.equal(await srv.stop('SIGTERM'), 0);
    } finally {
      await srv.stop('SIGKILL').catch(() => {});
    }
    const bad = await startServer(['--workers', '2', '--listen', '192.0.2.1:0']).catch((e) => e);
    assert.ok(bad instanceof Error, 'does not start');
    assert.match(bad.message, /code 1/);
  });
});

describe('workers with redis_url: each worker is its own node on Redis', () => {
  let redis;
  let srv;
  before(async () => { redis = await startRedis(); });
  after(async () => {
    if (srv) await srv.stop('SIGKILL').catch(() => {});
    if (redis) await redis.stop();
  });

  it('nodes NODE-w<i>; rooms span the workers through Redis; SIGTERM says goodbye for every worker', T, async () => {
    srv = await startReplica(redis.url, 'wk', ['--workers', 2, '--log-level', 'debug']);
    await srv.waitLog((o) => o.msg === 'started');
    const nodes = srv.logs.filter((o) => o.msg === 'bus: redis').map((o) => o.node).sort();
    assert.deepEqual(nodes, ['wk-w0', 'wk-w1']);
    await waitFor(async () => (await httpGet(srv.port, '/readyz')).json().redis === 'up', { what: 'redis up' });
    const cs = pool(srv);
    try {
      const room = uniqueRoom('redis');
      const a = await cs.open(`/ws?room=${room}&name=alice`);
      await a.next('room', 5000);
      const b = await cs.openWhere(`/ws?room=${room}&name=bob`, (w) => w !== a.worker, 'the other worker');
      const snap = await b.next('room', 5000);
      assert.deepEqual(ids(snap), [a.id, b.id].sort());
      const { id } = await b.say(room, 'over redis', 5000);
      const m = await a.next((x) => x.type === 'msg' && x.text === 'over redis', 5000, 'msg at alice');
      assert.equal(m.id, id);
      assert.equal(await redisCommand(redis.port, 'EXISTS chatgw:node:wk-w1'), ':1', 'a heartbeat per worker');
      assert.equal(await srv.stop('SIGTERM', 15000), 0);
      for (const n of ['wk-w0', 'wk-w1'])
        assert.equal(await redisCommand(redis.port, `EXISTS chatgw:node:${n}`), ':0', `heartbeat of ${n} removed`);
    } finally {
      await cs.closeAll();
    }
  });
});
