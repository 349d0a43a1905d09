/**
 * The admin listener: a second, small Hono app on its own port (--admin-port), never the proxy's.
 * Health and readiness for orchestrators, Prometheus metrics, a JSON API over the cache's entries
 * and purges, and the cache inspector page (proxy/inspector.ts) that uses that API. With --admin-token every request but the page and the probes must carry
 * `Authorization: Bearer <token>`.
 *
 * A web page in the operator's browser can reach a loopback port too, so the listener refuses what
 * a browser sends on another site's behalf: changes come only as JSON from the listener's own page
 * (or from outside a browser), and without a token only a Host that names this machine is answered.
 */
import { createHash, timingSafeEqual } from "node:crypto"
import { setTimeout as sleep } from "node:timers/promises"
import { type Context, Hono, type MiddlewareHandler } from "hono"
import { bodyLimit } from "hono/body-limit"
import { withDeadline } from "../cache/deadline.ts"
import type { MaybePromise } from "../cache/store.ts"
import type { Cache, PurgeTarget, TierStats, Warn } from "../cache.ts"
import { EntryTables, SORT_KEYS, type SortKey } from "./entry-table.ts"
import { INSPECTOR_CSP, INSPECTOR_PAGE } from "./inspector.ts"
import { type TrafficView, WINDOWS, type WindowName } from "./traffic.ts"

/** How long a readiness probe waits for the store before calling it unready. */
const PING_TIMEOUT_MS = 2000
const DEFAULT_PAGE_SIZE = 100
const MAX_PAGE_SIZE = 1000
/** A table filter is a path or tag fragment: a longer one is refused. */
const MAX_FILTER_LENGTH = 1024
/** A purge is a few hundred bytes: a longer admin request body is refused (413) and not read on. */
const MAX_BODY_BYTES = 64 << 10
/** The shortest --admin-token where other machines can ask: 16 printable characters are past guessing. */
const MIN_REMOTE_TOKEN_LENGTH = 16
// RFC 9110 §9.2.1: these methods change nothing; every other one may, and is refused cross-site.
const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS", "TRACE"])
const READ = ["GET", "HEAD"] // Hono answers HEAD with the GET route
/** Every admin route and the methods it answers: any other method gets 405 with Allow (RFC 9110 §15.5.6). */
const ROUTE_METHODS: Record<string, string[]> = {
  "/": READ,
  "/healthz": READ,
  "/readyz": READ,
  "/metrics": READ,
  "/api/entries": READ,
  "/api/entry": READ,
  "/api/stats": READ,
  "/api/purge": ["POST"],
}

/**
 * What the admin listener shows of the proxy's traffic: Prometheus text, and the inspector's chart;
 * and what it tells it (purges). proxy/metrics.ts implements it.
 */
export interface AdminMetrics {
  /** The Content-Type of `render`'s text. */
  contentType: string
  render(): Promise<string>
  /** The inspector's traffic figures over a window, and the URLs served most since the start. */
  summary(window: WindowName): MaybePromise<TrafficView>
  /** When the process started, and the shared store's state (undefined without one). */
  state(): { startedAt: number; store: StoreState | undefined }
  /** Counts one purge and the URLs it removed or marked stale. */
  purged(entries: number): void
  /** The store's stats per tier: totals it keeps as it changes, read at most every few seconds. */
  tierStats(): Promise<TierStats[]>
}

/** Whether the shared store (Redis) is connected, and since when (ms since epoch). */
export interface StoreState {
  connected: boolean
  since: number
}

export interface AdminConfig {
  cache: Cache
  /** The origin's base URL: API paths ("/users/1") are resolved against it. */
  origin: string
  /** Every request must carry it as a bearer token. @default undefined: none asked (loopback only) */
  token: string | undefined
  /** The address a request came from (the runtime knows it): failed token attempts are slowed per address. */
  clientAddress: (c: Context) => string | undefined
  metrics: AdminMetrics
  /** The version the inspector shows. */
  version: string
  warn: Warn
  /** Why the proxy is not ready, the store aside: under --workers, a worker not listening. @default none */
  notReady?: () => string | undefined
}

/** A request the API cannot act on: 400 with this one line. */
class BadRequest extends Error {}

/** Builds the admin app; `serve` (proxy.ts) puts it on its own port. */
export function createAdmin({ cache, origin, token, clientAddress, metrics, version, warn, notReady }: AdminConfig): Hono {
  const app = new Hono()
  // Without a token the listener is on loopback, and a page whose name the attacker's DNS turned to
  // 127.0.0.1 (DNS rebinding) is same-origin with it: only its Host header still gives it away.
  if (token === undefined) app.use(requireLoopbackHost)
  app.use(refuseOtherMethods)
  app.use(refuseCrossSite)
  app.use(
    bodyLimit({
      maxSize: MAX_BODY_BYTES,
      // Closing the connection spares reading the rest of the body just to keep it alive.
      onError: (c) => c.text(`an admin request body is at most ${MAX_BODY_BYTES} bytes\n`, 413, { connection: "close" }),
    }),
  )
  // The inspector page holds no data (it asks for the token and sends it with every API call), and
  // a browser cannot send a bearer token when it navigates; a load balancer's or the kubelet's probe
  // sends plain requests, and the probes tell nothing but "up" and "ready". These routes are served
  // without the token: registered before its check, they answer first.
  app.get("/", (c) =>
    c.html(INSPECTOR_PAGE, 200, {
      "content-security-policy": INSPECTOR_CSP,
      "x-content-type-options": "nosniff",
      "cache-control": "no-store",
    }),
  )
  app.get("/healthz", (c) => c.text("ok\n"))

  app.get("/readyz", async (c) => {
    const problem = notReady?.() ?? (await storeProblem(cache))
    return problem === undefined ? c.text("ready\n") : c.text(`not ready: ${problem}\n`, 503)
  })

  if (token !== undefined) app.use(requireToken(token, clientAddress))

  app.get("/metrics", async (c) => c.body(await metrics.render(), 200, { "content-type": metrics.contentType }))

  /** A URL as the API takes it: a path under the origin ("/users/1"), or the origin's full URL. */
  const fullUrl = (name: string, value: string | undefined): string => {
    if (value === undefined || value === "") throw new BadRequest(`${name} is required: a path such as /users/1, or a full URL`)
    if (value.startsWith("/")) return origin + value
    if (value.startsWith(`${origin}/`)) return value
    // The bare origin is its root, "/": as a prefix it must not reach `${origin}2/…`, another
    // origin's URLs on a shared store prefix. Every URL of this origin starts with `${origin}/`.
    if (value === origin) return `${origin}/`
    throw new BadRequest(`${name} must be a path (/…) or a URL under ${origin} (got "${value}")`)
  }
  /** The URL relative to the origin, as clients of the proxy ask for it. */
  const pathOf = (url: string) => (url.startsWith(origin) ? url.slice(origin.length) || "/" : url)
  const tables = new EntryTables(cache, pathOf)

  app.get("/api/entries", async (c) => {
    const prefix = fullUrl("prefix", c.req.query("prefix") || "/")
    // Sorted, filtered or by offset: the inspector's table, over the whole prefix (proxy/entry-table.ts).
    if (["sort", "order", "filter", "offset"].some((name) => c.req.query(name) !== undefined)) {
      const query = { prefix, limit: pageSize(c.req.query("limit")), ...tableQuery(c.req.query()) }
      return c.json({ ...(await tables.table(query)), cursor: null })
    }
    const page = await cache.entries({ prefix, limit: pageSize(c.req.query("limit")), cursor: c.req.query("cursor") || undefined })
    return c.json({ entries: page.entries.map((entry) => ({ ...entry, path: pathOf(entry.url) })), cursor: page.cursor ?? null })
  })

  app.get("/api/entry", async (c) => {
    const found = await cache.entry(fullUrl("url", c.req.query("url")))
    if (!found) return c.text("nothing is stored for this URL\n", 404)
    return c.json({ ...found.entry, path: pathOf(found.entry.url), variants: found.variants })
  })

  app.get("/api/stats", async (c) => {
    const window = c.req.query("window") ?? "10m"
    if (!(window in WINDOWS)) throw new BadRequest(`window must be ${Object.keys(WINDOWS).join(" or ")} (got "${window}")`)
    const { startedAt, store } = metrics.state()
    return c.json({
      origin,
      version,
      uptimeSeconds: Math.floor((Date.now() - startedAt) / 1000),
      store: store ?? null,
      tiers: await metrics.tierStats(),
      traffic: await metrics.summary(window as WindowName),
    })
  })

  app.post("/api/purge", async (c) => {
    const { target, soft } = parsePurge(await c.req.text())
    const resolved: PurgeTarget =
      "url" in target ? { url: fullUrl("url", target.url) } : "prefix" in target ? { prefix: fullUrl("prefix", target.prefix) } : target
    const purged = await cache.purge(resolved, soft)
    tables.forget()
    metrics.purged(purged)
    return c.json({ purged })
  })

  app.notFound((c) => c.text('not found: see the README\'s "Operating it" for the admin routes\n', 404))
  app.onError((error, c) => failed(error, c, warn))
  return app
}

/** A bad request is the client's: 400 with its reason. Anything else is ours: logged, and a 500 in one line. */
function failed(error: Error, c: Context, warn: Warn): Response {
  if (error instanceof BadRequest) return c.text(`${error.message}\n`, 400)
  warn("admin", `${c.req.method} ${c.req.path} failed: ${error.message}`)
  return c.text(`the admin request failed: ${error.message}\n`, 500)
}

function pageSize(value: string | undefined): number {
  if (value === undefined || value === "") return DEFAULT_PAGE_SIZE
  const limit = Number(value)
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_PAGE_SIZE)
    throw new BadRequest(`limit must be a whole number from 1 to ${MAX_PAGE_SIZE} (got "${value}")`)
  return limit
}

/** The table's sort column, order, filter and offset; absent ones by URL, ascending, all, from the first. */
function tableQuery(query: Record<string, string>): { sort: SortKey; descending: boolean; filter: string; offset: number } {
  const { sort = "path", order = "asc", filter = "", offset = "0" } = query
  if (!SORT_KEYS.includes(sort as SortKey)) throw new BadRequest(`sort must be one of ${SORT_KEYS.join(", ")} (got "${sort}")`)
  if (order !== "asc" && order !== "desc") throw new BadRequest(`order must be asc or desc (got "${order}")`)
  const start = Number(offset)
  if (!Number.isInteger(start) || start < 0) throw new BadRequest(`offset must be a whole number from 0 (got "${offset}")`)
  if (filter.length > MAX_FILTER_LENGTH) throw new BadRequest(`filter is at most ${MAX_FILTER_LENGTH} characters (got ${filter.length})`)
  return { sort: sort as SortKey, descending: order === "desc", filter, offset: start }
}

const PURGE_FIELDS = new Set(["url", "prefix", "tag", "soft"])

/** A purge request's body: exactly one of url, prefix or tag (a non-empty string), and soft (a boolean) or not. */
function parsePurge(text: string): { target: PurgeTarget; soft: boolean } {
  let body: unknown
  try {
    body = JSON.parse(text)
  } catch {
    throw new BadRequest('the body must be JSON, such as {"url": "/users/1"}, {"prefix": "/users/"} or {"tag": "user-1"}')
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) throw new BadRequest("the body must be a JSON object")
  const fields = body as Record<string, unknown>
  const unknown = Object.keys(fields).find((name) => !PURGE_FIELDS.has(name))
  if (unknown !== undefined) throw new BadRequest(`unknown field "${unknown}" (expected url, prefix or tag, and soft)`)
  const given = (["url", "prefix", "tag"] as const).filter((name) => name in fields)
  const [name] = given
  if (name === undefined || given.length > 1) throw new BadRequest("give exactly one of url, prefix or tag")
  const value = fields[name]
  if (typeof value !== "string" || value === "") throw new BadRequest(`${name} must be a non-empty string`)
  if (fields.soft !== undefined && typeof fields.soft !== "boolean") throw new BadRequest("soft must be true or false")
  return { target: { [name]: value } as PurgeTarget, soft: fields.soft === true }
}

/**
 * Refuses (401) a request without the token. Both sides are hashed first, so the comparison is
 * constant-time over equal lengths whatever the lengths given (crypto.timingSafeEqual requires
 * equal lengths, and comparing lengths first would tell the token's). Repeated failures from one
 * address are answered more and more slowly, so guessing takes a client that waits for its answers
 * longer with every try.
 */
function requireToken(token: string, clientAddress: (c: Context) => string | undefined): MiddlewareHandler {
  const expected = sha256(token)
  const failures = new FailedAttempts()
  return async (c, next) => {
    const client = clientAddress(c) ?? "unknown"
    const given = /^Bearer +(\S+)$/i.exec(c.req.header("authorization") ?? "")?.[1] ?? ""
    if (!timingSafeEqual(sha256(given), expected)) {
      const delayMs = failures.delayMs(client, Date.now())
      if (delayMs > 0) await sleep(delayMs)
      return c.text("this admin listener needs Authorization: Bearer <its --admin-token>\n", 401, {
        "www-authenticate": 'Bearer realm="caching-proxy admin"',
      })
    }
    failures.forget(client)
    await next()
  }
}

/** Failures after the first wait this long, doubling with each one, up to the last. */
const FIRST_FAILURE_DELAY_MS = 100
const MAX_FAILURE_DELAY_MS = 5000
/** A client's failures are forgotten this long after its last one. */
const FAILURE_MEMORY_MS = 10 * 60_000
/** At most this many addresses are remembered; the one that failed longest ago goes first. */
const MAX_REMEMBERED_CLIENTS = 1000

/** Failed token attempts per client address, in a map of bounded size (least recently failed first). */
class FailedAttempts {
  readonly #byClient = new Map<string, { count: number; lastAt: number }>()

  /** Counts a failure; how long its 401 waits: nothing the first time, then 100 ms doubling to 5 s. */
  delayMs(client: string, now: number): number {
    const seen = this.#byClient.get(client)
    const count = seen !== undefined && now - seen.lastAt < FAILURE_MEMORY_MS ? seen.count + 1 : 1
    // Deleted and set again, so the map's order stays that of the last failure.
    this.#byClient.delete(client)
    this.#byClient.set(client, { count, lastAt: now })
    if (this.#byClient.size > MAX_REMEMBERED_CLIENTS) {
      const oldest = this.#byClient.keys().next().value
      if (oldest !== undefined) this.#byClient.delete(oldest)
    }
    return count === 1 ? 0 : Math.min(FIRST_FAILURE_DELAY_MS * 2 ** (count - 2), MAX_FAILURE_DELAY_MS)
  }

  /** A client that gave the token is no longer guessing. */
  forget(client: string): void {
    this.#byClient.delete(client)
  }
}

/**
 * Without a token, answers only a Host that names this machine (421 otherwise): a DNS-rebound page
 * sends its own name. The port is not checked, so a tunnel (ssh -L 9999:127.0.0.1:9090) still works.
 */
const requireLoopbackHost: MiddlewareHandler = async (c, next) => {
  const host = c.req.header("host") ?? ""
  if (!isLoopback(hostName(host)))
    return c.text(`this admin listener answers only for localhost, 127.0.0.1 or [::1] (Host was "${host}")\n`, 421)
  await next()
}

/** The name or address in a Host header, without its port; an IPv6 address without its brackets (RFC 3986 §3.2.2). */
function hostName(host: string): string {
  const name = host.startsWith("[") ? host.slice(1, host.indexOf("]")) : host.replace(/:\d*$/, "")
  return name.toLowerCase()
}

/**
 * Refuses a change a browser sends on another page's behalf. A form, `sendBeacon` or a no-cors
 * `fetch` can POST text/plain to any address without asking (a CORS preflight is needed only for
 * other types), so a change must come as application/json (415 otherwise); and a browser says
 * where the request comes from (Origin; Sec-Fetch-Site in Fetch Metadata), which must be this
 * listener's own page (403 otherwise). Clients outside a browser send neither header.
 */
const refuseCrossSite: MiddlewareHandler = async (c, next) => {
  if (SAFE_METHODS.has(c.req.method)) return next()
  const site = c.req.header("sec-fetch-site")
  const from = c.req.header("origin")
  const own = (c.req.header("host") ?? "").toLowerCase()
  // Either scheme: a front end may terminate TLS; nothing else can serve a page from this host and port.
  if (site === "cross-site" || site === "same-site" || (from !== undefined && from !== `http://${own}` && from !== `https://${own}`))
    return c.text("changes are taken only from this listener's own page, or from clients outside a browser\n", 403)
  const mediaType = c.req.header("content-type")?.split(";")[0]?.trim().toLowerCase()
  if (mediaType !== "application/json") return c.text("send the body as Content-Type: application/json\n", 415)
  await next()
}

/** A known route asked with a method it does not answer: 405, and the methods it does (RFC 9110 §15.5.6). */
const refuseOtherMethods: MiddlewareHandler = async (c, next) => {
  const allowed = ROUTE_METHODS[c.req.path]
  if (allowed !== undefined && !allowed.includes(c.req.method)) {
    const allow = allowed.join(", ")
    return c.text(`${c.req.path} answers ${allow} only\n`, 405, { allow })
  }
  await next()
}

/** Whether a name or address only this machine can reach: the admin listener needs no token there. */
function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host)
}

/**
 * What is wrong with --admin-token for --admin-host, or undefined when nothing is: wherever other
 * machines can ask, a token is required and must be long enough not to be guessed; it travels in a
 * header, so it is visible ASCII.
 */
export function checkAdminToken(host: string, token: string | undefined): string | undefined {
  const remote = !isLoopback(host)
  if (token === undefined)
    return remote
      ? `--admin-host ${host} is reachable from other machines: set --admin-token (or CACHING_PROXY_ADMIN_TOKEN) too`
      : undefined
  if (!/^[\x21-\x7e]+$/.test(token)) return "--admin-token must be printable ASCII without spaces (got a value that is not)"
  if (remote && token.length < MIN_REMOTE_TOKEN_LENGTH)
    return `--admin-token must be at least ${MIN_REMOTE_TOKEN_LENGTH} characters where --admin-host ${host} lets other machines ask (got ${token.length})`
  return undefined
}

/** Why the store cannot answer now, or undefined when it can. */
async function storeProblem(cache: Cache): Promise<string | undefined> {
  const ping = cache.ping().then(
    () => undefined,
    (error: Error) => error.message,
  )
  return withDeadline(ping, PING_TIMEOUT_MS, () => `the store did not answer within ${PING_TIMEOUT_MS} ms`)
}

function sha256(text: string): Buffer {
  return createHash("sha256").update(text).digest()
}
