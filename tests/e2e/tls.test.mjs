// TLS termination: wss:// and https:// on the public listener, certificate rotation through a
// kubelet-style ..data symlink swap (new handshakes get the new certificate, open connections
// stay up), and the header timeout still applies under TLS.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import WebSocket from 'ws';
import { startServer, passthroughPolicyDir, ChatClient, withTimeout, HOST } from './lib.mjs';

const T = { timeout: 30000 };

function makeCert(dir, cn) {
  fs.mkdirSync(dir, { recursive: true });
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', path.join(dir, 'tls.key'), '-out', path.join(dir, 'tls.crt'), '-days', '1', '-subj', `/CN=${cn}`],
  { stdio: 'ignore' });
  const pem = fs.readFileSync(path.join(dir, 'tls.crt'), 'utf8');
  return new crypto.X509Certificate(pem).fingerprint256;
}

// Lays out a Secret volume the way kubelet's AtomicWriter does, and swaps it.
function atomicWrite(root, srcDir, n) {
  const stamp = `..2026_11_27_00_00_0${n}.${n}`;
  fs.mkdirSync(path.join(root, stamp));
  for (const f of ['tls.crt', 'tls.key']) fs.copyFileSync(path.join(srcDir, f), path.join(root, stamp, f));
  const old = fs.existsSync(path.join(root, '..data')) ? fs.readlinkSync(path.join(root, '..data')) : null;
  fs.symlinkSync(stamp, path.join(root, '..data_tmp'));
  fs.renameSync(path.join(root, '..data_tmp'), path.join(root, '..data'));
  for (const f of ['tls.crt', 'tls.key']) {
    if (!fs.existsSync(path.join(root, f))) fs.symlinkSync(path.join('..data', f), path.join(root, f));
  }
  if (old) fs.rmSync(path.join(root, old), { recursive: true, force: true });
}

function peerFingerprint(port) {
  return withTimeout(new Promise((resolve, reject) => {
    const s = tls.connect({ host: HOST, port, rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] }, () => {
      const c = s.getPeerCertificate();
      resolve({ fp: c.fingerprint256, alpn: s.alpnProtocol, version: s.getProtocol() });
      s.end();
    });
    s.on('error', reject);
  }), 5000, 'tls handshake');
}

function httpsGet(port, p) {
  return withTimeout(new Promise((resolve, reject) => {
    https.get({ host: HOST, port, path: p, rejectUnauthorized: false }, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, body }));
    }).on('error', reject);
  }), 5000, 'https GET');
}

function wssChat(port, query) {
  const ws = new WebSocket(`wss://${HOST}:${port}/ws?${query}`, { rejectUnauthorized: false });
  const c = new ChatClient(ws);
  return withTimeout(new Promise((resolve, reject) => {
    ws.once('error', reject);
    c.next('welcome', 5000).then(() => resolve(c), reject);
  }), 6000, 'wss welcome');
}

describe('tls', () => {
  let srv, root, work, fp1;

  before(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-tls-'));
    root = path.join(work, 'secret');
    fs.mkdirSync(root);
    fp1 = makeCert(path.join(work, 'v1'), 'one.localhost');
    atomicWrite(root, path.join(work, 'v1'), 1);
    srv = await startServer(['--scripts-dir', passthroughPolicyDir(), '--tls-cert', path.join(root, 'tls.crt'),
      '--tls-key', path.join(root, 'tls.key'), '--header-timeout-ms', '1000']);
  });

  after(async () => {
    if (srv) await srv.stop();
    fs.rmSync(work, { recursive: true, force: true });
  });

  it('serves https probes with TLS 1.2+ and ALPN http/1.1', T, async () => {
    const r = await httpsGet(srv.port, '/healthz');
    assert.equal(r.status, 200);
    const p = await peerFingerprint(srv.port);
    assert.equal(p.fp, fp1);
    assert.equal(p.alpn, 'http/1.1');
    assert.match(p.version, /^TLSv1\.[23]$/);
  });

  it('refuses TLS 1.1', T, async () => {
    await assert.rejects(withTimeout(new Promise((resolve, reject) => {
      const s = tls.connect({ host: HOST, port: srv.port, rejectUnauthorized: false, maxVersion: 'TLSv1.1',
        minVersion: 'TLSv1' }, () => resolve(s.getProtocol()));
      s.on('error', reject);
    }), 5000, 'tls 1.1 handshake'));
  });

  it('chats over wss:// with messages larger than one TLS record', T, async () => {
    const a = await wssChat(srv.port, 'room=sec&name=a');
    const b = await wssChat(srv.port, 'room=sec&name=b');
    const text = 'x'.repeat(4000);
    a.send({ type: 'msg', room: 'sec', text, cid: 1 });
    const got = await b.next((m) => m.type === 'msg' && m.text === text, 5000);
    assert.equal(got.from.name, 'a');
    await a.close();
    await b.close();
  });

  it('rotates the certificate: new handshakes get it, open connections stay', T, async () => {
    const keep = await wssChat(srv.port, 'room=rot&name=keep');
    const fp2 = makeCert(path.join(work, 'v2'), 'two.localhost');
    assert.notEqual(fp2, fp1);
    atomicWrite(root, path.join(work, 'v2'), 2);
    await srv.waitLog((o) => o.msg === 'tls certificate reloaded' && o.fingerprint === fp2.replace(/:/g, '').toLowerCase(), 5000);
    assert.equal((await peerFingerprint(srv.port)).fp, fp2);
    assert.ok(keep.isOpen, 'the connection opened before the rotation is still open');
    const other = await wssChat(srv.port, 'room=rot&name=new');
    keep.send({ type: 'msg', room: 'rot', text: 'still here', cid: 2 });
    await other.next((m) => m.type === 'msg' && m.text === 'still here', 5000);
    await keep.close();
    await other.close();
  });

  it('a broken certificate update keeps the old one serving', T, async () => {
    const before = (await peerFingerprint(srv.port)).fp;
    const bad = path.join(work, 'bad');
    fs.mkdirSync(bad);
    fs.writeFileSync(path.join(bad, 'tls.crt'), 'not a certificate\n');
    fs.copyFileSync(path.join(work, 'v1', 'tls.key'), path.join(bad, 'tls.key'));
    atomicWrite(root, bad, 3);
    await srv.waitLog((o) => o.msg === 'tls certificate reload failed; the previous one keeps serving', 5000);
    assert.equal((await peerFingerprint(srv.port)).fp, before);
    assert.equal((await httpsGet(srv.port, '/healthz')).status, 200);
  });

  it('a slowloris over TLS gets 408 after the header timeout', T, async () => {
    const reply = await withTimeout(new Promise((resolve, reject) => {
      const s = tls.connect({ host: HOST, port: srv.port, rejectUnauthorized: false }, () => {
        s.write('GET /healthz HTTP/1.1\r\nHost: x\r\n');   // never finishes the headers
      });
      let buf = '';
      s.on('data', (d) => { buf += d; });
      s.on('close', () => resolve(buf));
      s.on('error', reject);
    }), 8000, '408 and close');
    assert.match(reply, /^HTTP\/1\.1 408 /);
  });

  it('plain HTTP to the TLS port is dropped without harming others', T, async () => {
    const net = await import('node:net');
    await withTimeout(new Promise((resolve) => {
      const s = net.connect(srv.port, HOST, () => s.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n'));
      s.on('close', resolve);
      s.on('error', resolve);
    }), 5000, 'plain connection closed');
    assert.equal((await httpsGet(srv.port, '/healthz')).status, 200);
  });
});
