/** The 512 MiB phase (BENCH_ONLY=big): downloads through the proxy with its memory watched, also used by the Redis and Node phases. */
import { readFileSync } from "node:fs"
import {
  assertRunning,
  BenchError,
  config,
  DOWNLOAD_TIMEOUT_MS,
  KIB,
  MIB,
  noteProxyStderr,
  type Server,
  startProxy,
  stopServer,
} from "../harness.ts"
import { errorRows, formatSpeed, type Row, ratioRow, report } from "../report.ts"

const BIG_BYTES = 512 * MIB

const formatMib = (bytes: number) => `${(bytes / MIB).toFixed(1)} MiB`
/** Big enough to store /big, so the HIT run really is served from the cache. */
export const BIG_PROXY_FLAGS = ["--max-entry-size", String(1024 * MIB), "--max-size", String(2048 * MIB)]
const RSS_SAMPLE_MS = 50

interface Download {
  bytes: number
  mibPerSecond: number
  xCache: string | null
  contentLength: string | null
  /** Highest VmRSS of the sampled process during the download, over its VmRSS just before. */
  rssRiseBytes?: number
  baselineRssBytes?: number
}

/** VmRSS of a process in bytes, from /proc (Linux only). */
function readRss(pid: number): number {
  const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))
  if (!match) throw new BenchError(`no VmRSS in /proc/${pid}/status`)
  return Number(match[1]) * KIB
}

/**
 * Downloads url, counting and discarding the bytes. With a pid, samples that process's RSS
 * every RSS_SAMPLE_MS meanwhile: a proxy that buffers the body shows it here.
 */
export async function download(url: string, pid?: number): Promise<Download> {
  const baseline = pid === undefined ? 0 : readRss(pid)
  let peak = baseline
  const sampler = pid === undefined ? undefined : setInterval(() => (peak = Math.max(peak, readRss(pid))), RSS_SAMPLE_MS)
  try {
    const started = performance.now()
    const response = await fetch(url, { signal: AbortSignal.timeout(DOWNLOAD_TIMEOUT_MS) })
    if (response.status !== 200 || !response.body) throw new BenchError(`GET ${url} answered ${response.status}`)
    let bytes = 0
    for await (const chunk of response.body) bytes += chunk.byteLength
    const seconds = (performance.now() - started) / 1000
    if (pid !== undefined) peak = Math.max(peak, readRss(pid))
    if (bytes !== BIG_BYTES) throw new BenchError(`GET ${url} returned ${bytes} bytes, expected ${BIG_BYTES}`)
    return {
      bytes,
      mibPerSecond: bytes / MIB / seconds,
      xCache: response.headers.get("x-cache"),
      contentLength: response.headers.get("content-length"),
      ...(pid === undefined ? {} : { rssRiseBytes: peak - baseline, baselineRssBytes: baseline }),
    }
  } finally {
    clearInterval(sampler)
  }
}

/**
 * 512 MiB through a proxy allowed to store it: direct, then MISS, then HIT, with the proxy's memory
 * watched. `command` starts another build of the proxy, whose measures are named after `label`.
 */
export async function benchBig(bigOriginUrl: string, command = config.proxyCommand, label = ""): Promise<void> {
  const measures = [
    `${label}512 MiB MISS throughput vs direct origin`,
    `${label}512 MiB HIT throughput vs direct origin`,
    `${label}512 MiB MISS proxy RSS rise`,
    `${label}512 MiB HIT proxy RSS rise`,
  ]
  let proxy: Server | undefined
  try {
    // Unmeasured first pass: warms this driver's read loop and the origin, so that the reference
    // is not a cold-JIT figure. (The proxy gets no such pass: it would fill the cache before the MISS.)
    await download(`${bigOriginUrl}/big`)
    const direct = await download(`${bigOriginUrl}/big`)
    if (direct.contentLength !== String(BIG_BYTES))
      report.notes.push(`origin /big came without Content-Length ${BIG_BYTES} (got ${direct.contentLength})`)
    proxy = await startProxy(bigOriginUrl, BIG_PROXY_FLAGS, { command })
    const pid = proxy.process.pid
    const proxyUrl = `${proxy.urls[0]}/big`
    const miss = await download(proxyUrl, pid)
    assertRunning(proxy)
    if (miss.xCache !== "MISS") report.notes.push(`first GET /big through the proxy answered X-Cache: ${miss.xCache}, expected MISS`)
    if (miss.contentLength !== String(BIG_BYTES))
      report.notes.push(`/big through the proxy (MISS) came without Content-Length (got ${miss.contentLength})`)
    let hit = await download(proxyUrl, pid)
    if (hit.xCache !== "HIT") {
      // The proxy may commit the stored body a moment after the MISS finished: give it one more chance.
      report.notes.push(`second GET /big through the proxy answered X-Cache: ${hit.xCache}; retried after 2 s`)
      await Bun.sleep(2000)
      hit = await download(proxyUrl, pid)
      if (hit.xCache !== "HIT")
        report.notes.push(`third GET /big answered X-Cache: ${hit.xCache} too: the "HIT" figures below are not cache hits`)
    }
    if (hit.contentLength !== String(BIG_BYTES))
      report.notes.push(`/big through the proxy (HIT) came without Content-Length (got ${hit.contentLength})`)
    assertRunning(proxy)
    report.rows.push(
      ratioRow(measures[0]!, miss.mibPerSecond, direct.mibPerSecond, formatSpeed, "≥", 0.5),
      ratioRow(measures[1]!, hit.mibPerSecond, direct.mibPerSecond, formatSpeed, "≥", 1.5),
      rssRow(measures[2]!, miss, 64 * MIB),
      rssRow(measures[3]!, hit),
    )
  } catch (error) {
    report.rows.push(...errorRows(measures, error))
  } finally {
    if (proxy) {
      noteProxyStderr(proxy)
      await stopServer(proxy)
    }
  }
}

/** With a limit: PASS/FAIL against it. Without: reported for information only. */
export function rssRow(measure: string, result: Download, limitBytes?: number): Row {
  const rise = result.rssRiseBytes ?? NaN
  return {
    measure,
    proxy: `+${formatMib(rise)}`,
    reference: `baseline ${formatMib(result.baselineRssBytes ?? NaN)}`,
    ratio: "—",
    target: limitBytes === undefined ? "(info)" : `≤ ${formatMib(limitBytes)}`,
    verdict: limitBytes === undefined ? "INFO" : rise <= limitBytes ? "PASS" : "FAIL",
  }
}
