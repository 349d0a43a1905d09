/**
 * The admin listener, through real HTTP: a real origin on port 0, the real proxy and its admin
 * app each on a port 0 of their own; the command line as a child process. The inspector page, in
 * a real headless chromium, is tested in proxy/inspector.test.ts.
 */
import { afterEach, describe, expect, setSystemTime, test } from "bun:test"
import { readFileSync, rmSync, writeFileSync } from "node:fs"
import type { EntryView, TierStats, VariantView } from "../cache.ts"
import {
  buildNodeBundle,
  CLI,
  FAST_RUN,
  metaFiles,
  NODE_BUNDLE,
  ownedDir,
  RUNTIMES,
  runCli,
  startAdminOrigin,
  startAdminProxy,
  startCliProxy,
  startFreshOrigin,
  startRedis,
} from "./test.fixture.ts"

// ───────────────────────────── helpers ─────────────────────────────

const TOKEN = "s3cret-token"

afterEach(() => setSystemTime())

/** What a client of the proxy got, its body read. */
async function through(url: string, headers: Record<string, string> = {}) {
  const res = await fetch(url, { headers })
  return { body: await res.text(), xCache: res.headers.get("x-cache"), headers: res.headers }
}

/** POSTs a purge to the admin listener; its status and answer. */
async function purge(proxy: { admin: (path: string, init?: RequestInit) => Promise<Response> }, body: unknown) {
  const res = await proxy.admin("/api/purge", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: typeof body === "string" ? body : JSON.stringify(body),
  })
  return { status: res.status, body: res.status === 200 ? await res.json() : await res.text() }
}

/** What the API answers, as the tests read it. */
type Listed = EntryView & { path: string }
type EntriesPage = { entries: Listed[]; cursor: string | null }
type Entry = Omit<Listed, "variants"> & { variants: VariantView[] }
type Stats = { tiers: TierStats[] }

async function json<T>(response: Response | Promise<Response>): Promise<T> {
  const res = await response
  expect(res.status).toBe(200)
  return (await res.json()) as T
}

async function text(response: Response | Promise<Response>) {
  const res = await response
  return { status: res.status, body: await res.text() }
}

// ───────────────────────────── the listener ─────────────────────────────

/** An origin whose answer "the body" (ETag "v1", fresh 60 s) a conditional request revalidates with a 304. */
function startRevalidatingOrigin() {
  return startAdminOrigin((req) =>
    req.headers.get("if-none-match") === '"v1"'
      ? new Response(null, { status: 304, headers: { etag: '"v1"', "cache-control": "max-age=60" } })
      : new Response("the body", { headers: { etag: '"v1"', "cache-control": "max-age=60" } }),
  )
}

describe("the admin listener", () => {
  test.each([
    [["--admin-port", "abc"], {}, '--admin-port must be 0-65535 (got "abc")'],
    [["--port", "3111", "--admin-port", "3111"], {}, "--admin-port must differ from --port (both are 3111)"],
    [["--admin-port", "0", "--admin-host", "0.0.0.0"], {}, "--admin-host 0.0.0.0 is reachable from other machines: set --admin-token"],
    [["--admin-host", "0.0.0.0"], { CACHING_PROXY_ADMIN_PORT: "0" }, "--admin-host 0.0.0.0 is reachable from other machines"],
    [["--admin-token", TOKEN], {}, "--admin-token is given without --admin-port"],
    [["--admin-port", "0", "--admin-token", "two words"], {}, "--admin-token must be printable ASCII without spaces"],
  ])("%j %j: one line, exit code 2", async (args, env, message) => {
    const { stderr, code } = await runCli([...CLI, "--origin", "http://127.0.0.1:1", ...args], undefined, env)
    expect(code).toBe(2)
    expect(stderr.trim().split("\n")).toHaveLength(1)
    expect(stderr).toContain(message)
  })

  test.each(RUNTIMES)("under %s, starts with the proxy on its own port, says where, and answers the API", async (_, command) => {
    if (command === NODE_BUNDLE) await buildNodeBundle()
    await using origin = startFreshOrigin()
    // The admin listener and its token from the environment.
    const env = { CACHING_PROXY_ADMIN_PORT: "0", CACHING_PROXY_ADMIN_TOKEN: TOKEN }
    await using proxy = await startCliProxy(command, origin.url, ["--quiet"], env)
    const admin = (path: string, init: RequestInit = {}) =>
      fetch(proxy.adminUrl + path, { ...init, headers: { authorization: `Bearer ${TOKEN}`, ...init.headers } })
    expect(proxy.adminUrl).not.toBe(proxy.url)
    expect(await text(admin("/healthz"))).toEqual({ status: 200, body: "ok\n" })
    // The proxy's port knows nothing of admin routes: they go to the origin like any path.
    expect(await text(fetch(`${proxy.url}healthz`))).toEqual({ status: 200, body: "v1" })
    expect((await json<EntriesPage>(admin("/api/entries"))).entries.map((entry) => entry.path)).toEqual(["/healthz"])
    expect((await json<Entry>(admin("/api/entry?url=/healthz"))).variants).toHaveLength(1)
    expect((await fetch(`${proxy.adminUrl}/`)).headers.get("content-security-policy")).toContain("default-src 'none'")
    expect(
      await json(admin("/api/purge", { method: "POST", headers: { "content-type": "application/json" }, body: '{"url": "/healthz"}' })),
    ).toEqual({ purged: 1 })
    expect(await text(fetch(`${proxy.url}healthz`))).toEqual({ status: 200, body: "v2" })
  })

  test("with a token, every request but the page and the probes needs it as a bearer token, else 401", async () => {
    await using origin = startFreshOrigin()
    await using proxy = await startAdminProxy({ origin: origin.url, admin: { port: 0, host: "127.0.0.1", token: TOKEN } })
    expect(await text(proxy.admin("/api/stats"))).toMatchObject({ status: 200 })
    for (const authorization of [undefined, "Bearer wrong", `Bearer ${TOKEN}x`, `Basic ${btoa(`u:${TOKEN}`)}`, TOKEN]) {
      const res = await fetch(`${proxy.adminUrl}/api/stats`, { headers: authorization ? { authorization } : {} })
      expect(res.status).toBe(401)
      expect(res.headers.get("www-authenticate")).toStartWith("Bearer")
      expect(await res.text()).toBe("this admin listener needs Authorization: Bearer <its --admin-token>\n")
    }
  })

  test("with a token, a plain HTTP probe gets /healthz and /readyz without it; every other route still asks for it", async () => {
    await using origin = startFreshOrigin()
    await using proxy = await startAdminProxy({ origin: origin.url, admin: { port: 0, host: "0.0.0.0", token: TOKEN } })
    expect(await text(fetch(`${proxy.adminUrl}/healthz`))).toEqual({ status: 200, body: "ok\n" })
    expect(await text(fetch(`${proxy.adminUrl}/readyz`))).toEqual({ status: 200, body: "ready\n" })
    for (const path of ["/metrics", "/api/entries", "/api/entry?url=/a", "/api/stats"]) {
      expect((await fetch(proxy.adminUrl + path)).status).toBe(401)
    }
    const purge = await fetch(`${proxy.adminUrl}/api/purge`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: '{"url": "/a"}',
    })
    expect(purge.status).toBe(401)
  })

  test("a route asked with a method it does not answer gets 405 and Allow", async () => {
    await using origin = startFreshOrigin()
    await using proxy = await startAdminProxy({ origin: origin.url, admin: { port: 0, host: "127.0.0.1", token: TOKEN } })
    const purge = await proxy.admin("/api/purge")
    expect(purge.status).toBe(405)
    expect(purge.headers.get("allow")).toBe("POST")
    expect(await purge.text()).toBe("/api/purge answers POST only\n")
    for (const path of ["/", "/healthz", "/readyz", "/metrics", "/api/entries", "/api/entry", "/api/stats"]) {
      const res = await proxy.admin(path, { method: path === "/healthz" ? "DELETE" : "POST" })
      expect([path, res.status, res.headers.get("allow")]).toEqual([path, 405, "GET, HEAD"])
    }
  })

  test("without a token (loopback), requests need none", async () => {
    await using origin = startFreshOrigin()
    await using proxy = await startAdminProxy({ origin: origin.url })
    expect(await text(fetch(`${proxy.adminUrl}/healthz`))).toEqual({ status: 200, body: "ok\n" })
    expect((await fetch(`${proxy.adminUrl}/nothing-here`)).status).toBe(404)
  })
})

describe("readiness", () => {
  test("ready while the cache directory can be written", async () => {
    await using origin = startFreshOrigin()
    await using proxy = await startAdminProxy({ origin: origin.url })
    expect(await text(proxy.admin("/readyz"))).toEqual({ status: 200, body: "ready\n" })
    rmSync(proxy.cacheDir, { recursive: true })
    const gone = await text(proxy.admin("/readyz"))
    expect(gone).toEqual({ status: 503, body: expect.stringMatching(/^not ready: the cache directory .* cannot be written \(ENOENT/) })
  })

  test.skipIf(FAST_RUN)("503 with the reason while Redis is down, ready again once it is back", async () => {
    await using redis = await startRedis()
    await using origin = startFreshOrigin()
    await using proxy = await startAdminProxy({ origin: origin.url, store: { kind: "redis", target: { single: redis.url } } })
    expect(await text(proxy.admin("/readyz"))).toEqual({ status: 200, body: "ready\n" })
    await redis.kill()
    const down = await text(proxy.admin("/readyz"))
    expect(down.status).toBe(503)
    expect(down.body).toMatch(/^not ready: Redis is unreachable \(the connection is (connecting|reconnecting|close|end)\)\n$/)
    expect(await text(proxy.admin("/healthz"))).toEqual({ status: 200, body: "ok\n" })
    await redis.start()
    for (let tries = 0; (await proxy.admin("/readyz")).status !== 200; tries++) {
      if (tries > 100) throw new Error("still not ready 5 s after Redis came back")
      await Bun.sleep(50)
    }
  })
})

// ───────────────────────────── the API ─────────────────────────────

describe("the JSON API", () => {
  test("entries: what is stored, each URL with its variants summed up, page by page", async () => {
    await using origin = startFreshOrigin((path): Record<string, string> => (path === "/b" ? { vary: "accept-language" } : {}))
    await using proxy = await startAdminProxy({ origin: origin.url })
    for (const path of ["/a", "/a", "/a", "/c", "/d"]) await through(proxy.url + path)
    await through(`${proxy.url}/b`, { "accept-language": "en" })
    await through(`${proxy.url}/b`, { "accept-language": "fr" })

    const { entries, cursor } = await json<EntriesPage>(proxy.admin("/api/entries"))
    expect(cursor).toBeNull()
    expect(entries.map((entry) => entry.path).sort()).toEqual(["/a", "/b", "/c", "/d"])
    const a = entries.find((entry) => entry.path === "/a")!
    expect(a).toMatchObject({ url: `${origin.url}/a`, method: "GET", status: 200, variants: 1, bytes: 2, hits: 2, fresh: true, tags: [] })
    expect(a.tiers).toEqual(["memory", "file"])
    expect(a.ttlSeconds).toBeGreaterThan(55)
    expect(a.ttlSeconds).toBeLessThanOrEqual(60)
    expect(a.ageSeconds).toBeLessThan(5)
    expect(Math.abs(a.storedAt - Date.now())).toBeLessThan(5000)
    expect(entries.find((entry) => entry.path === "/b")).toMatchObject({ variants: 2, bytes: 4, hits: 0 })

    // Pages: every URL once, in an order that holds between pages.
    const first = await json<EntriesPage>(proxy.admin("/api/entries?limit=3"))
    expect(first.entries).toHaveLength(3)
    const second = await json<EntriesPage>(proxy.admin(`/api/entries?limit=3&cursor=${encodeURIComponent(first.cursor!)}`))
    expect(second.cursor).toBeNull()
    const paged = [...first.entries, ...second.entries].map((entry) => entry.path)
    expect(paged.sort()).toEqual(["/a", "/b", "/c", "/d"])

    const underB = await json<EntriesPage>(proxy.admin("/api/entries?prefix=/b"))
    expect(underB.entries.map((entry) => entry.path)).toEqual(["/b"])
    expect(await text(proxy.admin("/api/entries?limit=lots"))).toEqual({
      status: 400,
      body: 'limit must be a whole number from 1 to 1000 (got "lots")\n',
    })
    expect((await proxy.admin("/api/entries?prefix=http://elsewhere.example/")).status).toBe(400)
  })

  test("entries by prefix on the file store read only the entries under it, on a fresh start and after a restart", async () => {
    await using origin = startFreshOrigin()
    using dir = ownedDir()
    const cacheDir = dir.path
    for (const run of ["first", "restarted"]) {
      await using proxy = await startAdminProxy({ origin: origin.url, cacheDir })
      for (const path of [`/a/${run}`, `/b/${run}`]) await through(proxy.url + path)
      // Every meta but those under /a/ is made unreadable: a listing that read them would find them broken.
      const underB = metaFiles(cacheDir).filter((file) => !readFileSync(file.path, "utf8").includes("/a/"))
      for (const file of underB) writeFileSync(file.path, "not json")
      const listed = await json<EntriesPage>(proxy.admin("/api/entries?prefix=/a/"))
      expect(listed.entries.map((entry) => entry.path).sort()).toEqual(run === "first" ? ["/a/first"] : ["/a/first", "/a/restarted"])
      expect(proxy.warnings).toEqual([])
      expect(metaFiles(cacheDir).filter((file) => readFileSync(file.path, "utf8") === "not json")).toHaveLength(underB.length)
      // Removed, as a reader finding them broken would: the next start-up has nothing to report.
      for (const file of underB) rmSync(file.path)
    }
  })

  test("entry: one URL with each variant's stored headers", async () => {
    await using origin = startFreshOrigin(() => ({ vary: "accept-language", "x-origin-note": "kept" }))
    await using proxy = await startAdminProxy({ origin: origin.url })
    await through(`${proxy.url}/page?x=1`, { "accept-language": "en" })
    await through(`${proxy.url}/page?x=1`, { "accept-language": "fr" })

    const entry = await json<Entry>(proxy.admin(`/api/entry?url=${encodeURIComponent("/page?x=1")}`))
    expect(entry).toMatchObject({ path: "/page?x=1", url: `${origin.url}/page?x=1`, status: 200 })
    expect(entry.variants.map((variant) => variant.vary)).toEqual(
      expect.arrayContaining([{ "accept-language": "en" }, { "accept-language": "fr" }]),
    )
    for (const variant of entry.variants) {
      expect(variant.headers).toContainEqual(["x-origin-note", "kept"])
      expect(variant.headers).toContainEqual(["cache-control", "max-age=60"])
    }
    // The origin's full URL names it too.
    expect((await json<Entry>(proxy.admin(`/api/entry?url=${encodeURIComponent(`${origin.url}/page?x=1`)}`))).variants).toHaveLength(2)
    expect(await text(proxy.admin("/api/entry?url=/never-stored"))).toEqual({ status: 404, body: "nothing is stored for this URL\n" })
    expect((await text(proxy.admin("/api/entry"))).status).toBe(400)
  })

  test("stats: entries and bytes per tier, with each tier's bound", async () => {
    await using origin = startFreshOrigin()
    await using proxy = await startAdminProxy({ origin: origin.url, memorySize: 1 << 20, maxSize: 8 << 20 })
    await through(`${proxy.url}/one`)
    const { tiers } = await json<Stats>(proxy.admin("/api/stats"))
    expect(tiers).toMatchObject([
      { tier: "memory", entries: 1, bytes: expect.any(Number), maxBytes: 1 << 20 },
      { tier: "file", entries: 1, bytes: expect.any(Number), maxBytes: 8 << 20 },
    ])
  })
})

describe("traffic", () => {
  test("/metrics scraped at once after the start shows no NaN (a gauge with no sample yet is left out)", async () => {
    await using origin = startFreshOrigin()
    await using proxy = await startAdminProxy({ origin: origin.url })
    const scrape = await text(proxy.admin("/metrics"))
    expect(scrape.status).toBe(200)
    expect(scrape.body).toContain("process_resident_memory_bytes")
    expect(scrape.body.split("\n").filter((line) => /\bNaN$/i.test(line))).toEqual([])
    // Left out: under Bun they walk the heap, a scrape's cost growing with what the cache holds.
    expect(scrape.body).not.toContain("nodejs_heap_space_size")
  })

  test("/metrics counts requests by cache outcome, and purges; the chart's buckets hold the requests", async () => {
    await using origin = startFreshOrigin()
    await using proxy = await startAdminProxy({ origin: origin.url })
    for (const path of ["/x", "/x", "/x", "/y", "/y"]) await through(proxy.url + path)
    await purge(proxy, { prefix: "/" })
    const res = await proxy.admin("/metrics")
    expect(res.headers.get("content-type")).toStartWith("text/plain; version=0.0.4")
    const metrics = await res.text()
    expect(metrics).toContain('caching_proxy_requests_total{cache="hit",status="2xx"} 3\n')
    expect(metrics).toContain('caching_proxy_requests_total{cache="miss",status="2xx"} 2\n')
    expect(metrics).toContain("caching_proxy_purges_total 1\n")
    expect(metrics).toContain("caching_proxy_purged_entries_total 2\n")
    const { traffic } = await json<Stats & { traffic: { bars: { at: number; requests: number; hits: number }[] } }>(
      proxy.admin("/api/stats"),
    )
    expect(traffic.bars).toHaveLength(60)
    expect(traffic.bars.reduce((sum, bar) => sum + bar.requests, 0)).toBe(5)
    expect(traffic.bars.reduce((sum, bar) => sum + bar.hits, 0)).toBe(3)
    expect(traffic.bars.at(-1)!.at).toBeLessThanOrEqual(Date.now())
  })
})

describe("purge", () => {
  test("by URL: every variant goes, and the next request asks the origin", async () => {
    await using origin = startFreshOrigin(() => ({ vary: "accept-language" }))
    await using proxy = await startAdminProxy({ origin: origin.url })
    for (const language of ["en", "fr"]) await through(`${proxy.url}/p`, { "accept-language": language })
    await through(`${proxy.url}/other`)
    expect(await purge(proxy, { url: "/p" })).toEqual({ status: 200, body: { purged: 1 } })
    expect(await purge(proxy, { url: "/p" })).toEqual({ status: 200, body: { purged: 0 } })
    for (const language of ["en", "fr"]) expect((await through(`${proxy.url}/p`, { "accept-language": language })).xCache).toBe("MISS")
    expect(origin.count("/p")).toBe(4)
    expect((await through(`${proxy.url}/other`)).xCache).toBe("HIT")
  })

  test("by prefix: the URLs under it go, others stay", async () => {
    await using origin = startFreshOrigin()
    await using proxy = await startAdminProxy({ origin: origin.url })
    for (const path of ["/users/1", "/users/2", "/users", "/teams/1"]) await through(proxy.url + path)
    expect(await purge(proxy, { prefix: "/users/" })).toEqual({ status: 200, body: { purged: 2 } })
    expect((await through(`${proxy.url}/users/1`)).xCache).toBe("MISS")
    expect((await through(`${proxy.url}/users/2`)).xCache).toBe("MISS")
    expect((await through(`${proxy.url}/users`)).xCache).toBe("HIT")
    expect((await through(`${proxy.url}/teams/1`)).xCache).toBe("HIT")
  })

  test("by prefix, over more URLs than one listing page holds: every one goes", async () => {
    await using origin = startFreshOrigin()
    await using proxy = await startAdminProxy({ origin: origin.url })
    const paths = Array.from({ length: 250 }, (_, i) => `/bulk/${i}`)
    for (const path of paths) await through(proxy.url + path)
    expect(await purge(proxy, { prefix: "/bulk/" })).toEqual({ status: 200, body: { purged: 250 } })
    expect((await json<EntriesPage>(proxy.admin("/api/entries?prefix=/bulk/"))).entries).toEqual([])
  })

  test("soft: the entry turns stale and the next request revalidates it (a 304 keeps the stored body)", async () => {
    await using origin = startRevalidatingOrigin()
    await using proxy = await startAdminProxy({ origin: origin.url })
    await through(`${proxy.url}/doc`)
    expect(await purge(proxy, { url: "/doc", soft: true })).toEqual({ status: 200, body: { purged: 1 } })
    const listed = await json<Entry>(proxy.admin("/api/entry?url=/doc"))
    expect(listed.fresh).toBe(false)
    const after = await through(`${proxy.url}/doc`)
    expect(after.body).toBe("the body")
    expect(after.headers.get("cache-status")).toContain("fwd=stale; fwd-status=304")
    expect(origin.requests.at(-1)?.headers.get("if-none-match")).toBe('"v1"')
    expect(origin.count("/doc")).toBe(2)
    // Fresh again for every client after that one revalidation.
    expect((await through(`${proxy.url}/doc`)).xCache).toBe("HIT")
    expect(origin.count("/doc")).toBe(2)
  })

  test("soft: a client's max-stale does not take the purged entry before it is revalidated", async () => {
    await using origin = startRevalidatingOrigin()
    await using proxy = await startAdminProxy({ origin: origin.url })
    await through(`${proxy.url}/doc`)
    expect(await purge(proxy, { url: "/doc", soft: true })).toEqual({ status: 200, body: { purged: 1 } })
    const after = await through(`${proxy.url}/doc`, { "cache-control": "max-stale=3600" })
    expect(after.headers.get("cache-status")).toContain("fwd=stale; fwd-status=304")
    expect(origin.count("/doc")).toBe(2)
    // Revalidated: an entry like any other again, max-stale included.
    expect((await through(`${proxy.url}/doc`, { "cache-control": "max-stale=3600" })).xCache).toBe("HIT")
    expect(origin.count("/doc")).toBe(2)
  })

  test("soft, under stale-while-revalidate: the stale entry answers at once while it is refreshed", async () => {
    await using origin = startAdminOrigin(
      (_, n) => new Response(`v${n}`, { headers: { "cache-control": "max-age=60, stale-while-revalidate=30" } }),
    )
    await using proxy = await startAdminProxy({ origin: origin.url })
    await through(`${proxy.url}/feed`)
    expect(await purge(proxy, { prefix: "/feed", soft: true })).toEqual({ status: 200, body: { purged: 1 } })
    const served = await through(`${proxy.url}/feed`)
    expect(served.body).toBe("v1")
    expect(served.headers.get("cache-status")).toContain("detail=stale-while-revalidate")
    for (let tries = 0; (await through(`${proxy.url}/feed`)).body !== "v2"; tries++) {
      if (tries > 100) throw new Error("the background refresh never landed")
      await Bun.sleep(20)
    }
  })

  test.each([
    ["not json", "the body must be JSON, such as"],
    [[1, 2], "the body must be a JSON object"],
    [{ url: "/a", extra: 1 }, 'unknown field "extra" (expected url, prefix or tag, and soft)'],
    [{ url: "/a", tag: "t" }, "give exactly one of url, prefix or tag"],
    [{}, "give exactly one of url, prefix or tag"],
    [{ url: 5 }, "url must be a non-empty string"],
    [{ tag: "t", soft: "yes" }, "soft must be true or false"],
    [{ url: "https://elsewhere.example/a" }, "url must be a path (/…) or a URL under http://127.0.0.1:"],
  ])("a bad request %j: 400 with one line", async (body, reason) => {
    await using origin = startFreshOrigin()
    await using proxy = await startAdminProxy({ origin: origin.url })
    const answer = await purge(proxy, body)
    expect(answer.status).toBe(400)
    expect(String(answer.body)).toStartWith(reason)
    expect(String(answer.body).trimEnd().split("\n")).toHaveLength(1)
  })
})

describe("tags", () => {
  const TAGGED: Record<string, Record<string, string>> = {
    "/p/1": { "surrogate-key": "product-1  all-products", "cache-tag": "page" },
    "/p/2": { "surrogate-key": "product-2 all-products" },
    "/home": { "cache-tag": "page, product-1" },
    "/plain": {},
  }

  test("Surrogate-Key and Cache-Tag give an entry's tags; purge by tag removes those entries only", async () => {
    await using origin = startFreshOrigin((path) => TAGGED[path] ?? {})
    await using proxy = await startAdminProxy({ origin: origin.url })
    for (const path of Object.keys(TAGGED)) await through(proxy.url + path)
    const { tags } = await json<Entry>(proxy.admin("/api/entry?url=/p/1"))
    expect(tags.sort()).toEqual(["all-products", "page", "product-1"])

    expect(await purge(proxy, { tag: "product-1" })).toEqual({ status: 200, body: { purged: 2 } })
    const after = Object.fromEntries(
      await Promise.all(Object.keys(TAGGED).map(async (path) => [path, (await through(proxy.url + path)).xCache])),
    )
    expect(after).toEqual({ "/p/1": "MISS", "/p/2": "HIT", "/home": "MISS", "/plain": "HIT" })
    expect(await purge(proxy, { tag: "all-products", soft: true })).toEqual({ status: 200, body: { purged: 2 } })
    expect(await purge(proxy, { tag: "no-such-tag" })).toEqual({ status: 200, body: { purged: 0 } })
  })

  test("the tag fields are kept from clients, on a miss and on a hit, unless --keep-tag-headers", async () => {
    await using origin = startFreshOrigin((path) => TAGGED[path] ?? {})
    await using proxy = await startAdminProxy({ origin: origin.url })
    for (const xCache of ["MISS", "HIT"]) {
      const got = await through(`${proxy.url}/p/1`)
      expect(got.xCache).toBe(xCache)
      expect(got.headers.has("surrogate-key")).toBe(false)
      expect(got.headers.has("cache-tag")).toBe(false)
    }
    await using keeping = await startAdminProxy({ origin: origin.url, keepTagHeaders: true })
    for (const xCache of ["MISS", "HIT"]) {
      const got = await through(`${keeping.url}/p/1`)
      expect(got.xCache).toBe(xCache)
      expect(got.headers.get("surrogate-key")).toBe("product-1  all-products")
      expect(got.headers.get("cache-tag")).toBe("page")
    }
  })

  test("a 304 without tag fields keeps the entry's tags", async () => {
    await using origin = startAdminOrigin((req) =>
      req.headers.has("if-none-match")
        ? new Response(null, { status: 304, headers: { etag: '"1"', "cache-control": "max-age=60" } })
        : new Response("x", { headers: { etag: '"1"', "cache-control": "max-age=60", "surrogate-key": "kept" } }),
    )
    await using proxy = await startAdminProxy({ origin: origin.url })
    await through(`${proxy.url}/t`)
    await purge(proxy, { url: "/t", soft: true })
    await through(`${proxy.url}/t`)
    expect(origin.count("/t")).toBe(2)
    expect((await json<Entry>(proxy.admin("/api/entry?url=/t"))).tags).toEqual(["kept"])
    expect(await purge(proxy, { tag: "kept" })).toEqual({ status: 200, body: { purged: 1 } })
  })
})

describe("purge on a shared Redis store", () => {
  test.skipIf(FAST_RUN)("reaches every proxy on it, memory tiers included", async () => {
    await using redis = await startRedis()
    await using origin = startFreshOrigin((path): Record<string, string> => (path === "/tagged" ? { "surrogate-key": "t" } : {}))
    const store = { kind: "redis" as const, target: { single: redis.url } }
    await using a = await startAdminProxy({ origin: origin.url, store })
    await using b = await startAdminProxy({ origin: origin.url, store })
    for (const path of ["/plain", "/tagged"]) {
      await through(a.url + path)
      expect((await through(b.url + path)).xCache).toBe("HIT") // now in b's memory tier too
    }
    expect(await purge(a, { url: "/plain" })).toEqual({ status: 200, body: { purged: 1 } })
    expect(await purge(a, { tag: "t" })).toEqual({ status: 200, body: { purged: 1 } })
    // The change message reaches b a moment after the purge answers; until then b's memory answers.
    const inB = async (path: string) => (await fetch(b.url + path, { headers: { "cache-control": "only-if-cached" } })).status === 200
    for (let tries = 0; (await inB("/plain")) || (await inB("/tagged")); tries++) {
      if (tries > 100) throw new Error("b's memory tier still holds the purged entries")
      await Bun.sleep(20)
    }
    for (const path of ["/plain", "/tagged"]) expect((await through(b.url + path)).xCache).toBe("MISS")
    expect(origin.count("/plain")).toBe(2)
    expect(origin.count("/tagged")).toBe(2)

    // Soft: b's memory tier drops its copy too, and b's next request goes to the origin to validate.
    expect((await through(`${b.url}/plain`)).xCache).toBe("HIT")
    expect(await purge(a, { url: "/plain", soft: true })).toEqual({ status: 200, body: { purged: 1 } })
    for (let tries = 0; (await json<Entry>(b.admin("/api/entry?url=/plain"))).fresh; tries++) {
      if (tries > 100) throw new Error("b still sees the soft-purged entry as fresh")
      await Bun.sleep(20)
    }
    expect((await json<Entry>(b.admin("/api/entry?url=/plain"))).tiers).toEqual(["redis"])
    expect((await through(`${b.url}/plain`)).headers.get("cache-status")).toContain("fwd=stale")
    expect(origin.count("/plain")).toBe(3)
  })

  test.skipIf(FAST_RUN)("a purge by URL, prefix or tag reaches every memory tier even where Redis evicted the entry", async () => {
    await using redis = await startRedis()
    await using origin = startFreshOrigin((path): Record<string, string> => (path === "/tagged" ? { "surrogate-key": "t" } : {}))
    const store = { kind: "redis" as const, target: { single: redis.url } }
    await using a = await startAdminProxy({ origin: origin.url, store })
    await using b = await startAdminProxy({ origin: origin.url, store })
    const paths = ["/plain", "/p/x", "/tagged"]
    for (const path of paths) {
      await through(a.url + path)
      expect((await through(b.url + path)).xCache).toBe("HIT") // in both memory tiers now
    }
    // Redis lets every entry go (maxmemory would), behind the proxies' back: no message.
    const cli = (...args: string[]) =>
      Bun.spawnSync(["redis-cli", "-p", String(redis.port), ...args])
        .stdout.toString()
        .trim()
    for (const key of cli("--scan", "--pattern", "*:e").split("\n")) expect(cli("del", key)).toBe("1")
    for (const target of [{ url: "/plain" }, { prefix: "/p/" }, { tag: "t" }])
      expect(await purge(a, target)).toEqual({ status: 200, body: { purged: 0 } })
    const inMemory = async (proxy: { url: string }, path: string) =>
      (await fetch(proxy.url + path, { headers: { "cache-control": "only-if-cached" } })).status === 200
    for (let tries = 0; ; tries++) {
      const held = (await Promise.all([a, b].flatMap((proxy) => paths.map((path) => inMemory(proxy, path))))).some(Boolean)
      if (!held) break
      if (tries > 100) throw new Error("a memory tier still holds a purged entry")
      await Bun.sleep(20)
    }
  })

  test.skipIf(FAST_RUN)(
    "a purge by prefix given as the bare origin URL reaches that origin's entries only, not another's beside it",
    async () => {
      await using redis = await startRedis()
      await using origin = startFreshOrigin()
      const store = { kind: "redis" as const, target: { single: redis.url } }
      await using v = await startAdminProxy({ origin: `${origin.url}/v`, store })
      await using v2 = await startAdminProxy({ origin: `${origin.url}/v2`, store })
      await through(`${v.url}/a`)
      await through(`${v2.url}/a`)
      expect(await purge(v, { prefix: `${origin.url}/v` })).toEqual({ status: 200, body: { purged: 1 } })
      expect((await through(`${v2.url}/a`)).xCache).toBe("HIT")
      expect((await through(`${v.url}/a`)).xCache).toBe("MISS")
    },
  )
})
