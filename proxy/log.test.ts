/**
 * The access log and warnings, as the proxy writes them: one line per request, text or JSON.
 */
import { afterEach, describe, expect, setSystemTime, test } from "bun:test"
import {
  buildNodeBundle,
  CLI,
  eventually,
  get,
  ownedDir,
  RUNTIMES,
  startBreakingOrigin,
  startCli,
  startCliProxy,
  startOrigin,
  startProxy,
  startRawOrigin,
} from "./test.fixture.ts"

// Every test starts on the real clock, whatever the one before did with it.
afterEach(() => setSystemTime())

/** Asks for `url`, breaks the origin's body once the answer has begun, and reads what is left of it. */
async function brokenBody(url: string, origin: { breakBody: () => void }): Promise<void> {
  const response = await get(url)
  origin.breakBody()
  await response.text().catch(() => "cut short, as it should be")
}

const TIME_ONLY = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/

describe("access log: one line per request, timed to its last byte, saying why an origin failed; warnings alike", () => {
  const TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z /

  test("a streamed body is timed to its last byte, and its bytes counted", async () => {
    await using origin = startOrigin(
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
      await using origin = startOrigin(
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

  test("--log-format json (CACHING_PROXY_LOG_FORMAT): one object per line, warnings too, each with an ISO-8601 time", async () => {
    await using origin = await startBreakingOrigin("max-age=60")
    using dir = ownedDir()
    const proxy = await startCli([...CLI, "--port", "0", "--origin", origin.url, "--cache-dir", dir.path], {
      CACHING_PROXY_LOG_FORMAT: "json",
    })
    try {
      await brokenBody(`${proxy.url}broken`, origin)
      await eventually(() => proxy.lines.some((l) => l.includes("/broken")))
    } finally {
      await proxy[Symbol.asyncDispose]()
    }
    const access = JSON.parse(proxy.lines.find((l) => l.includes("/broken"))!)
    expect(access).toMatchObject({ method: "GET", path: "/broken", status: 200, cache: "miss", bytes: 5 })
    expect(new Date(access.time).toISOString()).toBe(access.time)
    expect(access.ms).toBeGreaterThanOrEqual(0)
    const warnings = (await new Response(proxy.child.stderr).text()).trim().split("\n")
    expect(warnings.length).toBeGreaterThan(0)
    for (const line of warnings) expect(JSON.parse(line)).toMatchObject({ time: expect.stringMatching(TIME_ONLY), level: "warn" })
  })

  test("warnings in text start with the time too", async () => {
    await using origin = await startBreakingOrigin("max-age=60")
    await using proxy = await startCliProxy(CLI, origin.url)
    await brokenBody(`${proxy.url}broken`, origin)
    const stderr = (await proxy.stderr()).trim()
    expect(stderr).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z caching-proxy: origin-body: /)
  })
})
