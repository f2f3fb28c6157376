// Shared harness: starts the real relay-broker binary on an ephemeral loopback port and
// gives the tests its address, keys and helpers. Every wait is bounded.
'use strict';
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const http = require('node:http');
const https = require('node:https');

const TLS = process.env.RELAY_TLS === '1';
const KEY_NAME = 'RootManageSharedAccessKey';
const KEY = 'interop-secret/with=odd+chars';
const BIN = (name) => process.env[`RELAY_${name.toUpperCase().replace('-', '_')}_BIN`]
  || path.join(__dirname, '..', '..', 'target', 'debug', name);

// `extra` goes into [limits], `server` into [server], `tail` after the rules. The accept
// deadline is generous by default, so that a loaded machine (the other core busy) passes;
// the test of its expiry asks for a short one.
function brokerConfig(extra = '', server = '', tail = '', acceptTimeout = 5) {
  const tls = TLS ? `tls_cert = "${process.env.RELAY_TLS_CERT}"\ntls_key = "${process.env.RELAY_TLS_KEY}"\n` : '';
  return `[server]\nbind = "127.0.0.1:0"\n${tls}${server}\n
[limits]
accept_timeout_secs = ${acceptTimeout}
http_request_timeout_secs = 2
token_grace_secs = 1
${extra}
[[hybrid_connections]]
name = "hyco"
[[hybrid_connections]]
name = "other"
[[authorization_rules]]
name = "${KEY_NAME}"
key = "${KEY}"
rights = ["Manage", "Listen", "Send"]
${tail}
`;
}

/** Starts a broker; resolves once it prints `listening on`. */
function startBroker({ extra = '', bind, server = '', tail = '', acceptTimeout } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'relay-interop-'));
  const config = path.join(dir, 'broker.toml');
  fs.writeFileSync(config, brokerConfig(extra, server, tail, acceptTimeout));
  const args = ['--config', config];
  if (bind) args.push('--bind', bind);
  const child = spawn(BIN('relay-broker'), args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: 'warn' } });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`broker did not start: ${stderr}`)), 10000);
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = /listening on (\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        const host = m[1];
        resolve({ host, child, stop: () => stopChild(child), stderr: () => stderr });
      }
    });
    child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`broker exited ${code}: ${stderr}`)); });
  });
}

function stopChild(child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => { child.kill('SIGKILL'); }, 15000);
    child.once('exit', () => { clearTimeout(timer); resolve(); });
    child.kill('SIGTERM');
  });
}

/** Starts one of our binaries with the interop key; its output is `child.output()`, and it
 * joins `children` so that the suite stops it. */
function runBinary(bin, args, children) {
  const child = spawn(BIN(bin), args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RELAY_SAS_KEY: KEY, RUST_LOG: 'info' } });
  children.push(child);
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  child.output = () => out;
  return child;
}

const wsScheme = TLS ? 'wss' : 'ws';
const httpScheme = TLS ? 'https' : 'http';
const httpModule = TLS ? https : http;

/** A plain HTTP(S) request; resolves { status, headers, body }. */
function request(host, { method = 'GET', path: p, headers = {}, body } = {}) {
  const [hostname, port] = host.split(':');
  return new Promise((resolve, reject) => {
    const req = httpModule.request({ hostname, port, method, path: p, headers, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, statusMessage: res.statusMessage, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.setTimeout(15000, () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
    req.end(body);
  });
}

/** Resolves when `emitter` emits `event`, or rejects after `ms`. */
function once(emitter, event, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no '${event}' within ${ms} ms`)), ms);
    emitter.once(event, (...args) => { clearTimeout(timer); resolve(args); });
  });
}

function delay(ms) { return new Promise((r) => setTimeout(r, ms)); }

/** Polls `check` every 50 ms until it returns truthy, up to `ms`. */
async function until(check, ms = 5000, what = 'condition') {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await check()) return;
    await delay(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** Listener count via the .NET runtime-information call. */
async function listenerCount(host, hc, token) {
  const res = await request(host, { path: `/${hc}?api-version=2016-07`, headers: { 'X-PROCESS-AT': 'ServiceBus', Authorization: token } });
  const m = /<ListenerCount>(\d+)<\/ListenerCount>/.exec(res.body.toString());
  return m ? Number(m[1]) : -1;
}

module.exports = { TLS, KEY, KEY_NAME, BIN, runBinary, startBroker, stopChild, request, once, delay, until, listenerCount, wsScheme, httpScheme };
