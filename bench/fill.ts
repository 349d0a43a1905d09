/** Fills a file store or a Redis with small entries as the proxy itself would store them (the start-up and listing phases). */

import type { Lifecycle, Store } from "../cache/store.ts"

const FILL_CONCURRENCY = 64

/** Writes `count` small entries, /entry/0 … /entry/N-1, as the proxy itself would store them. */
export async function fillCache(dir: string, originUrl: string, count: number): Promise<void> {
  const { FileStore, bunFiles } = await import("../cache/file-store.ts")
  const store = new FileStore({
    dir,
    maxBytes: Number.MAX_SAFE_INTEGER,
    files: bunFiles,
    warn: (kind, detail) => console.error(`bench: ${kind}: ${detail}`),
  })
  await store.ready()
  await fillStore(store, originUrl, count)
}

/** An entry's meta, described by the policy from a day-long max-age, as the proxy would describe the origin's answer. */
async function benchMeta() {
  const { describeResponse, responseControl, targetList } = await import("../cache/policy.ts")
  const now = Date.now()
  const headers = new Headers({ "content-type": "text/plain", "cache-control": "max-age=86400" })
  const policy = { defaultTtlMs: 0, forceTtlMs: 0, shareCookies: false, targetList: targetList([]), keepTagHeaders: false }
  return describeResponse(200, headers, responseControl(headers, policy.targetList), {}, now, now, policy)
}

/** Writes `count` small entries to Redis, /entry/0 … /entry/N-1, as the proxy would store them. */
export async function fillRedis(url: string, originUrl: string, count: number): Promise<void> {
  const { RedisStore } = await import("../cache/redis-store.ts")
  const store = new RedisStore({
    target: { single: url },
    prefix: "caching-proxy",
    warn: (kind, detail) => console.error(`bench: ${kind}: ${detail}`),
  })
  await store.ready()
  await fillStore(store, originUrl, count)
}

/** Puts `count` entries of 512 bytes into a ready store, FILL_CONCURRENCY at a time, then closes it. */
async function fillStore(store: Store & Lifecycle, originUrl: string, count: number): Promise<void> {
  const body = new TextEncoder().encode("x".repeat(512))
  const meta = await benchMeta()
  let next = 0
  const worker = async () => {
    for (let i = next++; i < count; i = next++) {
      await store.put(`GET ${originUrl}/entry/${i}`, meta, new Response(body).body as ReadableStream<Uint8Array>)
    }
  }
  await Promise.all(Array.from({ length: FILL_CONCURRENCY }, worker))
  await store.close()
}
