// Starts the Node reference server (npm @durable-streams/server) for
// benches/compare.sh: node node-server.mjs <port> [data-dir]
import { DurableStreamTestServer } from "@durable-streams/server"

const [port, dataDir] = process.argv.slice(2)
const server = new DurableStreamTestServer({
  port: Number(port ?? 4437),
  host: "127.0.0.1",
  ...(dataDir ? { dataDir } : {}),
})
const url = await server.start()
console.log(`listening on ${url}/v1/stream/`)
process.on("SIGTERM", () => process.exit(0))
