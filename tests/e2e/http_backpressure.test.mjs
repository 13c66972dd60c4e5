// Plain-HTTP backpressure: a client that pipelines thousands of requests and reads nothing
// makes the server stop reading it once write_queue_bytes of responses wait unsent, so the
// server's RSS stays under the per-connection bound that SECURITY.md states; other clients are
// served meanwhile, and once the pipeliner reads, it gets every response, in order.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, passthroughPolicyDir, connect, httpGet, procRssKb, sleep, withTimeout, HOST } from './lib.mjs';

const T = { timeout: 120000 };
const N = 8000;                       // about 120 MiB of responses if nothing held them back
const WQ = 1 << 20;                   // write_queue_bytes (the default)
// SECURITY.md: write_queue_bytes of output plus the response that crossed it, one 64 KiB read
// held, max_header_bytes; then allocator slack (freed blocks the allocator keeps).
const BOUND_KB = (2 * WQ + 65536 + 16384) / 1024 + 8 * 1024;

const pathOf = (i) => (i % 4 === 3 ? '/js/app.js' : '/js/room.js');

/** Reads HTTP/1.1 responses off a stream without keeping their bodies: [{status, length}]. */
function responseReader(sock, onResponse) {
  let head = Buffer.alloc(0);
  let skip = -1;                      // body bytes still to skip; -1 while reading a header
  let cur = null;
  sock.on('data', (d) => {
    let off = 0;
    while (off < d.length) {
      if (skip >= 0) {
        const n = Math.min(skip, d.length - off);
        skip -= n;
        off += n;
        if (skip === 0) { onResponse(cur); skip = -1; }
        continue;
      }
      head = Buffer.concat([head, d.subarray(off)]);
      off = d.length;
      const i = head.indexOf('\r\n\r\n');
      if (i < 0) break;
      const lines = head.subarray(0, i).toString('latin1').split('\r\n');
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(lines[0])?.[1]);
      const cl = lines.find((l) => /^content-length:/i.test(l));
      cur = { status, length: cl ? Number(cl.split(':')[1]) : NaN };
      d = head.subarray(i + 4);
      off = 0;
      head = Buffer.alloc(0);
      skip = cur.length;
      if (skip === 0) { onResponse(cur); skip = -1; }
    }
  });
}

describe('plain-HTTP backpressure', () => {
  let srv;
  before(async () => {
    // under ASan, freed blocks sit in its quarantine (256 MiB by default) and count as RSS
    const asan = [process.env.ASAN_OPTIONS, 'quarantine_size_mb=4'].filter(Boolean).join(':');
    srv = await startServer(['--scripts-dir', passthroughPolicyDir(), '--header-timeout-ms', '60000',
      '--write-queue-bytes', String(WQ)], { env: { ASAN_OPTIONS: asan } });
  });
  after(async () => { if (srv) await srv.stop(); });

  it('a non-reading pipeliner keeps RSS bounded, others are served, and it gets every response in order', T, async () => {
    const sizes = {};
    for (const p of ['/js/room.js', '/js/app.js']) {
      const r = await httpGet(srv.port, p);
      assert.equal(r.status, 200);
      sizes[p] = Number(r.headers['content-length']);
    }
    assert.ok(sizes['/js/room.js'] > 4096 && sizes['/js/app.js'] !== sizes['/js/room.js']);
    const baseKb = procRssKb(srv.proc.pid);
    assert.ok(baseKb > 0);

    const sock = await connect(srv.port);
    sock.pause();                     // reads nothing: the kernel buffers fill, then the server's queue
    const got = [];
    responseReader(sock, (r) => got.push(r));
    sock.pause();                     // adding a data listener resumed it
    let req = '';
    for (let i = 0; i < N; i++) req += `GET ${pathOf(i)} HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`;
    sock.write(req);

    // sample the server while it has every request it will get (bounded: 30 x 100 ms)
    let maxKb = 0;
    for (let i = 0; i < 30; i++) {
      await sleep(100);
      maxKb = Math.max(maxKb, procRssKb(srv.proc.pid));
    }
    assert.ok(maxKb - baseKb < BOUND_KB,
      `RSS grew ${maxKb - baseKb} KiB (bound ${BOUND_KB} KiB) for ${N} pipelined requests`);
    assert.equal(got.length, 0);

    const h = await httpGet(srv.port, '/healthz');
    assert.equal(h.status, 200, 'another client is served while the pipeliner is paused');

    const done = new Promise((resolve, reject) => {
      const t = setInterval(() => { if (got.length >= N) { clearInterval(t); resolve(); } }, 20);
      sock.once('close', () => { clearInterval(t); got.length >= N ? resolve() : reject(new Error(`closed after ${got.length}/${N}`)); });
    });
    sock.resume();
    await withTimeout(done, 90000, `${N} pipelined responses`);
    for (let i = 0; i < N; i++) {
      assert.equal(got[i].status, 200, `response ${i}`);
      assert.equal(got[i].length, sizes[pathOf(i)], `response ${i} is for ${pathOf(i)}`);
    }
    sock.destroy();
    assert.equal((await httpGet(srv.port, '/healthz')).status, 200);
  });
});
