/** Start-up on a cache of 100,000 entries against an empty one (in a full run only). */

import { fillCache } from "../fill.ts"
import { BenchError, config, get, makeTempDir, median, startServer, stopServer } from "../harness.ts"
import { errorRows, formatMs, ratioRow, report } from "../report.ts"

/**
 * Start-up on a cache of STARTUP_ENTRIES entries (written through the proxy's own FileStore) against
 * start-up on an empty one: the time to the ready line, and to the first HIT of a stored entry.
 * The store indexes sizes in the background and reads an entry only when it is asked for.
 */
export async function benchStartup(originUrl: string): Promise<void> {
  const measures = [
    `Start-up to listening, ${STARTUP_ENTRIES.toLocaleString("en-US")} entries vs empty cache`,
    `Start-up to first HIT, ${STARTUP_ENTRIES.toLocaleString("en-US")} entries vs empty cache`,
  ]
  try {
    const fullDir = makeTempDir("startup")
    await fillCache(fullDir, originUrl, STARTUP_ENTRIES)
    const emptyDir = makeTempDir("startup-empty")
    await fillCache(emptyDir, originUrl, 1)
    const times = { full: [] as StartupTime[], empty: [] as StartupTime[] }
    for (let i = 0; i < config.repeats; i++) {
      times.empty.push(await timeStartup(originUrl, emptyDir))
      times.full.push(await timeStartup(originUrl, fullDir))
    }
    const medianOf = (runs: StartupTime[], pick: (t: StartupTime) => number) => median(runs.map(pick))
    report.rows.push(
      ratioRow(
        measures[0]!,
        medianOf(times.full, (t) => t.listeningMs),
        medianOf(times.empty, (t) => t.listeningMs),
        formatMs,
        "≤",
        1.5,
      ),
      ratioRow(
        measures[1]!,
        medianOf(times.full, (t) => t.firstHitMs),
        medianOf(times.empty, (t) => t.firstHitMs),
        formatMs,
        "≤",
        1.5,
      ),
    )
  } catch (error) {
    report.rows.push(...errorRows(measures, error))
  }
}

export const STARTUP_ENTRIES = 100_000

interface StartupTime {
  listeningMs: number
  firstHitMs: number
}

async function timeStartup(originUrl: string, cacheDir: string): Promise<StartupTime> {
  const started = performance.now()
  const server = await startServer("proxy", [
    ...config.proxyCommand,
    "--port",
    "0",
    "--origin",
    originUrl,
    "--cache-dir",
    cacheDir,
    "--quiet",
  ])
  const listeningMs = performance.now() - started
  try {
    const hit = await get(`${server.urls[0]}/entry/0`)
    if (hit.xCache !== "HIT") throw new BenchError(`/entry/0 on a filled cache answered X-Cache: ${hit.xCache}, expected HIT`)
    return { listeningMs, firstHitMs: performance.now() - started }
  } finally {
    await stopServer(server)
  }
}
