// home.js: the home page. A nickname (random, editable, kept in localStorage), a form to join
// or create a room by name, and the public rooms: /api/stats filtered by the policy's room
// directory (the `rooms` request of the default policy). Without a policy that answers `rooms`,
// the list falls back to /api/stats minus the default policy's private names (_x, private-x,
// dm-x), so a private room never shows just because the policy is old.
import { ChatConnection } from './chat.js';
import { h, randomName, randomRoom, roomProblem, saveName, savedName, tidyRoom, validName } from './util.js';

const REFRESH_MS = 5000;
const DEFAULT_PRIVATE = [/^_/, /^private-/, /^dm-/];

export function renderHome(root) {
  document.title = 'chatgw — rooms';
  const nameInput = h('input', {
    id: 'name', name: 'name', autocomplete: 'nickname', maxlength: 64, required: true, spellcheck: 'false',
    'aria-describedby': 'name-help',
  });
  nameInput.value = savedName();
  const nameHelp = h('p', { id: 'name-help', class: 'help' }, 'Others see this name. It is kept in this browser.');
  const roomInput = h('input', {
    id: 'room', name: 'room', autocomplete: 'off', maxlength: 64, required: true, spellcheck: 'false',
    placeholder: 'e.g. lobby', 'aria-describedby': 'room-help',
  });
  const roomHelp = h('p', { id: 'room-help', class: 'help', 'aria-live': 'polite' },
    'Letters, digits, - _ and . work everywhere. A new name creates the room.');
  const list = h('ul', { id: 'rooms', class: 'room-list', 'aria-label': 'Public rooms' });
  const listStatus = h('p', { id: 'rooms-status', class: 'help', 'aria-live': 'polite' }, 'Loading rooms…');

  const keepName = () => {
    const v = nameInput.value.trim();
    if (validName(v)) {
      saveName(v);
      nameInput.removeAttribute('aria-invalid');
      nameHelp.textContent = 'Others see this name. It is kept in this browser.';
      return true;
    }
    nameInput.setAttribute('aria-invalid', 'true');
    nameHelp.textContent = 'A nickname is 1 to 32 characters.';
    return false;
  };
  nameInput.addEventListener('change', keepName);

  const go = (room) => {
    if (!keepName()) {
      nameInput.focus();
      return;
    }
    const problem = roomProblem(room);
    if (problem) {
      roomHelp.textContent = problem;
      roomInput.setAttribute('aria-invalid', 'true');
      roomInput.focus();
      return;
    }
    conn.close();
    location.assign(`/r/${encodeURIComponent(room)}`);
  };

  const form = h('form', { id: 'join-form', class: 'card', 'aria-labelledby': 'join-title' },
    h('h2', { id: 'join-title' }, 'Join or create a room'),
    h('div', { class: 'field' },
      h('label', { for: 'name' }, 'Your nickname'),
      h('div', { class: 'row' }, nameInput,
        h('button', {
          type: 'button', id: 'random-name', class: 'icon', 'aria-label': 'Pick a random nickname', title: 'Random nickname',
          onclick: () => { nameInput.value = randomName(); keepName(); },
        }, '🎲')),
      nameHelp),
    h('div', { class: 'field' },
      h('label', { for: 'room' }, 'Room name'),
      h('div', { class: 'row' }, roomInput, h('button', { type: 'submit', id: 'join', class: 'primary' }, 'Join')),
      roomHelp),
    h('button', { type: 'button', id: 'create-random', class: 'link', onclick: () => go(randomRoom()) },
      'Or create a room with a random name'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    go(tidyRoom(roomInput.value));
  });
  roomInput.addEventListener('input', () => roomInput.removeAttribute('aria-invalid'));

  root.replaceChildren(
    h('header', { class: 'top' },
      h('a', { class: 'brand', href: '/' }, h('span', { 'aria-hidden': 'true' }, '💬'), ' chatgw'),
      h('p', { class: 'tagline' }, 'Voice and text rooms. Pick a name, open a room, share the link.')),
    h('main', { id: 'main', class: 'home' },
      form,
      h('section', { class: 'card', 'aria-labelledby': 'rooms-title' },
        h('h2', { id: 'rooms-title' }, 'Public rooms'), listStatus, list)));

  // ---- the directory ----
  let directory = null;            // Set of public names from the policy, or null (unknown)
  let policyDirectory = true;      // false once the policy said it has no `rooms` type
  let seq = 0;
  const conn = new ChatConnection({
    name: () => (validName(nameInput.value.trim()) ? nameInput.value.trim() : ''),
    onFrame: (f) => {
      if (f.type === 'welcome') askDirectory();
      else if (f.type === 'rooms' && Array.isArray(f.rooms)) {
        directory = new Set(f.rooms.map((r) => r.name));
        refresh();
      } else if (f.type === 'error' && String(f.ref || '').startsWith('rooms-')) {
        policyDirectory = false;   // bad_type: this policy has no directory
        directory = null;
        refresh();
      }
    },
  });
  const askDirectory = () => {
    if (policyDirectory) conn.send({ type: 'rooms', cid: `rooms-${++seq}` });
  };
  conn.connect();

  async function refresh() {
    let stats;
    try {
      const r = await fetch('/api/stats', { headers: { Accept: 'application/json' } });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      stats = await r.json();
    } catch (err) {
      listStatus.textContent = `Cannot load the room list (${err.message}). Retrying…`;
      return;
    }
    let rooms = Array.isArray(stats.rooms) ? stats.rooms : [];
    if (directory) rooms = rooms.filter((r) => directory.has(r.name));
    else rooms = rooms.filter((r) => !DEFAULT_PRIVATE.some((re) => re.test(r.name)));
    rooms.sort((a, b) => b.online - a.online || String(a.name).localeCompare(String(b.name)));
    list.replaceChildren(...rooms.map((r) => h('li', {},
      h('a', { href: `/r/${encodeURIComponent(r.name)}`, class: 'room-link', dataset: { room: r.name } },
        h('span', { class: 'room-name' }, `#${r.name}`),
        h('span', { class: 'room-online' }, `${r.online} online`)))));
    listStatus.textContent = rooms.length ? `${rooms.length} public room${rooms.length > 1 ? 's' : ''}` :
      'No public rooms right now. Create one above!';
  }
  // The first list waits for the directory (or its absence) so a hidden room never flashes.
  setTimeout(() => { if (!directory) refresh(); }, 1500);
  const timer = setInterval(() => {
    if (document.hidden) return;
    if (conn.isOpen && policyDirectory) askDirectory();
    else refresh();
  }, REFRESH_MS);
  window.addEventListener('pagehide', () => { clearInterval(timer); conn.close(); });
  nameInput.focus();
  return { conn, get source() { return directory ? 'policy' : policyDirectory ? 'pending' : 'fallback'; } };
}
