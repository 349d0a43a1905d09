/**
 * Record and replay as an HTTP Archive (HAR 1.2): --record, export, import (file and Redis),
 * --replay, redaction, and what real consumers and producers of HAR (the HAR JSON Schema,
 * Playwright in Chromium) make of it. Everything runs the real CLI, as a user would.
 */
import { beforeAll, describe, expect, test } from "bun:test"
import { readFileSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { gzipSync } from "node:zlib"
import {
  buildNodeBundle,
  CLI,
  eventually,
  FAST_RUN,
  launchBrowser,
  metaFiles,
  NODE_BUNDLE,
  ownedDir,
  runCli,
  startCli,
  startOrigin,
  startRedis,
} from "./test.fixture.ts"

// The HAR 1.2 JSON Schema's validator (npm's har-schema, through har-validator): a consumer nobody here wrote.
// @ts-expect-error: har-validator ships no types; its `har` resolves with the HAR, or rejects listing the schema's complaints.
const harValidator: { har(data: unknown): Promise<unknown> } = await import("har-validator")

// ───────────────────────────── helpers ─────────────────────────────

const BINARY = Uint8Array.from({ length: 256 }, (_, i) => i)
const GZIPPED = gzipSync("compressed text, sent as the origin encoded it")
const SECRET = "s3cr3t-key"

/** An origin with text, binary, compressed, Vary'd, cookie-setting and keyed responses. */
function startApiOrigin() {
  return startOrigin((req) => {
    const url = new URL(req.url)
    const cached = { "cache-control": "max-age=600", date: new Date().toUTCString() }
    switch (url.pathname) {
      case "/text":
        return new Response("héllo wörld", {
          headers: [
            ...Object.entries(cached),
            ["content-type", "text/plain; charset=utf-8"],
            ["etag", '"t1"'],
            ["x-custom", "kept"],
            ["set-cookie", "session=abc; Path=/"],
            ["set-cookie", "theme=dark"],
          ],
        })
      case "/binary":
        return new Response(BINARY, { headers: { ...cached, "content-type": "application/octet-stream" } })
      case "/gzip":
        return new Response(GZIPPED, { headers: { ...cached, "content-type": "text/plain", "content-encoding": "gzip" } })
      case "/lang":
        return new Response(`in ${req.headers.get("accept-language")}`, { headers: { ...cached, vary: "Accept-Language" } })
      case "/gone":
        return new Response("not here", { status: 404, headers: cached })
      case "/keyed":
        return new Response(`page ${url.searchParams.get("page")} for the key holder`, { headers: cached })
      case "/page":
        return new Response(
          `<p id="data">…</p><script>fetch("/api/data").then((r) => r.text()).then((t) => (data.textContent = t))</script>`,
          {
            headers: { ...cached, "content-type": "text/html" },
          },
        )
      case "/api/data":
        return new Response("data from the origin", { headers: { ...cached, "content-type": "text/plain" } })
      default:
        return new Response("no such thing", { status: 404 })
    }
  })
}

/** The requests the round trip makes, each with its request headers. */
const REQUESTS: [string, Record<string, string>][] = [
  ["/text", {}],
  ["/binary", {}],
  ["/gzip", {}],
  ["/lang", { "accept-language": "de" }],
  ["/lang", { "accept-language": "fr" }],
  ["/gone", {}],
  [`/keyed?api_key=${SECRET}&page=2`, {}],
]

interface Seen {
  status: number
  headers: [string, string][]
  body: Uint8Array
}

/** A response as received, its body as sent (Bun's fetch would decompress gzip otherwise). */
async function seen(url: string, headers: Record<string, string>): Promise<Seen> {
  const response = await fetch(url, { headers, decompress: false })
  return { status: response.status, headers: [...response.headers], body: new Uint8Array(await response.arrayBuffer()) }
}

// The fields a cache writes itself (RFC 9110 §7.6.3, RFC 9111 §5.1, RFC 9211) or that frame one message: a hit
// says its Content-Length where the miss may have gone chunked (the bodies are compared byte for byte).
const PER_ANSWER = new Set(["via", "age", "x-cache", "cache-status", "connection", "keep-alive", "transfer-encoding", "content-length"])

/** The origin's own fields of a response, redacted ones shown as the recording has them. */
function originFields(headers: [string, string][], redacted = new Set(["set-cookie"])): [string, string][] {
  return headers.filter(([name]) => !PER_ANSWER.has(name)).map(([name, value]) => [name, redacted.has(name) ? "[redacted]" : value])
}

/** Runs the CLI to completion; its output and exit code. */
function cli(...flags: string[]) {
  return runCli([...CLI, ...flags])
}

/** The CLI proxy with these flags (a user's), on port 0; `stop(signal)` ends it and returns its stderr. */
async function proxy(origin: string, ...flags: string[]) {
  const started = await startCli([...CLI, "--port", "0", "--origin", origin, ...flags])
  return {
    ...started,
    async stop(signal: "SIGTERM" | "SIGKILL" = "SIGTERM") {
      started.child.kill(signal)
      await started.child.exited
      return new Response(started.child.stderr).text()
    },
  }
}

function entriesOf(
  path: string,
): { request: { url: string; headers: { name: string; value: string }[] }; response: Record<string, unknown> }[] {
  return JSON.parse(readFileSync(path, "utf8")).log.entries
}

/** Asks every request of the round trip and expects the answers the origin gave at first. */
async function expectReplayed(url: string, originals: Map<string, Seen>) {
  for (const [path, headers] of REQUESTS) {
    const original = originals.get(path + JSON.stringify(headers)) as Seen
    const replayed = await seen(url + path.slice(1), headers)
    expect(replayed.status).toBe(original.status)
    expect(replayed.body).toEqual(original.body)
    expect(originFields(replayed.headers)).toEqual(originFields(original.headers))
  }
}

// ───────────────────────────── the round trip ─────────────────────────────

describe("record, export, import and replay", () => {
  using work = ownedDir()
  const recording = join(work.path, "recorded.har")
  const exported = join(work.path, "exported.har")
  const recordedCache = join(work.path, "cache")
  const originals = new Map<string, Seen>()
  let originUrl = ""

  beforeAll(async () => {
    await using origin = startApiOrigin()
    originUrl = origin.url
    // Set-Cookie responses are stored only when shared (RFC 9111 §7.3 leaves it to the cache).
    const running = await proxy(origin.url, "--cache-dir", recordedCache, "--record", recording, "--share-cookies")
    for (const [path, headers] of REQUESTS) originals.set(path + JSON.stringify(headers), await seen(running.url + path.slice(1), headers))
    await eventually(() => entriesOf(recording).length === REQUESTS.length)
    expect(await running.stop()).toBe("")
    const { code, stderr } = await cli("export", "--cache-dir", recordedCache, "-o", exported)
    expect({ code, stderr }).toEqual({ code: 0, stderr: `caching-proxy: exported ${REQUESTS.length} responses to ${exported}\n` })
  }, 30_000)

  test("the recording and the export validate against the HAR 1.2 JSON Schema", async () => {
    for (const file of [recording, exported]) await harValidator.har(JSON.parse(readFileSync(file, "utf8")))
  })

  test("an export is sorted by URL, one entry per Vary variant, the same every time", async () => {
    const urls = entriesOf(exported).map((entry) => entry.request.url.slice(originUrl.length - 1))
    expect(urls).toEqual(["/binary", "/gone", "/gzip", `/keyed?api_key=${SECRET}&page=2`, "/lang", "/lang", "/text"])
    const again = await cli("export", "--cache-dir", recordedCache)
    expect(again.stdout).toBe(readFileSync(exported, "utf8"))
  })

  test("export --prefix keeps the URLs whose path starts with it", async () => {
    const { stdout } = await cli("export", "--cache-dir", recordedCache, "--prefix", "/la")
    expect(JSON.parse(stdout).log.entries.map((entry: { request: { headers: unknown } }) => entry.request.headers)).toEqual([
      [{ name: "accept-language", value: "de" }],
      [{ name: "accept-language", value: "fr" }],
    ])
  })

  test("--replay --offline answers every recorded request byte for byte, the origin gone", async () => {
    using fresh = ownedDir()
    const replaying = await proxy(originUrl, "--cache-dir", fresh.path, "--replay", recording, "--offline")
    await expectReplayed(replaying.url, originals)
    expect(await replaying.stop()).toBe("")
  })

  test("an export imported into a fresh cache directory answers offline byte for byte", async () => {
    using fresh = ownedDir()
    const imported = await cli("import", exported, "--cache-dir", fresh.path)
    expect(imported).toEqual({ code: 0, stdout: `caching-proxy: imported ${REQUESTS.length} responses from ${exported}\n`, stderr: "" })
    const offline = await proxy(originUrl, "--cache-dir", fresh.path, "--offline")
    await expectReplayed(offline.url, originals)
    // The stored entry's validators and freshness came along: a conditional request is a 304 from the cache.
    expect((await fetch(`${offline.url}text`, { headers: { "if-none-match": '"t1"' } })).status).toBe(304)
    expect(await offline.stop()).toBe("")
  })

  describe.skipIf(FAST_RUN)("into Redis", () => {
    test("a recording imported into Redis answers offline byte for byte", async () => {
      // Its own Redis: one started in a hook dies with any test of the file that times out (see startForFile).
      await using redis = await startRedis()
      const store = redis.url
      const imported = await cli("import", recording, "--store", store)
      expect(imported.code).toBe(0)
      const offline = await proxy(originUrl, "--store", store, "--offline")
      await expectReplayed(offline.url, originals)
      await offline.stop()
    })
  })

  test("a request the HAR cannot answer offline is a 504 naming its method and URL", async () => {
    using fresh = ownedDir()
    const replaying = await proxy(originUrl, "--cache-dir", fresh.path, "--replay", recording, "--offline")
    const missing = await fetch(`${replaying.url}never/recorded?x=1`)
    expect(missing.status).toBe(504)
    expect(await missing.text()).toBe(`not in the cache (offline mode): GET ${originUrl}never/recorded?x=1\n`)
    const head = await fetch(`${replaying.url}lang`, { method: "HEAD", headers: { "accept-language": "en" } })
    expect(head.status).toBe(504)
    await replaying.stop()
  })

  test("without --offline, what the HAR cannot answer goes to the origin", async () => {
    await using origin = startApiOrigin()
    using fresh = ownedDir()
    // The recording is for the first origin: to this one it is another origin's, and ignored with one warning.
    const replaying = await proxy(origin.url, "--cache-dir", fresh.path, "--replay", recording)
    expect(await (await fetch(`${replaying.url}api/data`)).text()).toBe("data from the origin")
    expect(origin.requests.length).toBe(1)
    const stderr = await replaying.stop()
    expect(stderr.trim().split("\n")).toHaveLength(1)
    expect(stderr).toContain(`${REQUESTS.length} entries are for another origin than ${origin.url.slice(0, -1)}`)
  })

  test("a HAR exported by us answers a page in Chromium through Playwright's routeFromHAR", async () => {
    await using origin = startApiOrigin()
    using fresh = ownedDir()
    const running = await proxy(origin.url, "--cache-dir", fresh.path)
    await fetch(`${running.url}page`)
    await fetch(`${running.url}api/data`)
    await running.stop()
    const har = join(fresh.path, "site.har")
    expect((await cli("export", "--cache-dir", fresh.path, "-o", har)).code).toBe(0)
    const seenByOrigin = origin.requests.length
    await using chrome = await launchBrowser()
    const page = await chrome.browser.newPage()
    await page.routeFromHAR(har, { notFound: "abort" })
    await page.goto(`${origin.url}page`)
    await page.locator("#data", { hasText: "data from the origin" }).waitFor()
    expect(origin.requests.length).toBe(seenByOrigin)
  })
})

describe("a HAR Chromium recorded", () => {
  test.skipIf(FAST_RUN)("imports and replays, binary bodies included", async () => {
    await using origin = startApiOrigin()
    using work = ownedDir()
    const har = join(work.path, "chromium.har")
    {
      await using chrome = await launchBrowser()
      const context = await chrome.browser.newContext({ recordHar: { path: har, content: "embed" } })
      const page = await context.newPage()
      await page.goto(`${origin.url}page`)
      await page.locator("#data", { hasText: "data from the origin" }).waitFor()
      await page.evaluate(() => fetch("/binary").then((r) => r.arrayBuffer()))
      await context.close()
    }
    const cacheDir = join(work.path, "cache")
    const imported = await cli("import", har, "--cache-dir", cacheDir)
    expect(imported.code).toBe(0)
    expect(imported.stdout).toMatch(/^caching-proxy: imported \d+ responses from /)
    const before = origin.requests.length
    for (const flags of [
      ["--cache-dir", cacheDir],
      ["--cache-dir", join(work.path, "empty"), "--replay", har],
    ]) {
      const offline = await proxy(origin.url, ...flags, "--offline")
      expect(await (await fetch(`${offline.url}api/data`)).text()).toBe("data from the origin")
      expect(await (await fetch(`${offline.url}page`)).text()).toContain('<p id="data">')
      expect(new Uint8Array(await (await fetch(`${offline.url}binary`)).arrayBuffer())).toEqual(BINARY)
      await offline.stop()
    }
    expect(origin.requests.length).toBe(before)
  })
})

// ───────────────────────────── redaction ─────────────────────────────

describe("redaction", () => {
  test("credentials and --redact names are [redacted] in recordings and exports; replay still matches", async () => {
    await using origin = startApiOrigin()
    using work = ownedDir()
    const recording = join(work.path, "r.har")
    const running = await proxy(
      origin.url,
      "--cache-dir",
      work.path,
      "--record",
      recording,
      "--redact",
      "api_key",
      "--redact",
      "X-Custom",
      "--share-cookies",
    )
    expect(await (await fetch(`${running.url}keyed?api_key=${SECRET}&page=2`)).text()).toBe("page 2 for the key holder")
    await (await fetch(`${running.url}text`)).arrayBuffer()
    await eventually(() => entriesOf(recording).length === 2)
    await running.stop()
    const exported = await cli("export", "--cache-dir", work.path, "--redact=api_key,x-custom")
    for (const text of [readFileSync(recording, "utf8"), exported.stdout]) {
      expect(text).not.toContain(SECRET)
      expect(text).not.toContain("session=abc")
      const entries = JSON.parse(text).log.entries as {
        request: { url: string }
        response: { headers: { name: string; value: string }[] }
      }[]
      const keyed = entries.find((entry) => entry.request.url.includes("/keyed")) as (typeof entries)[number]
      expect(keyed.request.url).toBe(`${origin.url}keyed?api_key=%5Bredacted%5D&page=2`)
      const text1 = entries.find((entry) => entry.request.url.endsWith("/text")) as (typeof entries)[number]
      expect(text1.response.headers.filter(({ name }) => name === "set-cookie" || name === "x-custom").map(({ value }) => value)).toEqual([
        "[redacted]",
        "[redacted]",
        "[redacted]",
      ])
    }
    // Replay matches the redacted parameter whatever its value, with no --redact given again.
    const replaying = await proxy(origin.url, "--cache-dir", join(work.path, "replay"), "--replay", recording, "--offline")
    expect(await (await fetch(`${replaying.url}keyed?api_key=another&page=2`)).text()).toBe("page 2 for the key holder")
    expect((await fetch(`${replaying.url}keyed?api_key=another&page=3`)).status).toBe(504)
    await replaying.stop()
  })

  test("--no-redact keeps every value, and says so on stderr", async () => {
    await using origin = startApiOrigin()
    using work = ownedDir()
    const running = await proxy(origin.url, "--cache-dir", work.path, "--share-cookies")
    await (await fetch(`${running.url}text`)).arrayBuffer()
    await running.stop()
    const exported = await cli("export", "--cache-dir", work.path, "--no-redact")
    expect(exported.code).toBe(0)
    expect(exported.stdout).toContain("session=abc; Path=/")
    expect(exported.stderr).toMatch(/^caching-proxy: warning: --no-redact: .*\n$/)
    const recording = join(work.path, "r.har")
    const recorder = await proxy(
      origin.url,
      "--cache-dir",
      join(work.path, "again"),
      "--share-cookies",
      "--record",
      recording,
      "--no-redact",
    )
    await (await fetch(`${recorder.url}text`)).arrayBuffer()
    await eventually(() => entriesOf(recording).length === 1)
    // A line of the running proxy's log: its time first (issue 23), a warning under --log-format json.
    expect(await recorder.stop()).toMatch(/^\S+Z caching-proxy: --no-redact: .*\n$/)
    expect(readFileSync(recording, "utf8")).toContain("session=abc; Path=/")
  })
})

// ───────────────────────────── bad input ─────────────────────────────

describe("import refuses bad input, naming the entry, and leaves nothing written", () => {
  const good = {
    startedDateTime: new Date().toISOString(),
    request: { method: "GET", url: "http://127.0.0.1:1/a", headers: [] },
    response: {
      status: 200,
      headers: [{ name: "content-type", value: "text/plain" }],
      content: { size: 2, mimeType: "text/plain", text: "ok" },
    },
  }
  const har = (...entries: unknown[]) => JSON.stringify({ log: { version: "1.2", creator: { name: "t", version: "1" }, entries } })
  const cases: [string, string, RegExp][] = [
    ["not JSON", "this is not json", /: it is not JSON, or is cut short \(.*\); nothing was imported$/],
    ["JSON but no HAR", '{"entries": []}', /: it is not a HAR: it has no log\.entries list; nothing was imported$/],
    ["a truncated file", har(good, good).slice(0, 150), /: it is not JSON, or is cut short/],
    [
      "a body that does not decode",
      har(good, {
        ...good,
        response: { ...good.response, content: { size: 3, mimeType: "x/y", text: "%%%not base64", encoding: "base64" } },
      }),
      /: entry 1: its body does not decode: response\.content\.text is not base64; nothing was imported$/,
    ],
    ["an entry with no URL", har(good, good, { ...good, request: { method: "GET", headers: [] } }), /: entry 2: request\.url is not a URL/],
    [
      "our extension with a field of the wrong type",
      har({ ...good, "_caching-proxy": { freshMs: "soon" } }),
      /: entry 0: _caching-proxy\.\w+ is not a number/,
    ],
  ]
  for (const [name, text, message] of cases) {
    test(name, async () => {
      using work = ownedDir()
      const file = join(work.path, "bad.har")
      writeFileSync(file, text)
      const cacheDir = join(work.path, "cache")
      const { code, stderr } = await cli("import", file, "--cache-dir", cacheDir)
      expect(code).toBe(2)
      expect(stderr.trim().split("\n")).toHaveLength(1)
      expect(stderr.trim()).toMatch(new RegExp(`^caching-proxy: ${file.replaceAll(".", "\\.")}${message.source}`))
      expect(metaFiles(work.path)).toEqual([])
    })
  }

  test("entries the cache never stores (other methods, a cancelled request) are left out and counted", async () => {
    using work = ownedDir()
    const file = join(work.path, "browser.har")
    const post = { ...good, request: { ...good.request, method: "POST" } }
    const cancelled = { ...good, request: { ...good.request, url: "http://127.0.0.1:1/b" }, response: { ...good.response, status: 0 } }
    writeFileSync(file, har(post, good, cancelled))
    const imported = await cli("import", file, "--cache-dir", work.path)
    expect(imported).toEqual({
      code: 0,
      stdout: `caching-proxy: imported 1 responses from ${file} (2 left out: not GET, or no final status)\n`,
      stderr: "",
    })
    expect(metaFiles(work.path)).toHaveLength(1)
  })

  test("an entry that does not fit the store undoes the entries written before it", async () => {
    using work = ownedDir()
    const file = join(work.path, "big.har")
    const big = { ...good, request: { ...good.request, url: "http://127.0.0.1:1/big" } }
    writeFileSync(
      file,
      har(good, { ...big, response: { ...good.response, content: { size: 300_000, mimeType: "text/plain", text: "x".repeat(300_000) } } }),
    )
    const { code, stderr } = await cli("import", file, "--cache-dir", work.path, "--max-size", "200k")
    expect(code).toBe(1)
    expect(stderr).toBe(
      `caching-proxy: ${file}: http://127.0.0.1:1/big (300000 bytes) does not fit the store's size limit; nothing was imported\n`,
    )
    expect(metaFiles(work.path)).toEqual([])
  })

  test("--record and --replay naming one file is refused: the recording would empty it", async () => {
    const { code, stderr } = await cli("--origin", "http://127.0.0.1:1", "--record", "api.har", "--replay", "./api.har")
    expect(code).toBe(2)
    expect(stderr).toBe(`caching-proxy: --record and --replay must name different files (both are ${join(process.cwd(), "api.har")})\n`)
  })

  test("--redact needs a name each time it is given", async () => {
    for (const flags of [["--redact"], ["--redact", "--offline"], ["--redact", "api_key", "--redact", "--offline"]]) {
      const { code, stderr } = await cli("--origin", "http://127.0.0.1:1", ...flags)
      expect(code).toBe(2)
      expect(stderr).toMatch(/^caching-proxy: --redact needs a .*\n$/)
    }
  })

  test("--replay with a bad HAR stops the start with one line and exit code 2", async () => {
    using work = ownedDir()
    const file = join(work.path, "bad.har")
    writeFileSync(file, har(good).slice(0, 40))
    const { code, stderr } = await cli("--origin", "http://127.0.0.1:1", "--cache-dir", work.path, "--replay", file)
    expect(code).toBe(2)
    expect(stderr).toMatch(
      new RegExp(`^caching-proxy: --replay ${file.replaceAll(".", "\\.")} cannot be used: it is not JSON, or is cut short .*\\n$`),
    )
  })
})

// ───────────────────────────── under Node ─────────────────────────────

describe.skipIf(FAST_RUN)("under Node (dist/cli.js)", () => {
  beforeAll(() => buildNodeBundle(), 60_000)

  test("a recording killed with SIGKILL replays offline byte for byte", async () => {
    await using origin = startApiOrigin()
    using work = ownedDir()
    const recording = join(work.path, "r.har")
    const recorder = await startCli([
      ...NODE_BUNDLE,
      "--port",
      "0",
      "--origin",
      origin.url,
      "--cache-dir",
      join(work.path, "c"),
      "--record",
      recording,
    ])
    const original = await seen(`${recorder.url}binary`, {})
    await eventually(() => entriesOf(recording).length === 1)
    recorder.child.kill("SIGKILL")
    await recorder.child.exited
    const replaying = await startCli([
      ...NODE_BUNDLE,
      "--port",
      "0",
      "--origin",
      origin.url,
      "--cache-dir",
      join(work.path, "r"),
      "--replay",
      recording,
      "--offline",
    ])
    const replayed = await seen(`${replaying.url}binary`, {})
    expect(replayed.body).toEqual(BINARY)
    expect(originFields(replayed.headers)).toEqual(originFields(original.headers))
    expect((await fetch(`${replaying.url}text`)).status).toBe(504)
    await replaying[Symbol.asyncDispose]()
    expect(origin.requests.length).toBe(1)
  })
})

// ───────────────────────────── crash safety ─────────────────────────────

describe("--record survives its proxy's end", () => {
  for (const signal of ["SIGTERM", "SIGKILL"] as const) {
    test(`after ${signal} the recording is a valid HAR of every entry completed`, async () => {
      await using origin = startApiOrigin()
      using work = ownedDir()
      const recording = join(work.path, "r.har")
      const running = await proxy(origin.url, "--cache-dir", join(work.path, "cache"), "--record", recording, "--share-cookies")
      await (await fetch(`${running.url}text`)).arrayBuffer()
      await (await fetch(`${running.url}binary`)).arrayBuffer()
      await eventually(() => entriesOf(recording).length === 2)
      // SIGTERM: the answers given are all recorded before the proxy exits. SIGKILL: killed while
      // more are on their way, whatever was completed stays readable.
      const more = Promise.all(
        ["gzip", "gone", "api/data"].map((path) =>
          fetch(running.url + path).then(
            (r) => r.arrayBuffer(),
            () => undefined,
          ),
        ),
      )
      if (signal === "SIGTERM") await more
      await running.stop(signal)
      await more
      const document = JSON.parse(readFileSync(recording, "utf8"))
      await harValidator.har(document)
      expect(document.log.entries.length).toBeGreaterThanOrEqual(signal === "SIGTERM" ? 5 : 2)
      expect(document.log.entries.slice(0, 2).map((entry: { request: { url: string } }) => entry.request.url)).toEqual([
        `${origin.url}text`,
        `${origin.url}binary`,
      ])
    })
  }
})
