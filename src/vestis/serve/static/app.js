// vestis web page: pick a query, change attributes (dropdowns or words), search, refine by clicking a result.
// Plain JavaScript against the JSON API of the same server; no external assets.
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "style") e.style.cssText = v;  // CSSOM, which the Content-Security-Policy allows (a style attribute it does not)
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
};

const state = {
  schema: null,
  query: null,        // {kind: "item", item} | {kind: "upload", file, url, name}
  results: null,      // the last /search response
  history: [],        // snapshots: {query, manipulations, text, mode, k, response, label}
  browse: {offset: 0, limit: 24, q: "", total: 0},
  busy: false,
};

async function api(path, options = {}) {
  const r = await fetch(path, options);
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) {
    const msg = body && body.detail ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail))
                                    : `${r.status} ${r.statusText}`;
    throw new Error(msg);
  }
  return body;
}

function showError(msg) {
  const box = $("#error");
  if (!msg) { box.classList.add("hidden"); box.textContent = ""; return; }
  box.textContent = msg;
  box.classList.remove("hidden");
}

function setStatus(msg) { $("#status").textContent = msg || ""; }

// --- schema and controls -------------------------------------------------------------------------
async function loadSchema() {
  const [schema, health] = await Promise.all([api("/schema"), api("/health")]);
  state.schema = schema;
  $("#run-info").textContent = `${health.model} · ${health.catalogue} · ${health.indexed} items indexed`;
  $("#upload-limits").textContent =
    `JPEG, PNG, WebP, GIF or BMP; at most ${(schema.max_upload_bytes / 2 ** 20).toFixed(0)} MB and ` +
    `${(schema.max_pixels / 1e6).toFixed(0)} megapixels.`;
  const mode = $("#mode");
  mode.innerHTML = "";
  for (const m of schema.modes) mode.append(el("option", {value: m, text: modeLabel(m)}));
  for (const [m, why] of Object.entries(schema.unavailable_modes || {}))
    mode.append(el("option", {value: m, disabled: true, title: why, text: `${m} (not available)`}));
  buildAttributeControls();
  onModeChange();
}

function modeLabel(m) {
  if (m === "manipulate") return "manipulate (apply changes)";
  if (m === "same_item") return "same item";
  if (m === "visual") return "visually similar";
  if (m.startsWith("attribute:")) return `similar ${m.slice(10)}`;
  return m;
}

function currentValue(attr) {
  const q = state.query;
  if (q && q.kind === "item" && q.item.attributes[attr] !== undefined) return q.item.attributes[attr];
  const pred = q && q.predicted && q.predicted[attr];
  return pred && pred.value ? pred.value : null;
}

function buildAttributeControls() {
  const box = $("#attr-controls");
  box.innerHTML = "";
  for (const a of state.schema.attributes) {
    const cur = currentValue(a.name);
    const sel = el("select", {"data-attr": a.name, id: `set-${a.name}`},
      el("option", {value: "", text: cur ? `keep (${cur})` : "keep"}));
    for (const v of a.values) {
      if (v === cur) continue;
      sel.append(el("option", {value: v, text: v}));
    }
    sel.addEventListener("change", () => sel.classList.toggle("changed", sel.value !== ""));
    box.append(el("label", {class: "attr"}, el("span", {text: a.name}), sel));
  }
}

function refreshKeepLabels() {
  for (const sel of document.querySelectorAll("#attr-controls select")) {
    const a = sel.dataset.attr;
    const cur = currentValue(a);
    const keep = sel.options[0];
    keep.textContent = cur ? `keep (${cur})` : "keep";
    for (const o of sel.options) o.hidden = o.value !== "" && o.value === cur;
  }
}

function manipulations() {
  const out = {};
  for (const sel of document.querySelectorAll("#attr-controls select"))
    if (sel.value) out[sel.dataset.attr] = sel.value;
  return out;
}

function setManipulations(m) {
  for (const sel of document.querySelectorAll("#attr-controls select")) {
    sel.value = m[sel.dataset.attr] || "";
    sel.classList.toggle("changed", sel.value !== "");
  }
}

function onModeChange() {
  const manip = $("#mode").value === "manipulate";
  for (const sel of document.querySelectorAll("#attr-controls select")) sel.disabled = !manip;
  $("#text").disabled = !manip;
}

// --- query ---------------------------------------------------------------------------------------
async function setItemQuery(id, {search = true, label = null} = {}) {
  showError(null);
  try {
    const item = await api(`/items/${encodeURIComponent(id)}`);
    state.query = {kind: "item", item, predicted: item.predicted};
  } catch (e) { showError(e.message); return; }
  renderQuery();
  setManipulations({});
  $("#text").value = "";
  if (search) await runSearch(label || `query ${id}`);
}

async function setUploadQuery(file) {
  showError(null);
  if (state.query && state.query.url) URL.revokeObjectURL(state.query.url);
  state.query = {kind: "upload", file, url: URL.createObjectURL(file), name: file.name, predicted: null};
  renderQuery();
  setManipulations({});
  $("#text").value = "";
  await runSearch(`upload ${file.name}`);
}

function renderCrop(q) {
  // an uploaded photo cut to the garment before it was searched: show that crop under the photo
  const box = $("#query-crop-box");
  box.classList.toggle("hidden", !(q.kind === "upload" && q.crop));
  if (!(q.kind === "upload" && q.crop)) return;
  const img = new Image();
  img.onload = () => {
    const [x0, y0, x1, y1] = q.crop;
    // the box is in the photo's pixels (EXIF-upright); the browser shows the photo upright too
    const sx = img.naturalWidth, sy = img.naturalHeight;
    const c = $("#query-crop"), ctx = c.getContext("2d");
    const w = x1 - x0, h = y1 - y0, s = Math.min(c.width / w, c.height / h);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, c.width, c.height);
    ctx.drawImage(img, x0, y0, Math.min(w, sx - x0), Math.min(h, sy - y0),
      (c.width - w * s) / 2, (c.height - h * s) / 2, w * s, h * s);
  };
  img.src = q.url;
}

function renderQuery() {
  const q = state.query;
  $("#query-empty").classList.toggle("hidden", !!q);
  $("#query-body").classList.toggle("hidden", !q);
  if (!q) return;
  $("#query-img").src = q.kind === "item" ? q.item.image_url : q.url;
  $("#query-boxes").innerHTML = "";  // the previous answer's part boxes
  renderCrop(q);
  $("#query-title").innerHTML = "";
  $("#query-title").append(q.kind === "item"
    ? el("span", {}, el("b", {text: q.item.id}), el("span", {class: "muted", text: ` ${q.item.split}`}))
    : el("span", {}, el("b", {text: "uploaded photo"}), el("span", {class: "muted", text: ` ${q.name}`})));
  if (state.schema.explains) {
    $("#query-title").append(el("button", {type: "button", class: "explain", id: "query-explain",
      text: "why? (activation maps)", onclick: explainQuery}));
  }
  const t = $("#query-attrs");
  t.innerHTML = "";
  t.append(el("tr", {}, el("th", {text: "attribute"}), el("th", {text: "catalogue"}), el("th", {text: "predicted"}),
                     el("th", {})));
  for (const a of state.schema.attributes) {
    const known = q.kind === "item" ? q.item.attributes[a.name] : null;
    const p = q.predicted && q.predicted[a.name];
    const pcell = el("td", {class: "pred"});
    if (p) {
      const agree = known && p.value === known;
      pcell.append(el("span", {class: agree ? "ok" : "", text: p.value === null ? "unspecified" : p.value}),
        el("span", {class: "bar", title: `probability ${p.probability}`},
          el("i", {style: `width:${Math.round(p.probability * 100)}%`})),
        el("span", {class: "muted small", text: ` ${(p.probability * 100).toFixed(0)}%`}));
    } else pcell.append(el("span", {class: "muted", text: state.schema.predicts_attributes ? "…" : "—"}));
    const similar = el("td", {});
    if (state.schema.modes.includes(`attribute:${a.name}`))  // "items with a <attribute> like this one's"
      similar.append(el("button", {type: "button", class: "similar", title: `items whose ${a.name} is like this one's`,
        text: `similar ${a.name}`, onclick: () => similarIn(a.name)}));
    t.append(el("tr", {}, el("td", {text: a.name}), el("td", {text: known || "—"}), pcell, similar));
  }
  refreshKeepLabels();
}

// --- search --------------------------------------------------------------------------------------
async function runSearch(label = null, {record = true} = {}) {
  const q = state.query;
  if (!q) { showError("pick a query first"); return; }
  if (state.busy) return;
  state.busy = true;
  $("#search-btn").disabled = true;
  showError(null);
  setStatus("searching…");
  const mode = $("#mode").value;
  const k = parseInt($("#k").value, 10);
  const text = mode === "manipulate" ? $("#text").value.trim() : "";
  let response;
  try {
    if (text) {
      // the typed request wins over the dropdowns for the attributes it names
      const u = await api(`/understand?${new URLSearchParams({text})}`);
      setManipulations({...manipulations(), ...u.manipulations});
    }
    const manip = mode === "manipulate" ? manipulations() : {};
    const filterable = new Set(state.schema.filters.map((f) => f.name));
    const filters = $("#strict").checked
      ? Object.fromEntries(Object.entries(manip).filter(([a]) => filterable.has(a))) : {};
    const labels = $("#labels").checked ? "on" : "off";
    if (q.kind === "item") {
      const body = {item_id: q.item.id, manipulations: manip, mode, k, filters, labels};
      if (text) body.text = text;
      response = await api("/search", {method: "POST", headers: {"Content-Type": "application/json"},
                                       body: JSON.stringify(body)});
    } else {
      const form = new FormData();
      form.append("image", q.file, q.name);
      form.append("manipulations", JSON.stringify(manip));
      form.append("mode", mode);
      form.append("k", String(k));
      form.append("filters", JSON.stringify(filters));
      form.append("labels", labels);
      form.append("crop", "on");  // a phone photo: search the garment found in it (shown under the photo)
      if (text) form.append("text", text);
      response = await api("/search", {method: "POST", body: form});
    }
  } catch (e) {
    showError(e.message);
    setStatus("");
    state.busy = false;
    $("#search-btn").disabled = false;
    return;
  }
  state.busy = false;
  $("#search-btn").disabled = false;
  if (response.query.predicted) q.predicted = response.query.predicted;
  if (q.kind === "upload") q.crop = response.query.upload ? response.query.upload.crop : null;
  state.results = response;
  renderQuery();
  renderUnderstood(response.understood);
  if (response.understood) { setManipulations(response.manipulations); $("#text").value = ""; }
  renderResults(response);
  if (record) {
    const changes = Object.entries(response.manipulations).map(([a, v]) => `${a} → ${v}`).join(", ");
    state.history.push({query: {...q}, manipulations: {...response.manipulations}, mode, k, response,
                        label: label || changes || (mode === "manipulate" ? "search, no change" : modeLabel(mode)), text: response.understood ? response.understood.text : ""});
    renderHistory();
  }
}

function renderUnderstood(u) {
  const box = $("#understood");
  box.innerHTML = "";
  if (!u) return;
  box.append(el("span", {class: "muted", text: "understood: "}));
  for (const m of u.matches)
    box.append(el("span", {class: "chip", title: `${m.how}${m.how === "fuzzy" ? ` ${m.score}` : ""}`,
                           text: `“${m.text}” → ${m.attribute} = ${m.value}`}));
  for (const a of u.ambiguous)
    box.append(el("span", {class: "chip warn", text: `“${a.text}” ambiguous: ` +
      a.candidates.map((c) => `${c.attribute}=${c.value}`).join(" / ")}));
  if (u.unmatched.length)
    box.append(el("span", {class: "chip warn", text: `not understood: ${u.unmatched.join(", ")}`}));
}

async function similarIn(attribute) {
  $("#mode").value = `attribute:${attribute}`;
  onModeChange();
  await runSearch(`similar ${attribute}`);
}

// the attention (or activation) map of the attribute an `attribute:<name>` search ranked by, for the query
async function showAttention(r) {
  const box = $("#attention");
  const q = state.query;
  const attribute = r.mode.startsWith("attribute:") ? r.mode.slice(10) : null;
  box.classList.toggle("hidden", !(attribute && state.schema.explains && q));
  if (box.classList.contains("hidden")) return;
  $("#attention-note").textContent = `where the model looked for ${attribute} in the query`;
  const img = $("#attention-img");
  img.removeAttribute("src");
  try {
    let resp;
    if (q.kind === "item") resp = await fetch(`${q.item.explain_url}?${new URLSearchParams({attribute})}`);
    else {
      const form = new FormData();
      form.append("image", q.file, q.name);
      form.append("attribute", attribute);
      resp = await fetch("/explain", {method: "POST", body: form});
    }
    if (!resp.ok) throw new Error((await resp.json()).detail || resp.statusText);
    img.src = URL.createObjectURL(await resp.blob());
  } catch (e) { $("#attention-note").textContent = e.message; }
}

function renderResults(r) {
  const grid = $("#results");
  grid.innerHTML = "";
  showAttention(r);
  const changes = Object.entries(r.manipulations).map(([a, v]) => `${a} = ${v}`).join(", ");
  const only = Object.entries(r.filters || {}).map(([a, v]) => `${a} = ${v}`).join(", ");
  setStatus(`${r.results.length} results · ${modeLabel(r.mode)}${changes ? ` · ${changes}` : ""}` +
            `${only ? ` · only ${only}` : ""} · labels ${r.labels} · ${r.took_ms} ms`);
  const note = $("#note");
  note.textContent = r.note || "";
  note.classList.toggle("hidden", !r.note);
  const tgt = $("#target");
  tgt.innerHTML = "";
  if (Object.keys(r.target).length) {
    tgt.append(el("span", {class: "muted", text: "badges compare each result with the target: "}));
    for (const [a, t] of Object.entries(r.target))
      tgt.append(el("span", {class: `badge legend ${t.source}`, title: t.source, text: `${a}: ${t.value}`}));
  }
  if (!r.results.length) { grid.append(el("p", {class: "muted", text: "no results (filters too narrow?)"})); return; }
  const groups = r.groups || [];
  drawGroupBoxes(r);
  if (groups.length > 1 || groups.some((g) => g.box)) {  // one row per group (one per part of an outfit), titled with its label
    grid.classList.remove("grid");
    groups.forEach((g, i) => {
      const row = el("div", {class: "grid"});
      const title = el("h3", {},
        g.box ? el("span", {class: "swatch", style: `background:${groupColour(i)}`}) : null,
        el("span", {text: g.label + (g.score == null ? "" : ` (${g.score.toFixed(2)})`)}),
        g.box ? el("button", {type: "button", class: "refine", title: "search again from this part of the photo",
          text: "search from this part", onclick: () => refineFromPart(g)}) : null);
      grid.append(el("section", {class: "group", "data-label": g.label}, title, row));
      renderCards(g.results, r, row);
    });
  } else {
    grid.classList.add("grid");
    renderCards(r.results, r, grid);
  }
}

const GROUP_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"];
function groupColour(i) { return GROUP_COLOURS[i % GROUP_COLOURS.length]; }

// each group's box (query-photo pixels) on the query image: an SVG over it, same aspect fitting as the image
function drawGroupBoxes(r) {
  const svg = $("#query-boxes");
  svg.innerHTML = "";
  const size = r.query && r.query.size;
  $("#query-body").classList.toggle("parts", !!size);  // a larger picture where parts are drawn on it
  if (!size) return;
  svg.setAttribute("viewBox", `0 0 ${size[0]} ${size[1]}`);
  svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
  const NS = svg.namespaceURI;  // the SVG namespace, without spelling a URL in the page's assets
  (r.groups || []).forEach((g, i) => {
    if (!g.box) return;
    const [x0, y0, x1, y1] = g.box;
    const rect = document.createElementNS(NS, "rect");
    for (const [k, v] of Object.entries({x: x0, y: y0, width: x1 - x0, height: y1 - y0, stroke: groupColour(i),
                                         "data-label": g.label})) rect.setAttribute(k, v);
    const t = document.createElementNS(NS, "title");
    t.textContent = g.label;
    rect.append(t);
    svg.append(rect);
  });
}

// "search from this part": the query photo cut to the group's box, searched as an upload in the same mode
async function refineFromPart(g) {
  const img = $("#query-img");
  const [x0, y0, x1, y1] = g.box.map(Math.round);
  const canvas = el("canvas", {width: Math.max(1, x1 - x0), height: Math.max(1, y1 - y0)});
  canvas.getContext("2d").drawImage(img, x0, y0, x1 - x0, y1 - y0, 0, 0, x1 - x0, y1 - y0);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  if (!blob) { showError("could not cut the part out of the photo"); return; }
  await setUploadQuery(new File([blob], `${g.label}.png`, {type: "image/png"}));
}

function renderCards(hits, r, grid) {
  for (const h of hits) {
    const badges = el("div", {class: "badges"});
    for (const [a, ok] of Object.entries(h.matches)) {
      const requested = r.target[a] && r.target[a].source === "requested";
      badges.append(el("span", {class: `badge ${ok ? "match" : "miss"}${requested ? " requested" : ""}`,
        "data-attr": a, "data-match": ok ? "1" : "0",
        title: `${a}: ${h.attributes[a] || "unspecified"} (target ${r.target[a].value})`,
        text: `${ok ? "✓" : "✗"} ${h.attributes[a] || "—"}`}));
    }
    const card = el("article", {class: "card", "data-id": h.id, tabindex: "0", title: "click: search from this item"},
      el("img", {src: h.image_url, alt: h.id, loading: "lazy"}),
      el("div", {class: "meta"}, el("span", {class: "rank", text: `#${h.rank}`}), el("b", {text: h.id}),
        el("span", {class: "score", text: h.score.toFixed(3)})),
      badges);
    if (h.explain_url) {
      card.append(el("button", {type: "button", class: "explain", text: "why? (activation maps)",
        onclick: (ev) => { ev.stopPropagation(); openExplain(h); }}));
    }
    const pick = () => setItemQuery(h.id, {label: `picked ${h.id}`});
    card.addEventListener("click", pick);
    card.addEventListener("keydown", (ev) => { if (ev.key === "Enter") pick(); });
    grid.append(card);
  }
}

function renderHistory() {
  const list = $("#history-list");
  list.innerHTML = "";
  state.history.forEach((h, i) => {
    const who = h.query.kind === "item" ? h.query.item.id : "upload";
    list.append(el("li", {class: i === state.history.length - 1 ? "current" : ""},
      el("b", {text: who}), el("span", {text: ` · ${h.label}`}),
      h.text ? el("span", {class: "muted", text: ` (“${h.text}”)`}) : null));
  });
  $("#undo-btn").disabled = state.history.length < 2;
}

function undo() {
  if (state.history.length < 2) return;
  state.history.pop();
  const h = state.history[state.history.length - 1];
  state.query = {...h.query};
  $("#mode").value = h.mode;
  $("#k").value = String(h.k);
  onModeChange();
  renderQuery();
  setManipulations(h.manipulations);
  $("#text").value = "";
  renderUnderstood(h.response.understood);
  state.results = h.response;
  renderResults(h.response);
  renderHistory();
  showError(null);
}

// --- explanation overlay -------------------------------------------------------------------------
async function openExplain(h) {
  return showExplanation(h.id, () => fetch(h.explain_url));
}

function explainQuery() {
  const q = state.query;
  if (!q) return;
  if (q.kind === "item") return showExplanation(q.item.id, () => fetch(q.item.explain_url));
  const form = new FormData();
  form.append("image", q.file, q.name);
  return showExplanation("uploaded photo", () => fetch("/explain", {method: "POST", body: form}));
}

async function showExplanation(name, request) {
  const dlg = $("#explain-dialog");
  $("#explain-title").textContent = `${name}: where the model looked`;
  $("#explain-note").textContent = "loading…";
  const img = $("#explain-img");
  img.removeAttribute("src");
  dlg.showModal();
  try {
    const r = await request();
    if (!r.ok) throw new Error((await r.json()).detail || r.statusText);
    img.src = URL.createObjectURL(await r.blob());
    $("#explain-note").textContent = "per attribute: the activation map of the predicted value and the box fitted to it";
  } catch (e) { $("#explain-note").textContent = e.message; }
}

// --- browsing ------------------------------------------------------------------------------------
async function loadBrowse() {
  const b = state.browse;
  const params = new URLSearchParams({offset: b.offset, limit: b.limit});
  if (b.q) params.set("q", b.q);
  let r;
  try { r = await api(`/items?${params}`); } catch (e) { showError(e.message); return; }
  b.total = r.total;
  const grid = $("#browse-grid");
  grid.innerHTML = "";
  for (const it of r.items) {
    grid.append(el("img", {src: it.image_url, alt: it.id, title: `${it.id}: ${Object.values(it.attributes).join(", ")}`,
      loading: "lazy", "data-id": it.id, onclick: () => setItemQuery(it.id)}));
  }
  const end = Math.min(b.offset + b.limit, b.total);
  $("#browse-pos").textContent = b.total ? `${b.offset + 1}-${end} of ${b.total}` : "nothing matches";
  $("#browse-prev").disabled = b.offset === 0;
  $("#browse-next").disabled = end >= b.total;
}

async function randomQuery() {
  try {
    let r = await api("/items?random=true&limit=1&split=query");
    if (!r.items.length) r = await api("/items?random=true&limit=1");
    if (r.items.length) await setItemQuery(r.items[0].id, {label: `random ${r.items[0].id}`});
  } catch (e) { showError(e.message); }
}

function wire() {
  for (const t of document.querySelectorAll(".tab")) {
    t.addEventListener("click", () => {
      for (const o of document.querySelectorAll(".tab")) o.classList.toggle("active", o === t);
      for (const body of document.querySelectorAll(".tab-body"))
        body.classList.toggle("hidden", body.id !== `tab-${t.dataset.tab}`);
    });
  }
  let timer = null;
  $("#browse-q").addEventListener("input", (e) => {
    clearTimeout(timer);
    timer = setTimeout(() => { state.browse.q = e.target.value.trim(); state.browse.offset = 0; loadBrowse(); }, 250);
  });
  $("#browse-prev").addEventListener("click", () => {
    state.browse.offset = Math.max(0, state.browse.offset - state.browse.limit); loadBrowse(); });
  $("#browse-next").addEventListener("click", () => { state.browse.offset += state.browse.limit; loadBrowse(); });
  $("#random-btn").addEventListener("click", randomQuery);
  $("#byid-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = $("#item-id").value.trim();
    if (id) setItemQuery(id);
  });
  $("#upload").addEventListener("change", (e) => { if (e.target.files.length) setUploadQuery(e.target.files[0]); });
  $("#search-btn").addEventListener("click", () => runSearch());
  $("#text").addEventListener("keydown", (e) => { if (e.key === "Enter") runSearch(); });
  $("#reset-btn").addEventListener("click", () => { setManipulations({}); $("#text").value = ""; renderUnderstood(null); });
  $("#mode").addEventListener("change", onModeChange);
  $("#undo-btn").addEventListener("click", undo);
}

(async function main() {
  wire();
  try {
    await loadSchema();
  } catch (e) { showError(`cannot reach the vestis API: ${e.message}`); return; }
  await loadBrowse();
  document.body.dataset.ready = "1";
})();
