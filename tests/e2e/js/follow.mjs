// Drives the browser client (clients/js/sessiond-client.js) in Node against a
// real sessiond, for tests/e2e/test_client_js.py. Arguments: base URL,
// session ID, token, connection prefix. Each thing the client tells the page
// is printed as one JSON line; each line on stdin is a command:
// {"send": content, "messageId": id} or {"close": true}. Exits when the client
// has stopped for good.

import { createInterface } from "node:readline";

import { SessiondClient } from "../../../clients/js/sessiond-client.js";

const [url, sessionId, token, connectionPrefix] = process.argv.slice(2);
const print = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);

const client = new SessiondClient({
  url,
  sessionId,
  connectionPrefix,
  getToken: () => token,
  minReconnectDelay: 20,
  maxReconnectDelay: 200,
});
client.addEventListener("state", (e) => print({ kind: "state", ...e.detail }));
client.addEventListener("event", (e) =>
  print({ kind: "event", event: e.detail }),
);
client.addEventListener("error", (e) =>
  print({ kind: "error", code: e.detail.code, message: e.detail.message }),
);
client.addEventListener("closed", (e) => {
  print({ kind: "closed", ...e.detail });
  process.exit(0);
});

createInterface({ input: process.stdin }).on("line", (line) => {
  const command = JSON.parse(line);
  if (command.close) client.close();
  if (command.send !== undefined) {
    client.send(command.send, { messageId: command.messageId }).then(
      (event) =>
        print({
          kind: "recorded",
          messageId: command.messageId,
          position: event.position,
        }),
      (error) =>
        print({
          kind: "refused",
          messageId: command.messageId,
          error: String(error),
        }),
    );
  }
});
client.connect();
