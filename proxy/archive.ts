/**
 * `caching-proxy export` and `caching-proxy import`: a store's entries as an HTTP Archive (HAR
 * 1.2) and back, in any store (file or Redis). The format is proxy/har.ts.
 */

import { type FileHandle, open, readFile, rename, rm } from "node:fs/promises"
import { resolve } from "node:path"
import { parseArgs } from "citty"
import type { EntryMeta, ListedEntry } from "../cache/store.ts"
import type { Behind } from "../cache/tiered-store.ts"
import { HarError, harEntry, harFrame, readHar, redaction, varyHeaders } from "./har.ts"
import { createWarn } from "./log.ts"
import {
  args,
  checkCacheDir,
  checkRawArgs,
  flagsFromEnvironment,
  joinRepeated,
  type ProxyOptions,
  parseOptions,
  parseRedact,
  UsageError,
} from "./options.ts"
import { bodyBytes } from "./record.ts"

/** What the commands need from the entry point (which imports them): opening the store, the version. */
interface CommandContext {
  openStore: (
    options: Pick<ProxyOptions, "store" | "cacheDir" | "maxSize" | "storePrefix" | "maxVariants">,
    warn: ReturnType<typeof createWarn>,
  ) => Promise<Behind>
  version: string
}

/** Said on stderr whenever secrets are about to be written as they are. */
export const NO_REDACT_WARNING =
  "--no-redact: Authorization, Cookie, Set-Cookie and every value are written as they are; do not commit or share this HAR"

// The flags the commands share with the proxy: where the store is, and what is redacted.
const STORE_FLAGS = { "cache-dir": args["cache-dir"], store: args.store, "store-prefix": args["store-prefix"] }

const exportArgs = {
  ...STORE_FLAGS,
  prefix: { type: "string", valueHint: "PATH", description: "Only URLs whose path starts with this, e.g. /api" },
  output: { type: "string", valueHint: "FILE", alias: "o", description: "Write the HAR to FILE (default: standard output)" },
  redact: args.redact,
  "no-redact": args["no-redact"],
  help: args.help,
} as const

const importArgs = {
  ...STORE_FLAGS,
  "max-size": args["max-size"],
  "ignore-query": args["ignore-query"],
  help: args.help,
} as const

const EXPORT_USAGE = "Usage: caching-proxy export [--cache-dir DIR | --store URL] [--prefix /api] [-o FILE]"
const IMPORT_USAGE = "Usage: caching-proxy import FILE [--cache-dir DIR | --store URL]"

// How long a command waits for its store (a Redis to connect, the disk index to be read).
const STORE_WAIT_MS = 10_000

/** The subcommands by name; each resolves to the exit code. */
export const ARCHIVE_COMMANDS: Record<string, (argv: string[], context: CommandContext) => Promise<number>> = {
  export: exportCommand,
  import: importCommand,
}

/** The command line, after the flags of this command it leaves out that come from their variables (CACHING_PROXY_CACHE_DIR…). */
function withEnvironment(argv: string[], table: object): string[] {
  const fromEnvironment = [...flagsFromEnvironment(argv, process.env)].filter(([name]) => name in table).map(([, { arg }]) => arg)
  return joinRepeated([...fromEnvironment, ...argv])
}

// The proxy's flags a command takes, converted by the proxy's own parseOptions.
const SHARED_FLAGS = new Set([...Object.keys(STORE_FLAGS), "max-size", "ignore-query"])

/**
 * The store options a command's flags name, validated as the proxy's are. Parsed as a store
 * action (as --clear-cache is), which needs no --origin: a command never contacts one.
 */
function storeOptions(parsed: Record<string, unknown>): ProxyOptions {
  const flags = Object.entries(parsed).flatMap(([name, value]) => (SHARED_FLAGS.has(name) ? [`--${name}=${value}`] : []))
  return parseOptions(parseArgs([...flags, "--clear-cache"], args))
}

async function openedStore(options: ProxyOptions, context: CommandContext): Promise<Behind> {
  if (options.store.kind === "file") checkCacheDir(options.cacheDir)
  const store = await context.openStore(options, createWarn())
  let timer: ReturnType<typeof setTimeout> | undefined
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`the store did not answer within ${STORE_WAIT_MS / 1000} s`)), STORE_WAIT_MS)
  })
  try {
    await Promise.race([store.ready().then(() => store.ping()), late])
  } catch (error) {
    await store.close()
    throw error
  } finally {
    clearTimeout(timer)
  }
  return store
}

function usage(text: string, table: Record<string, { description: string; valueHint?: string }>): string {
  const flags = Object.entries(table).map(
    ([name, def]) => `  --${name}${def.valueHint ? ` ${def.valueHint}` : ""}\n      ${def.description}`,
  )
  return [text, "", ...flags].join("\n")
}

/** `export`: every stored variant as one HAR entry, sorted by URL, secrets redacted. */
async function exportCommand(argv: string[], context: CommandContext): Promise<number> {
  checkRawArgs(argv, exportArgs)
  const parsed = parseArgs(withEnvironment(argv, exportArgs), exportArgs)
  if (parsed.help) {
    console.log(usage(`${EXPORT_USAGE}\nWrites the stored responses as an HTTP Archive (HAR 1.2).`, exportArgs))
    return 0
  }
  const options = storeOptions(parsed)
  const names = parseRedact(parsed as Parameters<typeof parseRedact>[0])
  if (names === false) console.error(`caching-proxy: warning: ${NO_REDACT_WARNING}`)
  const redacted = redaction(names)
  const prefix = parsed.prefix ?? ""
  if (parsed.output === "") throw new UsageError("--output needs a value")
  const store = await openedStore(options, context)
  const output = parsed.output === undefined ? undefined : resolve(parsed.output)
  const out = await openOutput(output)
  try {
    const listed = (await everyVariant(store)).filter(({ key }) => pathOf(key).startsWith(prefix))
    const { head, tail } = harFrame(context.version)
    await out.write(head)
    let written = 0
    for (const { key, meta } of listed) {
      const stored = await store.get(key, varyHeaders(meta.vary))
      if (!stored) continue // gone since it was listed
      await out.write(
        `${written++ === 0 ? "" : ",\n"}${JSON.stringify(harEntry(key.slice("GET ".length), stored.meta, await bodyBytes(stored.body), redacted))}`,
      )
    }
    await out.write(tail)
    await out.done()
    if (output) console.error(`caching-proxy: exported ${written} responses to ${output}`)
    return 0
  } catch (error) {
    await out.abandon()
    throw error
  } finally {
    await store.close()
  }
}

/** Every live variant's key and meta, sorted by URL, then by Vary selection: the same cache gives the same file. */
async function everyVariant(store: Behind): Promise<{ key: string; meta: EntryMeta }[]> {
  const all: ListedEntry[] = []
  let cursor: string | undefined
  do {
    const page = await store.list({ cursor, limit: 1000 })
    all.push(...page.entries)
    cursor = page.cursor
  } while (cursor !== undefined)
  const order = (entry: ListedEntry) => `${entry.key}\n${JSON.stringify(entry.meta.vary)}`
  return all
    .map((entry) => ({ entry, order: order(entry) }))
    .sort((a, b) => (a.order < b.order ? -1 : a.order > b.order ? 1 : 0))
    .map(({ entry }) => entry)
}

/** The path and query of a key's URL. */
function pathOf(key: string): string {
  const url = key.slice("GET ".length)
  return URL.canParse(url) ? url.slice(new URL(url).origin.length) : url
}

/** Where an export goes: standard output, or a file that appears only once whole. */
async function openOutput(path: string | undefined) {
  if (path === undefined) {
    return {
      write: (text: string) => new Promise<void>((done, fail) => process.stdout.write(text, (error) => (error ? fail(error) : done()))),
      done: async () => {},
      abandon: async () => {},
    }
  }
  const partial = `${path}.partial-${process.pid}`
  const file: FileHandle = await open(partial, "w").catch((error: Error) => {
    throw new UsageError(`--output ${path} cannot be written: ${error.message}`)
  })
  return {
    write: async (text: string) => {
      await file.write(text)
    },
    done: async () => {
      await file.close()
      await rename(partial, path)
    },
    abandon: async () => {
      await file.close().catch(() => undefined) // closed already by done(): nothing to close
      await rm(partial, { force: true })
    },
  }
}

/**
 * `import FILE`: a HAR's entries into the store. Every entry is checked before any is written, and
 * a write that fails removes what this import wrote: a failed import leaves nothing half-done.
 */
async function importCommand(argv: string[], context: CommandContext): Promise<number> {
  checkRawArgs(argv, importArgs, 1)
  const parsed = parseArgs(withEnvironment(argv, importArgs), importArgs)
  if (parsed.help) {
    console.log(usage(`${IMPORT_USAGE}\nLoads an HTTP Archive (ours, a browser's or Playwright's) into the store.`, importArgs))
    return 0
  }
  const [file] = parsed._
  if (file === undefined) throw new UsageError(`import needs the HAR file to read (${IMPORT_USAGE})`)
  const options = storeOptions(parsed)
  const text = await readFile(file, "utf8").catch((error: NodeJS.ErrnoException) => {
    throw new UsageError(`${file} cannot be read: ${error.code === "ENOENT" ? "no such file" : error.message}`)
  })
  let har: ReturnType<typeof readHar>
  try {
    // Not redacted: imported entries answer the requests the proxy will see, as they come.
    har = readHar(text, new Set(options.ignoreQuery), redaction(false), Date.now())
  } catch (error) {
    throw error instanceof HarError ? new UsageError(`${file}: ${error.message}; nothing was imported`) : error
  }
  const store = await openedStore(options, context)
  const written = new Set<string>()
  try {
    for (const { key, url, meta, body } of har.entries) {
      written.add(key)
      const kept = await store.put(key, meta, new Response(body).body as ReadableStream<Uint8Array>)
      if (!kept) throw new Error(`${url} (${body.byteLength} bytes) does not fit the store's size limit`)
    }
  } catch (error) {
    await Promise.all([...written].map((key) => store.delete(key)))
    await store.close()
    throw new Error(`${file}: ${(error as Error).message}; nothing was imported`)
  }
  await store.close()
  const skipped = har.skipped ? ` (${har.skipped} left out: not GET, or no final status)` : ""
  console.log(`caching-proxy: imported ${har.entries.length} responses from ${file}${skipped}`)
  return 0
}
