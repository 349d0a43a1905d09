import { createHash } from "node:crypto"

/** Byte helpers the stores and the cache share. */

/** The chunks as one array of `size` bytes; a single chunk is returned as it is, uncopied. */
export function concat(chunks: Uint8Array[], size: number): Uint8Array {
  if (chunks.length === 1 && chunks[0]) return chunks[0]
  const bytes = new Uint8Array(size)
  let offset = 0
  for (const chunk of chunks) {
    bytes.set(chunk, offset)
    offset += chunk.byteLength
  }
  return bytes
}

/** sha256, hex: the names the stores give keys, variants and tags, and a small body's digest. */
export function sha256(data: string | Uint8Array): string {
  return createHash("sha256").update(data).digest("hex")
}
