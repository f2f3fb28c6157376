// Microsoft's hyco-ws and hyco-https, unmodified, listening on one node of a cluster and
// sending through the others and through the shared address (HAProxy). The cluster is
// started by tests/tests/cluster.rs, which runs this file with RELAY_CLUSTER set to
// {"nodes": ["host:port", ...], "lb": "host:port", "keyName": ..., "key": ...};
// without it (the single-broker interop run) the tests are skipped.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const WS = require('hyco-ws');
const https = require('hyco-https');
const h = require('./harness');

const cluster = process.env.RELAY_CLUSTER ? JSON.parse(process.env.RELAY_CLUSTER) : null;
const skip = cluster ? false : 'needs RELAY_CLUSTER (run by tests/tests/cluster.rs)';
const uri = (host, action) => `ws://${host}/$hc/hyco?sb-hc-action=${action}`;
const wsToken = (u) => WS.createRelayToken(u, cluster.keyName, cluster.key);
const count = (host) => h.listenerCount(host, 'hyco', wsToken(uri(host, 'listen')));

/** Every node counts `n` listeners. */
async function counted(n) {
  await h.until(async () => {
    for (const host of cluster.nodes) if (await count(host) !== n) return false;
    return true;
  }, 5000, `every node counts ${n} listeners`);
}

test('hyco-ws listens on node 0; senders on every other node and on the shared address echo', { skip, timeout: 60000 }, async () => {
  const listen = uri(cluster.nodes[0], 'listen');
  const srv = WS.createRelayedServer({ server: listen, token: () => wsToken(listen) },
    (sock) => sock.on('message', (m) => sock.send(m)));
  srv.on('error', () => {});
  await h.once(srv, 'listening', 5000);
  await counted(1);
  const blob = Buffer.alloc(100000);
  for (let i = 0; i < blob.length; i++) blob[i] = (i * 7) % 251;
  const senders = [...cluster.nodes.slice(1), cluster.lb, cluster.lb, cluster.lb, cluster.lb];
  for (const host of senders) {
    const u = `${uri(host, 'connect')}&sb-hc-id=cluster-${host}`;
    const c = WS.relayedConnect(u, wsToken(u), () => {});
    await h.once(c, 'open', 10000);
    c.send(blob);
    const [echoed] = await h.once(c, 'message', 10000);
    assert.ok(Buffer.compare(Buffer.from(echoed), blob) === 0, `echo through ${host} differs`);
    c.close();
  }
  srv.close();
  await counted(0);
});

test('hyco-https listens on node 0; inline and large responses through every other node', { skip, timeout: 60000 }, async () => {
  const listen = uri(cluster.nodes[0], 'listen');
  const srv = https.createRelayedServer({ server: listen, token: () => https.createRelayToken(listen, cluster.keyName, cluster.key) },
    (req, res) => {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => res.end(req.url.includes('big') ? Buffer.alloc(200000, 3) : `${req.method} ${req.url} ${Buffer.concat(chunks).length}`));
    });
  srv.on('error', () => {});
  srv.listen();
  await h.once(srv, 'listening', 5000);
  await counted(1);
  for (const host of [...cluster.nodes.slice(1), cluster.lb, cluster.lb]) {
    const token = https.createRelayToken(`http://${host}/hyco`, cluster.keyName, cluster.key);
    const small = await h.request(host, { method: 'POST', path: '/hyco/small', headers: { ServiceBusAuthorization: token }, body: Buffer.alloc(1000, 1) });
    assert.strictEqual(small.status, 200, `small via ${host}`);
    assert.strictEqual(small.body.toString(), 'POST /hyco/small 1000');
    const big = await h.request(host, { path: '/hyco/big', headers: { ServiceBusAuthorization: token } });
    assert.strictEqual(big.status, 200, `big via ${host}`);
    assert.strictEqual(big.body.length, 200000);
  }
  srv.close();
});
