/**
 * `--help`: every flag with its value, default and environment variable, in 80 columns, and the
 * README's flag table with the same facts (`npm run docs:flags`), so the two cannot disagree.
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

/** How a flag is spelled with its value and alias: "--port N", "--help, -h". */
function spelling(name: string, def: FlagDef): string {
  return `--${name}${def.type === "string" ? ` ${def.valueHint ?? "VALUE"}` : ""}${def.alias ? `, -${def.alias}` : ""}`
}

/** The help text: usage, then one block per flag. `settable` says which flags read a variable. */
export function helpText(summary: string, flags: Record<string, FlagDef>, settable: (flag: string) => boolean): string {
  const indent = " ".repeat(FLAG_COLUMN)
  const blocks = Object.entries(flags).map(([name, def]) => {
    const flag = `  ${spelling(name, def)}`
    const facts = [def.default === undefined ? "" : `default: ${def.default}`, settable(name) ? `env: ${environmentVariable(name)}` : ""]
    const text = [def.description, facts.filter(Boolean).join(", ")].filter(Boolean)
    const lines = text.flatMap((part) => wrap(part, WIDTH - FLAG_COLUMN))
    const first = flag.length < FLAG_COLUMN - 1 ? `${flag.padEnd(FLAG_COLUMN)}${lines.shift() ?? ""}` : flag
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

/** Text as one Markdown table cell: a "|" would end the cell, a "<" open an HTML tag. */
function cell(text: string): string {
  return text.replace(/[|<]/g, "\\$&")
}

/**
 * The README's flag table (Markdown): flag, environment variable, default and meaning, one row per
 * flag in `--help`'s order, its columns padded to line up in the source.
 */
export function flagTable(flags: Record<string, FlagDef>, settable: (flag: string) => boolean): string {
  const code = (text: string) => (text ? `\`${text}\`` : "")
  const rows = Object.entries(flags).map(([name, def]) => [
    code(spelling(name, def)),
    code(settable(name) ? environmentVariable(name) : ""),
    code(def.default ?? ""),
    cell(def.description),
  ])
  const header = ["flag", "environment variable", "default", "meaning"]
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => (row[column] as string).length)))
  const line = (row: string[]) => `| ${row.map((text, column) => text.padEnd(widths[column] as number)).join(" | ")} |`
  return [line(header), line(widths.map((width) => "-".repeat(width))), ...rows.map(line)].join("\n")
}
