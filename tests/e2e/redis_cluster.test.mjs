// Redis Cluster groundwork: the harness (redis_cluster_lib.mjs) starts a real 3-master,
// 3-replica cluster on loopback, and the C codec bus/redis_slots (through the
// redis_slots_tool helper) agrees with it: the slot of every key of a room (chatgw:{R}:...)
// equals CLUSTER KEYSLOT, a room's keys share one slot, the slot map parsed from the live
// CLUSTER SLOTS reply equals what redis-cli reads, a key written to the master the map names
// is taken (no MOVED), and the MOVED another master answers parses to the same slot and node.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { SRC, HOST } from './lib.mjs';
import { startRedisCluster, clusterSlots, clusterInfo, clusterMissing, cli } from './redis_cluster_lib.mjs';

const T = { timeout: 60000 };
const BUILD = path.resolve(process.env.CHATGW_BUILD || path.join(SRC, 'build'));
const TOOL = path.join(BUILD, 'redis_slots_tool');

function tool(args) {
  return new Promise((resolve, reject) => {
    execFile(TOOL, args, { timeout: 10000 }, (e, stdout, stderr) => (e ? reject(new Error(`${TOOL} ${args[0]}: ${e.message}\n${stderr}`))
      : resolve(stdout)));
  });
}

// Room names as clients may choose them, braces included: a '}' in a name ends the tag early and
// a '{' starts none, but every key of the room still carries the same tag.
const ROOMS = ['lobby', 'R', 'room-1', 'room-2', 'room-3', 'a}b', 'x{y', '{z}', 'ünï-cødé', '123456789',
  'user1000', ...Array.from({ length: 40 }, (_, i) => `r${i}-${process.pid}`)];
const SUFFIXES = ['seq', 'epoch', 'hist', 'presence'];

describe('redis cluster harness and redis_slots', { skip: clusterMissing || (!fs.existsSync(TOOL) && `no ${TOOL}`) }, () => {
  let c;
  before(async () => { c = await startRedisCluster({ masters: 3, replicas: 1 }); });
  after(async () => { if (c) await c.stop(); });

  it('runs 3 masters and 3 replicas with every slot served', T, async () => {
    assert.equal(c.masters.length, 3);
    assert.equal(c.replicas.length, 3);
    for (const n of c.nodes) {
      assert.equal(await clusterInfo(n.port, 'cluster_state'), 'ok');
      assert.equal(await clusterInfo(n.port, 'cluster_slots_assigned'), '16384');
      assert.equal(await clusterInfo(n.port, 'cluster_known_nodes'), '6');
    }
    const slots = await clusterSlots(c.masters[0]);
    assert.deepEqual([...new Set(slots.map((r) => r.master))].sort((a, b) => a - b), c.masters);
    assert.equal(slots.reduce((n, r) => n + r.hi - r.lo + 1, 0), 16384);
  });

  it('computes the slot of every room key as CLUSTER KEYSLOT does, one slot per room', T, async () => {
    const keys = [];
    for (const r of ROOMS) for (const s of SUFFIXES) keys.push(`chatgw:{${r}}:${s}`);
    keys.push('chatgw:{nodes}', 'chatgw:{nodes}:report:n1', 'chatgw:{nodes}:conns:n1', 'chatgw:node:n1',
      'foo{}{bar}', 'foo{{bar}}zap', '{user1000}.following', '{user1000}.followers', '', '{', '}', '{}');
    const ours = (await tool(['keyslot', ...keys])).trim().split('\n').map(Number);
    assert.equal(ours.length, keys.length);
    const theirs = [];
    for (const k of keys) theirs.push(Number((await cli(c.masters[0], ['CLUSTER', 'KEYSLOT', k])).trim()));
    assert.deepEqual(ours, theirs);
    for (let i = 0; i < ROOMS.length; i++) {
      const room = ours.slice(i * SUFFIXES.length, (i + 1) * SUFFIXES.length);
      assert.equal(new Set(room).size, 1, `keys of ${ROOMS[i]} share a slot`);
    }
    // The rooms spread over all three shards.
    const slots = await clusterSlots(c.masters[0]);
    const owners = new Set(ours.slice(0, ROOMS.length * SUFFIXES.length)
      .map((s) => slots.find((r) => s >= r.lo && s <= r.hi).master));
    assert.equal(owners.size, 3);
  });

  it('parses the live CLUSTER SLOTS reply into the map redis-cli reads', T, async () => {
    for (const port of [c.masters[0], c.replicas[0]]) {
      const map = JSON.parse(await tool(['map', HOST, String(port)]));
      assert.equal(map.covered, 16384);
      const fromCli = await clusterSlots(port);
      const want = new Map();
      for (const r of fromCli) {
        const m = `${HOST}:${r.master}`;
        if (!want.has(m)) want.set(m, { master: m, replicas: r.replicas.map((p) => `${HOST}:${p}`), ranges: [] });
        want.get(m).ranges.push([r.lo, r.hi]);
      }
      const got = map.shards.map((s) => ({ ...s, replicas: [...s.replicas].sort() }))
        .sort((a, b) => a.ranges[0][0] - b.ranges[0][0]);
      const exp = [...want.values()].map((s) => ({ ...s, replicas: [...s.replicas].sort() }))
        .sort((a, b) => a.ranges[0][0] - b.ranges[0][0]);
      assert.deepEqual(got, exp);
    }
  });

  it("lets a room's script SPUBLISH to the room's own tagged channel only", T, async () => {
    // The layout docs/redis.md ("Redis Cluster") relies on: chatgw:{R}:ch shares the slot of R's keys.
    const [slot, other] = (await tool(['keyslot', 'chatgw:{lobby}:ch', 'chatgw:{lobby-2}:ch'])).trim().split('\n').map(Number);
    assert.notEqual(slot, other);
    const map = JSON.parse(await tool(['map', HOST, String(c.masters[0])]));
    const home = map.shards.find((s) => s.ranges.some(([lo, hi]) => slot >= lo && slot <= hi)).master;
    const port = Number(home.split(':')[1]);
    const script = (ch) => ['EVAL', `return redis.call('SPUBLISH', '${ch}', 'x')`, '1', 'chatgw:{lobby}:seq'];
    assert.equal((await cli(port, script('chatgw:{lobby}:ch'))).trim(), '0');
    const out = await cli(port, script('chatgw:{lobby-2}:ch')).catch((e) => e.message);
    assert.match(out, /non local key/);
  });

  it('routes a room key to the master the map names, and parses the MOVED of the others', T, async () => {
    const map = JSON.parse(await tool(['map', HOST, String(c.masters[0])]));
    const owner = (slot) => map.shards.find((s) => s.ranges.some(([lo, hi]) => slot >= lo && slot <= hi)).master;
    for (const room of ROOMS.slice(0, 12)) {
      const key = `chatgw:{${room}}:seq`;
      const [slot] = (await tool(['keyslot', key])).trim().split('\n').map(Number);
      const home = owner(slot);
      for (const port of c.masters) {
        // redis-cli prints an error reply as "(error) MOVED ..." (or fails with it in the message).
        const out = await cli(port, ['INCR', key]).catch((e) => e.message);
        if (`${HOST}:${port}` === home) {
          assert.match(out, /^\d+\s*$/, `INCR ${key} on its master ${home}`);
          continue;
        }
        const m = out.match(/(MOVED \d+ \S+)/);
        assert.ok(m, `MOVED from ${port} for ${key}: ${out}`);
        const r = JSON.parse(await tool(['redirect', m[1]]));
        assert.deepEqual(r, { kind: 'MOVED', slot, host: HOST, port: Number(home.split(':')[1]) });
      }
    }
  });
});

describe('redis cluster harness stop', { skip: clusterMissing || false }, () => {
  it('stops every node it started', T, async () => {
    const c = await startRedisCluster({ masters: 3 });
    assert.equal(c.masters.length, 3);
    assert.equal(c.replicas.length, 0);
    await c.stop();
    for (const n of c.nodes) {
      assert.ok(n.proc.exitCode !== null || n.proc.signalCode !== null, `node ${n.port} exited`);
      await assert.rejects(cli(n.port, ['PING'], 2000));
    }
  });
});
