/**
 * The builds, each with the package version and the git commit embedded by `--define`, which
 * `--version` prints (run from source, it reads them at start instead):
 *   bun .ci/build.ts node      dist/cli.js: the Node bundle npm ships, every dependency inside
 *   bun .ci/build.ts binary    dist/caching-proxy: a standalone executable for this machine
 *   bun .ci/build.ts release   dist/release/: an executable per platform, and SHA256SUMS
 * Executables never load a .env or bunfig.toml from the directory they run in: they are not
 * projects, and a stray file there must not change how the proxy runs.
 */
import { mkdirSync, rmSync, writeFileSync } from "node:fs"
import { basename, join } from "node:path"
import { $ } from "bun"
import packageJson from "../package.json" with { type: "json" }

const ROOT = join(import.meta.dir, "..")
const DIST = join(ROOT, "dist")
export const RELEASE_DIR = join(DIST, "release")

/** Every platform a release has a binary for: Bun's compile target, and the file it is written to. */
export const RELEASE_TARGETS = [
  { target: "bun-linux-x64", file: "caching-proxy-linux-x64" },
  { target: "bun-linux-arm64", file: "caching-proxy-linux-arm64" },
  { target: "bun-linux-x64-musl", file: "caching-proxy-linux-x64-musl" },
  { target: "bun-darwin-x64", file: "caching-proxy-darwin-x64" },
  { target: "bun-darwin-arm64", file: "caching-proxy-darwin-arm64" },
  { target: "bun-windows-x64", file: "caching-proxy-windows-x64.exe" },
] as const

async function commit(): Promise<string> {
  const result = await $`git rev-parse --short=12 HEAD`.cwd(ROOT).nothrow().quiet()
  return result.exitCode === 0 ? result.text().trim() : "unknown"
}

/** The `--define`s that give proxy.ts its version and commit. */
async function defines(): Promise<string[]> {
  return ["--define", `BUILD_VERSION=${JSON.stringify(packageJson.version)}`, "--define", `BUILD_COMMIT=${JSON.stringify(await commit())}`]
}

const COMPILE = ["--compile", "--minify", "--sourcemap", "--no-compile-autoload-dotenv", "--no-compile-autoload-bunfig"]

async function buildNode(): Promise<void> {
  await $`bun build proxy.ts --target=node --banner ${"#!/usr/bin/env node"} ${await defines()} --outfile ${join(DIST, "cli.js")}`
    .cwd(ROOT)
    .quiet()
}

async function buildBinary(): Promise<void> {
  await $`bun build proxy.ts ${COMPILE} ${await defines()} --outfile ${join(DIST, "caching-proxy")}`.cwd(ROOT).quiet()
}

async function buildRelease(): Promise<void> {
  rmSync(RELEASE_DIR, { recursive: true, force: true })
  mkdirSync(RELEASE_DIR, { recursive: true })
  const define = await defines()
  // One at a time: each downloads its target's Bun once, then compiles in a few seconds.
  for (const { target, file } of RELEASE_TARGETS) {
    await $`bun build proxy.ts ${COMPILE} --target=${target} ${define} --outfile ${join(RELEASE_DIR, file)}`.cwd(ROOT).quiet()
    // The executable carries its source map; the copy written beside it is not released.
    rmSync(join(RELEASE_DIR, `${file}.map`), { force: true })
    console.log(`built ${file}`)
  }
  const sums = await Promise.all(RELEASE_TARGETS.map(async ({ file }) => `${await sha256(join(RELEASE_DIR, file))}  ${file}\n`))
  writeFileSync(join(RELEASE_DIR, "SHA256SUMS"), sums.join(""))
  console.log(`wrote ${basename(RELEASE_DIR)}/SHA256SUMS`)
}

/** A file's SHA-256 in hex, read as a stream (the binaries are about 100 MB each). */
export async function sha256(path: string): Promise<string> {
  const hasher = new Bun.CryptoHasher("sha256")
  for await (const chunk of Bun.file(path).stream()) hasher.update(chunk)
  return hasher.digest("hex")
}

const BUILDS: Record<string, () => Promise<void>> = { node: buildNode, binary: buildBinary, release: buildRelease }

if (import.meta.main) {
  const build = BUILDS[process.argv[2] ?? ""]
  if (!build) {
    console.error(`usage: bun .ci/build.ts ${Object.keys(BUILDS).join("|")}`)
    process.exit(2)
  }
  await build()
}
