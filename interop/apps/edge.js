// An edge gateway's web UI, as the browser tests meet it behind `relay-listener run --http`:
// a page that sets two cookies (one HttpOnly on /settings), reads document.cookie, opens its
// own WebSocket and an EventSource from its own location, and links to another page both
// absolutely and relatively; a 2 MB file that answers HEAD with its length; an SSE stream
// whose events carry the time they were sent. Every request is recorded, so a test can check
// that no relay token or relay cookie ever reached the app.
// Run alone it prints `listening on <port>`.
'use strict';
const http = require('node:http');
const crypto = require('node:crypto');
const { WebSocketServer } = require('ws');

const BIG = Buffer.alloc(2118348);
for (let i = 0; i < BIG.length; i++) BIG[i] = (i * 31) % 251;
const BIG_SHA256 = crypto.createHash('sha256').update(BIG).digest('hex');

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>Edge gateway</title></head>
<body>
<h1>Edge gateway</h1>
<p id="cookies">cookies: ?</p>
<p id="ws">ws: pending</p>
<p id="sse">sse: pending</p>
<p><a id="absolute" href="/about.html">About (absolute link)</a>
   <a id="relative" href="about.html">About (relative link)</a></p>
<script>
document.getElementById('cookies').textContent = 'cookies: ' + document.cookie;
const base = location.pathname.replace(/[^/]*$/, '');
const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + base + 'ws');
ws.onopen = () => ws.send('hello from the page');
ws.onmessage = (e) => { document.getElementById('ws').textContent = 'ws: ' + e.data; };
ws.onerror = () => { document.getElementById('ws').textContent = 'ws: error'; };
const delays = [];
const events = new EventSource(base + 'sse');
events.onmessage = (e) => {
  delays.push(Date.now() - Number(e.data));
  document.getElementById('sse').textContent = 'sse: ' + delays.length + ' events, delays ms ' + delays.join(',');
  if (delays.length >= 3) events.close();
};
</script>
</body></html>`;

const ABOUT = '<!doctype html><html><head><title>About this edge</title></head><body><p id="about">about</p></body></html>';

function start(port = 0) {
  const requests = [];
  const server = http.createServer((req, res) => {
    requests.push({ method: req.method, url: req.url, headers: req.headers });
    const url = new URL(req.url, 'http://edge');
    switch (url.pathname) {
      case '/':
      case '/index.html':
        res.setHeader('Set-Cookie', ['edge_session=abc123; Path=/', 'edge_theme=dark; Path=/settings; HttpOnly']);
        res.setHeader('Content-Type', 'text/html; charset=utf-8');
        return res.end(PAGE);
      case '/about.html':
        res.setHeader('Content-Type', 'text/html; charset=utf-8');
        return res.end(ABOUT);
      case '/big.bin':
        // Node answers HEAD with these headers and no body.
        res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': BIG.length });
        return res.end(BIG);
      case '/sse': {
        res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-store' });
        let sent = 0;
        const tick = () => {
          if (res.destroyed) return;
          res.write(`data: ${Date.now()}\n\n`);
          if (++sent < 3) setTimeout(tick, 300); // and then the stream stays open, idle
        };
        tick();
        req.on('close', () => res.end());
        return undefined;
      }
      default:
        res.writeHead(404, { 'Content-Type': 'text/plain' });
        return res.end('not found');
    }
  });
  const wss = new WebSocketServer({ server, path: '/ws' });
  wss.on('connection', (ws, req) => {
    requests.push({ method: 'WEBSOCKET', url: req.url, headers: req.headers });
    ws.on('message', (data) => ws.send(`echo: ${data}`));
  });
  return new Promise((resolve) => {
    server.listen(port, '127.0.0.1', () => resolve({ server, port: server.address().port, requests, close: () => { wss.close(); server.closeAllConnections(); server.close(); } }));
  });
}

module.exports = { start, BIG_SHA256, BIG_LENGTH: BIG.length };

if (require.main === module) {
  start(Number(process.argv[2] || 0)).then(({ port }) => console.log(`listening on ${port}`));
}
