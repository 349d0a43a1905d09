/**
 * Range requests answered from the cache (RFC 9110 §14, cache/range.ts), through real HTTP.
 */
import { afterEach, beforeAll, describe, expect, setSystemTime, test } from "bun:test"
import {
  answer,
  buildNodeBundle,
  FAST_RUN,
  freezeClock,
  generatedBody,
  generatedChunk,
  get,
  KB,
  RUNTIMES,
  runCli,
  startCliProxy,
  startOrigin,
  startProxy,
  startRedis,
} from "../proxy/test.fixture.ts"

// Every test starts on the real clock, whatever the one before did with it.
afterEach(() => setSystemTime())

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
    // Two chunks of twelve, each read in part; no chunk read whole (the one GET reads the key's Vary name lists).
    const stats = await redisCli("INFO", "commandstats")
    expect(stats).toMatch(/cmdstat_getrange:calls=2,/)
    expect(stats).toMatch(/cmdstat_get:calls=1,/)
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
