/** Stream records of one connection (both directions) and the reader's AsyncIterable. */

import { ConnectionClosed } from "./errors.js";

/** Every STREAM_DATA frame costs its payload plus this many bytes of credit. */
export const FRAME_CHARGE = 32;

/** A frame queued on an outgoing stream (credit already spent). */
export interface OutFrame {
  type: number;
  flags: number;
  payload: Uint8Array;
}

/** An outgoing stream: its credit, its queued frames, the sender waiting on it. */
export class OutStream {
  credit: number;
  frames: OutFrame[] = [];
  head = 0;
  queued = 0; // payload bytes queued, not yet packed into a message
  opened = false; // OPEN went with a frame
  ended = false; // a terminal frame is queued: nothing more is accepted
  closedByPeer = false; // STREAM_CLOSE arrived
  inRing = false;
  wake: (() => void) | null = null;
  constructor(
    readonly id: number,
    public urgency: number,
    credit: number,
    readonly bound: boolean, // a call's results or a channel's input: it holds no stream slot
  ) {
    this.credit = credit;
  }

  get pending(): boolean {
    return this.head < this.frames.length;
  }

  push(f: OutFrame): void {
    if (!this.opened) {
      f.flags |= 0x20; // OPEN: the first frame of the stream
      this.opened = true;
    }
    this.frames.push(f);
    this.queued += f.payload.length;
  }

  shift(): OutFrame {
    const f = this.frames[this.head++];
    this.queued -= f.payload.length;
    if (this.head > 64 && this.head * 2 > this.frames.length) {
      this.frames = this.frames.slice(this.head);
      this.head = 0;
    }
    return f;
  }

  drop(): void {
    this.frames = [];
    this.head = 0;
    this.queued = 0;
  }

  notify(): void {
    const w = this.wake;
    if (w !== null) {
      this.wake = null;
      w();
    }
  }
}

export interface HeldItem {
  payload: Uint8Array;
  raw: boolean;
  charge: number;
  /** Bytes it counts against maxConnectionMemory while held (a compressed item: as received). */
  size: number;
  /** Compressed as received: inflated when its reader comes to it, not before, so the
   * windows bound what a stream holds whatever the compression ratio. */
  compressed: boolean;
  /** A compressed item being inflated: read it once this settles. */
  pending: Promise<void> | null;
  /** Why a compressed item could not be inflated (corrupt, or past maxItemSize): its reader gets it, and the stream ends there. */
  error?: Error;
}

export const IN_OPEN = 0;
export const IN_ENDED = 1;
export const IN_FAILED = 2;

/** An incoming stream: held items, what its sender may still send, its reader. */
export class InStream {
  items: HeldItem[] = [];
  head = 0;
  state = IN_OPEN;
  error: Error | null = null;
  partial: Uint8Array[] | null = null;
  partialSize = 0;
  partialFlags = 0;
  errorSize = 0; // bytes of its STREAM_ERROR / STREAM_ABORT payload, held until released
  seenOpen = false;
  cancelled = false; // our streaming call was cancelled: frames are absorbed until its end
  claimed = false;
  peerCredit: number; // bytes the sender may still send
  windowSize: number;
  consumed = 0; // bytes read and not yet credited back
  wake: (() => void) | null = null;
  constructor(
    readonly id: number,
    readonly bound: boolean,
    window: number,
  ) {
    this.peerCredit = window;
    this.windowSize = window;
  }

  get available(): number {
    return this.items.length - this.head;
  }

  take(): HeldItem {
    const it = this.items[this.head];
    this.items[this.head++] = undefined as unknown as HeldItem;
    if (this.head === this.items.length) {
      this.items = [];
      this.head = 0;
    }
    return it;
  }

  notify(): void {
    const w = this.wake;
    if (w !== null) {
      this.wake = null;
      w();
    }
  }
}

/** What a ReceiveStream needs from its connection. */
export interface StreamLink {
  readItem(s: InStream): unknown; // decode the next item and give its credit back
  inflateItem(it: HeldItem): Promise<void>; // inflate a compressed item (its payload, or its error)
  releaseStream(s: InStream): void; // the reader is done with an ended stream
  closeStream(s: InStream): void; // the reader stops early
  closedError(): Error | null;
}

/**
 * An incoming stream: `for await (const item of stream)`. Leaving the loop early
 * (`break`, an exception) closes it, which cancels a streaming call on the other side.
 */
export class ReceiveStream<T = unknown> implements AsyncIterableIterator<T> {
  private done = false;
  /** Items received so far. */
  received = 0;
  constructor(
    private readonly link: StreamLink,
    private readonly record: InStream,
  ) {}

  /** The stream's id on the connection. */
  get id(): number {
    return this.record.id;
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  /** next() calls in flight take their turns: each waits for the one before it. */
  next(): Promise<IteratorResult<T>> {
    if (!this.reading && this.queued === 0) {
      const p = this.take();
      this.last = p;
      return p;
    }
    this.queued++;
    const run = () => {
      this.queued--;
      return this.take();
    };
    const p = this.last!.then(run, run);
    this.last = p;
    return p;
  }
  private reading = false; // a take() waits for an item
  private queued = 0; // next() calls waiting for their turn
  private last: Promise<IteratorResult<T>> | null = null;

  private async take(): Promise<IteratorResult<T>> {
    const s = this.record;
    for (;;) {
      if (this.done) return { done: true, value: undefined };
      if (s.available > 0) {
        const it = s.items[s.head];
        const { compressed, error } = it;
        if (compressed) {
          this.reading = true;
          await this.link.inflateItem(it);
          this.reading = false;
          continue;
        }
        if (error !== undefined) {
          // An item that could not be inflated fails this stream only, as the Python
          // client's reader: what is held is dropped and the sender is told to stop.
          this.close();
          throw error;
        }
        this.received++;
        return { done: false, value: this.link.readItem(s) as T };
      }
      if (s.state !== IN_OPEN) {
        this.done = true;
        this.link.releaseStream(s);
        if (s.error !== null) throw s.error;
        return { done: true, value: undefined };
      }
      const err = this.link.closedError();
      if (err !== null) {
        this.done = true;
        throw err;
      }
      this.reading = true;
      await new Promise<void>((resolve) => {
        s.wake = resolve;
      });
      this.reading = false;
    }
  }

  async return(): Promise<IteratorResult<T>> {
    this.close();
    return { done: true, value: undefined };
  }

  /** Stop reading: what is held is dropped and the sender is told (STREAM_CLOSE, or CANCEL for a call). */
  close(): void {
    if (this.done) return;
    this.done = true;
    if (this.record.state === IN_OPEN || this.record.available > 0) this.link.closeStream(this.record);
    else this.link.releaseStream(this.record);
    this.record.notify(); // a next() waiting for an item ends (done)
  }

  /** All remaining items, in an array. */
  async toArray(): Promise<T[]> {
    const out: T[] = [];
    for await (const x of this) out.push(x);
    return out;
  }
}

export function closedError(reason: string): ConnectionClosed {
  return new ConnectionClosed(reason);
}
