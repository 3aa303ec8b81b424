// The seed's runner.ts pattern: a peer that never speaks first and answers what it is
// asked (match), here served by a fastrpc server whose handler asks. Prints what it
// answered once the server closes the connection.
// Usage: node --experimental-websocket seed_runner.mjs ws://127.0.0.1:PORT
import { SeedPeer } from "./seed_peer.mjs";

const peer = new SeedPeer(process.argv[2], { name: "Runner" });
let score = 0;
const answered = [];
peer.match((data) => {
  answered.push(data.type);
  if (data.type === "score") return { type: "score", score: score++ };
  if (data.type === "greet") return { type: "greet", greeting: `Hello ${data.name}!` };
  if (data.type === "quiet") return undefined; // no answer, as the seed's match allows
  return { type: "unknown" };
});
const clientId = await peer.waitForWelcome();
const { code } = await peer.closed;
console.log(JSON.stringify({ clientId, answered, code }));
process.exit(0);
