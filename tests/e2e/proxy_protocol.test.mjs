// proxy_protocol: an L4 load balancer's PROXY header (v1 text, v2 binary) in front of HTTP,
// WebSocket and TLS. The header's source is the client (conn.ip, the per-IP limits); it is
// believed only from trusted_proxies, and a trusted proxy must send one.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { startServer, chatClient, httpGet, parseResponse, withTimeout, HOST } from './lib.mjs';

const T = { timeout: 30000 };

// on_join tells the client the address it was admitted as; on_connect refuses ?show=1 with
// conn.ip and its X-Forwarded-For header in the reason, and refuses one "banned" address.
function policyDir() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-pp-'));
  fs.writeFileSync(path.join(dir, 'policy.lua'), `
return {
  on_connect = function(conn)
    if conn.ip == "203.0.113.66" then return false, "banned" end
    if conn.query and conn.query.show then
      return false, "ip=" .. conn.ip .. " xff=" .. tostring(conn.headers["x-forwarded-for"])
    end
  end,
  on_join = function(conn, room) gw.send(conn.id, { type = "seen_ip", ip = conn.ip }) end,
}
`);
  return dir;
}

const v1 = (src, sport = 40000, fam = 'TCP4', dst = '127.0.0.1') => Buffer.from(`PROXY ${fam} ${src} ${dst} ${sport} 8080\r\n`);

const SIG = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
/** A v2 header; cmd 1 PROXY, 0 LOCAL; tlv: bytes of TLVs after the addresses. */
function v2(src, { cmd = 1, sport = 40000, tlv = Buffer.alloc(0) } = {}) {
  const six = net.isIPv6(src);
  const addr = Buffer.alloc(six ? 36 : 12);
  if (six) {
    const full = src.split('::');
    const head = full[0] ? full[0].split(':') : [], tail = full.length > 1 && full[1] ? full[1].split(':') : [];
    const groups = [...head, ...Array(8 - head.length - tail.length).fill('0'), ...tail];
    groups.forEach((g, i) => addr.writeUInt16BE(parseInt(g, 16), i * 2));
    addr.writeUInt16BE(1, 30);
    addr.writeUInt16BE(sport, 32);
    addr.writeUInt16BE(8080, 34);
  } else {
    src.split('.').forEach((o, i) => { addr[i] = Number(o); });
    addr.set([127, 0, 0, 1], 4);
    addr.writeUInt16BE(sport, 8);
    addr.writeUInt16BE(8080, 10);
  }
  const body = Buffer.concat([addr, tlv]);
  const head = Buffer.from([0x20 | cmd, six ? 0x21 : 0x11, body.length >> 8, body.length & 0xff]);
  return Buffer.concat([SIG, head, body]);
}

/** A socket that sends header first, in pieces when split (each its own write). */
function proxiedSocket(port, header, { split = false } = {}) {
  const s = net.connect({ host: HOST, port });
  s.setNoDelay(true);
  if (split) for (let i = 0; i < header.length; i += 5) s.write(header.subarray(i, i + 5));
  else s.write(header);
  return s;
}

/** Everything the server sends back to header + request until it closes (bounded). */
function exchange(port, bytes, ms = 3000) {
  return withTimeout(new Promise((resolve) => {
    const s = net.connect({ host: HOST, port });
    const chunks = [];
    s.on('data', (d) => chunks.push(d));
    s.on('error', () => {});
    s.on('close', () => resolve(Buffer.concat(chunks)));
    s.write(bytes);
  }), ms, 'the server to answer and close');
}

const LOCAL = Buffer.concat([SIG, Buffer.from([0x20, 0x00, 0, 0])]);
const get = (p, host = 'x') => Buffer.from(`GET ${p} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);

describe('proxy_protocol', () => {
  const servers = [];
  after(async () => { for (const s of servers) await s.stop(); });
  let srv;
  const start = async (extra = []) => {
    const s = await startServer(['--trusted-proxies', '127.0.0.0/8', '--proxy-protocol', 'true',
      '--scripts-dir', policyDir(), ...extra]);
    servers.push(s);
    return s;
  };

  it('v1 and v2 clients get their own address in conn.ip, over WebSocket, split or whole', T, async () => {
    srv = await start();
    const cases = [
      ['v1', v1('203.0.113.7'), '203.0.113.7'],
      ['v1 split', v1('198.51.100.8'), '198.51.100.8', true],
      ['v1 tcp6', v1('2001:db8::5', 40000, 'TCP6', '2001:db8::1'), '2001:db8::5'],
      ['v2', v2('192.0.2.9'), '192.0.2.9'],
      ['v2 split with TLVs', v2('2001:db8:0:1::7', { tlv: Buffer.from([0x04, 0x00, 0x03, 1, 2, 3]) }), '2001:db8:0:1::7', true],
    ];
    for (const [what, header, ip, split] of cases) {
      const room = `pp${Math.random().toString(36).slice(2, 8)}`;
      const c = await chatClient(srv.port, `/ws?room=${room}`,
        { wsOpts: { createConnection: () => proxiedSocket(srv.port, header, { split }) } });
      assert.equal((await c.next('seen_ip')).ip, ip, what);
      await c.close();
    }
  });

  it('/api/rooms and /healthz answer through the header; LOCAL keeps the proxy\'s address', T, async () => {
    const room = `pq${Math.random().toString(36).slice(2, 8)}`;
    const c = await chatClient(srv.port, `/ws?room=${room}&name=ann`,
      { wsOpts: { createConnection: () => proxiedSocket(srv.port, v2('192.0.2.10')) } });
    await c.next('seen_ip');
    const r = parseResponse(await exchange(srv.port, Buffer.concat([v1('192.0.2.11'), get(`/api/rooms/${room}`)])), { eof: true });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json().members.map((m) => m.name), ['ann']);
    const h = parseResponse(await exchange(srv.port, Buffer.concat([LOCAL, get('/healthz')])), { eof: true });
    assert.equal(h.status, 200, 'a LOCAL v2 header (the balancer\'s own health check)');
    const show = parseResponse(await exchange(srv.port, Buffer.concat([LOCAL,
      Buffer.from('GET /ws?room=x&show=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
        + 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n')])), { eof: true });
    assert.equal(show.status, 403);
    assert.match(show.text, /ip=127\.0\.0\.1 /);
    await c.close();
  });

  it('the header\'s source is what per-IP limits and the policy see, not a later X-Forwarded-For', T, async () => {
    const s = await start(['--max-connections-per-ip', '1']);
    const a = await chatClient(s.port, '/ws?room=lim', { wsOpts: { createConnection: () => proxiedSocket(s.port, v1('203.0.113.20')) } });
    await a.next('seen_ip');
    const again = await chatClient(s.port, '/ws?room=lim',
      { wsOpts: { createConnection: () => proxiedSocket(s.port, v2('203.0.113.20')) } }).catch((e) => e);
    assert.equal(again.statusCode, 429, 'a second connection from the same client');
    const other = await chatClient(s.port, '/ws?room=lim', { wsOpts: { createConnection: () => proxiedSocket(s.port, v1('203.0.113.21')) } });
    assert.equal((await other.next('seen_ip')).ip, '203.0.113.21');
    // the balancer passes the client's bytes: its X-Forwarded-For is the client's word
    const r = parseResponse(await exchange(s.port, Buffer.concat([v1('203.0.113.22'),
      Buffer.from('GET /ws?room=x&show=1 HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 9.9.9.9\r\nUpgrade: websocket\r\n'
        + 'Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n')])), { eof: true });
    assert.equal(r.status, 403);
    assert.match(r.text, /ip=203\.0\.113\.22 xff=9\.9\.9\.9/);
    // a banned client behind the balancer stays banned
    const banned = await chatClient(s.port, '/ws?room=lim', { wsOpts: { createConnection: () => proxiedSocket(s.port, v2('203.0.113.66')) } })
      .catch((e) => e);
    assert.equal(banned.statusCode, 403);
    await a.close();
    await other.close();
  });

  it('a trusted source without a header, or with a broken one, is closed unanswered', T, async () => {
    const bad = [
      get('/healthz'),                                         // no header at all
      Buffer.concat([Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n'), get('/healthz')]),   // LF without CR
      Buffer.concat([Buffer.from('PROXY TCP4 1.2.3.4 ::1 1 2\r\n'), get('/healthz')]),
      Buffer.concat([Buffer.from('PROXY UNKNOWN ' + 'a'.repeat(200) + '\r\n'), get('/healthz')]),   // over 107 bytes
      Buffer.concat([SIG, Buffer.from([0x21, 0x11, 0, 4, 1, 2, 3, 4]), get('/healthz')]),       // block too short
      Buffer.concat([SIG, Buffer.from([0x31, 0x11, 0, 12]), Buffer.alloc(12), get('/healthz')]), // version 3
    ];
    for (const b of bad) {
      const out = await exchange(srv.port, b);
      assert.equal(out.length, 0, `answered ${JSON.stringify(out.toString('latin1').slice(0, 80))} to ${JSON.stringify(b.toString('latin1').slice(0, 40))}`);
    }
    const ok = parseResponse(await exchange(srv.port, Buffer.concat([v1('1.2.3.4'), get('/healthz')])), { eof: true });
    assert.equal(ok.status, 200, 'and the server still answers');
  });

  it('an untrusted source is refused, header or not', T, async () => {
    const s = await start(['--trusted-proxies', '10.0.0.0/8']);
    for (const b of [Buffer.concat([v1('203.0.113.7'), get('/healthz')]), Buffer.concat([v2('203.0.113.7'), get('/healthz')]), get('/healthz')]) {
      const out = await exchange(s.port, b);
      assert.equal(out.length, 0, `answered ${JSON.stringify(out.toString('latin1').slice(0, 80))}`);
    }
    await s.waitLog((o) => o.msg === 'proxy_protocol: connection refused' && o.error === 'not from trusted_proxies');
  });

  it('an admin listener of its own takes no header (probes); the public one still wants it', T, async () => {
    const s = await start(['--admin-listen', '127.0.0.1:0']);
    const admin = await s.waitLog((o) => o.msg === 'listening' && o.role === 'admin');
    const adminPort = Number(/:(\d+)$/.exec(admin.addr)[1]);
    assert.equal((await httpGet(adminPort, '/healthz')).status, 200);
    assert.equal((await exchange(s.port, get('/healthz'))).length, 0);
  });

  it('the header comes before the TLS handshake', T, async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-pp-tls-'));
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', path.join(dir, 'tls.key'), '-out', path.join(dir, 'tls.crt'), '-days', '1', '-subj', '/CN=localhost'],
    { stdio: 'ignore' });
    const s = await start(['--tls-cert', path.join(dir, 'tls.crt'), '--tls-key', path.join(dir, 'tls.key')]);
    for (const header of [v1('203.0.113.30'), v2('2001:db8::30')]) {
      const c = await withTimeout(new Promise((resolve, reject) => {
        const raw = proxiedSocket(s.port, header);
        const sock = tls.connect({ socket: raw, rejectUnauthorized: false, servername: 'localhost' });
        sock.on('error', reject);
        resolve(chatClient(s.port, '/ws?room=tls', { wsOpts: { createConnection: () => sock } }));
      }), 8000, 'wss through a PROXY header');
      const seen = await c.next('seen_ip');
      assert.equal(seen.ip, net.isIPv6(seen.ip) ? '2001:db8::30' : '203.0.113.30');
      await c.close();
    }
  });
});
