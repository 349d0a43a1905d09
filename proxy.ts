/**
 * caching-proxy: the command line, the Hono app, and serving under Bun or Node.
 * The HTTP side only: every caching rule lives in cache.ts.
 */

import { execFileSync } from "node:child_process"
import { lookup } from "node:dns/promises"
import { existsSync, mkdirSync, realpathSync, rmSync, writeFileSync } from "node:fs"
import { createServer, Agent as HttpAgent, request as httpRequest, type IncomingMessage, type ServerResponse } from "node:http"
import { Agent as HttpsAgent, request as httpsRequest } from "node:https"
import type { AddressInfo } from "node:net"
import { availableParallelism, homedir } from "node:os"
import { dirname, join, resolve } from "node:path"
import { Readable } from "node:stream"
import { fileURLToPath } from "node:url"
import { parseArgs } from "citty"
import { type Context, Hono } from "hono"
import { LinearRouter } from "hono/router/linear-router"
import { DirInUse, lockDir } from "./cache/dir-lock.ts"
import { bunFiles, type FileApi, FileStore, nodeFiles } from "./cache/file-store.ts"
import { GroupMemberStore } from "./cache/group-store.ts"
import { MemoryStore } from "./cache/memory-store.ts"
import { hopByHopFilter, isFinalStatus, targetList } from "./cache/policy.ts"
import type { RedisTarget } from "./cache/redis-store.ts"
import { MEMORY_BODY_LIMIT_BYTES, TieredStore } from "./cache/tiered-store.ts"
import { answer, Cache, type Forward, OriginError, type OriginFailure, type Store, VIA, type Warn } from "./cache.ts"
import packageJson from "./package.json" with { type: "json" }
import { checkAdminToken, createAdmin } from "./proxy/admin.ts"
import { environmentVariable, helpText } from "./proxy/help.ts"
import { type Access, cacheOutcome, createAccessLog, createWarn, isFromCache, LOG_FORMATS, type LogFormat } from "./proxy/log.ts"
import { ProxyMetrics } from "./proxy/metrics.ts"
import { primaryChannel, reportListening, type SharedFiles, superviseWorkers, type WorkerRole, workerRole } from "./proxy/workers.ts"

// ───────────────────────────── options ─────────────────────────────

export interface ProxyOptions {
  port: number
  /** Address to listen on. @default "127.0.0.1" */
  host: string
  /**
   * How clients reach the proxy, scheme and authority only (e.g. "https://cdn.example.com"): the
   * origin is told it in X-Forwarded-Host, X-Forwarded-Proto and Forwarded.
   * @default undefined: http://<host>:<the port listened on>
   */
  publicUrl: string | undefined
  /** Keep the X-Forwarded-*, Forwarded and X-Real-IP fields a request carries. @default false */
  trustForwarded: boolean
  /** Point the origin's own absolute URLs in Location and Content-Location at the proxy. @default false: passed unchanged */
  rewriteLocation: boolean
  /** The origin's base URL, with no trailing slash: request paths are appended to it. */
  origin: string
  cacheDir: string
  /** Default lifetime for responses without freshness information (404, 405, 414, 501: at most 10 s). @default 300 s */
  ttlSeconds: number
  /** How long to wait for the origin's response headers. @default 30 s */
  timeoutSeconds: number
  quiet: boolean
  /** Access lines and warnings as text (each line starting with an ISO-8601 time) or JSON objects. @default "text" */
  logFormat: LogFormat
  /** Count requests for /metrics (`createProxy` returns them; the admin listener serves them). @default false */
  metrics: boolean
  memorySize: number
  maxSize: number
  maxEntrySize: number
  forceTtlSeconds: number
  ignoreQuery: string[]
  offline: boolean
  shareCookies: boolean
  /** Targeted cache-control fields (RFC 9213 §2.1) followed before CDN-Cache-Control, most specific first. @default [] */
  targetedCacheControl: string[]
  /** Where entries live: the disk under cacheDir, or a Redis shared by every proxy on it. @default file */
  store: StoreChoice
  /** Namespaces every Redis key, so several caches can share one Redis. @default "caching-proxy" */
  storePrefix: string
  /** The admin listener (health, API, inspector). @default undefined: none */
  admin: AdminListenOptions | undefined
  /** Pass Surrogate-Key and Cache-Tag on to clients instead of removing them. @default false */
  keepTagHeaders: boolean
  /** Processes that answer on the port and share the cache (proxy/workers.ts). @default 1: this process alone */
  workers: number
}

interface AdminListenOptions {
  port: number
  /** @default "127.0.0.1" */
  host: string
  /** Required when `host` is not loopback. */
  token: string | undefined
}

type StoreChoice = { kind: "file" } | { kind: "redis"; target: RedisTarget }

/** A flag the user got wrong: printed as one line, exit code 2. */
export class UsageError extends Error {}

const args = {
  port: { type: "string", valueHint: "N", description: "Port to listen on (0: any free port)", default: "3000" },
  host: { type: "string", valueHint: "ADDR", description: "Address to listen on (0.0.0.0 to accept other machines)", default: "127.0.0.1" },
  "public-url": {
    type: "string",
    valueHint: "URL",
    description: "How clients reach the proxy, e.g. https://cdn.example.com, as the origin is told (default: http://<host>:<port>)",
  },
  "trust-forwarded": {
    type: "boolean",
    description: "Pass on the X-Forwarded-*, Forwarded and X-Real-IP fields clients send: only behind a proxy that sets them itself",
  },
  "rewrite-location": {
    type: "boolean",
    description:
      "Rewrite the origin's own absolute URLs in Location and Content-Location to the proxy's (--public-url, else the Host asked)",
  },
  origin: { type: "string", valueHint: "URL", description: "Origin URL to forward to, e.g. https://api.example.com/v2" },
  "cache-dir": {
    type: "string",
    valueHint: "DIR",
    description: "Cache directory (default: $XDG_CACHE_HOME/caching-proxy or ~/.cache/caching-proxy)",
  },
  "clear-cache": { type: "boolean", description: "Empty the cache directory and exit" },
  ttl: {
    type: "string",
    valueHint: "SECONDS",
    description: "Seconds to keep responses that carry no freshness information; a 404, 405, 414 or 501 at most 10 (0: do not)",
    default: "300",
  },
  timeout: { type: "string", valueHint: "SECONDS", description: "Seconds to wait for the origin's response headers", default: "30" },
  "memory-size": { type: "string", valueHint: "SIZE", description: "Bytes of responses kept in memory (k, M, G suffixes)", default: "64M" },
  "max-size": { type: "string", valueHint: "SIZE", description: "Bytes the disk cache may hold", default: "1G" },
  "max-entry-size": { type: "string", valueHint: "SIZE", description: "Larger responses are passed through, not stored", default: "100M" },
  "force-ttl": {
    type: "string",
    valueHint: "SECONDS",
    description: "Development: store every cacheable-status GET for this many seconds, whatever its headers say",
    default: "0",
  },
  "ignore-query": {
    type: "string",
    valueHint: "NAMES",
    description: "Development: comma-separated query parameters left out of the cache key",
  },
  offline: { type: "boolean", description: "Development: answer only from the cache, never contact the origin" },
  "share-cookies": { type: "boolean", description: "Store responses that set cookies and serve them to every client" },
  "targeted-cache-control": {
    type: "string",
    valueHint: "FIELDS",
    description:
      "Comma-separated response fields followed before CDN-Cache-Control (RFC 9213), most specific first, e.g. CachingProxy-Cache-Control",
  },
  store: {
    type: "string",
    valueHint: "WHERE",
    description: "Where entries live: file (--cache-dir), redis://host:port[/db], rediss://… or redis-cluster://host:port,…",
    default: "file",
  },
  "store-prefix": { type: "string", valueHint: "NAME", description: "Namespace of this cache's keys in Redis", default: "caching-proxy" },
  "admin-port": {
    type: "string",
    valueHint: "N",
    description: "Port of the admin listener: health, JSON API, purge, metrics, inspector (default: none)",
  },
  "admin-host": {
    type: "string",
    valueHint: "ADDR",
    description: "Address of the admin listener (other than loopback only with --admin-token)",
    default: "127.0.0.1",
  },
  "admin-token": { type: "string", valueHint: "TOKEN", description: "Bearer token every admin request must carry" },
  "keep-tag-headers": { type: "boolean", description: "Pass Surrogate-Key and Cache-Tag on to clients (default: removed, as CDNs do)" },
  workers: {
    type: "string",
    valueHint: "N",
    description: "Processes answering on the port, sharing the cache (auto: one per core)",
    default: "1",
  },
  quiet: { type: "boolean", description: "Do not log each request" },
  "log-format": {
    type: "string",
    valueHint: "FORMAT",
    description: "text (lines starting with an ISO-8601 time) or json (one object per line)",
    default: "text",
  },
  help: { type: "boolean", description: "Show this help", alias: "h" },
  version: { type: "boolean", description: "Show the version", alias: "v" },
} as const

const DESCRIPTION = "A caching HTTP reverse proxy for one origin."

// Set by `bun build --define` (.ci/build.ts) in the binary and the Node bundle; absent from source.
declare const BUILD_VERSION: string | undefined
declare const BUILD_COMMIT: string | undefined

/** "caching-proxy 0.1.0 (commit 0123456789ab)": what was built, or from source what is checked out. */
function versionLine(): string {
  const version = typeof BUILD_VERSION === "string" ? BUILD_VERSION : packageJson.version
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

type Args = ReturnType<typeof parseArgs<typeof args>>

const SIZE = /^(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?$/i
const SIZE_UNITS: Record<string, number> = { "": 1, b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }

function parseSize(name: string, value: string): number {
  const match = SIZE.exec(value.trim())
  if (!match) throw new UsageError(`--${name} must be a size such as 1048576, 64M or 1G (got "${value}")`)
  const unit = (match[2] ?? "").charAt(0).toLowerCase()
  return Math.floor(Number(match[1]) * (SIZE_UNITS[unit] ?? 1))
}

function parseSeconds(name: string, value: string, least: "zero" | "positive" = "zero"): number {
  const seconds = Number(value)
  const valid = /^\d+(\.\d+)?$/.test(value.trim()) && (least === "zero" || seconds > 0)
  if (!valid)
    throw new UsageError(`--${name} must be a number of seconds, ${least === "zero" ? "0 or more" : "more than 0"} (got "${value}")`)
  return seconds
}

// Bun's and Node's timers fire at once when asked to wait more than 2^31-1 ms (about 24.8 days).
const MAX_TIMER_MS = 2 ** 31 - 1

function parseTimeout(value: string): number {
  const seconds = parseSeconds("timeout", value, "positive")
  if (seconds * 1000 > MAX_TIMER_MS)
    throw new UsageError(`--timeout must be at most ${Math.floor(MAX_TIMER_MS / 1000)} seconds (got "${value}")`)
  return seconds
}

function parsePort(value: string, name = "port"): number {
  const port = Number(value)
  if (!/^\d+$/.test(value.trim()) || port > 65535) throw new UsageError(`--${name} must be 0-65535 (got "${value}")`)
  return port
}

/** --admin-port, --admin-host, --admin-token: none without a port; a token wherever others can reach it. */
function parseAdmin(parsed: Args, proxyPort: number): AdminListenOptions | undefined {
  const token = parsed["admin-token"]
  if (parsed["admin-port"] === undefined) {
    if (token !== undefined) throw new UsageError("--admin-token is given without --admin-port, which starts the admin listener")
    return undefined
  }
  const port = parsePort(parsed["admin-port"], "admin-port")
  if (port !== 0 && port === proxyPort) throw new UsageError(`--admin-port must differ from --port (both are ${port})`)
  const host = parsed["admin-host"]
  const tokenProblem = checkAdminToken(host, token)
  if (tokenProblem !== undefined) throw new UsageError(tokenProblem)
  return { port, host, token }
}

/** --workers: a count, or auto for as many as the cores this process may use. */
function parseWorkers(value: string): number {
  if (value === "auto") return availableParallelism()
  const count = Number(value)
  if (!/^\d+$/.test(value.trim()) || count < 1)
    throw new UsageError(`--workers must be a number of processes, 1 or more, or auto (got "${value}")`)
  return count
}

function parseOrigin(value: string | undefined): string {
  if (value === undefined || value === "") throw new UsageError(`--origin is required, e.g. --origin https://api.example.com`)
  let url: URL
  try {
    url = new URL(value)
  } catch {
    throw new UsageError(`--origin must be an http or https URL (got "${value}")`)
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new UsageError(`--origin must be an http or https URL (got "${value}")`)
  // An empty query or fragment ("…/?", "…/#") leaves url.search and url.hash empty, yet would be
  // glued to every request path: any ? or # is refused.
  if (/[?#]/.test(value) || url.username || url.password)
    throw new UsageError(`--origin must not have a query, fragment or credentials (got "${value}")`)
  return url.href.replace(/\/+$/, "")
}

/** --public-url: a scheme and an authority, nothing else, since only those are told to the origin. */
function parsePublicUrl(value: string | undefined): string | undefined {
  if (value === undefined) return undefined
  const url = URL.canParse(value) ? new URL(value) : undefined
  const isBare = url && /^https?:$/.test(url.protocol) && url.pathname === "/" && !/[?#]/.test(value) && !url.username && !url.password
  if (!isBare) throw new UsageError(`--public-url must be an http or https URL with no path, query or credentials (got "${value}")`)
  return url.origin
}

function parseLogFormat(value: string): LogFormat {
  if (!(LOG_FORMATS as readonly string[]).includes(value)) throw new UsageError(`--log-format must be text or json (got "${value}")`)
  return value as LogFormat
}

function parseStore(value: string): StoreChoice {
  if (value === "file") return { kind: "file" }
  try {
    return { kind: "redis", target: parseRedisUrl(value) }
  } catch (error) {
    throw new UsageError(`--store ${(error as Error).message}`)
  }
}

/** A Redis store URL: one server as ioredis takes it, or a Cluster's seed nodes. */
function parseRedisUrl(url: string): RedisTarget {
  const usage = `must be file, redis://host:port[/db], rediss://… or redis-cluster://host:port[,host:port…] (got "${url}")`
  if (url.startsWith("redis-cluster://")) {
    const nodes = url.slice("redis-cluster://".length).split(",")
    return {
      cluster: nodes.map((node) => {
        const match = /^([^:/@]+):(\d{1,5})$/.exec(node.trim())
        if (!match || Number(match[2]) > 65535) throw new Error(usage)
        return { host: match[1] as string, port: Number(match[2]) }
      }),
    }
  }
  if (!URL.canParse(url)) throw new Error(usage)
  const { protocol, hostname, pathname, search, hash } = new URL(url)
  const database = pathname === "" || pathname === "/" || /^\/\d+$/.test(pathname)
  if ((protocol !== "redis:" && protocol !== "rediss:") || !hostname || !database || search || hash) throw new Error(usage)
  return { single: url }
}

// RFC 9110 §5.1: a field name is a token.
const FIELD_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/

/** --targeted-cache-control: field names, none of them Cache-Control itself (it is what they override). */
function parseTargetedFields(value: string | undefined): string[] {
  if (value === undefined) return []
  const names = value.split(",").map((name) => name.trim())
  if (names.some((name) => !FIELD_NAME.test(name) || name.toLowerCase() === "cache-control"))
    throw new UsageError(`--targeted-cache-control must be comma-separated field names other than Cache-Control (got "${value}")`)
  return names
}

function defaultCacheDir(): string {
  const base = process.env.XDG_CACHE_HOME || join(homedir(), ".cache")
  return join(base, "caching-proxy")
}

/** Every spelling citty accepts for each flag: its name, its alias, and `--no-` for booleans. */
const FLAG_TYPES = new Map<string, string>(
  Object.entries(args).flatMap(([name, def]) => [
    [name, def.type],
    ...("alias" in def ? [[def.alias, def.type] as [string, string]] : []),
    ...(def.type === "boolean" ? [[`no-${name}`, def.type] as [string, string]] : []),
  ]),
)

/** The flag an argument names ("--port=1" and "--no-quiet" included), or undefined for a value. */
function flagName(arg: string): string | undefined {
  return arg.startsWith("-") ? arg.replace(/^--?(no-)?/, "").split("=", 1)[0] : undefined
}

// Actions, not settings: a variable left in a service's environment would clear the cache (and
// exit) on every start, so CACHING_PROXY_CLEAR_CACHE is refused; help and version are not read.
const ACTIONS = new Set(["clear-cache", "help", "version"])

/**
 * CACHING_PROXY_<FLAG> (e.g. CACHING_PROXY_ORIGIN, CACHING_PROXY_MAX_SIZE) for each setting flag
 * the command line leaves out; the command line wins. Booleans take 1/true/yes or 0/false/no.
 * Returns each flag taken from the environment with the variable it came from.
 */
function flagsFromEnvironment(commandLine: string[], env: NodeJS.ProcessEnv): Map<string, { arg: string; variable: string }> {
  const given = new Set(commandLine.map(flagName))
  if (env[environmentVariable("clear-cache")])
    throw new UsageError(`${environmentVariable("clear-cache")} is not read: give --clear-cache on the command line`)
  const taken = new Map<string, { arg: string; variable: string }>()
  for (const [name, def] of Object.entries(args)) {
    const variable = environmentVariable(name)
    const value = env[variable]
    if (value === undefined || given.has(name) || ACTIONS.has(name)) continue
    if (def.type === "boolean" && !/^(1|true|yes|0|false|no)$/i.test(value))
      throw new UsageError(`${variable} must be 1, true, yes, 0, false or no (got "${value}")`)
    if (def.type === "boolean" && !/^(1|true|yes)$/i.test(value)) continue
    taken.set(name, { arg: def.type === "boolean" ? `--${name}` : `--${name}=${value}`, variable })
  }
  return taken
}

/** An error about a flag that came from the environment names the variable the user set instead. */
function namingVariable(error: unknown, fromEnvironment: Map<string, { variable: string }>): unknown {
  const flag = error instanceof UsageError ? /^--([a-z-]+)/.exec(error.message)?.[1] : undefined
  const source = flag === undefined ? undefined : fromEnvironment.get(flag)
  return source && flag ? new UsageError(source.variable + (error as Error).message.slice(flag.length + 2)) : error
}

/** Refuses what citty would let through: unknown flags, flags given twice, stray arguments. */
function checkRawArgs(rawArgs: string[]): void {
  const seen = new Set<string>()
  let expectsValue = false
  for (const arg of rawArgs) {
    if (expectsValue && !arg.startsWith("--")) {
      expectsValue = false
      continue
    }
    if (!arg.startsWith("-") || arg === "-" || arg === "--")
      throw new UsageError(`unexpected argument "${arg}" (flags start with --; see --help)`)
    const [name = "", value] = arg.replace(/^--?/, "").split(/=(.*)/s)
    const type = FLAG_TYPES.get(name)
    if (!type) throw new UsageError(`unknown flag "${arg}" (see --help)`)
    const flag = flagName(arg) ?? name
    if (seen.has(flag)) throw new UsageError(`--${flag} is given more than once`)
    seen.add(flag)
    expectsValue = type === "string" && value === undefined
  }
}

/** Converts and validates the parsed flags. */
export function parseOptions(parsed: Args): ProxyOptions {
  for (const [name, def] of Object.entries(args)) {
    if (def.type === "string" && parsed[name] === "") throw new UsageError(`--${name} needs a value`)
  }
  const port = parsePort(parsed.port)
  const workers = parseWorkers(parsed.workers)
  if (workers > 1 && parsed["admin-port"] !== undefined) throw new UsageError("--admin-port cannot be used with --workers yet")
  return {
    port,
    host: parsed.host,
    publicUrl: parsePublicUrl(parsed["public-url"]),
    trustForwarded: Boolean(parsed["trust-forwarded"]),
    rewriteLocation: Boolean(parsed["rewrite-location"]),
    origin: parsed["clear-cache"] ? "" : parseOrigin(parsed.origin),
    cacheDir: resolve(parsed["cache-dir"] ?? defaultCacheDir()),
    ttlSeconds: parseSeconds("ttl", parsed.ttl),
    timeoutSeconds: parseTimeout(parsed.timeout),
    quiet: Boolean(parsed.quiet),
    logFormat: parseLogFormat(parsed["log-format"]),
    metrics: false,
    memorySize: parseSize("memory-size", parsed["memory-size"]),
    maxSize: parseSize("max-size", parsed["max-size"]),
    maxEntrySize: parseSize("max-entry-size", parsed["max-entry-size"]),
    forceTtlSeconds: parseSeconds("force-ttl", parsed["force-ttl"]),
    ignoreQuery: (parsed["ignore-query"] ?? "")
      .split(",")
      .map((name) => name.trim())
      .filter(Boolean),
    offline: Boolean(parsed.offline),
    shareCookies: Boolean(parsed["share-cookies"]),
    targetedCacheControl: parseTargetedFields(parsed["targeted-cache-control"]),
    store: parseStore(parsed.store),
    storePrefix: parsed["store-prefix"],
    admin: parseAdmin(parsed, port),
    keepTagHeaders: Boolean(parsed["keep-tag-headers"]),
    workers,
  }
}

// ───────────────────────────── the runtime seam ─────────────────────────────

interface Listener {
  port: number
  /** Stops accepting; resolves when requests in flight have finished (at once when forced). */
  stop(force?: boolean): Promise<void>
  /** Requests not yet answered in full. */
  inFlight(): number
}

/** What differs between Bun and Node, chosen once at start-up. */
interface Runtime {
  /**
   * Sends one request to the origin, bytes untouched: no decompression, no redirects followed.
   * The origin's interim (1xx) responses go to `interim`, where the runtime's client shows them.
   */
  fetch(
    target: string,
    method: string,
    headers: Headers,
    body: ReadableStream<Uint8Array> | null,
    timeoutMs: number,
    interim?: Interim,
  ): Promise<Response>
  /** Where this request's interim responses go ahead of its final one; undefined where the server cannot send them. */
  interimTo(c: Context, warn: Warn): Interim | undefined
  /**
   * Serves the app; what fails outside it (`warn`ed) is answered by `unsent`, never by the runtime.
   * `reusePort`: other processes (workers) listen on the port too.
   */
  listen(app: Hono, host: string, port: number, idleTimeoutSeconds: number, warn: Warn, reusePort: boolean): Promise<Listener>
  /** The client's address, for X-Forwarded-For. */
  clientAddress(c: Context): string | undefined
  /** The port the request came in on: the one listened on. */
  localPort(c: Context): number | undefined
  /** The request-target as the client sent it (path and query), as raw as the runtime keeps it. */
  requestTarget(c: Context): string
  /** How the file store reads bodies. */
  files: FileApi
}

/** Takes an interim (1xx) response from the origin: its status and its header pairs as received. */
type Interim = (status: number, rawHeaders: string[]) => void

/** Aborts the origin request if its headers have not come within `timeoutMs`. */
async function withTimeout(timeoutMs: number, send: (signal: AbortSignal) => Promise<Response>): Promise<Response> {
  const controller = new AbortController()
  const timer = setTimeout(() => controller.abort(), timeoutMs)
  try {
    return await send(controller.signal)
  } catch (error) {
    if (controller.signal.aborted) throw new OriginError(504, `the origin did not answer within ${timeoutMs / 1000} s`, "timeout")
    if (error instanceof OriginError) throw error
    throw new OriginError(502, `the origin is unreachable (${(error as Error).message})`, failureOf(error))
  } finally {
    clearTimeout(timer)
  }
}

// Error codes of node:http and Bun's fetch, by what the access log and metrics call them.
const FAILURE_CODES: Record<string, OriginFailure> = {
  ECONNREFUSED: "refused",
  ECONNRESET: "reset",
  EPIPE: "reset",
  ENOTFOUND: "dns",
  EAI_AGAIN: "dns",
  EAI_NONAME: "dns",
  EAI_FAIL: "dns",
}

function failureOf(error: unknown): OriginFailure {
  return FAILURE_CODES[(error as NodeJS.ErrnoException).code ?? ""] ?? "other"
}

/** The path and query of a URL or request-target, whatever authority it names. */
function pathAndQuery(target: string): string {
  if (target.startsWith("/")) return target
  const authorityStart = target.indexOf("://")
  const pathStart = authorityStart === -1 ? -1 : target.indexOf("/", authorityStart + 3)
  return pathStart === -1 ? "/" : target.slice(pathStart)
}

// RFC 9110 §15.2.2: a 101 hands the connection over to another protocol; we proxy HTTP only.
const UPGRADE_REFUSED = "the origin switched protocols (101), and upgrades are not proxied"

/**
 * The answer to a request whose response failed where the app cannot catch it (Bun: a body that
 * fails before its first byte is sent): a 502 with one line, never the runtime's own error page.
 */
function unsent(error: unknown, warn: Warn): Response {
  warn("proxy", `a response could not be sent: ${error instanceof Error ? error.message : String(error)}`)
  return answer(502, "the origin's answer could not be relayed\n", "detail=origin-error")
}

const bunRuntime: Runtime = {
  fetch: (target, method, headers, body, timeoutMs) =>
    withTimeout(timeoutMs, (signal) =>
      fetch(target, { method, headers, body, signal, redirect: "manual", decompress: false } as RequestInit).catch((error) => {
        const code = (error as { code?: string }).code
        if (code === "UnrequestedUpgrade") throw new OriginError(502, UPGRADE_REFUSED)
        // RFC 9112 §6.3: a body under a transfer coding other than chunked ends when the connection
        // closes. Bun's fetch refuses one it does not know; its node:http relays it. Only a safe
        // method is asked again (RFC 9110 §9.2.1): the origin may have acted on the first.
        if (code === "UnsupportedTransferEncoding" && (method === "GET" || method === "HEAD"))
          return nodeFetch(target, method, headers, null, signal, undefined)
        throw error
      }),
    ),
  async listen(app, host, port, idleTimeoutSeconds, warn, reusePort) {
    const server = Bun.serve({
      hostname: host,
      port,
      reusePort,
      fetch: app.fetch,
      idleTimeout: idleTimeoutSeconds,
      // Uploads stream to the origin; the origin decides what it accepts.
      maxRequestBodySize: Number.MAX_SAFE_INTEGER,
      // Never Bun's development error page (50 KB of HTML naming the working directory). Not by
      // `development: false`: Bun then shares the port with a second server (SO_REUSEPORT).
      error: (error) => unsent(error, warn),
    })
    return { port: server.port ?? port, stop: (force) => server.stop(force), inFlight: () => server.pendingRequests }
  },
  // RFC 9110 §15.2 asks a proxy to forward 1xx responses; Bun's fetch hides them and Bun.serve
  // has no way to send one (README, "Known limits").
  interimTo: () => undefined,
  clientAddress: (c) => (c.env as { requestIP?: (r: Request) => { address: string } | null })?.requestIP?.(c.req.raw)?.address,
  localPort: (c) => (c.env as { port?: number } | undefined)?.port,
  requestTarget: (c) => pathAndQuery(c.req.raw.url),
  files: bunFiles,
}

const keepAlive = { keepAlive: true }
const agents = { "http:": new HttpAgent(keepAlive), "https:": new HttpsAgent(keepAlive) }

/** Node's global fetch always decompresses, so the Node leg speaks node:http directly. */
function nodeFetch(
  target: string,
  method: string,
  headers: Headers,
  body: ReadableStream<Uint8Array> | null,
  signal: AbortSignal,
  interim: Interim | undefined,
) {
  const url = new URL(target)
  const send = url.protocol === "https:" ? httpsRequest : httpRequest
  return new Promise<Response>((resolvePromise, reject) => {
    const outgoing = send(
      url,
      { method, headers: Object.fromEntries(headers), agent: agents[url.protocol as "http:"], signal },
      (incoming) => {
        try {
          resolvePromise(toResponse(incoming, method))
        } catch (error) {
          incoming.destroy() // an answer no `Response` can carry: a 502, not a crash
          reject(error)
        }
      },
    )
    outgoing.on("error", reject)
    if (interim) outgoing.on("information", (info) => interim(info.statusCode, info.rawHeaders))
    // Without this listener node:http drops the socket and neither answers nor fails: a client
    // would wait forever.
    outgoing.on("upgrade", (_, socket) => {
      socket.destroy()
      reject(new OriginError(502, UPGRADE_REFUSED))
    })
    if (body)
      Readable.fromWeb(body as import("node:stream/web").ReadableStream)
        .on("error", reject)
        .pipe(outgoing)
    else outgoing.end()
  })
}

function toResponse(incoming: IncomingMessage, method: string): Response {
  const headers = new Headers()
  const raw = incoming.rawHeaders
  for (let i = 0; i < raw.length; i += 2) headers.append(raw[i] as string, raw[i + 1] as string)
  const status = incoming.statusCode ?? 502
  // RFC 9110 §15: a final status is 200-599. The Response @hono/node-server puts in place checks
  // it only once its body is read, too late for a 502: it is checked here.
  if (!isFinalStatus(status))
    throw new OriginError(502, `the origin answered with status ${status}, which is not a final HTTP status (200-599)`)
  const hasBody = method !== "HEAD" && status !== 204 && status !== 304
  const body = hasBody ? (Readable.toWeb(incoming) as ReadableStream<Uint8Array>) : null
  if (!hasBody) incoming.resume()
  return new Response(body, { status, statusText: incoming.statusMessage, headers })
}

/** A connection that can be closed at once: the client's, under Node. */
interface Closable {
  destroy(): void
}

/**
 * Under Node, a MISS's body (the origin's, streaming) ends whole or cuts the connection short:
 * @hono/node-server would end a failed body with "Error: …" as its last bytes, framed as if
 * complete, and print the error. Hits are left as they are: from memory they are bytes, which the
 * adapter sends whole with their length.
 */
function cutOnFailure(response: Response | Promise<Response>, connection: Closable, warn: Warn): Response | Promise<Response> {
  const guarded = (ready: Response) =>
    ready.headers.get("x-cache") === "MISS" && ready.body ? new Response(endOrCut(ready.body, connection, warn), ready) : ready
  return response instanceof Promise ? response.then(guarded) : guarded(response)
}

/** The body as it comes; when it fails, the connection is closed, so the client sees it cut short. */
function endOrCut(body: ReadableStream<Uint8Array>, connection: Closable, warn: Warn): ReadableStream<Uint8Array> {
  const reader = body.getReader()
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        const chunk = await reader.read().catch((error: unknown) => ({ error }))
        if (!("error" in chunk)) return chunk.done ? controller.close() : controller.enqueue(chunk.value)
        // A failure with no reason was reported by the cache already, as it stopped storing.
        if (chunk.error !== undefined) warn("origin-body", `the origin's body failed (${(chunk.error as Error).message})`)
        // Left neither ended nor failed: closing the connection makes the adapter cancel it.
        connection.destroy()
      },
      cancel: (reason) => reader.cancel(reason),
    },
    { highWaterMark: 0 },
  )
}

/**
 * RFC 9110 §15.2: an interim response from the origin, forwarded to the client before the final
 * one, as far as node:http can write one: 102 and 103, less hop-by-hop fields. 100 Continue
 * belongs to each hop's own Expect handshake (node:http answers the client's itself), and 101
 * is refused as an upgrade. Once the final response has begun (a background refresh) nothing
 * more can go before it.
 */
function sendInterim(outgoing: ServerResponse, status: number, rawHeaders: string[], warn: Warn): void {
  if (outgoing.headersSent || outgoing.destroyed) return
  if (status === 102) outgoing.writeProcessing()
  if (status !== 103) return
  const headers = new Headers()
  for (let i = 0; i < rawHeaders.length; i += 2) headers.append(rawHeaders[i] as string, rawHeaders[i + 1] as string)
  const isHopByHop = hopByHopFilter(headers)
  const hints: Record<string, string | string[]> = { link: headers.get("link")?.split(/,\s*(?=<)/) ?? [] }
  for (const [name, value] of headers) if (name !== "link" && !isHopByHop(name)) hints[name] = value
  // node:http sends a 103 only with a Link it finds well formed: hints are hints, so one that
  // cannot go is left out, and the final response follows as ever.
  try {
    outgoing.writeEarlyHints(hints)
  } catch (error) {
    warn("origin-body", `a 103 Early Hints from the origin was not forwarded: ${(error as Error).message}`)
  }
}

const nodeRuntime: Runtime = {
  fetch: (target, method, headers, body, timeoutMs, interim) =>
    withTimeout(timeoutMs, (signal) => nodeFetch(target, method, headers, body, signal, interim)),
  // Workers share the port through node:cluster, which hands them connections: no reusePort here.
  async listen(app, host, port, _idleTimeoutSeconds, warn) {
    const { getRequestListener, RequestError } = await import("@hono/node-server")
    const handle = getRequestListener((request, env) => cutOnFailure(app.fetch(request, env), env.outgoing, warn), {
      hostname: host,
      // The server's own error handler, for what Hono's onError never sees: a request the adapter
      // cannot read is a 400, anything else a 502, never its bare 500.
      errorHandler: (error) =>
        error instanceof RequestError ? answer(400, "the request cannot be read\n", "detail=bad-request") : unsent(error, warn),
    })
    let inFlight = 0
    const server = createServer((request, response) => {
      inFlight++
      response.once("close", () => inFlight--)
      return handle(request, response)
    })
    return new Promise((resolvePromise, reject) => {
      server.once("error", reject)
      server.listen(port, host, () =>
        resolvePromise({
          port: (server.address() as AddressInfo).port,
          stop: (force) =>
            new Promise<void>((done) => {
              server.close(() => done())
              if (force) server.closeAllConnections()
              else server.closeIdleConnections()
            }),
          inFlight: () => inFlight,
        }),
      )
    })
  },
  interimTo: (c, warn) => {
    const outgoing = (c.env as { outgoing?: ServerResponse } | undefined)?.outgoing
    return outgoing && ((status, rawHeaders) => sendInterim(outgoing, status, rawHeaders, warn))
  },
  clientAddress: (c) => (c.env as { incoming?: IncomingMessage })?.incoming?.socket.remoteAddress,
  localPort: (c) => (c.env as { incoming?: IncomingMessage })?.incoming?.socket.localPort,
  requestTarget: (c) => pathAndQuery((c.env as { incoming?: IncomingMessage })?.incoming?.url ?? c.req.raw.url),
  files: nodeFiles,
}

const runtime: Runtime = typeof Bun !== "undefined" ? bunRuntime : nodeRuntime

// ───────────────────────────── the app ─────────────────────────────

// A ".." that only the origin may see: behind an encoded slash or backslash, or with a
// ;parameter (as Tomcat reads "..;"). An origin that resolved it would climb above its base path.
const HIDDEN_DOT_DOT = /(?:^|[/\\]|%2f|%5c)(?:\.|%2e){2}(?:;[^/\\]*)?(?:$|[/\\]|%2f|%5c)/i
const HIDDEN_DOT_DOT_REFUSED = "a .. segment behind an encoded separator or a ;parameter is refused\n"
// What a path must hold to need resolving: most paths hold none of it.
const MAY_CLIMB = /\\|%2f|%5c|(?:^|\/)(?:\.|%2e)/i

/**
 * The request's path and query with dot segments resolved against the root (RFC 3986 §5.2.4, as
 * the WHATWG URL parser reads them: %2E is a dot, \ a slash), so that once appended to the
 * origin's base path nothing climbs above it; undefined when a ".." hides from that reading.
 * Bun.serve resolves the path so already; Node hands it over raw.
 */
function resolvedPath(pathAndQuery: string): string | undefined {
  const queryStart = pathAndQuery.indexOf("?")
  const path = queryStart === -1 ? pathAndQuery : pathAndQuery.slice(0, queryStart)
  if (!MAY_CLIMB.test(path)) return pathAndQuery
  const resolved = new URL(`http://root${path}`).pathname
  if (HIDDEN_DOT_DOT.test(resolved)) return undefined
  return queryStart === -1 ? resolved : resolved + pathAndQuery.slice(queryStart)
}

/**
 * Fields by which proxies tell the origin who the client is and how it reached them, and those
 * frameworks read as the request's host or URL. From a client they are forged, and none is in the
 * cache key: an origin that built a page from one would have the cache serve it to everyone
 * (cache poisoning). Dropped unless --trust-forwarded.
 */
const FORWARDING_FIELDS = new Set([
  "forwarded",
  "x-real-ip",
  "x-client-ip",
  "true-client-ip",
  "cf-connecting-ip",
  "fastly-client-ip",
  "x-cluster-client-ip",
  "x-host",
  "x-original-host",
  "x-original-url",
  "x-rewrite-url",
])

function isForwardingField(name: string): boolean {
  return name.startsWith("x-forwarded-") || FORWARDING_FIELDS.has(name)
}

/** What the forwarding fields say of one request: from its connection and our configuration only. */
interface Hop {
  /** The client's address, as the connection has it. */
  client: string | undefined
  /** How clients reach the proxy (--public-url, else the address it listens on). */
  host: string
  proto: string
  /** --trust-forwarded: the request's own forwarding fields stay, and ours extend them. */
  trustForwarded: boolean
  /** Whether a body goes to the origin with the request. */
  hasBody: boolean
}

/** The headers sent to the origin: the client's, less hop-by-hop and forwarding fields, plus ours. */
function forwardedHeaders(incoming: Headers, hop: Hop): Headers {
  const isHopByHop = hopByHopFilter(incoming)
  const headers = new Headers()
  for (const [name, value] of incoming) {
    // Host is the origin's, set from the target URL.
    if (isHopByHop(name) || name === "host" || (!hop.trustForwarded && isForwardingField(name))) continue
    headers.append(name, value)
  }
  // RFC 9112 §6.3: a Content-Length with no body sent would have the origin read the start of
  // the next request on the connection as this one's body (request smuggling).
  if (!hop.hasBody) headers.delete("content-length")
  // A client's fields are still here only under --trust-forwarded: ours then extend their lists
  // (RFC 7239 §4), and the host and scheme the proxy in front was reached by stay.
  if (hop.client) headers.append("x-forwarded-for", hop.client)
  headers.append("forwarded", forwardedElement(hop))
  if (!headers.has("x-forwarded-host")) headers.set("x-forwarded-host", hop.host)
  if (!headers.has("x-forwarded-proto")) headers.set("x-forwarded-proto", hop.proto)
  headers.append("via", VIA)
  return headers
}

/** Our element of Forwarded (RFC 7239 §4): who connected to us, and how clients reach us. */
function forwardedElement(hop: Hop): string {
  // RFC 7239 §6: an IPv6 address is bracketed and quoted; §6.3: an address not known is "unknown".
  const node = hop.client === undefined ? "unknown" : hop.client.includes(":") ? `"[${hop.client}]"` : hop.client
  return `for=${node};host="${hop.host}";proto=${hop.proto}`
}

/** Where the proxy's messages go: tests and embedders pass their own. */
export interface ProxyOutput {
  /** One line per request (unless quiet). @default console.log */
  log: (line: string) => void
  /** Failures the proxy carries on after. @default each kind to stderr, at most once a minute */
  warn: Warn
  /** Under --workers, the worker these are: each access line names it. @default undefined: a lone proxy */
  worker: number | undefined
}

/** Where entries live, as the start line says it: a directory, or Redis with this cache's namespace. */
function whereEntriesLive(options: ProxyOptions): string {
  if (options.store.kind === "file") return options.cacheDir
  const { target } = options.store
  const where = "single" in target ? new URL(target.single).host : target.cluster.map(({ host, port }) => `${host}:${port}`).join(",")
  return `Redis at ${where} (keys ${options.storePrefix}:*)`
}

/** The store entries live in: the disk under --cache-dir, or Redis (its code loaded only then). */
async function openStore(options: ProxyOptions, warn: Warn): Promise<Store> {
  if (options.store.kind === "file") {
    // A worker's share of the directory its primary indexes (proxy/workers.ts).
    const member = workerRole() !== undefined
    const files = new FileStore({ dir: options.cacheDir, maxBytes: options.maxSize, files: runtime.files, warn, member })
    return member ? new GroupMemberStore(files, primaryChannel()) : files
  }
  // A literal specifier: `bun build --compile` bundles it, and other runs never load ioredis.
  const { RedisStore } = await import("./cache/redis-store.ts")
  return new RedisStore({ target: options.store.target, prefix: options.storePrefix, warn })
}

/** What the cache holds: memory (--memory-size) in front of the store, per process. */
function tiered(options: ProxyOptions, behind: Store): Store {
  const memory = new MemoryStore({ maxBytes: options.memorySize })
  const memoryBodyLimit = Math.min(MEMORY_BODY_LIMIT_BYTES, options.memorySize / 8)
  return new TieredStore(memory, behind, { memoryBodyLimit })
}

/** The origin's part in one request, for its access line. */
interface OriginTrip {
  ms?: number
  failure?: OriginFailure
}

/** Builds the proxy as a Hono app, and its admin app (tests and embedders serve them themselves). */
export async function createProxy(options: ProxyOptions, output: Partial<ProxyOutput> = {}) {
  const { log = console.log, warn = createWarn(options.logFormat), worker } = output
  const behind = await openStore(options, warn)
  const store = tiered(options, behind)
  const cache = new Cache(store, {
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
  })
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
    // Read only when logging: a metrics-only answer given at once (a hit from memory) reads no clock.
    const arrived = accessLog ? performance.now() : undefined
    // Hono routes HEAD as GET; the method we forward is the client's.
    const method = c.req.raw.method
    const requested = runtime.requestTarget(c)
    const path = resolvedPath(requested)
    const trip: OriginTrip | undefined = record ? {} : undefined
    const response = path === undefined ? answer(400, HIDDEN_DOT_DOT_REFUSED, "detail=bad-request") : respond(c, method, path, trip)
    if (!trip && !options.rewriteLocation) return response
    const shown = path ?? requested
    if (!(response instanceof Promise)) return sent(c, response, method, shown, arrived, trip)
    // An answer that takes a while is timed (from here when not logging: the lookup so far took microseconds).
    const started = arrived ?? (record ? performance.now() : undefined)
    return response.then(
      (ready) => sent(c, ready, method, shown, started, trip),
      (error) => sent(c, failed(error, method, shown), method, shown, started, trip),
    )
  })

  /** The response on its way out: Location rewritten (--rewrite-location), recorded once sent. */
  function sent(c: Context, ready: Response, method: string, path: string, started: number | undefined, trip: OriginTrip | undefined) {
    if (options.rewriteLocation) rewriteLocations(ready.headers, originUrl, proxyBase(c))
    return record && trip ? timed(ready, method, path, started, trip, record) : ready
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
    return cache.respond(method, request.headers, target, forward)
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
    return answer(
      isOrigin ? error.status : 502,
      `${isOrigin ? error.message : "the proxy failed to forward this request"}\n`,
      "fwd=uri-miss; detail=origin-error",
    )
  }

  app.onError((error, c) => failed(error, c.req.method, runtime.requestTarget(c)))

  const admin =
    options.admin &&
    metrics &&
    createAdmin({ cache, origin: options.origin, token: options.admin.token, clientAddress: runtime.clientAddress, metrics, warn })
  return { app, cache, metrics, admin }
}

// The fields by which a response names URLs of its own: RFC 9110 §10.2.2, §8.7.
const LOCATION_FIELDS = ["location", "content-location"]

/**
 * --rewrite-location: an absolute URL in Location or Content-Location at or under the origin's
 * base URL becomes the same path under the proxy's, so the client is not sent past the proxy.
 * Relative URLs point at the proxy already; other hosts, and the origin's paths outside its base
 * (which no proxy path reaches), stay as sent. The path and query are kept byte for byte.
 */
function rewriteLocations(headers: Headers, origin: URL, proxyBase: string): void {
  const basePath = origin.pathname === "/" ? "" : origin.pathname
  for (const name of LOCATION_FIELDS) {
    const value = headers.get(name)
    if (value === null || !URL.canParse(value) || new URL(value).origin !== origin.origin) continue
    const path = pathAndQuery(value)
    const rest = path.slice(basePath.length)
    if (!path.startsWith(basePath) || !/^(?:$|[/?#])/.test(rest)) continue
    headers.set(name, proxyBase + (rest.startsWith("/") ? rest : `/${rest}`))
  }
}

/**
 * Records the request once its body's last byte is handed to the server. A body from the origin
 * streams, so it is timed as it ends. A hit's body (bytes from memory, or a file Bun sends by
 * sendfile) is not touched: reading `.body` turns Bun's bytes into a stream (a fifth of the hit
 * throughput, measured), and Bun tells nothing when it has sent a body; a hit is timed when handed
 * over, and counted by its Content-Length. `started` undefined: answered at once, and not timed
 * (0 ms: a clock read costs about 0.17 µs on a VM, two of them some 2 % of a hit).
 */
function timed(
  response: Response,
  method: string,
  path: string,
  started: number | undefined,
  trip: OriginTrip,
  record: (access: Access) => void,
): Response {
  const { status, headers } = response
  const cache = cacheOutcome(headers.get("cache-status"))
  const originError = trip.failure && (status === 502 || status === 504) ? trip.failure : undefined
  const access: Access = { method, path, status, cache, ms: 0, bytes: 0, originMs: trip.ms, originError }
  if (isFromCache(cache)) {
    access.bytes = method === "HEAD" || status === 304 ? 0 : Number(headers.get("content-length") ?? 0)
    access.ms = started === undefined ? 0 : performance.now() - started
    record(access)
    return response
  }
  const finish = (bytes: number) => {
    access.bytes = bytes
    access.ms = started === undefined ? 0 : performance.now() - started
    record(access)
  }
  if (!response.body) {
    finish(0)
    return response
  }
  return new Response(counted(response.body, finish), response)
}

/** The body as it comes; `finish` gets the bytes sent once it ends, fails or is cancelled. */
function counted(body: ReadableStream<Uint8Array>, finish: (bytes: number) => void): ReadableStream<Uint8Array> {
  const reader = body.getReader()
  let bytes = 0
  let finished = false
  const end = () => {
    if (!finished) finish(bytes)
    finished = true
  }
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        const chunk = await reader.read().catch((error: unknown) => {
          end()
          throw error
        })
        if (chunk.done) {
          end()
          return controller.close()
        }
        bytes += chunk.value.byteLength
        controller.enqueue(chunk.value)
      },
      cancel(reason) {
        end()
        return reader.cancel(reason)
      },
    },
    { highWaterMark: 0 },
  )
}

/** Serves the app on the current runtime; what fails outside the app is reported to `warn`. */
export function serve(app: Hono, options: ListenOptions, warn: Warn = createWarn()): Promise<Listener> {
  // Bun closes idle connections after 10 s by default: wait at least as long as the origin may.
  const idleTimeoutSeconds = Math.min(255, Math.ceil(options.timeoutSeconds) + 10)
  return runtime.listen(app, options.host, options.port, idleTimeoutSeconds, warn, options.reusePort ?? false)
}

/** Where and how to listen; `reusePort`: the port is shared with other workers. @default reusePort false */
type ListenOptions = Pick<ProxyOptions, "host" | "port" | "timeoutSeconds"> & { reusePort?: boolean }

/**
 * Fails at start-up, not at the first store, when the cache directory cannot be written: creates
 * it, then writes and removes a file in it.
 */
function checkCacheDir(dir: string): void {
  const probe = join(dir, `.probe-${process.pid}`)
  try {
    mkdirSync(dir, { recursive: true })
    writeFileSync(probe, "")
    rmSync(probe)
  } catch (error) {
    throw new UsageError(`--cache-dir ${dir} cannot be used: ${whyNotWritable(dir, error as NodeJS.ErrnoException)}`)
  }
}

/** Why a directory cannot be made or written, in words rather than an errno. */
function whyNotWritable(dir: string, error: NodeJS.ErrnoException): string {
  if (error.code === "ENOTDIR" || error.code === "EEXIST") {
    let path = dir
    while (!existsSync(path) && dirname(path) !== path) path = dirname(path)
    return `${path} is a file, not a directory`
  }
  if (error.code === "EACCES" || error.code === "EPERM") return "permission denied"
  if (error.code === "EROFS") return "the file system is read-only"
  if (error.code === "ENOSPC") return "the disk is full"
  return error.message
}

// ───────────────────────────── the command ─────────────────────────────

// How long start-up waits for Redis before listening without it.
const STORE_CONNECT_WAIT_MS = 2000
// Requests in flight get this long to finish after SIGINT/SIGTERM.
const SHUTDOWN_GRACE_MS = 5000

async function run(commandLine: string[]): Promise<number> {
  // A worker's options come from the primary, already checked.
  const role = workerRole()
  if (role) return serveProxy(role.options, role)
  checkRawArgs(commandLine)
  const fromEnvironment = flagsFromEnvironment(commandLine, process.env)
  const rawArgs = [...[...fromEnvironment.values()].map(({ arg }) => arg), ...commandLine]
  return start(parseArgs<typeof args>(rawArgs, args)).catch((error) => Promise.reject(namingVariable(error, fromEnvironment)))
}

async function start(parsed: Args): Promise<number> {
  if (parsed.help) {
    console.log(helpText(`${versionLine()}\n${DESCRIPTION}`, args, (flag) => !ACTIONS.has(flag)))
    return 0
  }
  if (parsed.version) {
    console.log(versionLine())
    return 0
  }
  const options = parseOptions(parsed)
  if (parsed["clear-cache"]) {
    const store = await openStore(options, createWarn())
    await store.ready()
    await store.clear()
    await store.close()
    console.log(`caching-proxy: cleared ${options.cacheDir}`)
    return 0
  }
  if (options.store.kind === "file") checkCacheDir(options.cacheDir)
  // Workers share their primary's lock.
  const unlock = options.store.kind === "file" ? lockCacheDir(options.cacheDir) : undefined
  try {
    return options.workers > 1 ? await superviseWorkers(options, sharedFiles(options)) : await serveProxy(options)
  } finally {
    unlock?.()
  }
}

/** Under --workers, the primary's file store: it indexes and bounds the directory the workers share. */
function sharedFiles(options: ProxyOptions): SharedFiles | undefined {
  if (options.store.kind !== "file") return undefined
  const warn = createWarn(options.logFormat)
  return { index: new FileStore({ dir: options.cacheDir, maxBytes: options.maxSize, files: runtime.files, warn }), warn }
}

/** Takes the cache directory for this proxy alone (cache/dir-lock.ts); one in use by a running one is a usage error. */
function lockCacheDir(dir: string): () => void {
  try {
    return lockDir(dir, (line) => console.error(line))
  } catch (error) {
    if (error instanceof DirInUse) throw new UsageError(`--cache-dir ${error.message}`)
    throw error
  }
}

/** Serves the proxy until SIGINT or SIGTERM: alone, or as worker `role` of a group. */
async function serveProxy(options: ProxyOptions, role?: WorkerRole): Promise<number> {
  const warn = createWarn(options.logFormat)
  const { app, cache, admin } = await createProxy(options, { warn, worker: role?.id })
  // A shared store is worth a moment's wait: until Redis answers, requests would go to the origin
  // uncoalesced. Past that moment the proxy starts anyway, uncached, and connects in the background.
  if (options.store.kind === "redis") await Promise.race([cache.store.ready(), sleep(STORE_CONNECT_WAIT_MS)])
  const listener = await listenOrSay(app, { ...options, reusePort: role !== undefined }, "port", "--host", warn)
  const adminListener =
    admin && options.admin ? await listenOrSay(admin, { ...options, ...options.admin }, "admin port", "--admin-host", warn) : null
  if (!listener || adminListener === undefined) {
    await Promise.all([listener?.stop(true), adminListener?.stop(true)])
    return 1
  }
  const adminLine = adminListener ? `, admin on http://${urlHost(options.admin?.host ?? "")}:${adminListener.port}` : ""
  const line = `caching-proxy listening on http://${urlHost(options.host)}:${listener.port}, forwarding to ${options.origin}, cache in ${whereEntriesLive(options)}${adminLine}`
  if (role) reportListening(listener.port, line)
  else console.log(line)
  await shutdownSignal()
  const stopped = Promise.all([listener.stop(), adminListener?.stop(true)]).then(() => cache.close())
  if (!(await Promise.race([stopped.then(() => true), sleep(SHUTDOWN_GRACE_MS).then(() => false)]))) {
    const cut = listener.inFlight()
    if (cut > 0) console.error(`caching-proxy: ${SHUTDOWN_GRACE_MS / 1000} s after the signal, cutting ${cut} request(s) still in flight`)
  }
  return 0
}

/** Serves an app, or says on stderr why its port cannot be used (undefined then). */
async function listenOrSay(app: Hono, options: ListenOptions, name: string, hostFlag: string, warn: Warn): Promise<Listener | undefined> {
  try {
    return await serve(app, options, warn)
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    if (code !== "EADDRINUSE") await refuseForeignHost(hostFlag, options.host, code)
    const reason = code === "EADDRINUSE" ? "is already in use" : `cannot be used (${(error as Error).message})`
    console.error(`caching-proxy: ${name} ${options.port} on ${options.host} ${reason}`)
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

function sleep(ms: number): Promise<void> {
  return new Promise((done) => setTimeout(done, ms).unref?.())
}

function shutdownSignal(): Promise<void> {
  return new Promise((done) => {
    process.once("SIGINT", () => done())
    process.once("SIGTERM", () => done())
  })
}

/** True when this file is the program, not a module imported by tests or embedders. */
function isEntryPoint(): boolean {
  if (typeof Bun !== "undefined") return import.meta.main
  // Node runs the bundle in dist/, often through the symlink npm puts in node_modules/.bin.
  const script = process.argv[1]
  return script !== undefined && realpathSync(script) === fileURLToPath(import.meta.url)
}

if (isEntryPoint()) {
  run(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (error) => {
      if (error instanceof UsageError) {
        console.error(`caching-proxy: ${error.message}`)
        process.exit(2)
      }
      console.error(`caching-proxy: ${(error as Error).message}`)
      process.exit(1)
    },
  )
}
