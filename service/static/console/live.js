// Live: the decisions of every line as they come (recent.js polls GET /recent), the OK / NG counts and a
// histogram of the recent scores per category against its threshold, and the latest NG parts' maps.

import { el, fmt, imageUrl, when } from "./api.js";
import { newest, recent, subscribe } from "./recent.js";

const ROWS = 50;
const THUMBS = 8;
let root = null;
let visible = false;
const thumbs = new Map(); // decision id -> object URL (or null while it loads, "" when it failed)

export function mount(section) {
  root = section;
  subscribe(() => visible && render());
}

export function show() {
  visible = true;
  render();
}

export function hide() {
  visible = false;
}

function render() {
  const status = root.querySelector("#live-status");
  if (recent.available === false) {
    status.textContent = "This service does not keep recent decisions.";
    return;
  }
  const source = recent.source === "redis" ? "every replica" : "this replica";
  status.textContent = recent.error
    ? `Not updating: ${recent.error}`
    : recent.updated
      ? `Decisions of ${source}, updated ${recent.updated.toLocaleTimeString()}.`
      : "Waiting for the service…";
  renderCategories();
  renderThumbs();
  renderTable();
}

function renderCategories() {
  const cards = Object.entries(recent.categories).map(([name, c]) => {
    const canvas = el("canvas", { width: "280", height: "90", "aria-label": `${name} score histogram` });
    drawHistogram(canvas, c.histogram);
    return el(
      "div",
      { class: "card category", "data-category": name },
      el("h4", { text: name }),
      el(
        "p",
        { class: "counts" },
        el("span", { class: "ok", text: `OK ${c.ok_last_hour}` }),
        el("span", { class: "ng", text: `NG ${c.ng_last_hour}` }),
        el("span", { class: "hint", text: "last hour" }),
      ),
      canvas,
    );
  });
  root.querySelector("#live-categories").replaceChildren(...cards);
}

/** Bars of the recent scores; bins above the threshold in red, the threshold as a line. */
function drawHistogram(canvas, h) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  if (!h || !h.count) {
    ctx.fillStyle = "#8a9099";
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillText("no decisions yet", 8, height / 2);
    return;
  }
  const lo = h.edges[0];
  const hi = h.edges[h.edges.length - 1];
  const x = (v) => ((v - lo) / (hi - lo || 1)) * width;
  const top = Math.max(...h.counts, 1);
  h.counts.forEach((count, i) => {
    const above = h.threshold !== null && h.edges[i] >= h.threshold;
    ctx.fillStyle = above ? "#d9534f" : "#4caf50";
    const bar = ((height - 14) * count) / top;
    ctx.fillRect(x(h.edges[i]) + 0.5, height - 12 - bar, Math.max(1, x(h.edges[i + 1]) - x(h.edges[i]) - 1), bar);
  });
  if (h.threshold !== null) {
    ctx.strokeStyle = "#f5f5f5";
    ctx.setLineDash([3, 2]);
    ctx.beginPath();
    ctx.moveTo(x(h.threshold), 0);
    ctx.lineTo(x(h.threshold), height - 12);
    ctx.stroke();
    ctx.setLineDash([]);
  }
  ctx.fillStyle = "#8a9099";
  ctx.font = "10px system-ui, sans-serif";
  ctx.fillText(fmt(lo, 2), 0, height - 1);
  const right = fmt(hi, 2);
  ctx.fillText(right, width - ctx.measureText(right).width, height - 1);
}

function renderThumbs() {
  const ng = newest().filter((d) => d.decision === "NG" && d.has_map).slice(0, THUMBS);
  const keep = new Set(ng.map((d) => d.id));
  for (const [id, url] of thumbs) {
    if (!keep.has(id)) {
      if (url) URL.revokeObjectURL(url);
      thumbs.delete(id);
    }
  }
  const figures = ng.map((d) => {
    const img = el("img", { alt: `${d.category} ${d.sample_id || d.id}` });
    const url = thumbs.get(d.id);
    if (url) img.src = url;
    else if (url === undefined) {
      thumbs.set(d.id, null);
      imageUrl(`recent/${encodeURIComponent(d.id)}/map?kind=overlay&max_side=200`)
        .then((u) => {
          thumbs.set(d.id, u);
          if (visible) renderThumbs();
        })
        .catch(() => thumbs.set(d.id, ""));
    }
    return el(
      "figure",
      { class: "thumb", "data-id": d.id },
      img,
      el("figcaption", { text: `${d.category} · ${d.sample_id || when(d.time)} · ${fmt(d.image_score, 2)}` }),
    );
  });
  root.querySelector("#live-thumbs").replaceChildren(...figures);
}

function renderTable() {
  const rows = newest(ROWS).map((d) =>
    el(
      "tr",
      { "data-id": d.id },
      el("td", { text: when(d.time) }),
      el("td", { text: d.category }),
      el("td", { text: d.sample_id || "–" }),
      el("td", { class: "num", text: fmt(d.image_score) }),
      el("td", { class: "num", text: fmt(d.threshold) }),
      el("td", {}, el("span", { class: `badge ${d.decision.toLowerCase()}`, text: d.decision })),
      el("td", { class: "num", text: String(d.regions) }),
      el("td", { class: "num", text: fmt(d.peak) }),
      el("td", { class: "num", text: fmt(d.latency_ms, 1) }),
      el("td", {}, el("a", { href: `#review/${encodeURIComponent(d.id)}`, text: "Review" })),
    ),
  );
  root.querySelector("#live-table tbody").replaceChildren(...rows);
}
