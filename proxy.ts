/**
 * caching-proxy: the command line, the Hono app, and serving under Bun or Node.
 * The HTTP side only: every caching rule lives in cache.ts.
 */

import { realpathSync } from "node:fs"
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from "node:http"
import { Agent as HttpsAgent, request as httpsRequest } from "node:https"
import { homedir } from "node:os"
import { join, resolve } from "node:path"
import { Readable } from "node:stream"
import { fileURLToPath } from "node:url"
import { stripVTControlCharacters } from "node:util"
import { defineCommand, parseArgs, renderUsage } from "citty"
import { type Context, Hono } from "hono"
import { LinearRouter } from "hono/router/linear-router"
import { bunFiles, type FileApi, FileStore, nodeFiles } from "./cache/file-store.ts"
import { MemoryStore } from "./cache/memory-store.ts"
import { hopByHopFilter } from "./cache/policy.ts"
import { MEMORY_BODY_LIMIT_BYTES, TieredStore } from "./cache/tiered-store.ts"
import { answer, Cache, type Forward, OriginError, type Store, VIA, type Warn } from "./cache.ts"
import packageJson from "./package.json" with { type: "json" }
import { createWarn } from "./proxy/log.ts"

// ───────────────────────────── options ─────────────────────────────

export interface ProxyOptions {
  port: number
  /** Address to listen on. @default "127.0.0.1" */
  host: string
  /** The origin's base URL, with no trailing slash: request paths are appended to it. */
  origin: string
  cacheDir: string
  /** Default lifetime for responses without freshness information. @default 300 s */
  ttlSeconds: number
  /** How long to wait for the origin's response headers. @default 30 s */
  timeoutSeconds: number
  quiet: boolean
  memorySize: number
  maxSize: number
  maxEntrySize: number
  forceTtlSeconds: number
  ignoreQuery: string[]
  offline: boolean
  shareCookies: boolean
}

/** A flag the user got wrong: printed as one line, exit code 2. */
export class UsageError extends Error {}

const args = {
  port: { type: "string", description: "Port to listen on (0: any free port)", default: "3000" },
  host: { type: "string", description: "Address to listen on (0.0.0.0 to accept other machines)", default: "127.0.0.1" },
  origin: { type: "string", description: "Origin URL to forward to, e.g. https://api.example.com/v2" },
  "cache-dir": { type: "string", description: "Cache directory (default: $XDG_CACHE_HOME/caching-proxy or ~/.cache/caching-proxy)" },
  "clear-cache": { type: "boolean", description: "Empty the cache directory and exit" },
  ttl: { type: "string", description: "Seconds to keep responses that carry no freshness information (0: do not)", default: "300" },
  timeout: { type: "string", description: "Seconds to wait for the origin's response headers", default: "30" },
  "memory-size": { type: "string", description: "Bytes of responses kept in memory (k, M, G suffixes)", default: "64M" },
  "max-size": { type: "string", description: "Bytes the disk cache may hold", default: "1G" },
  "max-entry-size": { type: "string", description: "Larger responses are passed through, not stored", default: "100M" },
  "force-ttl": {
    type: "string",
    description: "Development: store every cacheable-status GET for this many seconds, whatever its headers say",
    default: "0",
  },
  "ignore-query": { type: "string", description: "Development: comma-separated query parameters left out of the cache key" },
  offline: { type: "boolean", description: "Development: answer only from the cache, never contact the origin" },
  "share-cookies": { type: "boolean", description: "Store responses that set cookies and serve them to every client" },
  quiet: { type: "boolean", description: "Do not log each request" },
  help: { type: "boolean", description: "Show this help", alias: "h" },
  version: { type: "boolean", description: "Show the version", alias: "v" },
} as const

const main = defineCommand({
  meta: { name: "caching-proxy", version: packageJson.version, description: "A caching HTTP reverse proxy for one origin" },
  args,
})

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

function parsePort(value: string): number {
  const port = Number(value)
  if (!/^\d+$/.test(value.trim()) || port > 65535) throw new UsageError(`--port must be 0-65535 (got "${value}")`)
  return port
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
  if (url.search || url.hash || url.username || url.password)
    throw new UsageError(`--origin must not have a query, fragment or credentials (got "${value}")`)
  return url.href.replace(/\/+$/, "")
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

/**
 * CACHING_PROXY_<FLAG> (e.g. CACHING_PROXY_ORIGIN, CACHING_PROXY_MAX_SIZE) for each setting flag
 * the command line leaves out; the command line wins. Booleans take 1/true/yes.
 */
function flagsFromEnvironment(commandLine: string[], env: NodeJS.ProcessEnv): string[] {
  const given = new Set(commandLine.map(flagName))
  return Object.entries(args).flatMap(([name, def]) => {
    const value = env[`CACHING_PROXY_${name.toUpperCase().replaceAll("-", "_")}`]
    if (value === undefined || given.has(name) || name === "help" || name === "version") return []
    if (def.type === "boolean") return /^(1|true|yes)$/i.test(value) ? [`--${name}`] : []
    return [`--${name}=${value}`]
  })
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
  return {
    port: parsePort(parsed.port),
    host: parsed.host,
    origin: parsed["clear-cache"] ? "" : parseOrigin(parsed.origin),
    cacheDir: resolve(parsed["cache-dir"] ?? defaultCacheDir()),
    ttlSeconds: parseSeconds("ttl", parsed.ttl),
    timeoutSeconds: parseSeconds("timeout", parsed.timeout, "positive"),
    quiet: Boolean(parsed.quiet),
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
  }
}

// ───────────────────────────── the runtime seam ─────────────────────────────

interface Listener {
  port: number
  /** Stops accepting; resolves when requests in flight have finished (at once when forced). */
  stop(force?: boolean): Promise<void>
}

/** What differs between Bun and Node, chosen once at start-up. */
interface Runtime {
  /** Sends one request to the origin, bytes untouched: no decompression, no redirects followed. */
  fetch(target: string, method: string, headers: Headers, body: ReadableStream<Uint8Array> | null, timeoutMs: number): Promise<Response>
  listen(app: Hono, host: string, port: number, idleTimeoutSeconds: number): Promise<Listener>
  /** The client's address, for X-Forwarded-For. */
  clientAddress(c: Context): string | undefined
  /** The request-target as the client sent it (path and query), as raw as the runtime keeps it. */
  requestTarget(c: Context): string
  /** How the file store reads bodies. */
  files: FileApi
}

/** Aborts the origin request if its headers have not come within `timeoutMs`. */
async function withTimeout(timeoutMs: number, send: (signal: AbortSignal) => Promise<Response>): Promise<Response> {
  const controller = new AbortController()
  const timer = setTimeout(() => controller.abort(), timeoutMs)
  try {
    return await send(controller.signal)
  } catch (error) {
    if (controller.signal.aborted) throw new OriginError(504, `the origin did not answer within ${timeoutMs / 1000} s`)
    throw new OriginError(502, `the origin is unreachable (${(error as Error).message})`)
  } finally {
    clearTimeout(timer)
  }
}

/** The path and query of a URL or request-target, whatever authority it names. */
function pathAndQuery(target: string): string {
  if (target.startsWith("/")) return target
  const authorityStart = target.indexOf("://")
  const pathStart = authorityStart === -1 ? -1 : target.indexOf("/", authorityStart + 3)
  return pathStart === -1 ? "/" : target.slice(pathStart)
}

const bunRuntime: Runtime = {
  fetch: (target, method, headers, body, timeoutMs) =>
    withTimeout(timeoutMs, (signal) =>
      fetch(target, { method, headers, body, signal, redirect: "manual", decompress: false } as RequestInit),
    ),
  async listen(app, host, port, idleTimeoutSeconds) {
    const server = Bun.serve({
      hostname: host,
      port,
      fetch: app.fetch,
      idleTimeout: idleTimeoutSeconds,
      // Uploads stream to the origin; the origin decides what it accepts.
      maxRequestBodySize: Number.MAX_SAFE_INTEGER,
    })
    return { port: server.port ?? port, stop: (force) => server.stop(force) }
  },
  clientAddress: (c) => (c.env as { requestIP?: (r: Request) => { address: string } | null })?.requestIP?.(c.req.raw)?.address,
  requestTarget: (c) => pathAndQuery(c.req.raw.url),
  files: bunFiles,
}

const keepAlive = { keepAlive: true }
const agents = { "http:": new HttpAgent(keepAlive), "https:": new HttpsAgent(keepAlive) }

/** Node's global fetch always decompresses, so the Node leg speaks node:http directly. */
function nodeFetch(target: string, method: string, headers: Headers, body: ReadableStream<Uint8Array> | null, signal: AbortSignal) {
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
          incoming.destroy() // a status `Response` refuses (outside 200-599): a 502, not a crash
          reject(error)
        }
      },
    )
    outgoing.on("error", reject)
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
  const hasBody = method !== "HEAD" && status !== 204 && status !== 304
  const body = hasBody ? (Readable.toWeb(incoming) as ReadableStream<Uint8Array>) : null
  if (!hasBody) incoming.resume()
  return new Response(body, { status, statusText: incoming.statusMessage, headers })
}

const nodeRuntime: Runtime = {
  fetch: (target, method, headers, body, timeoutMs) => withTimeout(timeoutMs, (signal) => nodeFetch(target, method, headers, body, signal)),
  async listen(app, host, port) {
    const { serve } = await import("@hono/node-server")
    return new Promise((resolvePromise, reject) => {
      const server = serve({ fetch: app.fetch, hostname: host, port }, (info) =>
        resolvePromise({
          port: info.port,
          stop: (force) =>
            new Promise<void>((done) => {
              const http = server as import("node:http").Server
              http.close(() => done())
              if (force) http.closeAllConnections()
              else http.closeIdleConnections()
            }),
        }),
      )
      server.once("error", reject)
    })
  },
  clientAddress: (c) => (c.env as { incoming?: IncomingMessage })?.incoming?.socket.remoteAddress,
  requestTarget: (c) => pathAndQuery((c.env as { incoming?: IncomingMessage })?.incoming?.url ?? c.req.raw.url),
  files: nodeFiles,
}

const runtime: Runtime = typeof Bun !== "undefined" ? bunRuntime : nodeRuntime

// ───────────────────────────── the app ─────────────────────────────

/** The headers sent to the origin: the client's, less hop-by-hop, plus the forwarding fields. */
function forwardedHeaders(incoming: Headers, clientAddress: string | undefined): Headers {
  const isHopByHop = hopByHopFilter(incoming)
  const headers = new Headers()
  for (const [name, value] of incoming) {
    // Host is the origin's, set from the target URL; the client's goes in X-Forwarded-Host.
    if (!isHopByHop(name) && name !== "host") headers.append(name, value)
  }
  if (clientAddress) {
    const chain = incoming.get("x-forwarded-for")
    headers.set("x-forwarded-for", chain ? `${chain}, ${clientAddress}` : clientAddress)
  }
  // Ours, never the client's: an origin that builds links from a forged X-Forwarded-Host would
  // have the cache hand them to every client (cache poisoning).
  headers.set("x-forwarded-proto", "http")
  const host = incoming.get("host")
  if (host) headers.set("x-forwarded-host", host)
  else headers.delete("x-forwarded-host")
  headers.append("via", VIA)
  return headers
}

/** Where the proxy's messages go: tests and embedders pass their own. */
export interface ProxyOutput {
  /** One line per request (unless quiet). @default console.log */
  log: (line: string) => void
  /** Failures the proxy carries on after. @default each kind to stderr, at most once a minute */
  warn: Warn
}

/** The disk store under --cache-dir. */
function fileStore(options: Pick<ProxyOptions, "cacheDir" | "maxSize">, warn: Warn): FileStore {
  return new FileStore({ dir: options.cacheDir, maxBytes: options.maxSize, files: runtime.files, warn })
}

/** The store the cache holds: memory (--memory-size) in front of the disk (--max-size). */
function createStore(options: ProxyOptions, warn: Warn): Store {
  const memory = new MemoryStore({ maxBytes: options.memorySize })
  const memoryBodyLimit = Math.min(MEMORY_BODY_LIMIT_BYTES, options.memorySize / 8)
  return new TieredStore(memory, fileStore(options, warn), { memoryBodyLimit })
}

/** Builds the proxy as a Hono app (tests and embedders serve it themselves). */
export function createProxy(options: ProxyOptions, output: Partial<ProxyOutput> = {}) {
  const { log = console.log, warn = createWarn() } = output
  const cache = new Cache(createStore(options, warn), {
    maxEntryBytes: options.maxEntrySize,
    defaultTtlMs: options.ttlSeconds * 1000,
    forceTtlMs: options.forceTtlSeconds * 1000,
    shareCookies: options.shareCookies,
    ignoreQuery: options.ignoreQuery,
    offline: options.offline,
    coalesceWaitMs: options.timeoutSeconds * 1000,
    warn,
  })
  const timeoutMs = options.timeoutSeconds * 1000
  // One catch-all route: the router needs no path, so Hono is spared parsing the URL for it
  // (the path we forward comes from the runtime, untouched), and the linear router is the
  // cheapest for a single route. About 2 % of a hit.
  const app = new Hono({ router: new LinearRouter(), getPath: () => "/" })

  app.all("*", (c) => {
    const started = options.quiet ? 0 : performance.now()
    const request = c.req.raw
    // Hono routes HEAD as GET; the method we forward is the client's.
    const method = request.method
    const path = runtime.requestTarget(c)
    const target = options.origin + path
    const body = method === "GET" || method === "HEAD" ? null : request.body
    // Built only when the origin is asked: a hit copies no headers.
    const forward: Forward = (headers) =>
      runtime.fetch(target, method, forwardedHeaders(headers, runtime.clientAddress(c)), body, timeoutMs)
    const response = cache.respond(method, request.headers, target, forward)
    return options.quiet ? response : logged(response, method, path, started)
  })

  /** Logs one line once the response (headers) is ready: method, path, status, X-Cache, ms. */
  async function logged(response: Response | Promise<Response>, method: string, path: string, started: number) {
    const ready = await response
    log(`${method} ${path} ${ready.status} ${ready.headers.get("x-cache")} ${(performance.now() - started).toFixed(1)}ms`)
    return ready
  }

  app.onError((error, c) => {
    const status = error instanceof OriginError ? error.status : 502
    const path = runtime.requestTarget(c)
    if (!(error instanceof OriginError)) warn("proxy", `${c.req.method} ${path} failed: ${error.message}`)
    if (!options.quiet) log(`${c.req.method} ${path} ${status} MISS`)
    return answer(
      status,
      `${error instanceof OriginError ? error.message : "the proxy failed to forward this request"}\n`,
      "fwd=uri-miss; detail=origin-error",
    )
  })

  return { app, cache }
}

/** Serves the app on the current runtime. */
export function serve(app: Hono, options: Pick<ProxyOptions, "host" | "port" | "timeoutSeconds">): Promise<Listener> {
  // Bun closes idle connections after 10 s by default: wait at least as long as the origin may.
  const idleTimeoutSeconds = Math.min(255, Math.ceil(options.timeoutSeconds) + 10)
  return runtime.listen(app, options.host, options.port, idleTimeoutSeconds)
}

// ───────────────────────────── the command ─────────────────────────────

// Requests in flight get this long to finish after SIGINT/SIGTERM.
const SHUTDOWN_GRACE_MS = 5000

async function run(commandLine: string[]): Promise<number> {
  checkRawArgs(commandLine)
  const rawArgs = [...flagsFromEnvironment(commandLine, process.env), ...commandLine]
  const parsed = parseArgs<typeof args>(rawArgs, args)
  if (parsed.help) {
    const usage = await renderUsage(main)
    // citty colours its help even into a pipe or a file: keep the colours for a terminal only.
    console.log(process.stdout.isTTY ? usage : stripVTControlCharacters(usage))
    return 0
  }
  if (parsed.version) {
    console.log(packageJson.version)
    return 0
  }
  const options = parseOptions(parsed)
  if (parsed["clear-cache"]) {
    const store = fileStore(options, createWarn())
    await store.clear()
    await store.close()
    console.log(`caching-proxy: cleared ${options.cacheDir}`)
    return 0
  }
  const { app, cache } = createProxy(options)
  let listener: Listener
  try {
    listener = await serve(app, options)
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    const reason = code === "EADDRINUSE" ? "is already in use" : `cannot be used (${(error as Error).message})`
    console.error(`caching-proxy: port ${options.port} on ${options.host} ${reason}`)
    return 1
  }
  console.log(
    `caching-proxy listening on http://${options.host}:${listener.port}, forwarding to ${options.origin}, cache in ${options.cacheDir}`,
  )
  await shutdownSignal()
  await Promise.race([listener.stop().then(() => cache.close()), sleep(SHUTDOWN_GRACE_MS)])
  return 0
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
