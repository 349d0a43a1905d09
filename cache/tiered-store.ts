/**
 * The tiered store: the memory store in front of another store (the file store, later Redis).
 * Reads try memory, then the store behind, and promote small bodies; writes, deletes and clears
 * go to both. Memory holds nothing the store behind has not got: whatever that store drops on
 * its own (eviction, another process's clear) is forgotten in memory too.
 */
import { concat } from "./bytes.ts"
import type { MemoryStore } from "./memory-store.ts"
import {
  type Claims,
  type Drops,
  type EntryMeta,
  hearsReads,
  isShared,
  type KeyMatch,
  type Lifecycle,
  type ListedEntry,
  type Listing,
  type ListOptions,
  type MaybePromise,
  type Page,
  type ReadNotices,
  type Release,
  type Store,
  type Stored,
  type TierStats,
} from "./store.ts"

/** Bodies up to this size are held in memory; larger ones are served by the store behind (a file: sendfile). */
export const MEMORY_BODY_LIMIT_BYTES = 1 << 20

export interface TieredStoreOptions {
  /** Bodies larger than this stay behind, never in memory. */
  memoryBodyLimit: number
}

/**
 * What can stand behind memory: a store that tells of what it drops (or memory would answer with
 * entries gone behind), and lists, and starts and stops. It may also share claims and hear of reads.
 */
export type Behind = Store & Listing & Drops & Lifecycle

/** Memory in front of `back`; it shares claims between processes when `back` does. */
export function tieredStore(front: MemoryStore, back: Behind, options: TieredStoreOptions): TieredStore {
  return isShared(back) ? new SharedTieredStore(front, back, options) : new TieredStore(front, back, options)
}

export class TieredStore implements Store, Listing, Drops, Lifecycle {
  /** The store behind, when it keeps an LRU order of its own that memory's hits must feed. */
  private readonly readNotices: ReadNotices | undefined

  constructor(
    protected readonly front: MemoryStore,
    protected readonly back: Behind,
    private readonly options: TieredStoreOptions,
  ) {
    back.onDrop((dropped) => {
      if (dropped === null) front.forgetAll()
      else if (typeof dropped === "string") front.forget(dropped)
      else front.forgetMatching(dropped)
    })
    this.readNotices = hearsReads(back) ? back : undefined
  }

  get(key: string, request: Headers): MaybePromise<Stored | undefined> {
    const hit = this.front.get(key, request)
    if (hit) {
      this.readNotices?.used(key, hit.meta)
      return hit
    }
    const found = this.back.get(key, request)
    return found instanceof Promise ? found.then((stored) => this.promote(key, stored)) : this.promote(key, found)
  }

  /** Keeps a small body found behind in memory, and answers with the bytes (no extra step when it has them already). */
  private promote(key: string, stored: Stored | undefined): MaybePromise<Stored | undefined> {
    if (!stored || stored.size > this.options.memoryBodyLimit) return stored
    const { meta, size } = stored
    if (stored.body instanceof Uint8Array) {
      // Its own copy: a body may be a view of a larger buffer (a reply from Redis) that memory must not hold on to.
      this.front.keep(key, meta, Uint8Array.prototype.slice.call(stored.body))
      return stored
    }
    return new Response(stored.body).arrayBuffer().then((bytes) => {
      const body = new Uint8Array(bytes)
      this.front.keep(key, meta, body)
      return { meta, size, body }
    })
  }

  has(key: string): MaybePromise<boolean> {
    return this.front.has(key) || this.back.has(key)
  }

  /** Writes behind while collecting a small body's bytes; memory takes them once the write is whole. */
  async put(key: string, meta: EntryMeta, body: ReadableStream<Uint8Array>): Promise<boolean> {
    const chunks: Uint8Array[] = []
    let size = 0
    const collect = new TransformStream<Uint8Array, Uint8Array>({
      transform: (chunk, controller) => {
        size += chunk.byteLength
        if (size <= this.options.memoryBodyLimit) chunks.push(chunk)
        controller.enqueue(chunk)
      },
    })
    const kept = await this.back.put(key, meta, body.pipeThrough(collect))
    if (kept && size <= this.options.memoryBodyLimit) this.front.keep(key, meta, concat(chunks, size))
    // Memory must not answer with an older variant of the key where this newer one would match.
    else this.front.forget(key)
    return kept
  }

  async update(key: string, meta: EntryMeta): Promise<boolean> {
    const updated = await this.back.update(key, meta)
    if (updated) await this.front.update(key, meta)
    else this.front.forgetVariant(key, meta.vary)
    return updated
  }

  async delete(key: string): Promise<void> {
    this.front.forget(key)
    await this.back.delete(key)
  }

  async clear(): Promise<void> {
    this.front.forgetAll()
    await this.back.clear()
  }

  /** Memory holds nothing the store behind has not got: its listing is the whole. */
  async list(options?: ListOptions): Promise<Page> {
    const page = await this.back.list(options)
    return { ...page, entries: page.entries.map((entry) => this.withFront(entry)) }
  }

  async variants(key: string): Promise<ListedEntry[]> {
    return (await this.back.variants(key)).map((entry) => this.withFront(entry))
  }

  tagged(tag: string): Promise<string[]> {
    return this.back.tagged(tag)
  }

  /** A variant listed behind, with memory among its tiers when memory holds it too. */
  private withFront(entry: ListedEntry): ListedEntry {
    return this.front.holds(entry.key, entry.meta.vary) ? { ...entry, tiers: ["memory", ...entry.tiers] } : entry
  }

  async stats(): Promise<TierStats[]> {
    return [...(await this.front.stats()), ...(await this.back.stats())]
  }

  onDrop(listener: (dropped: string | null | KeyMatch) => void): void {
    this.back.onDrop(listener)
  }

  ready(): Promise<void> {
    return this.back.ready()
  }

  ping(): Promise<void> {
    return this.back.ping()
  }

  close(): Promise<void> {
    return this.back.close()
  }
}

/** Memory in front of a store shared between processes: their claims are the store's. */
class SharedTieredStore extends TieredStore implements Claims {
  constructor(
    front: MemoryStore,
    protected override readonly back: Behind & Claims,
    options: TieredStoreOptions,
  ) {
    super(front, back, options)
  }

  claim(key: string, ttlMs: number): Promise<Release | undefined> {
    return this.back.claim(key, ttlMs)
  }

  landed(key: string, ms: number): Promise<void> {
    return this.back.landed(key, ms)
  }

  /** This memory forgets at once; the others when the store's message reaches them. */
  announce(match: KeyMatch): Promise<void> {
    this.front.forgetMatching(match)
    return this.back.announce(match)
  }
}
