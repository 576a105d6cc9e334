// SCRAM-SHA-256 / SCRAM-SHA-512 on the client side (RFC 5802, RFC 7677)
// with WebCrypto, as docs/PROTOCOL.md describes: the password never leaves
// the browser. Registration sends stored credentials; login sends a proof.
"use strict";

const Scram = (() => {
  const enc = new TextEncoder();
  const HASHES = { "SCRAM-SHA-256": ["SHA-256", 256], "SCRAM-SHA-512": ["SHA-512", 512] };
  // The iteration counts a server may ask for, as the Rust client allows
  // (parley_core::limits::MIN_SCRAM_ITERATIONS, parley_core::scram::MAX_ITERATIONS):
  // fewer makes a guessable proof, more is a server making the browser hang.
  const MIN_ITERATIONS = 4096;
  const MAX_ITERATIONS = 10_000_000;

  // What went wrong, in words fit for the login form.
  class ScramError extends Error {
    constructor(message) {
      super(message);
      this.name = "ScramError";
    }
  }

  // WebCrypto's digest and key functions exist only in a secure context:
  // over HTTPS, or from localhost.
  function available() {
    return typeof crypto === "object" && crypto !== null && typeof crypto.subtle === "object" && crypto.subtle !== null;
  }

  function requireWebCrypto() {
    if (!available()) {
      throw new ScramError(
        "This browser cannot log in securely here: use HTTPS or localhost (the page needs WebCrypto, which browsers offer only on secure connections).",
      );
    }
  }

  // A refused server-first-message, before any key is derived from the password.
  function refused(why) {
    return new ScramError("The server's login reply was refused (" + why + "); the password was not used.");
  }

  function b64(bytes) {
    let s = "";
    for (const b of bytes) s += String.fromCharCode(b);
    return btoa(s);
  }

  function unb64(text) {
    const s = atob(text);
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }

  function randomBytes(n) {
    const out = new Uint8Array(n);
    crypto.getRandomValues(out);
    return out;
  }

  function hashOf(mechanism) {
    const h = HASHES[mechanism];
    if (!h) throw new ScramError("The server offers an unsupported login mechanism (" + mechanism + ").");
    return h;
  }

  async function saltedPassword(mechanism, password, salt, iterations) {
    const [hash, bits] = hashOf(mechanism);
    const key = await crypto.subtle.importKey("raw", enc.encode(password), "PBKDF2", false, ["deriveBits"]);
    const out = await crypto.subtle.deriveBits({ name: "PBKDF2", hash, salt, iterations }, key, bits);
    return new Uint8Array(out);
  }

  async function hmac(mechanism, keyBytes, data) {
    const [hash] = hashOf(mechanism);
    const key = await crypto.subtle.importKey("raw", keyBytes, { name: "HMAC", hash }, false, ["sign"]);
    const bytes = typeof data === "string" ? enc.encode(data) : data;
    return new Uint8Array(await crypto.subtle.sign("HMAC", key, bytes));
  }

  async function digest(mechanism, data) {
    const [hash] = hashOf(mechanism);
    return new Uint8Array(await crypto.subtle.digest(hash, data));
  }

  // What POST /v1/accounts takes: the keys, never the password.
  async function credentials(mechanism, password, iterations) {
    hashOf(mechanism);
    if (!Number.isInteger(iterations) || iterations < MIN_ITERATIONS || iterations > MAX_ITERATIONS) {
      throw new ScramError("The server asks for " + iterations + " key-derivation rounds; this browser accepts " + MIN_ITERATIONS + " to " + MAX_ITERATIONS + ".");
    }
    requireWebCrypto();
    const salt = randomBytes(16);
    const salted = await saltedPassword(mechanism, password, salt, iterations);
    const clientKey = await hmac(mechanism, salted, "Client Key");
    return {
      mechanism,
      salt: b64(salt),
      iterations,
      stored_key: b64(await digest(mechanism, clientKey)),
      server_key: b64(await hmac(mechanism, salted, "Server Key")),
    };
  }

  // Checks a server-first-message (RFC 5802 section 7: r=, s=, i= in that
  // order, then optional extensions) as the Rust client does: the nonce
  // must extend ours, the salt must be non-empty base64, the iteration
  // count a plain number within bounds.
  function parseServerFirst(text, clientNonce) {
    if (typeof text !== "string") throw refused("no server-first-message");
    const parts = text.split(",");
    if (parts[0].startsWith("m=")) throw refused("it asks for an extension this client does not have");
    if (parts[0].startsWith("e=")) throw refused("the server reported an error: " + parts[0].slice(2));
    const attrs = {};
    for (const part of parts) {
      if (part.length < 2 || part[1] !== "=") throw refused("it is malformed");
      if (!(part[0] in attrs)) attrs[part[0]] = part.slice(2);
    }
    if ("e" in attrs) throw refused("the server reported an error: " + attrs.e);
    const nonce = attrs.r || "";
    if (!nonce.startsWith(clientNonce) || nonce.length === clientNonce.length) {
      throw refused("its nonce does not extend this browser's");
    }
    let salt;
    try {
      salt = unb64(attrs.s || "");
    } catch {
      throw refused("its salt is not base64");
    }
    if (salt.length === 0) throw refused("its salt is empty");
    const digits = attrs.i || "";
    if (!/^[0-9]{1,9}$/.test(digits)) throw refused("its iteration count is not a number from " + MIN_ITERATIONS + " to " + MAX_ITERATIONS);
    const iterations = Number(digits);
    if (iterations < MIN_ITERATIONS || iterations > MAX_ITERATIONS) {
      throw refused("its iteration count " + iterations + " is outside " + MIN_ITERATIONS + " to " + MAX_ITERATIONS);
    }
    return { nonce, salt, iterations };
  }

  // One login: first() gives client-first, final(server_first, mechanism)
  // the client-final, verify(server_final) checks the server's signature.
  class Login {
    constructor(name, password) {
      this.name = name;
      this.password = password;
      this.nonce = b64(randomBytes(18));
      this.bare = "n=" + name.replace(/=/g, "=3D").replace(/,/g, "=2C") + ",r=" + this.nonce;
    }

    first() {
      return "n,," + this.bare;
    }

    async final(serverFirst, mechanism) {
      const { nonce, salt, iterations } = parseServerFirst(serverFirst, this.nonce);
      hashOf(mechanism);
      requireWebCrypto();
      const salted = await saltedPassword(mechanism, this.password, salt, iterations);
      const clientKey = await hmac(mechanism, salted, "Client Key");
      const storedKey = await digest(mechanism, clientKey);
      const withoutProof = "c=biws,r=" + nonce;
      this.authMessage = this.bare + "," + serverFirst + "," + withoutProof;
      const signature = await hmac(mechanism, storedKey, this.authMessage);
      const proof = clientKey.map((b, i) => b ^ signature[i]);
      this.serverKey = await hmac(mechanism, salted, "Server Key");
      this.mechanism = mechanism;
      return withoutProof + ",p=" + b64(proof);
    }

    async verify(serverFinal) {
      if (!this.serverKey) throw new ScramError("the login has no server-first-message yet");
      const expected = "v=" + b64(await hmac(this.mechanism, this.serverKey, this.authMessage));
      if (serverFinal !== expected) throw new ScramError("The server could not prove it knows this account's keys; not logged in.");
    }
  }

  return { credentials, Login, ScramError, available, b64, unb64, randomBytes, MIN_ITERATIONS, MAX_ITERATIONS };
})();
