// Shared harness for the chatgw end-to-end tests.
//
// Starts the real binary on 127.0.0.1:0, learns the bound port from the "listening" log line,
// and gives tests raw TCP / raw WebSocket helpers so they can send exactly the bytes they want.
// Every wait is bounded by a timeout, and every server started here is killed when the test
// process exits, whatever happened to the test.
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

const here = path.dirname(fileURLToPath(import.meta.url));
export const SRC = path.resolve(process.env.CHATGW_SRC || path.join(here, '..', '..'));
export const BIN = path.resolve(process.env.CHATGW_BIN || path.join(SRC, 'build', 'chatgw'));
export const HOST = '127.0.0.1';

// ---------------------------------------------------------------------------------------------
// small utilities

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Races p against a timer; rejects with a message naming what was awaited. */
export function withTimeout(p, ms, what = 'operation') {
  let t;
  const timer = new Promise((_, rej) => {
    t = setTimeout(() => rej(new Error(`timeout after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([p, timer]).finally(() => clearTimeout(t));
}

/** Polls pred() until truthy or timeout. */
export async function waitFor(pred, { timeoutMs = 5000, intervalMs = 20, what = 'condition' } = {}) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timeout after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

// ---------------------------------------------------------------------------------------------
// server process lifecycle

const live = new Set();

function killAll() {
  for (const p of live) {
    try { p.kill('SIGKILL'); } catch { /* already gone */ }
  }
  live.clear();
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(sig, () => { killAll(); process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1)); });
}

/**
 * Starts `chatgw serve --listen 127.0.0.1:0 ...args` with cwd = repo root.
 * Resolves once the server logged {"msg":"listening","addr":"127.0.0.1:PORT"}.
 */
export async function startServer(args = [], { env = {}, timeoutMs = 10000, prefix = [] } = {}) {
  // prefix: a command that runs chatgw, e.g. ['prlimit', '--nofile=300:4000', '--']
  const [cmd, ...argv] = [...prefix, BIN, 'serve', '--listen', `${HOST}:0`, ...args.map(String)];
  const proc = spawn(cmd, argv, {
    cwd: SRC,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(proc);
  const logs = [];
  const raw = [];        // every stdout/stderr line, parsed or not, for failure messages
  const logWaiters = new Set();
  let exitInfo = null;
  const exited = new Promise((resolve) => {
    proc.on('exit', (code, signal) => {
      exitInfo = { code, signal };
      live.delete(proc);
      resolve(exitInfo);
    });
    proc.on('error', (err) => {
      exitInfo = { code: null, signal: null, error: err };
      live.delete(proc);
      resolve(exitInfo);
    });
  });

  const lineReader = (stream, name) => {
    readline.createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) => {
      if (!line.trim()) return;
      raw.push(`${name}: ${line}`);
      if (raw.length > 2000) raw.shift();
      if (name === 'stdout') {
        let obj;
        try { obj = JSON.parse(line); } catch { return; }
        logs.push(obj);
        for (const w of logWaiters) w(obj);
      }
    });
  };
  lineReader(proc.stdout, 'stdout');
  lineReader(proc.stderr, 'stderr');

  const srv = {
    host: HOST,
    port: 0,
    proc,
    logs,
    rawLines: raw,
    args,
    get exitInfo() { return exitInfo; },
    /** Resolves with the first log object (already seen or future) matching pred. */
    waitLog(pred, ms = 5000) {
      const seen = logs.find(pred);
      if (seen) return Promise.resolve(seen);
      let fn;
      const p = new Promise((resolve) => {
        fn = (o) => { if (pred(o)) resolve(o); };
        logWaiters.add(fn);
      });
      return withTimeout(p, ms, 'log line').finally(() => logWaiters.delete(fn));
    },
    /** Resolves {code, signal} when the process exits (rejects after ms). */
    waitExit(ms = 10000) { return withTimeout(exited, ms, 'server exit'); },
    /** Sends signal, waits for exit (SIGKILL after ms), resolves with the exit code. */
    async stop(signal = 'SIGTERM', ms = 10000) {
      if (exitInfo) return exitInfo.code;
      try { proc.kill(signal); } catch { /* gone */ }
      try {
        const r = await withTimeout(exited, ms, 'server exit after ' + signal);
        return r.code;
      } catch (e) {
        try { proc.kill('SIGKILL'); } catch { /* gone */ }
        await withTimeout(exited, 5000, 'server exit after SIGKILL').catch(() => {});
        throw e;
      }
    },
    /** The last log lines, for assertion messages. */
    tail(n = 30) { return raw.slice(-n).join('\n'); },
  };

  // Unref so a forgotten server never keeps the test process alive; the exit hook kills it.
  proc.unref();
  proc.stdout.unref?.();
  proc.stderr.unref?.();

  const listening = srv.waitLog((o) => o.msg === 'listening' && typeof o.addr === 'string' && o.role !== 'admin', timeoutMs);
  const early = exited.then((r) => {
    throw new Error(`chatgw exited before listening (code ${r.code}, signal ${r.signal}` +
      `${r.error ? ', ' + r.error.message : ''})\n${srv.tail()}`);
  });
  let line;
  try {
    line = await Promise.race([listening, early]);
  } catch (e) {
    try { proc.kill('SIGKILL'); } catch { /* gone */ }
    if (/timeout/.test(e.message)) e.message += `\nargs: ${args.join(' ')}\n${srv.tail()}`;
    throw e;
  }
  early.catch(() => {}); // the server may exit later; that is not an error here
  const m = /:(\d+)$/.exec(line.addr);
  if (!m) throw new Error(`cannot parse addr ${line.addr}`);
  srv.port = Number(m[1]);
  return srv;
}

// ---------------------------------------------------------------------------------------------
// raw HTTP

/** Opens a TCP connection to 127.0.0.1:port (bounded). */
export function connect(port, ms = 3000) {
  return withTimeout(new Promise((resolve, reject) => {
    const s = net.connect({ host: HOST, port });
    s.setNoDelay(true);
    s.once('connect', () => { s.removeListener('error', reject); resolve(s); });
    s.once('error', reject);
  }), ms, `connect to ${port}`);
}

/**
 * Writes bytes and collects everything received until the peer closes or timeoutMs passes.
 * The Buffer gets two extra properties: closed (peer closed before the timeout) and error.
 */
export async function httpRaw(port, bytes, { timeoutMs = 3000 } = {}) {
  const s = await connect(port);
  return new Promise((resolve) => {
    const chunks = [];
    let done = false;
    const finish = (closed, error) => {
      if (done) return;
      done = true;
      clearTimeout(t);
      s.destroy();
      const b = Buffer.concat(chunks);
      b.closed = closed;
      b.error = error;
      resolve(b);
    };
    const t = setTimeout(() => finish(false, null), timeoutMs);
    s.on('data', (d) => chunks.push(d));
    s.on('end', () => finish(true, null));
    s.on('close', () => finish(true, null));
    s.on('error', (e) => finish(true, e));
    if (bytes != null && bytes.length) s.write(bytes);
  });
}

/** Parses one HTTP response at the start of buf. Returns null when incomplete. */
export function parseResponse(buf, { eof = false } = {}) {
  const he = buf.indexOf('\r\n\r\n');
  if (he < 0) return null;
  const head = buf.subarray(0, he).toString('latin1');
  const lines = head.split('\r\n');
  const sm = /^HTTP\/(\d\.\d) (\d{3})(?: (.*))?$/.exec(lines[0]);
  if (!sm) throw new Error(`bad status line: ${JSON.stringify(lines[0])}`);
  const headers = {};
  for (const l of lines.slice(1)) {
    const i = l.indexOf(':');
    if (i < 0) continue;
    const k = l.slice(0, i).trim().toLowerCase();
    const v = l.slice(i + 1).trim();
    headers[k] = headers[k] !== undefined ? headers[k] + ', ' + v : v;
  }
  const status = Number(sm[2]);
  let pos = he + 4;
  let body;
  const noBody = status === 204 || status === 304 || (status >= 100 && status < 200);
  if (noBody) {
    body = Buffer.alloc(0);
  } else if (/chunked/i.test(headers['transfer-encoding'] || '')) {
    const parts = [];
    for (;;) {
      const le = buf.indexOf('\r\n', pos);
      if (le < 0) return null;
      const size = parseInt(buf.subarray(pos, le).toString('latin1'), 16);
      if (Number.isNaN(size)) throw new Error('bad chunk size');
      pos = le + 2;
      if (size === 0) {
        const te = buf.indexOf('\r\n', pos);   // no trailers expected
        if (te < 0) return null;
        pos = te + 2;
        break;
      }
      if (buf.length < pos + size + 2) return null;
      parts.push(buf.subarray(pos, pos + size));
      pos += size + 2;
    }
    body = Buffer.concat(parts);
  } else if (headers['content-length'] !== undefined) {
    const n = Number(headers['content-length']);
    if (buf.length < pos + n) return null;
    body = buf.subarray(pos, pos + n);
    pos += n;
  } else {
    if (!eof) return null;
    body = buf.subarray(pos);
    pos = buf.length;
  }
  return {
    httpVersion: sm[1], status, reason: sm[3] || '', headers, body,
    text: body.toString('utf8'), size: pos,
    json() { return JSON.parse(body.toString('utf8')); },
  };
}

/** Parses every complete response in buf, in order. */
export function parseResponses(buf, { eof = true } = {}) {
  const out = [];
  let rest = buf;
  while (rest.length) {
    const r = parseResponse(rest, { eof });
    if (!r) break;
    out.push(r);
    rest = rest.subarray(r.size);
  }
  return out;
}

/**
 * A persistent (keep-alive) HTTP connection: write raw requests, read responses one by one.
 */
export async function httpConn(port) {
  const s = await connect(port);
  let buf = Buffer.alloc(0);
  let closed = false;
  let error = null;
  let wake = null;
  const closedP = new Promise((resolve) => s.once('close', () => resolve(true)));
  s.on('data', (d) => { buf = Buffer.concat([buf, d]); wake?.(); });
  s.on('close', () => { closed = true; wake?.(); });
  s.on('error', (e) => { error = e; });
  return {
    socket: s,
    get isClosed() { return closed; },
    get error() { return error; },
    closed: closedP,
    write(bytes) { if (!closed) s.write(bytes); },
    request(method, path, headers = {}, body = '') {
      const h = { Host: `${HOST}:${port}`, ...headers };
      if (body.length) h['Content-Length'] = Buffer.byteLength(body);
      const lines = [`${method} ${path} HTTP/1.1`, ...Object.entries(h).map(([k, v]) => `${k}: ${v}`)];
      this.write(lines.join('\r\n') + '\r\n\r\n' + body);
    },
    /** Resolves with the next complete response; rejects on timeout or close. */
    async readResponse(ms = 3000) {
      const end = Date.now() + ms;
      for (;;) {
        const r = parseResponse(buf, { eof: closed });
        if (r) { buf = buf.subarray(r.size); return r; }
        if (closed) throw new Error(`connection closed before a full response (${buf.length} bytes pending)`);
        const left = end - Date.now();
        if (left <= 0) throw new Error(`timeout after ${ms} ms waiting for an HTTP response`);
        await new Promise((resolve) => {
          const t = setTimeout(resolve, left);
          wake = () => { clearTimeout(t); wake = null; resolve(); };
        });
      }
    },
    get pending() { return buf; },
    close() { s.destroy(); },
  };
}

/** GET path on a fresh connection with Connection: close; resolves the parsed response. */
export async function httpGet(port, path, headers = {}, { timeoutMs = 3000, method = 'GET' } = {}) {
  const h = { Host: `${HOST}:${port}`, Connection: 'close', ...headers };
  const req = `${method} ${path} HTTP/1.1\r\n` + Object.entries(h).map(([k, v]) => `${k}: ${v}\r\n`).join('') + '\r\n';
  const b = await httpRaw(port, req, { timeoutMs });
  const r = parseResponse(b, { eof: true });
  if (!r) throw new Error(`no complete response to ${method} ${path}: ${JSON.stringify(b.toString('latin1').slice(0, 200))}`);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Prometheus text

/** Parses Prometheus text into [{name, labels, value}] and validates each sample line. */
export function parseMetrics(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)(\s+\d+)?$/.exec(line);
    if (!m) throw new Error(`bad metrics line: ${JSON.stringify(line)}`);
    const labels = {};
    if (m[2]) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
      let lm;
      while ((lm = re.exec(m[2]))) labels[lm[1]] = lm[2];
    }
    const value = m[3] === '+Inf' ? Infinity : m[3] === '-Inf' ? -Infinity : Number(m[3]);
    if (Number.isNaN(value) && m[3] !== 'NaN') throw new Error(`bad metrics value: ${line}`);
    out.push({ name: m[1], labels, value });
  }
  return out;
}

/** Sum of every series of name (optionally filtered by labels). */
export function metricSum(samples, name, labels = {}) {
  return samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((a, s) => a + s.value, 0);
}

export async function scrape(port) {
  const r = await httpGet(port, '/metrics');
  if (r.status !== 200) throw new Error(`/metrics answered ${r.status}`);
  return { response: r, samples: parseMetrics(r.text) };
}

// ---------------------------------------------------------------------------------------------
// WebSocket frames

export const OP = { CONT: 0, TEXT: 1, BINARY: 2, CLOSE: 8, PING: 9, PONG: 10 };

/** Builds a client frame; lengths use the 7/16/64-bit forms; masked unless mask === false. */
export function makeFrame({ fin = true, opcode, payload = Buffer.alloc(0), mask = true,
  rsv1 = false, rsv2 = false, rsv3 = false, length } = {}) {
  const data = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
  const len = length ?? data.length;          // length lets a test lie about the size
  let hdr;
  if (len < 126) {
    hdr = Buffer.alloc(2);
    hdr[1] = len;
  } else if (len < 65536) {
    hdr = Buffer.alloc(4);
    hdr[1] = 126;
    hdr.writeUInt16BE(len, 2);
  } else {
    hdr = Buffer.alloc(10);
    hdr[1] = 127;
    hdr.writeBigUInt64BE(BigInt(len), 2);
  }
  hdr[0] = (fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | (rsv2 ? 0x20 : 0) | (rsv3 ? 0x10 : 0) | (opcode & 0x0f);
  if (!mask) return Buffer.concat([hdr, data]);
  hdr[1] |= 0x80;
  const key = crypto.randomBytes(4);
  const body = Buffer.allocUnsafe(data.length);
  for (let i = 0; i < data.length; i++) body[i] = data[i] ^ key[i & 3];
  return Buffer.concat([hdr, key, body]);
}

/** A close payload: 2-byte code (omitted when code is null) + reason (string or Buffer). */
export function closePayload(code, reason = '') {
  if (code == null) return Buffer.alloc(0);
  const c = Buffer.alloc(2);
  c.writeUInt16BE(code);
  return Buffer.concat([c, Buffer.isBuffer(reason) ? reason : Buffer.from(reason, 'utf8')]);
}

/** Parses one frame at the start of buf; null when incomplete. */
export function parseFrame(buf) {
  if (buf.length < 2) return null;
  const b0 = buf[0], b1 = buf[1];
  let len = b1 & 0x7f;
  let pos = 2;
  if (len === 126) {
    if (buf.length < 4) return null;
    len = buf.readUInt16BE(2);
    pos = 4;
  } else if (len === 127) {
    if (buf.length < 10) return null;
    len = Number(buf.readBigUInt64BE(2));
    pos = 10;
  }
  const masked = !!(b1 & 0x80);
  let key;
  if (masked) {
    if (buf.length < pos + 4) return null;
    key = buf.subarray(pos, pos + 4);
    pos += 4;
  }
  if (buf.length < pos + len) return null;
  let payload = Buffer.from(buf.subarray(pos, pos + len));
  if (masked) for (let i = 0; i < payload.length; i++) payload[i] ^= key[i & 3];
  const f = {
    fin: !!(b0 & 0x80), rsv1: !!(b0 & 0x40), rsv2: !!(b0 & 0x20), rsv3: !!(b0 & 0x10),
    opcode: b0 & 0x0f, masked, payload, size: pos + len,
  };
  if (f.opcode === OP.CLOSE) {
    f.code = payload.length >= 2 ? payload.readUInt16BE(0) : null;
    f.reason = payload.length > 2 ? payload.subarray(2).toString('utf8') : '';
  }
  return f;
}

/**
 * Opens a TCP connection and performs the WebSocket handshake by hand.
 * headers override the defaults; a value of null removes that header.
 * Resolves (for any status) with { status, headers, body, socket, send, sendRaw, readFrame,
 * readMessage, readUntilClose, closed, isClosed, close }.
 */
export async function rawWebSocket(port, path = '/echo', headers = {}, { timeoutMs = 3000, method = 'GET' } = {}) {
  const s = await connect(port);
  const key = crypto.randomBytes(16).toString('base64');
  const h = {
    Host: `${HOST}:${port}`,
    Upgrade: 'websocket',
    Connection: 'Upgrade',
    'Sec-WebSocket-Key': key,
    'Sec-WebSocket-Version': '13',
    ...headers,
  };
  const lines = [`${method} ${path} HTTP/1.1`];
  for (const [k, v] of Object.entries(h)) if (v != null) lines.push(`${k}: ${v}`);

  let buf = Buffer.alloc(0);
  let closed = false;
  let sockErr = null;
  let wake = null;
  const closedP = new Promise((resolve) => s.once('close', () => { closed = true; resolve(true); }));
  s.on('data', (d) => { buf = Buffer.concat([buf, d]); wake?.(); });
  s.on('close', () => { closed = true; wake?.(); });
  s.on('error', (e) => { sockErr = e; });  // EPIPE/ECONNRESET after a server close are expected

  const waitData = (ms) => new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    wake = () => { clearTimeout(t); wake = null; resolve(); };
  });

  s.write(lines.join('\r\n') + '\r\n\r\n');

  // read the response head (and body, for non-101 answers)
  const end = Date.now() + timeoutMs;
  let resp;
  for (;;) {
    const he = buf.indexOf('\r\n\r\n');
    if (he >= 0) {
      if (/^HTTP\/1\.[01] 101[ \r]/.test(buf.subarray(0, 16).toString('latin1'))) {
        resp = parseResponse(buf.subarray(0, he + 4), { eof: true });
        resp.size = he + 4;
        break;
      }
      const full = parseResponse(buf, { eof: closed });
      if (full) { resp = full; break; }
    }
    if (closed) {
      if (buf.indexOf('\r\n\r\n') >= 0) { resp = parseResponse(buf, { eof: true }); break; }
      s.destroy();
      throw new Error(`connection closed during handshake; got ${JSON.stringify(buf.toString('latin1').slice(0, 300))}`);
    }
    const left = end - Date.now();
    if (left <= 0) {
      s.destroy();
      throw new Error(`timeout waiting for the handshake response; got ${JSON.stringify(buf.toString('latin1').slice(0, 300))}`);
    }
    await waitData(left);
  }
  buf = buf.subarray(resp.size);

  const expectedAccept = crypto.createHash('sha1')
    .update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');

  const ws = {
    status: resp.status,
    headers: resp.headers,
    body: resp.body,
    text: resp.text,
    key,
    expectedAccept,
    socket: s,
    closed: closedP,
    get isClosed() { return closed; },
    get error() { return sockErr; },
    /** Writes raw bytes (a frame built by makeFrame, or any bytes). */
    send(bytes) {
      if (closed || s.destroyed) return Promise.resolve(false);
      return new Promise((resolve) => {
        s.write(bytes, (err) => resolve(!err));
      });
    },
    sendFrame(opts) { return this.send(makeFrame(opts)); },
    /** Next frame; rejects on timeout or when the connection closed first. */
    async readFrame(ms = 3000) {
      const end2 = Date.now() + ms;
      for (;;) {
        const f = parseFrame(buf);
        if (f) { buf = buf.subarray(f.size); return f; }
        if (closed) {
          const e = new Error(`connection closed while waiting for a frame (${buf.length} bytes pending)`);
          e.code = 'CLOSED';
          throw e;
        }
        const left = end2 - Date.now();
        if (left <= 0) {
          const e = new Error(`timeout after ${ms} ms waiting for a frame`);
          e.code = 'TIMEOUT';
          throw e;
        }
        await waitData(left);
      }
    },
    /**
     * Next whole data message (fragments joined). Control frames met on the way are pushed to
     * controls (an array the caller may pass). Returns {opcode, payload, frames, rsv1}.
     */
    async readMessage(ms = 5000, controls = []) {
      const end2 = Date.now() + ms;
      const parts = [];
      let opcode = null;
      let rsv1 = false;
      let frames = 0;
      for (;;) {
        const f = await this.readFrame(Math.max(1, end2 - Date.now()));
        if (f.opcode >= 8) {
          controls.push(f);
          if (f.opcode === OP.CLOSE) {
            const e = new Error(`got close ${f.code} ${JSON.stringify(f.reason)} while waiting for a message`);
            e.frame = f;
            throw e;
          }
          continue;
        }
        frames++;
        if (opcode === null) { opcode = f.opcode; rsv1 = f.rsv1; }
        parts.push(f.payload);
        if (f.fin) return { opcode, payload: Buffer.concat(parts), frames, rsv1 };
      }
    },
    /** Every frame until the TCP connection closes (or ms). */
    async readUntilClose(ms = 3000) {
      const frames = [];
      const end2 = Date.now() + ms;
      for (;;) {
        try {
          frames.push(await this.readFrame(Math.max(1, end2 - Date.now())));
        } catch (e) {
          if (e.code === 'CLOSED') return frames;
          e.frames = frames;
          throw e;
        }
      }
    },
    /**
     * Reads frames until a close frame (skipping pings/pongs and data), then waits for the TCP
     * close. Resolves {code, reason, frame, tcpClosed, before}.
     */
    async expectClose(ms = 3000) {
      const before = [];
      const end2 = Date.now() + ms;
      for (;;) {
        let f;
        try {
          f = await this.readFrame(Math.max(1, end2 - Date.now()));
        } catch (e) {
          e.message += `; frames before: ${JSON.stringify(before.map((x) => x.opcode))}`;
          throw e;
        }
        if (f.opcode === OP.CLOSE) {
          const tcpClosed = await withTimeout(closedP, Math.max(1, end2 - Date.now()) + 1000, 'TCP close after the close frame')
            .then(() => true, () => false);
          return { code: f.code, reason: f.reason, frame: f, tcpClosed, before };
        }
        before.push(f);
      }
    },
    close() { s.destroy(); },
  };
  return ws;
}

// ---------------------------------------------------------------------------------------------
// `ws` library clients

/** Opens a `ws` client; resolves once open (rejects on error/unexpected response/timeout). */
export function wsClient(port, path = '/echo', opts = {}, protocols = undefined, ms = 5000) {
  return withTimeout(new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${HOST}:${port}${path}`, protocols, { handshakeTimeout: ms, ...opts });
    ws.closeInfo = null;
    ws.closedP = new Promise((r) => ws.once('close', (code, reason) => {
      ws.closeInfo = { code, reason: reason.toString() };
      r(ws.closeInfo);
    }));
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
    ws.once('unexpected-response', (req, res) => {
      reject(Object.assign(new Error(`unexpected response ${res.statusCode}`), { statusCode: res.statusCode }));
      req.destroy();
    });
    ws.on('error', () => {});
  }), ms + 500, `ws open ${path}`);
}

/** Sends data on a `ws` client and resolves with the next message {data, isBinary}. */
export function wsRoundTrip(ws, data, { binary = typeof data !== 'string', ms = 5000 } = {}) {
  return withTimeout(new Promise((resolve, reject) => {
    const onMsg = (d, isBinary) => { cleanup(); resolve({ data: d, isBinary }); };
    const onClose = (code) => { cleanup(); reject(new Error(`closed with ${code} before the echo`)); };
    const cleanup = () => { ws.off('message', onMsg); ws.off('close', onClose); };
    ws.on('message', onMsg);
    ws.on('close', onClose);
    ws.send(data, { binary }, (err) => { if (err) { cleanup(); reject(err); } });
  }), ms, 'echo');
}

/** Closes a `ws` client and waits (bounded) for the close to finish. */
export async function wsClose(ws, code = 1000, ms = 3000) {
  if (ws.readyState === WebSocket.CLOSED) return ws.closeInfo;
  try { ws.close(code); } catch { ws.terminate(); }
  try {
    return await withTimeout(ws.closedP, ms, 'ws close');
  } catch (e) {
    ws.terminate();
    throw e;
  }
}

export { WebSocket };

/** A deterministic ASCII string of exactly n bytes. */
export function asciiOf(n, seed = 1) {
  const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:-_';
  const b = Buffer.allocUnsafe(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    b[i] = alphabet.charCodeAt(x % alphabet.length);
  }
  return b.toString('latin1');
}

/** Deterministic pseudo-random bytes (incompressible). */
export function bytesOf(n, seed = 7) {
  const b = Buffer.allocUnsafe(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

// ---------------------------------------------------------------------------------------------
// chat protocol (v1) helpers: used by chat.test.mjs, api.test.mjs and slow_consumer.test.mjs

/**
 * A scripts directory holding a pass-through policy (`return {}`: every hook absent), so a
 * protocol test sees the hub's own behaviour and not the default policy's moderation (flood
 * control, connect rate per IP, repetition limits). Removed when the test process exits.
 */
export function passthroughPolicyDir() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-e2e-policy-'));
  fs.writeFileSync(path.join(dir, 'policy.lua'), '-- e2e: no hooks, the hub decides everything\nreturn {}\n');
  process.once('exit', () => { try { fs.rmSync(dir, { recursive: true, force: true }); } catch { /* gone */ } });
  return dir;
}

/** Resident set size of a process in KiB (VmRSS from /proc/PID/status), or null. */
export function procRssKb(pid) {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch { return null; }
}

/**
 * One HTTP request on a fresh connection (Connection: close) with an optional body.
 * Resolves the parsed response ({status, headers, text, json()}).
 */
export async function httpRequest(port, method, reqPath, { headers = {}, body = '', timeoutMs = 3000 } = {}) {
  const h = { Host: `${HOST}:${port}`, Connection: 'close', ...headers };
  const b = Buffer.from(typeof body === 'string' ? body : JSON.stringify(body), 'utf8');
  if (b.length || method === 'POST' || method === 'PUT') h['Content-Length'] = b.length;
  const head = `${method} ${reqPath} HTTP/1.1\r\n` + Object.entries(h).map(([k, v]) => `${k}: ${v}\r\n`).join('') + '\r\n';
  const raw = await httpRaw(port, Buffer.concat([Buffer.from(head, 'latin1'), b]), { timeoutMs });
  const r = parseResponse(raw, { eof: true });
  if (!r) throw new Error(`no complete response to ${method} ${reqPath}: ${JSON.stringify(raw.toString('latin1').slice(0, 200))}`);
  return r;
}

const matcher = (pred) => (typeof pred === 'function' ? pred
  : typeof pred === 'string' ? (m) => m.type === pred
    : (m) => Object.entries(pred).every(([k, v]) => m[k] === v));

let cidSeq = 0;

/**
 * A chat client over the `ws` library. Every JSON message received is kept in `inbox` (in
 * arrival order) until a test takes it with next(); `all` keeps everything ever received.
 */
export class ChatClient {
  constructor(ws) {
    this.ws = ws;
    this.inbox = [];
    this.all = [];
    this.welcome = null;
    this.closeInfo = null;
    this.wake = new Set();
    this.closedP = new Promise((r) => ws.once('close', (code, reason) => {
      this.closeInfo = { code, reason: reason.toString() };
      for (const w of this.wake) w();
      r(this.closeInfo);
    }));
    ws.on('message', (data, isBinary) => {
      let m;
      try { m = JSON.parse(data.toString('utf8')); } catch { m = { type: '__unparsable', raw: data.toString('utf8'), isBinary }; }
      this.inbox.push(m);
      this.all.push(m);
      for (const w of this.wake) w();
    });
    ws.on('error', () => {});
  }

  get id() { return this.welcome?.id; }
  get name() { return this.welcome?.name; }
  get isOpen() { return this.ws.readyState === WebSocket.OPEN; }

  /** Sends an object (as JSON) or a raw string. */
  send(obj) { this.ws.send(typeof obj === 'string' ? obj : JSON.stringify(obj)); }

  /**
   * Takes the first message in the inbox matching pred (a type string, a {field: value} object,
   * or a function), waiting for it up to ms. Earlier non-matching messages stay in the inbox.
   */
  async next(pred, ms = 3000, what = undefined) {
    const f = matcher(pred);
    const end = Date.now() + ms;
    for (;;) {
      const i = this.inbox.findIndex(f);
      if (i >= 0) return this.inbox.splice(i, 1)[0];
      const desc = what || (typeof pred === 'function' ? 'a matching message' : JSON.stringify(pred));
      if (this.closeInfo) {
        throw new Error(`connection closed (${this.closeInfo.code} ${this.closeInfo.reason}) while waiting for ${desc}; ` +
          `inbox: ${JSON.stringify(this.inbox.slice(-5))}`);
      }
      const left = end - Date.now();
      if (left <= 0) {
        throw new Error(`timeout after ${ms} ms waiting for ${desc}; inbox: ${JSON.stringify(this.inbox.slice(-5)).slice(0, 1500)}`);
      }
      await new Promise((resolve) => {
        const w = () => { clearTimeout(t); this.wake.delete(w); resolve(); };
        const t = setTimeout(w, left);
        this.wake.add(w);
      });
    }
  }

  /** Takes n messages matching pred, in arrival order. */
  async nextN(n, pred, ms = 5000, what = undefined) {
    const end = Date.now() + ms;
    const out = [];
    while (out.length < n) out.push(await this.next(pred, Math.max(1, end - Date.now()), what || `message ${out.length + 1}/${n}`));
    return out;
  }

  /**
   * Bounded negative check: waits ms, then returns every inbox message matching pred (left in
   * the inbox). Callers assert that the list is empty.
   */
  async none(pred, ms = 300) {
    await sleep(ms);
    return this.inbox.filter(matcher(pred));
  }

  /** Forgets everything not yet taken. */
  drain() { this.inbox.length = 0; }

  /** Sends msg {room, text, cid} and resolves the ack with that cid (the echo stays in the inbox). */
  async say(room, text, ms = 3000) {
    const cid = `c-${++cidSeq}`;
    this.send({ type: 'msg', room, text, cid });
    const ack = await this.next((m) => m.type === 'ack' && m.cid === cid, ms, `ack ${cid}`);
    return { cid, ack, id: ack.id };
  }

  /** Sends a message and resolves the error frame that follows (rejects on anything else first). */
  async expectError(obj, code, ms = 3000) {
    this.send(obj);
    const e = await this.next((m) => m.type === 'error', ms, `error ${code}`);
    if (e.code !== code) throw new Error(`expected error ${code}, got ${JSON.stringify(e)}`);
    return e;
  }

  /** Joins room with a join message and resolves the `room` snapshot. */
  async join(room, extra = {}, ms = 3000) {
    this.send({ type: 'join', room, ...extra });
    return this.next((m) => m.type === 'room' && m.room === room, ms, `room snapshot of ${room}`);
  }

  async close(code = 1000, ms = 3000) {
    if (this.closeInfo) return this.closeInfo;
    try { this.ws.close(code); } catch { this.ws.terminate(); }
    try {
      return await withTimeout(this.closedP, ms, 'chat ws close');
    } catch (e) {
      this.ws.terminate();
      throw e;
    }
  }

  terminate() { try { this.ws.terminate(); } catch { /* gone */ } }
}

/**
 * Opens a chat WebSocket at path (e.g. '/ws?room=lobby&name=alice' or '/lobby') and resolves
 * once the welcome arrived. Rejects with .statusCode when the handshake is refused.
 */
export function chatClient(port, reqPath = '/ws', { ms = 5000, wsOpts = {}, protocols } = {}) {
  return withTimeout(new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${HOST}:${port}${reqPath}`, protocols,
      { handshakeTimeout: ms, perMessageDeflate: false, ...wsOpts });
    const c = new ChatClient(ws);
    ws.once('open', () => {
      c.next('welcome', ms).then((w) => { c.welcome = w; resolve(c); }, (e) => { c.terminate(); reject(e); });
    });
    ws.once('error', reject);
    ws.once('unexpected-response', (req, res) => {
      reject(Object.assign(new Error(`unexpected response ${res.statusCode}`), { statusCode: res.statusCode }));
      req.destroy();
    });
  }), ms + 1000, `chat ws open ${reqPath}`);
}

/** Opens clients and closes every one of them at the end, whatever happened. */
export function clientPool() {
  const open = [];
  return {
    async open(port, p, opts) {
      const c = await chatClient(port, p, opts);
      open.push(c);
      return c;
    },
    /** open(), then waits for the room frame of the join in p (its snapshot is not kept). */
    async joined(port, p, ms = 5000) {
      const c = await this.open(port, p);
      await c.next('room', ms);
      return c;
    },
    async closeAll() {
      await Promise.all(open.splice(0).map((c) => c.close().catch(() => c.terminate())));
    },
  };
}

/** Parses a message id "epoch:seq" into {epoch, seq}. */
export function parseMsgId(id) {
  const m = /^([^:]+):(\d+)$/.exec(String(id));
  if (!m) throw new Error(`message id ${JSON.stringify(id)} is not "epoch:seq"`);
  return { epoch: m[1], seq: Number(m[2]) };
}

// ---------------------------------------------------------------------------------------------
// policy helpers: scripts directories (plain, or laid out like a kubelet ConfigMap volume),
// /readyz, `chatgw check`. Used by policy_*.test.mjs and check_cli.test.mjs.

export const FIXTURES = path.join(here, 'fixtures');
export const SCRIPTS = path.join(SRC, 'scripts');

const tempDirs = new Set();
process.on('exit', () => {
  for (const dir of tempDirs) { try { fs.rmSync(dir, { recursive: true, force: true }); } catch { /* gone */ } }
});

/** A fresh directory under os.tmpdir(), removed when the test process exits. */
export function tempDir(prefix = 'chatgw-e2e-') {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tempDirs.add(dir);
  return dir;
}

/** Every *.lua file of dir (not hidden) as {name: text}. */
export function readLuaFiles(dir) {
  const out = {};
  for (const name of fs.readdirSync(dir).sort()) {
    if (!name.endsWith('.lua') || name.startsWith('.')) continue;
    out[name] = fs.readFileSync(path.join(dir, name), 'utf8');
  }
  return out;
}

/**
 * Writes files ({name: text}) into dir as plain files, each through a hidden temporary name and
 * a rename (what an editor or `kubectl cp` leaves: the server never reads half a file).
 * A value of null removes that file.
 */
export function writeFiles(dir, files) {
  fs.mkdirSync(dir, { recursive: true });
  for (const [name, text] of Object.entries(files)) {
    const p = path.join(dir, name);
    if (text == null) { fs.rmSync(p, { force: true }); continue; }
    const tmp = path.join(dir, `.${name}.${process.pid}.tmp`);
    fs.writeFileSync(tmp, text);
    fs.renameSync(tmp, p);
  }
  return dir;
}

/** A temp scripts directory holding files ({name: text}) as plain files. */
export function scriptsDir(files, prefix = 'chatgw-e2e-scripts-') {
  return writeFiles(tempDir(prefix), files);
}

/** The default policy (scripts/*.lua) as {name: text}, with overrides applied (null removes). */
export function defaultScripts(overrides = {}) {
  const files = { ...readLuaFiles(SCRIPTS), ...overrides };
  for (const [k, v] of Object.entries(files)) if (v == null) delete files[k];
  return files;
}

/** The text of tests/e2e/fixtures/<rel>. */
export function fixture(rel) {
  return fs.readFileSync(path.join(FIXTURES, rel), 'utf8');
}

/** The 1-based number of the first line of text that contains marker. */
export function lineOf(text, marker) {
  const i = text.split('\n').findIndex((l) => l.includes(marker));
  if (i < 0) throw new Error(`marker ${JSON.stringify(marker)} not found`);
  return i + 1;
}

const pad2 = (n) => String(n).padStart(2, '0');
let atomicSeq = 0;

/**
 * A directory laid out and updated exactly like kubelet's AtomicWriter lays out a ConfigMap
 * volume (pkg/volume/util/atomic_writer.go):
 *
 *   dir/..2026_11_27_10_42_07.123456789/   the payload of one update (a timestamped directory)
 *   dir/..data -> ..2026_11_27_10_42_07.123456789
 *   dir/policy.lua -> ..data/policy.lua    one symlink per key, created once, never touched again
 *
 * write(files) performs one update, step by step: (1) make a new ..YYYY_MM_DD_hh_mm_ss.N
 * directory (mode 0755) and write the payload into it; (2) point a ..data_tmp symlink at it;
 * (3) rename ..data_tmp over ..data (the atomic switch); (4) create the per-key symlinks
 * name -> ..data/name that are missing, and remove those of keys no longer present;
 * (5) remove the old timestamped directory. Returns {tsDir, swappedAt} (swappedAt: Date.now()
 * right after the rename).
 */
export class AtomicWriterDir {
  constructor(dir) {
    this.dir = dir;
    this.keys = new Set();
    this.history = [];           // every timestamped directory name ever written
  }

  static create(files, prefix = 'chatgw-e2e-configmap-') {
    const w = new AtomicWriterDir(tempDir(prefix));
    w.write(files);
    return w;
  }

  /** The payload currently visible through ..data, as {name: text}. */
  current() { return readLuaFiles(path.join(this.dir, '..data')); }

  write(files) {
    const dataLink = path.join(this.dir, '..data');
    const tmpLink = path.join(this.dir, '..data_tmp');
    let oldTs = null;
    try { oldTs = fs.readlinkSync(dataLink); } catch { /* first write */ }
    // (1) os.MkdirTemp(dir, time.Now().UTC().Format("..2006_01_02_15_04_05.")) + chmod 0755
    const d = new Date();
    const stamp = `..${d.getUTCFullYear()}_${pad2(d.getUTCMonth() + 1)}_${pad2(d.getUTCDate())}_` +
      `${pad2(d.getUTCHours())}_${pad2(d.getUTCMinutes())}_${pad2(d.getUTCSeconds())}.`;
    let tsName;
    for (;;) {
      tsName = stamp + String(crypto.randomInt(1e9) + ++atomicSeq);
      try { fs.mkdirSync(path.join(this.dir, tsName)); break; } catch (e) { if (e.code !== 'EEXIST') throw e; }
    }
    const tsDir = path.join(this.dir, tsName);
    fs.chmodSync(tsDir, 0o755);
    for (const [name, text] of Object.entries(files)) {
      fs.writeFileSync(path.join(tsDir, name), text, { mode: 0o644 });
    }
    // (2) ..data_tmp -> the new directory (relative, as kubelet writes it)
    fs.rmSync(tmpLink, { force: true });
    fs.symlinkSync(tsName, tmpLink);
    // (3) the atomic switch
    fs.renameSync(tmpLink, dataLink);
    const swappedAt = Date.now();
    // (4) user-visible per-key symlinks through ..data
    for (const name of Object.keys(files)) {
      const p = path.join(this.dir, name);
      let exists = true;
      try { fs.lstatSync(p); } catch { exists = false; }
      if (!exists) fs.symlinkSync(path.join('..data', name), p);
    }
    for (const name of this.keys) {
      if (!(name in files)) fs.rmSync(path.join(this.dir, name), { force: true });
    }
    this.keys = new Set(Object.keys(files));
    // (5) the old payload goes
    if (oldTs) fs.rmSync(path.join(this.dir, oldTs), { recursive: true, force: true });
    this.history.push(tsName);
    return { tsDir: tsName, swappedAt };
  }
}

/** GET /readyz: {status, body} (body parsed). */
export async function readyz(port) {
  const r = await httpGet(port, '/readyz');
  return { status: r.status, body: r.json() };
}

/** The live policy version as /readyz reports it. */
export async function policyVersion(port) {
  return (await readyz(port)).body.policy?.version;
}

/**
 * Runs `chatgw check DIR ...args` (cwd = repo root) and resolves {code, signal, stdout, stderr}.
 * Killed after timeoutMs.
 */
export function runCheck(dir, args = [], { timeoutMs = 15000 } = {}) {
  return new Promise((resolve, reject) => {
    const p = spawn(BIN, ['check', dir, ...args.map(String)], { cwd: SRC, stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(p);
    let stdout = '', stderr = '';
    p.stdout.setEncoding('utf8').on('data', (d) => { stdout += d; });
    p.stderr.setEncoding('utf8').on('data', (d) => { stderr += d; });
    const t = setTimeout(() => { try { p.kill('SIGKILL'); } catch { /* gone */ } }, timeoutMs);
    p.on('error', (e) => { clearTimeout(t); live.delete(p); reject(e); });
    p.on('exit', (code, signal) => {
      clearTimeout(t);
      live.delete(p);
      if (signal === 'SIGKILL') reject(new Error(`chatgw check ${dir} ran past ${timeoutMs} ms\n${stderr}`));
      else resolve({ code, signal, stdout, stderr });
    });
  });
}

/** An HS256 JWT over claims, signed with secret (header {alg:"HS256",typ:"JWT"} unless given). */
export function signJwt(claims, secret, header = { alg: 'HS256', typ: 'JWT' }) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const signing = `${b64(header)}.${b64(claims)}`;
  const sig = crypto.createHmac('sha256', secret).update(signing).digest('base64url');
  return `${signing}.${sig}`;
}
