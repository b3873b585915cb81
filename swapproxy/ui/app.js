// swapproxy UI: one page, four views behind hash routes — #/models (states, load progress,
// memory and GPUs, the scheduler's queue), #/activity (the request history, its charts, swaps
// and loads), #/logs[/<source>] and #/playground (chat and embeddings with any model).
// Plain JS modules, no build step, nothing loaded from the network (the page's CSP allows only
// its own origin). This module keeps the one /api/events stream and hands each event to the
// pages (common.js's bus) after updating the shared state; /info's reload outcome feeds the
// banner.

import * as activity from "./activity.js";
import { $, $$, emit, now, readInfo, ui } from "./common.js";
import * as editor from "./editor.js";
import * as logs from "./logs.js";
import * as models from "./models.js";
import * as playground from "./playground.js";

const PAGES = { models, activity, logs, playground };

// -- hash routes --------------------------------------------------------------------------------
function route() {
  const [, wanted = "models", ...rest] = (location.hash || "#/models").split("/");
  const page = PAGES[wanted] ? wanted : "models";
  for (const el of $$(".page")) el.hidden = el.dataset.page !== page;
  for (const a of $$("nav.pages a")) {
    if (a.dataset.page === page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.title = `swapproxy · ${page}`;
  for (const [name, module] of Object.entries(PAGES)) if (name !== page && module.hide) module.hide();
  if (PAGES[page].show) PAGES[page].show(rest.join("/"));
}

// -- the event stream -----------------------------------------------------------------------------
function handle(ev) {
  const at = now();
  switch (ev.type) {
    case "snapshot":
      ui.models = new Map(ev.models.map((m) => [m.model, { ...m, _at: at, progress: m.progress && { ...m.progress, _at: at } }]));
      ui.order = ev.models.map((m) => m.model);
      ui.queueDepth = ev.queue_depth || 0;
      ui.devices = ev.devices || {};
      ui.requests = new Map((ev.requests || []).map((r) => [r.id, r]));
      ui.profiles = ev.profiles || [];
      ui.profile = ev.profile || null;
      ui.timeline = ev.timeline || [];
      ui.version = ev.version;
      $("#version").textContent = `v${ev.version}`;
      break;
    case "state": {
      const prev = ui.models.get(ev.model);
      // State events carry no memory figure (reading it walks the process table): keep the
      // last one for the same process; the models page asks for a fresh one.
      const next = { ...prev, ...ev, _at: at };
      if (!prev || prev.pid !== ev.pid) {
        next.rss_bytes = null;
        next.gpu_memory = null;
      }
      next.progress = ev.progress ? { ...ev.progress, _at: at } : null;
      ui.models.set(ev.model, next);
      if (ev.state !== "failed") ui.notes.delete(ev.model);
      timelineState(ev);
      break;
    }
    case "progress": {
      const m = ui.models.get(ev.model);
      if (m && m.state === "starting") {
        m.progress = { ...ev.progress, _at: at };
        m.stage = ev.progress.stage;
      }
      break;
    }
    case "inflight": {
      const m = ui.models.get(ev.model);
      if (m) Object.assign(m, { inflight: ev.inflight, waiting: ev.waiting, ttl_remaining_s: ev.ttl_remaining_s, _at: at });
      ui.queueDepth = ev.queue_depth;
      break;
    }
    case "request":
      if (ev.op === "start") ui.requests.set(ev.request.id, ev.request);
      else ui.requests.delete(ev.request.id);
      break;
    case "profile":
      ui.profile = ev.active || null;
      break;
    case "swap":
      ui.timeline.push({ kind: "stop", at: ev.at, cause: ev.cause, reason: ev.reason, stopped: ev.stopped, target: ev.target });
      break;
    case "config": // the config changed (an edit or a reload): models may have come or gone
      reconnect();
      return;
    default:
      break;
  }
  emit(ev.type, ev);
  if (ev.dropped) reconnect(); // we missed events: start again from a fresh snapshot
}

const TIMELINE_KEEP = 400; // loads and stops: the server's snapshot brings up to 200 of each

function timelineState(ev) {
  // a load runs from "starting" to its outcome (swapproxy/timeline.py keeps the same entries)
  if (ui.timeline.length > TIMELINE_KEEP) ui.timeline.splice(0, ui.timeline.length - TIMELINE_KEEP);
  if (ev.state === "starting") {
    ui.timeline.push({ kind: "load", model: ev.model, start: ev.state_since, end: null, outcome: null });
  } else if (ev.old === "starting") {
    const load = ui.timeline.findLast((e) => e.kind === "load" && e.model === ev.model && e.end === null);
    if (load) Object.assign(load, { end: ev.state_since, outcome: ev.state === "stopping" ? "stopped" : ev.state });
  }
}

let source = null;

function setConn(kind, text) {
  const conn = $("#conn");
  conn.className = `conn conn-${kind}`;
  conn.textContent = text;
}

function connect() {
  const es = new EventSource("api/events?logs=300");
  source = es;
  es.onopen = () => setConn("live", "live");
  es.onmessage = (msg) => handle(JSON.parse(msg.data));
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) {
      setConn("down", "disconnected — retrying");
      setTimeout(() => { if (source === es) connect(); }, 3000);
    } else {
      setConn("connecting", "reconnecting…");
    }
  };
}

function reconnect() {
  if (source) source.close();
  connect();
}

// -- the reload banner ----------------------------------------------------------------------------
let reloadCount = null;

async function refreshReload() {
  // /info carries the outcome of the last config reload (SIGHUP or --watch-config).
  try {
    const reload = (await readInfo()).reload || {};
    $("#reload-error").hidden = !reload.error;
    $("#reload-error-text").textContent = reload.error || "";
    if (reloadCount !== null && reload.count !== reloadCount && !reload.error) reconnect(); // models may have changed
    reloadCount = reload.count;
  } catch (err) {
    // the event stream shows the connection state; nothing to add here
  }
}

// Module scripts run once the document is parsed: the elements are there.
editor.init();
for (const page of Object.values(PAGES)) page.init();
window.addEventListener("hashchange", route);
route();
connect();
refreshReload();
setInterval(refreshReload, 3000);
