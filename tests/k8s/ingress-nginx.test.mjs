// The ingress-nginx values (deploy/ingress-nginx/values.yaml) and chatgw's trusted_proxies, held
// to each other and to docs/deploy-kubernetes.md: the client's address survives the load
// balancer (PROXY protocol, externalTrafficPolicy: Local), nginx never believes a client's own
// X-Forwarded-For, and chatgw trusts X-Forwarded-For from the pod network only, as documented.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { SRC, renderOverlay, findGenerated, findObj, YAML } from './lib.mjs';

const VALUES = 'deploy/ingress-nginx/values.yaml';
const DOC = 'docs/deploy-kubernetes.md';
const read = (p) => fs.readFileSync(path.join(SRC, p), 'utf8');

/** Parses one YAML document strictly: duplicate keys and any error fail. */
function parseStrict(text) {
  const docs = YAML.parseAllDocuments(text, { uniqueKeys: true, strict: true });
  assert.equal(docs.length, 1, 'one YAML document');
  assert.deepEqual(docs[0].errors.map((e) => e.message), []);
  assert.deepEqual(docs[0].warnings.map((e) => e.message), []);
  return docs[0].toJS();
}

/** IPv4 CIDR -> [network as uint32, prefix]; throws on anything else. */
function cidr4(s) {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(s);
  assert.ok(m, `IPv4 CIDR: ${s}`);
  const oct = m.slice(1, 5).map(Number);
  const prefix = Number(m[5]);
  assert.ok(oct.every((o) => o <= 255) && prefix <= 32, `IPv4 CIDR: ${s}`);
  const addr = ((oct[0] << 24) | (oct[1] << 16) | (oct[2] << 8) | oct[3]) >>> 0;
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  assert.equal((addr & mask) >>> 0, addr, `${s}: host bits set`);
  return [addr, prefix];
}

const configOf = (overlay) => findGenerated(renderOverlay(overlay), 'ConfigMap', 'chatgw-config').data;

describe('ingress-nginx values', () => {
  const v = parseStrict(read(VALUES));
  const c = v.controller;

  it('parse as one YAML document without duplicate keys', () => {
    assert.equal(typeof c, 'object');
  });
  it('the controller Service keeps the client address: externalTrafficPolicy Local and DigitalOcean PROXY protocol', () => {
    assert.equal(c.service.type, 'LoadBalancer');
    assert.equal(c.service.externalTrafficPolicy, 'Local');
    assert.equal(c.service.annotations['service.beta.kubernetes.io/do-loadbalancer-enable-proxy-protocol'], 'true');
    assert.ok(c.service.annotations['service.beta.kubernetes.io/do-loadbalancer-hostname'], 'do-loadbalancer-hostname (in-cluster HTTP01 self-check)');
  });
  it('the controller reads the PROXY header and never believes a client\'s X-Forwarded-For', () => {
    for (const [k, x] of Object.entries(c.config)) assert.equal(typeof x, 'string', `config ${k} is a string (a ConfigMap value)`);
    assert.equal(c.config['use-proxy-protocol'], 'true');
    assert.equal(c.config['use-forwarded-headers'], 'false');
    assert.equal(c.config['compute-full-forwarded-for'], 'false');
  });
  it('the Ingress class is the one chatgw\'s Ingress names, and the release namespace is the NetworkPolicy\'s', () => {
    for (const o of ['prod', 'dev']) {
      const ing = findObj(renderOverlay(o), 'Ingress', 'chatgw');
      assert.equal(ing.spec.ingressClassName, c.ingressClassResource.name, o);
      const np = findObj(renderOverlay(o), 'NetworkPolicy', 'chatgw');
      const nss = np.spec.ingress.flatMap((r) => (r.from || []).map((f) => f.namespaceSelector?.matchLabels?.['kubernetes.io/metadata.name']));
      assert.ok(nss.includes('ingress-nginx'), `${o}: NetworkPolicy admits ingress-nginx`);
    }
  });
  it('the docs install the chart with these values into the ingress-nginx namespace', () => {
    const doc = read(DOC);
    const cmd = /helm upgrade --install ingress-nginx ingress-nginx \\\n((?:.*\\\n)*.*)/.exec(doc);
    assert.ok(cmd, 'helm install command in the docs');
    assert.match(cmd[1], /--namespace ingress-nginx\b/);
    assert.match(cmd[1], new RegExp(`-f ${VALUES.replace(/[./]/g, '\\$&')}\\b`));
  });
});

describe('trusted_proxies', () => {
  it('prod and dev trust the pod network only: one narrow IPv4 range, no all of RFC 1918, no PROXY protocol in chatgw', () => {
    for (const o of ['prod', 'dev']) {
      const cfg = configOf(o);
      const list = cfg.CHATGW_TRUSTED_PROXIES.split(',').map((s) => s.trim()).filter(Boolean);
      assert.ok(list.length >= 1, `${o}: trusted_proxies set`);
      for (const s of list) {
        const [, prefix] = cidr4(s);
        assert.ok(prefix >= 13, `${o}: ${s} is narrower than the RFC 1918 blocks`);
      }
      // the controller consumes the PROXY header; chatgw must not expect one behind it
      assert.ok(!cfg.CHATGW_PROXY_PROTOCOL || cfg.CHATGW_PROXY_PROTOCOL === 'false', `${o}: proxy_protocol off`);
    }
    assert.equal(configOf('budget').CHATGW_TRUSTED_PROXIES, '', 'budget trusts no proxy');
  });
  it('the docs give the value the manifests set', () => {
    const doc = read(DOC);
    const documented = [...doc.matchAll(/`CHATGW_TRUSTED_PROXIES=([^`]*)`/g)].map((m) => m[1]);
    assert.ok(documented.length >= 2, 'the docs give the base and the budget values');
    assert.ok(documented.includes(configOf('prod').CHATGW_TRUSTED_PROXIES), `docs: ${documented}`);
    for (const d of documented) {
      assert.ok([configOf('prod').CHATGW_TRUSTED_PROXIES, configOf('budget').CHATGW_TRUSTED_PROXIES].includes(d), `documented ${d} is a value some overlay sets`);
    }
  });
  it('the CIDR check refuses a malformed or host-bit CIDR', () => {
    assert.throws(() => cidr4('10.244.0.1/16'));
    assert.throws(() => cidr4('10.244.0.0'));
    assert.throws(() => cidr4('300.0.0.0/8'));
    assert.deepEqual(cidr4('10.244.0.0/16'), [0x0af40000, 16]);
  });
});
