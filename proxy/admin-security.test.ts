/**
 * The admin listener against browsers and guessers, through real HTTP: a
 * real origin, the real proxy and its admin app on ports 0, attack pages in a real headless
 * chromium, and raw requests from node:http where a header (Host) must be set by hand.
 */
import { describe, expect, test } from "bun:test"
import { request } from "node:http"
import {
  CLI,
  httpRequest,
  launchBrowser as launchSharedBrowser,
  runCli,
  startAdminProxy,
  startOrigin as startSharedOrigin,
} from "./test.fixture.ts"

// ───────────────────────────── helpers ─────────────────────────────

const TOKEN = "a-token-of-24-characters"
/** The attacker's names: chromium resolves them to this machine, as the attacker's DNS would. */
const EVIL_SITE = "evil.test"
const REBOUND_NAME = "rebind.attacker.test"

/** A real origin on port 0 answering every path, fresh for a minute. */
function startOrigin() {
  return startSharedOrigin((req) => new Response(`body of ${new URL(req.url).pathname}`, { headers: { "cache-control": "max-age=60" } }))
}

/** The proxy with its admin listener (on loopback, with this token or none), as the attacks find it. */
async function startProxy(origin: string, token?: string) {
  const proxy = await startAdminProxy({ origin, admin: { port: 0, host: "127.0.0.1", token } })
  return Object.assign(proxy, {
    /** Stores these paths through the proxy. */
    store: async (...paths: string[]) => {
      for (const path of paths) await (await fetch(proxy.url + path)).text()
    },
    /** The paths the cache holds, as the admin API lists them. */
    stored: async (): Promise<string[]> => {
      const { entries } = (await (await proxy.admin("/api/entries")).json()) as { entries: { path: string }[] }
      return entries.map((entry) => entry.path).sort()
    },
  })
}

/** Chromium with the attacker's names resolving to this machine. */
function launchBrowser() {
  return launchSharedBrowser([`--host-resolver-rules=MAP ${EVIL_SITE} 127.0.0.1, MAP ${REBOUND_NAME} 127.0.0.1`])
}

/** The attacker's site: one page on port 0 of this machine, reached in the browser as http://evil.test:PORT. */
function startAttackerSite(html: string) {
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch: () => new Response(html, { headers: { "content-type": "text/html" } }),
  })
  return { url: `http://${EVIL_SITE}:${server.port}/`, [Symbol.asyncDispose]: () => server.stop(true) }
}

// ───────────────────────────── cross-site requests ─────────────────────────────

/** Three ways a page on another site POSTs text/plain without asking (no CORS preflight). */
const ATTACKS: [string, (purgeUrl: string) => string][] = [
  [
    "fetch, no-cors, text/plain",
    (purgeUrl) =>
      `<script>fetch(${JSON.stringify(purgeUrl)}, { method: "POST", mode: "no-cors", body: '{"prefix":"/"}', headers: { "content-type": "text/plain" } })</script>`,
  ],
  ["navigator.sendBeacon", (purgeUrl) => `<script>navigator.sendBeacon(${JSON.stringify(purgeUrl)}, '{"prefix":"/"}')</script>`],
  [
    "a form, enctype text/plain",
    (purgeUrl) =>
      `<form method="POST" enctype="text/plain" action="${purgeUrl}"><input name='{"prefix":"/","x":"' value='"}'></form>` +
      "<script>document.forms[0].submit()</script>",
  ],
]

describe("a page on another site cannot change the cache", () => {
  test.each(ATTACKS)("%s to /api/purge is refused by the admin listener, and every entry stays", async (_, attack) => {
    await using origin = startOrigin()
    await using proxy = await startProxy(origin.url)
    await proxy.store("/a", "/b")
    await using site = startAttackerSite(attack(`${proxy.adminUrl}/api/purge`))
    await using chromium = await launchBrowser()
    const page = await chromium.browser.newPage()
    // The browser sent it and the listener answered: the refusal is ours, not the browser's.
    const answered = page.waitForResponse((res) => res.url().endsWith("/api/purge"))
    await page.goto(site.url)
    expect((await answered).status()).toBe(403)
    expect(await proxy.stored()).toEqual(["/a", "/b"])
  })

  test.each<[string, Record<string, string>, number]>([
    ["text/plain, as a form or beacon sends it", { "content-type": "text/plain" }, 415],
    ["a form's urlencoded body", { "content-type": "application/x-www-form-urlencoded" }, 415],
    ["no Content-Type", {}, 415],
    ["JSON from another origin", { "content-type": "application/json", origin: "http://evil.test" }, 403],
    ["JSON from another port of this host", { "content-type": "application/json", origin: "http://127.0.0.1:1" }, 403],
    ["JSON from an opaque origin", { "content-type": "application/json", origin: "null" }, 403],
    ["JSON marked Sec-Fetch-Site: cross-site", { "content-type": "application/json", "sec-fetch-site": "cross-site" }, 403],
    ["JSON marked Sec-Fetch-Site: same-site", { "content-type": "application/json", "sec-fetch-site": "same-site" }, 403],
  ])("a purge as %s is refused, and every entry stays", async (_, headers, status) => {
    await using origin = startOrigin()
    await using proxy = await startProxy(origin.url)
    await proxy.store("/a")
    const res = await fetch(`${proxy.adminUrl}/api/purge`, { method: "POST", headers, body: '{"prefix":"/"}' })
    expect(res.status).toBe(status)
    expect(await proxy.stored()).toEqual(["/a"])
  })

  test.each<[string, (adminUrl: string) => Record<string, string>]>([
    ["from a client outside a browser (no Origin)", () => ({})],
    ["from the listener's own page", (adminUrl) => ({ origin: adminUrl, "sec-fetch-site": "same-origin" })],
    ["with a charset", () => ({ "content-type": "application/json; charset=utf-8" })],
  ])("a JSON purge %s is taken", async (_, headers) => {
    await using origin = startOrigin()
    await using proxy = await startProxy(origin.url)
    await proxy.store("/a")
    const res = await fetch(`${proxy.adminUrl}/api/purge`, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers(proxy.adminUrl) },
      body: '{"prefix":"/"}',
    })
    expect(await res.json()).toEqual({ purged: 1 })
    expect(await proxy.stored()).toEqual([])
  })
})

// ───────────────────────────── DNS rebinding ─────────────────────────────

describe("without a token, only a Host naming this machine is answered", () => {
  test("a page at a rebound name (same origin as far as the browser knows) can neither read nor purge", async () => {
    await using origin = startOrigin()
    await using proxy = await startProxy(origin.url)
    await proxy.store("/a")
    await using chromium = await launchBrowser()
    const page = await chromium.browser.newPage()
    const rebound = `http://${REBOUND_NAME}:${proxy.adminPort}`
    expect((await page.goto(`${rebound}/`))?.status()).toBe(421)
    const seen = await page.evaluate(async () => {
      const status = async (path: string, init?: RequestInit) => (await fetch(path, init)).status
      return {
        entries: await status("/api/entries"),
        metrics: await status("/metrics"),
        purge: await status("/api/purge", { method: "POST", headers: { "content-type": "application/json" }, body: '{"prefix":"/"}' }),
      }
    })
    expect(seen).toEqual({ entries: 421, metrics: 421, purge: 421 })
    expect(await proxy.stored()).toEqual(["/a"])
  })

  test.each([
    ["GET", "/api/entries"],
    ["GET", "/metrics"],
    ["GET", "/"],
    ["POST", "/api/purge"],
  ])("%s %s with Host: rebind.attacker.test: 421 with a reason", async (method, path) => {
    await using origin = startOrigin()
    await using proxy = await startProxy(origin.url)
    await proxy.store("/a")
    const host = `${REBOUND_NAME}:${proxy.adminPort}`
    const res = await httpRequest(proxy.adminUrl + path, {
      method,
      headers: { host, "content-type": "application/json" },
      body: method === "POST" ? '{"prefix":"/"}' : undefined,
    })
    expect(res).toEqual({ status: 421, body: `this admin listener answers only for localhost, 127.0.0.1 or [::1] (Host was "${host}")\n` })
    expect(await proxy.stored()).toEqual(["/a"])
  })

  test("loopback names and addresses are answered, on any port (a tunnel's)", async () => {
    await using origin = startOrigin()
    await using proxy = await startProxy(origin.url)
    for (const host of ["127.0.0.1", `127.0.0.1:${proxy.adminPort}`, "LOCALHOST:9999", "127.1.2.3:80", "[::1]:9090"])
      expect(await httpRequest(`${proxy.adminUrl}/healthz`, { headers: { host } })).toEqual({ status: 200, body: "ok\n" })
  })

  test("with a token, any Host is answered (a listener others reach has many names)", async () => {
    await using origin = startOrigin()
    await using proxy = await startProxy(origin.url, TOKEN)
    const res = await httpRequest(`${proxy.adminUrl}/healthz`, { headers: { host: "admin.example.com", authorization: `Bearer ${TOKEN}` } })
    expect(res).toEqual({ status: 200, body: "ok\n" })
  })
})

// ───────────────────────────── bounded bodies ─────────────────────────────

/** Sends headers and some of a body, and never the rest: resolves with the status once answered. */
function unfinishedPost(url: string, headers: Record<string, string>, sent: Uint8Array): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: "POST", headers: { "content-type": "application/json", ...headers } }, (res) => {
      res.resume()
      resolve(res.statusCode ?? 0)
      req.destroy()
    })
    req.on("error", reject)
    req.write(sent)
  })
}

describe("admin request bodies are bounded", () => {
  test("a body past 64 KiB: 413, and nothing is purged", async () => {
    await using origin = startOrigin()
    await using proxy = await startProxy(origin.url)
    await proxy.store("/a")
    const body = JSON.stringify({ prefix: "/", padding: "x".repeat(64 << 10) })
    const res = await fetch(`${proxy.adminUrl}/api/purge`, { method: "POST", headers: { "content-type": "application/json" }, body })
    expect(res.status).toBe(413)
    expect(await res.text()).toBe(`an admin request body is at most ${64 << 10} bytes\n`)
    expect(await proxy.stored()).toEqual(["/a"])
  })

  test("a Content-Length of 1 GB is refused before its body is sent", async () => {
    await using origin = startOrigin()
    await using proxy = await startProxy(origin.url)
    expect(await unfinishedPost(`${proxy.adminUrl}/api/purge`, { "content-length": String(1 << 30) }, new Uint8Array(0))).toBe(413)
  })

  test("a chunked body is refused once past the bound, without waiting for its end", async () => {
    await using origin = startOrigin()
    await using proxy = await startProxy(origin.url)
    expect(await unfinishedPost(`${proxy.adminUrl}/api/purge`, { "transfer-encoding": "chunked" }, new Uint8Array(128 << 10))).toBe(413)
  })
})

// ───────────────────────────── the token ─────────────────────────────

describe("the token where other machines can ask", () => {
  test("--admin-token shorter than 16 characters on a non-loopback --admin-host: one line, exit code 2", async () => {
    const { stderr, code } = await runCli([
      ...CLI,
      "--origin",
      "http://127.0.0.1:1",
      "--admin-port",
      "0",
      "--admin-host",
      "0.0.0.0",
      "--admin-token",
      "fifteen-chars-x",
    ])
    expect(code).toBe(2)
    expect(stderr).toBe(
      "caching-proxy: --admin-token must be at least 16 characters where --admin-host 0.0.0.0 lets other machines ask (got 15)\n",
    )
  })

  test("repeated 401s from one address come more and more slowly; the token is still answered at once", async () => {
    await using origin = startOrigin()
    await using proxy = await startProxy(origin.url, TOKEN)
    const timed = async (authorization: string) => {
      const started = performance.now()
      const res = await fetch(`${proxy.adminUrl}/api/stats`, { headers: { authorization } })
      await res.text()
      return { status: res.status, ms: performance.now() - started }
    }
    const failures = []
    for (let n = 0; n < 5; n++) failures.push(await timed("Bearer wrong"))
    expect(failures.map((failure) => failure.status)).toEqual([401, 401, 401, 401, 401])
    expect(failures[0]?.ms).toBeLessThan(90)
    // 100 ms for the second failure, doubling: 800 ms for the fifth.
    expect(failures[4]?.ms).toBeGreaterThanOrEqual(790)
    const right = await timed(`Bearer ${TOKEN}`)
    expect(right.status).toBe(200)
    expect(right.ms).toBeLessThan(90)
    // Giving the token ends the guessing: the next failure is answered at once again.
    expect((await timed("Bearer wrong")).ms).toBeLessThan(90)
  })
})
