// verifier console: hash routes, one fetch helper, tables and inline SVG charts built with
// DOM calls (textContent only: record fields come from callers and are never markup).
"use strict";

const TOKEN_KEY = "verifier-console-token";
const REFRESH_MS = 5000;
const VERSTATS = ["TN-Validation-Passed", "TN-Validation-Failed", "No-TN-Validation"];
const ATTESTS = ["A", "B", "C", "none"];
const COLORS = {
  "TN-Validation-Passed": "#2e8540", "TN-Validation-Failed": "#c62828",
  "No-TN-Validation": "#90a4ae", A: "#1f6fb2", B: "#6aa6d6", C: "#f0a030", none: "#b0bec5",
};
const SVG = "http://www.w3.org/2000/svg";
let timer = null;
let lastRecords = [];
let lastQuery = "";

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : String(c ?? ""));
  return node;
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

class Unauthorized extends Error {}

function problem(body, status) {
  // The API's errors: {"requestError": {"<kind>": {"messageId", "text", "variables"}}}.
  const kinds = body && body.requestError ? Object.values(body.requestError) : [];
  const e = kinds[0];
  if (!e) return `HTTP ${status}`;
  let text = e.text || "";
  (e.variables || []).forEach((v, i) => { text = text.replace(`%${i + 1}`, v); });
  return `${e.messageId}: ${text}`;
}

async function api(path, options) {
  const response = await fetch(path, {
    ...(options || {}),
    headers: { Authorization: `Bearer ${token()}`, Accept: "application/json" },
  });
  if (response.status === 401) throw new Unauthorized("The token was refused (401).");
  const type = response.headers.get("Content-Type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new Error(problem(body, response.status));
  return body;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function fail(err) {
  if (err instanceof Unauthorized) {
    logout(err.message);
  } else {
    showError(String(err.message || err));
  }
}

function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  clearInterval(timer);
  $("nav").hidden = true;
  for (const s of document.querySelectorAll("main > section")) s.hidden = true;
  $("login-view").hidden = false;
  showError("");
  $("login-error").textContent = message || "";
  $("login-error").hidden = !message;
}

function time(ts) {
  return ts == null ? "" : new Date(ts * 1000).toISOString().replace(".000Z", "Z");
}

// A table cell's time: to the second, with a space where a narrow column may wrap.
function cellTime(ts) {
  return ts == null ? "" : `${time(ts).slice(0, 19).replace("T", " ")}Z`;
}

function table(columns, rows, options) {
  // columns: [{key, title, num, sort, render(row) -> node|text}]
  const head = el("tr", {});
  for (const c of columns) {
    const th = el("th", c.num ? { class: "num" } : {}, c.title);
    if (options && options.onSort && c.sort !== false) {
      th.dataset.sort = c.key;
      th.addEventListener("click", () => options.onSort(c.key));
    }
    head.append(th);
  }
  const body = el("tbody", {});
  for (const r of rows) {
    const tr = el("tr", {});
    for (const c of columns) {
      const value = c.render ? c.render(r) : r[c.key];
      tr.append(el("td", c.num ? { class: "num" } : c.wrap ? { class: "wrap" } : {}, value));
    }
    body.append(tr);
  }
  if (!rows.length) {
    body.append(el("tr", {}, el("td", { colspan: String(columns.length), class: "muted" }, "none")));
  }
  return el("table", {}, el("thead", {}, head), body);
}

function put(id, node) { $(id).replaceChildren(node); }

function stacked(series, field, keys, since, until, bucket) {
  // Stacked bars: one per bucket, one layer per key; a legend with the window's totals.
  const W = 600, H = 150, pad = 22;
  const n = Math.max(1, Math.round((until - since) / bucket));
  const first = Math.floor(since / bucket);
  const cols = Array.from({ length: n + 1 }, () => ({}));
  const totals = {};
  for (const s of series) {
    const i = Math.round(s.t / bucket) - first;
    if (i < 0 || i > n) continue;
    cols[i][s[field]] = (cols[i][s[field]] || 0) + s.count;
    totals[s[field]] = (totals[s[field]] || 0) + s.count;
  }
  const max = Math.max(1, ...cols.map((c) => Object.values(c).reduce((a, b) => a + b, 0)));
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H + pad}`);
  svg.setAttribute("role", "img");
  const bw = (W - 40) / cols.length;
  cols.forEach((c, i) => {
    let y = H;
    for (const k of keys) {
      const v = c[k] || 0;
      if (!v) continue;
      const h = (v / max) * (H - 10);
      const r = document.createElementNS(SVG, "rect");
      r.setAttribute("x", String(40 + i * bw));
      r.setAttribute("y", String(y - h));
      r.setAttribute("width", String(Math.max(1, bw - 1)));
      r.setAttribute("height", String(h));
      r.setAttribute("fill", COLORS[k] || "#777");
      const title = document.createElementNS(SVG, "title");
      title.textContent = `${time((first + i) * bucket)} ${k}: ${v}`;
      r.append(title);
      svg.append(r);
      y -= h;
    }
  });
  const label = (x, y, text, anchor) => {
    const t = document.createElementNS(SVG, "text");
    t.setAttribute("x", String(x));
    t.setAttribute("y", String(y));
    t.setAttribute("font-size", "11");
    t.setAttribute("fill", "#5b6570");
    t.setAttribute("text-anchor", anchor);
    t.textContent = text;
    svg.append(t);
  };
  label(36, 12, String(max), "end");
  label(36, H, "0", "end");
  const clock = (ts) => (until - since > 3600 ? time(ts).slice(5, 16).replace("T", " ")
    : time(ts).slice(11, 16));
  label(40, H + 16, clock(since), "start");
  label(W, H + 16, `${clock(until)} UTC`, "end");
  const legend = el("div", { class: "legend" });
  for (const k of keys) {
    const sw = el("i", {});
    sw.style.background = COLORS[k] || "#777";
    legend.append(el("span", { "data-key": k }, sw, `${k} ${totals[k] || 0}`));
  }
  return el("div", {}, svg, legend);
}

function host(url) {
  try { return new URL(url).host; } catch (e) { return url || "(none)"; }
}

// -- views ------------------------------------------------------------------------------

async function overview() {
  const win = $("overview-window").value;
  const o = await api(`/v1/console/overview?window=${win}`);
  const sum = (pred) => o.series.filter(pred).reduce((a, s) => a + s.count, 0);
  $("total").textContent = String(o.total);
  $("rate").textContent = String(o.calls_per_second);
  $("failed").textContent = String(sum((s) => s.verstat === "TN-Validation-Failed"));
  const by = (pred) => o.dispositions.filter(pred).reduce((a, d) => a + d.count, 0);
  $("blocked").textContent = String(by((d) => d.action === "block"));
  $("replays").textContent = String(by((d) => d.label === o.replay_label));
  $("anchors").textContent = String(o.trust_anchors.count);
  $("anchors-expiry").textContent = o.trust_anchors.earliest_expiry
    ? `earliest expiry ${o.trust_anchors.earliest_expiry.slice(0, 10)}` : "";
  $("breakers").textContent = o.x5u_fetch ? String(o.x5u_fetch.breakers_open) : "n/a";
  put("chart-verstat", stacked(o.series, "verstat", VERSTATS, o.since, o.until, o.bucket));
  put("chart-attest", stacked(o.series, "attest", ATTESTS, o.since, o.until, o.bucket));
  put("reasons", table([
    { key: "reason", title: "Reason" },
    { key: "sip_code", title: "SIP", num: true },
    { key: "count", title: "Calls", num: true },
  ], o.reasons));
  put("dispositions", table([
    { key: "action", title: "Action" },
    { key: "label", title: "Label" },
    { key: "count", title: "Calls", num: true },
  ], o.dispositions));
  const hosts = {};
  for (const f of o.x5u_failures) hosts[host(f.x5u)] = (hosts[host(f.x5u)] || 0) + f.count;
  const local = o.x5u_fetch ? o.x5u_fetch.errors : {};
  put("x5u", table([
    { key: "host", title: "Host" },
    { key: "count", title: "436 answers", num: true },
  ], Object.entries(hosts).map(([h, c]) => ({ host: h, count: c }))));
  if (Object.keys(local).length) {
    $("x5u").append(el("p", { class: "muted" }, `This instance's fetch errors: ${
      Object.entries(local).map(([k, v]) => `${k} ${v}`).join(", ")}`));
  }
  $("overview-updated").textContent = `updated ${time(o.until)}`;
}

let providerSort = { key: "calls", desc: true };
let providerRows = [];

function certificate(r) {
  // The latest certificate: its issuer's CN (the whole DN on hover), expiry, fingerprint.
  if (!r.fingerprint) return "";
  const cn = /(?:^|,)CN=((?:\\.|[^,])*)/.exec(r.issuer || "");
  return el("span", { class: "certificate" },
    el("span", { title: r.issuer || "" }, cn ? cn[1] : (r.issuer || "chain not recorded")),
    el("br", {}),
    el("span", { title: time(r.not_after) }, r.not_after == null ? "" : `expires ${time(r.not_after).slice(0, 10)}`),
    el("br", {}),
    el("code", {}, r.fingerprint.slice(0, 16)));
}

function renderProviders() {
  const { key, desc } = providerSort;
  const value = (r) => (key === "failure_rate" ? r.failures / r.calls
    : key === "policy" ? r.policy.status : r[key]);
  const rows = [...providerRows].sort((a, b) => {
    const x = value(a), y = value(b);
    const c = x < y ? -1 : x > y ? 1 : 0;
    return desc ? -c : c;
  });
  const pct = (n, d) => (d ? `${((100 * n) / d).toFixed(1)}%` : "");
  put("providers", table([
    { key: "spc", title: "SPC", render: (r) => el("a", { href: `#provider/${encodeURIComponent(r.spc)}` }, r.spc) },
    { key: "calls", title: "Calls", num: true },
    { key: "mix", title: "A / B / C", sort: false, render: (r) => `${pct(r.attest.A, r.calls)} / ${pct(r.attest.B, r.calls)} / ${pct(r.attest.C, r.calls)}` },
    { key: "failure_rate", title: "Failure rate", num: true, render: (r) => pct(r.failures, r.calls) },
    { key: "first_seen", title: "First seen", render: (r) => cellTime(r.first_seen) },
    { key: "last_seen", title: "Last seen", render: (r) => cellTime(r.last_seen) },
    { key: "not_after", title: "Certificate: issuer, expiry", wrap: true, render: certificate },
    { key: "policy", title: "Policy", wrap: true, render: (r) => el("span", { class: `status-${r.policy.status}` },
      r.policy.status + (r.policy.reference ? `: ${r.policy.reference}` : "")) },
  ], rows, { onSort: (k) => {
    providerSort = { key: k, desc: providerSort.key === k ? !providerSort.desc : true };
    renderProviders();
  } }));
}

async function providers() {
  const p = await api(`/v1/console/providers?window=${$("providers-window").value}`);
  providerRows = p.providers;
  renderProviders();
}

const RECORD_COLUMNS = [
  { key: "ts", title: "Time", render: (r) => time(r.ts) },
  { key: "orig", title: "Calling" },
  { key: "dest", title: "Called" },
  { key: "verstat", title: "Verstat" },
  { key: "attest", title: "Att." },
  { key: "spc", title: "SPC", render: (r) => r.spc.join(" ") },
  { key: "reason", title: "Reason", render: (r) => (r.reason ? `${r.reason} (${r.sip_code})` : "") },
  { key: "x5u", title: "x5u", wrap: true },
  { key: "fingerprint", title: "Certificate (SHA-256)", render: (r) => (r.fingerprint || "").slice(0, 16) },
  { key: "action", title: "Disposition", render: (r) => `${r.action || ""} ${r.label || ""}` },
  { key: "origid", title: "origid" },
];

async function provider(spc) {
  $("provider-title").textContent = `Provider ${spc}`;
  const q = encodeURIComponent(spc);
  const [o, recent] = await Promise.all([
    api(`/v1/console/overview?window=86400&spc=${q}`),
    api(`/v1/records?spc=${q}&limit=1000`),
  ]);
  put("chart-provider", stacked(o.series, "verstat", VERSTATS, o.since, o.until, o.bucket));
  put("provider-failures", table(RECORD_COLUMNS, recent.records.filter((r) => r.reason).slice(0, 50)));
}

function utc(value) {
  return value ? new Date(`${value}Z`).toISOString() : "";
}

async function traceback(event) {
  event.preventDefault();
  const form = new FormData($("traceback"));
  const params = new URLSearchParams();
  for (const name of ["orig", "dest", "origid"]) {
    const v = String(form.get(name) || "").trim();
    if (v) params.set(name, v);
  }
  for (const name of ["since", "until"]) {
    const v = utc(String(form.get(name) || ""));
    if (v) params.set(name, v);
  }
  params.set("limit", "1000");
  lastQuery = params.toString();
  const page = await api(`/v1/records?${lastQuery}`);
  lastRecords = page.records;
  $("traceback-count").textContent = `${lastRecords.length} record(s)${page.next_cursor ? " (first 1000; export for all)" : ""}`;
  put("traceback-results", table([...RECORD_COLUMNS, {
    key: "identity", title: "PASSporT", render: (r) => (r.identity
      ? el("button", { type: "button", class: "show-passport", "data-request": r.request_id }, "Show")
      : "not kept"),
  }], lastRecords));
  for (const b of document.querySelectorAll(".show-passport")) {
    b.addEventListener("click", () => passport(lastRecords.find((r) => r.request_id === b.dataset.request)));
  }
  $("passport").hidden = true;
  $("export-csv").disabled = false;
  $("export-json").disabled = false;
}

function b64json(part) {
  // A JWS part: base64url of a JSON object.
  const text = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
  const bytes = Uint8Array.from(text, (c) => c.charCodeAt(0));
  return JSON.stringify(JSON.parse(new TextDecoder().decode(bytes)), null, 2);
}

function passport(record) {
  // Each Identity header as received: its JOSE header and claims decoded, then the raw value.
  const parts = [];
  for (const value of record.identity.split("\n")) {
    const jws = value.split(";")[0].trim().split(".");
    for (const [name, i] of [["Header", 0], ["Claims", 1]]) {
      let text;
      try { text = b64json(jws[i] || ""); } catch (e) { text = `(not decodable: ${e.message})`; }
      parts.push(el("h3", {}, name), el("pre", { class: `passport-${name.toLowerCase()}` }, text));
    }
    parts.push(el("h3", {}, "Identity header"), el("pre", { class: "passport-raw" }, value));
  }
  $("passport-title").textContent = `PASSporT as received, ${time(record.ts)}, ${record.request_id}`;
  $("passport-body").replaceChildren(...parts);
  $("passport").hidden = false;
  $("passport").scrollIntoView();
}

function save(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function exportCsv() {
  const params = new URLSearchParams(lastQuery);
  params.delete("limit");
  params.set("format", "csv");
  const response = await fetch(`/v1/records?${params}`, {
    headers: { Authorization: `Bearer ${token()}` },
  });
  if (response.status === 401) throw new Unauthorized("The token was refused (401).");
  if (!response.ok) throw new Error(`CSV export failed: HTTP ${response.status}`);
  save(await response.blob(), "records.csv");
}

function exportJson() {
  save(new Blob([JSON.stringify({ records: lastRecords }, null, 2)], { type: "application/json" }),
    "records.json");
}

async function policy() {
  const p = await api("/v1/console/policy?window=86400");
  $("policy-source").textContent = p.source;
  put("policy-entries", table([
    { key: "list", title: "List", render: (r) => el("span", { class: r.list === "block" ? "status-blocked" : "status-allowed" }, r.list) },
    { key: "key", title: "Key" },
    { key: "value", title: "Value" },
    { key: "reference", title: "Reference", wrap: true },
    { key: "effective", title: "Effective" },
    { key: "expires", title: "Expires" },
    { key: "active", title: "In force", render: (r) => (r.active ? "yes" : "no") },
    { key: "matched", title: "Calls matched (day)", num: true, render: (r) => (r.matched == null ? "n/a" : r.matched) },
    { key: "line", title: "Line", num: true },
  ], p.entries));
  put("policy-rules", table([
    { key: "name", title: "Rule" },
    { key: "action", title: "Action" },
    { key: "label", title: "Label" },
    { key: "line", title: "Line", num: true },
  ], p.rules));
}

async function reload() {
  const r = await api("/v1/admin/reload", { method: "POST" });
  $("reload-result").textContent = r.ok ? "reloaded" : `reload failed: ${JSON.stringify(r)}`;
  await policy();
}

// -- routing ----------------------------------------------------------------------------

function route() {
  if (!token()) { logout(""); return; }
  clearInterval(timer);
  showError("");
  $("login-view").hidden = true;
  $("nav").hidden = false;
  const [name, arg] = (location.hash.slice(1) || "overview").split("/");
  const view = ["overview", "providers", "provider", "traceback", "policy"].includes(name) ? name : "overview";
  for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== `${view}-view`;
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.view === (view === "provider" ? "providers" : view));
  }
  const run = (p) => p.catch(fail);
  if (view === "overview") {
    run(overview());
    timer = setInterval(() => run(overview()), REFRESH_MS);
  } else if (view === "providers") {
    run(providers());
  } else if (view === "provider") {
    run(provider(decodeURIComponent(arg || "")));
  } else if (view === "policy") {
    run(policy());
  }
}

async function login(event) {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value);
  $("token").value = "";
  try {
    await api("/v1/console/overview?window=3600");
  } catch (err) {
    if (err instanceof Unauthorized) { logout(err.message); return; }
  }
  $("login-error").hidden = true;
  route();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", login);
  $("logout").addEventListener("click", () => logout(""));
  $("traceback").addEventListener("submit", (e) => traceback(e).catch(fail));
  $("export-csv").addEventListener("click", () => exportCsv().catch(fail));
  $("export-json").addEventListener("click", exportJson);
  $("reload").addEventListener("click", () => reload().catch(fail));
  $("overview-window").addEventListener("change", () => overview().catch(fail));
  $("providers-window").addEventListener("change", () => providers().catch(fail));
  window.addEventListener("hashchange", route);
  route();
});
