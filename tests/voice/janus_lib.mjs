// Helpers for the voice tests: our own Janus (never the system's janus.service) with a config
// folder of its own, its HTTP API on a free loopback port, ICE on the namespace's veth
// (jveth0, see netns.sh), AudioBridge the only plugin and HTTP the only transport.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';

import { freePort, sleep, withTimeout } from '../web/lib.mjs';

export const JANUS = process.env.JANUS || '/usr/bin/janus';
const LIB = ['/usr/lib/x86_64-linux-gnu/janus', '/usr/lib/aarch64-linux-gnu/janus', '/usr/lib/janus']
  .find((d) => fs.existsSync(path.join(d, 'plugins', 'libjanus_audiobridge.so')));

/** Why the voice tests cannot run here, or '' when they can. */
export function voiceSkipReason() {
  if (process.env.CHATGW_NETNS !== '1' || !process.env.CHATGW_VOICE_ADDR) {
    return 'needs a network namespace with a veth pair (tests/voice/netns.sh as root: unshare -n, ip link)';
  }
  if (!fs.existsSync(JANUS) || !LIB) return `needs Janus (${JANUS} and its AudioBridge plugin; Debian package janus)`;
  if (!fs.existsSync(process.env.CHROMIUM || '/usr/bin/chromium')) return 'needs chromium';
  return '';
}

const PLUGINS_OFF = ['duktape', 'lua', 'echotest', 'nosip', 'recordplay', 'sip', 'streaming', 'textroom', 'videocall',
  'videoroom', 'voicemail'];
const TRANSPORTS_OFF = ['websockets', 'mqtt', 'nanomsg', 'pfunix', 'rabbitmq'];

/** Starts Janus; returns {url, pid(), kill(signal), start(), stop(), tail()}. */
export async function startJanus({ iface = 'jveth0', rtpPorts = '40000-40999' } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatgw-janus-'));
  const port = await freePort();
  const list = (names, kind) => names.map((n) => `libjanus_${n}.so`).filter((f) => fs.existsSync(path.join(LIB, kind, f)));
  fs.writeFileSync(path.join(dir, 'janus.jcfg'), `general: {
  configs_folder = "${dir}"
  plugins_folder = "${LIB}/plugins"
  transports_folder = "${LIB}/transports"
  events_folder = "${LIB}/events"
  loggers_folder = "${LIB}/loggers"
  debug_level = 4
  session_timeout = 60
}
media: { rtp_port_range = "${rtpPorts}" }
nat: { ice_enforce_list = "${iface}" }
plugins: { disable = "${list(PLUGINS_OFF, 'plugins').join(',')}" }
transports: { disable = "${list(TRANSPORTS_OFF, 'transports').join(',')}" }
events: { broadcast = false }
`);
  fs.writeFileSync(path.join(dir, 'janus.transport.http.jcfg'),
    `general: { base_path = "/janus" http = true port = ${port} ip = "127.0.0.1" https = false }\nadmin: { admin_http = false }\n`);
  fs.writeFileSync(path.join(dir, 'janus.plugin.audiobridge.jcfg'), 'general: { }\n');
  const url = `http://127.0.0.1:${port}/janus`;
  const lines = [];
  let proc = null;
  let exited = null;

  async function start() {
    proc = spawn(JANUS, ['-F', dir, '-C', path.join(dir, 'janus.jcfg')], { stdio: ['ignore', 'pipe', 'pipe'] });
    exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
    for (const s of [proc.stdout, proc.stderr]) {
      readline.createInterface({ input: s }).on('line', (l) => { lines.push(l); if (lines.length > 400) lines.shift(); });
    }
    const end = Date.now() + 20000;
    for (;;) {            // up when the API answers a GET /info
      try {
        const r = await fetch(`${url}/info`);
        if (r.ok) return;
      } catch { /* not yet */ }
      if (Date.now() > end) throw new Error(`janus did not start\n${lines.slice(-30).join('\n')}`);
      await sleep(100);
    }
  }
  async function stop(signal = 'SIGTERM') {
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill(signal);
    await withTimeout(exited, 10000, 'janus exit').catch(() => proc.kill('SIGKILL'));
  }
  await start();
  return {
    url,
    start,
    stop,
    pid: () => proc.pid,
    tail: (n = 40) => lines.slice(-n).join('\n'),
    async close() {
      await stop();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** CPU seconds (user + system) and RSS in MiB of a process, from /proc. */
export function procUsage(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(f[11]) + Number(f[12]);
  const rssPages = Number(f[21]);
  return { cpuS: ticks / 100, rssMiB: (rssPages * 4096) / (1024 * 1024) };
}
