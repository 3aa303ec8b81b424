// The seed's message sequences against a fastrpc server in JSON mode (Node or Bun):
// welcome before speaking, heartbeats during a stream, a plain message, error
// replies, early StreamEnd / StreamError, relay `to` routing.
// Usage: node --experimental-websocket seed_scenarios.mjs ws://127.0.0.1:PORT ws://127.0.0.1:PORT/seed
// (the second URL: a path the server serves in JSON mode from the start, json_paths)
import { SeedPeer, collect } from "./seed_peer.mjs";

const url = process.argv[2];
const jsonUrl = process.argv[3];
const out = {};
const step = async (name, fn) => {
  try { out[name] = await fn(); } catch (e) { out[name] = { failure: String(e?.message ?? e) }; }
};
const call = (peer, method, ...params) => peer.request({ method, params }, 5000);

const a = new SeedPeer(url, { name: "A" });
await step("welcome", async () => {
  const started = Date.now();
  const id = await a.waitForWelcome(); // never speaks first: the server greets
  return { id, waitedMs: Date.now() - started, welcomes: a.welcomes.length };
});
await step("add", async () => (await call(a, "add", 2, 3)).data);

await step("heartbeat", async () => {
  const b = new SeedPeer(url, { name: "B", heartbeatMs: 40 });
  await b.waitForWelcome();
  const resp = await call(b, "ticks", 10, 0.03);
  const [, stream] = b.receiveStream(resp.data.streamId);
  const items = await collect(stream);
  const stamp = 12345;
  b.raw({ category: "ping", timestamp: stamp });
  await new Promise((r) => setTimeout(r, 100));
  await b.close();
  return { items, pongs: b.pongs.length, echoed: b.pongs.includes(stamp), unknown: b.unknown.length };
});

await step("plain", async () => {
  a.send({ note: "hello" }); // the seed's send(): nobody waits for an answer
  return (await call(a, "plain")).data;
});

await step("error", async () => {
  const reply = (await call(a, "failing")).data;
  const strict = new SeedPeer(url, { name: "S", responseSchema: (d) => typeof d === "number" });
  await strict.waitForWelcome();
  let rejected = null;
  try { await call(strict, "failing"); } catch (e) { rejected = e.message; }
  const ok = (await call(strict, "add", 1, 1)).data;
  await strict.close();
  return { reply, rejected, ok };
});

await step("earlyEnd", async () => {
  async function* none() {}
  async function* failsFirst() { throw new Error("failed before its first item"); }
  await a.sendStream(none(), "empty-1");
  await a.sendStream(failsFirst(), "fails-1");
  const empty = (await call(a, "collect", "empty-1")).data;
  const failed = (await call(a, "collect", "fails-1")).data;
  return { empty, failed };
});

await step("relay", async () => {
  // A responder that never speaks (runner.ts): on a json_paths path, greeted at once
  // and reachable by `to` for as long as it stays.
  const started = Date.now();
  const runner = new SeedPeer(jsonUrl, { name: "Runner" });
  let asked = 0;
  runner.match((data, from) => { asked++; return { echo: data, from }; });
  const runnerId = await runner.waitForWelcome();
  const welcomeMs = Date.now() - started;
  const routed = (await a.request({ hello: 1 }, runnerId, 3000)).data;
  let missing = null;
  try { await a.request({ hello: 2 }, "no-such-peer", 300); } catch (e) { missing = e.message; }
  await runner.close();
  return { routed, asked, aId: a.clientId, missing, errors: a.errors.map((e) => e.error), welcomeMs };
});

await step("closeCode", async () => {
  const { code } = await a.close();
  return code;
});
console.log(JSON.stringify(out));
process.exit(0);
