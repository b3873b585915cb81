// swapproxy UI, models page: every model's state with its load progress, memory (RSS, GPU, the
// footprint the scheduler plans for), requests in flight and TTL; Load / Unload / Stop now; the
// GPUs and memory budgets; the scheduler's queue; the peers; the requests in flight.
// States and counts come from /api/events (app.js); memory, GPUs, the queue and the peers from
// /running?details=1 (refreshDetails). Actions use the llama.cpp router routes /models/load and
// /models/unload, llama-swap's /api/profiles/active and /api/inflight/{id}/cancel.

import { $, call, errorText, esc, fmtBytes, fmtSeconds, now, on, progressText, ui } from "./common.js";
import { editModel } from "./editor.js";

const LABEL = {
  ready: "running", starting: "starting…", stopping: "stopping…",
  stopped: "stopped", failed: "failed", shutdown: "shut down",
};

// -- the models table ---------------------------------------------------------------------
function rowHtml(m) {
  const busy = m.state === "starting" || m.state === "stopping";
  const up = m.state === "ready" && m.ready_since ? now() - m.ready_since : null;
  const sub = [m.name, m.description, m.aliases && m.aliases.length ? `aliases: ${m.aliases.join(", ")}` : ""]
    .filter(Boolean).map(esc).join(" · ");
  const flight = `${m.inflight || 0}${m.waiting ? ` <span class="muted">+${m.waiting} waiting</span>` : ""}`;
  const ttl = m.ttl_remaining_s !== null && m.ttl_remaining_s !== undefined
    ? fmtSeconds(m.ttl_remaining_s - (now() - (m._at || now())))
    : (m.ttl_s ? `${fmtSeconds(m.ttl_s)} idle` : "–");
  const note = ui.notes.get(m.model);
  return `
    <td><div class="model-id">${esc(m.model)}</div>${sub ? `<div class="model-sub">${sub}</div>` : ""}
        ${note ? `<span class="toast">${esc(note)}</span>` : ""}</td>
    <td class="state-cell"><span class="state state-${esc(m.state)}" data-state="${esc(m.state)}">${esc(LABEL[m.state] || m.state)}</span>${starting(m)}</td>
    <td class="num pid">${m.pid ?? "–"}</td>
    <td class="num">${m.port ?? "–"}</td>
    <td class="num uptime">${fmtSeconds(up)}</td>
    <td class="num memory">${fmtBytes(m.rss_bytes)}${gpuHtml(m.gpu_memory)}${footprintHtml(m.memory)}</td>
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

function gpuHtml(held) {
  // what the model's processes hold on each GPU (per-process NVML)
  if (!held || !Object.keys(held).length) return "";
  const parts = Object.entries(held).map(([gpu, n]) => `${esc(gpu)} ${fmtBytes(n)}`);
  return `<div class="model-sub gpu-held" title="GPU memory its processes hold (NVML)">${parts.join(", ")}</div>`;
}

function footprintHtml(memory) {
  // what the scheduler plans for it (declared, learned or estimated), per device
  if (!memory) return "";
  const title = `footprint the scheduler plans for (${esc(memory.source)})`;
  if (!memory.bytes) return `<div class="model-sub footprint" title="${title}">plan: unknown</div>`;
  const parts = Object.entries(memory.bytes).map(([device, n]) => `${fmtBytes(n)} ${esc(device)}`);
  return `<div class="model-sub footprint" title="${title}">plan: ${parts.join(", ")} · ${esc(memory.source)}</div>`;
}

function starting(m) {
  // a start in progress: a bar (by past starts' times; none on a first start), its stage, the
  // time left, and how long it has run against its health-check timeout
  if (m.state !== "starting") return "";
  const p = m.progress;
  // between two progress events (every 0.5 s) the elapsed time goes on by the clock
  const elapsed = p ? p.elapsed_s + (now() - (p._at || now())) : now() - (m.state_since || now());
  const value = p && p.expected_s ? Math.min(elapsed / p.expected_s, 0.99) : null;
  const limit = m.health_check_timeout_s ? ` / ${fmtSeconds(m.health_check_timeout_s)}` : "";
  return ` <span class="since" title="time since spawn / health-check timeout">${fmtSeconds(elapsed)}${limit}</span>
    <div class="load-progress">
      <progress max="1" ${value === null ? "" : `value="${value.toFixed(3)}"`} aria-label="${esc(m.model)} load progress"></progress>
      <span class="progress-text">${esc(progressText(p, elapsed))}</span>
    </div>`;
}

function errorHtml(m) {
  const breaker = m.breaker_open_s ? ` Requests are refused for ${fmtSeconds(m.breaker_open_s)} (circuit breaker); Load retries now.` : "";
  const tail = (m.log_tail || []).join("\n");
  return `<td colspan="9"><div class="error-box"><strong>Start failed: ${esc(m.error || "unknown error")}${esc(breaker)}</strong>
    ${tail ? `<pre>${esc(tail)}</pre>` : ""}</div></td>`;
}

function renderRow(id) {
  const m = ui.models.get(id);
  if (!m) return;
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
  if (ui.queueDepth) parts.push(`${ui.queueDepth} queued`);  // (budgets: the GPUs and memory cards)
  $("#summary").textContent = parts.join(" · ");
}

// -- GPUs and memory budgets ----------------------------------------------------------------
function heldOn(device) {
  // the models holding memory on a GPU, most first
  return ui.order.map((id) => [id, ((ui.models.get(id) || {}).gpu_memory || {})[device]])
    .filter(([, n]) => n).sort((a, b) => b[1] - a[1]);
}

function deviceCard(device, gpu, budget) {
  const total = gpu ? gpu.memory_total : budget.budget;
  const used = gpu ? gpu.memory_used : budget.planned;
  const facts = [];
  if (gpu) {
    if (gpu.utilization_pct != null) facts.push(`${gpu.utilization_pct}% busy`);
    if (gpu.temperature_c != null) facts.push(`${gpu.temperature_c} °C`);
    if (gpu.power_w != null) facts.push(`${Math.round(gpu.power_w)}${gpu.power_limit_w ? ` / ${Math.round(gpu.power_limit_w)}` : ""} W`);
  }
  const plan = budget && budget.budget != null
    ? `<div class="model-sub">budget ${fmtBytes(budget.budget)} · planned ${fmtBytes(budget.planned)}</div>` : "";
  const held = gpu ? heldOn(device).map(([id, n]) => `<li><span class="model-id">${esc(id)}</span> ${fmtBytes(n)}</li>`).join("") : "";
  const label = gpu ? `${device} memory used` : `${device} memory planned`;
  return `<article class="card" data-device="${esc(device)}" aria-label="${esc(device)}">
    <h3>${esc(device)}${gpu && gpu.name ? ` <span class="muted">${esc(gpu.name)}</span>` : ""}</h3>
    <meter min="0" max="${total || 1}" value="${used || 0}" high="${0.9 * (total || 1)}" aria-label="${esc(label)}"></meter>
    <div class="meter-text">${fmtBytes(used)} of ${fmtBytes(total)} ${gpu ? "used" : "planned"}${facts.length ? ` · ${facts.join(" · ")}` : ""}</div>
    ${plan}
    ${held ? `<ul class="held" aria-label="models on ${esc(device)}">${held}</ul>` : ""}
  </article>`;
}

function renderGpus() {
  const cards = [];
  const seen = new Set();
  for (const gpu of ui.gpus) {
    const device = gpu.device || `gpu${gpu.index}`;
    seen.add(device);
    cards.push(deviceCard(device, gpu, ui.devices[device]));
  }
  for (const [device, d] of Object.entries(ui.devices)) {  // budgets without a GPU sample (host, declared)
    if (!seen.has(device) && d.budget != null) cards.push(deviceCard(device, null, d));
  }
  $("#gpu-section").hidden = cards.length === 0;
  $("#gpus").innerHTML = cards.join("");
}

// -- the scheduler's queue ------------------------------------------------------------------
function swapText(q) {
  if (!q.swap) {
    const m = ui.models.get(q.model);
    return m && m.state === "stopping" ? "waits for it to stop" : "not begun: its turn, or the models it would stop still serve";
  }
  const stops = q.swap.stops.length ? q.swap.stops.map(esc).join(", ") : "nothing";
  return q.swap.phase === "draining" ? `draining ${stops} (their requests finish first)` : `stopping ${stops}`;
}

function renderQueue() {
  const rows = ui.queue.map((q) => `<tr data-queued="${esc(q.model)}">
    <td class="model-id">${esc(q.model)}</td><td class="num">${q.waiting}</td>
    <td class="num wait">${fmtSeconds(q.oldest_wait_s + (now() - q._at))}</td>
    <td class="num">${q.priority}</td><td class="swap">${swapText(q)}</td></tr>`);
  const waiting = ui.queue.reduce((n, q) => n + q.waiting, 0);
  $("#queue tbody").innerHTML = rows.join("");
  $("#queue").hidden = rows.length === 0;
  $("#no-queue").hidden = rows.length > 0;
  $("#queue-depth").textContent = waiting ? `· ${waiting} request(s) waiting` : "";
}

// -- peers, requests in flight and the profile ------------------------------------------------
function renderPeers() {
  // Peers: remote servers whose models this one forwards to (never swapped here).
  const ids = Object.keys(ui.peers);
  $("#peers-section").hidden = ids.length === 0;
  $("#peers tbody").innerHTML = ids.map((id) => {
    const p = ui.peers[id];
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

function renderRequests() {
  const t = now();
  $("#requests tbody").innerHTML = [...ui.requests.values()].map((r) => `
    <tr data-request="${esc(r.id)}">
      <td class="num">#${esc(r.id)}</td><td>${esc(r.model)}</td>
      <td class="path">${esc(r.method)} ${esc(r.path)}</td><td>${esc(r.remote || "–")}</td>
      <td class="num age">${fmtSeconds(t - r.started)}</td>
      <td class="actions"><button type="button" class="small cancel" data-cancel="${esc(r.id)}"
        title="cut this request: its client gets an error">Cancel</button></td>
    </tr>`).join("");
  $("#no-requests").hidden = ui.requests.size > 0;
}

function renderProfiles() {
  $("#profile").innerHTML = ["", ...ui.profiles].map((name) =>
    `<option value="${esc(name)}"${(ui.profile || "") === name ? " selected" : ""}>${esc(name || "(none)")}</option>`).join("");
  $("#profile-box").hidden = ui.profiles.length === 0;
}

// -- /running?details=1 ------------------------------------------------------------------------
let detailsTimer = null;
let detailsBusy = false;
let detailsAgain = false;  // asked for while one was under way: once more after it

export async function refreshDetails() {
  if (detailsBusy) {
    detailsAgain = true;
    return;
  }
  detailsBusy = true;
  try {
    const resp = await fetch("running?details=1");
    if (!resp.ok) return;
    const body = await resp.json();
    const at = now();
    for (const id of ui.order) {
      // Only figures of the very process shown: the event stream is the truth for states and
      // counts, and may already be ahead of this answer.
      const m = ui.models.get(id);
      const d = (body.details || {})[id];
      if (!m) continue;
      if (d && m.pid != null && m.pid === d.pid) {
        m.rss_bytes = d.rss_bytes;
        m.gpu_memory = d.gpu_memory || null;
      } else if (!d) {
        m.gpu_memory = null;
      }
      if (d && d.memory) m.memory = d.memory;
    }
    ui.devices = body.devices || {};
    ui.gpus = body.gpus || [];
    ui.queue = (body.queue || []).map((q) => ({ ...q, _at: at }));
    ui.peers = body.peers || {};
    renderPeers();
    renderGpus();
    renderQueue();
    renderSummary();
    ui.order.forEach(renderRow);
  } catch (err) {
    // the event stream shows the connection state; nothing to add here
  } finally {
    detailsBusy = false;
    if (detailsAgain) {
      detailsAgain = false;
      refreshDetails();
    }
  }
}

function refreshSoon() {
  // the queue changed: read it again, at most every 300 ms, while the page is shown
  if ($("#page-models").hidden) return;
  if (detailsTimer === null) detailsTimer = setTimeout(() => { detailsTimer = null; refreshDetails(); }, 300);
}

// -- actions --------------------------------------------------------------------------------
async function act(action, id) {
  ui.notes.delete(id);
  try {
    // "force" is an unload that does not wait for the requests in flight (swapproxy's ?force=1)
    const [status, data] = await call("POST", action === "force" ? "models/unload?force=1" : `models/${action}`, { model: id });
    if (status >= 400) ui.notes.set(id, `${action} failed: ${errorText(data, status)}`);
  } catch (err) {
    ui.notes.set(id, `${action} failed: ${err}`);
  }
  renderRow(id);
}

async function post(url, method, body) {
  // a management action whose error is shown in the summary line
  try {
    const [status, data] = await call(method, url, body);
    if (status >= 400) $("#summary").textContent = `${method} ${url} failed: ${errorText(data, status)}`;
  } catch (err) {
    $("#summary").textContent = `${method} ${url} failed: ${err}`;
  }
}

export function init() {
  $("#models tbody").addEventListener("click", (e) => {
    const button = e.target.closest("button[data-action]");
    if (!button) return;
    const id = button.closest("tr").dataset.model;
    if (button.dataset.action === "logs") location.hash = `#/logs/${encodeURIComponent(id)}`;
    else if (button.dataset.action === "edit") editModel(id);
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
  $("#profile").addEventListener("change", (e) => post("api/profiles/active", "PUT", { name: e.target.value || null }));

  on("snapshot", () => {
    renderTable();
    renderRequests();
    renderProfiles();
    renderQueue();
    refreshDetails();
  });
  on("state", (ev) => {
    if (ev.state === "ready" || ev.state === "stopped") { // its memory, or none any more; GPU memory is
      refreshDetails();                                     // sampled off the event loop: read it again
      setTimeout(refreshDetails, 1000);                     // once that sample is in
    }
    renderRow(ev.model);
    renderSummary();
  });
  on("progress", (ev) => renderRow(ev.model));
  on("inflight", (ev) => {
    renderRow(ev.model);
    renderSummary();
    if (ev.waiting || ui.queue.length) refreshSoon();
    else renderQueue();
  });
  on("request", (ev) => {
    renderRequests();
    if (ev.op === "start") refreshSoon(); // it may wait for its model: the queue comes with the details
  });
  on("profile", renderProfiles);
  on("peer", refreshDetails); // a peer went up or down: its details (what is loaded there) come with /running

  setInterval(() => {  // uptimes, load progress, TTL countdowns, waits and request ages tick between events
    for (const id of ui.order) {
      const m = ui.models.get(id);
      if (m.state === "ready" || m.state === "starting") renderRow(id);
    }
    for (const cell of document.querySelectorAll("#requests tr[data-request] .age")) {
      const r = ui.requests.get(cell.closest("tr").dataset.request);
      if (r) cell.textContent = fmtSeconds(now() - r.started);
    }
    if (ui.queue.length) renderQueue();
  }, 1000);
  setInterval(refreshDetails, 5000);
}
