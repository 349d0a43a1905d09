/** The metrics phase (BENCH_ONLY=metrics): what counting requests for /metrics costs a hit. */
import { join } from "node:path"
import {
  assertRunning,
  BENCH_DIR,
  BenchError,
  children,
  compareWithWrk,
  noteWrkErrors,
  SERVER_CPU,
  type Server,
  type Servers,
  spawnChild,
  startProxy,
  stopServer,
  warmUntilHit,
} from "../harness.ts"
import { errorRows, formatMicros, formatMs, formatRate, ratioRow, report } from "../report.ts"

/**
 * What counting requests for /metrics costs a hit: HIT 1 KiB through a proxy with metrics on (an
 * admin listener) against the plain one, runs interleaved.
 */
export async function benchMetricsOverhead(servers: Servers): Promise<void> {
  const measures = [
    "HIT 1 KiB throughput, metrics on vs off",
    "HIT 1 KiB proxy CPU per request, metrics on vs off",
    "HIT 1 KiB p99 latency, metrics on vs off",
    "HIT 1 KiB CPU per hit in one process (no network), metrics on vs off",
  ]
  let counted: Server | undefined
  try {
    counted = await startProxy(servers.originUrl, ["--admin-port", "0"])
    const countedUrl = `${counted.urls[0]}/1k`
    const plainUrl = `${servers.proxyUrl}/1k`
    await warmUntilHit(countedUrl)
    await warmUntilHit(plainUrl)
    const [on, off] = await compareWithWrk(countedUrl, plainUrl, [counted.process.pid, servers.proxy.process.pid])
    assertRunning(counted)
    report.raw.push({ target: "proxy /1k (HIT), metrics on", summary: on }, { target: "proxy /1k (HIT), metrics off", summary: off })
    noteWrkErrors("proxy /1k with metrics", on)
    report.rows.push(
      ratioRow(measures[0]!, on.requestsPerSecond, off.requestsPerSecond, formatRate, "≥", 0.97),
      ratioRow(measures[1]!, on.cpuUsPerRequest ?? Number.NaN, off.cpuUsPerRequest ?? Number.NaN, formatMicros, "≤", 1.03),
      { ...ratioRow(measures[2]!, on.p99Ms, off.p99Ms, formatMs, "≤", 1.1), target: "(info)", verdict: "INFO" },
    )
    const inProcess = await metricsCpuInProcess()
    report.rows.push({
      ...ratioRow(measures[3]!, inProcess.onUs, inProcess.offUs, formatMicros, "≤", 1.03),
      target: "(info)",
      verdict: "INFO",
    })
    report.notes.push(
      `metrics add ${(inProcess.onUs - inProcess.offUs).toFixed(2)} µs of CPU to a hit answered in one process (bench/metrics-cpu.ts); a hit over the network costs the proxy ${off.cpuUsPerRequest?.toFixed(1)} µs`,
    )
  } catch (error) {
    report.rows.push(...errorRows(measures, error))
  } finally {
    if (counted) await stopServer(counted)
  }
}

/** bench/metrics-cpu.ts, pinned like a server: CPU µs per hit with metrics off and on, in one process. */
async function metricsCpuInProcess(): Promise<{ offUs: number; onUs: number }> {
  const child = spawnChild(SERVER_CPU, [process.execPath, join(BENCH_DIR, "metrics-cpu.ts")])
  const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited])
  children.delete(child)
  const line = stdout.split("\n").find((candidate) => candidate.startsWith("BENCH_RESULT "))
  if (code !== 0 || line === undefined)
    throw new BenchError(`bench/metrics-cpu.ts failed (exit ${code}): ${(stderr || stdout).trim().slice(-500)}`)
  return JSON.parse(line.slice("BENCH_RESULT ".length))
}
