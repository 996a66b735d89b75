// Every session the token may see (an auditor's: all), newest first, a page
// at a time with the next_cursor the server hands out.

import { paths } from "./api.js";
import { ago, badge, emptyState, h, replace, sessionLink } from "./dom.js";

const PAGE = 25;

function taskSummary(tasks) {
  if (!tasks.length) return h("span", { class: "muted" }, "—");
  const running = tasks.filter((t) => t.state === "RUNNING").length;
  const failed = tasks.filter((t) => t.state === "FAILED").length;
  return [
    `${tasks.length}`,
    running ? h("span", { class: "pill running" }, `${running} running`) : "",
    failed ? h("span", { class: "pill failed" }, `${failed} failed`) : "",
  ];
}

function row(s) {
  return h(
    "tr",
    { "data-session-id": s.session_id },
    h("td", {}, sessionLink(s.session_id), s.metadata?.title ? h("div", { class: "muted small" }, s.metadata.title) : ""),
    h("td", {}, s.owner),
    h("td", {}, badge(s.state)),
    h("td", { class: "num" }, taskSummary(s.tasks ?? [])),
    h("td", { class: "num" }, s.message_count),
    h("td", { class: "num" }, s.connections?.length ? h("span", { class: "pill live" }, `${s.connections.length} live`) : h("span", { class: "muted" }, "0")),
    h("td", {}, ago(s.updated_at)),
    h("td", {}, ago(s.created_at)),
  );
}

export function sessionsPage({ api, claims, signal, problem }) {
  const body = h("tbody");
  const more = h("button", { type: "button", hidden: true }, "Load more");
  const status = h("div", { class: "status" });
  const table = h(
    "table",
    { class: "grid", id: "sessions" },
    h(
      "thead",
      {},
      h("tr", {}, ["Session", "Owner", "State", "Tasks", "Messages", "Connections", "Updated", "Created"].map((t) => h("th", { scope: "col" }, t))),
    ),
    body,
  );
  let cursor = null;
  let shown = 0;

  async function load(reset) {
    more.disabled = true;
    try {
      const page = await api.get(paths.sessions(PAGE, reset ? null : cursor), { signal });
      if (reset) {
        replace(body);
        shown = 0;
      }
      cursor = page.next_cursor;
      shown += page.sessions.length;
      page.sessions.forEach((s) => body.append(row(s)));
      more.hidden = !cursor;
      table.hidden = shown === 0;
      replace(
        status,
        shown === 0 &&
          emptyState(
            "No sessions yet",
            claims.roles?.includes("auditor") ? "None has been created on this store." : `${claims.sub} has none. An auditor token sees every user's.`,
            " Create one with ",
            h("code", {}, "POST /v1/sessions"),
            " or by opening a socket on a new session ID.",
          ),
      );
    } catch (error) {
      if (error.name !== "AbortError") replace(status, problem(error));
    } finally {
      more.disabled = false;
    }
  }

  more.addEventListener("click", () => load(false));
  load(true);
  return h(
    "div",
    {},
    h(
      "div",
      { class: "page-head" },
      h("h1", {}, "Sessions"),
      h("span", { class: "muted" }, claims.roles?.includes("auditor") ? "every user's, newest first" : `${claims.sub}'s, newest first`),
      h("button", { type: "button", class: "ghost push", onclick: () => load(true) }, "Refresh"),
    ),
    h("div", { class: "card flush" }, table, status),
    h("div", { class: "actions" }, more),
  );
}
