import assert from "node:assert/strict";
import { test } from "node:test";

import { UnauthorizedError } from "../sessiond-client.js";
import { makeClient, settle } from "./support/fakes.js";

test("the token is asked for on every connect and sent in the auth frame", async () => {
  const { client, server, clock, asked } = makeClient();
  client.connect();
  await settle();
  server.last.ended(1006);
  await clock.advance(60_000);
  assert.deepEqual(asked, [
    { sessionId: "session-1", reason: "connect" },
    { sessionId: "session-1", reason: "connect" },
  ]);
  assert.deepEqual(server.tokens, ["token-1", "token-2"]);
  client.close();
});

test("token_expiring is answered with a fresh token in an auth frame, and the token frame is kept", async () => {
  const { client, server, asked } = makeClient();
  client.connect();
  await settle();
  server.expiresAt = 1_900_000_000;
  server.last.frame({ type: "token_expiring", exp: 1_800_000_000 });
  await settle();
  assert.deepEqual(asked.at(-1), { sessionId: "session-1", reason: "refresh" });
  assert.deepEqual(server.last.sent.at(-1), { type: "auth", token: "token-2" });
  assert.equal(client.tokenExpiresAt, 1_900_000_000);
  assert.equal(server.sockets.length, 1);
  assert.equal(client.state, "connected");
  client.close();
});

test("4401 token_expired reconnects at once with a fresh token, resuming with after", async () => {
  const { client, server, asked, positions } = makeClient();
  server.record("SessionCreated");
  client.connect();
  await settle();
  server.end(server.last, 4401, "token_expired");
  server.record("TaskStarted");
  await settle(); // no clock moved: no backoff
  assert.equal(server.sockets.length, 2);
  assert.deepEqual(asked.at(-1), { sessionId: "session-1", reason: "expired" });
  assert.equal(server.last.after, 1);
  assert.deepEqual(positions(), [1, 2]);
  assert.equal(client.state, "connected");
  client.close();
});

test("a refused token is tried once more with a fresh one, and a second refusal stops", async () => {
  const { client, server, clock, asked, seen } = makeClient();
  server.accept = () => false;
  client.connect();
  await settle();
  await clock.advance(600_000);
  assert.equal(server.sockets.length, 2);
  assert.deepEqual(
    asked.map((a) => a.reason),
    ["connect", "expired"],
  );
  assert.equal(client.state, "closed");
  assert.deepEqual(seen.closed, [{ code: 4401, reason: "unauthenticated: bad token" }]);
});

test("token_expired is not a refusal: the fresh token may still be refused once", async () => {
  const { client, server } = makeClient();
  client.connect();
  await settle();
  server.accept = (token) => token !== "token-2";
  server.end(server.last, 4401, "token_expired");
  await settle();
  assert.equal(client.state, "connected");
  assert.deepEqual(server.tokens, ["token-1", "token-2", "token-3"]);
  client.close();
});

test("a token refused once and then good connects", async () => {
  const { client, server } = makeClient();
  server.accept = (token) => token !== "token-1";
  client.connect();
  await settle();
  assert.equal(client.state, "connected");
  assert.equal(server.sockets.length, 2);
  client.close();
});

test("UnauthorizedError from getToken stops for good, on connect or on refresh", async () => {
  const signedOut = () => {
    throw new UnauthorizedError("signed out");
  };
  const first = makeClient({ client: { getToken: signedOut } });
  first.client.connect();
  await settle();
  assert.equal(first.server.sockets.length, 0);
  assert.deepEqual(first.seen.closed, [{ code: null, reason: "unauthorized" }]);

  let calls = 0;
  const later = makeClient({
    client: {
      getToken: async () => {
        calls += 1;
        if (calls > 1) throw new UnauthorizedError();
        return "t";
      },
    },
  });
  later.client.connect();
  await settle();
  later.server.last.frame({ type: "token_expiring", exp: 1 });
  await settle();
  assert.equal(later.client.state, "closed");
  assert.deepEqual(later.server.sockets[0].closedWith, { code: 1000, reason: "unauthorized" });
  assert.deepEqual(later.seen.closed, [{ code: null, reason: "unauthorized" }]);
});

test("any other getToken failure is an error event and a retry after a backoff", async () => {
  let calls = 0;
  const { client, server, clock, seen } = makeClient({
    client: {
      getToken: async () => {
        calls += 1;
        if (calls === 1) throw new Error("auth server down");
        return "t";
      },
    },
  });
  client.connect();
  await settle();
  assert.equal(server.sockets.length, 0);
  assert.deepEqual(
    seen.errors.map((e) => [e.code, e.message]),
    [["token_unavailable", "auth server down"]],
  );
  await clock.advance(60_000);
  assert.equal(client.state, "connected");
  client.close();
});
