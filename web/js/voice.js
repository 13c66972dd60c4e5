// voice.js: a WebRTC voice mesh over the chat protocol's `signal` relay.
//
// One RTCPeerConnection per other member who is in voice. Signal payloads (the `data` of a
// `signal` frame) are one of:
//   {voice: 'on'}              I joined voice (sent to every member)
//   {voice: 'off'}             I left voice
//   {description: {type, sdp}} an offer or answer
//   {candidates: [...]}        ICE candidates, batched to stay well under the rate limit
// Glare is handled by "perfect negotiation": the side with the greater id is polite (it rolls
// back its own offer when offers cross), the other is impolite (it ignores the incoming one).
// Mute disables the sender track (no renegotiation). A speaking flag per member comes from an
// AnalyserNode on each stream, sampled a few times a second.

const SPEAKING_RMS = 0.035;        // RMS of the waveform in [-1, 1] above which someone speaks
const SPEAKING_HOLD_MS = 500;      // stay "speaking" this long after the level drops
const CANDIDATE_BATCH_MS = 60;

/**
 * Asks for the microphone (echo cancelled, noise suppressed), after making voice.audioCtx
 * inside the click so that browsers let it run. Throws NotSupportedError where the page has no
 * microphone access (plain http), else getUserMedia's error. Shared by the mesh and the mixer.
 */
export async function openMicrophone(voice) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    const e = new Error('This browser gives no microphone access here (voice needs https or localhost).');
    e.name = 'NotSupportedError';
    throw e;
  }
  voice.audioCtx = voice.audioCtx || new AudioContext();
  voice.audioCtx.resume().catch(() => {});
  return navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    video: false,
  });
}

export class VoiceMesh {
  /**
   * @param {object} o
   * @param {() => string} o.myId
   * @param {() => string[]} o.memberIds other members of the room
   * @param {(to: string, data: object) => boolean} o.signal sends a signal frame
   * @param {(id: string, speaking: boolean) => void} o.onSpeaking ('' is me)
   * @param {(id: string, state: string) => void} o.onPeerState
   */
  constructor({ myId, memberIds, signal, onSpeaking, onPeerState, iceServers }) {
    this.myId = myId;
    this.memberIds = memberIds;
    this.signal = signal;
    this.onSpeaking = onSpeaking || (() => {});
    this.onPeerState = onPeerState || (() => {});
    this.iceServers = iceServers || [];
    this.on = false;
    this.muted = false;
    this.stream = null;
    this.track = null;
    this.peers = new Map();        // id -> peer
    this.meters = new Map();       // id ('' = me) -> {analyser, buf, speaking, until}
    this.audioCtx = null;
    this.meterTimer = null;
    this.audioBox = document.getElementById('remote-audio') || document.body;
  }

  /** Asks for the microphone and joins voice. Throws the getUserMedia error. */
  async start() {
    if (this.on) return;
    const stream = await openMicrophone(this);
    this.stream = stream;
    this.track = stream.getAudioTracks()[0];
    this.track.enabled = !this.muted;
    this.on = true;
    this.meter('', stream);
    this.meterTimer = setInterval(() => this.sample(), 120);
    this.announce();
  }

  /** Tells every member we are in voice; those in voice call back with an offer. */
  announce() {
    if (!this.on) return;
    for (const id of this.memberIds()) this.signal(id, { voice: 'on' });
  }

  stop() {
    if (!this.on) return;
    for (const id of this.memberIds()) this.signal(id, { voice: 'off' });
    this.closeAll();
    this.on = false;
    if (this.stream) for (const t of this.stream.getTracks()) t.stop();
    this.stream = null;
    this.track = null;
    this.unmeter('');
    clearInterval(this.meterTimer);
    this.meterTimer = null;
  }

  setMuted(muted) {
    this.muted = muted;
    if (this.track) this.track.enabled = !muted;
  }

  /** After a reconnect every id changed: start over with the new ones. */
  reset() {
    this.closeAll();
    this.announce();
  }

  closeAll() {
    for (const id of [...this.peers.keys()]) this.closePeer(id);
  }

  peerLeft(id) { this.closePeer(id); }

  closePeer(id) {
    const p = this.peers.get(id);
    if (!p) return;
    this.peers.delete(id);
    clearTimeout(p.candTimer);
    p.pc.onicecandidate = p.pc.ontrack = p.pc.onnegotiationneeded = p.pc.onconnectionstatechange = null;
    p.pc.close();
    if (p.audio) {
      p.audio.srcObject = null;
      p.audio.remove();
    }
    this.unmeter(id);
    this.onPeerState(id, 'closed');
  }

  peer(id) {
    let p = this.peers.get(id);
    if (p) return p;
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    p = { id, pc, polite: this.myId() > id, makingOffer: false, ignoreOffer: false, cands: [], candTimer: null,
      sender: null, audio: null };
    this.peers.set(id, p);
    pc.onnegotiationneeded = async () => {
      try {
        p.makingOffer = true;
        await pc.setLocalDescription();
        this.signal(id, { description: pc.localDescription.toJSON() });
      } catch (err) {
        console.warn('voice: offer failed', id, err);
      } finally {
        p.makingOffer = false;
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      if (candidate) p.cands.push(candidate.toJSON());
      if (!candidate) this.flushCandidates(p);
      else if (!p.candTimer) p.candTimer = setTimeout(() => this.flushCandidates(p), CANDIDATE_BATCH_MS);
    };
    pc.ontrack = ({ track, streams }) => {
      const stream = streams[0] || new MediaStream([track]);
      if (!p.audio) {
        p.audio = document.createElement('audio');
        p.audio.autoplay = true;
        p.audio.dataset.peer = id;
        this.audioBox.append(p.audio);
      }
      p.audio.srcObject = stream;
      p.audio.play().catch(() => { /* autoplay refused until the next click; RTP still flows */ });
      this.meter(id, stream);
    };
    pc.onconnectionstatechange = () => {
      this.onPeerState(id, pc.connectionState);
      if (pc.connectionState === 'failed') pc.restartIce();
    };
    this.onPeerState(id, 'new');
    return p;
  }

  addTrack(p) {
    if (p.sender || !this.track) return;
    p.sender = p.pc.addTrack(this.track, this.stream);
  }

  flushCandidates(p) {
    clearTimeout(p.candTimer);
    p.candTimer = null;
    if (!p.cands.length || !this.peers.has(p.id)) return;
    const candidates = p.cands;
    p.cands = [];
    this.signal(p.id, { candidates });
  }

  /** A `signal` frame's data from another member. */
  async onSignal(from, data) {
    if (!data || typeof data !== 'object' || from === this.myId()) return;
    if (data.voice === 'off') {
      this.closePeer(from);
      return;
    }
    if (data.voice === 'on') {
      if (!this.on) return;
      const p = this.peer(from);
      this.addTrack(p);            // -> negotiationneeded -> our offer
      return;
    }
    if (!this.on) {
      if (data.description && data.description.type === 'offer') this.signal(from, { voice: 'off' });
      return;
    }
    if (data.description) {
      const fresh = !this.peers.has(from);
      const p = this.peer(from);
      const { pc } = p;
      const desc = data.description;
      const collision = desc.type === 'offer' && (p.makingOffer || pc.signalingState !== 'stable');
      p.ignoreOffer = !p.polite && collision;
      if (p.ignoreOffer) return;
      try {
        await pc.setRemoteDescription(desc);          // the polite side rolls back implicitly
        if (desc.type === 'offer') {
          this.addTrack(p);        // reuses the offer's audio transceiver: one round trip
          await pc.setLocalDescription();
          this.signal(from, { description: pc.localDescription.toJSON() });
        }
      } catch (err) {
        console.warn('voice: description failed', from, err);
        if (fresh) this.closePeer(from);
      }
      return;
    }
    if (Array.isArray(data.candidates)) {
      const p = this.peers.get(from);
      if (!p) return;
      for (const c of data.candidates) {
        try {
          await p.pc.addIceCandidate(c);
        } catch (err) {
          if (!p.ignoreOffer) console.warn('voice: candidate failed', from, err);
        }
      }
    }
  }

  // ---- speaking indicator ----

  meter(id, stream) {
    if (!this.audioCtx) return;
    this.unmeter(id);
    try {
      const src = this.audioCtx.createMediaStreamSource(stream);
      const analyser = this.audioCtx.createAnalyser();
      analyser.fftSize = 512;
      src.connect(analyser);
      this.meters.set(id, { src, analyser, buf: new Float32Array(analyser.fftSize), speaking: false, until: 0 });
    } catch (err) {
      console.warn('voice: no level meter', id, err);
    }
  }

  unmeter(id) {
    const m = this.meters.get(id);
    if (!m) return;
    m.src.disconnect();
    this.meters.delete(id);
    if (m.speaking) this.onSpeaking(id, false);
  }

  /** The current RMS level of a member's audio (0..1), for tests and meters. */
  level(id) {
    const m = this.meters.get(id);
    if (!m) return 0;
    m.analyser.getFloatTimeDomainData(m.buf);
    let sum = 0;
    for (const v of m.buf) sum += v * v;
    return Math.sqrt(sum / m.buf.length);
  }

  sample() {
    const now = performance.now();
    for (const [id, m] of this.meters) {
      const loud = (id !== '' || !this.muted) && this.level(id) > SPEAKING_RMS;
      if (loud) m.until = now + SPEAKING_HOLD_MS;
      const speaking = loud || now < m.until;
      if (speaking !== m.speaking) {
        m.speaking = speaking;
        this.onSpeaking(id, speaking);
      }
    }
  }
}
