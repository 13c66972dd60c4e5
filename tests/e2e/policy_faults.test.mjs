// Policy faults and the sandbox, end to end: an endless loop or a memory bomb in a hook is
// aborted (time guard, memory cap), counted in chatgw_policy_errors_total{hook,kind},
// and contained: the sender of the message gets policy_error, the other clients notice
// nothing, the next message works, the process keeps running. Long C calls (string.rep,
// string.gsub, table.concat, a quadratic string.find) are bounded by their caps, the memory cap
// or the message size. Two servers: one with the default 50 ms time guard for the runaways
// (after a timeout the hook's calls fail at once for 20 timeouts, 1 s here: each test waits that
// out), one with a 2 s guard and a 16 MiB memory cap for errors and memory bombs, so that on a
// slow machine a bomb still meets the cap before the clock. Sandbox escapes (io, os, require of paths, binary chunks, string.dump, debug,
// collectgarbage, __gc) all fail inside a hook.
//
// Fixtures: tests/e2e/fixtures/faults/policy.lua and tests/e2e/fixtures/sandbox/policy.lua.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import {
  startServer, chatClient, scrape, metricSum, waitFor, sleep, rawWebSocket, readyz,
  fixture, scriptsDir, tempDir, writeFiles,
} from './lib.mjs';

const T = { timeout: 60000 };
const FAST = ['--rate-msgs-per-sec', '100000', '--rate-burst', '100000'];
const GUARD = ['--policy-timeout-ms', '2000', '--policy-memory-mb', '16'];
const TRIP_MS = 20 * 50 + 200;     // POLICY_TRIP_FACTOR timeouts of 50 ms, and a margin

async function policyErrors(port, labels) {
  const { samples } = await scrape(port);
  return metricSum(samples, 'chatgw_policy_errors_total', labels);
}

/** Opens path and returns the refused handshake's {status, body}, or {status: 101}. */
async function handshake(port, reqPath) {
  const r = await rawWebSocket(port, reqPath);
  try { return { status: r.status, body: r.body ? r.body.toString('utf8') : '' }; } finally { r.close?.(); }
}

let textSeq = 0;
const uniq = (s = 'hi') => `${s} ${++textSeq}`;

/** c says text in room; resolves the echo the peer gets (and checks the sender's ack/echo). */
async function delivered(c, peer, room, text) {
  const { id } = await c.say(room, text);
  const own = await c.next((m) => m.type === 'msg' && m.id === id, 3000, `own echo of ${id}`);
  const seen = await peer.next((m) => m.type === 'msg' && m.id === id, 3000, `peer copy of ${id}`);
  assert.equal(seen.text, text);
  return { own, seen };
}

// ---------------------------------------------------------------------------------------------

/** A faults server with a sender and another member in room. */
async function faultsServer(args, room) {
  const dir = scriptsDir({ 'policy.lua': fixture('faults/policy.lua') }, 'chatgw-e2e-faults-');
  const srv = await startServer(['--scripts-dir', dir, ...FAST, ...args]);
  const s = await chatClient(srv.port, `/ws?room=${room}&name=sender`);
  const o = await chatClient(srv.port, `/ws?room=${room}&name=other`);
  await s.next('room');
  await o.next('room');
  await s.next('join');                 // o's arrival
  return { srv, s, o };
}

describe('policy faults: runaway hooks and memory bombs are aborted and contained', () => {
  let srv, s, o, main, quick;
  const room = 'faults';
  before(async () => {
    main = await faultsServer(GUARD, room);
    ({ srv, s, o } = main);
    quick = await faultsServer([], room);
  });
  after(async () => {
    for (const c of [s, o, quick?.s, quick?.o]) c?.terminate();
    for (const x of [srv, quick?.srv]) if (x) await x.stop('SIGKILL').catch(() => {});
  });

  const onMessage = [
    { mode: 'loop', kind: 'timeout', what: 'an endless loop' },
    { mode: 'pcall_loop', kind: 'timeout', what: 'an endless loop that pcall()s the timeout error away' },
    { mode: 'gsub_callback_loop', kind: 'timeout', what: 'an endless loop in a callback from string.gsub' },
    { mode: 'sort_loop', kind: 'timeout', what: 'an endless loop in a table.sort comparator' },
    { mode: 'error', kind: 'error', what: 'an error' },
    { mode: 'bad_return', kind: 'error', what: 'an invalid return value' },
    { mode: 'table_bomb', kind: 'memory', what: 'a memory bomb (a growing table of 64 KiB strings)' },
    { mode: 'concat_bomb', kind: 'memory', what: 'a memory bomb (a string doubling itself)' },
    { mode: 'rep_huge', kind: 'error', what: 'string.rep asked for 1 GiB in one C call (over the 4 MiB cap)' },
    { mode: 'rep_sep_huge', kind: 'error', what: 'string.rep with a separator asked for 768 MiB' },
    { mode: 'rep_too_large', kind: 'error', what: 'string.rep asked for 1 TiB' },
    { mode: 'gsub_huge', kind: 'error', what: 'string.gsub expanding every byte to 64 KiB', pad: 3000 },
    { mode: 'concat_huge', kind: 'memory', what: 'table.concat of 8 MiB (over the largest single allocation)' },
  ];

  for (const f of onMessage) {
    it(`on_message: ${f.what} -> aborted (${f.kind}), policy_error to the sender only, the next message works`, T, async () => {
      const { srv, s, o } = f.kind === 'timeout' ? quick : main;
      const before = await policyErrors(srv.port, { hook: 'on_message', kind: f.kind });
      const mark = srv.logs.length;
      const text = `fault:${f.mode}` + (f.pad ? ' ' + 'p'.repeat(f.pad) : '');
      const cid = `fault-${f.mode}`;
      s.send({ type: 'msg', room, text, cid });
      const e = await s.next('error', 10000, `policy_error for ${f.mode}`);
      assert.equal(e.code, 'policy_error', JSON.stringify(e));
      assert.equal(e.ref, cid, 'the error names the dropped message');

      const log = await waitFor(() => srv.logs.slice(mark).find((l) => l.msg === 'policy hook failed'),
        { timeoutMs: 3000, what: '"policy hook failed" log line' });
      assert.equal(log.hook, 'on_message');
      assert.equal(log.kind, f.kind);
      if (f.kind === 'timeout') {
        assert.match(log.error, /policy timeout \(over 50 ms\)/, log.error);
        assert.equal(log.tripped_ms, 1000, 'the hook fails at once for 20 timeouts');
        const tripped = await policyErrors(srv.port, { hook: 'on_message', kind: 'tripped' });
        s.send({ type: 'msg', room, text: 'while tripped', cid: 'tripped' });
        assert.equal((await s.next('error', 3000, 'tripped policy_error')).code, 'policy_error');
        assert.equal(await policyErrors(srv.port, { hook: 'on_message', kind: 'tripped' }), tripped + 1);
        await sleep(TRIP_MS);
      }
      if (f.kind === 'error') assert.match(log.error, /policy\.lua:\d+:|on_message/, log.error);
      assert.equal(await policyErrors(srv.port, { hook: 'on_message', kind: f.kind }), before + 1,
        `chatgw_policy_errors_total{hook="on_message",kind="${f.kind}"} counted once`);

      // the other member saw nothing of it and keeps chatting; the sender's next message works
      await delivered(o, s, room, uniq('other still chatting'));
      const { own } = await delivered(s, o, room, uniq('sender again'));
      assert.equal(own.via, 'faults', 'the next message went through the same policy');
      assert.deepEqual(o.all.filter((m) => m.type === 'error'), [], 'the other client never got an error');
      assert.equal(o.all.filter((m) => m.type === 'msg' && String(m.text).startsWith('fault:')).length, 0,
        'the failed message was not delivered');
      assert.ok(s.isOpen && o.isOpen);
    });
  }

  it('a pathological string.find (one C call, quadratic) stops at the matcher\'s step limit: policy_error, and a short text still matches', T, async () => {
    const head = 'find:';
    const r1 = await delivered(s, o, room, head + 'a'.repeat(500) + 'b');   // ~125k steps: fine
    assert.equal(r1.seen.found, true);
    const before = await policyErrors(srv.port, { hook: 'on_message', kind: 'error' });
    const mark = srv.logs.length;
    s.send({ type: 'msg', room, text: head + 'a'.repeat(4000), cid: 'find-quadratic' });   // ~16M steps
    const e = await s.next('error', 5000, 'policy_error');
    assert.equal(e.code, 'policy_error');
    const log = await waitFor(() => srv.logs.slice(mark).find((l) => l.msg === 'policy hook failed'),
      { timeoutMs: 3000, what: '"policy hook failed" log line' });
    assert.match(log.error, /pattern too complex \(over 10000000 steps\)/, log.error);
    assert.equal(await policyErrors(srv.port, { hook: 'on_message', kind: 'error' }), before + 1);
    const r2 = await delivered(s, o, room, head + 'aab');
    assert.equal(r2.seen.found, true);
  });

  it('on_connect: a runaway refuses the upgrade with 503 (policy_fail = closed); a refusal is 403 with the reason', T, async () => {
    const q = quick.srv;
    const b = await policyErrors(q.port, { hook: 'on_connect', kind: 'timeout' });
    const m = await policyErrors(srv.port, { hook: 'on_connect', kind: 'memory' });
    const r1 = await handshake(q.port, `/ws?room=${room}&fault=loop`);
    assert.equal(r1.status, 503);
    assert.match(r1.body, /policy_error/);
    const tripped = await handshake(q.port, `/ws?room=${room}&name=early`);   // within the trip: refused at once
    assert.equal(tripped.status, 503);
    assert.equal(await policyErrors(q.port, { hook: 'on_connect', kind: 'tripped' }), 1);
    const r2 = await handshake(srv.port, `/ws?room=${room}&fault=table_bomb`);
    assert.equal(r2.status, 503);
    const r3 = await handshake(srv.port, `/ws?room=${room}&refuse=1`);
    assert.equal(r3.status, 403);
    assert.match(r3.body, /go_away/);
    assert.equal(await policyErrors(q.port, { hook: 'on_connect', kind: 'timeout' }), b + 1);
    assert.equal(await policyErrors(srv.port, { hook: 'on_connect', kind: 'memory' }), m + 1);
    await sleep(TRIP_MS);
    const c = await chatClient(q.port, '/ws?name=fine');     // the next connection is admitted
    await c.close();
    await delivered(quick.s, quick.o, room, uniq('after connect faults'));
  });

  it('on_join: a runaway refuses the join with policy_error; a refusal carries the policy\'s code', T, async () => {
    const { srv, s, o } = quick;
    const before = await policyErrors(srv.port, { hook: 'on_join', kind: 'timeout' });
    const e1 = await s.expectError({ type: 'join', room: 'fault-loop' }, 'policy_error', 10000);
    assert.equal(e1.ref, 'fault-loop');
    await sleep(TRIP_MS);
    const e2 = await s.expectError({ type: 'join', room: 'members-only' }, 'members_only');
    assert.equal(e2.ref, 'members-only');
    assert.equal(await policyErrors(srv.port, { hook: 'on_join', kind: 'timeout' }), before + 1);
    const snap = await s.join('no-faults-here');
    assert.equal(snap.room, 'no-faults-here');
    await delivered(s, o, room, uniq('after join faults'));
  });

  it('on_leave: a runaway is counted; the leave still happens and nobody is disconnected', T, async () => {
    const { srv, s, o } = quick;
    const before = await policyErrors(srv.port, { hook: 'on_leave', kind: 'timeout' });
    await s.join('leavefault-1');
    await o.join('leavefault-1');
    s.send({ type: 'leave', room: 'leavefault-1' });
    const left = await o.next((m) => m.type === 'leave' && m.room === 'leavefault-1', 3000, 'leave presence');
    assert.equal(left.member?.id ?? left.id, s.id);
    await waitFor(async () => (await policyErrors(srv.port, { hook: 'on_leave', kind: 'timeout' })) >= before + 1,
      { timeoutMs: 5000, what: 'on_leave timeout counted' });
    assert.ok(s.isOpen && o.isOpen);
    await delivered(s, o, room, uniq('after leave fault'));
  });

  it('on_tick: a runaway every second is counted while chat goes on', T, async () => {
    const { srv, s, o } = quick;
    const before = await policyErrors(srv.port, { hook: 'on_tick', kind: 'timeout' });
    await delivered(s, o, room, 'tick:loop');
    try {
      await waitFor(async () => (await policyErrors(srv.port, { hook: 'on_tick', kind: 'timeout' })) >= before + 2,
        { timeoutMs: 8000, what: 'two on_tick timeouts' });
      await delivered(o, s, room, uniq('during tick faults'));
    } finally {
      await delivered(s, o, room, 'tick:off');
    }
  });

  it('policy_fail = open: a failing on_connect or on_join lets the client in', T, async () => {
    const dir = scriptsDir({ 'policy.lua': fixture('faults/policy.lua') }, 'chatgw-e2e-faults-open-');
    const open = await startServer(['--scripts-dir', dir, '--policy-fail', 'open']);
    try {
      const c = await chatClient(open.port, '/ws?room=fault-loop&fault=loop');
      const snap = await c.next('room', 5000);
      assert.equal(snap.room, 'fault-loop');
      const { samples } = await scrape(open.port);
      assert.equal(metricSum(samples, 'chatgw_policy_errors_total', { hook: 'on_connect', kind: 'timeout' }), 1);
      assert.equal(metricSum(samples, 'chatgw_policy_errors_total', { hook: 'on_join', kind: 'timeout' }), 1);
      // on_message still fails closed: the message is dropped
      c.send({ type: 'msg', room: 'fault-loop', text: 'fault:loop', cid: 'x' });
      assert.equal((await c.next('error', 5000)).code, 'policy_error');
      await c.close();
    } finally {
      await open.stop('SIGKILL').catch(() => {});
    }
  });

  it('the process never stopped, and every fault is in /metrics', T, async () => {
    assert.equal(srv.exitInfo, null);
    const rz = await readyz(srv.port);
    assert.equal(rz.status, 200);
    const { samples } = await scrape(srv.port);
    for (const kind of ['error', 'memory']) {
      assert.ok(metricSum(samples, 'chatgw_policy_errors_total', { hook: 'on_message', kind }) > 0, `on_message ${kind}`);
    }
    const q = await scrape(quick.srv.port);
    for (const kind of ['timeout', 'tripped'])
      assert.ok(metricSum(q.samples, 'chatgw_policy_errors_total', { hook: 'on_message', kind }) > 0, `on_message ${kind}`);
    assert.equal(quick.srv.exitInfo, null);
    assert.deepEqual(o.all.filter((m) => m.type === 'error'), [], 'the bystander never saw an error');
    assert.equal(o.closeInfo, null);
  });
});

// ---------------------------------------------------------------------------------------------

/** A real Lua 5.4 binary chunk of `return "binary chunk ran"` as a Lua string literal, or null. */
function binaryChunkLiteral() {
  const r = spawnSync('lua5.4', ['-e', 'io.write(string.dump(load("return \\"binary chunk ran\\"")))'],
    { timeout: 5000 });
  if (r.status !== 0 || !r.stdout || r.stdout[0] !== 0x1b) return null;
  return '"' + [...r.stdout].map((b) => `\\${b}`).join('') + '"';
}

describe('policy sandbox: escapes fail inside a hook', () => {
  let srv, c, root, marker, keep, chunkLit;
  const room = 'sandbox';
  before(async () => {
    root = tempDir('chatgw-e2e-sandbox-');
    // a module one level up: require "../x" must not reach it
    fs.writeFileSync(path.join(root, 'x.lua'), 'return "ESCAPED through ../x"\n');
    fs.writeFileSync(path.join('/tmp', `x-${process.pid}.lua`), 'return "ESCAPED"\n');
    process.once('exit', () => fs.rmSync(path.join('/tmp', `x-${process.pid}.lua`), { force: true }));
    marker = path.join(root, 'os_execute_ran');
    keep = path.join(root, 'keep.txt');
    fs.writeFileSync(keep, 'must survive os.remove');
    const files = { 'policy.lua': fixture('sandbox/policy.lua') };
    chunkLit = binaryChunkLiteral();
    if (chunkLit) files['chunk.lua'] = `-- e2e: a binary chunk made outside the sandbox\nreturn ${chunkLit}\n`;
    const dir = writeFiles(path.join(root, 'scripts'), files);
    // escapes are about the sandbox, not the clock: 8 MiB of GC churn under ASan takes a while
    srv = await startServer(['--scripts-dir', dir, ...FAST, '--policy-timeout-ms', '2000']);
    c = await chatClient(srv.port, `/ws?room=${room}&name=prober`);
    await c.next('room');
  });
  after(async () => {
    c?.terminate();
    if (srv) await srv.stop('SIGKILL').catch(() => {});
  });

  async function probe(name, arg = '') {
    c.send({ type: 'msg', room, text: `probe:${name}${arg ? ' ' + arg : ''}`, cid: `probe-${name}` });
    const r = await c.next((m) => m.type === 'probe' && m.name === name, 5000, `probe ${name}`);
    assert.equal(r.escaped, false, `${name} escaped the sandbox: ${JSON.stringify(r)}`);
    return r;
  }

  const cases = [
    ['io_open', /io/], ['io_lines', /io/], ['rawget_io', /no io/],
    ['os_execute', /execute/, () => marker], ['os_getenv', /getenv/], ['os_remove', /remove/, () => keep],
    ['os_exit', /exit/],
    ['require_parent', /module names|scripts directory/], ['require_absolute', /module names|scripts directory/],
    ['require_dotted', /module names|scripts directory/], ['require_missing', /no file|scripts directory/],
    ['package_loadlib', /package/], ['dofile', /dofile/], ['loadfile', /loadfile/],
    ['load_binary', /binary/], ['load_binary_mode_b', /binary/], ['load_binary_reader', /binary/],
    ['string_dump', /dump/], ['string_mt_dump', /dump/],
    ['debug_sethook', /debug/], ['debug_getregistry', /debug/], ['coroutine_wrap', /coroutine/],
    ['collectgarbage_stop', /not allowed/], ['collectgarbage_collect', /not allowed/],
    ['collectgarbage_step', /not allowed/], ['collectgarbage_incremental', /not allowed/],
    ['collectgarbage_generational', /not allowed/], ['collectgarbage_setpause', /not allowed/],
    ['gc_finalizer', /__gc/], ['config_write', /read-only/],
  ];
  for (const [name, re, arg] of cases) {
    it(`${name} fails inside on_message`, T, async () => {
      const r = await probe(name, arg ? arg() : '');
      assert.equal(r.ok, false, `${name} raised: ${JSON.stringify(r)}`);
      assert.match(r.result, re);
    });
  }

  it('the binary chunk used above is real: a plain lua5.4 runs it', (t) => {
    if (!chunkLit) { t.skip('lua5.4 not installed: the probes used a fake chunk header'); return; }
    const r = spawnSync('lua5.4', ['-e', `io.write(load(${chunkLit}, "=chunk", "b")())`], { timeout: 5000, encoding: 'utf8' });
    assert.equal(r.stdout, 'binary chunk ran', r.stderr);
  });

  it('load of text cannot reach io either', T, async () => {
    const r = await probe('load_env_io');
    assert.equal(r.result, 'nil');
  });

  it('nothing the probes tried happened: no file created or removed, the process is up', T, async () => {
    assert.ok(!fs.existsSync(marker), 'os.execute did not run');
    assert.ok(fs.existsSync(keep), 'os.remove did not run');
    assert.equal(srv.exitInfo, null, 'os.exit did not run');
    assert.equal((await readyz(srv.port)).status, 200);
  });

  it('an escape attempt without pcall fails the hook: policy_error, and the next message works', T, async () => {
    for (const name of ['io_open', 'os_execute', 'string_dump', 'debug_sethook', 'require_parent', 'collectgarbage_stop']) {
      const e = await c.expectError({ type: 'msg', room, text: `raw:${name}`, cid: `raw-${name}` }, 'policy_error');
      assert.equal(e.ref, `raw-${name}`);
    }
    const { id } = await c.say(room, 'plain text');
    const m = await c.next((x) => x.type === 'msg' && x.id === id);
    assert.equal(m.via, 'sandbox');
  });

  it('collectgarbage abuse leaves the collector running: 160 MiB of garbage through a 64 MiB VM', T, async () => {
    for (const opt of ['stop', 'collect', 'step', 'incremental', 'generational']) await probe(`collectgarbage_${opt}`);
    const before = await policyErrors(srv.port, {});
    for (let i = 0; i < 20; i++) {
      c.send({ type: 'msg', room, text: 'gc:churn', cid: `churn-${i}` });
      const r = await c.next((m) => m.type === 'churn' || m.type === 'error', 5000, `churn ${i}`);
      assert.equal(r.type, 'churn', `churn ${i}: ${JSON.stringify(r)}`);
      assert.ok(r.kb < 64 * 1024, `the VM holds ${r.kb} KiB`);
    }
    assert.equal(await policyErrors(srv.port, {}), before, 'no memory error: the garbage was collected');
  });
});
