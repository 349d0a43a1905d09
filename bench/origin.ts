/**
 * Benchmark origin: the upstream server the proxy forwards to.
 * Started by bench/run.ts as its own process (pinned to a core), never by the test suite.
 *
 *   bun bench/origin.ts
 *
 * It listens twice, on free ports, and prints one line once both are ready:
 *   origin listening on http://127.0.0.1:AAAA, big on http://127.0.0.1:BBBB
 *
 * - AAAA (Bun.serve): /1k, /64k, /nostore-1k, /slow-cold/<id>, /count/<id>.
 * - BBBB (node:http): /big. Bun.serve drops a handler-set Content-Length on a streamed body and
 *   sends it chunked (oven-sh/bun#10507); node:http keeps it. The small bodies stay on Bun.serve
 *   because it is the faster server, which keeps the MISS reference figure honest.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import { exitWhenOrphaned, fixedBody } from "./shared.ts"

const KIB = 1024
const MIB = 1024 * KIB

const BIG_BYTES = 512 * MIB
/** /big is produced in chunks of this size so the origin never holds the whole body. */
const BIG_CHUNK_BYTES = 1 * MIB
const SLOW_COLD_DELAY_MS = 200

const CACHEABLE = "max-age=3600"
const BODY_1K = fixedBody(KIB)
const BODY_64K = fixedBody(64 * KIB)
const BIG_CHUNK = fixedBody(BIG_CHUNK_BYTES)

/** Origin hits per /slow-cold id: how the coalescing check sees what the proxy forwarded. */
const slowColdCounts = new Map<string, number>()

function bytes(body: Uint8Array, cacheControl: string): Response {
  return new Response(body, {
    headers: { "Content-Type": "application/octet-stream", "Cache-Control": cacheControl },
  })
}

async function slowCold(id: string): Promise<Response> {
  // Count on arrival, not on answer: a proxy that forwards twice must show 2 even mid-flight.
  slowColdCounts.set(id, (slowColdCounts.get(id) ?? 0) + 1)
  await Bun.sleep(SLOW_COLD_DELAY_MS)
  return bytes(BODY_1K, CACHEABLE)
}

function count(id: string): Response {
  return Response.json({ id, count: slowColdCounts.get(id) ?? 0 }, { headers: { "Cache-Control": "no-store" } })
}

/** Writes a BIG_BYTES body from one reused chunk, with an explicit Content-Length. */
function big(request: IncomingMessage, response: ServerResponse): void {
  if (request.url !== "/big") {
    response.writeHead(404).end("not found\n")
    return
  }
  response.writeHead(200, {
    "Content-Type": "application/octet-stream",
    "Content-Length": String(BIG_BYTES),
    "Cache-Control": CACHEABLE,
  })
  let remaining = BIG_BYTES
  const writeUntilFull = (): void => {
    while (remaining > 0) {
      const size = Math.min(remaining, BIG_CHUNK_BYTES)
      remaining -= size
      // The chunk's bytes never change, so handing out the same buffer again is safe.
      const full = !response.write(size === BIG_CHUNK_BYTES ? BIG_CHUNK : BIG_CHUNK.subarray(0, size))
      // Resume on 'drain', not in a tight loop: that keeps the origin's memory bounded.
      if (full) return void response.once("drain", writeUntilFull)
    }
    response.end()
  }
  response.on("close", () => (remaining = 0)) // the client went away
  writeUntilFull()
}

function route(request: Request): Response | Promise<Response> {
  const path = new URL(request.url).pathname
  if (path === "/1k") return bytes(BODY_1K, CACHEABLE)
  if (path === "/64k") return bytes(BODY_64K, CACHEABLE)
  if (path === "/nostore-1k") return bytes(BODY_1K, "no-store")
  if (path.startsWith("/slow-cold/")) return slowCold(path.slice("/slow-cold/".length))
  if (path.startsWith("/count/")) return count(path.slice("/count/".length))
  return new Response("not found\n", { status: 404 })
}

const server = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: route })

const bigServer = createServer(big)
await new Promise<void>((resolve) => bigServer.listen(0, "127.0.0.1", resolve))
const bigPort = (bigServer.address() as AddressInfo).port

console.log(`origin listening on http://127.0.0.1:${server.port}, big on http://127.0.0.1:${bigPort}`)
exitWhenOrphaned()
