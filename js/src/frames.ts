/**
 * The frame codec of docs/protocol.md: QUIC varints, frames (type u8, flags u8, id
 * varint, length varint, payload), messages of frames back to back, HELLO settings.
 * The vectors in tests/vectors/ pin these bytes down for both this codec and Python's.
 */

export const PROTOCOL_VERSION = 1;

export const HELLO = 0x01;
export const REQUEST = 0x02;
export const RESPONSE = 0x03;
export const ERROR = 0x04;
export const NOTIFY = 0x05;
export const CANCEL = 0x06;
export const STREAM_DATA = 0x10;
export const STREAM_END = 0x11;
export const STREAM_ERROR = 0x12;
export const STREAM_ABORT = 0x13;
export const STREAM_CLOSE = 0x14;
export const CREDIT = 0x15;
export const STREAMS = 0x16;
export const PING = 0x20;
export const PONG = 0x21;
export const GOAWAY = 0x22;
export const RESUME = 0x30;
export const RESUME_OK = 0x31;
export const ACK = 0x32;
export const FIRST_EXTENSION = 0x40;

export const FLAG_MORE = 0x01;
export const FLAG_COMPRESSED = 0x02;
export const FLAG_STREAM = 0x04;
export const FLAG_CHANNEL = 0x08;
export const FLAG_DEADLINE = 0x10;
export const FLAG_OPEN = 0x20;
export const FLAG_RAW = 0x40;
export const FLAG_NEW = 0x01;

/** The largest varint (2^62 - 1); values past 2^53 are bigints in JavaScript. */
export const VARINT_MAX = (1n << 62n) - 1n;

/** Error codes of GOAWAY (docs/protocol.md, "Keepalive and closing"). */
export const ErrorCode = {
  NO_ERROR: 0,
  PROTOCOL_ERROR: 1,
  INTERNAL_ERROR: 2,
  FLOW_CONTROL_ERROR: 3,
  FRAME_TOO_LARGE: 4,
  LIMIT_EXCEEDED: 5,
  UNSUPPORTED_VERSION: 6,
  COMPRESSION_ERROR: 7,
  KEEPALIVE_TIMEOUT: 8,
  STREAM_STATE_ERROR: 9,
} as const;
export type ErrorCodeName = keyof typeof ErrorCode;

/** A malformed frame or a broken rule of the protocol; `code` names the GOAWAY code. */
export class ProtocolError extends Error {
  readonly reason: string;
  readonly code: ErrorCodeName;
  constructor(reason: string, code: ErrorCodeName = "PROTOCOL_ERROR") {
    super(`${reason} (${code})`);
    this.name = "ProtocolError";
    this.reason = reason;
    this.code = code;
  }
}

/** A varint's value: a number when it is a safe integer, else a bigint. */
export type Varint = number | bigint;

export interface Frame {
  type: number;
  flags: number;
  id: Varint;
  payload: Uint8Array;
}

export function varintSize(n: Varint): number {
  if (typeof n === "bigint") {
    if (n < 0n || n > VARINT_MAX) throw new RangeError(`varint out of range: ${n}`);
    return n < 64n ? 1 : n < 16384n ? 2 : n < 1073741824n ? 4 : 8;
  }
  if (!(n >= 0 && n < 2 ** 62) || !Number.isInteger(n)) throw new RangeError(`varint out of range: ${n}`);
  return n < 64 ? 1 : n < 16384 ? 2 : n < 1073741824 ? 4 : 8;
}

/** Write `n` in its shortest form at `pos`; return the position after it. */
export function writeVarint(buf: Uint8Array, pos: number, n: Varint): number {
  const size = varintSize(n);
  if (size === 8) {
    const big = BigInt(n);
    const hi = Number(big >> 32n);
    const lo = Number(big & 0xffffffffn);
    buf[pos] = 0xc0 | (hi >>> 24);
    buf[pos + 1] = (hi >>> 16) & 0xff;
    buf[pos + 2] = (hi >>> 8) & 0xff;
    buf[pos + 3] = hi & 0xff;
    buf[pos + 4] = lo >>> 24;
    buf[pos + 5] = (lo >>> 16) & 0xff;
    buf[pos + 6] = (lo >>> 8) & 0xff;
    buf[pos + 7] = lo & 0xff;
    return pos + 8;
  }
  const v = Number(n);
  if (size === 1) {
    buf[pos] = v;
    return pos + 1;
  }
  if (size === 2) {
    buf[pos] = 0x40 | (v >>> 8);
    buf[pos + 1] = v & 0xff;
    return pos + 2;
  }
  buf[pos] = 0x80 | (v >>> 24);
  buf[pos + 1] = (v >>> 16) & 0xff;
  buf[pos + 2] = (v >>> 8) & 0xff;
  buf[pos + 3] = v & 0xff;
  return pos + 4;
}

export function encodeVarint(n: Varint): Uint8Array {
  const out = new Uint8Array(varintSize(n));
  writeVarint(out, 0, n);
  return out;
}

/** `[value, next position]`; `null` when the varint runs past `end`. */
function readVarint(buf: Uint8Array, pos: number, end: number): [Varint, number] | null {
  if (pos >= end) return null;
  const first = buf[pos];
  const size = 1 << (first >> 6);
  if (pos + size > end) return null;
  switch (size) {
    case 1:
      return [first, pos + 1];
    case 2:
      return [((first & 0x3f) << 8) | buf[pos + 1], pos + 2];
    case 4:
      return [(first & 0x3f) * 0x1000000 + ((buf[pos + 1] << 16) | (buf[pos + 2] << 8) | buf[pos + 3]), pos + 4];
    default: {
      const hi = (first & 0x3f) * 0x1000000 + ((buf[pos + 1] << 16) | (buf[pos + 2] << 8) | buf[pos + 3]);
      const lo = buf[pos + 4] * 0x1000000 + ((buf[pos + 5] << 16) | (buf[pos + 6] << 8) | buf[pos + 7]);
      if (hi < 0x200000) return [hi * 0x100000000 + lo, pos + 8]; // below 2^53: exact
      return [(BigInt(hi) << 32n) | BigInt(lo), pos + 8];
    }
  }
}

/** Decode the varint at `pos`: `[value, next position]`. */
export function decodeVarint(buf: Uint8Array, pos = 0): [Varint, number] {
  const r = readVarint(buf, pos, buf.length);
  if (r === null) throw new ProtocolError("truncated varint");
  return r;
}

function bigger(a: Varint, b: number): boolean {
  return typeof a === "bigint" ? a > BigInt(b) : a > b;
}

/**
 * The frames of one WebSocket message. A frame longer than `maxFrameSize` is
 * rejected as soon as its header is complete, before its payload is awaited.
 */
export function decodeMessage(buf: Uint8Array, maxFrameSize: number): Frame[] {
  const end = buf.length;
  if (end === 0) throw new ProtocolError("empty message");
  const frames: Frame[] = [];
  let pos = 0;
  while (pos < end) {
    if (pos + 2 > end) throw new ProtocolError("truncated frame");
    const type = buf[pos];
    const flags = buf[pos + 1];
    const idr = readVarint(buf, pos + 2, end);
    if (idr === null) throw new ProtocolError("truncated frame");
    const lr = readVarint(buf, idr[1], end);
    if (lr === null) throw new ProtocolError("truncated frame");
    const length = lr[0];
    if (bigger(length, maxFrameSize)) throw new ProtocolError("frame too large", "FRAME_TOO_LARGE");
    if (typeof length === "bigint") throw new ProtocolError("truncated frame"); // past any buffer
    const start = lr[1];
    const stop = start + length;
    if (stop > end) throw new ProtocolError("truncated frame");
    frames.push({ type, flags, id: idr[0], payload: buf.subarray(start, stop) });
    pos = stop;
  }
  return frames;
}

/** The bytes of one frame. */
export function encodeFrame(type: number, flags: number, id: Varint, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(2 + varintSize(id) + varintSize(payload.length) + payload.length);
  const pos = putFrame(out, 0, type, flags, id, payload);
  return pos === out.length ? out : out.subarray(0, pos);
}

function putFrame(out: Uint8Array, pos: number, type: number, flags: number, id: Varint, payload: Uint8Array): number {
  out[pos] = type;
  out[pos + 1] = flags;
  pos = writeVarint(out, pos + 2, id);
  pos = writeVarint(out, pos, payload.length);
  out.set(payload, pos);
  return pos + payload.length;
}

/** One message of several frames. */
export function encodeBatch(frames: Iterable<Frame>): Uint8Array {
  const w = new FrameWriter();
  for (const f of frames) w.add(f.type, f.flags, f.id, f.payload);
  return w.take();
}

/** Frames appended into one growing buffer; `take()` gives the message. */
export class FrameWriter {
  private buf = new Uint8Array(256);
  private pos = 0;
  /** Frames written since the last take. */
  count = 0;

  get length(): number {
    return this.pos;
  }

  add(type: number, flags: number, id: Varint, payload: Uint8Array): void {
    const need = 2 + varintSize(id) + varintSize(payload.length) + payload.length;
    if (this.pos + need > this.buf.length) {
      let size = this.buf.length * 2;
      while (size < this.pos + need) size *= 2;
      const bigger = new Uint8Array(size);
      bigger.set(this.buf.subarray(0, this.pos));
      this.buf = bigger;
    }
    this.pos = putFrame(this.buf, this.pos, type, flags, id, payload);
    this.count++;
  }

  /** Append frames already encoded (`n` of them). */
  addEncoded(bytes: Uint8Array, n: number): void {
    if (this.pos + bytes.length > this.buf.length) {
      let size = this.buf.length * 2;
      while (size < this.pos + bytes.length) size *= 2;
      const bigger = new Uint8Array(size);
      bigger.set(this.buf.subarray(0, this.pos));
      this.buf = bigger;
    }
    this.buf.set(bytes, this.pos);
    this.pos += bytes.length;
    this.count += n;
  }

  take(): Uint8Array {
    const out = this.buf.slice(0, this.pos);
    this.pos = 0;
    this.count = 0;
    if (this.buf.length > 1 << 20) this.buf = new Uint8Array(256);
    return out;
  }
}

/** HELLO payload: version, then (key, value) pairs in the given order. */
export function encodeSettings(version: Varint, settings: Iterable<[Varint, Varint]>): Uint8Array {
  const parts: Uint8Array[] = [encodeVarint(version)];
  for (const [k, v] of settings) parts.push(encodeVarint(k), encodeVarint(v));
  return concat(parts);
}

/** `[version, [key, value] pairs in payload order]`; a dangling or repeated key is a ProtocolError. */
export function decodeSettings(payload: Uint8Array): [Varint, Array<[Varint, Varint]>] {
  let [version, pos] = decodeVarint(payload, 0);
  const out: Array<[Varint, Varint]> = [];
  const seen = new Set<Varint>();
  while (pos < payload.length) {
    const [key, p] = decodeVarint(payload, pos);
    if (p >= payload.length) throw new ProtocolError("setting without a value");
    const [value, q] = decodeVarint(payload, p);
    if (seen.has(key)) throw new ProtocolError("duplicate setting");
    seen.add(key);
    out.push([key, value]);
    pos = q;
  }
  return [version, out];
}

export function concat(parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let pos = 0;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.length;
  }
  return out;
}

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: false });
const strictDecoder = new TextDecoder("utf-8", { fatal: true });

export function utf8(s: string): Uint8Array {
  return utf8Encoder.encode(s);
}

export function fromUtf8(b: Uint8Array, strict = false): string {
  return (strict ? strictDecoder : utf8Decoder).decode(b);
}

/** ERROR / STREAM_ERROR payload: varint (code + 1, or 0), type, message, optional traceback. */
export function encodeError(typeName: string, message: string, code: number | null = null): Uint8Array {
  const t = utf8(typeName).subarray(0, 256);
  const m = utf8(message);
  return concat([encodeVarint(code === null ? 0 : code + 1), encodeVarint(t.length), t, encodeVarint(m.length), m]);
}

export interface ErrorPayload {
  type: string;
  message: string;
  code: number | null;
  traceback: string | null;
}

export function decodeError(payload: Uint8Array): ErrorPayload {
  const [code, p1] = decodeVarint(payload, 0);
  const [tn, p2] = decodeVarint(payload, p1);
  const tEnd = p2 + Number(tn);
  if (tEnd > payload.length) throw new ProtocolError("truncated error payload");
  const [mn, p3] = decodeVarint(payload, tEnd);
  const mEnd = p3 + Number(mn);
  if (mEnd > payload.length) throw new ProtocolError("truncated error payload");
  return {
    type: fromUtf8(payload.subarray(p2, tEnd)),
    message: fromUtf8(payload.subarray(p3, mEnd)),
    code: code === 0 ? null : Number(code) - 1,
    traceback: mEnd < payload.length ? fromUtf8(payload.subarray(mEnd)) : null,
  };
}
