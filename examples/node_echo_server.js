// The seed's original program: node's `tls` echo server ("welcome!" then echo).
// node links OpenSSL statically; tlsprof tracks it through node's exported CRYPTO_set_mem_functions.
// usage: node examples/node_echo_server.js CERT KEY [PORT] [READY_FILE] [--ctx-per-conn] [--plain]
// --plain: the same server over plain TCP (net.createServer), the twin that measures node's own
// per-socket cost without TLS (tests/test_static_openssl.py subtracts it from the TLS server's).
'use strict';
const tls = require('tls');
const net = require('net');
const fs = require('fs');

const [cert, key, port = '0', readyFile] = process.argv.slice(2);
const options = { cert: fs.readFileSync(cert), key: fs.readFileSync(key) };
const perConnection = process.argv.includes('--ctx-per-conn');

const plain = process.argv.includes('--plain');
const onConnection = (socket) => {
  socket.write('welcome!\n');
  socket.pipe(socket);
  socket.on('error', () => {});
};

const server = plain ? net.createServer(onConnection) : tls.createServer(perConnection ? {
  // a fresh secure context, with node's root store, for every connection (the leak-shaped pattern)
  SNICallback: (name, cb) => cb(null, tls.createSecureContext({ ...options, ca: tls.rootCertificates })),
  ...options,
} : options, onConnection);
server.listen(Number(port), '127.0.0.1', () => {
  const p = server.address().port;
  if (readyFile) fs.writeFileSync(readyFile, `${p}\n`);
  console.log(`listening 127.0.0.1 ${p}`);
});
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
