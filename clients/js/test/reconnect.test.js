import assert from "node:assert/strict";
import { test } from "node:test";

import { backoff } from "../sessiond-client.js";
import { makeClient, settle } from "./support/fakes.js";

test("backoff has full jitter between min and min + min * 2^step, capped at max", () => {
  for (let step = 0; step < 12; step += 1) {
    const low = backoff(step, 500, 20_000, () => 0);
    const high = backoff(step, 500, 20_000, () => 0.999999);
    assert.equal(low, 500);
    assert.ok(high <= Math.min(20_000, 500 + 500 * 2 ** step), `step ${step}: ${high}`);
    assert.ok(high > Math.min(20_000, 500 + 500 * 2 ** step) - 1, `step ${step}: ${high}`);
    const middle = backoff(step, 500, 20_000, () => 0.5);
    assert.ok(low <= middle && middle <= high);
  }
  assert.equal(
    backoff(100, 500, 20_000, () => 0.999999),
    20_000,
  );
});

test("failed attempts in a row wait longer each time, and a live socket starts over", async () => {
  const { client, server, clock } = makeClient({ client: { random: () => 1 } });
  server.answers = false; // sockets open and hear nothing: no welcome
  client.connect();
  await settle();
  const waits = [];
  for (let i = 0; i < 7; i += 1) {
    server.last.ended(1006);
    await settle();
    waits.push(clock.pending.at(-1));
    await clock.advance(clock.pending.at(-1));
  }
  assert.deepEqual(waits, [1000, 1500, 2500, 4500, 8500, 16_500, 20_000]);

  server.answers = true;
  server.last.ended(1006);
  await clock.advance(20_000);
  assert.equal(client.state, "connected");
  server.last.ended(1001); // the server restarts
  await settle();
  assert.equal(clock.pending.at(-1), 1000);
  client.close();
});

for (const code of [1001, 1006, 1011, 1012, 1013, 4408]) {
  test(`a close with ${code} reconnects after a backoff and resumes`, async () => {
    const { client, server, clock, seen } = makeClient();
    client.connect();
    await settle();
    server.end(server.last, code, "why");
    await settle();
    assert.equal(client.state, "connecting");
    assert.equal(seen.states.at(-1).code, code);
    assert.equal(server.sockets.length, 1);
    await clock.advance(60_000);
    assert.equal(server.sockets.length, 2);
    assert.equal(client.state, "connected");
    client.close();
  });
}

test("4429 waits the rate-limited pause on top of the backoff", async () => {
  const { client, server, clock } = makeClient({ client: { rateLimitedDelay: 10_000 } });
  client.connect();
  await settle();
  server.end(server.last, 4429, "rate_limited");
  await settle();
  assert.deepEqual(clock.pending, [10_000 + 750]);
  await clock.advance(10_749);
  assert.equal(server.sockets.length, 1);
  await clock.advance(1);
  assert.equal(server.sockets.length, 2);
  client.close();
});

for (const [code, reason] of [
  [4409, "superseded"],
  [4403, "kicked"],
  [4403, "session_ended"],
  [4403, "forbidden: session s belongs to another user"],
]) {
  test(`a close with ${code} ${reason} stops for good and says why`, async () => {
    const { client, server, clock, seen } = makeClient();
    client.connect();
    await settle();
    server.answers = false;
    const sent = client.send("unsent");
    server.end(server.last, code, reason);
    await settle();
    await clock.advance(600_000);
    assert.equal(server.sockets.length, 1);
    assert.equal(client.state, "closed");
    assert.deepEqual(seen.closed, [{ code, reason }]);
    assert.equal(client.closeReason, reason);
    await sent.then(
      () => assert.fail("a message of a stopped client resolved"),
      (error) => assert.equal(error.name, "ClientClosedError"),
    );
  });
}

test("a 4409 on a socket the client already replaced does not stop it", async () => {
  const { client, server, page, clock } = makeClient();
  client.connect();
  await settle();
  const old = server.last;
  old.holdClose = true;
  page.fire("online"); // the network changed: the client replaces the socket at once
  await settle();
  assert.equal(server.sockets.length, 2);
  server.end(old, 4409, "superseded");
  await settle();
  await clock.advance(60_000);
  assert.equal(client.state, "connected");
  assert.equal(client.connectionId, "tab.2");
  client.close();
});

test("maxReconnectAttempts failed reconnects in a row give up", async () => {
  const { client, server, clock, seen } = makeClient({ client: { maxReconnectAttempts: 2 } });
  server.answers = false;
  client.connect();
  await settle();
  for (let i = 0; i < 3; i += 1) {
    server.last.ended(1006);
    await clock.advance(60_000);
  }
  assert.equal(server.sockets.length, 3);
  assert.deepEqual(seen.closed, [{ code: 1006, reason: "gave_up" }]);
});

test("a socket that goes quiet before PROCESSING_READY is given up after connectTimeout", async () => {
  const { client, server, clock, seen } = makeClient({ client: { connectTimeout: 5000 } });
  server.answers = false;
  client.connect();
  await settle();
  await clock.advance(5000);
  assert.equal(seen.errors.at(-1).code, "timeout");
  assert.deepEqual(server.sockets[0].closedWith, { code: 1000, reason: "timeout" });
  server.answers = true;
  await clock.advance(60_000);
  assert.equal(client.state, "connected");
  client.close();
});

test("silence while live is not death unless idleTimeout says so", async () => {
  const quiet = makeClient();
  quiet.client.connect();
  await settle();
  await quiet.clock.advance(3_600_000);
  assert.equal(quiet.server.sockets.length, 1);
  assert.deepEqual(quiet.clock.pending, []);
  quiet.client.close();

  const { client, server, clock } = makeClient({ client: { idleTimeout: 60_000 } });
  client.connect();
  await settle();
  await clock.advance(59_000);
  server.record("TaskProgressed"); // a frame: the timer starts again
  await clock.advance(59_000);
  assert.equal(server.sockets.length, 1);
  await clock.advance(1000);
  assert.deepEqual(server.sockets[0].closedWith, { code: 1000, reason: "timeout" });
  await clock.advance(60_000);
  assert.equal(server.sockets.length, 2);
  assert.equal(server.last.after, 1);
  client.close();
});
