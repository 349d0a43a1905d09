/**
 * One cache directory, one owner: a lock file `<dir>/lock` naming the process that holds it.
 *
 * Two proxies on one directory would each bound it to --max-size (together twice that) and each
 * take the other's half-written files for an earlier crash's leftovers. Workers of one proxy are
 * one owner: their primary holds the lock.
 *
 * The lock is a file made whole under a temporary name, then linked into place: link() fails if
 * the lock exists, so exactly one of two starting proxies gets it, and nobody ever reads a lock
 * with no pid in it yet. A lock whose process is gone (a crash, SIGKILL) is taken over: renamed
 * away, checked to be the one that was found stale, and replaced. The lock names a pid, not a
 * process: a pid reused since by another program keeps the directory locked until the file is
 * removed by hand, which the refusal says how to do.
 */
import { randomBytes } from "node:crypto"
import { linkSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"

const LOCK_FILE = "lock"
// Lock files are a pid and a newline: anything longer is not ours.
const PID_TEXT = /^(\d{1,10})\n?$/
// A takeover that finds the lock taken again by another starting proxy gives up after this many rounds.
const MAX_ATTEMPTS = 3

/** The directory is held by a running process: `pid`. */
export class DirInUse extends Error {
  constructor(
    readonly dir: string,
    readonly pid: number,
  ) {
    super(`${dir} is in use by process ${pid} (one proxy per cache directory; if that is no caching-proxy, remove ${join(dir, LOCK_FILE)})`)
  }
}

/**
 * Takes the directory's lock for this process; `said` is told of a stale lock taken over (a warning
 * without the log line's prefix).
 * Returns what gives it back (the lock file removed, if it still names this process).
 * Throws `DirInUse` when a running process holds it.
 */
export function lockDir(dir: string, said: (line: string) => void): () => void {
  const path = join(dir, LOCK_FILE)
  const own = `${process.pid}\n`
  for (let attempt = 1; ; attempt++) {
    if (tryLink(path, own)) break
    const holder = holderOf(path)
    if (holder !== undefined && holder !== process.pid && isRunning(holder)) throw new DirInUse(dir, holder)
    if (attempt === MAX_ATTEMPTS) throw new Error(`${path} keeps being taken by another process starting on ${dir}`)
    if (takeAway(path, holder))
      said(`took over ${path} from ${holder === undefined ? "no process (it named none)" : `process ${holder}, which is gone`}`)
  }
  return () => {
    if (holderOf(path) === process.pid) rmSync(path, { force: true })
  }
}

/** Makes the lock with `text` in it, whole: false when there is one already. */
function tryLink(path: string, text: string): boolean {
  const temp = `${path}.${randomBytes(6).toString("hex")}.tmp`
  writeFileSync(temp, text, { flag: "wx" })
  try {
    linkSync(temp, path)
    return true
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "EEXIST") return false
    throw error
  } finally {
    rmSync(temp, { force: true })
  }
}

/** The pid a lock names; undefined when it is gone or names none (then it holds nothing). */
function holderOf(path: string): number | undefined {
  try {
    const match = PID_TEXT.exec(readFileSync(path, "utf8"))
    return match ? Number(match[1]) : undefined
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined
    throw error
  }
}

/** Whether a process with this pid runs (one of another user's counts: it cannot be signalled, but is there). */
function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
}

/**
 * Moves a stale lock out of the way: true once it is gone. If what was moved is not the lock
 * found stale (another starting proxy replaced it meanwhile), it is put back and false returned:
 * the next round finds that proxy holding the directory.
 */
function takeAway(path: string, stalePid: number | undefined): boolean {
  const moved = `${path}.${randomBytes(6).toString("hex")}.stale`
  try {
    renameSync(path, moved)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return false // released meanwhile: the next round takes it
    throw error
  }
  const movedPid = holderOf(moved)
  if (movedPid !== stalePid) {
    try {
      linkSync(moved, path)
    } catch (error) {
      // Taken yet again meanwhile: the next round finds whoever holds it now.
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error
    }
  }
  rmSync(moved, { force: true })
  return movedPid === stalePid
}
