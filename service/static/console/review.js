// Review: an operator picks a recent decision, looks at the part's map, and records whether the decision
// was right (POST /feedback); the latest reviews are listed (GET /feedback). The reviewer's name is
// remembered in this browser.

import { el, fmt, getJson, imageUrl, postJson, when } from "./api.js";
import { newest, recent, subscribe } from "./recent.js";

const WHO = "patchbank.reviewer";
const LIST = 30;
let root = null;
let visible = false;
let picked = null; // the decision under review
let mapUrl = null;
let wanted = null; // the id in the address, until the decision has come in

const $ = (selector) => root.querySelector(selector);

export function mount(section) {
  root = section;
  $("#review-who").value = localStorage.getItem(WHO) || "";
  $("#review-form").addEventListener("submit", submit);
  subscribe(() => {
    if (!visible) return;
    if (wanted && recent.decisions.has(wanted)) pick(recent.decisions.get(wanted));
    renderList();
  });
}

export function show(hash) {
  visible = true;
  wanted = decodeURIComponent(hash.split("/")[1] || "") || null;
  if (wanted && recent.decisions.has(wanted)) pick(recent.decisions.get(wanted));
  renderList();
  loadFeedback();
}

export function hide() {
  visible = false;
}

function renderList() {
  const items = newest(LIST).map((d) =>
    el(
      "li",
      {
        "data-id": d.id,
        class: picked && picked.id === d.id ? "picked" : "",
        onclick: () => {
          history.replaceState(null, "", `#review/${encodeURIComponent(d.id)}`);
          pick(d);
          renderList();
        },
      },
      el("span", { class: `badge ${d.decision.toLowerCase()}`, text: d.decision }),
      ` ${when(d.time)} · ${d.category} · ${d.sample_id || "–"} · ${fmt(d.image_score, 2)}`,
    ),
  );
  $("#review-list").replaceChildren(...items);
  if (!items.length) $("#review-list").append(el("li", { class: "hint", text: "No decision yet." }));
}

async function pick(d) {
  picked = d;
  wanted = null;
  $("#review-empty").hidden = true;
  $("#review-detail").hidden = false;
  $("#review-message").textContent = "";
  const badge = $("#review-decision");
  badge.textContent = d.decision;
  badge.className = `decision ${d.decision.toLowerCase()}`;
  const facts = [
    ["Category", `${d.category} ${d.bank_version}`],
    ["Part", d.sample_id || "–"],
    ["Time", when(d.time)],
    ["Score", `${fmt(d.image_score)} (threshold ${fmt(d.threshold)})`],
    ["Regions", `${d.regions}${d.peak !== null ? `, peak ${fmt(d.peak)}` : ""}`],
  ];
  $("#review-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  // a verdict that contradicts nothing is not offered: a false alarm is an NG, a missed defect an OK
  for (const button of root.querySelectorAll(".verdicts button")) {
    button.disabled =
      (button.value === "false_alarm" && d.decision !== "NG") ||
      (button.value === "missed_defect" && d.decision !== "OK");
  }
  const img = $("#review-map");
  if (mapUrl) URL.revokeObjectURL(mapUrl);
  mapUrl = null;
  img.hidden = true;
  if (d.has_map) {
    try {
      mapUrl = await imageUrl(`recent/${encodeURIComponent(d.id)}/map?kind=overlay&max_side=480`);
      if (picked === d) {
        img.src = mapUrl;
        img.hidden = false;
      }
    } catch {
      img.hidden = true; // evicted meanwhile: the facts are still there
    }
  }
}

async function submit(event) {
  event.preventDefault();
  if (!picked) return;
  const who = $("#review-who").value.trim();
  localStorage.setItem(WHO, who);
  const body = { decision_id: picked.id, verdict: event.submitter.value, who };
  const note = $("#review-note").value.trim();
  if (note) body.note = note;
  const message = $("#review-message");
  try {
    const record = await postJson("feedback", body);
    message.textContent = `Recorded: ${record.verdict.replace("_", " ")} by ${record.who}.`;
    $("#review-note").value = "";
    loadFeedback();
  } catch (err) {
    message.textContent = `Not recorded: ${err.message}`;
  }
}

async function loadFeedback() {
  const error = $("#feedback-error");
  try {
    const answer = await getJson("feedback?limit=50");
    const rows = answer.records.map((r) =>
      el(
        "tr",
        { "data-id": r.id },
        el("td", { text: when(r.time) }),
        el("td", { text: r.decision?.category || "–" }),
        el("td", { text: r.decision?.sample_id || "–" }),
        el("td", { text: r.decision ? `${r.decision.decision} ${fmt(r.decision.image_score, 2)}` : "–" }),
        el("td", { text: r.verdict.replace("_", " ") }),
        el("td", { text: r.who }),
        el("td", { text: r.note || "" }),
      ),
    );
    $("#feedback-table tbody").replaceChildren(...rows);
    error.hidden = true;
  } catch (err) {
    error.textContent = `Could not read the reviews: ${err.message}`;
    error.hidden = false;
  }
}
