/**
 * The file store trusts nothing it finds on disk. What a client gets from a cache directory that
 * was tampered with, damaged or left half-written is checked through real HTTP (a real origin
 * and the real proxy, both on port 0); what the store keeps, removes and counts, through its
 * `Store` interface.
 */
import { describe, expect, spyOn, test } from "bun:test"
import {
  closeSync,
  existsSync,
  linkSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statfsSync,
  statSync,
  symlinkSync,
  writeFileSync,
  writeSync,
} from "node:fs"
import * as fsPromises from "node:fs/promises"
import { tmpdir } from "node:os"
import { basename, dirname, join } from "node:path"
import { meta, nextTask, ownedDir, startOrigin, startProxy as startSharedProxy } from "../proxy/test.fixture.ts"
import type { ProxyOptions } from "../proxy.ts"
import { bunFiles, FileStore } from "./file-store.ts"

// ───────────────────────────── helpers ─────────────────────────────

const KiB = 1024
const MiB = 1024 * KiB
// Over the 1 MiB the memory tier holds and the store reads whole: served from its file.
const LARGE = 2 * MiB

const FRESH = { "cache-control": "max-age=600" }

/** An origin answering its n-th request with `body(n)`, fresh for ten minutes. */
function startVersionedOrigin(body: (n: number) => string = (n) => `v${n}`) {
  return startOrigin((_, n) => new Response(body(n), { headers: FRESH }))
}

/** A large body for answer `n`: every byte the digit, so a changed byte shows. */
const largeBody = (n: number) => String(n % 10).repeat(LARGE)

/** The shared in-process proxy on the given cache directory, once its store is ready. */
async function startProxy(options: Partial<ProxyOptions> & { origin: string; cacheDir: string }) {
  const proxy = await startSharedProxy(options)
  await proxy.cache.store.ready()
  return {
    url: proxy.url,
    /** What the proxy reported and carried on after, by kind. */
    warnings: () => proxy.warnings.map((w) => w.kind),
    [Symbol.asyncDispose]: proxy[Symbol.asyncDispose],
  }
}

/** What the client got, its body read. */
async function answer(url: string, headers: Record<string, string> = {}) {
  const res = await fetch(url, { headers })
  return { status: res.status, body: await res.text(), xCache: res.headers.get("x-cache") }
}

/** A cache left by an earlier run: each path stored through a proxy on `cacheDir`, which then stops. */
async function storeThrough(originUrl: string, cacheDir: string, paths: string[], headers: Record<string, string> = {}) {
  await using proxy = await startProxy({ origin: originUrl, cacheDir })
  for (const path of paths) await answer(`${proxy.url}${path}`, headers)
}

/** Every file under the cache's `v1` tree (links included, not followed). */
function storedFiles(cacheDir: string): string[] {
  const root = join(cacheDir, "v1")
  if (!existsSync(root)) return []
  return (readdirSync(root, { recursive: true }) as string[])
    .map((name) => join(root, name))
    .filter((path) => !lstatSync(path).isDirectory())
}

const metaFiles = (cacheDir: string) => storedFiles(cacheDir).filter((path) => path.endsWith(".meta"))
const bodyFiles = (cacheDir: string) => storedFiles(cacheDir).filter((path) => path.endsWith(".body"))

/** The one entry's meta and body under a cache directory. */
function onlyEntry(cacheDir: string): { metaPath: string; bodyPath: string } {
  const [metaPath, ...otherMetas] = metaFiles(cacheDir)
  const [bodyPath, ...otherBodies] = bodyFiles(cacheDir)
  if (!metaPath || !bodyPath || otherMetas.length + otherBodies.length > 0) throw new Error(`not one entry: ${storedFiles(cacheDir)}`)
  return { metaPath, bodyPath }
}

type MetaJson = Record<string, unknown>

/** Rewrites a meta file in place, as someone with access to the directory might. */
function editMeta(metaPath: string, change: (meta: MetaJson) => void): void {
  const meta = JSON.parse(readFileSync(metaPath, "utf8")) as MetaJson
  change(meta)
  writeFileSync(metaPath, JSON.stringify(meta))
}

/** Overwrites bytes of a file in place: same inode, same length. */
function overwriteInPlace(path: string, offset: number, bytes: string): void {
  const fd = openSync(path, "r+")
  try {
    writeSync(fd, bytes, offset)
  } finally {
    closeSync(fd)
  }
}

/** A store straight on a directory, collecting what it reports. */
async function openStore(dir: string, maxBytes = 64 * MiB) {
  const warnings: string[] = []
  const store = new FileStore({ dir, maxBytes, files: bunFiles, warn: (kind, detail) => warnings.push(`${kind}: ${detail}`) })
  await store.ready()
  return { store, warnings, [Symbol.asyncDispose]: () => store.close() }
}

/** A body in chunks, one per pull with a turn of the event loop between them, so puts in flight interleave. */
function streamOf(bytes: Uint8Array, chunkSize = 4 * KiB): ReadableStream<Uint8Array> {
  let offset = 0
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      await nextTask()
      if (offset >= bytes.byteLength) return controller.close()
      controller.enqueue(bytes.subarray(offset, offset + chunkSize))
      offset += chunkSize
    },
  })
}

const filled = (byte: number, size: number) => new Uint8Array(size).fill(byte)

const BLOCK = statfsSync(tmpdir()).bsize
const inBlocks = (bytes: number) => Math.ceil(bytes / BLOCK) * BLOCK

/** Directories under the cache's `v1` tree: shards and key directories. */
const storedDirs = (cacheDir: string) =>
  (readdirSync(join(cacheDir, "v1"), { recursive: true }) as string[]).filter((name) => lstatSync(join(cacheDir, "v1", name)).isDirectory())

/** What the store's byte count must match: its files (all of them, or those given) and its directories, each in whole blocks. */
const bytesOnDisk = (dir: string, files = storedFiles(dir)) =>
  files.reduce((sum, path) => sum + inBlocks(lstatSync(path).size), 0) + storedDirs(dir).length * BLOCK

// ───────────────────────────── the meta ─────────────────────────────

describe("a meta that does not describe a usable response is discarded, and the request refetches", () => {
  const corruptions: [string, (meta: MetaJson) => void][] = [
    ["headers that are not a list", (m) => (m.headers = { "content-type": "text/plain" })],
    ["a header that is not a [name, value] pair", (m) => (m.headers = [["content-type"]])],
    ["a header value that is not a string", (m) => (m.headers = [["x-count", 5]])],
    ["an invalid header name", (m) => (m.headers = [["bad name", "x"]])],
    ["a header value with a line break", (m) => (m.headers = [["x-note", "a\r\nset-cookie: stolen=1"]])],
    ["a status below 200", (m) => (m.status = 99)],
    ["a status that is not an integer", (m) => (m.status = 200.5)],
    ["a status that is a string", (m) => (m.status = "200")],
    ["vary that is not an object", (m) => (m.vary = ["accept"])],
    ["vary naming an invalid header", (m) => (m.vary = { "bad name": null })],
    ["deleteAt that is not a number", (m) => (m.deleteAt = "never")],
    ["freshMs that is null", (m) => (m.freshMs = null)],
    ["mustRevalidate that is not a boolean", (m) => (m.mustRevalidate = "yes")],
    ["an etag that cannot be sent back to the origin", (m) => (m.etag = '"a"\nx-injected: 1')],
    ["a size that is not a byte count", (m) => (m.size = "2")],
    ["a digest that is not a sha256", (m) => (m.sha256 = "not a digest")],
  ]

  test.each(corruptions)("%s: a MISS from the origin, reported once, then a HIT", async (_, corrupt) => {
    await using origin = startVersionedOrigin()
    using dir = ownedDir()
    await storeThrough(origin.url, dir.path, ["a"])
    const { metaPath } = onlyEntry(dir.path)
    editMeta(metaPath, corrupt)
    await using proxy = await startProxy({ origin: origin.url, cacheDir: dir.path })
    expect(await answer(`${proxy.url}a`)).toEqual({ status: 200, body: "v2", xCache: "MISS" })
    expect(await answer(`${proxy.url}a`)).toEqual({ status: 200, body: "v2", xCache: "HIT" })
    expect(proxy.warnings()).toEqual(["broken-entry"])
    expect(origin.count("/a")).toBe(2)
  })
})

// ───────────────────────────── paths and links ─────────────────────────────

describe("a meta names only its own variant's body, and no link is followed", () => {
  /** A cache under `<dir>/cache` with one entry stored for /a, and a file outside the cache. */
  async function cacheBesideAFile(originUrl: string, dir: string, secret: string) {
    const cacheDir = join(dir, "cache")
    await storeThrough(originUrl, cacheDir, ["a"])
    const secretPath = join(dir, "secret")
    writeFileSync(secretPath, secret)
    return { cacheDir, secretPath, ...onlyEntry(cacheDir) }
  }

  test("a bodyFile that leads out of the key's directory is not served", async () => {
    await using origin = startVersionedOrigin()
    using dir = ownedDir()
    const setup = await cacheBesideAFile(origin.url, dir.path, "s!") // as long as "v1"
    editMeta(setup.metaPath, (m) => (m.bodyFile = "../../../../secret"))
    await using proxy = await startProxy({ origin: origin.url, cacheDir: setup.cacheDir })
    expect(await answer(`${proxy.url}a`)).toEqual({ status: 200, body: "v2", xCache: "MISS" })
    expect(proxy.warnings()).toEqual(["broken-entry"])
    expect(readFileSync(setup.secretPath, "utf8")).toBe("s!")
  })

  test("discarding a meta whose bodyFile leads out of the key's directory deletes nothing there", async () => {
    await using origin = startVersionedOrigin()
    using dir = ownedDir()
    const setup = await cacheBesideAFile(origin.url, dir.path, "a longer secret") // not the body's size: discarded by that alone
    editMeta(setup.metaPath, (m) => (m.bodyFile = "../../../../secret"))
    await using proxy = await startProxy({ origin: origin.url, cacheDir: setup.cacheDir })
    expect(await answer(`${proxy.url}a`)).toEqual({ status: 200, body: "v2", xCache: "MISS" })
    expect(readFileSync(setup.secretPath, "utf8")).toBe("a longer secret")
    // The entry's own body went with it: nothing is left over.
    expect(existsSync(setup.bodyPath)).toBe(false)
    expect(bodyFiles(setup.cacheDir)).toHaveLength(1)
  })

  test("a meta naming another variant's body is not served", async () => {
    await using origin = startOrigin(
      (req, n) => new Response(`${req.headers.get("accept-language")}${n}`, { headers: { ...FRESH, vary: "accept-language" } }),
    )
    using dir = ownedDir()
    await storeThrough(origin.url, dir.path, ["a"], { "accept-language": "en" })
    await storeThrough(origin.url, dir.path, ["a"], { "accept-language": "fr" })
    const bodies = bodyFiles(dir.path).map((path) => ({ path, text: readFileSync(path, "utf8") }))
    const french = bodies.find((b) => b.text === "fr2")!
    const english = bodies.find((b) => b.text === "en1")!
    const englishMeta = english.path.replace(/\.[0-9a-f]{12}\.body$/, ".meta")
    editMeta(englishMeta, (m) => (m.bodyFile = basename(french.path)))
    await using proxy = await startProxy({ origin: origin.url, cacheDir: dir.path })
    expect(await answer(`${proxy.url}a`, { "accept-language": "en" })).toEqual({ status: 200, body: "en3", xCache: "MISS" })
    expect(await answer(`${proxy.url}a`, { "accept-language": "fr" })).toEqual({ status: 200, body: "fr2", xCache: "HIT" })
    expect(proxy.warnings()).toEqual(["broken-entry"])
  })

  test.each([
    ["a small body (from memory)", 64 * MiB, (n: number) => `v${n}`],
    ["a small body (from disk)", 1, (n: number) => `v${n}`],
    ["a large body (sent from its file)", 64 * MiB, largeBody],
  ])("%s replaced by a symbolic link to a file of the same size is not served; only the link goes", async (_, memorySize, body) => {
    await using origin = startVersionedOrigin(body)
    using dir = ownedDir()
    const setup = await cacheBesideAFile(origin.url, dir.path, "s".repeat(body(1).length))
    rmSync(setup.bodyPath)
    symlinkSync(setup.secretPath, setup.bodyPath)
    await using proxy = await startProxy({ origin: origin.url, cacheDir: setup.cacheDir, memorySize })
    const got = await answer(`${proxy.url}a`)
    expect({ ...got, body: got.body === body(2) }).toEqual({ status: 200, body: true, xCache: "MISS" })
    expect(proxy.warnings()).toEqual(["broken-entry"])
    expect(existsSync(setup.secretPath)).toBe(true)
    expect(existsSync(setup.bodyPath)).toBe(false)
  })

  test("a body that is a hard link (a second name for another file) is not served", async () => {
    await using origin = startVersionedOrigin()
    using dir = ownedDir()
    const setup = await cacheBesideAFile(origin.url, dir.path, "s!")
    rmSync(setup.bodyPath)
    linkSync(setup.secretPath, setup.bodyPath)
    await using proxy = await startProxy({ origin: origin.url, cacheDir: setup.cacheDir })
    expect(await answer(`${proxy.url}a`)).toEqual({ status: 200, body: "v2", xCache: "MISS" })
    expect(proxy.warnings()).toEqual(["broken-entry"])
    expect(readFileSync(setup.secretPath, "utf8")).toBe("s!")
  })

  test("a meta that is a symbolic link is not followed; only the link goes", async () => {
    await using origin = startVersionedOrigin()
    using dir = ownedDir()
    const setup = await cacheBesideAFile(origin.url, dir.path, "")
    const elsewhere = join(dir.path, "elsewhere.meta")
    renameSync(setup.metaPath, elsewhere)
    symlinkSync(elsewhere, setup.metaPath)
    await using proxy = await startProxy({ origin: origin.url, cacheDir: setup.cacheDir })
    expect(await answer(`${proxy.url}a`)).toEqual({ status: 200, body: "v2", xCache: "MISS" })
    expect(proxy.warnings()).toEqual(["broken-entry"])
    expect(existsSync(elsewhere)).toBe(true)
    expect(lstatSync(setup.metaPath).isFile()).toBe(true) // the new entry's meta, a file
  })
})

describe("the store writes only inside its directory", () => {
  test("a key directory replaced by a link is not written through", async () => {
    using dir = ownedDir()
    const cacheDir = join(dir.path, "cache")
    const outside = join(dir.path, "outside")
    mkdirSync(outside)
    const key = "GET http://origin.test/a"
    {
      await using fixture = await openStore(cacheDir)
      await fixture.store.put(key, meta(), streamOf(filled(1, 10)))
    }
    const keyDir = dirname(metaFiles(cacheDir)[0]!)
    rmSync(keyDir, { recursive: true })
    symlinkSync(outside, keyDir)
    await using fixture = await openStore(cacheDir)
    await expect(fixture.store.put(key, meta(), streamOf(filled(2, 10)))).rejects.toThrow("link")
    expect(readdirSync(outside)).toEqual([])
  })

  test("clear replaces a generation file that is a link, never writes through it", async () => {
    using dir = ownedDir()
    const secretPath = join(dir.path, "secret")
    writeFileSync(secretPath, "keep me")
    await using fixture = await openStore(join(dir.path, "cache"))
    await fixture.store.put("GET http://origin.test/a", meta(), streamOf(filled(1, 10)))
    symlinkSync(secretPath, join(dir.path, "cache", "generation"))
    await fixture.store.clear()
    expect(readFileSync(secretPath, "utf8")).toBe("keep me")
    expect(lstatSync(join(dir.path, "cache", "generation")).isFile()).toBe(true)
  })
})

// ───────────────────────────── what is not a file ─────────────────────────────

describe("a cached body that is not a regular file is a miss, never an error page", () => {
  test.each([
    ["through the memory tier", 64 * MiB],
    ["from disk", 1],
  ])("a body that is a directory, %s", async (_, memorySize) => {
    await using origin = startVersionedOrigin()
    using dir = ownedDir()
    await storeThrough(origin.url, dir.path, ["a"])
    const { metaPath, bodyPath } = onlyEntry(dir.path)
    rmSync(bodyPath)
    mkdirSync(bodyPath)
    // An entry from before digests, whose size is the directory's: only the file's type gives it away.
    editMeta(metaPath, (m) => {
      m.size = statSync(bodyPath).size
      delete m.sha256
    })
    await using proxy = await startProxy({ origin: origin.url, cacheDir: dir.path, memorySize })
    expect(await answer(`${proxy.url}a`)).toEqual({ status: 200, body: "v2", xCache: "MISS" })
    expect(proxy.warnings()).toEqual(["broken-entry"])
    expect(existsSync(bodyPath)).toBe(false)
  })

  test("a body that is a FIFO is a miss, and nothing waits on it", async () => {
    await using origin = startVersionedOrigin()
    using dir = ownedDir()
    await storeThrough(origin.url, dir.path, ["a"])
    const { metaPath, bodyPath } = onlyEntry(dir.path)
    rmSync(bodyPath)
    expect(Bun.spawnSync(["mkfifo", bodyPath]).exitCode).toBe(0)
    editMeta(metaPath, (m) => {
      m.size = 0
      delete m.sha256
    })
    await using proxy = await startProxy({ origin: origin.url, cacheDir: dir.path, memorySize: 1 })
    expect(await answer(`${proxy.url}a`)).toEqual({ status: 200, body: "v2", xCache: "MISS" })
    expect(proxy.warnings()).toEqual(["broken-entry"])
  })
})

// ───────────────────────────── the digest ─────────────────────────────

describe("a body changed in place is caught by its digest", () => {
  test("every meta records the sha256 of its body, taken as it was written", async () => {
    await using origin = startVersionedOrigin()
    using dir = ownedDir()
    await storeThrough(origin.url, dir.path, ["a"])
    const { metaPath, bodyPath } = onlyEntry(dir.path)
    const digest = new Bun.CryptoHasher("sha256").update(readFileSync(bodyPath)).digest("hex")
    expect(JSON.parse(readFileSync(metaPath, "utf8")).sha256).toBe(digest)
  })

  test.each([
    ["a small body", (n: number) => `v${n}`],
    ["a large body", largeBody],
  ])("%s overwritten with as many bytes is not served after a restart", async (_, body) => {
    await using origin = startVersionedOrigin(body)
    using dir = ownedDir()
    await storeThrough(origin.url, dir.path, ["a"])
    const { bodyPath } = onlyEntry(dir.path)
    overwriteInPlace(bodyPath, Math.floor(body(1).length / 2), "x")
    await using proxy = await startProxy({ origin: origin.url, cacheDir: dir.path })
    const got = await answer(`${proxy.url}a`)
    expect({ ...got, body: got.body === body(2) }).toEqual({ status: 200, body: true, xCache: "MISS" })
    expect(proxy.warnings()).toEqual(["broken-entry"])
  })

  test("a large body changed in place while the proxy runs is caught at its next hit", async () => {
    await using origin = startVersionedOrigin(largeBody)
    using dir = ownedDir()
    await using proxy = await startProxy({ origin: origin.url, cacheDir: dir.path })
    expect((await answer(`${proxy.url}a`)).xCache).toBe("MISS")
    expect((await answer(`${proxy.url}a`)).xCache).toBe("HIT")
    overwriteInPlace(onlyEntry(dir.path).bodyPath, 1000, "x")
    const got = await answer(`${proxy.url}a`)
    expect({ ...got, body: got.body === largeBody(2) }).toEqual({ status: 200, body: true, xCache: "MISS" })
    expect(proxy.warnings()).toEqual(["broken-entry"])
  })

  test.each([
    ["a small body", (n: number) => `v${n}`],
    ["a large body", largeBody],
  ])("%s stored before digests were kept is still served, checked by its size", async (_, body) => {
    await using origin = startVersionedOrigin(body)
    using dir = ownedDir()
    await storeThrough(origin.url, dir.path, ["a"])
    editMeta(onlyEntry(dir.path).metaPath, (m) => delete m.sha256)
    await using proxy = await startProxy({ origin: origin.url, cacheDir: dir.path })
    const got = await answer(`${proxy.url}a`)
    expect({ ...got, body: got.body === body(1) }).toEqual({ status: 200, body: true, xCache: "HIT" })
    expect(proxy.warnings()).toEqual([])
  })
})

// ───────────────────────────── leftovers ─────────────────────────────

describe("directories: a key's goes with its last entry", () => {
  const key = "GET http://origin.test/a"

  test("removing a key's last variant removes its directory and its shard's; what is left is what is counted", async () => {
    using dir = ownedDir()
    await using fixture = await openStore(dir.path)
    await fixture.store.put(key, meta(), streamOf(filled(1, 1 * KiB)))
    expect(storedDirs(dir.path)).toHaveLength(2)
    await fixture.store.delete(key)
    expect(storedDirs(dir.path)).toEqual([])
    expect((await fixture.store.stats())[0]).toMatchObject({ entries: 0, bytes: 0 })
  })

  test("a put whose key directory is removed under it (the last entry of the key evicted meanwhile) makes it again and stores", async () => {
    using dir = ownedDir()
    await using fixture = await openStore(dir.path)
    const open = fsPromises.open
    let raced = false
    const racing = spyOn(fsPromises, "open").mockImplementation(async (path, ...rest) => {
      // What a concurrent eviction does between the put's mkdir and its first file.
      if (!raced && String(path).endsWith(".body.tmp")) {
        raced = true
        rmSync(dirname(String(path)), { recursive: true })
      }
      return open(path, ...rest)
    })
    try {
      expect(await fixture.store.put(key, meta(), streamOf(filled(7, 2 * KiB)))).toBe(true)
    } finally {
      racing.mockRestore()
    }
    expect(raced).toBe(true)
    const stored = await fixture.store.get(key, new Headers())
    expect(new Uint8Array(await new Response(stored?.body).arrayBuffer())).toEqual(filled(7, 2 * KiB))
    expect((await fixture.store.stats())[0]).toMatchObject({ entries: 1, bytes: bytesOnDisk(dir.path) })
    expect(fixture.warnings).toEqual([])
  })
})

describe("the purge-tag index: a tag file per tagged key, gone with its entry", () => {
  const tagDirs = (cacheDir: string) => storedDirs(cacheDir).filter((name) => name.startsWith("tags/"))

  test("names each tagged key once per tag; a key's entries in it go with the key", async () => {
    using dir = ownedDir()
    {
      await using fixture = await openStore(dir.path)
      await fixture.store.put("GET http://origin.test/kept", meta({ tags: ["t1", "t2"] }), streamOf(filled(1, 100)))
      await fixture.store.put("GET http://origin.test/gone", meta({ tags: ["t1", "t3"] }), streamOf(filled(2, 100)))
      expect(tagDirs(dir.path)).toHaveLength(3)
      // The index's directories count against the bound like the others (its files are empty).
      expect((await fixture.store.stats())[0]?.bytes).toBe(bytesOnDisk(dir.path))
      await fixture.store.delete("GET http://origin.test/gone")
      // t3 named only the deleted key: its directory went with it; t1 and t2 still index "kept".
      expect(tagDirs(dir.path)).toHaveLength(2)
      expect((await fixture.store.tagged("t1")).sort()).toEqual(["GET http://origin.test/kept"])
      expect(fixture.warnings).toEqual([])
    }
    await using reopened = await openStore(dir.path)
    expect(tagDirs(dir.path)).toHaveLength(2)
    expect(await reopened.store.tagged("t2")).toEqual(["GET http://origin.test/kept"])
    await reopened.store.delete("GET http://origin.test/kept")
    expect(storedDirs(dir.path)).toEqual([])
    expect((await reopened.store.stats())[0]?.bytes).toBe(0)
    expect(await reopened.store.tagged("t2")).toEqual([])
    expect(reopened.warnings).toEqual([])
  })
})

describe("what a crash or a full disk leaves is removed, and counted against the bound until it is", () => {
  const key = "GET http://origin.test/a"

  test("at start-up, what an earlier run left goes, however recent: temporary files, orphan and replaced bodies", async () => {
    using dir = ownedDir()
    {
      await using fixture = await openStore(dir.path)
      await fixture.store.put(key, meta(), streamOf(filled(1, 10 * KiB)))
    }
    const { metaPath, bodyPath } = onlyEntry(dir.path)
    const keyDir = dirname(metaPath)
    const variantId = basename(metaPath, ".meta")
    const otherVariant = "f".repeat(64)
    const leftovers = [
      join(keyDir, `${variantId}.0123456789ab.body.tmp`), // a body cut off by the crash
      join(keyDir, `${variantId}.meta.0123456789ab.tmp`), // a meta the full disk left empty
      join(keyDir, `${variantId}.0123456789ac.body`), // the body a put was replacing
      join(keyDir, `${otherVariant}.0123456789ab.body`), // a body whose meta was never written
    ]
    for (const path of leftovers) writeFileSync(path, path.endsWith("meta.0123456789ab.tmp") ? "" : "left over")
    const notOurs = join(keyDir, "notes.txt")
    writeFileSync(notOurs, "someone else's")

    await using fixture = await openStore(dir.path)
    expect(leftovers.filter((path) => existsSync(path))).toEqual([])
    expect(readFileSync(notOurs, "utf8")).toBe("someone else's")
    const stored = await fixture.store.get(key, new Headers())
    expect(new Uint8Array(await new Response(stored?.body).arrayBuffer())).toEqual(filled(1, 10 * KiB))
    const [stats] = await fixture.store.stats()
    expect(stats).toMatchObject({ tier: "file", entries: 1, bytes: bytesOnDisk(dir.path, [metaPath, bodyPath]) })
    expect(fixture.warnings).toEqual([])
  })

  test("a meta write that fails (a full disk) leaves neither its temporary meta nor the body", async () => {
    using dir = ownedDir()
    await using fixture = await openStore(dir.path)
    const writeFile = spyOn(fsPromises, "writeFile").mockImplementationOnce(async (path) => {
      await fsPromises.appendFile(path as string, "") // what the disk had room for
      throw Object.assign(new Error("ENOSPC: no space left on device"), { code: "ENOSPC" })
    })
    try {
      await expect(fixture.store.put(key, meta(), streamOf(filled(1, 10 * KiB)))).rejects.toThrow("ENOSPC")
    } finally {
      writeFile.mockRestore()
    }
    expect(storedFiles(dir.path)).toEqual([])
    expect((await fixture.store.stats())[0]?.bytes).toBe(0)
    expect(fixture.warnings).toEqual([])
  })

  test("a leftover that cannot be removed is reported and counted until eviction removes it", async () => {
    using dir = ownedDir()
    const keyDir = join(dir.path, "v1", "ab", "ab".repeat(32))
    mkdirSync(keyDir, { recursive: true })
    const leftover = join(keyDir, `${"ab".repeat(32)}.0123456789ab.body.tmp`)
    writeFileSync(leftover, filled(0, 40 * KiB))
    const rm = fsPromises.rm
    const stuck = spyOn(fsPromises, "rm").mockImplementation(async (path, options) => {
      if (path === leftover) throw Object.assign(new Error("EBUSY: resource busy"), { code: "EBUSY" })
      return rm(path, options)
    })
    await using fixture = await openStore(dir.path, 64 * KiB).finally(() => stuck.mockRestore())
    expect(fixture.warnings.map((w) => w.split(":")[0])).toEqual(["store-delete"])
    expect((await fixture.store.stats())[0]).toMatchObject({ tier: "file", entries: 0, bytes: bytesOnDisk(dir.path) })
    // 30 KiB more is over the bound: the leftover goes first, the entry stays.
    expect(await fixture.store.put(key, meta(), streamOf(filled(1, 30 * KiB)))).toBe(true)
    expect(existsSync(leftover)).toBe(false)
    expect((await fixture.store.stats())[0]).toMatchObject({ tier: "file", entries: 1, bytes: bytesOnDisk(dir.path) })
    expect(await fixture.store.has(key)).toBe(true)
  })

  test("puts racing on one variant leave one meta and the one body it names, all counted", async () => {
    using dir = ownedDir()
    await using fixture = await openStore(dir.path)
    const bodies = [1, 2, 3, 4, 5].map((n) => filled(n, 20 * KiB))
    await Promise.all(bodies.map((body, i) => fixture.store.put(key, meta({ etag: `"${i + 1}"` }), streamOf(body))))
    const { metaPath, bodyPath } = onlyEntry(dir.path)
    const named = JSON.parse(readFileSync(metaPath, "utf8"))
    expect(basename(bodyPath)).toBe(named.bodyFile)
    expect(readFileSync(bodyPath)[0]).toBe(Number(named.etag.slice(1, -1)))
    expect((await fixture.store.stats())[0]).toMatchObject({ tier: "file", entries: 1, bytes: bytesOnDisk(dir.path) })
    expect(fixture.warnings).toEqual([])
  })

  test("evictions and replacements under concurrent reads are never reported, and reads find whole bodies or none", async () => {
    using dir = ownedDir()
    // Room for about three of the six keys (a body, a meta, a key directory and a shard each): every put evicts.
    await using fixture = await openStore(dir.path, 3 * (inBlocks(8 * KiB) + 3 * BLOCK))
    const keys = ["a", "b", "c", "d", "e", "f"].map((name) => `GET http://origin.test/${name}`)
    const bodyOf = (round: number) => filled(round % 256, 8 * KiB)
    let writing = true
    const problems: string[] = []
    const reader = async () => {
      while (writing) {
        // A key not on disk is answered at once: the writer must get its turn.
        await nextTask()
        for (const key of keys) {
          const stored = await fixture.store.get(key, new Headers())
          if (!stored) continue
          const bytes = await new Response(stored.body).bytes().catch((error: Error) => problems.push(`read: ${error.message}`))
          const round = Number(stored.meta.etag?.slice(1, -1))
          if (bytes instanceof Uint8Array && bytes.join() !== bodyOf(round).join()) problems.push(`${key}: not round ${round}'s body`)
        }
      }
    }
    const readers = Array.from({ length: 4 }, reader)
    try {
      for (let round = 0; round < 120; round++) {
        await fixture.store.put(keys[round % keys.length]!, meta({ etag: `"${round}"` }), streamOf(bodyOf(round), 2 * KiB))
      }
    } finally {
      writing = false
      await Promise.all(readers)
    }
    expect(problems).toEqual([])
    expect(fixture.warnings).toEqual([])
  })
})
