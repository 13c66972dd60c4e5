// The HTTP API next to the chat: POST /api/rooms/{id}/messages (bearer token), GET /api/stats,
// GET /api/rooms/{id}. Checked against what real chat clients on the same server see.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, chatClient, passthroughPolicyDir, httpRequest, httpGet, parseMsgId, waitFor,
} from './lib.mjs';

const T = { timeout: 30000 };
const TOKEN = 's3cret-token-for-e2e';
const FAST = ['--rate-msgs-per-sec', '100000', '--rate-burst', '100000'];

let policyDir;
before(() => { policyDir = passthroughPolicyDir(); });

let roomSeq = 0;
const uniqueRoom = (prefix = 'api') => `${prefix}-${process.pid}-${++roomSeq}`;

function clients() {
  const open = [];
  return {
    async open(port, p) { const c = await chatClient(port, p); open.push(c); return c; },
    async closeAll() { await Promise.all(open.splice(0).map((c) => c.close().catch(() => c.terminate()))); },
  };
}

const post = (port, room, body, headers = {}) => httpRequest(port, 'POST', `/api/rooms/${room}/messages`,
  { headers: { 'Content-Type': 'application/json', ...headers }, body });

function assertJsonError(r, status, what) {
  assert.equal(r.status, status, `${what}: status ${r.status} ${r.text}`);
  assert.match(r.headers['content-type'] || '', /application\/json/, `${what}: JSON error body`);
  const j = r.json();
  assert.equal(typeof j.error, 'string', `${what}: {"error": code}`);
  return j;
}

describe('api: publish with a token', () => {
  let srv;
  const cs = clients();
  before(async () => { srv = await startServer(['--scripts-dir', policyDir, ...FAST, '--api-token', TOKEN]); });
  after(async () => { await cs.closeAll(); if (srv) await srv.stop('SIGKILL').catch(() => {}); });

  it('POST with Authorization: Bearer <token> publishes into the room like any msg', T, async () => {
    const room = uniqueRoom('news');
    const a = await cs.open(srv.port, `/ws?room=${room}&name=reader`);
    const b = await cs.open(srv.port, `/ws?room=${room}&name=writer`);
    await a.next('room');
    await b.next('room');
    const prev = await b.say(room, 'before the announcement');

    const r = await post(srv.port, room, { text: 'server says hi' }, { Authorization: `Bearer ${TOKEN}` });
    assert.equal(r.status, 200, r.text);
    const j = r.json();
    assert.equal(j.room, room);
    const id = parseMsgId(j.id);
    assert.equal(id.epoch, parseMsgId(prev.id).epoch, 'same room sequence as client messages');
    assert.ok(id.seq > parseMsgId(prev.id).seq);
    for (const x of [a, b]) {
      const m = await x.next((m) => m.type === 'msg' && m.text === 'server says hi');
      assert.equal(m.id, j.id);
      assert.equal(m.room, room);
      assert.equal(typeof m.from?.name, 'string');
      assert.equal(typeof m.ts, 'number');
    }

    // "from" names the sender
    const r2 = await post(srv.port, room, { text: 'from the bot', from: 'newsbot' }, { Authorization: `Bearer ${TOKEN}` });
    assert.equal(r2.status, 200, r2.text);
    const m2 = await a.next((m) => m.type === 'msg' && m.text === 'from the bot');
    assert.equal(m2.from.name, 'newsbot');
    assert.equal(m2.id, r2.json().id);

    // it lands in the history like any message
    a.send({ type: 'history', room, since: prev.id });
    const h = await a.next('history');
    assert.deepEqual(h.messages.map((m) => m.id), [j.id, r2.json().id]);
  });

  it('401 without a valid token, and nothing is delivered', T, async () => {
    const room = uniqueRoom('locked');
    const a = await cs.open(srv.port, `/ws?room=${room}`);
    await a.next('room');
    const bad = [
      ['no Authorization', {}],
      ['wrong token', { Authorization: 'Bearer nope' }],
      ['token prefix', { Authorization: `Bearer ${TOKEN.slice(0, -1)}` }],
      ['token plus extra', { Authorization: `Bearer ${TOKEN}x` }],
      ['Basic scheme', { Authorization: `Basic ${Buffer.from(`x:${TOKEN}`).toString('base64')}` }],
      ['bare token', { Authorization: TOKEN }],
      ['empty bearer', { Authorization: 'Bearer ' }],
    ];
    for (const [what, headers] of bad) {
      const r = await post(srv.port, room, { text: `sneaky ${what}` }, headers);
      assertJsonError(r, 401, what);
    }
    assert.deepEqual(await a.none('msg', 300), [], 'no unauthorized message reached the room');
  });

  it('404 for an unknown room; 400 for a bad body; 405 for GET on the publish route', T, async () => {
    assertJsonError(await post(srv.port, uniqueRoom('ghost'), { text: 'anyone?' }, { Authorization: `Bearer ${TOKEN}` }),
      404, 'unknown room');
    const room = uniqueRoom('body');
    const a = await cs.open(srv.port, `/ws?room=${room}`);
    await a.next('room');
    for (const body of ['not json', '{}', '{"text": 5}', '{"text": ""}']) {
      assertJsonError(await post(srv.port, room, body, { Authorization: `Bearer ${TOKEN}` }), 400, `body ${body}`);
    }
    const g = await httpRequest(srv.port, 'GET', `/api/rooms/${room}/messages`);
    assert.equal(g.status, 405, g.text);
    assert.deepEqual(await a.none('msg', 200), []);
  });
});

describe('api: publish route without a token configured', () => {
  let srv;
  const cs = clients();
  before(async () => { srv = await startServer(['--scripts-dir', policyDir, ...FAST]); });
  after(async () => { await cs.closeAll(); if (srv) await srv.stop('SIGKILL').catch(() => {}); });

  it('the route is off: 404 (as documented), whatever the Authorization', T, async () => {
    const room = uniqueRoom('off');
    const a = await cs.open(srv.port, `/ws?room=${room}`);
    await a.next('room');
    for (const headers of [{}, { Authorization: 'Bearer ' }, { Authorization: `Bearer ${TOKEN}` }]) {
      assertJsonError(await post(srv.port, room, { text: 'should not pass' }, headers), 404, 'publish with no api_token');
    }
    assert.deepEqual(await a.none('msg', 200), []);
  });
});

describe('api: stats and rooms', () => {
  let srv;
  const cs = clients();
  before(async () => { srv = await startServer(['--scripts-dir', policyDir, ...FAST]); });
  after(async () => { await cs.closeAll(); if (srv) await srv.stop('SIGKILL').catch(() => {}); });

  const stats = async () => {
    const r = await httpGet(srv.port, '/api/stats');
    assert.equal(r.status, 200, r.text);
    assert.match(r.headers['content-type'] || '', /application\/json/);
    return r.json();
  };
  const roomInfo = (room) => httpGet(srv.port, `/api/rooms/${room}`);

  it('GET /api/stats {online, rooms:[{name, online}]} and GET /api/rooms/{id} {name, online, members}', T, async () => {
    const s0 = await stats();
    assert.equal(typeof s0.online, 'number');
    assert.ok(Array.isArray(s0.rooms));
    const [r1, r2] = [uniqueRoom('stats'), uniqueRoom('stats')];
    const a = await cs.open(srv.port, `/ws?room=${r1}&name=ann`);
    const b = await cs.open(srv.port, `/ws?room=${r1}&name=ben`);
    const c = await cs.open(srv.port, `/ws?room=${r2}&name=cat`);
    const idle = await cs.open(srv.port, '/ws?name=idle');  // connected, in no room
    for (const x of [a, b, c]) await x.next('room');
    await c.join(r1);
    a.send({ type: 'mute', room: r1 });
    await b.next('mute');

    const s = await stats();
    assert.equal(s.online - s0.online, 4, `online counts connections (${s.online} vs ${s0.online})`);
    const byName = Object.fromEntries(s.rooms.map((r) => [r.name, r]));
    assert.deepEqual(byName[r1], { name: r1, online: 3 });
    assert.deepEqual(byName[r2], { name: r2, online: 1 });
    for (const r of s.rooms) {
      assert.equal(typeof r.name, 'string');
      assert.equal(typeof r.online, 'number');
    }

    const ri = await roomInfo(r1);
    assert.equal(ri.status, 200, ri.text);
    const j = ri.json();
    assert.equal(j.name, r1);
    assert.equal(j.online, 3);
    const members = [...j.members].sort((x, y) => x.id.localeCompare(y.id));
    const expected = [
      { id: a.id, name: 'ann', muted: true },
      { id: b.id, name: 'ben', muted: false },
      { id: c.id, name: 'cat', muted: false },
    ].sort((x, y) => x.id.localeCompare(y.id));
    assert.deepEqual(members, expected);
    assert.ok(!j.members.some((m) => m.id === idle.id));
  });

  it('404 (JSON) for an unknown room', T, async () => {
    assertJsonError(await roomInfo(uniqueRoom('never')), 404, 'unknown room');
  });

  it('an emptied room disappears from /api/stats and /api/rooms/{id} (by leave and by disconnect)', T, async () => {
    const [r1, r2] = [uniqueRoom('gone'), uniqueRoom('gone')];
    const a = await cs.open(srv.port, `/ws?room=${r1}`);
    const b = await cs.open(srv.port, `/ws?room=${r2}`);
    await a.next('room');
    await b.next('room');
    const names = async () => (await stats()).rooms.map((r) => r.name);
    assert.ok((await names()).includes(r1));
    assert.ok((await names()).includes(r2));

    a.send({ type: 'leave', room: r1 });
    await waitFor(async () => !(await names()).includes(r1), { timeoutMs: 5000, what: `${r1} to leave /api/stats` });
    assertJsonError(await roomInfo(r1), 404, 'room emptied by leave');
    assert.ok(a.isOpen, 'leaving the last room keeps the connection');

    const online = (await stats()).online;
    await b.close();
    await waitFor(async () => !(await names()).includes(r2), { timeoutMs: 5000, what: `${r2} to leave /api/stats` });
    assertJsonError(await roomInfo(r2), 404, 'room emptied by disconnect');
    await waitFor(async () => (await stats()).online === online - 1, { timeoutMs: 5000, what: 'online to drop by one' });
  });
});
