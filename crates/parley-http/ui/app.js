// The Parley web UI. JSON over /v1 for login, accounts, contacts, history
// and sending; native frames over /v1/ws for live delivery, presence, acks,
// files and the spam folder. No framework, no build step, nothing loaded
// from elsewhere.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const SESSION_KEY = "parley.session";
  // Every web-storage key the UI writes starts with this.
  const STORAGE_PREFIX = "parley.";
  // What localStorage keeps per account, as `parley.KIND.NAME`; logging out
  // and deleting the account remove every one of them.
  const ACCOUNT_STORES = ["sent"];
  const PAGER_PREFIX = "pager:";
  const SYSTEM_PREFIX = "system:";
  // What `state.current` is while the spam folder is open: no sender's key
  // (account names cannot hold ":").
  const SPAM_FOLDER = "folder:spam";
  const HISTORY_PAGE = 500;
  const HISTORY_PAGES = 20;
  // The spam folder is read in pages of HELD_PAGE, at most HELD_PAGES of
  // them (the server keeps 1000 by default).
  const HELD_PAGE = 100;
  const HELD_PAGES = 10;
  const RETRY_MS = 3000;
  // File transfer (docs/PROTOCOL.md, "File transfer"). A browser cannot
  // take the direct QUIC path, so its files always go through the relay.
  const OFFER_LINE = "parley-file/1 ";
  // Bytes in one relayed chunk, and chunks sent before their ChunkRelayed
  // (the server's MAX_RELAY_CHUNK_BYTES and RELAY_WINDOW).
  const CHUNK_BYTES = 128 * 1024;
  const CHUNK_WINDOW = 8;
  // Largest file the page sends or receives: it holds the whole file in
  // memory to hash it (the server's default relay_max_file_bytes).
  const MAX_BROWSER_FILE_MIB = 256;
  const MAX_BROWSER_FILE_BYTES = MAX_BROWSER_FILE_MIB * 1024 * 1024;
  // How long the sender waits for the recipient's verdict after the last chunk.
  const VERDICT_MS = 60000;
  // Where a transfer's status line names the other side.
  const PEER = Symbol("peer");

  const state = {
    session: null, // { name, token, resume_token }
    peers: new Map(), // key → { key, name, online, contact, subscription, lastTs }
    requests: [], // names asking to see this account's presence
    blocked: new Set(), // keys of the accounts this account blocks
    received: new Map(), // message_id → message from the mailbox
    sent: [], // what this browser sent: { client_msg_id, to, body, timestamp_ms, message_id, pending, failed, held }
    held: [], // the spam folder, oldest first: { id, from, timestamp_ms, body, client_msg_id, filter, score }
    heldMore: false, // the folder holds more than was read
    heldLoads: 0, // readings of the folder started; only the latest is shown
    lastSeq: 0,
    current: null,
    ws: null,
    wsReady: false,
    nextRequest: 1,
    resumeRequest: 0,
    backoff: 0,
    reconnectTimer: null,
    pingTimer: null,
    closing: false,
    calls: new Map(), // request_id → { resolve, reject } of a request awaiting its answer
    files: new Map(), // key → file transfer ("out:RANDOM" sent from here, "in:MESSAGE_ID" an offer received)
  };

  // ------------------------------------------------------------ storage

  const accountKey = (kind, name) => STORAGE_PREFIX + kind + "." + name.toLowerCase();
  const sentKey = () => accountKey("sent", state.session.name);

  // Removes everything this browser keeps for `name`: what it sent, and the
  // tab's tokens (sessionStorage holds only this tab's login).
  function forgetAccount(name) {
    for (const kind of ACCOUNT_STORES) localStorage.removeItem(accountKey(kind, name));
    for (const key of Object.keys(sessionStorage)) {
      if (key.startsWith(STORAGE_PREFIX)) sessionStorage.removeItem(key);
    }
  }

  function saveSession() {
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(state.session));
  }

  function loadSent() {
    try {
      state.sent = JSON.parse(localStorage.getItem(sentKey()) || "[]");
    } catch {
      state.sent = [];
    }
  }

  function saveSent() {
    localStorage.setItem(sentKey(), JSON.stringify(state.sent.slice(-2000)));
  }

  // ------------------------------------------------------------ HTTP

  class ApiError extends Error {
    constructor(status, code, detail, reason) {
      super(detail || code || "request failed");
      this.status = status;
      this.code = code;
      // With REJECTED: the filter that refused ("spam", "blocked_words").
      this.reason = reason;
    }
  }

  async function request(method, path, body, auth) {
    const headers = {};
    if (body !== undefined) headers["content-type"] = "application/json";
    if (auth) headers.authorization = "Bearer " + state.session.token;
    let response;
    try {
      response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch {
      throw new ApiError(0, "NETWORK", "cannot reach the server");
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) throw new ApiError(response.status, data && data.code, data && data.detail, data && data.reason);
    return data;
  }

  // An authenticated call; an expired bearer token is renewed once with
  // the resume token.
  async function api(method, path, body) {
    try {
      return await request(method, path, body, true);
    } catch (e) {
      // Only an ended or expired session is renewed: a wrong password
      // (AUTH_FAILED, when proving it again) is an answer, not an expiry.
      if (e.status !== 401 || e.code !== "NOT_AUTHENTICATED" || !(await renewToken())) throw e;
      return request(method, path, body, true);
    }
  }

  async function renewToken() {
    if (!state.session || !state.session.resume_token) return false;
    try {
      const r = await request("POST", "/v1/login/resume", { resume_token: state.session.resume_token }, false);
      state.session.token = r.token;
      // A resume replaces the token it used.
      if (r.resume_token) state.session.resume_token = r.resume_token;
      saveSession();
      return true;
    } catch {
      return false;
    }
  }

  // ------------------------------------------------------------ login

  async function serverInfo() {
    return request("GET", "/v1/server", undefined, false);
  }

  async function logIn(name, password) {
    const login = new Scram.Login(name, password);
    const challenge = await request("POST", "/v1/login/start", { client_first: login.first() }, false);
    const clientFinal = await login.final(challenge.server_first, challenge.mechanism);
    const ok = await request("POST", "/v1/login/finish", { login_id: challenge.login_id, client_final: clientFinal }, false);
    await login.verify(ok.server_final);
    state.session = { name: ok.name, token: ok.token, resume_token: ok.resume_token };
    saveSession();
  }

  async function register(name, password) {
    const info = await serverInfo();
    const credentials = await Scram.credentials(info.mechanisms[0], password, info.scram_iterations);
    const invite = $("auth-invite").value.trim();
    await request("POST", "/v1/accounts", { name, ...credentials, ...(invite ? { invite } : {}) }, false);
  }

  // The invite field shows only where registering needs a code.
  async function showInviteField() {
    try {
      const info = await serverInfo();
      $("auth-invite-row").hidden = info.registration !== "invite";
    } catch {
      // Without the server's answer the form stays as it is.
    }
  }

  const NO_WEBCRYPTO =
    "This page cannot log you in securely: use HTTPS or localhost. " +
    "Browsers offer the cryptography that keeps your password in this browser (WebCrypto) only on secure connections.";

  function authError(text) {
    $("auth-error").textContent = text;
  }

  async function onAuth(kind) {
    const name = $("auth-name").value.trim();
    const password = $("auth-password").value;
    if (!Scram.available()) return authError(NO_WEBCRYPTO);
    if (!name || !password) return authError("Enter a name and a password.");
    authError("");
    setBusy(true);
    try {
      if (kind === "register") {
        try {
          await register(name, password);
        } catch (e) {
          if (e.code === "NAME_TAKEN") {
            authError("That name is taken. If it is yours, log in instead.");
            $("login-button").focus();
            return;
          }
          if (e.code === "INVITE_INVALID" || e.code === "REGISTRATION_CLOSED") {
            $("auth-invite-row").hidden = e.code === "REGISTRATION_CLOSED";
            authError(e.message);
            return;
          }
          throw e;
        }
      }
      await logIn(name, password);
      $("auth-password").value = "";
      await startChat();
    } catch (e) {
      authError(e.code === "AUTH_FAILED" ? "Wrong name or password." : e.message);
    } finally {
      setBusy(false);
    }
  }

  function setBusy(busy) {
    $("login-button").disabled = busy;
    $("register-button").disabled = busy;
  }

  function showAuth() {
    document.title = "Parley";
    $("chat-view").hidden = true;
    $("auth-view").hidden = false;
    $("auth-name").focus();
    showInviteField();
  }

  // ------------------------------------------------------------ data

  const keyOf = (name) => (name.startsWith(PAGER_PREFIX) ? name : name.toLowerCase());

  // Who a sender is. Account names cannot hold ":", so a name with the
  // pager's prefix is a visitor and one with the system's is the server.
  function kindOf(name) {
    if (name.startsWith(PAGER_PREFIX)) return "pager";
    if (name.startsWith(SYSTEM_PREFIX)) return "system";
    if (name === SPAM_FOLDER) return "folder";
    return "account";
  }

  // A sender's name for display, each name isolated (<bdi>) so that its
  // characters cannot reorder the words around it. A visitor is always
  // called a visitor: "visitor ‘alice’ (pager)", never plain "alice".
  function senderLabel(name) {
    if (kindOf(name) !== "pager") return [el("bdi", {}, name)];
    const visitor = name.slice(PAGER_PREFIX.length);
    if (!visitor) return ["anonymous visitor (pager)"];
    return ["visitor ‘", el("bdi", {}, visitor), "’ (pager)"];
  }

  const senderText = (name) => senderLabel(name).map((part) => (typeof part === "string" ? part : part.textContent)).join("");

  function peer(name) {
    const key = keyOf(name);
    let p = state.peers.get(key);
    if (!p) {
      p = { key, name, online: null, contact: false, lastTs: 0 };
      state.peers.set(key, p);
    }
    return p;
  }

  function addReceived(m) {
    if (m.seq > state.lastSeq) state.lastSeq = m.seq;
    if (state.received.has(m.message_id)) return false;
    state.received.set(m.message_id, m);
    const p = peer(m.from);
    p.lastTs = Math.max(p.lastTs, m.timestamp_ms);
    return true;
  }

  function unreadFrom(key) {
    let n = 0;
    for (const m of state.received.values()) if (!m.acked && keyOf(m.from) === key) n++;
    return n;
  }

  async function loadContacts() {
    const r = await api("GET", "/v1/contacts");
    applyContacts(r.contacts);
  }

  function applyContacts(contacts) {
    for (const p of state.peers.values()) p.contact = false;
    for (const c of contacts) {
      const p = peer(c.name);
      p.name = c.name;
      p.contact = true;
      p.subscription = c.subscription;
      // Presence is shown only where it is shared.
      p.online = c.subscription === "approved" ? c.online : null;
    }
  }

  async function loadRequests() {
    const r = await api("GET", "/v1/presence/requests");
    state.requests = r.requests;
  }

  async function loadBlocked() {
    const r = await api("GET", "/v1/blocks");
    state.blocked = new Set(r.blocked.map((n) => n.toLowerCase()));
  }

  // The pager switch shows only where the server has a pager.
  async function loadPager() {
    const info = await serverInfo();
    $("pager-toggle-label").hidden = !info.pager;
    if (!info.pager) return;
    const r = await api("GET", "/v1/account/pager");
    $("pager-toggle").checked = r.accept;
  }

  async function setPager(e) {
    const want = e.target.checked;
    try {
      const r = await api("PUT", "/v1/account/pager", { accept: want });
      e.target.checked = r.accept;
    } catch (err) {
      e.target.checked = !want;
      alert("Could not change the pager setting: " + err.message);
    }
  }

  async function answerRequest(name, approve) {
    try {
      const r = await api("POST", `/v1/presence/requests/${encodeURIComponent(name)}/${approve ? "approve" : "deny"}`);
      state.requests = r.requests;
    } catch (e) {
      alert("Could not answer: " + e.message);
    }
    render();
  }

  async function toggleBlock() {
    const p = state.peers.get(state.current);
    if (!p) return;
    const blocked = state.blocked.has(p.key);
    if (!blocked && !confirm(`Block ${p.name}? Their messages will not reach you and neither of you sees the other online.`)) return;
    try {
      const r = await api(blocked ? "DELETE" : "PUT", "/v1/blocks/" + encodeURIComponent(p.name));
      state.blocked = new Set(r.blocked.map((n) => n.toLowerCase()));
      await loadContacts();
      await loadRequests();
    } catch (e) {
      alert("Could not change the block: " + e.message);
    }
    render();
  }

  function renderRequests() {
    const list = $("request-list");
    list.replaceChildren(
      ...state.requests.map((name) =>
        el(
          "li",
          { "data-request": name },
          el("span", { class: "name" }, el("bdi", {}, name)),
          el("button", { type: "button", "data-approve": name, onclick: () => answerRequest(name, true) }, "Approve"),
          el("button", { type: "button", "data-deny": name, onclick: () => answerRequest(name, false) }, "Deny"),
        ),
      ),
    );
    list.hidden = state.requests.length === 0;
    $("requests-heading").hidden = state.requests.length === 0;
  }

  async function loadHistory() {
    let after = 0;
    for (let page = 0; page < HISTORY_PAGES; page++) {
      const r = await api("GET", `/v1/messages?after_seq=${after}&limit=${HISTORY_PAGE}&include_acked=true`);
      for (const m of r.messages) addReceived(m);
      if (!r.more || r.messages.length === 0) break;
      after = r.messages[r.messages.length - 1].seq;
    }
  }

  // ------------------------------------------------------------ live socket

  function setConnection(kind, text) {
    const pill = $("connection");
    pill.dataset.state = kind;
    pill.textContent = text;
  }

  function connect() {
    clearTimeout(state.reconnectTimer);
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(scheme + location.host + "/v1/ws", "parley.v1");
    ws.binaryType = "arraybuffer";
    state.ws = ws;
    state.wsReady = false;
    setConnection(state.backoff ? "reconnecting" : "connecting", state.backoff ? "Reconnecting…" : "Connecting…");
    ws.onmessage = (event) => {
      let frame;
      try {
        frame = Proto.decodeServerFrame(new Uint8Array(event.data));
      } catch {
        return;
      }
      onFrame(frame);
    };
    ws.onclose = () => {
      if (state.ws !== ws) return;
      state.wsReady = false;
      socketGone();
      clearInterval(state.pingTimer);
      if (state.closing) return;
      setConnection("reconnecting", "Reconnecting…");
      // Capped exponential backoff with jitter.
      state.backoff = Math.min(15000, state.backoff ? state.backoff * 2 : 500);
      const wait = state.backoff / 2 + Math.random() * (state.backoff / 2);
      state.reconnectTimer = setTimeout(connect, wait);
    };
  }

  function sendFrame(bytes) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(bytes);
  }

  function onFrame(frame) {
    const b = frame.body;
    const awaited = frame.request_id ? state.calls.get(frame.request_id) : null;
    if (awaited) {
      state.calls.delete(frame.request_id);
      if (frame.kind === "error") awaited.reject(callError(b.code, b.message, b.reason));
      else awaited.resolve(frame);
      return;
    }
    switch (frame.kind) {
      case "welcome": {
        const every = Math.max(1, (b.keepalive_secs || 60) / 3) * 1000;
        clearInterval(state.pingTimer);
        state.pingTimer = setInterval(() => sendFrame(Proto.client.ping(0, Date.now() % 1e9)), every);
        state.resumeRequest = state.nextRequest++;
        sendFrame(Proto.client.resume(state.resumeRequest, Scram.unb64(state.session.resume_token)));
        break;
      }
      case "auth_ok":
        // A resume replaced the token it used: keep the new one.
        if (state.session && b.resume_token && b.resume_token.length > 0) {
          state.session.resume_token = Scram.b64(b.resume_token);
          saveSession();
        }
        sendFrame(Proto.client.subscribe(state.nextRequest++, state.lastSeq));
        break;
      case "subscribed":
        state.wsReady = true;
        state.backoff = 0;
        setConnection("online", "Online");
        ackVisible();
        retryOutbox();
        loadHeld();
        break;
      case "push": {
        let fresh = false;
        for (const m of b.messages) fresh = addReceived(m) || fresh;
        if (fresh) render();
        ackVisible();
        break;
      }
      case "presence": {
        const p = peer(b.name);
        p.online = b.online;
        render();
        break;
      }
      case "presence_request":
        if (!state.requests.includes(b.from)) state.requests = [...state.requests, b.from].sort((x, y) => x.toLowerCase().localeCompare(y.toLowerCase()));
        render();
        break;
      case "presence_approved":
        loadContacts().then(render, () => {});
        break;
      case "error":
        if (frame.request_id === state.resumeRequest && b.code === Proto.codes.AUTH_FAILED) {
          // The login is over (logged out elsewhere, account deleted).
          endSession("Your session has ended; log in again.");
        }
        break;
      case "goodbye":
        if (b.code === Proto.codes.ACCOUNT_DELETED) endSession("This account was deleted.");
        break;
      case "transfer_ready":
      case "transfer_ended":
      case "relayed_chunk":
        onTransferEvent(frame.kind, b);
        break;
      default:
        break;
    }
  }

  // Acknowledges what the open conversation shows, so it stops counting
  // as unread and is not pushed again.
  function ackVisible() {
    if (!state.current || document.visibilityState !== "visible") return;
    const seqs = [];
    for (const m of state.received.values()) {
      // A file offer stays unacknowledged until the file is here (see acceptFile).
      if (!m.acked && keyOf(m.from) === state.current && !offerIn(m)) {
        seqs.push(m.seq);
        m.acked = true;
      }
    }
    if (seqs.length === 0) return;
    if (state.wsReady) sendFrame(Proto.client.ack(state.nextRequest++, 0, seqs));
    else api("POST", "/v1/messages/ack", { seqs }).catch(() => {});
    render();
  }

  // ------------------------------------------------------------ sending

  // A send's idempotency key: the milliseconds since the epoch, then 80
  // random bits (32 hex digits), so that one sender's keys increase with
  // time and land on the last page of the server's index of them.
  function newId() {
    const random = Array.from(Scram.randomBytes(10), (b) => b.toString(16).padStart(2, "0")).join("");
    return Date.now().toString(16).padStart(12, "0") + random;
  }

  async function deliver(item) {
    const session = state.session;
    try {
      const r = await api("POST", "/v1/messages", { to: item.to, client_msg_id: item.client_msg_id, body: item.body });
      item.pending = false;
      item.failed = null;
      item.message_id = r.message_id;
      item.timestamp_ms = r.timestamp_ms;
      // Stored in the recipient's spam folder, not delivered.
      item.held = r.held === true;
    } catch (e) {
      // Logged out meanwhile: what was sent is forgotten, not stored again.
      if (state.session !== session) return;
      if (e.status === 0 || e.code === "BUSY" || e.code === "SHUTTING_DOWN") {
        // Sent again later with the same id: the server stores it once.
        item.pending = true;
        setTimeout(retryOutbox, RETRY_MS);
      } else {
        item.pending = false;
        item.failed = e.code === "REJECTED" ? refusal(e.reason) : e.message;
      }
    }
    if (state.session !== session) return;
    saveSent();
    render();
  }

  // Why a filter refused a message (REJECTED), in words.
  function refusal(reason) {
    if (reason === "spam") return "the server's filter refused it as spam";
    if (reason === "blocked_words") return "the server's filter refused it: it contains a phrase this server blocks";
    return "the server's filter refused it";
  }

  function retryOutbox() {
    for (const item of state.sent) if (item.pending && !item.inFlight) {
      item.inFlight = true;
      deliver(item).finally(() => (item.inFlight = false));
    }
  }

  function onSend(event) {
    event.preventDefault();
    const input = $("composer-input");
    const body = input.value;
    if (!body.trim() || !state.current || kindOf(state.current) !== "account") return;
    const p = state.peers.get(state.current);
    const item = { client_msg_id: newId(), to: p.name, body, timestamp_ms: Date.now(), pending: true };
    state.sent.push(item);
    p.lastTs = item.timestamp_ms;
    input.value = "";
    saveSent();
    render();
    item.inFlight = true;
    deliver(item).finally(() => (item.inFlight = false));
  }

  async function deleteMessage(id, mine) {
    if (mine) {
      state.sent = state.sent.filter((s) => s.client_msg_id !== id);
      saveSent();
    } else {
      try {
        await api("POST", "/v1/messages/delete", { message_ids: [id] });
        state.received.delete(id);
      } catch (e) {
        alert("Could not delete: " + e.message);
      }
    }
    render();
    $("composer-input").focus();
  }

  // ------------------------------------------------------------ files

  // A request over the socket whose answer the caller awaits: resolves
  // with the answering frame, rejects with the Error frame's code and text.
  function call(build) {
    if (!state.wsReady) return Promise.reject(callError(0, "not connected to the server"));
    const id = state.nextRequest++;
    return new Promise((resolve, reject) => {
      state.calls.set(id, { resolve, reject });
      sendFrame(build(id));
    });
  }

  function callError(code, message, reason) {
    return Object.assign(new Error(message || "refused"), { code, reason });
  }

  // The socket closed: no answer will come, and the server has ended every
  // transfer of this connection.
  function socketGone() {
    for (const c of state.calls.values()) c.reject(callError(0, "the connection to the server was lost"));
    state.calls.clear();
    for (const t of state.files.values()) {
      if (t.live) stop(t, "failed", ["the connection to the server was lost; ", t.mine ? "send it again." : "accept it again."]);
    }
  }

  // `1234567` → "1.2 MB", as the server writes sizes in offers.
  function humanSize(bytes) {
    const units = ["bytes", "kB", "MB", "GB", "TB"];
    let value = bytes;
    let unit = 0;
    while (value >= 1000 && unit + 1 < units.length) {
      value /= 1000;
      unit++;
    }
    return unit === 0 ? `${bytes} bytes` : `${value.toFixed(1)} ${units[unit]}`;
  }

  const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

  // The offer a message body carries, from its line
  // "parley-file/1 size=SIZE sha256=HEX name=NAME" (the name is the rest of
  // the line), or null. The first line, "[file] …", is for clients that do
  // not know files.
  function parseOffer(body) {
    const line = body.split(/\r?\n/).find((l) => l.startsWith(OFFER_LINE));
    const parts = line && /^size=(\d+) sha256=([0-9a-f]{64}) name=(.+)$/.exec(line.slice(OFFER_LINE.length));
    if (!parts) return null;
    const size = Number(parts[1]);
    if (!Number.isSafeInteger(size) || size < 1) return null;
    return { size, sha256: parts[2], name: parts[3] };
  }

  // A received message's offer, parsed once. Only accounts offer files: a
  // visitor's or the server's text is shown as text, whatever it holds.
  function offerIn(m) {
    if (m.offer === undefined) m.offer = kindOf(m.from) === "account" ? parseOffer(m.body) : null;
    return m.offer;
  }

  // The transfer shown for an offer received, made on first sight.
  function incoming(m, offer) {
    const key = "in:" + m.message_id;
    let t = state.files.get(key);
    if (!t) {
      t = { key, mine: false, peer: m.from, name: offer.name, size: offer.size, sha256: offer.sha256, ts: m.timestamp_ms };
      Object.assign(t, { seq: m.seq, offer_id: m.message_id, phase: "offered", done: 0 });
      t.note =
        offer.size > MAX_BROWSER_FILE_BYTES
          ? [`too large to receive in a browser (at most ${MAX_BROWSER_FILE_MIB} MiB); use the parley command-line client: parley accept-file ${m.seq}`]
          : [];
      state.files.set(key, t);
    }
    return t;
  }

  // From here until it ends, the transfer takes the server's events for
  // its offer: `ready` and `ended` settle with TransferReady and
  // TransferEnded (or {stopped} when this side ended it).
  function goLive(t) {
    t.live = true;
    t.ready = new Promise((resolve) => (t.onReady = resolve));
    t.ended = new Promise((resolve) => (t.onEnded = resolve));
    t.received = new Promise((resolve) => (t.onReceived = resolve));
  }

  // Both sides of a file sent to oneself are on this page: each takes the
  // events of its offer.
  function onTransferEvent(kind, b) {
    for (const t of [...state.files.values()]) {
      if (!t.live || t.offer_id !== b.offer_id) continue;
      if (kind === "transfer_ready") t.onReady(b);
      else if (kind === "transfer_ended") t.onEnded(b);
      else if (!t.mine) takeChunk(t, b);
    }
  }

  // Waits for `promise` unless the transfer ends first: {value} or {ended}.
  function unlessEnded(t, promise) {
    return Promise.race([promise.then((value) => ({ value })), t.ended.then((ended) => ({ ended }))]);
  }

  // Tells the server (and so the other side) how the transfer ended here.
  function report(t, result, detail) {
    return call((id) => Proto.client.transferDone(id, t.offer_id, result, detail)).catch(() => null);
  }

  // Shows a new phase and status line; the card is redrawn in place.
  function update(t, phase, note) {
    if (t.over) return;
    t.phase = phase;
    if (note) t.note = note;
    showTransfer(t);
  }

  // The transfer is over for this page; later events are not its own.
  function stop(t, phase, note) {
    if (t.over) return;
    t.over = true;
    t.live = false;
    t.phase = phase;
    t.note = note;
    t.chunks = null;
    if (t.onEnded) t.onEnded({ stopped: true });
    showTransfer(t);
  }

  // The end the server reported, in words.
  function ended(t, e) {
    if (e.stopped) return;
    const R = Proto.results;
    const detail = e.detail ? ": " + e.detail : "";
    if (e.result === R.COMPLETE) stop(t, "done", [t.mine ? "sent ✓" : "received ✓"]);
    else if (e.result === R.REFUSED) stop(t, "refused", t.mine ? [PEER, " refused the file."] : ["you refused this file."]);
    else if (e.result === R.HASH_MISMATCH) {
      stop(t, "failed", t.mine ? ["the file did not arrive intact (its SHA-256 did not match at ", PEER, "'s end); send it again."] : mismatch());
    } else if (e.result === R.PEER_GONE) {
      stop(t, "failed", [PEER, " went away before the file was across; ", t.mine ? "send it again." : "accept it again when they are back."]);
    } else if (e.result === R.CANCELLED) stop(t, "failed", [PEER, " cancelled the transfer" + detail + "."]);
    else stop(t, "failed", ["the transfer failed" + detail + "."]);
  }

  const mismatch = () => ["the bytes received do not match the offer's SHA-256, so the file was dropped; ask ", PEER, " to send it again."];

  const tooLargeForRelay = (t) =>
    t.mine
      ? ["too large for the relay; use the parley command-line client, which can send directly."]
      : [`too large for the relay; use the parley command-line client, which can receive directly: parley accept-file ${t.seq}`];

  // What went wrong with a request, in words.
  function failure(t, e) {
    if (e.code === Proto.codes.MESSAGE_TOO_LARGE) return ["too large for this server: " + e.message];
    if (e.code === Proto.codes.REJECTED) return ["not sent: " + refusal(e.reason) + "."];
    return [`could not ${t.mine ? "send" : "receive"} the file: ${e.message}`];
  }

  // A request failed: the server's TransferEnded, if one follows at once,
  // says better why.
  async function failed(t, e) {
    if (t.over) return;
    const late = t.ended ? await Promise.race([t.ended, new Promise((resolve) => setTimeout(() => resolve(null), 1000))]) : null;
    if (late && !late.stopped) return ended(t, late);
    if (t.live) report(t, Proto.results.FAILED, e.message);
    stop(t, "failed", failure(t, e));
  }

  function onPickFile(event) {
    const file = event.target.files[0];
    event.target.value = "";
    if (file && state.current && kindOf(state.current) === "account") sendFile(file, state.peers.get(state.current));
  }

  // Sends `file` to `p` through the relay: hash, offer, serve, wait for the
  // recipient, chunks, then the recipient's verdict.
  async function sendFile(file, p) {
    const t = { key: "out:" + newId(), mine: true, peer: p.name, name: file.name, size: file.size, ts: Date.now() };
    Object.assign(t, { phase: "hashing", done: 0, note: ["reading the file…"] });
    state.files.set(t.key, t);
    p.lastTs = t.ts;
    render();
    if (file.size === 0) return stop(t, "failed", ["an empty file cannot be sent."]);
    if (file.size > MAX_BROWSER_FILE_BYTES) {
      return stop(t, "failed", [`too large to send from a browser (at most ${MAX_BROWSER_FILE_MIB} MiB); use the parley command-line client, which can send directly.`]);
    }
    try {
      const data = new Uint8Array(await file.arrayBuffer());
      const sha256 = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
      update(t, "offering", ["offering…"]);
      const sent = await call((id) => Proto.client.offerFile(id, p.name, newId(), file.name, data.length, sha256));
      if (t.over) return;
      if (sent.body.held) {
        return stop(t, "failed", ["held by ", PEER, "'s spam filter: they see the offer only in their Spam folder; send it again once they have marked it as not spam."]);
      }
      t.offer_id = sent.body.message_id;
      goLive(t);
      update(t, "waiting", ["waiting for ", PEER, " to accept… (keep this page open)"]);
      await call((id) => Proto.client.serveFile(id, p.name, t.offer_id));
      const ready = await unlessEnded(t, t.ready);
      if (ready.ended) return ended(t, ready.ended);
      if (!ready.value.relay) {
        report(t, Proto.results.FAILED, "the web UI sends only through the relay, and this file is too large for it");
        return stop(t, "failed", tooLargeForRelay(t));
      }
      t.done = ready.value.resume_from;
      update(t, "moving", ["sending…"]);
      const end = await relay(t, data);
      if (end) return ended(t, end);
      update(t, "checking", ["waiting for ", PEER, " to check it…"]);
      const verdict = await unlessEnded(t, new Promise((resolve) => setTimeout(resolve, VERDICT_MS)));
      if (verdict.ended) return ended(t, verdict.ended);
      report(t, Proto.results.FAILED, "the recipient did not confirm the file in time");
      stop(t, "failed", [PEER, " did not confirm the file in time."]);
    } catch (e) {
      await failed(t, e);
    }
  }

  // Sends the chunks from `t.done` on, CHUNK_WINDOW of them at a time
  // awaiting ChunkRelayed; the transfer's end if it ended meanwhile.
  async function relay(t, data) {
    const inFlight = [];
    let offset = t.done;
    while (offset < data.length || inFlight.length > 0) {
      if (offset < data.length && inFlight.length < CHUNK_WINDOW) {
        const at = offset;
        const chunk = data.subarray(at, Math.min(at + CHUNK_BYTES, data.length));
        const answer = call((id) => Proto.client.relayChunk(id, t.offer_id, at, chunk));
        // Answers not awaited because the transfer ended are dropped quietly.
        answer.catch(() => {});
        inFlight.push(answer);
        offset += chunk.length;
        continue;
      }
      const next = await unlessEnded(t, inFlight.shift());
      if (next.ended) return next.ended;
      t.done = next.value.body.next_offset;
      update(t, "moving", [`sending… ${Math.floor((100 * t.done) / t.size)}%`]);
    }
    return null;
  }

  // Accepts the offer `m`: the chunks arrive as frames (takeChunk), then
  // the size and SHA-256 are checked and the file offered for download.
  async function acceptFile(m, offer) {
    const old = state.files.get("in:" + m.message_id);
    if (old && old.url) URL.revokeObjectURL(old.url);
    const t = { key: "in:" + m.message_id, mine: false, peer: m.from, name: offer.name, size: offer.size, sha256: offer.sha256, ts: m.timestamp_ms };
    Object.assign(t, { seq: m.seq, offer_id: m.message_id, phase: "waiting", done: 0, chunks: [], note: ["waiting for ", PEER, " to send it…"] });
    state.files.set(t.key, t);
    goLive(t);
    showTransfer(t);
    try {
      await call((id) => Proto.client.acceptFile(id, m.seq, 0));
      const ready = await unlessEnded(t, t.ready);
      if (ready.ended) return ended(t, ready.ended);
      if (!ready.value.relay) {
        report(t, Proto.results.FAILED, "the web UI receives only through the relay, and this file is too large for it");
        return stop(t, "failed", tooLargeForRelay(t));
      }
      update(t, "moving", [`receiving… ${Math.floor((100 * t.done) / t.size)}%`]);
      const received = await unlessEnded(t, t.received);
      if (received.ended) return ended(t, received.ended);
      update(t, "checking", ["checking the file…"]);
      const blob = new Blob(t.chunks, { type: "application/octet-stream" });
      t.chunks = [];
      const sha256 = hex(new Uint8Array(await crypto.subtle.digest("SHA-256", await blob.arrayBuffer())));
      if (t.over) return;
      if (blob.size !== t.size || sha256 !== t.sha256) {
        report(t, Proto.results.HASH_MISMATCH, "the SHA-256 did not match");
        return stop(t, "failed", mismatch());
      }
      await call((id) => Proto.client.transferDone(id, t.offer_id, Proto.results.COMPLETE, ""));
      t.url = URL.createObjectURL(blob);
      // The file is here: the offer is read, like any message shown.
      m.acked = true;
      sendFrame(Proto.client.ack(state.nextRequest++, 0, [m.seq]));
      stop(t, "done", ["received ✓"]);
      render();
    } catch (e) {
      await failed(t, e);
    }
  }

  // One relayed chunk for `t`: each starts where the last ended.
  function takeChunk(t, b) {
    if (b.offset !== t.done || t.done + b.data.length > t.size) {
      const why = `the relay skipped from ${t.done} to ${b.offset}`;
      report(t, Proto.results.FAILED, why);
      return stop(t, "failed", [`the transfer failed: ${why}; accept it again.`]);
    }
    t.chunks.push(b.data);
    t.done += b.data.length;
    if (t.done === t.size) t.onReceived();
    update(t, "moving", [`receiving… ${Math.floor((100 * t.done) / t.size)}%`]);
  }

  async function refuseFile(m) {
    try {
      await call((id) => Proto.client.refuseFile(id, m.seq));
    } catch (e) {
      alert("Could not refuse the file: " + e.message);
      return;
    }
    // The server deleted the offer; this page shows what became of it.
    m.acked = true;
    const t = state.files.get("in:" + m.message_id);
    if (t) stop(t, "refused", ["you refused this file."]);
    render();
  }

  function cancelTransfer(t) {
    if (t.live) report(t, Proto.results.CANCELLED, t.mine ? "the sender cancelled" : "the recipient cancelled");
    stop(t, "failed", ["cancelled."]);
  }

  // A transfer's card: what, to or from whom, progress, status, actions.
  function fileView(t, m) {
    const note = (t.note || []).flatMap((part) => (part === PEER ? senderLabel(t.peer) : [part]));
    const moving = t.phase === "moving" || t.phase === "checking";
    const offered = !t.mine && m && (t.phase === "offered" || t.phase === "failed") && t.size <= MAX_BROWSER_FILE_BYTES;
    return el(
      "div",
      { class: "file", "data-transfer": t.key, "data-phase": t.phase },
      el("div", { class: "file-title" }, "📎 ", el("bdi", { class: "file-name" }, t.name), ` (${humanSize(t.size)}) ${t.mine ? "to" : "from"} `, ...senderLabel(t.peer)),
      moving ? el("progress", { max: t.size, value: t.done, "aria-label": "bytes across" }) : null,
      note.length ? el("div", { class: "file-status" }, ...note) : null,
      el(
        "div",
        { class: "file-actions" },
        offered
          ? el("button", { type: "button", class: "primary", "data-accept": t.key, onclick: () => acceptFile(m, offerIn(m)) }, t.phase === "failed" ? "Accept again" : "Accept")
          : null,
        offered && !m.acked ? el("button", { type: "button", "data-refuse": t.key, onclick: () => refuseFile(m) }, "Refuse") : null,
        t.live ? el("button", { type: "button", "data-cancel": t.key, onclick: () => cancelTransfer(t) }, "Cancel") : null,
        t.url ? el("a", { href: t.url, download: t.name, "data-download": t.key }, "Save ", el("bdi", {}, t.name)) : null,
      ),
    );
  }

  // Redraws one transfer's card where it is shown, if it is.
  function showTransfer(t) {
    if (state.files.get(t.key) !== t) return;
    const node = document.querySelector(`[data-transfer="${CSS.escape(t.key)}"]`);
    if (!node) return;
    node.replaceWith(fileView(t, t.mine ? null : state.received.get(t.offer_id)));
  }

  function forgetFiles() {
    for (const t of state.files.values()) if (t.url) URL.revokeObjectURL(t.url);
    state.files.clear();
  }

  // ------------------------------------------------------------ spam folder

  // Reads the spam folder over the socket (read again on every connect and
  // whenever the folder is opened: the server pushes nothing when it holds
  // a message). Without a connection, what was read last stays shown.
  async function loadHeld() {
    if (!state.wsReady) return;
    const session = state.session;
    const mine = ++state.heldLoads;
    const held = [];
    let more = false;
    try {
      let after = 0;
      for (let page = 0; page < HELD_PAGES; page++) {
        const answer = await call((id) => Proto.client.listHeld(id, after, HELD_PAGE));
        held.push(...answer.body.messages);
        more = answer.body.more;
        if (!more || answer.body.messages.length === 0) break;
        after = answer.body.messages[answer.body.messages.length - 1].id;
      }
    } catch {
      return;
    }
    if (state.session !== session || mine !== state.heldLoads) return;
    state.held = held;
    state.heldMore = more;
    render();
  }

  // Runs one spam-folder request on `ids`; the ids leave the list once the
  // server answered (those it leaves out of its answer were not in the
  // folder any more either).
  async function heldAction(ids, build, failed) {
    const session = state.session;
    try {
      await call(build);
    } catch (e) {
      alert(failed + e.message);
      return;
    }
    if (state.session !== session) return;
    const gone = new Set(ids);
    const at = state.held.findIndex((h) => gone.has(h.id));
    state.held = state.held.filter((h) => !gone.has(h.id));
    render();
    focusHeld(at);
  }

  // After an item left the folder, the keyboard goes on at the one that
  // took its place (or the folder's entry when it is empty).
  function focusHeld(at) {
    if (state.current !== SPAM_FOLDER) return;
    const items = document.querySelectorAll("#messages li[data-held]");
    const next = items[Math.min(at, items.length - 1)];
    (next ? next.querySelector("button") : $("spam-folder")).focus();
  }

  // "Not spam": into the mailbox, pushed here like a new message.
  const releaseHeld = (h) => heldAction([h.id], (id) => Proto.client.releaseHeld(id, [h.id]), "Could not move it to your conversations: ");

  // Deletes a held message; with `spam`, reports it as spam first.
  const dropHeld = (h, spam) => heldAction([h.id], (id) => Proto.client.dropHeld(id, [h.id], spam), "Could not delete it: ");

  // Moves a received message out of its conversation into the spam folder.
  async function reportSpam(m) {
    const session = state.session;
    try {
      await call((id) => Proto.client.reportSpam(id, [m.seq]));
    } catch (e) {
      alert("Could not report it: " + e.message);
      return;
    }
    if (state.session !== session) return;
    // Gone from the mailbox either way: moved, or deleted meanwhile.
    state.received.delete(m.message_id);
    const t = state.files.get("in:" + m.message_id);
    if (t) {
      if (t.live) cancelTransfer(t);
      if (t.url) URL.revokeObjectURL(t.url);
      state.files.delete(t.key);
    }
    render();
    $("composer-input").focus();
    loadHeld();
  }

  // A classifier's score, 0 to 1, as a percentage.
  const percent = (score) => `${Math.round(Math.min(1, Math.max(0, score)) * 100)}%`;

  function stamp(ms) {
    return new Date(ms).toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
  }

  function heldView(h) {
    const who = senderText(h.from);
    const reported = h.filter === "reported";
    return el(
      "li",
      { class: "msg held" + (kindOf(h.from) === "pager" ? " pager" : ""), "data-held": String(h.id), "data-filter": h.filter },
      el("div", { class: "held-from" }, "from ", ...senderLabel(h.from)),
      el("div", { class: "body", dir: "auto" }, h.body),
      el(
        "div",
        { class: "meta" },
        el("span", {}, stamp(h.timestamp_ms)),
        el(
          "span",
          { class: "score", title: reported ? "You moved it here from a conversation." : "The spam filter's score: how likely it thinks this is spam." },
          reported ? "reported by you" : "spam score " + percent(h.score),
        ),
      ),
      el(
        "div",
        { class: "held-actions" },
        el(
          "button",
          { type: "button", "data-release": String(h.id), "aria-label": `Not spam: move the message from ${who} to your conversations`, onclick: () => releaseHeld(h) },
          "Not spam",
        ),
        el(
          "button",
          { type: "button", class: "danger", "data-drop": String(h.id), "aria-label": `Delete the message from ${who}`, onclick: () => dropHeld(h, false) },
          "Delete",
        ),
        // A reported message was reported when it was moved here.
        reported
          ? null
          : el(
              "button",
              { type: "button", "data-report-held": String(h.id), "aria-label": `Report spam: delete the message from ${who} and report it`, onclick: () => dropHeld(h, true) },
              "Report spam",
            ),
      ),
    );
  }

  function renderSpamFolder() {
    $("peer-name").textContent = "Spam";
    $("peer-name").dataset.kind = "folder";
    $("peer-presence").textContent = "messages the server's spam filter held back, and those you reported; they are not in your conversations";
    $("composer").hidden = true;
    $("add-contact-button").hidden = true;
    $("block-button").hidden = true;
    $("spam-refresh-button").hidden = false;
    const list = $("messages");
    if (state.held.length === 0) {
      list.replaceChildren(el("li", { class: "hint" }, state.wsReady ? "Nothing here." : "Not connected: the Spam folder is read when the connection is back."));
      return;
    }
    list.replaceChildren(...state.held.map(heldView));
    if (state.heldMore) list.append(el("li", { class: "hint" }, `Only the oldest ${state.held.length} are shown: delete some to see the rest.`));
  }

  function renderFolders() {
    const n = state.held.length;
    const count = $("spam-count");
    count.hidden = n === 0;
    count.textContent = String(n) + (state.heldMore ? "+" : "");
    const folder = $("spam-folder");
    folder.setAttribute("aria-selected", state.current === SPAM_FOLDER ? "true" : "false");
    folder.setAttribute("aria-label", n ? `Spam folder, ${n}${state.heldMore ? " or more" : ""} held` : "Spam folder, empty");
  }

  // ------------------------------------------------------------ rendering

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function presenceDot(p) {
    if (kindOf(p.key) !== "account") return el("span", { class: "dot none" });
    return el("span", { class: "dot" + (p.online ? " online" : ""), title: p.online ? "online" : p.online === false ? "offline" : "" });
  }

  function render() {
    renderRequests();
    renderFolders();
    renderPeers();
    renderConversation();
    let unread = 0;
    for (const m of state.received.values()) if (!m.acked) unread++;
    document.title = unread ? `(${unread}) Parley` : "Parley";
  }

  function renderPeers() {
    const list = $("contact-list");
    list.replaceChildren();
    const peers = [...state.peers.values()].filter((p) => p.contact || p.lastTs || p.key === state.current);
    peers.sort((a, b) => b.lastTs - a.lastTs || a.key.localeCompare(b.key));
    for (const p of peers) {
      const unread = unreadFrom(p.key);
      const kind = kindOf(p.key);
      list.append(
        el(
          "li",
          {
            tabindex: 0,
            role: "button",
            class: "peer-" + kind,
            "data-peer": p.key,
            "data-kind": kind,
            "aria-selected": p.key === state.current ? "true" : "false",
            "aria-label": senderText(p.name) + (unread ? `, ${unread} unread` : "") + (p.online ? ", online" : ""),
            onclick: () => openConversation(p.key),
            onkeydown: listKeys(() => openConversation(p.key)),
          },
          presenceDot(p),
          el("span", { class: "name", title: senderText(p.name) }, ...senderLabel(p.name)),
          kind === "system" ? el("span", { class: "tag" }, "server") : null,
          unread ? el("span", { class: "badge", "data-unread": unread }, String(unread)) : null,
        ),
      );
    }
    $("empty-contacts").hidden = peers.length > 0;
  }

  function listKeys(activate) {
    return (event) => {
      const item = event.currentTarget;
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        activate();
      } else if (event.key === "ArrowDown" && item.nextElementSibling) {
        event.preventDefault();
        item.nextElementSibling.focus();
      } else if (event.key === "ArrowUp" && item.previousElementSibling) {
        event.preventDefault();
        item.previousElementSibling.focus();
      }
    };
  }

  function time(ms) {
    const d = new Date(ms);
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function renderConversation() {
    const key = state.current;
    const list = $("messages");
    $("spam-refresh-button").hidden = true;
    if (key === SPAM_FOLDER) return renderSpamFolder();
    if (!key) {
      $("peer-name").textContent = "Pick a conversation";
      delete $("peer-name").dataset.kind;
      $("peer-presence").textContent = "";
      $("composer").hidden = true;
      $("add-contact-button").hidden = true;
      $("block-button").hidden = true;
      list.replaceChildren();
      return;
    }
    const p = state.peers.get(key);
    const kind = kindOf(key);
    const pager = kind === "pager";
    $("peer-name").replaceChildren(...senderLabel(p.name));
    $("peer-name").dataset.kind = kind;
    $("peer-presence").textContent = pager
      ? "left on the web pager by someone without an account; no replies"
      : kind === "system"
        ? "a notice from this server; no replies"
        : p.online
          ? "online"
          : p.online === false
            ? "offline"
            : p.contact && p.subscription === "pending"
              ? "waiting for them to share their presence"
              : "";
    $("composer").hidden = kind !== "account";
    $("add-contact-button").hidden = kind !== "account" || p.contact;
    $("block-button").hidden = kind !== "account" || p.key === keyOf(state.session.name);
    $("block-button").textContent = state.blocked.has(p.key) ? "Unblock" : "Block";
    const items = [];
    for (const m of state.received.values()) if (keyOf(m.from) === key) items.push({ mine: false, ts: m.timestamp_ms, m });
    for (const s of state.sent) if (keyOf(s.to) === key) items.push({ mine: true, ts: s.timestamp_ms, m: s });
    for (const t of state.files.values()) if (t.mine && keyOf(t.peer) === key) items.push({ mine: true, ts: t.ts, t });
    items.sort((a, b) => a.ts - b.ts);
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.replaceChildren(
      ...items.map(({ mine, m, t }) => {
        if (t) {
          return el("li", { class: "msg mine", "data-file": t.key, "data-mine": "true" }, fileView(t, null), el("div", { class: "meta" }, el("span", {}, time(t.ts))));
        }
        const id = mine ? m.client_msg_id : m.message_id;
        const offer = mine ? null : offerIn(m);
        const status = mine ? (m.failed ? "not sent: " + m.failed : m.pending ? "sending…" : "sent") : null;
        const reportable = !mine && kind !== "system";
        return el(
          "li",
          {
            class: "msg" + (mine ? " mine" : " " + kind) + (mine && m.pending ? " pending" : ""),
            "data-message": String(id),
            "data-mine": mine ? "true" : "false",
          },
          offer ? fileView(incoming(m, offer), m) : el("div", { class: "body", dir: "auto" }, m.body),
          el(
            "div",
            { class: "meta" },
            el("span", {}, time(m.timestamp_ms)),
            status ? el("span", { class: "status" + (m.failed ? " failed" : "") }, status) : null,
            mine && m.held && !m.failed
              ? el("span", { class: "held-note", title: "Stored in the recipient's Spam folder: they see it only if they look there." }, "held by the recipient's spam filter")
              : null,
            reportable
              ? el(
                  "button",
                  { class: "report", type: "button", "aria-label": "Report spam", title: "Report spam: move it to your Spam folder", onclick: () => reportSpam(m) },
                  "⚑",
                )
              : null,
            el(
              "button",
              {
                class: "delete",
                type: "button",
                "aria-label": mine ? "Delete from this browser" : "Delete message",
                title: mine ? "Delete from this browser (the recipient keeps it)" : "Delete for good",
                onclick: () => deleteMessage(id, mine),
              },
              "✕",
            ),
          ),
        );
      }),
    );
    if (atBottom || items.length < 30) list.scrollTop = list.scrollHeight;
  }

  function openConversation(key) {
    state.current = key;
    $("chat-view").classList.remove("show-sidebar");
    $("chat-view").classList.add("has-current");
    if (key === SPAM_FOLDER) loadHeld();
    render();
    ackVisible();
    const list = $("messages");
    list.scrollTop = list.scrollHeight;
    if (kindOf(key) === "account") $("composer-input").focus();
  }

  // ------------------------------------------------------------ search and contacts

  let searchTimer = null;
  let searchSeq = 0;

  async function search(after) {
    const raw = $("search-input").value.trim();
    const results = $("search-results");
    if (!raw) {
      results.hidden = true;
      return;
    }
    const pattern = /[*?]/.test(raw) ? raw : raw + "*";
    const mine = ++searchSeq;
    let page;
    try {
      page = await api("GET", `/v1/accounts?pattern=${encodeURIComponent(pattern)}&limit=20&after=${encodeURIComponent(after || "")}`);
    } catch (e) {
      if (mine !== searchSeq) return;
      results.replaceChildren(el("li", { class: "hint" }, e.code === "INVALID_PATTERN" ? "Names use letters, digits, . _ - and the wildcards * ?" : e.message));
      results.hidden = false;
      return;
    }
    if (mine !== searchSeq) return;
    if (!after) results.replaceChildren();
    else results.lastChild && results.lastChild.dataset.more && results.lastChild.remove();
    for (const a of page.accounts) {
      const p = peer(a.name);
      p.name = a.name;
      p.online = a.online;
      const choose = () => {
        results.hidden = true;
        $("search-input").value = "";
        openConversation(p.key);
      };
      results.append(
        el("li", { tabindex: 0, role: "button", "data-result": a.name, onclick: choose, onkeydown: listKeys(choose) }, presenceDot(p), el("span", { class: "name" }, el("bdi", {}, a.name))),
      );
    }
    if (page.accounts.length === 0 && !after) results.append(el("li", { class: "hint" }, "No one matches."));
    if (page.next_after) {
      const more = () => search(page.next_after);
      results.append(el("li", { tabindex: 0, role: "button", "data-more": "1", onclick: more, onkeydown: listKeys(more) }, "More…"));
    }
    results.hidden = false;
  }

  async function addContact() {
    const p = state.peers.get(state.current);
    if (!p) return;
    try {
      const r = await api("PUT", "/v1/contacts/" + encodeURIComponent(p.name));
      applyContacts(r.contacts);
    } catch (e) {
      alert("Could not add contact: " + e.message);
    }
    render();
  }

  // ------------------------------------------------------------ session lifecycle

  async function startChat() {
    $("auth-view").hidden = true;
    $("chat-view").hidden = false;
    $("me").replaceChildren(el("bdi", {}, state.session.name));
    state.closing = false;
    state.peers.clear();
    state.received.clear();
    state.held = [];
    state.heldMore = false;
    forgetFiles();
    state.lastSeq = 0;
    state.current = null;
    $("chat-view").classList.remove("has-current", "show-sidebar");
    loadSent();
    for (const s of state.sent) peer(s.to).lastTs = Math.max(peer(s.to).lastTs, s.timestamp_ms);
    const session = state.session;
    try {
      await Promise.all([loadContacts(), loadHistory(), loadRequests(), loadBlocked(), loadPager()]);
    } catch (e) {
      if (state.session !== session) return;
      if (e.status === 401) return endSession("Your session has ended; log in again.");
      setConnection("offline", "Offline");
    }
    // Logged out while loading: show nothing of it.
    if (state.session !== session) return;
    render();
    connect();
    retryOutbox();
    $("search-input").focus();
  }

  function stopSocket() {
    state.closing = true;
    clearTimeout(state.reconnectTimer);
    clearInterval(state.pingTimer);
    if (state.ws) state.ws.close();
    state.ws = null;
    state.wsReady = false;
    socketGone();
  }

  // Leaves the chat for the login form, with nothing of the account left
  // on the page. `forget` (logging out, deleting the account) also removes
  // what this browser stored for it; an ended session keeps what was sent,
  // for when the same person logs in again.
  function endSession(message, forget) {
    stopSocket();
    if (state.session && forget) forgetAccount(state.session.name);
    sessionStorage.removeItem(SESSION_KEY);
    state.session = null;
    state.peers.clear();
    state.received.clear();
    state.sent = [];
    state.held = [];
    state.heldMore = false;
    forgetFiles();
    state.lastSeq = 0;
    state.current = null;
    render();
    $("me").replaceChildren();
    $("composer-input").value = "";
    $("search-input").value = "";
    $("search-results").replaceChildren();
    $("search-results").hidden = true;
    showAuth();
    authError(message || "");
  }

  async function logOut(everywhere) {
    if (everywhere === true && !confirm("Log out on every device, and end every saved login of this account?")) return;
    try {
      await api("POST", everywhere === true ? "/v1/logout/all" : "/v1/logout");
    } catch {
      // Logged out already, or the server is unreachable: either way this
      // browser forgets the session and what it kept for the account.
    }
    endSession("", true);
  }

  // Deleting the account and changing the password prove the current
  // password again (a SCRAM exchange inside the session): a session left
  // open on a shared computer is not enough for either.
  function openReauth(purpose) {
    state.reauthPurpose = purpose;
    $("reauth-purpose").textContent =
      purpose === "delete"
        ? `Delete the account ${state.session.name} and every message in it, for good? Enter your password to confirm.`
        : "Change your password. Every other session of this account will be logged out.";
    $("reauth-new").hidden = purpose !== "password";
    $("reauth-new-password").required = purpose === "password";
    $("reauth-new-again").required = purpose === "password";
    $("reauth-error").textContent = "";
    $("reauth-form").hidden = false;
    $("reauth-password").focus();
  }

  function closeReauth() {
    $("reauth-form").reset();
    $("reauth-form").hidden = true;
  }

  async function proveAgain(password) {
    const login = new Scram.Login(state.session.name, password);
    const challenge = await api("POST", "/v1/account/reauth", { client_first: login.first() });
    const clientFinal = await login.final(challenge.server_first, challenge.mechanism);
    return { login, reauth_id: challenge.reauth_id, client_final: clientFinal };
  }

  async function onReauth(e) {
    e.preventDefault();
    const password = $("reauth-password").value;
    try {
      if (state.reauthPurpose === "password") {
        const next = $("reauth-new-password").value;
        if (next !== $("reauth-new-again").value) throw new Error("the new passwords differ");
        const info = await serverInfo();
        const credentials = await Scram.credentials(info.mechanisms[0], next, info.scram_iterations);
        const proof = await proveAgain(password);
        const changed = await api("POST", "/v1/account/password", {
          reauth_id: proof.reauth_id,
          client_final: proof.client_final,
          ...credentials,
        });
        await proof.login.verify(changed.server_final);
        state.session.resume_token = changed.resume_token;
        saveSession();
        closeReauth();
        alert("Your password was changed; your other sessions were logged out.");
      } else {
        const proof = await proveAgain(password);
        await api("DELETE", "/v1/account", { reauth_id: proof.reauth_id, client_final: proof.client_final });
        closeReauth();
        endSession("The account was deleted.", true);
      }
    } catch (err) {
      $("reauth-error").textContent =
        err && err.code === "AUTH_FAILED" ? "Wrong password." : "Could not do that: " + (err && err.message ? err.message : err);
    }
  }

  function deleteAccount() {
    openReauth("delete");
  }

  // ------------------------------------------------------------ wiring

  function init() {
    $("auth-form").addEventListener("submit", (e) => {
      e.preventDefault();
      onAuth("login");
    });
    $("register-button").addEventListener("click", () => onAuth("register"));
    $("composer").addEventListener("submit", onSend);
    $("file-button").addEventListener("click", () => $("file-input").click());
    $("file-input").addEventListener("change", onPickFile);
    $("composer-input").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) onSend(e);
    });
    $("search-form").addEventListener("submit", (e) => {
      e.preventDefault();
      search();
    });
    $("search-input").addEventListener("input", () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => search(), 200);
    });
    $("search-input").addEventListener("keydown", (e) => {
      const results = $("search-results");
      if (e.key === "Escape") {
        results.hidden = true;
        e.target.value = "";
      } else if (e.key === "ArrowDown" && !results.hidden && results.firstElementChild) {
        e.preventDefault();
        results.firstElementChild.focus();
      }
    });
    $("add-contact-button").addEventListener("click", addContact);
    $("block-button").addEventListener("click", toggleBlock);
    $("spam-folder").addEventListener("click", () => openConversation(SPAM_FOLDER));
    $("spam-folder").addEventListener("keydown", listKeys(() => openConversation(SPAM_FOLDER)));
    $("spam-refresh-button").addEventListener("click", loadHeld);
    $("logout-button").addEventListener("click", () => logOut(false));
    $("logout-all-button").addEventListener("click", () => logOut(true));
    $("delete-account-button").addEventListener("click", deleteAccount);
    $("password-button").addEventListener("click", () => openReauth("password"));
    $("pager-toggle").addEventListener("change", setPager);
    $("reauth-form").addEventListener("submit", onReauth);
    $("reauth-cancel").addEventListener("click", closeReauth);
    $("sidebar-toggle").addEventListener("click", () => $("chat-view").classList.toggle("show-sidebar"));
    document.addEventListener("keydown", (e) => {
      if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "k" && !$("chat-view").hidden) {
        e.preventDefault();
        $("search-input").focus();
      }
    });
    document.addEventListener("visibilitychange", ackVisible);

    try {
      state.session = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
    } catch {
      state.session = null;
    }
    if (state.session && state.session.token) startChat();
    else showAuth();
    // Over plain HTTP off loopback there is no WebCrypto, so no SCRAM: say
    // so before anyone types a password.
    if (!Scram.available()) authError(NO_WEBCRYPTO);
  }

  init();
})();
