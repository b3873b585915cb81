// swapproxy UI: two small SVG charts, hand-written (no library, nothing from the network):
// a time series per model (points joined by lines) and a timeline of lanes (one per model) with
// spans and markers. Each chart is an <svg role="img"> with a label saying what it shows; every
// point, span and marker has a <title> (the browser's tooltip). Colours come as SVG attributes,
// never style attributes, so the page's CSP (no inline styles) holds.

import { esc, fmtClock } from "./common.js";

const NS = "http://www.w3.org/2000/svg";

function node(name, attrs, parent, title) {
  const el = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (title) {
    const t = document.createElementNS(NS, "title");
    t.textContent = title;
    el.appendChild(t);
  }
  if (parent) parent.appendChild(el);
  return el;
}

function niceStep(span, ticks) {
  // 1, 2 or 5 times a power of ten, giving about `ticks` steps over `span`
  const raw = span / Math.max(ticks, 1);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  return (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10) * mag;
}

function timeTicks(t0, t1, count) {
  const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400];
  const step = steps.find((s) => (t1 - t0) / s <= count) || 86400;
  const out = [];
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) out.push(t);
  return out;
}

function svgRoot(container, width, height, label) {
  const svg = node("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label, class: "chart-svg" });
  container.replaceChildren(svg);
  return svg;
}

function timeAxis(svg, x, t0, t1, y, x0, x1) {
  node("line", { x1: x0, x2: x1, y1: y, y2: y, class: "axis" }, svg);
  for (const t of timeTicks(t0, t1, 5)) {
    node("line", { x1: x(t), x2: x(t), y1: y, y2: y + 4, class: "axis" }, svg);
    const label = node("text", { x: x(t), y: y + 15, "text-anchor": "middle", class: "tick" }, svg);
    label.textContent = fmtClock(t);
  }
}

function legend(container, series) {
  // an HTML list under the chart; its swatches are SVG (an attribute colour, not a style)
  const ul = document.createElement("ul");
  ul.className = "legend";
  ul.innerHTML = series.map((s) => `<li><svg width="10" height="10" aria-hidden="true"><rect width="10" height="10" rx="2" fill="${esc(s.color)}"/></svg>${esc(s.name)}${s.note ? ` <span class="muted">${esc(s.note)}</span>` : ""}</li>`).join("");
  container.appendChild(ul);
}

/**
 * A time series per model: `series` is [{name, color, points: [[unixSeconds, value], ...]}].
 * `format(value)` labels the tooltips, `tick(value)` the y axis (default: format); `empty` is
 * said when there is no point.
 */
export function lineChart(container, { series, label, format, tick = format, empty }) {
  const points = series.flatMap((s) => s.points);
  if (!points.length) {
    container.innerHTML = `<p class="muted chart-empty">${esc(empty)}</p>`;
    return;
  }
  const W = 560, H = 210, L = 56, R = 12, T = 10, B = 24;
  let t0 = Math.min(...points.map((p) => p[0])), t1 = Math.max(...points.map((p) => p[0]));
  if (t1 - t0 < 10) { t0 -= 5; t1 += 5; }
  const step = niceStep(Math.max(...points.map((p) => p[1])) || 1, 4);
  const yMax = step * Math.ceil((Math.max(...points.map((p) => p[1])) || 1) / step);
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => H - B - (v / yMax) * (H - B - T);
  const svg = svgRoot(container, W, H, `${label}: ${series.map((s) => `${s.name}, ${s.points.length} requests`).join("; ")}`);
  for (let v = 0; v <= yMax + step / 2; v += step) {
    node("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }, svg);
    node("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", class: "tick" }, svg).textContent = tick(v);
  }
  timeAxis(svg, x, t0, t1, H - B, L, W - R);
  for (const s of series) {
    const sorted = [...s.points].sort((a, b) => a[0] - b[0]);
    const g = node("g", { class: "series", "data-series": s.name }, svg);
    if (sorted.length > 1) {
      node("path", { d: sorted.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(""),
        fill: "none", stroke: s.color, "stroke-width": 1.5, "stroke-opacity": 0.6 }, g);
    }
    for (const [t, v] of sorted) {
      node("circle", { cx: x(t).toFixed(1), cy: y(v).toFixed(1), r: 3, fill: s.color, class: "point" }, g,
        `${s.name} · ${fmtClock(t)} · ${format(v)}`);
    }
  }
  legend(container, series);
}

/**
 * Lanes of spans and markers: `lanes` is [{name, color, note, spans: [{start, end, kind, title}],
 * marks: [{at, title}]}], over [t0, t1] (Unix seconds). A span's `kind` (ready, failed, stopped,
 * open) picks its look.
 */
export function timelineChart(container, { lanes, t0, t1, label, empty }) {
  if (!lanes.length) {
    container.innerHTML = `<p class="muted chart-empty">${esc(empty)}</p>`;
    return;
  }
  if (t1 - t0 < 10) t0 = t1 - 10;
  const W = 1140, LANE = 26, L = 150, R = 12, T = 6, B = 24;
  const H = T + lanes.length * LANE + B;
  const x = (t) => L + ((Math.min(Math.max(t, t0), t1) - t0) / (t1 - t0)) * (W - L - R);
  const svg = svgRoot(container, W, H, `${label}: ${lanes.map((l) => `${l.name} ${l.note}`).join("; ")}`);
  lanes.forEach((lane, i) => {
    const top = T + i * LANE;
    const g = node("g", { class: "lane", "data-lane": lane.name }, svg);
    node("line", { x1: L, x2: W - R, y1: top + LANE - 1, y2: top + LANE - 1, class: "grid" }, g);
    node("text", { x: 4, y: top + LANE / 2 + 4, class: "lane-name" }, g, `${lane.name}: ${lane.note}`).append(lane.name);
    for (const s of lane.spans) {
      const x0 = x(s.start), w = Math.max(x(s.end) - x0, 2);
      node("rect", { x: x0.toFixed(1), y: top + 5, width: w.toFixed(1), height: LANE - 11, rx: 2,
        fill: s.kind === "failed" ? "#dc2626" : s.kind === "stopped" ? "#9ca3af" : lane.color,
        "fill-opacity": s.kind === "open" ? 0.45 : 0.85, class: `span span-${s.kind}` }, g, s.title);
    }
    for (const m of lane.marks) {
      const mx = x(m.at);
      node("path", { d: `M${mx - 4},${top + 2}L${mx + 4},${top + 2}L${mx},${top + 9}Z`, fill: "#111827", class: "mark" },
        g, m.title);
      node("line", { x1: mx, x2: mx, y1: top + 9, y2: top + LANE - 4, stroke: "#111827", "stroke-dasharray": "2 2" }, g);
    }
  });
  timeAxis(svg, x, t0, t1, H - B, L, W - R);
  legend(container, lanes.map((l) => ({ name: l.name, color: l.color, note: l.note })));
}
