/**
 * One request's access record: the facts gathered for its access line and metrics (who asked,
 * the origin's part), and the moment it is recorded, once its body has been handed to the server.
 */

import { outcomeOf } from "../cache/outcome.ts"
import type { OriginFailure, Warn } from "../cache.ts"
import type { Access } from "./log.ts"
import { runtime, unrelayed, unsent } from "./runtime.ts"

/** One request's facts for its access line: who asked, and the origin's part when it was asked. */
export interface OriginTrip extends Pick<Access, "client" | "forwardedFor"> {
  ms?: number
  failure?: OriginFailure
}

/**
 * Records the request once its body's last byte is handed to the server. A body from the origin
 * streams, so it is timed as it ends. A body that is whole already is not touched: a hit's (bytes
 * from memory, or a file Bun sends by sendfile; reading `.body` turns Bun's bytes into a stream, a
 * fifth of the hit throughput, measured) and a MISS read ahead or a short answer of our own (bytes
 * that a counting stream would make Bun send chunked, without their length). Bun tells nothing when
 * it has sent a body: such a response is timed when handed over, and counted by its length.
 * `started` undefined: answered at once, and not timed (0 ms: a clock read costs about 0.17 µs on
 * a VM, two of them some 2 % of a hit); a body that then streams is timed from its hand-over.
 */
export function timed(
  response: Response,
  method: string,
  path: string,
  started: number | undefined,
  trip: OriginTrip,
  record: (access: Access) => void,
  warn: Warn,
): Response | Promise<Response> {
  const status = response.status
  const { kind: cache, wholeBytes, stored } = outcomeOf(response)
  const originError = trip.failure && (status === 502 || status === 504) ? trip.failure : undefined
  const access: Access = {
    client: trip.client,
    forwardedFor: trip.forwardedFor,
    method,
    path,
    status,
    cache,
    ms: 0,
    bytes: 0,
    originMs: trip.ms,
    originError,
  }
  if (wholeBytes !== undefined) {
    // Counted by its outcome: reading a Response's `headers` builds them anew, more than the line costs.
    if (method !== "HEAD" && status !== 304) access.bytes = wholeBytes
    if (started !== undefined) access.ms = performance.now() - started
    record(access)
    return response
  }
  const since = started ?? performance.now()
  const finish = (bytes: number, aborted: boolean) => {
    access.bytes = bytes
    if (aborted) access.aborted = true
    access.ms = performance.now() - since
    record(access)
  }
  const counted = runtime.counted(response, finish)
  if (!(counted instanceof Promise)) return counted
  // The body failed before its first byte: nothing has gone out, so a 502 can.
  // A body being stored is reported by the cache when it fails: warned once, not twice.
  return counted.catch((error: unknown) => {
    const unsendable = stored ? unrelayed() : unsent(error, warn)
    access.status = unsendable.status
    access.cache = outcomeOf(unsendable).kind
    finish(outcomeOf(unsendable).wholeBytes ?? 0, false)
    return unsendable
  })
}
