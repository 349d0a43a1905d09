/**
 * caching-proxy's behaviour, through real HTTP: a real origin on port 0, the real proxy on
 * port 0 (in-process through createProxy, or as a child process through the CLI, under Node,
 * and as the compiled binary). Assertions are on what the client got and what the origin saw.
 */
import { afterAll, beforeAll, describe, expect, setSystemTime, test } from "bun:test"
import { mkdtempSync, readdirSync, rmSync, statSync, writeFileSync, readFileSync, existsSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { connect } from "node:net"
import { gzipSync } from "node:zlib"
import { createProxy, serve, type ProxyOptions } from "./proxy.ts"

// ───────────────────────────── helpers ─────────────────────────────

const BUN = process.execPath

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), "caching-proxy-test-"))
}

/** A real origin on port 0 that records every request it sees. */
function startOrigin(respond: (req: Request, n: number) => Response | Promise<Response>) {
  const requests: Request[] = []
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    idleTimeout: 0,
    fetch(req) {
      requests.push(req)
      return respond(req, requests.length)
    },
  })
  return {
    url: server.url.href,
    requests,
    /** How many requests reached the origin for this path. */
    count: (path: string) => requests.filter((r) => new URL(r.url).pathname === path).length,
    [Symbol.asyncDispose]: () => server.stop(true),
  }
}

const DEFAULTS: Omit<ProxyOptions, "origin" | "cacheDir"> = {
  port: 0,
  host: "127.0.0.1",
  ttlSeconds: 300,
  timeoutSeconds: 30,
  quiet: true,
  memorySize: 64 << 20,
  maxSize: 1 << 30,
  maxEntrySize: 100 << 20,
  forceTtlSeconds: 0,
  ignoreQuery: [],
  offline: false,
  shareCookies: false,
}

/** The real proxy, in-process, on port 0, with its own cache directory unless one is given. */
async function startProxy(options: Partial<ProxyOptions> & { origin: string }) {
  const ownDir = options.cacheDir === undefined
  const cacheDir = options.cacheDir ?? tempDir()
  const full: ProxyOptions = { ...DEFAULTS, ...options, cacheDir, origin: options.origin.replace(/\/+$/, "") }
  const { app, cache } = createProxy(full)
  const listener = await serve(app, full)
  return {
    url: `http://127.0.0.1:${listener.port}/`,
    cacheDir,
    cache,
    [Symbol.asyncDispose]: async () => {
      cache.close()
      await listener.stop(true)
      if (ownDir) rmSync(cacheDir, { recursive: true, force: true })
    },
  }
}

/** A child process running the CLI; resolves once it says where it listens. */
async function startCli(command: string[], env: Record<string, string> = {}) {
  const child = Bun.spawn(command, { stdout: "pipe", stderr: "pipe", env: { ...process.env, ...env } })
  const reader = child.stdout.getReader()
  let output = ""
  const decoder = new TextDecoder()
  while (!/listening on http:\/\/[^:]+:(\d+)/.test(output)) {
    const { done, value } = await reader.read()
    if (done) throw new Error(`the proxy exited: ${output}${await new Response(child.stderr).text()}`)
    output += decoder.decode(value)
  }
  const port = Number(/listening on http:\/\/[^:]+:(\d+)/.exec(output)?.[1])
  const lines: string[] = output.split("\n")
  void (async () => {
    for (;;) {
      const { done, value } = await reader.read()
      if (done) return
      lines.push(...decoder.decode(value).split("\n"))
    }
  })()
  return {
    url: `http://127.0.0.1:${port}/`,
    child,
    lines,
    [Symbol.asyncDispose]: async () => {
      child.kill()
      await child.exited
    },
  }
}

/** Runs the CLI to completion. */
async function runCli(command: string[]) {
  const child = Bun.spawn(command, { stdout: "pipe", stderr: "pipe" })
  const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited])
  return { stdout, stderr, code }
}

/** Sends raw bytes on a socket and returns everything the server answered until it closed. */
function rawRequest(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1", () => socket.write(text))
    let data = ""
    socket.on("data", (chunk) => (data += chunk.toString("latin1")))
    socket.on("end", () => resolve(data))
    socket.on("error", reject)
  })
}

function portOf(url: string): number {
  return Number(new URL(url).port)
}

const get = (url: string, headers: Record<string, string> = {}) => fetch(url, { headers })
