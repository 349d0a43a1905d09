/**
 * Prometheus metrics (prom-client renders them, with the process metrics it collects).
 *
 * The request path only adds to plain numbers: prom-client's labelled `inc` and `observe` hash
 * their labels on every call, even through a pre-bound child, about 1.1 µs a request for the three
 * a hit needs, measured; a 1 KiB hit takes about 19 µs, so that alone was 6 % of it. prom-client
 * reads the numbers when /metrics is scraped (`collect`), and renders them.
 */
import {
  AggregatorRegistry,
  Counter,
  collectDefaultMetrics,
  Gauge,
  Histogram,
  type LabelValues,
  type MetricObjectWithValues,
  type MetricValue,
  Registry,
} from "prom-client"
import { isFromCache, OUTCOME_KINDS } from "../cache/outcome.ts"
import type { Listing, OriginFailure, TierStats, Warn } from "../cache.ts"
import type { AdminMetrics, StoreState } from "./admin.ts"
import type { Access } from "./log.ts"
import { Traffic, type TrafficExport, type TrafficView, type WindowName } from "./traffic.ts"

const STATUS_CLASSES = ["1xx", "2xx", "3xx", "4xx", "5xx"] as const
const ORIGIN_FAILURES: readonly OriginFailure[] = ["refused", "reset", "timeout", "dns", "other"]
/** Seconds: a hit takes well under a millisecond, an origin up to the --timeout. */
const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
// Scrapes and /api/stats within this long share one read of the store's totals (a Redis round trip).
const STATS_TTL_MS = 5000
// A timer moves to the next bucket, so a request reads no clock for it (a clock read costs about
// 0.17 µs on a VM's kvm-clock, some 1 % of a hit): a request may land up to this late in one.
const RECENT_TICK_MS = 1000
// The event-loop lag is sampled this often; prom-client's 10 ms cost an idle proxy 1 % of a core
// under Bun (measured: 150 ms of CPU in 10 s against 40 ms without it; 70 ms at 100 ms).
const EVENT_LOOP_SAMPLE_MS = 100
const HEAP_SPACE_METRICS = ["total", "used", "available"].map((what) => `nodejs_heap_space_size_${what}_bytes`)
/** A sample line whose value is NaN (prom-client writes "Nan"), with its line break. */
const NAN_SAMPLE = /^[^#\n][^\n]* NaN\n/gim

export interface MetricsOptions {
  store: Listing
  /** Whether the shared store (Redis) is connected; absent when there is none. */
  storeConnected?: () => boolean
  warn: Warn
}

/** Label values and the total counted for them. */
type Tally = [LabelValues<string>, number]

/**
 * Declares counters whose totals are kept outside prom-client: `read` gives them when scraped.
 * Label names are those `read` uses.
 */
function tallyCounter(registers: Registry[]) {
  return (name: string, help: string, read: () => Tally[]) => {
    const tallies = read()
    new Counter({
      name,
      help,
      labelNames: Object.keys(tallies[0]?.[0] ?? {}),
      registers,
      collect() {
        this.reset()
        for (const [labels, value] of read()) this.inc(labels, value)
      },
    })
  }
}

/** A histogram filled by plain array additions on the request path; prom-client renders it. */
class TalliedHistogram<T extends string> extends Histogram<T> {
  constructor(
    private readonly metricName: string,
    private readonly metricHelp: string,
    labelNames: readonly T[],
    registers: Registry[],
  ) {
    super({ name: metricName, help: metricHelp, labelNames, registers, buckets: LATENCY_BUCKETS })
  }

  private readonly tallies = new Map<string, { labels: LabelValues<T>; buckets: Float64Array; sum: number; count: number }>()

  /** A recorder for one set of label values, to bind once and call per request. */
  recorder(labels: LabelValues<T>): (seconds: number) => void {
    const tally = { labels, buckets: new Float64Array(LATENCY_BUCKETS.length + 1), sum: 0, count: 0 }
    this.tallies.set(JSON.stringify(labels), tally)
    return (seconds) => {
      let bucket = 0
      while (bucket < LATENCY_BUCKETS.length && seconds > (LATENCY_BUCKETS[bucket] as number)) bucket++
      ;(tally.buckets[bucket] as number)++
      tally.sum += seconds
      tally.count++
    }
  }

  // The registry renders what get() gives: cumulative buckets, then sum and count, per label set.
  override async get() {
    const values = [...this.tallies.values()].flatMap(({ labels, buckets, sum, count }) => {
      let cumulative = 0
      const bucketValues = [...LATENCY_BUCKETS, Number.POSITIVE_INFINITY].map((le, index) => {
        cumulative += buckets[index] as number
        return {
          metricName: `${this.metricName}_bucket`,
          labels: { ...labels, le: le === Number.POSITIVE_INFINITY ? "+Inf" : le },
          value: cumulative,
        }
      })
      return [
        ...bucketValues,
        { metricName: `${this.metricName}_sum`, labels, value: sum },
        { metricName: `${this.metricName}_count`, labels, value: count },
      ]
    })
    const metric = { name: this.metricName, help: this.metricHelp, type: "histogram", aggregator: "sum", values }
    // The registry reads name, help, type and values; `collect` it does not read from here.
    return metric as unknown as Awaited<ReturnType<Histogram<T>["get"]>>
  }

  // prom-client's own histogram renders through this one; ours through get().
  getForPromString() {
    return this.get()
  }
}

/** The proxy's metrics: `record` each answered request and origin exchange; the admin listener renders them. */
export class ProxyMetrics implements AdminMetrics {
  private readonly registry = new Registry()
  readonly contentType = this.registry.contentType
  /** Requests by outcome (OUTCOME_KINDS order) × status class (STATUS_CLASSES order). */
  private readonly requests = new Float64Array(OUTCOME_KINDS.length * STATUS_CLASSES.length)
  private readonly servedBytes = { cache: 0, origin: 0 }
  private readonly originAnswers = new Float64Array(STATUS_CLASSES.length)
  private readonly originFailures = new Float64Array(ORIGIN_FAILURES.length)
  private purges = 0
  private purgedEntries = 0
  private readonly clientLatency: ((seconds: number) => void)[]
  private readonly originLatency: (seconds: number) => void
  private stats: { at: number; tiers: Promise<TierStats[]> } | undefined
  /** The inspector's figures: recent traffic by 10-second bucket, and the URLs served most. */
  private readonly traffic = new Traffic()
  private readonly startedAt = Date.now()
  /** Whether the shared store was connected when last looked at, and since when. */
  private storeState: { connected: boolean; since: number } | undefined

  constructor(private readonly options: MetricsOptions) {
    const registers = [this.registry]
    const counter = tallyCounter(registers)
    counter("caching_proxy_requests_total", "Requests answered, by cache outcome and status class", () =>
      [...this.requests].map((count, index) => [
        { cache: OUTCOME_KINDS[Math.floor(index / STATUS_CLASSES.length)], status: STATUS_CLASSES[index % STATUS_CLASSES.length] },
        count,
      ]),
    )
    const clientHistogram = new TalliedHistogram(
      "caching_proxy_request_duration_seconds",
      "Time from a request's arrival to its body's last byte, by cache outcome",
      ["cache"],
      registers,
    )
    this.clientLatency = OUTCOME_KINDS.map((cache) => clientHistogram.recorder({ cache }))
    counter("caching_proxy_served_bytes_total", "Body bytes sent to clients, by where they came from (the cache or the origin)", () =>
      Object.entries(this.servedBytes).map(([source, bytes]) => [{ source }, bytes]),
    )
    counter("caching_proxy_origin_requests_total", "Requests sent to the origin, by its answer's status class (none: it failed)", () => [
      ...[...this.originAnswers].map((count, index): Tally => [{ status: STATUS_CLASSES[index] }, count]),
      [{ status: "none" }, this.originFailures.reduce((sum, count) => sum + count, 0)],
    ])
    counter("caching_proxy_origin_errors_total", "Origin requests that got no answer, by reason", () =>
      [...this.originFailures].map((count, index) => [{ reason: ORIGIN_FAILURES[index] }, count]),
    )
    this.originLatency = new TalliedHistogram(
      "caching_proxy_origin_duration_seconds",
      "Time the origin took to send its response headers, or to fail",
      [],
      registers,
    ).recorder({})
    this.storeMetrics(registers)
    counter("caching_proxy_purges_total", "Purge requests served by the admin API", () => [[{}, this.purges]])
    counter("caching_proxy_purged_entries_total", "Entries removed or marked stale by purges", () => [[{}, this.purgedEntries]])
    const { storeConnected } = options
    if (storeConnected) {
      new Gauge({
        name: "caching_proxy_redis_connected",
        help: "1 while the shared store (Redis) is connected, else 0",
        registers,
        collect() {
          this.set(storeConnected() ? 1 : 0)
        },
      })
    }
    collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS })
    // Per heap space sizes: under Bun, reading them walks the heap, 87 ms a scrape with 300,000
    // objects live (a file store's index of 100,000 entries): a scrape must not cost what the cache holds.
    for (const name of HEAP_SPACE_METRICS) this.registry.removeSingleMetric(name)
    if (storeConnected) this.storeState = { connected: storeConnected(), since: this.startedAt }
    setInterval(() => this.tick(), RECENT_TICK_MS).unref?.()
  }

  /** Entries, bytes and evictions per store tier, read from `store.stats()` when scraped. */
  private storeMetrics(registers: Registry[]): void {
    const metrics = this
    const perTier = (field: "entries" | "bytes" | "evictions") =>
      async function collect(this: Gauge<"tier"> | Counter<"tier">) {
        const tiers = await metrics.tierStats()
        this.reset()
        for (const stats of tiers) {
          const value = stats[field]
          if (value !== undefined) "set" in this ? this.set({ tier: stats.tier }, value) : this.inc({ tier: stats.tier }, value)
        }
      }
    const labelNames = ["tier"] as const
    new Gauge({
      name: "caching_proxy_store_entries",
      help: "Entries held, per store tier",
      labelNames,
      registers,
      collect: perTier("entries"),
    })
    new Gauge({ name: "caching_proxy_store_bytes", help: "Bytes held, per store tier", labelNames, registers, collect: perTier("bytes") })
    new Counter({
      name: "caching_proxy_store_evictions_total",
      help: "Entries this process evicted to keep a tier within its size bound",
      labelNames,
      registers,
      collect: perTier("evictions"),
    })
  }

  /** The store's stats, read at most every STATS_TTL_MS; the last ones known when the store fails. */
  tierStats(): Promise<TierStats[]> {
    const now = Date.now()
    if (this.stats && now - this.stats.at < STATS_TTL_MS) return this.stats.tiers
    const previous = this.stats?.tiers ?? Promise.resolve([])
    const tiers = this.options.store.stats().catch((error) => {
      this.options.warn("store-read", `reading the store's size for /metrics: ${(error as Error).message}`)
      return previous
    })
    this.stats = { at: now, tiers }
    return tiers
  }

  /** Counts one answered request (its body sent). */
  record(access: Access): void {
    const outcome = OUTCOME_KINDS.indexOf(access.cache)
    const statusClass = Math.floor(access.status / 100) - 1
    ;(this.requests[outcome * STATUS_CLASSES.length + statusClass] as number)++
    ;(this.clientLatency[outcome] as (seconds: number) => void)(access.ms / 1000)
    const fromCache = isFromCache(access.cache)
    if (fromCache) this.servedBytes.cache += access.bytes
    else this.servedBytes.origin += access.bytes
    this.traffic.record(access)
  }

  /** Counts one request to the origin: its answer's status, or why there was none. */
  recordOrigin(ms: number, outcome: { status: number } | { failure: OriginFailure }): void {
    this.originLatency(ms / 1000)
    this.traffic.recordOrigin(ms, "status" in outcome)
    if ("status" in outcome) (this.originAnswers[Math.floor(outcome.status / 100) - 1] as number)++
    else (this.originFailures[ORIGIN_FAILURES.indexOf(outcome.failure)] as number)++
  }

  /** Counts one purge (the admin API calls it) and the entries it removed or marked stale. */
  purged(entries: number): void {
    this.purges++
    this.purgedEntries += entries
  }

  /**
   * The Prometheus text, less samples with no value yet: prom-client's event-loop lag gauges read
   * NaN until their first sample is taken, and a scraper or dashboard then charts a hole or an error.
   */
  async render(): Promise<string> {
    return (await this.registry.metrics()).replace(NAN_SAMPLE, "")
  }

  /**
   * This process's metrics for a group's admin listener (`GroupMetrics`): those of the process
   * itself (memory, CPU, event loop) labelled with the `worker` it is ("primary", "1", …), so that
   * each stays apart where the rest are summed.
   */
  async snapshot(worker: string): Promise<MetricsSnapshot> {
    const metrics = (await this.registry.getMetricsAsJSON()).map((metric) =>
      PER_PROCESS.test(metric.name)
        ? { ...metric, values: metric.values.map((value) => ({ ...value, labels: { ...value.labels, worker } })) }
        : metric,
    )
    return { metrics, traffic: this.traffic.export(), tiers: await this.tierStats() }
  }

  /** Requests and hits per 10 s, oldest first, over the last 10 minutes (quiet ones as zeros): the inspector's chart. */
  recent(): { at: number; requests: number; hits: number }[] {
    return this.summary("10m").bars
  }

  summary(window: WindowName): TrafficView {
    return { ...this.traffic.summary(window, Date.now()), ...this.traffic.top() }
  }

  /** This process's traffic as plain data, for a group's primary. */
  trafficExport(): TrafficExport {
    return this.traffic.export()
  }

  /** When the process started, and the shared store's state (undefined without one). */
  state(): { startedAt: number; store: StoreState | undefined } {
    return { startedAt: this.startedAt, store: this.storeState && { ...this.storeState } }
  }

  private tick(): void {
    const now = Date.now()
    this.traffic.tick(now)
    const connected = this.options.storeConnected?.()
    if (this.storeState && connected !== undefined && connected !== this.storeState.connected) this.storeState = { connected, since: now }
  }
}

// prom-client's default metrics: each process's own, never summed.
const PER_PROCESS = /^(?:process_|nodejs_)/
// The one tier each process has of its own; the others (file, Redis) are the same store seen from each.
const MEMORY_TIER = "memory"
// Metrics of the store behind the memory tier, and of the connection to it: the primary's stand for all.
const STORE_WIDE = /^caching_proxy_(?:store_|redis_connected)/

/** A worker's metric, less the values that are the whole store's rather than its own (non-memory tiers, Redis's connection). */
function perProcessOnly(metric: MetricObjectWithValues<MetricValue<string>>): MetricObjectWithValues<MetricValue<string>> {
  if (!STORE_WIDE.test(metric.name)) return metric
  return { ...metric, values: metric.values.filter((value) => value.labels.tier === MEMORY_TIER) }
}

/** One process's metrics, as plain data that can cross a process boundary. */
export interface MetricsSnapshot {
  metrics: MetricObjectWithValues<MetricValue<string>>[]
  traffic: TrafficExport
  tiers: TierStats[]
}

/**
 * The metrics of a group of workers (--workers), for the primary's admin listener: its own (purges,
 * the whole directory's file tier) and every worker's (requests, origin, memory tiers), summed by
 * prom-client's AggregatorRegistry; each process's own (memory, CPU, event loop) labelled with
 * its `worker`.
 */
export class GroupMetrics implements AdminMetrics {
  readonly contentType: string

  constructor(
    private readonly own: ProxyMetrics,
    /** Every running worker's snapshot, asked for when needed. */
    private readonly workers: () => Promise<MetricsSnapshot[]>,
  ) {
    this.contentType = own.contentType
  }

  async render(): Promise<string> {
    const workers = (await this.workers()).map((snapshot) => snapshot.metrics.map(perProcessOnly))
    return AggregatorRegistry.aggregate([(await this.own.snapshot("primary")).metrics, ...workers]).metrics()
  }

  /** The traffic of every process, summed: the primary's own and each worker's. */
  async summary(window: WindowName): Promise<TrafficView> {
    const traffic = Traffic.merged([this.own.trafficExport(), ...(await this.workers()).map((snapshot) => snapshot.traffic)])
    return { ...traffic.summary(window, Date.now()), ...traffic.top() }
  }

  /** The primary's start, and its view of the shared store. */
  state(): { startedAt: number; store: StoreState | undefined } {
    return this.own.state()
  }

  purged(entries: number): void {
    this.own.purged(entries)
  }

  /** Each tier summed over the processes: the memory tiers of all; the store behind, one for all, as the primary sees it. */
  async tierStats(): Promise<TierStats[]> {
    const workers = (await this.workers()).flatMap((snapshot) => snapshot.tiers.filter((stats) => stats.tier === MEMORY_TIER))
    const all = [...(await this.own.tierStats()), ...workers]
    const byTier = new Map<string, TierStats>()
    for (const stats of all) {
      const sum = byTier.get(stats.tier)
      if (!sum) byTier.set(stats.tier, { ...stats })
      else {
        sum.entries += stats.entries
        sum.bytes += stats.bytes
        if (stats.evictions !== undefined) sum.evictions = (sum.evictions ?? 0) + stats.evictions
        if (stats.maxBytes !== undefined) sum.maxBytes = (sum.maxBytes ?? 0) + stats.maxBytes
      }
    }
    return [...byTier.values()]
  }
}
