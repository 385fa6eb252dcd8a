// The demo page: a chat room on channel "room", who is online there, and a notifications
// panel for messages from backend services, on one Herald connection.
//
// Before it connects, the page asks the gateway what it needs (GET ws/info): whether a
// token is required, whether ?user= names the user, whether the backend API is on. Query
// parameters: token (a JWT), user (the user, where the gateway takes it from the URL:
// --insecure-user-param), name (a guest's chat name), hold (ms the "Drop connection"
// button keeps the page offline; default 3000).
import { Herald, buildURL } from "./herald.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const MAX_ITEMS = 300;
const ROOM = "room";
const RECENT = 50; // recent chat messages shown on join
const CHANNELS = [ROOM, "notifications"];
const holdMs = Number(params.get("hold") ?? 3000);
const token = params.get("token") || undefined;
const extra = {};
if (params.get("user")) extra.user = params.get("user");

// --- what the gateway asks for ------------------------------------------------------------

/**
 * @typedef {Object} GatewayInfo
 * @property {"off" | "optional" | "required"} auth
 * @property {boolean} user_param ?user= names the user
 * @property {boolean} api the backend API is on
 */

/** @returns {Promise<GatewayInfo | null>} null where the gateway does not say */
async function loadInfo() {
  try {
    const r = await fetch("ws/info", { cache: "no-store", signal: AbortSignal.timeout(3000) });
    return r.ok ? await r.json() : null;
  } catch {
    return null;
  }
}

const info = await loadInfo();

// --- rendering -------------------------------------------------------------------------

function clock(time) {
  const d = time ? new Date(time) : new Date();
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function timeEl(time) {
  const t = el("time", "", clock(time));
  if (time) t.dateTime = time;
  return t;
}

/** Appends li to list, keeps the list bounded, and follows the bottom if it was there. */
function append(list, li) {
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.append(li);
  while (list.children.length > MAX_ITEMS) list.firstElementChild.remove();
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function tag(li, f) {
  if (f.offset !== undefined) li.dataset.offset = String(f.offset);
  li.dataset.id = f.id;
  if (f.channel) li.dataset.channel = f.channel;
}

const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

/** Shows a line above the page (a hint about its address, say). */
function notice(text) {
  $("notice").textContent = text;
  $("notice").hidden = !text;
}

// --- who is this page -------------------------------------------------------------------

const nameInput = $("name");
/** The connection's user, from welcome; "" while anonymous. */
let me = "";
// A guest's name is this tab's own (sessionStorage): another tab's does not leak in.
nameInput.value = params.get("name") || sessionStorage.getItem("herald-guest-name") || `guest-${Math.floor(Math.random() * 9000) + 1000}`;

/** Shows who the page speaks as: its user, or a guest name of its choosing. */
function showIdentity(user) {
  me = user;
  if (user) {
    nameInput.value = user;
    nameInput.readOnly = true;
    nameInput.title = token ? "You, as your token names you" : "You, as ?user= names you";
    $("name-kind").textContent = "you are";
  } else {
    nameInput.readOnly = false;
    nameInput.title = "A name of your choosing, shown to others as a guest's";
    $("name-kind").textContent = "guest name";
  }
  $("send").dataset.user = user ? "true" : "false";
}

// --- chat and notifications -------------------------------------------------------------

/** @type {Set<string>} ids of the messages this page published (from their acks) */
const mine = new Set();

function isChat(f) {
  return f.channel === ROOM && f.data !== null && typeof f.data === "object" && typeof f.data.text === "string";
}

function addChat(f) {
  append($("chat"), chatItem(f));
}

/** The chat room's recent conversation, which the gateway holds, shown above what came live. */
async function showRecent() {
  let h;
  try {
    h = await herald.subscribeWithHistory(ROOM, RECENT, { presence: true });
  } catch {
    return; // refused (the room is not permitted): the page shows what comes live
  }
  const chat = $("chat");
  const first = chat.firstElementChild;
  for (const f of h.messages) {
    if (isChat(f) && !chat.querySelector(`li[data-id="${CSS.escape(f.id)}"]`)) chat.insertBefore(chatItem(f), first);
  }
  chat.scrollTop = chat.scrollHeight;
  if (h.messages.length > 0) logEvent("history", `Showing the room's ${plural(h.messages.length, "recent message", "recent messages")}`);
}

function chatItem(f) {
  const li = el("li", mine.has(f.id) ? "msg mine" : "msg");
  tag(li, f);
  const meta = el("div", "meta");
  if (f.from) {
    // A user the gateway vouches for (its token, or ?user= on a demo gateway).
    meta.append(el("span", "who user", f.from));
  } else {
    // A name the sender chose: anyone can choose any, so it is marked as a guest's.
    const name = typeof f.data.name === "string" && f.data.name ? f.data.name : "anonymous";
    const who = el("span", "who", name);
    who.title = "a guest's name of their choosing";
    meta.append(who, el("span", "tag", "guest"));
  }
  meta.append(timeEl(f.time));
  li.append(meta, el("div", "text", f.data.text));
  return li;
}

/** Marks the chat message id as this page's own, whether it arrived before its ack or after. */
function markMine(id) {
  mine.add(id);
  const li = $("chat").querySelector(`li[data-id="${CSS.escape(id)}"]`);
  if (li) li.classList.add("mine");
}

function addNote(f) {
  const li = el("li", "note");
  tag(li, f);
  const meta = el("div", "meta");
  let src;
  if (f.direct) {
    src = el("span", "src direct", me ? `to ${me}` : "to you");
    src.title = "Sent to you alone (a message for named users)";
    li.classList.add("direct");
  } else if (f.channel) {
    src = el("span", "src", f.channel);
    src.title = `Sent to the subscribers of ${f.channel}`;
  } else {
    src = el("span", "src", "everyone");
    src.title = "Sent to every connection";
  }
  meta.append(src, timeEl(f.time));
  li.append(meta);
  const d = f.data;
  if (typeof d === "string") {
    li.append(el("div", "body", d));
  } else if (d && typeof d === "object" && (typeof d.title === "string" || typeof d.body === "string" || typeof d.text === "string")) {
    if (typeof d.title === "string") li.append(el("div", "title", d.title));
    const body = typeof d.body === "string" ? d.body : d.text;
    if (typeof body === "string") li.append(el("div", "body", body));
  } else {
    li.append(el("pre", "body json", JSON.stringify(d, null, 1)));
  }
  append($("notes"), li);
}

let received = 0;
/** Counts a message in the header; keeps the offset to resume from for the curious. */
function countMessage(f) {
  received++;
  const seen = $("seen");
  seen.textContent = String(received);
  if (f.offset !== undefined) {
    seen.dataset.offset = String(f.offset);
    $("seen-stat").title = `Messages this page has received. It resumes after the last (offset ${f.offset}) when it reconnects.`;
  }
}

// --- the connection log -------------------------------------------------------------------

function logEvent(kind, text, code) {
  const li = el("li", `ev ${kind}`);
  li.dataset.kind = kind;
  if (code !== undefined) li.dataset.code = String(code);
  li.append(timeEl(), document.createTextNode(" " + text));
  append($("events"), li);
}

/** Why a connection closed, in a visitor's words, by close code. */
const closeWords = {
  1000: "The connection was closed",
  1001: "The gateway is restarting or shutting down",
  1006: "The connection was lost",
  1008: "The gateway refused this page's token",
  1011: "The gateway had an internal error",
  4000: "You dropped the connection",
  4008: "This page fell behind (too many messages at once); nothing is lost",
  4029: "This page sent too many messages too fast",
};
const closeWhy = (code) => closeWords[code] ?? `The connection closed (code ${code})`;

/** Shows why the page cannot connect, and how to fix it. */
function showAuth(kind, detail) {
  const title = {
    needed: "This gateway needs a token",
    refused: "The gateway refused your token",
    expired: "Your token has expired",
    forbidden: "The gateway refused this page",
  }[kind];
  const text = {
    needed: "Authentication is on: the gateway admits no one without a token, so this page does not try to connect.",
    refused: `The gateway answered 401${detail ? `: ${detail}` : ""}. Get a fresh token and reload the page with it.`,
    expired: "The gateway closed the connection when the token expired (code 1008). Get a fresh token and reload the page with it.",
    forbidden: `The gateway answered 403${detail ? `: ${detail}` : ""}.`,
  }[kind];
  $("auth").dataset.kind = kind;
  $("auth-title").textContent = title;
  $("auth-text").textContent = text;
  const u = new URL(location.href);
  u.searchParams.set("token", "YOUR_JWT");
  $("auth-example").textContent = u.pathname + u.search;
  $("auth").hidden = false;
  const pill = $("state");
  pill.textContent = kind === "forbidden" ? "refused" : "token needed";
  pill.dataset.state = "auth";
}

// --- the footer and the Online card's hint ------------------------------------------------

if (info) {
  $("api-note").textContent = info.api
    ? "Push a notification from a backend service, with the gateway's API key:"
    : "The backend API is off on this gateway (no API key), so this command would answer 404. Start the gateway with an API key (HERALD_API_KEY=secret, or --api-key) to push notifications from a backend:";
  $("api-note").dataset.api = String(info.api);
  $("online").dataset.empty = info.user_param
    ? "No named users here yet. Open this page with ?user=NAME to be one."
    : info.auth !== "off"
      ? "No users with a token here yet."
      : "Everyone here is anonymous: this gateway names users by their tokens (start it with a JWT key), or, for a demo, by ?user=NAME with --insecure-user-param.";
}
$("curl").textContent = $("curl").textContent.replace("http://localhost:8080", location.origin);

// --- who is online ----------------------------------------------------------------------

const ONLINE_EVERY = 500; // ms: at most one presence refresh per this
const ONLINE_POLL = 30000; // ms: anonymous connections come and go without events
const ONLINE_SHOWN = 200; // users listed at most; the rest are counted
/** @type {ReturnType<typeof setTimeout> | null} the next refresh */
let onlineTimer = null;
let onlinePoll = false; // onlineTimer is the slow poll, which a sooner refresh replaces
let onlineAt = -Infinity; // when the last refresh started
let onlineBusy = false;
let onlineAgain = false;
/** @type {Set<string>} the users listed now */
let onlineShown = new Set();

/** @type {Herald | null} */
let herald = null;

/** Refreshes the Online card soon: at once, or ONLINE_EVERY ms after the last refresh. */
function refreshOnline() {
  if (onlineBusy) {
    onlineAgain = true; // once the answer is in
    return;
  }
  if (onlineTimer !== null && !onlinePoll) return; // one is due already
  schedule(Math.max(0, onlineAt + ONLINE_EVERY - Date.now()), false);
}

/**
 * @param {number} ms
 * @param {boolean} poll
 */
function schedule(ms, poll) {
  if (onlineTimer !== null) clearTimeout(onlineTimer);
  onlinePoll = poll;
  onlineTimer = setTimeout(loadOnline, ms);
}

async function loadOnline() {
  onlineTimer = null;
  if (herald?.state !== "open") return; // the next welcome refreshes
  onlineBusy = true;
  onlineAt = Date.now();
  let on = true;
  try {
    showOnline(await herald.presenceAll(ROOM));
  } catch (e) {
    on = false;
    if (e.code === "forbidden") showPresenceOff();
    else if (e.code !== "disconnected" && e.code !== "closed") logEvent("error", `Who is online: ${e.message}`);
  } finally {
    onlineBusy = false;
  }
  if (onlineAgain) {
    onlineAgain = false;
    refreshOnline();
  } else if (on) {
    schedule(ONLINE_POLL, true);
  }
}

/** @param {import("./herald.js").PresenceAnswer} a */
function showOnline(a) {
  const card = $("online").closest(".online");
  delete card.dataset.stale;
  $("online-off").hidden = true;
  const list = $("online");
  list.hidden = false;
  const shown = a.users.slice(0, ONLINE_SHOWN);
  list.replaceChildren(...shown.map((u) => {
    const li = el("li", u.user === me ? "me" : "");
    li.dataset.user = u.user;
    li.dataset.connections = String(u.connections);
    if (onlineShown.size > 0 && !onlineShown.has(u.user)) li.classList.add("new");
    li.title = `${u.user}: ${plural(u.connections, "connection", "connections")}`;
    const dot = el("span", "dot");
    dot.setAttribute("aria-hidden", "true");
    const conns = el("span", "conns", String(u.connections));
    conns.setAttribute("aria-label", plural(u.connections, "connection", "connections"));
    li.append(dot, el("span", "name", u.user), conns);
    return li;
  }));
  onlineShown = new Set(shown.map((u) => u.user));
  // Users not listed: past ONLINE_SHOWN, or past the pages presenceAll asks for.
  const more = Math.max(a.total, a.users.length) - shown.length;
  $("online-more").hidden = more <= 0;
  $("online-more").textContent = `+${more} more`;
  $("online-anonymous").hidden = a.anonymous <= 0;
  $("online-anonymous").textContent = `+${a.anonymous} anonymous`;
  $("online-anonymous").dataset.count = String(a.anonymous);
  $("online-rest").hidden = more <= 0 && a.anonymous <= 0;
  const count = $("online-count");
  count.textContent = plural(a.total, "user", "users");
  count.title = `${plural(a.connections, "connection", "connections")}, ${a.anonymous} anonymous`;
  count.dataset.total = String(a.total);
  count.dataset.connections = String(a.connections);
}

/** The gateway refused the presence op: presence is off for room. */
function showPresenceOff() {
  const card = $("online").closest(".online");
  delete card.dataset.stale;
  $("online").hidden = true;
  $("online").replaceChildren();
  onlineShown = new Set();
  $("online-rest").hidden = true;
  $("online-count").textContent = "";
  $("online-off").hidden = false;
}

// --- the connection ---------------------------------------------------------------------

const stateWords = { connecting: "connecting…", open: "connected", reconnecting: "reconnecting…", closed: "disconnected" };

/** After a drop or a loss: the page counts what it catches up on until resumed. */
let catchingUp = false;
let caughtUp = 0;
let welcomed = false;
let lastState = "connecting";
let stopped = false; // the page gave up (a refused token): no more words about reconnecting

/**
 * A connection attempt failed before the gateway's welcome. A browser does not tell a
 * page why a WebSocket handshake failed, so ask the same URL over plain HTTP: the gateway
 * answers it as it answered the handshake (401 token refused, 403, 429, 503).
 */
async function diagnose() {
  const ws = new URL(buildURL("ws", { channels: CHANNELS, since: herald.lastOffset, token, params: extra }, location.href));
  ws.protocol = ws.protocol === "wss:" ? "https:" : "http:";
  let r;
  try {
    r = await fetch(ws, { cache: "no-store" });
  } catch {
    return; // the gateway is unreachable: herald.js keeps trying
  }
  const body = await r.json().catch(() => ({}));
  const detail = String(body?.error?.message ?? "").slice(0, 300);
  if (r.status === 401 || r.status === 403) {
    stopped = true;
    herald.close(); // the same token would be refused again
    showAuth(r.status === 403 ? "forbidden" : token ? "refused" : "needed", detail);
    logEvent("closed", r.status === 401 ? "The gateway refused the token: the page stopped trying" : "The gateway refused the connection: the page stopped trying", r.status);
  } else if (r.status === 429) {
    logEvent("closed", "The gateway refuses more connections from this address for now; retrying", r.status);
  } else if (r.status === 503) {
    logEvent("closed", "The gateway is full or shutting down; retrying", r.status);
  }
}

function start() {
  herald = new Herald("ws", {
    channels: CHANNELS,
    presence: [ROOM], // join and leave events, where the gateway has presence on for room
    token,
    params: extra,
  });
  // For the console and for tests.
  window.herald = herald;

  herald.addEventListener("join", refreshOnline);
  herald.addEventListener("leave", refreshOnline);

  herald.addEventListener("message", (ev) => {
    const f = ev.detail;
    if (isChat(f)) addChat(f);
    else addNote(f);
    countMessage(f);
    if (catchingUp) caughtUp++;
  });

  herald.addEventListener("welcome", (ev) => {
    const w = ev.detail;
    $("node").textContent = w.node || "–";
    showIdentity(w.user || "");
    logEvent("welcome", `Connected to gateway ${w.node}${w.user ? ` as ${w.user}` : " as a guest"}`);
    if (extra.user && !w.user) {
      notice(`?user=${extra.user} is ignored: this gateway does not take users from the page's address (that needs --insecure-user-param, for demos), so you are a guest.`);
    }
    if (welcomed) {
      catchingUp = true;
      caughtUp = 0;
    } else {
      showRecent(); // the first connection: the conversation so far
    }
    welcomed = true;
    refreshOnline(); // in a timer: the client is open only once the welcome listeners ran
  });

  herald.addEventListener("resumed", (ev) => {
    if (ev.detail.channel) return; // a subscribe's own replay: not a reconnect
    catchingUp = false;
    logEvent("resumed", caughtUp > 0
      ? `Back online: caught up on ${plural(caughtUp, "missed message", "missed messages")}`
      : "Back online: nothing was missed");
    refreshOnline();
  });

  herald.addEventListener("reset", () => {
    catchingUp = false;
    const li = el("li", "divider", "Some earlier messages could not be recovered.");
    li.dataset.kind = "reset";
    append($("chat"), li);
    logEvent("reset", "Back online, but some messages were missed: they are older than the history the gateway keeps");
  });

  herald.addEventListener("error", (ev) => {
    const e = ev.detail;
    if (e.code === "token") return; // the state change says it
    logEvent("error", e.message);
  });

  herald.addEventListener("state", (ev) => {
    const s = ev.detail;
    const before = lastState;
    lastState = s.state;
    if (stopped) return;
    const pill = $("state");
    pill.textContent = stateWords[s.state] ?? s.state;
    pill.dataset.state = s.state;
    const open = s.state === "open";
    $("drop").disabled = !open;
    $("send-button").disabled = !open;
    if (!open) $("online").closest(".online").dataset.stale = "true"; // until the next answer
    if (s.state === "reconnecting") {
      if (s.code !== 4000) { // the Drop button logs its own line
        logEvent("closed", `${closeWhy(s.code)}; reconnecting in ${(s.delay / 1000).toFixed(1)} s`, s.code);
      }
      if (before !== "open") void diagnose(); // refused before the welcome: ask why
    } else if (s.state === "closed") {
      if (s.code === 1008) {
        showAuth("expired");
        logEvent("closed", closeWhy(1008), 1008);
      } else {
        logEvent("closed", `Disconnected${s.reason ? `: ${s.reason}` : ""}`, s.code);
      }
    }
  });

  $("drop").addEventListener("click", () => {
    logEvent("drop", `You dropped the connection; reconnecting in ${(holdMs / 1000).toFixed(1)} s, and catching up on what is sent meanwhile`, 4000);
    herald.drop(holdMs);
  });
}

$("send").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (!herald) return;
  const text = $("text").value.trim();
  if (!text) return;
  // A user is named by the gateway (from); a guest names itself, for this tab only.
  const data = me ? { text } : { name: nameInput.value.trim() || "guest", text };
  if (!me) sessionStorage.setItem("herald-guest-name", data.name);
  const err = $("send-error");
  err.hidden = true;
  $("text").value = "";
  try {
    const ack = await herald.publish(ROOM, data);
    markMine(ack.id);
  } catch (e) {
    if (!$("text").value) $("text").value = text;
    err.textContent = `Not sent: ${e.message}`;
    err.hidden = false;
  }
  $("text").focus();
});

showIdentity("");
if (info?.auth === "required" && !token) {
  showAuth("needed"); // it would only be refused: do not try
  logEvent("closed", "Not connecting: this gateway needs a token (see above)");
} else {
  start();
}
