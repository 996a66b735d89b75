// Compiled by `npm run typecheck` (tsc --strict) against sessiond-client.d.ts: the declarations type a page's usage.
import {
  SessiondClient,
  UnauthorizedError,
  backoff,
  type SessionEvent,
} from "../sessiond-client.js";

const client = new SessiondClient({
  url: "http://127.0.0.1:8080",
  sessionId: "s-1",
  getToken: async ({ reason }) => {
    if (reason === "expired") throw new UnauthorizedError();
    return "t";
  },
});
client.addEventListener("event", (e) => {
  const ev: SessionEvent = e.detail;
  console.log(ev.position.toFixed(0));
});
client.addEventListener("state", (e) =>
  console.log(e.detail.state, e.detail.lifecycle, e.detail.recovered),
);
client.addEventListener("closed", (e) => console.log(e.detail.code, e.detail.reason));
client.addEventListener("error", (e) => console.log(e.detail.code));
const p: Promise<SessionEvent> = client.connect().send("hi", { role: "user", messageId: "m-1" });
const n: number = backoff(1, 500, 20000);
// @ts-expect-error: not a state
const bad: import("../sessiond-client.js").ClientStateName = "open";
void p;
void n;
void bad;
