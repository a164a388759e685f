// The seed's original program: node's `tls` echo server ("welcome!" then echo).
// node links OpenSSL statically; tlsprof tracks it through node's exported CRYPTO_set_mem_functions.
// usage: node examples/node_echo_server.js CERT KEY [PORT] [READY_FILE] [--ctx-per-conn]
'use strict';
const tls = require('tls');
const fs = require('fs');

const [cert, key, port = '0', readyFile] = process.argv.slice(2);
const options = { cert: fs.readFileSync(cert), key: fs.readFileSync(key) };
const perConnection = process.argv.includes('--ctx-per-conn');

const server = tls.createServer(perConnection ? {
  // a fresh secure context, with node's root store, for every connection (the leak-shaped pattern)
  SNICallback: (name, cb) => cb(null, tls.createSecureContext({ ...options, ca: tls.rootCertificates })),
  ...options,
} : options, (socket) => {
  socket.write('welcome!\n');
  socket.pipe(socket);
  socket.on('error', () => {});
});
server.listen(Number(port), '127.0.0.1', () => {
  const p = server.address().port;
  if (readyFile) fs.writeFileSync(readyFile, `${p}\n`);
  console.log(`listening 127.0.0.1 ${p}`);
});
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
