// Screenshots of the home and room pages (desktop and phone) saved under the build folder
// (<build>/web-artifacts/*.png) as test artifacts, each checked to be a non-empty PNG. Also
// checks, through the browser, what the gateway serves: the app with its security headers,
// the SPA fallback, the public room list filtered by the directory policy.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  ARTIFACTS, T, bot, checkEnvironment, launchBrowser, openRoom, sendText, startServer, waitFor,
} from './lib.mjs';

const PNG = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

function checkPng(file) {
  const st = fs.statSync(file);
  assert.ok(st.size > 1000, `${file} has ${st.size} bytes`);
  assert.deepEqual(fs.readFileSync(file).subarray(0, 8), PNG, `${file} is a PNG`);
}

describe('web client: pages and screenshots', () => {
  let srv, browser, bots = [];

  before(async () => {
    checkEnvironment();
    srv = await startServer();
    browser = await launchBrowser();
    bots = [
      await bot(srv.port, { room: 'lobby', name: '🦉 Quiet Owl' }),
      await bot(srv.port, { room: 'lobby', name: '🐼 Sunny Panda' }),
      await bot(srv.port, { room: 'design-review', name: '🦁 Bold Lion' }),
      await bot(srv.port, { room: '_hidden-ops', name: 'ops' }),
    ];
    bots[0].send({ type: 'msg', room: 'lobby', text: 'Welcome to the lobby! Say hi 👋' });
    bots[1].send({ type: 'msg', room: 'lobby', text: 'Voice works too: press “Join voice”.' });
  });
  after(async () => {
    for (const b of bots) b.close();
    await browser?.close();
    await srv?.stop();
  });

  it('serves the app with its content type, CSP and nosniff; /r/<room> falls back to it', T, async () => {
    const res = await browser.page.goto(`${srv.url}/r/lobby`);
    const h = res.headers();
    assert.equal(res.status(), 200);
    assert.equal(h['content-type'], 'text/html; charset=utf-8');
    assert.equal(h['x-content-type-options'], 'nosniff');
    assert.match(h['content-security-policy'], new RegExp(`connect-src 'self' ws://${srv.url.slice(7)} wss://`));
    assert.equal(h['content-encoding'], 'gzip');
    assert.ok(h.etag);
    const js = await fetch(`${srv.url}/js/app.js`);
    assert.equal(js.headers.get('content-type'), 'text/javascript; charset=utf-8');
    const again = await fetch(`${srv.url}/js/app.js`, { headers: { 'If-None-Match': js.headers.get('etag') } });
    assert.equal(again.status, 304);
  });

  it('home page: public rooms from /api/stats, filtered by the directory; screenshot', T, async () => {
    const { page } = browser;
    await page.goto(`${srv.url}/`);
    await page.evaluate(() => localStorage.setItem('chatgw.name', '🦊 Swift Fox'));
    await page.reload();
    await waitFor(async () => (await page.$$eval('#rooms a', (a) => a.map((x) => x.dataset.room))).length === 2,
      { what: 'two public rooms listed' });
    const listed = await page.$$eval('#rooms a', (a) => a.map((x) => [x.dataset.room, x.textContent]));
    assert.deepEqual(listed.map((r) => r[0]), ['lobby', 'design-review'], 'busiest first; _hidden-ops is private');
    assert.match(listed[0][1], /2 online/);
    assert.equal(await page.evaluate(() => window.chatgw.home.source), 'policy', 'the policy answered the directory');
    assert.equal(await page.inputValue('#name'), '🦊 Swift Fox');
    const file = path.join(ARTIFACTS, 'home.png');
    await page.screenshot({ path: file, fullPage: true });
    checkPng(file);
  });

  it('home page: the nickname is random, editable and remembered; join by name', T, async () => {
    const { page } = browser;
    await page.evaluate(() => localStorage.removeItem('chatgw.name'));
    await page.reload();
    const first = await page.inputValue('#name');
    assert.ok(first.length > 0, 'a random nickname is offered');
    await page.click('#random-name');
    await page.fill('#name', 'Zoë');
    await page.fill('#room', 'new room');
    await page.press('#room', 'Enter');
    await page.waitForURL(`${srv.url}/r/new-room`);
    await page.waitForFunction(() => window.chatgw.state && window.chatgw.state.joined, null, { timeout: 15000 });
    assert.equal(await page.evaluate(() => localStorage.getItem('chatgw.name')), 'Zoë');
    assert.deepEqual(await page.$$eval('#members li', (l) => l.map((x) => x.dataset.name)), ['Zoë']);
  });

  it('room page screenshots, desktop and phone', T, async () => {
    const { page } = browser;
    await openRoom(page, srv.url, 'lobby', '🦊 Swift Fox');
    await sendText(page, 'Hi all! Just testing the new client.');
    await waitFor(async () => (await page.$$('#messages li.msg')).length === 3, { what: 'three messages' });
    let file = path.join(ARTIFACTS, 'room.png');
    await page.screenshot({ path: file, fullPage: true });
    checkPng(file);

    await page.setViewportSize({ width: 390, height: 844 });
    // readable on a phone: nothing wider than the screen
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    assert.ok(overflow <= 0, `no horizontal scrolling on a phone (${overflow}px too wide)`);
    file = path.join(ARTIFACTS, 'room-phone.png');
    await page.screenshot({ path: file });
    checkPng(file);
  });
});
