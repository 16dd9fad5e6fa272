// busdx web page: upload one image, or the views of one lesion, and show the analysis. No
// framework, no external requests.
"use strict";

// The server's own limit replaces this once /api/model has answered (busdx serve --max-upload-mb).
let maxBytes = 25 * 1024 * 1024;
const MAX_VIEWS = 4;
const $ = (id) => document.getElementById(id);

const els = {
  dropzone: $("dropzone"), pick: $("pick"), file: $("file"), figure: $("figure"),
  base: $("img-base"), outline: $("img-outline"), heatmap: $("img-heatmap"),
  showOutline: $("show-outline"), showHeatmap: $("show-heatmap"), another: $("another"),
  legend: $("legend-heatmap"), legendRamp: $("legend-ramp"), legendText: $("legend-text"),
  status: $("status"), error: $("error"), empty: $("empty"),
  result: $("result"), results: $("results"), call: $("call"), probText: $("prob-text"),
  bar: $("bar"), fill: $("bar-fill"), marker: $("bar-marker"), bandName: $("band-name"), band: $("band"), bandHelp: $("band-help"),
  bandText: $("band-text"), note: $("note"), inputWarnings: $("input-warnings"),
  scanNote: $("scan-note"), framePicker: $("frame-picker"), frameNumber: $("frame-number"),
  frameCount: $("frame-count"), frameLast: $("frame-last"),
  measures: $("measures-body"),
  source: $("source"), timingsSummary: $("timings-summary"), timingsList: $("timings-list"), version: $("version"),
  operatingNote: $("operating-note"),
  disclaimer: $("disclaimer"),
  lesion: $("lesion"), lesionTitle: $("lesion-title"), lesionCall: $("lesion-call"),
  lesionProb: $("lesion-prob"), lesionBandName: $("lesion-band-name"),
  lesionBandText: $("lesion-band-text"), lesionNote: $("lesion-note"),
  lesionCaution: $("lesion-caution"),
  viewButtons: $("view-buttons"), viewTitle: $("view-title"), dualView: $("dual-view"),
  print: $("print"), history: $("history"), historyList: $("history-list"),
  stack: $("stack"), zoom: $("zoom"), zoomIn: $("zoom-in"), zoomOut: $("zoom-out"),
  viewReset: $("view-reset"), brightness: $("brightness"), contrast: $("contrast"),
  sideBySide: $("side-by-side"), sideBySideToggle: $("side-by-side-toggle"),
};
// This tab's analyses, newest first, in memory only (never sent or stored anywhere).
const HISTORY_SIZE = 20;
const history = [];
const PANES = ["left", "right"];

let busy = false;
// The file of the single image on show, kept so that another frame of a cine loop can be read.
let shownFile = null;

function pct(p, digits = 1) {
  return `${(100 * p).toFixed(digits)}%`;
}

function setStatus(text, isBusy = false) {
  els.status.textContent = text;
  els.status.classList.toggle("busy", isBusy);
}

function showError(text) {
  els.error.textContent = text;
  els.error.hidden = !text;
}

function showDropzone() {
  els.figure.hidden = true;
  els.dropzone.hidden = false;
  els.pick.focus();
}

// Nothing on show: the moment another file is chosen, an error arrives or the reader asks for
// another image, the last result goes, its image and outline with it. A result must never
// stand beside a file it does not belong to.
function clearResult() {
  showSideBySide(null);
  els.result.hidden = true;
  els.lesion.hidden = true;
  els.viewButtons.replaceChildren();
  els.empty.textContent = "No result on show.";
  els.empty.hidden = false;
  for (const img of [els.base, els.outline, els.heatmap]) img.removeAttribute("src");
  els.figure.hidden = true;
  els.dropzone.hidden = false;
  showFramePicker(1, 1);
}

// Which file (frame, pane) a result is of, when it came and from which model.
function sourceText(r, name, at) {
  const image = r.image || {};
  const parts = [name];
  if (image.pane) parts.push(`${image.pane.side} pane`);
  if (image.frames > 1) parts.push(`frame ${image.frame} of ${image.frames}`);
  parts.push(`analysed ${at.toLocaleString()}`, `model ${r.model_version}`);
  return parts.join(" · ");
}

function num(value, digits) {
  return Number(value).toLocaleString(undefined, {
    minimumFractionDigits: digits, maximumFractionDigits: digits,
  });
}

function measurementRows(m) {
  const u = m.units;
  const len = (v) => `${num(v, u === "mm" ? 1 : 0)} ${u}`;
  return [
    ["Area", `${num(m.area, u === "mm" ? 1 : 0)} ${u}²`],
    ["Longest diameter", len(m.longest_diameter)],
    ["Width × height", `${len(m.width)} × ${len(m.height)}`],
    ["Orientation", m.orientation === "parallel"
      ? "parallel (wider than tall)" : "not parallel (taller than wide)"],
    ["Perimeter", len(m.perimeter)],
    ["Circularity", num(m.circularity, 2)],
    ["Solidity", num(m.solidity, 2)],
    ["Fitted ellipse", `${len(m.ellipse_major)} × ${len(m.ellipse_minor)}, ${num(m.ellipse_angle_deg, 0)}°`],
  ];
}

function renderMeasurements(result) {
  els.measures.replaceChildren();
  const rows = result.measurements
    ? measurementRows(result.measurements)
    : [["Lesion", "none found"]];
  if (result.measurements && result.measurements.units === "px") {
    rows.push(["Units", "pixels (no calibration in the file)"]);
  }
  for (const [name, value] of rows) {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = name;
    const td = document.createElement("td");
    td.textContent = value;
    tr.append(th, td);
    els.measures.append(tr);
  }
}

function renderTimings(timings) {
  els.timingsList.replaceChildren();
  els.timingsSummary.textContent = `Analysed in ${Math.round(timings.total || 0)} ms on the server`;
  for (const [stage, ms] of Object.entries(timings)) {
    if (stage === "total") continue;
    const li = document.createElement("li");
    li.textContent = `${stage}: ${num(ms, 1)} ms`;
    els.timingsList.append(li);
  }
}

// the first input warning when the image may not be a breast ultrasound at all
// (busdx.inference.quality.NOT_ULTRASOUND)
const NOT_ULTRASOUND = "This may not be a breast ultrasound image at all";

// the label the API gives when a lesion was outlined on what may not be an ultrasound at all
// (busdx.inference.pipeline.WITHHELD): no call and no band then
const WITHHELD = "call withheld";

// an image (or a lesion read from views) that may not be a breast ultrasound at all: the API
// withholds the call; an image without an outline says so by its first warning alone
function mayNotBeUltrasound(r) {
  const warnings = (r.input_check && r.input_check.warnings) || [];
  return r.label === WITHHELD || (warnings.length > 0 && warnings[0].startsWith(NOT_ULTRASOUND));
}

function shownLabel(r) {
  return mayNotBeUltrasound(r) ? "call withheld" : r.label;
}

// One line for a list or a caption, of an image's analysis or a lesion's reading. A risk band
// is a lesion's: the API gives none when no lesion is found, and none is shown then.
function readingText(r) {
  if (r.label === WITHHELD) return WITHHELD;
  if (!r.risk_band) return mayNotBeUltrasound(r) ? "call withheld, no lesion found"
    : "no lesion found";
  return `${shownLabel(r)}, ${pct(r.probability)}, band ${r.risk_band.name}`;
}

// A benign call inside a BI-RADS 4 band (4A, 4B: the threshold lies in 4B) is where a biopsy is
// usually considered: it is shown in amber and says so, never in the green of reassurance.
function callLook(label, band) {
  if (label === "malignant") return { kind: "malignant", heading: "malignant" };
  if (band === "3") return { kind: "benign", heading: "benign" };
  return { kind: "caution", heading: `benign, in a biopsy range (${band})` };
}

function renderResult(r, name, at) {
  els.source.textContent = sourceText(r, name, at);
  resetView();
  const png = (b64) => `data:image/png;base64,${b64}`;
  els.base.src = png(r.png.image);
  els.outline.src = png(r.png.outline);
  els.heatmap.src = png(r.png.heatmap);
  els.base.alt = `The analysed ultrasound image, ${r.image.width} by ${r.image.height} pixels`;
  // An empty layer is said in words, not left as a legend over nothing.
  els.legendRamp.hidden = !r.heatmap_shown;
  els.legendText.textContent = r.heatmap_shown
    ? "Heatmap: where the classifier found evidence of malignancy (brighter is stronger)."
    : "Heatmap: nothing to show for this image: no part of it drove the call towards " +
      "malignancy strongly enough to draw.";
  applyToggles();
  els.dropzone.hidden = true;
  els.figure.hidden = false;
  fitImage();

  const malignant = r.label === "malignant";
  const look = r.risk_band ? callLook(r.label, r.risk_band.name) : { kind: "none" };
  const small = document.createElement("small");
  const withheld = mayNotBeUltrasound(r);
  if (withheld) {
    // A call in red or green on a photograph or a chart would be read before its caution.
    els.call.className = "call none";
    els.call.replaceChildren(document.createTextNode("Call withheld: this may not be a " +
      "breast ultrasound image"));
    small.textContent = "On a picture that is not a breast ultrasound scan the networks' " +
      "output means nothing: no call and no risk band are given. Check what was uploaded; " +
      "the numbers below are for reference only.";
  } else if (r.lesion_found) {
    els.call.className = `call ${look.kind}`;
    els.call.replaceChildren(document.createTextNode(`Call: ${look.heading}`));
    small.textContent = malignant
      ? `The probability is at or above the validated threshold of ${pct(r.threshold)}.`
      : `The probability is below the validated threshold of ${pct(r.threshold)}.`;
    if (look.kind === "caution") {
      small.textContent = `The probability is below the validated threshold of ` +
        `${pct(r.threshold)}, but its risk band, ${r.risk_band.name}, is a BI-RADS 4 range, ` +
        "in which a biopsy is usually considered: not a reassurance.";
    }
  } else {
    // Without a lesion the call comes from the whole image: shown, but not as a finding.
    els.call.className = "call none";
    els.call.replaceChildren(document.createTextNode("No lesion found"));
    small.textContent = "No benign or malignant call is made without a lesion. The " +
      "probability below is the whole image's, for reference only. Check the image yourself.";
  }
  els.call.append(small);

  // Near the threshold one decimal can show equal numbers for different calls: add digits.
  const digits = pct(r.probability) === pct(r.threshold) ? 3 : 1;
  // Without a lesion the number is the whole image's: named so, and drawn without a call's colour.
  els.probText.textContent = (r.lesion_found ? "Probability of malignancy: "
    : "Whole image's probability of malignancy, for reference: ") +
    `${pct(r.probability, digits)} (threshold ${pct(r.threshold, digits)})`;
  els.fill.style.width = pct(r.probability, 2);
  els.fill.style.background = withheld || !r.lesion_found ? "var(--muted)" : `var(--${look.kind})`;
  els.marker.style.left = pct(r.threshold, 2);
  els.bar.setAttribute("aria-label",
    `Probability ${pct(r.probability)} against the threshold ${pct(r.threshold)}`);

  // A risk band beside "No lesion found" would read as a finding: it is a lesion's, so it goes.
  els.bandName.textContent = r.risk_band ? r.risk_band.name : "";
  els.bandText.textContent = r.risk_band ? r.risk_band.text : "";
  els.band.hidden = !r.risk_band;
  els.bandHelp.hidden = !r.risk_band;
  // a withheld call's note says what the call box above already says
  const note = withheld ? "" : r.note || "";
  els.note.textContent = note;
  els.note.hidden = !note;
  const warnings = (r.input_check && r.input_check.warnings) || [];
  els.inputWarnings.replaceChildren(...warnings.map((text) => {
    const p = document.createElement("p");
    p.textContent = text;
    return p;
  }));
  els.inputWarnings.hidden = warnings.length === 0;
  const scanNote = scanAreaNote(r.image || {});
  els.scanNote.textContent = scanNote;
  els.scanNote.hidden = !scanNote;
  showFramePicker(shownFile ? (r.image && r.image.frames) || 1 : 1, r.image ? r.image.frame : 1);
  renderMeasurements(r);
  renderTimings(r.timings_ms);
  els.operatingNote.textContent = operatingNote;
  els.operatingNote.hidden = !operatingNote;
  els.version.textContent = `Model ${r.model_version} · busdx ${r.busdx_version}` +
    (siteNote ? ` · ${siteNote}` : "");
  if (r.disclaimer) els.disclaimer.textContent = r.disclaimer;
  els.empty.hidden = true;
  els.result.hidden = false;
  // A counter that tests (and assistive scripts) can watch for a fresh result.
  document.body.dataset.analyses = String(Number(document.body.dataset.analyses || 0) + 1);
}

// Fit the image (and so its layers) to the space left on screen, enlarging small images too.
function fitImage() {
  const img = els.base;
  if (els.figure.hidden || !img.naturalWidth) return;
  const availW = els.figure.clientWidth;
  const top = els.figure.getBoundingClientRect().top + window.scrollY;
  const availH = Math.max(240, window.innerHeight - top - 105);
  const scale = Math.min(availW / img.naturalWidth, availH / img.naturalHeight, 3);
  img.style.width = `${Math.floor(img.naturalWidth * scale)}px`;
  img.style.height = `${Math.floor(img.naturalHeight * scale)}px`;
}

// Zoom and pan of the image with its layers (one transform for all three, so the outline stays on
// the lesion), and a window on the image alone (brightness and contrast; the layers keep theirs).
const view = { zoom: 1, x: 0, y: 0 };
const MAX_ZOOM = 8;

function applyView() {
  const w = els.stack.clientWidth;
  const h = els.stack.clientHeight;
  view.x = Math.min(0, Math.max(w - w * view.zoom, view.x));
  view.y = Math.min(0, Math.max(h - h * view.zoom, view.y));
  els.zoom.style.transform = `translate(${view.x}px, ${view.y}px) scale(${view.zoom})`;
  els.stack.classList.toggle("zoomed", view.zoom > 1);
}

// Zoom by ``factor`` about the point (cx, cy) of the shown image (its centre by default).
function zoomBy(factor, cx = els.stack.clientWidth / 2, cy = els.stack.clientHeight / 2) {
  const zoom = Math.min(MAX_ZOOM, Math.max(1, view.zoom * factor));
  view.x = cx - (cx - view.x) * (zoom / view.zoom);
  view.y = cy - (cy - view.y) * (zoom / view.zoom);
  view.zoom = zoom;
  applyView();
}

function applyWindow() {
  els.base.style.filter = `brightness(${els.brightness.value}%) contrast(${els.contrast.value}%)`;
}

function resetView() {
  Object.assign(view, { zoom: 1, x: 0, y: 0 });
  applyView();
  els.brightness.value = "100";
  els.contrast.value = "100";
  applyWindow();
}

function applyToggles() {
  els.outline.hidden = !els.showOutline.checked;
  els.heatmap.hidden = !els.showHeatmap.checked;
  els.legend.hidden = !els.showHeatmap.checked;
}

// The frame box of a file of several frames (a cine loop): shown with its result, or with the
// error when the frame read was blank, so that another frame can be chosen.
function showFramePicker(frames, frame) {
  els.framePicker.hidden = !(frames > 1);
  els.frameNumber.max = String(frames);
  els.frameNumber.value = String(frame);
  els.frameCount.textContent = String(frames);
}

// An error answer's text, and the frame count it carries for a blank frame of a loop.
async function errorOf(response) {
  const error = new Error(`the server answered ${response.status} ${response.statusText}`);
  try {
    const body = await response.json();
    if (typeof body.detail === "string") error.message = body.detail;
    if (Array.isArray(body.detail)) error.message = body.detail.map((d) => d.msg).join("; ");
    error.frames = body.frames || 1;
    error.frame = body.frame || 1;
  } catch (_) { /* not JSON */ }
  error.message = `The image could not be analysed: ${error.message}`;
  return error;
}

function checkFile(file) {
  if (file.size === 0) return `${file.name} is empty (zero bytes). Choose an image file.`;
  if (file.size > maxBytes) {
    return `${file.name} is ${(file.size / 1048576).toFixed(1)} MB: this server takes files ` +
      `up to ${Math.floor(maxBytes / 1048576)} MB (whoever runs it can raise that with ` +
      "busdx serve --max-upload-mb).";
  }
  return "";
}

// What the page should say about the part of the file that was analysed.
function scanAreaNote(image) {
  const area = image.scan_area;
  const notes = [];
  if (area && image.scan_area_from === "ultrasound regions") {
    notes.push(`Scan area from the DICOM file's ultrasound regions: the ${area.width} x ` +
      `${area.height} pixel scan was analysed (the screen around it is not part of the scan).`);
  } else if (area) {
    notes.push(`Black frame cut off: the ${area.width} x ${area.height} pixel scan area was ` +
      `analysed (the frame, and anything written in it, is not part of the scan).`);
  }
  if (image.frames > 1) {
    notes.push(`The file holds ${image.frames} frames (a cine loop): frame ${image.frame} was ` +
      "analysed. Check that it shows the lesion, or choose another frame.");
  }
  if (!image.pane && image.regions === 2) {
    notes.push("The file declares two scans side by side: if they are the lesion's two " +
      "planes, tick \"Dual-view capture\" and drop it again to read them as one lesion.");
  }
  return notes.join(" ");
}

// A server started with access tokens answers /api with 401 until the page sends one: the page
// asks once and keeps the token for this tab only (sessionStorage), never in the address.
const TOKEN_KEY = "busdx-token";
async function apiFetch(url, options = {}) {
  const send = () => {
    const headers = new Headers(options.headers || {});
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.set("Authorization", `Bearer ${token}`);
    return fetch(url, { ...options, headers });
  };
  let response = await send();
  if (response.status === 401) {
    const token = window.prompt("This busdx server needs an access token. Paste the one you " +
      "were given:");
    if (token && token.trim()) {
      sessionStorage.setItem(TOKEN_KEY, token.trim());
      response = await send();
    }
  }
  return response;
}

// One image (or one pane of a dual-view capture) through /api/analyze; throws an Error whose
// message is for the reader.
async function analyzeOne(file, pane = null, frame = null) {
  const form = new FormData();
  form.append("file", file);
  const query = new URLSearchParams();
  if (pane) query.set("pane", pane);
  if (frame !== null) query.set("frame", String(frame));
  let response;
  try {
    const url = query.toString() ? `/api/analyze?${query}` : "/api/analyze";
    response = await apiFetch(url, { method: "POST", body: form });
  } catch (_) {
    throw new Error("The server could not be reached. Is busdx serve still running?");
  }
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

function doneText(result) {
  if (mayNotBeUltrasound(result)) {
    return "Done: call withheld, this may not be a breast ultrasound image; see the caution.";
  }
  const unusual = result.input_check && result.input_check.warnings.length > 0
    ? " The image is unlike the training images: see the caution." : "";
  return (result.lesion_found
    ? `Done: ${result.label} call, probability ${pct(result.probability)}, ` +
      `risk band ${result.risk_band.name}.`
    : "Done: no lesion found; see the note.") + unusual;
}

// One analysis at a time: the busy flag, the error shown in place of a result, the picker reset.
async function whileBusy(work) {
  busy = true;
  try {
    await work();
    els.results.focus({ preventScroll: true });
    // one column (a phone): the result lies below the image, so bring it into view
    if (window.matchMedia("(max-width: 900px)").matches) els.results.scrollIntoView();
  } catch (err) {
    setStatus("");
    clearResult();
    // a blank frame of a loop: no result, but the loop's other frames can be chosen
    if (err.frames > 1) showFramePicker(err.frames, err.frame);
    showError(err.message);
  } finally {
    busy = false;
    els.file.value = "";
  }
}

async function analyze(file, frame = null) {
  if (busy || !file) return;
  clearResult();
  showError("");
  const problem = checkFile(file);
  if (problem) { showError(problem); return; }
  await whileBusy(async () => {
    setStatus(frame === null ? "Analysing the image…" : `Analysing frame ${frame}…`, true);
    shownFile = file;  // kept even when the frame read is blank: another can be chosen
    const result = await analyzeOne(file, null, frame);
    const at = new Date();
    renderResult(result, file.name, at);
    remember({ label: file.name, at, result, show: () => {
      shownFile = file;  // the frame box of a loop reads this file again
      showImage(result, file.name, at);
    } });
    setStatus((result.image.frames > 1 ? `Frame ${result.image.frame} of ` +
      `${result.image.frames}. ` : "") + doneText(result));
  });
}

// The views of one lesion: each analysed as one image (each pane of each file for dual-view
// captures), then read together by /api/lesion.
async function analyzeLesion(files, dual) {
  if (busy) return;
  clearResult();
  showError("");
  const jobs = dual
    ? files.flatMap((file) => PANES.map((pane) => ({ file, pane, name: `${file.name}, ${pane} pane` })))
    : files.map((file) => ({ file, pane: null, name: file.name }));
  if (jobs.length > MAX_VIEWS) {
    showError(`${jobs.length} views: give at most ${MAX_VIEWS} views of one lesion` +
      (dual ? ` (${MAX_VIEWS / 2} dual-view captures).` : "."));
    return;
  }
  const problem = files.map(checkFile).find((text) => text);
  if (problem) { showError(problem); return; }
  await whileBusy(async () => {
    shownFile = null;
    const views = [];
    for (const [i, job] of jobs.entries()) {
      setStatus(`Analysing view ${i + 1} of ${jobs.length} (${job.name})…`, true);
      try {
        const result = await analyzeOne(job.file, job.pane);
        views.push({ name: job.name, file: job.file.name, result, at: new Date() });
      } catch (err) {
        throw new Error(`${job.name}: ${err.message}`);
      }
    }
    setStatus("Reading the lesion from its views…", true);
    const response = await apiFetch("/api/lesion", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ views: views.map(({ result: r }) => ({
        logit: r.logit, lesion_found: r.lesion_found, model_version: r.model_version,
        unusual: Boolean(r.input_check && Object.keys(r.input_check.outside).length),
        not_ultrasound: mayNotBeUltrasound(r),
        longest_diameter: r.measurements ? r.measurements.longest_diameter : null,
        units: r.measurements ? r.measurements.units : null })) }),
    });
    const lesion = response.ok ? await response.json() : null;
    const problem = lesion ? "" : (await errorOf(response)).message
      .replace("The image could not be analysed: ", "");
    renderLesion(lesion, views, problem);
    remember({ label: `Lesion, ${views.length} views: ${files.map((f) => f.name).join(", ")}`,
               at: views[views.length - 1].at, result: lesion, show: () => {
                 shownFile = null;
                 clearResult();
                 renderLesion(lesion, views, problem);
               } });
    setStatus(lesion
      ? (lesion.label === WITHHELD
        ? `Done: lesion call withheld: ${lesion.views_not_ultrasound} of ${views.length} ` +
          "views may not be a breast ultrasound image; see their cautions."
        : lesion.risk_band
        ? `Done: lesion read from ${views.length} views: ${lesion.label} call, probability ` +
          `${pct(lesion.probability)}, risk band ${lesion.risk_band.name}.`
        : `Done: no lesion found in any of the ${views.length} views; no call is made.`)
      : `Done: ${views.length} views analysed one by one; no lesion reading.`);
  });
}

function showImage(result, name, at) {
  clearResult();
  renderResult(result, name, at);
}

function remember(entry) {
  history.unshift(entry);
  history.length = Math.min(history.length, HISTORY_SIZE);
  els.historyList.replaceChildren(...history.map((item) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link";
    const r = item.result;
    button.textContent = `${item.at.toLocaleTimeString()} · ${item.label}` + (r
      ? ` · ${readingText(r)}` : " · no reading");
    button.addEventListener("click", () => {
      if (busy) return;
      showError(""); setStatus("");
      item.show();
      els.results.scrollIntoView();
    });
    li.append(button);
    return li;
  }));
  els.history.hidden = false;
}

function analyzeFiles(list) {
  const files = Array.from(list || []);
  if (els.dualView.checked && files.length > 0) analyzeLesion(files, true);
  else if (files.length === 1) analyze(files[0]);
  else if (files.length > 1) analyzeLesion(files, false);
}

function showView(views, index) {
  const view = views[index];
  showSideBySide(null);
  renderResult(view.result, view.file, view.at);
  els.viewTitle.textContent = `View ${index + 1} of ${views.length}: ${views[index].name}`;
  for (const [i, button] of Array.from(els.viewButtons.children).entries()) {
    button.setAttribute("aria-pressed", String(i === index));
  }
}

// A lesion's views next to each other, each image with its outline, in place of the one view
// on show; null puts the one view back.
function showSideBySide(views) {
  els.sideBySideToggle.setAttribute("aria-pressed", String(Boolean(views)));
  els.sideBySide.hidden = !views;
  if (!views) {
    els.sideBySide.replaceChildren();
    if (!els.result.hidden && els.base.getAttribute("src")) els.figure.hidden = false;
    return;
  }
  els.sideBySide.replaceChildren(...views.map((view, i) => {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = `data:image/png;base64,${view.result.png.overlay}`;
    img.alt = `View ${i + 1}, ${view.name}, with its lesion outline`;
    const caption = document.createElement("figcaption");
    const r = view.result;
    caption.textContent = `View ${i + 1}: ${view.name} · ${readingText(r)}`;
    figure.append(img, caption);
    return figure;
  }));
  els.figure.hidden = true;
}

function renderLesion(lesion, views, problem) {
  els.sideBySideToggle.onclick = () => showSideBySide(
    els.sideBySide.hidden ? views : null);
  els.viewButtons.replaceChildren(...views.map((view, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "secondary";
    button.textContent = `View ${i + 1}`;
    button.title = view.name;
    button.addEventListener("click", () => showView(views, i));
    return button;
  }));
  els.lesionTitle.textContent = `Lesion, read from ${views.length} views`;
  if (lesion && lesion.label === WITHHELD) {
    // A view that may not be an ultrasound makes the views' mean mean nothing: no call, no band.
    els.lesionCall.className = "call none";
    els.lesionCaution.hidden = true;
    els.lesionCall.replaceChildren(document.createTextNode(
      "Lesion call withheld: a view may not be a breast ultrasound image"));
    els.lesionProb.textContent = "Probability of malignancy, for reference only: " +
      `${pct(lesion.probability)}`;
    els.lesionBandName.parentElement.hidden = true;
    const note = lesion.note.charAt(0).toUpperCase() + lesion.note.slice(1);
    els.lesionNote.textContent = `${note}. Check what was uploaded.`;
  } else if (lesion && !lesion.risk_band) {
    // No view shows a lesion: said plainly, with no call and no band, as for one image.
    els.lesionCall.className = "call none";
    els.lesionCaution.hidden = true;
    els.lesionCall.replaceChildren(document.createTextNode("No lesion found in any view"));
    els.lesionProb.textContent = "Whole images' probability of malignancy, for reference: " +
      `${pct(lesion.probability)}`;
    els.lesionBandName.parentElement.hidden = true;
    const note = lesion.note.charAt(0).toUpperCase() + lesion.note.slice(1);
    els.lesionNote.textContent = `${note}. Check the images yourself.`;
  } else if (lesion) {
    const malignant = lesion.label === "malignant";
    const look = callLook(lesion.label, lesion.risk_band.name);
    els.lesionCall.className = `call ${look.kind}`;
    const small = document.createElement("small");
    small.textContent = `The mean of the views is ${malignant ? "at or above" : "below"} the ` +
      `threshold validated for lesions read from their views, ${pct(lesion.threshold)}.`;
    if (look.kind === "caution") {
      small.textContent += ` Its risk band, ${lesion.risk_band.name}, is a BI-RADS 4 range, ` +
        "in which a biopsy is usually considered: not a reassurance.";
    }
    els.lesionCall.replaceChildren(
      document.createTextNode(`Lesion call: ${look.heading}`), small);
    els.lesionProb.textContent = `Probability of malignancy: ${pct(lesion.probability)} ` +
      `(lesion threshold ${pct(lesion.threshold)})`;
    els.lesionBandName.parentElement.hidden = false;
    els.lesionBandName.textContent = lesion.risk_band.name;
    els.lesionBandText.textContent = lesion.risk_band.text;
    // Views that cannot be one lesion (two patients, say) are said first and plainly.
    els.lesionCaution.textContent = lesion.views_disagree
      ? `Caution: ${lesion.note}.` : "";
    els.lesionCaution.hidden = !lesion.views_disagree;
    els.lesionNote.textContent = [lesionOperatingNote, lesion.views_disagree ? "" : lesion.note,
      "Give only images of the same lesion."].filter((text) => text).join(" ");
  } else {
    els.lesionCall.className = "call none";
    els.lesionCaution.hidden = true;
    els.lesionCall.replaceChildren(document.createTextNode("No lesion reading"));
    els.lesionProb.textContent = "";
    els.lesionBandName.parentElement.hidden = true;
    els.lesionNote.textContent = `${problem}. Each view below is read on its own.`;
  }
  els.lesion.hidden = false;
  showView(views, 0);
}

els.pick.addEventListener("click", () => els.file.click());
els.file.addEventListener("change", () => analyzeFiles(els.file.files));
function another() {
  shownFile = null;
  showError(""); setStatus(""); clearResult(); showDropzone();
}

els.another.addEventListener("click", another);
els.print.addEventListener("click", () => window.print());
els.zoomIn.addEventListener("click", () => zoomBy(1.25));
els.zoomOut.addEventListener("click", () => zoomBy(0.8));
els.viewReset.addEventListener("click", resetView);
els.brightness.addEventListener("input", applyWindow);
els.contrast.addEventListener("input", applyWindow);
els.stack.addEventListener("wheel", (e) => {
  e.preventDefault();
  const box = els.stack.getBoundingClientRect();
  zoomBy(e.deltaY < 0 ? 1.25 : 0.8, e.clientX - box.left, e.clientY - box.top);
}, { passive: false });
let drag = null;
els.stack.addEventListener("pointerdown", (e) => {
  if (view.zoom <= 1) return;
  drag = { x: e.clientX - view.x, y: e.clientY - view.y };
  els.stack.setPointerCapture(e.pointerId);
});
els.stack.addEventListener("pointermove", (e) => {
  if (!drag) return;
  view.x = e.clientX - drag.x;
  view.y = e.clientY - drag.y;
  applyView();
});
for (const type of ["pointerup", "pointercancel"]) {
  els.stack.addEventListener(type, () => { drag = null; });
}
els.showOutline.addEventListener("change", applyToggles);
els.base.addEventListener("load", fitImage);
window.addEventListener("resize", fitImage);
els.showHeatmap.addEventListener("change", applyToggles);
els.framePicker.addEventListener("submit", (e) => {
  e.preventDefault();
  if (els.framePicker.reportValidity()) analyze(shownFile, Number(els.frameNumber.value));
});
els.frameLast.addEventListener("click", () => analyze(shownFile, "last"));

for (const target of [els.dropzone, els.figure]) {
  target.addEventListener("dragover", (e) => {
    e.preventDefault();
    els.dropzone.classList.add("over");
  });
  target.addEventListener("dragleave", () => els.dropzone.classList.remove("over"));
  target.addEventListener("drop", (e) => {
    e.preventDefault();
    els.dropzone.classList.remove("over");
    analyzeFiles(e.dataTransfer && e.dataTransfer.files);
  });
}
// A file dropped outside the drop zone must not make the browser navigate away.
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => e.preventDefault());

document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const tag = (e.target && e.target.tagName) || "";
  if (tag === "INPUT" && !["checkbox", "range"].includes(e.target.type)) return;
  const key = e.key.toLowerCase();
  if (els.figure.hidden) return;
  if (key === "o") { els.showOutline.checked = !els.showOutline.checked; applyToggles(); }
  else if (key === "h") { els.showHeatmap.checked = !els.showHeatmap.checked; applyToggles(); }
  else if (key === "n") another();
  else if (key === "p") window.print();
  else if (key === "+" || key === "=") zoomBy(1.25);
  else if (key === "-") zoomBy(0.8);
  else if (key === "0") resetView();
});

// Set once from /api/model: models recalibrated on a site's images say so beside the version,
// so a reader knows which operating point the call used.
let siteNote = "";
// What a call at the threshold has meant on held-out images, so that "validated" has numbers:
// the bundled models' test fold, or a recalibrated site's out-of-fold estimate.
let operatingNote = "";
// The same for lesion calls, from the lesion reading's test-fold rows.
let lesionOperatingNote = "";

function describeLesionPoint(classifier) {
  const test = classifier.lesion_reading && classifier.lesion_reading.test;
  if (classifier.site_calibration || !test || !test.image || !test.lesion) return "";
  return `On ${test.lesion.n} held-out BUS-BRA lesions (${test.image.n} images, test fold ` +
    `${test.test_fold}), lesion calls at this threshold caught ${pct(test.lesion.sensitivity)} ` +
    `of cancers and cleared ${pct(test.lesion.specificity)} of benign lesions.`;
}

function describeOperatingPoint(classifier) {
  const site = classifier.site_calibration;
  if (site && site.out_of_fold) {
    const oof = site.out_of_fold;
    return `Recalibrated on ${site.n} images of one site: out of fold there, calls at this ` +
      `threshold caught ${pct(oof.sensitivity)} of cancers and cleared ` +
      `${pct(oof.specificity)} of benign lesions.`;
  }
  const test = classifier.test;
  if (!test || test.sensitivity == null || test.specificity == null) return "";
  return `On ${test.n} held-out BUS-BRA images (test fold ${test.test_fold}), calls at this ` +
    `threshold caught ${pct(test.sensitivity)} of cancers (sensitivity) and cleared ` +
    `${pct(test.specificity)} of benign lesions (specificity). Other scanners and hospitals ` +
    "can differ.";
}

apiFetch("/api/model").then((r) => (r.ok ? r.json() : null)).then((card) => {
  if (card && card.disclaimer) els.disclaimer.textContent = card.disclaimer;
  if (card && card.limits && card.limits.max_upload_bytes > 0) {
    maxBytes = card.limits.max_upload_bytes;
    $("max-mb").textContent = String(Math.floor(maxBytes / 1048576));
  }
  const classifier = card && card.card && card.card.classifier;
  if (classifier) {
    operatingNote = describeOperatingPoint(classifier);
    lesionOperatingNote = describeLesionPoint(classifier);
  }
  // the out-of-fold sensitivity and specificity are in the operating note; not repeated here
  const site = classifier && classifier.site_calibration;
  if (site && site.out_of_fold) {
    siteNote = `probability and threshold recalibrated on ${site.n} images of one site`;
  }
}).catch(() => {});
