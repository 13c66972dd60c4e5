// Voice signalling through chatgw to Janus (janus_url), against a scripted Janus: a small HTTP
// server speaking the subset of Janus's HTTP API that chatgw uses (sessions, AudioBridge
// create/join/mute/listparticipants/destroy, trickle, detach, the long poll). It records every
// request, so the test sees what chatgw asks of the mixer: the room id, the join, the mute by
// participant id, the clean-up. tests/voice runs the same paths with a real Janus and browsers.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { HOST, WebSocket, httpGet, startServer, waitFor, withTimeout } from './lib.mjs';
import { redisCluster, startReplica } from './redis_lib.mjs';

class FakeJanus {
  /** expireMs: like Janus's session_timeout, a session without a POST (a keepalive, a request)
   * for that long is gone; the long poll does not count, as in Janus. */
  constructor({ expireMs = 0 } = {}) {
    this.expireMs = expireMs;
    this.requests = [];            // {path, body}
    this.sessions = new Map();     // id -> {events: [], waiters: []}
    this.nextId = 1000;
    this.server = null;
    this.port = 0;
  }

  async start(port = 0) {
    this.server = http.createServer((req, res) => this.handle(req, res));
    this.sockets = new Set();
    this.server.on('connection', (s) => { this.sockets.add(s); s.on('close', () => this.sockets.delete(s)); });
    await new Promise((r) => this.server.listen(port, HOST, r));
    this.port = this.server.address().port;
    this.url = `http://${HOST}:${this.port}/janus`;
  }

  /** Janus goes away: every connection cut, sessions forgotten (as after a restart). */
  async stop() {
    for (const s of this.sockets) s.destroy();
    await new Promise((r) => this.server.close(r));
    for (const s of this.sessions.values()) for (const w of s.waiters) w();
    this.sessions.clear();
  }

  push(sid, ev) {
    const s = this.sessions.get(sid);
    if (!s) return;
    s.events.push(ev);
    for (const w of s.waiters.splice(0)) w();
  }

  handle(req, res) {
    const parts = req.url.split('?')[0].split('/').filter(Boolean);   // janus, session?, handle?
    const reply = (o) => { res.setHeader('Content-Type', 'application/json'); res.end(JSON.stringify(o)); };
    const sid = parts[1] ? Number(parts[1]) : 0;
    const hid = parts[2] ? Number(parts[2]) : 0;
    const stale = this.sessions.get(sid);
    if (stale && this.expireMs && Date.now() - stale.last > this.expireMs) this.sessions.delete(sid);
    if (req.method === 'GET') {
      const s = this.sessions.get(sid);
      if (!s) return reply({ janus: 'error', error: { code: 458, reason: 'No such session' } });
      const send = () => { const evs = s.events.splice(0); reply(evs.length ? evs : [{ janus: 'keepalive' }]); };
      if (s.events.length) return send();
      const t = setTimeout(() => { s.waiters = s.waiters.filter((w) => w !== go); send(); }, 1000);
      const go = () => { clearTimeout(t); if (!res.writableEnded) send(); };
      s.waiters.push(go);
      return undefined;
    }
    let text = '';
    req.on('data', (d) => { text += d; });
    req.on('end', () => {
      const body = JSON.parse(text);
      this.requests.push({ parts, body });
      const txn = body.transaction;
      if (body.janus === 'create') {
        const id = this.nextId++;
        this.sessions.set(id, { events: [], waiters: [], last: Date.now() });
        return reply({ janus: 'success', transaction: txn, data: { id } });
      }
      if (!this.sessions.has(sid)) return reply({ janus: 'error', transaction: txn, error: { code: 458, reason: 'No such session' } });
      this.sessions.get(sid).last = Date.now();
      if (body.janus === 'keepalive') return reply({ janus: 'ack', transaction: txn, session_id: sid });
      if (body.janus === 'attach') return reply({ janus: 'success', transaction: txn, data: { id: this.nextId++ } });
      if (body.janus === 'detach' || body.janus === 'trickle') return reply({ janus: body.janus === 'trickle' ? 'ack' : 'success', transaction: txn });
      if (body.janus !== 'message') return reply({ janus: 'error', transaction: txn, error: { code: 456, reason: 'bad' } });
      const b = body.body;
      const data = (d) => reply({ janus: 'success', transaction: txn, plugindata: { plugin: 'janus.plugin.audiobridge', data: d } });
      switch (b.request) {
      case 'create': return data({ audiobridge: 'created', room: b.room });
      case 'join': {
        reply({ janus: 'ack', transaction: txn });
        const pid = this.nextId++;
        setTimeout(() => this.push(sid, {
          janus: 'event', sender: hid,
          plugindata: { plugin: 'janus.plugin.audiobridge', data: { audiobridge: 'joined', room: b.room, id: pid, participants: [] } },
          jsep: { type: 'answer', sdp: `v=0\r\no=fake ${pid}\r\n` },
        }), 20);
        this.lastJoin = { sid, hid, pid, room: b.room, display: b.display };
        return undefined;
      }
      case 'mute': case 'unmute': return data({ audiobridge: 'success' });
      case 'listparticipants': return data({ audiobridge: 'participants', room: b.room, participants: [] });
      case 'destroy': return data({ audiobridge: 'destroyed', room: b.room });
      default: return data({ audiobridge: 'event', error_code: 499, error: 'unknown' });
      }
    });
    return undefined;
  }

  plugin(request) { return this.requests.filter((r) => r.body.janus === 'message' && r.body.body.request === request).map((r) => r.body.body); }
}

function client(port, room, name) {
  const ws = new WebSocket(`ws://${HOST}:${port}/ws?room=${room}&name=${name}`);
  const frames = [];
  ws.on('message', (d) => frames.push(JSON.parse(String(d))));
  const c = {
    ws,
    frames,
    send: (o) => ws.send(JSON.stringify(o)),
    wait: (pred, what) => waitFor(() => frames.find(pred), { timeoutMs: 8000, what }).then(() => frames.find(pred)),
  };
  return withTimeout(new Promise((r, j) => { ws.once('open', r); ws.once('error', j); }), 5000, 'ws open')
    .then(() => c.wait((f) => f.type === 'room', 'room snapshot'))
    .then(() => { c.id = frames.find((f) => f.type === 'welcome').id; return c; });
}

const OFFER = { type: 'offer', sdp: 'v=0\r\no=browser 1 1 IN IP4 127.0.0.1\r\n' };
const readyz = async (port) => JSON.parse((await httpGet(port, '/readyz')).body.toString());

describe('voice through Janus: chatgw\'s side', () => {
  const janus = new FakeJanus({ expireMs: 1500 });
  let srv, a, b;

  before(async () => {
    await janus.start();
    srv = await startServer(['--janus-url', janus.url, '--janus-timeout-ms', '1000', '--janus-keepalive-ms', '300']);
    await waitFor(async () => (await readyz(srv.port)).janus === 'up', { timeoutMs: 8000, what: 'janus up' });
    a = await client(srv.port, 'voice-1', 'alice');
    b = await client(srv.port, 'voice-1', 'bob');
  });
  after(async () => {
    a?.ws.close();
    b?.ws.close();
    await srv?.stop();
    await janus.stop().catch(() => {});
  });

  it('keeps its session alive with keepalives (the long poll alone would let it expire)', async () => {
    const creates = janus.requests.filter((r) => r.body.janus === 'create').length;
    await waitFor(() => janus.requests.filter((r) => r.body.janus === 'keepalive').length >= 8,
      { timeoutMs: 8000, what: 'keepalives' });
    assert.equal(janus.requests.filter((r) => r.body.janus === 'create').length, creates, 'no new session');
    assert.equal((await readyz(srv.port)).janus, 'up');
  });

  it('offers the mixer in /api/config', async () => {
    const cfg = JSON.parse((await httpGet(srv.port, '/api/config')).body.toString());
    assert.equal(cfg.voice, 'sfu');
  });

  it('voice_join: the room made, the offer joined, the answer and the voice event back', async () => {
    a.send({ type: 'voice_join', room: 'voice-1', cid: 'j1', data: OFFER });
    const ans = await a.wait((f) => f.type === 'voice_answer', 'voice_answer');
    assert.equal(ans.room, 'voice-1');
    assert.equal(ans.data.type, 'answer');
    assert.match(ans.data.sdp, /o=fake/);
    const [create] = janus.plugin('create');
    assert.ok(Number.isSafeInteger(create.room) && create.room > 0, 'a numeric room id');
    const [join] = janus.plugin('join');
    assert.equal(join.room, create.room);
    assert.equal(join.display, a.id, 'the member joins under its chatgw id');
    const joinReq = janus.requests.find((r) => r.body.body?.request === 'join');
    assert.equal(joinReq.body.jsep.sdp, OFFER.sdp, 'the browser\'s offer reaches Janus unchanged');
    const ev = await b.wait((f) => f.type === 'voice' && f.member === a.id, 'voice event on bob');
    assert.equal(ev.on, true);
  });

  it('a trickled candidate goes to Janus on the member\'s handle', async () => {
    const cand = { candidate: 'candidate:1 1 udp 2122260223 10.0.0.1 5000 typ host', sdpMid: '0', sdpMLineIndex: 0 };
    a.send({ type: 'voice_trickle', room: 'voice-1', data: cand });
    await waitFor(() => janus.requests.find((r) => r.body.janus === 'trickle' && r.body.candidate?.candidate === cand.candidate),
      { what: 'trickle at janus' });
    a.send({ type: 'voice_trickle', room: 'voice-1', data: { nope: 1 } });
    const err = await a.wait((f) => f.type === 'error' && f.code === 'bad_field', 'bad candidate refused');
    assert.deepEqual(err.ref, { type: 'voice_join', room: 'voice-1' });
  });

  it('mute and unmute are carried out in the mixer, by participant id', async () => {
    const pid = janus.lastJoin.pid;
    a.send({ type: 'mute', room: 'voice-1' });
    await waitFor(() => janus.plugin('mute').some((m) => m.id === pid), { what: 'mute at janus' });
    a.send({ type: 'unmute', room: 'voice-1' });
    await waitFor(() => janus.plugin('unmute').some((m) => m.id === pid), { what: 'unmute at janus' });
  });

  it('a bad offer is refused with bad_field; voice_join outside a room with not_in_room', async () => {
    b.send({ type: 'voice_join', room: 'voice-1', cid: 'bad', data: { type: 'answer', sdp: 'x' } });
    const err = await b.wait((f) => f.type === 'error' && f.ref === 'bad', 'bad offer');
    assert.equal(err.code, 'bad_field');
    b.send({ type: 'voice_join', room: 'voice-1', cid: 'big', data: { type: 'offer', sdp: 'a'.repeat(70000) } });
    assert.equal((await b.wait((f) => f.type === 'error' && f.ref === 'big', 'big offer')).code, 'too_large');
    b.send({ type: 'voice_join', room: 'elsewhere', cid: 'nr', data: OFFER });
    assert.equal((await b.wait((f) => f.type === 'error' && f.ref === 'nr', 'not in room')).code, 'not_in_room');
  });

  it('leaving voice detaches the handle and destroys the emptied room', async () => {
    const room = janus.plugin('create')[0].room;
    a.send({ type: 'voice_leave', room: 'voice-1' });
    await waitFor(() => janus.requests.some((r) => r.body.janus === 'detach'), { what: 'detach' });
    await waitFor(() => janus.plugin('destroy').some((d) => d.room === room), { what: 'destroy' });
    const ev = await b.wait((f) => f.type === 'voice' && f.member === a.id && f.on === false, 'voice off on bob');
    assert.equal(ev.on, false);
  });

  it('Janus down: voice gets voice_lost / voice_unavailable, text goes on, readiness says so; back: up again', async () => {
    a.send({ type: 'voice_join', room: 'voice-1', data: OFFER });
    await a.wait((f) => f.type === 'voice_answer' && a.frames.filter((x) => x.type === 'voice_answer').length === 2, 'second answer');
    const port = janus.port;
    await janus.stop();
    const lost = await a.wait((f) => f.type === 'voice_lost', 'voice_lost');
    assert.equal(lost.code, 'voice_lost');
    await waitFor(async () => (await readyz(srv.port)).janus === 'down', { timeoutMs: 8000, what: 'janus down in readyz' });
    const r = await httpGet(srv.port, '/readyz');
    assert.equal(r.status, 200, 'Janus down fails no readiness');
    b.send({ type: 'voice_join', room: 'voice-1', cid: 'down', data: OFFER });
    assert.equal((await b.wait((f) => f.type === 'error' && f.ref === 'down', 'refusal')).code, 'voice_unavailable');
    b.send({ type: 'msg', room: 'voice-1', text: 'text without janus' });
    await a.wait((f) => f.type === 'msg' && f.text === 'text without janus', 'text delivered');
    await janus.start(port);
    await waitFor(async () => (await readyz(srv.port)).janus === 'up', { timeoutMs: 10000, what: 'janus up again' });
    a.send({ type: 'voice_join', room: 'voice-1', data: OFFER });
    await a.wait((f) => f.type === 'voice_answer' && a.frames.filter((x) => x.type === 'voice_answer').length === 3, 'answer after restart');
    const metrics = (await httpGet(srv.port, '/metrics')).body.toString();
    assert.match(metrics, /^chatgw_janus_up 1$/m);
    assert.match(metrics, /^chatgw_voice_lost_total [1-9]/m);
  });
});

describe('voice without janus_url', () => {
  let srv, a;
  before(async () => {
    srv = await startServer([]);
    a = await client(srv.port, 'plain', 'carol');
  });
  after(async () => {
    a?.ws.close();
    await srv?.stop();
  });

  it('stays the mesh: /api/config says so, voice_join answers voice_unavailable, readyz has no janus', async () => {
    const cfg = JSON.parse((await httpGet(srv.port, '/api/config')).body.toString());
    assert.equal(cfg.voice, 'mesh');
    a.send({ type: 'voice_join', room: 'plain', cid: 'm', data: OFFER });
    assert.equal((await a.wait((f) => f.type === 'error' && f.ref === 'm', 'refusal')).code, 'voice_unavailable');
    assert.equal((await readyz(srv.port)).janus, undefined);
  });

  it('refuses a janus_url that is not http(s) at start', async () => {
    await assert.rejects(startServer(['--janus-url', 'ws://janus:8188']), /janus_url/);
  });
});

describe('voice and a policy of its own: refusal codes and a moderator\'s mute in the mixer', () => {
  const janus = new FakeJanus();
  let srv, dir, mod, alice, mallory;

  before(async () => {
    await janus.start();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-voice-policy-'));
    fs.writeFileSync(path.join(dir, 'policy.lua'), `
return {
  message_types = { "voice_join", "modmute" },
  on_message = function(conn, room, msg)
    if msg.type == "voice_join" then
      if conn.name == "mallory" then return nil, "voice_banned" end
      return true
    end
    gw.mute(msg.target, room, msg.on ~= false)   -- modmute {room, target, on}
    return false
  end,
}
`);
    srv = await startServer(['--janus-url', janus.url, '--scripts-dir', dir]);
    await waitFor(async () => (await readyz(srv.port)).janus === 'up', { timeoutMs: 8000, what: 'janus up' });
    alice = await client(srv.port, 'stage', 'alice');
    mallory = await client(srv.port, 'stage', 'mallory');
    mod = await client(srv.port, 'stage', 'mod');
  });
  after(async () => {
    for (const c of [alice, mallory, mod]) c?.ws.close();
    await srv?.stop();
    await janus.stop().catch(() => {});
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('the policy refuses a voice join with its own code, before Janus hears of it', async () => {
    const joins = janus.plugin('join').length;
    mallory.send({ type: 'voice_join', room: 'stage', cid: 'mj', data: OFFER });
    const err = await mallory.wait((f) => f.type === 'error' && f.ref === 'mj', 'refusal');
    assert.equal(err.code, 'voice_banned');
    assert.equal(janus.plugin('join').length, joins);
  });

  it('gw.mute from the policy mutes the member in the mixer and tells everyone, the member too', async () => {
    alice.send({ type: 'voice_join', room: 'stage', data: OFFER });
    await alice.wait((f) => f.type === 'voice_answer', 'answer');
    const pid = janus.lastJoin.pid;
    mod.send({ type: 'modmute', room: 'stage', target: alice.id });
    await waitFor(() => janus.plugin('mute').some((m) => m.id === pid), { what: 'mute at janus' });
    const self = await alice.wait((f) => f.type === 'mute' && f.member.id === alice.id, 'alice told');
    assert.equal(self.member.muted, true);
    await mallory.wait((f) => f.type === 'mute' && f.member.id === alice.id, 'mallory told');
    mod.send({ type: 'modmute', room: 'stage', target: alice.id, on: false });
    await waitFor(() => janus.plugin('unmute').some((m) => m.id === pid), { what: 'unmute at janus' });
  });
});

describe('voice through one Janus from two replicas (Redis)', () => {
  const janus = new FakeJanus();
  let janusUp = false;
  const state = redisCluster(async (redis) => {
    if (!janusUp) { await janus.start(); janusUp = true; }
    return Promise.all(['va', 'vb'].map((n) => startReplica(redis.url, n, ['--janus-url', janus.url])));
  });
  after(async () => { await janus.stop().catch(() => {}); });

  it('both replicas meet in the same AudioBridge room, and voice events cross replicas', async () => {
    const [ra, rb] = state.reps;
    const alice = await client(ra.port, 'shared', 'alice');
    const bob = await client(rb.port, 'shared', 'bob');
    try {
      alice.send({ type: 'voice_join', room: 'shared', data: OFFER });
      await alice.wait((f) => f.type === 'voice_answer', 'alice answer');
      const ev = await bob.wait((f) => f.type === 'voice' && f.member === alice.id, 'voice event on the other replica');
      assert.equal(ev.on, true);
      bob.send({ type: 'voice_join', room: 'shared', data: OFFER });
      await bob.wait((f) => f.type === 'voice_answer', 'bob answer');
      const rooms = janus.plugin('create').map((c) => c.room);
      assert.equal(rooms.length, 2);
      assert.equal(rooms[0], rooms[1], 'one room id for one chat room, whichever replica asks');
      assert.deepEqual(janus.plugin('join').map((j) => j.room), [rooms[0], rooms[0]]);
    } finally {
      alice.ws.close();
      bob.ws.close();
    }
  });
});
