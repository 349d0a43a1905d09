/**
 * A cache shared by several proxies on a real Redis (and a Redis Cluster), through real HTTP:
 * hits across proxies, invalidation, Redis failing and coming back, and every way to run the CLI.
 */
import { afterAll, afterEach, beforeAll, describe, expect, setSystemTime, test } from "bun:test"
import { randomUUID } from "node:crypto"
import { join } from "node:path"
import {
  answer,
  CLI,
  eventually,
  expectedSha256,
  FAST_RUN,
  freezeClock,
  get,
  isCached,
  MB,
  npmRun,
  type RedisServer,
  ROOT,
  runCli,
  sha256Of,
  startCli,
  startDatedOrigin,
  startOrigin,
  startProxy,
  startRedis,
  startRedisCluster,
  startStreamingOrigin,
} from "../proxy/test.fixture.ts"
import type { ProxyOptions } from "../proxy.ts"

// Every test starts on the real clock, whatever the one before did with it.
afterEach(() => setSystemTime())

describe.skipIf(FAST_RUN)("a shared store on Redis", () => {
  let redis: RedisServer
  beforeAll(async () => {
    redis = await startRedis()
  }, 20_000)
  afterAll(() => redis?.[Symbol.asyncDispose]())

  /** Options for proxies that share one cache on the test's Redis, in a namespace of their own. */
  const sharedStore = (storePrefix = `test-${randomUUID()}`) => ({
    store: { kind: "redis", target: { single: redis.url } } as const,
    storePrefix,
  })

  /** A proxy on the shared store, once it is connected and subscribed. */
  async function startSharedProxy(options: Partial<ProxyOptions> & { origin: string }) {
    const proxy = await startProxy(options)
    await proxy.cache.store.ready()
    return proxy
  }

  const redisCli = async (...args: string[]) => (await runCli(["redis-cli", "-p", String(redis.port), ...args])).stdout.trim()

  test("a response stored through one proxy is a HIT through another, with the same headers, bytes and Age", async () => {
    freezeClock()
    await using origin = startDatedOrigin({ "cache-control": "max-age=600", "x-from": "origin" })
    const shared = sharedStore()
    await using a = await startSharedProxy({ origin: origin.url, ...shared })
    await using b = await startSharedProxy({ origin: origin.url, ...shared })
    expect(await answer(`${a.url}shared`)).toMatchObject({ status: 200, body: "v1", xCache: "MISS" })
    setSystemTime(Date.now() + 5000)
    const response = await get(`${b.url}shared`)
    expect(await response.text()).toBe("v1")
    expect(response.headers.get("x-cache")).toBe("HIT")
    // Age from the stored times, not from when proxy b first saw it.
    expect(response.headers.get("age")).toBe("5")
    expect(response.headers.get("x-from")).toBe("origin")
    expect(origin.count("/shared")).toBe(1)
    expect([...a.warnings, ...b.warnings]).toEqual([])
  })

  test("200 concurrent requests for one cold URL spread over three proxies make exactly one origin request", async () => {
    await using origin = startOrigin(async () => {
      await Bun.sleep(300)
      return new Response("the one answer", { headers: { "cache-control": "max-age=600" } })
    })
    const shared = sharedStore()
    await using a = await startSharedProxy({ origin: origin.url, ...shared })
    await using b = await startSharedProxy({ origin: origin.url, ...shared })
    await using c = await startSharedProxy({ origin: origin.url, ...shared })
    const proxies = [a, b, c]
    const answers = await Promise.all(Array.from({ length: 200 }, (_, i) => answer(`${proxies[i % 3]!.url}cold`)))
    expect(origin.count("/cold")).toBe(1)
    expect(new Set(answers.map((a) => `${a.status} ${a.body}`))).toEqual(new Set(["200 the one answer"]))
  })

  test("an unsafe method through one proxy invalidates the entry for every proxy, memory tiers included", async () => {
    await using origin = startOrigin(
      (req, n) => new Response(req.method === "POST" ? "posted" : `v${n}`, { headers: { "cache-control": "max-age=600" } }),
    )
    const shared = sharedStore()
    await using a = await startSharedProxy({ origin: origin.url, ...shared })
    await using b = await startSharedProxy({ origin: origin.url, ...shared })
    await answer(`${a.url}item`)
    expect(await answer(`${b.url}item`)).toMatchObject({ xCache: "HIT", body: "v1" }) // now in b's memory tier too
    expect(await answer(`${a.url}item`, {}, { method: "POST", body: "x" })).toMatchObject({ body: "posted" })
    await eventually(async () => !(await isCached(`${b.url}item`)))
    expect(await answer(`${b.url}item`)).toMatchObject({ xCache: "MISS", body: "v3" })
  })

  test("64 MB stream through one proxy into Redis and come back byte-exact through another", async () => {
    await using origin = await startStreamingOrigin(64, MB)
    const shared = sharedStore()
    await using a = await startSharedProxy({ origin: origin.url, ...shared })
    await using b = await startSharedProxy({ origin: origin.url, ...shared })
    const expected = { hex: expectedSha256(64, MB), bytes: 64 * MB }
    expect(await sha256Of((await get(`${a.url}large`)).body)).toEqual(expected)
    const hit = await get(`${b.url}large`)
    expect(hit.headers.get("x-cache")).toBe("HIT")
    expect(await sha256Of(hit.body)).toEqual(expected)
    expect(origin.requests()).toBe(1)
  })

  test("a chunk deleted behind the proxies' back makes a miss and a whole body, never a short one", async () => {
    const large = (n: number) => String(n).repeat(2 * MB) // over what memory keeps: read from Redis each time
    await using origin = startOrigin((_, n) => new Response(large(n), { headers: { "cache-control": "max-age=600" } }))
    const shared = sharedStore()
    await using a = await startSharedProxy({ origin: origin.url, ...shared })
    await (await get(`${a.url}chunked`)).text()
    const [chunk] = (await redisCli("--scan", "--pattern", `${shared.storePrefix}:*:c:*:3`)).split("\n")
    expect(await redisCli("del", chunk!)).toBe("1")
    expect(await answer(`${a.url}chunked`)).toMatchObject({ xCache: "MISS", body: large(2) })
    expect(a.warnings.map((w) => w.kind)).toEqual(["broken-entry"])
  })

  test("Redis killed mid-run: requests still get the origin's answers (no 500), and caching resumes when it is back", async () => {
    await using own = await startRedis()
    await using origin = startOrigin((_, n) => new Response(`v${n}`, { headers: { "cache-control": "max-age=600" } }))
    await using proxy = await startSharedProxy({ origin: origin.url, store: { kind: "redis", target: { single: own.url } } })
    await answer(`${proxy.url}before`)
    await own.kill()
    for (const path of ["during", "during"]) expect(await answer(`${proxy.url}${path}`)).toMatchObject({ status: 200, xCache: "MISS" })
    expect(proxy.warnings.filter((w) => w.kind === "store-state")).toHaveLength(1) // the state change, once
    await own.start()
    await eventually(
      async () => (await answer(`${proxy.url}after`)).status === 200 && (await answer(`${proxy.url}after`)).xCache === "HIT",
      10_000,
    )
  })

  test("a Redis that stops answering holds a request about a second at most, once; caching resumes when it answers", async () => {
    await using own = await startRedis()
    await using origin = startOrigin((_, n) => new Response(`v${n}`, { headers: { "cache-control": "max-age=600" } }))
    // No memory tier: every hit is a read from Redis.
    const store = { kind: "redis", target: { single: own.url } } as const
    await using proxy = await startSharedProxy({ origin: origin.url, store, memorySize: 1 })
    await answer(`${proxy.url}a`)
    expect(await answer(`${proxy.url}a`)).toMatchObject({ xCache: "HIT", body: "v1" })
    own.pause()
    try {
      // The first request waits for one command's timeout (1 s), then goes to the origin; the
      // next ones skip Redis at once. Each command waited on in turn would take seconds each.
      const started = performance.now()
      for (const path of ["a", "b", "a"]) expect(await answer(`${proxy.url}${path}`)).toMatchObject({ status: 200, xCache: "MISS" })
      expect(performance.now() - started).toBeLessThan(2500)
      expect(proxy.warnings.filter((w) => w.kind === "store-state").map((w) => w.detail)).toEqual([
        expect.stringContaining("did not answer"),
      ])
    } finally {
      own.resume()
    }
    await eventually(async () => (await answer(`${proxy.url}a`)).xCache === "HIT", 10_000)
    expect(proxy.warnings.filter((w) => w.kind === "store-state").at(-1)?.detail).toContain("answers again")
  })

  test("a Cluster node killed and restarted: no 500 while it is down, and caching resumes on its slots", async () => {
    await using cluster = await startRedisCluster()
    await using origin = startOrigin((_, n) => new Response(`v${n}`, { headers: { "cache-control": "max-age=600" } }))
    await using proxy = await startSharedProxy({ origin: origin.url, store: { kind: "redis", target: { cluster: cluster.nodes } } })
    // Forty keys spread over the three nodes' slots: some are the stopped node's, whatever the hashing.
    const urls = Array.from({ length: 40 }, (_, i) => `${proxy.url}spread-${i}`)
    const [stopped] = cluster.servers
    await stopped!.kill()
    for (const url of urls) expect((await answer(url)).status).toBe(200)
    const repeats = await Promise.all(urls.map((url) => answer(url)))
    expect(repeats.every((outcome) => outcome.status === 200)).toBe(true)
    // The stopped node's keys could not be stored: they miss again (and the test is not vacuous).
    expect(repeats.filter((outcome) => outcome.xCache === "MISS").length).toBeGreaterThan(0)
    await stopped!.start() // rejoins with its slots (nodes.conf kept), empty
    await eventually(async () => {
      const outcomes = await Promise.all(urls.map((url) => answer(url)))
      return outcomes.every((outcome) => outcome.status === 200 && outcome.xCache === "HIT")
    }, 15_000)
  })

  test("Redis unreachable at start-up: the proxy starts and proxies, says so once, and caches once Redis is there", async () => {
    await using own = await startRedis()
    await own.kill()
    await using origin = startOrigin((_, n) => new Response(`v${n}`, { headers: { "cache-control": "max-age=600" } }))
    await using proxy = await startProxy({ origin: origin.url, store: { kind: "redis", target: { single: own.url } } })
    for (const n of [1, 2]) expect(await answer(`${proxy.url}early`)).toMatchObject({ status: 200, body: `v${n}`, xCache: "MISS" })
    expect(proxy.warnings.filter((w) => w.kind === "store-state")).toHaveLength(1)
    await own.start()
    await eventually(
      async () => (await answer(`${proxy.url}late`)).status === 200 && (await answer(`${proxy.url}late`)).xCache === "HIT",
      10_000,
    )
  })

  test("the standalone binary supports it: a HIT through a second binary on the same Redis", async () => {
    await npmRun("build")
    await using origin = startOrigin((_, n) => new Response(`v${n}`, { headers: { "cache-control": "max-age=600" } }))
    const shared = sharedStore()
    const binary = () =>
      startCli([
        join(ROOT, "dist", "caching-proxy"),
        "--port",
        "0",
        "--origin",
        origin.url,
        "--store",
        redis.url,
        "--store-prefix",
        shared.storePrefix,
      ])
    // A command waits for Redis before it says it listens: its first request already shares.
    await using a = await binary()
    await using b = await binary()
    expect(await answer(`${a.url}bin`)).toMatchObject({ xCache: "MISS", body: expect.stringMatching(/^v\d+$/) })
    expect(await answer(`${b.url}bin`)).toMatchObject({ xCache: "HIT" })
    expect(origin.count("/bin")).toBe(1)
  }, 120_000)

  test("--clear-cache clears this cache's namespace only: other keys in the same Redis stay", async () => {
    await using origin = startOrigin((_, n) => new Response(`v${n}`, { headers: { "cache-control": "max-age=600" } }))
    const shared = sharedStore()
    expect(await redisCli("set", "someone-else:key", "theirs")).toBe("OK")
    {
      await using proxy = await startSharedProxy({ origin: origin.url, ...shared })
      await answer(`${proxy.url}page`)
    }
    const cleared = await runCli([...CLI, "--clear-cache", "--store", redis.url, "--store-prefix", shared.storePrefix])
    expect(cleared).toMatchObject({ code: 0, stderr: "" })
    expect(await redisCli("get", "someone-else:key")).toBe("theirs")
    await using proxy = await startSharedProxy({ origin: origin.url, ...shared })
    expect(await answer(`${proxy.url}page`)).toMatchObject({ xCache: "MISS", body: "v2" })
  })

  test("under Node (the bundle): a HIT shared between two proxies, and no 500 while Redis is down", async () => {
    await npmRun("build:js")
    await using own = await startRedis()
    await using origin = startOrigin((_, n) => new Response(`v${n}`, { headers: { "cache-control": "max-age=600" } }))
    const nodeProxy = () => startCli(["node", join(ROOT, "dist", "cli.js"), "--port", "0", "--origin", origin.url, "--store", own.url])
    await using a = await nodeProxy()
    await using b = await nodeProxy()
    expect(await answer(`${a.url}node`)).toMatchObject({ xCache: "MISS" })
    expect(await answer(`${b.url}node`)).toMatchObject({ xCache: "HIT" })
    await own.kill()
    expect(await answer(`${b.url}other`)).toMatchObject({ status: 200, xCache: "MISS" })
    expect(origin.count("/node")).toBe(1)
  }, 60_000)

  test.each([
    ["redis-cluster://127.0.0.1", "--store must be file, redis://"],
    ["redis://", "--store must be file, redis://"],
    ["memcached://127.0.0.1:11211", "--store must be file, redis://"],
  ])("--store %s is refused with one line and exit code 2", async (store, message) => {
    const { stdout, stderr, code } = await runCli([...CLI, "--origin", "http://127.0.0.1:1", "--store", store])
    expect(code).toBe(2)
    expect(stderr).toContain(message)
    expect(stderr.trim().split("\n")).toHaveLength(1)
    expect(stdout).toBe("")
  })
})
