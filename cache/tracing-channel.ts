/**
 * Bun's `TracingChannel` lacks Node's `hasSubscribers` getter (oven-sh/bun#27805), so a client
 * that asks it before tracing (ioredis does, for every command) reads `undefined`, takes that for
 * "maybe", and traces each command with no one listening: a context object, its arguments
 * sanitised by regular expressions, and a wrapping promise, per command. This adds Node's getter
 * (any of the five channels has a subscriber) where the runtime lacks it.
 */
import { tracingChannel } from "node:diagnostics_channel"

export function addTracingChannelHasSubscribers(): void {
  const prototype = Object.getPrototypeOf(tracingChannel("caching-proxy:probe")) as object
  if ("hasSubscribers" in prototype) return
  Object.defineProperty(prototype, "hasSubscribers", {
    configurable: true,
    get(this: Record<"start" | "end" | "asyncStart" | "asyncEnd" | "error", { hasSubscribers: boolean }>) {
      return (
        this.start.hasSubscribers ||
        this.end.hasSubscribers ||
        this.asyncStart.hasSubscribers ||
        this.asyncEnd.hasSubscribers ||
        this.error.hasSubscribers
      )
    },
  })
}
