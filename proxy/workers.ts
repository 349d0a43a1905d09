/**
 * --workers N: one primary process and N worker processes that answer on the one --port.
 *
 * How, and why so:
 * - Processes come from node:cluster under both runtimes: `cluster.fork()` runs this same program
 *   again (`process.execPath` and the script; the standalone executable is its own execPath), with
 *   an IPC channel to the primary. A worker is handed its options whole, as JSON in its
 *   environment (WORKER_VARIABLE), not a command line to read again: under the executable,
 *   cluster repeats the program's name among a worker's arguments, and a worker started after
 *   the first must listen on the port the first got, whatever --port said (0: any free port).
 * - One port: under Node the primary holds the listening socket and hands connections to the
 *   workers in turn (cluster's default scheduling); under Bun every worker binds the port itself
 *   with SO_REUSEPORT (Bun.serve's `reusePort`) and the kernel spreads connections. Worker 1 is
 *   started alone; the others once it listens: under Bun on the port it got, under Node on the
 *   port asked for, which is how cluster finds the socket it holds (0 included).
 * - The primary prints the start line (the first worker's, with the number of workers), then
 *   supervises: a worker that dies is replaced under the same number after a back-off that
 *   doubles with each death in the last minute; more than MAX_DEATHS_PER_MINUTE and it gives up
 *   and exits 1. A worker that dies before the group has listened is a start-up failure (the
 *   port is taken, say): the primary stops the others and exits 1 at once, having said why.
 * - SIGTERM or SIGINT to the primary is passed to every worker, which drains as a single proxy
 *   does (requests in flight finish, up to its grace period); the primary exits once they all
 *   have, killing any left after GRACE_MS.
 * - No worker outlives the primary: a cluster worker exits as soon as its IPC channel closes
 *   (Node's cluster and Bun's both do so), which a SIGKILLed primary's does at once.
 * - One cache (cache/group-store.ts): on the file store, the primary keeps a file store of its
 *   own that scans the directory once (before any worker starts: the scan removes files no entry
 *   names) and holds the one LRU order and byte bound; it grants claims and passes every
 *   worker's change on to the others' memory tiers, over the same IPC channel. Workers read and
 *   write the directory themselves, so a hit never waits on IPC. On Redis, workers are what
 *   several proxies on one Redis are: each its own connection and memory tier, nothing shared
 *   through the primary.
 * - The cache directory's lock (cache/dir-lock.ts) is the primary's: its workers are one owner.
 * - One admin listener, the primary's: its cache is a member of the group on the primary's file
 *   store (a purge reaches every worker's memory before it is answered), /metrics sums the
 *   workers' (asked for over IPC when scraped) with the primary's own, and /readyz fails while a
 *   worker is not listening. Workers count their requests but serve no admin port.
 */
import cluster, { type Worker } from "node:cluster"
import type { FileStore } from "../cache/file-store.ts"
import { type Channel, GroupCoordinator, type GroupMemberStore, type GroupMessage } from "../cache/group-store.ts"
import type { Warn } from "../cache.ts"
import type { AdminMetrics } from "./admin.ts"
import type { Fields, Logger } from "./log.ts"
import { GroupMetrics, type MetricsSnapshot, type ProxyMetrics } from "./metrics.ts"
import type { ProxyOptions } from "./options.ts"

/** The variable that makes a process a worker: its number and options, as JSON. */
const WORKER_VARIABLE = "CACHING_PROXY_WORKER_OPTIONS"
// The back-off before a dead worker's replacement starts: doubled for each death in the last minute.
const FIRST_RESTART_DELAY_MS = 100
const MAX_RESTART_DELAY_MS = 10_000
const DEATH_WINDOW_MS = 60_000
// More deaths than this in a minute, and the primary gives up: something is wrong beyond a crash.
const MAX_DEATHS_PER_MINUTE = 5
// After SIGTERM, workers get this long to drain (their own grace period is 5 s) before SIGKILL.
const GRACE_MS = 8000
// Under Node the primary's cluster holds the socket, found again by the port asked for; under Bun
// each worker binds the port itself, so one asked for 0 must bind the one the first got.
const WORKERS_BIND_THEMSELVES = typeof Bun !== "undefined"
// A worker that does not send its metrics within this long is left out of a scrape.
const METRICS_WAIT_MS = 2000

/** A worker's part: its number (1-N) and the options the primary handed it. */
export interface WorkerRole {
  id: number
  options: ProxyOptions
}

/** What a worker tells the primary about itself, and the primary asks it; the cache's messages go as `group`. */
type Listening = { type: "listening"; port: number } & StartLine
type WorkerMessage =
  | Listening
  | { type: "metrics?"; seq: number }
  | { type: "metrics"; seq: number; snapshot: MetricsSnapshot }
  | { type: "stopped"; cut: number }

/** A start line as a lone proxy would log it: its words and its fields (proxy/log.ts). */
export interface StartLine {
  msg: string
  fields: Fields
}

/** Everything sent either way is one of these: cluster's own messages on the same channel are none. */
type Envelope = { cachingProxy: WorkerMessage } | { cachingProxy: { type: "group"; message: GroupMessage } }

function isEnvelope(message: unknown): message is Envelope {
  return typeof message === "object" && message !== null && "cachingProxy" in message
}

/** This process's part in a group of workers, when it is a worker; undefined in the primary or a lone proxy. */
export function workerRole(): WorkerRole | undefined {
  const handed = process.env[WORKER_VARIABLE]
  if (!cluster.isWorker || handed === undefined) return undefined
  return JSON.parse(handed) as WorkerRole
}

/** Tells the primary this worker listens on `port`; `line` is the start line a lone proxy would log. */
export function reportListening(port: number, line: StartLine): void {
  const envelope: Envelope = { cachingProxy: { type: "listening", port, ...line } }
  process.send?.(envelope)
}

/**
 * Tells the primary this worker has stopped, having cut `cut` requests, for the group's shutdown
 * line; resolves once sent (the worker exits next, which would lose a message still queued).
 */
export function reportStopped(cut: number): Promise<void> {
  const envelope: Envelope = { cachingProxy: { type: "stopped", cut } }
  return new Promise((resolve) => {
    if (!process.send?.(envelope, undefined, {}, () => resolve())) resolve()
  })
}

/** Worker `id` answers its primary's asking for its metrics (the primary's admin listener sums them). */
export function answerMetrics(metrics: ProxyMetrics, id: number): void {
  process.on("message", async (message: unknown) => {
    if (!isEnvelope(message) || message.cachingProxy.type !== "metrics?") return
    const snapshot = await metrics.snapshot(String(id))
    const envelope: Envelope = { cachingProxy: { type: "metrics", seq: message.cachingProxy.seq, snapshot } }
    process.send?.(envelope)
  })
}

/** A worker's channel to the primary's group coordinator (cache/group-store.ts). */
export function primaryChannel(): Channel {
  return groupChannel(
    (envelope) => process.send?.(envelope),
    (listener) => process.on("message", listener),
  )
}

/** The cache's messages over a process's IPC, in envelopes that tell them from anything else on it. */
function groupChannel(send: (envelope: Envelope) => void, receive: (listener: (message: unknown) => void) => void): Channel {
  return {
    send: (message) => send({ cachingProxy: { type: "group", message } }),
    onMessage: (listener) =>
      receive((message) => {
        if (isEnvelope(message) && message.cachingProxy.type === "group") listener(message.cachingProxy.message)
      }),
  }
}

/**
 * Runs the primary: starts `options.workers` workers, prints the start line once they all
 * listen, replaces those that die, and stops them all on SIGTERM or SIGINT. Resolves to the
 * exit code.
 */
export function superviseWorkers(options: ProxyOptions, primary: PrimaryParts): Promise<number> {
  return new Supervisor(options, primary).run()
}

/** What the primary has besides its workers (proxy.ts builds them: they need the runtime). */
export interface PrimaryParts {
  /** The file store the workers share: the primary's own, which indexes and bounds the directory. Redis: none. */
  index: FileStore | undefined
  warn: Warn
  /** Says the group's start and shutdown, and what becomes of its workers. */
  logger: Logger
  /** Starts the group's admin listener (with --admin-port): the start line's part about it, or undefined when it cannot listen. */
  startAdmin: ((group: GroupSide) => Promise<AdminStarted | undefined>) | undefined
}

/** The primary's side of the group, for its admin listener's cache and metrics. */
export interface GroupSide {
  /** The store the primary's cache uses: a member of the workers' file store. Redis: none, the cache opens its own. */
  store: GroupMemberStore | undefined
  /** The group's metrics around the primary's own. */
  metrics: (own: ProxyMetrics) => AdminMetrics
  /** Why the group is not ready: a worker not listening. */
  notReady: () => string | undefined
}

export interface AdminStarted {
  /** Its URL, for the start line. */
  url: string
  stop(): Promise<void>
}

class Supervisor {
  /** Worker number → its process, while it runs. */
  private readonly workers = new Map<number, Worker>()
  /** When workers died, for the back-off; the last minute's only. */
  private deaths: number[] = []
  private port: number
  /** Until every worker has listened once: a death then is a failure to start. */
  private startingUp = true
  private stopping = false
  private exitCode = 0
  /** The signal that stopped the group, and when: for its shutdown line. */
  private stoppedBy: { signal: NodeJS.Signals; at: number } | undefined
  /** Requests the workers cut as they stopped. */
  private cut = 0
  private settle: (code: number) => void = () => {}
  private readonly done = new Promise<number>((resolve) => {
    this.settle = resolve
  })

  private readonly coordinator: GroupCoordinator | undefined
  /** Numbers of the workers listening now. */
  private readonly listening = new Set<number>()
  private seq = 0
  /** A metrics request sent to a worker → what takes its answer. */
  private readonly metricsAsked = new Map<number, (snapshot: MetricsSnapshot) => void>()

  constructor(
    private readonly options: ProxyOptions,
    private readonly primary: PrimaryParts,
  ) {
    this.port = options.port
    this.coordinator = primary.index && new GroupCoordinator(primary.index, primary.warn)
  }

  async run(): Promise<number> {
    const stop = (signal: NodeJS.Signals) => {
      this.stoppedBy ??= { signal, at: performance.now() }
      void this.stop(0)
    }
    process.once("SIGINT", stop)
    process.once("SIGTERM", stop)
    let admin: AdminStarted | undefined
    try {
      // The start-up scan removes files no entry names, as an earlier run's: it must be over
      // before a worker writes any.
      await this.primary.index?.ready()
      if (this.stopping) return await this.done
      const first = await this.start(1)
      if (!first) return await this.done
      if (WORKERS_BIND_THEMSELVES) this.port = first.port
      const rest = await Promise.all(Array.from({ length: this.options.workers - 1 }, (_, index) => this.start(index + 2)))
      if (!rest.every(Boolean) || this.stopping) return await this.done
      this.startingUp = false
      admin = await this.primary.startAdmin?.(this.groupSide())
      if (this.primary.startAdmin && !admin) void this.stop(1)
      else {
        const { workers } = this.options
        const adminPart = admin ? `, admin on ${admin.url}` : ""
        this.primary.logger.info(`${first.msg}${adminPart}, ${workers} workers`, { ...first.fields, admin: admin?.url, workers })
      }
      const code = await this.done
      if (this.stoppedBy) {
        const { signal, at } = this.stoppedBy
        const ms = Math.round(performance.now() - at)
        this.primary.logger.info(`stopped on ${signal} in ${ms} ms, ${this.cut} request(s) cut`, { signal, ms, cut: this.cut })
      }
      return code
    } finally {
      process.off("SIGINT", stop)
      process.off("SIGTERM", stop)
      await admin?.stop()
      await this.primary.index?.close()
    }
  }

  private groupSide(): GroupSide {
    return {
      store: this.coordinator?.ownStore(),
      metrics: (own) => new GroupMetrics(own, () => this.workerMetrics()),
      notReady: () => {
        const count = this.options.workers
        return this.listening.size < count ? `${this.listening.size} of ${count} workers are listening` : undefined
      },
    }
  }

  /** Every listening worker's metrics; one that does not answer in time is left out. */
  private async workerMetrics(): Promise<MetricsSnapshot[]> {
    const asked = [...this.listening].flatMap((id) => this.workers.get(id) ?? [])
    const answers = asked.map(
      (worker) =>
        new Promise<MetricsSnapshot | undefined>((resolve) => {
          const seq = ++this.seq
          const timer = setTimeout(() => {
            this.metricsAsked.delete(seq)
            resolve(undefined)
          }, METRICS_WAIT_MS)
          this.metricsAsked.set(seq, (snapshot) => {
            clearTimeout(timer)
            this.metricsAsked.delete(seq)
            resolve(snapshot)
          })
          const envelope: Envelope = { cachingProxy: { type: "metrics?", seq } }
          if (worker.isConnected()) worker.send(envelope)
        }),
    )
    return (await Promise.all(answers)).filter((snapshot) => snapshot !== undefined)
  }

  /**
   * Starts worker `id`; resolves with what it says once it listens, or undefined if it exits
   * first. At start-up that ends the group: the reason is on stderr already (the worker's own).
   */
  private start(id: number): Promise<Listening | undefined> {
    // The admin listener is the primary's; workers count their requests for its /metrics.
    const options = { ...this.options, port: this.port, admin: undefined, metrics: this.options.admin !== undefined }
    const role: WorkerRole = { id, options }
    const worker = cluster.fork({ [WORKER_VARIABLE]: JSON.stringify(role) })
    this.workers.set(id, worker)
    const member = this.coordinator?.join(
      groupChannel(
        (envelope) => worker.isConnected() && worker.send(envelope),
        (listener) => worker.on("message", listener),
      ),
    )
    let listened = false
    return new Promise((resolve) => {
      worker.on("message", (message: unknown) => {
        if (!isEnvelope(message)) return
        const said = message.cachingProxy
        if (said.type === "metrics") this.metricsAsked.get(said.seq)?.(said.snapshot)
        if (said.type === "stopped") this.cut += said.cut
        if (said.type !== "listening") return
        listened = true
        this.listening.add(id)
        resolve(said)
      })
      worker.once("exit", (code, signal) => {
        member?.leave()
        this.listening.delete(id)
        this.workers.delete(id)
        resolve(undefined)
        this.exited(id, worker, listened, signal ?? `code ${code}`)
      })
    })
  }

  /** A worker is gone: the end of a stop, a start-up failure, or a death to recover from. */
  private exited(id: number, worker: Worker, listened: boolean, how: string): void {
    if (this.stopping) {
      if (this.workers.size === 0) this.settle(this.exitCode)
      return
    }
    const pid = worker.process.pid
    if (!listened && this.startingUp) {
      this.primary.logger.error(`worker ${id} (pid ${pid}) exited (${how}) before listening: stopping`, { worker: id, pid })
      void this.stop(1)
      return
    }
    const now = Date.now()
    this.deaths = [...this.deaths.filter((at) => now - at < DEATH_WINDOW_MS), now]
    if (this.deaths.length > MAX_DEATHS_PER_MINUTE) {
      this.primary.logger.error(`workers keep dying (${this.deaths.length} in the last minute, the last ${how}): stopping`)
      void this.stop(1)
      return
    }
    const delayMs = Math.min(MAX_RESTART_DELAY_MS, FIRST_RESTART_DELAY_MS * 2 ** (this.deaths.length - 1))
    this.primary.logger.warn(`worker ${id} (pid ${pid}) exited (${how}); starting another in ${delayMs / 1000} s`, { worker: id, pid })
    setTimeout(() => {
      if (!this.stopping) void this.start(id)
    }, delayMs)
  }

  /** Stops every worker (SIGTERM: they drain), then resolves `run` with `code`. */
  private async stop(code: number): Promise<void> {
    if (this.stopping) return
    this.stopping = true
    this.exitCode = code
    if (this.workers.size === 0) return this.settle(code)
    for (const worker of this.workers.values()) worker.process.kill("SIGTERM")
    const killer = setTimeout(() => {
      for (const worker of this.workers.values()) worker.process.kill("SIGKILL")
    }, GRACE_MS)
    killer.unref?.()
    await this.done
    clearTimeout(killer)
  }
}
