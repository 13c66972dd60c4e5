// trusted_proxies: X-Forwarded-For is believed only from a trusted peer, and then the
// forwarded client is who per-IP limits and the policy see.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startServer, rawWebSocket, chatClient } from './lib.mjs';

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

  it('X-Forwarded-For from an untrusted peer is ignored', T, async () => {
    const srv = await startServer(['--scripts-dir', ipEchoPolicy()]);
    servers.push(srv);
    const c = await chatClient(srv.port, '/ws?room=q', { wsOpts: { headers: { 'X-Forwarded-For': '203.0.113.9' } } });
    assert.equal((await c.next('seen_ip')).ip, '127.0.0.1');
    await c.close();
  });
});
