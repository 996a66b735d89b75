// One session, live: its tasks with a progress bar each, its connections and
// their states, and its timeline (the latest events first, then live through
// GET /v1/sessions/{id}/stream; a watcher records nothing).

import { paths } from "./api.js";
import { connectionRow } from "./connection.js";
import { ago, badge, card, clock, emptyState, h, idText, replace } from "./dom.js";
import { describe, fold, kind } from "./events.js";
import { follow } from "./stream.js";

const BACKLOG = 200; // events shown at first; older ones on request
const REFRESH_MS = 3000; // a live connection's state moves without a session event
const CONNECTIONS_SHOWN = 12;

function progressBar(task) {
  const max = task.total ?? null;
  const percent = max ? Math.min(100, (100 * task.done) / max) : null;
  const bar = h("div", { class: "bar" });
  if (percent != null) bar.style.width = `${percent}%`;
  return h(
    "div",
    {
      class: `progress ${task.state.toLowerCase()}${percent == null ? " unknown" : ""}`,
      role: "progressbar",
      "aria-label": `${task.name} progress`,
      "aria-valuemin": 0,
      "aria-valuemax": max ?? undefined,
      "aria-valuenow": task.done,
    },
    bar,
  );
}

function taskRow(task) {
  const max = task.total ?? null;
  const amount = max ? `${task.done} / ${max} · ${Math.floor((100 * task.done) / max)}%` : `${task.done}`;
  return h(
    "li",
    { class: "task", "data-task-id": task.task_id },
    h("div", { class: "task-head" }, h("b", {}, task.name), idText(task.task_id), badge(task.state), h("span", { class: "amount" }, amount)),
    progressBar(task),
    task.note && h("div", { class: "muted small" }, task.note),
    task.error && h("div", { class: "bad small" }, task.error),
  );
}

function timelineItem(event, view) {
  return h(
    "li",
    { class: `kind-${kind(event.type)}`, "data-position": event.position },
    h("time", { datetime: event.at, title: new Date(event.at).toLocaleString() }, clock(event.at)),
    h("span", { class: "pos" }, `#${event.position}`),
    h("span", { class: "type" }, event.type),
    h("span", { class: "text" }, describe(event, view)),
  );
}

export function sessionPage({ api, claims, signal, problem }, sessionId) {
  const head = h("div", { class: "page-head" }, h("h1", {}, "Session ", idText(sessionId)));
  const meta = h("div", { class: "meta" });
  const live = h("span", { class: "chip" }, "connecting…");
  const liveProblem = h("div");
  const tasks = h("ul", { class: "tasks" });
  const connections = h("ul", { class: "connections" });
  const timeline = h("ol", { class: "timeline", id: "timeline", reversed: true });
  const earlier = h("button", { type: "button", hidden: true }, "Show earlier events");
  const page = h(
    "div",
    {},
    head,
    meta,
    liveProblem,
    h("div", { class: "columns" }, card("Tasks", tasks), card("Connections", connections)),
    card(h("span", {}, "Timeline ", live), timeline, h("div", { class: "actions" }, earlier)),
  );
  let view = null;
  let first = null; // the oldest position shown
  let olderConnections = 0; // named in the timeline, not fetched
  const known = new Map(); // connection ID -> its view, or null while it loads

  function renderMeta() {
    replace(head, h("h1", {}, "Session ", idText(sessionId)), badge(view.state));
    replace(
      meta,
      h("span", {}, "owner ", h("b", {}, view.owner)),
      h("span", {}, "created ", ago(view.created_at)),
      h("span", {}, "updated ", ago(view.updated_at)),
      h("span", {}, `${view.position} events`),
      h("span", {}, `${view.message_count} messages`),
      view.metadata?.title && h("span", {}, view.metadata.title),
    );
  }

  function renderTasks() {
    replace(tasks, view.tasks.length ? view.tasks.map(taskRow) : emptyState("No tasks", "A worker starts one with POST /v1/sessions/{id}/tasks."));
  }

  function renderConnections() {
    const rows = [...known.entries()]
      .map(([id, c]) => c ?? { connection_id: id, state: view.connections.includes(id) ? "…" : "CLOSED" })
      .sort((a, b) => (b.state !== "CLOSED") - (a.state !== "CLOSED") || String(b.opened_at).localeCompare(String(a.opened_at)));
    const options = { api, claims, owner: view.owner, signal, problem, refresh: (id) => loadConnection(id) };
    replace(
      connections,
      rows.length ? rows.slice(0, CONNECTIONS_SHOWN).map((c) => connectionRow(c, options)) : emptyState("No connections", "None has attached to this session yet."),
      rows.length + olderConnections > CONNECTIONS_SHOWN &&
        h("li", { class: "muted small" }, `${rows.length + olderConnections - CONNECTIONS_SHOWN} older in the timeline`),
    );
  }

  async function loadConnection(id) {
    if (!known.has(id)) known.set(id, null);
    try {
      known.set(id, await api.get(paths.connection(id), { signal }));
    } catch (error) {
      if (error.name === "AbortError") return;
      known.set(id, { connection_id: id, state: "unknown", error: error.message });
    }
    renderConnections();
  }

  let backlogConnections = null; // while the backlog is read: the IDs it names, oldest first

  function noteConnection(event) {
    const id = event.data?.connection_id;
    if (!event.type.startsWith("Connection") || !id) return;
    if (backlogConnections) backlogConnections.push(id);
    else loadConnection(id);
  }

  /** The backlog's connections: only the live ones and the latest few are fetched. */
  function loadBacklogConnections() {
    const ids = [...new Set(backlogConnections.toReversed())];
    const wanted = new Set([...view.connections, ...ids.slice(0, CONNECTIONS_SHOWN)]);
    olderConnections = ids.filter((id) => !wanted.has(id)).length;
    backlogConnections = null;
    for (const id of wanted) loadConnection(id);
  }

  function show(event) {
    view = fold(view, event);
    timeline.prepend(timelineItem(event, view));
    first = first ?? event.position;
    noteConnection(event);
  }

  function onEvent(event) {
    show(event);
    renderMeta();
    if (event.type.startsWith("Task")) renderTasks();
  }

  function onStatus({ state, error }) {
    const words = { connecting: "connecting…", live: "live", retrying: "reconnecting…", ended: "ended", stopped: "stopped" };
    replace(live, words[state]);
    live.className = `chip stream-${state}`;
    replace(
      liveProblem,
      error &&
        problem({
          status: error.status,
          code: error.code,
          message: error.message,
          title: state === "stopped" ? "Live updates stopped" : "Live updates interrupted, retrying",
        }),
    );
  }

  async function showEarlier() {
    earlier.disabled = true;
    try {
      const after = Math.max(0, first - 1 - BACKLOG);
      const pathOf = (from, limit) => paths.sessionEvents(sessionId, from, limit);
      const older = await api.events(pathOf, after, { signal }, first - 1);
      older.toReversed().forEach((event) => timeline.append(timelineItem(event, view)));
      first = older.length ? older[0].position : first;
      earlier.hidden = first <= 1;
    } catch (error) {
      if (error.name !== "AbortError") replace(liveProblem, problem(error));
    } finally {
      earlier.disabled = false;
    }
  }

  async function start() {
    try {
      view = await api.get(paths.session(sessionId), { signal });
      const after = Math.max(0, view.position - BACKLOG);
      const backlog = (await api.get(paths.sessionEvents(sessionId, after, BACKLOG), { signal })).events;
      backlogConnections = [];
      backlog.forEach(show);
      loadBacklogConnections();
      first = backlog.length ? backlog[0].position : view.position + 1;
      earlier.hidden = first <= 1;
      renderMeta();
      renderTasks();
      renderConnections();
      const last = backlog.length ? backlog.at(-1).position : view.position;
      await follow(api, paths.stream, sessionId, last, { onEvent, onStatus, signal });
    } catch (error) {
      if (error.name !== "AbortError") replace(page, head, problem(error));
    }
  }

  function refreshLive() {
    for (const [id, c] of known) if (c && c.state !== "CLOSED") loadConnection(id);
  }

  earlier.addEventListener("click", showEarlier);
  const timer = setInterval(refreshLive, REFRESH_MS);
  signal.addEventListener("abort", () => clearInterval(timer));
  start();
  return page;
}
