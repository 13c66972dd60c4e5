// chat.js: one WebSocket to the gateway (protocol v1) that stays up by itself.
//
// It connects to /ws?room=R&name=N (room optional), remembers the id of the last message seen
// in the room and reconnects with since=<that id>, so the server replays exactly what was
// missed. Every close, 1001 from a draining server included, waits a backoff with full jitter
// before the next try (BACKOFF in util.js has the numbers and the reasons). A kick or a ban
// stops reconnecting until reconnect() is called. Every frame from the server goes to onFrame;
// state changes go to onState(state, info) with state one of 'connecting', 'open', 'waiting'
// (info.delay: the wait in ms, info.code: the close code) and 'stopped'.
import { BACKOFF, backoffDelay } from './util.js';

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
    this.attempt = 0;              // tries in a row since the last connection that stayed up
    this.firstMs = BACKOFF.firstMs;   // the first window of this run of tries
    this.backoff = BACKOFF;        // tests may swap in other numbers
    this.random = Math.random;     // and a fixed draw
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
    // a connection that stayed up starts a new run of tries; one that did not (accepted, then
    // closed at once) goes on growing the wait, so a server in trouble is not hammered
    if (this.openedAt && Date.now() - this.openedAt >= this.backoff.stableMs) this.attempt = 0;
    this.openedAt = 0;
    if (this.attempt === 0) {
      const asked = ev.code === 1001 || ev.code === 1013;   // going away, try again later
      this.firstMs = asked ? this.backoff.drainFirstMs : this.backoff.firstMs;
    }
    this.onState('waiting', { delay: this.scheduleRetry(), code: ev.code });
  }

  scheduleRetry() {
    const delay = backoffDelay(this.attempt, { first: this.firstMs, cap: this.backoff.capMs, random: this.random });
    this.attempt++;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), delay);
    return delay;
  }

  /** Reconnects now (the "retry" button, back online, after a kick): a person or this browser
   * asked, not a crowd. */
  reconnect() {
    this.stopped = false;
    this.attempt = 0;
    this.firstMs = this.backoff.firstMs;
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
