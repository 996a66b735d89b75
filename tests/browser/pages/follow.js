// The browser tests' page: it imports the client from the sessiond it is
// given (another origin than this page's) and keeps what the client tells it
// in window.seen, for the test to read, and on screen, for the screenshot.
// getToken asks the test, through window.sessiondToken (Playwright's
// expose_function).

const seen = { events: [], states: [], closed: null, tokenReasons: [], errors: [] };
window.seen = seen;

const text = (id, value) => {
  document.getElementById(id).textContent = value;
};

window.follow = async ({ url, sessionId, prefix, after = 0 }) => {
  const { SessiondClient } = await import(`${url}/v1/client.js`);
  const client = new SessiondClient({
    url,
    sessionId,
    after,
    connectionPrefix: prefix,
    maxReconnectDelay: 2000,
    async getToken({ reason }) {
      seen.tokenReasons.push(reason);
      return window.sessiondToken(reason);
    },
  });
  client.addEventListener("event", ({ detail }) => {
    seen.events.push(detail);
    const item = document.createElement("li");
    item.textContent = `#${detail.position} ${detail.type} ${JSON.stringify(detail.data)}`;
    document.getElementById("events").append(item);
  });
  client.addEventListener("state", ({ detail }) => {
    seen.states.push({ ...detail });
    text("state", `${detail.state} ${detail.lifecycle ?? ""}`);
    text("connection", detail.connectionId ?? "");
  });
  client.addEventListener("error", ({ detail }) => seen.errors.push(detail));
  client.addEventListener("closed", ({ detail }) => {
    seen.closed = detail;
    text("closed", `stopped: ${detail.code} ${detail.reason}`);
  });
  window.client = client;
  client.connect();
};
