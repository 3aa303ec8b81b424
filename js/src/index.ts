/**
 * fastrpc for browsers and Node: RPC and multiplexed streaming over one WebSocket,
 * speaking fastrpc's binary protocol (docs/protocol.md) with per-stream and
 * connection byte credit and session resume.
 *
 *     import { connect } from "fastrpc";
 *     const peer = await connect("ws://127.0.0.1:8765");
 *     console.log(await peer.call("add", 1, 2));
 *     for await (const x of peer.stream("count", 10)) console.log(x);
 */

export { connect, Peer } from "./peer.js";
export type { CallOptions, CallScope, ConnectOptions, ConnectionState, RetryOptions, SendOptions } from "./peer.js";
export type { RateLimit } from "./util.js";
export { ReceiveStream } from "./streams.js";
export {
  ConnectionClosed,
  FastRPCError,
  PayloadTooLarge,
  RemoteError,
  RemoteStreamError,
  ResumeFailed,
  StreamAborted,
} from "./errors.js";
export { ProtocolError, ErrorCode } from "./frames.js";
export type { Settings } from "./settings.js";
export * as frames from "./frames.js";
export * as msgpack from "./msgpack.js";
