// docs/policy-rollout.md's walkthrough on the kubelet simulation: overlays/dev with the
// policy-candidate component, rendered; both ConfigMaps laid out the way kubelet's AtomicWriter
// lays them out; chatgw started with the pod's env. "I changed settings.lua" (a word for the
// filter) -> replay of the committed sample -> shadow (the change counted, clients see the old
// policy) -> canary at 50 % (pods restart with the new env; both arms serve) -> promote (the
// candidate's files applied to chatgw-policy: every connection on the new version, no restart).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  SRC, BIN, parseDocs, findObj, run, which, startProcess, httpGet, waitFor, chatClient, metricSamples, YAML,
} from './lib.mjs';

const DATA = '..data';

/** kubelet's AtomicWriter, short: a timestamped payload dir, ..data swapped, key symlinks. */
function atomicWrite(dir, payload) {
  fs.mkdirSync(dir, { recursive: true });
  let old = null;
  try { old = fs.readlinkSync(path.join(dir, DATA)); } catch { /* first write */ }
  const ts = `..${new Date().toISOString().replace(/[-:T]/g, '_').replace(/\..*/, '')}.${crypto.randomInt(1e8, 1e10)}`;
  fs.mkdirSync(path.join(dir, ts));
  for (const [k, v] of Object.entries(payload)) fs.writeFileSync(path.join(dir, ts, k), v);
  fs.symlinkSync(ts, path.join(dir, '..data_tmp'));
  fs.renameSync(path.join(dir, '..data_tmp'), path.join(dir, DATA));
  for (const k of Object.keys(payload)) {
    if (!fs.existsSync(path.join(dir, k))) fs.symlinkSync(path.join(DATA, k), path.join(dir, k));
  }
  for (const k of fs.readdirSync(dir)) if (!k.startsWith('..') && !(k in payload)) fs.rmSync(path.join(dir, k), { force: true });
  if (old) fs.rmSync(path.join(dir, old), { recursive: true, force: true });
}

/** overlays/dev with the component, rendered through a temporary kustomization. */
function renderDevWithCandidate() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-rollout-render-'));
  try {
    const rel = (p) => path.relative(dir, path.join(SRC, p));
    fs.writeFileSync(path.join(dir, 'kustomization.yaml'), YAML.stringify({
      apiVersion: 'kustomize.config.k8s.io/v1beta1', kind: 'Kustomization',
      resources: [rel('deploy/k8s/overlays/dev')], components: [rel('deploy/k8s/components/policy-candidate')],
    }));
    const r = run(which('kubectl'), ['kustomize', dir], { timeoutMs: 60000 });
    assert.equal(r.code, 0, r.stderr);
    return parseDocs(r.stdout);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function versionOf(payload) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-rollout-v-'));
  try {
    for (const [k, v] of Object.entries(payload)) fs.writeFileSync(path.join(d, k), v);
    const r = run(BIN, ['check', d], { timeoutMs: 30000 });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    return /([0-9a-f]{64})/.exec(r.stdout)[1];
  } finally {
    fs.rmSync(d, { recursive: true, force: true });
  }
}

describe('policy rollout on the kubelet simulation (overlays/dev + components/policy-candidate)', { timeout: 180000 }, () => {
  let objs; let c; let env; let root; let policyDir; let candDir; let stable; let candidate; let vStable; let vCand;
  let gw; let port; let adminPort;
  const clients = [];

  const start = async (extraEnv) => {
    const runEnv = { PATH: process.env.PATH, HOME: root, LANG: 'C.UTF-8', ...env, ...extraEnv,
      CHATGW_SCRIPTS_DIR: policyDir, CHATGW_POLICY_CANDIDATE_DIR: candDir, CHATGW_WEB_DIR: path.join(SRC, 'web'),
      CHATGW_LISTEN: '127.0.0.1:0', CHATGW_ADMIN_LISTEN: '127.0.0.1:0' };
    gw = startProcess(BIN, c.args, { cwd: fs.mkdtempSync(path.join(root, 'workdir-')), env: runEnv, name: 'chatgw' });
    port = Number(/:(\d+)$/.exec((await gw.waitLog((o) => o.msg === 'listening' && o.role !== 'admin', 10000, 'listener')).addr)[1]);
    adminPort = Number(/:(\d+)$/.exec((await gw.waitLog((o) => o.msg === 'listening' && o.role === 'admin', 10000, 'admin')).addr)[1]);
  };
  const stop = async () => {
    for (const cl of clients.splice(0)) cl.ws.terminate();
    await gw?.stop(15000);
    gw = null;
  };
  const metric = async (name, labels = {}) => {
    const text = (await httpGet(adminPort, '/metrics')).text;
    return metricSamples(text, name).filter((s) => Object.entries(labels).every(([k, v]) => s.labels[k] === v))
      .reduce((a, s) => a + s.value, 0);
  };
  /** Opens a client in room r and has it say text; resolves the text the room got back. */
  const say = async (room, name, text) => {
    const cl = await chatClient(port, { room, name });
    clients.push(cl);
    await cl.next((m) => m.type === 'room', 5000, 'room snapshot');
    cl.send({ type: 'msg', room, text, cid: 'x' });
    return (await cl.next((m) => m.type === 'msg', 5000, `echo of ${text}`)).text;
  };

  before(() => {
    objs = renderDevWithCandidate();
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-rollout-'));
  });
  after(async () => {
    await stop();
    if (root) fs.rmSync(root, { recursive: true, force: true });
  });

  it('the component mounts the optional candidate ConfigMap where the env points, in shadow mode', () => {
    const dep = findObj(objs, 'Deployment', 'chatgw');
    const pod = dep.spec.template.spec;
    c = pod.containers.find((x) => x.name === 'chatgw');
    const vol = pod.volumes.find((v) => v.configMap?.name === 'chatgw-policy-candidate');
    assert.ok(vol, 'a volume of chatgw-policy-candidate');
    assert.equal(vol.configMap.optional, true, 'optional: pods start without it');
    const mount = c.volumeMounts.find((m) => m.name === vol.name);
    assert.equal(mount.subPath, undefined, 'a directory mount (subPath never updates)');
    env = {};
    for (const ef of c.envFrom || []) if (ef.configMapRef) Object.assign(env, findObj(objs, 'ConfigMap', ef.configMapRef.name).data);
    assert.equal(env.CHATGW_POLICY_CANDIDATE_DIR, mount.mountPath);
    assert.equal(env.CHATGW_POLICY_CANDIDATE_MODE, 'shadow');
    assert.equal(findObj(objs, 'ConfigMap', 'chatgw-policy-candidate'), undefined, 'the component generates no copy of the policy');
  });

  it('step 1: the changed settings.lua checks and replays against the committed sample', () => {
    // the test's own limits beside the ConfigMap keys (docs/writing-policy.md: secrets.lua): many
    // clients from one loopback address
    const limits = 'return { moderation = { connect_rate = 1000, connect_burst = 1000 } }\n';
    stable = { ...findObj(objs, 'ConfigMap', 'chatgw-policy').data, 'secrets.lua': limits };
    assert.match(stable['settings.lua'], /words = \{\},/);
    candidate = { ...stable, 'settings.lua': stable['settings.lua'].replace('words = {},', 'words = { "darn" },') };
    vStable = versionOf(stable);
    vCand = versionOf(candidate);
    policyDir = path.join(root, 'volumes', 'policy');
    candDir = path.join(root, 'volumes', 'policy-candidate');
    atomicWrite(policyDir, stable);
    atomicWrite(candDir, candidate);
    const r = run(BIN, ['replay', '--stable', policyDir, '--candidate', candDir, '--max-diff-rate', '0.1',
      path.join(SRC, 'tests/replay/sample.jsonl')], { timeoutMs: 60000 });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /result\s+OK/);
  });

  it('step 2: shadow counts what the candidate would change; clients see the stable policy', async () => {
    await start({});
    const ready = (await httpGet(port, '/readyz')).json();
    assert.equal(ready.policy.version, vStable);
    assert.equal(ready.candidate.version, vCand);
    assert.equal(ready.candidate.state, 'active');
    assert.equal(await say('lobby', 'ann', 'oh darn it'), 'oh darn it', 'the stable policy decides');
    assert.equal(await metric('chatgw_policy_shadow_diff_total', { hook: 'on_message', kind: 'rewrite' }), 1);
    await gw.waitLog((o) => o.msg === 'policy shadow diff' && o.candidate?.out?.text === 'oh *** it', 5000, 'the diff sample');
    await stop();
  });

  it('step 3: canary at 50 % (the pods restart with the new env): both arms serve', async () => {
    await start({ CHATGW_POLICY_CANDIDATE_MODE: 'canary', CHATGW_POLICY_CANDIDATE_PERCENT: '50' });
    const texts = [];
    for (let i = 0; i < 30; i++) texts.push(await say(`r${i}`, `u${i}`, 'darn'));
    const masked = texts.filter((t) => t === '***').length;
    assert.equal(texts.filter((t) => t === 'darn').length + masked, 30);
    assert.ok(masked >= 5 && masked <= 25, `candidate arm: ${masked} of 30`);
    assert.equal(await metric('chatgw_policy_arm_calls_total', { arm: 'candidate', hook: 'on_message' }), masked);
    assert.equal(await metric('chatgw_policy_rollbacks_total'), 0);
    assert.equal((await httpGet(port, '/readyz')).json().candidate.mode, 'canary');
  });

  it('step 4: promote: the candidate\'s files become chatgw-policy, live, without a restart', async () => {
    const pid = gw.proc.pid;
    atomicWrite(policyDir, candidate);
    await waitFor(async () => (await httpGet(port, '/readyz')).json().policy?.version === vCand,
      { timeoutMs: 15000, intervalMs: 100, what: `policy version ${vCand}\n${gw.tail(10)}` });
    const text = (await httpGet(adminPort, '/metrics')).text;
    assert.deepEqual(metricSamples(text, 'chatgw_policy_info').map((s) => s.labels.version),
      metricSamples(text, 'chatgw_policy_candidate_info').map((s) => s.labels.version), 'stable = candidate');
    for (let i = 0; i < 6; i++) assert.equal(await say(`p${i}`, `v${i}`, 'darn'), '***', 'every arm masks now');
    assert.equal(gw.proc.pid, pid);
    assert.equal(gw.exitInfo, null);
  });
});
