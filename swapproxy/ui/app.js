// swapproxy UI: what is running, what is starting, why did it fail.
// Fed by /api/events (a snapshot, then state/log/inflight/request/profile/config/peer events) and,
// every few seconds, /running?details=1 (memory figures, the peers' health); actions use
// the llama.cpp router endpoints /models/load and /models/unload, llama-swap's
// /api/profiles/active and /api/inflight/{id}/cancel. Plain JS, no build step.
// URLs are relative so the page also works behind a path-prefixing reverse proxy.
"use strict";

const MAX_LINES = 2000;
const LABEL = {
  ready: "running", starting: "starting…", stopping: "stopping…",
  stopped: "stopped", failed: "failed", shutdown: "shut down",
};
const ui = {
  models: new Map(),       // id -> its ModelStatus (swapproxy/status.py) and memory footprint
  order: [],               // config order
  logs: new Map(),         // source -> [{text, cls}]
  selected: "all",
  queueDepth: 0,
  devices: {},             // device -> {budget, planned, used, total}
  notes: new Map(),        // id -> last action error
  source: null,            // the EventSource
  requests: new Map(),     // request id -> {id, model, method, path, remote, started}
  profiles: [],            // profile names
  profile: null,           // the active one
};

const $ = (sel) => document.querySelector(sel);

function esc(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${sec}s`;
  return `${sec}s`;
}

// -- the models table ---------------------------------------------------------------------
function rowHtml(m) {
  const busy = m.state === "starting" || m.state === "stopping";
  const up = m.state === "ready" && m.ready_since ? Date.now() / 1000 - m.ready_since : null;
  const sub = [m.name, m.description, m.aliases && m.aliases.length ? `aliases: ${m.aliases.join(", ")}` : ""]
    .filter(Boolean).map(esc).join(" · ");
  const flight = `${m.inflight || 0}${m.waiting ? ` <span class="muted">+${m.waiting} waiting</span>` : ""}`;
  const ttl = m.ttl_remaining_s !== null && m.ttl_remaining_s !== undefined
    ? fmtSeconds(m.ttl_remaining_s - (Date.now() / 1000 - (m._at || Date.now() / 1000)))
    : (m.ttl_s ? `${fmtSeconds(m.ttl_s)} idle` : "–");
  const note = ui.notes.get(m.model);
  return `
    <td><div class="model-id">${esc(m.model)}</div>${sub ? `<div class="model-sub">${sub}</div>` : ""}
        ${note ? `<span class="toast">${esc(note)}</span>` : ""}</td>
    <td><span class="state state-${esc(m.state)}" data-state="${esc(m.state)}">${esc(LABEL[m.state] || m.state)}</span>${starting(m)}</td>
    <td class="num pid">${m.pid ?? "–"}</td>
    <td class="num">${m.port ?? "–"}</td>
    <td class="num uptime">${fmtSeconds(up)}</td>
    <td class="num memory">${fmtBytes(m.rss_bytes)}${footprintHtml(m.memory)}</td>
    <td class="num inflight">${flight}</td>
    <td class="num">${m.state === "ready" ? ttl : "–"}</td>
    <td class="actions">
      <button type="button" class="load" data-action="load" ${m.state === "ready" || busy ? "disabled" : ""}>Load</button>
      <button type="button" class="unload" data-action="unload"
        ${m.state === "stopped" || m.state === "shutdown" || m.state === "stopping" ? "disabled" : ""}
        ${m.inflight ? 'title="waits for the requests in flight to finish"' : ""}>${m.state === "failed" ? "Clear" : "Unload"}</button>
      ${m.state === "ready" && m.inflight ? `<button type="button" class="force" data-action="force"
        title="stop it now, cutting the ${m.inflight} request(s) in flight">Stop now</button>` : ""}
      <button type="button" class="small" data-action="logs">Logs</button>
      <button type="button" class="small" data-action="edit" title="change or delete this model (ui/editor.js)">Edit</button>
    </td>`;
}

function footprintHtml(memory) {
  // what the scheduler plans for it (declared, learned or estimated), per device
  if (!memory) return "";
  const title = `footprint the scheduler plans for (${memory.source})`;
  if (!memory.bytes) return `<div class="model-sub footprint" title="${title}">plan: unknown</div>`;
  const parts = Object.entries(memory.bytes).map(([device, n]) => `${fmtBytes(n)} ${esc(device)}`);
  return `<div class="model-sub footprint" title="${title}">plan: ${parts.join(", ")} · ${esc(memory.source)}</div>`;
}

function starting(m) {
  // a start in progress: for how long, against its health-check timeout
  if (m.state !== "starting") return "";
  const since = m.state_since ? Date.now() / 1000 - m.state_since : 0;
  const limit = m.health_check_timeout_s ? ` / ${fmtSeconds(m.health_check_timeout_s)}` : "";
  return ` <span class="since" title="time since spawn / health-check timeout">${fmtSeconds(since)}${limit}</span>`;
}

function errorHtml(m) {
  const breaker = m.breaker_open_s ? ` Requests are refused for ${fmtSeconds(m.breaker_open_s)} (circuit breaker); Load retries now.` : "";
  const tail = (m.log_tail || []).join("\n");
  return `<td colspan="9"><div class="error-box"><strong>Start failed: ${esc(m.error || "unknown error")}${esc(breaker)}</strong>
    ${tail ? `<pre>${esc(tail)}</pre>` : ""}</div></td>`;
}

function renderRow(id) {
  const m = ui.models.get(id);
  const body = $("#models tbody");
  let row = body.querySelector(`tr[data-model="${CSS.escape(id)}"]`);
  if (!row) {
    row = document.createElement("tr");
    row.dataset.model = id;
    body.appendChild(row);
  }
  row.className = `row-${m.state}`;
  row.innerHTML = rowHtml(m);
  let err = row.nextElementSibling && row.nextElementSibling.classList.contains("error-row") ? row.nextElementSibling : null;
  if (m.state === "failed") {
    if (!err) {
      err = document.createElement("tr");
      err.className = "error-row";
      err.dataset.errorFor = id;
      row.after(err);
    }
    err.innerHTML = errorHtml(m);
  } else if (err) {
    err.remove();
  }
  const dot = document.querySelector(`.tab[data-source="${CSS.escape(id)}"] .dot`);
  if (dot) dot.className = `dot ${m.state}`;
}

function renderTable() {
  $("#models tbody").innerHTML = "";
  ui.order.forEach(renderRow);
  $("#empty").hidden = ui.order.length > 0;
  renderSummary();
}

function renderSummary() {
  const count = (s) => ui.order.filter((id) => ui.models.get(id).state === s).length;
  const parts = [`${count("ready")} running`];
  if (count("starting")) parts.push(`${count("starting")} starting`);
  if (count("failed")) parts.push(`${count("failed")} failed`);
  if (ui.queueDepth) parts.push(`${ui.queueDepth} queued`);
  for (const [device, d] of Object.entries(ui.devices)) {
    if (d.budget != null) parts.push(`${device}: ${fmtBytes(d.planned)} of ${fmtBytes(d.budget)} planned`);
  }
  $("#summary").textContent = parts.join(" · ");
}

// -- requests in flight and the profile -----------------------------------------------------
function renderRequests() {
  const body = $("#requests tbody");
  const now = Date.now() / 1000;
  body.innerHTML = [...ui.requests.values()].map((r) => `
    <tr data-request="${esc(r.id)}">
      <td class="num">#${esc(r.id)}</td><td>${esc(r.model)}</td>
      <td class="path">${esc(r.method)} ${esc(r.path)}</td><td>${esc(r.remote || "–")}</td>
      <td class="num age">${fmtSeconds(now - r.started)}</td>
      <td class="actions"><button type="button" class="small cancel" data-cancel="${esc(r.id)}"
        title="cut this request: its client gets an error">Cancel</button></td>
    </tr>`).join("");
  $("#no-requests").hidden = ui.requests.size > 0;
}

function renderProfiles() {
  const select = $("#profile");
  select.innerHTML = ["", ...ui.profiles].map((name) =>
    `<option value="${esc(name)}"${(ui.profile || "") === name ? " selected" : ""}>${esc(name || "(none)")}</option>`).join("");
  $("#profile-box").hidden = ui.profiles.length === 0;
}

async function post(url, method, body) {
  // A management action; its error (an OpenAI envelope) is logged in the swapproxy tab.
  try {
    const resp = await fetch(url, { method, headers: { "Content-Type": "application/json" },
                                    body: body === undefined ? undefined : JSON.stringify(body) });
    if (!resp.ok) {
      const err = await resp.json().catch(() => ({}));
      appendLog("proxy", `${method} ${url} failed: ${(err.error && err.error.message) || resp.status}`, "err");
    }
  } catch (err) {
    appendLog("proxy", `${method} ${url} failed: ${err}`, "err");
  }
}

// -- logs ----------------------------------------------------------------------------------
function lineClass(text) {
  if (/\b(ERROR|CRITICAL|error|failed)\b/.test(text)) return "err";
  if (/\bWARN(ING)?\b/.test(text)) return "warn";
  return "";
}

function pushLine(source, text, cls) {
  if (!ui.logs.has(source)) ui.logs.set(source, []);
  const lines = ui.logs.get(source);
  lines.push({ text, cls });
  if (lines.length > MAX_LINES) lines.splice(0, lines.length - MAX_LINES);
}

function appendLog(source, line, cls) {
  const entry = { text: line, cls: cls || lineClass(line) };
  pushLine(source, entry.text, entry.cls);
  const shown = source === "proxy" ? line : `[${source}] ${line}`;
  pushLine("all", shown, entry.cls);
  if (ui.selected === source) addToView(entry.text, entry.cls);
  else if (ui.selected === "all") addToView(shown, entry.cls);
}

function addToView(text, cls) {
  const view = $("#log-view");
  const span = document.createElement("span");
  if (cls) span.className = cls;
  span.textContent = text + "\n";
  view.appendChild(span);
  while (view.childNodes.length > MAX_LINES) view.removeChild(view.firstChild);
  if ($("#follow").checked) view.scrollTop = view.scrollHeight;
}

function renderLogView() {
  const view = $("#log-view");
  view.innerHTML = "";
  const frag = document.createDocumentFragment();
  for (const { text, cls } of ui.logs.get(ui.selected) || []) {
    const span = document.createElement("span");
    if (cls) span.className = cls;
    span.textContent = text + "\n";
    frag.appendChild(span);
  }
  view.appendChild(frag);
  view.scrollTop = view.scrollHeight;
}

function renderTabs() {
  const tabs = $("#log-tabs");
  tabs.innerHTML = "";
  for (const source of ["all", "proxy", ...ui.order]) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "tab";
    b.dataset.source = source;
    b.setAttribute("role", "tab");
    b.setAttribute("aria-selected", String(source === ui.selected));
    const m = ui.models.get(source);
    b.innerHTML = (m ? `<span class="dot ${esc(m.state)}"></span>` : "") + esc(source);
    tabs.appendChild(b);
  }
}

function selectSource(source) {
  ui.selected = source;
  for (const b of document.querySelectorAll(".tab")) b.setAttribute("aria-selected", String(b.dataset.source === source));
  renderLogView();
}

// -- events ---------------------------------------------------------------------------------
function handle(ev) {
  switch (ev.type) {
    case "snapshot": {
      ui.models = new Map(ev.models.map((m) => [m.model, { ...m, _at: Date.now() / 1000 }]));
      ui.order = ev.models.map((m) => m.model);
      ui.queueDepth = ev.queue_depth || 0;
      ui.devices = ev.devices || {};
      ui.logs = new Map();
      for (const line of ev.logs.proxy || []) appendLog("proxy", line);
      for (const id of ui.order) for (const line of ev.logs[id] || []) appendLog(id, line);
      $("#version").textContent = `v${ev.version}`;
      if (!["all", "proxy", ...ui.order].includes(ui.selected)) ui.selected = "all";
      ui.requests = new Map((ev.requests || []).map((r) => [r.id, r]));
      ui.profiles = ev.profiles || [];
      ui.profile = ev.profile || null;
      renderTabs();
      renderTable();
      renderLogView();
      renderRequests();
      renderProfiles();
      break;
    }
    case "request":
      if (ev.op === "start") ui.requests.set(ev.request.id, ev.request);
      else ui.requests.delete(ev.request.id);
      renderRequests();
      break;
    case "profile":
      ui.profile = ev.active || null;
      renderProfiles();
      break;
    case "peer":  // a peer went up or down: its details (what is loaded there) come with /running
      refreshDetails();
      break;
    case "state": {
      const prev = ui.models.get(ev.model);
      // State events carry no memory figure (reading it walks the process table): keep the
      // last one for the same process, and ask for a fresh one once a model is running.
      const next = { ...prev, ...ev, _at: Date.now() / 1000 };
      if (!prev || prev.pid !== ev.pid) next.rss_bytes = null;
      ui.models.set(ev.model, next);
      if (ev.state === "ready") refreshDetails();
      if (ev.state !== "failed") ui.notes.delete(ev.model);
      appendLog(ev.model, `── swapproxy: ${ev.old} → ${ev.state}${ev.error ? `: ${ev.error}` : ""}`, "src");
      renderRow(ev.model);
      renderSummary();
      break;
    }
    case "log":
      appendLog(ev.source, ev.line);
      break;
    case "config": // the config changed (an edit or a reload): models may have come or gone
      reconnect();
      return;
    case "inflight": {
      const m = ui.models.get(ev.model);
      if (m) {
        m.inflight = ev.inflight;
        m.waiting = ev.waiting;
        m.ttl_remaining_s = ev.ttl_remaining_s;
        m._at = Date.now() / 1000;
        renderRow(ev.model);
      }
      ui.queueDepth = ev.queue_depth;
      renderSummary();
      break;
    }
    default:
      break;
  }
  if (ev.dropped) reconnect(); // we missed events: start again from a fresh snapshot
}

function setConn(kind, text) {
  const conn = $("#conn");
  conn.className = `conn conn-${kind}`;
  conn.textContent = text;
}

function connect() {
  const es = new EventSource("api/events?logs=300");
  ui.source = es;
  es.onopen = () => setConn("live", "live");
  es.onmessage = (msg) => handle(JSON.parse(msg.data));
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) {
      setConn("down", "disconnected — retrying");
      setTimeout(() => { if (ui.source === es) connect(); }, 3000);
    } else {
      setConn("connecting", "reconnecting…");
    }
  };
}

function reconnect() {
  if (ui.source) ui.source.close();
  connect();
}

// -- actions --------------------------------------------------------------------------------
async function act(action, id) {
  ui.notes.delete(id);
  try {
    // "force" is an unload that does not wait for the requests in flight (swapproxy's ?force=1)
    const resp = await fetch(action === "force" ? "models/unload?force=1" : `models/${action}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: id }),
    });
    if (!resp.ok) {
      const body = await resp.json().catch(() => ({}));
      ui.notes.set(id, `${action} failed: ${(body.error && body.error.message) || resp.status}`);
    }
  } catch (err) {
    ui.notes.set(id, `${action} failed: ${err}`);
  }
  renderRow(id);
}

let reloadCount = null;

async function refreshReload() {
  // /info carries the outcome of the last config reload (SIGHUP or --watch-config).
  try {
    const resp = await fetch("info");
    if (!resp.ok) return;
    const reload = (await resp.json()).reload || {};
    const box = $("#reload-error");
    box.hidden = !reload.error;
    $("#reload-error-text").textContent = reload.error || "";
    if (reloadCount !== null && reload.count !== reloadCount && !reload.error) reconnect(); // models may have changed
    reloadCount = reload.count;
  } catch (err) {
    // the event stream shows the connection state; nothing to add here
  }
}

function renderPeers(peers) {
  // Peers: remote servers whose models this one forwards to (never swapped here).
  const ids = Object.keys(peers);
  $("#peers-section").hidden = ids.length === 0;
  $("#peers tbody").innerHTML = ids.map((id) => {
    const p = peers[id];
    const [cls, label] = p.up === null ? ["starting", "not probed yet"] : p.up ? ["ready", "up"] : ["failed", "down"];
    const models = Object.entries(p.models).map(([m, state]) =>
      `<span class="peer-model${state === "ready" ? " loaded" : ""}" title="${esc(state)}">${esc(m)}</span>`).join(" ");
    const note = p.up === false && p.error ? `<div class="model-sub">${esc(p.error)}</div>` : "";
    const latency = p.latency_ms != null ? `${p.latency_ms} ms` : "";
    return `<tr data-peer="${esc(id)}"><td><div class="model-id">${esc(id)}</div>` +
      `<div class="model-sub">${esc(p.proxy)}</div></td>` +
      `<td><span class="state state-${cls}">${label}</span>${note}</td><td>${models}</td>` +
      `<td class="num">${latency}</td></tr>`;
  }).join("");
}

async function refreshDetails() {
  try {
    const resp = await fetch("running?details=1");
    if (!resp.ok) return;
    const body = await resp.json();
    for (const [id, d] of Object.entries(body.details || {})) {
      // Only the memory figure, and only for the very process shown: the event stream is
      // the truth for states and counts, and may already be ahead of this answer.
      const m = ui.models.get(id);
      if (m && m.pid != null && m.pid === d.pid) m.rss_bytes = d.rss_bytes;
      if (m && d.memory) m.memory = d.memory;
    }
    if (body.devices) ui.devices = body.devices;
    renderPeers(body.peers || {});
    renderSummary();
    ui.order.forEach(renderRow);
  } catch (err) {
    // the event stream shows the connection state; nothing to add here
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#models tbody").addEventListener("click", (e) => {
    const button = e.target.closest("button[data-action]");
    if (!button) return;
    const id = button.closest("tr").dataset.model;
    if (button.dataset.action === "logs") selectSource(id);
    else if (button.dataset.action === "edit") window.editModel(id);
    else {
      button.disabled = true;
      act(button.dataset.action, id);
    }
  });
  $("#requests tbody").addEventListener("click", (e) => {
    const button = e.target.closest("button[data-cancel]");
    if (!button) return;
    button.disabled = true;
    post(`api/inflight/${encodeURIComponent(button.dataset.cancel)}/cancel`, "POST");
  });
  $("#profile").addEventListener("change", (e) => {
    post("api/profiles/active", "PUT", { name: e.target.value || null });
  });
  $("#log-tabs").addEventListener("click", (e) => {
    const tab = e.target.closest(".tab");
    if (tab) selectSource(tab.dataset.source);
  });
  $("#clear-log").addEventListener("click", () => {
    ui.logs.set(ui.selected, []);
    renderLogView();
  });
  connect();
  refreshReload();
  refreshDetails();
  setInterval(refreshReload, 3000);
  setInterval(() => {  // uptimes, TTL countdowns and request ages tick between events
    for (const id of ui.order) {
      const m = ui.models.get(id);
      if (m.state === "ready" || m.state === "starting") renderRow(id);
    }
    for (const cell of document.querySelectorAll("#requests tr[data-request] .age")) {
      const r = ui.requests.get(cell.closest("tr").dataset.request);
      if (r) cell.textContent = fmtSeconds(Date.now() / 1000 - r.started);
    }
  }, 1000);
  setInterval(refreshDetails, 5000);
});
