// Cross pairs: our relay-listener agent with a hyco-ws sender, and a hyco-ws listener with
// our relay-sender tool, each carrying a TCP stream with half-close.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const net = require('node:net');
const { spawn } = require('node:child_process');
const WS = require('hyco-ws');
const h = require('./harness');

let broker;
const children = [];
test.before(async () => { broker = await h.startBroker(); });
test.after(async () => { await Promise.all(children.map(h.stopChild)); await broker.stop(); });

const endpoint = () => `${h.wsScheme}://${broker.host}`;
const tlsArgs = () => (h.TLS ? ['--ca-cert', process.env.RELAY_TLS_CERT] : []);

function run(bin, args) {
  const child = spawn(h.BIN(bin), args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RELAY_SAS_KEY: h.KEY, RUST_LOG: 'info' } });
  children.push(child);
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  child.output = () => out;
  return child;
}

/** A TCP server that sends back everything it reads, then half-closes. */
async function echoServer() {
  const server = net.createServer((sock) => { sock.pipe(sock); });
  server.listen(0, '127.0.0.1');
  await h.once(server, 'listening');
  return server;
}

test('relay-listener agent forwards a hyco-ws sender to TCP', { timeout: 20000 }, async () => {
  const echo = await echoServer();
  const agent = run('relay-listener', ['run', '--endpoint', endpoint(), '--hc', 'hyco', '--sas-key-name', h.KEY_NAME,
    '--forward', `127.0.0.1:${echo.address().port}`, ...tlsArgs()]);
  const uri = `${endpoint()}/$hc/hyco?sb-hc-action=listen`;
  const token = WS.createRelayToken(uri, h.KEY_NAME, h.KEY);
  await h.until(async () => await h.listenerCount(broker.host, 'hyco', token) === 1, 10000, `agent listening: ${agent.output()}`);

  const suri = `${endpoint()}/$hc/hyco?sb-hc-action=connect`;
  const c = WS.relayedConnect(suri, WS.createRelayToken(suri, h.KEY_NAME, h.KEY), () => {});
  await h.once(c, 'open');
  const payload = Buffer.alloc(300000);
  for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) % 256;
  const received = [];
  let total = 0;
  const done = new Promise((resolve) => c.on('message', (m) => { received.push(Buffer.from(m)); total += m.length; if (total >= payload.length) resolve(); }));
  c.send(payload);
  await done;
  assert.ok(Buffer.compare(Buffer.concat(received), payload) === 0, 'bytes differ');
  c.close();
  await h.stopChild(agent);
  echo.close();
});

test('a hyco-ws listener serves our relay-sender tool over TCP with half-close', { timeout: 20000 }, async () => {
  const uri = `${endpoint()}/$hc/hyco?sb-hc-action=listen`;
  const srv = WS.createRelayedServer({ server: uri, token: () => WS.createRelayToken(uri, h.KEY_NAME, h.KEY) },
    (sock) => sock.on('message', (m) => sock.send(m)));
  srv.on('error', () => {});
  await h.once(srv, 'listening', 3000);
  const tool = run('relay-sender', ['forward', '--endpoint', endpoint(), '--hc', 'hyco', '--sas-key-name', h.KEY_NAME,
    '--local', '127.0.0.1:0', ...tlsArgs()]);
  await h.until(() => /forwarding 127\.0\.0\.1:(\d+)/.test(tool.output()), 10000, 'sender tool ready');
  const port = Number(/forwarding 127\.0\.0\.1:(\d+)/.exec(tool.output())[1]);
  const sock = net.connect(port, '127.0.0.1');
  await h.once(sock, 'connect');
  const chunks = [];
  sock.on('data', (d) => chunks.push(d));
  const ended = h.once(sock, 'end', 10000);
  sock.end(Buffer.from('hello through the relay'));
  await ended;
  assert.strictEqual(Buffer.concat(chunks).toString(), 'hello through the relay');
  sock.destroy();
  srv.close();
  await h.stopChild(tool);
});
