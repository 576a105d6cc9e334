// ui/proto.js in Node, for crates/parley-http/tests/ui_proto.rs, which
// compares it with prost: prints each server frame given (hex, one per
// argument) as proto.js decodes it, one JSON line each, then one JSON line
// of the spam-folder client frames proto.js builds (hex).
//
//   node proto.mjs HEX...
import { readFileSync } from "node:fs";

const source = readFileSync(new URL("../ui/proto.js", import.meta.url), "utf8");
// The script declares `Proto` at its top level, as in a page.
const Proto = new Function(`${source}\nreturn Proto;`)();

const fromHex = (hex) => Uint8Array.from(hex.match(/../g) || [], (b) => parseInt(b, 16));
const toHex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

for (const hex of process.argv.slice(2)) console.log(JSON.stringify(Proto.decodeServerFrame(fromHex(hex))));

const c = Proto.client;
console.log(
  JSON.stringify({
    list_held: toHex(c.listHeld(1, 42, 100)),
    release_held: toHex(c.releaseHeld(2, [5, 300, 2 ** 40])),
    drop_held_as_spam: toHex(c.dropHeld(3, [7], true)),
    drop_held: toHex(c.dropHeld(4, [8, 9], false)),
    report_spam: toHex(c.reportSpam(5, [11, 12])),
  }),
);
