// The TypeScript client against a real Python fastrpc server (tests/_js_server.py) in a
// child process on 127.0.0.1: calls, notifications, errors, cancellation, streams both
// ways with credit (a slow consumer makes the Python producer wait), channels, calls
// from the server, and resume through a cutting proxy with nothing lost or repeated;
// hostile servers (tests/_js_hostile_server.py), one of them breaking the resume handshake.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { connect, ConnectionClosed, RemoteError, RemoteStreamError, ResumeFailed } from "../dist/index.js";
import { sleep, startPython, stop } from "./helpers.mjs";

let server;
let url;

before(async () => {
  server = await startPython("_js_server.py", ["--compression"]);
  url = `ws://127.0.0.1:${server.port}`;
});

after(async () => {
  await stop(server);
});

async function withPeer(fn, options = {}) {
  const peer = await connect(url, { keepaliveInterval: null, ...options });
  try {
    return await fn(peer);
  } finally {
    await peer.close();
  }
}

async function until(cond, ms = 5000) {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await sleep(10);
  }
}

describe("calls", { timeout: 20000 }, () => {
  test("a JSON welcome before the server's HELLO (json_wait 0: a late HELLO) is skipped", async () => {
    const eager = await startPython("_js_server.py", ["--json-wait", "0"]);
    try {
      const peer = await connect(`ws://127.0.0.1:${eager.port}`, { keepaliveInterval: null });
      try {
        assert.equal(await peer.call("add", 2, 3), 5);
      } finally {
        await peer.close();
      }
    } finally {
      await stop(eager);
    }
  });

  test("results, values both ways, raw bytes untouched, JSON codec", async () => {
    await withPeer(async (peer) => {
      assert.equal(await peer.call("add", 2, 3), 5);
      const value = { a: [1, -2, 2.5, "é", null, true, false], big: 2 ** 40, nested: { x: [] } };
      assert.deepEqual(await peer.call("echo", value), value);
      const bytes = Uint8Array.from({ length: 300 }, (_, i) => i & 255);
      assert.deepEqual(await peer.call("echo", bytes), bytes);
      const many = await Promise.all(Array.from({ length: 200 }, (_, i) => peer.call("add", i, 1)));
      assert.deepEqual(many, Array.from({ length: 200 }, (_, i) => i + 1));
    });
    await withPeer(async (peer) => {
      assert.deepEqual(await peer.call("echo", { j: [1, "two"] }), { j: [1, "two"] });
    }, { codec: "json" });
  });

  test("errors: RemoteError with the remote type and message", async () => {
    await withPeer(async (peer) => {
      await assert.rejects(peer.call("fail", "boom"), (e) => e instanceof RemoteError && e.type === "ValueError" && e.remoteMessage === "boom");
      await assert.rejects(peer.call("no_such_method"), (e) => e instanceof RemoteError);
      assert.equal(await peer.call("add", 1, 1), 2); // the connection lives on
    });
  });

  test("notify reaches the handler; nothing comes back", async () => {
    await withPeer(async (peer) => {
      await peer.call("reset");
      peer.notify("note", "hello");
      peer.notify("note", { n: 2 });
      await until(async () => (await peer.call("state")).notes.length === 2);
      assert.deepEqual((await peer.call("state")).notes, ["hello", { n: 2 }]);
    });
  });

  test("timeout and AbortSignal cancel the remote handler", async () => {
    await withPeer(async (peer) => {
      await peer.call("reset");
      await assert.rejects(peer.with({ timeout: 100 }).call("sleep", 30), (e) => e.name === "TimeoutError");
      const ac = new AbortController();
      const p = peer.with({ signal: ac.signal }).call("sleep", 30);
      await sleep(50);
      ac.abort();
      await assert.rejects(p, (e) => e.name === "AbortError");
      await until(async () => (await peer.call("state")).cancelled === 2);
      assert.equal((await peer.call("state")).running, 0);
    });
  });

  test("calls from the server to registered functions", async () => {
    await withPeer(async (peer) => {
      peer.register("greet", async (name) => `hello ${name}`);
      peer.register("explode", () => {
        throw new TypeError("nope");
      });
      assert.equal(await peer.call("callback", "greet", "ada"), "hello ada");
      await assert.rejects(peer.call("callback", "explode", 1), (e) => e instanceof RemoteError && /TypeError/.test(e.message));
    });
  });

  test("closing fails what is pending with ConnectionClosed", async () => {
    const peer = await connect(url, { keepaliveInterval: null });
    const rejected = assert.rejects(peer.call("sleep", 10), ConnectionClosed);
    await peer.close();
    await rejected;
    assert.throws(() => peer.notify("note", 1), ConnectionClosed);
    assert.equal(peer.state, "closed");
  });
});

describe("streams", { timeout: 30000 }, () => {
  test("a stream's items in order; STREAM_ERROR as RemoteStreamError after the items", async () => {
    await withPeer(async (peer) => {
      const got = [];
      for await (const x of peer.stream("count", 1000)) got.push(x);
      assert.deepEqual(got, Array.from({ length: 1000 }, (_, i) => i));
      const items = [];
      await assert.rejects(async () => {
        for await (const x of peer.stream("failing_stream", 3)) items.push(x);
      }, (e) => e instanceof RemoteStreamError && e.type === "RuntimeError");
      assert.deepEqual(items, [0, 1, 2]);
    });
  });

  test("breaking the loop cancels the server's generator", async () => {
    await withPeer(async (peer) => {
      await peer.call("reset");
      let n = 0;
      for await (const x of peer.stream("produce", 1_000_000)) {
        assert.equal(x, n++);
        if (n === 100) break;
      }
      await until(async () => (await peer.call("state")).cancelled === 1);
      const st = await peer.call("state");
      assert.ok(st.produced < 100_000, `produced ${st.produced}`);
      assert.equal(peer.stats().calls, 0);
    });
  });

  test("a slow consumer makes the Python producer wait (credit), then gets every item", async () => {
    await withPeer(async (peer) => {
      await peer.call("reset");
      const N = 60_000;
      const size = 100; // ~140 bytes of credit an item: a 256 KiB window holds ~1,900
      const it = peer.stream("produce", N, size)[Symbol.asyncIterator]();
      let read = 0;
      const samples = [];
      for (let round = 0; round < 4; round++) {
        for (let i = 0; i < 50; i++) {
          const r = await it.next();
          assert.equal(r.value[0], read++);
        }
        await sleep(150); // a slow reader: the producer must stop
        const st = await peer.call("state");
        samples.push(st.produced - read);
      }
      // what the server produced beyond what was read is bounded by the windows and
      // buffers (stream window, its 64 KiB send buffer), not by N
      for (const ahead of samples) assert.ok(ahead < 6000, `producer ran ${ahead} items ahead: ${samples}`);
      assert.ok(Math.abs(samples[3] - samples[2]) < 600, `still producing while nobody reads: ${samples}`);
      for (;;) {
        const r = await it.next();
        if (r.done) break;
        assert.equal(r.value[0], read++);
      }
      assert.equal(read, N);
    });
  });

  test("channels: the handler reads our items and yields back", async () => {
    await withPeer(async (peer) => {
      async function* source() {
        for (let i = 0; i < 5000; i++) yield i;
      }
      let n = 0;
      for await (const x of peer.channel("double", source())) assert.equal(x, 2 * n++);
      assert.equal(n, 5000);
    });
  });

  test("sendStream: a client stream under the server's credit, raw bytes too", async () => {
    await withPeer(async (peer) => {
      const N = 50_000;
      const id = await peer.sendStream((function* () {
        for (let i = 0; i < N; i++) yield i;
      })(), { priority: 1 });
      assert.deepEqual(await peer.call("total", id), [(N * (N - 1)) / 2, N]);
      const chunk = new Uint8Array(300_000); // larger than the window: fragmented
      const id2 = await peer.sendStream([chunk, chunk, new Uint8Array(0)]);
      assert.deepEqual(await peer.call("total", id2), [600_000, 3]);
    });
  });

  test("a Python receiver that does not read makes the JS producer wait (credit)", async () => {
    await withPeer(async (peer) => {
      let pulled = 0;
      const item = "y".repeat(1000); // ~1 KiB an item: a 256 KiB window takes ~250
      const id = await peer.sendStream((function* () {
        for (let i = 0; i < 20_000; i++) {
          pulled++;
          yield item;
        }
      })());
      await sleep(300); // nobody on the server has claimed the stream yet
      const early = pulled;
      await sleep(200);
      assert.equal(pulled, early, "the producer went on without credit");
      // window (256 KiB) + the stream's send buffer (64 KiB) at most, in items
      assert.ok(early < 400, `pulled ${early} items before the server read any`);
      const [bytes, n] = await peer.call("total", id); // reads it all
      assert.equal(n, 20_000);
      assert.equal(bytes, 20_000 * 1000);
    });
  });

  test("a small maxMessageSize (32 KiB) is what the Python server packs its messages to: items small and fragmented arrive whole, nothing is refused", async () => {
    let largest = 0;
    // Node's own WebSocket, watched: the size of every message the server sends
    class Watched extends WebSocket {
      constructor(u, p) {
        super(u, p);
        this.addEventListener("message", (ev) => (largest = Math.max(largest, ev.data.byteLength ?? 0)));
      }
    }
    await withPeer(
      async (peer) => {
        let n = 0;
        for await (const [i, pad] of peer.stream("produce", 200, 3000)) {
          assert.equal(i, n++);
          assert.equal(pad.length, 3000);
        }
        assert.equal(n, 200);
        n = 0;
        for await (const [i, pad] of peer.stream("produce", 8, 100_000)) {
          assert.equal(i, n++); // each item over the frame and message limits: in fragments
          assert.equal(pad.length, 100_000);
        }
        assert.equal(n, 8);
        assert.equal(peer.state, "open");
      },
      { WebSocket: Watched, settings: { maxFrameSize: 16 << 10, maxMessageSize: 32 << 10 } },
    );
    assert.ok(largest > 16 << 10 && largest <= 32 << 10, `largest message ${largest} bytes`);
  });

  test("compression (zlib, CompressionStream): both ways, fragmented items too", async () => {
    await withPeer(async (peer) => {
      let n = 0;
      for await (const [i, pad] of peer.stream("produce", 300, 5000)) {
        assert.equal(i, n++);
        assert.equal(pad, "x".repeat(5000));
      }
      assert.equal(n, 300);
      // decimal digits of an LCG: ~2.3x smaller packed, still larger than a 256 KiB
      // window, so the compressed item goes as fragments
      let x = 12345;
      const big = Array.from({ length: 1_000_000 }, () => ((x = (x * 1103515245 + 12345) % 2147483648), x % 10)).join("");
      const id = await peer.sendStream(["a".repeat(4000), big, "b".repeat(10)]);
      assert.deepEqual(await peer.call("total", id), [4000 + 1_000_000 + 10, 3]);
      const st = peer.stats();
      assert.ok(st.compressedIn >= 300, `compressed items in: ${st.compressedIn}`);
      assert.equal(st.compressedOut, 2);
    }, { compression: true });
    await withPeer(async (peer) => {
      for await (const _ of peer.stream("produce", 10, 5000));
      assert.equal(peer.stats().compressedIn, 0); // not offered: nothing compressed
    });
  });

  test("receiveStream: a stream the server sends", async () => {
    await withPeer(async (peer) => {
      const id = await peer.call("push", 3000);
      let n = 0;
      for await (const x of peer.receiveStream(id)) assert.equal(x, n++);
      assert.equal(n, 3000);
      const id2 = await peer.call("push", 5);
      const other = await peer.acceptStream(); // nobody claimed it
      assert.equal(other.id, id2);
      assert.deepEqual(await other.toArray(), [0, 1, 2, 3, 4]);
    });
  });

  test("a rate limit paces a sent stream", async () => {
    await withPeer(async (peer) => {
      const t0 = performance.now();
      const id = await peer.sendStream(Array.from({ length: 60 }, (_, i) => i), { rate: { rate: 200 }, priority: 0 });
      assert.deepEqual(await peer.call("total", id), [1770, 60]);
      const ms = performance.now() - t0;
      // 200 items/s with a burst of 20: the last of 60 leaves after ~200 ms
      assert.ok(ms >= 180, `60 items at 200/s took ${ms} ms`);
    });
  });
});

describe("resume", { timeout: 60000 }, () => {
  test("through a cutting proxy: every item exactly once, in order; calls complete", async () => {
    // ~12 cuts at 50..250 ms, and the first 4 connections each cut at one of their
    // first messages (handshakes, replays)
    const proxy = await startPython("_js_proxy.py", [server.port, 7, 0.05, 0.25, 12, 4]);
    try {
      const states = [];
      let peer;
      for (let attempt = 0; peer === undefined; attempt++) {
        try {
          peer = await connect(`ws://127.0.0.1:${proxy.port}`, {
            keepaliveInterval: 1000,
            keepaliveTimeout: 2000,
            reconnect: { initialDelay: 20, maxDelay: 200 },
            onStateChange: (s) => states.push(s),
          });
        } catch (e) {
          // the very first handshake may be cut: connect() fails and leaves nothing behind
          assert.ok(e instanceof ConnectionClosed && attempt < 5, String(e));
        }
      }
      try {
        const N = 40_000;
        const calls = [];
        let expected = 0;
        for await (const x of peer.stream("count", N, 0.00005)) {
          assert.equal(x, expected++, "an item lost or repeated");
          if (x % 2000 === 0) calls.push(peer.call("add", x, 1));
        }
        assert.equal(expected, N);
        assert.deepEqual(await Promise.all(calls), Array.from({ length: N / 2000 }, (_, i) => i * 2000 + 1));
        const sent = await peer.sendStream((function* () {
          for (let i = 0; i < 20_000; i++) yield i;
        })());
        assert.deepEqual(await peer.call("total", sent), [(20_000 * 19_999) / 2, 20_000]);
        assert.ok(peer.resumes >= 1, `no resume happened (${peer.transports} transports)`);
        assert.ok(states.includes("reconnecting"));
      } finally {
        await peer.close();
      }
    } finally {
      await stop(proxy);
    }
  });
});

describe("resume failed", { timeout: 30000 }, () => {
  test("a restarted server: what was in flight fails with ResumeFailed, the peer goes on", async () => {
    let own = await startPython("_js_server.py");
    const port = own.port;
    try {
      const peer = await connect(`ws://127.0.0.1:${port}`, {
        keepaliveInterval: null,
        reconnect: { initialDelay: 50, maxDelay: 200 },
      });
      try {
        assert.equal(await peer.call("add", 1, 2), 3);
        const pending = assert.rejects(peer.call("sleep", 30), ResumeFailed);
        const stream = peer.stream("count", 10, 1.0);
        const streamFails = assert.rejects(stream.toArray(), ResumeFailed);
        await sleep(100);
        own.proc.kill("SIGKILL");
        await stop(own);
        own = await startPython("_js_server.py", ["--port", port]);
        await pending;
        await streamFails;
        assert.equal(await peer.call("add", 2, 3), 5); // a new session on the new server
        assert.equal(peer.state, "open");
      } finally {
        await peer.close();
      }
    } finally {
      await stop(own);
    }
  });
});

describe("keepalive", { timeout: 30000 }, () => {
  test("the server's PINGs are answered; ping() measures a round trip", async () => {
    const own = await startPython("_js_server.py", ["--keepalive", "0.2"]);
    try {
      const peer = await connect(`ws://127.0.0.1:${own.port}`, { keepaliveInterval: null });
      try {
        await sleep(1200); // the server pings every 0.2 s and drops a peer that does not answer in 0.2 s
        assert.equal(await peer.call("add", 1, 1), 2);
        assert.equal(peer.transports, 1);
        assert.equal(peer.state, "open");
        const rtt = await peer.ping();
        assert.ok(rtt >= 0 && rtt < 1000, `rtt ${rtt}`);
      } finally {
        await peer.close();
      }
    } finally {
      await stop(own);
    }
  });

  test("a silent partition is noticed by keepalive; the session resumes on a new connection", async () => {
    const proxy = await startPython("_js_proxy.py", [server.port, 1, 0, 0, 0, 0]);
    try {
      const peer = await connect(`ws://127.0.0.1:${proxy.port}`, {
        keepaliveInterval: 100,
        keepaliveTimeout: 300,
        reconnect: { initialDelay: 20 },
      });
      try {
        const it = peer.stream("count", 2000, 0.0005)[Symbol.asyncIterator]();
        let n = 0;
        for (; n < 200; n++) assert.equal((await it.next()).value, n);
        process.kill(proxy.proc.pid, "SIGUSR1"); // nothing goes through any more, nothing is closed
        for (;;) {
          const r = await it.next();
          if (r.done) break;
          assert.equal(r.value, n++);
        }
        assert.equal(n, 2000);
        assert.ok(peer.resumes >= 1, "the partition was not noticed");
      } finally {
        await peer.close();
      }
    } finally {
      await stop(proxy);
    }
  });
});

describe("a hostile server", { timeout: 30000 }, () => {
  let hostile;
  before(async () => {
    hostile = await startPython("_js_hostile_server.py");
  });
  after(async () => {
    await stop(hostile);
  });

  const cases = [
    ["window", "stream flow-control window exceeded", 3],
    ["ping", "PING payload over 64 bytes", 1],
    ["type", "unknown frame type 0x7", 1],
    ["big", "frame too large", 4],
    ["open_twice", "stream opened twice", 9],
    ["flood", "over maxConnectionMemory (1048576)", 5],
  ];
  for (const [attack, reason, code] of cases) {
    test(`${attack}: the connection is closed (GOAWAY ${code}), calls fail with the cause`, async () => {
      const peer = await connect(`ws://127.0.0.1:${hostile.port}`, { keepaliveInterval: null, reconnect: false, maxConnectionMemory: 1 << 20 });
      const before = hostile.lines.length;
      await assert.rejects(peer.stream(attack).toArray(), (e) => e instanceof ConnectionClosed && e.message.includes(reason));
      assert.equal(peer.state, "closed");
      await until(async () => hostile.lines.length > before);
      assert.equal(hostile.lines.at(-1), `goaway ${code}`);
    });
  }

  test("linger: a server that sends GOAWAY and never closes is closed after closeTimeout; its items until then are read", async () => {
    const peer = await connect(`ws://127.0.0.1:${hostile.port}`, { keepaliveInterval: null, reconnect: false, closeTimeout: 500 });
    const before = hostile.lines.length;
    const t0 = Date.now();
    const got = [];
    let newCall = null;
    const reading = (async () => {
      for await (const x of peer.stream("linger")) {
        got.push(new DataView(x.buffer, x.byteOffset, 4).getUint32(0));
        // after the GOAWAY nothing new starts: a call fails at once with it
        if (got.length === 3) newCall = peer.call("add", 1, 2).then(() => null, (e) => e);
      }
    })();
    await assert.rejects(reading, (e) => e instanceof ConnectionClosed && /GOAWAY \(code 0: lingering\)/.test(e.message));
    const took = Date.now() - t0;
    assert.ok(took >= 400 && took < 5000, `closed after ${took} ms`);
    assert.equal(peer.state, "closed");
    assert.ok(got.length >= 3, `${got.length} items`);
    assert.deepEqual(got, [...got.keys()]);
    const e = await newCall;
    assert.ok(e instanceof ConnectionClosed && /GOAWAY \(code 0: lingering\)/.test(e.message), String(e));
    await until(async () => hostile.lines.length > before);
    assert.match(hostile.lines.at(-1), /^closed after \d+ items$/);
  });
});


// tests/_js_hostile_server.py --resume: the first transport's REQUEST is acknowledged and
// the transport closed, the call left in flight; the RESUME_OK then names a position the
// client must refuse (docs/protocol.md, "Resuming a session").
describe("a server that breaks the resume handshake", { timeout: 30000 }, () => {
  let hostile;
  before(async () => {
    hostile = await startPython("_js_hostile_server.py", ["--resume"]);
  });
  after(async () => {
    await stop(hostile);
  });

  const cases = [
    // the server acknowledged frame 0, then asks for it again: it was freed, it cannot be replayed
    ["before_ack", "resume position 0 is before the 1 frames acknowledged"],
    ["past_sent", "resume position 6 is past the 1 frames sent"],
  ];
  for (const [method, reason] of cases) {
    test(`${method}: a protocol error (GOAWAY 1) that ends the session; the call in flight fails with it, the token is not presented again, the next attempt starts a new session`, async () => {
      const start = hostile.lines.length;
      // This peer's lines: the server may log the previous test's close (its GOAWAY 0)
      // after this test began; this peer's first line is its HELLO.
      const mine = () => {
        const lines = hostile.lines.slice(start);
        while (lines[0] === "goaway 0") lines.shift();
        return lines;
      };
      const peer = await connect(`ws://127.0.0.1:${hostile.port}`, {
        keepaliveInterval: null,
        handshakeTimeout: 2000,
        reconnect: { initialDelay: 20, maxDelay: 50, maxAttempts: 5 },
      });
      try {
        const failed = peer.call(method).then(
          () => new Error("the call succeeded"),
          (e) => e,
        );
        const outcome = await Promise.race([failed, sleep(5000).then(() => new Error("the call is still in flight after 5 s"))]);
        assert.ok(outcome instanceof ConnectionClosed, String(outcome));
        assert.equal(outcome.code, 1002, String(outcome));
        assert.ok(outcome.message.includes(`protocol error: ${reason}`), outcome.message);
        // The session ended, not the peer (as the Python client, docs/protocol.md): the
        // next attempt is a new session, and the broken session's token never comes back.
        await until(async () => peer.state === "open" && mine().length >= 4);
        await sleep(100); // (anything more would have come by now: first retry at once, then 20 ms)
        const lines = mine();
        assert.equal(lines[0], "hello new");
        assert.match(lines[1], /^hello resume [0-9a-f]{8}$/);
        assert.deepEqual(lines.slice(2), ["goaway 1", "hello new"], lines.join(" | "));
        assert.equal(peer.state, "open");
      } finally {
        await peer.close();
      }
    });
  }
});
