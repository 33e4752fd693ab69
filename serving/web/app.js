// The enhancer's web page: send a photo to POST /enhance, compare before/after.
// Plain browser JavaScript, no build step, no library, nothing fetched from elsewhere.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const KEY_STORE = "img2img-api-key"; // sessionStorage only: gone when the tab closes
  const ZOOMS = [0.125, 0.25, 0.5, 1, 2, 4, 8];
  const TITLES = {
    400: "The endpoint refused the request",
    401: "API key needed",
    403: "API key refused",
    413: "Photo too large",
    408: "Upload too slow",
    415: "Image type not supported",
    429: "The endpoint is busy",
    500: "The endpoint failed",
    502: "The endpoint is unreachable",
    503: "Model not available",
    504: "Timed out",
  };
  const HINTS = {
    401: "Enter the endpoint's API key above, then the photo is sent again.",
    413: "Try a smaller photo: the limit is the deployment's --max-megapixels.",
    503: "The model is loading or failed to load; try again in a moment (`img2img serve status`).",
    408: "The photo took too long to upload; check the connection and try again, or send a smaller one.",
    429: "Too many requests at once; try again in a moment.",
    504: "The photo took too long to enhance; try a smaller one.",
  };
  const state = {
    file: null, name: "photo", beforeUrl: null, afterUrl: null, w: 0, h: 0,
    zoom: 1, fit: true, pos: 50, xhr: null, timer: null, pending: null, modelError: false, rollout: null,
  };

  // ---- API key (only when the endpoint asks for one) ----
  const getKey = () => sessionStorage.getItem(KEY_STORE) || "";
  function authHeaders() {
    const key = getKey();
    return key ? { Authorization: "Bearer " + key } : {};
  }
  function showKeyForm(why) {
    $("key-why").textContent = why;
    $("key-form").hidden = false;
    $("api-key").value = getKey();
    $("api-key").focus();
  }
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) {
      showError("API key needed", "Type the key into the field first.");
      return;
    }
    sessionStorage.setItem(KEY_STORE, key);
    $("key-form").hidden = true;
    clearError();
    setStatus("API key set for this tab.");
    if (state.pending) enhanceAll({ photos: [state.pending], skipped: [] });
  });
  $("key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    $("api-key").value = "";
    setStatus("API key forgotten.");
  });

  // ---- Messages ----
  function setStatus(text) {
    $("status").textContent = text;
  }
  function clearError() {
    $("error").hidden = true;
    $("error").replaceChildren();
  }
  function showError(title, detail) {
    const strong = document.createElement("strong");
    strong.textContent = title;
    const p = document.createElement("span");
    p.textContent = detail;
    $("error").replaceChildren(strong, p);
    $("error").hidden = false;
  }
  function errorText(body) {
    try {
      const parsed = JSON.parse(body);
      return String(parsed.error || parsed.detail || body);
    } catch {
      return body || "(no details)";
    }
  }
  function apiError(status, body) {
    const msg = errorText(body);
    const title = `${status} ${TITLES[status] || "Unexpected answer from the endpoint"}`;
    showError(title, HINTS[status] ? `${msg}. ${HINTS[status]}` : msg);
    setStatus(`Failed (${status}).`);
    if (status === 401 || status === 403) {
      showKeyForm(getKey() ? "The endpoint refused this API key: check it and try again."
        : "This endpoint needs an API key.");
    }
  }

  // ---- The served model (GET /model) ----
  // Registry tags val_psnr, val_input_psnr, val_gain_db, ... -> "PSNR 33.26 dB", "input PSNR ...".
  function metricText(key, value) {
    if (typeof value !== "number") return String(value);
    if (/share$/i.test(key)) return Math.round(value * 100) + "%";
    if (/unchanged$/i.test(key)) return String(Math.round(value));
    if (/gain/i.test(key)) return (value >= 0 ? "+" : "") + value.toFixed(2) + " dB";
    if (/psnr|_db$/i.test(key)) return value.toFixed(2) + " dB";
    if (/ssim/i.test(key)) return value.toFixed(4);
    return Number(value.toPrecision(4)).toString();
  }
  function metricName(key) {
    const words = { psnr: "PSNR", ssim: "SSIM", l1: "L1", lpips: "LPIPS", db: "", gain: "PSNR gain",
      improved: "images improved", share: "", unchanged: "pairs input = target" };
    return key.replace(/^val_/, "").split("_").map((w) => (w in words ? words[w] : w))
      .filter(Boolean).join(" ");
  }
  function metricRank(key) {
    return ["val_psnr", "val_ssim", "val_gain_db"].indexOf(key) + 1 || (/input/.test(key) ? 5 : 4);
  }
  const TASK_TEXT = {
    deblur: "deblurring", restore: "restoring damaged photos", colorize: "colourising grey photos",
    sketch: "turning line drawings into photos", "colorize+restore": "colourising and restoring damaged grey photos",
  };
  function renderModel(info) {
    const extra = [info.variant, info.runtime, info.device].filter(Boolean).join(", ");
    // The task the model was trained for, from its training set's degradation spec (GET /model).
    const task = TASK_TEXT[info.task] || info.task;
    const trained = task ? `, trained for ${task}` + (info.degradation ? ` (inputs made with ${info.degradation})` : "")
      : "";
    $("model-summary").textContent = `Model ${info.name} v${info.version}` + (extra ? ` (${extra})` : "") + trained +
      (Object.keys(info.metrics || {}).length ? "; on its validation set" +
        (info.psnr_definition === "pooled-mse" ? " (PSNR of the pooled MSE over the set):" : ":") : "");
    const rows = Object.entries(info.metrics || {})
      .sort(([a], [b]) => metricRank(a) - metricRank(b) || a.localeCompare(b));
    $("model-metrics").replaceChildren(...rows.map(([k, v]) => {
      const div = document.createElement("div");
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = metricName(k);
      dd.textContent = metricText(k, v);
      div.append(dt, dd);
      return div;
    }));
    const dirs = (Array.isArray(info.directions) ? info.directions : [])
      .map((d) => (typeof d === "string" ? d : d && d.name)).filter(Boolean);
    const select = $("direction");
    if (dirs.length > 1) {
      const keep = select.value;
      select.replaceChildren(...dirs.map((d) => new Option(d, d)));
      if (dirs.includes(keep)) select.value = keep;
    }
    $("direction-box").hidden = dirs.length < 2;
  }
  async function loadModel() {
    let r;
    try {
      r = await fetch("model", { cache: "no-store", headers: authHeaders() });
    } catch (e) {
      $("model-summary").textContent = "Cannot reach the endpoint.";
      showError("Endpoint unreachable", `GET /model failed (${e.message}); is it deployed? (img2img serve status)`);
      state.modelError = true;
      return;
    }
    const body = await r.text();
    if (!r.ok) {
      $("model-summary").textContent = `No model: ${errorText(body)}`;
      apiError(r.status, body);
      state.modelError = true;
      if (r.status === 503) setTimeout(loadModel, 5000); // loading: ask again
      return;
    }
    if (state.modelError) { // the model came up after all: its error no longer holds
      state.modelError = false;
      clearError();
      setStatus("");
    }
    const info = JSON.parse(body);
    renderModel(info);
    if (info.api_key_required && !getKey()) showKeyForm("This endpoint needs an API key.");
  }

  // ---- Sending a photo ----
  function stem(name) {
    const base = (name || "").replace(/\.[^.]*$/, "").replace(/[^\w.-]+/g, "_").replace(/^[._]+/, "");
    return base || "photo";
  }
  function stopTimer() {
    clearInterval(state.timer);
    state.timer = null;
    $("progress").hidden = true;
  }
  // -> a Promise of {ok, text}, settled when this photo is done, failed, or replaced by another.
  // During a rollout "both" sends it to the champion, then to the challenger, and shows the two
  // answers against each other (the champion's on the left, where "before" usually is).
  async function enhance(file, label = "") {
    if ($("version-box").hidden || $("version").value !== "both") {
      return send(file, label, $("version-box").hidden ? "" : $("version").value, null);
    }
    const first = await send(file, `${label}Champion: `, "champion", null);
    if (!first.ok) return first;
    const second = await send(file, `${label}Challenger: `, "challenger", first);
    return second.ok ? { ...second, text: `${second.text} (champion and challenger side by side)` } : second;
  }
  // One request. `version`: "", "champion" or "challenger"; `against`: the champion's answer
  // ({blob, version}) to show instead of the original, or null.
  function send(file, label, version, against) {
    let settle;
    const done = new Promise((resolve) => { settle = resolve; });
    if (state.xhr) state.xhr.abort();
    clearError();
    $("result").hidden = true; // the one shown belongs to the previous photo
    state.pending = null;
    const params = new URLSearchParams({ format: $("format").value });
    if (!$("direction-box").hidden) params.set("direction", $("direction").value);
    if (version) params.set("version", version);
    const xhr = new XMLHttpRequest();
    state.xhr = xhr;
    xhr.open("POST", "enhance?" + params);
    xhr.responseType = "blob";
    xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    const t0 = performance.now();
    const bar = $("progress-bar");
    let phase = "Uploading";
    bar.value = 0;
    $("progress").hidden = false;
    setStatus(`${label}Uploading ${file.name || "photo"} (${(file.size / 1024).toFixed(0)} KiB)…`);
    const tick = () => {
      $("elapsed").textContent = `${phase}: ${((performance.now() - t0) / 1000).toFixed(1)} s`;
    };
    tick();
    clearInterval(state.timer);
    state.timer = setInterval(tick, 100);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable && phase === "Uploading") bar.value = (100 * e.loaded) / e.total;
    };
    xhr.upload.onload = () => {
      phase = "Enhancing";
      bar.removeAttribute("value"); // indeterminate: the endpoint does not report progress
      setStatus(`${label}Enhancing on the endpoint…`);
      tick();
    };
    xhr.onload = async () => {
      if (state.xhr !== xhr) return;
      state.xhr = null;
      stopTimer();
      const secs = (performance.now() - t0) / 1000;
      $("elapsed").textContent = "";
      if (xhr.status === 200) {
        const answeredBy = xhr.getResponseHeader("X-Model-Version");
        const ok = await showResult(file, xhr.response, secs, xhr.getResponseHeader("X-Model-Name"), answeredBy,
          against);
        settle({ ok, text: `enhanced in ${secs.toFixed(1)} s`, blob: xhr.response, version: answeredBy });
      } else {
        if (xhr.status === 401 || xhr.status === 403) state.pending = file;
        const body = await xhr.response.text();
        apiError(xhr.status, body);
        settle({ ok: false, text: `not enhanced: ${errorText(body)}` });
      }
    };
    xhr.onabort = () => settle({ ok: false, text: "stopped: another photo was chosen" });
    xhr.onerror = () => {
      if (state.xhr !== xhr) return;
      state.xhr = null;
      stopTimer();
      $("elapsed").textContent = "";
      showError("Endpoint unreachable", "The request failed before any answer came back; is the endpoint running? (img2img serve status)");
      setStatus("Failed: no answer.");
      settle({ ok: false, text: "not enhanced: the endpoint did not answer" });
    };
    xhr.send(file);
    return done;
  }

  function loadImage(img, url) {
    return new Promise((resolve) => {
      img.onload = () => resolve(true);
      img.onerror = () => resolve(false);
      img.src = url;
    });
  }
  async function showResult(file, blob, secs, modelName, modelVersion, against) {
    for (const u of [state.beforeUrl, state.afterUrl]) if (u) URL.revokeObjectURL(u);
    state.beforeUrl = URL.createObjectURL(against ? against.blob : file);
    const [left, right] = against ? [`Champion v${against.version}`, `Challenger v${modelVersion}`] : ["Before", "After"];
    $("tag-left").textContent = $("caption-left").textContent = left;
    $("tag-right").textContent = $("caption-right").textContent = right;
    $("result-title").textContent = against ? "Champion / challenger" : "Before / after";
    state.afterUrl = URL.createObjectURL(blob);
    const [beforeOk, afterOk] = await Promise.all([
      loadImage($("before-img"), state.beforeUrl), loadImage($("after-img"), state.afterUrl)]);
    if (!afterOk) {
      showError("Unreadable result", `The endpoint answered ${blob.type || "an unknown type"}, which this browser cannot show.`);
      setStatus("Failed: unreadable result.");
      return false;
    }
    $("before-side").src = state.beforeUrl;
    $("after-side").src = state.afterUrl;
    const after = $("after-img");
    const before = $("before-img");
    state.w = after.naturalWidth;
    state.h = after.naturalHeight;
    const ext = { "image/jpeg": "jpg", "image/webp": "webp", "image/png": "png" }[blob.type] || "png";
    state.name = stem(file.name);
    $("download").href = state.afterUrl;
    $("download").download = `${state.name}-enhanced.${ext}`;
    const role = state.rollout && state.rollout.challenger_version === modelVersion ? " (the challenger)"
      : state.rollout && state.rollout.champion_version === modelVersion ? " (the champion)" : "";
    const by = modelName ? ` by ${modelName} v${modelVersion}${role}` : "";
    const orig = beforeOk ? `${before.naturalWidth} × ${before.naturalHeight} px`
      : "not shown (this browser cannot display its format)";
    // A super-resolution model answers larger than it was sent: "before" is the original shown
    // enlarged to the result's size (smooth or nearest, switchable), so both halves line up.
    const scale = beforeOk && before.naturalWidth ? state.w / before.naturalWidth : 1;
    $("before-filter").hidden = !(scale > 1.01);
    const shown = scale > 1.01 ? `, shown enlarged ${scale.toFixed(scale % 1 ? 2 : 0)}× to the result's size` : "";
    $("sizes").textContent = against
      ? `Left: the champion's answer (v${against.version}); right: the challenger's${by}, ${state.w} × ${state.h} px, ` +
        `${(blob.size / 1024).toFixed(0)} KiB, in ${secs.toFixed(1)} s.`
      : `Original ${orig}${shown}; enhanced ${state.w} × ${state.h} px${by}, ` +
        `${(blob.size / 1024).toFixed(0)} KiB, in ${secs.toFixed(1)} s.`;
    $("result").hidden = false;
    state.fit = true;
    setPos(50);
    applyZoom();
    setStatus(`Done in ${secs.toFixed(1)} s. Drag the divider to compare.`);
    return true;
  }

  // ---- What was picked or dropped: photos, folders, other files ----
  // A folder dropped in Chromium/Safari has a directory entry; elsewhere (or pasted) it arrives as
  // an empty file with no type. Such items are never sent: the page says what it saw instead.
  const IMAGE_NAME = /\.(png|jpe?g|jfif|webp|tiff?|bmp|gif|avif|heic|heif|jxl|pbm|pgm|ppm|pnm|tga|ico)$/i;
  function sortItems(items) {
    const photos = [];
    const skipped = [];
    for (const { file, entry } of items) {
      const name = (entry && entry.name) || (file && file.name) || "item";
      if ((entry && entry.isDirectory) || !file) {
        skipped.push({ name, why: "is a folder. Open it and drop the photos themselves (you can select several at once)." });
      } else if (!file.size && !file.type) {
        skipped.push({ name, why: "is empty or is a folder, so there is nothing to enhance." });
      } else if (!(file.type ? file.type.startsWith("image/") : IMAGE_NAME.test(file.name))) {
        skipped.push({ name, why: "is not a photo. This page enhances photos such as JPEG, PNG, WebP or TIFF files." });
      } else {
        photos.push(file);
      }
    }
    return { photos, skipped };
  }
  function dropItems(dt) {
    // Entries must be read while the drop event runs: the browser empties dt right after.
    const items = [...(dt.items || [])].filter((i) => i.kind === "file").map((i) => ({
      file: i.getAsFile(), entry: i.webkitGetAsEntry ? i.webkitGetAsEntry() : null,
    }));
    return items.length ? items : [...(dt.files || [])].map((file) => ({ file, entry: null }));
  }
  function listItem(name, text) {
    const li = document.createElement("li");
    const b = document.createElement("b");
    b.textContent = name;
    const span = document.createElement("span");
    span.textContent = " " + text;
    li.append(b, span);
    $("batch").append(li);
    return span;
  }
  let batchId = 0;
  const batchUrls = [];
  // Photos are enhanced one after another; a new pick or drop replaces what is left of the last.
  async function enhanceAll({ photos, skipped }) {
    const id = ++batchId;
    batchUrls.splice(0).forEach((u) => URL.revokeObjectURL(u));
    $("batch").replaceChildren();
    $("batch").hidden = !skipped.length && photos.length < 2;
    for (const s of skipped) listItem(`“${s.name}”`, s.why);
    if (!photos.length) {
      if (state.xhr) state.xhr.abort();
      const what = skipped.length === 1 ? `“${skipped[0].name}” ${skipped[0].why}`
        : `None of the ${skipped.length} dropped items is a photo.`;
      showError("Nothing to enhance", what);
      setStatus("Nothing was sent.");
      return;
    }
    const lines = photos.map((f) => listItem(f.name || "photo", "waiting…"));
    let ok = 0;
    for (let i = 0; i < photos.length; i++) {
      lines[i].textContent = " enhancing…";
      const label = photos.length > 1 ? `Photo ${i + 1} of ${photos.length}: ` : "";
      const r = await enhance(photos[i], label);
      if (id !== batchId) return;
      lines[i].textContent = " " + r.text;
      if (r.ok && r.blob) {
        ok += 1;
        const a = document.createElement("a");
        a.href = URL.createObjectURL(r.blob);
        batchUrls.push(a.href);
        a.download = $("download").download;
        a.textContent = "download";
        lines[i].append(" (", a, ")");
      }
    }
    if (photos.length > 1 || skipped.length) {
      const left = skipped.length ? `; ${skipped.length} item(s) not photos, not sent` : "";
      setStatus(`${ok} of ${photos.length} photo(s) enhanced${left}. The last one is shown below.`);
    }
  }

  // ---- Picking, dropping, pasting ----
  $("file").addEventListener("change", () => {
    const files = [...$("file").files];
    if (files.length) enhanceAll(sortItems(files.map((file) => ({ file, entry: null }))));
    $("file").value = ""; // the same file again is a new pick
  });
  const drop = $("drop");
  document.addEventListener("dragover", (e) => {
    e.preventDefault(); // otherwise the browser opens the dropped file itself
    drop.classList.add("over");
  });
  document.addEventListener("dragleave", (e) => {
    if (!e.relatedTarget) drop.classList.remove("over");
  });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const items = e.dataTransfer ? dropItems(e.dataTransfer) : [];
    if (items.length) enhanceAll(sortItems(items));
    else showError("Nothing to enhance", "What was dropped is not a file: drop photos from your computer.");
  });
  document.addEventListener("paste", (e) => {
    if (e.target instanceof HTMLInputElement && e.target.type !== "file") return; // e.g. the API key
    const f = e.clipboardData && [...e.clipboardData.files][0];
    if (f) {
      const file = f.name && f.name !== "image.png" ? f : new File([f], "pasted.png", { type: f.type });
      enhanceAll(sortItems([{ file, entry: null }]));
    } else {
      showError("Nothing to enhance", "The clipboard holds no image: copy a photo, then paste here.");
    }
  });

  // ---- Before/after divider ----
  const compare = $("compare");
  const divider = $("divider");
  function setPos(p) {
    state.pos = Math.min(100, Math.max(0, p));
    compare.style.setProperty("--pos", state.pos + "%");
    const n = Math.round(state.pos);
    divider.setAttribute("aria-valuenow", String(n));
    divider.setAttribute("aria-valuetext", `${n}% original, ${100 - n}% enhanced`);
  }
  function posFromPointer(e) {
    const r = compare.getBoundingClientRect();
    setPos((100 * (e.clientX - r.left)) / r.width);
  }
  compare.addEventListener("pointerdown", (e) => {
    compare.setPointerCapture(e.pointerId);
    posFromPointer(e);
    divider.focus({ preventScroll: true });
  });
  compare.addEventListener("pointermove", (e) => {
    if (compare.hasPointerCapture(e.pointerId)) posFromPointer(e);
  });
  divider.addEventListener("keydown", (e) => {
    const step = e.shiftKey ? 10 : 1;
    const moves = {
      ArrowLeft: -step, ArrowDown: -step, ArrowRight: step, ArrowUp: step, PageDown: -10, PageUp: 10,
    };
    if (e.key in moves) setPos(state.pos + moves[e.key]);
    else if (e.key === "Home") setPos(0);
    else if (e.key === "End") setPos(100);
    else return;
    e.preventDefault();
  });

  // ---- View: compare or side by side; zoom at real pixels ----
  const sideBySide = () => $("mode").getAttribute("aria-pressed") === "true";
  $("mode").addEventListener("click", () => {
    $("mode").setAttribute("aria-pressed", String(!sideBySide()));
    $("compare").hidden = sideBySide();
    $("sidebyside").hidden = !sideBySide();
    applyZoom();
  });
  $("before-filter").addEventListener("click", () => {
    const nearest = $("before-filter").getAttribute("aria-pressed") !== "true";
    $("before-filter").setAttribute("aria-pressed", String(nearest));
    $("before-filter").textContent = nearest ? "Before: nearest" : "Before: smooth";
    $("viewport").classList.toggle("nearest", nearest);
  });
  function fitZoom() {
    const avail = $("viewport").clientWidth - 16;
    const across = sideBySide() && avail >= 700 ? 2 : 1;
    return Math.min(1, (avail - (across - 1) * 8) / (across * state.w));
  }
  function applyZoom() {
    if (!state.w) return;
    if (state.fit) state.zoom = fitZoom();
    const w = Math.max(1, Math.round(state.w * state.zoom));
    const h = Math.max(1, Math.round(state.h * state.zoom));
    compare.style.width = w + "px";
    compare.style.height = h + "px";
    for (const id of ["before-side", "after-side"]) {
      $(id).style.width = w + "px";
      $(id).style.height = h + "px";
    }
    $("viewport").classList.toggle("pixelated", state.zoom > 1);
    $("zoom-level").textContent = `${Math.round(state.zoom * 100)}%${state.fit ? " (fit)" : ""}`;
  }
  function zoomTo(z) {
    state.fit = false;
    state.zoom = z;
    applyZoom();
  }
  $("zoom-in").addEventListener("click", () => zoomTo(ZOOMS.find((z) => z > state.zoom + 1e-6) || 8));
  $("zoom-out").addEventListener("click", () => zoomTo([...ZOOMS].reverse().find((z) => z < state.zoom - 1e-6) || 0.125));
  $("zoom-1").addEventListener("click", () => zoomTo(1));
  $("zoom-fit").addEventListener("click", () => {
    state.fit = true;
    applyZoom();
  });
  window.addEventListener("resize", () => state.fit && applyZoom());

  // ---- A rollout in progress (GET /rollout): share, per-version numbers, output comparison ----
  const LIVE = ["canary", "shadow"];
  const ms = (s) => (typeof s === "number" ? `${Math.round(s * 1000)} ms` : "–");
  const num = (x, digits = 2) => (typeof x === "number" ? x.toFixed(digits) : "–");
  function renderRollout(r) {
    const live = LIVE.includes(r.state);
    state.rollout = live ? r : null;
    $("rollout").hidden = r.state === "none";
    $("version-box").hidden = !live;
    if (!live) $("version").value = "";
    if (r.state === "none") return;
    const share = r.mode === "canary" ? `the challenger answers ${r.percent}% of requests`
      : `${Math.round(r.sample * 100)}% of requests are mirrored to the challenger`;
    const step = r.steps ? `; step ${r.steps.step} of ${r.steps.of} (${r.steps.steps.join("%, ")}%), next: ${r.steps.next_move}` : "";
    const ended = live ? "" : ` Ended (${r.decided_by}): ${r.reason}`;
    $("rollout-summary").textContent = `${r.mode} of ${r.model}: champion v${r.champion_version}, challenger ` +
      `v${r.challenger_version}, ${r.state}; ${share}${step}.${ended}`;
    const c = r.comparison || {};
    $("rollout-rows").replaceChildren(...["champion", "challenger"].map((role) => {
      const s = r[role] || {};
      const tr = document.createElement("tr");
      for (const text of [`${role} v${r[role + "_version"]}`, s.requests, s.errors, ms(s.p50_s), ms(s.p95_s),
        typeof c[role + "_sharpness"] === "number" ? c[role + "_sharpness"].toExponential(2) : "–"]) {
        const td = document.createElement("td");
        td.textContent = String(text);
        tr.append(td);
      }
      return tr;
    }));
    const parts = [];
    if (r.mode === "shadow") parts.push(`${c.pairs} mirrored pairs, ${c.identical} identical, PSNR of the challenger's ` +
      `output against the champion's: mean ${num(c.psnr_mean_db)} dB, min ${num(c.psnr_min_db)} dB`);
    if (typeof c.sharpness_ratio === "number") parts.push(`challenger/champion output sharpness ${num(c.sharpness_ratio)}`);
    if (r.fallbacks) parts.push(`${r.fallbacks} challenger failure(s) answered by the champion`);
    $("rollout-compare").textContent = parts.join("; ");
  }
  async function loadRollout() {
    try {
      const r = await fetch("rollout", { cache: "no-store", headers: authHeaders() });
      if (r.ok) renderRollout(await r.json());
    } catch (e) { /* the model panel reports an unreachable endpoint */ }
    setTimeout(loadRollout, 5000);
  }

  loadModel();
  loadRollout();
})();
