/**
 * Per-item compression (docs/protocol.md, "Compression") with the platform's
 * CompressionStream / DecompressionStream: zlib (algorithm bit 1, the "deflate" format:
 * RFC 1950, what Python's zlib module writes). Inflating is bounded: more than the limit
 * is a COMPRESSION_ERROR, never a large allocation.
 */

import { ProtocolError, concat } from "./frames.js";

export const ZLIB = 1;

/** The algorithms this platform can use (a bit mask). */
export function available(): number {
  return typeof CompressionStream === "function" && typeof DecompressionStream === "function" ? ZLIB : 0;
}

async function pipe(data: Uint8Array, stream: CompressionStream | DecompressionStream, limit: number): Promise<Uint8Array> {
  const writer = stream.writable.getWriter();
  writer.write(data as Uint8Array<ArrayBuffer>).catch(() => undefined);
  writer.close().catch(() => undefined);
  const reader = stream.readable.getReader();
  const parts: Uint8Array[] = [];
  let n = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    n += value.length;
    if (n > limit) {
      void reader.cancel().catch(() => undefined);
      throw new ProtocolError("decompressed payload too large", "COMPRESSION_ERROR");
    }
    parts.push(value);
  }
  return parts.length === 1 ? parts[0] : concat(parts);
}

export function deflate(data: Uint8Array): Promise<Uint8Array> {
  return pipe(data, new CompressionStream("deflate"), Number.MAX_SAFE_INTEGER);
}

/** Inflate `data`; more than `maxSize` bytes out, or corrupt input, is a COMPRESSION_ERROR. */
export async function inflate(data: Uint8Array, maxSize: number): Promise<Uint8Array> {
  try {
    return await pipe(data, new DecompressionStream("deflate"), maxSize);
  } catch (e) {
    if (e instanceof ProtocolError) throw e;
    throw new ProtocolError(`corrupt compressed payload: ${e instanceof Error ? e.message : String(e)}`, "COMPRESSION_ERROR");
  }
}
