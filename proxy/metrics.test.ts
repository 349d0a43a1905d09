/**
 * The Prometheus metrics, through real HTTP: counts after known traffic.
 */
import { afterEach, describe, expect, setSystemTime, test } from "bun:test"
import { answer, FAST_RUN, freezeClock, get, KB, startOrigin, startProxy, startRedis } from "./test.fixture.ts"

// Every test starts on the real clock, whatever the one before did with it.
afterEach(() => setSystemTime())

/** The value of one sample in Prometheus text, e.g. `caching_proxy_requests_total{cache="hit",status="2xx"}`; 0 when absent. */
function sample(text: string, series: string): number {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `))
  return line === undefined ? 0 : Number(line.slice(series.length + 1))
}

describe("Prometheus metrics: requests, origin fetches, failures and the store, counted only when asked for", () => {
  test("after known traffic: requests by outcome and status class, bytes by source, origin requests, store fill, process metrics", async () => {
    freezeClock()
    await using origin = startOrigin(async (req) => {
      const path = new URL(req.url).pathname
      if (path === "/ns") return new Response("nostore", { headers: { "cache-control": "no-store" } })
      if (path === "/r" && req.headers.get("if-none-match") === '"r1"')
        return new Response(null, { status: 304, headers: { etag: '"r1"' } })
      if (path === "/r")
        return new Response("rv", { headers: { etag: '"r1"', "cache-control": "max-age=1", date: new Date().toUTCString() } })
      if (path === "/c") await Bun.sleep(300) // long enough for the others to queue behind the first
      return new Response("hello", { headers: { "cache-control": "max-age=600" } })
    })
    await using proxy = await startProxy({ origin: origin.url, metrics: true })
    for (const path of ["a", "a", "a", "ns", "ns", "r"]) await (await get(`${proxy.url}${path}`)).text()
    setSystemTime(Date.now() + 2000) // /r is stale: the next request revalidates it
    expect(await answer(`${proxy.url}r`)).toMatchObject({ status: 200, body: "rv", xCache: "HIT" })
    const coalesced = await Promise.all(Array.from({ length: 5 }, () => answer(`${proxy.url}c`)))
    expect(coalesced.map((a) => a.body)).toEqual(Array(5).fill("hello"))
    expect(origin.count("/c")).toBe(1)

    const text = await proxy.metrics!.render()
    const requests = (cache: string, status = "2xx") => sample(text, `caching_proxy_requests_total{cache="${cache}",status="${status}"}`)
    expect([requests("hit"), requests("miss"), requests("pass"), requests("revalidated"), requests("coalesced")]).toEqual([2, 3, 2, 1, 4])
    expect(requests("stale") + requests("hit", "5xx")).toBe(0)
    // From the cache: two hits of "hello", the revalidated "rv", four coalesced "hello".
    expect(sample(text, 'caching_proxy_served_bytes_total{source="cache"}')).toBe(2 * 5 + 2 + 4 * 5)
    expect(sample(text, 'caching_proxy_served_bytes_total{source="origin"}')).toBe(5 + 2 * 7 + 2 + 5)
    expect(sample(text, 'caching_proxy_origin_requests_total{status="2xx"}')).toBe(5)
    expect(sample(text, 'caching_proxy_origin_requests_total{status="3xx"}')).toBe(1)
    expect(sample(text, "caching_proxy_origin_duration_seconds_count")).toBe(6)
    expect(sample(text, 'caching_proxy_request_duration_seconds_count{cache="hit"}')).toBe(2)
    expect(sample(text, 'caching_proxy_request_duration_seconds_bucket{cache="hit",le="+Inf"}')).toBe(2)
    expect(sample(text, 'caching_proxy_store_entries{tier="file"}')).toBe(3)
    expect(sample(text, 'caching_proxy_store_bytes{tier="file"}')).toBeGreaterThan(0)
    expect(text).toContain('caching_proxy_store_evictions_total{tier="memory"} 0')
    expect(text).toContain("# TYPE caching_proxy_requests_total counter")
    expect(sample(text, "process_resident_memory_bytes")).toBeGreaterThan(0)
    expect(text).not.toContain("caching_proxy_redis_connected")
    expect(proxy.metrics!.contentType).toStartWith("text/plain; version=0.0.4")
    // The inspector's chart: sixty 10-second buckets, oldest first, holding every request.
    const recent = proxy.metrics!.recent()
    expect(recent).toHaveLength(60)
    expect(recent.at(-1)!.at - recent[0]!.at).toBe(590_000)
    expect(recent.reduce((sum, b) => sum + b.requests, 0)).toBe(12)
    expect(recent.reduce((sum, b) => sum + b.hits, 0)).toBe(7)
  })

  test("origin failures are counted by reason (refused, timeout), and a purge by the method the admin API calls", async () => {
    const closed = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => new Response() })
    const closedUrl = closed.url.href
    closed.stop(true)
    await using down = await startProxy({ origin: closedUrl, metrics: true })
    expect((await answer(`${down.url}x`)).status).toBe(502)
    await using origin = startOrigin(async () => {
      await Bun.sleep(2000)
      return new Response("late")
    })
    await using slow = await startProxy({ origin: origin.url, metrics: true, timeoutSeconds: 0.2 })
    expect((await answer(`${slow.url}x`)).status).toBe(504)
    slow.metrics!.purged(3)
    const refused = await down.metrics!.render()
    expect(sample(refused, 'caching_proxy_origin_errors_total{reason="refused"}')).toBe(1)
    expect(sample(refused, 'caching_proxy_origin_requests_total{status="none"}')).toBe(1)
    expect(sample(refused, 'caching_proxy_requests_total{cache="miss",status="5xx"}')).toBe(1)
    const timedOut = await slow.metrics!.render()
    expect(sample(timedOut, 'caching_proxy_origin_errors_total{reason="timeout"}')).toBe(1)
    expect(sample(timedOut, "caching_proxy_purges_total")).toBe(1)
    expect(sample(timedOut, "caching_proxy_purged_entries_total")).toBe(3)
  })

  test.skipIf(FAST_RUN)("evictions from the disk tier are counted; a Redis store reports whether it is connected", async () => {
    await using origin = startOrigin(() => new Response("x".repeat(10 * KB), { headers: { "cache-control": "max-age=600" } }))
    await using proxy = await startProxy({ origin: origin.url, metrics: true, maxSize: 25 * KB })
    for (const path of ["e1", "e2", "e3", "e4"]) await (await get(`${proxy.url}${path}`)).text()
    expect(sample(await proxy.metrics!.render(), 'caching_proxy_store_evictions_total{tier="file"}')).toBeGreaterThanOrEqual(2)
    await using redis = await startRedis()
    await using shared = await startProxy({ origin: origin.url, metrics: true, store: { kind: "redis", target: { single: redis.url } } })
    await shared.cache.store.ready()
    expect(sample(await shared.metrics!.render(), "caching_proxy_redis_connected")).toBe(1)
  })

  test("without metrics (the default) createProxy counts nothing", async () => {
    await using origin = startOrigin(() => new Response("x"))
    await using proxy = await startProxy({ origin: origin.url })
    expect(proxy.metrics).toBeUndefined()
  })
})
