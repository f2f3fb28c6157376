// hyco-ws listener and sender against the real broker (spec §4.4, items 1-5 and 21-23).
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const WS = require('hyco-ws');
const RawWS = require('ws');
const h = require('./harness');

let broker;
test.before(async () => { broker = await h.startBroker(); });
test.after(async () => { await broker.stop(); });

const listenUri = (hc = 'hyco') => `${h.wsScheme}://${broker.host}/$hc/${hc}?sb-hc-action=listen`;
const tokenFor = (uri, key = h.KEY) => WS.createRelayToken(uri, h.KEY_NAME, key);

/** A hyco-ws echo listener; resolves once it is listening. */
async function echoListener(hc = 'hyco', onConnection) {
  const uri = listenUri(hc);
  const srv = WS.createRelayedServer({ server: uri, token: () => tokenFor(uri) },
    onConnection || ((sock) => sock.on('message', (m) => sock.send(m))));
  srv.on('error', () => {});
  await h.once(srv, 'listening', 2000);
  return srv;
}

function sender(path = 'hyco/sub?x=1&', id = 't-1') {
  const uri = `${h.wsScheme}://${broker.host}/$hc/${path}sb-hc-action=connect&sb-hc-id=${id}`;
  return WS.relayedConnect(uri, tokenFor(uri), () => {});
}

test('LISTENING within 2 s and the broker counts the listener', { timeout: 10000 }, async () => {
  const srv = await echoListener();
  await h.until(async () => await h.listenerCount(broker.host, 'hyco', tokenFor(listenUri())) === 1, 3000, 'listener count 1');
  srv.close();
  await h.until(async () => await h.listenerCount(broker.host, 'hyco', tokenFor(listenUri())) === 0, 3000, 'listener count 0');
});

test('text and 200 kB binary echo byte-identical, then close codes travel both ways', { timeout: 15000 }, async () => {
  let listenerSide;
  let resolveClosed;
  const closedAtListener = new Promise((resolve) => { resolveClosed = resolve; });
  const srv = await echoListener('hyco', (sock) => {
    listenerSide = sock;
    sock.on('message', (m) => sock.send(m));
    sock.on('close', (code, reason) => resolveClosed([code, String(reason)]));
  });
  const c = sender();
  await h.once(c, 'open');
  c.send('hello');
  const [text] = await h.once(c, 'message');
  assert.strictEqual(String(text), 'hello');
  const blob = Buffer.alloc(200000);
  for (let i = 0; i < blob.length; i++) blob[i] = i % 251;
  c.send(blob);
  const [echoed] = await h.once(c, 'message');
  assert.ok(Buffer.compare(Buffer.from(echoed), blob) === 0, '200 kB echo differs');
  c.close(4000, 'bye');
  // We forward the original close code and reason (pinned here): 4000 'bye' reaches the listener.
  assert.deepStrictEqual(await closedAtListener, [4000, 'bye']);

  // And a listener-side close reaches the sender with its code.
  const c2 = sender();
  await h.once(c2, 'open');
  await h.until(() => listenerSide && listenerSide.readyState === 1, 3000, 'second listener socket');
  listenerSide.close(4001, 'from listener');
  const [code, reason] = await h.once(c2, 'close');
  assert.deepStrictEqual([code, String(reason)], [4001, 'from listener']);
  srv.close();
});

test('sub-protocol chosen by the listener reaches both ends', { timeout: 10000 }, async () => {
  let chosen;
  const srv = await echoListener('hyco', (sock) => { sock.on('open', () => { chosen = sock.protocol; }); });
  const uri = `${h.wsScheme}://${broker.host}/$hc/hyco?sb-hc-action=connect`;
  const c = new RawWS(uri, ['chat.v2', 'chat.v1'], { headers: { ServiceBusAuthorization: tokenFor(uri) } });
  await h.once(c, 'open');
  assert.strictEqual(c.protocol, 'chat.v2');
  await h.until(() => chosen === 'chat.v2', 2000, 'listener protocol');
  c.close();
  srv.close();
});

test('wrong key 401, token for another HC refused, 26th listener refused', { timeout: 20000 }, async () => {
  const uri = listenUri();
  await h.until(async () => await h.listenerCount(broker.host, 'hyco', tokenFor(uri)) === 0, 5000, 'earlier listeners gone');
  const bad = new RawWS(uri, { headers: { ServiceBusAuthorization: tokenFor(uri, 'wrong') } });
  const [, res] = await h.once(bad, 'unexpected-response');
  assert.strictEqual(res.statusCode, 401);
  assert.match(res.statusMessage, /TrackingId:/);

  const other = new RawWS(uri, { headers: { ServiceBusAuthorization: tokenFor(listenUri('other')) } });
  const [, res2] = await h.once(other, 'unexpected-response');
  assert.ok([401, 403].includes(res2.statusCode), `got ${res2.statusCode}`);

  const sockets = [];
  for (let i = 0; i < 25; i++) {
    const s = new RawWS(uri, { headers: { ServiceBusAuthorization: tokenFor(uri) } });
    await h.once(s, 'open');
    sockets.push(s);
  }
  const extra = new RawWS(uri, { headers: { ServiceBusAuthorization: tokenFor(uri) } });
  const [, res3] = await h.once(extra, 'unexpected-response');
  assert.strictEqual(res3.statusCode, 403);
  assert.match(res3.statusMessage, /MaximumListenersPerEndpoint/);
  sockets.forEach((s) => s.close());
  await h.until(async () => await h.listenerCount(broker.host, 'hyco', tokenFor(uri)) === 0, 5000, 'listeners gone');
});

test('three hyco-ws listeners share 30 connects', { timeout: 20000 }, async () => {
  const counts = [0, 0, 0];
  const servers = [];
  for (let i = 0; i < 3; i++) {
    servers.push(await echoListener('hyco', (sock) => { counts[i]++; sock.on('message', (m) => sock.send(m)); }));
  }
  for (let i = 0; i < 30; i++) {
    const c = sender('hyco?', `lb-${i}`);
    await h.once(c, 'open');
    c.send('x');
    await h.once(c, 'message');
    c.close();
  }
  assert.ok(counts.every((n) => n >= 1), `counts ${counts}`);
  assert.strictEqual(counts.reduce((a, b) => a + b), 30);
  servers.forEach((s) => s.close());
});

test('a bad-key reconnect storm does not starve a good listener', { timeout: 20000 }, async () => {
  const uri = listenUri();
  const stormy = WS.createRelayedServer({ server: uri, token: () => tokenFor(uri, 'wrong-key') }, () => {});
  let attempts = 0;
  stormy.on('error', () => { attempts++; });
  await h.delay(1000);
  const good = await echoListener();
  const c = sender();
  await h.once(c, 'open');
  c.send('still works');
  const [m] = await h.once(c, 'message');
  assert.strictEqual(String(m), 'still works');
  c.close();
  stormy.close();
  good.close();
  assert.ok(attempts > 0);
});
