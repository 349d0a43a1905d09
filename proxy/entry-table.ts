/**
 * The inspector's entries table, sorted and filtered by the server over what the cache holds
 * (under a URL prefix), with its total: "the largest" or "the most hit" must be the cache's, not
 * those of the one page a listing happened to return first.
 *
 * No store keeps its entries in order of size, hits, age or time to live, so a sorted table reads
 * every entry under the prefix: on the file store one small `.meta` file per URL, on Redis one hash
 * per URL (in pages of a thousand). That is bounded here: at most MAX_SORTED_URLS are read, in the
 * listing's own order (by key), and the answer says when the prefix held more (`complete: false`),
 * so the page can ask for a narrower prefix. Reading 10,000 entries on the file store took 3-6 s
 * (measured on a shared 2-core VM), so what was read is kept for TABLE_REUSE_MS: the next page, or
 * another sort or filter, costs no second read. A purge through the API forgets it.
 */
import type { Cache, EntryView } from "../cache.ts"

/** The most URLs one sorted table reads. */
const MAX_SORTED_URLS = 10_000
/** URLs read per listing page while building the table. */
const LISTING_PAGE = 1000
/** How long one read of a prefix serves further pages, sorts and filters. */
const TABLE_REUSE_MS = 10_000

/** A listed URL, with its path as clients ask for it. */
type Row = EntryView & { path: string }

/** The columns the table sorts by, and each one's value. */
const SORT_VALUES = {
  path: (entry: Row) => entry.path,
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
  entries: Row[]
  /** URLs that pass the filter, among those read. */
  total: number
  /** URLs read under the prefix (at most MAX_SORTED_URLS). */
  read: number
  /** Whether every URL under the prefix was read (else the first MAX_SORTED_URLS the listing gave). */
  complete: boolean
}

/** The tables of one admin listener: the last prefix read is kept a while, for the next page or sort. */
export class EntryTables {
  /** The last prefix read: ages are as of its start, and it is reused for a while after its end. */
  private last: { prefix: string; startedAt: number; doneAt: number; rows: Row[]; complete: boolean } | undefined

  constructor(
    private readonly cache: Cache,
    /** A URL as clients ask for it. */
    private readonly pathOf: (url: string) => string,
  ) {}

  /** One page of the sorted, filtered table. */
  async table(query: TableQuery): Promise<Table> {
    const last =
      this.last?.prefix === query.prefix && Date.now() - this.last.doneAt < TABLE_REUSE_MS ? this.last : await this.read(query.prefix)
    // Entries read a few seconds ago have aged since: their age and time to live move with the clock.
    const elapsed = Math.floor((Date.now() - last.startedAt) / 1000)
    const filter = query.filter.toLowerCase()
    const matching = last.rows
      .filter(
        (row) => filter === "" || row.path.toLowerCase().includes(filter) || row.tags.some((tag) => tag.toLowerCase().includes(filter)),
      )
      .map((row) => (elapsed === 0 ? row : { ...row, ageSeconds: row.ageSeconds + elapsed, ttlSeconds: row.ttlSeconds - elapsed }))
    const value = SORT_VALUES[query.sort] as (row: Row) => string | number
    const direction = query.descending ? -1 : 1
    // Ties go by path, so pages of equal values do not overlap or skip between requests.
    matching.sort((a, b) => compare(value(a), value(b)) * direction || compare(a.path, b.path))
    return {
      entries: matching.slice(query.offset, query.offset + query.limit),
      total: matching.length,
      read: last.rows.length,
      complete: last.complete,
    }
  }

  /** What was read no longer holds (a purge). */
  forget(): void {
    this.last = undefined
  }

  private async read(prefix: string) {
    const startedAt = Date.now()
    const rows: Row[] = []
    let cursor: string | undefined
    do {
      const page = await this.cache.entries({ prefix, limit: Math.min(LISTING_PAGE, MAX_SORTED_URLS - rows.length), cursor })
      cursor = page.cursor
      for (const entry of page.entries) rows.push({ ...entry, path: this.pathOf(entry.url) })
    } while (cursor !== undefined && rows.length < MAX_SORTED_URLS)
    // Reused from the read's end: a read that took longer than the reuse still serves the next page.
    this.last = { prefix, startedAt, doneAt: Date.now(), rows, complete: cursor === undefined }
    return this.last
  }
}

function compare(a: string | number, b: string | number): number {
  return a < b ? -1 : a > b ? 1 : 0
}
