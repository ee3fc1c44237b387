// The Duplicates view: GET /api/duplicates, each group side by side with sizes and dates, the copy to keep
// marked with the reason. Read only: nothing here deletes or moves a photo.
(() => {
  const $ = (sel) => document.querySelector(sel);
  const status = $("#status"), groups = $("#groups");

  async function api(url) {
    let res;
    try { res = await fetch(url, { credentials: "same-origin" }); } catch (_) { throw new Error("cannot reach the xmodal server"); }
    let body = null;
    try { body = await res.json(); } catch (_) { /* not JSON */ }
    if (!res.ok) throw new Error((body && body.detail) || `${res.status} ${res.statusText}`);
    return body;
  }

  const kb = (n) => (n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${Math.round(n / 1e3)} KB`);

  function member(m, keep) {
    const fig = document.createElement("figure");
    fig.className = "dup-member" + (m.id === keep ? " keep" : "");
    fig.dataset.id = m.id;
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = m.path.split(/[\\/]/).pop();
    img.src = `/api/images/${m.id}/thumbnail`;
    const cap = document.createElement("figcaption");
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = m.id === keep ? "keep · " : "";
    const text = document.createElement("span");
    text.textContent = `${m.width}×${m.height} · ${kb(m.bytes)} · ${m.date.replace("T", " ")}` +
      (m.date_source === "file" ? " (file date)" : "") + ` · ${m.path}`;
    cap.append(badge, text);
    fig.append(img, cap);
    return fig;
  }

  async function load() {
    const t = $("#threshold").value;
    status.textContent = "Looking for duplicates…";
    groups.replaceChildren();
    try {
      const data = await api("/api/duplicates" + (t ? `?threshold=${encodeURIComponent(t)}` : ""));
      for (const g of data.groups) {
        const sec = document.createElement("section");
        sec.className = "dup-group";
        sec.dataset.kind = g.kind;
        const h = document.createElement("h2");
        h.textContent = `${g.kind === "exact" ? "Exact copies" : "Near copies"} (${g.ids.length}) `;
        const why = document.createElement("span");
        why.className = "why";
        why.textContent = `keep ${g.paths[g.ids.indexOf(g.keep)].split(/[\\/]/).pop()}: ${g.why}`;
        h.append(why);
        const row = document.createElement("div");
        row.className = "dup-members";
        for (const m of g.members) row.append(member(m, g.keep));
        sec.append(h, row);
        groups.append(sec);
      }
      const exact = data.groups.filter((g) => g.kind === "exact").length;
      status.textContent = data.groups.length
        ? `${data.groups.length} groups (${exact} exact, ${data.groups.length - exact} near) · threshold ${data.threshold} · ${data.took_ms} ms`
        : `no duplicates found (threshold ${data.threshold})`;
      if (data.skipped.length) status.textContent += ` · ${data.skipped.length} files could not be read`;
    } catch (e) {
      status.textContent = e.message;
      status.classList.add("error");
    }
  }

  $("#dup-form").addEventListener("submit", (e) => { e.preventDefault(); status.classList.remove("error"); load(); });
  load();
})();
