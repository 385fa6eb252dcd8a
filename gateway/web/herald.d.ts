/**
 * Whether name is a valid channel name: 1 to 128 characters of `A-Z a-z 0-9 _ - . : /`.
 * @param {unknown} name
 * @returns {boolean}
 */
export function validChannel(name: unknown): boolean;
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
export function backoffDelay(attempt: number, { base, cap, random, floor }?: BackoffOptions): number;
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
export function closeAction(code: number): "stop" | "token" | "fatal" | "slow" | "reconnect";
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
export function buildURL(url: string | URL, { channels, since, token, params }?: ConnectParams, base?: string): string;
/**
 * The expiry (`exp` claim, seconds since the epoch) of a JWT, or null when the token is
 * not a JWT or has no `exp`. The signature is not checked: that is the gateway's job.
 * @param {string | undefined | null} token
 * @returns {number | null}
 */
export function jwtExpiry(token: string | undefined | null): number | null;
/**
 * The /sse URL of a /ws URL: the scheme http(s), the path's last "ws" segment "sse", and
 * `presence=1` where the client wants the presence events of its channels.
 * @param {string} wsURL
 * @param {boolean} presence
 * @returns {string}
 */
export function sseURL(wsURL: string, presence: boolean): string;
/** The WebSocket subprotocol the client offers. */
export const SUBPROTOCOL: "herald.v1";
/** The close code the client sends when `drop()` cuts the connection for a demo or test. */
export const CLOSE_DROPPED: 4000;
/** The most pages `presenceAll` asks for by default before it stops. */
export const PRESENCE_MAX_PAGES: 100;
/** Backoff counts reconnect attempts and gives the delay before each. */
export class Backoff {
    /** @param {BackoffOptions} [opts] */
    constructor(opts?: BackoffOptions);
    /** @private */ private opts;
    /** The number of delays given since the last reset. */
    attempt: number;
    /**
     * The delay before the next attempt; each call grows the ceiling.
     * @param {number} [floor=0] the smallest delay for this attempt, in ms
     * @returns {number} milliseconds
     */
    next(floor?: number): number;
    /** Starts again from the first delay, after a connection that stayed up. */
    reset(): void;
}
/**
 * OffsetFilter drops messages already seen: offsets are one increasing sequence, so a
 * message whose offset is not above the last one seen is a duplicate. Messages without an
 * offset (a bus that keeps no log) always pass.
 */
export class OffsetFilter {
    /** @param {number | null} [last=null] the last offset already seen, or null for none */
    constructor(last?: number | null);
    /** @type {number | null} The last offset seen, or null before any. */
    last: number | null;
    /**
     * Whether a message with this offset is new; if it is, it becomes the last seen.
     * @param {unknown} offset
     * @returns {boolean}
     */
    accept(offset: unknown): boolean;
    /**
     * Sets where the client starts when it has seen nothing yet (the welcome frame's offset).
     * @param {unknown} offset
     */
    seed(offset: unknown): void;
    /**
     * Moves the last seen offset to `offset`, up or down (a `reset` frame: the log restarted
     * or the client fell out of retention).
     * @param {unknown} offset
     */
    reset(offset: unknown): void;
}
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
    /**
     * @param {string} url the /sse URL, with the connect query
     * @param {Iterable<string>} channels the channels in the URL
     * @param {{EventSource: typeof EventSource, fetch: typeof fetch}} deps
     */
    constructor(url: string, channels: Iterable<string>, deps: {
        EventSource: typeof EventSource;
        fetch: typeof fetch;
    });
    /** @type {((ev: {data: string}) => void) | null} */ onmessage: ((ev: {
        data: string;
    }) => void) | null;
    /** @type {((ev: {code: number, reason: string}) => void) | null} */ onclose: ((ev: {
        code: number;
        reason: string;
    }) => void) | null;
    /** @param {number} [_code] @param {string} [_reason] */
    close(_code?: number, _reason?: string): void;
    /** @param {string} text a client frame */
    send(text: string): void;
    #private;
}
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
    constructor(code: string, message: string, ref?: string);
    /** @type {string} */ code: string;
    /** @type {string | undefined} */ ref: string | undefined;
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
    /**
     * @param {string | URL} url the gateway's /ws endpoint, absolute or relative to the page
     * @param {HeraldOptions} [opts]
     */
    constructor(url: string | URL, opts?: HeraldOptions);
    /** @returns {HeraldState} the connection's state now */
    get state(): HeraldState;
    /** @returns {number | null} the last offset seen, or null before any */
    get lastOffset(): number | null;
    /** @returns {string[]} the channels the client is subscribed to (or will be at connect) */
    get channels(): string[];
    /** @returns {string[]} the channels for which the client asks presence events */
    get presenceChannels(): string[];
    /** @returns {"websocket" | "sse"} the transport the client connects with now */
    get transport(): "websocket" | "sse";
    /** @returns {WelcomeFrame | null} the last welcome frame */
    get welcome(): WelcomeFrame | null;
    /**
     * @template {keyof HeraldEventMap} K
     * @overload
     * @param {K} type
     * @param {(this: Herald, ev: HeraldEventMap[K]) => void} listener
     * @param {boolean | AddEventListenerOptions} [options]
     * @returns {void}
     */
    addEventListener<K extends keyof HeraldEventMap>(type: K, listener: (this: Herald, ev: HeraldEventMap[K]) => void, options?: boolean | AddEventListenerOptions | undefined): void;
    /**
     * @overload
     * @param {string} type
     * @param {EventListenerOrEventListenerObject | null} listener
     * @param {boolean | AddEventListenerOptions} [options]
     * @returns {void}
     */
    addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions | undefined): void;
    /**
     * @template {keyof HeraldEventMap} K
     * @overload
     * @param {K} type
     * @param {(this: Herald, ev: HeraldEventMap[K]) => void} listener
     * @param {boolean | EventListenerOptions} [options]
     * @returns {void}
     */
    removeEventListener<K extends keyof HeraldEventMap>(type: K, listener: (this: Herald, ev: HeraldEventMap[K]) => void, options?: boolean | EventListenerOptions | undefined): void;
    /**
     * @overload
     * @param {string} type
     * @param {EventListenerOrEventListenerObject | null} listener
     * @param {boolean | EventListenerOptions} [options]
     * @returns {void}
     */
    removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions | undefined): void;
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
    subscribe(channel: string, { presence }?: SubscribeOptions): Promise<void>;
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
    subscribeWithHistory(channel: string, count: number, { presence }?: SubscribeOptions): Promise<History>;
    /**
     * Unsubscribes from a channel. Resolves once the gateway has answered `unsubscribed` (or,
     * when not open, at once: the channel is left out of the next connect).
     * @param {string} channel
     * @returns {Promise<void>}
     */
    unsubscribe(channel: string): Promise<void>;
    /**
     * Publishes data to a channel (or to everyone when channel is null). Resolves with the
     * message's id once the bus has taken it (`ack`); rejects with a {@link HeraldError} when
     * the gateway refuses it (`error`), when the connection is not open, or when it is lost
     * before the answer (code `disconnected`: the message may or may not have been taken).
     * @param {string | null} channel
     * @param {unknown} data any JSON value
     * @returns {Promise<{id: string}>}
     */
    publish(channel: string | null, data: unknown): Promise<{
        id: string;
    }>;
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
    presence(channel: string, { limit, after }?: PresenceOptions): Promise<PresenceAnswer>;
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
    presenceAll(channel: string, { limit, maxPages }?: {
        limit?: number;
        maxPages?: number;
    }): Promise<PresenceAnswer>;
    /**
     * Sends a fresh token on the open connection (`refresh` op) and uses it for every later
     * connect. The client calls this by itself before `exp` when `getToken` is given.
     * @param {string} token
     * @returns {Promise<void>}
     */
    refresh(token: string): Promise<void>;
    /**
     * Closes the connection with 1000 and stays closed. Pending publishes, presence queries
     * and channel ops are rejected.
     */
    close(): void;
    /**
     * Connects again after close() or after the client stopped (1000, 1008 with no new
     * token, a fatal close), with `since` when an offset was seen. Does nothing while the
     * client is connecting, open or waiting to reconnect.
     */
    connect(): void;
    /**
     * Cuts the connection as a network loss would (the gateway sees close code 4000), then
     * reconnects and resumes as after any loss, but not sooner than `holdMs`. For demos and
     * tests of resume.
     * @param {number} [holdMs=0]
     */
    drop(holdMs?: number): void;
    #private;
}
export type BackoffOptions = {
    /**
     * the ceiling of the first delay, in ms
     */
    base?: number | undefined;
    /**
     * the largest delay, in ms
     */
    cap?: number | undefined;
    /**
     * a source of numbers in [0, 1)
     */
    random?: (() => number) | undefined;
    /**
     * the smallest delay, in ms (after 4029, rate limited)
     */
    floor?: number | undefined;
};
export type ConnectParams = {
    /**
     * subscribed at connect (the `channels` parameter)
     */
    channels?: Iterable<string> | undefined;
    /**
     * the last offset seen; null or absent for none
     */
    since?: number | null | undefined;
    /**
     * a JWT (the `token` parameter)
     */
    token?: string | undefined;
    /**
     * more query parameters
     */
    params?: Record<string, string> | undefined;
};
export type HeraldState = "connecting" | "open" | "reconnecting" | "closed";
/**
 * A delivery: the detail of a `message` event (PROTOCOL.md section 4).
 */
export type MessageFrame = {
    op: "message";
    /**
     * the message id, the same on every gateway and on replay
     */
    id: string;
    /**
     * absent for a broadcast to all
     */
    channel?: string | undefined;
    /**
     * absent where the bus keeps no log
     */
    offset?: number | undefined;
    /**
     * the publishing user; absent for backend publishes
     */
    from?: string | undefined;
    /**
     * RFC 3339, as the publisher said; absent where it set none
     */
    time?: string | undefined;
    /**
     * the payload, any JSON value
     */
    data: unknown;
    /**
     * the message named users (the list is not sent)
     */
    direct?: true | undefined;
};
/**
 * The first frame of every connection: the detail of a `welcome` event.
 */
export type WelcomeFrame = {
    op: "welcome";
    /**
     * this connection's id, for logs and support
     */
    conn: string;
    /**
     * the gateway's name
     */
    node: string;
    /**
     * the connection's user; "" when anonymous
     */
    user: string;
    /**
     * the newest offset in the log at connect (-1 while it is
     * empty); absent where the bus keeps no log
     */
    offset?: number | undefined;
};
/**
 * A replay after `since` is complete: the detail of a `resumed` event.
 */
export type ResumedFrame = {
    op: "resumed";
    /**
     * the `since` asked with
     */
    since: number;
    /**
     * the offset the replay reached
     */
    until: number;
    /**
     * present when it answers a `subscribe` with `since`
     */
    channel?: string | undefined;
};
/**
 * The `since` could not be honoured (history was lost): the detail of a `reset` event.
 * The page must reload its state from its own backend; live delivery follows.
 */
export type ResetFrame = {
    op: "reset";
    /**
     * the newest offset now
     */
    offset: number;
    /**
     * present when it answers a `subscribe` with `since`
     */
    channel?: string | undefined;
};
export type StateDetail = {
    state: HeraldState;
    /**
     * the close code that caused the change
     */
    code?: number | undefined;
    /**
     * the close reason
     */
    reason?: string | undefined;
    /**
     * ms until the next attempt (state "reconnecting")
     */
    delay?: number | undefined;
};
export type HeraldOptions = {
    /**
     * a JWT, sent as `?token=` at connect
     */
    token?: string | undefined;
    /**
     * gives a fresh token: called
     * before each reconnect, after a close with 1008 (the client reconnects only when the
     * token is new), and `refreshBefore` ms before the token's `exp`, when the new token is
     * sent with a `refresh` op
     */
    getToken?: (() => (string | Promise<string>)) | undefined;
    /**
     * channels to subscribe to at connect
     */
    channels?: Iterable<string> | undefined;
    /**
     * channels for which to get `join` and `leave`
     * events, as with `subscribe(channel, {presence: true})`. The connect URL cannot carry
     * the flag, so after each welcome the client sends a `subscribe` with `presence: true`
     * for these channels. A channel listed here and not in `channels` is subscribed to too.
     */
    presence?: Iterable<string> | undefined;
    /**
     * the last offset the page has already seen (e.g. kept across
     * reloads); by default the client starts from the newest offset at its first welcome
     */
    since?: number | undefined;
    /**
     * more query parameters for the connect URL
     */
    params?: Record<string, string> | undefined;
    /**
     * ceiling of the first reconnect delay, ms
     */
    backoffBase?: number | undefined;
    /**
     * the largest reconnect delay, ms
     */
    backoffCap?: number | undefined;
    /**
     * the smallest delay after close 4029, ms
     */
    rateLimitedDelay?: number | undefined;
    /**
     * a connection open this long resets the backoff, ms
     */
    stableAfter?: number | undefined;
    /**
     * how long before `exp` to refresh the token, ms
     */
    refreshBefore?: number | undefined;
    /**
     * source of jitter (tests)
     */
    random?: (() => number) | undefined;
    /**
     * the WebSocket constructor (tests, non-browser
     * runtimes); default globalThis.WebSocket
     */
    WebSocket?: {
        new (url: string | URL, protocols?: string | string[]): WebSocket;
        prototype: WebSocket;
        readonly CONNECTING: 0;
        readonly OPEN: 1;
        readonly CLOSING: 2;
        readonly CLOSED: 3;
    } | undefined;
    /**
     * `"sse"` to use Server-Sent Events (`/sse`,
     * with POSTs to `/api/client/` to send) from the start; by default WebSocket, with a
     * fall back to SSE after `sseFallbackAfter` failed opens
     */
    transport?: "websocket" | "sse" | undefined;
    /**
     * how many WebSocket opens in a row may fail (no
     * welcome) before the client falls back to SSE for good; 0 never falls back, nor does
     * a runtime without EventSource
     */
    sseFallbackAfter?: number | undefined;
    /**
     * the EventSource constructor (tests);
     * default globalThis.EventSource
     */
    EventSource?: {
        new (url: string | URL, eventSourceInitDict?: EventSourceInit): EventSource;
        prototype: EventSource;
        readonly CONNECTING: 0;
        readonly OPEN: 1;
        readonly CLOSED: 2;
    } | undefined;
    /**
     * the fetch function for the SSE transport's POSTs
     * (tests); default globalThis.fetch
     */
    fetch?: typeof fetch | undefined;
    /**
     * what relative URLs resolve against; default location.href
     */
    base?: string | undefined;
};
export type SubscribeOptions = {
    /**
     * also get the channel's `join` and `leave` events,
     * now and after every reconnect. Subscribing again without it stops them.
     */
    presence?: boolean | undefined;
};
export type History = {
    /**
     * the channel's recent messages the gateway held in memory,
     * oldest first (as `message` events carry them; they are not emitted as events)
     */
    messages: MessageFrame[];
    /**
     * false where the gateway's memory may not reach back to all
     * the messages asked for (the channel may have had older ones)
     */
    complete: boolean;
};
export type PresenceOptions = {
    /**
     * the most users to list, 1 to 1000 (the gateway's default is
     * 100)
     */
    limit?: number | undefined;
    /**
     * the `next` of a previous answer: the page after it
     */
    after?: string | undefined;
};
export type PresenceUser = {
    /**
     * the user id
     */
    user: string;
    /**
     * how many of the user's connections are subscribed
     */
    connections: number;
};
/**
 * Who is online on a channel, on all gateways.
 */
export type PresenceAnswer = {
    channel: string;
    /**
     * sorted by user id
     */
    users: PresenceUser[];
    /**
     * how many users are online on the channel in all
     */
    total: number;
    /**
     * all connections subscribed to it (users' and anonymous)
     */
    connections: number;
    /**
     * the connections without a user
     */
    anonymous: number;
    /**
     * present when more users follow: pass it as `after`
     */
    next: string | undefined;
};
/**
 * The detail of a `join` or `leave` event: users whose presence on the channel began
 * (join) or ended (leave) in the last interval, about a second.
 */
export type PresenceEvent = {
    channel: string;
    users: string[];
    /**
     * more users changed than are listed: ask `presence` again
     */
    more: boolean;
};
/**
 * The events a {@link Herald} dispatches, by type: each is a CustomEvent whose `detail`
 * is given here.
 */
export type HeraldEventMap = {
    /**
     * each message once, in order
     */
    message: CustomEvent<MessageFrame>;
    /**
     * the connection's state changed
     */
    state: CustomEvent<StateDetail>;
    /**
     * on every connect
     */
    welcome: CustomEvent<WelcomeFrame>;
    /**
     * after a replay
     */
    resumed: CustomEvent<ResumedFrame>;
    /**
     * history was lost: reload your state
     */
    reset: CustomEvent<ResetFrame>;
    /**
     * users came online on a channel
     */
    join: CustomEvent<PresenceEvent>;
    /**
     * users went offline on a channel
     */
    leave: CustomEvent<PresenceEvent>;
    /**
     * an error that no Promise answers
     */
    error: CustomEvent<HeraldError>;
};
export type Pending = {
    /**
     *   ("resubscribe": the client's own subscribe that asks for presence events of a channel
     *   subscribed to in the connect URL)
     */
    kind: "publish" | "subscribe" | "unsubscribe" | "refresh" | "presence" | "resubscribe";
    resolve: (v: any) => void;
    reject: (e: Error) => void;
    channel?: string | undefined;
    /**
     * a subscribe's history: how many recent messages to ask for
     */
    history?: number | undefined;
};
