// A stuck event loop, end to end. Nothing in chatgw should block a loop (the policy runs under
// its time guard), so the test makes one stuck from outside: gdb attaches and calls sleep() on
// the loop's thread, with every signal blocked on that thread first, so that the signals go to
// the sentinel's thread as they would while the loop spins in some C path. Then:
//   - /healthz answers 503 {"status":"stuck"} from the sentinel within a few seconds, and 200
//     again once the loop turns;
//   - SIGTERM still ends the process within drain_timeout_ms plus the sentinel's 5 s grace.
// Both with workers=1 (the loop is the main thread) and workers=2 (one worker stuck).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { startServer, httpGet, sleep, waitFor, passthroughPolicyDir } from './lib.mjs';

const T = { timeout: 60000 };
const GRACE_MS = 5000;             // SENTINEL_EXIT_GRACE_MS
const STALL_MS = 2000;             // SENTINEL_STALL_MS

/** Makes thread tid of pid sleep for seconds inside gdb, with every signal blocked on it first.
 * Returns {gdb, done}: done resolves with gdb's output when it detaches. */
function stall(pid, tid, seconds) {
  const script = [
    'python',
    'import gdb',
    'for t in gdb.selected_inferior().threads():',
    `    if t.ptid[1] == ${tid}:`,
    '        t.switch()',
    'end',
    'set $m = (void *)malloc(256)',
    'call (int)sigfillset($m)',
    'call (int)pthread_sigmask(0, $m, 0)',
    `call (unsigned int)sleep(${seconds})`,
  ].join('\n');
  const file = `/tmp/chatgw-e2e-stall-${process.pid}-${tid}.gdb`;
  fs.writeFileSync(file, script + '\n');
  const g = spawn('gdb', ['-p', String(pid), '-batch', '-nx', '-ex', 'handle all nostop noprint pass',
    '-ex', 'set scheduler-locking off', '-x', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  g.stdout.on('data', (d) => { out += d; });
  g.stderr.on('data', (d) => { out += d; });
  const done = new Promise((resolve) => g.on('exit', () => { fs.rmSync(file, { force: true }); resolve(out); }));
  return { gdb: g, done };
}

/** The thread running the loop to stall: the main thread with workers=1, else worker-1 (named
 * once its thread runs). */
async function loopThread(pid, workers) {
  if (workers === 1) return pid;
  const named = () => fs.readdirSync(`/proc/${pid}/task`).find((tid) =>
    fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim() === 'worker-1');
  return Number(await waitFor(named, { timeoutMs: 3000, what: 'a thread named worker-1' }));
}

const gdbWorks = spawnSync('gdb', ['--version'], { timeout: 10000 }).status === 0;

/** Polls /healthz until pred(status, body) or timeoutMs; returns the last answer. */
async function healthUntil(port, pred, timeoutMs) {
  const t0 = Date.now();
  let last = null;
  while (Date.now() - t0 < timeoutMs) {
    try {
      const r = await httpGet(port, '/healthz', {}, { timeoutMs: 1000 });
      last = { status: r.status, body: r.body.toString('utf8') };
      if (pred(last.status, last.body)) return last;
    } catch (e) { last = { error: e.message }; }
    await sleep(100);
  }
  return last;
}

for (const workers of [1, 2]) {
  describe(`a stuck event loop (workers=${workers})`, { skip: !gdbWorks && 'gdb is not installed' }, () => {
    it('healthz answers 503 from the sentinel while the loop is stuck, 200 once it turns again', T, async () => {
      const srv = await startServer(['--scripts-dir', passthroughPolicyDir(), '--workers', workers]);
      try {
        const ok = await httpGet(srv.port, '/healthz');
        assert.equal(ok.status, 200);
        const g = stall(srv.proc.pid, await loopThread(srv.proc.pid, workers), 6);
        // with workers=2 half the connections go to the other, healthy worker: look for one 503
        const stuck = await healthUntil(srv.port, (s) => s === 503, STALL_MS + 4000);
        assert.equal(stuck?.status, 503, `no 503 while stuck: ${JSON.stringify(stuck)}\n${srv.tail(10)}`);
        assert.match(stuck.body, /"status":"stuck"/);
        await srv.waitLog((o) => o.msg === 'event loop stuck: new connections get 503 from the sentinel', 5000);
        await g.done;
        await srv.waitLog((o) => o.msg === 'event loop beats again', 5000);
        for (let i = 0; i < 6; i++) assert.equal((await httpGet(srv.port, '/healthz')).status, 200);
        assert.equal(srv.exitInfo, null);
      } finally {
        await srv.stop('SIGKILL').catch(() => {});
      }
    });

    it('SIGTERM ends the process within drain_timeout_ms plus the grace although the loop is stuck', T, async () => {
      const drain = 500;
      const srv = await startServer(['--scripts-dir', passthroughPolicyDir(), '--workers', workers,
        '--drain-timeout-ms', drain]);
      try {
        const g = stall(srv.proc.pid, await loopThread(srv.proc.pid, workers), 30);
        await srv.waitLog((o) => o.msg === 'event loop stuck: new connections get 503 from the sentinel', STALL_MS + 4000);
        const t0 = Date.now();
        srv.proc.kill('SIGTERM');
        const exit = await srv.waitExit(drain + GRACE_MS + 4000);
        const took = Date.now() - t0;
        assert.ok(took >= drain, `exited after ${took} ms`);
        assert.equal(exit.code, 1, 'a drain cut short exits 1');
        assert.ok(srv.logs.some((o) => o.msg === 'drain did not end in time (an event loop is stuck?): exiting'), srv.tail(10));
        g.gdb.kill('SIGKILL');
        await g.done;
      } finally {
        await srv.stop('SIGKILL').catch(() => {});
      }
    });
  });
}
