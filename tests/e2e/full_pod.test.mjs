// Probes answer from a full pod: at max_connections the admin listener still answers (it has
// its own cap), and the public listener keeps a reserve of connections for plain HTTP (one
// request each, then close), so /healthz and /readyz answer 200 while new WebSockets get 503.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, passthroughPolicyDir, clientPool, chatClient, httpGet, connect } from './lib.mjs';

const T = { timeout: 60000 };
const MAX = 20;
const RESERVE = 16;                   // PROBE_RESERVE in src/net/server.c

describe('probes from a full pod', () => {
  let srv, adminPort;
  const pool = clientPool();
  before(async () => {
    srv = await startServer(['--scripts-dir', passthroughPolicyDir(), '--max-connections', MAX,
      '--admin-listen', '127.0.0.1:0', '--accept-rate-per-ip', 0]);
    const line = await srv.waitLog((o) => o.msg === 'listening' && o.role === 'admin');
    adminPort = Number(/:(\d+)$/.exec(line.addr)[1]);
  });
  after(async () => {
    await pool.closeAll();
    if (srv) await srv.stop();
  });

  it('answers /healthz and /readyz at max_connections; a new WebSocket is refused', T, async () => {
    for (let i = 0; i < MAX; i++) await pool.open(srv.port, `/ws?room=full&name=u${i}`);
    for (const port of [srv.port, adminPort]) {
      for (const p of ['/healthz', '/readyz']) {
        const r = await httpGet(port, p, { Connection: 'keep-alive' });
        assert.equal(r.status, 200, `${p} on ${port === adminPort ? 'admin' : 'public'}`);
        if (port === srv.port) assert.equal(r.headers.connection, 'close', 'a reserve connection serves one request');
      }
    }
    await assert.rejects(chatClient(srv.port, '/ws?room=full&name=late'), (e) => e.statusCode === 503);
  });

  it('with the public reserve taken too, the admin listener still answers', T, async () => {
    const idle = [];
    try {
      for (let i = 0; i < RESERVE; i++) idle.push(await connect(srv.port));
      // the listen queue is FIFO: the server accepts these before the probe below
      const r = await httpGet(srv.port, '/healthz');
      assert.equal(r.status, 503, 'past the reserve the public listener refuses');
      for (const p of ['/healthz', '/readyz']) assert.equal((await httpGet(adminPort, p)).status, 200, `${p} on admin`);
    } finally {
      for (const s of idle) s.destroy();
    }
    await assert.rejects(chatClient(srv.port, '/ws?room=full&name=late2'), (e) => e.statusCode === 503);
  });
});
