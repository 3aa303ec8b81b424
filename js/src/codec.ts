/** Payload codecs: MessagePack (default) or JSON. A Uint8Array sent as a whole item,
 * argument list or result skips the codec: it travels raw (flag RAW) and arrives untouched. */

import * as msgpack from "./msgpack.js";
import { fromUtf8, utf8 } from "./frames.js";
import { CODEC_JSON, CODEC_MSGPACK } from "./settings.js";

export interface PayloadCodec {
  name: "msgpack" | "json";
  wireId: number;
  encode(value: unknown): Uint8Array;
  decode(payload: Uint8Array): unknown;
}

export const MSGPACK: PayloadCodec = {
  name: "msgpack",
  wireId: CODEC_MSGPACK,
  encode: msgpack.encode,
  decode: msgpack.decode,
};

export const JSON_CODEC: PayloadCodec = {
  name: "json",
  wireId: CODEC_JSON,
  encode: (v) => utf8(JSON.stringify(v === undefined ? null : v)),
  decode: (p) => JSON.parse(fromUtf8(p, true)),
};

export function codecById(id: number): PayloadCodec {
  return id === CODEC_JSON ? JSON_CODEC : MSGPACK;
}

export function codecByName(name: "msgpack" | "json"): PayloadCodec {
  if (name === "msgpack") return MSGPACK;
  if (name === "json") return JSON_CODEC;
  throw new TypeError(`unknown codec ${String(name)}; use "msgpack" or "json"`);
}

/** `[payload, raw]` of one value: a Uint8Array is sent raw. */
export function encodeValue(codec: PayloadCodec, value: unknown): [Uint8Array, boolean] {
  if (value instanceof Uint8Array) return [value, true];
  return [codec.encode(value), false];
}

export function decodeValue(codec: PayloadCodec, payload: Uint8Array, raw: boolean): unknown {
  return raw ? payload.slice() : codec.decode(payload);
}
