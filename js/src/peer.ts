/**
 * One fastrpc connection (or one resumable session over successive WebSockets), as
 * docs/protocol.md specifies it: HELLO and settings, calls both ways, notifications,
 * streams both ways under per-stream and connection byte credit, frames queued during
 * one microtask leaving as one message (control first, then streams by urgency,
 * round robin), keepalive, reconnect with backoff and jitter, and session resume with
 * replay.
 */

import * as F from "./frames.js";
import { ProtocolError, type ErrorCodeName, type Frame } from "./frames.js";
import { type PayloadCodec, codecById, codecByName, decodeValue, encodeValue } from "./codec.js";
import { ConnectionClosed, PayloadTooLarge, RemoteError, RemoteStreamError, ResumeFailed, StreamAborted } from "./errors.js";
import { ZLIB, available as compressionAvailable, deflate, inflate } from "./compression.js";
import { DEFAULT_SETTINGS, type Settings, settingsFromWire, settingsToWire, validateSettings } from "./settings.js";
import { type Handler, type HandlerLink, Handlers } from "./handlers.js";
import { Scheduler } from "./scheduler.js";
import { Session, sessionFrame } from "./session.js";
import { Bucket, type RateLimit, abortReason, errorMessage, errorName, isAsyncIterable, nextTurn, sleep, timeoutError, toAsyncIterator } from "./util.js";
import {
  FRAME_CHARGE,
  IN_ENDED,
  IN_FAILED,
  IN_OPEN,
  InStream,
  OutStream,
  ReceiveStream,
  type HeldItem,
  type StreamLink,
} from "./streams.js";

const CLOSE_CODES: Record<ErrorCodeName, number> = {
  NO_ERROR: 1000,
  PROTOCOL_ERROR: 1002,
  INTERNAL_ERROR: 1011,
  FLOW_CONTROL_ERROR: 1008,
  FRAME_TOO_LARGE: 1009,
  LIMIT_EXCEEDED: 1008,
  UNSUPPORTED_VERSION: 1002,
  COMPRESSION_ERROR: 1007,
  KEEPALIVE_TIMEOUT: 1011,
  STREAM_STATE_ERROR: 1002,
};

/** The close code of a GOAWAY's error code, as the Python client maps it (unknown: 1002). */
function goawayCloseCode(code: F.Varint): number {
  const name = (Object.keys(F.ErrorCode) as ErrorCodeName[]).find((k) => BigInt(F.ErrorCode[k]) === BigInt(code));
  return name === undefined ? 1002 : CLOSE_CODES[name];
}

/** The longest close reason a WebSocket sends: 123 bytes of UTF-8 (RFC 6455 5.5). */
function closeReason(reason: string): string {
  let bytes = 0;
  let end = 0;
  for (const ch of reason) {
    const cp = ch.codePointAt(0)!;
    bytes += cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    if (bytes > 123) break;
    end += ch.length;
  }
  return reason.slice(0, end);
}

/** Close `ws` with `code` (and `reason`), or at least close it. A WHATWG WebSocket
 * (browsers, Node's own) lets a script send 1000 and 3000-4999 only and throws for the
 * codes of our errors (1002, 1008, 1009, 1011): the connection would stay open, the
 * server never told. Then it goes with 1000 and the same reason; the GOAWAY before it
 * carries the error code. (The `ws` package sends the code itself.) */
function closeSocket(ws: WebSocket, code: number, reason?: string): void {
  const why = reason === undefined ? undefined : closeReason(reason);
  try {
    ws.close(code, why);
    return;
  } catch {
    /* a code this WebSocket does not send, or closing already */
  }
  if (ws.readyState > 1) return;
  try {
    ws.close(1000, why);
  } catch {
    /* closing already */
  }
}

/** The longest timeout a timer takes (setTimeout's limit, 2^31 - 1 ms, about 24.8 days). */
const MAX_TIMEOUT = 0x7fffffff;

function checkTimeout(timeout: number | undefined): void {
  if (timeout === undefined) return;
  if (typeof timeout !== "number" || !(timeout >= 0 && timeout <= MAX_TIMEOUT)) {
    throw new RangeError(`timeout must be 0..${MAX_TIMEOUT} ms (setTimeout's limit), not ${String(timeout)}`);
  }
}

/** A connection that drops within this many ms of coming back counts as a failed
 * reconnect attempt (the backoff grows, maxAttempts counts it), as the Python client's
 * RETRY_STABLE. */
const RETRY_STABLE = 1000;

/** A call waiting for a call slot (Peer.callSlot); Peer.stopWaiting ends the wait, which then rejects with `error`. */
interface SlotWait {
  stopped: boolean;
  error: unknown;
  wake: (() => void) | null;
}

const MAX_WINDOW = 4 << 20;
/** PONGs queued and not yet written (the server pings and does not read): past this,
 * LIMIT_EXCEEDED, as the Python side's bound of PONGs due at once. */
const MAX_PONGS_DUE = 1024;
const MAX_GROWTH = 16 << 20;
const DEFAULT_URGENCY = 3;

/** Reconnection with backoff and jitter: the first retry is immediate, then `initialDelay` x `multiplier`^n up to `maxDelay` (ms), each scaled by 1 +- `jitter`.
 * A connection that drops within a second of coming back counts as a failed attempt:
 * the delays go on growing, and `maxAttempts` counts it. */
export interface RetryOptions {
  initialDelay?: number;
  maxDelay?: number;
  multiplier?: number;
  jitter?: number;
  /** Attempts before giving up (default: unlimited while the server keeps the session). */
  maxAttempts?: number;
}

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

/** Options of {@link connect}; times in milliseconds. */
export interface ConnectOptions {
  /** How our payloads are encoded (default "msgpack"). */
  codec?: "msgpack" | "json";
  /** Offer zlib compression (default false, as the Python side's): items of at least
   * `compressionThreshold` bytes (1024) are compressed when that makes them smaller and
   * the server offers zlib too. Needs CompressionStream (browsers, Node 18+). */
  compression?: boolean;
  compressionThreshold?: number;
  /** Ask for session resumption (default true; the server must opt in too). */
  resume?: boolean;
  /** Reconnect after a drop and resume the session (default on when resumption was negotiated); false: a drop closes the peer. */
  reconnect?: boolean | RetryOptions;
  keepaliveInterval?: number | null;
  keepaliveTimeout?: number;
  handshakeTimeout?: number;
  /** After the server's GOAWAY, how long its close frame may take (default 10 s, the
   * Python side's close timeout): until it comes, what the server sent before it is
   * still read; past this the client closes the connection itself. */
  closeTimeout?: number;
  /** Senders wait while the socket holds more than this many bytes unsent (default 1 MiB). */
  maxBufferedAmount?: number;
  /** Stream data per outgoing message (default 128 KiB). */
  batchSize?: number;
  /** Bytes one stream may queue before its sender waits (default 64 KiB). */
  streamBufferSize?: number;
  /** Our HELLO's limits (what we accept); defaults as the Python package's. A message
   * over `maxMessageSize` closes the connection (FRAME_TOO_LARGE, 1009). */
  settings?: Partial<Omit<Settings, "codec" | "resume" | "compression">>;
  /** Bytes of unread (inflated) and partial items the server may make us hold, all streams together (default 32 MiB); past it the connection is closed (LIMIT_EXCEEDED). */
  maxConnectionMemory?: number;
  /** Replay buffer bound: past it the session is no longer resumable (default 16 MiB). */
  maxReplayBytes?: number;
  /** Bytes of control frames (answers to the server's calls, credit, PONGs, our calls
   * and notifications) that may wait in the client while the socket holds more than
   * `maxBufferedAmount` (default 4 MiB, the Python side's max_output_backlog); past it
   * the server is not reading what it asks for: the connection is closed (LIMIT_EXCEEDED). */
  maxOutputBacklog?: number;
  /** A WebSocket constructor (default: the global one). */
  WebSocket?: new (url: string, protocols?: string | string[]) => WebSocket;
  /** Called on every change of {@link Peer.state}. */
  onStateChange?: (state: ConnectionState, peer: Peer) => void;
}

/** Per-call options: an AbortSignal and/or a timeout (ms, sent as the handler's deadline). */
export interface CallOptions {
  signal?: AbortSignal;
  timeout?: number;
}

export interface SendOptions {
  /** Urgency 0 (first) to 7; default 3. */
  priority?: number;
  rate?: RateLimit;
  /** A stream id announced beforehand ({@link Peer.newStreamId}). */
  id?: number;
}


interface Call {
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
  streaming: boolean;
  cancelled: boolean;
  timeout?: number; // ms, sent as the handler's deadline
}


/** Calls made through {@link Peer.with}: the same methods, with an AbortSignal and/or timeout. */
export interface CallScope {
  call(method: string, ...args: unknown[]): Promise<any>;
  stream<T = any>(method: string, ...args: unknown[]): ReceiveStream<T>;
  channel<T = any>(method: string, source: AsyncIterable<unknown> | Iterable<unknown>, ...args: unknown[]): ReceiveStream<T>;
}

/** A connection to a fastrpc server. Make one with {@link connect}. */
export class Peer implements StreamLink, HandlerLink {
  /** "connecting", "open", "reconnecting" (a resumable session between transports) or "closed". */
  state: ConnectionState = "connecting";
  /** The limits the server announced in its HELLO. */
  peerSettings: Settings = { ...DEFAULT_SETTINGS };
  /** Transports this session has had (1 + reconnections). */
  transports = 0;
  /** Resumes that kept the session, and new sessions after a failed resume. */
  resumes = 0;

  private readonly url: string;
  private readonly opts: ConnectOptions;
  private readonly settings: Settings;
  private readonly codec: PayloadCodec;
  private peerCodec: PayloadCodec;
  private readonly WS: new (url: string, protocols?: string | string[]) => WebSocket;
  private ws: WebSocket | null = null;
  private handshaking = true;
  private closedWith: Error | null = null;
  private goaway = false;
  /** The server's first GOAWAY: the connection closes with it once the server's close
   * frame comes (or closeTimeout after the GOAWAY); new work fails with it meanwhile. */
  private goawayErr: ConnectionClosed | null = null;
  private goawayTimer: ReturnType<typeof setTimeout> | null = null;

  private nextId = 1;
  private readonly sched: Scheduler;
  private readonly outStreams = new Map<number, OutStream>();
  private readonly inStreams = new Map<number, InStream>();
  private readonly calls = new Map<number, Call>();
  private readonly handlers: Handlers;
  private readonly unclaimed: InStream[] = [];
  private readonly claims = new Map<number, ReceiveStream<unknown>>();
  private readonly acceptWaiters: Array<(s: InStream) => void> = [];
  private callWaiters: Array<() => void> = [];
  private slotWaiters: Array<() => void> = [];
  private drainWaiters: Array<() => void> = [];
  private connCredit = 0;
  private streamSlots = 0;
  private connRecv: number;
  private connToGrant = 0;
  private freeIn = 0;
  private slotGrants = 0;
  private growth = 0;
  private flushScheduled = false;
  private held = 0; // bytes of unread and partial items (maxConnectionMemory)
  private algorithm = 0; // the compression both HELLOs offer (0: none)
  private compressedIn = 0;
  private compressedOut = 0;
  private drainTimer: ReturnType<typeof setTimeout> | null = null;
  private drainDelay = 1;

  private readonly session: Session;

  // keepalive
  private pingTimer: ReturnType<typeof setInterval> | null = null;
  private pongDeadline = 0;
  private pingCount = 0;

  private handshakeDone: ((err: Error | null) => void) | null = null;

  /** @internal use {@link connect} */
  constructor(url: string, opts: ConnectOptions = {}) {
    this.url = url;
    this.opts = opts;
    this.codec = codecByName(opts.codec ?? "msgpack");
    this.peerCodec = this.codec;
    this.settings = {
      ...DEFAULT_SETTINGS,
      ...(opts.settings ?? {}),
      codec: this.codec.wireId,
      resume: opts.resume === false ? 0 : 1,
      compression: opts.compression === true ? compressionAvailable() : 0,
    };
    validateSettings(this.settings, (r) => new RangeError(r));
    const backlog = opts.maxOutputBacklog;
    if (backlog !== undefined && !(typeof backlog === "number" && backlog >= 0 && Number.isFinite(backlog))) {
      throw new RangeError(`maxOutputBacklog must be a number of bytes >= 0, not ${String(backlog)}`);
    }
    this.connRecv = this.settings.connectionWindow;
    const WS = opts.WebSocket ?? (globalThis as { WebSocket?: typeof WebSocket }).WebSocket;
    if (WS === undefined) {
      throw new TypeError("no WebSocket implementation: pass options.WebSocket (on Node 20, run with --experimental-websocket)");
    }
    this.WS = WS;
    this.handlers = new Handlers(this, this.settings.maxPendingCalls);
    this.sched = new Scheduler(this.streamBufferSize, (s) => this.forgetOut(s));
    this.session = new Session(opts.maxReplayBytes ?? 16 << 20, opts.batchSize ?? 128 << 10);
  }

  // ------------------------------------------------------------------ public API

  /** Call `method` on the server and return its result; a handler's exception rejects with {@link RemoteError}. */
  call(method: string, ...args: unknown[]): Promise<any> {
    return this.request(method, args, {});
  }

  /** `call`, `stream` and `channel` with an AbortSignal and/or a timeout (ms). */
  with(options: CallOptions): CallScope {
    return {
      call: (method, ...args) => this.request(method, args, options),
      stream: (method, ...args) => this.streamCall(method, args, null, options),
      channel: (method, source, ...args) => this.streamCall(method, args, source, options),
    };
  }

  /** Call `method` with the argument list `args` and per-call options. The timeout and
   * the signal cover the wait for a call slot too (the server's max_pending_calls);
   * what is left of the timeout is the handler's deadline. */
  async request(method: string, args: unknown[], options: CallOptions = {}): Promise<any> {
    const { signal, timeout } = options;
    checkTimeout(timeout);
    if (signal?.aborted) throw abortReason(signal);
    this.checkOpen();
    const [payload, raw] = this.encodeArgs(args);
    const t0 = performance.now();
    return new Promise((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | null = null;
      let id = 0; // 0: still waiting for a call slot
      let settled = false;
      const wait: SlotWait = { stopped: false, error: null, wake: null };
      const cleanup = () => {
        settled = true;
        if (timer !== null) clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
      };
      const giveUp = (err: unknown) => {
        if (settled) return;
        cleanup();
        if (id !== 0) this.cancelCall(id);
        else this.stopWaiting(wait, err);
        reject(err);
      };
      const onAbort = () => giveUp(abortReason(signal!));
      const send = () => {
        if (settled) {
          this.callFreed(); // given up meanwhile: the slot goes to the next in line
          return;
        }
        try {
          this.checkOpen();
          const left = timeout === undefined ? undefined : Math.max(0, timeout - Math.floor(performance.now() - t0));
          const cid = this.allocId();
          this.queueRequest(cid, method, payload, raw, 0, left);
          id = cid;
        } catch (e) {
          cleanup();
          this.callFreed();
          reject(e);
          return;
        }
        this.calls.set(id, {
          resolve: (v) => {
            cleanup();
            resolve(v);
          },
          reject: (e) => {
            cleanup();
            reject(e);
          },
          streaming: false,
          cancelled: false,
          timeout,
        });
        this.kick();
      };
      if (timeout !== undefined) timer = setTimeout(() => giveUp(timeoutError(timeout)), timeout);
      signal?.addEventListener("abort", onAbort, { once: true });
      if (this.calls.size < this.peerSettings.maxPendingCalls) send();
      else {
        this.callSlot(wait).then(send, (e) => {
          if (settled) return;
          cleanup();
          reject(e);
        });
      }
    });
  }

  /** A one-way call: nothing comes back. */
  notify(method: string, ...args: unknown[]): void {
    this.checkOpen();
    const [payload, raw] = this.encodeArgs(args);
    const m = F.utf8(method);
    const body = F.concat([F.encodeVarint(m.length), m, payload]);
    this.checkSize("notification", body.length);
    this.queueControl(F.NOTIFY, raw ? F.FLAG_RAW : 0, 0, body);
  }

  /** Call a streaming method: `for await (const x of peer.stream("ticks", 10))`; leaving the loop cancels it. */
  stream<T = any>(method: string, ...args: unknown[]): ReceiveStream<T> {
    return this.streamCall(method, args, null, {});
  }

  /** Open a bidirectional stream: `source`'s items go to the handler (its first argument); what it yields comes back. */
  channel<T = any>(method: string, source: AsyncIterable<unknown> | Iterable<unknown>, ...args: unknown[]): ReceiveStream<T> {
    return this.streamCall(method, args, source, {});
  }

  /** Send `source`'s items as a stream; resolves with the stream id once it is open (the items follow in the background). */
  async sendStream(source: AsyncIterable<unknown> | Iterable<unknown>, options: SendOptions = {}): Promise<number> {
    this.checkOpen();
    const urgency = options.priority ?? DEFAULT_URGENCY;
    if (!(urgency >= 0 && urgency <= 7) || !Number.isInteger(urgency)) throw new RangeError("priority must be 0..7");
    // a bad id is refused before a stream slot is taken
    const checkId = (id: number) => {
      if (!Number.isSafeInteger(id) || id <= 0 || id % 2 !== 1 || this.outStreams.has(id)) throw new RangeError(`stream id ${id} is not free for this side`);
    };
    if (options.id !== undefined) checkId(options.id);
    while (this.streamSlots <= 0) {
      this.checkOpen();
      await new Promise<void>((r) => this.slotWaiters.push(r));
    }
    this.checkOpen();
    let id = options.id;
    if (id === undefined) id = this.allocId();
    else {
      checkId(id); // taken meanwhile?
      if (id >= this.nextId) this.nextId = id + 2;
    }
    this.streamSlots--;
    const s = new OutStream(id, urgency, this.peerSettings.initialStreamWindow, false);
    this.outStreams.set(id, s);
    void this.runSender(s, source, options.rate);
    return id;
  }

  /** Allocate a stream id to announce (e.g. as a call argument) before {@link sendStream} uses it. */
  newStreamId(): number {
    return this.allocId();
  }

  /** The incoming stream `id`, sent by the server (which announced the id, e.g. as a call's result); it may arrive before or after this claim. */
  receiveStream<T = any>(id: number): ReceiveStream<T> {
    const idx = this.unclaimed.findIndex((s) => s.id === id);
    if (idx >= 0) {
      const s = this.unclaimed.splice(idx, 1)[0];
      s.claimed = true;
      return new ReceiveStream<T>(this, s);
    }
    const existing = this.claims.get(id);
    if (existing !== undefined) return existing as ReceiveStream<T>;
    if (id % 2 !== 0) throw new RangeError(`stream id ${id} is not one the server allocates`);
    // Not here yet: a record waits for its OPEN.
    const s = new InStream(id, false, this.settings.initialStreamWindow);
    s.claimed = true;
    const rs = new ReceiveStream<T>(this, s);
    this.claims.set(id, rs as ReceiveStream<unknown>);
    this.pendingClaims.set(id, s);
    return rs;
  }

  private readonly pendingClaims = new Map<number, InStream>();

  /** The next incoming stream nobody claimed with {@link receiveStream}. */
  async acceptStream<T = any>(): Promise<ReceiveStream<T>> {
    const s = this.unclaimed.shift();
    if (s !== undefined) {
      s.claimed = true;
      return new ReceiveStream<T>(this, s);
    }
    this.checkOpen();
    const got = await new Promise<InStream>((resolve, reject) => {
      this.acceptWaiters.push(resolve);
      this.rejectAccept.push(reject);
    });
    got.claimed = true;
    return new ReceiveStream<T>(this, got);
  }
  private rejectAccept: Array<(e: Error) => void> = [];

  /** Register `fn` for calls (and notifications) from the server; an async generator serves streaming calls. */
  register(name: string, fn: Handler): void {
    this.handlers.register(name, fn);
  }

  /** Stop an outgoing stream: the receiver gets StreamAborted. */
  abortStream(id: number, reason = "stream aborted by the sender"): boolean {
    const s = this.outStreams.get(id);
    if (s === undefined || s.ended) return false;
    s.drop();
    this.endOut(s, F.STREAM_ABORT, F.utf8(reason));
    return true;
  }

  /** Close the connection (GOAWAY, then close 1000); everything pending fails with ConnectionClosed. */
  async close(): Promise<void> {
    if (this.state === "closed") return;
    const ws = this.ws;
    if (ws !== null && ws.readyState === 1 && !this.handshaking) {
      this.flushNow();
      ws.send(F.encodeFrame(F.GOAWAY, 0, 0, F.concat([F.encodeVarint(0), F.utf8("client closed")])));
    }
    this.teardown(new ConnectionClosed("connection closed by the client", 1000));
    if (ws !== null) {
      await new Promise<void>((resolve) => {
        if (ws.readyState === 3) return resolve();
        const t = setTimeout(resolve, 2000);
        ws.addEventListener("close", () => {
          clearTimeout(t);
          resolve();
        });
        try {
          ws.close(1000);
        } catch {
          resolve();
        }
      });
    }
  }

  /** Round trip time of a PING (ms). */
  async ping(): Promise<number> {
    this.checkOpen();
    const t0 = performance.now();
    await new Promise<void>((resolve, reject) => {
      this.pongWaiters.push(resolve);
      this.pingFailers.push(reject);
      this.queueControl(F.PING, 0, 0, new Uint8Array(8));
    });
    return performance.now() - t0;
  }
  private pongWaiters: Array<() => void> = [];
  private pingFailers: Array<(e: Error) => void> = [];

  /** Bytes written to the WebSocket and not yet sent. */
  get bufferedAmount(): number {
    return this.ws?.bufferedAmount ?? 0;
  }

  /** Counters for display and tests. */
  stats(): Record<string, number> {
    return {
      sentFrames: this.session.sent,
      receivedFrames: this.session.received,
      replayBytes: this.session.replayBytes,
      connectionCredit: this.connCredit,
      calls: this.calls.size,
      outStreams: this.outStreams.size,
      inStreams: this.inStreams.size,
      transports: this.transports,
      resumes: this.resumes,
      compressedIn: this.compressedIn,
      compressedOut: this.compressedOut,
    };
  }

  // --------------------------------------------------------------- connection

  /** @internal first connection; resolves once the server's HELLO came. */
  async open(): Promise<void> {
    await this.attach(false);
    this.upSince = performance.now();
    this.setState("open");
    this.startKeepalive();
  }

  private setState(s: ConnectionState): void {
    if (this.state === s) return;
    this.state = s;
    this.opts.onStateChange?.(s, this);
  }

  private attach(resuming: boolean): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let ws: WebSocket;
      try {
        ws = new this.WS(this.url);
      } catch (e) {
        reject(e);
        return;
      }
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      this.handshaking = true;
      this.transports++;
      const timer = setTimeout(() => {
        done(new ConnectionClosed(`no handshake from the server within ${this.handshakeTimeout} ms (handshakeTimeout)`));
        this.dropTransport(ws);
      }, this.handshakeTimeout);
      let settled = false;
      const done = (err: Error | null) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.handshakeDone = null;
        if (err === null) resolve();
        else reject(err);
      };
      this.handshakeDone = done;
      ws.onopen = () => {
        if (ws !== this.ws) return;
        const hello = F.encodeFrame(F.HELLO, 0, 0, settingsToWire(this.settings));
        if (resuming && this.session.token !== null) {
          ws.send(F.concat([hello, this.session.resumeFrame()]));
        } else {
          ws.send(hello);
        }
      };
      ws.onmessage = (ev: MessageEvent) => {
        if (ws !== this.ws) return;
        // Our HELLO's maxMessageSize bounds what the server may send in one message: one
        // past it is refused here, before it is decoded or copied (the WebSocket itself
        // has gathered it already: its API has no earlier hook). A string's length in
        // UTF-16 units is at most its size in UTF-8.
        const size = typeof ev.data === "string" ? ev.data.length : (ev.data as ArrayBuffer).byteLength;
        if (size > this.settings.maxMessageSize) {
          const what = typeof ev.data === "string" ? "text message of at least" : "message of";
          this.fail(new ProtocolError(`${what} ${size} bytes exceeds the client's limit of ${this.settings.maxMessageSize} bytes (maxMessageSize)`, "FRAME_TOO_LARGE"));
          return;
        }
        if (typeof ev.data === "string") {
          // A fastrpc server greets a client silent for its json_wait with the seed's
          // JSON welcome (a HELLO delayed on a busy machine): skip it, as the Python
          // client does; any other text is a protocol error.
          if (!settled && ev.data.startsWith('{"category":"welcome"')) return;
          this.fail(new ProtocolError("text message on a binary connection"));
          return;
        }
        try {
          this.receive(new Uint8Array(ev.data as ArrayBuffer));
        } catch (e) {
          this.fail(e);
        }
      };
      ws.onclose = (ev: CloseEvent) => {
        if (ws !== this.ws) return;
        const err = new ConnectionClosed(`connection closed (${ev.code}${ev.reason ? ": " + ev.reason : ""})`, ev.code, ev.reason);
        if (!settled) {
          done(err);
          this.ws = null;
          return;
        }
        this.transportLost(err);
      };
      ws.onerror = () => {
        // Usually a close event follows; Node 20's WebSocket fires only this one when
        // the connection is refused, so the error alone fails the transport.
        if (ws !== this.ws) return;
        const err = new ConnectionClosed(`WebSocket error on ${this.url}`, 1006);
        if (!settled) {
          done(err);
          this.ws = null;
          this.dropTransport(ws);
          return;
        }
        this.transportLost(err);
      };
    });
  }

  private get handshakeTimeout(): number {
    return this.opts.handshakeTimeout ?? 10_000;
  }

  private dropTransport(ws: WebSocket): void {
    try {
      ws.close();
    } catch {
      /* already closing */
    }
  }

  /** The transport dropped: resume on a new one, or close for good. */
  private transportLost(err: Error): void {
    const ws = this.ws;
    this.ws = null;
    if (ws !== null) this.dropTransport(ws);
    if (this.state === "closed") return;
    if (this.goawayErr !== null) {
      // the server said goodbye: its close frame (or a drop) ends the connection
      this.teardown(this.goawayErr);
      return;
    }
    const policy = this.opts.reconnect;
    const broken = this.session.broken;
    if (this.goaway || !this.session.resumable || policy === false) {
      const why = broken !== "" ? `${err.message}; session not resumable: ${broken}` : err.message;
      this.teardown(err instanceof ConnectionClosed ? new ConnectionClosed(why, err.code, err.reason) : err);
      return;
    }
    this.setState("reconnecting");
    void this.reconnect(typeof policy === "object" ? policy : {});
  }

  private async reconnect(policy: RetryOptions): Promise<void> {
    const initial = policy.initialDelay ?? 1000;
    const max = policy.maxDelay ?? 16_000;
    const mult = policy.multiplier ?? 2;
    const jitter = policy.jitter ?? 0.2;
    const attempts = policy.maxAttempts ?? Infinity;
    // A drop within RETRY_STABLE of the last (re)connection counts on from the last
    // attempts (the backoff grows, maxAttempts counts it): a server or proxy that drops
    // every connection right after its handshake meets the backoff, not a hot loop.
    if (this.upSince === null || performance.now() - this.upSince >= RETRY_STABLE) this.failures = 0;
    this.upSince = null;
    for (;;) {
      const attempt = ++this.failures;
      if (attempt > attempts) break;
      if (attempt > 1) {
        const delay = Math.min(max, initial * mult ** (attempt - 2));
        await sleep(delay * (1 + jitter * (2 * Math.random() - 1)));
      }
      if (this.state === "closed") return;
      try {
        await this.attach(true);
      } catch (e) {
        if (e instanceof ResumeFailed || (this.state as ConnectionState) === "closed") return;
        continue;
      }
      this.upSince = performance.now();
      this.resumes++;
      this.setState("open");
      return;
    }
    this.teardown(new ConnectionClosed(`could not reconnect to ${this.url} after ${attempts} attempts (reconnect.maxAttempts)`));
  }

  /** Reconnect attempts since the last connection that stayed up (RETRY_STABLE), and when the last one came up. */
  private failures = 0;
  private upSince: number | null = null;

  // ------------------------------------------------------------------ receiving

  private receive(data: Uint8Array): void {
    const frames = F.decodeMessage(data, this.settings.maxFrameSize);
    let start = 0;
    if (this.handshaking) start = this.handshake(frames);
    const ackDue = this.session.arrived(frames.length - start, data.length);
    for (let i = start; i < frames.length; i++) {
      if (this.state === "closed") return;
      this.dispatch(frames[i]);
      // one message of many calls answered at once (unknown methods, say): stop there
      if (this.overBacklog()) throw this.backlogError();
    }
    if (ackDue) this.queueControl(F.ACK, 0, 0, F.encodeVarint(this.session.received));
    if (this.slotGrants > 0) {
      this.queueControl(F.STREAMS, 0, 0, F.encodeVarint(this.slotGrants));
      this.slotGrants = 0;
    }
    this.wakeDrain(); // the server reads: the socket may have drained too
    this.kick();
  }

  /** The server's handshake (HELLO, RESUME_OK); returns how many frames it took. */
  private handshake(frames: Frame[]): number {
    const hello = frames[0];
    if (hello.type !== F.HELLO) throw new ProtocolError("the first frame is not HELLO");
    const first = this.transports === 1 || this.session.token === null;
    const theirs = settingsFromWire(hello.payload);
    let used = 1;
    const ok = frames.length > 1 && frames[1].type === F.RESUME_OK ? frames[1] : null;
    if (ok !== null) used = 2;
    if (first) {
      this.startSession(theirs, ok);
    } else if (ok === null || ok.flags & F.FLAG_NEW) {
      // The server did not keep our session: what was in flight is lost.
      const err = new ResumeFailed(
        ok === null ? "the server does not resume sessions" : "the server did not resume the session (expired, or the server restarted)",
      );
      this.failInFlight(err);
      this.startSession(theirs, ok);
    } else {
      const [token, pos] = sessionFrame(ok);
      this.session.checkResume(pos);
      this.session.token = token;
      this.handshaking = false;
      this.handshakeDone?.(null);
      const ws = this.ws!;
      for (const msg of this.session.replayFrom(pos)) ws.send(msg);
      for (const s of this.outStreams.values()) s.notify();
      return used;
    }
    this.handshaking = false;
    this.handshakeDone?.(null);
    return used;
  }

  private startSession(theirs: Settings, ok: Frame | null): void {
    this.peerSettings = theirs;
    this.peerCodec = codecById(theirs.codec);
    this.algorithm = this.settings.compression & theirs.compression & ZLIB;
    this.connCredit = theirs.connectionWindow;
    this.streamSlots = theirs.maxStreams;
    this.connRecv = this.settings.connectionWindow;
    this.connToGrant = 0;
    this.session.start(this.settings.resume === 1 && theirs.resume === 1 && ok !== null, ok !== null ? sessionFrame(ok)[0] : null);
    this.wakeAll();
  }

  private dispatch(f: Frame): void {
    const id = typeof f.id === "number" ? f.id : Number.MAX_SAFE_INTEGER;
    switch (f.type) {
      case F.STREAM_DATA:
        return this.onData(id, f.flags, f.payload);
      case F.CREDIT:
        return this.onCredit(id, f.payload);
      case F.RESPONSE:
        return this.onResponse(id, f);
      case F.ERROR:
        return this.onError(id, f.payload);
      case F.STREAM_END:
      case F.STREAM_ERROR:
      case F.STREAM_ABORT:
        return this.onEnd(id, f);
      case F.STREAM_CLOSE: {
        const s = this.outStreams.get(id);
        if (s !== undefined) {
          s.closedByPeer = true;
          s.drop();
          s.ended = true;
          this.forgetOut(s);
          s.notify();
        }
        return;
      }
      case F.STREAMS: {
        const [n] = F.decodeVarint(f.payload, 0);
        this.streamSlots += Number(n);
        this.wakeList("slotWaiters");
        return;
      }
      case F.REQUEST:
        return this.handlers.onRequest(id, f);
      case F.NOTIFY:
        return this.handlers.onNotify(f);
      case F.CANCEL:
        return this.handlers.onCancel(id);
      case F.PING:
        if (f.payload.length > 64) throw new ProtocolError("PING payload over 64 bytes");
        if (++this.pongsDue > MAX_PONGS_DUE) {
          throw new ProtocolError(`the server sent ${this.pongsDue} PINGs whose PONGs wait for it to read (at most ${MAX_PONGS_DUE})`, "LIMIT_EXCEEDED");
        }
        this.queueControl(F.PONG, 0, 0, f.payload.slice());
        return;
      case F.PONG: {
        this.pongDeadline = 0;
        const w = this.pongWaiters;
        this.pongWaiters = [];
        this.pingFailers = [];
        for (const r of w) r();
        return;
      }
      case F.GOAWAY: {
        const [code, p] = F.decodeVarint(f.payload, 0);
        const reason = F.fromUtf8(f.payload.subarray(p));
        this.goaway = true;
        if (this.goawayErr !== null) return; // the first one counts
        // The connection closes with the server's close frame, not here: the server
        // sends what it queued before closing (stream items, ends, answers) after its
        // GOAWAY, in the same message and in the ones that follow, and the Python client
        // reads them all. A server that never closes is closed after closeTimeout.
        this.goawayErr = new ConnectionClosed(`the server sent GOAWAY (code ${code}${reason ? ": " + reason : ""})`, goawayCloseCode(code), reason);
        const err = this.goawayErr;
        this.goawayTimer = setTimeout(() => {
          this.goawayTimer = null;
          this.teardown(err);
        }, this.opts.closeTimeout ?? 10_000);
        (this.goawayTimer as { unref?: () => void }).unref?.();
        return;
      }
      case F.ACK: {
        if (!this.session.enabled) throw new ProtocolError("ACK without resumption");
        const [pos] = F.decodeVarint(f.payload, 0);
        this.session.ack(Number(pos));
        return;
      }
      case F.HELLO:
        throw new ProtocolError("a second HELLO");
      case F.RESUME:
      case F.RESUME_OK:
        throw new ProtocolError("RESUME or RESUME_OK outside a handshake");
      default:
        if (f.type >= F.FIRST_EXTENSION) return; // optional extension frame: skipped
        throw new ProtocolError(`unknown frame type 0x${f.type.toString(16)}`);
    }
  }

  private onData(id: number, flags: number, payload: Uint8Array): void {
    const charge = payload.length + FRAME_CHARGE;
    if (charge > this.connRecv) throw new ProtocolError("connection flow-control window exceeded", "FLOW_CONTROL_ERROR");
    this.connRecv -= charge;
    this.connToGrant += charge;
    if (this.connToGrant * 4 >= this.settings.connectionWindow) {
      this.connRecv += this.connToGrant;
      this.queueControl(F.CREDIT, 0, 0, F.encodeVarint(this.connToGrant));
      this.connToGrant = 0;
    }
    let s = this.inStreams.get(id);
    if (flags & F.FLAG_OPEN) {
      const arrived = this.arrive(id, s);
      if (arrived === null) return;
      s = arrived;
    } else if (s === undefined || !s.seenOpen) {
      return; // in flight when we closed the stream: dropped
    }
    if (charge > s.peerCredit) throw new ProtocolError("stream flow-control window exceeded", "FLOW_CONTROL_ERROR");
    s.peerCredit -= charge;
    if (s.state !== IN_OPEN) {
      if (s.cancelled) return this.consumed(s, charge, false);
      throw new ProtocolError("data after the end of a stream", "STREAM_STATE_ERROR");
    }
    if (s.cancelled) return this.consumed(s, charge, false);
    const raw = (flags & F.FLAG_RAW) !== 0;
    if (flags & F.FLAG_MORE || s.partial !== null) {
      if (s.partial === null) {
        s.partial = [];
        s.partialSize = 0;
        s.partialFlags = flags;
      }
      if (s.partialSize + payload.length > this.settings.maxItemSize) throw new ProtocolError("item larger than max_item_size", "LIMIT_EXCEEDED");
      s.partial.push(payload.slice());
      s.partialSize += payload.length;
      this.charge(payload.length, "partial items");
      if (flags & F.FLAG_MORE) {
        this.consumed(s, charge, false); // fragments are credited back at once
        return;
      }
      const whole = F.concat(s.partial);
      const all = flags | s.partialFlags;
      s.partial = null;
      this.hold(s, whole, (all & F.FLAG_RAW) !== 0, (all & F.FLAG_COMPRESSED) !== 0, charge); // charged as fragments
    } else {
      this.charge(payload.length, "unread items");
      this.hold(s, payload, raw, (flags & F.FLAG_COMPRESSED) !== 0, charge);
    }
    s.notify();
  }

  /** Keep a received item until it is read. A compressed one is held as it came (its
   * size as received counts against maxConnectionMemory) and inflated only when its
   * reader comes to it ({@link inflateItem}): the windows bound what a stream holds
   * whatever the ratio, and at most one item a stream is being inflated at a time. One
   * that does not inflate (corrupt, or past maxItemSize) fails its stream then, not the
   * connection. */
  private hold(s: InStream, payload: Uint8Array, raw: boolean, compressed: boolean, charge: number): void {
    if (compressed) {
      if (this.algorithm === 0) throw new ProtocolError("compressed frame without negotiated compression", "COMPRESSION_ERROR");
      this.compressedIn++;
    }
    // An item is a view into the message it came in, and a view keeps the whole message
    // alive while the item is held: a 600-byte item beside a 1 MiB frame the client
    // skips would pin 1 MiB and count 600 bytes against maxConnectionMemory. One that is
    // less than half of its message is copied out, so what held items keep alive stays
    // within twice what they count.
    if (payload.byteLength * 2 < payload.buffer.byteLength) payload = payload.slice();
    s.items.push({ payload, raw, charge, size: payload.length, compressed, pending: null });
  }

  /** @internal the reader came to a compressed item: inflate it, at most maxItemSize. */
  inflateItem(it: HeldItem): Promise<void> {
    if (it.pending === null) {
      it.pending = inflate(it.payload, this.settings.maxItemSize).then(
        (out) => {
          it.payload = out; // the reader takes it next: no longer counted as held
          it.compressed = false;
          it.pending = null;
        },
        (e) => {
          it.compressed = false;
          it.pending = null;
          it.error = e instanceof ProtocolError ? e : new ProtocolError(`corrupt compressed payload: ${errorMessage(e)}`, "COMPRESSION_ERROR");
        },
      );
    }
    return it.pending;
  }

  /** `n` more bytes held for the application (unread items, partial items); past
   * `maxConnectionMemory` the server is pushing more than we accept to hold. */
  private charge(n: number, what: string): void {
    this.held += n;
    const limit = this.opts.maxConnectionMemory ?? 32 << 20;
    if (this.held > limit) {
      throw new ProtocolError(`the server made this connection hold ${this.held} bytes (${what}), over maxConnectionMemory (${limit})`, "LIMIT_EXCEEDED");
    }
  }

  /** A frame with OPEN for `id`; returns its record, or null when it is dropped. */
  private arrive(id: number, s: InStream | undefined, ended = false): InStream | null {
    if (s !== undefined) {
      if (s.seenOpen) throw new ProtocolError("stream opened twice", "STREAM_STATE_ERROR");
      s.seenOpen = true;
      return s;
    }
    const claimed = this.pendingClaims.get(id);
    if (claimed !== undefined) {
      this.pendingClaims.delete(id);
      this.claims.delete(id);
      if (claimed.cancelled) {
        // its reader closed it before it came: close it at once, give its slot back
        if (this.freeIn >= this.settings.maxStreams) throw new ProtocolError("too many concurrent streams", "LIMIT_EXCEEDED");
        if (!ended) this.queueControl(F.STREAM_CLOSE, 0, id, new Uint8Array(0));
        this.slotGrants++;
        this.kickSlots();
        return null;
      }
      s = claimed;
    } else if (id > 0 && id % 2 === 0) {
      s = new InStream(id, false, this.settings.initialStreamWindow);
    } else if (this.calls.has(id)) {
      return null; // a call of ours whose results we stopped reading
    } else {
      throw new ProtocolError("stream id of the wrong parity", "STREAM_STATE_ERROR");
    }
    if (this.freeIn >= this.settings.maxStreams) throw new ProtocolError("too many concurrent streams", "LIMIT_EXCEEDED");
    this.freeIn++;
    s.seenOpen = true;
    this.inStreams.set(id, s);
    if (!s.claimed) {
      const w = this.acceptWaiters.shift();
      this.rejectAccept.shift();
      if (w !== undefined) w(s);
      else this.unclaimed.push(s);
    }
    return s;
  }

  private onEnd(id: number, f: Frame): void {
    let s = this.inStreams.get(id);
    if (f.flags & F.FLAG_OPEN) {
      const arrived = this.arrive(id, s, true);
      if (arrived === null) return this.finishCall(id);
      s = arrived;
    } else if (s === undefined || !s.seenOpen) {
      return this.finishCall(id);
    }
    if (s.cancelled) {
      this.releaseIn(s);
      return this.finishCall(id);
    }
    if (s.state !== IN_OPEN) throw new ProtocolError("stream ended twice", "STREAM_STATE_ERROR");
    if (s.partial !== null) {
      this.held -= s.partialSize;
      s.partial = null;
      if (f.type === F.STREAM_END) throw new ProtocolError("stream ended inside an item", "STREAM_STATE_ERROR");
    }
    if (f.type === F.STREAM_END) {
      s.state = IN_ENDED;
    } else if (f.type === F.STREAM_ERROR) {
      const e = F.decodeError(f.payload);
      this.chargeError(s, f.payload.length);
      s.state = IN_FAILED;
      s.error = new RemoteStreamError(e.type, e.message, e.code, e.traceback);
    } else {
      this.chargeError(s, f.payload.length);
      s.state = IN_FAILED;
      s.error = new StreamAborted(F.fromUtf8(f.payload) || "stream aborted by the sender");
    }
    if (s.bound) this.finishCall(id);
    s.notify();
  }

  /** The error (STREAM_ERROR / STREAM_ABORT payload) of an ended stream is held until
   * its reader takes it: it counts against maxConnectionMemory until the stream is released. */
  private chargeError(s: InStream, n: number): void {
    s.errorSize += n;
    this.charge(n, "errors of ended streams not yet read");
  }

  private onCredit(id: number, payload: Uint8Array): void {
    const [v] = F.decodeVarint(payload, 0);
    const n = Number(v);
    if (id === 0) {
      this.connCredit += n;
      for (const s of this.outStreams.values()) s.notify();
      return;
    }
    const s = this.outStreams.get(id);
    if (s !== undefined) {
      s.credit += n;
      s.notify();
    }
  }

  private onResponse(id: number, f: Frame): void {
    const c = this.calls.get(id);
    if (c === undefined || c.streaming) throw new ProtocolError("response to an unknown call", "STREAM_STATE_ERROR");
    this.calls.delete(id);
    this.callFreed();
    if (c.cancelled) return;
    let value: unknown;
    try {
      value = decodeValue(this.peerCodec, f.payload, (f.flags & F.FLAG_RAW) !== 0);
    } catch (e) {
      c.reject(e);
      return;
    }
    c.resolve(value);
  }

  private onError(id: number, payload: Uint8Array): void {
    const c = this.calls.get(id);
    if (c === undefined) throw new ProtocolError("error for an unknown call", "STREAM_STATE_ERROR");
    const e = F.decodeError(payload);
    if (c.streaming) {
      const s = this.inStreams.get(id);
      if (s !== undefined) {
        if (s.cancelled) this.releaseIn(s);
        else if (s.state === IN_OPEN) {
          s.state = IN_FAILED;
          s.error = new RemoteError(e.type, e.message, e.code, e.traceback);
          s.notify();
        }
      }
      const out = this.outStreams.get(id);
      if (out !== undefined && !out.ended) {
        out.drop();
        out.ended = true;
        this.forgetOut(out);
        out.notify();
      }
      this.finishCall(id);
      return;
    }
    this.calls.delete(id);
    this.callFreed();
    if (c.cancelled) return;
    // The handler's deadline (our timeout) passed there before our timer fired here:
    // the same TimeoutError either way.
    if (c.timeout !== undefined && e.type === "TimeoutError") c.reject(timeoutError(c.timeout));
    else c.reject(new RemoteError(e.type, e.message, e.code, e.traceback));
  }

  private finishCall(id: number): void {
    const c = this.calls.get(id);
    if (c !== undefined && c.streaming) {
      this.calls.delete(id);
      this.callFreed();
    }
  }

  // --------------------------------------------------- HandlerLink (handlers.ts)

  /** @internal */
  sendControl(type: number, flags: number, id: number, payload: Uint8Array): void {
    if (this.state !== "closed") this.queueControl(type, flags, id, payload);
  }

  /** @internal */
  decodeArgs(payload: Uint8Array, raw: boolean): unknown[] {
    if (raw) return [payload.slice()];
    if (payload.length === 0) return [];
    const v = this.peerCodec.decode(payload);
    return Array.isArray(v) ? v : [v];
  }

  /** @internal */
  encodeResult(value: unknown): [Uint8Array, boolean] {
    return encodeValue(this.codec, value);
  }

  /** @internal */
  responseLimit(): number {
    return this.peerSettings.maxFrameSize;
  }

  /** @internal the result stream of the server's streaming call `id` */
  openResponse(id: number): OutStream {
    const s = new OutStream(id, DEFAULT_URGENCY, this.peerSettings.initialStreamWindow, true);
    this.outStreams.set(id, s);
    return s;
  }

  /** @internal */
  sendItems(s: OutStream, source: AsyncIterable<unknown> | Iterable<unknown>): Promise<void> {
    return this.runSender(s, source, undefined);
  }

  /** @internal */
  failStream(s: OutStream, e: unknown): void {
    this.endOut(s, F.STREAM_ERROR, F.encodeError(errorName(e), errorMessage(e)));
  }

  /** @internal stop an outgoing stream without a word (its call was answered otherwise) */
  abandon(s: OutStream): void {
    if (s.ended) return;
    s.drop();
    s.ended = true;
    this.forgetOut(s);
    s.notify();
  }

  // ------------------------------------------------------------ our calls

  private encodeArgs(args: unknown[]): [Uint8Array, boolean] {
    if (args.length === 1 && args[0] instanceof Uint8Array) return [args[0], true];
    return [this.codec.encode(args), false];
  }

  private checkSize(what: string, n: number): void {
    if (n > this.peerSettings.maxFrameSize) {
      throw new PayloadTooLarge(`${what} of ${n} bytes exceeds the server's frame limit of ${this.peerSettings.maxFrameSize} bytes (max_frame_size); use a stream`);
    }
  }

  private queueRequest(id: number, method: string, payload: Uint8Array, raw: boolean, flags: number, timeout: number | undefined): void {
    const m = F.utf8(method);
    const parts = [F.encodeVarint(m.length), m, payload];
    flags |= raw ? F.FLAG_RAW : 0;
    if (timeout !== undefined) {
      flags |= F.FLAG_DEADLINE;
      parts.unshift(F.encodeVarint(Math.max(0, Math.floor(timeout))));
    }
    const body = F.concat(parts);
    this.checkSize("request", body.length);
    this.queueControl(F.REQUEST, flags, id, body);
  }

  /** Wait until a call slot is free; {@link stopWaiting} ends the wait early. */
  private async callSlot(wait: SlotWait): Promise<void> {
    for (;;) {
      if (wait.stopped) throw wait.error;
      this.checkOpen();
      if (this.calls.size < this.peerSettings.maxPendingCalls) return;
      await new Promise<void>((r) => {
        wait.wake = r;
        this.callWaiters.push(r);
      });
      wait.wake = null;
    }
  }

  /** A call waiting in {@link callSlot} gave up (aborted, timed out, its stream closed):
   * its wait rejects with `err`; a turn it was given goes to the next in line. */
  private stopWaiting(wait: SlotWait, err: unknown): void {
    if (wait.stopped) return;
    wait.stopped = true;
    wait.error = err;
    const w = wait.wake;
    if (w === null) return;
    wait.wake = null;
    const i = this.callWaiters.indexOf(w);
    if (i >= 0) this.callWaiters.splice(i, 1);
    else this.callFreed(); // woken already: pass the turn on
    w();
  }

  private callFreed(): void {
    const w = this.callWaiters.shift();
    if (w !== undefined) w();
  }

  /** We gave up on call `id`: CANCEL; its slot stays taken until the server's final frame. */
  private cancelCall(id: number): void {
    const c = this.calls.get(id);
    if (c === undefined || c.cancelled) return;
    c.cancelled = true;
    const s = this.inStreams.get(id);
    if (s !== undefined) {
      s.cancelled = true;
      this.dropHeld(s);
      if (s.state !== IN_OPEN) this.releaseIn(s);
    }
    const out = this.outStreams.get(id);
    if (out !== undefined && !out.ended) {
      out.drop();
      this.endOut(out, F.STREAM_ABORT, F.utf8("call cancelled"));
    }
    if (this.state !== "closed") this.queueControl(F.CANCEL, 0, id, new Uint8Array(0));
  }

  private streamCall<T>(
    method: string,
    args: unknown[],
    source: AsyncIterable<unknown> | Iterable<unknown> | null,
    options: CallOptions,
  ): ReceiveStream<T> {
    const { signal, timeout } = options;
    checkTimeout(timeout);
    this.checkOpen();
    const [payload, raw] = this.encodeArgs(args);
    const id = this.allocId();
    const s = new InStream(id, true, this.settings.initialStreamWindow);
    s.claimed = true;
    this.inStreams.set(id, s);
    const rs = new ReceiveStream<T>(this, s);
    const t0 = performance.now();
    const wait: SlotWait = { stopped: false, error: null, wake: null };
    let started = false;
    const fail = (err: unknown) => {
      s.state = IN_FAILED;
      s.error = err as Error;
      s.notify();
    };
    // The timeout and the signal are armed before the wait for a call slot: they end
    // the wait too.
    const giveUp = (err: unknown) => {
      if (s.state !== IN_OPEN || s.cancelled) return;
      if (started) this.cancelCall(id);
      else this.stopWaiting(wait, err);
      fail(err);
    };
    if (timeout !== undefined) {
      const t = setTimeout(() => giveUp(timeoutError(timeout)), timeout);
      this.onStreamDone(s, () => clearTimeout(t));
    }
    if (signal !== undefined) {
      const onAbort = () => giveUp(abortReason(signal));
      if (signal.aborted) onAbort();
      else {
        signal.addEventListener("abort", onAbort, { once: true });
        this.onStreamDone(s, () => signal.removeEventListener("abort", onAbort));
      }
    }
    const start = (): void => {
      if (wait.stopped || s.state !== IN_OPEN || this.inStreams.get(id) !== s) {
        this.callFreed(); // given up meanwhile: the slot goes to the next in line
        return;
      }
      try {
        this.checkOpen();
        const left = timeout === undefined ? undefined : Math.max(0, timeout - Math.floor(performance.now() - t0));
        this.queueRequest(id, method, payload, raw, F.FLAG_STREAM | (source !== null ? F.FLAG_CHANNEL : 0), left);
      } catch (e) {
        this.callFreed();
        fail(e);
        return;
      }
      started = true;
      this.waitingCalls.delete(s);
      this.calls.set(id, { resolve: () => undefined, reject: () => undefined, streaming: true, cancelled: false });
      if (source !== null) {
        const out = new OutStream(id, DEFAULT_URGENCY, this.peerSettings.initialStreamWindow, true);
        this.outStreams.set(id, out);
        void this.runSender(out, source, undefined);
      }
    };
    if (s.state !== IN_OPEN) return rs; // aborted already
    if (this.calls.size < this.peerSettings.maxPendingCalls) start();
    else {
      this.waitingCalls.set(s, wait);
      this.callSlot(wait).then(start, (e) => {
        this.waitingCalls.delete(s);
        if (s.state === IN_OPEN && this.inStreams.get(id) === s) fail(e);
      });
    }
    return rs;
  }

  /** Streaming calls waiting for a call slot, by their result stream. */
  private readonly waitingCalls = new Map<InStream, SlotWait>();

  private readonly doneHooks = new Map<InStream, Array<() => void>>();
  private onStreamDone(s: InStream, fn: () => void): void {
    const list = this.doneHooks.get(s);
    if (list === undefined) this.doneHooks.set(s, [fn]);
    else list.push(fn);
  }

  // ------------------------------------------------------- StreamLink (readers)

  /** @internal */
  readItem(s: InStream): unknown {
    const it = s.take();
    this.held -= it.size;
    this.consumed(s, it.charge, true);
    return decodeValue(this.peerCodec, it.payload, it.raw);
  }

  /** Give back `charge` bytes of `s`'s credit (in batches of a quarter window); grow the window of a stream read faster than it refills. */
  private consumed(s: InStream, charge: number, byReader: boolean): void {
    s.consumed += charge;
    if (s.consumed * 4 < s.windowSize) return;
    let grant = s.consumed;
    s.consumed = 0;
    if (byReader && s.windowSize < MAX_WINDOW && s.peerCredit * 4 < s.windowSize) {
      const extra = Math.min(s.windowSize, MAX_WINDOW - s.windowSize, MAX_GROWTH - this.growth);
      if (extra > 0) {
        this.growth += extra;
        s.windowSize += extra;
        grant += extra;
      }
    }
    s.peerCredit += grant;
    this.queueControl(F.CREDIT, 0, s.id, F.encodeVarint(grant));
  }

  /** @internal */
  releaseStream(s: InStream): void {
    this.releaseIn(s);
  }

  /** @internal the reader stopped early */
  closeStream(s: InStream): void {
    if (s.bound && this.calls.has(s.id)) {
      this.cancelCall(s.id);
      return;
    }
    const wait = this.waitingCalls.get(s);
    if (wait !== undefined) {
      // a streaming call still waiting for a call slot: it is never sent
      this.waitingCalls.delete(s);
      this.stopWaiting(wait, new ConnectionClosed("the stream was closed before its call was sent"));
    }
    if (!s.seenOpen && this.pendingClaims.get(s.id) === s) {
      // claimed with receiveStream() and not here yet: when it comes, it is closed
      // (STREAM_CLOSE, its slot given back, its data dropped)
      s.cancelled = true;
      this.claims.delete(s.id);
      return;
    }
    this.dropHeld(s);
    if (s.state === IN_OPEN && s.seenOpen && this.state !== "closed") this.queueControl(F.STREAM_CLOSE, 0, s.id, new Uint8Array(0));
    this.releaseIn(s);
  }

  /** @internal */
  closedError(): Error | null {
    return this.closedWith;
  }

  private dropHeld(s: InStream): void {
    for (let i = s.head; i < s.items.length; i++) this.held -= s.items[i].size;
    if (s.partial !== null) this.held -= s.partialSize;
    s.items = [];
    s.head = 0;
    s.partial = null;
  }

  private releaseIn(s: InStream): void {
    const hooks = this.doneHooks.get(s);
    if (hooks !== undefined) {
      this.doneHooks.delete(s);
      for (const h of hooks) h();
    }
    this.held -= s.errorSize;
    s.errorSize = 0;
    if (this.inStreams.get(s.id) !== s) return;
    this.inStreams.delete(s.id);
    this.growth -= s.windowSize - this.settings.initialStreamWindow;
    if (!s.bound && s.seenOpen) {
      this.freeIn--;
      this.slotGrants++;
      this.kickSlots();
    }
  }

  private kickSlots(): void {
    if (this.slotGrants > 0 && !this.flushScheduled) this.kick();
  }

  // ------------------------------------------------------------- sending

  private async runSender(s: OutStream, source: AsyncIterable<unknown> | Iterable<unknown>, rate: RateLimit | undefined): Promise<void> {
    let it: AsyncIterator<unknown> | Iterator<unknown> | null = null;
    const bucket = rate !== undefined ? new Bucket(rate) : null;
    try {
      const sync = !isAsyncIterable(source);
      it = toAsyncIterator(source);
      const limit = this.peerSettings.maxItemSize;
      let step = it.next();
      for (;;) {
        // a sync source is not awaited: its items queue within one turn
        const r = sync ? (step as IteratorResult<unknown>) : await step;
        if (r.done) break;
        if (s.ended) break;
        let [payload, raw] = encodeValue(this.codec, r.value);
        if (payload.length > limit) {
          // Refused before a byte leaves (the server would close the whole connection
          // for it), as the Python client does: thrown into the source at its yield (a
          // generator may catch it and go on); uncaught, it ends this stream only
          // (STREAM_ERROR).
          const err = new PayloadTooLarge(
            `stream item of ${payload.length} bytes exceeds the receiver's max_item_size of ${limit} bytes ` +
              "(raise max_item_size on the receiving side, or send smaller items)",
          );
          if (typeof it.throw !== "function") throw err;
          step = it.throw(err);
          continue;
        }
        let flags = raw ? F.FLAG_RAW : 0;
        if (bucket !== null) {
          const wait = bucket.delay(bucket.perBytes ? payload.length : 1);
          if (wait > 0) await sleep(wait);
        }
        if (this.algorithm !== 0 && payload.length >= (this.opts.compressionThreshold ?? 1024)) {
          const packed = await deflate(payload);
          if (packed.length < payload.length) {
            payload = packed;
            flags |= F.FLAG_COMPRESSED;
            this.compressedOut++;
          }
        }
        if (!this.pushNow(s, payload, flags)) await this.pushItem(s, payload, flags);
        if (s.ended) break;
        step = it.next();
      }
      if (!s.ended) this.endOut(s, F.STREAM_END, new Uint8Array(0));
    } catch (e) {
      if (!s.ended && this.closedWith === null) this.endOut(s, F.STREAM_ERROR, F.encodeError(errorName(e), errorMessage(e)));
    } finally {
      if (s.ended && it !== null && typeof it.return === "function") {
        // the receiver closed or the call ended first: stop the source
        try {
          await it.return();
        } catch {
          /* its cleanup failed: nothing to tell */
        }
      }
    }
  }

  /** Queue a whole item at once when credit and buffers allow (no await); false: use pushItem. */
  private pushNow(s: OutStream, payload: Uint8Array, flags: number): boolean {
    const charge = payload.length + FRAME_CHARGE;
    if (
      !this.canWrite(s) ||
      charge > s.credit ||
      charge > this.connCredit ||
      payload.length > this.frameLimit()
    ) {
      return false;
    }
    s.credit -= charge;
    this.connCredit -= charge;
    s.push({ type: F.STREAM_DATA, flags, payload });
    this.ready(s);
    return true;
  }

  private async pushItem(s: OutStream, payload: Uint8Array, flags: number): Promise<void> {
    let offset = 0;
    const total = payload.length;
    do {
      if (!this.canWrite(s)) await this.writable(s);
      if (s.ended) return;
      const room = Math.min(s.credit, this.connCredit) - FRAME_CHARGE;
      const n = Math.min(total - offset, room, this.frameLimit());
      const more = offset + n < total;
      const chunk = offset === 0 && !more ? payload : payload.subarray(offset, offset + n);
      s.credit -= n + FRAME_CHARGE;
      this.connCredit -= n + FRAME_CHARGE;
      s.push({ type: F.STREAM_DATA, flags: flags | (more ? F.FLAG_MORE : 0), payload: chunk });
      this.ready(s);
      offset += n;
    } while (offset < total);
  }

  /** The largest new stream frame: the server's frame limit, at most half its message
   * limit, and smaller on a flaky link ({@link Session.cap}). */
  private frameLimit(): number {
    // not `>> 1`: a limit of 2^31 or more (a server may announce up to 2^62) is no int32
    return Math.min(this.peerSettings.maxFrameSize, Math.floor(this.peerSettings.maxMessageSize / 2), this.session.cap);
  }

  private canWrite(s: OutStream): boolean {
    return (
      !s.ended &&
      this.closedWith === null &&
      this.state === "open" &&
      s.credit > FRAME_CHARGE &&
      this.connCredit > FRAME_CHARGE &&
      s.queued < this.streamBufferSize &&
      (this.ws === null || this.ws.bufferedAmount <= this.maxBufferedAmount)
    );
  }

  private async writable(s: OutStream): Promise<void> {
    for (;;) {
      if (this.closedWith !== null) throw this.closedWith;
      if (s.ended) return;
      const buffered = this.ws !== null ? this.ws.bufferedAmount : 0;
      if (
        s.credit > FRAME_CHARGE &&
        this.connCredit > FRAME_CHARGE &&
        s.queued < this.streamBufferSize &&
        buffered <= this.maxBufferedAmount &&
        this.state === "open"
      ) {
        return;
      }
      if (buffered > this.maxBufferedAmount) {
        await new Promise<void>((r) => {
          this.drainWaiters.push(r);
          this.armDrain();
        });
      } else {
        await new Promise<void>((r) => {
          s.wake = r;
        });
      }
    }
  }

  private get streamBufferSize(): number {
    return this.opts.streamBufferSize ?? 64 << 10;
  }

  private get maxBufferedAmount(): number {
    return this.opts.maxBufferedAmount ?? 1 << 20;
  }

  /** Wake senders once the socket drained. A browser WebSocket has no drain event:
   * every incoming message (the server reading and answering) re-checks, and a timer
   * backing off from 1 ms to 50 ms covers a silent server. */
  private armDrain(): void {
    if (this.drainTimer !== null) return;
    this.drainTimer = setTimeout(() => {
      this.drainTimer = null;
      this.drainDelay = Math.min(this.drainDelay * 2, 50);
      this.wakeDrain();
    }, this.drainDelay);
  }

  private wakeDrain(): void {
    if (this.drainWaiters.length === 0 && !this.flushBlocked) return;
    const buffered = this.ws?.bufferedAmount ?? 0;
    if (buffered > this.maxBufferedAmount) {
      this.armDrain();
      return;
    }
    this.drainDelay = 1;
    if (this.flushBlocked) {
      this.flushBlocked = false;
      this.kick();
    }
    const w = this.drainWaiters;
    this.drainWaiters = [];
    for (const r of w) r();
  }
  private flushBlocked = false;
  /** PONGs queued and not yet written: the server's PINGs while it does not read what we send. */
  private pongsDue = 0;

  private endOut(s: OutStream, type: number, payload: Uint8Array): void {
    if (s.ended) return;
    s.ended = true;
    if (this.state === "closed") return;
    s.push({ type, flags: 0, payload });
    this.ready(s);
    s.notify();
  }

  private forgetOut(s: OutStream): void {
    if (this.outStreams.get(s.id) !== s) return;
    this.outStreams.delete(s.id);
  }

  private ready(s: OutStream): void {
    this.sched.ready(s);
    this.kickData();
  }

  private queueControl(type: number, flags: number, id: number, payload: Uint8Array): void {
    this.sched.queueControl(F.encodeFrame(type, flags, id, payload));
    if (this.overBacklog() && !this.backlogCheck) {
      // Answers, credit, PONGs (what the server's messages make us send) and our own
      // calls wait here while the server does not read: past maxOutputBacklog it is
      // closed, as the Python side closes a peer that does not read (max_output_backlog).
      // From a microtask: this may run inside a handler's answer or the application's call.
      this.backlogCheck = true;
      queueMicrotask(() => {
        this.backlogCheck = false;
        if (this.overBacklog()) this.fail(this.backlogError());
      });
    }
    this.kick();
  }
  private backlogCheck = false;

  /** More than maxOutputBacklog bytes of control frames wait for a server that does not
   * read (the socket holds more than maxBufferedAmount). */
  private overBacklog(): boolean {
    return this.flushBlocked && this.state === "open" && this.sched.controlBytes > this.maxOutputBacklog;
  }

  private backlogError(): ProtocolError {
    return new ProtocolError(
      `the server does not read: ${this.sched.controlBytes} bytes of answers and other control frames wait for it ` +
        `(over maxOutputBacklog, ${this.maxOutputBacklog} bytes)`,
      "LIMIT_EXCEEDED",
    );
  }

  private get maxOutputBacklog(): number {
    return this.opts.maxOutputBacklog ?? 4 << 20;
  }

  /**
   * Control frames (calls, answers, credit) leave at the end of the current microtask
   * checkpoint; stream data at the next macrotask turn, so that the items a producer
   * queues in one turn (under its buffer and credit) share messages. Either way one
   * flush packs everything queued so far.
   */
  private kick(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    queueMicrotask(this.flushTask);
  }

  private kickData(): void {
    if (this.flushScheduled || this.dataScheduled) return;
    this.dataScheduled = true;
    nextTurn(this.dataTask);
  }

  private dataScheduled = false;
  private readonly flushTask = (): void => {
    this.flushScheduled = false;
    this.flushNow();
  };
  private readonly dataTask = (): void => {
    this.dataScheduled = false;
    if (!this.flushScheduled) this.flushNow();
  };

  private flushNow(): void {
    const ws = this.ws;
    if (ws === null || ws.readyState !== 1 || this.handshaking || this.state === "closed") return;
    if (ws.bufferedAmount > this.maxBufferedAmount) {
      // the server does not read: what we queue waits here, within its bounds (the
      // socket's buffer would grow without one), until the socket drains
      this.flushBlocked = true;
      this.armDrain();
      return;
    }
    if (this.slotGrants > 0) {
      this.sched.queueControl(F.encodeFrame(F.STREAMS, 0, 0, F.encodeVarint(this.slotGrants)));
      this.slotGrants = 0;
    }
    const maxMessage = Math.min(this.peerSettings.maxMessageSize, this.session.cap);
    const batch = this.opts.batchSize ?? 128 << 10;
    for (;;) {
      const next = this.sched.next(maxMessage, batch);
      if (next === null) break;
      if (this.sched.controlQueued === 0) this.pongsDue = 0;
      this.session.record(next[0], next[1]);
      ws.send(next[0]);
      if (ws.bufferedAmount > this.maxBufferedAmount) {
        this.flushBlocked = true;
        this.armDrain();
        break;
      }
    }
  }

  // ------------------------------------------------------------- keepalive

  private startKeepalive(): void {
    const interval = this.opts.keepaliveInterval === undefined ? 10_000 : this.opts.keepaliveInterval;
    if (interval === null || interval <= 0) return;
    const timeout = this.opts.keepaliveTimeout ?? 10_000;
    this.pingTimer = setInterval(() => {
      if (this.state !== "open") return;
      const now = performance.now();
      if (this.pongDeadline !== 0 && now > this.pongDeadline) {
        this.pongDeadline = 0;
        const ws = this.ws;
        if (ws !== null) {
          this.transportLost(new ConnectionClosed(`no PONG within ${timeout} ms (keepaliveTimeout)`, 1011));
        }
        return;
      }
      if (this.pongDeadline === 0) {
        this.pongDeadline = now + timeout;
        const p = new Uint8Array(8);
        new DataView(p.buffer).setUint32(4, ++this.pingCount);
        this.queueControl(F.PING, 0, 0, p);
      }
    }, Math.min(interval, timeout));
    (this.pingTimer as { unref?: () => void }).unref?.();
  }

  // ---------------------------------------------------------- failure, teardown

  private fail(e: unknown): void {
    const err = e instanceof ProtocolError ? e : new ProtocolError(errorMessage(e), "INTERNAL_ERROR");
    const ws = this.ws;
    if (ws !== null && ws.readyState === 1) {
      try {
        ws.send(F.encodeFrame(F.GOAWAY, 0, 0, F.concat([F.encodeVarint(F.ErrorCode[err.code]), F.utf8(err.reason)])));
      } catch {
        /* closing anyway */
      }
      closeSocket(ws, CLOSE_CODES[err.code], err.reason);
    }
    const closed = new ConnectionClosed(`protocol error: ${err.message}`, CLOSE_CODES[err.code], err.reason);
    if (this.handshaking && this.state === "reconnecting") {
      // The server broke the protocol in a reconnect's handshake (a RESUME_OK we must
      // refuse, say): the session ends for good, not the peer, as in the Python client
      // and docs/protocol.md. What was in flight fails with the error, the token is
      // forgotten, and the reconnect loop's next attempt starts a new session.
      this.ws = null;
      this.failInFlight(closed);
      this.session.start(false, null);
      this.handshakeDone?.(closed);
      return;
    }
    this.teardown(closed);
  }

  private failInFlight(err: Error): void {
    // the timers and abort listeners of streaming calls go now, whether read or not
    const hooks = [...this.doneHooks.values()];
    this.doneHooks.clear();
    for (const list of hooks) for (const h of list) h();
    for (const [, c] of this.calls) if (!c.streaming) c.reject(err);
    this.calls.clear();
    for (const s of this.inStreams.values()) {
      if (s.state === IN_OPEN) {
        s.state = IN_FAILED;
        s.error = err;
      }
      // `held` starts again from 0: what a reader may still take no longer counts
      for (let i = s.head; i < s.items.length; i++) s.items[i].size = 0;
      s.errorSize = 0;
      s.notify();
    }
    this.inStreams.clear();
    // streams claimed with receiveStream() that never came
    for (const s of this.pendingClaims.values()) {
      if (s.state === IN_OPEN) {
        s.state = IN_FAILED;
        s.error = err;
      }
      s.notify();
    }
    this.pendingClaims.clear();
    this.claims.clear();
    const pings = this.pingFailers;
    this.pongWaiters = [];
    this.pingFailers = [];
    for (const r of pings) r(err);
    for (const s of this.outStreams.values()) {
      s.drop();
      s.ended = true;
      s.notify();
    }
    this.outStreams.clear();
    this.sched.clear();
    this.handlers.clear();
    this.freeIn = 0;
    this.growth = 0;
    this.held = 0;
    this.unclaimed.length = 0;
    this.wakeAll();
  }

  private teardown(err: Error): void {
    if (this.state === "closed") return;
    this.closedWith = err;
    this.setState("closed");
    if (this.pingTimer !== null) clearInterval(this.pingTimer);
    if (this.drainTimer !== null) clearTimeout(this.drainTimer);
    if (this.goawayTimer !== null) clearTimeout(this.goawayTimer);
    this.goawayTimer = null;
    this.handshakeDone?.(err);
    this.failInFlight(err);
    for (const r of this.rejectAccept) r(err);
    this.rejectAccept = [];
    const ws = this.ws;
    this.ws = null;
    if (ws !== null && ws.readyState <= 1) {
      closeSocket(ws, err instanceof ConnectionClosed && err.code >= 1000 && err.code < 1012 && err.code !== 1006 && err.code !== 1005 ? err.code : 1000);
    }
  }

  private wakeAll(): void {
    this.wakeList("callWaiters");
    this.wakeList("slotWaiters");
    const d = this.drainWaiters;
    this.drainWaiters = [];
    for (const r of d) r();
    for (const s of this.outStreams.values()) s.notify();
  }

  private wakeList(name: "callWaiters" | "slotWaiters"): void {
    const w = this[name];
    this[name] = [];
    for (const r of w) r();
  }

  private checkOpen(): void {
    if (this.closedWith !== null) throw this.closedWith;
    // closing after the server's GOAWAY: what is in flight completes, nothing new starts
    if (this.goawayErr !== null) throw this.goawayErr;
  }

  private allocId(): number {
    const id = this.nextId;
    this.nextId += 2;
    return id;
  }
}

/** Open a connection to a fastrpc server (`ws://` or `wss://` URL); resolves once the handshake is done. */
export async function connect(url: string, options: ConnectOptions = {}): Promise<Peer> {
  const peer = new Peer(url, options);
  await peer.open();
  return peer;
}
