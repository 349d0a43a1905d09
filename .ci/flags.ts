/**
 * The README's flag table, generated from the one definition of the flags (proxy/options.ts),
 * which `--help` is printed from too, so the two cannot disagree:
 *   bun .ci/flags.ts           writes the table between the markers in README.md
 *   bun .ci/flags.ts --check   exits 1 when README.md's table is not the one it would write
 */
import { readFileSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { flagTable } from "../proxy/help.ts"
import { args, isSetting } from "../proxy/options.ts"

export const README = join(import.meta.dir, "..", "README.md")
const START = "<!-- flags:start -->"
const END = "<!-- flags:end -->"

/** The README with the generated table between its markers; an error when they are missing. */
export function withFlagTable(readme: string): string {
  const start = readme.indexOf(START)
  const end = readme.indexOf(END, start)
  if (start === -1 || end === -1) throw new Error(`README.md has no ${START} … ${END} markers to put the flag table between`)
  return `${readme.slice(0, start + START.length)}\n\n${flagTable(args, isSetting)}\n\n${readme.slice(end)}`
}

if (import.meta.main) {
  const readme = readFileSync(README, "utf8")
  const generated = withFlagTable(readme)
  if (process.argv.includes("--check")) {
    if (generated !== readme) {
      console.error("README.md's flag table is not the one the flags generate: run npm run docs:flags")
      process.exit(1)
    }
  } else if (generated !== readme) {
    writeFileSync(README, generated)
    console.log("README.md: flag table written")
  }
}
