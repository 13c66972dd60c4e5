// Staged policy rollout, end to end: a candidate policy beside the stable one (policy_candidate_dir).
// Shadow: the candidate drops, sends, kicks and writes gw.store, and nothing of it reaches a
// client, while the disagreements show in chatgw_policy_shadow_diff_total and a sampled log line.
// Canary at 50 %: connections split about evenly by a hash of their id, and keep their arm across
// reloads of both policies. Rollback: a candidate that errors on every message is switched off
// within the window, the stable arm loses nothing, /readyz and /metrics say so, and a new
// candidate version arms it again. Replay: a recorded file run through two policies offline.
// Every wait is bounded.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import {
  BIN, SRC, startServer, chatClient, clientPool, scrape, metricSum, waitFor, readyz, tempDir, writeFiles, withTimeout,
} from './lib.mjs';

const T = { timeout: 120000 };
const FAST = ['--rate-msgs-per-sec', '100000', '--rate-burst', '100000'];

// stable: delivers every message as is, unless gw.store holds what only the candidate writes
const STABLE = `-- e2e: stable policy of the rollout tests
local tag = require("tag")
return {
  on_message = function(conn, room, msg)
    if gw.store.get("candidate_wrote") then msg.text = msg.text .. " LEAKED" end
    msg.tag = tag.name
    return msg
  end,
}
`;

// candidate: drops "spam" (and tells the sender), kicks on "kickme", writes gw.store on every message
const SHADOW_CANDIDATE = `-- e2e: a candidate that disagrees
local tag = require("tag")
return {
  on_message = function(conn, room, msg)
    gw.store.set("candidate_wrote", true)
    if msg.text:find("spam", 1, true) then
      gw.send(conn.id, { type = "notice", text = "spam is not welcome" })
      return nil, "spam_blocked"
    end
    if msg.text == "kickme" then gw.kick(conn.id, "kicked", "by the candidate") end
    if msg.text == "shout" then gw.broadcast(room, { type = "notice", text = "SHOUT" }) end
    msg.tag = tag.name
    return msg
  end,
}
`;

const ERRORING = `-- e2e: a candidate that fails on every message
return { on_message = function(conn, room, msg) error("candidate broke") end }
`;

const tagFile = (name) => `return { name = ${JSON.stringify(name)} }\n`;
const policyDir = (policy, tag) => writeFiles(tempDir('chatgw-e2e-rollout-'), { 'policy.lua': policy, 'tag.lua': tagFile(tag) });

async function counter(port, name, labels = {}) {
  const { samples } = await scrape(port);
  return metricSum(samples, name, labels);
}

function logAfter(srv, mark, pred, ms = 5000, what = 'log line') {
  return waitFor(() => srv.logs.slice(mark).find(pred), { timeoutMs: ms, what: `${what}\n${srv.tail(15)}` });
}

describe('policy rollout: shadow', () => {
  it('counts and logs what the candidate would change, and changes nothing for clients', T, async () => {
    const stable = policyDir(STABLE, 'stable');
    const cand = policyDir(SHADOW_CANDIDATE, 'candidate');
    const srv = await startServer([...FAST, '--scripts-dir', stable, '--policy-candidate-dir', cand,
      '--policy-candidate-mode', 'shadow']);
    const pool = clientPool();
    try {
      const ready = await readyz(srv.port);
      assert.equal(ready.status, 200);
      assert.equal(ready.body.candidate.mode, 'shadow');
      assert.equal(ready.body.candidate.state, 'active');
      assert.match(ready.body.candidate.version, /^[0-9a-f]{64}$/);
      const alice = await pool.open(srv.port, '/ws?room=lobby&name=alice');
      const bob = await pool.open(srv.port, '/ws?room=lobby&name=bob');
      const mark = srv.logs.length;
      const long = 'spam ' + 'x'.repeat(500);
      const texts = ['hello', 'buy spam now', 'kickme', 'shout', long, 'bye'];
      for (const text of texts) {
        const { id } = await alice.say('lobby', text);
        const got = await bob.next((m) => m.type === 'msg' && m.id === id, 3000, `msg ${text.slice(0, 10)}`);
        assert.equal(got.text, text, 'stable delivers the text unchanged (no store leak from the candidate)');
        assert.equal(got.tag, 'stable');
      }
      // nothing the candidate did reached anyone: no error, notice or kick
      assert.deepEqual(await alice.none((m) => m.type === 'error' || m.type === 'notice', 300), []);
      assert.deepEqual(await bob.none((m) => m.type === 'error' || m.type === 'notice', 50), []);
      assert.ok(alice.isOpen, 'the candidate\'s gw.kick was not performed');
      // counted by hook and kind: 2 spam messages refused, 3 with other effects (send, kick, broadcast)
      const diff = (kind) => counter(srv.port, 'chatgw_policy_shadow_diff_total', { hook: 'on_message', kind });
      assert.equal(await diff('verdict'), 2);
      assert.equal(await diff('effects'), 4, 'gw.send twice, gw.kick and gw.broadcast recorded, not performed');
      assert.equal(await diff('rewrite'), 4, 'the tag differs on every delivered message');
      assert.equal(await diff('error'), 0);
      assert.equal(await counter(srv.port, 'chatgw_policy_arm_calls_total', { arm: 'candidate', hook: 'on_message' }), 6);
      // a sample is logged with both decisions and the conn id, text cut short
      const line = await logAfter(srv, mark, (o) => o.msg === 'policy shadow diff' && o.candidate?.code === 'spam_blocked' &&
        o.stable?.out?.text?.includes('[cut:'));
      assert.equal(line.conn, alice.id);
      assert.equal(line.hook, 'on_message');
      assert.equal(line.stable.verdict, 'pass');
      assert.equal(line.candidate.verdict, 'drop');
      assert.ok(line.stable.out.text.length < 120, 'text cut short');
      assert.ok(line.kinds.includes('verdict'));
      assert.equal(line.candidate.effects[0].op, 'send');
    } finally {
      await pool.closeAll();
      await srv.stop();
    }
  });
});

describe('policy rollout: canary', () => {
  it('splits connections about evenly at 50 % and keeps each one\'s arm across reloads', T, async () => {
    const stableDir = policyDir(STABLE, 'stable');
    const candDir = policyDir(STABLE, 'candidate');
    const srv = await startServer([...FAST, '--scripts-dir', stableDir, '--policy-candidate-dir', candDir,
      '--policy-candidate-mode', 'canary', '--policy-candidate-percent', '50', '--max-connections-per-ip', '1000', '--accept-rate-per-ip', '0']);
    const pool = clientPool();
    try {
      const N = 60;
      const clients = [];
      for (let i = 0; i < N; i++) clients.push(await pool.open(srv.port, `/ws?room=r${i}&name=u${i}`));
      const tags = async (suffix) => {
        const out = [];
        for (const [i, c] of clients.entries()) {
          const { id } = await c.say(`r${i}`, `hi ${suffix}`);
          out.push((await c.next((m) => m.type === 'msg' && m.id === id)).tag);
        }
        return out;
      };
      const first = await tags('1');
      const onCand = first.filter((t) => t === 'candidate').length;
      assert.equal(first.filter((t) => t === 'stable').length + onCand, N);
      // 60 fair coins: 15..45 is more than 3.8 standard deviations either side
      assert.ok(onCand >= 15 && onCand <= 45, `candidate arm got ${onCand} of ${N}`);
      assert.equal(await counter(srv.port, 'chatgw_policy_arm_calls_total', { arm: 'candidate', hook: 'on_message' }), onCand);
      // both policies change; each connection stays on its arm
      const mark = srv.logs.length;
      writeFiles(stableDir, { 'tag.lua': tagFile('stable2') });
      writeFiles(candDir, { 'tag.lua': tagFile('candidate2') });
      srv.proc.kill('SIGHUP');
      await logAfter(srv, mark, (o) => o.msg === 'policy reloaded', 5000, 'stable reload');
      await logAfter(srv, mark, (o) => o.msg === 'policy candidate reloaded', 5000, 'candidate reload');
      const second = await tags('2');
      for (let i = 0; i < N; i++) assert.equal(second[i], `${first[i]}2`, `client ${i} changed arm`);
      const ready = await readyz(srv.port);
      assert.equal(ready.body.candidate.mode, 'canary');
      assert.equal(ready.body.candidate.percent, 50);
    } finally {
      await pool.closeAll();
      await srv.stop();
    }
  });

  it('rolls back a candidate that errors on every message, losing nothing on the stable arm', T, async () => {
    const stableDir = policyDir(STABLE, 'stable');
    const candDir = writeFiles(tempDir('chatgw-e2e-rollout-'), { 'policy.lua': ERRORING });
    const MIN = 5;
    const srv = await startServer([...FAST, '--scripts-dir', stableDir, '--policy-candidate-dir', candDir,
      '--policy-candidate-mode', 'canary', '--policy-candidate-percent', '50', '--max-connections-per-ip', '1000', '--accept-rate-per-ip', '0',
      '--policy-rollback-window-ms', '60000', '--policy-rollback-min-calls', String(MIN),
      '--policy-rollback-error-rate', '0.5']);
    const pool = clientPool();
    try {
      const N = 20;
      const clients = [];
      for (let i = 0; i < N; i++) clients.push(await pool.open(srv.port, '/ws?room=lobby&name=u' + i));
      const watcher = await pool.open(srv.port, '/ws?room=lobby&name=watcher');
      const mark = srv.logs.length;
      let policyErrors = 0;
      let delivered = 0;
      const stableSent = [];
      // each client sends 3 messages, one at a time; every outcome is awaited
      for (let round = 0; round < 3; round++) {
        for (const [i, c] of clients.entries()) {
          const cid = `m-${round}-${i}`;
          c.send({ type: 'msg', room: 'lobby', text: `r${round} u${i}`, cid });
          const r = await c.next((m) => (m.type === 'ack' && m.cid === cid) || (m.type === 'error' && m.ref === cid) ||
            (m.type === 'error' && m.code === 'policy_error'), 3000, `outcome of ${cid}`);
          if (r.type === 'error') {
            assert.equal(r.code, 'policy_error');
            policyErrors++;
          } else {
            delivered++;
            stableSent.push(r.id);
          }
        }
      }
      // the rollback came after MIN failing candidate calls; everything after went to stable
      assert.equal(policyErrors, MIN, `policy errors: ${policyErrors}`);
      assert.equal(delivered, 3 * N - MIN);
      const line = await logAfter(srv, mark, (o) => typeof o.msg === 'string' && o.msg.startsWith('policy candidate rolled back'));
      assert.match(line.reason, /^error rate/);
      // 0 messages lost: the watcher got every acked message
      for (const id of stableSent) await watcher.next((m) => m.type === 'msg' && m.id === id, 3000, `msg ${id} at the watcher`);
      assert.equal(await counter(srv.port, 'chatgw_policy_rollbacks_total'), 1);
      assert.equal(await counter(srv.port, 'chatgw_policy_candidate_active'), 0);
      assert.equal(await counter(srv.port, 'chatgw_policy_arm_errors_total', { arm: 'candidate', hook: 'on_message', kind: 'error' }), MIN);
      let ready = await readyz(srv.port);
      assert.equal(ready.status, 200, 'a rolled back candidate does not fail readiness');
      assert.equal(ready.body.candidate.state, 'rolled_back');
      assert.equal(ready.body.checks.candidate, 'rolled_back');
      // it stays off through an unchanged reload, and a new version arms it again
      const mark2 = srv.logs.length;
      srv.proc.kill('SIGHUP');
      await logAfter(srv, mark2, (o) => o.msg === 'SIGHUP received, reloading the policy');
      await new Promise((r) => setTimeout(r, 600));
      assert.equal((await readyz(srv.port)).body.candidate.state, 'rolled_back');
      writeFiles(candDir, { 'policy.lua': STABLE.replace('e2e: stable', 'e2e: fixed'), 'tag.lua': tagFile('fixed') });
      await logAfter(srv, mark2, (o) => o.msg === 'policy candidate armed again: a new version', 5000, 'candidate re-armed');
      ready = await readyz(srv.port);
      assert.equal(ready.body.candidate.state, 'active');
      const tags = [];
      for (const c of clients) {
        const { id } = await c.say('lobby', 'after');
        tags.push((await c.next((m) => m.type === 'msg' && m.id === id)).tag);
      }
      assert.ok(tags.includes('fixed') && tags.includes('stable'), `arms after re-arming: ${tags}`);
    } finally {
      await pool.closeAll();
      await srv.stop();
    }
  });
});

/** Runs `chatgw replay ...args` and resolves {code, stdout, stderr}. */
function runReplay(args, { timeoutMs = 30000 } = {}) {
  return withTimeout(new Promise((resolve) => {
    const p = spawn(BIN, ['replay', ...args], { cwd: SRC, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => { stdout += d; });
    p.stderr.on('data', (d) => { stderr += d; });
    p.on('exit', (code) => resolve({ code, stdout, stderr }));
  }), timeoutMs, 'chatgw replay');
}

describe('policy rollout: record and replay', () => {
  it('records hook inputs, and replay summarises the disagreements with its exit code', T, async () => {
    const stable = policyDir(STABLE, 'stable');
    const cand = policyDir(SHADOW_CANDIDATE, 'candidate');
    const dir = tempDir('chatgw-e2e-record-');
    const file = path.join(dir, 'record.jsonl');
    const redactedFile = path.join(dir, 'redacted.jsonl');
    for (const [f, redact] of [[file, 'false'], [redactedFile, 'true']]) {
      const srv = await startServer([...FAST, '--scripts-dir', stable, '--policy-record-file', f,
        '--policy-record-redact', redact]);
      const pool = clientPool();
      try {
        const a = await pool.open(srv.port, '/ws?room=lobby&name=alice');
        for (const text of ['hello', 'buy spam now', 'fine', 'more spam', 'ok']) await a.say('lobby', text);
      } finally {
        await pool.closeAll();
        await srv.stop();
      }
    }
    const lines = fs.readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const msgs = lines.filter((l) => l.hook === 'on_message');
    assert.equal(msgs.length, 5);
    assert.equal(msgs[1].msg.text, 'buy spam now');
    assert.equal(msgs[1].stable.verdict, 'pass');
    assert.equal(msgs[1].conn.name, 'alice');
    assert.equal(fs.statSync(file).mode & 0o777, 0o600, 'personal data: owner only');
    const redacted = fs.readFileSync(redactedFile, 'utf8');
    assert.ok(!redacted.includes('spam') && !redacted.includes('alice'), 'redaction hides text and names');
    assert.ok(redacted.includes('"text":"xxxxxxxxxxxx"'), 'same-length placeholder');

    // the candidate refuses 2 of 5 messages: 40 % of the calls disagree
    const bad = await runReplay(['--stable', stable, '--candidate', cand, '--examples', '2', file]);
    assert.equal(bad.code, 1, bad.stdout + bad.stderr);
    assert.match(bad.stdout, /differing 5 of 6 calls/);   // the tag differs on all, the verdict on 2
    assert.match(bad.stdout, /on_message\s+verdict 2 code 0 rewrite 3 effects 2 error 0/);
    assert.match(bad.stdout, /examples:\n {2}\{.*"kinds"/);
    assert.match(bad.stdout, /result\s+FAIL/);
    const ok = await runReplay(['--stable', stable, '--candidate', cand, '--max-diff-rate', '1', file]);
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    assert.match(ok.stdout, /result\s+OK/);
    // the same policy on both sides agrees with itself and with the recording
    const same = await runReplay(['--stable', stable, '--candidate', stable, file]);
    assert.equal(same.code, 0, same.stdout + same.stderr);
    assert.match(same.stdout, /differing 0 of 6 calls/);
    assert.doesNotMatch(same.stdout, /decided \d+ calls differently/);
    // the committed sample (tests/replay/sample.jsonl, the deploy workflow's) replays the default
    // policy deterministically: no disagreement with itself, none with what it decided live
    const sample = path.join(SRC, 'tests', 'replay', 'sample.jsonl');
    const scripts = path.join(SRC, 'scripts');
    const self = await runReplay(['--stable', scripts, '--candidate', scripts, sample]);
    assert.equal(self.code, 0, self.stdout + self.stderr);
    assert.match(self.stdout, /differing 0 of \d+ calls/);
    assert.doesNotMatch(self.stdout, /decided \d+ calls differently/, 'the default policy still decides the sample as recorded');
    // bad usage and a candidate that does not load: 2
    assert.equal((await runReplay(['--stable', stable, file])).code, 2);
    const broken = writeFiles(tempDir('chatgw-e2e-rollout-'), { 'policy.lua': 'return {' });
    const br = await runReplay(['--stable', stable, '--candidate', broken, file]);
    assert.equal(br.code, 2);
    assert.match(br.stderr, /candidate policy/);
  });
});
