// The TypeScript client against a scripted hostile server, in process: a fake WebSocket
// (options.WebSocket) whose "server" side is each test's own frames, delivered exactly
// when the test says, with a bufferedAmount the test sets (Node 20's built-in WebSocket
// always reports 0). Each case: the client keeps its documented bounds, closes the one
// connection with a clear code and reason, and leaves no timer or listener behind.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { getEventListeners } from "node:events";
import { deflateSync } from "node:zlib";
import { connect, frames as F, msgpack, ConnectionClosed } from "../dist/index.js";
import { sleep } from "./helpers.mjs";

/** A WebSocket whose server is the test: `deliver(bytes)` is a message from it. */
class FakeWS {
  static last = null;
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.bufferedAmount = 0;
    this.binaryType = "blob";
    this.sent = [];
    this.closeCode = null;
    this.listeners = [];
    FakeWS.last = this;
    setTimeout(() => {
      this.readyState = 1;
      this.onopen?.({});
    }, 0);
  }
  send(data) {
    if (this.readyState !== 1) throw new Error("not open");
    this.sent.push(new Uint8Array(data));
  }
  close(code = 1000, reason = "") {
    if (this.readyState >= 2) return;
    this.readyState = 3;
    this.closeCode = code;
    this.closeReason = reason;
    setTimeout(() => {
      const ev = { code, reason };
      this.onclose?.(ev);
      for (const fn of this.listeners) fn(ev);
    }, 0);
  }
  addEventListener(type, fn) {
    if (type === "close") this.listeners.push(fn);
  }
  deliver(bytes) {
    const copy = bytes.slice();
    this.onmessage?.({ data: copy.buffer });
  }
  /** Every frame the client sent, in order. */
  frames() {
    return this.sent.flatMap((m) => F.decodeMessage(m, Number.MAX_SAFE_INTEGER));
  }
}

/** `[key, value]` pairs of the server's HELLO (docs/protocol.md, "HELLO and settings"). */
function hello(pairs = []) {
  return F.encodeFrame(F.HELLO, 0, 0, F.encodeSettings(1, pairs));
}

/** A peer connected to a FakeWS whose HELLO carries `pairs`. */
async function open(options = {}, pairs = []) {
  FakeWS.last = null;
  const connecting = connect("ws://fake", { WebSocket: FakeWS, keepaliveInterval: null, reconnect: false, resume: false, ...options });
  await until(() => FakeWS.last !== null && FakeWS.last.sent.length > 0);
  const ws = FakeWS.last;
  ws.deliver(hello(pairs));
  const peer = await connecting;
  return { peer, ws };
}

async function until(cond, ms = 5000) {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await sleep(5);
  }
}

const cat = (...parts) => F.concat(parts);
const v = (n) => F.encodeVarint(n);

/** The GOAWAY the client sent: [code, reason]. */
function goaway(ws) {
  const g = ws.frames().find((f) => f.type === F.GOAWAY);
  if (g === undefined) return null;
  const [code, p] = F.decodeVarint(g.payload, 0);
  return [code, F.fromUtf8(g.payload.subarray(p))];
}

describe("a scripted hostile server", { timeout: 30000 }, () => {
  for (const size of [2 ** 31, 2 ** 32, 2n ** 62n - 1n]) {
    test(`HELLO max_message_size ${size}: stream items still go whole, in frames the server takes`, async () => {
      const { peer, ws } = await open({}, [[2, size]]);
      try {
        await peer.sendStream([new Uint8Array(10).fill(7)]);
        await until(() => ws.frames().some((f) => f.type === F.STREAM_END));
        const data = ws.frames().filter((f) => f.type === F.STREAM_DATA);
        assert.equal(data.length, 1, `${data.length} STREAM_DATA frames`);
        assert.equal(data[0].payload.length, 10);
        assert.equal(data[0].flags & F.FLAG_MORE, 0);
      } finally {
        await peer.close();
      }
    });
  }

  test("a call from the server with a deadline past setTimeout's limit runs to its answer", async () => {
    const { peer, ws } = await open();
    try {
      peer.register("slow", async () => {
        await sleep(50);
        return 42;
      });
      const m = F.utf8("slow");
      ws.deliver(F.encodeFrame(F.REQUEST, F.FLAG_DEADLINE, 2, cat(v(2 ** 32), v(m.length), m, msgpack.encode([]))));
      await until(() => ws.frames().some((f) => f.id === 2 && (f.type === F.RESPONSE || f.type === F.ERROR)));
      const answer = ws.frames().find((f) => f.id === 2);
      assert.equal(answer.type, F.RESPONSE, answer.type === F.ERROR ? F.decodeError(answer.payload).message : "");
      assert.equal(msgpack.decode(answer.payload), 42);
    } finally {
      await peer.close();
    }
  });

  test("a call from the server with an id of our parity closes the connection (PROTOCOL_ERROR)", async () => {
    const { peer, ws } = await open();
    let stop;
    const source = (async function* () {
      yield 1;
      await new Promise((r) => (stop = r));
    })();
    const id = await peer.sendStream(source);
    peer.register("gen", function* () {
      yield 1;
    });
    const m = F.utf8("gen");
    ws.deliver(F.encodeFrame(F.REQUEST, F.FLAG_STREAM, id, cat(v(m.length), m, msgpack.encode([]))));
    await until(() => peer.state === "closed");
    stop?.();
    assert.deepEqual(goaway(ws), [1, "call id of the wrong parity"]);
    assert.equal(ws.closeCode, 1002);
  });

  test("PINGs while the server does not read: the PONGs due are bounded (LIMIT_EXCEEDED), the socket is not written past maxBufferedAmount", async () => {
    const { peer, ws } = await open();
    ws.bufferedAmount = 2 << 20; // the server reads nothing
    const before = ws.sent.length;
    for (let i = 0; i < 3000 && peer.state !== "closed"; i++) {
      ws.deliver(F.encodeFrame(F.PING, 0, 0, new Uint8Array(8)));
      await Promise.resolve(); // the flush of control frames (a microtask)
    }
    await until(() => peer.state === "closed");
    // at most the GOAWAY went out once the buffer was full
    assert.ok(ws.sent.length - before <= 1, `${ws.sent.length - before} messages written past maxBufferedAmount`);
    assert.equal(ws.closeCode, 1008);
    await assert.rejects(peer.call("x"), (e) => e instanceof ConnectionClosed && /PONG/.test(e.message));
  });

  test("compressed items are held as they came until read: a slow reader of compressible data stays within maxConnectionMemory", async () => {
    const { peer, ws } = await open({ compression: true, maxConnectionMemory: 1 << 20 }, [[7, 1]]);
    try {
      const rs = peer.stream("zeros");
      await until(() => ws.frames().some((f) => f.type === F.REQUEST));
      const id = ws.frames().find((f) => f.type === F.REQUEST).id;
      const packed = deflateSync(new Uint8Array(512 << 10));
      const flags = F.FLAG_RAW | F.FLAG_COMPRESSED;
      const parts = [];
      for (let i = 0; i < 8; i++) parts.push(F.encodeFrame(F.STREAM_DATA, flags | (i === 0 ? F.FLAG_OPEN : 0), id, packed));
      parts.push(F.encodeFrame(F.STREAM_END, 0, id, new Uint8Array(0)));
      ws.deliver(F.concat(parts));
      await sleep(200); // the reader is slow
      assert.equal(peer.state, "open", goaway(ws)?.[1]);
      const got = await rs.toArray();
      assert.deepEqual(
        got.map((x) => x.length),
        Array(8).fill(512 << 10),
      );
    } finally {
      await peer.close();
    }
  });

  test("errors of ended streams not yet read count against maxConnectionMemory (LIMIT_EXCEEDED)", async () => {
    const { peer, ws } = await open({ maxConnectionMemory: 1 << 20 });
    const message = "e".repeat(200 << 10);
    for (let i = 0; i < 8 && peer.state !== "closed"; i++) {
      ws.deliver(F.encodeFrame(F.STREAM_ERROR, F.FLAG_OPEN, 2 * i + 2, F.encodeError("ValueError", message)));
    }
    const closed = peer.state === "closed";
    if (!closed) await peer.close();
    assert.ok(closed, "the connection is still open");
    const [code, reason] = goaway(ws);
    assert.equal(code, 5);
    assert.match(reason, /maxConnectionMemory/);
  });

  test("a streaming call's timer and abort listener go when the connection closes, read or not", async () => {
    const { peer, ws } = await open();
    const ac = new AbortController();
    const timers = () => process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;
    const base = timers();
    const rs = peer.with({ timeout: 600000, signal: ac.signal }).stream("forever");
    assert.equal(timers(), base + 1);
    assert.equal(getEventListeners(ac.signal, "abort").length, 1);
    await peer.close();
    await sleep(20); // the fake socket's close event
    assert.equal(getEventListeners(ac.signal, "abort").length, 0);
    assert.equal(timers(), base);
    await assert.rejects(rs.next(), ConnectionClosed);
    assert.equal(ws.readyState, 3);
  });
});
