/**
 * The cache: keys, the RFC 9111 shared-cache policy, coalescing, and the stores.
 *
 * Design in brief (README "How it works" says the same for users):
 * - key: "GET " + the full target URL (query parameters named by --ignore-query removed);
 *   several variants per key, selected by the request headers the response's Vary names.
 * - policy: pure functions over a plain, serialisable `EntryMeta`, with `now` passed in.
 * - `Cache.respond(request, target, forward)` decides fresh / stale / miss, forwards through the
 *   callback it is given (the HTTP side owns the connection), stores while streaming, and
 *   answers. It never sees Hono.
 * - stores: `MemoryTier` (LRU by bytes, small bodies in memory) in front of `FileStore`
 *   (LRU by bytes, bodies in files, written under temporary names and renamed when whole).
 */
import { createHash, randomBytes } from "node:crypto"
import { createReadStream } from "node:fs"
import * as fs from "node:fs/promises"
import { basename, join } from "node:path"
import { Readable } from "node:stream"

// ───────────────────────────── configuration ─────────────────────────────

export interface CacheConfig {
  /** Root of the on-disk cache; entries live under `<dir>/v1`. */
  dir: string
  /** Bytes the memory tier may hold. @default 64 MiB */
  memoryBytes: number
  /** Bytes the disk store may hold. @default 1 GiB */
  maxBytes: number
  /** Responses with larger bodies are passed through, not stored. @default 100 MiB */
  maxEntryBytes: number
  /** Lifetime for responses with no freshness information (RFC 9111 §4.2.2); 0 = none. @default 300 s */
  defaultTtlMs: number
  /** Store every cacheable-status GET for this long, whatever its headers say; 0 = off. */
  forceTtlMs: number
  /** Store responses that carry Set-Cookie and share them with every client. @default false */
  shareCookies: boolean
  /** Query parameter names left out of the cache key. */
  ignoreQuery: string[]
  /** Answer only from the cache; never contact the origin. */
  offline: boolean
  /** How long a request waits for another one's answer to the same key. @default the --timeout */
  coalesceWaitMs: number
  /** Logs a store failure (once per kind); the proxy keeps going. */
  warn: (message: string) => void
}

/** Thrown by the `forward` callback: the origin could not give an answer. */
export class OriginError extends Error {
  constructor(
    readonly status: 502 | 504,
    message: string,
  ) {
    super(message)
  }
}

/**
 * Sends the request to the origin with these request headers (the client's, or the cache's
 * conditional version of them); the HTTP side drops hop-by-hop fields and owns the connection.
 */
export type Forward = (headers: Headers) => Promise<Response>

// ───────────────────────────── Cache-Control parsing ─────────────────────────────

export type Directives = ReadonlyMap<string, string | true>

// Most requests carry no Cache-Control: they share one empty set of directives.
const NO_DIRECTIVES: Directives = new Map()

const DELTA_SECONDS = /^\d+$/
// RFC 9111 §1.2.2: a delta-seconds too large to represent is taken as 2^31.
const MAX_DELTA_SECONDS = 2147483648

/** Splits a Cache-Control value into lower-cased directives; values are unquoted. */
export function parseCacheControl(value: string | null): Directives {
  if (!value) return NO_DIRECTIVES
  const directives = new Map<string, string | true>()
  for (const part of splitList(value)) {
    const eq = part.indexOf("=")
    const name = (eq === -1 ? part : part.slice(0, eq)).trim().toLowerCase()
    if (!name) continue
    const raw = eq === -1 ? true : unquote(part.slice(eq + 1).trim())
    const previous = directives.get(name)
    // RFC 9111 §4.2.1: conflicting duplicates may make the response stale; we keep a marker
    // that no delta-seconds parse accepts, so the lifetime becomes 0.
    directives.set(name, previous !== undefined && previous !== raw ? "conflict" : raw)
  }
  return directives
}

/** Splits a comma-separated list, keeping commas inside quoted strings. */
function splitList(value: string): string[] {
  if (!value.includes('"')) return value.split(",")
  const parts: string[] = []
  let current = ""
  let quoted = false
  for (const ch of value) {
    if (ch === '"') quoted = !quoted
    if (ch === "," && !quoted) {
      parts.push(current)
      current = ""
    } else current += ch
  }
  parts.push(current)
  return parts
}

function unquote(value: string): string {
  return value.length >= 2 && value.startsWith('"') && value.endsWith('"') ? value.slice(1, -1) : value
}

/**
 * A delta-seconds directive in milliseconds: undefined when absent, 0 when malformed
 * (RFC 9111 §4.2.1: an invalid freshness value makes the response stale).
 */
function deltaMs(directives: Directives, name: string): number | undefined {
  const value = directives.get(name)
  if (value === undefined) return undefined
  if (value === true || !DELTA_SECONDS.test(value)) return 0
  return Math.min(Number(value), MAX_DELTA_SECONDS) * 1000
}

/** Like deltaMs, but a bare directive (max-stale with no value) means "any amount". */
function deltaOrAnyMs(directives: Directives, name: string): number | undefined {
  return directives.get(name) === true ? Infinity : deltaMs(directives, name)
}

function parseHttpDate(value: string | null): number | undefined {
  if (value === null) return undefined
  const ms = Date.parse(value)
  return Number.isNaN(ms) ? undefined : ms
}

// ───────────────────────────── the policy ─────────────────────────────

/** What is kept with every stored response: plain data, serialisable as JSON. */
export interface EntryMeta {
  status: number
  /** Header pairs as the origin sent them, hop-by-hop fields removed: two Set-Cookie stay two. */
  headers: [string, string][]
  /** Each request header named by Vary → its normalised value; null = absent. */
  vary: Record<string, string | null>
  /** When the response arrived (RFC 9111 §4.2.3 response_time), ms since epoch. */
  responseTime: number
  /** corrected_initial_age (RFC 9111 §4.2.3), ms. */
  initialAgeMs: number
  /** freshness_lifetime (RFC 9111 §4.2.1), ms. */
  freshMs: number
  /** RFC 5861 windows, ms past staleness. */
  staleWhileRevalidateMs: number
  staleIfErrorMs: number
  /** must-revalidate, proxy-revalidate or s-maxage (RFC 9111 §5.2.2.2, §5.2.2.8, §5.2.2.10). */
  mustRevalidate: boolean
  /** no-cache: validate before every use (RFC 9111 §5.2.2.4). */
  noCache: boolean
  etag: string | null
  lastModified: string | null
  /** Body bytes. */
  size: number
}

// RFC 9110 §15.1: status codes that are heuristically cacheable (RFC 9111 §4.2.2).
const HEURISTICALLY_CACHEABLE = new Set([200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501])
// Status codes whose semantics we implement: what `must-understand` asks about (RFC 9111 §5.2.2.3).
const UNDERSTOOD_STATUS = new Set([
  200, 203, 204, 300, 301, 302, 303, 307, 308, 400, 403, 404, 405, 410, 414, 500, 501, 502, 503, 504,
])
// RFC 9111 §4.2.2: 10 % of the time since Last-Modified, capped (as Squid and others do) at a day.
const LAST_MODIFIED_FRACTION = 0.1
const HEURISTIC_CAP_MS = 24 * 3600 * 1000

/** Why a response is not stored, or null when it may be. RFC 9111 §3. */
export function notStorableReason(
  requestHeaders: Headers,
  requestDirectives: Directives,
  status: number,
  responseHeaders: Headers,
  directives: Directives,
  config: CacheConfig,
): string | null {
  // RFC 9111 §3: only final responses; we do not combine partial content (§3.3), so 206 is
  // never stored, and a 304 only updates what is stored (§4.3.4).
  if (status < 200 || status === 206 || status === 304) return "status"
  if (varyNames(responseHeaders) === "*") return "vary-star" // RFC 9111 §4.1: never matches
  if (config.forceTtlMs > 0) return HEURISTICALLY_CACHEABLE.has(status) ? null : "status"
  // RFC 9111 §5.2.1.5: a request's no-store forbids storing the response to it.
  if (requestDirectives.has("no-store")) return "request-no-store"
  if (directives.has("must-understand")) {
    // RFC 9111 §5.2.2.3: must-understand overrides no-store when we know the status code.
    if (!UNDERSTOOD_STATUS.has(status)) return "must-understand"
  } else if (directives.has("no-store")) return "no-store"
  // RFC 9111 §5.2.2.7: a shared cache never stores a private response (qualified or not).
  if (directives.has("private")) return "private"
  // RFC 9111 §3.5: a request with Authorization is stored only when the response allows it.
  if (
    requestHeaders.has("authorization") &&
    !directives.has("public") &&
    !directives.has("s-maxage") &&
    !directives.has("must-revalidate")
  )
    return "authorization"
  // Deviation (RFC 9111 §3 allows it): like nginx and Varnish, cookies set for one client are
  // not handed to another unless --share-cookies says so.
  if (!config.shareCookies && responseHeaders.has("set-cookie")) return "set-cookie"
  const explicit =
    directives.has("s-maxage") || directives.has("max-age") || responseHeaders.has("expires")
  if (!explicit && !directives.has("public") && !HEURISTICALLY_CACHEABLE.has(status)) return "status"
  return null
}

/** freshness_lifetime in ms, RFC 9111 §4.2.1 (shared cache) and §4.2.2 (heuristics). */
export function freshnessLifetimeMs(
  status: number,
  headers: Headers,
  directives: Directives,
  responseTime: number,
  config: CacheConfig,
): number {
  if (config.forceTtlMs > 0) return config.forceTtlMs
  const sMaxAge = deltaMs(directives, "s-maxage")
  if (sMaxAge !== undefined) return sMaxAge
  const maxAge = deltaMs(directives, "max-age")
  if (maxAge !== undefined) return maxAge
  const date = parseHttpDate(headers.get("date")) ?? responseTime
  const expiresHeader = headers.get("expires")
  if (expiresHeader !== null) {
    // RFC 9111 §5.3: an invalid Expires (e.g. "0") means already expired.
    const expires = parseHttpDate(expiresHeader)
    return expires === undefined ? 0 : Math.max(0, expires - date)
  }
  if (!HEURISTICALLY_CACHEABLE.has(status) && !directives.has("public")) return 0
  const lastModified = parseHttpDate(headers.get("last-modified"))
  if (lastModified !== undefined && lastModified < date)
    return Math.min((date - lastModified) * LAST_MODIFIED_FRACTION, HEURISTIC_CAP_MS)
  // Deviation (RFC 9111 §4.2.2 leaves the heuristic to us): a plain API response with no
  // freshness information at all lives for --ttl, so the common case is cached.
  return config.defaultTtlMs
}

/** corrected_initial_age, RFC 9111 §4.2.3. */
export function correctedInitialAgeMs(headers: Headers, requestTime: number, responseTime: number): number {
  const date = parseHttpDate(headers.get("date"))
  const apparentAge = date === undefined ? 0 : Math.max(0, responseTime - date)
  // RFC 9111 §5.1: Age is a non-negative integer; anything else is ignored.
  const ageText = headers.get("age")?.split(",")[0]?.trim()
  const ageValue = ageText && DELTA_SECONDS.test(ageText) ? Math.min(Number(ageText), MAX_DELTA_SECONDS) * 1000 : 0
  const correctedAgeValue = ageValue + (responseTime - requestTime)
  return Math.max(apparentAge, correctedAgeValue)
}

/** current_age, RFC 9111 §4.2.3. */
export function currentAgeMs(meta: EntryMeta, now: number): number {
  return meta.initialAgeMs + Math.max(0, now - meta.responseTime)
}

/** Remaining freshness in ms (negative once stale), RFC 9111 §4.2. */
export function ttlMs(meta: EntryMeta, now: number): number {
  return meta.freshMs - currentAgeMs(meta, now)
}

/** Builds what we keep about a response, from the response and the request that caused it. */
export function describeResponse(
  status: number,
  headers: Headers,
  directives: Directives,
  vary: Record<string, string | null>,
  requestTime: number,
  responseTime: number,
  size: number,
  config: CacheConfig,
): EntryMeta {
  const forced = config.forceTtlMs > 0
  return {
    status,
    headers: storableHeaderPairs(headers),
    vary,
    responseTime,
    initialAgeMs: forced ? 0 : correctedInitialAgeMs(headers, requestTime, responseTime),
    freshMs: freshnessLifetimeMs(status, headers, directives, responseTime, config),
    staleWhileRevalidateMs: forced ? 0 : (deltaMs(directives, "stale-while-revalidate") ?? 0),
    staleIfErrorMs: forced ? 0 : (deltaMs(directives, "stale-if-error") ?? 0),
    mustRevalidate:
      !forced &&
      (directives.has("must-revalidate") || directives.has("proxy-revalidate") || directives.has("s-maxage")),
    noCache: !forced && directives.has("no-cache"),
    etag: headers.get("etag"),
    lastModified: headers.get("last-modified"),
    size,
  }
}

/** The answer to "may this stored response be used for this request?", RFC 9111 §4.2 and §5.2.1. */
export type Usability = "fresh" | "stale-allowed" | "stale-while-revalidate" | "validate"

export function usability(meta: EntryMeta, request: Directives, now: number): Usability {
  // RFC 9111 §5.2.1.4 and §5.2.2.4: no-cache on either side means validate first.
  if (meta.noCache || request.has("no-cache")) return "validate"
  const age = currentAgeMs(meta, now)
  // RFC 9111 §5.2.1.1: the client wants nothing older than max-age.
  const maxAge = deltaMs(request, "max-age")
  if (maxAge !== undefined && age > maxAge) return "validate"
  const remaining = meta.freshMs - age
  // RFC 9111 §5.2.1.3: min-fresh asks for that much freshness left.
  const minFresh = deltaMs(request, "min-fresh")
  if (minFresh !== undefined && remaining < minFresh) return "validate"
  if (remaining > 0) return "fresh"
  // RFC 9111 §5.2.2.2: a stale must-revalidate response is never reused without validation,
  // even when the request allows max-stale.
  if (meta.mustRevalidate) return "validate"
  const staleness = -remaining
  // RFC 9111 §5.2.1.2: max-stale lets the client take a stale response.
  const maxStale = deltaOrAnyMs(request, "max-stale")
  if (maxStale !== undefined && staleness <= maxStale) return "stale-allowed"
  // RFC 5861 §3: stale-while-revalidate serves at once and refreshes in the background.
  if (staleness <= meta.staleWhileRevalidateMs) return "stale-while-revalidate"
  return "validate"
}

/** May a stale entry stand in for an origin that failed? RFC 5861 §4 and RFC 9111 §4.2.4. */
export function mayServeStaleOnError(
  meta: EntryMeta,
  request: Directives,
  now: number,
  originUnreachable: boolean,
): boolean {
  // RFC 9111 §5.2.2.2: must-revalidate forbids it; the answer is then an error (504).
  if (meta.mustRevalidate || meta.noCache) return false
  const staleness = -ttlMs(meta, now)
  const window = Math.max(meta.staleIfErrorMs, deltaOrAnyMs(request, "stale-if-error") ?? 0)
  if (staleness <= window) return true
  // RFC 9111 §4.2.4: a disconnected cache may serve stale; an origin's 5xx is not disconnection.
  return originUnreachable
}

// ───────────────────────────── headers ─────────────────────────────

/** RFC 9110 §7.6.1: fields meaningful only for one connection, never stored or forwarded. */
export const HOP_BY_HOP_HEADERS = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
])

/** Whether a field is hop-by-hop, by the fixed list or because `Connection` names it. */
export function hopByHopFilter(headers: Headers): (name: string) => boolean {
  const connection = headers.get("connection")
  if (!connection) return (name) => HOP_BY_HOP_HEADERS.has(name)
  const named = new Set(connection.split(",").map((token) => token.trim().toLowerCase()))
  return (name) => HOP_BY_HOP_HEADERS.has(name) || named.has(name)
}

function storableHeaderPairs(headers: Headers): [string, string][] {
  const isHopByHop = hopByHopFilter(headers)
  const pairs: [string, string][] = []
  for (const [name, value] of headers) if (!isHopByHop(name)) pairs.push([name, value])
  return pairs
}

// RFC 9111 §3.2: a 304 updates the stored fields, except those the stored body depends on.
const NOT_UPDATED_BY_304 = new Set(["content-length", "content-encoding", "content-range"])

/** The stored header pairs with a 304's fields laid over them, RFC 9111 §3.2 and §4.3.4. */
export function mergeHeaders(stored: [string, string][], update: Headers): Headers {
  const isHopByHop = hopByHopFilter(update)
  const merged = new Headers()
  const replaced = new Set<string>()
  for (const [name] of update) if (!isHopByHop(name) && !NOT_UPDATED_BY_304.has(name)) replaced.add(name)
  for (const [name, value] of stored) if (!replaced.has(name)) merged.append(name, value)
  for (const [name, value] of update) if (replaced.has(name)) merged.append(name, value)
  return merged
}

/** The Vary field's names, lower-cased and sorted; "*" when it holds a star. */
export function varyNames(headers: Headers): string[] | "*" {
  const vary = headers.get("vary")
  if (!vary) return []
  const names = [...new Set(vary.split(",").map((name) => name.trim().toLowerCase()).filter(Boolean))]
  return names.includes("*") ? "*" : names.sort()
}

const WHITESPACE_RUN = /\s+/g

/** RFC 9111 §4.1: values are compared after normalising white space around list members. */
function normaliseVaryValue(value: string | null): string | null {
  if (value === null) return null
  return value
    .split(",")
    .map((member) => member.replace(WHITESPACE_RUN, " ").trim())
    .join(",")
}

function varySelection(names: string[], request: Headers): Record<string, string | null> {
  const selection: Record<string, string | null> = {}
  for (const name of names) selection[name] = normaliseVaryValue(request.get(name))
  return selection
}

function matchesVary(vary: Record<string, string | null>, request: Headers): boolean {
  for (const name in vary) if (normaliseVaryValue(request.get(name)) !== vary[name]) return false
  return true
}

// ───────────────────────────── keys ─────────────────────────────

/**
 * The cache key: method + full target URL. HEAD is answered from GET's entries (RFC 9110
 * §9.3.2), so both use the GET key. Query parameters named in `ignoreQuery` are left out.
 */
export function cacheKey(target: string, ignoreQuery: ReadonlySet<string>): string {
  if (ignoreQuery.size === 0) return "GET " + target
  const queryStart = target.indexOf("?")
  if (queryStart === -1) return "GET " + target
  const kept = target
    .slice(queryStart + 1)
    .split("&")
    .filter((pair) => !ignoreQuery.has(decodeQueryName(pair)))
  return "GET " + target.slice(0, queryStart) + (kept.length ? "?" + kept.join("&") : "")
}

function decodeQueryName(pair: string): string {
  const name = pair.split("=", 1)[0] ?? ""
  try {
    return decodeURIComponent(name.replaceAll("+", " "))
  } catch {
    return name // not valid percent-encoding: compare it as written
  }
}

function sha256(text: string): string {
  return createHash("sha256").update(text).digest("hex")
}

// ───────────────────────────── files: the runtime seam ─────────────────────────────

/** Streams bytes into a file. */
interface FileSink {
  write(chunk: Uint8Array): Promise<void>
  close(): Promise<void>
}

/**
 * Writes go through node:fs under both runtimes: its writes run off the event loop, so disk and
 * network overlap. Measured on a 512 MiB MISS, Bun's FileSink (which writes on the event loop
 * once its buffer fills) reached a third of the throughput.
 */
async function createSink(path: string): Promise<FileSink> {
  const handle = await fs.open(path, "w")
  return {
    async write(chunk) {
      await handle.write(chunk)
    },
    close: () => handle.close(),
  }
}

/** The file reads that differ between Bun and Node. Chosen once, at start-up. */
interface FileApi {
  readBytes(path: string): Promise<Uint8Array>
  /** A response body read from the file: Bun.file lets Bun.serve use sendfile. */
  responseBody(path: string): Blob | ReadableStream<Uint8Array>
}

const bunFiles: FileApi = {
  readBytes: (path) => Bun.file(path).bytes(),
  responseBody: (path) => Bun.file(path),
}

const nodeFiles: FileApi = {
  readBytes: async (path) => new Uint8Array(await fs.readFile(path)),
  responseBody: (path) => Readable.toWeb(createReadStream(path)) as ReadableStream<Uint8Array>,
}

const files: FileApi = typeof Bun !== "undefined" ? bunFiles : nodeFiles

// ───────────────────────────── stored entries ─────────────────────────────

/** One stored variant: its policy data, where its body lives, and its body when small. */
export interface Variant {
  meta: EntryMeta
  /** sha256 of key + Vary selection: the variant's file name stem. */
  id: string
  /** Where its meta lives: the disk store's name for it. */
  metaPath: string
  bodyFile: string
  /** The body, when it is small enough to live in memory. */
  body: Uint8Array | null
  /** The headers of its last hit; `new Response` copies them, so hits in the same second share them. */
  hit?: { age: number; ttl: number; cacheStatus: string; headers: Headers }
}

/** What lives on disk next to the body: the meta, plus what ties it to its key and body. */
interface MetaFile extends EntryMeta {
  format: 1
  key: string
  bodyFile: string
}

const FORMAT_DIR = "v1"
const META_SUFFIX = ".meta"
const BODY_SUFFIX = ".body"
const TEMP_SUFFIX = ".tmp"
// A body no meta refers to, older than this, is left over from a crash: safe to remove.
const ORPHAN_AGE_MS = 60_000
const PERSIST_LRU_EVERY_MS = 60_000

/**
 * The disk store. Layout: `<dir>/v1/<2 hex>/<sha256(key)>/<variant>.meta` (JSON) beside
 * `<variant>.<write id>.body`. A write goes body first, then meta, each under a temporary
 * name renamed when whole, so a reader sees a complete entry or none. Sizes are indexed in
 * memory in LRU order by a scan that runs after start-up (it stats files, never reads bodies).
 */
export class FileStore {
  readonly root: string
  /** meta path → bytes on disk (meta + body), in least-recently-used order. */
  private readonly lru = new Map<string, { bytes: number; key: string; persistedAt: number }>()
  private totalBytes = 0
  /** Key directories seen by the scan or made since: where entries may be. */
  private readonly knownDirs = new Set<string>()
  private scanDone = false
  /** The meta path last moved to the most-recently-used end. */
  private mostRecent: string | undefined
  private readonly scanned: Promise<void>
  onEvict: (key: string) => void = () => {}

  constructor(
    dir: string,
    private readonly maxBytes: number,
    private readonly warn: (message: string) => void,
  ) {
    this.root = join(dir, FORMAT_DIR)
    this.scanned = this.scan()
  }

  /** Resolves once the start-up scan has indexed what was on disk. */
  ready(): Promise<void> {
    return this.scanned
  }

  /** Forgets the index, after another process cleared the directory. */
  reset(): void {
    this.lru.clear()
    this.knownDirs.clear()
    this.totalBytes = 0
  }

  private keyDir(key: string): string {
    const hash = sha256(key)
    return join(this.root, hash.slice(0, 2), hash)
  }

  /** False only when the key surely has nothing on disk: the scan is done and never saw it. */
  private mayHold(dir: string): boolean {
    return !this.scanDone || this.knownDirs.has(dir)
  }

  /** Every complete variant stored under a key; broken ones are deleted, never returned. */
  async load(key: string): Promise<Variant[]> {
    const dir = this.keyDir(key)
    // A cold URL costs no syscall once the scan has listed every key directory.
    if (!this.mayHold(dir)) return []
    let names: string[]
    try {
      names = await fs.readdir(dir)
    } catch {
      return [] // no directory: nothing stored under this key
    }
    const variants: Variant[] = []
    const referenced = new Set<string>()
    for (const name of names) {
      if (!name.endsWith(META_SUFFIX)) continue
      const variant = await this.readVariant(dir, name, key)
      if (!variant) continue
      referenced.add(basename(variant.bodyFile))
      variants.push(variant)
    }
    await this.removeOrphans(dir, names, referenced)
    return variants
  }

  private async readVariant(dir: string, name: string, key: string): Promise<Variant | undefined> {
    const metaPath = join(dir, name)
    try {
      const text = await fs.readFile(metaPath, "utf8")
      const meta = JSON.parse(text) as MetaFile
      const bodyStat = await fs.stat(join(dir, meta.bodyFile))
      if (meta.format !== 1 || meta.key !== key || bodyStat.size !== meta.size) throw new Error("mismatch")
      // Indexed with its key: the start-up scan knows only paths, and evicting an entry must
      // also drop it from the memory tier (which would otherwise serve a deleted file).
      this.touch(metaPath, key, text.length + meta.size)
      const { format: _format, key: _key, bodyFile, ...entry } = meta
      return { meta: entry, id: name.slice(0, -META_SUFFIX.length), metaPath, bodyFile: join(dir, bodyFile), body: null }
    } catch (error) {
      this.warn(`discarding a broken cache entry ${metaPath}: ${(error as Error).message}`)
      await this.removeVariantFiles(metaPath)
      return undefined
    }
  }

  private async removeOrphans(dir: string, names: string[], referenced: Set<string>): Promise<void> {
    const now = Date.now()
    for (const name of names) {
      if (name.endsWith(META_SUFFIX) || referenced.has(name)) continue
      const path = join(dir, name)
      const stat = await fs.stat(path).catch(() => undefined)
      if (stat && now - stat.mtimeMs > ORPHAN_AGE_MS) await fs.rm(path, { force: true })
    }
  }

  /** Reads a variant's body bytes (to hold it in memory). */
  readBody(variant: Variant): Promise<Uint8Array> {
    return files.readBytes(variant.bodyFile)
  }

  /**
   * Starts writing a variant. Bytes go to a temporary file; `commit` renames it and writes the
   * meta, `abort` removes it. Until `commit` resolves, readers see the previous state.
   */
  async begin(key: string, variantId: string): Promise<PendingWrite> {
    const dir = this.keyDir(key)
    this.knownDirs.add(dir)
    await fs.mkdir(dir, { recursive: true })
    const writeId = randomBytes(6).toString("hex")
    const bodyName = `${variantId}.${writeId}${BODY_SUFFIX}`
    const tempBody = join(dir, bodyName + TEMP_SUFFIX)
    const sink = await createSink(tempBody)
    let size = 0
    const abort = async () => {
      await sink.close().catch(() => {}) // the file is removed next; a close error changes nothing
      await fs.rm(tempBody, { force: true })
    }
    return {
      write: async (chunk) => {
        size += chunk.byteLength
        await sink.write(chunk)
      },
      abort,
      commit: async (meta) => {
        await sink.close()
        await fs.rename(tempBody, join(dir, bodyName))
        return this.writeMeta(key, dir, variantId, bodyName, { ...meta, size })
      },
    }
  }

  /** Replaces a variant's meta (after a 304) without touching its body. */
  async updateMeta(key: string, variant: Variant, meta: EntryMeta): Promise<Variant> {
    const dir = this.keyDir(key)
    return this.writeMeta(key, dir, variant.id, variant.bodyFile.slice(dir.length + 1), meta)
  }

  private async writeMeta(
    key: string,
    dir: string,
    variantId: string,
    bodyName: string,
    meta: EntryMeta,
  ): Promise<Variant> {
    const metaPath = join(dir, variantId + META_SUFFIX)
    const previousBody = await this.bodyNameOf(metaPath)
    const file: MetaFile = { format: 1, key, bodyFile: bodyName, ...meta }
    const text = JSON.stringify(file)
    const tempMeta = `${metaPath}.${randomBytes(6).toString("hex")}${TEMP_SUFFIX}`
    await fs.writeFile(tempMeta, text)
    await fs.rename(tempMeta, metaPath)
    if (previousBody && previousBody !== bodyName) await fs.rm(join(dir, previousBody), { force: true })
    this.account(metaPath, key, text.length + meta.size)
    await this.evict()
    return { meta, id: variantId, metaPath, bodyFile: join(dir, bodyName), body: null }
  }

  private async bodyNameOf(metaPath: string): Promise<string | undefined> {
    try {
      return (JSON.parse(await fs.readFile(metaPath, "utf8")) as MetaFile).bodyFile
    } catch {
      return undefined // no previous meta (the common case) or a broken one being replaced
    }
  }

  /** Deletes every variant stored under a key. */
  async delete(key: string): Promise<void> {
    const dir = this.keyDir(key)
    const names = await fs.readdir(dir).catch(() => [] as string[])
    for (const name of names) if (name.endsWith(META_SUFFIX)) this.forget(join(dir, name))
    await fs.rm(dir, { recursive: true, force: true })
  }

  /**
   * Empties the store without disturbing a proxy that is using it: the tree is renamed away
   * in one step (readers see all or nothing), then removed.
   */
  static async clear(dir: string): Promise<void> {
    const root = join(dir, FORMAT_DIR)
    const trash = join(dir, `${FORMAT_DIR}.trash-${randomBytes(6).toString("hex")}`)
    try {
      await fs.rename(root, trash)
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return
      throw error
    }
    await fs.writeFile(join(dir, GENERATION_FILE), randomBytes(8).toString("hex"))
    await fs.rm(trash, { recursive: true, force: true })
  }

  /**
   * Records a use of a variant served from memory: without it, the disk's LRU order would see
   * only writes and evict the entries read most.
   */
  used(variant: Variant): void {
    const { metaPath } = variant
    // The hottest entry is already last: no reordering and no utimes on each of its hits.
    if (metaPath === this.mostRecent) return
    const entry = this.lru.get(metaPath)
    if (entry) this.touch(metaPath, entry.key, entry.bytes)
  }

  private touch(metaPath: string, key: string, bytes: number): void {
    const persistedAt = this.lru.get(metaPath)?.persistedAt ?? 0
    const now = Date.now()
    // The LRU order survives restarts through mtime, written at most once a minute per entry
    // so that hits cost no syscall; losing one update is harmless.
    const stale = now - persistedAt > PERSIST_LRU_EVERY_MS
    this.account(metaPath, key, bytes, stale ? now : persistedAt)
    if (stale) fs.utimes(metaPath, now / 1000, now / 1000).catch(() => {})
  }

  private account(metaPath: string, key: string, bytes: number, persistedAt = Date.now()): void {
    this.forget(metaPath)
    this.lru.set(metaPath, { bytes, key, persistedAt })
    this.totalBytes += bytes
    this.mostRecent = metaPath
  }

  private forget(metaPath: string): void {
    const entry = this.lru.get(metaPath)
    if (!entry) return
    this.lru.delete(metaPath)
    this.totalBytes -= entry.bytes
  }

  /** Removes least-recently-used variants until the store is within its bound. */
  private async evict(): Promise<void> {
    for (const [metaPath, entry] of this.lru) {
      if (this.totalBytes <= this.maxBytes) return
      this.forget(metaPath)
      this.onEvict(entry.key)
      await this.removeVariantFiles(metaPath)
    }
  }

  private async removeVariantFiles(metaPath: string): Promise<void> {
    const bodyName = await this.bodyNameOf(metaPath)
    const dir = metaPath.slice(0, metaPath.lastIndexOf("/"))
    await fs.rm(metaPath, { force: true })
    if (bodyName) await fs.rm(join(dir, bodyName), { force: true })
  }

  /** Indexes what is on disk: sizes and mtimes only, oldest first. Leftover temp files go. */
  private async scan(): Promise<void> {
    const found: ScannedMeta[] = []
    const shards = await fs.readdir(this.root).catch(() => [] as string[])
    for (const shard of shards) {
      const keyDirs = await fs.readdir(join(this.root, shard)).catch(() => [] as string[])
      for (const keyDir of keyDirs) {
        const dir = join(this.root, shard, keyDir)
        this.knownDirs.add(dir)
        await this.scanKeyDir(dir, found)
      }
    }
    this.scanDone = true
    found.sort((a, b) => a.mtimeMs - b.mtimeMs)
    // Entries written or read while the scan ran are the most recent: they stay at the end.
    const recent = [...this.lru]
    this.lru.clear()
    this.totalBytes = 0
    for (const { metaPath, bytes, mtimeMs } of found) this.account(metaPath, "", bytes, mtimeMs)
    for (const [metaPath, entry] of recent) this.account(metaPath, entry.key, entry.bytes, entry.persistedAt)
    await this.evict()
  }

  /** One key's directory: each meta with its size plus its body's, and its mtime. */
  private async scanKeyDir(dir: string, found: ScannedMeta[]): Promise<void> {
    const names = await fs.readdir(dir).catch(() => [] as string[])
    const stats = await Promise.all(names.map((name) => fs.stat(join(dir, name)).catch(() => undefined)))
    const bodyBytes = new Map<string, number>() // variant id → bytes of its body file(s)
    const metas: { name: string; size: number; mtimeMs: number }[] = []
    for (const [index, name] of names.entries()) {
      const stat = stats[index]
      if (!stat) continue
      const variantId = name.slice(0, name.indexOf("."))
      if (name.endsWith(TEMP_SUFFIX)) {
        if (Date.now() - stat.mtimeMs > ORPHAN_AGE_MS) await fs.rm(join(dir, name), { force: true })
      } else if (name.endsWith(META_SUFFIX)) metas.push({ name, size: stat.size, mtimeMs: stat.mtimeMs })
      else bodyBytes.set(variantId, (bodyBytes.get(variantId) ?? 0) + stat.size)
    }
    for (const { name, size, mtimeMs } of metas) {
      const variantId = name.slice(0, -META_SUFFIX.length)
      found.push({ metaPath: join(dir, name), bytes: size + (bodyBytes.get(variantId) ?? 0), mtimeMs })
    }
  }
}

interface ScannedMeta {
  metaPath: string
  bytes: number
  mtimeMs: number
}

/** Written by `clear`: a running proxy that sees it change drops what it holds in memory. */
export const GENERATION_FILE = "generation"

export interface PendingWrite {
  write(chunk: Uint8Array): Promise<void>
  commit(meta: EntryMeta): Promise<Variant>
  abort(): Promise<void>
}

/**
 * The memory tier: every key's variants (metas always, bodies when small), least recently used
 * first, bounded in bytes. A key with no variants is remembered too, so a miss on an
 * uncacheable URL does not touch the disk again.
 */
export class MemoryTier {
  private readonly entries = new Map<string, { variants: Variant[]; bytes: number }>()
  private totalBytes = 0
  private newest: string | undefined

  constructor(private readonly maxBytes: number) {}

  get(key: string): Variant[] | undefined {
    const entry = this.entries.get(key)
    if (!entry) return undefined
    // Moved to the most-recently-used end, unless it is there already (a hot key's usual case).
    if (key !== this.newest) {
      this.entries.delete(key)
      this.entries.set(key, entry)
      this.newest = key
    }
    return entry.variants
  }

  set(key: string, variants: Variant[]): void {
    this.delete(key)
    const bytes = KEY_OVERHEAD_BYTES + key.length + variants.reduce((sum, v) => sum + variantBytes(v), 0)
    if (bytes > this.maxBytes) return
    this.entries.set(key, { variants, bytes })
    this.totalBytes += bytes
    for (const [oldest, entry] of this.entries) {
      if (this.totalBytes <= this.maxBytes) break
      this.entries.delete(oldest)
      this.totalBytes -= entry.bytes
    }
  }

  delete(key: string): void {
    const entry = this.entries.get(key)
    if (!entry) return
    this.entries.delete(key)
    this.totalBytes -= entry.bytes
  }

  clear(): void {
    this.entries.clear()
    this.totalBytes = 0
  }
}

// Rough bytes a key's map entry and a variant's meta take in memory: a URL remembered as
// uncacheable still costs something against --memory-size.
const KEY_OVERHEAD_BYTES = 128
const META_OVERHEAD_BYTES = 256

function variantBytes(variant: Variant): number {
  let bytes = META_OVERHEAD_BYTES + (variant.body?.byteLength ?? 0)
  for (const [name, value] of variant.meta.headers) bytes += name.length + value.length
  return bytes
}

// ───────────────────────────── the cache ─────────────────────────────

/** Cache-Status (RFC 9211) names us by this. */
const CACHE_NAME = "caching-proxy"
/** RFC 9110 §7.6.3: a proxy adds itself to Via, on requests and responses alike. */
export const VIA = "1.1 caching-proxy"
// Bodies up to this size are held in memory (if the memory tier has room); larger ones are
// served from their file, which Bun sends with sendfile.
const MEMORY_BODY_LIMIT_BYTES = 1 << 20
const GENERATION_POLL_MS = 1000
// RFC 9110 §9.2.1: every method but these may change state and invalidates (RFC 9111 §4.4).
const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS", "TRACE"])
// Statuses whose responses have no body (RFC 9110 §6.4.1); `new Response` refuses one.
const NULL_BODY_STATUS = new Set([101, 103, 204, 205, 304])
// RFC 9110 §15.4.5: a 304 carries the validators and caching fields, not the representation's.
const NOT_IN_304 = new Set(["content-length", "content-type", "content-encoding", "content-range", "content-language"])
// What a client's body stream fails with when the origin's does.
const ORIGIN_BODY_FAILED = "the origin's body was cut short"
// Conditional request fields the cache replaces with its own validators when it revalidates.
const CLIENT_VALIDATORS = ["if-none-match", "if-modified-since"]

interface Lookup {
  key: string
  method: string
  headers: Headers
  directives: Directives
}

/**
 * The HTTP cache: `respond` answers one request from the store or through `forward`,
 * following RFC 9111 for a shared cache, with one request per key to the origin at a time.
 */
export class Cache {
  readonly store: FileStore
  private readonly memory: MemoryTier
  private readonly ignoreQuery: ReadonlySet<string>
  private readonly memoryBodyLimit: number
  /** key → settles when the request under way for it has stored its response, or given up. */
  private readonly inFlight = new Map<string, Promise<void>>()
  /** Keys whose last response could not be stored: requests for them skip coalescing. */
  private readonly passes = new PassList()
  private readonly generationTimer: ReturnType<typeof setInterval>
  private generation: string | undefined

  constructor(private readonly config: CacheConfig) {
    this.store = new FileStore(config.dir, config.maxBytes, config.warn)
    this.memory = new MemoryTier(config.memoryBytes)
    this.store.onEvict = (key) => this.memory.delete(key)
    this.ignoreQuery = new Set(config.ignoreQuery)
    this.memoryBodyLimit = Math.min(MEMORY_BODY_LIMIT_BYTES, config.memoryBytes / 8)
    this.generationTimer = setInterval(() => void this.checkGeneration(), GENERATION_POLL_MS)
    this.generationTimer.unref?.()
    void this.checkGeneration()
  }

  close(): void {
    clearInterval(this.generationTimer)
  }

  /** Empties the cache directory (see `FileStore.clear`). */
  static clear(dir: string): Promise<void> {
    return FileStore.clear(dir)
  }

  /**
   * Answers a request with the client's `headers`; `forward` sends (possibly conditional) headers
   * to the origin. The response carries Via, X-Cache and Cache-Status. A hit from memory is
   * answered synchronously: no promise for Bun.serve to wait on.
   */
  respond(method: string, headers: Headers, target: string, forward: Forward): Response | Promise<Response> {
    if (method !== "GET" && method !== "HEAD") return this.respondUncached(method, target, headers, forward)
    const lookup: Lookup = {
      key: cacheKey(target, this.ignoreQuery),
      method,
      headers,
      directives: parseCacheControl(headers.get("cache-control")),
    }
    const known = this.memory.get(lookup.key)
    const variant = known && selectVariant(known, headers)
    if (known && (!variant || variant.body || variant.meta.size === 0)) return this.decide(lookup, variant, forward)
    return this.respondFromDisk(lookup, forward)
  }

  /** The key is not in memory, or its body is in a file that must still be whole. */
  private async respondFromDisk(lookup: Lookup, forward: Forward): Promise<Response> {
    let variant = selectVariant(this.memory.get(lookup.key) ?? (await this.variants(lookup.key)), lookup.headers)
    if (variant && !variant.body && variant.meta.size > 0 && !(await this.isFileWhole(variant))) {
      this.memory.delete(lookup.key)
      variant = selectVariant(await this.variants(lookup.key), lookup.headers)
    }
    return this.decide(lookup, variant, forward)
  }

  /** Serves the selected variant, or goes to the origin: RFC 9111 §4 and §5.2.1. */
  private decide(lookup: Lookup, variant: Variant | undefined, forward: Forward): Response | Promise<Response> {
    const now = Date.now()
    if (this.config.offline) {
      return variant ? this.fromCache(variant, lookup, now, "hit; detail=offline") : answer(504, "not in the cache (offline mode)\n", "detail=offline")
    }
    if (variant) {
      const use = usability(variant.meta, lookup.directives, now)
      if (use === "fresh") return this.fromCache(variant, lookup, now, "hit")
      if (use === "stale-allowed") return this.fromCache(variant, lookup, now, "hit; detail=max-stale")
      if (use === "stale-while-revalidate") {
        this.refreshInBackground(lookup, variant, forward)
        return this.fromCache(variant, lookup, now, "hit; detail=stale-while-revalidate")
      }
    }
    // RFC 9111 §5.2.1.7: only-if-cached never goes to the origin; 504 when nothing fits.
    if (lookup.directives.has("only-if-cached")) return answer(504, "not in the cache (only-if-cached)\n", "detail=only-if-cached")
    if (lookup.method === "HEAD" || !isCoalescable(lookup) || this.passes.has(lookup.key, now)) return this.fetch(lookup, variant, forward)
    return this.coalesced(lookup, variant, forward)
  }

  /**
   * A body served from its file must still be there, as long as its meta says: another process
   * may have cleared the cache, or someone removed files by hand. One stat, for large hits only.
   */
  private async isFileWhole(variant: Variant): Promise<boolean> {
    const stat = await fs.stat(variant.bodyFile).catch(() => undefined)
    return stat?.size === variant.meta.size
  }

  /** Methods the cache does not answer: forwarded, and unsafe ones invalidate (RFC 9111 §4.4). */
  private async respondUncached(method: string, target: string, headers: Headers, forward: Forward): Promise<Response> {
    if (this.config.offline) return answer(504, "not in the cache (offline mode)\n", "detail=offline")
    const response = await forward(headers)
    // RFC 9111 §4.4: a non-error response to an unsafe method invalidates the target URI and
    // the same-origin URIs in Location and Content-Location.
    if (!SAFE_METHODS.has(method) && response.status < 400) {
      const targets = [target, ...sameOriginReferences(target, response.headers)]
      await Promise.all(targets.map((uri) => this.invalidate(cacheKey(uri, this.ignoreQuery))))
    }
    return relay(response, "fwd=method")
  }

  private async invalidate(key: string): Promise<void> {
    this.memory.delete(key)
    await this.store.delete(key).catch((error) => this.config.warn(`cache: invalidating failed: ${error}`))
  }

  /** Concurrent misses for one key send one request; the others wait for its stored answer. */
  private async coalesced(lookup: Lookup, stale: Variant | undefined, forward: Forward): Promise<Response> {
    const pending = this.inFlight.get(lookup.key)
    if (!pending) return this.fetch(lookup, stale, forward, this.lead(lookup.key))
    // A leader whose client never reads its body would hold its waiters forever: they wait
    // at most as long as the origin may take to answer, then go themselves.
    await waitAtMost(pending, this.config.coalesceWaitMs)
    const now = Date.now()
    const stored = selectVariant(await this.variants(lookup.key), lookup.headers)
    if (stored && usability(stored.meta, lookup.directives, now) === "fresh") {
      return this.fromCache(stored, lookup, now, "hit; detail=coalesced")
    }
    // Not stored, or not for this client (Vary): this one goes to the origin by itself.
    return this.fetch(lookup, stored ?? stale, forward)
  }

  /** Registers this request as the one in flight for `key`; the returned function ends that. */
  private lead(key: string): () => void {
    let settle!: () => void
    this.inFlight.set(key, new Promise<void>((resolve) => (settle = resolve)))
    let settled = false
    return () => {
      if (settled) return
      settled = true
      this.inFlight.delete(key)
      settle()
    }
  }

  /** RFC 5861 §3: one background refresh per key; its answer only updates the store. */
  private refreshInBackground(lookup: Lookup, stale: Variant, forward: Forward): void {
    if (this.inFlight.has(lookup.key)) return
    const release = this.lead(lookup.key)
    this.fetch(lookup, stale, forward, release)
      .then((response) => response.body?.pipeTo(new WritableStream()))
      .catch((error) => this.config.warn(`cache: background refresh of ${lookup.key} failed: ${(error as Error).message}`))
      .finally(release)
  }

  /**
   * Goes to the origin: a revalidation when a stale variant is at hand (RFC 9111 §4.3.1), else a
   * plain miss; stores what may be stored while it streams to the client.
   */
  private async fetch(
    lookup: Lookup,
    stale: Variant | undefined,
    forward: Forward,
    release: () => void = () => {},
  ): Promise<Response> {
    try {
      const requestTime = Date.now()
      const fwd = this.forwardReason(lookup, stale, requestTime)
      let response: Response
      try {
        response = await forward(stale ? withValidators(lookup.headers, stale.meta) : lookup.headers)
      } catch (error) {
        if (stale && error instanceof OriginError && mayServeStaleOnError(stale.meta, lookup.directives, Date.now(), true)) {
          release() // nothing will be stored: requests waiting on this one may go
          return this.fromCache(stale, lookup, Date.now(), `hit; fwd=${fwd}; detail=origin-unreachable`)
        }
        // RFC 9111 §5.2.2.2: a must-revalidate entry that cannot be validated gives 504.
        if (stale && error instanceof OriginError) throw new OriginError(504, error.message)
        throw error
      }
      const responseTime = Date.now()
      if (stale && response.status === 304) {
        if (validates(response.headers, stale.meta)) return this.revalidated(lookup, stale, response, requestTime, responseTime, fwd, release)
        // RFC 9111 §4.3.4: a 304 for another representation updates nothing: ask again, plainly.
        return this.fetch(lookup, undefined, forward, release)
      }
      // RFC 5861 §4: stale-if-error stands in for a 5xx from the origin.
      if (stale && response.status >= 500 && mayServeStaleOnError(stale.meta, lookup.directives, responseTime, false)) {
        release() // nothing will be stored: requests waiting on this one may go
        await response.body?.cancel()
        return this.fromCache(stale, lookup, responseTime, `hit; fwd=${fwd}; fwd-status=${response.status}; detail=stale-if-error`)
      }
      return await this.storeAndRelay(lookup, response, requestTime, responseTime, `fwd=${fwd}; fwd-status=${response.status}`, release)
    } catch (error) {
      release()
      throw error
    }
  }

  /** RFC 9111 §4.3.4: a 304 freshens the stored entry, whose body then answers the client. */
  private async revalidated(
    lookup: Lookup,
    stale: Variant,
    response: Response,
    requestTime: number,
    responseTime: number,
    fwd: string,
    release: () => void,
  ): Promise<Response> {
    const headers = mergeHeaders(stale.meta.headers, response.headers)
    const directives = parseCacheControl(headers.get("cache-control"))
    const meta = describeResponse(stale.meta.status, headers, directives, stale.meta.vary, requestTime, responseTime, stale.meta.size, this.config)
    let variant: Variant = { ...stale, meta, hit: undefined }
    try {
      variant = { ...(await this.store.updateMeta(lookup.key, stale, meta)), body: stale.body }
      this.remember(lookup.key, variant)
    } catch (error) {
      this.config.warn(`cache: updating ${lookup.key} failed: ${(error as Error).message}`)
    } finally {
      release()
    }
    return this.fromCache(variant, lookup, Date.now(), `hit; fwd=${fwd}; fwd-status=304`)
  }

  /**
   * Why a request goes to the origin, for Cache-Status `fwd` (RFC 9211 §2.2): the response it
   * would have used was stale, or fresh but refused by the request's directives; or none matched.
   */
  private forwardReason(lookup: Lookup, selected: Variant | undefined, now: number): string {
    if (selected) return ttlMs(selected.meta, now) > 0 && !selected.meta.noCache ? "request" : "stale"
    // RFC 9211 §2.2: vary-miss when responses are stored for the URI, none for these request
    // headers. The lookup just put the key's variants in memory.
    return (this.memory.get(lookup.key)?.length ?? 0) > 0 ? "vary-miss" : "uri-miss"
  }

  /** Relays an origin response; when it may be stored, writes it to the store as it streams. */
  private async storeAndRelay(
    lookup: Lookup,
    response: Response,
    requestTime: number,
    responseTime: number,
    cacheStatus: string,
    release: () => void,
  ): Promise<Response> {
    const directives = parseCacheControl(response.headers.get("cache-control"))
    const reason =
      lookup.method === "HEAD" // RFC 9110 §9.3.2: a HEAD response has no body to store
        ? "head"
        : notStorableReason(lookup.headers, lookup.directives, response.status, response.headers, directives, this.config) ??
          this.tooLarge(response.headers)
    if (reason) {
      // A 206 or 304 answers this request's Range or conditions, not the URL's cacheability.
      const aboutTheUrl = !REQUEST_REASONS.has(reason) && response.status !== 206 && response.status !== 304
      if (aboutTheUrl) this.passes.add(lookup.key, responseTime)
      release()
      return relay(response, `${cacheStatus}; detail=${reason}`)
    }
    const names = varyNames(response.headers) as string[] // "*" was refused above
    const vary = varySelection(names, lookup.headers)
    const variantId = sha256(lookup.key + "\n" + JSON.stringify(vary))
    const meta = describeResponse(response.status, response.headers, directives, vary, requestTime, responseTime, 0, this.config)
    if (isUselessToStore(meta)) {
      release()
      return relay(response, `${cacheStatus}; detail=stale-on-arrival`)
    }
    let pending: PendingWrite
    try {
      pending = await this.store.begin(lookup.key, variantId)
    } catch (error) {
      this.config.warn(`cache: cannot write to ${this.store.root}: ${(error as Error).message}`)
      release()
      return relay(response, `${cacheStatus}; detail=store-failed`)
    }
    const body = this.tee(lookup.key, response, meta, pending, release)
    return relay(new Response(body, response), `${cacheStatus}; stored`)
  }

  private tooLarge(headers: Headers): string | null {
    const length = Number(headers.get("content-length") ?? 0)
    return length > this.config.maxEntryBytes ? "too-large" : null
  }

  /**
   * The body for the client, written to the store chunk by chunk as the client reads it: a slow
   * client slows the origin instead of filling memory. The entry is committed only when the body
   * is whole (and as long as Content-Length says); anything else aborts it.
   */
  private tee(
    key: string,
    response: Response,
    meta: EntryMeta,
    pending: PendingWrite,
    release: () => void,
  ): ReadableStream<Uint8Array> | null {
    const expectedLength = response.headers.get("content-length")
    const keepInMemory = Number(expectedLength ?? 0) <= this.memoryBodyLimit
    const chunks: Uint8Array[] = []
    let size = 0
    let writer: PendingWrite | null = pending
    const abort = (why: string) => {
      if (!writer) return
      const aborted = writer
      writer = null
      if (why) this.config.warn(`cache: not storing ${key}: ${why}`)
      aborted.abort().catch((error) => this.config.warn(`cache: cleaning up ${key} failed: ${error}`)).finally(release)
    }
    const commit = async () => {
      if (!writer) return
      const committing = writer
      writer = null
      try {
        if (expectedLength !== null && Number(expectedLength) !== size) {
          await committing.abort()
          this.config.warn(`cache: not storing ${key}: body was ${size} bytes, Content-Length said ${expectedLength}`)
          return
        }
        const variant = await committing.commit(meta)
        if (keepInMemory && size <= this.memoryBodyLimit) variant.body = concat(chunks, size)
        this.remember(key, variant)
      } catch (error) {
        this.config.warn(`cache: storing ${key} failed: ${(error as Error).message}`)
        await committing.abort().catch(() => {}) // already logged the failure above
      } finally {
        release()
      }
    }
    if (!response.body) {
      void commit()
      return null
    }
    const reader = response.body.getReader()
    return new ReadableStream<Uint8Array>(
      {
        pull: async (controller) => {
          const chunk = await reader.read().catch((error: unknown) => ({ error }))
          if ("error" in chunk) {
            abort(`the origin's body failed (${(chunk.error as Error).message})`)
            // The client must see the body fail too (a cut, not a clean end); this error is
            // already logged above, so it carries no stack for the server to print again.
            controller.error(ORIGIN_BODY_FAILED)
            return
          }
          if (chunk.done) {
            await commit()
            controller.close()
            return
          }
          controller.enqueue(chunk.value)
          if (!writer) return
          size += chunk.value.byteLength
          if (size > this.config.maxEntryBytes) return abort("")
          if (keepInMemory && size <= this.memoryBodyLimit) chunks.push(chunk.value)
          try {
            await writer.write(chunk.value)
          } catch (error) {
            abort(`writing failed: ${(error as Error).message}`)
          }
        },
        cancel: async (reason) => {
          abort("")
          await reader.cancel(reason)
        },
      },
      { highWaterMark: 0 },
    )
  }

  /** Puts a freshly stored variant in the memory tier, beside its key's other variants. */
  private remember(key: string, variant: Variant): void {
    const known = this.memory.get(key)
    // Not in memory: the next lookup loads every variant from disk, this one included.
    if (!known) return
    this.memory.set(key, [...known.filter((v) => v.id !== variant.id), variant])
  }

  /** A key's variants, from memory or else from disk (then kept in memory). */
  private async variants(key: string): Promise<Variant[]> {
    const known = this.memory.get(key)
    if (known) return known
    let variants: Variant[]
    try {
      variants = await this.store.load(key)
      for (const variant of variants) {
        if (variant.meta.size <= this.memoryBodyLimit) variant.body = await this.store.readBody(variant)
      }
    } catch (error) {
      this.config.warn(`cache: reading ${key} failed: ${(error as Error).message}`)
      return []
    }
    this.memory.set(key, variants)
    return variants
  }

  /** A response from a stored variant, RFC 9111 §4 (Age per §5.1, conditionals per §4.3.2). */
  private fromCache(variant: Variant, lookup: Lookup, now: number, cacheStatus: string): Response {
    const { meta } = variant
    const headers = hitHeaders(variant, now, cacheStatus)
    if (meta.status === 200 && isNotModified(lookup.headers, meta)) {
      const notModified = new Headers(headers)
      for (const name of NOT_IN_304) notModified.delete(name)
      return new Response(null, { status: 304, headers: notModified })
    }
    this.store.used(variant)
    const hasBody = lookup.method !== "HEAD" && meta.size > 0 && !NULL_BODY_STATUS.has(meta.status)
    const body = hasBody ? (variant.body ?? files.responseBody(variant.bodyFile)) : null
    return new Response(body, { status: meta.status, headers })
  }

  /** A `--clear-cache` from another process bumps the generation: drop what memory holds. */
  private async checkGeneration(): Promise<void> {
    const generation = await fs.readFile(join(this.config.dir, GENERATION_FILE), "utf8").catch(() => "")
    if (this.generation !== undefined && generation !== this.generation) {
      this.memory.clear()
      this.store.reset()
    }
    this.generation = generation
  }
}

/** Stale on arrival with no validator and no stale-* window: it could never be used. */
function isUselessToStore(meta: EntryMeta): boolean {
  const usable = meta.freshMs - meta.initialAgeMs > 0 || meta.etag !== null || meta.lastModified !== null
  return !usable && meta.staleWhileRevalidateMs === 0 && meta.staleIfErrorMs === 0
}

// Reasons not to store that belong to the request, not to the URL's responses.
const REQUEST_REASONS = new Set(["head", "request-no-store", "authorization"])
// How long a key whose response could not be stored skips coalescing (Varnish's hit-for-miss).
const PASS_MS = 120_000
const MAX_PASSES = 10_000

/**
 * Keys whose last response could not be stored, for a while: their requests go straight to the
 * origin instead of queueing behind one another (a no-store API would otherwise pay a round
 * trip of waiting on every concurrent request). Bounded; the oldest are forgotten first.
 */
class PassList {
  private readonly until = new Map<string, number>()

  add(key: string, now: number): void {
    this.until.delete(key)
    this.until.set(key, now + PASS_MS)
    if (this.until.size > MAX_PASSES) this.until.delete(this.until.keys().next().value as string)
  }

  has(key: string, now: number): boolean {
    const until = this.until.get(key)
    if (until === undefined) return false
    if (until > now) return true
    this.until.delete(key)
    return false
  }
}

/**
 * A hit's headers: the stored fields plus Age (RFC 9111 §5.1), X-Cache and Cache-Status
 * (RFC 9211). Both numbers change once a second, so most hits reuse the last ones built.
 */
function hitHeaders(variant: Variant, now: number, cacheStatus: string): Headers {
  const age = Math.floor(currentAgeMs(variant.meta, now) / 1000)
  const ttl = Math.round(ttlMs(variant.meta, now) / 1000)
  const last = variant.hit
  if (last && last.age === age && last.ttl === ttl && last.cacheStatus === cacheStatus) return last.headers
  const headers = new Headers(variant.meta.headers)
  headers.append("via", VIA)
  headers.set("age", String(age))
  headers.set("x-cache", "HIT")
  headers.set("cache-status", `${CACHE_NAME}; ${cacheStatus}; ttl=${ttl}`)
  variant.hit = { age, ttl, cacheStatus, headers }
  return headers
}

/** Coalescing waits on another client's request: only for requests that would accept its answer. */
function isCoalescable(lookup: Lookup): boolean {
  return !lookup.directives.has("no-cache") && !lookup.directives.has("no-store") && !lookup.headers.has("range")
}

/** RFC 9111 §4.1: the most recent stored variant whose Vary selection matches the request. */
function selectVariant(variants: Variant[], request: Headers): Variant | undefined {
  let best: Variant | undefined
  for (const variant of variants) {
    if (!matchesVary(variant.meta.vary, request)) continue
    if (!best || variant.meta.responseTime > best.meta.responseTime) best = variant
  }
  return best
}

/** RFC 9111 §4.3.1: the request with the stored validators in place of the client's. */
function withValidators(headers: Headers, meta: EntryMeta): Headers {
  const conditional = new Headers(headers)
  for (const name of CLIENT_VALIDATORS) conditional.delete(name)
  if (meta.etag) conditional.set("if-none-match", meta.etag)
  if (meta.lastModified) conditional.set("if-modified-since", meta.lastModified)
  return conditional
}

/** RFC 9111 §4.3.4: does this 304 speak of the stored response? */
function validates(headers: Headers, meta: EntryMeta): boolean {
  const etag = headers.get("etag")
  if (etag !== null) return meta.etag !== null && weakEtag(etag) === weakEtag(meta.etag)
  const lastModified = headers.get("last-modified")
  return lastModified === null || meta.lastModified === null || lastModified === meta.lastModified
}

const WEAK_PREFIX = /^W\//

/** RFC 9110 §8.8.3.2: the weak comparison ignores the W/ prefix. */
function weakEtag(tag: string): string {
  return tag.trim().replace(WEAK_PREFIX, "")
}

/** RFC 9110 §13.1.2 and §13.1.3, as RFC 9111 §4.3.2 has a cache evaluate them. */
function isNotModified(request: Headers, meta: EntryMeta): boolean {
  const ifNoneMatch = request.get("if-none-match")
  if (ifNoneMatch !== null) {
    if (meta.etag === null) return false
    if (ifNoneMatch.trim() === "*") return true
    const stored = weakEtag(meta.etag)
    return ifNoneMatch.split(",").some((tag) => weakEtag(tag) === stored)
  }
  const since = parseHttpDate(request.get("if-modified-since"))
  if (since === undefined) return false
  const modified = parseHttpDate(meta.lastModified) ?? parseHttpDate(new Headers(meta.headers).get("date"))
  return modified !== undefined && modified <= since
}

/** Location and Content-Location that point into the same origin as the target. */
function sameOriginReferences(target: string, headers: Headers): string[] {
  const origin = new URL(target).origin
  const uris: string[] = []
  for (const name of ["location", "content-location"]) {
    const value = headers.get(name)
    if (!value) continue
    try {
      const uri = new URL(value, target)
      if (uri.origin === origin) uris.push(uri.href)
    } catch {
      continue // not a URI reference: nothing to invalidate
    }
  }
  return uris
}

/** The origin's response for the client, hop-by-hop fields dropped, with our two status fields. */
export function relay(response: Response, cacheStatus: string): Response {
  // Edited in place: a new Response around the origin's body would cost Bun its native
  // pass-through of the body (about an eighth of the no-store MISS throughput).
  const { headers } = response
  const isHopByHop = hopByHopFilter(headers)
  const dropped = [...headers.keys()].filter(isHopByHop)
  for (const name of dropped) headers.delete(name)
  headers.append("via", VIA)
  headers.set("x-cache", "MISS")
  headers.set("cache-status", `${CACHE_NAME}; ${cacheStatus}`)
  return response
}

/** A short answer of our own (errors, only-if-cached, offline). */
export function answer(status: number, text: string, cacheStatus: string): Response {
  return new Response(text, {
    status,
    headers: { "content-type": "text/plain; charset=utf-8", via: VIA, "x-cache": "MISS", "cache-status": `${CACHE_NAME}; ${cacheStatus}` },
  })
}

/** Resolves when `promise` settles or `ms` have passed, whichever comes first. */
function waitAtMost(promise: Promise<void>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const timeout = new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)))
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

function concat(chunks: Uint8Array[], size: number): Uint8Array {
  if (chunks.length === 1 && chunks[0]) return chunks[0]
  const bytes = new Uint8Array(size)
  let offset = 0
  for (const chunk of chunks) {
    bytes.set(chunk, offset)
    offset += chunk.byteLength
  }
  return bytes
}
