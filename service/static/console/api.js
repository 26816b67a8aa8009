// Calls to the service's API with the operator's key. The key stays in this tab's sessionStorage and goes
// out as the X-API-Key header only, never in an address. Paths are relative, so the console also works
// behind a proxy that serves the service under a sub-path.

const KEY = "patchbank.apiKey";

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

let unauthorized = () => {};

/** Call fn when an answer says the key is missing or wrong (the console then asks for one). */
export function onUnauthorized(fn) {
  unauthorized = fn;
}

export function apiKey() {
  return sessionStorage.getItem(KEY);
}

export function setApiKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function clearApiKey() {
  sessionStorage.removeItem(KEY);
}

/** The reason a failed answer gives ({"detail": ...}), for a person to read. */
async function reason(res) {
  try {
    const body = await res.json();
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) return body.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
    return JSON.stringify(body);
  } catch {
    return `${res.status} ${res.statusText}`;
  }
}

/** fetch() with the key; throws ApiError on any answer but 2xx (401 also tells the console to sign in). */
export async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = apiKey();
  if (key) headers.set("X-API-Key", key);
  const res = await fetch(path, { ...options, headers });
  if (res.ok) return res;
  const detail = await reason(res);
  if (res.status === 401) unauthorized(detail);
  throw new ApiError(res.status, detail);
}

export async function getJson(path) {
  return (await api(path)).json();
}

export async function postJson(path, body) {
  const res = await api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return res.json();
}

/** An image the API guards with the key, as an object URL for an <img> (revoke it when done). */
export async function imageUrl(path) {
  const res = await api(path);
  return URL.createObjectURL(await res.blob());
}

/** Bytes of a base64 string. */
export function fromBase64(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

/** Little-endian float16 bytes -> Float32Array (the API's array maps). */
export function float16Array(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(bytes.byteLength / 2);
  for (let i = 0; i < out.length; i++) {
    const h = view.getUint16(2 * i, true);
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    if (exp === 0) out[i] = sign * 2 ** -14 * (frac / 1024);
    else if (exp === 31) out[i] = frac ? NaN : sign * Infinity;
    else out[i] = sign * 2 ** (exp - 15) * (1 + frac / 1024);
  }
  return out;
}

export function fmt(value, digits = 3) {
  return value === null || value === undefined || Number.isNaN(value) ? "–" : Number(value).toFixed(digits);
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

export function when(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString();
}
