// Portcullis admin: the little plain JavaScript the pages use.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf"]')?.content || "";

// Buttons that need a confirmation (delete).
document.addEventListener("click", (e) => {
  const b = e.target.closest("button[data-confirm]");
  if (b && !window.confirm(b.dataset.confirm)) e.preventDefault();
});

// "Select all" on the queue page.
document.getElementById("select-all")?.addEventListener("change", (e) => {
  document.querySelectorAll('#queue-table input[name="id"]').forEach((c) => { c.checked = e.target.checked; });
});

// The relay test: one JSON line per test as the server judges it.
const runButton = document.getElementById("run-relay-test");
runButton?.addEventListener("click", async () => {
  const body = document.querySelector("#relay-results tbody");
  const verdict = document.getElementById("relay-verdict");
  body.textContent = "";
  verdict.textContent = "Running…";
  verdict.className = "";
  runButton.disabled = true;
  const cell = (tr, text, cls) => { const td = tr.insertCell(); td.textContent = text; if (cls) td.className = cls; };
  const show = (line) => {
    const m = JSON.parse(line);
    if (m.test) {
      const tr = body.insertRow();
      tr.className = "test";
      tr.dataset.verdict = m.test.verdict;
      cell(tr, m.listener);
      cell(tr, m.test.name);
      cell(tr, m.test.verdict, "verdict-" + m.test.verdict);
      cell(tr, (m.test.replies.at(-1) || m.test.note || ""));
    } else if (m.skipped) {
      const tr = body.insertRow();
      cell(tr, m.listener); cell(tr, "-"); cell(tr, "skipped"); cell(tr, m.skipped);
    } else if (m.summary) {
      verdict.textContent = `${m.summary.verdict} (${m.summary.refused} refused, ${m.summary.relayed} relayed, ${m.summary.errors} could not run)`;
      verdict.className = m.summary.relayed > 0 ? "verdict-relayed" : "verdict-refused";
      verdict.dataset.done = "1";
    }
  };
  try {
    const res = await fetch("/api/diagnostics/relay-test", { method: "POST", headers: { "X-CSRF-Token": csrf() } });
    if (!res.ok) throw new Error((await res.json()).error || res.statusText);
    const reader = res.body.getReader();
    const text = new TextDecoder();
    let pending = "";
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      pending += text.decode(value, { stream: true });
      let nl;
      while ((nl = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, nl).trim();
        pending = pending.slice(nl + 1);
        if (line) show(line);
      }
    }
  } catch (err) {
    verdict.textContent = "The relay test could not run: " + err.message;
    verdict.className = "error";
  } finally {
    runButton.disabled = false;
  }
});
