/**
 * caching-proxy, the command: parse the flags (proxy/options.ts), build the app (`createProxy`),
 * serve it (proxy/runtime.ts), stop on a signal. The HTTP side only: every caching rule lives in
 * cache.ts.
 */

import { execFileSync } from "node:child_process"
import { lookup } from "node:dns/promises"
import { realpathSync } from "node:fs"
import { dirname } from "node:path"
import { fileURLToPath } from "node:url"
import { parseArgs } from "citty"
import { type Context, Hono } from "hono"
import { LinearRouter } from "hono/router/linear-router"
import { FileStore } from "./cache/file-store.ts"
import { MemoryStore } from "./cache/memory-store.ts"
import { targetList } from "./cache/policy.ts"
import { type Behind, MEMORY_BODY_LIMIT_BYTES, type TieredStore, tieredStore } from "./cache/tiered-store.ts"
import { answer, Cache, type CacheConfig, type Forward, OriginError, type Warn } from "./cache.ts"
import packageJson from "./package.json" with { type: "json" }
import { type OriginTrip, timed } from "./proxy/access.ts"
import { createAdmin } from "./proxy/admin.ts"
import { ARCHIVE_COMMANDS, NO_REDACT_WARNING } from "./proxy/archive.ts"
import { forwardedHeaders, HIDDEN_DOT_DOT_REFUSED, type Hop, resolvedPath, rewriteLocations } from "./proxy/forwarding.ts"
import { HarError, type Redaction, redaction } from "./proxy/har.ts"
import { helpText } from "./proxy/help.ts"
import { type Access, createAccessLog, createLogger, createWarn, LineWriter, type LogFormat, type Logger, writeError } from "./proxy/log.ts"
import { ProxyMetrics } from "./proxy/metrics.ts"
import { clearCache, lockCacheDir, openStore, whereEntriesLive } from "./proxy/open-store.ts"
import {
  type Args,
  args,
  checkCacheDir,
  checkRawArgs,
  flagsFromEnvironment,
  isSetting,
  joinRepeated,
  namingVariable,
  type ProxyOptions,
  parseOptions,
  UsageError,
} from "./proxy/options.ts"
import { Recorder, Replay } from "./proxy/record.ts"
import { type Listener, type ListenOptions, runtime, serve } from "./proxy/runtime.ts"
import {
  type AdminStarted,
  answerMetrics,
  type GroupSide,
  type PrimaryParts,
  reportListening,
  reportStopped,
  superviseWorkers,
  type WorkerRole,
  workerRole,
} from "./proxy/workers.ts"

// What tests and embedders import from the entry point.
export { type ProxyOptions, parseOptions, UsageError } from "./proxy/options.ts"
export { serve } from "./proxy/runtime.ts"

// ───────────────────────────── the command ─────────────────────────────

// How long start-up waits for Redis before listening without it.
const STORE_CONNECT_WAIT_MS = 2000
// Requests in flight get this long to finish after SIGINT/SIGTERM.
const SHUTDOWN_GRACE_MS = 5000
// After the shutdown, stdout gets this long to take the log's last lines: a reader that stalls must not hold the exit.
const LOG_DRAIN_MS = 1000

const DESCRIPTION = `A caching HTTP reverse proxy for one origin.
Subcommands: export, import (the cache as an HTTP Archive; each has --help).`

// Set by `bun build --define` (.ci/build.ts) in the binary and the Node bundle; absent from source.
declare const BUILD_VERSION: string | undefined
declare const BUILD_COMMIT: string | undefined

/** The command: flags from the command line, then from the environment for those it leaves out, then `start`. */
async function run(commandLine: string[]): Promise<number> {
  // A worker's options come from the primary, already checked.
  const role = workerRole()
  if (role) return serveProxy(role.options, stdoutLogger(role.options.logFormat), role)
  const command = ARCHIVE_COMMANDS[commandLine[0] ?? ""]
  if (command) return command(commandLine.slice(1), { openStore, version: packageJson.version })
  checkRawArgs(commandLine)
  const fromEnvironment = flagsFromEnvironment(commandLine, process.env)
  const rawArgs = joinRepeated([...[...fromEnvironment.values()].map(({ arg }) => arg), ...commandLine])
  return start(parseArgs<typeof args>(rawArgs, args)).catch((error) => Promise.reject(namingVariable(error, fromEnvironment)))
}

async function start(parsed: Args): Promise<number> {
  if (parsed.help) {
    console.log(helpText(`${versionLine()}\n${DESCRIPTION}`, args, isSetting))
    return 0
  }
  if (parsed.version) {
    console.log(versionLine())
    return 0
  }
  const options = parseOptions(parsed)
  if (parsed["clear-cache"]) return clearCache(options)
  if (options.store.kind === "file") checkCacheDir(options.cacheDir)
  const logger = stdoutLogger(options.logFormat)
  // Workers share their primary's lock.
  const unlock = options.store.kind === "file" ? lockCacheDir(options.cacheDir, logger) : undefined
  try {
    return options.workers > 1 ? await superviseWorkers(options, primaryParts(options, logger)) : await serveProxy(options, logger)
  } finally {
    unlock?.()
  }
}

/** What was built, or from source what package.json says. */
function packageVersion(): string {
  return typeof BUILD_VERSION === "string" ? BUILD_VERSION : packageJson.version
}

/** "caching-proxy 0.1.0 (commit 0123456789ab)": what was built, or from source what is checked out. */
function versionLine(): string {
  const version = packageVersion()
  const commit = typeof BUILD_COMMIT === "string" ? BUILD_COMMIT : checkedOutCommit()
  return `caching-proxy ${version} (commit ${commit})`
}

function checkedOutCommit(): string {
  const cwd = dirname(fileURLToPath(import.meta.url))
  try {
    return execFileSync("git", ["rev-parse", "--short=12", "HEAD"], { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim()
  } catch {
    // Not a clone, or no git installed: the version line says the commit is unknown.
    return "unknown"
  }
}

// ───────────────────────────── the app ─────────────────────────────

/** Where the proxy's messages go: tests and embedders pass their own. */
export interface ProxyOutput {
  /** One line per request (unless quiet). @default console.log */
  log: (line: string) => void
  /** Failures the proxy carries on after. @default each kind to stderr, at most once a minute */
  warn: Warn
  /** Under --workers, the worker these are: each access line names it. @default undefined: a lone proxy */
  worker: number | undefined
}

/** What the cache holds: memory (--memory-size) in front of the store, per process. */
function tiered(options: ProxyOptions, behind: Behind): TieredStore {
  const memory = new MemoryStore({ maxBytes: options.memorySize, maxVariants: options.maxVariants })
  const memoryBodyLimit = Math.min(MEMORY_BODY_LIMIT_BYTES, options.memorySize / 8)
  return tieredStore(memory, behind, { memoryBodyLimit })
}

/**
 * Builds the proxy as a Hono app, and its admin app (tests and embedders serve them themselves).
 * `group`: the primary of --workers builds its admin app so, on the group's store and metrics.
 */
export async function createProxy(options: ProxyOptions, output: Partial<ProxyOutput> = {}, group?: GroupSide) {
  const { log = console.log, warn = createWarn(options.logFormat), worker } = output
  const behind = group?.store ?? (await openStore(options, warn))
  const store = tiered(options, behind)
  const redacted = redaction(options.redact)
  const recorder = options.record ? await Recorder.open(options.record, packageJson.version, store, redacted, warn) : undefined
  const config: CacheConfig = {
    maxEntryBytes: options.maxEntrySize,
    defaultTtlMs: options.ttlSeconds * 1000,
    forceTtlMs: options.forceTtlSeconds * 1000,
    shareCookies: options.shareCookies,
    targetList: targetList(options.targetedCacheControl),
    keepTagHeaders: options.keepTagHeaders,
    ignoreQuery: options.ignoreQuery,
    offline: options.offline,
    coalesceWaitMs: options.timeoutSeconds * 1000,
    warn,
    onStored: recorder && ((key, meta) => recorder.record(key, meta)),
  }
  const cache = new Cache(store, config)
  const replay = options.replay ? await loadReplay(options.replay, options.origin, config, redacted) : undefined
  const storeConnected = "isConnected" in behind ? () => (behind as { isConnected: boolean }).isConnected : undefined
  const metrics = options.metrics || options.admin ? new ProxyMetrics({ store, storeConnected, warn }) : undefined
  const accessLog = options.quiet ? undefined : createAccessLog(options.logFormat, log, worker)
  /** Where each answered request goes: the access log, the metrics, both or neither (then nothing is timed). */
  const record =
    metrics || accessLog
      ? (access: Access) => {
          accessLog?.(access)
          metrics?.record(access)
        }
      : undefined
  const timeoutMs = options.timeoutSeconds * 1000
  const publicUrl = options.publicUrl === undefined ? undefined : new URL(options.publicUrl)
  const originUrl = new URL(options.origin)
  const listenHost = urlHost(options.host)
  /** The forwarding fields' facts about this request: never a value the request itself carries. */
  const hop = (c: Context, hasBody: boolean): Hop => ({
    client: runtime.clientAddress(c),
    host: publicUrl?.host ?? `${listenHost}:${runtime.localPort(c)}`,
    proto: publicUrl?.protocol.slice(0, -1) ?? "http",
    trustForwarded: options.trustForwarded,
    hasBody,
  })
  // One catch-all route: the router needs no path, so Hono is spared parsing the URL for it
  // (the path we forward comes from the runtime, untouched), and the linear router is the
  // cheapest for a single route. About 2 % of a hit.
  const app = new Hono({ router: new LinearRouter(), getPath: () => "/" })

  app.all("*", (c) => {
    // Hono routes HEAD as GET; the method we forward is the client's.
    const method = c.req.raw.method
    const requested = runtime.requestTarget(c)
    const path = resolvedPath(requested)
    const trip: OriginTrip | undefined = record ? asker(c) : undefined
    const response =
      path === undefined ? answer(400, HIDDEN_DOT_DOT_REFUSED, { kind: "pass", detail: "bad-request" }) : respond(c, method, path, trip)
    if (!trip && !options.rewriteLocation) return response
    const shown = path ?? requested
    // An answer given at once (a hit from memory) reads no clock: it took microseconds, logged as
    // 0.0 ms, where two clock reads cost some 2 % of a hit. One that takes a while is timed from
    // here (the lookup so far took microseconds too).
    if (!(response instanceof Promise)) return sent(c, response, method, shown, undefined, trip)
    const started = record ? performance.now() : undefined
    return response.then(
      (ready) => sent(c, ready, method, shown, started, trip),
      (error) => sent(c, failed(error, method, shown), method, shown, started, trip),
    )
  })

  /** Who asked, for the access line: the connection's address, and the X-Forwarded-For chain where it is trusted. */
  function asker(c: Context): OriginTrip {
    if (!accessLog) return {}
    const client = runtime.clientAddress(c)
    if (!options.trustForwarded) return { client }
    return { client, forwardedFor: c.req.raw.headers.get("x-forwarded-for") ?? undefined }
  }

  /** The response on its way out: Location rewritten (--rewrite-location), recorded once sent. */
  function sent(
    c: Context,
    ready: Response,
    method: string,
    path: string,
    started: number | undefined,
    trip: OriginTrip | undefined,
  ): Response | Promise<Response> {
    const answered = options.rewriteLocation ? rewriteLocations(ready, originUrl, proxyBase(c)) : ready
    return record && trip ? timed(answered, method, path, started, trip, record, warn) : answered
  }

  /** How this request reached the proxy, scheme and authority: --public-url, else the Host it asked for. */
  function proxyBase(c: Context): string {
    return publicUrl?.origin ?? `http://${c.req.raw.headers.get("host") ?? `${listenHost}:${runtime.localPort(c)}`}`
  }

  /** Answers from the cache, or from the origin at `options.origin + path`. */
  function respond(c: Context, method: string, path: string, trip: OriginTrip | undefined): Response | Promise<Response> {
    const request = c.req.raw
    const target = options.origin + path
    // RFC 9110 §9.3.1, §9.3.2: content in a GET or HEAD has no defined meaning; none is forwarded.
    const body = method === "GET" || method === "HEAD" ? null : request.body
    // Built only when the origin is asked: a hit copies no headers.
    const forward: Forward = (headers) => {
      const sent = runtime.fetch(
        target,
        method,
        forwardedHeaders(headers, hop(c, body !== null)),
        body,
        timeoutMs,
        runtime.interimTo(c, warn),
      )
      return trip ? timedOrigin(sent, trip) : sent
    }
    if (!replay) return cache.respond(method, request.headers, target, forward)
    return replay
      .respond(method, request.headers, target)
      .then((replayed) => replayed ?? cache.respond(method, request.headers, target, forward))
  }

  /** Times one origin request into the trip and the metrics. */
  function timedOrigin(sent: Promise<Response>, trip: OriginTrip): Promise<Response> {
    const started = performance.now()
    return sent.then(
      (response) => {
        trip.ms = performance.now() - started
        metrics?.recordOrigin(trip.ms, { status: response.status })
        return response
      },
      (error: unknown) => {
        trip.ms = performance.now() - started
        trip.failure = error instanceof OriginError ? error.failure : "other"
        metrics?.recordOrigin(trip.ms, { failure: trip.failure })
        throw error
      },
    )
  }

  /** The answer to a request that failed: 502 or 504 with one line (warned when it is no origin failure). */
  function failed(error: unknown, method: string, path: string): Response {
    const isOrigin = error instanceof OriginError
    if (!isOrigin) warn("proxy", `${method} ${path} failed: ${(error as Error).message}`)
    return answer(isOrigin ? error.status : 502, `${isOrigin ? error.message : "the proxy failed to forward this request"}\n`, {
      kind: "miss",
      fwd: "uri-miss",
      detail: "origin-error",
    })
  }

  app.onError((error, c) => failed(error, c.req.method, runtime.requestTarget(c)))

  const admin =
    options.admin &&
    metrics &&
    createAdmin({
      cache,
      origin: options.origin,
      token: options.admin.token,
      clientAddress: runtime.clientAddress,
      metrics: group?.metrics(metrics) ?? metrics,
      version: packageVersion(),
      warn,
      notReady: group?.notReady,
    })
  return { app, cache, metrics, admin, recorder }
}

/** --replay's HAR; one that cannot be used stops the start with its reason. */
function loadReplay(path: string, origin: string, config: CacheConfig, redacted: Redaction): Promise<Replay> {
  return Replay.load(path, origin, config, redacted).catch((error) => {
    throw error instanceof HarError ? new UsageError(`--replay ${path} cannot be used: ${error.message}`) : error
  })
}

// ───────────────────────────── serving, and stopping ─────────────────────────────

/** This process's stdout, once it logs there (each process its own writer). */
let stdout: LineWriter | undefined

/**
 * The proxy's own lines (start, shutdown) and its access lines go to stdout in batches: waited
 * for before the CLI exits (`exitOnceLogged`), and what is left written as the process exits
 * whatever the path.
 */
function stdoutLogger(format: LogFormat): Logger & { log: (line: string) => void } {
  const writer = new LineWriter(1, format)
  stdout = writer
  process.on("exit", () => writer.flushAtExit())
  const log = (line: string) => writer.write(line)
  return { ...createLogger(format, log), log }
}

/** Exits once stdout has taken the log's last lines, or LOG_DRAIN_MS later: a stalled reader must not hold the exit. */
async function exitOnceLogged(code: number): Promise<never> {
  if (stdout) await waitAtMost(stdout.drained(), LOG_DRAIN_MS)
  process.exit(code)
}

/**
 * Under --workers, what the primary has besides its workers: on the file store, its own, which
 * indexes and bounds the directory they share; with --admin-port, the group's admin listener;
 * the logger that says the group's start and shutdown.
 */
function primaryParts(options: ProxyOptions, logger: Logger): PrimaryParts {
  const warn = createWarn(options.logFormat)
  const index =
    options.store.kind === "file"
      ? new FileStore({ dir: options.cacheDir, maxBytes: options.maxSize, files: runtime.files, warn })
      : undefined
  const startAdmin = options.admin && (async (group: GroupSide) => groupAdmin(options, group, warn, logger))
  return { index, warn, logger, startAdmin }
}

/** The group's one admin listener, in the primary: its cache is a member of the workers' (proxy/workers.ts). */
async function groupAdmin(options: ProxyOptions, group: GroupSide, warn: Warn, logger: Logger): Promise<AdminStarted | undefined> {
  const { admin, cache } = await createProxy({ ...options, quiet: true }, { warn }, group)
  const listener =
    admin && options.admin && (await listenOrSay(admin, { ...options, ...options.admin }, "admin port", "--admin-host", warn, logger))
  if (!listener) {
    await cache.close()
    return undefined
  }
  return { url: adminUrl(options, listener), stop: () => listener.stop(true).then(() => cache.close()) }
}

/** The admin listener's URL, for the start line. */
function adminUrl(options: ProxyOptions, listener: Listener): string {
  return `http://${urlHost(options.admin?.host ?? "")}:${listener.port}`
}

/** Serves the proxy until SIGINT or SIGTERM: alone, or as worker `role` of a group. */
async function serveProxy(options: ProxyOptions, logger: Logger & { log: (line: string) => void }, role?: WorkerRole): Promise<number> {
  const warn = createWarn(options.logFormat)
  if (options.redact === false && options.record) logger.warn(NO_REDACT_WARNING)
  const { app, cache, admin, metrics, recorder } = await createProxy(options, { warn, log: logger.log, worker: role?.id })
  if (role && metrics) answerMetrics(metrics, role.id)
  // A shared store is worth a moment's wait: until Redis answers, requests would go to the origin
  // uncoalesced. Past that moment the proxy starts anyway, uncached, and connects in the background.
  if (options.store.kind === "redis") await waitAtMost(cache.store.ready(), STORE_CONNECT_WAIT_MS)
  const listener = await listenOrSay(app, { ...options, reusePort: role !== undefined }, "port", "--host", warn, logger)
  const adminListener =
    admin && options.admin ? await listenOrSay(admin, { ...options, ...options.admin }, "admin port", "--admin-host", warn, logger) : null
  if (!listener || adminListener === undefined) {
    await Promise.all([listener?.stop(true), adminListener?.stop(true)])
    return 1
  }
  const url = `http://${urlHost(options.host)}:${listener.port}`
  const admins = adminListener ? adminUrl(options, adminListener) : undefined
  const cacheIn = whereEntriesLive(options)
  const started = {
    msg: `listening on ${url}, forwarding to ${options.origin}, cache in ${cacheIn}${admins ? `, admin on ${admins}` : ""}`,
    fields: { url, origin: options.origin, cache: cacheIn, admin: admins, version: versionLine() },
  }
  // A worker's start is said by its primary, once for the group.
  if (role) reportListening(listener.port, started)
  else logger.info(started.msg, started.fields)
  const signal = await shutdownSignal()
  const stopping = performance.now()
  const stopped = Promise.all([listener.stop(), adminListener?.stop(true)]).then(() =>
    cache
      .close()
      .then(() => recorder?.close())
      .then(() => true),
  )
  let cut = 0
  if (!(await waitAtMost(stopped, SHUTDOWN_GRACE_MS))) {
    cut = listener.inFlight()
    if (cut > 0) logger.warn(`${SHUTDOWN_GRACE_MS / 1000} s after the signal, cutting ${cut} request(s) still in flight`, { cut })
  }
  const ms = Math.round(performance.now() - stopping)
  // A worker's cut requests are its primary's to say, in the group's one shutdown line.
  if (role) await reportStopped(cut)
  else logger.info(`stopped on ${signal} in ${ms} ms, ${cut} request(s) cut`, { signal, ms, cut })
  return 0
}

/** Serves an app, or says on stderr why its port cannot be used (undefined then). */
async function listenOrSay(
  app: Hono,
  options: ListenOptions,
  name: string,
  hostFlag: string,
  warn: Warn,
  logger: Logger,
): Promise<Listener | undefined> {
  try {
    return await serve(app, options, warn)
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    if (code !== "EADDRINUSE") await refuseForeignHost(hostFlag, options.host, code)
    const reason = code === "EADDRINUSE" ? "is already in use" : `cannot be used (${(error as Error).message})`
    logger.error(`${name} ${options.port} on ${options.host} ${reason}`)
    return undefined
  }
}

/**
 * A --host (or --admin-host) that names no address of this machine is a bad flag, not a port problem. Bun.serve
 * does not resolve names (it fails with EINVAL), so the name is looked up only once listening failed.
 */
async function refuseForeignHost(flag: string, host: string, code: string | undefined): Promise<void> {
  const resolves = await lookup(host).then(
    () => true,
    () => false,
  )
  if (!resolves) throw new UsageError(`${flag} ${host} cannot be resolved to an address`)
  if (code === "EADDRNOTAVAIL") throw new UsageError(`${flag} ${host} is not an address of this machine`)
}

/** A host as it goes into a URL: an IPv6 address in brackets (RFC 3986 §3.2.2). */
function urlHost(host: string): string {
  return host.includes(":") ? `[${host}]` : host
}

/** The promise's value, or undefined when `ms` pass first; the timer goes as soon as either is done. */
function waitAtMost<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const timeout = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), ms)))
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

/** Resolves with the signal's name. */
function shutdownSignal(): Promise<NodeJS.Signals> {
  return new Promise((done) => {
    process.once("SIGINT", done)
    process.once("SIGTERM", done)
  })
}

/** True when this file is the program, not a module imported by tests or embedders. */
function isEntryPoint(): boolean {
  if (typeof Bun !== "undefined") return import.meta.main
  // Node runs the bundle in dist/, often through the symlink npm puts in node_modules/.bin.
  const script = process.argv[1]
  return script !== undefined && realpathSync(script) === fileURLToPath(import.meta.url)
}

/**
 * The --log-format asked for, read from the raw command line and environment: a usage error is
 * found before the flags are parsed, and a log shipper still wants it as JSON.
 */
function askedLogFormat(commandLine: string[]): LogFormat {
  const index = commandLine.findIndex((arg) => arg === "--log-format" || arg.startsWith("--log-format="))
  const given = index < 0 ? process.env.CACHING_PROXY_LOG_FORMAT : (commandLine[index]?.split("=")[1] ?? commandLine[index + 1])
  return given === "json" ? "json" : "text"
}

if (isEntryPoint()) {
  const commandLine = process.argv.slice(2)
  run(commandLine).then(
    (code) => exitOnceLogged(code),
    (error) => {
      const format = askedLogFormat(commandLine)
      const logger = createLogger(format, writeError)
      const exitCode = error instanceof UsageError ? 2 : 1
      // A usage error, or any from a one-off command (export, import), is said in text to the person
      // typing it: one line, no time. The running proxy's own lines carry their time.
      const toPerson = exitCode === 2 || ARCHIVE_COMMANDS[commandLine[0] ?? ""] !== undefined
      if (format === "text" && toPerson) writeError(`caching-proxy: ${(error as Error).message}`)
      else logger.error((error as Error).message, { exitCode })
      return exitOnceLogged(exitCode)
    },
  )
}
