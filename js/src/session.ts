/**
 * Session resumption, the client's side (docs/protocol.md, "Resuming a session"): the
 * token, positions (frames sent and received after each transport's handshake), the
 * replay buffer of sent messages the server has not acknowledged, and ACKs.
 */

import * as F from "./frames.js";
import { ProtocolError, type Frame } from "./frames.js";

export const TOKEN_SIZE = 32;
/** ACK once this many frames or bytes arrived since the last one. */
export const ACK_FRAMES = 64;
export const ACK_BYTES = 256 << 10;
/** On a link that keeps dropping before anything gets through, messages shrink down to this. */
export const MIN_CHUNK = 4 << 10;

interface Sent {
  first: number; // position of its first frame
  end: number; // position after its last frame
  msg: Uint8Array;
}

export class Session {
  /** Both HELLOs asked for resumption and the server gave a token. */
  enabled = false;
  /** Why the session can no longer be resumed ("" while it can). */
  broken = "";
  token: Uint8Array | null = null;
  sent = 0;
  received = 0;
  /** The highest position the server acknowledged: what is before it was freed, so a
   * resume from before it cannot be served (a protocol error). */
  acked = 0;
  replayBytes = 0;
  private replay: Sent[] = [];
  private sinceAckFrames = 0;
  private sinceAckBytes = 0;
  /** How many bytes one message (and one new stream frame) may carry on this link: a
   * WebSocket message arrives whole or not at all, so on a link cut before a large one
   * gets through, resending it whole never progresses. Halved on every resume after a
   * transport that got nothing outstanding through (down to MIN_CHUNK), doubled on every
   * ACK that frees replay (docs/protocol.md, "Slow, flaky links"). */
  chunk: number;

  constructor(
    private readonly maxReplayBytes: number,
    private readonly maxChunk: number,
  ) {
    this.chunk = maxChunk;
  }

  /** The largest new stream frame (and message) this link takes now (Infinity while it is healthy). */
  get cap(): number {
    return this.chunk < this.maxChunk ? this.chunk : Infinity;
  }

  get resumable(): boolean {
    return this.enabled && this.broken === "";
  }

  /** A new session: positions from 0, nothing to replay. */
  start(enabled: boolean, token: Uint8Array | null): void {
    this.enabled = enabled;
    this.token = token;
    this.broken = "";
    this.sent = this.received = this.acked = 0;
    this.replay = [];
    this.replayBytes = 0;
    this.sinceAckFrames = this.sinceAckBytes = 0;
    this.chunk = this.maxChunk;
  }

  /** Our handshake's RESUME frame (token, received position). */
  resumeFrame(): Uint8Array {
    return F.encodeFrame(F.RESUME, 0, 0, F.concat([this.token!, F.encodeVarint(this.received)]));
  }

  /** A message of `n` frames leaves: keep it until acknowledged. */
  record(msg: Uint8Array, n: number): void {
    const first = this.sent;
    this.sent += n;
    if (!this.resumable) return;
    this.replay.push({ first, end: this.sent, msg });
    this.replayBytes += msg.length;
    if (this.replayBytes > this.maxReplayBytes) {
      this.broken = "replay buffer overflow: the server acknowledged too little (maxReplayBytes)";
      this.replay = [];
      this.replayBytes = 0;
    }
  }

  /** `n` frames (a message of `bytes`) arrived after the handshake: true when an ACK is due. */
  arrived(n: number, bytes: number): boolean {
    this.received += n;
    if (!this.enabled || n === 0) return false;
    this.sinceAckFrames += n;
    this.sinceAckBytes += bytes;
    if (this.sinceAckFrames >= ACK_FRAMES || this.sinceAckBytes >= ACK_BYTES) {
      this.sinceAckFrames = this.sinceAckBytes = 0;
      return true;
    }
    return false;
  }

  /** The server received every frame before `pos`: forget those messages; true when that freed any. */
  ack(pos: number): boolean {
    if (pos > this.sent) throw new ProtocolError(`acknowledged position ${pos} is past the ${this.sent} frames sent`);
    if (pos > this.acked) this.acked = pos;
    let i = 0;
    while (i < this.replay.length && this.replay[i].end <= pos) {
      this.replayBytes -= this.replay[i].msg.length;
      i++;
    }
    if (i === 0) return false;
    this.replay = this.replay.slice(i);
    this.chunk = Math.min(this.chunk * 2, this.maxChunk);
    return true;
  }

  /** The server's received position in its RESUME_OK: within what we sent, and not
   * before what it acknowledged (those frames were freed: they cannot be replayed). */
  checkResume(pos: number): void {
    if (pos > this.sent) throw new ProtocolError(`resume position ${pos} is past the ${this.sent} frames sent`);
    if (pos < this.acked) throw new ProtocolError(`resume position ${pos} is before the ${this.acked} frames acknowledged`);
  }

  /** The server resumed at `pos` (checked with {@link checkResume}): the messages it
   * lacks, the first cut to its missing frames (they stay buffered until acknowledged,
   * in case this transport drops too). */
  replayFrom(pos: number): Uint8Array[] {
    if (!this.ack(pos) && this.replay.length > 0) {
      // the last transport got nothing of what was outstanding through: smaller messages
      this.chunk = Math.max(MIN_CHUNK, this.chunk >> 1);
    }
    const out: Uint8Array[] = [];
    for (const r of this.replay) {
      if (r.first < pos) {
        const rest = F.encodeBatch(F.decodeMessage(r.msg, Number.MAX_SAFE_INTEGER).slice(pos - r.first));
        this.replayBytes -= r.msg.length - rest.length;
        r.msg = rest;
        r.first = pos;
      }
      if (r.msg.length > this.chunk) out.push(...splitMessage(r.msg, this.chunk));
      else out.push(r.msg);
    }
    return out;
  }
}

/** Token and position of a RESUME / RESUME_OK frame. */
export function sessionFrame(f: Frame): [Uint8Array, number] {
  if (f.payload.length < TOKEN_SIZE + 1) throw new ProtocolError("truncated session frame");
  const [pos] = F.decodeVarint(f.payload, TOKEN_SIZE);
  return [f.payload.slice(0, TOKEN_SIZE), Number(pos)];
}

/** `msg` as messages of at most `size` bytes, cut at frame boundaries (a larger frame goes alone). */
export function splitMessage(msg: Uint8Array, size: number): Uint8Array[] {
  const frames = F.decodeMessage(msg, Number.MAX_SAFE_INTEGER);
  const out: Uint8Array[] = [];
  const w = new F.FrameWriter();
  for (const f of frames) {
    const n = 2 + F.varintSize(f.id) + F.varintSize(f.payload.length) + f.payload.length;
    if (w.count > 0 && w.length + n > size) out.push(w.take());
    w.add(f.type, f.flags, f.id, f.payload);
  }
  if (w.count > 0) out.push(w.take());
  return out;
}
