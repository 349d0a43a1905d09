/**
 * The RFC 9111 shared-cache policy: every rule as a pure function over plain data, with `now`
 * passed in. It knows nothing of files, memory or Redis: stores keep what it describes.
 */

import { formatHttpDate, parseHttpDate } from "./http-date.ts"
import type { EntryMeta } from "./store.ts"
import { parseDictionary, type SfValue } from "./structured-fields.ts"

/** What the policy needs of the configuration. */
export interface PolicyConfig {
  /** Lifetime for responses with no freshness information (RFC 9111 §4.2.2); 404, 405, 414 and 501 get at most 10 s; 0 = none. @default 300 s */
  defaultTtlMs: number
  /** Store every cacheable-status GET for this long, whatever its headers say; 0 = off. */
  forceTtlMs: number
  /** Store responses that carry Set-Cookie and share them with every client. @default false */
  shareCookies: boolean
  /** Targeted cache-control fields (RFC 9213) this cache follows, most specific first, as `targetList` gives them. @default ["cdn-cache-control"] */
  targetList: readonly string[]
  /** Pass Surrogate-Key and Cache-Tag on to clients (and keep them in the stored headers). @default false */
  keepTagHeaders: boolean
}

// ───────────────────────────── Cache-Control parsing ─────────────────────────────

export type Directives = ReadonlyMap<string, string | true>

// Most requests carry no Cache-Control: they share one empty set of directives.
// RFC 9110 §5.1: a field name is a token.
export const FIELD_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/

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

// ───────────────────────────── targeted cache control ─────────────────────────────

/** RFC 9213 §3: the field targeted at CDNs, which a reverse proxy in front of an origin is. */
const CDN_CACHE_CONTROL = "cdn-cache-control"

/**
 * RFC 9213 §2.1: the target list, most specific first: the fields a user names (e.g.
 * CachingProxy-Cache-Control), then CDN-Cache-Control unless they placed it themselves.
 */
export function targetList(fields: readonly string[]): string[] {
  const names = fields.map((name) => name.toLowerCase())
  return names.includes(CDN_CACHE_CONTROL) ? names : [...names, CDN_CACHE_CONTROL]
}

/** What a response says about caching it: the directives this cache follows, and the Expires it may use. */
export interface ResponseControl {
  directives: Directives
  /** Expires, or null when absent or when a targeted field rules (RFC 9213 §2.1). */
  expires: string | null
}

/**
 * RFC 9213 §2.1: the first field on the target list with a valid, non-empty value decides, and
 * Cache-Control and Expires are then ignored for this cache's decisions (all three are still
 * passed on); with none, Cache-Control and Expires do (RFC 9111 §5.2, §5.3).
 */
export function responseControl(headers: Headers, targets: readonly string[]): ResponseControl {
  for (const name of targets) {
    const value = headers.get(name)
    const directives = value === null ? undefined : targetedDirectives(value)
    if (directives) return { directives, expires: null }
  }
  return { directives: parseCacheControl(headers.get("cache-control")), expires: headers.get("expires") }
}

// Directives whose value is a delta-seconds: in a targeted field, an Integer (RFC 9213 §2.2).
const DELTA_DIRECTIVES = new Set(["max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"])
// What a delta directive of another type becomes: no delta-seconds parse accepts it, so the
// response is stale (RFC 9111 §4.2.1) instead of a max-age=1.5 being read as 1 (RFC 9213 §2.2:
// values that violate a directive's type "SHOULD NOT" be consumed).
const NOT_DELTA_SECONDS = "not-delta-seconds"

/**
 * RFC 9213 §2.2: a targeted field is a Structured Field Dictionary of cache directives, parsed
 * strictly; an empty field or one that does not parse is ignored as a whole (undefined).
 */
function targetedDirectives(value: string): Directives | undefined {
  const members = parseDictionary(value)
  if (!members || members.size === 0) return undefined
  const directives = new Map<string, string | true>()
  for (const [name, member] of members) {
    const directive = directiveValue(name, member)
    if (directive !== undefined) directives.set(name, directive)
  }
  return directives
}

/**
 * A targeted directive as Cache-Control's parser would give it (RFC 9213 §2.2): no value is
 * Boolean true; delta-seconds are Integers; field names (private, no-cache) a String or Token.
 * `?0` says the directive is off, so it is left out; parameters are ignored.
 */
function directiveValue(name: string, member: SfValue): string | true | undefined {
  if (DELTA_DIRECTIVES.has(name)) return member.type === "integer" && member.value >= 0 ? String(member.value) : NOT_DELTA_SECONDS
  if (member.type === "boolean") return member.value || undefined
  return member.type === "string" || member.type === "token" ? member.value : true
}

// ───────────────────────────── the policy ─────────────────────────────

// RFC 9110 §15.1: status codes that are heuristically cacheable (RFC 9111 §4.2.2).
const HEURISTICALLY_CACHEABLE = new Set([200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501])
// Of those, the errors that tell how things stand now, not what a resource is: a 404 turns into a
// 200 once the resource is made, a 405 or 501 once the route is deployed. They get a short default.
const TRANSIENT_ERRORS = new Set([404, 405, 414, 501])
/** The default lifetime of a transient error (at most --ttl): nginx's and CDNs' "negative caching". */
const TRANSIENT_ERROR_TTL_MS = 10_000
// Status codes whose semantics we implement: what `must-understand` asks about (RFC 9111 §5.2.2.3).
const UNDERSTOOD_STATUS = new Set([200, 203, 204, 300, 301, 302, 303, 307, 308, 400, 403, 404, 405, 410, 414, 500, 501, 502, 503, 504])
// RFC 9111 §4.2.2: 10 % of the time since Last-Modified, capped (as Squid and others do) at a day.
const LAST_MODIFIED_FRACTION = 0.1
const HEURISTIC_CAP_MS = 24 * 3600 * 1000

/** Why a response is not stored, or null when it may be. RFC 9111 §3. */
export function notStorableReason(
  requestHeaders: Headers,
  requestDirectives: Directives,
  status: number,
  responseHeaders: Headers,
  { directives, expires }: ResponseControl,
  config: PolicyConfig,
): string | null {
  // RFC 9111 §3: only final responses (200–599: RFC 9110 §15 calls the rest invalid, and no
  // response with such a status can be built to replay it); we do not combine partial content
  // (§3.3), so 206 is never stored, and a 304 only updates what is stored (§4.3.4).
  if (!isFinalStatus(status) || status === 206 || status === 304) return "status"
  if (varyNames(responseHeaders) === "*") return "vary-star" // RFC 9111 §4.1: never matches
  // RFC 9112 §6.1: a transfer coding besides chunked, which no runtime here decodes, leaves
  // coded bytes, not the representation; and Transfer-Encoding, hop-by-hop, is not kept to say so.
  if (hasTransferCoding(responseHeaders)) return "transfer-coding"
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
  if (requestHeaders.has("authorization") && !directives.has("public") && !directives.has("s-maxage") && !directives.has("must-revalidate"))
    return "authorization"
  // Deviation (RFC 9111 §3 allows it): a response to a request with Cookie may have been made for
  // that client alone, so it is stored only when it says a shared cache may keep it (public,
  // s-maxage), or with --share-cookies. Unlike §3.5 for Authorization, must-revalidate is not
  // enough: it speaks of staleness, not of sharing, and per-user pages often carry it.
  if (!config.shareCookies && requestHeaders.has("cookie") && !directives.has("public") && !directives.has("s-maxage")) return "cookie"
  // Deviation (RFC 9111 §3 allows it): like nginx and Varnish, cookies set for one client are
  // not handed to another unless --share-cookies says so.
  if (!config.shareCookies && responseHeaders.has("set-cookie")) return "set-cookie"
  const explicit = directives.has("s-maxage") || directives.has("max-age") || expires !== null
  if (!explicit && !directives.has("public") && !HEURISTICALLY_CACHEABLE.has(status)) return "status"
  return null
}

/** Whether Transfer-Encoding names a coding besides chunked (which the runtime has removed). */
function hasTransferCoding(headers: Headers): boolean {
  const codings = headers.get("transfer-encoding")?.split(",") ?? []
  return codings.some((coding) => !["", "chunked"].includes(coding.trim().toLowerCase()))
}

/** RFC 9110 §15: a final status is 200–599; 1xx are interim, and anything outside 100–599 is invalid. */
export function isFinalStatus(status: number): boolean {
  return status >= 200 && status <= 599
}

/** freshness_lifetime in ms, RFC 9111 §4.2.1 (shared cache) and §4.2.2 (heuristics). */
function freshnessLifetimeMs(
  status: number,
  headers: Headers,
  { directives, expires: expiresHeader }: ResponseControl,
  responseTime: number,
  config: PolicyConfig,
): number {
  if (config.forceTtlMs > 0) return config.forceTtlMs
  const sMaxAge = deltaMs(directives, "s-maxage")
  if (sMaxAge !== undefined) return sMaxAge
  const maxAge = deltaMs(directives, "max-age")
  if (maxAge !== undefined) return maxAge
  // RFC 9110 §6.6.1: an invalid Date may be replaced by the time the response was received.
  const date = parseHttpDate(headers.get("date"), responseTime) ?? responseTime
  if (expiresHeader !== null) {
    // RFC 9111 §5.3: an invalid Expires (e.g. "0", or a date in a form §5.6.7 does not allow) means already expired.
    const expires = parseHttpDate(expiresHeader, responseTime)
    return expires === undefined ? 0 : Math.max(0, expires - date)
  }
  if (!HEURISTICALLY_CACHEABLE.has(status) && !directives.has("public")) return 0
  const lastModified = parseHttpDate(headers.get("last-modified"), responseTime)
  if (lastModified !== undefined && lastModified < date) return Math.min((date - lastModified) * LAST_MODIFIED_FRACTION, HEURISTIC_CAP_MS)
  // Deviation (RFC 9111 §4.2.2 leaves the heuristic to us): a plain API response with no
  // freshness information at all lives for --ttl, so the common case is cached. A transient
  // error lives 10 s at most: long enough to spare the origin a flood of them, short enough that
  // a developer who then creates the resource sees it at once.
  return TRANSIENT_ERRORS.has(status) ? Math.min(config.defaultTtlMs, TRANSIENT_ERROR_TTL_MS) : config.defaultTtlMs
}

/** corrected_initial_age, RFC 9111 §4.2.3. */
function correctedInitialAgeMs(headers: Headers, requestTime: number, responseTime: number): number {
  const date = parseHttpDate(headers.get("date"), responseTime)
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

/**
 * A soft purge: the entry is stale from `now` on, so the next request validates it (RFC 9111
 * §4.3.1) or, within its stale-while-revalidate window, is served while it is refreshed (RFC 5861
 * §3; the window counts from now), but never under a client's max-stale (see `usability`). Its
 * delete time stays: it can still be validated, or stand in under stale-if-error.
 */
export function markedStale(meta: EntryMeta, now: number): EntryMeta {
  return { ...meta, freshMs: Math.min(meta.freshMs, currentAgeMs(meta, now)), softPurged: true }
}

/** Builds what we keep about a response, from the response and the request that caused it. */
export function describeResponse(
  status: number,
  headers: Headers,
  control: ResponseControl,
  vary: Record<string, string | null>,
  requestTime: number,
  responseTime: number,
  config: PolicyConfig,
): EntryMeta {
  const forced = config.forceTtlMs > 0
  const { directives } = control
  const policy = {
    initialAgeMs: forced ? 0 : correctedInitialAgeMs(headers, requestTime, responseTime),
    freshMs: freshnessLifetimeMs(status, headers, control, responseTime, config),
    staleWhileRevalidateMs: forced ? 0 : (deltaMs(directives, "stale-while-revalidate") ?? 0),
    staleIfErrorMs: forced ? 0 : (deltaMs(directives, "stale-if-error") ?? 0),
  }
  return {
    status,
    headers: storableHeaderPairs(headers, config.keepTagHeaders, responseTime),
    vary,
    responseTime,
    ...policy,
    deleteAt: deleteAt(responseTime, policy),
    mustRevalidate: !forced && (directives.has("must-revalidate") || directives.has("proxy-revalidate") || directives.has("s-maxage")),
    noCache: !forced && directives.has("no-cache"),
    etag: headers.get("etag"),
    lastModified: validLastModified(headers, responseTime),
    tags: responseTags(headers).tags,
  }
}

/**
 * Last-Modified when it is a valid HTTP-date (RFC 9110 §8.8.2), else null: an invalid one is
 * no validator (never sent as If-Modified-Since) and no base for a heuristic lifetime.
 */
function validLastModified(headers: Headers, now: number): string | null {
  const value = headers.get("last-modified")
  return parseHttpDate(value, now) === undefined ? null : value
}

// How long a stale entry is kept: it can still be revalidated (a 304 instead of a body), serve
// stale-if-error when the origin is down (RFC 9111 §4.2.4), a client's max-stale, or --offline.
// Stores drop it after that even if their byte bound has room (Redis by its TTL).
export const STALE_RETENTION_MS = 7 * 24 * 3600 * 1000

/** When an entry stops being of any use: fresh, then stale for the longest window that may use it. */
function deleteAt(
  responseTime: number,
  policy: Pick<EntryMeta, "initialAgeMs" | "freshMs" | "staleWhileRevalidateMs" | "staleIfErrorMs">,
): number {
  const staleAt = responseTime + Math.max(0, policy.freshMs - policy.initialAgeMs)
  return staleAt + Math.max(STALE_RETENTION_MS, policy.staleWhileRevalidateMs, policy.staleIfErrorMs)
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
  // RFC 9111 §5.2.1.2: max-stale lets the client take a stale response; not one the operator
  // soft-purged (declared out of date): it is validated first, as the README promises.
  const maxStale = meta.softPurged ? undefined : deltaOrAnyMs(request, "max-stale")
  if (maxStale !== undefined && staleness <= maxStale) return "stale-allowed"
  // RFC 5861 §3: stale-while-revalidate serves at once and refreshes in the background; with no
  // window, even a response stale by 0 ms is validated first.
  if (meta.staleWhileRevalidateMs > 0 && staleness <= meta.staleWhileRevalidateMs) return "stale-while-revalidate"
  return "validate"
}

/** May a stale entry stand in for an origin that failed? RFC 5861 §4 and RFC 9111 §4.2.4. */
export function mayServeStaleOnError(meta: EntryMeta, request: Directives, now: number, originUnreachable: boolean): boolean {
  // RFC 9111 §5.2.2.2: must-revalidate forbids it; the answer is then an error (504).
  if (meta.mustRevalidate || meta.noCache) return false
  const staleness = -ttlMs(meta, now)
  const window = Math.max(meta.staleIfErrorMs, deltaOrAnyMs(request, "stale-if-error") ?? 0)
  // A response still fresh (negative staleness) is no stale one: RFC 9111 §4.3.3 lets it stand in.
  if (staleness < 0 || (window > 0 && staleness <= window)) return true
  // RFC 9111 §4.2.4: a disconnected cache may serve stale; an origin's 5xx is not disconnection.
  return originUnreachable
}

// ───────────────────────────── headers ─────────────────────────────

/** RFC 9110 §7.6.1: fields meaningful only for one connection, never stored or forwarded. */
const HOP_BY_HOP_HEADERS = new Set([
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

function storableHeaderPairs(headers: Headers, keepTagHeaders: boolean, responseTime: number): [string, string][] {
  const isHopByHop = hopByHopFilter(headers)
  const pairs: [string, string][] = []
  for (const [name, value] of headers) if (!isHopByHop(name) && (keepTagHeaders || !isTagHeader(name))) pairs.push([name, value])
  // RFC 9110 §6.6.1: a cache that receives a response without Date adds the time it received it;
  // else its hits would carry the runtime's Date of the moment they are sent, beside a growing Age.
  if (!headers.has("date")) pairs.push(["date", formatHttpDate(responseTime)])
  return pairs
}

/**
 * The fields by which an origin tags a response for purging, and how each separates its tags:
 * Surrogate-Key (Fastly, Varnish xkey) by spaces, Cache-Tag (Cloudflare, Akamai) by commas. Like
 * those CDNs, the cache keeps them as the entry's tags and does not pass them on.
 */
const TAG_HEADERS = new Map([
  ["surrogate-key", / +/],
  ["cache-tag", / *, */],
])

// A Map, not an object's keys: `in` would find "constructor" and "__proto__" too (and is the
// slower lookup, asked once per field of every response).
export function isTagHeader(name: string): boolean {
  return TAG_HEADERS.has(name)
}

/**
 * What one response may tag itself with: every tag is a file (or a set member in Redis) of the
 * index, so an origin must not grow it without bound. Fastly caps Surrogate-Key at 16 KiB, and
 * Cloudflare a response's Cache-Tag values at 16 KiB.
 */
export const MAX_TAGS = 128
export const MAX_TAG_BYTES = 16 * 1024

/** A response's tags, from its tag fields, each once: the first MAX_TAGS within MAX_TAG_BYTES; `dropped` counts the rest. */
export function responseTags(headers: Headers): { tags: string[]; dropped: number } {
  const tags = new Set<string>()
  let bytes = 0
  let dropped = 0
  for (const [name, separator] of TAG_HEADERS) {
    for (const tag of (headers.get(name) ?? "").trim().split(separator)) {
      if (!tag || tags.has(tag)) continue
      if (tags.size < MAX_TAGS && bytes + tag.length <= MAX_TAG_BYTES) {
        tags.add(tag)
        bytes += tag.length
      } else dropped++
    }
  }
  return { tags: [...tags], dropped }
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

/**
 * The meta kept for every client after a 304 updated it. Deviation (RFC 9111 §4.3.4 lays all
 * of a 304's fields over the stored ones): its Set-Cookie is for the client that asked, as a
 * 200's would be (notStorableReason), unless --share-cookies, or --force-ttl, which stores a
 * 200's Set-Cookie too.
 */
export function sharedMeta(meta: EntryMeta, config: PolicyConfig): EntryMeta {
  if (config.shareCookies || config.forceTtlMs > 0) return meta
  return { ...meta, headers: meta.headers.filter(([name]) => name !== "set-cookie") }
}

/** The Vary field's names, lower-cased and sorted; "*" when it holds a star. */
export function varyNames(headers: Headers): string[] | "*" {
  const vary = headers.get("vary")
  if (!vary) return []
  const names = [
    ...new Set(
      vary
        .split(",")
        .map((name) => name.trim().toLowerCase())
        .filter(Boolean),
    ),
  ]
  return names.includes("*") ? "*" : names.sort()
}

const WHITESPACE_RUN = /\s+/g
// RFC 9110 §12.4.2: a list member's weight is ";q=" and a qvalue of at most three decimals, up to 1.
const WEIGHTED_MEMBER = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+)(?:[ \t]*;[ \t]*[qQ]=(0(?:\.\d{0,3})?|1(?:\.0{0,3})?))?$/

/** A list member's token (lower-cased) and its weight, 1 by default. */
interface Weighted {
  token: string
  q: number
}

/**
 * RFC 9110 §12.5.3, §12.5.4: Accept-Encoding and Accept-Language are lists of case-insensitive
 * tokens, each with a weight. How each orders members of equal weight (see `normaliseWeighted`).
 */
const WEIGHTED_LISTS: ReadonlyMap<string, "by-token" | "as-sent"> = new Map([
  // §12.5.3: members of equal weight are equally acceptable, in any order: "gzip, br" and
  // "br, gzip" accept the same responses, so they share a variant.
  ["accept-encoding", "by-token"],
  // §12.5.4: "some recipients treat the order in which language tags are listed as an
  // indication of descending priority, particularly for tags that are assigned equal quality
  // values": "en, fr" and "fr, en" may well get different pages, so that order is kept.
  ["accept-language", "as-sent"],
])

// "name\nvalue" → its normal form. Clients send few distinct values, and every hit on an entry
// with Vary compares one: normalising costs about 1-2 µs, a look-up here about 0.1 µs. Bounded:
// values made up to fill it only make it start over.
const normalised = new Map<string, string>()
const MAX_NORMALISED = 1000

/**
 * RFC 9111 §4.1: values are compared after normalising what the field's syntax says does not
 * matter. Every field: white space around list members. Accept-Encoding and Accept-Language
 * also: case, an explicit q=1, trailing zeros of a weight, empty members (RFC 9110 §5.6.1), and
 * the order of members of different weights (the weight, not the position, ranks them).
 */
function normaliseVaryValue(name: string, value: string | null): string | null {
  if (value === null) return null
  const key = `${name}\n${value}` // a field value holds no newline
  let normal = normalised.get(key)
  if (normal === undefined) {
    const order = WEIGHTED_LISTS.get(name)
    normal = (order && normaliseWeighted(value, order)) ?? normaliseWhitespace(value)
    if (normalised.size >= MAX_NORMALISED) normalised.clear()
    normalised.set(key, normal)
  }
  return normal
}

function normaliseWhitespace(value: string): string {
  return value
    .split(",")
    .map((member) => member.replace(WHITESPACE_RUN, " ").trim())
    .join(",")
}

/** A weighted list in one canonical form, heaviest first; undefined when it does not parse (compared as written). */
function normaliseWeighted(value: string, order: "by-token" | "as-sent"): string | undefined {
  const members: Weighted[] = []
  for (const raw of value.split(",")) {
    const member = raw.trim()
    if (!member) continue
    const match = WEIGHTED_MEMBER.exec(member)
    if (!match) return undefined
    members.push({ token: (match[1] as string).toLowerCase(), q: match[2] === undefined ? 1 : Number(match[2]) })
  }
  // Array.prototype.sort is stable: "as-sent" keeps the order of members of equal weight.
  members.sort((a, b) => b.q - a.q || (order === "by-token" ? compareTokens(a.token, b.token) : 0))
  return members.map(({ token, q }) => (q === 1 ? token : `${token};q=${q}`)).join(",")
}

function compareTokens(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}

export function varySelection(names: string[], request: Headers): Record<string, string | null> {
  const selection: Record<string, string | null> = {}
  for (const name of names) selection[name] = normaliseVaryValue(name, request.get(name))
  return selection
}

function matchesVary(vary: Record<string, string | null>, request: Headers): boolean {
  for (const name in vary) if (normaliseVaryValue(name, request.get(name)) !== vary[name]) return false
  return true
}

// ───────────────────────────── keys ─────────────────────────────

/**
 * The cache key: method + full target URL. HEAD is answered from GET's entries (RFC 9110
 * §9.3.2), so both use the GET key. Query parameters named in `ignoreQuery` are left out.
 */
export function cacheKey(target: string, ignoreQuery: ReadonlySet<string>): string {
  if (ignoreQuery.size === 0) return `GET ${target}`
  const queryStart = target.indexOf("?")
  if (queryStart === -1) return `GET ${target}`
  const kept = target
    .slice(queryStart + 1)
    .split("&")
    .filter((pair) => !ignoreQuery.has(decodeQueryName(pair)))
  return `GET ${target.slice(0, queryStart)}${kept.length ? `?${kept.join("&")}` : ""}`
}

function decodeQueryName(pair: string): string {
  const name = pair.split("=", 1)[0] ?? ""
  try {
    return decodeURIComponent(name.replaceAll("+", " "))
  } catch {
    return name // not valid percent-encoding: compare it as written
  }
}

/** Stale on arrival with no validator and no stale-* window: it could never be used. */
export function isUselessToStore(meta: EntryMeta): boolean {
  const usable = meta.freshMs - meta.initialAgeMs > 0 || meta.etag !== null || meta.lastModified !== null
  return !usable && meta.staleWhileRevalidateMs === 0 && meta.staleIfErrorMs === 0
}

/** RFC 9111 §4.1: the most recent stored variant whose Vary selection matches the request. */
export function selectVariant<T extends { meta: EntryMeta }>(variants: Iterable<T>, request: Headers): T | undefined {
  let best: T | undefined
  for (const variant of variants) {
    if (!matchesVary(variant.meta.vary, request)) continue
    if (!best || variant.meta.responseTime > best.meta.responseTime) best = variant
  }
  return best
}

// Conditional request fields the cache replaces with its own validators when it revalidates.
const CLIENT_VALIDATORS = ["if-none-match", "if-modified-since"]

/** RFC 9111 §4.3.1: the request with the stored validators in place of the client's. */
export function withValidators(headers: Headers, meta: EntryMeta): Headers {
  const conditional = new Headers(headers)
  for (const name of CLIENT_VALIDATORS) conditional.delete(name)
  if (meta.etag) conditional.set("if-none-match", meta.etag)
  if (meta.lastModified) conditional.set("if-modified-since", meta.lastModified)
  return conditional
}

/** RFC 9111 §4.3.4: does this 304 speak of the stored response? */
export function validates(headers: Headers, meta: EntryMeta): boolean {
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
export function isNotModified(request: Headers, meta: EntryMeta, now: number): boolean {
  const ifNoneMatch = request.get("if-none-match")
  if (ifNoneMatch !== null) {
    if (meta.etag === null) return false
    if (ifNoneMatch.trim() === "*") return true
    const stored = weakEtag(meta.etag)
    return ifNoneMatch.split(",").some((tag) => weakEtag(tag) === stored)
  }
  // RFC 9110 §13.1.3: an If-Modified-Since that is not a valid HTTP-date is ignored.
  const since = parseHttpDate(request.get("if-modified-since"), now)
  if (since === undefined) return false
  const modified = parseHttpDate(meta.lastModified, now) ?? parseHttpDate(new Headers(meta.headers).get("date"), now)
  return modified !== undefined && modified <= since
}

/** Location and Content-Location that point into the same origin as the target. */
export function sameOriginReferences(target: string, headers: Headers): string[] {
  const origin = new URL(target).origin
  const uris: string[] = []
  for (const name of ["location", "content-location"]) {
    const value = headers.get(name)
    if (!value) continue
    if (!URL.canParse(value, target)) continue // not a URI reference: nothing to invalidate
    const uri = new URL(value, target)
    if (uri.origin === origin) uris.push(uri.href)
  }
  return uris
}
