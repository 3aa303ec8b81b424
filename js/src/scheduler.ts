/**
 * What leaves next (docs/protocol.md, "Outgoing scheduling and priority"): each message
 * packs the control frames first (calls, answers, credit, PONG, ACK), then the stream
 * frames by urgency 0 (first) to 7, round robin among the streams of one urgency, each
 * turn taking what that stream has queued (at most its buffer size), up to the batch
 * size of stream data and the server's message limit.
 */

import * as F from "./frames.js";
import type { OutStream } from "./streams.js";

export class Scheduler {
  private control: Uint8Array[] = [];
  private controlHead = 0;
  private readonly rings: OutStream[][] = [[], [], [], [], [], [], [], []];

  constructor(
    private readonly streamBufferSize: number,
    /** A stream's terminal frame was packed: it is done. */
    private readonly onEnded: (s: OutStream) => void,
  ) {}

  /** Control frames queued and not yet packed. */
  get controlQueued(): number {
    return this.control.length - this.controlHead;
  }

  /** Bytes of the control frames queued and not yet packed. */
  controlBytes = 0;

  /** Queue one encoded control frame. */
  queueControl(frame: Uint8Array): void {
    this.control.push(frame);
    this.controlBytes += frame.length;
  }

  /** `s` has frames queued: give it turns. */
  ready(s: OutStream): void {
    if (!s.inRing) {
      s.inRing = true;
      this.rings[s.urgency].push(s);
    }
  }

  /** The next message and its frame count, or null when nothing is queued. Streams whose
   * queue shrank are notified (their senders may go on). */
  next(maxMessage: number, batch: number): [Uint8Array, number] | null {
    const w = new F.FrameWriter();
    const control = this.control;
    while (this.controlHead < control.length && (w.count === 0 || w.length + control[this.controlHead].length <= maxMessage)) {
      const frame = control[this.controlHead++];
      this.controlBytes -= frame.length;
      w.addEncoded(frame, 1);
    }
    if (this.controlHead === control.length) {
      this.control = [];
      this.controlHead = 0;
    }
    let budget = Math.min(batch, maxMessage - w.length);
    for (let u = 0; u < 8 && budget > 0; u++) {
      const ring = this.rings[u];
      while (ring.length > 0 && budget > 0) {
        const s = ring.shift()!;
        let turn = this.streamBufferSize;
        while (s.pending && turn > 0 && budget > 0) {
          const head = s.frames[s.head];
          if (w.count > 0 && w.length + head.payload.length + 24 > maxMessage) break;
          const f = s.shift();
          w.add(f.type, f.flags, s.id, f.payload);
          budget -= f.payload.length + 8;
          turn -= f.payload.length + 8;
          if (f.type !== F.STREAM_DATA) this.onEnded(s);
        }
        if (s.pending) ring.push(s);
        else s.inRing = false;
        s.notify();
        if (w.count > 0 && w.length + 24 > maxMessage) {
          budget = 0;
          break;
        }
      }
    }
    if (w.count === 0) return null;
    const n = w.count;
    return [w.take(), n];
  }

  /** Forget everything queued (the session is gone). */
  clear(): void {
    this.control = [];
    this.controlHead = 0;
    this.controlBytes = 0;
    for (const r of this.rings) {
      for (const s of r) s.inRing = false;
      r.length = 0;
    }
  }
}
