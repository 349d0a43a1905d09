/**
 * The file store's reads of a body from disk, checked: a small one read whole against its digest,
 * a large one hashed once per version of its file and then handed to the runtime (sendfile under
 * Bun).
 */
import type { Stats } from "node:fs"
import * as fs from "node:fs/promises"
import type { DiskUsage } from "./disk-usage.ts"
import type { FileApi } from "./file-api.ts"
import { Broken, bodyProblem } from "./file-format.ts"
import { hashFile, isMissing, READ_FLAGS, readWhole, versionOf } from "./file-io.ts"
import type { Stored } from "./store.ts"
import { MEMORY_BODY_LIMIT_BYTES } from "./tiered-store.ts"

/**
 * Bodies up to this size are read whole when found and checked against their digest: the memory
 * tier in front reads them whole anyway, so the check costs no second read. Larger ones are
 * served from their file (sendfile under Bun); see `verifyOnce`.
 */
export const WHOLE_BODY_BYTES = MEMORY_BODY_LIMIT_BYTES

/** A variant's body as its meta records it. */
export interface BodyFile {
  metaPath: string
  bodyPath: string
  size: number
  sha256: string | undefined
}

export class BodyReader {
  /** Meta path → the version of its large body last found whole (see `verifyOnce`). */
  readonly verified = new Map<string, string>()
  /** Hashes of large bodies under way, by body version: concurrent first hits share one. */
  private readonly verifying = new Map<string, Promise<string>>()

  constructor(
    private readonly files: FileApi,
    private readonly usage: DiskUsage,
  ) {}

  /** A small body read whole and checked against its digest; a large one checked (`verifyOnce`) and handed to the runtime. */
  async readBody(variant: BodyFile): Promise<Pick<Stored, "body" | "slice"> | undefined> {
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
  private async verifyOnce(variant: BodyFile, handle: fs.FileHandle, stat: Stats): Promise<void> {
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
}
