/**
 * The cache's fields through real HTTP: Cache-Status (RFC 9211), targeted cache control
 * (RFC 9213), HTTP dates (RFC 9110 §5.6.7), Vary on Accept-Encoding and Accept-Language
 * (RFC 9110 §12.5), and the development overrides.
 */
import { afterEach, describe, expect, setSystemTime, test } from "bun:test"
import { join } from "node:path"
import {
  answer,
  CLI,
  freezeClock,
  get,
  ownedDir,
  runCli,
  startCli,
  startDatedOrigin,
  startOrigin,
  startProxy,
  startRawOrigin,
  TEST_OPTIONS,
} from "../proxy/test.fixture.ts"

// Every test starts on the real clock, whatever the one before did with it.
afterEach(() => setSystemTime())

describe("RFC 9211 Cache-Status", () => {
  test("§2.1-§2.5: a stored miss (fwd, fwd-status, stored), then a hit with its ttl", async () => {
    freezeClock()
    await using origin = startDatedOrigin({ "cache-control": "max-age=60" })
    await using proxy = await startProxy({ origin: origin.url })
    expect(await answer(`${proxy.url}cs`)).toMatchObject({
      xCache: "MISS",
      cacheStatus: "caching-proxy; fwd=uri-miss; fwd-status=200; stored",
    })
    setSystemTime(Date.now() + 10_000)
    expect(await answer(`${proxy.url}cs`)).toMatchObject({ xCache: "HIT", cacheStatus: "caching-proxy; hit; ttl=50" })
  })

  test("§2.2, §2.3: a stale entry revalidated by a 304 is fwd=stale with fwd-status=304 and X-Cache HIT", async () => {
    freezeClock()
    await using origin = startOrigin((_, n) =>
      n === 1
        ? new Response("v1", { headers: { date: new Date().toUTCString(), etag: '"v1"', "cache-control": "max-age=60" } })
        : new Response(null, { status: 304, headers: { date: new Date().toUTCString(), etag: '"v1"', "cache-control": "max-age=60" } }),
    )
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}cs`)
    setSystemTime(Date.now() + 61_000)
    expect(await answer(`${proxy.url}cs`)).toMatchObject({
      xCache: "HIT",
      cacheStatus: "caching-proxy; hit; fwd=stale; fwd-status=304; ttl=60",
    })
  })

  test("§2.2: a stale entry replaced by a 200 is fwd=stale with X-Cache MISS", async () => {
    freezeClock()
    await using origin = startDatedOrigin({ "cache-control": "max-age=60" })
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}cs`)
    setSystemTime(Date.now() + 61_000)
    expect(await answer(`${proxy.url}cs`)).toMatchObject({
      xCache: "MISS",
      cacheStatus: "caching-proxy; fwd=stale; fwd-status=200; stored",
    })
  })

  // The one-byte memory tier holds nothing: the variants on disk must count as stored too.
  test.each([
    ["the default memory tier", TEST_OPTIONS.memorySize],
    ["a one-byte memory tier", 1],
  ])("§2.2: fwd=vary-miss when the URL has stored variants but none matches; fwd=uri-miss when it has none (%s)", async (_, memorySize) => {
    freezeClock()
    await using origin = startDatedOrigin({ vary: "Accept-Language", "cache-control": "max-age=60" })
    await using proxy = await startProxy({ origin: origin.url, memorySize })
    expect(await answer(`${proxy.url}cs`, { "accept-language": "en" })).toMatchObject({
      xCache: "MISS",
      cacheStatus: "caching-proxy; fwd=uri-miss; fwd-status=200; stored",
    })
    expect(await answer(`${proxy.url}cs`, { "accept-language": "fr" })).toMatchObject({
      xCache: "MISS",
      cacheStatus: "caching-proxy; fwd=vary-miss; fwd-status=200; stored",
    })
    expect(await answer(`${proxy.url}cs`, { "accept-language": "fr" })).toMatchObject({
      body: "v2",
      xCache: "HIT",
      cacheStatus: "caching-proxy; hit; ttl=60",
    })
    expect(await answer(`${proxy.url}cs`, { "accept-language": "en" })).toMatchObject({ body: "v1", xCache: "HIT" })
    expect(origin.count("/cs")).toBe(2)
    expect(proxy.warnings).toEqual([])
  })

  test("§2.2: fwd=request when the client's no-cache sent a fresh entry's request to the origin", async () => {
    await using origin = startOrigin(() => new Response("x", { headers: { "cache-control": "max-age=60" } }))
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}cs`)
    expect(await answer(`${proxy.url}cs`, { "cache-control": "no-cache" })).toMatchObject({
      xCache: "MISS",
      cacheStatus: "caching-proxy; fwd=request; fwd-status=200; stored",
    })
  })

  test("§2.8: a response that is not stored says why in detail", async () => {
    await using origin = startOrigin(() => new Response("x", { headers: { "cache-control": "no-store" } }))
    await using proxy = await startProxy({ origin: origin.url })
    expect(await answer(`${proxy.url}cs`)).toMatchObject({
      xCache: "MISS",
      cacheStatus: "caching-proxy; fwd=uri-miss; fwd-status=200; detail=no-store",
    })
  })

  test("every response carries Cache-Status: other methods, only-if-cached, an unreachable origin", async () => {
    await using origin = startOrigin(() => new Response("x"))
    await using proxy = await startProxy({ origin: origin.url })
    expect(await answer(`${proxy.url}cs`, {}, { method: "POST", body: "x" })).toMatchObject({
      xCache: "MISS",
      cacheStatus: expect.stringMatching(/^caching-proxy; fwd=method/),
    })
    expect(await answer(`${proxy.url}none`, { "cache-control": "only-if-cached" })).toMatchObject({
      xCache: "MISS",
      cacheStatus: expect.stringMatching(/^caching-proxy; /),
    })
    await origin[Symbol.asyncDispose]()
    expect(await answer(`${proxy.url}down`)).toMatchObject({ xCache: "MISS", cacheStatus: expect.stringMatching(/^caching-proxy; /) })
  })
})

describe("RFC 9213 targeted cache control", () => {
  /** An origin answering `v<n>` with an exact Date, an ETag and these headers. */
  const targetedOrigin = (headers: Record<string, string>) =>
    startOrigin((req, n) =>
      req.headers.get("if-none-match") === '"e"'
        ? new Response(null, { status: 304, headers: { etag: '"e"' } })
        : new Response(`v${n}`, { headers: { date: new Date().toUTCString(), etag: '"e"', ...headers } }),
    )

  test("§2.1: CDN-Cache-Control rules over Cache-Control, and both reach the client unchanged", async () => {
    await using origin = targetedOrigin({ "cache-control": "no-store", "cdn-cache-control": "max-age=60" })
    await using proxy = await startProxy({ origin: origin.url })
    for (const xCache of ["MISS", "HIT"]) {
      const res = await get(`${proxy.url}t`)
      expect([res.headers.get("x-cache"), await res.text()]).toEqual([xCache, "v1"])
      expect(res.headers.get("cache-control")).toBe("no-store")
      expect(res.headers.get("cdn-cache-control")).toBe("max-age=60")
    }
  })

  test.each([
    ["no-store", "max-age=60", "detail=no-store"],
    ["private", "max-age=60", "detail=private"],
    ['private="x-user", max-age=60', "max-age=60", "detail=private"],
    ["max-age=60", "no-store", "stored"],
    ["none", "no-store", "stored"], // §3: an unknown directive, so that the field is not empty
  ])("§2.1: CDN-Cache-Control %j with Cache-Control %j: %s", async (targeted, cacheControl, outcome) => {
    await using origin = targetedOrigin({ "cache-control": cacheControl, "cdn-cache-control": targeted })
    await using proxy = await startProxy({ origin: origin.url })
    expect((await answer(`${proxy.url}t`)).cacheStatus).toBe(`caching-proxy; fwd=uri-miss; fwd-status=200; ${outcome}`)
  })

  test("§2.1: with a targeted field, Cache-Control and Expires give no lifetime; s-maxage still rules over max-age", async () => {
    freezeClock()
    const expires = new Date(Date.now() + 3600_000).toUTCString()
    await using origin = startOrigin((req, n) => {
      const targeted = req.url.endsWith("/public") ? "public" : "max-age=10, s-maxage=100"
      return new Response(`v${n}`, {
        headers: { date: new Date().toUTCString(), "cache-control": "max-age=3600", expires, "cdn-cache-control": targeted },
      })
    })
    await using proxy = await startProxy({ origin: origin.url, ttlSeconds: 0 })
    expect((await answer(`${proxy.url}public`)).cacheStatus).toContain("detail=stale-on-arrival")
    await answer(`${proxy.url}smaxage`)
    setSystemTime(Date.now() + 99_000)
    expect((await answer(`${proxy.url}smaxage`)).xCache).toBe("HIT")
    setSystemTime(Date.now() + 2_000)
    expect((await answer(`${proxy.url}smaxage`)).xCache).toBe("MISS")
  })

  test("§2.1: no-cache and must-revalidate in the targeted field: validated before use, and never served stale", async () => {
    freezeClock()
    await using origin = targetedOrigin({ "cache-control": "max-age=3600", "cdn-cache-control": "no-cache" })
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}nc`)
    expect(await answer(`${proxy.url}nc`)).toMatchObject({ body: "v1", xCache: "HIT" })
    expect(origin.requests.map((r) => r.headers.get("if-none-match"))).toEqual([null, '"e"'])

    await using mustRevalidate = startDatedOrigin({ "cache-control": "max-age=3600", "cdn-cache-control": "max-age=1, must-revalidate" })
    await using proxy2 = await startProxy({ origin: mustRevalidate.url })
    expect((await answer(`${proxy2.url}mr`)).cacheStatus).toContain("stored")
    await mustRevalidate[Symbol.asyncDispose]()
    setSystemTime(Date.now() + 10_000)
    expect((await answer(`${proxy2.url}mr`)).status).toBe(504)
  })

  test("RFC 5861: stale-while-revalidate in the targeted field is honoured, the one in Cache-Control is not", async () => {
    freezeClock()
    await using origin = startOrigin(
      (req, n) =>
        new Response(`v${n}`, {
          headers: {
            date: new Date().toUTCString(),
            "cache-control": "max-age=1, stale-while-revalidate=600",
            "cdn-cache-control": req.url.endsWith("/swr") ? "max-age=1, stale-while-revalidate=60" : "max-age=1",
          },
        }),
    )
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}swr`)
    await answer(`${proxy.url}plain`)
    setSystemTime(Date.now() + 10_000)
    expect((await answer(`${proxy.url}swr`)).cacheStatus).toContain("detail=stale-while-revalidate")
    expect((await answer(`${proxy.url}plain`)).xCache).toBe("MISS")
  })

  test.each([
    ["Max-Age=60", "keys are lower-case"],
    ["max-age=60,", "a trailing comma"],
    ["max-age=60, &", "a member that is no key"],
    ["max-age=60;", "a parameter with no key"],
    ['private="x', "an unterminated string"],
    ["max-age=60 no-store", "two members with no comma"],
    ["max-age=1234567890123456", "an integer of 16 digits"],
    ["", "an empty field"],
  ])("§2.2: an invalid CDN-Cache-Control (%j: %s) is ignored as a whole: Cache-Control rules", async (targeted) => {
    await using origin = targetedOrigin({ "cache-control": "no-store", "cdn-cache-control": targeted })
    await using proxy = await startProxy({ origin: origin.url })
    const res = await get(`${proxy.url}t`)
    await res.text()
    expect(res.headers.get("cache-status")).toBe("caching-proxy; fwd=uri-miss; fwd-status=200; detail=no-store")
    expect(res.headers.get("cdn-cache-control")).toBe(targeted)
  })

  test.each([
    ["max-age=1.5", "a decimal"],
    ['max-age="60"', "a string"],
    ["max-age=?1", "a boolean"],
    ["max-age=-5", "a negative integer"],
  ])("§2.2: a max-age that is not a non-negative Integer (%j: %s) is not coerced: the response is stale", async (targeted) => {
    freezeClock()
    await using origin = targetedOrigin({ "cache-control": "max-age=3600", "cdn-cache-control": targeted })
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}t`)
    setSystemTime(Date.now() + 1_000)
    expect((await answer(`${proxy.url}t`)).cacheStatus).toMatch(/^caching-proxy; hit; fwd=stale; fwd-status=304; ttl=-\d+$/)
  })

  test("§2.2: parameters are ignored, ?0 turns a directive off, a later duplicate wins", async () => {
    await using origin = targetedOrigin({ "cache-control": "no-store", "cdn-cache-control": "max-age=1;a=b, no-store=?0, max-age=60" })
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}t`)
    expect(await answer(`${proxy.url}t`)).toMatchObject({ body: "v1", xCache: "HIT" })
  })

  test("§2.1: more specific fields from targetedCacheControl come first; a field not on the list changes nothing", async () => {
    const headers = {
      "cache-control": "max-age=60",
      "cdn-cache-control": "no-store",
      "cachingproxy-cache-control": "max-age=60",
      "other-cache-control": "private",
    }
    await using origin = targetedOrigin(headers)
    for (const [fields, outcome] of [
      [[], "detail=no-store"],
      [["CachingProxy-Cache-Control"], "stored"],
      [["Other-Cache-Control", "CachingProxy-Cache-Control"], "detail=private"],
      [["CDN-Cache-Control", "CachingProxy-Cache-Control"], "detail=no-store"],
      [["Absent-Cache-Control", "CachingProxy-Cache-Control"], "stored"],
    ] as const) {
      await using proxy = await startProxy({ origin: origin.url, targetedCacheControl: [...fields] })
      const res = await get(`${proxy.url}t`)
      await res.text()
      expect([fields, res.headers.get("cache-status")]).toEqual([fields, `caching-proxy; fwd=uri-miss; fwd-status=200; ${outcome}`])
      for (const [name, value] of Object.entries(headers)) expect(res.headers.get(name)).toBe(value)
    }
  })

  test("§2.1: an invalid more specific field falls through to CDN-Cache-Control", async () => {
    await using origin = targetedOrigin({
      "cdn-cache-control": "max-age=60",
      "cachingproxy-cache-control": "no-store,",
      "cache-control": "no-store",
    })
    await using proxy = await startProxy({ origin: origin.url, targetedCacheControl: ["CachingProxy-Cache-Control"] })
    expect((await answer(`${proxy.url}t`)).cacheStatus).toContain("stored")
  })

  test("--targeted-cache-control and CACHING_PROXY_TARGETED_CACHE_CONTROL set the list; a bad one is refused", async () => {
    await using origin = targetedOrigin({
      "cache-control": "no-store",
      "cdn-cache-control": "no-store",
      "mine-cache-control": "max-age=60",
    })
    using dir = ownedDir()
    // Two proxies at once: a cache directory each (one proxy per directory).
    const flags = ["--port", "0", "--origin", origin.url]
    const flag = ["--cache-dir", join(dir.path, "flag"), "--targeted-cache-control", "Mine-Cache-Control"]
    await using byFlag = await startCli([...CLI, ...flags, ...flag])
    await answer(`${byFlag.url}flag`)
    expect((await answer(`${byFlag.url}flag`)).xCache).toBe("HIT")
    const env = { CACHING_PROXY_TARGETED_CACHE_CONTROL: "Mine-Cache-Control" }
    await using byEnv = await startCli([...CLI, ...flags, "--cache-dir", join(dir.path, "env")], env)
    await answer(`${byEnv.url}env`)
    expect((await answer(`${byEnv.url}env`)).xCache).toBe("HIT")
    for (const bad of ["Cache-Control", "Mine-Cache-Control,,Other", "bad field"]) {
      const { code, stderr } = await runCli([...CLI, "--origin", origin.url, "--targeted-cache-control", bad])
      expect([bad, code, stderr.trim()]).toEqual([
        bad,
        2,
        `caching-proxy: --targeted-cache-control must be comma-separated field names other than Cache-Control (got "${bad}")`,
      ])
    }
    expect((await runCli([...CLI, "--help"])).stdout).toContain("--targeted-cache-control")
  })
})

describe("RFC 9110 §5.6.7 HTTP dates", () => {
  const LONG_DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
  const pad = (n: number) => String(n).padStart(2, "0")
  const timeOf = (d: Date) => `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`
  const monthOf = (d: Date) => d.toUTCString().slice(8, 11)
  /** The three forms HTTP allows, and forms `Date.parse` takes that HTTP does not, of one instant. */
  const forms = (ms: number) => {
    const d = new Date(ms)
    const imf = d.toUTCString() // "Wed, 02 Dec 2026 01:40:44 GMT"
    return {
      imf,
      imfOtherCase: imf.toLowerCase().replace("gmt", "GMT"),
      rfc850: `${LONG_DAYS[d.getUTCDay()]}, ${pad(d.getUTCDate())}-${monthOf(d)}-${pad(d.getUTCFullYear() % 100)} ${timeOf(d)} GMT`,
      asctime: `${imf.slice(0, 3)} ${monthOf(d)} ${String(d.getUTCDate()).padStart(2, " ")} ${timeOf(d)} ${d.getUTCFullYear()}`,
      utcZone: imf.replace("GMT", "UTC"),
      numericZone: imf.replace("GMT", "+0000"),
      noComma: imf.replace(",", ""),
      extraSpace: imf.replace(" ", "  "),
      oneDigitHour: imf.replace(/ \d(\d):/, " $1:"),
      iso: d.toISOString(),
      dashesInImf: imf.replace(/ (\w{3}) (\d{4})/, "-$1-$2"),
    }
  }
  const valid = ["imf", "imfOtherCase", "rfc850", "asctime"] as const
  const invalid = ["utcZone", "numericZone", "noComma", "extraSpace", "oneDigitHour", "iso", "dashesInImf"] as const

  test.each(valid)("an Expires in the %s form gives the response its lifetime", async (form) => {
    freezeClock()
    await using origin = startDatedOrigin({ expires: forms(Date.now() + 100_000)[form] })
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}d`)
    setSystemTime(Date.now() + 99_000)
    expect(await answer(`${proxy.url}d`)).toMatchObject({ body: "v1", xCache: "HIT" })
    setSystemTime(Date.now() + 2_000)
    expect(await answer(`${proxy.url}d`)).toMatchObject({ body: "v2", xCache: "MISS" })
  })

  test.each(invalid)("RFC 9111 §5.3: an Expires in the %s form, which Date.parse takes, is invalid: already expired", async (form) => {
    freezeClock()
    await using origin = startDatedOrigin({ expires: forms(Date.now() + 100_000)[form] })
    await using proxy = await startProxy({ origin: origin.url })
    expect((await answer(`${proxy.url}d`)).cacheStatus).toBe("caching-proxy; fwd=uri-miss; fwd-status=200; detail=stale-on-arrival")
    expect(await answer(`${proxy.url}d`)).toMatchObject({ body: "v2", xCache: "MISS" })
  })

  test("an out-of-range day, hour or minute is invalid; day and month names match in any case", async () => {
    freezeClock()
    const year = new Date().getUTCFullYear() + 1
    const expires: Record<string, string> = {
      "/valid": `tHU, 01 jAN ${year} 00:00:00 GMT`,
      "/feb30": `Fri, 30 Feb ${year} 00:00:00 GMT`,
      "/day32": `Fri, 32 Jan ${year} 00:00:00 GMT`,
      "/hour24": `Fri, 01 Jan ${year} 24:00:00 GMT`,
      "/minute60": `Fri, 01 Jan ${year} 00:60:00 GMT`,
      "/noday": `Xyz, 01 Jan ${year} 00:00:00 GMT`,
    }
    await using origin = startOrigin((req) => new Response("x", { headers: { expires: expires[new URL(req.url).pathname] ?? "" } }))
    await using proxy = await startProxy({ origin: origin.url })
    for (const path of Object.keys(expires)) {
      await answer(`${proxy.url}${path.slice(1)}`)
      expect([path, (await answer(`${proxy.url}${path.slice(1)}`)).xCache]).toEqual([path, path === "/valid" ? "HIT" : "MISS"])
    }
  })

  test("an RFC 850 two-digit year more than 50 years ahead is in the past century", async () => {
    freezeClock()
    const in60Years = forms(new Date().setUTCFullYear(new Date().getUTCFullYear() + 60)).rfc850 // read as 40 years ago
    const in40Years = forms(new Date().setUTCFullYear(new Date().getUTCFullYear() + 40)).rfc850
    await using origin = startOrigin(
      (req) => new Response("x", { headers: { date: new Date().toUTCString(), expires: req.url.endsWith("/60") ? in60Years : in40Years } }),
    )
    await using proxy = await startProxy({ origin: origin.url })
    expect((await answer(`${proxy.url}60`)).cacheStatus).toContain("detail=stale-on-arrival")
    await answer(`${proxy.url}40`)
    setSystemTime(Date.now() + 365 * 24 * 3600_000)
    expect((await answer(`${proxy.url}40`)).xCache).toBe("HIT")
  })

  test("RFC 9111 §4.2.3: a Date in a form HTTP does not allow counts for no age; a valid one does", async () => {
    freezeClock()
    const fiftySecondsAgo = forms(Date.now() - 50_000)
    await using origin = startOrigin(
      (req) =>
        new Response("x", {
          headers: { "cache-control": "max-age=60", date: req.url.endsWith("/bad") ? fiftySecondsAgo.utcZone : fiftySecondsAgo.rfc850 },
        }),
    )
    await using proxy = await startProxy({ origin: origin.url })
    expect((await answer(`${proxy.url}bad`)).age).toBeNull()
    expect((await answer(`${proxy.url}bad`)).age).toBe("0")
    await answer(`${proxy.url}good`)
    expect((await answer(`${proxy.url}good`)).age).toBe("50")
  })

  test("RFC 9111 §4.2.2: an invalid Last-Modified is no base for a heuristic lifetime and no validator", async () => {
    freezeClock()
    const longAgo = forms(Date.now() - 1000_000)
    await using origin = startOrigin(
      (req) =>
        new Response("x", {
          headers: { date: new Date().toUTCString(), "last-modified": req.url.endsWith("/bad") ? longAgo.numericZone : longAgo.asctime },
        }),
    )
    await using proxy = await startProxy({ origin: origin.url, ttlSeconds: 0 })
    expect((await answer(`${proxy.url}bad`)).cacheStatus).toContain("detail=stale-on-arrival")
    await answer(`${proxy.url}good`)
    setSystemTime(Date.now() + 99_000)
    expect((await answer(`${proxy.url}good`)).xCache).toBe("HIT")
    setSystemTime(Date.now() + 2_000)
    await answer(`${proxy.url}good`)
    expect(origin.requests.at(-1)?.headers.get("if-modified-since")).toBe(longAgo.asctime)
  })

  test("RFC 9110 §13.1.3: an If-Modified-Since that is not a valid HTTP-date is ignored", async () => {
    const lastModified = forms(Date.now() - 3600_000)
    await using origin = startOrigin(
      () => new Response("v1", { headers: { "last-modified": lastModified.imf, "cache-control": "max-age=60" } }),
    )
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}ims`)
    for (const form of valid)
      expect([form, (await get(`${proxy.url}ims`, { "if-modified-since": lastModified[form] })).status]).toEqual([form, 304])
    for (const form of invalid)
      expect([form, (await get(`${proxy.url}ims`, { "if-modified-since": lastModified[form] })).status]).toEqual([form, 200])
    expect(origin.count("/ims")).toBe(1)
  })
  test("RFC 9110 §6.6.1: a response stored without Date gets the time it was received, so Date plus Age is now on a hit", async () => {
    freezeClock()
    await using origin = await startRawOrigin((socket) =>
      socket.end("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nCache-Control: max-age=600\r\n\r\nhello"),
    )
    await using proxy = await startProxy({ origin: origin.url })
    expect((await answer(`${proxy.url}undated`)).xCache).toBe("MISS")
    setSystemTime(Date.now() + 2100)
    const hit = await get(`${proxy.url}undated`)
    const now = Date.now()
    expect(hit.headers.get("x-cache")).toBe("HIT")
    const date = Date.parse(hit.headers.get("date") ?? "")
    const age = Number(hit.headers.get("age"))
    expect(age).toBeGreaterThanOrEqual(2)
    // The runtime's own Date would be the moment the hit was sent: Date plus Age would pass now.
    expect(now - date).toBeGreaterThanOrEqual(2000)
    expect(Math.abs(date + age * 1000 - now)).toBeLessThanOrEqual(2000)
    expect(origin.requests()).toBe(1)
  })
})

describe("RFC 9110 §12.5 Vary on Accept-Encoding and Accept-Language", () => {
  /** An origin that varies on `name` and answers with the value it saw and its request count. */
  const varyingOn = (name: string) =>
    startOrigin((req, n) => new Response(`${req.headers.get(name)} #${n}`, { headers: { vary: name, "cache-control": "max-age=60" } }))

  test.each([
    ["accept-encoding", "gzip, br", "BR,gzip"],
    ["accept-encoding", "gzip;q=0.5, br", " br ,, GZIP ; Q=0.500"],
    ["accept-encoding", "br;q=1, zstd;q=1.000, identity;q=0", "identity;q=0,zstd,br"],
    ["accept-language", "en-US, fr;q=0.5", "fr;q=0.5, EN-us;q=1"],
    ["accept-language", "de;q=0.7, en;q=0.9", "en;q=0.9,de;q=0.7"],
  ])("%s: %j and %j are equivalent and share one variant", async (name, first, second) => {
    await using origin = varyingOn(name)
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}v`, { [name]: first })
    expect(await answer(`${proxy.url}v`, { [name]: second })).toMatchObject({ body: `${first} #1`, xCache: "HIT" })
    expect(origin.count("/v")).toBe(1)
  })

  test.each([
    ["accept-language", "en, fr", "fr, en"], // equal weights: the order is the preference (§12.5.4)
    ["accept-language", "en;q=0.5, fr", "en, fr;q=0.5"],
    ["accept-encoding", "gzip, br", "gzip, br;q=0"], // q=0: not acceptable
    ["accept-encoding", "gzip, br", "gzip"],
    ["accept-encoding", "gzip;q=2, br", "br, gzip;q=2"], // not a valid weight: compared as written
  ])("%s: %j and %j are different variants", async (name, first, second) => {
    await using origin = varyingOn(name)
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}v`, { [name]: first })
    expect(await answer(`${proxy.url}v`, { [name]: second })).toMatchObject({ body: `${second} #2`, xCache: "MISS" })
    expect(await answer(`${proxy.url}v`, { [name]: first })).toMatchObject({ body: `${first} #1`, xCache: "HIT" })
  })

  test("other varied fields are compared as sent, only white space around members normalised", async () => {
    await using origin = varyingOn("accept")
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}v`, { accept: "text/html, application/json" })
    expect((await answer(`${proxy.url}v`, { accept: "application/json, text/html" })).xCache).toBe("MISS")
    expect((await answer(`${proxy.url}v`, { accept: "text/html ,application/json" })).xCache).toBe("HIT")
  })
})

describe("overrides (development options)", () => {
  test.each([
    ["no-store", { "cache-control": "no-store" }],
    ["private", { "cache-control": "private" }],
    ["Set-Cookie", { "set-cookie": "id=1" }],
  ])("forceTtlSeconds stores a %s response and serves it until the forced lifetime ends", async (_, headers) => {
    freezeClock()
    await using origin = startDatedOrigin(headers)
    await using proxy = await startProxy({ origin: origin.url, forceTtlSeconds: 30 })
    await (await get(`${proxy.url}force`)).text()
    setSystemTime(Date.now() + 29_000)
    const hit = await get(`${proxy.url}force`)
    expect(await hit.text()).toBe("v1")
    expect(hit.headers.get("x-cache")).toBe("HIT")
    setSystemTime(Date.now() + 2_000)
    expect(await (await get(`${proxy.url}force`)).text()).toBe("v2")
    expect(origin.count("/force")).toBe(2)
  })

  test("ignoreQuery leaves the named parameters out of the key, but the origin still gets them", async () => {
    await using origin = startOrigin((req) => new Response(new URL(req.url).search, { headers: { "cache-control": "max-age=60" } }))
    await using proxy = await startProxy({ origin: origin.url, ignoreQuery: ["utm_source"] })
    expect(await (await get(`${proxy.url}a?utm_source=x&id=1`)).text()).toBe("?utm_source=x&id=1")
    const shared = await get(`${proxy.url}a?id=1&utm_source=y`)
    expect(shared.headers.get("x-cache")).toBe("HIT")
    expect(await shared.text()).toBe("?utm_source=x&id=1")
    const other = await get(`${proxy.url}a?id=2&utm_source=x`)
    await other.text()
    expect(other.headers.get("x-cache")).toBe("MISS")
    expect(origin.requests.map((r) => new URL(r.url).search)).toEqual(["?utm_source=x&id=1", "?id=2&utm_source=x"])
  })

  test("offline serves a stored entry, even stale, without contacting the origin, and 504 for anything else", async () => {
    freezeClock()
    await using origin = startDatedOrigin({ "cache-control": "max-age=60" })
    using dir = ownedDir()
    {
      await using online = await startProxy({ origin: origin.url, cacheDir: dir.path })
      await (await get(`${online.url}off`)).text()
    }
    setSystemTime(Date.now() + 3600_000)
    await using offline = await startProxy({ origin: origin.url, cacheDir: dir.path, offline: true })
    const stored = await get(`${offline.url}off`)
    expect(stored.status).toBe(200)
    expect(await stored.text()).toBe("v1")
    expect(stored.headers.get("x-cache")).toBe("HIT")
    const unknown = await get(`${offline.url}unknown`)
    expect(unknown.status).toBe(504)
    expect(unknown.headers.get("x-cache")).toBe("MISS")
    expect(origin.requests).toHaveLength(1)
  })
})
