/**
 * --workers: real processes. The CLI is started with `--workers 2` under Bun (from source), Node
 * (the bundle) and as the standalone executable (which starts its workers from itself), and what
 * its workers answer, log and do when killed is observed from outside.
 */
import { beforeAll, describe, expect, test } from "bun:test"
import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs"
import { request } from "node:http"
import { join } from "node:path"
import {
  buildNodeBundle,
  CLI,
  eventually,
  metaFiles,
  NODE_BUNDLE,
  npmRun,
  ownedDir,
  ROOT,
  startOrigin,
  startRedis,
} from "./test.fixture.ts"

const RUNTIMES: [string, string[]][] = [
  ["Bun", CLI],
  ["Node", NODE_BUNDLE],
  ["the executable", [join(ROOT, "dist", "caching-proxy")]],
]
const LISTENING = /listening on http:\/\/127\.0\.0\.1:(\d+)[^"\n]*, 2 workers/

// The bundle npm ships, for Node, and the executable for this machine.
beforeAll(async () => {
  await buildNodeBundle()
  await npmRun("build")
}, 120_000)

/** Lines as a stream gives them, read on in the background into `into`. */
function readLines(stream: ReadableStream<Uint8Array>, into: string[]): void {
  const decoder = new TextDecoder()
  let partial = ""
  void (async () => {
    for await (const chunk of stream) {
      const text = partial + decoder.decode(chunk, { stream: true })
      const lines = text.split("\n")
      partial = lines.pop() ?? ""
      into.push(...lines)
    }
  })()
}

/** The processes `pid` started: its workers. */
function childrenOf(pid: number): number[] {
  const text = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim()
  return text === "" ? [] : text.split(" ").map(Number)
}

/** Whether a process runs (an exited one that nobody reaped yet does not). */
function isRunning(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"))
  } catch {
    return false // no such process
  }
}

/** The CLI with --workers 2 on port 0, its own cache directory unless given one; resolves once it says it listens. */
async function startWorkers(command: string[], origin: string, flags: string[] = []) {
  const dir = ownedDir()
  const cacheDir = flags.includes("--cache-dir") ? [] : ["--cache-dir", dir.path]
  const child = Bun.spawn([...command, "--port", "0", "--origin", origin, "--workers", "2", ...cacheDir, ...flags], {
    stdout: "pipe",
    stderr: "pipe",
  })
  const lines: string[] = []
  const errors: string[] = []
  readLines(child.stdout, lines)
  readLines(child.stderr, errors)
  const started = Promise.race([
    eventually(() => lines.some((line) => LISTENING.test(line)), 15_000),
    child.exited.then((code) => Promise.reject(new Error(`the proxy exited with ${code}: ${errors.join("\n")}`))),
  ])
  await started
  const port = Number(LISTENING.exec(lines.join("\n"))?.[1])
  return {
    url: `http://127.0.0.1:${port}/`,
    child,
    /** Access lines and the start line, as written so far. */
    lines,
    /** What it wrote on stderr so far. */
    errors,
    workers: () => childrenOf(child.pid),
    [Symbol.asyncDispose]: async () => {
      child.kill("SIGKILL")
      await child.exited
      dir[Symbol.dispose]()
    },
  }
}

/** A GET on a connection of its own, so that connections, and so workers, differ from one request to the next. */
function freshGet(url: string): Promise<{ status: number; body: string; headers: Record<string, string | string[] | undefined> }> {
  return new Promise((resolve, reject) => {
    const sent = request(url, { agent: false, timeout: 5000 }, (response) => {
      let body = ""
      response.setEncoding("utf8")
      response.on("data", (chunk) => (body += chunk))
      response.on("end", () => resolve({ status: response.statusCode ?? 0, body, headers: response.headers }))
    })
    sent.on("error", reject)
    sent.on("timeout", () => sent.destroy(new Error(`no answer from ${url} within 5 s`)))
    sent.end()
  })
}

/** The worker numbers named by the access lines. */
function answeredBy(lines: string[]): Set<string> {
  return new Set(lines.flatMap((line) => /GET \S+ .* worker (\d+)$/.exec(line)?.[1] ?? []))
}

describe.each(RUNTIMES)("--workers 2 under %s", (_, cli) => {
  test("two worker processes answer on the one port, each access line naming its worker", async () => {
    await using origin = startOrigin(() => new Response("a", { headers: { "cache-control": "max-age=60" } }))
    await using proxy = await startWorkers(cli, origin.url)
    expect(proxy.workers()).toHaveLength(2)
    for (let i = 0; i < 30; i++) expect((await freshGet(`${proxy.url}a`)).status).toBe(200)
    await eventually(() => answeredBy(proxy.lines).size === 2)
    expect([...answeredBy(proxy.lines)].sort()).toEqual(["1", "2"])
  })

  test("a worker killed with SIGKILL is replaced, and the other answers meanwhile", async () => {
    await using origin = startOrigin(() => new Response("a", { headers: { "cache-control": "max-age=60" } }))
    await using proxy = await startWorkers(cli, origin.url)
    const [killed, kept] = proxy.workers() as [number, number]
    process.kill(killed, "SIGKILL")
    await eventually(() => !proxy.workers().includes(killed))
    for (let i = 0; i < 10; i++) expect((await freshGet(`${proxy.url}a`)).status).toBe(200)
    await eventually(() => proxy.workers().length === 2)
    expect(proxy.workers()).toContain(kept)
    expect(proxy.errors.join("\n")).toMatch(new RegExp(`worker \\d \\(pid ${killed}\\) exited \\(SIGKILL\\); starting another in 0.1 s`))
  })

  test("SIGKILL of the primary leaves no worker running 2 s later", async () => {
    await using origin = startOrigin(() => new Response("a"))
    await using proxy = await startWorkers(cli, origin.url)
    const workers = proxy.workers()
    expect(workers).toHaveLength(2)
    proxy.child.kill("SIGKILL")
    await eventually(() => !workers.some(isRunning), 2000)
  })

  test("SIGTERM drains: a request in flight is answered whole, then every process exits 0", async () => {
    await using origin = startOrigin(async () => {
      await Bun.sleep(500)
      return new Response("slow")
    })
    await using proxy = await startWorkers(cli, origin.url)
    const workers = proxy.workers()
    const inFlight = freshGet(`${proxy.url}slow`)
    await eventually(() => origin.requests.length === 1)
    proxy.child.kill("SIGTERM")
    expect(await inFlight).toMatchObject({ status: 200, body: "slow" })
    expect(await proxy.child.exited).toBe(0)
    expect(workers.filter(isRunning)).toEqual([])
  })
})

test("--log-format json: one start line and one shutdown line for the group, from the primary; each access line names its client and worker, none lost at exit", async () => {
  await using origin = startOrigin(() => new Response("a", { headers: { "cache-control": "max-age=60" } }))
  await using proxy = await startWorkers(CLI, origin.url, ["--log-format", "json"])
  for (let i = 0; i < 30; i++) expect((await freshGet(`${proxy.url}a`)).status).toBe(200)
  proxy.child.kill("SIGTERM")
  expect(await proxy.child.exited).toBe(0)
  await eventually(() => proxy.lines.some((line) => line.includes("stopped on SIGTERM")))
  const logged = proxy.lines.filter((line) => line !== "").map((line) => JSON.parse(line) as Record<string, unknown>)
  for (const line of logged) expect(line.time).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
  expect(logged.filter(({ msg }) => String(msg).startsWith("listening on"))).toEqual([
    expect.objectContaining({ level: "info", workers: 2, url: proxy.url.slice(0, -1) }),
  ])
  const access = logged.filter(({ msg }) => msg === "access")
  expect(access).toHaveLength(30)
  expect(access[0]).toMatchObject({ method: "GET", path: "/a", client: expect.stringMatching(/127\.0\.0\.1/) })
  expect(new Set(access.map(({ worker }) => worker))).toEqual(new Set([1, 2]))
  expect(logged.filter(({ msg }) => String(msg).startsWith("stopped on"))).toEqual([
    expect.objectContaining({ level: "info", signal: "SIGTERM", cut: 0 }),
  ])
  expect(logged.at(-1)?.msg).toMatch(/^stopped on SIGTERM in \d+ ms, 0 request\(s\) cut$/)
})

test("the group's shutdown line counts the requests its workers cut after their grace period", async () => {
  await using origin = startOrigin(async () => {
    await Bun.sleep(7000)
    return new Response("too late")
  })
  await using proxy = await startWorkers(CLI, origin.url)
  // fetch, not freshGet: that gives up after 5 s, as soon as the workers' grace period ends.
  const cut = fetch(`${proxy.url}slow`)
    .then((response) => response.text())
    .catch(() => "cut")
  await eventually(() => origin.requests.length === 1)
  proxy.child.kill("SIGTERM")
  expect(await cut).toBe("cut")
  expect(await proxy.child.exited).toBe(0)
  await eventually(() => proxy.lines.some((line) => line.includes("stopped on SIGTERM")))
  expect(proxy.lines.filter((line) => line.includes("stopped on"))).toEqual([
    expect.stringMatching(/^\S+Z caching-proxy: stopped on SIGTERM in \d+ ms, 1 request\(s\) cut$/),
  ])
}, 15_000)

test("a worker that cannot listen stops the group: exit 1, saying why", async () => {
  await using origin = startOrigin(() => new Response("a"))
  using dir = ownedDir()
  // Taken without SO_REUSEPORT: no worker can share it.
  const taken = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("") })
  try {
    const child = Bun.spawn([...CLI, "--port", String(taken.port), "--origin", origin.url, "--workers", "2", "--cache-dir", dir.path], {
      stdout: "pipe",
      stderr: "pipe",
    })
    expect(await child.exited).toBe(1)
    const stderr = await new Response(child.stderr).text()
    expect(stderr).toContain(`port ${taken.port} on 127.0.0.1 is already in use`)
    expect(stderr).toContain("before listening: stopping")
  } finally {
    taken.stop(true)
  }
})

test("--workers takes a count or auto, and CACHING_PROXY_WORKERS; not with --record", async () => {
  const refused = Bun.spawn([...CLI, "--origin", "http://127.0.0.1:1", "--workers", "0"], { stdout: "pipe", stderr: "pipe" })
  expect(await refused.exited).toBe(2)
  expect(await new Response(refused.stderr).text()).toContain('--workers must be a number of processes, 1 or more, or auto (got "0")')
  const fromEnvironment = Bun.spawn([...CLI, "--origin", "http://127.0.0.1:1"], {
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, CACHING_PROXY_WORKERS: "many" },
  })
  expect(await fromEnvironment.exited).toBe(2)
  expect(await new Response(fromEnvironment.stderr).text()).toContain(
    'CACHING_PROXY_WORKERS must be a number of processes, 1 or more, or auto (got "many")',
  )
  const recording = Bun.spawn([...CLI, "--origin", "http://127.0.0.1:1", "--workers", "2", "--record", "/dev/null"], {
    stdout: "pipe",
    stderr: "pipe",
  })
  expect(await recording.exited).toBe(2)
  expect(await new Response(recording.stderr).text()).toContain("--record cannot be used with --workers (one process writes a HAR)")
})

describe("one cache directory, one owner", () => {
  test("a second proxy on a directory in use exits 2 with one line naming the holder; the first's stop frees it", async () => {
    await using origin = startOrigin(() => new Response("a"))
    using dir = ownedDir()
    const cacheDir = dir.path
    await using first = await startWorkers(CLI, origin.url, ["--cache-dir", cacheDir])
    const second = Bun.spawn([...CLI, "--port", "0", "--origin", origin.url, "--cache-dir", cacheDir], {
      stdout: "pipe",
      stderr: "pipe",
    })
    expect(await second.exited).toBe(2)
    const stderr = await new Response(second.stderr).text()
    expect(stderr.trim().split("\n")).toEqual([
      `caching-proxy: --cache-dir ${cacheDir} is in use by process ${first.child.pid} (one proxy per cache directory; if that is no caching-proxy, remove ${join(cacheDir, "lock")})`,
    ])
    first.child.kill("SIGTERM")
    expect(await first.child.exited).toBe(0)
    expect(existsSync(join(cacheDir, "lock"))).toBe(false)
  })

  test("a lock left by a process that is gone is taken over, and said so", async () => {
    await using origin = startOrigin(() => new Response("a"))
    using dir = ownedDir()
    const cacheDir = dir.path
    const gone = Bun.spawn(["true"])
    await gone.exited
    writeFileSync(join(cacheDir, "lock"), `${gone.pid}\n`)
    await using proxy = await startWorkers(CLI, origin.url, ["--cache-dir", cacheDir])
    expect(proxy.errors.join("\n")).toContain(`caching-proxy: took over ${join(cacheDir, "lock")} from process ${gone.pid}, which is gone`)
    expect(readFileSync(join(cacheDir, "lock"), "utf8")).toBe(`${proxy.child.pid}\n`)
  })
})

/** Bytes what is in a directory takes on disk, in whole blocks, directories included: what the store counts against --max-size. */
function diskBytes(dir: string): number {
  const found = Bun.spawnSync(["du", "-s", "-B1", dir]).stdout.toString()
  // The store's own root is not among what it counts.
  return Number(found.split("\t")[0]) - statSync(dir).blocks * 512
}

describe.each(RUNTIMES)("one cache for the workers under %s", (_, cli) => {
  test("after one MISS on any worker, every request on every worker is a HIT", async () => {
    await using origin = startOrigin((_, n) => new Response(`v${n}`, { headers: { "cache-control": "max-age=60" } }))
    await using proxy = await startWorkers(cli, origin.url)
    const answers = []
    for (let i = 0; i < 20; i++) answers.push(await freshGet(`${proxy.url}x`))
    expect(answers.map((answer) => answer.body)).toEqual(Array(20).fill("v1"))
    expect(answers.slice(1).map((answer) => answer.headers["x-cache"])).toEqual(Array(19).fill("HIT"))
    expect(origin.requests).toHaveLength(1)
    await eventually(() => answeredBy(proxy.lines).size === 2)
  })

  test("200 concurrent requests for one cold URL, over both workers, make one origin request", async () => {
    await using origin = startOrigin(async (_, n) => {
      await Bun.sleep(300)
      return new Response(`v${n}`, { headers: { "cache-control": "max-age=60" } })
    })
    await using proxy = await startWorkers(cli, origin.url)
    const answers = await Promise.all(Array.from({ length: 200 }, () => freshGet(`${proxy.url}cold`)))
    expect(new Set(answers.map((answer) => `${answer.status} ${answer.body}`))).toEqual(new Set(["200 v1"]))
    expect(origin.requests).toHaveLength(1)
    await eventually(() => answeredBy(proxy.lines).size === 2)
  })

  test("an invalidation on one worker (RFC 9111 §4.4) reaches every worker's memory before it is answered", async () => {
    await using origin = startOrigin((request, n) =>
      request.method === "POST" ? new Response("posted") : new Response(`v${n}`, { headers: { "cache-control": "max-age=60" } }),
    )
    await using proxy = await startWorkers(cli, origin.url)
    for (let i = 0; i < 20; i++) expect((await freshGet(`${proxy.url}page`)).body).toBe("v1")
    await eventually(() => answeredBy(proxy.lines).size === 2)
    const posted = await fetch(`${proxy.url}page`, { method: "POST", body: "x" })
    expect(await posted.text()).toBe("posted")
    const after = []
    for (let i = 0; i < 20; i++) after.push((await freshGet(`${proxy.url}page`)).body)
    expect(after).toEqual(Array(20).fill("v3"))
    expect(origin.requests.map((request) => request.method)).toEqual(["GET", "POST", "GET"])
  })

  test("--max-size bounds the directory as a whole under concurrent writes from both workers", async () => {
    const maxSize = 256 * 1024
    await using origin = startOrigin(() => new Response("x".repeat(8 * 1024), { headers: { "cache-control": "max-age=60" } }))
    using dir = ownedDir()
    const cacheDir = dir.path
    await using proxy = await startWorkers(cli, origin.url, ["--cache-dir", cacheDir, "--max-size", String(maxSize)])
    await Promise.all(Array.from({ length: 100 }, (_, i) => freshGet(`${proxy.url}entry-${i}`)))
    await eventually(() => answeredBy(proxy.lines).size === 2)
    await eventually(() => diskBytes(join(cacheDir, "v1")) <= maxSize, 10_000)
    // Evicted down to the bound, not emptied: a few 8 KiB entries (and their directories) stay.
    expect(metaFiles(cacheDir).length).toBeGreaterThanOrEqual(4)
  })
})

describe("one admin listener for the group", () => {
  const ADMIN = /admin on http:\/\/127\.0\.0\.1:(\d+)/

  /** A purge through the admin API, as its JSON body says. */
  async function purge(admin: string, body: object): Promise<number> {
    const response = await fetch(`${admin}api/purge`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    })
    expect(response.status).toBe(200)
    return ((await response.json()) as { purged: number }).purged
  }

  /** Bodies of `count` GETs of one path, each on its own connection, so both workers answer some. */
  async function bodies(url: string, count = 20): Promise<string[]> {
    const answers = []
    for (let i = 0; i < count; i++) answers.push((await freshGet(url)).body)
    return answers
  }

  test("a purge by URL, prefix or tag, hard or soft, reaches every worker's memory before it is answered", async () => {
    const versions = new Map<string, number>()
    await using origin = startOrigin((request) => {
      const path = new URL(request.url).pathname
      versions.set(path, (versions.get(path) ?? 0) + 1)
      return new Response(`${path} v${versions.get(path)}`, { headers: { "cache-control": "max-age=60", "surrogate-key": "tagged" } })
    })
    await using proxy = await startWorkers(CLI, origin.url, ["--admin-port", "0"])
    const admin = `http://127.0.0.1:${ADMIN.exec(proxy.lines.join("\n"))?.[1]}/`
    for (const [path, target] of [
      ["/by-url", { url: "/by-url" }],
      ["/under/a", { prefix: "/under/" }],
      ["/with-tag", { tag: "tagged" }],
    ] as const) {
      expect(await bodies(`${proxy.url}${path.slice(1)}`)).toEqual(Array(20).fill(`${path} v1`))
      expect(await purge(admin, target)).toBeGreaterThanOrEqual(1)
      expect(await bodies(`${proxy.url}${path.slice(1)}`)).toEqual(Array(20).fill(`${path} v2`))
    }
    // Soft: the entry turns stale everywhere, so the next request on any worker asks the origin.
    // (The purge by tag took /by-url too: it is stored again first.)
    expect(await bodies(`${proxy.url}by-url`)).toEqual(Array(20).fill("/by-url v3"))
    expect(await purge(admin, { url: "/by-url", soft: true })).toBe(1)
    expect(await bodies(`${proxy.url}by-url`)).toEqual(Array(20).fill("/by-url v4"))
    expect(answeredBy(proxy.lines)).toEqual(new Set(["1", "2"]))
  })

  test("/metrics sums the workers' requests; /readyz fails while a worker is down", async () => {
    await using origin = startOrigin(() => new Response("a", { headers: { "cache-control": "max-age=60" } }))
    await using proxy = await startWorkers(CLI, origin.url, ["--admin-port", "0"])
    const admin = `http://127.0.0.1:${ADMIN.exec(proxy.lines.join("\n"))?.[1]}/`
    await bodies(`${proxy.url}counted`, 30)
    await eventually(() => answeredBy(proxy.lines).size === 2)
    const metrics = await (await fetch(`${admin}metrics`)).text()
    const counted = [...metrics.matchAll(/^caching_proxy_requests_total\{[^}]*\} (\d+)$/gm)].reduce((sum, [, n]) => sum + Number(n), 0)
    expect(counted).toBe(30)
    expect(metrics).toMatch(/^caching_proxy_store_entries\{tier="file"\} 1$/m)
    // The inspector's figures sum them too: requests over time and per URL.
    const { traffic } = (await (await fetch(`${admin}api/stats`)).json()) as {
      traffic: { requests: number; bars: { requests: number }[]; byBytes: { path: string; requests: number }[] }
    }
    expect(traffic.requests).toBe(30)
    expect(traffic.bars.reduce((sum, bar) => sum + bar.requests, 0)).toBe(30)
    expect(traffic.byBytes[0]).toMatchObject({ path: "/counted", requests: 30 })
    // Each process's own figures stay apart, labelled.
    for (const worker of ["primary", "1", "2"])
      expect(metrics).toMatch(new RegExp(`^process_resident_memory_bytes\\{worker="${worker}"\\} \\d+$`, "m"))
    expect(await (await fetch(`${admin}readyz`)).text()).toBe("ready\n")
    const [killed] = proxy.workers() as [number]
    process.kill(killed, "SIGKILL")
    // Until its replacement listens: the restart waits 0.1 s, then the worker starts.
    const seen: string[] = []
    const deadline = Date.now() + 5000
    while (!(seen.includes("503 not ready: 1 of 2 workers are listening\n") && seen.at(-1) === "200 ready\n") && Date.now() < deadline) {
      const response = await fetch(`${admin}readyz`)
      seen.push(`${response.status} ${await response.text()}`)
    }
    expect(seen).toContain("503 not ready: 1 of 2 workers are listening\n")
    expect(seen.at(-1)).toBe("200 ready\n")
  })
})

describe("workers on a shared Redis", () => {
  test("each worker is one of several proxies on it: one origin request for a cold burst, a purge seen by every worker", async () => {
    await using redis = await startRedis()
    let version = 0
    await using origin = startOrigin(async () => {
      await Bun.sleep(200)
      return new Response(`v${++version}`, { headers: { "cache-control": "max-age=60" } })
    })
    await using proxy = await startWorkers(CLI, origin.url, ["--store", redis.url, "--admin-port", "0"])
    const answers = await Promise.all(Array.from({ length: 200 }, () => freshGet(`${proxy.url}shared`)))
    expect(new Set(answers.map((answer) => answer.body))).toEqual(new Set(["v1"]))
    expect(origin.requests).toHaveLength(1)
    await eventually(() => answeredBy(proxy.lines).size === 2)
    const admin = `http://127.0.0.1:${/admin on http:\/\/127\.0\.0\.1:(\d+)/.exec(proxy.lines.join("\n"))?.[1]}/`
    const purged = await fetch(`${admin}api/purge`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: '{"url":"/shared"}',
    })
    expect(await purged.json()).toEqual({ purged: 1 })
    // Redis tells every proxy on it by pub/sub, as it does proxies of their own: each worker's memory
    // drops the entry a moment after the purge, and from then on every answer is the new one.
    const after: string[] = []
    const deadline = Date.now() + 5000
    while (after.slice(-20).filter((body) => body === "v2").length < 20 && Date.now() < deadline)
      after.push((await freshGet(`${proxy.url}shared`)).body)
    expect(after.slice(-20)).toEqual(Array(20).fill("v2"))
    expect(origin.requests).toHaveLength(2)
  })
})
