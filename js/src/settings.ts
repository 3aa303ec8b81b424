/** HELLO settings (docs/protocol.md, "HELLO and settings"): what one side is willing to receive. */

import { ProtocolError, PROTOCOL_VERSION, decodeSettings, encodeSettings, type Varint } from "./frames.js";

export interface Settings {
  maxFrameSize: number;
  maxMessageSize: number;
  initialStreamWindow: number;
  maxStreams: number;
  maxPendingCalls: number;
  maxItemSize: number;
  compression: number;
  codec: number;
  resume: number;
  connectionWindow: number;
}

/** The largest HELLO payload read (a protocol constant, the Python side's
 * `settings.MAX_HELLO_SIZE`; a HELLO is about 110 bytes): unknown settings are ignored
 * but each is decoded (and remembered, to refuse a repeat), so a HELLO up to the frame
 * limit (1 MiB: 200,000 settings of 5 bytes) would cost that much. A longer one is
 * refused before any of it is decoded. */
export const MAX_HELLO_SIZE = 4096;

export const CODEC_MSGPACK = 0;
export const CODEC_JSON = 1;

export const DEFAULT_SETTINGS: Readonly<Settings> = Object.freeze({
  maxFrameSize: 1 << 20,
  maxMessageSize: 4 << 20,
  initialStreamWindow: 256 << 10,
  maxStreams: 1024,
  maxPendingCalls: 1024,
  maxItemSize: 16 << 20,
  compression: 0,
  codec: CODEC_MSGPACK,
  resume: 0,
  connectionWindow: 16 << 20,
});

const KEYS: Array<[number, keyof Settings]> = [
  [1, "maxFrameSize"],
  [2, "maxMessageSize"],
  [3, "initialStreamWindow"],
  [4, "maxStreams"],
  [5, "maxPendingCalls"],
  [6, "maxItemSize"],
  [7, "compression"],
  [8, "codec"],
  [9, "resume"],
  [10, "connectionWindow"],
];

/** Throws `make(reason)` when a value is below the protocol's minimums. */
export function validateSettings(s: Settings, make: (reason: string) => Error): void {
  if (s.maxFrameSize < 1024) throw make("max_frame_size below 1024");
  if (s.maxMessageSize < s.maxFrameSize) throw make("max_message_size below max_frame_size");
  if (s.initialStreamWindow < 1024) throw make("initial_stream_window below 1024");
  if (s.connectionWindow < 1024) throw make("connection_window below 1024");
  if (s.maxItemSize < 1) throw make("max_item_size below 1");
  if (s.codec !== CODEC_MSGPACK && s.codec !== CODEC_JSON) throw make(`unknown payload codec ${s.codec}`);
}

export function settingsToWire(s: Settings): Uint8Array {
  return encodeSettings(
    PROTOCOL_VERSION,
    KEYS.map(([k, name]) => [k, s[name]] as [Varint, Varint]),
  );
}

/** Parse a HELLO payload; unknown keys are ignored. Huge values are clamped to 2^53.
 * Past {@link MAX_HELLO_SIZE} bytes: LIMIT_EXCEEDED, before anything is decoded. */
export function settingsFromWire(payload: Uint8Array): Settings {
  if (payload.length > MAX_HELLO_SIZE) {
    throw new ProtocolError(`a HELLO of ${payload.length} bytes, over the ${MAX_HELLO_SIZE} a HELLO may have (MAX_HELLO_SIZE)`, "LIMIT_EXCEEDED");
  }
  const [version, pairs] = decodeSettings(payload);
  if (version !== PROTOCOL_VERSION) {
    throw new ProtocolError(
      `unsupported protocol version ${version} (this side speaks ${PROTOCOL_VERSION})`,
      "UNSUPPORTED_VERSION",
    );
  }
  const s: Settings = { ...DEFAULT_SETTINGS };
  const byKey = new Map(KEYS);
  for (const [k, v] of pairs) {
    const name = typeof k === "number" ? byKey.get(k) : undefined;
    if (name !== undefined) s[name] = typeof v === "bigint" ? Number.MAX_SAFE_INTEGER : v;
  }
  validateSettings(s, (reason) => new ProtocolError(reason));
  return s;
}
