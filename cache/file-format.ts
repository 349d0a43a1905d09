/**
 * The file store's on-disk format, version 1: where things are (`<dir>/v1/<2 hex>/<sha256(key)>/`,
 * `<variant>.meta` beside `<variant>.<write id>.body`, `v1/tags/<sha256(tag)>/<sha256(key)>`,
 * `generation`), what a meta file holds, and the checks it must pass before anything in it is
 * used. No I/O: the store reads and writes, this says what is valid.
 */
import { randomBytes } from "node:crypto"
import type { Stats } from "node:fs"
import { basename, dirname } from "node:path"
import { sha256 } from "./bytes.ts"
import { FIELD_NAME, isFinalStatus } from "./policy.ts"
import type { EntryMeta } from "./store.ts"

export const FORMAT_DIR = "v1"
export const TAGS_DIR = "tags"
export const META_SUFFIX = ".meta"
export const TEMP_SUFFIX = ".tmp"
// The names the store gives: a shard is a key hash's first two hex digits, a key's directory the
// hash, a meta `<variant id>.meta`, a body `<variant id>.<write id>.body`.
export const SHARD_NAME = /^[0-9a-f]{2}$/
export const KEY_DIR_NAME = /^[0-9a-f]{64}$/
export const META_NAME = /^[0-9a-f]{64}\.meta$/
const BODY_NAME = /^([0-9a-f]{64})\.[0-9a-f]{12}\.body$/
const SHA256_HEX = /^[0-9a-f]{64}$/
/** Written by `clear`: a running proxy that sees it change forgets what it holds. */
export const GENERATION_FILE = "generation"
export const MAX_GENERATION_BYTES = 64

// A meta is a few KiB (the runtimes bound the headers in it): a larger file is none of ours, and
// is not read into memory.
export const MAX_META_BYTES = 1 << 20

// Metas written before `deleteAt` existed have none: they are kept until evicted.
const NEVER = Number.MAX_SAFE_INTEGER

/** What lives on disk next to the body: the meta, plus what ties it to its key and body. */
export interface MetaFile extends EntryMeta {
  format: 1
  key: string
  bodyFile: string
  size: number
  /** The body's sha256, hex. Metas written before it was kept have none: their bodies are checked by size only. */
  sha256?: string
}

/** What a meta says of its body. */
export interface BodyRecord {
  bodyFile: string
  size: number
  sha256: string | undefined
}

/** An entry that cannot be served as it is on disk: the message says why. */
export class Broken extends Error {}

const isString = (value: unknown): value is string => typeof value === "string"
const isNumber = (value: unknown): value is number => typeof value === "number" // JSON has no NaN or Infinity
const isBoolean = (value: unknown): value is boolean => typeof value === "boolean"
const isByteCount = (value: unknown): boolean => Number.isSafeInteger(value) && (value as number) >= 0
const isRecord = (value: unknown): value is Record<string, unknown> => typeof value === "object" && value !== null && !Array.isArray(value)

// RFC 9110 §5.5: a field value holds no CR, LF or NUL; and Headers takes bytes (up to U+00FF) only.
const FIELD_VALUE_FORBIDDEN = /[\r\n\u0100-\uffff]/

const isFieldValue = (value: unknown): boolean => isString(value) && !FIELD_VALUE_FORBIDDEN.test(value) && !value.includes("\0")
const isFieldValueOrNull = (value: unknown): boolean => value === null || isFieldValue(value)

function isHeaderList(value: unknown): boolean {
  return (
    Array.isArray(value) &&
    value.every(
      (pair) => Array.isArray(pair) && pair.length === 2 && isString(pair[0]) && FIELD_NAME.test(pair[0]) && isFieldValue(pair[1]),
    )
  )
}

function isVarySelection(value: unknown): boolean {
  return isRecord(value) && Object.entries(value).every(([name, selected]) => FIELD_NAME.test(name) && isFieldValueOrNull(selected))
}

/**
 * Each field a meta file holds and what it must be: what the store and the cache do with a meta
 * (build headers and responses, compare times) must not fail on anything a file can say.
 */
const META_FIELDS: [keyof MetaFile, (value: unknown) => boolean, string][] = [
  ["format", (value) => value === 1, "1"],
  ["key", isString, "a string"],
  ["bodyFile", isString, "a string"],
  ["size", isByteCount, "a byte count"],
  ["sha256", (value) => value === undefined || (isString(value) && SHA256_HEX.test(value)), "absent or 64 hex digits"],
  ["status", (value) => Number.isInteger(value) && isFinalStatus(value as number), "an integer in 200-599"],
  ["headers", isHeaderList, "a list of [name, value] pairs that a response can carry"],
  ["vary", isVarySelection, "an object of header names to values or null"],
  ["responseTime", isNumber, "a number"],
  ["deleteAt", (value) => value === undefined || isNumber(value), "a number"],
  ["initialAgeMs", isNumber, "a number"],
  ["freshMs", isNumber, "a number"],
  ["staleWhileRevalidateMs", isNumber, "a number"],
  ["staleIfErrorMs", isNumber, "a number"],
  ["mustRevalidate", isBoolean, "true or false"],
  ["noCache", isBoolean, "true or false"],
  // Sent back to the origin as If-None-Match and If-Modified-Since.
  ["etag", isFieldValueOrNull, "a header value or null"],
  ["lastModified", isFieldValueOrNull, "a header value or null"],
  ["tags", (value) => value === undefined || (Array.isArray(value) && value.every(isString)), "absent or a list of strings"],
  ["softPurged", (value) => value === undefined || value === true, "absent or true"],
]

/**
 * A meta file's content, every field checked. Its key and Vary selection must be those its path
 * was named from, and its body file the name they give: a meta never points anywhere but at its
 * own variant's body.
 */
export function parseMetaFile(text: string, metaPath: string): MetaFile {
  let file: unknown
  try {
    file = JSON.parse(text)
  } catch {
    throw new Broken("its meta is not JSON") // the parser's message would quote the file into the log
  }
  if (!isRecord(file)) throw new Broken("its meta is not a JSON object")
  for (const [field, isValid, expected] of META_FIELDS) {
    if (!isValid(file[field])) throw new Broken(`its ${field} is not ${expected}`)
  }
  const checked = file as unknown as MetaFile
  if (sha256(checked.key) !== basename(dirname(metaPath))) throw new Broken("its key is not the one its directory is named for")
  const variantId = variantIdOf(checked.key, checked.vary)
  if (basename(metaPath) !== variantId + META_SUFFIX) throw new Broken("its key and Vary selection are not those its name was made from")
  if (variantOfBody(checked.bodyFile) !== variantId) throw new Broken("its body file is not one of its variant's")
  return checked
}

/** The body file a meta file's text names, however broken the rest of it; none when it names none. */
export function bodyFileNamed(text: string): string | undefined {
  try {
    const file: unknown = JSON.parse(text)
    return isRecord(file) && isString(file.bodyFile) ? file.bodyFile : undefined
  } catch {
    return undefined // not JSON: its reader reports and discards it
  }
}

/** The tags a meta file's text names, however broken the rest of it: their index entries go with it. */
export function tagsNamed(text: string): string[] {
  try {
    const file: unknown = JSON.parse(text)
    return isRecord(file) && Array.isArray(file.tags) ? file.tags.filter(isString) : []
  } catch {
    return [] // not JSON: the start-up sweep of the tag index removes what it named
  }
}

/** The EntryMeta a checked meta file holds: those fields only, whatever else the file has. */
export function entryMetaOf(file: MetaFile): EntryMeta {
  return {
    status: file.status,
    headers: file.headers,
    vary: file.vary,
    responseTime: file.responseTime,
    deleteAt: file.deleteAt ?? NEVER,
    initialAgeMs: file.initialAgeMs,
    freshMs: file.freshMs,
    staleWhileRevalidateMs: file.staleWhileRevalidateMs,
    staleIfErrorMs: file.staleIfErrorMs,
    mustRevalidate: file.mustRevalidate,
    noCache: file.noCache,
    etag: file.etag,
    lastModified: file.lastModified,
    ...(file.tags && { tags: file.tags }),
    ...(file.softPurged && { softPurged: file.softPurged }),
  }
}

/**
 * Why a body file cannot be served as this entry's, if it cannot. A link of either kind could
 * make it any file the proxy can read: a symbolic one shows in lstat, a hard one as a second name.
 */
export function bodyProblem(stat: Stats, size: number): string | undefined {
  if (!stat.isFile()) return "its body is not a regular file"
  if (stat.nlink > 1) return `its body has ${stat.nlink} names (a hard link)`
  if (stat.size !== size) return `its body is ${stat.size} bytes, its meta says ${size}`
  return undefined
}

/** A meta file's text: the entry's meta, with what ties it to its key and body. */
export function metaFileText(key: string, body: BodyRecord, meta: EntryMeta): string {
  const file: MetaFile = { format: 1, key, ...body, ...meta }
  return JSON.stringify(file)
}

/** The variant id a body file's name starts with, if it is a name the store gives. */
export function variantOfBody(name: string): string | undefined {
  return BODY_NAME.exec(name)?.[1]
}

export function variantIdOf(key: string, vary: EntryMeta["vary"]): string {
  return sha256(`${key}\n${JSON.stringify(vary)}`)
}

export function writeId(): string {
  return randomBytes(6).toString("hex")
}
