/** Helpers shared by the benchmark's origin and ceiling servers. */

/**
 * A deterministic printable body of `size` bytes. Both servers build it the same way,
 * so the ceiling serves exactly the bytes the proxy serves from its cache.
 */
export function fixedBody(size: number): Uint8Array {
  const pattern = new TextEncoder().encode("caching-proxy benchmark body 0123456789abcdefghijklmnopqrstuvwxyz\n")
  const body = new Uint8Array(size)
  for (let offset = 0; offset < size; offset += pattern.length) {
    body.set(pattern.subarray(0, Math.min(pattern.length, size - offset)), offset)
  }
  return body
}

/**
 * Exit once the process that started us is gone. run.ts stops its children on exit and SIGINT,
 * but a SIGKILLed driver cannot, and a server left holding a pinned core would skew the next run.
 */
export function exitWhenOrphaned(): void {
  const parent = process.ppid
  setInterval(() => {
    if (process.ppid !== parent) process.exit(0)
  }, 1000).unref()
}
