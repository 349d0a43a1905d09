/**
 * The cache inspector: one self-contained HTML page served at the admin listener's `/`. No
 * external scripts, fonts or styles (it works offline, and `bun build --compile` embeds it as
 * this string). It reads and purges through the same JSON API as curl, with the admin token
 * when one is set (asked for once, kept in sessionStorage). Everything the cache holds (URLs,
 * headers, tags) is put in the page as text, never as HTML.
 */
import { createHash } from "node:crypto"

const STYLE = `
:root { color-scheme: light dark; --line: #8884; --muted: #888; --accent: #2a7ae2; --bad: #c0392b; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1.5rem 2rem; }
h1 { font-size: 1.2rem; margin: 1rem 0 .5rem; }
h2 { font-size: 1rem; margin: 1.2rem 0 .4rem; }
.row { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
.figure { font-size: 1.4rem; font-weight: 600; }
.muted { color: var(--muted); }
.bar { width: 12rem; height: .5rem; border: 1px solid var(--line); }
.bar > div { height: 100%; background: var(--accent); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid var(--line); white-space: nowrap; }
td.url { white-space: normal; word-break: break-all; }
th[data-sort] { cursor: pointer; user-select: none; }
tbody tr { cursor: pointer; }
tbody tr:hover { background: #8881; }
.stale { color: var(--bad); }
input, select, button { font: inherit; }
#message { min-height: 1.4em; }
#message.error { color: var(--bad); }
#detail { border: 1px solid var(--line); padding: .5rem 1rem; margin-top: 1rem; }
#detail table td { white-space: normal; word-break: break-all; }
svg { border: 1px solid var(--line); }
`

const SCRIPT = `
"use strict"
const PAGE_SIZE = 100
const TOKEN_KEY = "caching-proxy-admin-token"
const $ = (selector) => document.querySelector(selector)
const state = { prefix: "/", cursors: [null], page: 0, next: null, rows: [], loadedAt: 0, sort: "path", descending: false }

/** An element with its text (never HTML) and attributes. */
function el(tag, text, attributes = {}) {
  const node = document.createElement(tag)
  if (text !== undefined && text !== null) node.textContent = String(text)
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value)
  return node
}

function say(text, isError = false) {
  $("#message").textContent = text
  $("#message").className = isError ? "error" : ""
}

class NeedsToken extends Error {}

async function api(path, init = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY)
  const headers = { ...init.headers }
  if (token) headers.authorization = "Bearer " + token
  const res = await fetch(path, { ...init, headers })
  if (res.status === 401) {
    $("#login").hidden = false
    throw new NeedsToken("this admin listener needs its token")
  }
  if (!res.ok) throw new Error((await res.text()).trim())
  return res.json()
}

function bytes(n) {
  if (n === undefined) return "no bound"
  const units = ["B", "KiB", "MiB", "GiB", "TiB"]
  let i = 0
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++ }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i]
}

function duration(seconds) {
  const s = Math.abs(Math.round(seconds))
  const text = s < 120 ? s + " s" : s < 7200 ? Math.round(s / 60) + " min" : s < 172800 ? Math.round(s / 3600) + " h" : Math.round(s / 86400) + " d"
  return seconds < 0 ? "stale " + text : text
}

// ───── traffic and store fill ─────

async function loadStats() {
  const stats = await api("/api/stats")
  $("#origin").textContent = stats.origin
  const requests = stats.recent.reduce((sum, b) => sum + b.requests, 0)
  const hits = stats.recent.reduce((sum, b) => sum + b.hits, 0)
  const lastMinute = stats.recent.slice(-6).reduce((sum, b) => sum + b.requests, 0)
  $("#hit-ratio").textContent = requests ? Math.round((100 * hits) / requests) + " %" : "no requests"
  $("#rate").textContent = (lastMinute / 60).toFixed(1) + " req/s"
  drawChart(stats.recent)
  const fill = $("#fill")
  fill.replaceChildren()
  for (const tier of stats.tiers) {
    const box = el("div", null, { class: "tier", "data-tier": tier.tier })
    box.append(el("div", tier.tier, { class: "muted" }))
    box.append(el("div", tier.entries + " entries", { class: "figure" }))
    box.append(el("div", bytes(tier.bytes) + " of " + bytes(tier.maxBytes)))
    if (tier.maxBytes) {
      const bar = el("div", null, { class: "bar" })
      const used = el("div")
      used.style.width = Math.min(100, (100 * tier.bytes) / tier.maxBytes) + "%"
      bar.append(used)
      box.append(bar)
    }
    fill.append(box)
  }
}

/** Requests per second as bars, the hit ratio as a line, per 10-second bucket. */
function drawChart(buckets) {
  const svg = $("#chart")
  const width = 600, height = 120, step = width / buckets.length
  const peak = Math.max(1, ...buckets.map((b) => b.requests))
  const ns = "http://www.w3.org/2000/svg"
  svg.replaceChildren()
  const points = []
  buckets.forEach((b, i) => {
    const bar = document.createElementNS(ns, "rect")
    const h = (b.requests / peak) * (height - 10)
    bar.setAttribute("x", String(i * step + 1))
    bar.setAttribute("y", String(height - h))
    bar.setAttribute("width", String(step - 2))
    bar.setAttribute("height", String(h))
    bar.setAttribute("fill", "#2a7ae266")
    const title = document.createElementNS(ns, "title")
    title.textContent = new Date(b.at).toLocaleTimeString() + ": " + (b.requests / 10).toFixed(1) + " req/s, " + (b.requests ? Math.round((100 * b.hits) / b.requests) + " % hits" : "no requests")
    bar.append(title)
    svg.append(bar)
    if (!b.requests) return
    const x = i * step + step / 2, y = height - (b.hits / b.requests) * (height - 10)
    points.push(x.toFixed(1) + "," + y.toFixed(1))
    // A dot per bucket: a line needs two buckets with requests, a dot shows one.
    const dot = document.createElementNS(ns, "circle")
    dot.setAttribute("cx", x.toFixed(1))
    dot.setAttribute("cy", y.toFixed(1))
    dot.setAttribute("r", "2.5")
    dot.setAttribute("fill", "#27ae60")
    svg.append(dot)
  })
  const line = document.createElementNS(ns, "polyline")
  line.setAttribute("points", points.join(" "))
  line.setAttribute("fill", "none")
  line.setAttribute("stroke", "#27ae60")
  line.setAttribute("stroke-width", "2")
  svg.append(line)
  $("#peak").textContent = (peak / 10).toFixed(1) + " req/s"
}

// ───── entries ─────

async function loadEntries() {
  const cursor = state.cursors[state.page]
  const query = "?limit=" + PAGE_SIZE + "&prefix=" + encodeURIComponent(state.prefix) + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "")
  const page = await api("/api/entries" + query)
  state.rows = page.entries
  state.next = page.cursor
  state.loadedAt = Date.now()
  $("#page").textContent = "page " + (state.page + 1)
  $("#previous").disabled = state.page === 0
  $("#next").disabled = !state.next
  renderEntries()
}

function elapsed() {
  return (Date.now() - state.loadedAt) / 1000
}

function sortValue(row, key) {
  if (key === "age") return row.ageSeconds
  if (key === "ttl") return row.ttlSeconds
  if (key === "tags") return row.tags.join(" ")
  return row[key]
}

function renderEntries() {
  const filter = $("#filter").value.trim().toLowerCase()
  const rows = state.rows.filter((row) => !filter || row.path.toLowerCase().includes(filter) || row.tags.some((tag) => tag.toLowerCase().includes(filter)))
  const direction = state.descending ? -1 : 1
  rows.sort((a, b) => {
    const x = sortValue(a, state.sort), y = sortValue(b, state.sort)
    return (x < y ? -1 : x > y ? 1 : 0) * direction
  })
  for (const th of document.querySelectorAll("th[data-sort]")) {
    th.setAttribute("aria-sort", th.dataset.sort === state.sort ? (state.descending ? "descending" : "ascending") : "none")
  }
  const body = $("#entries tbody")
  body.replaceChildren()
  for (const row of rows) {
    const tr = el("tr", null, { "data-path": row.path })
    tr.append(el("td", row.path, { class: "url" }), el("td", row.status), el("td", bytes(row.bytes)))
    tr.append(el("td", duration(row.ageSeconds), { class: "age" }), el("td", duration(row.ttlSeconds), { class: "ttl" }))
    tr.append(el("td", row.hits), el("td", row.tags.join(" ")))
    const actions = el("td")
    const button = el("button", "Purge", { class: "purge", type: "button" })
    button.addEventListener("click", (event) => {
      event.stopPropagation()
      purge({ url: row.path })
    })
    actions.append(button)
    tr.append(actions)
    tr.addEventListener("click", () => showEntry(row.path))
    tr.row = row
    body.append(tr)
  }
  $("#count").textContent = rows.length + " of " + state.rows.length + " on this page"
  tick()
}

/** Age grows and time to live counts down between loads. */
function tick() {
  const seconds = elapsed()
  for (const tr of document.querySelectorAll("#entries tbody tr")) {
    const ttl = tr.row.ttlSeconds - seconds
    tr.querySelector(".age").textContent = duration(tr.row.ageSeconds + seconds)
    tr.querySelector(".ttl").textContent = duration(ttl)
    tr.querySelector(".ttl").className = ttl > 0 ? "ttl" : "ttl stale"
  }
}

async function showEntry(path) {
  const entry = await api("/api/entry?url=" + encodeURIComponent(path))
  const detail = $("#detail")
  detail.replaceChildren()
  const close = el("button", "Close", { type: "button" })
  close.addEventListener("click", () => (detail.hidden = true))
  detail.append(el("h2", entry.path), close)
  for (const variant of entry.variants) {
    const vary = Object.entries(variant.vary).map(([name, value]) => name + ": " + (value ?? "(absent)")).join(", ")
    detail.append(el("h3", "Variant" + (vary ? " for " + vary : "")))
    detail.append(el("p", variant.status + ", " + bytes(variant.bytes) + ", " + (variant.fresh ? "fresh" : "stale") + ", in " + variant.tiers.join(" and ") + (variant.tags.length ? ", tags: " + variant.tags.join(" ") : ""), { class: "muted" }))
    const table = el("table", null, { class: "headers" })
    for (const [name, value] of variant.headers) {
      const tr = el("tr")
      tr.append(el("td", name), el("td", value))
      table.append(tr)
    }
    detail.append(table)
  }
  detail.hidden = false
}

// ───── purging ─────

async function purge(target) {
  const soft = $("#soft").checked
  const [[kind, value]] = Object.entries(target)
  const what = (soft ? "Mark stale" : "Remove") + " every entry with " + kind + " " + value + "?"
  if (!confirm(what)) return
  try {
    const { purged } = await api("/api/purge", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ ...target, soft }) })
    say((soft ? "marked stale: " : "purged: ") + purged + (purged === 1 ? " URL" : " URLs"))
    await refresh()
  } catch (error) {
    report(error)
  }
}

// ───── wiring ─────

function report(error) {
  say(error.message, !(error instanceof NeedsToken))
}

async function refresh() {
  try {
    await Promise.all([loadStats(), loadEntries()])
  } catch (error) {
    report(error)
  }
}

$("#login").addEventListener("submit", (event) => {
  event.preventDefault()
  sessionStorage.setItem(TOKEN_KEY, $("#token").value)
  $("#login").hidden = true
  say("")
  refresh()
})
$("#search").addEventListener("submit", (event) => {
  event.preventDefault()
  state.prefix = $("#prefix").value.trim() || "/"
  state.cursors = [null]
  state.page = 0
  loadEntries().catch(report)
})
$("#filter").addEventListener("input", renderEntries)
$("#previous").addEventListener("click", () => {
  state.page--
  loadEntries().catch(report)
})
$("#next").addEventListener("click", () => {
  state.cursors[state.page + 1] = state.next
  state.page++
  loadEntries().catch(report)
})
$("#reload").addEventListener("click", refresh)
for (const th of document.querySelectorAll("th[data-sort]")) {
  th.addEventListener("click", () => {
    state.descending = state.sort === th.dataset.sort ? !state.descending : false
    state.sort = th.dataset.sort
    renderEntries()
  })
}
$("#purge-form").addEventListener("submit", (event) => {
  event.preventDefault()
  const value = $("#purge-value").value.trim()
  if (value) purge({ [$("#purge-kind").value]: value })
})
setInterval(tick, 1000)
setInterval(() => loadStats().catch(report), 10000)
refresh()
`

const BODY = `
<h1>caching-proxy <span class="muted">for <span id="origin"></span></span></h1>
<form id="login" hidden>
  <label>Admin token <input id="token" type="password" autocomplete="current-password" required></label>
  <button>Use it</button> <span class="muted">kept for this tab only</span>
</form>
<p id="message" role="status"></p>
<div class="row">
  <div><div class="muted">hit ratio, last 10 min</div><div class="figure" id="hit-ratio"></div></div>
  <div><div class="muted">requests, last minute</div><div class="figure" id="rate"></div></div>
  <div>
    <svg id="chart" width="600" height="120" viewBox="0 0 600 120" role="img" aria-label="requests per 10 s (bars) and hit ratio (line), last 10 minutes"></svg>
    <div class="muted">bars: requests per 10 s (peak <span id="peak"></span>); line: hit ratio</div>
  </div>
</div>
<h2>Store</h2>
<div class="row" id="fill"></div>
<h2>Entries</h2>
<div class="row">
  <form id="search"><label>URL prefix <input id="prefix" value="/" size="30"></label> <button>List</button></form>
  <label>Filter this page <input id="filter" type="search" placeholder="path or tag"></label>
  <span><button id="previous" type="button">Previous</button> <span id="page"></span> <button id="next" type="button">Next</button></span>
  <button id="reload" type="button">Reload</button>
</div>
<form id="purge-form" class="row">
  <label>Purge by <select id="purge-kind"><option value="url">URL</option><option value="prefix">prefix</option><option value="tag">tag</option></select></label>
  <input id="purge-value" placeholder="/users/1, /users/ or a tag" size="30">
  <label><input id="soft" type="checkbox"> soft (mark stale, revalidate on next use)</label>
  <button>Purge</button>
</form>
<p class="muted" id="count"></p>
<table id="entries">
  <thead><tr>
    <th data-sort="path">URL</th><th data-sort="status">Status</th><th data-sort="bytes">Size</th><th data-sort="age">Age</th>
    <th data-sort="ttl">TTL</th><th data-sort="hits">Hits</th><th data-sort="tags">Tags</th><th></th>
  </tr></thead>
  <tbody></tbody>
</table>
<section id="detail" hidden></section>
`

/** The inspector page, whole. */
export const INSPECTOR_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>caching-proxy inspector</title>
<link rel="icon" href="data:,">
<style>${STYLE}</style>
</head>
<body>
${BODY}
<script>${SCRIPT}</script>
</body>
</html>
`

/**
 * Its Content-Security-Policy: its own inline script (by hash) and style only, requests to this
 * listener only, and no framing (a purge button must not be clickable through another site's page).
 */
export const INSPECTOR_CSP = [
  "default-src 'none'",
  `script-src 'sha256-${createHash("sha256").update(SCRIPT).digest("base64")}'`,
  "style-src 'unsafe-inline'",
  "connect-src 'self'",
  // The empty icon in the page itself: browsers would otherwise ask for /favicon.ico.
  "img-src data:",
  "form-action 'none'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
].join("; ")
