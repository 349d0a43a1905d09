/**
 * The store contract: where entries live, as the cache sees it. A small core every store has
 * (`Store`), and capabilities a store has whole or not at all, each its own interface; the cache
 * asks with a guard (`isListing(store)`), as undici checks its CacheStore by its members, instead
 * of asking every store for stubs. Stores know nothing of HTTP rules: they match Vary selections
 * and honour `deleteAt`, both given to them.
 *
 * Who has what: memory (Listing, Drops); files (Listing, Drops, ReadNotices, Lifecycle); Redis
 * (Listing, Claims, Drops, Lifecycle); memory in front of another store (what that one has, but
 * ReadNotices: nothing goes in front of it). `store.test.ts` holds each to exactly its list.
 */

/**
 * What is kept with every stored response: plain data, serialisable as JSON. The policy fills it;
 * a store reads only `vary` (to select) and `deleteAt` (to expire).
 */
export interface EntryMeta {
  status: number
  /** Header pairs as the origin sent them, hop-by-hop fields removed: two Set-Cookie stay two. */
  headers: [string, string][]
  /** Each request header named by Vary → its normalised value; null = absent. */
  vary: Record<string, string | null>
  /** When the response arrived (RFC 9111 §4.2.3 response_time), ms since epoch. */
  responseTime: number
  /** ms since epoch after which the entry is of no use: stores never return it, and may drop it. */
  deleteAt: number
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
  /** Purge tags, from Surrogate-Key and Cache-Tag. Absent in entries stored before tags were kept. */
  tags?: string[]
  /** Set by a soft purge: no client's max-stale takes it before it is validated. Absent otherwise. */
  softPurged?: true
}

/** A stored response: its meta, its body's length and its body. */
export interface Stored {
  meta: EntryMeta
  size: number
  /** Bytes from memory, a file from disk (`Bun.file`, so hits can go out by sendfile), or a stream. */
  body: Uint8Array | Blob | ReadableStream<Uint8Array>
  /**
   * Bytes `start` up to `end` (exclusive) of the body, read without the rest, in place of `body`
   * (which is then neither read nor cancelled). Bytes and Blobs slice themselves: a store that
   * hands out a stream gives this, or Range requests for it get the whole body (RFC 9110 §14.2).
   */
  slice?: (start: number, end: number) => ReadableStream<Uint8Array>
}

/** One variant in a listing: what the inspector and purge-by-prefix see. */
export interface ListedEntry {
  key: string
  meta: EntryMeta
  size: number
  /** The tiers holding it, front first ("memory", "file", "redis"). */
  tiers: string[]
}

export interface ListOptions {
  /** Only keys that start with this. */
  prefix?: string
  /** Where the previous page ended (its `cursor`). */
  cursor?: string
  /** At most this many keys (each with all its variants). @default 100 */
  limit?: number
}

export interface Page {
  entries: ListedEntry[]
  /** Pass it back for the next page; absent on the last page. */
  cursor?: string
}

/** Entries and bytes held by one tier of a store. */
export interface TierStats {
  tier: string
  entries: number
  bytes: number
  /** Entries this process removed to stay within the tier's bound; absent where the store evicts by itself (Redis). */
  evictions?: number
  /** The tier's own byte bound; none where the server keeps its own (Redis's maxmemory). */
  maxBytes?: number
}

/** A store's answer that may come at once (memory) or later (disk, network). */
export type MaybePromise<T> = T | Promise<T>

/**
 * Where entries live. Several variants per key, told apart by their Vary selection (`meta.vary`):
 * a `put` replaces the variant with the same selection and leaves the others.
 */
export interface Store {
  /** The most recent variant whose Vary selection matches the request; never one past `deleteAt`. */
  get(key: string, request: Headers): MaybePromise<Stored | undefined>
  /** Whether any variant is stored under the key (RFC 9211 tells uri-miss from vary-miss by it). */
  has(key: string): MaybePromise<boolean>
  /**
   * Stores a variant once its body has streamed in whole: true when kept, false when it cannot fit
   * the store's bound. Rejects, leaving nothing, if the body fails.
   */
  put(key: string, meta: EntryMeta, body: ReadableStream<Uint8Array>): Promise<boolean>
  /** Replaces the meta of the stored variant with the same Vary selection, keeping its body (a 304). False when it is gone. */
  update(key: string, meta: EntryMeta): Promise<boolean>
  /** Removes every variant of the key. */
  delete(key: string): Promise<void>
  /** Removes everything. */
  clear(): Promise<void>
}

/** A store that can say what it holds: the admin API's listing, purges by prefix and tag, /metrics. */
export interface Listing {
  /** Entries' metadata, page by page, in an order that stays put between pages. */
  list(options?: ListOptions): Promise<Page>
  /** Every live variant of one key, without its body (the inspector, purges). */
  variants(key: string): Promise<ListedEntry[]>
  /** The keys with a live variant tagged `tag`, found through an index kept with the entries. */
  tagged(tag: string): Promise<string[]>
  stats(): Promise<TierStats[]>
}

/** Ends a claim. */
export type Release = () => void

/**
 * A store shared between processes that coalesce their origin requests through it. A store of
 * one process has none of this: the cache coalesces its own requests.
 */
export interface Claims {
  /**
   * Claims fetching `key` from the origin for every process on this store: a function that ends
   * the claim, or undefined when another process holds it (then `landed` waits for it).
   */
  claim(key: string, ttlMs: number): Promise<Release | undefined>
  /** Resolves when the key's entry changes or the claim on it ends, or after `ms`. */
  landed(key: string, ms: number): Promise<void>
  /**
   * Tells every process on the store (this one too, through `onDrop`) to forget what a purge by
   * prefix or tag names: their memory tiers may hold entries the store itself let go (evicted).
   */
  announce(match: KeyMatch): Promise<void>
}

/** What a purge by prefix or tag names: the keys starting with `prefix`, or tagged `tag`. */
export type KeyMatch = { prefix: string } | { tag: string }

/** A store whose entries may go without a call to it (eviction, another process): a tier in front must hear of it. */
export interface Drops {
  /** Calls `listener` when entries go without a call to this store: a key, null for all, or the keys a purge names. */
  onDrop(listener: (dropped: string | null | KeyMatch) => void): void
}

/** A store that keeps its own least-recently-used order, and so must hear of reads a tier in front served. */
export interface ReadNotices {
  /** A tier in front of this store served this entry: count it as read, for the LRU order. */
  used(key: string, meta: EntryMeta): void
}

/** A store with something to wait for at start, to probe, and to let go of at the end (files, a connection). */
export interface Lifecycle {
  /** Resolves once the store answers from everything it holds (the disk scan; a connection). */
  ready(): Promise<void>
  /** Resolves when the store answers now; rejects with the reason when it cannot (for readiness probes). */
  ping(): Promise<void>
  close(): Promise<void>
}

// Guards: a capability is had whole or not at all, so one member tells.
export const isListing = <S extends Store>(store: S): store is S & Listing => "list" in store
export const isShared = <S extends Store>(store: S): store is S & Claims => "claim" in store
export const hasDrops = <S extends Store>(store: S): store is S & Drops => "onDrop" in store
export const hearsReads = <S extends Store>(store: S): store is S & ReadNotices => "used" in store
export const hasLifecycle = <S extends Store>(store: S): store is S & Lifecycle => "ready" in store

/** What a caught failure that the proxy carries on after is reported as. */
export type WarnKind =
  | "store-read"
  | "store-write"
  | "store-delete"
  | "broken-entry"
  | "body-length"
  | "origin-body"
  | "tags"
  | "refresh"
  | "store-connection"
  /** Redis lost or back: each change reported once by the store, never held back by a rate limit. */
  | "store-state"
  | "proxy"
  | "admin"

/** Reports a failure the proxy carries on after: every `catch` that does not rethrow calls it. */
export type Warn = (kind: WarnKind, detail: string) => void
