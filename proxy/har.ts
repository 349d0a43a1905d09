/**
 * Stored entries as an HTTP Archive (HAR 1.2, http://www.softwareishard.com/blog/har-12-spec/) and
 * back: one HAR entry per stored variant, with a `_caching-proxy` extension holding what the cache
 * needs to use it again (freshness, validators, tags). Secrets are redacted on the way out.
 */

import {
  cacheKey,
  describeResponse,
  FIELD_NAME,
  hopByHopFilter,
  isFinalStatus,
  type PolicyConfig,
  responseControl,
  STALE_RETENTION_MS,
  varyNames,
  varySelection,
} from "../cache/policy.ts"
import type { EntryMeta } from "../cache/store.ts"

/** What a redacted value is replaced by. */
export const REDACTED = "[redacted]"
// In a URL's query the brackets are percent-encoded, so the URL stays one a strict parser takes (RFC 3986 §3.4).
const REDACTED_IN_QUERY = encodeURIComponent(REDACTED)

/** Fields that carry credentials, redacted unless --no-redact (RFC 9110 §11.6.2, §11.7.2; RFC 6265 §4). */
const ALWAYS_REDACTED = ["authorization", "proxy-authorization", "cookie", "set-cookie"]

/** Header and query parameter names whose values are replaced by `[redacted]`; none with --no-redact. */
export type Redaction = ReadonlySet<string>

/** The names redacted: the credential fields and those named by --redact, compared in lower case; none when off. */
export function redaction(names: readonly string[] | false): Redaction {
  return new Set(names === false ? [] : [...ALWAYS_REDACTED, ...names].map((name) => name.toLowerCase()))
}

/** The URL with the values of redacted query parameters replaced; the rest as written, byte for byte. */
export function redactedUrl(url: string, redacted: Redaction): string {
  const queryStart = url.indexOf("?")
  if (queryStart === -1 || redacted.size === 0) return url
  const pairs = url
    .slice(queryStart + 1)
    .split("&")
    .map((pair) => {
      const name = pair.split("=", 1)[0] ?? ""
      return redacted.has(decodedName(name).toLowerCase()) ? `${name}=${REDACTED_IN_QUERY}` : pair
    })
  return `${url.slice(0, queryStart)}?${pairs.join("&")}`
}

function decodedName(name: string): string {
  try {
    return decodeURIComponent(name.replaceAll("+", " "))
  } catch {
    return name // not valid percent-encoding: compared as written
  }
}

/** Header pairs with redacted values replaced. */
function redactedPairs(pairs: Iterable<[string, string]>, redacted: Redaction): [string, string][] {
  return [...pairs].map(([name, value]) => [name, redacted.has(name.toLowerCase()) ? REDACTED : value])
}

/** A Vary selection with redacted values replaced (an absent field stays absent). */
function redactedVary(vary: Record<string, string | null>, redacted: Redaction): Record<string, string | null> {
  return Object.fromEntries(Object.entries(vary).map(([name, value]) => [name, value !== null && redacted.has(name) ? REDACTED : value]))
}

/** Request headers that select a stored variant by its Vary selection (`Store.get`'s second argument). */
export function varyHeaders(vary: Record<string, string | null>): Headers {
  const headers = new Headers()
  for (const [name, value] of Object.entries(vary)) if (value !== null) headers.set(name, value)
  return headers
}

// ───────────────────────────── the format ─────────────────────────────

interface HarHeader {
  name: string
  value: string
}

/** What replay needs that HAR has no field for: the entry's meta, less what HAR holds itself. */
type Extension = Omit<EntryMeta, "status" | "headers">

export interface HarEntry {
  startedDateTime: string
  time: number
  request: {
    method: string
    url: string
    httpVersion: string
    cookies: never[]
    headers: HarHeader[]
    queryString: HarHeader[]
    headersSize: number
    bodySize: number
  }
  response: {
    status: number
    statusText: string
    httpVersion: string
    cookies: never[]
    headers: HarHeader[]
    content: { size: number; mimeType: string; text?: string; encoding?: "base64" }
    redirectURL: string
    headersSize: number
    bodySize: number
  }
  cache: Record<string, never>
  timings: { send: number; wait: number; receive: number }
  "_caching-proxy": Extension
}

/** The HAR document's text before its entries, and after them (entries go between, joined by ",\n"). */
export function harFrame(version: string): { head: string; tail: string } {
  const creator = JSON.stringify({ name: "caching-proxy", version })
  return { head: `{"log":{"version":"1.2","creator":${creator},"entries":[\n`, tail: "\n]}}\n" }
}

// Media types whose bodies are text: written as text when they decode as UTF-8, else base64.
const TEXT_TYPE = /^(text\/|application\/(json|xml|javascript|ecmascript|x-www-form-urlencoded)|[^;]*\+(json|xml)\b)/i
const UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true })

/** One stored variant as a HAR entry, its secrets redacted. `url` is the key's URL. */
export function harEntry(url: string, meta: EntryMeta, body: Uint8Array, redacted: Redaction): HarEntry {
  const shownUrl = redactedUrl(url, redacted)
  const { status, headers, ...extension } = meta
  const vary = redactedVary(meta.vary, redacted)
  const responseHeaders = new Headers(headers)
  const mimeType = responseHeaders.get("content-type") ?? ""
  return {
    startedDateTime: new Date(meta.responseTime).toISOString(),
    time: 0,
    request: {
      method: "GET",
      url: shownUrl,
      httpVersion: "HTTP/1.1",
      cookies: [],
      headers: [...varyHeaders(vary)].map(([name, value]) => ({ name, value })),
      queryString: queryPairs(shownUrl),
      headersSize: -1,
      bodySize: 0,
    },
    response: {
      status,
      statusText: "",
      httpVersion: "HTTP/1.1",
      cookies: [],
      headers: redactedPairs(headers, redacted).map(([name, value]) => ({ name, value })),
      content: { size: body.byteLength, mimeType, ...bodyText(body, mimeType, responseHeaders.has("content-encoding")) },
      redirectURL: responseHeaders.get("location") ?? "",
      headersSize: -1,
      bodySize: body.byteLength,
    },
    cache: {},
    timings: { send: 0, wait: 0, receive: 0 },
    "_caching-proxy": { ...extension, vary },
  }
}

/** A body as HAR text: as it is when it is text in UTF-8 (and not compressed), else in base64. */
function bodyText(body: Uint8Array, mimeType: string, isEncoded: boolean): { text?: string; encoding?: "base64" } {
  if (body.byteLength === 0) return {}
  if (!isEncoded && TEXT_TYPE.test(mimeType)) {
    try {
      return { text: UTF8.decode(body) }
    } catch {
      // Not UTF-8 after all: base64 below keeps its bytes.
    }
  }
  return { text: Buffer.from(body).toString("base64"), encoding: "base64" }
}

function queryPairs(url: string): HarHeader[] {
  const queryStart = url.indexOf("?")
  if (queryStart === -1) return []
  return url
    .slice(queryStart + 1)
    .split("&")
    .filter(Boolean)
    .map((pair) => {
      const [name = "", value = ""] = pair.split(/=(.*)/s)
      return { name: decodedName(name), value: decodedName(value) }
    })
}

// ───────────────────────────── reading a HAR ─────────────────────────────

/** A HAR that cannot be loaded: the message names the entry at fault. */
export class HarError extends Error {}

/** One entry ready for `Store.put`. */
interface LoadedEntry {
  key: string
  url: string
  meta: EntryMeta
  body: Uint8Array
}

/** What a HAR held: the entries to store, and how many were left out because the cache never stores them. */
export interface LoadedHar {
  entries: LoadedEntry[]
  /** Entries of other methods than GET, or with no final status (a request the browser cancelled). */
  skipped: number
}

// How the policy reads entries that carry no `_caching-proxy` extension (written by a browser):
// as the proxy's defaults would have stored them.
const FOREIGN_POLICY: PolicyConfig = {
  defaultTtlMs: 300_000,
  forceTtlMs: 0,
  shareCookies: true,
  targetList: ["cdn-cache-control"],
  keepTagHeaders: false,
}
// Browsers record the decoded body, beside the headers that described it encoded.
const DECODED_BODY_DROPS = new Set(["content-encoding", "content-length"])
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/

/**
 * Reads a HAR's text: every entry is checked before any is returned, so a bad one stops the whole
 * load. Redaction applies to the URL and Vary selection, as it applies to requests on replay.
 * Entries are kept at least as long as a stale entry is, counted from `now`, whenever they were recorded.
 */
export function readHar(text: string, ignoreQuery: ReadonlySet<string>, redacted: Redaction, now: number): LoadedHar {
  let document: unknown
  try {
    document = JSON.parse(text)
  } catch (error) {
    throw new HarError(`it is not JSON, or is cut short (${(error as Error).message})`)
  }
  const entries = (document as { log?: { entries?: unknown } } | null)?.log?.entries
  if (!Array.isArray(entries)) throw new HarError("it is not a HAR: it has no log.entries list")
  const loaded: LoadedEntry[] = []
  let skipped = 0
  entries.forEach((entry: unknown, index) => {
    try {
      const one = readEntry(entry, ignoreQuery, redacted, now)
      if (one) loaded.push(one)
      else skipped++
    } catch (error) {
      throw new HarError(`entry ${index}: ${(error as Error).message}`)
    }
  })
  return { entries: loaded, skipped }
}

function readEntry(entry: unknown, ignoreQuery: ReadonlySet<string>, redacted: Redaction, now: number): LoadedEntry | undefined {
  const { request, response, startedDateTime } = object(entry, "the entry") as {
    request: unknown
    response: unknown
    startedDateTime: unknown
  }
  const { method, url } = object(request, "request") as { method: unknown; url: unknown }
  const { status, headers, content } = object(response, "response") as { status: unknown; headers: unknown; content: unknown }
  if (typeof method !== "string") throw new Error("request.method is not a string")
  if (typeof url !== "string" || !URL.canParse(url)) throw new Error(`request.url is not a URL (got ${JSON.stringify(url)})`)
  if (typeof status !== "number" || !Number.isInteger(status))
    throw new Error(`response.status is not a number (got ${JSON.stringify(status)})`)
  const pairs = headerPairs(headers, "response.headers")
  const body = bodyOf(object(content, "response.content"))
  // Only GET responses are stored (HEAD is answered from them, RFC 9110 §9.3.2); a status of 0 is a browser's cancelled request.
  if (method.toUpperCase() !== "GET" || !isFinalStatus(status)) return undefined
  const shownUrl = redactedUrl(url, redacted)
  const key = cacheKey(shownUrl, ignoreQuery)
  const extension = (entry as Record<string, unknown>)["_caching-proxy"]
  if (extension !== undefined) {
    const meta = { status, headers: pairs, ...checkedExtension(extension) }
    return { key, url: shownUrl, body, meta: { ...meta, vary: redactedVary(meta.vary, redacted), deleteAt: kept(meta.deleteAt, now) } }
  }
  // Written by someone else: the policy reads it as if the origin had just sent it at its recorded time.
  const responseHeaders = new Headers()
  for (const [name, value] of pairs) if (!DECODED_BODY_DROPS.has(name.toLowerCase())) responseHeaders.append(name, value)
  const names = varyNames(responseHeaders)
  if (names === "*") return undefined
  const requestHeaders = new Headers(headerPairs((request as { headers?: unknown }).headers ?? [], "request.headers"))
  const recorded = typeof startedDateTime === "string" && !Number.isNaN(Date.parse(startedDateTime)) ? Date.parse(startedDateTime) : now
  const vary = redactedVary(varySelection(names, requestHeaders), redacted)
  const control = responseControl(responseHeaders, FOREIGN_POLICY.targetList)
  const meta = describeResponse(status, responseHeaders, control, vary, recorded, recorded, FOREIGN_POLICY)
  return { key, url: shownUrl, body, meta: { ...meta, deleteAt: kept(meta.deleteAt, now) } }
}

/** An imported entry is kept as long as a stale one would be, from now: a recording is worth replaying offline. */
function kept(deleteAt: number, now: number): number {
  return Math.max(deleteAt, now + STALE_RETENTION_MS)
}

function object(value: unknown, what: string): object {
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new Error(`${what} is not an object`)
  return value
}

function headerPairs(value: unknown, what: string): [string, string][] {
  if (!Array.isArray(value)) throw new Error(`${what} is not a list`)
  const pairs: [string, string][] = []
  for (const header of value) {
    const { name, value: text } = object(header, `a member of ${what}`) as { name: unknown; value: unknown }
    if (typeof name !== "string" || typeof text !== "string") throw new Error(`${what} has a member without a string name and value`)
    // Only names RFC 9110 §5.1 allows: HTTP/2 pseudo-headers (":status") are left out.
    if (FIELD_NAME.test(name) && !/[\r\n\0]/.test(text)) pairs.push([name.toLowerCase(), text])
  }
  const isHopByHop = hopByHopFilter(new Headers(pairs))
  return pairs.filter(([name]) => !isHopByHop(name))
}

function bodyOf(content: object): Uint8Array {
  const { text, encoding, size } = content as { text?: unknown; encoding?: unknown; size?: unknown }
  if (text === undefined) {
    if (typeof size === "number" && size > 0)
      throw new Error(`its body (${size} bytes) was not recorded (response.content.text is missing)`)
    return new Uint8Array(0)
  }
  if (typeof text !== "string") throw new Error("response.content.text is not a string")
  if (encoding === undefined || encoding === "") return new TextEncoder().encode(text)
  if (encoding !== "base64") throw new Error(`response.content.encoding ${JSON.stringify(encoding)} is not base64`)
  const compact = text.replace(/\s+/g, "")
  if (compact.length % 4 !== 0 || !BASE64.test(compact)) throw new Error("its body does not decode: response.content.text is not base64")
  return new Uint8Array(Buffer.from(compact, "base64"))
}

const NUMBER_FIELDS = ["responseTime", "deleteAt", "initialAgeMs", "freshMs", "staleWhileRevalidateMs", "staleIfErrorMs"] as const
const BOOLEAN_FIELDS = ["mustRevalidate", "noCache"] as const
const VALIDATOR_FIELDS = ["etag", "lastModified"] as const

/** Our extension, each field of the type the store expects. */
function checkedExtension(value: unknown): Extension {
  const extension = object(value, "_caching-proxy") as Record<string, unknown>
  const wrong = (field: string, expected: string) => new Error(`_caching-proxy.${field} is not ${expected}`)
  for (const field of NUMBER_FIELDS) if (!Number.isFinite(extension[field])) throw wrong(field, "a number")
  for (const field of BOOLEAN_FIELDS) if (typeof extension[field] !== "boolean") throw wrong(field, "true or false")
  for (const field of VALIDATOR_FIELDS)
    if (extension[field] !== null && typeof extension[field] !== "string") throw wrong(field, "a string or null")
  const vary = object(extension.vary, "_caching-proxy.vary") as Record<string, unknown>
  if (Object.values(vary).some((v) => v !== null && typeof v !== "string")) throw wrong("vary", "a map of strings or null")
  const { tags } = extension
  if (tags !== undefined && !(Array.isArray(tags) && tags.every((tag) => typeof tag === "string"))) throw wrong("tags", "a list of strings")
  const picked = Object.fromEntries([...NUMBER_FIELDS, ...BOOLEAN_FIELDS, ...VALIDATOR_FIELDS].map((field) => [field, extension[field]]))
  return {
    ...(picked as Omit<Extension, "vary" | "tags">),
    vary: vary as Record<string, string | null>,
    ...(tags ? { tags: tags as string[] } : {}),
  }
}
