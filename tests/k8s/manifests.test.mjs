// The Kubernetes manifests, checked offline: every overlay renders with `kubectl kustomize`,
// every object validates against the Kubernetes schemas (npm kubernetes-models), a typed check
// (npm kubernetes-types + tsc --noEmit) rejects unknown fields, and the deployment rules of
// issue 9 hold on the rendered YAML. Also lints the Dockerfile and sanity-checks the workflows.
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import {
  SRC, HERE, OVERLAYS, kustomize, parseDocs, renderOverlay, findObj, findGenerated, gatewayWorkload,
  scriptFiles, run, YAML,
} from './lib.mjs';

const require = createRequire(import.meta.url);

// ---------------------------------------------------------------------------------------------
// schema validation: kubernetes-models (core) and @kubernetes-models/cert-manager (CRDs)

/** Imports the kubernetes-models class for apiVersion/kind; throws for an unknown kind. */
async function modelClass(apiVersion, kind) {
  if (typeof apiVersion !== 'string' || typeof kind !== 'string') throw new Error('object without apiVersion/kind');
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : [null, apiVersion];
  const candidates = [];
  if (group === null) candidates.push(`kubernetes-models/${version}/${kind}`);
  else if (group.endsWith('cert-manager.io')) candidates.push(`@kubernetes-models/cert-manager/${group}/${version}/${kind}`);
  else candidates.push(`kubernetes-models/${group}/${version}/${kind}`);
  for (const spec of candidates) {
    let mod;
    try { mod = await import(spec); } catch { continue; }
    if (typeof mod[kind] === 'function') return mod[kind];
  }
  throw new Error(`unknown kind ${apiVersion}/${kind}: no schema in kubernetes-models`);
}

async function validateObject(o) {
  const Cls = await modelClass(o.apiVersion, o.kind);
  new Cls(o).validate();
}

// ---------------------------------------------------------------------------------------------
// typed check: kubernetes-types (built-in kinds) / kubernetes-models interfaces (CRDs) + tsc

const TYPES = {
  'v1/Namespace': ['kubernetes-types/core/v1', 'Namespace'],
  'v1/ConfigMap': ['kubernetes-types/core/v1', 'ConfigMap'],
  'v1/Secret': ['kubernetes-types/core/v1', 'Secret'],
  'v1/Service': ['kubernetes-types/core/v1', 'Service'],
  'apps/v1/Deployment': ['kubernetes-types/apps/v1', 'Deployment'],
  'apps/v1/DaemonSet': ['kubernetes-types/apps/v1', 'DaemonSet'],
  'apps/v1/StatefulSet': ['kubernetes-types/apps/v1', 'StatefulSet'],
  'networking.k8s.io/v1/Ingress': ['kubernetes-types/networking/v1', 'Ingress'],
  'networking.k8s.io/v1/NetworkPolicy': ['kubernetes-types/networking/v1', 'NetworkPolicy'],
  'policy/v1/PodDisruptionBudget': ['kubernetes-types/policy/v1', 'PodDisruptionBudget'],
  'autoscaling/v2/HorizontalPodAutoscaler': ['kubernetes-types/autoscaling/v2', 'HorizontalPodAutoscaler'],
  'cert-manager.io/v1/Certificate': ['@kubernetes-models/cert-manager/cert-manager.io/v1/Certificate', 'ICertificate'],
  'cert-manager.io/v1/ClusterIssuer': ['@kubernetes-models/cert-manager/cert-manager.io/v1/ClusterIssuer', 'IClusterIssuer'],
};

/** Writes a .ts file typing each object, runs tsc --noEmit; returns {code, out}. */
function tscCheck(objsByFile, label) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `chatgw-tsc-${label}-`));
  try {
    const imports = new Map();
    const files = [];
    for (const [file, objs] of Object.entries(objsByFile)) {
      const lines = [];
      objs.forEach((o, i) => {
        const key = `${o.apiVersion}/${o.kind}`;
        const t = TYPES[key];
        if (!t) throw new Error(`no TypeScript type for ${key} (add it to TYPES)`);
        const alias = `T_${t[1]}_${t[0].replace(/[^A-Za-z0-9]/g, '_')}`;
        imports.set(alias, t);
        lines.push(`// ${key} ${o.metadata?.name}\nexport const o${i}: ${alias} = ${JSON.stringify(o, null, 2)};`);
      });
      const head = [...imports].map(([alias, [mod, name]]) => `import type { ${name} as ${alias} } from '${mod}';`).join('\n');
      const f = path.join(dir, `${file}.ts`);
      fs.writeFileSync(f, `${head}\n\n${lines.join('\n\n')}\n`);
      files.push(f);
    }
    const nm = path.join(HERE, 'node_modules');
    fs.writeFileSync(path.join(dir, 'tsconfig.json'), JSON.stringify({
      compilerOptions: {
        strict: true, noEmit: true, target: 'ES2020', module: 'ESNext', moduleResolution: 'Bundler',
        baseUrl: '.', paths: { '*': [`${nm}/*`, `${nm}/@types/*`] }, typeRoots: [], types: [],
        skipLibCheck: true,
      },
      files,
    }));
    const r = run(process.execPath, [path.join(nm, 'typescript', 'bin', 'tsc'), '-p', dir, '--pretty', 'false'], { cwd: dir, timeoutMs: 180000 });
    return { code: r.code, out: `${r.stdout}${r.stderr}` };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// helpers over the rendered objects

const NAMESPACED_EXEMPT = new Set(['Namespace', 'ClusterIssuer', 'ClusterRole', 'ClusterRoleBinding']);

function podSpec(w) { return w.spec.template.spec; }

/**
 * Secrets that no overlay renders, on purpose: cert-manager writes chatgw-tls, and the operator
 * creates chatgw-redis once with kubectl (docs/deploy-kubernetes.md), so no committed password
 * reaches a cluster. References to them resolve to a placeholder of their name and key.
 */
const EXTERNAL_SECRETS = new Set(['chatgw-tls', 'chatgw-redis']);

/** Resolves a container's env into {name: value} (configMapRef/secretKeyRef from the render). */
function containerEnv(objs, c) {
  const env = {};
  for (const ef of c.envFrom || []) {
    if (ef.configMapRef) {
      const cm = findObj(objs, 'ConfigMap', ef.configMapRef.name);
      assert.ok(cm, `envFrom ConfigMap ${ef.configMapRef.name} is not rendered`);
      Object.assign(env, cm.data);
    }
  }
  for (const e of c.env || []) {
    if (e.value !== undefined) env[e.name] = String(e.value).replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, v) => (v in env ? env[v] : m));
    else if (e.valueFrom?.secretKeyRef && EXTERNAL_SECRETS.has(e.valueFrom.secretKeyRef.name)) {
      env[e.name] = `<secret ${e.valueFrom.secretKeyRef.name}/${e.valueFrom.secretKeyRef.key}>`;
    } else if (e.valueFrom?.secretKeyRef?.optional && !findObj(objs, 'Secret', e.valueFrom.secretKeyRef.name)) {
      continue;   // an optional Secret that is not there leaves the variable unset, as kubelet does
    } else if (e.valueFrom?.secretKeyRef) {
      const s = findObj(objs, 'Secret', e.valueFrom.secretKeyRef.name);
      assert.ok(s, `secretKeyRef ${e.valueFrom.secretKeyRef.name} is not rendered`);
      const v = s.data?.[e.valueFrom.secretKeyRef.key];
      assert.ok(v !== undefined || s.stringData?.[e.valueFrom.secretKeyRef.key] !== undefined, `secret key ${e.valueFrom.secretKeyRef.key} missing`);
      env[e.name] = v !== undefined ? Buffer.from(v, 'base64').toString('utf8') : s.stringData[e.valueFrom.secretKeyRef.key];
    } else if (e.valueFrom?.configMapKeyRef) {
      const cm = findObj(objs, 'ConfigMap', e.valueFrom.configMapKeyRef.name);
      assert.ok(cm, `configMapKeyRef ${e.valueFrom.configMapKeyRef.name} is not rendered`);
      env[e.name] = cm.data[e.valueFrom.configMapKeyRef.key];
    }
  }
  return env;
}

/** The Secret key a file path in container c reads: {secret, key} through its volume mounts. */
function secretFileOf(objs, pod, c, file) {
  for (const m of c.volumeMounts || []) {
    if (!file.startsWith(`${m.mountPath}/`)) continue;
    const vol = pod.volumes.find((v) => v.name === m.name);
    if (!vol?.secret) continue;
    const s = findObj(objs, 'Secret', vol.secret.secretName);
    return { name: vol.secret.secretName, secret: s, key: file.slice(m.mountPath.length + 1), mount: m };
  }
  return null;
}

function portNumber(c, port) {
  if (typeof port === 'number') return port;
  const p = (c.ports || []).find((x) => x.name === port);
  assert.ok(p, `container ${c.name}: probe port "${port}" is not a declared port`);
  return p.containerPort;
}

function listenPort(addr) {
  const m = /:(\d+)$/.exec(addr || '');
  return m ? Number(m[1]) : null;
}

function msOfPreStop(c) {
  const cmd = c.lifecycle?.preStop?.exec?.command;
  if (cmd && cmd[0] === 'sleep') return Number(cmd[1]) * 1000;
  if (c.lifecycle?.preStop?.sleep) return c.lifecycle.preStop.sleep.seconds * 1000;
  return 0;
}

function images(objs) {
  const out = [];
  for (const o of objs) {
    const spec = o.spec?.template?.spec;
    if (!spec) continue;
    for (const c of [...(spec.initContainers || []), ...(spec.containers || [])]) out.push({ obj: `${o.kind}/${o.metadata.name}`, image: c.image });
  }
  return out;
}

function workloads(objs) {
  return objs.filter((o) => ['Deployment', 'DaemonSet', 'StatefulSet'].includes(o.kind));
}

// ---------------------------------------------------------------------------------------------

describe('render', () => {
  for (const o of OVERLAYS) {
    it(`kubectl kustomize renders overlays/${o}`, () => {
      const objs = renderOverlay(o);
      assert.ok(objs.length >= 8, `only ${objs.length} objects`);
      for (const x of objs) {
        assert.ok(x.apiVersion && x.kind && x.metadata?.name, `object without apiVersion/kind/name: ${JSON.stringify(x).slice(0, 200)}`);
      }
      const ids = objs.map((x) => `${x.apiVersion}/${x.kind}/${x.metadata.namespace || ''}/${x.metadata.name}`);
      assert.equal(new Set(ids).size, ids.length, `duplicate objects: ${ids}`);
    });
  }
  it('renders the base, the scripts generator and the monitoring kustomization', () => {
    for (const d of ['deploy/k8s/base', 'scripts', 'deploy/monitoring']) {
      assert.ok(parseDocs(kustomize(d)).length > 0, d);
    }
  });
});

describe('schemas (kubernetes-models)', () => {
  for (const o of OVERLAYS) {
    it(`every object of overlays/${o} validates`, async () => {
      const errors = [];
      for (const x of renderOverlay(o)) {
        try { await validateObject(x); } catch (e) { errors.push(`${x.kind}/${x.metadata?.name}: ${e.message.split('\n')[0]}`); }
      }
      assert.deepEqual(errors, []);
    });
  }
  it('the monitoring ConfigMaps validate', async () => {
    for (const x of parseDocs(kustomize('deploy/monitoring'))) await validateObject(x);
  });
  it('an unknown kind is an error, and a wrong type fails validation', async () => {
    await assert.rejects(validateObject({ apiVersion: 'apps/v1', kind: 'Deploymnet', metadata: { name: 'x' } }), /unknown kind/);
    await assert.rejects(validateObject({ apiVersion: 'example.com/v1', kind: 'Widget', metadata: { name: 'x' } }), /unknown kind/);
    const d = structuredClone(findObj(renderOverlay('prod'), 'Deployment', 'chatgw'));
    d.spec.template.spec.terminationGracePeriodSeconds = 'thirty';
    await assert.rejects(validateObject(d), /terminationGracePeriodSeconds/);
  });
});

describe('typed check (kubernetes-types + tsc --noEmit)', () => {
  it('every rendered object has only known fields of the right types', { timeout: 240000 }, () => {
    const byFile = {};
    for (const o of OVERLAYS) byFile[o] = renderOverlay(o);
    const r = tscCheck(byFile, 'overlays');
    assert.equal(r.code, 0, `tsc found problems:\n${r.out}`);
  });
  it('catches a misspelled field that validate() lets through', { timeout: 240000 }, async () => {
    const d = structuredClone(findObj(renderOverlay('prod'), 'Deployment', 'chatgw'));
    d.spec.replica = 3;                                    // the misspelling of replicas
    const e = structuredClone(findObj(renderOverlay('prod'), 'Deployment', 'chatgw'));
    e.spec.template.spec.containers[0].readinesProbe = {}; // and of readinessProbe
    await validateObject(d);                               // the JSON schema allows extra fields
    await validateObject(e);
    const r = tscCheck({ broken: [d, e] }, 'negative');
    assert.notEqual(r.code, 0, 'tsc accepted a Deployment with spec.replica');
    assert.match(r.out, /replica/);
    assert.match(r.out, /readinesProbe/);
  });
});

describe('rules on the rendered YAML', () => {
  let R;
  before(() => { R = Object.fromEntries(OVERLAYS.map((o) => [o, renderOverlay(o)])); });

  for (const o of OVERLAYS) {
    describe(`overlays/${o}`, () => {
      it('namespaced objects live in chatgw, cluster-scoped ones have no namespace', () => {
        for (const x of R[o]) {
          if (NAMESPACED_EXEMPT.has(x.kind)) assert.equal(x.metadata.namespace, undefined, `${x.kind}/${x.metadata.name} is cluster-scoped`);
          else assert.equal(x.metadata.namespace, 'chatgw', `${x.kind}/${x.metadata.name} namespace`);
        }
        assert.ok(findObj(R[o], 'Namespace', 'chatgw'), 'Namespace chatgw');
      });

      it('probes are present: startup and liveness on /healthz, readiness on /readyz', () => {
        const w = gatewayWorkload(R[o]);
        assert.ok(w, 'no chatgw Deployment/DaemonSet');
        for (const c of podSpec(w).containers) {
          for (const [probe, p] of [['startupProbe', '/healthz'], ['livenessProbe', '/healthz'], ['readinessProbe', '/readyz']]) {
            const pr = c[probe];
            assert.ok(pr?.httpGet, `${c.name}: ${probe} missing`);
            assert.equal(pr.httpGet.path, p, `${c.name}: ${probe} path`);
            portNumber(c, pr.httpGet.port);
            assert.ok((pr.periodSeconds ?? 10) >= 1 && (pr.timeoutSeconds ?? 1) <= (pr.periodSeconds ?? 10), `${c.name}: ${probe} timings`);
          }
          assert.ok(c.startupProbe.periodSeconds * c.startupProbe.failureThreshold >= 20, `${c.name}: startup budget too small`);
        }
        for (const w2 of workloads(R[o])) {
          for (const c of podSpec(w2).containers) {
            assert.ok(c.livenessProbe && c.readinessProbe, `${w2.kind}/${w2.metadata.name} ${c.name}: probes missing`);
          }
        }
      });

      it('resources are set on every container; chatgw has free4chat\'s requests and limits', () => {
        for (const w of workloads(R[o])) {
          for (const c of podSpec(w).containers) {
            for (const k of ['requests', 'limits']) {
              assert.ok(c.resources?.[k]?.cpu && c.resources?.[k]?.memory, `${w.metadata.name}/${c.name}: resources.${k} cpu and memory`);
            }
          }
        }
        const c = podSpec(gatewayWorkload(R[o])).containers.find((x) => x.name === 'chatgw');
        assert.deepEqual(c.resources, { requests: { cpu: '250m', memory: '128Mi' }, limits: { cpu: '1000m', memory: '500Mi' } });
      });

      it('pods run non-root with a read-only root filesystem, no privilege escalation, no capabilities, seccomp', () => {
        for (const w of workloads(R[o])) {
          const ps = podSpec(w);
          assert.equal(ps.securityContext?.runAsNonRoot, true, `${w.metadata.name}: pod runAsNonRoot`);
          assert.equal(ps.securityContext?.seccompProfile?.type, 'RuntimeDefault', `${w.metadata.name}: seccomp`);
          assert.ok(ps.securityContext?.runAsUser > 0, `${w.metadata.name}: runAsUser`);
          assert.notEqual(ps.hostNetwork, true, `${w.metadata.name}: hostNetwork`);
          for (const c of ps.containers) {
            const sc = c.securityContext || {};
            assert.equal(sc.readOnlyRootFilesystem, true, `${c.name}: readOnlyRootFilesystem`);
            assert.equal(sc.allowPrivilegeEscalation, false, `${c.name}: allowPrivilegeEscalation`);
            assert.notEqual(sc.privileged, true, `${c.name}: privileged`);
            assert.deepEqual(sc.capabilities?.drop, ['ALL'], `${c.name}: capabilities.drop`);
            assert.ok(!sc.capabilities?.add?.length, `${c.name}: capabilities.add`);
            assert.notEqual(sc.runAsUser, 0, `${c.name}: runAsUser 0`);
          }
        }
        const gw = podSpec(gatewayWorkload(R[o]));
        assert.equal(gw.securityContext.runAsUser, 10001, 'chatgw runs as uid 10001');
      });

      it('the policy is mounted as a directory (no subPath) at scripts_dir', () => {
        const w = gatewayWorkload(R[o]);
        const ps = podSpec(w);
        const vol = ps.volumes.find((v) => v.configMap?.name === 'chatgw-policy');
        assert.ok(vol, 'no volume of ConfigMap chatgw-policy');
        assert.equal(vol.configMap.items, undefined, 'items would pin keys: new scripts would never appear');
        for (const c of ps.containers) {
          const mounts = (c.volumeMounts || []).filter((m) => m.name === vol.name);
          assert.equal(mounts.length, 1, `${c.name}: one policy mount`);
          assert.equal(mounts[0].subPath, undefined, `${c.name}: subPath mounts never update`);
          assert.equal(mounts[0].subPathExpr, undefined, `${c.name}: subPathExpr mounts never update`);
          const env = containerEnv(R[o], c);
          assert.equal(env.CHATGW_SCRIPTS_DIR, mounts[0].mountPath, `${c.name}: CHATGW_SCRIPTS_DIR is the mount path`);
        }
        for (const w2 of workloads(R[o])) {
          for (const c of podSpec(w2).containers) {
            for (const m of c.volumeMounts || []) assert.equal(m.subPath, undefined, `${w2.metadata.name}/${c.name}: subPath on ${m.mountPath}`);
          }
        }
      });

      it('the chatgw-policy keys equal scripts/*.lua, with their contents, without a name hash', () => {
        const cm = findObj(R[o], 'ConfigMap', 'chatgw-policy');
        assert.ok(cm, 'ConfigMap chatgw-policy (exact name: no suffix hash)');
        assert.deepEqual(Object.keys(cm.data).sort(), scriptFiles());
        for (const f of scriptFiles()) {
          assert.equal(cm.data[f], fs.readFileSync(path.join(SRC, 'scripts', f), 'utf8'), `${f} content`);
        }
        assert.equal(cm.binaryData, undefined);
        assert.ok(findGenerated(R[o], 'ConfigMap', 'chatgw-config'), 'ConfigMap chatgw-config');
      });

      it('the grace period exceeds preStop + drain_timeout_ms', () => {
        const w = gatewayWorkload(R[o]);
        const ps = podSpec(w);
        const grace = (ps.terminationGracePeriodSeconds ?? 30) * 1000;
        for (const c of ps.containers) {
          const env = containerEnv(R[o], c);
          const drain = Number(env.CHATGW_DRAIN_TIMEOUT_MS ?? 10000);
          const pre = msOfPreStop(c);
          assert.ok(pre > 0, `${c.name}: a preStop pause so endpoints update before the drain`);
          assert.ok(grace > pre + drain, `${c.name}: grace ${grace} ms <= preStop ${pre} + drain ${drain} ms`);
        }
      });

      it('prometheus annotations point at the metrics port, which is the admin listener', () => {
        const w = gatewayWorkload(R[o]);
        const ann = w.spec.template.metadata.annotations || {};
        assert.equal(ann['prometheus.io/scrape'], 'true');
        assert.equal(ann['prometheus.io/path'], '/metrics');
        const c = podSpec(w).containers.find((x) => x.name === 'chatgw');
        const metrics = c.ports.find((p) => p.name === 'metrics');
        assert.ok(metrics, 'a port named metrics');
        assert.equal(Number(ann['prometheus.io/port']), metrics.containerPort);
        const env = containerEnv(R[o], c);
        assert.equal(listenPort(env.CHATGW_ADMIN_LISTEN), metrics.containerPort, 'admin_listen port');
        assert.notEqual(listenPort(env.CHATGW_LISTEN), metrics.containerPort);
        for (const p of c.ports) assert.ok(!(p.name === 'metrics' && p.hostPort), 'metrics never on a hostPort');
      });

      it('the public listener is the declared container port', () => {
        const w = gatewayWorkload(R[o]);
        for (const c of podSpec(w).containers) {
          const env = containerEnv(R[o], c);
          const port = listenPort(env.CHATGW_LISTEN);
          assert.ok(c.ports.some((p) => p.containerPort === port && p.name !== 'metrics'), `${c.name}: listen ${env.CHATGW_LISTEN} not a declared port`);
          assert.equal(portNumber(c, c.readinessProbe.httpGet.port), port, `${c.name}: readiness probes the public listener`);
        }
      });

      it('env and volume references resolve to rendered objects', () => {
        for (const w of workloads(R[o])) {
          for (const c of podSpec(w).containers) containerEnv(R[o], c);
          for (const v of podSpec(w).volumes || []) {
            if (v.configMap) assert.ok(findObj(R[o], 'ConfigMap', v.configMap.name), `ConfigMap ${v.configMap.name}`);
            if (v.secret && !EXTERNAL_SECRETS.has(v.secret.secretName)) assert.ok(findObj(R[o], 'Secret', v.secret.secretName), `Secret ${v.secret.secretName}`);
          }
        }
      });

      it('NetworkPolicy admits the public port from ingress-nginx (or the world on budget) and metrics from monitoring', () => {
        const np = findObj(R[o], 'NetworkPolicy', 'chatgw');
        assert.ok(np);
        const rules = np.spec.ingress;
        const nsOf = (r) => (r.from || []).map((f) => f.namespaceSelector?.matchLabels?.['kubernetes.io/metadata.name']);
        const metricsRule = rules.find((r) => r.ports?.some((p) => p.port === 'metrics'));
        assert.deepEqual(nsOf(metricsRule), ['monitoring']);
        const pub = rules.find((r) => r.ports?.some((p) => p.port === 'http' || p.port === 'https'));
        if (o === 'budget') assert.equal(pub.from, undefined, 'budget: the public ports are open to all');
        else assert.deepEqual(nsOf(pub), ['ingress-nginx']);
      });

      it('no LoadBalancer or NodePort Service', () => {
        for (const s of R[o].filter((x) => x.kind === 'Service')) assert.ok(!['LoadBalancer', 'NodePort'].includes(s.spec.type), `${s.metadata.name}: ${s.spec.type}`);
      });
    });
  }

  it('prod and budget pin every image by tag (never :latest, never untagged)', () => {
    for (const o of ['prod', 'budget']) {
      for (const { obj, image } of images(R[o])) {
        const tag = /^(?:.*\/)?[^/:]+(?::([^/@]+))?(?:@sha256:[0-9a-f]{64})?$/.exec(image);
        assert.ok(tag, `${o} ${obj}: unparsable image ${image}`);
        assert.ok(tag[1] || image.includes('@sha256:'), `${o} ${obj}: ${image} has no tag (that is :latest)`);
        assert.notEqual(tag[1], 'latest', `${o} ${obj}: ${image}`);
      }
      const gw = podSpec(gatewayWorkload(R[o])).containers[0].image;
      assert.match(gw, /^ghcr\.io\/[^/]+\/chatgw:/, `${o}: chatgw comes from GHCR`);
    }
  });

  it('the Ingress has WebSocket timeouts of 3600 s, class nginx, and a Service port 80 -> 8888', () => {
    for (const o of ['dev', 'prod']) {
      const ing = findObj(R[o], 'Ingress', 'chatgw');
      assert.ok(ing, `${o}: Ingress`);
      const a = ing.metadata.annotations || {};
      assert.ok(Number(a['nginx.ingress.kubernetes.io/proxy-read-timeout']) >= 3600, `${o}: proxy-read-timeout`);
      assert.ok(Number(a['nginx.ingress.kubernetes.io/proxy-send-timeout']) >= 3600, `${o}: proxy-send-timeout`);
      assert.equal(ing.spec.ingressClassName, 'nginx');
      const be = ing.spec.rules[0].http.paths[0].backend.service;
      const svc = findObj(R[o], 'Service', be.name);
      assert.ok(svc, `${o}: backend Service ${be.name}`);
      const sp = svc.spec.ports.find((p) => p.name === be.port.name || p.port === be.port.number);
      assert.equal(sp.port, 80);
      const c = podSpec(gatewayWorkload(R[o])).containers[0];
      assert.equal(portNumber(c, sp.targetPort), 8888);
    }
  });

  it('base: replicas 2, topology spread, PDB, HPA on CPU, Redis with a password Secret', () => {
    const base = parseDocs(kustomize('deploy/k8s/base'));
    const d = findObj(base, 'Deployment', 'chatgw');
    assert.equal(d.spec.replicas, 2);
    assert.ok(podSpec(d).topologySpreadConstraints?.some((t) => t.topologyKey === 'kubernetes.io/hostname'));
    assert.ok(findObj(base, 'PodDisruptionBudget', 'chatgw'));
    const hpa = findObj(base, 'HorizontalPodAutoscaler', 'chatgw');
    assert.equal(hpa.spec.metrics[0].resource.name, 'cpu');
    const redis = findObj(base, 'Deployment', 'chatgw-redis') || findObj(base, 'StatefulSet', 'chatgw-redis');
    assert.ok(redis, 'Redis workload');
    assert.ok(findObj(base, 'Service', 'chatgw-redis'));
    // the password Secret is created once in the cluster, never rendered from a committed file
    assert.equal(findGenerated(base, 'Secret', 'chatgw-redis'), undefined, 'no rendered Redis Secret');
    const env = containerEnv(base, podSpec(d).containers[0]);
    assert.match(env.CHATGW_REDIS_URL, /^redis:\/\/chatgw-redis:6379/, 'no password in the URL or the environment');
    const pw = secretFileOf(base, podSpec(d), podSpec(d).containers[0], env.CHATGW_REDIS_PASSWORD_FILE);
    assert.equal(pw?.name, 'chatgw-redis', 'redis_password_file is inside the chatgw-redis Secret mount');
    assert.equal(pw.key, 'password', 'the key `kubectl create secret generic chatgw-redis --from-literal=password=...` writes');
    assert.equal(pw.mount.subPath, undefined);
    assert.ok(podSpec(redis).containers[0].args.includes('--requirepass'));
    assert.equal(findObj(base, 'Ingress', 'chatgw').metadata.annotations['cert-manager.io/cluster-issuer'], 'letsencrypt-prod');
  });

  it('dev: 1 replica, no Redis, no TLS, no HPA', () => {
    const d = findObj(R.dev, 'Deployment', 'chatgw');
    assert.equal(d.spec.replicas, 1);
    assert.ok(!R.dev.some((x) => /redis/.test(x.metadata.name)), 'no Redis objects');
    const env = containerEnv(R.dev, podSpec(d).containers[0]);
    assert.equal(env.CHATGW_REDIS_URL, undefined);
    assert.equal(env.CHATGW_REDIS_PASSWORD_FILE, undefined);
    assert.ok(!podSpec(d).volumes.some((v) => /^chatgw-redis/.test(v.secret?.secretName || '')), 'no Redis Secret volume');
    assert.equal(env.CHATGW_TLS_CERT, undefined);
    const ing = findObj(R.dev, 'Ingress', 'chatgw');
    assert.equal(ing.spec.tls, undefined);
    assert.equal(ing.metadata.annotations['cert-manager.io/cluster-issuer'], undefined);
    assert.equal(findObj(R.dev, 'HorizontalPodAutoscaler'), undefined);
    assert.ok(!R.dev.some((x) => x.kind === 'ClusterIssuer' || x.kind === 'Certificate'));
  });

  it('prod: Redis on, TLS through ClusterIssuer letsencrypt-prod (HTTP01), HPA owns the replicas', () => {
    const d = findObj(R.prod, 'Deployment', 'chatgw');
    assert.equal(d.spec.replicas, undefined, 'replicas left to the HPA');
    const hpa = findObj(R.prod, 'HorizontalPodAutoscaler', 'chatgw');
    assert.ok(hpa.spec.minReplicas >= 2);
    assert.equal(hpa.spec.scaleTargetRef.name, 'chatgw');
    assert.ok(findObj(R.prod, 'Deployment', 'chatgw-redis'));
    const env = containerEnv(R.prod, podSpec(d).containers[0]);
    assert.match(env.CHATGW_REDIS_URL, /chatgw-redis:6379/);
    assert.equal(secretFileOf(R.prod, podSpec(d), podSpec(d).containers[0], env.CHATGW_REDIS_PASSWORD_FILE)?.name, 'chatgw-redis');
    const ing = findObj(R.prod, 'Ingress', 'chatgw');
    assert.equal(ing.metadata.annotations['cert-manager.io/cluster-issuer'], 'letsencrypt-prod');
    assert.ok(ing.spec.tls?.[0]?.secretName);
    assert.deepEqual(ing.spec.tls[0].hosts, [ing.spec.rules[0].host]);
    const ci = findObj(R.prod, 'ClusterIssuer', 'letsencrypt-prod');
    assert.ok(ci, 'ClusterIssuer letsencrypt-prod');
    assert.match(ci.spec.acme.server, /acme-v02\.api\.letsencrypt\.org/);
    assert.ok(ci.spec.acme.email, 'email placeholder');
    assert.equal(ci.spec.acme.solvers[0].http01.ingress.ingressClassName, 'nginx');
  });

  it('budget: DaemonSet on hostPort 80 and 443, chatgw terminates TLS from a DNS01 Certificate mounted as a directory', () => {
    const o = R.budget;
    assert.equal(findObj(o, 'Deployment', 'chatgw'), undefined);
    assert.equal(findObj(o, 'Ingress'), undefined, 'no Ingress');
    assert.equal(findObj(o, 'HorizontalPodAutoscaler'), undefined);
    const ds = findObj(o, 'DaemonSet', 'chatgw');
    assert.ok(ds);
    const hostPorts = podSpec(ds).containers.flatMap((c) => (c.ports || []).filter((p) => p.hostPort).map((p) => p.hostPort)).sort();
    assert.deepEqual(hostPorts, [443, 80].sort());
    const c = podSpec(ds).containers.find((x) => x.name === 'chatgw');
    const tlsPort = c.ports.find((p) => p.hostPort === 443);
    const env = containerEnv(o, c);
    assert.equal(listenPort(env.CHATGW_LISTEN), tlsPort.containerPort);
    for (const p of ['startupProbe', 'readinessProbe']) assert.equal(c[p].httpGet.scheme, 'HTTPS', `${p} over TLS`);
    // liveness on the admin listener (plain HTTP), which max_connections does not hold
    assert.equal(c.livenessProbe.httpGet.port, 'metrics', 'livenessProbe on the admin port');
    assert.notEqual(c.livenessProbe.httpGet.scheme, 'HTTPS');
    const cert = findObj(o, 'Certificate', 'chatgw-tls');
    assert.ok(cert);
    const vol = podSpec(ds).volumes.find((v) => v.secret?.secretName === cert.spec.secretName);
    assert.ok(vol, 'the Certificate Secret is a volume');
    const mount = c.volumeMounts.find((m) => m.name === vol.name);
    assert.equal(mount.subPath, undefined, 'TLS Secret mounted as a directory (rotation reloads live)');
    assert.equal(env.CHATGW_TLS_CERT, `${mount.mountPath}/tls.crt`);
    assert.equal(env.CHATGW_TLS_KEY, `${mount.mountPath}/tls.key`);
    const ci = findObj(o, 'ClusterIssuer', cert.spec.issuerRef.name);
    assert.ok(ci, `ClusterIssuer ${cert.spec.issuerRef.name}`);
    assert.ok(ci.spec.acme.solvers[0].dns01.cloudflare.apiTokenSecretRef, 'DNS01 on Cloudflare');
    assert.ok(findObj(o, 'Deployment', 'chatgw-redis'), 'Redis joins the DaemonSet pods');
  });
});

describe('Dockerfile', () => {
  const text = fs.readFileSync(path.join(SRC, 'Dockerfile'), 'utf8');
  it('dockerfile-utils finds nothing', () => {
    const { validate } = require('dockerfile-utils');
    const diags = validate(text);
    assert.deepEqual(diags.map((d) => `${d.range.start.line + 1}: ${d.message}`), []);
  });
  it('dockerfilelint finds nothing', () => {
    const dfl = require('dockerfilelint');
    const items = dfl.run(SRC, text);
    assert.deepEqual(items.map((i) => `${i.line}: ${i.rule} ${i.title}`), []);
  });
  it('multi-stage bookworm-slim, uid 10001, EXPOSE 8888, policy and web paths, ENTRYPOINT chatgw', () => {
    const froms = [...text.matchAll(/^FROM\s+(\S+)/gm)].map((m) => m[1]);
    assert.ok(froms.length >= 2, 'multi-stage');
    for (const f of froms) assert.match(f, /debian:bookworm-slim$/);
    assert.match(text, /^USER 10001(:10001)?$/m);
    assert.match(text, /^EXPOSE 8888$/m);
    assert.match(text, /^ENTRYPOINT \["chatgw"\]$/m);
    assert.match(text, /\/etc\/chatgw\/scripts/);
    assert.match(text, /\/usr\/share\/chatgw\/web/);
    assert.match(text, /cmake -S \. -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo/, 'the same configure as make build');
    const runtime = text.slice(text.lastIndexOf('FROM '));
    assert.doesNotMatch(runtime, /-dev\b/, 'no -dev packages in the runtime stage');
  });
  it('.dockerignore keeps the build tree, git, node_modules and tests out of the context', () => {
    const di = fs.readFileSync(path.join(SRC, '.dockerignore'), 'utf8');
    const lines = di.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
    // allow-list form: everything excluded, then the build inputs re-included
    assert.equal(lines[0], '*');
    for (const need of ['!CMakeLists.txt', '!src/', '!scripts/*.lua', '!web/']) assert.ok(lines.includes(need), need);
    assert.ok(!lines.some((l) => /^!(build|\.git|tests|node_modules)/.test(l)));
  });
});

describe('workflows', () => {
  const load = (f) => YAML.parse(fs.readFileSync(path.join(SRC, '.github', 'workflows', f), 'utf8'));
  it('ci.yml runs make test on push and pull_request', () => {
    const ci = load('ci.yml');
    assert.ok('push' in ci.on && 'pull_request' in ci.on);
    const steps = Object.values(ci.jobs).flatMap((j) => j.steps || []);
    assert.ok(steps.some((s) => /^\s*make test\s*$/m.test(s.run || '')), 'a step runs make test');
  });
  it('deploy.yml: push to main, GHCR short-SHA tag, kustomize edit set image, apply prod, rollout status', () => {
    const dep = load('deploy.yml');
    assert.deepEqual(dep.on.push.branches, ['main']);
    const text = fs.readFileSync(path.join(SRC, '.github', 'workflows', 'deploy.yml'), 'utf8');
    assert.match(text, /ghcr\.io\//);
    assert.match(text, /GITHUB_SHA::7|github\.sha/);
    assert.match(text, /kustomize edit set image "?chatgw=/);
    assert.match(text, /kubectl apply -k deploy\/k8s\/overlays\/prod/);
    assert.match(text, /kubectl -n chatgw rollout status deployment\/chatgw\b/);
    assert.match(text, /secrets\.KUBECONFIG/);
    assert.doesNotMatch(text, /aws|gcloud|azure|doctl|eksctl/i, 'nothing tied to one cloud');
    // the overlay the workflow edits really has an image entry named chatgw
    const k = YAML.parse(fs.readFileSync(path.join(SRC, 'deploy/k8s/overlays/prod/kustomization.yaml'), 'utf8'));
    assert.ok(k.images.some((i) => i.name === 'chatgw'));
  });
});
