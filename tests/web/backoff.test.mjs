// Reconnect backoff: the page comes back gently after any close, a drain's 1001 included.
//  1. The delay computation (util.js, loaded in the page): full jitter over [0, window), the
//     window doubling per try up to the cap.
//  2. A drain (SIGTERM: close 1001) with the server down for a while: the page waits before
//     every try, the waits grow, and it resumes with since=<last id> once a server answers.
//  3. A connection that stayed up starts the waits from the first window again; one that did
//     not keeps growing them.
// The page's draw is fixed (conn.random) so the waits it schedules are known; the only timing
// checked is a lower bound (a try never starts before its wait is over), which cannot flake.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  T, bot, checkEnvironment, freePort, launchBrowser, openRoom, sleep, startServer, waitFor,
} from './lib.mjs';

const DRAW = 0.25;        // the page's fixed random draw: each wait is DRAW * window
const STABLE_MS = 5000;   // stableMs for the page under test (the real one is longer)

describe('web client: reconnect backoff', () => {
  let srv, page, browser, port, b;
  const room = 'backoff-room';
  const sockets = [];

  before(async () => {
    checkEnvironment();
    port = await freePort();
    srv = await startServer([], { port });
    browser = await launchBrowser();
    page = browser.page;
    page.on('websocket', (ws) => sockets.push(ws.url()));
  });
  after(async () => {
    b?.close();
    await browser?.close();
    await srv?.stop();
  });

  const status = () => page.textContent('#conn-status');
  /** The page's log of connection states since the last call, [{st, delay, code, t}]. */
  const takeLog = () => page.evaluate(() => window.__connLog.splice(0));
  /** Drops the page's socket and waits until the log shows the n-th wait and a new open after it
   * (the close event comes later than drop(), so the status alone would still say Connected). */
  async function dropAndReturn(n) {
    await page.evaluate(() => window.chatgw.conn.drop());
    await waitFor(() => page.evaluate((k) => {
      const sts = window.__connLog.map((e) => e.st);
      const waits = sts.flatMap((st, i) => (st === 'waiting' ? [i] : []));
      return waits.length >= k && sts.indexOf('open', waits[k - 1]) > 0;
    }, n), { timeoutMs: 30000, what: `back after drop ${n}` });
  }

  it('the delay computation: full jitter over a doubling window, capped', T, async () => {
    await page.goto(`${srv.url}/`, { waitUntil: 'domcontentloaded' });
    const r = await page.evaluate(async () => {
      const { BACKOFF, backoffWindow, backoffDelay } = await import('/js/util.js');
      const windows = [0, 1, 2, 3, 4, 5, 6, 7, 100, 5000].map((n) => backoffWindow(n));
      const drain = [0, 1, 2].map((n) => backoffWindow(n, { first: BACKOFF.drainFirstMs }));
      const w3 = backoffWindow(3);
      const samples = Array.from({ length: 400 }, () => backoffDelay(3));
      return {
        BACKOFF: { ...BACKOFF },
        windows,
        drain,
        w3,
        samples,
        lowest: backoffDelay(3, { random: () => 0 }),
        highest: backoffDelay(3, { random: () => 0.9999999 }),
        negative: backoffWindow(-1),
      };
    });
    const { firstMs, drainFirstMs, capMs, stableMs } = r.BACKOFF;
    assert.ok(firstMs > 0 && drainFirstMs >= firstMs && capMs >= drainFirstMs && stableMs > 0, JSON.stringify(r.BACKOFF));
    assert.ok(capMs <= 60000, `the cap keeps a client coming back within a minute: ${capMs}`);
    for (let i = 0; i < 8; i++) assert.equal(r.windows[i], Math.min(capMs, firstMs * 2 ** i), `window ${i}: ${r.windows}`);
    assert.equal(r.windows.at(-1), capMs, 'capped, however many tries');
    assert.equal(r.windows.at(-2), capMs);
    assert.ok(r.windows.every(Number.isFinite));
    assert.equal(r.negative, firstMs);
    assert.deepEqual(r.drain, [drainFirstMs, 2 * drainFirstMs, 4 * drainFirstMs].map((w) => Math.min(w, capMs)));
    // full jitter: anywhere in [0, window), not just its upper half
    assert.equal(r.lowest, 0);
    assert.equal(r.highest, r.w3 - 1);
    assert.ok(r.samples.every((d) => Number.isInteger(d) && d >= 0 && d < r.w3), 'every draw in [0, window)');
    assert.ok(r.samples.some((d) => d < r.w3 / 2), 'draws below half the window (full, not equal, jitter)');
    assert.ok(r.samples.some((d) => d >= r.w3 / 2), 'draws above half the window');
    assert.ok(new Set(r.samples).size > 100, 'the draws differ');
  });

  it('a drain: the page waits a growing delay before every try, then resumes with since', T, async () => {
    await openRoom(page, srv.url, room, 'Gina');
    await page.evaluate(({ draw, stable }) => {
      const conn = window.chatgw.conn;
      conn.random = () => draw;
      conn.backoff = { ...conn.backoff, stableMs: stable };
      window.__connLog = [];
      const orig = conn.onState;
      conn.onState = (st, info = {}) => {
        window.__connLog.push({ st, delay: info.delay, code: info.code, t: performance.now() });
        orig(st, info);
      };
    }, { draw: DRAW, stable: STABLE_MS });
    b = await bot(port, { room, name: 'Hal' });
    b.send({ type: 'msg', room, text: 'before the drain' });
    const lastId = await waitFor(async () => {
      const id = await page.evaluate(() => window.chatgw.conn.lastId);
      const texts = await page.$$eval('#messages li.msg .text', (els) => els.map((e) => e.textContent));
      return texts.includes('before the drain') && id;
    }, { what: 'the page saw the message' });
    b.close();
    b = null;
    const firstMs = await page.evaluate(() => window.chatgw.conn.backoff.firstMs);
    const drainFirstMs = await page.evaluate(() => window.chatgw.conn.backoff.drainFirstMs);
    const before = sockets.length;

    const code = await srv.stop('SIGTERM');      // drain: close 1001 to the page, then exit
    assert.equal(code.code, 0, 'drained cleanly');
    // the server stays down until the page has waited twice (the drain, then a refused try)
    await waitFor(async () => (await page.evaluate(() => window.__connLog.filter((e) => e.st === 'waiting').length)) >= 2,
      { timeoutMs: 30000, what: 'two waits while the server is down' });
    srv = await startServer([], { port });
    await waitFor(async () => (await status()) === 'Connected', { timeoutMs: 60000, what: 'connected to the new server' });

    const log = await takeLog();
    const waits = log.filter((e) => e.st === 'waiting');
    assert.equal(waits[0].code, 1001, `the first close is the drain's: ${JSON.stringify(log)}`);
    // the known draw makes every wait known: DRAW * the window, doubling from the drain's first
    waits.forEach((w, i) => assert.equal(w.delay, Math.floor(DRAW * Math.min(30000, drainFirstMs * 2 ** i)),
      `wait ${i}: ${JSON.stringify(waits)}`));
    assert.ok(waits[0].delay > 0, 'no reconnect at once on 1001');
    assert.ok(waits[1].delay > waits[0].delay, 'the waits grow');
    assert.ok(drainFirstMs > firstMs, 'a drain starts from a wider window than a drop');
    // every try came after its wait was over (a lower bound only; timers never fire early)
    for (let i = 0; i < log.length; i++) {
      if (log[i].st !== 'waiting') continue;
      const next = log.slice(i + 1).find((e) => e.st === 'connecting');
      assert.ok(next, `a try after wait ${i}`);
      assert.ok(next.t - log[i].t >= log[i].delay - 20, `try ${next.t - log[i].t} ms after a wait of ${log[i].delay}`);
    }
    // and it resumed where it was
    const resumed = sockets.slice(before).map((u) => new URL(u));
    assert.ok(resumed.length >= 2, `tries after the drain: ${sockets.slice(before)}`);
    for (const u of resumed) assert.equal(u.searchParams.get('since'), lastId, `every try resumes: ${u}`);
  });

  it('a connection that stayed up starts again from the first window; a short one does not', T, async () => {
    const firstMs = await page.evaluate(() => window.chatgw.conn.backoff.firstMs);
    await takeLog();
    await sleep(STABLE_MS + 1000);               // up for longer than stableMs (a lower bound)
    await dropAndReturn(1);
    await dropAndReturn(2);                      // at once, well within stableMs of the open
    const waits = (await takeLog()).filter((e) => e.st === 'waiting');
    assert.deepEqual(waits.map((w) => w.delay), [Math.floor(DRAW * firstMs), Math.floor(DRAW * 2 * firstMs)],
      JSON.stringify(waits));
    assert.ok(waits.every((w) => w.code !== 1001 && w.code !== 1013), 'drops, not drains');
  });

  it('the page logged no errors', () => {
    // WebSocket connection failures while the server is down are expected console noise
    assert.deepEqual(browser.errors.filter((e) => !/WebSocket connection|ERR_CONNECTION_REFUSED/.test(e)), []);
  });
});
