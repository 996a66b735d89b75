import assert from "node:assert/strict";
import { test } from "node:test";

import { SessiondClient } from "../sessiond-client.js";
import { FakeSessiond, makeClient, plainClient, settle } from "./support/fakes.js";

test("the client walks the server's lifecycle and shows its own states as it goes", async () => {
  const { client, seen } = makeClient();
  assert.equal(client.state, "disconnected");
  client.connect();
  await settle();
  const walk = seen.states.map((s) => [s.state, s.lifecycle]);
  assert.deepEqual(walk, [
    ["connecting", null],
    ["connecting", "ACCEPTED"],
    ["connecting", "AUTHENTICATED"],
    ["connecting", "SERVICES_READY"],
    ["connected", "PROCESSING_READY"],
  ]);
  assert.equal(client.state, "connected");
  assert.equal(client.lifecycle, "PROCESSING_READY");
  assert.equal(seen.states.at(-1).connectionId, "tab.1");

  client.close();
  assert.equal(client.state, "closed");
  assert.equal(client.lifecycle, "CLOSED");
  assert.deepEqual(seen.closed, [{ code: 1000, reason: "client" }]);
});

test("connect() and close() are idempotent", async () => {
  const { client, server, seen } = makeClient();
  client.connect();
  client.connect();
  await settle();
  client.connect();
  await settle();
  assert.equal(server.sockets.length, 1);
  client.close();
  client.close();
  await settle();
  assert.equal(seen.closed.length, 1);
  assert.deepEqual(server.sockets[0].closedWith, { code: 1000, reason: "normal" });
});

test("the socket URL proposes a connection ID and after, and never carries the token", async () => {
  const { client, server } = makeClient({ client: { after: 7 } });
  client.connect();
  await settle();
  const url = server.last.url;
  assert.equal(url.origin + url.pathname, "ws://127.0.0.1:8080/v1/ws");
  assert.deepEqual(Object.fromEntries(url.searchParams), {
    session_id: "session-1",
    connection_id: "tab.1",
    after: "7",
  });
  assert.ok(!url.href.includes("token"));
  assert.deepEqual(server.last.sent[0], { type: "auth", token: "token-1" });
});

test("https becomes wss, and a path prefix is kept", async () => {
  const server = new FakeSessiond();
  const client = plainClient(server, { url: "https://example.test/sessiond/" });
  client.connect();
  await settle();
  assert.equal(
    server.last.url.origin + server.last.url.pathname,
    "wss://example.test/sessiond/v1/ws",
  );
  client.close();
});

test("each attempt has its own connection ID, under a prefix each client makes once", async () => {
  const server = new FakeSessiond();
  const first = makeClient({ server, client: { connectionPrefix: undefined } });
  first.client.connect();
  await settle();
  server.last.ended(1006);
  await first.clock.advance(60_000);
  const [one, two] = server.sockets.map((s) => s.connectionId);
  assert.match(one, /^js-[0-9a-f]{12}\.1$/);
  assert.equal(two, one.replace(/\.1$/, ".2"));

  // A reload is a new client: a new prefix, so never an ID used before.
  const reload = makeClient({ server, client: { connectionPrefix: undefined } });
  reload.client.connect();
  await settle();
  assert.notEqual(server.last.connectionId.split(".")[0], one.split(".")[0]);
  first.client.close();
  reload.client.close();
});

test("bad options are refused when the client is made", () => {
  const base = { url: "http://x.test", sessionId: "s-1", getToken: () => "t", WebSocket: class {} };
  assert.throws(() => new SessiondClient({ ...base, sessionId: "no spaces" }), TypeError);
  assert.throws(() => new SessiondClient({ ...base, getToken: "t" }), TypeError);
  assert.throws(() => new SessiondClient({ ...base, after: -1 }), TypeError);
  assert.throws(() => new SessiondClient({ ...base, url: "ftp://x.test" }), TypeError);
  assert.throws(() => new SessiondClient({ ...base, url: undefined }), /url is required/);
});

test("a welcome is answered with the auth frame, and nothing else goes out before it", async () => {
  const { client, server } = makeClient();
  client.send("early");
  client.connect();
  await settle();
  const kinds = server.last.sent.map((f) => f.type);
  assert.deepEqual(kinds, ["auth", "message"]);
  client.close();
});
