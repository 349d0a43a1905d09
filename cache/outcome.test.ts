/**
 * The outcome as data: what X-Cache and Cache-Status (RFC 9211) say is rendered from it, so each
 * outcome has one rendering, and whether it came from the cache is one question of its kind.
 */
import { describe, expect, test } from "bun:test"
import { cacheStatus, isFromCache, type Outcome, outcomeOf, withOutcome, xCache } from "./outcome.ts"

describe("RFC 9211 Cache-Status, rendered from the outcome", () => {
  test.each<[Outcome, number | undefined, string]>([
    [{ kind: "hit" }, 60, "caching-proxy; hit; ttl=60"],
    [{ kind: "stale", detail: "max-stale" }, -5, "caching-proxy; hit; detail=max-stale; ttl=-5"],
    [
      { kind: "stale", fwd: "stale", fwdStatus: 503, detail: "stale-if-error" },
      -1,
      "caching-proxy; hit; fwd=stale; fwd-status=503; detail=stale-if-error; ttl=-1",
    ],
    [{ kind: "revalidated", fwd: "stale", fwdStatus: 304 }, 60, "caching-proxy; hit; fwd=stale; fwd-status=304; ttl=60"],
    [{ kind: "coalesced", detail: "coalesced" }, 60, "caching-proxy; hit; detail=coalesced; ttl=60"],
    [{ kind: "miss", fwd: "uri-miss", fwdStatus: 200, stored: true }, undefined, "caching-proxy; fwd=uri-miss; fwd-status=200; stored"],
    [{ kind: "miss", detail: "offline" }, undefined, "caching-proxy; detail=offline"],
    [
      { kind: "pass", fwd: "vary-miss", fwdStatus: 200, detail: "no-store" },
      undefined,
      "caching-proxy; fwd=vary-miss; fwd-status=200; detail=no-store",
    ],
    [{ kind: "pass", fwd: "method" }, undefined, "caching-proxy; fwd=method"],
  ])("%o → %s", (outcome, ttl, rendered) => {
    expect(cacheStatus(outcome, ttl)).toBe(rendered)
  })

  test("X-Cache is HIT exactly when the body came from the cache", () => {
    for (const kind of ["hit", "stale", "revalidated", "coalesced"] as const) {
      expect(isFromCache(kind)).toBe(true)
      expect(xCache({ kind })).toBe("HIT")
    }
    for (const kind of ["miss", "pass"] as const) {
      expect(isFromCache(kind)).toBe(false)
      expect(xCache({ kind })).toBe("MISS")
    }
  })

  test("a response carries the outcome recorded with it; one the cache did not make is a pass", () => {
    const outcome: Outcome = { kind: "stale", detail: "max-stale" }
    expect(outcomeOf(withOutcome(new Response("x"), outcome))).toBe(outcome)
    expect(outcomeOf(new Response("x"))).toEqual({ kind: "pass" })
  })
})
