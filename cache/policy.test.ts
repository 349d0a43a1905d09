/**
 * The cache's rules through real HTTP (RFC 9111 storing, freshness, Vary, validation, request
 * directives, invalidation; RFC 5861): a real origin on port 0, the real proxy on port 0,
 * assertions on what the client got and what the origin saw.
 */
import { afterEach, describe, expect, setSystemTime, test } from "bun:test"
import { createServer } from "node:net"
import { answer, freezeClock, get, startDatedOrigin, startOrigin, startProxy } from "../proxy/test.fixture.ts"

// Every test starts on the real clock, whatever the one before did with it.
afterEach(() => setSystemTime())

describe("RFC 9111 §3 storing responses", () => {
  test("§3: only a GET's response is stored; a POST's max-age is not reused", async () => {
    await using origin = startOrigin(() => new Response("made", { headers: { "cache-control": "max-age=60" } }))
    await using proxy = await startProxy({ origin: origin.url })
    for (let i = 0; i < 2; i++) {
      const res = await fetch(`${proxy.url}p`, { method: "POST", body: "x" })
      expect(await res.text()).toBe("made")
      expect(res.headers.get("x-cache")).toBe("MISS")
    }
    const afterPost = await get(`${proxy.url}p`)
    await afterPost.text()
    expect(afterPost.headers.get("x-cache")).toBe("MISS")
    expect(origin.count("/p")).toBe(3)
  })

  test("§3.3: a 206 is never stored", async () => {
    await using origin = startOrigin(
      () => new Response("0123", { status: 206, headers: { "content-range": "bytes 0-3/10", "cache-control": "max-age=60" } }),
    )
    await using proxy = await startProxy({ origin: origin.url })
    for (let i = 0; i < 2; i++) {
      const res = await get(`${proxy.url}r`, { range: "bytes=0-3" })
      expect(res.status).toBe(206)
      expect(await res.text()).toBe("0123")
    }
    expect(origin.count("/r")).toBe(2)
  })

  test("§4.3.4: a 304 to the client's own conditional request is never stored", async () => {
    await using origin = startOrigin((req) =>
      req.headers.has("if-none-match")
        ? new Response(null, { status: 304, headers: { etag: '"v1"', "cache-control": "max-age=60" } })
        : new Response("v1", { headers: { etag: '"v1"', "cache-control": "max-age=60" } }),
    )
    await using proxy = await startProxy({ origin: origin.url })
    expect((await get(`${proxy.url}c`, { "if-none-match": '"v1"' })).status).toBe(304)
    expect((await get(`${proxy.url}c`, { "if-none-match": '"v1"' })).status).toBe(304)
    const full = await get(`${proxy.url}c`)
    expect(full.status).toBe(200)
    expect(await full.text()).toBe("v1")
    expect(full.headers.get("x-cache")).toBe("MISS")
    expect(origin.count("/c")).toBe(3)
  })

  test.each(["no-store", "no-store, max-age=60", "private", "private, max-age=60", 'private="x-user", max-age=60'])(
    "§5.2.2.5, §5.2.2.7: a response with Cache-Control: %s is not stored",
    async (cacheControl) => {
      await using origin = startOrigin((_, n) => new Response(`v${n}`, { headers: { "cache-control": cacheControl } }))
      await using proxy = await startProxy({ origin: origin.url })
      expect(await (await get(`${proxy.url}s`)).text()).toBe("v1")
      const second = await get(`${proxy.url}s`)
      expect(await second.text()).toBe("v2")
      expect(second.headers.get("x-cache")).toBe("MISS")
      expect(origin.count("/s")).toBe(2)
    },
  )

  test.each([
    ["max-age=60", 2],
    ["public, max-age=60", 1],
    ["s-maxage=60", 1],
    ["max-age=60, must-revalidate", 1],
  ])(
    "§3.5: a response to a request with Authorization and Cache-Control: %s reaches the origin %d time(s) in two requests",
    async (cacheControl, expected) => {
      await using origin = startOrigin(() => new Response("secret", { headers: { "cache-control": cacheControl } }))
      await using proxy = await startProxy({ origin: origin.url })
      await (await get(`${proxy.url}auth`, { authorization: "Bearer t" })).text()
      const second = await get(`${proxy.url}auth`, { authorization: "Bearer t" })
      expect(await second.text()).toBe("secret")
      expect(second.headers.get("x-cache")).toBe(expected === 1 ? "HIT" : "MISS")
      expect(origin.count("/auth")).toBe(expected)
    },
  )

  test("§3 (deviation): a Set-Cookie response is not stored by default, but is with shareCookies", async () => {
    await using origin = startOrigin(() => new Response("x", { headers: { "cache-control": "max-age=60", "set-cookie": "id=1" } }))
    await using strict = await startProxy({ origin: origin.url })
    await (await get(`${strict.url}cookie`)).text()
    const notStored = await get(`${strict.url}cookie`)
    expect(notStored.headers.get("x-cache")).toBe("MISS")
    expect(origin.count("/cookie")).toBe(2)

    await using sharing = await startProxy({ origin: origin.url, shareCookies: true })
    await (await get(`${sharing.url}cookie`)).text()
    const stored = await get(`${sharing.url}cookie`)
    expect(stored.headers.get("x-cache")).toBe("HIT")
    expect(stored.headers.get("set-cookie")).toBe("id=1")
    expect(origin.count("/cookie")).toBe(3)
  })

  test("§5.2.2.3: must-understand with no-store is stored when the status code is understood (200), not otherwise (299)", async () => {
    await using origin = startOrigin(
      (req) =>
        new Response("x", {
          status: req.url.endsWith("/known") ? 200 : 299,
          headers: { "cache-control": "must-understand, no-store, max-age=60" },
        }),
    )
    await using proxy = await startProxy({ origin: origin.url })
    for (const path of ["known", "known", "unknown", "unknown"]) await (await get(`${proxy.url}${path}`)).text()
    expect(origin.count("/known")).toBe(1)
    expect(origin.count("/unknown")).toBe(2)
  })

  test.each([404, 410, 500])("§3: a %d with an explicit max-age is stored and reused", async (status) => {
    await using origin = startOrigin(() => new Response("gone", { status, headers: { "cache-control": "max-age=60" } }))
    await using proxy = await startProxy({ origin: origin.url })
    await (await get(`${proxy.url}e`)).text()
    const second = await get(`${proxy.url}e`)
    expect(second.status).toBe(status)
    expect(await second.text()).toBe("gone")
    expect(second.headers.get("x-cache")).toBe("HIT")
    expect(origin.count("/e")).toBe(1)
  })

  test("§3, §4.2.2: a 201 without freshness information is not stored", async () => {
    await using origin = startOrigin(() => new Response("created", { status: 201 }))
    await using proxy = await startProxy({ origin: origin.url })
    await (await get(`${proxy.url}new`)).text()
    expect((await get(`${proxy.url}new`)).headers.get("x-cache")).toBe("MISS")
    expect(origin.count("/new")).toBe(2)
  })

  test("§3.1: an incomplete body (Content-Length 100, connection closed after 10 bytes) is not stored", async () => {
    let requests = 0
    const server = createServer((socket) => {
      socket.on("data", () => {
        requests++
        socket.end("HTTP/1.1 200 OK\r\nContent-Length: 100\r\nCache-Control: max-age=60\r\n\r\n0123456789")
      })
    })
    await new Promise<void>((listening) => server.listen(0, "127.0.0.1", listening))
    try {
      await using proxy = await startProxy({ origin: `http://127.0.0.1:${(server.address() as { port: number }).port}` })
      for (let i = 0; i < 2; i++) {
        // A fresh connection each time: a client retries a request whose kept-alive connection was
        // cut, and the origin would count the retry (as in cache/storage.test.ts).
        const body = await get(`${proxy.url}short`, { connection: "close" })
          .then((res) => res.text())
          .catch(() => "failed")
        expect(body).not.toHaveLength(100)
      }
      expect(requests).toBe(2)
      expect(proxy.warnings.map((w) => w.kind)).toEqual(["origin-body", "origin-body"])
    } finally {
      await new Promise((closed) => server.close(closed))
    }
  })
})

describe("RFC 9111 §4.2 freshness", () => {
  test("§4.2.1: s-maxage takes precedence over max-age", async () => {
    freezeClock()
    await using origin = startDatedOrigin({ "cache-control": "max-age=10, s-maxage=100" })
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}f`)
    setSystemTime(Date.now() + 50_000)
    expect(await answer(`${proxy.url}f`)).toMatchObject({ body: "v1", xCache: "HIT" })
    setSystemTime(Date.now() + 60_000)
    expect(await answer(`${proxy.url}f`)).toMatchObject({ body: "v2", xCache: "MISS" })
    expect(origin.count("/f")).toBe(2)
  })

  test("§4.2.1: max-age takes precedence over Expires", async () => {
    freezeClock()
    await using origin = startDatedOrigin({ "cache-control": "max-age=100", expires: new Date(Date.now() + 10_000).toUTCString() })
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}f`)
    setSystemTime(Date.now() + 50_000)
    expect(await answer(`${proxy.url}f`)).toMatchObject({ body: "v1", xCache: "HIT" })
    expect(origin.count("/f")).toBe(1)
  })

  test("§4.2.1: without max-age the lifetime is Expires minus Date", async () => {
    freezeClock()
    await using origin = startDatedOrigin({ expires: new Date(Date.now() + 100_000).toUTCString() })
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}f`)
    setSystemTime(Date.now() + 99_000)
    expect(await answer(`${proxy.url}f`)).toMatchObject({ body: "v1", xCache: "HIT" })
    setSystemTime(Date.now() + 2_000)
    expect(await answer(`${proxy.url}f`)).toMatchObject({ body: "v2", xCache: "MISS" })
    expect(origin.count("/f")).toBe(2)
  })

  test.each([
    ["an invalid Expires (0)", { expires: "0" }],
    ["conflicting duplicate max-age", { "cache-control": "max-age=60, max-age=120" }],
    ["a malformed max-age (abc)", { "cache-control": "max-age=abc" }],
  ])("§4.2.1, §5.3: %s makes the response stale at once", async (_, headers) => {
    freezeClock()
    await using origin = startDatedOrigin(headers)
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}f`)
    setSystemTime(Date.now() + 1_000)
    expect(await answer(`${proxy.url}f`)).toMatchObject({ body: "v2", xCache: "MISS" })
    expect(origin.count("/f")).toBe(2)
  })

  test("§4.2.2: a 200 with only Last-Modified is fresh for 10 % of Date minus Last-Modified", async () => {
    freezeClock()
    const lastModified = new Date(Date.now() - 1000_000).toUTCString()
    await using origin = startDatedOrigin({ "last-modified": lastModified })
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}f`)
    setSystemTime(Date.now() + 99_000)
    expect(await answer(`${proxy.url}f`)).toMatchObject({ body: "v1", xCache: "HIT" })
    setSystemTime(Date.now() + 2_000)
    expect(await answer(`${proxy.url}f`)).toMatchObject({ body: "v2", xCache: "MISS" })
    expect(origin.requests[1]?.headers.get("if-modified-since")).toBe(lastModified)
    expect(origin.count("/f")).toBe(2)
  })

  test.each([
    [201, {}],
    [302, { location: "/elsewhere" }],
  ])("§4.2.2: a %d is not heuristically cacheable: with Last-Modified and no freshness it is not reused", async (status, headers) => {
    freezeClock()
    await using origin = startDatedOrigin({ "last-modified": new Date(Date.now() - 1000_000).toUTCString(), ...headers }, status)
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}f`)
    setSystemTime(Date.now() + 1_000)
    expect(await answer(`${proxy.url}f`)).toMatchObject({ body: "v2", xCache: "MISS" })
    expect(origin.count("/f")).toBe(2)
  })

  test("§4.2.2: a 200 with no freshness information lives for ttlSeconds", async () => {
    freezeClock()
    await using origin = startDatedOrigin()
    await using proxy = await startProxy({ origin: origin.url, ttlSeconds: 300 })
    await answer(`${proxy.url}f`)
    setSystemTime(Date.now() + 299_000)
    expect(await answer(`${proxy.url}f`)).toMatchObject({ body: "v1", xCache: "HIT" })
    setSystemTime(Date.now() + 2_000)
    expect(await answer(`${proxy.url}f`)).toMatchObject({ body: "v2", xCache: "MISS" })
    expect(origin.count("/f")).toBe(2)
  })

  test("§4.2.2 (deviation): a 404 with no freshness information lives 10 s, not ttlSeconds: a resource created then is seen", async () => {
    freezeClock()
    let created = false
    await using origin = startOrigin(
      () => new Response(created ? "made" : "not yet", { status: created ? 200 : 404, headers: { date: new Date().toUTCString() } }),
    )
    await using proxy = await startProxy({ origin: origin.url, ttlSeconds: 300 })
    expect(await answer(`${proxy.url}new`)).toMatchObject({ status: 404, xCache: "MISS" })
    created = true
    setSystemTime(Date.now() + 9_000)
    // Within 10 s the 404 still spares the origin.
    expect(await answer(`${proxy.url}new`)).toMatchObject({ status: 404, xCache: "HIT" })
    setSystemTime(Date.now() + 2_000)
    expect(await answer(`${proxy.url}new`)).toMatchObject({ status: 200, body: "made", xCache: "MISS" })
    expect(origin.count("/new")).toBe(2)
  })

  test.each([405, 414, 501])("§4.2.2 (deviation): a %d with no freshness information lives 10 s too", async (status) => {
    freezeClock()
    await using origin = startDatedOrigin({}, status)
    await using proxy = await startProxy({ origin: origin.url, ttlSeconds: 300 })
    await answer(`${proxy.url}e`)
    setSystemTime(Date.now() + 11_000)
    expect(await answer(`${proxy.url}e`)).toMatchObject({ status, body: "v2", xCache: "MISS" })
  })

  test.each([203, 204, 300, 301, 308, 410])(
    "§4.2.2: a %d with no freshness information lives for ttlSeconds, as a 200 does",
    async (status) => {
      freezeClock()
      await using origin = startDatedOrigin({}, status)
      await using proxy = await startProxy({ origin: origin.url, ttlSeconds: 300 })
      await answer(`${proxy.url}p`)
      setSystemTime(Date.now() + 299_000)
      expect(await answer(`${proxy.url}p`)).toMatchObject({ status, xCache: "HIT" })
      expect(origin.count("/p")).toBe(1)
    },
  )

  test("§4.2.2 (deviation): a 404 with max-age keeps it; with ttlSeconds 0 a bare 404 is not kept at all", async () => {
    freezeClock()
    await using origin = startOrigin(
      (req) =>
        new Response("no", { status: 404, headers: new URL(req.url).pathname === "/long" ? { "cache-control": "max-age=600" } : {} }),
    )
    await using proxy = await startProxy({ origin: origin.url, ttlSeconds: 0 })
    await answer(`${proxy.url}long`)
    await answer(`${proxy.url}bare`)
    setSystemTime(Date.now() + 300_000)
    expect(await answer(`${proxy.url}long`)).toMatchObject({ status: 404, xCache: "HIT" })
    expect(await answer(`${proxy.url}bare`)).toMatchObject({ status: 404, xCache: "MISS" })
  })

  test("§4.2.2: ttlSeconds 0 (--ttl 0) turns the default lifetime off", async () => {
    freezeClock()
    await using origin = startDatedOrigin()
    await using proxy = await startProxy({ origin: origin.url, ttlSeconds: 0 })
    await answer(`${proxy.url}f`)
    expect(await answer(`${proxy.url}f`)).toMatchObject({ body: "v2", xCache: "MISS" })
    expect(origin.count("/f")).toBe(2)
  })

  test("§4.2.3: the origin's Age uses up part of max-age", async () => {
    freezeClock()
    await using origin = startDatedOrigin({ "cache-control": "max-age=60", age: "50" })
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}f`)
    setSystemTime(Date.now() + 9_000)
    expect(await answer(`${proxy.url}f`)).toMatchObject({ body: "v1", xCache: "HIT", age: "59" })
    setSystemTime(Date.now() + 2_000)
    expect(await answer(`${proxy.url}f`)).toMatchObject({ body: "v2", xCache: "MISS" })
    expect(origin.count("/f")).toBe(2)
  })

  test("§4.2.3: a Date in the past counts as age (apparent age), even without an Age header", async () => {
    freezeClock()
    await using origin = startDatedOrigin({ date: new Date(Date.now() - 50_000).toUTCString(), "cache-control": "max-age=60" })
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}f`)
    setSystemTime(Date.now() + 9_000)
    expect(await answer(`${proxy.url}f`)).toMatchObject({ body: "v1", xCache: "HIT", age: "59" })
    setSystemTime(Date.now() + 2_000)
    expect(await answer(`${proxy.url}f`)).toMatchObject({ body: "v2", xCache: "MISS" })
    expect(origin.count("/f")).toBe(2)
  })

  test("§5.1: a hit carries Age: the seconds since it was stored, plus the origin's Age", async () => {
    freezeClock()
    await using origin = startOrigin(
      (req) =>
        new Response("x", {
          headers: { date: new Date().toUTCString(), "cache-control": "max-age=60", ...(req.url.endsWith("/aged") ? { age: "5" } : {}) },
        }),
    )
    await using proxy = await startProxy({ origin: origin.url })
    await (await get(`${proxy.url}fresh`)).text()
    await (await get(`${proxy.url}aged`)).text()
    setSystemTime(Date.now() + 10_000)
    expect((await get(`${proxy.url}fresh`)).headers.get("age")).toBe("10")
    expect((await get(`${proxy.url}aged`)).headers.get("age")).toBe("15")
    expect(origin.requests).toHaveLength(2)
  })
})

describe("RFC 9111 §4.1 Vary", () => {
  const byLanguage = () =>
    startOrigin(
      (req) =>
        new Response(`lang:${req.headers.get("accept-language")}`, {
          headers: { vary: "Accept-Language", "cache-control": "max-age=60" },
        }),
    )

  test("two variants of one URL are stored side by side, each served to the request it matches", async () => {
    await using origin = byLanguage()
    await using proxy = await startProxy({ origin: origin.url })
    const seen: string[] = []
    for (const language of ["en", "fr", "en", "fr"]) {
      const res = await get(`${proxy.url}v`, { "accept-language": language })
      seen.push(`${await res.text()} ${res.headers.get("x-cache")}`)
    }
    expect(seen).toEqual(["lang:en MISS", "lang:fr MISS", "lang:en HIT", "lang:fr HIT"])
    expect(origin.count("/v")).toBe(2)
  })

  test("a request without the varied header does not match a variant stored for one with it", async () => {
    await using origin = byLanguage()
    await using proxy = await startProxy({ origin: origin.url })
    await (await get(`${proxy.url}v`, { "accept-language": "en" })).text()
    expect(await (await get(`${proxy.url}v`)).text()).toBe("lang:null")
    expect(origin.count("/v")).toBe(2)
  })

  test("values that differ only in white space around list members match", async () => {
    await using origin = byLanguage()
    await using proxy = await startProxy({ origin: origin.url })
    await (await get(`${proxy.url}v`, { "accept-language": "en,  fr" })).text()
    const res = await get(`${proxy.url}v`, { "accept-language": "en ,fr" })
    expect(res.headers.get("x-cache")).toBe("HIT")
    expect(await res.text()).toBe("lang:en,  fr")
    expect(origin.count("/v")).toBe(1)
  })

  test("Vary: * is never served from the cache", async () => {
    await using origin = startOrigin(() => new Response("x", { headers: { vary: "*", "cache-control": "max-age=60" } }))
    await using proxy = await startProxy({ origin: origin.url })
    await (await get(`${proxy.url}star`)).text()
    const second = await get(`${proxy.url}star`)
    expect(second.headers.get("x-cache")).toBe("MISS")
    expect(second.headers.get("cache-status")).toContain("detail=vary-star")
    expect(origin.count("/star")).toBe(2)
  })
})

describe("RFC 9111 §4.3 validation", () => {
  test("§4.3.1, §4.3.4: a stale entry with an ETag is revalidated with If-None-Match; the 304 freshens it and updates its fields", async () => {
    freezeClock()
    await using origin = startOrigin((_, n) =>
      n === 1
        ? new Response("v1", { headers: { date: new Date().toUTCString(), etag: '"v1"', "cache-control": "max-age=60" } })
        : new Response(null, {
            status: 304,
            headers: { date: new Date().toUTCString(), etag: '"v1"', "cache-control": "max-age=60", "x-extra": "from-304" },
          }),
    )
    await using proxy = await startProxy({ origin: origin.url })
    await (await get(`${proxy.url}a`)).text()
    setSystemTime(Date.now() + 61_000)
    const revalidated = await get(`${proxy.url}a`)
    expect(revalidated.status).toBe(200)
    expect(await revalidated.text()).toBe("v1")
    expect(revalidated.headers.get("x-cache")).toBe("HIT")
    expect(revalidated.headers.get("x-extra")).toBe("from-304")
    expect(origin.requests[1]?.headers.get("if-none-match")).toBe('"v1"')
    setSystemTime(Date.now() + 30_000)
    const next = await get(`${proxy.url}a`)
    expect(await next.text()).toBe("v1")
    expect(next.headers.get("x-extra")).toBe("from-304")
    expect(next.headers.get("age")).toBe("30")
    expect(origin.count("/a")).toBe(2)
  })

  test("§4.3.1: a stale entry with Last-Modified is revalidated with If-Modified-Since", async () => {
    freezeClock()
    const lastModified = new Date(Date.now() - 3600_000).toUTCString()
    await using origin = startOrigin((_, n) =>
      n === 1
        ? new Response("v1", { headers: { date: new Date().toUTCString(), "last-modified": lastModified, "cache-control": "max-age=60" } })
        : new Response(null, { status: 304, headers: { date: new Date().toUTCString(), "cache-control": "max-age=60" } }),
    )
    await using proxy = await startProxy({ origin: origin.url })
    await (await get(`${proxy.url}a`)).text()
    setSystemTime(Date.now() + 61_000)
    const res = await get(`${proxy.url}a`)
    expect(await res.text()).toBe("v1")
    expect(res.headers.get("x-cache")).toBe("HIT")
    expect(origin.requests[1]?.headers.get("if-modified-since")).toBe(lastModified)
    expect(origin.count("/a")).toBe(2)
  })

  test("§5.2.2.4: a no-cache response is validated before every use", async () => {
    await using origin = startOrigin((req) =>
      req.headers.get("if-none-match") === '"v1"'
        ? new Response(null, { status: 304, headers: { etag: '"v1"' } })
        : new Response("v1", { headers: { etag: '"v1"', "cache-control": "no-cache" } }),
    )
    await using proxy = await startProxy({ origin: origin.url })
    await (await get(`${proxy.url}nc`)).text()
    for (let i = 0; i < 2; i++) {
      const res = await get(`${proxy.url}nc`)
      expect(await res.text()).toBe("v1")
      expect(res.headers.get("x-cache")).toBe("HIT")
    }
    expect(origin.count("/nc")).toBe(3)
    expect(origin.requests[2]?.headers.get("if-none-match")).toBe('"v1"')
  })

  test.each(["must-revalidate", "proxy-revalidate"])(
    "§5.2.2.2, §5.2.2.8: a %s entry is used while fresh; stale with the origin down, it gives 504",
    async (directive) => {
      freezeClock()
      await using origin = startDatedOrigin({ "cache-control": `max-age=60, ${directive}` })
      await using proxy = await startProxy({ origin: origin.url })
      await (await get(`${proxy.url}mr`)).text()
      setSystemTime(Date.now() + 30_000)
      expect((await get(`${proxy.url}mr`)).headers.get("x-cache")).toBe("HIT")
      await origin[Symbol.asyncDispose]()
      setSystemTime(Date.now() + 31_000)
      const res = await get(`${proxy.url}mr`)
      expect(res.status).toBe(504)
      expect(res.headers.get("x-cache")).toBe("MISS")
      expect(origin.count("/mr")).toBe(1)
    },
  )

  test("§4.2.4: without must-revalidate, a stale entry is served when the origin is down", async () => {
    freezeClock()
    await using origin = startDatedOrigin({ "cache-control": "max-age=60" })
    await using proxy = await startProxy({ origin: origin.url })
    await (await get(`${proxy.url}down`)).text()
    await origin[Symbol.asyncDispose]()
    setSystemTime(Date.now() + 61_000)
    for (let i = 0; i < 2; i++) {
      const res = await get(`${proxy.url}down`)
      expect(res.status).toBe(200)
      expect(await res.text()).toBe("v1")
      expect(res.headers.get("x-cache")).toBe("HIT")
      expect(res.headers.get("cache-status")).toBe("caching-proxy; hit; fwd=stale; detail=origin-unreachable; ttl=-1")
    }
  })

  test("§4.3.2: a client's If-None-Match on a fresh entry is answered 304 by the cache", async () => {
    await using origin = startOrigin(() => new Response("v1", { headers: { etag: '"v1"', "cache-control": "max-age=60" } }))
    await using proxy = await startProxy({ origin: origin.url })
    await (await get(`${proxy.url}inm`)).text()
    const matching = await get(`${proxy.url}inm`, { "if-none-match": 'W/"v0", "v1"' })
    expect(matching.status).toBe(304)
    expect(matching.headers.get("etag")).toBe('"v1"')
    expect(matching.headers.get("x-cache")).toBe("HIT")
    const other = await get(`${proxy.url}inm`, { "if-none-match": '"v0"' })
    expect(other.status).toBe(200)
    expect(await other.text()).toBe("v1")
    expect(origin.count("/inm")).toBe(1)
  })

  test("§4.3.2: a client's If-Modified-Since on a fresh entry is answered 304 by the cache when not modified since", async () => {
    const lastModified = new Date(Date.now() - 3600_000).toUTCString()
    await using origin = startOrigin(
      () => new Response("v1", { headers: { "last-modified": lastModified, "cache-control": "max-age=60" } }),
    )
    await using proxy = await startProxy({ origin: origin.url })
    await (await get(`${proxy.url}ims`)).text()
    const notModified = await get(`${proxy.url}ims`, { "if-modified-since": lastModified })
    expect(notModified.status).toBe(304)
    expect(notModified.headers.get("x-cache")).toBe("HIT")
    const modified = await get(`${proxy.url}ims`, { "if-modified-since": new Date(Date.now() - 7200_000).toUTCString() })
    expect(modified.status).toBe(200)
    expect(await modified.text()).toBe("v1")
    expect(origin.count("/ims")).toBe(1)
  })
})

describe("RFC 9111 §5.2.1 request directives", () => {
  test("§5.2.1.4: no-cache goes to the origin even for a fresh entry, and stores the new answer", async () => {
    await using origin = startDatedOrigin({ "cache-control": "max-age=60" })
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}d`)
    expect(await answer(`${proxy.url}d`, { "cache-control": "no-cache" })).toMatchObject({ body: "v2", xCache: "MISS" })
    expect(await answer(`${proxy.url}d`)).toMatchObject({ body: "v2", xCache: "HIT" })
    expect(origin.count("/d")).toBe(2)
  })

  test("§5.2.1.1: max-age=0 goes to the origin; max-age=N accepts an entry up to N seconds old", async () => {
    freezeClock()
    await using origin = startDatedOrigin({ "cache-control": "max-age=100" })
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}d`)
    setSystemTime(Date.now() + 30_000)
    expect(await answer(`${proxy.url}d`, { "cache-control": "max-age=60" })).toMatchObject({ body: "v1", xCache: "HIT" })
    expect(origin.count("/d")).toBe(1)
    expect(await answer(`${proxy.url}d`, { "cache-control": "max-age=20" })).toMatchObject({ body: "v2", xCache: "MISS" })
    expect(origin.count("/d")).toBe(2)
    // An age of exactly 0 s satisfies max-age=0 ("less than or equal to"): let one second pass.
    setSystemTime(Date.now() + 1_000)
    expect(await answer(`${proxy.url}d`, { "cache-control": "max-age=0" })).toMatchObject({ body: "v3", xCache: "MISS" })
    expect(origin.count("/d")).toBe(3)
  })

  test("§5.2.1.2: max-stale serves a stale entry without contacting the origin, within its limit", async () => {
    freezeClock()
    await using origin = startDatedOrigin({ "cache-control": "max-age=60" })
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}d`)
    setSystemTime(Date.now() + 90_000)
    expect(await answer(`${proxy.url}d`, { "cache-control": "max-stale=60" })).toMatchObject({ body: "v1", xCache: "HIT" })
    expect(await answer(`${proxy.url}d`, { "cache-control": "max-stale" })).toMatchObject({ body: "v1", xCache: "HIT" })
    expect(origin.count("/d")).toBe(1)
    expect(await answer(`${proxy.url}d`, { "cache-control": "max-stale=10" })).toMatchObject({ body: "v2", xCache: "MISS" })
    expect(origin.count("/d")).toBe(2)
  })

  test("§5.2.1.2, §5.2.2.2: max-stale does not serve a stale must-revalidate entry", async () => {
    freezeClock()
    await using origin = startDatedOrigin({ "cache-control": "max-age=60, must-revalidate" })
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}d`)
    setSystemTime(Date.now() + 90_000)
    expect(await answer(`${proxy.url}d`, { "cache-control": "max-stale=600" })).toMatchObject({ body: "v2", xCache: "MISS" })
    expect(origin.count("/d")).toBe(2)
  })

  test("§5.2.1.3: min-fresh asks for that much freshness left", async () => {
    freezeClock()
    await using origin = startDatedOrigin({ "cache-control": "max-age=60" })
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}d`)
    setSystemTime(Date.now() + 30_000)
    expect(await answer(`${proxy.url}d`, { "cache-control": "min-fresh=20" })).toMatchObject({ body: "v1", xCache: "HIT" })
    expect(origin.count("/d")).toBe(1)
    expect(await answer(`${proxy.url}d`, { "cache-control": "min-fresh=40" })).toMatchObject({ body: "v2", xCache: "MISS" })
    expect(origin.count("/d")).toBe(2)
  })

  test("§5.2.1.5: the response to a request with no-store is not stored", async () => {
    await using origin = startDatedOrigin({ "cache-control": "max-age=60" })
    await using proxy = await startProxy({ origin: origin.url })
    const first = await answer(`${proxy.url}d`, { "cache-control": "no-store" })
    expect(first.cacheStatus).toContain("detail=request-no-store")
    expect(await answer(`${proxy.url}d`)).toMatchObject({ body: "v2", xCache: "MISS" })
    expect(origin.count("/d")).toBe(2)
  })

  test("§5.2.1.7: only-if-cached answers 504 when nothing fitting is stored, 200 HIT when it is, and never reaches the origin", async () => {
    freezeClock()
    await using origin = startDatedOrigin({ "cache-control": "max-age=60" })
    await using proxy = await startProxy({ origin: origin.url })
    expect(await answer(`${proxy.url}d`, { "cache-control": "only-if-cached" })).toMatchObject({ status: 504, xCache: "MISS" })
    expect(origin.count("/d")).toBe(0)
    await answer(`${proxy.url}d`)
    expect(await answer(`${proxy.url}d`, { "cache-control": "only-if-cached" })).toMatchObject({ status: 200, body: "v1", xCache: "HIT" })
    setSystemTime(Date.now() + 61_000)
    expect(await answer(`${proxy.url}d`, { "cache-control": "only-if-cached" })).toMatchObject({ status: 504, xCache: "MISS" })
    expect(origin.count("/d")).toBe(1)
  })
})

describe("RFC 9110 §9.3.2 HEAD, RFC 9111 §4", () => {
  test("a HEAD is answered from a stored GET: no origin request, no body, the same Content-Length", async () => {
    await using origin = startOrigin(() => new Response("hello world", { headers: { "cache-control": "max-age=60" } }))
    await using proxy = await startProxy({ origin: origin.url })
    const full = await get(`${proxy.url}h`)
    expect(await full.text()).toBe("hello world")
    const head = await fetch(`${proxy.url}h`, { method: "HEAD" })
    expect(head.status).toBe(200)
    expect(head.headers.get("x-cache")).toBe("HIT")
    expect(head.headers.get("content-length")).toBe("11")
    expect(await head.text()).toBe("")
    expect(origin.count("/h")).toBe(1)
  })

  test("a HEAD miss is not stored as an empty body: the next GET goes to the origin for the whole body", async () => {
    await using origin = startOrigin(() => new Response("hello world", { headers: { "cache-control": "max-age=60" } }))
    await using proxy = await startProxy({ origin: origin.url })
    const head = await fetch(`${proxy.url}h`, { method: "HEAD" })
    expect(head.headers.get("x-cache")).toBe("MISS")
    expect(origin.requests[0]?.method).toBe("HEAD")
    const full = await get(`${proxy.url}h`)
    expect(full.headers.get("x-cache")).toBe("MISS")
    expect(await full.text()).toBe("hello world")
    expect(origin.count("/h")).toBe(2)
    expect((await get(`${proxy.url}h`)).headers.get("x-cache")).toBe("HIT")
    expect(origin.count("/h")).toBe(2)
  })
})

describe("RFC 9111 §4.4 invalidation", () => {
  /** An origin that answers GETs with max-age=60 and other methods with `status` (and `headers`). */
  const origin = (status = 200, headers: Record<string, string> = {}) =>
    startOrigin((req, n) =>
      req.method === "GET"
        ? new Response(`v${n}`, { headers: { "cache-control": "max-age=60" } })
        : new Response(null, { status, headers }),
    )

  test.each(["POST", "PUT", "PATCH", "DELETE"])("a 2xx to %s invalidates the stored GET of its target URI", async (method) => {
    await using o = origin(204)
    await using proxy = await startProxy({ origin: o.url })
    expect((await answer(`${proxy.url}item`)).xCache).toBe("MISS")
    expect((await answer(`${proxy.url}item`)).xCache).toBe("HIT")
    expect((await fetch(`${proxy.url}item`, { method, body: method === "DELETE" ? undefined : "x" })).status).toBe(204)
    expect((await answer(`${proxy.url}item`)).xCache).toBe("MISS")
    expect(o.requests.filter((r) => r.method === "GET")).toHaveLength(2)
  })

  test("a 2xx also invalidates the same-origin URIs in Location and Content-Location", async () => {
    await using o = origin(201, { location: "/items/1", "content-location": "/items/2?full=1" })
    await using proxy = await startProxy({ origin: o.url })
    for (const path of ["items/1", "items/2?full=1", "items/3"]) await answer(`${proxy.url}${path}`)
    expect((await fetch(`${proxy.url}items`, { method: "POST", body: "x" })).status).toBe(201)
    expect((await answer(`${proxy.url}items/1`)).xCache).toBe("MISS")
    expect((await answer(`${proxy.url}items/2?full=1`)).xCache).toBe("MISS")
    expect((await answer(`${proxy.url}items/3`)).xCache).toBe("HIT")
  })

  test.each([404, 500])("a %d to an unsafe method invalidates nothing", async (status) => {
    await using o = origin(status)
    await using proxy = await startProxy({ origin: o.url })
    await answer(`${proxy.url}item`)
    expect((await fetch(`${proxy.url}item`, { method: "POST", body: "x" })).status).toBe(status)
    expect((await answer(`${proxy.url}item`)).xCache).toBe("HIT")
    expect(o.count("/item")).toBe(2)
  })

  test("a Location on another origin invalidates nothing here", async () => {
    await using o = origin(201, { location: "http://other.example/items/1" })
    await using proxy = await startProxy({ origin: o.url })
    await answer(`${proxy.url}items/1`)
    await (await fetch(`${proxy.url}items`, { method: "POST", body: "x" })).text()
    expect((await answer(`${proxy.url}items/1`)).xCache).toBe("HIT")
  })
})

describe("RFC 5861 stale-while-revalidate and stale-if-error", () => {
  test("§3: stale-while-revalidate serves the stale entry at once and refreshes it with one background request", async () => {
    freezeClock()
    await using origin = startDatedOrigin({ "cache-control": "max-age=60, stale-while-revalidate=60" })
    await using proxy = await startProxy({ origin: origin.url })
    await (await get(`${proxy.url}swr`)).text()
    setSystemTime(Date.now() + 90_000)
    const stale = await Promise.all(
      [1, 2, 3].map(async () => {
        const res = await get(`${proxy.url}swr`)
        return `${await res.text()} ${res.headers.get("x-cache")} ${res.headers.get("cache-status")}`
      }),
    )
    expect(stale).toEqual(Array(3).fill(`v1 HIT caching-proxy; hit; detail=stale-while-revalidate; ttl=-30`))
    let body = ""
    for (let i = 0; i < 100 && body !== "v2"; i++) {
      await Bun.sleep(10)
      body = await (await get(`${proxy.url}swr`)).text()
    }
    expect(body).toBe("v2")
    expect(origin.count("/swr")).toBe(2)
  })

  test("§3: past the stale-while-revalidate window the client waits for the origin", async () => {
    freezeClock()
    await using origin = startDatedOrigin({ "cache-control": "max-age=60, stale-while-revalidate=60" })
    await using proxy = await startProxy({ origin: origin.url })
    await (await get(`${proxy.url}swr`)).text()
    setSystemTime(Date.now() + 121_000)
    const res = await get(`${proxy.url}swr`)
    expect(await res.text()).toBe("v2")
    expect(res.headers.get("x-cache")).toBe("MISS")
    expect(origin.count("/swr")).toBe(2)
  })

  test.each([500, 503])("§4: stale-if-error serves the stale entry when the origin answers %d, within its window", async (status) => {
    freezeClock()
    await using origin = startOrigin((_, n) =>
      n === 1
        ? new Response("v1", { headers: { date: new Date().toUTCString(), "cache-control": "max-age=60, stale-if-error=60" } })
        : new Response("broken", { status, headers: { date: new Date().toUTCString() } }),
    )
    await using proxy = await startProxy({ origin: origin.url })
    await (await get(`${proxy.url}sie`)).text()
    setSystemTime(Date.now() + 90_000)
    const stale = await get(`${proxy.url}sie`)
    expect(stale.status).toBe(200)
    expect(await stale.text()).toBe("v1")
    expect(stale.headers.get("x-cache")).toBe("HIT")
    expect(stale.headers.get("cache-status")).toContain(`fwd=stale; fwd-status=${status}`)
    setSystemTime(Date.now() + 31_000)
    const error = await get(`${proxy.url}sie`)
    expect(error.status).toBe(status)
    expect(await error.text()).toBe("broken")
    expect(error.headers.get("x-cache")).toBe("MISS")
    expect(origin.count("/sie")).toBe(3)
  })

  test("§4: stale-if-error serves the stale entry when the origin is unreachable", async () => {
    freezeClock()
    await using origin = startDatedOrigin({ "cache-control": "max-age=60, stale-if-error=60" })
    await using proxy = await startProxy({ origin: origin.url })
    await (await get(`${proxy.url}sie`)).text()
    await origin[Symbol.asyncDispose]()
    setSystemTime(Date.now() + 90_000)
    const res = await get(`${proxy.url}sie`)
    expect(res.status).toBe(200)
    expect(await res.text()).toBe("v1")
    expect(res.headers.get("x-cache")).toBe("HIT")
  })
})

describe("RFC 5861: a response without a stale-* window is never served stale, not even stale by 0 ms", () => {
  test("§3: at the instant it turns stale, a max-age=0 response is validated, not served while revalidating", async () => {
    freezeClock()
    // Both answers carry the frozen Date: Bun's own Date field follows the real clock.
    await using origin = startOrigin((req, n) =>
      req.headers.get("if-none-match") === '"a"'
        ? new Response(null, { status: 304, headers: { date: new Date().toUTCString(), etag: '"a"' } })
        : new Response(`v${n}`, { headers: { date: new Date().toUTCString(), etag: '"a"', "cache-control": "max-age=0" } }),
    )
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}z`)
    expect((await answer(`${proxy.url}z`)).cacheStatus).toBe("caching-proxy; hit; fwd=stale; fwd-status=304; ttl=0")
    expect(origin.requests.map((r) => r.headers.get("if-none-match"))).toEqual([null, '"a"'])
  })

  test("§4: at the instant it turns stale, an origin's 500 is passed on, not replaced by the stale response", async () => {
    freezeClock()
    await using origin = startOrigin((_, n) =>
      n === 1
        ? new Response("v1", { headers: { date: new Date().toUTCString(), etag: '"a"', "cache-control": "max-age=0" } })
        : new Response("down", { status: 500 }),
    )
    await using proxy = await startProxy({ origin: origin.url })
    await answer(`${proxy.url}z`)
    expect(await answer(`${proxy.url}z`)).toMatchObject({ status: 500, body: "down", xCache: "MISS" })
  })
})
