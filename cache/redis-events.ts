/**
 * The events the Redis store publishes on `<prefix>:events` (a key changed, a claim was released,
 * the cache was cleared, a purge), and their validation: anyone with PUBLISH rights can write on
 * the channel, so a message is an event only when it has exactly this shape.
 */
import type { KeyMatch } from "./store.ts"

export type Event =
  | { type: "changed"; key: string }
  | { type: "released"; key: string }
  | { type: "clear" }
  | { type: "purged"; match: KeyMatch }

/** An event as published by `RedisStore.publish`, or undefined for anything else on the channel. */
export function parseEvent(message: string): Event | undefined {
  let value: unknown
  try {
    value = JSON.parse(message)
  } catch {
    return undefined // not JSON: the caller reports it
  }
  if (typeof value !== "object" || value === null) return undefined
  const { type, key, match } = value as Record<string, unknown>
  if (type === "clear") return { type }
  if (type === "purged" && typeof match === "object" && match !== null) {
    const { prefix, tag } = match as Record<string, unknown>
    if (typeof prefix === "string") return { type, match: { prefix } }
    if (typeof tag === "string") return { type, match: { tag } }
    return undefined
  }
  if ((type === "changed" || type === "released") && typeof key === "string") return { type, key }
  return undefined
}
