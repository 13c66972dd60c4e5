// docs/deploy-kubernetes.md, followed as a newcomer would, checked offline (issue 17): every shell
// block and every inline `kubectl ...` is tokenised, and each command is checked as far as it can
// be without a cluster:
//   - `kubectl apply -k DIR`, `kubectl kustomize DIR`, `kustomize build DIR` render (kubectl
//     kustomize), and every namespaced object of deploy/k8s lands in `chatgw`;
//   - `kubectl create ...` runs with --dry-run=client against no cluster; `kubectl patch
//     serviceaccount` runs with --local on a ServiceAccount; heredoc and ```yaml manifests parse
//     and validate against their schemas; the `components:` snippets render with their overlay;
//   - kubectl commands on chatgw's objects name `-n chatgw`, and the objects, label selectors and
//     namespaces they name exist in the rendered overlays;
//   - every repository path the page names exists, and every in-page anchor resolves;
//   - the sizing section's figures are the manifests' (memory limit and request), chatgw's
//     defaults (max_connections, write_queue_bytes, ...) and BENCHMARKS.md's, its arithmetic holds,
//     and every CHATGW_* key it names is a real config key;
//   - the ghcr-pull-secret component renders with every overlay, gives the gateway workload (and
//     nothing else) the pull secret the page creates, and validates.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SRC, BIN, OVERLAYS, run, which, kustomize, parseDocs, renderOverlay, YAML } from './lib.mjs';

const DOC = 'docs/deploy-kubernetes.md';
const doc = fs.readFileSync(path.join(SRC, DOC), 'utf8');
const read = (p) => fs.readFileSync(path.join(SRC, p), 'utf8');
const COMPONENTS = path.join(SRC, 'deploy', 'k8s', 'components');
const kubectlBin = () => { const k = which('kubectl'); assert.ok(k, 'kubectl is not installed'); return k; };
// no cluster, ever: a kubeconfig that points nowhere
const OFFLINE_ENV = { KUBECONFIG: path.join(os.tmpdir(), `chatgw-docs-no-cluster-${process.pid}`) };

// ---------------------------------------------------------------------------------------------
// extraction

/** Fenced code blocks: [{lang, body, line}]. */
function codeBlocks(md) {
  const out = [];
  const lines = md.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const m = /^(\s*)```(\w*)\s*$/.exec(lines[i]);
    if (!m) continue;
    const indent = m[1].length;
    const body = [];
    let j = i + 1;
    for (; j < lines.length && !/^\s*```\s*$/.test(lines[j]); j++) body.push(lines[j].slice(Math.min(indent, lines[j].search(/\S|$/))));
    out.push({ lang: m[2], body: body.join('\n'), line: i + 1 });
    i = j;
  }
  return out;
}

/** The page without its fenced blocks (for inline code and links). */
function prose(md) {
  return md.replace(/^\s*```\w*\s*\n[\s\S]*?^\s*```\s*$/gm, '');
}

/**
 * Splits shell text into commands: [{argv, heredoc, text}]. Handles '...' and "..." quoting,
 * $(...) (kept as one token, balanced), backslash-newline, comments, heredocs (<<'X' ... X), and
 * the separators | && || ; &.
 */
function shellCommands(text) {
  const cmds = [];
  const lines = text.replace(/\\\n/g, ' ').split('\n');
  for (let li = 0; li < lines.length; li++) {
    const line = lines[li];
    let cur = []; let tok = null; let i = 0; let heredocTag = null;
    const start = [];
    const push = () => { if (tok !== null) { cur.push(tok); tok = null; } };
    const end = () => { push(); if (cur.length) { start.push(cur); } cur = []; };
    while (i < line.length) {
      const c = line[i];
      if (c === "'") { const j = line.indexOf("'", i + 1); assert.ok(j > 0, `unterminated ' in: ${line}`); tok = (tok ?? '') + line.slice(i + 1, j); i = j + 1; continue; }
      if (c === '"') {
        let j = i + 1; let v = '';
        while (j < line.length && line[j] !== '"') {
          if (line[j] === '$' && line[j + 1] === '(') { const k = closeParen(line, j + 1); v += line.slice(j, k + 1); j = k + 1; continue; }
          if (line[j] === '\\') { v += line[j + 1]; j += 2; continue; }
          v += line[j++];
        }
        assert.ok(j < line.length, `unterminated " in: ${line}`);
        tok = (tok ?? '') + v; i = j + 1; continue;
      }
      if (c === '$' && line[i + 1] === '(') { const k = closeParen(line, i + 1); tok = (tok ?? '') + line.slice(i, k + 1); i = k + 1; continue; }
      if (c === '#' && tok === null) break;
      if (c === ' ' || c === '\t') { push(); i++; continue; }
      if (line.startsWith('<<', i)) {
        const m = /^<<-?\s*'?(\w+)'?/.exec(line.slice(i));
        heredocTag = m[1]; push(); i += m[0].length; continue;
      }
      if (line.startsWith('&&', i) || line.startsWith('||', i)) { end(); i += 2; continue; }
      if (c === '|' || c === ';' || c === '&') { end(); i++; continue; }
      tok = (tok ?? '') + c; i++;
    }
    end();
    let heredoc = null;
    if (heredocTag) {
      const body = [];
      for (li++; li < lines.length && lines[li].trim() !== heredocTag; li++) body.push(lines[li]);
      heredoc = body.join('\n');
    }
    start.forEach((argv, k) => cmds.push({ argv, heredoc: k === 0 ? heredoc : null, text: line.trim() }));
  }
  return cmds;
}

function closeParen(s, open) {
  let depth = 0;
  for (let i = open; i < s.length; i++) {
    if (s[i] === '(') depth++;
    else if (s[i] === ')' && --depth === 0) return i;
  }
  throw new Error(`unbalanced $( in: ${s}`);
}

const blocks = codeBlocks(doc);
const shBlocks = blocks.filter((b) => b.lang === 'sh' || b.lang === 'bash');
const inline = [...prose(doc).matchAll(/`(kubectl [^`]+)`/g)].map((m) => m[1].replace(/\s*\n\s*/g, ' '));
const commands = [
  ...shBlocks.flatMap((b) => shellCommands(b.body).map((c) => ({ ...c, where: `line ${b.line}` }))),
  ...inline.flatMap((t) => shellCommands(t).map((c) => ({ ...c, where: 'inline' }))),
];
const kubectlCmds = commands.filter((c) => c.argv[0] === 'kubectl');

/** -n/--namespace value of a kubectl argv, or null. */
function namespaceOf(argv) {
  for (let i = 1; i < argv.length; i++) {
    if (argv[i] === '-n' || argv[i] === '--namespace') return argv[i + 1];
    const m = /^(?:--namespace=|-n=?)(.+)$/.exec(argv[i]);
    if (m && argv[i] !== '-n') return m[1];
  }
  return null;
}
/** argv without global flags (-n X, -l X, -o X, -f X, -p X, flags) = [verb, ...operands]. */
function operands(argv) {
  const out = [];
  const withValue = new Set(['-n', '--namespace', '-l', '--selector', '-o', '-f', '-p', '-k', '--type', '--max-log-requests', '--from-literal', '--docker-server', '--docker-username', '--docker-password']);
  for (let i = 1; i < argv.length; i++) {
    if (withValue.has(argv[i])) { i++; continue; }
    if (argv[i].startsWith('-')) continue;
    out.push(argv[i]);
  }
  return out;
}
const placeholder = (s) => s.replace(/\$\([^]*\)/g, 'placeholder').replace(/\$\{?\w+\}?/g, 'placeholder');

// ---------------------------------------------------------------------------------------------
// what the overlays render

const renderedWith = new Map();
/** Renders an overlay plus components from a temporary kustomization (as an operator adds them). */
function renderWith(overlayDir, components) {
  const key = `${overlayDir}+${components.join('+')}`;
  if (renderedWith.has(key)) return renderedWith.get(key);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-docs-'));
  try {
    const rel = (p) => path.relative(dir, p);
    fs.writeFileSync(path.join(dir, 'kustomization.yaml'), YAML.stringify({
      apiVersion: 'kustomize.config.k8s.io/v1beta1',
      kind: 'Kustomization',
      resources: [rel(path.join(SRC, overlayDir))],
      components: components.map((c) => rel(path.resolve(SRC, c))),
    }));
    const r = run(kubectlBin(), ['kustomize', dir], { timeoutMs: 60000 });
    assert.equal(r.code, 0, `kubectl kustomize ${key}:\n${r.stderr}`);
    const objs = parseDocs(r.stdout);
    renderedWith.set(key, objs);
    return objs;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function allRendered() {
  const objs = [];
  for (const o of [...OVERLAYS, 'prod-gateway']) objs.push(...renderOverlay(o));
  objs.push(...renderWith('deploy/k8s/overlays/prod', ['deploy/k8s/components/keda-connections', 'deploy/k8s/components/prometheus-operator']));
  return objs;
}

async function validateObject(o) {
  const [group, version] = o.apiVersion.includes('/') ? o.apiVersion.split('/') : [null, o.apiVersion];
  let spec;
  if (group === null) spec = `kubernetes-models/${version}/${o.kind}`;
  else if (group.endsWith('cert-manager.io')) spec = `@kubernetes-models/cert-manager/${group}/${version}/${o.kind}`;
  else if (group === 'gateway.networking.k8s.io') spec = `@kubernetes-models/gateway-api/${group}/${version}/${o.kind}`;
  else if (group === 'keda.sh') spec = `@kubernetes-models/keda/${group}/${version}/${o.kind}`;
  else if (group === 'monitoring.coreos.com') spec = `@kubernetes-models/prometheus-operator/${group}/${version}/${o.kind}`;
  else spec = `kubernetes-models/${group}/${version}/${o.kind}`;
  const mod = await import(spec);
  assert.equal(typeof mod[o.kind], 'function', `no schema for ${o.apiVersion}/${o.kind}`);
  new mod[o.kind](o).validate();
}

// ---------------------------------------------------------------------------------------------

describe('deploy-kubernetes.md: the commands', () => {
  it('the page has the shell blocks and commands this test reads', () => {
    assert.ok(shBlocks.length >= 10, `${shBlocks.length} sh blocks`);
    assert.ok(kubectlCmds.length >= 30, `${kubectlCmds.length} kubectl commands`);
  });

  it('every kustomization it applies or renders renders, with chatgw objects in chatgw', () => {
    const dirs = new Set();
    for (const c of commands) {
      const a = c.argv;
      if (a[0] === 'kubectl' && a[1] === 'apply') { const i = a.indexOf('-k'); if (i > 0 && a[i + 1]) dirs.add(a[i + 1]); }
      if (a[0] === 'kubectl' && a[1] === 'kustomize' && a[2]) dirs.add(a[2]);
      if (a[0] === 'kustomize' && a[1] === 'build' && a[2]) dirs.add(a[2]);
    }
    for (const d of ['deploy/k8s/overlays/prod', 'deploy/k8s/overlays/dev', 'deploy/k8s/overlays/budget', 'deploy/k8s/overlays/prod-gateway', 'deploy/monitoring']) {
      assert.ok(dirs.has(d), `the page applies or renders ${d}`);
    }
    for (const d of dirs) {
      assert.ok(fs.existsSync(path.join(SRC, d, 'kustomization.yaml')), `${d} is a kustomization`);
      const objs = parseDocs(kustomize(d));
      assert.ok(objs.length > 0, `${d} renders objects`);
      const want = d.startsWith('deploy/k8s/') ? 'chatgw' : 'monitoring';
      for (const o of objs) {
        if (['Namespace', 'ClusterIssuer', 'ClusterRole', 'ClusterRoleBinding', 'GatewayClass'].includes(o.kind)) continue;
        assert.equal(o.metadata?.namespace, want, `${d}: ${o.kind}/${o.metadata?.name} in ${want}`);
      }
    }
  });

  it('`kubectl create ...` commands run with --dry-run=client, against no cluster', () => {
    const creates = kubectlCmds.filter((c) => operands(c.argv)[0] === 'create' && operands(c.argv).length >= 2); // not prose's `kubectl create`
    assert.ok(creates.length >= 5, `${creates.length} create commands`);
    const kinds = [];
    for (const c of creates) {
      const argv = c.argv.slice(1).map(placeholder).filter((a) => !a.startsWith('--dry-run') && a !== '-o' && a !== 'yaml');
      const r = run(kubectlBin(), [...argv, '--dry-run=client', '-o', 'json'], { env: OFFLINE_ENV, timeoutMs: 30000 });
      assert.equal(r.code, 0, `${c.where}: ${c.text}\n${r.stderr}`);
      const o = JSON.parse(r.stdout);
      kinds.push(`${o.kind}/${o.metadata.name}`);
      if (/^(chatgw|ghcr-pull)/.test(o.metadata.name) && o.kind !== 'Namespace') assert.equal(o.metadata.namespace, 'chatgw', `${c.text}: in chatgw`);
      else if (o.kind !== 'Namespace') assert.ok(['cert-manager', 'monitoring'].includes(o.metadata.namespace), `${c.text}: a namespace`);
      if (o.kind === 'Secret' && o.type === 'kubernetes.io/dockerconfigjson') {
        const cfg = JSON.parse(Buffer.from(o.data['.dockerconfigjson'], 'base64').toString());
        assert.deepEqual(Object.keys(cfg.auths), ['ghcr.io'], 'the pull secret is for ghcr.io');
      }
    }
    for (const k of ['Namespace/chatgw', 'Secret/chatgw-redis', 'Secret/ghcr-pull']) assert.ok(kinds.includes(k), `the page creates ${k} (${kinds})`);
  });

  it('`kubectl patch serviceaccount` applies to a ServiceAccount (--local) and names the pull secret', () => {
    const patches = kubectlCmds.filter((c) => operands(c.argv)[0] === 'patch');
    assert.ok(patches.length >= 1, 'the page patches the ServiceAccount');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-docs-sa-'));
    try {
      for (const c of patches) {
        const ops = operands(c.argv);
        assert.deepEqual(ops.slice(1), ['serviceaccount', 'default'], c.text);
        assert.equal(namespaceOf(c.argv), 'chatgw', c.text);
        const f = path.join(dir, 'sa.json');
        fs.writeFileSync(f, JSON.stringify({ apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'default', namespace: 'chatgw' } }));
        const p = c.argv[c.argv.indexOf('-p') + 1];
        const r = run(kubectlBin(), ['patch', '--local', '-f', f, '-p', p, '-o', 'json'], { env: OFFLINE_ENV, timeoutMs: 30000 });
        assert.equal(r.code, 0, `${c.text}\n${r.stderr}`);
        assert.deepEqual(JSON.parse(r.stdout).imagePullSecrets, [{ name: 'ghcr-pull' }]);
      }
    } finally { fs.rmSync(dir, { recursive: true, force: true }); }
  });

  it('kubectl commands on chatgw objects name -n chatgw; other namespaces are real ones', () => {
    const clusterScoped = /^(apply|kustomize|version|config|api-resources)\b|^(get|top|describe) (nodes?|apiservices?|clusterissuers?|gatewayclass(es)?)\b|^create namespace\b/;
    const known = new Set(['chatgw', 'ingress-nginx', 'cert-manager', 'kube-system', 'monitoring', 'keda', 'envoy-gateway-system']);
    const bad = [];
    for (const c of kubectlCmds) {
      const ops = operands(c.argv);
      // prose mentions of a verb without a target, like `kubectl rollout status`
      if ((ops.length < 2 && !['logs', 'top', 'get'].includes(ops[0])) || (ops[0] === 'rollout' && ops.length < 3)) continue;
      const ns = namespaceOf(c.argv);
      const onChatgw = c.argv.some((a) => /(^|\/| )chatgw(-redis|-policy|-config|-tls)?$|app\.kubernetes\.io\/(name|component)=|^ghcr-pull$/.test(a));
      if (ns !== null) {
        if (!known.has(ns)) bad.push(`${c.where}: unknown namespace ${ns}: ${c.text}`);
        if (onChatgw && ns !== 'chatgw') bad.push(`${c.where}: chatgw object outside -n chatgw: ${c.text}`);
        continue;
      }
      if (clusterScoped.test(ops.join(' '))) continue;
      bad.push(`${c.where}: no -n: ${c.text}`);
    }
    assert.deepEqual(bad, []);
  });

  it('the objects and label selectors the kubectl commands name exist in the rendered overlays', () => {
    const objs = allRendered().filter((o) => o.metadata?.namespace === 'chatgw');
    const KIND = {
      deployment: 'Deployment', deploy: 'Deployment', daemonset: 'DaemonSet', ds: 'DaemonSet', svc: 'Service', service: 'Service',
      hpa: 'HorizontalPodAutoscaler', configmap: 'ConfigMap', cm: 'ConfigMap', scaledobject: 'ScaledObject', gateway: 'Gateway',
      certificate: 'Certificate', ingress: 'Ingress', pdb: 'PodDisruptionBudget',
    };
    const has = (kind, name) => objs.some((o) => o.kind === kind && o.metadata.name === name);
    let checked = 0;
    for (const c of kubectlCmds.filter((x) => namespaceOf(x.argv) === 'chatgw')) {
      const ops = operands(c.argv).slice(1);
      for (let i = 0; i < ops.length; i++) {
        const m = /^(\w+)\/([\w.-]+)$/.exec(ops[i]);
        if (m && KIND[m[1]]) { assert.ok(has(KIND[m[1]], m[2]), `${c.text}: ${ops[i]} is rendered`); checked++; continue; }
        if (KIND[ops[i]] && ops[i + 1] && /^[\w.-]+$/.test(ops[i + 1]) && !KIND[ops[i + 1]]) {
          assert.ok(has(KIND[ops[i]], ops[i + 1]), `${c.text}: ${ops[i]} ${ops[i + 1]} is rendered`); checked++; i++;
        }
      }
      const li = c.argv.findIndex((a) => a === '-l' || a === '--selector');
      if (li > 0) {
        const sel = Object.fromEntries(c.argv[li + 1].split(',').map((kv) => kv.split('=')));
        const hit = objs.some((o) => Object.entries(sel).every(([k, v]) => (o.metadata.labels || {})[k] === v));
        assert.ok(hit, `${c.text}: -l ${c.argv[li + 1]} selects a rendered object`);
        checked++;
      }
    }
    assert.ok(checked >= 15, `${checked} object references checked`);
  });

  it('helm installs name their namespace and their values files exist', () => {
    const helm = commands.filter((c) => c.argv[0] === 'helm');
    assert.ok(helm.length >= 4, `${helm.length} helm commands`);
    const releases = [];
    for (const c of helm) {
      assert.ok(['install', 'upgrade'].includes(c.argv[1]), c.text);
      assert.ok(c.argv.includes('--namespace') || c.argv.includes('-n'), `${c.text}: a namespace`);
      const f = c.argv.indexOf('-f');
      if (f > 0) assert.ok(fs.existsSync(path.join(SRC, c.argv[f + 1])), `${c.text}: ${c.argv[f + 1]} exists`);
      releases.push(c.argv[2] === '--install' ? c.argv[3] : c.argv[2]);
    }
    for (const r of ['ingress-nginx', 'cert-manager', 'metrics-server', 'keda']) assert.ok(releases.includes(r), `the page installs ${r} (${releases})`);
  });

  it('heredoc and ```yaml manifests parse and validate; components snippets render with their overlay', async () => {
    let manifests = 0; let snippets = 0;
    const yamls = [
      ...blocks.filter((b) => b.lang === 'yaml').map((b) => ({ body: b.body, where: `line ${b.line}` })),
      ...commands.filter((c) => c.heredoc).map((c) => ({ body: c.heredoc, where: c.text })),
    ];
    for (const y of yamls) {
      const docs = YAML.parseAllDocuments(y.body);
      for (const d of docs) assert.deepEqual(d.errors.map((e) => e.message), [], y.where);
      for (const o of docs.map((d) => d.toJS())) {
        if (o?.apiVersion && o?.kind) { await validateObject(o); manifests++; continue; }
        if (o?.components) {
          const m = /^#\s*(deploy\/k8s\/overlays\/[\w-]+)\/kustomization\.yaml/m.exec(y.body);
          assert.ok(m, `${y.where}: the snippet names the overlay it goes in`);
          const comps = o.components.map((c) => path.join(m[1], c));
          for (const c of comps) assert.ok(fs.existsSync(path.join(SRC, c, 'kustomization.yaml')), `${y.where}: ${c} exists`);
          assert.ok(renderWith(m[1], comps).length > 0);
          snippets++;
        }
      }
    }
    assert.ok(manifests >= 1 && snippets >= 2, `${manifests} manifests, ${snippets} component snippets`);
  });
});

describe('deploy-kubernetes.md: paths and links', () => {
  it('every repository path it names exists', () => {
    const text = doc.replace(/https?:\/\/\S+/g, '');
    const re = /(?<![\w./-])((?:\.\.\/)*(?:deploy|scripts|docs|tests|src|web|\.github|overlays|components)\/[\w./-]*[\w-]|Dockerfile|BENCHMARKS\.md)/g;
    const missing = [];
    let n = 0;
    for (const m of text.matchAll(re)) {
      const p = m[1].replace(/^(\.\.\/)+/, '');
      if (/<|\*/.test(text.slice(m.index + m[0].length, m.index + m[0].length + 1))) continue; // <hash>, *.lua
      if (/(port-forward|rollout restart|logs) $/.test(text.slice(Math.max(0, m.index - 20), m.index))) continue; // deploy/chatgw: a kubectl TYPE/NAME
      n++;
      if (![p, `deploy/k8s/${p}`, `docs/${p}`].some((q) => fs.existsSync(path.join(SRC, q)))) missing.push(p);
    }
    assert.ok(n >= 40, `${n} paths checked`);
    assert.deepEqual([...new Set(missing)], []);
  });

  it('every link to a file or an anchor of this page resolves', () => {
    const anchors = new Set();
    for (const m of doc.matchAll(/^#{1,6} (.+)$/gm)) {
      anchors.add(m[1].trim().toLowerCase().replace(/[^\w\- ]/g, '').replace(/ /g, '-'));
    }
    for (const m of prose(doc).matchAll(/\]\(([^)]+)\)/g)) {
      const [file, anchor] = m[1].split('#');
      if (/^https?:/.test(file)) continue;
      if (file) assert.ok(fs.existsSync(path.join(SRC, 'docs', file)), `link ${m[1]}`);
      else assert.ok(anchors.has(anchor), `anchor #${anchor} (have: ${[...anchors].join(' ')})`);
    }
  });
});

describe('deploy-kubernetes.md: add-ons, image pull, memory sizing', () => {
  const section = (title) => {
    const i = doc.indexOf(title);
    assert.ok(i >= 0, `section ${title}`);
    const rest = doc.slice(i + title.length);
    const level = title.indexOf(' ');
    const j = rest.search(new RegExp(`\\n#{2,${level}} `));
    return j < 0 ? rest : rest.slice(0, j);
  };

  it('metrics-server: installed with the add-ons, because the HPA scales on CPU; checked with kubectl top', () => {
    const hpa = YAML.parse(read('deploy/k8s/base/hpa.yaml'));
    const cpu = hpa.spec.metrics.find((m) => m.type === 'Resource' && m.resource.name === 'cpu');
    assert.ok(cpu, 'the base HPA scales on CPU: resource metrics, from metrics-server');
    const addons = section('## 1. The cluster add-ons');
    assert.match(addons, /helm upgrade --install metrics-server metrics-server/);
    assert.match(addons, new RegExp(`cpu: <unknown>/${cpu.resource.target.averageUtilization}%`));
    assert.match(addons, /kubectl top pods -n chatgw/);
    assert.match(addons, /kubectl get apiservice v1beta1\.metrics\.k8s\.io/);
  });

  it('GHCR: the image the workflow pushes, its visibility, and the pull secret the component references', () => {
    const wf = read('.github/workflows/deploy.yml');
    assert.match(wf, /ghcr\.io\/\$\{owner\}\/chatgw:/, 'the workflow pushes to ghcr.io/<owner>/chatgw');
    const img = section('## 2. The image');
    assert.match(img, /private/);
    assert.match(img, /read:packages/);
    assert.match(img, /deploy\/k8s\/components\/ghcr-pull-secret/);
    const comp = YAML.parse(read('deploy/k8s/components/ghcr-pull-secret/kustomization.yaml'));
    const secret = /name: (\S+)/.exec(comp.patches[0].patch)[1];
    assert.ok(kubectlCmds.some((c) => c.argv.includes('docker-registry') && c.argv.includes(secret)), `the page creates ${secret}`);
  });

  it('the ghcr-pull-secret component: the gateway workload of every overlay, nothing else; it validates', async () => {
    for (const o of [...OVERLAYS, 'prod-gateway']) {
      const plain = renderOverlay(o);
      const objs = renderWith(`deploy/k8s/overlays/${o}`, ['deploy/k8s/components/ghcr-pull-secret']);
      assert.equal(objs.length, plain.length, `${o}: the component adds no object`);
      const withSecret = objs.filter((x) => x.spec?.template?.spec?.imagePullSecrets);
      assert.deepEqual(withSecret.map((x) => `${x.kind}/${x.metadata.name}`), [`${o === 'budget' ? 'DaemonSet' : 'Deployment'}/chatgw`], o);
      assert.deepEqual(withSecret[0].spec.template.spec.imagePullSecrets, [{ name: 'ghcr-pull' }]);
      for (const x of objs) await validateObject(x);
    }
  });

  it('the sizing figures are the manifests\', chatgw\'s defaults and BENCHMARKS.md\'s, and the arithmetic holds', () => {
    const mem = section('### Memory: max_connections against the limit');
    const dep = YAML.parse(read('deploy/k8s/base/deployment.yaml'));
    const res = dep.spec.template.spec.containers.find((c) => c.name === 'chatgw').resources;
    assert.ok(mem.includes(`\`limits.memory: ${res.limits.memory}\``), `the limit quoted is ${res.limits.memory}`);
    assert.ok(mem.includes(`\`requests.memory: ${res.requests.memory}\``), `the request quoted is ${res.requests.memory}`);
    // every chatgw container of every overlay has a limit the page quotes, with its MB
    const mb = (mi) => Math.round(Number(/^(\d+)Mi$/.exec(mi)[1]) * 1048576 / 1e6);
    for (const o of OVERLAYS) {
      for (const w of renderOverlay(o).filter((x) => ['Deployment', 'DaemonSet'].includes(x.kind) && x.metadata.name === 'chatgw')) {
        for (const c of w.spec.template.spec.containers) {
          const lim = c.resources.limits.memory;
          assert.ok(mem.includes(`\`limits.memory: ${lim}\``), `${o}: ${c.name}: the page quotes its limit ${lim}`);
          assert.ok(mem.includes(`${lim} = ${mb(lim)} MB`) || mem.includes(`${lim}\` (${mb(lim)} MB)`), `${o}: ${c.name}: ${lim} = ${mb(lim)} MB`);
          if (c.name !== 'chatgw') assert.ok(mem.includes(`(\`${c.name}\` in \`overlays/${o}/`), `${o}: the page names the ${c.name} container`);
        }
      }
    }
    const limitBytes = Number(/^(\d+)Mi$/.exec(res.limits.memory)[1]) * 1048576;

    // chatgw's defaults, from its own --help, and no override in the base config
    const help = run(BIN, ['--help']);
    const defaults = {};
    for (const m of (help.stdout + help.stderr).matchAll(/--([\w-]+)\s.*\(default: ([^)]*)\)/g)) defaults[m[1].replace(/-/g, '_')] = m[2];
    const base = read('deploy/k8s/base/kustomization.yaml');
    const quoted = {
      max_connections: /`max_connections` \((\d+)\)/,
      write_queue_bytes: /`write_queue_bytes` \((\d+) MiB\)/,
      slow_grace_ms: /`slow_grace_ms` \((\d+) s\)/,
      max_message_bytes: /`max_message_bytes` \((\d+) MiB\)/,
    };
    const scale = { max_connections: 1, write_queue_bytes: 1048576, slow_grace_ms: 1000, max_message_bytes: 1048576 };
    for (const [k, re] of Object.entries(quoted)) {
      const m = re.exec(mem);
      assert.ok(m, `the page quotes ${k}`);
      assert.equal(Number(m[1]) * scale[k], Number(defaults[k]), `${k}: chatgw's default`);
      assert.ok(!base.includes(`CHATGW_${k.toUpperCase()}=`), `the base leaves ${k} at its default`);
    }
    // every CHATGW_* key named is a real key
    for (const m of mem.matchAll(/CHATGW_(\w+)/g)) assert.ok(m[1].toLowerCase() in defaults, `CHATGW_${m[1]} is a config key`);

    // the per-connection figures are BENCHMARKS.md's
    const bench = read('BENCHMARKS.md');
    assert.match(bench, /idle 19850 conns, RSS per connection \| KB \| 1\.16 \| [\d.]+ \| 1\.40 \|/, 'chatgw 1.16 KB, uWS.js 1.40 KB');
    assert.match(mem, /measured: 1\.16-1\.25 KB; uWS\.js 1\.40 KB/);
    assert.match(bench, /\| 1,247 \|/, '1.25 KB at 10k in the second round');

    // the worked example
    const conns = Number(defaults.max_connections);
    const idleMB = Math.round(conns * 1.4e3 / 1e6);
    assert.ok(mem.includes(`${conns} x 1.4 KB = ${idleMB} MB`), `${conns} x 1.4 KB = ${idleMB} MB`);
    const fixed = idleMB + 8;
    assert.ok(mem.includes(`${idleMB} + 8 = ${fixed} MB`));
    const queues = (limitBytes / 1e6 - fixed) / (Number(defaults.write_queue_bytes) / 1e6);
    const m = /about (\d+) slow consumers with full write queues/.exec(mem);
    assert.ok(m && Math.abs(Number(m[1]) - queues) / queues < 0.05, `about ${Math.round(queues)} full queues (page: ${m?.[1]})`);
    const deflateMB = Math.round(conns * 39e3 / 1e6);
    assert.ok(mem.includes(`${conns} x 39 KB = ${deflateMB} MB`));
    const left = (limitBytes / 1e6 - fixed - deflateMB) / (Number(defaults.write_queue_bytes) / 1e6);
    const m2 = /room for only about (\d+) full queues/.exec(mem);
    assert.ok(m2 && Math.abs(Number(m2[1]) - left) / left < 0.15, `about ${Math.round(left)} full queues with deflate (page: ${m2?.[1]})`);

    // the related thresholds the page tells you to move stay tied to max_connections
    assert.match(read('deploy/monitoring/alerts.yaml'), new RegExp(`alert: ChatgwNearMaxConnections\\n\\s+expr: [^\\n]*chatgw_connections_open\\) > ${conns * 0.8}\\n`));
  });
});
