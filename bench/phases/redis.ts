/** The Redis phase (BENCH_ONLY=redis): the shared store's figures. */
import { join } from "node:path"
import { startRedis } from "../../cache/redis-server.fixture.ts"
import {
  BENCH_DIR,
  COALESCE_CLIENTS,
  checkSameBody,
  compareWithWrk,
  get,
  MIB,
  SERVER_CPU,
  type Server,
  spawnChild,
  startProxy,
  startServer,
  stopServer,
  warmUntilHit,
} from "../harness.ts"
import { errorRows, formatRate, ratioRow, report } from "../report.ts"
import { BIG_PROXY_FLAGS, download, rssRow } from "./big.ts"

async function redisCli(port: number, ...args: string[]): Promise<string> {
  const child = Bun.spawn(["redis-cli", "-p", String(port), ...args], { stdout: "pipe", stderr: "ignore" })
  const [out] = await Promise.all([new Response(child.stdout).text(), child.exited])
  return out.trim()
}

/**
 * The shared store on Redis: a HIT read from Redis (the memory tier kept cold) against a bare
 * server reading the same bytes from the same Redis; a HIT from the memory tier in front of Redis
 * against the ceiling; coalescing across three proxies; and 512 MiB through Redis with the
 * proxy's memory watched.
 */
export async function benchRedis(originUrl: string, bigOriginUrl: string, ceilingUrl: string): Promise<void> {
  const measures = [
    "Redis: HIT 1 KiB, memory tier cold, vs a bare server reading Redis",
    "Redis: HIT 1 KiB from the memory tier vs ceiling",
    `Redis: origin requests for ${COALESCE_CLIENTS} cold GETs over 3 proxies`,
    "Redis: 512 MiB MISS proxy RSS rise",
  ]
  const started: Server[] = []
  try {
    // The tests' launcher (a new port if another process takes the probed one), pinned with the servers.
    await using redis = await startRedis([], { spawn: (argv) => spawnChild(SERVER_CPU, argv) })
    const onRedis = ["--store", redis.url]
    const cold = await startProxy(originUrl, [...onRedis, "--memory-size", "1"])
    const warm = await startProxy(originUrl, onRedis)
    const reader = await startServer("redis-reader", [process.execPath, join(BENCH_DIR, "redis-reader.ts"), redis.url])
    started.push(cold, warm, reader)
    const body = await get(`${originUrl}/1k`)
    await redisCli(redis.port, "set", "bench:1k", body.body)
    await warmUntilHit(`${cold.urls[0]}/1k`)
    await warmUntilHit(`${warm.urls[0]}/1k`)
    await checkSameBody(`${cold.urls[0]}/1k`, `${reader.urls[0]}/1k`)
    const [fromRedis, bare] = await compareWithWrk(`${cold.urls[0]}/1k`, `${reader.urls[0]}/1k`)
    const [fromMemory, ceiling] = await compareWithWrk(`${warm.urls[0]}/1k`, `${ceilingUrl}/1k`)
    report.raw.push(
      { target: "proxy on Redis, memory cold /1k (HIT)", summary: fromRedis },
      { target: "redis-reader /1k", summary: bare },
      { target: "proxy on Redis, memory warm /1k (HIT)", summary: fromMemory },
      { target: "ceiling /1k (again)", summary: ceiling },
    )
    report.rows.push(
      ratioRow(measures[0]!, fromRedis.requestsPerSecond, bare.requestsPerSecond, formatRate, "≥", 0.8),
      ratioRow(measures[1]!, fromMemory.requestsPerSecond, ceiling.requestsPerSecond, formatRate, "≥", 0.85),
    )
    const third = await startProxy(originUrl, onRedis)
    started.push(third)
    const count = await coalescedOriginRequests(
      [cold, warm, third].map((proxy) => proxy.urls[0]!),
      originUrl,
    )
    report.rows.push({
      measure: measures[2]!,
      proxy: String(count),
      reference: "—",
      ratio: "—",
      target: "= 1",
      verdict: count === 1 ? "PASS" : "FAIL",
    })
    for (const server of started.splice(0)) await stopServer(server)
    const big = await startProxy(bigOriginUrl, [...onRedis, ...BIG_PROXY_FLAGS])
    started.push(big)
    const miss = await download(`${big.urls[0]}/big`, big.process.pid)
    report.rows.push(rssRow(measures[3]!, miss, 64 * MIB))
    report.notes.push(`Redis after storing 512 MiB: used_memory ${await redisInfo(redis.port, "used_memory_human")}`)
  } catch (error) {
    report.rows.push(...errorRows(measures, error))
  } finally {
    for (const server of started) await stopServer(server)
  }
}

/** 200 concurrent GETs for one cold URL, spread over the proxies: how many reached the origin. */
async function coalescedOriginRequests(proxyUrls: string[], originUrl: string): Promise<number> {
  const id = crypto.randomUUID()
  await Promise.all(Array.from({ length: COALESCE_CLIENTS }, (_, i) => get(`${proxyUrls[i % proxyUrls.length]}/slow-cold/${id}`)))
  return (JSON.parse((await get(`${originUrl}/count/${id}`)).body) as { count: number }).count
}

async function redisInfo(port: number, field: string): Promise<string> {
  const info = await redisCli(port, "info", "memory")
  return new RegExp(`^${field}:(.*)$`, "m").exec(info)?.[1]?.trim() ?? "unknown"
}
