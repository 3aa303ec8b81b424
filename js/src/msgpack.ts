/**
 * A small MessagePack codec (https://github.com/msgpack/msgpack/blob/master/spec.md):
 * null, booleans, numbers (integers in the smallest form, other numbers as float 64),
 * bigints (int 64 / uint 64), strings, Uint8Array (bin), arrays, Map and plain objects
 * (map), Date (timestamp extension -1). Integers past 2^53 decode as bigint.
 */

const encoder = new TextEncoder();
const decoder = new TextDecoder();

class Writer {
  buf = new Uint8Array(64);
  view = new DataView(this.buf.buffer);
  pos = 0;

  ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const b = new Uint8Array(size);
    b.set(this.buf.subarray(0, this.pos));
    this.buf = b;
    this.view = new DataView(b.buffer);
  }

  u8(v: number): void {
    this.ensure(1);
    this.buf[this.pos++] = v;
  }

  head(tag: number, size: 1 | 2 | 4, v: number): void {
    this.ensure(1 + size);
    this.buf[this.pos++] = tag;
    if (size === 1) this.buf[this.pos] = v;
    else if (size === 2) this.view.setUint16(this.pos, v);
    else this.view.setUint32(this.pos, v);
    this.pos += size;
  }

  bytes(b: Uint8Array): void {
    this.ensure(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
}

function writeInt(w: Writer, v: number): void {
  if (v >= 0) {
    if (v < 128) w.u8(v);
    else if (v < 0x100) w.head(0xcc, 1, v);
    else if (v < 0x10000) w.head(0xcd, 2, v);
    else if (v < 0x100000000) w.head(0xce, 4, v);
    else writeBig(w, BigInt(v));
  } else {
    if (v >= -32) w.u8(v & 0xff);
    else if (v >= -128) w.head(0xd0, 1, v & 0xff);
    else if (v >= -32768) w.head(0xd1, 2, v & 0xffff);
    else if (v >= -2147483648) w.head(0xd2, 4, v >>> 0);
    else writeBig(w, BigInt(v));
  }
}

function writeBig(w: Writer, v: bigint): void {
  if (v >= 0n && v < 1n << 64n) {
    if (v < 0x100000000n) return writeInt(w, Number(v));
    w.ensure(9);
    w.buf[w.pos] = 0xcf;
    w.view.setBigUint64(w.pos + 1, v);
  } else if (v < 0n && v >= -(1n << 63n)) {
    if (v >= -2147483648n) return writeInt(w, Number(v));
    w.ensure(9);
    w.buf[w.pos] = 0xd3;
    w.view.setBigInt64(w.pos + 1, v);
  } else {
    throw new RangeError(`integer out of MessagePack's range: ${v}`);
  }
  w.pos += 9;
}

function writeLength(w: Writer, n: number, fix: number, fixMax: number, t8: number | null, t16: number, t32: number): void {
  if (n < fixMax) w.u8(fix | n);
  else if (t8 !== null && n < 0x100) w.head(t8, 1, n);
  else if (n < 0x10000) w.head(t16, 2, n);
  else w.head(t32, 4, n);
}

function write(w: Writer, v: unknown, depth: number): void {
  if (depth > 512) throw new RangeError("value nested too deeply for MessagePack");
  if (v === null || v === undefined) return w.u8(0xc0);
  switch (typeof v) {
    case "boolean":
      return w.u8(v ? 0xc3 : 0xc2);
    case "number":
      if (Number.isSafeInteger(v)) return writeInt(w, v);
      w.ensure(9);
      w.buf[w.pos] = 0xcb;
      w.view.setFloat64(w.pos + 1, v);
      w.pos += 9;
      return;
    case "bigint":
      return writeBig(w, v);
    case "string": {
      const b = encoder.encode(v);
      writeLength(w, b.length, 0xa0, 32, 0xd9, 0xda, 0xdb);
      return w.bytes(b);
    }
    case "object":
      break;
    default:
      throw new TypeError(`cannot encode values of type ${typeof v} in MessagePack`);
  }
  if (v instanceof Uint8Array) {
    if (v.length < 0x100) w.head(0xc4, 1, v.length);
    else if (v.length < 0x10000) w.head(0xc5, 2, v.length);
    else w.head(0xc6, 4, v.length);
    return w.bytes(v);
  }
  if (ArrayBuffer.isView(v)) return write(w, new Uint8Array(v.buffer, v.byteOffset, v.byteLength), depth);
  if (v instanceof ArrayBuffer) return write(w, new Uint8Array(v), depth);
  if (Array.isArray(v)) {
    writeLength(w, v.length, 0x90, 16, null, 0xdc, 0xdd);
    for (const x of v) write(w, x, depth + 1);
    return;
  }
  if (v instanceof Date) {
    // timestamp 96: nanoseconds u32, seconds i64
    const ms = v.getTime();
    const sec = Math.floor(ms / 1000);
    w.ensure(15);
    w.buf[w.pos] = 0xc7;
    w.buf[w.pos + 1] = 12;
    w.buf[w.pos + 2] = 0xff;
    w.view.setUint32(w.pos + 3, (ms - sec * 1000) * 1e6);
    w.view.setBigInt64(w.pos + 7, BigInt(sec));
    w.pos += 15;
    return;
  }
  const entries: Array<[unknown, unknown]> =
    v instanceof Map ? [...v.entries()] : Object.entries(v as object).filter(([, x]) => x !== undefined);
  writeLength(w, entries.length, 0x80, 16, null, 0xde, 0xdf);
  for (const [k, x] of entries) {
    write(w, k, depth + 1);
    write(w, x, depth + 1);
  }
}

/** MessagePack bytes of `value`. */
export function encode(value: unknown): Uint8Array {
  const w = new Writer();
  write(w, value, 0);
  return w.buf.slice(0, w.pos);
}

class Reader {
  view: DataView;
  pos = 0;
  constructor(readonly buf: Uint8Array) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  need(n: number): void {
    if (this.pos + n > this.buf.length) throw new RangeError("truncated MessagePack data");
  }

  u8(): number {
    this.need(1);
    return this.buf[this.pos++];
  }

  uint(size: 1 | 2 | 4): number {
    this.need(size);
    const p = this.pos;
    this.pos += size;
    return size === 1 ? this.buf[p] : size === 2 ? this.view.getUint16(p) : this.view.getUint32(p);
  }

  take(n: number): Uint8Array {
    this.need(n);
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
}

function big(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

function str(r: Reader, n: number): string {
  return decoder.decode(r.take(n));
}

function array(r: Reader, n: number, depth: number): unknown[] {
  const out = new Array(n < 65536 ? n : 0);
  for (let i = 0; i < n; i++) out[i] = read(r, depth + 1);
  return out;
}

function map(r: Reader, n: number, depth: number): unknown {
  const out: Record<string, unknown> = {};
  let asMap: Map<unknown, unknown> | null = null;
  for (let i = 0; i < n; i++) {
    const k = read(r, depth + 1);
    const v = read(r, depth + 1);
    if (asMap === null && (typeof k === "string" || typeof k === "number")) {
      if (k === "__proto__") Object.defineProperty(out, k, { value: v, enumerable: true, writable: true, configurable: true });
      else out[k] = v;
    } else {
      // keys that are not strings or numbers: the map is a Map
      if (asMap === null) asMap = new Map(Object.entries(out));
      asMap.set(k, v);
    }
  }
  return asMap ?? out;
}

function ext(r: Reader, n: number): unknown {
  const type = (r.u8() << 24) >> 24;
  const data = r.take(n);
  if (type === -1) {
    const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
    if (n === 4) return new Date(v.getUint32(0) * 1000);
    if (n === 8) {
      const hi = v.getUint32(0);
      const lo = v.getUint32(4);
      const nsec = hi >>> 2;
      const sec = (hi & 3) * 0x100000000 + lo;
      return new Date(sec * 1000 + nsec / 1e6);
    }
    if (n === 12) return new Date(Number(v.getBigInt64(4)) * 1000 + v.getUint32(0) / 1e6);
  }
  return { extType: type, data: data.slice() };
}

function read(r: Reader, depth: number): unknown {
  if (depth > 512) throw new RangeError("MessagePack value nested too deeply");
  const b = r.u8();
  if (b < 0x80) return b;
  if (b < 0x90) return map(r, b & 0x0f, depth);
  if (b < 0xa0) return array(r, b & 0x0f, depth);
  if (b < 0xc0) return str(r, b & 0x1f);
  if (b >= 0xe0) return b - 0x100;
  switch (b) {
    case 0xc0:
      return null;
    case 0xc2:
      return false;
    case 0xc3:
      return true;
    case 0xc4:
      return r.take(r.uint(1)).slice();
    case 0xc5:
      return r.take(r.uint(2)).slice();
    case 0xc6:
      return r.take(r.uint(4)).slice();
    case 0xc7:
      return ext(r, r.uint(1));
    case 0xc8:
      return ext(r, r.uint(2));
    case 0xc9:
      return ext(r, r.uint(4));
    case 0xca: {
      r.need(4);
      const v = r.view.getFloat32(r.pos);
      r.pos += 4;
      return v;
    }
    case 0xcb: {
      r.need(8);
      const v = r.view.getFloat64(r.pos);
      r.pos += 8;
      return v;
    }
    case 0xcc:
      return r.uint(1);
    case 0xcd:
      return r.uint(2);
    case 0xce:
      return r.uint(4);
    case 0xcf: {
      r.need(8);
      const v = r.view.getBigUint64(r.pos);
      r.pos += 8;
      return big(v);
    }
    case 0xd0:
      return (r.uint(1) << 24) >> 24;
    case 0xd1:
      return (r.uint(2) << 16) >> 16;
    case 0xd2:
      return r.uint(4) | 0;
    case 0xd3: {
      r.need(8);
      const v = r.view.getBigInt64(r.pos);
      r.pos += 8;
      return big(v);
    }
    case 0xd4:
      return ext(r, 1);
    case 0xd5:
      return ext(r, 2);
    case 0xd6:
      return ext(r, 4);
    case 0xd7:
      return ext(r, 8);
    case 0xd8:
      return ext(r, 16);
    case 0xd9:
      return str(r, r.uint(1));
    case 0xda:
      return str(r, r.uint(2));
    case 0xdb:
      return str(r, r.uint(4));
    case 0xdc:
      return array(r, r.uint(2), depth);
    case 0xdd:
      return array(r, r.uint(4), depth);
    case 0xde:
      return map(r, r.uint(2), depth);
    case 0xdf:
      return map(r, r.uint(4), depth);
    default:
      throw new RangeError(`invalid MessagePack byte 0x${b.toString(16)}`);
  }
}

/** The value MessagePack bytes encode (all of them: trailing bytes are an error). */
export function decode(bytes: Uint8Array): unknown {
  const r = new Reader(bytes);
  const v = read(r, 0);
  if (r.pos !== bytes.length) throw new RangeError("trailing bytes after a MessagePack value");
  return v;
}
