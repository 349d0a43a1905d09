/** The listing phase (BENCH_ONLY=listing): scrapes and listings through the admin listener at 100,000 entries, file store and Redis. */
import { startRedis } from "../../cache/redis-server.fixture.ts"
import { fillCache, fillRedis } from "../fill.ts"
import {
  BenchError,
  config,
  DOWNLOAD_TIMEOUT_MS,
  get,
  MIB,
  makeTempDir,
  median,
  SERVER_CPU,
  type Server,
  type Servers,
  spawnChild,
  startServer,
  stopServer,
} from "../harness.ts"
import { errorRows, formatMs, report } from "../report.ts"

export const LISTING_ENTRIES = 100_000
/** Timed requests per figure; the median is reported. */
const ADMIN_REQUESTS = 5

/**
 * A scrape (/metrics), /api/stats and a prefix listing that matches nothing, through the admin
 * listener of a proxy whose store holds 100,000 entries: on the file store and on Redis. Each
 * must read counters and an index, not the store (target: under 50 ms each).
 */
export async function benchListing(servers: Servers): Promise<void> {
  const { originUrl } = servers
  const stores: [string, (dir: string) => Promise<{ flags: string[]; [Symbol.asyncDispose](): Promise<void> }>][] = [
    [
      "file store",
      async (dir) => {
        await fillCache(dir, originUrl, LISTING_ENTRIES)
        // Room for them all: the default bound (1 GiB) holds fewer than 100,000 entries of 3 blocks each.
        return { flags: ["--max-size", String(4096 * MIB)], [Symbol.asyncDispose]: async () => {} }
      },
    ],
    [
      "Redis",
      async () => {
        const redis = await startRedis([], { spawn: (argv) => spawnChild(SERVER_CPU, argv) })
        await fillRedis(redis.url, originUrl, LISTING_ENTRIES)
        return { flags: ["--store", redis.url], [Symbol.asyncDispose]: () => redis[Symbol.asyncDispose]() }
      },
    ],
  ]
  for (const [name, fill] of stores) {
    const measures = ["GET /metrics", "GET /api/stats", "GET /api/entries, a prefix matching nothing"].map(
      (what) => `${name}, ${LISTING_ENTRIES.toLocaleString("en-US")} entries: ${what}`,
    )
    let proxy: Server | undefined
    try {
      const dir = makeTempDir("listing")
      await using store = await fill(dir)
      const started = performance.now()
      proxy = await startServer("proxy", [
        ...config.proxyCommand,
        ...["--port", "0", "--origin", originUrl, "--cache-dir", dir, "--quiet", "--admin-port", "0", ...store.flags],
      ])
      // The ready line names the proxy, the origin, then the admin listener.
      const adminUrl = proxy.urls[2]
      if (!adminUrl) throw new BenchError("the proxy's ready line names no admin address")
      const countedMs = await waitForEntries(adminUrl, LISTING_ENTRIES, started)
      const paths = ["/metrics", "/api/stats", `/api/entries?prefix=${encodeURIComponent("/nothing-here/")}`]
      // The file store learns its keys in the background after its scan; a listing waits for that.
      const listedMs = await firstAnswer(adminUrl + paths[2], started)
      report.notes.push(
        `${name}: ${LISTING_ENTRIES.toLocaleString("en-US")} entries counted ${formatMs(countedMs)} after the start; the first listing answered ${formatMs(listedMs)} after the start`,
      )
      for (const [index, path] of paths.entries()) {
        const ms = median(await timedRequests(adminUrl + path, ADMIN_REQUESTS))
        report.rows.push({
          measure: measures[index]!,
          proxy: formatMs(ms),
          reference: "—",
          ratio: "—",
          target: "< 50 ms",
          verdict: ms < 50 ? "PASS" : "FAIL",
        })
      }
    } catch (error) {
      report.rows.push(...errorRows(measures, error))
    } finally {
      if (proxy) await stopServer(proxy)
    }
  }
}

/** Polls /api/stats until the store's tier counts `count` entries (the file store's scan is done); ms since `started`. */
async function waitForEntries(adminUrl: string, count: number, started: number): Promise<number> {
  const deadline = Date.now() + DOWNLOAD_TIMEOUT_MS
  while (Date.now() < deadline) {
    const stats = JSON.parse((await get(`${adminUrl}/api/stats`)).body) as { tiers: { tier: string; entries: number }[] }
    if (stats.tiers.some((tier) => tier.tier !== "memory" && tier.entries >= count)) return performance.now() - started
    await Bun.sleep(250)
  }
  throw new BenchError(`the store did not count ${count} entries within ${DOWNLOAD_TIMEOUT_MS / 1000} s`)
}

/** Asks for `url` once, waiting as long as a download may take: ms since `started` when it answered. */
async function firstAnswer(url: string, started: number): Promise<number> {
  const res = await fetch(url, { signal: AbortSignal.timeout(DOWNLOAD_TIMEOUT_MS) })
  await res.arrayBuffer()
  if (res.status !== 200) throw new BenchError(`${url} answered ${res.status}`)
  return performance.now() - started
}

async function timedRequests(url: string, count: number): Promise<number[]> {
  const times: number[] = []
  for (let i = 0; i < count; i++) {
    const started = performance.now()
    const answer = await get(url)
    if (answer.status !== 200) throw new BenchError(`${url} answered ${answer.status}`)
    times.push(performance.now() - started)
  }
  return times
}
