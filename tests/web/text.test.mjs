// Text chat in two real browsers: presence, history on join, messages both ways with
// timestamps, a mute badge, copy-link, and the default policy's /me, /nick and typing.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  T, checkEnvironment, launchBrowser, members, messageTexts, openRoom, sendText, startServer, waitFor,
} from './lib.mjs';

describe('web client: text chat', () => {
  let srv, alice, bob;
  const room = 'text-room';

  before(async () => {
    checkEnvironment();
    srv = await startServer();
    [alice, bob] = await Promise.all([launchBrowser(), launchBrowser()]);
  });
  after(async () => {
    await Promise.all([alice?.close(), bob?.close()]);
    await srv?.stop();
  });

  const names = async (page) => (await members(page)).map((m) => m.name).sort();

  it('two pages join, see each other, get history on join and exchange messages', T, async () => {
    await openRoom(alice.page, srv.url, room, 'Alice');
    await sendText(alice.page, 'said before bob came');
    await waitFor(async () => (await messageTexts(alice.page)).includes('said before bob came'), { what: 'own message echoed' });

    await openRoom(bob.page, srv.url, room, 'Bob');
    await waitFor(async () => (await messageTexts(bob.page)).includes('said before bob came'), { what: 'history on join' });
    await waitFor(async () => JSON.stringify(await names(alice.page)) === '["Alice","Bob"]', { what: 'alice sees bob' });
    await waitFor(async () => JSON.stringify(await names(bob.page)) === '["Alice","Bob"]', { what: 'bob sees alice' });

    await sendText(alice.page, 'hello bob');
    await waitFor(async () => (await messageTexts(bob.page)).includes('hello bob'), { what: 'bob gets alice\'s message' });
    await sendText(bob.page, 'hi alice');
    await waitFor(async () => (await messageTexts(alice.page)).includes('hi alice'), { what: 'alice gets bob\'s message' });
    for (const p of [alice.page, bob.page]) {
      assert.deepEqual(await messageTexts(p), ['said before bob came', 'hello bob', 'hi alice']);
      // each message carries a timestamp and its author
      const meta = await p.$$eval('#messages li.msg', (lis) => lis.map((li) => ({
        from: li.querySelector('.from')?.textContent,
        time: li.querySelector('time')?.getAttribute('datetime'),
      })));
      assert.deepEqual(meta.map((m) => m.from), ['Alice', 'Alice', 'Bob']);
      for (const m of meta) assert.ok(!Number.isNaN(Date.parse(m.time)), `a timestamp: ${m.time}`);
    }
    // Enter sent it and emptied the box
    assert.equal(await alice.page.inputValue('#text'), '');
  });

  it('a mute shows as a badge on the other page, and goes away on unmute', T, async () => {
    const aliceId = await alice.page.evaluate(() => window.chatgw.state.me.id);
    const badge = async () => (await members(bob.page)).find((m) => m.id === aliceId)?.muted;
    assert.equal(await badge(), false);
    await alice.page.click('#mute');
    assert.equal(await alice.page.getAttribute('#mute', 'aria-pressed'), 'true');
    await waitFor(async () => (await badge()) === true, { what: 'mute badge on bob\'s page' });
    await alice.page.click('#mute');
    await waitFor(async () => (await badge()) === false, { what: 'mute badge gone' });
  });

  it('copy link puts the room URL on the clipboard', T, async () => {
    await alice.context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: srv.url });
    await alice.page.click('#copy-link');
    await waitFor(async () => /Link copied|Copy this link/.test(await alice.page.textContent('#copy-status')),
      { what: 'copy feedback' });
    const clip = await alice.page.evaluate(() => navigator.clipboard.readText());
    assert.equal(clip, `${srv.url}/r/${room}`);
  });

  it('the controls are labelled and reachable by keyboard', T, async () => {
    const unlabelled = await alice.page.$$eval('button, input', (els) => els
      .filter((e) => !e.closest('[hidden]') && !e.classList.contains('offscreen'))
      .filter((e) => !(e.getAttribute('aria-label') || e.labels?.length || e.textContent.trim()))
      .map((e) => e.outerHTML));
    assert.deepEqual(unlabelled, []);
    // Tab from the message box reaches Send; Enter on a focused button works like a click
    await alice.page.focus('#text');
    await alice.page.keyboard.press('Tab');
    assert.equal(await alice.page.evaluate(() => document.activeElement.id), 'send');
    await alice.page.focus('#mute');
    await alice.page.keyboard.press('Enter');
    assert.equal(await alice.page.getAttribute('#mute', 'aria-pressed'), 'true');
    await alice.page.keyboard.press('Enter');
    assert.equal(await alice.page.getAttribute('#mute', 'aria-pressed'), 'false');
  });

  // The rest needs the default policy (scripts/routing.lua) hooked into the server.
  it('/me is delivered as an action line', T, async () => {
    await sendText(bob.page, '/me waves');
    await waitFor(async () => (await alice.page.$$eval('#messages li.msg.action .text', (e) => e.map((x) => x.textContent)))
      .includes('* Bob waves'), { what: 'the /me action on alice\'s page' });
  });

  it('/nick renames the member on both pages', T, async () => {
    await sendText(bob.page, '/nick Robert');
    const renamed = async (p) => (await names(p)).includes('Robert');
    await waitFor(() => renamed(alice.page), { what: 'alice sees the new nickname' });
    await waitFor(() => renamed(bob.page), { what: 'bob sees his new nickname' });
    // and it is remembered for the next visit
    assert.equal(await bob.page.evaluate(() => localStorage.getItem('chatgw.name')), 'Robert');
  });

  it('typing shows an indicator on the other page', T, async () => {
    await alice.page.type('#text', 'typing something', { delay: 20 });
    await waitFor(async () => /Alice is typing/.test(await bob.page.textContent('#typing')), { what: 'typing indicator' });
    await alice.page.press('#text', 'Enter');
    await waitFor(async () => (await bob.page.textContent('#typing')) === '', { what: 'indicator cleared by the message' });
  });

  it('the pages logged no errors', () => {
    assert.deepEqual([...alice.errors, ...bob.errors].filter((e) => !/favicon/.test(e)), []);
  });
});
