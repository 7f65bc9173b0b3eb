'use strict';
// Microsoft's ASP.NET Core SignalR client (@microsoft/signalr) driven step by step by
// tests/test_interop_core_js.py against txsignalr.testing.
//
// usage: node core_client.js URL OPTIONS_JSON
//   OPTIONS: {"transport": "WebSockets" | "ServerSentEvents" | "LongPolling" | null (client default),
//             "skipNegotiation": bool, "reconnectDelays": [ms, ...] | null (no automatic reconnect),
//             "accessToken": string | null (accessTokenFactory returning it),
//             "serverTimeoutMs", "keepAliveIntervalMs": withServerTimeout / withKeepAliveInterval,
//             "protocol": "json" (default) | "messagepack" (MessagePackHubProtocol),
//             "statefulReconnect": bool | {"bufferSize": N} (withStatefulReconnect),
//             "timeoutMs": watchdog, "stepTimeoutMs": limit of each step}
//
// Values JSON cannot carry go tagged both ways: {"$bytes": [..]} is a Uint8Array (or an
// ArrayBuffer received), {"$date": "ISO"} a Date, {"$bigint": "N"} a BigInt.
//
// Protocol with pytest, one JSON object a line:
//   stdin:  {"id": N, "op": "...", ...arguments}          one step; steps run one after another
//   stdout: {"reply": N, "ok": true, "value": ...}        the step's outcome
//           {"reply": N, "ok": false, "error": "..."}     the step threw / rejected (message text)
//           {"event": NAME, ...}                          what happened meanwhile: "call" (a client
//                                                         method ran), "reconnecting", "reconnected",
//                                                         "close", "http" (a request the client made),
//                                                         "log" (the client logged a warning or error)
//           {"event": "exit", "code": N, "why": "..."}    last line
// Every step has its own timeout, and a watchdog ends the process if pytest goes quiet.

const readline = require('readline');
const http = require('http');
const signalR = require('@microsoft/signalr');
const { MessagePackHubProtocol } = require('@microsoft/signalr-protocol-msgpack');

const url = process.argv[2];
const options = JSON.parse(process.argv[3] || '{}');
if (!url) {
  process.stderr.write('usage: node core_client.js URL [OPTIONS_JSON]\n');
  process.exit(64);
}
const stepTimeoutMs = options.stepTimeoutMs || 5000;
const timeoutMs = options.timeoutMs || 20000;

let exiting = false;
function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}
function emit(name, data) {
  out(Object.assign({ event: name }, data || {}));
}
function exit(code, why) {
  if (exiting) return;
  exiting = true;
  emit('exit', { code, why: why === undefined ? null : String(why) });
  process.stdout.write('', () => process.exit(code));
}
const watchdog = setTimeout(() => exit(2, 'watchdog: no exit step within ' + timeoutMs + ' ms'), timeoutMs);
process.on('uncaughtException', (e) => exit(3, 'uncaught: ' + (e && e.stack ? e.stack : e)));
process.on('unhandledRejection', (e) => exit(3, 'unhandled rejection: ' + (e && e.stack ? e.stack : e)));

function errorText(e) {
  return e && e.message !== undefined ? String(e.message) : String(e);
}

// JSON from pytest -> the values to send (see the tags above)
function revive(value) {
  if (Array.isArray(value)) return value.map(revive);
  if (value && typeof value === 'object') {
    if (Array.isArray(value.$bytes)) return Uint8Array.from(value.$bytes);
    if (typeof value.$date === 'string') return new Date(value.$date);
    if (typeof value.$bigint === 'string') return BigInt(value.$bigint);
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = revive(v);
    return out;
  }
  return value;
}

// what the client received -> JSON for pytest
function wire(value) {
  if (value instanceof Uint8Array) return { $bytes: Array.from(value) };
  if (value instanceof ArrayBuffer) return { $bytes: Array.from(new Uint8Array(value)) };
  if (value instanceof Date) return { $date: value.toISOString() };
  if (typeof value === 'bigint') return { $bigint: value.toString() };
  if (Array.isArray(value)) return value.map(wire);
  if (value && typeof value === 'object') {
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = wire(v);
    return out;
  }
  return value;
}

// ------------------------------------------------------------------ what the client sends

// "/hub?id=abc&_=123" -> "/hub id&_" (query keys only; the values are tokens and clocks)
function describe(raw) {
  const u = new URL(raw, url);
  return u.pathname + ' ' + [...u.searchParams.keys()].join('&');
}

// negotiate, sends, polls and DELETE go through the global fetch (wrapped in fetch-cookie by
// the client when it is built, so wrap it first).
const realFetch = globalThis.fetch;
globalThis.fetch = async function (input, init) {
  const method = (init && init.method) || 'GET';
  const target = typeof input === 'string' ? input : input.url;
  const headers = new Headers((init && init.headers) || {});
  const entry = { via: 'fetch', method, path: describe(target), auth: headers.get('authorization') };
  try {
    const res = await realFetch(input, init);
    emit('http', Object.assign(entry, { status: res.status }));
    return res;
  } catch (e) {
    emit('http', Object.assign(entry, { status: null, error: errorText(e) }));
    throw e;
  }
};
// the WebSocket upgrade (ws) and the event stream (eventsource) use the http module.
for (const name of ['request', 'get']) {
  const real = http[name];
  http[name] = function (opts, ...rest) {
    const req = real.call(http, opts, ...rest);
    try {
      const o = typeof opts === 'string' || opts instanceof URL ? new URL(opts) : opts;
      const h = (o && o.headers) || {};
      const get = (k) => h[k] || h[k.toLowerCase()] || h[k.replace(/(^|-)(\w)/g, (m) => m.toUpperCase())] || null;
      const kind = get('upgrade') ? 'websocket' : get('accept') === 'text/event-stream' ? 'eventsource' : 'http';
      const entry = { via: kind, method: o.method || 'GET', path: describe(o.path || o.pathname || '/'), auth: get('authorization') };
      req.on('response', (res) => emit('http', Object.assign(entry, { status: res.statusCode })));
      req.on('upgrade', (res) => emit('http', Object.assign(entry, { status: res.statusCode })));
    } catch (e) {
      emit('http', { via: 'http', error: 'unparsed: ' + errorText(e) });
    }
    return req;
  };
}

// --------------------------------------------------------------------------- connection

const logLevel = process.env.CORE_JS_TRACE ? signalR.LogLevel.Trace : signalR.LogLevel.Information;
const logger = {
  log(level, message) {
    // warnings and errors are also events, so a test can check the client had no complaints
    if (level >= signalR.LogLevel.Warning && level !== signalR.LogLevel.None) {
      emit('log', { level: signalR.LogLevel[level], message: String(message) });
    }
    if (level >= logLevel) {
      process.stderr.write(new Date().toISOString() + ' [' + signalR.LogLevel[level] + '] ' + message + '\n');
    }
  },
};

const httpOptions = { logMessageContent: !!process.env.CORE_JS_TRACE };
if (options.transport) httpOptions.transport = signalR.HttpTransportType[options.transport];
if (options.skipNegotiation) httpOptions.skipNegotiation = true;
if (options.accessToken) {
  let tokenCalls = 0;
  httpOptions.accessTokenFactory = () => {
    tokenCalls += 1;
    emit('token', { calls: tokenCalls });
    return options.accessToken;
  };
}
let builder = new signalR.HubConnectionBuilder().withUrl(url, httpOptions).configureLogging(logger);
if (options.reconnectDelays) builder = builder.withAutomaticReconnect(options.reconnectDelays);
if (options.serverTimeoutMs) builder = builder.withServerTimeout(options.serverTimeoutMs);
if (options.keepAliveIntervalMs) builder = builder.withKeepAliveInterval(options.keepAliveIntervalMs);
if (options.protocol === 'messagepack') builder = builder.withHubProtocol(new MessagePackHubProtocol());
else if (options.protocol && options.protocol !== 'json') throw new Error('unknown protocol ' + options.protocol);
if (options.statefulReconnect) {
  builder = typeof options.statefulReconnect === 'object'
    ? builder.withStatefulReconnect(options.statefulReconnect)
    : builder.withStatefulReconnect();
}
const connection = builder.build();

connection.onreconnecting((e) => emit('reconnecting', { error: e ? errorText(e) : null }));
connection.onreconnected((id) => emit('reconnected', { connectionId: id === undefined ? null : id, transport: transportName() }));
connection.onclose((e) => emit('close', { error: e ? errorText(e) : null }));

function transportName() {
  const t = connection.connection && connection.connection.transport;
  return t ? t.constructor.name : null;
}

// Client methods the server may call; each "call" event records the arguments.
const handlerModes = {
  record: () => undefined,
  double: (args) => args[0] * 2,
  throw: (args) => {
    throw new Error('client refuses ' + JSON.stringify(args));
  },
  later: (args) => new Promise((resolve) => setTimeout(() => resolve(args[0] * 2), 100)),
};

// ----------------------------------------------------------------------------- steps

const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const steps = {
  async on({ method, mode }) {
    const fn = handlerModes[mode || 'record'];
    if (!fn) throw new Error('unknown handler mode ' + mode);
    connection.on(method, (...args) => {
      emit('call', { method, args: wire(args) });
      return fn(args);
    });
    return null;
  },
  async off({ method }) {
    connection.off(method);
    return null;
  },
  async start() {
    await connection.start();
    return { connectionId: connection.connectionId, state: connection.state, transport: transportName() };
  },
  async state() {
    return { connectionId: connection.connectionId, state: connection.state, transport: transportName() };
  },
  async invoke({ method, args }) {
    const value = await connection.invoke(method, ...revive(args || []));
    return { hasValue: value !== undefined, result: value === undefined ? null : wire(value) };
  },
  // Several invocations in flight at once, one started every `delayMs`: each one's
  // outcome, in the order given, and how many times each settled.
  async invokeMany({ calls, delayMs }) {
    const outcomes = calls.map(() => ({ settled: 0 }));
    const pending = [];
    for (let i = 0; i < calls.length; i++) {
      const { method, args } = calls[i];
      const outcome = outcomes[i];
      pending.push(
        connection.invoke(method, ...revive(args || [])).then(
          (value) => {
            outcome.settled += 1;
            outcome.result = value === undefined ? null : wire(value);
          },
          (e) => {
            outcome.settled += 1;
            outcome.error = errorText(e);
          }
        )
      );
      emit('invoking', { index: i, method });
      if (delayMs) await delay(delayMs);
    }
    await Promise.all(pending);
    return outcomes;
  },
  async send({ method, args }) {
    await connection.send(method, ...revive(args || []));
    return null;
  },
  // Server-to-client stream: collect items until the stream completes or errors, or until
  // `take` items arrived, then dispose the subscription (the client sends CancelInvocation).
  async stream({ method, args, take }) {
    const items = [];
    return await new Promise((resolve) => {
      let subscription = null;
      let settled = false;
      const settle = (value) => {
        if (settled) return;
        settled = true;
        resolve(value);
      };
      subscription = connection.stream(method, ...revive(args || [])).subscribe({
        next: (item) => {
          items.push(wire(item));
          if (take && items.length >= take) {
            // dispose after subscribe() returned; items can arrive synchronously in the same batch
            setImmediate(() => subscription.dispose());
            settle({ items: items.slice(), completed: false, disposed: true, error: null });
          }
        },
        complete: () => settle({ items, completed: true, disposed: false, error: null }),
        error: (e) => settle({ items, completed: false, disposed: false, error: errorText(e) }),
      });
    });
  },
  // Client-to-server stream: a Subject passed as the last argument, fed `items`.
  async upload({ method, args, items, delayMs, error }) {
    const subject = new signalR.Subject();
    const pending = connection.invoke(method, ...revive(args || []), subject);
    for (const item of revive(items || [])) {
      await delay(delayMs === undefined ? 10 : delayMs);
      subject.next(item);
    }
    if (error) subject.error(new Error(error));
    else subject.complete();
    const value = await pending;
    return { hasValue: value !== undefined, result: value === undefined ? null : wire(value) };
  },
  async sleep({ ms }) {
    await delay(ms);
    return null;
  },
  async stop() {
    await connection.stop();
    return { state: connection.state };
  },
  async exit() {
    exitAfterReply = true;
    return null;
  },
};

let queue = Promise.resolve();
let exitAfterReply = false;
function run(command) {
  const fn = steps[command.op];
  const id = command.id;
  queue = queue.then(async () => {
    if (!fn) {
      out({ reply: id, ok: false, error: 'unknown op ' + command.op });
      return;
    }
    let timer = null;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error('step timed out after ' + (command.timeoutMs || stepTimeoutMs) + ' ms')), command.timeoutMs || stepTimeoutMs);
    });
    try {
      const value = await Promise.race([fn(command), timeout]);
      out({ reply: id, ok: true, value });
    } catch (e) {
      out({ reply: id, ok: false, error: errorText(e) });
    } finally {
      clearTimeout(timer);
    }
    if (exitAfterReply) exit(0, 'exit step');
  });
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  if (!line.trim()) return;
  let command;
  try {
    command = JSON.parse(line);
  } catch (e) {
    exit(64, 'bad command line: ' + line);
    return;
  }
  run(command);
});
rl.on('close', () => queue.then(() => exit(4, 'stdin closed before the exit step')));
emit('ready', { version: signalR.VERSION });
watchdog.unref && watchdog.unref();
setInterval(() => {}, 1000);
