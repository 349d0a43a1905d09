/**
 * Benchmark ceiling: a bare Bun.serve answering the cached bodies straight from memory.
 * A cache HIT cannot beat this, so run.ts compares the proxy's HIT figures against it.
 *
 *   bun bench/ceiling.ts [port]      (0 or absent: any free port)
 *
 * Prints one line, `ceiling listening on http://127.0.0.1:NNNN`, once ready.
 */
import { exitWhenOrphaned, fixedBody } from "./shared.ts"

const BODY_1K = fixedBody(1024)
const BODY_64K = fixedBody(64 * 1024)

function bytes(body: Uint8Array): Response {
  // Same headers the origin sends, so both sides put a similar number of bytes on the wire.
  return new Response(body, {
    headers: { "Content-Type": "application/octet-stream", "Cache-Control": "max-age=3600" },
  })
}

const server = Bun.serve({
  hostname: "127.0.0.1",
  port: Number(process.argv[2] ?? 0),
  fetch(request) {
    const path = new URL(request.url).pathname
    if (path === "/1k") return bytes(BODY_1K)
    if (path === "/64k") return bytes(BODY_64K)
    return new Response("not found\n", { status: 404 })
  },
})
console.log(`ceiling listening on http://127.0.0.1:${server.port}`)
exitWhenOrphaned()
