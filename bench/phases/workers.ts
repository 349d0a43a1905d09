/** The workers phase (BENCH_ONLY=workers): --workers 2 against 1, beside nginx's worker_processes 2 against 1. */
import { writeFileSync } from "node:fs"
import { join } from "node:path"
import {
  assertRunning,
  BenchError,
  compareWithWrk,
  drain,
  EVERY_CPU,
  freePort,
  get,
  keepTail,
  MACHINE_LOAD,
  makeTempDir,
  type Server,
  type Servers,
  STARTUP_TIMEOUT_MS,
  spawnChild,
  startProxy,
  stopServer,
  type WrkSummary,
  warmUntilHit,
  wrkInterleaved,
} from "../harness.ts"
import { errorRows, formatMicros, informative, ratioRow, report } from "../report.ts"

/**
 * --workers 2 against --workers 1, nothing pinned, wrk beside them on every core (a thread each):
 * CPU per HIT and per MISS summed over every process of each proxy (coordination between workers
 * should be nearly free: at most 1.1×), and the HIT throughput gained by a second worker, beside
 * what nginx (a caching proxy_pass to the same origin) gains from worker_processes 1 to 2.
 */
export async function benchWorkers({ originUrl }: Servers): Promise<void> {
  const measures = [
    "HIT 1 KiB proxy CPU per request (all processes), --workers 2 vs 1",
    "MISS no-store 1 KiB proxy CPU per request (all processes), --workers 2 vs 1",
    "HIT 1 KiB throughput gain from a second worker, against nginx's (worker_processes 2 vs 1)",
    "nginx HIT 1 KiB CPU per request (master and workers), worker_processes 2 vs 1",
  ]
  const started: Server[] = []
  try {
    const one = await startProxy(originUrl, [], { unpinned: true })
    started.push(one)
    const two = await startProxy(originUrl, ["--workers", "2"], { unpinned: true })
    started.push(two)
    const [oneUrl, twoUrl] = [one.urls[0], two.urls[0]]
    if (!oneUrl || !twoUrl) throw new BenchError("a proxy's ready line names no address")
    for (const url of [oneUrl, twoUrl]) await warmUntilHit(`${url}/1k`)
    const nginxOne = await startNginx(originUrl, 1)
    started.push(nginxOne)
    const nginxTwo = await startNginx(originUrl, 2)
    started.push(nginxTwo)
    // All four in one interleaved series: the machine's drift lands on ours and nginx's gains alike.
    const [hitTwo, hitOne, nginxHitTwo, nginxHitOne] = await wrkInterleaved(
      [
        { url: `${twoUrl}/1k`, pid: two.process.pid },
        { url: `${oneUrl}/1k`, pid: one.process.pid },
        { url: `${nginxTwo.urls[0]}/1k`, pid: nginxTwo.process.pid },
        { url: `${nginxOne.urls[0]}/1k`, pid: nginxOne.process.pid },
      ],
      MACHINE_LOAD,
    )
    const [missTwo, missOne] = await compareWithWrk(
      `${twoUrl}/nostore-1k`,
      `${oneUrl}/nostore-1k`,
      [two.process.pid, one.process.pid],
      MACHINE_LOAD,
    )
    for (const server of started) assertRunning(server)
    report.raw.push(
      { target: "proxy --workers 2 /1k (HIT)", summary: hitTwo! },
      { target: "proxy --workers 1 /1k (HIT)", summary: hitOne! },
      { target: "proxy --workers 2 /nostore-1k (MISS)", summary: missTwo },
      { target: "proxy --workers 1 /nostore-1k (MISS)", summary: missOne },
      { target: "nginx worker_processes 2 /1k (HIT)", summary: nginxHitTwo! },
      { target: "nginx worker_processes 1 /1k (HIT)", summary: nginxHitOne! },
    )
    const gain = hitTwo!.requestsPerSecond / hitOne!.requestsPerSecond
    const nginxGain = nginxHitTwo!.requestsPerSecond / nginxHitOne!.requestsPerSecond
    const cpu = (summary: WrkSummary) => summary.cpuUsPerRequest ?? Number.NaN
    report.rows.push(
      ratioRow(measures[0]!, cpu(hitTwo!), cpu(hitOne!), formatMicros, "≤", 1.1),
      ratioRow(measures[1]!, cpu(missTwo), cpu(missOne), formatMicros, "≤", 1.1),
      {
        ...ratioRow(measures[2]!, gain, nginxGain, (factor) => `${factor.toFixed(2)}×`, "≥", 1),
        target: "≥ nginx's gain",
      },
      // What the same two cores do to nginx's CPU per request: how much of ours is the machine's.
      informative(ratioRow(measures[3]!, cpu(nginxHitTwo!), cpu(nginxHitOne!), formatMicros, "≤", 1.1)),
    )
  } catch (error) {
    report.rows.push(...errorRows(measures, error))
  } finally {
    for (const server of started) await stopServer(server)
  }
}

/** nginx as a caching reverse proxy of the origin, with `workers` worker processes, in a directory of its own. */
async function startNginx(originUrl: string, workers: number): Promise<Server> {
  if (Bun.which("nginx") === null) throw new BenchError("nginx not found on PATH (apt-get install -y nginx)")
  const dir = makeTempDir(`nginx-${workers}`)
  const port = freePort()
  const settings = `
    worker_processes ${workers};
    daemon off;
    pid ${dir}/nginx.pid;
    error_log ${dir}/error.log;
    ${process.getuid?.() === 0 ? "user root;" : ""}
    events { worker_connections 1024; }
    http {
      access_log off;
      client_body_temp_path ${dir}/body;
      proxy_temp_path ${dir}/proxy;
      fastcgi_temp_path ${dir}/fastcgi;
      uwsgi_temp_path ${dir}/uwsgi;
      scgi_temp_path ${dir}/scgi;
      proxy_cache_path ${dir}/cache keys_zone=bench:10m;
      upstream origin { server ${new URL(originUrl).host}; keepalive 32; }
      server {
        listen 127.0.0.1:${port};
        location / {
          proxy_pass http://origin;
          proxy_http_version 1.1;
          proxy_set_header Connection "";
          proxy_cache bench;
        }
      }
    }`
  writeFileSync(join(dir, "nginx.conf"), settings)
  const child = spawnChild(EVERY_CPU, ["nginx", "-e", join(dir, "error.log"), "-p", dir, "-c", join(dir, "nginx.conf")])
  const server: Server = {
    name: `nginx (${workers})`,
    process: child,
    urls: [`http://127.0.0.1:${port}`],
    stderrTail: keepTail(child.stderr),
  }
  void drain(child.stdout.getReader())
  const deadline = Date.now() + STARTUP_TIMEOUT_MS
  while (
    !(await get(`${server.urls[0]}/1k`).then(
      (answer) => answer.status === 200,
      () => false,
    ))
  ) {
    if (child.exitCode !== null || Date.now() > deadline) throw new BenchError(`nginx did not start: ${server.stderrTail()}`)
    await Bun.sleep(50)
  }
  return server
}
