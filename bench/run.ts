/**
 * caching-proxy benchmark: `bun bench/run.ts` (or `npm run bench`). Not part of the test suite.
 *
 * Starts its own origin (bench/origin.ts), ceiling (bench/ceiling.ts) and proxy, sends traffic to
 * 127.0.0.1 only, prints a Markdown table of proxy vs reference figures with PASS/FAIL against the
 * targets, writes it to bench/results.md, and stops everything it started, on error and on Ctrl-C too.
 *
 * Environment:
 *   BENCH_DURATION   length of each wrk run, as wrk takes it (10s, 1m) or plain seconds. Default 10s.
 *   BENCH_REPEATS    wrk runs per figure; the median is reported. Default 3.
 *   BENCH_ONLY       run one phase only: "hit" (HIT 1 KiB, 64 KiB and MISS), "big" (512 MiB),
 *                    "metrics" (HIT 1 KiB with metrics on and off), "redis" (the Redis store's
 *                    figures), "node" (the Node build, dist/cli.js, against bare node:http
 *                    servers), "log" (HIT 1 KiB with the access log on and off, text and json,
 *                    Bun and Node), "listing" (a scrape and an empty prefix listing at 100,000
 *                    entries, file store and Redis) or "workers" (--workers 2 against 1, beside
 *                    nginx's worker_processes 2 against 1). Default: all.
 *   BENCH_PROXY_CMD  command that starts the proxy; the proxy flags are appended. It must exec the
 *                    server itself (no wrapping shell): its pid is the one whose memory is sampled.
 *                    Default: `<this bun> <repo>/proxy.ts`.
 *
 * Servers run pinned to CPU 0, wrk and this driver to CPU 1 (when taskset exists and there are two
 * CPUs), so client and server do not steal each other's cycles and the figures repeat. The workers
 * phase pins nothing: its point is what a second process gains on the cores it shares with wrk.
 *
 * This file is the driver: the environment, which phases run, and the results table. Each phase is
 * in bench/phases/; what they share (children, wrk runs, pinning, CPU time from /proc, HTTP checks)
 * in bench/harness.ts, the report's rows in bench/report.ts, the cache fillers in bench/fill.ts.
 */
import { existsSync, writeFileSync } from "node:fs"
import { availableParallelism, cpus } from "node:os"
import { join } from "node:path"
import {
  announce,
  BENCH_DIR,
  BenchError,
  CLIENT_CPU,
  type Config,
  cleanUp,
  config,
  installExitHandlers,
  MACHINE_LOAD,
  noteProxyStderr,
  REPO_DIR,
  SERVER_CPU,
  type Server,
  type Servers,
  startProxy,
  startServer,
  stopping,
  stopServer,
  useConfig,
  WRK_CONNECTIONS,
  WRK_THREADS,
} from "./harness.ts"
import { benchBig } from "./phases/big.ts"
import { benchCoalescing, benchHitPath } from "./phases/hit.ts"
import { benchListing, LISTING_ENTRIES } from "./phases/listing.ts"
import { benchLogCost } from "./phases/log.ts"
import { benchMetricsOverhead } from "./phases/metrics.ts"
import { benchNode } from "./phases/node.ts"
import { benchRedis } from "./phases/redis.ts"
import { benchStartup, STARTUP_ENTRIES } from "./phases/startup.ts"
import { benchWorkers } from "./phases/workers.ts"
import { formatMs, formatRate, report } from "./report.ts"

// ───────────────────────────── settings ─────────────────────────────

/** Time left to the phases that are not wrk runs: startups, coalescing, four 512 MiB downloads, filling a 100,000-entry cache. */
const FIXED_BUDGET_SECONDS = 600

/** The settings, with `only` checked against the phases BENCH_ONLY can pick. */
function readConfig(): Config & { only: keyof typeof ONLY_PHASES | undefined } {
  const durationSeconds = parseDuration(process.env.BENCH_DURATION ?? "10s")
  const repeats = Number(process.env.BENCH_REPEATS ?? "3")
  if (!Number.isInteger(repeats) || repeats < 1)
    throw new BenchError(`BENCH_REPEATS must be a whole number ≥ 1 (got "${process.env.BENCH_REPEATS}")`)
  const override = process.env.BENCH_PROXY_CMD?.trim()
  const proxyCommand = override ? override.split(/\s+/) : [process.execPath, join(REPO_DIR, "proxy.ts")]
  if (!override && !existsSync(proxyCommand[1]!))
    throw new BenchError(`${proxyCommand[1]} does not exist (set BENCH_PROXY_CMD to bench another proxy)`)
  const pin = Bun.which("taskset") !== null && availableParallelism() >= 2
  const only = process.env.BENCH_ONLY
  if (only !== undefined && !Object.hasOwn(ONLY_PHASES, only))
    throw new BenchError(`BENCH_ONLY must be one of ${Object.keys(ONLY_PHASES).join(", ")} (got "${only}")`)
  return { durationSeconds, repeats, proxyCommand, pin, only: only as keyof typeof ONLY_PHASES | undefined }
}

/** wrk's duration syntax (s, m, h suffixes) plus a bare number of seconds. */
function parseDuration(text: string): number {
  const match = /^(\d+(?:\.\d+)?)\s*(s|m|h)?$/i.exec(text.trim())
  if (!match) throw new BenchError(`BENCH_DURATION must look like 10s, 1m or 10 (got "${text}")`)
  const seconds = Number(match[1]) * ({ s: 1, m: 60, h: 3600 }[(match[2] ?? "s").toLowerCase()] ?? 1)
  // wrk rounds its -d to whole seconds; keep the driver's timeouts in step with what wrk does.
  if (seconds < 1) throw new BenchError(`BENCH_DURATION must be at least 1s (got "${text}")`)
  return Math.round(seconds)
}

/** Bounds the run: wrk runs themselves, plus FIXED_BUDGET_SECONDS for everything else. */
function startWatchdog(): void {
  // Thirteen comparisons (HIT 1 KiB, HIT 64 KiB, MISS vs origin, MISS vs forwarder, the two Redis
  // HITs, metrics on vs off, the Node build's two HITs and MISS, the workers' HIT, MISS and
  // nginx's HIT), two targets each.
  const wrkRuns = 26 * (config.repeats + 1)
  const budgetSeconds = wrkRuns * (config.durationSeconds + 5) + FIXED_BUDGET_SECONDS
  setTimeout(() => {
    console.error(`bench: gave up after ${budgetSeconds} s (time budget exceeded); stopping servers`)
    void cleanUp().finally(() => process.exit(1))
  }, budgetSeconds * 1000).unref()
}

/** Moves this driver (every thread, fetch's included) to the client CPU, next to wrk and away from the servers. */
function pinSelf(): void {
  if (config.pin) Bun.spawnSync(["taskset", "-a", "-p", "-c", CLIENT_CPU, String(process.pid)], { stdout: "ignore" })
}

// ───────────────────────────── the results table ─────────────────────────────

function markdownTable(header: string[], rows: string[][]): string {
  const escapeCell = (cell: string) => cell.replaceAll("|", "\\|")
  return [header, header.map(() => "---"), ...rows].map((cells) => `| ${cells.map(escapeCell).join(" | ")} |`).join("\n")
}

function renderReport(): string {
  const main = markdownTable(
    ["Measure", "Proxy", "Reference", "Ratio", "Target", "Result"],
    report.rows.map((row) => [row.measure, row.proxy, row.reference, row.ratio, row.target, row.verdict]),
  )
  const raw = markdownTable(
    ["wrk target", "req/s", "p50", "p99", "errors", "runs"],
    report.raw.map(({ target, summary }) => [
      target,
      formatRate(summary.requestsPerSecond),
      formatMs(summary.p50Ms),
      formatMs(summary.p99Ms),
      String(summary.errors),
      String(summary.runs),
    ]),
  )
  const notes = report.notes.length ? `\n\nNotes:\n\n${report.notes.map((note) => `- ${note}`).join("\n")}` : ""
  return `${main}\n\nwrk figures (median of each target's runs; -t${WRK_THREADS} -c${WRK_CONNECTIONS} -d${config.durationSeconds}s; the workers phase -t${MACHINE_LOAD.threads}, nothing pinned):\n\n${raw}${notes}\n`
}

/** How to repeat this run: the BENCH_* variables that were set, then the command. */
function commandLine(): string {
  const env = Object.entries(process.env)
    .filter(([name]) => name.startsWith("BENCH_"))
    .map(([name, value]) => `${name}=${/\s/.test(value ?? "") ? `'${value}'` : value}`)
  return [...env, "bun bench/run.ts", ...process.argv.slice(2)].join(" ")
}

function writeResults(table: string): void {
  const machine = `${cpus()[0]?.model.trim() ?? "unknown CPU"}, ${availableParallelism()} CPUs, bun ${Bun.version}`
  const pinning = config.pin
    ? `servers pinned to CPU ${SERVER_CPU}, wrk and the driver to CPU ${CLIENT_CPU}`
    : "no CPU pinning (taskset missing or a single CPU)"
  const text = [
    "# caching-proxy benchmark results",
    "",
    `- Date: ${new Date().toISOString()}`,
    `- Command: \`${commandLine()}\``,
    `- Proxy: \`${config.proxyCommand.join(" ")}\``,
    `- Machine: ${machine}; ${pinning}`,
    "",
    table,
  ].join("\n")
  writeFileSync(join(BENCH_DIR, "results.md"), text)
}

// ───────────────────────────── main ─────────────────────────────

async function main(): Promise<void> {
  if (Bun.which("wrk") === null)
    throw new BenchError("wrk not found on PATH; install it (Debian/Ubuntu: apt-get install -y wrk) and run again")
  const chosen = readConfig()
  useConfig(chosen)
  installExitHandlers()
  startWatchdog()
  pinSelf()

  const origin = await startServer("origin", [process.execPath, join(BENCH_DIR, "origin.ts")])
  const ceiling = await startServer("ceiling", [process.execPath, join(BENCH_DIR, "ceiling.ts")])
  const [originUrl, bigOriginUrl] = origin.urls
  const ceilingUrl = ceiling.urls[0]
  if (!originUrl || !bigOriginUrl || !ceilingUrl) throw new BenchError("origin or ceiling printed an unexpected ready line")

  const proxy = await startProxy(originUrl)
  const proxyUrl = proxy.urls[0]
  if (!proxyUrl) throw new BenchError("the proxy's ready line names no http://127.0.0.1:PORT address")
  const servers: Servers = { originUrl, bigOriginUrl, ceilingUrl, proxy, proxyUrl }
  console.error(
    `bench: origin ${originUrl} (big ${bigOriginUrl}), ceiling ${ceilingUrl}, proxy ${proxyUrl}; ${config.repeats}× ${config.durationSeconds}s per figure`,
  )

  if (chosen.only) {
    announce(chosen.only)
    await ONLY_PHASES[chosen.only](servers)
  } else await allPhases(servers, ceiling)

  if (stopping) return // interrupted: the phases above failed for that reason, not the proxy's
  const table = renderReport()
  console.log(table)
  // One phase is no full picture: bench/results.md keeps the last full run's.
  if (chosen.only) return
  writeResults(table)
  console.error("bench: wrote bench/results.md")
}

/** The phases BENCH_ONLY can pick, each run alone. */
const ONLY_PHASES = {
  hit: benchHitPath,
  big: ({ bigOriginUrl }: Servers) => benchBig(bigOriginUrl),
  metrics: benchMetricsOverhead,
  redis: ({ originUrl, bigOriginUrl, ceilingUrl }: Servers) => benchRedis(originUrl, bigOriginUrl, ceilingUrl),
  node: benchNode,
  workers: benchWorkers,
  log: benchLogCost,
  listing: benchListing,
}

/** Every phase, in an order that gives each the machine to itself. */
async function allPhases(servers: Servers, ceiling: Server): Promise<void> {
  const { originUrl, bigOriginUrl, ceilingUrl, proxy } = servers
  await benchHitPath(servers)
  announce("metrics on vs off")
  await benchMetricsOverhead(servers)
  announce("access log on vs off")
  await benchLogCost(servers)
  announce("coalescing")
  await benchCoalescing(servers)
  announce("workers")
  await benchWorkers(servers)
  noteProxyStderr(proxy)
  // The 512 MiB part gets a proxy of its own (bigger limits, fresh cache, fresh RSS baseline).
  await stopServer(proxy)
  announce("Redis store")
  await benchRedis(originUrl, bigOriginUrl, ceilingUrl)
  await stopServer(ceiling)
  announce("512 MiB body")
  await benchBig(bigOriginUrl)
  announce("the Node build")
  await benchNode(servers)
  announce(`start-up with ${STARTUP_ENTRIES.toLocaleString("en-US")} entries`)
  await benchStartup(originUrl)
  announce(`scrapes and listings at ${LISTING_ENTRIES.toLocaleString("en-US")} entries`)
  await benchListing(servers)
}

/** Exit code: 1 when a phase could not run at all (FAILs are results, not errors). */
async function run(): Promise<number> {
  try {
    await main()
    return report.rows.some((row) => row.verdict === "ERROR") ? 1 : 0
  } catch (error) {
    if (!stopping) console.error(error instanceof BenchError ? `bench: ${error.message}` : error)
    return 1
  }
}

const exitCode = await run()
// After a signal or the watchdog, their handler is already cleaning up and exits on its own.
if (!stopping) {
  await cleanUp()
  process.exit(exitCode)
}
