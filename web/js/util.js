// util.js: small helpers shared by the pages: DOM building, names, avatars, room names,
// timestamps, the saved nickname and readable texts for the server's error codes.

/** Creates an element: h('button', {class: 'x', onclick: fn, 'aria-label': 'y'}, 'text', child). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const ADJ = ['Swift', 'Calm', 'Brave', 'Sunny', 'Quiet', 'Lucky', 'Witty', 'Gentle',
  'Bold', 'Merry', 'Clever', 'Kind', 'Bright', 'Cosy', 'Jolly', 'Noble'];
const ANIMALS = [['🦊', 'Fox'], ['🐼', 'Panda'], ['🐨', 'Koala'], ['🦉', 'Owl'], ['🐙', 'Octopus'],
  ['🦁', 'Lion'], ['🐧', 'Penguin'], ['🐢', 'Turtle'], ['🦄', 'Unicorn'], ['🐳', 'Whale'],
  ['🦋', 'Butterfly'], ['🐝', 'Bee'], ['🦜', 'Parrot'], ['🐺', 'Wolf'], ['🐸', 'Frog'], ['🦔', 'Hedgehog']];

function pick(list) {
  const r = new Uint32Array(1);
  crypto.getRandomValues(r);
  return list[r[0] % list.length];
}

/** A friendly random nickname like the server's: "🦊 Swift Fox". */
export function randomName() {
  const [emoji, animal] = pick(ANIMALS);
  return `${emoji} ${pick(ADJ)} ${animal}`;
}

/** A random room name for "create": "brave-owl-42". */
export function randomRoom() {
  const r = new Uint32Array(1);
  crypto.getRandomValues(r);
  return `${pick(ADJ).toLowerCase()}-${pick(ANIMALS)[1].toLowerCase()}-${r[0] % 100}`;
}

const NAME_KEY = 'chatgw.name';

/** 1 to 32 characters without control characters, not only spaces (the server's rule). */
export function validName(s) {
  if (typeof s !== 'string') return false;
  const n = [...s].length;
  // eslint-disable-next-line no-control-regex
  return n >= 1 && n <= 32 && !/[\u0000-\u001f\u007f-\u009f]/.test(s) && /\S/.test(s);
}

/** The saved nickname, or a new random one (saved). */
export function savedName() {
  let name = null;
  try { name = localStorage.getItem(NAME_KEY); } catch { /* storage off: a name per page */ }
  if (!validName(name)) {
    name = randomName();
    saveName(name);
  }
  return name;
}

export function saveName(name) {
  try { localStorage.setItem(NAME_KEY, name); } catch { /* storage off */ }
}

/**
 * Checks a room name against the gateway's rule: 1-64 bytes, no whitespace, control characters,
 * / ? # % \ " < >, no leading dot. Returns null when fine, else a sentence saying why.
 * The policy may be stricter; its answer shows as a banner.
 */
export function roomProblem(room) {
  if (!room) return 'Type a room name.';
  if (new TextEncoder().encode(room).length > 64) return 'Room names are at most 64 bytes long.';
  if (room.startsWith('.')) return 'Room names cannot start with a dot.';
  // eslint-disable-next-line no-control-regex
  if (/[\s\u0000-\u001f\u007f/?#%\\"<>]/.test(room)) return 'Room names cannot contain spaces or / ? # % \\ " < >.';
  return null;
}

/** "My Room " -> "My-Room": what a person most likely meant. */
export function tidyRoom(s) {
  return s.trim().replace(/\s+/g, '-');
}

export function roomUrl(room) {
  return `${location.origin}/r/${encodeURIComponent(room)}`;
}

/** A stable colour for a name (hue from a string hash). */
export function colourOf(s) {
  let x = 2166136261;
  for (const ch of s) x = Math.imul(x ^ ch.codePointAt(0), 16777619) >>> 0;
  return `hsl(${x % 360} 55% 42%)`;
}

/** The avatar's glyph: a leading emoji, else the first letter. */
export function glyphOf(name) {
  const first = [...(name || '?').trim()][0] || '?';
  return /\p{Extended_Pictographic}/u.test(first) ? first : first.toUpperCase();
}

export function avatar(name, extraClass = '') {
  const el = h('span', { class: `avatar ${extraClass}`.trim(), 'aria-hidden': 'true' }, glyphOf(name));
  el.style.setProperty('--avatar', colourOf(name || '?'));   // CSSOM: allowed by the CSP, unlike style=""
  return el;
}

/** HH:MM for today, else a short date and the time. */
export function formatTime(ts) {
  const d = new Date(ts);
  const now = new Date();
  const hm = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  if (d.toDateString() === now.toDateString()) return hm;
  return `${d.toLocaleDateString([], { month: 'short', day: 'numeric' })} ${hm}`;
}

/** Readable texts for the server's stable error codes. */
export const ERROR_TEXT = {
  room_full: 'This room is full. Try again later, or pick another room.',
  forbidden: 'That is not allowed here.',
  rate_limited: 'You are sending too fast. Wait a moment, then try again.',
  policy_error: 'The room\'s rules could not handle that (policy error). Try again in a moment.',
  too_large: 'That message is too long.',
  bad_field: 'That name or value is not accepted.',
  bad_command: 'Unknown command. Try /me or /nick.',
  repeated: 'You already sent that. Say something new.',
  not_in_room: 'You are not in this room (yet). Reconnecting…',
  banned: 'You are banned from this server for a while.',
  kicked: 'You were removed from the room.',
  not_found: 'No such member.',
  bad_json: 'The server could not read a message from this page.',
  bad_type: 'The server does not know that kind of message.',
};

export function errorText(code, fallback) {
  return ERROR_TEXT[code] || fallback || `The server answered: ${code}.`;
}

// Reconnect backoff: the one place its numbers live (README.md gives bots the same advice).
// Each wait is drawn uniformly from [0, window) ("full jitter"), so clients that lost their
// server at the same moment spread out instead of landing on the next one together. The window
// starts at firstMs, doubles after every failed try and stops at capMs. A close the server asked
// for (1001 going away on a drain, 1013 try again later) starts at drainFirstMs: a drained
// pod's clients then arrive at the others over seconds. A connection that stayed up stableMs
// counts as good, and the next drop starts from the first window again.
export const BACKOFF = Object.freeze({ firstMs: 1000, drainFirstMs: 4000, capMs: 30000, stableMs: 10000 });

/** The window of the attempt-th try in a row (0 for the first): first doubled per try, capped. */
export function backoffWindow(attempt, { first = BACKOFF.firstMs, cap = BACKOFF.capMs } = {}) {
  return Math.min(cap, first * 2 ** Math.min(Math.max(attempt, 0), 30));
}

/** Full jitter: a wait in whole ms drawn from [0, backoffWindow(attempt)); random as Math.random. */
export function backoffDelay(attempt, { first, cap, random = Math.random } = {}) {
  return Math.floor(random() * backoffWindow(attempt, { first, cap }));
}
