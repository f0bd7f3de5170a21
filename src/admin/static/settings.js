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
    document.querySelectorAll("#networks .row-findings, .field-findings").forEach((c) => { c.textContent = ""; });
    const rows = document.querySelectorAll("#networks tr.network");
    for (const f of findings || []) {
      const div = document.createElement("div");
      div.className = "sev-" + f.severity;
      div.textContent = `${f.severity}: ${f.message}` + (f.fix ? ` Fix: ${f.fix}` : "");
      const m = /^network\[(\d+)\]/.exec(f.key || "");
      const cell = (m && rows[Number(m[1])]?.querySelector(".row-findings"))
        || document.querySelector(`.field-findings[data-key="${CSS.escape(f.key || "")}"]`);
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
      // Who may use this page: [admin] users in the file, changed like any setting.
      const admin = document.createElement("input");
      admin.type = "checkbox";
      admin.checked = u.admin;
      admin.setAttribute("aria-label", `${u.name} may use this page`);
      admin.addEventListener("change", async () => {
        // Names in [admin] users without a login stay as they are.
        const admins = (json.admins || []).filter((n) => n !== u.name).concat(admin.checked ? [u.name] : []);
        const { status: code, json: r } = await call("POST", "/api/settings/edit", {
          version, edits: [{ op: "set", path: ["admin", "users"], value: admins }], password: $("confirm-password").value || undefined,
        });
        if (code === 200) { $("users-status").textContent = `${u.name} ${admin.checked ? "may" : "may no longer"} use this page.`; await load(); }
        else { admin.checked = !admin.checked; showFindings(r.findings); $("users-status").textContent = r.error === "refused" ? "Refused: see the findings." : (r.error || `The server answered ${code}.`); }
      });
      tr.insertCell().appendChild(admin);
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

  // The other sections' forms, from one description each: a new section
  // is one more entry here. Each field is a key of the section in the file.
  const SECTIONS = [
    { id: "access", title: "Connection filter", about: "Which addresses may connect at all, before any greeting (the relay rules above decide who may relay).", fields: [
      { key: "filter", kind: "select", options: [["off", "off — every address may connect"], ["allow", "allow — only the ranges listed as allowed"], ["deny", "deny — everyone but the ranges listed as denied"]] },
      { key: "allow", kind: "list", label: "Allowed ranges" },
      { key: "deny", kind: "list", label: "Denied ranges" },
    ] },
    { id: "relay", title: "Inbound domains", about: "Domains this server takes mail for from anyone (it delivers it on); everything else is relayed only for the relay rules.", fields: [
      { key: "inbound_domains", kind: "list", label: "Our domains" },
      { key: "verify_recipients", kind: "select", options: [["off", "off — take any recipient of our domains"], ["list", "list — only those in the valid recipients file"], ["callout", "callout — ask the next hop first"]] },
      { key: "valid_recipients_file", kind: "text", label: "Valid recipients file" },
    ] },
    { id: "checks", title: "Anti-spam checks", about: "For clients that are neither trusted nor logged in.", fields: [
      { key: "dnsbl", kind: "list", label: "DNS block lists (zone, or zone=codes)" },
      { key: "reverse_dns", kind: "select", options: [["off", "off"], ["ptr", "ptr — the address must have a name"], ["fcrdns", "fcrdns — and the name must lead back to it"]] },
      { key: "helo_lookup", kind: "select", options: [["off", "off"], ["resolves", "resolves — the HELO name must exist"], ["matches", "matches — and point to the client"]] },
      { key: "sender_domain", kind: "select", options: [["off", "off"], ["exists", "exists — the sender's domain must exist"]] },
    ] },
    { id: "limits", title: "Limits", about: "Per hour; empty means no limit.", fields: [
      { key: "messages_per_hour_per_ip", kind: "number", label: "Messages per client address" },
      { key: "messages_per_hour_per_user", kind: "number", label: "Messages per login" },
      { key: "recipients_per_hour_per_ip", kind: "number", label: "Recipients per client address" },
      { key: "auth_failures_before_ban", kind: "number", label: "Failed logins before a ban" },
    ] },
  ];

  function renderSections(values) {
    const box = $("section-forms");
    if (!box) return;
    box.textContent = "";
    for (const sec of SECTIONS) {
      const section = document.createElement("section");
      section.className = "section-form";
      section.dataset.section = sec.id;
      const h = document.createElement("h2");
      h.textContent = sec.title;
      const p = document.createElement("p");
      p.textContent = sec.about;
      section.append(h, p);
      const current = (values || {})[sec.id] || {};
      for (const f of sec.fields) {
        const row = document.createElement("p");
        const label = document.createElement("label");
        label.textContent = (f.label || f.key) + " ";
        let input;
        if (f.kind === "select") {
          input = document.createElement("select");
          for (const [v, words] of f.options) {
            const o = document.createElement("option");
            o.value = v; o.textContent = words;
            input.appendChild(o);
          }
          input.value = current[f.key] ?? f.options[0][0];
        } else {
          input = document.createElement("input");
          input.size = f.kind === "number" ? 8 : 50;
          const v = current[f.key];
          input.value = f.kind === "list" ? (v || []).join(", ") : (v ?? "");
        }
        input.name = f.key;
        input.dataset.key = `${sec.id}.${f.key}`;
        input.dataset.kind = f.kind;
        input.dataset.initial = input.value;
        label.appendChild(input);
        const note = document.createElement("span");
        note.className = "field-findings";
        note.dataset.key = `${sec.id}.${f.key}`;
        row.append(label, note);
        section.appendChild(row);
      }
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = "Put this section into the file below";
      b.addEventListener("click", () => applySection(section));
      section.appendChild(b);
      box.appendChild(section);
    }
  }

  async function applySection(section) {
    const edits = [];
    for (const input of section.querySelectorAll("[data-key]")) {
      if (input.tagName === "SPAN" || input.value === input.dataset.initial) continue;
      const path = input.dataset.key.split(".");
      const raw = input.value.trim();
      if (input.dataset.kind === "list") {
        edits.push({ op: "set", path, value: raw.split(/[\s,]+/).filter(Boolean) });
      } else if (input.dataset.kind === "number") {
        if (raw === "") edits.push({ op: "remove", path });
        else edits.push({ op: "set", path, value: Number(raw) });
      } else if (raw === "" && input.dataset.kind === "text") {
        edits.push({ op: "remove", path });
      } else {
        edits.push({ op: "set", path, value: raw });
      }
    }
    if (!edits.length) { say("Nothing changed in this section.", ""); return; }
    const { status: code, json } = await call("POST", "/api/settings/apply", { toml: text.value, edits });
    if (code !== 200) { say("This section could not be put into the file: " + (json.error || code), "error"); return; }
    text.value = json.toml;
    await check();
  }

  async function load() {
    const { json } = await call("GET", "/api/settings");
    text.value = json.toml;
    version = json.version;
    renderSections(json.values);
    networkCount = document.querySelectorAll("#networks tr.network").length;
    $("file-path").textContent = json.path ? `${json.path} (version ${json.version})` : "";
    showFindings(json.findings);
    await history();
    await users();
  }

  load();
})();
