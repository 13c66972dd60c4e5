// Peer for make bench: Node `ws` (npm ws@8) speaking the subset of chatgw's v1 protocol that
// the benchmark uses (tests/bench/README.md):
//   /echo            echoes every message (same opcode)
//   /ws?room=R       joins R; {"type":"msg","room":R,"text":T,"cid":C} is serialised ONCE into
//                    {"type":"msg","room","id","from":{id,name},"text","ts"} and sent to every
//                    member (sender included); the sender also gets {"type":"ack","cid","id"}.
// No presence events, history, policy or rate limits: a lower bound of the work chatgw does.
// Usage: node ws-server.mjs PORT
import { WebSocketServer } from "ws";
import http from "node:http";

const port = Number(process.argv[2] || 9001);
const rooms = new Map(); // room -> { members: Set<ws>, seq }
const epoch = Math.random().toString(16).slice(2, 14);
let nextId = 1;

const server = http.createServer((req, res) => { res.writeHead(404); res.end(); });
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 1 << 20 });

server.on("upgrade", (req, socket, head) => {
  const url = new URL(req.url, "http://x");
  if (url.pathname !== "/echo" && url.pathname !== "/ws") { socket.destroy(); return; }
  wss.handleUpgrade(req, socket, head, (ws) => {
    if (url.pathname === "/echo") {
      ws.on("message", (data, isBinary) => ws.send(data, { binary: isBinary }));
      return;
    }
    const name = url.searchParams.get("room") || "lobby";
    let room = rooms.get(name);
    if (!room) rooms.set(name, (room = { members: new Set(), seq: 0 }));
    room.members.add(ws);
    const me = { id: String(nextId++), name: url.searchParams.get("name") || "anon" };
    ws.on("message", (data) => {
      let m;
      try { m = JSON.parse(data); } catch { return; }
      if (m.type !== "msg" || m.room !== name || typeof m.text !== "string") return;
      const id = `${epoch}:${++room.seq}`;
      const out = Buffer.from(JSON.stringify({ type: "msg", room: name, id, from: me, text: m.text, ts: Date.now() }));
      for (const peer of room.members) peer.send(out, { binary: false });
      ws.send(JSON.stringify({ type: "ack", cid: m.cid, id }));
    });
    ws.on("close", () => {
      room.members.delete(ws);
      if (room.members.size === 0) rooms.delete(name);
    });
  });
});

server.listen(port, "127.0.0.1", 4096, () => console.log(`ws peer on ${port}`));
process.on("SIGTERM", () => process.exit(0));
