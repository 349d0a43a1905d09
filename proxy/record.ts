/**
 * --record and --replay: the HAR of what the proxy stores, written as it runs, and a HAR answering
 * requests before the origin does. The format and redaction are proxy/har.ts.
 */

import { type FileHandle, open, readFile } from "node:fs/promises"
import { MemoryStore } from "../cache/memory-store.ts"
import { outcomeOf } from "../cache/outcome.ts"
import type { EntryMeta, Store, Warn } from "../cache/store.ts"
import { Cache, type CacheConfig } from "../cache.ts"
import { HarError, harEntry, harFrame, REDACTED, type Redaction, readHar, redactedUrl, varyHeaders } from "./har.ts"

/** The bytes of a stored body, read whole (a recording holds it whole anyway). */
export async function bodyBytes(body: Uint8Array | Blob | ReadableStream<Uint8Array>): Promise<Uint8Array> {
  return body instanceof Uint8Array ? body : new Uint8Array(await new Response(body).arrayBuffer())
}

/**
 * Writes a HAR of every response the proxy stores, as it stores it. The file is a whole, valid HAR
 * at every moment: each entry is written over the document's closing brackets, followed by them, in
 * one positioned write. So a proxy killed at any point (SIGKILL included) leaves a HAR of every
 * entry completed before, and nothing needs converting at exit. Writes go one at a time, in order.
 */
export class Recorder {
  private queue: Promise<void> = Promise.resolve()
  private entries = 0

  private constructor(
    private readonly file: FileHandle,
    private readonly path: string,
    private readonly tail: string,
    /** Where the next entry goes: the start of the closing brackets. */
    private offset: number,
    private readonly store: Store,
    private readonly redacted: Redaction,
    private readonly warn: Warn,
  ) {}

  /** Starts a recording in `path`, replacing what it held. */
  static async open(path: string, version: string, store: Store, redacted: Redaction, warn: Warn): Promise<Recorder> {
    const { head, tail } = harFrame(version)
    const file = await open(path, "w")
    await file.write(head + tail, 0)
    return new Recorder(file, path, tail, Buffer.byteLength(head), store, redacted, warn)
  }

  /** Records the variant just stored under `key` (the cache's `onStored`). */
  record(key: string, meta: EntryMeta): void {
    this.queue = this.queue.then(() =>
      this.append(key, meta).catch((error) =>
        this.warn("proxy", `--record ${this.path}: ${key} not recorded: ${(error as Error).message}`),
      ),
    )
  }

  private async append(key: string, meta: EntryMeta): Promise<void> {
    const stored = await this.store.get(key, varyHeaders(meta.vary))
    // Gone already (evicted, or replaced by a newer response that is recorded in its turn).
    if (!stored) return
    const entry = harEntry(key.slice("GET ".length), stored.meta, await bodyBytes(stored.body), this.redacted)
    const text = Buffer.from(`${this.entries === 0 ? "" : ",\n"}${JSON.stringify(entry)}`)
    const written = Buffer.concat([text, Buffer.from(this.tail)])
    let done = 0
    while (done < written.byteLength)
      done += (await this.file.write(written, done, written.byteLength - done, this.offset + done)).bytesWritten
    this.offset += text.byteLength
    this.entries++
  }

  /** Waits for the entries under way, then closes the file. */
  async close(): Promise<void> {
    await this.queue
    await this.file.close()
  }
}

/** Query parameters a recording redacted: on replay they match whatever value a request gives (--redact need not be repeated). */
function redactedNames(entries: { url: string }[]): string[] {
  const names = new Set<string>()
  for (const { url } of entries) {
    for (const [name, value] of new URL(url).searchParams) if (value === REDACTED) names.add(name.toLowerCase())
  }
  return [...names]
}

// A replayed entry is never dropped for its age: the recording is what is served.
const NEVER = Number.MAX_SAFE_INTEGER

/**
 * A HAR answering requests before the origin (--replay), matched by the cache's own rules: the
 * method (GET, and HEAD from it), the URL with --ignore-query applied, and the recorded Vary
 * selection. Requests are redacted as the recording was before they are compared.
 */
export class Replay {
  private constructor(
    private readonly cache: Cache<MemoryStore>,
    private readonly redacted: Redaction,
  ) {}

  /**
   * Loads `path`: entries for another origin than `origin` are left out with one warning. A file
   * that cannot be read, or an entry that cannot be used, is a HarError.
   */
  static async load(path: string, origin: string, config: CacheConfig, redacted: Redaction): Promise<Replay> {
    const text = await readFile(path, "utf8").catch((error: NodeJS.ErrnoException) => {
      throw new HarError(error.code === "ENOENT" ? "no such file" : error.message)
    })
    const { entries } = readHar(text, new Set(config.ignoreQuery), redacted, Date.now())
    const ours = entries.filter(({ url }) => url === origin || url.startsWith(`${origin}/`))
    if (ours.length < entries.length) {
      const other = entries.find((entry) => !ours.includes(entry))?.url
      config.warn(
        "proxy",
        `--replay ${path}: ${entries.length - ours.length} entries are for another origin than ${origin} (e.g. ${other}) and are not replayed`,
      )
    }
    const store = new MemoryStore({ maxBytes: Number.MAX_SAFE_INTEGER })
    for (const { key, meta, body } of ours)
      await store.put(key, { ...meta, deleteAt: NEVER }, new Response(body).body as ReadableStream<Uint8Array>)
    return new Replay(new Cache(store, { ...config, offline: true, onStored: undefined }), new Set([...redacted, ...redactedNames(ours)]))
  }

  /** The recorded answer to this request, or undefined when the HAR has none. */
  async respond(method: string, headers: Headers, target: string): Promise<Response | undefined> {
    const response = await this.cache.respond(method, this.redactedHeaders(headers), redactedUrl(target, this.redacted), () =>
      Promise.reject(new Error("a replay never asks the origin")),
    )
    if (outcomeOf(response).kind !== "miss") return response
    await response.body?.cancel()
    return undefined
  }

  private redactedHeaders(headers: Headers): Headers {
    const named = [...this.redacted].filter((name) => headers.has(name))
    if (named.length === 0) return headers
    const redacted = new Headers(headers)
    for (const name of named) redacted.set(name, REDACTED)
    return redacted
  }
}
