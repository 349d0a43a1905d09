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
    headers: Headers,
    body: ReadableStream<Uint8Array> | null,
    timeoutMs: number,
    interim?: Interim,
  ): Promise<Response>
  /** Where this request's interim responses go ahead of its final one; undefined where the server cannot send them. */
  interimTo(c: Context, warn: Warn): Interim | undefined
  /** Serves the app; what fails outside it (`warn`ed) is answered by `unsent`, never by the runtime. */
  listen(app: Hono, host: string, port: number, idleTimeoutSeconds: number, warn: Warn): Promise<Listener>
  /** The client's address, for X-Forwarded-For. */
  clientAddress(c: Context): string | undefined
  /** The port the request came in on: the one listened on. */
  localPort(c: Context): number | undefined
  /** The request-target as the client sent it (path and query), as raw as the runtime keeps it. */
  requestTarget(c: Context): string
  /** The response, its body counted: `finish` gets the bytes handed to the server once it ends, fails or is cancelled (0 for none). */
  counted(response: Response, finish: (bytes: number) => void): Response
  /** How the file store reads bodies. */
  files: FileApi
}

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
// RFC 9110 §15.2.2: a 101 hands the connection over to another protocol; we proxy HTTP only.
const UPGRADE_REFUSED = "the origin switched protocols (101), and upgrades are not proxied"

/**
 * The answer to a request whose response failed where the app cannot catch it (Bun: a body that
 * fails before its first byte is sent): a 502 with one line, never the runtime's own error page.
 */
function unsent(error: unknown, warn: Warn): Response {
  warn("proxy", `a response could not be sent: ${error instanceof Error ? error.message : String(error)}`)
  return answer(502, "the origin's answer could not be relayed\n", { kind: "miss", detail: "origin-error" })
}

const bunRuntime: Runtime = {
  fetch: (target, method, headers, body, timeoutMs) =>
    withTimeout(timeoutMs, (signal) =>
      fetch(target, { method, headers, body, signal, redirect: "manual", decompress: false } as RequestInit).catch((error) => {
        const code = (error as { code?: string }).code
        if (code === "UnrequestedUpgrade") throw new OriginError(502, UPGRADE_REFUSED)
        // RFC 9112 §6.3: a body under a transfer coding other than chunked ends when the connection
        // closes. Bun's fetch refuses one it does not know; its node:http relays it. Only a safe
        // method is asked again (RFC 9110 §9.2.1): the origin may have acted on the first.
        if (code === "UnsupportedTransferEncoding" && (method === "GET" || method === "HEAD"))
          return nodeFetch(target, method, headers, null, undefined, { signal })
        throw error
      }),
    ),
  async listen(app, host, port, idleTimeoutSeconds, warn) {
    const server = Bun.serve({
      hostname: host,
      port,
      fetch: app.fetch,
      idleTimeout: idleTimeoutSeconds,
      // Uploads stream to the origin; the origin decides what it accepts.
      maxRequestBodySize: Number.MAX_SAFE_INTEGER,
      // Never Bun's development error page (50 KB of HTML naming the working directory). Not by
      // `development: false`: Bun then shares the port with a second server (SO_REUSEPORT).
      error: (error) => unsent(error, warn),
    })
    return { port: server.port ?? port, stop: (force) => server.stop(force), inFlight: () => server.pendingRequests }
  },
  // RFC 9110 §15.2 asks a proxy to forward 1xx responses; Bun's fetch hides them and Bun.serve
  // has no way to send one (README, "Known limits").
  interimTo: () => undefined,
  clientAddress: (c) => (c.env as { requestIP?: (r: Request) => { address: string } | null })?.requestIP?.(c.req.raw)?.address,
  localPort: (c) => (c.env as { port?: number } | undefined)?.port,
  requestTarget: (c) => pathAndQuery(c.req.raw.url),
  counted: countedResponse,
  files: bunFiles,
}

/** The response with its body passed on through a counting stream. */
function countedResponse(response: Response, finish: (bytes: number) => void): Response {
  if (response.body) return new Response(countedBody(response.body, finish), response)
  finish(0)
  return response
}

/** The body as it comes; `finish` gets the bytes sent once it ends, fails or is cancelled. */
function countedBody(body: ReadableStream<Uint8Array>, finish: (bytes: number) => void): ReadableStream<Uint8Array> {
  const reader = body.getReader()
  let bytes = 0
  let finished = false
  const end = () => {
    if (!finished) finish(bytes)
    finished = true
  }
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        const chunk = await reader.read().catch((error: unknown) => {
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
        end()
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
  headers: Headers,
  body: ReadableStream<Uint8Array> | null,
  interim: Interim | undefined,
  cancel: { signal: AbortSignal } | { timeoutMs: number },
) {
  const url = new URL(target)
  const send = url.protocol === "https:" ? httpsRequest : httpRequest
  return new Promise<Response>((resolvePromise, reject) => {
    const options = { method, headers: Object.fromEntries(headers), agent: agents[url.protocol as "http:"] }
    const outgoing = send(url, "signal" in cancel ? { ...options, signal: cancel.signal } : options, (incoming) => {
      try {
        resolvePromise(toResponse(incoming, method))
      } catch (error) {
        incoming.destroy() // an answer no `Response` can carry: a 502, not a crash
        reject(error)
      }
    })
    outgoing.on("error", reject)
    if ("timeoutMs" in cancel) {
      const timer = setTimeout(() => {
        reject(timedOut(cancel.timeoutMs))
        outgoing.destroy()
      }, cancel.timeoutMs)
      outgoing.once("response", () => clearTimeout(timer)).once("close", () => clearTimeout(timer))
    }
    if (interim) outgoing.on("information", (info) => interim(info.statusCode, info.rawHeaders))
    // Without this listener node:http drops the socket and neither answers nor fails: a client
    // would wait forever.
    outgoing.on("upgrade", (_, socket) => {
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
  const headers = new Headers()
  const raw = incoming.rawHeaders
  for (let i = 0; i < raw.length; i += 2) headers.append(raw[i] as string, raw[i + 1] as string)
  const status = incoming.statusCode ?? 502
  // RFC 9110 §15: a final status is 200-599. The Response @hono/node-server puts in place checks
  // it only once its body is read, too late for a 502: it is checked here.
  if (!isFinalStatus(status))
    throw new OriginError(502, `the origin answered with status ${status}, which is not a final HTTP status (200-599)`)
  const hasBody = method !== "HEAD" && status !== 204 && status !== 304
  const response = new Response(null, { status, statusText: incoming.statusMessage, headers })
  if (!hasBody) {
    incoming.resume()
    return response
  }
  // Whoever reads the body (its Web stream's reader, or the pipe) learns of a failure; until then
  // an 'error' with no listener would take the process down.
  incoming.on("error", () => undefined)
  // The body's Web stream is made when asked for: building one costs Node 20 some 5 % of a
  // no-store MISS (makeTransferable), and a body piped as it is needs none. The body is this
  // getter's alone (`.text()` and the like would find none): the cache and the proxy read it
  // as a stream.
  const origin: Unread = { incoming }
  Object.defineProperty(response, "body", { get: () => (origin.body ??= lazyWebBody(incoming)) })
  unread.set(response, origin)
  return response
}

/** The origin's message behind a response's body, while that body is a Web stream no one has read. */
interface Unread {
  incoming: IncomingMessage
  /** Its Web stream, once asked for. */
  body?: ReadableStream<Uint8Array>
  /** Where the bytes sent go once the response is over (`Runtime.counted`). */
  finish?: (bytes: number) => void
}

/**
 * Responses whose body is the origin's message, unread: when one is sent as it is (a MISS that is
 * not stored), `sendOrigin` pipes the message to the client with Node streams. Through Web
 * streams (the message's, the cut-on-failure guard's, the adapter's reader) such a MISS cost
 * 1.5×–3× the CPU per request, measured side by side.
 */
const unread = new WeakMap<Response, Unread>()

/**
 * The origin's message as a Web stream that takes nothing from it until it is read, so that it can
 * still be piped as it is. A chunk is taken when the reader asks for one: a slow reader slows the
 * origin down instead of filling memory.
 */
function lazyWebBody(incoming: IncomingMessage): ReadableStream<Uint8Array> {
  let reading = false
  return new ReadableStream<Uint8Array>(
    {
      pull(controller) {
        if (!reading) {
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
 * Sends what the app answered. An origin's body no one has read is piped to the client as it is.
 * Any other MISS's body (the origin's, streaming) ends whole or cuts the connection short:
 * @hono/node-server would end a failed body with "Error: …" as its last bytes, framed as if
 * complete, and print the error. Hits are left as they are: from memory they are bytes, which the
 * adapter sends whole with their length.
 */
function send(
  response: Response | Promise<Response>,
  outgoing: ServerResponse,
  alreadySent: Response,
  warn: Warn,
): Response | Promise<Response> {
  const guarded = (ready: Response) => {
    const origin = unread.get(ready)
    if (origin && !origin.body?.locked && !origin.incoming.destroyed) return sendOrigin(ready, origin, outgoing, alreadySent, warn)
    return !isFromCache(outcomeOf(ready).kind) && ready.body ? new Response(endOrCut(ready.body, outgoing, warn), ready) : ready
  }
  return response instanceof Promise ? response.then(guarded) : guarded(response)
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
    finish?.(0)
    return alreadySent
  }
  outgoing.writeHead(response.status, outgoingHeaders(response.headers))
  incoming.once("error", (error) => {
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
    outgoing.once("close", () => finish(bytes))
  }
  return alreadySent
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

const nodeRuntime: Runtime = {
  fetch: (target, method, headers, body, timeoutMs, interim) =>
    nodeFetch(target, method, headers, body, interim, { timeoutMs }).catch((error: unknown) => {
      throw unreachable(error)
    }),
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
    const server = createServer((request, response) => {
      inFlight++
      response.once("close", () => inFlight--)
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
    const origin = unread.get(response)
    if (!origin || origin.body?.locked) return countedResponse(response, finish)
    origin.finish = finish
    return response
  },
  files: nodeFiles,
}

export const runtime: Runtime = typeof Bun !== "undefined" ? bunRuntime : nodeRuntime

/** Serves the app on the current runtime; what fails outside the app is reported to `warn`. */
export function serve(
  app: Hono,
  options: Pick<ProxyOptions, "host" | "port" | "timeoutSeconds">,
  warn: Warn = createWarn(),
): Promise<Listener> {
  // Bun closes idle connections after 10 s by default: wait at least as long as the origin may.
  const idleTimeoutSeconds = Math.min(255, Math.ceil(options.timeoutSeconds) + 10)
  return runtime.listen(app, options.host, options.port, idleTimeoutSeconds, warn)
}
