/**
 * What the proxy tells its operator: one access line per request (unless --quiet) on stdout and
 * warnings about failures it carries on after on stderr. Every line starts with an ISO-8601
 * timestamp (text), or is one JSON object with a `time` field (--log-format json, what log
 * shippers read).
 */

import type { OutcomeKind } from "../cache/outcome.ts"
import type { OriginFailure, Warn, WarnKind } from "../cache.ts"

export const LOG_FORMATS = ["text", "json"] as const
export type LogFormat = (typeof LOG_FORMATS)[number]

/** One answered request: an access line, and what the metrics count. */
export interface Access {
  method: string
  path: string
  status: number
  /** What the request came to (the cache's outcome, never read back from Cache-Status). */
  cache: OutcomeKind
  /** From the request's arrival to the body's last byte handed to the server. */
  ms: number
  /** Body bytes sent. */
  bytes: number
  /** Why the origin gave no answer (with a 502 or 504). */
  originError?: OriginFailure
  /** How long the origin took to answer or to fail, when it was asked. */
  originMs?: number
}

/**
 * Writes access lines in the chosen format; under --workers each names the `worker` that answered
 * (` worker 2` at the end of a text line, a `worker` field in JSON).
 */
export function createAccessLog(format: LogFormat, write: (line: string) => void = console.log, worker?: number): (access: Access) => void {
  if (format === "json") {
    return (access) => {
      const { ms, originMs } = access
      const times = { ms: tenths(ms), ...(originMs === undefined ? {} : { originMs: tenths(originMs) }) }
      write(JSON.stringify({ time: new Date().toISOString(), ...access, ...times, ...(worker === undefined ? {} : { worker }) }))
    }
  }
  const named = worker === undefined ? "" : ` worker ${worker}`
  return (access) => write(`${new Date().toISOString()} ${accessText(access)}${named}`)
}

/** `GET /a 200 miss 15.2ms 1024B origin 12.1ms`; `GET /a 502 miss 3.1ms 52B origin refused after 2.9ms` */
function accessText({ method, path, status, cache, ms, bytes, originError, originMs }: Access): string {
  const line = `${method} ${path} ${status} ${cache} ${ms.toFixed(1)}ms ${bytes}B`
  if (originMs === undefined) return line
  return `${line} origin ${originError === undefined ? "" : `${originError} after `}${originMs.toFixed(1)}ms`
}

/** Milliseconds to a tenth: what a log line needs. */
function tenths(ms: number): number {
  return Math.round(ms * 10) / 10
}

// A failure that recurs (a full disk, a broken store) is reported once, then at most once a
// minute with how often it happened meanwhile: the log shows each state change, not each request.
const REPEAT_EVERY_MS = 60_000

/**
 * A `Warn` that writes `<time> caching-proxy: <kind>: <detail>` lines (or JSON objects), each
 * kind at most once a minute.
 */
export function createWarn(format: LogFormat = "text", write: (line: string) => void = console.error): Warn {
  const lastWritten = new Map<WarnKind, { at: number; suppressed: number }>()
  return (kind, detail) => {
    const now = Date.now()
    const last = lastWritten.get(kind)
    if (last && now - last.at < REPEAT_EVERY_MS) {
      last.suppressed++
      return
    }
    const more = last?.suppressed ? ` (and ${last.suppressed} more since the last report)` : ""
    const time = new Date(now).toISOString()
    write(
      format === "json"
        ? JSON.stringify({ time, level: "warn", kind, message: detail + more })
        : `${time} caching-proxy: ${kind}: ${detail}${more}`,
    )
    lastWritten.set(kind, { at: now, suppressed: 0 })
  }
}
