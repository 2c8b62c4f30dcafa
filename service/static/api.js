// The page's one way to call the API. A server with an API key protects the page with HTTP Basic:
// the browser asked for the key once when the page loaded and sends it with every same-origin
// request, <img src> included, so no key is ever handled, stored or put in a URL here. URLs are
// built on the origin: fetch() refuses URLs that inherit user:password@ from the address bar.
export const url = (path) => new URL(path, window.location.origin).href;

export class ApiError extends Error {
  constructor(status, reason, detail) {
    super(`${reason.replaceAll("_", " ")}${detail ? ": " + detail : ""}`);
    this.status = status;
    this.reason = reason;
  }
}

export async function call(path, options = {}) {
  const init = { ...options, headers: { ...(options.headers || {}) } };
  if (options.json !== undefined) {
    init.method = init.method || "POST";
    init.body = JSON.stringify(options.json);
    init.headers["Content-Type"] = "application/json";
    delete init.json;
  }
  const response = await fetch(url(path), init);
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = body && body.error ? body.error : { reason: `http_${response.status}`, detail: "" };
    if (response.status === 401) error.detail = "this server needs its API key: reload the page to sign in";
    throw new ApiError(response.status, error.reason, error.detail);
  }
  return body;
}

export function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

export function setStatus(node, text, kind) {
  node.textContent = text;
  node.className = "status" + (kind ? " " + kind : "");
}

export const words = (code) => String(code).replaceAll("_", " ");

export function duration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "–";
  if (seconds < 60) return `${Math.ceil(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}
