/**
 * The `Store` contract (store.ts), run over every store: memory, files under Bun and under
 * node:fs, memory in front of files, and Redis. Each `describe` is one store; each test is one rule
 * of the contract, checked only through the `Store` interface and the capabilities the store has
 * (each member of each of them), so any new store can join the list.
 */
import { afterAll, afterEach, describe, expect, setSystemTime, test } from "bun:test"
import { randomUUID } from "node:crypto"
import { tracingChannel } from "node:diagnostics_channel"
import { existsSync, mkdtempSync, rmSync, statfsSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Redis } from "ioredis"
import { FAST_RUN, meta, startForFile, startRedis, startRedisCluster } from "../proxy/test.fixture.ts"
import { bunFiles, type FileApi, FileStore, nodeFiles } from "./file-store.ts"
import { MemoryStore } from "./memory-store.ts"
import type { RedisTarget } from "./redis-connection.ts"
import { RedisStore } from "./redis-store.ts"
import type { WarnKind } from "./store.ts"
import { AMPLE_BYTES, type Capability, type MakeStore, MiB, storeContract, streamOf, text } from "./store-contract.fixture.ts"
import { tieredStore } from "./tiered-store.ts"

// ───────────────────────────── helpers ─────────────────────────────

/** Collects warnings instead of printing them: a healthy operation should leave none. */
function warnInto(warnings: string[]) {
  return (kind: WarnKind, detail: string) => {
    warnings.push(`${kind}: ${detail}`)
  }
}

// Every temporary directory the fixtures made: none may be left behind.
const tempDirs: string[] = []

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "caching-proxy-test-"))
  tempDirs.push(dir)
  return dir
}

// setSystemTime is global: a test that fails half-way must not leave the clock moved.
afterEach(() => {
  setSystemTime()
})

afterAll(() => {
  expect(tempDirs.filter((dir) => existsSync(dir))).toEqual([])
})

// ───────────────────────────── the stores ─────────────────────────────

const memory: MakeStore = (maxBytes, maxVariants) => {
  const store = new MemoryStore({ maxBytes, maxVariants })
  return { store, warnings: [], boundedStats: () => store.stats(), [Symbol.asyncDispose]: () => Promise.resolve() }
}

function fileStore(files: FileApi): MakeStore {
  return (maxBytes, maxVariants) => {
    const dir = tempDir()
    const warnings: string[] = []
    const store = new FileStore({ dir, maxBytes, maxVariants, files, warn: warnInto(warnings) })
    return {
      store,
      warnings,
      boundedStats: () => store.stats(),
      async [Symbol.asyncDispose]() {
        await store.close()
        rmSync(dir, { recursive: true, force: true })
      },
    }
  }
}

// The byte bound goes to the disk tier; memory gets room for everything, so that what the
// tiered store loses it loses because the back store dropped it.
const tiered: MakeStore = (maxBytes, maxVariants) => {
  const dir = tempDir()
  const warnings: string[] = []
  const back = new FileStore({ dir, maxBytes, maxVariants, files: bunFiles, warn: warnInto(warnings) })
  const store = tieredStore(new MemoryStore({ maxBytes: 1024 * MiB, maxVariants }), back, { memoryBodyLimit: 1 * MiB })
  return {
    store,
    warnings,
    boundedStats: () => back.stats(),
    async [Symbol.asyncDispose]() {
      await store.close()
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

// Real servers, started once for both Redis suites (and only for them), as the file loads: they
// outlive a test that times out (see startForFile). The fast loop starts none.
const [redis, cluster] = await Promise.all([startForFile(startRedis), startForFile(startRedisCluster)])
afterAll(async () => {
  await Promise.all([redis?.[Symbol.asyncDispose](), cluster?.[Symbol.asyncDispose]()])
})

/** A Redis store in a namespace of its own: the fixtures share one server, never their keys. */
function redisStore(target: () => RedisTarget): MakeStore {
  return (_maxBytes, maxVariants) => {
    const warnings: string[] = []
    const options = { target: target(), prefix: `test-${randomUUID()}`, maxVariants, warn: warnInto(warnings) }
    const store = new RedisStore(options)
    const siblings: RedisStore[] = []
    return {
      store,
      async sibling() {
        const other = new RedisStore(options)
        siblings.push(other)
        await other.ready()
        return other
      },
      warnings,
      boundedStats: () => store.stats(),
      [Symbol.asyncDispose]: async () => {
        await Promise.all([store, ...siblings].map((each) => each.close()))
      },
    }
  }
}

storeContract("MemoryStore", memory, { capabilities: ["drops"] })
// On disk an entry takes whole blocks: its body's, one for its meta, one for its key's directory
// and one for the shard directory that holds it.
const BLOCK = statfsSync(tmpdir()).bsize
const onDisk = (bodyBytes: number) => Math.ceil(bodyBytes / BLOCK) * BLOCK + 3 * BLOCK
const FILE_CAPABILITIES: Capability[] = ["drops", "read-notices", "lifecycle"]
storeContract("FileStore (Bun files)", fileStore(bunFiles), { capabilities: FILE_CAPABILITIES, entryBytes: onDisk })
storeContract("FileStore (node:fs)", fileStore(nodeFiles), { capabilities: FILE_CAPABILITIES, entryBytes: onDisk })
// Memory in front keeps the LRU order of what it serves: no tier goes in front of it.
storeContract("TieredStore (memory in front of files)", tiered, { capabilities: ["drops", "lifecycle"], entryBytes: onDisk })
// Redis keeps its own LRU order: it needs no notice of reads served in front.
const REDIS_CAPABILITIES: Capability[] = ["claims", "drops", "lifecycle"]
describe.skipIf(FAST_RUN)("on Redis", () => {
  storeContract(
    "RedisStore (one server)",
    redisStore(() => ({ single: redis!.url })),
    { capabilities: REDIS_CAPABILITIES, boundedBy: "server" },
  )
  storeContract(
    "RedisStore (a three-node Cluster)",
    redisStore(() => ({ cluster: cluster!.nodes })),
    { capabilities: REDIS_CAPABILITIES, boundedBy: "server" },
  )

  test("the key index drops keys whose entries expired as later entries are written, and expires itself", async () => {
    const prefix = `test-${randomUUID()}`
    const store = new RedisStore({ target: { single: redis!.url }, prefix, warn: () => {} })
    const raw = new Redis(redis!.url)
    try {
      await store.ready()
      await store.put("GET https://example.test/brief", meta({ deleteAt: Date.now() + 200 }), streamOf(text("brief")))
      await store.put("GET https://example.test/lasting", meta(), streamOf(text("lasting")))
      const generation = await raw.get(`${prefix}:generation`)
      const [names, expiry] = [`${prefix}:${generation}:{index}:keys`, `${prefix}:${generation}:{index}:expiry`]
      expect(await raw.zrange(names, "0", "-1")).toEqual(["GET https://example.test/brief", "GET https://example.test/lasting"])
      await Bun.sleep(300)
      await store.put("GET https://example.test/later", meta(), streamOf(text("later")))
      // Nobody listed the keys: the write itself dropped the expired one, from both sets.
      expect(await raw.zrange(names, "0", "-1")).toEqual(["GET https://example.test/lasting", "GET https://example.test/later"])
      expect(await raw.zrange(expiry, "0", "-1")).toEqual(["GET https://example.test/lasting", "GET https://example.test/later"])
      for (const key of [names, expiry]) expect(await raw.pttl(key)).toBeGreaterThan(500_000)
    } finally {
      raw.disconnect()
      await store.close()
    }
  })

  // Bun's TracingChannel lacks hasSubscribers (oven-sh/bun#27805): the store adds it, so ioredis
  // stops tracing commands no one listens to, and still traces them for a tracer that subscribes.
  test("ioredis traces commands only while a tracer listens", async () => {
    await using fixture = redisStore(() => ({ single: redis!.url }))(AMPLE_BYTES)
    await (fixture.store as RedisStore).ready()
    const commands = tracingChannel("ioredis:command")
    expect(commands.hasSubscribers).toBe(false)
    const traced: string[] = []
    const tracer = { start: (context: unknown) => void traced.push((context as { command: string }).command) }
    commands.subscribe(tracer)
    try {
      expect(commands.hasSubscribers).toBe(true)
      await fixture.store.get("GET https://example.test/traced", new Headers())
      expect(traced).toContain("get")
    } finally {
      commands.unsubscribe(tracer)
    }
    expect(commands.hasSubscribers).toBe(false)
  })
})
