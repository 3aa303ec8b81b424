// The client's resumption state (src/session.ts) on its own: positions, ACK, replay from
// a position inside a message, and the halving of messages on a flaky link.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Session, splitMessage, MIN_CHUNK } from "../dist/session.js";
import { frames as F } from "../dist/index.js";

const frame = (id, n) => ({ type: F.STREAM_DATA, flags: 0, id, payload: new Uint8Array(n).fill(id) });
const batch = (...fs) => F.encodeBatch(fs);

test("replay: unacknowledged messages from the server's position, the first cut to its missing frames", () => {
  const s = new Session(1 << 20, 128 << 10);
  s.start(true, new Uint8Array(32));
  s.record(batch(frame(1, 10), frame(3, 10)), 2); // positions 0, 1
  s.record(batch(frame(5, 10), frame(7, 10), frame(9, 10)), 3); // 2, 3, 4
  assert.equal(s.sent, 5);
  assert.equal(s.ack(2), true); // the first message is dropped
  const out = s.replayFrom(3); // the server has 0..2: resend 3, 4
  assert.equal(out.length, 1);
  assert.deepEqual(F.decodeMessage(out[0], 1 << 20).map((f) => f.id), [7, 9]);
  assert.throws(() => s.ack(6), /past the 5 frames sent/);
});

test("a transport that got nothing through halves the messages; an ACK that frees replay doubles them", () => {
  const s = new Session(16 << 20, 128 << 10);
  s.start(true, new Uint8Array(32));
  const big = batch(...Array.from({ length: 40 }, (_, i) => frame(2 * i + 1, 4000))); // ~160 KB
  s.record(big, 40);
  assert.equal(s.cap, Infinity);
  let sizes = s.replayFrom(0).map((m) => m.length); // nothing got through
  assert.equal(s.chunk, 64 << 10);
  assert.ok(sizes.length >= 3 && sizes.every((n) => n <= 64 << 10), String(sizes));
  for (let i = 0; i < 10; i++) s.replayFrom(0);
  assert.equal(s.chunk, MIN_CHUNK);
  sizes = s.replayFrom(0).map((m) => m.length);
  assert.equal(sizes.length, 40); // one 4 KB frame a message
  assert.equal(s.cap, MIN_CHUNK);
  assert.equal(s.ack(20), false); // inside the one message: nothing freed, no change
  assert.equal(s.chunk, MIN_CHUNK);
  assert.equal(s.ack(40), true);
  assert.equal(s.chunk, 2 * MIN_CHUNK);
});

test("splitMessage keeps frames whole and in order", () => {
  const msg = batch(frame(1, 100), frame(3, 5000), frame(5, 100), frame(7, 100));
  const parts = splitMessage(msg, 1000);
  assert.deepEqual(parts.map((p) => F.decodeMessage(p, 1 << 20).map((f) => f.id)), [[1], [3], [5, 7]]);
});

test("ACKs are due every 64 frames or 256 KiB received", () => {
  const s = new Session(1 << 20, 128 << 10);
  s.start(true, new Uint8Array(32));
  let due = 0;
  for (let i = 0; i < 640; i++) if (s.arrived(1, 10)) due++;
  assert.equal(due, 10);
  assert.equal(s.arrived(1, 300 << 10), true);
  assert.equal(s.received, 641);
});

test("a resume position must lie between what the server acknowledged and what was sent", () => {
  const s = new Session(1 << 20, 128 << 10);
  s.start(true, new Uint8Array(32));
  s.record(batch(frame(1, 10), frame(3, 10)), 2); // positions 0, 1
  s.record(batch(frame(5, 10), frame(7, 10)), 2); // 2, 3
  s.ack(3); // inside the second message: nothing of it freed, yet 0..2 are acknowledged
  s.ack(1); // an older ACK does not lower it
  assert.equal(s.acked, 3);
  assert.throws(() => s.checkResume(2), /resume position 2 is before the 3 frames acknowledged/);
  assert.throws(() => s.checkResume(5), /resume position 5 is past the 4 frames sent/);
  s.checkResume(3);
  s.checkResume(4);
  s.start(true, new Uint8Array(32)); // a new session: nothing acknowledged yet
  assert.equal(s.acked, 0);
  s.checkResume(0);
});
