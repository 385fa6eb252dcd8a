// Tests of herald.js without a browser: node --test gateway/web/
import { test } from "node:test";
import assert from "node:assert/strict";

import {
  Backoff,
  Herald,
  HeraldError,
  OffsetFilter,
  PRESENCE_MAX_PAGES,
  SUBPROTOCOL,
  backoffDelay,
  buildURL,
  closeAction,
  jwtExpiry,
  validChannel,
} from "./herald.js";

// --- backoff ----------------------------------------------------------------------------

const almostOne = () => 0.999999;

test("backoff: full jitter stays in [0, min(cap, base*2^n))", () => {
  for (let attempt = 0; attempt < 12; attempt++) {
    const ceiling = Math.min(30000, 500 * 2 ** attempt);
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(attempt);
      assert.ok(Number.isInteger(d), `got ${d}, want an integer`);
      assert.ok(d >= 0 && d < ceiling, `attempt ${attempt}: got ${d}, want in [0, ${ceiling})`);
    }
    assert.equal(backoffDelay(attempt, { random: () => 0 }), 0);
    assert.equal(backoffDelay(attempt, { random: almostOne }), ceiling - 1);
  }
});

test("backoff: the ceiling doubles from base until the cap", () => {
  const got = [];
  for (let a = 0; a < 9; a++) got.push(backoffDelay(a, { base: 500, cap: 30000, random: almostOne }));
  assert.deepEqual(got, [499, 999, 1999, 3999, 7999, 15999, 29999, 29999, 29999]);
});

test("backoff: huge attempt counts stay finite and capped", () => {
  for (const attempt of [40, 1000, 1e9, Infinity]) {
    const d = backoffDelay(attempt, { random: almostOne });
    assert.ok(Number.isFinite(d) && d <= 30000, `attempt ${attempt}: got ${d}`);
  }
});

test("backoff: the jitter spreads over the whole range", () => {
  // Seeded LCG, so that the test is deterministic.
  let s = 42;
  const random = () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  const ds = Array.from({ length: 2000 }, () => backoffDelay(3, { base: 500, random }));
  const ceiling = 4000;
  assert.ok(Math.min(...ds) < ceiling * 0.05, `min ${Math.min(...ds)}`);
  assert.ok(Math.max(...ds) > ceiling * 0.95, `max ${Math.max(...ds)}`);
  const mean = ds.reduce((a, b) => a + b, 0) / ds.length;
  assert.ok(Math.abs(mean - ceiling / 2) < ceiling * 0.05, `mean ${mean}, want about ${ceiling / 2}`);
});

test("backoff: floor raises the delay (rate limited) but never past the cap", () => {
  assert.equal(backoffDelay(0, { random: () => 0, floor: 5000 }), 5000);
  assert.equal(backoffDelay(20, { random: almostOne, floor: 5000 }), 29999);
  assert.equal(backoffDelay(0, { random: () => 0, floor: 99999, cap: 30000 }), 30000);
});

test("Backoff: grows per attempt and resets", () => {
  const b = new Backoff({ base: 100, cap: 1000, random: almostOne });
  assert.deepEqual([b.next(), b.next(), b.next(), b.next(), b.next()], [99, 199, 399, 799, 999]);
  b.reset();
  assert.equal(b.attempt, 0);
  assert.equal(b.next(), 99);
  assert.equal(b.next(700), 700, "floor");
});

// --- duplicate filter -------------------------------------------------------------------

test("OffsetFilter: drops offsets at or below the last seen", () => {
  const f = new OffsetFilter();
  const got = [3, 4, 4, 2, 5, 9, 7, 10].filter((o) => f.accept(o));
  assert.deepEqual(got, [3, 4, 5, 9, 10]);
  assert.equal(f.last, 10);
});

test("OffsetFilter: messages without an offset always pass", () => {
  const f = new OffsetFilter(5);
  assert.equal(f.accept(undefined), true);
  assert.equal(f.accept(null), true);
  assert.equal(f.accept("6"), true, "a string is not an offset");
  assert.equal(f.last, 5);
});

test("OffsetFilter: starts from a given offset, seed and reset", () => {
  const f = new OffsetFilter(-1);
  assert.equal(f.accept(0), true, "since -1 accepts offset 0");
  const g = new OffsetFilter();
  g.seed(41);
  assert.equal(g.accept(41), false);
  assert.equal(g.accept(42), true);
  g.seed(100);
  assert.equal(g.last, 42, "seed does not move an offset already seen");
  g.reset(3);
  assert.equal(g.last, 3, "reset moves down (a restarted log)");
  assert.equal(g.accept(4), true);
});

// --- close codes, URLs, tokens ----------------------------------------------------------

test("closeAction follows the close-code table", () => {
  const want = {
    1000: "stop", 1001: "reconnect", 1002: "reconnect", 1003: "fatal", 1005: "reconnect", 1006: "reconnect", 1007: "fatal",
    1008: "token", 1009: "fatal", 1011: "reconnect", 1012: "reconnect", 4000: "reconnect",
    4008: "reconnect", 4029: "slow",
  };
  for (const [code, action] of Object.entries(want)) {
    assert.equal(closeAction(Number(code)), action, `code ${code}`);
  }
});

test("buildURL: relative URLs take the page's host and scheme", () => {
  assert.equal(buildURL("/ws", {}, "http://example.com:8080/app/"), "ws://example.com:8080/ws");
  assert.equal(buildURL("ws", {}, "https://example.com/app/"), "wss://example.com/app/ws");
  assert.equal(buildURL("wss://h.example/ws", {}, "http://other/"), "wss://h.example/ws");
  assert.equal(buildURL("http://h.example/ws"), "ws://h.example/ws");
  assert.throws(() => buildURL("ftp://h.example/ws"), TypeError);
});

test("buildURL: channels, since, token and extra parameters", () => {
  const u = new URL(buildURL("/ws?x=1", {
    channels: new Set(["room", "notifications"]), since: 41, token: "a.b.c", params: { user: "al ice" },
  }, "http://h/"));
  assert.equal(u.searchParams.get("channels"), "room,notifications");
  assert.equal(u.searchParams.get("since"), "41");
  assert.equal(u.searchParams.get("token"), "a.b.c");
  assert.equal(u.searchParams.get("user"), "al ice");
  assert.equal(u.searchParams.get("x"), "1");

  assert.equal(new URL(buildURL("/ws", { since: 0 }, "http://h/")).searchParams.get("since"), "0");
  assert.equal(new URL(buildURL("/ws", { since: -1 }, "http://h/")).searchParams.get("since"), "-1");
  const none = new URL(buildURL("/ws", { since: null, channels: [] }, "http://h/"));
  assert.equal(none.search, "", "no since, no channels, no token: no query");
});

function jwt(claims) {
  const enc = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${enc({ alg: "HS256", typ: "JWT" })}.${enc(claims)}.sig`;
}

test("jwtExpiry reads exp and tolerates anything else", () => {
  assert.equal(jwtExpiry(jwt({ sub: "alice", exp: 1999999999 })), 1999999999);
  assert.equal(jwtExpiry(jwt({ sub: "alice" })), null);
  assert.equal(jwtExpiry("not-a-jwt"), null);
  assert.equal(jwtExpiry("a.%%%.c"), null);
  assert.equal(jwtExpiry(undefined), null);
});

test("validChannel", () => {
  for (const ok of ["room", "a", "user:alice/inbox", "x".repeat(128), "A-Z_0.9"]) assert.ok(validChannel(ok), ok);
  for (const bad of ["", "x".repeat(129), "a b", "a,b", "é", null, 3]) assert.ok(!validChannel(bad), String(bad));
});

// --- the client, against a fake WebSocket ------------------------------------------------

/** A fake WebSocket class whose instances the test drives as the gateway. */
function fakeSockets() {
  const all = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      this.url = new URL(url);
      this.protocols = protocols;
      this.sent = [];
      this.closedWith = null;
      this.onmessage = null;
      this.onclose = null;
      /** @type {((f: any) => void) | null} the gateway's answer to each frame sent, if set */
      this.onsend = null;
      all.push(this);
    }
    send(s) {
      const f = JSON.parse(s);
      this.sent.push(f);
      if (this.onsend) queueMicrotask(() => this.onsend?.(f));
    }
    close(code, reason) {
      this.closedWith = { code, reason };
      setTimeout(() => this.onclose?.({ code, reason }), 0);
    }
    // gateway side
    frame(f) {
      this.onmessage?.({ data: JSON.stringify(f) });
    }
    welcome(offset, extra = {}) {
      this.frame({ op: "welcome", conn: `c${all.indexOf(this)}`, node: "n1", user: "", offset, ...extra });
    }
    serverClose(code, reason = "") {
      this.onclose?.({ code, reason });
    }
    last() {
      return this.sent.at(-1);
    }
  }
  return { WebSocket: FakeWebSocket, all };
}

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

async function until(what, cond, ms = 2000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await tick(1);
  }
}

/** A client on fake sockets, with no backoff delay and its events recorded. */
function client(opts = {}) {
  const fake = fakeSockets();
  const h = new Herald("/ws", { base: "http://gw.test/", WebSocket: fake.WebSocket, random: () => 0, ...opts });
  const events = [];
  for (const type of ["state", "message", "welcome", "resumed", "reset", "error", "join", "leave"]) {
    h.addEventListener(type, (ev) => events.push({ type, detail: ev.detail }));
  }
  const states = () => events.filter((e) => e.type === "state").map((e) => e.detail.state);
  const offsets = () => events.filter((e) => e.type === "message").map((e) => e.detail.offset);
  return { h, fake, events, states, offsets, socket: (i) => fake.all[i] };
}

const msg = (offset, channel = "room") => ({ op: "message", id: `m${offset}`, channel, offset, time: "2026-01-01T00:00:00Z", data: { n: offset } });

test("Herald connects with the subprotocol and channels, starts from welcome's offset, drops duplicates", async (t) => {
  const c = client({ channels: ["room", "notifications"] });
  t.after(() => c.h.close());
  await until("a socket", () => c.fake.all.length === 1);
  const ws = c.socket(0);
  assert.deepEqual(ws.protocols, [SUBPROTOCOL]);
  assert.equal(ws.url.href, "ws://gw.test/ws?channels=room%2Cnotifications");
  assert.equal(c.h.state, "connecting");

  ws.welcome(9);
  assert.equal(c.h.state, "open");
  assert.equal(c.h.lastOffset, 9);
  for (const o of [9, 10, 11, 11, 10, 12]) ws.frame(msg(o));
  ws.frame({ op: "message", id: "no-offset", time: "2026-01-01T00:00:00Z", data: 1 });
  assert.deepEqual(c.offsets(), [10, 11, 12, undefined]);
  assert.equal(c.h.lastOffset, 12);
  assert.deepEqual(c.states(), ["connecting", "open"]);
});

test("Herald reconnects after network loss with since, its channels and the token, and resumes", async (t) => {
  const c = client({ channels: ["room"], token: "tok" });
  t.after(() => c.h.close());
  await until("a socket", () => c.fake.all.length === 1);
  c.socket(0).welcome(-1);
  c.socket(0).frame(msg(0));
  c.socket(0).frame(msg(1));
  const sub = c.h.subscribe("news");
  assert.deepEqual(c.socket(0).last(), { op: "subscribe", channel: "news", ref: c.socket(0).last().ref });
  c.socket(0).frame({ op: "subscribed", channel: "news", ref: c.socket(0).last().ref });
  await sub;

  c.socket(0).serverClose(1006);
  assert.equal(c.h.state, "reconnecting");
  await until("a second socket", () => c.fake.all.length === 2);
  const q = c.socket(1).url.searchParams;
  assert.equal(q.get("since"), "1");
  assert.equal(q.get("channels"), "room,news");
  assert.equal(q.get("token"), "tok");

  // Replay, with a duplicate of what was seen, then resumed and live messages.
  const ws = c.socket(1);
  ws.welcome(4);
  for (const o of [1, 2, 3, 4]) ws.frame(msg(o));
  ws.frame({ op: "resumed", since: 1, until: 4 });
  ws.frame(msg(4));
  ws.frame(msg(5));
  assert.deepEqual(c.offsets(), [0, 1, 2, 3, 4, 5]);
  assert.equal(c.events.filter((e) => e.type === "resumed").length, 1);
  assert.deepEqual(c.states(), ["connecting", "open", "reconnecting", "open"]);
});

test("Herald reconnects with since after 1001, 1002, 1006 (no close frame, as a stalled client sees 4008), 1011, 4008 and 4029", async (t) => {
  for (const code of [1001, 1002, 1006, 1011, 4008, 4029]) {
    const c = client({ rateLimitedDelay: 1 });
    t.after(() => c.h.close());
    await until("a socket", () => c.fake.all.length === 1);
    c.socket(0).welcome(6);
    c.socket(0).frame(msg(7));
    c.socket(0).serverClose(code);
    await until(`a reconnect after ${code}`, () => c.fake.all.length === 2);
    assert.equal(c.socket(1).url.searchParams.get("since"), "7", `after ${code}`);
    const st = c.events.find((e) => e.type === "state" && e.detail.state === "reconnecting");
    assert.equal(st.detail.code, code);
  }
});

test("Herald stays closed after 1000 and after a fatal close", async (t) => {
  for (const code of [1000, 1003, 1007, 1009]) {
    const c = client();
    t.after(() => c.h.close());
    await until("a socket", () => c.fake.all.length === 1);
    c.socket(0).welcome(-1);
    c.socket(0).serverClose(code);
    await tick(20);
    assert.equal(c.fake.all.length, 1, `no reconnect after ${code}`);
    assert.equal(c.h.state, "closed");
    const errors = c.events.filter((e) => e.type === "error");
    assert.equal(errors.length, code === 1000 ? 0 : 1, `error events after ${code}`);
  }
});

test("Herald after 1008: closed without getToken, or with the same token; reconnects with a new one", async (t) => {
  const none = client({ token: "old" });
  t.after(() => none.h.close());
  await until("a socket", () => none.fake.all.length === 1);
  none.socket(0).welcome(-1);
  none.socket(0).serverClose(1008, "token expired");
  await tick(20);
  assert.equal(none.fake.all.length, 1);
  assert.equal(none.h.state, "closed");
  assert.equal(none.events.at(-2).detail.code, "token");

  const same = client({ token: "old", getToken: () => "old" });
  t.after(() => same.h.close());
  await until("a socket", () => same.fake.all.length === 1);
  same.socket(0).welcome(-1);
  same.socket(0).serverClose(1008);
  await until("closed", () => same.h.state === "closed");
  await tick(20);
  assert.equal(same.fake.all.length, 1);

  const fresh = client({ token: "old", getToken: async () => "new" });
  t.after(() => fresh.h.close());
  await until("a socket", () => fresh.fake.all.length === 1);
  fresh.socket(0).welcome(-1);
  fresh.socket(0).serverClose(1008);
  await until("a reconnect", () => fresh.fake.all.length === 2);
  assert.equal(fresh.socket(1).url.searchParams.get("token"), "new");
});

test("Herald backs off longer after 4029", async (t) => {
  const c = client({ rateLimitedDelay: 30 });
  t.after(() => c.h.close());
  await until("a socket", () => c.fake.all.length === 1);
  c.socket(0).welcome(-1);
  c.socket(0).serverClose(4029);
  const st = c.events.at(-1);
  assert.equal(st.detail.state, "reconnecting");
  assert.equal(st.detail.delay, 30);
  await tick(10);
  assert.equal(c.fake.all.length, 1, "not before the floor");
  await until("a reconnect", () => c.fake.all.length === 2);
});

test("Herald's backoff grows while connections fail and resets after a stable one", async (t) => {
  const delays = async (stableAfter) => {
    const c = client({ random: almostOne, backoffBase: 4, stableAfter });
    t.after(() => c.h.close());
    const got = [];
    c.h.addEventListener("state", (ev) => ev.detail.state === "reconnecting" && got.push(ev.detail.delay));
    for (let i = 0; i < 3; i++) {
      await until(`socket ${i}`, () => c.fake.all.length === i + 1);
      c.socket(i).serverClose(1006); // handshake failed: never opened
    }
    await until("socket 3", () => c.fake.all.length === 4);
    c.socket(3).welcome(-1);
    await tick(15);
    c.socket(3).serverClose(1006);
    return got;
  };
  assert.deepEqual(await delays(10), [3, 7, 15, 3], "reset after a connection open for stableAfter");
  assert.deepEqual(await delays(60000), [3, 7, 15, 31], "no reset after a short connection");
});

test("Herald falls back to SSE after sseFallbackAfter failed WebSocket opens, and resumes from its offset there", async (t) => {
  const streams = [];
  class FakeEventSource {
    constructor(url, init) {
      this.url = new URL(url);
      this.init = init;
      this.listeners = {};
      this.closed = false;
      streams.push(this);
    }
    addEventListener(name, fn) {
      (this.listeners[name] ??= []).push(fn);
    }
    close() {
      this.closed = true;
    }
    emit(name, data) {
      for (const fn of this.listeners[name] ?? []) fn({ data: JSON.stringify(data) });
    }
  }
  const c = client({ channels: ["room"], sseFallbackAfter: 2, EventSource: FakeEventSource, fetch: async () => new Response("{}") });
  t.after(() => c.h.close());
  await until("socket 0", () => c.fake.all.length === 1);
  c.socket(0).welcome(4);
  c.socket(0).frame(msg(5));
  c.socket(0).serverClose(1006); // opened once: not a failure
  for (let i = 1; i <= 2; i++) {
    await until(`socket ${i}`, () => c.fake.all.length === i + 1);
    c.socket(i).serverClose(1006); // handshake failed: never opened
  }
  await until("an event stream", () => streams.length === 1);
  assert.equal(c.fake.all.length, 3, "no WebSocket after the fallback");
  const es = streams[0];
  assert.equal(es.url.pathname, "/sse");
  assert.equal(es.url.searchParams.get("channels"), "room");
  assert.equal(es.url.searchParams.get("since"), "5", "resumes from the last offset it saw");
  assert.deepEqual(es.init, { withCredentials: true });
  es.emit("resumed", { op: "resumed", offset: 5 });
  es.emit("message", msg(6));
  assert.deepEqual(c.offsets(), [5, 6]);
});

test("Herald.publish resolves on ack, rejects on error and on disconnect", async (t) => {
  const c = client();
  t.after(() => c.h.close());
  await assert.rejects(c.h.publish("room", 1), (e) => e instanceof HeraldError && e.code === "disconnected");
  await until("a socket", () => c.fake.all.length === 1);
  const ws = c.socket(0);
  ws.welcome(-1);

  const ok = c.h.publish("room", { text: "hi" });
  const sent = ws.last();
  assert.equal(sent.op, "publish");
  assert.equal(sent.channel, "room");
  assert.deepEqual(sent.data, { text: "hi" });
  const bad = c.h.publish(null, "to all");
  assert.equal(ws.last().channel, undefined, "null channel: a broadcast");
  const lost = c.h.publish("room", 3);

  ws.frame({ op: "error", code: "forbidden", message: "no", ref: ws.sent[1].ref });
  ws.frame({ op: "ack", ref: sent.ref, id: "id-1" });
  assert.deepEqual(await ok, { id: "id-1" });
  await assert.rejects(bad, (e) => e instanceof HeraldError && e.code === "forbidden" && e.ref === ws.sent[1].ref);
  ws.serverClose(1006);
  await assert.rejects(lost, (e) => e instanceof HeraldError && e.code === "disconnected");

  await assert.rejects(c.h.publish("bad channel", 1), TypeError);
  await assert.rejects(c.h.publish("room", undefined), TypeError);
  assert.equal(c.events.filter((e) => e.type === "error").length, 0, "answered errors are not error events");
});

test("Herald is open when welcome is dispatched: a welcome listener may publish at once", async (t) => {
  const c = client();
  t.after(() => c.h.close());
  let published = null;
  c.h.addEventListener("welcome", () => {
    published = c.h.publish("room", { hello: true });
  });
  await until("a socket", () => c.fake.all.length === 1);
  const ws = c.socket(0);
  ws.welcome(-1);
  assert.equal(c.h.state, "open");
  const sent = ws.last();
  assert.equal(sent.op, "publish", "the listener's publish went out");
  ws.frame({ op: "ack", ref: sent.ref, id: "id-w" });
  assert.deepEqual(await published, { id: "id-w" });
});

test("Herald: an error frame with no pending op is an error event; a refused subscribe is dropped", async (t) => {
  const c = client();
  t.after(() => c.h.close());
  await until("a socket", () => c.fake.all.length === 1);
  const ws = c.socket(0);
  ws.welcome(-1);
  ws.frame({ op: "error", code: "bad_request", message: "what" });
  assert.equal(c.events.at(-1).type, "error");
  assert.equal(c.events.at(-1).detail.code, "bad_request");

  const sub = c.h.subscribe("secret");
  ws.frame({ op: "error", code: "forbidden", message: "no", ref: ws.last().ref });
  await assert.rejects(sub, (e) => e.code === "forbidden");
  assert.deepEqual(c.h.channels, []);
  const unsub = c.h.unsubscribe("nothing");
  await unsub; // not subscribed: nothing to send
  assert.equal(ws.sent.length, 1);
});

test("Herald: subscribe while reconnecting goes in the next connect", async (t) => {
  const c = client({ backoffBase: 40, random: almostOne });
  t.after(() => c.h.close());
  await until("a socket", () => c.fake.all.length === 1);
  c.socket(0).welcome(-1);
  c.socket(0).serverClose(1006);
  let done = false;
  const sub = c.h.subscribe("later").then(() => (done = true));
  await until("a reconnect", () => c.fake.all.length === 2);
  assert.equal(c.socket(1).url.searchParams.get("channels"), "later");
  assert.equal(done, false);
  c.socket(1).welcome(-1);
  const op = c.socket(1).last();
  assert.equal(op.op, "subscribe", "subscribing again is harmless and settles the promise");
  c.socket(1).frame({ op: "subscribed", channel: "later", ref: op.ref });
  await sub;
});

test("Herald: reset moves the last offset, even down", async (t) => {
  const c = client();
  t.after(() => c.h.close());
  await until("a socket", () => c.fake.all.length === 1);
  const ws = c.socket(0);
  ws.welcome(50);
  ws.frame(msg(51));
  ws.frame({ op: "reset", offset: 2 });
  ws.frame(msg(3));
  assert.deepEqual(c.offsets(), [51, 3]);
  assert.equal(c.events.filter((e) => e.type === "reset").length, 1);
  ws.frame({ op: "reset", offset: 100, channel: "room" });
  assert.equal(c.h.lastOffset, 3, "a channel's reset leaves the connection's offset");
});

test("Herald.close sends 1000, rejects what is pending and stays closed", async () => {
  const c = client();
  await until("a socket", () => c.fake.all.length === 1);
  const ws = c.socket(0);
  ws.welcome(-1);
  const p = c.h.publish("room", 1);
  c.h.close();
  assert.deepEqual(ws.closedWith, { code: 1000, reason: "client closed" });
  await assert.rejects(p, (e) => e.code === "closed");
  await tick(20);
  assert.equal(c.fake.all.length, 1);
  assert.deepEqual(c.states(), ["connecting", "open", "closed"]);

  c.h.connect();
  await until("connect() again", () => c.fake.all.length === 2);
  c.h.close();
});

test("Herald.drop closes with 4000 and reconnects with since after the hold", async (t) => {
  const c = client();
  t.after(() => c.h.close());
  await until("a socket", () => c.fake.all.length === 1);
  c.socket(0).welcome(3);
  c.h.drop(30);
  assert.equal(c.socket(0).closedWith.code, 4000);
  assert.equal(c.h.state, "reconnecting");
  await tick(10);
  assert.equal(c.fake.all.length, 1, "held offline");
  await until("a reconnect", () => c.fake.all.length === 2);
  assert.equal(c.socket(1).url.searchParams.get("since"), "3");
});

test("Herald refreshes its token before exp with getToken", async (t) => {
  const soon = jwt({ sub: "a", exp: Math.floor(Date.now() / 1000) + 30 });
  const later = jwt({ sub: "a", exp: Math.floor(Date.now() / 1000) + 3600 });
  const c = client({ token: soon, getToken: () => later, refreshBefore: 60000 });
  t.after(() => c.h.close());
  await until("a socket", () => c.fake.all.length === 1);
  c.socket(0).welcome(-1);
  await until("a refresh op", () => c.socket(0).sent.length === 1);
  const op = c.socket(0).last();
  assert.equal(op.op, "refresh");
  assert.equal(op.token, later);
  c.socket(0).frame({ op: "error", code: "unknown_op", message: "x", ref: op.ref });
  await tick(1);
  assert.equal(c.events.at(-1).type, "error", "a refused refresh is an error event");
  c.socket(0).serverClose(1006);
  await until("a reconnect", () => c.fake.all.length === 2);
  assert.equal(c.socket(1).url.searchParams.get("token"), later);
});

// --- presence ---------------------------------------------------------------------------

/** The presence ops a socket has been sent. */
const presenceOps = (ws) => ws.sent.filter((f) => f.op === "presence");
/** The subscribe ops a socket has been sent. */
const subscribeOps = (ws) => ws.sent.filter((f) => f.op === "subscribe");

test("Herald.presence sends the op and resolves with the answer of its ref, rejects on its error", async (t) => {
  const c = client({ channels: ["room"] });
  t.after(() => c.h.close());
  await assert.rejects(c.h.presence("room"), (e) => e instanceof HeraldError && e.code === "disconnected");
  await until("a socket", () => c.fake.all.length === 1);
  const ws = c.socket(0);
  ws.welcome(-1);

  const first = c.h.presence("room");
  assert.deepEqual(ws.last(), { op: "presence", channel: "room", ref: ws.last().ref }, "no limit, no after");
  const paged = c.h.presence("room", { limit: 2, after: "bob" });
  assert.deepEqual(ws.last(), { op: "presence", channel: "room", ref: ws.last().ref, limit: 2, after: "bob" });
  const refused = c.h.presence("secret");
  const [r1, r2, r3] = presenceOps(ws).map((f) => f.ref);
  assert.equal(new Set([r1, r2, r3]).size, 3, "refs are distinct");

  // Answers out of order settle by ref; an answer nobody waits for is dropped, not an event.
  ws.frame({ op: "presence", channel: "room", ref: "no-such-ref", users: [], total: 0, connections: 0, anonymous: 0 });
  ws.frame({
    op: "presence", channel: "room", ref: r2,
    users: [{ user: "carol", connections: 1 }, { user: "dave", connections: 3 }],
    total: 5, connections: 9, anonymous: 2, next: "dave",
  });
  ws.frame({ op: "error", code: "forbidden", message: "presence is off for secret", ref: r3 });
  ws.frame({
    op: "presence", channel: "room", ref: r1,
    users: [{ user: "alice", connections: 2 }, { user: "bob", connections: 1 }],
    total: 2, connections: 4, anonymous: 1,
  });
  assert.deepEqual(await first, {
    channel: "room", users: [{ user: "alice", connections: 2 }, { user: "bob", connections: 1 }],
    total: 2, connections: 4, anonymous: 1, next: undefined,
  });
  assert.deepEqual(await paged, {
    channel: "room", users: [{ user: "carol", connections: 1 }, { user: "dave", connections: 3 }],
    total: 5, connections: 9, anonymous: 2, next: "dave",
  });
  await assert.rejects(refused, (e) => e instanceof HeraldError && e.code === "forbidden" && e.ref === r3);
  assert.deepEqual(c.h.channels, ["room"], "a refused presence op leaves the subscriptions");

  const bad = c.h.presence("room", { limit: 5000 });
  ws.frame({ op: "error", code: "bad_request", message: "limit must be 1 to 1000", ref: ws.last().ref });
  await assert.rejects(bad, (e) => e.code === "bad_request");

  const sent = ws.sent.length;
  await assert.rejects(c.h.presence("bad channel"), TypeError);
  await assert.rejects(c.h.presence("room", { limit: 0 }), TypeError);
  await assert.rejects(c.h.presence("room", { limit: 1.5 }), TypeError);
  await assert.rejects(c.h.presence("room", { after: 7 }), TypeError);
  assert.equal(ws.sent.length, sent, "nothing sent for bad arguments");
  assert.equal(c.events.filter((e) => ["error", "join", "leave"].includes(e.type)).length, 0,
    "answers and answered errors are not events");
});

test("Herald.presenceAll follows next pages and returns every user", async (t) => {
  const c = client({ channels: ["room"] });
  t.after(() => c.h.close());
  await until("a socket", () => c.fake.all.length === 1);
  const ws = c.socket(0);
  ws.welcome(-1);
  const everyone = ["ann", "bea", "cid", "dan", "eve"];
  ws.onsend = (f) => {
    if (f.op !== "presence") return;
    const from = f.after === undefined ? 0 : everyone.indexOf(f.after) + 1;
    const page = everyone.slice(from, from + 2);
    const more = from + 2 < everyone.length;
    ws.frame({
      op: "presence", channel: f.channel, ref: f.ref,
      users: page.map((user) => ({ user, connections: 1 })),
      total: everyone.length, connections: everyone.length + 3, anonymous: 3,
      ...(more ? { next: page.at(-1) } : {}),
    });
  };
  const all = await c.h.presenceAll("room", { limit: 2 });
  assert.deepEqual(all.users.map((u) => u.user), everyone);
  assert.equal(all.total, 5);
  assert.equal(all.connections, 8);
  assert.equal(all.anonymous, 3);
  assert.equal(all.next, undefined, "complete");
  assert.deepEqual(presenceOps(ws).map((f) => [f.limit, f.after]), [[2, undefined], [2, "bea"], [2, "dan"]]);

  // By default pages are as large as the gateway allows.
  ws.sent.length = 0;
  await c.h.presenceAll("room");
  assert.equal(presenceOps(ws)[0].limit, 1000);
});

test("Herald.presenceAll stops after 100 pages, and when a page does not move on", async (t) => {
  const c = client({ channels: ["room"] });
  t.after(() => c.h.close());
  await until("a socket", () => c.fake.all.length === 1);
  const ws = c.socket(0);
  ws.welcome(-1);
  let n = 0;
  ws.onsend = (f) => {
    n++;
    const user = `u${String(n).padStart(4, "0")}`;
    ws.frame({ op: "presence", channel: "room", ref: f.ref, users: [{ user, connections: 1 }], total: 1e6, connections: 1e6, anonymous: 0, next: user });
  };
  const all = await c.h.presenceAll("room");
  assert.equal(PRESENCE_MAX_PAGES, 100);
  assert.equal(presenceOps(ws).length, 100, "bounded");
  assert.equal(all.users.length, 100);
  assert.equal(all.next, "u0100", "where it stopped");

  // A gateway that answers the same next again is not asked forever.
  ws.sent.length = 0;
  ws.onsend = (f) => ws.frame({ op: "presence", channel: "room", ref: f.ref, users: [], total: 1, connections: 1, anonymous: 0, next: "same" });
  const stuck = await c.h.presenceAll("room");
  assert.equal(presenceOps(ws).length, 2);
  assert.equal(stuck.next, "same");

  // A refused page rejects the whole.
  ws.onsend = (f) => ws.frame({ op: "error", code: "forbidden", message: "presence is off", ref: f.ref });
  await assert.rejects(c.h.presenceAll("room"), (e) => e instanceof HeraldError && e.code === "forbidden");
});

test("Herald.subscribe with presence sends presence:true; without it, no flag", async (t) => {
  const c = client();
  t.after(() => c.h.close());
  await until("a socket", () => c.fake.all.length === 1);
  const ws = c.socket(0);
  ws.welcome(-1);

  const sub = c.h.subscribe("room", { presence: true });
  assert.deepEqual(ws.last(), { op: "subscribe", channel: "room", ref: ws.last().ref, presence: true });
  ws.frame({ op: "subscribed", channel: "room", ref: ws.last().ref, presence: true });
  await sub;
  assert.deepEqual(c.h.presenceChannels, ["room"]);

  const plain = c.h.subscribe("news");
  assert.deepEqual(ws.last(), { op: "subscribe", channel: "news", ref: ws.last().ref });
  ws.frame({ op: "subscribed", channel: "news", ref: ws.last().ref });
  await plain;
  const off = c.h.subscribe("room", {});
  assert.equal(ws.last().presence, undefined, "subscribing again without the flag");
  ws.frame({ op: "subscribed", channel: "room", ref: ws.last().ref });
  await off;
  assert.deepEqual(c.h.presenceChannels, [], "the flag is dropped");

  const refused = c.h.subscribe("secret", { presence: true });
  ws.frame({ op: "error", code: "forbidden", message: "no", ref: ws.last().ref });
  await assert.rejects(refused, (e) => e.code === "forbidden");
  assert.deepEqual(c.h.presenceChannels, [], "a refused subscribe drops its flag");
  assert.deepEqual(c.h.channels, ["room", "news"]);
});

test("Herald asks for presence events again after a reconnect, with since", async (t) => {
  const c = client({ channels: ["notifications"] });
  t.after(() => c.h.close());
  await until("a socket", () => c.fake.all.length === 1);
  c.socket(0).welcome(-1);
  c.socket(0).frame(msg(0));
  for (const [ch, presence] of [["room", true], ["news", false], ["gone", true]]) {
    const p = c.h.subscribe(ch, { presence });
    c.socket(0).frame({ op: "subscribed", channel: ch, ref: c.socket(0).last().ref, presence });
    await p;
  }
  const un = c.h.unsubscribe("gone");
  c.socket(0).frame({ op: "unsubscribed", channel: "gone", ref: c.socket(0).last().ref });
  await un;
  assert.deepEqual(c.h.presenceChannels, ["room"], "unsubscribe drops the flag");

  c.socket(0).serverClose(1006);
  await until("a second socket", () => c.fake.all.length === 2);
  const ws = c.socket(1);
  const q = ws.url.searchParams;
  assert.equal(q.get("channels"), "notifications,room,news");
  assert.equal(q.get("since"), "0");
  assert.equal(q.get("presence"), null, "the URL has no presence flag");
  assert.equal(ws.sent.length, 0, "nothing before welcome");

  ws.welcome(0);
  assert.deepEqual(ws.sent, [{ op: "subscribe", channel: "room", ref: ws.sent[0]?.ref, presence: true }],
    "one subscribe, for the channel with the flag, without since (the URL resumes it)");
  ws.frame({ op: "subscribed", channel: "room", ref: ws.sent[0].ref, presence: true });
  ws.frame({ op: "resumed", since: 0, until: 0 });
  ws.frame({ op: "join", channel: "room", users: ["alice"] });
  assert.equal(c.events.filter((e) => e.type === "error").length, 0);
  assert.equal(c.events.at(-1).type, "join");
});

test("Herald: a presence subscribe lost or asked for while offline is sent once after welcome", async (t) => {
  const c = client({ backoffBase: 40, random: almostOne, presence: ["room"] });
  t.after(() => c.h.close());
  await until("a socket", () => c.fake.all.length === 1);
  c.socket(0).welcome(-1);
  assert.equal(subscribeOps(c.socket(0)).length, 1, "the constructor's presence channel");
  // Lost before its answer: both the client's own subscribe and the user's.
  const lost = c.h.subscribe("news", { presence: true });
  c.socket(0).serverClose(1006);
  const later = c.h.subscribe("later", { presence: true });
  await until("a reconnect", () => c.fake.all.length === 2);
  const ws = c.socket(1);
  assert.equal(ws.url.searchParams.get("channels"), "room,news,later");
  ws.welcome(-1);
  const subs = subscribeOps(ws);
  assert.deepEqual(subs.map((f) => [f.channel, f.presence]).sort(), [["later", true], ["news", true], ["room", true]]);
  for (const f of subs) ws.frame({ op: "subscribed", channel: f.channel, ref: f.ref, presence: true });
  await lost;
  await later;
  assert.equal(c.events.filter((e) => e.type === "error").length, 0);
});

test("Herald's presence option: a subscribe with presence:true right after welcome", async (t) => {
  const c = client({ channels: ["room", "notifications"], presence: ["room"] });
  t.after(() => c.h.close());
  await until("a socket", () => c.fake.all.length === 1);
  const ws = c.socket(0);
  assert.equal(ws.url.href, "ws://gw.test/ws?channels=room%2Cnotifications", "the URL as without the option");
  assert.deepEqual(c.h.presenceChannels, ["room"]);
  assert.equal(ws.sent.length, 0);
  ws.welcome(3);
  assert.deepEqual(ws.sent, [{ op: "subscribe", channel: "room", ref: ws.sent[0].ref, presence: true }]);
  ws.frame({ op: "subscribed", channel: "room", ref: ws.sent[0].ref, presence: true });
  await tick(1);
  assert.equal(c.events.filter((e) => e.type === "error").length, 0, "the second subscribed is harmless");

  // A channel only in presence is subscribed to as well.
  const d = client({ presence: ["lobby"] });
  t.after(() => d.h.close());
  await until("a socket", () => d.fake.all.length === 1);
  assert.equal(d.socket(0).url.searchParams.get("channels"), "lobby");
  assert.throws(() => new Herald("/ws", { presence: ["bad channel"], WebSocket: d.fake.WebSocket }), TypeError);

  // Refused: an error event, and the URL's subscription stays.
  const e = client({ channels: ["room"], presence: ["room"] });
  t.after(() => e.h.close());
  await until("a socket", () => e.fake.all.length === 1);
  e.socket(0).welcome(-1);
  e.socket(0).frame({ op: "error", code: "forbidden", message: "no", ref: e.socket(0).last().ref });
  assert.equal(e.events.at(-1).type, "error");
  assert.equal(e.events.at(-1).detail.code, "forbidden");
  assert.deepEqual(e.h.channels, ["room"]);
});

test("Herald dispatches join and leave events with channel, users and more", async (t) => {
  const c = client({ channels: ["room"], presence: ["room"] });
  t.after(() => c.h.close());
  await until("a socket", () => c.fake.all.length === 1);
  const ws = c.socket(0);
  ws.welcome(-1);
  ws.frame({ op: "join", channel: "room", users: ["alice", "bob"] });
  ws.frame({ op: "leave", channel: "room", users: ["carol"] });
  ws.frame({ op: "join", channel: "room", users: ["dave"], more: true });
  const got = c.events.filter((e) => e.type === "join" || e.type === "leave").map((e) => [e.type, e.detail]);
  assert.deepEqual(got, [
    ["join", { channel: "room", users: ["alice", "bob"], more: false }],
    ["leave", { channel: "room", users: ["carol"], more: false }],
    ["join", { channel: "room", users: ["dave"], more: true }],
  ]);
  let seen = null;
  c.h.addEventListener("leave", (ev) => (seen = ev));
  ws.frame({ op: "leave", channel: "room", users: ["eve"] });
  assert.ok(seen instanceof CustomEvent);
  assert.deepEqual(seen.detail, { channel: "room", users: ["eve"], more: false });
});

test("Herald: a pending presence query rejects when the connection is lost or closed, as publish does", async (t) => {
  const c = client({ channels: ["room"] });
  t.after(() => c.h.close());
  await until("a socket", () => c.fake.all.length === 1);
  c.socket(0).welcome(-1);
  const q = c.h.presence("room");
  const all = c.h.presenceAll("room");
  const pub = c.h.publish("room", 1);
  c.socket(0).serverClose(1006);
  await assert.rejects(q, (e) => e instanceof HeraldError && e.code === "disconnected");
  await assert.rejects(all, (e) => e instanceof HeraldError && e.code === "disconnected");
  await assert.rejects(pub, (e) => e.code === "disconnected");
  await assert.rejects(c.h.presence("room"), (e) => e.code === "disconnected", "not open");

  await until("a reconnect", () => c.fake.all.length === 2);
  c.socket(1).welcome(-1);
  const q2 = c.h.presence("room");
  c.h.close();
  await assert.rejects(q2, (e) => e instanceof HeraldError && e.code === "closed");
  assert.equal(c.events.filter((e) => e.type === "error").length, 0, "failed queries are not error events");
});

test("Herald subscribeWithHistory resolves with the channel's recent messages, which pass no offset filter and are no events; live ones follow", async (t) => {
  const c = client({ channels: ["other"] });
  t.after(() => c.h.close());
  await until("a socket", () => c.fake.all.length === 1);
  const ws = c.socket(0);
  ws.welcome(20);
  ws.frame(msg(21, "other"));
  const got = c.h.subscribeWithHistory("room", 3);
  const sent = ws.last();
  assert.deepEqual(sent, { op: "subscribe", channel: "room", ref: sent.ref, history: 3 });
  ws.frame({ op: "subscribed", channel: "room", ref: sent.ref, history: 2, complete: true });
  ws.frame(msg(5));
  ws.frame(msg(17));
  ws.frame(msg(22)); // live
  const h = await got;
  assert.deepEqual(h.messages.map((m) => m.offset), [5, 17]);
  assert.equal(h.complete, true);
  assert.deepEqual(c.offsets(), [21, 22]);
  assert.ok(c.h.channels.includes("room"));

  // None held, and incomplete; a refusal rejects.
  const none = c.h.subscribeWithHistory("quiet", 10);
  ws.frame({ op: "subscribed", channel: "quiet", ref: ws.last().ref, history: 0, complete: false });
  assert.deepEqual(await none, { messages: [], complete: false });
  await assert.rejects(c.h.subscribeWithHistory("room", 0), TypeError);
});
