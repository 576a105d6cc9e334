// A small protobuf encoder and decoder for the native frames the web UI
// uses over /v1/ws (proto/parley.proto; one frame per binary message).
// Integers stay below 2^53, so plain numbers hold them exactly.
"use strict";

const Proto = (() => {
  const enc = new TextEncoder();
  const dec = new TextDecoder();

  class Writer {
    constructor() {
      this.bytes = [];
    }
    varint(n) {
      let v = Math.floor(n);
      while (v >= 0x80) {
        this.bytes.push((v % 0x80) | 0x80);
        v = Math.floor(v / 0x80);
      }
      this.bytes.push(v);
      return this;
    }
    tag(field, wire) {
      return this.varint(field * 8 + wire);
    }
    uint(field, n) {
      if (n) this.tag(field, 0).varint(n);
      return this;
    }
    bytesField(field, data) {
      this.tag(field, 2).varint(data.length);
      for (const b of data) this.bytes.push(b);
      return this;
    }
    string(field, s) {
      return s ? this.bytesField(field, enc.encode(s)) : this;
    }
    message(field, writer) {
      return this.bytesField(field, writer.finish());
    }
    packed(field, numbers) {
      if (!numbers || numbers.length === 0) return this;
      const inner = new Writer();
      for (const n of numbers) inner.varint(n);
      return this.bytesField(field, inner.finish());
    }
    finish() {
      return Uint8Array.from(this.bytes);
    }
  }

  // Field number → list of values (numbers for varints, byte arrays for
  // length-delimited fields). Other wire types are skipped.
  function fields(buf) {
    const out = new Map();
    let i = 0;
    const varint = () => {
      let result = 0;
      let scale = 1;
      for (;;) {
        if (i >= buf.length) throw new Error("truncated varint");
        const b = buf[i++];
        result += (b & 0x7f) * scale;
        if (b < 0x80) return result;
        scale *= 0x80;
      }
    };
    while (i < buf.length) {
      const key = varint();
      const field = Math.floor(key / 8);
      const wire = key % 8;
      let value;
      if (wire === 0) value = varint();
      else if (wire === 2) {
        const len = varint();
        value = buf.subarray(i, i + len);
        i += len;
      } else if (wire === 1) {
        i += 8;
        continue;
      } else if (wire === 5) {
        i += 4;
        continue;
      } else throw new Error("unsupported wire type " + wire);
      if (!out.has(field)) out.set(field, []);
      out.get(field).push(value);
    }
    return out;
  }

  const num = (f, n) => (f.has(n) ? f.get(n)[0] : 0);
  const str = (f, n) => (f.has(n) ? dec.decode(f.get(n)[0]) : "");
  const bool = (f, n) => num(f, n) !== 0;
  const all = (f, n) => f.get(n) || [];

  function message(bytes) {
    const f = fields(bytes);
    return {
      message_id: num(f, 1),
      seq: num(f, 2),
      from: str(f, 3),
      timestamp_ms: num(f, 4),
      body: str(f, 5),
      client_msg_id: str(f, 6),
      acked: bool(f, 7),
    };
  }

  const SERVER_BODIES = {
    2: ["welcome", (f) => ({ protocol_version: num(f, 1), server: str(f, 2), keepalive_secs: num(f, 7), max_body_bytes: num(f, 6) })],
    3: ["error", (f) => ({ code: num(f, 1), message: str(f, 2), retry_after_ms: num(f, 3) })],
    4: ["goodbye", (f) => ({ code: num(f, 1), message: str(f, 2) })],
    12: [
      "auth_ok",
      (f) => ({
        name: str(f, 2),
        unread: num(f, 5),
        last_seq: num(f, 6),
        // Every login and resume hands out a new resume token; the one
        // used to resume stops working.
        resume_token: f.has(7) ? f.get(7)[0].slice() : new Uint8Array(0),
      }),
    ],
    20: ["sent", (f) => ({ client_msg_id: str(f, 1), message_id: num(f, 2), seq: num(f, 3), duplicate: bool(f, 5) })],
    22: ["acked", (f) => ({ acked: num(f, 1), unread: num(f, 2) })],
    24: ["subscribed", (f) => ({ last_seq: num(f, 1), unread: num(f, 2) })],
    25: ["push", (f) => ({ messages: all(f, 1).map(message) })],
    26: ["presence", (f) => ({ name: str(f, 1), online: bool(f, 2) })],
    50: ["presence_request", (f) => ({ from: str(f, 1) })],
    51: ["presence_approved", (f) => ({ name: str(f, 1) })],
    31: ["account_deleted", () => ({})],
    32: ["logged_out", () => ({})],
    40: ["pong", (f) => ({ nonce: num(f, 1) })],
  };

  // A ServerFrame as { request_id, kind, body }; kind is null for replies
  // the UI does not use.
  function decodeServerFrame(bytes) {
    const f = fields(bytes);
    for (const [field, [kind, parse]] of Object.entries(SERVER_BODIES)) {
      if (f.has(Number(field))) {
        return { request_id: num(f, 1), kind, body: parse(fields(f.get(Number(field))[0])) };
      }
    }
    return { request_id: num(f, 1), kind: null, body: {} };
  }

  // ClientFrame builders: each returns the encoded frame.
  function frame(requestId, field, inner) {
    return new Writer().uint(1, requestId).message(field, inner).finish();
  }
  const client = {
    resume: (id, token) => frame(id, 13, new Writer().bytesField(1, token)),
    subscribe: (id, afterSeq) => frame(id, 24, new Writer().uint(1, afterSeq)),
    ack: (id, upTo, seqs) => frame(id, 22, new Writer().uint(1, upTo).packed(2, seqs)),
    ping: (id, nonce) => frame(id, 40, new Writer().uint(1, nonce)),
    logout: (id) => frame(id, 32, new Writer()),
    send: (id, to, clientMsgId, body) => frame(id, 20, new Writer().string(1, to).string(2, clientMsgId).string(3, body)),
  };

  // ErrorCode values (proto/parley.proto) the UI reacts to.
  const codes = { NOT_AUTHENTICATED: 11, AUTH_FAILED: 13, BUSY: 30, SHUTTING_DOWN: 31, ACCOUNT_DELETED: 32, TIMEOUT: 34 };

  return { Writer, fields, decodeServerFrame, client, codes };
})();
