/**
 * The floor of the runtime: the smallest TLS -> TCP relay Node can run (tls.createServer, one
 * net.connect per connection, pipe() both ways). It does nothing oneport does (no protocol
 * detection, authentication, directory, limits, logs or metrics), so oneport's figures over its
 * figures are what oneport itself costs, and its figures over HAProxy's are what Node's TLS and
 * streams cost before any gateway logic.
 *
 *   node bench/node-relay.ts <listen port> <console port> <pem file: certificate and key>
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';

const [port, consolePort, pemFile] = process.argv.slice(2);
const pem = readFileSync(String(pemFile));
const server = tls.createServer({ cert: pem, key: pem }, (client) => {
  client.on('error', () => client.destroy());
  const console = net.connect({ host: '127.0.0.1', port: Number(consolePort), noDelay: true });
  console.on('error', () => client.destroy());
  client.on('close', () => console.destroy());
  console.on('close', () => client.destroy());
  client.setNoDelay(true);
  client.pipe(console);
  console.pipe(client);
});
server.on('error', (e) => {
  process.stderr.write(`node-relay: ${e.message}\n`);
  process.exit(1);
});
server.listen(Number(port), '127.0.0.1');
