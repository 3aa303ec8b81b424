// Regression tests of the TypeScript client against a real Python fastrpc server
// (js/test/_fixture_server.py, with the limits each case needs, in a child process on
// 127.0.0.1, stopped by its pid): what is pending settles when the connection goes,
// closed or given-up calls and claims give their slots back, call options cover the
// wait for a call slot, oversized stream items and compressed ones that do not inflate
// fail only their stream, GOAWAY codes and the frames and messages after a GOAWAY,
// concurrent next(), argument checks, and the reconnect backoff of a flapping link.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { connect, frames, ConnectionClosed, PayloadTooLarge, ProtocolError, RemoteError } from "../dist/index.js";
import { HERE, sleep, startPython, stop } from "./helpers.mjs";

const fixture = (args = []) => startPython("_fixture_server.py", args, { dir: HERE });

/** `p`, or a rejection when it is still pending after `ms`. */
function within(p, ms, what = "the promise") {
  let t;
  const timer = new Promise((_, reject) => {
    t = setTimeout(() => reject(new Error(`${what} still pending after ${ms} ms`)), ms);
  });
  return Promise.race([p, timer]).finally(() => clearTimeout(t));
}

/** `p`, marked as handled: a test that fails before it awaits `p` reports its own error. */
function observed(p) {
  p.catch(() => undefined);
  return p;
}

async function until(cond, ms = 5000) {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await sleep(10);
  }
}

describe("regressions", { timeout: 60000 }, () => {
  let server;
  let url;
  before(async () => {
    server = await fixture();
    url = `ws://127.0.0.1:${server.port}`;
  });
  after(async () => {
    await stop(server);
  });

  test("a stream claimed with receiveStream() before it arrives fails when the connection closes", async () => {
    const peer = await connect(url, { keepaliveInterval: null, reconnect: false });
    const id = await peer.call("push_later", 30, 3); // opens in 30 s
    const rs = peer.receiveStream(id);
    const next = rs.next();
    const failed = assert.rejects(within(next, 3000, "next()"), ConnectionClosed);
    await sleep(50);
    await peer.close();
    await failed;
  });

  test("ping() in flight fails with ConnectionClosed when the connection is lost", async () => {
    const own = await fixture(["--no-resume"]);
    try {
      const peer = await connect(`ws://127.0.0.1:${own.port}`, { keepaliveInterval: null, reconnect: false });
      process.kill(own.proc.pid, "SIGSTOP"); // no PONG can come
      const ping = peer.ping();
      const failed = assert.rejects(within(ping, 5000, "ping()"), ConnectionClosed);
      await sleep(100);
      const exited = new Promise((r) => own.proc.once("exit", r));
      process.kill(own.proc.pid, "SIGKILL"); // then the server dies: the socket closes
      await exited;
      await failed;
      assert.equal(peer.state, "closed");
    } finally {
      await stop(own);
    }
  });

  test("a receiveStream() closed before its stream arrives closes it on arrival and gives its slot back", async () => {
    // maxStreams 1: the server can open one stream at a time towards us
    const peer = await connect(url, { keepaliveInterval: null, settings: { maxStreams: 1 } });
    try {
      await peer.call("reset");
      const id = await peer.call("push_later", 0.2, 1e9); // endless, opens in 0.2 s
      const rs = peer.receiveStream(id);
      await rs.return(); // given up before it came
      await until(async () => (await peer.call("state")).closed === 1, 5000); // STREAM_CLOSE reached its producer
      assert.equal(peer.stats().inStreams, 0);
      // the slot came back: the server can open another stream
      const id2 = await within(peer.call("push", 3), 3000, "push (a stream slot)");
      assert.deepEqual(await within(peer.receiveStream(id2).toArray(), 3000, "the second stream"), [0, 1, 2]);
    } finally {
      await peer.close();
    }
  });

  test("a streaming call closed while it waits for a call slot is never sent; its slot is not taken", async () => {
    const own = await fixture(["--max-pending", "2"]);
    try {
      const peer = await connect(`ws://127.0.0.1:${own.port}`, { keepaliveInterval: null });
      try {
        const busy = observed(Promise.all([peer.call("sleep", 0.3), peer.call("sleep", 0.3)])); // both call slots taken
        const rs = peer.stream("produce", 1e9);
        await rs.return(); // the reader gives up before a slot frees
        await busy;
        await sleep(300);
        assert.equal(peer.stats().calls, 0);
        assert.equal((await within(peer.call("state"), 3000, "state()")).produced, 0, "the closed call was sent");
        assert.deepEqual(
          await within(Promise.all([peer.call("add", 1, 2), peer.call("add", 2, 3)]), 3000, "calls"),
          [3, 5],
        );
      } finally {
        await peer.close();
      }
    } finally {
      await stop(own);
    }
  });

  test("AbortSignal and timeout act while a call waits for a call slot; an aborted signal rejects at once", async () => {
    const own = await fixture(["--max-pending", "1"]);
    try {
      const peer = await connect(`ws://127.0.0.1:${own.port}`, { keepaliveInterval: null });
      try {
        const busy = observed(peer.call("sleep", 1.5)); // the only call slot, for 1.5 s
        const t0 = performance.now();
        const ac = new AbortController();
        setTimeout(() => ac.abort(), 100);
        const aborted = observed(peer.with({ signal: ac.signal }).call("sleep", 5));
        const timed = observed(peer.with({ timeout: 200 }).call("sleep", 5));
        const stream = observed(peer.with({ signal: ac.signal }).stream("produce", 5).toArray());
        const streamTimed = observed(peer.with({ timeout: 200 }).stream("produce", 5).toArray());
        await Promise.all([
          assert.rejects(within(aborted, 1000, "the aborted call"), (e) => e.name === "AbortError"),
          assert.rejects(within(timed, 1000, "the timed call"), (e) => e.name === "TimeoutError"),
          assert.rejects(within(stream, 1000, "the aborted stream"), (e) => e.name === "AbortError"),
          assert.rejects(within(streamTimed, 1000, "the timed stream"), (e) => e.name === "TimeoutError"),
        ]);
        assert.ok(performance.now() - t0 < 1000, "they waited for the slot");
        const pre = new AbortController();
        pre.abort();
        await assert.rejects(within(peer.with({ signal: pre.signal }).call("sleep", 5), 100, "a pre-aborted call"), (e) => e.name === "AbortError");
        await assert.rejects(
          within(peer.with({ signal: pre.signal }).stream("produce", 5).next(), 100, "a pre-aborted stream"),
          (e) => e.name === "AbortError",
        );
        assert.equal(await busy, "slept");
        assert.equal(await within(peer.call("add", 1, 1), 3000, "a call after"), 2);
        const st = await peer.call("state");
        assert.equal(st.sleeps, 1, "a call given up while it waited was sent");
        assert.equal(st.produced, 0, "a stream given up while it waited was sent");
        assert.equal(peer.stats().calls, 0);
      } finally {
        await peer.close();
      }
    } finally {
      await stop(own);
    }
  });

  test("a stream item over the server's max_item_size fails that stream only (PayloadTooLarge), not the connection", async () => {
    // items over its frame limit go in fragments, which the server holds to max_item_size
    const own = await fixture(["--no-resume", "--max-item-size", "100000", "--max-frame-size", "65536"]);
    try {
      const peer = await connect(`ws://127.0.0.1:${own.port}`, { keepaliveInterval: null, reconnect: false });
      try {
        assert.equal(peer.peerSettings.maxItemSize, 100000);
        const other = observed(peer.call("sleep", 0.5));
        const id = await peer.sendStream([new Uint8Array(10), new Uint8Array(200_000)]);
        await assert.rejects(
          within(peer.call("total", id), 5000, "total()"),
          (e) => e instanceof RemoteError && /PayloadTooLarge/.test(e.message),
        );
        // a generator may catch it at its yield and go on
        let caught = null;
        const id2 = await peer.sendStream((async function* () {
          yield "a";
          try {
            yield new Uint8Array(200_000);
          } catch (e) {
            caught = e;
            yield "bc";
          }
        })());
        assert.deepEqual(await within(peer.call("total", id2), 5000, "total()"), [3, 2]);
        assert.ok(caught instanceof PayloadTooLarge, String(caught));
        // a channel's input too
        const ch = peer.channel("lengths", [new Uint8Array(5), new Uint8Array(200_000)]);
        const lengths = [];
        await assert.rejects(
          within((async () => {
            for await (const n of ch) lengths.push(n);
          })(), 5000, "the channel"),
          (e) => e instanceof RemoteError && /PayloadTooLarge/.test(e.message),
        );
        assert.deepEqual(lengths, [5]);
        assert.equal(await within(other, 3000, "an unrelated call"), "slept");
        assert.equal(peer.state, "open");
      } finally {
        await peer.close();
      }
    } finally {
      await stop(own);
    }
  });

  test("a GOAWAY's error code becomes ConnectionClosed.code (the Python client's close codes)", async () => {
    const peer = await connect(url, { keepaliveInterval: null, reconnect: false });
    const pending = peer.call("sleep", 5);
    // a frame of an unknown type: the server answers GOAWAY PROTOCOL_ERROR (1 -> 1002)
    peer["ws"].send(frames.encodeFrame(0x7, 0, 0, new Uint8Array(0)));
    await assert.rejects(within(pending, 5000, "the call"), (e) => {
      assert.ok(e instanceof ConnectionClosed, String(e));
      assert.match(e.message, /GOAWAY \(code 1/);
      assert.equal(e.code, 1002);
      return true;
    });
  });

  test("the frames after a GOAWAY in the same message are handled before the connection closes", async () => {
    // farewell: the server closes in the loop pass that queued the last items, so they
    // leave after its GOAWAY, in one message; the Python client reads them all
    const peer = await connect(url, { keepaliveInterval: null, reconnect: false });
    const got = [];
    await assert.rejects(
      within((async () => {
        for await (const x of peer.stream("farewell", 5)) got.push(x);
      })(), 3000, "the stream"),
      (e) => e instanceof ConnectionClosed && /GOAWAY \(code 0: going away\)/.test(e.message),
    );
    assert.deepEqual(got, [0, 1, 2, 3, 4]);
    assert.equal(peer.state, "closed");
  });

  test("the stream items in the messages after a GOAWAY's reach the stream, in order, before it fails", async () => {
    // farewell_bulk: the server closes right after queueing the last of n items (its
    // stream buffer holds 1 MiB, past the 128 KiB of stream data a message carries):
    // its GOAWAY leaves, then several messages of items, then its close frame. The
    // Python client reads them all; each one here, in order, then the GOAWAY's error.
    const own = await fixture(["--stream-buffer-size", 1 << 20]);
    try {
      for (const [n, size] of [[64, 8192], [64, 64 << 10]]) {
        const peer = await connect(`ws://127.0.0.1:${own.port}`, {
          keepaliveInterval: null,
          reconnect: false,
          settings: { initialStreamWindow: 8 << 20 }, // no wait for credit
        });
        const got = [];
        await assert.rejects(
          within((async () => {
            for await (const x of peer.stream("farewell_bulk", n, size)) got.push(x);
          })(), 10000, "the stream"),
          (e) => e instanceof ConnectionClosed && /GOAWAY \(code 0: going away\)/.test(e.message),
        );
        assert.equal(got.length, n, `${got.length} of ${n} items of ${size} B`);
        got.forEach((x, i) => {
          assert.equal(x.length, size);
          assert.equal(new DataView(x.buffer, x.byteOffset, 4).getUint32(0), i);
          assert.equal(x[size - 1], i % 256);
        });
        assert.equal(peer.state, "closed");
      }
    } finally {
      await stop(own);
    }
  });

  test("a compressed stream item that does not inflate fails that stream only (COMPRESSION_ERROR), as in the Python client", async () => {
    const peer = await connect(url, { keepaliveInterval: null, compression: true, settings: { maxItemSize: 65536 } });
    try {
      // corrupt, then a valid zlib payload of 1 MiB (past our maxItemSize)
      for (const [inflatesTo, why] of [[0, /corrupt compressed payload/], [1 << 20, /too large/]]) {
        await peer.call("reset");
        const got = [];
        await assert.rejects(
          within((async () => {
            for await (const x of peer.stream("spoiled", inflatesTo)) got.push(x);
          })(), 3000, "the stream"),
          (e) => e instanceof ProtocolError && e.code === "COMPRESSION_ERROR" && why.test(e.message),
        );
        assert.deepEqual(got, [0]);
        assert.equal(peer.state, "open");
        assert.equal(await within(peer.call("add", 1, 2), 3000, "a call after"), 3);
        await until(async () => (await peer.call("state")).closed === 1, 3000); // its sender was stopped
        assert.equal(peer.stats().inStreams, 0);
      }
    } finally {
      await peer.close();
    }
  });

  test("next() calls in flight together on one ReceiveStream each settle, in order", async () => {
    const peer = await connect(url, { keepaliveInterval: null });
    try {
      const rs = peer.stream("count", 3, 0.1);
      const [a, b, c, d] = [rs.next(), rs.next(), rs.next(), rs.next()];
      assert.deepEqual(await within(Promise.all([a, b, c, d]), 3000, "next()"), [
        { done: false, value: 0 },
        { done: false, value: 1 },
        { done: false, value: 2 },
        { done: true, value: undefined },
      ]);
      // return() while a next() waits ends it
      const rs2 = peer.stream("count", 3, 10);
      const waiting = rs2.next();
      await sleep(50);
      await rs2.return();
      assert.deepEqual(await within(waiting, 1000, "next() after return()"), { done: true, value: undefined });
    } finally {
      await peer.close();
    }
  });

  test("sendStream with a bad id is refused before it takes a stream slot", async () => {
    const own = await fixture(["--max-streams", "4"]);
    try {
      const peer = await connect(`ws://127.0.0.1:${own.port}`, { keepaliveInterval: null });
      try {
        assert.equal(peer.peerSettings.maxStreams, 4);
        for (let k = 0; k < 6; k++) await assert.rejects(within(peer.sendStream([1], { id: 2 }), 1000, "sendStream"), RangeError);
        await assert.rejects(peer.sendStream([1], { id: 1.5 }), RangeError);
        const id = await within(peer.sendStream([1, 2, 3]), 3000, "a valid sendStream");
        assert.deepEqual(await within(peer.call("total", id), 3000, "total()"), [6, 3]);
      } finally {
        await peer.close();
      }
    } finally {
      await stop(own);
    }
  });

  test("varints of 2^62 and more are refused; a timeout past setTimeout's limit is refused", async () => {
    for (const n of [2 ** 62, 2 ** 63, 2 ** 64, Number.MAX_VALUE, Infinity]) {
      assert.throws(() => frames.encodeVarint(n), RangeError, String(n));
    }
    const top = 2 ** 62 - 512; // the largest double below 2^62
    assert.equal(frames.decodeVarint(frames.encodeVarint(top), 0)[0], BigInt(top));
    const peer = await connect(url, { keepaliveInterval: null });
    try {
      for (const timeout of [3e9, 2 ** 31, -1, NaN, Infinity]) {
        await assert.rejects(peer.with({ timeout }).call("add", 1, 2), RangeError, String(timeout));
        assert.throws(() => peer.with({ timeout }).stream("count", 1, 0), RangeError, String(timeout));
      }
      assert.equal(await peer.with({ timeout: 2 ** 31 - 1 }).call("add", 1, 2), 3);
      assert.equal(peer.stats().calls, 0);
    } finally {
      await peer.close();
    }
  });

  test("connections dropped right after they come back meet the backoff and maxAttempts", async () => {
    let drops = 0;
    const dropSoon = (state, p) => {
      if (state !== "open" || p["ws"] === null) return;
      const ws = p["ws"];
      setTimeout(() => {
        drops++;
        ws.close(); // a link that fails right after every handshake
      }, 10);
    };
    const t0 = performance.now();
    const peer = await connect(url, {
      keepaliveInterval: null,
      reconnect: { initialDelay: 100, maxDelay: 400, jitter: 0, maxAttempts: 4 },
      onStateChange: dropSoon, // the first connection too
    });
    try {
      await until(async () => peer.state === "closed", 8000);
      const ms = performance.now() - t0;
      // 4 attempts: immediate, then 100, 200 and 400 ms (each counted, not a fresh first retry)
      assert.equal(peer.transports, 5);
      assert.ok(ms >= 650, `gave up after ${ms} ms`);
      assert.ok(drops <= 5, `${drops} drops`);
      await assert.rejects(peer.call("add", 1, 1), (e) => e instanceof ConnectionClosed && /maxAttempts/.test(e.message));
    } finally {
      await peer.close();
    }
  });
});
