/**
 * Range requests answered from a stored complete response (RFC 9110 §14, RFC 9111 §3.3–3.4):
 * which part of the body a request gets, as a pure function of the request's fields and the
 * stored meta and size. It knows nothing of stores: the cache slices the body it chose.
 */

import { parseHttpDate } from "./http-date.ts"
import type { EntryMeta } from "./store.ts"

/** Bytes `start` up to `end` (exclusive) of a body. */
export interface ByteRange {
  start: number
  end: number
}

/** What a Range request gets from a stored body: a part of it, a 416, or the whole (Range ignored). */
export type RangeAnswer = ByteRange | "unsatisfiable" | "whole"

// RFC 9110 §14.1.2: a byte range is first-pos "-" [ last-pos ], or "-" suffix-length.
const INT_RANGE = /^(\d+)-(\d*)$/
const SUFFIX_RANGE = /^-(\d+)$/
const RANGE_UNIT = /^bytes=/i

/**
 * The part of a stored `size`-byte 200 that a request with this Range and If-Range gets.
 * Only a single range is served as a 206: several ranges would need a multipart/byteranges
 * body, and RFC 9110 §14.2 lets a server answer them with the whole representation instead.
 */
export function rangeAnswer(range: string, ifRange: string | null, meta: EntryMeta, size: number, now: number): RangeAnswer {
  // RFC 9110 §14.2: a server may ignore Range; we do for anything but a complete 200 with a body
  // (a 206 of an empty body cannot be written: there is no last byte to name).
  if (meta.status !== 200 || size === 0) return "whole"
  // RFC 9110 §13.1.5: an If-Range that fails means the whole representation is wanted.
  if (ifRange !== null && !ifRangeHolds(ifRange, meta, now)) return "whole"
  // RFC 9110 §14.2: an unknown range unit, or a ranges-specifier we cannot read, is ignored.
  if (!RANGE_UNIT.test(range)) return "whole"
  const specs = range.slice("bytes=".length).split(",")
  const satisfiable: ByteRange[] = []
  for (const spec of specs) {
    const part = byteRange(spec.trim(), size)
    if (part === undefined) return "whole"
    if (part !== "unsatisfiable") satisfiable.push(part)
  }
  // RFC 9110 §15.5.17: 416 when no range overlaps the representation.
  if (satisfiable.length === 0) return "unsatisfiable"
  return specs.length === 1 ? (satisfiable[0] as ByteRange) : "whole"
}

/** One range-spec against a body of `size` bytes; undefined when it is not valid syntax. */
function byteRange(spec: string, size: number): ByteRange | "unsatisfiable" | undefined {
  const suffix = SUFFIX_RANGE.exec(spec)
  if (suffix) {
    // RFC 9110 §14.1.2: a suffix longer than the body means the whole body; a zero one, nothing.
    const length = Number(suffix[1])
    return length === 0 ? "unsatisfiable" : { start: Math.max(0, size - length), end: size }
  }
  const int = INT_RANGE.exec(spec)
  if (!int) return undefined
  const first = Number(int[1])
  const last = int[2] === "" ? Infinity : Number(int[2])
  // RFC 9110 §14.1.1: a last-pos before first-pos makes the range invalid.
  if (last < first) return undefined
  // RFC 9110 §14.1.2: a range that starts past the end is unsatisfiable; one that ends past it
  // (or names no end) ends at the end.
  if (first >= size) return "unsatisfiable"
  return { start: first, end: Math.min(last + 1, size) }
}

/** RFC 9110 §13.1.5: does If-Range name the stored representation, by a strong validator? */
function ifRangeHolds(ifRange: string, meta: EntryMeta, now: number): boolean {
  const validator = ifRange.trim()
  // An entity-tag: the strong comparison (RFC 9110 §8.8.3.2), so a weak tag never matches.
  if (validator.startsWith('"') || validator.startsWith("W/")) {
    return !validator.startsWith("W/") && meta.etag !== null && !meta.etag.startsWith("W/") && meta.etag === validator
  }
  // An HTTP-date: it must be the stored Last-Modified exactly, and that must be a strong
  // validator, which for a cache means its Date is at least a second later (RFC 9110 §8.8.2.2).
  const date = parseHttpDate(validator, now)
  const lastModified = parseHttpDate(meta.lastModified, now)
  if (date === undefined || lastModified === undefined || date !== lastModified) return false
  const stored = parseHttpDate(storedField(meta, "date"), now)
  return stored !== undefined && stored - lastModified >= 1000
}

function storedField(meta: EntryMeta, name: string): string | null {
  for (const [field, value] of meta.headers) if (field === name) return value
  return null
}

/** Content-Range of a 206 (RFC 9110 §14.4): the part's first and last byte, and the whole length. */
export function contentRange({ start, end }: ByteRange, size: number): string {
  return `bytes ${start}-${end - 1}/${size}`
}
