/**
 * The names of the Redis store's keys (the layout is described in `redis-store.ts`): the channel,
 * the generation, the key index, tag sets, and an entry's keys, all of one entry in one Cluster
 * slot by the hash tag in braces.
 */
import { sha256 } from "./bytes.ts"
import type { VariantRecord } from "./redis-format.ts"

export const KEY_HASHES_KEPT = 10_000

export class RedisKeys {
  /** Cache keys' hashes, remembered: a hit from Redis spends no time hashing its key again. */
  private readonly keyHashes = new Map<string, string>()

  /** `namespace` names the current generation's keys, or throws while there is none to use. */
  constructor(
    private readonly prefix: string,
    private readonly namespace: () => string,
  ) {}

  get channel(): string {
    return `${this.prefix}:events`
  }

  get generationKey(): string {
    return `${this.prefix}:generation`
  }

  /**
   * The key index, in one slot: names in order (score 0, for `list`), the same names by delete time
   * (for pruning), each key's bytes and variants, and their totals (for `stats`).
   */
  indexKeys(): { names: string; expiry: string; sizes: string; totals: string } {
    const base = `${this.namespace()}:{index}`
    return { names: `${base}:keys`, expiry: `${base}:expiry`, sizes: `${base}:sizes`, totals: `${base}:totals` }
  }

  /** The index's keys in the order its scripts take them. */
  indexKeyList(): [string, string, string, string] {
    const { names, expiry, sizes, totals } = this.indexKeys()
    return [names, expiry, sizes, totals]
  }

  tagKey(tag: string): string {
    return `${this.namespace()}:tag:{${sha256(tag).slice(0, 32)}}`
  }

  /** A cache key's hash, remembered: it names the entry's keys, and each hit would hash it again. */
  private keyHash(key: string): string {
    let hash = this.keyHashes.get(key)
    if (hash === undefined) {
      if (this.keyHashes.size >= KEY_HASHES_KEPT) this.keyHashes.clear()
      hash = sha256(key).slice(0, 32)
      this.keyHashes.set(key, hash)
    }
    return hash
  }

  /** What the names of one entry's keys start with: all in one Cluster slot, by the hash tag in braces. */
  private entryBase(key: string): string {
    return `${this.namespace()}:{${this.keyHash(key)}}`
  }

  /** The key of the hash of one entry's variants: every hit reads it, so it is built alone. */
  variantsKey(key: string): string {
    return `${this.entryBase(key)}:e`
  }

  entryKeys(key: string) {
    const base = this.entryBase(key)
    return {
      variants: this.variantsKey(key),
      vary: `${base}:vary`,
      used: `${base}:used`,
      lock: `${base}:lock`,
      chunk: (body: string, n: number) => `${base}:c:${body}:${n}`,
    }
  }

  chunkKeys(record: VariantRecord): string[] {
    const { chunk } = this.entryKeys(record.key)
    return Array.from({ length: record.chunks }, (_, n) => chunk(record.body, n))
  }
}
