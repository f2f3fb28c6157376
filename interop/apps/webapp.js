// A small but real web application for the listener agent's HTTP reverse-proxy tests:
// a redirect to an absolute backend URL, a cookie with Path=/, a request echo, a large body,
// and a WebSocket endpoint (the `ws` package) that negotiates a sub-protocol and echoes.
// Prints `listening on <port>` once it accepts connections.
'use strict';
const http = require('node:http');
const { WebSocketServer } = require('ws');

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://backend');
  if (url.pathname === '/') {
    res.writeHead(302, { Location: `http://${req.headers.host}/login?from=root` });
    return res.end();
  }
  if (url.pathname === '/login') {
    res.writeHead(200, { 'Set-Cookie': 'sid=abc123; Path=/; HttpOnly', 'Content-Type': 'text/html' });
    return res.end('<a href="/home">home</a>');
  }
  if (url.pathname === '/echo') {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({
        method: req.method,
        url: req.url,
        headers: req.headers,
        body: Buffer.concat(chunks).toString(),
      }));
    });
    return;
  }
  if (url.pathname === '/big') {
    res.writeHead(200, { 'Content-Type': 'application/octet-stream' });
    return res.end(Buffer.alloc(300 * 1024, 'x'));
  }
  res.writeHead(404, { 'Content-Type': 'text/plain' });
  res.end('not found');
});

const wss = new WebSocketServer({
  server,
  path: '/ws',
  handleProtocols: (offered) => (offered.has('chat') ? 'chat' : false),
});
wss.on('connection', (ws, req) => {
  ws.send(`hello ${req.headers['x-forwarded-prefix'] || ''}`);
  ws.on('message', (data, isBinary) => {
    ws.send(isBinary ? data : `echo:${data}`, { binary: isBinary });
  });
});

server.listen(0, '127.0.0.1', () => {
  console.log(`listening on ${server.address().port}`);
});
