// Builds examples/server (with the redb feature), starts it on a free loopback
// port with a short long-poll timeout, runs the pinned conformance suite
// against it, stops it, and exits with the suite's status.
//
//   node tests/conformance/run.mjs                 # memory storage
//   node tests/conformance/run.mjs file-durable    # or file-fast, acid
//
// File and acid modes get a fresh temporary data directory, removed afterwards.
import { spawn, spawnSync } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const here = dirname(fileURLToPath(import.meta.url))
const root = join(here, "..", "..")
const longPollSecs = 2

function fail(message) {
  console.error(`conformance: ${message}`)
  process.exit(1)
}

const mode = process.argv[2] ?? process.env.DS_STORAGE__MODE ?? "memory"
const dataDir = mode === "memory" ? null : mkdtempSync(join(tmpdir(), `ds-conformance-${mode}-`))

const build = spawnSync("cargo", ["build", "--quiet", "--features", "redb,metrics", "--example", "server"], {
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

const server = spawn(binary, [], {
  cwd: root,
  env: {
    ...process.env,
    DS_SERVER__HOST: "127.0.0.1",
    DS_SERVER__PORT: "0",
    DS_SERVER__LONG_POLL_TIMEOUT_SECS: String(longPollSecs),
    DS_STORAGE__MODE: mode,
    ...(dataDir ? { DS_STORAGE__DATA_DIR: dataDir } : {}),
    RUST_LOG: process.env.RUST_LOG ?? "warn",
  },
  stdio: ["ignore", "pipe", "inherit"],
})
server.on("exit", (code, signal) => {
  if (!stopping) fail(`server exited early (code ${code}, signal ${signal})`)
})
let stopping = false

const baseUrl = await new Promise((resolve) => {
  let seen = ""
  const timer = setTimeout(() => fail("server did not start within 30 s"), 30_000)
  server.stdout.on("data", (chunk) => {
    seen += chunk
    const match = seen.match(/listening on (http:\/\/[^/\s]+)/)
    if (match) {
      clearTimeout(timer)
      resolve(match[1])
    }
  })
})
for (let i = 0; ; i++) {
  const ready = await fetch(`${baseUrl}/readyz`).then((r) => r.ok, () => false)
  if (ready) break
  if (i > 300) fail("server did not become ready within 30 s")
  await new Promise((r) => setTimeout(r, 100))
}
console.log(`conformance: server at ${baseUrl} (storage mode ${mode})`)

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
    },
  }
)
const status = await new Promise((resolve) => vitest.on("close", (code) => resolve(code ?? 1)))
stopping = true
server.kill("SIGTERM")
await new Promise((resolve) => server.on("exit", resolve))
if (dataDir) rmSync(dataDir, { recursive: true, force: true })

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
console.log(`conformance (${mode}): ${summary.passed} passed, ${summary.failed} failed, ${summary.skipped} skipped`)
if (status !== 0 || summary.failed > 0 || summary.passed === 0) process.exit(1)
