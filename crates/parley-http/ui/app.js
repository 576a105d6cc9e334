// The Parley web UI. JSON over /v1 for login, accounts, contacts, history
// and sending; native frames over /v1/ws for live delivery, presence and
// acks. No framework, no build step, nothing loaded from elsewhere.
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
  const HISTORY_PAGE = 500;
  const HISTORY_PAGES = 20;
  const RETRY_MS = 3000;

  const state = {
    session: null, // { name, token, resume_token }
    peers: new Map(), // key → { key, name, online, contact, subscription, lastTs }
    requests: [], // names asking to see this account's presence
    blocked: new Set(), // keys of the accounts this account blocks
    received: new Map(), // message_id → message from the mailbox
    sent: [], // what this browser sent: { client_msg_id, to, body, timestamp_ms, message_id, pending, failed }
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
    constructor(status, code, detail) {
      super(detail || code || "request failed");
      this.status = status;
      this.code = code;
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
    if (!response.ok) throw new ApiError(response.status, data && data.code, data && data.detail);
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
      if (!m.acked && keyOf(m.from) === state.current) {
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

  function randomId() {
    return Array.from(Scram.randomBytes(16), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function deliver(item) {
    const session = state.session;
    try {
      const r = await api("POST", "/v1/messages", { to: item.to, client_msg_id: item.client_msg_id, body: item.body });
      item.pending = false;
      item.failed = null;
      item.message_id = r.message_id;
      item.timestamp_ms = r.timestamp_ms;
    } catch (e) {
      // Logged out meanwhile: what was sent is forgotten, not stored again.
      if (state.session !== session) return;
      if (e.status === 0 || e.code === "BUSY" || e.code === "SHUTTING_DOWN") {
        // Sent again later with the same id: the server stores it once.
        item.pending = true;
        setTimeout(retryOutbox, RETRY_MS);
      } else {
        item.pending = false;
        item.failed = e.message;
      }
    }
    if (state.session !== session) return;
    saveSent();
    render();
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
    const item = { client_msg_id: randomId(), to: p.name, body, timestamp_ms: Date.now(), pending: true };
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
    items.sort((a, b) => a.ts - b.ts);
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.replaceChildren(
      ...items.map(({ mine, m }) => {
        const id = mine ? m.client_msg_id : m.message_id;
        const status = mine ? (m.failed ? "not sent: " + m.failed : m.pending ? "sending…" : "sent") : null;
        return el(
          "li",
          {
            class: "msg" + (mine ? " mine" : " " + kind) + (mine && m.pending ? " pending" : ""),
            "data-message": String(id),
            "data-mine": mine ? "true" : "false",
          },
          el("div", { class: "body", dir: "auto" }, m.body),
          el(
            "div",
            { class: "meta" },
            el("span", {}, time(m.timestamp_ms)),
            status ? el("span", { class: "status" }, status) : null,
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
