'use strict';
// Microsoft's classic jQuery SignalR client (signalr@2.4.3) in jsdom, forced to one
// transport (no fallback).  Usage:
//   node jq_client.js SCENARIO http://127.0.0.1:PORT/signalr [webSockets|serverSentEvents|longPolling]
// or a comma-separated fallback list whose last transport is the one expected.
// Prints EVENT lines while it runs and one RESULT line (see harness.js).

const { createHarness, parseArgs, describeUrl } = require('./harness');

const { scenario, url, transport: transportArg, origin } = parseArgs();
// "a,b": start with that fallback list and expect to end up on the last one.
const transports = transportArg.split(',');
const transport = transports[transports.length - 1];
const h = createHarness({ timeoutMs: 12000 });
const { obs, emit, finish, fail, command, delay, waitFor } = h;

const { JSDOM } = require('jsdom');
// The page origin is the server origin: same-origin XHR, and an Origin header autobahn accepts.
const dom = new JSDOM('', { url: origin + '/' });
global.window = dom.window;
const $ = require('jquery');
window.jQuery = $;
require('signalr');

// ---- what the client puts on the wire (paths and query keys), for the report
obs.requests = [];
let pendingXhr = 0;
const RealOpen = window.XMLHttpRequest.prototype.open;
const RealSend = window.XMLHttpRequest.prototype.send;
window.XMLHttpRequest.prototype.open = function (method, reqUrl, ...rest) {
  this._txsr = method + ' ' + reqUrl;
  return RealOpen.call(this, method, reqUrl, ...rest);
};
window.XMLHttpRequest.prototype.send = function (...args) {
  pendingXhr += 1;
  obs.requests.push(describe(this._txsr));
  this.addEventListener('loadend', () => { pendingXhr -= 1; });
  return RealSend.apply(this, args);
};
const RealWebSocket = window.WebSocket;
function TrackedWebSocket(wsUrl, protocols) {
  obs.requests.push(describe('WS ' + wsUrl));
  return protocols === undefined ? new RealWebSocket(wsUrl) : new RealWebSocket(wsUrl, protocols);
}
TrackedWebSocket.prototype = RealWebSocket.prototype;
for (const k of ['CONNECTING', 'OPEN', 'CLOSING', 'CLOSED']) TrackedWebSocket[k] = RealWebSocket[k];
window.WebSocket = TrackedWebSocket;
// jsdom has no EventSource: the eventsource package (outside jsdom's cookie jar).
// A browser dispatches events with eventPhase AT_TARGET (2), which the SSE transport
// compares with EventSource.CLOSED (also 2) to tell "stream ended, reconnect" from other
// errors; the package's plain event objects have no eventPhase, so it is added here.
const RealEventSource = require('eventsource');
function TrackedEventSource(esUrl, init) {
  obs.requests.push(describe('SSE ' + esUrl));
  const source = new RealEventSource(esUrl, init);
  const add = source.addEventListener;
  source.addEventListener = function (type, listener, ...rest) {
    const atTarget = function (e) {
      const event = Object.create(e);
      Object.defineProperty(event, 'eventPhase', { value: 2 });
      return listener.call(this, event);
    };
    return add.call(this, type, atTarget, ...rest);
  };
  return source;
}
TrackedEventSource.prototype = RealEventSource.prototype;
for (const k of ['CONNECTING', 'OPEN', 'CLOSED']) TrackedEventSource[k] = RealEventSource[k];
window.EventSource = TrackedEventSource;

function describe(line) {
  // "GET http://h/signalr/start?a=1&b=2" -> "GET /signalr/start a&b" (+ the values that matter)
  const i = line.indexOf(' ');
  return line.slice(0, i) + ' ' + describeUrl(line.slice(i + 1), origin);
}

// ---- promise wrappers around the jQuery Deferred API

function newConnection() {
  const conn = $.hubConnection(url, { useDefaultPath: false, logging: false });
  conn.logging = false;
  const record = (name) => (...args) => emit(name, args.length ? String(args[0] && args[0].message || args[0]) : null);
  conn.error(record('conn_error'));
  conn.reconnecting(record('reconnecting'));
  conn.reconnected(record('reconnected'));
  conn.disconnected(record('disconnected'));
  return conn;
}

function start(conn) {
  return new Promise((resolve, reject) => {
    conn.start({ transport: transports.length > 1 ? transports : transport })
      .done(() => resolve())
      .fail((e) => reject(new Error('start failed: ' + (e && e.message))));
  });
}

function call(proxy, method, ...args) {
  return new Promise((resolve) => {
    const progress = [];
    proxy.invoke(method, ...args)
      .progress((p) => progress.push(p))
      .done((r) => resolve({ ok: true, hasResult: r !== undefined, result: r === undefined ? null : r, progress }))
      .fail((e) => resolve({
        ok: false,
        message: e && e.message,
        source: e && e.source,
        data: e && e.data === undefined ? '<undefined>' : e.data,
        progress,
      }));
  });
}

function checkTransport(conn, key) {
  obs[key || 'transport'] = conn.transport && conn.transport.name;
  if (!conn.transport || conn.transport.name !== transport) {
    throw new Error('not on ' + transport + ': ' + (conn.transport && conn.transport.name));
  }
}

async function stopAndDrain(...conns) {
  // Stop them all first: a long poll of a connection still running would keep an XHR
  // pending.
  for (const conn of conns) conn.stop();
  // The /abort XHR is fire-and-forget; wait until it (and any other XHR) has completed.
  await waitFor(() => pendingXhr === 0, 'pending XHRs to complete after stop()', 3000);
  obs.stateAfterStop = conns[conns.length - 1].state;
}

// ---- scenarios

const scenarios = {
  // connect, invoke with result, a push, stop
  async basic() {
    const conn = newConnection();
    const c3 = conn.createHubProxy('c3');
    const ticks = [];
    let heartbeats = 0;
    c3.on('tick', (t) => ticks.push(t));
    c3.on('heartbeat', (...a) => { heartbeats += 1; obs.heartbeatArgs = a.length; });
    await start(conn);
    checkTransport(conn);
    obs.state = conn.state;
    obs.connectionId = conn.id;
    obs.echo = await call(c3, 'Echo', { a: [1, 2.5, { b: null }], s: 'h\u00e9llo \u2603', t: true });
    obs.echoCase = await call(c3, 'echo', 42);
    obs.subscribe = await call(c3, 'Subscribe', ['tick', 'heartbeat', 'invalid_topic']);
    await waitFor(() => ticks.length >= 2 && heartbeats >= 1, 'two ticks and a heartbeat');
    obs.ticks = ticks.slice(0, 2);
    obs.groupsToken = typeof conn.groupsToken === 'string' && conn.groupsToken.length > 0;
    obs.messageId = typeof conn.messageId === 'string' && conn.messageId.length > 0;
    await stopAndDrain(conn);
  },

  // hub error with data, plain error, unknown method
  async errors() {
    const conn = newConnection();
    const c3 = conn.createHubProxy('c3');
    c3.on('tick', () => {});
    await start(conn);
    checkTransport(conn);
    obs.fail = await call(c3, 'Fail');
    obs.unknown = await call(c3, 'NoSuchMethod', 1);
    obs.after = await call(c3, 'Echo', 'still alive');
    await stopAndDrain(conn);
  },

  // progress callbacks on the invocation deferred
  async progress() {
    const conn = newConnection();
    const c3 = conn.createHubProxy('c3');
    c3.on('tick', () => {});
    await start(conn);
    checkTransport(conn);
    obs.slow = await call(c3, 'Slow', 300);
    // A late progress message may follow the result: give it a moment, it must not throw.
    await delay(100);
    await stopAndDrain(conn);
  },

  // hub state round trip (caller state)
  async state() {
    const conn = newConnection();
    const chat = conn.createHubProxy('chat');
    chat.on('addMessage', () => {});
    await start(conn);
    checkTransport(conn);
    chat.state.counter = 5;
    chat.state.name = 'alice';
    obs.increment = await call(chat, 'IncrementCounter');
    obs.stateAfterIncrement = Object.assign({}, chat.state);
    obs.increment2 = await call(chat, 'IncrementCounter');
    obs.getName = await call(chat, 'GetName');
    await stopAndDrain(conn);
  },

  // client-method calls routed to two hubs on one connection
  async twohubs() {
    const conn = newConnection();
    const c3 = conn.createHubProxy('c3');
    const chat = conn.createHubProxy('chat');
    const got = { c3Tick: [], chatAdd: [], c3Add: 0, chatTick: 0 };
    c3.on('tick', (t) => got.c3Tick.push(t));
    c3.on('addMessage', () => { got.c3Add += 1; });
    chat.on('addMessage', (...a) => got.chatAdd.push(a));
    chat.on('tick', () => { got.chatTick += 1; });
    await start(conn);
    checkTransport(conn);
    obs.send = await call(chat, 'Send', 'alice', 'hi all');
    obs.subscribe = await call(c3, 'Subscribe', ['tick']);
    await waitFor(() => got.c3Tick.length >= 2 && got.chatAdd.length >= 1, 'a tick on c3 and addMessage on chat');
    obs.got = got;
    await stopAndDrain(conn);
  },

  // groups: A joins g1, B sends to g1; A leaves, B sends again
  async groups() {
    const a = newConnection();
    const b = newConnection();
    const chatA = a.createHubProxy('chat');
    const chatB = b.createHubProxy('chat');
    const gotA = [];
    const gotB = [];
    chatA.on('groupMessage', (...x) => gotA.push(x));
    chatB.on('groupMessage', (...x) => gotB.push(x));
    await start(a);
    await start(b);
    checkTransport(a, 'transportA');
    checkTransport(b, 'transportB');
    obs.join = await call(chatA, 'JoinGroup', 'g1');
    await waitFor(() => typeof a.groupsToken === 'string' && a.groupsToken.length > 0, 'A groups token', 2000)
      .then(() => { obs.groupsTokenA = true; }, () => { obs.groupsTokenA = false; });
    obs.send1 = await call(chatB, 'SendToGroup', 'g1', 'to group');
    await waitFor(() => gotA.length >= 1, 'A to get the group message');
    obs.leave = await call(chatA, 'LeaveGroup', 'g1');
    obs.send2 = await call(chatB, 'SendToGroup', 'g1', 'after leave');
    await delay(400);
    obs.gotA = gotA;
    obs.gotB = gotB;
    await stopAndDrain(a, b);
  },

  // server drops the socket; the client reconnects on its own and misses nothing
  async reconnect() {
    const conn = newConnection();
    conn.reconnectDelay = 200;
    const c3 = conn.createHubProxy('c3');
    const ticks = [];
    const pushed = [];
    c3.on('tick', (t) => ticks.push(t && t.Seq));
    c3.on('pushed', (p) => pushed.push(p && p.Seq));
    conn.reconnected(() => { obs.transportAfterReconnect = conn.transport && conn.transport.name; });
    await start(conn);
    checkTransport(conn);
    obs.subscribe = await call(c3, 'Subscribe', ['tick']);
    emit('subscribed');
    await command('stop');
    obs.ticks = ticks;
    obs.pushed = pushed;
    obs.stateBeforeStop = conn.state;
    await stopAndDrain(conn);
  },
};

(async () => {
  const fn = scenarios[scenario];
  if (!fn) return fail('unknown scenario ' + scenario);
  try {
    await fn();
    finish(true);
  } catch (e) {
    fail(e && e.message ? e.message : e);
  }
})();
