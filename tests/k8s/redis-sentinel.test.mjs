// The redis-sentinel component (deploy/k8s/components/redis-sentinel), checked offline: rendered
// onto the prod overlay, it replaces the single Redis with three Redis + sentinel pods, points
// chatgw at the sentinels (names that the StatefulSet's pods really get), opens the sentinel
// port in the NetworkPolicy, passes the restricted Pod Security level, and its scripts parse.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SRC, parseDocs, findObj, run, which, YAML } from './lib.mjs';
import { checkPodSpec } from './podsecurity.mjs';

function render() {
  const kubectl = which('kubectl');
  assert.ok(kubectl, 'kubectl is not installed');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-sentinel-'));
  try {
    const rel = (p) => path.relative(dir, path.join(SRC, p));
    fs.writeFileSync(path.join(dir, 'kustomization.yaml'), YAML.stringify({
      apiVersion: 'kustomize.config.k8s.io/v1beta1', kind: 'Kustomization',
      resources: [rel('deploy/k8s/overlays/prod')], components: [rel('deploy/k8s/components/redis-sentinel')],
    }));
    const r = run(kubectl, ['kustomize', dir], { timeoutMs: 60000 });
    assert.equal(r.code, 0, r.stderr);
    return parseDocs(r.stdout);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe('k8s: the redis-sentinel component', () => {
  const objs = render();

  it('replaces the single Redis with a three-pod StatefulSet behind a headless Service', () => {
    assert.ok(!objs.some((o) => o.kind === 'Deployment' && o.metadata.name === 'chatgw-redis'));
    assert.ok(!objs.some((o) => o.kind === 'Service' && o.metadata.name === 'chatgw-redis'));
    const sts = findObj(objs, 'StatefulSet', 'chatgw-redis-ha');
    assert.equal(sts.spec.replicas, 3);
    const svc = findObj(objs, 'Service', sts.spec.serviceName);
    assert.equal(svc.spec.clusterIP, 'None');
    assert.deepEqual(svc.spec.ports.map((p) => p.port).sort(), [26379, 6379]);
    for (const [k, v] of Object.entries(svc.spec.selector)) assert.equal(sts.spec.template.metadata.labels[k], v);
    const pdb = findObj(objs, 'PodDisruptionBudget', 'chatgw-redis-ha');
    assert.equal(pdb.spec.maxUnavailable, 1);
  });

  it('chatgw asks the sentinels by the names the pods get', () => {
    const sts = findObj(objs, 'StatefulSet', 'chatgw-redis-ha');
    const env = Object.fromEntries(findObj(objs, 'Deployment', 'chatgw').spec.template.spec.containers[0].env
      .map((e) => [e.name, e.value]));
    const want = [0, 1, 2].map((i) => `${sts.metadata.name}-${i}.${sts.spec.serviceName}:26379`).join(',');
    assert.equal(env.CHATGW_REDIS_SENTINELS, want);
    assert.equal(env.CHATGW_REDIS_SENTINEL_MASTER, 'chatgw');
    assert.ok(env.CHATGW_REDIS_URL, 'the URL still gives the db');
    const cm = findObj(objs, 'ConfigMap', 'chatgw-redis-ha');
    assert.match(cm.data['sentinel.sh'], /sentinel monitor chatgw \$MASTER 6379 2/);
    assert.match(cm.data['sentinel.sh'], /requirepass \$REDIS_PASSWORD/);
    assert.match(env.CHATGW_REDIS_SENTINEL_PASSWORD_FILE, /^\/run\/secrets\/redis\//);
  });

  it('the NetworkPolicy lets chatgw and the Redis pods reach both ports', () => {
    const np = findObj(objs, 'NetworkPolicy', 'chatgw-redis');
    const ports = np.spec.ingress.flatMap((r) => r.ports.map((p) => p.port));
    assert.ok(ports.includes('redis') && ports.includes('sentinel'));
    const from = np.spec.ingress.flatMap((r) => r.from.map((f) => f.podSelector.matchLabels['app.kubernetes.io/component']));
    assert.deepEqual(from.sort(), ['gateway', 'redis']);
  });

  it('passes restricted Pod Security; its scripts parse', () => {
    const sts = findObj(objs, 'StatefulSet', 'chatgw-redis-ha');
    assert.deepEqual(checkPodSpec(sts.spec.template.spec, 'restricted', sts.spec.template.metadata), []);
    const cm = findObj(objs, 'ConfigMap', 'chatgw-redis-ha');
    for (const [name, text] of Object.entries(cm.data)) {
      const r = run('sh', ['-n'], { input: text });
      assert.equal(r.code, 0, `${name}: ${r.stderr}`);
    }
  });
});
