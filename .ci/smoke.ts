/**
 * Smoke test of the release artifacts in dist/release/ (`npm run release` first), run by .ci/run:
 * - every executable exists, matches SHA256SUMS, and has its platform's file format: ELF for
 *   x86-64 or aarch64 (glibc's or musl's loader), Mach-O for x86-64 or arm64, PE for x86-64.
 *   The headers are read here, not by `file`, so nothing else needs installing.
 * - this machine's executable runs: --version, then a request to a local origin (MISS), its
 *   repeat (HIT), and SIGTERM (exit 0).
 * - with --arm64-under-qemu, the linux-arm64 executable runs the same under qemu-user.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import packageJson from "../package.json" with { type: "json" }
import { RELEASE_DIR, RELEASE_TARGETS, sha256 } from "./build.ts"

// Where Debian's libc6-arm64-cross puts the aarch64 loader and libc, for qemu-aarch64 -L.
const ARM64_SYSROOT = "/usr/aarch64-linux-gnu"

interface Format {
  kind: "ELF" | "Mach-O" | "PE"
  machine: string
  /** ELF only: the loader an executable names (glibc's or musl's). */
  interpreter?: string
}

const EXPECTED: Record<string, Format> = {
  "bun-linux-x64": { kind: "ELF", machine: "x86-64", interpreter: "/lib64/ld-linux-x86-64.so.2" },
  "bun-linux-arm64": { kind: "ELF", machine: "aarch64", interpreter: "/lib/ld-linux-aarch64.so.1" },
  "bun-linux-x64-musl": { kind: "ELF", machine: "x86-64", interpreter: "/lib/ld-musl-x86_64.so.1" },
  "bun-darwin-x64": { kind: "Mach-O", machine: "x86-64" },
  "bun-darwin-arm64": { kind: "Mach-O", machine: "arm64" },
  "bun-windows-x64": { kind: "PE", machine: "x86-64" },
}

// ELF e_machine (System V gABI), Mach-O cputype (<mach/machine.h>), PE Machine (PE format spec).
const ELF_MACHINES = new Map([
  [0x3e, "x86-64"],
  [0xb7, "aarch64"],
])
const MACHO_CPUS = new Map([
  [0x01000007, "x86-64"],
  [0x0100000c, "arm64"],
])
const PE_MACHINES = new Map([
  [0x8664, "x86-64"],
  [0xaa64, "arm64"],
])
const PT_INTERP = 3

/** The file format its first bytes say, or undefined for none of the three. */
function formatOf(bytes: Buffer): Format | undefined {
  if (bytes.readUInt32BE(0) === 0x7f454c46 && bytes[4] === 2 /* ELFCLASS64 */) {
    return { kind: "ELF", machine: ELF_MACHINES.get(bytes.readUInt16LE(18)) ?? "unknown", interpreter: elfInterpreter(bytes) }
  }
  if (bytes.readUInt32LE(0) === 0xfeedfacf) return { kind: "Mach-O", machine: MACHO_CPUS.get(bytes.readUInt32LE(4)) ?? "unknown" }
  if (bytes.toString("latin1", 0, 2) === "MZ") {
    const pe = bytes.readUInt32LE(0x3c)
    if (bytes.toString("latin1", pe, pe + 4) === "PE\0\0")
      return { kind: "PE", machine: PE_MACHINES.get(bytes.readUInt16LE(pe + 4)) ?? "unknown" }
  }
  return undefined
}

/** The loader a 64-bit little-endian ELF names in its PT_INTERP program header. */
function elfInterpreter(bytes: Buffer): string | undefined {
  const headersAt = Number(bytes.readBigUInt64LE(32))
  const size = bytes.readUInt16LE(54)
  for (let i = 0; i < bytes.readUInt16LE(56); i++) {
    const header = headersAt + i * size
    if (bytes.readUInt32LE(header) !== PT_INTERP) continue
    const offset = Number(bytes.readBigUInt64LE(header + 8))
    return bytes.toString("latin1", offset, offset + Number(bytes.readBigUInt64LE(header + 32))).replace(/\0+$/, "")
  }
  return undefined
}

const failures: string[] = []

function check(ok: boolean, what: string): void {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}`)
  if (!ok) failures.push(what)
}

async function checkArtifacts(): Promise<void> {
  const listed = new Map(
    readFileSync(join(RELEASE_DIR, "SHA256SUMS"), "utf8")
      .trim()
      .split("\n")
      .map((line) => line.split(/ {2}/) as [string, string])
      .map(([sum, file]) => [file, sum]),
  )
  for (const { target, file } of RELEASE_TARGETS) {
    const path = join(RELEASE_DIR, file)
    if (!(await Bun.file(path).exists())) {
      check(false, `${file} exists`)
      continue
    }
    check(listed.get(file) === (await sha256(path)), `${file} matches SHA256SUMS`)
    // The headers and ELF program headers sit in the first few kilobytes.
    const head = Buffer.from(
      await Bun.file(path)
        .slice(0, 64 * 1024)
        .arrayBuffer(),
    )
    const found = formatOf(head)
    const expected = EXPECTED[target]
    check(JSON.stringify(found) === JSON.stringify(expected), `${file} is ${describe(expected)} (found ${describe(found)})`)
  }
  check(listed.size === RELEASE_TARGETS.length, `SHA256SUMS lists the ${RELEASE_TARGETS.length} executables and nothing else`)
}

function describe(format: Format | undefined): string {
  if (!format) return "no known format"
  return `${format.kind} ${format.machine}${format.interpreter ? ` (loader ${format.interpreter})` : ""}`
}

/** An origin on 127.0.0.1 answering its n-th request with `n`, cacheable for a minute. */
function startOrigin() {
  let requests = 0
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch: () => new Response(String(++requests), { headers: { "cache-control": "max-age=60" } }),
  })
  return { url: server.url.href, requests: () => requests, stop: () => server.stop(true) }
}

/** Runs an executable as a user would: --version, one request and its repeat, then SIGTERM. */
async function smokeRun(name: string, command: string[]): Promise<void> {
  const version = Bun.spawnSync([...command, "--version"])
  check(version.stdout.toString().startsWith(`caching-proxy ${packageJson.version} (commit `), `${name} --version`)
  const origin = startOrigin()
  const cacheDir = mkdtempSync(join(tmpdir(), "caching-proxy-smoke-"))
  const proxy = Bun.spawn([...command, "--port", "0", "--quiet", "--origin", origin.url, "--cache-dir", cacheDir], { stdout: "pipe" })
  try {
    const port = await listeningPort(proxy.stdout)
    const answers = []
    for (let i = 0; i < 2; i++) {
      const response = await fetch(`http://127.0.0.1:${port}/smoke`)
      answers.push(`${await response.text()} ${response.headers.get("x-cache")}`)
    }
    check(answers.join(", ") === "1 MISS, 1 HIT" && origin.requests() === 1, `${name} proxies: MISS, then HIT (${answers.join(", ")})`)
    proxy.kill("SIGTERM")
    check((await proxy.exited) === 0, `${name} stops on SIGTERM with exit code 0`)
  } catch (error) {
    check(false, `${name} runs: ${(error as Error).message}`)
  } finally {
    proxy.kill("SIGKILL")
    origin.stop()
    rmSync(cacheDir, { recursive: true, force: true })
  }
}

/** The port of the proxy's start line, read from its standard output. */
async function listeningPort(stdout: ReadableStream<Uint8Array>): Promise<number> {
  let output = ""
  const decoder = new TextDecoder()
  for await (const chunk of stdout) {
    output += decoder.decode(chunk)
    const port = /listening on http:\/\/(?:\[[^\]]+\]|[^:/]+):(\d+)/.exec(output)?.[1]
    if (port) return Number(port)
  }
  throw new Error(`it exited before listening: ${output}`)
}

/** This machine's executable, as the release names it. */
function hostFile(): string {
  const os = process.platform === "win32" ? "windows" : process.platform
  return `caching-proxy-${os}-${process.arch}${os === "windows" ? ".exe" : ""}`
}

await checkArtifacts()
await smokeRun(hostFile(), [join(RELEASE_DIR, hostFile())])
if (process.argv.includes("--arm64-under-qemu")) {
  await smokeRun("caching-proxy-linux-arm64 under qemu-aarch64", [
    "qemu-aarch64",
    "-L",
    ARM64_SYSROOT,
    join(RELEASE_DIR, "caching-proxy-linux-arm64"),
  ])
}
console.log(failures.length === 0 ? "smoke: all passed" : `smoke: ${failures.length} failed`)
process.exit(failures.length === 0 ? 0 : 1)
