// Following a session live through GET /v1/sessions/{id}/stream (Server-Sent
// Events). fetch() with a ReadableStream rather than EventSource, because
// EventSource cannot send the Authorization header and the token never goes
// in a URL. Each event is delivered once and in order: positions at or below
// the last delivered are dropped, and every reconnect resumes with
// Last-Event-ID (and after=) from there.

/**
 * Splits a text/event-stream into messages {id, event, data} (the WHATWG
 * parsing rules); comments (": ping", ": end <reason>") go to onComment.
 */
export function sseParser(onMessage, onComment = () => {}) {
  let buffer = "";
  let message = { id: null, event: "message", data: [] };
  const line = (text) => {
    if (text === "") {
      if (message.data.length) onMessage({ ...message, data: message.data.join("\n") });
      message = { id: message.id, event: "message", data: [] };
      return;
    }
    if (text.startsWith(":")) {
      onComment(text.slice(1).trim());
      return;
    }
    const colon = text.indexOf(":");
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? "" : text.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") message.data.push(value);
    else if (field === "event") message.event = value;
    else if (field === "id" && !value.includes("\0")) message.id = value;
  };
  return (chunk) => {
    buffer += chunk;
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = lines.pop(); // an unfinished line waits for the next chunk
    for (const text of lines) line(text);
  };
}

const FATAL = new Set([400, 401, 403, 404]);
// How the server says a stream ended for good (": end <reason>"); any other
// end (slow_consumer, unavailable, server_shutdown) is resumed from the last event.
const FINAL_ENDS = {
  session_ended: { state: "ended" },
  token_expired: {
    state: "stopped",
    error: { status: 401, code: "token_expired", title: "Your token expired", message: "The server ended the stream at the token's exp." },
  },
};

/**
 * Follows session `sessionId` from position `after` until `signal` aborts.
 * onEvent(event) gets each session event once, in order; onStatus({state,
 * error}) hears "connecting", "live", "retrying" (with the error), "ended"
 * (the session ended: nothing more will come) and "stopped" (an answer that
 * retrying cannot change: bad token, no access, no stream on this server).
 */
export async function follow(api, path, sessionId, after, { onEvent, onStatus, signal }) {
  let last = after;
  let failures = 0;
  while (!signal.aborted) {
    onStatus({ state: "connecting" });
    try {
      const headers = { Accept: "text/event-stream" };
      if (last > 0) headers["Last-Event-ID"] = String(last);
      const response = await api.call("GET", path(sessionId, last), { signal, headers });
      if (response.status === 204) {
        onStatus(FINAL_ENDS.session_ended); // asked again after the end
        return;
      }
      onStatus({ state: "live" });
      failures = 0;
      let end = null;
      const parse = sseParser(
        (message) => {
          const event = JSON.parse(message.data);
          if (typeof event.position !== "number" || event.position <= last) return;
          last = event.position;
          onEvent(event);
        },
        (comment) => {
          if (comment.startsWith("end")) end = comment.slice(3).trim();
        },
      );
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parse(value);
      }
      if (FINAL_ENDS[end]) {
        onStatus(FINAL_ENDS[end]);
        return;
      }
      throw Object.assign(new Error(`the server ended the stream (${end ?? "no reason given"})`), { title: "Stream ended" });
    } catch (error) {
      if (signal.aborted || error.name === "AbortError") return;
      if (FATAL.has(error.status)) {
        onStatus({ state: "stopped", error });
        return;
      }
      failures += 1;
      onStatus({ state: "retrying", error });
      const wait = Math.min(15000, 500 * 2 ** Math.min(failures, 5)) * (0.5 + Math.random() / 2);
      await sleep(wait, signal);
    }
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}
