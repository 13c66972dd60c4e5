#!/usr/bin/env node
// Bounded soak of chatgw (issue 6, "Soak"); `make soak` runs it.
//
// SOAK_CLIENTS (2000) client loops run against one server. Each loop connects to a random room,
// chats (msg + ack), joins a second room, chats there, leaves it, then disconnects abruptly
// (ws.terminate(): no close frame; one cycle in five terminates with messages still in flight)
// and starts over. A 10% share negotiates permessage-deflate. Phases:
//
//   start       server up, no client: fd baseline
//   warm-up     SOAK_WARMUP_SECONDS (a third of SOAK_SECONDS, at least 10) of the loop, then every
//               client is terminated and the server settles (online 0): RSS and fds after warm-up
//   soak        SOAK_SECONDS (60) of the loop, then the same stop and settle: RSS and fds after
//
// Pass: RSS after <= RSS after warm-up + 10%; the open-fd count (/proc/PID/fd) is back to its
// baseline after each phase; no error-level log line (none is expected) and nothing on stderr;
// the server is alive and its counts (online, rooms, memberships, open WebSockets) are back to
// zero. Exit 0 on pass, 1 on fail; the figures are printed either way.
//
// Both RSS figures are taken idle, after the same kind of load. glibc keeps most freed memory
// mapped, so an idle RSS mostly shows the heap's high-water mark: the warm-up is long enough for
// the history rings to fill and the connection count to peak, and the think time keeps the
// clients reading fast enough that write queues (and so the peak) do not swing with CPU
// contention. A leak shows as RSS that keeps climbing; SOAK_ROUNDS=N splits the soak into N
// rounds and prints the idle RSS after each, to tell a trend from noise.
//
// Loopback only. Clients bind source addresses 127.0.0.2 - 127.0.0.251 so that tens of
// thousands of short connections do not run one address out of ephemeral ports (TIME_WAIT), and
// per-address limits see a few connections each. Node raises its own RLIMIT_NOFILE soft limit
// to the hard one at start, and the server, a child, inherits it; the script checks it.
//
// Knobs (environment): SOAK_SECONDS, SOAK_WARMUP_SECONDS, SOAK_ROUNDS, SOAK_CLIENTS, SOAK_ROOMS,
// SOAK_PAUSE_MS (mean think time between actions, default 2000 ms, each pause 40%..160% of it),
// SOAK_SCRIPTS (a policy directory; default a pass-through policy, so the figures are chatgw's
// own), CHATGW_BIN.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  startServer, httpRequest, scrape, metricSum, procRssKb, passthroughPolicyDir, waitFor, sleep, WebSocket, HOST, BIN,
} from '../e2e/lib.mjs';

const num = (v, d) => (v !== undefined && v !== '' && Number.isFinite(Number(v)) ? Number(v) : d);
const SECONDS = num(process.env.SOAK_SECONDS, 60);
const WARMUP = num(process.env.SOAK_WARMUP_SECONDS, Math.max(10, Math.round(SECONDS / 3)));
const CLIENTS = num(process.env.SOAK_CLIENTS, 2000);
const ROOMS = num(process.env.SOAK_ROOMS, 200);
const PAUSE = num(process.env.SOAK_PAUSE_MS, 2000);         // mean think time
const RSS_TOLERANCE = 0.10;
const ALLOWED_ERRORS = [];                                   // msg values of error lines that are expected: none

const rand = (a, b) => a + Math.floor(Math.random() * (b - a + 1));
const think = () => sleep(rand(Math.round(PAUSE * 0.4), Math.round(PAUSE * 1.6)));
const fdCount = (pid) => { try { return fs.readdirSync(`/proc/${pid}/fd`).length; } catch { return null; } };
const nofile = () => {
  const m = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(fs.readFileSync('/proc/self/limits', 'utf8'));
  return m ? { soft: m[1], hard: m[2] } : null;
};

const stats = {
  cycles: 0, connects: 0, refused: {}, connectErrors: 0, timeouts: 0, msgs: 0, acks: 0, joins: 0, leaves: 0,
  terminates: 0, midFlight: 0, framesIn: 0, errorsIn: {}, deflate: 0,
};

// ---------------------------------------------------------------------------------------------
// one client loop

class Conn {
  constructor(port, slot, room) {
    this.waiters = [];
    this.closed = false;
    const deflate = slot % 10 === 0;
    if (deflate) stats.deflate++;
    this.ws = new WebSocket(`ws://${HOST}:${port}/ws?room=${room}&name=u${slot}`, {
      perMessageDeflate: deflate,
      localAddress: `127.0.0.${2 + (slot % 250)}`,
      handshakeTimeout: 10000,
    });
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', resolve);
      this.ws.once('unexpected-response', (req, res) => {
        req.destroy();
        reject(Object.assign(new Error(`HTTP ${res.statusCode}`), { statusCode: res.statusCode }));
      });
      this.ws.once('error', reject);
    });
    this.ws.on('error', () => {});
    this.ws.on('close', () => { this.closed = true; for (const w of this.waiters.splice(0)) w.reject(new Error('closed')); });
    this.ws.on('message', (d) => {
      stats.framesIn++;
      // the server writes "type" first; parse only what a waiter may want
      const s = d.toString();
      if (s.startsWith('{"type":"error"')) {
        const code = /"code":"([^"]+)"/.exec(s)?.[1] || '?';
        stats.errorsIn[code] = (stats.errorsIn[code] || 0) + 1;
      }
      if (!this.waiters.length) return;
      for (let i = 0; i < this.waiters.length; i++) {
        const w = this.waiters[i];
        if (s.startsWith(w.prefix) && (!w.has || s.includes(w.has))) {
          this.waiters.splice(i, 1);
          clearTimeout(w.timer);
          w.resolve(s);
          return;
        }
      }
    });
  }

  /** Resolves with the next message starting with prefix (and containing has). */
  wait(prefix, has, ms = 15000) {
    if (this.closed) return Promise.reject(new Error('closed'));
    return new Promise((resolve, reject) => {
      const w = { prefix, has, resolve, reject };
      w.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        stats.timeouts++;
        reject(new Error(`timeout waiting for ${prefix}`));
      }, ms);
      this.waiters.push(w);
    });
  }

  send(obj) { if (!this.closed) this.ws.send(JSON.stringify(obj)); }

  terminate() {
    for (const w of this.waiters.splice(0)) { clearTimeout(w.timer); w.reject(new Error('terminated')); }
    this.ws.terminate();
    stats.terminates++;
  }
}

const live = new Set();
let cid = 0;

async function cycle(port, slot, running) {
  const roomA = `soak-${rand(0, ROOMS - 1)}`;
  let roomB = `soak-${rand(0, ROOMS - 1)}`;
  if (roomB === roomA) roomB = `soak-b-${slot % ROOMS}`;
  const c = new Conn(port, slot, roomA);
  live.add(c);
  stats.connects++;
  try {
    const snapshot = c.wait('{"type":"room"', `"room":"${roomA}"`);
    try {
      await c.opened;
    } catch (e) {
      snapshot.catch(() => {});
      if (e.statusCode) stats.refused[e.statusCode] = (stats.refused[e.statusCode] || 0) + 1;
      else stats.connectErrors++;
      await sleep(rand(200, 1000));
      return;
    }
    await snapshot;
    stats.joins++;
    const midFlight = Math.random() < 0.2;
    await think();
    if (!running()) return;

    let id = `s${++cid}`;
    c.send({ type: 'msg', room: roomA, text: `hello from ${slot} #${stats.cycles}`, cid: id });
    stats.msgs++;
    await c.wait('{"type":"ack"', `"cid":"${id}"`);
    stats.acks++;

    c.send({ type: 'join', room: roomB });
    await c.wait('{"type":"room"', `"room":"${roomB}"`);
    stats.joins++;
    id = `s${++cid}`;
    c.send({ type: 'msg', room: roomB, text: `passing through ${roomB}`, cid: id });
    stats.msgs++;
    if (midFlight) {                    // gone before the answer, with frames in both directions
      c.send({ type: 'msg', room: roomA, text: 'and gone', cid: `s${++cid}` });
      stats.msgs++;
      stats.midFlight++;
      return;
    }
    await c.wait('{"type":"ack"', `"cid":"${id}"`);
    stats.acks++;
    c.send({ type: 'leave', room: roomB });
    stats.leaves++;
    await think();
  } catch {
    // a timeout or a close: counted in stats, the loop goes on
  } finally {
    c.terminate();
    live.delete(c);
    stats.cycles++;
  }
  await sleep(rand(0, 300));
}

async function load(port, seconds) {
  const end = Date.now() + seconds * 1000;
  const running = () => Date.now() < end;
  const loops = [];
  for (let slot = 0; slot < CLIENTS; slot++) {
    loops.push((async () => {
      await sleep(Math.floor((slot / CLIENTS) * Math.min(3000, seconds * 500)));   // ramp up
      while (running()) await cycle(port, slot, running);
    })());
  }
  await Promise.all(loops);
  for (const c of live) c.terminate();
  live.clear();
}

// ---------------------------------------------------------------------------------------------

async function settle(srv, what) {
  await waitFor(async () => {
    try {
      const r = await httpRequest(srv.port, 'GET', '/api/stats', { timeoutMs: 5000 });
      return r.status === 200 && r.json().online === 0;
    } catch { return false; }
  }, { timeoutMs: 30000, intervalMs: 200, what: `${what}: every client to be gone` });
  await sleep(1500);   // let lingering closes and timers finish
}

async function fdsBackTo(pid, baseline) {
  try {
    await waitFor(() => fdCount(pid) <= baseline, { timeoutMs: 15000, intervalMs: 100, what: 'the fd count to return' });
  } catch { /* reported below */ }
  return fdCount(pid);
}

async function main() {
  const lim = nofile();
  const needFds = CLIENTS * 2 + 200;
  if (lim && lim.soft !== 'unlimited' && Number(lim.soft) < needFds) {
    console.error(`soak: RLIMIT_NOFILE soft limit ${lim.soft} < ${needFds} needed (raise it: ulimit -n ${needFds})`);
    process.exit(1);
  }
  const scripts = process.env.SOAK_SCRIPTS ? path.resolve(process.env.SOAK_SCRIPTS) : passthroughPolicyDir();
  console.log(`soak: ${BIN}, ${CLIENTS} clients, ${ROOMS} rooms, warm-up ${WARMUP} s, soak ${SECONDS} s, ` +
    `policy ${process.env.SOAK_SCRIPTS ? scripts : 'pass-through'}, nofile ${lim?.soft}/${lim?.hard}, ${os.cpus().length} CPUs`);

  const srv = await startServer(['--scripts-dir', scripts, '--max-connections', String(Math.max(10000, CLIENTS * 2))]);
  const pid = srv.proc.pid;
  let stderrLines = 0;
  srv.proc.stderr.on('data', () => { stderrLines++; });
  const levels = {};
  const errors = [];
  let logPos = 0;
  const scanLogs = () => {
    for (; logPos < srv.logs.length; logPos++) {
      const o = srv.logs[logPos];
      levels[o.level] = (levels[o.level] || 0) + 1;
      if (o.level === 'error' && !ALLOWED_ERRORS.includes(o.msg)) errors.push(o);
    }
  };
  const logTimer = setInterval(scanLogs, 500);
  let rssPeak = 0;
  let fdPeak = 0;
  const peakTimer = setInterval(() => {
    rssPeak = Math.max(rssPeak, procRssKb(pid) || 0);
    fdPeak = Math.max(fdPeak, fdCount(pid) || 0);
  }, 100);

  await sleep(500);
  const fd0 = fdCount(pid);
  const rss0 = procRssKb(pid);

  const t0 = Date.now();
  await load(srv.port, WARMUP);
  await settle(srv, 'warm-up');
  const fdWarm = await fdsBackTo(pid, fd0);
  const rssWarm = procRssKb(pid);
  const warmStats = { ...stats };
  const rssPeakWarm = rssPeak;
  const m0 = (await scrape(srv.port)).samples;
  console.log(`warm-up done in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${warmStats.cycles} cycles; RSS ${rssWarm} KiB, fds ${fdWarm}`);

  const ROUNDS = Math.max(1, num(process.env.SOAK_ROUNDS, 1));
  const rounds = [];
  let loadSeconds = 0;
  for (let r = 0; r < ROUNDS; r++) {
    const t1 = Date.now();
    await load(srv.port, SECONDS / ROUNDS);
    loadSeconds += (Date.now() - t1) / 1000;
    await settle(srv, 'soak');
    if (ROUNDS > 1) {
      rounds.push({ rss: procRssKb(pid), fds: fdCount(pid), peak: rssPeak });
      console.log(`round ${r + 1}/${ROUNDS}: RSS ${rounds.at(-1).rss} KiB (peak so far ${rssPeak}), fds ${rounds.at(-1).fds}`);
    }
  }
  const fdAfter = await fdsBackTo(pid, fd0);
  const rssAfter = procRssKb(pid);
  const m1 = (await scrape(srv.port)).samples;
  const health = await httpRequest(srv.port, 'GET', '/healthz').then((r) => r.status, () => 0);
  const finalStats = (await httpRequest(srv.port, 'GET', '/api/stats')).json();
  clearInterval(peakTimer);
  clearInterval(logTimer);
  scanLogs();

  const d = (name, labels) => metricSum(m1, name, labels) - metricSum(m0, name, labels);
  const soak = Object.fromEntries(Object.entries(stats).map(([k, v]) => [k, typeof v === 'number' ? v - (warmStats[k] || 0) : v]));
  const growth = (rssAfter - rssWarm) / rssWarm;
  const fig = {
    phases: { warmup_s: WARMUP, soak_s: Number(loadSeconds.toFixed(1)) },
    clients: { concurrent: CLIENTS, rooms: ROOMS, deflate_share: `${Math.round((stats.deflate / Math.max(1, stats.connects)) * 100)}%` },
    soak_phase: {
      connections: soak.connects, per_second: Math.round(soak.connects / loadSeconds), cycles: soak.cycles,
      msgs_sent: soak.msgs, acks: soak.acks, joins: soak.joins, leaves: soak.leaves, terminates: soak.terminates,
      terminated_mid_flight: soak.midFlight, frames_received: soak.framesIn, timeouts: soak.timeouts,
      refused: stats.refused, connect_errors: stats.connectErrors, error_frames: stats.errorsIn,
    },
    server_metrics_during_soak: {
      connections_total: d('chatgw_connections_total'), websockets_total: d('chatgw_websockets_total'),
      rejected: d('chatgw_connections_rejected_total'), messages_received: d('chatgw_messages_received_total'),
      messages_delivered: d('chatgw_messages_delivered_total'), slow_consumers: d('chatgw_slow_consumers_total'),
      abnormal_closes_1006: d('chatgw_ws_close_received_total', { code: '1006' }),
      dropped: Object.fromEntries(['rate_limited', 'too_large', 'invalid', 'not_in_room', 'policy', 'slow', 'room_full']
        .map((r) => [r, d('chatgw_messages_dropped_total', { reason: r })])),
      policy_errors: d('chatgw_policy_errors_total'),
      // the policy's gw.store: a count that only grows is a key never deleted (TTL'd keys plateau)
      policy_store_keys: { after_warmup: metricSum(m0, 'chatgw_policy_store_keys'), after: metricSum(m1, 'chatgw_policy_store_keys') },
      policy_store_evicted: d('chatgw_policy_store_evicted_total'),
    },
    rss_kib: { start: rss0, peak_warmup: rssPeakWarm, after_warmup: rssWarm, peak: rssPeak, after: rssAfter, growth_vs_warmup: `${(growth * 100).toFixed(1)}%` },
    fds: { baseline: fd0, after_warmup: fdWarm, peak: fdPeak, after: fdAfter },
    logs: { levels, unexpected_errors: errors.length, stderr_lines: stderrLines },
    final: { healthz: health, online: finalStats.online, rooms: finalStats.rooms.length,
      room_members: metricSum(m1, 'chatgw_room_members'), websockets_open: metricSum(m1, 'chatgw_websockets_open') },
  };
  console.log(JSON.stringify(fig, null, 2));

  const fails = [];
  if (!(growth <= RSS_TOLERANCE)) fails.push(`RSS after ${rssAfter} KiB is ${(growth * 100).toFixed(1)}% over RSS after warm-up ${rssWarm} KiB (limit 10%)`);
  if (fdWarm !== fd0) fails.push(`fds after warm-up ${fdWarm} != baseline ${fd0}`);
  if (fdAfter !== fd0) fails.push(`fds after the soak ${fdAfter} != baseline ${fd0}`);
  if (errors.length) fails.push(`${errors.length} error-level log lines, first: ${JSON.stringify(errors.slice(0, 3))}`);
  if (stderrLines) fails.push(`${stderrLines} stderr chunks from the server:\n${srv.rawLines.filter((l) => l.startsWith('stderr')).slice(0, 10).join('\n')}`);
  if (health !== 200) fails.push(`/healthz answered ${health}`);
  if (srv.exitInfo) fails.push(`the server exited: ${JSON.stringify(srv.exitInfo)}`);
  if (finalStats.online !== 0 || finalStats.rooms.length !== 0) fails.push(`/api/stats not back to empty: ${JSON.stringify(finalStats).slice(0, 300)}`);
  if (fig.final.room_members !== 0 || fig.final.websockets_open !== 0) fails.push('room_members / websockets_open not back to 0');
  if (soak.acks === 0) fails.push('no message was acknowledged during the soak');

  // a clean drain and exit (an ASan/LSan build reports leaks on stderr and exits non-zero here)
  const code = await srv.stop('SIGTERM', 15000).catch((e) => `no exit: ${e.message}`);
  const stderrAtExit = srv.rawLines.filter((l) => l.startsWith('stderr'));
  console.log(`server exit: ${JSON.stringify(code)}, stderr lines ${stderrAtExit.length}`);
  if (code !== 0) fails.push(`the server did not exit cleanly after SIGTERM (${code})`);
  if (stderrAtExit.length && !stderrLines) fails.push(`stderr at exit:\n${stderrAtExit.slice(0, 20).join('\n')}`);
  if (fails.length) {
    console.log(`soak: FAIL\n- ${fails.join('\n- ')}`);
    process.exit(1);
  }
  console.log(`soak: PASS (RSS ${rssWarm} -> ${rssAfter} KiB, ${(growth * 100).toFixed(1)}%; fds ${fd0} -> ${fdAfter}; ` +
    `${soak.connects} connections in ${loadSeconds.toFixed(0)} s)`);
  process.exit(0);
}

main().catch((e) => {
  console.error(`soak: ERROR ${e.stack || e}`);
  process.exit(1);
});
