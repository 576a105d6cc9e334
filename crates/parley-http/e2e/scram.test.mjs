// ui/scram.js in Node (whose WebCrypto is the browser's API): a login
// completes against a correct server-first-message, and every malformed or
// hostile one is refused with a clear error before any key is derived.
// Prints one line per case; exits 1 when any case fails.
//
//   PARLEY_SCRAM_MIN_ITERATIONS=4096 PARLEY_SCRAM_MAX_ITERATIONS=10000000 node scram.test.mjs
import { readFileSync } from "node:fs";
import assert from "node:assert/strict";

const source = readFileSync(new URL("../ui/scram.js", import.meta.url), "utf8");

// WebCrypto as the browser has it, except that while `forbidden` is set
// every call throws: a rejected server-first must not reach the KDF.
const real = globalThis.crypto;
let forbidden = false;
let calls = 0;
const subtle = new Proxy(real.subtle, {
  get(target, name) {
    const value = Reflect.get(target, name, target);
    if (typeof value !== "function") return value;
    return (...args) => {
      calls++;
      if (forbidden) throw new Error(`crypto.subtle.${String(name)} was called`);
      return value.apply(target, args);
    };
  },
});
const crypto = { subtle, getRandomValues: (a) => real.getRandomValues(a) };
// The script declares `Scram` at its top level, as in a page.
const Scram = new Function("crypto", `${source}\nreturn Scram;`)(crypto);

const MECHANISM = "SCRAM-SHA-256";
let failures = 0;

async function check(name, body) {
  try {
    await body();
    console.log("ok   " + name);
  } catch (e) {
    failures++;
    console.log("FAIL " + name + ": " + (e && e.stack ? e.stack : e));
  }
}

// A server-first that extends the client's nonce, with the given fields
// replaced.
function serverFirst(login, { r, s, i, extra } = {}) {
  const parts = [
    "r=" + (r === undefined ? login.nonce + "c2VydmVyLW5vbmNl" : r),
    "s=" + (s === undefined ? Scram.b64(new Uint8Array(16).fill(7)) : s),
    "i=" + (i === undefined ? "4096" : i),
  ];
  if (extra) parts.push(extra);
  return parts.join(",");
}

// final() must reject with a message matching `pattern`, having derived
// nothing.
async function refuses(fields, pattern) {
  const login = new Scram.Login("ann", "correct horse");
  forbidden = true;
  calls = 0;
  try {
    await assert.rejects(login.final(serverFirst(login, fields), MECHANISM), (e) => {
      assert.match(e.message, pattern);
      assert.equal(e.name, "ScramError", "a ScramError, not " + e.name + ": " + e.message);
      return true;
    });
    assert.equal(calls, 0, "WebCrypto was used before the check");
  } finally {
    forbidden = false;
  }
}

await check("a well-formed server-first gives a proof", async () => {
  const login = new Scram.Login("ann", "correct horse");
  const final = await login.final(serverFirst(login), MECHANISM);
  assert.match(final, /^c=biws,r=[^,]+,p=[A-Za-z0-9+/]+=*$/);
});

await check("a nonce that is not ours is refused", () => refuses({ r: "someone-elses-nonce" }, /nonce/));
await check("a nonce that does not extend ours is refused", async () => {
  const login = new Scram.Login("ann", "correct horse");
  forbidden = true;
  calls = 0;
  try {
    await assert.rejects(login.final(serverFirst(login, { r: login.nonce }), MECHANISM), (e) => {
      assert.match(e.message, /nonce/);
      assert.equal(e.name, "ScramError");
      return true;
    });
    assert.equal(calls, 0);
  } finally {
    forbidden = false;
  }
});
await check("a missing nonce is refused", () => refuses({ r: "" }, /nonce/));
await check("too few iterations are refused", () => refuses({ i: "4095" }, /iteration/));
await check("one iteration is refused", () => refuses({ i: "1" }, /iteration/));
await check("zero iterations are refused", () => refuses({ i: "0" }, /iteration/));
await check("too many iterations are refused", () => refuses({ i: "10000001" }, /iteration/));
await check("an absurd iteration count is refused", () => refuses({ i: "99999999999999999999" }, /iteration/));
await check("an iteration count with trailing junk is refused", () => refuses({ i: "4096x" }, /iteration/));
await check("a negative iteration count is refused", () => refuses({ i: "-4096" }, /iteration/));
await check("a salt that is not base64 is refused", () => refuses({ s: "not base64!" }, /salt/));
await check("an empty salt is refused", () => refuses({ s: "" }, /salt/));
await check("a server error is refused", () => refuses({ extra: "e=other-error" }, /server/));
await check("a mandatory extension is refused", async () => {
  const login = new Scram.Login("ann", "correct horse");
  forbidden = true;
  calls = 0;
  try {
    await assert.rejects(login.final("m=ext," + serverFirst(login), MECHANISM), (e) => e.name === "ScramError");
    assert.equal(calls, 0);
  } finally {
    forbidden = false;
  }
});
await check("registration refuses iteration counts out of bounds", async () => {
  forbidden = true;
  calls = 0;
  try {
    for (const i of [1, 4095, 10_000_001, 4096.5]) {
      await assert.rejects(Scram.credentials(MECHANISM, "pw", i), (e) => e.name === "ScramError" && /4096/.test(e.message));
    }
    assert.equal(calls, 0);
  } finally {
    forbidden = false;
  }
  const c = await Scram.credentials(MECHANISM, "pw", 4096);
  assert.equal(c.iterations, 4096);
});
// tests/browser.rs passes the Rust constants.
await check("the bounds are those of the Rust client", () => {
  assert.equal(Scram.MIN_ITERATIONS, Number(process.env.PARLEY_SCRAM_MIN_ITERATIONS || 4096));
  assert.equal(Scram.MAX_ITERATIONS, Number(process.env.PARLEY_SCRAM_MAX_ITERATIONS || 10_000_000));
});
await check("without WebCrypto, Scram says so", async () => {
  const Bare = new Function("crypto", `${source}\nreturn Scram;`)({ getRandomValues: crypto.getRandomValues });
  assert.equal(Bare.available(), false);
  assert.equal(Scram.available(), true);
  const login = new Bare.Login("ann", "correct horse");
  await assert.rejects(login.final(serverFirst(login), MECHANISM), (e) => {
    assert.equal(e.name, "ScramError");
    assert.match(e.message, /HTTPS or localhost/);
    return true;
  });
});

console.log(failures ? `scram.js: ${failures} case(s) failed` : "scram.js: all cases passed");
process.exit(failures ? 1 : 0);
