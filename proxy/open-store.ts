/**
 * The store the flags name (--cache-dir's files, or --redis): opening it, saying where its
 * entries live, taking its directory for this proxy alone, and emptying it (--clear-cache).
 */

import { withDeadline } from "../cache/deadline.ts"
import { DirInUse, lockDir } from "../cache/dir-lock.ts"
import { FileStore } from "../cache/file-store.ts"
import { GroupMemberStore } from "../cache/group-store.ts"
import type { Behind } from "../cache/tiered-store.ts"
import type { Warn } from "../cache.ts"
import type { Logger } from "./log.ts"
import { type ProxyOptions, UsageError } from "./options.ts"
import { runtime } from "./runtime.ts"
import { primaryChannel, workerRole } from "./workers.ts"

// How long --clear-cache waits for its store (Redis) to answer before it gives up.
const CLEAR_WAIT_MS = 5000

/** The store entries live in: the disk under --cache-dir, or Redis (its code loaded only then). */
export async function openStore(
  options: Pick<ProxyOptions, "store" | "cacheDir" | "maxSize" | "storePrefix" | "maxVariants">,
  warn: Warn,
): Promise<Behind> {
  if (options.store.kind === "file") {
    // A worker's share of the directory its primary indexes (proxy/workers.ts).
    const member = workerRole() !== undefined
    const { cacheDir: dir, maxSize: maxBytes, maxVariants } = options
    const files = new FileStore({ dir, maxBytes, maxVariants, files: runtime.files, warn, member })
    return member ? new GroupMemberStore(files, primaryChannel()) : files
  }
  // A literal specifier: `bun build --compile` bundles it, and other runs never load ioredis.
  const { RedisStore } = await import("../cache/redis-store.ts")
  return new RedisStore({ target: options.store.target, prefix: options.storePrefix, maxVariants: options.maxVariants, warn })
}

/** Where entries live, as the start line says it: a directory, or Redis with this cache's namespace. */
export function whereEntriesLive(options: ProxyOptions): string {
  if (options.store.kind === "file") return options.cacheDir
  const { target } = options.store
  const where = "single" in target ? new URL(target.single).host : target.cluster.map(({ host, port }) => `${host}:${port}`).join(",")
  return `Redis at ${where} (keys ${options.storePrefix}:*)`
}

/** Takes the cache directory for this proxy alone (cache/dir-lock.ts); one in use by a running one is a usage error. */
export function lockCacheDir(dir: string, logger: Logger): () => void {
  try {
    return lockDir(dir, (msg) => logger.warn(msg))
  } catch (error) {
    if (error instanceof DirInUse) throw new UsageError(`--cache-dir ${error.message}`)
    throw error
  }
}

/**
 * --clear-cache: empties the store and says which, or gives up after CLEAR_WAIT_MS with one line
 * (exit 1), so a cron job or a deploy script never hangs on a Redis that cannot be used.
 */
export async function clearCache(options: ProxyOptions): Promise<number> {
  let firstProblem: string | undefined
  // The store's own warnings (Redis unreachable, …) end up in the one line said on failure.
  const store = await openStore(options, (_kind, detail) => (firstProblem ??= detail))
  const where = whereEntriesLive(options)
  const cleared = store.ready().then(() => store.clear())
  try {
    await withDeadline(cleared, CLEAR_WAIT_MS, () => {
      throw new Error(`it did not answer within ${CLEAR_WAIT_MS / 1000} s${firstProblem ? `: ${firstProblem}` : ""}`)
    })
  } catch (error) {
    console.error(`caching-proxy: could not clear ${where}: ${(error as Error).message}`)
    return 1
  } finally {
    await store.close()
  }
  console.log(`caching-proxy: cleared ${where}`)
  return 0
}
