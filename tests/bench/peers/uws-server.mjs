// Peer for make bench: uWebSockets.js (npm @trufflesuite/uws-js-unofficial ships the prebuilt
// uWS.js binaries), the performance anchor. Same protocol subset as ws-server.mjs:
//   /echo            echoes every message
//   /ws?room=R       subscribes to topic R; a msg is serialised once and sent with uWS's own
//                    app.publish (every subscriber, sender included), then an ack to the sender.
// maxBackpressure is 1 MiB, like chatgw's write_queue_bytes. No compression.
// Usage: node uws-server.mjs PORT
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);
const uWS = require("@trufflesuite/uws-js-unofficial");

const port = Number(process.argv[2] || 9002);
const epoch = Math.random().toString(16).slice(2, 14);
const seqs = new Map();
let nextId = 1;
const dec = new TextDecoder();

const app = uWS.App();
app.ws("/echo", {
  compression: uWS.DISABLED,
  maxPayloadLength: 1 << 20,
  maxBackpressure: 1 << 20,
  idleTimeout: 0,
  message: (ws, msg, isBinary) => { ws.send(msg, isBinary); },
});
app.ws("/ws", {
  compression: uWS.DISABLED,
  maxPayloadLength: 1 << 20,
  maxBackpressure: 1 << 20,
  idleTimeout: 0,
  upgrade: (res, req, ctx) => {
    const q = new URLSearchParams(req.getQuery() || "");
    res.upgrade({ room: q.get("room") || "lobby", me: { id: String(nextId++), name: q.get("name") || "anon" } },
      req.getHeader("sec-websocket-key"), req.getHeader("sec-websocket-protocol"),
      req.getHeader("sec-websocket-extensions"), ctx);
  },
  open: (ws) => { ws.subscribe(ws.getUserData().room); },
  message: (ws, msg) => {
    const u = ws.getUserData();
    let m;
    try { m = JSON.parse(dec.decode(msg)); } catch { return; }
    if (m.type !== "msg" || m.room !== u.room || typeof m.text !== "string") return;
    const seq = (seqs.get(u.room) || 0) + 1;
    seqs.set(u.room, seq);
    const id = `${epoch}:${seq}`;
    app.publish(u.room, JSON.stringify({ type: "msg", room: u.room, id, from: u.me, text: m.text, ts: Date.now() }), false);
    ws.send(JSON.stringify({ type: "ack", cid: m.cid, id }), false);
  },
});
app.any("/*", (res) => { res.writeStatus("404 Not Found").end(); });
app.listen("127.0.0.1", port, (tok) => {
  if (!tok) { console.error(`uws peer: cannot listen on ${port}`); process.exit(1); }
  console.log(`uws peer on ${port}`);
});
process.on("SIGTERM", () => process.exit(0));
