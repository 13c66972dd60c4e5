// Voice cost, mixer against mesh (BENCHMARKS.md, "Voice"): for 2, 6 and 12 members in one voice
// room, the CPU and memory of Janus and chatgw with janus_url, and the browsers' CPU per member
// both ways (the mesh's cost sits in the clients: each member encodes and sends N-1 streams).
// Not a test: it prints a Markdown table. Run as root inside the voice namespace:
//   sh tests/voice/netns.sh node tests/voice/bench.mjs [sizes=2,6,12] [window_s=15]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { CHROMIUM, SRC, openRoom, sleep, startServer, waitFor } from '../web/lib.mjs';
import { procUsage, startJanus, voiceSkipReason } from './janus_lib.mjs';

const sizes = (process.argv[2] || '2,6,12').split(',').map(Number);
const windowS = Number(process.argv[3] || 15);
const skip = voiceSkipReason();
if (skip) { console.error(`bench: ${skip}`); process.exit(2); }

/** Every chromium process below this one (browser, renderers, utilities). */
function chromiumPids() {
  const kids = new Map();
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const st = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      const comm = st.slice(st.indexOf('(') + 1, st.lastIndexOf(')'));
      const ppid = Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[1]);
      kids.set(Number(d), { ppid, comm });
    } catch { /* gone */ }
  }
  const out = [];
  const walk = (pid) => {
    for (const [k, v] of kids) if (v.ppid === pid) { if (/chrom/i.test(v.comm)) out.push(k); walk(k); }
  };
  walk(process.pid);
  return out;
}

function cpuOf(pids) {
  let s = 0;
  let rss = 0;
  for (const p of pids) {
    try { const u = procUsage(p); s += u.cpuS; rss += u.rssMiB; } catch { /* gone */ }
  }
  return { cpuS: s, rssMiB: rss };
}

async function run(n, sfu) {
  const janus = sfu ? await startJanus() : null;
  const scripts = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-vbench-'));
  for (const f of fs.readdirSync(path.join(SRC, 'scripts'))) {
    // room caps out of the way: the mesh default stops voice-* rooms at 8
    const text = fs.readFileSync(path.join(SRC, 'scripts', f), 'utf8').replace(/max = 8,/, 'max = 50,');
    fs.writeFileSync(path.join(scripts, f), text);
  }
  const srv = await startServer([...(sfu ? ['--janus-url', janus.url] : []), '--scripts-dir', scripts]);
  const { chromium } = await import('../web/node_modules/playwright-core/index.mjs');
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--use-fake-ui-for-media-stream',
      '--use-fake-device-for-media-stream', '--autoplay-policy=no-user-gesture-required'],
    timeout: 60000,
  });
  try {
    const pages = [];
    for (let i = 0; i < n; i++) {
      const page = await (await browser.newContext()).newPage();
      await openRoom(page, srv.url, 'voice-bench', `m${i}`);
      pages.push(page);
    }
    for (const p of pages) await p.click('#voice');
    for (const p of pages) {
      await waitFor(() => p.evaluate((want) => {
        const v = window.chatgw.voice;
        if (!v) return false;
        const pcs = v.kind === 'sfu' ? (v.pc ? [v.pc] : []) : [...v.peers.values()].map((x) => x.pc);
        return pcs.length === want && pcs.every((pc) => pc.connectionState === 'connected');
      }, sfu ? 1 : n - 1), { timeoutMs: 120000, intervalMs: 250, what: `member connected (${n}, ${sfu ? 'sfu' : 'mesh'})` });
    }
    await sleep(3000);             // past the connection set-up
    const cpids = chromiumPids();
    const c0 = cpuOf(cpids);
    const j0 = janus ? procUsage(janus.pid()) : null;
    const g0 = procUsage(srv.proc.pid);
    await sleep(windowS * 1000);
    const c1 = cpuOf(cpids);
    const j1 = janus ? procUsage(janus.pid()) : null;
    const g1 = procUsage(srv.proc.pid);
    const pct = (a, b) => (100 * (b - a)) / windowS;
    return {
      n, mode: sfu ? 'janus' : 'mesh',
      janusCpu: j0 ? pct(j0.cpuS, j1.cpuS) : null, janusRss: j1 ? j1.rssMiB : null,
      gwCpu: pct(g0.cpuS, g1.cpuS), gwRss: g1.rssMiB,
      clientCpuPerMember: pct(c0.cpuS, c1.cpuS) / n,
      upStreams: sfu ? 1 : n - 1, downStreams: sfu ? 1 : n - 1,
    };
  } finally {
    await browser.close().catch(() => {});
    await srv.stop().catch(() => {});
    if (janus) await janus.close();
    fs.rmSync(scripts, { recursive: true, force: true });
  }
}

const rows = [];
for (const n of sizes) {
  for (const sfu of [true, false]) {
    let r;
    try {
      r = await run(n, sfu);
    } catch (err) {              // a mesh too big for the machine never connects: say so
      r = { n, mode: sfu ? 'janus' : 'mesh', failed: err.message.split('\n')[0] };
    }
    rows.push(r);
    console.error(JSON.stringify(r));
  }
}
const f1 = (x) => (x === null ? '-' : x.toFixed(1));
console.log('| members | voice | Janus CPU % | Janus RSS MiB | chatgw CPU % | chatgw RSS MiB | browser CPU % per member | streams up/down per member |');
console.log('|---|---|---|---|---|---|---|---|');
for (const r of rows) {
  if (r.failed) { console.log(`| ${r.n} | ${r.mode} | ${r.failed} |||||| `); continue; }
  console.log(`| ${r.n} | ${r.mode} | ${f1(r.janusCpu)} | ${f1(r.janusRss)} | ${f1(r.gwCpu)} | ${f1(r.gwRss)} | ${f1(r.clientCpuPerMember)} | ${r.upStreams}/${r.downStreams} |`);
}
console.log(`\n${os.cpus().length} CPUs (${os.cpus()[0].model}), ${windowS} s window, Chromium fake microphone, Opus.`);
