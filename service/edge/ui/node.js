// The node serving this page (GET /v1/node, for service and auditor tokens):
// its sockets by state, what it has appended, the store's head and how far
// each projection trails it. Refreshed every few seconds.

import { paths } from "./api.js";
import { card, dateTime, duration, emptyState, h, replace } from "./dom.js";

const REFRESH_MS = 2000;
const STATES = ["CONNECTING", "ACCEPTED", "AUTHENTICATED", "SERVICES_READY", "PROCESSING_READY"];

const first = (object, ...keys) => keys.map((k) => object[k]).find((v) => v !== undefined);
const number = (value) => (typeof value === "number" ? value.toLocaleString("en") : String(value ?? "—"));

function stat(label, value, hint) {
  return h("div", { class: "stat" }, h("div", { class: "stat-value" }, value), h("div", { class: "stat-label" }, label), hint && h("div", { class: "muted small" }, hint));
}

/** Projections as rows {name, position, lag}, from a list or an object keyed by name. */
function projectionRows(projections) {
  if (Array.isArray(projections)) return projections;
  return Object.entries(projections ?? {}).map(([name, p]) => (typeof p === "object" ? { name, ...p } : { name, position: p }));
}

function byState(connections) {
  const counts = connections ?? {};
  const states = [...STATES, ...Object.keys(counts).filter((s) => !STATES.includes(s))];
  const total = Object.values(counts).reduce((a, b) => a + (Number(b) || 0), 0);
  return h(
    "table",
    { class: "grid compact", id: "connections-by-state" },
    h("tbody", {}, states.map((s) => h("tr", { "data-state": s }, h("th", { scope: "row" }, s), h("td", { class: "num" }, number(counts[s] ?? 0)))),
      h("tr", { class: "total" }, h("th", { scope: "row" }, "live in all"), h("td", { class: "num" }, number(total)))),
  );
}

function render(node) {
  const store = typeof node.store === "object" && node.store ? node.store : { kind: node.store };
  const head = first(node, "store_head", "head") ?? store.head;
  const uptime = first(node, "uptime_seconds", "uptime");
  const rows = projectionRows(node.projections);
  return [
    h(
      "div",
      { class: "stats" },
      stat("node", h("span", {}, node.node ?? node.name ?? "?")),
      stat("store", store.kind ?? "?"),
      stat("uptime", typeof uptime === "number" ? duration(uptime * 1000) : String(uptime ?? "—"), node.started_at && `since ${dateTime(node.started_at)}`),
      stat("events appended", number(first(node, "events_appended", "appended")), "by this node since it started"),
      stat("store head", number(head), "the log's last position"),
      node.watchers !== undefined && stat("stream watchers", number(node.watchers), "following a session over SSE"),
    ),
    h(
      "div",
      { class: "columns" },
      card("Live connections by state", byState(first(node, "connections", "connections_by_state"))),
      card(
        "Projections",
        rows.length
          ? h(
              "table",
              { class: "grid compact", id: "projections" },
              h("thead", {}, h("tr", {}, h("th", {}, "projection"), h("th", { class: "num" }, "position"), h("th", { class: "num" }, "lag"))),
              h("tbody", {}, rows.map((p) => h("tr", { "data-projection": p.name }, h("td", {}, p.name), h("td", { class: "num" }, number(p.position)), h("td", { class: `num ${p.lag > 0 ? "warn" : ""}` }, number(p.lag ?? (head != null && p.position != null ? head - p.position : null)))))),
            )
          : emptyState("No projections reported", ""),
      ),
    ),
  ];
}

export function nodePage({ api, signal, problem }) {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const updated = h("span", { class: "muted" });
  (async () => {
    while (!signal.aborted) {
      try {
        replace(body, render(await api.get(paths.node(), { signal })));
        replace(updated, `updated ${new Date().toLocaleTimeString()}`);
      } catch (error) {
        if (error.name === "AbortError") return;
        const hint = error.status === 403 ? "The node page needs a service or auditor token." : null;
        replace(body, problem(Object.assign(error, hint ? { message: `${error.message}. ${hint}` } : {})));
        if (![0, 429, 503].includes(error.status)) return;
      }
      await new Promise((resolve) => setTimeout(resolve, REFRESH_MS));
    }
  })();
  return h("div", {}, h("div", { class: "page-head" }, h("h1", {}, "Node"), updated), body);
}
