// swapproxy UI, logs page: live lines from /api/events — all, swapproxy's own, or one model's
// output — with a filter, follow and clear. The snapshot brings each source's recent lines; a
// model's state changes are written into its log as "── swapproxy: old → new" lines.

import { $, esc, on, ui } from "./common.js";

const MAX_LINES = 2000;
const logs = new Map();  // source -> [{text, cls}]
let selected = "all";
let wanted = "all";  // the source the route asks for (it may come with the next snapshot)
let filter = "";

function lineClass(text) {
  if (/\b(ERROR|CRITICAL|error|failed)\b/.test(text)) return "err";
  if (/\bWARN(ING)?\b/.test(text)) return "warn";
  return "";
}

function pushLine(source, text, cls) {
  if (!logs.has(source)) logs.set(source, []);
  const lines = logs.get(source);
  lines.push({ text, cls });
  if (lines.length > MAX_LINES) lines.splice(0, lines.length - MAX_LINES);
}

export function appendLog(source, line, cls) {
  cls = cls || lineClass(line);
  pushLine(source, line, cls);
  const shown = source === "proxy" ? line : `[${source}] ${line}`;
  pushLine("all", shown, cls);
  if (selected === source) addToView(line, cls);
  else if (selected === "all") addToView(shown, cls);
}

function lineSpan(text, cls) {
  const span = document.createElement("span");
  if (cls) span.className = cls;
  span.textContent = text + "\n";
  return span;
}

function addToView(text, cls) {
  if (filter && !text.toLowerCase().includes(filter)) return;
  const view = $("#log-view");
  view.appendChild(lineSpan(text, cls));
  while (view.childNodes.length > MAX_LINES) view.removeChild(view.firstChild);
  if ($("#follow").checked) view.scrollTop = view.scrollHeight;
}

function renderLogView() {
  const view = $("#log-view");
  const frag = document.createDocumentFragment();
  for (const { text, cls } of logs.get(selected) || []) {
    if (!filter || text.toLowerCase().includes(filter)) frag.appendChild(lineSpan(text, cls));
  }
  view.replaceChildren(frag);
  view.scrollTop = view.scrollHeight;
}

function renderTabs() {
  $("#log-tabs").innerHTML = ["all", "proxy", ...ui.order].map((source) => {
    const m = ui.models.get(source);
    const label = source === "proxy" ? "swapproxy" : source;
    return `<button type="button" class="tab" role="tab" data-source="${esc(source)}" aria-selected="${source === selected}">` +
      `${m ? `<span class="dot ${esc(m.state)}"></span>` : ""}${esc(label)}</button>`;
  }).join("");
}

export function selectSource(source) {
  if (!["all", "proxy", ...ui.order].includes(source)) source = "all";
  selected = source;
  for (const b of document.querySelectorAll("#log-tabs .tab")) b.setAttribute("aria-selected", String(b.dataset.source === source));
  renderLogView();
}

export function show(arg) {
  // #/logs or #/logs/<source>
  wanted = arg ? decodeURIComponent(arg) : "all";
  selectSource(wanted);
}

export function init() {
  $("#log-tabs").addEventListener("click", (e) => {
    const tab = e.target.closest(".tab");
    if (tab) location.hash = tab.dataset.source === "all" ? "#/logs" : `#/logs/${encodeURIComponent(tab.dataset.source)}`;
  });
  $("#clear-log").addEventListener("click", () => {
    logs.set(selected, []);
    renderLogView();
  });
  $("#log-filter").addEventListener("input", (e) => {
    filter = e.target.value.trim().toLowerCase();
    renderLogView();
  });

  on("snapshot", (ev) => {
    logs.clear();
    for (const line of ev.logs.proxy || []) appendLog("proxy", line);
    for (const id of ui.order) for (const line of ev.logs[id] || []) appendLog(id, line);
    selected = ["all", "proxy", ...ui.order].includes(wanted) ? wanted : "all";
    renderTabs();
    renderLogView();
  });
  on("log", (ev) => appendLog(ev.source, ev.line));
  on("state", (ev) => {
    appendLog(ev.model, `── swapproxy: ${ev.old} → ${ev.state}${ev.error ? `: ${ev.error}` : ""}`, "src");
    const dot = document.querySelector(`#log-tabs .tab[data-source="${CSS.escape(ev.model)}"] .dot`);
    if (dot) dot.className = `dot ${ev.state}`;
  });
}
