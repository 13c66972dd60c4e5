// room.js: the room page at /r/<room>. Members with avatars and mute/speaking badges, text
// chat (Enter sends, timestamps, history on join, /me and /nick through the policy, a typing
// indicator through the policy's custom `typing` type), a copy-link button, readable error
// banners, reconnect with `since` (chat.js), and voice (voice.js).
import { ChatConnection } from './chat.js';
import { VoiceMesh } from './voice.js';
import { VoiceSfu } from './voice_sfu.js';
import { avatar, errorText, formatTime, h, roomProblem, roomUrl, saveName, savedName } from './util.js';

const TYPING_SEND_MS = 2500;       // at most one `typing` per this long while typing
const TYPING_SHOW_MS = 4000;       // how long "X is typing" stays without a new event

export function renderRoom(root, room) {
  document.title = `#${room} — chatgw`;
  const state = {
    room,
    me: { id: null, name: savedName() },
    members: new Map(),            // id -> {id, name, muted, nick, speaking, voice}
    seen: new Set(),               // message ids shown
    typing: new Map(),             // id -> timer
    typingSupported: true,
    lastTypingSent: 0,
    joined: false,
    everJoined: false,
    muted: false,
    cid: 0,
    stateInfo: '',
  };

  // ---- layout ----
  const status = h('span', { id: 'conn-status', class: 'status', role: 'status', 'aria-live': 'polite' }, 'Connecting…');
  const banners = h('div', { id: 'banners', class: 'banners', 'aria-live': 'assertive' });
  const copyStatus = h('span', { id: 'copy-status', class: 'visually-hidden', 'aria-live': 'polite' });
  const copyBtn = h('button', { type: 'button', id: 'copy-link', 'aria-describedby': 'copy-status' },
    h('span', { 'aria-hidden': 'true' }, '🔗 '), 'Copy link');
  const memberList = h('ul', { id: 'members', class: 'members', 'aria-label': 'Members' });
  const memberCount = h('span', { id: 'member-count', class: 'count' });
  const voiceBtn = h('button', { type: 'button', id: 'voice', class: 'primary', 'aria-pressed': 'false' },
    h('span', { 'aria-hidden': 'true' }, '🎙️ '), h('span', { class: 'label' }, 'Join voice'));
  const muteBtn = h('button', { type: 'button', id: 'mute', 'aria-pressed': 'false' },
    h('span', { 'aria-hidden': 'true', class: 'glyph' }, '🔈 '), h('span', { class: 'label' }, 'Mute'));
  const voiceStatus = h('p', { id: 'voice-status', class: 'help', 'aria-live': 'polite' }, 'Voice is off.');
  const log = h('ol', { id: 'messages', class: 'messages', role: 'log', 'aria-live': 'polite', 'aria-label': 'Messages' });
  const typingLine = h('p', { id: 'typing', class: 'typing', 'aria-live': 'polite' });
  const input = h('input', {
    id: 'text', name: 'text', autocomplete: 'off', maxlength: 2000, enterkeyhint: 'send',
    placeholder: 'Message — Enter sends, /me waves, /nick NewName', 'aria-label': `Message #${room}`,
  });
  const sendBtn = h('button', { type: 'submit', id: 'send', class: 'primary' }, 'Send');
  const composer = h('form', { id: 'composer', class: 'composer', 'aria-label': 'Send a message' }, input, sendBtn);
  const remoteAudio = h('div', { id: 'remote-audio', hidden: true });

  root.replaceChildren(
    h('header', { class: 'top room-top' },
      h('a', { class: 'brand', href: '/', 'aria-label': 'chatgw home: all rooms' }, h('span', { 'aria-hidden': 'true' }, '💬'), ' chatgw'),
      h('h1', { id: 'room-title' }, `#${room}`),
      h('div', { class: 'top-actions' }, status, copyBtn, copyStatus)),
    banners,
    h('main', { id: 'main', class: 'room' },
      h('aside', { class: 'side card', 'aria-labelledby': 'members-title' },
        h('h2', { id: 'members-title' }, 'Members ', memberCount),
        memberList,
        h('div', { class: 'voice-controls', role: 'group', 'aria-label': 'Voice' }, voiceBtn, muteBtn),
        voiceStatus),
      h('section', { class: 'chat card', 'aria-labelledby': 'room-title' }, log, typingLine, composer)),
    remoteAudio);

  // ---- banners ----
  function banner(code, text, action) {
    const key = `${code}`;
    for (const b of banners.querySelectorAll(`[data-code="${CSS.escape(key)}"]`)) b.remove();
    const el = h('div', { class: `banner banner-${code}`, role: 'alert', dataset: { code: key } },
      h('p', {}, h('strong', {}, text), ' ', h('code', { class: 'code' }, code)),
      action ? h('button', { type: 'button', class: 'banner-action', onclick: () => { el.remove(); action.run(); } }, action.label) : null,
      h('button', { type: 'button', class: 'icon dismiss', 'aria-label': 'Dismiss this message', onclick: () => el.remove() }, '✕'));
    banners.append(el);
    if (!action) setTimeout(() => el.remove(), code === 'rate_limited' ? 8000 : 20000);
    return el;
  }
  const clearBanner = (code) => { for (const b of banners.querySelectorAll(`[data-code="${code}"]`)) b.remove(); };

  // ---- members ----
  const nameOf = (id, fallback) => {
    const m = state.members.get(id);
    return (m && (m.nick || m.name)) || fallback || '?';
  };
  function renderMembers() {
    const list = [...state.members.values()];
    memberCount.textContent = `(${list.length})`;
    memberList.replaceChildren(...list.map((m) => {
      const me = m.id === state.me.id;
      const name = m.nick || m.name;
      const labels = [name, me ? '(you)' : '', m.muted ? 'muted' : '', m.speaking ? 'speaking' : '', m.voice ? 'in voice' : '']
        .filter(Boolean).join(', ');
      return h('li', {
        class: `member${m.speaking ? ' speaking' : ''}${m.muted ? ' muted' : ''}${me ? ' me' : ''}`,
        dataset: { memberId: m.id, name }, 'aria-label': labels,
      },
      avatar(name, m.speaking ? 'ring' : ''),
      h('span', { class: 'member-name' }, name, me ? h('span', { class: 'you' }, ' (you)') : null),
      h('span', { class: 'badges', 'aria-hidden': 'true' },
        m.voice ? h('span', { class: 'badge badge-voice', title: 'In voice' }, '🎧') : null,
        m.speaking ? h('span', { class: 'badge badge-speaking', title: 'Speaking' }, 'speaking') : null,
        m.muted ? h('span', { class: 'badge badge-muted', title: 'Muted' }, '🔇') : null));
    }));
  }
  const setMember = (m) => {
    const old = state.members.get(m.id);
    state.members.set(m.id, { ...old, id: m.id, name: m.name, muted: !!m.muted, speaking: old ? old.speaking : false,
      voice: old ? old.voice : false, nick: old ? old.nick : undefined });
  };

  // ---- messages ----
  let stickToBottom = true;
  log.addEventListener('scroll', () => {
    stickToBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 40;
  });
  function append(el) {
    log.append(el);
    if (stickToBottom) log.scrollTop = log.scrollHeight;
  }
  function showMsg(m) {
    if (!m || !m.id || state.seen.has(m.id)) return;
    state.seen.add(m.id);
    const from = m.from || {};
    const name = from.id && state.members.has(from.id) ? nameOf(from.id, from.name) : (from.name || '?');
    const when = h('time', { datetime: new Date(m.ts).toISOString(), title: new Date(m.ts).toLocaleString() }, formatTime(m.ts));
    const mine = from.id && from.id === state.me.id;
    if (m.action) {
      append(h('li', { class: 'msg action', dataset: { id: m.id, from: from.id || '' } },
        h('span', { class: 'text' }, m.text), ' ', when));
      return;
    }
    append(h('li', { class: `msg${mine ? ' mine' : ''}`, dataset: { id: m.id, from: from.id || '' } },
      avatar(name),
      h('div', { class: 'bubble' },
        h('p', { class: 'meta' }, h('span', { class: 'from' }, name), ' ', when),
        h('p', { class: 'text' }, m.text))));
  }
  function notice(text, kind = 'notice') {
    append(h('li', { class: `system ${kind}` }, h('span', { class: 'text' }, text), ' ',
      h('time', { datetime: new Date().toISOString() }, formatTime(Date.now()))));
  }

  // ---- typing ----
  function renderTyping() {
    const names = [...state.typing.keys()].map((id) => nameOf(id));
    typingLine.textContent = !names.length ? '' :
      names.length === 1 ? `${names[0]} is typing…` :
        names.length === 2 ? `${names[0]} and ${names[1]} are typing…` : 'Several people are typing…';
  }
  function typingFrom(id) {
    if (!id || id === state.me.id) return;
    clearTimeout(state.typing.get(id));
    state.typing.set(id, setTimeout(() => { state.typing.delete(id); renderTyping(); }, TYPING_SHOW_MS));
    renderTyping();
  }
  function stopTyping(id) {
    if (!state.typing.has(id)) return;
    clearTimeout(state.typing.get(id));
    state.typing.delete(id);
    renderTyping();
  }
  input.addEventListener('input', () => {
    const v = input.value;
    if (!state.typingSupported || !state.joined || !v || v.startsWith('/')) return;
    const now = Date.now();
    if (now - state.lastTypingSent < TYPING_SEND_MS) return;
    state.lastTypingSent = now;
    conn.send({ type: 'typing', room, cid: `typing-${++state.cid}` });
  });

  // ---- sending ----
  composer.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    if (!state.joined || !conn.send({ type: 'msg', room, text, cid: `c-${++state.cid}` })) {
      banner('offline', 'Not connected: your message is still in the box. It can be sent once the room is back.');
      return;
    }
    input.value = '';
    state.lastTypingSent = 0;
    input.focus();
  });

  // ---- copy link ----
  copyBtn.addEventListener('click', async () => {
    const url = roomUrl(room);
    let ok = false;
    try {
      await navigator.clipboard.writeText(url);
      ok = true;
    } catch {
      // no clipboard permission (or plain http): select the text in a temporary field
      const tmp = h('input', { value: url, 'aria-hidden': 'true', class: 'offscreen' });
      document.body.append(tmp);
      tmp.select();
      try { ok = document.execCommand('copy'); } catch { ok = false; }
      tmp.remove();
    }
    copyStatus.textContent = ok ? 'Link copied' : `Copy this link: ${url}`;
    copyBtn.classList.toggle('done', ok);
    copyBtn.lastChild.textContent = ok ? 'Copied!' : 'Copy link';
    if (!ok) banner('copy', `Copy this link by hand: ${url}`);
    setTimeout(() => { copyBtn.lastChild.textContent = 'Copy link'; copyBtn.classList.remove('done'); }, 2000);
  });

  // ---- voice ----
  let voice = null;
  let iceServers = [];
  let voiceKind = 'mesh';          // 'sfu' when the server mixes voice (janus_url)
  const iceReady = fetch('/api/config').then((r) => (r.ok ? r.json() : {})).then((c) => {
    iceServers = Array.isArray(c.ice_servers) ? c.ice_servers : [];
    if (c.voice === 'sfu') voiceKind = 'sfu';
  }).catch((err) => console.warn('chatgw: /api/config', err));
  function ensureVoice() {
    if (voice) return voice;
    const Voice = voiceKind === 'sfu' ? VoiceSfu : VoiceMesh;
    voice = new Voice({
      room,
      send: (frame) => conn.send(frame),
      onStatus: () => renderVoiceStatus(),
      myId: () => state.me.id || '',
      memberIds: () => [...state.members.keys()].filter((id) => id !== state.me.id),
      signal: (to, data) => conn.send({ type: 'signal', room, to, data }),
      iceServers,
      onSpeaking: (id, speaking) => {
        const m = state.members.get(id || state.me.id);
        if (m) { m.speaking = speaking; renderMembers(); }
      },
      onPeerState: (id, st) => {
        const m = state.members.get(id);
        if (m) { m.voice = st !== 'closed' && st !== 'failed'; renderMembers(); }
        renderVoiceStatus();
      },
    });
    window.chatgw.voice = voice;
    return voice;
  }
  function renderVoiceStatus() {
    const on = voice && voice.on;
    voiceBtn.setAttribute('aria-pressed', String(!!on));
    voiceBtn.querySelector('.label').textContent = on ? 'Leave voice' : 'Join voice';
    voiceBtn.classList.toggle('primary', !on);
    if (!on) { voiceStatus.textContent = 'Voice is off.'; return; }
    if (voice.kind === 'sfu') {
      const st = voice.pc ? voice.pc.connectionState : 'new';
      voiceStatus.textContent = st === 'connected' ? `In voice (mixed by the server) with ${Math.max(voice.inVoice.size - 1, 0)} others.`
        : voice.lastError && !voice.pc ? `Voice interrupted (${voice.lastError}); joining again…` : 'Connecting voice…';
      return;
    }
    const peers = [...voice.peers.values()];
    const up = peers.filter((p) => p.pc.connectionState === 'connected').length;
    voiceStatus.textContent = peers.length ? `In voice with ${up} of ${peers.length} ${peers.length === 1 ? 'person' : 'people'}.` :
      'In voice. Waiting for others to join voice.';
  }
  voiceBtn.addEventListener('click', async () => {
    const v = ensureVoice();
    if (v.on) {
      v.stop();
      const me = state.members.get(state.me.id);
      if (me) { me.voice = false; me.speaking = false; }
      renderMembers();
      renderVoiceStatus();
      return;
    }
    voiceBtn.disabled = true;
    voiceStatus.textContent = 'Asking for the microphone…';
    try {
      await iceReady;
      v.iceServers = iceServers;
      v.setMuted(state.muted);
      await v.start();
      const me = state.members.get(state.me.id);
      if (me) me.voice = true;
      renderMembers();
    } catch (err) {
      banner('microphone', `No microphone: ${err.message || err.name}`);
    } finally {
      voiceBtn.disabled = false;
      renderVoiceStatus();
    }
  });
  function setMuted(muted) {
    state.muted = muted;
    muteBtn.setAttribute('aria-pressed', String(muted));
    muteBtn.querySelector('.label').textContent = muted ? 'Unmute' : 'Mute';
    muteBtn.querySelector('.glyph').textContent = muted ? '🔇 ' : '🔈 ';
    if (voice) voice.setMuted(muted);
    const me = state.members.get(state.me.id);
    if (me) { me.muted = muted; renderMembers(); }
  }
  muteBtn.addEventListener('click', () => {
    const muted = !state.muted;
    setMuted(muted);
    conn.send({ type: muted ? 'mute' : 'unmute', room });
  });

  // ---- the connection ----
  function onFrame(f) {
    switch (f.type) {
    case 'welcome':
      state.me.id = f.id;
      break;
    case 'room': {
      if (f.room !== room) break;
      const again = state.everJoined;
      state.joined = true;
      state.everJoined = true;
      const before = state.members;
      state.members = new Map();
      for (const m of f.members || []) {
        setMember(m);
        const old = [...before.values()].find((o) => o.id === m.id);
        if (old && old.nick) state.members.get(m.id).nick = old.nick;
      }
      if (!state.members.has(state.me.id) && state.me.id) setMember({ id: state.me.id, name: state.me.name, muted: state.muted });
      for (const m of f.history || []) showMsg(m);
      clearBanner('room_full');
      clearBanner('forbidden');
      clearBanner('offline');
      if (again) notice('Reconnected.');
      if (state.muted) conn.send({ type: 'mute', room });   // a new connection starts unmuted
      const me = state.members.get(state.me.id);
      if (me) { me.muted = state.muted; me.voice = !!(voice && voice.on); }
      renderMembers();
      if (voice && voice.on) voice.reset();
      break;
    }
    case 'join':
      if (f.room !== room || !f.member) break;
      setMember(f.member);
      renderMembers();
      notice(`${f.member.name} joined.`, 'presence');
      break;
    case 'leave':
      if (f.room !== room || !f.member) break;
      notice(`${nameOf(f.member.id, f.member.name)} left.`, 'presence');
      state.members.delete(f.member.id);
      stopTyping(f.member.id);
      if (voice) voice.peerLeft(f.member.id);
      renderMembers();
      break;
    case 'mute':
    case 'unmute': {
      if (f.room !== room || !f.member) break;
      if (f.member.id === state.me.id) { setMuted(f.type === 'mute'); break; }   // a moderator's mute
      const m = state.members.get(f.member.id);
      if (m) { m.muted = f.type === 'mute'; renderMembers(); }
      break;
    }
    case 'msg':
      if (f.room !== room) break;
      if (f.from) stopTyping(f.from.id);
      showMsg(f);
      break;
    case 'history':
      if (f.room === room) for (const m of f.messages || []) showMsg(m);
      break;
    case 'typing':
      if (f.room === room && f.from) typingFrom(f.from.id);
      break;
    case 'nick': {
      if (f.room !== room) break;
      const m = state.members.get(f.id);
      const old = nameOf(f.id);
      if (m) m.nick = f.name;
      if (f.id === state.me.id) {
        state.me.name = f.name;
        saveName(f.name);          // the next connection uses it
        notice(`You are now ${f.name}.`);
      } else {
        notice(`${old} is now ${f.name}.`);
      }
      renderMembers();
      break;
    }
    case 'notice':
      if (!f.room || f.room === room) notice(String(f.text || ''));
      break;
    case 'dm':
      notice(`Private message from ${f.from && f.from.name}: ${f.text}`, 'dm');
      break;
    case 'signal':
      if (f.room === room && voice) voice.onSignal(f.from, f.data);
      break;
    case 'voice_answer':
    case 'voice':
    case 'voice_talking':
    case 'voice_lost':
      if (f.room === room && voice && voice.onFrame) voice.onFrame(f);
      renderVoiceStatus();
      break;
    case 'error':
      onError(f);
      break;
    default:
      break;
    }
  }

  function onError(f) {
    const code = String(f.code || 'error');
    if (f.ref === 'voice-join' || (f.ref && f.ref.type === 'voice_join')) {
      if (voice && voice.onError) voice.onError(f);
      if (code !== 'voice_unavailable') banner('voice', `Voice refused: ${code}`);
      renderVoiceStatus();
      return;
    }
    const ref = f.ref === undefined || f.ref === null ? '' : String(f.ref);
    if (ref.startsWith('typing-')) {
      if (code === 'bad_type') state.typingSupported = false;   // this policy has no typing
      return;
    }
    switch (code) {
    case 'history_gap':
      notice('Some messages from while you were away are no longer kept.');
      return;
    case 'unknown_peer':
      return;                      // a voice signal to someone who just left
    case 'not_in_room':
      if (state.joined) {
        state.joined = false;
        conn.send({ type: 'join', room, name: state.me.name, since: conn.lastId || undefined });
      }
      return;
    case 'room_full':
    case 'forbidden':
      if (ref === room || !state.joined) {
        state.joined = false;
        banner(code, code === 'room_full' ? errorText('room_full') : 'You may not join this room (forbidden).',
          { label: 'Try again', run: () => conn.send({ type: 'join', room, name: state.me.name }) });
        return;
      }
      banner(code, errorText(code, f.message));
      return;
    case 'kicked':
    case 'banned':
      banner(code, errorText(code, f.message), { label: 'Rejoin', run: () => conn.reconnect() });
      return;
    default:
      banner(code, errorText(code, f.message));
    }
  }

  function onState(st, info = {}) {
    status.dataset.state = st;
    if (st === 'open') {
      status.textContent = 'Connected';
      state.me.id = info.id;
      clearBanner('disconnected');
      return;
    }
    state.joined = false;
    if (st === 'connecting') status.textContent = info.attempt ? 'Reconnecting…' : 'Connecting…';
    else if (st === 'waiting') {
      status.textContent = info.delay ? `Offline — retrying in ${Math.ceil(info.delay / 1000)} s` : 'Reconnecting…';
      if (voice && voice.on) voice.closeAll();
      typingLine.textContent = '';
      for (const t of state.typing.values()) clearTimeout(t);
      state.typing.clear();
      if (conn.attempt >= 3) banner('disconnected', 'The connection to the server is lost. Retrying…',
        { label: 'Retry now', run: () => conn.reconnect() });
    } else if (st === 'stopped') status.textContent = 'Disconnected';
  }

  const problem = roomProblem(room);
  const conn = new ChatConnection({ room, name: () => state.me.name, onFrame, onState });
  window.chatgw = { room, state, conn, voice: null };
  if (problem) {
    banner('bad_field', `“${room}” is not a usable room name. ${problem}`, { label: 'Back to rooms', run: () => location.assign('/') });
    status.textContent = 'Not connected';
  } else {
    conn.connect();
  }
  window.addEventListener('pagehide', () => { if (voice) voice.stop(); conn.close(); });
  input.focus();
  return window.chatgw;
}
