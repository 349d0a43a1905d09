/**
 * The command line: the flags (the one table `--help` and the README's are built from), their
 * environment variables, and their conversion into typed `ProxyOptions`. A flag the user got wrong
 * is a `UsageError`: one line on stderr, exit code 2.
 */

import { existsSync, mkdirSync, rmSync, statSync, writeFileSync } from "node:fs"
import { availableParallelism, homedir } from "node:os"
import { dirname, join, resolve } from "node:path"
import type { parseArgs } from "citty"
import { FIELD_NAME } from "../cache/policy.ts"
import type { RedisTarget } from "../cache/redis-connection.ts"
import { DEFAULT_MAX_VARIANTS } from "../cache/variants.ts"
import { checkAdminToken } from "./admin.ts"
import { environmentVariable } from "./help.ts"
import { LOG_FORMATS, type LogFormat } from "./log.ts"

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
  /** Variants kept per URL (Vary); the least recently used goes beyond it. @default 64 */
  maxVariants: number
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
  /** Write a HAR of every stored response here (proxy/record.ts). @default undefined: none */
  record: string | undefined
  /** Answer from this HAR before the origin. @default undefined: none */
  replay: string | undefined
  /** Header and query parameter names redacted in recordings and exports, besides the credential fields; false: none (--no-redact). @default [] */
  redact: string[] | false
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

/** Every flag: the one source of parsing, `--help`, the README's table and defaults. */
export const args = {
  port: { type: "string", valueHint: "N", description: "Port to listen on (0: any free port)", default: "3000" },
  host: { type: "string", valueHint: "ADDR", description: "Address to listen on (0.0.0.0 to accept other machines)", default: "127.0.0.1" },
  "public-url": {
    type: "string",
    valueHint: "URL",
    description: "URL clients reach the proxy at, told to the origin (default: its own address)",
  },
  "trust-forwarded": {
    type: "boolean",
    description: "Pass on clients' X-Forwarded-*, Forwarded, X-Real-IP (only behind a proxy)",
  },
  "rewrite-location": {
    type: "boolean",
    description: "Rewrite the origin's own URLs in Location and Content-Location to the proxy's",
  },
  origin: { type: "string", valueHint: "URL", description: "Origin URL to forward to, e.g. https://api.example.com/v2" },
  "cache-dir": {
    type: "string",
    valueHint: "DIR",
    description: "Cache directory (default: ~/.cache/caching-proxy, or in $XDG_CACHE_HOME)",
  },
  "clear-cache": { type: "boolean", description: "Empty the cache (directory or Redis prefix) and exit" },
  ttl: {
    type: "string",
    valueHint: "SECONDS",
    description: "Seconds to keep responses with no freshness information (0: do not store them)",
    default: "300",
  },
  timeout: { type: "string", valueHint: "SECONDS", description: "Seconds to wait for the origin's response headers", default: "30" },
  "memory-size": { type: "string", valueHint: "SIZE", description: "Bytes of responses kept in memory (k, M, G suffixes)", default: "64M" },
  "max-size": { type: "string", valueHint: "SIZE", description: "Bytes the disk cache may hold", default: "1G" },
  "max-entry-size": { type: "string", valueHint: "SIZE", description: "Larger responses are passed through, not stored", default: "100M" },
  "max-variants": {
    type: "string",
    valueHint: "N",
    description: "Variants kept per URL (Vary); the least recently used goes",
    default: String(DEFAULT_MAX_VARIANTS),
  },
  "force-ttl": {
    type: "string",
    valueHint: "SECONDS",
    description: "Development: store each cacheable GET this long, whatever its headers say",
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
    description: "Fields obeyed before CDN-Cache-Control (RFC 9213), most specific first",
  },
  store: {
    type: "string",
    valueHint: "WHERE",
    description: "Where entries live: file (--cache-dir), redis://…, rediss://… or redis-cluster://…",
    default: "file",
  },
  "store-prefix": { type: "string", valueHint: "NAME", description: "Namespace of this cache's keys in Redis", default: "caching-proxy" },
  "admin-port": {
    type: "string",
    valueHint: "N",
    description: "Admin listener's port: health, API, purge, metrics, inspector (default: none)",
  },
  "admin-host": {
    type: "string",
    valueHint: "ADDR",
    description: "Address of the admin listener (other than loopback only with --admin-token)",
    default: "127.0.0.1",
  },
  "admin-token": {
    type: "string",
    valueHint: "TOKEN",
    description: "Bearer token admin requests must carry (all but the page and probes)",
  },
  "keep-tag-headers": { type: "boolean", description: "Pass Surrogate-Key and Cache-Tag on to clients (default: removed, as CDNs do)" },
  record: {
    type: "string",
    valueHint: "FILE",
    description: "Write every stored response to FILE as an HTTP Archive (HAR), as it is stored",
  },
  replay: { type: "string", valueHint: "FILE", description: "Answer from the responses in this HAR before asking the origin" },
  redact: {
    type: "string",
    valueHint: "NAME",
    description: "Header or query parameter to record and export as [redacted] (repeatable)",
  },
  "no-redact": { type: "boolean", description: "Record and export every value as it is, credentials included" },
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

export type Args = ReturnType<typeof parseArgs<typeof args>>

/** Converts and validates the parsed flags. */
export function parseOptions(parsed: Args): ProxyOptions {
  for (const [name, def] of Object.entries(args)) {
    if (def.type === "string" && parsed[name] === "") throw new UsageError(`--${name} needs a value`)
  }
  const port = parsePort(parsed.port)
  const workers = parseWorkers(parsed.workers)
  // One HAR file has one writer: workers would each append to it.
  if (workers > 1 && parsed.record !== undefined) throw new UsageError("--record cannot be used with --workers (one process writes a HAR)")
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
    maxVariants: parseCount("max-variants", parsed["max-variants"]),
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
    ...parseArchives(parsed),
    redact: parseRedact(parsed),
    workers,
  }
}

/** --record and --replay: a recording starts by emptying its file, so it cannot be the one replayed. */
function parseArchives(parsed: Args): Pick<ProxyOptions, "record" | "replay"> {
  const record = parsed.record === undefined ? undefined : resolve(parsed.record)
  const replay = parsed.replay === undefined ? undefined : resolve(parsed.replay)
  if (record !== undefined && record === replay)
    throw new UsageError(`--record and --replay must name different files (both are ${record})`)
  return { record, replay }
}

/**
 * --redact NAME (repeatable, or comma-separated) and --no-redact, which citty reads as redact=false.
 */
export function parseRedact(parsed: { redact?: string | boolean; "no-redact"?: boolean }): string[] | false {
  if (parsed.redact === false || parsed["no-redact"]) return false
  if (typeof parsed.redact !== "string") return []
  const names = parsed.redact.split(",").map((name) => name.trim())
  if (names.includes("")) throw new UsageError(`--redact needs a header or query parameter name each time (got "${parsed.redact}")`)
  return names
}

const SIZE = /^(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?$/i
const SIZE_UNITS: Record<string, number> = { "": 1, b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }

function parseSize(name: string, value: string): number {
  const match = SIZE.exec(value.trim())
  if (!match) throw new UsageError(`--${name} must be a size such as 1048576, 64M or 1G (got "${value}")`)
  const unit = (match[2] ?? "").charAt(0).toLowerCase()
  return Math.floor(Number(match[1]) * (SIZE_UNITS[unit] ?? 1))
}

function parseCount(name: string, value: string): number {
  const count = Number(value)
  if (!/^\d+$/.test(value.trim()) || count < 1 || count > MAX_COUNT)
    throw new UsageError(`--${name} must be 1-${MAX_COUNT} (got "${value}")`)
  return count
}

// A count beyond this is a typo, not a bound.
const MAX_COUNT = 1_000_000

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

/** --workers: a count, or auto for as many as the cores this process may use. */
function parseWorkers(value: string): number {
  if (value === "auto") return availableParallelism()
  const count = Number(value)
  if (!/^\d+$/.test(value.trim()) || count < 1)
    throw new UsageError(`--workers must be a number of processes, 1 or more, or auto (got "${value}")`)
  return count
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
  const usage = `must be file, redis://host:port[/db], rediss://… or redis-cluster://host:port[,host:port…] (got "${withoutCredentials(url)}")`
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

/** A URL as messages may show it: its user and password (a Redis password, say) replaced by `***`. */
function withoutCredentials(url: string): string {
  return url.replace(/^([^:/]+:\/\/)[^/]*@/, "$1***@")
}

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

type FlagTable = Record<string, { type: string; alias?: string }>

/** Every spelling citty accepts for each flag: its name, its alias, and `--no-` for booleans. */
function flagTypes(table: FlagTable): Map<string, string> {
  return new Map<string, string>(
    Object.entries(table).flatMap(([name, def]) => [
      [name, def.type],
      ...(def.alias ? [[def.alias, def.type] as [string, string]] : []),
      ...(def.type === "boolean" ? [[`no-${name}`, def.type] as [string, string]] : []),
    ]),
  )
}

const FLAG_TYPES = flagTypes(args)

// Flags that may be given more than once: their values are joined (`joinRepeated`).
const REPEATABLE = new Set(["redact"])

/** The flag an argument names ("--port=1" and "--no-quiet" included), or undefined for a value. */
function flagName(arg: string): string | undefined {
  return arg.startsWith("-") ? arg.replace(/^--?(no-)?/, "").split("=", 1)[0] : undefined
}

// Actions, not settings: a variable left in a service's environment would clear the cache (and
// exit) on every start, so CACHING_PROXY_CLEAR_CACHE is refused; help and version are not read.
const ACTIONS = new Set(["clear-cache", "help", "version"])

/** Whether a flag is a setting, read from its environment variable too (actions are not). */
export function isSetting(flag: string): boolean {
  return !ACTIONS.has(flag)
}

/**
 * CACHING_PROXY_<FLAG> (e.g. CACHING_PROXY_ORIGIN, CACHING_PROXY_MAX_SIZE) for each setting flag
 * the command line leaves out; the command line wins. Booleans take 1/true/yes or 0/false/no.
 * Returns each flag taken from the environment with the variable it came from.
 */
export function flagsFromEnvironment(commandLine: string[], env: NodeJS.ProcessEnv): Map<string, { arg: string; variable: string }> {
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
export function namingVariable(error: unknown, fromEnvironment: Map<string, { variable: string }>): unknown {
  const flag = error instanceof UsageError ? /^--([a-z-]+)/.exec(error.message)?.[1] : undefined
  const source = flag === undefined ? undefined : fromEnvironment.get(flag)
  return source && flag ? new UsageError(source.variable + (error as Error).message.slice(flag.length + 2)) : error
}

/**
 * Refuses what citty would let through: unknown flags, flags given twice (but the repeatable ones),
 * stray arguments beyond the `positionals` a subcommand takes.
 */
export function checkRawArgs(rawArgs: string[], table: FlagTable = args, positionals = 0): void {
  const types = table === args ? FLAG_TYPES : flagTypes(table)
  const seen = new Set<string>()
  let expectsValue = false
  let stray = 0
  for (const arg of rawArgs) {
    if (expectsValue && !arg.startsWith("--")) {
      expectsValue = false
      continue
    }
    if (!arg.startsWith("-") && stray++ < positionals) continue
    if (!arg.startsWith("-") || arg === "-" || arg === "--")
      throw new UsageError(`unexpected argument "${arg}" (flags start with --; see --help)`)
    const [name = "", value] = arg.replace(/^--?/, "").split(/=(.*)/s)
    const type = types.get(name)
    if (!type) throw new UsageError(`unknown flag "${arg}" (see --help)`)
    const flag = flagName(arg) ?? name
    if (seen.has(flag) && !REPEATABLE.has(flag)) throw new UsageError(`--${flag} is given more than once`)
    seen.add(flag)
    expectsValue = type === "string" && value === undefined
  }
}

/** The arguments with each repeatable flag's values joined by commas into its last one, which citty keeps. */
export function joinRepeated(rawArgs: string[]): string[] {
  const values = new Map<string, string[]>()
  const kept: string[] = []
  for (let i = 0; i < rawArgs.length; i++) {
    const arg = rawArgs[i] as string
    const [name = "", inline] = arg.replace(/^--?/, "").split(/=(.*)/s)
    if (!arg.startsWith("--") || !REPEATABLE.has(name)) {
      kept.push(arg)
      continue
    }
    // A flag right after it is no value: "" is refused by parseOptions as a missing value.
    const next = rawArgs[i + 1]
    const takesNext = inline === undefined && next !== undefined && !next.startsWith("--")
    if (takesNext) i++
    const value = (takesNext ? next : inline) ?? ""
    values.set(name, [...(values.get(name) ?? []), value])
  }
  return [...kept, ...[...values].map(([name, all]) => `--${name}=${all.join(",")}`)]
}

/**
 * Fails at start-up, not at the first store, when the cache directory cannot be written: creates
 * it, then writes and removes a file in it.
 */
export function checkCacheDir(dir: string): void {
  const probe = join(dir, `.probe-${process.pid}`)
  try {
    makeDirectory(dir)
    writeFileSync(probe, "")
    rmSync(probe)
  } catch (error) {
    throw new UsageError(`--cache-dir ${dir} cannot be used: ${whyNotWritable(dir, error as NodeJS.ErrnoException)}`)
  }
}

/**
 * `mkdir -p`, one level at a time: Node 20's recursive mkdirSync never returns, spinning a core,
 * where mkdir answers ENOENT under a parent that exists (/proc/1/nope).
 */
function makeDirectory(dir: string): void {
  try {
    mkdirSync(dir)
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    if (code === "EEXIST" && statSync(dir).isDirectory()) return
    if (code !== "ENOENT" || dirname(dir) === dir) throw error
    makeDirectory(dirname(dir))
    mkdirSync(dir) // the parent is there now: a second ENOENT is the answer
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
