// Session events as people read them, and the session view they fold into
// (the same folds as projections/sessions.py, so a live page agrees with
// GET /v1/sessions/{id} at every position).

import { connectionLink, h } from "./dom.js";

const short = (text, max = 140) => {
  const s = String(text ?? "");
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
};
const json = (value) => short(JSON.stringify(value), 80);
const of = (done, total) =>
  total == null ? `${done}` : `${done} / ${total} · ${total > 0 ? Math.floor((100 * done) / total) : 0}%`;
const task = (data) => h("code", { class: "id" }, data.task_id);

/** One line of the timeline: what happened, in words (`view`: the session, for a task's total). */
export function describe(event, view) {
  const d = event.data ?? {};
  const total = d.total ?? view?.tasks?.find((t) => t.task_id === d.task_id)?.total;
  switch (event.type) {
    case "SessionCreated":
      return ["created by ", h("b", {}, d.owner), Object.keys(d.metadata ?? {}).length ? ` · ${json(d.metadata)}` : ""];
    case "MessageRecorded":
      return [h("b", {}, d.role ?? "user"), ": ", h("q", {}, short(d.content)), d.model ? ` · ${d.model}` : "", d.tokens != null ? ` · ${d.tokens} tokens` : ""];
    case "TaskStarted":
      return ["task ", task(d), " ", h("b", {}, d.name), d.total != null ? ` · total ${d.total}` : ""];
    case "TaskProgressed":
      return [task(d), ` ${of(d.done, total)}`, d.note ? ` · ${short(d.note, 80)}` : ""];
    case "TaskCompleted":
      return [task(d), " completed", d.result != null ? ` · ${json(d.result)}` : ""];
    case "TaskFailed":
      return [task(d), " failed: ", h("span", { class: "bad" }, short(d.error))];
    case "ConnectionAttached":
      return [connectionLink(d.connection_id), ` attached · ${d.user_id ?? "?"} on ${d.node ?? "?"}`];
    case "ConnectionDetached":
      return [
        connectionLink(d.connection_id),
        ` detached · ${d.reason ?? "?"}`,
        d.superseded_by ? [" by ", connectionLink(d.superseded_by)] : "",
      ];
    case "SessionEnded":
      return ["ended by ", h("b", {}, d.user_id ?? "?")];
    default:
      return Object.entries(d).map(([k, v]) => `${k}=${typeof v === "object" ? json(v) : v} `);
  }
}

/** The kind of an event, for its colour in the timeline. */
export function kind(type) {
  if (type.startsWith("Task")) return type === "TaskFailed" ? "bad" : "task";
  if (type.startsWith("Connection")) return "connection";
  if (type === "MessageRecorded") return "message";
  return "session";
}

// --- the session view, folded ------------------------------------------------------

function onTask(view, data, change) {
  view.tasks = view.tasks.map((t) => (t.task_id === data.task_id ? change({ ...t }) : t));
}

const FOLDS = {
  MessageRecorded: (view) => {
    view.message_count += 1;
  },
  TaskStarted: (view, d) => {
    view.tasks = [...view.tasks, { task_id: d.task_id, name: d.name, state: "RUNNING", done: 0, total: d.total ?? null, note: null, result: null, error: null }];
  },
  TaskProgressed: (view, d) =>
    onTask(view, d, (t) => ({ ...t, done: d.done, total: d.total ?? t.total, note: d.note ?? t.note })),
  TaskCompleted: (view, d) =>
    onTask(view, d, (t) => ({ ...t, state: "COMPLETED", result: d.result ?? null, done: t.total ?? t.done })),
  TaskFailed: (view, d) => onTask(view, d, (t) => ({ ...t, state: "FAILED", error: d.error ?? null })),
  ConnectionAttached: (view, d) => {
    view.connections = [...view.connections, d.connection_id];
  },
  ConnectionDetached: (view, d) => {
    view.connections = view.connections.filter((c) => c !== d.connection_id);
  },
  SessionEnded: (view) => {
    view.state = "ENDED";
  },
};

/** The view after `event`; events at or before the view's position change nothing. */
export function fold(view, event) {
  if (event.position <= view.position) return view;
  const next = { ...view, position: event.position, updated_at: event.at };
  FOLDS[event.type]?.(next, event.data ?? {});
  return next;
}

// --- connections ---------------------------------------------------------------------

const CLOSE_MEANINGS = {
  1000: "closed normally",
  1001: "going away (server shutdown or page left)",
  1002: "protocol error",
  1006: "lost (the node died or the network dropped)",
  1007: "invalid UTF-8",
  1009: "frame too large",
  1011: "internal error",
  1012: "service restart",
  1013: "try again later (the store is down)",
  4400: "protocol error (repeated bad frames)",
  4401: "unauthenticated",
  4403: "forbidden",
  4408: "slow consumer",
  4409: "superseded by a newer connection",
  4429: "rate limited",
};

export function closeMeaning(code) {
  return CLOSE_MEANINGS[code] ?? "";
}

/** What a connection lifecycle event adds to its state's name. */
export function lifecycleDetail(event) {
  const d = event.data?.details ?? {};
  switch (event.type) {
    case "CONNECTING":
      return `on ${event.data?.node ?? "?"} for session ${event.data?.session_id ?? "?"}${event.data?.proposed ? " · ID proposed by the client" : ""}`;
    case "AUTHENTICATED":
      return `as ${d.user_id ?? "?"}${d.roles ? ` (${d.roles.join(", ")})` : ""}${d.exp ? ` · token until ${new Date(d.exp * 1000).toLocaleTimeString()}` : ""}`;
    case "SERVICES_READY":
      return d.superseded?.length ? `superseded ${d.superseded.join(", ")}` : "attached to the session";
    case "PROCESSING_READY":
      return `live · backlog sent up to position ${d.position ?? "?"}`;
    case "TokenRefreshed": {
      // A refresh is not a transition: its exp is in the event's data itself.
      const exp = event.data?.exp ?? d.exp;
      return exp ? `token until ${new Date(exp * 1000).toLocaleTimeString()}` : "token refreshed";
    }
    case "CLOSED":
      return (
        `${d.code ?? "?"} ${d.reason ?? ""}${closeMeaning(d.code) ? ` · ${closeMeaning(d.code)}` : ""}` +
        (d.said ? ` · the client said ${JSON.stringify(d.said)}` : "")
      );
    default:
      return "";
  }
}
