/**
 * One file store for a group of processes (--workers): each worker reads and writes the cache
 * directory itself, and one coordinator (the primary) owns what must be one.
 *
 * - A hit never waits on the coordinator: `get` reads the worker's memory tier or the disk.
 * - Claims: a miss asks the coordinator for the key's claim, so one worker of the group goes to
 *   the origin; the others wait for it to land (`landed`), then read what it stored.
 * - Changes: a worker's put, update, delete or clear is told to the coordinator, which tells
 *   every other worker to drop the key from its memory tier, and answers once they all have:
 *   the write (or purge) is complete, and its claim released, only then.
 * - The index: workers run their file store without the start-up scan and without a bound; they
 *   report what they index (writes, reads) and remove, a batch at a time, to the coordinator's
 *   file store, which scanned once, keeps the one LRU order and the one byte bound, and evicts.
 *   Evictions go to every worker as drops.
 *
 * The channel between them is any ordered message pipe (node:cluster's IPC in proxy/workers.ts).
 * The primary's own cache (its admin listener's: purges, clear) is a member too, on the
 * coordinator's file store itself, through an in-process channel (`GroupCoordinator.ownStore`).
 */
import type { IndexChange } from "./disk-usage.ts"
import type { FileStore } from "./file-store.ts"
import type {
  Claims,
  Drops,
  EntryMeta,
  KeyMatch,
  Lifecycle,
  ListedEntry,
  Listing,
  ListOptions,
  MaybePromise,
  Page,
  ReadNotices,
  Release,
  Store,
  Stored,
  TierStats,
  Warn,
} from "./store.ts"

/** What goes from the stores in front: a key, everything (null), or the keys a purge by prefix or tag names. */
type Dropped = string | null | KeyMatch

/** An ordered message pipe to the other side. */
export interface Channel {
  send(message: GroupMessage): void
  onMessage(listener: (message: GroupMessage) => void): void
}

/** What a worker and the coordinator tell each other. `seq` pairs a question with its reply. */
export type GroupMessage =
  | { kind: "hello" }
  | { kind: "claim"; seq: number; key: string; ttlMs: number }
  | { kind: "release"; key: string }
  | { kind: "changed"; seq: number; key: Dropped }
  | { kind: "index"; changes: IndexChange[] }
  | { kind: "reply"; seq: number; granted: boolean }
  | { kind: "drop"; seq: number; key: Dropped }
  | { kind: "dropped"; seq: number }
  | { kind: "landed"; key: string }

// Reads are reported to the coordinator's LRU order this often, in one message: never on a hit's way.
const INDEX_FLUSH_MS = 500
// Keys a worker remembers finding nothing under, so that their next miss reads no disk.
const MAX_ABSENT_KEYS = 50_000
// A change waits this long for a worker to drop the key; one that does not answer (hung) is reported and not waited for.
const DROP_ACK_WAIT_MS = 2000

/** A wait for a key's claim to end: `ended` resolves `end`. */
interface Wait {
  end: Promise<void>
  ended: () => void
}

/**
 * A worker's store: its own file store (no scan, no bound), with claims, changes and the index
 * going through the coordinator. `reportsIndex` false: the file store is the coordinator's own.
 */
export class GroupMemberStore implements Store, Listing, Claims, Drops, ReadNotices, Lifecycle {
  private seq = 0
  private readonly replies = new Map<number, (granted: boolean) => void>()
  private readonly dropListeners: ((dropped: Dropped) => void)[] = []
  /** Key → the waits for its claim to end or its entry to change. */
  private readonly waits = new Map<string, Set<() => void>>()
  /** Key → the end of the claim another worker holds, waited for since this one asked. */
  private readonly refused = new Map<string, Wait>()
  /** Meta path → its latest change since the last report, least recent first: a hot entry read often is reported once. */
  private readonly indexChanges = new Map<string, IndexChange>()
  private readonly flushTimer: ReturnType<typeof setInterval>
  /**
   * Keys found with nothing stored, oldest first. A member's file store has no index to say a key
   * is absent, so each miss would read the disk for it (a failed readdir: some 20 µs of CPU, twice
   * a miss). Every change to a key anywhere in the group reaches this worker as a drop before it is
   * complete, and takes the key out.
   */
  private readonly absent = new Map<string, true>()
  /** Bumped by every change this worker hears of: a read that began before one does not mark its key absent. */
  private changes = 0

  constructor(
    private readonly inner: FileStore,
    private readonly channel: Channel,
    private readonly reportsIndex = true,
  ) {
    if (reportsIndex)
      inner.onIndexChange((change) => {
        this.indexChanges.delete(change.metaPath)
        this.indexChanges.set(change.metaPath, change)
      })
    inner.onDrop((key) => this.dropped(key))
    channel.onMessage((message) => this.received(message))
    // From now on it hears the coordinator: a drop sent to a process still starting would be lost.
    channel.send({ kind: "hello" })
    this.flushTimer = setInterval(() => this.flushIndex(), INDEX_FLUSH_MS)
    this.flushTimer.unref?.()
  }

  private received(message: GroupMessage): void {
    if (message.kind === "reply") {
      this.replies.get(message.seq)?.(message.granted)
      this.replies.delete(message.seq)
    } else if (message.kind === "drop") {
      this.dropped(message.key)
      this.channel.send({ kind: "dropped", seq: message.seq })
    } else if (message.kind === "landed") {
      this.ended(message.key)
    }
  }

  /** Tells the tiers in front to forget what went (a key, everything, or what a purge names), and ends waits on a key. */
  private dropped(dropped: Dropped): void {
    // A purge's match drops only what memory holds: it makes no key present.
    if (dropped === null || typeof dropped === "string") {
      this.keyChanged(dropped)
      this.inner.changedElsewhere(dropped)
    }
    for (const listener of this.dropListeners) listener(dropped)
    if (dropped === null) for (const waited of [...this.waits.keys()]) this.ended(waited)
    else if (typeof dropped === "string") this.ended(dropped)
  }

  private ended(key: string): void {
    const waits = this.waits.get(key)
    this.waits.delete(key)
    for (const done of waits ?? []) done()
  }

  private ask(message: (seq: number) => GroupMessage): Promise<boolean> {
    const seq = ++this.seq
    return new Promise((resolve) => {
      this.replies.set(seq, resolve)
      this.channel.send(message(seq))
    })
  }

  private flushIndex(): void {
    if (this.indexChanges.size === 0) return
    this.channel.send({ kind: "index", changes: [...this.indexChanges.values()] })
    this.indexChanges.clear()
  }

  /** The index first (same pipe, so in order), then the change, answered once every worker dropped the key. */
  private async tellCoordinator(key: Dropped): Promise<void> {
    this.flushIndex()
    await this.ask((seq) => ({ kind: "changed", seq, key }))
  }

  /** A key changed (here, in another worker, or evicted): it may hold something now. */
  private keyChanged(key: string | null): void {
    this.changes++
    if (key === null) this.absent.clear()
    else this.absent.delete(key)
  }

  /** Remembers that `key` held nothing, unless a change came while it was read. */
  private noteAbsent(key: string, changesBefore: number): void {
    if (this.changes !== changesBefore) return
    this.absent.set(key, true)
    if (this.absent.size > MAX_ABSENT_KEYS) this.absent.delete(this.absent.keys().next().value as string)
  }

  get(key: string, request: Headers): MaybePromise<Stored | undefined> {
    if (this.absent.has(key)) return undefined
    const before = this.changes
    const found = this.inner.get(key, request)
    if (!(found instanceof Promise)) return found
    return found.then(async (stored) => {
      // Nothing for this request: absent only if no variant at all is there.
      if (!stored && !(await this.inner.has(key))) this.noteAbsent(key, before)
      return stored
    })
  }

  has(key: string): MaybePromise<boolean> {
    return !this.absent.has(key) && this.inner.has(key)
  }

  async put(key: string, meta: EntryMeta, body: ReadableStream<Uint8Array>): Promise<boolean> {
    const kept = await this.inner.put(key, meta, body).finally(() => this.keyChanged(key))
    await this.tellCoordinator(key)
    return kept
  }

  async update(key: string, meta: EntryMeta): Promise<boolean> {
    const updated = await this.inner.update(key, meta).finally(() => this.keyChanged(key))
    await this.tellCoordinator(key)
    return updated
  }

  async delete(key: string): Promise<void> {
    await this.inner.delete(key).finally(() => this.keyChanged(key))
    await this.tellCoordinator(key)
  }

  async clear(): Promise<void> {
    await this.inner.clear().finally(() => this.keyChanged(null))
    await this.tellCoordinator(null)
  }

  list(options?: ListOptions): Promise<Page> {
    return this.inner.list(options)
  }

  variants(key: string): Promise<ListedEntry[]> {
    return this.inner.variants(key)
  }

  tagged(tag: string): Promise<string[]> {
    return this.inner.tagged(tag)
  }

  /** A worker's file store sees only what it touched: the directory's stats are the coordinator's to give. */
  stats(): Promise<TierStats[]> {
    return this.reportsIndex ? Promise.resolve([]) : this.inner.stats()
  }

  used(key: string, meta: EntryMeta): void {
    this.inner.used(key, meta)
  }

  onDrop(listener: (dropped: Dropped) => void): void {
    this.dropListeners.push(listener)
  }

  /**
   * The group's claim on the key. The wait for its end is set up before the coordinator is asked:
   * its word that another worker's claim ended may come in the same read as its refusal, before
   * the caller gets to `landed`.
   */
  async claim(key: string, ttlMs: number): Promise<Release | undefined> {
    const wait = this.waitFor(key)
    const granted = await this.ask((seq) => ({ kind: "claim", seq, key, ttlMs }))
    if (!granted) {
      this.refused.set(key, wait)
      return undefined
    }
    this.waits.get(key)?.delete(wait.ended)
    return () => this.channel.send({ kind: "release", key })
  }

  /** Every worker's memory tier (this one's too, through `onDrop`) forgets what a purge by prefix or tag names, before this resolves. */
  async announce(match: KeyMatch): Promise<void> {
    this.dropped(match)
    await this.tellCoordinator(match)
  }

  /** Resolves when the claim another worker holds ends (or the key's entry changes), or after `ms`. */
  landed(key: string, ms: number): Promise<void> {
    const wait = this.refused.get(key) ?? this.waitFor(key)
    this.refused.delete(key)
    let timer: ReturnType<typeof setTimeout> | undefined
    const timeout = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, ms)
    })
    return Promise.race([wait.end, timeout]).finally(() => {
      clearTimeout(timer)
      this.waits.get(key)?.delete(wait.ended)
    })
  }

  /** A wait, from now, for the key's claim to end or its entry to change. */
  private waitFor(key: string): Wait {
    let ended = () => {}
    const end = new Promise<void>((resolve) => {
      ended = resolve
    })
    const waits = this.waits.get(key) ?? new Set()
    this.waits.set(key, waits.add(ended))
    return { end, ended }
  }

  ready(): Promise<void> {
    return this.inner.ready()
  }

  ping(): Promise<void> {
    return this.inner.ping()
  }

  close(): Promise<void> {
    clearInterval(this.flushTimer)
    this.flushIndex()
    return this.inner.close()
  }
}

/** A worker as the coordinator knows it. */
interface Member {
  channel: Channel
  /** Keys whose claim it holds. */
  claims: Set<string>
}

/**
 * The primary's part: claims, the fan-out of changes, and the one index (its own file store,
 * scanned once, bounded, evicting).
 */
export class GroupCoordinator {
  private readonly members = new Set<Member>()
  /** Key → who holds its claim, until when. */
  private readonly claims = new Map<string, { holder: Member; until: number }>()
  private seq = 0
  /** A drop sent to workers → what is left to hear from before the change is answered. */
  private readonly drops = new Map<number, { waiting: Set<Member>; done: () => void }>()

  constructor(
    private readonly index: FileStore,
    private readonly warn: Warn,
  ) {
    // An eviction here: every worker forgets the key; nothing waits for it.
    index.onDrop((key) => void this.fanOut(key, undefined))
  }

  /**
   * The primary's own store: a member on the coordinator's file store, its changes passed on to
   * every worker like theirs.
   */
  ownStore(): GroupMemberStore {
    const toCoordinator: ((message: GroupMessage) => void)[] = []
    const toMember: ((message: GroupMessage) => void)[] = []
    // Delivered a turn later, as over a pipe: neither side runs inside the other's call.
    const deliver = (listeners: ((message: GroupMessage) => void)[]) => (message: GroupMessage) =>
      queueMicrotask(() => {
        for (const listener of listeners) listener(message)
      })
    this.join({ send: deliver(toMember), onMessage: (listener) => toCoordinator.push(listener) })
    return new GroupMemberStore(this.index, { send: deliver(toCoordinator), onMessage: (listener) => toMember.push(listener) }, false)
  }

  /** Takes a worker in, as one of those told of changes once it says hello; `leave` when it is gone. */
  join(channel: Channel): { leave: () => void } {
    const member: Member = { channel, claims: new Set() }
    channel.onMessage((message) => void this.received(member, message))
    return { leave: () => this.leave(member) }
  }

  /** A dead worker's claims end, and nobody waits for its word on a drop. */
  private leave(member: Member): void {
    this.members.delete(member)
    for (const key of member.claims) this.release(member, key)
    for (const [seq, drop] of this.drops) this.heard(seq, drop, member)
  }

  private async received(member: Member, message: GroupMessage): Promise<void> {
    if (message.kind === "hello") {
      this.members.add(member)
    } else if (message.kind === "claim") {
      member.channel.send({ kind: "reply", seq: message.seq, granted: this.grant(member, message.key, message.ttlMs) })
    } else if (message.kind === "release") {
      this.release(member, message.key)
    } else if (message.kind === "index") {
      await this.index
        .applyIndexChanges(message.changes)
        .catch((error) => this.warn("store-write", `indexing workers' entries: ${(error as Error).message}`))
    } else if (message.kind === "changed") {
      await this.fanOut(message.key, member)
      member.channel.send({ kind: "reply", seq: message.seq, granted: true })
    } else if (message.kind === "dropped") {
      const drop = this.drops.get(message.seq)
      if (drop) this.heard(message.seq, drop, member)
    }
  }

  private grant(member: Member, key: string, ttlMs: number): boolean {
    const now = Date.now()
    const held = this.claims.get(key)
    // A claim its holder never released (it hung) ends with its time, as Redis's PX does.
    if (held && held.until > now && held.holder !== member) return false
    this.claims.set(key, { holder: member, until: now + ttlMs })
    member.claims.add(key)
    return true
  }

  private release(member: Member, key: string): void {
    member.claims.delete(key)
    if (this.claims.get(key)?.holder !== member) return
    this.claims.delete(key)
    for (const other of this.members) other.channel.send({ kind: "landed", key })
  }

  /** Tells every worker but `from` to drop the key; resolves once they all have. */
  fanOut(key: Dropped, from: Member | undefined): Promise<void> {
    const waiting = new Set([...this.members].filter((member) => member !== from))
    if (waiting.size === 0) return Promise.resolve()
    const seq = ++this.seq
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.warn("store-write", `${drop.waiting.size} worker(s) did not drop ${JSON.stringify(key)} within ${DROP_ACK_WAIT_MS} ms`)
        this.drops.delete(seq)
        resolve()
      }, DROP_ACK_WAIT_MS)
      const drop = {
        waiting,
        done: () => {
          clearTimeout(timer)
          resolve()
        },
      }
      this.drops.set(seq, drop)
      for (const member of waiting) member.channel.send({ kind: "drop", seq, key })
    })
  }

  private heard(seq: number, drop: { waiting: Set<Member>; done: () => void }, member: Member): void {
    drop.waiting.delete(member)
    if (drop.waiting.size > 0) return
    this.drops.delete(seq)
    drop.done()
  }
}
