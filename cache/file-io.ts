/**
 * The file store's I/O primitives: reads that never follow a link, whole-file reads of a bounded
 * size, writes that hash as they stream, removal of the store's own files.
 */
import { createHash } from "node:crypto"
import { constants, type Stats, statfsSync } from "node:fs"
import * as fs from "node:fs/promises"
import { basename } from "node:path"
import { sha256 } from "./bytes.ts"
import { Broken } from "./file-format.ts"

// Every read opens with these: a link is refused (ELOOP) rather than followed, and a FIFO in a
// file's place cannot hang the open (it is then refused as no regular file).
export const READ_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK
// A large body is hashed this many bytes at a time.
const HASH_SLICE_BYTES = 1 << 20
// Where the file system cannot be asked (the directory is not made yet): the common block size.
const DEFAULT_BLOCK_BYTES = 4096

export function isMissing(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException).code
  return code === "ENOENT" || code === "ENOTDIR"
}

/** A small body, read whole and checked against its length and, when the meta has it, its digest. */
export async function readWhole(handle: fs.FileHandle, variant: { size: number; sha256: string | undefined }): Promise<Uint8Array> {
  const bytes = await handle.readFile()
  if (bytes.byteLength !== variant.size) throw new Broken(`its body is ${bytes.byteLength} bytes, its meta says ${variant.size}`)
  if (variant.sha256 !== undefined && sha256(bytes) !== variant.sha256) throw new Broken("its body does not match its digest")
  return bytes
}

/** sha256 of a file's first `size` bytes, read at explicit positions: the handle's own offset stays at the start. */
export async function hashFile(handle: fs.FileHandle, size: number): Promise<string> {
  const hash = createHash("sha256")
  const slice = Buffer.allocUnsafe(Math.min(size, HASH_SLICE_BYTES))
  for (let position = 0; position < size; ) {
    const { bytesRead } = await handle.read(slice, 0, Math.min(slice.byteLength, size - position), position)
    if (bytesRead === 0) break // shorter than its meta says: the digest will not match
    hash.update(slice.subarray(0, bytesRead))
    position += bytesRead
  }
  return hash.digest("hex")
}

/** A small regular file's bytes, read without following a link; anything else is `Broken`. */
export async function readSmallFile(path: string, maxBytes: number): Promise<Buffer> {
  const handle = await fs.open(path, READ_FLAGS)
  try {
    const stat = await handle.stat()
    if (!stat.isFile()) throw new Broken(`${basename(path)} is not a regular file`)
    if (stat.size > maxBytes) throw new Broken(`${basename(path)} is ${stat.size} bytes, more than ${maxBytes}`)
    return await handle.readFile()
  } finally {
    await handle.close()
  }
}

/**
 * Removes one of the store's files. Recursively: a directory in a file's place is of no use
 * either, and rm removes a link, never what it points to.
 */
export function removeOwnFile(path: string): Promise<void> {
  return fs.rm(path, { recursive: true, force: true })
}

/** Writes a stream to a new file, and closes it; resolves with its length and sha256, taken as it streams. A failed write cancels the stream. */
export async function writeAll(body: ReadableStream<Uint8Array>, handle: fs.FileHandle): Promise<{ size: number; sha256: string }> {
  const hash = createHash("sha256")
  let size = 0
  try {
    for await (const chunk of body) {
      size += chunk.byteLength
      hash.update(chunk)
      await handle.write(chunk)
    }
  } finally {
    await handle.close()
  }
  return { size, sha256: hash.digest("hex") }
}

/** The block size of the file system `dir` is on. */
export function blockBytesOf(dir: string): number {
  try {
    return statfsSync(dir).bsize || DEFAULT_BLOCK_BYTES
  } catch {
    return DEFAULT_BLOCK_BYTES // not made yet (the store makes it with its first entry): the usual size
  }
}

/** A body file's version: a write in place moves its ctime, a replacement changes its inode. */
export function versionOf(path: string, stat: Stats): string {
  return `${path}:${stat.ino}:${stat.ctimeMs}`
}
