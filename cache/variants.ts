/**
 * Variants of one key, found by the request's selection rather than by trying each: a store
 * keeps the Vary name lists its variants were selected by (one list for nearly every URL, [] for
 * none), and a request's value under each list names the only variant that can match it. A lookup
 * then costs one read per list, however many variants a client has made (RFC 9111 §4.1).
 */
import { varySelection } from "./policy.ts"
import type { EntryMeta } from "./store.ts"

/** Variants kept per key unless told otherwise: the least recently used goes beyond it. */
export const DEFAULT_MAX_VARIANTS = 64

type Selection = EntryMeta["vary"]

/**
 * The distinct name lists these selections were made by, joined to those `known` (a selection's
 * names are in one order: `varyNames` sorts them).
 */
export function shapesOf(selections: Iterable<Selection>, known: readonly string[][] = []): string[][] {
  const shapes = new Map(known.map((names) => [names.join("\n"), names]))
  for (const selection of selections) {
    const names = Object.keys(selection)
    shapes.set(names.join("\n"), names)
  }
  return [...shapes.values()]
}

/** What the request selects under each name list: the selections of the only variants that can match it. */
export function selectionsOf(shapes: readonly string[][], request: Headers): Selection[] {
  return shapes.map((names) => varySelection(names, request))
}
