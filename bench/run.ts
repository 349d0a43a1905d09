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
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { availableParallelism, cpus, tmpdir } from "node:os"
import { join } from "node:path"
import type { Subprocess } from "bun"
import { startRedis } from "../cache/redis-server.fixture.ts"

// ───────────────────────────── settings ─────────────────────────────

const BENCH_DIR = import.meta.dir
const REPO_DIR = join(BENCH_DIR, "..")
const KIB = 1024
const MIB = 1024 * KIB

const WRK_THREADS = 1
const WRK_CONNECTIONS = 50
/** Unmeasured wrk run before each target's measured runs: warms the JIT and the connection paths. */
const WARMUP_SECONDS = 1
const SERVER_CPU = "0"
const CLIENT_CPU = "1"

const COALESCE_CLIENTS = 200
const BIG_BYTES = 512 * MIB
/** Big enough to store /big, so the HIT run really is served from the cache. */
const BIG_PROXY_FLAGS = ["--max-entry-size", String(1024 * MIB), "--max-size", String(2048 * MIB)]
const RSS_SAMPLE_MS = 50

const STARTUP_TIMEOUT_MS = 15_000
const REQUEST_TIMEOUT_MS = 30_000
const DOWNLOAD_TIMEOUT_MS = 180_000
/** Time left to the phases that are not wrk runs: startups, coalescing, four 512 MiB downloads, filling a 100,000-entry cache. */
const FIXED_BUDGET_SECONDS = 600

interface Config {
  durationSeconds: number
  repeats: number
  proxyCommand: string[]
  /** Whether taskset exists and there are two CPUs to pin servers and clients apart. */
  pin: boolean
  /** The one phase to run (BENCH_ONLY), or undefined for all. */
  only: keyof typeof ONLY_PHASES | undefined
}

function readConfig(): Config {
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

/** A failure worth one line to the user, not a stack trace. */
class BenchError extends Error {}

// ───────────────────────────── child processes ─────────────────────────────

/** Every process and temp dir we started, so that every way out can clean them up. */
const children = new Set<Subprocess>()
const tempDirs = new Set<string>()

interface Server {
  name: string
  process: Subprocess<"ignore", "pipe", "pipe">
  /** Every `http://127.0.0.1:NNNN` in its ready line, in order. */
  urls: string[]
  /** Set when it exits while still needed: a crash to report, not a stop we asked for. */
  crashed?: string
  stopRequested?: boolean
  stderrTail: () => string
}

let config: Config

/** `cpu` undefined: left to the scheduler on every CPU (the workers phase). */
function pinned(cpu: string | undefined, argv: string[]): string[] {
  return config.pin && cpu !== undefined ? ["taskset", "-c", cpu, ...argv] : argv
}

/** Every child goes through here, so that none can start once cleanUp has taken its list. */
function spawnChild(cpu: string | undefined, argv: string[]): Subprocess<"ignore", "pipe", "pipe"> {
  if (stopping) throw new BenchError("stopping")
  const child = Bun.spawn(pinned(cpu, argv), { cwd: REPO_DIR, stdin: "ignore", stdout: "pipe", stderr: "pipe" })
  children.add(child)
  return child
}

/** Starts a server pinned to `cpu` and waits for the stdout line naming its address(es). */
async function startServer(name: string, argv: string[], cpu: string | undefined = SERVER_CPU): Promise<Server> {
  const child = spawnChild(cpu, argv)
  const server: Server = { name, process: child, urls: [], stderrTail: keepTail(child.stderr) }
  void child.exited.then((code) => {
    children.delete(child)
    if (!stopping && !server.stopRequested)
      server.crashed = `${name} exited with code ${code}${child.signalCode ? ` (${child.signalCode})` : ""}`
  })
  const line = await readReadyLine(server)
  server.urls = [...line.matchAll(/http:\/\/127\.0\.0\.1:(\d+)/g)].map((match) => match[0])
  return server
}

/** The first stdout line that names an address; stdout keeps being drained after it so the child never blocks on a full pipe. */
async function readReadyLine(server: Server): Promise<string> {
  const reader = server.process.stdout.getReader()
  const decoder = new TextDecoder()
  let buffered = ""
  const deadline = Date.now() + STARTUP_TIMEOUT_MS
  while (Date.now() < deadline) {
    const chunk = await Promise.race([reader.read(), Bun.sleep(deadline - Date.now()).then(() => null)])
    if (chunk === null) break
    if (chunk.done) throw new BenchError(`${server.name} exited before listening: ${server.stderrTail() || "(no stderr)"}`)
    buffered += decoder.decode(chunk.value, { stream: true })
    const line = buffered.split("\n").find((candidate) => /http:\/\/127\.0\.0\.1:\d+/.test(candidate))
    if (line !== undefined) {
      void drain(reader)
      return line
    }
  }
  throw new BenchError(
    `${server.name} did not print its address within ${STARTUP_TIMEOUT_MS / 1000} s: ${server.stderrTail() || "(no stderr)"}`,
  )
}

async function drain(reader: { read(): Promise<{ done: boolean }> }): Promise<void> {
  try {
    while (!(await reader.read()).done) {}
  } catch {
    // The child is gone; nothing left to drain.
  }
}

/** Reads a stream to its end in the background, keeping its last few KiB for error messages. */
function keepTail(stream: ReadableStream<Uint8Array>, limit = 4 * KIB): () => string {
  let tail = ""
  void (async () => {
    const decoder = new TextDecoder()
    try {
      for await (const chunk of stream) tail = (tail + decoder.decode(chunk, { stream: true })).slice(-limit)
    } catch {
      // The child is gone; keep what we have.
    }
  })()
  return () => tail.trim()
}

function assertRunning(server: Server): void {
  if (server.crashed) throw new BenchError(`${server.crashed}: ${server.stderrTail() || "(no stderr)"}`)
}

function makeTempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), `caching-proxy-bench-${prefix}-`))
  tempDirs.add(dir)
  return dir
}

/**
 * The proxy under test (or `command`), pinned to the server CPU unless `unpinned` (the workers
 * phase); --quiet unless the flags choose a log format: then the access log is what is measured.
 */
async function startProxy(
  originUrl: string,
  extraFlags: string[] = [],
  { command = config.proxyCommand, unpinned = false }: { command?: string[]; unpinned?: boolean } = {},
): Promise<Server> {
  const quiet = extraFlags.includes("--log-format") ? [] : ["--quiet"]
  const flags = ["--port", "0", "--origin", originUrl, "--cache-dir", makeTempDir("cache"), ...quiet, ...extraFlags]
  return startServer("proxy", [...command, ...flags], unpinned ? undefined : SERVER_CPU)
}

/** Stops one server and waits for it, so the next phase has the CPU and the memory to itself. */
async function stopServer(server: Server): Promise<void> {
  server.stopRequested = true
  await stopProcesses([server.process])
}

let stopping = false

async function stopProcesses(processes: Subprocess[]): Promise<void> {
  for (const child of processes) child.kill("SIGTERM")
  const allExited = Promise.all(processes.map((child) => child.exited))
  await Promise.race([allExited, Bun.sleep(2000)])
  for (const child of processes) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL")
  await Promise.race([allExited, Bun.sleep(1000)])
}

async function cleanUp(): Promise<void> {
  stopping = true
  await stopProcesses([...children])
  removeTempDirs()
}

function removeTempDirs(): void {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true })
  tempDirs.clear()
}

/** Whatever ends the run, children and temp dirs (a stored 512 MiB body among them) must not outlive it. */
function installExitHandlers(): void {
  const exitAfterCleanUp = (code: number, message?: string) => {
    if (message) console.error(message)
    void cleanUp().finally(() => process.exit(code))
  }
  process.on("SIGINT", () => exitAfterCleanUp(130, "\nbench: interrupted, stopping servers"))
  process.on("SIGTERM", () => exitAfterCleanUp(143))
  // Last resort if something exits without going through cleanUp: nothing async can run here.
  process.on("exit", () => {
    for (const child of children) child.kill("SIGKILL")
    removeTempDirs()
  })
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

// ───────────────────────────── wrk ─────────────────────────────

interface WrkRun {
  requestsPerSecond: number
  p50Ms: number
  p99Ms: number
  /** Socket errors, timeouts and non-2xx/3xx answers. */
  errors: number
  /** CPU time (user + system) the server spent per request, µs, when its pid was given (a summary: the least of its runs). */
  cpuUsPerRequest?: number
}

interface WrkSummary extends WrkRun {
  runs: number
}

interface WrkOutput {
  requests: number
  duration_us: number
  p50_us: number
  p99_us: number
  errors: Record<"connect" | "read" | "write" | "status" | "timeout", number>
}

// /proc/<pid>/stat counts CPU time in clock ticks: 100 a second on Linux (USER_HZ).
const CLOCK_TICKS_PER_SECOND = 100

/**
 * CPU time (user + system) a server has used so far, µs: /proc/<pid>/stat fields 14 and 15, of the
 * process and of its children, which are its workers (--workers, nginx's worker processes). A
 * worker that exited meanwhile takes its time with it: none should during a run.
 */
function cpuMicros(pid: number): number {
  // Fields after the command name (which may hold spaces) start at field 3, the state.
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ").at(-1)?.split(" ") ?? []
  const own = ((Number(fields[11]) + Number(fields[12])) * 1e6) / CLOCK_TICKS_PER_SECOND
  const children = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim()
  return children === "" ? own : children.split(" ").reduce((sum, child) => sum + cpuMicros(Number(child)), own)
}

/**
 * One wrk run, wrk pinned to `clientCpu`; with `serverPid`, also the CPU that server spent per
 * request (steadier than req/s on a busy machine).
 */
async function runWrk(url: string, seconds: number, serverPid?: number, clientCpu: string | undefined = CLIENT_CPU): Promise<WrkRun> {
  const cpuBefore = serverPid === undefined ? 0 : cpuMicros(serverPid)
  const argv = [
    "wrk",
    `-t${WRK_THREADS}`,
    `-c${WRK_CONNECTIONS}`,
    `-d${seconds}s`,
    "--timeout",
    "5s",
    "-s",
    join(BENCH_DIR, "latency.lua"),
    url,
  ]
  const child = spawnChild(clientCpu, argv)
  const killer = setTimeout(() => child.kill("SIGKILL"), (seconds + 15) * 1000)
  const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited])
  clearTimeout(killer)
  children.delete(child)
  const line = stdout.split("\n").find((candidate) => candidate.startsWith("BENCH_RESULT "))
  if (code !== 0 || line === undefined) throw new BenchError(`wrk ${url} failed (exit ${code}): ${(stderr || stdout).trim().slice(-500)}`)
  const output = JSON.parse(line.slice("BENCH_RESULT ".length)) as WrkOutput
  return {
    requestsPerSecond: output.requests / (output.duration_us / 1e6),
    p50Ms: output.p50_us / 1000,
    p99Ms: output.p99_us / 1000,
    errors: Object.values(output.errors).reduce((sum, count) => sum + count, 0),
    ...(serverPid === undefined ? {} : { cpuUsPerRequest: (cpuMicros(serverPid) - cpuBefore) / output.requests }),
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2
}

function summarize(runs: WrkRun[]): WrkSummary {
  return {
    requestsPerSecond: median(runs.map((run) => run.requestsPerSecond)),
    p50Ms: median(runs.map((run) => run.p50Ms)),
    p99Ms: median(runs.map((run) => run.p99Ms)),
    errors: runs.reduce((sum, run) => sum + run.errors, 0),
    runs: runs.length,
    // The least disturbed run: other work on the machine only adds to a process's CPU time per
    // request (cache misses, a slower clock), so the minimum is the steadiest estimate of its own.
    ...(runs[0]?.cpuUsPerRequest === undefined ? {} : { cpuUsPerRequest: Math.min(...runs.map((run) => run.cpuUsPerRequest ?? 0)) }),
  }
}

/**
 * wrk against two URLs, runs interleaved (a, b, a, b, ...) so that drift in the machine's
 * speed during the run lands on both sides of the comparison alike.
 */
async function compareWithWrk(
  proxyUrl: string,
  referenceUrl: string,
  pids: [number, number] | [] = [],
  clientCpu: string | undefined = CLIENT_CPU,
): Promise<[WrkSummary, WrkSummary]> {
  const [proxyPid, referencePid] = pids
  await runWrk(proxyUrl, WARMUP_SECONDS, undefined, clientCpu)
  await runWrk(referenceUrl, WARMUP_SECONDS, undefined, clientCpu)
  const proxyRuns: WrkRun[] = []
  const referenceRuns: WrkRun[] = []
  for (let run = 0; run < config.repeats; run++) {
    proxyRuns.push(await runWrk(proxyUrl, config.durationSeconds, proxyPid, clientCpu))
    referenceRuns.push(await runWrk(referenceUrl, config.durationSeconds, referencePid, clientCpu))
  }
  return [summarize(proxyRuns), summarize(referenceRuns)]
}

// ───────────────────────────── report ─────────────────────────────

type Verdict = "PASS" | "FAIL" | "INFO" | "ERROR"

interface Row {
  measure: string
  proxy: string
  reference: string
  ratio: string
  target: string
  verdict: Verdict
}

/** Raw figures behind the ratios, for the second table. */
interface RawRow {
  target: string
  summary: WrkSummary
}

interface Report {
  rows: Row[]
  raw: RawRow[]
  /** Anything surprising seen on the way: wrong X-Cache, errors, stderr from the proxy. */
  notes: string[]
}

const report: Report = { rows: [], raw: [], notes: [] }

const formatRate = (rps: number) => `${Math.round(rps).toLocaleString("en-US")} req/s`
const formatMs = (ms: number) => `${ms.toFixed(2)} ms`
const formatMicros = (us: number) => `${us.toFixed(1)} µs`
const formatSpeed = (mibPerSecond: number) => `${Math.round(mibPerSecond).toLocaleString("en-US")} MiB/s`
const formatMib = (bytes: number) => `${(bytes / MIB).toFixed(1)} MiB`

/** A row comparing proxy/reference against a bound on their ratio. */
function ratioRow(
  measure: string,
  proxy: number,
  reference: number,
  format: (value: number) => string,
  bound: "≥" | "≤",
  factor: number,
): Row {
  const ratio = proxy / reference
  const pass = bound === "≥" ? ratio >= factor : ratio <= factor
  return {
    measure,
    proxy: format(proxy),
    reference: format(reference),
    ratio: `${ratio.toFixed(2)}×`,
    target: `${bound} ${factor}×`,
    verdict: Number.isFinite(ratio) && pass ? "PASS" : "FAIL",
  }
}

function errorRows(measures: string[], error: unknown): Row[] {
  const message = error instanceof Error ? error.message : String(error)
  report.notes.push(`${measures[0]}: ${message}`)
  return measures.map((measure) => ({ measure, proxy: "—", reference: "—", ratio: "—", target: "—", verdict: "ERROR" }))
}

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
  return `${main}\n\nwrk figures (median of each target's runs; -t${WRK_THREADS} -c${WRK_CONNECTIONS} -d${config.durationSeconds}s):\n\n${raw}${notes}\n`
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

// ───────────────────────────── HTTP helpers ─────────────────────────────

interface Fetched {
  status: number
  xCache: string | null
  body: string
}

async function get(url: string): Promise<Fetched> {
  const response = await fetch(url, { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) })
  return { status: response.status, xCache: response.headers.get("x-cache"), body: await response.text() }
}

/** GETs until the proxy answers from its cache, so wrk measures HITs and not the first MISS. */
async function warmUntilHit(url: string): Promise<void> {
  for (let attempt = 0; attempt < 10; attempt++) {
    const { status, xCache } = await get(url)
    if (status === 200 && xCache === "HIT") return
    await Bun.sleep(100)
  }
  report.notes.push(`${url} never answered X-Cache: HIT after 10 GETs; its "HIT" figures measure something else`)
}

/** The proxy must hand out the same bytes as the ceiling, or the comparison is meaningless. */
async function checkSameBody(proxyUrl: string, referenceUrl: string): Promise<void> {
  const [proxied, reference] = await Promise.all([get(proxyUrl), get(referenceUrl)])
  if (proxied.body !== reference.body)
    report.notes.push(
      `${proxyUrl} answered a different body than ${referenceUrl} (${proxied.body.length} vs ${reference.body.length} bytes)`,
    )
}

function noteWrkErrors(target: string, summary: WrkSummary): void {
  if (summary.errors > 0) report.notes.push(`wrk counted ${summary.errors} errors (socket errors, timeouts or non-2xx) against ${target}`)
}

// ───────────────────────────── phases ─────────────────────────────

interface Servers {
  originUrl: string
  bigOriginUrl: string
  ceilingUrl: string
  proxy: Server
  proxyUrl: string
}

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

/**
 * What counting requests for /metrics costs a hit: HIT 1 KiB through a proxy with metrics on (an
 * admin listener) against the plain one, runs interleaved.
 */
async function benchMetricsOverhead(servers: Servers): Promise<void> {
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

/** Many clients miss on one cold URL at once: the proxy should send the origin one request, not one per client. */
async function benchCoalescing(servers: Servers): Promise<void> {
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
async function download(url: string, pid?: number): Promise<Download> {
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
async function benchBig(bigOriginUrl: string, command = config.proxyCommand, label = ""): Promise<void> {
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
function rssRow(measure: string, result: Download, limitBytes?: number): Row {
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

/**
 * Start-up on a cache of STARTUP_ENTRIES entries (written through the proxy's own FileStore) against
 * start-up on an empty one: the time to the ready line, and to the first HIT of a stored entry.
 * The store indexes sizes in the background and reads an entry only when it is asked for.
 */
async function benchStartup(originUrl: string): Promise<void> {
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

const STARTUP_ENTRIES = 100_000
const FILL_CONCURRENCY = 64

interface StartupTime {
  listeningMs: number
  firstHitMs: number
}

/** Writes `count` small entries, /entry/0 … /entry/N-1, as the proxy itself would store them. */
async function fillCache(dir: string, originUrl: string, count: number): Promise<void> {
  const { FileStore, bunFiles } = await import("../cache/file-store.ts")
  const store = new FileStore({
    dir,
    maxBytes: Number.MAX_SAFE_INTEGER,
    files: bunFiles,
    warn: (kind, detail) => console.error(`bench: ${kind}: ${detail}`),
  })
  await store.ready()
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

/** An entry's meta, described by the policy from a day-long max-age, as the proxy would describe the origin's answer. */
async function benchMeta() {
  const { describeResponse, responseControl, targetList } = await import("../cache/policy.ts")
  const now = Date.now()
  const headers = new Headers({ "content-type": "text/plain", "cache-control": "max-age=86400" })
  const policy = { defaultTtlMs: 0, forceTtlMs: 0, shareCookies: false, targetList: targetList([]), keepTagHeaders: false }
  return describeResponse(200, headers, responseControl(headers, policy.targetList), {}, now, now, policy)
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

// ───────────────────────────── workers ─────────────────────────────

/**
 * --workers 2 against --workers 1, nothing pinned, wrk beside them on this machine's cores:
 * CPU per HIT and per MISS summed over every process of each proxy (coordination between workers
 * should be nearly free: at most 1.1×), and the HIT throughput gained by a second worker, beside
 * what nginx (a caching proxy_pass to the same origin) gains from worker_processes 1 to 2.
 */
async function benchWorkers({ originUrl }: Servers): Promise<void> {
  const measures = [
    "HIT 1 KiB proxy CPU per request (all processes), --workers 2 vs 1",
    "MISS no-store 1 KiB proxy CPU per request (all processes), --workers 2 vs 1",
    "HIT 1 KiB throughput gain from a second worker, against nginx's (worker_processes 2 vs 1)",
  ]
  const started: Server[] = []
  try {
    const one = await startProxy(originUrl, [], { unpinned: true })
    started.push(one)
    const two = await startProxy(originUrl, ["--workers", "2"], { unpinned: true })
    started.push(two)
    const [oneUrl, twoUrl] = [one.urls[0], two.urls[0]]
    if (!oneUrl || !twoUrl) throw new BenchError("a proxy's ready line names no address")
    for (const url of [oneUrl, twoUrl]) await warmUntilHit(`${url}/1k`)
    const pids: [number, number] = [two.process.pid, one.process.pid]
    const [hitTwo, hitOne] = await compareWithWrk(`${twoUrl}/1k`, `${oneUrl}/1k`, pids, undefined)
    const [missTwo, missOne] = await compareWithWrk(`${twoUrl}/nostore-1k`, `${oneUrl}/nostore-1k`, pids, undefined)
    for (const server of started) assertRunning(server)
    const nginxOne = await startNginx(originUrl, 1)
    started.push(nginxOne)
    const nginxTwo = await startNginx(originUrl, 2)
    started.push(nginxTwo)
    const [nginxHitTwo, nginxHitOne] = await compareWithWrk(`${nginxTwo.urls[0]}/1k`, `${nginxOne.urls[0]}/1k`, [], undefined)
    report.raw.push(
      { target: "proxy --workers 2 /1k (HIT)", summary: hitTwo },
      { target: "proxy --workers 1 /1k (HIT)", summary: hitOne },
      { target: "proxy --workers 2 /nostore-1k (MISS)", summary: missTwo },
      { target: "proxy --workers 1 /nostore-1k (MISS)", summary: missOne },
      { target: "nginx worker_processes 2 /1k (HIT)", summary: nginxHitTwo },
      { target: "nginx worker_processes 1 /1k (HIT)", summary: nginxHitOne },
    )
    const gain = hitTwo.requestsPerSecond / hitOne.requestsPerSecond
    const nginxGain = nginxHitTwo.requestsPerSecond / nginxHitOne.requestsPerSecond
    report.rows.push(
      ratioRow(measures[0]!, hitTwo.cpuUsPerRequest ?? Number.NaN, hitOne.cpuUsPerRequest ?? Number.NaN, formatMicros, "≤", 1.1),
      ratioRow(measures[1]!, missTwo.cpuUsPerRequest ?? Number.NaN, missOne.cpuUsPerRequest ?? Number.NaN, formatMicros, "≤", 1.1),
      {
        ...ratioRow(measures[2]!, gain, nginxGain, (factor) => `${factor.toFixed(2)}×`, "≥", 1),
        target: "≥ nginx's gain",
      },
    )
  } catch (error) {
    report.rows.push(...errorRows(measures, error))
  } finally {
    for (const server of started) await stopServer(server)
  }
}

/** nginx as a caching reverse proxy of the origin, with `workers` worker processes, in a directory of its own. */
async function startNginx(originUrl: string, workers: number): Promise<Server> {
  if (Bun.which("nginx") === null) throw new BenchError("nginx not found on PATH (apt-get install -y nginx)")
  const dir = makeTempDir(`nginx-${workers}`)
  const port = freePort()
  const settings = `
    worker_processes ${workers};
    daemon off;
    pid ${dir}/nginx.pid;
    error_log ${dir}/error.log;
    ${process.getuid?.() === 0 ? "user root;" : ""}
    events { worker_connections 1024; }
    http {
      access_log off;
      client_body_temp_path ${dir}/body;
      proxy_temp_path ${dir}/proxy;
      fastcgi_temp_path ${dir}/fastcgi;
      uwsgi_temp_path ${dir}/uwsgi;
      scgi_temp_path ${dir}/scgi;
      proxy_cache_path ${dir}/cache keys_zone=bench:10m;
      upstream origin { server ${new URL(originUrl).host}; keepalive 32; }
      server {
        listen 127.0.0.1:${port};
        location / {
          proxy_pass http://origin;
          proxy_http_version 1.1;
          proxy_set_header Connection "";
          proxy_cache bench;
        }
      }
    }`
  writeFileSync(join(dir, "nginx.conf"), settings)
  const child = spawnChild(undefined, ["nginx", "-e", join(dir, "error.log"), "-p", dir, "-c", join(dir, "nginx.conf")])
  const server: Server = {
    name: `nginx (${workers})`,
    process: child,
    urls: [`http://127.0.0.1:${port}`],
    stderrTail: keepTail(child.stderr),
  }
  void drain(child.stdout.getReader())
  const deadline = Date.now() + STARTUP_TIMEOUT_MS
  while (
    !(await get(`${server.urls[0]}/1k`).then(
      (answer) => answer.status === 200,
      () => false,
    ))
  ) {
    if (child.exitCode !== null || Date.now() > deadline) throw new BenchError(`nginx did not start: ${server.stderrTail()}`)
    await Bun.sleep(50)
  }
  return server
}

/** A port nothing listens on now (the kernel's choice for port 0, then released). */
function freePort(): number {
  const probe = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } })
  const { port } = probe
  probe.stop(true)
  return port
}

// ───────────────────────────── the access log ─────────────────────────────

/**
 * What the access log costs a hit: HIT 1 KiB with the log on (text, then json) against --quiet,
 * runs interleaved, under Bun and under Node (dist/cli.js, built first). The log goes to /dev/null,
 * as in the issue's measurement: a pipe drained by this driver would take CPU from wrk beside it.
 */
async function benchLogCost(servers: Servers): Promise<void> {
  const node = ["node", join(REPO_DIR, "dist", "cli.js")]
  for (const [runtime, command] of [
    ["Bun", config.proxyCommand],
    ["Node", node],
  ] as const) {
    const measures = ["text", "json"].map((format) => `HIT 1 KiB throughput, access log (${format}) vs --quiet, ${runtime}`)
    const started: Server[] = []
    try {
      if (runtime === "Node") await buildNodeBundle()
      const quiet = await startProxy(servers.originUrl, [], { command })
      started.push(quiet)
      await warmUntilHit(`${quiet.urls[0]}/1k`)
      for (const [index, format] of ["text", "json"].entries()) {
        const logged = await startLoggingToNull(servers.originUrl, ["--log-format", format], command)
        await warmUntilHit(`${logged.url}/1k`)
        const [on, off] = await compareWithWrk(`${logged.url}/1k`, `${quiet.urls[0]}/1k`, [logged.process.pid, quiet.process.pid])
        report.raw.push(
          { target: `proxy /1k (HIT), ${runtime}, ${format} log`, summary: on },
          { target: `proxy /1k (HIT), ${runtime}, --quiet`, summary: off },
        )
        report.rows.push(ratioRow(measures[index]!, on.requestsPerSecond, off.requestsPerSecond, formatRate, "≥", 0.9))
        await stopProcesses([logged.process])
      }
    } catch (error) {
      report.rows.push(...errorRows(measures, error))
    } finally {
      for (const server of started) await stopServer(server)
    }
  }
}

/** A proxy whose stdout (its log) goes to /dev/null, on a port found free: ready once it answers. */
async function startLoggingToNull(originUrl: string, flags: string[], command: string[]) {
  const port = freePort()
  const argv = [...command, "--port", String(port), "--origin", originUrl, "--cache-dir", makeTempDir("cache"), ...flags]
  const child = Bun.spawn(pinned(SERVER_CPU, argv), { cwd: REPO_DIR, stdin: "ignore", stdout: "ignore", stderr: "ignore" })
  children.add(child)
  const url = `http://127.0.0.1:${port}`
  const deadline = Date.now() + STARTUP_TIMEOUT_MS
  for (;;) {
    if (
      await fetch(`${url}/1k`).then(
        () => true,
        () => false,
      )
    )
      return { url, process: child }
    if (Date.now() > deadline) throw new BenchError(`the proxy on port ${port} did not answer within ${STARTUP_TIMEOUT_MS / 1000} s`)
    await Bun.sleep(100)
  }
}

async function buildNodeBundle(): Promise<void> {
  const child = Bun.spawn(["npm", "run", "build:js"], { cwd: REPO_DIR, stdout: "ignore", stderr: "pipe" })
  const [stderr, code] = await Promise.all([new Response(child.stderr).text(), child.exited])
  if (code !== 0) throw new BenchError(`npm run build:js failed: ${stderr.trim().slice(-500)}`)
}

// ───────────────────────────── scrapes and listings at 100,000 entries ─────────────────────────────

const LISTING_ENTRIES = 100_000
/** Timed requests per figure; the median is reported. */
const ADMIN_REQUESTS = 5

/**
 * A scrape (/metrics), /api/stats and a prefix listing that matches nothing, through the admin
 * listener of a proxy whose store holds 100,000 entries: on the file store and on Redis. Each
 * must read counters and an index, not the store (target: under 50 ms each).
 */
async function benchListing(servers: Servers): Promise<void> {
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

/** Writes `count` small entries to Redis, /entry/0 … /entry/N-1, as the proxy would store them. */
async function fillRedis(url: string, originUrl: string, count: number): Promise<void> {
  const { RedisStore } = await import("../cache/redis-store.ts")
  const store = new RedisStore({
    target: { single: url },
    prefix: "caching-proxy",
    warn: (kind, detail) => console.error(`bench: ${kind}: ${detail}`),
  })
  await store.ready()
  const meta = await benchMeta()
  const body = new TextEncoder().encode("x".repeat(512))
  let next = 0
  const worker = async () => {
    for (let i = next++; i < count; i = next++) {
      await store.put(`GET ${originUrl}/entry/${i}`, meta, new Response(body).body as ReadableStream<Uint8Array>)
    }
  }
  await Promise.all(Array.from({ length: FILL_CONCURRENCY }, worker))
  await store.close()
}

// ───────────────────────────── Redis ─────────────────────────────

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
async function benchRedis(originUrl: string, bigOriginUrl: string, ceilingUrl: string): Promise<void> {
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

// ───────────────────────────── the Node build ─────────────────────────────

/** The Node build, as npm installs it: `npm run build:js` writes it. */
const NODE_BUNDLE = join(REPO_DIR, "dist", "cli.js")

/**
 * The Node build (`node dist/cli.js`) against bare node:http servers run beside it: one answering
 * from memory for hits (bench/node-ceiling.ts), a keep-alive forwarder for the no-store MISS
 * (bench/node-forwarder.ts); then 512 MiB through it, its memory watched.
 */
async function benchNode({ originUrl, bigOriginUrl }: Servers): Promise<void> {
  const node = Bun.which("node")
  const started: Server[] = []
  try {
    if (!node) throw new BenchError("node not found on PATH; the Node leg runs the Node build under it")
    if (!existsSync(NODE_BUNDLE)) throw new BenchError(`${NODE_BUNDLE} does not exist; build it with npm run build:js`)
    const [ceilingScript, forwarderScript] = await bundleForNode(["node-ceiling.ts", "node-forwarder.ts"])
    const proxy = await startProxy(originUrl, [], { command: [node, NODE_BUNDLE] })
    const ceiling = await startServer("node-ceiling", [node, ceilingScript!])
    const forwarder = await startServer("node-forwarder", [node, forwarderScript!, originUrl])
    started.push(proxy, ceiling, forwarder)
    const proxyUrl = proxy.urls[0]!
    const compare = { proxy, proxyUrl }
    announce("Node: HIT 1 KiB")
    await warmUntilHit(`${proxyUrl}/1k`)
    await benchNodeAgainst(compare, "/1k", "HIT 1 KiB", ceiling, "bare node:http server", 0.8)
    announce("Node: HIT 64 KiB")
    await warmUntilHit(`${proxyUrl}/64k`)
    await benchNodeAgainst(compare, "/64k", "HIT 64 KiB", ceiling, "bare node:http server")
    announce("Node: MISS no-store")
    await benchNodeAgainst(compare, "/nostore-1k", "MISS no-store 1 KiB", forwarder, "bare node:http forwarder", 0.8)
  } catch (error) {
    return void report.rows.push(...errorRows(["Node build"], error))
  } finally {
    for (const server of started) await stopServer(server)
  }
  announce("Node: 512 MiB body")
  await benchBig(bigOriginUrl, [node, NODE_BUNDLE], "Node: ")
}

/**
 * One path through the Node build against a reference, runs interleaved: throughput and p99, with
 * the targets when `throughputFactor` is given (p99 then at most 1.5× the reference's), else for information.
 */
async function benchNodeAgainst(
  { proxy, proxyUrl }: { proxy: Server; proxyUrl: string },
  path: string,
  label: string,
  reference: Server,
  referenceName: string,
  throughputFactor?: number,
): Promise<void> {
  const referenceUrl = reference.urls[0]!
  const pids: [number, number] = [proxy.process.pid, reference.process.pid]
  const measures = [`Node: ${label} throughput vs ${referenceName}`, `Node: ${label} p99 latency vs ${referenceName}`]
  try {
    await checkSameBody(proxyUrl + path, referenceUrl + path)
    const [proxied, bare] = await compareWithWrk(proxyUrl + path, referenceUrl + path, pids)
    assertRunning(proxy)
    report.raw.push({ target: `node proxy ${path}`, summary: proxied }, { target: `${referenceName} ${path}`, summary: bare })
    noteWrkErrors(`node proxy ${path}`, proxied)
    const throughput = ratioRow(measures[0]!, proxied.requestsPerSecond, bare.requestsPerSecond, formatRate, "≥", throughputFactor ?? 0)
    const p99 = ratioRow(measures[1]!, proxied.p99Ms, bare.p99Ms, formatMs, "≤", 1.5)
    const p50 = ratioRow(`Node: ${label} p50 latency vs ${referenceName}`, proxied.p50Ms, bare.p50Ms, formatMs, "≤", 1.5)
    // Steadier than req/s on a busy machine: the CPU time each server spent per request.
    const cpu = ratioRow(
      `Node: ${label} CPU per request vs ${referenceName}`,
      proxied.cpuUsPerRequest ?? Number.NaN,
      bare.cpuUsPerRequest ?? Number.NaN,
      formatMicros,
      "≤",
      1.25,
    )
    const targeted = throughputFactor === undefined ? [] : [throughput, p99]
    report.rows.push(...[throughput, p99, p50, cpu].map((row) => (targeted.includes(row) ? row : informative(row))))
  } catch (error) {
    report.rows.push(...errorRows(measures, error))
  }
}

/** A row reported for information, without a target. */
function informative(row: Row): Row {
  return { ...row, target: "(info)", verdict: "INFO" }
}

/** Bundles bench scripts for Node (which runs no TypeScript), as the proxy's own Node bundle is built; their paths, in order. */
async function bundleForNode(scripts: string[]): Promise<string[]> {
  const outdir = makeTempDir("node")
  const built = await Bun.build({ entrypoints: scripts.map((script) => join(BENCH_DIR, script)), target: "node", outdir })
  if (!built.success) throw new BenchError(`bundling ${scripts.join(", ")} for Node failed: ${built.logs.join("; ")}`)
  return scripts.map((script) => join(outdir, script.replace(/\.ts$/, ".js")))
}

// ───────────────────────────── main ─────────────────────────────

/** Progress on stderr; also where an interrupted run stops going through its phases. */
function announce(phase: string): void {
  if (stopping) throw new BenchError("stopping")
  console.error(`bench: ${phase}`)
}

function noteProxyStderr(proxy: Server): void {
  const tail = proxy.stderrTail()
  if (tail) report.notes.push(`the proxy wrote to stderr: ${tail.split("\n").slice(-5).join(" ⏎ ")}`)
}

async function main(): Promise<void> {
  if (Bun.which("wrk") === null)
    throw new BenchError("wrk not found on PATH; install it (Debian/Ubuntu: apt-get install -y wrk) and run again")
  config = readConfig()
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

  if (config.only) {
    announce(config.only)
    await ONLY_PHASES[config.only](servers)
  } else await allPhases(servers, ceiling)

  if (stopping) return // interrupted: the phases above failed for that reason, not the proxy's
  const table = renderReport()
  console.log(table)
  // One phase is no full picture: bench/results.md keeps the last full run's.
  if (config.only) return
  writeResults(table)
  console.error("bench: wrote bench/results.md")
}

/** Every phase, in an order that gives each the machine to itself. */
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

/** The request path's figures: hits of two sizes and a miss, each against its reference. */
async function benchHitPath(servers: Servers): Promise<void> {
  announce("HIT 1 KiB")
  await benchHit(servers, "/1k", "1 KiB", 0.85)
  announce("HIT 64 KiB")
  await benchHit(servers, "/64k", "64 KiB", 0.95)
  announce("MISS no-store")
  await benchMiss(servers)
  await benchMissAgainstForwarder(servers)
}

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
