// chatgw probe: the synthetic user against a real gateway. It passes against a live one (ws://
// and wss:// with the test CA), and fails naming the step against a stopped one (connect), a
// draining one (its listener is closed: connect), one whose policy refuses joins (join), a TLS
// certificate it cannot verify (tls), and a deadline that cannot be met (the step then running).
// The default policy keeps probe rooms out of the directory and out of history.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import {
  BIN, startServer, chatClient, rawWebSocket, scriptsDir, tempDir, withTimeout,
} from './lib.mjs';

const T = { timeout: 30000 };

/** Runs `chatgw probe URL ...args`; resolves {code, json, stderr}. */
function probe(url, args = [], ms = 20000) {
  return withTimeout(new Promise((resolve) => {
    execFile(BIN, ['probe', url, ...args], { timeout: ms }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      const lines = stdout.trim().split('\n');
      let json = null;
      try { json = JSON.parse(lines[lines.length - 1]); } catch { /* asserted by callers */ }
      resolve({ code, json, stdout, stderr });
    });
  }), ms + 2000, 'chatgw probe');
}

function assertFailed(r, step, code, re) {
  assert.ok(r.json, `no JSON line: ${r.stdout} ${r.stderr}`);
  assert.equal(r.json.ok, false, r.stdout);
  assert.equal(r.json.failed, step, r.stdout);
  assert.equal(r.code, code, r.stdout);
  if (re) assert.match(r.json.error, re);
  assert.match(r.stderr, new RegExp(`${step} failed`));
}

/** A port with nothing listening. */
async function freePort() {
  const s = net.createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

describe('chatgw probe', () => {
  let srv;
  before(async () => { srv = await startServer([]); });   // the default policy (scripts/)
  after(async () => { await srv?.stop(); });

  it('passes against a live gateway: every step timed, /readyz read', T, async () => {
    const r = await probe(`ws://127.0.0.1:${srv.port}/`);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.equal(r.json.ok, true);
    for (const s of ['connect', 'upgrade', 'join', 'echo', 'readyz'])
      assert.equal(typeof r.json.steps_ms[s], 'number', `step ${s}: ${r.stdout}`);
    assert.equal(r.json.steps_ms.tls, undefined);
    assert.equal(r.json.readyz, 'ok');
    assert.match(r.json.room, /^probe-[0-9a-f]{12}$/);
    assert.equal(r.stdout.trim().split('\n').length, 1);
  });

  it('probe rooms stay out of the directory and out of history', T, async () => {
    const a = await chatClient(srv.port, '/ws?name=watcher');
    const b = await chatClient(srv.port, '/ws?name=other');
    try {
      await a.join('probe-e2e');
      await a.join('open-room');
      a.send({ type: 'msg', room: 'probe-e2e', text: 'probe abc' });
      const echo = await a.next((m) => m.type === 'msg' && m.room === 'probe-e2e');
      assert.equal(echo.text, 'probe abc');
      await a.say('open-room', 'kept');
      const snap = await b.join('probe-e2e');
      assert.deepEqual(snap.history, [], 'a probe room keeps no history');
      const open = await b.join('open-room');
      assert.equal(open.history.length, 1, 'an ordinary room does (the control)');
      b.send({ type: 'rooms' });
      const dir = await b.next('rooms');
      const names = dir.rooms.map((x) => x.name);
      assert.ok(names.includes('open-room'), JSON.stringify(dir));
      assert.ok(!names.includes('probe-e2e'), JSON.stringify(dir));
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('a token (--token) reaches a policy that needs one; without it the upgrade is refused', T, async () => {
    const dir = scriptsDir({ 'policy.lua': `return { on_connect = function(conn)
      if conn.query.token ~= "a b&c" or conn.query.lang ~= "en" then return false, "token needed" end
      return true end }\n` });
    const d = await startServer(['--scripts-dir', dir]);
    try {
      const ok = await probe(`ws://127.0.0.1:${d.port}/ws?lang=en`, ['--token', 'a b&c', '--name', 'uptime-1']);
      assert.equal(ok.code, 0, ok.stdout + ok.stderr);
      assertFailed(await probe(`ws://127.0.0.1:${d.port}/ws?lang=en`), 'upgrade', 12, /HTTP 403/);
    } finally {
      await d.stop();
    }
  });

  it('fails at connect against a stopped gateway', T, async () => {
    const port = await freePort();
    assertFailed(await probe(`ws://127.0.0.1:${port}/`), 'connect', 10, /refused/);
  });

  it('fails at connect against a draining gateway (its listener is closed)', T, async () => {
    const d = await startServer(['--echo', 'true', '--drain_timeout_ms', '8000']);
    try {
      const stall = await rawWebSocket(d.port, '/echo');   // never answers the close: drain lasts
      assert.equal(stall.status, 101);
      d.proc.kill('SIGTERM');
      await d.waitLog((o) => o.msg === 'draining', 3000);
      const r = await probe(`ws://127.0.0.1:${d.port}/`);
      assertFailed(r, 'connect', 10);
      assert.equal(d.exitInfo, null, 'still draining while probed');
    } finally {
      await d.stop('SIGKILL');
    }
  });

  it('fails at join when the policy refuses joins', T, async () => {
    const dir = scriptsDir({ 'policy.lua': 'return { on_join = function(conn, room) return false, "forbidden" end }\n' });
    const d = await startServer(['--scripts-dir', dir]);
    try {
      assertFailed(await probe(`ws://127.0.0.1:${d.port}/`), 'join', 13, /forbidden/);
    } finally {
      await d.stop();
    }
  });

  it('fails at upgrade when the policy refuses connections', T, async () => {
    const dir = scriptsDir({ 'policy.lua': 'return { on_connect = function(conn) return false, "closed" end }\n' });
    const d = await startServer(['--scripts-dir', dir]);
    try {
      assertFailed(await probe(`ws://127.0.0.1:${d.port}/`), 'upgrade', 12, /HTTP 403/);
    } finally {
      await d.stop();
    }
  });

  it('fails at echo when the message never comes back, within the deadline', T, async () => {
    const dir = scriptsDir({ 'policy.lua': 'return { message_types = {"msg"}, on_message = function() return false end }\n' });
    const d = await startServer(['--scripts-dir', dir]);
    try {
      const t0 = Date.now();
      const r = await probe(`ws://127.0.0.1:${d.port}/`, ['--timeout-ms', '1500']);
      assertFailed(r, 'echo', 14, /timed out/);
      assert.ok(Date.now() - t0 < 10000, 'the deadline bounds the probe');
    } finally {
      await d.stop();
    }
  });

  it('usage errors exit 2', T, async () => {
    assert.equal((await probe('http://127.0.0.1:1/')).code, 2);
    assert.equal((await probe('ws://127.0.0.1:1/', ['--timeout-ms', 'x'])).code, 2);
  });

  describe('through TLS', () => {
    let tls, ca, other;
    before(async () => {
      const root = tempDir('chatgw-e2e-probe-tls-');
      execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
        '-keyout', path.join(root, 'tls.key'), '-out', path.join(root, 'tls.crt'), '-days', '1', '-subj', '/CN=localhost',
        '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { stdio: 'ignore' });
      ca = path.join(root, 'tls.crt');
      fs.mkdirSync(path.join(root, 'other'));
      execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
        '-keyout', path.join(root, 'other', 'k'), '-out', path.join(root, 'other', 'c'), '-days', '1', '-subj', '/CN=other'],
      { stdio: 'ignore' });
      other = path.join(root, 'other', 'c');
      tls = await startServer(['--tls-cert', ca, '--tls-key', path.join(root, 'tls.key')]);
    });
    after(async () => { await tls?.stop(); });

    it('passes over wss:// with the CA given, /readyz over https', T, async () => {
      const r = await probe(`wss://localhost:${tls.port}/`, ['--cacert', ca]);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      assert.equal(typeof r.json.steps_ms.tls, 'number');
      assert.equal(r.json.readyz, 'ok');
    });

    it('fails at tls with a certificate it cannot verify', T, async () => {
      assertFailed(await probe(`wss://localhost:${tls.port}/`, ['--cacert', other]), 'tls', 11, /certificate/);
    });
  });
});
