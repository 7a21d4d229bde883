// The platform's JSON API, with the console's access token — kept in memory only.
//
// What survives a reload is the session cookie (HttpOnly: this code never sees it), traded for a
// fresh access token at /console/session/refresh. Tabs take turns at that (a Web Lock): the
// cookie's refresh token is spent by each renewal, and a spent one presented again ends the session.

export class ApiError extends Error {
  constructor(status, code, message, details = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

/** A refusal as the page shows it: the API's stable code and message (and the field it names). */
export function describe(error) {
  if (!(error instanceof ApiError)) return String(error && error.message ? error.message : error);
  const where = error.details && (error.details.path || error.details.field);
  return `${error.code}: ${error.message}${where ? ` (${where})` : ""}`;
}

const CONSOLE_HEADER = { "X-Dai-Console": "1" };
const listeners = new Set();
let token = null;
let who = null; // {tenant_id, user_id, role, permissions}
let renewal = null; // the renewal in flight, if any
let renewTimer = null;

export function principal() {
  return who;
}

/** Whether the signed-in user holds `permission` (the same rule as the platform's). */
export function can(permission) {
  if (!who) return false;
  const resource = permission.split(":", 1)[0];
  return who.permissions.some((p) => p === permission || p === "*" || p === `${resource}:*`);
}

/** `callback(principal or null)` whenever the session starts or ends. */
export function onSession(callback) {
  listeners.add(callback);
  return () => listeners.delete(callback);
}

function adopt(answer) {
  token = answer ? answer.access_token : null;
  who = answer ? { ...answer, access_token: undefined } : null;
  clearTimeout(renewTimer);
  if (answer) {
    // Renew a minute before the token expires (or halfway, for short ones).
    const lead = Math.min(60, answer.expires_in / 2);
    renewTimer = setTimeout(() => renew().catch(() => adopt(null)), (answer.expires_in - lead) * 1000);
  }
  for (const callback of listeners) callback(who);
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    /* not JSON: the status says it */
  }
  const error = body && body.error;
  if (error && typeof error.code === "string") {
    return new ApiError(response.status, error.code, error.message, error.details || {});
  }
  return new ApiError(response.status, "HTTP_" + response.status, response.statusText || "request failed");
}

async function session(path, body) {
  const response = await fetch(`/console/session${path}`, {
    method: "POST",
    credentials: "same-origin",
    headers: { ...CONSOLE_HEADER, ...(body ? { "Content-Type": "application/json" } : {}), ...authorization() },
    body: body ? JSON.stringify(body) : undefined,
  });
  if (!response.ok) throw await errorOf(response);
  return response.status === 204 ? null : response.json();
}

function authorization() {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

export async function signIn(tenant, email, password) {
  adopt(await session("", { tenant_id: tenant, email, password }));
}

/** A new access token from the session cookie; null (signed out) if there is no session. */
export function renew() {
  if (!renewal) {
    const run = () => session("/refresh");
    const locked = navigator.locks ? navigator.locks.request("dai-console-session", run) : run();
    renewal = locked
      .then((answer) => {
        adopt(answer);
        return who;
      })
      .catch((error) => {
        if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
          adopt(null);
          return null;
        }
        throw error;
      })
      .finally(() => {
        renewal = null;
      });
  }
  return renewal;
}

export async function signOut() {
  try {
    await session("/end");
  } finally {
    adopt(null);
  }
}

async function send(method, path, body, accept = "application/json") {
  const headers = { Accept: accept, ...authorization() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  return fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit", // the API is called with the token, never with a cookie
  });
}

/** Call the API: the decoded JSON answer (null for 204); an ApiError for any refusal. */
export async function api(method, path, body) {
  let response = await send(method, path, body);
  if (response.status === 401 && token && (await renew())) {
    response = await send(method, path, body);
  }
  if (response.status === 401) adopt(null);
  if (!response.ok) throw await errorOf(response);
  if (response.status === 204) return null;
  return response.json();
}

/** The API's answer as text (e.g. an invoice's HTML or a CSV), for a download. */
export async function apiText(path, accept) {
  const response = await send("GET", path, undefined, accept);
  if (!response.ok) throw await errorOf(response);
  return response.text();
}

/**
 * Read Server-Sent Events from `path` (GET, or POST with `body`), calling `onEvent(name, data)`
 * for each; resolves when the stream ends. `signal` (an AbortSignal) hangs up.
 */
export async function events(path, { body, signal, onEvent }) {
  const headers = { Accept: "text/event-stream", ...authorization() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method: body === undefined ? "GET" : "POST",
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    credentials: "omit",
  });
  if (!response.ok) throw await errorOf(response);
  if (!(response.headers.get("Content-Type") || "").startsWith("text/event-stream")) {
    onEvent("chunk", { sequence: 0, data: (await response.json()).result });
    return;
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}
