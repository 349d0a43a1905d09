/**
 * The cache: `Cache` (lookup → policy → store, coalescing); the store contract it uses is
 * `cache/store.ts`.
 *
 * Design in brief (README "How it works" says the same for users):
 * - key: "GET " + the full target URL (query parameters named by --ignore-query removed);
 *   several variants per key, selected by the request headers the response's Vary names.
 * - `cache/policy.ts`: every RFC rule, pure functions over a plain `EntryMeta` and `now`.
 * - `Store` (`cache/store.ts`): where entries live, a small core and capabilities a store has
 *   whole or not at all. It knows nothing of HTTP rules (it matches Vary selections and honours
 *   `deleteAt`, both given to it); the policy knows nothing of stores. `cache/` holds the memory
 *   store, the file store, Redis and the tiered store that puts memory in front of another.
 * - `Cache.respond(method, headers, target, forward)` decides fresh / stale / miss, forwards
 *   through the callback it is given (the HTTP side owns the connection), stores while the body
 *   streams to the client, and answers. It never sees Hono.
 * - coalescing: one map of in-flight origin requests per key, each entry removed in one place
 *   when its store write settles; waiters learn whether the answer was stored.
 */

import { concat } from "./cache/bytes.ts"
import { withDeadline } from "./cache/deadline.ts"
import { cacheStatus, type Outcome, withOutcome, xCache } from "./cache/outcome.ts"
import {
  cacheKey,
  currentAgeMs,
  type Directives,
  describeResponse,
  hopByHopFilter,
  isFinalStatus,
  isNotModified,
  isTagHeader,
  isUselessToStore,
  MAX_TAG_BYTES,
  MAX_TAGS,
  markedStale,
  mayServeStaleOnError,
  mergeHeaders,
  notStorableReason,
  type PolicyConfig,
  parseCacheControl,
  responseControl,
  responseTags,
  sameOriginReferences,
  sharedMeta,
  ttlMs,
  usability,
  validates,
  varyNames,
  varySelection,
  withValidators,
} from "./cache/policy.ts"
import { type ByteRange, contentRange, rangeAnswer } from "./cache/range.ts"
import {
  type Claims,
  type EntryMeta,
  hasLifecycle,
  isListing,
  isShared,
  type ListedEntry,
  type Listing,
  type ListOptions,
  type MaybePromise,
  type Store,
  type Stored,
  type Warn,
  type WarnKind,
} from "./cache/store.ts"
import { type EntryView, entryView, type PurgeTarget, type VariantView, variantView } from "./cache/views.ts"

// The store contract lives in cache/store.ts; what users of the cache name is here too.
export type { Listing, Store, TierStats, Warn, WarnKind } from "./cache/store.ts"

// The admin API's views of what is stored (cache/views.ts).
export type { EntryView, PurgeTarget, VariantView } from "./cache/views.ts"

// ───────────────────────────── configuration ─────────────────────────────

export interface CacheConfig extends PolicyConfig {
  /** Responses with larger bodies are passed through, not stored. @default 100 MiB */
  maxEntryBytes: number
  /** Query parameter names left out of the cache key. */
  ignoreQuery: string[]
  /** Answer only from the cache; never contact the origin. */
  offline: boolean
  /** How long a request waits for another one's answer to the same key. @default the --timeout */
  coalesceWaitMs: number
  warn: Warn
  /** Told of each response once it is stored whole (--record). @default undefined: nobody is */
  onStored?: (key: string, meta: EntryMeta) => void
}

/** Why the origin gave no answer, as the access log and the metrics name it. */
export type OriginFailure = "refused" | "reset" | "timeout" | "dns" | "other"

/** Thrown by the `forward` callback: the origin could not give an answer. */
export class OriginError extends Error {
  constructor(
    readonly status: 502 | 504,
    message: string,
    readonly failure: OriginFailure = "other",
  ) {
    super(message)
  }
}

/**
 * Sends the request to the origin with these request headers (the client's, or the cache's
 * conditional version of them); the HTTP side drops hop-by-hop fields and owns the connection.
 */
export type Forward = (headers: Headers) => Promise<Response>

// ───────────────────────────── the cache ─────────────────────────────

/** RFC 9110 §7.6.3: a proxy adds itself to Via, on requests and responses alike. */
export const VIA = "1.1 caching-proxy"
// RFC 9110 §9.2.1: every method but these may change state and invalidates (RFC 9111 §4.4).
const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS", "TRACE"])
// Statuses whose responses have no body (RFC 9110 §6.4.1); `new Response` refuses one.
const NULL_BODY_STATUS = new Set([101, 103, 204, 205, 304])
// RFC 9110 §15.4.5: a 304 carries the validators and caching fields, not the representation's.
const NOT_IN_304 = new Set(["content-length", "content-type", "content-encoding", "content-range", "content-language"])
// Reasons not to store that belong to the request, not to the URL's responses.
const REQUEST_REASONS = new Set(["head", "request-no-store", "authorization", "cookie"])

// The outcomes that carry nothing of their own: one object each, so a hit allocates none.
const HIT: Outcome = { kind: "hit" }
const OFFLINE_HIT: Outcome = { kind: "hit", detail: "offline" }
// RFC 9111 §4.2.4: served stale, as the request's max-stale allows.
const MAX_STALE: Outcome = { kind: "stale", detail: "max-stale" }
// RFC 5861 §3: served stale while a refresh runs.
const STALE_WHILE_REVALIDATE: Outcome = { kind: "stale", detail: "stale-while-revalidate" }
const COALESCED: Outcome = { kind: "coalesced", detail: "coalesced" }
// Looked up, not found, and no answer from the origin either: still a miss, not a pass.
const OFFLINE_MISS: Outcome = { kind: "miss", detail: "offline" }
const ONLY_IF_CACHED: Outcome = { kind: "miss", detail: "only-if-cached" }
const UNCACHED_METHOD: Outcome = { kind: "pass", fwd: "method" }

interface Lookup {
  key: string
  method: string
  headers: Headers
  directives: Directives
}

/**
 * One trip to the origin: the response for the client, and whether its answer ends up stored
 * (settles once the body is written, or not; never rejects). Waiters on the key act on `stored`.
 */
interface Exchange {
  response: Response
  stored: Promise<boolean>
}

/** The headers of a variant's last hit: `new Response` copies them, so hits in the same second share them. */
interface HitHeaders {
  age: number
  ttl: number
  outcome: Outcome
  headers: Headers
  /** The outcome of the whole answer with these headers: its body's length, and the file it is sent from. */
  whole: Outcome
  /** The same, with the body's bytes when they are in memory (for the runtime: `Outcome.bytes`); only a response that sends them carries it. */
  wholeWithBytes: Outcome
}

/**
 * The HTTP cache: `respond` answers one request from the store or through `forward`,
 * following RFC 9111 for a shared cache, with one request per key to the origin at a time.
 * `S` is the store's own type: whoever made the cache keeps the store's capabilities in `store`.
 */
export class Cache<S extends Store = Store> {
  private readonly ignoreQuery: ReadonlySet<string>
  /** key → whether the origin request under way for it got its answer stored. */
  private readonly inFlight = new Map<string, Promise<boolean>>()
  /** Store writes under way: `close` waits for them. */
  private readonly writes = new Set<Promise<unknown>>()
  /** Keys whose last response could not be stored: requests for them skip coalescing. */
  private readonly passes = new PassList()
  private readonly lastHitHeaders = new WeakMap<EntryMeta, HitHeaders>()
  private readonly hitCounts = new HitCounts()
  /** The store, when processes share it and their claims (else the cache coalesces its own requests only). */
  private readonly shared: (Store & Claims) | undefined

  constructor(
    readonly store: S,
    private readonly config: CacheConfig,
  ) {
    this.ignoreQuery = new Set(config.ignoreQuery)
    this.shared = isShared(store) ? store : undefined
  }

  /** Resolves when the store answers now; rejects with the reason when it cannot. A store without a lifecycle (memory) always answers. */
  async ping(): Promise<void> {
    if (hasLifecycle(this.store)) await this.store.ping()
  }

  /** Waits for the store writes under way, then closes the store. */
  async close(): Promise<void> {
    await Promise.all(this.writes)
    if (hasLifecycle(this.store)) await this.store.close()
  }

  /** The store's listing, which the admin API's views and purges need. */
  private listing(): Store & Listing {
    if (isListing(this.store)) return this.store
    throw new Error("this store cannot list its entries")
  }

  /**
   * Answers a request with the client's `headers`; `forward` sends (possibly conditional) headers
   * to the origin. The response carries Via, X-Cache and Cache-Status, rendered from its outcome
   * (`outcomeOf(response)`, what the access log and metrics read). A hit from memory is
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
    const found = this.store.get(lookup.key, headers)
    if (!(found instanceof Promise)) return this.decide(lookup, found, forward)
    return found.then(
      (stored) => this.decide(lookup, stored, forward),
      (error) => this.decide(lookup, this.unread(lookup.key, error), forward),
    )
  }

  /** A store that cannot be read makes the request a miss. */
  private unread(key: string, error: unknown): undefined {
    this.config.warn("store-read", `${key}: ${(error as Error).message}`)
    return undefined
  }

  /** Reads the store again for this request: a waiter's or a background refresh's own copy. */
  private async read(lookup: Lookup): Promise<Stored | undefined> {
    try {
      return await this.store.get(lookup.key, lookup.headers)
    } catch (error) {
      return this.unread(lookup.key, error)
    }
  }

  /** Serves the stored response, or goes to the origin: RFC 9111 §4 and §5.2.1. */
  private decide(lookup: Lookup, stored: Stored | undefined, forward: Forward): Response | Promise<Response> {
    if (stored && !isFinalStatus(stored.meta.status))
      return this.dropUnanswerable(lookup, stored).then(() => this.decide(lookup, undefined, forward))
    const now = Date.now()
    if (this.config.offline) {
      return stored ? this.fromCache(stored, lookup, now, OFFLINE_HIT) : offlineMiss(lookup.method, lookup.key)
    }
    if (stored) {
      const use = usability(stored.meta, lookup.directives, now)
      if (use === "fresh") return this.fromCache(stored, lookup, now, HIT)
      if (use === "stale-allowed") return this.fromCache(stored, lookup, now, MAX_STALE)
      if (use === "stale-while-revalidate") {
        this.refreshInBackground(lookup, forward)
        return this.fromCache(stored, lookup, now, STALE_WHILE_REVALIDATE)
      }
    }
    // RFC 9111 §5.2.1.7: only-if-cached never goes to the origin; 504 when nothing fits.
    if (lookup.directives.has("only-if-cached")) {
      discard(stored)
      return answer(504, "not in the cache (only-if-cached)\n", ONLY_IF_CACHED)
    }
    if (lookup.method === "HEAD" || !this.isCoalescable(lookup) || this.passes.has(lookup.key, now)) {
      return this.fetchFromOrigin(lookup, stored, forward).then(responseOf)
    }
    return this.coalesced(lookup, stored, forward)
  }

  /**
   * An entry stored by an earlier version, whose status no response can carry (RFC 9110 §15): it
   * would fail every request until it expired, so it is deleted and the request is a miss.
   */
  private async dropUnanswerable(lookup: Lookup, stored: Stored): Promise<void> {
    discard(stored)
    this.config.warn("broken-entry", `${lookup.key}: deleting an entry with status ${stored.meta.status}, which no response can carry`)
    await this.invalidate(lookup.key)
  }

  /** Methods the cache does not answer: forwarded, and unsafe ones invalidate (RFC 9111 §4.4). */
  private async respondUncached(method: string, target: string, headers: Headers, forward: Forward): Promise<Response> {
    if (this.config.offline) return offlineMiss(method, cacheKey(target, this.ignoreQuery))
    const response = finalResponse(await forward(headers))
    // RFC 9111 §4.4: a non-error response to an unsafe method invalidates the target URI and
    // the same-origin URIs in Location and Content-Location.
    if (!SAFE_METHODS.has(method) && response.status < 400) {
      const targets = [target, ...sameOriginReferences(target, response.headers)]
      await Promise.all(targets.map((uri) => this.invalidate(cacheKey(uri, this.ignoreQuery))))
    }
    return relay(response, UNCACHED_METHOD, this.config.keepTagHeaders)
  }

  private async invalidate(key: string): Promise<void> {
    this.hitCounts.forget(key)
    await this.store.delete(key).catch((error) => this.config.warn("store-delete", `${key}: ${(error as Error).message}`))
  }

  // ───────────── operating it: listing and purging ─────────────

  /** A page of stored URLs, each with its variants summed up; `prefix` is a URL prefix. */
  async entries({ prefix = "", ...options }: ListOptions): Promise<{ entries: EntryView[]; cursor?: string }> {
    const page = await this.listing().list({ ...options, prefix: keyPrefix(prefix) })
    // Not Map.groupBy: Node has it from 21 on, and the bundle runs on Node 20.
    const byKey = new Map<string, ListedEntry[]>()
    for (const entry of page.entries) byKey.set(entry.key, [...(byKey.get(entry.key) ?? []), entry])
    const now = Date.now()
    return { entries: [...byKey].map(([key, variants]) => entryView(key, variants, this.hitCounts.of(key), now)), cursor: page.cursor }
  }

  /** One stored URL with every variant's headers; undefined when nothing is stored for it. */
  async entry(url: string): Promise<{ entry: EntryView; variants: VariantView[] } | undefined> {
    const key = cacheKey(url, this.ignoreQuery)
    const listed = await this.listing().variants(key)
    if (listed.length === 0) return undefined
    const now = Date.now()
    return { entry: entryView(key, listed, this.hitCounts.of(key), now), variants: listed.map((variant) => variantView(variant, now)) }
  }

  /**
   * Removes the entries a target names, every variant in every tier (and, on a shared store, in
   * every proxy's memory tier); `soft` marks them stale instead (`markedStale`). Resolves to the
   * number of URLs purged.
   */
  async purge(target: PurgeTarget, soft: boolean): Promise<number> {
    let purged = 0
    for await (const key of this.keysOf(target)) if (await this.purgeKey(key, soft)) purged++
    // Memory tiers may hold entries the store behind let go (Redis evicted them) and so did not
    // list: every process's memory forgets what the prefix or tag names.
    if (!("url" in target) && isShared(this.store))
      await this.store.announce("tag" in target ? { tag: target.tag } : { prefix: keyPrefix(target.prefix) })
    return purged
  }

  /** The keys a purge target names, page by page. */
  private async *keysOf(target: PurgeTarget): AsyncGenerator<string> {
    if ("url" in target) return yield cacheKey(target.url, this.ignoreQuery)
    if ("tag" in target) return yield* await this.listing().tagged(target.tag)
    let cursor: string | undefined
    do {
      const page = await this.listing().list({ prefix: keyPrefix(target.prefix), cursor })
      yield* new Set(page.entries.map((entry) => entry.key))
      cursor = page.cursor
    } while (cursor !== undefined)
  }

  private async purgeKey(key: string, soft: boolean): Promise<boolean> {
    const variants = await this.listing().variants(key)
    if (variants.length === 0) {
      // Gone behind (evicted) but maybe still in memory tiers: deleting it reaches every one.
      await this.store.delete(key)
      return false
    }
    if (!soft) {
      this.hitCounts.forget(key)
      await this.store.delete(key)
      return true
    }
    const now = Date.now()
    await Promise.all(variants.map(({ meta }) => this.store.update(key, markedStale(meta, now))))
    return true
  }

  // ───────────── coalescing ─────────────

  /** Concurrent misses for one key send one request; the others wait to learn if it was stored. */
  private async coalesced(lookup: Lookup, stale: Stored | undefined, forward: Forward): Promise<Response> {
    const pending = this.inFlight.get(lookup.key)
    if (!pending) return this.lead(lookup, stale, forward)
    // A leader whose client never reads its body would hold its waiters forever: they wait
    // at most as long as the origin may take to answer, then go themselves.
    const stored = await withDeadline(pending, this.config.coalesceWaitMs, () => undefined)
    if (stored !== false) {
      discard(stale)
      const now = Date.now()
      const found = await this.read(lookup)
      if (found && usability(found.meta, lookup.directives, now) === "fresh") return this.fromCache(found, lookup, now, COALESCED)
      stale = found
    }
    // Not stored, or not for this client (Vary): this one goes to the origin by itself.
    return responseOf(await this.fetchFromOrigin(lookup, stale, forward))
  }

  /** Sends the request as the one in flight for its key, until its answer is stored or not. */
  private lead(lookup: Lookup, stale: Stored | undefined, forward: Forward): Promise<Response> {
    const exchange = this.claimThenFetch(lookup, stale, forward)
    const stored = exchange.then(
      (e) => e.stored,
      () => false, // the client gets the error; waiters go themselves
    )
    this.inFlight.set(lookup.key, stored)
    // The one place an in-flight entry ends.
    void stored.finally(() => this.inFlight.delete(lookup.key))
    return exchange.then(responseOf)
  }

  /**
   * Goes to the origin holding the store's claim on the key, so that processes sharing the store
   * send one request between them too; without the claim, waits for the holder's answer. A store
   * of one process has no claims: the cache's own coalescing is all there is.
   */
  private async claimThenFetch(lookup: Lookup, stale: Stored | undefined, forward: Forward): Promise<Exchange> {
    const { shared } = this
    if (!shared) return this.fetchFromOrigin(lookup, stale, forward)
    const release = await shared.claim(lookup.key, this.config.coalesceWaitMs).catch((error) => {
      this.config.warn("store-read", `claiming ${lookup.key}: ${(error as Error).message}`)
      return () => {} // the store is away: this process fetches it, coalescing its own requests only
    })
    if (!release) return this.afterAnotherProcess(shared, lookup, stale, forward)
    try {
      // Another process may have stored the answer between this request's read and its claim.
      const landed = await this.freshlyStored(lookup, stale)
      if (landed) {
        release()
        return landed
      }
      const exchange = await this.fetchFromOrigin(lookup, stale, forward)
      void exchange.stored.finally(release)
      return exchange
    } catch (error) {
      release()
      throw error
    }
  }

  /** Another process is fetching the key: its stored answer serves this request, else this one goes itself. */
  private async afterAnotherProcess(shared: Claims, lookup: Lookup, stale: Stored | undefined, forward: Forward): Promise<Exchange> {
    await shared
      .landed(lookup.key, this.config.coalesceWaitMs)
      .catch((error) => this.config.warn("store-read", `waiting for ${lookup.key}: ${(error as Error).message}`))
    return (await this.freshlyStored(lookup, stale)) ?? this.fetchFromOrigin(lookup, stale, forward)
  }

  /** A fresh entry that another process stored for this request meanwhile, as a coalesced hit. */
  private async freshlyStored(lookup: Lookup, stale: Stored | undefined): Promise<Exchange | undefined> {
    const found = await this.read(lookup)
    const now = Date.now()
    if (!found || usability(found.meta, lookup.directives, now) !== "fresh") {
      discard(found)
      return undefined
    }
    discard(stale)
    return { response: this.fromCache(found, lookup, now, COALESCED), stored: Promise.resolve(true) }
  }

  /**
   * RFC 5861 §3: one background refresh per key; its answer only updates the store. It leads for
   * the key with this request's headers, so only a request that may lead starts it.
   */
  private refreshInBackground(lookup: Lookup, forward: Forward): void {
    if (!this.isCoalescable(lookup) || this.inFlight.has(lookup.key)) return
    // Its own copy of the stale entry: the one at hand answers the client.
    this.read(lookup)
      .then((stale) => this.lead(lookup, stale, forward))
      .then((response) => response.body?.pipeTo(new WritableStream()))
      .catch((error) => this.config.warn("refresh", `${lookup.key}: ${(error as Error).message}`))
  }

  // ───────────── the origin ─────────────

  /**
   * Goes to the origin: a revalidation when a stale entry is at hand (RFC 9111 §4.3.1), else a
   * plain miss; stores what may be stored while it streams to the client.
   */
  private async fetchFromOrigin(lookup: Lookup, stale: Stored | undefined, forward: Forward): Promise<Exchange> {
    const requestTime = Date.now()
    // Asked while the origin answers: a miss waits for no store lookup of its own.
    const reason = this.forwardReason(lookup.key, stale, requestTime)
    let response: Response
    let fwd: string
    try {
      response = finalResponse(await forward(stale ? withValidators(lookup.headers, stale.meta) : lookup.headers))
    } catch (error) {
      fwd = await reason
      if (stale && error instanceof OriginError && mayServeStaleOnError(stale.meta, lookup.directives, Date.now(), true)) {
        return notStored(this.fromCache(stale, lookup, Date.now(), { kind: "stale", fwd, detail: "origin-unreachable" }))
      }
      discard(stale)
      // RFC 9111 §5.2.2.2: a must-revalidate entry that cannot be validated gives 504.
      if (stale && error instanceof OriginError) throw new OriginError(504, error.message, error.failure)
      throw error
    }
    fwd = typeof reason === "string" ? reason : await reason
    const responseTime = Date.now()
    if (stale && response.status === 304) {
      if (validates(response.headers, stale.meta)) return this.revalidated(lookup, stale, response, requestTime, responseTime, fwd)
      // RFC 9111 §4.3.4: a 304 for another representation updates nothing: ask again, plainly.
      discard(stale)
      return this.fetchFromOrigin(lookup, undefined, forward)
    }
    // RFC 5861 §4: stale-if-error stands in for a 5xx from the origin.
    if (stale && response.status >= 500 && mayServeStaleOnError(stale.meta, lookup.directives, responseTime, false)) {
      await response.body?.cancel()
      return notStored(
        this.fromCache(stale, lookup, responseTime, {
          kind: "stale",
          fwd,
          fwdStatus: response.status,
          detail: "stale-if-error",
        }),
      )
    }
    discard(stale)
    return this.storeWhileRelaying(lookup, response, requestTime, responseTime, fwd)
  }

  /** RFC 9111 §4.3.4: a 304 freshens the stored entry, whose body then answers the client. */
  private async revalidated(
    lookup: Lookup,
    stale: Stored,
    response: Response,
    requestTime: number,
    responseTime: number,
    fwd: string,
  ): Promise<Exchange> {
    const headers = mergeHeaders(stale.meta.headers, response.headers)
    const control = responseControl(headers, this.config.targetList)
    const described = describeResponse(stale.meta.status, headers, control, stale.meta.vary, requestTime, responseTime, this.config)
    this.warnOfDroppedTags(lookup.key, response.headers)
    // A 304 without tag fields keeps the entry's tags (its stored headers no longer hold them).
    const meta = described.tags?.length ? described : { ...described, tags: stale.meta.tags }
    const updated = await this.track(
      this.store.update(lookup.key, sharedMeta(meta, this.config)).catch((error) => {
        this.config.warn("store-write", `updating ${lookup.key}: ${(error as Error).message}`)
        return false
      }),
    )
    const response304 = this.fromCache({ ...stale, meta }, lookup, Date.now(), { kind: "revalidated", fwd, fwdStatus: 304 })
    return { response: response304, stored: Promise.resolve(updated) }
  }

  /**
   * Why a request goes to the origin, for Cache-Status `fwd` (RFC 9211 §2.2): the response it
   * would have used was stale, or fresh but refused by the request's directives; or none matched.
   */
  private forwardReason(key: string, selected: Stored | undefined, now: number): MaybePromise<string> {
    if (selected) return ttlMs(selected.meta, now) > 0 && !selected.meta.noCache ? "request" : "stale"
    // RFC 9211 §2.2: vary-miss when responses are stored for the URI, none for these request headers.
    const missReason = (stored: boolean) => (stored ? "vary-miss" : "uri-miss")
    const stored = this.store.has(key)
    if (typeof stored === "boolean") return missReason(stored)
    return stored.then(missReason, (error) => {
      this.config.warn("store-read", `${key}: ${(error as Error).message}`)
      return missReason(false)
    })
  }

  /**
   * Relays an origin response; when it may be stored, writes it to the store as it streams. One
   * not stored is relayed at once: no promise of its own on the MISS's way to the client.
   */
  private storeWhileRelaying(
    lookup: Lookup,
    response: Response,
    requestTime: number,
    responseTime: number,
    fwd: string,
  ): MaybePromise<Exchange> {
    const asked = { fwd, fwdStatus: response.status }
    const control = responseControl(response.headers, this.config.targetList)
    const reason =
      lookup.method === "HEAD" // RFC 9110 §9.3.2: a HEAD response has no body to store
        ? "head"
        : (notStorableReason(lookup.headers, lookup.directives, response.status, response.headers, control, this.config) ??
          this.tooLarge(response.headers))
    if (reason) {
      // A 206 or 304 answers this request's Range or conditions, not the URL's cacheability.
      const aboutTheUrl = !REQUEST_REASONS.has(reason) && response.status !== 206 && response.status !== 304
      if (aboutTheUrl) this.passes.add(lookup.key, responseTime)
      return notStored(relay(response, { kind: "pass", ...asked, detail: reason }, this.config.keepTagHeaders))
    }
    const vary = varySelection(varyNames(response.headers) as string[], lookup.headers) // "*" was refused above
    const meta = describeResponse(response.status, response.headers, control, vary, requestTime, responseTime, this.config)
    this.warnOfDroppedTags(lookup.key, response.headers)
    if (isUselessToStore(meta))
      return notStored(relay(response, { kind: "pass", ...asked, detail: "stale-on-arrival" }, this.config.keepTagHeaders))
    const { body, stored } = this.teeIntoStore(lookup.key, response, meta)
    const length = Number(response.headers.get("content-length") ?? Infinity)
    const relayed = (framed: Uint8Array | ReadableStream<Uint8Array> | null): Exchange => {
      const wholeBytes = framed instanceof Uint8Array ? framed.byteLength : undefined
      const outcome: Outcome = { kind: "miss", ...asked, stored: true, wholeBytes }
      return { response: relay(new Response(framed, response), outcome, this.config.keepTagHeaders), stored }
    }
    return body && length <= READ_AHEAD_BYTES ? readAhead(body).then(relayed) : relayed(body)
  }

  /** Says once (the log holds a kind to once a minute) that a response carried more tags than are kept (`MAX_TAGS`). */
  private warnOfDroppedTags(key: string, headers: Headers): void {
    if (!headers.has("surrogate-key") && !headers.has("cache-tag")) return // most responses: nothing to count
    const { tags, dropped } = responseTags(headers)
    if (dropped > 0)
      this.config.warn(
        "tags",
        `${key}: kept its first ${tags.length} tags and dropped ${dropped} (at most ${MAX_TAGS}, ${MAX_TAG_BYTES} bytes)`,
      )
  }

  private tooLarge(headers: Headers): string | null {
    const length = Number(headers.get("content-length") ?? 0)
    return length > this.config.maxEntryBytes ? "too-large" : null
  }

  /**
   * The body for the client, fed to the store's `put` chunk by chunk as the client reads it: a
   * slow client slows the origin instead of filling memory, and so does a slow store. The body
   * is handed over whole (and as long as Content-Length says) or the put is aborted, so the store
   * keeps nothing. The client's body ends once the store has settled, so its next request finds
   * what was stored.
   */
  private teeIntoStore(
    key: string,
    response: Response,
    meta: EntryMeta,
  ): { body: ReadableStream<Uint8Array> | null; stored: Promise<boolean> } {
    const expectedLength = response.headers.get("content-length")
    const feed = new TransformStream<Uint8Array, Uint8Array>()
    const writer = feed.writable.getWriter()
    let feeding = true
    let size = 0
    const stored = this.track(
      this.store.put(key, meta, feed.readable).then(
        (kept) => {
          if (kept) this.config.onStored?.(key, meta)
          return kept
        },
        (error) => {
          if (feeding) this.config.warn("store-write", `${key}: ${(error as Error).message}`)
          feeding = false
          // A feed write waiting on a store that gave up must not wait forever.
          writer.abort(error).catch(() => undefined) // already errored by the store: nothing left to abort
          return false
        },
      ),
    )
    /** Stops feeding the store: the put fails and the store keeps nothing. */
    const stop = (kind?: WarnKind, detail?: string) => {
      if (!feeding) return
      feeding = false
      if (kind && detail) this.config.warn(kind, `not storing ${key}: ${detail}`)
      writer.abort(new Error(detail ?? "not stored")).catch(() => undefined) // the put's failure is reported by it
    }
    if (!response.body) {
      writer.close().catch(() => undefined) // the put's failure is reported by it
      return { body: null, stored }
    }
    const reader = response.body.getReader()
    const body = new ReadableStream<Uint8Array>(
      {
        pull: async (controller) => {
          const chunk = await reader.read().catch((error: unknown) => ({ error }))
          if ("error" in chunk) {
            stop("origin-body", `the origin's body failed (${(chunk.error as Error).message})`)
            // The client must see the body fail too (a cut, not a clean end). The failure is
            // reported above; with no reason given, the server has nothing to print again.
            controller.error()
            return
          }
          if (chunk.done) {
            if (expectedLength !== null && Number(expectedLength) !== size) {
              stop("body-length", `the body was ${size} bytes, Content-Length said ${expectedLength}`)
            } else if (feeding) await writer.close().catch(() => undefined) // the put's failure is reported by it
            await stored
            controller.close()
            return
          }
          controller.enqueue(chunk.value)
          if (!feeding) return
          size += chunk.value.byteLength
          if (size > this.config.maxEntryBytes) return stop() // too large to store: nothing is wrong
          await writer.write(chunk.value).catch(() => stop()) // the put's failure is reported by it
        },
        cancel: async (reason) => {
          // A client that has every byte Content-Length promised may hang up before the origin's
          // end is read (Node sends the last byte before this stream ends): the body is whole.
          if (feeding && expectedLength !== null && Number(expectedLength) === size) writer.close().catch(() => undefined)
          else stop() // the client went away: nothing is wrong, and nothing whole to store
          await reader.cancel(reason)
        },
      },
      { highWaterMark: 0 },
    )
    return { body, stored }
  }

  /**
   * Coalescing waits on another client's request: only for requests that would accept its
   * answer. A request with Cookie neither waits nor leads (unless cookies are shared): its answer
   * may be for that client alone and seldom stored, so others would wait on it for nothing.
   */
  private isCoalescable(lookup: Lookup): boolean {
    const { directives, headers } = lookup
    const personal = !this.config.shareCookies && headers.has("cookie")
    return !personal && !directives.has("no-cache") && !directives.has("no-store") && !headers.has("range")
  }

  /** Keeps a store operation in `writes` until it settles, so `close` can wait for it. */
  private track<T>(operation: Promise<T>): Promise<T> {
    this.writes.add(operation)
    void operation.finally(() => this.writes.delete(operation))
    return operation
  }

  // ───────────── answers ─────────────

  /**
   * A response from a stored entry, RFC 9111 §4 (Age per §5.1, conditionals per §4.3.2). Its outcome
   * says how many body bytes it sends (the access log reads them there, not from its headers: a
   * Response's `headers` built anew cost a hit more than the log line itself).
   */
  private fromCache(stored: Stored, lookup: Lookup, now: number, outcome: Outcome): Response {
    const { meta } = stored
    this.hitCounts.count(lookup.key)
    const { headers, whole, wholeWithBytes } = this.hitHeaders(stored, now, outcome)
    if (meta.status === 200 && isNotModified(lookup.headers, meta, now)) {
      discard(stored)
      const notModified = new Headers(headers)
      for (const name of NOT_IN_304) notModified.delete(name)
      return withOutcome(new Response(null, { status: 304, headers: notModified }), { ...whole, wholeBytes: 0 })
    }
    // RFC 9110 §14.2: Range applies to GET only. One header lookup is all a plain hit pays.
    const range = lookup.method === "GET" ? lookup.headers.get("range") : null
    if (range !== null) {
      const partial = this.partial(stored, lookup, headers, range, now)
      if (partial) return withOutcome(partial.response, { ...whole, wholeBytes: partial.bytes })
    }
    const hasBody = lookup.method !== "HEAD" && stored.size > 0 && !NULL_BODY_STATUS.has(meta.status)
    if (!hasBody) discard(stored)
    const response = new Response(hasBody ? stored.body : null, { status: meta.status, headers })
    return withOutcome(response, hasBody ? wholeWithBytes : { ...whole, wholeBytes: 0 })
  }

  /**
   * RFC 9110 §14: a 206 with the part of the stored body a Range asks for, or a 416 when none of
   * it exists; undefined when the whole response is the answer (If-Range failed, several ranges,
   * a status other than 200, a body that cannot be sliced).
   */
  private partial(
    stored: Stored,
    lookup: Lookup,
    hitHeaders: Headers,
    range: string,
    now: number,
  ): { response: Response; bytes: number } | undefined {
    const part = rangeAnswer(range, lookup.headers.get("if-range"), stored.meta, stored.size, now)
    if (part === "whole") return undefined
    if (part === "unsatisfiable") {
      discard(stored)
      // RFC 9110 §15.5.17: a 416 says the representation's length in Content-Range.
      const headers = new Headers({ "content-type": "text/plain; charset=utf-8", "content-range": `bytes */${stored.size}` })
      for (const name of ["via", "age", "x-cache", "cache-status"]) headers.set(name, hitHeaders.get(name) as string)
      const text = `the range is outside the ${stored.size} bytes of this response\n`
      return { response: new Response(text, { status: 416, headers }), bytes: text.length }
    }
    const body = sliceOf(stored, part)
    if (!body) return undefined
    // RFC 9110 §15.3.7: a single-part 206 carries the 200's fields, its own Content-Range and length.
    const headers = new Headers(hitHeaders)
    headers.set("content-range", contentRange(part, stored.size))
    headers.set("content-length", String(part.end - part.start))
    return { response: new Response(body, { status: 206, headers }), bytes: part.end - part.start }
  }

  /**
   * A hit's headers: the stored fields plus Age (RFC 9111 §5.1), X-Cache and Cache-Status
   * (RFC 9211), and the whole answer's outcome. Both numbers change once a second, so most hits
   * reuse the last ones built, and allocate nothing for them.
   */
  private hitHeaders({ meta, size, body }: Stored, now: number, outcome: Outcome): HitHeaders {
    const age = Math.floor(currentAgeMs(meta, now) / 1000)
    const ttl = Math.round(ttlMs(meta, now) / 1000)
    // A file Bun opens as it sends (Bun.file names its path): the runtime needs to know which.
    const file = body instanceof Blob ? fileName(body) : undefined
    const last = this.lastHitHeaders.get(meta)
    const bytes = body instanceof Uint8Array ? body : undefined
    if (last && last.age === age && last.ttl === ttl && last.outcome === outcome && last.whole.file === file) {
      // Bytes read anew for each hit (a view of a Redis reply) change the outcome, never the headers.
      if (last.wholeWithBytes.bytes !== bytes) last.wholeWithBytes = bytes === undefined ? last.whole : { ...last.whole, bytes }
      return last
    }
    const headers = new Headers(meta.headers)
    headers.append("via", VIA)
    headers.set("age", String(age))
    headers.set("x-cache", xCache(outcome))
    headers.set("cache-status", cacheStatus(outcome, ttl))
    // The stored body is whole: its length is known even when the origin sent it chunked (and
    // the access log and metrics count a hit's bytes by it, never touching the body). RFC 9110
    // §8.6: never on a status that has no content.
    const hasContent = !NULL_BODY_STATUS.has(meta.status)
    if (hasContent) headers.set("content-length", String(size))
    const wholeBytes = hasContent ? size : 0
    const whole = file === undefined ? { ...outcome, wholeBytes } : { ...outcome, wholeBytes, file }
    const wholeWithBytes = bytes === undefined ? whole : { ...whole, bytes }
    const built = { age, ttl, outcome, headers, whole, wholeWithBytes }
    this.lastHitHeaders.set(meta, built)
    return built
  }
}

// Hit counts are kept for this many URLs at most; the ones counted first are forgotten first.
const MAX_COUNTED_KEYS = 100_000

/** Hits per key since this process started, for the inspector. Bounded. */
class HitCounts {
  private readonly counts = new Map<string, number>()

  count(key: string): void {
    const hits = this.counts.get(key)
    if (hits !== undefined) {
      this.counts.set(key, hits + 1)
      return
    }
    this.counts.set(key, 1)
    if (this.counts.size > MAX_COUNTED_KEYS) this.counts.delete(this.counts.keys().next().value as string)
  }

  of(key: string): number {
    return this.counts.get(key) ?? 0
  }

  forget(key: string): void {
    this.counts.delete(key)
  }
}

/** The key prefix of every URL that starts with `urlPrefix` (only GETs are stored). */
function keyPrefix(urlPrefix: string): string {
  return `GET ${urlPrefix}`
}

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
 * The origin's response, when its status is one a response can carry. RFC 9110 §15: a status
 * outside 100–599 is invalid (a 1xx is never final); `new Response` refuses it, so no hit could
 * replay it and Node cannot even relay it: under both runtimes it is a 502, every time.
 */
function finalResponse(response: Response): Response {
  if (isFinalStatus(response.status)) return response
  response.body?.cancel().catch(() => undefined) // a body no one will read: nothing to lose
  throw new OriginError(502, `the origin answered with status ${response.status}, which is not a final HTTP status (200-599)`)
}

function notStored(response: Response): Exchange {
  return { response, stored: Promise.resolve(false) }
}

function responseOf(exchange: Exchange): Response {
  return exchange.response
}

/** Bytes [start, end) of a stored body, read without the rest; undefined when the store gave no way to. */
function sliceOf(stored: Stored, { start, end }: ByteRange): Stored["body"] | undefined {
  const { body } = stored
  if (body instanceof Uint8Array) return body.subarray(start, end)
  if (body instanceof Blob) return body.slice(start, end)
  return stored.slice?.(start, end)
}

// A stored body whose Content-Length says at most this much is read before it is sent: as
// much as the memory tier holds of one body anyway.
const READ_AHEAD_BYTES = 1 << 20

/**
 * A body read to its end before the response is sent, so that it goes out as bytes with its exact
 * Content-Length on every runtime: Bun.serve frames any stream it cannot read to the end at once
 * as chunked, whatever Content-Length says (oven-sh/bun#10507). A body that fails is sent as
 * what was read, then the failure: the client sees it cut short, as it would have streaming.
 */
async function readAhead(body: ReadableStream<Uint8Array>): Promise<Uint8Array | ReadableStream<Uint8Array>> {
  const reader = body.getReader()
  const chunks: Uint8Array[] = []
  let size = 0
  for (;;) {
    const chunk = await reader.read().catch(() => undefined) // read again below, where the client learns of it
    if (!chunk) break
    if (chunk.done) return concat(chunks, size)
    chunks.push(chunk.value)
    size += chunk.value.byteLength
  }
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const chunk = chunks.shift()
      if (chunk) return controller.enqueue(chunk)
      await reader.read() // fails again: the stream, and the response, end in that failure
    },
  })
}

/** A stored body that will not be sent: a stream (a file under Node) is closed, not left open. */
function discard(stored: Stored | undefined): void {
  if (stored?.body instanceof ReadableStream) stored.body.cancel().catch(() => undefined) // nothing was read: nothing to lose
}

/** The path of a body Bun reads from a file (Bun.file), which names it. */
function fileName(body: Blob): string | undefined {
  const { name } = body as Blob & { name?: unknown }
  return typeof name === "string" ? name : undefined
}

/** The origin's response for the client, hop-by-hop (and tag) fields dropped, with our two status fields. */
function relay(response: Response, outcome: Outcome, keepTagHeaders: boolean): Response {
  // Edited in place: a new Response around the origin's body would cost Bun its native
  // pass-through of the body (about an eighth of the no-store MISS throughput).
  const { headers } = response
  const isHopByHop = hopByHopFilter(headers)
  const dropped = [...headers.keys()].filter((name) => isHopByHop(name) || (!keepTagHeaders && isTagHeader(name)))
  for (const name of dropped) headers.delete(name)
  headers.append("via", VIA)
  headers.set("x-cache", xCache(outcome))
  headers.set("cache-status", cacheStatus(outcome))
  return withOutcome(response, outcome)
}

/** --offline and nothing stored: the method and URL named, so a CI log says what to record. */
function offlineMiss(method: string, key: string): Response {
  return answer(504, `not in the cache (offline mode): ${method} ${key.slice("GET ".length)}\n`, OFFLINE_MISS)
}

/** A short answer of our own (errors, only-if-cached, offline), as bytes: sent whole, with its length. */
export function answer(status: number, text: string, outcome: Outcome): Response {
  const body = new TextEncoder().encode(text)
  const headers = {
    "content-type": "text/plain; charset=utf-8",
    via: VIA,
    "x-cache": xCache(outcome),
    "cache-status": cacheStatus(outcome),
  }
  return withOutcome(new Response(body, { status, headers }), { ...outcome, wholeBytes: body.byteLength })
}
