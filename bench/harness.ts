/**
 * The benchmark's harness, shared by the driver (run.ts) and every phase (phases/*.ts): settings,
 * the children it starts (servers, the proxy, wrk) and how every way out stops them, wrk runs with
 * the server's CPU read from /proc, and the HTTP helpers that check what a figure measures.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { cpus, tmpdir } from "node:os"
import { join } from "node:path"
import type { Subprocess } from "bun"
import { report } from "./report.ts"

// ───────────────────────────── settings ─────────────────────────────

export const BENCH_DIR = import.meta.dir
export const REPO_DIR = join(BENCH_DIR, "..")
export const KIB = 1024
export const MIB = 1024 * KIB

export const WRK_THREADS = 1
export const WRK_CONNECTIONS = 50
/** Unmeasured wrk run before each target's measured runs: warms the JIT and the connection paths. */
const WARMUP_SECONDS = 1
export const SERVER_CPU = "0"
export const CLIENT_CPU = "1"
/**
 * Every CPU, named: a child inherits the driver's own pinning to CLIENT_CPU, so one left "to the
 * scheduler" must be given the whole machine explicitly (the workers phase).
 */
export const EVERY_CPU = `0-${cpus().length - 1}`

/** Where wrk runs, and on how many threads. */
export interface Load {
  cpu: string | undefined
  threads: number
}
/** Beside servers pinned to SERVER_CPU: one thread on the other CPU. */
const PINNED_LOAD: Load = { cpu: CLIENT_CPU, threads: WRK_THREADS }
/** Beside servers left to the scheduler: a thread per CPU, so the load may use the cores they may. */
export const MACHINE_LOAD: Load = { cpu: EVERY_CPU, threads: cpus().length }

export const COALESCE_CLIENTS = 200

export const STARTUP_TIMEOUT_MS = 15_000
const REQUEST_TIMEOUT_MS = 30_000
export const DOWNLOAD_TIMEOUT_MS = 180_000

export interface Config {
  durationSeconds: number
  repeats: number
  proxyCommand: string[]
  /** Whether taskset exists and there are two CPUs to pin servers and clients apart. */
  pin: boolean
  /** The one phase to run (BENCH_ONLY, one of run.ts's ONLY_PHASES), or undefined for all. */
  only: string | undefined
}

/** A failure worth one line to the user, not a stack trace. */
export class BenchError extends Error {}

// ───────────────────────────── child processes ─────────────────────────────

/** Every process and temp dir we started, so that every way out can clean them up. */
export const children = new Set<Subprocess>()
const tempDirs = new Set<string>()

export interface Server {
  name: string
  process: Subprocess<"ignore", "pipe", "pipe">
  /** Every `http://127.0.0.1:NNNN` in its ready line, in order. */
  urls: string[]
  /** Set when it exits while still needed: a crash to report, not a stop we asked for. */
  crashed?: string
  stopRequested?: boolean
  stderrTail: () => string
}

export let config: Config

/** The driver's settings (run.ts reads them from the environment), set once before anything starts. */
export function useConfig(chosen: Config): void {
  config = chosen
}

/** `cpu` undefined: the CPUs of the driver (CLIENT_CPU once it has pinned itself). */
export function pinned(cpu: string | undefined, argv: string[]): string[] {
  return config.pin && cpu !== undefined ? ["taskset", "-c", cpu, ...argv] : argv
}

/** Every child goes through here, so that none can start once cleanUp has taken its list. */
export function spawnChild(cpu: string | undefined, argv: string[]): Subprocess<"ignore", "pipe", "pipe"> {
  if (stopping) throw new BenchError("stopping")
  const child = Bun.spawn(pinned(cpu, argv), { cwd: REPO_DIR, stdin: "ignore", stdout: "pipe", stderr: "pipe" })
  children.add(child)
  return child
}

/** Starts a server pinned to `cpu` and waits for the stdout line naming its address(es). */
export async function startServer(name: string, argv: string[], cpu: string | undefined = SERVER_CPU): Promise<Server> {
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

export async function drain(reader: { read(): Promise<{ done: boolean }> }): Promise<void> {
  try {
    while (!(await reader.read()).done) {}
  } catch {
    // The child is gone; nothing left to drain.
  }
}

/** Reads a stream to its end in the background, keeping its last few KiB for error messages. */
export function keepTail(stream: ReadableStream<Uint8Array>, limit = 4 * KIB): () => string {
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

export function assertRunning(server: Server): void {
  if (server.crashed) throw new BenchError(`${server.crashed}: ${server.stderrTail() || "(no stderr)"}`)
}

export function makeTempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), `caching-proxy-bench-${prefix}-`))
  tempDirs.add(dir)
  return dir
}

/**
 * The proxy under test (or `command`), pinned to the server CPU unless `unpinned`: every CPU (the workers
 * phase); --quiet unless the flags choose a log format: then the access log is what is measured.
 */
export async function startProxy(
  originUrl: string,
  extraFlags: string[] = [],
  { command = config.proxyCommand, unpinned = false }: { command?: string[]; unpinned?: boolean } = {},
): Promise<Server> {
  const quiet = extraFlags.includes("--log-format") ? [] : ["--quiet"]
  const flags = ["--port", "0", "--origin", originUrl, "--cache-dir", makeTempDir("cache"), ...quiet, ...extraFlags]
  return startServer("proxy", [...command, ...flags], unpinned ? EVERY_CPU : SERVER_CPU)
}

/** Stops one server and waits for it, so the next phase has the CPU and the memory to itself. */
export async function stopServer(server: Server): Promise<void> {
  server.stopRequested = true
  await stopProcesses([server.process])
}

export let stopping = false

export async function stopProcesses(processes: Subprocess[]): Promise<void> {
  for (const child of processes) child.kill("SIGTERM")
  const allExited = Promise.all(processes.map((child) => child.exited))
  await Promise.race([allExited, Bun.sleep(2000)])
  for (const child of processes) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL")
  await Promise.race([allExited, Bun.sleep(1000)])
}

export async function cleanUp(): Promise<void> {
  stopping = true
  await stopProcesses([...children])
  removeTempDirs()
}

function removeTempDirs(): void {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true })
  tempDirs.clear()
}

/** Whatever ends the run, children and temp dirs (a stored 512 MiB body among them) must not outlive it. */
export function installExitHandlers(): void {
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

export interface WrkSummary extends WrkRun {
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
 * One wrk run, under `load`; with `serverPid`, also the CPU that server spent per
 * request (steadier than req/s on a busy machine).
 */
async function runWrk(url: string, seconds: number, serverPid?: number, load: Load = PINNED_LOAD): Promise<WrkRun> {
  const cpuBefore = serverPid === undefined ? 0 : cpuMicros(serverPid)
  const argv = [
    "wrk",
    `-t${load.threads}`,
    `-c${WRK_CONNECTIONS}`,
    `-d${seconds}s`,
    "--timeout",
    "5s",
    "-s",
    join(BENCH_DIR, "latency.lua"),
    url,
  ]
  const child = spawnChild(load.cpu, argv)
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

export function median(values: number[]): number {
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
export async function compareWithWrk(
  proxyUrl: string,
  referenceUrl: string,
  pids: [number, number] | [] = [],
  load: Load = PINNED_LOAD,
): Promise<[WrkSummary, WrkSummary]> {
  const [proxyPid, referencePid] = pids
  const [proxy, reference] = await wrkInterleaved(
    [
      { url: proxyUrl, pid: proxyPid },
      { url: referenceUrl, pid: referencePid },
    ],
    load,
  )
  return [proxy!, reference!]
}

/**
 * wrk against each target in turn, `config.repeats` rounds of them all (a, b, c, a, b, c, ...),
 * after a warm-up of each: one summary per target, in their order. With `pid`, the CPU that
 * target's processes spent per request.
 */
export async function wrkInterleaved(targets: { url: string; pid?: number }[], load: Load = PINNED_LOAD): Promise<WrkSummary[]> {
  for (const { url } of targets) await runWrk(url, WARMUP_SECONDS, undefined, load)
  const runs = targets.map((): WrkRun[] => [])
  for (let round = 0; round < config.repeats; round++)
    for (const [index, { url, pid }] of targets.entries()) runs[index]!.push(await runWrk(url, config.durationSeconds, pid, load))
  return runs.map(summarize)
}

// ───────────────────────────── HTTP helpers ─────────────────────────────

interface Fetched {
  status: number
  xCache: string | null
  body: string
}

export async function get(url: string): Promise<Fetched> {
  const response = await fetch(url, { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) })
  return { status: response.status, xCache: response.headers.get("x-cache"), body: await response.text() }
}

/** GETs until the proxy answers from its cache, so wrk measures HITs and not the first MISS. */
export async function warmUntilHit(url: string): Promise<void> {
  for (let attempt = 0; attempt < 10; attempt++) {
    const { status, xCache } = await get(url)
    if (status === 200 && xCache === "HIT") return
    await Bun.sleep(100)
  }
  report.notes.push(`${url} never answered X-Cache: HIT after 10 GETs; its "HIT" figures measure something else`)
}

/** The proxy must hand out the same bytes as the ceiling, or the comparison is meaningless. */
export async function checkSameBody(proxyUrl: string, referenceUrl: string): Promise<void> {
  const [proxied, reference] = await Promise.all([get(proxyUrl), get(referenceUrl)])
  if (proxied.body !== reference.body)
    report.notes.push(
      `${proxyUrl} answered a different body than ${referenceUrl} (${proxied.body.length} vs ${reference.body.length} bytes)`,
    )
}

export function noteWrkErrors(target: string, summary: WrkSummary): void {
  if (summary.errors > 0) report.notes.push(`wrk counted ${summary.errors} errors (socket errors, timeouts or non-2xx) against ${target}`)
}

// ───────────────────────────── what the phases share ─────────────────────────────

export interface Servers {
  originUrl: string
  bigOriginUrl: string
  ceilingUrl: string
  proxy: Server
  proxyUrl: string
}

/** A port nothing listens on now (the kernel's choice for port 0, then released). */
export function freePort(): number {
  const probe = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } })
  const { port } = probe
  probe.stop(true)
  return port
}

/** Progress on stderr; also where an interrupted run stops going through its phases. */
export function announce(phase: string): void {
  if (stopping) throw new BenchError("stopping")
  console.error(`bench: ${phase}`)
}

export function noteProxyStderr(proxy: Server): void {
  const tail = proxy.stderrTail()
  if (tail) report.notes.push(`the proxy wrote to stderr: ${tail.split("\n").slice(-5).join(" ⏎ ")}`)
}
