/**
 * What every test (and the benchmark) starts from, in one place: a real origin on port 0, the
 * real proxy in-process (as a user runs it: access log on, its output captured) or as a child
 * process under Bun and under Node, real Redis servers and a Redis Cluster, a headless
 * chromium. Nothing here registers a hook, so the benchmark can import it outside `bun test`.
 *
 * `CACHING_PROXY_TEST_FAST=1` (`npm run test:fast`) leaves out the tests that need Redis,
 * Chromium or a compiled binary, or wait out a runtime's real timer: the inner loop. `npm test`
 * and CI run everything, and a test skipped there counts as a failure (.ci/run).
 */
import { expect, setSystemTime } from "bun:test"
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs"
import { createServer as createHttpServer, request, type ServerResponse } from "node:http"
import { connect, createServer, type Socket } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { parseArgs } from "citty"
import { chromium } from "playwright-core"
import type { EntryMeta, WarnKind } from "../cache/store.ts"
import { createProxy, type ProxyOptions, parseOptions, serve } from "../proxy.ts"
import { args } from "./options.ts"

export { startRedis, startRedisCluster } from "../cache/redis-server.fixture.ts"

/** The checkout's root: the CLI's entry, package.json and dist/ are found from here. */
export const ROOT = join(import.meta.dir, "..")

/**
 * True in `npm run test:fast`: tests needing Redis, Chromium or a compile, and those that wait out
 * a real timer of 5 s or more (one no clock can move), are left out (`test.skipIf(FAST_RUN)`).
 */
export const FAST_RUN = process.env.CACHING_PROXY_TEST_FAST === "1"

/**
 * A server a whole test file shares (a Redis), started as the file loads, by an `await` at its top
 * level, not in `beforeAll`: when one test times out, bun test (1.4.5) kills every process the
 * file's hooks and tests have spawned, a `beforeAll`'s too (oven-sh/bun#39657), and the file's
 * later tests all fail with it; what the module spawns as it loads is not tracked (without
 * `--isolate`). None in the fast run. The file stops it in an `afterAll`.
 */
export function startForFile<T>(start: () => Promise<T>): Promise<T | undefined> {
  return FAST_RUN ? Promise.resolve(undefined) : start()
}

/**
 * The proxy's options for tests and benchmarks that run it in-process: the CLI's own defaults
 * (parsed from its flags, as a user's command line is), on port 0; the admin listener is off, as
 * by default. The access log is on, as for a user: `startProxy` captures it (and the warnings)
 * instead of silencing it, so the default path is the one tested.
 */
const {
  origin: _origin,
  cacheDir: _cacheDir,
  ...CLI_DEFAULTS
} = parseOptions(parseArgs<typeof args>(["--port", "0", "--origin", "http://127.0.0.1"], args))
export const TEST_OPTIONS: Omit<ProxyOptions, "origin" | "cacheDir"> = CLI_DEFAULTS

const BUN = process.execPath

/** A temporary directory removed when it goes out of scope: `using dir = ownedDir()`. */
export function ownedDir() {
  const path = mkdtempSync(join(tmpdir(), "caching-proxy-test-"))
  return { path, [Symbol.dispose]: () => rmSync(path, { recursive: true, force: true }) }
}

/** Freezes the clock at a whole second, so Date headers and ages are exact; move it with `setSystemTime(Date.now() + ms)`. */
export function freezeClock() {
  setSystemTime(new Date().setMilliseconds(0))
}

/** What the origin saw of one request (Bun recycles Request objects once answered). */
interface SeenRequest {
  method: string
  url: string
  headers: Headers
}

/** A real origin on port 0 that records every request it sees. */
export function startOrigin(respond: (req: Request, n: number) => Response | Promise<Response>) {
  const requests: SeenRequest[] = []
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    idleTimeout: 0,
    fetch(req) {
      requests.push({ method: req.method, url: req.url, headers: new Headers(req.headers) })
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

/** The shared origin, its URL without the trailing slash: the admin API reports a URL as the origin plus the path. */
export function startAdminOrigin(respond: (req: Request, n: number) => Response | Promise<Response>) {
  const origin = startOrigin(respond)
  return { ...origin, url: origin.url.replace(/\/$/, "") }
}

/** An origin answering `v<n>` (its n-th request), fresh for a minute, with these extra headers per path. */
export function startFreshOrigin(headers: (path: string) => Record<string, string> = () => ({})) {
  return startAdminOrigin((req, n) => {
    const path = new URL(req.url).pathname
    return new Response(`v${n}`, { headers: { "cache-control": "max-age=60", date: new Date().toUTCString(), ...headers(path) } })
  })
}

/** An origin answering `v<n>` (its n-th request) with these headers plus an exact Date. */
export function startDatedOrigin(headers: Record<string, string> = {}, status = 200) {
  return startOrigin((_, n) => new Response(`v${n}`, { status, headers: { date: new Date().toUTCString(), ...headers } }))
}

/** The real proxy, in-process, on port 0, with its own cache directory unless one is given. */
export async function startProxy(options: Partial<ProxyOptions> & { origin: string }) {
  // A directory the caller gave is the caller's to remove.
  const dir = options.cacheDir === undefined ? ownedDir() : { path: options.cacheDir, [Symbol.dispose]: () => {} }
  const cacheDir = dir.path
  const full: ProxyOptions = { ...TEST_OPTIONS, ...options, cacheDir, origin: options.origin.replace(/\/+$/, "") }
  const warnings: { kind: WarnKind; detail: string }[] = []
  const warn = (kind: WarnKind, detail: string) => warnings.push({ kind, detail })
  const lines: string[] = []
  const { app, cache, metrics, admin } = await createProxy(full, { warn, log: (line) => lines.push(line) })
  const listener = await serve(app, full, warn)
  // The admin listener too when `admin` is given, on a port of its own.
  const adminListener = admin && (await serve(admin, { ...full, port: 0 }, warn))
  return {
    url: `http://127.0.0.1:${listener.port}/`,
    /** The admin listener's base URL (no trailing slash), when `admin` was given. */
    adminUrl: adminListener ? `http://127.0.0.1:${adminListener.port}` : undefined,
    cacheDir,
    cache,
    metrics,
    /** The access lines it wrote (none when quiet). */
    lines,
    /** What the proxy reported and carried on after. */
    warnings,
    [Symbol.asyncDispose]: async () => {
      await Promise.all([listener.stop(true), adminListener?.stop(true)])
      await cache.close()
      dir[Symbol.dispose]()
    },
  }
}

/**
 * The real proxy and its admin app, in-process, each on a port 0 (the admin listener on
 * 127.0.0.1 unless `options.admin` says otherwise), with a cache directory of their own. URLs
 * without a trailing slash: the admin API names a URL as the origin plus the path.
 */
export async function startAdminProxy(options: Partial<ProxyOptions> & { origin: string }) {
  const dir = ownedDir()
  const full: ProxyOptions = {
    ...TEST_OPTIONS,
    admin: { port: 0, host: "127.0.0.1", token: undefined },
    cacheDir: dir.path,
    ...options,
    origin: options.origin.replace(/\/+$/, ""),
  }
  const warnings: { kind: WarnKind; detail: string }[] = []
  const warn = (kind: WarnKind, detail: string) => warnings.push({ kind, detail })
  const lines: string[] = []
  const { app, cache, admin } = await createProxy(full, { warn, log: (line) => lines.push(line) })
  if (!admin) throw new Error("startAdminProxy needs options.admin (it is on by default)")
  const listener = await serve(app, full, warn)
  const adminListener = await serve(admin, { ...full, port: 0 }, warn)
  await cache.store.ready()
  const adminUrl = `http://127.0.0.1:${adminListener.port}`
  const token = full.admin?.token
  return {
    url: `http://127.0.0.1:${listener.port}`,
    cacheDir: full.cacheDir,
    adminUrl,
    adminPort: adminListener.port,
    /** The access lines it wrote. */
    lines,
    warnings,
    /** A request to the admin listener, with the token when there is one. */
    admin: (path: string, init: RequestInit = {}) =>
      fetch(adminUrl + path, { ...init, headers: { ...(token && { authorization: `Bearer ${token}` }), ...init.headers } }),
    [Symbol.asyncDispose]: async () => {
      await Promise.all([listener.stop(true), adminListener.stop(true)])
      await cache.close()
      dir[Symbol.dispose]()
    },
  }
}

// The start line's URL: a host name, an IPv4 address or a bracketed IPv6 one, then the port.
const LISTENING = /listening on http:\/\/(?:\[[^\]]+\]|[^:]+):(\d+)/

/** A child process running the CLI; resolves once it says where it listens. */
export async function startCli(command: string[], env: Record<string, string | undefined> = {}, cwd?: string) {
  // Its own process group: npx and bunx run the proxy as a grandchild, which must go too.
  const child = Bun.spawn(command, { stdout: "pipe", stderr: "pipe", env: { ...process.env, ...env }, cwd, detached: true })
  const reader = child.stdout.getReader()
  let output = ""
  const decoder = new TextDecoder()
  while (!LISTENING.test(output)) {
    const { done, value } = await reader.read()
    if (done) throw new Error(`the proxy exited: ${output}${await new Response(child.stderr).text()}`)
    output += decoder.decode(value)
  }
  const port = Number(LISTENING.exec(output)?.[1])
  const adminUrl = /admin on (http:\/\/[^\s",]+)/.exec(output)?.[1]
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
    /** The admin listener's URL, when the proxy started one. */
    adminUrl,
    child,
    lines,
    [Symbol.asyncDispose]: async () => {
      try {
        process.kill(-child.pid, "SIGTERM")
      } catch {
        // the group is gone already: the test stopped the proxy itself
      }
      await child.exited
    },
  }
}

// A command that runs to completion and has not after this long hangs: it is killed (its exit code
// then fails the test), never left running, and the test's own timeout is not reached first.
const RUN_CLI_LIMIT_MS = 15_000

/** Runs the CLI (or any command) to completion. */
export async function runCli(command: string[], cwd?: string, env: Record<string, string> = {}) {
  const child = Bun.spawn(command, { stdout: "pipe", stderr: "pipe", cwd, env: { ...process.env, ...env }, timeout: RUN_CLI_LIMIT_MS })
  const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited])
  return { stdout, stderr, code }
}

/** A request from node:http, which sends the Host header it is given (fetch sets its own). */
export function httpRequest(
  url: string,
  init: { method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: init.method ?? "GET", headers: init.headers }, (res) => {
      let body = ""
      res.setEncoding("utf8")
      res.on("data", (chunk: string) => {
        body += chunk
      })
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }))
    })
    req.on("error", reject)
    req.end(init.body)
  })
}

/** Sends raw bytes on a socket and returns everything the server answered until it closed. */
export function rawRequest(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1", () => socket.write(text))
    let data = ""
    socket.on("data", (chunk) => (data += chunk.toString("latin1")))
    socket.on("end", () => resolve(data))
    socket.on("error", reject)
  })
}

export function portOf(url: string): number {
  return Number(new URL(url).port)
}

export const get = (url: string, headers: Record<string, string> = {}) => fetch(url, { headers })

/** What the client got, its body read: for `toMatchObject`. Redirects are the client's to follow, not this one's. */
export async function answer(url: string, headers: Record<string, string> = {}, init: RequestInit = {}) {
  const res = await fetch(url, { headers, redirect: "manual", ...init })
  const body = await res.text()
  const header = (name: string) => res.headers.get(name)
  return { status: res.status, body, xCache: header("x-cache"), cacheStatus: header("cache-status"), age: header("age") }
}

/** A cache left by an earlier run: each path stored through a proxy on `cacheDir`, which then stops. */
export async function storeThrough(originUrl: string, cacheDir: string, ...paths: string[]) {
  await using proxy = await startProxy({ origin: originUrl, cacheDir })
  for (const path of paths) await (await get(`${proxy.url}${path}`)).text()
}

/** Asks the proxy without letting it go to the origin: true when the URL is answered from the cache. */
export async function isCached(url: string): Promise<boolean> {
  const { status, xCache } = await answer(url, { "cache-control": "only-if-cached" })
  return status === 200 && xCache === "HIT"
}

// ───────────────────────────── storage helpers ─────────────────────────────

/** Every file under the cache's `v1` tree, with its size. */
export function storedFiles(cacheDir: string): { path: string; size: number }[] {
  const root = join(cacheDir, "v1")
  if (!existsSync(root)) return []
  return (readdirSync(root, { recursive: true }) as string[])
    .map((name) => join(root, name))
    .filter((path) => statSync(path).isFile())
    .map((path) => ({ path, size: statSync(path).size }))
}

export const bodyFiles = (cacheDir: string) => storedFiles(cacheDir).filter((f) => f.path.endsWith(".body"))
export const metaFiles = (cacheDir: string) => storedFiles(cacheDir).filter((f) => f.path.endsWith(".meta"))

/** Waits for what the proxy does after a response is over (cleanup, a poll); fails if it never happens. */
export async function eventually(check: () => boolean | Promise<boolean>, withinMs = 3000): Promise<void> {
  const deadline = Date.now() + withinMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`still not true after ${withinMs} ms: ${check}`)
    await Bun.sleep(25)
  }
}

/** sha256 of a body, read chunk by chunk: the test never holds a large body whole. */
export async function sha256Of(body: ReadableStream<Uint8Array> | null): Promise<{ hex: string; bytes: number }> {
  const hasher = new Bun.CryptoHasher("sha256")
  let bytes = 0
  for await (const chunk of body ?? []) {
    hasher.update(chunk)
    bytes += chunk.byteLength
  }
  return { hex: hasher.digest("hex"), bytes }
}

/** Chunk `i` of a generated body: distinct per index, so a dropped or repeated chunk shows. */
export function generatedChunk(i: number, size: number): Uint8Array {
  const chunk = new Uint8Array(size)
  for (let offset = 0; offset < size; offset += 4096) chunk.fill((i * 31 + offset / 4096) & 0xff, offset, offset + 4096)
  new DataView(chunk.buffer).setUint32(0, i)
  return chunk
}

/** A body of `count` generated chunks, produced as the reader pulls; `delayMs` between chunks. */
export function generatedBody(count: number, size: number, events: { cancelled: boolean } = { cancelled: false }, delayMs = 0) {
  let i = 0
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (delayMs) await Bun.sleep(delayMs)
      if (i === count) return controller.close()
      controller.enqueue(generatedChunk(i++, size))
    },
    cancel() {
      events.cancelled = true
    },
  })
}

export function expectedSha256(count: number, size: number): string {
  const hasher = new Bun.CryptoHasher("sha256")
  for (let i = 0; i < count; i++) hasher.update(generatedChunk(i, size))
  return hasher.digest("hex")
}

/** An origin that speaks raw HTTP on a socket, for answers Bun.serve will not give (short bodies). */
export async function startRawOrigin(answer: (socket: Socket, n: number) => void) {
  let n = 0
  const server = createServer((socket) => {
    socket.once("data", () => answer(socket, ++n))
    socket.on("error", () => {}) // the proxy may hang up first; nothing to check there
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const { port } = server.address() as { port: number }
  return {
    url: `http://127.0.0.1:${port}/`,
    requests: () => n,
    [Symbol.asyncDispose]: () => new Promise<void>((resolve) => server.close(() => resolve())),
  }
}

/**
 * An origin that sends a chunked 200's header and first chunk ("hello"), then breaks the body when
 * the test says so: after the client has seen the start, so the break is mid-body however slow
 * the machine (a timer could fire before the proxy had even passed the headers on).
 */
export async function startBreakingOrigin(cacheControl: string) {
  const open: Socket[] = []
  const origin = await startRawOrigin((socket) => {
    socket.write(`HTTP/1.1 200 OK\r\nCache-Control: ${cacheControl}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n`)
    open.push(socket)
  })
  const breakBody = () => {
    for (const socket of open.splice(0)) socket.end("not a chunk size\r\n")
  }
  return Object.assign(origin, { breakBody })
}

/** Waits until `res` takes more (drain) or is gone (close, error), leaving no listener behind either way. */
function drainOrClose(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      for (const event of ["drain", "close", "error"]) res.off(event, done)
      resolve()
    }
    for (const event of ["drain", "close", "error"]) res.once(event, done)
  })
}

/**
 * An origin that streams `count` generated chunks under a Content-Length. Bun.serve drops the
 * Content-Length of a streamed body and sends it chunked, so this one speaks node:http.
 */
export async function startStreamingOrigin(count: number, size: number) {
  let requests = 0
  const server = createHttpServer(async (_, res) => {
    requests++
    res.writeHead(200, { "content-length": String(count * size), "cache-control": "max-age=600" })
    for (let i = 0; i < count && !res.destroyed; i++) {
      if (!res.write(generatedChunk(i, size))) await drainOrClose(res)
    }
    res.end()
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const { port } = server.address() as { port: number }
  return {
    url: `http://127.0.0.1:${port}/`,
    requests: () => requests,
    [Symbol.asyncDispose]: () => {
      server.closeAllConnections()
      return new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}

/**
 * An origin on raw sockets that keeps every byte each connection brings, and answers each request
 * head with its request line (no-store): exactly what a proxy sent on a kept-alive connection.
 */
export async function startRecordingOrigin() {
  const connections: string[] = []
  const server = createServer((socket) => {
    const index = connections.push("") - 1
    let received = ""
    let answered = 0
    socket.on("data", (chunk) => {
      received += chunk.toString("latin1")
      connections[index] = received
      const heads = received.split("\r\n\r\n").slice(0, -1)
      for (const head of heads.slice(answered)) {
        const [line = ""] = head.split("\r\n", 1)
        const body = line.startsWith("HEAD ") ? "" : line
        socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${line.length}\r\nCache-Control: no-store\r\n\r\n${body}`)
      }
      answered = heads.length
    })
    socket.on("error", () => {}) // the proxy may hang up first; the bytes are what the test checks
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const { port } = server.address() as { port: number }
  return {
    url: `http://127.0.0.1:${port}/`,
    /** Every byte the origin got, connection after connection. */
    bytes: () => connections.join(""),
    /** How many connections the proxy opened to it. */
    connections: () => connections.length,
    [Symbol.asyncDispose]: () => new Promise<void>((resolve) => server.close(() => resolve())),
  }
}

/** A client connection kept open: raw bytes out, everything that came back so far, and when it closed. */
export async function openConnection(port: number) {
  const socket = connect(port, "127.0.0.1")
  await new Promise((resolve, reject) => socket.once("connect", resolve).once("error", reject))
  let received = ""
  socket.on("data", (chunk) => (received += chunk.toString("latin1")))
  socket.on("error", () => {}) // a connection cut short is one of the outcomes the tests look at
  return {
    send: (text: string) => socket.write(text),
    received: () => received,
    /** Waits until what came back passes `check`. */
    until: (check: (received: string) => boolean) => eventually(() => check(received)),
    closed: new Promise<void>((resolve) => socket.once("close", () => resolve())),
    [Symbol.dispose]: () => socket.destroy(),
  }
}

/** The CLI under Node: the bundle npm installs (`buildNodeBundle`). */
export const NODE_BUNDLE = ["node", join(ROOT, "dist", "cli.js")]

/** The CLI under each runtime: Bun from source, Node from the bundle. */
export const RUNTIMES: [string, string[]][] = [
  ["Bun", [BUN, join(ROOT, "proxy.ts")]],
  ["Node", NODE_BUNDLE],
]

let nodeBundle: Promise<void> | undefined

/** Builds dist/cli.js once per run, for each describe block whose tests run it. */
export function buildNodeBundle(): Promise<void> {
  nodeBundle ??= npmRun("build:js")
  return nodeBundle
}

/** The CLI as `command` runs it, on port 0 with its own cache directory; what it printed on stderr once stopped. */
export async function startCliProxy(command: string[], originUrl: string, flags: string[] = [], env: Record<string, string> = {}) {
  const dir = ownedDir()
  try {
    const proxy = await startCli([...command, "--port", "0", "--origin", originUrl, "--cache-dir", dir.path, ...flags], env)
    return {
      url: proxy.url,
      adminUrl: proxy.adminUrl,
      port: portOf(proxy.url),
      /** Stops the proxy and returns what it wrote on stderr. */
      stderr: async () => {
        await proxy[Symbol.asyncDispose]()
        return new Response(proxy.child.stderr).text()
      },
      [Symbol.asyncDispose]: async () => {
        await proxy[Symbol.asyncDispose]()
        dir[Symbol.dispose]()
      },
    }
  } catch (error) {
    dir[Symbol.dispose]()
    throw error
  }
}

export const PACKAGE_VERSION = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version

// Git told to look for the repository where there is none: a build that asked git at run time
// would print "unknown", one that embedded its commit prints it.
export const NO_CLONE = { GIT_DIR: join(tmpdir(), "caching-proxy-no-such-repository") }

/** What --version prints for this checkout: the package version and the commit checked out. */
export async function expectedVersion(): Promise<string> {
  const commit = (await runCli(["git", "rev-parse", "--short=12", "HEAD"], ROOT)).stdout.trim()
  return `caching-proxy ${PACKAGE_VERSION} (commit ${commit})\n`
}

export const KB = 1024
export const MB = 1024 * KB

export const CLI = [BUN, join(ROOT, "proxy.ts")]

/** MISS, HIT, HIT after a restart, MISS after --clear-cache: through a command that runs the CLI. */
export async function endToEnd(command: string[], cwd?: string) {
  await using origin = startOrigin((_, n) => new Response(`product ${n}`, { headers: { "cache-control": "max-age=600" } }))
  using cacheDir = ownedDir()
  const start = () => startCli([...command, "--port", "0", "--origin", origin.url, "--cache-dir", cacheDir.path], {}, cwd)
  const expectAnswer = async (url: string, body: string, xCache: string) => {
    const response = await get(`${url}products`)
    expect(await response.text()).toBe(body)
    expect(response.headers.get("x-cache")).toBe(xCache)
  }
  {
    await using proxy = await start()
    await expectAnswer(proxy.url, "product 1", "MISS")
    await expectAnswer(proxy.url, "product 1", "HIT")
  }
  {
    await using proxy = await start()
    await expectAnswer(proxy.url, "product 1", "HIT")
  }
  const cleared = await runCli([...command, "--clear-cache", "--cache-dir", cacheDir.path], cwd)
  expect(cleared.code).toBe(0)
  {
    await using proxy = await start()
    await expectAnswer(proxy.url, "product 2", "MISS")
  }
  expect(origin.count("/products")).toBe(2)
}

/** Runs a package.json script with npm, as a user would. */
export async function npmRun(script: string) {
  const result = await runCli(["npm", "run", "--silent", script], ROOT)
  if (result.code !== 0) throw new Error(`npm run ${script} failed: ${result.stderr}`)
}

// ───────────────────────────── store entries ─────────────────────────────

/** A full EntryMeta, fresh for ten minutes, with the given fields changed. */
export function meta(overrides: Partial<EntryMeta> = {}): EntryMeta {
  const now = Date.now()
  return {
    status: 200,
    headers: [["content-type", "application/octet-stream"]],
    vary: {},
    responseTime: now,
    deleteAt: now + 600_000,
    initialAgeMs: 0,
    freshMs: 600_000,
    staleWhileRevalidateMs: 0,
    staleIfErrorMs: 0,
    mustRevalidate: false,
    noCache: false,
    etag: null,
    lastModified: null,
    ...overrides,
  }
}

/** Lets timers, I/O and other tasks run: a loop of synchronous hits would otherwise starve them. */
export function nextTask(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve))
}

// ───────────────────────────── a browser ─────────────────────────────

const CHROMIUM = "/usr/bin/chromium"

/**
 * Debian's headless chromium, driven by playwright-core, with these command-line switches (such as
 * `--host-resolver-rules`). Missing, it fails the test: `npm test`'s pretest installs it.
 */
export async function launchBrowser(args: string[] = []) {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing (apt-get install -y chromium); the browser tests need it`)
  const browser = await chromium.launch({ executablePath: CHROMIUM, args })
  return { browser, [Symbol.asyncDispose]: () => browser.close() }
}
