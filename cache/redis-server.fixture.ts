/**
 * Real Redis servers for the tests: Debian's `redis-server`, on free loopback ports, without
 * persistence, in temporary directories, stopped by process id. A missing `redis-server` is an
 * error, not a skip: `npm test`'s pretest installs it. The benchmark starts its Redis here too.
 */
import { mkdtempSync, rmSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import type { Subprocess } from "bun"

const STARTUP_TIMEOUT_MS = 10_000
/** Another process may take a probed port before the server binds it: then a new port is tried. */
const START_ATTEMPTS = 5
/** A Cluster node also listens on its port plus this (the cluster bus). */
const CLUSTER_BUS_OFFSET = 10_000

export interface RedisServer {
  url: string
  port: number
  /** Kills the server (as a crash would); `start` brings it back on the same port, empty. */
  kill(): Promise<void>
  start(): Promise<void>
  /** Stops the server answering (SIGSTOP), connections open: Redis at its slowest; `resume` goes on. */
  pause(): void
  resume(): void
  [Symbol.asyncDispose](): Promise<void>
}

export interface RedisOptions {
  /** Also find a free cluster-bus port (port + 10000), for a Cluster node. @default false */
  clusterBus?: boolean
  /** Starts the process: the benchmark pins it to a CPU and tracks it. @default Bun.spawn, stdout ignored */
  spawn?: (argv: string[]) => Subprocess
}

const spawnQuietly = (argv: string[]): Subprocess => Bun.spawn(argv, { stdout: "ignore", stderr: "pipe" })

/** One Redis server on a free port (and a free cluster-bus port, for a Cluster node). */
export async function startRedis(
  extraArgs: string[] = [],
  { clusterBus = false, spawn = spawnQuietly }: RedisOptions = {},
): Promise<RedisServer> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startRedisOn(await freePort(clusterBus), extraArgs, spawn)
    } catch (error) {
      if (attempt === START_ATTEMPTS) throw error
    }
  }
}

async function startRedisOn(port: number, extraArgs: string[], spawn: (argv: string[]) => Subprocess): Promise<RedisServer> {
  const dir = mkdtempSync(join(tmpdir(), "caching-proxy-test-redis-"))
  let process: Subprocess | undefined
  const server: RedisServer = {
    url: `redis://127.0.0.1:${port}`,
    port,
    async kill() {
      process?.kill("SIGKILL")
      await process?.exited
      process = undefined
    },
    async start() {
      process = spawnRedis(port, dir, extraArgs, spawn)
      await untilAnswers(port, process)
    },
    pause() {
      process?.kill("SIGSTOP")
    },
    resume() {
      process?.kill("SIGCONT")
    },
    async [Symbol.asyncDispose]() {
      await server.kill()
      rmSync(dir, { recursive: true, force: true })
    },
  }
  try {
    await server.start()
  } catch (error) {
    await server[Symbol.asyncDispose]()
    throw error
  }
  return server
}

/** A Redis Cluster of three masters, no replicas. */
export async function startRedisCluster() {
  const nodes = await Promise.all(
    [0, 1, 2].map(() => startRedis(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"], { clusterBus: true })),
  )
  const addresses = nodes.map((node) => `127.0.0.1:${node.port}`)
  await run(["redis-cli", "--cluster", "create", ...addresses, "--cluster-replicas", "0", "--cluster-yes"])
  for (const node of nodes)
    await until(async () => (await run(["redis-cli", "-p", String(node.port), "cluster", "info"])).includes("cluster_state:ok"))
  return {
    url: `redis-cluster://${addresses.join(",")}`,
    /** The seed nodes, as the store takes them. */
    nodes: nodes.map((node) => ({ host: "127.0.0.1", port: node.port })),
    servers: nodes,
    async [Symbol.asyncDispose]() {
      await Promise.all(nodes.map((node) => node[Symbol.asyncDispose]()))
    },
  }
}

function spawnRedis(port: number, dir: string, extraArgs: string[], spawn: (argv: string[]) => Subprocess): Subprocess {
  const args = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir, ...extraArgs]
  try {
    return spawn(["redis-server", ...args])
  } catch {
    throw new Error("redis-server is not installed (apt-get install -y redis-server); the Redis tests need it")
  }
}

async function untilAnswers(port: number, process: Subprocess): Promise<void> {
  await until(async () => {
    if (process.exitCode !== null) throw new Error(`redis-server on port ${port} exited with code ${process.exitCode}`)
    return (await run(["redis-cli", "-p", String(port), "ping"])).trim() === "PONG"
  })
}

async function until(check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + STARTUP_TIMEOUT_MS
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`still not true after ${STARTUP_TIMEOUT_MS} ms: ${check}`)
    await Bun.sleep(20)
  }
}

async function run(command: string[]): Promise<string> {
  const child = Bun.spawn(command, { stdout: "pipe", stderr: "pipe" })
  const [stdout] = await Promise.all([new Response(child.stdout).text(), child.exited])
  return stdout
}

/** A port nothing listens on now, and for a Cluster node its bus port too (both under 65536). */
async function freePort(clusterBus: boolean): Promise<number> {
  for (;;) {
    const port = await probePort(0)
    if (!clusterBus) return port
    const bus = port + CLUSTER_BUS_OFFSET
    if (
      bus <= 65_535 &&
      (await probePort(bus).then(
        () => true,
        () => false,
      ))
    )
      return port
  }
}

/** Binds `port` (0: the kernel's choice) on loopback and releases it: the port, if it was free. */
function probePort(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer()
    probe.once("error", reject)
    probe.listen(port, "127.0.0.1", () => {
      const { port: bound } = probe.address() as { port: number }
      probe.close(() => resolve(bound))
    })
  })
}
