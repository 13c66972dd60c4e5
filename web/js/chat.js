// chat.js: one WebSocket to the gateway (protocol v1) that stays up by itself.
//
// It connects to /ws?room=R&name=N (room optional), remembers the id of the last message seen
// in the room and reconnects with since=<that id>, so the server replays exactly what was
// missed. A drop waits a backoff with jitter (0.5 s doubling to 15 s); a close with 1001 (the
// server draining or restarting) reconnects at once. A kick or a ban stops reconnecting until
// reconnect() is called. Every frame from the server goes to onFrame; state changes go to
// onState(state, info) with state one of 'connecting', 'open', 'waiting', 'stopped'.
import { backoffDelay } from './util.js';

const CONNECT_TIMEOUT_MS = 10000;

export class ChatConnection {
  /**
   * @param {object} o
   * @param {string} [o.room] the room joined by the URL (none: a lobby connection)
   * @param {() => string} o.name the name to connect with (read at every connect)
   * @param {(frame: object) => void} o.onFrame
   * @param {(state: string, info?: object) => void} [o.onState]
   */
  constructor({ room, name, onFrame, onState }) {
    this.room = room || null;
    this.nameOf = name;
    this.onFrame = onFrame;
    this.onState = onState || (() => {});
    this.ws = null;
    this.id = null;                // our connection id (from welcome)
    this.lastId = null;            // the last message id seen in this.room
    this.attempt = 0;              // failed tries since the last good connection
    this.retryTimer = null;
    this.connectTimer = null;
    this.stopped = false;
    this.everOpen = false;
    this.onOnline = () => { if (!this.ws && !this.stopped) this.reconnect(); };
    window.addEventListener('online', this.onOnline);
  }

  url() {
    const q = new URLSearchParams();
    if (this.room) q.set('room', this.room);
    const name = this.nameOf();
    if (name) q.set('name', name);
    if (this.room && this.lastId) q.set('since', this.lastId);
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${scheme}//${location.host}/ws?${q}`;
  }

  get isOpen() { return !!this.ws && this.ws.readyState === WebSocket.OPEN; }

  connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.ws || this.stopped) return;
    let ws;
    try {
      ws = new WebSocket(this.url(), 'chatgw.v1');
    } catch (err) {
      this.onState('waiting', { delay: this.scheduleRetry(), error: String(err) });
      return;
    }
    this.ws = ws;
    this.onState('connecting', { attempt: this.attempt });
    this.connectTimer = setTimeout(() => { if (ws.readyState === WebSocket.CONNECTING) ws.close(); }, CONNECT_TIMEOUT_MS);
    ws.onopen = () => {
      clearTimeout(this.connectTimer);
      this.openedAt = Date.now();
    };
    ws.onmessage = (ev) => {
      let f;
      try { f = JSON.parse(ev.data); } catch { console.warn('chatgw: a frame that is not JSON', ev.data); return; }
      if (!f || typeof f.type !== 'string') return;
      this.track(f);
      this.onFrame(f);
    };
    ws.onclose = (ev) => this.closed(ws, ev);
    ws.onerror = () => { /* a close event follows with the code */ };
  }

  // Keeps lastId and the connection state up to date from what the server sends.
  track(f) {
    if (f.type === 'welcome') {
      this.id = f.id;
      this.attempt = 0;
      this.everOpen = true;
      this.onState('open', { id: f.id, name: f.name });
    } else if (f.type === 'msg' && f.room === this.room && f.id) {
      this.lastId = f.id;
    } else if ((f.type === 'room' || f.type === 'history') && f.room === this.room) {
      const list = f.type === 'room' ? f.history : f.messages;
      if (Array.isArray(list) && list.length) this.lastId = list[list.length - 1].id || this.lastId;
    } else if (f.type === 'error' && (f.code === 'kicked' || f.code === 'banned')) {
      this.stopped = true;         // do not walk straight back in; the page offers a button
    }
  }

  closed(ws, ev) {
    clearTimeout(this.connectTimer);
    if (this.ws !== ws) return;
    this.ws = null;
    this.id = null;
    if (this.stopped) {
      this.onState('stopped', { code: ev.code, reason: ev.reason });
      return;
    }
    // 1001: the server is going away (drain, restart, idle). Come back at once, but only once
    // in a row: if that try fails too, the normal backoff applies.
    const lived = this.openedAt && Date.now() - this.openedAt > 2000;
    if (ev.code === 1001 && (lived || this.attempt === 0)) {
      this.attempt = 1;
      this.openedAt = 0;
      this.onState('waiting', { delay: 0, code: ev.code });
      this.connect();
      return;
    }
    this.openedAt = 0;
    this.onState('waiting', { delay: this.scheduleRetry(), code: ev.code });
  }

  scheduleRetry() {
    const delay = backoffDelay(this.attempt);
    this.attempt++;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), delay);
    return delay;
  }

  /** Reconnects now (the "retry" button, or after a kick). */
  reconnect() {
    this.stopped = false;
    this.attempt = 0;
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onclose = null;
      ws.close(1000);
    }
    this.connect();
  }

  /** Sends one frame; false when the socket is not open (the caller decides what to do). */
  send(frame) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  /** Drops the socket as a failed network would (for tests and the "reconnect" menu). */
  drop() {
    if (this.ws) this.ws.close(4000, 'client drop');
  }

  /** Closes for good (leaving the page). */
  close() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    window.removeEventListener('online', this.onOnline);
    if (this.ws) this.ws.close(1000);
  }
}
