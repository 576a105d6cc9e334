// A small protobuf encoder and decoder for the native frames the web UI
// uses over /v1/ws (proto/parley.proto; one frame per binary message).
// Integers stay below 2^53, so plain numbers hold them exactly.
"use strict";

const Proto = (() => {
  // Every message field and enum number this file uses, under its names in
  // proto/parley.proto. No number is written anywhere else in this file:
  // crates/parley-http/tests/ui_proto.rs checks both against the schema.
  const S = {
    ClientFrame: { request_id: 1, resume: 13, send: 20, ack: 22, subscribe: 24, logout: 32, ping: 40 },
    Resume: { token: 1 },
    SendMessage: { to: 1, client_msg_id: 2, body: 3 },
    Ack: { up_to_seq: 1, seqs: 2 },
    Subscribe: { after_seq: 1 },
    Ping: { nonce: 1 },
    ServerFrame: {
      request_id: 1,
      welcome: 2,
      error: 3,
      goodbye: 4,
      auth_ok: 12,
      sent: 20,
      acked: 22,
      subscribed: 24,
      push: 25,
      presence: 26,
      account_deleted: 31,
      logged_out: 32,
      pong: 40,
      presence_request: 50,
      presence_approved: 51,
    },
    Welcome: {
      protocol_version: 1,
      server: 2,
      max_body_bytes: 6,
      keepalive_secs: 7,
      auth_timeout_secs: 8,
      ack_timeout_ms: 9,
      max_ack_backoff_ms: 10,
      max_unacked: 11,
      max_contacts: 12,
      send_rate_per_account: 15,
    },
    Error: { code: 1, message: 2, retry_after_ms: 3 },
    Goodbye: { code: 1, message: 2 },
    AuthOk: { name: 2, unread: 5, last_seq: 6, resume_token: 7 },
    Sent: { client_msg_id: 1, message_id: 2, seq: 3, duplicate: 5 },
    Acked: { acked: 1, unread: 2 },
    Subscribed: { last_seq: 1, unread: 2 },
    Push: { messages: 1 },
    Message: { message_id: 1, seq: 2, from: 3, timestamp_ms: 4, body: 5, client_msg_id: 6, acked: 7 },
    Presence: { name: 1, online: 2 },
    PresenceRequest: { from: 1 },
    PresenceApproved: { name: 1 },
    Pong: { nonce: 1 },
    // The ErrorCode values the UI reacts to.
    ErrorCode: { NOT_AUTHENTICATED: 11, AUTH_FAILED: 13, BUSY: 30, SHUTTING_DOWN: 31, ACCOUNT_DELETED: 32, TIMEOUT: 34 },
  };

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
    const M = S.Message;
    return {
      message_id: num(f, M.message_id),
      seq: num(f, M.seq),
      from: str(f, M.from),
      timestamp_ms: num(f, M.timestamp_ms),
      body: str(f, M.body),
      client_msg_id: str(f, M.client_msg_id),
      acked: bool(f, M.acked),
    };
  }

  const F = S.ServerFrame;
  const SERVER_BODIES = new Map([
    [
      F.welcome,
      [
        "welcome",
        (f) => {
          const W = S.Welcome;
          return {
            protocol_version: num(f, W.protocol_version),
            server: str(f, W.server),
            keepalive_secs: num(f, W.keepalive_secs),
            max_body_bytes: num(f, W.max_body_bytes),
            auth_timeout_secs: num(f, W.auth_timeout_secs),
            ack_timeout_ms: num(f, W.ack_timeout_ms),
            max_ack_backoff_ms: num(f, W.max_ack_backoff_ms),
            max_unacked: num(f, W.max_unacked),
            max_contacts: num(f, W.max_contacts),
            send_rate_per_account: num(f, W.send_rate_per_account),
          };
        },
      ],
    ],
    [F.error, ["error", (f) => ({ code: num(f, S.Error.code), message: str(f, S.Error.message), retry_after_ms: num(f, S.Error.retry_after_ms) })]],
    [F.goodbye, ["goodbye", (f) => ({ code: num(f, S.Goodbye.code), message: str(f, S.Goodbye.message) })]],
    [
      F.auth_ok,
      [
        "auth_ok",
        (f) => ({
          name: str(f, S.AuthOk.name),
          unread: num(f, S.AuthOk.unread),
          last_seq: num(f, S.AuthOk.last_seq),
          // Every login and resume hands out a new resume token; the one
          // used to resume stops working.
          resume_token: f.has(S.AuthOk.resume_token) ? f.get(S.AuthOk.resume_token)[0].slice() : new Uint8Array(0),
        }),
      ],
    ],
    [
      F.sent,
      [
        "sent",
        (f) => ({
          client_msg_id: str(f, S.Sent.client_msg_id),
          message_id: num(f, S.Sent.message_id),
          seq: num(f, S.Sent.seq),
          duplicate: bool(f, S.Sent.duplicate),
        }),
      ],
    ],
    [F.acked, ["acked", (f) => ({ acked: num(f, S.Acked.acked), unread: num(f, S.Acked.unread) })]],
    [F.subscribed, ["subscribed", (f) => ({ last_seq: num(f, S.Subscribed.last_seq), unread: num(f, S.Subscribed.unread) })]],
    [F.push, ["push", (f) => ({ messages: all(f, S.Push.messages).map(message) })]],
    [F.presence, ["presence", (f) => ({ name: str(f, S.Presence.name), online: bool(f, S.Presence.online) })]],
    [F.presence_request, ["presence_request", (f) => ({ from: str(f, S.PresenceRequest.from) })]],
    [F.presence_approved, ["presence_approved", (f) => ({ name: str(f, S.PresenceApproved.name) })]],
    [F.account_deleted, ["account_deleted", () => ({})]],
    [F.logged_out, ["logged_out", () => ({})]],
    [F.pong, ["pong", (f) => ({ nonce: num(f, S.Pong.nonce) })]],
  ]);

  // A ServerFrame as { request_id, kind, body }; kind is null for replies
  // the UI does not use.
  function decodeServerFrame(bytes) {
    const f = fields(bytes);
    const requestId = num(f, F.request_id);
    for (const [field, [kind, parse]] of SERVER_BODIES) {
      if (f.has(field)) {
        return { request_id: requestId, kind, body: parse(fields(f.get(field)[0])) };
      }
    }
    return { request_id: requestId, kind: null, body: {} };
  }

  // ClientFrame builders: each returns the encoded frame.
  const C = S.ClientFrame;
  function frame(requestId, field, inner) {
    return new Writer().uint(C.request_id, requestId).message(field, inner).finish();
  }
  const client = {
    resume: (id, token) => frame(id, C.resume, new Writer().bytesField(S.Resume.token, token)),
    subscribe: (id, afterSeq) => frame(id, C.subscribe, new Writer().uint(S.Subscribe.after_seq, afterSeq)),
    ack: (id, upTo, seqs) => frame(id, C.ack, new Writer().uint(S.Ack.up_to_seq, upTo).packed(S.Ack.seqs, seqs)),
    ping: (id, nonce) => frame(id, C.ping, new Writer().uint(S.Ping.nonce, nonce)),
    logout: (id) => frame(id, C.logout, new Writer()),
    send: (id, to, clientMsgId, body) =>
      frame(
        id,
        C.send,
        new Writer().string(S.SendMessage.to, to).string(S.SendMessage.client_msg_id, clientMsgId).string(S.SendMessage.body, body),
      ),
  };

  const codes = S.ErrorCode;

  return { Writer, fields, decodeServerFrame, client, codes };
})();
