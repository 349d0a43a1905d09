/** The report the phases fill: its rows, raw wrk figures and notes, and how a figure becomes a row. */
import type { WrkSummary } from "./harness.ts"

type Verdict = "PASS" | "FAIL" | "INFO" | "ERROR"

export interface Row {
  measure: string
  proxy: string
  reference: string
  ratio: string
  target: string
  verdict: Verdict
}

/** Raw figures behind the ratios, for the second table. */
interface RawRow {
  target: string
  summary: WrkSummary
}

interface Report {
  rows: Row[]
  raw: RawRow[]
  /** Anything surprising seen on the way: wrong X-Cache, errors, stderr from the proxy. */
  notes: string[]
}

export const report: Report = { rows: [], raw: [], notes: [] }

export const formatRate = (rps: number) => `${Math.round(rps).toLocaleString("en-US")} req/s`
export const formatMs = (ms: number) => `${ms.toFixed(2)} ms`
export const formatMicros = (us: number) => `${us.toFixed(1)} µs`
export const formatSpeed = (mibPerSecond: number) => `${Math.round(mibPerSecond).toLocaleString("en-US")} MiB/s`

/** A row comparing proxy/reference against a bound on their ratio. */
export function ratioRow(
  measure: string,
  proxy: number,
  reference: number,
  format: (value: number) => string,
  bound: "≥" | "≤",
  factor: number,
): Row {
  const ratio = proxy / reference
  const pass = bound === "≥" ? ratio >= factor : ratio <= factor
  return {
    measure,
    proxy: format(proxy),
    reference: format(reference),
    ratio: `${ratio.toFixed(2)}×`,
    target: `${bound} ${factor}×`,
    verdict: Number.isFinite(ratio) && pass ? "PASS" : "FAIL",
  }
}

export function errorRows(measures: string[], error: unknown): Row[] {
  const message = error instanceof Error ? error.message : String(error)
  report.notes.push(`${measures[0]}: ${message}`)
  return measures.map((measure) => ({ measure, proxy: "—", reference: "—", ratio: "—", target: "—", verdict: "ERROR" }))
}

/** A row reported for information, without a target. */
export function informative(row: Row): Row {
  return { ...row, target: "(info)", verdict: "INFO" }
}
