/**
 * The deployment files in docs/deploy/ are checked as their tools check them, so a unit that
 * systemd would half-ignore is caught here rather than on a server.
 */
import { describe, expect, test } from "bun:test"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"

const UNIT = join(import.meta.dir, "deploy", "caching-proxy.service")
const INSTALLED_BINARY = "/usr/local/bin/caching-proxy"

describe("docs/deploy/caching-proxy.service", () => {
  test("passes systemd-analyze verify with no warning", () => {
    const analyze = Bun.which("systemd-analyze")
    // Not a skip: CI must run this check, so a machine without the tool fails with what to install.
    if (!analyze) throw new Error("systemd-analyze not found: install systemd (apt-get install -y systemd)")
    const unit = readFileSync(UNIT, "utf8")
    expect(unit).toContain(`ExecStart=${INSTALLED_BINARY}`)
    // verify also checks that ExecStart names an executable, and the binary is installed only on
    // a server: the copy checked here names this test's own runtime instead, every other line as is.
    const dir = mkdtempSync(join(tmpdir(), "caching-proxy-unit-"))
    try {
      const copy = join(dir, "caching-proxy.service")
      writeFileSync(copy, unit.replace(`ExecStart=${INSTALLED_BINARY}`, `ExecStart=${process.execPath}`))
      const result = Bun.spawnSync([analyze, "verify", copy])
      // verify exits 0 on an unknown key or a value it cannot parse, and only warns: both must be empty.
      expect({ code: result.exitCode, stderr: result.stderr.toString(), stdout: result.stdout.toString() }).toEqual({
        code: 0,
        stderr: "",
        stdout: "",
      })
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
