/**
 * The cache's rules through real HTTP (RFC 9111, RFC 5861, RFC 9211, RFC 9213, RFC 9110's dates,
 * Vary and ranges): a real origin on port 0, the real proxy on port 0, assertions on what the
 * client got and what the origin saw.
 */
import { afterEach, beforeAll, describe, expect, setSystemTime, test } from "bun:test"
import { readFileSync, writeFileSync } from "node:fs"
import { createServer } from "node:net"
import { join } from "node:path"
import {
  answer,
  buildNodeBundle,
  CLI,
  eventually,
  FAST_RUN,
  freezeClock,
  generatedBody,
  generatedChunk,
  get,
  KB,
  metaFiles,
  ownedDir,
  RUNTIMES,
  runCli,
  startCli,
  startCliProxy,
  startDatedOrigin,
  startOrigin,
  startProxy,
  startRawOrigin,
  startRedis,
  storeThrough,
  TEST_OPTIONS,
} from "../proxy/test.fixture.ts"

// Every test starts on the real clock, whatever the one before did with it.
afterEach(() => setSystemTime())

describe("hardening: what is stored and shared", () => {
  /** An origin whose first answer is `v1` with an ETag, and every later one a 304 rotating a session cookie. */
  function startRotatingOrigin(cacheControl: string) {
    return startOrigin((_, n) => {
      const headers = { date: new Date().toUTCString(), etag: '"v1"', "cache-control": cacheControl }
      if (n === 1) return new Response("v1", { headers })
      return new Response(null, { status: 304, headers: { ...headers, "set-cookie": `session=rotated-${n}` } })
    })
  }

  /** An origin that greets the client by the Cookie it sent: a page made for that client. */
  function startGreetingOrigin(cacheControl: string) {
    return startOrigin((req) => new Response(`hello ${req.headers.get("cookie")}`, { headers: { "cache-control": cacheControl } }))
  }

  const withCookie = (cookie: string | null): Record<string, string> => (cookie ? { cookie } : {})

  test.each(["GET", "HEAD"])("RFC 9111 §4.3.4: a revalidating %s gets the 304's Set-Cookie; the stored entry does not", async (method) => {
    freezeClock()
    await using origin = startRotatingOrigin("max-age=60")
    await using proxy = await startProxy({ origin: origin.url })
    await (await get(`${proxy.url}session`)).text()
    setSystemTime(Date.now() + 61_000)
    const revalidated = await fetch(`${proxy.url}session`, { method })
    expect(await revalidated.text()).toBe(method === "GET" ? "v1" : "")
    expect(revalidated.headers.get("x-cache")).toBe("HIT")
    expect(revalidated.headers.get("set-cookie")).toBe("session=rotated-2")
    const next = await get(`${proxy.url}session`)
    expect(await next.text()).toBe("v1")
    expect(next.headers.get("x-cache")).toBe("HIT")
    expect(next.headers.get("set-cookie")).toBeNull()
    expect(metaFiles(proxy.cacheDir).map((f) => readFileSync(f.path, "utf8"))).not.toContainEqual(expect.stringContaining("rotated"))
    expect(origin.count("/session")).toBe(2)
  })

  test("RFC 5861 §3: a background refresh's 304 with Set-Cookie freshens the entry without the cookie", async () => {
    freezeClock()
    await using origin = startRotatingOrigin("max-age=60, stale-while-revalidate=60")
    await using proxy = await startProxy({ origin: origin.url })
    await (await get(`${proxy.url}swr`)).text()
    setSystemTime(Date.now() + 90_000)
    const stale = await get(`${proxy.url}swr`)
    expect(await stale.text()).toBe("v1")
    expect(stale.headers.get("set-cookie")).toBeNull()
    let refreshed = await get(`${proxy.url}swr`)
    for (let i = 0; i < 100 && refreshed.headers.get("cache-status")?.includes("stale-while-revalidate"); i++) {
      await refreshed.text()
      await Bun.sleep(10)
      refreshed = await get(`${proxy.url}swr`)
    }
    expect(await refreshed.text()).toBe("v1")
    expect(refreshed.headers.get("cache-status")).toBe("caching-proxy; hit; ttl=60")
    expect(refreshed.headers.get("set-cookie")).toBeNull()
    expect(origin.count("/swr")).toBe(2)
  })

  test("with shareCookies, a 304's Set-Cookie is stored and served to the next client", async () => {
    freezeClock()
    await using origin = startRotatingOrigin("max-age=60")
    await using proxy = await startProxy({ origin: origin.url, shareCookies: true })
    await (await get(`${proxy.url}session`)).text()
    setSystemTime(Date.now() + 61_000)
    await (await get(`${proxy.url}session`)).text()
    const next = await get(`${proxy.url}session`)
    expect(next.headers.get("x-cache")).toBe("HIT")
    expect(next.headers.get("set-cookie")).toBe("session=rotated-2")
    expect(origin.count("/session")).toBe(2)
  })

  test.each([
    ["max-age=60", false],
    ["max-age=60, must-revalidate", false],
    ["public, max-age=60", true],
    ["s-maxage=60", true],
  ])("a response to a request with Cookie and Cache-Control: %s is shared: %p", async (cacheControl, shared) => {
    await using origin = startGreetingOrigin(cacheControl)
    await using proxy = await startProxy({ origin: origin.url })
    const alice = await answer(`${proxy.url}me`, { cookie: "session=alice" })
    expect(alice).toMatchObject({ body: "hello session=alice", xCache: "MISS" })
    expect(alice.cacheStatus).toBe(`caching-proxy; fwd=uri-miss; fwd-status=200; ${shared ? "stored" : "detail=cookie"}`)
    const anyone = await answer(`${proxy.url}me`)
    expect(anyone).toMatchObject(shared ? { body: "hello session=alice", xCache: "HIT" } : { body: "hello null", xCache: "MISS" })
    expect(origin.requests.map((r) => r.headers.get("cookie"))).toEqual(shared ? ["session=alice"] : ["session=alice", null])
  })

  test("a request with Cookie is answered from an entry stored for a request without one", async () => {
    await using origin = startGreetingOrigin("max-age=60")
    await using proxy = await startProxy({ origin: origin.url })
    expect(await answer(`${proxy.url}page`)).toMatchObject({ body: "hello null", xCache: "MISS" })
    expect(await answer(`${proxy.url}page`, { cookie: "session=alice" })).toMatchObject({ body: "hello null", xCache: "HIT" })
    expect(origin.count("/page")).toBe(1)
  })

  test("with shareCookies, a response to a request with Cookie is stored and served to every client", async () => {
    await using origin = startGreetingOrigin("max-age=60")
    await using proxy = await startProxy({ origin: origin.url, shareCookies: true })
    expect(await answer(`${proxy.url}me`, { cookie: "session=alice" })).toMatchObject({ body: "hello session=alice", xCache: "MISS" })
    expect(await answer(`${proxy.url}me`)).toMatchObject({ body: "hello session=alice", xCache: "HIT" })
    expect(origin.count("/me")).toBe(1)
  })

  test.each<[string, string | null, string | null]>([
    ["with Cookie first", "session=alice", null],
    ["with Cookie second", null, "session=alice"],
  ])("a request with Cookie neither waits behind another request for the URL nor makes it wait (%s)", async (_, first, second) => {
    // The origin answers once it has both requests in hand, or after a second alone: a request
    // queued behind the other one's would arrive only after that.
    let bothArrived: () => void = () => {}
    const together = new Promise<string>((resolve) => (bothArrived = () => resolve("together")))
    await using origin = startOrigin(async (_, n) => {
      if (n === 2) bothArrived()
      const seen = await Promise.race([together, Bun.sleep(1000).then(() => "alone")])
      return new Response(seen, { headers: { "cache-control": "max-age=60" } })
    })
    await using proxy = await startProxy({ origin: origin.url })
    const firstAnswer = answer(`${proxy.url}c`, withCookie(first))
    await eventually(() => origin.requests.length === 1)
    const answers = await Promise.all([firstAnswer, answer(`${proxy.url}c`, withCookie(second))])
    expect(answers.map((a) => [a.body, a.xCache])).toEqual([
      ["together", "MISS"],
      ["together", "MISS"],
    ])
    expect(origin.requests.map((r) => r.headers.get("cookie"))).toEqual([first, second])
  })

  test("RFC 5861 §3: a request with Cookie is served stale but leaves the background refresh to a request without one", async () => {
    freezeClock()
    await using origin = startDatedOrigin({ "cache-control": "max-age=60, stale-while-revalidate=60" })
    await using proxy = await startProxy({ origin: origin.url })
    await (await get(`${proxy.url}swr`)).text()
    setSystemTime(Date.now() + 90_000)
    const stale = await answer(`${proxy.url}swr`, { cookie: "session=alice" })
    expect(stale).toMatchObject({ body: "v1", cacheStatus: "caching-proxy; hit; detail=stale-while-revalidate; ttl=-30" })
    let refreshed = await answer(`${proxy.url}swr`)
    for (let i = 0; i < 100 && refreshed.body === "v1"; i++) {
      await Bun.sleep(10)
      refreshed = await answer(`${proxy.url}swr`)
    }
    expect(refreshed).toMatchObject({ body: "v2", xCache: "HIT" })
    expect(origin.requests.map((r) => r.headers.get("cookie"))).toEqual([null, null])
  })

  test.each([600, 999])("RFC 9110 §15: a status %d is answered 502 every time, never stored", async (status) => {
    await using origin = await startRawOrigin((socket) =>
      socket.end(`HTTP/1.1 ${status} Odd\r\nContent-Length: 3\r\nCache-Control: max-age=600\r\n\r\nodd`),
    )
    await using proxy = await startProxy({ origin: origin.url })
    const answers = [
      await answer(`${proxy.url}odd`),
      await answer(`${proxy.url}odd`),
      await answer(`${proxy.url}odd`, {}, { method: "POST" }),
    ]
    expect(answers.map((a) => [a.status, a.xCache])).toEqual(Array(3).fill([502, "MISS"]))
    expect(new Set(answers.map((a) => a.body)).size).toBe(1)
    expect(origin.requests()).toBe(3)
    expect(metaFiles(proxy.cacheDir)).toEqual([])
  })

  test("an entry an earlier version stored with status 600 is deleted and fetched again, not answered 502", async () => {
    await using origin = startOrigin((_, n) => new Response(`v${n}`, { headers: { "cache-control": "max-age=600" } }))
    using dir = ownedDir()
    await storeThrough(origin.url, dir.path, "odd")
    const [meta] = metaFiles(dir.path)
    writeFileSync(meta!.path, JSON.stringify({ ...JSON.parse(readFileSync(meta!.path, "utf8")), status: 600 }))
    await using proxy = await startProxy({ origin: origin.url, cacheDir: dir.path })
    expect(await answer(`${proxy.url}odd`)).toMatchObject({ status: 200, body: "v2", xCache: "MISS" })
    expect(await answer(`${proxy.url}odd`)).toMatchObject({ status: 200, body: "v2", xCache: "HIT" })
    expect(proxy.warnings.map((w) => w.kind)).toEqual(["broken-entry"])
    expect(origin.count("/odd")).toBe(2)
  })
})

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
        const body = await get(`${proxy.url}short`)
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

describe("RFC 9110 §14 range requests answered from the cache", () => {
  beforeAll(buildNodeBundle, 60_000)

  const BODY = "0123456789abcdefghij" // 20 bytes
  const LAST_MODIFIED = "Tue, 01 Dec 2026 00:00:00 GMT"

  /** An origin whose representation of every path is BODY, stored for ten minutes; `headers` adds to or replaces its fields. */
  function startRangeOrigin(headers: Record<string, string> = {}) {
    return startOrigin(
      () =>
        new Response(BODY, {
          headers: {
            etag: '"v1"',
            "last-modified": LAST_MODIFIED,
            "cache-control": "max-age=600",
            date: new Date().toUTCString(),
            ...headers,
          },
        }),
    )
  }

  /** What the client got for a request, with the fields a range answer is about. */
  async function ranged(url: string, headers: Record<string, string>, method = "GET") {
    const res = await fetch(url, { headers, method })
    const field = (name: string) => res.headers.get(name)
    return {
      status: res.status,
      body: await res.text(),
      contentRange: field("content-range"),
      contentLength: field("content-length"),
      xCache: field("x-cache"),
    }
  }

  test("§14.1.2: a single range, a suffix range and an open-ended range of a stored 200 are 206s from the cache", async () => {
    await using origin = startRangeOrigin()
    await using proxy = await startProxy({ origin: origin.url })
    await (await get(`${proxy.url}r`)).text()
    const part = (range: string) => ranged(`${proxy.url}r`, { range })
    expect(await part("bytes=2-5")).toEqual({ status: 206, body: "2345", contentRange: "bytes 2-5/20", contentLength: "4", xCache: "HIT" })
    expect(await part("bytes=-3")).toMatchObject({ status: 206, body: "hij", contentRange: "bytes 17-19/20" })
    expect(await part("bytes=15-")).toMatchObject({ status: 206, body: "fghij", contentRange: "bytes 15-19/20" })
    // A last-pos past the end is cut at the end; a suffix longer than the body is the whole body.
    expect(await part("bytes=18-99")).toMatchObject({ status: 206, body: "ij", contentRange: "bytes 18-19/20" })
    expect(await part("bytes=-99")).toMatchObject({ status: 206, body: BODY, contentRange: "bytes 0-19/20" })
    expect(await part("BYTES = 0-0")).toMatchObject({ status: 200, body: BODY }) // not the grammar: ignored
    expect(origin.requests).toHaveLength(1)
  })

  test("§14.2: several ranges, an invalid range or another unit get the whole 200; HEAD ignores Range", async () => {
    await using origin = startRangeOrigin()
    await using proxy = await startProxy({ origin: origin.url })
    await (await get(`${proxy.url}r`)).text()
    for (const range of ["bytes=0-1,4-5", "bytes=5-2", "bytes=x-", "items=0-1", "bytes=0-1,99-"]) {
      expect(await ranged(`${proxy.url}r`, { range })).toMatchObject({ status: 200, body: BODY, contentRange: null, xCache: "HIT" })
    }
    expect(await ranged(`${proxy.url}r`, { range: "bytes=0-1" }, "HEAD")).toMatchObject({ status: 200, body: "", contentLength: "20" })
    expect(origin.requests).toHaveLength(1)
  })

  test("§15.5.17: a range past the end is a 416 with Content-Range: bytes */length", async () => {
    await using origin = startRangeOrigin()
    await using proxy = await startProxy({ origin: origin.url })
    await (await get(`${proxy.url}r`)).text()
    for (const range of ["bytes=20-", "bytes=99-100", "bytes=-0", "bytes=30-40,50-"]) {
      expect(await ranged(`${proxy.url}r`, { range })).toMatchObject({ status: 416, contentRange: "bytes */20", xCache: "HIT" })
    }
    expect(origin.requests).toHaveLength(1)
  })

  test("§13.1.5: If-Range with the stored strong ETag, or its Last-Modified when that is strong, gets the 206; anything else the whole 200", async () => {
    // Date a minute after Last-Modified: the date is a strong validator (§8.8.2.2).
    await using origin = startRangeOrigin({ date: "Tue, 01 Dec 2026 00:01:00 GMT" })
    await using weak = startRangeOrigin({ etag: 'W/"v1"', date: LAST_MODIFIED })
    await using proxy = await startProxy({ origin: origin.url, forceTtlSeconds: 600 })
    await using weakProxy = await startProxy({ origin: weak.url, forceTtlSeconds: 600 })
    await (await get(`${proxy.url}r`)).text()
    await (await get(`${weakProxy.url}r`)).text()
    const withIfRange = (url: string, ifRange: string) => ranged(url, { range: "bytes=0-1", "if-range": ifRange })
    expect(await withIfRange(`${proxy.url}r`, '"v1"')).toMatchObject({ status: 206, body: "01" })
    expect(await withIfRange(`${proxy.url}r`, LAST_MODIFIED)).toMatchObject({ status: 206, body: "01" })
    expect(await withIfRange(`${proxy.url}r`, '"v0"')).toMatchObject({ status: 200, body: BODY })
    expect(await withIfRange(`${proxy.url}r`, 'W/"v1"')).toMatchObject({ status: 200, body: BODY })
    expect(await withIfRange(`${proxy.url}r`, "Mon, 30 Nov 2026 00:00:00 GMT")).toMatchObject({ status: 200, body: BODY })
    // A weak ETag never passes the strong comparison; a Last-Modified equal to Date is weak.
    expect(await withIfRange(`${weakProxy.url}r`, 'W/"v1"')).toMatchObject({ status: 200, body: BODY })
    expect(await withIfRange(`${weakProxy.url}r`, LAST_MODIFIED)).toMatchObject({ status: 200, body: BODY })
    expect(origin.requests.length + weak.requests.length).toBe(2)
  })

  test("§13.2.2: If-None-Match is evaluated before Range: a matching tag is a 304", async () => {
    await using origin = startRangeOrigin()
    await using proxy = await startProxy({ origin: origin.url })
    await (await get(`${proxy.url}r`)).text()
    expect(await ranged(`${proxy.url}r`, { range: "bytes=0-1", "if-none-match": '"v1"' })).toMatchObject({ status: 304, body: "" })
  })

  test("a stale entry is revalidated first, then the range is served from it", async () => {
    freezeClock()
    await using origin = startOrigin((req) =>
      req.headers.has("if-none-match")
        ? new Response(null, { status: 304, headers: { etag: '"v1"', date: new Date().toUTCString() } })
        : new Response(BODY, { headers: { etag: '"v1"', "cache-control": "max-age=60", date: new Date().toUTCString() } }),
    )
    await using proxy = await startProxy({ origin: origin.url })
    await (await get(`${proxy.url}r`)).text()
    setSystemTime(Date.now() + 120_000)
    expect(await ranged(`${proxy.url}r`, { range: "bytes=3-4" })).toMatchObject({ status: 206, body: "34", xCache: "HIT" })
    expect(origin.requests[1]?.headers.get("range")).toBe("bytes=3-4")
  })

  test("§3.3: a range miss goes to the origin with its Range; the origin's 206 is passed on, not stored; a 200 for it is stored whole", async () => {
    await using origin = startOrigin((req) => {
      const range = req.headers.get("range")
      const headers = { "cache-control": "max-age=600", etag: '"v1"' }
      if (new URL(req.url).pathname === "/partial" && range === "bytes=0-3")
        return new Response(BODY.slice(0, 4), { status: 206, headers: { ...headers, "content-range": "bytes 0-3/20" } })
      return new Response(BODY, { headers }) // an origin that ignores Range (§14.2 allows it)
    })
    await using proxy = await startProxy({ origin: origin.url })
    expect(await ranged(`${proxy.url}partial`, { range: "bytes=0-3" })).toMatchObject({
      status: 206,
      body: "0123",
      contentRange: "bytes 0-3/20",
      xCache: "MISS",
    })
    expect(await answer(`${proxy.url}partial`)).toMatchObject({ status: 200, xCache: "MISS", body: BODY })
    expect(await ranged(`${proxy.url}whole`, { range: "bytes=0-3" })).toMatchObject({ status: 200, body: BODY, xCache: "MISS" })
    expect(await ranged(`${proxy.url}whole`, { range: "bytes=4-5" })).toMatchObject({ status: 206, body: "45", xCache: "HIT" })
    expect(origin.requests.map((r) => r.headers.get("range"))).toEqual(["bytes=0-3", null, "bytes=0-3"])
  })

  test.skipIf(FAST_RUN)("from Redis, a range of a large body reads only the chunks it covers", async () => {
    const CHUNK = 256 * KB // the Redis store's chunk
    await using redis = await startRedis()
    await using origin = startOrigin(() => new Response(generatedBody(12, CHUNK), { headers: { "cache-control": "max-age=600" } }))
    await using proxy = await startProxy({ origin: origin.url, store: { kind: "redis", target: { single: redis.url } } })
    await proxy.cache.store.ready()
    await (await get(`${proxy.url}big`)).arrayBuffer()
    const redisCli = async (...args: string[]) => (await runCli(["redis-cli", "-p", String(redis.port), ...args])).stdout
    await redisCli("CONFIG", "RESETSTAT")
    const res = await get(`${proxy.url}big`, { range: `bytes=${5 * CHUNK + 10}-${6 * CHUNK + 9}` })
    expect([res.status, res.headers.get("x-cache")]).toEqual([206, "HIT"])
    const expected = new Uint8Array([...generatedChunk(5, CHUNK).subarray(10), ...generatedChunk(6, CHUNK).subarray(0, 10)])
    expect(Buffer.from(await res.arrayBuffer()).equals(expected)).toBe(true)
    // Two chunks of twelve, each read in part; no chunk read whole.
    const stats = await redisCli("INFO", "commandstats")
    expect(stats).toMatch(/cmdstat_getrange:calls=2,/)
    expect(stats).not.toMatch(/cmdstat_get:/)
  })

  // Bodies over 1 MiB are served from their file: under Bun by a Blob slice (sendfile from the
  // offset), under Node by reads of those bytes alone.
  test.each(RUNTIMES)("%s: a range of a large stored body, from its file, is exactly those bytes", async (_, command) => {
    const CHUNK = 256 * KB
    await using origin = startOrigin(() => new Response(generatedBody(12, CHUNK), { headers: { "cache-control": "max-age=600" } }))
    await using proxy = await startCliProxy(command, origin.url)
    await (await get(`${proxy.url}big`)).arrayBuffer()
    const whole = new Uint8Array(12 * CHUNK)
    for (let i = 0; i < 12; i++) whole.set(generatedChunk(i, CHUNK), i * CHUNK)
    for (const [range, start, end] of [
      [`bytes=${CHUNK - 3}-${2 * CHUNK + 4}`, CHUNK - 3, 2 * CHUNK + 5],
      ["bytes=-70000", whole.length - 70000, whole.length],
      [`bytes=${whole.length - 1}-`, whole.length - 1, whole.length],
    ] as const) {
      const res = await get(`${proxy.url}big`, { range })
      expect([res.status, res.headers.get("x-cache"), res.headers.get("content-range")]).toEqual([
        206,
        "HIT",
        `bytes ${start}-${end - 1}/${whole.length}`,
      ])
      expect(Buffer.from(await res.arrayBuffer()).equals(whole.subarray(start, end))).toBe(true)
    }
    expect(origin.requests).toHaveLength(1)
  })
})
