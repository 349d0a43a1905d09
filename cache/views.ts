/**
 * What is stored, as the admin API shows it: one URL with its variants summed up, each variant's
 * figures, and what a purge names.
 */
import { currentAgeMs, ttlMs } from "./policy.ts"
import type { ListedEntry } from "./store.ts"

/** What a purge removes (or marks stale): one URL, every URL under a prefix, or every entry with a tag. */
export type PurgeTarget = { url: string } | { prefix: string } | { tag: string }

/** One variant as the admin API shows it. */
export interface VariantView {
  status: number
  /** The request header values it was selected by (Vary); null = absent. */
  vary: Record<string, string | null>
  /** Body bytes. */
  bytes: number
  /** When it arrived, ms since epoch. */
  storedAt: number
  ageSeconds: number
  /** Seconds of freshness left; negative once stale. */
  ttlSeconds: number
  fresh: boolean
  tags: string[]
  tiers: string[]
  headers: [string, string][]
}

/** One URL as the admin API lists it: its variants summed up, the most recent one's figures. */
export interface EntryView extends Omit<VariantView, "vary" | "headers"> {
  url: string
  method: string
  variants: number
  /** Hits this process has served from it since it started. */
  hits: number
}

/** One stored URL as the admin API lists it, from its variants; `hits`: this process's count for it. */
export function entryView(key: string, listed: ListedEntry[], hits: number, now: number): EntryView {
  const variants = listed.map((variant) => variantView(variant, now))
  const { vary: _, headers: __, ...newest } = variants.reduce((a, b) => (b.storedAt > a.storedAt ? b : a))
  return {
    ...newest,
    url: key.slice(key.indexOf(" ") + 1),
    method: key.slice(0, key.indexOf(" ")),
    variants: variants.length,
    bytes: variants.reduce((sum, variant) => sum + variant.bytes, 0),
    tags: [...new Set(variants.flatMap((variant) => variant.tags))],
    tiers: [...new Set(variants.flatMap((variant) => variant.tiers))],
    hits,
  }
}

/** One stored variant as the admin API shows it. */
export function variantView({ meta, size, tiers }: ListedEntry, now: number): VariantView {
  const ttl = ttlMs(meta, now)
  return {
    status: meta.status,
    vary: meta.vary,
    bytes: size,
    storedAt: meta.responseTime,
    ageSeconds: Math.floor(currentAgeMs(meta, now) / 1000),
    ttlSeconds: Math.round(ttl / 1000),
    fresh: ttl > 0 && !meta.noCache,
    tags: meta.tags ?? [],
    tiers,
    headers: meta.headers,
  }
}
