/**
 * The inspector's entries table, sorted and filtered by the server over what the cache holds
 * (under a URL prefix), with its total: "the largest" or "the most hit" must be the cache's, not
 * those of the one page a listing happened to return first.
 *
 * No store keeps its entries in order of size, hits, age or time to live, so a sorted table reads
 * every entry under the prefix: on the file store one small `.meta` file per URL, on Redis one hash
 * per URL (in pages of a thousand). That is bounded here: at most MAX_SORTED_URLS are read, in the
 * listing's own order (by key), and the answer says when the prefix held more (`complete: false`),
 * so the page can ask for a narrower prefix. Reading 10,000 entries takes some hundreds of ms on a
 * local disk; a table answer is built per request, nothing is kept between pages.
 */
import type { Cache, EntryView } from "../cache.ts"

/** The most URLs one sorted table reads. */
const MAX_SORTED_URLS = 10_000
/** URLs read per listing page while building the table. */
const LISTING_PAGE = 1000

/** The columns the table sorts by, and each one's value. */
const SORT_VALUES = {
  path: (entry: EntryView & { path: string }) => entry.path,
  status: (entry: EntryView) => entry.status,
  size: (entry: EntryView) => entry.bytes,
  hits: (entry: EntryView) => entry.hits,
  age: (entry: EntryView) => entry.ageSeconds,
  ttl: (entry: EntryView) => entry.ttlSeconds,
} as const
export type SortKey = keyof typeof SORT_VALUES
export const SORT_KEYS = Object.keys(SORT_VALUES) as SortKey[]

export interface TableQuery {
  /** A full URL prefix (the admin API resolves paths against the origin). */
  prefix: string
  sort: SortKey
  descending: boolean
  /** Only URLs whose path or one of whose tags holds this, case-insensitively; "" for all. */
  filter: string
  offset: number
  limit: number
}

export interface Table {
  entries: (EntryView & { path: string })[]
  /** URLs that pass the filter, among those read. */
  total: number
  /** URLs read under the prefix. */
  read: number
  /** Whether every URL under the prefix was read (else the first MAX_SORTED_URLS by key were). */
  complete: boolean
}

/** One page of the sorted, filtered table. `pathOf` gives a URL as clients ask for it. */
export async function entryTable(cache: Cache, query: TableQuery, pathOf: (url: string) => string): Promise<Table> {
  const filter = query.filter.toLowerCase()
  const matching: (EntryView & { path: string })[] = []
  let read = 0
  let cursor: string | undefined
  do {
    const page = await cache.entries({ prefix: query.prefix, limit: Math.min(LISTING_PAGE, MAX_SORTED_URLS - read), cursor })
    read += page.entries.length
    cursor = page.cursor
    for (const entry of page.entries) {
      const path = pathOf(entry.url)
      if (filter === "" || path.toLowerCase().includes(filter) || entry.tags.some((tag) => tag.toLowerCase().includes(filter)))
        matching.push({ ...entry, path })
    }
  } while (cursor !== undefined && read < MAX_SORTED_URLS)
  const value = SORT_VALUES[query.sort] as (entry: EntryView & { path: string }) => string | number
  const direction = query.descending ? -1 : 1
  // Ties go by path, so pages of equal values do not overlap or skip between requests.
  matching.sort((a, b) => compare(value(a), value(b)) * direction || compare(a.path, b.path))
  return { entries: matching.slice(query.offset, query.offset + query.limit), total: matching.length, read, complete: cursor === undefined }
}

function compare(a: string | number, b: string | number): number {
  return a < b ? -1 : a > b ? 1 : 0
}
