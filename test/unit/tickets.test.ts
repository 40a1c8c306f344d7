import t from 'tap';
import fc from 'fast-check';
import { TICKET_LENGTH, TICKET_RE, checkTicket, mintTicket, ticketProtocol } from '../../gateway/auth/tickets.js';
import { mintToken, verifyToken } from '../../gateway/auth/tokens.js';
import { base32Decode, base32Encode } from '../../gateway/auth/base32.js';
import { MemoryAuthStore } from '../../gateway/auth/store.js';
import { MemoryDirectory, newSigningKey } from '../../gateway/directory/memory.js';
import { type KeyRing, toVmRecord, vmSchema } from '../../gateway/directory/directory.js';
import { Authenticator } from '../../gateway/auth/authenticator.js';
import { Metrics } from '../../gateway/metrics.js';

const ring = (): KeyRing => ({ current: newSigningKey(1), previous: [] });

t.test('tickets are DNS-label-safe and bound to VM and protocol', async (t) => {
  const keys = ring();
  const { ticket, claims } = mintTicket(keys, 'demo', 'vnc', 60_000);
  t.ok(ticket.length <= 63, 'fits one DNS label');
  t.equal(ticket.length, TICKET_LENGTH);
  t.match(ticket, /^[a-z0-9]+$/, 'lowercase letters and digits');
  t.ok(TICKET_RE.test(ticket));
  t.equal(ticketProtocol(ticket), 'vnc');
  const ok = checkTicket(keys, ticket, 'demo');
  t.ok(ok.ok);
  t.same(ok.ok && ok.claims, claims);
  t.same(checkTicket(keys, ticket, 'other'), { ok: false, reason: 'bad-mac' }, 'another VM');
  t.same(checkTicket(ring(), ticket, 'demo'), { ok: false, reason: 'bad-mac' }, 'another cluster key with the same id');
  t.same(checkTicket({ current: newSigningKey(7), previous: [] }, ticket, 'demo'), { ok: false, reason: 'unknown-key' });
  t.same(checkTicket(keys, ticket, 'demo', Date.now() + 61_000), { ok: false, reason: 'expired' });
  t.same(checkTicket(keys, `${ticket}a`, 'demo'), { ok: false, reason: 'malformed' });
  t.same(checkTicket(keys, ticket.toUpperCase(), 'demo'), { ok: false, reason: 'malformed' });
});

t.test('rotation keeps the previous key valid', async (t) => {
  const old = newSigningKey(1);
  const { ticket } = mintTicket({ current: old, previous: [] }, 'demo', 'spice', 60_000);
  const rotated: KeyRing = { current: newSigningKey(2), previous: [old] };
  t.ok(checkTicket(rotated, ticket, 'demo').ok);
  t.notOk(checkTicket({ current: newSigningKey(3), previous: [rotated.current] }, ticket, 'demo').ok, 'two rotations later it is gone');
});

t.test('any single changed character breaks a ticket', async (t) => {
  const keys = ring();
  const { ticket } = mintTicket(keys, 'demo', 'vnc', 60_000);
  fc.assert(
    fc.property(fc.nat(ticket.length - 1), fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz234567'), (i, c) => {
      if (ticket[i] === c) return true;
      const forged = ticket.slice(0, i) + c + ticket.slice(i + 1);
      return !checkTicket(keys, forged, 'demo').ok;
    }),
    { numRuns: 2000 },
  );
  t.pass();
});

t.test('base32 round trip', async (t) => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 1, maxLength: 64 }), (bytes) => {
      const text = base32Encode(bytes);
      return Buffer.compare(base32Decode(text, bytes.length) ?? Buffer.alloc(0), Buffer.from(bytes)) === 0;
    }),
  );
  t.equal(base32Decode('a1', 1), undefined, 'digit 1 is not in the alphabet');
  t.pass();
});

const REUSE = { windowMs: 10_000, afterCloseMs: 2_000 };

t.test('single use: first, again from the same address, refused elsewhere and after expiry', async (t) => {
  let now = 1_000_000;
  const store = new MemoryAuthStore(() => now);
  t.teardown(() => store.close());
  await store.putTicket({ id: 'abc', user: 'u', vm: 'demo', protocol: 'spice', expiresAt: now + 60_000 });
  const first = await store.redeemTicket('abc', '10.0.0.1', now, 's1', REUSE);
  t.equal(first.outcome, 'first');
  const again = await store.redeemTicket('abc', '10.0.0.1', now, 's2', REUSE);
  t.same(again.outcome === 'again' && again.sessionId, 's1', 'a SPICE channel joins the same session');
  t.same(await store.redeemTicket('abc', '10.0.0.2', now, 's3', REUSE), { outcome: 'refused', reason: 'replay' });
  t.same(await store.redeemTicket('nope', '10.0.0.1', now, 's4', REUSE), { outcome: 'refused', reason: 'unknown' });
  now += 60_000;
  t.same(await store.redeemTicket('abc', '10.0.0.1', now, 's5', REUSE), { outcome: 'refused', reason: 'expired' });
});

t.test('tokens: purpose, expiry, tampering', async (t) => {
  const keys = ring();
  const { token, payload } = mintToken(keys, 'session', { sub: 'alice' }, 3_600_000);
  t.same(verifyToken(keys, 'session', token), payload);
  t.equal(verifyToken(keys, 'resume', token), undefined, 'a session token is no resume token');
  t.equal(verifyToken(keys, 'session', token, payload.exp), undefined, 'expired');
  const [v, body, mac] = token.split('.') as [string, string, string];
  const evil = Buffer.from(JSON.stringify({ ...payload, sub: 'admin' })).toString('base64url');
  t.equal(verifyToken(keys, 'session', `${v}.${evil}.${mac}`), undefined, 'changed payload');
  t.equal(verifyToken(keys, 'session', `${v}.${body}.${mac.slice(0, -2)}`), undefined, 'truncated MAC');
  t.equal(verifyToken(keys, 'session', 'x'.repeat(5000)), undefined, 'oversized');
  // Found by test/unit/fuzz-parsers.test.ts: Node's base64url decoder skips foreign characters and
  // the last character's spare bits, so these decoded to the very MAC and passed.
  const sibling = mac.slice(0, -1) + '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_'.split('').find((c) => c !== mac.at(-1) && Buffer.from(mac.slice(0, -1) + c, 'base64url').equals(Buffer.from(mac, 'base64url')));
  for (const spelling of [`${mac}!`, `!${mac}`, `${mac.slice(0, 10)}*${mac.slice(10)}`, `${mac}=`, sibling]) {
    t.equal(verifyToken(keys, 'session', `${v}.${body}.${spelling}`), undefined, `another spelling of the MAC: ${spelling}`);
  }
  const resume = mintToken(keys, 'resume', { sub: 'alice', vm: 'demo' }, 600_000);
  t.equal(verifyToken(keys, 'resume', resume.token)?.vm, 'demo');
});

t.test('a ticket and its resume token open one console session (caps and max session time key on it)', async (t) => {
  const dir = new MemoryDirectory();
  const store = new MemoryAuthStore();
  t.teardown(() => store.close());
  const auth = new Authenticator(dir, store, { ticketTtlMs: 60_000, resumeTtlMs: 600_000, sessionTtlMs: 3_600_000, loginsPerUserPerMinute: 10, loginsPerAddressPerMinute: 10, authFailuresPerAddressPerMinute: 100, concurrentHashesPerAddress: 8, concurrentHashes: 16, ticketsPerUserPerMinute: 60, ticketReuseMs: 10_000, ticketReuseAfterCloseMs: 2_000 }, new Metrics());
  await dir.putUser({ name: 'alice', passwordHash: 'x', roles: ['user'], groups: [], sessionsNotBefore: 0 });
  const vm = toVmRecord(vmSchema.parse({ name: 'desk', node: 'n1', endpoints: [{ protocol: 'spice', host: '127.0.0.1', port: 5901 }], users: ['alice'] }));
  await dir.putVm(vm);
  const issued = await auth.issueTicket(dir.getUser('alice')!, vm, 'spice');
  const first = await auth.redeemTicket(issued.ticket, vm, 'spice', '127.0.0.1');
  const channel = await auth.redeemTicket(issued.ticket, vm, 'spice', '127.0.0.1');
  const resumed = await auth.resume(issued.resume, 'desk', '127.0.0.1');
  t.equal(channel.sessionId, first.sessionId, 'a SPICE client\'s second channel: same session');
  t.equal(resumed.sessionId, first.sessionId, 'a reconnect with the resume token: same session');
  t.ok(resumed.issuedAt <= Date.now() && resumed.issuedAt > Date.now() - 60_000, 'and says when the session could have begun at the earliest');
  const other = await auth.issueTicket(dir.getUser('alice')!, vm, 'spice');
  t.not((await auth.redeemTicket(other.ticket, vm, 'spice', '127.0.0.1')).sessionId, first.sessionId, 'another ticket: another session');
});
