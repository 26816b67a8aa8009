// Inspect: score one part (POST /score with its colour image and point cloud) and show the decision, the
// anomaly map over the image, the defect regions, the stage timings, and the cloud in 3D coloured by the
// map (POST /console/points). One scoring pass: the map comes as an array, drawn here with the service's
// palette, so the overlay, the colour bar and the 3D colours all read the same values. A 3D-only bank's
// category takes the point cloud alone; its answer's per-point scores colour the cloud.

import { api, el, float16Array, fmt, fromBase64, getJson } from "./api.js";
import { drawMap, loadPalette } from "./palette.js";
import { refresh } from "./recent.js";
import { showCloud } from "./view3d.js";

let root = null;
let rgbUrl = null;
let last = null; // {result, width, height}: the answer shown, and the input's size in pixels

const $ = (selector) => root.querySelector(selector);

export function mount(section) {
  root = section;
  $("#inspect-form").addEventListener("submit", submit);
  for (const zone of root.querySelectorAll(".drop")) {
    const input = zone.querySelector("input");
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      if (event.dataTransfer.files.length) input.files = event.dataTransfer.files;
      input.dispatchEvent(new Event("change"));
    });
    input.addEventListener("change", () => zone.classList.toggle("chosen", input.files.length > 0));
  }
  $("#inspect-sample").addEventListener("change", pickSample);
  $("#inspect-category").addEventListener("change", inputMode);
  $("#map-toggle").addEventListener("change", layers);
  $("#map-opacity").addEventListener("input", layers);
  $("#box-toggle").addEventListener("change", layers);
}

export async function show() {
  const select = $("#inspect-category");
  if (select.options.length) return;
  try {
    const answer = await getJson("categories");
    select.replaceChildren(
      ...answer.categories.map((c) => el("option", { value: c.name, text: c.name, "data-input": c.input })),
    );
    inputMode();
  } catch (err) {
    failed(`Could not read the categories: ${err.message}`);
  }
  listSamples();
}

// The parts of the service's sample folder (PATCHBANK_CONSOLE_SAMPLES), when one is configured.
async function listSamples() {
  let parts;
  try {
    parts = await getJson("console/samples");
  } catch {
    return; // no folder configured: files are chosen or dropped
  }
  const options = parts.map((p, i) =>
    el("option", { value: String(i), text: `${p.category}: ${p.name}` }),
  );
  $("#inspect-sample").append(...options);
  $("#inspect-sample").parts = parts;
  $("#inspect-sample-field").hidden = parts.length === 0;
}

// Fetch a folder part's two files and put them in the file fields, as if the operator had chosen them.
async function pickSample() {
  const select = $("#inspect-sample");
  const part = select.value === "" ? null : select.parts[Number(select.value)];
  if (!part) return;
  failed("");
  try {
    for (const [name, path] of [["rgb", part.rgb], ["xyz", part.xyz]]) {
      const blob = await (await api(`console/samples/file?path=${encodeURIComponent(path)}`)).blob();
      const files = new DataTransfer();
      files.items.add(new File([blob], path.split("/").pop()));
      const input = $(`#inspect-${name}`);
      input.files = files.files;
      input.dispatchEvent(new Event("change"));
    }
    $("#inspect-category").value = part.category;
    $("#inspect-id").value = part.name;
  } catch (err) {
    failed(`Could not fetch the part: ${err.message}`);
  }
}

export function hide() {}

// Is the chosen category a 3D-only bank (one unorganized cloud, no colour image)?
function pointsOnly() {
  const option = $("#inspect-category").selectedOptions[0];
  return option?.dataset.input === "points";
}

// Show the fields and views the chosen category's bank takes and answers.
function inputMode() {
  const points = pointsOnly();
  $("#inspect-rgb").required = !points;
  $('[data-drop="rgb"]').hidden = points;
  $("#inspect-unit").closest("label").hidden = points; // a 3D-only bank reads the file's own unit
  $("#inspect-intrinsics").closest("details").hidden = points;
  $("#overlay-figure").hidden = points;
  $("#regions-section").hidden = points;
  $("#view3d-note").textContent = points
    ? "Drag to turn the part, scroll to zoom. Points are coloured by their own scores."
    : "Drag to turn the part, scroll to zoom. Points are coloured by the anomaly map.";
}

function failed(message) {
  const error = $("#inspect-error");
  error.textContent = message;
  error.hidden = !message;
}

function fields(names) {
  const form = new FormData();
  for (const name of names) {
    const input = $(`[name="${name}"]`);
    if (input.type === "file") {
      if (input.files.length) form.append(name, input.files[0]);
    } else if (input.value.trim()) form.append(name, input.value.trim());
  }
  return form;
}

async function submit(event) {
  event.preventDefault();
  failed("");
  const button = $("#inspect-submit");
  button.disabled = true;
  $("#inspect-busy").hidden = false;
  const points = pointsOnly();
  const camera = points ? [] : ["rgb", "xyz_unit", "intrinsics"]; // a 3D-only bank takes the cloud alone
  const scoring = fields(["category", "xyz", "sample_id", ...camera]);
  scoring.append("map", "array");
  const cloud = api("console/points", {
    method: "POST",
    body: fields(["category", "xyz", "xyz_unit", "intrinsics"]),
  }).then((res) => res.json());
  cloud.catch(() => {}); // its error is shown below, once the score is in
  try {
    const [result, palette] = await Promise.all([
      api("score", { method: "POST", body: scoring }).then((res) => res.json()),
      loadPalette(),
    ]);
    refresh();
    const map = points ? showPoints(result, palette) : await showResult(result, palette);
    try {
      const points = await cloud;
      await showCloud($("#view3d"), $("#view3d-note"), {
        ...points,
        points: new Float32Array(fromBase64(points.points).buffer),
        pixels: new Uint32Array(fromBase64(points.pixels).buffer),
      }, map);
    } catch (err) {
      $("#view3d-note").textContent = `No 3D view: ${err.message}`;
    }
  } catch (err) {
    failed(`Scoring failed: ${err.message}`);
  } finally {
    button.disabled = false;
    $("#inspect-busy").hidden = true;
  }
}

async function loadRgb(file) {
  if (rgbUrl) URL.revokeObjectURL(rgbUrl);
  rgbUrl = URL.createObjectURL(file);
  const img = $("#overlay-rgb");
  img.src = rgbUrl;
  try {
    await img.decode();
    img.hidden = false;
    return [img.naturalWidth, img.naturalHeight];
  } catch {
    img.hidden = true; // e.g. a TIFF, which browsers do not show
    return null;
  }
}

// The decision, score, bank and timings lines every answer has.
function showDecision(result) {
  $("#inspect-result").hidden = false;
  const decision = $("#decision");
  decision.textContent = result.is_anomalous ? "NG" : "OK";
  decision.className = `decision ${result.is_anomalous ? "ng" : "ok"}`;
  const relation = result.is_anomalous ? ">" : "≤";
  $("#score-line").textContent = `${fmt(result.image_score)} ${relation} ${fmt(result.threshold)} (threshold)`;
  $("#bank-line").textContent = `${result.category} ${result.bank_version}`;
  $("#timings").textContent = Object.entries(result.timings_ms)
    .map(([stage, ms]) => `${stage} ${ms.toFixed(1)}`)
    .join(" · ")
    .concat(" ms");
}

// A 3D-only bank's answer: its per-point scores, as the 3D view's colour values (one row, a point's index
// in the file as its column).
function showPoints(result, palette) {
  showDecision(result);
  const scores = result.points;
  if (!scores) return null;
  const [x, y, z] = scores.peak_xyz.map((v) => fmt(v, 3));
  $("#score-line").textContent +=
    ` · peak point #${scores.peak_index} (${x}, ${y}, ${z}) · ` +
    `${scores.above_threshold.toLocaleString()} of ${scores.count.toLocaleString()} points above ` +
    `${fmt(result.pixel_threshold)}`;
  const values = float16Array(fromBase64(scores.data));
  return { values, width: scores.count, height: 1, threshold: result.pixel_threshold, palette };
}

async function showResult(result, palette) {
  showDecision(result);
  const amap = result.anomaly_map;
  const size = await loadRgb($("#inspect-rgb").files[0]);
  const [width, height] = size || [amap.width, amap.height];
  $("#overlay-note").textContent = size
    ? `Colour scale: 0 to twice the pixel threshold (${fmt(result.pixel_threshold)}, marked).`
    : "This browser cannot show the colour image (TIFF): the anomaly map is shown alone.";
  $("#overlay").style.aspectRatio = `${width} / ${height}`;
  const values = float16Array(fromBase64(amap.data));
  drawMap($("#overlay-map"), values, amap.width, amap.height, result.pixel_threshold, palette);
  $("#cb-mid").textContent = fmt(result.pixel_threshold);
  $("#cb-max").textContent = `≥ ${fmt(2 * result.pixel_threshold)}`;
  last = { result, width, height };
  drawBoxes();
  layers();
  regionTable(result);
  return { values, width: amap.width, height: amap.height, threshold: result.pixel_threshold, palette };
}

function drawBoxes() {
  const { result, width, height } = last;
  const canvas = $("#overlay-boxes");
  const scale = Math.max(1, 800 / width); // crisp lines and labels on small images
  canvas.width = Math.round(width * scale);
  canvas.height = Math.round(height * scale);
  const ctx = canvas.getContext("2d");
  ctx.scale(scale, scale);
  const line = Math.max(1, width / 250);
  ctx.lineWidth = line;
  ctx.font = `${Math.max(8, Math.round(width / 28))}px system-ui, sans-serif`;
  ctx.textBaseline = "bottom";
  result.regions.forEach((region, i) => {
    const [x0, y0, x1, y1] = region.bbox;
    ctx.strokeStyle = "#00e5ff";
    ctx.strokeRect(x0 + line / 2, y0 + line / 2, x1 - x0 - line, y1 - y0 - line);
    const label = `${i + 1}: ${fmt(region.peak_score, 2)}`;
    const y = y0 > 14 ? y0 - 2 : y1 + 14;
    ctx.fillStyle = "rgba(0, 0, 0, 0.6)";
    ctx.fillRect(x0, y - parseInt(ctx.font, 10), ctx.measureText(label).width + 4, parseInt(ctx.font, 10));
    ctx.fillStyle = "#00e5ff";
    ctx.fillText(label, x0 + 2, y);
  });
  const peak = result.peak;
  if (peak && typeof peak === "object" && "x" in peak && "y" in peak) {
    const r = Math.max(4, width / 40);
    ctx.strokeStyle = "#ffffff";
    ctx.beginPath();
    ctx.moveTo(peak.x - r, peak.y);
    ctx.lineTo(peak.x + r, peak.y);
    ctx.moveTo(peak.x, peak.y - r);
    ctx.lineTo(peak.x, peak.y + r);
    ctx.stroke();
  }
}

function layers() {
  const on = $("#map-toggle").checked;
  $("#overlay-map").style.opacity = on ? $("#map-opacity").value / 100 : 0;
  $("#overlay-boxes").hidden = !$("#box-toggle").checked;
  if ($("#overlay-rgb").hidden) $("#overlay-map").style.opacity = on ? 1 : 0;
}

function peakText(peak) {
  if (peak === null || peak === undefined) return null;
  if (typeof peak === "number") return fmt(peak);
  const value = peak.score ?? peak.value;
  const where = "x" in peak ? ` at (${peak.x}, ${peak.y}) px` : "";
  return `${fmt(value)}${where}`;
}

function regionTable(result) {
  const rows = result.regions.map((r, i) =>
    el(
      "tr",
      {},
      el("td", { text: String(i + 1) }),
      el("td", { text: r.bbox.join(", ") }),
      el("td", { class: "num", text: r.area_px.toLocaleString() }),
      el("td", { class: "num", text: fmt(r.peak_score) }),
    ),
  );
  $("#regions tbody").replaceChildren(...rows);
  $("#regions-none").hidden = rows.length > 0;
  const peak = peakText(result.peak);
  if (peak) $("#score-line").textContent += ` · peak ${peak}`;
}
