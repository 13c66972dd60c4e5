// Voice: two browsers with Chromium's fake microphone join voice in one room. Their
// RTCPeerConnections (offer/answer/ICE relayed by the gateway's `signal`) must reach
// `connected` over loopback host candidates, and getStats() must show inbound-rtp audio bytes
// rising on both sides. Mute disables the sender track and shows on the other page.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { T, checkEnvironment, launchBrowser, members, openRoom, startServer, waitFor } from './lib.mjs';

/** [{state, bytes}] for every peer connection of the page (bytes: inbound-rtp audio). */
function peerStats(page) {
  return page.evaluate(async () => {
    const out = [];
    for (const p of window.chatgw.voice ? window.chatgw.voice.peers.values() : []) {
      let bytes = 0;
      const stats = await p.pc.getStats();
      stats.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'audio') bytes += s.bytesReceived || 0; });
      const local = [];
      stats.forEach((s) => { if (s.type === 'local-candidate') local.push(s.address || s.ip); });
      out.push({ id: p.id, state: p.pc.connectionState, bytes, local });
    }
    return out;
  });
}

describe('web client: voice mesh', () => {
  let srv, alice, bob;
  const room = 'voice-check';

  before(async () => {
    checkEnvironment();
    srv = await startServer();
    [alice, bob] = await Promise.all([launchBrowser(), launchBrowser()]);
    await openRoom(alice.page, srv.url, room, 'Alice');
    await openRoom(bob.page, srv.url, room, 'Bob');
  });
  after(async () => {
    await Promise.all([alice?.close(), bob?.close()]);
    await srv?.stop();
  });

  it('peer connections reach connected and audio bytes rise on both sides', T, async () => {
    await alice.page.click('#voice');
    await bob.page.click('#voice');
    for (const [who, page] of [['alice', alice.page], ['bob', bob.page]]) {
      await waitFor(async () => {
        const s = await peerStats(page);
        return s.length === 1 && s[0].state === 'connected';
      }, { timeoutMs: 30000, what: `${who}'s RTCPeerConnection connected` });
      assert.equal(await page.getAttribute('#voice', 'aria-pressed'), 'true');
    }
    const [a0] = await peerStats(alice.page);
    const [b0] = await peerStats(bob.page);
    // only loopback candidates exist in this namespace
    for (const addr of [...a0.local, ...b0.local]) assert.match(String(addr), /^(127\.|::1$)/, `candidate ${addr}`);
    await waitFor(async () => (await peerStats(alice.page))[0].bytes > a0.bytes, { timeoutMs: 20000, what: 'alice receives audio' });
    await waitFor(async () => (await peerStats(bob.page))[0].bytes > b0.bytes, { timeoutMs: 20000, what: 'bob receives audio' });
    const [a1] = await peerStats(alice.page);
    const [b1] = await peerStats(bob.page);
    await waitFor(async () => (await peerStats(alice.page))[0].bytes > a1.bytes, { timeoutMs: 20000, what: 'alice bytes still rising' });
    await waitFor(async () => (await peerStats(bob.page))[0].bytes > b1.bytes, { timeoutMs: 20000, what: 'bob bytes still rising' });
  });

  it('each page shows the other in voice', T, async () => {
    for (const page of [alice.page, bob.page]) {
      await waitFor(async () => (await page.$$('#members li .badge-voice')).length === 2, { what: 'voice badges' });
      await waitFor(async () => /In voice with 1 of 1/.test(await page.textContent('#voice-status')), { what: 'voice status' });
    }
  });

  it('the speaking indicator follows the audio level', T, async () => {
    // Chromium's fake microphone beeps: the other page's meter must see it at some point.
    const aliceId = await alice.page.evaluate(() => window.chatgw.state.me.id);
    await waitFor(async () => (await members(bob.page)).find((m) => m.id === aliceId)?.speaking,
      { timeoutMs: 20000, intervalMs: 30, what: 'speaking badge for alice on bob\'s page' });
  });

  it('mute disables the sender track and shows a badge on the other page', T, async () => {
    const aliceId = await alice.page.evaluate(() => window.chatgw.state.me.id);
    await alice.page.click('#mute');
    const enabled = await alice.page.evaluate(() => [...window.chatgw.voice.peers.values()]
      .map((p) => p.pc.getSenders().find((s) => s.track && s.track.kind === 'audio')?.track.enabled));
    assert.deepEqual(enabled, [false]);
    await waitFor(async () => (await members(bob.page)).find((m) => m.id === aliceId)?.muted, { what: 'mute badge' });
    await alice.page.click('#mute');
    await waitFor(async () => !(await members(bob.page)).find((m) => m.id === aliceId)?.muted, { what: 'mute badge gone' });
  });

  it('leaving voice closes the peer on both sides', T, async () => {
    await bob.page.click('#voice');
    assert.equal(await bob.page.getAttribute('#voice', 'aria-pressed'), 'false');
    await waitFor(async () => (await peerStats(alice.page)).length === 0, { what: 'alice closed the peer' });
    assert.equal((await peerStats(bob.page)).length, 0);
  });

  it('the pages logged no errors', () => {
    assert.deepEqual([...alice.errors, ...bob.errors], []);
  });
});
