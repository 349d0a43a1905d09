/**
 * The Redis store: one cache shared by every proxy on the same Redis (or Valkey) server or Redis
 * Cluster. Loaded only when `--store` names Redis.
 *
 * Layout, under `<prefix>:<generation>` (`clear` moves to a new, random generation; old keys expire):
 * - `…:{<h>}:e` a hash: variant id → the variant's record (meta, size, body id, chunk count) as
 *   JSON, followed by its body when that is under one chunk (see `encode`);
 * - `…:{<h>}:c:<body id>:<n>` the body in chunks of 256 KiB;
 * - `…:{<h>}:vary` the Vary name lists of the variants (JSON): a lookup reads the one variant its
 *   selection under each names (`variants.ts`), never the whole hash;
 * - `…:{<h>}:used` the variant ids by last use: past `maxVariants` the least recently used go;
 * - `…:{<h>}:lock` the claim on fetching the key from the origin (cross-process coalescing).
 * `<h>` hashes the cache key: the braces make every key of one entry hash to one Cluster slot.
 * A sorted set `<prefix>:<generation>:{index}:keys` lists keys in order, for `list`, and
 * `…:{index}:expiry` the same keys by delete time, so each write drops the keys whose time has
 * come, and `…:{index}:sizes`/`:totals` each key's bytes and variants and their totals, for
 * `stats`; a set per purge tag, `<prefix>:<generation>:tag:{<tag hash>}`, names the keys tagged with
 * it. Every key carries the policy's delete time as its expiry (a chunk of a write under way a short
 * one, renewed as it goes: see IN_PROGRESS_CHUNK_MS), so Redis drops dead entries itself
 * and `maxmemory-policy allkeys-lru` is safe: a chunk found missing makes the read a miss.
 * Chunks are written as the body streams in and the record last: an entry is visible when whole.
 * Changes are published on `<prefix>:events`; every proxy drops what its memory tier holds of a
 * changed key, and wakes requests waiting for it.
 */
import { randomBytes } from "node:crypto"
import type { Cluster, Redis } from "ioredis"
import { selectVariant } from "./policy.ts"
import {
  bounded,
  connect,
  inOurWords,
  nodesConnected,
  type RedisTarget,
  refuseClusterNode,
  refusePlainServer,
  Stalls,
  skipped,
} from "./redis-connection.ts"
import { type Event, parseEvent } from "./redis-events.ts"
import { CHUNK_BYTES, encode, listed, parseShapes, RecordDecoder, type VariantRecord, variantId } from "./redis-format.ts"
import { KEY_HASHES_KEPT, RedisKeys } from "./redis-keys.ts"
import {
  INDEX_PRUNE_BATCH,
  INDEX_SCRIPT,
  RELEASE_SCRIPT,
  RENEW_SCRIPT,
  RESIZE_SCRIPT,
  TAG_SCRIPT,
  UNINDEX_SCRIPT,
} from "./redis-scripts.ts"
import type {
  Claims,
  Drops,
  EntryMeta,
  KeyMatch,
  Lifecycle,
  ListedEntry,
  Listing,
  ListOptions,
  Page,
  Release,
  Store,
  Stored,
  TierStats,
  Warn,
} from "./store.ts"
import { addTracingChannelHasSubscribers } from "./tracing-channel.ts"
import { DEFAULT_MAX_VARIANTS, selectionsOf, shapesOf } from "./variants.ts"

addTracingChannelHasSubscribers()

/** Bodies up to this size are read whole before `get` answers; larger ones stream chunk by chunk. */
const WHOLE_READ_BYTES = 1 << 20
/** A replaced body's chunks stay this long for readers still streaming it. */
const REPLACED_BODY_GRACE_MS = 60_000
/** How often a request waiting on another process's claim looks whether it ended. */
const CLAIM_POLL_MS = 50
/**
 * A claim lapses this long after its holder last renewed it: a proxy that died mid-fetch holds
 * the URL for the others about this long, not for the whole --timeout.
 */
const CLAIM_LEASE_MS = 1000
/** How often a live holder renews its claim: a few times per lease, so one late renewal does not lose it. */
const CLAIM_RENEW_MS = 300
/**
 * Chunks of a body still being written expire this long after they were last renewed (as the
 * write goes on); the commit gives them the entry's delete time. A write cut by a crash leaves
 * chunks that go within about this long, not at the entry's delete time days later.
 */
const IN_PROGRESS_CHUNK_MS = 60_000
const GENERATION_POLL_MS = 5000
const DEFAULT_PAGE_KEYS = 100

export interface RedisStoreOptions {
  target: RedisTarget
  /** Namespaces every key, so several caches can share one Redis. */
  prefix: string
  warn: Warn
  /** Variants kept per key; the least recently used goes beyond it. @default 64 */
  maxVariants?: number
}

// Not ReadNotices: Redis keeps its own LRU order; a hit in the memory tier in front does not touch it.
export class RedisStore implements Store, Listing, Claims, Drops, Lifecycle {
  private readonly redis: Redis | Cluster
  private readonly subscriber: Redis | Cluster
  private readonly prefix: string
  private readonly warn: Warn
  private readonly maxVariants: number
  /** By cache key: its Vary name lists as last read, with the JSON they were parsed from. */
  private readonly knownShapes = new Map<string, { json: string; shapes: string[][] }>()
  private generation: string | undefined
  /** Resolves once the generation has been read: the store can answer. */
  private readonly connected: Promise<void>
  private onGeneration: () => void = () => {}
  private readonly dropListeners: ((dropped: string | null | KeyMatch) => void)[] = []
  /** Requests waiting for another process's answer, by key. */
  private readonly waiting = new Map<string, Set<() => void>>()
  private readonly generationTimer: ReturnType<typeof setInterval>
  /** Bounds a request's wait on Redis (see `bounded`); one server's commands are bounded by ioredis already. */
  private readonly bound: <T>(work: Promise<T>, what: string, key: string) => Promise<T>
  private readonly keys: RedisKeys
  private readonly decoder: RecordDecoder
  /** Which requests skip Redis for now (see `timely`). */
  private readonly stalls: Stalls
  private up = true
  private closing = false
  /** Why this store can never be used as configured (`redis://` naming a Cluster node, `rediss://` a plain-text server). */
  private misuse: Error | undefined
  /** A message on the channel that was not an event was reported (once). */
  private strangeEventSeen = false

  constructor({ target, prefix, warn, maxVariants = DEFAULT_MAX_VARIANTS }: RedisStoreOptions) {
    this.prefix = prefix
    this.warn = warn
    this.keys = new RedisKeys(prefix, () => this.namespace())
    this.stalls = new Stalls(warn)
    this.decoder = new RecordDecoder(warn)
    this.maxVariants = maxVariants
    this.redis = connect(target, { queueWhileAway: false })
    this.bound = "cluster" in target ? bounded : (work) => work
    // Subscribing waits for the connection (and is renewed on every reconnection): nothing else waits on it.
    this.subscriber = connect(target, { queueWhileAway: true })
    const generationKnown = new Promise<void>((resolve) => (this.onGeneration = resolve))
    this.watchConnection(this.redis)
    this.subscriber.on("message", (_channel: string, message: string) => this.onEvent(message))
    const subscribed = this.subscriber.subscribe(this.keys.channel).then(
      () => undefined,
      (error: Error) => this.warn("store-connection", `subscribing: ${inOurWords(error).message}`),
    )
    const answered = Promise.all([generationKnown, subscribed]).then(() => nodesConnected(this.redis))
    const refused = "single" in target ? this.misusesOf(target.single) : []
    this.connected = Promise.race([answered, ...refused])
    this.connected.catch(() => undefined) // also said by ping() and every command: a caller need not wait
    this.subscriber.on("ready", () => void this.readGeneration())
    this.subscriber.on("error", () => undefined) // reported through the main connection's state
    this.generationTimer = setInterval(() => void this.readGeneration(), GENERATION_POLL_MS)
    this.generationTimer.unref?.()
  }

  ready(): Promise<void> {
    return this.connected
  }

  /** Checks that reject when the server cannot be used as the URL says (the store then stays unusable). */
  private misusesOf(url: string): Promise<never>[] {
    const checks = [refuseClusterNode(this.redis, url)]
    if (url.startsWith("rediss:")) checks.push(refusePlainServer(url))
    return checks.map((check) =>
      check.catch((error: Error) => {
        this.misuse = error
        throw error
      }),
    )
  }

  /** Whether Redis answers now, as far as the connection knows (for /metrics). */
  get isConnected(): boolean {
    return this.up
  }

  /** One PING: fails at once while Redis is away (commands are not queued). */
  async ping(): Promise<void> {
    if (this.misuse) throw this.misuse
    if (this.redis.status !== "ready") throw new Error(`Redis is unreachable (the connection is ${this.redis.status})`)
    try {
      this.namespace()
      await this.redis.ping()
    } catch (error) {
      throw new Error(`Redis is unreachable (${inOurWords(error as Error).message})`)
    }
  }

  async close(): Promise<void> {
    this.closing = true
    clearInterval(this.generationTimer)
    for (const connection of [this.redis, this.subscriber]) connection.disconnect()
  }

  // ───────────── reading ─────────────

  get(key: string, request: Headers): Promise<Stored | undefined> {
    return this.timely("reading", key, () => this.lookup(key, request))
  }

  /**
   * A request's work on Redis, bounded: a Redis that lets a command time out (a slow or stuck
   * server) is skipped by every request for STALL_SKIP_MS (reads, claims and writes alike), so a
   * request waits on it once at most, not once per command; the proxy says so once, and once
   * when Redis answers again.
   */
  private timely<T>(what: string, key: string, work: () => Promise<T>): Promise<T> {
    if (this.stalls.skipping(key)) return Promise.reject(skipped(what, key))
    return this.stalls.observed(this.bound(work(), what, key), key)
  }

  /** A hit with a small body costs one round trip once the key's Vary lists are known: HMGET brings the record with its inline body. */
  private async lookup(key: string, request: Headers): Promise<Stored | undefined> {
    const record = selectVariant(await this.selected(key, request), request)
    if (!record) return undefined
    // Without Vary a key has one variant: no order among its variants to keep.
    if (Object.keys(record.meta.vary).length > 0) this.countRead(record)
    const { meta, size } = record
    if (record.inline) {
      if (record.inline.byteLength === size) return { meta, size, body: record.inline }
      return this.dropBroken(record, `its body is ${record.inline.byteLength} bytes, not ${size}`)
    }
    if (size <= WHOLE_READ_BYTES) {
      const body = await this.readWhole(record)
      return body ? { meta, size, body } : undefined
    }
    const chunkKeys = this.keys.chunkKeys(record)
    const present = chunkKeys.length === 0 ? 0 : await this.redis.exists(...chunkKeys)
    if (present !== record.chunks) return this.dropBroken(record, `${record.chunks - present} chunks missing`)
    return {
      meta,
      size,
      body: this.streamChunks(record, chunkKeys, 0, size),
      slice: (start, end) => this.streamChunks(record, chunkKeys, start, end),
    }
  }

  /**
   * The variants the request can select: read by their ids, one per Vary name list of the key,
   * never the whole hash (a client can make --max-variants of them). The lists are read with the
   * variants; only when they changed since this process last read them does a second read follow.
   */
  private async selected(key: string, request: Headers): Promise<VariantRecord[]> {
    const { variants, vary } = this.keys.entryKeys(key)
    const known = this.knownShapes.get(key)
    const ids = known ? selectionsOf(known.shapes, request).map(variantId) : []
    const [json, values] = await Promise.all([
      this.redis.get(vary),
      ids.length ? this.redis.hmgetBuffer(variants, ...ids) : Promise.resolve([]),
    ])
    if (json === null) return []
    if (json === known?.json)
      return this.live(
        key,
        values.filter((value) => value !== null),
      )
    const shapes = parseShapes(json)
    if (!shapes) {
      this.warn("broken-entry", `${key}: ignoring Vary lists that are not in this version's format`)
      return []
    }
    if (this.knownShapes.size >= KEY_HASHES_KEPT) this.knownShapes.clear()
    this.knownShapes.set(key, { json, shapes })
    const fresh = selectionsOf(shapes, request).map(variantId)
    if (fresh.length === 0) return []
    return this.live(
      key,
      (await this.redis.hmgetBuffer(variants, ...fresh)).filter((value) => value !== null),
    )
  }

  /** Counts a hit for the key's LRU order of variants; XX: a set gone (expired, deleted) is not made again. */
  private countRead(record: VariantRecord): void {
    this.redis
      .zadd(this.keys.entryKeys(record.key).used, "XX", Date.now(), variantId(record.meta.vary))
      .catch((error: Error) => this.warn("store-write", `recording a read of ${record.key}: ${inOurWords(error).message}`))
  }

  /** Whether the key's hash is there: one EXISTS, not its variants (a miss asks, and a key may hold --max-variants). */
  has(key: string): Promise<boolean> {
    // Async: a namespace not known yet (Redis has not answered) rejects, as every read does.
    return this.timely("looking up", key, async () => (await this.redis.exists(this.keys.variantsKey(key))) > 0)
  }

  /** The key's live variants, each with its body when that is kept inline. */
  private async records(key: string): Promise<VariantRecord[]> {
    return this.live(key, await this.redis.hvalsBuffer(this.keys.variantsKey(key)))
  }

  /** The variants in the values of a key's hash that have not reached their delete time. */
  private live(key: string, values: Buffer[]): VariantRecord[] {
    const now = Date.now()
    const records: VariantRecord[] = []
    for (const value of values) {
      const record = this.decoder.decode(key, value)
      if (record && record.meta.deleteAt > now) records.push(record)
    }
    return records
  }

  private async readWhole(record: VariantRecord): Promise<Uint8Array | undefined> {
    const chunks = await this.redis.mgetBuffer(...this.keys.chunkKeys(record))
    if (chunks.some((chunk) => chunk === null)) return this.dropBroken(record, "a chunk is missing")
    return Buffer.concat(chunks as Buffer[])
  }

  /**
   * Bytes `start` up to `end` of a large body, one chunk per pull: memory holds a chunk at a time,
   * and only the chunks the bytes lie in are read (GETRANGE for a chunk read in part). A chunk
   * gone meanwhile cuts the body.
   */
  private streamChunks(record: VariantRecord, keys: string[], start: number, end: number): ReadableStream<Uint8Array> {
    let position = start
    return new ReadableStream<Uint8Array>(
      {
        pull: async (controller) => {
          const n = Math.floor(position / CHUNK_BYTES)
          const chunkKey = keys[n]
          if (position >= end || chunkKey === undefined) return controller.close()
          const from = position - n * CHUNK_BYTES
          const to = Math.min(end - n * CHUNK_BYTES, CHUNK_BYTES)
          const whole = from === 0 && to === CHUNK_BYTES
          const read = whole ? this.redis.getBuffer(chunkKey) : this.redis.getrangeBuffer(chunkKey, from, to - 1)
          const chunk = await read.catch((error: Error) => {
            this.warn("store-read", `${record.key}: ${error.message}`)
            return null
          })
          position = n * CHUNK_BYTES + to
          // GETRANGE answers a missing key with no bytes: a chunk of any other length is not ours.
          if (chunk?.byteLength === to - from) return controller.enqueue(chunk)
          void this.dropBroken(record, "a chunk went missing while it was sent")
          controller.error() // the client sees a cut, never a short body that looks whole
        },
      },
      { highWaterMark: 0 },
    )
  }

  /** An entry with a chunk missing (evicted by Redis, or a writer that died) is removed: a miss. */
  private async dropBroken(record: VariantRecord, why: string): Promise<undefined> {
    this.warn("broken-entry", `discarding ${record.key}: ${why}`)
    await this.removeVariant(record).catch((error: Error) => this.warn("store-delete", `${record.key}: ${error.message}`))
    return undefined
  }

  // ───────────── writing ─────────────

  /** No deadline on the whole (a large body takes its time); each command has its own. */
  async put(key: string, meta: EntryMeta, body: ReadableStream<Uint8Array>): Promise<boolean> {
    if (this.stalls.skipping(key)) {
      await body.cancel()
      throw skipped("storing", key)
    }
    return this.stalls.observed(this.write(key, meta, body), key)
  }

  private async write(key: string, meta: EntryMeta, body: ReadableStream<Uint8Array>): Promise<boolean> {
    const record: VariantRecord = { key, meta, size: 0, body: randomBytes(8).toString("hex"), chunks: 0 }
    const renewal = setInterval(() => void this.renewChunks(record), IN_PROGRESS_CHUNK_MS / 3)
    renewal.unref?.()
    try {
      record.inline = await this.writeChunks(record, body)
      clearInterval(renewal)
      // The client's body ends once the write settles: on a Cluster one stuck node (the index's
      // slot, say) must cost the commit one command's wait, not one per command.
      await this.bound(
        this.keepChunks(record).then(() => this.commit(record)),
        "committing",
        key,
      )
      return true
    } catch (error) {
      if (!body.locked) await body.cancel(error).catch(() => undefined) // the body itself failed: nothing left to cancel
      const written = this.keys.chunkKeys(record)
      if (written.length)
        await this.redis.del(...written).catch((delError: Error) => this.warn("store-write", `${key}: ${inOurWords(delError).message}`))
      throw error
    } finally {
      clearInterval(renewal)
    }
  }

  /** A write still under way keeps the chunks it wrote for another IN_PROGRESS_CHUNK_MS. */
  private async renewChunks(record: VariantRecord): Promise<void> {
    const pipeline = this.redis.pipeline()
    for (const chunkKey of this.keys.chunkKeys(record)) pipeline.pexpire(chunkKey, IN_PROGRESS_CHUNK_MS)
    await pipeline.exec().catch((error: Error) => this.warn("store-write", `${record.key}: ${inOurWords(error).message}`)) // the commit finds what lapsed
  }

  /** At the commit, the chunks live as long as the entry; one gone meanwhile (evicted) fails the write. */
  private async keepChunks(record: VariantRecord): Promise<void> {
    const keys = this.keys.chunkKeys(record)
    if (keys.length === 0) return
    const pipeline = this.redis.pipeline()
    for (const chunkKey of keys) pipeline.pexpireat(chunkKey, record.meta.deleteAt)
    const results = (await pipeline.exec()) ?? []
    const kept = results.filter(([error, done]) => !error && done === 1).length
    if (kept !== keys.length) throw new Error(`${keys.length - kept} of its ${keys.length} chunks went before the entry was complete`)
  }

  /**
   * Writes the body in chunks of CHUNK_BYTES as it streams in, each expiring soon (see IN_PROGRESS_CHUNK_MS); a
   * body smaller than one chunk is handed back, to be kept inline with its record.
   */
  private async writeChunks(record: VariantRecord, body: ReadableStream<Uint8Array>): Promise<Uint8Array | undefined> {
    const { chunk: chunkKey } = this.keys.entryKeys(record.key)
    // One buffer, refilled: Redis has a chunk's bytes once it has answered its SET, so the buffer
    // is free again then, and a large body leaves no trail of chunk-sized garbage behind it.
    const buffer = Buffer.allocUnsafe(CHUNK_BYTES)
    let filled = 0
    const flush = async (bytes: Buffer) => {
      await this.redis.set(chunkKey(record.body, record.chunks), bytes, "PX", IN_PROGRESS_CHUNK_MS)
      record.chunks++
    }
    for await (const chunk of body) {
      record.size += chunk.byteLength
      for (let from = 0; from < chunk.byteLength; ) {
        const taken = Math.min(CHUNK_BYTES - filled, chunk.byteLength - from)
        buffer.set(chunk.subarray(from, from + taken), filled)
        filled += taken
        from += taken
        if (filled === CHUNK_BYTES) {
          await flush(buffer)
          filled = 0
        }
      }
    }
    if (record.chunks === 0) return Buffer.from(buffer.subarray(0, filled)) // a copy of its own, kept inline
    if (filled > 0) await flush(buffer.subarray(0, filled))
    return undefined
  }

  /** Makes the variant visible, last; the hash lives as long as its longest-lived variant. */
  private async commit(record: VariantRecord): Promise<void> {
    const id = variantId(record.meta.vary)
    const { same: previous, others } = await this.storedBeside(record.key, id)
    await this.writeVariant(record, id, others)
    await this.indexTags(record.key, record.meta)
    if (previous) await this.retire(previous)
    await this.keepVariantsBounded(record, others)
    await this.publish({ type: "changed", key: record.key })
  }

  /**
   * Past --max-variants the key's least recently used variants go: a client sending new values of
   * a header the origin varies on must not grow one URL without bound. A variant never read
   * counts from when it was stored.
   */
  private async keepVariantsBounded(record: VariantRecord, others: VariantRecord[]): Promise<void> {
    const excess = others.length + 1 - this.maxVariants
    if (excess <= 0) return
    const ids = others.map((other) => variantId(other.meta.vary))
    const scores = await this.redis.zmscore(this.keys.entryKeys(record.key).used, ...ids)
    const lastUse = (n: number) => Number(scores[n] ?? others[n]?.meta.responseTime ?? 0)
    const order = others.map((_, n) => n).sort((a, b) => lastUse(a) - lastUse(b))
    const victims = order.slice(0, excess).map((n) => others[n] as VariantRecord)
    const kept = [record, ...others.filter((other) => !victims.includes(other))]
    await this.dropVariants(record.key, victims, kept)
  }

  /**
   * Stores the variant's value, keeps the hash as long as its longest-lived variant, and lists the
   * key in the index until then.
   */
  private async writeVariant(record: VariantRecord, id: string, others: VariantRecord[]): Promise<void> {
    const deleteAt = Math.max(record.meta.deleteAt, ...others.map((other) => other.meta.deleteAt))
    const { variants: variantsKey, vary, used } = this.keys.entryKeys(record.key)
    const shapes = shapesOf([record, ...others].map(({ meta }) => meta.vary))
    await this.redis
      .multi()
      .hset(variantsKey, id, encode(record))
      .pexpireat(variantsKey, deleteAt)
      .set(vary, JSON.stringify(shapes), "PXAT", deleteAt)
      .zadd(used, Date.now(), id)
      .pexpireat(used, deleteAt)
      .exec()
    const now = Date.now()
    const bytes = record.size + others.reduce((sum, other) => sum + other.size, 0)
    await this.redis.eval(
      INDEX_SCRIPT,
      4,
      ...this.keys.indexKeyList(),
      record.key,
      deleteAt,
      now,
      Math.max(1, deleteAt - now),
      INDEX_PRUNE_BATCH,
      bytes,
      others.length + 1,
    )
  }

  /** The key's live variants: the one with variant id `id`, if stored, and the others. */
  private async storedBeside(key: string, id: string): Promise<{ same: VariantRecord | undefined; others: VariantRecord[] }> {
    let same: VariantRecord | undefined
    const others: VariantRecord[] = []
    for (const record of await this.records(key)) {
      if (variantId(record.meta.vary) === id) same = record
      else others.push(record)
    }
    return { same, others }
  }

  /** A replaced body's chunks go after a grace period: a reader may still be streaming them. */
  private async retire(record: VariantRecord): Promise<void> {
    const pipeline = this.redis.pipeline()
    for (const chunkKey of this.keys.chunkKeys(record)) pipeline.pexpire(chunkKey, REPLACED_BODY_GRACE_MS)
    await pipeline.exec()
  }

  update(key: string, meta: EntryMeta): Promise<boolean> {
    return this.timely("updating", key, () => this.freshen(key, meta))
  }

  private async freshen(key: string, meta: EntryMeta): Promise<boolean> {
    const id = variantId(meta.vary)
    const { same: found, others } = await this.storedBeside(key, id)
    if (!found) return false
    const record: VariantRecord = { ...found, meta }
    const pipeline = this.redis.pipeline()
    for (const chunkKey of this.keys.chunkKeys(record)) pipeline.pexpireat(chunkKey, meta.deleteAt)
    await pipeline.exec()
    await this.writeVariant(record, id, others)
    await this.indexTags(key, meta)
    await this.publish({ type: "changed", key })
    return true
  }

  /** Names the key in each of its tags' sets: a purge by tag reads one set, never every entry. */
  private async indexTags(key: string, meta: EntryMeta): Promise<void> {
    const ttlMs = Math.max(1, Math.ceil(meta.deleteAt - Date.now()))
    for (const tag of meta.tags ?? []) await this.redis.eval(TAG_SCRIPT, 1, this.keys.tagKey(tag), key, ttlMs)
  }

  delete(key: string): Promise<void> {
    return this.timely("deleting", key, () => this.remove(key))
  }

  private async remove(key: string): Promise<void> {
    const records = await this.records(key)
    const chunkKeys = records.flatMap((record) => this.keys.chunkKeys(record))
    const { variants, vary, used } = this.keys.entryKeys(key)
    await this.redis.del(variants, vary, used, ...chunkKeys)
    await this.unindex(key)
    await this.unindexTags(key, records, [])
    await this.publish({ type: "changed", key })
  }

  private async removeVariant(record: VariantRecord): Promise<void> {
    const kept = (await this.records(record.key)).filter((other) => variantId(other.meta.vary) !== variantId(record.meta.vary))
    await this.dropVariants(record.key, [record], kept)
  }

  /** Removes some of a key's variants, their chunks, their place in its LRU order, and their tags' references to it that no `kept` variant carries. */
  private async dropVariants(key: string, gone: VariantRecord[], kept: VariantRecord[]): Promise<void> {
    const ids = gone.map((record) => variantId(record.meta.vary))
    const { variants, used } = this.keys.entryKeys(key)
    await this.redis
      .multi()
      .hdel(variants, ...ids)
      .zrem(used, ...ids)
      .exec()
    const chunkKeys = gone.flatMap((record) => this.keys.chunkKeys(record))
    if (chunkKeys.length) await this.redis.del(...chunkKeys)
    // The totals follow at once: a key held at --max-variants would otherwise count one too many.
    const bytes = kept.reduce((sum, record) => sum + record.size, 0)
    await this.redis.eval(RESIZE_SCRIPT, 4, ...this.keys.indexKeyList(), key, bytes, kept.length)
    await this.unindexTags(key, gone, kept)
    await this.publish({ type: "changed", key })
  }

  /** Takes the key out of the sets of the tags `gone` variants carried and no `kept` one does: no tag set outlives its entries. */
  private async unindexTags(key: string, gone: VariantRecord[], kept: VariantRecord[]): Promise<void> {
    const still = new Set(kept.flatMap(({ meta }) => meta.tags ?? []))
    const tags = new Set(gone.flatMap(({ meta }) => meta.tags ?? []).filter((tag) => !still.has(tag)))
    // One command each, not one pipeline: on a Cluster the tags' sets lie in other slots.
    await Promise.all([...tags].map((tag) => this.redis.srem(this.keys.tagKey(tag), key)))
  }

  /** O(1): every key moves to a new generation; the old ones expire on their own. */
  async clear(): Promise<void> {
    const index = this.keys.indexKeyList()
    this.generation = newGeneration()
    await this.redis.set(this.keys.generationKey, this.generation)
    await this.redis.del(...index)
    await this.publish({ type: "clear" })
  }

  // ───────────── listing ─────────────

  /** Pages through the sorted key index; keys whose entries expired are dropped from it on the way. */
  async list({ prefix = "", cursor, limit = DEFAULT_PAGE_KEYS }: ListOptions = {}): Promise<Page> {
    const { names: indexKey } = this.keys.indexKeys()
    const entries: ListedEntry[] = []
    let from = cursor === undefined ? `[${prefix}` : `(${cursor}`
    let keys = 0
    for (;;) {
      const batch = await this.redis.zrangebylex(indexKey, from, `[${prefix}\xff`, "LIMIT", 0, limit)
      for (const key of batch) {
        const records = await this.records(key)
        if (records.length === 0) {
          await this.unindex(key)
          continue
        }
        if (keys === limit) return { entries, cursor: entries.at(-1)?.key }
        keys++
        entries.push(...records.map(listed))
      }
      if (batch.length < limit) return { entries }
      from = `(${batch.at(-1)}`
    }
  }

  async variants(key: string): Promise<ListedEntry[]> {
    return (await this.records(key)).map(listed)
  }

  /** The tag's set, less the keys whose entries went or no longer carry the tag (dropped from it on the way). */
  async tagged(tag: string): Promise<string[]> {
    const tagKey = this.keys.tagKey(tag)
    const keys: string[] = []
    for (const key of await this.redis.smembers(tagKey)) {
      const records = await this.records(key)
      if (records.some(({ meta }) => meta.tags?.includes(tag))) keys.push(key)
      else await this.redis.srem(tagKey, key)
    }
    return keys
  }

  /**
   * One read, whatever Redis holds: the totals the index keeps. Keys past their time count until a
   * write or a listing drops them (both prune).
   */
  async stats(): Promise<TierStats[]> {
    const [bytes, variants] = await this.redis.hmget(this.keys.indexKeys().totals, "bytes", "variants")
    return [{ tier: "redis", entries: Number(variants ?? 0), bytes: Number(bytes ?? 0) }]
  }

  onDrop(listener: (dropped: string | null | KeyMatch) => void): void {
    this.dropListeners.push(listener)
  }

  announce(match: KeyMatch): Promise<void> {
    return this.publish({ type: "purged", match })
  }

  // ───────────── cross-process coalescing ─────────────

  claim(key: string, ttlMs: number): Promise<Release | undefined> {
    let taking: Promise<Release | undefined> | undefined
    return this.timely("claiming", key, () => (taking = this.takeClaim(key, ttlMs))).catch((error: Error) => {
      // The caller gave up (the deadline passed), but the SET may still be granted: ioredis sends
      // a node's auto-pipeline only once the one before it has answered, so a claim queued behind a
      // slow one (a Cluster node just restarted) starts its own command timeout late. Unreleased,
      // it would be renewed for ttlMs and every request on the key would wait on it that long.
      void taking?.then(
        (release) => release?.(),
        () => undefined, // not granted: nothing to release
      )
      throw error
    })
  }

  private async takeClaim(key: string, ttlMs: number): Promise<Release | undefined> {
    const { lock: lockKey } = this.keys.entryKeys(key)
    const token = randomBytes(8).toString("hex")
    const granted = await this.redis.set(lockKey, token, "PX", CLAIM_LEASE_MS, "NX")
    if (granted !== "OK") return undefined
    // Renewed while this process lives and the fetch may still take, at most `ttlMs` in all.
    const until = Date.now() + ttlMs
    const renewal = setInterval(() => {
      if (Date.now() >= until) return clearInterval(renewal)
      this.redis.eval(RENEW_SCRIPT, 1, lockKey, token, CLAIM_LEASE_MS).catch((error: Error) => {
        this.warn("store-write", `renewing the claim on ${key}: ${inOurWords(error).message}`) // it lapses: another proxy may fetch too
      })
    }, CLAIM_RENEW_MS)
    renewal.unref?.()
    return () => {
      clearInterval(renewal)
      void this.release(key, lockKey, token)
    }
  }

  private async release(key: string, lockKey: string, token: string): Promise<void> {
    try {
      await this.redis.eval(RELEASE_SCRIPT, 1, lockKey, token)
      await this.publish({ type: "released", key })
    } catch (error) {
      this.warn("store-write", `releasing the claim on ${key}: ${inOurWords(error as Error).message}`) // it expires on its own
    }
  }

  /** Waits until the key's entry changes or its claim ends (a message, or polling as a fallback), at most `ms`. */
  landed(key: string, ms: number): Promise<void> {
    return new Promise((resolve) => {
      const waiters = this.waiting.get(key) ?? new Set()
      this.waiting.set(key, waiters)
      const done = () => {
        clearTimeout(timeout)
        clearInterval(poll)
        waiters.delete(done)
        if (waiters.size === 0) this.waiting.delete(key)
        resolve()
      }
      waiters.add(done)
      const timeout = setTimeout(done, ms)
      const poll = setInterval(() => void this.claimHeld(key).then((held) => held || done()), CLAIM_POLL_MS)
    })
  }

  /** Whether a claim on the key stands; Redis away counts as no: waiting on it is over. */
  private async claimHeld(key: string): Promise<boolean> {
    try {
      return (await this.redis.exists(this.keys.entryKeys(key).lock)) > 0
    } catch {
      return false
    }
  }

  // ───────────── events and connection ─────────────

  private async publish(event: Event): Promise<void> {
    await this.redis.publish(this.keys.channel, JSON.stringify(event))
  }

  private onEvent(message: string): void {
    const event = parseEvent(message)
    if (!event) {
      // Anyone with PUBLISH rights can write on the channel: what is not ours is ignored, said once.
      if (!this.strangeEventSeen)
        this.warn(
          "store-connection",
          `ignoring a message on ${this.keys.channel} that is not this proxy's: ${JSON.stringify(message.slice(0, 80))}`,
        )
      this.strangeEventSeen = true
      return
    }
    if (event.type === "clear") {
      void this.readGeneration()
      for (const listener of this.dropListeners) listener(null)
      return
    }
    if (event.type === "purged") {
      for (const listener of this.dropListeners) listener(event.match)
      return
    }
    if (event.type === "changed") for (const listener of this.dropListeners) listener(event.key)
    for (const wake of this.waiting.get(event.key) ?? []) wake()
  }

  /** Another proxy's `--clear-cache` moves the generation: what memory holds of the old one goes. */
  private async readGeneration(): Promise<void> {
    const current = await this.currentGeneration().catch(() => undefined) // reported as a connection state
    if (current === undefined) return
    if (this.generation !== undefined && this.generation !== current) for (const listener of this.dropListeners) listener(null)
    this.generation = current
    this.onGeneration()
  }

  /**
   * The generation Redis holds. Its key has no expiry, but `maxmemory` with an `allkeys-*` policy
   * may evict it: a missing key (evicted, or never written) starts a generation no entry is under,
   * so its loss reads as "everything is stale", never as "nothing was cleared". Generations are
   * random, not counted: a count restarting from 0 would name entries from before a clear again.
   */
  private async currentGeneration(): Promise<string> {
    const known = await this.redis.get(this.keys.generationKey)
    if (known !== null) return known
    await this.redis.set(this.keys.generationKey, newGeneration(), "NX") // of proxies finding it gone at once, one wins
    return (await this.redis.get(this.keys.generationKey)) ?? newGeneration()
  }

  /** Reports losing Redis and getting it back once each, not once per request. */
  private watchConnection(connection: Redis | Cluster): void {
    const lost = (why: string) => {
      if (!this.up || this.closing) return
      this.up = false
      this.warn("store-state", `Redis is unreachable (${why}); requests go to the origin until it is back`)
    }
    connection.on("error", (error: Error) => lost(inOurWords(error).message))
    connection.on("close", () => lost("the connection closed"))
    connection.on("ready", () => {
      void this.readGeneration()
      if (this.up) return
      this.up = true
      this.warn("store-state", "Redis is reachable again; caching resumes")
    })
  }

  // ───────────── key names ─────────────

  /** Fails at once until Redis has answered: a request never waits for a connection. */
  private namespace(): string {
    if (this.misuse) throw this.misuse
    if (this.generation === undefined) throw new Error("Redis has not answered yet")
    return `${this.prefix}:${this.generation}`
  }

  /** Takes a key out of the index, its bytes out of the total. */
  private async unindex(key: string): Promise<void> {
    await this.redis.eval(UNINDEX_SCRIPT, 4, ...this.keys.indexKeyList(), key)
  }
}

/** A generation's name: random, so one that was lost is never named again. */
function newGeneration(): string {
  return randomBytes(6).toString("hex")
}
