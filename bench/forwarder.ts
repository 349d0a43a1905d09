/**
 * Benchmark reference for the MISS path: the least a Bun proxy can do, a bare Bun.serve that
 * forwards each request with fetch (no decompression, no redirects) and returns the origin's
 * response as it is. No proxy that reaches its origin through Bun's fetch can forward faster.
 *
 *   bun bench/forwarder.ts ORIGIN_URL [port]
 *
 * Prints one line, `forwarder listening on http://127.0.0.1:NNNN`, once ready.
 */
import { exitWhenOrphaned } from "./shared.ts"

const origin = process.argv[2]
if (!origin) throw new Error("usage: bun bench/forwarder.ts ORIGIN_URL [port]")

const server = Bun.serve({
  hostname: "127.0.0.1",
  port: Number(process.argv[3] ?? 0),
  fetch(request) {
    const url = new URL(request.url)
    return fetch(origin + url.pathname + url.search, { decompress: false, redirect: "manual" } as RequestInit)
  },
})
console.log(`forwarder listening on http://127.0.0.1:${server.port}`)
exitWhenOrphaned()
