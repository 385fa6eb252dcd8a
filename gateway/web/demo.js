// The demo page: a chat room on channel "room", who is online there, and a notifications
// panel for messages from backend services, on one Herald connection. Query parameters: name (the chat name),
// token (a JWT), user (the demo gateway's --insecure-user-param), hold (ms the "Drop
// connection" button keeps the page offline; default 3000).
import { Herald } from "./herald.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const MAX_ITEMS = 300;

const nameInput = $("name");
nameInput.value = params.get("name") || localStorage.getItem("herald-name") || `guest${Math.floor(Math.random() * 900) + 100}`;

const extra = {};
if (params.get("user")) extra.user = params.get("user");
const holdMs = Number(params.get("hold") ?? 3000);
const ROOM = "room";

const herald = new Herald("ws", {
  channels: [ROOM, "notifications"],
  presence: [ROOM], // join and leave events, where the gateway has presence on for room
  token: params.get("token") || undefined,
  params: extra,
});
// For the console and for tests.
window.herald = herald;

$("curl").textContent = $("curl").textContent.replace("http://localhost:8080", location.origin);

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

function isChat(f) {
  return f.channel === "room" && f.data !== null && typeof f.data === "object" && typeof f.data.text === "string";
}

function addChat(f) {
  const who = typeof f.data.name === "string" && f.data.name ? f.data.name : f.from || "anonymous";
  const li = el("li", who === nameInput.value ? "msg mine" : "msg");
  tag(li, f);
  const meta = el("div", "meta");
  meta.append(el("span", "who", who), timeEl(f.time));
  li.append(meta, el("div", "text", f.data.text));
  append($("chat"), li);
}

function addNote(f) {
  const li = el("li", "note");
  tag(li, f);
  const meta = el("div", "meta");
  meta.append(el("span", "src", f.channel ? f.channel : "everyone"), timeEl(f.time));
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

function logEvent(kind, text, code) {
  const li = el("li", `ev ${kind}`);
  li.dataset.kind = kind;
  if (code !== undefined) li.dataset.code = String(code);
  li.append(timeEl(), document.createTextNode(" " + text));
  append($("events"), li);
}

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
  if (herald.state !== "open") return; // the next welcome refreshes
  onlineBusy = true;
  onlineAt = Date.now();
  let on = true;
  try {
    showOnline(await herald.presenceAll(ROOM));
  } catch (e) {
    on = false;
    if (e.code === "forbidden") showPresenceOff();
    else if (e.code !== "disconnected" && e.code !== "closed") logEvent("error", `presence: ${e.code}: ${e.message}`);
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

const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

/** @param {import("./herald.js").PresenceAnswer} a */
function showOnline(a) {
  const card = $("online").closest(".online");
  delete card.dataset.stale;
  $("online-off").hidden = true;
  const list = $("online");
  list.hidden = false;
  const me = herald.welcome?.user || "";
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

herald.addEventListener("join", refreshOnline);
herald.addEventListener("leave", refreshOnline);

function showOffset() {
  const off = herald.lastOffset;
  $("offset").textContent = off === null ? "–" : String(off);
}

// --- the connection ---------------------------------------------------------------------

const closeNames = {
  1000: "normal", 1001: "going away", 1006: "connection lost", 1008: "policy", 1011: "internal error",
  4008: "slow consumer", 4029: "rate limited",
};

herald.addEventListener("message", (ev) => {
  const f = ev.detail;
  if (isChat(f)) addChat(f);
  else addNote(f);
  showOffset();
});

herald.addEventListener("welcome", (ev) => {
  const w = ev.detail;
  $("node").textContent = w.node || "–";
  logEvent("welcome", `connected to ${w.node} as ${w.conn}${w.user ? ` (user ${w.user})` : ""}`);
  showOffset();
  refreshOnline(); // in a timer: the client is open only once the welcome listeners ran
});

herald.addEventListener("resumed", (ev) => {
  const r = ev.detail;
  logEvent("resumed", r.until > r.since
    ? `resumed: replayed what was missed, offsets ${r.since + 1} to ${r.until}`
    : `resumed at offset ${r.since}: nothing was missed`);
  showOffset();
  refreshOnline();
});

herald.addEventListener("reset", (ev) => {
  const li = el("li", "divider", "History was reset: earlier messages may be missing.");
  li.dataset.kind = "reset";
  append($("chat"), li);
  logEvent("reset", `history reset; now at offset ${ev.detail.offset}`);
  showOffset();
});

herald.addEventListener("error", (ev) => {
  const e = ev.detail;
  logEvent("error", `${e.code}: ${e.message}`);
});

herald.addEventListener("state", (ev) => {
  const s = ev.detail;
  const pill = $("state");
  pill.textContent = s.state;
  pill.dataset.state = s.state;
  const open = s.state === "open";
  $("drop").disabled = !open;
  $("send-button").disabled = !open;
  if (!open) $("online").closest(".online").dataset.stale = "true"; // until the next answer
  if (s.state === "reconnecting") {
    const why = closeNames[s.code] ? ` (${closeNames[s.code]})` : "";
    logEvent("closed", `closed ${s.code}${why}: reconnecting in ${(s.delay / 1000).toFixed(1)} s`, s.code);
  } else if (s.state === "closed") {
    logEvent("closed", `closed${s.code ? ` ${s.code}` : ""}${s.reason ? `: ${s.reason}` : ""}`, s.code);
  }
});

// --- the page's controls ----------------------------------------------------------------

$("drop").addEventListener("click", () => {
  logEvent("drop", `connection dropped; back in ${(holdMs / 1000).toFixed(1)} s`);
  herald.drop(holdMs);
});

$("send").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const text = $("text").value.trim();
  const name = nameInput.value.trim() || "anonymous";
  if (!text) return;
  localStorage.setItem("herald-name", name);
  const err = $("send-error");
  err.hidden = true;
  $("text").value = "";
  try {
    await herald.publish("room", { name, text });
  } catch (e) {
    if (!$("text").value) $("text").value = text;
    err.textContent = `Not sent: ${e.message}`;
    err.hidden = false;
  }
  $("text").focus();
});
