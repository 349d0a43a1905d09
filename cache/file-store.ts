/**
 * The file store: bounded bytes on disk, atomic writes, survives restarts.
 *
 * Layout: `<dir>/v1/<2 hex>/<sha256(key)>/<variant>.meta` (JSON) beside
 * `<variant>.<write id>.body`, where `<variant>` is sha256 of the key and the Vary selection.
 * The purge-tag index: an empty file `<dir>/v1/tags/<sha256(tag)>/<sha256(key)>` per tagged key,
 * written with the entry; one whose entry went or lost the tag is removed when a purge finds it.
 * A write goes body first, then meta, each under a temporary name renamed when whole, so a reader
 * sees a complete entry or none. Sizes are indexed in memory in LRU order by a scan that runs
 * after start-up (it stats files, never reads bodies); the order survives restarts through mtime.
 * The keys, read from the metas after the scan and kept as entries come and go, are sorted in
 * memory (`SortedKeys`): a listing by prefix reads the metas of the keys it returns, no others.
 *
 * Nothing on disk is trusted: whoever can write the directory must not make the proxy serve, or
 * delete, a file it was not given. Every field of a meta is checked; a body's name is the one its
 * key and Vary selection give; links are never followed; a body is a regular file of the recorded
 * size and digest; only the store's own file names are ever removed. Anything else is a broken
 * entry: reported, removed, and a miss.
 */
import { randomBytes } from "node:crypto"
import { constants, type Dirent, type Stats } from "node:fs"
import * as fs from "node:fs/promises"
import { basename, dirname, join, relative } from "node:path"
import { sha256 } from "./bytes.ts"
import { DiskUsage, type IndexChange } from "./disk-usage.ts"
import type { FileApi } from "./file-api.ts"
import {
  type BodyRecord,
  Broken,
  bodyFileNamed,
  bodyProblem,
  entryMetaOf,
  FORMAT_DIR,
  GENERATION_FILE,
  KEY_DIR_NAME,
  MAX_GENERATION_BYTES,
  MAX_META_BYTES,
  META_NAME,
  META_SUFFIX,
  type MetaFile,
  metaFileText,
  parseMetaFile,
  SHARD_NAME,
  TAGS_DIR,
  TEMP_SUFFIX,
  tagsNamed,
  variantIdOf,
  variantOfBody,
  writeId,
} from "./file-format.ts"
import { blockBytesOf, hashFile, isMissing, READ_FLAGS, readSmallFile, readWhole, removeOwnFile, versionOf, writeAll } from "./file-io.ts"
import { selectVariant } from "./policy.ts"
import { SortedKeys } from "./sorted-keys.ts"
import type {
  Drops,
  EntryMeta,
  Lifecycle,
  ListedEntry,
  Listing,
  ListOptions,
  MaybePromise,
  Page,
  ReadNotices,
  Store,
  Stored,
  TierStats,
  Warn,
} from "./store.ts"
import { MEMORY_BODY_LIMIT_BYTES } from "./tiered-store.ts"
import { DEFAULT_MAX_VARIANTS, selectionsOf, shapesOf } from "./variants.ts"

// The runtime seam (Bun's or Node's file reads) is its own file; importers of the store find it here too.
export { bunFiles, type FileApi, nodeFiles } from "./file-api.ts"

// ───────────────────────────── the store ─────────────────────────────

/** A variant as found on disk. */
interface DiskVariant extends Omit<ListedEntry, "tiers"> {
  metaPath: string
  bodyPath: string
  sha256: string | undefined
  /** Bytes on disk, meta and body, in whole blocks. */
  bytes: number
}

const GENERATION_POLL_MS = 1000
const PERSIST_LRU_EVERY_MS = 60_000
const DEFAULT_PAGE_KEYS = 100
/**
 * Bodies up to this size are read whole when found and checked against their digest: the memory
 * tier in front reads them whole anyway, so the check costs no second read. Larger ones are
 * served from their file (sendfile under Bun); see `verifyOnce`.
 */
const WHOLE_BODY_BYTES = MEMORY_BODY_LIMIT_BYTES
// Reads of a key whose variant keeps changing under them (puts, evictions) before it is a miss.
const MAX_READS = 10
export interface FileStoreOptions {
  /** Root of the cache; entries live under `<dir>/v1`. */
  dir: string
  /** Bytes the store may take on disk: metas, bodies and directories, each rounded up to whole blocks. */
  maxBytes: number
  files: FileApi
  warn: Warn
  /**
   * One of a group's workers (cache/group-store.ts): other processes write the directory too, and
   * the group's coordinator scans it, bounds it and evicts, told of this store's index by
   * `onIndexChange`. This store then never scans, never evicts, and never takes a key it has not
   * seen for absent. @default false
   */
  member?: boolean
  /** Variants kept per key; the least recently used goes beyond it. @default 64 */
  maxVariants?: number
}

export class FileStore implements Store, Listing, Drops, ReadNotices, Lifecycle {
  private readonly dir: string
  private readonly root: string
  private readonly maxBytes: number
  private readonly maxVariants: number
  private readonly files: FileApi
  private readonly warn: Warn
  /** What the store takes on disk, in LRU order: what the bound applies to. */
  private readonly usage: DiskUsage
  /** Variants removed to stay within the bound, since start-up. */
  private evictions = 0
  /** Meta path → the version of its large body last found whole (see `verifyOnce`). */
  private readonly verified = new Map<string, string>()
  /** Hashes of large bodies under way, by body version: concurrent first hits share one. */
  private readonly verifying = new Map<string, Promise<string>>()
  /** Files this process is writing that no meta names yet: no cleanup takes them. */
  private readonly writing = new Set<string>()
  /** Key directory → the puts and updates writing into it: a delete of the key calls them off. */
  private readonly putsUnderWay = new Map<string, Set<{ calledOff: boolean }>>()
  /** Key directory → how many deletes of the key are under way. */
  private readonly deleting = new Map<string, number>()
  private scanDone = false
  /** Metas being discarded as broken: reported once, whoever else finds them meanwhile. */
  private readonly discarding = new Set<string>()
  /** Every stored key, for listings by prefix; complete once the start-up scan has read each meta's key. */
  private readonly keys = new SortedKeys()
  /** Bumped by `clear` and by another process's clear: a scan from before must not index. */
  private epoch = 0
  /** Where each meta handed out lives, so an upper tier's hit can count as a read here. */
  private readonly metaPaths = new WeakMap<EntryMeta, string>()
  private readonly dropListeners: ((key: string | null) => void)[] = []
  private readonly member: boolean
  private readonly scanned: Promise<void>
  private generation: string | undefined
  private lastKeyDir = { key: "", dir: "" }
  /** `dir` with its links resolved, once: key directories must resolve under it. */
  private realDir: Promise<string> | undefined
  private readonly generationTimer: ReturnType<typeof setInterval>
  /**
   * Key directory → the Vary name lists of its variants, learnt when they are all read: a lookup
   * then reads the one meta the request selects (`variants.ts`), never every variant's.
   */
  private readonly shapes = new Map<string, string[][]>()

  constructor({ dir, maxBytes, files, warn, member = false, maxVariants = DEFAULT_MAX_VARIANTS }: FileStoreOptions) {
    this.dir = dir
    this.root = join(dir, FORMAT_DIR)
    this.maxBytes = maxBytes
    this.maxVariants = maxVariants
    this.files = files
    this.warn = warn
    this.usage = new DiskUsage(blockBytesOf(dir))
    this.member = member
    this.scanned = member ? Promise.resolve() : this.scan()
    this.generationTimer = setInterval(() => void this.checkGeneration(), GENERATION_POLL_MS)
    this.generationTimer.unref?.()
    void this.checkGeneration()
  }

  ready(): Promise<void> {
    return this.scanned
  }

  /** The cache directory can still be written (not removed, not made read-only, not unmounted). */
  async ping(): Promise<void> {
    await fs.access(this.dir, constants.W_OK).catch((error: Error) => {
      throw new Error(`the cache directory ${this.dir} cannot be written (${error.message})`)
    })
  }

  close(): Promise<void> {
    clearInterval(this.generationTimer)
    return Promise.resolve()
  }

  get(key: string, request: Headers): MaybePromise<Stored | undefined> {
    const dir = this.keyDir(key)
    // A cold URL costs no syscall once the scan has listed every key directory.
    if (!this.mayHold(dir)) return undefined
    return this.getFrom(key, dir, request)
  }

  private async getFrom(key: string, dir: string, request: Headers): Promise<Stored | undefined> {
    // A body that went, or proved broken, after its meta was read: the key is read again.
    for (let reads = 0; reads < MAX_READS; reads++) {
      const variant = selectVariant(await this.candidates(key, dir, request), request)
      if (!variant) return undefined
      const body = await this.openBody(variant)
      if (body === undefined) continue
      this.touch(variant.metaPath, variant.key, variant.bytes)
      return { meta: variant.meta, size: variant.size, ...body }
    }
    return undefined
  }

  /** Whether a meta is in the key's directory: its name tells, unread (a miss asks, and a key may hold --max-variants). */
  has(key: string): MaybePromise<boolean> {
    const dir = this.keyDir(key)
    if (!this.mayHold(dir)) return false
    return fs.readdir(dir).then((names) => names.some((name) => META_NAME.test(name)), this.ifMissing(false, "reading a key"))
  }

  async put(key: string, meta: EntryMeta, body: ReadableStream<Uint8Array>): Promise<boolean> {
    const dir = this.keyDir(key)
    const variantId = variantIdOf(key, meta.vary)
    const bodyFile = `${variantId}.${writeId()}.body`
    const bodyPath = join(dir, bodyFile)
    const tempBody = bodyPath + TEMP_SUFFIX
    let written: string | undefined
    this.writing.add(tempBody).add(bodyPath)
    const put = this.putUnderWay(dir)
    try {
      const handle = await this.createInKeyDir(dir, tempBody)
      written = tempBody
      const { size, sha256 } = await writeAll(body, handle)
      // One entry that could never fit must not flush everything else on its way out.
      if (size > this.maxBytes || put.calledOff) {
        await this.removeLeftover(tempBody)
        await this.removeEmptyDir(dir)
        return false
      }
      await fs.rename(tempBody, bodyPath)
      written = bodyPath
      // Hashed as it streamed in: this version of a large body is not hashed again when served.
      const version = size > WHOLE_BODY_BYTES ? versionOf(bodyPath, await fs.lstat(bodyPath)) : undefined
      await this.writeMeta(key, dir, variantId, { bodyFile, size, sha256 }, meta, version)
      // Deleted while its meta was written: the entry it made goes as the delete meant.
      if (!put.calledOff) {
        await this.keepVariantsBounded(key, dir)
        return true
      }
      await this.removeVariant(join(dir, variantId + META_SUFFIX))
      return false
    } catch (error) {
      // Whoever feeds the body must learn that nothing more is read.
      if (!body.locked) await body.cancel(error).catch(() => undefined) // the body itself failed: nothing left to cancel
      if (written) await this.removeLeftover(written)
      await this.removeEmptyDir(dir)
      throw error
    } finally {
      this.writing.delete(tempBody)
      this.writing.delete(bodyPath)
      this.putDone(dir, put)
    }
  }

  private putDone(dir: string, put: { calledOff: boolean }): void {
    const puts = this.putsUnderWay.get(dir)
    puts?.delete(put)
    if (puts?.size === 0) this.putsUnderWay.delete(dir)
  }

  /** Registers a put (or an update) writing into a key's directory, for a delete of the key to call off. */
  private putUnderWay(dir: string): { calledOff: boolean } {
    const put = { calledOff: this.deleting.has(dir) }
    const puts = this.putsUnderWay.get(dir) ?? new Set()
    this.putsUnderWay.set(dir, puts.add(put))
    return put
  }

  async update(key: string, meta: EntryMeta): Promise<boolean> {
    const dir = this.keyDir(key)
    const variantId = variantIdOf(key, meta.vary)
    const metaPath = join(dir, variantId + META_SUFFIX)
    const put = this.putUnderWay(dir)
    try {
      const current = await this.loadMetaFile(metaPath).catch((error: unknown) => this.discardBroken(metaPath, error))
      if (!current || put.calledOff) return false
      const { bodyFile, size, sha256 } = current.file
      await this.writeMeta(key, dir, variantId, { bodyFile, size, sha256 }, meta)
      // Deleted meanwhile: its body is gone, and the meta just written must go too.
      if (!put.calledOff) return true
      await this.removeVariant(metaPath)
      return false
    } catch (error) {
      // The key's directory went (a delete, its last entry's removal) under the write: so did the variant.
      if (isMissing(error)) return false
      throw error
    } finally {
      this.putDone(dir, put)
    }
  }

  /**
   * Removes the key's files, metas first, then its directory once empty. A put under way for the
   * key is called off (it answered a request from before the delete, RFC 9111 §4.4) and removes
   * its own files: a write and a delete racing in one directory neither fail nor leave an entry.
   */
  async delete(key: string): Promise<void> {
    const dir = this.keyDir(key)
    for (const put of this.putsUnderWay.get(dir) ?? []) put.calledOff = true
    // Puts and updates that begin before it is done are called off too.
    this.deleting.set(dir, (this.deleting.get(dir) ?? 0) + 1)
    try {
      await this.removeKeyDir(dir)
      if (!this.usage.knownDirs.has(dir)) this.keys.delete(key)
    } finally {
      const left = (this.deleting.get(dir) ?? 1) - 1
      if (left > 0) this.deleting.set(dir, left)
      else this.deleting.delete(dir)
    }
  }

  /** Removes a key's files that no write owns, metas first, then the directory once empty. */
  private async removeKeyDir(dir: string): Promise<void> {
    const stat = await fs.lstat(dir).catch(this.ifMissing(undefined, "finding a key to delete"))
    if (!stat) return
    if (!stat.isDirectory()) {
      // A key directory that is a link: rm removes the link, never what it points to.
      this.usage.forgetKeyDir(dir)
      await fs.rm(dir, { recursive: true, force: true })
      return
    }
    const names = await fs.readdir(dir).catch(this.ifMissing([] as string[], "listing a key to delete"))
    const paths = names.map((name) => join(dir, name)).filter((path) => !this.writing.has(path))
    paths.sort((a, b) => Number(b.endsWith(META_SUFFIX)) - Number(a.endsWith(META_SUFFIX)))
    const tags = new Set<string>()
    for (const path of paths) {
      if (META_NAME.test(basename(path))) for (const tag of await this.tagsOfMeta(path)) tags.add(tag)
      this.forget(path)
      await removeOwnFile(path)
    }
    await this.removeEmptyDir(dir)
    await this.unindexTags(dir, tags)
  }

  /**
   * Empties the store without disturbing a proxy that is using it: the tree is renamed away in
   * one step (readers see all or nothing), then removed; the generation file tells other
   * processes on the same directory to forget what they hold.
   */
  async clear(): Promise<void> {
    const trash = join(this.dir, `${FORMAT_DIR}.trash-${randomBytes(6).toString("hex")}`)
    this.epoch++
    this.reset()
    try {
      await fs.rename(this.root, trash)
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return
      throw error
    }
    this.generation = randomBytes(8).toString("hex")
    await this.writeGeneration(this.generation)
    await fs.rm(trash, { recursive: true, force: true })
  }

  /**
   * Pages in key order through the sorted keys, reading the metas of each page's keys only. A
   * listing asked for during the start-up scan waits for it: the scan reads each meta's key once,
   * which is what a walk over the directories would have done for this one listing.
   */
  async list({ prefix = "", cursor, limit = DEFAULT_PAGE_KEYS }: ListOptions = {}): Promise<Page> {
    await this.scanned
    const entries: ListedEntry[] = []
    let keys = 0
    for (let key = this.keys.next(prefix, cursor); key !== undefined; key = this.keys.next(prefix, key)) {
      const variants = await this.readVariants(this.keyDir(key))
      if (variants.length === 0) {
        // Its last variant expired or went without a word to the index (a read found it gone).
        this.keys.delete(key)
        continue
      }
      if (keys === limit) return { entries, cursor: (entries.at(-1) as ListedEntry).key }
      keys++
      entries.push(...variants.map(listed))
    }
    return { entries }
  }

  async variants(key: string): Promise<ListedEntry[]> {
    const dir = this.keyDir(key)
    if (!this.mayHold(dir)) return []
    return (await this.readVariants(dir)).map(listed)
  }

  /** The keys in the tag's index whose entries carry it still; the others are dropped from the index on the way. */
  async tagged(tag: string): Promise<string[]> {
    const dir = this.tagDir(tag)
    // Only the store's own directories are read and pruned, never one reached through a link.
    const isOwnDir = async (path: string) => (await fs.lstat(path).catch(this.ifMissing(undefined, "reading a tag index")))?.isDirectory()
    if (!(await isOwnDir(dirname(dir))) || !(await isOwnDir(dir))) return []
    const keys: string[] = []
    for (const name of await fs.readdir(dir).catch(this.ifMissing([] as string[], "reading a tag index"))) {
      if (!KEY_DIR_NAME.test(name)) continue
      const variants = await this.readVariants(join(this.root, name.slice(0, 2), name))
      const tagged = variants.find(({ meta }) => meta.tags?.includes(tag))
      if (tagged) keys.push(tagged.key)
      else await removeOwnFile(join(dir, name))
    }
    if (keys.length === 0) await this.removeEmptyTagDir(dir)
    return keys
  }

  private tagDir(tag: string): string {
    return join(this.root, TAGS_DIR, sha256(tag))
  }

  /**
   * The variants that can match the request: the metas its selections name once the key's Vary
   * name lists are known, else every variant (which teaches them). Expired ones are removed.
   */
  private async candidates(key: string, dir: string, request: Headers): Promise<DiskVariant[]> {
    const shapes = this.shapes.get(dir)
    if (!shapes) return this.readVariants(dir)
    const found: DiskVariant[] = []
    const now = Date.now()
    for (const selection of selectionsOf(shapes, request)) {
      const variant = await this.readVariant(join(dir, variantIdOf(key, selection) + META_SUFFIX))
      if (!variant) continue
      if (variant.meta.deleteAt > now) found.push(variant)
      else await this.removeVariant(variant.metaPath)
    }
    return found
  }

  /**
   * Past --max-variants the key's least recently used variants go: a client sending new values of
   * a header the origin varies on must not grow one URL without bound. The tier in front hears of
   * it, as of an eviction.
   */
  private async keepVariantsBounded(key: string, dir: string): Promise<void> {
    const names = await fs.readdir(dir).catch(this.ifMissing([] as string[], "counting a key's variants"))
    const metas = names.filter((name) => META_NAME.test(name)).map((name) => join(dir, name))
    if (metas.length <= this.maxVariants) return
    // A meta the index does not know (written by another process) counts as the least recently used.
    const use = (metaPath: string) => this.usage.lru.get(metaPath)?.use ?? 0
    metas.sort((a, b) => use(a) - use(b))
    for (const metaPath of metas.slice(0, metas.length - this.maxVariants)) await this.removeVariant(metaPath)
    for (const listener of this.dropListeners) listener(key)
  }

  stats(): Promise<TierStats[]> {
    return Promise.resolve([
      { tier: "file", entries: this.usage.lru.size, bytes: this.usage.occupiedBytes(), evictions: this.evictions, maxBytes: this.maxBytes },
    ])
  }

  /**
   * A read served by a tier in front: without it, the disk's LRU order would see only writes and
   * evict the entries read most.
   */
  used(key: string, meta: EntryMeta): void {
    const metaPath = this.metaPaths.get(meta)
    // The hottest entry is already last: no reordering and no utimes on each of its hits.
    if (metaPath === undefined || metaPath === this.usage.mostRecent) return
    const entry = this.usage.lru.get(metaPath)
    if (entry) this.touch(metaPath, key, entry.bytes)
  }

  onDrop(listener: (key: string | null) => void): void {
    this.dropListeners.push(listener)
  }

  /**
   * Another process changed the key's entries (null: cleared everything): the Vary name lists
   * known for it may be out of date, and are learnt again at its next lookup.
   */
  changedElsewhere(key: string | null): void {
    if (key === null) this.shapes.clear()
    else this.shapes.delete(this.keyDir(key))
  }

  /** A group member's index, change by change, for its coordinator. */
  onIndexChange(listener: (change: IndexChange) => void): void {
    this.usage.onChange(listener)
  }

  /** The coordinator's part: what the group's members indexed and removed joins this index, then the bound is held. */
  async applyIndexChanges(changes: IndexChange[]): Promise<void> {
    const left = new Set<string>() // key directories a variant left: gone too, if emptied
    for (const change of changes) {
      const dir = dirname(change.metaPath)
      if ("gone" in change) {
        this.forget(change.metaPath)
        left.add(dir)
      } else {
        this.usage.knowKeyDir(dir)
        this.usage.account(change.metaPath, change.key, change.bytes)
        // A worker's entry is listed by the group's admin listener like one of this store's own.
        this.keys.add(change.key)
      }
    }
    for (const dir of left) {
      const stat = await fs.lstat(dir).catch(this.ifMissing(undefined, "indexing a worker's removal"))
      if (!stat) this.usage.forgetKeyDir(dir)
    }
    await this.evict()
  }

  // ───────────── reading ─────────────

  private keyDir(key: string): string {
    // A miss asks get, then has, for one key: hash it once.
    if (key !== this.lastKeyDir.key) {
      const hash = sha256(key)
      this.lastKeyDir = { key, dir: join(this.root, hash.slice(0, 2), hash) }
    }
    return this.lastKeyDir.dir
  }

  /** False only when the key surely has nothing on disk: the scan is done and never saw it. */
  private mayHold(dir: string): boolean {
    return !this.scanDone || this.usage.knownDirs.has(dir)
  }

  /** Every complete, unexpired variant in a key's directory. Broken and expired ones are removed, never returned. */
  private async readVariants(dir: string): Promise<DiskVariant[]> {
    const names = await fs.readdir(dir).catch(this.ifMissing([] as string[], "reading a key"))
    const variants: DiskVariant[] = []
    const now = Date.now()
    for (const name of names) {
      if (!META_NAME.test(name)) continue
      const variant = await this.readVariant(join(dir, name))
      if (!variant) continue
      if (variant.meta.deleteAt > now) variants.push(variant)
      else await this.removeVariant(variant.metaPath)
    }
    // Known from now on: a lookup reads the one meta a request selects. Joined with what was
    // known, so that a list written meanwhile is not lost.
    this.shapes.set(
      dir,
      shapesOf(
        variants.map(({ meta }) => meta.vary),
        this.shapes.get(dir),
      ),
    )
    return variants
  }

  /**
   * One variant, its meta checked (`parseMetaFile`) and its body a regular file of the recorded
   * size with no other name. A broken one is reported and removed. One that went meanwhile
   * (evicted, deleted) is absent, and one whose meta a put replaced is read again: neither is
   * reported.
   */
  private async readVariant(metaPath: string, reads = 1): Promise<DiskVariant | undefined> {
    try {
      return await this.loadVariant(metaPath)
    } catch (error) {
      if (error instanceof Replaced) return reads < MAX_READS ? this.readVariant(metaPath, reads + 1) : undefined
      return this.discardBroken(metaPath, error)
    }
  }

  private async loadVariant(metaPath: string): Promise<DiskVariant | undefined> {
    const found = await this.loadMetaFile(metaPath)
    if (!found) return undefined // gone since the directory was read: removed by another request
    const { file, metaBytes } = found
    const bodyPath = join(dirname(metaPath), file.bodyFile)
    const stat = await fs.lstat(bodyPath).catch(async (error: unknown) => {
      // A put replaced the variant between our two reads (and removed the body we were told of).
      if (isMissing(error) && (await this.namedBody(metaPath)) !== file.bodyFile) throw new Replaced()
      throw new Broken(isMissing(error) ? "its body is missing" : `reading its body: ${(error as Error).message}`)
    })
    const problem = bodyProblem(stat, file.size)
    if (problem) throw new Broken(problem)
    const meta = entryMetaOf(file)
    const bytes = this.usage.inBlocks(metaBytes) + this.usage.inBlocks(file.size)
    this.index(metaPath, file.key, bytes)
    this.metaPaths.set(meta, metaPath)
    return { key: file.key, meta, size: file.size, sha256: file.sha256, metaPath, bodyPath, bytes }
  }

  /** A variant's meta file, checked; none when it is gone. Anything unusable is `Broken`. */
  private async loadMetaFile(metaPath: string): Promise<{ file: MetaFile; metaBytes: number } | undefined> {
    const bytes = await readSmallFile(metaPath, MAX_META_BYTES).catch((error: unknown) => {
      if (isMissing(error)) return undefined
      throw error instanceof Broken ? error : new Broken(`reading its meta: ${(error as Error).message}`)
    })
    if (bytes === undefined) return undefined
    return { file: parseMetaFile(bytes.toString("utf8"), metaPath), metaBytes: bytes.byteLength }
  }

  /** The body file a variant's meta names now, however broken the rest of it; none when it is gone. */
  private async namedBody(metaPath: string): Promise<string | undefined> {
    const bytes = await readSmallFile(metaPath, MAX_META_BYTES).catch(this.ifMissing(undefined, "reading a meta"))
    return bytes === undefined ? undefined : bodyFileNamed(bytes.toString("utf8"))
  }

  /**
   * The selected variant's body, from its file opened without following links, so that what is
   * checked is what is read. Undefined when the body went after its meta was read (evicted,
   * replaced) or is broken (reported, removed).
   */
  private async openBody(variant: DiskVariant): Promise<Pick<Stored, "body" | "slice"> | undefined> {
    try {
      return await this.readBody(variant)
    } catch (error) {
      const broken = error instanceof Broken ? error : new Broken(`reading its body: ${(error as Error).message}`)
      return this.discardBroken(variant.metaPath, broken)
    }
  }

  /** A small body read whole and checked against its digest; a large one checked (`verifyOnce`) and handed to the runtime. */
  private async readBody(variant: DiskVariant): Promise<Pick<Stored, "body" | "slice"> | undefined> {
    const handle = await fs.open(variant.bodyPath, READ_FLAGS).catch((error: unknown) => {
      if (isMissing(error)) return undefined // removed since its meta was read: evicted or replaced
      throw error
    })
    if (!handle) return undefined
    let handedOver = false
    try {
      const stat = await handle.stat()
      if (stat.nlink === 0) return undefined // removed since it was opened: evicted or replaced
      const problem = bodyProblem(stat, variant.size)
      if (problem) throw new Broken(problem)
      if (variant.size <= WHOLE_BODY_BYTES) return { body: await readWhole(handle, variant) }
      await this.verifyOnce(variant, handle, stat)
      handedOver = true
      return await this.files.responseBody(variant.bodyPath, handle, variant.size)
    } finally {
      if (!handedOver) await handle.close()
    }
  }

  /**
   * A large body is hashed before this process first serves it, and again only once its file has
   * changed: a body's version is its path, inode and ctime, which a write in place moves and utimes
   * cannot set back. A body this process wrote was hashed as it streamed in. Concurrent first hits
   * share one pass. Without a digest in the meta (an older entry) the size is all there is to check.
   */
  private async verifyOnce(variant: DiskVariant, handle: fs.FileHandle, stat: Stats): Promise<void> {
    if (variant.sha256 === undefined) return
    const version = versionOf(variant.bodyPath, stat)
    if (this.verified.get(variant.metaPath) === version) return
    let pass = this.verifying.get(version)
    if (!pass) {
      pass = hashFile(handle, variant.size).finally(() => this.verifying.delete(version))
      this.verifying.set(version, pass)
    }
    if ((await pass) !== variant.sha256) throw new Broken("its body does not match its digest")
    // Not for a variant evicted while it was hashed: nothing would forget it.
    if (this.usage.lru.has(variant.metaPath)) this.verified.set(variant.metaPath, version)
  }

  /** Reports a broken entry and removes it: a miss. Anything but a broken entry is rethrown. */
  private async discardBroken(metaPath: string, error: unknown): Promise<undefined> {
    if (!(error instanceof Broken)) throw error
    // A request and the start-up key pass may find the same meta broken at once: one report.
    if (this.discarding.has(metaPath)) return undefined
    this.discarding.add(metaPath)
    try {
      this.warn("broken-entry", `discarding ${metaPath}: ${error.message}`)
      await this.removeVariant(metaPath)
    } finally {
      this.discarding.delete(metaPath)
    }
    return undefined
  }

  // ───────────── writing ─────────────

  private async makeKeyDir(dir: string): Promise<void> {
    this.usage.knowKeyDir(dir)
    await this.makeOwnDir(dir)
  }

  /** Makes a directory in the cache, and refuses one reached through a link: no write lands outside the cache. */
  private async makeOwnDir(dir: string): Promise<void> {
    await fs.mkdir(dir, { recursive: true })
    this.realDir ??= fs.realpath(this.dir)
    const expected = join(await this.realDir, relative(this.dir, dir))
    if ((await fs.realpath(dir)) !== expected) throw new Error(`${dir} leads out of the cache directory (a link): not writing there`)
  }

  /**
   * Makes the meta naming `body` visible (a rename), then removes the variant's bodies it no
   * longer names, and evicts down to the bound. `version`: a large body's, known whole.
   */
  private async writeMeta(key: string, dir: string, variantId: string, body: BodyRecord, meta: EntryMeta, version?: string): Promise<void> {
    const metaPath = join(dir, variantId + META_SUFFIX)
    const text = metaFileText(key, body, meta)
    const tempMeta = `${metaPath}.${writeId()}${TEMP_SUFFIX}`
    this.writing.add(tempMeta)
    try {
      await fs.writeFile(tempMeta, text, { flag: "wx" })
      await fs.rename(tempMeta, metaPath)
    } catch (error) {
      // A full disk leaves a short temporary meta: it goes with the failed write, not at the next start.
      await this.removeLeftover(tempMeta)
      throw error
    } finally {
      this.writing.delete(tempMeta)
    }
    // Named by the meta now: a cleanup keeps the body for that.
    this.writing.delete(join(dir, body.bodyFile))
    this.metaPaths.set(meta, metaPath)
    // Unknown lists stay unknown: the next lookup reads every variant and learns them all.
    const shapes = this.shapes.get(dir)
    if (shapes) this.shapes.set(dir, shapesOf([meta.vary], shapes))
    this.usage.account(metaPath, key, this.usage.inBlocks(Buffer.byteLength(text)) + this.usage.inBlocks(body.size))
    this.keys.add(key)
    if (version) this.verified.set(metaPath, version)
    // Reported, not thrown: the entry is stored; only a purge by its tag would miss it.
    await this.indexTags(key, meta.tags ?? []).catch((error) => this.warn("store-write", `indexing the tags of ${key}: ${error.message}`))
    await this.removeUnnamedBodies(dir, variantId)
    await this.evict()
  }

  /**
   * Creates a new file in a key's directory (made first). The directory of a key whose last entry
   * just went may be removed at any step (`removeEmptyDir`): it is made again, a few times.
   */
  private async createInKeyDir(dir: string, path: string): Promise<fs.FileHandle> {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.makeKeyDir(dir)
        // "wx": a file (or link) already there is refused, never written through.
        return await fs.open(path, "wx")
      } catch (error) {
        if (!isMissing(error) || attempt === MAX_READS) throw error
      }
    }
  }

  /** Names the key in each of its tags' directories: a purge by tag reads one directory, never every entry. */
  private async indexTags(key: string, tags: string[]): Promise<void> {
    const keyHash = sha256(key)
    for (const tag of tags) {
      const dir = this.tagDir(tag)
      this.usage.tagDirs.add(dir)
      await this.makeOwnDir(dir)
      // "wx": already indexed (or a link in its place, never written through) is left as it is.
      await fs.writeFile(join(dir, keyHash), "", { flag: "wx" }).catch((error: NodeJS.ErrnoException) => {
        if (error.code !== "EEXIST") throw error
      })
    }
  }

  /** Replaces the generation file by a rename: a link put in its place is replaced, never written through. */
  private async writeGeneration(generation: string): Promise<void> {
    const path = join(this.dir, GENERATION_FILE)
    const temp = `${path}.${writeId()}${TEMP_SUFFIX}`
    try {
      await fs.writeFile(temp, generation, { flag: "wx" })
      await fs.rename(temp, path)
    } finally {
      await fs.rm(temp, { force: true }) // gone after the rename; a failed write's is of no use
    }
  }

  // ───────────── removing ─────────────

  private async removeVariant(metaPath: string): Promise<void> {
    const tags = await this.tagsOfMeta(metaPath)
    const key = this.usage.lru.get(metaPath)?.key
    this.forget(metaPath)
    await removeOwnFile(metaPath)
    await this.removeUnnamedBodies(dirname(metaPath), basename(metaPath, META_SUFFIX))
    await this.removeEmptyDir(dirname(metaPath))
    // Its key's last variant: the key leaves the listing's index too.
    if (key && !this.usage.knownDirs.has(dirname(metaPath))) this.keys.delete(key)
    await this.unindexTags(dirname(metaPath), tags)
  }

  /** The tags a variant's meta names (read before it goes, for their index entries to go with it). */
  private async tagsOfMeta(metaPath: string): Promise<string[]> {
    // One that cannot be read (gone, a link, too large) was reported by whoever found it broken;
    // what it indexed goes in the sweep at the next start.
    const bytes = await readSmallFile(metaPath, MAX_META_BYTES).catch(() => undefined)
    return bytes === undefined ? [] : tagsNamed(bytes.toString("utf8"))
  }

  /**
   * Once a key's directory is gone, so are its entries in the index of each tag it carried, and
   * a tag's directory once it indexes nothing: the index never outlives what it names. While the
   * key still has variants, an entry stays; a purge by the tag drops it if none carries the tag.
   */
  private async unindexTags(dir: string, tags: Iterable<string>): Promise<void> {
    if (this.usage.knownDirs.has(dir)) return
    for (const tag of tags) {
      const tagDir = this.tagDir(tag)
      await removeOwnFile(join(tagDir, basename(dir)))
      await this.removeEmptyTagDir(tagDir)
    }
  }

  /**
   * Removes a key's directory once it holds nothing, then its shard's once that holds nothing: a
   * directory takes a block too, and a cache that churns through URLs would otherwise fill with
   * empty ones. rmdir removes only an empty directory, so a file that lands meanwhile keeps it;
   * a put that finds it gone makes it again (`createInKeyDir`).
   */
  private async removeEmptyDir(dir: string): Promise<void> {
    // Forgotten first: a put that makes it again meanwhile counts it again.
    this.usage.forgetKeyDir(dir)
    try {
      await fs.rmdir(dir)
      this.shapes.delete(dir)
    } catch (error) {
      if (isMissing(error)) return
      this.usage.knowKeyDir(dir) // still holds something: a variant, a write under way, a file not ours
      const code = (error as NodeJS.ErrnoException).code
      if (code !== "ENOTEMPTY" && code !== "EEXIST") this.warn("store-delete", `removing ${dir}: ${(error as Error).message}`)
      return
    }
    await this.removeEmptyShard(dirname(dir))
  }

  private async removeEmptyShard(shard: string): Promise<void> {
    if (this.usage.shardDirs.has(shard)) return
    await fs.rmdir(shard).catch((error: NodeJS.ErrnoException) => {
      // Not empty: a key directory was made in it meanwhile, or holds what is not ours.
      if (!isMissing(error) && error.code !== "ENOTEMPTY" && error.code !== "EEXIST")
        this.warn("store-delete", `removing ${shard}: ${error.message}`)
    })
  }

  /**
   * Removes the variant's bodies that its meta does not name and that no write under way will:
   * the one a put replaced, or every one once the meta is gone. Only names of this store's own
   * making are candidates, so nothing else, in the key's directory or outside it, is removed.
   */
  private async removeUnnamedBodies(dir: string, variantId: string): Promise<void> {
    const names = await fs.readdir(dir).catch(this.ifMissing([] as string[], "listing a key's bodies"))
    // Taken as listed: a write that ends from here on has renamed its meta, which is read below.
    const candidates = names.filter((name) => variantOfBody(name) === variantId && !this.writing.has(join(dir, name)))
    if (candidates.length === 0) return
    const named = await this.namedBody(join(dir, variantId + META_SUFFIX))
    for (const name of candidates) if (name !== named) await this.removeLeftover(join(dir, name))
  }

  /** Removes a file no entry names; one that will not go is reported, and counted against the bound until it goes. */
  private async removeLeftover(path: string): Promise<void> {
    try {
      await removeOwnFile(path)
      this.forget(path)
    } catch (error) {
      this.warn("store-delete", `removing ${path}: ${(error as Error).message}`)
      const stat = await fs.lstat(path).catch(this.ifMissing(undefined, "sizing a leftover"))
      if (stat) this.usage.countLeftover(path, this.usage.inBlocks(stat.size))
    }
  }

  // ───────────── the LRU index ─────────────

  /**
   * Names the key of an indexed variant without moving it in the LRU order (listing is not
   * reading): the start-up scan knows only paths, and a dropped key must be named to the tier in
   * front. A variant another process wrote since the scan is indexed as new.
   */
  private index(metaPath: string, key: string, bytes: number): void {
    this.keys.add(key)
    const entry = this.usage.lru.get(metaPath)
    if (entry) entry.key = key
    else this.usage.account(metaPath, key, bytes)
  }

  private touch(metaPath: string, key: string, bytes: number): void {
    const persistedAt = this.usage.lru.get(metaPath)?.persistedAt ?? 0
    const now = Date.now()
    // The LRU order survives restarts through mtime, written at most once a minute per entry
    // so that hits cost no syscall; losing one update is harmless.
    const stale = now - persistedAt > PERSIST_LRU_EVERY_MS
    this.usage.account(metaPath, key, bytes, stale ? now : persistedAt)
    if (!stale) return
    fs.lutimes(metaPath, now / 1000, now / 1000).catch((error) => {
      // An entry evicted or replaced since it was read has nothing left to record.
      if (!isMissing(error)) this.warn("store-write", `recording a read: ${error}`)
    })
  }

  /** Stops counting a path that is gone: a variant's meta, or a leftover. */
  private forget(path: string): void {
    this.usage.forget(path)
    this.verified.delete(path)
  }

  /** Forgets everything: the store is empty (cleared, here or by another process). */
  private reset(): void {
    this.usage.reset()
    this.shapes.clear()
    this.verified.clear()
    this.keys.clear()
  }

  /** Removes leftovers, then least-recently-used variants, until the store is within its bound. */
  private async evict(): Promise<void> {
    // A group member's coordinator holds the bound for the whole directory.
    if (this.member || this.usage.occupiedBytes() <= this.maxBytes) return
    for (const path of [...this.usage.leftovers.keys()]) {
      if (this.usage.occupiedBytes() <= this.maxBytes) return
      await this.removeLeftover(path)
    }
    for (const [metaPath, entry] of this.usage.lru) {
      if (this.usage.occupiedBytes() <= this.maxBytes) return
      this.forget(metaPath)
      this.evictions++
      // A key the start-up scan indexed but nobody read is in no tier in front.
      if (entry.key) for (const listener of this.dropListeners) listener(entry.key)
      // Reported, not thrown: the put that asked for room has stored its entry all the same.
      await this.removeVariant(metaPath).catch((error) => this.warn("store-delete", `evicting ${metaPath}: ${(error as Error).message}`))
    }
  }

  // ───────────── start-up and other processes ─────────────

  /** The directories in `dir` named as the store names them, in name order: a link or a stray file is never entered. */
  private async subdirectories(dir: string, name: RegExp): Promise<string[]> {
    const entries = await fs.readdir(dir, { withFileTypes: true }).catch(this.ifMissing([] as Dirent[], "listing the cache"))
    return entries
      .filter((entry) => entry.isDirectory() && name.test(entry.name))
      .map((entry) => entry.name)
      .sort()
  }

  /**
   * One key's directory: each meta with its size plus its body's, and its mtime. One proxy runs
   * per directory, so a file that belongs to no entry and is not being written by this process
   * was left by an earlier run (a crash, a full disk): it goes now, however recent.
   */
  private async scanKeyDir(dir: string, found: ScannedMeta[]): Promise<void> {
    const listed = await fs.readdir(dir).catch(this.ifMissing([] as string[], "indexing the cache"))
    // Taken as listed: a write that ends from here on has renamed its meta, which is read below.
    const names = listed.filter((name) => !this.writing.has(join(dir, name)))
    const stats = await Promise.all(names.map((name) => fs.lstat(join(dir, name)).catch(this.ifMissing(undefined, "indexing the cache"))))
    const metas = new Map<string, Stats>() // variant id → its meta
    const bodies = new Map<string, { name: string; size: number }[]>() // variant id → its body files
    const leftovers: string[] = []
    for (const [index, name] of names.entries()) {
      const stat = stats[index]
      if (!stat) continue
      const variantId = variantOfBody(name)
      if (name.endsWith(TEMP_SUFFIX)) leftovers.push(name)
      else if (META_NAME.test(name)) metas.set(name.slice(0, -META_SUFFIX.length), stat)
      else if (variantId) bodies.set(variantId, [...(bodies.get(variantId) ?? []), { name, size: this.usage.inBlocks(stat.size) }])
      // Any other name is none of the store's: neither counted nor removed.
    }
    const bodyBytes = new Map<string, number>() // variant id → bytes of the body its meta names
    for (const [variantId, files] of bodies) {
      // A lone body beside its meta is the one named (or the entry is broken, and its reader says so).
      const named = metas.has(variantId) && files.length === 1 ? files[0]?.name : await this.namedBody(join(dir, variantId + META_SUFFIX))
      for (const { name, size } of files) {
        if (name === named) bodyBytes.set(variantId, size)
        else leftovers.push(name)
      }
    }
    for (const name of leftovers) await this.removeLeftover(join(dir, name))
    // An earlier version left the directories of gone entries behind.
    if (metas.size === 0) await this.removeEmptyDir(dir)
    for (const [variantId, stat] of metas) {
      found.push({
        metaPath: join(dir, variantId + META_SUFFIX),
        bytes: this.usage.inBlocks(stat.size) + (bodyBytes.get(variantId) ?? 0),
        mtimeMs: stat.mtimeMs,
      })
    }
  }

  /**
   * A catch handler for a file operation whose target may be gone (removed meanwhile, or never
   * made): that is no failure. Anything else (permissions, I/O) is reported; both give `fallback`.
   */
  private ifMissing<T>(fallback: T, doing: string): (error: unknown) => T {
    return (error) => {
      if (!isMissing(error)) this.warn("store-read", `${doing}: ${(error as Error).message}`)
      return fallback
    }
  }

  /** Indexes what is on disk: sizes and mtimes only, oldest first. What an earlier run left goes. */
  private async scan(): Promise<void> {
    const epoch = this.epoch
    const found: ScannedMeta[] = []
    for (const shard of await this.subdirectories(this.root, SHARD_NAME)) {
      for (const keyDir of await this.subdirectories(join(this.root, shard), KEY_DIR_NAME)) {
        const dir = join(this.root, shard, keyDir)
        this.usage.knowKeyDir(dir)
        await this.scanKeyDir(dir, found)
      }
    }
    this.scanDone = true
    if (epoch !== this.epoch) return // cleared meanwhile: what was found is gone
    found.sort((a, b) => a.mtimeMs - b.mtimeMs)
    // Entries written or read while the scan ran are the most recent: they stay at the end.
    const recent = [...this.usage.lru]
    for (const [metaPath] of recent) this.usage.unaccount(metaPath)
    for (const { metaPath, bytes, mtimeMs } of found) this.usage.account(metaPath, "", bytes, mtimeMs)
    for (const [metaPath, entry] of recent) this.usage.account(metaPath, entry.key, entry.bytes, entry.persistedAt)
    await this.evict()
    await this.sweepTagIndex()
    await this.learnKeys(found, epoch)
  }

  /**
   * Reads the key of each variant the scan found from its meta, for listings by prefix (they wait
   * for this). A meta found broken is reported and removed, as a read would.
   */
  private async learnKeys(found: ScannedMeta[], epoch: number): Promise<void> {
    for (const { metaPath } of found) {
      if (epoch !== this.epoch) return // cleared meanwhile: the keys known are those written since
      const entry = this.usage.lru.get(metaPath)
      if (!entry) continue // evicted or removed since
      if (entry.key) {
        this.keys.add(entry.key)
        continue
      }
      const meta = await this.loadMetaFile(metaPath).catch((error: unknown) => this.discardBroken(metaPath, error))
      if (meta && epoch === this.epoch && this.usage.lru.has(metaPath)) this.index(metaPath, meta.file.key, entry.bytes)
    }
  }

  /**
   * The tag index loses what names a key with nothing left on disk (deleted, evicted, an earlier
   * run's): at start-up here, and when a purge by the tag meets it (`tagged`). Only names of the
   * store's own making are removed.
   */
  private async sweepTagIndex(): Promise<void> {
    const tagsRoot = join(this.root, TAGS_DIR)
    for (const tagDir of await this.subdirectories(tagsRoot, KEY_DIR_NAME)) {
      const dir = join(tagsRoot, tagDir)
      for (const name of await fs.readdir(dir).catch(this.ifMissing([] as string[], "sweeping the tag index"))) {
        if (KEY_DIR_NAME.test(name) && !this.usage.knownDirs.has(join(this.root, name.slice(0, 2), name)))
          await removeOwnFile(join(dir, name))
      }
      await this.removeEmptyTagDir(dir)
    }
  }

  /** Removes a tag's directory once it indexes nothing, and the index's own once no tag is left. */
  private async removeEmptyTagDir(dir: string): Promise<void> {
    this.usage.tagDirs.delete(dir)
    if (!(await this.removeIfEmpty(dir))) this.usage.tagDirs.add(dir)
    else if (this.usage.tagDirs.size === 0) await this.removeIfEmpty(dirname(dir))
  }

  /** Removes a directory if it is empty: true once it is gone. One that holds anything stays. */
  private async removeIfEmpty(dir: string): Promise<boolean> {
    try {
      await fs.rmdir(dir)
      return true
    } catch (error) {
      if (isMissing(error)) return true
      const code = (error as NodeJS.ErrnoException).code
      if (code !== "ENOTEMPTY" && code !== "EEXIST") this.warn("store-delete", `removing ${dir}: ${(error as Error).message}`)
      return false
    }
  }

  /** Another process's `clear` bumps the generation: forget the index, and tell the tiers in front. */
  private async checkGeneration(): Promise<void> {
    const epoch = this.epoch
    const generation = await readSmallFile(join(this.dir, GENERATION_FILE), MAX_GENERATION_BYTES).then(
      (bytes) => bytes.toString("utf8"),
      this.ifMissing("", "reading the generation"),
    )
    if (epoch !== this.epoch) return // our own clear ran meanwhile: what was read is out of date
    if (this.generation !== undefined && generation !== this.generation) {
      this.epoch++
      this.reset()
      // Nothing is on disk but what is written from now on; by this process alone unless a member.
      this.scanDone = !this.member
      for (const listener of this.dropListeners) listener(null)
    }
    this.generation = generation
  }
}

/** A variant's meta changed while it was read: read it again. */
class Replaced extends Error {}

interface ScannedMeta {
  metaPath: string
  bytes: number
  mtimeMs: number
}

/** A variant found on disk, as a listing shows it. */
function listed({ key, meta, size }: DiskVariant): ListedEntry {
  return { key, meta, size, tiers: ["file"] }
}
