// `chatgw check DIR`, end to end: it loads a policy directory exactly as the server would (the
// same sandbox, time guard, budget and self_test) and prints "ok <version>" with exit 0, or
// "file:line: message" with exit 1. The version it prints is the one a server on the same
// directory reports in welcome, /readyz and chatgw_policy_info.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import {
  startServer, chatClient, scrape, readyz, runCheck, fixture, lineOf, scriptsDir, defaultScripts,
  AtomicWriterDir, tempDir, SCRIPTS, BIN, SRC,
} from './lib.mjs';

const T = { timeout: 30000 };
const TAGGER = { 'policy.lua': fixture('tagger/policy.lua'), 'tag.lua': fixture('tagger/tag.lua') };

/** Runs `chatgw serve` on dir and resolves {code, stderr} once it exits (killed after ms). */
function serveUntilExit(dir, ms = 10000) {
  return new Promise((resolve, reject) => {
    const p = spawn(BIN, ['serve', '--listen', '127.0.0.1:0', '--scripts-dir', dir], { cwd: SRC, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    p.stderr.setEncoding('utf8').on('data', (d) => { stderr += d; });
    const t = setTimeout(() => { p.kill('SIGKILL'); reject(new Error(`chatgw serve kept running on a broken policy\n${stderr}`)); }, ms);
    p.on('exit', (code) => { clearTimeout(t); resolve({ code, stderr }); });
  });
}

function okVersion(r) {
  assert.equal(r.code, 0, `exit 0; stderr: ${r.stderr}`);
  const m = /^ok ([0-9a-f]{64})\n$/.exec(r.stdout);
  assert.ok(m, `stdout is "ok <sha256>": ${JSON.stringify(r.stdout)}`);
  return m[1];
}

/** Asserts exit 1 and a first stderr line "file:line: ..." (line null: "file: " or "file:N: "). */
function failsAt(r, file, line, re) {
  assert.equal(r.code, 1, `exit 1; stdout: ${r.stdout} stderr: ${r.stderr}`);
  assert.ok(!/^ok /m.test(r.stdout), 'no "ok" line');
  const first = r.stderr.split('\n')[0];
  const where = line == null ? `${file.replace('.', '\\.')}:(\\d+:)? ` : `${file.replace('.', '\\.')}:${line}: `;
  assert.match(first, new RegExp(`^${where}`), `stderr names ${file}${line == null ? '' : ':' + line}: ${JSON.stringify(r.stderr)}`);
  if (re) assert.match(first, re);
  return first;
}

describe('chatgw check', () => {
  const servers = [];
  after(async () => { for (const s of servers) await s.stop('SIGKILL').catch(() => {}); });

  it('a good directory: exit 0, and the version is what a server on that directory reports', T, async () => {
    const dir = scriptsDir(defaultScripts(), 'chatgw-e2e-check-good-');
    const version = okVersion(await runCheck(dir));
    const srv = await startServer(['--scripts-dir', dir]);
    servers.push(srv);
    const rz = await readyz(srv.port);
    assert.equal(rz.body.policy.version, version, '/readyz policy.version');
    const { samples } = await scrape(srv.port);
    assert.deepEqual(samples.filter((s) => s.name === 'chatgw_policy_info').map((s) => s.labels.version), [version],
      'chatgw_policy_info{version}');
    const c = await chatClient(srv.port, '/ws');
    assert.equal(c.welcome.policy, version, 'welcome.policy');
    await c.close();
    const loaded = srv.logs.find((o) => o.msg === 'policy loaded');
    assert.equal(loaded?.version, version, 'the "policy loaded" log line');
  });

  it('the shipped scripts/ pass, and the version depends on the sources only (a copy, a ConfigMap layout)', T, async () => {
    const shipped = okVersion(await runCheck('scripts'));                      // relative to the repo root
    assert.equal(okVersion(await runCheck(SCRIPTS)), shipped);
    assert.equal(okVersion(await runCheck(scriptsDir(defaultScripts()))), shipped, 'a plain copy');
    const cm = AtomicWriterDir.create(defaultScripts(), 'chatgw-e2e-check-cm-');
    assert.equal(okVersion(await runCheck(cm.dir)), shipped, 'a kubelet ConfigMap layout (symlinks through ..data)');
    const changed = scriptsDir(defaultScripts({ 'settings.lua': defaultScripts()['settings.lua'] + '\n-- edited\n' }));
    assert.notEqual(okVersion(await runCheck(changed)), shipped, 'any change to a source changes the version');
  });

  it('a syntax error: exit 1 with file:line', T, async () => {
    const text = fixture('rejected/syntax_error.lua');
    const dir = scriptsDir({ ...TAGGER, 'policy.lua': text });
    failsAt(await runCheck(dir), 'policy.lua', lineOf(text, '-- LINE'), /unexpected symbol/);
    // the server refuses to start on it, with the same message
    const r = await serveUntilExit(dir);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, new RegExp(`policy\\.lua:${lineOf(text, '-- LINE')}: unexpected symbol`));
  });

  it('a syntax error in a required module names that module', T, async () => {
    const text = fixture('rejected/module_syntax_error.lua');
    const dir = scriptsDir({ ...TAGGER, 'tag.lua': text });
    failsAt(await runCheck(dir), 'tag.lua', lineOf(text, '-- LINE'), /unexpected symbol/);
  });

  it('self_test failures: an error in self_test, and a settings typo caught by the default policy\'s self_test', T, async () => {
    const text = fixture('rejected/self_test_error.lua');
    failsAt(await runCheck(scriptsDir({ ...TAGGER, 'policy.lua': text })), 'policy.lua', lineOf(text, '-- LINE'),
      /self_test refuses this policy/);
    // settings.lua (through secrets.lua) with an invalid word_action: moderation.lua's self_test says where
    const mod = fs.readFileSync(path.join(SCRIPTS, 'moderation.lua'), 'utf8');
    const typo = scriptsDir(defaultScripts({ 'secrets.lua': 'return { moderation = { word_action = "mangle" } }\n' }));
    failsAt(await runCheck(typo), 'moderation.lua', lineOf(mod, 'settings.moderation.word_action must be'), /word_action/);
    const rooms = fs.readFileSync(path.join(SCRIPTS, 'rooms.lua'), 'utf8');
    const pattern = scriptsDir(defaultScripts({ 'secrets.lua': 'return { rooms = { private = { "^[unclosed" } } }\n' }));
    failsAt(await runCheck(pattern), 'rooms.lua', lineOf(rooms, ']: bad pattern: '), /private\[1\].*bad pattern/);
  });

  it('an endless loop at load time and a sandbox violation: exit 1 with file:line', T, async () => {
    const loop = fixture('rejected/load_loop.lua');
    failsAt(await runCheck(scriptsDir({ 'policy.lua': loop })), 'policy.lua', lineOf(loop, '-- LINE'), /policy timeout/);
    const io = fixture('rejected/sandbox_at_load.lua');
    failsAt(await runCheck(scriptsDir({ 'policy.lua': io })), 'policy.lua', lineOf(io, '-- LINE'), /io/);
    failsAt(await runCheck(scriptsDir({ 'policy.lua': fixture('rejected/unknown_hook.lua') })), 'policy.lua', null, /on_mesage/);
  });

  it('uses the configured budget and time guard, as the server would', T, async () => {
    const text = '-- e2e: about 300k instructions at load time\nlocal n = 0\nfor i = 1, 100000 do n = n + i end\nreturn {}\n';
    const dir = scriptsDir({ 'policy.lua': text });
    okVersion(await runCheck(dir));
    failsAt(await runCheck(dir, ['--policy-budget', '1000']), 'policy.lua', 3, /budget/);
    const slow = '-- e2e: about half a second at load time\nlocal t = os.clock()\nwhile os.clock() - t < 0.5 do end\nreturn {}\n';
    const slowDir = scriptsDir({ 'policy.lua': slow });
    failsAt(await runCheck(slowDir), 'policy.lua', 3, /policy timeout \(over 50 ms\)/);
    okVersion(await runCheck(slowDir, ['--policy-timeout-ms', '5000']));
  });

  it('a directory without policy.lua, or no directory at all: exit 1', T, async () => {
    const empty = tempDir('chatgw-e2e-check-empty-');
    failsAt(await runCheck(empty), 'policy.lua', null, /missing/);
    const r = await runCheck(path.join(empty, 'does-not-exist'));
    assert.equal(r.code, 1);
    assert.match(r.stderr, /does-not-exist/);
  });
});
