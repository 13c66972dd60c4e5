// trusted_proxies: X-Forwarded-For is believed only from a trusted peer, and then the
// forwarded client is who per-IP limits and the policy see.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startServer, rawWebSocket, chatClient, httpRequest, waitFor, scrape, metricSum, sleep } from './lib.mjs';

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

  it('X-Forwarded-For from an untrusted peer is ignored', T, async () => {
    const srv = await startServer(['--scripts-dir', ipEchoPolicy()]);
    servers.push(srv);
    const c = await chatClient(srv.port, '/ws?room=q', { wsOpts: { headers: { 'X-Forwarded-For': '203.0.113.9' } } });
    assert.equal((await c.next('seen_ip')).ip, '127.0.0.1');
    await c.close();
  });
});
