import t from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { patternPixel, startRfbServer, TEST_PATTERN_BARS } from '../../gateway/demo/rfb.js';
import { pixelAt, rfbConnect, rfbRequestFrame } from '../helpers/rfb-client.js';
import { streamQueue } from '../helpers/bytes.js';

// Guards on every wait, so a broken server fails a test in seconds rather than at tap's timeout.
const WAIT_MS = 5_000;

async function connect(port: number): Promise<net.Socket> {
  const s = net.connect({ port, host: '127.0.0.1' });
  s.on('error', () => {});
  s.setNoDelay(true);
  await once(s, 'connect', { signal: AbortSignal.timeout(WAIT_MS) });
  return s;
}

/** Exactly `n` bytes from the socket. */
function read(s: net.Socket, n: number): Promise<Buffer> {
  return streamQueue(s).read(n, WAIT_MS);
}

async function write(s: net.Socket, data: Buffer | string): Promise<void> {
  await new Promise<void>((resolve, reject) => s.write(data, (e) => (e ? reject(e) : resolve())));
}

/** Resolves, with whatever was sent and not read yet, once the server has closed the connection. */
function serverCloses(s: net.Socket): Promise<Buffer> {
  return streamQueue(s).rest(WAIT_MS);
}

/** The 3.8 handshake by hand; returns the ServerInit's width and height. */
async function handshake38(s: net.Socket): Promise<{ width: number; height: number }> {
  await read(s, 12);
  await write(s, 'RFB 003.008\n');
  await read(s, 2);
  await write(s, Buffer.from([1]));
  await read(s, 4);
  await write(s, Buffer.from([1]));
  const init = await read(s, 24);
  await read(s, init.readUInt32BE(20));
  return { width: init.readUInt16BE(0), height: init.readUInt16BE(2) };
}

function updateRequest(incremental: boolean, x: number, y: number, w: number, h: number): Buffer {
  const b = Buffer.alloc(10);
  b.writeUInt8(3, 0);
  b.writeUInt8(incremental ? 1 : 0, 1);
  b.writeUInt16BE(x, 2);
  b.writeUInt16BE(y, 4);
  b.writeUInt16BE(w, 6);
  b.writeUInt16BE(h, 8);
  return b;
}

t.test('the 3.8 handshake through the test client', async (t) => {
  const srv = await startRfbServer();
  t.teardown(() => srv.close());
  const s = await connect(srv.port);
  t.teardown(() => s.destroy());
  const session = await rfbConnect(s);
  t.same(session, { version: 'RFB 003.008\n', width: 640, height: 480, name: 'oneport demo' });
  t.equal(srv.host, '127.0.0.1');
});

t.test('a custom size and name', async (t) => {
  const srv = await startRfbServer({ width: 100, height: 37, name: 'bureau ✓' });
  t.teardown(() => srv.close());
  const s = await connect(srv.port);
  t.teardown(() => s.destroy());
  const session = await rfbConnect(s);
  t.same(session, { version: 'RFB 003.008\n', width: 100, height: 37, name: 'bureau ✓' });
  const frame = await rfbRequestFrame(s, session);
  t.equal(frame.length, 100 * 37 * 4);
  let wrong = 0;
  for (let y = 0; y < 37; y++) for (let x = 0; x < 100; x++) if (pixelAt(frame, session, x, y).join() !== patternPixel(x, y, 100, 37).join()) wrong++;
  t.equal(wrong, 0, 'every pixel of an odd-sized screen follows patternPixel');
});

t.test('bad options are refused', async (t) => {
  await t.rejects(startRfbServer({ width: 0 }), RangeError);
  await t.rejects(startRfbServer({ height: 70_000 }), RangeError);
  await t.rejects(startRfbServer({ fill: [0, 256, 0] }), RangeError);
});

t.test('the test pattern', async (t) => {
  t.equal(TEST_PATTERN_BARS.length, 8);
  t.same(patternPixel(0, 0, 640, 480), [255, 255, 255], 'white first');
  t.same(patternPixel(639, 0, 640, 480), [0, 0, 0], 'black last');
  t.same(patternPixel(0, 479, 640, 480), [0, 0, 0], 'the ramp starts black');
  t.same(patternPixel(639, 479, 640, 480), [255, 255, 255], 'and ends white');
  t.same(patternPixel(320, 400, 640, 480), [128, 128, 128]);
  t.same(patternPixel(100, 359, 640, 480), TEST_PATTERN_BARS[1], 'bars cover the top three quarters');
  t.same(patternPixel(100, 360, 640, 480), [40, 40, 40], 'the ramp the bottom quarter');
});

t.test('a full frame is the test pattern', async (t) => {
  const srv = await startRfbServer();
  t.teardown(() => srv.close());
  const s = await connect(srv.port);
  t.teardown(() => s.destroy());
  const session = await rfbConnect(s);
  const frame = await rfbRequestFrame(s, session);
  t.equal(frame.length, 640 * 480 * 4);
  const barWidth = 640 / TEST_PATTERN_BARS.length;
  for (let i = 0; i < TEST_PATTERN_BARS.length; i++) {
    const want = TEST_PATTERN_BARS[i];
    for (const x of [i * barWidth, i * barWidth + barWidth / 2, (i + 1) * barWidth - 1]) {
      for (const y of [0, 200, 359]) t.same(pixelAt(frame, session, x, y), want, `bar ${i} at (${x}, ${y})`);
    }
  }
  for (const [x, y] of [[0, 360], [1, 479], [160, 400], [320, 420], [638, 479], [639, 360]] as const) {
    const [r, g, b] = pixelAt(frame, session, x, y);
    t.same([r, g, b], patternPixel(x, y, 640, 480), `ramp at (${x}, ${y})`);
    t.ok(r === g && g === b, 'grey');
  }
  let wrong = 0;
  for (let y = 0; y < 480; y++) for (let x = 0; x < 640; x++) if (pixelAt(frame, session, x, y).join() !== patternPixel(x, y, 640, 480).join()) wrong++;
  t.equal(wrong, 0, 'every pixel');
  t.equal(frame[3], 0, 'the padding byte of 32 bpp at depth 24 is zero');

  const again = await rfbRequestFrame(s, session);
  t.ok(again.equals(frame), 'a second request gets the same picture');
});

t.test('a fill server paints one colour', async (t) => {
  const srv = await startRfbServer({ fill: [12, 34, 56], width: 64, height: 48 });
  t.teardown(() => srv.close());
  const s = await connect(srv.port);
  t.teardown(() => s.destroy());
  const session = await rfbConnect(s);
  const frame = await rfbRequestFrame(s, session);
  let wrong = 0;
  for (let y = 0; y < 48; y++) for (let x = 0; x < 64; x++) if (pixelAt(frame, session, x, y).join() !== '12,34,56') wrong++;
  t.equal(wrong, 0);
  t.same([...frame.subarray(0, 4)], [56, 34, 12, 0], 'little-endian 0x00RRGGBB on the wire');
});

t.test('16-bpp RGB565 big-endian, byte by byte', async (t) => {
  const srv = await startRfbServer();
  t.teardown(() => srv.close());
  const s = await connect(srv.port);
  t.teardown(() => s.destroy());

  t.equal((await read(s, 12)).toString('latin1'), 'RFB 003.008\n');
  await write(s, 'RFB 003.008\n');
  t.same([...(await read(s, 2))], [1, 1], 'one security type: None');
  await write(s, Buffer.from([1]));
  t.same([...(await read(s, 4))], [0, 0, 0, 0], 'SecurityResult OK');
  await write(s, Buffer.from([1])); // shared
  // prettier-ignore
  t.same([...(await read(s, 24))], [
    0x02, 0x80, 0x01, 0xe0, // 640 x 480
    32, 24, 0, 1, // bpp, depth, little-endian, true colour
    0, 255, 0, 255, 0, 255, // max red, green, blue
    16, 8, 0, // shifts
    0, 0, 0, // padding
    0, 0, 0, 12, // name length
  ], 'ServerInit');
  t.equal((await read(s, 12)).toString('utf8'), 'oneport demo');

  // prettier-ignore
  await write(s, Buffer.from([
    0, 0, 0, 0, // SetPixelFormat, padding
    16, 16, 1, 1, // 16 bpp, depth 16, big-endian, true colour
    0, 31, 0, 63, 0, 31, // max 5, 6, 5 bits
    11, 5, 0, // shifts
    0, 0, 0,
  ]));
  // One pixel from the middle of each bar: x = 40, 120, ... 600.
  await write(s, updateRequest(false, 0, 100, 640, 1));
  t.same([...(await read(s, 16))], [0, 0, 0, 1, 0, 0, 0, 100, 0x02, 0x80, 0, 1, 0, 0, 0, 0], 'one Raw 640x1 rectangle at (0, 100)');
  const row = await read(s, 640 * 2);
  const bars = [0, 1, 2, 3, 4, 5, 6, 7].map((i) => row.readUInt16BE((40 + 80 * i) * 2));
  t.same(bars, [0xffff, 0xffe0, 0x07ff, 0x07e0, 0xf81f, 0xf800, 0x001f, 0x0000], 'white yellow cyan green magenta red blue black');
  t.same([...row.subarray(0, 2)], [0xff, 0xff]);
  t.same([...row.subarray(80 * 2, 80 * 2 + 2)], [0xff, 0xe0], 'big-endian: high byte first');

  // Grey 128 at (320, 400): red 16/31, green 32/63, blue 16/31.
  await write(s, updateRequest(false, 320, 400, 1, 1));
  t.same([...(await read(s, 18))], [0, 0, 0, 1, 0x01, 0x40, 0x01, 0x90, 0, 1, 0, 1, 0, 0, 0, 0, 0x84, 0x10], 'a ramp pixel');

  // Clipped to the screen: asked for 100x100 at (630, 475), gets 10x5.
  await write(s, updateRequest(false, 630, 475, 100, 100));
  t.same([...(await read(s, 16))], [0, 0, 0, 1, 0x02, 0x76, 0x01, 0xdb, 0, 10, 0, 5, 0, 0, 0, 0]);
  const corner = await read(s, 10 * 5 * 2);
  t.equal(corner.readUInt16BE(corner.length - 2), 0xffff, 'the last ramp pixel is white');

  // Entirely outside: an update with no rectangles.
  await write(s, updateRequest(false, 700, 500, 10, 10));
  t.same([...(await read(s, 4))], [0, 0, 0, 0]);

  // 8-bpp BGR233 too: red in bits 0-2, green 3-5, blue 6-7.
  // prettier-ignore
  await write(s, Buffer.from([0, 0, 0, 0, 8, 8, 0, 1, 0, 7, 0, 7, 0, 3, 0, 3, 6, 0, 0, 0]));
  await write(s, updateRequest(false, 0, 0, 640, 1));
  t.same([...(await read(s, 16))], [0, 0, 0, 1, 0, 0, 0, 0, 0x02, 0x80, 0, 1, 0, 0, 0, 0]);
  const row8 = await read(s, 640);
  t.same([0, 1, 2, 3, 4, 5, 6, 7].map((i) => row8[40 + 80 * i]), [0xff, 0x3f, 0xf8, 0x38, 0xc7, 0x07, 0xc0, 0x00]);
});

t.test('an incremental request gets no answer: nothing on this desktop changes', async (t) => {
  const srv = await startRfbServer({ width: 8, height: 8 });
  t.teardown(() => srv.close());
  const s = await connect(srv.port);
  t.teardown(() => s.destroy());
  await handshake38(s);
  await write(s, Buffer.concat([updateRequest(true, 0, 0, 8, 8), updateRequest(false, 0, 0, 1, 1)]));
  // The first bytes back answer the second request, so the first got nothing.
  t.same([...(await read(s, 16))], [0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0]);
  t.same([...(await read(s, 4))], [255, 255, 255, 0]);
});

t.test('a 3.3 client: the server names the security type, no SecurityResult', async (t) => {
  const srv = await startRfbServer();
  t.teardown(() => srv.close());
  const s = await connect(srv.port);
  t.teardown(() => s.destroy());
  await read(s, 12);
  await write(s, 'RFB 003.003\n');
  t.same([...(await read(s, 4))], [0, 0, 0, 1], 'U32 security type None');
  await write(s, Buffer.from([0])); // ClientInit, not shared
  const init = await read(s, 24);
  t.equal(init.readUInt16BE(0), 640);
  t.equal(init.readUInt16BE(2), 480);
  t.equal((await read(s, init.readUInt32BE(20))).toString(), 'oneport demo');
  await write(s, updateRequest(false, 0, 0, 1, 1));
  t.same([...(await read(s, 20))], [0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 255, 255, 255, 0], 'default format is 32-bpp little-endian');
});

t.test('a 3.7 client: a security list, but no SecurityResult', async (t) => {
  const srv = await startRfbServer();
  t.teardown(() => srv.close());
  const s = await connect(srv.port);
  t.teardown(() => s.destroy());
  await read(s, 12);
  await write(s, 'RFB 003.007\n');
  t.same([...(await read(s, 2))], [1, 1]);
  await write(s, Buffer.from([1]));
  await write(s, Buffer.from([1]));
  t.same([...(await read(s, 4))], [0x02, 0x80, 0x01, 0xe0], 'ServerInit follows directly');
});

t.test('a 3.8 client choosing another security type hears why, then the server closes', async (t) => {
  const srv = await startRfbServer();
  t.teardown(() => srv.close());
  const s = await connect(srv.port);
  t.teardown(() => s.destroy());
  await read(s, 12);
  await write(s, 'RFB 003.008\n');
  await read(s, 2);
  await write(s, Buffer.from([2]));
  const rest = await serverCloses(s);
  t.equal(rest.readUInt32BE(0), 1, 'SecurityResult failed');
  t.match(rest.subarray(8, 8 + rest.readUInt32BE(4)).toString(), /None/);
});

t.test('something that is not RFB is dropped', async (t) => {
  const srv = await startRfbServer();
  t.teardown(() => srv.close());
  const s = await connect(srv.port);
  t.teardown(() => s.destroy());
  await read(s, 12);
  await write(s, 'GET / HTTP/1.1\r\n\r\n');
  t.equal((await serverCloses(s)).length, 0);
});

t.test('messages split into 1-byte writes, and many in one write', async (t) => {
  const srv = await startRfbServer({ width: 16, height: 16 });
  t.teardown(() => srv.close());
  const s = await connect(srv.port);
  t.teardown(() => s.destroy());
  const bytewise = async (data: Buffer | string): Promise<void> => {
    for (const byte of Buffer.from(data)) await write(s, Buffer.from([byte]));
  };
  t.equal((await read(s, 12)).toString(), 'RFB 003.008\n');
  await bytewise('RFB 003.008\n');
  await read(s, 2);
  await bytewise(Buffer.from([1]));
  await read(s, 4);
  await bytewise(Buffer.from([1]));
  const init = await read(s, 24);
  await read(s, init.readUInt32BE(20));
  // SetPixelFormat to 32-bpp big-endian, SetEncodings [Raw, CopyRect], KeyEvent, PointerEvent,
  // ClientCutText "hi", then a request: each arriving one byte at a time.
  const all = Buffer.concat([
    Buffer.from([0, 0, 0, 0, 32, 24, 1, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]),
    Buffer.from([2, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1]),
    Buffer.from([4, 1, 0, 0, 0, 0, 0xff, 0x0d]),
    Buffer.from([5, 1, 0, 3, 0, 4]),
    Buffer.from([6, 0, 0, 0, 0, 0, 0, 2, 0x68, 0x69]),
    updateRequest(false, 2, 0, 1, 1),
  ]);
  await bytewise(all);
  t.same([...(await read(s, 20))], [0, 0, 0, 1, 0, 2, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 255, 255, 0], 'x = 2 is in the yellow bar: 0x00FFFF00, big-endian');
  // The same sequence in a single write.
  await write(s, Buffer.concat([all, all]));
  const both = await read(s, 40);
  t.same([...both.subarray(16, 20)], [0, 255, 255, 0]);
  t.same([...both.subarray(36, 40)], [0, 255, 255, 0]);
});

t.test('a client that asks faster than it reads gets every answer, in order', async (t) => {
  const srv = await startRfbServer();
  t.teardown(() => srv.close());
  const s = await connect(srv.port);
  t.teardown(() => s.destroy());
  await handshake38(s);
  // About 50 MB of answers, far past the socket buffers: the server has to wait for 'drain'.
  const requests = Array.from({ length: 40 }, (_, i) => updateRequest(false, i, 0, 639 - i, 480));
  // Not awaited: the server stops reading until this side reads, so the write cannot finish first.
  s.write(Buffer.concat(requests));
  for (let i = 0; i < 40; i++) {
    const header = await read(s, 16);
    t.equal(header.readUInt16BE(4), i, `answer ${i}`);
    const pixels = await read(s, (639 - i) * 480 * 4);
    if (i === 39) t.same([...pixels.subarray(-4)], [255, 255, 255, 0], 'the last one is intact: (638, 479) rounds to white');
  }
});

t.test('a megabyte of cut text is skipped, not a reason to close', async (t) => {
  const srv = await startRfbServer({ width: 4, height: 4 });
  t.teardown(() => srv.close());
  const s = await connect(srv.port);
  t.teardown(() => s.destroy());
  await handshake38(s);
  const header = Buffer.from([6, 0, 0, 0, 0, 0x10, 0, 0]); // exactly 1 MiB
  await write(s, Buffer.concat([header, Buffer.alloc(1024 * 1024, 0x61), updateRequest(false, 0, 0, 1, 1)]));
  t.same([...(await read(s, 20))], [0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 255, 255, 255, 0]);
});

t.test('an unknown message type closes the connection', async (t) => {
  const srv = await startRfbServer();
  t.teardown(() => srv.close());
  const s = await connect(srv.port);
  t.teardown(() => s.destroy());
  await handshake38(s);
  await write(s, Buffer.concat([Buffer.from([7]), updateRequest(false, 0, 0, 1, 1)]));
  t.equal((await serverCloses(s)).length, 0, 'and nothing after it is answered');
});

t.test('ClientCutText claiming 2 GiB closes the connection', async (t) => {
  const srv = await startRfbServer();
  t.teardown(() => srv.close());
  const s = await connect(srv.port);
  t.teardown(() => s.destroy());
  await handshake38(s);
  await write(s, Buffer.from([6, 0, 0, 0, 0x80, 0, 0, 0]));
  t.equal((await serverCloses(s)).length, 0);
});

t.test('a colour-map pixel format closes the connection', async (t) => {
  const srv = await startRfbServer();
  t.teardown(() => srv.close());
  const s = await connect(srv.port);
  t.teardown(() => s.destroy());
  await handshake38(s);
  await write(s, Buffer.from([0, 0, 0, 0, 8, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
  t.equal((await serverCloses(s)).length, 0);
});

t.test('close() destroys connected clients, stops listening, and can be called again', async (t) => {
  const srv = await startRfbServer();
  t.teardown(() => srv.close());
  const ready = await connect(srv.port);
  t.teardown(() => ready.destroy());
  await rfbConnect(ready);
  const midHandshake = await connect(srv.port);
  t.teardown(() => midHandshake.destroy());
  await read(midHandshake, 12);
  const closes = [once(ready, 'close'), once(midHandshake, 'close')];
  await srv.close();
  await Promise.all(closes);
  t.ok(ready.destroyed && midHandshake.destroyed);
  await srv.close();
  await t.rejects(connect(srv.port), { code: 'ECONNREFUSED' });
});

t.test('accepted counts connections', async (t) => {
  const srv = await startRfbServer();
  t.teardown(() => srv.close());
  t.equal(srv.accepted, 0);
  for (let i = 1; i <= 3; i++) {
    const s = await connect(srv.port);
    t.teardown(() => s.destroy());
    await read(s, 12); // the banner: the server has seen the connection
    t.equal(srv.accepted, i);
  }
});

t.test('the test client fails clearly', async (t) => {
  t.test('on a silent server: timeout', async (t) => {
    const silent = net.createServer((c) => c.on('error', () => {}));
    t.teardown(() => silent.close());
    silent.listen(0, '127.0.0.1');
    await once(silent, 'listening');
    const s = await connect((silent.address() as net.AddressInfo).port);
    t.teardown(() => s.destroy());
    await t.rejects(rfbConnect(s, { timeoutMs: 100 }), /timed out waiting for ProtocolVersion/);
  });

  t.test('on a server that hangs up', async (t) => {
    const rude = net.createServer((c) => {
      c.on('error', () => {});
      c.end('RFB 003.008\n');
    });
    t.teardown(() => rude.close());
    rude.listen(0, '127.0.0.1');
    await once(rude, 'listening');
    const s = await connect((rude.address() as net.AddressInfo).port);
    t.teardown(() => s.destroy());
    await t.rejects(rfbConnect(s), /stream (ended|closed) while waiting for number of security types/);
  });

  t.test('on a server that refuses, with its reason', async (t) => {
    const refusing = net.createServer((c) => {
      c.on('error', () => {});
      c.write('RFB 003.008\n');
      c.once('data', () => c.end(Buffer.concat([Buffer.from([0, 0, 0, 0, 11]), Buffer.from('go away now')])));
    });
    t.teardown(() => refusing.close());
    refusing.listen(0, '127.0.0.1');
    await once(refusing, 'listening');
    const s = await connect((refusing.address() as net.AddressInfo).port);
    t.teardown(() => s.destroy());
    await t.rejects(rfbConnect(s), /refused the connection: go away now/);
  });

  t.test('on an absurd name length', async (t) => {
    const liar = net.createServer((c) => {
      c.on('error', () => {});
      c.write('RFB 003.008\n');
      const init = Buffer.alloc(24);
      init.writeUInt32BE(0xffffffff, 20);
      let step = 0;
      c.on('data', () => {
        step++;
        if (step === 1) c.write(Buffer.from([1, 1]));
        if (step === 2) c.write(Buffer.alloc(4));
        if (step === 3) c.write(init);
      });
    });
    t.teardown(() => liar.close());
    liar.listen(0, '127.0.0.1');
    await once(liar, 'listening');
    const s = await connect((liar.address() as net.AddressInfo).port);
    t.teardown(() => s.destroy());
    await t.rejects(rfbConnect(s), /desktop name of 4294967295 bytes is absurd/);
  });
});
