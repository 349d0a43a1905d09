/**
 * The `Store` contract (store.ts) as one suite, `storeContract(name, makeStore, options)`, that
 * `store.test.ts` runs over every store: each test is one rule of the contract, checked only
 * through the `Store` interface and the capabilities the store has (each member of each of them),
 * so any new store can join the list. Here too the helpers its rules share.
 */
import { describe, expect, setSystemTime, test } from "bun:test"
import { meta, nextTask } from "../proxy/test.fixture.ts"
import {
  type EntryMeta,
  hasDrops,
  hasLifecycle,
  hearsReads,
  isListing,
  isShared,
  type KeyMatch,
  type Listing,
  type Store,
  type Stored,
  type TierStats,
} from "./store.ts"

// ───────────────────────────── helpers ─────────────────────────────

const KiB = 1024
export const MiB = 1024 * KiB
// Roomy enough for every test but the eviction one, which passes its own bound.
export const AMPLE_BYTES = 64 * MiB

/** A store under test, what it warned about, and the tiers its byte bound applies to. */
interface Fixture {
  /** Every store lists (the admin API needs it); its other capabilities are its own. */
  store: Store & Listing
  /** A second store over the same entries, as another process would open it: for stores shared between processes. */
  sibling?: () => Promise<Store>
  warnings: string[]
  /** The stats of the tier(s) that `maxBytes` bounds (for the tiered store, the back one). */
  boundedStats(): Promise<TierStats[]>
  [Symbol.asyncDispose](): Promise<void>
}

/** A store of this byte bound, keeping at most `maxVariants` variants per key. */
export type MakeStore = (maxBytes: number, maxVariants?: number) => Fixture

/**
 * A body that hands out one chunk per pull and yields to the event loop between chunks, so
 * that two puts in flight really interleave. It ends cleanly, or fails like an origin that cut
 * the response short.
 */
function chunkedStream(chunks: Uint8Array[], end: "close" | "fail"): ReadableStream<Uint8Array> {
  let next = 0
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      await nextTask()
      const chunk = chunks[next++]
      if (chunk) controller.enqueue(chunk)
      else if (end === "close") controller.close()
      else controller.error(new Error("the origin's body was cut short"))
    },
  })
}

export const streamOf = (...chunks: Uint8Array[]) => chunkedStream(chunks, "close")
const failingStreamOf = (...chunks: Uint8Array[]) => chunkedStream(chunks, "fail")

export function text(value: string): Uint8Array {
  return new TextEncoder().encode(value)
}

/** `total` bytes of `byte`, in chunks of `chunkSize`. */
function filled(byte: number, total: number, chunkSize = 16 * KiB): Uint8Array[] {
  const chunks: Uint8Array[] = []
  for (let offset = 0; offset < total; offset += chunkSize) chunks.push(new Uint8Array(Math.min(chunkSize, total - offset)).fill(byte))
  return chunks
}

/** Deterministic noise (xorshift32): incompressible, and the same on every run. */
function pseudoRandomBytes(length: number, seed = 0x9e3779b9): Uint8Array {
  const bytes = new Uint8Array(length)
  let state = seed >>> 0
  for (let i = 0; i < length; i++) {
    state ^= state << 13
    state >>>= 0
    state ^= state >>> 17
    state ^= state << 5
    state >>>= 0
    bytes[i] = state & 0xff
  }
  return bytes
}

function chunked(bytes: Uint8Array, chunkSize: number): Uint8Array[] {
  const chunks: Uint8Array[] = []
  for (let offset = 0; offset < bytes.length; offset += chunkSize) chunks.push(bytes.subarray(offset, offset + chunkSize))
  return chunks
}

function concat(chunks: Uint8Array[]): Uint8Array {
  const whole = new Uint8Array(chunks.reduce((sum, chunk) => sum + chunk.length, 0))
  let offset = 0
  for (const chunk of chunks) {
    whole.set(chunk, offset)
    offset += chunk.length
  }
  return whole
}

/** A stored body read whole, whatever form the store gave it in. */
function bytesOf(stored: Stored): Promise<Uint8Array> {
  return new Response(stored.body).bytes()
}

/** Byte-for-byte equality, without printing megabytes when it fails. */
function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length))
}

function request(headers: Record<string, string> = {}): Headers {
  return new Headers(headers)
}

/** The body of what `get` finds, as text, or undefined on a miss. */
async function textAt(store: Store, key: string, headers: Headers = request()): Promise<string | undefined> {
  const stored = await store.get(key, headers)
  return stored && new TextDecoder().decode(await bytesOf(stored))
}

async function putText(store: Store, key: string, body: string, overrides: Partial<EntryMeta> = {}): Promise<void> {
  await store.put(key, meta(overrides), streamOf(text(body)))
}

/** Every page of a listing, following cursors until the last page. */
async function allPages(store: Listing, options: { prefix?: string; limit?: number }) {
  const pages = [await store.list(options)]
  for (let cursor = pages[0]!.cursor; cursor !== undefined; cursor = pages.at(-1)!.cursor) {
    pages.push(await store.list({ ...options, cursor }))
    // A listing that never ends would hang the suite: 100 pages is far more than any test makes.
    if (pages.length > 100) throw new Error("the listing does not end")
  }
  return pages
}

function sum(tiers: TierStats[], field: "entries" | "bytes"): number {
  return tiers.reduce((total, tier) => total + tier[field], 0)
}

/**
 * The contract every store keeps. A store whose byte bound is its server's own (Redis's
 * `maxmemory` with an approximate LRU) is not held to the exact eviction order: `boundedBy: "server"`.
 */
/**
 * A rule of a capability some stores lack: registered only for the stores that have it, so a run
 * skips nothing (CI counts a skipped test as a failure).
 */
function ruleFor(applies: boolean) {
  return (name: string, rule: () => Promise<void>, timeoutMs?: number) => {
    if (applies) test(name, rule, timeoutMs)
  }
}

/** The capabilities beyond the core and the listing, as the guards name them. */
export type Capability = "claims" | "drops" | "read-notices" | "lifecycle"

interface ContractOptions {
  /** Exactly the capabilities the store has. */
  capabilities: Capability[]
  boundedBy?: "store" | "server"
  /** What one entry with a body of this many bytes takes against the bound. @default the body plus 1 KiB of meta */
  entryBytes?: (bodyBytes: number) => number
}

export function storeContract(
  name: string,
  makeStore: MakeStore,
  { capabilities, boundedBy = "store", entryBytes = (bodyBytes) => bodyBytes + 1 * KiB }: ContractOptions,
) {
  const has = (capability: Capability) => capabilities.includes(capability)
  /** A ready store; `await using` closes it and removes its files. */
  async function open(maxBytes = AMPLE_BYTES, maxVariants?: number): Promise<Fixture> {
    const fixture = makeStore(maxBytes, maxVariants)
    try {
      if (hasLifecycle(fixture.store)) await fixture.store.ready()
    } catch (error) {
      // Not yet handed to `await using`: its directory is ours to remove.
      await fixture[Symbol.asyncDispose]()
      throw error
    }
    return fixture
  }

  describe(name, () => {
    test("bodies and metas come back exactly as they were put", async () => {
      await using fixture = await open()
      const { store } = fixture

      // Every byte value, so no text decoding or line-ending translation can hide.
      const allByteValues = new Uint8Array(256 * 16).map((_, i) => i % 256)
      const binaryMeta = meta({
        status: 203,
        headers: [
          ["content-type", "application/octet-stream"],
          ["set-cookie", "a=1; Path=/"],
          ["set-cookie", "b=2; Path=/"],
          ["x-note", "ünïcödé kept"],
        ],
        etag: '"v1"',
        lastModified: "Wed, 21 Oct 2015 07:28:00 GMT",
      })
      await store.put("GET https://example.test/binary", binaryMeta, streamOf(...chunked(allByteValues, 1000)))
      const binary = await store.get("GET https://example.test/binary", request())
      expect(binary).toBeDefined()
      expect(binary!.size).toBe(allByteValues.length)
      expect(sameBytes(await bytesOf(binary!), allByteValues)).toBe(true)
      // Two Set-Cookie pairs stay two pairs, in order.
      expect(binary!.meta).toEqual(binaryMeta)

      const emptyMeta = meta({ status: 204 })
      await store.put("GET https://example.test/empty", emptyMeta, streamOf())
      const empty = await store.get("GET https://example.test/empty", request())
      expect(empty).toBeDefined()
      expect(empty!.size).toBe(0)
      expect((await bytesOf(empty!)).length).toBe(0)
      expect(empty!.meta).toEqual(emptyMeta)

      // Larger than the tiered store's memory body limit: it comes back from the back store.
      const large = pseudoRandomBytes(3 * 1000 * 1000)
      const largeMeta = meta()
      await store.put("GET https://example.test/large", largeMeta, streamOf(...chunked(large, 64 * KiB)))
      const stored = await store.get("GET https://example.test/large", request())
      expect(stored).toBeDefined()
      expect(stored!.size).toBe(large.length)
      expect(sameBytes(await bytesOf(stored!), large)).toBe(true)
      expect(stored!.meta).toEqual(largeMeta)

      expect(fixture.warnings).toEqual([])
    })

    test("any range of a stored body can be read without the rest: bytes and Blobs slice themselves, a stream comes with a slice", async () => {
      await using fixture = await open()
      const { store } = fixture
      const small = pseudoRandomBytes(1000)
      const large = pseudoRandomBytes(3 * 1000 * 1000)
      await store.put("GET https://example.test/small", meta(), streamOf(small))
      await store.put("GET https://example.test/large", meta(), streamOf(...chunked(large, 64 * KiB)))
      const CHUNK = 256 * KiB // the Redis store's chunk: ranges that start, end and straddle on its edges
      const ranges = [
        [0, 1],
        [999, 1000],
        [0, CHUNK],
        [CHUNK - 1, CHUNK + 1],
        [CHUNK, 3 * CHUNK + 7],
        [large.length - 5, large.length],
      ]
      for (const [key, bytes] of [
        ["small", small],
        ["large", large],
      ] as const) {
        for (const [start, end] of ranges.filter(([, end]) => end! <= bytes.length) as [number, number][]) {
          const stored = await store.get(`GET https://example.test/${key}`, request())
          const { body } = stored!
          const slice =
            body instanceof Uint8Array
              ? body.subarray(start, end)
              : body instanceof Blob
                ? body.slice(start, end)
                : stored!.slice!(start, end)
          expect(sameBytes(await new Response(slice).bytes(), bytes.subarray(start, end))).toBe(true)
        }
      }
      expect(fixture.warnings).toEqual([])
    })

    test("variants told apart by Vary live side by side under one key", async () => {
      await using fixture = await open()
      const { store } = fixture
      const key = "GET https://example.test/greeting"
      await putText(store, key, "hello", { vary: { "accept-language": "en" } })
      await putText(store, key, "bonjour", { vary: { "accept-language": "fr" } })

      expect(await textAt(store, key, request({ "accept-language": "en" }))).toBe("hello")
      expect(await textAt(store, key, request({ "accept-language": "fr" }))).toBe("bonjour")
      // A language nobody stored, or no language at all, is a vary-miss: the key is there, no variant fits.
      expect(await store.get(key, request({ "accept-language": "de" }))).toBeUndefined()
      expect(await store.get(key, request())).toBeUndefined()
      expect(await store.has(key)).toBe(true)

      // null records "the request had no such header": it matches exactly those requests.
      await putText(store, key, "no language", { vary: { "accept-language": null } })
      expect(await textAt(store, key, request())).toBe("no language")
      expect(await textAt(store, key, request({ "accept-language": "en" }))).toBe("hello")
      expect(await textAt(store, key, request({ "accept-language": "fr" }))).toBe("bonjour")

      // Stored selections are normalised; a request's white space around commas does not matter.
      await putText(store, key, "either", { vary: { "accept-language": "en,fr" } })
      expect(await textAt(store, key, request({ "accept-language": "en ,  fr" }))).toBe("either")

      expect(fixture.warnings).toEqual([])
    })

    test("past maxVariants a key's least recently used variant goes; each request finds the one it selects", async () => {
      await using fixture = await open(AMPLE_BYTES, 3)
      const { store } = fixture
      const key = "GET https://example.test/by-agent"
      const agent = (name: string) => request({ "user-agent": name })
      // The clock moves between steps: an order kept by time must not rest on two steps sharing a millisecond.
      const step = () => setSystemTime(new Date(Date.now() + 1000))
      for (const name of ["a", "b", "c"]) {
        await putText(store, key, name, { vary: { "user-agent": name } })
        step()
      }
      // Read "a": "b" is now the least recently used.
      expect(await textAt(store, key, agent("a"))).toBe("a")
      step()
      await putText(store, key, "d", { vary: { "user-agent": "d" } })

      expect(await store.get(key, agent("b"))).toBeUndefined()
      for (const name of ["a", "c", "d"]) expect(await textAt(store, key, agent(name))).toBe(name)
      expect((await store.variants(key)).map(({ meta }) => meta.vary["user-agent"]).sort()).toEqual(["a", "c", "d"])
      // Another key's variants are no part of this one's bound.
      await putText(store, "GET https://example.test/other", "other", { vary: { "user-agent": "e" } })
      expect((await store.variants(key)).length).toBe(3)
      expect(fixture.warnings).toEqual([])
    })

    test("variants of different Vary lists under one key are each found", async () => {
      await using fixture = await open()
      const { store } = fixture
      const key = "GET https://example.test/vary-changed"
      const at = (ms: number) => ({ responseTime: Date.now() + ms })
      await putText(store, key, "by language", { vary: { "accept-language": "en" }, ...at(1) })
      await putText(store, key, "by both", { vary: { "accept-encoding": "gzip", "accept-language": "fr" }, ...at(2) })
      await putText(store, key, "by nothing", { vary: {}, ...at(3) })
      expect(await textAt(store, key, request({ "accept-language": "en" }))).toBe("by nothing") // the most recent match
      expect(await textAt(store, key, request({ "accept-encoding": "gzip", "accept-language": "fr" }))).toBe("by nothing")
      await store.delete(key)
      await putText(store, key, "by language", { vary: { "accept-language": "en" } })
      await putText(store, key, "by both", { vary: { "accept-encoding": "gzip", "accept-language": "fr" } })
      expect(await textAt(store, key, request({ "accept-language": "en" }))).toBe("by language")
      expect(await textAt(store, key, request({ "accept-encoding": "gzip", "accept-language": "fr" }))).toBe("by both")
      expect(await store.get(key, request({ "accept-encoding": "gzip", "accept-language": "de" }))).toBeUndefined()
      expect(fixture.warnings).toEqual([])
    })

    test("when several variants match, the most recent response is returned", async () => {
      await using fixture = await open()
      const { store } = fixture
      const key = "GET https://example.test/changed-vary"
      // The origin changed its Vary: both selections fit a request that sends both headers.
      const now = Date.now()
      await putText(store, key, "newer", { vary: { "accept-encoding": "gzip" }, responseTime: now })
      await putText(store, key, "older", { vary: { "accept-language": "en" }, responseTime: now - 10_000 })

      expect(await textAt(store, key, request({ "accept-language": "en", "accept-encoding": "gzip" }))).toBe("newer")
      expect(await textAt(store, key, request({ "accept-language": "en" }))).toBe("older")
    })

    test("the most recent matching variant wins, however large its body", async () => {
      await using fixture = await open()
      const { store } = fixture
      const key = "GET https://example.test/changed-vary-large"
      // Larger than the tiered store's memory body limit: a tier in front may hold only the older, small one.
      const large = pseudoRandomBytes(2 * MiB)
      const now = Date.now()
      await putText(store, key, "older", { vary: { "accept-language": "en" }, responseTime: now - 10_000 })
      await store.put(key, meta({ vary: { "accept-encoding": "gzip" }, responseTime: now }), streamOf(...chunked(large, 64 * KiB)))

      const stored = await store.get(key, request({ "accept-language": "en", "accept-encoding": "gzip" }))
      expect(stored?.size).toBe(large.length)
      expect(sameBytes(await bytesOf(stored!), large)).toBe(true)
      expect(await textAt(store, key, request({ "accept-language": "en" }))).toBe("older")
    })

    test("a put whose body fails rejects and leaves nothing, and never replaces what was there", async () => {
      await using fixture = await open()
      const { store } = fixture

      const fresh = "GET https://example.test/cut-short"
      await expect(store.put(fresh, meta(), failingStreamOf(text("half of "), text("a body")))).rejects.toThrow()
      expect(await store.get(fresh, request())).toBeUndefined()
      expect(await store.has(fresh)).toBe(false)

      const existing = "GET https://example.test/kept"
      const keptMeta = meta({ vary: { "accept-language": "en" }, etag: '"kept"' })
      await store.put(existing, keptMeta, streamOf(text("the whole "), text("old body")))
      const failing = store.put(
        existing,
        meta({ vary: { "accept-language": "en" }, etag: '"broken"', responseTime: Date.now() + 1000 }),
        failingStreamOf(text("new "), text("but cut")),
      )
      await expect(failing).rejects.toThrow()
      const stored = await store.get(existing, request({ "accept-language": "en" }))
      expect(stored).toBeDefined()
      expect(stored!.meta).toEqual(keptMeta)
      expect(stored!.size).toBe("the whole old body".length)
      expect(new TextDecoder().decode(await bytesOf(stored!))).toBe("the whole old body")
    })

    test("two puts of one variant at once leave one whole entry, never a mix", async () => {
      await using fixture = await open()
      const { store } = fixture
      const key = "GET https://example.test/raced"
      // Different lengths and bytes, so a mix of the two or a torn size cannot pass for either.
      const first = concat(filled(0x41, 200 * KiB))
      const second = concat(filled(0x42, 300 * KiB))
      await Promise.all([
        store.put(key, meta({ etag: '"first"' }), streamOf(...chunked(first, 16 * KiB))),
        store.put(key, meta({ etag: '"second"' }), streamOf(...chunked(second, 16 * KiB))),
      ])

      const stored = await store.get(key, request())
      expect(stored).toBeDefined()
      const body = await bytesOf(stored!)
      // The meta and the body must come from the same put.
      const expected = stored!.meta.etag === '"first"' ? first : second
      expect(stored!.size).toBe(expected.length)
      expect(sameBytes(body, expected)).toBe(true)
      // One variant, not two.
      const page = await store.list({ prefix: key })
      expect(page.entries.filter((entry) => entry.key === key)).toHaveLength(1)
      expect(fixture.warnings).toEqual([])
    })

    test("reads while a variant is being replaced find the old entry or the new one, never nothing", async () => {
      await using fixture = await open()
      const { store } = fixture
      const key = "GET https://example.test/replaced"
      // Each write's body length is tied to its etag, so a meta paired with another write's body shows.
      const lengthOf = (round: number) => 100 + round
      const write = (round: number) =>
        store.put(key, meta({ etag: `"${round}"` }), streamOf(new Uint8Array(lengthOf(round)).fill(round % 256)))
      await write(0)

      // The race is between a reader's steps and a writer's: many rounds make a bad interleaving
      // likely, whatever the machine's speed. Nothing here depends on how long anything takes.
      let writing = true
      const problems = new Map<string, number>() // what went wrong → how often: one line each when it fails
      const note = (problem: string) => problems.set(problem, (problems.get(problem) ?? 0) + 1)
      const reader = async () => {
        while (writing) {
          const found = store.get(key, request())
          // A hit answered at once never yields: the writer must get its turn.
          if (!(found instanceof Promise)) await nextTask()
          const stored = await found
          if (!stored) note("miss")
          else if (stored.size !== lengthOf(Number(stored.meta.etag?.slice(1, -1)))) note("a size that is not its meta's")
        }
      }
      const readers = Array.from({ length: 8 }, reader)
      try {
        for (let round = 1; round <= 500; round++) await write(round)
      } finally {
        writing = false
        await Promise.all(readers)
      }

      expect(Object.fromEntries(problems)).toEqual({})
      expect((await store.get(key, request()))?.meta.etag).toBe('"500"')
      expect(fixture.warnings).toEqual([])
    })

    test("update replaces a variant's meta and keeps its body; a missing variant is not updated", async () => {
      await using fixture = await open()
      const { store } = fixture
      const key = "GET https://example.test/revalidated"
      const vary = { "accept-language": "en" }
      await putText(store, key, "the body", { vary, etag: '"v1"' })

      // What a 304 brings: new headers and a new response time for the same representation.
      const revalidated = meta({
        vary,
        etag: '"v1"',
        headers: [
          ["content-type", "text/plain"],
          ["x-revalidated", "yes"],
        ],
        responseTime: Date.now() + 5000,
        deleteAt: Date.now() + 900_000,
      })
      expect(await store.update(key, revalidated)).toBe(true)
      const stored = await store.get(key, request({ "accept-language": "en" }))
      expect(stored).toBeDefined()
      expect(stored!.meta).toEqual(revalidated)
      expect(stored!.size).toBe("the body".length)
      expect(new TextDecoder().decode(await bytesOf(stored!))).toBe("the body")

      // Another selection under the same key, or a key never stored: nothing to update, nothing made.
      expect(await store.update(key, meta({ vary: { "accept-language": "fr" } }))).toBe(false)
      expect(await store.get(key, request({ "accept-language": "fr" }))).toBeUndefined()
      expect(await store.update("GET https://example.test/never-stored", meta())).toBe(false)
      expect(await store.has("GET https://example.test/never-stored")).toBe(false)
      expect(fixture.warnings).toEqual([])
    })

    test("delete removes every variant of a key and no other key", async () => {
      await using fixture = await open()
      const { store } = fixture
      const key = "GET https://example.test/doomed"
      const other = "GET https://example.test/doomed-not"
      await putText(store, key, "en", { vary: { "accept-language": "en" } })
      await putText(store, key, "fr", { vary: { "accept-language": "fr" } })
      await putText(store, other, "stays")

      await store.delete(key)
      expect(await store.has(key)).toBe(false)
      expect(await store.get(key, request({ "accept-language": "en" }))).toBeUndefined()
      expect(await store.get(key, request({ "accept-language": "fr" }))).toBeUndefined()
      expect((await store.list({ prefix: key })).entries.filter((entry) => entry.key === key)).toEqual([])
      expect(await textAt(store, other)).toBe("stays")
      // Deleting what is not there is no error.
      await store.delete("GET https://example.test/never-stored")
      expect(fixture.warnings).toEqual([])
    })

    test("clear removes everything", async () => {
      await using fixture = await open()
      const { store } = fixture
      for (let i = 0; i < 5; i++) await putText(store, `GET https://example.test/clear/${i}`, `body ${i}`)
      await putText(store, "GET https://example.test/clear/0", "fr", { vary: { "accept-language": "fr" } })

      await store.clear()
      expect(sum(await store.stats(), "entries")).toBe(0)
      expect((await store.list()).entries).toEqual([])
      expect(await store.has("GET https://example.test/clear/0")).toBe(false)
      expect(await store.get("GET https://example.test/clear/1", request())).toBeUndefined()

      // The store still works after being cleared.
      await putText(store, "GET https://example.test/clear/after", "again")
      expect(await textAt(store, "GET https://example.test/clear/after")).toBe("again")
      expect(fixture.warnings).toEqual([])
    })

    test("an entry past its deleteAt is never returned", async () => {
      await using fixture = await open()
      const { store } = fixture

      // Stored already expired (a response whose every window has passed).
      const dead = "GET https://example.test/dead-on-arrival"
      await putText(store, dead, "too late", { deleteAt: Date.now() - 1000 })
      expect(await store.get(dead, request())).toBeUndefined()

      // Alive when stored, expired once the clock passes deleteAt.
      const start = Date.now()
      const mortal = "GET https://example.test/mortal"
      await putText(store, mortal, "alive", { deleteAt: start + 60_000 })
      expect(await textAt(store, mortal)).toBe("alive")
      setSystemTime(new Date(start + 120_000))
      expect(await store.get(mortal, request())).toBeUndefined()
    })

    // Redis evicts by its own maxmemory-policy, approximately: no exact order to check.
    if (boundedBy === "store") {
      test("the byte bound evicts the least recently used entry and keeps the recently read", async () => {
        // Room for three 10 KiB bodies with their metas, not four.
        const bodyBytes = 10 * KiB
        const maxBytes = 3 * entryBytes(bodyBytes)
        await using fixture = await open(maxBytes)
        const { store } = fixture
        const key = (name: string) => `GET https://example.test/lru/${name}`
        const bodies = new Map(["a", "b", "c", "d"].map((name, i) => [name, pseudoRandomBytes(bodyBytes, i + 1)]))

        // One clock step per operation, so "least recently used" has one answer whichever clock a store keeps.
        let clock = Date.now()
        const tick = () => {
          clock += 1000
          setSystemTime(new Date(clock))
        }
        for (const name of ["a", "b", "c"]) {
          tick()
          await store.put(key(name), meta(), streamOf(...chunked(bodies.get(name)!, 4 * KiB)))
        }
        tick()
        const read = await store.get(key("a"), request())
        expect(read).toBeDefined()
        expect(sameBytes(await bytesOf(read!), bodies.get("a")!)).toBe(true)
        tick()
        await store.put(key("d"), meta(), streamOf(...chunked(bodies.get("d")!, 4 * KiB)))

        expect(await store.has(key("b"))).toBe(false)
        expect(await store.get(key("b"), request())).toBeUndefined()
        for (const name of ["a", "c", "d"]) {
          const stored = await store.get(key(name), request())
          expect(stored, `${name} should still be stored`).toBeDefined()
          expect(sameBytes(await bytesOf(stored!), bodies.get(name)!)).toBe(true)
        }
        expect(sum(await fixture.boundedStats(), "bytes")).toBeLessThanOrEqual(maxBytes)
        expect(fixture.warnings).toEqual([])
      })

      test("an entry larger than the whole bound is not kept, and evicts nothing", async () => {
        const bodyBytes = 10 * KiB
        const maxBytes = 3 * entryBytes(bodyBytes)
        await using fixture = await open(maxBytes)
        const { store } = fixture
        const key = (name: string) => `GET https://example.test/oversized/${name}`
        await store.put(key("a"), meta(), streamOf(pseudoRandomBytes(bodyBytes, 1)))
        await store.put(key("b"), meta(), streamOf(pseudoRandomBytes(bodyBytes, 2)))

        // Not a failure of the body: the put succeeds, there is just no room for what it brought.
        await store.put(key("huge"), meta(), streamOf(...chunked(pseudoRandomBytes(maxBytes + 1, 3), 4 * KiB)))

        expect((await store.get(key("huge"), request()))?.size).toBeUndefined() // the size, not 40 KiB of body, when it fails
        expect(await store.has(key("huge"))).toBe(false)
        // One response that could never fit must not flush everything else on its way out.
        expect(await store.has(key("a"))).toBe(true)
        expect(await store.has(key("b"))).toBe(true)
        expect(sum(await fixture.boundedStats(), "bytes")).toBeLessThanOrEqual(maxBytes)
      })
    }

    test("list pages through every key once, each key with all its variants", async () => {
      await using fixture = await open()
      const { store } = fixture
      const itemKey = (i: number) => `GET https://example.test/items/${String(i).padStart(2, "0")}`
      const variantsOf = new Map<string, number>()
      for (let i = 0; i < 25; i++) {
        // Every fifth key has a second variant, to check variants are never split across pages.
        await putText(store, itemKey(i), `item ${i}`, { vary: { "accept-language": "en" } })
        variantsOf.set(itemKey(i), 1)
        if (i % 5 === 0) {
          await putText(store, itemKey(i), `article ${i}`, { vary: { "accept-language": "fr" } })
          variantsOf.set(itemKey(i), 2)
        }
      }

      const pages = await allPages(store, { limit: 10 })
      expect(pages.map((page) => new Set(page.entries.map((entry) => entry.key)).size)).toEqual([10, 10, 5])
      expect(pages.map((page) => page.cursor === undefined)).toEqual([false, false, true])
      const seenOn = new Map<string, number>() // key → the page it was listed on
      for (const [index, page] of pages.entries()) {
        for (const entry of page.entries) {
          // A key on two pages would be listed twice, or have its variants split.
          expect(seenOn.get(entry.key) ?? index).toBe(index)
          seenOn.set(entry.key, index)
          // Each listed variant carries its own size, not its key's first variant's.
          const body = `${entry.meta.vary["accept-language"] === "fr" ? "article" : "item"} ${Number(entry.key.slice(-2))}`
          expect(entry.size).toBe(body.length)
        }
      }
      expect([...seenOn.keys()].sort()).toEqual([...variantsOf.keys()].sort())
      const listedVariants = new Map<string, number>()
      for (const entry of pages.flatMap((page) => page.entries)) listedVariants.set(entry.key, (listedVariants.get(entry.key) ?? 0) + 1)
      expect(Object.fromEntries(listedVariants)).toEqual(Object.fromEntries(variantsOf))

      // A prefix lists only the keys that start with it.
      await putText(store, "GET https://other.test/one", "1")
      await putText(store, "GET https://other.test/two", "2")
      const other = await allPages(store, { prefix: "GET https://other.test/", limit: 10 })
      expect(other.flatMap((page) => page.entries.map((entry) => entry.key)).sort()).toEqual([
        "GET https://other.test/one",
        "GET https://other.test/two",
      ])
      const items = await allPages(store, { prefix: "GET https://example.test/items/1", limit: 10 })
      expect(new Set(items.flatMap((page) => page.entries.map((entry) => entry.key)))).toEqual(
        new Set(Array.from({ length: 10 }, (_, i) => itemKey(10 + i))),
      )
      expect(fixture.warnings).toEqual([])
    })

    test("variants lists one key's live variants, each with the tiers that hold it", async () => {
      await using fixture = await open()
      const { store } = fixture
      const key = "GET https://example.test/variants"
      await putText(store, key, "english", { vary: { "accept-language": "en" } })
      await putText(store, key, "français", { vary: { "accept-language": "fr" } })
      await putText(store, `${key}/other`, "other")
      const variants = await store.variants(key)
      expect(variants.map((v) => [v.key, v.meta.vary["accept-language"], v.size]).sort()).toEqual([
        [key, "en", 7],
        [key, "fr", 9],
      ])
      for (const variant of variants) expect(variant.tiers.length).toBeGreaterThan(0)
      // Listing names the same tiers as variants does.
      const listed = (await store.list({ prefix: key })).entries.filter((entry) => entry.key === key)
      expect(listed.map((entry) => entry.tiers)).toEqual(variants.map((variant) => variant.tiers))
      expect(await store.variants("GET https://example.test/none")).toEqual([])
      await store.delete(key)
      expect(await store.variants(key)).toEqual([])
      expect(fixture.warnings).toEqual([])
    })

    test("tagged finds the keys whose entries carry a tag, through its index, and none that lost it", async () => {
      await using fixture = await open()
      const { store } = fixture
      const key = (name: string) => `GET https://example.test/tagged/${name}`
      await putText(store, key("a"), "a", { tags: ["product-1", "all"] })
      await putText(store, key("b"), "b", { tags: ["all"] })
      await putText(store, key("c"), "c", { tags: ["product-1"], vary: { "accept-language": "fr" } })
      await putText(store, key("c"), "c", { vary: { "accept-language": "en" } })
      await putText(store, key("untagged"), "u")
      expect((await store.tagged("product-1")).sort()).toEqual([key("a"), key("c")])
      expect((await store.tagged("all")).sort()).toEqual([key("a"), key("b")])
      expect(await store.tagged("nothing")).toEqual([])
      // Replaced without the tag, deleted, or expired: no longer found.
      await putText(store, key("a"), "a2", { tags: ["all"] })
      await store.delete(key("c"))
      expect(await store.tagged("product-1")).toEqual([])
      setSystemTime(Date.now() + 700_000)
      expect(await store.tagged("all")).toEqual([])
      // A tag's entries stored again are found again.
      setSystemTime()
      await putText(store, key("c"), "c", { tags: ["product-1"] })
      expect(await store.tagged("product-1")).toEqual([key("c")])
      expect(fixture.warnings).toEqual([])
    })

    test("it has exactly its capabilities, each whole", async () => {
      await using fixture = await open()
      const { store } = fixture
      expect({
        listing: isListing(store),
        claims: isShared(store),
        drops: hasDrops(store),
        "read-notices": hearsReads(store),
        lifecycle: hasLifecycle(store),
      }).toEqual({
        listing: true,
        claims: has("claims"),
        drops: has("drops"),
        "read-notices": has("read-notices"),
        lifecycle: has("lifecycle"),
      })
      const members = { claims: ["claim", "landed"], drops: ["onDrop"], "read-notices": ["used"], lifecycle: ["ready", "ping", "close"] }
      for (const [capability, names] of Object.entries(members))
        for (const name of names) expect(name in store, `${name} (${capability})`).toBe(has(capability as Capability))
      for (const name of ["list", "variants", "tagged", "stats"]) expect(name in store, name).toBe(true)
    })

    // `ready` opens every test (`open`) and `close` ends it (the fixture's dispose).
    ruleFor(has("lifecycle"))("ping answers while the store can be used", async () => {
      await using fixture = await open()
      const { store } = fixture
      if (!hasLifecycle(store)) throw new Error("no lifecycle")
      await store.ping()
      await putText(store, "GET https://example.test/ping", "pong")
      await store.ping()
      expect(fixture.warnings).toEqual([])
    })

    ruleFor(has("drops") && boundedBy === "store")("a drop listener hears of each key evicted to keep the bound", async () => {
      const bodyBytes = 16 * KiB
      await using fixture = await open(3 * entryBytes(bodyBytes))
      const { store } = fixture
      if (!hasDrops(store)) throw new Error("no drop notices")
      const dropped: (string | null | KeyMatch)[] = []
      store.onDrop((key) => dropped.push(key))
      const key = (name: string) => `GET https://example.test/drops/${name}`
      for (const name of ["a", "b", "c", "d", "e"])
        await store.put(key(name), meta(), streamOf(pseudoRandomBytes(bodyBytes, name.charCodeAt(0))))
      expect(dropped.length).toBeGreaterThan(0)
      for (const gone of dropped) {
        expect(gone).not.toBeNull()
        expect(await store.has(gone as string)).toBe(false)
      }
      expect(fixture.warnings).toEqual([])
    })

    ruleFor(has("drops") && boundedBy === "server")("a drop listener hears of a key another process changed, and of a clear", async () => {
      await using fixture = await open()
      const { store, sibling } = fixture
      if (!hasDrops(store) || !sibling) throw new Error("no drop notices, or no second process")
      const other = await sibling()
      const dropped: (string | null | KeyMatch)[] = []
      store.onDrop((key) => dropped.push(key))
      await putText(other, "GET https://example.test/drops/a", "a")
      await other.delete("GET https://example.test/drops/a")
      await other.clear()
      for (let waited = 0; dropped.length < 3 && waited < 2000; waited += 10) await Bun.sleep(10)
      expect(dropped).toContain("GET https://example.test/drops/a")
      expect(dropped).toContain(null)
      expect(fixture.warnings).toEqual([])
    })

    ruleFor(has("read-notices"))("a read served in front counts as a read for the LRU order", async () => {
      const bodyBytes = 16 * KiB
      await using fixture = await open(3 * entryBytes(bodyBytes))
      const { store } = fixture
      if (!hearsReads(store)) throw new Error("no read notices")
      const key = (name: string) => `GET https://example.test/used/${name}`
      let clock = Date.now()
      const tick = () => {
        clock += 1000
        setSystemTime(new Date(clock))
      }
      tick()
      await store.put(key("a"), meta(), streamOf(pseudoRandomBytes(bodyBytes, 1)))
      const a = await store.get(key("a"), request())
      if (!a) throw new Error("a was not stored")
      await bytesOf(a)
      for (const name of ["b", "c"]) {
        tick()
        await store.put(key(name), meta(), streamOf(pseudoRandomBytes(bodyBytes, 2)))
      }
      // Least recently used is a; a tier in front serves it, and now b is.
      tick()
      store.used(key("a"), a.meta)
      tick()
      await store.put(key("d"), meta(), streamOf(pseudoRandomBytes(bodyBytes, 3)))
      expect(await store.has(key("a"))).toBe(true)
      expect(await store.has(key("b"))).toBe(false)
      expect(fixture.warnings).toEqual([])
    })

    ruleFor(has("claims"))("one process at a time holds a key's claim; the others wait for it to land", async () => {
      await using fixture = await open()
      const { store, sibling } = fixture
      if (!isShared(store) || !sibling) throw new Error("no claims, or no second process")
      const other = await sibling()
      if (!isShared(other)) throw new Error("the second process has no claims")
      const key = "GET https://example.test/claims"
      const release = await store.claim(key, 10_000)
      expect(release).toBeFunction()
      expect(await other.claim(key, 10_000)).toBeUndefined()
      const started = Date.now()
      const landed = other.landed(key, 10_000)
      release?.()
      await landed
      // Woken by the release, not by the 10 s bound.
      expect(Date.now() - started).toBeLessThan(5000)
      const again = await other.claim(key, 10_000)
      expect(again).toBeFunction()
      again?.()
      // With nobody holding the claim, waiting ends at the bound.
      await other.landed("GET https://example.test/unclaimed", 50)
      expect(fixture.warnings).toEqual([])
    })

    test("stats count variants and their bytes in every tier", async () => {
      await using fixture = await open()
      const { store } = fixture
      for (const tier of await store.stats()) expect(tier).toMatchObject({ entries: 0, bytes: 0 })

      await putText(store, "GET https://example.test/stats/a", "first")
      await putText(store, "GET https://example.test/stats/b", "english", { vary: { "accept-language": "en" } })
      await putText(store, "GET https://example.test/stats/b", "french", { vary: { "accept-language": "fr" } })

      const tiers = await store.stats()
      expect(tiers.length).toBeGreaterThan(0)
      for (const tier of tiers) {
        expect(typeof tier.tier).toBe("string")
        // Three variants of two keys: entries count variants. Every tier holds these small bodies.
        expect(tier.entries).toBe(3)
        expect(tier.bytes).toBeGreaterThan(0)
      }
      // Counted as they change, not by walking the store: a delete takes its variants out at once.
      await store.delete("GET https://example.test/stats/b")
      for (const tier of await store.stats()) expect(tier.entries).toBe(1)
      expect(fixture.warnings).toEqual([])
    })
  })
}
