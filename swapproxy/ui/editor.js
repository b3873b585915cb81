// swapproxy UI: the model form and the config editor. Self-contained: two <dialog>s in index.html,
// this module, and one hook for the models page (a row's Edit button calls editModel).
// The model form uses llamactl's instance API (POST/PUT/DELETE api/v1/instances/{id}); the editor
// GET/PUT api/config. Both are validated by swapproxy exactly like a reload of the file: a problem
// comes back with its file, line and key path, and is shown at its field (the form) or by its line
// (the editor). After a change the event stream says "config" and app.js re-reads the models.

import { $, call } from "./common.js";

const FIELDS = ["cmd", "name", "description", "aliases", "ttl", "checkEndpoint"];
const form = { id: null, version: null, original: {} };
const editor = { version: null, files: [] };

function message(data, status) {
  // llamactl's {"error": "..."} or swapproxy's {"error": {"message": ...}}
  const err = data && data.error;
  return (err && (err.message || err)) || `HTTP ${status}`;
}

// -- the model form ------------------------------------------------------------------------
function clearErrors() {
  for (const el of document.querySelectorAll("#model-form .field-error")) el.textContent = "";
  for (const el of document.querySelectorAll("#model-form [aria-invalid]")) el.removeAttribute("aria-invalid");
  $("#model-error").hidden = true;
  $("#model-error").textContent = "";
}

function showProblems(id, data, status) {
  // Each problem is at models.<id>.<key>...: shown under that key's field; the rest below the form.
  const rest = [];
  const problems = (data && (data.problems || (data.error && data.error.problems))) || [];
  for (const p of problems) {
    const prefix = `models.${id}.`;
    const key = p.key_path.startsWith(prefix) ? p.key_path.slice(prefix.length).split(/[.[]/)[0] : null;
    const slot = key && document.querySelector(`#model-form .field-error[data-key="${CSS.escape(key)}"]`);
    if (slot) {
      slot.textContent = `line ${p.line}: ${p.message}`;
      const input = document.querySelector(`#model-form [name="${CSS.escape(key)}"]`);
      if (input) input.setAttribute("aria-invalid", "true");
    } else {
      rest.push(`${p.file}:${p.line}: ${p.key_path}: ${p.message}`);
    }
  }
  if (!problems.length) rest.push(message(data, status));
  if (rest.length) {
    $("#model-error").textContent = rest.join("\n");
    $("#model-error").hidden = false;
  }
}

function valuesOf(entry) {
  // the entry as written -> the form's text fields
  const out = {};
  for (const key of FIELDS) {
    const v = entry[key];
    out[key] = v === undefined || v === null ? "" : key === "aliases" && Array.isArray(v)
      ? v.map((a) => (typeof a === "string" ? a : a.id)).join(", ") : String(v);
  }
  return out;
}

function fieldValue(key, text) {
  // the form's text -> the key's value in the entry (null: remove the key)
  text = text.trim();
  if (!text) return null;
  if (key === "aliases") return text.split(",").map((a) => a.trim()).filter(Boolean);
  if (key === "ttl") return Number.isFinite(Number(text)) ? Number(text) : text;
  return text;
}

async function openModel(id) {
  const f = $("#model-form");
  clearErrors();
  f.reset();
  form.id = id;
  form.version = null;
  form.original = {};
  $("#model-title").textContent = id ? `Edit ${id}` : "Add model";
  f.elements.id.value = id || "";
  f.elements.id.readOnly = Boolean(id);
  $("#model-delete").hidden = !id;
  $("#model-delete").dataset.armed = "";
  $("#model-delete").textContent = "Delete model";
  if (id) {
    const [status, data, resp] = await call("GET", `api/v1/instances/${encodeURIComponent(id)}`);
    if (status !== 200) {
      showProblems(id, data, status);
    } else {
      form.version = (resp.headers.get("ETag") || "").replace(/"/g, "") || null;
      form.original = valuesOf(data.options || {});
      for (const key of FIELDS) f.elements[key].value = form.original[key];
    }
  }
  $("#model-dialog").showModal();
  (id ? f.elements.cmd : f.elements.id).focus();
}

async function saveModel(event) {
  event.preventDefault();
  clearErrors();
  const f = $("#model-form");
  const id = form.id || f.elements.id.value.trim();
  if (!id) {
    document.querySelector('#model-form .field-error[data-key="id"]').textContent = "a model needs an id";
    f.elements.id.setAttribute("aria-invalid", "true");
    return;
  }
  const body = {};
  for (const key of FIELDS) {
    const text = f.elements[key].value;
    if (form.id && text.trim() === (form.original[key] || "").trim()) continue; // unchanged: left as written
    const value = fieldValue(key, text);
    if (value !== null || form.id) body[key] = value;
  }
  $("#model-save").disabled = true;
  try {
    const url = `api/v1/instances/${encodeURIComponent(id)}` + (form.id ? "" : "?start=0");
    const headers = form.id && form.version ? { "If-Match": `"${form.version}"` } : {};
    const [status, data] = await call(form.id ? "PUT" : "POST", url, body, headers);
    if ((status === 200 || status === 201) && data.warning) {
      form.id = id; // it exists now: a second save changes it
      showProblems(id, { error: data.warning }, status);
    } else if (status === 200 || status === 201) {
      $("#model-dialog").close();
    } else {
      showProblems(id, data, status);
    }
  } catch (err) {
    showProblems(id, { error: String(err) }, 0);
  } finally {
    $("#model-save").disabled = false;
  }
}

async function deleteModel() {
  // Two clicks: the first arms the button (no window.confirm: it blocks the page's events).
  const id = form.id;
  const button = $("#model-delete");
  if (!id) return;
  if (button.dataset.armed !== "1") {
    button.dataset.armed = "1";
    button.textContent = `Really delete ${id}? It is stopped and removed from the file`;
    return;
  }
  clearErrors();
  const headers = form.version ? { "If-Match": `"${form.version}"` } : {};
  const [status, data] = await call("DELETE", `api/v1/instances/${encodeURIComponent(id)}`, undefined, headers);
  if (status === 204) $("#model-dialog").close();
  else showProblems(id, data, status);
}

// -- the config editor ---------------------------------------------------------------------
function showFile(path) {
  const file = editor.files.find((f) => f.path === path) || editor.files[0];
  if (!file) return;
  $("#config-text").value = file.text;
  const notes = [];
  if (!editor.edits) notes.push("Changes through the UI are turned off (instances.edits: false): this is a view.");
  else if (!file.writable) notes.push(`Read-only: ${file.read_only_reason}. ${editor.onReadOnly === "memory"
    ? "A change is applied in memory only (instances.onReadOnly: memory)." : "A change is refused (instances.onReadOnly: refuse)."}`);
  if (file.unsaved) notes.push("This text was changed in memory only: it is not what the file on disk says.");
  $("#config-note").textContent = notes.join(" ");
}

async function openConfig() {
  $("#config-errors").hidden = true;
  $("#config-result").textContent = "";
  const [status, data] = await call("GET", "api/config");
  if (status !== 200) {
    $("#config-note").textContent = message(data, status);
    $("#config-dialog").showModal();
    return;
  }
  editor.version = data.version;
  editor.files = data.files;
  editor.onReadOnly = data.on_read_only;
  editor.edits = data.edits;
  $("#config-file").innerHTML = data.files.map((f) => `<option>${f.path.replace(/[&<>"]/g, "")}</option>`).join("");
  $("#config-file-box").hidden = data.files.length < 2;
  showFile(data.files.length ? data.files[0].path : null);
  $("#config-dialog").showModal();
}

function goToLine(line) {
  const area = $("#config-text");
  const lines = area.value.split("\n");
  const start = lines.slice(0, Math.max(line - 1, 0)).reduce((n, l) => n + l.length + 1, 0);
  area.focus();
  area.setSelectionRange(start, start + (lines[line - 1] || "").length);
}

async function saveConfig(event) {
  event.preventDefault();
  const list = $("#config-errors");
  list.hidden = true;
  list.innerHTML = "";
  $("#config-result").textContent = "";
  const path = $("#config-file").value || (editor.files[0] && editor.files[0].path);
  $("#config-save").disabled = true;
  try {
    const [status, data] = await call("PUT", "api/config", { path, text: $("#config-text").value, version: editor.version });
    if (status === 200) {
      editor.version = data.version;
      const file = editor.files.find((f) => f.path === path);
      if (file) file.text = $("#config-text").value;
      const done = Object.entries(data.report || {}).filter(([, ids]) => ids.length)
        .map(([what, ids]) => `${what}: ${ids.join(", ")}`).join("; ");
      $("#config-result").textContent = `${data.saved ? "Saved and applied" : `Applied in memory only (${data.reason})`}` +
        (done ? ` — ${done}` : "");
      return;
    }
    const problems = (data.error && data.error.problems) || [];
    const items = problems.length ? problems : [{ line: 0, key_path: "", message: message(data, status) }];
    for (const p of items) {
      const li = document.createElement("li");
      li.textContent = p.line ? `line ${p.line}: ${p.key_path}: ${p.message}` : p.message;
      if (p.file && p.file !== path) li.textContent = `${p.file}:${li.textContent}`;
      li.dataset.line = p.line || "";
      list.appendChild(li);
    }
    list.hidden = false;
  } catch (err) {
    $("#config-result").textContent = String(err);
  } finally {
    $("#config-save").disabled = false;
  }
}

export const editModel = openModel;

export function init() {
  $("#add-model").addEventListener("click", () => openModel(null));
  $("#model-form").addEventListener("submit", saveModel);
  $("#model-cancel").addEventListener("click", () => $("#model-dialog").close());
  $("#model-delete").addEventListener("click", deleteModel);
  $("#edit-config").addEventListener("click", openConfig);
  $("#config-form").addEventListener("submit", saveConfig);
  $("#config-cancel").addEventListener("click", () => $("#config-dialog").close());
  $("#config-file").addEventListener("change", (e) => showFile(e.target.value));
  $("#config-errors").addEventListener("click", (e) => {
    const li = e.target.closest("li");
    if (li && li.dataset.line) goToLine(Number(li.dataset.line));
  });
}
