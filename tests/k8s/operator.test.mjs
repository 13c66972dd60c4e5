// The opt-in kustomize components for clusters with operators, checked offline (issue 17):
//   deploy/k8s/components/prometheus-operator  PrometheusRule + PodMonitor (kube-prometheus-stack)
//   deploy/k8s/components/keda-connections     a KEDA ScaledObject on open WebSockets (+ CPU)
// Each is rendered applied to the overlays, the way an operator adds it (`components:` in a
// kustomization beside the overlay), and every object is validated against its CRD schema
// (npm @kubernetes-models/prometheus-operator and @kubernetes-models/keda) and type-checked
// (tsc: unknown fields fail). The PrometheusRule must be the rules of deploy/monitoring/alerts.yaml
// exactly, and promtool checks and unit-tests the rules as rendered; the PodMonitor must produce
// the job label the rules and the dashboard select; the ScaledObject's query is run by promtool.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  SRC, HERE, OVERLAYS, parseDocs, renderOverlay, findObj, gatewayWorkload, run, which, YAML,
} from './lib.mjs';

const MON = path.join(SRC, 'deploy', 'monitoring');
const COMPONENTS = path.join(SRC, 'deploy', 'k8s', 'components');
const PROM_OP = 'prometheus-operator';
const KEDA = 'keda-connections';

/** Renders an overlay with components added, from a kustomization in a temporary folder. */
const renderCache = new Map();
function renderWith(overlay, components) {
  const key = `${overlay}+${components.join('+')}`;
  if (renderCache.has(key)) return renderCache.get(key);
  const kubectl = which('kubectl');
  assert.ok(kubectl, 'kubectl is not installed: the manifests are rendered with `kubectl kustomize`');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-components-'));
  try {
    // kustomize refuses absolute paths to other kustomizations: relative ones, as in a checkout
    const rel = (p) => path.relative(dir, p);
    fs.writeFileSync(path.join(dir, 'kustomization.yaml'), YAML.stringify({
      apiVersion: 'kustomize.config.k8s.io/v1beta1',
      kind: 'Kustomization',
      resources: [rel(path.join(SRC, 'deploy', 'k8s', 'overlays', overlay))],
      components: components.map((c) => rel(path.join(COMPONENTS, c))),
    }));
    const r = run(kubectl, ['kustomize', dir], { timeoutMs: 60000 });
    assert.equal(r.code, 0, `kubectl kustomize ${overlay} + ${components}:\n${r.stderr}`);
    const objs = parseDocs(r.stdout);
    renderCache.set(key, objs);
    return objs;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const MODELS = {
  'monitoring.coreos.com/v1/PrometheusRule': ['@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule', 'PrometheusRule'],
  'monitoring.coreos.com/v1/PodMonitor': ['@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor', 'PodMonitor'],
  'keda.sh/v1alpha1/ScaledObject': ['@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject', 'ScaledObject'],
};

async function validate(o) {
  const m = MODELS[`${o.apiVersion}/${o.kind}`];
  assert.ok(m, `no model for ${o.apiVersion}/${o.kind}`);
  const mod = await import(m[0]);
  new mod[m[1]](o).validate();
}

/** tsc --noEmit over `export const x: I<Kind> = {...}` for each named object; returns {code, out}. */
function tscCheck(named) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-tsc-operator-'));
  try {
    const files = [];
    for (const [file, o] of Object.entries(named)) {
      const [mod, cls] = MODELS[`${o.apiVersion}/${o.kind}`];
      const f = path.join(dir, `${file}.ts`);
      fs.writeFileSync(f, `import type { I${cls} } from '${mod}';\n\nexport const o: I${cls} = ${JSON.stringify(o, null, 2)};\n`);
      files.push(f);
    }
    const nm = path.join(HERE, 'node_modules');
    fs.writeFileSync(path.join(dir, 'tsconfig.json'), JSON.stringify({
      compilerOptions: {
        strict: true, noEmit: true, target: 'ES2020', module: 'ESNext', moduleResolution: 'Bundler',
        baseUrl: '.', paths: { '*': [`${nm}/*`] }, typeRoots: [], types: [], skipLibCheck: true,
      },
      files,
    }));
    const r = run(process.execPath, [path.join(nm, 'typescript', 'bin', 'tsc'), '-p', dir, '--pretty', 'false'], { cwd: dir, timeoutMs: 180000 });
    return { code: r.code, out: `${r.stdout}${r.stderr}` };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function matches(selector, labels) {
  return Object.entries(selector.matchLabels || {}).every(([k, v]) => labels?.[k] === v)
    && (selector.matchExpressions || []).length === 0;
}

function promtool(args, cwd) {
  assert.ok(which('promtool'), 'promtool is not installed (Debian package prometheus)');
  return run('promtool', args, { cwd });
}

const alertsDoc = () => YAML.parse(fs.readFileSync(path.join(MON, 'alerts.yaml'), 'utf8'));

// ---------------------------------------------------------------------------------------------

describe('prometheus-operator component', () => {
  it('prometheusrule.yaml is generated from deploy/monitoring/alerts.yaml and up to date', () => {
    const r = run(process.execPath, [path.join(MON, 'gen-prometheusrule.mjs'), '--check'], { cwd: SRC });
    assert.equal(r.code, 0, `${r.stdout}${r.stderr}`);
  });

  for (const overlay of OVERLAYS) {
    it(`renders with overlays/${overlay}; every object validates (@kubernetes-models/prometheus-operator)`, async () => {
      const objs = renderWith(overlay, [PROM_OP]);
      const ours = objs.filter((o) => o.apiVersion?.startsWith('monitoring.coreos.com/'));
      assert.deepEqual(ours.map((o) => o.kind).sort(), ['PodMonitor', 'PrometheusRule']);
      for (const o of ours) {
        await validate(o);
        assert.equal(o.metadata.namespace, 'chatgw', `${o.kind}: namespace`);
        assert.equal(o.metadata.labels?.release, 'kube-prometheus-stack', `${o.kind}: the label kube-prometheus-stack selects`);
      }
      // the component adds, and changes nothing of the overlay
      const base = renderOverlay(overlay);
      assert.equal(objs.length, base.length + 2);
      assert.deepEqual(objs.filter((o) => !ours.includes(o)), base);
    });

    it(`overlays/${overlay}: the PodMonitor scrapes the gateway's admin port as job="chatgw"`, () => {
      const objs = renderWith(overlay, [PROM_OP]);
      const pm = findObj(objs, 'PodMonitor', 'chatgw');
      const gw = gatewayWorkload(objs);
      const podLabels = gw.spec.template.metadata.labels;
      assert.ok(matches(pm.spec.selector, podLabels), `selector ${JSON.stringify(pm.spec.selector)} vs pod labels ${JSON.stringify(podLabels)}`);
      assert.ok(!pm.spec.namespaceSelector || pm.spec.namespaceSelector.matchNames?.includes(gw.metadata.namespace));
      // Redis shares app.kubernetes.io/name: it must not be scraped as chatgw
      for (const w of objs.filter((o) => ['Deployment', 'StatefulSet', 'DaemonSet'].includes(o.kind) && o !== gw)) {
        assert.ok(!matches(pm.spec.selector, w.spec.template.metadata.labels), `PodMonitor also selects ${w.kind}/${w.metadata.name}`);
      }
      // job = the value of the pod label jobLabel names
      assert.ok(pm.spec.jobLabel, 'jobLabel set (else job is "<namespace>/<PodMonitor name>")');
      assert.equal(podLabels[pm.spec.jobLabel], 'chatgw');
      // the endpoint is the container port chatgw's admin listener binds
      assert.equal(pm.spec.podMetricsEndpoints.length, 1);
      const ep = pm.spec.podMetricsEndpoints[0];
      const c = gw.spec.template.spec.containers.find((x) => x.name === 'chatgw');
      const port = (c.ports || []).find((p) => p.name === ep.port);
      assert.ok(port, `container port "${ep.port}"`);
      const cfg = objs.find((o) => o.kind === 'ConfigMap' && /^chatgw-config/.test(o.metadata.name));
      assert.equal(Number(/:(\d+)$/.exec(cfg.data.CHATGW_ADMIN_LISTEN)[1]), port.containerPort, 'CHATGW_ADMIN_LISTEN port');
      assert.equal(ep.path, '/metrics');
      assert.equal(gw.spec.template.metadata.annotations?.['prometheus.io/path'] ?? '/metrics', ep.path);
      // a NetworkPolicy over the pods must let Prometheus (namespace monitoring) reach that port
      const nps = objs.filter((o) => o.kind === 'NetworkPolicy' && matches(o.spec.podSelector, podLabels) && o.spec.policyTypes?.includes('Ingress'));
      for (const np of nps) {
        const open = (np.spec.ingress || []).some((rule) => (rule.ports || []).some((p) => p.port === ep.port || p.port === port.containerPort)
          && (rule.from || []).some((f) => f.namespaceSelector?.matchLabels?.['kubernetes.io/metadata.name'] === 'monitoring'));
        assert.ok(open, `NetworkPolicy ${np.metadata.name} closes ${ep.port} to the monitoring namespace`);
      }
    });
  }

  it('the PrometheusRule holds exactly the rules of alerts.yaml', () => {
    const pr = findObj(renderWith('prod', [PROM_OP]), 'PrometheusRule', 'chatgw');
    assert.deepEqual(pr.spec, { groups: alertsDoc().groups });
  });

  it('the job the rules and the dashboard select is the one both scrape configurations produce', () => {
    const texts = [fs.readFileSync(path.join(MON, 'alerts.yaml'), 'utf8'), fs.readFileSync(path.join(MON, 'grafana-dashboard.json'), 'utf8')];
    const jobs = new Set(texts.flatMap((t) => [...t.matchAll(/job\s*=~?\s*\\?"([^"\\]+)\\?"/g)].map((m) => m[1])));
    assert.deepEqual([...jobs], ['chatgw']);
    const scrape = YAML.parse(fs.readFileSync(path.join(MON, 'prometheus-scrape.yaml'), 'utf8'));
    assert.deepEqual(scrape.scrape_configs.map((s) => s.job_name), ['chatgw']);
    const ks = YAML.parse(fs.readFileSync(path.join(COMPONENTS, KEDA, 'scaledobject.yaml'), 'utf8'));
    assert.match(ks.spec.triggers.find((t) => t.type === 'prometheus').metadata.query, /job="chatgw"/);
  });

  it('promtool checks and unit-tests the rules as the PrometheusRule ships them', () => {
    const pr = findObj(renderWith('prod', [PROM_OP]), 'PrometheusRule', 'chatgw');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-rules-'));
    try {
      fs.writeFileSync(path.join(dir, 'rendered-rules.yaml'), YAML.stringify({ groups: pr.spec.groups }, { lineWidth: 0 }));
      let r = promtool(['check', 'rules', 'rendered-rules.yaml'], dir);
      assert.equal(r.code, 0, `${r.stdout}${r.stderr}`);
      const n = pr.spec.groups.flatMap((g) => g.rules).length;
      assert.match(r.stdout, new RegExp(`SUCCESS: ${n} rules found`));
      const tests = YAML.parse(fs.readFileSync(path.join(MON, 'alerts.test.yaml'), 'utf8'));
      tests.rule_files = ['rendered-rules.yaml'];
      fs.writeFileSync(path.join(dir, 'rules.test.yaml'), YAML.stringify(tests, { lineWidth: 0 }));
      r = promtool(['test', 'rules', 'rules.test.yaml'], dir);
      assert.equal(r.code, 0, `${r.stdout}${r.stderr}`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

// ---------------------------------------------------------------------------------------------

describe('keda-connections component', () => {
  it('renders with overlays/prod; the ScaledObject validates (@kubernetes-models/keda); the CPU HPA is gone', async () => {
    const objs = renderWith('prod', [KEDA]);
    assert.equal(objs.filter((o) => o.kind === 'HorizontalPodAutoscaler').length, 0, 'KEDA owns the HPA: the base HPA is not applied');
    const so = findObj(objs, 'ScaledObject', 'chatgw');
    assert.ok(so);
    await validate(so);
    const base = renderOverlay('prod');
    assert.deepEqual(objs.filter((o) => o !== so), base.filter((o) => o.kind !== 'HorizontalPodAutoscaler'));
    // both components together
    const both = renderWith('prod', [PROM_OP, KEDA]);
    assert.ok(findObj(both, 'ScaledObject', 'chatgw') && findObj(both, 'PodMonitor', 'chatgw') && !findObj(both, 'HorizontalPodAutoscaler'));
  });

  for (const overlay of OVERLAYS.filter((o) => o !== 'prod')) {
    it(`refuses to render with overlays/${overlay} (no HPA to replace; no Redis or a DaemonSet)`, () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-components-'));
      try {
        fs.writeFileSync(path.join(dir, 'kustomization.yaml'), YAML.stringify({
          resources: [path.relative(dir, path.join(SRC, 'deploy', 'k8s', 'overlays', overlay))],
          components: [path.relative(dir, path.join(COMPONENTS, KEDA))],
        }));
        const r = run(which('kubectl'), ['kustomize', dir], { timeoutMs: 60000 });
        assert.notEqual(r.code, 0, 'rendered');
        assert.match(r.stderr, /HorizontalPodAutoscaler/);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  }

  it('scales the prod Deployment on open WebSockets, keeps CPU, and the base HPA\'s bounds and slow scale-in', () => {
    const objs = renderWith('prod', [KEDA]);
    const so = findObj(objs, 'ScaledObject', 'chatgw');
    const hpa = findObj(renderOverlay('prod'), 'HorizontalPodAutoscaler', 'chatgw');
    const dep = gatewayWorkload(objs);
    assert.equal(dep.kind, 'Deployment');
    assert.equal(so.metadata.namespace, dep.metadata.namespace);
    assert.deepEqual({ ...so.spec.scaleTargetRef }, { apiVersion: 'apps/v1', kind: dep.kind, name: dep.metadata.name });
    assert.equal(dep.spec.replicas, undefined, 'the autoscaler owns the replica count');
    assert.equal(so.spec.minReplicaCount, hpa.spec.minReplicas);
    assert.equal(so.spec.maxReplicaCount, hpa.spec.maxReplicas);
    assert.ok(so.spec.minReplicaCount >= 2, 'never one pod: the PDB and rollouts need two');
    // takes over the running HPA by name instead of failing KEDA's one-HPA-per-workload check
    assert.equal(so.metadata.annotations?.['scaledobject.keda.sh/transfer-hpa-ownership'], 'true');
    assert.equal(so.spec.advanced.horizontalPodAutoscalerConfig.name, hpa.metadata.name);
    assert.deepEqual(so.spec.advanced.horizontalPodAutoscalerConfig.behavior, hpa.spec.behavior);
    // the WebSocket trigger: a total, averaged per pod by the HPA
    const ws = so.spec.triggers.find((t) => t.type === 'prometheus');
    assert.ok(ws);
    assert.equal(ws.metricType, 'AverageValue');
    assert.match(ws.metadata.query, /^sum\(chatgw_websockets_open\{[^}]*\}\)$/);
    assert.match(ws.metadata.serverAddress, /^https?:\/\/[a-z0-9.-]+(:\d+)?$/);
    assert.equal(ws.metadata.ignoreNullValues, 'false', 'no data must not read as 0 connections');
    const threshold = Number(ws.metadata.threshold);
    assert.ok(Number.isFinite(threshold) && threshold > 0, `threshold "${ws.metadata.threshold}"`);
    // the target must leave room below the ChatgwNearMaxConnections alert when a pod drains
    const near = alertsDoc().groups.flatMap((g) => g.rules).find((r) => r.alert === 'ChatgwNearMaxConnections');
    const alertAt = Number(/>\s*(\d+)\s*$/.exec(near.expr)[1]);
    assert.ok(threshold * (so.spec.minReplicaCount / (so.spec.minReplicaCount - 1)) < alertAt,
      `${threshold} per pod with ${so.spec.minReplicaCount} pods, one draining, reaches the alert at ${alertAt}`);
    // fallback keeps the pods when Prometheus is gone
    assert.equal(so.spec.fallback.behavior, 'currentReplicasIfHigher');
    assert.ok(so.spec.fallback.replicas >= so.spec.minReplicaCount);
    // the CPU trigger as the base HPA, and the request it is a percentage of
    const cpu = so.spec.triggers.find((t) => t.type === 'cpu');
    assert.equal(cpu.metricType, 'Utilization');
    assert.equal(Number(cpu.metadata.value), hpa.spec.metrics[0].resource.target.averageUtilization);
    const c = dep.spec.template.spec.containers.find((x) => x.name === 'chatgw');
    assert.ok(c.resources?.requests?.cpu, 'the cpu trigger needs a CPU request');
  });

  it('the trigger\'s query is valid PromQL that sums the WebSockets of chatgw\'s pods (promtool)', () => {
    const so = findObj(renderWith('prod', [KEDA]), 'ScaledObject', 'chatgw');
    const query = so.spec.triggers.find((t) => t.type === 'prometheus').metadata.query;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-keda-'));
    try {
      fs.writeFileSync(path.join(dir, 'keda.yaml'), YAML.stringify({ groups: [{ name: 'keda', rules: [{ record: 'keda:chatgw_websockets', expr: query }] }] }));
      fs.writeFileSync(path.join(dir, 'keda.test.yaml'), YAML.stringify({
        rule_files: ['keda.yaml'],
        evaluation_interval: '1m',
        tests: [{
          interval: '1m',
          input_series: [
            { series: 'chatgw_websockets_open{job="chatgw", namespace="chatgw", pod="chatgw-a", instance="10.0.0.1:9090"}', values: '3000x5' },
            { series: 'chatgw_websockets_open{job="chatgw", namespace="chatgw", pod="chatgw-b", instance="10.0.0.2:9090"}', values: '2500x5' },
            // another installation's gateway in another namespace is not ours
            { series: 'chatgw_websockets_open{job="chatgw", namespace="staging", pod="chatgw-c", instance="10.0.1.1:9090"}', values: '9999x5' },
          ],
          promql_expr_test: [{ expr: 'keda:chatgw_websockets', eval_time: '2m', exp_samples: [{ labels: 'keda:chatgw_websockets', value: 5500 }] }],
        }],
      }));
      let r = promtool(['check', 'rules', 'keda.yaml'], dir);
      assert.equal(r.code, 0, `${r.stdout}${r.stderr}`);
      r = promtool(['test', 'rules', 'keda.test.yaml'], dir);
      assert.equal(r.code, 0, `${r.stdout}${r.stderr}`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

// ---------------------------------------------------------------------------------------------

describe('typed check of the component objects (tsc)', () => {
  it('every object type-checks against its model, and an unknown field fails', { timeout: 240000 }, () => {
    const objs = renderWith('prod', [PROM_OP, KEDA]);
    const named = {};
    for (const k of Object.keys(MODELS)) {
      const o = objs.find((x) => `${x.apiVersion}/${x.kind}` === k);
      assert.ok(o, k);
      named[`${o.kind}`] = o;
    }
    // a control: the same ScaledObject with a misspelt field must fail, so a pass means something
    const bad = structuredClone(named.ScaledObject);
    bad.spec.minReplicas = 2;
    named.BadScaledObject = bad;
    const r = tscCheck(named);
    const errors = r.out.split('\n').filter((l) => /error TS/.test(l));
    assert.ok(errors.length > 0 && errors.every((l) => l.includes('BadScaledObject.ts')), r.out);
    assert.match(r.out, /minReplicas/);
  });
});
