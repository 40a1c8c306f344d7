/**
 * The console stand-in for the benchmark, in its own process so that neither the gateway's nor
 * the load generator's CPU is mixed with it. One TCP port on loopback; per connection:
 *
 *   server -> "RFB 003.008\n"                  (speaks first, like a VNC server)
 *   client -> 'E' then anything                echoed back as it comes
 *   client -> 'S' uint64be(n) then n bytes     counted; one byte 'D' answers once n arrived
 *   client -> 'R' uint64be(n)                  the backend sends n bytes (64 KiB writes, with
 *                                              backpressure); anything the client sends is ignored
 *
 * Started by bench/run.ts with an IPC channel; sends {type:'ready', port} and exits when the
 * channel closes.
 */
import net from 'node:net';
import { BANNER, DONE, MODE_ECHO, MODE_SINK, MODE_SOURCE, type BackendReady } from './ipc.js';

const BLOCK = Buffer.alloc(64 * 1024, 0x5a);

function serve(s: net.Socket): void {
  s.on('error', () => s.destroy());
  s.setNoDelay(true);
  s.write(BANNER);
  let mode: 'pick' | 'echo' | 'sink' | 'source' = 'pick';
  let head: Buffer = Buffer.alloc(0);
  let target = 0;
  let received = 0;
  let answered = false;

  const echo = (chunk: Buffer): void => {
    if (chunk.length > 0 && !s.write(chunk)) {
      s.pause();
      s.once('drain', () => s.resume());
    }
  };
  const count = (n: number): void => {
    received += n;
    if (!answered && received >= target) {
      answered = true;
      s.write(Buffer.of(DONE));
    }
  };

  const source = (n: number): void => {
    let left = n;
    const go = (): void => {
      while (left > 0 && !s.destroyed) {
        const k = Math.min(left, BLOCK.length);
        left -= k;
        if (!s.write(k === BLOCK.length ? BLOCK : BLOCK.subarray(0, k))) {
          s.once('drain', go);
          return;
        }
      }
    };
    go();
  };

  s.on('data', (chunk: Buffer) => {
    if (mode === 'source') return;
    if (mode === 'sink') {
      count(chunk.length);
      return;
    }
    if (mode === 'echo') {
      echo(chunk);
      return;
    }
    head = head.length === 0 ? chunk : Buffer.concat([head, chunk]);
    if (head[0] === MODE_ECHO) {
      mode = 'echo';
      echo(head.subarray(1));
    } else if (head[0] === MODE_SINK) {
      if (head.length < 9) return;
      mode = 'sink';
      target = Number(head.readBigUInt64BE(1));
      count(head.length - 9);
    } else if (head[0] === MODE_SOURCE) {
      if (head.length < 9) return;
      mode = 'source';
      source(Number(head.readBigUInt64BE(1)));
    } else {
      s.destroy();
    }
    head = Buffer.alloc(0);
  });
}

const server = net.createServer({ noDelay: true }, serve);
server.listen({ host: '127.0.0.1', port: 0, backlog: 1024 }, () => {
  const ready: BackendReady = { type: 'ready', port: (server.address() as net.AddressInfo).port };
  process.send?.(ready);
});
process.on('disconnect', () => process.exit(0));
process.on('SIGTERM', () => process.exit(0));
