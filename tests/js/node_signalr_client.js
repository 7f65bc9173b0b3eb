'use strict';
// node-signalr@3.1.0 (third party, plain Node, `ws`).
// Usage: node node_signalr_client.js basic http://127.0.0.1:PORT/signalr
// Connect, invoke with a result, receive a push, stop (POST /abort).

const { createHarness, parseArgs, trackHttp } = require('./harness');
const signalr = require('node-signalr');

const { scenario, url } = parseArgs();
const h = createHarness({ timeoutMs: 12000 });
const { obs, emit, finish, fail, waitFor } = h;
trackHttp(obs, url);

async function basic() {
  const client = new signalr.Client(url, ['c3']);
  client.reconnectDelayTime = 60000; // a reconnect would be a failure here; do not hide it
  client.callTimeout = 5000;
  let abortDone = null;
  const realAbort = client._abort.bind(client);
  client._abort = () => {
    abortDone = realAbort();
    return abortDone;
  };
  const ticks = [];
  client.connection.hub.on('c3', 'tick', (t) => ticks.push(t));
  client.on('error', (e) => emit('client_error', String(e && (e.code || e.message))));
  client.on('disconnected', (why) => emit('disconnected', why));
  const connected = new Promise((resolve) => client.on('connected', resolve));
  client.start();
  await connected;
  obs.state = client.connection.state;
  obs.echo = await client.connection.hub.call('c3', 'Echo', { a: [1, 2.5], s: 'x' });
  obs.subscribe = await client.connection.hub.call('c3', 'Subscribe', ['tick']);
  await waitFor(() => ticks.length >= 2, 'two ticks');
  obs.ticks = ticks.slice(0, 2);
  client.end();
  if (!abortDone) throw new Error('end() did not send /abort');
  await abortDone;
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
