/**
 * What is sent to the origin and what comes back past the proxy: the path a request may reach,
 * the fields the origin is told (hop-by-hop ones dropped, forwarding ones ours), and the URLs a
 * response names (--rewrite-location).
 */

import { outcomeOf, withOutcome } from "../cache/outcome.ts"
import { hopByHopFilter } from "../cache/policy.ts"
import { VIA } from "../cache.ts"

// A ".." that only the origin may see: behind an encoded slash or backslash, or with a
// ;parameter (as Tomcat reads "..;"). An origin that resolved it would climb above its base path.
const HIDDEN_DOT_DOT = /(?:^|[/\\]|%2f|%5c)(?:\.|%2e){2}(?:;[^/\\]*)?(?:$|[/\\]|%2f|%5c)/i
export const HIDDEN_DOT_DOT_REFUSED = "a .. segment behind an encoded separator or a ;parameter is refused\n"
// What a path must hold to need resolving: most paths hold none of it.
const MAY_CLIMB = /\\|%2f|%5c|(?:^|\/)(?:\.|%2e)/i

/**
 * The request's path and query with dot segments resolved against the root (RFC 3986 §5.2.4, as
 * the WHATWG URL parser reads them: %2E is a dot, \ a slash), so that once appended to the
 * origin's base path nothing climbs above it; undefined when a ".." hides from that reading.
 * Bun.serve resolves the path so already; Node hands it over raw.
 */
export function resolvedPath(pathAndQuery: string): string | undefined {
  const queryStart = pathAndQuery.indexOf("?")
  const path = queryStart === -1 ? pathAndQuery : pathAndQuery.slice(0, queryStart)
  if (!MAY_CLIMB.test(path)) return pathAndQuery
  const resolved = new URL(`http://root${path}`).pathname
  if (HIDDEN_DOT_DOT.test(resolved)) return undefined
  return queryStart === -1 ? resolved : resolved + pathAndQuery.slice(queryStart)
}

/**
 * Fields by which proxies tell the origin who the client is and how it reached them, and those
 * frameworks read as the request's host or URL. From a client they are forged, and none is in the
 * cache key: an origin that built a page from one would have the cache serve it to everyone
 * (cache poisoning). Dropped unless --trust-forwarded.
 */
const FORWARDING_FIELDS = new Set([
  "forwarded",
  "x-real-ip",
  "x-client-ip",
  "true-client-ip",
  "cf-connecting-ip",
  "fastly-client-ip",
  "x-cluster-client-ip",
  "x-host",
  "x-original-host",
  "x-original-url",
  "x-rewrite-url",
])

function isForwardingField(name: string): boolean {
  return name.startsWith("x-forwarded-") || FORWARDING_FIELDS.has(name)
}

/** What the forwarding fields say of one request: from its connection and our configuration only. */
export interface Hop {
  /** The client's address, as the connection has it. */
  client: string | undefined
  /** How clients reach the proxy (--public-url, else the address it listens on). */
  host: string
  proto: string
  /** --trust-forwarded: the request's own forwarding fields stay, and ours extend them. */
  trustForwarded: boolean
  /** Whether a body goes to the origin with the request. */
  hasBody: boolean
}

/**
 * The fields sent to the origin, one pair per name (lowercase, as `incoming` iterates them): the
 * client's, less hop-by-hop and forwarding fields, plus ours. Pairs are a HeadersInit that Bun's
 * fetch and node:http (as an object) both take as they are: no second `Headers`, whose every
 * append undici validates again, is built per request (measured under Node).
 */
export function forwardedHeaders(incoming: Headers, hop: Hop): [string, string][] {
  const isHopByHop = hopByHopFilter(incoming)
  const fields: [string, string][] = []
  for (const field of incoming) {
    const name = field[0]
    // Host is the origin's, set from the target URL. RFC 9112 §6.3: a Content-Length with no body
    // sent would have the origin read the start of the next request on the connection as this
    // one's body (request smuggling).
    if (isHopByHop(name) || name === "host" || (name === "content-length" && !hop.hasBody)) continue
    if (!hop.trustForwarded && isForwardingField(name)) continue
    fields.push(field)
  }
  // A client's fields are still here only under --trust-forwarded: ours then extend their lists
  // (RFC 7239 §4), and the host and scheme the proxy in front was reached by stay.
  if (hop.client) extend(fields, "x-forwarded-for", hop.client)
  extend(fields, "forwarded", forwardedElement(hop))
  if (!hasField(fields, "x-forwarded-host")) fields.push(["x-forwarded-host", hop.host])
  if (!hasField(fields, "x-forwarded-proto")) fields.push(["x-forwarded-proto", hop.proto])
  extend(fields, "via", VIA)
  return fields
}

function hasField(fields: [string, string][], name: string): boolean {
  return fields.some((field) => field[0] === name)
}

/** Adds `value` to the list field `name` (RFC 9110 §5.3: one field line, its members comma-separated). */
function extend(fields: [string, string][], name: string, value: string): void {
  const field = fields.find((pair) => pair[0] === name)
  if (field) field[1] = `${field[1]}, ${value}`
  else fields.push([name, value])
}

/** Our element of Forwarded (RFC 7239 §4): who connected to us, and how clients reach us. */
function forwardedElement(hop: Hop): string {
  // RFC 7239 §6: an IPv6 address is bracketed and quoted; §6.3: an address not known is "unknown".
  const node = hop.client === undefined ? "unknown" : hop.client.includes(":") ? `"[${hop.client}]"` : hop.client
  return `for=${node};host="${hop.host}";proto=${hop.proto}`
}

/** The path and query of a URL or request-target, whatever authority it names. */
export function pathAndQuery(target: string): string {
  if (target.startsWith("/")) return target
  const authorityStart = target.indexOf("://")
  const pathStart = authorityStart === -1 ? -1 : target.indexOf("/", authorityStart + 3)
  return pathStart === -1 ? "/" : target.slice(pathStart)
}

// The fields by which a response names URLs of its own: RFC 9110 §10.2.2, §8.7.
const LOCATION_FIELDS = ["location", "content-location"]

/**
 * --rewrite-location: an absolute URL in Location or Content-Location at or under the origin's
 * base URL becomes the same path under the proxy's, so the client is not sent past the proxy.
 * Relative URLs point at the proxy already; other hosts, and the origin's paths outside its base
 * (which no proxy path reaches), stay as sent. The path and query are kept byte for byte.
 * Returns the response itself when nothing is rewritten, else a response of its own: a hit's
 * headers are shared by the hits of the same second (cache.ts), and under Node the response
 * keeps the very `Headers` it was given, so editing them would rewrite the next hits too.
 */
export function rewriteLocations(response: Response, origin: URL, proxyBase: string): Response {
  const basePath = origin.pathname === "/" ? "" : origin.pathname
  let rewritten: Headers | undefined
  for (const name of LOCATION_FIELDS) {
    const value = response.headers.get(name)
    if (value === null || !URL.canParse(value) || new URL(value).origin !== origin.origin) continue
    const path = pathAndQuery(value)
    const rest = path.slice(basePath.length)
    if (!path.startsWith(basePath) || !/^(?:$|[/?#])/.test(rest)) continue
    rewritten ??= new Headers(response.headers)
    rewritten.set(name, proxyBase + (rest.startsWith("/") ? rest : `/${rest}`))
  }
  if (!rewritten) return response
  const outcome = outcomeOf(response)
  // A hit's bytes as they are: reading `.body` would make a stream of them.
  const body = outcome.bytes ?? response.body
  return withOutcome(new Response(body, { status: response.status, statusText: response.statusText, headers: rewritten }), outcome)
}
