/** The Node build's phase (BENCH_ONLY=node): `node dist/cli.js` against bare node:http servers, then 512 MiB through it. */
import { existsSync } from "node:fs"
import { join } from "node:path"
import {
  announce,
  assertRunning,
  BENCH_DIR,
  BenchError,
  checkSameBody,
  compareWithWrk,
  makeTempDir,
  noteWrkErrors,
  REPO_DIR,
  type Server,
  type Servers,
  startProxy,
  startServer,
  stopServer,
  warmUntilHit,
} from "../harness.ts"
import { errorRows, formatMicros, formatMs, formatRate, informative, ratioRow, report } from "../report.ts"
import { benchBig } from "./big.ts"

/** The Node build, as npm installs it: `npm run build:js` writes it. */
const NODE_BUNDLE = join(REPO_DIR, "dist", "cli.js")

/**
 * The Node build (`node dist/cli.js`) against bare node:http servers run beside it: one answering
 * from memory for hits (bench/node-ceiling.ts), a keep-alive forwarder for the no-store MISS
 * (bench/node-forwarder.ts); then 512 MiB through it, its memory watched.
 */
export async function benchNode({ originUrl, bigOriginUrl }: Servers): Promise<void> {
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

/** Bundles bench scripts for Node (which runs no TypeScript), as the proxy's own Node bundle is built; their paths, in order. */
async function bundleForNode(scripts: string[]): Promise<string[]> {
  const outdir = makeTempDir("node")
  const built = await Bun.build({ entrypoints: scripts.map((script) => join(BENCH_DIR, script)), target: "node", outdir })
  if (!built.success) throw new BenchError(`bundling ${scripts.join(", ")} for Node failed: ${built.logs.join("; ")}`)
  return scripts.map((script) => join(outdir, script.replace(/\.ts$/, ".js")))
}
