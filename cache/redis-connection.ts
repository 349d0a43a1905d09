/**
 * The Redis store's connections: opening them (one server or a Cluster), refusing a server that
 * cannot be used as its URL says, bounding a request's wait on a slow or stuck Redis, and saying
 * what went wrong in the operator's words rather than the client library's.
 */
import { createConnection } from "node:net"
import { Cluster, Redis } from "ioredis"
import { withDeadline } from "./deadline.ts"
import type { Warn } from "./store.ts"

/** Redis's port when a URL names none. */
const DEFAULT_PORT = 6379
/** A slow Redis holds no request longer than this: the request is then a miss. */
const COMMAND_TIMEOUT_MS = 1000
/** How long requests skip a Redis that let a command time out, before one tries it again. */
const STALL_SKIP_MS = 1000
/** Keys remembered as stalled (see `isKeyStalled`): a bound on what a stuck Cluster node can make it hold. */
const STALLED_KEYS_KEPT = 10_000

/** Where Redis is: one server by its URL (`redis://`, `rediss://`), or a Cluster's seed nodes. */
export type RedisTarget = { single: string } | { cluster: { host: string; port: number }[] }

/**
 * One connection, reconnecting in the background. Without `queueWhileAway` its commands fail at
 * once while Redis is away (no queue, no retries): a request then goes on as a miss.
 */
export function connect(target: RedisTarget, { queueWhileAway }: { queueWhileAway: boolean }): Redis | Cluster {
  const options = {
    enableOfflineQueue: queueWhileAway,
    maxRetriesPerRequest: queueWhileAway ? null : 0,
    commandTimeout: COMMAND_TIMEOUT_MS,
    retryStrategy: (attempt: number) => Math.min(attempt * 100, 2000),
    // Commands of concurrent requests issued in one tick go out in one write.
    enableAutoPipelining: true,
  }

  if ("single" in target) return new Redis(target.single, options)
  return new Cluster(target.cluster, {
    enableOfflineQueue: queueWhileAway,
    enableAutoPipelining: true,
    redisOptions: options,
    clusterRetryStrategy: options.retryStrategy,
    // A command for a node that is down fails at once (a miss) instead of being retried over
    // slot refreshes for seconds; the periodic slot refresh finds a promoted replica.
    retryDelayOnFailover: 0,
  })
}

/**
 * A Cluster client is ready once it knows the slots, but it opens a connection to a node only at
 * its first command, and without an offline queue a command that meets a connection still opening
 * fails (a miss). Open them all before the store says it is ready.
 */
export async function nodesConnected(connection: Redis | Cluster): Promise<void> {
  if (!(connection instanceof Cluster)) return
  await Promise.all(connection.nodes("master").map((node) => node.ping().catch(() => undefined))) // a node down is a miss later
}

/**
 * `rediss://` aimed at a server without TLS never gets past the handshake (the server waits for
 * the end of a line, the client for an answer), and would just time out: a PING in plain text,
 * answered in Redis's own protocol, tells. A TLS server answers it with an alert, or not at all.
 */
export function refusePlainServer(url: string): Promise<never> {
  return new Promise((_, reject) => {
    const { hostname, port, host } = new URL(url)
    const socket = createConnection({ host: hostname.replace(/^\[|\]$/g, ""), port: Number(port || DEFAULT_PORT) })
    socket.setTimeout(COMMAND_TIMEOUT_MS * 3)
    socket.once("connect", () => socket.write("PING\r\n"))
    socket.once("data", (data: Buffer) => {
      socket.destroy()
      if (!/^[+-]/.test(data.toString("latin1"))) return
      reject(new Error(`Redis at ${host} does not speak TLS: use --store redis://${host}, or the server's TLS port`))
    })
    // Unreachable or silent: the connection itself reports that.
    for (const end of ["timeout", "error"]) socket.once(end, () => socket.destroy())
  })
}

/**
 * `redis://` aimed at a Cluster node would never cache (every key of another node's slots answers
 * MOVED): once the server answers, rejects when it says it is one, and the store stays unusable.
 */
export function refuseClusterNode(redis: Redis | Cluster, url: string): Promise<never> {
  return new Promise((_, reject) => {
    redis.once("ready", async () => {
      const info = await redis.info("cluster").catch(() => "") // unanswered: the connection's state says why
      if (!/^cluster_enabled:1\b/m.test(info)) return
      const { host } = new URL(url)
      reject(new Error(`Redis at ${host} is a Cluster node: use --store redis-cluster://${host}`))
    })
  })
}

/**
 * A request waits on Redis at most COMMAND_TIMEOUT_MS, then goes on as a miss. ioredis bounds each
 * command, but a Cluster whose node is down retries a command over slot refreshes for seconds.
 */
export function bounded<T>(work: Promise<T>, what: string, key: string): Promise<T> {
  return withDeadline(work, COMMAND_TIMEOUT_MS, () => {
    throw new DeadlineError(`Redis did not answer ${what} ${key} within ${COMMAND_TIMEOUT_MS} ms`)
  })
}

/** `bounded`'s deadline passed. */
class DeadlineError extends Error {}

/**
 * Which requests skip Redis for now: a Redis that let a command time out is skipped for
 * STALL_SKIP_MS (see `RedisStore.timely`); the proxy says so once, and once when it answers again.
 */
export class Stalls {
  /** Until when requests skip Redis: it let a command time out (see `timely`). */
  private stalledUntil = 0
  /** Keys whose command timed out, until when requests on them skip Redis (see `isKeyStalled`). */
  private readonly stalledKeys = new Map<string, number>()
  private stalled = false

  constructor(private readonly warn: Warn) {}

  /** Reads no clock while Redis answers (every hit asks). */
  skipping(key: string): boolean {
    if (this.stalledKeys.size > 0 && this.isKeyStalled(key)) return true
    return this.stalledUntil !== 0 && this.stalledUntil > Date.now()
  }

  /**
   * Whether a command on this key let Redis time out within STALL_SKIP_MS. On a Cluster one node
   * may be stuck while the others answer (and end the stall for everyone): a request on a key of
   * the stuck node still waits on it once at most, not once per command (a read, a claim, a write).
   */
  private isKeyStalled(key: string): boolean {
    const until = this.stalledKeys.get(key)
    if (until === undefined) return false
    if (until > Date.now()) return true
    this.stalledKeys.delete(key)
    return false
  }

  /** Notes whether Redis answered the work in time (see `timely`). */
  observed<T>(work: Promise<T>, key: string): Promise<T> {
    return work.then(
      (value) => {
        if (this.stalled) this.answering()
        return value
      },
      (error: Error) => {
        if (isTimeout(error)) this.stall(key)
        throw inOurWords(error)
      },
    )
  }

  private stall(key: string): void {
    this.stalledUntil = Date.now() + STALL_SKIP_MS
    if (this.stalledKeys.size >= STALLED_KEYS_KEPT) this.stalledKeys.clear() // a bound: forgetting one costs one more wait
    this.stalledKeys.set(key, this.stalledUntil)
    if (this.stalled) return
    this.stalled = true
    this.warn("store-state", `Redis did not answer within ${COMMAND_TIMEOUT_MS} ms; requests go to the origin until it does`)
  }

  private answering(): void {
    this.stalled = false
    this.stalledUntil = 0
    this.warn("store-state", "Redis answers again; caching resumes")
  }
}

/** What ioredis and the socket say, and how we say it to the operator. */
const OUR_WORDS: [RegExp, (match: RegExpExecArray) => string][] = [
  [/^Stream isn't writeable|^Reached the max retries per request/, () => "Redis is unreachable"],
  [/^Connection is closed/, () => "the connection to Redis is closed"],
  [/^Command timed out/, () => `Redis did not answer within ${COMMAND_TIMEOUT_MS} ms`],
  [/^connect ECONNREFUSED (\S+)/, ([, at]) => `Redis at ${at} refused the connection`],
  [/^(?:connect )?ETIMEDOUT/, () => "connecting to Redis timed out"],
  [/^read ECONNRESET/, () => "Redis reset the connection"],
  [/^getaddrinfo (?:ENOTFOUND|EAI_AGAIN) (\S+)/, ([, host]) => `Redis's host name ${host} cannot be resolved`],
  [/^None of startup nodes is available|^Failed to refresh slots cache/, () => "no node of the Redis Cluster answers"],
  [/^CLUSTERDOWN/, () => "the Redis Cluster is down (a slot has no node)"],
]

/** The error in our words: a library's message (ioredis's "Stream isn't writeable…") tells an operator little. */
export function inOurWords(error: Error): Error {
  for (const [pattern, say] of OUR_WORDS) {
    const match = pattern.exec(error.message)
    if (match) return new Error(say(match))
  }

  return error
}

/** Whether a command failed by taking too long (ioredis's command timeout, or `bounded`'s deadline). */
function isTimeout(error: Error): boolean {
  return error instanceof DeadlineError || error.message === "Command timed out"
}

export function skipped(what: string, key: string): Error {
  return new Error(`Redis is not answering: ${what} ${key} skipped`)
}
