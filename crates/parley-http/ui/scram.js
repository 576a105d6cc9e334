// SCRAM-SHA-256 / SCRAM-SHA-512 on the client side (RFC 5802, RFC 7677)
// with WebCrypto, as docs/PROTOCOL.md describes: the password never leaves
// the browser. Registration sends stored credentials; login sends a proof.
"use strict";

const Scram = (() => {
  const enc = new TextEncoder();
  const HASHES = { "SCRAM-SHA-256": ["SHA-256", 256], "SCRAM-SHA-512": ["SHA-512", 512] };

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
    if (!h) throw new Error("unsupported mechanism " + mechanism);
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
      const attrs = {};
      for (const part of serverFirst.split(",")) attrs[part[0]] = part.slice(2);
      if (!attrs.r || !attrs.r.startsWith(this.nonce) || !attrs.s || !attrs.i) {
        throw new Error("malformed server-first-message");
      }
      const salted = await saltedPassword(mechanism, this.password, unb64(attrs.s), parseInt(attrs.i, 10));
      const clientKey = await hmac(mechanism, salted, "Client Key");
      const storedKey = await digest(mechanism, clientKey);
      const withoutProof = "c=biws,r=" + attrs.r;
      this.authMessage = this.bare + "," + serverFirst + "," + withoutProof;
      const signature = await hmac(mechanism, storedKey, this.authMessage);
      const proof = clientKey.map((b, i) => b ^ signature[i]);
      this.serverKey = await hmac(mechanism, salted, "Server Key");
      this.mechanism = mechanism;
      return withoutProof + ",p=" + b64(proof);
    }

    async verify(serverFinal) {
      const expected = "v=" + b64(await hmac(this.mechanism, this.serverKey, this.authMessage));
      if (serverFinal !== expected) throw new Error("the server's signature does not match");
    }
  }

  return { credentials, Login, b64, unb64, randomBytes };
})();
