// Records tests/replay/sample.jsonl: the default policy (scripts/) under a scripted session of
// test clients (no personal data: every name and text is made up here), so that `chatgw replay`
// and the deploy workflow's policy-only job have real hook inputs to compare a policy change on.
//   CHATGW_BIN=build/chatgw node tests/replay/record-sample.mjs [OUT]
// Rerun it when the protocol or the hooks' inputs change; a policy change alone needs no new sample.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer, chatClient, sleep } from '../e2e/lib.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.resolve(process.argv[2] || path.join(here, 'sample.jsonl'));
fs.rmSync(out, { force: true });
const srv = await startServer(['--scripts-dir', path.join(here, '..', '..', 'scripts'), '--policy-record-file', out,
  '--policy-record-redact', 'false', '--rate-msgs-per-sec', '1000', '--rate-burst', '1000']);
const clients = [];
try {
  const open = async (q) => { const c = await chatClient(srv.port, q); clients.push(c); return c; };
  const ann = await open('/ws?room=lobby&name=ann');
  const bo = await open('/ws?room=lobby&name=bo');
  const cy = await open('/ws?room=voice-1&name=cy');
  await ann.join('voice-1');
  for (const text of ['hello all', 'how is it going?', 'sooooooooo good', 'same', 'same', 'same', 'same'])
    { ann.send({ type: 'msg', room: 'lobby', text }); await sleep(20); }
  bo.send({ type: 'msg', room: 'lobby', text: '/nick bobo' });
  bo.send({ type: 'msg', room: 'lobby', text: '/me waves' });
  bo.send({ type: 'msg', room: 'lobby', text: 'x'.repeat(2100) });
  bo.send({ type: 'dm', to: ann.id, text: 'psst' });
  for (let i = 0; i < 14; i++) cy.send({ type: 'msg', room: 'voice-1', text: `flood ${i}` });
  cy.send({ type: 'typing', room: 'voice-1' });
  cy.send({ type: 'rooms' });
  bo.send({ type: 'join', room: 'admin' });
  bo.send({ type: 'join', room: 'bad room!' });
  bo.send({ type: 'leave', room: 'lobby' });
  await sleep(500);
} finally {
  for (const c of clients) await c.close().catch(() => c.terminate());
  await srv.stop();
}
const lines = fs.readFileSync(out, 'utf8').trim().split('\n');
console.log(`${out}: ${lines.length} records`);
