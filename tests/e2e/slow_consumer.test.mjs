// Slow consumer: a member that stops reading while another floods its room is closed with 1008
// once its write queue stays over write_queue_bytes for slow_grace_ms; the server's memory stays
// bounded meanwhile, the other members keep receiving every message, and /metrics counts it.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, chatClient, passthroughPolicyDir, scrape, metricSum, procRssKb, parseMsgId, asciiOf,
  withTimeout, sleep,
} from './lib.mjs';

const WRITE_QUEUE = 65536;
const GRACE_MS = 3000;
const TEXT = asciiOf(2000, 11);
const WINDOW = 16;                 // messages the flooder keeps in flight (waits for acks)
const FLOOD_LIMIT_MS = 30000;      // the flood stops here even if nothing happened

describe('slow consumer', () => {
  let srv;
  const open = [];
  before(async () => {
    srv = await startServer(['--scripts-dir', passthroughPolicyDir(),
      '--rate-msgs-per-sec', '1000000', '--rate-burst', '1000000',
      '--write-queue-bytes', String(WRITE_QUEUE), '--slow-grace-ms', String(GRACE_MS),
      '--max-text-bytes', '4096', '--history-size', '100'],
    // under an ASan build, freed blocks sit in a 256 MiB quarantine and would read as RSS growth
    { env: { ASAN_OPTIONS: [process.env.ASAN_OPTIONS, 'quarantine_size_mb=1', 'thread_local_quarantine_size_kb=64'].filter(Boolean).join(':') } });
  });
  after(async () => {
    await Promise.all(open.map((c) => c.close().catch(() => c.terminate())));
    if (srv) await srv.stop('SIGKILL').catch(() => {});
  });

  it('is closed with 1008, memory stays bounded, others keep receiving, metrics count it', { timeout: 90000 }, async (t) => {
    try {
      await floodTest(t);
    } catch (e) {
      if (srv.exitInfo) e.message += `\nchatgw exited (${JSON.stringify(srv.exitInfo)}):\n${srv.tail(20)}`;
      throw e;
    }
  });

  async function floodTest(t) {
    const room = `flood-${process.pid}`;
    const slow = await chatClient(srv.port, `/ws?room=${room}&name=slow`);
    const watcher = await chatClient(srv.port, `/ws?room=${room}&name=watcher`);
    const flooder = await chatClient(srv.port, `/ws?room=${room}&name=flooder`);
    open.push(slow, watcher, flooder);
    for (const c of [slow, watcher, flooder]) await c.next('room');

    // the watcher counts and checks every flood message as it arrives, without keeping them
    const seen = { n: 0, lastSeq: 0, disorder: 0, leftSlow: false, firstId: null };
    watcher.ws.on('message', (d) => {
      const m = JSON.parse(d.toString());
      if (m.type === 'leave' && m.member?.id === slow.id) seen.leftSlow = true;
      if (m.type !== 'msg' || m.from?.id !== flooder.id) return;
      const s = parseMsgId(m.id).seq;
      if (seen.lastSeq && s !== seen.lastSeq + 1) seen.disorder++;
      seen.lastSeq = s;
      seen.n++;
    });
    watcher.inbox.length = 0;      // its inbox is not used from here on
    const keepInboxSmall = setInterval(() => { watcher.inbox.length = 0; flooder.inbox.length = 0; }, 50).unref();

    const m0 = (await scrape(srv.port)).samples;
    const rss0 = procRssKb(srv.proc.pid);
    assert.ok(rss0 > 0, 'server RSS readable from /proc');
    let rssPeak = rss0;
    const rssTimer = setInterval(() => { const r = procRssKb(srv.proc.pid); if (r > rssPeak) rssPeak = r; }, 25).unref();

    // stop reading on the slow client (ws.pause() pauses its TCP socket)
    if (typeof slow.ws.pause === 'function') slow.ws.pause(); else slow.ws._socket.pause();

    // watch for the server giving up on the slow member
    let slowClosed = false;
    const poller = (async () => {
      const end = Date.now() + FLOOD_LIMIT_MS;
      while (!slowClosed && Date.now() < end) {
        const s = (await scrape(srv.port)).samples;
        if (metricSum(s, 'chatgw_slow_consumers_total') > metricSum(m0, 'chatgw_slow_consumers_total')) slowClosed = true;
        else await sleep(50);
      }
    })();

    // flood with a bounded window of unacked messages
    const acked = [];
    const floodEnd = Date.now() + FLOOD_LIMIT_MS;
    let sent = 0;
    const pending = new Map();
    flooder.ws.on('message', (d) => {
      const m = JSON.parse(d.toString());
      if (m.type === 'ack' && pending.has(m.cid)) { pending.get(m.cid)(m); pending.delete(m.cid); }
    });
    let floodErr = null;
    while (!slowClosed && Date.now() < floodEnd) {
      const batch = [];
      for (let i = 0; i < WINDOW; i++) {
        const cid = `f${sent++}`;
        batch.push(new Promise((resolve) => pending.set(cid, resolve)));
        flooder.send({ type: 'msg', room, text: TEXT, cid });
      }
      try {
        const acks = await withTimeout(Promise.all(batch), 10000, 'flood acks');
        for (const a of acks) acked.push(a.id);
      } catch (e) { floodErr = e; break; }
    }
    await poller;
    clearInterval(rssTimer);
    const floodBytes = sent * TEXT.length;
    assert.equal(floodErr, null, `the flooder kept being served (${floodErr?.message})`);
    assert.ok(slowClosed, `the slow consumer was closed within the flood (sent ${sent} msgs, ${floodBytes} bytes)`);

    // the slow client now reads again: it drains what the kernel held, then sees close 1008
    if (typeof slow.ws.resume === 'function') slow.ws.resume(); else slow.ws._socket.resume();
    slow.inbox.length = 0;
    const keepSlowSmall = setInterval(() => { slow.inbox.length = 0; }, 20).unref();
    const info = await withTimeout(slow.closedP, 15000, 'the slow client to be closed').finally(() => clearInterval(keepSlowSmall));
    assert.equal(info.code, 1008, `slow consumer close code (reason ${JSON.stringify(info.reason)})`);

    // memory: the slow member's queue is bounded, not the whole flood
    const growthMb = (rssPeak - rss0) / 1024;
    t.diagnostic(`flood: ${sent} msgs, ${(floodBytes / 1048576).toFixed(1)} MiB; server RSS ${rss0} KiB -> peak ${rssPeak} KiB`);
    assert.ok(growthMb < 16,
      `server RSS grew by ${growthMb.toFixed(1)} MiB during a ${(floodBytes / 1048576).toFixed(1)} MiB flood (bound 16 MiB)`);

    // the others: every acked flood message reached the watcher, in order, and it saw slow leave
    await withTimeout((async () => { while (seen.n < acked.length || !seen.leftSlow) await sleep(20); })(), 10000,
      `the watcher to catch up (${seen.n}/${acked.length}, leave seen: ${seen.leftSlow})`).catch((e) => {
      throw new Error(`${e.message}; watcher got ${seen.n}/${acked.length}, leave ${seen.leftSlow}`);
    });
    assert.equal(seen.n, acked.length, 'the watcher got every flood message');
    assert.equal(seen.disorder, 0, 'in order, without gaps');
    assert.ok(watcher.isOpen && flooder.isOpen, 'the other members are still connected');
    clearInterval(keepInboxSmall);
    flooder.drain();
    const after1 = acked.length;
    const last = await flooder.say(room, 'after the slow one left', 5000);
    assert.ok(parseMsgId(last.id).seq > parseMsgId(acked.at(-1)).seq);
    await withTimeout((async () => { while (seen.lastSeq <= parseMsgId(acked.at(-1)).seq) await sleep(20); })(), 5000,
      'the watcher to get a message sent after the slow member was closed');
    assert.ok(seen.n >= after1);

    // metrics
    const m1 = (await scrape(srv.port)).samples;
    const d = (n, l) => metricSum(m1, n, l) - metricSum(m0, n, l);
    assert.equal(d('chatgw_slow_consumers_total'), 1, 'chatgw_slow_consumers_total counted the slow member once');
    assert.ok(d('chatgw_messages_dropped_total', { reason: 'slow' }) >= 1,
      `chatgw_messages_dropped_total{reason="slow"} grew (by ${d('chatgw_messages_dropped_total', { reason: 'slow' })})`);
    assert.ok(d('chatgw_ws_close_sent_total', { code: '1008' }) >= 1, 'a 1008 close frame was sent');
    assert.ok(d('chatgw_messages_delivered_total') >= 2 * acked.length, 'flood fan-out counted as delivered');
    assert.equal(metricSum(m1, 'chatgw_room_members'), 2, 'the slow member left the room');
  }
});
