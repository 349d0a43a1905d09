/**
 * The proxy's options for tests and benchmarks that run it in-process: the CLI's defaults, on
 * port 0, quiet, without the admin listener. One place, so a new option reaches every one at once.
 */
import type { ProxyOptions } from "../proxy.ts"

export const TEST_OPTIONS: Omit<ProxyOptions, "origin" | "cacheDir"> = {
  port: 0,
  host: "127.0.0.1",
  publicUrl: undefined,
  trustForwarded: false,
  rewriteLocation: false,
  ttlSeconds: 300,
  timeoutSeconds: 30,
  quiet: true,
  logFormat: "text",
  metrics: false,
  memorySize: 64 << 20,
  maxSize: 1 << 30,
  maxEntrySize: 100 << 20,
  forceTtlSeconds: 0,
  ignoreQuery: [],
  offline: false,
  shareCookies: false,
  targetedCacheControl: [],
  store: { kind: "file" },
  storePrefix: "caching-proxy",
  admin: undefined,
  keepTagHeaders: false,
  workers: 1,
}
