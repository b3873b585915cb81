// swapproxy UI: what every page shares — the live state fed by /api/events, a small event bus
// between the pages, formatting, and calls to the API (whose errors are OpenAI envelopes, or
// llamactl's {"error": "..."} below api/v1/). URLs are relative: the UI also works behind a
// path-prefixing reverse proxy. The browser sends the credentials it asked for at /ui (Basic,
// the key as the password) with every same-origin call, so the pages need no key of their own.

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

export const ui = {
  models: new Map(),       // id -> its ModelStatus (swapproxy/status.py), memory footprint, progress
  order: [],               // config order
  queueDepth: 0,
  devices: {},             // device -> {budget, planned, used, total} (memory budgets, GPUs' use)
  gpus: [],                // each GPU's last sample (/running?details=1)
  queue: [],               // the scheduler's queue by model (/running?details=1), with _at
  requests: new Map(),     // request id -> {id, model, method, path, remote, started}
  profiles: [],
  profile: null,
  peers: {},
  timeline: [],            // loads and stops (swapproxy/timeline.py), extended by live events
  version: "",
  notes: new Map(),        // model id -> its last action's error
  info: {},                // the last GET info
};

// -- a bus between the pages: app.js emits each /api/events event by its type -------------------
const listeners = new Map();
export function on(type, fn) {
  if (!listeners.has(type)) listeners.set(type, []);
  listeners.get(type).push(fn);
}
export function emit(type, payload) {
  for (const fn of listeners.get(type) || []) {
    try {
      fn(payload);
    } catch (err) {
      console.error(err); // one page's bug must not stop the others' updates
    }
  }
}

// -- formatting ------------------------------------------------------------------------------
export function esc(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${sec}s`;
  return `${sec}s`;
}

export function fmtMs(ms) {
  // a duration of milliseconds, short: 850 ms, 2.4 s, 1m 5s
  if (ms === null || ms === undefined || ms < 0) return "–";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return fmtSeconds(ms / 1000);
}

export function fmtNum(n, digits = 1) {
  // a figure the server may report as -1 (not reported) or leave out
  if (n === null || n === undefined || n < 0) return "–";
  return Number.isInteger(n) ? n.toLocaleString("en") : n.toFixed(digits);
}

export function fmtCompact(n) {
  // an axis label: 950, 1.5k, 500k, 2.5M
  const abs = Math.abs(n);
  if (abs >= 1e6) return `${+(n / 1e6).toFixed(1)}M`;
  if (abs >= 1e3) return `${+(n / 1e3).toFixed(1)}k`;
  return abs >= 10 || Number.isInteger(n) ? String(Math.round(n)) : n.toFixed(1);
}

export function fmtClock(seconds) {
  // wall time (Unix seconds) as HH:MM:SS, local
  return new Date(seconds * 1000).toLocaleTimeString("en-GB", { hour12: false });
}

export const now = () => Date.now() / 1000;

export function progressText(p, elapsed) {
  // a start's progress as text: "loading tensors · 45% · about 3s left", or a first start's
  // "first start: no estimate yet" (past starts' times give the estimate; there are none yet)
  if (!p) return `starting · ${fmtSeconds(elapsed)}`;
  const stage = p.stage;
  if (p.first_start || p.expected_s == null) return `${stage} · ${fmtSeconds(elapsed)} · first start: no estimate yet`;
  if (elapsed > p.expected_s) return `${stage} · ${fmtSeconds(elapsed)}, longer than its usual ${fmtSeconds(p.expected_s)}`;
  return `${stage} · ${Math.round(100 * (p.value || 0))}% · about ${fmtSeconds(p.expected_s - elapsed)} left`;
}

// -- the API -----------------------------------------------------------------------------------
export async function readInfo() {
  // GET info (a management route): the last reload's outcome, whether the page's key opens the
  // inference routes too; the last answer stays in ui.info
  const resp = await fetch("info");
  if (resp.ok) ui.info = await resp.json();
  return ui.info;
}

export async function call(method, url, body, headers) {
  // -> [status, parsed JSON body (or {}), response]
  const init = { method, headers: { ...(headers || {}) } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(url, init);
  const data = resp.status === 204 ? {} : await resp.json().catch(() => ({}));
  return [resp.status, data, resp];
}

export function errorText(data, status) {
  // an OpenAI envelope ({"error": {"message", "type", "code"}}), llamactl's {"error": "..."},
  // llama-server's own error object, or just the status
  const err = data && data.error;
  if (err && typeof err === "object") {
    const kind = err.type || err.code;
    return `${status ? `${status} ` : ""}${kind ? `${kind}: ` : ""}${err.message || JSON.stringify(err)}`;
  }
  if (typeof err === "string") return `${status ? `${status} ` : ""}${err}`;
  return status ? `HTTP ${status}` : "no answer";
}

// Colours for models, in config order (charts and legends agree).
const PALETTE = ["#2563eb", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d"];
export function modelColor(id) {
  let i = ui.order.indexOf(id);
  if (i < 0) i = [...id].reduce((h, c) => (h * 31 + c.charCodeAt(0)) >>> 0, 7) + ui.order.length;
  return PALETTE[i % PALETTE.length];
}
