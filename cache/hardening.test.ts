/**
 * What a hostile client or origin cannot make the cache store or share, through real HTTP: a real
 * origin on port 0, the real proxy on port 0.
 */
import { afterEach, describe, expect, setSystemTime, test } from "bun:test"
import { readFileSync, writeFileSync } from "node:fs"
import {
  answer,
  eventually,
  freezeClock,
  get,
  metaFiles,
  ownedDir,
  startDatedOrigin,
  startOrigin,
  startProxy,
  startRawOrigin,
  storeThrough,
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
