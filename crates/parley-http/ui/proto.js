// A small protobuf encoder and decoder for the native frames the web UI
// uses over /v1/ws (proto/parley.proto; one frame per binary message).
// Integers stay below 2^53, so plain numbers hold them exactly.
"use strict";

const Proto = (() => {
  // Every message field and enum number this file uses, under its names in
  // proto/parley.proto. No number is written anywhere else in this file:
  // crates/parley-http/tests/ui_proto.rs checks both against the schema.
  const S = {
    ClientFrame: {
      request_id: 1,
      resume: 13,
      send: 20,
      ack: 22,
      subscribe: 24,
      logout: 32,
      ping: 40,
      offer_file: 60,
      serve_file: 61,
      accept_file: 62,
      refuse_file: 63,
      relay_chunk: 64,
      transfer_done: 65,
      list_held: 70,
      release_held: 71,
      drop_held: 72,
      report_spam: 73,
    },
    Resume: { token: 1 },
    SendMessage: { to: 1, client_msg_id: 2, body: 3 },
    Ack: { up_to_seq: 1, seqs: 2 },
    Subscribe: { after_seq: 1 },
    Ping: { nonce: 1 },
    OfferFile: { to: 1, client_msg_id: 2, name: 3, size: 4, sha256: 5 },
    PeerInfo: { candidates: 1, fingerprint: 2 },
    ServeFile: { to: 1, offer_id: 2, peer: 3 },
    AcceptFile: { seq: 1, peer: 2, resume_from: 3 },
    RefuseFile: { seq: 1 },
    RelayChunk: { offer_id: 1, offset: 2, data: 3 },
    TransferDone: { offer_id: 1, result: 2, detail: 3 },
    ListHeld: { after_id: 1, limit: 2 },
    ReleaseHeld: { ids: 1 },
    DropHeld: { ids: 1, spam: 2 },
    ReportSpam: { seqs: 1 },
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
      transfer_joined: 60,
      transfer_ready: 61,
      relayed_chunk: 62,
      chunk_relayed: 63,
      transfer_ended: 64,
      held: 70,
      released: 71,
      held_dropped: 72,
      spam_reported: 73,
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
    Error: { code: 1, message: 2, retry_after_ms: 3, reason: 4 },
    Goodbye: { code: 1, message: 2 },
    AuthOk: { name: 2, unread: 5, last_seq: 6, resume_token: 7 },
    Sent: { client_msg_id: 1, message_id: 2, seq: 3, duplicate: 5, held: 6 },
    Acked: { acked: 1, unread: 2 },
    Subscribed: { last_seq: 1, unread: 2 },
    Push: { messages: 1 },
    Message: { message_id: 1, seq: 2, from: 3, timestamp_ms: 4, body: 5, client_msg_id: 6, acked: 7 },
    Presence: { name: 1, online: 2 },
    PresenceRequest: { from: 1 },
    PresenceApproved: { name: 1 },
    Pong: { nonce: 1 },
    ChunkRelayed: { offer_id: 1, next_offset: 2 },
    TransferJoined: { offer_id: 1, peer: 2, name: 3, size: 4, sha256: 5, peer_online: 6 },
    TransferReady: { offer_id: 1, peer: 2, peer_info: 3, token: 4, resume_from: 5, relay: 6, relay_bytes_per_sec: 7 },
    TransferEnded: { offer_id: 1, result: 2, detail: 3 },
    HeldMessage: { id: 1, from: 2, timestamp_ms: 3, body: 4, client_msg_id: 5, filter: 6, score: 7 },
    HeldBatch: { messages: 1, more: 2 },
    Released: { released: 1 },
    ReleasedMessage: { id: 1, seq: 2 },
    HeldDropped: { ids: 1 },
    SpamReported: { reported: 1 },
    ReportedMessage: { seq: 1, id: 2 },
    TransferResult: { COMPLETE: 1, REFUSED: 2, HASH_MISMATCH: 3, PEER_GONE: 4, CANCELLED: 5, FAILED: 6 },
    // The ErrorCode values the UI reacts to.
    ErrorCode: {
      INVALID_REQUEST: 10,
      NOT_AUTHENTICATED: 11,
      AUTH_FAILED: 13,
      MESSAGE_TOO_LARGE: 17,
      BUSY: 30,
      SHUTTING_DOWN: 31,
      ACCOUNT_DELETED: 32,
      TIMEOUT: 34,
      REJECTED: 42,
    },
  };

  const enc = new TextEncoder();
  const dec = new TextDecoder();

  // Bytes of a bytes field at or above which the field's data is kept as
  // it is instead of copied byte by byte (relayed file chunks).
  const LARGE_FIELD = 1024;

  class Writer {
    constructor() {
      this.parts = [];
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
    bool(field, b) {
      return this.uint(field, b ? 1 : 0);
    }
    bytesField(field, data) {
      this.tag(field, 2).varint(data.length);
      if (data.length >= LARGE_FIELD) {
        this.flush();
        this.parts.push(data);
      } else {
        for (const b of data) this.bytes.push(b);
      }
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
    flush() {
      if (this.bytes.length === 0) return;
      this.parts.push(Uint8Array.from(this.bytes));
      this.bytes = [];
    }
    finish() {
      this.flush();
      const out = new Uint8Array(this.parts.reduce((n, p) => n + p.length, 0));
      let at = 0;
      for (const p of this.parts) {
        out.set(p, at);
        at += p.length;
      }
      return out;
    }
  }

  // The varint at buf[at]: [its value, the index after it].
  function readVarint(buf, at) {
    let result = 0;
    let scale = 1;
    let i = at;
    for (;;) {
      if (i >= buf.length) throw new Error("truncated varint");
      const b = buf[i++];
      result += (b & 0x7f) * scale;
      if (b < 0x80) return [result, i];
      scale *= 0x80;
    }
  }

  // Field number → list of values: numbers for varints, byte arrays for
  // length-delimited fields and for the 8 and 4 bytes of fixed-width ones
  // (read with `float`).
  function fields(buf) {
    const out = new Map();
    let i = 0;
    const varint = () => {
      const [value, next] = readVarint(buf, i);
      i = next;
      return value;
    };
    while (i < buf.length) {
      const key = varint();
      const field = Math.floor(key / 8);
      const wire = key % 8;
      let value;
      let len;
      if (wire === 0) value = varint();
      else if (wire === 2 || wire === 1 || wire === 5) {
        len = wire === 2 ? varint() : wire === 1 ? 8 : 4;
        if (i + len > buf.length) throw new Error("truncated field");
        value = buf.subarray(i, i + len);
        i += len;
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
  // A bytes field, copied out of the frame.
  const bytes = (f, n) => (f.has(n) ? f.get(n)[0].slice() : new Uint8Array(0));
  // A `float` field (4 bytes, little-endian).
  function float(f, n) {
    const raw = f.has(n) ? f.get(n)[0] : null;
    if (!(raw instanceof Uint8Array) || raw.length !== 4) return 0;
    return new DataView(raw.buffer, raw.byteOffset, 4).getFloat32(0, true);
  }
  // A repeated integer field, packed (as proto3 writes it) or not.
  function uints(f, n) {
    const out = [];
    for (const v of all(f, n)) {
      if (typeof v === "number") {
        out.push(v);
        continue;
      }
      for (let i = 0; i < v.length; ) {
        const [value, next] = readVarint(v, i);
        out.push(value);
        i = next;
      }
    }
    return out;
  }

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

  function heldMessage(raw) {
    const f = fields(raw);
    const H = S.HeldMessage;
    return {
      id: num(f, H.id),
      from: str(f, H.from),
      timestamp_ms: num(f, H.timestamp_ms),
      body: str(f, H.body),
      client_msg_id: str(f, H.client_msg_id),
      filter: str(f, H.filter),
      score: float(f, H.score),
    };
  }

  function peerInfo(raw) {
    const f = fields(raw);
    return { candidates: all(f, S.PeerInfo.candidates).map((c) => dec.decode(c)), fingerprint: bytes(f, S.PeerInfo.fingerprint) };
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
    [
      F.error,
      [
        "error",
        (f) => ({
          code: num(f, S.Error.code),
          message: str(f, S.Error.message),
          retry_after_ms: num(f, S.Error.retry_after_ms),
          // With REJECTED: the filter that refused ("spam", "blocked_words").
          reason: str(f, S.Error.reason),
        }),
      ],
    ],
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
          resume_token: bytes(f, S.AuthOk.resume_token),
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
          // Held in the recipient's spam folder: message_id and seq are 0.
          held: bool(f, S.Sent.held),
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
    [
      F.transfer_joined,
      [
        "transfer_joined",
        (f) => {
          const J = S.TransferJoined;
          return {
            offer_id: num(f, J.offer_id),
            peer: str(f, J.peer),
            name: str(f, J.name),
            size: num(f, J.size),
            sha256: bytes(f, J.sha256),
            peer_online: bool(f, J.peer_online),
          };
        },
      ],
    ],
    [
      F.transfer_ready,
      [
        "transfer_ready",
        (f) => {
          const R = S.TransferReady;
          return {
            offer_id: num(f, R.offer_id),
            peer: str(f, R.peer),
            peer_info: f.has(R.peer_info) ? peerInfo(f.get(R.peer_info)[0]) : { candidates: [], fingerprint: new Uint8Array(0) },
            token: bytes(f, R.token),
            resume_from: num(f, R.resume_from),
            relay: bool(f, R.relay),
            relay_bytes_per_sec: num(f, R.relay_bytes_per_sec),
          };
        },
      ],
    ],
    [
      F.relayed_chunk,
      [
        "relayed_chunk",
        // `data` is a view into the frame (one frame per chunk), not a copy.
        (f) => ({
          offer_id: num(f, S.RelayChunk.offer_id),
          offset: num(f, S.RelayChunk.offset),
          data: f.has(S.RelayChunk.data) ? f.get(S.RelayChunk.data)[0] : new Uint8Array(0),
        }),
      ],
    ],
    [F.chunk_relayed, ["chunk_relayed", (f) => ({ offer_id: num(f, S.ChunkRelayed.offer_id), next_offset: num(f, S.ChunkRelayed.next_offset) })]],
    [
      F.transfer_ended,
      [
        "transfer_ended",
        (f) => ({ offer_id: num(f, S.TransferEnded.offer_id), result: num(f, S.TransferEnded.result), detail: str(f, S.TransferEnded.detail) }),
      ],
    ],
    [F.held, ["held", (f) => ({ messages: all(f, S.HeldBatch.messages).map(heldMessage), more: bool(f, S.HeldBatch.more) })]],
    [
      F.released,
      [
        "released",
        (f) => ({
          released: all(f, S.Released.released).map((raw) => {
            const r = fields(raw);
            return { id: num(r, S.ReleasedMessage.id), seq: num(r, S.ReleasedMessage.seq) };
          }),
        }),
      ],
    ],
    [F.held_dropped, ["held_dropped", (f) => ({ ids: uints(f, S.HeldDropped.ids) })]],
    [
      F.spam_reported,
      [
        "spam_reported",
        (f) => ({
          reported: all(f, S.SpamReported.reported).map((raw) => {
            const r = fields(raw);
            return { seq: num(r, S.ReportedMessage.seq), id: num(r, S.ReportedMessage.id) };
          }),
        }),
      ],
    ],
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
  // The browser takes no direct path: no candidates, and a fingerprint of
  // 32 zero bytes where a native client names its QUIC certificate.
  const noDirectPath = () => new Writer().bytesField(S.PeerInfo.fingerprint, new Uint8Array(32));
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
    offerFile: (id, to, clientMsgId, name, size, sha256) =>
      frame(
        id,
        C.offer_file,
        new Writer()
          .string(S.OfferFile.to, to)
          .string(S.OfferFile.client_msg_id, clientMsgId)
          .string(S.OfferFile.name, name)
          .uint(S.OfferFile.size, size)
          .bytesField(S.OfferFile.sha256, sha256),
      ),
    serveFile: (id, to, offerId) =>
      frame(id, C.serve_file, new Writer().string(S.ServeFile.to, to).uint(S.ServeFile.offer_id, offerId).message(S.ServeFile.peer, noDirectPath())),
    acceptFile: (id, seq, resumeFrom) =>
      frame(
        id,
        C.accept_file,
        new Writer().uint(S.AcceptFile.seq, seq).message(S.AcceptFile.peer, noDirectPath()).uint(S.AcceptFile.resume_from, resumeFrom),
      ),
    refuseFile: (id, seq) => frame(id, C.refuse_file, new Writer().uint(S.RefuseFile.seq, seq)),
    relayChunk: (id, offerId, offset, data) =>
      frame(
        id,
        C.relay_chunk,
        new Writer().uint(S.RelayChunk.offer_id, offerId).uint(S.RelayChunk.offset, offset).bytesField(S.RelayChunk.data, data),
      ),
    transferDone: (id, offerId, result, detail) =>
      frame(
        id,
        C.transfer_done,
        new Writer().uint(S.TransferDone.offer_id, offerId).uint(S.TransferDone.result, result).string(S.TransferDone.detail, detail),
      ),
    // The spam folder: read it (ids after `afterId`), "not spam", delete
    // (with `spam`: reported as spam first), and move mailbox messages in.
    listHeld: (id, afterId, limit) => frame(id, C.list_held, new Writer().uint(S.ListHeld.after_id, afterId).uint(S.ListHeld.limit, limit)),
    releaseHeld: (id, ids) => frame(id, C.release_held, new Writer().packed(S.ReleaseHeld.ids, ids)),
    dropHeld: (id, ids, spam) => frame(id, C.drop_held, new Writer().packed(S.DropHeld.ids, ids).bool(S.DropHeld.spam, spam)),
    reportSpam: (id, seqs) => frame(id, C.report_spam, new Writer().packed(S.ReportSpam.seqs, seqs)),
  };

  const codes = S.ErrorCode;
  const results = S.TransferResult;

  return { Writer, fields, decodeServerFrame, client, codes, results };
})();
