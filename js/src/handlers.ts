/**
 * Calls and notifications from the server to functions the application registered
 * (`peer.register`): arguments decoded, the handler run, its result or error sent back
 * (RESPONSE / ERROR), a streaming call's async iterable sent as its result stream;
 * deadlines and CANCEL. Bounded by our `max_pending_calls`.
 */

import * as F from "./frames.js";
import { ProtocolError, type Frame } from "./frames.js";
import type { OutStream } from "./streams.js";
import { errorMessage, errorName, isAsyncIterable, isIterable } from "./util.js";

export type Handler = (...args: any[]) => unknown;

/** setTimeout's longest delay. */
const MAX_TIMEOUT = 0x7fffffff;

/** What the handlers need from their connection. */
export interface HandlerLink {
  sendControl(type: number, flags: number, id: number, payload: Uint8Array): void;
  decodeArgs(payload: Uint8Array, raw: boolean): unknown[];
  encodeResult(value: unknown): [Uint8Array, boolean];
  responseLimit(): number;
  openResponse(id: number): OutStream;
  sendItems(s: OutStream, source: AsyncIterable<unknown> | Iterable<unknown>): Promise<void>;
  failStream(s: OutStream, e: unknown): void;
  abandon(s: OutStream): void;
}

interface Running {
  cancelled: boolean;
  stream: OutStream | null;
  timer: ReturnType<typeof setTimeout> | null;
}

export class Handlers {
  private readonly fns = new Map<string, Handler>();
  private readonly running = new Map<number, Running>();
  /** Async notification handlers still running (bounded by maxPendingCalls). */
  private notifying = 0;
  /** Bumped by {@link clear}: handlers of a session gone no longer count. */
  private generation = 0;

  constructor(
    private readonly link: HandlerLink,
    private readonly maxPendingCalls: number,
  ) {}

  register(name: string, fn: Handler): void {
    this.fns.set(name, fn);
  }

  onRequest(id: number, f: Frame): void {
    // the server's ids are even: an odd one could take a record of our own calls' or streams'
    if (id <= 0 || id % 2 !== 0) throw new ProtocolError("call id of the wrong parity");
    if (this.running.has(id)) throw new ProtocolError("call id in use");
    if (this.running.size >= this.maxPendingCalls) throw new ProtocolError("too many pending calls", "LIMIT_EXCEEDED");
    const [method, args, deadline] = head(f, (f.flags & F.FLAG_DEADLINE) !== 0);
    const rec: Running = { cancelled: false, stream: null, timer: null };
    this.running.set(id, rec);
    // A deadline past setTimeout's limit (2^31 - 1 ms, about 24.8 days) would fire at
    // once (Node and browsers clamp it to 1 ms): it is no deadline here.
    if (deadline !== null && deadline <= MAX_TIMEOUT) rec.timer = setTimeout(() => this.answerError(id, "TimeoutError", "deadline exceeded"), deadline);
    const fn = this.fns.get(method);
    if (fn === undefined) return this.answerError(id, "MethodNotFound", `no method ${JSON.stringify(method)}`);
    if (f.flags & F.FLAG_CHANNEL) return this.answerError(id, "NotImplementedError", "the JavaScript client serves no channels");
    let result: unknown;
    try {
      result = fn(...this.link.decodeArgs(args, (f.flags & F.FLAG_RAW) !== 0));
    } catch (e) {
      return this.answerError(id, errorName(e), errorMessage(e));
    }
    if (f.flags & F.FLAG_STREAM) return this.stream(id, rec, result);
    Promise.resolve(result).then(
      (v) => {
        if (this.running.get(id) !== rec) return; // cancelled, or past its deadline
        this.done(id);
        let payload: Uint8Array, raw: boolean;
        try {
          [payload, raw] = this.link.encodeResult(v);
        } catch (e) {
          this.link.sendControl(F.ERROR, 0, id, F.encodeError("TypeError", errorMessage(e)));
          return;
        }
        const limit = this.link.responseLimit();
        if (payload.length > limit) {
          this.link.sendControl(F.ERROR, 0, id, F.encodeError("ResponseTooLarge", `response of ${payload.length} bytes exceeds ${limit}`));
        } else {
          this.link.sendControl(F.RESPONSE, raw ? F.FLAG_RAW : 0, id, payload);
        }
      },
      (e) => {
        if (this.running.get(id) === rec) this.answerError(id, errorName(e), errorMessage(e));
      },
    );
  }

  /** A streaming call: the handler's (async) iterable becomes the result stream `id`. */
  private stream(id: number, rec: Running, result: unknown): void {
    const s = this.link.openResponse(id);
    rec.stream = s;
    void (async () => {
      let source: unknown;
      try {
        source = await result;
      } catch (e) {
        if (this.running.get(id) === rec) {
          this.done(id);
          this.link.failStream(s, e);
        }
        return;
      }
      const items = isAsyncIterable(source) || isIterable(source) ? source : [source];
      await this.link.sendItems(s, items);
      if (this.running.get(id) === rec) this.done(id);
    })();
  }

  onNotify(f: Frame): void {
    const [method, args] = head(f, false);
    const fn = this.fns.get(method);
    if (fn === undefined) return;
    let r: unknown;
    try {
      r = fn(...this.link.decodeArgs(args, (f.flags & F.FLAG_RAW) !== 0));
    } catch {
      return; /* nothing goes back for a notification */
    }
    if (!isThenable(r)) return;
    // A server that floods notifications whose async handlers do not finish would pile
    // them up without end: those still running share our max_pending_calls bound, as
    // on the Python side (past it: LIMIT_EXCEEDED, the connection closes).
    if (this.notifying >= this.maxPendingCalls) {
      Promise.resolve(r).catch(() => undefined);
      throw new ProtocolError(
        `too many running notification handlers: ${this.notifying} still run (settings.maxPendingCalls ${this.maxPendingCalls})`,
        "LIMIT_EXCEEDED",
      );
    }
    this.notifying++;
    const generation = this.generation;
    const finished = () => {
      if (this.generation === generation) this.notifying--;
    };
    Promise.resolve(r).then(finished, finished); // (a rejection is the handler's own: nothing goes back)
  }

  onCancel(id: number): void {
    const rec = this.running.get(id);
    if (rec === undefined) return;
    rec.cancelled = true;
    // A streaming handler's source is closed by its sender loop once it sees the stream ended.
    this.answerError(id, "CancelledError", "call cancelled");
  }

  /** Forget every running call (the session is gone). */
  clear(): void {
    for (const rec of this.running.values()) if (rec.timer !== null) clearTimeout(rec.timer);
    this.running.clear();
    this.notifying = 0;
    this.generation++;
  }

  private done(id: number): void {
    const rec = this.running.get(id);
    if (rec === undefined) return;
    if (rec.timer !== null) clearTimeout(rec.timer);
    this.running.delete(id);
  }

  private answerError(id: number, type: string, message: string): void {
    const rec = this.running.get(id);
    if (rec === undefined) return;
    this.done(id);
    if (rec.stream !== null) this.link.abandon(rec.stream);
    this.link.sendControl(F.ERROR, 0, id, F.encodeError(type, message));
  }
}

function isThenable(v: unknown): v is PromiseLike<unknown> {
  return (typeof v === "object" || typeof v === "function") && v !== null && typeof (v as { then?: unknown }).then === "function";
}

/** Method name, arguments and deadline (ms) of a REQUEST / NOTIFY frame. */
function head(f: Frame, hasDeadline: boolean): [string, Uint8Array, number | null] {
  let pos = 0;
  let deadline: number | null = null;
  if (hasDeadline) {
    const [ms, p] = F.decodeVarint(f.payload, 0);
    deadline = Number(ms);
    pos = p;
  }
  const [n, p] = F.decodeVarint(f.payload, pos);
  const end = p + Number(n);
  if (end > f.payload.length) throw new ProtocolError("truncated method name");
  let method: string;
  try {
    method = F.fromUtf8(f.payload.subarray(p, end), true);
  } catch {
    throw new ProtocolError("method name is not UTF-8");
  }
  return [method, f.payload.subarray(end), deadline];
}
