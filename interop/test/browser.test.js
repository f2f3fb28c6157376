// An edge's web UI through the relay, as a real browser sees it: Debian's Chromium, driven by
// playwright-core, and curl, in front of the real broker; our relay-listener agent in
// reverse-proxy mode (`run --http`) in front of a real web app (apps/edge.js). Path mode
// (`/site/ui/...`) and host mode (`site-7-ui.relay.test`, which Chromium's host resolver
// rules and curl's --resolve map to 127.0.0.1). Screenshots go to target/browser-artifacts/.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const path = require('node:path');
const crypto = require('node:crypto');
const { execFile } = require('node:child_process');
const { promisify } = require('node:util');
const { chromium } = require('playwright-core');
const https = require('hyco-https');
const h = require('./harness');
const edge = require('../apps/edge');

const HC = 'site/ui';
const LABEL = 'site-7-ui';
const BASE = 'relay.test';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = path.join(__dirname, '..', '..', 'target', 'browser-artifacts', h.TLS ? 'tls' : 'plain');
// A new page's first events over a loaded 2-core machine: generous, and still far below the
// 300 ms between events and the idle stream after them, which a buffering relay would show.
const SSE_BOUND_MS = 1000;

let broker; let app; let agent; let browser;
const children = [];

const run = (bin, args) => h.runBinary(bin, args, children);

const port = () => broker.host.split(':')[1];
const pathOrigin = () => `${h.httpScheme}://127.0.0.1:${port()}`;
const hostOrigin = () => `${h.httpScheme}://${LABEL}.${BASE}:${port()}`;
const token = () => https.createRelayToken(`http://127.0.0.1:${port()}/${HC}`, h.KEY_NAME, h.KEY, 600);
const withToken = (url) => `${url}${url.includes('?') ? '&' : '?'}sb-hc-token=${encodeURIComponent(token())}`;

test.before(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  app = await edge.start();
  broker = await h.startBroker({
    server: `host_base = "*.${BASE}"`,
    tail: `[[hybrid_connections]]\nname = "${HC}"\n[[server.hosts]]\nname = "${LABEL}"\nhybrid_connection = "${HC}"\n`,
  });
  const tls = h.TLS ? ['--ca-cert', process.env.RELAY_TLS_CERT] : [];
  agent = run('relay-listener', ['run', '--endpoint', `${h.wsScheme}://${broker.host}`, '--hc', HC,
    '--sas-key-name', h.KEY_NAME, '--http', `http://127.0.0.1:${app.port}/`, ...tls]);
  await h.until(async () => await h.listenerCount(broker.host, HC, token()) === 1, 15000, `agent listening: ${agent.output()}`);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', `--host-resolver-rules=MAP *.${BASE} 127.0.0.1`],
  });
});

test.after(async () => {
  if (browser) await browser.close();
  await Promise.all(children.map(h.stopChild));
  if (broker) await broker.stop();
  if (app) app.close();
});

async function newPage() {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  return { context, page: await context.newPage() };
}

/** Waits for the page's WebSocket echo and three SSE events; returns the SSE delays. */
async function pageWorks(page, name) {
  await page.waitForFunction(() => document.getElementById('ws').textContent.startsWith('ws: echo'), null, { timeout: 15000 });
  assert.strictEqual(await page.textContent('#ws'), 'ws: echo: hello from the page');
  await page.waitForFunction(() => /^sse: 3 events/.test(document.getElementById('sse').textContent), null, { timeout: 15000 });
  const delays = (await page.textContent('#sse')).split('delays ms ')[1].split(',').map(Number);
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`) });
  for (const d of delays) assert.ok(d < SSE_BOUND_MS, `SSE event took ${d} ms: ${delays}`);
  console.log(`# ${name}: SSE delays ${delays.join(', ')} ms`);
  return delays;
}

function noSecretReachedTheApp() {
  for (const r of app.requests) {
    const seen = JSON.stringify(r);
    assert.ok(!/sb-hc-token|SharedAccessSignature|relay-session|servicebusauthorization/i.test(seen), `the app saw: ${seen}`);
  }
}

test('path mode: one login, then cookies, the page\'s WebSocket and SSE work', { timeout: 60000 }, async () => {
  const { context, page } = await newPage();
  const refused = await page.goto(`${pathOrigin()}/${HC}/`);
  assert.strictEqual(refused.status(), 401, 'no session, no token');
  await page.goto(withToken(`${pathOrigin()}/${HC}/index.html`));
  await page.waitForURL(`${pathOrigin()}/${HC}/index.html`, { timeout: 10000 });
  assert.strictEqual(await page.title(), 'Edge gateway');
  const cookies = await page.textContent('#cookies');
  assert.match(cookies, /edge_session=abc123/, 'the page sees its own cookie');
  assert.doesNotMatch(cookies, /edge_theme|relay-session/, 'HttpOnly cookies stay hidden');
  await pageWorks(page, 'path-mode');
  const jar = await context.cookies();
  const relay = jar.find((c) => c.name === 'relay-session');
  assert.ok(relay && relay.httpOnly && relay.sameSite === 'Strict' && relay.path === `/${HC}`, JSON.stringify(jar));
  assert.strictEqual(relay.secure, h.TLS);
  const theme = jar.find((c) => c.name === 'edge_theme');
  assert.ok(theme && theme.httpOnly && theme.path === `/${HC}/settings`, 'two cookies, each with its own attributes');
  // A relative link stays under the prefix.
  await page.click('#relative');
  await page.waitForURL(`${pathOrigin()}/${HC}/about.html`);
  assert.strictEqual(await page.textContent('#about'), 'about');
  await context.close();
  noSecretReachedTheApp();
});

test('a login link followed from another site still opens the session', { timeout: 60000 }, async () => {
  // `localhost` is another site than 127.0.0.1: the browser withholds SameSite=Strict cookies
  // after a redirect chain that began there, so the login must not be a plain redirect.
  const { context, page } = await newPage();
  const target = withToken(`${pathOrigin()}/${HC}/index.html`);
  await page.route('http://localhost:1/launch', (route) => route.fulfill({
    contentType: 'text/html', body: `<a id="go" href="${target.replace(/&/g, '&amp;')}">open the edge</a>`,
  }));
  await page.goto('http://localhost:1/launch');
  await page.click('#go');
  await page.waitForURL(`${pathOrigin()}/${HC}/index.html`, { timeout: 10000 });
  assert.strictEqual(await page.title(), 'Edge gateway');
  await pageWorks(page, 'path-mode-from-another-site');
  await context.close();
});

test('host mode: absolute links, cookies at /, and a refusal without a login', { timeout: 60000 }, async () => {
  const { context, page } = await newPage();
  assert.strictEqual((await page.goto(`${hostOrigin()}/`)).status(), 401);
  await page.goto(withToken(`${hostOrigin()}/`));
  await page.waitForURL(`${hostOrigin()}/`, { timeout: 10000 });
  assert.match(await page.textContent('#cookies'), /edge_session=abc123/);
  await pageWorks(page, 'host-mode');
  const jar = await context.cookies();
  const name = h.TLS ? '__Host-relay-session' : 'relay-session';
  const relay = jar.find((c) => c.name === name);
  assert.ok(relay && relay.httpOnly && relay.path === '/' && relay.domain === `${LABEL}.${BASE}`, JSON.stringify(jar));
  assert.ok(jar.find((c) => c.name === 'edge_session' && c.path === '/'), 'the app\'s cookie keeps Path=/');
  await page.click('#absolute');
  await page.waitForURL(`${hostOrigin()}/about.html`);
  assert.strictEqual(await page.textContent('#about'), 'about');
  await context.close();

  // Another browser, without the session, is refused on every path.
  const other = await newPage();
  assert.strictEqual((await other.page.goto(`${hostOrigin()}/about.html`)).status(), 401);
  await other.context.close();
  noSecretReachedTheApp();
});

// Asynchronous: the app answers from this very process.
async function curl(args) {
  const tls = h.TLS ? ['--cacert', process.env.RELAY_TLS_CERT] : [];
  const { stdout } = await promisify(execFile)('curl', ['-sS', '--max-time', '20', ...tls, ...args],
    { maxBuffer: 8 << 20, encoding: 'buffer' });
  return stdout;
}

test('curl: HEAD sizes the file, GET gets it whole, both cookies arrive apart', { timeout: 60000 }, async () => {
  const auth = ['-H', `ServiceBusAuthorization: ${token()}`];
  const resolve = ['--resolve', `${LABEL}.${BASE}:${port()}:127.0.0.1`];
  for (const base of [`${pathOrigin()}/${HC}`, hostOrigin()]) {
    const head = (await curl([...resolve, ...auth, '-I', `${base}/big.bin`])).toString();
    assert.match(head, new RegExp(`content-length: ${edge.BIG_LENGTH}\\r\\n`, 'i'), head);
    const body = await curl([...resolve, ...auth, `${base}/big.bin`]);
    assert.strictEqual(crypto.createHash('sha256').update(body).digest('hex'), edge.BIG_SHA256);
    const page = (await curl([...resolve, ...auth, '-D', '-', '-o', '/dev/null', `${base}/`])).toString();
    const cookies = page.split('\r\n').filter((l) => /^set-cookie:/i.test(l));
    assert.strictEqual(cookies.length, 2, page);
  }
  noSecretReachedTheApp();
});
