// A client written to the seed's JSON protocol (ts-signal-rpc), using Node's built-in
// WebSocket: it calls a fastrpc server and receives its streams.
// Usage: node --experimental-websocket seed_client.mjs ws://127.0.0.1:PORT
const url = process.argv[2];
const ws = new WebSocket(url);
const pending = new Map();
const streams = new Map();
let nextId = 0;

function request(data) {
  const requestId = `r${++nextId}`;
  return new Promise((resolve, reject) => {
    pending.set(requestId, { resolve, reject });
    ws.send(JSON.stringify({ category: "request", requestId, data }));
  });
}

function receiveStream(streamId) {
  let s = streams.get(streamId);
  if (!s) {
    s = { items: [], done: false, error: null, wake: null };
    streams.set(streamId, s);
  }
  return {
    async *[Symbol.asyncIterator]() {
      while (true) {
        if (s.items.length) { yield s.items.shift(); continue; }
        if (s.error) throw new Error(s.error);
        if (s.done) return;
        await new Promise((r) => (s.wake = r));
      }
    },
  };
}

ws.onmessage = (ev) => {
  const msg = JSON.parse(ev.data);
  if (msg.category === "response") {
    const p = pending.get(msg.requestId);
    pending.delete(msg.requestId);
    if (msg.error) p.reject(new Error(msg.error)); else p.resolve({ data: msg.data });
    return;
  }
  const s = streams.get(msg.streamId) ?? (receiveStream(msg.streamId), streams.get(msg.streamId));
  if (msg.type === "StreamData") s.items.push(msg.payload);
  else if (msg.type === "StreamEnd") s.done = true;
  else if (msg.type === "StreamError") { s.error = msg.error; s.done = true; }
  if (s.wake) { const w = s.wake; s.wake = null; w(); }
};

ws.onopen = async () => {
  const out = {};
  try {
    out.add = (await request({ method: "add", params: [2, 3] })).data;
    const resp = await request({ method: "requestData", params: [5] });
    const items = [];
    for await (const x of receiveStream(resp.data.streamId)) items.push(x);
    out.items = items;
    const bad = await request({ method: "failing", params: [] });
    const got = [];
    try {
      for await (const x of receiveStream(bad.data.streamId)) got.push(x);
    } catch (e) {
      out.streamError = e.message;
    }
    out.partial = got;
    try { await request({ method: "nosuch", params: [] }); } catch (e) { out.missing = e.message; }
    // A stream from the client to the server.
    const sid = "upload-1";
    for (const v of [1, 2, 3]) ws.send(JSON.stringify({ type: "StreamData", streamId: sid, payload: v }));
    ws.send(JSON.stringify({ type: "StreamEnd", streamId: sid }));
    out.uploaded = (await request({ method: "sumUpload", params: [sid] })).data;
  } catch (e) {
    out.failure = String(e);
  }
  console.log(JSON.stringify(out));
  ws.close();
};
ws.onerror = (e) => { console.log(JSON.stringify({ failure: String(e.message ?? e) })); process.exit(1); };
