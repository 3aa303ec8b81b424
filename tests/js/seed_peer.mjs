// A client of the seed's JSON protocol (jadujoel/ts-rpc: RpcPeer + StreamManager),
// written for these tests from the seed's message shapes; it behaves as the seed's
// RpcPeer does on the wire:
//  - waits for {category:"welcome", clientId} (waitForWelcome) and sends `from` with
//    its requests once it has an id;
//  - answers {category:"ping", timestamp} with {category:"pong", timestamp}, and can
//    send its own heartbeat pings (enableHeartbeat);
//  - request(data, to?, timeout?) resolves with the response message, rejects on
//    timeout, or with "Invalid response data" when a response schema rejects it;
//  - match(handler) answers requests with {category:"response", requestId, to: from};
//  - send(data): a request nobody waits for (the seed's Socket.send);
//  - sendStream / receiveStream: StreamData / StreamEnd / StreamError, early messages
//    held until the stream is claimed (as ts-rpc HEAD does);
//  - {category:"error"} messages are collected in `errors` (the seed dispatches an
//    "error" event).
// Works under Node (>= 20 with --experimental-websocket) and Bun (global WebSocket).

export class SeedPeer {
  constructor(url, { name = "SeedPeer", responseSchema = null, heartbeatMs = 0 } = {}) {
    this.url = url;
    this.name = name;
    this.responseSchema = responseSchema; // (data) => boolean, the seed's zod check
    this.clientId = undefined;
    this.pending = new Map();
    this.handlers = [];
    this.streams = new Map(); // streamId -> {items, done, error, wake}
    this.errors = [];
    this.pongs = [];
    this.welcomes = [];
    this.unknown = [];
    this.ws = new WebSocket(url);
    this.opened = new Promise((resolve, reject) => {
      this.ws.onopen = () => {
        if (heartbeatMs > 0) {
          this.heartbeat = setInterval(() => {
            if (this.ws.readyState === 1) this.raw({ category: "ping", timestamp: Date.now() });
          }, heartbeatMs);
        }
        resolve();
      };
      this.ws.onerror = (e) => reject(new Error(`WebSocket error: ${e.message ?? e.type}`));
    });
    this.closed = new Promise((resolve) => {
      this.ws.onclose = (ev) => {
        clearInterval(this.heartbeat);
        for (const p of this.pending.values()) p.reject(new Error("Connection closed"));
        this.pending.clear();
        for (const s of this.streams.values()) {
          if (!s.done) { s.error = "Connection closed"; s.done = true; s.wake?.(); }
        }
        resolve({ code: ev.code, reason: ev.reason });
      };
    });
    this.welcomed = new Promise((resolve) => (this.onWelcome = resolve));
    this.ws.onmessage = (ev) => this.handle(ev.data);
  }

  raw(obj) { this.ws.send(JSON.stringify(obj)); }

  waitForWelcome(timeout = 4000) {
    if (this.clientId !== undefined) return Promise.resolve(this.clientId);
    return Promise.race([
      this.welcomed,
      new Promise((_, reject) => setTimeout(() => reject(new Error("Request timed out")), timeout)),
    ]);
  }

  handle(text) {
    let msg;
    try { msg = JSON.parse(text); } catch { this.unknown.push(text); return; }
    if (msg.type === "StreamData" || msg.type === "StreamEnd" || msg.type === "StreamError") {
      const s = this.stream(msg.streamId);
      if (s.done) return;
      if (msg.type === "StreamData") s.items.push(msg.payload);
      else if (msg.type === "StreamEnd") s.done = true;
      else { s.error = msg.error; s.done = true; }
      s.wake?.();
      return;
    }
    switch (msg.category) {
      case "welcome":
        this.clientId = msg.clientId;
        this.welcomes.push(msg);
        this.onWelcome(msg.clientId);
        return;
      case "ping":
        this.raw({ category: "pong", timestamp: msg.timestamp });
        return;
      case "pong":
        this.pongs.push(msg.timestamp);
        return;
      case "error":
        this.errors.push(msg);
        return;
      case "request":
        for (const h of this.handlers) h(msg);
        return;
      case "response": {
        const p = this.pending.get(msg.requestId);
        if (!p) return;
        this.pending.delete(msg.requestId);
        clearTimeout(p.timer);
        if (this.responseSchema && !this.responseSchema(msg.data)) p.reject(new Error("Invalid response data"));
        else p.resolve(msg);
        return;
      }
      default:
        this.unknown.push(msg);
    }
  }

  request(data, toOrTimeout, timeoutParam) {
    const to = typeof toOrTimeout === "string" ? toOrTimeout : undefined;
    const timeout = typeof toOrTimeout === "number" ? toOrTimeout : (timeoutParam ?? 4000);
    const requestId = crypto.randomUUID();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.pending.delete(requestId)) reject(new Error("Request timed out"));
      }, timeout);
      this.pending.set(requestId, { resolve, reject, timer });
      this.raw({ category: "request", requestId, from: this.clientId, fromName: this.name, to, data });
    });
  }

  send(data) {
    this.raw({ category: "request", requestId: crypto.randomUUID(), from: this.clientId, fromName: this.name, data });
  }

  match(handler) {
    this.handlers.push(async (req) => {
      try {
        const result = await handler(req.data, req.from);
        if (result !== undefined) {
          this.raw({
            category: "response", requestId: req.requestId, from: this.clientId, fromName: this.name,
            to: req.from, toName: req.fromName, data: result,
          });
        }
      } catch (e) {
        console.error("[SeedPeer] match handler error", e);
      }
    });
  }

  async sendStream(iterable, streamId = crypto.randomUUID()) {
    try {
      for await (const value of iterable) this.raw({ type: "StreamData", streamId, payload: value });
      this.raw({ type: "StreamEnd", streamId });
    } catch (e) {
      this.raw({ type: "StreamError", streamId, error: e instanceof Error ? e.message : String(e) });
    }
    return streamId;
  }

  stream(streamId) {
    let s = this.streams.get(streamId);
    if (!s) { s = { items: [], done: false, error: null, wake: null }; this.streams.set(streamId, s); }
    return s;
  }

  // [streamId, async iterable]; what arrived before is kept.
  receiveStream(streamId = crypto.randomUUID()) {
    const s = this.stream(streamId);
    const iter = async function* () {
      while (true) {
        if (s.items.length) { yield s.items.shift(); continue; }
        if (s.error) throw new Error(s.error);
        if (s.done) return;
        await new Promise((r) => (s.wake = r));
        s.wake = null;
      }
    };
    return [streamId, iter()];
  }

  closeReceivingStream(streamId) {
    const s = this.streams.get(streamId);
    if (s) { s.done = true; s.items.length = 0; s.wake?.(); }
  }

  async close() {
    clearInterval(this.heartbeat);
    if (this.ws.readyState <= 1) this.ws.close(1000, "Normal Closure");
    return this.closed;
  }
}

export async function collect(iterable) {
  const out = [];
  for await (const x of iterable) out.push(x);
  return out;
}
