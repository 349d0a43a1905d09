/**
 * The Redis store's values: a variant's record (meta, size, body id, chunk count) as JSON after
 * its length, followed by its body when that is under one chunk; the body in chunks of
 * CHUNK_BYTES otherwise; and the Vary name lists of a key's variants. What is read back is
 * checked against this version's format, never trusted.
 */
import { sha256 } from "./bytes.ts"
import type { EntryMeta, ListedEntry, Warn } from "./store.ts"

export const CHUNK_BYTES = 256 * 1024

/** What the hash keeps for one variant. */
export interface VariantRecord {
  key: string
  meta: EntryMeta
  size: number
  /** The body's id, naming its chunks. */
  body: string
  /** How many chunks; 0 for a body kept inline, in the variant's value after its record. */
  chunks: number
  /** A small body, stored and read with the record: one round trip for a hit. Not in the JSON. */
  inline?: Uint8Array
}

/** A variant's record and the stored JSON it was parsed from. */
interface ParsedRecord {
  json: Buffer
  record: VariantRecord
}

/** A variant's value starts with its record's length in bytes (see `encode`). */
const RECORD_LENGTH_BYTES = 4
/** Keys whose parsed records are remembered; a record is about 1 KB of JSON: a few MB (bytes and parsed) at most. */
const RECORDS_KEPT = 1000
const VARIANTS_KEPT = 4

/** The Vary name lists stored for a key, if they are what this version writes. */
export function parseShapes(json: string): string[][] | undefined {
  try {
    const shapes: unknown = JSON.parse(json)
    const isNameList = (names: unknown) => Array.isArray(names) && names.every((name) => typeof name === "string")
    return Array.isArray(shapes) && shapes.every(isNameList) ? (shapes as string[][]) : undefined
  } catch {
    return undefined // reported by the caller, as any value not in this version's format
  }
}

export function listed({ key, meta, size }: VariantRecord): ListedEntry {
  return { key, meta, size, tiers: ["redis"] }
}

export function variantId(vary: EntryMeta["vary"]): string {
  return sha256(JSON.stringify(vary)).slice(0, 32)
}

/**
 * A variant's value in the entry's hash: its record's JSON, after the JSON's length (4 bytes, big
 * endian), then its body when kept inline. One value per variant: a hit is one HVALS of one
 * bulk string, and a record never lands without its body.
 */
export function encode({ inline, ...record }: VariantRecord): Buffer {
  const json = Buffer.from(JSON.stringify(record))
  const length = Buffer.allocUnsafe(RECORD_LENGTH_BYTES)
  length.writeUInt32BE(json.byteLength)
  return Buffer.concat([length, json, inline ?? new Uint8Array(0)])
}

/** Reads variants' values back, remembering the records parsed, by cache key. */
export class RecordDecoder {
  /** By cache key: its variants' records as last parsed (see `decode`). */
  private readonly parsedRecords = new Map<string, ParsedRecord[]>()

  constructor(private readonly warn: Warn) {}

  /**
   * A variant from its stored value (see `encode`). Its record is parsed once per process while
   * its bytes stay the same: a hit from Redis compares bytes instead of parsing JSON, and the cache
   * recognises the same meta object, so it reuses the hit's headers built for it last time.
   * Records are never changed once parsed (a change is new bytes).
   */
  decode(key: string, value: Buffer): VariantRecord | undefined {
    const end = RECORD_LENGTH_BYTES + (value.byteLength >= RECORD_LENGTH_BYTES ? value.readUInt32BE(0) : 0)
    if (end <= RECORD_LENGTH_BYTES || end > value.byteLength) {
      this.warn("broken-entry", `${key}: ignoring a stored variant that is not in this version's format`)
      return undefined
    }
    const record = this.knownRecord(key, value, end) ?? this.parseRecord(key, value.subarray(RECORD_LENGTH_BYTES, end))
    if (record.chunks > 0) return record
    // The body as a view of the reply, as ioredis hands out every reply (the memory tier copies
    // what it keeps); a record of a fixed shape, not a spread: this is every Redis hit's path.
    const { meta, size, body } = record
    return { key, meta, size, body, chunks: 0, inline: value.subarray(end) }
  }

  /** The record parsed before from the same JSON (bytes RECORD_LENGTH_BYTES up to `end` of `value`). */
  private knownRecord(key: string, value: Buffer, end: number): VariantRecord | undefined {
    for (const { json, record } of this.parsedRecords.get(key) ?? []) {
      if (json.byteLength === end - RECORD_LENGTH_BYTES && value.compare(json, 0, json.byteLength, RECORD_LENGTH_BYTES, end) === 0)
        return record
    }
    return undefined
  }

  private parseRecord(key: string, json: Buffer): VariantRecord {
    const record = JSON.parse(json.toString()) as VariantRecord
    const known = this.parsedRecords.get(key)
    if (!known && this.parsedRecords.size >= RECORDS_KEPT) this.parsedRecords.clear()
    // A key's variants are few; the oldest one remembered goes first. Bytes of its own: a reply's
    // buffer may be a slice of a much larger read.
    this.parsedRecords.set(key, [...(known ?? []).slice(1 - VARIANTS_KEPT), { json: Buffer.from(json), record }])
    return record
  }
}
