/**
 * What a request came to, as data. The cache gives every response it makes an `Outcome`; X-Cache
 * and Cache-Status (RFC 9211) are rendered from it, and the access log and metrics read it, never
 * the header text.
 */

/** The kinds of outcome, as the access log and the metrics name them. */
export const OUTCOME_KINDS = ["hit", "miss", "stale", "revalidated", "pass", "coalesced"] as const
/**
 * hit: fresh from the cache; stale: served stale (RFC 9111 §4.2.4, RFC 5861); revalidated: a
 * stale entry the origin confirmed with a 304; coalesced: another request's stored answer; miss:
 * went to the origin and stored the answer, or found no answer; pass: the cache could not take
 * part (other methods, answers that may not be stored).
 */
export type OutcomeKind = (typeof OUTCOME_KINDS)[number]

export interface Outcome {
  kind: OutcomeKind
  /** RFC 9211 §2.2 fwd: why the origin was asked (uri-miss, vary-miss, stale, request, method). */
  fwd?: string
  /** RFC 9211 §2.3 fwd-status: the status the origin answered with. */
  fwdStatus?: number
  /** RFC 9211 §2.5 stored: the origin's answer was stored. */
  stored?: boolean
  /** RFC 9211 §2.8 detail: what else there is to say (a reason not to store, a stale answer's licence). */
  detail?: string
  /**
   * Not rendered: the body is whole, of this length: bytes in memory (a short answer of our own, a
   * MISS read ahead) or an answer from the cache (its stored body, or the part a Range asked for).
   * It goes out with its length as it is: nothing need count or watch it stream.
   */
  wholeBytes?: number
  /**
   * Not rendered: the whole body, bytes in memory (a hit from memory), as the response carries
   * them. The Node runtime hands them to node:http itself (proxy/runtime.ts, `sentWhole`).
   */
  bytes?: Uint8Array
  /**
   * Not rendered: the body is this file, which the runtime opens by its path only as it sends it
   * (Bun.file). Gone by then (another process cleared the cache, an eviction), the request is asked again.
   */
  file?: string
}

// Answered from the cache (X-Cache: HIT): what a hit ratio counts.
const FROM_CACHE: ReadonlySet<OutcomeKind> = new Set(["hit", "stale", "revalidated", "coalesced"])

/** Whether the body came from the cache (X-Cache: HIT). */
export function isFromCache(kind: OutcomeKind): boolean {
  return FROM_CACHE.has(kind)
}

/** Cache-Status (RFC 9211) names us by this. */
const CACHE_NAME = "caching-proxy"

/** Our Cache-Status member (RFC 9211 §2): its parameters in one order; `ttlSeconds` for an answer from the cache. */
export function cacheStatus({ kind, fwd, fwdStatus, stored, detail }: Outcome, ttlSeconds?: number): string {
  let value = isFromCache(kind) ? `${CACHE_NAME}; hit` : CACHE_NAME
  if (fwd !== undefined) value += `; fwd=${fwd}`
  if (fwdStatus !== undefined) value += `; fwd-status=${fwdStatus}`
  if (stored) value += "; stored"
  if (detail !== undefined) value += `; detail=${detail}`
  if (ttlSeconds !== undefined) value += `; ttl=${ttlSeconds}`
  return value
}

/** X-Cache: HIT when the body came from the cache, else MISS. */
export function xCache({ kind }: Outcome): "HIT" | "MISS" {
  return isFromCache(kind) ? "HIT" : "MISS"
}

// Kept on the response itself under a private symbol: a WeakMap entry per response cost a HIT
// under Node about 1.5 % of its CPU time to set, and each read a hash lookup (measured).
const OUTCOME = Symbol("outcome")

/** A response the cache made, with what its request came to. */
type WithOutcome = Response & { [OUTCOME]?: Outcome }

/** Records what the response's request came to; returns the response. */
export function withOutcome(response: Response, outcome: Outcome): Response {
  ;(response as WithOutcome)[OUTCOME] = outcome
  return response
}

/** What the request answered by `response` came to; a pass when the cache did not make it. */
export function outcomeOf(response: Response): Outcome {
  return (response as WithOutcome)[OUTCOME] ?? PASS
}

const PASS: Outcome = { kind: "pass" }
