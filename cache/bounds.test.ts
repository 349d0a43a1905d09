/**
 * What a client or an origin can grow, through real HTTP, on the file store and on a real Redis:
 * the variants of one URL (`--max-variants`) and the tags of a response, whose index must go with
 * the entries it names.
 */
import { afterAll, describe, expect, test } from "bun:test"
import { randomUUID } from "node:crypto"
import { existsSync, statfsSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { answer, FAST_RUN, runCli, startForFile, startOrigin, startProxy, startRedis } from "../proxy/test.fixture.ts"
import type { ProxyOptions } from "../proxy.ts"
import { MAX_TAGS } from "./policy.ts"

const ADMIN = { port: 0, host: "127.0.0.1", token: undefined }
const ON_DISK: Partial<ProxyOptions> = { store: { kind: "file" } }

/** An origin whose answer varies on User-Agent and names it, fresh for ten minutes. */
function startUserAgentOrigin() {
  return startOrigin(
    (req) =>
      new Response(`for ${req.headers.get("user-agent")}`, {
        headers: { vary: "User-Agent", "cache-control": "max-age=600" },
      }),
  )
}

/** An origin tagging each path with `tags(path)` in Surrogate-Key. */
function startTaggingOrigin(tags: (path: string) => string[]) {
  return startOrigin(
    (req) =>
      new Response("tagged", {
        headers: { "cache-control": "max-age=600", "surrogate-key": tags(new URL(req.url).pathname).join(" ") },
      }),
  )
}

/** `count` distinct tags, each naming `path`. */
const tagsOf = (path: string, count: number) => Array.from({ length: count }, (_, n) => `${path.slice(1)}-${n}`)

async function admin<T>(proxy: { adminUrl: string | undefined }, path: string, body?: unknown): Promise<T> {
  const response = await fetch(proxy.adminUrl + path, {
    ...(body !== undefined && { method: "POST", body: JSON.stringify(body), headers: { "content-type": "application/json" } }),
  })
  expect(response.status).toBe(200)
  return (await response.json()) as T
}

const variantsOf = async (proxy: { adminUrl: string | undefined }, url: string) =>
  (await admin<{ variants: unknown[] }>(proxy, `/api/entry?url=${url}`)).variants.length

/** The file tier's figures, from the store itself (the admin API's are cached for a few seconds). */
const fileTier = async (proxy: Awaited<ReturnType<typeof startProxy>>) =>
  (await proxy.cache.store.stats()).find(({ tier }) => tier === "file")

/** The proxy with its admin listener, once its store can answer. */
async function startReadyProxy(options: Partial<ProxyOptions> & { origin: string }) {
  const proxy = await startProxy({ admin: ADMIN, ...options })
  await proxy.cache.store.ready()
  return proxy
}

/** The same rules over each store a proxy can be given: the disk, and Redis when it runs. */
function boundsOver(name: string, storeOptions: () => Partial<ProxyOptions>) {
  describe(name, () => {
    test("a client sending 200 distinct User-Agents leaves at most --max-variants variants; the newest is a HIT", async () => {
      await using origin = startUserAgentOrigin()
      await using proxy = await startReadyProxy({ origin: origin.url, ...storeOptions() })
      for (let n = 0; n < 200; n++) {
        const got = await answer(`${proxy.url}ua`, { "user-agent": `agent ${n}` })
        expect(got).toMatchObject({ status: 200, body: `for agent ${n}`, xCache: "MISS" })
      }
      expect(await variantsOf(proxy, "/ua")).toBe(64)
      expect(await answer(`${proxy.url}ua`, { "user-agent": "agent 199" })).toMatchObject({ body: "for agent 199", xCache: "HIT" })
      // The least recently used went first: the first agents' answers are fetched again.
      expect(await answer(`${proxy.url}ua`, { "user-agent": "agent 0" })).toMatchObject({ body: "for agent 0", xCache: "MISS" })
      expect(proxy.warnings).toEqual([])
    })

    test("--max-variants 2: a variant read recently stays, the least recently used goes", async () => {
      await using origin = startUserAgentOrigin()
      await using proxy = await startReadyProxy({ origin: origin.url, maxVariants: 2, ...storeOptions() })
      const agent = (name: string) => answer(`${proxy.url}two`, { "user-agent": name })
      await agent("a")
      await agent("b")
      expect(await agent("a")).toMatchObject({ xCache: "HIT" })
      await agent("c") // "b" is the least recently used
      expect(await agent("a")).toMatchObject({ body: "for a", xCache: "HIT" })
      expect(await agent("c")).toMatchObject({ body: "for c", xCache: "HIT" })
      expect(await agent("b")).toMatchObject({ body: "for b", xCache: "MISS" })
      expect(await variantsOf(proxy, "/two")).toBe(2)
      // The shared tier's figures (Redis keeps them as running totals) count the variants kept, not those gone.
      const shared = (await proxy.cache.store.stats()).find(({ tier }) => tier !== "memory")
      expect(shared?.entries).toBe(2)
    })

    test(`a response's tags beyond ${MAX_TAGS} are dropped with one warning; the entry keeps the first ${MAX_TAGS}`, async () => {
      await using origin = startTaggingOrigin((path) => tagsOf(path, 1000))
      await using proxy = await startReadyProxy({ origin: origin.url, ...storeOptions() })
      expect(await answer(`${proxy.url}many`)).toMatchObject({ status: 200, xCache: "MISS" })
      const { tags } = await admin<{ tags: string[] }>(proxy, "/api/entry?url=/many")
      expect(tags.sort()).toEqual(tagsOf("/many", MAX_TAGS).sort())
      expect(proxy.warnings.map(({ kind }) => kind)).toEqual(["tags"])
      expect(proxy.warnings[0]?.detail).toContain(`dropped ${1000 - MAX_TAGS}`)
      expect(await admin(proxy, "/api/purge", { tag: "many-0" })).toEqual({ purged: 1 })
      expect(await admin(proxy, "/api/purge", { tag: `many-${MAX_TAGS}` })).toEqual({ purged: 0 })
    })
  })
}

boundsOver("on disk", () => ON_DISK)

// The file's Redis outlives a test that times out (see startForFile).
const redis = await startForFile(startRedis)
afterAll(() => redis?.[Symbol.asyncDispose]())

describe.skipIf(FAST_RUN)("on Redis", () => {
  const onRedis = (storePrefix = `test-${randomUUID()}`): Partial<ProxyOptions> => ({
    store: { kind: "redis", target: { single: redis!.url } },
    storePrefix,
  })
  boundsOver("the rules", () => onRedis())

  test("no tag set outlives its entries: purged by tag, by URL or by prefix, Redis holds none", async () => {
    const storePrefix = `test-${randomUUID()}`
    await using origin = startTaggingOrigin((path) => [...tagsOf(path, 50), "shared"])
    await using proxy = await startReadyProxy({ origin: origin.url, ...onRedis(storePrefix) })
    const tagSets = async () =>
      (await runCli(["redis-cli", "-p", String(redis!.port), "--scan", "--pattern", `${storePrefix}:*:tag:*`])).stdout.trim()
    for (const path of ["/a", "/b", "/c", "/d"]) expect(await answer(proxy.url + path.slice(1))).toMatchObject({ xCache: "MISS" })
    expect((await tagSets()).split("\n")).toHaveLength(4 * 50 + 1)
    expect(await admin(proxy, "/api/purge", { tag: "a-0" })).toEqual({ purged: 1 })
    expect(await admin(proxy, "/api/purge", { url: "/b" })).toEqual({ purged: 1 })
    expect(await admin(proxy, "/api/purge", { prefix: "/" })).toEqual({ purged: 2 })
    expect(await tagSets()).toBe("")
    expect(proxy.warnings).toEqual([])
  })
})

describe("on disk, the tag index goes with its entries", () => {
  const BLOCK = statfsSync(tmpdir()).bsize

  test("purged by tag or by URL, the file tier returns to 0 bytes and no tag directory is left", async () => {
    await using origin = startTaggingOrigin((path) => [...tagsOf(path, MAX_TAGS - 1), "shared"])
    await using proxy = await startReadyProxy({ origin: origin.url, ...ON_DISK })
    for (const path of ["/a", "/b", "/c"]) await answer(proxy.url + path.slice(1))
    expect(await fileTier(proxy)).toMatchObject({ entries: 3 })
    expect(await admin(proxy, "/api/purge", { tag: "a-0" })).toEqual({ purged: 1 })
    expect(await admin(proxy, "/api/purge", { url: "/b" })).toEqual({ purged: 1 })
    expect(await admin(proxy, "/api/purge", { tag: "shared" })).toEqual({ purged: 1 })
    expect(await fileTier(proxy)).toMatchObject({ entries: 0, bytes: 0 })
    expect(existsSync(join(proxy.cacheDir, "v1", "tags"))).toBe(false)
    expect(proxy.warnings).toEqual([])
  })

  test("an entry evicted by --max-size takes its tags' index with it: the next ones are stored still", async () => {
    // Each entry's tags take a directory (a block) apiece: two entries' do not fit in 200 blocks.
    await using origin = startTaggingOrigin((path) => tagsOf(path, MAX_TAGS))
    await using proxy = await startReadyProxy({ origin: origin.url, ...ON_DISK, maxSize: 200 * BLOCK, memorySize: 1 })
    for (const path of ["/a", "/b", "/c", "/d"]) {
      expect(await answer(proxy.url + path.slice(1))).toMatchObject({ xCache: "MISS" })
      expect(await answer(proxy.url + path.slice(1))).toMatchObject({ xCache: "HIT" })
    }
    const tier = await fileTier(proxy)
    expect(tier).toMatchObject({ entries: 1 })
    expect(tier?.bytes).toBeLessThanOrEqual(200 * BLOCK)
    expect(await admin(proxy, "/api/purge", { tag: "a-0" })).toEqual({ purged: 0 })
    expect(await admin(proxy, "/api/purge", { tag: "d-0" })).toEqual({ purged: 1 })
    expect(await fileTier(proxy)).toMatchObject({ entries: 0, bytes: 0 })
  })
})
