// The conformance vectors of tests/vectors/ (shared with the Python codecs, see
// tests/test_frames.py and tests/test_vectors_shared.py) run against the TypeScript codec.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { frames as F, msgpack, ProtocolError } from "../dist/index.js";

const dir = fileURLToPath(new URL("../../tests/vectors/", import.meta.url));

function rows(name, columns) {
  const out = [];
  readFileSync(dir + name, "utf8").split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith("#")) return;
    const fields = line.split(name === "payloads.txt" || name === "errors.txt" ? " | " : "|").map((f) => f.trim());
    assert.equal(fields.length, columns, `${name}:${i + 1}`);
    out.push(fields);
  });
  return out;
}

function unhex(field) {
  field = field.replaceAll(" ", "");
  if (field === "-") return new Uint8Array(0);
  const parts = [];
  for (const piece of field.split("+")) {
    if (piece.includes("*")) {
      const [b, n] = piece.split("*");
      parts.push(new Uint8Array(Number(n)).fill(parseInt(b, 16)));
    } else {
      parts.push(Uint8Array.from(piece.match(/../g) ?? [], (h) => parseInt(h, 16)));
    }
  }
  return F.concat(parts);
}

const hex = (b) => Buffer.from(b).toString("hex");
const num = (s) => {
  const b = BigInt(s);
  return b <= BigInt(Number.MAX_SAFE_INTEGER) && b >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(b) : b;
};

function parseFrame(text) {
  const [type, flags, id, payload] = text.split(",").map((p) => p.trim());
  return { type: parseInt(type, 16), flags: parseInt(flags, 16), id: num(id), payload: unhex(payload) };
}

const plain = (f) => ({ type: f.type, flags: f.flags, id: f.id, payload: hex(f.payload) });

test("frames.txt: every valid message decodes to its frames and encodes back", () => {
  const vectors = rows("frames.txt", 4);
  assert.ok(vectors.length > 40);
  for (const [name, form, message, frames] of vectors) {
    const bytes = unhex(message);
    const expected = frames.split(";").map(parseFrame);
    const got = F.decodeMessage(bytes, Number.MAX_SAFE_INTEGER);
    assert.deepEqual(got.map(plain), expected.map(plain), name);
    const encoded = F.encodeBatch(expected);
    if (form === "canonical") {
      assert.equal(hex(encoded), hex(bytes), name);
      if (expected.length === 1) {
        const f = expected[0];
        assert.equal(hex(F.encodeFrame(f.type, f.flags, f.id, f.payload)), hex(bytes), name);
      }
    } else {
      assert.deepEqual(F.decodeMessage(encoded, Number.MAX_SAFE_INTEGER).map(plain), expected.map(plain), name);
    }
    // cut short, the message is a truncated frame (never a frame of the wrong size)
    if (bytes.length > 1) {
      assert.throws(() => F.decodeMessage(bytes.subarray(0, bytes.length - 1), Number.MAX_SAFE_INTEGER), (e) =>
        e instanceof ProtocolError && ["truncated frame", "frame too large"].includes(e.reason), name);
    }
  }
});

test("frames_invalid.txt: every invalid input is rejected with its reason and code", () => {
  const vectors = rows("frames_invalid.txt", 6);
  for (const [name, fn, mfs, input, reason, code] of vectors) {
    const data = unhex(input);
    const limit = mfs === "default" ? 1 << 20 : mfs === "-" ? 0 : Number(mfs);
    const run = {
      decode_message: () => F.decodeMessage(data, limit),
      decode_varint: () => F.decodeVarint(data, 0),
      decode_settings: () => F.decodeSettings(data),
    }[fn];
    assert.ok(run, name);
    assert.throws(run, (e) => e instanceof ProtocolError && e.reason === reason && e.code === code, name);
  }
});

test("settings.txt: HELLO payloads decode to their settings and encode back", () => {
  for (const [name, form, payload, version, pairs] of rows("settings.txt", 5)) {
    const bytes = unhex(payload);
    const expected = pairs === "-" ? [] : pairs.split(",").map((p) => p.split("=").map(num));
    const [v, got] = F.decodeSettings(bytes);
    assert.equal(v, num(version), name);
    assert.deepEqual(got, expected, name);
    if (form === "canonical") assert.equal(hex(F.encodeSettings(num(version), expected)), hex(bytes), name);
  }
});

test("payloads.txt: MessagePack and JSON bytes of values, both ways", () => {
  const vectors = rows("payloads.txt", 4);
  for (const [name, codec, value, data] of vectors) {
    const v = JSON.parse(value);
    const bytes = unhex(data);
    if (codec === "msgpack") {
      assert.equal(hex(msgpack.encode(v)), hex(bytes), name);
      assert.deepEqual(msgpack.decode(bytes), v, name);
    } else {
      assert.equal(Buffer.from(bytes).toString("utf8"), JSON.stringify(v), name);
      assert.deepEqual(JSON.parse(Buffer.from(bytes).toString("utf8")), v, name);
    }
  }
});

test("errors.txt: error payloads, both ways", () => {
  for (const [name, payload, code, type, message, tb] of rows("errors.txt", 6)) {
    const bytes = unhex(payload);
    const e = F.decodeError(bytes);
    assert.equal(e.type, JSON.parse(type), name);
    assert.equal(e.message, JSON.parse(message), name);
    assert.equal(e.code, code === "-" ? null : Number(code), name);
    assert.equal(e.traceback, tb === "-" ? null : JSON.parse(tb), name);
    if (tb === "-") assert.equal(hex(F.encodeError(e.type, e.message, e.code)), hex(bytes), name);
  }
});

test("varints: shortest form at every size edge, bigints past 2^53", () => {
  for (const [v, size] of [[0, 1], [63, 1], [64, 2], [16383, 2], [16384, 4], [2 ** 30 - 1, 4], [2 ** 30, 8], [2 ** 53 - 1, 8], [(1n << 62n) - 1n, 8]]) {
    const b = F.encodeVarint(v);
    assert.equal(b.length, size);
    assert.deepEqual(F.decodeVarint(b, 0), [v, size]);
  }
  assert.throws(() => F.encodeVarint(1n << 62n), RangeError);
  assert.throws(() => F.encodeVarint(-1), RangeError);
});

test("msgpack: round trips beyond the vectors", () => {
  const values = [new Uint8Array([0, 1, 255]), new Uint8Array(70000), [1, [2, [3, {}]]], { "ü": -1.5e-7 }, 2n ** 63n, -(2n ** 63n), "x".repeat(70000)];
  for (const v of values) assert.deepEqual(msgpack.decode(msgpack.encode(v)), v);
  assert.throws(() => msgpack.decode(Uint8Array.of(0x92, 0x01)), RangeError);
  assert.throws(() => msgpack.decode(Uint8Array.of(0xc1)), RangeError);
});
