// Pod Security, offline: every pod template of every rendered kustomization under deploy/ (the
// overlays, and any other root kustomization) passes the Pod Security level its Namespace
// enforces, and every Namespace warns and audits at restricted. The checker (podsecurity.mjs)
// is first held to synthetic pod specs, so that it is known to fail on a bad template.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { SRC, OVERLAYS, kustomize, parseDocs, renderOverlay, YAML } from './lib.mjs';
import { checkPodSpec, podTemplates, namespaceLevels, describeViolation } from './podsecurity.mjs';

// ---------------------------------------------------------------------------------------------
// the checker on synthetic pod specs

/** A pod spec that complies with restricted: chatgw's own shape, reduced. */
function goodSpec() {
  return {
    securityContext: { runAsNonRoot: true, runAsUser: 10001, seccompProfile: { type: 'RuntimeDefault' } },
    containers: [{
      name: 'app',
      image: 'x',
      ports: [{ containerPort: 8888 }],
      securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] }, readOnlyRootFilesystem: true },
    }],
    volumes: [{ name: 'c', configMap: { name: 'c' } }, { name: 't', emptyDir: {} }, { name: 's', secret: { secretName: 's' } }],
  };
}

const rulesOf = (spec, level, md) => checkPodSpec(spec, level, md).map((v) => v.rule).sort();

// [what, mutation, the lowest level that refuses it, the rule]
const BAD = [
  ['hostPort', (s) => { s.containers[0].ports[0].hostPort = 443; }, 'baseline', 'hostPorts'],
  ['hostNetwork', (s) => { s.hostNetwork = true; }, 'baseline', 'hostNamespaces'],
  ['hostPID', (s) => { s.hostPID = true; }, 'baseline', 'hostNamespaces'],
  ['hostIPC', (s) => { s.hostIPC = true; }, 'baseline', 'hostNamespaces'],
  ['privileged container', (s) => { s.containers[0].securityContext.privileged = true; }, 'baseline', 'privileged'],
  ['privileged init container', (s) => { s.initContainers = [{ name: 'init', image: 'x', securityContext: { ...goodSpec().containers[0].securityContext, privileged: true } }]; }, 'baseline', 'privileged'],
  ['capability SYS_ADMIN', (s) => { s.containers[0].securityContext.capabilities.add = ['SYS_ADMIN']; }, 'baseline', 'capabilities'],
  ['hostPath volume', (s) => { s.volumes.push({ name: 'h', hostPath: { path: '/var/run' } }); }, 'baseline', 'hostPathVolumes'],
  ['seccomp Unconfined', (s) => { s.containers[0].securityContext.seccompProfile = { type: 'Unconfined' }; }, 'baseline', 'seccompProfile'],
  ['procMount Unmasked', (s) => { s.containers[0].securityContext.procMount = 'Unmasked'; }, 'baseline', 'procMount'],
  ['unsafe sysctl', (s) => { s.securityContext.sysctls = [{ name: 'kernel.msgmax', value: '1' }]; }, 'baseline', 'sysctls'],
  ['SELinux user', (s) => { s.securityContext.seLinuxOptions = { user: 'system_u' }; }, 'baseline', 'seLinuxOptions'],
  ['AppArmor unconfined', (s) => { s.containers[0].securityContext.appArmorProfile = { type: 'Unconfined' }; }, 'baseline', 'appArmorProfile'],
  ['capability CHOWN added', (s) => { s.containers[0].securityContext.capabilities.add = ['CHOWN']; }, 'restricted', 'capabilities'],
  ['capabilities not dropped', (s) => { delete s.containers[0].securityContext.capabilities; }, 'restricted', 'capabilities'],
  ['privilege escalation unset', (s) => { delete s.containers[0].securityContext.allowPrivilegeEscalation; }, 'restricted', 'allowPrivilegeEscalation'],
  ['privilege escalation true', (s) => { s.containers[0].securityContext.allowPrivilegeEscalation = true; }, 'restricted', 'allowPrivilegeEscalation'],
  ['runAsNonRoot unset', (s) => { delete s.securityContext.runAsNonRoot; }, 'restricted', 'runAsNonRoot'],
  ['runAsNonRoot false on a container', (s) => { s.containers[0].securityContext.runAsNonRoot = false; }, 'restricted', 'runAsNonRoot'],
  ['runAsUser 0', (s) => { s.containers[0].securityContext.runAsUser = 0; }, 'restricted', 'runAsUser'],
  ['seccomp unset', (s) => { delete s.securityContext.seccompProfile; }, 'restricted', 'seccompProfile'],
  ['nfs volume', (s) => { s.volumes.push({ name: 'n', nfs: { server: 'x', path: '/' } }); }, 'restricted', 'volumeTypes'],
];

describe('the Pod Security checker', () => {
  it('a restricted-compliant pod spec passes every level', () => {
    for (const level of ['privileged', 'baseline', 'restricted']) assert.deepEqual(rulesOf(goodSpec(), level), [], level);
  });
  it('NET_BIND_SERVICE and a per-container seccomp/runAsNonRoot pass restricted', () => {
    const s = goodSpec();
    s.containers[0].securityContext.capabilities.add = ['NET_BIND_SERVICE'];
    delete s.securityContext.seccompProfile;
    delete s.securityContext.runAsNonRoot;
    Object.assign(s.containers[0].securityContext, { seccompProfile: { type: 'Localhost', localhostProfile: 'p.json' }, runAsNonRoot: true });
    assert.deepEqual(rulesOf(s, 'restricted'), []);
  });
  for (const [what, mutate, lowest, rule] of BAD) {
    it(`${what}: refused by ${lowest} (${rule})${lowest === 'restricted' ? ', allowed by baseline' : ''}, allowed by privileged`, () => {
      const s = goodSpec();
      mutate(s);
      assert.ok(rulesOf(s, 'restricted').includes(rule), `restricted: ${rule} in ${rulesOf(s, 'restricted')}`);
      if (lowest === 'baseline') assert.ok(rulesOf(s, 'baseline').includes(rule), `baseline: ${rule} in ${rulesOf(s, 'baseline')}`);
      else assert.deepEqual(rulesOf(s, 'baseline'), []);
      assert.deepEqual(rulesOf(s, 'privileged'), []);
    });
  }
  it('an AppArmor annotation other than runtime/default or localhost/* is refused by baseline', () => {
    const md = { annotations: { 'container.apparmor.security.beta.kubernetes.io/app': 'unconfined' } };
    assert.deepEqual(rulesOf(goodSpec(), 'baseline', md), ['appArmorProfile']);
    assert.deepEqual(rulesOf(goodSpec(), 'baseline', { annotations: { 'container.apparmor.security.beta.kubernetes.io/app': 'runtime/default' } }), []);
  });
  it('a violation names the object, the container and the rule', () => {
    const s = goodSpec();
    s.containers[0].ports[0].hostPort = 80;
    const [x] = checkPodSpec(s, 'restricted');
    assert.equal(describeViolation('DaemonSet chatgw/web', { path: 'spec.template.spec' }, x),
      'DaemonSet chatgw/web spec.template.spec containers[app]: hostPorts (baseline): hostPort 80 (containerPort 8888)');
  });
  it('finds the pod template of every workload kind', () => {
    const tpl = { metadata: { labels: { a: 'b' } }, spec: goodSpec() };
    const cases = [
      [{ kind: 'Deployment', spec: { template: tpl } }, 'spec.template.spec'],
      [{ kind: 'DaemonSet', spec: { template: tpl } }, 'spec.template.spec'],
      [{ kind: 'StatefulSet', spec: { template: tpl } }, 'spec.template.spec'],
      [{ kind: 'ReplicaSet', spec: { template: tpl } }, 'spec.template.spec'],
      [{ kind: 'Job', spec: { template: tpl } }, 'spec.template.spec'],
      [{ kind: 'CronJob', spec: { jobTemplate: { spec: { template: tpl } } } }, 'spec.jobTemplate.spec.template.spec'],
      [{ kind: 'Pod', spec: goodSpec() }, 'spec'],
      [{ kind: 'Rollout', apiVersion: 'argoproj.io/v1alpha1', spec: { template: tpl } }, 'spec.template.spec'],
    ];
    for (const [o, p] of cases) assert.deepEqual(podTemplates(o).map((t) => t.path), [p], o.kind);
    assert.deepEqual(podTemplates({ kind: 'ConfigMap', data: { x: 'containers: []' } }), []);
  });
});

// ---------------------------------------------------------------------------------------------
// the rendered manifests

/** Every root kustomization under deploy/ (kind Kustomization, not Component), as repo paths. */
function rootKustomizations() {
  const out = [];
  const walk = (dir) => {
    for (const e of fs.readdirSync(path.join(SRC, dir), { withFileTypes: true })) {
      if (e.isDirectory()) walk(path.join(dir, e.name));
      else if (/^kustomization\.ya?ml$|^Kustomization$/.test(e.name)) {
        const k = YAML.parse(fs.readFileSync(path.join(SRC, dir, e.name), 'utf8')) || {};
        if ((k.kind || 'Kustomization') === 'Kustomization') out.push(dir);
      }
    }
  };
  walk('deploy');
  return out.sort();
}

const overlayDirs = new Set(OVERLAYS.map((o) => path.join('deploy', 'k8s', 'overlays', o)));
const render = (dir) => {
  const o = [...overlayDirs].includes(dir) ? path.basename(dir) : null;
  return o ? renderOverlay(o) : parseDocs(kustomize(dir));
};

/** The violations of every pod template in a rendered set against its namespace's enforce level. */
function enforceViolations(objs) {
  const namespaces = new Map(objs.filter((o) => o.kind === 'Namespace').map((o) => [o.metadata.name, namespaceLevels(o)]));
  const errors = [];
  let checked = 0;
  for (const o of objs) {
    const templates = podTemplates(o);
    if (!templates.length) continue;
    const ns = o.metadata?.namespace || 'default';
    const ref = `${o.kind} ${ns}/${o.metadata?.name}`;
    const levels = namespaces.get(ns);
    if (!levels?.enforce) {
      errors.push(`${ref}: its namespace ${ns} is not rendered with a pod-security.kubernetes.io/enforce label`);
      continue;
    }
    for (const t of templates) {
      checked++;
      for (const x of checkPodSpec(t.spec, levels.enforce, t.metadata)) errors.push(describeViolation(ref, t, x));
    }
  }
  return { errors, checked };
}

describe('rendered pod templates pass their namespace\'s Pod Security level', () => {
  const dirs = rootKustomizations();
  it('finds the overlays among the root kustomizations', () => {
    for (const d of overlayDirs) assert.ok(dirs.includes(d), `${d} in ${dirs}`);
  });
  for (const dir of dirs) {
    it(`${dir}: every pod template passes its namespace's enforce level`, () => {
      const objs = render(dir);
      const { errors } = enforceViolations(objs);
      assert.deepEqual(errors, []);
    });
    it(`${dir}: every Namespace enforces a level and warns and audits at restricted`, () => {
      for (const ns of render(dir).filter((o) => o.kind === 'Namespace')) {
        const l = namespaceLevels(ns);
        assert.ok(['privileged', 'baseline', 'restricted'].includes(l.enforce), `${ns.metadata.name}: enforce ${l.enforce}`);
        assert.equal(l.warn, 'restricted', `${ns.metadata.name}: warn`);
        assert.equal(l.audit, 'restricted', `${ns.metadata.name}: audit`);
      }
    });
  }

  for (const o of OVERLAYS) {
    it(`overlays/${o}: has pod templates to check, and enforces ${o === 'budget' ? 'privileged (hostPorts)' : 'restricted'}`, () => {
      const objs = renderOverlay(o);
      assert.ok(enforceViolations(objs).checked >= 1);
      const ns = objs.find((x) => x.kind === 'Namespace' && x.metadata.name === 'chatgw');
      assert.equal(namespaceLevels(ns).enforce, o === 'budget' ? 'privileged' : 'restricted');
    });
  }

  it('budget: the hostPorts are its only departure from restricted, and they need privileged (baseline refuses them)', () => {
    const objs = renderOverlay('budget');
    const found = [];
    for (const obj of objs) {
      for (const t of podTemplates(obj)) {
        for (const x of checkPodSpec(t.spec, 'restricted', t.metadata)) found.push(`${obj.kind}/${obj.metadata.name} ${x.where} ${x.rule} ${x.detail}`);
      }
    }
    assert.deepEqual(found.sort(), [
      'DaemonSet/chatgw containers[chatgw] hostPorts hostPort 443 (containerPort 8443)',
      'DaemonSet/chatgw containers[http] hostPorts hostPort 80 (containerPort 8080)',
    ]);
    const ds = objs.find((x) => x.kind === 'DaemonSet' && x.metadata.name === 'chatgw');
    assert.deepEqual(checkPodSpec(ds.spec.template.spec, 'baseline').map((x) => x.rule), ['hostPorts', 'hostPorts']);
  });

  it('a bad template in a rendered set fails with the object and the rule', () => {
    const objs = structuredClone(renderOverlay('prod'));
    const dep = objs.find((x) => x.kind === 'Deployment' && x.metadata.name === 'chatgw');
    dep.spec.template.spec.containers[0].securityContext.allowPrivilegeEscalation = true;
    dep.spec.template.spec.hostNetwork = true;
    const { errors } = enforceViolations(objs);
    assert.ok(errors.some((e) => e.startsWith('Deployment chatgw/chatgw spec.template.spec containers[chatgw]: allowPrivilegeEscalation (restricted)')), errors.join('\n'));
    assert.ok(errors.some((e) => e.startsWith('Deployment chatgw/chatgw spec.template.spec spec: hostNamespaces (baseline): hostNetwork: true')), errors.join('\n'));
    const orphan = { apiVersion: 'batch/v1', kind: 'Job', metadata: { name: 'j', namespace: 'elsewhere' }, spec: { template: { spec: goodSpec() } } };
    assert.deepEqual(enforceViolations([orphan]).errors, ['Job elsewhere/j: its namespace elsewhere is not rendered with a pod-security.kubernetes.io/enforce label']);
  });
});
