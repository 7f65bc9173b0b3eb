'use strict';
// signalr-client@0.0.20 (third party, plain Node, `websocket` package).
// Usage: node signalr_client_client.js basic http://127.0.0.1:PORT/signalr
// Connect, invoke with a result, receive a push, stop (the client POSTs /abort,
// with transport=serverSentEvents: a bug of this client that the server must tolerate).

const { createHarness, parseArgs, trackHttp } = require('./harness');

// The library reports through console.log; keep stdout for the harness protocol.
// It prints 'Connection aborted' when the /abort response has ended.
let abortDone = false;
console.log = (...args) => {
  if (args[0] === 'Connection aborted') abortDone = true;
  process.stderr.write('[signalr-client] ' + args.map(String).join(' ') + '\n');
};

const signalR = require('signalr-client');

const { scenario, url } = parseArgs();
const h = createHarness({ timeoutMs: 12000 });
const { obs, emit, finish, fail, waitFor } = h;
trackHttp(obs, url);

function call(client, hub, method, ...args) {
  return new Promise((resolve) => {
    client.call(hub, method, ...args).done((err, result) => resolve({ err: err === undefined ? null : err, result }), 5000);
  });
}

async function basic() {
  // reconnect timeout 60 s: a reconnect would be a failure here; do not hide it.
  const client = new signalR.client(url, ['c3'], 60, true);
  const ticks = [];
  client.on('c3', 'tick', (t) => ticks.push(t));
  let connected = false;
  let disconnected = false;
  client.serviceHandlers = {
    connected: () => { connected = true; emit('connected'); },
    disconnected: () => { disconnected = true; emit('disconnected'); },
    onerror: (e) => emit('client_error', String(e)),
    connectFailed: (e) => emit('connect_failed', String(e)),
    bindingError: (e) => emit('binding_error', String(e)),
    reconnecting: () => { emit('reconnecting'); return true; },
  };
  client.start();
  await waitFor(() => connected, 'connected');
  obs.echo = await call(client, 'c3', 'Echo', { a: [1, 2.5], s: 'x' });
  obs.subscribe = await call(client, 'c3', 'Subscribe', ['tick']);
  await waitFor(() => ticks.length >= 2, 'two ticks');
  obs.ticks = ticks.slice(0, 2);
  client.end();
  await waitFor(() => disconnected, 'the socket to close after end()', 3000);
  await waitFor(() => abortDone, 'the /abort response', 3000);
}

(async () => {
  if (scenario !== 'basic') return fail('unknown scenario ' + scenario);
  try {
    await basic();
    finish(true);
  } catch (e) {
    fail(e && e.message ? e.message : e);
  }
})();
