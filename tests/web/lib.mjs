// Shared harness for the browser tests of chatgw's web client.
//
// The tests drive Debian's chromium through playwright-core, against the real binary, inside a
// private network namespace that has only loopback (netns.sh starts it: `unshare -n`, then
// `ip link set lo up`). So WebRTC gathers only 127.0.0.1 candidates and nothing leaves the
// machine. Every wait is bounded; every server and browser started here is killed when the
// test process exits. Nothing asserts on timing.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

const here = path.dirname(fileURLToPath(import.meta.url));
export const SRC = path.resolve(process.env.CHATGW_SRC || path.join(here, '..', '..'));
export const BIN = path.resolve(process.env.CHATGW_BIN || path.join(SRC, 'build', 'chatgw'));
export const BUILD = path.resolve(process.env.CHATGW_BUILD || path.join(SRC, 'build'));
export const ARTIFACTS = path.join(BUILD, 'web-artifacts');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const HOST = '127.0.0.1';
/** Per-test-file time budget for node:test. */
export const T = { timeout: 120000 };

// Exactly the flags the issue lists (plus a fresh --user-data-dir per browser, added at launch).
export const CHROMIUM_FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
  '--allow-loopback-in-peer-connection',
];

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function withTimeout(p, ms, what) {
  let t;
  const timer = new Promise((_, rej) => { t = setTimeout(() => rej(new Error(`timeout after ${ms} ms waiting for ${what}`)), ms); });
  return Promise.race([p, timer]).finally(() => clearTimeout(t));
}

/** Polls pred() until it returns something truthy (returned), or throws after timeoutMs. */
export async function waitFor(pred, { timeoutMs = 15000, intervalMs = 50, what = 'condition' } = {}) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await pred();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timeout after ${timeoutMs} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await sleep(intervalMs);
  }
}

/** Fails fast, with the fix, when the preconditions are missing. */
export function checkEnvironment() {
  if (process.env.CHATGW_NETNS !== '1') {
    throw new Error('browser tests must run inside tests/web/netns.sh (a private loopback-only network namespace)');
  }
  if (!fs.existsSync(CHROMIUM)) throw new Error(`no ${CHROMIUM}: install Debian's chromium (tests/web/debs.txt; make deps)`);
  if (!fs.existsSync(BIN)) throw new Error(`no chatgw binary at ${BIN}: make build`);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
}

// ---------------------------------------------------------------------------------------------
// processes: chatgw and chromium, killed on exit whatever happened

const live = new Set();
const dirs = new Set();
function cleanup() {
  for (const p of live) { try { p.kill('SIGKILL'); } catch { /* gone */ } }
  live.clear();
  for (const d of dirs) { try { fs.rmSync(d, { recursive: true, force: true }); } catch { /* best effort */ } }
  dirs.clear();
}
process.on('exit', cleanup);
for (const sig of ['SIGINT', 'SIGTERM']) process.once(sig, () => { cleanup(); process.exit(1); });

/** A TCP port free on 127.0.0.1 now (the namespace is private, so it stays free). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, HOST, () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/**
 * Starts `chatgw serve --listen 127.0.0.1:<port> ...args` from the repository root (so the
 * default scripts/ and web/ are used). Resolves once it logs "listening".
 */
export async function startServer(args = [], { port = 0, timeoutMs = 15000 } = {}) {
  const proc = spawn(BIN, ['serve', '--listen', `${HOST}:${port}`, '--log-level', 'info', ...args.map(String)], {
    cwd: SRC, stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(proc);
  const lines = [];
  let exitInfo = null;
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => {
    exitInfo = { code, signal };
    live.delete(proc);
    resolve(exitInfo);
  }));
  let onLine = () => {};
  const reader = (stream, name) => {
    readline.createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) => {
      lines.push(`${name}: ${line}`);
      if (lines.length > 500) lines.shift();
      onLine(line);
    });
  };
  reader(proc.stdout, 'stdout');
  reader(proc.stderr, 'stderr');
  const listening = new Promise((resolve) => {
    onLine = (line) => {
      let o;
      try { o = JSON.parse(line); } catch { return; }
      if (o.msg === 'listening' && typeof o.addr === 'string' && o.role !== 'admin') resolve(o.addr);
    };
  });
  const early = exited.then((r) => { throw new Error(`chatgw exited before listening (${JSON.stringify(r)})\n${lines.join('\n')}`); });
  const addr = await withTimeout(Promise.race([listening, early]), timeoutMs, 'chatgw listening');
  early.catch(() => {});
  const p = Number(/:(\d+)$/.exec(addr)[1]);
  return {
    port: p,
    url: `http://${HOST}:${p}`,
    proc,
    get exitInfo() { return exitInfo; },
    tail: (n = 40) => lines.slice(-n).join('\n'),
    /** Sends signal and waits for the exit (SIGKILL after ms). */
    async stop(signal = 'SIGTERM', ms = 15000) {
      if (exitInfo) return exitInfo;
      try { proc.kill(signal); } catch { /* gone */ }
      try {
        return await withTimeout(exited, ms, `chatgw exit after ${signal}`);
      } catch (e) {
        try { proc.kill('SIGKILL'); } catch { /* gone */ }
        await withTimeout(exited, 5000, 'chatgw exit after SIGKILL').catch(() => {});
        throw e;
      }
    },
  };
}

/**
 * Launches chromium with exactly CHROMIUM_FLAGS and a new --user-data-dir. Playwright drives it
 * over --remote-debugging-pipe; its own default flags are left out (ignoreDefaultArgs).
 * Returns {context, page, close()}; each call is a separate browser (its own storage).
 */
export async function launchBrowser({ viewport = { width: 1280, height: 800 } } = {}) {
  const { chromium } = await import('playwright-core');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-web-'));
  dirs.add(dir);
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    ignoreDefaultArgs: true,
    args: [...CHROMIUM_FLAGS, `--user-data-dir=${dir}`, '--remote-debugging-pipe', 'about:blank'],
    viewport,
    timeout: 60000,
  });
  const page = context.pages()[0] || await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  return {
    context,
    page,
    errors,
    async close() {
      await withTimeout(context.close(), 15000, 'browser close').catch(() => {});
      fs.rmSync(dir, { recursive: true, force: true });
      dirs.delete(dir);
    },
  };
}

/** Opens the room page as `name` (stored the way the home page stores it) and waits for the join. */
export async function openRoom(page, base, room, name) {
  await page.goto(`${base}/`, { waitUntil: 'domcontentloaded' });
  await page.evaluate((n) => localStorage.setItem('chatgw.name', n), name);
  await page.goto(`${base}/r/${encodeURIComponent(room)}`, { waitUntil: 'domcontentloaded' });
  await waitForJoined(page);
}

export async function waitForJoined(page, timeoutMs = 15000) {
  await page.waitForFunction(() => window.chatgw && window.chatgw.state && window.chatgw.state.joined, null,
    { timeout: timeoutMs });
}

/** The member list as the page shows it: [{id, name, muted, speaking}]. */
export function members(page) {
  return page.$$eval('#members li', (lis) => lis.map((li) => ({
    id: li.dataset.memberId,
    name: li.dataset.name,
    muted: !!li.querySelector('.badge-muted'),
    speaking: !!li.querySelector('.badge-speaking'),
  })));
}

/** The texts of the shown messages, in order. */
export function messageTexts(page) {
  return page.$$eval('#messages li.msg .text', (els) => els.map((e) => e.textContent));
}

export async function sendText(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

// ---------------------------------------------------------------------------------------------
// a protocol client (Node ws) for the parts a second browser is not needed for

export async function bot(port, { room, name = 'bot', since } = {}) {
  const q = new URLSearchParams();
  if (room) q.set('room', room);
  q.set('name', name);
  if (since) q.set('since', since);
  const ws = new WebSocket(`ws://${HOST}:${port}/ws?${q}`);
  const frames = [];
  const waiters = new Set();
  ws.on('message', (data) => {
    let f;
    try { f = JSON.parse(String(data)); } catch { return; }
    frames.push(f);
    for (const w of waiters) w(f);
  });
  await withTimeout(new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); }), 10000, 'bot open');
  const b = {
    ws,
    frames,
    send: (o) => ws.send(JSON.stringify(o)),
    /** Resolves with the first frame (seen or future) matching pred. */
    wait(pred, ms = 15000, what = 'frame') {
      const seen = frames.find(pred);
      if (seen) return Promise.resolve(seen);
      let fn;
      const p = new Promise((resolve) => { fn = (f) => { if (pred(f)) resolve(f); }; waiters.add(fn); });
      return withTimeout(p, ms, `bot ${what}`).finally(() => waiters.delete(fn));
    },
    close() { try { ws.close(1000); } catch { /* gone */ } },
  };
  const welcome = await b.wait((f) => f.type === 'welcome', 10000, 'welcome');
  b.id = welcome.id;
  if (room) await b.wait((f) => f.type === 'room' || f.type === 'error', 10000, 'room snapshot');
  return b;
}
