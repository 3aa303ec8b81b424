// The server of the seed's examples/stream.ts (runServer()) as the wire sees it, on
// the `ws` package: WebSocket on /ws only; {category:"welcome", clientId} on open;
// a request whose data.method is requestNumberStream / requestDataFeed /
// requestLogStream is answered {category:"response", requestId, data:{type, streamId}}
// and the stream (StreamData..., StreamEnd) starts right after; other request data
// gets data {type:"error", message:"Invalid request format"}; everything else is
// ignored. Delays are shorter than the example's (DELAY_MS, default 5).
// Usage: node seed_stream_server.mjs  -> prints "LISTENING <port>"
import { WebSocketServer } from "ws";

const delay = Number(process.env.DELAY_MS ?? 5);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const feeds = {
  requestNumberStream: ["number-stream", async function* () { for (let i = 1; i <= 10; i++) { await sleep(delay); yield i; } }],
  requestDataFeed: ["data-feed", async function* () {
    for (const n of ["First", "Second", "Third", "Fourth", "Fifth"].entries()) {
      await sleep(delay);
      yield { id: n[0] + 1, message: `${n[1]} update` };
    }
  }],
  requestLogStream: ["log-stream", async function* () {
    const levels = ["info", "warn", "error", "debug"];
    for (let i = 0; i < 20; i++) {
      await sleep(delay);
      yield { timestamp: new Date().toISOString(), level: levels[i % 4], message: `Log entry ${i + 1}` };
    }
  }],
};

async function pump(ws, streamId, gen) {
  try {
    for await (const payload of gen()) ws.send(JSON.stringify({ type: "StreamData", streamId, payload }));
    ws.send(JSON.stringify({ type: "StreamEnd", streamId }));
  } catch (err) {
    ws.send(JSON.stringify({ type: "StreamError", streamId, error: err instanceof Error ? err.message : String(err) }));
  }
}

const wss = new WebSocketServer({ host: "127.0.0.1", port: 0, path: "/ws" });
wss.on("connection", (ws) => {
  ws.send(JSON.stringify({ category: "welcome", clientId: crypto.randomUUID() }));
  ws.on("message", (raw) => {
    let data;
    try { data = JSON.parse(raw.toString()); } catch { return; }
    if (data.category !== "request" || !data.data) return;
    const feed = feeds[data.data.method];
    if (!feed) {
      ws.send(JSON.stringify({ category: "response", requestId: data.requestId, data: { type: "error", message: "Invalid request format" } }));
      return;
    }
    const streamId = crypto.randomUUID();
    ws.send(JSON.stringify({ category: "response", requestId: data.requestId, data: { type: feed[0], streamId } }));
    pump(ws, streamId, feed[1]);
  });
});
wss.on("listening", () => console.log(`LISTENING ${wss.address().port}`));
