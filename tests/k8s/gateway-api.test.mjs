// Gateway API instead of the Ingress (issue 17, item 4), checked offline: the prod-gateway
// overlay (prod + deploy/k8s/components/gateway-api) renders, every object validates against
// its schema (npm @kubernetes-models/gateway-api for Gateway and HTTPRoute, cert-manager's and
// the core models for the rest), and the wiring holds: TLS from cert-manager on the HTTPS
// listener, the HTTP01 challenge through the Gateway, WebSockets routed to the chatgw Service
// with no request timeout, the probes not reachable from outside, HTTP redirected to HTTPS,
// and the NetworkPolicy admitting the gateway's proxies instead of ingress-nginx.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { kustomize, parseDocs, renderOverlay, findObj } from './lib.mjs';

const OVERLAY = 'deploy/k8s/overlays/prod-gateway';
const objs = parseDocs(kustomize(OVERLAY));
const prod = renderOverlay('prod');
const GW_GROUP = 'gateway.networking.k8s.io';

async function modelClass(apiVersion, kind) {
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : [null, apiVersion];
  let spec;
  if (group === null) spec = `kubernetes-models/${version}/${kind}`;
  else if (group === GW_GROUP) spec = `@kubernetes-models/gateway-api/${group}/${version}/${kind}`;
  else if (group.endsWith('cert-manager.io')) spec = `@kubernetes-models/cert-manager/${group}/${version}/${kind}`;
  else spec = `kubernetes-models/${group}/${version}/${kind}`;
  const mod = await import(spec);
  assert.equal(typeof mod[kind], 'function', `no model for ${apiVersion}/${kind}`);
  return mod[kind];
}

/** The rule of an HTTPRoute that Gateway API precedence picks for a path, or undefined. */
function routeFor(route, p) {
  let best;
  let bestRank = -1;
  for (const rule of route.spec.rules) {
    for (const m of rule.matches || [{ path: { type: 'PathPrefix', value: '/' } }]) {
      const { type = 'PathPrefix', value = '/' } = m.path || {};
      let rank = -1;
      if (type === 'Exact' && p === value) rank = 1e6;
      if (type === 'PathPrefix') {
        const v = value.replace(/\/$/, '');
        if (p === v || p.startsWith(`${v}/`) || value === '/') rank = value.length;
      }
      if (rank > bestRank) { bestRank = rank; best = rule; }
    }
  }
  return best;
}

const gateway = findObj(objs, 'Gateway', 'chatgw');
const listener = (name) => gateway.spec.listeners.find((l) => l.name === name);
const routesOf = (section) => objs.filter((o) => o.kind === 'HTTPRoute'
  && o.spec.parentRefs.some((r) => r.name === gateway.metadata.name && (r.kind ?? 'Gateway') === 'Gateway' && r.sectionName === section));

describe('Gateway API component (overlay prod-gateway)', () => {
  it('every rendered object validates (gateway-api, cert-manager and core models)', async () => {
    const kinds = new Set(objs.map((o) => o.kind));
    for (const k of ['Gateway', 'HTTPRoute', 'ClusterIssuer', 'Deployment', 'Service']) assert.ok(kinds.has(k), k);
    for (const o of objs) {
      const Cls = await modelClass(o.apiVersion, o.kind);
      assert.doesNotThrow(() => new Cls(o).validate(), `${o.kind}/${o.metadata.name}`);
    }
  });

  it('the schema check can fail: a bad listener protocol and a bad path type are refused', async () => {
    const G = await modelClass(`${GW_GROUP}/v1`, 'Gateway');
    const bad = structuredClone(gateway);
    bad.spec.listeners[0].port = 70000;
    assert.throws(() => new G(bad).validate());
    const R = await modelClass(`${GW_GROUP}/v1`, 'HTTPRoute');
    const r = structuredClone(findObj(objs, 'HTTPRoute', 'chatgw'));
    r.spec.rules[0].matches[0].path.type = 'Glob';
    assert.throws(() => new R(r).validate());
  });

  it('replaces the Ingress and keeps the rest of prod unchanged', () => {
    assert.equal(findObj(objs, 'Ingress'), undefined, 'no Ingress');
    for (const [kind, name] of [['Deployment', 'chatgw'], ['Deployment', 'chatgw-redis'], ['Service', 'chatgw'],
      ['HorizontalPodAutoscaler', 'chatgw'], ['ConfigMap', 'chatgw-policy']]) {
      assert.deepEqual(findObj(objs, kind, name), findObj(prod, kind, name), `${kind}/${name} as in prod`);
    }
    for (const o of objs.filter((x) => x.apiVersion.startsWith(GW_GROUP))) {
      assert.equal(o.metadata.namespace, 'chatgw', `${o.kind}/${o.metadata.name} in namespace chatgw`);
    }
    assert.equal(findObj(objs, 'ClusterIssuer').metadata.namespace, undefined, 'the ClusterIssuer stays cluster-scoped');
  });

  it('HTTPS listener: TLS terminated with the Secret cert-manager issues through the gateway annotation', () => {
    const https = listener('https');
    assert.equal(https.protocol, 'HTTPS');
    assert.equal(https.port, 443);
    assert.equal(https.tls.mode ?? 'Terminate', 'Terminate');
    assert.ok(https.hostname, 'cert-manager issues for listeners with a hostname only');
    const [ref] = https.tls.certificateRefs;
    assert.equal(ref.kind ?? 'Secret', 'Secret');
    assert.equal(ref.namespace ?? gateway.metadata.namespace, gateway.metadata.namespace, 'the Secret next to the Gateway');
    const issuer = gateway.metadata.annotations?.['cert-manager.io/cluster-issuer'];
    assert.ok(issuer, 'cert-manager.io/cluster-issuer on the Gateway');
    const ci = findObj(objs, 'ClusterIssuer', issuer);
    assert.ok(ci, `ClusterIssuer ${issuer} rendered`);
    // HTTP01 through this Gateway's plain listener, not through an ingress class
    const solvers = ci.spec.acme.solvers;
    assert.equal(solvers.length, 1);
    assert.equal(solvers[0].http01.ingress, undefined, 'no ingress-nginx solver left');
    const [pr] = solvers[0].http01.gatewayHTTPRoute.parentRefs;
    assert.equal(pr.name, gateway.metadata.name);
    assert.equal(pr.namespace, gateway.metadata.namespace);
    const http = listener(pr.sectionName);
    assert.ok(http, `listener ${pr.sectionName}`);
    assert.equal(http.protocol, 'HTTP');
    assert.equal(http.port, 80, 'Let\'s Encrypt calls port 80');
    assert.equal(http.hostname, https.hostname);
  });

  it('the HTTPS route sends the WebSocket endpoint, rooms and web client to the chatgw Service, with no request timeout', () => {
    const [route, ...more] = routesOf('https');
    assert.ok(route, 'an HTTPRoute on the https listener');
    assert.equal(more.length, 0);
    assert.deepEqual(route.spec.hostnames, [listener('https').hostname]);
    for (const p of ['/ws', '/', '/lobby', '/app.js']) {
      const rule = routeFor(route, p);
      assert.ok(rule?.backendRefs?.length, `${p} is forwarded`);
      const [be] = rule.backendRefs;
      assert.equal(be.kind ?? 'Service', 'Service');
      const svc = findObj(objs, 'Service', be.name);
      assert.ok(svc, `Service ${be.name}`);
      const sp = svc.spec.ports.find((x) => x.port === be.port);
      assert.ok(sp, `Service port ${be.port}`);
      const c = findObj(objs, 'Deployment', 'chatgw').spec.template.spec.containers[0];
      assert.equal(c.ports.find((x) => x.name === sp.targetPort || x.containerPort === sp.targetPort)?.containerPort, 8888);
      // a WebSocket lives for hours: no request timeout, or one of at least an hour
      const t = rule.timeouts?.request;
      assert.ok(t !== undefined, `${p}: request timeout set explicitly (implementations default to seconds)`);
      const secs = [...t.matchAll(/(\d+)(ms|h|m|s)/g)].reduce((a, [, n, u]) => a + Number(n) * { ms: 0.001, s: 1, m: 60, h: 3600 }[u], 0);
      assert.ok(secs === 0 || secs >= 3600, `${p}: timeouts.request ${t}`);
    }
  });

  it('the probes are not exposed: /healthz and /readyz never reach a pod from outside', () => {
    const [route] = routesOf('https');
    for (const p of ['/healthz', '/readyz']) {
      const rule = routeFor(route, p);
      assert.ok(rule, `${p} matched by a rule`);
      assert.equal(rule.backendRefs, undefined, `${p}: no backend`);
      const redirect = rule.filters?.find((f) => f.type === 'RequestRedirect')?.requestRedirect;
      assert.ok(redirect, `${p}: answered by the gateway itself`);
      assert.notEqual(redirect.path?.replaceFullPath, p, 'no redirect loop');
    }
  });

  it('HTTP redirects to HTTPS (the ACME challenge route of cert-manager takes precedence)', () => {
    const routes = routesOf('http');
    assert.equal(routes.length, 1);
    const [rule, ...rest] = routes[0].spec.rules;
    assert.equal(rest.length, 0);
    assert.equal(rule.backendRefs, undefined);
    const r = rule.filters.find((f) => f.type === 'RequestRedirect').requestRedirect;
    assert.equal(r.scheme, 'https');
    assert.equal(r.statusCode, 301);
    // any rule broader than an Exact match would lose to cert-manager's Exact challenge path
    for (const m of rule.matches || []) assert.notEqual(m.path?.type, 'Exact');
  });

  it('NetworkPolicy: the public port admits the gateway proxies\' namespace, not ingress-nginx; metrics unchanged', () => {
    const np = findObj(objs, 'NetworkPolicy', 'chatgw');
    const nsOf = (r) => (r.from || []).map((f) => f.namespaceSelector?.matchLabels?.['kubernetes.io/metadata.name']);
    const pub = np.spec.ingress.find((r) => r.ports.some((p) => p.port === 'http'));
    assert.deepEqual(nsOf(pub), ['envoy-gateway-system']);
    const metrics = np.spec.ingress.find((r) => r.ports.some((p) => p.port === 'metrics'));
    assert.deepEqual(metrics, findObj(prod, 'NetworkPolicy', 'chatgw').spec.ingress.find((r) => r.ports.some((p) => p.port === 'metrics')));
    assert.equal(gateway.spec.gatewayClassName, 'eg', 'the class the namespace belongs to (Envoy Gateway)');
  });
});
