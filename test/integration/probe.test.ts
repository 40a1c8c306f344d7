/**
 * Console probes (protocols/probe.ts through cluster.probeConsole), over real sockets: each
 * protocol's answer is recognised; a console that answers something else, says nothing, or
 * refuses is not.
 */
import t from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { probeConsole } from '../../gateway/cluster/cluster.js';
import { probeAnswer, probeGreeting } from '../../protocols/probe.js';
import { closedPort } from '../helpers/net.js';

async function server(t: { teardown(fn: () => unknown): void }, onSocket: (s: net.Socket) => void): Promise<number> {
  const srv = net.createServer((s) => {
    s.on('error', () => {});
    onSocket(s);
  });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  t.teardown(() => srv.close());
  return (srv.address() as net.AddressInfo).port;
}

t.test('each protocol answer is recognised, anything else is not', async (t) => {
  const rfb = await server(t, (s) => s.write('RFB 003.008\n'));
  const spice = await server(t, (s) =>
    s.once('data', (d: Buffer) => {
      // A SPICE server checks the link header it got, then replies with its own.
      if (d.subarray(0, 4).toString('latin1') !== 'REDQ' || d.readUInt32LE(12) !== d.length - 16) return;
      const header = Buffer.alloc(16);
      header.write('REDQ', 0, 'latin1');
      header.writeUInt32LE(2, 4);
      header.writeUInt32LE(2, 8);
      header.writeUInt32LE(178, 12);
      s.write(Buffer.concat([header, Buffer.alloc(178)]));
    }),
  );
  const rdp = await server(t, (s) =>
    s.once('data', (d: Buffer) => {
      // An RDP server answers a TPKT X.224 Connection Request (code 0xE0) with a Connection Confirm.
      if (d[0] === 3 && (d[5]! & 0xf0) === 0xe0) s.write(Buffer.from([0x03, 0x00, 0x00, 0x13, 0x0e, 0xd0, 0, 0, 0x12, 0x34, 0, 0x02, 0, 0x08, 0, 0x01, 0, 0, 0]));
    }),
  );
  const echo = await server(t, (s) => s.pipe(s));
  const silent = await server(t, () => undefined);
  const http = await server(t, (s) => s.end('HTTP/1.1 400 Bad Request\r\n\r\n'));
  const refused = await closedPort();
  const ms = 1000;
  t.equal(await probeConsole('127.0.0.1', rfb, 'vnc', ms), true, 'VNC: RFB banner');
  t.equal(await probeConsole('127.0.0.1', spice, 'spice', ms), true, 'SPICE: link reply');
  t.equal(await probeConsole('127.0.0.1', rdp, 'rdp', ms), true, 'RDP: X.224 Connection Confirm');
  for (const p of ['vnc', 'spice', 'rdp'] as const) {
    t.equal(await probeConsole('127.0.0.1', http, p, ms), false, `${p}: an HTTP server is not a console`);
    t.equal(await probeConsole('127.0.0.1', silent, p, 300), false, `${p}: silence until the deadline is no answer`);
    t.equal(await probeConsole('127.0.0.1', refused, p, ms), false, `${p}: refused`);
  }
  t.equal(await probeConsole('127.0.0.1', echo, 'rdp', ms), false, 'RDP: an echo of our request (a CR, not a CC) is not an answer');
  t.equal(await probeConsole('127.0.0.1', echo, 'spice', ms), false, 'SPICE: our own link message echoed back is not a reply');
  t.equal(await probeConsole('127.0.0.1', rfb, 'rdp', ms), false, 'a VNC console is not an RDP one');
});

t.test('greetings and answers split anywhere', async (t) => {
  t.equal(probeGreeting('vnc').length, 0, 'VNC: the server speaks first');
  t.equal(probeGreeting('spice').readUInt32LE(12), 18, 'SPICE: header size matches the link message');
  t.equal(probeGreeting('rdp').readUInt16BE(2), probeGreeting('rdp').length, 'RDP: TPKT length matches');
  const cc = Buffer.from([0x03, 0x00, 0x00, 0x0b, 0x06, 0xd0, 0, 0, 0, 0, 0]);
  for (let i = 0; i < 6; i++) t.equal(probeAnswer('rdp', cc.subarray(0, i)).kind, 'more', `RDP answer cut at ${i}: more`);
  t.equal(probeAnswer('rdp', cc).kind, 'match');
  t.equal(probeAnswer('vnc', Buffer.from('RFB 003.0')).kind, 'more');
  t.equal(probeAnswer('vnc', Buffer.from('RFX 003.008\n')).kind, 'no');
});
