// Cross pairs: our relay-listener agent with a hyco-ws sender, and a hyco-ws listener with
// our relay-sender tool, each carrying a TCP stream with half-close.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const net = require('node:net');
const WS = require('hyco-ws');
const h = require('./harness');

let broker;
const children = [];
test.before(async () => { broker = await h.startBroker(); });
test.after(async () => { await Promise.all(children.map(h.stopChild)); await broker.stop(); });

const endpoint = () => `${h.wsScheme}://${broker.host}`;
const tlsArgs = () => (h.TLS ? ['--ca-cert', process.env.RELAY_TLS_CERT] : []);

const run = (bin, args) => h.runBinary(bin, args, children);

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
  const { tool, sock } = await senderToolClient();
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

// Aborts across the two implementations: an abort on one side reaches the other side as an
// abort (a TCP reset, or a Close other than 1000), never as a clean end of stream.

/** Records how a TCP socket ended: bytes read, a FIN, an error code, the close. */
function recordEnd(sock) {
  const end = { bytes: 0 };
  sock.on('data', (d) => { end.bytes += d.length; });
  sock.on('end', () => { end.fin = true; });
  sock.on('error', (e) => { end.error = e.code; });
  sock.on('close', (hadError) => { end.closed = true; end.hadError = hadError; });
  return end;
}

/** Our sender tool forwarding a local port to `hyco`, and a client connected to it. */
async function senderToolClient() {
  const tool = run('relay-sender', ['forward', '--endpoint', endpoint(), '--hc', 'hyco', '--sas-key-name', h.KEY_NAME,
    '--local', '127.0.0.1:0', ...tlsArgs()]);
  await h.until(() => /forwarding 127\.0\.0\.1:(\d+)/.test(tool.output()), 10000, 'sender tool ready');
  const port = Number(/forwarding 127\.0\.0\.1:(\d+)/.exec(tool.output())[1]);
  const sock = net.connect(port, '127.0.0.1');
  await h.once(sock, 'connect');
  return { tool, sock };
}

/** A TCP server that records how each connection ended. */
async function recordingServer(onConnection) {
  const ends = [];
  const server = net.createServer((sock) => {
    ends.push(recordEnd(sock));
    if (onConnection) onConnection(sock);
  });
  server.listen(0, '127.0.0.1');
  await h.once(server, 'listening');
  return { server, ends };
}

test('a hyco-ws sender that drops its socket resets our agent\'s target; a target reset reaches it as Close 1011', { timeout: 30000 }, async () => {
  const { server, ends } = await recordingServer((sock) => {
    // The second connection's target resets once it has some data.
    if (ends.length === 2) sock.once('data', () => sock.resetAndDestroy());
  });
  const agent = run('relay-listener', ['run', '--endpoint', endpoint(), '--hc', 'other', '--sas-key-name', h.KEY_NAME,
    '--forward', `127.0.0.1:${server.address().port}`, ...tlsArgs()]);
  const luri = `${endpoint()}/$hc/other?sb-hc-action=listen`;
  await h.until(async () => await h.listenerCount(broker.host, 'other', WS.createRelayToken(luri, h.KEY_NAME, h.KEY)) === 1, 10000, `agent listening: ${agent.output()}`);
  const suri = `${endpoint()}/$hc/other?sb-hc-action=connect`;

  const dropped = WS.relayedConnect(suri, WS.createRelayToken(suri, h.KEY_NAME, h.KEY), () => {});
  await h.once(dropped, 'open');
  dropped.send(Buffer.alloc(100000, 1));
  await h.until(() => ends[0] && ends[0].bytes === 100000, 10000, 'upload reached the target');
  dropped.terminate(); // the socket is destroyed: no Close frame
  await h.until(() => ends[0].closed, 10000, 'the target connection ended');
  assert.strictEqual(ends[0].fin, undefined, `a cut upload must not end with a FIN: ${JSON.stringify(ends[0])}`);
  assert.strictEqual(ends[0].error, 'ECONNRESET');

  const cut = WS.relayedConnect(suri, WS.createRelayToken(suri, h.KEY_NAME, h.KEY), () => {});
  await h.once(cut, 'open');
  const closed = h.once(cut, 'close', 10000);
  cut.send(Buffer.from('trigger'));
  const [code] = await closed;
  assert.strictEqual(code, 1011, 'the target\'s reset arrives as Close 1011');
  await h.stopChild(agent);
  server.close();
});

test('a hyco-ws listener closing with 1011 resets our sender tool\'s client', { timeout: 30000 }, async () => {
  const uri = `${endpoint()}/$hc/hyco?sb-hc-action=listen`;
  const srv = WS.createRelayedServer({ server: uri, token: () => WS.createRelayToken(uri, h.KEY_NAME, h.KEY) },
    (sock) => sock.on('message', () => { sock.send(Buffer.alloc(50000, 2)); setTimeout(() => sock.close(1011, 'device failed'), 50); }));
  srv.on('error', () => {});
  await h.once(srv, 'listening', 3000);
  const { tool, sock } = await senderToolClient();
  const end = recordEnd(sock);
  const closed = h.once(sock, 'close', 10000);
  sock.write('go');
  await closed;
  assert.strictEqual(end.fin, undefined, `an aborted download must not end with a FIN: ${JSON.stringify(end)}`);
  assert.strictEqual(end.error, 'ECONNRESET');
  srv.close();
  await h.stopChild(tool);
});
