/**
 * What the proxy tells its operator: one line per request (unless --quiet) and warnings about
 * failures it carries on after.
 */
import type { Warn, WarnKind } from "../cache.ts"

// A failure that recurs (a full disk, a broken store) is reported once, then at most once a
// minute with how often it happened meanwhile: the log shows each state change, not each request.
const REPEAT_EVERY_MS = 60_000

/** A `Warn` that writes `caching-proxy: <kind>: <detail>` lines, each kind at most once a minute. */
export function createWarn(write: (line: string) => void = console.error): Warn {
  const lastWritten = new Map<WarnKind, { at: number; suppressed: number }>()
  return (kind, detail) => {
    const now = Date.now()
    const last = lastWritten.get(kind)
    if (last && now - last.at < REPEAT_EVERY_MS) {
      last.suppressed++
      return
    }
    const more = last?.suppressed ? ` (and ${last.suppressed} more since the last report)` : ""
    write(`caching-proxy: ${kind}: ${detail}${more}`)
    lastWritten.set(kind, { at: now, suppressed: 0 })
  }
}
