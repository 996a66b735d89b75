// The page makes the session ID, creates the session as its user, connects,
// then asks its backend to start the job (or, ticked, the other way round).
// Either way every progress report arrives, once and in order.

const $ = (selector) => document.querySelector(selector);
const seen = { events: [], sessionId: null };
window.coverage = seen; // for the browser tests

const newSessionId = () => `coverage-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const token = async () => (await fetch("/api/token", { method: "POST" })).text();

function show(event) {
  seen.events.push(event);
  const item = document.createElement("li");
  item.value = event.position;
  item.textContent = `${event.type} ${event.data.done ?? ""}${event.data.note ? ` · ${event.data.note}` : ""}`;
  $("#log").append(item);
  if (event.data.task_id !== "coverage") return;
  const bar = $(".progress");
  if (event.type === "TaskStarted") bar.setAttribute("aria-valuemax", event.data.total);
  if (event.type === "TaskProgressed") {
    bar.setAttribute("aria-valuenow", event.data.done);
    $(".bar").style.width = `${(100 * event.data.done) / Number(bar.getAttribute("aria-valuemax"))}%`;
    $("#note").textContent = event.data.note ?? "";
  }
  if (event.type === "TaskCompleted") {
    bar.classList.add("completed");
    $("#note").textContent = `Done: every report arrived, ${bar.getAttribute("aria-valuenow")} of ${bar.getAttribute("aria-valuemax")}.`;
  }
}

async function runCoverage(jobFirst) {
  const { sessiond } = await (await fetch("/api/config")).json();
  const sessionId = newSessionId();
  seen.sessionId = sessionId;
  const created = await fetch(`${sessiond}/v1/sessions`, {
    method: "POST",
    headers: { Authorization: `Bearer ${await token()}`, "Content-Type": "application/json" },
    body: JSON.stringify({ session_id: sessionId, metadata: { title: "coverage run" } }),
  });
  if (!created.ok) throw new Error(`sessiond refused the session: ${created.status} ${await created.text()}`);

  const { SessiondClient } = await import(`${sessiond}/v1/client.js`);
  const client = new SessiondClient({ url: sessiond, sessionId, getToken: token });
  client.addEventListener("event", ({ detail }) => show(detail));
  client.addEventListener("state", ({ detail }) => {
    $("#status").textContent = `${sessionId} · ${detail.state} ${detail.lifecycle ?? ""}`;
  });
  const startJob = () =>
    fetch("/api/jobs", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ session_id: sessionId }) });

  if (jobFirst) {
    await startJob();
    $("#status").textContent = `${sessionId} · job started, not connected yet…`;
    await sleep(2000);
    client.connect();
  } else {
    client.connect();
    await startJob();
  }
}

$("#start").addEventListener("submit", (e) => {
  e.preventDefault();
  e.target.querySelector("button").disabled = true;
  runCoverage(e.target.elements.jobFirst.checked).catch((error) => {
    $("#status").textContent = error.message;
  });
});
