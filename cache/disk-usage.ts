/**
 * What the file store takes on disk, counted against its bound: each variant's meta and body in
 * least-recently-used order, files no entry names, and a block for each directory.
 */
import { dirname } from "node:path"

/** A variant indexed (written, or read: it moves to the most recent end) or gone, as a group member tells its coordinator. */
export type IndexChange = { metaPath: string; key: string; bytes: number } | { metaPath: string; gone: true }

export class DiskUsage {
  /** meta path → bytes on disk (meta + body, in whole blocks), in least-recently-used order; `use` grows with each. */
  readonly lru = new Map<string, { bytes: number; key: string; persistedAt: number; use: number }>()
  /** Files no entry names (a failed write's, an earlier run's) that could not be removed yet: path → bytes. */
  readonly leftovers = new Map<string, number>()
  /** Key directories seen by the scan or made since, and not removed: where entries may be. */
  readonly knownDirs = new Set<string>()
  /** Shard directory → how many of the known key directories are in it. */
  readonly shardDirs = new Map<string, number>()
  /** The tag index's directories, one per tag: counted against the bound like the others. */
  readonly tagDirs = new Set<string>()
  /** The meta path last moved to the most-recently-used end. */
  mostRecent: string | undefined
  /** Bytes of `lru` and `leftovers`; with the directories', what the bound applies to (`occupiedBytes`). */
  private totalBytes = 0
  /** Told of each variant indexed or gone (cache/group-store.ts: a worker's, for the one index). */
  private readonly changeListeners: ((change: IndexChange) => void)[] = []
  /** Counts reads and writes: a variant's last `use` places it in the LRU order without walking it. */
  private uses = 0

  /** `blockBytes`: the file system's block; a file or a directory takes whole blocks. */
  constructor(private readonly blockBytes: number) {}

  account(metaPath: string, key: string, bytes: number, persistedAt = Date.now()): void {
    this.unaccount(metaPath)
    this.lru.set(metaPath, { bytes, key, persistedAt, use: ++this.uses })
    this.totalBytes += bytes
    this.mostRecent = metaPath
    for (const listener of this.changeListeners) listener({ metaPath, key, bytes })
  }

  onChange(listener: (change: IndexChange) => void): void {
    this.changeListeners.push(listener)
  }

  /** Takes a variant out of the LRU order and the byte count, to put it back or because it is gone. */
  unaccount(metaPath: string): void {
    const entry = this.lru.get(metaPath)
    if (!entry) return
    this.lru.delete(metaPath)
    this.totalBytes -= entry.bytes
  }

  /** What the store takes on disk: its files, and a block for each of its directories. */
  occupiedBytes(): number {
    // The tag index: a directory per tag, and theirs; its files are empty, and take no block.
    const tagIndexDirs = this.tagDirs.size === 0 ? 0 : this.tagDirs.size + 1
    return this.totalBytes + (this.knownDirs.size + this.shardDirs.size + tagIndexDirs) * this.blockBytes
  }

  /** A file of `bytes` takes whole blocks on disk. */
  inBlocks(bytes: number): number {
    return Math.ceil(bytes / this.blockBytes) * this.blockBytes
  }

  knowKeyDir(dir: string): void {
    if (this.knownDirs.has(dir)) return
    this.knownDirs.add(dir)
    const shard = dirname(dir)
    this.shardDirs.set(shard, (this.shardDirs.get(shard) ?? 0) + 1)
  }

  forgetKeyDir(dir: string): void {
    if (!this.knownDirs.delete(dir)) return
    const shard = dirname(dir)
    const left = (this.shardDirs.get(shard) ?? 1) - 1
    if (left > 0) this.shardDirs.set(shard, left)
    else this.shardDirs.delete(shard)
  }

  countLeftover(path: string, bytes: number): void {
    this.totalBytes += bytes - (this.leftovers.get(path) ?? 0)
    this.leftovers.set(path, bytes)
  }

  /** Stops counting a path that is gone: a variant's meta, or a leftover. */
  forget(path: string): void {
    if (this.lru.has(path)) for (const listener of this.changeListeners) listener({ metaPath: path, gone: true })
    this.unaccount(path)
    const leftover = this.leftovers.get(path)
    if (leftover === undefined) return
    this.leftovers.delete(path)
    this.totalBytes -= leftover
  }

  reset(): void {
    this.lru.clear()
    this.leftovers.clear()
    this.knownDirs.clear()
    this.shardDirs.clear()
    this.tagDirs.clear()
    this.totalBytes = 0
  }
}
