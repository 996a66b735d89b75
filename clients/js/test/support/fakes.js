// Fakes for the unit tests: a clock whose time moves only when a test says so,
// a WebSocket class that talks to an in-memory sessiond (FakeSessiond) which
// follows docs/PROTOCOL.md closely enough to drive the client, and a page
// (document and window) whose wake signals a test fires by hand.

import { SessiondClient } from "../../sessiond-client.js";

/** Let every pending promise and microtask run (getToken is awaited). */
export async function settle() {
  for (let i = 0; i < 5; i += 1) await new Promise((resolve) => setImmediate(resolve));
}

export class FakeClock {
  now = 0;
  #timers = new Map();
  #next = 1;

  setTimeout = (fn, ms) => {
    const id = this.#next++;
    this.#timers.set(id, { at: this.now + ms, ms, fn });
    return id;
  };

  clearTimeout = (id) => {
    this.#timers.delete(id);
  };

  /** The delays of the timers still waiting, in the order they were set. */
  get pending() {
    return [...this.#timers.values()].map((t) => t.ms);
  }

  /** Move time on by `ms`, running each timer that falls due, in time order. */
  async advance(ms) {
    const until = this.now + ms;
    for (;;) {
      const due = [...this.#timers.entries()]
        .filter(([, t]) => t.at <= until)
        .sort(([, a], [, b]) => a.at - b.at)[0];
      if (!due) break;
      const [id, timer] = due;
      this.#timers.delete(id);
      this.now = timer.at;
      timer.fn();
      await settle();
    }
    this.now = until;
  }
}

class FakeSocket extends EventTarget {
  readyState = 0;
  sent = [];
  closedWith = null; // {code, reason} when the client closed it
  holdClose = false; // true: the client's close never completes (a peer that went silent)
  live = false;

  constructor(url, server) {
    super();
    this.url = new URL(url);
    this.server = server;
    this.connectionId = this.url.searchParams.get("connection_id");
    this.after = Number(this.url.searchParams.get("after"));
    server.sockets.push(this);
    queueMicrotask(() => server.opened(this));
  }

  send(text) {
    if (this.readyState !== 1) throw new Error(`send in readyState ${this.readyState}`);
    const frame = JSON.parse(text);
    this.sent.push(frame);
    if (this.server.answers) this.server.received(this, frame);
  }

  close(code = 1000, reason = "") {
    if (this.readyState >= 2) return;
    this.readyState = 2;
    this.closedWith = { code, reason };
    if (!this.holdClose) queueMicrotask(() => this.ended(code, reason));
  }

  // --- the server's side ---

  frame(frame) {
    const event = new Event("message");
    event.data = JSON.stringify(frame);
    this.dispatchEvent(event);
  }

  ended(code, reason = "") {
    if (this.done) return;
    this.done = true;
    this.readyState = 3;
    this.live = false;
    const event = new Event("close");
    Object.assign(event, { code, reason, wasClean: code !== 1006 });
    this.dispatchEvent(event);
  }
}

export class FakeSessiond {
  events = []; // the session's events, position = index + 1
  sockets = []; // every socket a client opened, in order
  tokens = []; // every token received in an auth frame
  answers = true; // false: a socket opens and hears nothing (a server that hangs)
  accept = () => true; // is this token good?
  expiresAt = 2_000_000_000;

  constructor(sessionId = "session-1") {
    this.sessionId = sessionId;
    const server = this;
    this.WebSocket = class extends FakeSocket {
      constructor(url) {
        super(url, server);
      }
    };
  }

  get last() {
    return this.sockets.at(-1);
  }

  record(type, data = {}) {
    const event = {
      session_id: this.sessionId,
      position: this.events.length + 1,
      type,
      at: "2026-11-22T06:37:37.123456Z",
      data,
    };
    this.events.push(event);
    for (const socket of this.sockets) {
      if (socket.live) socket.frame({ type: "event", event });
    }
    return event;
  }

  opened(socket) {
    if (!this.answers) return;
    socket.readyState = 1;
    socket.dispatchEvent(new Event("open"));
    const state = "ACCEPTED";
    socket.frame({
      type: "welcome",
      connection_id: socket.connectionId,
      session_id: this.sessionId,
      state,
    });
  }

  received(socket, frame) {
    if (frame.type === "auth") {
      this.tokens.push(frame.token);
      if (socket.live) {
        socket.frame({ type: "token", exp: this.expiresAt });
      } else if (this.accept(frame.token)) {
        this.#handshake(socket);
      } else {
        this.end(socket, 4401, "unauthenticated: bad token");
      }
    } else if (frame.type === "message") {
      if (socket.live) {
        this.recordMessage(frame, socket.connectionId);
      } else {
        socket.frame({ type: "error", code: "not_ready", message: "not live", ref: frame.ref });
      }
    }
  }

  /** A message frame recorded: a message_id already recorded records nothing. */
  recordMessage(frame, connectionId) {
    const { role, content, message_id } = frame;
    const seen = this.events.some(
      (e) => e.type === "MessageRecorded" && e.data.message_id === message_id,
    );
    if (!seen)
      this.record("MessageRecorded", { role, content, message_id, connection_id: connectionId });
  }

  #handshake(socket) {
    const id = socket.connectionId;
    socket.frame({ type: "state", connection_id: id, state: "AUTHENTICATED", user_id: "alice" });
    // A page reload supersedes the older socket of the session.
    for (const other of this.sockets) {
      if (other !== socket && other.readyState === 1) this.end(other, 4409, "superseded");
    }
    socket.frame({
      type: "state",
      connection_id: id,
      state: "SERVICES_READY",
      session_id: this.sessionId,
    });
    for (const event of this.events.slice(socket.after)) socket.frame({ type: "event", event });
    socket.live = true;
    const position = this.events.length;
    socket.frame({
      type: "state",
      connection_id: id,
      state: "PROCESSING_READY",
      session_id: this.sessionId,
      position,
    });
  }

  /** The server ends a socket: a CLOSED state frame, then the close. */
  end(socket, code, reason) {
    socket.live = false;
    socket.frame({
      type: "state",
      connection_id: socket.connectionId,
      state: "CLOSED",
      code,
      reason,
    });
    socket.ended(code, reason);
  }
}

/** A page's document and window: fire their events by hand. */
export class FakePage {
  document = Object.assign(new EventTarget(), { visibilityState: "visible" });
  window = new EventTarget();

  hide() {
    this.document.visibilityState = "hidden";
    this.document.dispatchEvent(new Event("visibilitychange"));
  }

  show() {
    this.document.visibilityState = "visible";
    this.document.dispatchEvent(new Event("visibilitychange"));
  }

  fire(type, extra = {}) {
    this.window.dispatchEvent(Object.assign(new Event(type), extra));
  }
}

/** A client on a fake server with nothing else faked: real timers, no page. */
export function plainClient(server, options = {}) {
  return new SessiondClient({
    url: "http://127.0.0.1:8080",
    sessionId: server.sessionId,
    getToken: () => "t",
    WebSocket: server.WebSocket,
    ...options,
  });
}

/** A client wired to fakes, recording what it tells the page. */
export function makeClient(options = {}) {
  const server = options.server ?? new FakeSessiond();
  const clock = new FakeClock();
  const page = new FakePage();
  const asked = []; // each getToken context
  const client = new SessiondClient({
    url: "http://127.0.0.1:8080",
    sessionId: server.sessionId,
    connectionPrefix: "tab",
    getToken: async (context) => {
      asked.push(context);
      return `token-${asked.length}`;
    },
    WebSocket: server.WebSocket,
    timers: clock,
    random: () => 0.5,
    document: page.document,
    window: page.window,
    ...options.client,
  });
  const seen = { events: [], states: [], errors: [], closed: [] };
  client.addEventListener("event", (e) => seen.events.push(e.detail));
  client.addEventListener("state", (e) => seen.states.push(e.detail));
  client.addEventListener("error", (e) => seen.errors.push(e.detail));
  client.addEventListener("closed", (e) => seen.closed.push(e.detail));
  const positions = () => seen.events.map((e) => e.position);
  return { client, server, clock, page, asked, seen, positions };
}
