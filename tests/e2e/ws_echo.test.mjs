// WebSocket /echo: sizes with and without permessage-deflate, fragmentation, byte-at-a-time
// input, subprotocol selection, the echo switch and keepalive.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, rawWebSocket, makeFrame, closePayload, OP, wsClient, wsRoundTrip, wsClose,
  asciiOf, bytesOf, sleep, withTimeout, WebSocket,
} from './lib.mjs';

const T = { timeout: 20000 };
const SIZES = [0, 125, 126, 65535, 65536, 1048576];

describe('echo with permessage-deflate enabled on the server', () => {
  let srv;
  before(async () => { srv = await startServer(['--echo', 'true']); });
  after(async () => { if (srv) await srv.stop('SIGKILL').catch(() => {}); });

  for (const mode of ['on', 'off']) {
    describe(`client compression ${mode}`, () => {
      let ws;
      before(async () => {
        ws = await wsClient(srv.port, '/echo', {
          perMessageDeflate: mode === 'on' ? { threshold: 0 } : false,
          maxPayload: 8 * 1048576,
        });
      });
      after(async () => { if (ws) await wsClose(ws).catch(() => ws.terminate()); });

      it(`negotiated extensions (${mode})`, T, () => {
        if (mode === 'on') assert.match(ws.extensions, /permessage-deflate/, `extensions: "${ws.extensions}"`);
        else assert.equal(ws.extensions, '');
      });

      for (const n of SIZES) {
        it(`text ${n} bytes echoed (deflate ${mode})`, T, async () => {
          const s = asciiOf(n, n + 11);
          const r = await wsRoundTrip(ws, s, { binary: false, ms: 10000 });
          assert.equal(r.isBinary, false, 'echoed as text');
          assert.equal(r.data.length, n);
          assert.ok(Buffer.from(s, 'latin1').equals(r.data), 'same bytes');
        });
        it(`binary ${n} bytes echoed (deflate ${mode})`, T, async () => {
          const b = bytesOf(n, n + 3);
          // Incompressible 1 MiB would deflate to slightly more than max_frame_bytes on the wire;
          // with compression on use 7-bit random bytes, which deflate below 1 MiB.
          if (mode === 'on') for (let i = 0; i < b.length; i++) b[i] &= 0x7f;
          const r = await wsRoundTrip(ws, b, { binary: true, ms: 10000 });
          assert.equal(r.isBinary, true, 'echoed as binary');
          assert.equal(r.data.length, n);
          assert.ok(b.equals(r.data), 'same bytes');
        });
      }

      it(`compressible 1 MiB text echoed (deflate ${mode})`, T, async () => {
        const s = 'hello chatgw '.repeat(80660).slice(0, 1048576);
        const r = await wsRoundTrip(ws, s, { binary: false, ms: 10000 });
        assert.equal(r.data.toString('utf8'), s);
      });

      it(`multibyte UTF-8 text echoed (deflate ${mode})`, T, async () => {
        const s = 'héllo wörld ✓ 日本語 🎉 '.repeat(500);
        const r = await wsRoundTrip(ws, s, { binary: false });
        assert.equal(r.isBinary, false);
        assert.equal(r.data.toString('utf8'), s);
      });

      it(`many messages in a burst come back in order (deflate ${mode})`, T, async () => {
        const got = [];
        const done = new Promise((resolve) => {
          const on = (d) => { got.push(d.toString()); if (got.length === 200) { ws.off('message', on); resolve(); } };
          ws.on('message', on);
        });
        for (let i = 0; i < 200; i++) ws.send(`m${i}`);
        await withTimeout(done, 10000, '200 echoes');
        assert.deepEqual(got, Array.from({ length: 200 }, (_, i) => `m${i}`));
      });
    });
  }

  it('server echo frames are unmasked and compressed only when negotiated', T, async () => {
    const raw = await rawWebSocket(srv.port, '/echo', { 'Sec-WebSocket-Extensions': 'permessage-deflate' });
    try {
      assert.equal(raw.status, 101);
      assert.equal(raw.headers['sec-websocket-accept'], raw.expectedAccept);
      assert.match(raw.headers['sec-websocket-extensions'] || '', /permessage-deflate/);
      await raw.sendFrame({ opcode: OP.TEXT, payload: 'abc'.repeat(100) });
      const f = await raw.readFrame();
      assert.equal(f.masked, false, 'server frames are never masked');
      assert.equal(f.opcode, OP.TEXT);
    } finally { raw.close(); }
    const plain = await rawWebSocket(srv.port, '/echo', {});
    try {
      assert.equal(plain.status, 101);
      assert.equal(plain.headers['sec-websocket-extensions'], undefined, 'no extension when not offered');
      await plain.sendFrame({ opcode: OP.BINARY, payload: Buffer.from([9, 8, 7]) });
      const f = await plain.readFrame();
      assert.equal(f.rsv1, false, 'no RSV1 without the extension');
      assert.deepEqual([...f.payload], [9, 8, 7]);
    } finally { plain.close(); }
  });

  it('fragmented message with a ping in the middle: pong first, then the whole message', T, async () => {
    const raw = await rawWebSocket(srv.port, '/echo');
    try {
      assert.equal(raw.status, 101);
      await raw.sendFrame({ opcode: OP.TEXT, fin: false, payload: 'Hel' });
      await raw.sendFrame({ opcode: OP.PING, payload: 'p1' });
      await raw.sendFrame({ opcode: OP.CONT, fin: false, payload: 'lo ' });
      await raw.sendFrame({ opcode: OP.CONT, fin: true, payload: 'World' });
      const f1 = await raw.readFrame();
      assert.equal(f1.opcode, OP.PONG, `first frame is the pong, got opcode ${f1.opcode}`);
      assert.equal(f1.payload.toString(), 'p1');
      const m = await raw.readMessage();
      assert.equal(m.opcode, OP.TEXT);
      assert.equal(m.payload.toString(), 'Hello World');
    } finally { raw.close(); }
  });

  it('fragmented binary with empty fragments is echoed whole', T, async () => {
    const raw = await rawWebSocket(srv.port, '/echo');
    try {
      await raw.sendFrame({ opcode: OP.BINARY, fin: false, payload: Buffer.alloc(0) });
      await raw.sendFrame({ opcode: OP.CONT, fin: false, payload: Buffer.from([1, 2]) });
      await raw.sendFrame({ opcode: OP.CONT, fin: false, payload: Buffer.alloc(0) });
      await raw.sendFrame({ opcode: OP.CONT, fin: true, payload: Buffer.from([3]) });
      const m = await raw.readMessage();
      assert.equal(m.opcode, OP.BINARY);
      assert.deepEqual([...m.payload], [1, 2, 3]);
    } finally { raw.close(); }
  });

  it('ping with payload gets a pong with the same payload; empty ping too', T, async () => {
    const raw = await rawWebSocket(srv.port, '/echo');
    try {
      const p = bytesOf(125, 5);
      await raw.sendFrame({ opcode: OP.PING, payload: p });
      const f = await raw.readFrame();
      assert.equal(f.opcode, OP.PONG);
      assert.ok(f.payload.equals(p));
      await raw.sendFrame({ opcode: OP.PING });
      const g = await raw.readFrame();
      assert.equal(g.opcode, OP.PONG);
      assert.equal(g.payload.length, 0);
      // an unsolicited pong is ignored
      await raw.sendFrame({ opcode: OP.PONG, payload: 'x' });
      await raw.sendFrame({ opcode: OP.TEXT, payload: 'after pong' });
      const m = await raw.readMessage();
      assert.equal(m.payload.toString(), 'after pong');
    } finally { raw.close(); }
  });

  // The same frame sequence sent whole and sent one byte per write must give the same answers.
  const sequence = () => [
    makeFrame({ opcode: OP.TEXT, payload: 'hello' }),
    makeFrame({ opcode: OP.BINARY, payload: Buffer.from(Array.from({ length: 256 }, (_, i) => i)) }),
    makeFrame({ opcode: OP.TEXT, fin: false, payload: Buffer.from('fr€', 'utf8').subarray(0, 4) }), // split inside €
    makeFrame({ opcode: OP.PING, payload: 'mid' }),
    makeFrame({ opcode: OP.CONT, fin: true, payload: Buffer.concat([Buffer.from('fr€', 'utf8').subarray(4), Buffer.from('agment')]) }),
    makeFrame({ opcode: OP.TEXT, payload: asciiOf(300, 3) }),             // 16-bit length form
    makeFrame({ opcode: OP.CLOSE, payload: closePayload(1000, 'bye') }),
  ];
  const normalise = (frames) => frames.map((f) => (f.opcode === OP.CLOSE
    ? { opcode: f.opcode, code: f.code }
    : { opcode: f.opcode, fin: f.fin, payload: f.payload.toString('hex') }));
  const expected = [
    { opcode: OP.TEXT, payload: Buffer.from('hello').toString('hex') },
    { opcode: OP.BINARY, payload: Buffer.from(Array.from({ length: 256 }, (_, i) => i)).toString('hex') },
    { opcode: OP.PONG, payload: Buffer.from('mid').toString('hex') },
    { opcode: OP.TEXT, payload: Buffer.from('fr€agment').toString('hex') },
    { opcode: OP.TEXT, payload: Buffer.from(asciiOf(300, 3)).toString('hex') },
    { opcode: OP.CLOSE, code: 1000 },
  ];
  // joins fragmented server messages so that the comparison does not depend on how it frames
  const messages = (frames) => {
    const out = [];
    let cur = null;
    for (const f of frames) {
      if (f.opcode >= 8) { out.push(f.opcode === OP.CLOSE ? { opcode: f.opcode, code: f.code } : { opcode: f.opcode, payload: f.payload.toString('hex') }); continue; }
      if (f.opcode !== OP.CONT) cur = { opcode: f.opcode, parts: [] };
      cur.parts.push(f.payload);
      if (f.fin) { out.push({ opcode: cur.opcode, payload: Buffer.concat(cur.parts).toString('hex') }); cur = null; }
    }
    return out;
  };

  it('whole frames: echo, pong, reassembled echo, close 1000 echoed, TCP closed', T, async () => {
    const raw = await rawWebSocket(srv.port, '/echo');
    assert.equal(raw.status, 101);
    await raw.send(Buffer.concat(sequence()));
    const frames = await raw.readUntilClose(5000);
    assert.deepEqual(messages(frames), expected);
  });

  it('one byte per write gives exactly the same answers as whole frames', { timeout: 40000 }, async () => {
    const whole = await rawWebSocket(srv.port, '/echo');
    await whole.send(Buffer.concat(sequence()));
    const ref = await whole.readUntilClose(5000);

    const raw = await rawWebSocket(srv.port, '/echo');
    assert.equal(raw.status, 101);
    raw.socket.setNoDelay(true);
    const bytes = Buffer.concat(sequence());
    for (let i = 0; i < bytes.length; i++) {
      const ok = await raw.send(bytes.subarray(i, i + 1));
      assert.ok(ok || i === bytes.length - 1, `write of byte ${i} failed (connection closed early?)`);
      await new Promise((r) => setImmediate(r));
    }
    const got = await raw.readUntilClose(5000);
    assert.deepEqual(messages(got), messages(ref));
    assert.deepEqual(messages(got), expected);
    assert.deepEqual(normalise(got).map((f) => f.opcode), normalise(ref).map((f) => f.opcode), 'same framing');
  });

  it('subprotocol chatgw.v1 is selected when offered', T, async () => {
    const a = await wsClient(srv.port, '/echo', {}, ['chatgw.v1']);
    assert.equal(a.protocol, 'chatgw.v1');
    assert.equal((await wsRoundTrip(a, 'sp')).data.toString(), 'sp');
    await wsClose(a);
    const b = await wsClient(srv.port, '/echo', {}, ['x.other', 'chatgw.v1']);
    assert.equal(b.protocol, 'chatgw.v1');
    await wsClose(b);
    const c = await wsClient(srv.port, '/echo', {});
    assert.equal(c.protocol, '', 'no subprotocol when none offered');
    await wsClose(c);
  });

  it('an unknown subprotocol is not echoed back', T, async () => {
    const raw = await rawWebSocket(srv.port, '/echo', { 'Sec-WebSocket-Protocol': 'x.unknown' });
    try {
      assert.equal(raw.status, 101, `status ${raw.status}`);
      assert.equal(raw.headers['sec-websocket-protocol'], undefined);
    } finally { raw.close(); }
  });

  it('client close 4000 with a reason is echoed with the same code (ws client)', T, async () => {
    const ws = await wsClient(srv.port, '/echo', {});
    const info = await wsClose(ws, 4000);
    assert.equal(info.code, 4000);
  });
});

describe('permessage-deflate disabled on the server', () => {
  let srv;
  before(async () => { srv = await startServer(['--echo', 'true', '--permessage_deflate', 'false']); });
  after(async () => { if (srv) await srv.stop('SIGKILL').catch(() => {}); });

  it('no Sec-WebSocket-Extensions in the response even when the client offers deflate', T, async () => {
    const raw = await rawWebSocket(srv.port, '/echo', { 'Sec-WebSocket-Extensions': 'permessage-deflate; client_max_window_bits' });
    try {
      assert.equal(raw.status, 101);
      assert.equal(raw.headers['sec-websocket-extensions'], undefined);
    } finally { raw.close(); }
    const ws = await wsClient(srv.port, '/echo', { perMessageDeflate: { threshold: 0 } });
    try {
      assert.equal(ws.extensions, '');
      for (const n of [0, 125, 126, 65535, 65536, 1048576]) {
        const s = asciiOf(n, n);
        const r = await wsRoundTrip(ws, s, { binary: false, ms: 10000 });
        assert.equal(r.data.length, n);
        assert.equal(r.data.toString('latin1'), s);
        const b = bytesOf(n, n);
        const rb = await wsRoundTrip(ws, b, { binary: true, ms: 10000 });
        assert.equal(rb.isBinary, true);
        assert.ok(rb.data.equals(b));
      }
    } finally { await wsClose(ws).catch(() => ws.terminate()); }
  });
});

describe('echo disabled', () => {
  let srv;
  before(async () => { srv = await startServer([]); });
  after(async () => { if (srv) await srv.stop('SIGKILL').catch(() => {}); });

  it('/echo answers 404 when echo is off', T, async () => {
    const raw = await rawWebSocket(srv.port, '/echo');
    raw.close();
    assert.equal(raw.status, 404);
  });
});

describe('keepalive', () => {
  let srv;
  before(async () => {
    srv = await startServer(['--echo', 'true', '--ping_interval_ms', '200', '--idle_timeout_ms', '600']);
  });
  after(async () => { if (srv) await srv.stop('SIGKILL').catch(() => {}); });

  it('a ws client that answers pings stays open across 1.5 s', T, async () => {
    const ws = await wsClient(srv.port, '/echo', {});
    let pings = 0;
    ws.on('ping', () => { pings++; });
    await sleep(1500);
    assert.equal(ws.readyState, WebSocket.OPEN, `closed: ${JSON.stringify(ws.closeInfo)}`);
    assert.ok(pings >= 3, `got ${pings} pings in 1.5 s with ping_interval_ms 200`);
    assert.equal((await wsRoundTrip(ws, 'still here')).data.toString(), 'still here');
    await wsClose(ws);
  });

  it('a raw client that never answers is pinged, then closed after idle_timeout_ms', T, async () => {
    const raw = await rawWebSocket(srv.port, '/echo');
    assert.equal(raw.status, 101);
    const t0 = Date.now();
    const frames = await raw.readUntilClose(4000);
    const dt = Date.now() - t0;
    const pings = frames.filter((f) => f.opcode === OP.PING).length;
    assert.ok(pings >= 1, `saw ${pings} pings before the close`);
    assert.ok(dt >= 400, `closed after only ${dt} ms (idle_timeout_ms 600)`);
    assert.ok(dt < 3000, `closed after ${dt} ms`);
  });
});
