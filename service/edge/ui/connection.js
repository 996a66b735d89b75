// One connection: what it is, its lifecycle step by step with times, how it
// ended; and the kick (DELETE /v1/connections/{id}) for a live one, offered to
// the session's owner and to service tokens (the server decides).

import { paths } from "./api.js";
import { badge, card, clock, connectionLink, dateTime, duration, emptyState, h, idText, replace, sessionLink } from "./dom.js";
import { closeMeaning, lifecycleDetail } from "./events.js";

const REFRESH_MS = 3000;

const canKick = (claims, owner) => Boolean(claims?.roles?.includes("service") || (owner && claims?.sub === owner));

/** A "Kick" button that asks once more before it closes the socket. */
export function kickButton({ api, signal, problem, refresh }, connectionId) {
  const box = h("span", { class: "kick" });
  const ask = () =>
    replace(
      box,
      h("span", { class: "small" }, "Close it with 4403 kicked?"),
      h("button", { type: "button", class: "danger", onclick: kick }, "Kick"),
      h("button", { type: "button", class: "ghost", onclick: idle }, "Cancel"),
    );
  const idle = () => replace(box, h("button", { type: "button", class: "danger ghost", onclick: ask }, "Kick…"));
  async function kick() {
    replace(box, h("span", { class: "muted small" }, "kicking…"));
    try {
      await api.del(paths.connection(connectionId), { signal });
      replace(box, h("span", { class: "muted small" }, "kick sent"));
      refresh(connectionId);
    } catch (error) {
      if (error.name !== "AbortError") replace(box, problem(error));
    }
  }
  idle();
  return box;
}

/** A connection as one line of a session page. */
export function connectionRow(c, { claims, owner, ...options }) {
  const live = c.state !== "CLOSED" && c.state !== "unknown";
  return h(
    "li",
    { class: "connection", "data-connection-id": c.connection_id },
    connectionLink(c.connection_id),
    badge(c.state),
    h(
      "span",
      { class: "muted small" },
      c.error ?? (live ? `${c.user_id ?? ""} on ${c.node ?? "?"}` : c.close_code != null ? `${c.close_code} ${c.close_reason ?? ""}` : ""),
    ),
    live && canKick(claims, owner) && kickButton({ claims, ...options }, c.connection_id),
  );
}

function fact(label, ...value) {
  return [h("dt", {}, label), h("dd", {}, ...value)];
}

export function connectionPage({ api, claims, signal, problem }, connectionId) {
  const head = h("div", { class: "page-head" }, h("h1", {}, "Connection ", idText(connectionId)));
  const facts = h("dl", { class: "facts" });
  const steps = h("ol", { class: "lifecycle", id: "lifecycle" });
  const status = h("div");
  const page = h("div", {}, head, status, h("div", { class: "columns" }, card("Connection", facts), card("Lifecycle", steps)));
  let owner = null;

  async function load() {
    try {
      const [c, events] = await Promise.all([
        api.get(paths.connection(connectionId), { signal }),
        api.events((after, limit) => paths.connectionEvents(connectionId, after, limit), 0, { signal }),
      ]);
      if (owner === null) {
        owner = await api.get(paths.session(c.session_id), { signal }).then((s) => s.owner, () => "");
      }
      render(c, events);
      replace(status);
      return c.state !== "CLOSED";
    } catch (error) {
      if (error.name !== "AbortError") replace(status, problem(error));
      return error.name !== "AbortError" && [0, 429, 503].includes(error.status); // worth another try
    }
  }

  function render(c, events) {
    const live = c.state !== "CLOSED";
    const options = { api, signal, problem, refresh: () => load() };
    replace(head, h("h1", {}, "Connection ", idText(connectionId)), badge(c.state), live && canKick(claims, owner) && kickButton(options, connectionId));
    const lasted = new Date(c.closed_at ?? Date.now()) - new Date(c.opened_at);
    replace(
      facts,
      fact("session", sessionLink(c.session_id)),
      fact("user", c.user_id ?? "—"),
      fact("node", c.node ?? "—"),
      fact("opened", dateTime(c.opened_at)),
      fact(live ? "open for" : "lasted", duration(lasted)),
      !live && fact("closed", dateTime(c.closed_at)),
      !live && fact("close", h("b", {}, `${c.close_code ?? "?"} ${c.close_reason ?? ""}`), closeMeaning(c.close_code) && h("div", { class: "muted small" }, closeMeaning(c.close_code))),
    );
    const start = events.length ? new Date(events[0].at) : null;
    replace(
      steps,
      events.length
        ? events.map((e) =>
            h(
              "li",
              { class: "step", "data-state": e.type },
              h("time", { datetime: e.at, title: new Date(e.at).toLocaleString() }, clock(e.at)),
              h("span", { class: "since" }, `+${duration(new Date(e.at) - start)}`),
              badge(e.type),
              h("span", { class: "text" }, lifecycleDetail(e)),
            ),
          )
        : emptyState("Nothing recorded", "This connection has no lifecycle events."),
    );
  }

  (async () => {
    while (!signal.aborted && (await load())) {
      await new Promise((resolve) => setTimeout(resolve, REFRESH_MS));
    }
  })();
  return page;
}

