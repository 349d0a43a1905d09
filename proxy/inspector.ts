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
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; padding: 0 1rem 2rem; max-width: 80rem; }
h1 { font-size: 1.2rem; margin: 1rem 0 .25rem; }
h2 { font-size: 1rem; margin: 1.2rem 0 .4rem; }
h3 { font-size: .9rem; margin: .2rem 0 .3rem; }
.row { display: flex; flex-wrap: wrap; gap: .75rem 1.5rem; align-items: flex-end; }
.panels { display: grid; grid-template-columns: repeat(auto-fill, minmax(16rem, 1fr)); gap: 1rem; }
.panel { border: 1px solid var(--line); border-radius: 4px; padding: .5rem .75rem; min-width: 0; }
.panel.wide { grid-column: 1 / -1; }
.figure { font-size: 1.3rem; font-weight: 600; }
.muted { color: var(--muted); }
dl { display: grid; grid-template-columns: auto 1fr; gap: .1rem .75rem; margin: 0; }
dt { color: var(--muted); }
dd { margin: 0; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
ol { margin: 0; padding-left: 1.4rem; }
ol li { overflow-wrap: anywhere; }
.bar { width: 100%; max-width: 12rem; height: .5rem; border: 1px solid var(--line); }
.bar > div { height: 100%; background: var(--accent); }
.legend { display: flex; flex-wrap: wrap; gap: .2rem .9rem; margin: .3rem 0 0; padding: 0; list-style: none; }
.swatch { display: inline-block; width: .7rem; height: .7rem; margin-right: .3rem; vertical-align: -1px; }
#chart-box { width: 100%; }
#chart { display: block; max-width: 100%; }
#chart text { font-size: 11px; fill: currentColor; }
#chart .grid { stroke: #8883; }
#chart .axis { stroke: var(--muted); }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid var(--line); white-space: nowrap; }
td.url { white-space: normal; word-break: break-all; min-width: 10rem; }
th[data-sort] { cursor: pointer; user-select: none; }
th[aria-sort="ascending"]::after { content: " ▲"; }
th[aria-sort="descending"]::after { content: " ▼"; }
tbody tr { cursor: pointer; }
tbody tr:hover { background: #8881; }
.stale { color: var(--bad); }
input, select, button { font: inherit; }
#message { min-height: 1.4em; margin: .3rem 0; }
#message.error { color: var(--bad); }
#login { border: 1px solid var(--line); border-radius: 4px; padding: 1rem; max-width: 30rem; margin: 2rem 0; }
#login p { margin: .2rem 0 .6rem; }
#login-problem { color: var(--bad); font-weight: 600; }
#detail { width: min(52rem, calc(100vw - 1rem)); max-height: calc(100vh - 2rem); overflow: auto; padding: .5rem 1rem 1rem; border: 1px solid var(--line); }
#detail::backdrop { background: #0006; }
#detail header { display: flex; justify-content: space-between; align-items: flex-start; gap: 1rem; position: sticky; top: -.5rem; background: Canvas; padding-top: .5rem; }
#detail h2 { margin: 0; word-break: break-all; }
#detail table td { white-space: normal; word-break: break-all; }
#detail table td:first-child { white-space: nowrap; word-break: normal; vertical-align: top; }
`

const SCRIPT = `
"use strict"
const PAGE_SIZE = 100
const TOKEN_KEY = "caching-proxy-admin-token"
const OUTCOMES = ["hit", "coalesced", "revalidated", "stale", "miss", "pass", "error"]
const COLOURS = { hit: "#27ae60", coalesced: "#7dcea0", revalidated: "#16a085", stale: "#f39c12", miss: "#2a7ae2", pass: "#8e44ad", error: "#c0392b" }
const $ = (selector) => document.querySelector(selector)
const state = { prefix: "/", filter: "", sort: "path", descending: false, offset: 0, total: 0, rows: [], loadedAt: 0, window: "10m" }

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

/** Asks for the token: for the first time, or again after the one given was refused. */
function askForToken(refused) {
  $("#app").hidden = true
  $("#login").hidden = false
  $("#login-title").textContent = refused ? "That token was refused" : "This admin listener needs its token"
  $("#login-problem").hidden = !refused
  $("#login-problem").textContent = refused ? "The token given is not this proxy's --admin-token (or CACHING_PROXY_ADMIN_TOKEN). Enter it again." : ""
  $("#token").value = ""
  $("#token").focus()
}

async function api(path, init = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY)
  const headers = { ...init.headers }
  if (token) headers.authorization = "Bearer " + token
  const res = await fetch(path, { ...init, headers })
  if (res.status === 401) {
    // Refused failures are answered slowly: a late 401 for a token since replaced says nothing of the new one.
    if (sessionStorage.getItem(TOKEN_KEY) === token) {
      sessionStorage.removeItem(TOKEN_KEY)
      askForToken(Boolean(token))
    }
    throw new NeedsToken("")
  }
  if (!res.ok) throw new Error((await res.text()).trim())
  return res.json()
}

function bytes(n) {
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

function milliseconds(ms) {
  return ms === null ? "none yet" : ms + " ms"
}

function clock(ms, withSeconds) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: withSeconds ? "2-digit" : undefined })
}

/** A definition list of [label, value, figure name] rows; the name lets a test find the figure. */
function figures(rows) {
  const list = el("dl")
  for (const [label, value, name] of rows) list.append(el("dt", label), el("dd", value, { "data-figure": name }))
  return list
}

// ───── traffic, the store and the process ─────

async function loadStats() {
  const stats = await api("/api/stats?window=" + state.window)
  const t = stats.traffic
  $("#origin").textContent = stats.origin
  $("#version").textContent = stats.version
  $("#uptime").textContent = duration(stats.uptimeSeconds)
  $("#about").hidden = false
  const windowName = state.window === "1h" ? "last hour" : "last 10 min"
  for (const node of document.querySelectorAll(".window-name")) node.textContent = windowName
  const hits = t.bars.reduce((sum, bar) => sum + bar.hits, 0)
  $("#overview").replaceChildren(figures([
    ["requests", t.requests, "requests"],
    ["from the cache", t.requests ? Math.round((100 * hits) / t.requests) + " %" : "no requests", "hit-ratio"],
  ]))
  drawChart(t)
  $("#status-classes").replaceChildren(figures(Object.entries(t.statusClasses).map(([name, count]) => [name, count, "status-" + name])))
  $("#bytes").replaceChildren(figures([["from the cache", bytes(t.bytes.cache), "bytes-cache"], ["from the origin", bytes(t.bytes.origin), "bytes-origin"]]))
  $("#origin-figures").replaceChildren(figures([
    ["requests", t.origin.requests, "origin-requests"],
    ["errors", t.origin.errors, "origin-errors"],
    ["latency p50", milliseconds(t.origin.p50Ms), "origin-p50"],
    ["latency p99", milliseconds(t.origin.p99Ms), "origin-p99"],
  ]))
  topList("#top-hits", t.byHits, (url) => url.hits + (url.hits === 1 ? " hit" : " hits"))
  topList("#top-bytes", t.byBytes, (url) => bytes(url.bytes))
  const fill = $("#fill")
  fill.replaceChildren()
  for (const tier of stats.tiers) {
    const box = el("div", null, { class: "tier", "data-tier": tier.tier })
    box.append(el("h3", tier.tier))
    const rows = [["entries", tier.entries, "entries-" + tier.tier], ["size", bytes(tier.bytes), "bytes-" + tier.tier]]
    if (tier.maxBytes !== undefined) rows.push(["bound", bytes(tier.maxBytes), "bound-" + tier.tier])
    else rows.push(["bound", "the server's own (maxmemory)", "bound-" + tier.tier])
    box.append(figures(rows))
    if (tier.maxBytes) {
      const bar = el("div", null, { class: "bar" })
      const used = el("div")
      used.style.width = Math.min(100, (100 * tier.bytes) / tier.maxBytes) + "%"
      bar.append(used)
      box.append(bar)
    }
    fill.append(box)
  }
  if (stats.store) {
    const box = el("div", null, { class: "tier", "data-tier": "state" })
    box.append(el("h3", "shared store"))
    box.append(figures([[stats.store.connected ? "connected" : "not connected", "since " + new Date(stats.store.since).toLocaleString(), "store-state"]]))
    fill.append(box)
  }
}

function topList(selector, urls, figure) {
  const list = $(selector)
  list.replaceChildren()
  if (urls.length === 0) list.append(el("li", "none yet", { class: "muted" }))
  for (const url of urls) {
    const item = el("li", null, { "data-path": url.path })
    item.append(el("span", url.path), el("span", " " + figure(url), { class: "muted" }))
    list.append(item)
  }
}

const SVG = "http://www.w3.org/2000/svg"
function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag)
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value))
  if (text !== undefined) node.textContent = text
  return node
}

/** Requests per bar, stacked by outcome, with a labelled count axis and time axis; as wide as its box. */
function drawChart(t) {
  const chart = $("#chart")
  const width = Math.max(240, Math.min(1200, $("#chart-box").clientWidth)), height = 180
  const left = 44, right = 8, top = 8, bottom = 34
  const plotWidth = width - left - right, plotHeight = height - top - bottom
  chart.setAttribute("width", width)
  chart.setAttribute("height", height)
  chart.setAttribute("viewBox", "0 0 " + width + " " + height)
  chart.replaceChildren()
  const peak = Math.max(1, ...t.bars.map((bar) => bar.requests))
  // A round top for the count axis: 1, 2 or 5 times a power of ten.
  const magnitude = 10 ** Math.floor(Math.log10(peak))
  const axisTop = [1, 2, 5, 10].map((m) => m * magnitude).find((value) => value >= peak)
  const y = (count) => top + plotHeight - (count / axisTop) * plotHeight
  for (const tick of [0, axisTop / 2, axisTop]) {
    chart.append(svg("line", { class: "grid", x1: left, x2: width - right, y1: y(tick), y2: y(tick) }))
    chart.append(svg("text", { x: left - 4, y: y(tick) + 4, "text-anchor": "end" }, String(tick)))
  }
  const step = plotWidth / t.bars.length
  t.bars.forEach((bar, i) => {
    let base = 0
    for (const outcome of OUTCOMES) {
      const count = bar.outcomes[outcome]
      if (!count) continue
      const rect = svg("rect", { x: left + i * step + 0.5, y: y(base + count), width: Math.max(1, step - 1), height: y(base) - y(base + count), fill: COLOURS[outcome] })
      rect.append(svg("title", {}, clock(bar.at, true) + ": " + count + " " + outcome))
      chart.append(rect)
      base += count
    }
  })
  chart.append(svg("line", { class: "axis", x1: left, x2: width - right, y1: y(0), y2: y(0) }))
  chart.append(svg("line", { class: "axis", x1: left, x2: left, y1: top, y2: y(0) }))
  // Time labels at the start, the middle and the end of the window.
  for (const [i, anchor] of [[0, "start"], [t.bars.length / 2, "middle"], [t.bars.length, "end"]]) {
    const at = t.bars[0].at + i * t.barSeconds * 1000
    chart.append(svg("text", { class: "time", x: left + i * step, y: y(0) + 14, "text-anchor": anchor }, clock(at, t.barSeconds < 60)))
  }
  chart.append(svg("text", { x: left + plotWidth / 2, y: height - 2, "text-anchor": "middle", class: "muted" }, "time (each bar " + (t.barSeconds < 60 ? t.barSeconds + " s" : t.barSeconds / 60 + " min") + ")"))
  const middle = top + plotHeight / 2
  chart.append(svg("text", { x: 10, y: middle, transform: "rotate(-90 10 " + middle + ")", "text-anchor": "middle" }, "requests"))
  const legend = $("#legend")
  legend.replaceChildren()
  for (const outcome of OUTCOMES) {
    const item = el("li")
    const swatch = el("span", null, { class: "swatch" })
    swatch.style.background = COLOURS[outcome]
    item.append(swatch, el("span", outcome + " "), el("strong", t.outcomes[outcome], { "data-figure": "outcome-" + outcome }))
    legend.append(item)
  }
}

// ───── entries ─────

async function loadEntries() {
  const query = "?limit=" + PAGE_SIZE + "&offset=" + state.offset + "&sort=" + state.sort + "&order=" + (state.descending ? "desc" : "asc") +
    "&prefix=" + encodeURIComponent(state.prefix) + "&filter=" + encodeURIComponent(state.filter)
  // A first read of a large prefix takes seconds (every entry's metadata is read): say so meanwhile.
  $("#count").textContent = "reading the cache…"
  const table = await api("/api/entries" + query)
  state.rows = table.entries
  state.total = table.total
  state.loadedAt = Date.now()
  const last = state.offset + table.entries.length
  $("#count").textContent = table.total === 0 ? "no URLs" + (state.filter ? " match" : " under " + state.prefix)
    : (state.offset + 1) + "–" + last + " of " + table.total + (table.total === 1 ? " URL" : " URLs") + (table.complete ? "" : " (the first " + table.read + " under this prefix were read: narrow it to see the rest)")
  $("#previous").disabled = state.offset === 0
  $("#next").disabled = last >= table.total
  renderEntries()
}

function elapsed() {
  return (Date.now() - state.loadedAt) / 1000
}

function renderEntries() {
  for (const th of document.querySelectorAll("th[data-sort]")) {
    th.setAttribute("aria-sort", th.dataset.sort === state.sort ? (state.descending ? "descending" : "ascending") : "none")
  }
  $("#sort").value = state.sort
  $("#order").value = state.descending ? "desc" : "asc"
  const body = $("#entries tbody")
  body.replaceChildren()
  for (const row of state.rows) {
    const tr = el("tr", null, { "data-path": row.path })
    tr.append(el("td", row.path, { class: "url" }), el("td", row.status), el("td", bytes(row.bytes), { class: "size" }))
    tr.append(el("td", duration(row.ageSeconds), { class: "age" }), el("td", duration(row.ttlSeconds), { class: "ttl" }))
    tr.append(el("td", row.hits), el("td", row.tags.join(" ")))
    const actions = el("td")
    for (const [label, soft] of [["Hard purge", false], ["Soft purge", true]]) {
      const button = el("button", label, { class: soft ? "soft-purge" : "purge", type: "button", title: soft ? "mark stale: the next request revalidates" : "remove: the next request goes to the origin" })
      button.addEventListener("click", (event) => {
        event.stopPropagation()
        purge({ url: row.path }, soft)
      })
      actions.append(button, " ")
    }
    tr.append(actions)
    tr.addEventListener("click", () => showEntry(row.path).catch(report))
    tr.row = row
    body.append(tr)
  }
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

/** The entry's stored headers, in a dialog over the page where the user is looking. */
async function showEntry(path) {
  const entry = await api("/api/entry?url=" + encodeURIComponent(path))
  const detail = $("#detail")
  detail.replaceChildren()
  const header = el("header")
  const close = el("button", "Close", { type: "button", class: "close" })
  close.addEventListener("click", () => detail.close())
  header.append(el("h2", entry.path), close)
  detail.append(header)
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
  if (!detail.open) detail.showModal()
  close.focus()
}

// ───── purging ─────

async function purge(target, soft) {
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
  if (!(error instanceof NeedsToken)) say(error.message, true)
}

async function refresh() {
  try {
    await Promise.all([loadStats(), loadEntries()])
    $("#login").hidden = true
    $("#app").hidden = false
  } catch (error) {
    report(error)
  }
}

$("#login").addEventListener("submit", (event) => {
  event.preventDefault()
  sessionStorage.setItem(TOKEN_KEY, $("#token").value)
  say("")
  refresh()
})
$("#search").addEventListener("submit", (event) => {
  event.preventDefault()
  state.prefix = $("#prefix").value.trim() || "/"
  state.filter = $("#filter").value.trim()
  state.sort = $("#sort").value
  state.descending = $("#order").value === "desc"
  state.offset = 0
  loadEntries().catch(report)
})
$("#previous").addEventListener("click", () => {
  state.offset = Math.max(0, state.offset - PAGE_SIZE)
  loadEntries().catch(report)
})
$("#next").addEventListener("click", () => {
  state.offset += PAGE_SIZE
  loadEntries().catch(report)
})
$("#reload").addEventListener("click", refresh)
$("#window").addEventListener("change", () => {
  state.window = $("#window").value
  loadStats().catch(report)
})
for (const th of document.querySelectorAll("th[data-sort]")) {
  th.addEventListener("click", () => {
    // Size, hits, age and TTL: the largest first; URL and status: in order.
    const largestFirst = ["size", "hits", "age", "ttl"].includes(th.dataset.sort)
    state.descending = state.sort === th.dataset.sort ? !state.descending : largestFirst
    state.sort = th.dataset.sort
    state.offset = 0
    loadEntries().catch(report)
  })
}
$("#purge-form").addEventListener("submit", (event) => {
  event.preventDefault()
  const value = $("#purge-value").value.trim()
  if (value) purge({ [$("#purge-kind").value]: value }, $("#purge-mode").value === "soft")
})
addEventListener("resize", () => loadStats().catch(report))
setInterval(tick, 1000)
setInterval(() => {
  if (!$("#app").hidden) loadStats().catch(report)
}, 10000)
refresh()
`

const BODY = `
<h1>caching-proxy inspector</h1>
<p class="muted" id="about" hidden>for <span id="origin"></span> · version <span id="version"></span> · up <span id="uptime"></span></p>
<form id="login" hidden>
  <h2 id="login-title"></h2>
  <p id="login-problem" role="alert"></p>
  <label>Admin token <input id="token" type="password" autocomplete="current-password" required></label>
  <button>Use it</button>
  <p class="muted">Kept for this tab only.</p>
</form>
<p id="message" role="status"></p>
<main id="app" hidden>
<div class="row">
  <label>Window <select id="window"><option value="10m">last 10 minutes</option><option value="1h">last hour</option></select></label>
  <button id="reload" type="button">Reload</button>
</div>
<h2>Traffic, <span class="window-name"></span></h2>
<div class="panels">
  <section class="panel"><h3>Requests</h3><div id="overview"></div></section>
  <section class="panel wide">
    <h3>Outcomes over time</h3>
    <div id="chart-box"><svg id="chart" role="img" aria-label="requests per bar over the window, stacked by outcome"></svg></div>
    <ul class="legend" id="legend"></ul>
  </section>
  <section class="panel"><h3>Status classes</h3><div id="status-classes"></div></section>
  <section class="panel"><h3>Bytes sent</h3><div id="bytes"></div></section>
  <section class="panel"><h3>Origin</h3><div id="origin-figures"></div></section>
  <section class="panel"><h3>Top URLs by hits <span class="muted">since start</span></h3><ol id="top-hits"></ol></section>
  <section class="panel"><h3>Top URLs by bytes <span class="muted">since start</span></h3><ol id="top-bytes"></ol></section>
</div>
<h2>Store</h2>
<div class="panels" id="fill"></div>
<h2>Entries</h2>
<form id="search" class="row">
  <label>URL prefix <input id="prefix" value="/" size="16"></label>
  <label>Path or tag holds <input id="filter" type="search" size="12"></label>
  <label>Sort by <select id="sort"><option value="path">URL</option><option value="status">status</option><option value="size">size</option><option value="hits">hits</option><option value="age">age</option><option value="ttl">TTL</option></select></label>
  <select id="order" aria-label="order"><option value="asc">ascending</option><option value="desc">descending</option></select>
  <button>List</button>
</form>
<form id="purge-form" class="row">
  <label>Purge by <select id="purge-kind"><option value="url">URL</option><option value="prefix">prefix</option><option value="tag">tag</option></select></label>
  <input id="purge-value" placeholder="/users/1, /users/ or a tag" size="20" aria-label="what to purge">
  <select id="purge-mode" aria-label="purge mode"><option value="hard">hard: remove</option><option value="soft">soft: mark stale</option></select>
  <button>Purge</button>
</form>
<p class="row"><span class="muted" id="count"></span> <span><button id="previous" type="button">Previous</button> <button id="next" type="button">Next</button></span></p>
<div class="scroll">
<table id="entries">
  <thead><tr>
    <th data-sort="path">URL</th><th data-sort="status">Status</th><th data-sort="size">Size</th><th data-sort="age">Age</th>
    <th data-sort="ttl">TTL</th><th data-sort="hits">Hits</th><th>Tags</th><th></th>
  </tr></thead>
  <tbody></tbody>
</table>
</div>
</main>
<dialog id="detail" aria-label="entry detail"></dialog>
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
