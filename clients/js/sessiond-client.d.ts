// TypeScript declarations of @sessiond/client (sessiond-client.js).

/** The client's own states. */
export type ClientStateName = "disconnected" | "connecting" | "connected" | "closed";

export declare const ClientState: Readonly<{
  DISCONNECTED: "disconnected";
  CONNECTING: "connecting";
  CONNECTED: "connected";
  CLOSED: "closed";
}>;

/** The server's lifecycle of one connection (docs/PROTOCOL.md), as its frames announce it. */
export type LifecycleState =
  "ACCEPTED" | "AUTHENTICATED" | "SERVICES_READY" | "PROCESSING_READY" | "CLOSED" | (string & {});

/** A session event, the same object over HTTP and WebSocket. */
export interface SessionEvent {
  session_id: string;
  position: number;
  type: string;
  at: string;
  data: Record<string, unknown>;
}

export interface GetTokenContext {
  sessionId: string;
  /**
   * "connect": a new socket; "refresh": the server sent token_expiring;
   * "expired": the server closed with 4401, so the last token will not do.
   */
  reason: "connect" | "refresh" | "expired";
}

export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(id: unknown): void;
}

export interface SessiondClientOptions {
  /** sessiond's base URL (http, https, ws or wss). Default: the server that served this module. */
  url?: string;
  sessionId: string;
  /** Asked on every connect, on token_expiring and after 4401. Throw UnauthorizedError to stop. */
  getToken(context: GetTokenContext): string | Promise<string>;
  /** The last position the page already has (default 0: everything). */
  after?: number;
  /** Connection IDs are `<prefix>.<attempt>`; default `js-` and 12 random hex digits. */
  connectionPrefix?: string;
  /** Backoff between reconnects, in ms (defaults 500 and 20000). */
  minReconnectDelay?: number;
  maxReconnectDelay?: number;
  /** Added to the backoff after a 4429 rate-limited close, in ms (default 10000). */
  rateLimitedDelay?: number;
  /** Reconnects in a row that do not go live before giving up (default Infinity). */
  maxReconnectAttempts?: number;
  /** A socket silent this long before PROCESSING_READY is replaced, in ms (default 20000). */
  connectTimeout?: number;
  /** A live socket that sends nothing for this long is replaced, in ms (default 0: never). */
  idleTimeout?: number;
  /** Larger messages are refused by send() (default 1 MiB, the server's default). */
  maxFrameBytes?: number;
  /** For tests and for Node 20 (e.g. the ws package's class). Default: globalThis.WebSocket. */
  WebSocket?: new (url: string) => WebSocket;
  timers?: Timers;
  random?: () => number;
  /** Where visibilitychange is heard. Default: globalThis.document. */
  document?: EventTarget & { visibilityState?: string };
  /** Where online, pageshow and pagehide are heard. Default: globalThis.window. */
  window?: EventTarget;
}

export interface StateDetail {
  state: ClientStateName;
  lifecycle: LifecycleState | null;
  connectionId: string | null;
  position: number;
  /** The live socket resumed from a position (after > 0): nothing before it was sent again. */
  recovered: boolean;
  /** The `after` the current (or last) live socket was opened with. */
  resumedFrom: number | null;
  /** How the last socket ended, while the client is not live. */
  code: number | null;
  reason: string;
}

export interface ErrorDetail {
  /**
   * A server error frame's code, or the client's own: token_unavailable, gap,
   * timeout, bad_frame, socket_failed, send_failed.
   */
  code: string;
  message: string;
  ref?: string | null;
  error?: unknown;
}

export interface ClosedDetail {
  /** The close code that stopped it, or null (getToken's UnauthorizedError). */
  code: number | null;
  /** "client" (close()), "unauthorized", "gave_up", or the server's ("superseded", ...). */
  reason: string;
}

export interface SendOptions {
  role?: "user" | "assistant" | "system";
  /** The idempotency key; default a random UUID. */
  messageId?: string;
  model?: string;
  tokens?: number;
  metadata?: Record<string, unknown>;
}

export interface SessiondClientEventMap {
  state: CustomEvent<StateDetail>;
  event: CustomEvent<SessionEvent>;
  error: CustomEvent<ErrorDetail>;
  closed: CustomEvent<ClosedDetail>;
}

export declare class SessiondClient extends EventTarget {
  constructor(options: SessiondClientOptions);
  readonly state: ClientStateName;
  readonly lifecycle: LifecycleState | null;
  readonly sessionId: string;
  readonly connectionId: string | null;
  /** The last position delivered. */
  readonly position: number;
  readonly resumedFrom: number | null;
  readonly recovered: boolean;
  readonly reconnects: number;
  readonly closeCode: number | null;
  readonly closeReason: string;
  /** The `exp` (Unix seconds) of the last `token` frame. */
  readonly tokenExpiresAt: number | null;
  /** Messages sent and not yet seen recorded. */
  readonly unacknowledged: number;
  connect(): this;
  close(): void;
  /** Resolves with the message's MessageRecorded event. */
  send(content: string, options?: SendOptions): Promise<SessionEvent>;

  addEventListener<K extends keyof SessiondClientEventMap>(
    type: K,
    listener: (event: SessiondClientEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof SessiondClientEventMap>(
    type: K,
    listener: (event: SessiondClientEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

export declare class UnauthorizedError extends Error {
  constructor(message?: string);
}

export declare class ClientClosedError extends Error {
  constructor(reason: string);
  readonly reason: string;
}

export declare class MessageRefusedError extends Error {
  constructor(code: string, message: string);
  readonly code: string;
}

/** The wait before reconnect `step`, in ms: uniform in [min, min + min * 2^step], at most max. */
export declare function backoff(
  step: number,
  min: number,
  max: number,
  random?: () => number,
): number;
