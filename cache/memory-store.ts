/**
 * The memory store: every key's variants with their bodies as bytes, least recently used first,
 * bounded in bytes. In front of the file store (or Redis) it is the per-process L1; a hit from it
 * is answered synchronously, with no promise for the server to wait on.
 */
import { concat } from "./bytes.ts"
import { selectVariant } from "./policy.ts"
import type { Drops, EntryMeta, KeyMatch, ListedEntry, Listing, ListOptions, Page, Store, Stored, TierStats } from "./store.ts"
import { DEFAULT_MAX_VARIANTS, selectionsOf, shapesOf } from "./variants.ts"

// Rough bytes a key's map entry and a variant's meta take in memory, counted against the bound
// so that many small entries cannot outgrow it.
const KEY_OVERHEAD_BYTES = 128
const META_OVERHEAD_BYTES = 256
const DEFAULT_PAGE_KEYS = 100

interface KeyEntry {
  /** Selection (its JSON) → the variant, least recently used first. */
  variants: Map<string, Stored>
  /** The Vary name lists of the variants: a request's selection under each names the one to read. */
  shapes: string[][]
  bytes: number
}

export interface MemoryStoreOptions {
  /** Bytes the store may hold, bodies and metas together. */
  maxBytes: number
  /** Variants kept per key; the least recently used goes beyond it. @default 64 */
  maxVariants?: number
}

export class MemoryStore implements Store, Listing, Drops {
  readonly maxBytes: number
  private readonly maxVariants: number
  private readonly entries = new Map<string, KeyEntry>()
  private totalBytes = 0
  private evictions = 0
  /** The key last moved to the most-recently-used end: a hot key's hits skip the reordering. */
  private newest: string | undefined
  private readonly dropListeners: ((key: string | null) => void)[] = []
  /** tag → the keys with a variant carrying it. */
  private readonly byTag = new Map<string, Set<string>>()

  constructor({ maxBytes, maxVariants = DEFAULT_MAX_VARIANTS }: MemoryStoreOptions) {
    this.maxBytes = maxBytes
    this.maxVariants = maxVariants
  }

  get(key: string, request: Headers): Stored | undefined {
    const now = Date.now()
    for (;;) {
      const entry = this.entries.get(key)
      const stored = entry && this.select(entry, request)
      if (!entry || !stored) return undefined
      if (stored.meta.deleteAt > now) {
        this.moveToNewest(key, entry)
        return stored
      }
      this.forgetVariant(key, stored.meta.vary) // expired: an older variant may still match
    }
  }

  /** The variant the request selects, looked up by its selection, and moved to the key's most recently used end. */
  private select(entry: KeyEntry, request: Headers): Stored | undefined {
    const { variants } = entry
    // One variant under no Vary: nothing to select (most keys).
    if (variants.size === 1 && entry.shapes[0]?.length === 0) return variants.values().next().value
    const found: Stored[] = []
    for (const selection of selectionsOf(entry.shapes, request)) {
      const variant = variants.get(JSON.stringify(selection))
      if (variant) found.push(variant)
    }
    const stored = selectVariant(found, request)
    if (stored) {
      const id = JSON.stringify(stored.meta.vary)
      variants.delete(id)
      variants.set(id, stored)
    }
    return stored
  }

  has(key: string): boolean {
    const now = Date.now()
    const entry = this.entries.get(key)
    if (!entry) return false
    for (const { meta } of entry.variants.values()) if (meta.deleteAt > now) return true
    return false
  }

  /** Reads the body whole; one larger than the whole store is not kept. */
  async put(key: string, meta: EntryMeta, body: ReadableStream<Uint8Array>): Promise<boolean> {
    const chunks: Uint8Array[] = []
    let size = 0
    for await (const chunk of body) {
      size += chunk.byteLength
      if (size > this.maxBytes) return false // leaving the loop cancels the stream
      chunks.push(chunk)
    }
    return this.keep(key, meta, concat(chunks, size))
  }

  /** Holds a variant whose bytes are at hand, in place of the one with the same Vary selection; false when it cannot fit. */
  keep(key: string, meta: EntryMeta, body: Uint8Array): boolean {
    const id = JSON.stringify(meta.vary)
    const others = [...(this.entries.get(key)?.variants ?? [])].filter(([other]) => other !== id)
    // Past --max-variants the least recently used go: a client sending new values of a header
    // the origin varies on must not grow one URL without bound.
    const kept = others.slice(Math.max(0, others.length - (this.maxVariants - 1)))
    return this.set(key, new Map([...kept, [id, { meta, size: body.byteLength, body }]]))
  }

  update(key: string, meta: EntryMeta): Promise<boolean> {
    const variants = this.entries.get(key)?.variants
    const id = JSON.stringify(meta.vary)
    const current = variants?.get(id)
    if (variants && current) this.set(key, new Map([...variants].map(([other, v]) => [other, other === id ? { ...current, meta } : v])))
    return Promise.resolve(current !== undefined)
  }

  /** Forgets the variant stored for this Vary selection. */
  forgetVariant(key: string, vary: EntryMeta["vary"]): void {
    const variants = this.entries.get(key)?.variants
    const id = JSON.stringify(vary)
    if (!variants?.has(id)) return
    const others = new Map([...variants].filter(([other]) => other !== id))
    if (others.size) this.set(key, others)
    else this.forget(key)
  }

  delete(key: string): Promise<void> {
    this.forget(key)
    return Promise.resolve()
  }

  /** Forgets a key at once (the tier behind dropped it). */
  forget(key: string): void {
    const entry = this.entries.get(key)
    if (!entry) return
    this.entries.delete(key)
    this.totalBytes -= entry.bytes
    for (const tag of tagsOf(entry.variants.values())) {
      const keys = this.byTag.get(tag)
      keys?.delete(key)
      if (keys?.size === 0) this.byTag.delete(tag)
    }
  }

  /** Forgets the keys a purge by prefix or tag names. */
  forgetMatching(match: KeyMatch): void {
    const keys =
      "tag" in match ? [...(this.byTag.get(match.tag) ?? [])] : [...this.entries.keys()].filter((key) => key.startsWith(match.prefix))
    for (const key of keys) this.forget(key)
  }

  clear(): Promise<void> {
    this.forgetAll()
    return Promise.resolve()
  }

  forgetAll(): void {
    this.entries.clear()
    this.byTag.clear()
    this.totalBytes = 0
  }

  list({ prefix = "", cursor, limit = DEFAULT_PAGE_KEYS }: ListOptions = {}): Promise<Page> {
    const keys = [...this.entries.keys()].filter((key) => key.startsWith(prefix) && (cursor === undefined || key > cursor)).sort()
    const page = keys.slice(0, limit)
    const entries = page.flatMap((key) => this.listed(key))
    return Promise.resolve({ entries, cursor: keys.length > limit ? page.at(-1) : undefined })
  }

  variants(key: string): Promise<ListedEntry[]> {
    const now = Date.now()
    return Promise.resolve(this.listed(key).filter(({ meta }) => meta.deleteAt > now))
  }

  private listed(key: string): ListedEntry[] {
    return [...(this.entries.get(key)?.variants.values() ?? [])].map(({ meta, size }) => ({ key, meta, size, tiers: ["memory"] }))
  }

  tagged(tag: string): Promise<string[]> {
    const now = Date.now()
    const keys = [...(this.byTag.get(tag) ?? [])].filter((key) =>
      [...(this.entries.get(key)?.variants.values() ?? [])].some(({ meta }) => meta.deleteAt > now && meta.tags?.includes(tag)),
    )
    return Promise.resolve(keys)
  }

  /** Whether this variant of the key is held here: the tiered store's listing says so. */
  holds(key: string, vary: EntryMeta["vary"]): boolean {
    return this.entries.get(key)?.variants.has(JSON.stringify(vary)) ?? false
  }

  stats(): Promise<TierStats[]> {
    let entries = 0
    for (const entry of this.entries.values()) entries += entry.variants.size
    return Promise.resolve([{ tier: "memory", entries, bytes: this.totalBytes, evictions: this.evictions, maxBytes: this.maxBytes }])
  }

  onDrop(listener: (key: string | null) => void): void {
    this.dropListeners.push(listener)
  }

  private moveToNewest(key: string, entry: KeyEntry): void {
    if (key === this.newest) return
    this.entries.delete(key)
    this.entries.set(key, entry)
    this.newest = key
  }

  private set(key: string, variants: Map<string, Stored>): boolean {
    this.forget(key)
    let bytes = KEY_OVERHEAD_BYTES + key.length
    for (const variant of variants.values()) bytes += variantBytes(variant)
    if (bytes > this.maxBytes) return false
    this.entries.set(key, { variants, shapes: shapesOf([...variants.values()].map(({ meta }) => meta.vary)), bytes })
    this.newest = key
    this.totalBytes += bytes
    for (const tag of tagsOf(variants.values())) this.byTag.set(tag, (this.byTag.get(tag) ?? new Set()).add(key))
    for (const oldest of this.entries.keys()) {
      if (this.totalBytes <= this.maxBytes) break
      this.forget(oldest)
      this.evictions++
      for (const listener of this.dropListeners) listener(oldest)
    }
    return true
  }
}

function tagsOf(variants: Iterable<Stored>): Set<string> {
  const tags = new Set<string>()
  for (const { meta } of variants) for (const tag of meta.tags ?? []) tags.add(tag)
  return tags
}

function variantBytes({ meta, size }: Stored): number {
  let bytes = META_OVERHEAD_BYTES + size
  for (const [name, value] of meta.headers) bytes += name.length + value.length
  for (const tag of meta.tags ?? []) bytes += tag.length
  return bytes
}
