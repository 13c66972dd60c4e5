// policy_boot: what a process does when its first policy load fails.
//   exit (the default): `chatgw serve` exits 1 with the load error on stderr.
//   wait: it boots and listens with NO policy: /healthz 200 (alive, no crash loop), /readyz 503
//   naming the error, every chat connect refused (503, never a permissive fallback),
//   chatgw_policy_loaded 0; once the directory holds a policy that loads (here a ConfigMap-style
//   volume, updated as the kubelet does), the reload loads it and the process becomes ready.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import {
  startServer, chatClient, scrape, readyz, httpGet, metricSum, fixture, defaultScripts, scriptsDir,
  AtomicWriterDir, BIN, SRC,
} from './lib.mjs';

const T = { timeout: 30000 };

/** Resolves {code, stderr} once `chatgw serve ...args` exits (rejects if it keeps running ms). */
function serveUntilExit(args, ms = 10000) {
  return new Promise((resolve, reject) => {
    const p = spawn(BIN, ['serve', '--listen', '127.0.0.1:0', ...args], { cwd: SRC, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    p.stderr.setEncoding('utf8').on('data', (d) => { stderr += d; });
    const t = setTimeout(() => { p.kill('SIGKILL'); reject(new Error(`chatgw serve kept running on a broken policy\n${stderr}`)); }, ms);
    p.on('exit', (code) => { clearTimeout(t); resolve({ code, stderr }); });
  });
}

/** Polls fn until it returns a truthy value (rejects after ms with what). */
async function until(fn, ms, what) {
  const t0 = Date.now();
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The status a refused chat handshake got (fails when it is admitted). */
async function refusedStatus(port, path) {
  try {
    const c = await chatClient(port, path);
    c.terminate();
  } catch (e) {
    return e.statusCode;
  }
  assert.fail(`chat connect ${path} was admitted without a policy`);
}

const broken = () => ({ ...defaultScripts(), 'policy.lua': fixture('rejected/syntax_error.lua') });

describe('policy_boot', () => {
  const servers = [];
  after(async () => { for (const s of servers) await s.stop('SIGKILL').catch(() => {}); });

  it('exit (the default, and named): a first load that fails exits 1 with the error', T, async () => {
    const dir = scriptsDir(broken());
    for (const args of [['--scripts-dir', dir], ['--scripts-dir', dir, '--policy-boot', 'exit']]) {
      const r = await serveUntilExit(args);
      assert.equal(r.code, 1, `exit 1 (${args.join(' ')}); stderr: ${r.stderr}`);
      assert.match(r.stderr, /policy\.lua:\d+: unexpected symbol/);
    }
  });

  it('an unknown value is a configuration error', T, async () => {
    const r = await serveUntilExit(['--scripts-dir', scriptsDir(defaultScripts()), '--policy-boot', 'permissive']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /policy_boot: expected "exit" or "wait"/);
  });

  for (const workers of [1, 2]) {
    it(`wait (${workers} worker${workers > 1 ? 's' : ''}): alive, unready, refusing chat, until the fixed ConfigMap reloads`, T, async () => {
      const cm = AtomicWriterDir.create(broken());
      const srv = await startServer(['--scripts-dir', cm.dir, '--policy-boot', 'wait', '--workers', workers]);
      servers.push(srv);
      await srv.waitLog((o) => o.msg.startsWith('policy load failed') && /unexpected symbol/.test(o.error));

      const h = await httpGet(srv.port, '/healthz');
      assert.equal(h.status, 200, 'alive: the kubelet does not restart it');

      const r = await readyz(srv.port);
      assert.equal(r.status, 503, 'not ready: no Service traffic');
      assert.equal(r.body.status, 'policy_not_loaded');
      assert.equal(r.body.checks.policy, 'not_loaded');
      assert.equal(r.body.policy.version, '');
      assert.match(r.body.policy.last_error, /policy\.lua:\d+: unexpected symbol/);

      // never a permissive fallback: every chat connect is refused, on both chat paths
      assert.equal(await refusedStatus(srv.port, '/ws?room=lobby&name=alice'), 503);
      assert.equal(await refusedStatus(srv.port, '/lobby'), 503);
      const refusal = await httpGet(srv.port, '/ws', {
        Upgrade: 'websocket', Connection: 'Upgrade', 'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==',
      });
      assert.equal(refusal.status, 503);
      assert.match(refusal.text, /policy_unavailable/);

      const m = await scrape(srv.port);
      assert.equal(metricSum(m.samples, 'chatgw_policy_loaded'), 0);
      assert.ok(metricSum(m.samples, 'chatgw_policy_reloads_total', { result: 'failed' }) >= workers);

      // a second broken update is still refused, and the process keeps running
      cm.write({ ...broken(), 'settings.lua': 'return {}\n-- still broken\n' });
      await new Promise((res) => setTimeout(res, 300));
      assert.equal((await readyz(srv.port)).status, 503);
      assert.equal(srv.exitInfo, null, 'still running');

      // the fix: the kubelet swaps ..data; the watch reloads it
      cm.write(defaultScripts());
      const ok = await until(async () => { const x = await readyz(srv.port); return x.status === 200 && x; },
        10000, '/readyz 200 after the fix');
      assert.equal(ok.body.checks.policy, 'ok');
      assert.match(ok.body.policy.version, /^[0-9a-f]{64}$/);
      assert.equal(ok.body.policy.last_error, null);
      // the gauge is the least over the workers, and /readyz answers for one of them: the other
      // may reload a moment later
      await until(async () => metricSum((await scrape(srv.port)).samples, 'chatgw_policy_loaded') === 1, 10000,
        'chatgw_policy_loaded 1 once every worker reloaded');

      // every worker loaded it: chat connects work (several tries reach both workers)
      for (let i = 0; i < 4 * workers; i++) {
        const c = await until(() => chatClient(srv.port, `/ws?room=lobby&name=u${i}`).catch(() => null), 5000,
          'a chat connect after the fix');
        assert.equal(c.welcome.policy ?? ok.body.policy.version, ok.body.policy.version);
        c.terminate();
      }
    });
  }
});
