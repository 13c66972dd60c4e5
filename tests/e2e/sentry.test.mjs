// Error reports (sentry_dsn): a local HTTP receiver stands in for Sentry and decodes every
// envelope with Sentry's own JavaScript SDK parser (@sentry/core parseEnvelope). Checked: a
// policy error and a time-guard interruption (hook, policy version, file:line, Lua frames), a
// rejected reload, a crash (SIGSEGV) recorded in crash_dir and sent at the next start, the
// per-fingerprint rate limit, and a receiver that is down or stalls (events counted as failed
// or dropped, the chat unaffected).
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import net from 'node:net';
import { parseEnvelope } from '@sentry/core';
import {
  startServer, chatClient, scrape, metricSum, scriptsDir, tempDir, waitFor, lineOf, sleep, BIN,
} from './lib.mjs';
import { spawnSync } from 'node:child_process';
import { startRedis, waitRedis } from './redis_lib.mjs';

const T = { timeout: 60000 };

/** A Sentry stand-in: records each envelope, parsed by @sentry/core. stall: never answers. */
async function receiver({ stall = false, status = 200 } = {}) {
  const got = [];
  const held = [];
  const conc = { open: 0, max: 0 };   // requests open at once
  const server = http.createServer((req, res) => {
    conc.max = Math.max(conc.max, ++conc.open);
    res.once('close', () => conc.open--);
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      let rec;
      try {
        const [hdr, items] = parseEnvelope(new Uint8Array(body));
        assert.equal(items.length, 1, 'one item per envelope');
        const [itemHdr, payload] = items[0];
        const bytes = payload instanceof Uint8Array ? payload : new Uint8Array(Object.values(payload));
        assert.equal(bytes.length, itemHdr.length, 'item length header matches the payload');
        rec = { url: req.url, headers: req.headers, hdr, itemHdr, event: JSON.parse(Buffer.from(bytes).toString('utf8')) };
      } catch (e) {
        rec = { url: req.url, headers: req.headers, error: e, raw: body.toString('utf8') };
      }
      got.push(rec);
      if (stall) { held.push(res); return; }
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ id: rec.hdr?.event_id }));
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const port = server.address().port;
  return {
    got,
    conc,
    port,
    dsn: `http://pubkey:seckey@127.0.0.1:${port}/prefix/42`,
    events: () => got.filter((g) => g.event).map((g) => g.event),
    async close() {
      for (const r of held) r.destroy();
      server.closeAllConnections?.();
      await new Promise((r) => server.close(r));
    },
  };
}

function assertEnvelope(rec) {
  assert.ok(!rec.error, `envelope did not parse: ${rec.error?.message}\n${rec.raw}`);
  assert.equal(rec.url, '/prefix/api/42/envelope/');
  assert.match(rec.headers['x-sentry-auth'], /^Sentry sentry_version=7, sentry_client=chatgw\/[\d.]+, sentry_key=pubkey, sentry_secret=seckey$/);
  assert.equal(rec.headers['content-type'], 'application/x-sentry-envelope');
  assert.equal(rec.itemHdr.type, 'event');
  assert.match(rec.hdr.event_id, /^[0-9a-f]{32}$/);
  assert.equal(rec.hdr.event_id, rec.event.event_id);
  assert.equal(rec.hdr.dsn, `http://pubkey@127.0.0.1:${new URL(rec.hdr.dsn).port}/prefix/42`, 'no secret in the header');
  assert.match(rec.event.release, /^chatgw@\d+\.\d+\.\d+$/);
  assert.equal(typeof rec.event.timestamp, 'number');
}

const POLICY = `local function explode(text)
  error("boom: " .. text)            -- BOOM
end
return {
  message_types = { "msg" },
  on_message = function(conn, room, msg)
    if msg.text == "loop" then while true do end end
    if msg.text:sub(1, 2) == "e-" then error(msg.text, 0) end
    if msg.text ~= "fine" then explode(msg.text) end
    return true
  end,
}
`;

async function sentryServer(dsn, extra = [], files = { 'policy.lua': POLICY }) {
  const dir = scriptsDir(files);
  const srv = await startServer(['--scripts-dir', dir, '--sentry_dsn', dsn, '--environment', 'staging',
    '--node_id', 'node-a', '--policy_timeout_ms', '100', '--rate_msgs_per_sec', '1000', '--rate_burst', '1000', ...extra]);
  return { srv, dir };
}

async function sentryCount(port, result) {
  return metricSum((await scrape(port)).samples, 'chatgw_sentry_events_total', { result });
}

describe('error reports to a Sentry DSN', () => {
  const cleanup = [];
  after(async () => { for (const f of cleanup.reverse()) await f().catch(() => {}); });

  it('a policy error and a time-guard interruption arrive as parsed envelopes', T, async () => {
    const rx = await receiver();
    cleanup.push(() => rx.close());
    const { srv } = await sentryServer(rx.dsn);
    cleanup.push(() => srv.stop());
    const c = await chatClient(srv.port, '/ws?room=lobby');
    cleanup.push(() => c.close());
    c.send({ type: 'msg', room: 'lobby', text: 'kaboom' });
    await c.next((m) => m.type === 'error' && m.code === 'policy_error');
    await waitFor(() => rx.got.length >= 1, { timeoutMs: 8000, what: 'the policy error event' });
    const rec = rx.got[0];
    assertEnvelope(rec);
    const ev = rec.event;
    const line = lineOf(POLICY, '-- BOOM');
    assert.equal(ev.level, 'error');
    assert.equal(ev.environment, 'staging');
    assert.equal(ev.server_name, 'node-a');
    assert.equal(ev.tags.kind, 'policy_error');
    assert.equal(ev.tags.hook, 'on_message');
    assert.equal(ev.tags.worker, '0');
    assert.match(ev.tags.policy_version, /^[0-9a-f]{12}$/);
    assert.match(ev.extra.policy_version, /^[0-9a-f]{64}$/);
    assert.equal(ev.extra.where, `policy.lua:${line}`);
    assert.deepEqual(ev.fingerprint, ['policy_error', 'on_message', `policy.lua:${line}`]);
    assert.match(ev.message.formatted, /boom: kaboom/);
    assert.match(ev.extra.traceback, /stack traceback/);
    const exc = ev.exception.values[0];
    assert.equal(exc.type, 'policy_error');
    const frames = exc.stacktrace.frames;
    const top = frames[frames.length - 1];    // Sentry order: the innermost frame last
    assert.ok(frames.some((f) => f.filename === 'policy.lua' && f.lineno === line && f.in_app),
      JSON.stringify(frames));
    assert.ok(top.lineno === line || frames.some((f) => f.lineno === line), JSON.stringify(top));

    c.send({ type: 'msg', room: 'lobby', text: 'loop' });
    await c.next((m) => m.type === 'error' && m.code === 'policy_error', 5000);
    await waitFor(() => rx.events().some((e) => e.tags.kind === 'policy_timeout'), { timeoutMs: 8000, what: 'the timeout event' });
    const to = rx.events().find((e) => e.tags.kind === 'policy_timeout');
    assert.equal(to.tags.hook, 'on_message');
    assert.match(to.extra.where ?? '', /^policy\.lua:\d+$/);
    assert.equal(await sentryCount(srv.port, 'sent'), 2);
  });

  it('the same failure on every message sends a handful of events, the rest counted', T, async () => {
    const rx = await receiver();
    cleanup.push(() => rx.close());
    const { srv } = await sentryServer(rx.dsn);
    cleanup.push(() => srv.stop());
    const c = await chatClient(srv.port, '/ws?room=lobby');
    cleanup.push(() => c.close());
    const N = 30;
    for (let i = 0; i < N; i++) c.send({ type: 'msg', room: 'lobby', text: `same-${i}` });
    await c.nextN(N, (m) => m.type === 'error' && m.code === 'policy_error', 10000);
    await waitFor(async () => (await sentryCount(srv.port, 'sent')) + (await sentryCount(srv.port, 'rate_limited')) === N,
      { timeoutMs: 10000, what: 'every report accounted for' });
    assert.equal(await sentryCount(srv.port, 'sent'), 5);
    assert.equal(await sentryCount(srv.port, 'rate_limited'), N - 5);
    assert.equal(rx.events().length, 5);
    for (const ev of rx.events()) assert.equal(ev.fingerprint[2], `policy.lua:${lineOf(POLICY, '-- BOOM')}`);
  });

  it('a rejected reload is reported once, with the error', T, async () => {
    const rx = await receiver();
    cleanup.push(() => rx.close());
    const { srv, dir } = await sentryServer(rx.dsn, ['--workers', '2']);
    cleanup.push(() => srv.stop());
    await srv.waitLog((o) => o.msg === 'started', 5000);   // both workers booted
    fs.writeFileSync(path.join(dir, 'policy.lua'), 'return {\n  on_join = function( end\n}\n');
    srv.proc.kill('SIGHUP');
    await srv.waitLog((o) => o.msg === 'policy reload failed; the previous policy keeps serving', 8000);
    await waitFor(() => rx.events().some((e) => e.tags.kind === 'reload_rejected'), { timeoutMs: 8000, what: 'the reload event' });
    await sleep(500);
    const evs = rx.events().filter((e) => e.tags.kind === 'reload_rejected');
    assert.equal(evs.length, 1, 'two workers, one report');
    assertEnvelope(rx.got.find((g) => g.event === evs[0]));
    assert.match(evs[0].message.formatted, /policy\.lua:2/);
    assert.equal(evs[0].extra.where, 'policy.lua:2');
    assert.equal(evs[0].tags.hook, 'reload');
    assert.match(evs[0].tags.policy_version, /^[0-9a-f]{12}$/, 'the version still serving');
  });

  it('a first load that fails (policy_boot = wait) is reported', T, async () => {
    const rx = await receiver();
    cleanup.push(() => rx.close());
    const { srv } = await sentryServer(rx.dsn, ['--policy_boot', 'wait'], { 'policy.lua': 'return {\n  on_join = function( end\n}\n' });
    cleanup.push(() => srv.stop());
    await waitFor(() => rx.events().some((e) => e.tags.kind === 'policy_load_failed'), { timeoutMs: 8000, what: 'the load event' });
    const ev = rx.events().find((e) => e.tags.kind === 'policy_load_failed');
    assert.match(ev.message.formatted, /policy\.lua:2/);
    assert.equal(ev.tags.hook, 'load');
  });

  it('a crash leaves a record that the next start sends, then removes', T, async () => {
    const rx = await receiver();
    cleanup.push(() => rx.close());
    const crashDir = tempDir('chatgw-e2e-crash-');
    const first = await startServer(['--crash_dir', crashDir]);
    first.proc.kill('SIGSEGV');
    const ex = await first.waitExit(10000);
    assert.equal(ex.signal, 'SIGSEGV', 'the process still dies of its signal');
    const files = fs.readdirSync(crashDir);
    assert.equal(files.length, 1, `one record: ${files}`);
    const text = fs.readFileSync(path.join(crashDir, files[0]), 'utf8');
    assert.match(text, /^chatgw-crash 1\nsignal 11 SIGSEGV\n/);
    assert.match(text, /\npolicy [0-9a-f]{64}\n/);
    assert.match(text, /\nbacktrace\n.+/);

    const { srv } = await sentryServer(rx.dsn, ['--crash_dir', crashDir]);
    cleanup.push(() => srv.stop());
    await waitFor(() => rx.events().some((e) => e.level === 'fatal'), { timeoutMs: 8000, what: 'the crash event' });
    const rec = rx.got.find((g) => g.event?.level === 'fatal');
    assertEnvelope(rec);
    const ev = rec.event;
    assert.equal(ev.tags.kind, 'crash');
    assert.equal(ev.tags.signal, 'SIGSEGV');
    assert.match(ev.tags.policy_version, /^[0-9a-f]{12}$/);
    assert.equal(ev.environment, 'staging');
    const exc = ev.exception.values[0];
    assert.equal(exc.type, 'SIGSEGV');
    assert.equal(exc.mechanism.meta.signal.number, 11);
    assert.equal(exc.mechanism.handled, false);
    assert.ok(exc.stacktrace.frames.length >= 2, JSON.stringify(exc.stacktrace));
    assert.ok(exc.stacktrace.frames.every((f) => /^0x[0-9a-f]+$/.test(f.instruction_addr)), JSON.stringify(exc.stacktrace));
    await waitFor(() => fs.readdirSync(crashDir).length === 0, { timeoutMs: 5000, what: 'the record removed once accepted' });
  });

  it('a DSN that is down: events counted as failed, the record kept, chat unaffected', T, async () => {
    const s = net.createServer();
    await new Promise((r) => s.listen(0, '127.0.0.1', r));
    const deadPort = s.address().port;
    await new Promise((r) => s.close(r));
    const crashDir = tempDir('chatgw-e2e-crash-');
    fs.writeFileSync(path.join(crashDir, 'crash-0000000001-1.txt'),
      'chatgw-crash 1\nsignal 6 SIGABRT\ncode 0\ntime 1\nversion 0.0.1\npolicy \npid 1\nthread chatgw\nbacktrace\n./chatgw(main+0x1) [0x1234]\n');
    const { srv } = await sentryServer(`http://k@127.0.0.1:${deadPort}/7`, ['--crash_dir', crashDir]);
    cleanup.push(() => srv.stop());
    const c = await chatClient(srv.port, '/ws?room=lobby');
    cleanup.push(() => c.close());
    for (let i = 0; i < 3; i++) c.send({ type: 'msg', room: 'lobby', text: `e-${i}` });
    await c.nextN(3, (m) => m.type === 'error' && m.code === 'policy_error', 5000);
    await waitFor(async () => (await sentryCount(srv.port, 'failed')) === 4, { timeoutMs: 10000, what: '4 failed sends' });
    c.send({ type: 'msg', room: 'lobby', text: 'fine', cid: 'x' });
    await c.next((m) => m.type === 'msg' && m.text === 'fine');
    assert.equal(fs.readdirSync(crashDir).length, 1, 'an unsent record stays for the next start');
  });

  it('a DSN that stalls: at most the queue is held, the rest dropped, the loop free', T, async () => {
    const rx = await receiver({ stall: true });
    cleanup.push(() => rx.close());
    const N = 60;   // each error raised on its own line: distinct fingerprints, no rate limit
    const lines = Array.from({ length: N }, (_, i) => `    if msg.text == "e-${i}" then error("e-${i}") end`);
    const policy = `return {\n  message_types = { "msg" },\n  on_message = function(conn, room, msg)\n${lines.join('\n')}\n    return true\n  end,\n}\n`;
    const { srv } = await sentryServer(rx.dsn, [], { 'policy.lua': policy });
    cleanup.push(() => srv.stop());
    const c = await chatClient(srv.port, '/ws?room=lobby');
    cleanup.push(() => c.close());
    for (let i = 0; i < N; i++) c.send({ type: 'msg', room: 'lobby', text: `e-${i}` });
    await c.nextN(N, (m) => m.type === 'error' && m.code === 'policy_error', 10000);
    c.send({ type: 'msg', room: 'lobby', text: 'fine' });
    await c.next((m) => m.type === 'msg' && m.text === 'fine', 3000);
    // 32 queued and up to 2 taken by the sender before the burst ended: N - 34 .. N - 32 dropped
    await waitFor(async () => (await sentryCount(srv.port, 'dropped')) >= N - 34,
      { timeoutMs: 5000, what: `at least ${N - 34} dropped` });
    const dropped = await sentryCount(srv.port, 'dropped');
    assert.ok(dropped <= N - 32, `${dropped} dropped: the queue holds 32`);
    assert.ok(rx.conc.max <= 2, `${rx.conc.max} requests open at once: 2 at most`);
    assert.equal(await sentryCount(srv.port, 'rate_limited'), 0);
  });

  it('a Redis link that goes down is reported once, not once per retry', T, async () => {
    const rx = await receiver();
    cleanup.push(() => rx.close());
    const redis = await startRedis();
    cleanup.push(() => redis.stop());
    const { srv } = await sentryServer(rx.dsn, ['--redis_url', redis.url, '--redis-backoff-max-ms', '200',
      '--redis-connect-timeout-ms', '500']);
    cleanup.push(() => srv.stop());
    await waitRedis(srv, 'up');
    await redis.stop('SIGKILL');
    await waitFor(() => rx.events().some((e) => e.tags.kind === 'bus_error'), { timeoutMs: 8000, what: 'the bus event' });
    await sleep(1500);   // several reconnect tries fail meanwhile
    const evs = rx.events().filter((e) => e.tags.kind === 'bus_error');
    assert.equal(evs.length, 1, JSON.stringify(evs.map((e) => e.message)));
    assertEnvelope(rx.got.find((g) => g.event === evs[0]));
    assert.equal(evs[0].tags.hook, 'redis');
    assert.match(evs[0].message.formatted, new RegExp(`^redis link down \\(127\\.0\\.0\\.1:${redis.port}\\): `));
  });

  it('a malformed DSN is a configuration error naming the key', T, async () => {
    const r = spawnSync(BIN, ['serve', '--listen', '127.0.0.1:0', '--sentry_dsn', 'https://sentry.example.com/1'],
      { encoding: 'utf8', timeout: 10000 });
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /sentry_dsn: the DSN has no public key/);
    const f = path.join(tempDir('chatgw-e2e-dsn-'), 'dsn');
    fs.writeFileSync(f, '\n');
    const r2 = spawnSync(BIN, ['serve', '--listen', '127.0.0.1:0', '--sentry_dsn_file', f], { encoding: 'utf8', timeout: 10000 });
    assert.equal(r2.status, 2, r2.stderr);
    assert.match(r2.stderr, /sentry_dsn_file: .* is empty/);
  });
});
