// Recovery: the page reconnects by itself and shows what was said while it was away.
//  1. The page's socket drops while the server stays up: the page comes back with
//     since=<last id> and gets exactly the missed messages.
//  2. The server drains (SIGTERM: close 1001 to every socket) and a new one starts on the same
//     port: the page reconnects with backoff until the new server answers, and shows the
//     messages sent there (web_backoff checks the waits themselves).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  T, bot, checkEnvironment, freePort, launchBrowser, messageTexts, openRoom, sendText, startServer, waitFor,
} from './lib.mjs';

describe('web client: recovery', () => {
  let srv, page, browser, port, b;
  const room = 'recover-room';
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

  it('a dropped socket resumes with since and shows the missed messages once', T, async () => {
    await openRoom(page, srv.url, room, 'Carol');
    b = await bot(port, { room, name: 'Dave' });
    await sendText(page, 'before the drop');
    await b.wait((f) => f.type === 'msg' && f.text === 'before the drop', 15000, 'carol\'s message');
    const carolId = await page.evaluate(() => window.chatgw.state.me.id);
    // the page has its own message (with its id) when the bot has it, or a moment later
    const lastId = await waitFor(() => page.evaluate(() => window.chatgw.conn.lastId),
      { what: 'the page tracks the last message id' });

    await page.evaluate(() => window.chatgw.conn.drop());
    await b.wait((f) => f.type === 'leave' && f.member && f.member.id === carolId, 15000, 'carol left');
    b.send({ type: 'msg', room, text: 'while away 1' });
    b.send({ type: 'msg', room, text: 'while away 2' });

    await waitFor(async () => (await messageTexts(page)).includes('while away 2'), { timeoutMs: 30000, what: 'missed messages' });
    await waitFor(async () => (await status()) === 'Connected', { what: 'connected again' });
    assert.deepEqual(await messageTexts(page), ['before the drop', 'while away 1', 'while away 2']);
    const resumed = sockets.slice(1).find((u) => new URL(u).searchParams.get('since'));
    assert.ok(resumed, `a reconnect carried since: ${sockets.join(' ')}`);
    assert.equal(new URL(resumed).searchParams.get('since'), lastId);
  });

  it('a server drain and restart: the page comes back by itself and shows what was sent meanwhile', T, async () => {
    const before = sockets.length;
    b.close();
    b = null;
    const code = await srv.stop('SIGTERM');      // drain: close 1001 to the page, then exit
    assert.equal(code.code, 0, 'drained cleanly');
    await waitFor(async () => (await status()) !== 'Connected', { what: 'the page noticed' });

    srv = await startServer([], { port });
    b = await bot(port, { room, name: 'Erin' });
    b.send({ type: 'msg', room, text: 'said on the new server' });

    await waitFor(async () => (await messageTexts(page)).includes('said on the new server'),
      { timeoutMs: 45000, what: 'the message from the new server' });
    await waitFor(async () => (await status()) === 'Connected', { what: 'connected to the new server' });
    assert.ok(sockets.length > before, 'the page opened a new socket');
    // nothing shown twice, nothing lost from before
    const texts = await messageTexts(page);
    assert.deepEqual(texts.filter((t) => t === 'before the drop'), ['before the drop']);
    assert.equal(new Set(texts).size, texts.length, `no duplicates: ${texts}`);
    // and the room works both ways again
    await sendText(page, 'back again');
    await b.wait((f) => f.type === 'msg' && f.text === 'back again', 15000, 'carol\'s message after the restart');
  });

  it('the page logged no errors', () => {
    // WebSocket connection failures while the server is down are expected console noise
    assert.deepEqual(browser.errors.filter((e) => !/WebSocket connection|ERR_CONNECTION_REFUSED/.test(e)), []);
  });
});
