/**
 * The file store's purge-tag index: an empty file `<dir>/v1/tags/<sha256(tag)>/<sha256(key)>` per
 * tagged key, written with the entry; one whose entry went or lost the tag is removed when a purge
 * finds it, and at start-up. Only names of the store's own making are ever removed.
 */

import * as fs from "node:fs/promises"
import { basename, dirname, join } from "node:path"
import { sha256 } from "./bytes.ts"
import type { DiskUsage } from "./disk-usage.ts"
import { KEY_DIR_NAME, MAX_META_BYTES, TAGS_DIR, tagsNamed } from "./file-format.ts"
import { isMissing, readSmallFile, removeOwnFile } from "./file-io.ts"
import type { Warn } from "./store.ts"

/** The store's guarded directory operations, which the index shares. */
export interface OwnDirs {
  /** Makes a directory in the cache, refusing one reached through a link. */
  makeOwnDir(dir: string): Promise<void>
  /** The directories in `dir` named as the store names them, in name order. */
  subdirectories(dir: string, name: RegExp): Promise<string[]>
  /** A catch handler for an operation whose target may be gone: `fallback`, and anything else reported. */
  ifMissing<T>(fallback: T, doing: string): (error: unknown) => T
}

export class TagIndex {
  /** `root`: the store's `<dir>/v1`. */
  constructor(
    private readonly root: string,
    private readonly usage: DiskUsage,
    private readonly warn: Warn,
    private readonly dirs: OwnDirs,
  ) {}

  /**
   * The keys in the tag's index whose entries carry it still (`carrier`: the key of an entry in a
   * key directory that carries the tag); the others are dropped from the index on the way.
   */
  async tagged(tag: string, carrier: (keyDir: string) => Promise<string | undefined>): Promise<string[]> {
    const dir = this.tagDir(tag)
    // Only the store's own directories are read and pruned, never one reached through a link.
    const isOwnDir = async (path: string) =>
      (await fs.lstat(path).catch(this.dirs.ifMissing(undefined, "reading a tag index")))?.isDirectory()
    if (!(await isOwnDir(dirname(dir))) || !(await isOwnDir(dir))) return []
    const keys: string[] = []
    for (const name of await fs.readdir(dir).catch(this.dirs.ifMissing([] as string[], "reading a tag index"))) {
      if (!KEY_DIR_NAME.test(name)) continue
      const tagged = await carrier(join(this.root, name.slice(0, 2), name))
      if (tagged !== undefined) keys.push(tagged)
      else await removeOwnFile(join(dir, name))
    }
    if (keys.length === 0) await this.removeEmptyTagDir(dir)
    return keys
  }

  private tagDir(tag: string): string {
    return join(this.root, TAGS_DIR, sha256(tag))
  }

  /** Names the key in each of its tags' directories: a purge by tag reads one directory, never every entry. */
  async indexTags(key: string, tags: string[]): Promise<void> {
    const keyHash = sha256(key)
    for (const tag of tags) {
      const dir = this.tagDir(tag)
      this.usage.tagDirs.add(dir)
      await this.dirs.makeOwnDir(dir)
      // "wx": already indexed (or a link in its place, never written through) is left as it is.
      await fs.writeFile(join(dir, keyHash), "", { flag: "wx" }).catch((error: NodeJS.ErrnoException) => {
        if (error.code !== "EEXIST") throw error
      })
    }
  }

  /**
   * Once a key's directory is gone, so are its entries in the index of each tag it carried, and
   * a tag's directory once it indexes nothing: the index never outlives what it names. While the
   * key still has variants, an entry stays; a purge by the tag drops it if none carries the tag.
   */
  async unindexTags(dir: string, tags: Iterable<string>): Promise<void> {
    if (this.usage.knownDirs.has(dir)) return
    for (const tag of tags) {
      const tagDir = this.tagDir(tag)
      await removeOwnFile(join(tagDir, basename(dir)))
      await this.removeEmptyTagDir(tagDir)
    }
  }

  /**
   * The tag index loses what names a key with nothing left on disk (deleted, evicted, an earlier
   * run's): at start-up here, and when a purge by the tag meets it (`tagged`). Only names of the
   * store's own making are removed.
   */
  async sweepTagIndex(): Promise<void> {
    const tagsRoot = join(this.root, TAGS_DIR)
    for (const tagDir of await this.dirs.subdirectories(tagsRoot, KEY_DIR_NAME)) {
      const dir = join(tagsRoot, tagDir)
      for (const name of await fs.readdir(dir).catch(this.dirs.ifMissing([] as string[], "sweeping the tag index"))) {
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
}

/** The tags a variant's meta names (read before it goes, for their index entries to go with it). */
export async function tagsOfMeta(metaPath: string): Promise<string[]> {
  // One that cannot be read (gone, a link, too large) was reported by whoever found it broken;
  // what it indexed goes in the sweep at the next start.
  const bytes = await readSmallFile(metaPath, MAX_META_BYTES).catch(() => undefined)
  return bytes === undefined ? [] : tagsNamed(bytes.toString("utf8"))
}
