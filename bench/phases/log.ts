/** The access log phase (BENCH_ONLY=log): HIT 1 KiB with the log on against --quiet, Bun and Node. */
import { join } from "node:path"
import {
  BenchError,
  children,
  compareWithWrk,
  config,
  freePort,
  makeTempDir,
  pinned,
  REPO_DIR,
  SERVER_CPU,
  type Server,
  type Servers,
  STARTUP_TIMEOUT_MS,
  startProxy,
  stopProcesses,
  stopServer,
  warmUntilHit,
} from "../harness.ts"
import { errorRows, formatMicros, formatRate, informative, ratioRow, report } from "../report.ts"

/**
 * What the access log costs a hit: HIT 1 KiB with the log on (text, then json) against --quiet,
 * runs interleaved, under Bun and under Node (dist/cli.js, built first). The log goes to /dev/null,
 * as in the measurement: a pipe drained by this driver would take CPU from wrk beside it.
 */
export async function benchLogCost(servers: Servers): Promise<void> {
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
        report.rows.push(
          ratioRow(measures[index]!, on.requestsPerSecond, off.requestsPerSecond, formatRate, "≥", 0.9),
          // Steadier than req/s on a shared machine: the proxy's own CPU per request, from /proc.
          informative(
            ratioRow(
              `HIT 1 KiB CPU per request, access log (${format}) vs --quiet, ${runtime}`,
              on.cpuUsPerRequest ?? Number.NaN,
              off.cpuUsPerRequest ?? Number.NaN,
              formatMicros,
              "≤",
              1.1,
            ),
          ),
        )
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
