/** Small helpers of the client: timers, iteration, rate limits, errors. */

/** A token bucket: `rate` items (or bytes with `per: "bytes"`) per second. */
export interface RateLimit {
  rate: number;
  per?: "items" | "bytes";
  burst?: number;
}

export function timeoutError(ms: number): Error {
  const e = new Error(`call timed out after ${ms} ms`);
  e.name = "TimeoutError";
  return e;
}

export function abortReason(signal: AbortSignal): unknown {
  if (signal.reason !== undefined) return signal.reason;
  const e = new Error("call aborted");
  e.name = "AbortError";
  return e;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function isAsyncIterable(x: unknown): x is AsyncIterable<unknown> {
  return x !== null && typeof x === "object" && Symbol.asyncIterator in (x as object);
}

export function toAsyncIterator(x: AsyncIterable<unknown> | Iterable<unknown>): AsyncIterator<unknown> | Iterator<unknown> {
  return isAsyncIterable(x) ? x[Symbol.asyncIterator]() : (x as Iterable<unknown>)[Symbol.iterator]();
}

export class Bucket {
  private tokens: number;
  private stamp = performance.now();
  readonly perBytes: boolean;
  private readonly burst: number;
  constructor(private readonly limit: RateLimit) {
    if (!(limit.rate > 0)) throw new RangeError("rate must be positive");
    this.perBytes = limit.per === "bytes";
    this.burst = limit.burst ?? Math.max(1, limit.rate / 10);
    this.tokens = this.burst;
  }
  /** Take `cost` tokens; ms to wait before sending. */
  delay(cost: number): number {
    const now = performance.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.stamp) / 1000) * this.limit.rate) - cost;
    this.stamp = now;
    return this.tokens < 0 ? (-this.tokens / this.limit.rate) * 1000 : 0;
  }
}

/** Run `fn` on the next macrotask turn (setImmediate on Node, a MessageChannel in browsers). */
export const nextTurn: (fn: () => void) => void = (() => {
  const g = globalThis as { setImmediate?: (fn: () => void) => unknown };
  if (typeof g.setImmediate === "function") return (fn: () => void) => void g.setImmediate!(fn);
  if (typeof MessageChannel === "function") {
    const ch = new MessageChannel();
    const queue: Array<() => void> = [];
    ch.port1.onmessage = () => {
      const fns = queue.splice(0);
      for (const f of fns) f();
    };
    return (fn: () => void) => {
      queue.push(fn);
      if (queue.length === 1) ch.port2.postMessage(0);
    };
  }
  return (fn: () => void) => void setTimeout(fn, 0);
})();


export function isIterable(x: unknown): x is Iterable<unknown> {
  return x !== null && typeof x === "object" && Symbol.iterator in (x as object) && !(x instanceof Uint8Array);
}

export function errorName(e: unknown): string {
  if (e instanceof Error) return e.name || "Error";
  return "Error";
}

export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

