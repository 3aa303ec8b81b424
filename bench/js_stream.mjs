// Items/s of one stream from the Python server (tests/_js_server.py's "produce") into the
// TypeScript client on Node, and of one stream the other way (sendStream, read by the
// server's "total"): node --experimental-websocket bench/js_stream.mjs PORT N [SIZE]
import { connect } from "../js/dist/index.js";

const [port, n, size = "0"] = process.argv.slice(2);
const peer = await connect(`ws://127.0.0.1:${port}`, { keepaliveInterval: null });
await peer.call("add", 1, 1); // warm
const t0 = performance.now();
let got = 0;
for await (const x of peer.stream("produce", Number(n), Number(size))) got++;
const seconds = (performance.now() - t0) / 1000;
const t1 = performance.now();
const id = await peer.sendStream((function* () {
  for (let i = 0; i < Number(n); i++) yield i;
})());
const [, sent] = await peer.call("total", id);
const upSeconds = (performance.now() - t1) / 1000;
await peer.close();
console.log(JSON.stringify({ items: got, seconds, itemsPerSecond: Math.round(got / seconds), uploadItemsPerSecond: Math.round(sent / upSeconds) }));
