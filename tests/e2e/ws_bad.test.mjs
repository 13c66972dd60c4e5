// Bad WebSocket clients: every handshake error and framing violation gets the status or close
// code that RFC 6455 / RFC 7692 prescribe, and a good echo client on the same server keeps
// being served the whole time.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import zlib from 'node:zlib';
import {
  startServer, rawWebSocket, makeFrame, closePayload, OP, wsClient, wsRoundTrip, wsClose,
  bytesOf, sleep, connect, WebSocket,
} from './lib.mjs';

const T = { timeout: 20000 };
const TAIL = Buffer.from([0x00, 0x00, 0xff, 0xff]);
const deflate = (buf) => {
  const out = zlib.deflateRawSync(buf, { finishFlush: zlib.constants.Z_SYNC_FLUSH });
  assert.ok(out.subarray(-4).equals(TAIL));
  return out.subarray(0, -4);
};
const inflate = (buf) => zlib.inflateRawSync(Buffer.concat([buf, TAIL]), { finishFlush: zlib.constants.Z_SYNC_FLUSH });

/**
 * Good clients for one server: `probe` answers a round trip after every bad case, `bg` echoes
 * in a loop for the whole describe and records any failure.
 */
function goodClients(getSrv) {
  const g = { probe: null, bg: null, errors: [], count: 0, stop: false, loop: null };
  before(async () => {
    const port = getSrv().port;
    g.probe = await wsClient(port, '/echo', { perMessageDeflate: { threshold: 0 } });
    g.bg = await wsClient(port, '/echo', { perMessageDeflate: false });
    g.loop = (async () => {
      for (let i = 0; !g.stop; i++) {
        try {
          const r = await wsRoundTrip(g.bg, `bg ${i}`, { binary: false, ms: 3000 });
          if (r.data.toString() !== `bg ${i}`) throw new Error(`echo mismatch: ${r.data}`);
          g.count++;
        } catch (e) {
          g.errors.push(e.message);
          return;
        }
        await sleep(5);
      }
    })();
  });
  after(async () => {
    g.stop = true;
    await g.loop?.catch(() => {});
    for (const c of [g.probe, g.bg]) if (c) await wsClose(c).catch(() => c.terminate());
  });
  g.check = async (label) => {
    assert.equal(g.probe.readyState, WebSocket.OPEN, `good client closed after ${label}: ${JSON.stringify(g.probe.closeInfo)}`);
    const msg = `still served after ${label}`;
    const r = await wsRoundTrip(g.probe, msg, { binary: false, ms: 3000 });
    assert.equal(r.data.toString(), msg);
    assert.deepEqual(g.errors, [], 'background echo client saw no failure');
  };
  return g;
}

// ---------------------------------------------------------------------------------------------

describe('handshake errors', () => {
  let srv;
  before(async () => { srv = await startServer(['--echo', 'true']); });
  after(async () => { if (srv) await srv.stop('SIGKILL').catch(() => {}); });
  const good = goodClients(() => srv);

  const cases = [
    ['non-GET (POST) upgrade', { method: 'POST' }, {}, [400]],
    ['missing Sec-WebSocket-Version', {}, { 'Sec-WebSocket-Version': null }, [426]],
    ['Sec-WebSocket-Version 8', {}, { 'Sec-WebSocket-Version': '8' }, [426]],
    ['Sec-WebSocket-Version 14', {}, { 'Sec-WebSocket-Version': '14' }, [426]],
    ['missing Sec-WebSocket-Key', {}, { 'Sec-WebSocket-Key': null }, [400]],
    ['Sec-WebSocket-Key not base64', {}, { 'Sec-WebSocket-Key': 'not a key!!' }, [400]],
    ['Sec-WebSocket-Key of 15 bytes', {}, { 'Sec-WebSocket-Key': Buffer.alloc(15, 1).toString('base64') }, [400]],
    ['Sec-WebSocket-Key of 17 bytes', {}, { 'Sec-WebSocket-Key': Buffer.alloc(17, 1).toString('base64') }, [400]],
    ['Upgrade: h2c instead of websocket', {}, { Upgrade: 'h2c' }, [400, 426]],
    ['Connection without Upgrade token', {}, { Connection: 'keep-alive' }, [400, 426]],
    ['Origin of another host', {}, { Origin: 'http://evil.example' }, [403]],
    ['Origin of another port on the same IP', {}, { Origin: 'http://127.0.0.1:1' }, [403]],
  ];
  for (const [label, opts, headers, statuses] of cases) {
    it(`${label} -> ${statuses.join('/')}`, T, async () => {
      const raw = await rawWebSocket(srv.port, '/echo', headers, { method: opts.method || 'GET' });
      raw.close();
      assert.ok(statuses.includes(raw.status), `${label}: expected ${statuses.join(' or ')}, got ${raw.status} ${raw.text}`);
      if (raw.status === 426) {
        assert.match(raw.headers['sec-websocket-version'] || '', /\b13\b/, 'a 426 names Sec-WebSocket-Version: 13');
      }
      await good.check(label);
    });
  }

  it('the same-host Origin is accepted', T, async () => {
    const raw = await rawWebSocket(srv.port, '/echo', { Origin: `http://127.0.0.1:${srv.port}` });
    raw.close();
    assert.equal(raw.status, 101);
    assert.equal(raw.headers['sec-websocket-accept'], raw.expectedAccept);
    await good.check('same-origin handshake');
  });

  it('a handshake split into single bytes still succeeds', T, async () => {
    // rawWebSocket writes the request at once; here the request is trickled by hand
    const s = await connect(srv.port);
    const key = Buffer.alloc(16, 7).toString('base64');
    const req = Buffer.from(`GET /echo HTTP/1.1\r\nHost: 127.0.0.1:${srv.port}\r\nUpgrade: websocket\r\n` +
      `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    let got = '';
    s.on('data', (d) => { got += d.toString('latin1'); });
    s.on('error', () => {});
    for (let i = 0; i < req.length; i++) {
      await new Promise((r) => s.write(req.subarray(i, i + 1), r));
      await new Promise((r) => setImmediate(r));
    }
    for (let i = 0; i < 100 && !got.includes('\r\n\r\n'); i++) await sleep(20);
    s.destroy();
    assert.match(got, /^HTTP\/1\.1 101 /);
  });
});

describe('allowed_origins *', () => {
  let srv;
  before(async () => { srv = await startServer(['--echo', 'true', '--allowed_origins', '*']); });
  after(async () => { if (srv) await srv.stop('SIGKILL').catch(() => {}); });

  it('any Origin passes', T, async () => {
    for (const origin of ['http://evil.example', 'https://other.example:8443', 'null']) {
      const raw = await rawWebSocket(srv.port, '/echo', { Origin: origin });
      raw.close();
      assert.equal(raw.status, 101, `Origin ${origin} -> ${raw.status}`);
    }
  });
});

// ---------------------------------------------------------------------------------------------

/** Opens a raw client, sends frames, expects a close frame with code and then the TCP close. */
async function expectCloseCode(port, frames, codes, { extensions } = {}) {
  const headers = extensions ? { 'Sec-WebSocket-Extensions': extensions } : {};
  const raw = await rawWebSocket(port, '/echo', headers);
  try {
    assert.equal(raw.status, 101, `handshake: ${raw.status}`);
    if (extensions) assert.match(raw.headers['sec-websocket-extensions'] || '', /permessage-deflate/, 'deflate negotiated');
    for (const f of frames) await raw.send(f);
    const c = await raw.expectClose(5000);
    const want = Array.isArray(codes) ? codes : [codes];
    assert.ok(want.includes(c.code), `expected close ${want.join(' or ')}, got ${c.code} ${JSON.stringify(c.reason)}`);
    assert.equal(c.tcpClosed, true, 'server closed TCP after its close frame');
    assert.ok(c.before.every((f) => f.opcode !== OP.TEXT && f.opcode !== OP.BINARY && f.opcode !== OP.CONT),
      `no data echoed before the close: ${c.before.map((f) => f.opcode)}`);
    return c;
  } finally { raw.close(); }
}

const text = (payload, o = {}) => makeFrame({ opcode: OP.TEXT, payload, ...o });
const cont = (payload, o = {}) => makeFrame({ opcode: OP.CONT, payload, ...o });
const bin = (payload, o = {}) => makeFrame({ opcode: OP.BINARY, payload, ...o });
const b = (...x) => Buffer.from(x);

describe('framing errors (default limits, deflate available)', () => {
  let srv;
  before(async () => { srv = await startServer(['--echo', 'true']); });
  after(async () => { if (srv) await srv.stop('SIGKILL').catch(() => {}); });
  const good = goodClients(() => srv);

  const cases = [
    ['unmasked client frame', [text('hi', { mask: false })], 1002],
    ['RSV1 without an extension', [text('hi', { rsv1: true })], 1002],
    ['RSV2', [text('hi', { rsv2: true })], 1002],
    ['RSV3', [bin(b(1), { rsv3: true })], 1002],
    ['unknown data opcode 3', [makeFrame({ opcode: 3, payload: 'x' })], 1002],
    ['unknown data opcode 7', [makeFrame({ opcode: 7 })], 1002],
    ['unknown control opcode 0xB', [makeFrame({ opcode: 0xB })], 1002],
    ['unknown control opcode 0xF', [makeFrame({ opcode: 0xF, payload: 'x' })], 1002],
    ['ping of 126 bytes', [makeFrame({ opcode: OP.PING, payload: Buffer.alloc(126, 1) })], 1002],
    ['pong of 126 bytes', [makeFrame({ opcode: OP.PONG, payload: Buffer.alloc(126, 1) })], 1002],
    ['close of 126 bytes', [makeFrame({ opcode: OP.CLOSE, payload: closePayload(1000, 'r'.repeat(124)) })], 1002],
    ['fragmented ping', [makeFrame({ opcode: OP.PING, fin: false, payload: 'a' }), makeFrame({ opcode: OP.CONT, payload: 'b' })], 1002],
    ['fragmented close', [makeFrame({ opcode: OP.CLOSE, fin: false, payload: closePayload(1000) })], 1002],
    ['continuation without a start', [cont('orphan')], 1002],
    ['non-final continuation without a start', [cont('orphan', { fin: false })], 1002],
    ['new text frame during a fragmented message', [text('a', { fin: false }), text('b')], 1002],
    ['new binary frame during a fragmented text', [text('a', { fin: false }), cont('b', { fin: false }), bin(b(1))], 1002],
    ['64-bit length with the top bit set', [Buffer.concat([b(0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1), b(1, 2, 3, 4)])], [1002, 1009]],
    ['invalid UTF-8 byte 0xFF', [text(b(0x61, 0xff))], 1007],
    ['overlong "/" (C0 AF)', [text(b(0xc0, 0xaf))], 1007],
    ['overlong 3-byte (E0 80 AF)', [text(b(0xe0, 0x80, 0xaf))], 1007],
    ['UTF-16 surrogate (ED A0 80)', [text(b(0xed, 0xa0, 0x80))], 1007],
    ['code point above U+10FFFF (F4 90 80 80)', [text(b(0xf4, 0x90, 0x80, 0x80))], 1007],
    ['truncated sequence at the end of a message', [text(b(0x61, 0xe2, 0x82))], 1007],
    ['invalid UTF-8 split across fragments', [text(b(0x61, 0x62, 0xf0, 0x90), { fin: false }), cont(b(0x28, 0x29))], 1007],
    ['sequence left open by the final fragment', [text(b(0x78, 0xe2), { fin: false }), cont(b(0x82))], 1007],
    ['invalid UTF-8 in the first of many fragments', [text(b(0xff), { fin: false }), cont('ok', { fin: false }), cont('end')], 1007],
    ['close with a 1-byte payload', [makeFrame({ opcode: OP.CLOSE, payload: b(0x03) })], 1002],
    ...[0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535].map((code) =>
      [`close with invalid code ${code}`, [makeFrame({ opcode: OP.CLOSE, payload: closePayload(code) })], 1002]),
    ['close reason with invalid UTF-8', [makeFrame({ opcode: OP.CLOSE, payload: closePayload(1000, b(0x62, 0xff, 0x65)) })], 1007],
    ['close reason with a surrogate', [makeFrame({ opcode: OP.CLOSE, payload: closePayload(1000, b(0xed, 0xbf, 0xbf)) })], 1007],
    ['frame over max_frame_bytes (header announces 1 MiB + 1)',
      [makeFrame({ opcode: OP.BINARY, payload: Buffer.alloc(4096, 1), length: 1048577 }).subarray(0, 14 + 4096)], 1009],
    ['message over max_message_bytes (2 fragments of 600 KiB)',
      [bin(bytesOf(614400, 1), { fin: false }), cont(bytesOf(614400, 2))], 1009],
    ['message over max_message_bytes (text, 2 fragments of 600 KiB)',
      [text(Buffer.alloc(614400, 0x61), { fin: false }), cont(Buffer.alloc(614400, 0x62))], 1009],
  ];

  for (const [label, frames, code] of cases) {
    it(`${label} -> ${code}`, T, async () => {
      await expectCloseCode(srv.port, frames, code);
      await good.check(label);
    });
  }

  // permessage-deflate negotiated by the raw client
  const PMD = 'permessage-deflate';

  it('raw deflate client: a compressed message is echoed (sanity check of the codec used below)', T, async () => {
    // each reply is inflated on its own, so ask for server_no_context_takeover (chatgw always uses it)
    const raw = await rawWebSocket(srv.port, '/echo', { 'Sec-WebSocket-Extensions': `${PMD}; server_no_context_takeover` });
    try {
      assert.equal(raw.status, 101);
      assert.match(raw.headers['sec-websocket-extensions'] || '', /permessage-deflate/);
      const msg = Buffer.from('compressed hello '.repeat(20));
      await raw.sendFrame({ opcode: OP.TEXT, rsv1: true, payload: deflate(msg) });
      const m = await raw.readMessage();
      assert.equal(m.opcode, OP.TEXT);
      const data = m.rsv1 ? inflate(m.payload) : m.payload;
      assert.ok(data.equals(msg), 'echo matches');
      // a fragmented compressed message: RSV1 on the first frame only
      const d = deflate(msg);
      await raw.sendFrame({ opcode: OP.BINARY, rsv1: true, fin: false, payload: d.subarray(0, 5) });
      await raw.sendFrame({ opcode: OP.CONT, fin: true, payload: d.subarray(5) });
      const m2 = await raw.readMessage();
      assert.equal(m2.opcode, OP.BINARY);
      assert.ok((m2.rsv1 ? inflate(m2.payload) : m2.payload).equals(msg));
    } finally { raw.close(); }
    await good.check('compressed echo');
  });

  it('compression bomb (20 MB of zeros, max_message_bytes 1 MiB) -> 1009', T, async () => {
    const bomb = deflate(Buffer.alloc(20 * 1024 * 1024));
    assert.ok(bomb.length < 1048576, `bomb is ${bomb.length} bytes on the wire`);
    const t0 = Date.now();
    await expectCloseCode(srv.port, [makeFrame({ opcode: OP.BINARY, rsv1: true, payload: bomb })], 1009, { extensions: PMD });
    assert.ok(Date.now() - t0 < 5000);
    await good.check('compression bomb');
    assert.equal(srv.exitInfo, null, 'server survived');
  });

  it('compression bomb split into fragments -> 1009', T, async () => {
    const bomb = deflate(Buffer.alloc(20 * 1024 * 1024, 0x61));
    const n = Math.ceil(bomb.length / 4);
    const frames = [0, 1, 2, 3].map((i) => makeFrame({
      opcode: i === 0 ? OP.TEXT : OP.CONT, rsv1: i === 0, fin: i === 3, payload: bomb.subarray(i * n, (i + 1) * n),
    }));
    await expectCloseCode(srv.port, frames, 1009, { extensions: PMD });
    await good.check('fragmented compression bomb');
  });

  it('RSV1 on a control frame with deflate negotiated -> 1002', T, async () => {
    await expectCloseCode(srv.port, [makeFrame({ opcode: OP.PING, rsv1: true, payload: 'x' })], 1002, { extensions: PMD });
    await good.check('RSV1 ping');
  });

  it('RSV1 on a continuation frame with deflate negotiated -> 1002', T, async () => {
    const d = deflate(Buffer.from('abcdefgh'));
    await expectCloseCode(srv.port, [
      makeFrame({ opcode: OP.TEXT, rsv1: true, fin: false, payload: d.subarray(0, 3) }),
      makeFrame({ opcode: OP.CONT, rsv1: true, payload: d.subarray(3) }),
    ], 1002, { extensions: PMD });
    await good.check('RSV1 continuation');
  });

  it('RSV2 with deflate negotiated -> 1002', T, async () => {
    await expectCloseCode(srv.port, [makeFrame({ opcode: OP.TEXT, rsv2: true, payload: 'x' })], 1002, { extensions: PMD });
    await good.check('RSV2 with deflate');
  });

  it('compressed text that inflates to invalid UTF-8 -> 1007', T, async () => {
    await expectCloseCode(srv.port, [makeFrame({ opcode: OP.TEXT, rsv1: true, payload: deflate(b(0x61, 0xff, 0x62)) })], 1007, { extensions: PMD });
    await good.check('compressed invalid UTF-8');
  });

  it('corrupt deflate stream -> 1007', T, async () => {
    // 0xff: a block header with the reserved block type 3
    await expectCloseCode(srv.port, [makeFrame({ opcode: OP.BINARY, rsv1: true, payload: b(0xff, 0xff, 0xff, 0xff) })], [1007, 1002], { extensions: PMD });
    await good.check('corrupt deflate');
  });

  // valid closes: echoed with the same code, then TCP closes
  for (const [label, payload, code] of [
    ['1000 "bye"', closePayload(1000, 'bye'), 1000],
    ['1001', closePayload(1001), 1001],
    ['3000', closePayload(3000, 'app'), 3000],
    ['4000', closePayload(4000), 4000],
    ['4999 with a 123-byte UTF-8 reason', closePayload(4999, 'é'.repeat(61) + 'x'), 4999],
  ]) {
    it(`valid close ${label} is echoed with the same code`, T, async () => {
      const c = await expectCloseCode(srv.port, [makeFrame({ opcode: OP.CLOSE, payload })], code);
      assert.equal(c.code, code);
      await good.check(`close ${label}`);
    });
  }

  it('empty close is answered with an empty close or 1000', T, async () => {
    const c = await expectCloseCode(srv.port, [makeFrame({ opcode: OP.CLOSE })], [null, 1000]);
    assert.ok(c.frame.payload.length === 0 || c.code === 1000);
    await good.check('empty close');
  });

  it('data sent after the close frame is ignored', T, async () => {
    await expectCloseCode(srv.port, [
      Buffer.concat([makeFrame({ opcode: OP.CLOSE, payload: closePayload(1000) }), text('late')]),
    ], 1000);
    await good.check('data after close');
  });

  it('a message exactly at max_message_bytes (1 MiB, 4 fragments) is accepted', T, async () => {
    const raw = await rawWebSocket(srv.port, '/echo');
    try {
      const data = bytesOf(1048576, 9);
      const q = 262144;
      for (let i = 0; i < 4; i++) {
        await raw.sendFrame({ opcode: i ? OP.CONT : OP.BINARY, fin: i === 3, payload: data.subarray(i * q, (i + 1) * q) });
      }
      const m = await raw.readMessage(10000);
      assert.equal(m.opcode, OP.BINARY);
      assert.ok(m.payload.equals(data));
    } finally { raw.close(); }
    await good.check('1 MiB fragmented message');
  });

  it('the background good client echoed throughout', T, async () => {
    assert.deepEqual(good.errors, []);
    assert.ok(good.count > 20, `background client echoed ${good.count} messages`);
    assert.equal(srv.exitInfo, null, 'server still running');
  });
});

describe('framing limits lowered by config', () => {
  let srv;
  before(async () => {
    srv = await startServer(['--echo', 'true', '--max_frame_bytes', '1024', '--max_message_bytes', '4096']);
  });
  after(async () => { if (srv) await srv.stop('SIGKILL').catch(() => {}); });
  const good = goodClients(() => srv);

  it('a frame of exactly max_frame_bytes and a message of exactly max_message_bytes pass', T, async () => {
    const raw = await rawWebSocket(srv.port, '/echo');
    try {
      await raw.sendFrame({ opcode: OP.BINARY, payload: bytesOf(1024, 1) });
      assert.ok((await raw.readMessage()).payload.equals(bytesOf(1024, 1)));
      const d = bytesOf(4096, 2);
      for (let i = 0; i < 4; i++) {
        await raw.sendFrame({ opcode: i ? OP.CONT : OP.BINARY, fin: i === 3, payload: d.subarray(i * 1024, (i + 1) * 1024) });
      }
      assert.ok((await raw.readMessage()).payload.equals(d));
    } finally { raw.close(); }
  });

  it('frame of max_frame_bytes + 1 -> 1009', T, async () => {
    await expectCloseCode(srv.port, [bin(bytesOf(1025, 3))], 1009);
    await good.check('frame 1025');
  });

  it('message of max_message_bytes + 1 over fragments -> 1009', T, async () => {
    await expectCloseCode(srv.port, [
      bin(bytesOf(1024, 4), { fin: false }), cont(bytesOf(1024, 5), { fin: false }),
      cont(bytesOf(1024, 6), { fin: false }), cont(bytesOf(1024, 7), { fin: false }), cont(b(1)),
    ], 1009);
    await good.check('message 4097');
  });

  it('compressed message that inflates past max_message_bytes -> 1009', T, async () => {
    const z = deflate(Buffer.alloc(100000, 0x20));
    assert.ok(z.length <= 1024);
    await expectCloseCode(srv.port, [makeFrame({ opcode: OP.TEXT, rsv1: true, payload: z })], 1009, { extensions: 'permessage-deflate' });
    await good.check('small bomb');
  });

  it('the ws client also gets 1009 for an oversized message', T, async () => {
    const ws = await wsClient(srv.port, '/echo', { perMessageDeflate: false });
    ws.send(Buffer.alloc(5000, 1));
    const info = await Promise.race([ws.closedP, sleep(5000).then(() => null)]);
    if (!info) ws.terminate();
    assert.equal(info?.code, 1009);
    await good.check('ws client 1009');
  });
});
