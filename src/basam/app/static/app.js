// basam app: the page. Talks to the JSON API of basam/app/server.py; no dependencies, no network
// beyond this server. Coordinates sent to the server are in the original image's pixels.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const MASK_RGB = [30, 144, 255];      // basam.io.PALETTE[0], as in `basam segment --overlay`
  const MASK_ALPHA = 120;               // of 255: the image stays visible under the mask
  const DRAG_PX = 5;                    // a press that moves more than this (screen px) draws a box

  const state = {
    config: null,
    image: null,        // {id, name, width, height, url}
    img: null,          // the decoded image as the server sent it (HTMLImageElement)
    scale: 1,           // screen px per image px
    points: [],         // {x, y, label}
    box: null,          // [x0, y0, x1, y1]
    masks: [],          // {png (base64), score, area, bitmap (canvas)}
    selected: 0,
    best: 0,
    mode: "prompt",     // "prompt" | "everything"
    overlay: null, overlayB64: null, everythingCount: 0,
    encodedKey: null,   // the (image, model, resolution, preset) the server holds an encoding of
    encoding: null,     // {key, promise} while an encode runs
    seq: 0,             // newest request; older answers are dropped
    drag: null,
    history: [],        // every page state, in order (the tests read it)
    predictions: 0,
  };

  // ---- status and errors ----------------------------------------------------------------------

  function setState(s, text) {
    document.body.dataset.state = s;
    if (state.history[state.history.length - 1] !== s) state.history.push(s);
    if (text !== undefined) $("status-text").textContent = text;
  }
  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = false;
    setState("error", state.image ? "The last request failed; the page is still usable." : "Open an image to start.");
  }
  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  async function api(method, url, body) {
    const opts = { method, headers: {} };
    if (body instanceof FormData) opts.body = body;
    else if (body !== undefined) {
      opts.body = JSON.stringify(body);
      opts.headers["Content-Type"] = "application/json";
    }
    let r;
    try {
      r = await fetch(url, opts);
    } catch (e) {
      throw new Error(`the server does not answer (${e.message}); is basam app still running?`);
    }
    let data = null;
    try { data = await r.json(); } catch (e) { /* not JSON: reported below */ }
    if (!r.ok) throw new Error((data && data.error) || `${r.status} ${r.statusText}`);
    return data;
  }

  async function pollJob(id, onUpdate) {
    for (;;) {
      const j = await api("GET", `/api/jobs/${id}`);
      if (j.state === "ready") return j;
      if (j.state === "error") throw new Error(j.error);
      onUpdate(j);
      await sleep(150);
    }
  }

  function loadImage(src) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("the browser could not display the image"));
      img.src = src;
    });
  }

  // ---- requests -------------------------------------------------------------------------------

  function target() {
    return {
      image: state.image.id,
      model: $("model").value,
      resolution: parseInt($("resolution").value, 10),
      preset: $("preset").value,
    };
  }
  const keyOf = (t) => [t.image, t.model, t.resolution, t.preset].join("|");
  const describe = (t) => `${t.model} at ${t.resolution} px, ${t.preset} attention`;

  // Encode the current image for the current settings unless the server already holds it; show
  // progress while the encoder runs.
  async function ensureEncoded() {
    const t = target();
    const key = keyOf(t);
    if (state.encodedKey === key) return;
    if (state.encoding && state.encoding.key === key) return state.encoding.promise;
    const promise = (async () => {
      const r = await api("POST", "/api/encode", t);
      let took = null;
      if (r.state !== "ready") {
        const show = (j) => {
          const s = j.state === "loading" ? "loading" : "encoding";
          const what = s === "loading" ? `Loading ${t.model}…` : `Encoding ${state.image.name} with ${describe(t)}…`;
          setState(s, `${what} ${(j.elapsed_s || 0).toFixed(1)} s`);
        };
        show(r);
        const j = await pollJob(r.job, show);
        took = j.elapsed_s;
      }
      state.encodedKey = key;
      clearError();
      const secs = took === null ? "already encoded" : `encoded in ${took.toFixed(2)} s`;
      setState("ready", `${state.image.name} (${state.image.width}×${state.image.height}): ${describe(t)}, ${secs}. ` +
        "Click to segment.");
    })();
    state.encoding = { key, promise };
    try {
      await promise;
    } finally {
      if (state.encoding && state.encoding.key === key) state.encoding = null;
    }
  }

  async function predict() {
    if (!state.image) return;
    const seq = ++state.seq;
    if (!state.points.length && !state.box) {
      state.masks = [];
      renderCandidates();
      render();
      return;
    }
    try {
      await ensureEncoded();
      if (seq !== state.seq) return;
      setState("predicting", "Decoding…");
      const body = {
        ...target(),
        points: state.points.map((p) => [p.x, p.y, p.label]),
        box: state.box,
      };
      const r = await api("POST", "/api/predict", body);
      if (seq !== state.seq) return; // a newer click superseded this answer
      const bitmaps = await Promise.all(r.masks.map(maskBitmap));
      if (seq !== state.seq) return;
      state.masks = r.masks.map((png, i) => ({ png, score: r.scores[i], area: r.areas[i], bitmap: bitmaps[i] }));
      state.best = r.best;
      state.selected = r.best;
      state.predictions += 1;
      clearError();
      setState("ready", `${r.masks.length} candidate masks, decoded in ${r.decode_ms.toFixed(0)} ms ` +
        `(${state.points.length} point${state.points.length === 1 ? "" : "s"}${state.box ? " + box" : ""}).`);
      renderCandidates();
      render();
    } catch (e) {
      if (seq === state.seq) showError(e.message);
    }
  }

  async function everything() {
    if (!state.image) return;
    const seq = ++state.seq;
    const t = target();
    try {
      setState("running", "Segment everything: starting…");
      const m = state.config.models.find((x) => x.name === t.model);
      const r = await api("POST", "/api/everything", { ...t, ...(m ? m.everything : {}) });
      const j = await pollJob(r.job, (j) => setState(j.state === "loading" ? "loading" : "running",
        `Segment everything with ${describe(t)}: ${j.state}… ${(j.elapsed_s || 0).toFixed(1)} s`));
      if (seq !== state.seq) return;
      state.overlay = await loadImage(`data:image/png;base64,${j.result.overlay}`);
      state.overlayB64 = j.result.overlay;
      state.everythingCount = j.result.count;
      state.mode = "everything";
      state.points = [];
      state.box = null;
      state.masks = [];
      clearError();
      setState("ready", `Segment everything: ${j.result.count} masks in ${j.elapsed_s.toFixed(1)} s. Click to go back to prompts.`);
      renderCandidates();
      render();
    } catch (e) {
      if (seq === state.seq) showError(e.message);
    }
  }

  async function openImage(send) {
    const seq = ++state.seq;
    setState("uploading", "Opening the image…");
    try {
      const info = await send();
      const img = await loadImage(info.url);
      if (seq !== state.seq) return;
      Object.assign(state, {
        image: info, img, points: [], box: null, masks: [], mode: "prompt", overlay: null, overlayB64: null,
        encodedKey: null,
      });
      const c = $("canvas");
      c.width = info.width;
      c.height = info.height;
      document.body.classList.add("has-image");
      clearError();
      layout();
      renderCandidates();
      render();
      await ensureEncoded();
    } catch (e) {
      if (seq === state.seq) showError(e.message);
    }
  }

  // ---- drawing --------------------------------------------------------------------------------

  // A mask PNG (0/255 gray) -> a canvas with the mask tinted and outlined, transparent elsewhere.
  async function maskBitmap(b64) {
    const img = await loadImage(`data:image/png;base64,${b64}`);
    const w = img.width, h = img.height;
    const c = document.createElement("canvas");
    c.width = w;
    c.height = h;
    const ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const data = ctx.getImageData(0, 0, w, h);
    const px = data.data;
    const inside = new Uint8Array(w * h);
    for (let i = 0; i < w * h; i++) inside[i] = px[4 * i] > 127 ? 1 : 0;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const i = y * w + x, o = 4 * i;
        if (!inside[i]) { px[o + 3] = 0; continue; }
        const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
          !inside[i - 1] || !inside[i + 1] || !inside[i - w] || !inside[i + w];
        px[o] = MASK_RGB[0]; px[o + 1] = MASK_RGB[1]; px[o + 2] = MASK_RGB[2];
        px[o + 3] = edge ? 255 : MASK_ALPHA;
      }
    }
    ctx.putImageData(data, 0, 0);
    return c;
  }

  function layout() {
    if (!state.image) return;
    const c = $("canvas");
    const availW = Math.max(200, $("stage").clientWidth - 36);
    const top = c.getBoundingClientRect().top + window.scrollY;
    const availH = Math.max(200, window.innerHeight - top - 56);
    state.scale = Math.min(availW / state.image.width, availH / state.image.height, 4);
    c.style.width = `${Math.round(state.image.width * state.scale)}px`;
    c.style.height = `${Math.round(state.image.height * state.scale)}px`;
    render();
  }

  function render() {
    const c = $("canvas");
    if (!state.img) return;
    const ctx = c.getContext("2d");
    let overlay = "none";
    if (state.mode === "everything" && state.overlay) {
      ctx.drawImage(state.overlay, 0, 0);
      overlay = "everything";
    } else {
      ctx.drawImage(state.img, 0, 0);
      if (state.masks.length) {
        ctx.drawImage(state.masks[state.selected].bitmap, 0, 0);
        overlay = "mask";
      }
    }
    const u = 1 / state.scale; // one screen pixel in image pixels
    const box = state.drag && state.drag.moved ? boxOf(state.drag.start, state.drag.end) : state.box;
    if (box) {
      ctx.save();
      ctx.strokeStyle = "rgb(255, 255, 0)";
      ctx.lineWidth = 2 * u;
      if (state.drag && state.drag.moved) ctx.setLineDash([6 * u, 4 * u]);
      ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
      ctx.restore();
    }
    for (const p of state.points) {
      ctx.beginPath();
      ctx.arc(p.x, p.y, 6 * u, 0, 2 * Math.PI);
      ctx.fillStyle = p.label === 1 ? "rgb(0, 220, 0)" : "rgb(230, 0, 0)";
      ctx.fill();
      ctx.lineWidth = 2 * u;
      ctx.strokeStyle = "#fff";
      ctx.stroke();
    }
    c.dataset.overlay = overlay;
    c.dataset.selected = String(state.selected);
    c.dataset.predictions = String(state.predictions);
  }

  function renderCandidates() {
    const el = $("candidates");
    el.textContent = "";
    if (state.mode === "everything") {
      const note = document.createElement("span");
      note.className = "note";
      note.textContent = `${state.everythingCount} masks (segment everything)`;
      el.appendChild(note);
    }
    state.masks.forEach((m, i) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "cand";
      b.dataset.index = String(i);
      b.setAttribute("aria-pressed", String(i === state.selected));
      b.title = `candidate ${i + 1}: predicted IoU ${m.score.toFixed(4)}, ${m.area} px`;
      const sw = document.createElement("span");
      sw.className = "swatch";
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = m.score.toFixed(3);
      b.append(sw, `Mask ${i + 1}${i === state.best ? " ★" : ""}`, score);
      b.addEventListener("click", () => {
        state.selected = i;
        renderCandidates();
        render();
      });
      el.appendChild(b);
    });
    updateDownload();
  }

  function updateDownload() {
    const a = $("download");
    const stem = state.image ? state.image.name.replace(/\.[^.]*$/, "") || "image" : "image";
    let b64 = null, name = null;
    if (state.mode === "everything" && state.overlayB64) {
      b64 = state.overlayB64;
      name = `${stem}_everything.png`;
    } else if (state.masks.length) {
      b64 = state.masks[state.selected].png;
      name = `${stem}_mask_${state.selected}.png`;
    }
    if (b64) {
      a.href = `data:image/png;base64,${b64}`;
      a.download = name;
      a.classList.remove("disabled");
      a.setAttribute("aria-disabled", "false");
    } else {
      a.removeAttribute("href");
      a.classList.add("disabled");
      a.setAttribute("aria-disabled", "true");
    }
  }

  // ---- mouse: left click = foreground point, right click = background point, drag = box --------

  function toImage(ev) {
    const r = $("canvas").getBoundingClientRect();
    const x = ((ev.clientX - r.left) / r.width) * state.image.width;
    const y = ((ev.clientY - r.top) / r.height) * state.image.height;
    const clamp = (v, hi) => Math.round(Math.min(Math.max(v, 0), hi) * 100) / 100;
    return { x: clamp(x, state.image.width), y: clamp(y, state.image.height) };
  }
  const boxOf = (a, b) => [Math.min(a.x, b.x), Math.min(a.y, b.y), Math.max(a.x, b.x), Math.max(a.y, b.y)];

  function bindMouse() {
    const c = $("canvas");
    c.addEventListener("contextmenu", (ev) => ev.preventDefault());
    c.addEventListener("mousedown", (ev) => {
      if (!state.image || (ev.button !== 0 && ev.button !== 2)) return;
      ev.preventDefault();
      state.drag = { button: ev.button, start: toImage(ev), end: null, sx: ev.clientX, sy: ev.clientY, moved: false };
    });
    window.addEventListener("mousemove", (ev) => {
      const d = state.drag;
      if (!d || d.button !== 0) return;
      if (Math.hypot(ev.clientX - d.sx, ev.clientY - d.sy) > DRAG_PX) d.moved = true;
      if (d.moved) {
        d.end = toImage(ev);
        render();
      }
    });
    window.addEventListener("mouseup", (ev) => {
      const d = state.drag;
      if (!d) return;
      state.drag = null;
      if (state.mode === "everything") {
        state.mode = "prompt";
        state.overlay = null;
        state.overlayB64 = null;
      }
      if (d.button === 0 && d.moved) {
        const b = boxOf(d.start, toImage(ev));
        if (b[2] - b[0] >= 1 && b[3] - b[1] >= 1) state.box = b;
      } else {
        state.points.push({ x: d.start.x, y: d.start.y, label: d.button === 0 ? 1 : 0 });
      }
      render();
      predict();
    });
  }

  // ---- settings -------------------------------------------------------------------------------

  function onSettings(ev) {
    if (ev && ev.target === $("model")) {
      const m = state.config.models.find((x) => x.name === $("model").value);
      if (m) $("resolution").value = m.resolution;
    }
    const res = parseInt($("resolution").value, 10);
    if (!Number.isFinite(res) || res < state.config.min_resolution) {
      showError(`resolution must be an integer of at least ${state.config.min_resolution} px`);
      return;
    }
    if (!state.image) return;
    state.mode = "prompt";
    state.overlay = null;
    state.overlayB64 = null;
    state.masks = [];
    renderCandidates();
    render();
    if (state.points.length || state.box) predict();
    else {
      const seq = ++state.seq;
      const cached = state.encodedKey === keyOf(target());
      ensureEncoded().then(() => {
        if (seq !== state.seq || !cached) return;
        clearError(); // back to settings the server holds an encoding for
        setState("ready", `${state.image.name}: ${describe(target())}, already encoded. Click to segment.`);
      }, (e) => { if (seq === state.seq) showError(e.message); });
    }
  }

  async function init() {
    bindMouse();
    $("file").addEventListener("change", () => {
      const f = $("file").files[0];
      if (!f) return;
      const fd = new FormData();
      fd.append("file", f, f.name);
      $("file").value = ""; // choosing the same file again fires change again
      openImage(() => api("POST", "/api/images", fd));
    });
    $("path-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const p = $("path").value.trim();
      if (p) openImage(() => api("POST", "/api/images", { path: p }));
    });
    $("everything").addEventListener("click", everything);
    $("clear").addEventListener("click", () => {
      Object.assign(state, { points: [], box: null, masks: [], mode: "prompt", overlay: null, overlayB64: null });
      state.seq += 1;
      renderCandidates();
      render();
    });
    for (const id of ["model", "resolution", "preset"]) $(id).addEventListener("change", onSettings);
    window.addEventListener("resize", layout);
    try {
      state.config = await api("GET", "/api/config");
    } catch (e) {
      showError(e.message);
      return;
    }
    const cfg = state.config;
    for (const m of cfg.models) {
      const o = new Option(m.name, m.name, false, m.name === cfg.default_model);
      o.title = m.description;
      $("model").appendChild(o);
    }
    for (const p of cfg.presets) $("preset").appendChild(new Option(p, p, false, p === cfg.default_preset));
    $("resolution").value = cfg.default_resolution;
    $("resolution").min = cfg.min_resolution;
    if (!cfg.allow_paths) $("path-form").hidden = true;
    renderCandidates();
    setState("idle", "Open an image: upload one, or type a path on the server.");
  }

  // What the tests read: the state, and a pixel of the canvas next to the same pixel of the image.
  function pixelAt(x, y) {
    const c = $("canvas");
    const shown = Array.from(c.getContext("2d").getImageData(x, y, 1, 1).data);
    const t = document.createElement("canvas");
    t.width = state.image.width;
    t.height = state.image.height;
    const tctx = t.getContext("2d");
    tctx.drawImage(state.img, 0, 0);
    return { canvas: shown, image: Array.from(tctx.getImageData(x, y, 1, 1).data) };
  }
  window.basamApp = { state, pixelAt };

  init();
})();
