// Monitoring, for real: promtool checks and unit-tests the alert rules; a real Prometheus server
// (Debian's, private data directory, loopback only) scrapes a running chatgw's admin listener,
// and through Prometheus's HTTP API we assert that the chatgw series are ingested with the
// types chatgw declares, that the alert rules evaluate cleanly, and that every query of the
// Grafana dashboard returns data.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  SRC, BIN, run, which, startProcess, freePort, httpGet, waitFor, chatRoundTrip, metricSamples, tcpProbe, YAML,
} from './lib.mjs';

const MON = path.join(SRC, 'deploy', 'monitoring');
const DASH = JSON.parse(fs.readFileSync(path.join(MON, 'grafana-dashboard.json'), 'utf8'));

// Metrics the dashboard and alerts use before chatgw exports them. A query over one of these
// is reported, not failed, while the running chatgw lacks it; once chatgw exports it, its
// queries are checked like every other. Any other unknown metric name fails the test.
const PENDING = {};

const PROM_VARS = { $__rate_interval: '1m', $__interval: '15s', $__range: '5m', '${__rate_interval}': '1m' };
function substitute(expr) {
  let e = expr;
  for (const [k, v] of Object.entries(PROM_VARS)) e = e.split(k).join(v);
  return e;
}

function dashboardTargets() {
  const out = [];
  const walk = (panels) => {
    for (const p of panels || []) {
      if (p.type === 'row') { walk(p.panels); continue; }
      for (const t of p.targets || []) out.push({ panel: p.title, refId: t.refId, expr: t.expr });
    }
  };
  walk(DASH.panels);
  return out;
}

/** Metric names an expression reads (chatgw_* and up). */
function metricNames(expr) {
  const names = new Set(expr.match(/\bchatgw_[a-z0-9_]+/g) || []);
  if (/\bup\{/.test(expr)) names.add('up');
  return [...names];
}

/** The family a sample name belongs to: x_bucket/x_sum/x_count -> x for histograms. */
function familyOf(name, families) {
  if (families.has(name)) return name;
  const m = /^(.*)_(bucket|sum|count)$/.exec(name);
  if (m && families.has(m[1])) return m[1];
  return null;
}

describe('alert rules (promtool)', () => {
  it('promtool check rules passes', () => {
    assert.ok(which('promtool'), 'promtool is not installed (Debian package prometheus)');
    const r = run('promtool', ['check', 'rules', path.join(MON, 'alerts.yaml')]);
    assert.equal(r.code, 0, `${r.stdout}${r.stderr}`);
    assert.match(r.stdout, /SUCCESS: \d+ rules found/);
  });
  it('promtool test rules passes (each alert fires and stays quiet when it should)', () => {
    const r = run('promtool', ['test', 'rules', 'alerts.test.yaml'], { cwd: MON });
    assert.equal(r.code, 0, `${r.stdout}${r.stderr}`);
  });
  it('covers the alerts issues 9 and 17 ask for', () => {
    const text = fs.readFileSync(path.join(MON, 'alerts.yaml'), 'utf8');
    for (const a of ['ChatgwDown', 'ChatgwNotReady', 'ChatgwPolicyReloadFailed', 'ChatgwSlowConsumerSpike', 'ChatgwRedisDown', 'ChatgwHighLatencyP99',
      'ChatgwPodRestarting', 'ChatgwOOMKilled', 'ChatgwCertificateExpiringSoon', 'ChatgwCertificateExpiryCritical', 'ChatgwNearMaxConnections',
      'ChatgwRedisFlapping']) {
      assert.match(text, new RegExp(`alert: ${a}\\b`), a);
    }
  });
  it('every alert has a unit test that shows it firing', () => {
    const rules = YAML.parse(fs.readFileSync(path.join(MON, 'alerts.yaml'), 'utf8'));
    const tests = YAML.parse(fs.readFileSync(path.join(MON, 'alerts.test.yaml'), 'utf8'));
    const fired = new Set(tests.tests.flatMap((t) => (t.alert_rule_test || []).filter((a) => a.exp_alerts?.length).map((a) => a.alertname)));
    const missing = rules.groups.flatMap((g) => g.rules).map((r) => r.alert).filter((a) => a && !fired.has(a));
    assert.deepEqual(missing, []);
  });
});

describe('grafana dashboard', () => {
  it('is well-formed: unique ids, a Prometheus datasource variable, every target with an expr', () => {
    const ids = [];
    const walk = (ps) => { for (const p of ps || []) { ids.push(p.id); walk(p.panels); } };
    walk(DASH.panels);
    assert.equal(new Set(ids).size, ids.length, 'panel ids unique');
    assert.ok(DASH.uid && DASH.title && DASH.schemaVersion >= 30);
    assert.ok(DASH.templating.list.some((v) => v.type === 'datasource' && v.query === 'prometheus'));
    for (const p of DASH.panels) {
      assert.ok(p.gridPos && p.gridPos.x + p.gridPos.w <= 24, `${p.title}: gridPos`);
      if (p.type !== 'row') assert.equal(p.datasource?.uid, '${datasource}', `${p.title}: datasource`);
    }
    const targets = dashboardTargets();
    assert.ok(targets.length >= 15);
    for (const t of targets) assert.ok(t.expr && t.expr.trim(), `${t.panel}/${t.refId}: expr`);
  });
});

describe('a real Prometheus scrapes a running chatgw', { timeout: 120000 }, () => {
  let dir; let gw; let prom; let redis; let promPort; let adminPort; let publicPort;
  const families = new Map(); // name -> type declared by chatgw

  const api = async (p) => {
    const r = await httpGet(promPort, p, { timeoutMs: 5000 });
    assert.equal(r.status, 200, `GET ${p}: ${r.status} ${r.text.slice(0, 300)}`);
    const j = r.json();
    assert.equal(j.status, 'success', `${p}: ${r.text.slice(0, 300)}`);
    return j.data;
  };
  const query = (q) => api(`/api/v1/query?query=${encodeURIComponent(q)}`);

  before(async () => {
    assert.ok(which('prometheus'), 'prometheus is not installed (Debian package prometheus)');
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-prom-'));
    const env = { ...process.env };
    const args = ['serve', '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--scripts-dir', path.join(SRC, 'scripts'),
      '--log-level', 'info'];
    // the prod shape: a real Redis (when installed) behind redis_url
    if (which('redis-server')) {
      const rport = await freePort();
      redis = startProcess(which('redis-server'), ['--port', String(rport), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
        '--requirepass', 'k8s-test', '--dir', dir], { name: 'redis' });
      await waitFor(() => tcpProbe(rport), { what: `redis-server on ${rport}` });
      args.push('--redis-url', `redis://:k8s-test@127.0.0.1:${rport}/0`);
    }
    gw = startProcess(BIN, args, { cwd: SRC, env, name: 'chatgw' });
    const pub = await gw.waitLog((o) => o.msg === 'listening' && o.role !== 'admin', 10000, 'public listener');
    const adm = await gw.waitLog((o) => o.msg === 'listening' && o.role === 'admin', 10000, 'admin listener');
    publicPort = Number(/:(\d+)$/.exec(pub.addr)[1]);
    adminPort = Number(/:(\d+)$/.exec(adm.addr)[1]);

    promPort = await freePort();
    fs.writeFileSync(path.join(dir, 'prometheus.yml'), [
      'global:',
      '  scrape_interval: 1s',
      '  evaluation_interval: 1s',
      'rule_files:',
      `  - ${path.join(MON, 'alerts.yaml')}`,
      'scrape_configs:',
      '  - job_name: chatgw',
      '    static_configs:',
      `      - targets: ["127.0.0.1:${adminPort}"]`,
      '',
    ].join('\n'));
    prom = startProcess(which('prometheus'), [
      `--config.file=${path.join(dir, 'prometheus.yml')}`,
      `--storage.tsdb.path=${path.join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${promPort}`,
      '--storage.tsdb.retention.time=1h',
      '--log.level=warn',
    ], { cwd: dir, name: 'prometheus' });
    await waitFor(async () => (await httpGet(promPort, '/-/ready', { timeoutMs: 1000 })).status === 200,
      { timeoutMs: 30000, what: `Prometheus ready\n${prom.tail()}` });

    // the families chatgw declares
    const m = await httpGet(adminPort, '/metrics');
    assert.equal(m.status, 200);
    for (const line of m.text.split('\n')) {
      const t = /^# TYPE (\S+) (\S+)$/.exec(line);
      if (t) families.set(t[1], t[2]);
    }
    assert.ok(families.size >= 10, `chatgw declares ${families.size} metric families`);

    // some traffic, so counters move and rates are non-trivial
    await chatRoundTrip(publicPort);
    await httpGet(publicPort, '/no-such-route');
    // enough samples for rate() over the dashboard's windows
    await waitFor(async () => {
      const d = await query('count_over_time(up{job="chatgw"}[1m])');
      return d.result.length === 1 && Number(d.result[0].value[1]) >= 4;
    }, { timeoutMs: 30000, intervalMs: 500, what: 'four scrapes of chatgw' });
  });

  after(async () => {
    await prom?.stop(10000);
    await gw?.stop(15000);
    await redis?.stop(5000);
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('the chatgw target is up', async () => {
    const t = await api('/api/v1/targets');
    const ours = t.activeTargets.filter((x) => x.labels.job === 'chatgw');
    assert.equal(ours.length, 1);
    assert.equal(ours[0].health, 'up', ours[0].lastError);
  });

  it('every metric family chatgw declares is ingested, with the declared type', async () => {
    const present = await query('count by (__name__) ({job="chatgw", __name__=~"chatgw_.+"})');
    const names = new Set(present.result.map((r) => r.metric.__name__));
    const meta = await api('/api/v1/metadata');
    const problems = [];
    for (const [fam, type] of families) {
      const sampleNames = type === 'histogram' ? [`${fam}_bucket`, `${fam}_sum`, `${fam}_count`]
        : type === 'summary' ? [`${fam}_sum`, `${fam}_count`] : [fam];
      for (const s of sampleNames) if (!names.has(s)) problems.push(`${s}: no series in Prometheus`);
      const md = meta[fam];
      if (!md) problems.push(`${fam}: no metadata in Prometheus`);
      else if (md[0].type !== type) problems.push(`${fam}: Prometheus says ${md[0].type}, chatgw declares ${type}`);
      if (type === 'counter' && !fam.endsWith('_total')) problems.push(`${fam}: a counter without _total`);
    }
    assert.deepEqual(problems, []);
  });

  it('counters moved with the traffic, and info series carry their labels', async () => {
    const d = await query('sum(chatgw_messages_received_total)');
    assert.ok(Number(d.result[0]?.value[1]) >= 1, 'chatgw_messages_received_total counted the chat message');
    const b = await query('chatgw_build_info');
    assert.ok(b.result[0]?.metric.version, 'chatgw_build_info{version}');
    if (families.has('chatgw_policy_info')) {
      const p = await query('chatgw_policy_info');
      assert.match(p.result[0]?.metric.version || '', /^[0-9a-f]{64}$/, 'chatgw_policy_info{version} is a sha256');
    }
  });

  it('the alert rules load and evaluate without errors', async () => {
    const expected = (fs.readFileSync(path.join(MON, 'alerts.yaml'), 'utf8').match(/^\s+- alert: /gm) || []).length;
    const rules = await waitFor(async () => {
      const r = await api('/api/v1/rules');
      const all = r.groups.flatMap((g) => g.rules);
      return all.length === expected && all.every((x) => x.lastEvaluation && !x.lastEvaluation.startsWith('0001')) ? all : null;
    }, { timeoutMs: 20000, intervalMs: 500, what: 'every rule evaluated once' });
    const bad = rules.filter((r) => r.health !== 'ok').map((r) => `${r.name}: ${r.health} ${r.lastError || ''}`);
    assert.deepEqual(bad, []);
    // a healthy gateway fires none of its availability alerts
    const firing = rules.filter((r) => r.state === 'firing').map((r) => r.name);
    assert.ok(!firing.includes('ChatgwDown') && !firing.includes('ChatgwAbsent'), `firing: ${firing}`);
  });

  it('every dashboard query returns data', async (t) => {
    const failures = [];
    const pending = [];
    for (const target of dashboardTargets()) {
      const names = metricNames(target.expr);
      const unknown = names.filter((n) => n !== 'up' && !familyOf(n, families));
      const notYet = unknown.filter((n) => familyOf(n, new Set(Object.keys(PENDING))));
      const wrong = unknown.filter((n) => !notYet.includes(n));
      if (wrong.length) { failures.push(`${target.panel}/${target.refId}: chatgw has no metric ${wrong.join(', ')}`); continue; }
      const expr = substitute(target.expr);
      let data;
      try { data = await query(expr); } catch (e) { failures.push(`${target.panel}/${target.refId}: ${e.message}`); continue; }
      if (notYet.length) { pending.push(`${target.panel}/${target.refId} (${notYet.join(', ')})`); continue; }
      if (!data.result.length) failures.push(`${target.panel}/${target.refId}: no data for ${expr}`);
    }
    for (const a of DASH.annotations.list.filter((x) => x.expr)) {
      try { await query(substitute(a.expr)); } catch (e) { failures.push(`annotation ${a.name}: ${e.message}`); }
    }
    if (pending.length) {
      t.diagnostic(`queries over metrics chatgw does not export yet (${Object.entries(PENDING).map(([k, v]) => `${k}: ${v}`).join('; ')}): ${pending.join('; ')}`);
    }
    assert.deepEqual(failures, []);
  });

  it('the metrics stay off the public listener', async () => {
    const r = await httpGet(publicPort, '/metrics');
    assert.equal(r.status, 404);
    const m = await httpGet(adminPort, '/metrics');
    assert.ok(metricSamples(m.text, 'chatgw_build_info').length === 1);
  });
});
