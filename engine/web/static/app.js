// xmodal web UI: plain JavaScript over the JSON API (/api/...). No build step.
"use strict";
(() => {
  const $ = (sel) => document.querySelector(sel);
  const grid = $("#grid"), status = $("#status"), viewer = $("#viewer");

  // When the server needs a token, opening /?token=... once gives this browser an HttpOnly session cookie
  // (and a clean URL): the page's requests carry the cookie; no URL built here carries a token.
  sessionStorage.removeItem("xmodal-token"); // left by older versions of this page

  async function api(url, options = {}) {
    let res;
    try {
      res = await fetch(url, { credentials: "same-origin", ...options });
    } catch (e) { // the network failed (fetch says only "Failed to fetch"), unless the page aborted it
      if (e.name === "AbortError") throw e;
      throw new Error("cannot reach the xmodal server");
    }
    let body = null;
    try { body = await res.json(); } catch (_) { /* not JSON */ }
    if (!res.ok) throw new Error((body && body.detail) || `${res.status} ${res.statusText}`);
    return body;
  }

  const target = () => document.querySelector('input[name="target"]:checked').value;
  function query(extra = {}) {
    const p = new URLSearchParams({ k: $("#k").value, target: target(), ...extra });
    if (target() === "images") {
      if ($("#folder").value) p.set("folder", $("#folder").value);
      if ($("#taken-after").value) p.set("taken_after", $("#taken-after").value);
      if ($("#taken-before").value) p.set("taken_before", $("#taken-before").value);
    }
    return p.toString();
  }

  // The status line; `photo` (a URL) shows the query photo of a photo or "more like this" search beside it.
  function say(text, isError = false, photo = null) {
    const words = document.createElement("span");
    words.textContent = text;
    if (photo) {
      const img = document.createElement("img");
      img.className = "query-photo";
      img.alt = ""; // the words name it
      img.src = photo;
      status.replaceChildren(img, words);
    } else {
      status.replaceChildren(words);
    }
    status.classList.toggle("error", isError);
  }

  // A reranked search scores its head with fused scores and leaves the tail in dual-encoder order with raw
  // cosines, on another scale: show a score only where it reads with the order (the tail shows its rank).
  function scoreText(h, data) {
    const mixed = data.hits.some((x) => x.reranked);
    return !mixed || h.reranked ? h.score.toFixed(3) : `#${h.rank}`;
  }
  // Why a photo matched by its words: the field's text with the query's words marked (built as nodes, never HTML).
  // The server says where the words are (`matched.spans`, in code points), so the page never folds letters itself.
  function matchedLine(matched) {
    const line = document.createElement("p");
    line.className = "matched";
    line.append(" "); // a word break after the caption in the figure's text (its accessible name)
    const labels = { ocr: "text", captions: "caption", name: "name", meta: "description" };
    for (const field of ["ocr", "captions", "name", "meta"]) {
      if (!matched[field]) continue;
      const chars = Array.from(matched[field]); // code points, as the spans count them
      const label = document.createElement("span");
      label.className = "field";
      label.textContent = labels[field] + ": ";
      line.append(label);
      let at = 0;
      for (const [start, end] of (matched.spans && matched.spans[field]) || []) {
        if (start < at || end > chars.length) continue;
        line.append(chars.slice(at, start).join(""));
        const mark = document.createElement("mark");
        mark.textContent = chars.slice(start, end).join("");
        line.append(mark);
        at = end;
      }
      line.append(chars.slice(at).join(""));
      line.append(" ");
    }
    return line;
  }
  const NOT_RERANKED = "not reranked: below the reranked head, in the order of the first search";

  function render(data, label, photo) {
    grid.replaceChildren();
    grid.className = "grid " + data.target;
    grid.dataset.count = data.hits.length;
    for (const h of data.hits) {
      if (data.target === "images") {
        const fig = document.createElement("figure");
        fig.className = "hit";
        fig.dataset.id = h.id;
        fig.title = h.path;
        fig.tabIndex = 0;
        fig.setAttribute("role", "button");
        const img = document.createElement("img");
        img.loading = "lazy";
        img.alt = h.path.split(/[\\/]/).pop();
        img.src = `/api/images/${h.id}/thumbnail`;
        const cap = document.createElement("figcaption");
        cap.innerHTML = `<span class="name"></span> <span class="score"></span>`;
        cap.querySelector(".name").textContent = img.alt;
        cap.querySelector(".score").textContent = scoreText(h, data);
        if (h.prob !== undefined) cap.querySelector(".score").title = `probability of a match: ${h.prob.toFixed(2)}`;
        if (h.reranked === false && data.hits.some((x) => x.reranked)) cap.querySelector(".score").title = NOT_RERANKED;
        // Its name is its visible words ("red.jpg 0.812"); Enter or Space opens the photo.
        fig.setAttribute("aria-label", `${img.alt} ${cap.querySelector(".score").textContent}`);
        fig.append(img, cap);
        if (h.matched) {  // the words that matched are visible text: they are part of its name too
          const line = matchedLine(h.matched);
          fig.append(line);
          fig.setAttribute("aria-label", fig.textContent.replace(/\s+/g, " ").trim());
        }
        fig.addEventListener("click", () => open(h, fig));
        onActivate(fig, () => open(h, fig));
        grid.append(fig);
      } else {
        const row = document.createElement("div");
        row.className = "text-hit";
        row.innerHTML = `<span class="score"></span><span class="text"></span>`;
        row.querySelector(".score").textContent = scoreText(h, data);
        if (h.reranked === false && data.hits.some((x) => x.reranked)) row.querySelector(".score").title = NOT_RERANKED;
        row.querySelector(".text").textContent = h.text;
        grid.append(row);
      }
    }
    const cut = data.cutoff && data.cutoff.min_prob !== null && data.cutoff.min_prob !== undefined;
    if (cut && !data.hits.length) {
      const best = data.cutoff.best_prob === null ? "" : ` (the best hit's probability of a match: ${data.cutoff.best_prob.toFixed(2)})`;
      say(`no good match for ${label}${best}`, false, photo);
      return;
    }
    say(`${data.hits.length} ${data.target} for ${label} · ${data.took_ms} ms` + (cut && data.cutoff.dropped ? ` · ${data.cutoff.dropped} weak matches hidden` : "") + (data.notice ? ` · ${data.notice}` : ""), false, photo);
  }

  // Only the newest search may show its answer: starting one aborts the one before, and an answer that
  // arrives after a newer search started (a slow photo upload, say) is dropped, never shown over it.
  let current = null, generation = 0, focusFirstTile = false; // focusFirstTile: set by "More like this"
  async function run(label, request, photo = null) {
    if (current) current.abort();
    const mine = ++generation;
    const controller = (current = new AbortController());
    const focusAfter = focusFirstTile; // this search's own (a newer one's render takes no focus)
    focusFirstTile = false;
    say(`searching ${label}…`, false, photo);
    try {
      const data = await request(controller.signal);
      if (mine !== generation) return;
      render(data, data.label || label, photo);
      if (focusAfter && grid.firstElementChild && grid.firstElementChild.tabIndex === 0) grid.firstElementChild.focus();
    } catch (e) {
      if (mine !== generation || e.name === "AbortError") return;
      grid.replaceChildren();
      grid.dataset.count = 0;
      say(e.message, true, photo);
    }
  }

  let last = null; // the last search, re-run when the target or a filter changes
  function searchText(q) {
    last = () => searchText(q);
    // The status line shows the query as the server parsed it ("dog, without grass").
    const extra = target() === "images" ? { q, mode: $("#mode").value, sort: $("#sort").value } : { q };
    if ($("#good-only").checked && target() === "images") extra.cutoff = "true";
    return run(`“${q}”`, async (signal) => {
      const data = await api(`/api/search?${query(extra)}`, { signal });
      if (data.parsed && data.parsed.text) data.label = `“${data.parsed.text}”`;
      return data;
    });
  }
  // The active query photo (an uploaded one, or the photo of "more like this"), shown as a chip by the search
  // box: words typed in the box are added to it (`in winter`, `-people`) until the chip is removed.
  // {name, url, file | id, search(words)}; choosing another photo replaces it.
  let queryPhoto = null;
  const chip = $("#query-photo"), box = $("#q"), textPlaceholder = box.placeholder;
  function setQueryPhoto(photo) {
    if (queryPhoto && queryPhoto.file && queryPhoto.url !== (photo && photo.url)) URL.revokeObjectURL(queryPhoto.url);
    queryPhoto = photo;
    chip.hidden = !photo;
    box.placeholder = photo ? "add words: in winter, -people" : textPlaceholder;
    if (!photo) return;
    chip.querySelector("img").src = photo.url;
    chip.querySelector(".name").textContent = photo.name;
    chip.setAttribute("aria-label", `query photo ${photo.name}`);
    chip.querySelector(".remove").setAttribute("aria-label", `Remove the query photo ${photo.name}`);
    chip.title = `Searching by ${photo.name}: words in the box are added to it`;
  }
  // The label of a photo search, with its words as the server read them (“without people”).
  function withWords(label) {
    return (data) => {
      if (data.parsed && data.parsed.text) data.label = `${label} + “${data.parsed.text}”`;
      return data;
    };
  }
  function searchFile(file, words = "") {
    if (!queryPhoto || queryPhoto.file !== file) {
      setQueryPhoto({ file, name: file.name, url: URL.createObjectURL(file), search: (w) => searchFile(file, w) });
    }
    last = () => searchFile(file, words);
    const form = new FormData();
    form.append("file", file); // the kept File, sent again with each new set of words
    const label = `photo ${file.name}`;
    return run(label, (signal) => api(`/api/search/image?${query(words ? { q: words } : {})}`,
      { method: "POST", body: form, signal }).then(withWords(label)), queryPhoto.url);
  }
  function similar(hit, words = "") {
    const name = hit.path.split(/[\\/]/).pop();
    if (!queryPhoto || queryPhoto.id !== hit.id) {
      setQueryPhoto({ id: hit.id, name, url: `/api/images/${hit.id}/thumbnail`, search: (w) => similar(hit, w) });
    }
    last = () => similar(hit, words);
    const label = `more like ${name}`;
    return run(label, (signal) => api(`/api/images/${hit.id}/similar?${query(words ? { q: words } : {})}`, { signal })
      .then(withWords(label)), queryPhoto.url);
  }
  // Removing the chip goes back to text search: the box's words, if any, are searched as text.
  chip.querySelector(".remove").addEventListener("click", () => {
    setQueryPhoto(null);
    box.focus();
    const q = box.value.trim();
    if (q) return searchText(q);
    if (current) current.abort();
    generation++;
    last = null;
    grid.replaceChildren();
    grid.dataset.count = 0;
    say("type words to search, or drop a photo");
  });

  // Enter or Space on a focusable element that acts as a button (a tile, the drop zone).
  function onActivate(el, action) {
    el.addEventListener("keydown", (e) => {
      if (e.target !== el || (e.key !== "Enter" && e.key !== " ")) return;
      e.preventDefault(); // Space would scroll the page
      action();
    });
  }

  // The viewer. Closing it (Esc, its close button, a click on the backdrop) gives focus back to the tile that
  // opened it; "More like this" gives it to the first tile of the new results.
  let opener = null;
  async function open(hit, tile) {
    opener = tile;
    $("#viewer-img").src = `/api/images/${hit.id}/file`;
    $("#viewer-img").alt = hit.path.split(/[\\/]/).pop();
    $("#viewer-meta").textContent = hit.path;
    $("#more-like-this").onclick = () => { opener = null; focusFirstTile = true; viewer.close(); box.value = ""; similar(hit); };
    viewer.showModal();
    try {
      const m = await api(`/api/images/${hit.id}`);
      $("#viewer-meta").textContent = `${m.path} · ${m.width}×${m.height}` + (m.taken_at ? ` · taken ${m.taken_at.replace("T", " ")}` : "");
    } catch (_) { /* keep the path */ }
  }

  viewer.addEventListener("close", () => {
    if (opener && opener.isConnected) opener.focus();
    opener = null;
  });
  viewer.addEventListener("click", (e) => { // the backdrop: a click on the dialog element outside its box
    if (e.target !== viewer) return;
    const r = viewer.getBoundingClientRect();
    if (e.clientX < r.left || e.clientX > r.right || e.clientY < r.top || e.clientY > r.bottom) viewer.close();
  });

  $("#search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = box.value.trim();
    if (queryPhoto) queryPhoto.search(q); // words added to the query photo (none: the photo alone)
    else if (q) searchText(q);
  });
  // A new query photo (chosen, dropped, or "more like this") starts without words: the box's were another query's.
  function newPhoto(file) {
    box.value = "";
    searchFile(file);
  }
  $("#file-input").addEventListener("change", (e) => {
    const file = e.target.files[0];
    e.target.value = ""; // choosing the same file again (after removing its chip) is a change too
    if (file) newPhoto(file);
  });
  // Folder and date filters apply to images only: off while the toggle says texts.
  const imageFilters = document.querySelectorAll("#mode, #folder, #taken-after, #taken-before");
  function enableFilters() { for (const el of imageFilters) el.disabled = target() !== "images"; }
  enableFilters();
  for (const el of document.querySelectorAll('input[name="target"], #mode, #folder, #taken-after, #taken-before, #k, #good-only, #sort')) {
    el.addEventListener("change", () => { enableFilters(); if (last) last(); });
  }
  // Drag and drop a photo anywhere on the page.
  const zone = $("#drop-zone");
  document.addEventListener("dragover", (e) => { e.preventDefault(); document.body.classList.add("dragging"); });
  document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) document.body.classList.remove("dragging"); });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    document.body.classList.remove("dragging");
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) newPhoto(file);
  });
  onActivate(zone, () => $("#file-input").click());

  // Folders for the filter, and a first hint.
  api("/api/folders").then((d) => {
    for (const f of d.folders) {
      const o = document.createElement("option");
      o.value = f.folder;
      o.textContent = `${f.folder} (${f.images})`;
      $("#folder").append(o);
    }
  }).catch((e) => say(e.message, true));
  api("/api/info").then((i) => {
    const w = i.watch && i.watch.running ? ` · watching ${i.watch.roots.length} folder(s) for changes` : "";
    if (!status.textContent) say(`${i.images} photos and ${i.texts} texts indexed with model ${i.model}${w}`);
  })
    .catch(() => {});
})();
