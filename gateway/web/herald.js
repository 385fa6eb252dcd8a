// herald.js: the browser client of the Herald WebSocket gateway (wire protocol herald.v1).
//
// One ES module with no dependencies and no build step: import it from the gateway
// (`/herald.js`), from a copy of the file, or, in a bundler or TypeScript project, from
// the npm package `@heraldgw/client` (this folder: package.json, README.md), whose
// TypeScript declarations (herald.d.ts) are generated from the JSDoc below.
//
//   import { Herald } from "/herald.js";
//   const h = new Herald("/ws", { channels: ["news"] });
//   h.addEventListener("message", (ev) => console.log(ev.detail.data));
//   const { id } = await h.publish("news", { text: "hello" });
//
// The client reconnects by itself with exponential backoff and full jitter, honours the
// gateway's close codes, restores its subscriptions, and resumes from the last offset it
// saw (`since`), dropping any message it has already seen. It can also tell who is online
// on a channel (`presence`, `presenceAll`) and report who joins and leaves (`join` and
// `leave` events, for channels subscribed with `{presence: true}`). The pure parts
// (backoff, duplicate filter, close-code policy, URL building, token expiry) are exported
// on their own so that they can be tested without a browser.

/** The WebSocket subprotocol the client offers. */
export const SUBPROTOCOL = "herald.v1";

/** The close code the client sends when `drop()` cuts the connection for a demo or test. */
export const CLOSE_DROPPED = 4000;

/** The most pages `presenceAll` asks for by default before it stops. */
export const PRESENCE_MAX_PAGES = 100;

const CHANNEL_RE = /^[A-Za-z0-9_\-.:/]{1,128}$/;

/**
 * Whether name is a valid channel name: 1 to 128 characters of `A-Z a-z 0-9 _ - . : /`.
 * @param {unknown} name
 * @returns {boolean}
 */
export function validChannel(name) {
  return typeof name === "string" && CHANNEL_RE.test(name);
}

// ---------------------------------------------------------------------------------------
// Backoff

/**
 * @typedef {Object} BackoffOptions
 * @property {number} [base=500] the ceiling of the first delay, in ms
 * @property {number} [cap=30000] the largest delay, in ms
 * @property {() => number} [random=Math.random] a source of numbers in [0, 1)
 * @property {number} [floor=0] the smallest delay, in ms (after 4029, rate limited)
 */

/**
 * The delay before reconnect attempt number `attempt` (0 for the first): exponential
 * backoff with full jitter, a uniformly random delay in [0, min(cap, base * 2^attempt)),
 * raised to `floor` and never above `cap`.
 * @param {number} attempt
 * @param {BackoffOptions} [opts]
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, { base = 500, cap = 30000, random = Math.random, floor = 0 } = {}) {
  const ceiling = Math.min(cap, base * 2 ** Math.min(Math.max(attempt, 0), 32));
  const jittered = Math.floor(random() * ceiling);
  return Math.min(cap, Math.max(floor, jittered));
}

/** Backoff counts reconnect attempts and gives the delay before each. */
export class Backoff {
  /** @param {BackoffOptions} [opts] */
  constructor(opts = {}) {
    /** @private */ this.opts = opts;
    /** The number of delays given since the last reset. */
    this.attempt = 0;
  }

  /**
   * The delay before the next attempt; each call grows the ceiling.
   * @param {number} [floor=0] the smallest delay for this attempt, in ms
   * @returns {number} milliseconds
   */
  next(floor = 0) {
    return backoffDelay(this.attempt++, { ...this.opts, floor });
  }

  /** Starts again from the first delay, after a connection that stayed up. */
  reset() {
    this.attempt = 0;
  }
}

// ---------------------------------------------------------------------------------------
// Offsets

/**
 * OffsetFilter drops messages already seen: offsets are one increasing sequence, so a
 * message whose offset is not above the last one seen is a duplicate. Messages without an
 * offset (a bus that keeps no log) always pass.
 */
export class OffsetFilter {
  /** @param {number | null} [last=null] the last offset already seen, or null for none */
  constructor(last = null) {
    /** @type {number | null} The last offset seen, or null before any. */
    this.last = typeof last === "number" ? last : null;
  }

  /**
   * Whether a message with this offset is new; if it is, it becomes the last seen.
   * @param {unknown} offset
   * @returns {boolean}
   */
  accept(offset) {
    if (typeof offset !== "number") return true;
    if (this.last !== null && offset <= this.last) return false;
    this.last = offset;
    return true;
  }

  /**
   * Sets where the client starts when it has seen nothing yet (the welcome frame's offset).
   * @param {unknown} offset
   */
  seed(offset) {
    if (this.last === null && typeof offset === "number") this.last = offset;
  }

  /**
   * Moves the last seen offset to `offset`, up or down (a `reset` frame: the log restarted
   * or the client fell out of retention).
   * @param {unknown} offset
   */
  reset(offset) {
    if (typeof offset === "number") this.last = offset;
  }
}

// ---------------------------------------------------------------------------------------
// Close codes

/**
 * What the client does after the connection closed with `code` (PROTOCOL.md section 1):
 * - "stop": stay closed (1000).
 * - "token": reconnect only with a new token from getToken (1008).
 * - "fatal": stay closed, the client is at fault (1003, 1007, 1009).
 * - "slow": reconnect after a longer backoff (4029, rate limited).
 * - "reconnect": reconnect with backoff and `since` (1001, 1011, 4008, and 1006: no close
 *   frame, a lost connection, which is also what a client behind a full socket sees of 4008,
 *   and any other code).
 * @param {number} code
 * @returns {"stop" | "token" | "fatal" | "slow" | "reconnect"}
 */
export function closeAction(code) {
  switch (code) {
    case 1000:
      return "stop";
    case 1008:
      return "token";
    case 1003:
    case 1007:
    case 1009:
      return "fatal";
    case 4029:
      return "slow";
    default:
      return "reconnect";
  }
}

// ---------------------------------------------------------------------------------------
// URLs and tokens

/**
 * @typedef {Object} ConnectParams
 * @property {Iterable<string>} [channels] subscribed at connect (the `channels` parameter)
 * @property {number | null} [since] the last offset seen; null or absent for none
 * @property {string} [token] a JWT (the `token` parameter)
 * @property {Record<string, string>} [params] more query parameters
 */

/**
 * The URL to connect to. `url` may be absolute (ws:, wss:, http:, https:) or relative to
 * `base` (the page's address in a browser); http(s) becomes ws(s).
 * @param {string | URL} url
 * @param {ConnectParams} [p]
 * @param {string} [base]
 * @returns {string}
 */
export function buildURL(url, { channels, since, token, params } = {}, base) {
  const u = new URL(String(url), base);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  if (u.protocol !== "ws:" && u.protocol !== "wss:") {
    throw new TypeError(`herald: ${u.protocol} is not a WebSocket URL`);
  }
  for (const [k, v] of Object.entries(params ?? {})) {
    if (v !== undefined && v !== null) u.searchParams.set(k, String(v));
  }
  const list = [...(channels ?? [])];
  if (list.length > 0) u.searchParams.set("channels", list.join(","));
  else u.searchParams.delete("channels");
  if (typeof since === "number") u.searchParams.set("since", String(since));
  else u.searchParams.delete("since");
  if (token) u.searchParams.set("token", token);
  return u.toString();
}

/**
 * The expiry (`exp` claim, seconds since the epoch) of a JWT, or null when the token is
 * not a JWT or has no `exp`. The signature is not checked: that is the gateway's job.
 * @param {string | undefined | null} token
 * @returns {number | null}
 */
export function jwtExpiry(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = atob(b64.padEnd(b64.length + ((4 - (b64.length % 4)) % 4), "="));
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" && Number.isFinite(exp) ? exp : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------
// The Server-Sent Events transport

/**
 * The /sse URL of a /ws URL: the scheme http(s), the path's last "ws" segment "sse", and
 * `presence=1` where the client wants the presence events of its channels.
 * @param {string} wsURL
 * @param {boolean} presence
 * @returns {string}
 */
export function sseURL(wsURL, presence) {
  const u = new URL(wsURL);
  u.protocol = u.protocol === "wss:" ? "https:" : "http:";
  u.pathname = u.pathname.replace(/\/ws\/?$/, "/sse");
  if (presence) u.searchParams.set("presence", "1");
  return u.toString();
}

/** The events of a stream that carry a frame for the client (all but `error`). */
const SSE_EVENTS = ["welcome", "message", "resumed", "reset", "join", "leave"];

/**
 * SSESocket is the face of a WebSocket that the client uses (`onmessage`, `onclose`,
 * `send`, `close`), over a Server-Sent Events stream and POSTs: the stream's events are
 * its frames; publish and presence ops go to `/api/client/`, and their answers come back
 * as frames; a subscribe or unsubscribe of a channel the stream's URL does not have
 * reopens the stream (channels are the URL's), which resumes from the last offset.
 * EventSource's own reconnection is not used: the stream's end is a close, with the code
 * of its `error` event (1006 without one), and the client reconnects as after any other.
 */
export class SSESocket {
  /** @type {((ev: {data: string}) => void) | null} */ onmessage = null;
  /** @type {((ev: {code: number, reason: string}) => void) | null} */ onclose = null;
  #es;
  #url;
  #fetch;
  #channels;
  #closed = false;

  /**
   * @param {string} url the /sse URL, with the connect query
   * @param {Iterable<string>} channels the channels in the URL
   * @param {{EventSource: typeof EventSource, fetch: typeof fetch}} deps
   */
  constructor(url, channels, deps) {
    this.#url = new URL(url);
    this.#fetch = deps.fetch;
    this.#channels = new Set(channels);
    this.#es = new deps.EventSource(url, { withCredentials: true });
    for (const name of SSE_EVENTS) {
      this.#es.addEventListener(name, (ev) => this.#deliver(String(/** @type {MessageEvent} */ (ev).data)));
    }
    this.#es.addEventListener("error", (ev) => {
      const data = /** @type {MessageEvent} */ (ev).data;
      if (typeof data !== "string") {
        this.#end(1006, "the stream was lost");
        return;
      }
      let f;
      try {
        f = JSON.parse(data);
      } catch {
        f = {};
      }
      this.#end(typeof f.close === "number" ? f.close : 1006, String(f.message ?? ""));
    });
  }

  /** @param {string} data */
  #deliver(data) {
    if (!this.#closed) this.onmessage?.({ data });
  }

  /**
   * @param {number} code
   * @param {string} reason
   */
  #end(code, reason) {
    if (this.#closed) return;
    this.#closed = true;
    this.#es.close();
    this.onclose?.({ code, reason });
  }

  /** @param {number} [_code] @param {string} [_reason] */
  close(_code, _reason) {
    this.#closed = true;
    this.#es.close();
  }

  /** @param {string} text a client frame */
  send(text) {
    const f = JSON.parse(text);
    const { op, ref, ...body } = f;
    switch (op) {
      case "publish":
      case "presence":
        void this.#post(op, ref, body);
        return;
      case "subscribe":
      case "unsubscribe": {
        const has = this.#channels.has(f.channel);
        this.#deliver(JSON.stringify({ op: op + "d", channel: f.channel, ref }));
        if (has !== (op === "subscribe")) {
          // The stream's URL must change: reopen it (the client resumes from its offset).
          queueMicrotask(() => this.#end(CLOSE_DROPPED, "channels changed"));
        }
        return;
      }
      case "refresh":
        // A stream's token is checked when it opens: the client's next connect uses it.
        this.#deliver(JSON.stringify({ op: "refreshed", ref }));
        return;
    }
  }

  /**
   * POSTs an op to the client endpoint and hands its answer back as a frame.
   * @param {string} op
   * @param {string} ref
   * @param {Record<string, unknown>} body
   */
  async #post(op, ref, body) {
    const u = new URL(this.#url);
    u.pathname = u.pathname.replace(/\/sse$/, "/api/client/" + op);
    const token = u.searchParams.get("token");
    u.search = "";
    /** @type {Record<string, string>} */
    const headers = { "Content-Type": "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    let answer;
    try {
      const resp = await this.#fetch(u.toString(), {
        method: "POST",
        headers,
        body: JSON.stringify(body),
        credentials: "include",
      });
      const out = await resp.json();
      answer = resp.ok
        ? { ...out, ref }
        : { op: "error", code: out?.error?.code ?? "unavailable", message: out?.error?.message ?? `HTTP ${resp.status}`, ref };
    } catch (err) {
      answer = { op: "error", code: "disconnected", message: `herald: ${op} failed: ${err}`, ref };
    }
    this.#deliver(JSON.stringify(answer));
  }
}

// ---------------------------------------------------------------------------------------
// The client

/** An error answered by the gateway (`error` frame) or made by the client. */
export class HeraldError extends Error {
  /**
   * @param {string} code one of PROTOCOL.md's codes (`bad_request`, `forbidden`,
   *   `rate_limited`, `too_large`, `unavailable`, ...) or the client's own:
   *   `disconnected` (the connection was lost or not open), `closed` (close() was called),
   *   `token` (no usable token), `fatal` (the gateway closed for a client bug).
   * @param {string} message
   * @param {string} [ref] the ref of the op it answers
   */
  constructor(code, message, ref) {
    super(message);
    this.name = "HeraldError";
    /** @type {string} */ this.code = code;
    /** @type {string | undefined} */ this.ref = ref;
  }
}

/**
 * @typedef {"connecting" | "open" | "reconnecting" | "closed"} HeraldState
 */

/**
 * A delivery: the detail of a `message` event (PROTOCOL.md section 4).
 * @typedef {Object} MessageFrame
 * @property {"message"} op
 * @property {string} id the message id, the same on every gateway and on replay
 * @property {string} [channel] absent for a broadcast to all
 * @property {number} [offset] absent where the bus keeps no log
 * @property {string} [from] the publishing user; absent for backend publishes
 * @property {string} [time] RFC 3339, as the publisher said; absent where it set none
 * @property {unknown} data the payload, any JSON value
 * @property {true} [direct] the message named users (the list is not sent)
 */

/**
 * The first frame of every connection: the detail of a `welcome` event.
 * @typedef {Object} WelcomeFrame
 * @property {"welcome"} op
 * @property {string} conn this connection's id, for logs and support
 * @property {string} node the gateway's name
 * @property {string} user the connection's user; "" when anonymous
 * @property {number} [offset] the newest offset in the log at connect (-1 while it is
 *   empty); absent where the bus keeps no log
 */

/**
 * A replay after `since` is complete: the detail of a `resumed` event.
 * @typedef {Object} ResumedFrame
 * @property {"resumed"} op
 * @property {number} since the `since` asked with
 * @property {number} until the offset the replay reached
 * @property {string} [channel] present when it answers a `subscribe` with `since`
 */

/**
 * The `since` could not be honoured (history was lost): the detail of a `reset` event.
 * The page must reload its state from its own backend; live delivery follows.
 * @typedef {Object} ResetFrame
 * @property {"reset"} op
 * @property {number} offset the newest offset now
 * @property {string} [channel] present when it answers a `subscribe` with `since`
 */

/**
 * @typedef {Object} StateDetail
 * @property {HeraldState} state
 * @property {number} [code] the close code that caused the change
 * @property {string} [reason] the close reason
 * @property {number} [delay] ms until the next attempt (state "reconnecting")
 */

/**
 * @typedef {Object} HeraldOptions
 * @property {string} [token] a JWT, sent as `?token=` at connect
 * @property {() => (string | Promise<string>)} [getToken] gives a fresh token: called
 *   before each reconnect, after a close with 1008 (the client reconnects only when the
 *   token is new), and `refreshBefore` ms before the token's `exp`, when the new token is
 *   sent with a `refresh` op
 * @property {Iterable<string>} [channels] channels to subscribe to at connect
 * @property {Iterable<string>} [presence] channels for which to get `join` and `leave`
 *   events, as with `subscribe(channel, {presence: true})`. The connect URL cannot carry
 *   the flag, so after each welcome the client sends a `subscribe` with `presence: true`
 *   for these channels. A channel listed here and not in `channels` is subscribed to too.
 * @property {number} [since] the last offset the page has already seen (e.g. kept across
 *   reloads); by default the client starts from the newest offset at its first welcome
 * @property {Record<string, string>} [params] more query parameters for the connect URL
 * @property {number} [backoffBase=500] ceiling of the first reconnect delay, ms
 * @property {number} [backoffCap=30000] the largest reconnect delay, ms
 * @property {number} [rateLimitedDelay=5000] the smallest delay after close 4029, ms
 * @property {number} [stableAfter=10000] a connection open this long resets the backoff, ms
 * @property {number} [refreshBefore=60000] how long before `exp` to refresh the token, ms
 * @property {() => number} [random=Math.random] source of jitter (tests)
 * @property {typeof WebSocket} [WebSocket] the WebSocket constructor (tests, non-browser
 *   runtimes); default globalThis.WebSocket
 * @property {"websocket" | "sse"} [transport] `"sse"` to use Server-Sent Events (`/sse`,
 *   with POSTs to `/api/client/` to send) from the start; by default WebSocket, with a
 *   fall back to SSE after `sseFallbackAfter` failed opens
 * @property {number} [sseFallbackAfter=3] how many WebSocket opens in a row may fail (no
 *   welcome) before the client falls back to SSE for good; 0 never falls back, nor does
 *   a runtime without EventSource
 * @property {typeof EventSource} [EventSource] the EventSource constructor (tests);
 *   default globalThis.EventSource
 * @property {typeof fetch} [fetch] the fetch function for the SSE transport's POSTs
 *   (tests); default globalThis.fetch
 * @property {string} [base] what relative URLs resolve against; default location.href
 */

/**
 * @typedef {Object} SubscribeOptions
 * @property {boolean} [presence=false] also get the channel's `join` and `leave` events,
 *   now and after every reconnect. Subscribing again without it stops them.
 */

/**
 * @typedef {Object} History
 * @property {MessageFrame[]} messages the channel's recent messages the gateway held in memory,
 *   oldest first (as `message` events carry them; they are not emitted as events)
 * @property {boolean} complete false where the gateway's memory may not reach back to all
 *   the messages asked for (the channel may have had older ones)
 */

/**
 * @typedef {Object} PresenceOptions
 * @property {number} [limit] the most users to list, 1 to 1000 (the gateway's default is
 *   100)
 * @property {string} [after] the `next` of a previous answer: the page after it
 */

/**
 * @typedef {Object} PresenceUser
 * @property {string} user the user id
 * @property {number} connections how many of the user's connections are subscribed
 */

/**
 * Who is online on a channel, on all gateways.
 * @typedef {Object} PresenceAnswer
 * @property {string} channel
 * @property {PresenceUser[]} users sorted by user id
 * @property {number} total how many users are online on the channel in all
 * @property {number} connections all connections subscribed to it (users' and anonymous)
 * @property {number} anonymous the connections without a user
 * @property {string | undefined} next present when more users follow: pass it as `after`
 */

/**
 * The detail of a `join` or `leave` event: users whose presence on the channel began
 * (join) or ended (leave) in the last interval, about a second.
 * @typedef {Object} PresenceEvent
 * @property {string} channel
 * @property {string[]} users
 * @property {boolean} more more users changed than are listed: ask `presence` again
 */

/**
 * The events a {@link Herald} dispatches, by type: each is a CustomEvent whose `detail`
 * is given here.
 * @typedef {Object} HeraldEventMap
 * @property {CustomEvent<MessageFrame>} message each message once, in order
 * @property {CustomEvent<StateDetail>} state the connection's state changed
 * @property {CustomEvent<WelcomeFrame>} welcome on every connect
 * @property {CustomEvent<ResumedFrame>} resumed after a replay
 * @property {CustomEvent<ResetFrame>} reset history was lost: reload your state
 * @property {CustomEvent<PresenceEvent>} join users came online on a channel
 * @property {CustomEvent<PresenceEvent>} leave users went offline on a channel
 * @property {CustomEvent<HeraldError>} error an error that no Promise answers
 */

/**
 * @typedef {Object} Pending
 * @property {"publish" | "subscribe" | "unsubscribe" | "refresh" | "presence" | "resubscribe"} kind
 *   ("resubscribe": the client's own subscribe that asks for presence events of a channel
 *   subscribed to in the connect URL)
 * @property {(v: any) => void} resolve
 * @property {(e: Error) => void} reject
 * @property {string} [channel]
 * @property {number} [history] a subscribe's history: how many recent messages to ask for
 */

/**
 * The answer to a presence op, with defaults for absent fields.
 * @param {any} f the presence frame
 * @returns {PresenceAnswer}
 */
function presenceAnswer(f) {
  const users = /** @type {any[]} */ (Array.isArray(f.users) ? f.users : [])
    .filter((u) => u && typeof u === "object" && typeof u.user === "string")
    .map((u) => ({ user: u.user, connections: typeof u.connections === "number" ? u.connections : 1 }));
  const num = (/** @type {unknown} */ v, /** @type {number} */ dflt) => (typeof v === "number" ? v : dflt);
  const anonymous = num(f.anonymous, 0);
  return {
    channel: String(f.channel ?? ""),
    users,
    total: num(f.total, users.length),
    connections: num(f.connections, users.reduce((n, u) => n + u.connections, anonymous)),
    anonymous,
    next: typeof f.next === "string" && f.next !== "" ? f.next : undefined,
  };
}

/**
 * The detail of a join or leave frame.
 * @param {any} f
 * @returns {PresenceEvent}
 */
function presenceEvent(f) {
  return {
    channel: String(f.channel ?? ""),
    users: /** @type {unknown[]} */ (Array.isArray(f.users) ? f.users : []).filter(
      (u) => typeof u === "string",
    ),
    more: f.more === true,
  };
}

/**
 * Herald is a connection to a Herald gateway that stays up: it reconnects after losses and
 * resumes where it left off. It is an EventTarget; each event is a CustomEvent whose
 * `detail` is:
 * - `message`: the message frame ({@link MessageFrame}), each exactly once, in order;
 * - `state`: a {@link StateDetail} (connecting, open, reconnecting, closed);
 * - `welcome`: the welcome frame (`conn`, `node`, `user`, `offset`), on every connect;
 * - `resumed`: the resumed frame (`since`, `until`) after a replay;
 * - `reset`: the reset frame (`offset`): history was lost, reload your state;
 * - `join`, `leave`: a {@link PresenceEvent}, for channels subscribed with
 *   `{presence: true}`;
 * - `error`: a {@link HeraldError} that no Promise answers (an `error` frame without a
 *   pending op, a refused token, a fatal close).
 * For TypeScript, {@link HeraldEventMap} types each event's `detail`.
 *
 * The client connects as soon as it is made (in a microtask, so listeners added right
 * after the constructor see the first `state` event).
 */
export class Herald extends EventTarget {
  /** @type {string | URL} */ #url;
  /** @type {HeraldOptions} */ #opts;
  /** @type {string | undefined} */ #token;
  /** @type {Set<string>} */ #channels;
  /** @type {Set<string>} channels (of #channels) that get presence events */ #presence;
  #filter;
  #backoff;
  /** @type {WebSocket | SSESocket | null} */ #ws = null;
  /** @type {"websocket" | "sse"} */ #transport;
  #wsFailures = 0;
  /** @type {HeraldState} */ #state = "connecting";
  #stopped = false;
  #seq = 0;
  /** @type {Map<string, Pending>} */ #pending = new Map();
  /** @type {Pending[]} waiters for the next welcome */ #waitingOpen = [];
  /**
   * The history being received: the messages of a subscribe's history follow its
   * subscribed; null when none is.
   * @type {{channel: string, left: number, messages: MessageFrame[], complete: boolean, resolve: (v: any) => void} | null}
   */
  #collecting = null;
  /** @type {ReturnType<typeof setTimeout> | null} */ #retryTimer = null;
  /** @type {ReturnType<typeof setTimeout> | null} */ #refreshTimer = null;
  /** @type {number | null} */ #openedAt = null;
  /** @type {WelcomeFrame | null} */ #welcome = null;

  /**
   * @param {string | URL} url the gateway's /ws endpoint, absolute or relative to the page
   * @param {HeraldOptions} [opts]
   */
  constructor(url, opts = {}) {
    super();
    this.#url = url;
    this.#opts = opts;
    this.#token = opts.token;
    this.#channels = new Set();
    for (const ch of opts.channels ?? []) {
      if (!validChannel(ch)) throw new TypeError(`herald: invalid channel name ${JSON.stringify(ch)}`);
      this.#channels.add(ch);
    }
    this.#presence = new Set();
    for (const ch of opts.presence ?? []) {
      if (!validChannel(ch)) throw new TypeError(`herald: invalid channel name ${JSON.stringify(ch)}`);
      this.#channels.add(ch);
      this.#presence.add(ch);
    }
    this.#filter = new OffsetFilter(opts.since ?? null);
    this.#transport = opts.transport === "sse" ? "sse" : "websocket";
    this.#backoff = new Backoff({
      base: opts.backoffBase ?? 500,
      cap: opts.backoffCap ?? 30000,
      random: opts.random ?? Math.random,
    });
    queueMicrotask(() => {
      if (!this.#stopped && !this.#ws) {
        this.#setState("connecting");
        this.#connect();
      }
    });
  }

  /** @returns {HeraldState} the connection's state now */
  get state() {
    return this.#state;
  }

  /** @returns {number | null} the last offset seen, or null before any */
  get lastOffset() {
    return this.#filter.last;
  }

  /** @returns {string[]} the channels the client is subscribed to (or will be at connect) */
  get channels() {
    return [...this.#channels];
  }

  /** @returns {string[]} the channels for which the client asks presence events */
  get presenceChannels() {
    return [...this.#presence];
  }

  /** @returns {"websocket" | "sse"} the transport the client connects with now */
  get transport() {
    return this.#transport;
  }

  /** @returns {WelcomeFrame | null} the last welcome frame */
  get welcome() {
    return this.#welcome;
  }

  // Typed listeners for TypeScript: `detail` has the type of the event (HeraldEventMap).
  // Nothing but types: they call EventTarget's own.

  /**
   * @template {keyof HeraldEventMap} K
   * @overload
   * @param {K} type
   * @param {(this: Herald, ev: HeraldEventMap[K]) => void} listener
   * @param {boolean | AddEventListenerOptions} [options]
   * @returns {void}
   */
  /**
   * @overload
   * @param {string} type
   * @param {EventListenerOrEventListenerObject | null} listener
   * @param {boolean | AddEventListenerOptions} [options]
   * @returns {void}
   */
  /**
   * Adds a listener, as EventTarget's.
   * @param {string} type
   * @param {EventListenerOrEventListenerObject | null} listener
   * @param {boolean | AddEventListenerOptions} [options]
   */
  addEventListener(type, listener, options) {
    super.addEventListener(type, listener, options);
  }

  /**
   * @template {keyof HeraldEventMap} K
   * @overload
   * @param {K} type
   * @param {(this: Herald, ev: HeraldEventMap[K]) => void} listener
   * @param {boolean | EventListenerOptions} [options]
   * @returns {void}
   */
  /**
   * @overload
   * @param {string} type
   * @param {EventListenerOrEventListenerObject | null} listener
   * @param {boolean | EventListenerOptions} [options]
   * @returns {void}
   */
  /**
   * Removes a listener, as EventTarget's.
   * @param {string} type
   * @param {EventListenerOrEventListenerObject | null} listener
   * @param {boolean | EventListenerOptions} [options]
   */
  removeEventListener(type, listener, options) {
    super.removeEventListener(type, listener, options);
  }

  /**
   * Subscribes to a channel, now when open and at every reconnect. Resolves once the
   * gateway has answered `subscribed` (or, when not open, once the next connection is up).
   * With `{presence: true}` the client also gets the channel's `join` and `leave` events
   * (where the gateway has presence on for the channel), and asks for them again after
   * every reconnect.
   * @param {string} channel
   * @param {SubscribeOptions} [opts]
   * @returns {Promise<void>}
   */
  subscribe(channel, { presence = false } = {}) {
    if (!validChannel(channel)) {
      return Promise.reject(new TypeError(`herald: invalid channel name ${JSON.stringify(channel)}`));
    }
    this.#channels.add(channel);
    if (presence) this.#presence.add(channel);
    else this.#presence.delete(channel);
    return this.#channelOp("subscribe", channel);
  }

  /**
   * Subscribes to a channel, as {@link subscribe}, and asks the gateway for the channel's
   * newest `count` messages that it holds in memory (at most its cap, 100 by default):
   * the recent conversation of a chat room, for a client that joins it. Resolves with them
   * once they have arrived; live messages follow as `message` events, with no gap and no
   * duplicate after the history. After a reconnect the channel is resumed as usual,
   * without history. When the connection is not open, it subscribes at the next one and
   * resolves with no messages (`complete: false`).
   * @param {string} channel
   * @param {number} count how many recent messages, 1 or more
   * @param {SubscribeOptions} [opts]
   * @returns {Promise<History>}
   */
  subscribeWithHistory(channel, count, { presence = false } = {}) {
    if (!validChannel(channel)) {
      return Promise.reject(new TypeError(`herald: invalid channel name ${JSON.stringify(channel)}`));
    }
    if (!Number.isInteger(count) || count < 1) {
      return Promise.reject(new TypeError(`herald: history count must be a positive integer`));
    }
    this.#channels.add(channel);
    if (presence) this.#presence.add(channel);
    else this.#presence.delete(channel);
    if (!this.#isOpen()) {
      return this.#channelOp("subscribe", channel).then(() => ({ messages: [], complete: false }));
    }
    return this.#channelOp("subscribe", channel, count);
  }

  /**
   * Unsubscribes from a channel. Resolves once the gateway has answered `unsubscribed` (or,
   * when not open, at once: the channel is left out of the next connect).
   * @param {string} channel
   * @returns {Promise<void>}
   */
  unsubscribe(channel) {
    this.#presence.delete(channel);
    if (!this.#channels.delete(channel)) return Promise.resolve();
    if (!this.#isOpen()) return Promise.resolve();
    return this.#channelOp("unsubscribe", channel);
  }

  /**
   * Publishes data to a channel (or to everyone when channel is null). Resolves with the
   * message's id once the bus has taken it (`ack`); rejects with a {@link HeraldError} when
   * the gateway refuses it (`error`), when the connection is not open, or when it is lost
   * before the answer (code `disconnected`: the message may or may not have been taken).
   * @param {string | null} channel
   * @param {unknown} data any JSON value
   * @returns {Promise<{id: string}>}
   */
  publish(channel, data) {
    if (channel !== null && channel !== undefined && !validChannel(channel)) {
      return Promise.reject(new TypeError(`herald: invalid channel name ${JSON.stringify(channel)}`));
    }
    if (data === undefined) return Promise.reject(new TypeError("herald: publish needs data"));
    if (!this.#isOpen()) {
      return Promise.reject(new HeraldError("disconnected", "herald: not connected; publish again when open"));
    }
    const ref = this.#nextRef();
    /** @type {Record<string, unknown>} */
    const frame = { op: "publish", ref, data };
    if (channel !== null && channel !== undefined) frame.channel = channel;
    return new Promise((resolve, reject) => {
      this.#pending.set(ref, { kind: "publish", resolve, reject });
      this.#send(frame);
    });
  }

  /**
   * Asks who is online on a channel, on all gateways: one page of users, sorted by user
   * id. Resolves with the answer; rejects with a {@link HeraldError} when the gateway
   * refuses (`forbidden`: presence is off for the channel on this gateway, or the token
   * may not subscribe to it; `bad_request`: a bad limit), when the connection is not open,
   * or when it is lost before the answer (code `disconnected`).
   * @param {string} channel
   * @param {PresenceOptions} [opts]
   * @returns {Promise<PresenceAnswer>}
   */
  presence(channel, { limit, after } = {}) {
    if (!validChannel(channel)) {
      return Promise.reject(new TypeError(`herald: invalid channel name ${JSON.stringify(channel)}`));
    }
    if (limit !== undefined && !(Number.isInteger(limit) && limit >= 1)) {
      return Promise.reject(new TypeError(`herald: presence limit must be a positive integer, not ${limit}`));
    }
    if (after !== undefined && typeof after !== "string") {
      return Promise.reject(new TypeError("herald: presence after must be a string (a previous answer's next)"));
    }
    if (!this.#isOpen()) {
      return Promise.reject(new HeraldError("disconnected", "herald: not connected; ask again when open"));
    }
    const ref = this.#nextRef();
    /** @type {Record<string, unknown>} */
    const frame = { op: "presence", channel, ref };
    if (limit !== undefined) frame.limit = limit;
    if (after !== undefined && after !== "") frame.after = after;
    return new Promise((resolve, reject) => {
      this.#pending.set(ref, { kind: "presence", resolve, reject, channel });
      this.#send(frame);
    });
  }

  /**
   * Asks who is online on a channel and follows `next` until the list is complete, but
   * for no more than `maxPages` pages. Resolves with every user listed, and the counts of
   * the last page; `next` is undefined when the list is complete, else where it stopped.
   * Rejects as {@link Herald.presence} does, when any page is refused or lost.
   * @param {string} channel
   * @param {{limit?: number, maxPages?: number}} [opts] `limit` per page (default 1000, the
   *   gateway's largest), `maxPages` (default {@link PRESENCE_MAX_PAGES})
   * @returns {Promise<PresenceAnswer>}
   */
  async presenceAll(channel, { limit = 1000, maxPages = PRESENCE_MAX_PAGES } = {}) {
    let page = await this.presence(channel, { limit });
    const users = [...page.users];
    for (let n = 1; page.next !== undefined && n < maxPages; n++) {
      const after = page.next;
      page = await this.presence(channel, { limit, after });
      users.push(...page.users);
      if (page.next === after) break; // no progress: do not ask for the same page again
    }
    return { ...page, users };
  }

  /**
   * Sends a fresh token on the open connection (`refresh` op) and uses it for every later
   * connect. The client calls this by itself before `exp` when `getToken` is given.
   * @param {string} token
   * @returns {Promise<void>}
   */
  refresh(token) {
    this.#token = token;
    this.#scheduleRefresh();
    if (!this.#isOpen()) return Promise.resolve();
    const ref = this.#nextRef();
    return new Promise((resolve, reject) => {
      this.#pending.set(ref, { kind: "refresh", resolve, reject });
      this.#send({ op: "refresh", token, ref });
    });
  }

  /**
   * Closes the connection with 1000 and stays closed. Pending publishes, presence queries
   * and channel ops are rejected.
   */
  close() {
    this.#stopped = true;
    this.#clearTimers();
    const ws = this.#detach();
    if (ws) ws.close(1000, "client closed");
    this.#failPending("closed", "herald: the client was closed", true);
    this.#openedAt = null;
    this.#setState("closed", { code: 1000, reason: "client closed" });
  }

  /**
   * Connects again after close() or after the client stopped (1000, 1008 with no new
   * token, a fatal close), with `since` when an offset was seen. Does nothing while the
   * client is connecting, open or waiting to reconnect.
   */
  connect() {
    if (this.#ws || (this.#retryTimer !== null && !this.#stopped)) return;
    this.#stopped = false;
    this.#clearTimers();
    this.#backoff.reset();
    this.#setState("connecting");
    this.#connect();
  }

  /**
   * Cuts the connection as a network loss would (the gateway sees close code 4000), then
   * reconnects and resumes as after any loss, but not sooner than `holdMs`. For demos and
   * tests of resume.
   * @param {number} [holdMs=0]
   */
  drop(holdMs = 0) {
    const ws = this.#detach();
    if (!ws) return;
    try {
      ws.close(CLOSE_DROPPED, "dropped by the client");
    } catch {
      // already closing
    }
    this.#closed(1006, "dropped by the client", holdMs);
  }

  // -------------------------------------------------------------------------------------

  #isOpen() {
    return this.#state === "open" && this.#ws !== null;
  }

  #nextRef() {
    return String(++this.#seq);
  }

  /** @param {object} frame */
  #send(frame) {
    this.#ws?.send(JSON.stringify(frame));
  }

  /**
   * @param {"subscribe" | "unsubscribe"} kind
   * @param {string} channel
   * @param {number} [history] a subscribe's history count (then it resolves with a History)
   * @returns {Promise<any>}
   */
  #channelOp(kind, channel, history) {
    return new Promise((resolve, reject) => {
      if (!this.#isOpen()) {
        this.#waitingOpen.push({ kind, resolve, reject, channel });
        return;
      }
      const ref = this.#nextRef();
      this.#pending.set(ref, { kind, resolve, reject, channel, history });
      /** @type {Record<string, unknown>} */
      const frame = { op: kind, channel, ref };
      if (kind === "subscribe" && this.#presence.has(channel)) frame.presence = true;
      if (kind === "subscribe" && history) frame.history = history;
      this.#send(frame);
    });
  }

  /**
   * Asks for the presence events of a channel that the connect URL subscribed to (the URL
   * cannot carry the flag). Nothing waits for it: a refusal is an `error` event, and the
   * channel stays subscribed (the gateway keeps the URL's subscription).
   * @param {string} channel
   */
  #resubscribe(channel) {
    const ref = this.#nextRef();
    this.#pending.set(ref, {
      kind: "resubscribe",
      channel,
      resolve: () => {},
      reject: () => {},
    });
    this.#send({ op: "subscribe", channel, ref, presence: true });
  }

  /**
   * @param {HeraldState} state
   * @param {Omit<StateDetail, "state">} [extra]
   */
  #setState(state, extra = {}) {
    this.#state = state;
    this.#emit("state", { state, ...extra });
  }

  /**
   * @param {string} type
   * @param {unknown} detail
   */
  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #connect() {
    const WS = this.#opts.WebSocket ?? globalThis.WebSocket;
    const base = this.#opts.base ?? globalThis.location?.href;
    let url;
    try {
      url = buildURL(
        this.#url,
        { channels: this.#channels, since: this.#filter.last, token: this.#token, params: this.#opts.params },
        base,
      );
    } catch (err) {
      this.#stopped = true;
      this.#emit("error", new HeraldError("fatal", String(err)));
      this.#setState("closed", { reason: String(err) });
      return;
    }
    /** @type {WebSocket | SSESocket} */
    let ws;
    if (this.#transport === "sse") {
      const presence = [...this.#presence].some((ch) => this.#channels.has(ch));
      ws = new SSESocket(sseURL(url, presence), this.#channels, {
        EventSource: this.#opts.EventSource ?? globalThis.EventSource,
        fetch: this.#opts.fetch ?? globalThis.fetch?.bind(globalThis),
      });
    } else {
      ws = new WS(url, [SUBPROTOCOL]);
    }
    this.#ws = ws;
    let welcomed = false;
    ws.onmessage = (/** @type {{data: any}} */ ev) => {
      if (ws !== this.#ws) return;
      if (!welcomed && String(ev.data).startsWith('{"op":"welcome"')) {
        welcomed = true;
        if (this.#transport === "websocket") this.#wsFailures = 0;
      }
      this.#onFrame(ev.data);
    };
    ws.onclose = (/** @type {{code: number, reason?: string}} */ ev) => {
      if (ws !== this.#ws) return;
      this.#detach();
      const limit = this.#opts.sseFallbackAfter ?? 3;
      // Only where there is an EventSource to fall back to (browsers; not Node's runtime).
      const canSSE = typeof (this.#opts.EventSource ?? globalThis.EventSource) === "function";
      if (!welcomed && this.#transport === "websocket" && limit > 0 && canSSE && ++this.#wsFailures >= limit) {
        this.#transport = "sse"; // WebSocket does not get through: Server-Sent Events from now on
      }
      this.#closed(ev.code, ev.reason ?? "", 0);
    };
  }

  /** Unhooks the current socket and returns it. */
  #detach() {
    const ws = this.#ws;
    if (this.#collecting) {
      // The connection ended within a history: what came of it is all there is.
      this.#collecting.resolve({ messages: this.#collecting.messages, complete: false });
      this.#collecting = null;
    }
    if (ws) {
      ws.onmessage = null;
      ws.onclose = null;
      this.#ws = null;
    }
    return ws;
  }

  /** @param {unknown} data */
  #onFrame(data) {
    let f;
    try {
      f = JSON.parse(String(data));
    } catch {
      return; // the gateway sends only JSON objects
    }
    if (!f || typeof f !== "object") return;
    switch (f.op) {
      case "message": {
        // A subscribe's history: its messages come right after its subscribed.
        const h = this.#collecting;
        if (h && f.channel === h.channel) {
          h.messages.push(f);
          if (h.messages.length >= h.left) {
            this.#collecting = null;
            h.resolve({ messages: h.messages, complete: h.complete });
          }
          return;
        }
        if (this.#filter.accept(f.offset)) this.#emit("message", f);
        return;
      }
      case "welcome":
        this.#onWelcome(f);
        return;
      case "resumed":
        if (typeof f.until === "number" && !f.channel && (this.#filter.last === null || f.until > this.#filter.last)) {
          this.#filter.last = f.until;
        }
        this.#emit("resumed", f);
        return;
      case "reset":
        if (!f.channel) this.#filter.reset(f.offset);
        this.#emit("reset", f);
        return;
      case "ack":
        this.#settle(f.ref, (p) => p.resolve({ id: f.id }));
        return;
      case "subscribed":
        this.#settle(f.ref, (p) => {
          if (!p.history) {
            p.resolve(undefined);
          } else if (typeof f.history === "number" && f.history > 0) {
            this.#collecting = { channel: String(f.channel), left: f.history, messages: [], complete: f.complete !== false, resolve: p.resolve };
          } else {
            p.resolve({ messages: [], complete: f.complete !== false && typeof f.history === "number" });
          }
        });
        return;
      case "unsubscribed":
        this.#settle(f.ref, (p) => p.resolve(undefined));
        return;
      case "presence":
        // An answer, not an event: without a pending ref it is dropped.
        this.#settle(f.ref, (p) => p.resolve(presenceAnswer(f)));
        return;
      case "join":
      case "leave":
        this.#emit(f.op, presenceEvent(f));
        return;
      case "error": {
        const err = new HeraldError(String(f.code ?? "error"), String(f.message ?? ""), f.ref);
        const p = typeof f.ref === "string" ? this.#pending.get(f.ref) : undefined;
        if (!p) {
          this.#emit("error", err);
          return;
        }
        this.#pending.delete(f.ref);
        if (p.kind === "subscribe" && p.channel) {
          this.#channels.delete(p.channel);
          this.#presence.delete(p.channel);
        }
        if (p.kind === "refresh" || p.kind === "resubscribe") this.#emit("error", err);
        p.reject(err);
        return;
      }
      default:
        // An answer to a ref we hold (e.g. to refresh) settles it; other ops are ignored,
        // so that the gateway may add some.
        this.#settle(f.ref, (p) => p.resolve(undefined));
    }
  }

  /**
   * @param {unknown} ref
   * @param {(p: Pending) => void} fn
   */
  #settle(ref, fn) {
    if (typeof ref !== "string") return;
    const p = this.#pending.get(ref);
    if (!p) return;
    this.#pending.delete(ref);
    fn(p);
  }

  /** @param {any} f */
  #onWelcome(f) {
    this.#welcome = f;
    this.#filter.seed(f.offset);
    this.#openedAt = Date.now();
    // Open first: a welcome listener may publish or ask for presence at once.
    this.#setState("open");
    this.#emit("welcome", f);
    // Channel ops asked for while closed: subscriptions went in the connect URL.
    /** @type {Set<string>} */
    const resent = new Set();
    for (const w of this.#waitingOpen.splice(0)) {
      if (w.kind === "subscribe" && w.channel && !this.#channels.has(w.channel)) {
        w.resolve(undefined); // unsubscribed again meanwhile
      } else if (w.kind === "subscribe" && w.channel) {
        resent.add(w.channel); // with the presence flag, if the channel has it
        this.#channelOp("subscribe", w.channel).then(w.resolve, w.reject);
      } else {
        w.resolve(undefined);
      }
    }
    // The URL subscribed to every channel, but it cannot ask for presence events.
    for (const ch of this.#presence) {
      if (this.#channels.has(ch) && !resent.has(ch)) this.#resubscribe(ch);
    }
    this.#scheduleRefresh();
  }

  /**
   * After the socket is gone: decide whether and when to reconnect.
   * @param {number} code
   * @param {string} reason
   * @param {number} holdMs
   */
  #closed(code, reason, holdMs) {
    if (this.#refreshTimer !== null) clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    const stable = this.#opts.stableAfter ?? 10000;
    if (this.#openedAt !== null && Date.now() - this.#openedAt >= stable) this.#backoff.reset();
    this.#openedAt = null;
    if (this.#stopped) return;

    const action = closeAction(code);
    if (action === "stop" || action === "fatal" || (action === "token" && !this.#opts.getToken)) {
      this.#stop(code, reason, action);
      return;
    }
    this.#failPending("disconnected", `herald: connection lost (${code}) before the gateway answered`, false);
    const floor = action === "slow" ? (this.#opts.rateLimitedDelay ?? 5000) : 0;
    const delay = Math.max(this.#backoff.next(floor), holdMs);
    this.#setState("reconnecting", { code, reason, delay });
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      void this.#reconnect(action, code, reason);
    }, delay);
  }

  /**
   * @param {string} action
   * @param {number} code
   * @param {string} reason
   */
  async #reconnect(action, code, reason) {
    if (this.#stopped) return;
    if (this.#opts.getToken) {
      const old = this.#token;
      try {
        const fresh = await this.#opts.getToken();
        if (fresh) this.#token = fresh;
      } catch (err) {
        this.#emit("error", new HeraldError("token", `herald: getToken failed: ${err}`));
      }
      if (this.#stopped || this.#ws || this.#retryTimer !== null) return;
      if (action === "token" && (!this.#token || this.#token === old)) {
        this.#stop(code, reason, action);
        return;
      }
    }
    this.#connect();
  }

  /**
   * @param {number} code
   * @param {string} reason
   * @param {string} action
   */
  #stop(code, reason, action) {
    this.#stopped = true;
    this.#clearTimers();
    this.#failPending(action === "stop" ? "closed" : action, `herald: connection closed (${code} ${reason})`, true);
    if (action === "fatal") {
      this.#emit("error", new HeraldError("fatal", `herald: the gateway closed the connection (${code} ${reason})`));
    } else if (action === "token") {
      this.#emit("error", new HeraldError("token", `herald: token refused (${code} ${reason}) and no new token`));
    }
    this.#setState("closed", { code, reason });
  }

  /**
   * Rejects the publishes, presence queries and refreshes waiting for an answer. Channel
   * ops wait for the next connection, which restores subscriptions by itself, unless
   * `all`; the client's own resubscribes are dropped (the next welcome sends them again).
   * @param {string} code
   * @param {string} message
   * @param {boolean} all
   */
  #failPending(code, message, all) {
    for (const [ref, p] of this.#pending) {
      if (p.kind === "resubscribe") {
        continue;
      } else if (!all && (p.kind === "subscribe" || p.kind === "unsubscribe")) {
        this.#waitingOpen.push(p);
      } else {
        p.reject(new HeraldError(code, message, ref));
      }
    }
    this.#pending.clear();
    if (all) {
      for (const w of this.#waitingOpen.splice(0)) w.reject(new HeraldError(code, message));
    }
  }

  #clearTimers() {
    if (this.#retryTimer !== null) clearTimeout(this.#retryTimer);
    if (this.#refreshTimer !== null) clearTimeout(this.#refreshTimer);
    this.#retryTimer = this.#refreshTimer = null;
  }

  /** Arms the refresh timer for the current token, when getToken can give a new one. */
  #scheduleRefresh() {
    if (this.#refreshTimer !== null) clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    const exp = jwtExpiry(this.#token);
    if (!this.#opts.getToken || exp === null || !this.#isOpen()) return;
    const wait = Math.max(0, exp * 1000 - Date.now() - (this.#opts.refreshBefore ?? 60000));
    // setTimeout's delay is a 32-bit number of ms.
    this.#refreshTimer = setTimeout(() => void this.#refreshNow(), Math.min(wait, 2 ** 31 - 1));
  }

  async #refreshNow() {
    this.#refreshTimer = null;
    const getToken = this.#opts.getToken;
    if (!getToken || !this.#isOpen()) return;
    let fresh;
    try {
      fresh = await getToken();
    } catch (err) {
      this.#emit("error", new HeraldError("token", `herald: getToken failed: ${err}`));
      return;
    }
    if (!fresh || fresh === this.#token) return;
    this.refresh(fresh).catch(() => {}); // a refused refresh is emitted as an error event
  }
}
