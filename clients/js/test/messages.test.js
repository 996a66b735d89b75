import assert from "node:assert/strict";
import { test } from "node:test";

import { makeClient, settle } from "./support/fakes.js";

const messages = (server) => server.events.filter((e) => e.type === "MessageRecorded");

test("send() waits while not live, then resolves with the message's recorded event", async () => {
  const { client, server } = makeClient();
  const sent = client.send("hello", { role: "user", messageId: "m-1" });
  assert.equal(client.unacknowledged, 1);
  client.connect();
  const event = await sent;
  assert.equal(event.type, "MessageRecorded");
  assert.deepEqual(event.data, {
    role: "user",
    content: "hello",
    message_id: "m-1",
    connection_id: "tab.1",
  });
  assert.deepEqual(server.last.sent.at(-1), {
    type: "message",
    role: "user",
    content: "hello",
    message_id: "m-1",
    ref: "m-1",
  });
  assert.equal(client.unacknowledged, 0);
  client.close();
});

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

test("a message without an ID gets a random UUID, on an http page too", async () => {
  const { client, server } = makeClient();
  client.connect();
  await settle();
  await client.send("hi");
  // crypto.randomUUID exists only in secure contexts: a page on plain http has none.
  Object.defineProperty(globalThis.crypto, "randomUUID", { value: undefined, configurable: true });
  try {
    await client.send("from http");
  } finally {
    delete globalThis.crypto.randomUUID;
  }
  const ids = server.last.sent.filter((f) => f.type === "message").map((f) => f.message_id);
  assert.equal(ids.length, 2);
  for (const id of ids) assert.match(id, UUID);
  assert.notEqual(ids[0], ids[1]);
  client.close();
});

test("a message recorded while its socket dropped comes back in the backlog and is not sent again", async () => {
  const { client, server, clock, seen } = makeClient();
  client.connect();
  await settle();
  server.answers = false;
  const sent = client.send("once", { messageId: "m-1" });
  server.last.live = false; // recorded, but its event never reaches the client
  server.recordMessage(server.last.sent.at(-1), "tab.1");
  server.answers = true;
  server.last.ended(1006);
  await clock.advance(60_000);

  assert.equal(server.last.after, 0);
  assert.deepEqual(
    server.last.sent.map((f) => f.type),
    ["auth"],
  );
  assert.equal((await sent).position, 1);
  assert.deepEqual(
    seen.events.map((e) => e.type),
    ["MessageRecorded"],
  );
  client.close();
});

test("a message sent again after a reconnect is recorded once, even when the first copy arrives too", async () => {
  const { client, server, clock, seen } = makeClient();
  client.connect();
  await settle();
  server.answers = false; // the first copy is still on its way when the socket drops
  const sent = client.send("once", { messageId: "m-1" });
  const firstCopy = server.last.sent.at(-1);
  server.answers = true;
  server.last.ended(1006);
  await clock.advance(60_000);

  const again = server.last.sent.filter((f) => f.type === "message");
  assert.deepEqual(again, [firstCopy]);
  server.recordMessage(firstCopy, "tab.1"); // the late first copy
  assert.equal(messages(server).length, 1);
  assert.equal((await sent).data.connection_id, "tab.2");
  assert.deepEqual(
    seen.events.map((e) => e.type),
    ["MessageRecorded"],
  );
  client.close();
});

test("a message never recorded is sent again after a reconnect and then recorded", async () => {
  const { client, server, clock } = makeClient();
  client.connect();
  await settle();
  server.answers = false; // lost on the way
  const sent = client.send("again", { messageId: "m-2" });
  server.answers = true;
  server.last.ended(1006);
  await clock.advance(60_000);
  assert.equal((await sent).data.message_id, "m-2");
  assert.equal(messages(server).length, 1);
  client.close();
});

test("the same messageId twice is one message and one promise", async () => {
  const { client, server } = makeClient();
  const a = client.send("x", { messageId: "m-1" });
  const b = client.send("x", { messageId: "m-1" });
  assert.equal(a, b);
  client.connect();
  await a;
  assert.equal(messages(server).length, 1);
  client.close();
});

test("a message the server refuses rejects; one it could not record yet is sent again", async () => {
  const { client, server, clock, seen } = makeClient();
  client.connect();
  await settle();
  server.answers = false;
  const bad = client.send("x", { messageId: "m-bad" });
  const later = client.send("y", { messageId: "m-later" });
  server.last.frame({
    type: "error",
    code: "bad_frame",
    message: "content too deep",
    ref: "m-bad",
  });
  server.last.frame({ type: "error", code: "unavailable", message: "store down", ref: "m-later" });
  await assert.rejects(bad, { name: "MessageRefusedError", code: "bad_frame" });
  assert.deepEqual(
    seen.errors.map((e) => [e.code, e.ref]),
    [
      ["bad_frame", "m-bad"],
      ["unavailable", "m-later"],
    ],
  );
  server.answers = true;
  await clock.advance(60_000);
  assert.equal((await later).data.message_id, "m-later");
  assert.equal(server.sockets.length, 1);
  client.close();
});

test("a message larger than maxFrameBytes is refused before it is sent", async () => {
  const { client } = makeClient({ client: { maxFrameBytes: 100 } });
  await assert.rejects(client.send("x".repeat(100)), {
    name: "MessageRefusedError",
    code: "too_large",
  });
  assert.equal(client.unacknowledged, 0);
});

test("send() on a closed client rejects", async () => {
  const { client } = makeClient();
  client.connect();
  client.close();
  await assert.rejects(client.send("late"), { name: "ClientClosedError" });
  await assert.rejects(client.send(42), TypeError);
});

test("a message the server closes 1009 for is refused too_large, not sent on every new socket", async () => {
  // The server's frame limit may be lower than this client's maxFrameBytes.
  const { client, server, clock, seen } = makeClient();
  client.connect();
  await settle();
  server.answers = false; // the frames reach the server, which records nothing
  const big = client.send("x".repeat(2000), { messageId: "m-big" });
  const small = client.send("small", { messageId: "m-small" });
  const socket = server.last;
  assert.deepEqual(
    socket.sent.filter((f) => f.type === "message").map((f) => f.message_id),
    ["m-big", "m-small"],
  );
  socket.frame({
    type: "state",
    connection_id: socket.connectionId,
    state: "CLOSED",
    code: 1009,
    reason: "too_large",
  });
  socket.ended(1009, "too_large");
  await assert.rejects(big, { name: "MessageRefusedError", code: "too_large" });
  assert.ok(seen.errors.some((e) => e.code === "too_large" && e.ref === "m-big"));
  assert.equal(client.unacknowledged, 1);
  server.answers = true;
  await clock.advance(clock.pending.at(-1));
  await settle();
  assert.equal(client.state, "connected");
  assert.equal((await small).data.message_id, "m-small");
  const resent = server.last.sent.filter((f) => f.type === "message").map((f) => f.message_id);
  assert.deepEqual(resent, ["m-small"]);
  client.close();
});
