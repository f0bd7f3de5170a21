// The Settings page's editor: the relay-rules form and the file text,
// checked as you type, previewed with `explain`, saved through the API.
"use strict";

(() => {
  const csrf = () => document.querySelector('meta[name="csrf"]')?.content || "";
  const $ = (id) => document.getElementById(id);
  const text = $("toml");
  const status = $("status");
  let version = "";
  let networkCount = 0;

  const say = (message, cls) => { status.textContent = message; status.className = cls || ""; };

  async function call(method, url, body) {
    const res = await fetch(url, {
      method,
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let json = {};
    try { json = await res.json(); } catch (_) { /* not JSON */ }
    return { status: res.status, json };
  }

  // Findings: beside the relay rule they concern, the rest in the list.
  function showFindings(findings) {
    const box = $("findings");
    box.textContent = "";
    document.querySelectorAll("#networks .row-findings").forEach((c) => { c.textContent = ""; });
    const rows = document.querySelectorAll("#networks tr.network");
    for (const f of findings || []) {
      const div = document.createElement("div");
      div.className = "sev-" + f.severity;
      div.textContent = `${f.severity}: ${f.message}` + (f.fix ? ` Fix: ${f.fix}` : "");
      const m = /^network\[(\d+)\]/.exec(f.key || "");
      const cell = m && rows[Number(m[1])]?.querySelector(".row-findings");
      (cell || box).appendChild(div);
    }
  }

  async function check() {
    const { json } = await call("POST", "/api/settings/check", { toml: text.value });
    showFindings(json.findings);
    if (json.ok) say("The check passed: this file can be saved.", "ok");
    else say("This file cannot be saved as it is: see the findings.", "error");
    return json.ok;
  }

  let timer = null;
  text.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(check, 600); });

  // The relay-rules form becomes edits of the file text (comments kept).
  function networkEdits() {
    const rows = [...document.querySelectorAll("#networks tr.network")];
    const edits = [];
    rows.forEach((tr, i) => {
      const range = tr.querySelector('[name="range"]').value.trim();
      const auth = tr.querySelector('[name="auth"]').value;
      const exclude = tr.querySelector('[name="exclude"]').value.split(/[\s,]+/).filter(Boolean);
      if (i < networkCount) {
        edits.push({ op: "set", path: ["network", i, "range"], value: range });
        edits.push({ op: "set", path: ["network", i, "auth"], value: auth });
        if (exclude.length) edits.push({ op: "set", path: ["network", i, "exclude"], value: exclude });
      } else {
        const entry = { range, auth };
        if (exclude.length) entry.exclude = exclude;
        edits.push({ op: "append", path: ["network"], value: entry });
      }
    });
    for (let i = networkCount - 1; i >= rows.length; i--) edits.push({ op: "remove", path: ["network", i] });
    return edits;
  }

  $("add-network")?.addEventListener("click", () => {
    const body = document.querySelector("#networks tbody");
    const template = body.querySelector("tr.network");
    const tr = template ? template.cloneNode(true) : null;
    if (!tr) return;
    tr.querySelector('[name="range"]').value = "";
    tr.querySelector('[name="auth"]').value = "none";
    tr.querySelector('[name="exclude"]').value = "";
    tr.querySelector(".row-findings").textContent = "";
    body.appendChild(tr);
    tr.querySelector('[name="range"]').focus();
  });

  document.querySelector("#networks")?.addEventListener("click", (e) => {
    if (e.target.classList.contains("remove-network")) e.target.closest("tr").remove();
  });

  $("apply-networks")?.addEventListener("click", async () => {
    const { status: code, json } = await call("POST", "/api/settings/apply", { toml: text.value, edits: networkEdits() });
    if (code !== 200) { say("The relay rules could not be put into the file: " + (json.error || code), "error"); return; }
    text.value = json.toml;
    networkCount = document.querySelectorAll("#networks tr.network").length;
    await check();
  });

  $("check")?.addEventListener("click", check);

  $("preview")?.addEventListener("click", async () => {
    const ip = $("preview-ip").value.trim();
    const { status: code, json } = await call("POST", "/api/settings/preview", { toml: text.value, ips: ip ? [ip] : [] });
    const table = $("preview-table");
    const body = table.querySelector("tbody");
    body.textContent = "";
    if (code !== 200) { showFindings(json.findings); say("No preview: the file does not read.", "error"); return; }
    for (const r of json.rows) {
      const tr = body.insertRow();
      tr.dataset.ip = r.ip;
      if (r.changed) tr.className = "changed";
      const cell = (t, cls) => { const td = tr.insertCell(); td.textContent = t; if (cls) td.className = cls; };
      cell(r.client + (r.auth ? ` (as ${r.auth})` : ""));
      cell(`${r.before.verdict}: ${r.before.reply}`, "verdict-" + r.before.verdict);
      cell(`${r.after.verdict}: ${r.after.reply}`, "verdict-" + r.after.verdict);
    }
    table.hidden = false;
    say("Preview: a relay attempt from each client, now and after this change.", "");
  });

  $("save")?.addEventListener("click", async () => {
    say("Saving…", "");
    const password = $("confirm-password").value;
    const { status: code, json } = await call("POST", "/api/settings", { version, toml: text.value, password: password || undefined });
    if (code === 200) {
      say(json.saved ? `Saved and reloaded (${json.reload}).` : "Nothing changed.", "ok");
      await load();
    } else if (code === 409) {
      say("The file changed since you loaded it. The difference:\n" + json.diff, "error");
    } else if (code === 422) {
      showFindings(json.findings);
      say(json.error === "refused" ? "Refused: see the findings." : json.error, "error");
    } else {
      say(json.error || `The server answered ${code}.`, "error");
    }
  });

  async function history() {
    const list = $("history-list");
    const { json } = await call("GET", "/api/settings/history");
    list.textContent = "";
    for (const c of json.changes || []) {
      const d = document.createElement("details");
      const s = document.createElement("summary");
      const when = new Date(c.at * 1000).toISOString().replace("T", " ").slice(0, 19);
      s.textContent = `#${c.id} ${when} by ${c.user}${c.restored ? " (restored " + c.restored + ")" : ""}`;
      const pre = document.createElement("pre");
      pre.textContent = c.diff;
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = "Restore the version before this change";
      b.addEventListener("click", async () => {
        const { status: code, json: r } = await call("POST", "/api/settings/restore", { version, restore: c.before, password: $("confirm-password").value || undefined });
        if (code === 200) { say("Restored and reloaded.", "ok"); await load(); }
        else { showFindings(r.findings); say(r.error || `The server answered ${code}.`, "error"); }
      });
      d.append(s, pre, b);
      list.appendChild(d);
    }
  }

  async function users() {
    const body = document.querySelector("#users tbody");
    if (!body) return;
    const { json } = await call("GET", "/api/users");
    body.textContent = "";
    for (const u of json.users || []) {
      const tr = body.insertRow();
      tr.dataset.user = u.name;
      tr.insertCell().textContent = u.name;
      tr.insertCell().textContent = u.admin ? "yes" : "no";
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = "Remove";
      b.addEventListener("click", async () => {
        if (!window.confirm(`Remove ${u.name}? Its logins stop at once.`)) return;
        const { status: code, json: r } = await call("POST", `/api/users/${encodeURIComponent(u.name)}/delete`, { password: $("confirm-password").value || undefined });
        $("users-status").textContent = code === 200 ? `${u.name} removed.` : (r.error || `The server answered ${code}.`);
        await users();
      });
      tr.insertCell().appendChild(b);
    }
  }

  $("add-user")?.addEventListener("click", async () => {
    const name = $("new-user").value.trim();
    const { status: code, json } = await call("POST", "/api/users", {
      name, new_password: $("new-user-password").value, password: $("confirm-password").value || undefined,
    });
    $("users-status").textContent = code === 200
      ? (json.action === "added" ? `${name} added.` : `New password set for ${name}.`)
      : (json.error || `The server answered ${code}.`);
    if (code === 200) { $("new-user-password").value = ""; await users(); }
  });

  async function load() {
    const { json } = await call("GET", "/api/settings");
    text.value = json.toml;
    version = json.version;
    networkCount = document.querySelectorAll("#networks tr.network").length;
    $("file-path").textContent = json.path ? `${json.path} (version ${json.version})` : "";
    showFindings(json.findings);
    await history();
    await users();
  }

  load();
})();
