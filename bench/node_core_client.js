'use strict';
// Microsoft's ASP.NET Core SignalR client (@microsoft/signalr, from tests/js/node_modules)
// as a benchmark client of bench/core_throughput.py, receiving from bench/_core_server.py.
//
// usage: node node_core_client.js URL TRANSPORT PROTOCOL N MODE
//   TRANSPORT: webSockets | serverSentEvents | longPolling (txsignalr's names)
//   PROTOCOL:  json | messagepack
//   MODE:      stream  (count N "tick" client-method calls)
//              counter (count the N items of connection.stream("Counter", N))
// Prints one line "BENCH-RESULT {json}" (the format of bench/_common.emit_result):
// calls, seconds, calls_per_s and cpu_us_per_call over the span from the first call
// delivered to the N-th, plus the transport and hub protocol the client used.

const path = require('path');
const { createRequire } = require('module');

const jsRequire = createRequire(path.join(__dirname, '..', 'tests', 'js', 'package.json'));
const signalR = jsRequire('@microsoft/signalr');

const [url, transportName, protocolName, nText, mode] = process.argv.slice(2);
const n = Number(nText);
const TRANSPORTS = {
  webSockets: signalR.HttpTransportType.WebSockets,
  serverSentEvents: signalR.HttpTransportType.ServerSentEvents,
  longPolling: signalR.HttpTransportType.LongPolling,
};
const USED = {
  WebSocketTransport: 'webSockets',
  ServerSentEventsTransport: 'serverSentEvents',
  LongPollingTransport: 'longPolling',
};

function result(obj) {
  process.stdout.write('BENCH-RESULT ' + JSON.stringify(obj) + '\n', () => process.exit(0));
}

async function main() {
  let builder = new signalR.HubConnectionBuilder()
    .withUrl(url, { transport: TRANSPORTS[transportName] })
    .configureLogging(signalR.LogLevel.Error);
  if (protocolName === 'messagepack') {
    const { MessagePackHubProtocol } = jsRequire('@microsoft/signalr-protocol-msgpack');
    builder = builder.withHubProtocol(new MessagePackHubProtocol());
  }
  const connection = builder.build();
  let count = 0;
  let t0 = 0n;
  let cpu0 = null;
  let resolveDone;
  const done = new Promise((resolve) => { resolveDone = resolve; });
  let t1 = 0n;
  let cpu1 = null;
  function one() {
    count += 1;
    if (count === 1) {
      t0 = process.hrtime.bigint();
      cpu0 = process.cpuUsage();
    } else if (count === n) {
      t1 = process.hrtime.bigint();
      cpu1 = process.cpuUsage(cpu0);
      resolveDone();
    }
  }
  if (mode === 'stream') connection.on('tick', one);
  await connection.start();
  const t = connection.connection && connection.connection.transport;
  const used = t ? USED[t.constructor.name] || t.constructor.name : null;
  if (mode === 'counter') {
    connection.stream('Counter', n).subscribe({ next: one, complete() {}, error(e) { throw e; } });
  }
  await done;
  const seconds = Number(t1 - t0) / 1e9;
  const calls = n - 1; // the first call starts the clock
  const out = {
    calls: n,
    seconds,
    calls_per_s: seconds > 0 ? calls / seconds : null,
    cpu_us_per_call: calls ? (cpu1.user + cpu1.system) / calls : null,
    transport_in_use: used,
    hub_protocol: connection._protocol ? connection._protocol.name : null, // private field, no public getter
    node: process.version,
    signalr: jsRequire('@microsoft/signalr/package.json').version,
  };
  await connection.stop();
  result(out);
}

setTimeout(() => {
  process.stderr.write('node_core_client: no result within 600 s\n');
  process.exit(2);
}, 600000).unref();
main().catch((e) => {
  process.stderr.write('node_core_client: ' + (e && e.stack ? e.stack : e) + '\n');
  process.exit(1);
});
