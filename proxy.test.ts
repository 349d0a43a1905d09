/**
 * caching-proxy as a user runs it, end to end: the command line (flags, environment, --help,
 * --version, signals), a cache that outlives the process, and the same answers from the CLI under
 * Bun and under Node. A real origin on port 0, the real proxy as a child process.
 */
import { afterEach, beforeAll, describe, expect, setSystemTime, test } from "bun:test"
import { existsSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { gzipSync } from "node:zlib"
import {
  answer,
  buildNodeBundle,
  CLI,
  endToEnd,
  eventually,
  expectedVersion,
  FAST_RUN,
  generatedBody,
  get,
  KB,
  NO_CLONE,
  NODE_BUNDLE,
  ownedDir,
  PACKAGE_VERSION,
  portOf,
  ROOT,
  RUNTIMES,
  rawRequest,
  runCli,
  startCli,
  startCliProxy,
  startOrigin,
  startProxy,
  startRawOrigin,
  storedFiles,
} from "./proxy/test.fixture.ts"

// Every test starts on the real clock, whatever the one before did with it.
afterEach(() => setSystemTime())

describe("CLI", () => {
  beforeAll(buildNodeBundle, 60_000)

  test.each([
    [["--port", "abc", "--origin", "http://127.0.0.1:1"], '--port must be 0-65535 (got "abc")'],
    [["--port", "70000", "--origin", "http://127.0.0.1:1"], "--port must be 0-65535"],
    [["--port", "--origin", "http://127.0.0.1:1"], "--port"],
    [[], "--origin is required"],
    [["--origin", "not a url"], "--origin must be an http or https URL"],
    [["--origin", "ftp://example.com"], "--origin must be an http or https URL"],
    [["--origin", "http://127.0.0.1:1", "--bogus"], 'unknown flag "--bogus"'],
    [["--origin", "http://127.0.0.1:1", "stray"], 'unexpected argument "stray"'],
    [["--origin", "http://127.0.0.1:1", "--ttl=-5"], "--ttl must be a number of seconds"],
    [["--origin", "http://127.0.0.1:1", "--max-size", "lots"], "--max-size must be a size"],
    [["--origin", "http://127.0.0.1:1", "--max-variants", "0"], '--max-variants must be 1-1000000 (got "0")'],
    [["--origin", "http://127.0.0.1:1", "--max-variants", "many"], '--max-variants must be 1-1000000 (got "many")'],
    [["--origin", "http://127.0.0.1:1", "--timeout", "0"], "--timeout must be a number of seconds, more than 0"],
    [["--origin", "http://127.0.0.1:1", "--no-such=1"], 'unknown flag "--no-such=1"'],
    [["--port", "1", "--port", "2", "--origin", "http://127.0.0.1:1"], "--port is given more than once"],
    // An empty fragment or query would be glued to every request path.
    [["--origin", "http://127.0.0.1:1/#"], '--origin must not have a query, fragment or credentials (got "http://127.0.0.1:1/#")'],
    [["--origin", "http://127.0.0.1:1/?"], '--origin must not have a query, fragment or credentials (got "http://127.0.0.1:1/?")'],
    // Past 2^31-1 ms, timers fire at once: every request would be a 504.
    [["--origin", "http://127.0.0.1:1", "--timeout", "2147484"], '--timeout must be at most 2147483 seconds (got "2147484")'],
    [["--origin", "http://127.0.0.1:1", "--cache-dir", join(ROOT, "package.json", "cache")], "package.json is a file, not a directory"],
    [
      ["--origin", "http://127.0.0.1:1", "--cache-dir", "/sys/caching-proxy-cache"],
      "--cache-dir /sys/caching-proxy-cache cannot be used: permission denied",
    ],
    [["--origin", "http://127.0.0.1:1", "--public-url", "cdn.example.com"], "--public-url must be an http or https URL with no path"],
    [["--origin", "http://127.0.0.1:1", "--public-url", "https://cdn.example.com/app"], "--public-url must be an http or https URL"],
    [["--origin", "http://127.0.0.1:1", "--log-format", "xml"], '--log-format must be text or json (got "xml")'],
  ])("%j is refused with one line and exit code 2", async (args, message) => {
    const { stdout, stderr, code } = await runCli([...CLI, ...args])
    expect(code).toBe(2)
    expect(stderr).toContain(message)
    expect(stderr.trim().split("\n")).toHaveLength(1)
    expect(stderr).not.toContain("    at ")
    expect(stdout).toBe("")
  })

  test.each(RUNTIMES)(
    "%s: a --cache-dir no directory can be made in (/proc/1/nope) is refused with one line and exit code 2",
    async (_, command) => {
      const { stdout, stderr, code } = await runCli([...command, "--origin", "http://127.0.0.1:1", "--cache-dir", "/proc/1/nope"])
      expect(code).toBe(2)
      expect(stderr).toMatch(/^caching-proxy: --cache-dir \/proc\/1\/nope cannot be used: .*ENOENT/)
      expect(stderr.trim().split("\n")).toHaveLength(1)
      expect(stdout).toBe("")
    },
  )

  test("--help lists every flag with its environment variable in 80 columns and exits 0; --version prints the version", async () => {
    const help = await runCli([...CLI, "--help"])
    expect(help.code).toBe(0)
    expect(help.stdout).not.toContain("\x1b[") // no colour codes into a pipe
    expect(help.stdout.split("\n").filter((line) => line.length > 80)).toEqual([])
    expect(help.stdout).toContain("--clear-cache")
    expect(help.stdout).not.toContain("CACHING_PROXY_CLEAR_CACHE")
    for (const flag of [
      "--port",
      "--origin",
      "--public-url",
      "--trust-forwarded",
      "--cache-dir",
      "--ttl",
      "--timeout",
      "--quiet",
      "--memory-size",
      "--max-size",
      "--max-entry-size",
      "--offline",
      "--force-ttl",
      "--ignore-query",
      "--share-cookies",
    ]) {
      // Each flag's block names its variable before the next flag's begins.
      const block = help.stdout.slice(help.stdout.indexOf(`  ${flag}`)).split(/\n {2}--/)[0]
      expect(block).toContain(`env: CACHING_PROXY_${flag.slice(2).toUpperCase().replaceAll("-", "_")}`)
    }
    const version = await runCli([...CLI, "--version"])
    expect(version.code).toBe(0)
    expect(version.stdout).toBe(await expectedVersion())
  })

  test("--version from source, outside a clone, says the commit is unknown", async () => {
    const version = await runCli([...CLI, "--version"], undefined, NO_CLONE)
    expect(version.stdout).toBe(`caching-proxy ${PACKAGE_VERSION} (commit unknown)\n`)
  })

  test.each([
    ["example.invalid", "--host example.invalid cannot be resolved to an address"],
    // TEST-NET-1 (RFC 5737): an address no machine here has.
    ["192.0.2.1", "--host 192.0.2.1 is not an address of this machine"],
  ])("--host %s is refused as a bad host, not a busy port", async (host, message) => {
    using dir = ownedDir()
    const { stderr, code } = await runCli([
      ...CLI,
      "--origin",
      "http://127.0.0.1:1",
      "--port",
      "0",
      "--host",
      host,
      "--cache-dir",
      dir.path,
    ])
    expect(code).toBe(2)
    expect(stderr.trim()).toBe(`caching-proxy: ${message}`)
  })

  test.each([
    [{ CACHING_PROXY_PORT: "abc" }, 'CACHING_PROXY_PORT must be 0-65535 (got "abc")'],
    [{ CACHING_PROXY_MAX_SIZE: "lots" }, 'CACHING_PROXY_MAX_SIZE must be a size such as 1048576, 64M or 1G (got "lots")'],
    [{ CACHING_PROXY_QUIET: "maybe" }, 'CACHING_PROXY_QUIET must be 1, true, yes, 0, false or no (got "maybe")'],
    // An action left in a service's environment would clear the cache and exit on every start.
    [{ CACHING_PROXY_CLEAR_CACHE: "1" }, "CACHING_PROXY_CLEAR_CACHE is not read: give --clear-cache on the command line"],
  ])("%j is refused with one line naming the variable, exit code 2", async (env, message) => {
    using dir = ownedDir()
    const { stderr, code } = await runCli([...CLI, "--origin", "http://127.0.0.1:1", "--cache-dir", dir.path], undefined, env)
    expect(code).toBe(2)
    expect(stderr.trim()).toBe(`caching-proxy: ${message}`)
  })

  test("an IPv6 address is bracketed in the start line", async () => {
    await using origin = startOrigin(() => new Response("x"))
    using dir = ownedDir()
    await using proxy = await startCli([...CLI, "--port", "0", "--host", "::1", "--origin", origin.url, "--cache-dir", dir.path])
    const printed = /listening on (\S+),/.exec(proxy.lines[0]!)?.[1]
    expect(printed).toBe(`http://[::1]:${portOf(proxy.url)}`)
    expect(new URL(printed!).hostname).toBe("[::1]")
  })

  test.skipIf(FAST_RUN)(
    "a request still in flight after the 5 s grace period is cut, and the proxy says so",
    async () => {
      await using origin = startOrigin(() => new Promise<Response>(() => {})) // never answers
      using dir = ownedDir()
      const proxy = await startCli([...CLI, "--port", "0", "--origin", origin.url, "--cache-dir", dir.path])
      const pending = get(`${proxy.url}hangs`).then(
        () => "answered",
        () => "cut",
      )
      await eventually(() => origin.count("/hangs") === 1)
      proxy.child.kill("SIGTERM")
      expect(await proxy.child.exited).toBe(0)
      expect(await pending).toBe("cut")
      expect(await new Response(proxy.child.stderr).text()).toMatch(
        /^\d{4}-\d\d-\d\dT[\d:.]+Z caching-proxy: 5 s after the signal, cutting 1 request\(s\) still in flight\n$/,
      )
      await eventually(() => proxy.lines.some((line) => line.includes("stopped on")))
      expect(proxy.lines.filter(Boolean).at(-1)).toMatch(/ caching-proxy: stopped on SIGTERM in 5\d\d\d ms, 1 request\(s\) cut$/)
    },
    15_000,
  )

  test("a port already in use: one line, exit code 1", async () => {
    await using origin = startOrigin(() => new Response("x"))
    await using first = await startProxy({ origin: origin.url })
    using dir = ownedDir()
    const { stderr, code } = await runCli([...CLI, "--port", String(portOf(first.url)), "--origin", origin.url, "--cache-dir", dir.path])
    expect(code).toBe(1)
    expect(stderr.trim()).toMatch(/^\d{4}-\d\d-\d\dT[\d:.]+Z caching-proxy: port \d+ on 127.0.0.1 is already in use$/)
  })

  test("says where it listens, what it forwards to and where the cache is; logs one line per request", async () => {
    await using origin = startOrigin(() => new Response("x", { headers: { "cache-control": "max-age=60" } }))
    using dir = ownedDir()
    await using proxy = await startCli([...CLI, "--port", "0", "--origin", origin.url, "--cache-dir", dir.path])
    expect(proxy.lines[0]).toMatch(
      new RegExp(`listening on http://127.0.0.1:\\d+, forwarding to ${origin.url.replace(/\/$/, "")}, cache in ${dir.path}`),
    )
    await (await get(`${proxy.url}logged?x=1`)).text()
    await (await get(`${proxy.url}logged?x=1`)).text()
    await eventually(() => proxy.lines.filter((l) => l.includes(" GET /logged?x=1 ")).length === 2)
    const time = "\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z"
    expect(proxy.lines[0]).toMatch(new RegExp(`^${time} caching-proxy: listening on `))
    // The client's address first; the origin's time only where it was asked.
    const logged = (rest: string) =>
      proxy.lines.filter((l) => new RegExp(`^${time} 127\\.0\\.0\\.1 GET /logged\\?x=1 200 ${rest}$`).test(l))
    expect(logged("miss \\d+\\.\\dms 1B origin \\d+\\.\\dms")).toHaveLength(1)
    expect(logged("hit \\d+\\.\\dms 1B")).toHaveLength(1)
  })

  test("CACHING_PROXY_* environment variables stand in for flags the command line leaves out", async () => {
    await using origin = startOrigin(() => new Response("from env"))
    using cacheDir = ownedDir()
    await using proxy = await startCli([...CLI, "--port", "0"], {
      CACHING_PROXY_ORIGIN: origin.url,
      CACHING_PROXY_CACHE_DIR: cacheDir.path,
      CACHING_PROXY_PORT: "not used: --port is on the command line",
      CACHING_PROXY_QUIET: "1",
    })
    expect(proxy.lines[0]).toContain(`cache in ${cacheDir.path}`)
    expect(await (await get(`${proxy.url}env`)).text()).toBe("from env")
    await Bun.sleep(200) // time for a log line to arrive, were one written
    expect(proxy.lines.filter((l) => l.includes("/env"))).toHaveLength(0)
  })

  test("--quiet logs no requests", async () => {
    await using origin = startOrigin(() => new Response("x"))
    using dir = ownedDir()
    await using proxy = await startCli([...CLI, "--port", "0", "--quiet", "--origin", origin.url, "--cache-dir", dir.path])
    await (await get(`${proxy.url}q`)).text()
    await Bun.sleep(200) // time for a log line to arrive, were one written
    expect(proxy.lines.filter((l) => l.includes("/q"))).toHaveLength(0)
  })

  test("the cache lives in $XDG_CACHE_HOME/caching-proxy by default", async () => {
    await using origin = startOrigin(() => new Response("x"))
    using xdg = ownedDir()
    await using proxy = await startCli([...CLI, "--port", "0", "--origin", origin.url], { XDG_CACHE_HOME: xdg.path })
    expect(proxy.lines[0]).toContain(`cache in ${join(xdg.path, "caching-proxy")}`)
    await (await get(`${proxy.url}xdg`)).text()
    expect(existsSync(join(xdg.path, "caching-proxy", "v1"))).toBe(true)
  })

  test("SIGTERM: requests in flight finish, then exit 0", async () => {
    await using origin = startOrigin(async () => {
      await Bun.sleep(500)
      return new Response("slow but whole")
    })
    using dir = ownedDir()
    const proxy = await startCli([...CLI, "--port", "0", "--origin", origin.url, "--cache-dir", dir.path])
    const pending = get(`${proxy.url}slow`)
    await Bun.sleep(150)
    proxy.child.kill("SIGTERM")
    const response = await pending
    expect(await response.text()).toBe("slow but whole")
    expect(await proxy.child.exited).toBe(0)
  })
})

describe("a cache that outlives the process: MISS, HIT, HIT after a restart, MISS after --clear-cache", () => {
  test("under Bun, from source", () => endToEnd(CLI))

  test("--clear-cache does not break a proxy running on the same cache", async () => {
    await using origin = startOrigin((_, n) => new Response(`v${n}`, { headers: { "cache-control": "max-age=600" } }))
    using cacheDir = ownedDir()
    await using proxy = await startCli([...CLI, "--port", "0", "--origin", origin.url, "--cache-dir", cacheDir.path])
    expect(await (await get(`${proxy.url}c`)).text()).toBe("v1")
    expect((await runCli([...CLI, "--clear-cache", "--cache-dir", cacheDir.path])).code).toBe(0)
    await Bun.sleep(1500) // the running proxy looks for a clear once a second
    const afterClear = await get(`${proxy.url}c`)
    expect(await afterClear.text()).toBe("v2")
    expect(afterClear.headers.get("x-cache")).toBe("MISS")
    const hit = await get(`${proxy.url}c`)
    expect(await hit.text()).toBe("v2")
    expect(hit.headers.get("x-cache")).toBe("HIT")
  })

  describe("under Node (the bundle npm installs)", () => {
    beforeAll(buildNodeBundle, 60_000)

    test("MISS, HIT, restart, clear", () => endToEnd(NODE_BUNDLE))

    test("--version: the version and commit it was built from", async () => {
      expect((await runCli([...NODE_BUNDLE, "--version"], undefined, NO_CLONE)).stdout).toBe(await expectedVersion())
    })

    test("bytes, Set-Cookie and bad flags behave as under Bun", async () => {
      const gzipped = gzipSync("node leg ".repeat(200))
      await using origin = startOrigin(() => {
        const headers = new Headers({ "content-encoding": "gzip", "cache-control": "max-age=60" })
        headers.append("set-cookie", "a=1")
        headers.append("set-cookie", "b=2")
        return new Response(gzipped, { headers })
      })
      using dir = ownedDir()
      await using proxy = await startCli([
        ...NODE_BUNDLE,
        "--port",
        "0",
        "--share-cookies",
        "--origin",
        origin.url,
        "--cache-dir",
        dir.path,
      ])
      for (const expected of ["MISS", "HIT"]) {
        const response = await fetch(`${proxy.url}gz`, { decompress: false } as RequestInit)
        expect(response.headers.get("x-cache")).toBe(expected)
        expect(response.headers.getSetCookie()).toEqual(["a=1", "b=2"])
        expect(new Uint8Array(await response.arrayBuffer())).toEqual(new Uint8Array(gzipped))
      }
      const bad = await runCli([...NODE_BUNDLE, "--port", "x", "--origin", origin.url])
      expect(bad.code).toBe(2)
      expect(bad.stderr.trim()).toBe('caching-proxy: --port must be 0-65535 (got "x")')
    })
  })
})

describe("Set-Cookie through the CLI (RFC 9111 §3, a deliberate deviation)", () => {
  test("not stored by default; --share-cookies and CACHING_PROXY_SHARE_COOKIES store it and serve it to everyone", async () => {
    await using origin = startOrigin((_, n) => {
      const headers = new Headers({ "cache-control": "max-age=60" })
      headers.append("set-cookie", `session=${n}`)
      headers.append("set-cookie", "theme=dark")
      return new Response(`v${n}`, { headers })
    })
    using dir = ownedDir()
    const flags = ["--port", "0", "--origin", origin.url]
    const ask = async (url: string) => {
      const res = await fetch(url)
      return { body: await res.text(), xCache: res.headers.get("x-cache"), cookies: res.headers.getSetCookie() }
    }
    {
      await using strict = await startCli([...CLI, ...flags, "--cache-dir", join(dir.path, "strict")])
      expect(await ask(`${strict.url}c`)).toEqual({ body: "v1", xCache: "MISS", cookies: ["session=1", "theme=dark"] })
      expect(await ask(`${strict.url}c`)).toEqual({ body: "v2", xCache: "MISS", cookies: ["session=2", "theme=dark"] })
    }
    for (const [how, extra, env] of [
      ["flag", ["--share-cookies"], {}],
      ["env", [], { CACHING_PROXY_SHARE_COOKIES: "true" }],
    ] as const) {
      await using sharing = await startCli([...CLI, ...flags, ...extra, "--cache-dir", join(dir.path, how)], env)
      const first = await ask(`${sharing.url}c`)
      expect(first.xCache).toBe("MISS")
      expect(await ask(`${sharing.url}c`)).toEqual({ ...first, xCache: "HIT" })
    }
  })
})

describe("targeted fields, HTTP dates, Vary normalisation and Set-Cookie under Bun and Node alike", () => {
  beforeAll(buildNodeBundle, 60_000)

  test.each(RUNTIMES)("%s: the same answers from the CLI", async (_, command) => {
    const inAnHour = new Date(Date.now() + 3600_000).toUTCString()
    const cases: Record<string, Record<string, string>> = {
      "/targeted": { "cache-control": "no-store", "cdn-cache-control": "no-store", "mine-cache-control": "max-age=60" },
      "/invalid-targeted": { "cache-control": "max-age=60", "mine-cache-control": "max-age=60,", "cdn-cache-control": "no-store" },
      "/utc-expires": { expires: inAnHour.replace("GMT", "UTC") },
      "/gmt-expires": { expires: inAnHour },
      "/vary": { "cache-control": "max-age=60", vary: "Accept-Encoding" },
      "/cookie": { "cache-control": "max-age=60", "set-cookie": "id=1" },
    }
    await using origin = startOrigin(
      (req, n) => new Response(`v${n}`, { headers: { date: new Date().toUTCString(), ...cases[new URL(req.url).pathname] } }),
    )
    await using proxy = await startCliProxy(command, origin.url, ["--ttl", "0"], {
      CACHING_PROXY_TARGETED_CACHE_CONTROL: "Mine-Cache-Control",
    })
    const twice = async (path: string, headers: [Record<string, string>, Record<string, string>] = [{}, {}]) => {
      await (await get(`${proxy.url}${path}`, headers[0])).text()
      return (await get(`${proxy.url}${path}`, headers[1])).headers.get("x-cache")
    }
    expect({
      targeted: await twice("targeted"),
      invalidTargeted: await twice("invalid-targeted"),
      utcExpires: await twice("utc-expires"),
      gmtExpires: await twice("gmt-expires"),
      vary: await twice("vary", [{ "accept-encoding": "gzip, br" }, { "accept-encoding": "BR, gzip;q=1" }]),
      cookie: await twice("cookie"),
    }).toEqual({ targeted: "HIT", invalidTargeted: "MISS", utcExpires: "MISS", gmtExpires: "HIT", vary: "HIT", cookie: "MISS" })
  })
})

describe("runtime hygiene: the same answers, no warnings, under Bun and Node", () => {
  beforeAll(buildNodeBundle, 60_000)

  const ODD_STATUSES = RUNTIMES.flatMap(([runtime, command]) => ["099", "600", "999"].map((status) => [runtime, status, command] as const))

  /** A response's head as it came on the wire, less the fields each server writes itself; Age and ttl as "N". */
  async function hitHead(port: number, method: string, path: string, extra = ""): Promise<string[]> {
    const raw = await rawRequest(port, `${method} ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n${extra}\r\n`)
    const [statusLine = "", ...fields] = (raw.split("\r\n\r\n")[0] ?? "").split("\r\n")
    const own = /^(date|connection|keep-alive):/i
    const named = fields.filter((field) => !own.test(field)).map((field) => field.replace(/^[^:]+/, (name) => name.toLowerCase()))
    // Sorted by name, each name's lines kept in the order they came.
    const sorted = named
      .map((field, i) => [field, i] as const)
      .sort(([a, i], [b, j]) => a.split(":")[0]!.localeCompare(b.split(":")[0]!) || i - j)
    return [statusLine, ...sorted.map(([field]) => field.replace(/^(age: )\d+/, "$1N").replace(/ttl=\d+/, "ttl=N"))]
  }

  test("a hit's head from memory is the same under Node as under Bun: two Set-Cookie, Age, Cache-Status, Content-Length, HEAD and Range", async () => {
    // No Content-Type: node:http's adapter would add its own to a body that has none.
    const fields = [
      "Cache-Control: max-age=60",
      "Link: </a.css>; rel=preload",
      "Link: </b.js>; rel=preload",
      "Set-Cookie: a=1",
      "Set-Cookie: b=2",
    ]
    await using origin = await startRawOrigin((socket) =>
      socket.end(`HTTP/1.1 200 OK\r\n${fields.join("\r\n")}\r\nContent-Length: 1000\r\n\r\n${"x".repeat(1000)}`),
    )
    const heads: Record<string, string[][]> = {}
    for (const [runtime, command] of RUNTIMES) {
      await using proxy = await startCliProxy(command, origin.url, ["--share-cookies"])
      await (await get(`${proxy.url}h`)).arrayBuffer()
      heads[runtime] = [
        await hitHead(proxy.port, "GET", "/h"),
        await hitHead(proxy.port, "HEAD", "/h"),
        await hitHead(proxy.port, "GET", "/h", "Range: bytes=0-9\r\n"),
      ]
    }
    // Bun.serve writes "Content-Type: application/octet-stream" for bytes that have none (a known
    // difference, docs/known-limits.md); every other line is the same.
    const withoutType = (head: string[]) => head.filter((field) => !field.startsWith("content-type:"))
    expect(heads.Node).toEqual(heads.Bun!.map(withoutType))
    expect(heads.Node?.[0]).toEqual([
      "HTTP/1.1 200 OK",
      "age: N",
      "cache-control: max-age=60",
      "cache-status: caching-proxy; hit; ttl=N",
      "content-length: 1000",
      "link: </a.css>; rel=preload, </b.js>; rel=preload",
      "set-cookie: a=1",
      "set-cookie: b=2",
      "via: 1.1 caching-proxy",
      "x-cache: HIT",
    ])
  })

  test.each(ODD_STATUSES)(
    "%s: RFC 9110 §15: a status %s, outside 100-599, is a 502 with one line, and nothing on stderr",
    async (_, status, command) => {
      await using origin = await startRawOrigin((socket) =>
        socket.end(`HTTP/1.1 ${status} Odd\r\nContent-Length: 2\r\nCache-Control: max-age=60\r\n\r\nhi`),
      )
      await using proxy = await startCliProxy(command, origin.url)
      for (let i = 0; i < 2; i++)
        expect(await answer(`${proxy.url}odd`)).toMatchObject({ status: 502, body: expect.stringMatching(/^[^<\n]+\n$/) })
      expect(await proxy.stderr()).toBe("")
    },
  )

  test("Node: no file handle is left for garbage collection to close (DEP0137), whatever becomes of a body read from disk", async () => {
    using dir = ownedDir()
    // Collects garbage every 50 ms: a FileHandle left open would be closed by it, with the warning.
    const collector = join(dir.path, "collect.cjs")
    writeFileSync(collector, "setInterval(() => globalThis.gc(), 50).unref()\n")
    await using origin = startOrigin((req) =>
      req.headers.get("if-none-match") === '"big"'
        ? new Response(null, { status: 304, headers: { etag: '"big"' } })
        : new Response(generatedBody(6, 256 * KB), { headers: { "cache-control": "max-age=600", etag: '"big"' } }),
    )
    await using proxy = await startCliProxy(["node", "--expose-gc", "--require", collector, ...NODE_BUNDLE.slice(1)], origin.url)
    await (await get(`${proxy.url}big`)).arrayBuffer()
    for (let i = 0; i < 2; i++) {
      await (await get(`${proxy.url}big`)).arrayBuffer() // read whole
      await (await get(`${proxy.url}big`, { range: "bytes=1000-300000" })).arrayBuffer() // a slice
      await (await get(`${proxy.url}big`, { range: "bytes=99999999-" })).arrayBuffer() // a 416: never read
      await fetch(`${proxy.url}big`, { method: "HEAD" }) // no body sent
      await (await get(`${proxy.url}big`, { "if-none-match": '"big"' })).arrayBuffer() // a 304
      await (await get(`${proxy.url}big`, { "cache-control": "no-cache" })).arrayBuffer() // revalidated, then read
      const cut = new AbortController()
      const reader = (await fetch(`${proxy.url}big`, { signal: cut.signal })).body!.getReader()
      await reader.read()
      cut.abort() // the client leaves mid-body
      await reader.cancel().catch(() => undefined)
    }
    await Bun.sleep(300) // a few collections
    expect(await proxy.stderr()).toBe("")
  }, 60_000)

  test.each(RUNTIMES)(
    "%s: RFC 9111 §4.4: invalidations racing writes to the same URL report no failure and leave no temporary file",
    async (_, command) => {
      // Stale at once, with a validator: a GET stores a new entry (a put) or refreshes the one
      // there (a 304: an update of its meta), while a POST deletes it.
      await using origin = startOrigin((req) => {
        if (req.method !== "GET") return new Response("done")
        if (req.headers.has("if-none-match")) return new Response(null, { status: 304, headers: { etag: '"r"' } })
        return new Response(generatedBody(20, 4 * KB, { cancelled: false }, 2), { headers: { "cache-control": "max-age=0", etag: '"r"' } })
      })
      using dir = ownedDir()
      await using proxy = await startCli([...command, "--port", "0", "--origin", origin.url, "--cache-dir", dir.path])
      // GETs whose bodies stream into the store while POSTs to the same URL delete it.
      for (let round = 0; round < 10; round++) {
        await Promise.all(
          Array.from({ length: 20 }, async (_, i) => {
            const stored = get(`${proxy.url}raced`).then((res) => res.arrayBuffer())
            await Bun.sleep(i)
            await (await fetch(`${proxy.url}raced`, { method: "POST", body: "x" })).text()
            await stored
          }),
        )
      }
      expect(storedFiles(dir.path).filter((f) => f.path.endsWith(".tmp"))).toEqual([])
      process.kill(-proxy.child.pid, "SIGTERM")
      await proxy.child.exited
      expect(await new Response(proxy.child.stderr).text()).toBe("")
    },
  )
})
