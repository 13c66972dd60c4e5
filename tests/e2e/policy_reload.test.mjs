// Live policy reload, end to end: the scripts directory laid out and updated exactly the way
// kubelet's AtomicWriter updates a ConfigMap volume, swapped while 50 clients send without
// pause; rejected policies (syntax error, error in self_test, endless loop at load time, ...)
// that leave the last good policy serving and show in /readyz, the logs and /metrics; and the
// other triggers (SIGHUP, --reload-poll-ms, a plain file edit).
//
// Fixtures: tests/e2e/fixtures/tagger (policy.lua stamps each msg with tag = require("tag").name)
// and tests/e2e/fixtures/rejected (each copied over policy.lua or tag.lua). Every wait is bounded.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import {
  startServer, chatClient, scrape, metricSum, waitFor, sleep, withTimeout, httpGet, parseMsgId,
  AtomicWriterDir, fixture, lineOf, readyz, tempDir, writeFiles, WebSocket, HOST,
} from './lib.mjs';

const T = { timeout: 120000 };
const FAST = ['--rate-msgs-per-sec', '100000', '--rate-burst', '100000'];

const TAGGER = { 'policy.lua': fixture('tagger/policy.lua'), 'tag.lua': fixture('tagger/tag.lua') };
const tagFile = (name) => `-- e2e fixture: the generation stamped on messages by policy.lua.\nreturn { name = ${JSON.stringify(name)} }\n`;

/** Resolves the first log line after mark (an index into srv.logs) that matches pred. */
function logAfter(srv, mark, pred, ms = 5000, what = 'log line') {
  return waitFor(() => srv.logs.slice(mark).find(pred), { timeoutMs: ms, what: `${what}\n${srv.tail(15)}` });
}
const isReloaded = (o) => o.msg === 'policy reloaded';
const isReloadFailed = (o) => typeof o.msg === 'string' && o.msg.startsWith('policy reload failed');

async function reloadCounts(port) {
  const { samples } = await scrape(port);
  return {
    ok: metricSum(samples, 'chatgw_policy_reloads_total', { result: 'ok' }),
    failed: metricSum(samples, 'chatgw_policy_reloads_total', { result: 'failed' }),
    unchanged: metricSum(samples, 'chatgw_policy_reloads_total', { result: 'unchanged' }),
    info: samples.filter((s) => s.name === 'chatgw_policy_info').map((s) => s.labels.version),
    samples,
  };
}

// ---------------------------------------------------------------------------------------------
// a lean load client: counts what it gets instead of queueing it

class LoadClient {
  constructor(ws, idx, room) {
    this.ws = ws;
    this.idx = idx;
    this.room = room;
    this.welcome = null;
    this.snapshot = null;
    this.sent = new Map();        // cid -> text
    this.acks = new Map();        // cid -> [id, ...]
    this.msgs = [];               // {seq, epoch, id, text, tag, fromId, keys}
    this.errors = [];
    this.other = [];
    this.closeInfo = null;
    this.n = 0;
    this.waiters = new Set();
    ws.on('message', (data) => {
      let m;
      try { m = JSON.parse(data.toString('utf8')); } catch { this.other.push({ unparsable: data.toString() }); return; }
      switch (m.type) {
        case 'msg': {
          const { epoch, seq } = parseMsgId(m.id);
          this.msgs.push({ seq, epoch, id: m.id, text: m.text, tag: m.tag, fromId: m.from?.id, room: m.room });
          break;
        }
        case 'ack': {
          const list = this.acks.get(m.cid) || [];
          list.push(m.id);
          this.acks.set(m.cid, list);
          break;
        }
        case 'welcome': this.welcome = m; break;
        case 'room': this.snapshot = m; break;
        case 'error': this.errors.push(m); break;
        case 'join': case 'leave': break;
        default: this.other.push(m);
      }
      for (const w of this.waiters) w();
    });
    ws.on('close', (code, reason) => { this.closeInfo = { code, reason: reason.toString(), at: Date.now() }; });
    ws.on('error', () => {});
  }

  send() {
    if (this.ws.readyState !== WebSocket.OPEN) return;
    const cid = `L${this.idx}-${++this.n}`;
    const text = `client ${this.idx} message ${this.n}`;
    this.sent.set(cid, text);
    this.ws.send(JSON.stringify({ type: 'msg', room: this.room, text, cid }));
  }
}

function openLoadClient(port, idx, room) {
  return withTimeout(new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${HOST}:${port}/ws?room=${room}&name=load${idx}`, { perMessageDeflate: false });
    const c = new LoadClient(ws, idx, room);
    const check = () => { if (c.welcome && c.snapshot) { c.waiters.delete(check); resolve(c); } };
    c.waiters.add(check);
    ws.once('error', reject);
    ws.once('unexpected-response', (req, res) => { reject(new Error(`unexpected response ${res.statusCode}`)); req.destroy(); });
    ws.once('close', () => reject(new Error(`load client ${idx} closed before joining`)));
  }), 10000, `load client ${idx} open`);
}

// ---------------------------------------------------------------------------------------------

describe('policy reload: a kubelet AtomicWriter update under load', () => {
  let srv, cm;
  const clients = [];
  before(async () => {
    cm = AtomicWriterDir.create(TAGGER, 'chatgw-e2e-reload-cm-');
    srv = await startServer(['--scripts-dir', cm.dir, ...FAST, '--history-size', '0']);
  });
  after(async () => {
    for (const c of clients) { try { c.ws.terminate(); } catch { /* gone */ } }
    if (srv) await srv.stop('SIGKILL').catch(() => {});
  });

  it('50 clients sending continuously through two ConfigMap updates: no connection closed, no message lost or duplicated, each handled wholly by one version, the new one visible within 2 s', T, async (t) => {
    // the layout kubelet leaves: ..data -> ..YYYY_MM_DD_hh_mm_ss.N, per-key symlinks through ..data
    const dataTarget = fs.readlinkSync(path.join(cm.dir, '..data'));
    assert.match(dataTarget, /^\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.\d+$/);
    assert.equal(fs.readlinkSync(path.join(cm.dir, 'policy.lua')), '..data/policy.lua');
    assert.equal(fs.readlinkSync(path.join(cm.dir, 'tag.lua')), '..data/tag.lua');

    const v1 = (await readyz(srv.port)).body.policy.version;
    assert.match(v1, /^[0-9a-f]{64}$/);

    const ROOMS = 5, PER_ROOM = 10;
    const rooms = Array.from({ length: ROOMS }, (_, i) => `load-${i}`);
    for (let i = 0; i < ROOMS * PER_ROOM; i++) {
      clients.push(await openLoadClient(srv.port, i, rooms[i % ROOMS]));
    }
    for (const c of clients) assert.equal(c.welcome.policy, v1, 'welcome.policy is the live version');
    const roomMembers = (room) => clients.filter((c) => c.room === room);
    const seenTag = (tag) => clients.some((c) => c.msgs.some((m) => m.tag === tag));
    const everyRoomSaw = (tag) => rooms.every((r) => roomMembers(r)[0].msgs.some((m) => m.tag === tag));

    // continuous load: every client sends one msg every 40 ms (50 clients: ~1250 msg/s in, x10 out)
    let sending = true;
    const timer = setInterval(() => { if (sending) for (const c of clients) c.send(); }, 40);
    try {
      await waitFor(() => rooms.every((r) => roomMembers(r)[0].msgs.filter((m) => m.tag === 'v1').length >= 20),
        { timeoutMs: 10000, what: 'v1 traffic in every room' });
      await sleep(1000);                 // a second of steady v1 traffic

      // update 1: only tag.lua changes (v2)
      let mark = srv.logs.length;
      const u1 = cm.write({ 'policy.lua': TAGGER['policy.lua'], 'tag.lua': tagFile('v2') });
      await waitFor(() => seenTag('v2'), { timeoutMs: 2000, what: 'a message tagged v2 within 2 s of the ..data swap' });
      const r1 = await logAfter(srv, mark, isReloaded, 5000, '"policy reloaded" after update 1');
      assert.equal(r1.previous, v1);
      assert.notEqual(r1.version, v1);
      const v2 = r1.version;
      await waitFor(() => everyRoomSaw('v2'), { timeoutMs: 5000, what: 'v2 messages in every room' });
      await sleep(500);                  // steady v2 traffic before the next update
      assert.ok(!fs.existsSync(path.join(cm.dir, dataTarget)), 'the old timestamped directory is gone');

      // update 2: a new key appears (extra.lua, required by the new tag.lua): its symlink is
      // created only after the swap, as kubelet does
      mark = srv.logs.length;
      const u2 = cm.write({
        'policy.lua': TAGGER['policy.lua'],
        'tag.lua': '-- e2e fixture: generation 3 needs a new key\nlocal extra = require "extra"\nreturn { name = "v3" .. extra.suffix }\n',
        'extra.lua': 'return { suffix = "+extra" }\n',
      });
      await waitFor(() => seenTag('v3+extra'), { timeoutMs: 2000, what: 'a message tagged v3+extra within 2 s of the ..data swap' });
      const r2 = await logAfter(srv, mark, (o) => isReloaded(o) && o.previous === v2, 5000, '"policy reloaded" after update 2');
      const v3 = r2.version;
      await waitFor(() => everyRoomSaw('v3+extra'), { timeoutMs: 5000, what: 'v3 messages in every room' });
      assert.equal(fs.readlinkSync(path.join(cm.dir, 'extra.lua')), '..data/extra.lua');
      assert.deepEqual(fs.readdirSync(cm.dir).filter((n) => n.startsWith('..') && n !== '..data'), [u2.tsDir],
        'only the live timestamped directory is left');
      assert.ok(u1.swappedAt <= u2.swappedAt);

      await sleep(500);                  // a little more v3 traffic
      sending = false;
      clearInterval(timer);

      // every message acked once; every member saw every message of its room once
      const totalSent = clients.reduce((a, c) => a + c.sent.size, 0);
      await waitFor(() => clients.every((c) => c.acks.size === c.sent.size || c.closeInfo || c.errors.length),
        { timeoutMs: 15000, what: `acks for all ${totalSent} messages` });
      const perRoom = new Map(rooms.map((r) => [r, roomMembers(r).reduce((a, c) => a + c.sent.size, 0)]));
      await waitFor(() => clients.every((c) => c.msgs.length >= perRoom.get(c.room) || c.closeInfo),
        { timeoutMs: 15000, what: 'every member to receive every message of its room' });
      await sleep(200);                  // anything extra (a duplicate) would arrive now

      for (const c of clients) {
        assert.equal(c.closeInfo, null, `client ${c.idx} was closed: ${JSON.stringify(c.closeInfo)}`);
        assert.equal(c.ws.readyState, WebSocket.OPEN, `client ${c.idx} still open`);
        assert.deepEqual(c.errors, [], `client ${c.idx} got no error frame`);
        assert.deepEqual(c.other, [], `client ${c.idx} got nothing unexpected`);
        for (const [cid] of c.sent) {
          const ids = c.acks.get(cid);
          assert.ok(ids, `client ${c.idx}: ${cid} acked`);
          assert.equal(ids.length, 1, `client ${c.idx}: ${cid} acked once, got ${JSON.stringify(ids)}`);
        }
        assert.equal(c.acks.size, c.sent.size, `client ${c.idx}: no ack for a cid never sent`);
      }

      const order = ['v1', 'v2', 'v3+extra'];
      for (const room of rooms) {
        const members = roomMembers(room);
        const n = perRoom.get(room);
        // what the senders were told (ack id -> text)
        const byId = new Map();
        for (const c of members) for (const [cid, text] of c.sent) {
          const id = c.acks.get(cid)[0];
          assert.ok(!byId.has(id), `${room}: ack id ${id} given twice`);
          byId.set(id, { text, from: c.welcome.id });
        }
        assert.equal(byId.size, n);
        let reference = null;
        for (const c of members) {
          const seqs = c.msgs.map((m) => m.seq).sort((a, b) => a - b);
          assert.equal(c.msgs.length, n, `${room}: member ${c.idx} received ${c.msgs.length} of ${n} messages`);
          assert.equal(new Set(seqs).size, n, `${room}: member ${c.idx} got a duplicate`);
          assert.equal(seqs[0], 1, `${room}: sequence starts at 1`);
          assert.equal(seqs[n - 1], n, `${room}: no gap in the sequence`);
          assert.equal(new Set(c.msgs.map((m) => m.epoch)).size, 1, `${room}: one epoch`);
          for (const m of c.msgs) {
            const want = byId.get(m.id);
            assert.ok(want, `${room}: ${m.id} was acked to its sender`);
            assert.equal(m.text, want.text);
            assert.equal(m.fromId, want.from);
            assert.ok(order.includes(m.tag), `${room}: ${m.id} carries a known tag, got ${JSON.stringify(m.tag)}`);
          }
          // arrival order is seq order, and the tags never go back to an older version
          const arrival = c.msgs.map((m) => m.seq);
          assert.deepEqual(arrival, [...arrival].sort((a, b) => a - b), `${room}: member ${c.idx} got messages in order`);
          const gens = c.msgs.map((m) => order.indexOf(m.tag));
          for (let i = 1; i < gens.length; i++) {
            assert.ok(gens[i] >= gens[i - 1], `${room}: ${c.msgs[i].id} tagged ${c.msgs[i].tag} after ${c.msgs[i - 1].tag}`);
          }
          const view = c.msgs.map((m) => `${m.id}=${m.tag}`).join(',');
          if (reference === null) reference = view;
          else assert.equal(view, reference, `${room}: every member saw the same messages with the same tags`);
        }
      }

      const tags = {};
      for (const c of clients) for (const m of c.msgs) tags[m.tag] = (tags[m.tag] || 0) + 1;
      t.diagnostic(`${totalSent} messages sent, ${clients.reduce((a, c) => a + c.msgs.length, 0)} delivered; by tag: ${JSON.stringify(tags)}`);

      // the gateway agrees: three good loads, the live version everywhere
      const counts = await reloadCounts(srv.port);
      assert.ok(counts.ok >= 3, `chatgw_policy_reloads_total{result="ok"} >= 3, got ${counts.ok}`);
      assert.deepEqual(counts.info, [v3], 'chatgw_policy_info{version} is the live version');
      const rz = await readyz(srv.port);
      assert.equal(rz.body.policy.version, v3);
      assert.equal(rz.body.policy.last_error, null);
      assert.equal(rz.body.checks.policy, 'ok');
      assert.equal(metricSum(counts.samples, 'chatgw_policy_errors_total'), 0, 'no hook failed');
      const late = await chatClient(srv.port, '/ws');
      assert.equal(late.welcome.policy, v3, 'a new connection is welcomed with the new version');
      await late.close();
    } finally {
      sending = false;
      clearInterval(timer);
    }
  });

  it('an update with identical contents (a new ..data directory, same files) changes nothing', T, async () => {
    const before = await reloadCounts(srv.port);
    const version = (await readyz(srv.port)).body.policy.version;
    const mark = srv.logs.length;
    cm.write(cm.current());
    await waitFor(async () => (await reloadCounts(srv.port)).unchanged > before.unchanged,
      { timeoutMs: 5000, what: 'chatgw_policy_reloads_total{result="unchanged"} to grow' });
    const after = await reloadCounts(srv.port);
    assert.equal(after.ok, before.ok, 'no new version loaded');
    assert.equal(after.failed, before.failed);
    assert.equal((await readyz(srv.port)).body.policy.version, version);
    assert.equal(srv.logs.slice(mark).filter(isReloaded).length, 0, 'no "policy reloaded" line');
    for (const c of clients) assert.equal(c.closeInfo, null, `client ${c.idx} still connected`);
  });
});

// ---------------------------------------------------------------------------------------------

describe('policy reload: rejected policies leave the last good one serving', () => {
  let srv, cm, a, b;
  let good;                    // the version serving
  const room = 'rejects';

  /** a says something; resolves the tag b sees on it. */
  async function tagNow() {
    const { id } = await a.say(room, `probe ${Date.now()} ${Math.random()}`);
    const m = await b.next((x) => x.type === 'msg' && x.id === id, 3000, `msg ${id} at b`);
    return m.tag;
  }

  before(async () => {
    cm = AtomicWriterDir.create(TAGGER, 'chatgw-e2e-reject-cm-');
    // A generous time guard: the memory bomb must meet the memory cap, not the clock, on a
    // loaded machine (first touches of its ~10 MB are slow); the loops still time out.
    srv = await startServer(['--scripts-dir', cm.dir, ...FAST, '--policy-timeout-ms', '1000']);
    a = await chatClient(srv.port, `/ws?room=${room}&name=alice`);
    b = await chatClient(srv.port, `/ws?room=${room}&name=bob`);
    await a.next('room');
    await b.next('room');
    good = (await readyz(srv.port)).body.policy.version;
    assert.equal(await tagNow(), 'v1');
  });
  after(async () => {
    for (const c of [a, b]) c?.terminate();
    if (srv) await srv.stop('SIGKILL').catch(() => {});
  });

  const cases = [
    { name: 'a syntax error', file: 'policy.lua', fixture: 'rejected/syntax_error.lua', where: 'policy.lua', re: /unexpected symbol/ },
    { name: 'a syntax error in a required module', file: 'tag.lua', fixture: 'rejected/module_syntax_error.lua', where: 'tag.lua', re: /unexpected symbol/ },
    { name: 'an error inside self_test', file: 'policy.lua', fixture: 'rejected/self_test_error.lua', where: 'policy.lua', re: /self_test refuses this policy/, hook: 'self_test', kind: 'error' },
    { name: 'self_test returning false', file: 'policy.lua', fixture: 'rejected/self_test_false.lua', where: 'policy.lua', re: /self_test returned false.*settings are wrong/, noLine: true },
    { name: 'an endless loop at load time', file: 'policy.lua', fixture: 'rejected/load_loop.lua', where: 'policy.lua', re: /policy timeout/ },
    { name: 'an endless loop inside self_test', file: 'policy.lua', fixture: 'rejected/self_test_loop.lua', where: 'policy.lua', re: /policy timeout/, hook: 'self_test', kind: 'timeout' },
    { name: 'a memory bomb at load time', file: 'policy.lua', fixture: 'rejected/load_memory.lua', where: 'policy.lua', re: /memory/, noLine: true },  // Lua gives memory errors no position
    { name: 'an unknown hook name (a typo)', file: 'policy.lua', fixture: 'rejected/unknown_hook.lua', where: 'policy.lua', re: /on_mesage/, noLine: true },
    { name: 'io touched at load time (sandbox)', file: 'policy.lua', fixture: 'rejected/sandbox_at_load.lua', where: 'policy.lua', re: /io/ },
  ];

  for (const tc of cases) {
    it(`${tc.name} is rejected: the old policy keeps serving, /readyz and /metrics show the error`, T, async () => {
      const text = fixture(tc.fixture);
      const line = tc.noLine ? null : lineOf(text, '-- LINE');
      const before = await reloadCounts(srv.port);
      const errBefore = tc.hook ? metricSum(before.samples, 'chatgw_policy_errors_total', { hook: tc.hook, kind: tc.kind }) : 0;
      const mark = srv.logs.length;
      cm.write({ ...TAGGER, [tc.file]: text });

      const logged = await logAfter(srv, mark, isReloadFailed, 5000, `"policy reload failed" for ${tc.name}`);
      assert.equal(logged.version, good, 'the log names the version that keeps serving');
      assert.match(String(logged.error), tc.re);

      const rz = await readyz(srv.port);
      assert.equal(rz.status, 200, 'a failed reload does not fail readiness');
      assert.equal(rz.body.status, 'ready');
      assert.equal(rz.body.policy.version, good, 'the version did not change');
      assert.equal(rz.body.checks.policy, 'reload_failed');
      const err = String(rz.body.policy.last_error);
      if (line !== null) {
        assert.match(err, new RegExp(`^${tc.where.replace('.', '\\.')}:${line}: `), `last_error points at ${tc.where}:${line}: ${err}`);
      } else {
        assert.match(err, /^[\w.]+\.lua:(\d+:)? ?/, `last_error names the file: ${err}`);
      }
      assert.match(err, tc.re);
      assert.ok(!err.includes('\n'), 'last_error is one line');

      const after = await reloadCounts(srv.port);
      assert.ok(after.failed >= before.failed + 1, `chatgw_policy_reloads_total{result="failed"} grew: ${before.failed} -> ${after.failed}`);
      assert.equal(after.ok, before.ok, 'no reload succeeded');
      assert.deepEqual(after.info, [good], 'chatgw_policy_info still shows the serving version');
      if (tc.hook) {
        const errAfter = metricSum(after.samples, 'chatgw_policy_errors_total', { hook: tc.hook, kind: tc.kind });
        assert.ok(errAfter >= errBefore + 1, `chatgw_policy_errors_total{hook="${tc.hook}",kind="${tc.kind}"} grew`);
      }

      // the last good policy still handles messages, and new connections are welcomed with it
      assert.equal(await tagNow(), 'v1', 'messages are still tagged by the serving policy');
      const c = await chatClient(srv.port, '/ws');
      assert.equal(c.welcome.policy, good);
      await c.close();
      assert.ok(a.isOpen && b.isOpen, 'existing connections stay up');
      assert.equal(srv.exitInfo, null, 'the process keeps running');
    });
  }

  it('reverting to the serving policy clears the error (the directory matches what serves)', T, async () => {
    // the directory holds a rejected policy now; put back exactly what serves
    assert.equal((await readyz(srv.port)).body.checks.policy, 'reload_failed');
    const before = await reloadCounts(srv.port);
    cm.write(TAGGER);
    await waitFor(async () => {
      const c = await reloadCounts(srv.port);
      return c.unchanged + c.ok + c.failed > before.unchanged + before.ok + before.failed;
    }, { timeoutMs: 5000, what: 'the reload attempt after the revert' });
    const rz = await readyz(srv.port);
    assert.equal(rz.body.policy.version, good);
    assert.equal(rz.body.policy.last_error, null,
      `after a revert to the serving sources /readyz must not keep the stale error: ${rz.body.policy.last_error}`);
    assert.equal(rz.body.checks.policy, 'ok');
  });

  it('a fixed policy is loaded and clears the error', T, async () => {
    cm.write({ ...TAGGER, 'policy.lua': fixture('rejected/syntax_error.lua') });
    await waitFor(async () => (await readyz(srv.port)).body.checks.policy === 'reload_failed',
      { timeoutMs: 5000, what: 'the syntax error to be rejected' });
    const mark = srv.logs.length;
    cm.write({ ...TAGGER, 'tag.lua': tagFile('v2-fixed') });
    const r = await logAfter(srv, mark, isReloaded, 5000, '"policy reloaded" after the fix');
    assert.equal(r.previous, good);
    const rz = await readyz(srv.port);
    assert.equal(rz.body.policy.version, r.version);
    assert.equal(rz.body.policy.last_error, null);
    assert.equal(rz.body.checks.policy, 'ok');
    assert.equal(await tagNow(), 'v2-fixed');
    assert.ok(a.isOpen && b.isOpen, 'existing connections stay up');
  });
});

// ---------------------------------------------------------------------------------------------

describe('policy reload: what survives it', () => {
  let srv, cm;
  after(async () => { if (srv) await srv.stop('SIGKILL').catch(() => {}); });

  it('gw.store and gw.limit keep their state across a reload; Lua locals start over in the fresh VM', T, async () => {
    const files = { 'policy.lua': fixture('stateful/policy.lua'), 'gen.lua': fixture('stateful/gen.lua') };
    cm = AtomicWriterDir.create(files, 'chatgw-e2e-stateful-cm-');
    srv = await startServer(['--scripts-dir', cm.dir, ...FAST]);
    const c = await chatClient(srv.port, '/ws?room=state');
    try {
      await c.next('room');
      const say = async (text) => {
        const { id } = await c.say('state', text);
        return c.next((m) => m.type === 'msg' && m.id === id);
      };
      const seen = [];
      for (let i = 1; i <= 4; i++) seen.push(await say(`before ${i}`));
      assert.deepEqual(seen.map((m) => [m.gen, m.stored, m.allowed, m.vm_calls]), [
        ['g1', 1, true, 1], ['g1', 2, true, 2], ['g1', 3, true, 3], ['g1', 4, false, 4],
      ]);
      const mark = srv.logs.length;
      cm.write({ ...files, 'gen.lua': '-- e2e fixture: generation 2\nreturn { name = "g2" }\n' });
      await logAfter(srv, mark, isReloaded, 5000, '"policy reloaded"');
      const m = await say('after');
      assert.equal(m.gen, 'g2', 'the new policy handled it');
      assert.equal(m.stored, 5, 'gw.store kept counting');
      assert.equal(m.allowed, false, 'the gw.limit bucket is still empty');
      assert.equal(m.vm_calls, 1, 'module state is per VM');
    } finally {
      await c.close().catch(() => c.terminate());
    }
  });
});

// ---------------------------------------------------------------------------------------------

describe('policy reload: triggers', () => {
  const servers = [];
  after(async () => { for (const s of servers) await s.stop('SIGKILL').catch(() => {}); });

  /**
   * A scripts dir whose keys are symlinks to files in another directory: editing a target in
   * place changes what the policy reads without any event in the watched directory (what a
   * single-file watch would miss), so only SIGHUP or polling can pick it up.
   */
  function behindSymlinks() {
    const root = tempDir('chatgw-e2e-trigger-');
    const store = writeFiles(path.join(root, 'store'), TAGGER);
    const dir = path.join(root, 'scripts');
    fs.mkdirSync(dir);
    for (const name of Object.keys(TAGGER)) fs.symlinkSync(path.join(store, name), path.join(dir, name));
    const edit = (name, text) => fs.writeFileSync(path.join(store, name), text);   // in place
    return { dir, edit };
  }

  async function tagged(srv, tag) {
    const c = await chatClient(srv.port, '/ws?room=trig');
    try {
      await c.next('room');
      const { id } = await c.say('trig', `hello ${Date.now()}`);
      const m = await c.next((x) => x.type === 'msg' && x.id === id);
      assert.equal(m.tag, tag);
    } finally { await c.close().catch(() => c.terminate()); }
  }

  it('SIGHUP reloads a change the directory watch cannot see', T, async () => {
    const { dir, edit } = behindSymlinks();
    const srv = await startServer(['--scripts-dir', dir]);
    servers.push(srv);
    const v1 = (await readyz(srv.port)).body.policy.version;
    await tagged(srv, 'v1');
    const mark = srv.logs.length;
    edit('tag.lua', tagFile('v2-hup'));
    srv.proc.kill('SIGHUP');
    const r = await logAfter(srv, mark, isReloaded, 5000, '"policy reloaded" after SIGHUP');
    assert.equal(r.trigger, 'SIGHUP');
    assert.equal(r.previous, v1);
    assert.equal((await readyz(srv.port)).body.policy.version, r.version);
    await tagged(srv, 'v2-hup');
  });

  it('--reload-poll-ms reloads it without a signal', T, async () => {
    const { dir, edit } = behindSymlinks();
    const srv = await startServer(['--scripts-dir', dir, '--reload-poll-ms', '250']);
    servers.push(srv);
    const mark = srv.logs.length;
    edit('tag.lua', tagFile('v2-poll'));
    const r = await logAfter(srv, mark, isReloaded, 5000, '"policy reloaded" by polling');
    assert.equal(r.trigger, 'poll');
    await tagged(srv, 'v2-poll');
  });

  it('a plain file replaced in the directory reloads through the directory watch', T, async () => {
    const root = tempDir('chatgw-e2e-plain-');
    writeFiles(root, TAGGER);
    const srv = await startServer(['--scripts-dir', root]);
    servers.push(srv);
    const mark = srv.logs.length;
    writeFiles(root, { 'tag.lua': tagFile('v2-plain') });
    const r = await logAfter(srv, mark, isReloaded, 5000, '"policy reloaded" by the directory watch');
    assert.equal(r.trigger, 'fs_event');
    await tagged(srv, 'v2-plain');
    const { response } = await scrape(srv.port);
    assert.match(response.text, new RegExp(`chatgw_policy_info\\{version="${r.version}"\\} 1`));
    assert.equal((await httpGet(srv.port, '/readyz')).json().policy.version, r.version);
  });
});
