// A Broadcast gateway in Node: stock celery-node sends `broadcast.fan_out` (docs/gateway.md).
//
//   node send.js BROKER_URL < events.jsonl
//
// BROKER_URL is the workers' BROADCAST_BROKER_URL: redis://host:6379/0, or
// amqp://user:password@host:5672/vhost (a vhost whose default queue type is quorum,
// docs/production.md). Each line of standard input is one finished-request event (JSON);
// each becomes one task message on the queue `broadcast.fanout`. Prints the number sent;
// exits 1 when the broker refused any (e.g. Redis at maxmemory: docs/gateway.md).
//
// In a real gateway the client lives as long as the process and `send` is called once
// per finished request; nothing waits for Broadcast.

"use strict";

const readline = require("node:readline");
const celery = require("celery-node");

const TASK = "broadcast.fan_out";
const QUEUE = "broadcast.fanout";

// celery-node drops the promise of each publish, so a refused write (Redis at maxmemory,
// a RabbitMQ channel error) surfaces only as an unhandled rejection, which by default
// kills the process. A gateway counts and logs it instead, and goes on serving.
let failed = 0;
process.on("unhandledRejection", (error) => {
  failed += 1;
  console.error(`broadcast.send_failed error=${JSON.stringify(String(error))}`);
});

async function main() {
  const brokerUrl = process.argv[2];
  if (!brokerUrl) {
    console.error("usage: node send.js BROKER_URL < events.jsonl");
    process.exit(2);
  }
  // The result backend is never read (Broadcast stores no results); celery-node wants
  // one, and the broker's URL costs no other server.
  const client = celery.createClient(brokerUrl, brokerUrl, QUEUE);
  await client.isReady();
  const task = client.createTask(TASK);

  let sent = 0;
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    if (line.trim() === "") continue;
    task.applyAsync([JSON.parse(line)]); // args: [event]; no kwargs
    sent += 1;
  }

  // celery-node's send returns before its publish is written and gives no handle on it.
  // A send is two steps in order on the broker's one connection (AMQP: one channel): the
  // client's readiness check, then the queue's declaration and the publish. Each round
  // trip below, followed by a turn of the event loop, waits out one of those steps for
  // every send before it; then every publish has been written.
  for (let step = 0; step < 2; step += 1) {
    await client.isReady();
    await new Promise((resolve) => setImmediate(resolve));
  }
  await client.disconnect();
  await new Promise((resolve) => setImmediate(resolve)); // the last rejections, if any
  console.log(`sent ${sent}`);
  if (failed > 0) process.exitCode = 1;
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
