// A bare WebSocket server (RFC 6455) on node:net, 127.0.0.1, port 0, for the tests of a
// hostile server: the test writes the exact bytes of each message (a HELLO or a message
// larger than any WebSocket library would let a server send on purpose), and can stop
// reading its socket, so that what the client writes really piles up in the client.
// Only what the TypeScript client sends is parsed: unfragmented, masked frames.
import net from "node:net";
import { createHash } from "node:crypto";
import { sleep } from "./helpers.mjs";

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const MAX_REQUEST = 64 << 10; // the opening request: a client sending more is no client of ours

/** The header of a server's (unmasked) final binary frame of `n` payload bytes. */
function header(opcode, n) {
  if (n < 126) return Buffer.from([0x80 | opcode, n]);
  if (n < 65536) {
    const h = Buffer.alloc(4);
    h[0] = 0x80 | opcode;
    h[1] = 126;
    h.writeUInt16BE(n, 2);
    return h;
  }
  const h = Buffer.alloc(10);
  h[0] = 0x80 | opcode;
  h[1] = 127;
  h.writeBigUInt64BE(BigInt(n), 2);
  return h;
}

/** One accepted WebSocket connection, as the test drives it. */
export class RawConnection {
  constructor(socket) {
    this.socket = socket;
    /** The client's binary messages, unmasked, in order. */
    this.messages = [];
    /** The client's close frame: its code (null until it came) and reason. */
    this.closeCode = null;
    this.closeReason = "";
    this.ended = false;
    // chunks not yet parsed, joined only once the frame they start is complete (a large
    // message arrives in many chunks)
    this.chunks = [];
    this.have = 0;
    this.need = 2;
    socket.on("close", () => (this.ended = true));
    socket.on("error", () => (this.ended = true));
  }

  /** Send one binary message (one unfragmented frame). */
  send(payload) {
    this.socket.write(Buffer.concat([header(0x2, payload.length), Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength)]));
  }

  /** Stop reading: the kernel's buffers fill, then the client's writes wait in the client. */
  pause() {
    this.socket.pause();
  }

  resume() {
    this.socket.resume();
  }

  /** The client's `n`th binary message (0 first), once it came. */
  async message(n = 0, ms = 5000) {
    await until(() => this.messages.length > n || this.ended, ms);
    if (this.messages.length <= n) throw new Error("the client closed before its message");
    return this.messages[n];
  }

  feed(chunk) {
    this.chunks.push(chunk);
    this.have += chunk.length;
    if (this.have < this.need) return;
    let b = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
    const wait = (need) => {
      this.chunks = [b];
      this.have = b.length;
      this.need = need;
    };
    for (;;) {
      if (b.length < 2) return wait(2);
      const fin = (b[0] & 0x80) !== 0;
      const opcode = b[0] & 0x0f;
      let n = b[1] & 0x7f;
      let pos = 2;
      if (n === 126) {
        if (b.length < 4) return wait(4);
        n = b.readUInt16BE(2);
        pos = 4;
      } else if (n === 127) {
        if (b.length < 10) return wait(10);
        n = Number(b.readBigUInt64BE(2));
        pos = 10;
      }
      if (!(b[1] & 0x80)) throw new Error("an unmasked frame from the client");
      if (b.length < pos + 4 + n) return wait(pos + 4 + n);
      const mask = b.subarray(pos, pos + 4);
      const payload = Buffer.allocUnsafe(n);
      for (let i = 0; i < n; i++) payload[i] = b[pos + 4 + i] ^ mask[i & 3];
      b = b.subarray(pos + 4 + n);
      if (!fin) throw new Error("a fragmented message from the client");
      if (opcode === 0x2) this.messages.push(new Uint8Array(payload));
      else if (opcode === 0x8) {
        this.closeCode = n >= 2 ? payload.readUInt16BE(0) : 1005;
        this.closeReason = payload.subarray(2).toString("utf8");
        // the closing handshake: the client's close frame echoed, then the TCP connection ends
        this.socket.end(Buffer.concat([header(0x8, Math.min(n, 2)), payload.subarray(0, 2)]));
        return wait(Infinity);
      } else if (opcode === 0x9) this.socket.write(Buffer.concat([header(0xa, n), payload]));
    }
  }
}

/**
 * Listen on 127.0.0.1 (port 0); `onConnection(conn)` runs once a client's opening
 * handshake is answered. Resolves with `{ url, connections, close() }`; `close()` stops
 * listening and destroys every connection.
 */
export function startRawServer(onConnection) {
  const sockets = new Set();
  const connections = [];
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => socket.destroy());
    let head = Buffer.alloc(0);
    const onHead = (chunk) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) {
        if (head.length > MAX_REQUEST) socket.destroy();
        return;
      }
      socket.off("data", onHead);
      const key = /^sec-websocket-key:\s*(\S+)\s*$/im.exec(head.subarray(0, end).toString("latin1"));
      if (key === null) {
        socket.end("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
        return;
      }
      const accept = createHash("sha1").update(key[1] + GUID).digest("base64");
      socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
      const conn = new RawConnection(socket);
      connections.push(conn);
      socket.on("data", (c) => {
        try {
          conn.feed(c);
        } catch {
          socket.destroy();
        }
      });
      const rest = head.subarray(end + 4);
      if (rest.length > 0) conn.feed(rest);
      Promise.resolve(onConnection(conn)).catch(() => socket.destroy());
    };
    socket.on("data", onHead);
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      resolve({
        url: `ws://127.0.0.1:${server.address().port}`,
        connections,
        close: () =>
          new Promise((r) => {
            for (const s of sockets) s.destroy();
            server.close(() => r());
          }),
      });
    });
  });
}

export async function until(cond, ms = 5000) {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await sleep(5);
  }
}
