// The overview's recent changes, kept live by a long poll of /ui/events
// (same origin, the session cookie). Nothing else is fetched.
(function () {
  "use strict";
  const table = document.getElementById("changes");
  if (!table) return;
  const body = table.tBodies[0];
  let after = Number(table.dataset.after || 0);
  function row(e) {
    const tr = document.createElement("tr");
    const device = document.createElement("a");
    device.href = "/ui/devices/" + encodeURIComponent(e.device || "");
    device.textContent = e.device || "";
    const cells = [e.at || "", device, (e.from || "?") + " \u2192 " + (e.to || "?")];
    for (const c of cells) {
      const td = document.createElement("td");
      if (typeof c === "string") td.textContent = c; else td.appendChild(c);
      tr.appendChild(td);
    }
    tr.className = "change " + (e.to || "");
    return tr;
  }
  async function poll() {
    for (;;) {
      try {
        const r = await fetch("/ui/events?after=" + after, { credentials: "same-origin" });
        if (!r.ok) { await new Promise((ok) => setTimeout(ok, 5000)); continue; }
        const page = await r.json();
        for (const e of page.events) body.insertBefore(row(e), body.firstChild);
        while (body.rows.length > 50) body.deleteRow(body.rows.length - 1);
        after = page.next;
      } catch (_) {
        await new Promise((ok) => setTimeout(ok, 5000));
      }
    }
  }
  poll();
})();
