/**
 * Coalescing, through real HTTP: concurrent requests for one key reach the origin once.
 */
import { afterEach, describe, expect, setSystemTime, test } from "bun:test"
import { get, startOrigin, startProxy } from "../proxy/test.fixture.ts"

// Every test starts on the real clock, whatever the one before did with it.
afterEach(() => setSystemTime())

describe("coalescing", () => {
  test("50 concurrent requests for one cold URL make one origin request; the others are hits", async () => {
    await using origin = startOrigin(async () => {
      await Bun.sleep(300)
      return new Response("the one answer", { headers: { "cache-control": "max-age=600" } })
    })
    await using proxy = await startProxy({ origin: origin.url })
    const responses = await Promise.all(Array.from({ length: 50 }, () => get(`${proxy.url}cold`)))
    const bodies = await Promise.all(responses.map((r) => r.text()))
    expect(origin.count("/cold")).toBe(1)
    expect(responses.map((r) => r.status)).toEqual(Array(50).fill(200))
    expect(new Set(bodies)).toEqual(new Set(["the one answer"]))
    const hits = responses.filter((r) => r.headers.get("x-cache") === "HIT").length
    expect(hits).toBe(49)
  })

  test("once a URL's response could not be stored, concurrent requests for it go to the origin together", async () => {
    // The origin answers "together" only when all five requests are with it at once.
    const arrived: (() => void)[] = []
    await using origin = startOrigin(async (_, n) => {
      if (n === 1) return new Response("first", { headers: { "cache-control": "no-store" } })
      const together = new Promise<string>((resolve) => {
        arrived.push(() => resolve("together"))
        setTimeout(() => resolve("alone"), 3000)
      })
      if (arrived.length === 5) for (const release of arrived) release()
      return new Response(await together, { headers: { "cache-control": "no-store" } })
    })
    await using proxy = await startProxy({ origin: origin.url })
    await (await get(`${proxy.url}api`)).text()
    const bodies = await Promise.all(Array.from({ length: 5 }, async () => (await get(`${proxy.url}api`)).text()))
    expect(bodies).toEqual(Array(5).fill("together"))
  })

  test("a response that may not be stored releases the waiters: each goes to the origin itself", async () => {
    await using origin = startOrigin(async (_, n) => {
      await Bun.sleep(300)
      return new Response(`answer ${n}`, { headers: { "cache-control": "no-store" } })
    })
    await using proxy = await startProxy({ origin: origin.url })
    const responses = await Promise.all(Array.from({ length: 10 }, () => get(`${proxy.url}private`)))
    const bodies = await Promise.all(responses.map((r) => r.text()))
    expect(origin.count("/private")).toBe(10)
    expect(responses.map((r) => r.status)).toEqual(Array(10).fill(200))
    expect(new Set(bodies).size).toBe(10)
    for (const body of bodies) expect(body).toMatch(/^answer \d+$/)
    expect(responses.every((r) => r.headers.get("x-cache") === "MISS")).toBe(true)
  })

  test("20 concurrent requests for one stale entry send one revalidation; all are answered from the cache", async () => {
    await using origin = startOrigin(async (_, n) => {
      if (n === 1) return new Response("stored", { headers: { etag: '"v1"', "cache-control": "max-age=0" } })
      await Bun.sleep(200)
      return new Response(null, { status: 304, headers: { etag: '"v1"', "cache-control": "max-age=600" } })
    })
    await using proxy = await startProxy({ origin: origin.url })
    await (await get(`${proxy.url}r`)).text()
    const answers = await Promise.all(
      Array.from({ length: 20 }, async () => {
        const response = await get(`${proxy.url}r`)
        return `${response.headers.get("x-cache")} ${await response.text()}`
      }),
    )
    expect(answers).toEqual(Array(20).fill("HIT stored"))
    expect(origin.requests).toHaveLength(2)
    expect(origin.requests[1]!.headers.get("if-none-match")).toBe('"v1"')
  })

  test("concurrent requests with different values of a Vary'd header each get their own body", async () => {
    await using origin = startOrigin(async (req) => {
      await Bun.sleep(300)
      return new Response(`in ${req.headers.get("accept-language")}`, {
        headers: { "cache-control": "max-age=600", vary: "Accept-Language" },
      })
    })
    await using proxy = await startProxy({ origin: origin.url })
    const languages = ["en", "fr", "de", "en", "fr", "de", "en", "fr", "de"]
    const responses = await Promise.all(languages.map((lang) => get(`${proxy.url}page`, { "accept-language": lang })))
    const bodies = await Promise.all(responses.map((r) => r.text()))
    expect(bodies).toEqual(languages.map((lang) => `in ${lang}`))
    for (const lang of ["en", "fr", "de"]) {
      const again = await get(`${proxy.url}page`, { "accept-language": lang })
      expect(await again.text()).toBe(`in ${lang}`)
      expect(again.headers.get("x-cache")).toBe("HIT")
    }
  })
})
