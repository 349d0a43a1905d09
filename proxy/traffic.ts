/**
 * The inspector's view of recent traffic: per 10-second bucket over the last hour, what requests
 * came to, their status classes, the bytes served from the cache and from the origin, the origin's
 * errors and latency; and the URLs served most. The request path adds to plain numbers in the
 * current bucket (as proxy/metrics.ts does for Prometheus); the admin API sums buckets when asked.
 */
import { isFromCache, OUTCOME_KINDS } from "../cache/outcome.ts"
import type { Access } from "./log.ts"

const BUCKET_MS = 10_000
/** An hour of 10-second buckets: the longest window the inspector offers. */
const KEPT_BUCKETS = 360
/** Every window is drawn as this many bars: 10 s each over 10 minutes, a minute each over an hour. */
const BARS = 60
/** The windows the inspector offers, by the name the API takes. */
export const WINDOWS = { "10m": 10 * 60_000, "1h": 60 * 60_000 } as const
export type WindowName = keyof typeof WINDOWS
/** Origin latency, upper bounds in ms of a histogram's buckets (p50 and p99 are read from it). */
const LATENCY_BOUNDS_MS = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000]
const STATUS_CLASSES = ["1xx", "2xx", "3xx", "4xx", "5xx"] as const
/** What a request came to, as the inspector charts it: the cache's outcome, or an error when the origin gave no answer. */
const TRAFFIC_OUTCOMES = [...OUTCOME_KINDS, "error"] as const
type TrafficOutcome = (typeof TRAFFIC_OUTCOMES)[number]
/**
 * URLs ranked at most; past it, the half served least is forgotten (among equals, those known
 * longest). A client can ask for any number of URLs, so the ranking is bounded; a URL served
 * often is back in it at once.
 */
const MAX_RANKED_URLS = 10_000
/** The top URLs listed, by requests served from the cache and by bytes sent. */
const TOP_URLS = 10
/**
 * The top URLs a worker hands the primary (--workers), by each measure: a URL ranked just below
 * in one worker and high in another may be counted short, but not one among a worker's first 100.
 */
const EXPORTED_URLS = 100

// One bucket's figures, in one array: outcomes, status classes, then these, then the latency histogram.
const STATUS_AT = TRAFFIC_OUTCOMES.length
const CACHE_BYTES_AT = STATUS_AT + STATUS_CLASSES.length
const ORIGIN_BYTES_AT = CACHE_BYTES_AT + 1
const ORIGIN_REQUESTS_AT = ORIGIN_BYTES_AT + 1
const ORIGIN_ERRORS_AT = ORIGIN_REQUESTS_AT + 1
const LATENCY_AT = ORIGIN_ERRORS_AT + 1
const FIGURES = LATENCY_AT + LATENCY_BOUNDS_MS.length + 1

/** One bar of the chart: when it starts, and what its requests came to. */
interface Bar {
  at: number
  requests: number
  /** Requests answered from the cache (hit, stale, revalidated, coalesced). */
  hits: number
  outcomes: Record<TrafficOutcome, number>
}

/** A window's figures, as /api/stats gives them and the inspector shows them. */
export interface TrafficSummary {
  window: WindowName
  barSeconds: number
  bars: Bar[]
  requests: number
  outcomes: Record<TrafficOutcome, number>
  statusClasses: Record<(typeof STATUS_CLASSES)[number], number>
  bytes: { cache: number; origin: number }
  origin: { requests: number; errors: number; p50Ms: number | null; p99Ms: number | null }
}

/** What /api/stats gives of the traffic: a window's figures, and the URLs served most since the start. */
export type TrafficView = TrafficSummary & ReturnType<Traffic["top"]>

export interface RankedUrl {
  path: string
  requests: number
  /** Requests answered from the cache. */
  hits: number
  /** Body bytes sent. */
  bytes: number
}

/** One process's traffic as plain data, to cross to the primary of a group of workers. */
export interface TrafficExport {
  buckets: { at: number; figures: number[] }[]
  urls: RankedUrl[]
}

export class Traffic {
  private current = { at: bucketStart(Date.now()), figures: new Float64Array(FIGURES) }
  private readonly buckets = [this.current]
  private readonly ranked = new Map<string, RankedUrl>()

  /** The traffic of several processes (a group of workers) as one: buckets and URLs summed. */
  static merged(parts: TrafficExport[]): Traffic {
    const traffic = new Traffic()
    const byStart = new Map<number, Float64Array<ArrayBuffer>>()
    for (const { buckets, urls } of parts) {
      for (const { at, figures } of buckets) {
        const sum = byStart.get(at) ?? new Float64Array(FIGURES)
        figures.forEach((value, index) => {
          ;(sum[index] as number) += value
        })
        byStart.set(at, sum)
      }
      for (const url of urls) {
        const known = traffic.ranked.get(url.path)
        if (known === undefined) traffic.ranked.set(url.path, { ...url })
        else {
          known.requests += url.requests
          known.hits += url.hits
          known.bytes += url.bytes
        }
      }
    }
    traffic.buckets.length = 0
    for (const at of [...byStart.keys()].sort((a, b) => a - b))
      traffic.buckets.push({ at, figures: byStart.get(at) as Float64Array<ArrayBuffer> })
    return traffic
  }

  /** This process's traffic as plain data: every bucket kept, and its first URLs by hits and by bytes. */
  export(): TrafficExport {
    const urls = [...this.ranked.values()]
    const first = (by: (url: RankedUrl) => number) => [...urls].sort((a, b) => by(b) - by(a)).slice(0, EXPORTED_URLS)
    return {
      buckets: this.buckets.map(({ at, figures }) => ({ at, figures: [...figures] })),
      urls: [...new Set([...first((url) => url.hits), ...first((url) => url.bytes)])],
    }
  }

  /** Counts one answered request. */
  record(access: Access): void {
    const figures = this.current.figures
    const outcome = access.originError === undefined ? OUTCOME_KINDS.indexOf(access.cache) : TRAFFIC_OUTCOMES.indexOf("error")
    ;(figures[outcome] as number)++
    ;(figures[STATUS_AT + Math.floor(access.status / 100) - 1] as number)++
    const fromCache = isFromCache(access.cache)
    ;(figures[fromCache ? CACHE_BYTES_AT : ORIGIN_BYTES_AT] as number) += access.bytes
    const url = this.ranked.get(access.path)
    if (url === undefined) this.rank({ path: access.path, requests: 1, hits: fromCache ? 1 : 0, bytes: access.bytes })
    else {
      url.requests++
      if (fromCache) url.hits++
      url.bytes += access.bytes
    }
  }

  /** Counts one request to the origin: how long it took, and whether it got an answer. */
  recordOrigin(ms: number, answered: boolean): void {
    const figures = this.current.figures
    ;(figures[ORIGIN_REQUESTS_AT] as number)++
    if (!answered) (figures[ORIGIN_ERRORS_AT] as number)++
    let bucket = 0
    while (bucket < LATENCY_BOUNDS_MS.length && ms > (LATENCY_BOUNDS_MS[bucket] as number)) bucket++
    ;(figures[LATENCY_AT + bucket] as number)++
  }

  /** Moves to the next bucket when its time has come (a timer calls it, so requests read no clock). */
  tick(now: number): void {
    const at = bucketStart(now)
    if (at === this.current.at) return
    this.current = { at, figures: new Float64Array(FIGURES) }
    this.buckets.push(this.current)
    if (this.buckets.length > KEPT_BUCKETS) this.buckets.shift()
  }

  /** The window's figures, summed, and its 60 bars (quiet ones as zeros), oldest first. */
  summary(window: WindowName, now: number): TrafficSummary {
    const barMs = WINDOWS[window] / BARS
    const lastBar = now - (now % barMs)
    const firstBar = lastBar - (BARS - 1) * barMs
    const bars = Array.from({ length: BARS }, () => new Float64Array(FIGURES))
    const total = new Float64Array(FIGURES)
    for (const { at, figures } of this.buckets) {
      if (at < firstBar) continue
      const bar = bars[Math.min(BARS - 1, Math.floor((at - firstBar) / barMs))] as Float64Array
      for (let i = 0; i < FIGURES; i++) {
        ;(bar[i] as number) += figures[i] as number
        ;(total[i] as number) += figures[i] as number
      }
    }
    const latency = total.subarray(LATENCY_AT)
    return {
      window,
      barSeconds: barMs / 1000,
      bars: bars.map((figures, index) => ({
        at: firstBar + index * barMs,
        requests: sum(figures, 0, STATUS_AT),
        hits: OUTCOME_KINDS.reduce((hits, kind, i) => hits + (isFromCache(kind) ? (figures[i] as number) : 0), 0),
        outcomes: outcomes(figures),
      })),
      requests: sum(total, 0, STATUS_AT),
      outcomes: outcomes(total),
      statusClasses: Object.fromEntries(
        STATUS_CLASSES.map((name, i) => [name, total[STATUS_AT + i] as number]),
      ) as TrafficSummary["statusClasses"],
      bytes: { cache: total[CACHE_BYTES_AT] as number, origin: total[ORIGIN_BYTES_AT] as number },
      origin: {
        requests: total[ORIGIN_REQUESTS_AT] as number,
        errors: total[ORIGIN_ERRORS_AT] as number,
        p50Ms: quantileMs(latency, 0.5),
        p99Ms: quantileMs(latency, 0.99),
      },
    }
  }

  /** The URLs served most since the start: by requests answered from the cache, and by bytes sent. */
  top(): { byHits: RankedUrl[]; byBytes: RankedUrl[] } {
    const urls = [...this.ranked.values()]
    const first = (by: (url: RankedUrl) => number) =>
      urls
        .filter((url) => by(url) > 0)
        .sort((a, b) => by(b) - by(a) || (a.path < b.path ? -1 : 1))
        .slice(0, TOP_URLS)
        .map((url) => ({ ...url }))
    return { byHits: first((url) => url.hits), byBytes: first((url) => url.bytes) }
  }

  private rank(url: RankedUrl): void {
    if (this.ranked.size >= MAX_RANKED_URLS) {
      const fewest = [...this.ranked.values()].sort((a, b) => a.requests - b.requests).slice(0, MAX_RANKED_URLS / 2)
      for (const { path } of fewest) this.ranked.delete(path)
    }
    this.ranked.set(url.path, url)
  }
}

function bucketStart(ms: number): number {
  return ms - (ms % BUCKET_MS)
}

function sum(figures: Float64Array, from: number, to: number): number {
  let total = 0
  for (let i = from; i < to; i++) total += figures[i] as number
  return total
}

function outcomes(figures: Float64Array): Record<TrafficOutcome, number> {
  return Object.fromEntries(TRAFFIC_OUTCOMES.map((name, i) => [name, figures[i] as number])) as Record<TrafficOutcome, number>
}

/**
 * The latency below which this share of origin requests fell, interpolated linearly within its
 * histogram bucket (as Prometheus's histogram_quantile does); null without requests. Past the last
 * bound, the last bound: the histogram knows no more.
 */
function quantileMs(histogram: Float64Array, share: number): number | null {
  const count = sum(histogram, 0, histogram.length)
  if (count === 0) return null
  const rank = share * count
  let below = 0
  for (let i = 0; i < histogram.length; i++) {
    const inBucket = histogram[i] as number
    if (below + inBucket >= rank && inBucket > 0) {
      const upper = LATENCY_BOUNDS_MS[i]
      if (upper === undefined) return LATENCY_BOUNDS_MS.at(-1) as number
      const lower = i === 0 ? 0 : (LATENCY_BOUNDS_MS[i - 1] as number)
      return Math.round((lower + ((upper - lower) * (rank - below)) / inBucket) * 10) / 10
    }
    below += inBucket
  }
  return LATENCY_BOUNDS_MS.at(-1) as number
}
