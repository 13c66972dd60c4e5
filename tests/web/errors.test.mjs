// Errors from the server show as readable banners: room_full (max_room_members), forbidden
// (a reserved room name in the default policy), rate_limited (the gateway's token bucket) and
// policy_error (a policy hook that throws).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { T, bot, checkEnvironment, launchBrowser, openRoom, sendText, startServer, waitFor } from './lib.mjs';

/** The text of the banner for code, once it shows. */
async function bannerText(page, code) {
  const sel = `#banners .banner[data-code="${code}"]`;
  await page.waitForSelector(sel, { timeout: 15000 });
  assert.equal(await page.getAttribute(sel, 'role'), 'alert');
  return page.textContent(sel);
}

describe('web client: error banners', () => {
  let browser;
  const servers = [];
  let scripts;

  before(async () => {
    checkEnvironment();
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    for (const s of servers) await s.stop();
    if (scripts) fs.rmSync(scripts, { recursive: true, force: true });
  });

  it('a full room shows the room_full banner, with a way to try again', T, async () => {
    const srv = await startServer(['--max-room-members', '1']);
    servers.push(srv);
    const b = await bot(srv.port, { room: 'tiny', name: 'First' });
    const { page } = browser;
    await page.goto(`${srv.url}/`);
    await page.evaluate(() => localStorage.setItem('chatgw.name', 'Late'));
    await page.goto(`${srv.url}/r/tiny`);
    const text = await bannerText(page, 'room_full');
    assert.match(text, /This room is full/);
    assert.match(text, /room_full/);
    assert.equal(await page.evaluate(() => window.chatgw.state.joined), false);
    // once there is room, "Try again" joins
    b.close();
    await waitFor(async () => (await (await fetch(`${srv.url}/api/stats`)).json()).rooms.length === 0, { what: 'room empty' });
    await page.click('#banners .banner[data-code="room_full"] .banner-action');
    await page.waitForFunction(() => window.chatgw.state.joined, null, { timeout: 15000 });
    assert.equal(await page.$$eval('#banners .banner[data-code="room_full"]', (e) => e.length), 0);
  });

  it('a forbidden room shows the forbidden banner (default policy: reserved names)', T, async () => {
    const srv = servers[0];
    const { page } = browser;
    await page.goto(`${srv.url}/r/admin`);
    assert.match(await bannerText(page, 'forbidden'), /may not join this room/);
  });

  it('sending too fast shows the rate_limited banner', T, async () => {
    const srv = await startServer(['--rate-msgs-per-sec', '1', '--rate-burst', '2']);
    servers.push(srv);
    const { page } = browser;
    await openRoom(page, srv.url, 'fast', 'Speedy');
    for (let i = 0; i < 6; i++) await sendText(page, `message ${i}`);
    assert.match(await bannerText(page, 'rate_limited'), /too fast/);
  });

  it('a failing policy hook shows the policy_error banner', T, async () => {
    scripts = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-web-policy-'));
    fs.writeFileSync(path.join(scripts, 'policy.lua'), [
      'return {',
      '  on_message = function(conn, room, msg)',
      '    if msg.type == "msg" and msg.text == "boom" then error("boom on purpose") end',
      '    return true',
      '  end,',
      '}',
      '',
    ].join('\n'));
    const srv = await startServer(['--scripts-dir', scripts]);
    servers.push(srv);
    const { page } = browser;
    await openRoom(page, srv.url, 'fragile', 'Tester');
    await sendText(page, 'boom');
    assert.match(await bannerText(page, 'policy_error'), /policy error/);
    // a banner can be dismissed from the keyboard
    await page.focus('#banners .banner[data-code="policy_error"] .dismiss');
    await page.keyboard.press('Enter');
    assert.equal(await page.$$eval('#banners .banner[data-code="policy_error"]', (e) => e.length), 0);
  });
});
