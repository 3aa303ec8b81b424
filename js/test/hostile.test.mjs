// The TypeScript client against a scripted hostile server, in process: a fake WebSocket
// (options.WebSocket) whose "server" side is each test's own frames, delivered exactly
// when the test says, with a bufferedAmount the test sets (on a real socket it depends on
// the kernel's buffers: hostile_socket.test.mjs has a server that stops reading), and
// any close code taken (as the `ws` package's; Node's own and browsers' refuse 1008 and
// the like). Each case: the client keeps its documented bounds, closes the one
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

  test("a message over settings.maxMessageSize is refused before it is decoded: GOAWAY FRAME_TOO_LARGE, close 1009 where the WebSocket sends that code", async () => {
    const settings = { maxFrameSize: 1024, maxMessageSize: 4096 };
    const { peer, ws } = await open({ settings });
    // no frames at all: decoded, it would be a "truncated frame"; its size comes first
    ws.deliver(new Uint8Array(4097).fill(0xff));
    assert.equal(peer.state, "closed");
    const reason = "message of 4097 bytes exceeds the client's limit of 4096 bytes (maxMessageSize)";
    assert.deepEqual(goaway(ws), [4, reason]);
    assert.equal(ws.closeCode, 1009);
    assert.equal(ws.closeReason, reason);
    await assert.rejects(peer.call("x"), (e) => e instanceof ConnectionClosed && e.code === 1009 && e.message === `protocol error: ${reason} (FRAME_TOO_LARGE)`);
    // a text message too, the JSON welcome a client skips in its handshake included
    FakeWS.last = null;
    const connecting = connect("ws://fake", { WebSocket: FakeWS, keepaliveInterval: null, reconnect: false, settings });
    await until(() => FakeWS.last !== null && FakeWS.last.sent.length > 0);
    FakeWS.last.onmessage({ data: '{"category":"welcome","pad":"' + "x".repeat(5000) + '"}' });
    await assert.rejects(connecting, (e) => e instanceof ConnectionClosed && e.code === 1009 && /text message of at least 5031 bytes exceeds/.test(e.message));
    assert.equal(FakeWS.last.closeCode, 1009);
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

// Regressions: a resume handshake the client must refuse, received items pinning their
// message, notification handlers piling up, and answers piling up while the server does
// not read.
describe("a scripted hostile server: bounds and resume", { timeout: 30000 }, () => {
  const sessionFrame = (type, flags, token, pos) => F.encodeFrame(type, flags, 0, cat(token, v(pos)));

  test("a protocol error in the resume handshake ends the session, not the peer: the call in flight fails with it, the next attempt starts a new session", async () => {
    FakeWS.last = null;
    const connecting = connect("ws://fake", { WebSocket: FakeWS, keepaliveInterval: null, reconnect: { initialDelay: 10, maxDelay: 20, maxAttempts: 5 } });
    await until(() => FakeWS.last !== null && FakeWS.last.sent.length > 0);
    const ws1 = FakeWS.last;
    const token1 = new Uint8Array(32).fill(1);
    ws1.deliver(cat(hello([[9, 1]]), sessionFrame(F.RESUME_OK, F.FLAG_NEW, token1, 0)));
    const peer = await connecting;
    try {
      const call = peer.call("add", 1, 2).then(
        () => new Error("the call succeeded"),
        (e) => e,
      );
      await until(() => ws1.frames().some((f) => f.type === F.REQUEST));
      ws1.close(1012, "going away, come back"); // the server drops the transport
      await until(() => FakeWS.last !== ws1 && FakeWS.last.sent.length > 0);
      const ws2 = FakeWS.last;
      const resume = ws2.frames();
      assert.deepEqual(resume.map((f) => f.type), [F.HELLO, F.RESUME]);
      assert.deepEqual(resume[1].payload.subarray(0, 32), token1);
      // RESUME_OK at a position past the 1 frame the client sent: a protocol error
      ws2.deliver(cat(hello([[9, 1]]), sessionFrame(F.RESUME_OK, 0, new Uint8Array(32).fill(2), 99)));
      const e = await Promise.race([call, sleep(1000).then(() => new Error("the call is still in flight"))]);
      assert.ok(e instanceof ConnectionClosed, String(e));
      assert.equal(e.code, 1002);
      assert.match(e.message, /protocol error: resume position 99 is past the 1 frames sent/);
      assert.deepEqual(goaway(ws2), [1, "resume position 99 is past the 1 frames sent"]);
      assert.equal(ws2.closeCode, 1002);
      // the next attempt starts a new session: HELLO alone, the broken token never again
      await until(() => FakeWS.last !== ws2 && FakeWS.last.sent.length > 0, 1000);
      const ws3 = FakeWS.last;
      assert.deepEqual(ws3.frames().map((f) => f.type), [F.HELLO]);
      ws3.deliver(cat(hello([[9, 1]]), sessionFrame(F.RESUME_OK, F.FLAG_NEW, new Uint8Array(32).fill(3), 0)));
      await until(() => peer.state === "open", 1000);
      const answer = peer.call("add", 2, 3);
      await until(() => ws3.frames().some((f) => f.type === F.REQUEST));
      const req = ws3.frames().find((f) => f.type === F.REQUEST);
      ws3.deliver(F.encodeFrame(F.RESPONSE, 0, req.id, msgpack.encode(5)));
      assert.equal(await answer, 5);
    } finally {
      await peer.close();
    }
  });

  test("an unread item is copied out of its message when much smaller: held items do not pin the messages they came in", async () => {
    const v8 = await import("node:v8");
    const vm = await import("node:vm");
    v8.setFlagsFromString("--expose-gc");
    const gc = vm.runInNewContext("gc");
    const { peer, ws } = await open();
    try {
      const refs = [];
      // each message: a 1 MiB extension frame (skipped) and one 600-byte item on stream 2,
      // which nobody reads yet: 600 bytes count against maxConnectionMemory, the message is 1 MiB
      const send = (i) => {
        const item = new Uint8Array(600).fill(i);
        const msg = cat(F.encodeFrame(0x40, 0, 0, new Uint8Array((1 << 20) - 64)), F.encodeFrame(F.STREAM_DATA, F.FLAG_RAW | (i === 0 ? F.FLAG_OPEN : 0), 2, item));
        refs.push(new WeakRef(msg.buffer));
        ws.onmessage({ data: msg.buffer });
      };
      for (let i = 0; i < 32; i++) send(i);
      assert.equal(peer.state, "open", goaway(ws)?.[1]);
      let pinned = 32;
      for (let i = 0; i < 10 && pinned > 0; i++) {
        await sleep(10);
        gc();
        pinned = refs.filter((r) => r.deref() !== undefined).length;
      }
      assert.equal(pinned, 0, `${pinned} MiB of messages kept alive by 32 unread items of 600 bytes`);
      const rs = await peer.acceptStream();
      const kept = [];
      for (let i = 0; i < 32; i++) {
        const { value } = await rs.next();
        assert.equal(value.length, 600);
        assert.ok(value.every((b) => b === i));
        kept.push(value);
      }
      // items handed to the application are copies too: kept, they pin nothing either
      for (let i = 0; i < 32; i++) send(32 + i);
      for (let i = 0; i < 32; i++) kept.push((await rs.next()).value);
      await sleep(10);
      gc();
      assert.equal(refs.filter((r) => r.deref() !== undefined).length, 0);
      assert.equal(kept.length, 64);
    } finally {
      await peer.close();
    }
  });

  test("async notification handlers still running are bounded by settings.maxPendingCalls (LIMIT_EXCEEDED)", async () => {
    const { peer, ws } = await open({ settings: { maxPendingCalls: 8 } });
    const release = [];
    let started = 0;
    peer.register("slow", () => {
      started++;
      return new Promise((r) => release.push(r));
    });
    const m = F.utf8("slow");
    const notify = F.encodeFrame(F.NOTIFY, 0, 0, cat(v(m.length), m, msgpack.encode([])));
    try {
      // 8 at once are within the bound; once they are done, 8 more are too
      ws.deliver(F.concat(Array(8).fill(notify)));
      await sleep(10);
      assert.equal(peer.state, "open", goaway(ws)?.[1]);
      for (const r of release.splice(0)) r();
      await sleep(10);
      ws.deliver(F.concat(Array(8).fill(notify)));
      await sleep(10);
      assert.equal(peer.state, "open", goaway(ws)?.[1]);
      // a flood while 8 still run: the connection is closed at the ninth
      for (let i = 0; i < 1000 && peer.state !== "closed"; i++) ws.deliver(notify);
      assert.equal(peer.state, "closed", "1,000 more notifications while 8 handlers still run");
      assert.ok(started <= 17, `${started} handlers started`);
      const [code, reason] = goaway(ws);
      assert.equal(code, 5);
      assert.match(reason, /notification handlers.*maxPendingCalls/);
      assert.equal(ws.closeCode, 1008);
    } finally {
      for (const r of release.splice(0)) r();
      await peer.close();
    }
  });

  test("answers the server does not read are bounded by maxOutputBacklog (LIMIT_EXCEEDED); a server that reads them is not closed", async () => {
    const { peer, ws } = await open({ maxOutputBacklog: 1 << 20 });
    const big = new Uint8Array(16 << 10);
    let answered = 0;
    peer.register("get", () => {
      answered++;
      return big;
    });
    const m = F.utf8("get");
    let id = 0;
    const req = () => F.encodeFrame(F.REQUEST, 0, (id += 2), cat(v(m.length), m, msgpack.encode([])));
    try {
      // a server that reads: 128 answers of 16 KiB (2 MiB) at once go out
      ws.deliver(F.concat(Array.from({ length: 128 }, req)));
      await until(() => ws.frames().filter((f) => f.type === F.RESPONSE).length === 128);
      assert.equal(peer.state, "open", goaway(ws)?.[1]);
      // it stops reading: past 1 MiB of answers waiting for it, the connection is closed
      ws.bufferedAmount = 2 << 20;
      for (let i = 0; i < 400 && peer.state !== "closed"; i++) {
        ws.deliver(req());
        await sleep(0);
      }
      assert.equal(peer.state, "closed", `${answered - 128} answers of 16 KiB wait for a server that does not read`);
      assert.ok(answered - 128 <= 70, `${answered - 128} answers queued`);
      const [code, reason] = goaway(ws);
      assert.equal(code, 5);
      assert.match(reason, /does not read.*maxOutputBacklog/);
      assert.equal(ws.closeCode, 1008);
    } finally {
      await peer.close();
    }
  });

  test("errors for unknown methods (answered at once) in one message are bounded by maxOutputBacklog too", async () => {
    const { peer, ws } = await open({ maxOutputBacklog: 256 << 10 });
    try {
      ws.bufferedAmount = 2 << 20; // the server does not read
      const pinged = peer.ping().catch((e) => e); // its PING finds the socket full
      await sleep(0);
      const m = F.utf8("nope");
      const parts = [];
      for (let i = 1; i <= 20000; i++) parts.push(F.encodeFrame(F.REQUEST, 0, 2 * i, cat(v(m.length), m, msgpack.encode([]))));
      ws.deliver(F.concat(parts)); // 20,000 errors of ~40 bytes: 800 KB
      assert.equal(peer.state, "closed", "the message was answered whole");
      const [code, reason] = goaway(ws);
      assert.equal(code, 5);
      assert.match(reason, /does not read.*maxOutputBacklog/);
      assert.ok((await pinged) instanceof ConnectionClosed);
    } finally {
      await peer.close();
    }
  });
});
