// Voice through Janus's AudioBridge behind chatgw (janus_url): six Chromium pages with the fake
// microphone join one voice room through chatgw only (voice_join, voice_answer, trickle), reach
// `connected` and receive the mix with non-zero energy; a mute is enforced in the mixer (the
// muted page's track stays enabled, yet its audio stops reaching the others); the policy
// refuses a voice join past its cap with voice_full; Janus killed: text goes on, readiness says
// so, joins get voice_unavailable; Janus back: voice comes back by itself.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { CHROMIUM, SRC, bot, messageTexts, openRoom, sendText, sleep, startServer, waitFor } from '../web/lib.mjs';
import { startJanus, voiceSkipReason } from './janus_lib.mjs';

const skip = voiceSkipReason();
if (skip) console.log(`# voice tests skipped: ${skip}`);
const T = { timeout: 180000, skip: skip || false };
const N = 6;
const ROOM = 'voice-sfu';

/** {state, bytes, energy} of the page's one connection to the mixer (inbound audio). */
function sfuStats(page) {
  return page.evaluate(async () => {
    const v = window.chatgw.voice;
    if (!v || !v.pc) return { state: 'none', bytes: 0, energy: 0, joins: v ? v.joins : 0 };
    let bytes = 0;
    let energy = 0;
    (await v.pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'audio') {
        bytes += s.bytesReceived || 0;
        energy += s.totalAudioEnergy || 0;
      }
    });
    return { state: v.pc.connectionState, bytes, energy, joins: v.joins };
  });
}

/** A WAV file (48 kHz, mono, 16 bit) of a steady tone with a slow vibrato, for Chromium's fake
 * microphone: its default beep is too short for the mixer to call anyone talking. */
function toneWav(file, seconds = 10) {
  const rate = 48000;
  const n = rate * seconds;
  const buf = Buffer.alloc(44 + n * 2);
  buf.write('RIFF', 0); buf.writeUInt32LE(36 + n * 2, 4); buf.write('WAVEfmt ', 8);
  buf.writeUInt32LE(16, 16); buf.writeUInt16LE(1, 20); buf.writeUInt16LE(1, 22);
  buf.writeUInt32LE(rate, 24); buf.writeUInt32LE(rate * 2, 28); buf.writeUInt16LE(2, 32); buf.writeUInt16LE(16, 34);
  buf.write('data', 36); buf.writeUInt32LE(n * 2, 40);
  let phase = 0;
  for (let i = 0; i < n; i++) {
    const f = 330 + 60 * Math.sin((2 * Math.PI * 3 * i) / rate);
    phase += (2 * Math.PI * f) / rate;
    buf.writeInt16LE(Math.round(12000 * Math.sin(phase)), 44 + i * 2);
  }
  fs.writeFileSync(file, buf);
}

/** The audio energy a page receives over about ms (a difference of totalAudioEnergy). */
async function energyOver(page, ms) {
  const a = await sfuStats(page);
  await sleep(ms);
  const b = await sfuStats(page);
  return b.energy - a.energy;
}

async function readyz(url) {
  const r = await fetch(`${url}/readyz`);
  return { status: r.status, body: await r.json() };
}

describe('voice through Janus (AudioBridge)', { skip: skip || false }, () => {
  let janus, srv, browser, scripts;
  const pages = [];

  before(async () => {
    if (skip) return;
    janus = await startJanus();
    // the default policy, with the SFU voice cap at the room's six members
    scripts = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-voice-scripts-'));
    for (const f of fs.readdirSync(path.join(SRC, 'scripts'))) {
      let text = fs.readFileSync(path.join(SRC, 'scripts', f), 'utf8');
      if (f === 'settings.lua') text = text.replace(/voice_sfu_max = \d+/, `voice_sfu_max = ${N}`);
      fs.writeFileSync(path.join(scripts, f), text);
    }
    toneWav(path.join(scripts, 'tone.wav'));
    srv = await startServer(['--janus-url', janus.url, '--janus-timeout-ms', '3000', '--scripts-dir', scripts]);
    const { chromium } = await import('../web/node_modules/playwright-core/index.mjs');
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--use-fake-ui-for-media-stream',
        '--use-fake-device-for-media-stream', `--use-file-for-fake-audio-capture=${path.join(scripts, 'tone.wav')}`,
        '--autoplay-policy=no-user-gesture-required'],
      timeout: 60000,
    });
    for (let i = 0; i < N; i++) {
      const context = await browser.newContext();
      const page = await context.newPage();
      await openRoom(page, srv.url, ROOM, `member${i}`);
      pages.push(page);
    }
  });
  after(async () => {
    await browser?.close().catch(() => {});
    await srv?.stop().catch(() => {});
    await janus?.close();
    if (scripts) fs.rmSync(scripts, { recursive: true, force: true });
  });

  it('the server offers the mixer and readiness reports Janus', T, async () => {
    const cfg = await (await fetch(`${srv.url}/api/config`)).json();
    assert.equal(cfg.voice, 'sfu');
    await waitFor(async () => (await readyz(srv.url)).body.janus === 'up', { what: 'readyz janus up' });
  });

  it(`${N} members join voice, connect and receive mixed audio with energy`, T, async () => {
    for (const page of pages) await page.click('#voice');
    for (const [i, page] of pages.entries()) {
      await waitFor(async () => (await sfuStats(page)).state === 'connected',
        { timeoutMs: 60000, what: `member${i} connected to the mixer\n${srv.tail(20)}` });
    }
    for (const [i, page] of pages.entries()) {
      await waitFor(async () => (await sfuStats(page)).energy > 0, { timeoutMs: 30000, what: `member${i} hears energy` });
      const e = await energyOver(page, 1500);
      assert.ok(e > 0, `member${i} energy still rising (${e})`);
    }
    // every page lists all six in voice (the server's voice events)
    for (const page of pages) {
      await waitFor(async () => (await page.$$('#members li .badge-voice')).length === N, { what: 'voice badges' });
    }
  });

  it('shows who is talking (the mixer\'s talking events)', T, async () => {
    await waitFor(async () => {
      for (const page of pages) if ((await page.$$('#members li.speaking')).length > 0) return true;
      return false;
    }, { timeoutMs: 30000, intervalMs: 100, what: 'a speaking badge from voice_talking' });
  });

  it('a mute is enforced in the mixer: the muted member\'s audio no longer reaches the others', T, async () => {
    // Mute frames straight on the socket: the pages' tracks stay enabled and keep sending the
    // fake microphone's beeps, so only the mixer can silence them.
    const send = (page, type) => page.evaluate(([t, room]) => window.chatgw.conn.send({ type: t, room }), [type, ROOM]);
    for (const page of pages.slice(1)) await send(page, 'mute');
    const listener = pages[1];
    // only member0 is heard now: member1 still hears it
    await waitFor(async () => (await energyOver(listener, 1500)) > 0, { timeoutMs: 20000, what: 'member1 hears member0' });
    const heard = await energyOver(listener, 3000);
    await send(pages[0], 'mute');
    const trackOn = await pages[0].evaluate(() => window.chatgw.voice.track.enabled);
    assert.equal(trackOn, true, 'member0 still sends audio from its browser');
    // silence within a few seconds, and it stays silent
    await waitFor(async () => (await energyOver(listener, 1500)) < heard / 100, { timeoutMs: 20000, what: 'silence after the mute' });
    const after = await energyOver(listener, 3000);
    assert.ok(after < heard / 100, `muted audio still reaches member1 (${after} vs ${heard} before)`);
    for (const page of pages) await send(page, 'unmute');
    await waitFor(async () => (await energyOver(listener, 1500)) > heard / 10, { timeoutMs: 20000, what: 'audio after unmute' });
  });

  it('the policy refuses a voice join past its cap with voice_full', T, async () => {
    const b = await bot(srv.port, { room: ROOM, name: 'seventh' });
    try {
      b.send({ type: 'voice_join', room: ROOM, cid: 'v7', data: { type: 'offer', sdp: 'v=0\r\n' } });
      const err = await b.wait((f) => f.type === 'error' && f.ref === 'v7', 15000, 'refusal');
      assert.equal(err.code, 'voice_full');
    } finally {
      b.close();
    }
  });

  it('Janus killed: text chat goes on and joins get voice_unavailable; Janus back: voice returns', T, async () => {
    const joinsBefore = await Promise.all(pages.map(async (p) => (await sfuStats(p)).joins));
    await janus.stop('SIGKILL');
    await waitFor(async () => (await readyz(srv.url)).body.janus === 'down', { timeoutMs: 20000, what: 'readyz janus down' });
    const r = await readyz(srv.url);
    assert.equal(r.status, 200, 'Janus down does not fail readiness');
    await sendText(pages[0], 'still here without Janus');
    await waitFor(async () => (await messageTexts(pages[5])).includes('still here without Janus'), { what: 'text while Janus is down' });
    const b = await bot(srv.port, { room: 'voice-other', name: 'late' });
    try {
      b.send({ type: 'voice_join', room: 'voice-other', cid: 'v8', data: { type: 'offer', sdp: 'v=0\r\n' } });
      const err = await b.wait((f) => f.type === 'error' && f.ref === 'v8', 15000, 'voice_unavailable');
      assert.equal(err.code, 'voice_unavailable');
    } finally {
      b.close();
    }
    await janus.start();
    await waitFor(async () => (await readyz(srv.url)).body.janus === 'up', { timeoutMs: 30000, what: 'readyz janus up again' });
    for (const [i, page] of pages.entries()) {
      await waitFor(async () => {
        const s = await sfuStats(page);
        return s.state === 'connected' && s.joins > joinsBefore[i];
      }, { timeoutMs: 90000, intervalMs: 250, what: `member${i} back in voice\n${srv.tail(10)}` });
    }
    for (const [i, page] of pages.entries()) {
      await waitFor(async () => (await energyOver(page, 1500)) > 0, { timeoutMs: 30000, what: `member${i} hears again` });
    }
  });
});
