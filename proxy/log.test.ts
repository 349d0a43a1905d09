/**
 * The access log and warnings, as the proxy writes them: one line per request, text or JSON.
 */

import { afterEach, describe, expect, setSystemTime, test } from "bun:test"
import { closeSync, constants, openSync, readSync } from "node:fs"
import type { Socket } from "node:net"
import { join } from "node:path"
import {
  answer,
  buildNodeBundle,
  CLI,
  eventually,
  FAST_RUN,
  generatedBody,
  get,
  ownedDir,
  RUNTIMES,
  runCli,
  startBreakingOrigin,
  startCli,
  startCliProxy,
  startOrigin,
  startProxy,
  startRawOrigin,
  startRedis,
} from "./test.fixture.ts"

// Every test starts on the real clock, whatever the one before did with it.
afterEach(() => setSystemTime())

/** What the pipe gives until it has stayed empty for 20 ms, read without blocking. */
async function readWaiting(fd: number): Promise<string> {
  const buffer = Buffer.alloc(1 << 16)
  let text = ""
  for (let emptyMs = 0; emptyMs < 20; ) {
    try {
      const read = readSync(fd, buffer)
      if (read === 0) return text
      text += buffer.toString("utf8", 0, read)
      emptyMs = 0
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EAGAIN") throw error
      await Bun.sleep(2)
      emptyMs += 2
    }
  }
  return text
}

/**
 * The CLI with its stdout a pipe the shell opens, which blocks its writer once full (64 KiB), as
 * `caching-proxy | shipper` with the shipper stuck: read up to the ready line, then only when the
 * test calls `read` (all that came since the start). The pipes Bun.spawn makes answer EAGAIN
 * instead, and Bun reads them ahead.
 */
async function startStalledLogProxy(command: string[]) {
  const origin = startOrigin(() => new Response("x", { headers: { "cache-control": "no-store" } }))
  const dir = ownedDir()
  const fifo = join(dir.path, "stdout")
  Bun.spawnSync(["mkfifo", fifo])
  const log = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK)
  const argv = [...command, "--port", "0", "--origin", origin.url, "--cache-dir", join(dir.path, "cache")]
  const child = Bun.spawn(["sh", "-c", 'exec "$@" > "$0"', fifo, ...argv], { stdout: "ignore", stderr: "pipe" })
  let output = ""
  while (!output.includes("\n")) output += await readWaiting(log)
  return {
    url: `http://127.0.0.1:${/:(\d+),/.exec(output)?.[1]}/`,
    read: async () => {
      output += await readWaiting(log)
      return output
    },
    [Symbol.asyncDispose]: async () => {
      child.kill("SIGKILL")
      await child.exited
      closeSync(log)
      dir[Symbol.dispose]()
      await origin[Symbol.asyncDispose]()
    },
  }
}

/** Asks for `count` URLs, fifty at a time; each must be answered 200 within 5 s. */
async function askInBursts(count: number, url: (n: number) => string): Promise<void> {
  for (let sent = 0; sent < count; sent += 50)
    await Promise.all(
      Array.from({ length: Math.min(50, count - sent) }, async (_, n) => {
        const response = await fetch(url(sent + n), { signal: AbortSignal.timeout(5000) })
        expect(response.status).toBe(200)
        await response.arrayBuffer()
      }),
    )
}

/** Asks for `url`, breaks the origin's body once the answer has begun, and reads what is left of it. */
async function brokenBody(url: string, origin: { breakBody: () => void }): Promise<void> {
  const response = await get(url)
  origin.breakBody()
  await response.text().catch(() => "cut short, as it should be")
}

/** An origin whose no-store body sends "first " at once and "last" 400 ms later. */
function startSlowBodyOrigin() {
  return startOrigin(
    () =>
      new Response(
        new ReadableStream({
          async start(controller) {
            controller.enqueue(new TextEncoder().encode("first "))
            await Bun.sleep(400)
            controller.enqueue(new TextEncoder().encode("last"))
            controller.close()
          },
        }),
        { headers: { "cache-control": "no-store" } },
      ),
  )
}

const TIME_ONLY = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/

describe("access log: one line per request, timed to its last byte, saying why an origin failed; warnings alike", () => {
  const TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z /

  test("a streamed body is timed to its last byte, and its bytes counted", async () => {
    await using origin = startSlowBodyOrigin()
    await using proxy = await startProxy({ origin: origin.url, quiet: false })
    expect(await (await get(`${proxy.url}slow-body`)).text()).toBe("first last")
    await eventually(() => proxy.lines.length === 1)
    const [line] = proxy.lines
    expect(line).toMatch(TIME)
    const match = /GET \/slow-body 200 pass (\d+\.\d)ms 10B origin (\d+\.\d)ms$/.exec(line!)
    expect(match).not.toBeNull()
    // The headers came at once; the last byte 400 ms later.
    expect(Number(match![1])).toBeGreaterThanOrEqual(400)
    expect(Number(match![2])).toBeLessThan(400)
  })

  test.each(RUNTIMES)(
    "%s: a body relayed as the origin streams it (not stored) is timed to its last byte, and its bytes counted",
    async (_, command) => {
      await buildNodeBundle()
      await using origin = startSlowBodyOrigin()
      using dir = ownedDir()
      await using proxy = await startCli([...command, "--port", "0", "--origin", origin.url, "--cache-dir", dir.path])
      expect(await (await get(`${proxy.url}slow-body`)).text()).toBe("first last")
      await eventually(() => proxy.lines.some((l) => l.includes("/slow-body")))
      const match = /GET \/slow-body 200 pass (\d+\.\d)ms 10B origin (\d+\.\d)ms$/.exec(proxy.lines.find((l) => l.includes("/slow-body"))!)
      expect(match).not.toBeNull()
      expect(Number(match![1])).toBeGreaterThanOrEqual(400)
      expect(Number(match![2])).toBeLessThan(400)
    },
    60_000,
  )

  test.each(RUNTIMES)(
    "%s: an origin whose headers do not come within --timeout is a 504, logged as a timeout; a slow body after them is not cut",
    async (_, command) => {
      await buildNodeBundle()
      const text = new TextEncoder()
      await using origin = startOrigin(async (req) => {
        if (new URL(req.url).pathname === "/late") {
          await Bun.sleep(3000)
          return new Response("late")
        }
        const trickle = new ReadableStream({
          async start(controller) {
            controller.enqueue(text.encode("a"))
            await Bun.sleep(1500)
            controller.enqueue(text.encode("b"))
            controller.close()
          },
        })
        return new Response(trickle, { headers: { "cache-control": "no-store" } })
      })
      using dir = ownedDir()
      await using proxy = await startCli([...command, "--port", "0", "--origin", origin.url, "--cache-dir", dir.path, "--timeout", "1"])
      const late = await get(`${proxy.url}late`)
      expect([late.status, await late.text()]).toEqual([504, "the origin did not answer within 1 s\n"])
      expect(await (await get(`${proxy.url}trickle`)).text()).toBe("ab")
      await eventually(() => proxy.lines.some((l) => l.includes("/late")))
      expect(proxy.lines.find((l) => l.includes("/late"))).toMatch(/ GET \/late 504 miss \d+\.\dms \d+B origin timeout after \d+\.\dms$/)
    },
    60_000,
  )
  test("the client's address leads the line; under --trust-forwarded, with the X-Forwarded-For chain it came through", async () => {
    await using origin = startOrigin(() => new Response("x", { headers: { "cache-control": "no-store" } }))
    for (const trustForwarded of [false, true]) {
      await using proxy = await startProxy({ origin: origin.url, quiet: false, trustForwarded })
      await (await get(`${proxy.url}who`, { "x-forwarded-for": "203.0.113.7, 10.0.0.1" })).text()
      await eventually(() => proxy.lines.length === 1)
      const from = trustForwarded ? "127.0.0.1 \\(for 203\\.0\\.113\\.7, 10\\.0\\.0\\.1\\)" : "127.0.0.1"
      expect(proxy.lines[0]).toMatch(new RegExp(`Z ${from} GET /who 200 pass `))
    }
  })

  test("--log-format json escapes what a client sends (quotes, backslashes) and keeps the line one valid object", async () => {
    await using origin = startOrigin(() => new Response("x", { headers: { "cache-control": "no-store" } }))
    await using proxy = await startProxy({ origin: origin.url, quiet: false, trustForwarded: true, logFormat: "json" })
    const chain = '"quoted" \\back\\slash, 10.0.0.1'
    await (await get(`${proxy.url}who?q=%22`, { "x-forwarded-for": chain })).text()
    await eventually(() => proxy.lines.length === 1)
    expect(JSON.parse(proxy.lines[0]!)).toMatchObject({ client: "127.0.0.1", forwardedFor: chain, path: "/who?q=%22", status: 200 })
  })

  // Under Node a body nothing stores is piped from the origin's message (Runtime.counted): left early, it is aborted too.
  test.each(RUNTIMES)(
    "%s: a client that leaves mid-body is logged as aborted, with the bytes it got",
    async (_, command) => {
      await buildNodeBundle()
      const events = { cancelled: false }
      await using origin = startOrigin(
        () => new Response(generatedBody(100, 64 * 1024, events, 20), { headers: { "cache-control": "no-store" } }),
      )
      using dir = ownedDir()
      await using proxy = await startCli([...command, "--port", "0", "--origin", origin.url, "--cache-dir", dir.path])
      const leaving = new AbortController()
      const response = await fetch(`${proxy.url}long`, { signal: leaving.signal })
      const reader = response.body!.getReader()
      await reader.read()
      leaving.abort()
      await eventually(() => proxy.lines.some((l) => l.includes("/long")))
      const match = / GET \/long 200 pass \d+\.\dms (\d+)B aborted origin \d+\.\dms$/.exec(proxy.lines.find((l) => l.includes("/long"))!)
      expect(match).not.toBeNull()
      expect(Number(match![1])).toBeGreaterThan(0)
      expect(Number(match![1])).toBeLessThan(100 * 64 * 1024)
    },
    60_000,
  )

  test("a hit's line has no origin time: the origin was not asked", async () => {
    await using origin = startOrigin(() => new Response("x", { headers: { "cache-control": "max-age=60" } }))
    await using proxy = await startProxy({ origin: origin.url, quiet: false })
    for (let n = 0; n < 2; n++) await (await get(`${proxy.url}once`)).text()
    await eventually(() => proxy.lines.length === 2)
    expect(proxy.lines[0]).toMatch(/ GET \/once 200 miss [\d.]+ms 1B origin [\d.]+ms$/)
    expect(proxy.lines[1]).toMatch(/ GET \/once 200 hit [\d.]+ms 1B$/)
  })

  test("an answer from the cache logs the body bytes it sent: whole, a range's part, none for a 304 or a HEAD, a 416's own", async () => {
    await using origin = startOrigin(() => new Response("0123456789", { headers: { "cache-control": "max-age=60", etag: '"v1"' } }))
    await using proxy = await startProxy({ origin: origin.url, quiet: false })
    const asks: [Record<string, string>, string?][] = [
      [{}],
      [{}],
      [{ range: "bytes=2-5" }],
      [{ "if-none-match": '"v1"' }],
      [{}, "HEAD"],
      [{ range: "bytes=50-60" }],
    ]
    for (const [headers, method] of asks) await (await fetch(`${proxy.url}sized`, { method, headers })).arrayBuffer()
    await eventually(() => proxy.lines.length === asks.length)
    const sent = proxy.lines.map((line) =>
      line
        .match(/ (\d{3}) (\w+) [\d.]+ms (\d+)B/)
        ?.slice(1)
        .join(" "),
    )
    expect(sent).toEqual([
      "200 miss 10",
      "200 hit 10",
      "206 hit 4",
      "304 hit 0",
      "200 hit 0",
      `416 hit ${"the range is outside the 10 bytes of this response\n".length}`,
    ])
  })

  test("a 502 says why (refused, reset) and how long the origin took; a 504 says timeout", async () => {
    const closed = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => new Response() })
    const closedUrl = closed.url.href
    closed.stop(true)
    await using down = await startProxy({ origin: closedUrl, quiet: false })
    await (await get(`${down.url}down`)).text()
    await eventually(() => down.lines.length === 1)
    expect(down.lines[0]).toMatch(/ GET \/down 502 miss \d+\.\dms \d+B origin refused after \d+\.\dms$/)
    await using origin = startOrigin(async () => {
      await Bun.sleep(2000)
      return new Response("late")
    })
    await using slow = await startProxy({ origin: origin.url, quiet: false, timeoutSeconds: 0.2 })
    await (await get(`${slow.url}slow`)).text()
    await eventually(() => slow.lines.length === 1)
    expect(slow.lines[0]).toMatch(/ GET \/slow 504 miss \d+\.\dms \d+B origin timeout after \d+\.\dms$/)
    await using hangingUp = await startRawOrigin((socket) => socket.destroy())
    await using reset = await startProxy({ origin: hangingUp.url, quiet: false })
    await (await get(`${reset.url}cut`)).text()
    await eventually(() => reset.lines.length === 1)
    expect(reset.lines[0]).toMatch(/ GET \/cut 502 miss \d+\.\dms \d+B origin reset after \d+\.\dms$/)
  })

  test("--log-format json (CACHING_PROXY_LOG_FORMAT): every line from start to shutdown is one object with time, level and msg", async () => {
    // The first request's body breaks (a warning); the second gets no answer (a 504, an error).
    const cut: Socket[] = []
    await using origin = await startRawOrigin((socket, n) => {
      if (n > 1) return
      socket.write("HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
      cut.push(socket)
    })
    using dir = ownedDir()
    // --timeout 0.3: a request the origin never answers is a 504, logged as an error.
    const proxy = await startCli([...CLI, "--port", "0", "--origin", origin.url, "--cache-dir", dir.path, "--timeout", "0.3"], {
      CACHING_PROXY_LOG_FORMAT: "json",
    })
    await brokenBody(`${proxy.url}broken`, { breakBody: () => cut.pop()?.end("not a chunk size\r\n") })
    expect((await get(`${proxy.url}hangs`)).status).toBe(504)
    await eventually(() => proxy.lines.some((l) => l.includes("/broken")))
    process.kill(-proxy.child.pid, "SIGTERM")
    expect(await proxy.child.exited).toBe(0)
    const stdout = proxy.lines.filter((line) => line !== "").map((line) => JSON.parse(line))
    const stderr = (await new Response(proxy.child.stderr).text())
      .split("\n")
      .filter((line) => line !== "")
      .map((line) => JSON.parse(line))
    for (const line of [...stdout, ...stderr]) {
      expect([line.time, line.level, typeof line.msg]).toEqual([
        expect.stringMatching(TIME_ONLY),
        expect.stringMatching(/^(info|warn|error)$/),
        "string",
      ])
    }
    expect(stdout[0]).toMatchObject({ level: "info", url: proxy.url.slice(0, -1), origin: origin.url.replace(/\/$/, ""), cache: dir.path })
    expect(stdout[0].msg).toStartWith(`listening on ${proxy.url.slice(0, -1)}`)
    const access = stdout.find((line) => line.path === "/broken")
    expect(access).toMatchObject({ level: "info", msg: "access", client: "127.0.0.1", method: "GET", status: 200, cache: "miss", bytes: 5 })
    expect(stderr).toContainEqual(expect.objectContaining({ level: "warn", kind: "origin-body" }))
    expect(stdout).toContainEqual(expect.objectContaining({ level: "error", path: "/hangs", status: 504, originError: "timeout" }))
    expect(stdout.at(-1)).toMatchObject({ level: "info", signal: "SIGTERM", cut: 0, ms: expect.any(Number) })
    expect(stdout.at(-1).msg).toMatch(/^stopped on SIGTERM in \d+ ms, 0 request\(s\) cut$/)
  })

  test("--log-format json: a 5xx is logged at level error, and a usage error is one JSON object too", async () => {
    await using origin = startOrigin(async () => {
      await Bun.sleep(2000)
      return new Response("late")
    })
    await using proxy = await startProxy({ origin: origin.url, quiet: false, logFormat: "json", timeoutSeconds: 0.2 })
    await (await get(`${proxy.url}slow`)).text()
    await eventually(() => proxy.lines.length === 1)
    expect(JSON.parse(proxy.lines[0]!)).toMatchObject({ level: "error", status: 504, originError: "timeout" })
    const { code, stderr } = await runCli([...CLI, "--log-format", "json", "--origin", origin.url, "--port", "nope"])
    expect(code).toBe(2)
    expect(JSON.parse(stderr)).toMatchObject({
      time: expect.stringMatching(TIME_ONLY),
      level: "error",
      msg: '--port must be 0-65535 (got "nope")',
      exitCode: 2,
    })
  })

  test("a log reader that goes away (stdout closed) costs the log, never the proxy: it serves on and says so once", async () => {
    await using origin = startOrigin(() => new Response("x", { headers: { "cache-control": "no-store" } }))
    using dir = ownedDir()
    const child = Bun.spawn([...CLI, "--port", "0", "--origin", origin.url, "--cache-dir", dir.path], { stdout: "pipe", stderr: "pipe" })
    const reader = child.stdout.getReader()
    const port = /:(\d+),/.exec(new TextDecoder().decode((await reader.read()).value))?.[1]
    await reader.cancel()
    // Past a flush (50 ms) and again: the first write fails, the rest are dropped unwritten.
    for (const pause of [0, 200]) {
      await Bun.sleep(pause)
      for (let n = 0; n < 20; n++) expect((await get(`http://127.0.0.1:${port}/x`)).status).toBe(200)
    }
    child.kill("SIGTERM")
    expect(await child.exited).toBe(0)
    const stderr = await new Response(child.stderr).text()
    expect(stderr).toMatch(/^\S+Z caching-proxy: log lines are dropped from now on: writing them failed \(EPIPE[^\n]*\)\n$/)
  })

  for (const [runtime, command] of RUNTIMES) {
    test(`${runtime}: a log reader that stalls (a full pipe) never stalls the proxy, and gets every line once it reads again`, async () => {
      if (runtime === "Node") await buildNodeBundle()
      await using proxy = await startStalledLogProxy(command)
      const requests = 1500 // about three times what the pipe holds
      await askInBursts(requests, (n) => `${proxy.url}stalled-${n}`)
      await eventually(async () => (await proxy.read()).match(/GET \/stalled-\d+ 200/g)?.length === requests)
    })

    test(`${runtime}: lines a stalled reader leaves waiting are capped at 8 MiB; past it they are dropped and counted`, async () => {
      if (runtime === "Node") await buildNodeBundle()
      await using proxy = await startStalledLogProxy(command)
      // About 12 MiB of lines, a client's long paths making them so.
      const requests = 4000
      const padding = "p".repeat(3000)
      await askInBursts(requests, (n) => `${proxy.url}${padding}/${n}`)
      let logged = 0
      let dropped = 0
      await eventually(async () => {
        const output = await proxy.read()
        logged = output.match(/GET \/p+\/\d+ 200/g)?.length ?? 0
        dropped = Number(/ (\d+) log line\(s\) dropped: the output took none for a while/.exec(output)?.[1] ?? 0)
        return dropped > 0 && logged + dropped === requests
      }, 10_000)
      expect(logged * (padding.length + 40)).toBeLessThan(8.5 * 2 ** 20 + 64 * 2 ** 10)
    })
  }

  test("warnings in text start with the time too", async () => {
    await using origin = await startBreakingOrigin("max-age=60")
    await using proxy = await startCliProxy(CLI, origin.url)
    await brokenBody(`${proxy.url}broken`, origin)
    const stderr = (await proxy.stderr()).trim()
    expect(stderr).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z caching-proxy: origin-body: /)
  })

  test.skipIf(FAST_RUN)(
    "Redis lost for 5 s and back: 'unreachable' and 'reachable again' are each logged once, in our words",
    async () => {
      await using redis = await startRedis()
      await using origin = startOrigin(() => new Response("x", { headers: { "cache-control": "max-age=60" } }))
      await using proxy = await startCliProxy(CLI, origin.url, ["--store", redis.url, "--memory-size", "1"])
      await redis.kill()
      // Requests go on through the outage (each would ask Redis, and fail).
      for (const started = Date.now(); Date.now() - started < 5000; await Bun.sleep(250)) {
        expect((await get(`${proxy.url}during`)).status).toBe(200)
      }
      await redis.start()
      await eventually(async () => (await answer(`${proxy.url}after`)).xCache === "HIT", 10_000)
      const stderr = await proxy.stderr()
      const states = stderr.split("\n").filter((line) => line.includes(" store-state: "))
      expect(states).toEqual([
        expect.stringMatching(/^\S+Z caching-proxy: store-state: Redis is unreachable \(.*\); requests go to the origin until it is back$/),
        expect.stringMatching(/^\S+Z caching-proxy: store-state: Redis is reachable again; caching resumes$/),
      ])
      expect(stderr).not.toMatch(/isn't writeable|enableOfflineQueue|ECONNREFUSED|Connection is closed/)
    },
    30_000,
  )
})
