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

/** Parse a HELLO payload; unknown keys are ignored. Huge values are clamped to 2^53. */
export function settingsFromWire(payload: Uint8Array): Settings {
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
