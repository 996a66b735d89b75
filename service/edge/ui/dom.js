// Building the page without innerHTML: every value from the server is text.

/** An element: h("a", {href: "#/x", class: "link"}, "text", child, [more]). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value == null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of [children].flat(Infinity)) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** A state as a coloured badge (the colour comes from its class). */
export function badge(state) {
  const text = String(state ?? "unknown");
  return h("span", { class: `badge state-${text.toLowerCase()}` }, text);
}

export function idText(id) {
  return h("code", { class: "id" }, id);
}

export const sessionLink = (id) => h("a", { href: `#/sessions/${encodeURIComponent(id)}` }, idText(id));
export const connectionLink = (id) =>
  h("a", { href: `#/connections/${encodeURIComponent(id)}` }, idText(id));

/** An error in words, with the server's code when it gave one. */
export function errorBox(error, hint) {
  return h(
    "div",
    { class: "error", role: "alert" },
    h("strong", {}, error.title ?? "Something went wrong"),
    h("p", {}, error.message ?? String(error)),
    error.code && h("p", { class: "muted" }, "code ", h("code", {}, error.code)),
    hint && h("p", {}, hint),
  );
}

export function emptyState(title, ...body) {
  return h("div", { class: "empty" }, h("strong", {}, title), h("p", {}, ...body));
}

export function card(title, ...body) {
  return h("section", { class: "card" }, title && h("h2", {}, title), ...body);
}

// --- time -------------------------------------------------------------------------

const pad = (n, width = 2) => String(n).padStart(width, "0");

/** 14:03:07.123, in the browser's time zone. */
export function clock(iso) {
  const t = new Date(iso);
  if (Number.isNaN(t.getTime())) return String(iso ?? "");
  return `${pad(t.getHours())}:${pad(t.getMinutes())}:${pad(t.getSeconds())}.${pad(t.getMilliseconds(), 3)}`;
}

/** 2026-11-22 14:03:07, in the browser's time zone. */
export function dateTime(iso) {
  if (!iso) return "—";
  const t = new Date(iso);
  if (Number.isNaN(t.getTime())) return String(iso);
  const day = `${t.getFullYear()}-${pad(t.getMonth() + 1)}-${pad(t.getDate())}`;
  return `${day} ${pad(t.getHours())}:${pad(t.getMinutes())}:${pad(t.getSeconds())}`;
}

/** 850 ms, 12.3 s, 4 min 2 s, 3 h 12 min, 2 d 4 h. */
export function duration(ms) {
  if (!Number.isFinite(ms)) return "—";
  const s = Math.max(0, ms) / 1000;
  if (s < 1) return `${Math.round(ms)} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.floor(s % 60)} s`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours} h ${m % 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

/** "3 min ago", with the exact time as its tooltip. */
export function ago(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  const ms = Date.now() - new Date(iso).getTime();
  return h("time", { datetime: iso, title: dateTime(iso) }, ms < 1000 ? "just now" : `${duration(ms)} ago`);
}
