// Graceful drain on SIGTERM: /readyz turns 503, every WebSocket gets close 1001, the listener
// stops accepting, the process exits 0 within drain_timeout_ms; a second signal forces exit.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, rawWebSocket, httpConn, httpGet, connect, wsClient, wsRoundTrip, OP,
  withTimeout, sleep,
} from './lib.mjs';

const T = { timeout: 30000 };

/** Reads frames from a raw client until its close frame (never answering it). */
async function readCloseFrame(raw, ms) {
  const end = Date.now() + ms;
  for (;;) {
    const f = await raw.readFrame(Math.max(1, end - Date.now()));
    if (f.opcode === OP.CLOSE) return f;
  }
}

/** True when a fresh connection to port is refused or never gets a 200. */
async function newConnectionRejected(port) {
  try {
    const r = await httpGet(port, '/healthz', {}, { timeoutMs: 1000 });
    return r.status !== 200 ? `status ${r.status}` : false;
  } catch (e) {
    return e.code || e.message;
  }
}

describe('drain', () => {
  it('SIGTERM: ws clients get 1001, /readyz 503, listener closed, exit 0', T, async () => {
    const srv = await startServer(['--echo', 'true', '--drain_timeout_ms', '1500']);
    try {
      const clients = [];
      for (let i = 0; i < 3; i++) {
        const ws = await wsClient(srv.port, '/echo', {});
        assert.equal((await wsRoundTrip(ws, `c${i}`)).data.toString(), `c${i}`);
        clients.push(ws);
      }
      // a raw client that never answers the close keeps the server draining
      const stall = await rawWebSocket(srv.port, '/echo');
      assert.equal(stall.status, 101);
      // a keep-alive HTTP connection opened before the signal
      const http = await httpConn(srv.port);
      http.request('GET', '/readyz');
      const before = await http.readResponse();
      assert.equal(before.status, 200);
      assert.equal(before.json().status, 'ready');

      const t0 = Date.now();
      srv.proc.kill('SIGTERM');

      const sf = await readCloseFrame(stall, 3000);
      assert.equal(sf.code, 1001, `raw client close code ${sf.code}`);

      const infos = await withTimeout(Promise.all(clients.map((c) => c.closedP)), 3000, 'ws clients closed');
      assert.deepEqual(infos.map((i) => i.code), [1001, 1001, 1001]);

      // the server is still draining (the stalled client has not answered)
      assert.equal(srv.exitInfo, null, `server exited ${Date.now() - t0} ms after SIGTERM, before drain_timeout_ms`);
      let readyErr = null;
      try {
        http.request('GET', '/readyz');
        const during = await http.readResponse(2000);
        assert.equal(during.status, 503, `/readyz during drain: ${during.status} ${during.text}`);
        assert.equal(during.json().status, 'draining');
      } catch (e) {
        readyErr = e;
      }

      const rejected = srv.exitInfo ? 'exited' : await newConnectionRejected(srv.port);

      const r = await srv.waitExit(1500 + 3000);
      const dt = Date.now() - t0;
      assert.equal(r.code, 0, `exit code ${r.code} signal ${r.signal}\n${srv.tail()}`);
      assert.ok(dt < 1500 + 2500, `exited ${dt} ms after SIGTERM (drain_timeout_ms 1500)`);
      if (readyErr) throw new Error(`/readyz on a keep-alive connection during drain: ${readyErr.message}`);
      assert.ok(rejected, 'a new connection during drain was served 200 (listener still accepting)');
      http.close();
      stall.close();
    } finally {
      await srv.stop('SIGKILL').catch(() => {});
    }
  });

  it('SIGTERM with cooperative clients exits 0 quickly (well within drain_timeout_ms)', T, async () => {
    const srv = await startServer(['--echo', 'true', '--drain_timeout_ms', '10000']);
    try {
      const clients = [];
      for (let i = 0; i < 3; i++) clients.push(await wsClient(srv.port, '/echo', {}));
      const t0 = Date.now();
      srv.proc.kill('SIGTERM');
      const infos = await withTimeout(Promise.all(clients.map((c) => c.closedP)), 3000, 'ws clients closed');
      assert.deepEqual(infos.map((i) => i.code), [1001, 1001, 1001]);
      const r = await srv.waitExit(5000);
      const dt = Date.now() - t0;
      assert.equal(r.code, 0, `exit code ${r.code} signal ${r.signal}`);
      assert.ok(dt < 3000, `exited ${dt} ms after SIGTERM with every client cooperating`);
    } finally {
      await srv.stop('SIGKILL').catch(() => {});
    }
  });

  it('SIGTERM with no connections exits 0 promptly', T, async () => {
    const srv = await startServer(['--echo', 'true']);
    try {
      const t0 = Date.now();
      srv.proc.kill('SIGTERM');
      const r = await srv.waitExit(5000);
      assert.equal(r.code, 0);
      assert.ok(Date.now() - t0 < 2000, `exited after ${Date.now() - t0} ms`);
    } finally {
      await srv.stop('SIGKILL').catch(() => {});
    }
  });

  it('SIGINT drains like SIGTERM', T, async () => {
    const srv = await startServer(['--echo', 'true']);
    try {
      const ws = await wsClient(srv.port, '/echo', {});
      srv.proc.kill('SIGINT');
      const info = await withTimeout(ws.closedP, 3000, 'ws close');
      assert.equal(info.code, 1001);
      const r = await srv.waitExit(5000);
      assert.equal(r.code, 0);
    } finally {
      await srv.stop('SIGKILL').catch(() => {});
    }
  });

  for (const second of ['SIGINT', 'SIGTERM']) {
    it(`a second signal (${second}) during drain forces exit`, T, async () => {
      const srv = await startServer(['--echo', 'true', '--drain_timeout_ms', '10000']);
      try {
        const stall = await rawWebSocket(srv.port, '/echo');
        assert.equal(stall.status, 101);
        srv.proc.kill('SIGTERM');
        const f = await readCloseFrame(stall, 3000);
        assert.equal(f.code, 1001);
        await sleep(300);
        assert.equal(srv.exitInfo, null, 'still draining while a client has not answered the close');
        const t0 = Date.now();
        srv.proc.kill(second);
        const r = await srv.waitExit(2000).catch((e) => { throw new Error(`${e.message}: second ${second} did not force exit`); });
        assert.ok(Date.now() - t0 < 1500, `forced exit took ${Date.now() - t0} ms`);
        assert.ok(r.code !== null || r.signal !== null);
        stall.close();
      } finally {
        await srv.stop('SIGKILL').catch(() => {});
      }
    });
  }
});
