// The dashboard: sign in with a token, then a page per question (what is
// there, what is this session doing, what happened to this connection, how
// is this node). Hash routes, so the server serves one page.

import { Api, claimsOf } from "./api.js";
import { duration, errorBox, h, replace } from "./dom.js";
import { connectionPage } from "./connection.js";
import { nodePage } from "./node.js";
import { sessionPage } from "./session.js";
import { sessionsPage } from "./sessions.js";
import { signInPage } from "./signin.js";

const TOKEN_KEY = "sessiond.token";
const view = document.getElementById("view");
let current = null; // the page on screen: its AbortController stops its streams and timers
let countdown = null; // the header's timer counting down the token's time left

const auth = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  signIn(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    go("#/sessions");
  },
  signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    go("#/signin");
  },
};

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash; // hashchange routes
}

/** An error in words; a refused token gets the way back to the sign-in page. */
function problem(error) {
  const again = h("button", { type: "button", onclick: () => auth.signOut() }, "Sign in again");
  return errorBox(error, error.status === 401 ? again : null);
}

const ROUTES = [
  [/^#\/sessions\/(.+)$/, sessionPage],
  [/^#\/connections\/(.+)$/, connectionPage],
  [/^#\/node$/, nodePage],
  [/^#\/sessions$/, sessionsPage],
];

function header(claims) {
  const page = location.hash.split("/")[1] || "sessions";
  const nav = [
    ["sessions", "Sessions"],
    ["node", "Node"],
  ];
  replace(
    document.getElementById("nav"),
    claims &&
      nav.map(([key, label]) =>
        h("a", { href: `#/${key}`, class: page === key || (key === "sessions" && page === "connections") ? "active" : "" }, label),
      ),
  );
  const user = document.getElementById("user");
  if (!claims) {
    clearInterval(countdown);
    replace(user);
    return;
  }
  const roles = (claims.roles ?? ["user"]).filter((r) => r !== "user");
  const left = claims.exp ? h("span", {}) : null;
  // The time the token has left, counted down while the page is open.
  const tick = () => {
    const ms = claims.exp * 1000 - Date.now();
    left.className = ms > 0 ? "muted" : "bad";
    left.textContent = ms > 0 ? ` · ${duration(ms)} left` : " · expired";
    if (ms <= 0) clearInterval(countdown);
  };
  clearInterval(countdown);
  if (left) {
    tick();
    countdown = setInterval(tick, 1000);
  }
  replace(
    user,
    h(
      "span",
      { class: "chip user", title: claims.exp ? `Token valid until ${new Date(claims.exp * 1000).toLocaleString()}` : "" },
      h("b", {}, claims.sub ?? "?"),
      roles.map((r) => h("span", { class: "role" }, r)),
      left,
    ),
    h("button", { class: "ghost", type: "button", onclick: () => auth.signOut() }, "Sign out"),
  );
}

async function showNode(api) {
  const node = document.getElementById("node");
  try {
    const health = await api.health();
    replace(node, "node ", h("b", {}, health.node ?? "?"), ` · ${health.store ?? "?"}`);
    node.classList.remove("bad");
  } catch (e) {
    replace(node, "node unreachable");
    node.classList.add("bad");
  }
}

function route() {
  current?.abort();
  current = new AbortController();
  const token = auth.token;
  const claims = token ? claimsOf(token) : null;
  const api = new Api(token ?? "");
  if (!token) {
    if (location.hash !== "#/signin") history.replaceState(null, "", "#/signin");
    header(null);
    replace(view, signInPage({ api, signIn: auth.signIn }));
    return;
  }
  if (!ROUTES.some(([pattern]) => pattern.test(location.hash))) {
    history.replaceState(null, "", "#/sessions");
  }
  header(claims);
  const [pattern, page] = ROUTES.find(([p]) => p.test(location.hash));
  const [, param] = location.hash.match(pattern);
  const context = { api, claims, signal: current.signal, problem };
  try {
    replace(view, page(context, param === undefined ? undefined : decodeURIComponent(param)));
  } catch (error) {
    replace(view, problem(error));
  }
}

window.addEventListener("hashchange", route);
showNode(new Api(""));
route();
