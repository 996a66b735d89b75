// sessiond's HTTP API as the dashboard calls it: the token only ever in the
// Authorization header, every failure an ApiError with words for people.

export class ApiError extends Error {
  constructor(status, code, message, title) {
    super(message);
    this.status = status;
    this.code = code;
    this.title = title ?? titleFor(status);
  }
}

function titleFor(status) {
  if (status === 0) return "sessiond cannot be reached";
  if (status === 401) return "Your token was refused";
  if (status === 403) return "Your token does not allow this";
  if (status === 404) return "Not found";
  if (status === 429) return "Too many requests";
  if (status === 503) return "The store is unavailable";
  return `The server answered ${status}`;
}

async function errorOf(response) {
  try {
    const body = await response.json();
    if (body?.error?.code) return new ApiError(response.status, body.error.code, body.error.message);
  } catch {
    // Not the contract's error shape (a proxy's page): say what we know.
  }
  return new ApiError(response.status, null, `${response.status} ${response.statusText}`.trim());
}

export class Api {
  constructor(token, base = "") {
    this.token = token;
    this.base = base;
  }

  headers(extra = {}) {
    return { Authorization: `Bearer ${this.token}`, Accept: "application/json", ...extra };
  }

  async call(method, path, { signal, headers } = {}) {
    let response;
    try {
      response = await fetch(this.base + path, {
        method,
        headers: this.headers(headers),
        cache: "no-store",
        signal,
      });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(0, null, `The request for ${path} did not reach sessiond (${e.message}).`);
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }

  async get(path, options) {
    return (await this.call("GET", path, options)).json();
  }

  /** The events of a paged events path (`pathOf(after, limit)`) after `after`, up to
   * position `until`, page by page: a page may end short of its limit before the end
   * (the server bounds it by bytes too), so only an empty page is the end. */
  async events(pathOf, after, options, until = Infinity) {
    const events = [];
    while (after < until) {
      const page = await this.get(pathOf(after, Math.min(1000, until - after)), options);
      if (!page.events.length) break;
      events.push(...page.events);
      after = page.next_after;
    }
    return events;
  }

  async del(path, options) {
    const response = await this.call("DELETE", path, options);
    return response.status === 204 ? null : response.json().catch(() => null);
  }

  /** The node's name and store kind (/healthz needs no token). */
  async health() {
    const response = await fetch(this.base + "/healthz", { cache: "no-store" });
    return response.json();
  }
}

const q = encodeURIComponent;
export const paths = {
  sessions: (limit, cursor) => `/v1/sessions?limit=${limit}${cursor ? `&cursor=${q(cursor)}` : ""}`,
  session: (id) => `/v1/sessions/${q(id)}`,
  sessionEvents: (id, after, limit) => `/v1/sessions/${q(id)}/events?after=${after}&limit=${limit}`,
  stream: (id, after) => `/v1/sessions/${q(id)}/stream?after=${after}`,
  connection: (id) => `/v1/connections/${q(id)}`,
  connectionEvents: (id, after, limit) => `/v1/connections/${q(id)}/events?after=${after}&limit=${limit}`,
  node: () => "/v1/node",
};

/** The claims of a JWT, for showing who is signed in (the server checks the token, not this). */
export function claimsOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
    return typeof claims === "object" && claims ? claims : null;
  } catch {
    return null;
  }
}
