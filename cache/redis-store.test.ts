/**
 * A cache shared by several proxies on a real Redis (and a Redis Cluster), through real HTTP:
 * hits across proxies, invalidation, Redis failing and coming back, and every way to run the CLI.
 */
import { afterAll, afterEach, describe, expect, setSystemTime, test } from "bun:test"
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
  ROOT,
  runCli,
  sha256Of,
  startCli,
  startDatedOrigin,
  startForFile,
  startOrigin,
  startProxy,
  startRedis,
  startRedisCluster,
  startStreamingOrigin,
} from "../proxy/test.fixture.ts"
import type { ProxyOptions } from "../proxy.ts"

// Every test starts on the real clock, whatever the one before did with it.
afterEach(() => setSystemTime())

// The file's Redis outlives a test that times out (see startForFile).
const redis = await startForFile(startRedis)
afterAll(() => redis?.[Symbol.asyncDispose]())

describe.skipIf(FAST_RUN)("a shared store on Redis", () => {
  /** Options for proxies that share one cache on the test's Redis, in a namespace of their own. */
  const sharedStore = (storePrefix = `test-${randomUUID()}`) => ({
    store: { kind: "redis", target: { single: redis!.url } } as const,
    storePrefix,
  })

  /** A proxy on the shared store, once it is connected and subscribed. */
  async function startSharedProxy(options: Partial<ProxyOptions> & { origin: string }) {
    const proxy = await startProxy(options)
    await proxy.cache.store.ready()
    return proxy
  }

  const redisCli = async (...args: string[]) => (await runCli(["redis-cli", "-p", String(redis!.port), ...args])).stdout.trim()

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
    // Within a few seconds of the restart (2.1-3.0 s measured under two CPU hogs). Before, a claim
    // granted after its request gave up held its key for --timeout (30 s): a request on it waited
    // that long, and this test until bun timed it out.
    await eventually(async () => {
      const outcomes = await Promise.all(urls.map((url) => answer(url)))
      return outcomes.every((outcome) => outcome.status === 200 && outcome.xCache === "HIT")
    }, 6000)
  }, 30_000) // a Cluster's start-up alone took 2-10 s on two busy cores

  test("a stuck Cluster node holds each request about a second at most, whichever node its key is on", async () => {
    await using cluster = await startRedisCluster()
    await using origin = startOrigin((_, n) => new Response(`v${n}`, { headers: { "cache-control": "max-age=600" } }))
    const store = { kind: "redis", target: { cluster: cluster.nodes } } as const
    // No memory tier: every request reads Redis. Keys spread over the three nodes' slots.
    await using a = await startSharedProxy({ origin: origin.url, store, memorySize: 1 })
    await using b = await startSharedProxy({ origin: origin.url, store, memorySize: 1 })
    const [stuck] = cluster.servers
    stuck!.pause() // as a node that stops answering: connections open, no reply
    try {
      const took: number[] = []
      for (let round = 0; round < 2; round++)
        await Promise.all(
          // Ten keys a round for each proxy (about three on the stuck node): enough to cover every
          // node, few enough that forty requests in one process do not add their own delay to the
          // bound. Each proxy its own keys: one waiting on the other's claim is another case
          // (docs/known-limits.md).
          [a, b].flatMap((proxy, n) =>
            Array.from({ length: 10 }, (_, i) => `stuck-${n}-${i}`).map(async (path) => {
              const started = performance.now()
              expect((await answer(`${proxy.url}${path}`)).status).toBe(200)
              took.push(performance.now() - started)
            }),
          ),
        )
      // About a second (one bounded wait), never two: before, requests took 2.1-2.4 s here.
      expect(Math.max(...took)).toBeLessThan(1800)
    } finally {
      stuck!.resume()
    }
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
        redis!.url,
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
    const cleared = await runCli([...CLI, "--clear-cache", "--store", redis!.url, "--store-prefix", shared.storePrefix])
    expect(cleared).toEqual({
      code: 0,
      stderr: "",
      stdout: `caching-proxy: cleared Redis at 127.0.0.1:${redis!.port} (keys ${shared.storePrefix}:*)\n`,
    })
    expect(await redisCli("get", "someone-else:key")).toBe("theirs")
    await using proxy = await startSharedProxy({ origin: origin.url, ...shared })
    expect(await answer(`${proxy.url}page`)).toMatchObject({ xCache: "MISS", body: "v2" })
  })

  test("the generation key evicted after --clear-cache (as maxmemory may) reads as everything stale, never as nothing cleared", async () => {
    await using origin = startOrigin((_, n) => new Response(`v${n}`, { headers: { "cache-control": "max-age=600" } }))
    const shared = sharedStore()
    {
      await using before = await startSharedProxy({ origin: origin.url, ...shared })
      expect(await answer(`${before.url}page`)).toMatchObject({ xCache: "MISS", body: "v1" })
    }
    expect((await runCli([...CLI, "--clear-cache", "--store", redis!.url, "--store-prefix", shared.storePrefix])).code).toBe(0)
    expect(await redisCli("del", `${shared.storePrefix}:generation`)).toBe("1")
    await using after = await startSharedProxy({ origin: origin.url, ...shared })
    expect(await answer(`${after.url}page`)).toMatchObject({ xCache: "MISS", body: "v2" })
    expect(await answer(`${after.url}page`)).toMatchObject({ xCache: "HIT", body: "v2" })
  })

  test.each([
    ["unreachable", "redis://"],
    ["not answering (stopped)", "redis://"],
    ["an unreachable Cluster seed", "redis-cluster://"],
  ])("--clear-cache with a Redis %s gives up within seconds: one line, exit code 1", async (state, scheme) => {
    await using own = await startRedis()
    if (state.includes("stopped")) own.pause()
    else await own.kill()
    try {
      const started = performance.now()
      const { code, stdout, stderr } = await runCli([...CLI, "--clear-cache", "--store", `${scheme}127.0.0.1:${own.port}`])
      expect(performance.now() - started).toBeLessThan(10_000)
      expect({ code, stdout }).toEqual({ code: 1, stdout: "" })
      expect(stderr).toStartWith(`caching-proxy: could not clear Redis at 127.0.0.1:${own.port} (keys caching-proxy:*): `)
      expect(stderr.trim().split("\n")).toHaveLength(1)
    } finally {
      own.resume()
    }
  })

  test("redis:// aimed at a Cluster node is recognised: one line saying to use redis-cluster://, at start and from --clear-cache", async () => {
    await using cluster = await startRedisCluster()
    const node = `127.0.0.1:${cluster.nodes[0]!.port}`
    const advice = `Redis at ${node} is a Cluster node: use --store redis-cluster://${node}`
    const started = await runCli([...CLI, "--port", "0", "--origin", "http://127.0.0.1:1", "--store", `redis://${node}`])
    // The running proxy's line carries its time; --clear-cache, a one-off command, says it plainly.
    expect(started).toEqual({ code: 1, stdout: "", stderr: expect.stringMatching(/^\S+Z caching-proxy: /) })
    expect(started.stderr.replace(/^\S+Z /, "")).toBe(`caching-proxy: ${advice}\n`)
    const cleared = await runCli([...CLI, "--clear-cache", "--store", `redis://${node}`])
    expect(cleared).toEqual({
      code: 1,
      stdout: "",
      stderr: `caching-proxy: could not clear Redis at ${node} (keys caching-proxy:*): ${advice}\n`,
    })
  })

  test("rediss:// aimed at a server without TLS is named as such in one line, at start and from --clear-cache", async () => {
    const server = `127.0.0.1:${redis!.port}`
    const advice = `Redis at ${server} does not speak TLS: use --store redis://${server}, or the server's TLS port`
    const started = await runCli([...CLI, "--port", "0", "--origin", "http://127.0.0.1:1", "--store", `rediss://${server}`])
    // The running proxy's line carries its time; --clear-cache, a one-off command, says it plainly.
    expect(started).toEqual({ code: 1, stdout: "", stderr: expect.stringMatching(/^\S+Z caching-proxy: /) })
    expect(started.stderr.replace(/^\S+Z /, "")).toBe(`caching-proxy: ${advice}\n`)
    const cleared = await runCli([...CLI, "--clear-cache", "--store", `rediss://${server}`])
    expect(cleared).toEqual({
      code: 1,
      stdout: "",
      stderr: `caching-proxy: could not clear Redis at ${server} (keys caching-proxy:*): ${advice}\n`,
    })
  })

  /** A proxy as its own process on the shared store, to be killed as a crash would. */
  const startDyingProxy = (originUrl: string, storePrefix: string) =>
    startCli([...CLI, "--port", "0", "--origin", originUrl, "--store", redis!.url, "--store-prefix", storePrefix])
  const crash = async (proxy: Awaited<ReturnType<typeof startCli>>) => {
    process.kill(-proxy.child.pid, "SIGKILL")
    await proxy.child.exited
  }

  test("a proxy killed mid-fetch holds the URL for the other proxies about a second, not for --timeout", async () => {
    await using origin = startOrigin((_, n) =>
      n === 1 ? new Promise<Response>(() => {}) : new Response(`v${n}`, { headers: { "cache-control": "max-age=600" } }),
    )
    const shared = sharedStore()
    await using dying = await startDyingProxy(origin.url, shared.storePrefix)
    void fetch(`${dying.url}slow`).catch(() => undefined) // cut by the crash
    await eventually(() => origin.count("/slow") === 1)
    await crash(dying)
    await using other = await startSharedProxy({ origin: origin.url, ...shared, timeoutSeconds: 10 })
    const started = performance.now()
    expect(await answer(`${other.url}slow`)).toMatchObject({ status: 200, body: "v2", xCache: "MISS" })
    expect(performance.now() - started).toBeLessThan(3000)
  })

  test("a write cut by a crash leaves chunks that expire within a minute; a whole entry's live as long as it does", async () => {
    await using origin = startOrigin((req) => {
      const whole = new URL(req.url).pathname === "/whole"
      const body = new ReadableStream<Uint8Array>({
        start(controller) {
          controller.enqueue(new Uint8Array(MB).fill(7))
          if (whole) controller.close() // else: the origin stalls, the body unfinished
        },
      })
      return new Response(body, { headers: { "cache-control": "max-age=600" } })
    })
    const shared = sharedStore()
    const chunkTtls = async (pattern: string) => {
      const keys = (await redisCli("--scan", "--pattern", `${shared.storePrefix}:*:c:${pattern}`)).split("\n").filter(Boolean)
      return Promise.all(keys.map(async (key) => Number(await redisCli("pttl", key))))
    }
    {
      await using dying = await startDyingProxy(origin.url, shared.storePrefix)
      const reading = fetch(`${dying.url}cut`).then((response) => response.arrayBuffer().catch(() => undefined))
      await eventually(async () => (await chunkTtls("*")).length === 4)
      await crash(dying)
      await reading.catch(() => undefined)
    }
    const cut = await chunkTtls("*")
    expect(cut).toHaveLength(4)
    for (const ttl of cut) expect(ttl).toBeWithin(1, 60_001)
    await using proxy = await startSharedProxy({ origin: origin.url, ...shared })
    expect((await answer(`${proxy.url}whole`)).body).toHaveLength(MB)
    const all = await chunkTtls("*")
    expect(all).toHaveLength(8)
    expect(all.filter((ttl) => ttl > 600_000)).toHaveLength(4)
  })

  test("a message on the channel that is not the proxies' own is ignored, said once: the proxy keeps serving", async () => {
    await using origin = startOrigin((_, n) => new Response(`v${n}`, { headers: { "cache-control": "max-age=600" } }))
    const shared = sharedStore()
    await using proxy = await startSharedProxy({ origin: origin.url, ...shared })
    await answer(`${proxy.url}page`)
    for (const message of ["not json", "null", "42", '{"type":"changed"}', '{"type":"changed","key":7}', "[]"])
      expect(await redisCli("publish", `${shared.storePrefix}:events`, message)).toBe("1")
    await eventually(() => proxy.warnings.length > 0)
    expect(await answer(`${proxy.url}page`)).toMatchObject({ status: 200, xCache: "HIT", body: "v1" })
    expect(proxy.warnings).toEqual([{ kind: "store-connection", detail: expect.stringContaining('"not json"') }])
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
    // A message that is not an event crashed the Node build: it is ignored there too.
    const published = await runCli(["redis-cli", "-p", String(own.port), "publish", "caching-proxy:events", "null"])
    expect(published.stdout.trim()).toBe("2")
    expect(await answer(`${b.url}node`)).toMatchObject({ xCache: "HIT" })
    await own.kill()
    expect(await answer(`${b.url}other`)).toMatchObject({ status: 200, xCache: "MISS" })
    expect(origin.count("/node")).toBe(1)
  }, 60_000)

  test("a refused --store or CACHING_PROXY_STORE never shows the password it holds", async () => {
    const store = "redis://admin:s3cret-pass@127.0.0.1:6379/not-a-db"
    const fromFlag = await runCli([...CLI, "--origin", "http://127.0.0.1:1", "--store", store])
    const fromEnvironment = await runCli([...CLI, "--origin", "http://127.0.0.1:1"], undefined, { CACHING_PROXY_STORE: store })
    expect([fromFlag.code, fromEnvironment.code]).toEqual([2, 2])
    expect(fromFlag.stderr).toContain(
      '--store must be file, redis://host:port[/db], rediss://… or redis-cluster://host:port[,host:port…] (got "redis://***@127.0.0.1:6379/not-a-db")',
    )
    expect(fromEnvironment.stderr).toStartWith("caching-proxy: CACHING_PROXY_STORE must be file, redis://")
    expect(fromEnvironment.stderr).toContain('(got "redis://***@127.0.0.1:6379/not-a-db")')
    for (const { stderr } of [fromFlag, fromEnvironment]) expect(stderr).not.toContain("s3cret")
  })

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
