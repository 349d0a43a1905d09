/**
 * What the proxy tells its operator: one access line per request (unless --quiet) and the start
 * and shutdown lines on stdout; warnings and errors on stderr. Every line starts with an ISO-8601
 * timestamp (text), or is one JSON object with `time`, `level`, `msg` and its fields (--log-format
 * json, what log shippers read).
 *
 * Access lines are the hot path: they are built by plain concatenation with a timestamp formatted
 * at most once a millisecond, and written in batches (`LineWriter`), one write for many requests.
 */

import { write, writeSync } from "node:fs"
import type { OutcomeKind } from "../cache/outcome.ts"
import type { OriginFailure, Warn, WarnKind } from "../cache.ts"

export const LOG_FORMATS = ["text", "json"] as const
export type LogFormat = (typeof LOG_FORMATS)[number]

/** One answered request: an access line, and what the metrics count. */
export interface Access {
  /** The client's address, as the connection says it. */
  client?: string
  /** The request's X-Forwarded-For chain, kept only under --trust-forwarded. */
  forwardedFor?: string
  method: string
  path: string
  status: number
  /** What the request came to (the cache's outcome, never read back from Cache-Status). */
  cache: OutcomeKind
  /** From the request's arrival to the body's last byte handed to the server. */
  ms: number
  /** Body bytes sent. */
  bytes: number
  /** The client left before the body's end: `bytes` is what it got. */
  aborted?: boolean
  /** Why the origin gave no answer (with a 502 or 504). */
  originError?: OriginFailure
  /** How long the origin took to answer or to fail, when it was asked. */
  originMs?: number
}

// ───────────────────────────── the clock ─────────────────────────────

let formattedAt = Number.NaN
let formatted = ""

/** Now as ISO-8601, formatted at most once a millisecond: a busy proxy's lines share the string. */
function isoNow(): string {
  const now = Date.now()
  if (now !== formattedAt) {
    formattedAt = now
    formatted = new Date(now).toISOString()
  }
  return formatted
}

// ───────────────────────────── writing ─────────────────────────────

/** Lines wait at most this long before they are written. */
const FLUSH_EVERY_MS = 50
/** A batch this large is written at once. */
const FLUSH_AT_CHARS = 64 << 10
/** Lines held while the output does not take them (a full pipe): beyond this, lines are dropped and counted. */
const MAX_PENDING_CHARS = 8 << 20

/**
 * Lines gathered in memory and written together, a few times a second: one `write` for many
 * requests, where `console.log` made one per line (the access log halved a 1 KiB hit's throughput).
 * A batch is written off the event loop (`fs.write`), one at a time: a reader that stalls (a full
 * pipe, as a shell's blocks its writer) holds that batch, never a request, while lines wait in
 * memory up to a bound and are dropped, and counted, past it. `drained` waits for what is out (the
 * CLI, before it exits); `flushAtExit` writes what is left when nothing else can run.
 */
export class LineWriter {
  private pending = ""
  private timer: ReturnType<typeof setTimeout> | undefined
  private dropped = 0
  /** Set once the output is gone (EPIPE: its reader left): lines are dropped from then on. */
  private failed = false
  /** The batch the output is taking, while it takes it. */
  private writing: Buffer | undefined
  private onDrained: (() => void)[] = []
  /** How long a write the output refused (EAGAIN) waits before it is tried again. */
  private retryMs = 1

  /** `format`: that of the lines it writes, for its own (lines dropped). */
  constructor(
    private readonly fd: number,
    private readonly format: LogFormat,
  ) {}

  write(line: string): void {
    if (this.failed) return
    if (this.pending.length > MAX_PENDING_CHARS) {
      this.dropped++
      return
    }
    this.pending += `${line}\n`
    if (this.pending.length >= FLUSH_AT_CHARS) this.flush()
    else this.timer ??= unref(setTimeout(() => this.flush(), FLUSH_EVERY_MS))
  }

  /** Hands what waits to the output, unless it is still taking a batch: that batch's end sends it. */
  flush(): void {
    clearTimeout(this.timer)
    this.timer = undefined
    if (this.writing || this.failed) return
    const batch = this.batch()
    if (batch.length === 0) {
      this.settle()
      return
    }
    this.writing = batch
    this.writeFrom(0)
  }

  /** Resolves once every line written so far is out (or the output has failed). */
  drained(): Promise<void> {
    this.flush()
    if (!this.writing) return Promise.resolve()
    return new Promise((resolve) => this.onDrained.push(resolve))
  }

  /**
   * At exit, with no event loop left to wait on: what waits, written at once. Not while a batch is
   * still out: its reader may be stalled, and a write now would hold the exit with it.
   */
  flushAtExit(): void {
    if (this.writing || this.failed) return
    const batch = this.batch()
    try {
      for (let written = 0; written < batch.length; ) written += writeSync(this.fd, batch, written)
    } catch {
      // The output is full (EAGAIN) or gone: at exit there is no later to wait for.
    }
  }

  /** What waits, and a line saying how many were dropped since the last batch. */
  private batch(): Buffer {
    if (this.dropped > 0) {
      const msg = `${this.dropped} log line(s) dropped: the output took none for a while`
      this.pending += `${ownLine(this.format, "warn", msg, { dropped: this.dropped })}\n`
      this.dropped = 0
    }
    const batch = Buffer.from(this.pending)
    this.pending = ""
    return batch
  }

  private writeFrom(offset: number): void {
    const batch = this.writing as Buffer
    write(this.fd, batch, offset, batch.length - offset, null, (error, written) => {
      // A non-blocking pipe (Node makes stdout's so) answers EAGAIN when full: again soon, then
      // less often while it stays full. Every 50 ms alone would drain at most 64 KiB per 50 ms.
      if (error?.code === "EAGAIN") {
        unref(setTimeout(() => this.writeFrom(offset), this.retryMs))
        this.retryMs = Math.min(2 * this.retryMs, FLUSH_EVERY_MS)
        return
      }
      this.retryMs = 1
      if (error) this.fail(error)
      else if (offset + written < batch.length) this.writeFrom(offset + written)
      else this.written()
    })
  }

  /**
   * A batch is out: the next goes at the usual pace (a full batch, or FLUSH_EVERY_MS), not at once,
   * which made batches of a few lines, one write each, as fast as the writes came back; at once
   * only for someone waiting on `drained`.
   */
  private written(): void {
    this.writing = undefined
    if (this.onDrained.length > 0 || this.pending.length >= FLUSH_AT_CHARS) this.flush()
    else if (this.pending !== "" || this.dropped > 0) this.timer ??= unref(setTimeout(() => this.flush(), FLUSH_EVERY_MS))
  }

  /** The proxy keeps serving without its log: said once, where it can still be read. */
  private fail(error: Error): void {
    this.failed = true
    this.pending = ""
    this.writing = undefined
    writeError(ownLine(this.format, "error", `log lines are dropped from now on: writing them failed (${error.message})`, {}))
    this.settle()
  }

  private settle(): void {
    for (const resolve of this.onDrained.splice(0)) resolve()
  }
}

function unref(timer: ReturnType<typeof setTimeout>): ReturnType<typeof setTimeout> {
  timer.unref?.()
  return timer
}

/** A line to standard error, written at once: warnings and errors are rare, and must not wait. */
export function writeError(line: string): void {
  try {
    writeSync(2, `${line}\n`)
  } catch {
    // stderr is gone (its reader left): there is nowhere left to say so, and the proxy serves on.
  }
}

// ───────────────────────────── lines ─────────────────────────────

type Level = "info" | "warn" | "error"
export type Fields = Record<string, string | number | boolean | undefined>

/**
 * Writes the proxy's own lines (start, shutdown, warnings, errors): `<time> caching-proxy: <msg>`
 * (`<time> caching-proxy: <kind>: <msg>` for a warning's kind), or one JSON object.
 */
export function createLogger(format: LogFormat, out: (line: string) => void, err: (line: string) => void = writeError) {
  const line = (level: Level, msg: string, fields: Fields) => ownLine(format, level, msg, fields)
  return {
    info: (msg: string, fields: Fields = {}) => out(line("info", msg, fields)),
    warn: (msg: string, fields: Fields = {}) => err(line("warn", msg, fields)),
    error: (msg: string, fields: Fields = {}) => err(line("error", msg, fields)),
  }
}
export type Logger = ReturnType<typeof createLogger>

/** One of the proxy's own lines (not an access line), in the format asked for. */
function ownLine(format: LogFormat, level: Level, msg: string, fields: Fields): string {
  if (format === "json") return JSON.stringify({ time: isoNow(), level, msg, ...fields })
  return `${isoNow()} caching-proxy: ${fields.kind === undefined ? "" : `${fields.kind}: `}${msg}`
}

/**
 * Writes access lines in the chosen format; under --workers each names the `worker` that answered
 * (` worker 2` at the end of a text line, a `worker` field in JSON).
 */
export function createAccessLog(format: LogFormat, write: (line: string) => void, worker?: number): (access: Access) => void {
  if (format === "json") {
    const named = worker === undefined ? "" : `,"worker":${worker}`
    return (access) => write(`${accessJson(access)}${named}}`)
  }
  const named = worker === undefined ? "" : ` worker ${worker}`
  return (access) => write(`${isoNow()} ${accessText(access)}${named}`)
}

/**
 * `127.0.0.1 GET /a 200 miss 15.2ms 1024B origin 12.1ms`; `… 502 miss 3.1ms 52B origin refused after 2.9ms`;
 * `… 200 pass 80.0ms 65536B aborted origin 1.2ms`; under --trust-forwarded the client is
 * `10.0.0.1 (for 203.0.113.7, 10.0.0.1)`.
 */
function accessText({ client, forwardedFor, method, path, status, cache, ms, bytes, aborted, originError, originMs }: Access): string {
  const from = forwardedFor === undefined ? (client ?? "-") : `${client ?? "-"} (for ${forwardedFor})`
  const line = `${from} ${method} ${path} ${status} ${cache} ${tenths(ms)}ms ${bytes}B${aborted ? " aborted" : ""}`
  if (originMs === undefined) return line
  return `${line} origin ${originError === undefined ? "" : `${originError} after `}${tenths(originMs)}ms`
}

/**
 * The same as one JSON object, built by hand in one template (JSON.stringify of a whole object
 * costs more per request), left open for the worker's field: the caller closes it. Only what a
 * client can put in a line is escaped (the path, the X-Forwarded-For chain): the method is an HTTP
 * token and the client an IP address as the runtime gives them; the rest are our words and digits.
 */
function accessJson({ client, forwardedFor, method, path, status, cache, ms, bytes, aborted, originError, originMs }: Access): string {
  // A 5xx is an error to a shipper's alerting, whatever caused it.
  const level = status >= 500 ? "error" : "info"
  return `{"time":"${isoNow()}","level":"${level}","msg":"access","client":${client === undefined ? "null" : `"${client}"`}${
    forwardedFor === undefined ? "" : `,"forwardedFor":${jsonString(forwardedFor)}`
  },"method":"${method}","path":${jsonString(path)},"status":${status},"cache":"${cache}","ms":${tenths(ms)},"bytes":${bytes}${
    aborted ? ',"aborted":true' : ""
  }${originError === undefined ? "" : `,"originError":"${originError}"`}${originMs === undefined ? "" : `,"originMs":${tenths(originMs)}`}`
}

/** Milliseconds to a tenth, as `12.3`: what a log line needs (a third of `toFixed(1)`'s cost). */
function tenths(ms: number): string {
  const count = Math.round(ms * 10)
  return `${Math.floor(count / 10)}.${count % 10}`
}

// What a JSON string must escape (RFC 8259 §7), and lone surrogates, which JSON.stringify escapes.
// biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what JSON escapes.
const NEEDS_ESCAPE = /["\\\u0000-\u001f\ud800-\udfff]/

/** `s` as a JSON string: quoted as it is when nothing in it needs escaping (most paths), else by JSON.stringify. */
function jsonString(s: string): string {
  return NEEDS_ESCAPE.test(s) ? JSON.stringify(s) : `"${s}"`
}

// ───────────────────────────── warnings ─────────────────────────────

// A failure that recurs (a full disk, a broken store) is reported once, then at most once a
// minute with how often it happened meanwhile: the log shows each state change, not each request.
const REPEAT_EVERY_MS = 60_000
/** Kinds that report a change of state, each once by their source: never held back by the rate limit. */
const STATE_CHANGES: ReadonlySet<WarnKind> = new Set(["store-state"])

/**
 * A `Warn` that writes `<time> caching-proxy: <kind>: <detail>` lines (or JSON objects with
 * `kind`), each kind at most once a minute, but a change of state always.
 */
export function createWarn(format: LogFormat = "text", write: (line: string) => void = writeError): Warn {
  const lastWritten = new Map<WarnKind, { at: number; suppressed: number }>()
  const logger = createLogger(format, write, write)
  return (kind, detail) => {
    if (STATE_CHANGES.has(kind)) return logger.warn(detail, { kind })
    const now = Date.now()
    const last = lastWritten.get(kind)
    if (last && now - last.at < REPEAT_EVERY_MS) {
      last.suppressed++
      return
    }
    const more = last?.suppressed ? ` (and ${last.suppressed} more since the last report)` : ""
    logger.warn(detail + more, { kind })
    lastWritten.set(kind, { at: now, suppressed: 0 })
  }
}
