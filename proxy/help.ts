/**
 * `--help`: every flag with its value, default and environment variable, in 80 columns.
 * citty's own usage pads each line to its longest description (about 150 columns) and cannot
 * name the environment variables, so the text is built here from the same `args` table.
 */

interface FlagDef {
  type: "string" | "boolean"
  description: string
  default?: string
  alias?: string
  valueHint?: string
}

const WIDTH = 80
// Flags and their value hints sit in this column; longer ones put their description on the next line.
const FLAG_COLUMN = 26

/** CACHING_PROXY_<FLAG>: the variable that stands in for a flag the command line leaves out. */
export function environmentVariable(flag: string): string {
  return `CACHING_PROXY_${flag.toUpperCase().replaceAll("-", "_")}`
}

/** Words of `text` in lines of at most `width` characters (a longer word gets a line of its own). */
function wrap(text: string, width: number): string[] {
  const lines: string[] = []
  let line = ""
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line)
      line = word
    } else line = line ? `${line} ${word}` : word
  }
  return line ? [...lines, line] : lines
}

/** The help text: usage, then one block per flag. `settable` says which flags read a variable. */
export function helpText(summary: string, flags: Record<string, FlagDef>, settable: (flag: string) => boolean): string {
  const indent = " ".repeat(FLAG_COLUMN)
  const blocks = Object.entries(flags).map(([name, def]) => {
    const spelling = `  --${name}${def.type === "string" ? ` ${def.valueHint ?? "VALUE"}` : ""}${def.alias ? `, -${def.alias}` : ""}`
    const facts = [def.default === undefined ? "" : `default: ${def.default}`, settable(name) ? `env: ${environmentVariable(name)}` : ""]
    const text = [def.description, facts.filter(Boolean).join(", ")].filter(Boolean)
    const lines = text.flatMap((part) => wrap(part, WIDTH - FLAG_COLUMN))
    const first = spelling.length < FLAG_COLUMN - 1 ? `${spelling.padEnd(FLAG_COLUMN)}${lines.shift() ?? ""}` : spelling
    return [first, ...lines.map((line) => indent + line)].join("\n")
  })
  return [
    summary,
    "",
    "Usage: caching-proxy --origin URL [flags]",
    "",
    ...wrap("Flags (each setting can also come from its environment variable; the command line wins):", WIDTH),
    ...blocks,
  ].join("\n")
}
