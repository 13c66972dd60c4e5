// voice_sfu.js: voice through the server's audio mixer (Janus AudioBridge behind chatgw), used
// when /api/config says {voice: "sfu"}. The browser speaks only to chatgw:
//   -> voice_join {room, data: {type: 'offer', sdp}}   one RTCPeerConnection, one audio track up
//   <- voice_answer {room, data: {type: 'answer', sdp}} and the mixed audio of the others down
//   -> voice_trickle {room, data: candidate | null}    candidates found after the offer went
//   <- voice {room, member, on, muted}                  who is in voice
//   <- voice_talking {room, member, talking}            who is talking (the mixer's levels)
//   <- voice_lost {room, code}, or error voice_unavailable: voice ended; joined again with backoff
//   -> voice_leave {room}
// Mute disables the track here and asks the server to mute us in the mixer (room.js sends it).

import { openMicrophone } from './voice.js';

const GATHER_WAIT_MS = 1500;       // send the offer with the candidates found by then
const BACKOFF_MIN_MS = 1000;
const BACKOFF_MAX_MS = 15000;

export class VoiceSfu {
  /**
   * @param {object} o
   * @param {string} o.room
   * @param {() => string} o.myId
   * @param {(frame: object) => boolean} o.send sends a frame to the server
   * @param {(id: string, speaking: boolean) => void} o.onSpeaking
   * @param {(id: string, state: string) => void} o.onPeerState ('connected' / 'closed' per member in voice)
   * @param {(text: string) => void} o.onStatus
   */
  constructor({ room, myId, send, onSpeaking, onPeerState, onStatus, iceServers }) {
    this.kind = 'sfu';
    this.room = room;
    this.myId = myId;
    this.send = send;
    this.onSpeaking = onSpeaking || (() => {});
    this.onPeerState = onPeerState || (() => {});
    this.onStatus = onStatus || (() => {});
    this.iceServers = iceServers || [];
    this.on = false;               // the user wants voice
    this.muted = false;
    this.stream = null;
    this.track = null;
    this.pc = null;
    this.peers = new Map();        // 'sfu' -> {id, pc}, for callers that list connections
    this.inVoice = new Set();      // member ids the server says are in voice
    this.talking = new Set();
    this.offerSent = false;
    this.retryMs = BACKOFF_MIN_MS;
    this.retryTimer = null;
    this.audio = null;
    this.audioCtx = null;
    this.analyser = null;
    this.joins = 0;                // voice_join frames sent (tests read it)
    this.lastError = '';
    this.audioBox = document.getElementById('remote-audio') || document.body;
  }

  async start() {
    if (this.on) return;
    this.stream = await openMicrophone(this);
    this.track = this.stream.getAudioTracks()[0];
    this.track.enabled = !this.muted;
    this.on = true;
    this.retryMs = BACKOFF_MIN_MS;
    await this.join();
  }

  /** One voice_join: a fresh connection and offer. */
  async join() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (!this.on) return;
    this.closePc();
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    this.pc = pc;
    this.peers.set('sfu', { id: 'sfu', pc });
    this.offerSent = false;
    pc.addTrack(this.track, this.stream);
    pc.ontrack = ({ track, streams }) => this.playMix(streams[0] || new MediaStream([track]));
    pc.onicecandidate = ({ candidate }) => {
      if (!this.offerSent || pc !== this.pc) return;   // still going into the offer itself
      this.send({ type: 'voice_trickle', room: this.room, data: candidate ? candidate.toJSON() : null });
    };
    pc.onconnectionstatechange = () => {
      if (pc !== this.pc) return;
      this.onStatus(pc.connectionState);
      if (pc.connectionState === 'failed') this.lost('ice_failed');
    };
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') { resolve(); return; }
      const t = setTimeout(resolve, GATHER_WAIT_MS);
      pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') { clearTimeout(t); resolve(); }
      });
    });
    if (pc !== this.pc || !this.on) return;
    this.offerSent = true;
    this.joins++;
    this.send({ type: 'voice_join', room: this.room, cid: 'voice-join', data: { type: 'offer', sdp: pc.localDescription.sdp } });
    if (pc.iceGatheringState === 'complete') this.send({ type: 'voice_trickle', room: this.room, data: null });
  }

  playMix(stream) {
    if (!this.audio) {
      this.audio = document.createElement('audio');
      this.audio.autoplay = true;
      this.audio.dataset.peer = 'sfu';
      this.audioBox.append(this.audio);
    }
    this.audio.srcObject = stream;
    this.audio.play().catch(() => { /* autoplay refused until the next click; RTP still flows */ });
    try {
      const src = this.audioCtx.createMediaStreamSource(stream);
      this.analyser = this.audioCtx.createAnalyser();
      this.analyser.fftSize = 512;
      src.connect(this.analyser);
    } catch (err) {
      console.warn('voice: no level meter for the mix', err);
    }
  }

  /** The RMS level (0..1) of the mix we receive; id is ignored (one stream). */
  level() {
    if (!this.analyser) return 0;
    const buf = new Float32Array(this.analyser.fftSize);
    this.analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const v of buf) sum += v * v;
    return Math.sqrt(sum / buf.length);
  }

  closePc() {
    if (!this.pc) return;
    const { pc } = this;
    this.pc = null;
    this.peers.delete('sfu');
    pc.onicecandidate = pc.ontrack = pc.onconnectionstatechange = null;
    pc.close();
    this.analyser = null;
  }

  /** Voice ended without the user asking: join again after a growing, jittered pause. */
  lost(code) {
    this.lastError = code;
    this.closePc();
    this.clearMembers();
    if (!this.on) return;
    const wait = Math.round(this.retryMs * (0.75 + Math.random() * 0.5));
    this.retryMs = Math.min(this.retryMs * 2, BACKOFF_MAX_MS);
    this.onStatus(`reconnecting (${code})`);
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.join().catch((err) => console.warn('voice: join failed', err)), wait);
  }

  clearMembers() {
    for (const id of this.inVoice) this.onPeerState(id, 'closed');
    this.inVoice.clear();
    for (const id of this.talking) this.onSpeaking(id, false);
    this.talking.clear();
  }

  stop() {
    if (!this.on) return;
    this.on = false;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.send({ type: 'voice_leave', room: this.room });
    this.closePc();
    this.clearMembers();
    if (this.stream) for (const t of this.stream.getTracks()) t.stop();
    this.stream = null;
    this.track = null;
    if (this.audio) { this.audio.srcObject = null; this.audio.remove(); this.audio = null; }
  }

  setMuted(muted) {
    this.muted = muted;
    if (this.track) this.track.enabled = !muted;
  }

  /** After a reconnect our id changed and the server forgot our voice: join again. */
  reset() {
    if (!this.on) return;
    this.clearMembers();
    this.retryMs = BACKOFF_MIN_MS;
    this.join().catch((err) => console.warn('voice: join failed', err));
  }

  /** The chat connection dropped: the server ends our voice with it (reset() joins again). */
  closeAll() {
    this.closePc();
    this.clearMembers();
  }

  peerLeft(id) {
    if (this.inVoice.delete(id)) this.onPeerState(id, 'closed');
    if (this.talking.delete(id)) this.onSpeaking(id, false);
  }

  onSignal() { /* mesh only */ }

  /** A voice_* frame of our room. */
  async onFrame(f) {
    switch (f.type) {
    case 'voice_answer':
      if (!this.pc || !f.data || f.data.type !== 'answer') return;
      try {
        await this.pc.setRemoteDescription(f.data);
        this.retryMs = BACKOFF_MIN_MS;
      } catch (err) {
        console.warn('voice: answer failed', err);
        this.lost('bad_answer');
      }
      return;
    case 'voice':
      if (f.on) this.inVoice.add(f.member); else this.inVoice.delete(f.member);
      this.onPeerState(f.member, f.on ? 'connected' : 'closed');
      if (!f.on && this.talking.delete(f.member)) this.onSpeaking(f.member, false);
      return;
    case 'voice_talking':
      if (f.talking) this.talking.add(f.member); else this.talking.delete(f.member);
      this.onSpeaking(f.member === this.myId() ? '' : f.member, !!f.talking);
      return;
    case 'voice_lost':
      this.lost(String(f.code || 'voice_lost'));
      return;
    default:
    }
  }

  /** An error frame about our voice_join (voice_unavailable, a policy's refusal). */
  onError(f) {
    const code = String(f.code || 'error');
    this.lastError = code;
    if (code === 'voice_unavailable' || code === 'rate_limited') this.lost(code);
    else this.stop();              // refused by policy: no retry
  }
}
