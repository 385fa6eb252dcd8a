// The demo page: a chat room on channel "room" and a notifications panel for messages from
// backend services, on one Herald connection. Query parameters: name (the chat name),
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

const herald = new Herald("ws", {
  channels: ["room", "notifications"],
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
});

herald.addEventListener("resumed", (ev) => {
  const r = ev.detail;
  logEvent("resumed", r.until > r.since
    ? `resumed: replayed what was missed, offsets ${r.since + 1} to ${r.until}`
    : `resumed at offset ${r.since}: nothing was missed`);
  showOffset();
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
