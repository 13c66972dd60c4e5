// trusted_proxies: X-Forwarded-For is believed only from a trusted peer, and then the
// forwarded client is who per-IP limits and the policy see.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startServer, rawWebSocket, chatClient, httpRequest, httpRaw, parseResponse, waitFor, scrape, metricSum, sleep } from './lib.mjs';

const T = { timeout: 30000 };

// A policy that tells each connection the address it was admitted as.
function ipEchoPolicy() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-proxy-'));
  fs.writeFileSync(path.join(dir, 'policy.lua'), `
return {
  on_join = function(conn, room) gw.send(conn.id, { type = "seen_ip", ip = conn.ip }) end,
}
`);
  return dir;
}

describe('trusted proxies', () => {
  const servers = [];
  after(async () => { for (const s of servers) await s.stop(); });

  it('per-IP limits count the forwarded client behind a trusted proxy', T, async () => {
    const srv = await startServer(['--trusted-proxies', '127.0.0.0/8', '--max-connections-per-ip', '2',
      '--scripts-dir', ipEchoPolicy()]);
    servers.push(srv);
    const a = await chatClient(srv.port, '/ws?room=p', { wsOpts: { headers: { 'X-Forwarded-For': '198.51.100.1, 203.0.113.7' } } });
    const b = await chatClient(srv.port, '/ws?room=p', { wsOpts: { headers: { 'X-Forwarded-For': '203.0.113.7' } } });
    const seen = await a.next('seen_ip');
    assert.equal(seen.ip, '203.0.113.7', 'the rightmost untrusted entry is the client');
    const third = await rawWebSocket(srv.port, '/ws?room=p', { 'X-Forwarded-For': '203.0.113.7' });
    assert.equal(third.status, 429);
    const other = await chatClient(srv.port, '/ws?room=p', { wsOpts: { headers: { 'X-Forwarded-For': '203.0.113.8' } } });
    assert.equal((await other.next('seen_ip')).ip, '203.0.113.8');
    await a.close(); await b.close(); await other.close();
  });

  it('accept_rate_per_ip answers 429 to a connection burst and recovers', T, async () => {
    const srv = await startServer(['--accept-rate-per-ip', '2', '--scripts-dir', ipEchoPolicy()]);
    servers.push(srv);
    const statuses = [];
    for (let i = 0; i < 8; i++) {
      const r = await httpRequest(srv.port, 'GET', '/healthz');
      statuses.push(r.status);
    }
    assert.deepEqual(statuses.slice(0, 4), [200, 200, 200, 200], 'the burst (twice the rate) passes');
    assert.ok(statuses.slice(4).includes(429), `later connections are refused: ${statuses}`);
    await waitFor(async () => (await httpRequest(srv.port, 'GET', '/healthz')).status === 200,
      { timeoutMs: 5000, intervalMs: 600, what: 'the bucket to refill' });
    await sleep(600);
    const m = await scrape(srv.port);
    assert.ok(metricSum(m.samples, 'chatgw_connections_rejected_total') >= 1);
  });

  // A proxy that appends its own X-Forwarded-For line (HAProxy's option forwardfor) after the
  // client's: the client's line cannot choose conn.ip, and the policy's conn.headers shows
  // every line, joined, as the server read them.
  it('a client\'s X-Forwarded-For line before the proxy\'s cannot choose conn.ip', T, async () => {
    const dir = ipEchoPolicy();
    fs.writeFileSync(path.join(dir, 'policy.lua'), `
return {
  on_connect = function(conn)
    if conn.query and conn.query.show then
      return false, "ip=" .. conn.ip .. " xff=" .. tostring(conn.headers["x-forwarded-for"])
    end
  end,
  on_join = function(conn, room) gw.send(conn.id, { type = "seen_ip", ip = conn.ip }) end,
}
`);
    const srv = await startServer(['--trusted-proxies', '127.0.0.0/8', '--max-connections-per-ip', '1', '--scripts-dir', dir]);
    servers.push(srv);
    const handshake = (xffLines) => Buffer.from('GET /ws?room=x&show=1 HTTP/1.1\r\nHost: x\r\n'
      + xffLines.map((v) => `X-Forwarded-For: ${v}\r\n`).join('')
      + 'Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n'
      + 'Sec-WebSocket-Version: 13\r\n\r\n');
    const shown = async (lines) => {
      const r = parseResponse(await httpRaw(srv.port, handshake(lines)), { eof: true });
      assert.equal(r.status, 403, r.text);
      return JSON.parse(r.text).message;
    };
    assert.equal(await shown(['1.2.3.4', '203.0.113.7']), 'ip=203.0.113.7 xff=1.2.3.4, 203.0.113.7');
    assert.equal(await shown(['1.2.3.4', '203.0.113.7, 127.0.0.1']), 'ip=203.0.113.7 xff=1.2.3.4, 203.0.113.7, 127.0.0.1');
    assert.equal(await shown(['1.2.3.4', '', '198.51.100.3']), 'ip=198.51.100.3 xff=1.2.3.4, 198.51.100.3');
    // and the per-IP limit counts the proxy's client, whatever the client's own line says
    const a = await chatClient(srv.port, '/ws?room=xff2', { wsOpts: { headers: { 'X-Forwarded-For': ['1.2.3.4', '203.0.113.50'] } } });
    assert.equal((await a.next('seen_ip')).ip, '203.0.113.50');
    const b = await rawWebSocket(srv.port, '/ws?room=xff2', { 'X-Forwarded-For': '5.6.7.8, 203.0.113.50' });
    assert.equal(b.status, 429, 'the same client with another made-up first entry');
    await a.close();
  });

  // One IPv6 client holds a whole /64: per-IP limits count the prefix (ipv6_prefix_bits), while
  // conn.ip stays the full address. Loopback has no IPv6 /64 to rotate through, so the
  // addresses come from a trusted proxy's X-Forwarded-For, as they would behind an Ingress.
  it('IPv6 clients are limited per /64 by default, per address at ipv6_prefix_bits 128', T, async () => {
    const xff = (ip) => ({ wsOpts: { headers: { 'X-Forwarded-For': ip } } });
    const srv = await startServer(['--trusted-proxies', '127.0.0.0/8', '--max-connections-per-ip', '1',
      '--accept-rate-per-ip', '0', '--scripts-dir', ipEchoPolicy()]);
    servers.push(srv);
    const a = await chatClient(srv.port, '/ws?room=v6', xff('2001:db8:1:2::1'));
    assert.equal((await a.next('seen_ip')).ip, '2001:db8:1:2::1', 'conn.ip is the address, not the prefix');
    for (const sibling of ['2001:db8:1:2::99', '2001:db8:1:2:ffff:ffff:ffff:ffff', '2001:0DB8:1:2:0::1']) {
      const r = await rawWebSocket(srv.port, '/ws?room=v6', { 'X-Forwarded-For': sibling });
      assert.equal(r.status, 429, `${sibling} shares 2001:db8:1:2::/64`);
      r.close?.();
    }
    const other = await chatClient(srv.port, '/ws?room=v6', xff('2001:db8:1:3::1'));
    assert.equal((await other.next('seen_ip')).ip, '2001:db8:1:3::1', 'the next /64 is another client');
    const v4 = await chatClient(srv.port, '/ws?room=v6', xff('203.0.113.1'));
    const v4b = await rawWebSocket(srv.port, '/ws?room=v6', { 'X-Forwarded-For': '::ffff:203.0.113.1' });
    assert.equal(v4b.status, 429, 'an IPv4 client written as IPv4-mapped IPv6 is the same client');
    await a.close(); await other.close(); await v4.close();

    const per = await startServer(['--trusted-proxies', '127.0.0.0/8', '--max-connections-per-ip', '1',
      '--ipv6-prefix-bits', '128', '--scripts-dir', ipEchoPolicy()]);
    servers.push(per);
    const p1 = await chatClient(per.port, '/ws?room=v6', xff('2001:db8:1:2::1'));
    const p2 = await chatClient(per.port, '/ws?room=v6', xff('2001:db8:1:2::2'));
    assert.equal((await p2.next('seen_ip')).ip, '2001:db8:1:2::2');
    await p1.close(); await p2.close();
  });

  it('X-Forwarded-For from an untrusted peer is ignored', T, async () => {
    const srv = await startServer(['--scripts-dir', ipEchoPolicy()]);
    servers.push(srv);
    const c = await chatClient(srv.port, '/ws?room=q', { wsOpts: { headers: { 'X-Forwarded-For': '203.0.113.9' } } });
    assert.equal((await c.next('seen_ip')).ip, '127.0.0.1');
    await c.close();
  });
});
