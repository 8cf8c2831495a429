// The page of `dqe-cir serve`: pick a reference, type a modification, see the ranked results with their
// per-attribute scores, and override the model's attribute weights (one slider per attribute the bundle
// names, from /v1/info). Plain JS, no build step, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
let ATTRS = [];  // the bundle's attribute names, set by loadInfo
const state = { reference: null, lastQuery: false, key: sessionStorage.getItem("dqe-cir-key") || "" };
let weightTimer = null;

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (state.key) h["X-API-Key"] = state.key;
  return h;
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const resp = await fetch(path, opts);
  if (resp.status === 401) {
    $("key-form").hidden = false;
    $("api-key").focus();
  }
  if (!resp.ok) {
    let message = resp.status + " " + resp.statusText;
    try {
      const body = await resp.json();
      message = (body.error && body.error.message) || message;
    } catch (e) { /* not JSON */ }
    const err = new Error(message);
    err.status = resp.status;
    throw err;
  }
  return resp;
}

function itemPath(id) {
  return "/v1/items/" + id.split("/").map(encodeURIComponent).join("/");
}

async function showItemImage(img, id) {
  // With an API key the image needs the header, so it is fetched and shown from a blob.
  img.alt = "item " + id;
  if (!state.key) { img.src = itemPath(id) + "/image"; return; }
  try {
    const blob = await (await api(itemPath(id) + "/image")).blob();
    img.src = URL.createObjectURL(blob);
  } catch (e) { img.alt = "item " + id + " (image unavailable)"; }
}

function setStatus(text, isError) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", Boolean(isError));
  s.setAttribute("role", isError ? "alert" : "status");
}

// -- the reference --------------------------------------------------------------------------
function useItem(id) {
  state.reference = { itemId: id };
  const img = $("ref-img");
  img.hidden = false;
  showItemImage(img, id);
  $("ref-label").textContent = "Catalog item " + id + " (left out of its own results)";
  $("text").focus();
}

function useUpload(file) {
  if (!file) return;
  state.reference = { file: file };
  const img = $("ref-img");
  img.hidden = false;
  img.src = URL.createObjectURL(file);
  img.alt = "uploaded image " + file.name;
  $("ref-label").textContent = "Uploaded: " + file.name;
  $("text").focus();
}

async function loadSamples() {
  const list = $("samples");
  try {
    const items = (await (await api("/v1/items/sample?n=12")).json()).items;
    list.replaceChildren();
    for (const item of items) {
      const li = document.createElement("li");
      const btn = document.createElement("button");
      btn.type = "button";
      btn.className = "thumb";
      btn.dataset.id = item.id;
      btn.title = "Use " + item.id + " as the reference";
      const img = document.createElement("img");
      showItemImage(img, item.id);
      btn.append(img);
      btn.addEventListener("click", () => useItem(item.id));
      li.append(btn);
      list.append(li);
    }
  } catch (e) { setStatus("Could not load items: " + e.message, true); }
}

// -- weights --------------------------------------------------------------------------------
function sliderWeights() {
  const w = {};
  for (const a of ATTRS) w[a] = Number($("w-" + a).value);
  return w;
}

function showSlider(attr, value) {
  $("w-" + attr).value = value;
  $("w-" + attr + "-out").textContent = Number(value).toFixed(2);
}

function onSlider(event) {
  showSlider(event.target.dataset.attr, event.target.value);
  $("override").checked = true;
  if (state.lastQuery) {  // re-run the last query with the new weights, once the slider rests
    clearTimeout(weightTimer);
    weightTimer = setTimeout(search, 250);
  }
}

// -- search ---------------------------------------------------------------------------------
function requestFor() {
  const text = $("text").value.trim();
  const k = Number($("k").value) || 12;
  const weights = $("override").checked ? sliderWeights() : null;
  if (state.reference.file) {
    const form = new FormData();
    form.append("image", state.reference.file);
    form.append("text", text);
    form.append("k", String(k));
    form.append("explain", "true");
    if (weights) form.append("weights", JSON.stringify(weights));
    return { method: "POST", body: form };
  }
  const body = { item_id: state.reference.itemId, text: text, k: k, explain: true };
  if (weights) body.weights = weights;
  return { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
}

async function search(event) {
  if (event) event.preventDefault();
  if (!state.reference) {
    setStatus("Choose a reference image first.", true);
    const first = document.querySelector("#samples button");
    if (first) first.focus();
    return;
  }
  if (!$("text").value.trim()) { setStatus("Type the modification first.", true); $("text").focus(); return; }
  setStatus("Searching\u2026");
  $("results").setAttribute("aria-busy", "true");
  try {
    const result = await (await api("/v1/search", requestFor())).json();
    state.lastQuery = true;
    renderResults(result);
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    $("results").removeAttribute("aria-busy");
  }
}

function bar(name, value) {
  const row = document.createElement("div");
  row.className = "bar " + name;
  const label = document.createElement("span");
  label.textContent = name;
  const track = document.createElement("span");
  track.className = "track";
  const fill = document.createElement("span");
  fill.className = "fill";
  fill.style.width = (Math.max(0, Math.min(1, value)) * 100).toFixed(1) + "%";
  track.append(fill);
  const num = document.createElement("span");
  num.className = "num";
  num.textContent = value.toFixed(3);
  row.append(label, track, num);
  row.setAttribute("aria-label", name + " score " + value.toFixed(3));
  return row;
}

function renderResults(result) {
  const m = result.model_weights, w = result.weights;
  $("model-weights").textContent = "Model's weights for this query: " +
    ATTRS.map((a) => a + " " + m[a].toFixed(2)).join(", ") + ". Used: " +
    ATTRS.map((a) => a + " " + w[a].toFixed(2)).join(", ") + ".";
  if (!$("override").checked) for (const a of ATTRS) showSlider(a, m[a]);
  const list = $("results");
  list.replaceChildren();
  result.hits.forEach((hit, i) => {
    const li = document.createElement("li");
    li.dataset.id = hit.id;
    const btn = document.createElement("button");
    btn.type = "button";
    btn.className = "hit";
    btn.title = "Use " + hit.id + " as the next reference";
    const img = document.createElement("img");
    showItemImage(img, hit.id);
    const caption = document.createElement("span");
    caption.className = "caption";
    caption.textContent = "#" + (i + 1) + " " + hit.id;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = "score " + hit.score.toFixed(4);
    btn.append(img, caption, score);
    btn.addEventListener("click", () => useItem(hit.id));
    li.append(btn);
    if (hit.breakdown) for (const name of ["base", ...ATTRS]) li.append(bar(name, hit.breakdown[name]));
    list.append(li);
  });
  const t = result.timings_ms;
  setStatus(result.hits.length + " results in " + Math.round(t.total) + " ms (compose " + Math.round(t.compose) +
            " ms, search " + Math.round(t.search) + " ms).");
}

// -- start ----------------------------------------------------------------------------------
// One slider per attribute of the bundle (color and shape by default; a model may name others).
function buildSliders(names) {
  if (names.join(",") === ATTRS.join(",")) return;
  ATTRS = names.slice();
  const box = $("sliders");
  box.replaceChildren();
  for (const a of ATTRS) {
    const div = document.createElement("div");
    div.className = "slider";
    const label = document.createElement("label");
    label.htmlFor = "w-" + a;
    label.textContent = a.charAt(0).toUpperCase() + a.slice(1);
    const input = document.createElement("input");
    Object.assign(input, { type: "range", id: "w-" + a, min: "0", max: "3", step: "0.05", value: "1" });
    input.dataset.attr = a;
    input.addEventListener("input", onSlider);
    const out = document.createElement("output");
    out.id = "w-" + a + "-out";
    out.htmlFor = "w-" + a;
    out.textContent = "1.00";
    div.append(label, input, out);
    box.append(div);
  }
}

async function loadInfo() {
  try {
    const info = await (await api("/v1/info")).json();
    buildSliders(info.attributes);
    $("info").textContent = "Collection " + info.collection + ": " + info.items.toLocaleString() +
      " images. Bundle " + info.fingerprint.slice(0, 12) + ".";
    await loadSamples();
  } catch (e) {
    $("info").textContent = "Not ready: " + e.message + (e.status === 401 ? "" : " (retrying)");
    if (e.status !== 401) setTimeout(loadInfo, 3000);
  }
}

function init() {
  $("search-form").addEventListener("submit", search);
  $("id-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = $("item-id").value.trim();
    if (!id) return;
    try {
      await api(itemPath(id));
      useItem(id);
    } catch (e) { setStatus(e.message, true); }
  });
  $("upload").addEventListener("change", (event) => useUpload(event.target.files[0]));
  $("shuffle").addEventListener("click", loadSamples);
  $("override").addEventListener("change", () => { if (state.lastQuery) search(); });
  $("reset").addEventListener("click", () => { $("override").checked = false; if (state.lastQuery) search(); });
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("api-key").value;
    sessionStorage.setItem("dqe-cir-key", state.key);
    $("key-form").hidden = true;
    loadInfo();
  });
  document.addEventListener("keydown", (event) => {
    const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
    if (event.key === "/" && !typing) { event.preventDefault(); $("text").focus(); }
    if (event.altKey && (event.key === "r" || event.key === "R")) { event.preventDefault(); loadSamples(); }
  });
  loadInfo();
}

init();
