/**
 * The file reads that differ between Bun and Node (the runtime seam of the file store): one of
 * these objects is chosen at start-up and passed to the `FileStore`.
 */
import type * as fs from "node:fs/promises"
import type { Stored } from "./store.ts"

/**
 * The file reads that differ between Bun and Node, chosen once at start-up and passed in.
 * Writes go through node:fs under both runtimes: its writes run off the event loop, so disk and
 * network overlap. Measured on a 512 MiB MISS, Bun's FileSink (which writes on the event loop
 * once its buffer fills) reached a third of the throughput.
 */
export interface FileApi {
  /**
   * A large body for a response, from its file: `handle` is that file, opened without following
   * links and checked, and `size` its length. The body (or its slice) takes the handle over.
   */
  responseBody(path: string, handle: fs.FileHandle, size: number): Promise<Pick<Stored, "body" | "slice">>
}

export const bunFiles: FileApi = {
  // Bun.file lets Bun.serve send by sendfile, but it opens the path again when it sends (given a
  // descriptor instead, it never closes it): a file swapped in between the check and that moment
  // is not seen. Streaming from the checked handle, as under Node, would close that window and
  // cost sendfile on every large hit.
  // A Range is served by the Blob's own slice, with sendfile from the offset.
  async responseBody(path, handle) {
    await handle.close()
    return { body: Bun.file(path) }
  },
}

export const nodeFiles: FileApi = {
  // Streams from the very file that was checked: a swap after the check changes nothing. The
  // whole body or a slice of it, whichever the cache sends, closes the handle.
  responseBody: async (_path, handle, size) => ({
    body: fileStream(handle, 0, size),
    slice: (start, end) => fileStream(handle, start, end),
  }),
}

// A file body is read this many bytes at a time (as node:fs read streams do).
const FILE_READ_BYTES = 64 * 1024

/**
 * Bytes `start` up to `end` of an open file, read at explicit positions as the reader pulls, and
 * the handle closed explicitly once they are read, failed or cancelled: never left to garbage
 * collection (Node's DEP0137). Nothing is read before the first pull.
 */
function fileStream(handle: fs.FileHandle, start: number, end: number): ReadableStream<Uint8Array> {
  let position = start
  let closing: Promise<void> | undefined
  const close = () => (closing ??= handle.close())
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        try {
          const length = Math.min(FILE_READ_BYTES, end - position)
          const { bytesRead, buffer } = await handle.read(Buffer.allocUnsafe(length), 0, length, position)
          if (bytesRead === 0) throw new Error(`the file ended at byte ${position} of ${end}`)
          position += bytesRead
          controller.enqueue(new Uint8Array(buffer.buffer, buffer.byteOffset, bytesRead))
          if (position < end) return
          await close()
          controller.close()
        } catch (error) {
          await close().catch(() => undefined) // the read's failure is what the reader learns
          controller.error(error)
        }
      },
      cancel: () => close(),
    },
    { highWaterMark: 0 },
  )
}
