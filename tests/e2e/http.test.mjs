// HTTP side of the gateway: probes, metrics, error statuses, keep-alive, pipelining,
// HTTP/1.0 and the slowloris header timeout.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, httpGet, httpRaw, httpConn, parseResponse, parseResponses, parseMetrics,
  metricSum, scrape, connect, wsClient, wsRoundTrip, wsClose, rawWebSocket, sleep, HOST,
} from './lib.mjs';

const T = { timeout: 20000 };

describe('http probes and errors', () => {
  let srv;
  before(async () => { srv = await startServer(['--echo', 'true']); });
  after(async () => { if (srv) await srv.stop('SIGKILL').catch(() => {}); });

  it('GET /healthz answers 200 {"status":"ok"}', T, async () => {
    const r = await httpGet(srv.port, '/healthz');
    assert.equal(r.status, 200, r.text);
    assert.match(r.headers['content-type'] || '', /application\/json/);
    assert.deepEqual(r.json().status, 'ok');
  });

  it('GET /readyz answers 200 {"status":"ready","checks":{...}}', T, async () => {
    const r = await httpGet(srv.port, '/readyz');
    assert.equal(r.status, 200, r.text);
    const j = r.json();
    assert.equal(j.status, 'ready');
    assert.equal(typeof j.checks, 'object');
    assert.ok(j.checks !== null && !Array.isArray(j.checks), 'checks is an object');
  });

  it('GET /metrics is Prometheus text with the core series', T, async () => {
    const r = await httpGet(srv.port, '/metrics');
    assert.equal(r.status, 200);
    assert.match(r.headers['content-type'] || '', /^text\/plain; ?version=0\.0\.4/);
    const samples = parseMetrics(r.text); // throws on a malformed sample line
    const names = new Set(samples.map((s) => s.name));
    for (const n of ['chatgw_connections_open', 'chatgw_connections_total', 'chatgw_http_responses_total',
      'chatgw_ws_frames_in_total', 'chatgw_ws_frames_out_total', 'chatgw_bytes_in_total',
      'chatgw_bytes_out_total', 'chatgw_ws_close_sent_total', 'chatgw_ws_close_received_total',
      'chatgw_build_info']) {
      assert.ok(names.has(n), `metrics lack ${n}`);
    }
    assert.ok(r.text.includes('chatgw_http_responses_total{code="200"}'),
      'chatgw_http_responses_total{code="200"} present (earlier probes answered 200)');
    // every sample family has a TYPE line
    for (const n of names) {
      const base = n.replace(/_(bucket|sum|count)$/, '');
      assert.ok(r.text.includes(`# TYPE ${n} `) || r.text.includes(`# TYPE ${base} `), `no # TYPE for ${n}`);
    }
  });

  it('metrics counters move with traffic', T, async () => {
    const a = (await scrape(srv.port)).samples;
    for (let i = 0; i < 3; i++) assert.equal((await httpGet(srv.port, '/healthz')).status, 200);
    const ws = await wsClient(srv.port, '/echo', { perMessageDeflate: false });
    await wsRoundTrip(ws, 'count me');
    await wsRoundTrip(ws, Buffer.from([1, 2, 3]));
    await wsClose(ws, 1000);
    await sleep(100);
    const b = (await scrape(srv.port)).samples;
    const d = (n, l) => metricSum(b, n, l) - metricSum(a, n, l);
    assert.ok(d('chatgw_http_responses_total', { code: '200' }) >= 4, 'http 200 count grew by >= 4 (3 healthz + 1 metrics)');
    assert.ok(d('chatgw_connections_total') >= 5, `connections_total grew by ${d('chatgw_connections_total')}`);
    assert.ok(d('chatgw_ws_frames_in_total') >= 3, `frames_in grew by ${d('chatgw_ws_frames_in_total')} (2 messages + close)`);
    assert.ok(d('chatgw_ws_frames_out_total') >= 3, `frames_out grew by ${d('chatgw_ws_frames_out_total')}`);
    assert.ok(d('chatgw_ws_close_received_total') >= 1, 'close_received grew');
    assert.ok(d('chatgw_ws_close_sent_total') >= 1, 'close_sent grew');
    assert.ok(d('chatgw_bytes_in_total') > 0, 'bytes_in grew');
    assert.ok(d('chatgw_bytes_out_total') > 0, 'bytes_out grew');
    // the scrape itself is open; the ws connection is not
    assert.ok(metricSum(b, 'chatgw_connections_open') >= 1, 'connections_open counts the scraping connection');
    assert.ok(metricSum(b, 'chatgw_connections_open') < 5, `connections_open ${metricSum(b, 'chatgw_connections_open')} after everything closed`);
  });

  it('unknown path answers 404 with a JSON body', T, async () => {
    const r = await httpGet(srv.port, '/definitely/not/here-xyz');
    assert.equal(r.status, 404);
    assert.doesNotThrow(() => r.json(), `404 body is JSON: ${r.text}`);
  });

  it('POST /healthz answers 405', T, async () => {
    const b = await httpRaw(srv.port,
      `POST /healthz HTTP/1.1\r\nHost: ${HOST}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}`);
    const r = parseResponse(b, { eof: true });
    assert.ok(r, `a response: ${b.toString('latin1').slice(0, 200)}`);
    assert.equal(r.status, 405);
  });

  for (const [label, bytes] of [
    ['garbage request line', 'this is not http\r\n\r\n'],
    ['request line without version', 'GET\r\n\r\n'],
    ['bad HTTP version token', 'GET / HTTQ/1.1\r\nHost: x\r\n\r\n'],
    ['binary junk', Buffer.from([0x00, 0xff, 0x10, 0x0d, 0x0a, 0x0d, 0x0a])],
  ]) {
    it(`malformed request (${label}) answers 400 and closes`, T, async () => {
      const b = await httpRaw(srv.port, bytes, { timeoutMs: 3000 });
      assert.match(b.toString('latin1'), /^HTTP\/1\.1 400 /, `got ${JSON.stringify(b.toString('latin1').slice(0, 120))}`);
      assert.equal(b.closed, true, 'connection closed after the 400');
    });
  }

  it('request headers over max_header_bytes answer 431', T, async () => {
    const big = 'a'.repeat(20000);
    const b = await httpRaw(srv.port, `GET /healthz HTTP/1.1\r\nHost: ${HOST}\r\nX-Big: ${big}\r\n\r\n`);
    assert.match(b.toString('latin1'), /^HTTP\/1\.1 431 /, `got ${JSON.stringify(b.toString('latin1').slice(0, 120))}`);
  });

  it('many small headers over max_header_bytes answer 431', T, async () => {
    let h = '';
    for (let i = 0; h.length < 20000; i++) h += `X-H${i}: ${'v'.repeat(200)}\r\n`;
    const b = await httpRaw(srv.port, `GET /healthz HTTP/1.1\r\nHost: ${HOST}\r\n${h}\r\n`);
    const s = b.toString('latin1');
    // 64 headers is also a legitimate limit; then 431 as well
    assert.match(s, /^HTTP\/1\.1 431 /, `got ${JSON.stringify(s.slice(0, 120))}`);
  });

  it('headers just under the limit are served', T, async () => {
    const r = await httpGet(srv.port, '/healthz', { 'X-Pad': 'p'.repeat(8000) });
    assert.equal(r.status, 200);
  });

  it('a POST body over the limit answers 413', T, async () => {
    const b = await httpRaw(srv.port,
      `POST /api/rooms/lobby/messages HTTP/1.1\r\nHost: ${HOST}\r\nContent-Type: application/json\r\n` +
      'Content-Length: 100000000\r\n\r\n{"text":"');
    assert.match(b.toString('latin1'), /^HTTP\/1\.1 413 /, `got ${JSON.stringify(b.toString('latin1').slice(0, 120))}`);
  });

  it('keep-alive serves several requests on one connection', T, async () => {
    const c = await httpConn(srv.port);
    try {
      for (const p of ['/healthz', '/readyz', '/metrics', '/healthz']) {
        c.request('GET', p);
        const r = await c.readResponse();
        assert.equal(r.status, 200, `${p} -> ${r.status}`);
        assert.doesNotMatch(r.headers.connection || '', /close/i, `${p} must not close a keep-alive connection`);
      }
      assert.equal(c.isClosed, false);
    } finally { c.close(); }
  });

  it('pipelined requests in one write are answered in order', T, async () => {
    const c = await httpConn(srv.port);
    try {
      const req = (p) => `GET ${p} HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`;
      c.write(req('/healthz') + req('/nope-404') + req('/readyz'));
      const r1 = await c.readResponse();
      const r2 = await c.readResponse();
      const r3 = await c.readResponse();
      assert.deepEqual([r1.status, r2.status, r3.status], [200, 404, 200]);
      assert.equal(r1.json().status, 'ok');
      assert.equal(r3.json().status, 'ready');
      // and the connection still works afterwards
      c.request('GET', '/healthz');
      assert.equal((await c.readResponse()).status, 200);
    } finally { c.close(); }
  });

  it('pipelined requests split at odd byte boundaries are answered in order', T, async () => {
    const c = await httpConn(srv.port);
    try {
      const all = Buffer.from(['/healthz', '/readyz', '/healthz']
        .map((p) => `GET ${p} HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`).join(''));
      for (let i = 0; i < all.length; i += 7) {
        c.write(all.subarray(i, i + 7));
        await sleep(1);
      }
      const st = [];
      for (let i = 0; i < 3; i++) st.push((await c.readResponse()).status);
      assert.deepEqual(st, [200, 200, 200]);
    } finally { c.close(); }
  });

  it('HTTP/1.0 without keep-alive is closed after the response', T, async () => {
    const b = await httpRaw(srv.port, 'GET /healthz HTTP/1.0\r\n\r\n', { timeoutMs: 3000 });
    const r = parseResponse(b, { eof: true });
    assert.ok(r, 'a response');
    assert.equal(r.status, 200);
    assert.equal(b.closed, true, 'server closed the HTTP/1.0 connection');
  });

  it('HTTP/1.1 with Connection: close is closed after the response', T, async () => {
    const b = await httpRaw(srv.port, `GET /healthz HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`, { timeoutMs: 3000 });
    assert.match(b.toString('latin1'), /^HTTP\/1\.1 200 /);
    assert.equal(b.closed, true);
  });

  it('the server is still healthy after all the bad requests', T, async () => {
    const r = await httpGet(srv.port, '/healthz');
    assert.equal(r.status, 200);
    assert.equal(srv.exitInfo, null, 'server still running');
  });
});

// RFC 9112 3.2 (Host) and 6.1 (Transfer-Encoding on HTTP/1.0), over raw sockets so nothing
// in between adds or fixes a header.
describe('HTTP/1.1 strictness', () => {
  let srv;
  before(async () => { srv = await startServer(['--echo', 'true']); });
  after(async () => { if (srv) await srv.stop('SIGKILL').catch(() => {}); });

  const text = (b) => JSON.stringify(b.toString('latin1').slice(0, 160));

  for (const [label, head] of [
    ['no Host', 'GET /healthz HTTP/1.1\r\n'],
    ['no Host, keep-alive asked for', 'GET /healthz HTTP/1.1\r\nConnection: keep-alive\r\n'],
    ['two Host lines', `GET /healthz HTTP/1.1\r\nHost: ${HOST}\r\nHost: ${HOST}\r\n`],
    ['two Host lines of different case and value', `GET /healthz HTTP/1.1\r\nHost: ${HOST}\r\nhOsT: evil.example\r\n`],
    ['two Host lines on HTTP/1.0', `GET /healthz HTTP/1.0\r\nHost: ${HOST}\r\nHost: evil.example\r\n`],
    ['two Host lines around a body', `POST /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nHost: b\r\n`],
  ]) {
    it(`${label}: 400, then the connection is closed`, T, async () => {
      const b = await httpRaw(srv.port, head + '\r\n', { timeoutMs: 3000 });
      const rs = parseResponses(b);
      assert.equal(rs.length, 1, `one response: ${text(b)}`);
      assert.equal(rs[0].status, 400, text(b));
      assert.equal(rs[0].json().error, 'bad_request');
      assert.match(rs[0].headers.connection || '', /close/i);
      assert.equal(b.closed, true, 'closed after the 400');
    });
  }

  it('a pipelined request without Host after a good one: 200, 400, close', T, async () => {
    const b = await httpRaw(srv.port,
      `GET /healthz HTTP/1.1\r\nHost: ${HOST}\r\n\r\nGET /readyz HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`);
    assert.deepEqual(parseResponses(b).map((r) => r.status), [200, 400], text(b));
    assert.equal(b.closed, true);
  });

  it('HTTP/1.0 without Host is served', T, async () => {
    const r = parseResponse(await httpRaw(srv.port, 'GET /healthz HTTP/1.0\r\n\r\n'), { eof: true });
    assert.equal(r?.status, 200);
  });

  it('an empty Host on HTTP/1.1 is served (RFC 9112 3.2 allows it)', T, async () => {
    const r = parseResponse(await httpRaw(srv.port, 'GET /healthz HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n'), { eof: true });
    assert.equal(r?.status, 200);
  });

  it('probes as the kubelet sends them are served on one keep-alive connection', T, async () => {
    const c = await httpConn(srv.port);
    try {
      for (const p of ['/healthz', '/readyz']) {
        c.write(`GET ${p} HTTP/1.1\r\nHost: 10.0.0.7:${srv.port}\r\nUser-Agent: kube-probe/1.30\r\n` +
          'Accept: */*\r\nConnection: keep-alive\r\n\r\n');
        assert.equal((await c.readResponse()).status, 200, p);
      }
      assert.equal(c.isClosed, false);
    } finally { c.close(); }
  });

  it('HTTP/1.0 with Transfer-Encoding: one response, Connection: close, closed; what follows is not run', T, async () => {
    // the second request rides in the chunked framing the server must not trust
    const b = await httpRaw(srv.port,
      'GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n' +
      'GET /readyz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n', { timeoutMs: 3000 });
    const rs = parseResponses(b);
    assert.equal(rs.length, 1, `exactly one response: ${text(b)}`);
    assert.equal(rs[0].status, 200);
    assert.equal(rs[0].json().status, 'ok', 'the answer is the first request\'s');
    assert.match(rs[0].headers.connection || '', /close/i);
    assert.equal(b.closed, true, 'closed after the response');
  });

  it('HTTP/1.0 keep-alive without Transfer-Encoding stays open (the close above is the TE)', T, async () => {
    const c = await httpConn(srv.port);
    try {
      for (const p of ['/healthz', '/readyz']) {
        c.write(`GET ${p} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n`);
        const r = await c.readResponse();
        assert.equal(r.status, 200, p);
        assert.doesNotMatch(r.headers.connection || '', /close/i);
      }
      assert.equal(c.isClosed, false);
    } finally { c.close(); }
  });

  it('the WebSocket upgrade needs its Host too, and works with one', T, async () => {
    const bad = await rawWebSocket(srv.port, '/echo', { Host: null });
    try {
      assert.equal(bad.status, 400);
      await Promise.race([bad.closed, sleep(3000)]);
      assert.equal(bad.isClosed, true);
    } finally { bad.close(); }
    const two = await rawWebSocket(srv.port, '/echo', { host: 'evil.example' });   // beside the helper's Host
    try { assert.equal(two.status, 400); } finally { two.close(); }
    const ws = await wsClient(srv.port, '/echo', { perMessageDeflate: false });
    await wsRoundTrip(ws, 'still upgrades');
    await wsClose(ws, 1000);
  });
});

describe('slowloris and header timeout', () => {
  let srv;
  before(async () => {
    srv = await startServer(['--echo', 'true', '--header_timeout_ms', '500',
      '--ping_interval_ms', '500', '--idle_timeout_ms', '1500']);
  });
  after(async () => { if (srv) await srv.stop('SIGKILL').catch(() => {}); });

  it('a stalled partial request gets 408 and is closed, while a good client is served', T, async () => {
    const t0 = Date.now();
    const slow = httpRaw(srv.port, `GET /healthz HTTP/1.1\r\nHost: ${HOST}\r\nX-Partial: yes`, { timeoutMs: 4000 });
    await sleep(200);
    const good = await httpGet(srv.port, '/healthz');
    assert.equal(good.status, 200, 'good client served while the slowloris stalls');
    const b = await slow;
    const dt = Date.now() - t0;
    assert.match(b.toString('latin1'), /^HTTP\/1\.1 408 /, `got ${JSON.stringify(b.toString('latin1').slice(0, 120))}`);
    assert.equal(b.closed, true, 'closed after the 408');
    assert.ok(dt >= 400, `408 came after ${dt} ms; header_timeout_ms is 500`);
    assert.ok(dt < 3500, `408 came after ${dt} ms`);
  });

  it('a stalled partial request line gets 408', T, async () => {
    const b = await httpRaw(srv.port, 'GET /hea', { timeoutMs: 4000 });
    assert.match(b.toString('latin1'), /^HTTP\/1\.1 408 /, `got ${JSON.stringify(b.toString('latin1').slice(0, 120))}`);
    assert.equal(b.closed, true);
  });

  it('a slowloris that trickles header bytes is still cut off after header_timeout_ms', T, async () => {
    const s = await connect(srv.port);
    const chunks = [];
    let closed = false;
    s.on('data', (d) => chunks.push(d));
    s.on('close', () => { closed = true; });
    s.on('error', () => {});
    const t0 = Date.now();
    s.write(`GET /healthz HTTP/1.1\r\nHost: ${HOST}\r\nX-Slow: `);
    while (!closed && Date.now() - t0 < 4000) {
      await sleep(100);
      if (!closed) s.write('a');
    }
    s.destroy();
    const dt = Date.now() - t0;
    assert.equal(closed, true, `still open after ${dt} ms of trickling (header timeout must be total, not idle)`);
    assert.ok(dt < 3500, `closed after ${dt} ms`);
    const got = Buffer.concat(chunks).toString('latin1');
    assert.match(got, /^HTTP\/1\.1 408 /, `got ${JSON.stringify(got.slice(0, 120))}`);
  });

  it('an idle keep-alive connection (no partial request) is closed after the timeout', T, async () => {
    const c = await httpConn(srv.port);
    try {
      c.request('GET', '/healthz');
      assert.equal((await c.readResponse()).status, 200);
      const t0 = Date.now();
      await Promise.race([c.closed, sleep(5000)]);
      assert.equal(c.isClosed, true, `idle keep-alive connection still open after ${Date.now() - t0} ms`);
    } finally { c.close(); }
  });

  it('a connection that never sends anything is closed after the timeout', T, async () => {
    const b = await httpRaw(srv.port, null, { timeoutMs: 5000 });
    assert.equal(b.closed, true, 'silent connection closed');
  });

  it('a complete request sent just before the timeout is answered normally', T, async () => {
    const c = await httpConn(srv.port);
    try {
      c.write(`GET /healthz HTTP/1.1\r\nHost: ${HOST}\r\n`);
      await sleep(250);
      c.write('\r\n');
      const r = await c.readResponse();
      assert.equal(r.status, 200);
    } finally { c.close(); }
  });
});

describe('configuration errors', () => {
  it('a wrong value or a workers count out of range: one line naming the key, exit 2', T, async () => {
    for (const [args, key] of [[['--max-text-bytes', 'lots'], 'max_text_bytes'], [['--workers', '0'], 'workers']]) {
      const r = await startServer(args).catch((e) => e);
      assert.ok(r instanceof Error, `${args.join(' ')} does not start`);
      assert.match(r.message, /code 2/);
      assert.match(r.message, new RegExp(`config: ${key}: `));
    }
  });
});
