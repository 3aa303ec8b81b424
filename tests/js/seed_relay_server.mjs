// The seed's relay server (ts-rpc serve.ts) as the wire sees it, on the `ws` package:
// each connection gets {category:"welcome", clientId, sessionId, restoredSession};
// {category:"ping"} is answered with a pong; a message with `to` goes to that client
// (or {category:"error", error:"Target peer not found", targetId} comes back); any
// other message goes to every other client on the same path (the topic).
// Usage: node seed_relay_server.mjs  -> prints "LISTENING <port>"
import { WebSocketServer } from "ws";

const clients = new Map(); // clientId -> ws
const wss = new WebSocketServer({ host: "127.0.0.1", port: 0, maxPayload: 1 << 20 });
wss.on("connection", (ws, req) => {
  const id = crypto.randomUUID();
  ws.topic = new URL(req.url, "http://x").pathname.slice(1) || "none";
  clients.set(id, ws);
  ws.send(JSON.stringify({ category: "welcome", clientId: id, sessionId: crypto.randomUUID(), restoredSession: false }));
  ws.on("message", (data, isBinary) => {
    const text = isBinary ? data : data.toString();
    let parsed;
    try { parsed = JSON.parse(text.toString()); } catch { parsed = null; }
    if (parsed && parsed.category === "ping") {
      ws.send(JSON.stringify({ category: "pong", timestamp: parsed.timestamp }));
      return;
    }
    if (parsed && parsed.category === "pong") return;
    if (parsed && parsed.to) {
      const target = clients.get(parsed.to);
      if (target) target.send(text);
      else ws.send(JSON.stringify({ category: "error", error: "Target peer not found", targetId: parsed.to }));
      return;
    }
    for (const other of wss.clients) {
      if (other !== ws && other.topic === ws.topic && other.readyState === 1) other.send(text);
    }
  });
  ws.on("close", () => clients.delete(id));
});
wss.on("listening", () => console.log(`LISTENING ${wss.address().port}`));
