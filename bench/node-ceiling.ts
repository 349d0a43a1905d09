/**
 * Benchmark ceiling for the Node build: a bare node:http server answering the cached bodies
 * straight from memory, written the plain Node way. A HIT of `node dist/cli.js` cannot beat it.
 * Run under Node (run.ts bundles it for Node first, as the proxy's own bundle is):
 *
 *   node node-ceiling.js [port]      (0 or absent: any free port)
 *
 * Prints one line, `node-ceiling listening on http://127.0.0.1:NNNN`, once ready.
 */
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { exitWhenOrphaned, fixedBody } from "./shared.ts"

// Buffers, as a Node server would hold them: `end` writes them without a copy.
const BODIES = new Map([
  ["/1k", Buffer.from(fixedBody(1024))],
  ["/64k", Buffer.from(fixedBody(64 * 1024))],
])

const server = createServer((request, response) => {
  const body = BODIES.get(request.url ?? "")
  if (!body) return void response.writeHead(404).end("not found\n")
  // Same headers the origin sends, so both sides put a similar number of bytes on the wire.
  response.writeHead(200, {
    "Content-Type": "application/octet-stream",
    "Cache-Control": "max-age=3600",
    "Content-Length": body.byteLength,
  })
  response.end(body)
})
server.listen(Number(process.argv[2] ?? 0), "127.0.0.1", () => {
  console.log(`node-ceiling listening on http://127.0.0.1:${(server.address() as AddressInfo).port}`)
})
exitWhenOrphaned()
