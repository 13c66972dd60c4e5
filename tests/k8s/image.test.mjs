// The container image, really built and run without a Docker engine: podman (rootful, runc),
// a debootstrapped bookworm base imported as debian:bookworm-slim (cached), then
// `podman build --network=host --pull=never`, and the image run as Kubernetes runs it here:
// uid 10001, --read-only root filesystem, no capabilities, no new privileges, the policy
// bind-mounted read-only at /etc/chatgw/scripts. /healthz, /readyz, /metrics and a WebSocket
// chat go through it; podman stop drains it (close 1001, exit 0).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import {
  SRC, BUILD, BIN, HERE, run, which, freePort, httpGet, waitFor, chatClient, chatRoundTrip, withTimeout,
} from './lib.mjs';

const CACHE = process.env.CHATGW_IMAGE_CACHE || '/var/cache/chatgw-test';
const IMAGE = 'localhost/chatgw:k8s-test';
const NAME = `chatgw-k8s-test-${process.pid}`;
const isRoot = process.getuid?.() === 0;

let conf;   // CONTAINERS_CONF
function podman(args, { timeoutMs = 120000 } = {}) {
  return run('podman', args, { timeoutMs, env: { CONTAINERS_CONF: conf } });
}
function ok(r, what) {
  assert.equal(r.code, 0, `${what} failed (${r.code}):\n${(r.stdout || '').slice(-4000)}\n${(r.stderr || '').slice(-4000)}`);
  return r.stdout;
}

describe('container image (podman, runc, read-only, uid 10001)', { skip: isRoot ? false : 'needs root (rootful podman)', timeout: 1200000 }, () => {
  let publicPort; let adminPort; let started = false;

  before(() => {
    for (const tool of ['podman', 'runc', 'debootstrap']) {
      assert.ok(which(tool), `${tool} is not installed (tests/k8s/debs.txt)`);
    }
    // crun fails on this machine's hybrid cgroup layout; higher default ulimits are refused
    const dir = path.join(BUILD, 'k8s-test');
    fs.mkdirSync(dir, { recursive: true });
    conf = path.join(dir, 'containers.conf');
    fs.writeFileSync(conf, [
      '[containers]',
      'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]',
      '[engine]',
      'runtime = "runc"',
      '',
    ].join('\n'));
  });

  after(() => {
    if (started) {
      const logs = podman(['logs', NAME]);
      if (process.env.K8S_TEST_VERBOSE) console.log(logs.stdout, logs.stderr);
      podman(['rm', '-f', '-t', '0', NAME], { timeoutMs: 60000 });
    }
  });

  it('has a bookworm base image (debootstrap, cached)', () => {
    const r = run('bash', [path.join(HERE, 'base-image.sh'), CACHE], { timeoutMs: 900000, env: { CONTAINERS_CONF: conf } });
    ok(r, 'base-image.sh');
  });

  it('builds with podman build --network=host --pull=never', { timeout: 900000 }, () => {
    const r = podman(['build', '--network=host', '--pull=never', '--layers', '-t', IMAGE, '-f', path.join(SRC, 'Dockerfile'), SRC], { timeoutMs: 900000 });
    ok(r, 'podman build');
  });

  it('is configured as the spec says: uid 10001, EXPOSE 8888, ENTRYPOINT chatgw, policy and web paths', () => {
    const [img] = JSON.parse(ok(podman(['image', 'inspect', IMAGE]), 'image inspect'));
    const cfg = img.Config;
    assert.match(cfg.User, /^10001(:10001)?$/);
    assert.ok('8888/tcp' in (cfg.ExposedPorts || {}), `ExposedPorts ${JSON.stringify(cfg.ExposedPorts)}`);
    assert.deepEqual(cfg.Entrypoint, ['chatgw']);
    assert.ok(cfg.Env.includes('CHATGW_SCRIPTS_DIR=/etc/chatgw/scripts'));
    assert.ok(cfg.Env.includes('CHATGW_WEB_DIR=/usr/share/chatgw/web'));
    // what is inside: the default policy, the web client folder, no toolchain
    const ls = ok(podman(['run', '--rm', '--network=none', '--read-only', '--entrypoint', 'sh', IMAGE, '-c',
      'ls /etc/chatgw/scripts; test -d /usr/share/chatgw/web && echo web-ok; command -v gcc cc cmake || echo no-toolchain; id -u']), 'ls in image');
    const scripts = fs.readdirSync(path.join(SRC, 'scripts')).filter((f) => f.endsWith('.lua')).sort();
    for (const f of scripts) assert.match(ls, new RegExp(`^${f.replace('.', '\\.')}$`, 'm'), `${f} in /etc/chatgw/scripts`);
    assert.doesNotMatch(ls, /kustomization\.yaml/, 'only the *.lua files go into the image');
    assert.match(ls, /^web-ok$/m);
    assert.match(ls, /^no-toolchain$/m);
    assert.match(ls, /^10001$/m);
    const ver = ok(podman(['run', '--rm', '--network=none', '--read-only', IMAGE, 'version']), 'chatgw version');
    assert.match(ver, /\d+\.\d+\.\d+/);
  });

  it('runs read-only as uid 10001 with the policy bind-mounted; /healthz and /readyz answer', async () => {
    publicPort = await freePort();
    adminPort = await freePort();
    const r = podman(['run', '-d', '--name', NAME,
      '--network=host',                   // loopback only: the listeners bind 127.0.0.1
      '--read-only', '--user', '10001:10001', '--cap-drop=ALL', '--security-opt=no-new-privileges',
      '--tmpfs', '/tmp:rw,size=16m,mode=1777',
      '-v', `${path.join(SRC, 'scripts')}:/etc/chatgw/scripts:ro`,
      '-e', 'CHATGW_DRAIN_TIMEOUT_MS=5000',
      IMAGE, 'serve', '--listen', `127.0.0.1:${publicPort}`, '--admin-listen', `127.0.0.1:${adminPort}`]);
    ok(r, 'podman run');
    started = true;
    await waitFor(async () => (await httpGet(publicPort, '/healthz', { timeoutMs: 1000 })).status === 200,
      { timeoutMs: 30000, intervalMs: 200, what: `/healthz from the container\n${podman(['logs', NAME]).stdout}` });
    const h = await httpGet(publicPort, '/healthz');
    assert.deepEqual(h.json(), { status: 'ok' });
    const rd = await httpGet(publicPort, '/readyz');
    assert.equal(rd.status, 200, rd.text);
    const j = rd.json();
    assert.equal(j.status, 'ready');
    // the mounted policy is the one that serves
    const check = run(BIN, ['check', path.join(SRC, 'scripts')]);
    const v = /([0-9a-f]{64})/.exec(check.stdout)?.[1];
    if (v && j.policy) assert.equal(j.policy.version, v, 'policy.version of the bind-mounted scripts');
    const m = await httpGet(adminPort, '/metrics');
    assert.equal(m.status, 200);
    assert.match(m.text, /^chatgw_build_info\{version="[^"]+"\} 1$/m);
    assert.equal((await httpGet(publicPort, '/metrics')).status, 404, 'metrics only on the admin listener');
  });

  it('the process is uid 10001 and cannot write its root filesystem', () => {
    const out = ok(podman(['exec', NAME, 'sh', '-c', 'id -u; id -g; if touch /probe 2>/dev/null; then echo writable; else echo read-only; fi; ' +
      'if touch /etc/chatgw/scripts/x 2>/dev/null; then echo scripts-writable; else echo scripts-ro; fi; grep -E "^(CapEff|NoNewPrivs)" /proc/1/status']), 'podman exec');
    assert.match(out, /^10001\n10001\n/);
    assert.match(out, /^read-only$/m);
    assert.match(out, /^scripts-ro$/m);
    assert.match(out, /^CapEff:\s+0+$/m);
    assert.match(out, /^NoNewPrivs:\s+1$/m);
  });

  it('a WebSocket chat goes through the container', async () => {
    const { welcome, ack, got } = await chatRoundTrip(publicPort, { room: 'podman' });
    assert.match(welcome.server, /^chatgw\//);
    assert.equal(got.id, ack.id);
    assert.equal(got.from.name, 'alice');
  });

  it('podman stop drains: the client gets close 1001, the container exits 0', async () => {
    const cl = await chatClient(publicPort, { room: 'podman-drain', name: 'dora' });
    await cl.next((m) => m.type === 'welcome');
    const stop = podman(['stop', '-t', '20', NAME], { timeoutMs: 60000 });   // SIGTERM, SIGKILL after 20 s
    ok(stop, 'podman stop');
    const info = await withTimeout(cl.closed, 10000, 'client close');
    assert.equal(info.code, 1001);
    const [c] = JSON.parse(ok(podman(['inspect', NAME]), 'inspect'));
    assert.equal(c.State.ExitCode, 0, `exit code ${c.State.ExitCode}\n${podman(['logs', NAME]).stdout}`);
    assert.equal(c.State.OOMKilled, false);
  });
});
