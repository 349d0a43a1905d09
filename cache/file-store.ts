/**
 * The file store: bounded bytes on disk, atomic writes, survives restarts.
 *
 * Layout: `<dir>/v1/<2 hex>/<sha256(key)>/<variant>.meta` (JSON) beside
 * `<variant>.<write id>.body`, where `<variant>` is sha256 of the key and the Vary selection.
 * A write goes body first, then meta, each under a temporary name renamed when whole, so a reader
 * sees a complete entry or none. Sizes are indexed in memory in LRU order by a scan that runs
 * after start-up (it stats files, never reads bodies); the order survives restarts through mtime.
 */
import { createHash, randomBytes } from "node:crypto"
import { createReadStream } from "node:fs"
import * as fs from "node:fs/promises"
import { basename, join } from "node:path"
import { Readable } from "node:stream"
import type { EntryMeta, ListedEntry, ListOptions, MaybePromise, Page, Store, Stored, TierStats, Warn } from "../cache.ts"
import { selectVariant } from "./policy.ts"

// ───────────────────────────── the runtime seam ─────────────────────────────

/**
 * The file reads that differ between Bun and Node, chosen once at start-up and passed in.
 * Writes go through node:fs under both runtimes: its writes run off the event loop, so disk and
 * network overlap. Measured on a 512 MiB MISS, Bun's FileSink (which writes on the event loop
 * once its buffer fills) reached a third of the throughput.
 */
export interface FileApi {
  /** A response body read from the file: Bun.file lets Bun.serve use sendfile. */
  responseBody(path: string): Blob | ReadableStream<Uint8Array>
}

export const bunFiles: FileApi = {
  responseBody: (path) => Bun.file(path),
}

export const nodeFiles: FileApi = {
  responseBody: (path) => Readable.toWeb(createReadStream(path)) as ReadableStream<Uint8Array>,
}

// ───────────────────────────── the store ─────────────────────────────

/** What lives on disk next to the body: the meta, plus what ties it to its key and body. */
interface MetaFile extends EntryMeta {
  format: 1
  key: string
  bodyFile: string
  size: number
}

/** A variant as found on disk. */
interface DiskVariant extends ListedEntry {
  metaPath: string
  bodyPath: string
  /** Bytes on disk, meta and body. */
  bytes: number
}

const FORMAT_DIR = "v1"
const META_SUFFIX = ".meta"
const BODY_SUFFIX = ".body"
const TEMP_SUFFIX = ".tmp"
/** Written by `clear`: a running proxy that sees it change forgets what it holds. */
const GENERATION_FILE = "generation"
const GENERATION_POLL_MS = 1000
// A body no meta refers to, older than this, is left over from a crash: safe to remove.
const ORPHAN_AGE_MS = 60_000
const PERSIST_LRU_EVERY_MS = 60_000
const DEFAULT_PAGE_KEYS = 100
// Metas written before `deleteAt` existed have none: they are kept until evicted.
const NEVER = Number.MAX_SAFE_INTEGER

export interface FileStoreOptions {
  /** Root of the cache; entries live under `<dir>/v1`. */
  dir: string
  /** Bytes the store may hold on disk, metas and bodies. */
  maxBytes: number
  files: FileApi
  warn: Warn
}

export class FileStore implements Store {
  private readonly dir: string
  private readonly root: string
  private readonly maxBytes: number
  private readonly files: FileApi
  private readonly warn: Warn
  /** meta path → bytes on disk (meta + body), in least-recently-used order. */
  private readonly lru = new Map<string, { bytes: number; key: string; persistedAt: number }>()
  private totalBytes = 0
  /** Key directories seen by the scan or made since: where entries may be. */
  private readonly knownDirs = new Set<string>()
  private scanDone = false
  /** Bumped by `clear` and by another process's clear: a scan from before must not index. */
  private epoch = 0
  /** The meta path last moved to the most-recently-used end. */
  private mostRecent: string | undefined
  /** Where each meta handed out lives, so an upper tier's hit can count as a read here. */
  private readonly metaPaths = new WeakMap<EntryMeta, string>()
  private readonly dropListeners: ((key: string | null) => void)[] = []
  private readonly scanned: Promise<void>
  private generation: string | undefined
  private lastKeyDir = { key: "", dir: "" }
  private readonly generationTimer: ReturnType<typeof setInterval>

  constructor({ dir, maxBytes, files, warn }: FileStoreOptions) {
    this.dir = dir
    this.root = join(dir, FORMAT_DIR)
    this.maxBytes = maxBytes
    this.files = files
    this.warn = warn
    this.scanned = this.scan()
    this.generationTimer = setInterval(() => void this.checkGeneration(), GENERATION_POLL_MS)
    this.generationTimer.unref?.()
    void this.checkGeneration()
  }

  ready(): Promise<void> {
    return this.scanned
  }

  close(): Promise<void> {
    clearInterval(this.generationTimer)
    return Promise.resolve()
  }

  get(key: string, request: Headers): MaybePromise<Stored | undefined> {
    const dir = this.keyDir(key)
    // A cold URL costs no syscall once the scan has listed every key directory.
    if (!this.mayHold(dir)) return undefined
    return this.getFrom(dir, key, request)
  }

  private async getFrom(dir: string, key: string, request: Headers): Promise<Stored | undefined> {
    const variant = selectVariant(await this.readVariants(dir, key), request)
    if (!variant) return undefined
    this.touch(variant.metaPath, key, variant.bytes)
    return { meta: variant.meta, size: variant.size, body: this.files.responseBody(variant.bodyPath) }
  }

  has(key: string): MaybePromise<boolean> {
    const dir = this.keyDir(key)
    if (!this.mayHold(dir)) return false
    return this.readVariants(dir, key).then((variants) => variants.length > 0)
  }

  async put(key: string, meta: EntryMeta, body: ReadableStream<Uint8Array>): Promise<boolean> {
    const dir = this.keyDir(key)
    const variantId = sha256(`${key}\n${JSON.stringify(meta.vary)}`)
    const bodyName = `${variantId}.${randomBytes(6).toString("hex")}${BODY_SUFFIX}`
    const tempBody = join(dir, bodyName + TEMP_SUFFIX)
    let written: string | undefined
    try {
      this.knownDirs.add(dir)
      await fs.mkdir(dir, { recursive: true })
      written = tempBody
      const size = await writeAll(body, tempBody)
      // One entry that could never fit must not flush everything else on its way out.
      if (size > this.maxBytes) {
        await fs.rm(tempBody, { force: true })
        return false
      }
      await fs.rename(tempBody, join(dir, bodyName))
      written = join(dir, bodyName)
      await this.writeMeta(key, dir, variantId, bodyName, meta, size)
      return true
    } catch (error) {
      // Whoever feeds the body must learn that nothing more is read.
      if (!body.locked) await body.cancel(error).catch(() => undefined) // the body itself failed: nothing left to cancel
      if (written) await fs.rm(written, { force: true }).catch((rmError) => this.warn("store-write", `${rmError}`))
      throw error
    }
  }

  async update(key: string, meta: EntryMeta): Promise<boolean> {
    const dir = this.keyDir(key)
    const variantId = sha256(`${key}\n${JSON.stringify(meta.vary)}`)
    const current = await this.readMetaFile(join(dir, variantId + META_SUFFIX))
    if (!current) return false
    await this.writeMeta(key, dir, variantId, current.bodyFile, meta, current.size)
    return true
  }

  async delete(key: string): Promise<void> {
    const dir = this.keyDir(key)
    const names = await fs.readdir(dir).catch(this.ifMissing([] as string[], "listing a key to delete"))
    for (const name of names) if (name.endsWith(META_SUFFIX)) this.forget(join(dir, name))
    await fs.rm(dir, { recursive: true, force: true })
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
    await fs.writeFile(join(this.dir, GENERATION_FILE), this.generation)
    await fs.rm(trash, { recursive: true, force: true })
  }

  /** Pages in the order of the key directories' names; reads the metas of each page's keys. */
  async list({ prefix = "", cursor, limit = DEFAULT_PAGE_KEYS }: ListOptions = {}): Promise<Page> {
    const entries: ListedEntry[] = []
    let keys = 0
    for (const shard of await this.sortedNames(this.root)) {
      if (cursor !== undefined && shard < cursor.slice(0, 2)) continue
      for (const keyDir of await this.sortedNames(join(this.root, shard))) {
        const position = `${shard}/${keyDir}`
        if (cursor !== undefined && position <= cursor) continue
        const variants = (await this.readVariants(join(this.root, shard, keyDir))).filter((v) => v.key.startsWith(prefix))
        if (variants.length === 0) continue
        if (keys === limit) return { entries, cursor: positionOf((entries.at(-1) as ListedEntry).key) }
        keys++
        for (const { key, meta, size } of variants) entries.push({ key, meta, size })
      }
    }
    return { entries }
  }

  stats(): Promise<TierStats[]> {
    return Promise.resolve([{ tier: "file", entries: this.lru.size, bytes: this.totalBytes }])
  }

  /**
   * A read served by a tier in front: without it, the disk's LRU order would see only writes and
   * evict the entries read most.
   */
  used(key: string, meta: EntryMeta): void {
    const metaPath = this.metaPaths.get(meta)
    // The hottest entry is already last: no reordering and no utimes on each of its hits.
    if (metaPath === undefined || metaPath === this.mostRecent) return
    const entry = this.lru.get(metaPath)
    if (entry) this.touch(metaPath, key, entry.bytes)
  }

  onDrop(listener: (key: string | null) => void): void {
    this.dropListeners.push(listener)
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
    return !this.scanDone || this.knownDirs.has(dir)
  }

  /**
   * Every complete, unexpired variant in a key's directory (of `key`, when given). Broken and
   * expired ones are deleted, never returned; bodies no meta refers to are removed once old.
   */
  private async readVariants(dir: string, key?: string): Promise<DiskVariant[]> {
    const names = await fs.readdir(dir).catch(this.ifMissing([] as string[], "reading a key"))
    const variants: DiskVariant[] = []
    const referenced = new Set<string>()
    const now = Date.now()
    for (const name of names) {
      if (!name.endsWith(META_SUFFIX)) continue
      const variant = await this.readVariant(join(dir, name), key)
      if (!variant) continue
      referenced.add(basename(variant.bodyPath))
      if (variant.meta.deleteAt > now) variants.push(variant)
      else await this.removeVariant(variant.metaPath)
    }
    await this.removeOrphans(dir, names, referenced)
    return variants
  }

  private async readVariant(metaPath: string, key: string | undefined, retried = false): Promise<DiskVariant | undefined> {
    try {
      const text = await fs.readFile(metaPath, "utf8")
      const file = JSON.parse(text) as MetaFile
      const bodyPath = join(metaPath, "..", file.bodyFile)
      const bodyStat = await fs.stat(bodyPath).catch(async (error) => {
        // A put replaced the variant between our two reads (and removed the body we were told
        // of): the new meta names the new body.
        if (!retried && (await this.readMetaFile(metaPath))?.bodyFile !== file.bodyFile) throw new Replaced()
        throw error
      })
      if (file.format !== 1 || (key !== undefined && file.key !== key) || bodyStat.size !== file.size) throw new Error("mismatch")
      const { format: _format, key: storedKey, bodyFile: _bodyFile, size, ...fields } = file
      const meta: EntryMeta = { ...fields, deleteAt: fields.deleteAt ?? NEVER }
      this.index(metaPath, storedKey, text.length + size)
      this.metaPaths.set(meta, metaPath)
      return { key: storedKey, meta, size, metaPath, bodyPath, bytes: text.length + size }
    } catch (error) {
      if (error instanceof Replaced) return this.readVariant(metaPath, key, true)
      // Gone since the directory was read: another request removed it.
      if ((error as NodeJS.ErrnoException).code === "ENOENT" && !(await exists(metaPath))) return undefined
      this.warn("broken-entry", `discarding ${metaPath}: ${(error as Error).message}`)
      await this.removeVariant(metaPath)
      return undefined
    }
  }

  private async removeOrphans(dir: string, names: string[], referenced: Set<string>): Promise<void> {
    const now = Date.now()
    for (const name of names) {
      if (name.endsWith(META_SUFFIX) || referenced.has(name)) continue
      const path = join(dir, name)
      const stat = await fs.stat(path).catch(this.ifMissing(undefined, "looking at a leftover file"))
      if (stat && now - stat.mtimeMs > ORPHAN_AGE_MS) await fs.rm(path, { force: true })
    }
  }

  // ───────────── writing ─────────────

  private async writeMeta(key: string, dir: string, variantId: string, bodyName: string, meta: EntryMeta, size: number): Promise<void> {
    const metaPath = join(dir, variantId + META_SUFFIX)
    const previousBody = (await this.readMetaFile(metaPath))?.bodyFile
    const file: MetaFile = { format: 1, key, bodyFile: bodyName, size, ...meta }
    const text = JSON.stringify(file)
    const tempMeta = `${metaPath}.${randomBytes(6).toString("hex")}${TEMP_SUFFIX}`
    await fs.writeFile(tempMeta, text)
    await fs.rename(tempMeta, metaPath)
    if (previousBody && previousBody !== bodyName) await fs.rm(join(dir, previousBody), { force: true })
    this.metaPaths.set(meta, metaPath)
    this.account(metaPath, key, text.length + size)
    await this.evict()
  }

  // ───────────── the LRU index ─────────────

  /**
   * Names the key of an indexed variant without moving it in the LRU order (listing is not
   * reading): the start-up scan knows only paths, and a dropped key must be named to the tier in
   * front. A variant another process wrote since the scan is indexed as new.
   */
  private index(metaPath: string, key: string, bytes: number): void {
    const entry = this.lru.get(metaPath)
    if (entry) entry.key = key
    else this.account(metaPath, key, bytes)
  }

  private touch(metaPath: string, key: string, bytes: number): void {
    const persistedAt = this.lru.get(metaPath)?.persistedAt ?? 0
    const now = Date.now()
    // The LRU order survives restarts through mtime, written at most once a minute per entry
    // so that hits cost no syscall; losing one update is harmless.
    const stale = now - persistedAt > PERSIST_LRU_EVERY_MS
    this.account(metaPath, key, bytes, stale ? now : persistedAt)
    if (stale) fs.utimes(metaPath, now / 1000, now / 1000).catch((error) => this.warn("store-write", `recording a read: ${error}`))
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

  private reset(): void {
    this.lru.clear()
    this.knownDirs.clear()
    this.totalBytes = 0
  }

  /** Removes least-recently-used variants until the store is within its bound. */
  private async evict(): Promise<void> {
    for (const [metaPath, entry] of this.lru) {
      if (this.totalBytes <= this.maxBytes) return
      this.forget(metaPath)
      // A key the start-up scan indexed but nobody read is in no tier in front.
      if (entry.key) for (const listener of this.dropListeners) listener(entry.key)
      await this.removeVariant(metaPath)
    }
  }

  private async removeVariant(metaPath: string): Promise<void> {
    this.forget(metaPath)
    const bodyName = (await this.readMetaFile(metaPath))?.bodyFile
    await fs.rm(metaPath, { force: true })
    if (bodyName) await fs.rm(join(metaPath, "..", bodyName), { force: true })
  }

  // ───────────── start-up and other processes ─────────────

  /** A directory's entries in name order; none when it does not exist. */
  private async sortedNames(dir: string): Promise<string[]> {
    return (await fs.readdir(dir).catch(this.ifMissing([] as string[], "listing the cache"))).sort()
  }

  /** One key's directory: each meta with its size plus its body's, and its mtime. */
  private async scanKeyDir(dir: string, found: ScannedMeta[]): Promise<void> {
    const names = await fs.readdir(dir).catch(this.ifMissing([] as string[], "indexing the cache"))
    const stats = await Promise.all(names.map((name) => fs.stat(join(dir, name)).catch(this.ifMissing(undefined, "indexing the cache"))))
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

  /** A variant's meta file; none when there is none (the common case when writing) or it is not JSON. */
  private async readMetaFile(metaPath: string): Promise<MetaFile | undefined> {
    const text = await fs.readFile(metaPath, "utf8").catch(this.ifMissing(undefined, "reading a meta"))
    if (text === undefined) return undefined
    try {
      return JSON.parse(text) as MetaFile
    } catch {
      return undefined // not JSON: `readVariant` reports and discards it; a writer replaces it
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

  /** Indexes what is on disk: sizes and mtimes only, oldest first. Leftover temp files go. */
  private async scan(): Promise<void> {
    const epoch = this.epoch
    const found: ScannedMeta[] = []
    for (const shard of await this.sortedNames(this.root)) {
      for (const keyDir of await this.sortedNames(join(this.root, shard))) {
        const dir = join(this.root, shard, keyDir)
        this.knownDirs.add(dir)
        await this.scanKeyDir(dir, found)
      }
    }
    this.scanDone = true
    if (epoch !== this.epoch) return // cleared meanwhile: what was found is gone
    found.sort((a, b) => a.mtimeMs - b.mtimeMs)
    // Entries written or read while the scan ran are the most recent: they stay at the end.
    const recent = [...this.lru]
    this.lru.clear()
    this.totalBytes = 0
    for (const { metaPath, bytes, mtimeMs } of found) this.account(metaPath, "", bytes, mtimeMs)
    for (const [metaPath, entry] of recent) this.account(metaPath, entry.key, entry.bytes, entry.persistedAt)
    await this.evict()
  }

  /** Another process's `clear` bumps the generation: forget the index, and tell the tiers in front. */
  private async checkGeneration(): Promise<void> {
    const epoch = this.epoch
    const generation = await fs.readFile(join(this.dir, GENERATION_FILE), "utf8").catch(this.ifMissing("", "reading the generation"))
    if (epoch !== this.epoch) return // our own clear ran meanwhile: what was read is out of date
    if (this.generation !== undefined && generation !== this.generation) {
      this.epoch++
      this.reset()
      this.scanDone = true // nothing is on disk but what is written from now on
      for (const listener of this.dropListeners) listener(null)
    }
    this.generation = generation
  }
}

function isMissing(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException).code
  return code === "ENOENT" || code === "ENOTDIR"
}

/** A variant's meta changed while it was read: read it again. */
class Replaced extends Error {}

interface ScannedMeta {
  metaPath: string
  bytes: number
  mtimeMs: number
}

/** Writes a stream to a new file; resolves with its length. A failed write cancels the stream. */
async function writeAll(body: ReadableStream<Uint8Array>, path: string): Promise<number> {
  const handle = await fs.open(path, "w")
  let size = 0
  try {
    for await (const chunk of body) {
      size += chunk.byteLength
      await handle.write(chunk)
    }
  } finally {
    await handle.close()
  }
  return size
}

function exists(path: string): Promise<boolean> {
  return fs.access(path).then(
    () => true,
    () => false,
  )
}

/** Where a key's directory stands in the listing order: the list cursor after it. */
function positionOf(key: string): string {
  const hash = sha256(key)
  return `${hash.slice(0, 2)}/${hash}`
}

function sha256(text: string): string {
  return createHash("sha256").update(text).digest("hex")
}
