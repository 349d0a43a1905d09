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
    if (controller.signal.aborted) throw new OriginError(504, `the origin did not answer within ${timeoutMs / 1000} s`, "timeout")
    if (error instanceof OriginError) throw error
    throw new OriginError(502, `the origin is unreachable (${(error as Error).message})`, failureOf(error))
  } finally {
    clearTimeout(timer)
  }
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
            return nodeFetch(target, method, headers, null, signal, undefined)
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
  files: bunFiles,
}

const keepAlive = { keepAlive: true }
const agents = { "http:": new HttpAgent(keepAlive), "https:": new HttpsAgent(keepAlive) }

/** Node's global fetch always decompresses, so the Node leg speaks node:http directly. */
function nodeFetch(
  target: string,
  method: string,
  headers: Headers,
  body: ReadableStream<Uint8Array> | null,
  signal: AbortSignal,
  interim: Interim | undefined,
) {
  const url = new URL(target)
  const send = url.protocol === "https:" ? httpsRequest : httpRequest
  return new Promise<Response>((resolvePromise, reject) => {
    const outgoing = send(
      url,
      {
        method,
        headers: Object.fromEntries(headers),
        agent: agents[url.protocol as "http:"],
        signal,
        maxHeaderSize: MAX_RESPONSE_HEAD_BYTES,
      },
      (incoming) => {
        try {
          resolvePromise(toResponse(incoming, method))
        } catch (error) {
          incoming.destroy() // an answer no `Response` can carry: a 502, not a crash
          reject(error)
        }
      },
    )
    outgoing.on("error", (error: NodeJS.ErrnoException) =>
      reject(error.code === "HPE_HEADER_OVERFLOW" ? new OriginError(502, HEAD_TOO_LARGE) : error),
    )
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
  const body = hasBody ? (Readable.toWeb(incoming) as ReadableStream<Uint8Array>) : null
  if (!hasBody) incoming.resume()
  return new Response(body, { status, statusText: incoming.statusMessage, headers })
}

/** A connection that can be closed at once: the client's, under Node. */
interface Closable {
  destroy(): void
}

/**
 * Under Node, a MISS's body (the origin's, streaming) ends whole or cuts the connection short:
 * @hono/node-server would end a failed body with "Error: …" as its last bytes, framed as if
 * complete, and print the error. Hits are left as they are: from memory they are bytes, which the
 * adapter sends whole with their length.
 */
function cutOnFailure(response: Response | Promise<Response>, connection: Closable, warn: Warn): Response | Promise<Response> {
  const guarded = (ready: Response) => {
    const { kind, wholeBytes } = outcomeOf(ready)
    // Bytes (a short answer, a MISS read ahead) are sent whole too, with their length.
    return wholeBytes === undefined && !isFromCache(kind) && ready.body
      ? new Response(endOrCut(ready.body, connection, warn), ready)
      : ready
  }
  return response instanceof Promise ? response.then(guarded) : guarded(response)
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
function noTypeAdded(response: Response | Promise<Response>, outgoing: ServerResponse): Response | Promise<Response> {
  const untyped = (ready: Response) => {
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
  return response instanceof Promise ? response.then(untyped) : untyped(response)
}

const nodeRuntime: Runtime = {
  fetch: (target, method, headers, body, timeoutMs, interim) =>
    withTimeout(timeoutMs, (signal) => nodeFetch(target, method, headers, body, signal, interim)),
  // Workers share the port through node:cluster, which hands them connections: no reusePort here.
  async listen(app, host, port, _idleTimeoutSeconds, warn) {
    const { getRequestListener, RequestError } = await import("@hono/node-server")
    const handle = getRequestListener(
      // env.outgoing is node:http's: the server is createServer's, below.
      (request, env) => noTypeAdded(cutOnFailure(app.fetch(request, env), env.outgoing, warn), env.outgoing as ServerResponse),
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
