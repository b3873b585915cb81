// swapproxy UI, activity page: the request history (GET api/metrics/activity, llama-swap's
// route and shapes; totals from api/metrics/stats; a row's capture from api/captures/{id}), a
// chart of generation speed and one of time
// to first byte per model over time (from the latest 500 recorded requests), and a timeline of
// swaps and of time spent loading (the /api/events snapshot's timeline, extended by its live
// state and swap events). A recorded request is announced by an "activity" event: the page then
// reads the history again (at most once a second, and only while it is shown).

import { lineChart, timelineChart } from "./charts.js";
import { $, esc, fmtClock, fmtCompact, fmtMs, fmtNum, modelColor, now, on, ui } from "./common.js";

const CHART_ROWS = 500;
const COLUMNS = [  // [sort key, header, title]
  ["id", "#", "the request's id in the history"], ["time", "Time", ""], ["model", "Model", ""],
  ["req_path", "Request", ""], ["resp_status_code", "Status", ""],
  ["prompt", "Prompt", "prompt tokens (cached ones in brackets)"], ["generated", "Output", "generated tokens"],
  ["prompt_speed", "Prompt t/s", "prompt processing, tokens per second"],
  ["gen_speed", "Gen t/s", "generation, tokens per second"], ["ttfb", "TTFB", "time to the response's first byte"],
  ["wait", "Waited", "time the request waited for its model (a swap, a start, the queue)"],
  ["duration", "Duration", "the whole request"],
];
const view = { page: 1, limit: 25, sort: "id", order: "desc", model: "", shown: false, dirty: true, timer: null };

function query(extra) {
  const q = new URLSearchParams(extra);
  if (view.model) q.append("model", view.model);
  return q.toString();
}

async function getJson(url) {
  const resp = await fetch(url);
  const data = await resp.json().catch(() => null);
  return [resp.status, data];
}

// -- the table --------------------------------------------------------------------------------
function renderHead() {
  $("#activity thead tr").innerHTML = COLUMNS.map(([key, label, title]) => {
    const sorted = view.sort === key ? (view.order === "asc" ? "ascending" : "descending") : "none";
    return `<th aria-sort="${sorted}"${title ? ` title="${esc(title)}"` : ""}><button type="button" class="sort" data-sort="${key}">` +
      `${esc(label)}${sorted === "none" ? "" : sorted === "ascending" ? " ▲" : " ▼"}</button></th>`;
  }).join("");
}

function rowHtml(r) {
  const t = r.tokens || {};
  const failed = r.resp_status_code >= 400;
  const cached = t.cache_tokens > 0 ? ` <span class="muted">(${fmtNum(t.cache_tokens)})</span>` : "";
  const waited = r.waited_for ? `${esc(r.waited_for)} ${fmtMs(r.wait_ms)}` : "–";
  const error = r.error_msg ? `<div class="model-sub err-text">${esc(r.error_msg)}</div>` : "";
  return `<tr data-id="${r.id}" class="${failed ? "row-error" : ""}">
    <td class="num">${r.id}</td>
    <td class="num" title="${esc(r.timestamp)}">${fmtClock(Date.parse(r.timestamp) / 1000)}</td>
    <td class="model-id">${esc(r.model || "–")}</td>
    <td class="path">${esc(r.method || "")} ${esc(r.req_path)}${r.has_capture
      ? ` <button type="button" class="small" data-capture="${r.id}" title="what went to the model and what came back">capture</button>` : ""}${error}</td>
    <td class="num status">${r.resp_status_code}</td>
    <td class="num">${fmtNum(t.input_tokens)}${cached}</td><td class="num">${fmtNum(t.output_tokens)}</td>
    <td class="num">${fmtNum(t.prompt_per_second)}</td><td class="num gen-speed">${fmtNum(t.tokens_per_second)}</td>
    <td class="num ttfb">${fmtMs(r.ttfb_ms)}</td><td class="num">${waited}</td><td class="num">${fmtMs(r.duration_ms)}</td>
  </tr>`;
}

function unavailable(status, data) {
  $("#activity-table").hidden = true;
  $("#activity-stats").replaceChildren();
  const note = $("#activity-unavailable");
  note.hidden = false;
  note.textContent = status === 404
    ? "This swapproxy keeps no request history (GET api/metrics/activity: 404); the timeline below still shows swaps and loads."
    : `The request history could not be read: ${(data && data.error && (data.error.message || data.error)) || `HTTP ${status}`}`;
}

async function loadTable() {
  const [status, data] = await getJson(`api/metrics/activity?${query({
    limit: view.limit, page: view.page, sort: view.sort, order: view.order })}`);
  if (status !== 200 || !data) {
    unavailable(status, data);
    return false;
  }
  $("#activity-unavailable").hidden = true;
  $("#activity-table").hidden = false;
  $("#activity tbody").innerHTML = data.data.map(rowHtml).join("");
  $("#no-activity").hidden = data.total > 0;
  $("#activity-page").textContent = data.total ? `page ${data.page} of ${data.total_pages} · ${data.total} requests` : "";
  $("#activity-prev").disabled = data.page <= 1;
  $("#activity-next").disabled = data.page >= data.total_pages;
  $("#activity-status").textContent = `${data.total} request(s) recorded${view.model ? ` for ${view.model}` : ""}`;
  return true;
}

// -- a request's capture ---------------------------------------------------------------------------
function bodyText(b64) {
  // a base64 body as text (JSON indented; an event stream as it came)
  if (b64 === null || b64 === undefined) return null;
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const text = new TextDecoder().decode(bytes);
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch (err) {
    return text;
  }
}

async function showCapture(id) {
  const [status, c] = await getJson(`api/captures/${encodeURIComponent(id)}`);
  $("#capture-title").textContent = `Request #${id}${c && c.req_path ? ` · ${c.req_path}` : ""}`;
  const parts = status === 200 && c ? [
    ["Request headers", c.req_headers && Object.entries(c.req_headers).map(([k, v]) => `${k}: ${v}`).join("\n")],
    [`Request body${c.req_body_truncated ? " (cut)" : ""}`, bodyText(c.req_body)],
    ["Response headers", c.resp_headers && Object.entries(c.resp_headers).map(([k, v]) => `${k}: ${v}`).join("\n")],
    [`Response body${c.resp_body_truncated ? " (cut)" : ""}`, bodyText(c.resp_body)],
  ] : [];
  $("#capture-note").textContent = status === 200 ? "Secrets are shown as ***."
    : `No capture: ${(c && c.error && (c.error.message || c.error)) || `HTTP ${status}`} (the oldest go first).`;
  $("#capture-parts").innerHTML = parts.filter(([, text]) => text !== null && text !== undefined)
    .map(([title, text]) => `<section aria-label="${esc(title)}"><h3>${esc(title)}</h3><pre>${esc(text)}</pre></section>`).join("");
  $("#capture-dialog").showModal();
}

// -- totals and charts ----------------------------------------------------------------------------
async function loadStats() {
  const [status, s] = await getJson(`api/metrics/stats${view.model ? `?model=${encodeURIComponent(view.model)}` : ""}`);
  if (status !== 200 || !s) return;
  const p50 = (h) => (h && h.p50 != null ? `${h.p50.toFixed(1)} t/s` : "–");
  const items = [["Requests", fmtNum(s.total_requests)], ["Input tokens", fmtNum(s.total_input_tokens)],
    ["Output tokens", fmtNum(s.total_output_tokens)], ["Cached tokens", fmtNum(s.total_cache_tokens)],
    ["Prompt speed p50", p50(s.prompt_histogram)], ["Generation speed p50", p50(s.gen_histogram)]];
  $("#activity-stats").innerHTML = items.map(([k, v]) => `<div><dt>${k}</dt><dd>${v}</dd></div>`).join("");
}

function seriesOf(rows, pick) {
  // one series per model, in config order: [[time, value], ...] of the rows that report it
  const by = new Map();
  for (const r of rows) {
    const v = pick(r);
    if (v === null || v === undefined || v < 0 || !r.model) continue;
    if (!by.has(r.model)) by.set(r.model, []);
    by.get(r.model).push([Date.parse(r.timestamp) / 1000, v]);
  }
  const order = (m) => (ui.order.includes(m) ? ui.order.indexOf(m) : ui.order.length);
  return [...by.entries()].sort((a, b) => order(a[0]) - order(b[0]) || a[0].localeCompare(b[0]))
    .map(([name, points]) => ({ name, color: modelColor(name), points }));
}

async function loadCharts() {
  const [status, data] = await getJson(`api/metrics/activity?${query({ limit: CHART_ROWS, sort: "id", order: "desc" })}`);
  const rows = status === 200 && data ? data.data : [];
  lineChart($("#chart-speed"), {
    series: seriesOf(rows, (r) => (r.tokens && r.tokens.tokens_per_second > 0 ? r.tokens.tokens_per_second : null)),
    label: "Generation speed, tokens per second, per model over time",
    format: (v) => `${v >= 100 ? Math.round(v) : v.toFixed(1)} tokens/s`,
    tick: fmtCompact,
    empty: status === 200 ? "No generation speeds recorded yet." : "No request history.",
  });
  lineChart($("#chart-ttfb"), {
    series: seriesOf(rows, (r) => r.ttfb_ms),
    label: "Time to first byte per model over time",
    format: (v) => fmtMs(v),
    empty: status === 200 ? "No times to first byte recorded yet." : "No request history.",
  });
}

// -- the timeline of swaps and loads ---------------------------------------------------------------
function renderTimeline() {
  const t1 = now();
  const entries = ui.timeline.filter((e) => Number.isFinite(e.kind === "load" ? e.start : e.at));
  const names = ui.order.filter((id) => !view.model || id === view.model);
  const lanes = names.map((name) => {
    const loads = entries.filter((e) => e.kind === "load" && e.model === name);
    const spans = loads.map((e) => {
      const end = e.end ?? t1;
      const took = fmtMs(1000 * (end - e.start));
      const what = e.outcome === null ? `loading for ${took} so far` : e.outcome === "ready" ? `loaded in ${took}`
        : e.outcome === "failed" ? `failed after ${took}` : `stopped while loading, after ${took}`;
      return { start: e.start, end, kind: e.outcome || "open", title: `${name} · ${fmtClock(e.start)} · ${what}` };
    });
    const marks = entries.filter((e) => e.kind === "stop" && e.stopped.includes(name)).map((e) => ({
      at: e.at, title: `${name} stopped · ${fmtClock(e.at)} · ${e.reason}`,
    }));
    const total = loads.reduce((sum, e) => sum + ((e.end ?? t1) - e.start), 0);
    const note = loads.length ? `${loads.length} load(s), ${fmtMs(1000 * total)} loading` : "no loads";
    return { name, color: modelColor(name), note, spans, marks };
  }).filter((lane) => lane.spans.length || lane.marks.length);
  const times = entries.flatMap((e) => (e.kind === "load" ? [e.start] : [e.at]));
  const swaps = entries.filter((e) => e.kind === "stop" && e.cause === "swap").length;
  $("#timeline-note").textContent = entries.length ? `· ${swaps} swap(s) since ${fmtClock(Math.min(...times))}` : "";
  timelineChart($("#chart-timeline"), {
    lanes, t0: times.length ? Math.min(...times) : t1 - 60, t1,
    label: "Loads (spawn to ready) and stops of each model over time",
    empty: "No model has been loaded or stopped since swapproxy started.",
  });
}

// -- refreshes ----------------------------------------------------------------------------------
async function refresh() {
  view.dirty = false;
  renderHead();
  renderTimeline();
  if (await loadTable()) await Promise.all([loadStats(), loadCharts()]);
  else loadCharts();
}

function refreshSoon() {
  if (!view.shown) {
    view.dirty = true;
    return;
  }
  if (view.timer === null) view.timer = setTimeout(() => { view.timer = null; refresh(); }, 1000);
}

function renderModels() {
  const select = $("#activity-model");
  const models = [...new Set([...ui.order, ...(view.model ? [view.model] : [])])];
  select.innerHTML = `<option value="">all models</option>` +
    models.map((id) => `<option value="${esc(id)}"${id === view.model ? " selected" : ""}>${esc(id)}</option>`).join("");
}

export function show() {
  view.shown = true;
  if (view.dirty) refresh();
  else renderTimeline();
}

export function hide() {
  view.shown = false;
}

export function init() {
  $("#activity thead").addEventListener("click", (e) => {
    const button = e.target.closest("button[data-sort]");
    if (!button) return;
    const key = button.dataset.sort;
    view.order = view.sort === key && view.order === "desc" ? "asc" : "desc";
    view.sort = key;
    view.page = 1;
    refresh();
  });
  $("#activity tbody").addEventListener("click", (e) => {
    const button = e.target.closest("button[data-capture]");
    if (button) showCapture(button.dataset.capture);
  });
  $("#activity-model").addEventListener("change", (e) => {
    view.model = e.target.value;
    view.page = 1;
    refresh();
  });
  $("#activity-prev").addEventListener("click", () => { view.page = Math.max(1, view.page - 1); refresh(); });
  $("#activity-next").addEventListener("click", () => { view.page += 1; refresh(); });

  on("snapshot", () => {
    renderModels();
    refreshSoon();
  });
  on("activity", refreshSoon);
  for (const type of ["state", "swap"]) on(type, () => { if (view.shown) renderTimeline(); });
  setInterval(() => { if (view.shown && ui.timeline.some((e) => e.kind === "load" && e.end === null)) renderTimeline(); }, 1000);
}
