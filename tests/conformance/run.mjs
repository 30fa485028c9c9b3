// Builds examples/server (all features), starts it on a free loopback port
// with a short long-poll timeout, runs the pinned conformance suite against
// it, stops it, and exits with the suite's status.
//
//   node tests/conformance/run.mjs                 # memory storage
//   node tests/conformance/run.mjs file-durable    # or file-fast, acid, postgres
//   node tests/conformance/run.mjs postgres --instances 2
//
// File and acid modes get a fresh temporary data directory, postgres mode a
// fresh schema in the database at TEST_POSTGRES_URL (default
// postgres://postgres@127.0.0.1:5432/test); both are removed afterwards.
// With --instances N (postgres only), N servers share that schema behind an
// nginx round-robin load balancer with keep-alive off, so consecutive
// requests alternate between instances.
import { spawn, spawnSync } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const here = dirname(fileURLToPath(import.meta.url))
const root = join(here, "..", "..")
const longPollSecs = 2

function fail(message) {
  console.error(`conformance: ${message}`)
  cleanup()
  process.exit(1)
}

const args = process.argv.slice(2)
const mode = args.find((a) => !a.startsWith("--")) ?? process.env.DS_STORAGE__MODE ?? "memory"
const instancesFlag = args.indexOf("--instances")
const instances = instancesFlag >= 0 ? Number(args[instancesFlag + 1]) : 1
if (!(instances >= 1)) fail("--instances needs a number")
if (instances > 1 && mode !== "postgres") fail("several instances need postgres mode")
// --subscriptions: serve the subscription APIs and run their six tests.
const subscriptions = args.includes("--subscriptions")
const label =
  (instances > 1 ? `${mode} x${instances} behind nginx` : mode) +
  (subscriptions ? " with subscriptions" : "")

const children = []
let stopping = false
let dataDir = null
let nginxDir = null
const pgUrl = process.env.TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/test"
const schema = `ds_conformance_${process.pid}`

function psql(sql) {
  return spawnSync("psql", [pgUrl, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql], { encoding: "utf8" })
}

function cleanup() {
  stopping = true
  for (const child of children) child.kill("SIGTERM")
  if (dataDir) rmSync(dataDir, { recursive: true, force: true })
  if (mode === "postgres") psql(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)
}

if (mode === "postgres") {
  const check = psql("SELECT 1")
  if (check.status !== 0) fail(`PostgreSQL at ${pgUrl} is not reachable: ${check.stderr.trim()}`)
} else if (mode !== "memory") {
  dataDir = mkdtempSync(join(tmpdir(), `ds-conformance-${mode}-`))
}

const build = spawnSync("cargo", ["build", "--quiet", "--all-features", "--example", "server"], {
  cwd: root,
  stdio: "inherit",
})
if (build.status !== 0) fail("cargo build --example server failed")

const targetDir = JSON.parse(
  spawnSync("cargo", ["metadata", "--format-version", "1", "--no-deps"], {
    cwd: root,
    encoding: "utf8",
  }).stdout
).target_directory
const binary = join(targetDir, "debug", "examples", "server")

async function startServer(i) {
  const server = spawn(binary, [], {
    cwd: root,
    env: {
      ...process.env,
      DS_SERVER__HOST: "127.0.0.1",
      DS_SERVER__PORT: "0",
      DS_SERVER__LONG_POLL_TIMEOUT_SECS: String(longPollSecs),
      DS_STORAGE__MODE: mode,
      ...(dataDir ? { DS_STORAGE__DATA_DIR: dataDir } : {}),
      ...(mode === "postgres"
        ? { DS_STORAGE__POSTGRES_URL: pgUrl, DS_STORAGE__POSTGRES_SCHEMA: schema }
        : {}),
      RUST_LOG: process.env.RUST_LOG ?? "warn",
      ...(subscriptions
        ? {
            DS_SUBSCRIPTIONS__ENABLED: "true",
            // The suite's webhook receiver listens on http://127.0.0.1.
            DS_SUBSCRIPTIONS__ALLOW_DEVELOPMENT_WEBHOOKS: "true",
            // Instances over one store must sign with one key.
            DS_SUBSCRIPTIONS__SIGNING_SEED: "c3Vic2NyaXB0aW9uLWNvbmZvcm1hbmNlLXNlZWQtMzI",
          }
        : {}),
    },
    stdio: ["ignore", "pipe", "inherit"],
  })
  children.push(server)
  server.on("exit", (code, signal) => {
    if (!stopping) fail(`server ${i} exited early (code ${code}, signal ${signal})`)
  })
  const url = await new Promise((resolve) => {
    let seen = ""
    const timer = setTimeout(() => fail(`server ${i} did not start within 30 s`), 30_000)
    server.stdout.on("data", (chunk) => {
      seen += chunk
      const match = seen.match(/listening on (http:\/\/[^/\s]+)/)
      if (match) {
        clearTimeout(timer)
        resolve(match[1])
      }
    })
  })
  for (let n = 0; ; n++) {
    const ready = await fetch(`${url}/readyz`).then((r) => r.ok, () => false)
    if (ready) break
    if (n > 300) fail(`server ${i} did not become ready within 30 s`)
    await new Promise((r) => setTimeout(r, 100))
  }
  return url
}

function freePort() {
  return new Promise((resolve) => {
    const probe = createServer().listen(0, "127.0.0.1", () => {
      const { port } = probe.address()
      probe.close(() => resolve(port))
    })
  })
}

async function startNginx(upstreams) {
  nginxDir = mkdtempSync(join(tmpdir(), "ds-nginx-"))
  const port = await freePort()
  const servers = upstreams.map((u) => `    server ${u.replace("http://", "")};`).join("\n")
  writeFileSync(
    join(nginxDir, "nginx.conf"),
    `worker_processes 1;
pid ${nginxDir}/nginx.pid;
error_log ${nginxDir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${nginxDir}/body;
  proxy_temp_path ${nginxDir}/proxy;
  fastcgi_temp_path ${nginxDir}/fastcgi;
  uwsgi_temp_path ${nginxDir}/uwsgi;
  scgi_temp_path ${nginxDir}/scgi;
  upstream streams {
${servers}
  }
  server {
    listen 127.0.0.1:${port};
    keepalive_timeout 0;
    client_max_body_size 64m;
    location / {
      proxy_pass http://streams;
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 120s;
      proxy_next_upstream off;
    }
  }
}
`
  )
  const nginx = spawn("nginx", ["-p", nginxDir, "-c", join(nginxDir, "nginx.conf"), "-g", "daemon off;"], {
    stdio: ["ignore", "inherit", "inherit"],
  })
  children.push(nginx)
  nginx.on("exit", (code, signal) => {
    if (!stopping) fail(`nginx exited early (code ${code}, signal ${signal}); see ${nginxDir}/error.log`)
  })
  const url = `http://127.0.0.1:${port}`
  for (let n = 0; ; n++) {
    const up = await fetch(`${url}/healthz`).then((r) => r.ok, () => false)
    if (up) break
    if (n > 100) fail("nginx did not start within 10 s")
    await new Promise((r) => setTimeout(r, 100))
  }
  return url
}

const upstreams = []
for (let i = 0; i < instances; i++) upstreams.push(await startServer(i))
const baseUrl = instances > 1 ? await startNginx(upstreams) : upstreams[0]
console.log(`conformance: server at ${baseUrl} (storage mode ${label})`)

const report = join(here, "report.json")
rmSync(report, { force: true })
const vitest = spawn(
  join(here, "node_modules", ".bin", "vitest"),
  ["run", "--reporter=default", "--reporter=json", `--outputFile.json=${report}`],
  {
    cwd: here,
    stdio: "inherit",
    env: {
      ...process.env,
      CONFORMANCE_TEST_URL: baseUrl,
      CONFORMANCE_LONG_POLL_MS: String(longPollSecs * 1000),
      CONFORMANCE_SUBSCRIPTIONS: subscriptions ? "1" : "0",
    },
  }
)
const status = await new Promise((resolve) => vitest.on("close", (code) => resolve(code ?? 1)))
stopping = true
await Promise.all(
  children.map((child) => {
    child.kill("SIGTERM")
    return new Promise((resolve) => (child.exitCode !== null ? resolve() : child.on("exit", resolve)))
  })
)
cleanup()
if (nginxDir) rmSync(nginxDir, { recursive: true, force: true })

let summary
try {
  const results = JSON.parse(readFileSync(report, "utf8"))
  summary = {
    passed: results.numPassedTests,
    failed: results.numFailedTests,
    skipped: results.numPendingTests + results.numTodoTests,
    total: results.numTotalTests,
  }
} catch (e) {
  fail(`no test report was written (${e.message})`)
}
// Plain closing line, read by CI.
console.log(`conformance (${label}): ${summary.passed} passed, ${summary.failed} failed, ${summary.skipped} skipped`)
if (status !== 0 || summary.failed > 0 || summary.passed === 0) process.exit(1)
// With the subscription APIs on, nothing may be skipped.
if (subscriptions && summary.skipped > 0) {
  console.error(`conformance (${label}): ${summary.skipped} tests were skipped`)
  process.exit(1)
}
