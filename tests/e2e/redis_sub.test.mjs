// bus/redis_sub, the bus's own subscriber connection, through redis_sub_tool against a real
// redis-server (with and without a password, killed under it), a real Redis Cluster (sharded
// pub/sub on the slot's master, MOVED from another), and a scripted fake server for what a real
// one never sends (a reply trickled a byte at a time, protocol errors, an abrupt EOF). Payloads
// are compared byte for byte (the tool prints them in hex); every tool run must end with every
// handle closed (exit 0), and under an ASan build with nothing leaked or used after free.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { SRC, HOST, withTimeout, waitFor } from './lib.mjs';
import { startRedis, freePort, REDIS_BIN, resp, redisExchange } from './redis_lib.mjs';
import { startRedisCluster, clusterSlots, clusterMissing, cli } from './redis_cluster_lib.mjs';

const T = { timeout: 60000 };
const BUILD = path.resolve(process.env.CHATGW_BUILD || path.join(SRC, 'build'));
const TOOL = path.join(BUILD, 'redis_sub_tool');
const hex = (b) => (b.length ? Buffer.from(b).toString('hex') : '-');

/** Runs the tool; lines are its stdout so far; waitLine(pred) waits (bounded); end() closes stdin and resolves {code, lines, stderr}. */
function runTool(port, ...auth) {
  const env = typeof auth.at(-1) === 'object' ? auth.pop() : {};
  const p = spawn(TOOL, [HOST, String(port), ...auth], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  const t = { lines: [], stderr: '' };
  let partial = '';
  p.stdout.on('data', (d) => {
    const parts = (partial + d.toString('latin1')).split('\n');
    partial = parts.pop();
    t.lines.push(...parts);
  });
  p.stderr.on('data', (d) => { t.stderr += d.toString(); });
  const exited = new Promise((resolve) => p.once('exit', (code, signal) => resolve({ code, signal })));
  t.send = (...cmds) => p.stdin.write(cmds.map((c) => `${c}\n`).join(''));
  t.waitLine = async (pred, what) => {
    const test = typeof pred === 'string' ? (l) => l === pred : typeof pred === 'function' ? pred : (l) => pred.test(l);
    await waitFor(() => t.lines.some(test), { timeoutMs: 15000, intervalMs: 10, what: what || String(pred) })
      .catch((e) => { throw new Error(`${e.message}; got:\n${t.lines.join('\n').slice(-2000)}\n${t.stderr}`); });
    return t.lines.find(test);
  };
  t.end = async () => {
    p.stdin.end();
    const r = await withTimeout(exited, 15000, 'redis_sub_tool exit').catch((e) => { p.kill('SIGKILL'); throw e; });
    return { ...r, lines: t.lines, stderr: t.stderr };
  };
  return t;
}

/** Sends commands in one write and resolves the replies' text once there is one line per command (integer/status replies only). */
function pipeline(port, cmds, ms = 10000) {
  const lines = (buf) => (buf.split('\r\n').length - 1 >= cmds.length ? buf.split('\r\n').slice(0, cmds.length) : undefined);
  return redisExchange(port, Buffer.concat(cmds.map(resp)), lines, ms, `redis ${cmds.map((c) => c[0]).join(',')}`);
}

const msgLine = (sharded, chan, payload) => `message ${sharded} ${hex(Buffer.from(chan))} ${Buffer.byteLength(payload)} ${hex(Buffer.from(payload))}`;

function assertClean(r) {
  assert.equal(r.code, 0, `tool exit ${r.code}/${r.signal}\n${r.stderr}\n${r.lines.join('\n').slice(-2000)}`);
  assert.equal(r.lines.at(-1), 'bye');
}

describe('redis_sub against redis-server', { skip: (!fs.existsSync(REDIS_BIN) && `no ${REDIS_BIN}`) || (!fs.existsSync(TOOL) && `no ${TOOL}`) }, () => {
  let redis;
  before(async () => { redis = await startRedis(); });
  after(async () => { if (redis) await redis.stop(); });

  it('delivers message and smessage with their exact bytes, and confirms (un)subscribe', T, async () => {
    const t = runTool(redis.port);
    await t.waitLine('ready');
    t.send('sub plain-ch', 'ssub shard-ch', 'ping');
    await t.waitLine('pong');
    assert.deepEqual(t.lines.slice(0, 4), ['ready', `subscription 0 1 ${hex('plain-ch')}`, `subscription 1 1 ${hex('shard-ch')}`, 'pong']);
    const binary = Buffer.from([0, 1, 2, 0xff, 0xfe, 13, 10, 0x80, 0, 13, 10, 36, 42]);
    const crlf = Buffer.from('line one\r\nline two\r\n$5\r\nhello\r\n*3\r\n');
    const big = Buffer.alloc(1 << 20);
    for (let i = 0; i < big.length; i++) big[i] = (i * 7 + (i >> 8)) & 0xff;
    const sent = [['PUBLISH', 'plain-ch', binary], ['SPUBLISH', 'shard-ch', crlf], ['PUBLISH', 'plain-ch', Buffer.alloc(0)],
      ['SPUBLISH', 'shard-ch', big], ['PUBLISH', 'plain-ch', 'after the big one']];
    assert.deepEqual(await pipeline(redis.port, sent), [':1', ':1', ':1', ':1', ':1']);
    await t.waitLine(msgLine(0, 'plain-ch', 'after the big one'));
    const got = t.lines.filter((l) => l.startsWith('message '));
    assert.deepEqual(got, sent.map(([cmd, chan, payload]) => `message ${cmd === 'SPUBLISH' ? 1 : 0} ${hex(Buffer.from(chan))} `
      + `${Buffer.byteLength(payload)} ${hex(Buffer.from(payload))}`));
    t.send('unsub plain-ch', 'sunsub shard-ch', 'ping');
    await t.waitLine((l) => l === 'pong' && t.lines.filter((x) => x === 'pong').length === 2, 'second pong');
    assert.deepEqual(t.lines.slice(-3), [`subscription 0 0 ${hex('plain-ch')}`, `subscription 1 0 ${hex('shard-ch')}`, 'pong']);
    // No longer subscribed: nobody receives.
    assert.deepEqual(await pipeline(redis.port, [['PUBLISH', 'plain-ch', 'x'], ['SPUBLISH', 'shard-ch', 'y']]), [':0', ':0']);
    const r = await t.end();
    assertClean(r);
    assert.equal(r.lines.filter((l) => l.startsWith('closed')).length, 0);
  });

  it('sends what was asked before the connection was up, in order, once it is', T, async () => {
    const t = runTool(redis.port);
    t.send('sub early-1', 'ssub early-2', 'ping'); // may well arrive before the connect completes
    await t.waitLine('pong');
    assert.deepEqual(t.lines.filter((l) => l !== 'ready'), [`subscription 0 1 ${hex('early-1')}`, `subscription 1 1 ${hex('early-2')}`, 'pong']);
    assertClean(await t.end());
  });

  it('closes from inside a message callback with more replies in the same read, and inside pong', T, async () => {
    const t = runTool(redis.port);
    t.send('sub cb-ch');
    await t.waitLine(`subscription 0 1 ${hex('cb-ch')}`);
    t.send('close-in message', 'ping');
    await t.waitLine('pong');
    await pipeline(redis.port, [['PUBLISH', 'cb-ch', 'first'], ['PUBLISH', 'cb-ch', 'second'], ['PUBLISH', 'cb-ch', 'third']]);
    await t.waitLine('closed-in message');
    t.send('ping');
    await t.waitLine('rc ping no connection');
    const r = await t.end();
    assertClean(r);
    assert.deepEqual(r.lines.filter((l) => l.startsWith('message ')), [msgLine(0, 'cb-ch', 'first')]);
    assert.equal(r.lines.filter((l) => l.startsWith('closed ')).length, 0);

    const p = runTool(redis.port);
    p.send('close-in pong', 'ping', 'ping', 'sub never');
    await p.waitLine('closed-in pong');
    const rp = await p.end();
    assertClean(rp);
    assert.equal(rp.lines.filter((l) => l === 'pong').length, 1, rp.lines.join('\n'));
  });

  it('closes while connecting without running any callback, and from inside ready', T, async () => {
    const t = runTool(redis.port);
    await t.waitLine('ready');
    t.send('open-close', 'open-close', 'open-close', 'ping');
    await t.waitLine('pong');
    const r = await t.end();
    assertClean(r);
    assert.deepEqual(r.lines, ['ready', 'ok open-close', 'ok open-close', 'ok open-close', 'pong', 'bye']);

    const q = runTool(redis.port, { CLOSE_IN: 'ready' });
    q.send('ping');
    await q.waitLine('closed-in ready');
    const rq = await q.end();
    assertClean(rq);
    assert.deepEqual(rq.lines.filter((l) => !l.startsWith('rc ping')), ['ready', 'closed-in ready', 'bye']);
  });

  it('refuses a name where a numeric address goes, and reports a refused connect once', T, async () => {
    const bad = spawn(TOOL, ['localhost', String(redis.port)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    bad.stderr.on('data', (d) => { err += d; });
    const code = await withTimeout(new Promise((r) => bad.once('exit', r)), 10000, 'tool exit');
    assert.equal(code, 1);
    assert.match(err, /open: invalid argument/);

    const port = await freePort();
    const t = runTool(port);
    await t.waitLine(/^closed /);
    t.send('sub x');
    await t.waitLine('rc sub the shared store is unreachable');
    const r = await t.end();
    assertClean(r);
    assert.deepEqual(r.lines.filter((l) => l.startsWith('closed')), ['closed connect: connection refused']);
  });

  it('reports a server killed under it once, and can close from inside closed', T, async () => {
    const own = await startRedis();
    const t = runTool(own.port);
    const u = runTool(own.port);
    t.send('sub k');
    u.send('ssub k', 'close-in closed');
    await t.waitLine(`subscription 0 1 ${hex('k')}`);
    await u.waitLine(`subscription 1 1 ${hex('k')}`);
    await own.stop('SIGKILL');
    await t.waitLine(/^closed /);
    await u.waitLine('closed-in closed');
    t.send('ping', 'sub again');
    await t.waitLine('rc sub the shared store is unreachable');
    const r = await t.end();
    assertClean(r);
    assert.deepEqual(r.lines.filter((l) => l.startsWith('closed')), ['closed connection closed by the server']);
    const ru = await u.end();
    assertClean(ru);
    assert.deepEqual(ru.lines.filter((l) => l.startsWith('closed')), ['closed connection closed by the server', 'closed-in closed']);
  });
});

describe('redis_sub AUTH', { skip: (!fs.existsSync(REDIS_BIN) && `no ${REDIS_BIN}`) || (!fs.existsSync(TOOL) && `no ${TOOL}`) }, () => {
  let redis;
  before(async () => {
    redis = await startRedis();
    assert.deepEqual(await pipeline(redis.port, [['ACL', 'SETUSER', 'alice', 'on', '>alice-pw', '&*', '+@all'],
      ['CONFIG', 'SET', 'requirepass', 'sec ret\r\n']]), ['+OK', '+OK']);
  });
  after(async () => { if (redis) await redis.stop(); });

  it('authenticates first, then sends what was queued; ready only after +OK', T, async () => {
    for (const auth of [['sec ret\r\n'], ['alice-pw', 'alice']]) {
      const t = runTool(redis.port, ...auth);
      t.send('ssub a-ch', 'ping');
      await t.waitLine('pong');
      const r = await t.end();
      assertClean(r);
      assert.deepEqual(r.lines, ['ready', `subscription 1 1 ${hex('a-ch')}`, 'pong', 'bye'], `auth ${auth.at(-1)}`);
    }
  });

  it('reports a refused AUTH as closed, once, and runs nothing queued after it', T, async () => {
    for (const auth of [['wrong'], ['sec ret\r\n', 'alice']]) {
      const t = runTool(redis.port, ...auth);
      t.send('sub z', 'ping');
      await t.waitLine(/^closed /);
      t.send('ping');
      await t.waitLine('rc ping the shared store is unreachable');
      const r = await t.end();
      assertClean(r);
      const closed = r.lines.filter((l) => l.startsWith('closed'));
      assert.equal(closed.length, 1);
      assert.match(closed[0], /^closed AUTH refused: WRONGPASS /);
      assert.ok(!r.lines.includes('ready') && !r.lines.includes('pong'), r.lines.join('\n'));
    }
  });

  it('without a password, the first command refused by the server closes it', T, async () => {
    const t = runTool(redis.port);
    await t.waitLine('ready');
    t.send('sub n');
    await t.waitLine(/^closed /);
    const r = await t.end();
    assertClean(r);
    assert.deepEqual(r.lines.filter((l) => l.startsWith('closed')), ['closed NOAUTH Authentication required.']);
  });
});

/** A fake server: on connection, handler(socket, received()) scripts it. */
async function fakeServer(handler) {
  const srv = net.createServer((s) => {
    let got = Buffer.alloc(0);
    s.on('data', (d) => { got = Buffer.concat([got, d]); });
    s.on('error', () => {});
    s.setNoDelay(true);
    handler(s, () => got);
  });
  await new Promise((r) => srv.listen(0, HOST, r));
  return { port: srv.address().port, close: () => new Promise((r) => { srv.close(r); }) };
}

describe('redis_sub against a scripted server', { skip: !fs.existsSync(TOOL) && `no ${TOOL}` }, () => {
  it('pipelines AUTH first and parses replies trickled a byte at a time', T, async () => {
    const reply = Buffer.from('+OK\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n'
      + '*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$7\r\nx\r\ny\r\nz\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n+PONG\r\n');
    let received;
    const srv = await fakeServer(async (s, got) => {
      await waitFor(() => got().length >= resp(['AUTH', 'u', 'p']).length + resp(['SUBSCRIBE', 'c']).length, { timeoutMs: 10000 });
      received = got();
      for (let i = 0; i < reply.length; i++) {
        s.write(reply.subarray(i, i + 1));
        await new Promise((r) => setTimeout(r, 1));
      }
    });
    const t = runTool(srv.port, 'p', 'u');
    t.send('sub c');
    await t.waitLine((l) => l === 'pong' && t.lines.filter((x) => x === 'pong').length === 2, 'two pongs');
    const r = await t.end();
    await srv.close();
    assertClean(r);
    assert.equal(received.toString('latin1'), Buffer.concat([resp(['AUTH', 'u', 'p']), resp(['SUBSCRIBE', 'c'])]).toString('latin1'));
    assert.deepEqual(r.lines, ['ready', `subscription 0 1 ${hex('c')}`, msgLine(0, 'c', 'x\r\ny\r\nz'), 'pong', 'pong', 'bye']);
  });

  for (const [name, bytes, want] of [
    ['a protocol error', '*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n!oops\r\n', /^closed protocol error: /],
    ['an array longer than a push', '*100000000\r\n', /^closed protocol error: an array over 16 elements$/],
    ['an unexpected reply', ':42\r\n', /^closed unexpected reply of type 3$/],
    ['an error reply', '-MOVED 1234 127.0.0.1:7000\r\n', /^closed MOVED 1234 127\.0\.0\.1:7000$/],
    ['an EOF mid-reply', '*3\r\n$7\r\nmess', /^closed connection closed by the server$/],
  ]) {
    it(`closes once on ${name}`, T, async () => {
      const srv = await fakeServer((s) => { s.write(bytes); s.end(); });
      const t = runTool(srv.port);
      await t.waitLine(/^closed /);
      t.send('ping');
      await t.waitLine('rc ping the shared store is unreachable');
      const r = await t.end();
      await srv.close();
      assertClean(r);
      const closed = r.lines.filter((l) => l.startsWith('closed'));
      assert.equal(closed.length, 1, r.lines.join('\n'));
      assert.match(closed[0], want);
    });
  }
});

describe('redis_sub against a Redis Cluster', { skip: clusterMissing || (!fs.existsSync(TOOL) && `no ${TOOL}`) }, () => {
  let c;
  before(async () => { c = await startRedisCluster({ masters: 3 }); });
  after(async () => { if (c) await c.stop(); });

  it('subscribes sharded on the slot\'s master, and is closed with MOVED by another', T, async () => {
    const chan = `chatgw:{room-${process.pid}}:pub`;
    const slot = Number((await cli(c.masters[0], ['CLUSTER', 'KEYSLOT', chan])).trim());
    const owner = (await clusterSlots(c.masters[0])).find((r) => slot >= r.lo && slot <= r.hi).master;
    const other = c.masters.find((p) => p !== owner);

    const t = runTool(owner);
    t.send(`ssub ${chan}`, 'sub plain', 'ping');
    await t.waitLine('pong');
    assert.equal((await cli(owner, ['SPUBLISH', chan, 'sharded\r\nbytes'])).trim(), '1');
    await cli(other, ['PUBLISH', 'plain', 'across the bus']); // counts only that node's subscribers
    await t.waitLine(msgLine(0, 'plain', 'across the bus'));
    const r = await t.end();
    assertClean(r);
    assert.deepEqual(r.lines.filter((l) => l.startsWith('message')), [msgLine(1, chan, 'sharded\r\nbytes'), msgLine(0, 'plain', 'across the bus')]);

    const m = runTool(other);
    await m.waitLine('ready');
    m.send(`ssub ${chan}`);
    await m.waitLine(/^closed /);
    const rm = await m.end();
    assertClean(rm);
    assert.deepEqual(rm.lines.filter((l) => l.startsWith('closed')), [`closed MOVED ${slot} ${HOST}:${owner}`]);
    assert.ok(!rm.lines.some((l) => l.startsWith('subscription')));
  });
});
