// ethers as an oracle for tests/interop/test_ethers.py.
//
// Usage:
//   node sign.mjs '<json command>'          one command, one JSON line out (exit 1 on error)
//   node sign.mjs < commands.jsonl           one command per input line, one result line each
//
// Commands (hex strings carry 0x; a message is either "message" (text, UTF-8) or
// "messageHex" (raw bytes)):
//   {"op": "address", "privateKey": "0x.."}                 -> {"address": "0xChecksummed"}
//   {"op": "sign", "privateKey": "0x..", "message": ".."}    -> {"signature": "0x..", "address": ..}
//   {"op": "recover", "message": "..", "signature": "0x.."}  -> {"address": "0xChecksummed"}
//   {"op": "encrypt", "privateKey": "0x..", "password": "..", "scryptN": 1024}
//                                                            -> {"keystore": {...}}
//   {"op": "decrypt", "keystore": {...} | "json", "password": ".."}
//                                                            -> {"address": .., "privateKey": ..}
// A failing command prints {"error": "<message>"} instead.
import { createInterface } from "node:readline";
import {
  Wallet,
  decryptKeystoreJsonSync,
  encryptKeystoreJsonSync,
  getBytes,
  verifyMessage,
} from "ethers";

function messageOf(cmd) {
  if (typeof cmd.messageHex === "string") return getBytes(cmd.messageHex);
  if (typeof cmd.message === "string") return cmd.message;
  throw new Error("a command needs 'message' (text) or 'messageHex' (bytes)");
}

async function run(cmd) {
  switch (cmd.op) {
    case "address":
      return { address: new Wallet(cmd.privateKey).address };
    case "sign": {
      const wallet = new Wallet(cmd.privateKey);
      return { signature: await wallet.signMessage(messageOf(cmd)), address: wallet.address };
    }
    case "recover":
      return { address: verifyMessage(messageOf(cmd), cmd.signature) };
    case "encrypt": {
      const wallet = new Wallet(cmd.privateKey);
      // Light scrypt so tests stay fast; the format is the same as with ethers' default N.
      const json = encryptKeystoreJsonSync(
        { address: wallet.address, privateKey: wallet.privateKey },
        cmd.password,
        { scrypt: { N: cmd.scryptN ?? 1024, r: 8, p: 1 } },
      );
      return { keystore: JSON.parse(json) };
    }
    case "decrypt": {
      const json = typeof cmd.keystore === "string" ? cmd.keystore : JSON.stringify(cmd.keystore);
      const account = decryptKeystoreJsonSync(json, cmd.password);
      return { address: account.address, privateKey: account.privateKey };
    }
    default:
      throw new Error(`unknown op ${JSON.stringify(cmd.op)}`);
  }
}

async function answer(line) {
  try {
    return JSON.stringify(await run(JSON.parse(line)));
  } catch (err) {
    return JSON.stringify({ error: String(err && err.message ? err.message : err) });
  }
}

if (process.argv.length > 2) {
  const out = await answer(process.argv[2]);
  process.stdout.write(out + "\n");
  process.exitCode = JSON.parse(out).error === undefined ? 0 : 1;
} else {
  for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
    if (line.trim() === "") continue;
    process.stdout.write((await answer(line)) + "\n");
  }
}
