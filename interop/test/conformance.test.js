// Raw-protocol conformance: a ws@8 client plays the listener and checks the JSON exactly
// (spec §4.4, items 6-12).
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const WS = require('hyco-ws');
const RawWS = require('ws');
const h = require('./harness');

let broker;
test.before(async () => { broker = await h.startBroker(); });
test.after(async () => { await broker.stop(); });

const base = () => `${h.wsScheme}://${broker.host}/$hc/hyco`;
const token = (uri, ttl) => WS.createRelayToken(uri, h.KEY_NAME, h.KEY, ttl);

/** A raw control channel that queues the JSON commands it receives. */
async function rawListener(ttl) {
  const uri = `${base()}?sb-hc-action=listen`;
  const ws = new RawWS(uri, { headers: { ServiceBusAuthorization: token(uri, ttl) } });
  const queue = [];
  const waiters = [];
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    const msg = JSON.parse(String(data));
    const w = waiters.shift();
    if (w) w(msg); else queue.push(msg);
  });
  await h.once(ws, 'open');
  ws.next = () => (queue.length ? Promise.resolve(queue.shift()) : new Promise((r) => waiters.push(r)));
  return ws;
}

function rawSender(protocols, headers = {}) {
  const uri = `${base()}/sub?x=1&sb-hc-action=connect&sb-hc-id=t-1`;
  return new RawWS(uri, protocols, { headers: { ServiceBusAuthorization: token(uri), 'X-Custom': 'abc', ...headers } });
}

test('accept JSON, single use, and expiry', { timeout: 15000 }, async () => {
  const l = await rawListener();
  const s = rawSender();
  const { accept } = await l.next();
  assert.strictEqual(accept.id, 't-1');
  const headerNames = Object.keys(accept.connectHeaders).map((k) => k.toLowerCase());
  assert.ok(headerNames.includes('sec-websocket-key'));
  assert.ok(headerNames.includes('x-custom'));
  assert.ok(!headerNames.includes('servicebusauthorization'));
  assert.match(accept.address, /\/hyco\/sub\?/);
  assert.match(accept.address, /x=1/);
  assert.match(accept.address, /sb-hc-action=accept/);
  assert.doesNotMatch(accept.address, /sb-hc-token/);
  const a = new RawWS(accept.address);
  await h.once(a, 'open');
  await h.once(s, 'open');
  const again = new RawWS(accept.address);
  const [, res] = await h.once(again, 'unexpected-response');
  assert.strictEqual(res.statusCode, 403);
  a.close(); s.close();
  l.close();
});

test('an unused accept address expires after accept_timeout_secs', { timeout: 15000 }, async () => {
  // A broker of its own with a short deadline: the shared one is lenient for loaded machines.
  const shared = broker;
  broker = await h.startBroker({ acceptTimeout: 1.5 });
  try {
    const l = await rawListener();
    const s2 = rawSender();
    s2.on('error', () => {});
    const { accept: late } = await l.next();
    await h.delay(2000);
    const tooLate = new RawWS(late.address);
    const [, res2] = await h.once(tooLate, 'unexpected-response');
    assert.strictEqual(res2.statusCode, 403);
    l.close();
  } finally {
    await broker.stop();
    broker = shared;
  }
});

test('reject: the listener gets 410, the sender the status', { timeout: 10000 }, async () => {
  const l = await rawListener();
  const s = rawSender();
  const { accept } = await l.next();
  const r = new RawWS(`${accept.address}&sb-hc-statusCode=403&sb-hc-statusDescription=nope`);
  const [, rres] = await h.once(r, 'unexpected-response');
  assert.strictEqual(rres.statusCode, 410);
  const [, sres] = await h.once(s, 'unexpected-response');
  assert.strictEqual(sres.statusCode, 403);
  l.close();
});

test('renewToken: valid keeps the channel, invalid closes with 1008', { timeout: 10000 }, async () => {
  const l = await rawListener();
  const uri = `${base()}?sb-hc-action=listen`;
  l.send(JSON.stringify({ renewToken: { token: token(uri) } }));
  l.ping('alive');
  const [pong] = await h.once(l, 'pong');
  assert.strictEqual(String(pong), 'alive');
  l.send(JSON.stringify({ renewToken: { token: WS.createRelayToken(uri, h.KEY_NAME, 'wrong') } }));
  const [code, reason] = await h.once(l, 'close');
  assert.strictEqual(code, 1008);
  assert.match(String(reason), /TrackingId:/);
});

test('a 3 s token that is never renewed closes with 1008 after the grace', { timeout: 15000 }, async () => {
  const l = await rawListener(3);
  const started = Date.now();
  const [code] = await h.once(l, 'close', 10000);
  assert.strictEqual(code, 1008);
  assert.ok(Date.now() - started >= 2000, 'not before expiry');
});

test('a Close is forwarded verbatim, without an echo from the broker', { timeout: 10000 }, async () => {
  // ws@8 answers a Close itself, so true half-close is pinned by the Rust e2e suite and the
  // relay-listener/relay-sender TCP pair below; here: code and reason arrive unchanged.
  const l = await rawListener();
  const s = rawSender();
  const { accept } = await l.next();
  const a = new RawWS(accept.address);
  await h.once(a, 'open');
  await h.once(s, 'open');
  const aClosed = h.once(a, 'close', 5000);
  const sClosed = h.once(s, 'close', 5000);
  s.close(4000, 'sender done');
  const [code, reason] = await aClosed;
  assert.deepStrictEqual([code, String(reason)], [4000, 'sender done']);
  const [scode] = await sClosed;
  assert.strictEqual(scode, 4000, 'the sender sees the listener echo, relayed');
  l.close();
});

test('broker pings are answered; unsolicited pongs are harmless', { timeout: 10000 }, async () => {
  const l = await rawListener();
  l.pong('unsolicited');
  l.ping('p');
  const [pong] = await h.once(l, 'pong');
  assert.strictEqual(String(pong), 'p');
  const s = rawSender(['chat.v2', 'chat.v1']);
  const { accept } = await l.next();
  const a = new RawWS(accept.address, 'chat.v2');
  await h.once(a, 'open');
  await h.once(s, 'open');
  assert.strictEqual(s.protocol, 'chat.v2');
  a.close(); s.close(); l.close();
});
