// The default policy (scripts/*.lua), end to end: every feature of rooms.lua, moderation.lua and
// routing.lua driven through the real binary by real WebSocket clients.
//
// Each server runs a verbatim copy of scripts/ in a temporary directory plus a `secrets.lua`
// from tests/e2e/fixtures/default (settings.lua merges it over its own table: the documented
// Secret mechanism), so the settings under test are explicit. The servers trust 127.0.0.1 as a
// proxy and every client sends its own X-Forwarded-For address, so per-IP rules (flood control,
// connect rate, kicks and bans) see one IP per client unless a test shares one on purpose.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, chatClient, waitFor, sleep, rawWebSocket, readyz, fixture, scriptsDir, defaultScripts,
  AtomicWriterDir, signJwt,
} from './lib.mjs';

const T = { timeout: 60000 };
const PROXY = ['--trusted-proxies', '127.0.0.1/32'];

let ipSeq = 0;
const freshIp = () => { ipSeq++; return `10.${(ipSeq >> 16) & 255}.${(ipSeq >> 8) & 255}.${ipSeq & 255}`; };
let roomSeq = 0;
const uniqRoom = (p) => `${p}-${++roomSeq}`;
let textSeq = 0;
const uniqText = (p = 'hello') => `${p} number ${++textSeq}`;

/** Clients of one server, all closed after the suite. */
function clientPool() {
  const all = [];
  return {
    all,
    /**
     * Opens /ws?room=&name=&... with its own X-Forwarded-For. With a room, waits for the join
     * outcome (the room snapshot or the error frame naming the room) and keeps it in c.first.
     */
    async open(srv, { room, name, query = {}, ip } = {}) {
      const q = new URLSearchParams();
      if (room) q.set('room', room);
      if (name) q.set('name', name);
      for (const [k, v] of Object.entries(query)) q.set(k, v);
      const xff = ip || freshIp();
      const c = await chatClient(srv.port, `/ws?${q}`, { wsOpts: { headers: { 'X-Forwarded-For': xff } } });
      c.ip = xff;
      all.push(c);
      if (room) {
        c.first = await c.next((m) => (m.type === 'room' && m.room === room) || (m.type === 'error' && m.ref === room),
          3000, `join outcome for ${room}`);
      }
      return c;
    },
    async closeAll() { await Promise.all(all.splice(0).map((c) => c.close().catch(() => c.terminate()))); },
  };
}

/** The status (and body) a WebSocket upgrade at reqPath gets from ip. Closes the socket. */
async function upgrade(srv, reqPath, ip) {
  const r = await rawWebSocket(srv.port, reqPath, { 'X-Forwarded-For': ip });
  const out = { status: r.status, body: r.body ? r.body.toString('utf8') : '' };
  r.close();
  return out;
}

/** Sends msg with a fresh cid; resolves the ack or the error frame that names that cid. */
async function outcome(c, msg, ms = 3000) {
  const cid = `o-${++textSeq}`;
  c.send({ ...msg, cid });
  return c.next((m) => (m.type === 'ack' && m.cid === cid) || (m.type === 'error' && m.ref === cid), ms, `outcome of ${cid}`);
}

/** c says text in room; resolves the copy peer receives. */
async function relay(c, peer, room, text) {
  const { id } = await c.say(room, text);
  return peer.next((m) => m.type === 'msg' && m.id === id, 3000, `copy of ${id}`);
}

function startDefault(secretsFixture, extra = []) {
  const files = defaultScripts(secretsFixture ? { 'secrets.lua': fixture(secretsFixture) } : {});
  const dir = scriptsDir(files, 'chatgw-e2e-default-');
  return startServer(['--scripts-dir', dir, ...PROXY, ...extra]);
}

// =============================================================================================

describe('default policy: rooms.lua', () => {
  let srv;
  const pool = clientPool();
  before(async () => { srv = await startDefault('default/secrets.lua'); });
  after(async () => { await pool.closeAll(); if (srv) await srv.stop('SIGKILL').catch(() => {}); });

  it('loads, and serves with the version /readyz reports', T, async () => {
    const rz = await readyz(srv.port);
    assert.equal(rz.body.checks.policy, 'ok');
    const c = await pool.open(srv, {});
    assert.equal(c.welcome.policy, rz.body.policy.version);
  });

  it('room-name rules: name_pattern, name_max, reserved names (case-insensitive)', T, async () => {
    const c = await pool.open(srv, {});
    const refused = [
      ['-starts-with-dash', 'bad_field'], ['colon:inside', 'bad_field'], ['x'.repeat(49), 'bad_field'],
      ['ADMIN', 'forbidden'], ['Metrics', 'forbidden'], ['healthz', 'forbidden'], ['api', 'forbidden'],
    ];
    for (const [room, code] of refused) {
      const e = await c.expectError({ type: 'join', room }, code);
      assert.equal(e.ref, room);
    }
    for (const room of ['x'.repeat(48), 'Good_name.1-2', 'lobby']) {
      const snap = await c.join(room);
      assert.equal(snap.room, room);
    }
    const u = await pool.open(srv, { room: '-by-url' });
    assert.equal(u.first.type, 'error');
    assert.equal(u.first.code, 'bad_field');
    assert.ok(u.isOpen, 'a refused join leaves the connection open');
  });

  it('capacity per room pattern: voice-* holds 8, a configured duo-* holds 2, capacity is current membership', T, async () => {
    const voice = uniqRoom('voice');
    for (let i = 0; i < 8; i++) {
      const c = await pool.open(srv, { room: voice, name: `v${i}` });
      assert.equal(c.first.type, 'room', `member ${i + 1} of 8 joins`);
    }
    const ninth = await pool.open(srv, { room: voice, name: 'v8' });
    assert.equal(ninth.first.code, 'room_full');
    const other = await pool.open(srv, { room: uniqRoom('plain'), name: 'p' });
    assert.equal(other.first.type, 'room');

    const duo = uniqRoom('duo');
    const d1 = await pool.open(srv, { room: duo });
    const d2 = await pool.open(srv, { room: duo });
    assert.equal(d1.first.type, 'room');
    assert.equal(d2.first.type, 'room');
    const d3 = await pool.open(srv, {});
    assert.equal((await d3.expectError({ type: 'join', room: duo }, 'room_full')).ref, duo);
    d2.send({ type: 'leave', room: duo });
    await d1.next((m) => m.type === 'leave' && m.room === duo);
    assert.equal((await d3.join(duo)).room, duo, 'a seat freed by a leave can be taken');
  });

  it('password rooms: ?password= or ?token= equal to the password, also for a later join frame', T, async () => {
    const none = await pool.open(srv, { room: 'staff' });
    assert.equal(none.first.code, 'forbidden');
    const wrong = await pool.open(srv, { room: 'staff', query: { password: 'nope' } });
    assert.equal(wrong.first.code, 'forbidden');
    const pw = await pool.open(srv, { room: 'staff', name: 'pw', query: { password: 'pw-staff' } });
    assert.equal(pw.first.type, 'room');
    const tok = await pool.open(srv, { room: 'staff', name: 'tok', query: { token: 'pw-staff' } });
    assert.equal(tok.first.type, 'room');
    const later = await pool.open(srv, { query: { password: 'pw-staff' } });
    assert.equal((await later.join('staff')).room, 'staff', 'the URL password also admits a join frame');
    const bare = await pool.open(srv, {});
    await bare.expectError({ type: 'join', room: 'staff' }, 'forbidden');
  });

  it('JWT rooms: jwt_rooms need an HS256 token whose room claim grants the room; protected rooms can have their own secret', T, async () => {
    const now = Math.floor(Date.now() / 1000);
    const G = 'global-secret';
    const room = 'team-red';
    const cases = [
      ['no token', null, 'forbidden'],
      ['room claim', signJwt({ room, exp: now + 600 }, G), 'room'],
      ['list claim', signJwt({ room: ['team-blue', room] }, G), 'room'],
      ['"*" claim', signJwt({ room: '*', exp: now + 600 }, G), 'room'],
      ['another room', signJwt({ room: 'team-blue', exp: now + 600 }, G), 'forbidden'],
      ['expired', signJwt({ room, exp: now - 30 }, G), 'forbidden'],
      ['not valid yet', signJwt({ room, nbf: now + 3600 }, G), 'forbidden'],
      ['wrong secret', signJwt({ room, exp: now + 600 }, 'not-the-secret'), 'forbidden'],
      ['alg none', signJwt({ room }, G, { alg: 'none', typ: 'JWT' }), 'forbidden'],
      ['tampered payload', (() => {
        const [h, , s] = signJwt({ room: 'team-blue' }, G).split('.');
        return `${h}.${Buffer.from(JSON.stringify({ room })).toString('base64url')}.${s}`;
      })(), 'forbidden'],
    ];
    for (const [what, token, want] of cases) {
      const c = await pool.open(srv, { room, query: token ? { token } : {} });
      if (want === 'room') assert.equal(c.first.type, 'room', `${what}: admitted (${JSON.stringify(c.first)})`);
      else assert.equal(c.first.code, want, `${what}: refused (${JSON.stringify(c.first)})`);
    }
    const own = await pool.open(srv, { room: 'vault', query: { token: signJwt({ room: 'vault' }, 'vault-secret') } });
    assert.equal(own.first.type, 'room', 'a protected room\'s own jwt_secret');
    const global = await pool.open(srv, { room: 'vault', query: { token: signJwt({ room: 'vault' }, G) } });
    assert.equal(global.first.code, 'forbidden', 'the room\'s own secret replaces the global one');
  });
});

// =============================================================================================

describe('default policy: the public room directory (custom "rooms" type)', () => {
  let srv;
  const pool = clientPool();
  before(async () => { srv = await startDefault('default/directory_secrets.lua'); });
  after(async () => { await pool.closeAll(); if (srv) await srv.stop('SIGKILL').catch(() => {}); });

  async function directory(c) {
    c.send({ type: 'rooms' });
    const r = await c.next('rooms', 3000);
    assert.ok(Array.isArray(r.rooms), `rooms is a JSON array: ${JSON.stringify(r)}`);
    return r.rooms;
  }

  it('lists public rooms busiest first, at most directory_max, never private, protected or JWT rooms', T, async () => {
    const asker = await pool.open(srv, {});
    assert.deepEqual(await directory(asker), [], 'an empty directory is []');
    const layout = [
      ['alpha', 3, {}], ['beta', 2, {}], ['gamma', 1, {}], ['delta', 1, {}],
      ['private-x', 4, {}], ['dm-x', 4, {}],
      ['staff', 4, { password: 'pw-staff' }],
      ['team-a', 5, { token: signJwt({ room: 'team-a' }, 'global-secret') }],
    ];
    for (const [room, n, query] of layout) {
      for (let i = 0; i < n; i++) {
        const c = await pool.open(srv, { room, query });
        assert.equal(c.first.type, 'room', `${room} #${i + 1}: ${JSON.stringify(c.first)}`);
      }
    }
    // directory_max = 3: alpha 3, beta 2, then the 1-member rooms by name (delta before gamma)
    assert.deepEqual(await directory(asker), [
      { name: 'alpha', online: 3 }, { name: 'beta', online: 2 }, { name: 'delta', online: 1 },
    ]);
    const member = pool.all.find((c) => c.first?.room === 'alpha');
    assert.deepEqual((await directory(member)).map((r) => r.name), ['alpha', 'beta', 'delta'], 'members ask the same way');
    assert.deepEqual(member.inbox.filter((m) => m.type === 'rooms'), [], 'the answer goes to the asker only');
  });
});

// =============================================================================================

describe('default policy: moderation.lua', () => {
  let srv, drop;
  const pool = clientPool();
  before(async () => {
    srv = await startDefault('default/secrets.lua');
    drop = await startDefault('default/drop_secrets.lua');
  });
  after(async () => {
    await pool.closeAll();
    for (const s of [srv, drop]) if (s) await s.stop('SIGKILL').catch(() => {});
  });

  it('word filter: whole words, case-insensitive, masked in msg and dm', T, async () => {
    const room = uniqRoom('words');
    const a = await pool.open(srv, { room, name: 'a' });
    const b = await pool.open(srv, { room, name: 'b' });
    assert.equal((await relay(a, b, room, 'oh darn it')).text, 'oh *** it');
    assert.equal((await relay(a, b, room, 'Darnit is a word, HECK is not')).text, 'Darnit is a word, *** is not');
    a.send({ type: 'dm', to: b.id, text: 'darn, a secret' });
    const dm = await b.next('dm');
    assert.equal(dm.text, '***, a secret');
    assert.equal(dm.from.id, a.id);
  });

  it('word filter with word_action = "drop": the message is refused with forbidden and reaches nobody', T, async () => {
    const room = uniqRoom('drop');
    const a = await pool.open(drop, { room, name: 'a' });
    const b = await pool.open(drop, { room, name: 'b' });
    const r = await outcome(a, { type: 'msg', room, text: 'darn it' });
    assert.equal(r.type, 'error');
    assert.equal(r.code, 'forbidden');
    assert.equal((await relay(a, b, room, 'darnit passes')).text, 'darnit passes');
    assert.deepEqual(b.inbox.filter((m) => m.type === 'msg' && /darn it/.test(m.text)), []);
  });

  it('flood control per connection (gw.limit, conn_burst 10): a burst beyond it is rate_limited', T, async () => {
    const room = uniqRoom('flood');
    const a = await pool.open(srv, { room });
    const cids = [];
    for (let i = 0; i < 13; i++) {
      const cid = `flood-${i}`;
      cids.push(cid);
      a.send({ type: 'msg', room, text: uniqText('burst'), cid });
    }
    const got = [];
    for (const cid of cids) {
      got.push(await a.next((m) => (m.type === 'ack' && m.cid === cid) || (m.type === 'error' && m.ref === cid), 3000, cid));
    }
    const acks = got.filter((m) => m.type === 'ack').length;
    const limited = got.filter((m) => m.type === 'error');
    assert.ok(acks >= 10, `the burst of 10 passes (${acks} acks)`);
    assert.ok(limited.length >= 1, 'the rest is refused');
    for (const e of limited) assert.equal(e.code, 'rate_limited');
    assert.ok(a.isOpen, 'a few violations do not kick');
  });

  it('flood control per IP (ip_burst 40): connections of one address share a bucket', T, async () => {
    const ip = freshIp();
    const room = uniqRoom('ipflood');
    const cs = [];
    for (let i = 0; i < 5; i++) cs.push(await pool.open(srv, { room, ip }));
    // 10 rounds of one message per connection: each stays within its own burst of 10, and the
    // refusals past the IP's burst spread over the connections (no single one collects 5 strikes)
    let acks = 0, limited = 0;
    for (let round = 0; round < 10; round++) {
      const sent = cs.map((c, i) => {
        const cid = `ip-${i}-${round}`;
        c.send({ type: 'msg', room, text: uniqText(`ip flood ${i}`), cid });
        return [c, cid];
      });
      for (const [c, cid] of sent) {
        const m = await c.next((x) => (x.type === 'ack' && x.cid === cid) || (x.type === 'error' && x.ref === cid), 3000, cid);
        if (m.type === 'ack') acks++;
        else { assert.equal(m.code, 'rate_limited'); limited++; }
      }
    }
    assert.ok(acks >= 40, `the shared burst of 40 passes (${acks})`);
    assert.ok(limited >= 1, `messages past the IP's burst are refused (${limited} of 50)`);
  });

  it('length limit: more than max_text_chars (2000) characters is too_large; characters, not bytes, count', T, async () => {
    const room = uniqRoom('len');
    const a = await pool.open(srv, { room });
    const b = await pool.open(srv, { room });
    const ok = 'abcdefghij'.repeat(200);
    assert.equal((await relay(a, b, room, ok)).text, ok);
    const wide = 'àé'.repeat(1000);                               // 2000 characters, 4000 bytes
    assert.equal((await relay(a, b, room, wide)).text, wide);
    for (const text of [ok + 'k', wide + 'x']) {
      const r = await outcome(a, { type: 'msg', room, text });
      assert.equal(r.type, 'error');
      assert.equal(r.code, 'too_large');
    }
  });

  it('character runs longer than max_char_run (4) are shortened', T, async () => {
    const room = uniqRoom('runs');
    const a = await pool.open(srv, { room });
    const b = await pool.open(srv, { room });
    assert.equal((await relay(a, b, room, 'sooooooooo good!!!!!!!')).text, 'soooo good!!!!');
    assert.equal((await relay(a, b, room, 'ééééééé')).text, 'éééé');
    assert.equal((await relay(a, b, room, 'fine text')).text, 'fine text');
  });

  it('repetition: the 3rd identical text in a row (after normalising case and spaces) is dropped with repeated', T, async () => {
    const room = uniqRoom('rep');
    const a = await pool.open(srv, { room });
    const b = await pool.open(srv, { room });
    await relay(a, b, room, 'hello world');
    await relay(a, b, room, 'Hello   World');
    const r = await outcome(a, { type: 'msg', room, text: 'HELLO WORLD' });
    assert.equal(r.code, 'repeated');
    await relay(a, b, room, 'something else');
    await relay(a, b, room, 'hello world');
  });

  it('strikes: the 5th violation (repeated, too_large, a masked word) kicks the connection', T, async () => {
    const room = uniqRoom('strikes');
    const x = await pool.open(srv, { room, name: 'xavier' });
    const y = await pool.open(srv, { room, name: 'yolanda' });
    await relay(x, y, room, 'same again');
    await relay(x, y, room, 'same again');
    assert.equal((await outcome(x, { type: 'msg', room, text: 'same again' })).code, 'repeated');    // 1
    assert.equal((await outcome(x, { type: 'msg', room, text: 'same again' })).code, 'repeated');    // 2
    const long = 'abcdefghij'.repeat(201);
    assert.equal((await outcome(x, { type: 'msg', room, text: long })).code, 'too_large');           // 3
    assert.equal((await outcome(x, { type: 'msg', room, text: long + 'y' })).code, 'too_large');     // 4
    assert.ok(x.isOpen);
    x.send({ type: 'msg', room, text: 'what the heck', cid: 'strike-5' });                            // 5
    const kicked = await x.next((m) => m.type === 'error' && m.code === 'kicked', 3000, 'kicked');
    assert.match(kicked.message, /too many violations/);
    const info = await waitFor(() => x.closeInfo, { timeoutMs: 3000, what: 'the kicked connection to close' });
    assert.equal(info.code, 1008);
    const left = await y.next((m) => m.type === 'leave' && m.room === room, 3000, 'leave of the kicked member');
    assert.equal(left.member?.id ?? left.id, x.id);
  });

  it('connect rate per IP (connect_burst 10): further WebSocket upgrades are refused with 403 rate_limited', T, async () => {
    const ip = freshIp();
    const statuses = [];
    for (let i = 0; i < 14; i++) statuses.push(await upgrade(srv, '/ws', ip));
    assert.deepEqual(statuses.slice(0, 10).map((s) => s.status), Array(10).fill(101), 'the burst is admitted');
    const refused = statuses.slice(10).filter((s) => s.status === 403);
    assert.ok(refused.length >= 1, `upgrades past the burst are refused: ${statuses.map((s) => s.status)}`);
    for (const r of refused) assert.match(r.body, /rate_limited/);
    assert.equal((await upgrade(srv, '/ws', freshIp())).status, 101, 'another address is not affected');
  });
});

// =============================================================================================

describe('default policy: bans by IP and by name, with expiry, kept in gw.store across reloads', () => {
  let srv, cm, admin;
  const pool = clientPool();
  let files;
  before(async () => {
    // the default policy, untouched, behind a test-only entry point that adds an e2e_ban message
    const base = defaultScripts();
    files = { ...base, 'default_policy.lua': base['policy.lua'], 'policy.lua': fixture('default/ext_policy.lua') };
    cm = AtomicWriterDir.create(files, 'chatgw-e2e-bans-cm-');
    srv = await startServer(['--scripts-dir', cm.dir, ...PROXY]);
    admin = await pool.open(srv, { name: 'admin' });
  });
  after(async () => { await pool.closeAll(); if (srv) await srv.stop('SIGKILL').catch(() => {}); });

  async function ban(kind, value, seconds) {
    admin.send({ type: 'e2e_ban', kind, value, seconds });
    return admin.next((m) => m.type === 'e2e_banned' && m.value === value, 3000, `ban ${kind} ${value}`);
  }
  let reloads = 0;
  async function reload() {
    const before = (await readyz(srv.port)).body.policy.version;
    const mark = srv.logs.length;
    cm.write({ ...files, 'secrets.lua': `-- e2e: reload ${++reloads}\nreturn {}\n` });
    const r = await waitFor(() => srv.logs.slice(mark).find((o) => o.msg === 'policy reloaded'),
      { timeoutMs: 5000, what: `"policy reloaded"\n${srv.tail(10)}` });
    assert.equal(r.previous, before);
    assert.notEqual(r.version, before);
  }

  it('three kicks of one IP ban it (kicks_to_ban): its upgrades get 403 banned, and the ban survives a reload', T, async () => {
    const ip = freshIp();
    const room = uniqRoom('kicks');
    const long = 'abcdefghij'.repeat(201);
    for (let k = 1; k <= 3; k++) {
      const c = await pool.open(srv, { room, ip, name: `kick${k}` });
      for (let i = 0; i < 5; i++) c.send({ type: 'msg', room, text: long + i, cid: `k${k}-${i}` });
      await c.next((m) => m.type === 'error' && m.code === 'kicked', 3000, `kick ${k}`);
      await waitFor(() => c.closeInfo, { timeoutMs: 3000, what: `close after kick ${k}` });
    }
    const r = await upgrade(srv, `/ws?room=${room}`, ip);
    assert.equal(r.status, 403);
    assert.match(r.body, /banned/);
    assert.equal((await upgrade(srv, '/ws', freshIp())).status, 101, 'other addresses still connect');
    await reload();
    const again = await upgrade(srv, '/ws', ip);
    assert.equal(again.status, 403, 'the ban lives in gw.store: it survives the reload');
    assert.match(again.body, /banned/);
  });

  it('a name ban refuses that name in any case, at connect and as a /nick, and survives a reload', T, async () => {
    await ban('name', 'Mallory', 600);
    for (const name of ['Mallory', 'mallory', 'MALLORY']) {
      const r = await upgrade(srv, `/ws?name=${name}`, freshIp());
      assert.equal(r.status, 403, name);
      assert.match(r.body, /banned/);
    }
    const room = uniqRoom('nickban');
    const a = await pool.open(srv, { room, name: 'alice' });
    assert.equal((await outcome(a, { type: 'msg', room, text: '/nick mallory' })).code, 'forbidden');
    await reload();
    assert.equal((await upgrade(srv, '/ws?name=mallory', freshIp())).status, 403, 'still banned after the reload');
    admin.send({ type: 'e2e_unban', kind: 'name', value: 'mallory' });
    await admin.next('e2e_unbanned');
    assert.equal((await upgrade(srv, '/ws?name=mallory', freshIp())).status, 101, 'unban lifts it');
  });

  it('bans expire: a 1 s ban of a name and of an IP lifts by itself', T, async () => {
    const ip = freshIp();
    await ban('name', 'brief', 1);
    await ban('ip', ip, 1);
    assert.equal((await upgrade(srv, '/ws?name=brief', freshIp())).status, 403);
    assert.equal((await upgrade(srv, '/ws', ip)).status, 403);
    await waitFor(async () => (await upgrade(srv, '/ws?name=brief', freshIp())).status === 101,
      { timeoutMs: 6000, intervalMs: 250, what: 'the name ban to expire' });
    await waitFor(async () => (await upgrade(srv, '/ws', ip)).status === 101,
      { timeoutMs: 6000, intervalMs: 250, what: 'the IP ban to expire' });
  });
});

// =============================================================================================

describe('default policy: routing.lua', () => {
  let srv;
  const pool = clientPool();
  before(async () => { srv = await startDefault('default/secrets.lua'); });
  after(async () => { await pool.closeAll(); if (srv) await srv.stop('SIGKILL').catch(() => {}); });

  it('/nick broadcasts {type:"nick"} to the room, sender included; bad or filtered names are refused', T, async () => {
    const room = uniqRoom('nick');
    const a = await pool.open(srv, { room, name: 'alice' });
    const b = await pool.open(srv, { room, name: 'bob' });
    a.send({ type: 'msg', room, text: '/nick Ali', cid: 'nick-1' });
    for (const c of [a, b]) {
      const n = await c.next('nick', 3000);
      assert.deepEqual({ room: n.room, id: n.id, name: n.name }, { room, id: a.id, name: 'Ali' });
    }
    assert.deepEqual(await b.none((m) => m.type === 'msg', 200), [], 'the command itself is not delivered');
    assert.equal((await outcome(a, { type: 'msg', room, text: '/nick ' + 'abcdefghij'.repeat(3) + 'abc' })).code, 'bad_field');
    assert.equal((await outcome(a, { type: 'msg', room, text: '/nick heck' })).code, 'forbidden');

    // /me uses the nickname
    const { id } = await a.say(room, '/me waves');
    const me = await b.next((m) => m.type === 'msg' && m.id === id);
    assert.equal(me.text, '* Ali waves');
    assert.equal(me.action, true);
    assert.equal(me.from.id, a.id);
  });

  it('/me without a nickname uses the connection name; //text sends /text; unknown commands get bad_command', T, async () => {
    const room = uniqRoom('cmds');
    const a = await pool.open(srv, { room, name: 'carla' });
    const b = await pool.open(srv, { room, name: 'dan' });
    const me = await relay(a, b, room, '/me dances');
    assert.equal(me.text, '* carla dances');
    assert.equal(me.action, true);
    assert.equal((await relay(a, b, room, '//not a command')).text, '/not a command');
    assert.equal((await outcome(a, { type: 'msg', room, text: '/dance' })).code, 'bad_command');
    assert.equal((await outcome(a, { type: 'msg', room, text: '/me' })).code, 'bad_command');
  });

  it('/kick: only the room owner (first to join) may kick; the room is told; ownership passes to the longest-present member', T, async () => {
    const room = uniqRoom('kick');
    const alice = await pool.open(srv, { room, name: 'alice' });
    const bob = await pool.open(srv, { room, name: 'bob' });
    const carol = await pool.open(srv, { room, name: 'carol' });
    const dave = await pool.open(srv, { room, name: 'dave' });
    assert.equal((await outcome(bob, { type: 'msg', room, text: '/kick carol' })).code, 'forbidden');
    assert.equal((await outcome(alice, { type: 'msg', room, text: '/kick nobody' })).code, 'not_found');
    assert.equal((await outcome(alice, { type: 'msg', room, text: `/kick ${alice.id}` })).code, 'bad_field');
    assert.equal((await outcome(alice, { type: 'msg', room, text: '/kick' })).code, 'bad_field');

    alice.send({ type: 'msg', room, text: '/kick Carol', cid: 'kick-carol' });
    const e = await carol.next((m) => m.type === 'error' && m.code === 'kicked', 3000, 'carol kicked');
    assert.match(e.message, /room owner/);
    assert.equal((await waitFor(() => carol.closeInfo, { timeoutMs: 3000, what: 'carol closed' })).code, 1008);
    for (const c of [alice, bob, dave]) {
      const n = await c.next('notice', 3000);
      assert.equal(n.room, room);
      assert.equal(n.text, 'carol was kicked by alice');
    }
    assert.equal(carol.all.filter((m) => m.type === 'notice').length, 0, 'the kicked member is not told twice');

    // the owner leaves: bob (the longest present) owns the room now and kicks by id
    alice.send({ type: 'leave', room });
    await bob.next((m) => m.type === 'leave' && (m.member?.id ?? m.id) === alice.id, 3000, 'alice left');
    bob.send({ type: 'msg', room, text: `/kick ${dave.id}`, cid: 'kick-dave' });
    await dave.next((m) => m.type === 'error' && m.code === 'kicked', 3000, 'dave kicked');
    await waitFor(() => dave.closeInfo, { timeoutMs: 3000, what: 'dave closed' });
  });

  it('typing: delivered to the other members with from, never back to the sender; extra ones are dropped silently', T, async () => {
    const room = uniqRoom('typing');
    const a = await pool.open(srv, { room, name: 'typist' });
    const b = await pool.open(srv, { room, name: 'reader1' });
    const c = await pool.open(srv, { room, name: 'reader2' });
    a.send({ type: 'typing', room });
    for (const r of [b, c]) {
      const t = await r.next('typing', 3000);
      assert.equal(t.room, room);
      assert.equal(t.from.id, a.id);
      assert.equal(t.from.name, 'typist');
    }
    for (let i = 0; i < 6; i++) a.send({ type: 'typing', room });
    await relay(a, b, room, uniqText('after typing'));       // everything before it has been handled
    await sleep(100);
    const extra = b.inbox.filter((m) => m.type === 'typing').length;
    assert.ok(extra >= 2 && extra < 6, `typing_burst 3 lets 2 or so more through, got ${extra} of 6`);
    assert.deepEqual(a.inbox.filter((m) => m.type === 'typing' || m.type === 'error'), [], 'the typist gets no echo and no error');
    assert.equal((await a.expectError({ type: 'typing' }, 'bad_field')).code, 'bad_field');
  });

  it('dm: only between connections that share a room', T, async () => {
    const room = uniqRoom('dm-share');
    const a = await pool.open(srv, { room, name: 'a' });
    const b = await pool.open(srv, { room, name: 'b' });
    const c = await pool.open(srv, { room: uniqRoom('elsewhere'), name: 'c' });
    const ok = await outcome(a, { type: 'dm', to: b.id, text: 'psst' });
    assert.equal(ok.type, 'ack');
    const dm = await b.next('dm');
    assert.equal(dm.text, 'psst');
    assert.equal(dm.from.id, a.id);
    assert.equal((await outcome(a, { type: 'dm', to: c.id, text: 'hello stranger' })).code, 'forbidden');
    assert.equal((await outcome(a, { type: 'dm', to: a.id, text: 'me' })).code, 'bad_field');
    assert.deepEqual(c.inbox.filter((m) => m.type === 'dm'), []);
    await c.join(room);
    assert.equal((await outcome(a, { type: 'dm', to: c.id, text: 'now we share' })).type, 'ack');
    assert.equal((await c.next('dm')).text, 'now we share');
  });

  it('signal, mute and history pass through unchanged', T, async () => {
    const room = uniqRoom('voice');
    const a = await pool.open(srv, { room, name: 'a' });
    const b = await pool.open(srv, { room, name: 'b' });
    const data = { kind: 'offer', sdp: 'v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n', n: [1, 2, 3] };
    a.send({ type: 'signal', room, to: b.id, data });
    const sig = await b.next('signal');
    assert.deepEqual(sig.data, data);
    assert.equal(sig.from?.id ?? sig.from, a.id);
    a.send({ type: 'mute', room });
    const mute = await b.next('mute');
    assert.equal(mute.member?.id ?? mute.id, a.id);
    await relay(a, b, room, uniqText('history item'));
    a.send({ type: 'history', room });
    const h = await a.next('history');
    assert.ok(h.messages.some((m) => /history item/.test(m.text)));
  });

  it('a command switched off in settings (routing.commands.me = false) gets bad_command', T, async () => {
    const alt = await startDefault('default/drop_secrets.lua');
    try {
      const room = uniqRoom('nome');
      const a = await pool.open(alt, { room, name: 'a' });
      const b = await pool.open(alt, { room, name: 'b' });
      assert.equal((await outcome(a, { type: 'msg', room, text: '/me waves' })).code, 'bad_command');
      a.send({ type: 'msg', room, text: '/nick Still', cid: 'still' });
      assert.equal((await b.next('nick')).name, 'Still', 'the other commands stay on');
    } finally {
      await alt.stop('SIGKILL').catch(() => {});
    }
  });

  it('custom types the policy does not claim get bad_type', T, async () => {
    const room = uniqRoom('custom');
    const a = await pool.open(srv, { room });
    assert.equal((await outcome(a, { type: 'react', room, emoji: 'x' })).code, 'bad_type');
    await a.expectError({ type: 'no_such_type' }, 'bad_type');
  });

  it('announcements from on_tick reach the room as notices', T, async () => {
    const a = await pool.open(srv, { room: 'news' });
    const n = await a.next((m) => m.type === 'notice' && m.room === 'news', 6000, 'an announcement');
    assert.equal(n.text, 'e2e announcement');
  });
});
