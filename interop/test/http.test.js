// hyco-https listener with a plain HTTP(S) sender (spec §4.4, items 13-20, 22 and 24).
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const https = require('hyco-https');
const moment = require('moment');
const h = require('./harness');

let broker;
test.before(async () => { broker = await h.startBroker(); });
test.after(async () => { await broker.stop(); });

const listenUri = () => `${h.wsScheme}://${broker.host}/$hc/hyco?sb-hc-action=listen`;
const sendToken = () => https.createRelayToken(`${h.httpScheme}://${broker.host}/hyco`, h.KEY_NAME, h.KEY);

const seen = [];
function app(req, res) {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    seen.push({ url: req.url, headers: req.headers });
    if (req.url.includes('silent')) return; // never answers
    res.setHeader('Content-Type', 'text/plain');
    if (req.method === 'HEAD') { res.statusCode = 204; res.end(); return; }
    const body = Buffer.concat(chunks);
    res.end(req.url.includes('big') ? Buffer.alloc(100000, 1) : `${req.method} ${req.url} ${body.length}`);
  });
}

async function listener(options = {}) {
  const srv = https.createRelayedServer({ server: listenUri(), token: () => https.createRelayToken(listenUri(), h.KEY_NAME, h.KEY), ...options }, app);
  srv.on('error', () => {});
  srv.listen();
  await h.once(srv, 'listening', 3000);
  return srv;
}

const send = (opts) => h.request(broker.host, { ...opts, headers: { ServiceBusAuthorization: sendToken(), ...(opts.headers || {}) } });

test('inline GET and POST, 100 kB both ways, HEAD then GET, 20 in parallel', { timeout: 30000 }, async () => {
  const srv = await listener();
  const get = await send({ path: '/hyco/a/b?q=1&sb-hc-id=z', headers: { 'X-Custom': 'abc' } });
  assert.strictEqual(get.status, 200);
  assert.strictEqual(get.body.toString(), 'GET /hyco/a/b?q=1 0');
  assert.ok(get.headers.via, 'Via on the response');
  assert.match(get.headers['content-type'], /text\/plain/);
  const last = seen[seen.length - 1];
  assert.strictEqual(last.url, '/hyco/a/b?q=1');
  assert.strictEqual(last.headers['x-custom'], 'abc');
  assert.ok(!('servicebusauthorization' in last.headers));

  const post = await send({ method: 'POST', path: '/hyco/post', body: 'x'.repeat(1000) });
  assert.strictEqual(post.body.toString(), 'POST /hyco/post 1000');
  const big = await send({ path: '/hyco/big' });
  assert.ok(Buffer.compare(big.body, Buffer.alloc(100000, 1)) === 0, '100 kB response intact');
  const bigPost = await send({ method: 'POST', path: '/hyco/largepost', body: Buffer.alloc(100000, 2) });
  assert.strictEqual(bigPost.body.toString(), 'POST /hyco/largepost 100000');

  const head = await send({ method: 'HEAD', path: '/hyco/head' });
  assert.strictEqual(head.status, 204);
  const after = await send({ path: '/hyco/after' });
  assert.strictEqual(after.body.toString(), 'GET /hyco/after 0');

  const all = await Promise.all([...Array(20).keys()].map((i) => send({ path: `/hyco/p${i}` })));
  all.forEach((r, i) => assert.strictEqual(r.body.toString(), `GET /hyco/p${i} 0`));
  srv.close();
});

test('token locations, stripping, and Authorization passthrough', { timeout: 20000 }, async () => {
  const srv = await listener();
  assert.strictEqual((await h.request(broker.host, { path: '/hyco/none' })).status, 401);
  const q = await h.request(broker.host, { path: `/hyco/q?sb-hc-token=${encodeURIComponent(sendToken())}`, headers: { Authorization: 'app' } });
  assert.strictEqual(q.status, 200);
  let last = seen[seen.length - 1];
  assert.strictEqual(last.url, '/hyco/q');
  assert.strictEqual(last.headers.authorization, 'app', 'Authorization reaches the listener when the token came elsewhere');
  const hdr = await send({ path: '/hyco/h' });
  assert.strictEqual(hdr.status, 200);
  const auth = await h.request(broker.host, { path: '/hyco/auth', headers: { Authorization: sendToken() } });
  assert.strictEqual(auth.status, 200);
  last = seen[seen.length - 1];
  assert.ok(!('authorization' in last.headers), 'a consumed Authorization is stripped');
  srv.close();
});

test('no answer gives 504 at the deadline; no listener gives 502', { timeout: 20000 }, async () => {
  const srv = await listener();
  const silent = await send({ path: '/hyco/silent' });
  assert.strictEqual(silent.status, 504);
  assert.match(JSON.parse(silent.body).error.message, /TrackingId:/);
  srv.close();
  await h.until(async () => (await send({ path: '/hyco/x' })).status === 502, 5000, '502 without listener');
});

test('keepAliveTimeout pongs keep the channel for 5 s', { timeout: 20000 }, async () => {
  const srv = await listener({ keepAliveTimeout: moment.duration(1, 's') });
  let closed = false;
  srv.on('close', () => { closed = true; });
  await h.delay(5000);
  assert.ok(!closed);
  assert.strictEqual((await send({ path: '/hyco/k' })).status, 200);
  srv.close();
});

test('after a broker restart the hyco-https listener is back within 10 s', { timeout: 40000 }, async () => {
  const srv = await listener();
  const host = broker.host;
  await broker.stop();
  broker = await h.startBroker({ bind: host });
  await h.until(async () => (await send({ path: '/hyco/back' })).status === 200, 12000, 'listener back after restart');
  srv.close();
});
