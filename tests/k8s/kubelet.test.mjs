// The kubelet, simulated from the rendered manifests (overlays/dev, the single-node shape):
//  1. read the rendered Deployment: env (envFrom + env with $(VAR) expansion), args, ports,
//     probes, the mount path of chatgw-policy, preStop and the grace period;
//  2. lay out the rendered chatgw-policy ConfigMap exactly as kubelet's AtomicWriter does
//     (..YYYY_MM_DD_hh_mm_ss.N directory, ..data symlink, key -> ..data/key symlinks);
//  3. start chatgw with that env and those args (the image's paths mapped to this checkout,
//     0.0.0.0 listeners to loopback);
//  4. probe it the way kubelet does (startup, then liveness and readiness);
//  5. apply a ConfigMap update the way kubelet does (new timestamped dir, ..data_tmp symlink
//     renamed over ..data, key symlinks fixed, old dir removed);
//  6. assert the new policy version is live without a restart (/readyz, chatgw_policy_info,
//     logs, welcome), and that a broken update is rejected while the last good policy serves;
//  7. run preStop, send SIGTERM and assert clients get close 1001 and the process exits 0
//     within the grace period.
// Then the budget overlay's DaemonSet: the TLS Secret laid out the same way, kubelet's HTTPS
// probes, a wss:// chat, and a certificate renewal reaching new handshakes.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import https from 'node:https';
import { spawn } from 'node:child_process';
import {
  SRC, BIN, renderOverlay, findObj, run, startProcess, httpGet, waitFor, chatClient, metricSamples,
  withTimeout, which, freePort, tcpProbe, WebSocket,
} from './lib.mjs';

// ---------------------------------------------------------------------------------------------
// kubelet's AtomicWriter (pkg/volume/util/atomic_writer.go), for a ConfigMap volume

const DATA = '..data';
const DATA_TMP = '..data_tmp';

function tsDirName(now = new Date()) {
  const p = (n, w = 2) => String(n).padStart(w, '0');
  // Go: os.MkdirTemp(dir, time.Now().UTC().Format("..2006_01_02_15_04_05.")): a random suffix
  return `..${now.getUTCFullYear()}_${p(now.getUTCMonth() + 1)}_${p(now.getUTCDate())}_${p(now.getUTCHours())}_` +
    `${p(now.getUTCMinutes())}_${p(now.getUTCSeconds())}.${crypto.randomInt(1e8, 1e10)}`;
}

class AtomicWriter {
  constructor(targetDir, mode = 0o644) {
    this.dir = targetDir;
    this.mode = mode;
    fs.mkdirSync(targetDir, { recursive: true });
  }

  /** The user-visible keys now present (the symlinks next to ..data). */
  visible() {
    return fs.readdirSync(this.dir).filter((f) => !f.startsWith('..'));
  }

  /** Writes payload {key: content} with kubelet's steps; returns the new timestamped dir. */
  write(payload) {
    for (const k of Object.keys(payload)) {
      assert.ok(!k.includes('/') && !k.startsWith('..'), `ConfigMap key ${k}`);
    }
    // 1-2: the old timestamped dir (..data's target), and the user-visible paths to remove
    let oldTs = null;
    try { oldTs = fs.readlinkSync(path.join(this.dir, DATA)); } catch { /* first write */ }
    const remove = this.visible().filter((k) => !(k in payload));
    // 3-5: a new timestamped dir with every file of the payload
    const tsDir = tsDirName();
    fs.mkdirSync(path.join(this.dir, tsDir), { mode: 0o755 });
    for (const [k, v] of Object.entries(payload)) {
      const f = path.join(this.dir, tsDir, k);
      fs.writeFileSync(f, v);
      fs.chmodSync(f, this.mode);
    }
    // 6-7: ..data_tmp -> the new dir, renamed over ..data (the atomic step)
    const tmp = path.join(this.dir, DATA_TMP);
    try { fs.unlinkSync(tmp); } catch { /* none */ }
    fs.symlinkSync(tsDir, tmp);
    fs.renameSync(tmp, path.join(this.dir, DATA));
    // 8: user-visible symlinks key -> ..data/key for keys that lack one
    for (const k of Object.keys(payload)) {
      const link = path.join(this.dir, k);
      if (!fs.existsSync(link) && !isSymlink(link)) fs.symlinkSync(path.join(DATA, k), link);
    }
    // 9: remove the user-visible paths of deleted keys
    for (const k of remove) fs.rmSync(path.join(this.dir, k), { force: true });
    // 10: remove the old timestamped dir
    if (oldTs) fs.rmSync(path.join(this.dir, oldTs), { recursive: true, force: true });
    return tsDir;
  }
}

function isSymlink(p) {
  try { return fs.lstatSync(p).isSymbolicLink(); } catch { return false; }
}

// ---------------------------------------------------------------------------------------------
// the rendered pod spec, resolved like kubelet does

/** Kubernetes $(VAR) expansion against the vars defined so far; $$ escapes. */
function expand(s, env) {
  return String(s).replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, v) => (m === '$$' ? '$' : v in env ? env[v] : m));
}

function containerEnv(objs, c) {
  const env = {};
  for (const ef of c.envFrom || []) {
    if (ef.configMapRef) Object.assign(env, findObj(objs, 'ConfigMap', ef.configMapRef.name).data);
    if (ef.secretRef) {
      for (const [k, v] of Object.entries(findObj(objs, 'Secret', ef.secretRef.name).data || {})) env[k] = Buffer.from(v, 'base64').toString();
    }
  }
  for (const e of c.env || []) {
    if (e.value !== undefined) env[e.name] = expand(e.value, env);
    else if (e.valueFrom?.configMapKeyRef) env[e.name] = findObj(objs, 'ConfigMap', e.valueFrom.configMapKeyRef.name).data[e.valueFrom.configMapKeyRef.key];
    else if (e.valueFrom?.secretKeyRef?.optional && !findObj(objs, 'Secret', e.valueFrom.secretKeyRef.name)) continue;   // unset, as kubelet does
    else if (e.valueFrom?.secretKeyRef) env[e.name] = Buffer.from(findObj(objs, 'Secret', e.valueFrom.secretKeyRef.name).data[e.valueFrom.secretKeyRef.key], 'base64').toString();
    else env[e.name] = '';
  }
  return env;
}

/** The policy version chatgw computes for a directory (`chatgw check DIR`). */
function policyVersion(dir) {
  const r = run(BIN, ['check', dir], { timeoutMs: 30000, cwd: os.tmpdir() });
  assert.equal(r.code, 0, `chatgw check ${dir}: ${r.stdout}${r.stderr}`);
  const m = /([0-9a-f]{64})/.exec(r.stdout);
  assert.ok(m, `chatgw check printed no version: ${r.stdout}`);
  return m[1];
}

function versionOfPayload(payload) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-policy-plain-'));
  try {
    for (const [k, v] of Object.entries(payload)) fs.writeFileSync(path.join(d, k), v);
    return policyVersion(d);
  } finally {
    fs.rmSync(d, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------

describe('kubelet simulation (overlays/dev)', { timeout: 180000 }, () => {
  let objs; let dep; let pod; let c; let policyVol; let policyMount; let cm;
  let root; let volDir; let writer; let gw; let env; let portMap; let publicPort; let adminPort;
  const clients = [];
  let probeOnce; // one kubelet HTTP probe; set once chatgw runs (it needs the mapped ports)

  before(async () => {
    objs = renderOverlay('dev');
    dep = findObj(objs, 'Deployment', 'chatgw');
    pod = dep.spec.template.spec;
    c = pod.containers.find((x) => x.name === 'chatgw');
    policyVol = pod.volumes.find((v) => v.configMap?.name === 'chatgw-policy');
    policyMount = c.volumeMounts.find((m) => m.name === policyVol.name);
    cm = findObj(objs, 'ConfigMap', 'chatgw-policy');
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-kubelet-'));
  });

  after(async () => {
    for (const cl of clients) cl.ws.terminate();
    await gw?.stop(15000);
    if (root) fs.rmSync(root, { recursive: true, force: true });
  });

  it('reads env, args, ports, probes and the policy mount from the rendered Deployment', () => {
    assert.ok(policyMount, 'chatgw-policy is mounted');
    assert.equal(policyMount.subPath, undefined);
    env = containerEnv(objs, c);
    assert.equal(env.CHATGW_SCRIPTS_DIR, policyMount.mountPath, 'scripts_dir is the ConfigMap mount');
    for (const p of ['startupProbe', 'livenessProbe', 'readinessProbe']) assert.ok(c[p]?.httpGet, p);
    assert.deepEqual(c.args, ['serve']);
    assert.ok(c.ports.find((p) => p.name === 'http'));
  });

  it('lays out the ConfigMap as AtomicWriter does', () => {
    volDir = path.join(root, 'volumes', 'kubernetes.io~configmap', policyVol.name);
    writer = new AtomicWriter(volDir, policyVol.configMap.defaultMode ?? 0o644);
    const ts = writer.write(cm.data);
    assert.equal(fs.readlinkSync(path.join(volDir, DATA)), ts);
    assert.match(ts, /^\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.\d+$/);
    for (const k of Object.keys(cm.data)) {
      assert.equal(fs.readlinkSync(path.join(volDir, k)), path.join(DATA, k));
      assert.equal(fs.readFileSync(path.join(volDir, k), 'utf8'), cm.data[k]);
    }
    assert.deepEqual(writer.visible().sort(), Object.keys(cm.data).sort());
  });

  it('starts chatgw with the pod\'s env and args, and passes kubelet\'s probes', async () => {
    // the container's view of the world, mapped onto this machine
    const runEnv = { PATH: process.env.PATH, HOME: root, LANG: 'C.UTF-8' };
    for (const [k, v] of Object.entries(env)) runEnv[k] = v;
    runEnv.CHATGW_SCRIPTS_DIR = volDir;                           // the mount path -> the volume
    if (runEnv.CHATGW_WEB_DIR) runEnv.CHATGW_WEB_DIR = path.join(SRC, 'web'); // image path -> checkout
    if (runEnv.CHATGW_CRASH_DIR) runEnv.CHATGW_CRASH_DIR = fs.mkdtempSync(path.join(root, 'crash-')); // the emptyDir
    portMap = new Map();
    const loopback = (k) => {
      if (!runEnv[k]) return;
      const m = /^(.*):(\d+)$/.exec(runEnv[k]);
      assert.ok(m, `${k}=${runEnv[k]}`);
      portMap.set(Number(m[2]), k);
      runEnv[k] = '127.0.0.1:0';                                  // loopback only, any free port
    };
    loopback('CHATGW_LISTEN');
    loopback('CHATGW_ADMIN_LISTEN');
    const cwd = fs.mkdtempSync(path.join(root, 'workdir-'));      // WORKDIR / of the image: no config file
    gw = startProcess(BIN, c.args, { cwd, env: runEnv, name: 'chatgw' });
    const pub = await gw.waitLog((o) => o.msg === 'listening' && o.role !== 'admin', 10000, 'public listener');
    publicPort = Number(/:(\d+)$/.exec(pub.addr)[1]);
    adminPort = publicPort;
    if (runEnv.CHATGW_ADMIN_LISTEN) {
      const adm = await gw.waitLog((o) => o.msg === 'listening' && o.role === 'admin', 10000, 'admin listener');
      adminPort = Number(/:(\d+)$/.exec(adm.addr)[1]);
    }
    const hostPortOf = (containerPort) => {
      const k = portMap.get(containerPort);
      assert.ok(k, `probe port ${containerPort} is no listener of chatgw`);
      return k === 'CHATGW_ADMIN_LISTEN' ? adminPort : publicPort;
    };
    const probePort = (p) => hostPortOf(typeof p === 'number' ? p : c.ports.find((x) => x.name === p).containerPort);

    /** One kubelet HTTP probe: GET with kube-probe's User-Agent, success on 200-399. */
    probeOnce = async (pr) => {
      try {
        const r = await httpGet(probePort(pr.httpGet.port), pr.httpGet.path, {
          timeoutMs: (pr.timeoutSeconds ?? 1) * 1000,
          headers: { 'User-Agent': 'kube-probe/1.32', Accept: '*/*', ...Object.fromEntries((pr.httpGet.httpHeaders || []).map((h) => [h.name, h.value])) },
        });
        return r.status >= 200 && r.status < 400 ? r : null;
      } catch { return null; }
    };

    // startupProbe: up to failureThreshold tries, periodSeconds apart
    const sp = c.startupProbe;
    let ok = null;
    for (let i = 0; i < (sp.failureThreshold ?? 3) && !ok; i++) {
      if (i) await new Promise((r) => setTimeout(r, (sp.periodSeconds ?? 10) * 1000));
      ok = await probeOnce(sp);
    }
    assert.ok(ok, `startupProbe never succeeded\n${gw.tail()}`);
    const live = await probeOnce(c.livenessProbe);
    assert.ok(live, 'livenessProbe');
    const ready = await probeOnce(c.readinessProbe);
    assert.ok(ready, 'readinessProbe');
    assert.equal(ready.json().status, 'ready');
  });

  let v1; let v2;
  it('serves the ConfigMap\'s policy version, and chat works', async () => {
    v1 = versionOfPayload(cm.data);
    const r = (await httpGet(publicPort, '/readyz')).json();
    assert.equal(r.policy?.version, v1, `/readyz policy.version: ${JSON.stringify(r)}`);
    for (const name of ['ana', 'ben']) {
      const cl = await chatClient(publicPort, { room: 'cm', name });
      clients.push(cl);
      const w = await cl.next((m) => m.type === 'welcome', 5000, 'welcome');
      assert.equal(w.policy, v1, 'welcome.policy');
      await cl.next((m) => m.type === 'room', 5000, 'room snapshot');
    }
  });

  it('a ConfigMap update goes live without a restart', async () => {
    const pid = gw.proc.pid;
    const payload = { ...cm.data };
    payload['policy.lua'] = `${payload['policy.lua']}\n-- revision 2, applied by the kubelet simulation\n`;
    payload['k8s_marker.lua'] = 'return { revision = 2 }\n';   // a new key gets its own symlink
    v2 = versionOfPayload(payload);
    assert.notEqual(v2, v1);
    const before = (await httpGet(adminPort, '/metrics')).text;
    const okBefore = metricSamples(before, 'chatgw_policy_reloads_total').find((s) => s.labels.result === 'ok')?.value ?? 0;

    const ts = writer.write(payload);
    assert.equal(fs.readlinkSync(path.join(volDir, DATA)), ts);
    assert.equal(fs.readlinkSync(path.join(volDir, 'k8s_marker.lua')), path.join(DATA, 'k8s_marker.lua'));
    assert.equal(fs.readdirSync(volDir).filter((f) => /^\.\.\d{4}_/.test(f)).length, 1, 'the old timestamped dir is gone');

    const r = await waitFor(async () => {
      const j = (await httpGet(publicPort, '/readyz')).json();
      return j.policy?.version === v2 ? j : null;
    }, { timeoutMs: 15000, intervalMs: 100, what: `/readyz policy.version ${v2} (the directory watcher must see the ..data swap)\n${gw.tail(10)}` });
    assert.equal(r.status, 'ready');
    const m = (await httpGet(adminPort, '/metrics')).text;
    assert.deepEqual(metricSamples(m, 'chatgw_policy_info').map((s) => s.labels.version), [v2], 'chatgw_policy_info{version}');
    const okAfter = metricSamples(m, 'chatgw_policy_reloads_total').find((s) => s.labels.result === 'ok')?.value ?? 0;
    assert.ok(okAfter > okBefore, 'chatgw_policy_reloads_total{result="ok"} counted the reload');
    await gw.waitLog((o) => o.version === v2 && /polic/.test(o.msg), 5000, 'a log line with the new version');

    // no restart, no dropped connection: same process, the old sockets still chat
    assert.equal(gw.exitInfo, null);
    assert.equal(gw.proc.pid, pid);
    clients[0].send({ type: 'msg', room: 'cm', text: 'after reload', cid: 'r2' });
    await clients[1].next((m2) => m2.type === 'msg' && m2.text === 'after reload', 5000, 'a message after the reload');
    const fresh = await chatClient(publicPort, { room: 'cm', name: 'cy' });
    clients.push(fresh);
    assert.equal((await fresh.next((m2) => m2.type === 'welcome')).policy, v2, 'a new client sees the new version');
  });

  it('a broken update is rejected; the last good policy keeps serving', async () => {
    const before = (await httpGet(adminPort, '/metrics')).text;
    const failedBefore = metricSamples(before, 'chatgw_policy_reloads_total').find((s) => s.labels.result === 'failed')?.value ?? 0;
    const broken = { ...cm.data, 'policy.lua': 'return { on_message = function( }\n' };
    writer.write(broken);
    const j = await waitFor(async () => {
      const r = (await httpGet(publicPort, '/readyz')).json();
      return r.policy?.last_error ? r : null;
    }, { timeoutMs: 15000, intervalMs: 100, what: '/readyz policy.last_error after a broken update' });
    assert.equal(j.policy.version, v2, 'the last good version still serves');
    assert.match(j.policy.last_error, /policy\.lua/);
    const m = (await httpGet(adminPort, '/metrics')).text;
    const failedAfter = metricSamples(m, 'chatgw_policy_reloads_total').find((s) => s.labels.result === 'failed')?.value ?? 0;
    assert.ok(failedAfter > failedBefore, 'chatgw_policy_reloads_total{result="failed"}');
    assert.ok(await probeOnce(c.readinessProbe), 'a rejected reload does not fail readiness');
    assert.equal(gw.exitInfo, null);
    // fixing the ConfigMap brings the good policy back (the original one)
    writer.write(cm.data);
    await waitFor(async () => (await httpGet(publicPort, '/readyz')).json().policy?.version === v1,
      { timeoutMs: 15000, intervalMs: 100, what: 'the original policy after the fix' });
  });

  it('a pod that starts on a broken ConfigMap stays alive and unready, refusing chat, until the fix lands', async () => {
    // a scale-out or a drain while the ConfigMap is broken: the new pod has no last good policy
    assert.equal(env.CHATGW_POLICY_BOOT, 'wait', 'the base sets policy_boot = wait: no crash loop');
    const dir2 = path.join(root, 'volumes-new-pod', 'kubernetes.io~configmap', policyVol.name);
    const w2 = new AtomicWriter(dir2, policyVol.configMap.defaultMode ?? 0o644);
    w2.write({ ...cm.data, 'policy.lua': 'return { on_message = function( }\n' });
    const runEnv = { PATH: process.env.PATH, HOME: root, LANG: 'C.UTF-8', ...env, CHATGW_SCRIPTS_DIR: dir2 };
    if (runEnv.CHATGW_WEB_DIR) runEnv.CHATGW_WEB_DIR = path.join(SRC, 'web');
    if (runEnv.CHATGW_CRASH_DIR) runEnv.CHATGW_CRASH_DIR = fs.mkdtempSync(path.join(root, 'crash-'));
    for (const k of ['CHATGW_LISTEN', 'CHATGW_ADMIN_LISTEN']) if (runEnv[k]) runEnv[k] = '127.0.0.1:0';
    const gw2 = startProcess(BIN, c.args, { cwd: fs.mkdtempSync(path.join(root, 'workdir-')), env: runEnv, name: 'chatgw-new-pod' });
    try {
      const pub = Number(/:(\d+)$/.exec((await gw2.waitLog((o) => o.msg === 'listening' && o.role !== 'admin', 10000, 'public listener')).addr)[1]);
      const adm = runEnv.CHATGW_ADMIN_LISTEN
        ? Number(/:(\d+)$/.exec((await gw2.waitLog((o) => o.msg === 'listening' && o.role === 'admin', 10000, 'admin listener')).addr)[1])
        : pub;
      const probe = async (pr) => {
        const cp = typeof pr.httpGet.port === 'number' ? pr.httpGet.port : c.ports.find((x) => x.name === pr.httpGet.port).containerPort;
        return httpGet(portMap.get(cp) === 'CHATGW_ADMIN_LISTEN' ? adm : pub, pr.httpGet.path, { timeoutMs: (pr.timeoutSeconds ?? 1) * 1000 });
      };
      assert.equal((await probe(c.startupProbe)).status, 200, 'startupProbe passes: no restart');
      assert.equal((await probe(c.livenessProbe)).status, 200, 'livenessProbe passes: no crash loop');
      const unready = await probe(c.readinessProbe);
      assert.equal(unready.status, 503, 'readinessProbe fails: no Service traffic');
      const j = unready.json();
      assert.equal(j.checks?.policy, 'not_loaded');
      assert.match(j.policy?.last_error || '', /policy\.lua/);
      await assert.rejects(chatClient(pub, { room: 'cm', name: 'early' }), /503/, 'chat refused without a policy');
      const m = (await httpGet(adm, '/metrics')).text;
      assert.deepEqual(metricSamples(m, 'chatgw_policy_loaded').map((x) => x.value), [0], 'chatgw_policy_loaded 0 (ChatgwPolicyNotLoaded)');

      w2.write(cm.data);                                           // the fix reaches the volume
      await waitFor(async () => (await probe(c.readinessProbe)).status === 200,
        { timeoutMs: 15000, intervalMs: 100, what: `readiness after the fix\n${gw2.tail(10)}` });
      const m2 = (await httpGet(adm, '/metrics')).text;
      assert.deepEqual(metricSamples(m2, 'chatgw_policy_loaded').map((x) => x.value), [1]);
      const cl = await chatClient(pub, { room: 'cm', name: 'late' });
      assert.equal((await cl.next((x) => x.type === 'welcome')).policy, versionOfPayload(cm.data));
      cl.ws.terminate();
      assert.equal(gw2.exitInfo, null, 'the same process throughout');
    } finally {
      await gw2.stop(15000);
    }
  });

  it('termination: preStop, SIGTERM, close 1001 to every client, exit 0 within the grace period', async () => {
    const grace = (pod.terminationGracePeriodSeconds ?? 30) * 1000;
    const t0 = Date.now();
    // kubelet runs preStop first; the grace period counts from here
    const pre = c.lifecycle?.preStop?.exec?.command;
    assert.ok(pre, 'preStop exec');
    assert.ok(which(pre[0]), `${pre[0]} on this machine`);
    const hook = spawn(pre[0], pre.slice(1), { stdio: 'ignore' });
    await withTimeout(new Promise((r) => hook.on('exit', r)), grace, 'preStop');
    // readiness still 200 during preStop (endpoints drain first), then SIGTERM
    assert.ok(await probeOnce(c.readinessProbe), 'ready during preStop');
    const closes = clients.map((cl) => cl.closed);
    gw.kill('SIGTERM');
    const left = grace - (Date.now() - t0);
    assert.ok(left > 0, 'preStop used the whole grace period');
    let exit;
    try {
      exit = await gw.waitExit(left);
    } catch {
      gw.kill('SIGKILL');   // what kubelet does when the grace period runs out
      assert.fail(`chatgw did not exit within the grace period (${grace} ms)\n${gw.tail()}`);
    }
    const infos = await withTimeout(Promise.all(closes), 5000, 'client close events');
    assert.deepEqual(infos.map((i) => i.code), clients.map(() => 1001), 'every WebSocket got close 1001');
    assert.equal(exit.code, 0, `exit ${JSON.stringify(exit)}\n${gw.tail()}`);
    assert.ok(gw.logs.some((o) => /drain/.test(o.msg || '')), 'the drain is logged');
  });
});

// ---------------------------------------------------------------------------------------------
// budget: the DaemonSet's chatgw container terminates TLS from the cert-manager Secret, mounted
// as a directory; a renewal (kubelet's ..data swap of the Secret volume) reaches new handshakes.

function selfSigned(dir, cn) {
  const key = path.join(dir, `${cn}.key`);
  const crt = path.join(dir, `${cn}.crt`);
  const r = run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', key, '-out', crt, '-days', '2', '-subj', `/CN=${cn}`, '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { cwd: dir });
  assert.equal(r.code, 0, r.stderr);
  return { 'tls.crt': fs.readFileSync(crt, 'utf8'), 'tls.key': fs.readFileSync(key, 'utf8'), 'ca.crt': fs.readFileSync(crt, 'utf8') };
}

/** An HTTPS probe as kubelet does it (no certificate verification); resolves {status, cert}. */
function httpsProbe(port, pathname, ms = 2000) {
  return withTimeout(new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port, path: pathname, rejectUnauthorized: false, agent: false,
      headers: { 'User-Agent': 'kube-probe/1.32', Accept: '*/*' } }, (res) => {
      const cert = res.socket.getPeerCertificate();
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, text: Buffer.concat(chunks).toString(), cert }));
    });
    req.on('error', reject);
  }), ms, `https://127.0.0.1:${port}${pathname}`);
}

describe('kubelet simulation (overlays/budget: TLS from a Secret volume)', { timeout: 120000, skip: which('openssl') ? false : 'openssl not installed' }, () => {
  let root; let gw; let redis; let port; let secretWriter; let objs; let c; let pod;

  before(async () => {
    objs = renderOverlay('budget');
    const ds = findObj(objs, 'DaemonSet', 'chatgw');
    pod = ds.spec.template.spec;
    c = pod.containers.find((x) => x.name === 'chatgw');
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-kubelet-budget-'));
  });

  after(async () => {
    await gw?.stop(15000);
    await redis?.stop(5000);
    if (root) fs.rmSync(root, { recursive: true, force: true });
  });

  it('serves wss:// and HTTPS probes with the mounted certificate, and a renewal reaches new handshakes', async () => {
    const env = containerEnv(objs, c);
    const mountOf = (pred) => {
      const vol = pod.volumes.find(pred);
      return { vol, mount: c.volumeMounts.find((m) => m.name === vol.name) };
    };
    const pol = mountOf((v) => v.configMap?.name === 'chatgw-policy');
    const tls = mountOf((v) => v.secret?.secretName === 'chatgw-tls');
    assert.equal(tls.mount.subPath, undefined);
    const polDir = path.join(root, 'policy');
    new AtomicWriter(polDir).write(findObj(objs, 'ConfigMap', 'chatgw-policy').data);
    const tlsDir = path.join(root, 'tls');
    secretWriter = new AtomicWriter(tlsDir, tls.vol.secret.defaultMode ?? 0o644);
    const certs = path.join(root, 'certs');
    fs.mkdirSync(certs);
    secretWriter.write(selfSigned(certs, 'first'));

    // the cluster, mapped onto loopback: Redis behind its Service name, the volumes, the listener
    const runEnv = { PATH: process.env.PATH, HOME: root, LANG: 'C.UTF-8', ...env };
    if (runEnv.CHATGW_REDIS_URL && which('redis-server')) {
      const rport = await freePort();
      // the Redis Secret, laid out as kubelet does, where redis_password_file points
      const rs = mountOf((v) => /^chatgw-redis(-[a-z0-9]+)?$/.test(v.secret?.secretName || ''));
      const rsDir = path.join(root, 'redis-secret');
      // no overlay renders it: the operator creates it once, as docs/deploy-kubernetes.md says
      // (kubectl create secret generic chatgw-redis --from-literal=password="$(openssl rand -hex 24)")
      assert.equal(findObj(objs, 'Secret', rs.vol.secret.secretName), undefined, 'the Redis Secret is not rendered');
      new AtomicWriter(rsDir, rs.vol.secret.defaultMode ?? 0o644).write({ password: crypto.randomBytes(24).toString('hex') });
      const file = runEnv.CHATGW_REDIS_PASSWORD_FILE;
      assert.ok(file.startsWith(`${rs.mount.mountPath}/`), 'redis_password_file is inside the Secret mount');
      runEnv.CHATGW_REDIS_PASSWORD_FILE = path.join(rsDir, file.slice(rs.mount.mountPath.length + 1));
      const pw = fs.readFileSync(runEnv.CHATGW_REDIS_PASSWORD_FILE, 'utf8').replace(/\n$/, '');
      redis = startProcess(which('redis-server'), ['--port', String(rport), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
        '--requirepass', pw, '--dir', root], { name: 'redis' });
      await waitFor(() => tcpProbe(rport), { what: 'redis-server' });
      runEnv.CHATGW_REDIS_URL = runEnv.CHATGW_REDIS_URL.replace('chatgw-redis:6379', `127.0.0.1:${rport}`);
    } else {
      delete runEnv.CHATGW_REDIS_URL;
      delete runEnv.CHATGW_REDIS_PASSWORD_FILE;
    }
    runEnv.CHATGW_SCRIPTS_DIR = polDir;
    runEnv.CHATGW_WEB_DIR = path.join(SRC, 'web');
    if (runEnv.CHATGW_CRASH_DIR) runEnv.CHATGW_CRASH_DIR = fs.mkdtempSync(path.join(root, 'crash-'));
    for (const k of ['CHATGW_TLS_CERT', 'CHATGW_TLS_KEY']) {
      assert.ok(runEnv[k].startsWith(`${tls.mount.mountPath}/`), `${k} is inside the Secret mount`);
      runEnv[k] = path.join(tlsDir, runEnv[k].slice(tls.mount.mountPath.length + 1));
    }
    runEnv.CHATGW_LISTEN = '127.0.0.1:0';
    runEnv.CHATGW_ADMIN_LISTEN = '127.0.0.1:0';
    gw = startProcess(BIN, c.args, { cwd: root, env: runEnv, name: 'chatgw-budget' });
    const pub = await gw.waitLog((o) => o.msg === 'listening' && o.role !== 'admin', 10000, 'public listener');
    assert.equal(pub.tls, true, 'the public listener terminates TLS');
    port = Number(/:(\d+)$/.exec(pub.addr)[1]);

    // liveness: plain HTTP on the admin port, which answers even when the public one is full
    const adm = await gw.waitLog((o) => o.msg === 'listening' && o.role === 'admin', 10000, 'admin listener');
    assert.equal(c.livenessProbe.httpGet.scheme ?? 'HTTP', 'HTTP');
    assert.equal(c.livenessProbe.httpGet.port, 'metrics');
    const live = await waitFor(() => httpGet(Number(/:(\d+)$/.exec(adm.addr)[1]), c.livenessProbe.httpGet.path)
      .then((x) => (x.status === 200 ? x : null)), { timeoutMs: 10000, what: `livenessProbe on the admin port\n${gw.tail(10)}` });
    assert.equal(live.status, 200);
    // kubelet's HTTPS probes
    for (const p of ['startupProbe', 'readinessProbe']) {
      assert.equal(c[p].httpGet.scheme, 'HTTPS');
      const r = await waitFor(() => httpsProbe(port, c[p].httpGet.path).then((x) => (x.status >= 200 && x.status < 400 ? x : null)),
        { timeoutMs: 10000, what: `${p} over HTTPS\n${gw.tail(10)}` });
      assert.equal(r.cert.subject.CN, 'first');
    }
    // the Redis password came from the Secret file: the bus is up
    if (redis) {
      await waitFor(async () => JSON.parse((await httpsProbe(port, '/readyz')).text).redis === 'up',
        { timeoutMs: 10000, intervalMs: 200, what: `/readyz redis up (password from the Secret mount)\n${gw.tail(10)}` });
    }
    // a wss:// chat
    const ws = new WebSocket(`wss://127.0.0.1:${port}/ws?room=budget&name=eve`, { rejectUnauthorized: false });
    const welcome = await withTimeout(new Promise((res, rej) => {
      ws.once('message', (d) => res(JSON.parse(d.toString())));
      ws.once('error', rej);
    }), 5000, 'welcome over wss');
    assert.equal(welcome.type, 'welcome');

    // cert-manager renews: the Secret volume gets a new ..data; new handshakes see the new cert
    secretWriter.write(selfSigned(certs, 'renewed'));
    await waitFor(async () => (await httpsProbe(port, '/healthz')).cert.subject.CN === 'renewed',
      { timeoutMs: 15000, intervalMs: 200, what: `the renewed certificate on a new handshake\n${gw.tail(10)}` });
    assert.equal(ws.readyState, WebSocket.OPEN, 'the existing wss connection survived the renewal');
    ws.terminate();
  });
});
