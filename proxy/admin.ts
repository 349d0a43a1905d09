/**
 * The admin listener: a second, small Hono app on its own port (--admin-port), never the proxy's.
 * Health and readiness for orchestrators, Prometheus metrics, a JSON API over the cache's entries
 * and purges, and the cache inspector page (proxy/inspector.ts) that uses that API. With --admin-token every request must carry `Authorization: Bearer <token>`.
 */
import { createHash, timingSafeEqual } from "node:crypto"
import { type Context, Hono, type MiddlewareHandler } from "hono"
import { withDeadline } from "../cache/deadline.ts"
import type { Cache, PurgeTarget, TierStats, Warn } from "../cache.ts"
import { INSPECTOR_CSP, INSPECTOR_PAGE } from "./inspector.ts"

/** How long a readiness probe waits for the store before calling it unready. */
const PING_TIMEOUT_MS = 2000
const DEFAULT_PAGE_SIZE = 100
const MAX_PAGE_SIZE = 1000

/**
 * What the admin listener shows of the proxy's traffic: Prometheus text, and the inspector's chart;
 * and what it tells it (purges). proxy/metrics.ts implements it.
 */
export interface AdminMetrics {
  /** The Content-Type of `render`'s text. */
  contentType: string
  render(): Promise<string>
  /** Requests and hits per 10-second bucket over the last 10 minutes, oldest first. */
  recent(): { at: number; requests: number; hits: number }[]
  /** Counts one purge and the URLs it removed or marked stale. */
  purged(entries: number): void
  /** The store's stats per tier, read at most every few seconds (Redis's walk its whole index). */
  tierStats(): Promise<TierStats[]>
}

export interface AdminConfig {
  cache: Cache
  /** The origin's base URL: API paths ("/users/1") are resolved against it. */
  origin: string
  /** Every request must carry it as a bearer token. @default undefined: none asked (loopback only) */
  token: string | undefined
  metrics: AdminMetrics
  warn: Warn
}

/** A request the API cannot act on: 400 with this one line. */
class BadRequest extends Error {}

/** Builds the admin app; `serve` (proxy.ts) puts it on its own port. */
export function createAdmin({ cache, origin, token, metrics, warn }: AdminConfig): Hono {
  const app = new Hono()
  // The inspector page holds no data (it asks for the token and sends it with every API call), and
  // a browser cannot send a bearer token when it navigates: it is the one route served without it.
  // Registered before the token check, so it answers first.
  app.get("/", (c) =>
    c.html(INSPECTOR_PAGE, 200, {
      "content-security-policy": INSPECTOR_CSP,
      "x-content-type-options": "nosniff",
      "cache-control": "no-store",
    }),
  )
  if (token !== undefined) app.use(requireToken(token))

  app.get("/healthz", (c) => c.text("ok\n"))

  app.get("/readyz", async (c) => {
    const problem = await storeProblem(cache)
    return problem === undefined ? c.text("ready\n") : c.text(`not ready: ${problem}\n`, 503)
  })

  app.get("/metrics", async (c) => c.body(await metrics.render(), 200, { "content-type": metrics.contentType }))

  /** A URL as the API takes it: a path under the origin ("/users/1"), or the origin's full URL. */
  const fullUrl = (name: string, value: string | undefined): string => {
    if (value === undefined || value === "") throw new BadRequest(`${name} is required: a path such as /users/1, or a full URL`)
    if (value.startsWith("/")) return origin + value
    if (value.startsWith(`${origin}/`) || value === origin) return value
    throw new BadRequest(`${name} must be a path (/…) or a URL under ${origin} (got "${value}")`)
  }
  /** The URL relative to the origin, as clients of the proxy ask for it. */
  const pathOf = (url: string) => (url.startsWith(origin) ? url.slice(origin.length) || "/" : url)

  app.get("/api/entries", async (c) => {
    const prefix = fullUrl("prefix", c.req.query("prefix") || "/")
    const page = await cache.entries({ prefix, limit: pageSize(c.req.query("limit")), cursor: c.req.query("cursor") || undefined })
    return c.json({ entries: page.entries.map((entry) => ({ ...entry, path: pathOf(entry.url) })), cursor: page.cursor ?? null })
  })

  app.get("/api/entry", async (c) => {
    const found = await cache.entry(fullUrl("url", c.req.query("url")))
    if (!found) return c.text("nothing is stored for this URL\n", 404)
    return c.json({ ...found.entry, path: pathOf(found.entry.url), variants: found.variants })
  })

  app.get("/api/stats", async (c) => c.json({ origin, tiers: await metrics.tierStats(), recent: metrics.recent() }))

  app.post("/api/purge", async (c) => {
    const { target, soft } = parsePurge(await c.req.text())
    const resolved: PurgeTarget =
      "url" in target ? { url: fullUrl("url", target.url) } : "prefix" in target ? { prefix: fullUrl("prefix", target.prefix) } : target
    const purged = await cache.purge(resolved, soft)
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
 * equal lengths, and comparing lengths first would tell the token's).
 */
function requireToken(token: string): MiddlewareHandler {
  const expected = sha256(token)
  return async (c, next) => {
    const given = /^Bearer +(\S+)$/i.exec(c.req.header("authorization") ?? "")?.[1] ?? ""
    if (!timingSafeEqual(sha256(given), expected)) {
      return c.text("this admin listener needs Authorization: Bearer <its --admin-token>\n", 401, {
        "www-authenticate": 'Bearer realm="caching-proxy admin"',
      })
    }
    await next()
  }
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
