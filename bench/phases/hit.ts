/** The request path's phase (BENCH_ONLY=hit): HITs of two sizes against the ceiling, the MISS against the origin and a bare forwarder; and coalescing. */
import { join } from "node:path"
import {
  announce,
  assertRunning,
  BENCH_DIR,
  COALESCE_CLIENTS,
  checkSameBody,
  compareWithWrk,
  get,
  noteWrkErrors,
  type Server,
  type Servers,
  startServer,
  stopServer,
  warmUntilHit,
} from "../harness.ts"
import { errorRows, formatMs, formatRate, ratioRow, report } from "../report.ts"

/** HIT throughput and p99 for one body size, proxy against the ceiling. */
async function benchHit(servers: Servers, path: string, label: string, throughputFactor: number): Promise<void> {
  const measures = [`HIT ${label} throughput vs ceiling`, `HIT ${label} p99 latency vs ceiling`]
  try {
    const proxyUrl = servers.proxyUrl + path
    const ceilingUrl = servers.ceilingUrl + path
    await warmUntilHit(proxyUrl)
    await checkSameBody(proxyUrl, ceilingUrl)
    const [proxy, ceiling] = await compareWithWrk(proxyUrl, ceilingUrl)
    assertRunning(servers.proxy)
    const after = await get(proxyUrl)
    if (after.xCache !== "HIT") report.notes.push(`${proxyUrl} answered X-Cache: ${after.xCache} after the HIT runs`)
    report.raw.push({ target: `proxy ${path} (HIT)`, summary: proxy }, { target: `ceiling ${path}`, summary: ceiling })
    noteWrkErrors(`proxy ${path}`, proxy)
    report.rows.push(
      ratioRow(measures[0]!, proxy.requestsPerSecond, ceiling.requestsPerSecond, formatRate, "≥", throughputFactor),
      ratioRow(measures[1]!, proxy.p99Ms, ceiling.p99Ms, formatMs, "≤", 1.5),
    )
  } catch (error) {
    report.rows.push(...errorRows(measures, error))
  }
}

/** The MISS path: a no-store body fetched from the origin on every request, proxy against the origin itself. */
async function benchMiss(servers: Servers): Promise<void> {
  const measures = ["MISS no-store 1 KiB throughput vs direct origin", "MISS no-store 1 KiB p99 latency vs direct origin"]
  try {
    const proxyUrl = `${servers.proxyUrl}/nostore-1k`
    const originUrl = `${servers.originUrl}/nostore-1k`
    const first = await get(proxyUrl)
    const second = await get(proxyUrl)
    if (first.status !== 200 || second.xCache === "HIT")
      report.notes.push(
        `${proxyUrl} answered ${second.status} X-Cache: ${second.xCache}; a no-store response must not be served from the cache`,
      )
    const [proxy, origin] = await compareWithWrk(proxyUrl, originUrl)
    assertRunning(servers.proxy)
    report.raw.push({ target: "proxy /nostore-1k (MISS)", summary: proxy }, { target: "origin /nostore-1k", summary: origin })
    noteWrkErrors("proxy /nostore-1k", proxy)
    report.rows.push(
      ratioRow(measures[0]!, proxy.requestsPerSecond, origin.requestsPerSecond, formatRate, "≥", 0.4),
      ratioRow(measures[1]!, proxy.p99Ms, origin.p99Ms, formatMs, "≤", 2),
    )
  } catch (error) {
    report.rows.push(...errorRows(measures, error))
  }
}

/**
 * The same MISS against a bare fetch forwarder (bench/forwarder.ts): how much of the gap to the
 * origin is the proxy's own work, and how much is Bun's fetch, which every Bun proxy pays.
 */
async function benchMissAgainstForwarder(servers: Servers): Promise<void> {
  const measures = ["MISS no-store 1 KiB throughput vs bare fetch forwarder", "MISS no-store 1 KiB p99 latency vs bare fetch forwarder"]
  let forwarder: Server | undefined
  try {
    forwarder = await startServer("forwarder", [process.execPath, join(BENCH_DIR, "forwarder.ts"), servers.originUrl])
    const [proxy, bare] = await compareWithWrk(`${servers.proxyUrl}/nostore-1k`, `${forwarder.urls[0]}/nostore-1k`)
    assertRunning(servers.proxy)
    report.raw.push({ target: "forwarder /nostore-1k", summary: bare })
    report.rows.push(
      {
        ...ratioRow(measures[0]!, proxy.requestsPerSecond, bare.requestsPerSecond, formatRate, "≥", 0.85),
        target: "(info)",
        verdict: "INFO",
      },
      { ...ratioRow(measures[1]!, proxy.p99Ms, bare.p99Ms, formatMs, "≤", 1.5), target: "(info)", verdict: "INFO" },
    )
  } catch (error) {
    report.rows.push(...errorRows(measures, error))
  } finally {
    if (forwarder) await stopServer(forwarder)
  }
}

/** Many clients miss on one cold URL at once: the proxy should send the origin one request, not one per client. */
export async function benchCoalescing(servers: Servers): Promise<void> {
  const measures = [
    `Coalescing: origin requests for ${COALESCE_CLIENTS} concurrent cold GETs`,
    `Coalescing: ${COALESCE_CLIENTS} answers are 200 with the same body`,
  ]
  try {
    const id = crypto.randomUUID()
    const started = performance.now()
    const answers = await Promise.all(Array.from({ length: COALESCE_CLIENTS }, () => get(`${servers.proxyUrl}/slow-cold/${id}`)))
    const elapsedMs = performance.now() - started
    const { count } = JSON.parse((await get(`${servers.originUrl}/count/${id}`)).body) as { count: number }
    const ok = answers.filter((answer) => answer.status === 200 && answer.body === answers[0]!.body).length
    const xCaches = countBy(answers.map((answer) => answer.xCache ?? "none"))
    report.notes.push(
      `Coalescing: ${COALESCE_CLIENTS} GETs took ${elapsedMs.toFixed(0)} ms (origin answers after 200 ms); X-Cache: ${xCaches}`,
    )
    report.rows.push(
      { measure: measures[0]!, proxy: String(count), reference: "—", ratio: "—", target: "= 1", verdict: count === 1 ? "PASS" : "FAIL" },
      {
        measure: measures[1]!,
        proxy: `${ok}/${COALESCE_CLIENTS}`,
        reference: "—",
        ratio: "—",
        target: `${COALESCE_CLIENTS}/${COALESCE_CLIENTS}`,
        verdict: ok === COALESCE_CLIENTS ? "PASS" : "FAIL",
      },
    )
  } catch (error) {
    report.rows.push(...errorRows(measures, error))
  }
}

function countBy(values: string[]): string {
  const counts = new Map<string, number>()
  for (const value of values) counts.set(value, (counts.get(value) ?? 0) + 1)
  return [...counts].map(([value, count]) => `${value}×${count}`).join(", ")
}

/** The request path's figures: hits of two sizes and a miss, each against its reference. */
export async function benchHitPath(servers: Servers): Promise<void> {
  announce("HIT 1 KiB")
  await benchHit(servers, "/1k", "1 KiB", 0.85)
  announce("HIT 64 KiB")
  await benchHit(servers, "/64k", "64 KiB", 0.95)
  announce("MISS no-store")
  await benchMiss(servers)
  await benchMissAgainstForwarder(servers)
}
