/**
 * What differs between Bun and Node, behind one small object chosen once at start-up: sending a
 * request to the origin, serving, what a request's connection knows, and the file API.
 */

import {
  createServer,
  Agent as HttpAgent,
  request as httpRequest,
  type IncomingMessage,
  type OutgoingHttpHeaders,
  type ServerResponse,
} from "node:http"
import { Agent as HttpsAgent, request as httpsRequest } from "node:https"
import type { AddressInfo } from "node:net"
import { Readable } from "node:stream"
import type { Context, Hono } from "hono"
import { bunFiles, type FileApi, nodeFiles } from "../cache/file-api.ts"
import { isFromCache, outcomeOf } from "../cache/outcome.ts"
import { hopByHopFilter, isFinalStatus } from "../cache/policy.ts"
import { answer, OriginError, type OriginFailure, type Warn } from "../cache.ts"
import { pathAndQuery } from "./forwarding.ts"
import { createWarn } from "./log.ts"
import type { ProxyOptions } from "./options.ts"

export interface Listener {
  port: number
  /** Stops accepting; resolves when requests in flight have finished (at once when forced). */
  stop(force?: boolean): Promise<void>
  /** Requests not yet answered in full. */
  inFlight(): number
}

/** What differs between Bun and Node, chosen once at start-up. */
interface Runtime {
  /**
   * Sends one request to the origin, bytes untouched: no decompression, no redirects followed.
   * The origin's interim (1xx) responses go to `interim`, where the runtime's client shows them.
   */
  fetch(
    target: string,
    method: string,
    headers: RequestFields,
    body: ReadableStream<Uint8Array> | null,
    timeoutMs: number,
    interim?: Interim,
  ): Promise<Response>
  /** Where this request's interim responses go ahead of its final one; undefined where the server cannot send them. */
  interimTo(c: Context, warn: Warn): Interim | undefined
  /**
   * Serves the app; what fails outside it (`warn`ed) is answered by `unsent`, never by the runtime.
   * `reusePort`: other processes (workers) listen on the port too.
   */
  listen(app: Hono, host: string, port: number, idleTimeoutSeconds: number, warn: Warn, reusePort: boolean): Promise<Listener>
  /** The client's address, for X-Forwarded-For. */
  clientAddress(c: Context): string | undefined
  /** The port the request came in on: the one listened on. */
  localPort(c: Context): number | undefined
  /** The request-target as the client sent it (path and query), as raw as the runtime keeps it. */
  requestTarget(c: Context): string
  /**
   * The response, its body counted: `finish` gets the bytes handed to the server once it ends,
   * fails or is cancelled (0 for none), and whether the client left before the end (aborted). A body that has failed already, before its first byte,
   * rejects instead (`finish` not called): nothing has gone out, so the caller answers a 502,
   * where a body failing once sent cuts the connection.
   */
  counted(response: Response, finish: Finish): Response | Promise<Response>
  /** How the file store reads bodies. */
  files: FileApi
}

/** The fields of a request to the origin: one pair per name, lowercase (`forwardedHeaders`). */
type RequestFields = [string, string][]

/** Takes an interim (1xx) response from the origin: its status and its header pairs as received. */
type Interim = (status: number, rawHeaders: string[]) => void

/** Aborts the origin request if its headers have not come within `timeoutMs`. */
async function withTimeout(timeoutMs: number, send: (signal: AbortSignal) => Promise<Response>): Promise<Response> {
  const controller = new AbortController()
  const timer = setTimeout(() => controller.abort(), timeoutMs)
  try {
    return await send(controller.signal)
  } catch (error) {
    throw controller.signal.aborted ? timedOut(timeoutMs) : unreachable(error)
  } finally {
    clearTimeout(timer)
  }
}

/** The origin's headers did not come in time: a 504. */
function timedOut(timeoutMs: number): OriginError {
  return new OriginError(504, `the origin did not answer within ${timeoutMs / 1000} s`, "timeout")
}

/** The origin could not be asked: a 502 naming why (an OriginError says so itself). */
function unreachable(error: unknown): OriginError {
  if (error instanceof OriginError) return error
  return new OriginError(502, `the origin is unreachable (${(error as Error).message})`, failureOf(error))
}

// Error codes of node:http and Bun's fetch, by what the access log and metrics call them.
const FAILURE_CODES: Record<string, OriginFailure> = {
  ECONNREFUSED: "refused",
  ECONNRESET: "reset",
  EPIPE: "reset",
  ENOTFOUND: "dns",
  EAI_AGAIN: "dns",
  EAI_NONAME: "dns",
  EAI_FAIL: "dns",
}

function failureOf(error: unknown): OriginFailure {
  return FAILURE_CODES[(error as NodeJS.ErrnoException).code ?? ""] ?? "other"
}

/**
 * The most an origin's response head may take, status line and fields: one limit under both
 * runtimes (node:http stops at 16 KiB unless told, Bun's fetch at about 256 KiB). RFC 9110 §5.4:
 * a recipient need not process fields larger than it wishes to; a 502 says so.
 */
const MAX_RESPONSE_HEAD_BYTES = 64 * 1024
const HEAD_TOO_LARGE = `the origin's response headers are larger than ${MAX_RESPONSE_HEAD_BYTES / 1024} KiB`

/** The response, unless its head is over MAX_RESPONSE_HEAD_BYTES (counted as it was sent: "name: value\r\n" each). */
function withinHeadLimit(response: Response): Response {
  let bytes = `HTTP/1.1 ${response.status} ${response.statusText}\r\n\r\n`.length
  for (const [name, value] of response.headers) bytes += name.length + value.length + 4
  if (bytes <= MAX_RESPONSE_HEAD_BYTES) return response
  response.body?.cancel().catch(() => undefined) // refused: nothing of it is read
  throw new OriginError(502, HEAD_TOO_LARGE)
}

// RFC 9110 §15.2.2: a 101 hands the connection over to another protocol; we proxy HTTP only.
const UPGRADE_REFUSED = "the origin switched protocols (101), and upgrades are not proxied"

/**
 * The answer to a request whose response failed before its first byte was sent (where the app
 * cannot catch it under Bun, or as the access log finds it): a 502 with one line, never the
 * runtime's own error page.
 */
export function unsent(error: unknown, warn: Warn): Response {
  warn("proxy", `a response could not be sent: ${error instanceof Error ? error.message : String(error)}`)
  return unrelayed()
}

/** The 502 for an origin's body that failed before its first byte went out. */
export function unrelayed(): Response {
  return answer(502, "the origin's answer could not be relayed\n", { kind: "miss", detail: "origin-error" })
}

const bunRuntime: Runtime = {
  fetch: (target, method, headers, body, timeoutMs) =>
    withTimeout(timeoutMs, (signal) =>
      fetch(target, { method, headers, body, signal, redirect: "manual", decompress: false } as RequestInit).then(
        withinHeadLimit,
        (error) => {
          const code = (error as { code?: string }).code
          if (code === "UnrequestedUpgrade") throw new OriginError(502, UPGRADE_REFUSED)
          // RFC 9112 §6.3: a body under a transfer coding other than chunked ends when the connection
          // closes. Bun's fetch refuses one it does not know; its node:http relays it. Only a safe
          // method is asked again (RFC 9110 §9.2.1): the origin may have acted on the first.
          if (code === "UnsupportedTransferEncoding" && (method === "GET" || method === "HEAD"))
            return nodeFetch(target, method, headers, null, undefined, { signal })
          throw error
        },
      ),
    ),
  async listen(app, host, port, idleTimeoutSeconds, warn, reusePort) {
    // Hits whose file Bun is about to open by its path, each with its request: the request, or
    // null when several share the file and a failure could not be told whose. Kept until the
    // next turn of the event loop: Bun opens the file as it takes the response, before that.
    const opening = new Map<string, Request | null>()
    const watched = (response: Response, request: Request) => {
      const { file } = outcomeOf(response)
      if (file === undefined) return response
      opening.set(file, opening.has(file) ? null : request)
      setImmediate(() => opening.delete(file))
      return response
    }
    const server: Bun.Server<undefined> = Bun.serve({
      hostname: host,
      port,
      reusePort,
      fetch: (request, bunServer) => {
        const response = app.fetch(request, bunServer)
        return response instanceof Promise ? response.then((ready) => watched(ready, request)) : response
      },
      idleTimeout: idleTimeoutSeconds,
      // Uploads stream to the origin; the origin decides what it accepts.
      maxRequestBodySize: Number.MAX_SAFE_INTEGER,
      // Never Bun's development error page (50 KB of HTML naming the working directory). Not by
      // `development: false`: Bun then shares the port with a second server (SO_REUSEPORT).
      error: (error) => {
        // A hit's file gone before Bun opened it (another process's --clear-cache, an eviction):
        // asked again, the request finds no entry and is a miss, not a 502.
        const { code, path } = error as NodeJS.ErrnoException
        const request = code === "ENOENT" && path !== undefined ? opening.get(path) : undefined
        if (!request || path === undefined) return unsent(error, warn)
        opening.delete(path)
        return app.fetch(request, server)
      },
    })
    return { port: server.port ?? port, stop: (force) => server.stop(force), inFlight: () => server.pendingRequests }
  },
  // RFC 9110 §15.2 asks a proxy to forward 1xx responses; Bun's fetch hides them and Bun.serve
  // has no way to send one (docs/known-limits.md).
  interimTo: () => undefined,
  clientAddress: (c) => (c.env as { requestIP?: (r: Request) => { address: string } | null })?.requestIP?.(c.req.raw)?.address,
  localPort: (c) => (c.env as { port?: number } | undefined)?.port,
  requestTarget: (c) => pathAndQuery(c.req.raw.url),
  counted: countedResponse,
  files: bunFiles,
}

/** Where a counted response's bytes go once it is over, and whether the client left before its end. */
type Finish = (bytes: number, aborted: boolean) => void

/** The response with its body passed on through a counting stream (`Runtime.counted`). */
function countedResponse(response: Response, finish: Finish): Response | Promise<Response> {
  if (response.body) return countedBody(response.body, finish).then((body) => new Response(body, response))
  finish(0, false)
  return response
}

/**
 * The body as it comes; `finish` gets the bytes sent once it ends, fails or is cancelled (the
 * client left: aborted). A body
 * that has failed already, before its first byte, rejects instead: the runtime would have
 * answered it with a 502 (Bun does), where a stream failing once sent cuts the connection.
 */
async function countedBody(body: ReadableStream<Uint8Array>, finish: Finish): Promise<ReadableStream<Uint8Array>> {
  const reader = body.getReader()
  let bytes = 0
  let finished = false
  const end = (aborted = false) => {
    if (!finished) finish(bytes, aborted)
    finished = true
  }
  let first: ReturnType<typeof reader.read> | undefined = reader.read()
  // Waits no longer than the task at hand: a body still on its way is not held up.
  await Promise.race([first, new Promise((resolve) => setImmediate(resolve))]).catch((error: unknown) => {
    reader.cancel(error).catch(() => undefined) // failed already: nothing left to read
    throw error
  })
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        const read = first ?? reader.read()
        first = undefined
        const chunk = await read.catch((error: unknown) => {
          end()
          throw error
        })
        if (chunk.done) {
          end()
          return controller.close()
        }
        bytes += chunk.value.byteLength
        controller.enqueue(chunk.value)
      },
      cancel(reason) {
        end(true)
        return reader.cancel(reason)
      },
    },
    { highWaterMark: 0 },
  )
}

const keepAlive = { keepAlive: true }
const agents = { "http:": new HttpAgent(keepAlive), "https:": new HttpsAgent(keepAlive) }

/**
 * Node's global fetch always decompresses, so the Node leg speaks node:http directly. It gives up
 * when `cancel.signal` aborts, or when the origin's headers have not come within `cancel.timeoutMs`
 * (a 504): a timer, as an AbortSignal costs node:http some 3 % of a no-store MISS (measured).
 */
function nodeFetch(
  target: string,
  method: string,
  headers: RequestFields,
  body: ReadableStream<Uint8Array> | null,
  interim: Interim | undefined,
  cancel: { signal: AbortSignal } | { timeoutMs: number },
) {
  const url = new URL(target)
  const send = url.protocol === "https:" ? httpsRequest : httpRequest
  return new Promise<Response>((resolvePromise, rejectPromise) => {
    // Every failure is an OriginError, naming what failed (unreachable).
    const reject = (error: unknown) => rejectPromise(unreachable(error))
    const options = {
      method,
      headers: Object.fromEntries(headers),
      agent: agents[url.protocol as "http:"],
      maxHeaderSize: MAX_RESPONSE_HEAD_BYTES,
    }
    const outgoing = send(url, "signal" in cancel ? { ...options, signal: cancel.signal } : options, (incoming) => {
      clearTimeout(timer)
      try {
        resolvePromise(toResponse(incoming, method))
      } catch (error) {
        incoming.destroy() // an answer no `Response` can carry: a 502, not a crash
        reject(error)
      }
    })
    // Cleared where the request ends (its response, its failure, an upgrade), not by two `once`
    // listeners per request: adding and removing listeners showed in the MISS profile.
    const timer =
      "timeoutMs" in cancel
        ? setTimeout(() => {
            reject(timedOut(cancel.timeoutMs))
            outgoing.destroy()
          }, cancel.timeoutMs)
        : undefined
    outgoing.on("error", (error: NodeJS.ErrnoException) => {
      clearTimeout(timer)
      reject(error.code === "HPE_HEADER_OVERFLOW" ? new OriginError(502, HEAD_TOO_LARGE) : error)
    })
    if (interim) outgoing.on("information", (info) => interim(info.statusCode, info.rawHeaders))
    // Without this listener node:http drops the socket and neither answers nor fails: a client
    // would wait forever.
    outgoing.on("upgrade", (_, socket) => {
      clearTimeout(timer)
      socket.destroy()
      reject(new OriginError(502, UPGRADE_REFUSED))
    })
    if (body)
      Readable.fromWeb(body as import("node:stream/web").ReadableStream)
        .on("error", reject)
        .pipe(outgoing)
    else outgoing.end()
  })
}

function toResponse(incoming: IncomingMessage, method: string): Response {
  const status = incoming.statusCode ?? 502
  // RFC 9110 §15: a final status is 200-599. The Response @hono/node-server puts in place checks
  // it only once its body is read, too late for a 502: it is checked here.
  if (!isFinalStatus(status))
    throw new OriginError(502, `the origin answered with status ${status}, which is not a final HTTP status (200-599)`)
  const hasBody = method !== "HEAD" && status !== 204 && status !== 304
  const response: FromOrigin = new Response(null, { status, statusText: incoming.statusMessage })
  // The fields go straight into the response's own Headers: a Headers passed in `init` would be
  // copied into it, every field sorted and validated a second time (half the cost, measured).
  const { headers } = response
  const raw = incoming.rawHeaders
  for (let i = 0; i < raw.length; i += 2) headers.append(raw[i] as string, raw[i + 1] as string)
  if (!hasBody) {
    incoming.resume()
    return response
  }
  const origin: Unread = { incoming }
  // A failure before anyone reads the body (its Web stream's reader, or the pipe) is kept for
  // whoever sends it; without a listener, an 'error' would take the process down.
  incoming.on("error", (error) => {
    origin.failed = error
  })
  // The body's Web stream is made when asked for: building one costs Node 20 some 5 % of a
  // no-store MISS (makeTransferable), and a body piped as it is needs none. The body is this
  // getter's alone (`.text()` and the like would find none): the cache and the proxy read it
  // as a stream.
  Object.defineProperty(response, "body", LAZY_BODY)
  response[ORIGIN] = origin
  return response
}

/** The origin's message behind a response's body, while that body is a Web stream no one has read. */
interface Unread {
  incoming: IncomingMessage
  /** Its Web stream, once asked for. */
  body?: ReadableStream<Uint8Array>
  /** Where the bytes sent go once the response is over (`Runtime.counted`). */
  finish?: Finish
  /** How the message failed, if it did. */
  failed?: Error
}

/**
 * A response whose body is the origin's message, unread: when one is sent as it is (a MISS that is
 * not stored), `sendOrigin` pipes the message to the client with Node streams. Through Web
 * streams (the message's, the cut-on-failure guard's, the adapter's reader) such a MISS cost
 * 1.5×–3× the CPU per request, measured side by side.
 *
 * The message hangs off the response by a symbol, and one getter shared by all reads it: neither a
 * WeakMap nor a getter closure per response. V8's scavenger keeps every WeakMap value it meets
 * (and the key with it, reachable from the message through its promise), and an accessor of its
 * own gives each response a hidden class in the old generation: either way each MISS's objects
 * outlived the young generation until a full GC, 9 KB a request, which tripled the time spent
 * in scavenges and made their pauses the MISS's p99 (measured with `node --trace-gc-nvp`).
 */
const ORIGIN = Symbol("the origin's message")

type FromOrigin = Response & { [ORIGIN]?: Unread }

/** The origin's message behind the response, if it is one `toResponse` made. */
function unreadOf(response: Response): Unread | undefined {
  return (response as FromOrigin)[ORIGIN]
}

/** The `body` of every response `toResponse` made: the message's Web stream, made when first asked for. */
const LAZY_BODY: PropertyDescriptor = {
  get(this: FromOrigin) {
    const origin = this[ORIGIN] as Unread
    origin.body ??= lazyWebBody(origin)
    return origin.body
  },
}

/**
 * The origin's message as a Web stream that takes nothing from it until it is read, so that it can
 * still be piped as it is. A chunk is taken when the reader asks for one: a slow reader slows the
 * origin down instead of filling memory.
 */
function lazyWebBody(origin: Unread): ReadableStream<Uint8Array> {
  const { incoming } = origin
  let reading = false
  return new ReadableStream<Uint8Array>(
    {
      pull(controller) {
        if (!reading) {
          // Failed before it was read: the message emits nothing more.
          if (origin.failed) return controller.error(origin.failed)
          reading = true
          incoming.on("data", (chunk: Buffer) => {
            controller.enqueue(chunk)
            incoming.pause()
          })
          incoming.once("end", () => controller.close())
          incoming.once("error", (error) => controller.error(error))
        }
        incoming.resume()
      },
      cancel: () => void incoming.destroy(),
    },
    { highWaterMark: 0 },
  )
}

/** A connection that can be closed at once: the client's, under Node. */
interface Closable {
  destroy(): void
}

/**
 * Sends what the app answered. An origin's body no one has read is piped to the client as it is,
 * under its own head (its Content-Length, no Content-Type added). Any other MISS's body (the
 * origin's, streaming) ends whole or cuts the connection short: @hono/node-server would end a
 * failed body with "Error: …" as its last bytes, framed as if complete, and print the error. Hits
 * and our own bytes are left as they are: the adapter sends them whole with their length, without
 * the Content-Type it would add (`noTypeAdded`).
 */
function send(
  response: Response | Promise<Response>,
  outgoing: ServerResponse,
  alreadySent: Response,
  warn: Warn,
): Response | Promise<Response> {
  const guarded = (ready: Response) => {
    const { bytes } = outcomeOf(ready)
    if (bytes) return sentWhole(ready, bytes)
    const origin = unreadOf(ready)
    if (origin && !origin.body?.locked && !origin.incoming.destroyed) return sendOrigin(ready, origin, outgoing, alreadySent, warn)
    return noTypeAdded(cutOnFailure(ready, outgoing, warn), outgoing)
  }
  return response instanceof Promise ? response.then(guarded) : guarded(response)
}

/** A MISS's body that is a stream ends whole or cuts the connection short (`endOrCut`). */
function cutOnFailure(ready: Response, connection: Closable, warn: Warn): Response {
  const { kind, wholeBytes } = outcomeOf(ready)
  // Bytes (a short answer, a MISS read ahead) are sent whole too, with their length.
  return wholeBytes === undefined && !isFromCache(kind) && ready.body ? new Response(endOrCut(ready.body, connection, warn), ready) : ready
}

/**
 * The origin's message piped to the client with the response's status and headers. When the
 * origin's body fails, the client's connection is closed: the client sees the body cut short, as
 * from `endOrCut`; a client that goes away stops the origin's. Returns what tells the adapter that
 * the response is sent. (Not `stream.pipeline`: its AbortController and the DOMException it ends
 * with cost some 4 % of a no-store MISS, measured.)
 */
function sendOrigin(
  response: Response,
  { incoming, finish }: Unread,
  outgoing: ServerResponse,
  alreadySent: Response,
  warn: Warn,
): Response {
  // The client went away while the origin answered: nothing will read the origin's body.
  if (outgoing.destroyed) {
    incoming.destroy()
    finish?.(0, true)
    return alreadySent
  }
  outgoing.writeHead(response.status, outgoingHeaders(response.headers))
  // node:http sends the head with the body's first bytes: when none are in yet, it goes now, as the
  // adapter sends it (an event stream's first event may be minutes away).
  if (incoming.readableLength === 0 && !incoming.complete) outgoing.flushHeaders()
  let originFailed = false
  incoming.once("error", (error) => {
    originFailed = true
    warn("origin-body", `the origin's body failed (${error.message})`)
    outgoing.destroy()
  })
  outgoing.once("close", () => {
    if (!incoming.complete) incoming.destroy()
  })
  incoming.pipe(outgoing)
  if (finish) {
    let bytes = 0
    incoming.on("data", (chunk: Buffer) => {
      bytes += chunk.byteLength
    })
    // Closed before the end, and not by the origin's failure: the client left.
    outgoing.once("close", () => finish(bytes, !outgoing.writableFinished && !originFailed))
  }
  return alreadySent
}

/** A hit's fields as node:http takes them, built once per hit headers (the cache shares them for a second). */
const hitFields = new WeakMap<Headers, OutgoingHttpHeaders>()

/**
 * A hit from memory, for @hono/node-server to write as it is: its bytes, and its fields as a
 * plain object. Given the cache's `Headers`, the adapter would copy them into such an object on
 * every hit (and add a Content-Type to a response that has none); given the object, it hands it
 * to `writeHead` untouched. Built once per entry and second, that object took a tenth of a hit's
 * CPU time under Node off every hit (bench/README.md).
 */
function sentWhole(ready: Response, bytes: Uint8Array): Response {
  const { headers } = ready
  let fields = hitFields.get(headers)
  if (!fields) {
    fields = outgoingHeaders(headers)
    hitFields.set(headers, fields)
  }
  return new Response(bytes, { status: ready.status, headers: fields as Record<string, string> })
}

/** Header fields as node:http writes them: several Set-Cookie stay several. */
function outgoingHeaders(headers: Headers): OutgoingHttpHeaders {
  const fields: OutgoingHttpHeaders = {}
  for (const [name, value] of headers) if (name !== "set-cookie") fields[name] = value
  const cookies = headers.getSetCookie()
  if (cookies.length > 0) fields["set-cookie"] = cookies
  return fields
}

/** The body as it comes; when it fails, the connection is closed, so the client sees it cut short. */
function endOrCut(body: ReadableStream<Uint8Array>, connection: Closable, warn: Warn): ReadableStream<Uint8Array> {
  const reader = body.getReader()
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        const chunk = await reader.read().catch((error: unknown) => ({ error }))
        if (!("error" in chunk)) return chunk.done ? controller.close() : controller.enqueue(chunk.value)
        // A failure with no reason was reported by the cache already, as it stopped storing.
        if (chunk.error !== undefined) warn("origin-body", `the origin's body failed (${(chunk.error as Error).message})`)
        // Left neither ended nor failed: closing the connection makes the adapter cancel it.
        connection.destroy()
      },
      cancel: (reason) => reader.cancel(reason),
    },
    { highWaterMark: 0 },
  )
}

/**
 * RFC 9110 §15.2: an interim response from the origin, forwarded to the client before the final
 * one, as far as node:http can write one: 102 and 103, less hop-by-hop fields. 100 Continue
 * belongs to each hop's own Expect handshake (node:http answers the client's itself), and 101
 * is refused as an upgrade. Once the final response has begun (a background refresh) nothing
 * more can go before it.
 */
function sendInterim(outgoing: ServerResponse, status: number, rawHeaders: string[], warn: Warn): void {
  if (outgoing.headersSent || outgoing.destroyed) return
  if (status === 102) outgoing.writeProcessing()
  if (status !== 103) return
  const headers = new Headers()
  for (let i = 0; i < rawHeaders.length; i += 2) headers.append(rawHeaders[i] as string, rawHeaders[i + 1] as string)
  const isHopByHop = hopByHopFilter(headers)
  const hints: Record<string, string | string[]> = { link: headers.get("link")?.split(/,\s*(?=<)/) ?? [] }
  for (const [name, value] of headers) if (name !== "link" && !isHopByHop(name)) hints[name] = value
  // node:http sends a 103 only with a Link it finds well formed: hints are hints, so one that
  // cannot go is left out, and the final response follows as ever.
  try {
    outgoing.writeEarlyHints(hints)
  } catch (error) {
    warn("origin-body", `a 103 Early Hints from the origin was not forwarded: ${(error as Error).message}`)
  }
}

/**
 * Bytes are sacred: @hono/node-server writes a body that has no Content-Type with its own
 * "text/plain; charset=UTF-8". A response with none (the origin sent none) is written with none.
 */
function noTypeAdded(ready: Response, outgoing: ServerResponse): Response {
  if (ready.headers.has("content-type")) return ready
  const writeHead = outgoing.writeHead.bind(outgoing)
  outgoing.writeHead = ((status: number, ...rest: (string | OutgoingHttpHeaders | undefined)[]) => {
    for (const fields of rest) {
      if (typeof fields !== "object") continue
      for (const name of Object.keys(fields)) if (name.toLowerCase() === "content-type") delete fields[name]
    }
    return writeHead(status, ...(rest as [OutgoingHttpHeaders]))
  }) as ServerResponse["writeHead"]
  return ready
}

const nodeRuntime: Runtime = {
  fetch: (target, method, headers, body, timeoutMs, interim) => nodeFetch(target, method, headers, body, interim, { timeoutMs }),
  // Workers share the port through node:cluster, which hands them connections: no reusePort here.
  async listen(app, host, port, _idleTimeoutSeconds, warn) {
    const [{ getRequestListener, RequestError }, { RESPONSE_ALREADY_SENT }] = await Promise.all([
      import("@hono/node-server"),
      // Loaded before getRequestListener replaces the global Response: the adapter recognises
      // this one, a Response of the runtime's own, and leaves the response to us.
      import("@hono/node-server/utils/response"),
    ])
    // An HTTP/1.1 server (createServer below): its responses are ServerResponses.
    const handle = getRequestListener(
      (request, env) => send(app.fetch(request, env), env.outgoing as ServerResponse, RESPONSE_ALREADY_SENT, warn),
      {
        hostname: host,
        // The server's own error handler, for what Hono's onError never sees: a request the adapter
        // cannot read is a 400, anything else a 502, never its bare 500.
        errorHandler: (error) =>
          error instanceof RequestError
            ? answer(400, "the request cannot be read\n", { kind: "pass", detail: "bad-request" })
            : unsent(error, warn),
      },
    )
    let inFlight = 0
    // One function for every response, added with `on`: `once` wraps a new closure per request,
    // and removing it cost a HIT under Node about 1 % more (the response goes once closed anyway).
    const answered = () => inFlight--
    const server = createServer((request, response) => {
      inFlight++
      response.on("close", answered)
      return handle(request, response)
    })
    return new Promise((resolvePromise, reject) => {
      server.once("error", reject)
      server.listen(port, host, () =>
        resolvePromise({
          port: (server.address() as AddressInfo).port,
          stop: (force) =>
            new Promise<void>((done) => {
              server.close(() => done())
              if (force) server.closeAllConnections()
              else server.closeIdleConnections()
            }),
          inFlight: () => inFlight,
        }),
      )
    })
  },
  interimTo: (c, warn) => {
    const outgoing = (c.env as { outgoing?: ServerResponse } | undefined)?.outgoing
    return outgoing && ((status, rawHeaders) => sendInterim(outgoing, status, rawHeaders, warn))
  },
  clientAddress: (c) => (c.env as { incoming?: IncomingMessage })?.incoming?.socket.remoteAddress,
  localPort: (c) => (c.env as { incoming?: IncomingMessage })?.incoming?.socket.localPort,
  requestTarget: (c) => pathAndQuery((c.env as { incoming?: IncomingMessage })?.incoming?.url ?? c.req.raw.url),
  // An origin's body still unread is counted as it is piped (`sendOrigin`), without a stream in between.
  counted: (response, finish) => {
    const origin = unreadOf(response)
    if (!origin || origin.body?.locked) return countedResponse(response, finish)
    // A message that failed before anything of it was read rejects, as countedBody's first read does.
    if (origin.failed) return Promise.reject(origin.failed)
    origin.finish = finish
    return response
  },
  files: nodeFiles,
}

export const runtime: Runtime = typeof Bun !== "undefined" ? bunRuntime : nodeRuntime

/** Serves the app on the current runtime; what fails outside the app is reported to `warn`. */
export function serve(app: Hono, options: ListenOptions, warn: Warn = createWarn()): Promise<Listener> {
  // Bun closes idle connections after 10 s by default: wait at least as long as the origin may.
  const idleTimeoutSeconds = Math.min(255, Math.ceil(options.timeoutSeconds) + 10)
  return runtime.listen(app, options.host, options.port, idleTimeoutSeconds, warn, options.reusePort ?? false)
}

/** Where and how to listen; `reusePort`: the port is shared with other workers. @default reusePort false */
export type ListenOptions = Pick<ProxyOptions, "host" | "port" | "timeoutSeconds"> & { reusePort?: boolean }
