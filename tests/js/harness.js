'use strict';
// Shared plumbing for the interop harnesses run by tests/test_interop_js.py.
//
// Protocol with pytest (one line each, on stdout):
//   EVENT <name> <json>   progress, so the test can act while the client runs
//   RESULT <json>         the one summary line; {"ok": true|false, ...observations}
// Commands from pytest arrive on stdin, one word a line (e.g. "stop").
// A watchdog ends the process non-zero if the scenario does not finish in time.

const readline = require('readline');

function createHarness(options) {
  const timeoutMs = (options && options.timeoutMs) || 10000;
  const obs = { ok: false, events: [] };
  const waiting = {};
  const commands = [];
  let finished = false;

  const out = (line) => process.stdout.write(line + '\n');

  function emit(name, data) {
    obs.events.push(name);
    out('EVENT ' + name + ' ' + JSON.stringify(data === undefined ? null : data));
  }

  function finish(ok, error) {
    if (finished) return;
    finished = true;
    obs.ok = !!ok;
    if (error !== undefined && error !== null) obs.error = String(error);
    out('RESULT ' + JSON.stringify(obs));
    // Let stdout drain before exiting.
    process.stdout.write('', () => process.exit(ok ? 0 : 1));
  }

  function fail(error) {
    finish(false, error);
  }

  const watchdog = setTimeout(() => {
    if (finished) return;
    finished = true;
    obs.ok = false;
    obs.error = 'watchdog: scenario did not finish within ' + timeoutMs + ' ms';
    out('RESULT ' + JSON.stringify(obs));
    process.stdout.write('', () => process.exit(2));
  }, timeoutMs);
  watchdog.unref && watchdog.unref();
  // Keep the event loop alive until the watchdog or finish() ends it.
  const keepAlive = setInterval(() => {}, 1000);

  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    const cmd = line.trim();
    if (!cmd) return;
    if (waiting[cmd]) {
      const resolvers = waiting[cmd];
      delete waiting[cmd];
      resolvers.forEach((r) => r());
    } else {
      commands.push(cmd);
    }
  });

  function command(name) {
    // Resolves when pytest writes `name` on stdin.
    const idx = commands.indexOf(name);
    if (idx >= 0) {
      commands.splice(idx, 1);
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      (waiting[name] = waiting[name] || []).push(resolve);
    });
  }

  function delay(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  async function waitFor(predicate, what, ms) {
    const until = Date.now() + (ms || 5000);
    while (!predicate()) {
      if (Date.now() > until) throw new Error('timed out waiting for ' + what);
      await delay(20);
    }
  }

  process.on('uncaughtException', (e) => fail('uncaught: ' + (e && e.stack ? e.stack : e)));
  process.on('unhandledRejection', (e) => fail('unhandled rejection: ' + (e && e.stack ? e.stack : e)));

  return { obs, emit, finish, fail, command, delay, waitFor, keepAlive };
}

// "/signalr/start?a=1&transport=x" -> "/signalr/start a&transport=x" (values kept only where they matter)
function describeUrl(raw, base) {
  const u = new URL(raw, base);
  const keep = ['transport', 'clientProtocol', 'messageId', 'groupsToken'];
  const q = [...u.searchParams.keys()].map((k) => (keep.includes(k) ? k + '=' + u.searchParams.get(k) : k));
  return u.pathname + ' ' + q.join('&');
}

// Record every request made through Node's http module (method, path, status) in obs.requests.
function trackHttp(obs, base) {
  const http = require('http');
  obs.requests = obs.requests || [];
  const wrap = (name) => {
    const real = http[name];
    http[name] = function (options, ...rest) {
      const entry = { line: '?' };
      try {
        const method = (typeof options === 'object' && options.method) || (name === 'get' ? 'GET' : 'GET');
        const path = typeof options === 'string' ? options : (options.path || options.pathname || '');
        entry.line = method + ' ' + describeUrl(path, base);
      } catch (e) {
        entry.line = 'unparsed ' + String(e);
      }
      obs.requests.push(entry);
      const req = real.call(http, options, ...rest);
      req.on('response', (res) => { entry.status = res.statusCode; });
      return req;
    };
  };
  wrap('request');
  wrap('get');
}

function parseArgs() {
  const scenario = process.argv[2];
  const url = process.argv[3];
  const transport = process.argv[4] || 'webSockets';
  if (!scenario || !url) {
    process.stderr.write('usage: node <harness>.js SCENARIO http://127.0.0.1:PORT/signalr [TRANSPORT]\n');
    process.exit(64);
  }
  return { scenario, url, transport, origin: new URL(url).origin };
}

module.exports = { createHarness, parseArgs, describeUrl, trackHttp };
