// Signing in: a pasted token, checked against the server before it is kept
// (in sessionStorage: this tab only, gone when it closes).

import { claimsOf } from "./api.js";
import { errorBox, h, replace } from "./dom.js";

export function signInPage({ api, signIn }) {
  const input = h("textarea", {
    id: "token",
    name: "token",
    rows: 4,
    spellcheck: "false",
    autocomplete: "off",
    placeholder: "eyJhbGciOiJIUzI1NiIs…",
    required: true,
  });
  const status = h("div", { class: "status" });
  const button = h("button", { type: "submit", class: "primary" }, "Sign in");

  async function submit(event) {
    event.preventDefault();
    const token = input.value.trim().replace(/^Bearer\s+/i, "");
    if (!claimsOf(token)) {
      replace(status, errorBox({ title: "That is not a token", message: "Paste the whole JWT: three parts separated by dots." }));
      return;
    }
    button.disabled = true;
    replace(status, h("p", { class: "muted" }, "Checking the token with the server…"));
    try {
      api.token = token;
      await api.get("/v1/sessions?limit=1");
      signIn(token);
    } catch (error) {
      replace(status, errorBox(error));
    } finally {
      button.disabled = false;
    }
  }

  return h(
    "div",
    { class: "signin" },
    h(
      "form",
      { class: "card", onsubmit: submit },
      h("h1", {}, "Sign in to sessiond"),
      h("p", { class: "muted" }, "Paste a token. It stays in this tab only and is sent in the Authorization header, never in a URL."),
      h("label", { for: "token" }, "Token"),
      input,
      h("div", { class: "actions" }, button),
      status,
      h(
        "p",
        { class: "muted small" },
        "Make one on the server: ",
        h("code", {}, "sessiond token --user alice"),
        " (your sessions), or ",
        h("code", {}, "--role auditor"),
        " to see every session and the node page.",
      ),
    ),
  );
}
