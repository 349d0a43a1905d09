/**
 * Smoke test of what is shipped, run by .ci/run after `npm run release`:
 * - every executable in dist/release/ exists, matches SHA256SUMS, and has its platform's file
 *   format: ELF for x86-64 or aarch64 (glibc's or musl's loader), Mach-O for x86-64 or arm64, PE
 *   for x86-64. The headers are read here, not by `file`, so nothing else needs installing.
 * - this machine's executable runs as a user runs it: --version names the version and the commit
 *   it was built from (with no git repository to ask), a request to a local origin is a MISS and
 *   its repeat a HIT, a restart still HITs, --clear-cache makes the next one a MISS, SIGTERM
 *   exits 0; a .env or bunfig.toml in its working directory changes nothing.
 * - with --arm64-under-qemu, the linux-arm64 executable runs the same under qemu-user.
 * - the npm package (`npm pack`) holds the Node bundle, README and LICENSE, declares no
 *   dependencies or install scripts, installs with no warning, and runs from the tarball alone
 *   (npx, npm exec, bunx, bunx --bun) and once installed (npx, bunx --bun).
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import packageJson from "../package.json" with { type: "json" }
import { RELEASE_DIR, RELEASE_TARGETS, sha256 } from "./build.ts"

const ROOT = join(import.meta.dir, "..")
const BUNX = join(ROOT, "node_modules", ".bin", "bunx")

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

/** An origin on 127.0.0.1 answering its n-th request with `n`, cacheable for ten minutes. */
function startOrigin() {
  let requests = 0
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch: () => new Response(String(++requests), { headers: { "cache-control": "max-age=600" } }),
  })
  return { url: server.url.href, requests: () => requests, stop: () => server.stop(true) }
}

// Git told to look for the repository where there is none: a build that asked git at run time
// would print "unknown", one that embedded its commit prints it.
const NO_CLONE = { ...process.env, GIT_DIR: join(tmpdir(), "caching-proxy-no-such-repository") }

/** What --version prints for this checkout: the package version and the commit checked out. */
function expectedVersion(): string {
  const commit = Bun.spawnSync(["git", "rev-parse", "--short=12", "HEAD"], { cwd: ROOT }).stdout.toString().trim()
  return `caching-proxy ${packageJson.version} (commit ${commit})\n`
}

/** A temporary directory, removed by `using`. */
function ownedDir(name: string) {
  const path = mkdtempSync(join(tmpdir(), `caching-proxy-smoke-${name}-`))
  return { path, [Symbol.dispose]: () => rmSync(path, { recursive: true, force: true }) }
}

/** The proxy as `command` runs it in `cwd`, on port 0; resolves once it says where it listens. */
async function startProxy(command: string[], flags: string[], cwd?: string, env: Record<string, string | undefined> = process.env) {
  const proxy = Bun.spawn([...command, "--port", "0", ...flags], { stdout: "pipe", cwd, env, detached: true })
  try {
    const { port, output } = await listeningPort(proxy.stdout)
    return { proxy, port, output }
  } catch (error) {
    proxy.kill("SIGKILL")
    throw error
  }
}

/** Stops a proxy and every process under it (npx and bunx run it as a grandchild): its exit code. */
async function stop(proxy: Bun.Subprocess): Promise<number> {
  try {
    process.kill(-proxy.pid, "SIGTERM")
  } catch {
    // the group is gone already
  }
  return await proxy.exited
}

/**
 * Runs the proxy as a user would, through `command` in `cwd`: --version, then a request and its
 * repeat (MISS, HIT), a restart on the same cache (HIT), --clear-cache, a restart (MISS), each
 * stopped by SIGTERM, with exit code 0 when `command` is the proxy itself (npx or bunx, standing between,
 * dies of the signal its process group gets: 143).
 */
async function smokeRun(name: string, command: string[], { cwd, exitsItself = true }: { cwd?: string; exitsItself?: boolean } = {}) {
  const version = Bun.spawnSync([...command, "--version"], { cwd, env: NO_CLONE })
  check(version.stdout.toString() === expectedVersion(), `${name} --version: the version and commit it was built from`)
  const origin = startOrigin()
  using cacheDir = ownedDir("cache")
  const flags = ["--quiet", "--origin", origin.url, "--cache-dir", cacheDir.path]
  try {
    const answers: string[] = []
    const exits: number[] = []
    const run = async (requests: number) => {
      const { proxy, port } = await startProxy(command, flags, cwd)
      try {
        for (let i = 0; i < requests; i++) {
          const response = await fetch(`http://127.0.0.1:${port}/smoke`)
          answers.push(`${await response.text()} ${response.headers.get("x-cache")}`)
        }
      } finally {
        exits.push(await stop(proxy))
      }
    }
    await run(2)
    await run(1)
    const cleared = Bun.spawnSync([...command, "--clear-cache", "--cache-dir", cacheDir.path], { cwd })
    check(cleared.exitCode === 0, `${name} --clear-cache exits 0`)
    await run(1)
    const seen = answers.join(", ")
    check(
      seen === "1 MISS, 1 HIT, 1 HIT, 2 MISS" && origin.requests() === 2,
      `${name}: MISS, HIT, HIT after a restart, MISS after --clear-cache (${seen})`,
    )
    if (exitsItself)
      check(
        exits.every((code) => code === 0),
        `${name} stops on SIGTERM with exit code 0 (${exits.join(", ")})`,
      )
  } catch (error) {
    check(false, `${name} runs: ${(error as Error).message}`)
  } finally {
    origin.stop()
  }
}

/** An executable is not a project: a .env and a bunfig.toml where it runs change nothing. */
async function ignoresProjectFiles(name: string, command: string[]): Promise<void> {
  const origin = startOrigin()
  using cwd = ownedDir("cwd")
  using home = ownedDir("home")
  writeFileSync(join(cwd.path, ".env"), `XDG_CACHE_HOME=${join(cwd.path, "from-dotenv")}\n`)
  writeFileSync(join(cwd.path, "preload.ts"), `require("node:fs").writeFileSync(${JSON.stringify(join(cwd.path, "preloaded"))}, "")\n`)
  writeFileSync(join(cwd.path, "bunfig.toml"), `preload = ["./preload.ts"]\n`)
  try {
    const { proxy, output } = await startProxy(command, ["--origin", origin.url], cwd.path, {
      ...process.env,
      XDG_CACHE_HOME: undefined,
      HOME: home.path,
    })
    await stop(proxy)
    check(
      output.split("\n")[0]?.includes(`cache in ${join(home.path, ".cache", "caching-proxy")}`) === true,
      `${name} ignores a .env in its working directory`,
    )
    check(!existsSync(join(cwd.path, "preloaded")), `${name} ignores a bunfig.toml in its working directory`)
  } catch (error) {
    check(false, `${name} runs in a directory with a .env and a bunfig.toml: ${(error as Error).message}`)
  } finally {
    origin.stop()
  }
}

/** Runs a command to completion. */
function run(command: string[], cwd?: string, env: Record<string, string | undefined> = process.env) {
  const ran = Bun.spawnSync(command, { cwd, env })
  return { stdout: ran.stdout.toString(), stderr: ran.stderr.toString(), code: ran.exitCode }
}

/** The npm package as `npm pack` makes it, installed in an empty project and run from the tarball alone. */
async function checkPackage(): Promise<void> {
  using folder = ownedDir("package")
  const packed = run(["npm", "pack", "--silent", "--pack-destination", folder.path], ROOT)
  if (packed.code !== 0) return check(false, `npm pack: ${packed.stderr}`)
  const file = packed.stdout.trim().split("\n").pop() ?? ""
  const tarball = join(folder.path, file)
  const listed = run(["tar", "-tzf", tarball]).stdout.trim().split("\n").sort()
  const contents = ["package/LICENSE", "package/README.md", "package/dist/cli.js", "package/package.json"]
  check(JSON.stringify(listed) === JSON.stringify(contents), `the package holds the Node bundle, README and LICENSE (${listed.join(", ")})`)
  const manifest = JSON.parse(run(["tar", "-xzOf", tarball, "package/package.json"]).stdout)
  check(JSON.stringify(manifest.bin) === JSON.stringify({ "caching-proxy": "dist/cli.js" }), "the package's bin is dist/cli.js")
  const declared = ["dependencies", "optionalDependencies", "peerDependencies", "bundleDependencies"].filter((field) => field in manifest)
  check(declared.length === 0, `the package declares no dependencies (${declared.join(", ")})`)
  const scripts = ["preinstall", "install", "postinstall", "prepare"].filter((script) => manifest.scripts?.[script] !== undefined)
  check(scripts.length === 0, `the package has no install scripts (${scripts.join(", ")})`)
  const project = join(folder.path, "project")
  mkdirSync(project)
  writeFileSync(join(project, "package.json"), "{}")
  const installed = run(["npm", "install", "--no-audit", "--no-fund", "--prefer-offline", tarball], project)
  // Installing it adds one package (itself) and warns of nothing.
  check(
    installed.code === 0 && installed.stdout.includes("added 1 package") && installed.stderr === "",
    `npm install adds the package alone, with no warning (${installed.stderr.trim()})`,
  )
  const fromTarball: [string, string[]][] = [
    ["npx --yes ./<tarball> (Node)", ["npx", "--yes", `./${file}`]],
    ["npm exec (Node)", ["npm", "exec", "--yes", `--package=./${file}`, "--", "caching-proxy"]],
    // bunx reads a tarball given by its absolute path only.
    ["bunx (Node, as the bin's #! line says)", [BUNX, "--package", tarball, "caching-proxy"]],
    ["bunx --bun (Bun)", [BUNX, "--bun", "--package", tarball, "caching-proxy"]],
  ]
  for (const [name, command] of fromTarball) {
    // An npm cache of its own, as on a first use: npm exec keys what it installed by the spec
    // ("./<file>"), and would run an earlier run's tarball of the same name.
    const ran = run([...command, "--version"], folder.path, {
      ...process.env,
      npm_config_cache: join(folder.path, `npm-cache-${name.length}`),
    })
    check(
      ran.code === 0 && ran.stdout === expectedVersion() && !/warn|script/i.test(ran.stderr),
      `${name} runs it from the tarball alone: --version, with no warning (${ran.stdout.trim()} ${ran.stderr.trim()})`,
    )
  }
  await smokeRun("npx caching-proxy (Node), installed", ["npx", "--no-install", "caching-proxy"], { cwd: project, exitsItself: false })
  await smokeRun("bunx --bun caching-proxy (Bun), installed", [BUNX, "--bun", "caching-proxy"], { cwd: project, exitsItself: false })
}

/** The port of the proxy's start line, read from its standard output, and the output so far. */
async function listeningPort(stdout: ReadableStream<Uint8Array>): Promise<{ port: number; output: string }> {
  let output = ""
  const decoder = new TextDecoder()
  for await (const chunk of stdout) {
    output += decoder.decode(chunk)
    const port = /listening on http:\/\/(?:\[[^\]]+\]|[^:/]+):(\d+)/.exec(output)?.[1]
    if (port) return { port: Number(port), output }
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
await ignoresProjectFiles(hostFile(), [join(RELEASE_DIR, hostFile())])
if (process.argv.includes("--arm64-under-qemu")) {
  await smokeRun("caching-proxy-linux-arm64 under qemu-aarch64", [
    "qemu-aarch64",
    "-L",
    ARM64_SYSROOT,
    join(RELEASE_DIR, "caching-proxy-linux-arm64"),
  ])
}
await checkPackage()
console.log(failures.length === 0 ? "smoke: all passed" : `smoke: ${failures.length} failed`)
process.exit(failures.length === 0 ? 0 : 1)
