// The JWT example policy (docs/examples/auth): a token in ?token= or in Sec-WebSocket-Protocol,
// checked by gw.jwt_verify in on_connect. A valid token is admitted; an expired one, a bad
// signature, a missing or malformed token get HTTP 403 before the upgrade, with the reason.
// Tokens are built here with node:crypto (HS256).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startServer, chatClient, rawWebSocket, SRC, BIN } from './lib.mjs';

const T = { timeout: 20000 };
const EXAMPLE = path.join(SRC, 'docs', 'examples', 'auth');
const SECRET = crypto.randomBytes(32).toString('base64url');
const PREVIOUS = crypto.randomBytes(32).toString('base64url');    // a key being rotated out

const b64url = (o) => Buffer.from(typeof o === 'string' ? o : JSON.stringify(o)).toString('base64url');
function jwt(claims, { secret = SECRET, header = { alg: 'HS256', typ: 'JWT' } } = {}) {
  const signing = `${b64url(header)}.${b64url(claims)}`;
  return `${signing}.${crypto.createHmac('sha256', secret).update(signing).digest('base64url')}`;
}
const now = () => Math.floor(Date.now() / 1000);

/** The example copied into a scripts directory, with a secrets.lua holding the test's key. */
function exampleDir() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-auth-'));
  fs.copyFileSync(path.join(EXAMPLE, 'policy.lua'), path.join(dir, 'policy.lua'));
  fs.writeFileSync(path.join(dir, 'secrets.lua'), `return { secret = ${JSON.stringify(SECRET)}, previous_secret = ${JSON.stringify(PREVIOUS)} }\n`);
  process.once('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The handshake answer for a request carrying headers; closes the socket. */
async function handshake(port, reqPath, headers = {}) {
  const r = await rawWebSocket(port, reqPath, headers);
  r.close();
  return { status: r.status, body: r.status === 101 ? null : JSON.parse(r.text), headers: r.headers };
}

function assertRefused(res, reason) {
  assert.equal(res.status, 403, `refused before the upgrade (${JSON.stringify(res.body)})`);
  assert.equal(res.body.error, 'forbidden');
  assert.equal(res.body.message, reason);
  assert.equal(res.headers['sec-websocket-accept'], undefined);
}

describe('auth example policy (JWT)', () => {
  let srv;
  before(async () => {
    srv = await startServer(['--scripts-dir', exampleDir(), '--accept-rate-per-ip', '0']);
  });
  after(async () => { if (srv) await srv.stop(); });

  it('loads with chatgw check as shipped (placeholder secret)', T, () => {
    const out = execFileSync(BIN, ['check', EXAMPLE], { encoding: 'utf8' });
    assert.match(out, /^ok [0-9a-f]{64}$/m);
  });

  it('a valid token in ?token= is admitted and joins its room', T, async () => {
    const tok = jwt({ sub: 'alice', exp: now() + 600 });
    const c = await chatClient(srv.port, `/ws?room=lobby&name=alice&token=${tok}`);
    const snap = await c.next('room');
    assert.equal(snap.room, 'lobby');
    const said = await c.say('lobby', 'hello with a token');
    assert.ok(said.id);
    await c.close();
  });

  it('a valid token in Sec-WebSocket-Protocol is admitted; chatgw.v1 is the protocol answered', T, async () => {
    const tok = jwt({ sub: 'bob', exp: now() + 600 });
    const c = await chatClient(srv.port, '/ws?room=lobby&name=bob', { protocols: ['chatgw.v1', tok] });
    assert.equal(c.ws.protocol, 'chatgw.v1');
    await c.next('room');
    await c.close();
    // the same token as a raw header (as a non-browser client would send it)
    const raw = await handshake(srv.port, '/ws?room=lobby', { 'Sec-WebSocket-Protocol': `chatgw.v1, ${tok}` });
    assert.equal(raw.status, 101);
    assert.equal(raw.headers['sec-websocket-protocol'], 'chatgw.v1');
  });

  it('an expired token (exp in the past) gets 403 expired, in either place', T, async () => {
    const tok = jwt({ sub: 'carol', exp: now() - 60 });
    assertRefused(await handshake(srv.port, `/ws?room=lobby&token=${tok}`), 'expired');
    assertRefused(await handshake(srv.port, '/ws?room=lobby', { 'Sec-WebSocket-Protocol': `chatgw.v1, ${tok}` }), 'expired');
    await assert.rejects(chatClient(srv.port, `/ws?room=lobby&token=${tok}`), (e) => e.statusCode === 403);
  });

  it('a bad signature gets 403 bad_signature (other key, or a changed payload)', T, async () => {
    const other = jwt({ sub: 'mallory', exp: now() + 600 }, { secret: 'not-the-secret-not-the-secret-000' });
    assertRefused(await handshake(srv.port, `/ws?room=lobby&token=${other}`), 'bad_signature');
    const good = jwt({ sub: 'dave', exp: now() + 600 });
    const [h, , s] = good.split('.');
    const forged = `${h}.${b64url({ sub: 'admin', exp: now() + 600 })}.${s}`;
    assertRefused(await handshake(srv.port, '/ws?room=lobby', { 'Sec-WebSocket-Protocol': `chatgw.v1, ${forged}` }), 'bad_signature');
  });

  it('during a key rotation a token signed with previous_secret is still admitted', T, async () => {
    const tok = jwt({ sub: 'ivy', exp: now() + 600 }, { secret: PREVIOUS });
    const c = await chatClient(srv.port, `/ws?room=lobby&token=${tok}`);
    await c.next('room');
    await c.close();
  });

  it('a missing token gets 403 missing_token', T, async () => {
    assertRefused(await handshake(srv.port, '/ws?room=lobby&name=nobody'), 'missing_token');
    assertRefused(await handshake(srv.port, '/ws?room=lobby', { 'Sec-WebSocket-Protocol': 'chatgw.v1' }), 'missing_token');
    assertRefused(await handshake(srv.port, '/ws?room=lobby&token='), 'missing_token');
  });

  it('malformed tokens, alg none, a token without exp and one not yet valid are refused', T, async () => {
    assertRefused(await handshake(srv.port, '/ws?room=lobby&token=not.a.jwt'), 'malformed');
    assertRefused(await handshake(srv.port, '/ws?room=lobby&token=garbage'), 'malformed');
    const none = `${b64url({ alg: 'none', typ: 'JWT' })}.${b64url({ sub: 'eve', exp: now() + 600 })}.`;
    assertRefused(await handshake(srv.port, `/ws?room=lobby&token=${none}`), 'unsupported_alg');
    assertRefused(await handshake(srv.port, `/ws?room=lobby&token=${jwt({ sub: 'frank' })}`), 'no_expiry');
    assertRefused(await handshake(srv.port, `/ws?room=lobby&token=${jwt({ sub: 'gina', exp: now() + 600, nbf: now() + 300 })}`),
      'not_yet_valid');
  });

  it('a rooms claim limits the rooms the holder may join', T, async () => {
    const tok = jwt({ sub: 'hank', exp: now() + 600, rooms: ['ops', 'lobby'] });
    const c = await chatClient(srv.port, `/ws?room=ops&name=hank&token=${tok}`);
    await c.next('room');
    await c.join('lobby');
    await c.expectError({ type: 'join', room: 'secret-plans' }, 'forbidden');
    await c.close();
    // a room outside the claim in the URL: admitted, then the join is refused
    const d = await chatClient(srv.port, `/ws?room=elsewhere&token=${tok}`);
    const e = await d.next('error');
    assert.equal(e.code, 'forbidden');
    await d.close();
  });
});
