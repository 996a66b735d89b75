import assert from "node:assert/strict";
import { test } from "node:test";

import { FakeSessiond, makeClient, plainClient, settle } from "./support/fakes.js";

test("a page woken after its socket died reconnects at once with after, losing and repeating nothing", async () => {
  const { client, server, clock, page, positions } = makeClient({
    client: { minReconnectDelay: 30_000, maxReconnectDelay: 60_000 },
  });
  server.record("SessionCreated");
  client.connect();
  await settle();
  page.hide();
  server.last.ended(1006); // the laptop slept; the backoff timer would wait long
  server.record("TaskProgressed", { done: 1 });
  server.record("TaskProgressed", { done: 2 });
  await settle();
  assert.equal(client.state, "connecting");

  page.show();
  await settle(); // no clock moved
  assert.equal(server.sockets.length, 2);
  assert.equal(server.last.after, 1);
  assert.deepEqual(positions(), [1, 2, 3]);
  assert.deepEqual(clock.pending, []);
  client.close();
});

test("a socket that looks closed on wake is replaced even before its close event came", async () => {
  const { client, server, page, positions } = makeClient();
  server.record("SessionCreated");
  client.connect();
  await settle();
  const old = server.last;
  old.readyState = 3; // closed underneath, and the event is still to come
  old.live = false;
  server.record("TaskStarted");
  page.show();
  await settle();
  assert.equal(server.sockets.length, 2);
  assert.equal(server.last.after, 1);
  old.ended(1006); // the late close of the socket let go of: nothing happens
  await settle();
  assert.equal(server.sockets.length, 2);
  assert.deepEqual(positions(), [1, 2]);
  client.close();
});

test("an open socket is left alone when the page becomes visible", async () => {
  const { client, server, page } = makeClient();
  client.connect();
  await settle();
  page.hide();
  page.show();
  page.fire("pageshow", { persisted: false });
  await settle();
  assert.equal(server.sockets.length, 1);
  client.close();
});

test("online replaces the socket at once: after a network change an open one may be dead", async () => {
  const { client, server, page } = makeClient();
  client.connect();
  await settle();
  page.fire("online");
  await settle();
  assert.deepEqual(server.sockets[0].closedWith, { code: 1000, reason: "wake" });
  assert.equal(server.sockets.length, 2);
  assert.equal(client.state, "connected");
  client.close();
});

test("pagehide closes the socket cleanly; pageshow from the back/forward cache resumes", async () => {
  const { client, server, page, positions, seen } = makeClient();
  server.record("SessionCreated");
  client.connect();
  await settle();
  page.fire("pagehide", { persisted: true });
  await settle();
  assert.deepEqual(server.sockets[0].closedWith, { code: 1000, reason: "pagehide" });
  assert.equal(client.state, "disconnected");
  server.record("TaskStarted");

  page.fire("pageshow", { persisted: true });
  await settle();
  assert.equal(server.last.after, 1);
  assert.equal(client.state, "connected");
  assert.deepEqual(positions(), [1, 2]);
  assert.deepEqual(seen.closed, []);
  client.close();
});

test("a closed client stops listening to the page", async () => {
  const { client, server, page } = makeClient();
  client.connect();
  await settle();
  client.close();
  page.fire("online");
  page.fire("pageshow", { persisted: true });
  page.show();
  await settle();
  assert.equal(server.sockets.length, 1);
});

test("without a document or window (Node) the client works and listens to nothing", async () => {
  const server = new FakeSessiond();
  const client = plainClient(server);
  client.connect();
  await settle();
  assert.equal(client.state, "connected");
  client.close();
});
