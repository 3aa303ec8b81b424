// The TypeScript client against a hostile server on a real loopback socket (a bare
// WebSocket server, test/_raw_server.mjs, in this process): Node's own WebSocket carries
// every byte. A HELLO over MAX_HELLO_SIZE, a message over the client's maxMessageSize,
// and a server that stops reading while the client writes: each is refused or bounded,
// with a close code and a reason naming the limit.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { connect, frames as F, ConnectionClosed } from "../dist/index.js";
import { startRawServer, until } from "./_raw_server.mjs";

// Node's WebSocket, as a browser's, lets a script send no close code but 1000 and
// 3000-4999: the error's code is in the client's GOAWAY and in its ConnectionClosed, the
// close frame says 1000 with the same reason.
const WIRE_CLOSE = 1000;
const OPTIONS = { keepaliveInterval: null, reconnect: false, resume: false, handshakeTimeout: 5000 };
const v = (n) => F.encodeVarint(n);

/** A HELLO payload (protocol version 1, default limits) of exactly `size` bytes: unknown
 * keys (ignored by a reader) pad it. `repeat`: its last key is its first one again (a
 * reader that decodes it refuses it: "duplicate setting"), its size the same. */
function helloPayload(size, repeat = false) {
  const parts = [v(1)];
  let n = 1;
  let key = 64; // 2-byte varints (64..16383): far from the known keys 1..12
  const pair = (k, value) => {
    const p = F.concat([v(k), v(value)]);
    parts.push(p);
    n += p.length;
  };
  // 3-byte pairs (value 0), then one or two 4-byte pairs (value 64) to land exactly
  while (size - n > 8) pair(key++, 0);
  while (size - n > 0 && (size - n) % 3 !== 0) pair(key++, 64);
  while (size - n > 0) pair(key++, 0);
  if (repeat) {
    const last = parts[parts.length - 1];
    parts[parts.length - 1] = F.concat([v(64), v(last.length === 3 ? 0 : 64)]);
  }
  const out = F.concat(parts);
  assert.equal(out.length, size);
  return out;
}

const hello = (payload) => F.encodeFrame(F.HELLO, 0, 0, payload);

/** Extension frames (type 0x40, skipped by the client) filling a message of exactly `size` bytes, each payload at most `maxFrame`. */
function fillerMessage(size, maxFrame) {
  const parts = [];
  let left = size;
  for (;;) {
    // a frame's header: type, flags, id 0 (1 byte), its length (a 1, 2, 4 or 8-byte varint)
    const last = [1, 2, 4, 8].map((s) => left - 3 - s).find((n) => n >= 0 && n <= maxFrame && F.varintSize(n) === left - 3 - n);
    if (last !== undefined) {
      parts.push(F.encodeFrame(0x40, 0, 0, new Uint8Array(last)));
      break;
    }
    const frame = F.encodeFrame(0x40, 0, 0, new Uint8Array(Math.min(maxFrame, left - 256)));
    parts.push(frame);
    left -= frame.length;
  }
  const out = F.concat(parts);
  assert.equal(out.length, size);
  return out;
}

/** `promise`, or an Error once `ms` passed. */
function within(promise, ms, what) {
  let timer;
  const late = new Promise((r) => (timer = setTimeout(() => r(new Error(what())), ms)));
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** The GOAWAY the client sent on `conn`: [code, reason], or null. */
function goaway(conn) {
  for (const m of conn.messages) {
    if (m[0] !== F.GOAWAY) continue;
    const g = F.decodeMessage(m, Number.MAX_SAFE_INTEGER)[0];
    const [code, p] = F.decodeVarint(g.payload, 0);
    return [Number(code), F.fromUtf8(g.payload.subarray(p))];
  }
  return null;
}

/** A server answering the client's HELLO with `helloBytes`; then `script(conn)`. */
async function server(helloBytes, script = async () => {}) {
  return startRawServer(async (conn) => {
    await conn.message(0); // the client's HELLO
    conn.send(helloBytes);
    await script(conn);
  });
}

describe("a hostile server on a real socket: HELLO size", { timeout: 20000 }, () => {
  test("a HELLO over MAX_HELLO_SIZE (a 1 MiB HELLO of 200,000 unknown settings, within the frame limit) fails the handshake: LIMIT_EXCEEDED (ConnectionClosed 1008), GOAWAY 5 and a close frame, the reason naming MAX_HELLO_SIZE", async () => {
    // 4-byte keys, 1-byte values: 5 bytes a setting, each one decoded (and remembered to
    // refuse a repeat) by a reader without the bound
    const pairs = [];
    for (let i = 0; i < 200_000; i++) pairs.push([(1 << 20) + i, 0]);
    const payload = F.encodeSettings(1, pairs);
    assert.ok(payload.length > 1_000_000 && payload.length < 1 << 20);
    const srv = await server(hello(payload));
    try {
      const err = await connect(srv.url, OPTIONS).then(
        async (peer) => {
          await peer.close();
          return new Error(`connected: a HELLO of ${payload.length} bytes was taken`);
        },
        (e) => e,
      );
      assert.ok(err instanceof ConnectionClosed, String(err));
      assert.equal(err.code, 1008);
      assert.match(err.message, new RegExp(`a HELLO of ${payload.length} bytes, over the 4096 a HELLO may have \\(MAX_HELLO_SIZE\\)`));
      const conn = srv.connections[0];
      await until(() => conn.closeCode !== null);
      assert.equal(conn.closeCode, WIRE_CLOSE);
      assert.match(conn.closeReason, /MAX_HELLO_SIZE/);
      assert.deepEqual(goaway(conn), [5, `a HELLO of ${payload.length} bytes, over the 4096 a HELLO may have (MAX_HELLO_SIZE)`]);
    } finally {
      await srv.close();
    }
  });

  test("a HELLO of exactly MAX_HELLO_SIZE (4096 bytes) is taken; one byte more is refused before it is decoded (a malformed tail is not even seen)", async () => {
    const exact = await server(hello(helloPayload(4096)));
    try {
      const peer = await connect(exact.url, OPTIONS);
      assert.equal(peer.state, "open");
      assert.equal(peer.peerSettings.maxMessageSize, 4 << 20);
      await peer.close();
    } finally {
      await exact.close();
    }
    // 4097 bytes whose last key repeats its first: a reader that decoded it would refuse
    // it as a "duplicate setting" (PROTOCOL_ERROR, 1002); the bound comes first
    const srv = await server(hello(helloPayload(4097, true)));
    try {
      const err = await connect(srv.url, OPTIONS).then(
        async (peer) => {
          await peer.close();
          return new Error("connected: a HELLO of 4097 bytes was taken");
        },
        (e) => e,
      );
      assert.ok(err instanceof ConnectionClosed, String(err));
      assert.equal(err.code, 1008, err.message);
      assert.match(err.message, /a HELLO of 4097 bytes, over the 4096 a HELLO may have \(MAX_HELLO_SIZE\) \(LIMIT_EXCEEDED\)/);
    } finally {
      await srv.close();
    }
  });
});

describe("a hostile server on a real socket: message size", { timeout: 20000 }, () => {
  const cases = [
    ["the default maxMessageSize (4 MiB)", {}, 4 << 20, 1 << 20],
    ["settings.maxMessageSize 64 KiB", { maxFrameSize: 16 << 10, maxMessageSize: 64 << 10 }, 64 << 10, 16 << 10],
  ];
  for (const [name, settings, limit, maxFrame] of cases) {
    test(`${name}: a message of exactly that is read; one byte more closes the connection (FRAME_TOO_LARGE: ConnectionClosed 1009, GOAWAY 4, a close frame), the reason naming maxMessageSize`, async () => {
      let pinged = null;
      const srv = await server(hello(helloPayload(40)), async (conn) => {
        // frames the client skips, in a message as large as it accepts: read
        conn.send(fillerMessage(limit, maxFrame));
        // the client's PING after it: answered, so its round trip shows the connection still up
        const ping = F.decodeMessage(await conn.message(1), Number.MAX_SAFE_INTEGER).find((f) => f.type === F.PING);
        conn.send(F.encodeFrame(F.PONG, 0, 0, ping.payload));
        await new Promise((r) => (pinged = r));
        // every frame valid, the whole one byte over the client's limit
        conn.send(fillerMessage(limit + 1, maxFrame));
      });
      try {
        const peer = await connect(srv.url, { ...OPTIONS, settings });
        await peer.ping();
        assert.equal(peer.state, "open");
        const call = peer.call("add", 1, 2).then(
          () => new Error("the call succeeded"),
          (e) => e,
        );
        pinged();
        const err = await within(call, 3000, () => `still ${peer.state} 3 s after a message of ${limit + 1} bytes`);
        assert.ok(err instanceof ConnectionClosed, String(err));
        const reason = `message of ${limit + 1} bytes exceeds the client's limit of ${limit} bytes (maxMessageSize)`;
        assert.equal(err.code, 1009);
        assert.equal(err.message, `protocol error: ${reason} (FRAME_TOO_LARGE)`);
        assert.equal(peer.state, "closed");
        const conn = srv.connections[0];
        await until(() => conn.closeCode !== null);
        assert.equal(conn.closeCode, WIRE_CLOSE);
        assert.equal(conn.closeReason, reason);
        assert.deepEqual(goaway(conn), [4, reason]);
      } finally {
        await srv.close();
      }
    });
  }
});

describe("a hostile server on a real socket: a server that stops reading", { timeout: 20000 }, () => {
  test("the client's output waiting for it is bounded by maxOutputBacklog on Node's WebSocket, whose bufferedAmount is real (LIMIT_EXCEEDED: ConnectionClosed 1008, GOAWAY 5, a close frame)", async () => {
    let paused = false;
    const srv = await server(hello(helloPayload(40)), async (conn) => {
      conn.pause(); // from here on the kernel's buffers fill, then the client's
      paused = true;
    });
    const peer = await connect(srv.url, { ...OPTIONS, maxOutputBacklog: 1 << 20 });
    try {
      await until(() => paused);
      const big = new Uint8Array(64 << 10);
      let notified = 0;
      let buffered = 0;
      let err = null;
      const deadline = Date.now() + 8000;
      // notifications (nothing comes back: only the server's reading drains them) until
      // the client refuses, 128 MiB at most
      while (notified < 128 << 20 && Date.now() < deadline) {
        try {
          peer.notify("sink", big);
        } catch (e) {
          err = e;
          break;
        }
        notified += big.length;
        buffered = Math.max(buffered, peer.bufferedAmount);
        if (notified % (1 << 20) === 0) await new Promise((r) => setTimeout(r, 1)); // the socket writes
      }
      assert.ok(err instanceof ConnectionClosed, `${notified >> 20} MiB notified to a server that reads nothing, no error: ${err}`);
      assert.equal(err.code, 1008);
      assert.match(err.message, /the server does not read: \d+ bytes of answers and other control frames wait for it \(over maxOutputBacklog, 1048576 bytes\)/);
      // Node's WebSocket reports what it holds: the client stopped writing past 1 MiB
      // (maxBufferedAmount); what it took is the kernel's buffers, that, and the backlog
      assert.ok(buffered > 1 << 20, `bufferedAmount at most ${buffered}`);
      assert.ok(buffered < 6 << 20, `bufferedAmount up to ${buffered}`);
      assert.ok(notified < 48 << 20, `${notified >> 20} MiB notified before the client refused`);
      // the server reads again: everything written, then GOAWAY LIMIT_EXCEEDED and the close frame
      const conn = srv.connections[0];
      conn.resume();
      await until(() => conn.closeCode !== null);
      assert.equal(conn.closeCode, WIRE_CLOSE);
      assert.match(conn.closeReason, /does not read/);
      const [code, reason] = goaway(conn);
      assert.equal(code, 5);
      assert.match(reason, /over maxOutputBacklog/);
    } finally {
      await peer.close();
      await srv.close();
    }
  });
});
