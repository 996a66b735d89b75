import assert from "node:assert/strict";
import { test } from "node:test";

import { makeClient, settle } from "./support/fakes.js";

test("events are delivered once each, in order, across a dropped socket resumed with after", async () => {
  const { client, server, clock, positions } = makeClient();
  server.record("SessionCreated");
  server.record("TaskStarted", { task_id: "t" });
  client.connect();
  await settle();
  server.record("TaskProgressed", { done: 1 });
  assert.deepEqual(positions(), [1, 2, 3]);

  server.last.ended(1006); // dropped: nothing said
  server.record("TaskProgressed", { done: 2 }); // while no socket was there
  server.record("TaskProgressed", { done: 3 });
  await clock.advance(60_000);

  assert.equal(server.sockets.length, 2);
  assert.equal(server.last.after, 3);
  server.record("TaskCompleted");
  assert.deepEqual(positions(), [1, 2, 3, 4, 5, 6]);
  assert.equal(client.position, 6);
  assert.equal(client.recovered, true);
  assert.equal(client.resumedFrom, 3);
  client.close();
});

test("a position at or below the last delivered is dropped", async () => {
  const { client, server, positions } = makeClient();
  const first = server.record("SessionCreated");
  const second = server.record("MessageRecorded", { message_id: "m" });
  client.connect();
  await settle();
  server.last.frame({ type: "event", event: first });
  server.last.frame({ type: "event", event: second });
  assert.deepEqual(positions(), [1, 2]);
  client.close();
});

test("a page that already has events up to N starts after N and is not recovered from 0", async () => {
  const { client, server, positions, seen } = makeClient({ client: { after: 2 } });
  for (const type of ["SessionCreated", "TaskStarted", "TaskProgressed"]) server.record(type);
  client.connect();
  await settle();
  assert.deepEqual(positions(), [3]);
  const live = seen.states.find((s) => s.state === "connected");
  assert.equal(live.resumedFrom, 2);
  assert.equal(live.recovered, true);
  client.close();
});

test("a gap closes the socket and resumes from the last position delivered, never skipping", async () => {
  const { client, server, clock, positions, seen } = makeClient();
  server.record("SessionCreated");
  client.connect();
  await settle();
  const hole = { session_id: "session-1", position: 3, type: "TaskProgressed", at: "", data: {} };
  server.last.frame({ type: "event", event: hole }); // position 2 never came
  await settle();
  assert.deepEqual(positions(), [1]);
  assert.deepEqual(server.sockets[0].closedWith, { code: 1000, reason: "gap" });
  assert.equal(seen.errors.at(-1).code, "gap");

  server.record("TaskStarted");
  server.record("TaskProgressed");
  await clock.advance(60_000);
  assert.equal(server.last.after, 1);
  assert.deepEqual(positions(), [1, 2, 3]);
  client.close();
});

test("nothing from a socket the client has let go of reaches the page", async () => {
  const { client, server, clock, positions } = makeClient();
  client.connect();
  await settle();
  const old = server.last;
  old.holdClose = true; // its close never completes
  server.record("SessionCreated");
  const hole = { session_id: "session-1", position: 5, type: "TaskProgressed", at: "", data: {} };
  old.frame({ type: "event", event: hole });
  await clock.advance(60_000);
  old.frame({ type: "event", event: { ...hole, position: 2 } });
  assert.deepEqual(positions(), [1]);
  client.close();
});
