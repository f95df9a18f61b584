// js-libp2p as a peer for tests/interop/test_js_libp2p.py: it dials a Python node over TCP,
// completes Noise and Yamux, and exchanges one frame each way on the gossip protocol.
//
// Usage:
//   node gossip_peer.mjs '{"dial": "/ip4/127.0.0.1/tcp/P/p2p/16Uiu2..", "privateKey": "<64 hex>",
//                          "protocol": "/formation/gossip/1.0.0", "sendHex": "..", "timeoutMs": 10000}'
//
// The identity is the given secp256k1 key, as a formation node's is. A frame is the payload
// with an unsigned-varint length prefix (node/gossip/wire.py frame()). Prints JSON lines:
//   {"peerId": "<ours>", "remotePeer": "<the node's>"}   once connected and the frame is sent
//   {"receivedHex": "..", "from": "<peer id>"}          when the node's frame arrives
// and exits 0; on any error or after timeoutMs it prints {"error": ".."} and exits 1.
//
// libp2p 2.8.9 and npm overrides (peer-store 11.2.2, mortice 3.1.0) because libp2p 3.x needs
// Node 22 (Promise.withResolvers) and this project runs on Node 20.
import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import { privateKeyFromRaw } from "@libp2p/crypto/keys";
import { tcp } from "@libp2p/tcp";
import { multiaddr } from "@multiformats/multiaddr";
import { createLibp2p } from "libp2p";

const FRAME_BYTES_MAX = 1 << 20;

function fail(message) {
  console.log(JSON.stringify({ error: String(message) }));
  process.exit(1);
}

function frame(payload) {
  const prefix = [];
  let n = payload.length;
  while (n >= 0x80) {
    prefix.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  prefix.push(n);
  return Uint8Array.from([...prefix, ...payload]);
}

// One frame from a stream's source (chunks are Uint8ArrayLists), or an error.
async function readFrame(source) {
  let buffer = new Uint8Array(0);
  for await (const chunk of source) {
    const bytes = chunk.subarray();
    const joined = new Uint8Array(buffer.length + bytes.length);
    joined.set(buffer);
    joined.set(bytes, buffer.length);
    buffer = joined;
    let length = 0;
    for (let i = 0; i < buffer.length && i < 4; i++) {
      length |= (buffer[i] & 0x7f) << (7 * i);
      if (!(buffer[i] & 0x80)) {
        if (length > FRAME_BYTES_MAX) throw new Error(`frame of ${length} bytes`);
        if (buffer.length >= i + 1 + length) return buffer.subarray(i + 1, i + 1 + length);
        break;
      }
    }
  }
  throw new Error("stream ended before a whole frame");
}

const cmd = JSON.parse(process.argv[2] ?? "{}");
setTimeout(() => fail(`timed out after ${cmd.timeoutMs} ms`), cmd.timeoutMs ?? 10000).unref();

try {
  const node = await createLibp2p({
    privateKey: privateKeyFromRaw(Buffer.from(cmd.privateKey, "hex")),
    addresses: { listen: [] }, // it only dials; the node answers over the same connection
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
  });
  const received = new Promise((resolve, reject) => {
    node.handle(cmd.protocol, ({ stream, connection }) => {
      readFrame(stream.source)
        .then((data) => resolve({ data, from: connection.remotePeer.toString() }))
        .catch(reject);
    });
  });
  const connection = await node.dial(multiaddr(cmd.dial));
  const stream = await connection.newStream(cmd.protocol);
  await stream.sink([frame(Buffer.from(cmd.sendHex, "hex"))]);
  console.log(
    JSON.stringify({
      peerId: node.peerId.toString(),
      remotePeer: connection.remotePeer.toString(),
      encryption: connection.encryption,
      multiplexer: connection.multiplexer,
    }),
  );
  const { data, from } = await received;
  console.log(JSON.stringify({ receivedHex: Buffer.from(data).toString("hex"), from }));
  await node.stop();
  process.exit(0);
} catch (error) {
  fail(error?.stack ?? error);
}
