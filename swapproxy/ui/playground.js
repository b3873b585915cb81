// swapproxy UI, playground: chat with any model (streamed: POST v1/chat/completions with
// "stream": true, each token shown as it arrives, a Stop button that cuts the stream) and
// embeddings (POST v1/embeddings: the vector's length and first values). The model list is
// v1/models. Errors are shown from the OpenAI envelope the server sends (or, inside a stream,
// the error event that ends it). These are inference routes: the browser's credentials for the
// UI open them when the same key opens both tiers; otherwise an inference key can be given in
// Settings (kept in this page's memory only, sent as a Bearer token). The page never calls them
// with the browser's credentials when /info says those do not open them: a browser forgets its
// credentials on a 401, and the whole UI (its event stream, its actions) would lose them.

import { $, errorText, esc, fmtMs, on, progressText, readInfo, ui } from "./common.js";

const chat = { messages: [], controller: null, model: null, waitingFirst: false };

function authHeaders() {
  const headers = { "Content-Type": "application/json" };
  const key = $("#pg-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

const NEEDS_KEY = "This page's key opens the management routes only: give an inference API key in Settings.";

function showError(id, text) {
  const box = $(id);
  box.hidden = !text;
  box.textContent = text || "";
  if (text && /\b401 /.test(text)) box.textContent += `\n${NEEDS_KEY}`;
  if (text && text.includes(NEEDS_KEY)) $(".pg-settings").open = true;
}

async function mayCall(errorBox) {
  // whether an inference call may go now: with a key given here, or with the browser's own
  // credentials where they open those routes too (asked of /info, a management route)
  if ($("#pg-key").value.trim() || (await readInfo()).key_opens_inference !== false) return true;
  showError(errorBox, NEEDS_KEY);
  return false;
}

async function failure(resp) {
  const data = await resp.json().catch(() => null);
  return errorText(data, resp.status);
}

// -- the model list -------------------------------------------------------------------------------
async function loadModels() {
  const select = $("#pg-model");
  let ids = [];
  try {
    if (await mayCall("#pg-error")) {
      const resp = await fetch("v1/models", { headers: authHeaders() });
      if (resp.ok) {
        ids = ((await resp.json()).data || []).map((m) => m.id);
        showError("#pg-error", "");
      } else {
        showError("#pg-error", `GET v1/models: ${await failure(resp)}`);
      }
    }
  } catch (err) {
    showError("#pg-error", `GET v1/models: ${err}`);
  }
  if (!ids.length) ids = [...ui.order]; // the configured models, at least
  const current = select.value || ui.order.find((id) => (ui.models.get(id) || {}).state === "ready") || ids[0];
  select.innerHTML = ids.map((id) => `<option${id === current ? " selected" : ""}>${esc(id)}</option>`).join("");
  renderModelState();
}

function renderModelState() {
  const m = ui.models.get($("#pg-model").value);
  const text = !m ? "" : m.state === "ready" ? "running" : m.state === "starting" ? "starting…"
    : m.state === "failed" ? "failed to start: a request tries again" : "not running: the first request loads it";
  $("#pg-model-state").textContent = text;
}

// -- chat ----------------------------------------------------------------------------------------
function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg msg-${role}`;
  div.dataset.role = role;
  div.innerHTML = `<div class="msg-role">${role === "user" ? "You" : esc($("#pg-model").value)}</div>` +
    `<details class="reasoning" hidden><summary>reasoning</summary><div class="reasoning-text"></div></details>` +
    `<div class="msg-content"></div><div class="msg-meta muted"></div>`;
  div.querySelector(".msg-content").textContent = text;
  $("#pg-transcript").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function chatBody(model) {
  const body = { model, messages: [...chat.messages], stream: true, stream_options: { include_usage: true } };
  const system = $("#pg-system").value.trim();
  if (system) body.messages.unshift({ role: "system", content: system });
  const maxTokens = $("#pg-max-tokens").value.trim();
  if (maxTokens) body.max_tokens = Number(maxTokens);
  const temperature = $("#pg-temperature").value.trim();
  if (temperature) body.temperature = Number(temperature);
  const extra = $("#pg-extra").value.trim();
  if (extra) {
    const parsed = JSON.parse(extra); // a SyntaxError is shown to the user
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new SyntaxError("the extra body must be a JSON object");
    Object.assign(body, parsed);
  }
  return body;
}

async function* sseData(stream) {
  // the data of each server-sent event (comments, such as keep-alives, are skipped)
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r/g, "");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (data) yield data;
    }
  }
}

function setBusy(busy) {
  $("#pg-send").disabled = busy;
  $("#pg-stop").disabled = !busy;
}

function setStatus(text) {
  $("#pg-status").textContent = text;
}

function metaText(tokens, timings, usage, started, firstAt) {
  const parts = [];
  const n = timings && timings.predicted_n != null ? timings.predicted_n : usage && usage.completion_tokens;
  if (n != null) parts.push(`${n} tokens`);
  if (timings && timings.predicted_per_second) parts.push(`${timings.predicted_per_second.toFixed(1)} tokens/s`);
  else if (tokens > 1 && firstAt) parts.push(`${((tokens - 1) / ((performance.now() - firstAt) / 1000 || 1)).toFixed(1)} chunks/s`);
  if (firstAt) parts.push(`first token after ${fmtMs(firstAt - started)}`);
  parts.push(`${fmtMs(performance.now() - started)} in all`);
  return parts.join(" · ");
}

async function send(event) {
  event.preventDefault();
  if (chat.controller) return;
  const text = $("#pg-input").value.trim();
  const model = $("#pg-model").value;
  if (!text || !model) return;
  showError("#pg-error", "");
  if (!(await mayCall("#pg-error"))) return;
  chat.messages.push({ role: "user", content: text });
  let body;
  try {
    body = chatBody(model);
  } catch (err) {
    chat.messages.pop();
    showError("#pg-error", `Settings: ${err.message}`);
    return;
  }
  const asked = bubble("user", text);
  $("#pg-input").value = "";
  const answer = bubble("assistant", "");
  answer.classList.add("streaming");
  const content = answer.querySelector(".msg-content");
  const controller = new AbortController();
  Object.assign(chat, { controller, model, waitingFirst: true });
  setBusy(true);
  setStatus(`waiting for ${model}…`);
  const started = performance.now();
  let firstAt = null, chunks = 0, reply = "", reasoning = "", timings = null, usage = null, error = null, stopped = false;
  try {
    const resp = await fetch("v1/chat/completions", { method: "POST", headers: authHeaders(), body: JSON.stringify(body),
                                                      signal: controller.signal });
    if (!resp.ok) {
      error = await failure(resp);
    } else if (!(resp.headers.get("Content-Type") || "").includes("text/event-stream")) {
      const data = await resp.json(); // a server that does not stream: the whole answer at once
      reply = (data.choices && data.choices[0] && data.choices[0].message && data.choices[0].message.content) || "";
      content.textContent = reply;
      ({ timings, usage } = data);
    } else {
      for await (const data of sseData(resp.body)) {
        if (data === "[DONE]") break;
        const obj = JSON.parse(data);
        if (obj.error) { // an error inside the stream (after the 200): it ends the stream
          error = errorText(obj, 0);
          break;
        }
        if (obj.id === "swapproxy-loading") { // sendLoadingState: the load's progress, not the answer
          const delta = (obj.choices && obj.choices[0] && obj.choices[0].delta) || {};
          setStatus((delta.reasoning_content || "").trim() || `loading ${model}…`);
          continue;
        }
        const delta = (obj.choices && obj.choices[0] && obj.choices[0].delta) || {};
        if (delta.content) {
          if (firstAt === null) {
            firstAt = performance.now();
            chat.waitingFirst = false;
            setStatus("streaming…");
          }
          chunks += 1;
          reply += delta.content;
          content.textContent = reply;
        }
        if (delta.reasoning_content) {
          reasoning += delta.reasoning_content;
          const box = answer.querySelector(".reasoning");
          box.hidden = false;
          box.querySelector(".reasoning-text").textContent = reasoning;
        }
        if (obj.timings) timings = obj.timings;
        if (obj.usage) usage = obj.usage;
      }
    }
  } catch (err) {
    if (err.name === "AbortError") stopped = true;
    else error = String(err);
  }
  Object.assign(chat, { controller: null, waitingFirst: false });
  setBusy(false);
  answer.classList.remove("streaming");
  if (reply) chat.messages.push({ role: "assistant", content: reply });
  if (error) showError("#pg-error", error);
  if (!reply && (error || stopped)) { // nothing came: the question was not answered, so it is not kept
    chat.messages.pop();
    asked.classList.add("unanswered");
  }
  if (stopped) answer.classList.add("stopped");
  answer.querySelector(".msg-meta").textContent = (stopped ? "stopped · " : error ? "failed · " : "") +
    metaText(chunks, timings, usage, started, firstAt);
  if (!reply && !stopped && error) answer.remove();
  setStatus(stopped ? "stopped" : error ? "" : "done");
}

function clearChat() {
  if (chat.controller) chat.controller.abort();
  chat.messages = [];
  $("#pg-transcript").replaceChildren();
  showError("#pg-error", "");
  setStatus("");
}

// -- embeddings ------------------------------------------------------------------------------------
async function embed(event) {
  event.preventDefault();
  const model = $("#pg-model").value;
  const input = $("#pg-embed-input").value;
  if (!model || !input.trim()) return;
  showError("#pg-embed-error", "");
  if (!(await mayCall("#pg-embed-error"))) return;
  const result = $("#pg-embed-result");
  result.textContent = `waiting for ${model}…`;
  $("#pg-embed-run").disabled = true;
  const started = performance.now();
  try {
    const resp = await fetch("v1/embeddings", { method: "POST", headers: authHeaders(), body: JSON.stringify({ model, input }) });
    if (!resp.ok) {
      result.textContent = "";
      showError("#pg-embed-error", await failure(resp));
      return;
    }
    const data = await resp.json();
    const vector = (data.data && data.data[0] && data.data[0].embedding) || [];
    const norm = Math.sqrt(vector.reduce((s, v) => s + v * v, 0));
    const tokens = data.usage && data.usage.prompt_tokens != null ? ` · ${data.usage.prompt_tokens} tokens` : "";
    result.innerHTML = `<p><strong class="dims">${vector.length} dimensions</strong>${esc(tokens)} · norm ${norm.toFixed(4)} · ` +
      `${esc(fmtMs(performance.now() - started))}</p><p class="muted">first values</p>` +
      `<code class="vector">[${vector.slice(0, 8).map((v) => v.toFixed(4)).join(", ")}${vector.length > 8 ? ", …" : ""}]</code>`;
  } catch (err) {
    result.textContent = "";
    showError("#pg-embed-error", String(err));
  } finally {
    $("#pg-embed-run").disabled = false;
  }
}

// -- the page ----------------------------------------------------------------------------------------
function selectTab(which) {
  for (const [tab, panel] of [["#pg-tab-chat", "#pg-chat"], ["#pg-tab-embed", "#pg-embed"]]) {
    const on = tab === which;
    $(tab).setAttribute("aria-selected", String(on));
    $(panel).hidden = !on;
  }
}

let loaded = false;

export function show() {
  if (!loaded) {
    loaded = true;
    loadModels();
  }
  renderModelState();
}

export function init() {
  $("#pg-form").addEventListener("submit", send);
  $("#pg-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("#pg-form").requestSubmit();
  });
  $("#pg-stop").addEventListener("click", () => { if (chat.controller) chat.controller.abort(); });
  $("#pg-clear").addEventListener("click", clearChat);
  $("#pg-embed-form").addEventListener("submit", embed);
  $("#pg-model").addEventListener("change", renderModelState);
  $("#pg-key").addEventListener("change", loadModels); // a key given after a 401: the list, with it
  $("#pg-tab-chat").addEventListener("click", () => selectTab("#pg-tab-chat"));
  $("#pg-tab-embed").addEventListener("click", () => selectTab("#pg-tab-embed"));
  on("snapshot", () => { if (loaded) loadModels(); }); // models may have come or gone
  on("state", renderModelState);
  on("progress", (ev) => { // the model a question waits for is loading: say how far it is
    if (chat.waitingFirst && ev.model === chat.model) {
      setStatus(`${ev.model}: ${progressText(ev.progress, ev.progress.elapsed_s)}`);
    }
  });
}
