/**
 * Benchmark reference for a HIT served from Redis: a bare Bun.serve that reads the body from
 * Redis on every request (with the same client the proxy uses) and answers with it. A proxy
 * whose memory tier is cold cannot answer a Redis hit faster than this.
 *
 *   bun bench/redis-reader.ts <redis url>
 *
 * Answers GET /<key> with the bytes stored at Redis key `bench:<key>`. Prints one line,
 * `redis-reader listening on http://127.0.0.1:NNNN`, once ready.
 */
import { Redis } from "ioredis"
import { addTracingChannelHasSubscribers } from "../cache/tracing-channel.ts"
import { exitWhenOrphaned } from "./shared.ts"

// Configured as the proxy's store connection is: concurrent requests' commands share writes, and
// commands are not traced when no one listens (which Bun's diagnostics_channel cannot tell alone).
addTracingChannelHasSubscribers()
const redis = new Redis(process.argv[2] ?? "redis://127.0.0.1:6379", { enableAutoPipelining: true })

const server = Bun.serve({
  hostname: "127.0.0.1",
  port: 0,
  async fetch(request) {
    const body = await redis.getBuffer(`bench:${new URL(request.url).pathname.slice(1)}`)
    if (!body) return new Response("not found\n", { status: 404 })
    return new Response(body, { headers: { "Content-Type": "application/octet-stream", "Cache-Control": "max-age=3600" } })
  },
})
console.log(`redis-reader listening on http://127.0.0.1:${server.port}`)
exitWhenOrphaned()
