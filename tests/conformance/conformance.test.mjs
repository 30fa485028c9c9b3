// The pinned Durable Streams conformance suite, run against the server whose
// base URL run.mjs passes in CONFORMANCE_TEST_URL.
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

const baseUrl = process.env.CONFORMANCE_TEST_URL
if (!baseUrl) {
  throw new Error("CONFORMANCE_TEST_URL is not set; run `node run.mjs` instead")
}

runConformanceTests({
  baseUrl,
  longPollTimeoutMs: Number(process.env.CONFORMANCE_LONG_POLL_MS ?? 20000),
  // The subscription APIs' six tests (run.mjs --subscriptions).
  subscriptions: process.env.CONFORMANCE_SUBSCRIPTIONS === "1",
})
