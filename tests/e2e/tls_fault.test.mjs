// A TLS write that fails inside a fan-out (the hub iterating a room) does not tear the
// connection down there: it is marked and closed at the next flush, so the room being iterated
// is never freed under the loop. Needs a test build (cmake -DFAULT_INJECTION=ON, as `make
// test-asan` does): CHATGW_FAULT_TLS_WRITE=MARKER fails every TLS write containing MARKER.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import WebSocket from 'ws';
import { startServer, passthroughPolicyDir, ChatClient, withTimeout, HOST } from './lib.mjs';

const T = { timeout: 30000 };
const MARKER = 'tls-write-fault-7f3a';

function wssChat(port, query) {
  const ws = new WebSocket(`wss://${HOST}:${port}/ws?${query}`, { rejectUnauthorized: false, perMessageDeflate: false });
  const c = new ChatClient(ws);
  return withTimeout(new Promise((resolve, reject) => {
    ws.once('error', reject);
    c.next('welcome', 5000).then(() => resolve(c), reject);
  }), 6000, 'wss welcome');
}

function httpsGet(port, p) {
  return withTimeout(new Promise((resolve, reject) => {
    https.get({ host: HOST, port, path: p, rejectUnauthorized: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    }).on('error', reject);
  }), 5000, 'https GET');
}

describe('tls write failure during a fan-out', () => {
  let srv, work, armed;
  before(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-tlsfault-'));
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', path.join(work, 'tls.key'), '-out', path.join(work, 'tls.crt'), '-days', '1', '-subj', '/CN=localhost'],
    { stdio: 'ignore' });
    srv = await startServer(['--scripts-dir', passthroughPolicyDir(), '--tls-cert', path.join(work, 'tls.crt'),
      '--tls-key', path.join(work, 'tls.key')], { env: { CHATGW_FAULT_TLS_WRITE: MARKER } });
    armed = srv.logs.some((o) => o.msg === 'fault injection armed');
  });
  after(async () => {
    if (srv) assert.equal(await srv.stop(), 0, 'clean exit after the faults');
    fs.rmSync(work, { recursive: true, force: true });
  });

  it('closes every member whose write failed, after the fan-out; the rest carry on', T, async (t) => {
    if (!armed) return t.skip('chatgw built without FAULT_INJECTION');
    const members = [];
    for (const n of ['a', 'b', 'c']) members.push(await wssChat(srv.port, `room=doom&name=${n}`));
    const other = await wssChat(srv.port, 'room=calm&name=d');
    // every copy of this message fails to encrypt: the room empties while the hub walks it
    members[0].send({ type: 'msg', room: 'doom', text: `${MARKER} to all`, cid: 1 });
    for (const m of members) await withTimeout(m.closedP, 5000, 'doomed member closed');
    assert.ok(other.isOpen, 'a client in another room is untouched');
    const e = await wssChat(srv.port, 'room=doom&name=e');
    const f = await wssChat(srv.port, 'room=doom&name=f');
    e.send({ type: 'msg', room: 'doom', text: 'after the fault', cid: 2 });
    await f.next((m) => m.type === 'msg' && m.text === 'after the fault', 5000);
    assert.equal(await httpsGet(srv.port, '/healthz'), 200);
    for (const c of [other, e, f]) await c.close();
  });
});
