/**
 * Benchmark reference for the Node build's MISS path: a bare node:http server that forwards each
 * request with node:http over a keep-alive agent and pipes the origin's answer back as it is. No
 * proxy that reaches its origin through node:http can forward faster. Run under Node (run.ts
 * bundles it for Node first):
 *
 *   node node-forwarder.js ORIGIN_URL [port]
 *
 * Prints one line, `node-forwarder listening on http://127.0.0.1:NNNN`, once ready.
 */
import { Agent, createServer, request as httpRequest } from "node:http"
import type { AddressInfo } from "node:net"
import { exitWhenOrphaned } from "./shared.ts"

const origin = process.argv[2]
if (!origin) throw new Error("usage: node node-forwarder.js ORIGIN_URL [port]")
const agent = new Agent({ keepAlive: true })

const server = createServer((request, response) => {
  const outgoing = httpRequest(`${origin}${request.url}`, { method: request.method, headers: request.headers, agent }, (incoming) => {
    response.writeHead(incoming.statusCode ?? 502, incoming.headers)
    incoming.pipe(response)
  })
  outgoing.on("error", () => response.writeHead(502).end())
  request.pipe(outgoing)
})
server.listen(Number(process.argv[3] ?? 0), "127.0.0.1", () => {
  console.log(`node-forwarder listening on http://127.0.0.1:${(server.address() as AddressInfo).port}`)
})
exitWhenOrphaned()
