/**
 * @sessiond/client: the browser client of sessiond (docs/PROTOCOL.md). One ES
 * module, no dependencies, no build step; it runs unchanged in browsers and in
 * Node 20, and sessiond serves this very file at `GET /v1/client.js`.
 *
 * Theory of operation
 * -------------------
 * A SessiondClient follows one session for one page load. `connect()` opens a
 * WebSocket under a connection ID of its own, `<prefix>.<attempt>`: the prefix
 * is made once per client, so a reload never reuses an ID (they are
 * single-use). The token goes in the `auth` frame, never in the URL; it comes
 * from the page's `getToken()`, asked on every connect, on `token_expiring`,
 * and after a 4401. The server's lifecycle (ACCEPTED ... PROCESSING_READY,
 * CLOSED) is shown as it goes, beside the client's own states:
 *
 *   disconnected  created, or put away with the page (pagehide)
 *   connecting    a socket on its way to PROCESSING_READY, or a wait before the next
 *   connected     live: the socket is in PROCESSING_READY
 *   closed        stopped for good, by close() or by the server; `closeReason` says why
 *
 * Every session event is delivered once, in position order: the client keeps
 * the last position delivered, drops anything at or below it, and on a hole
 * (a position past the next) closes the socket and resumes; every socket it
 * opens resumes with `after` = that position, so nothing is skipped or repeated.
 *
 * How a socket ended decides what comes next (closeVerdict): 4409 (superseded,
 * the page was opened again elsewhere) and 4403 (forbidden, kicked,
 * session_ended) stop; 4401 `token_expired` reconnects at once with a fresh
 * token, any other 4401 does too but a second one in a row stops; everything
 * else (1001, 1006, 1011, 1012, 1013, 4408, ...) reconnects after a backoff with
 * full jitter, longer after 4429.
 *
 * Messages carry a `message_id` idempotency key. They wait in an outbox until
 * their `MessageRecorded` event comes back; every new live socket sends the
 * outbox again, and the server records a repeated message_id once.
 *
 * Dead sockets: the server pings at the WebSocket layer, which browsers answer
 * but never show to a page, and a quiet session sends nothing, so silence is
 * not death. A reconnect adds a ConnectionAttached/Detached pair to the
 * session's history, so reconnecting on every quiet minute would fill it; by
 * default the client relies on close events and on the page's wake signals
 * (visibilitychange to visible, online, pageshow): a socket that is no longer
 * open, or any socket after `online` or a back/forward-cache restore, is
 * replaced at once, resuming with `after`. `idleTimeout` opts in to "no frame
 * for that long while live means dead", for sessions with steady traffic.
 *
 * Everything with an effect (the WebSocket class, timers, randomness, document
 * and window) can be passed in options, so tests need no network and no waiting.
 */

const ID = /^[A-Za-z0-9._:-]{1,128}$/;
const LIVE = "PROCESSING_READY";
const CLOSED_LIFECYCLE = "CLOSED";
const SOCKET_OPEN = 1;

/** The client's own states. */
export const ClientState = Object.freeze({
  DISCONNECTED: "disconnected",
  CONNECTING: "connecting",
  CONNECTED: "connected",
  CLOSED: "closed",
});
const { DISCONNECTED, CONNECTING, CONNECTED, CLOSED } = ClientState;

/** Thrown by a page's getToken: the user is signed out, stop for good. */
export class UnauthorizedError extends Error {
  constructor(message = "unauthorized") {
    super(message);
    this.name = "UnauthorizedError";
  }
}

/** A send() that can no longer happen: the client stopped first. */
export class ClientClosedError extends Error {
  constructor(reason) {
    super(`the client is closed (${reason})`);
    this.name = "ClientClosedError";
    this.reason = reason;
  }
}

/** A message the server refused (an `error` frame about it), or too large to send. */
export class MessageRefusedError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = "MessageRefusedError";
    this.code = code;
  }
}

/**
 * The wait before reconnect attempt `step` (0 for the first): full jitter,
 * uniform between `min` and `min + min * 2^step`, never above `max`
 * (the rule of the Centrifugo SDKs).
 */
export function backoff(step, min, max, random = Math.random) {
  const spread = Math.min(max, min * 2 ** Math.min(step, 31));
  return Math.min(max, min + random() * spread);
}

/**
 * What the end of a socket means: "stop" for good, "now" reconnect at once,
 * "later" reconnect after a backoff. `refusedBefore`: the previous socket
 * already ended in a 4401 that a fresh token did not cure.
 */
function closeVerdict(code, reason, refusedBefore) {
  if (code === 4409 || code === 4403) return "stop";
  if (code === 4401) {
    if (reason === "token_expired") return "now";
    if (reason === "auth_timeout") return "later";
    return refusedBefore ? "stop" : "now";
  }
  return "later";
}

export class SessiondClient extends EventTarget {
  #base;
  #sessionId;
  #getToken;
  #prefix;
  #WebSocket;
  #timers;
  #random;
  #document;
  #window;
  #config;

  #state = DISCONNECTED;
  #lifecycle = null;
  #connectionId = null;
  #position;
  #resumedFrom = null;
  #recovered = false;
  #reconnects = 0;
  #closeCode = null;
  #closeReason = "";
  #tokenExpiresAt = null;

  #attempt = 0; // sockets tried, in all: the suffix of the connection ID
  #failures = 0; // reconnects in a row that did not go live
  #refused = 0; // 4401s in a row other than token_expired
  #conn = null; // the current socket and what belongs to it
  #retry = null; // the timer of the next attempt
  #watchdog = null; // the connect or idle timer of the current socket
  #flushTimer = null;
  #suspended = false;
  #outbox = new Map(); // message_id -> unacknowledged message, in send order
  #unlisten = [];

  constructor(options) {
    super();
    const o = options ?? {};
    if (typeof o.getToken !== "function") {
      throw new TypeError("getToken must be a function returning a token or a Promise of one");
    }
    this.#base = baseUrl(o.url);
    this.#sessionId = checkId(o.sessionId, "sessionId");
    this.#prefix = checkId(o.connectionPrefix ?? `js-${randomHex(6)}`, "connectionPrefix");
    if (this.#prefix.length > 110) throw new TypeError("connectionPrefix is longer than 110");
    const after = o.after ?? 0;
    if (!Number.isSafeInteger(after) || after < 0) {
      throw new TypeError("after must be a position: an integer >= 0");
    }
    this.#position = after;
    this.#getToken = o.getToken;
    this.#WebSocket = o.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== "function") {
      throw new TypeError("no WebSocket class here: pass options.WebSocket (in Node 20, ws's)");
    }
    this.#timers = o.timers ?? {
      setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
      clearTimeout: (id) => globalThis.clearTimeout(id),
    };
    this.#random = o.random ?? Math.random;
    this.#document = o.document ?? globalThis.document;
    this.#window = o.window ?? globalThis.window;
    this.#config = {
      minDelay: o.minReconnectDelay ?? 500,
      maxDelay: o.maxReconnectDelay ?? 20_000,
      rateLimitedDelay: o.rateLimitedDelay ?? 10_000,
      maxReconnects: o.maxReconnectAttempts ?? Infinity,
      connectTimeout: o.connectTimeout ?? 20_000,
      idleTimeout: o.idleTimeout ?? 0,
      maxFrameBytes: o.maxFrameBytes ?? 1024 * 1024,
    };
  }

  get state() {
    return this.#state;
  }
  get lifecycle() {
    return this.#lifecycle;
  }
  get sessionId() {
    return this.#sessionId;
  }
  get connectionId() {
    return this.#connectionId;
  }
  get position() {
    return this.#position;
  }
  get resumedFrom() {
    return this.#resumedFrom;
  }
  get recovered() {
    return this.#recovered;
  }
  get reconnects() {
    return this.#reconnects;
  }
  get closeCode() {
    return this.#closeCode;
  }
  get closeReason() {
    return this.#closeReason;
  }
  get tokenExpiresAt() {
    return this.#tokenExpiresAt;
  }
  get unacknowledged() {
    return this.#outbox.size;
  }

  /** Start following the session (again, after closed); a no-op while under way. */
  connect() {
    if (this.#state === CONNECTING || this.#state === CONNECTED) return this;
    this.#suspended = false;
    this.#failures = 0;
    this.#refused = 0;
    this.#closeCode = null;
    this.#closeReason = "";
    this.#listenForWake();
    this.#open("connect", false);
    return this;
  }

  /** Stop for good: the socket is closed with 1000, unsent messages are rejected. */
  close() {
    if (this.#state !== CLOSED) this.#stop(1000, "client");
  }

  /**
   * Send a message (a `message` frame). It waits while the client is not live
   * and is sent again on every new socket until its MessageRecorded event
   * arrives; the promise resolves with that event.
   */
  send(content, options = {}) {
    if (typeof content !== "string") {
      return rejected(new TypeError("content must be a string"));
    }
    if (this.#state === CLOSED) return rejected(new ClientClosedError(this.#closeReason));
    const messageId = options.messageId ?? newId();
    if (typeof messageId !== "string" || !ID.test(messageId)) {
      return rejected(new TypeError(`messageId ${JSON.stringify(messageId)} is not a valid ID`));
    }
    const waiting = this.#outbox.get(messageId);
    if (waiting) return waiting.promise;
    const frame = { type: "message", role: options.role ?? "user", content };
    for (const key of ["model", "tokens", "metadata"]) {
      if (options[key] !== undefined) frame[key] = options[key];
    }
    Object.assign(frame, { message_id: messageId, ref: messageId });
    const text = JSON.stringify(frame);
    const size = new TextEncoder().encode(text).length;
    if (size > this.#config.maxFrameBytes) {
      const limit = this.#config.maxFrameBytes;
      return rejected(new MessageRefusedError("too_large", `${size} bytes; the limit is ${limit}`));
    }
    const message = { id: messageId, text, size, sent: false, tries: 0 };
    message.promise = new Promise((resolve, reject) => {
      Object.assign(message, { resolve, reject });
    });
    message.promise.catch(() => {}); // a page that ignores the promise gets no unhandled rejection
    this.#outbox.set(messageId, message);
    this.#flush();
    return message.promise;
  }

  // --- sockets ---------------------------------------------------------------------

  async #open(reason, reconnect = true) {
    this.#cancelTimers();
    const attempt = ++this.#attempt;
    if (reconnect) this.#reconnects += 1;
    this.#setState(CONNECTING, null);
    let token;
    try {
      token = await this.#getToken({ sessionId: this.#sessionId, reason });
      if (typeof token !== "string" || !token) throw new TypeError("getToken gave no token");
    } catch (error) {
      if (attempt === this.#attempt && this.#state === CONNECTING) this.#tokenFailed(error);
      return;
    }
    if (attempt !== this.#attempt || this.#state !== CONNECTING) return;
    const connectionId = `${this.#prefix}.${attempt}`;
    const after = this.#position;
    const url = new URL(`${this.#base}/v1/ws`);
    url.protocol = url.protocol.replace(/^http/, "ws");
    url.search = new URLSearchParams({
      session_id: this.#sessionId,
      connection_id: connectionId,
      after: String(after),
    }).toString();
    let ws;
    try {
      ws = new this.#WebSocket(url.href);
    } catch (error) {
      this.#emit("error", {
        code: "socket_failed",
        message: String(error?.message ?? error),
        error,
      });
      this.#reconnectLater();
      return;
    }
    const conn = {
      ws,
      connectionId,
      after,
      token,
      live: false,
      ending: null,
      refreshing: false,
      sentMessages: [], // the messages sent on this socket, for a 1009 to name
    };
    this.#conn = conn;
    this.#connectionId = connectionId;
    this.#armWatchdog(conn);
    ws.addEventListener("message", (e) => this.#conn === conn && this.#onFrame(conn, e.data));
    ws.addEventListener(
      "close",
      (e) => this.#conn === conn && this.#onClose(conn, e.code, e.reason),
    );
  }

  #onFrame(conn, data) {
    this.#armWatchdog(conn);
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      this.#emit("error", { code: "bad_frame", message: "a frame from the server is not JSON" });
      return;
    }
    switch (frame?.type) {
      case "welcome":
        this.#setState(this.#state, frame.state);
        this.#sendFrame(conn, { type: "auth", token: conn.token });
        conn.token = null;
        break;
      case "state":
        if (frame.state === LIVE) {
          this.#goLive(conn);
        } else {
          if (frame.state === CLOSED_LIFECYCLE) {
            conn.ending = { code: frame.code ?? null, reason: frame.reason ?? "" };
            this.#closeCode = conn.ending.code;
            this.#closeReason = conn.ending.reason;
          }
          this.#setState(this.#state, frame.state);
        }
        break;
      case "event":
        this.#deliver(frame.event);
        break;
      case "token":
        conn.refreshing = false;
        this.#tokenExpiresAt = frame.exp ?? null;
        break;
      case "token_expiring":
        this.#refresh(conn);
        break;
      case "error":
        this.#onServerError(frame);
        break;
      default: // a frame type of a later version: nothing to do with it
    }
  }

  #goLive(conn) {
    conn.live = true;
    this.#failures = 0;
    this.#refused = 0;
    this.#resumedFrom = conn.after;
    this.#recovered = conn.after > 0;
    this.#closeCode = null;
    this.#closeReason = "";
    this.#setState(CONNECTED, LIVE);
    this.#armWatchdog(conn);
    for (const message of this.#outbox.values()) message.sent = false;
    this.#flush();
  }

  #deliver(event) {
    const position = event?.position;
    if (!Number.isSafeInteger(position)) {
      this.#emit("error", { code: "bad_frame", message: "an event frame without a position" });
      return;
    }
    if (position <= this.#position) return;
    if (position > this.#position + 1) {
      const message = `position ${position} came after ${this.#position}; resuming from there`;
      this.#emit("error", { code: "gap", message });
      this.#abandon("gap");
      this.#reconnectLater();
      return;
    }
    this.#position = position;
    if (event.type === "MessageRecorded") this.#acknowledge(event);
    this.#emit("event", event);
  }

  #onClose(conn, code, closeReason) {
    this.#conn = null;
    this.#timers.clearTimeout(this.#watchdog);
    this.#watchdog = null;
    // The server's CLOSED frame says why best (a close frame's reason is cut short).
    const reason = conn.ending?.reason || closeReason || "";
    this.#closeCode = code;
    this.#closeReason = reason;
    if (code === 1009) this.#refuseTooLarge(conn);
    const verdict = closeVerdict(code, reason, this.#refused > 0);
    if (verdict === "stop") {
      this.#stop(code, reason);
    } else if (verdict === "now") {
      if (reason !== "token_expired") this.#refused += 1;
      this.#open("expired");
    } else {
      this.#reconnectLater(code === 4429 ? this.#config.rateLimitedDelay : 0);
    }
  }

  #reconnectLater(pause = 0) {
    if (this.#failures >= this.#config.maxReconnects) {
      this.#stop(this.#closeCode, "gave_up");
      return;
    }
    const { minDelay, maxDelay } = this.#config;
    const delay = pause + backoff(this.#failures, minDelay, maxDelay, this.#random);
    this.#failures += 1;
    this.#setState(CONNECTING, null);
    this.#timers.clearTimeout(this.#retry);
    this.#retry = this.#timers.setTimeout(() => {
      this.#retry = null;
      this.#open("connect");
    }, delay);
  }

  #armWatchdog(conn) {
    this.#timers.clearTimeout(this.#watchdog);
    this.#watchdog = null;
    const limit = conn.live ? this.#config.idleTimeout : this.#config.connectTimeout;
    if (!(limit > 0)) return;
    this.#watchdog = this.#timers.setTimeout(() => {
      if (this.#conn !== conn) return;
      const message = conn.live
        ? `no frame for ${limit} ms while live`
        : `not live within ${limit} ms of the last frame`;
      this.#emit("error", { code: "timeout", message });
      this.#abandon("timeout");
      this.#reconnectLater();
    }, limit);
  }

  /** Let go of the current socket: closed with 1000 if still open, its events ignored. */
  #abandon(reason) {
    const conn = this.#conn;
    this.#conn = null;
    this.#timers.clearTimeout(this.#watchdog);
    this.#watchdog = null;
    if (conn && conn.ws.readyState <= SOCKET_OPEN) {
      try {
        conn.ws.close(1000, reason);
      } catch {
        // Closing a socket that is going anyway: nothing to do.
      }
    }
  }

  #stop(code, reason) {
    this.#cancelTimers();
    this.#abandon(reason === "client" ? "normal" : reason);
    for (const undo of this.#unlisten.splice(0)) undo();
    this.#closeCode = code;
    this.#closeReason = reason;
    const outbox = [...this.#outbox.values()];
    this.#outbox.clear();
    for (const message of outbox) message.reject(new ClientClosedError(reason));
    this.#setState(CLOSED, this.#lifecycle === null ? null : CLOSED_LIFECYCLE);
    this.#emit("closed", { code, reason });
  }

  #cancelTimers() {
    for (const timer of [this.#retry, this.#watchdog, this.#flushTimer]) {
      this.#timers.clearTimeout(timer);
    }
    this.#retry = this.#watchdog = this.#flushTimer = null;
  }

  #sendFrame(conn, frame) {
    try {
      conn.ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
    } catch (error) {
      this.#emit("error", { code: "send_failed", message: String(error?.message ?? error), error });
    }
  }

  // --- tokens ----------------------------------------------------------------------

  #tokenFailed(error) {
    if (error instanceof UnauthorizedError) {
      this.#stop(null, "unauthorized");
      return;
    }
    this.#emit("error", {
      code: "token_unavailable",
      message: String(error?.message ?? error),
      error,
    });
    this.#reconnectLater();
  }

  async #refresh(conn) {
    if (conn.refreshing) return;
    conn.refreshing = true;
    let token;
    try {
      token = await this.#getToken({ sessionId: this.#sessionId, reason: "refresh" });
      if (typeof token !== "string" || !token) throw new TypeError("getToken gave no token");
    } catch (error) {
      conn.refreshing = false;
      if (error instanceof UnauthorizedError && this.#state !== CLOSED) {
        this.#stop(null, "unauthorized");
      } else if (this.#conn === conn) {
        // The server closes with 4401 token_expired at exp; that reconnect asks again.
        const message = String(error?.message ?? error);
        this.#emit("error", { code: "token_unavailable", message, error });
      }
      return;
    }
    if (this.#conn === conn) this.#sendFrame(conn, { type: "auth", token });
  }

  // --- messages --------------------------------------------------------------------

  #flush() {
    const conn = this.#conn;
    if (!conn?.live) return;
    for (const message of this.#outbox.values()) {
      if (message.sent) continue;
      message.sent = true;
      message.tries += 1;
      conn.sentMessages.push(message);
      this.#sendFrame(conn, message.text);
    }
  }

  /**
   * The server closed the socket 1009: a frame was over its limit, which may
   * be lower than this client's `maxFrameBytes`. The largest message sent on
   * that socket and not yet recorded is that frame: it is refused
   * (`too_large`), not sent again on every new socket.
   */
  #refuseTooLarge(conn) {
    let largest = null;
    for (const message of conn.sentMessages) {
      if (!this.#outbox.has(message.id)) continue;
      if (largest === null || message.size > largest.size) largest = message;
    }
    if (largest === null) return;
    this.#outbox.delete(largest.id);
    const detail = `${largest.size} bytes: over the server's frame limit (closed 1009)`;
    largest.reject(new MessageRefusedError("too_large", detail));
    this.#emit("error", { code: "too_large", message: detail, ref: largest.id });
  }

  #acknowledge(event) {
    const messageId = event.data?.message_id;
    const message = typeof messageId === "string" && this.#outbox.get(messageId);
    if (!message) return;
    this.#outbox.delete(messageId);
    message.resolve(event);
  }

  #onServerError(frame) {
    const detail = { code: frame.code, message: frame.message ?? "", ref: frame.ref ?? null };
    const message = typeof frame.ref === "string" ? this.#outbox.get(frame.ref) : undefined;
    if (message && (frame.code === "unavailable" || frame.code === "not_ready")) {
      // Not recorded, the socket stays: send it again after a while.
      message.sent = false;
      if (this.#flushTimer === null) {
        const { minDelay, maxDelay } = this.#config;
        const delay = backoff(message.tries - 1, minDelay, maxDelay, this.#random);
        this.#flushTimer = this.#timers.setTimeout(() => {
          this.#flushTimer = null;
          this.#flush();
        }, delay);
      }
    } else if (message) {
      this.#outbox.delete(frame.ref);
      message.reject(new MessageRefusedError(frame.code, detail.message));
    }
    this.#emit("error", detail);
  }

  // --- the page's sleep and wake -----------------------------------------------------

  #listenForWake() {
    if (this.#unlisten.length) return;
    const on = (target, type, handler) => {
      if (typeof target?.addEventListener !== "function") return;
      target.addEventListener(type, handler);
      this.#unlisten.push(() => target.removeEventListener(type, handler));
    };
    on(this.#document, "visibilitychange", () => {
      if (this.#document.visibilityState === "visible") this.#wake(false);
    });
    on(this.#window, "online", () => this.#wake(true));
    on(this.#window, "pageshow", (e) => this.#wake(Boolean(e.persisted)));
    on(this.#window, "pagehide", () => this.#suspend());
  }

  /** The page woke: replace a socket that died (or is presumed dead) now, resuming with after. */
  #wake(presumeDead) {
    if (this.#state === CLOSED) return;
    if (this.#state === DISCONNECTED) {
      if (this.#suspended) {
        this.#suspended = false;
        this.#open("connect");
      }
      return;
    }
    const conn = this.#conn;
    if (conn) {
      if (!presumeDead && conn.ws.readyState <= SOCKET_OPEN) return;
      this.#abandon("wake");
    } else if (this.#retry === null) {
      return; // between attempts only while getToken answers: that attempt goes on
    }
    this.#open("connect");
  }

  /** The page is put away (navigation, back/forward cache): close the socket cleanly. */
  #suspend() {
    if (this.#state === CLOSED || this.#state === DISCONNECTED) return;
    this.#cancelTimers();
    this.#abandon("pagehide");
    this.#suspended = true;
    this.#setState(DISCONNECTED, null);
  }

  // --- events to the page ------------------------------------------------------------

  #setState(state, lifecycle) {
    if (state === this.#state && lifecycle === this.#lifecycle) return;
    this.#state = state;
    this.#lifecycle = lifecycle;
    this.#emit("state", {
      state,
      lifecycle,
      connectionId: this.#connectionId,
      position: this.#position,
      recovered: this.#recovered,
      resumedFrom: this.#resumedFrom,
      code: this.#closeCode,
      reason: this.#closeReason,
    });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

// --- helpers -----------------------------------------------------------------------

function baseUrl(url) {
  if (url === undefined) {
    // Loaded from sessiond itself (GET /v1/client.js): that server is the default.
    const here = new URL("..", import.meta.url);
    if (here.protocol === "http:" || here.protocol === "https:")
      return here.href.replace(/\/+$/, "");
    throw new TypeError("url is required: the sessiond base URL, e.g. https://sessiond.example");
  }
  const parsed = new URL(String(url));
  if (!["http:", "https:", "ws:", "wss:"].includes(parsed.protocol)) {
    throw new TypeError(`url ${JSON.stringify(url)} is not http(s) or ws(s)`);
  }
  return parsed.href.replace(/\/+$/, "");
}

function checkId(value, name) {
  if (typeof value !== "string" || !ID.test(value)) {
    throw new TypeError(`${name} must be 1 to 128 characters of [A-Za-z0-9._:-]`);
  }
  return value;
}

function randomHex(bytes) {
  const values = globalThis.crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(values, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A random UUID; crypto.randomUUID exists only in secure contexts (https, localhost). */
function newId() {
  if (typeof globalThis.crypto.randomUUID === "function") return globalThis.crypto.randomUUID();
  const h = randomHex(16);
  const variant = ((parseInt(h[16], 16) & 0x3) | 0x8).toString(16);
  const parts = [h.slice(0, 8), h.slice(8, 12), `4${h.slice(13, 16)}`, variant + h.slice(17, 20)];
  return [...parts, h.slice(20)].join("-");
}

function rejected(error) {
  const promise = Promise.reject(error);
  promise.catch(() => {});
  return promise;
}
