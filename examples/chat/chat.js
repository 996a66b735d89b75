// The chat page: one SessiondClient for the session it joined. What it joined
// is kept in sessionStorage (this tab only), so a reload joins again; the
// client loads the history from position 0 and goes on live, so nothing is
// lost, and the server supersedes the socket the old page may have left.

const $ = (selector) => document.querySelector(selector);
const KEY = "chat.joined";

function line(event) {
  const item = document.createElement("li");
  item.dataset.position = event.position;
  const d = event.data;
  if (event.type === "MessageRecorded") {
    const who = Object.assign(document.createElement("span"), { className: "who", textContent: d.role });
    const at = Object.assign(document.createElement("time"), { textContent: new Date(event.at).toLocaleTimeString() });
    item.append(at, who, d.content);
  } else if (event.type === "ConnectionAttached" || event.type === "ConnectionDetached") {
    item.className = "system";
    item.textContent = `${d.connection_id} ${event.type === "ConnectionAttached" ? "joined" : `left (${d.reason})`}`;
  } else {
    return null;
  }
  return item;
}

function why(detail) {
  if (detail.reason === "superseded") {
    return "This chat was opened again in another tab or window (4409 superseded), so this tab stopped. Nothing was lost: the other one has every message.";
  }
  return `Stopped: ${detail.code ?? ""} ${detail.reason}.`;
}

async function join({ url, session, token }) {
  const { SessiondClient } = await import(`${url.replace(/\/$/, "")}/v1/client.js`);
  const client = new SessiondClient({ url, sessionId: session, getToken: () => token });
  client.addEventListener("event", ({ detail }) => {
    const item = line(detail);
    if (item) $("#messages").append(item);
  });
  client.addEventListener("state", ({ detail }) => {
    const resumed = detail.recovered ? ` · resumed after #${detail.resumedFrom}` : "";
    $("#status").textContent = `${detail.state} · ${detail.lifecycle ?? "—"} · ${detail.connectionId ?? ""}${resumed}`;
  });
  client.addEventListener("closed", ({ detail }) => {
    const banner = $("#closed");
    banner.textContent = why(detail);
    banner.dataset.reason = detail.reason;
    banner.hidden = false;
    $("#say button").disabled = true;
  });
  $("#join").hidden = true;
  $("#room").hidden = false;
  $("#say").addEventListener("submit", async (e) => {
    e.preventDefault();
    const input = e.target.elements.text;
    const text = input.value;
    input.value = "";
    try {
      await client.send(text); // resolves once recorded, sent again after a reconnect if need be
    } catch (error) {
      input.value = text;
      $("#status").textContent = `not sent: ${error.message}`;
    }
  });
  $("#leave").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    client.close();
    location.reload();
  });
  window.chat = client; // for the console, and for the browser tests
  client.connect();
}

$("#join").addEventListener("submit", (e) => {
  e.preventDefault();
  const form = new FormData(e.target);
  const joined = { url: form.get("url"), session: form.get("session"), token: form.get("token") };
  sessionStorage.setItem(KEY, JSON.stringify(joined));
  join(joined);
});

const saved = sessionStorage.getItem(KEY);
if (saved) join(JSON.parse(saved));
