/**
 * What metrics add to a hit, in CPU time, measured in one process: two proxies, metrics off and
 * on, answer the same 1 KiB hit from memory through `app.fetch`, in alternating rounds; the CPU
 * time per hit (process.cpuUsage, so time spent descheduled on a busy machine does not count) is
 * the median of each side's rounds. No network: the difference is the metrics' own work.
 *
 *   bun bench/metrics-cpu.ts     (bench/run.ts runs it in its metrics phase)
 *
 * Prints one line: BENCH_RESULT {"offUs":…,"onUs":…}
 */
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { TEST_OPTIONS } from "../proxy/test.fixture.ts"
import { createProxy, type ProxyOptions } from "../proxy.ts"
import { exitWhenOrphaned, fixedBody } from "./shared.ts"

const HITS_PER_ROUND = 20_000
const ROUNDS = 30
const BODY = fixedBody(1024)

exitWhenOrphaned()
const origin = Bun.serve({
  hostname: "127.0.0.1",
  port: 0,
  fetch: () => new Response(BODY, { headers: { "cache-control": "max-age=3600" } }),
})
const cacheDir = mkdtempSync(join(tmpdir(), "caching-proxy-bench-metrics-"))
// Quiet: what is measured is the metrics' cost, not the access log's.
const options: ProxyOptions = { ...TEST_OPTIONS, quiet: true, origin: origin.url.href.replace(/\/$/, ""), cacheDir }
const off = await createProxy({ ...options, cacheDir: join(cacheDir, "off") })
const on = await createProxy({ ...options, cacheDir: join(cacheDir, "on"), metrics: true })
// What Bun.serve hands the app besides the request: the proxy reads the client's address and the port.
const env = { port: 1, requestIP: () => ({ address: "127.0.0.1" }) }

type ProxyApp = typeof on.app

/** CPU µs per hit over one round. */
async function round(app: ProxyApp): Promise<number> {
  const before = process.cpuUsage()
  for (let i = 0; i < HITS_PER_ROUND; i++) {
    const response = app.fetch(new Request("http://127.0.0.1:1/1k"), env)
    if (response instanceof Promise) await response
  }
  const used = process.cpuUsage(before)
  return (used.user + used.system) / HITS_PER_ROUND
}

try {
  for (const proxy of [off, on]) {
    const first = await proxy.app.fetch(new Request("http://127.0.0.1:1/1k"), env)
    await first.arrayBuffer() // the miss that stores it; the rest are hits
    const hit = await proxy.app.fetch(new Request("http://127.0.0.1:1/1k"), env)
    if (hit.headers.get("x-cache") !== "HIT") throw new Error(`expected a HIT, got ${hit.headers.get("x-cache")}`)
  }
  const offRounds: number[] = []
  const onRounds: number[] = []
  for (let n = 0; n < ROUNDS; n++) {
    // Which side goes first alternates, so neither always runs on a warmer cache.
    const sides: [ProxyApp, number[]][] = [
      [off.app, offRounds],
      [on.app, onRounds],
    ]
    for (const [app, rounds] of n % 2 ? sides : sides.reverse()) rounds.push(await round(app))
  }
  console.log(`BENCH_RESULT ${JSON.stringify({ offUs: median(offRounds), onUs: median(onRounds) })}`)
} finally {
  await off.cache.close()
  await on.cache.close()
  origin.stop(true)
  rmSync(cacheDir, { recursive: true, force: true })
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)] as number
}
