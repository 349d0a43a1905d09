import { expect, test } from "bun:test"
import { readFileSync } from "node:fs"
import { README, withFlagTable } from "../.ci/flags.ts"

test("README.md's flag table is the one the flags generate, as --help is (npm run docs:flags writes it)", () => {
  const readme = readFileSync(README, "utf8")
  expect(readme).toBe(withFlagTable(readme))
})
