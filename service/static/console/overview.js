// Overview: every loaded category with its bank, thresholds and test figures (GET /categories), the banks
// that failed to load, and the last hour's OK / NG counts (GET /recent, via recent.js).

import { api, el, fmt, getJson } from "./api.js";
import { recent, subscribe } from "./recent.js";

let root = null;
let loaded = [];

export function mount(section) {
  root = section;
  subscribe(counts);
}

export async function show() {
  const error = root.querySelector("#overview-error");
  try {
    const answer = await getJson("categories");
    loaded = answer.categories;
    render(answer);
    error.hidden = true;
  } catch (err) {
    error.textContent = `Could not read the categories: ${err.message}`;
    error.hidden = false;
  }
}

function falseRejects(info) {
  const measured = info.calibration?.false_rejects;
  if (measured) {
    return `${pct(measured.rate)} (${pct(measured.low)} to ${pct(measured.high)}; ${measured.rejects} of ${measured.n})`;
  }
  const ev = info.evaluation;
  if (ev && ev.false_reject_rate !== undefined) {
    const [low, high] = ev.false_reject_ci || [null, null];
    return `${pct(ev.false_reject_rate)} (${pct(low)} to ${pct(high)}; test parts)`;
  }
  return "–";
}

function pct(x) {
  return x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)} %`;
}

function render(answer) {
  const body = root.querySelector("#categories tbody");
  body.replaceChildren(
    ...answer.categories.map((c) => {
      const ev = c.evaluation || {};
      return el(
        "tr",
        { "data-category": c.name },
        el("td", { text: c.name }),
        el("td", { text: c.fusion ? `${c.method} (${c.fusion})` : c.method }),
        el("td", { text: c.bank_version }),
        el("td", { class: "num", text: c.bank_size.toLocaleString() }),
        el("td", { class: "num", text: fmt(c.threshold) }),
        el("td", { class: "num", text: fmt(c.pixel_threshold) }),
        el("td", { class: "num", text: fmt(ev.image_auroc) }),
        el("td", { class: "num", text: fmt(ev.pixel_auroc) }),
        el("td", { class: "num", text: fmt(ev.au_pro) }),
        el("td", { class: "wrap", text: falseRejects(c), title: c.calibration?.false_rejects?.method || "" }),
        el("td", { class: "num ok-count", text: "–" }),
        el("td", { class: "num ng-count", text: "–" }),
        el("td", { class: "wrap drift", text: "–" }),
        el("td", {}, c.evaluation ? reportButton(c.name) : "–"),
      );
    }),
  );
  root.querySelector("#categories-empty").hidden = answer.categories.length > 0;
  for (const c of answer.categories) drift(c.name);
  const errors = Object.entries(answer.errors || {});
  const box = root.querySelector("#load-errors");
  box.hidden = errors.length === 0;
  box.querySelector("ul").replaceChildren(
    ...errors.map(([name, why]) => el("li", {}, el("strong", { text: name }), `: ${why}`)),
  );
  counts();
}

function counts() {
  if (!root) return;
  const categories = recent.categories || {};
  for (const row of root.querySelectorAll("#categories tbody tr")) {
    const c = categories[row.dataset.category];
    row.querySelector(".ok-count").textContent = c ? c.ok_last_hour : "–";
    row.querySelector(".ng-count").textContent = c ? c.ng_last_hour : "–";
  }
}

// Is the line drifting? GET /categories/C/drift: this replica's recent OK scores against the calibration goods',
// and the reviewed NG parts' false-alarm rate.
async function drift(name) {
  const cell = root.querySelector(`#categories tr[data-category="${CSS.escape(name)}"] .drift`);
  try {
    const d = await getJson(`categories/${encodeURIComponent(name)}/drift`);
    const scores =
      d.ks === null
        ? `${d.n_recent} OK, too few`
        : `KS ${fmt(d.ks, 2)}, ${d.shift >= 0 ? "+" : ""}${d.shift.toFixed(1)} IQR`;
    const reviewed = d.reviewed_ng ? `; FA ${d.false_alarms}/${d.reviewed_ng}` : "";
    cell.textContent = scores + reviewed;
    cell.title =
      `${d.n_recent} recent OK parts against ${d.n_calibration} calibration goods` +
      (d.ks === null ? " (10 recent OK parts needed)" : `: KS p = ${d.p_value.toPrecision(2)}`) +
      (d.reviewed_ng ? `; ${d.false_alarms} of ${d.reviewed_ng} reviewed NG parts were false alarms` : "");
    cell.classList.toggle("bad", d.p_value !== null && d.p_value < 0.01 && d.shift > 0);
  } catch (err) {
    cell.textContent = `– (${err.message})`;
  }
}

export function names() {
  return loaded.map((c) => c.name);
}

// The bank's evaluation report (GET /console/report/C) in a new tab: fetched with the key, shown from memory.
function reportButton(category) {
  const button = el("button", { type: "button", class: "link report", text: "open" });
  button.addEventListener("click", async () => {
    const tab = window.open("", "_blank");
    try {
      const page = await (await api(`console/report/${encodeURIComponent(category)}`)).blob();
      tab.location = URL.createObjectURL(new Blob([page], { type: "text/html" }));
    } catch (err) {
      tab.close();
      root.querySelector("#overview-error").textContent = `No report: ${err.message}`;
      root.querySelector("#overview-error").hidden = false;
    }
  });
  return button;
}
