/**
 * The cache inspector page in a real headless chromium, at a desktop's width (1280 px) and a
 * phone's (390 px), against the real proxy and its admin listener on ports 0. Screenshots of both
 * widths go to the system's temporary directory, for a person to look at.
 */
import { describe, expect, test } from "bun:test"
import { tmpdir } from "node:os"
import { join } from "node:path"
import type { Browser, Page } from "playwright-core"
import { FAST_RUN, launchBrowser, startAdminOrigin, startAdminProxy, startFreshOrigin, startRedis } from "./test.fixture.ts"

// ───────────────────────────── helpers ─────────────────────────────

const TOKEN = "s3cret-token"
const WIDTHS = [1280, 390] as const

/** A body of `n` bytes, fresh for a minute: entries whose sizes are known. */
function startSizedOrigin(size: (path: string) => number) {
  return startAdminOrigin((req) => {
    const path = new URL(req.url).pathname
    return new Response("x".repeat(size(path)), { headers: { "cache-control": "max-age=60" } })
  })
}

async function through(url: string) {
  const res = await fetch(url)
  await res.arrayBuffer()
  return res.headers.get("x-cache")
}

/** The page at one width, with every request it made and every script error or CSP violation it met. */
async function openInspector(browser: Browser, adminUrl: string, width: number) {
  const page = await browser.newPage({ viewport: { width, height: width > 800 ? 900 : 844 } })
  const requested: string[] = []
  const problems: string[] = []
  page.on("request", (request) => requested.push(request.url()))
  page.on("pageerror", (error) => problems.push(error.message))
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(message.text())
  })
  page.on("dialog", (dialog) => void dialog.accept())
  await page.goto(`${adminUrl}/`)
  return { page, requested, problems }
}

/** The paths the entries table shows, in its order. */
function tablePaths(page: Page): Promise<string[]> {
  return page.locator("#entries tbody tr").evaluateAll((rows) => rows.map((row) => row.getAttribute("data-path") ?? ""))
}

/** Waits until the entries table passes `check`: it is redrawn when the page's request is answered. */
async function untilTable(page: Page, check: (paths: string[]) => boolean): Promise<string[]> {
  for (;;) {
    const paths = await tablePaths(page)
    if (check(paths)) return paths
    await Bun.sleep(50)
  }
}

/** The text of every figure the page shows, by its name. */
async function shownFigures(page: Page): Promise<Record<string, string>> {
  const pairs = await page
    .locator("[data-figure]")
    .evaluateAll((nodes) => nodes.map((node) => [node.getAttribute("data-figure") ?? "", node.textContent ?? ""]))
  return Object.fromEntries(pairs)
}

/** Sizes as the page writes them. */
function bytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"]
  let i = 0
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024
    i++
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`
}

/** Whether a box lies wholly inside a viewport. */
function isInside(box: { x: number; y: number; width: number; height: number } | null, viewport: { width: number; height: number }) {
  return box !== null && box.x >= 0 && box.y >= 0 && box.x + box.width <= viewport.width && box.y + box.height <= viewport.height
}

type Stats = {
  origin: string
  version: string
  store: { connected: boolean; since: number } | null
  tiers: { tier: string; entries: number; bytes: number; maxBytes?: number }[]
  traffic: {
    barSeconds: number
    bars: { requests: number; hits: number }[]
    requests: number
    outcomes: Record<string, number>
    statusClasses: Record<string, number>
    bytes: { cache: number; origin: number }
    origin: { requests: number; errors: number; p50Ms: number | null; p99Ms: number | null }
    byHits: { path: string; hits: number }[]
    byBytes: { path: string; bytes: number }[]
  }
}

/** What every panel should show for these stats, figure by figure; `since`: the store state's time as the page's locale writes it. */
function expectedFigures({ traffic, tiers, store }: Stats, since?: string): Record<string, string> {
  const hits = traffic.bars.reduce((sum, bar) => sum + bar.hits, 0)
  const ms = (value: number | null) => (value === null ? "none yet" : `${value} ms`)
  return {
    requests: String(traffic.requests),
    "hit-ratio": `${Math.round((100 * hits) / traffic.requests)} %`,
    ...Object.fromEntries(Object.entries(traffic.outcomes).map(([name, count]) => [`outcome-${name}`, String(count)])),
    ...Object.fromEntries(Object.entries(traffic.statusClasses).map(([name, count]) => [`status-${name}`, String(count)])),
    "bytes-cache": bytes(traffic.bytes.cache),
    "bytes-origin": bytes(traffic.bytes.origin),
    "origin-requests": String(traffic.origin.requests),
    "origin-errors": String(traffic.origin.errors),
    "origin-p50": ms(traffic.origin.p50Ms),
    "origin-p99": ms(traffic.origin.p99Ms),
    ...Object.fromEntries(
      tiers.flatMap((tier) => [
        [`entries-${tier.tier}`, String(tier.entries)],
        [`bytes-${tier.tier}`, bytes(tier.bytes)],
        [`bound-${tier.tier}`, tier.maxBytes === undefined ? "the server's own (maxmemory)" : bytes(tier.maxBytes)],
      ]),
    ),
    ...(store ? { "store-state": `since ${since}` } : {}),
  }
}

// ───────────────────────────── the tests ─────────────────────────────

describe.skipIf(FAST_RUN)("the inspector, in a real browser at 1280 px and 390 px", () => {
  test("a click on a row far down the table shows the entry's headers inside the viewport; the page fits the width", async () => {
    await using origin = startFreshOrigin((path) => ({ "x-origin-note": `note for ${path}` }))
    await using proxy = await startAdminProxy({ origin: origin.url })
    const paths = Array.from({ length: 130 }, (_, i) => `/items/${String(i).padStart(3, "0")}`)
    for (const path of paths) await through(proxy.url + path)
    await using chrome = await launchBrowser()
    for (const width of WIDTHS) {
      const { page, problems } = await openInspector(chrome.browser, proxy.adminUrl, width)
      await page.locator("#entries tbody tr").first().waitFor()
      await page.screenshot({ path: join(tmpdir(), `caching-proxy-inspector-${width}.png`), fullPage: true })
      // Nothing wider than the screen: the table scrolls in its own box, the chart is drawn to its box.
      expect(await page.evaluate("document.documentElement.scrollWidth")).toBeLessThanOrEqual(width)
      expect(Number(await page.locator("#chart").getAttribute("width"))).toBeLessThanOrEqual(width)

      const row = page.locator('#entries tbody tr[data-path="/items/090"]')
      await row.scrollIntoViewIfNeeded()
      await row.locator("td.url").click()
      const detail = page.locator("#detail")
      await detail.locator("table.headers").waitFor()
      expect(await detail.textContent()).toContain("note for /items/090")
      expect(isInside(await detail.boundingBox(), { width, height: page.viewportSize()?.height ?? 0 })).toBe(true)
      await page.screenshot({ path: join(tmpdir(), `caching-proxy-inspector-${width}-detail.png`) })
      await detail.locator("button.close").click()
      expect(await detail.isVisible()).toBe(false)
      expect(problems).toEqual([])
      await page.close()
    }
  })

  test("sorting by size orders the whole cache, largest first, across two pages, with the total; the filter is the server's too", async () => {
    // Sizes that follow neither the paths' order nor the store's (by hash): 7 × i mod 131, all distinct.
    const sizeOf = (path: string) => 1 + ((7 * Number(path.slice("/items/".length))) % 131)
    await using origin = startSizedOrigin(sizeOf)
    await using proxy = await startAdminProxy({ origin: origin.url })
    const paths = Array.from({ length: 130 }, (_, i) => `/items/${i}`)
    for (const path of paths) await through(proxy.url + path)
    const bySize = [...paths].sort((a, b) => sizeOf(b) - sizeOf(a))
    await using chrome = await launchBrowser()
    for (const width of WIDTHS) {
      const { page } = await openInspector(chrome.browser, proxy.adminUrl, width)
      await page.locator("#entries tbody tr").first().waitFor()
      expect(await page.locator("#count").textContent()).toBe("1–100 of 130 URLs")
      await page.click('th[data-sort="size"]')
      const first = await untilTable(page, (shown) => shown[0] === bySize[0])
      expect(first).toEqual(bySize.slice(0, 100))
      expect(await page.locator('th[data-sort="size"]').getAttribute("aria-sort")).toBe("descending")
      await page.click("#next")
      const second = await untilTable(page, (shown) => shown.length === 30)
      expect(second).toEqual(bySize.slice(100))
      expect(await page.locator("#count").textContent()).toBe("101–130 of 130 URLs")
      expect(await page.locator("#next").isDisabled()).toBe(true)

      // The filter asks the server: every match in the cache, not those of the page shown.
      await page.fill("#filter", "/items/12")
      await page.click("#search button")
      const filtered = await untilTable(page, (shown) => shown.length === 11)
      expect(filtered).toEqual(
        ["/items/12", ...Array.from({ length: 10 }, (_, i) => `/items/12${i}`)].sort((a, b) => sizeOf(b) - sizeOf(a)),
      )
      expect(await page.locator("#count").textContent()).toBe("1–11 of 11 URLs")
      // A URL prefix is read by the store itself: only what is under it.
      await page.fill("#filter", "")
      await page.fill("#prefix", "/items/1")
      await page.click("#search button")
      const underPrefix = await untilTable(page, (shown) => shown.length === 41)
      expect(underPrefix).toEqual(paths.filter((path) => path.startsWith("/items/1")).sort((a, b) => sizeOf(b) - sizeOf(a)))
      expect(await page.locator("#count").textContent()).toBe("1–41 of 41 URLs")
      await page.close()
    }
  })

  test("every panel's figure is what /api/stats says, over 10 minutes and over an hour; the Redis tier has no made-up bound", async () => {
    await using redis = await startRedis()
    await using origin = startAdminOrigin(async (req) => {
      const path = new URL(req.url).pathname
      if (path === "/slow") await Bun.sleep(1500) // past the proxy's timeout: an origin error
      if (path === "/private") return new Response("mine", { headers: { "cache-control": "private" } })
      if (path === "/missing") return new Response("no such page", { status: 404 })
      return new Response(`body of ${path}`, { headers: { "cache-control": "max-age=60" } })
    })
    await using proxy = await startAdminProxy({
      origin: origin.url,
      timeoutSeconds: 0.5,
      store: { kind: "redis", target: { single: redis.url } },
    })
    for (const path of ["/a", "/a", "/a", "/b", "/b", "/private", "/missing", "/slow"]) await through(proxy.url + path)
    await using chrome = await launchBrowser()
    for (const width of WIDTHS) {
      const { page, problems } = await openInspector(chrome.browser, proxy.adminUrl, width)
      await page.locator('[data-figure="requests"]').waitFor()
      const stats = (await (await proxy.admin("/api/stats")).json()) as Stats
      expect(stats.traffic.outcomes).toMatchObject({ hit: 3, miss: 3, pass: 1, error: 1 })
      expect(stats.traffic.origin.errors).toBe(1)
      const since = await page.evaluate((at) => new Date(at).toLocaleString(), stats.store?.since ?? 0)
      expect(await shownFigures(page)).toEqual(expectedFigures(stats, since))
      expect(await page.locator("#top-hits li").evaluateAll((items) => items.map((item) => item.getAttribute("data-path")))).toEqual(
        stats.traffic.byHits.map((url) => url.path),
      )
      expect(await page.locator("#top-bytes li").evaluateAll((items) => items.map((item) => item.getAttribute("data-path")))).toEqual(
        stats.traffic.byBytes.map((url) => url.path),
      )
      expect(await page.locator("#version").textContent()).toBe(stats.version)
      expect(await page.locator('[data-tier="state"]').textContent()).toContain("connected")
      expect(await page.locator("#fill").textContent()).not.toContain("no bound")
      // The chart: 60 bars' worth of time, a labelled count axis and start, middle and end times.
      expect(await page.locator("#chart text.time").count()).toBe(3)
      expect(await page.locator("#chart").textContent()).toContain("requests")
      expect(await page.locator("#chart").textContent()).toContain("each bar 10 s")

      await page.selectOption("#window", "1h")
      await page.locator("#chart", { hasText: "each bar 1 min" }).waitFor()
      const hour = (await (await proxy.admin("/api/stats?window=1h")).json()) as Stats
      expect(hour.traffic.barSeconds).toBe(60)
      expect(await shownFigures(page)).toEqual(expectedFigures(hour, since))
      await page.screenshot({ path: join(tmpdir(), `caching-proxy-inspector-${width}-panels.png`), fullPage: true })
      expect(problems).toEqual([])
      await page.close()
    }
  })

  test("with a token: a clean prompt, a distinct message for a wrong token, and the page once the right one is given", async () => {
    await using origin = startFreshOrigin()
    await using proxy = await startAdminProxy({ origin: origin.url, admin: { port: 0, host: "127.0.0.1", token: TOKEN } })
    await through(`${proxy.url}/private`)
    await using chrome = await launchBrowser()
    for (const width of WIDTHS) {
      const { page, problems } = await openInspector(chrome.browser, proxy.adminUrl, width)
      await page.locator("#login").waitFor()
      expect(await page.locator("#login-title").textContent()).toBe("This admin listener needs its token")
      // Nothing but the title, the prompt and the (empty) message: no figures without data.
      expect(await page.locator("#app").isHidden()).toBe(true)
      expect(await page.locator("#about").isHidden()).toBe(true)
      // biome-ignore lint/performance/useDomNodeTextContent: the text as rendered is the point (hidden parts must not count)
      expect((await page.locator("body").innerText()).replace(/\s+/g, " ").trim()).toBe(
        "caching-proxy inspector This admin listener needs its token Admin token Use it Kept for this tab only.",
      )
      await page.screenshot({ path: join(tmpdir(), `caching-proxy-inspector-${width}-token.png`) })

      await page.fill("#token", "not-the-token")
      await page.click("#login button")
      await page.locator("#login-title", { hasText: "That token was refused" }).waitFor()
      expect(await page.locator("#login-problem").textContent()).toContain("not this proxy's --admin-token")
      expect(await page.locator("#app").isHidden()).toBe(true)

      await page.fill("#token", TOKEN)
      await page.click("#login button")
      await page.locator('#entries tbody tr[data-path="/private"]').waitFor()
      expect(await page.locator("#login").isHidden()).toBe(true)
      expect(await page.evaluate(() => sessionStorage.getItem("caching-proxy-admin-token"))).toBe(TOKEN)
      expect(problems.filter((problem) => !problem.includes("401"))).toEqual([])
      await page.close()
    }
  })

  test("a row's buttons say whether they remove the entry or mark it stale, and do so", async () => {
    await using origin = startFreshOrigin()
    await using proxy = await startAdminProxy({ origin: origin.url })
    for (const path of ["/hard", "/soft"]) await through(proxy.url + path)
    await using chrome = await launchBrowser()
    const { page } = await openInspector(chrome.browser, proxy.adminUrl, 1280)
    await page.locator('#entries tbody tr[data-path="/soft"]').waitFor()
    expect(await page.locator('#entries tbody tr[data-path="/soft"] button').allTextContents()).toEqual(["Hard purge", "Soft purge"])
    await page.click('#entries tbody tr[data-path="/soft"] button.soft-purge')
    await page.locator("#message", { hasText: "marked stale: 1 URL" }).waitFor()
    await page.click('#entries tbody tr[data-path="/hard"] button.purge')
    await page.locator("#message", { hasText: "purged: 1 URL" }).waitFor()
    expect(await untilTable(page, (shown) => shown.length === 1)).toEqual(["/soft"])
    expect(await through(`${proxy.url}/hard`)).toBe("MISS")
    expect(((await (await proxy.admin("/api/entry?url=/soft")).json()) as { fresh: boolean }).fresh).toBe(false)
  })
})

describe.skipIf(FAST_RUN)("the inspector page, whatever the width", () => {
  test("a row shows the entry's status, size, age, TTL, hits and tags; nothing is asked of another host", async () => {
    await using origin = startFreshOrigin((path): Record<string, string> => (path === "/products/1" ? { "surrogate-key": "sale" } : {}))
    await using proxy = await startAdminProxy({ origin: origin.url })
    for (const path of ["/products/1", "/about", "/about"]) await through(proxy.url + path)
    await using chrome = await launchBrowser()
    const { page, requested, problems } = await openInspector(chrome.browser, proxy.adminUrl, 1280)
    await page.locator('#entries tbody tr[data-path="/about"]').waitFor()
    const [path, status, size, age, ttl, hits, tags, actions] = await page
      .locator('#entries tbody tr[data-path="/about"] td')
      .allTextContents()
    expect([path, status, size, hits, tags]).toEqual(["/about", "200", "2 B", "1", ""])
    expect(actions?.trim()).toBe("Hard purge Soft purge")
    // Age and time to live in whole seconds: they add up to the minute the entry is fresh for.
    expect(Number(age?.replace(/ s$/, "")) + Number(ttl?.replace(/ s$/, ""))).toBeWithin(59, 62)
    expect(await page.locator('#entries tbody tr[data-path="/products/1"] td').nth(6).textContent()).toBe("sale")
    await page.fill("#filter", "sale")
    await page.click("#search button")
    expect(await untilTable(page, (shown) => shown.length === 1)).toEqual(["/products/1"])
    expect(requested.filter((url) => !url.startsWith(`${proxy.adminUrl}/`))).toEqual([])
    expect(problems).toEqual([])
  })

  test("the page is one self-contained document, with a policy that allows nothing from elsewhere", async () => {
    await using origin = startFreshOrigin()
    await using proxy = await startAdminProxy({ origin: origin.url, admin: { port: 0, host: "127.0.0.1", token: TOKEN } })
    // The page holds no data: it is served without the token; the API it calls is not.
    const res = await fetch(`${proxy.adminUrl}/`)
    expect(res.status).toBe(200)
    expect(res.headers.get("content-type")?.toLowerCase()).toBe("text/html; charset=utf-8")
    expect(res.headers.get("content-security-policy")).toContain("default-src 'none'")
    expect(res.headers.get("content-security-policy")).toContain("frame-ancestors 'none'")
    const html = await res.text()
    expect(html).not.toMatch(/<(script|link|img)[^>]+(src|href)="(?!data:)/i)
    expect((await fetch(`${proxy.adminUrl}/api/entries`)).status).toBe(401)
  })
})

describe("the inspector's API", () => {
  test("a table's sort, order, offset and filter are checked: 400 with the reason", async () => {
    await using origin = startFreshOrigin()
    await using proxy = await startAdminProxy({ origin: origin.url })
    const refusal = async (query: string) => {
      const res = await proxy.admin(`/api/entries?${query}`)
      return `${res.status} ${(await res.text()).trim()}`
    }
    expect(await refusal("sort=colour")).toBe('400 sort must be one of path, status, size, hits, age, ttl (got "colour")')
    expect(await refusal("sort=size&order=up")).toBe('400 order must be asc or desc (got "up")')
    expect(await refusal("offset=-1")).toBe('400 offset must be a whole number from 0 (got "-1")')
    expect(await refusal(`filter=${"x".repeat(1025)}`)).toBe("400 filter is at most 1024 characters (got 1025)")
    expect(await refusal("sort=size&limit=1001")).toBe('400 limit must be a whole number from 1 to 1000 (got "1001")')
    const res = await proxy.admin("/api/stats?window=1d")
    expect(`${res.status} ${(await res.text()).trim()}`).toBe('400 window must be 10m or 1h (got "1d")')
  })

  test("the top URLs are bounded: past 10,000 URLs the least requested are forgotten, and a URL seen later is still ranked", async () => {
    await using origin = startAdminOrigin((req) => {
      const path = new URL(req.url).pathname
      if (path === "/hot") return new Response("hot", { headers: { "cache-control": "max-age=60" } })
      // The first of the URLs asked once is a byte larger than the others: ranked by bytes while it is known.
      const body = path === "/late" ? "x".repeat(100_000) : path === "/once/0" ? "zz" : "y"
      return new Response(body, { headers: { "cache-control": "no-store" } })
    })
    await using proxy = await startAdminProxy({ origin: origin.url })
    for (let i = 0; i < 5; i++) await through(`${proxy.url}/hot`)
    const paths = Array.from({ length: 10_000 }, (_, i) => `/once/${i}`)
    for (let i = 0; i < paths.length; i += 50) await Promise.all(paths.slice(i, i + 50).map((path) => through(proxy.url + path)))
    await through(`${proxy.url}/late`)
    const { traffic } = (await (await proxy.admin("/api/stats")).json()) as Stats
    expect(traffic.byHits.map((url) => url.path)).toEqual(["/hot"])
    expect(traffic.byBytes[0]).toMatchObject({ path: "/late", bytes: 100_000 })
    // Forgotten at 10,000 URLs with the first half of those asked once (the longest known go first).
    expect(traffic.byBytes.map((url) => url.path)).not.toContain("/once/0")
  })
})
