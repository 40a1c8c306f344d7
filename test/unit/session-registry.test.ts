/**
 * session-registry.ts alone, with fake sessions: which parked session gives way to each cap, when
 * a new session is refused, the node's replay-byte total, and the connection count a parked
 * session holds for its address.
 */
import t from 'tap';
import { ConnectionCounts } from '../../gateway/admission.js';
import { type CapEvent, type HeldSession, type ResumeCaps, SessionRegistry } from '../../gateway/tunnel/session-registry.js';
import type { CloseReason } from '../../gateway/tunnel/pump.js';

const UNCAPPED: ResumeCaps = { maxSessionsPerUser: 100, maxParkedPerUser: 100, maxParked: 100, maxBufferedBytes: 1e12 };

let nextId = 1;

/** A session as the registry sees it: it reports its legs, parking, bytes and end like the real one. */
class Fake implements HeldSession {
  readonly owner: HeldSession['owner'];
  parked = false;
  isEnded = false;
  buffered = 0;
  closedWith: CloseReason | undefined;

  constructor(
    private readonly reg: SessionRegistry<Fake>,
    user: string,
    public client = '192.0.2.1',
  ) {
    this.owner = { id: `s${nextId++}`, user, vm: 'desk', protocol: 'vnc' };
    reg.update(this, false);
  }

  park(): this {
    this.parked = true;
    this.reg.update(this, true);
    return this;
  }

  resume(client = this.client): void {
    this.client = client;
    this.parked = false;
    this.reg.update(this, false);
  }

  grow(n: number): void {
    this.buffered += n;
    this.reg.replayChanged(n);
  }

  close(reason: CloseReason): void {
    if (this.isEnded) return;
    this.isEnded = true;
    this.parked = false;
    this.closedWith = reason;
    this.reg.replayChanged(-this.buffered);
    this.buffered = 0;
    this.reg.update(this, false);
  }
}

function registry(caps: Partial<ResumeCaps>, connections?: ConnectionCounts): { reg: SessionRegistry<Fake>; events: CapEvent[] } {
  const events: CapEvent[] = [];
  const reg = new SessionRegistry<Fake>({ caps: { ...UNCAPPED, ...caps }, onCap: (e) => events.push(e), ...(connections ? { connections } : {}) });
  return { reg, events };
}

t.test('sessions-per-user: a new session beyond it ends the user\'s oldest parked one, or is refused', async (t) => {
  const { reg, events } = registry({ maxSessionsPerUser: 2 });
  const a1 = new Fake(reg, 'alice');
  const a2 = new Fake(reg, 'alice');
  t.equal(reg.precheck('alice'), 'sessions-per-user', 'two live sessions: the precheck refuses a third');
  t.equal(reg.admit('alice'), 'sessions-per-user', 'and so does admit');
  t.equal(reg.admit('bob'), undefined, 'another user is not concerned');
  t.same(events, [
    { cap: 'sessions-per-user', action: 'refused', user: 'alice' },
    { cap: 'sessions-per-user', action: 'refused', user: 'alice' },
  ]);
  events.length = 0;
  a2.park();
  a1.park();
  t.equal(reg.precheck('alice'), undefined, 'with one parked, the precheck lets it through (parked sessions give way)');
  t.equal(reg.admit('alice'), undefined, 'admit makes room');
  t.ok(a2.isEnded, 'by ending the oldest parked session');
  t.equal(a2.closedWith, 'session-cap');
  t.notOk(a1.isEnded);
  t.same(events, [{ cap: 'sessions-per-user', action: 'ended', user: 'alice', session: a2.owner.id }]);
  t.equal(reg.heldBy('alice'), 1);
  t.equal(reg.get(a2.owner.id), undefined, 'and forgetting it');
});

t.test('parked-per-user: parking one more ends the user\'s oldest parked session', async (t) => {
  const { reg, events } = registry({ maxParkedPerUser: 2 });
  const [a1, a2, a3] = [new Fake(reg, 'alice'), new Fake(reg, 'alice'), new Fake(reg, 'alice')];
  const b1 = new Fake(reg, 'bob').park();
  a2.park();
  a1.park();
  t.equal(reg.parkedCount, 3);
  a3.park();
  t.ok(a2.isEnded, 'the one parked first ended');
  t.notOk(a1.isEnded || a3.isEnded || b1.isEnded, 'the others, and the other user\'s, stay');
  t.equal(reg.parkedCount, 3);
  t.same(events, [{ cap: 'parked-per-user', action: 'ended', user: 'alice', session: a2.owner.id }]);
  a1.resume();
  const a4 = new Fake(reg, 'alice').park();
  t.notOk(a4.isEnded || a3.isEnded, 'a resumed session no longer counts as parked');
});

t.test('parked (node): one more parked ends the oldest parked session of the user who holds the most', async (t) => {
  const { reg, events } = registry({ maxParked: 3 });
  const b1 = new Fake(reg, 'bob').park();
  const a1 = new Fake(reg, 'alice').park();
  const a2 = new Fake(reg, 'alice').park();
  const c1 = new Fake(reg, 'carol').park();
  t.ok(a1.isEnded, 'alice holds the most: her oldest gave way, not bob\'s older one');
  t.notOk(b1.isEnded || a2.isEnded || c1.isEnded);
  t.same(events.map((e) => [e.cap, e.action, e.session]), [['parked', 'ended', a1.owner.id]]);
  // All hold one now (bob, alice, carol): the oldest overall gives way.
  const d1 = new Fake(reg, 'dave').park();
  t.ok(b1.isEnded, 'on a tie, the oldest parked overall');
  t.notOk(d1.isEnded);
  t.equal(reg.parkedCount, 3);
});

t.test('buffered-bytes: parked sessions end, most bytes first; then new ones are refused and live ones are over budget', async (t) => {
  const { reg, events } = registry({ maxBufferedBytes: 1000 });
  const p1 = new Fake(reg, 'alice').park();
  const p2 = new Fake(reg, 'bob').park();
  const p0 = new Fake(reg, 'carol').park();
  p1.grow(400);
  p2.grow(200);
  const live = new Fake(reg, 'dave');
  live.grow(300);
  t.equal(reg.bufferedBytes, 900);
  t.notOk(reg.overBudget);
  live.grow(200);
  t.ok(p1.isEnded, 'over by 100: the parked session with the most bytes ended');
  t.notOk(p2.isEnded || p0.isEnded || live.isEnded);
  t.equal(reg.bufferedBytes, 700, 'and its bytes were given back');
  live.grow(400);
  t.ok(p2.isEnded, 'over again: the next one');
  t.notOk(p0.isEnded, 'a parked session holding nothing frees nothing: it stays');
  t.equal(reg.bufferedBytes, 900);
  live.grow(200);
  t.ok(reg.overBudget, 'only live bytes left, over the budget: live sessions are told (they keep a small window)');
  t.equal(reg.precheck('erin'), 'buffered-bytes', 'a new session is refused before its console is dialled');
  t.equal(reg.admit('erin'), 'buffered-bytes', 'and at attach');
  t.same(
    events.map((e) => [e.cap, e.action, e.user]),
    [
      ['buffered-bytes', 'ended', 'alice'],
      ['buffered-bytes', 'ended', 'bob'],
      ['buffered-bytes', 'refused', 'erin'],
      ['buffered-bytes', 'refused', 'erin'],
    ],
  );
  live.grow(-500);
  t.notOk(reg.overBudget, 'the live client acknowledged: under again');
  t.equal(reg.admit('erin'), undefined);
  live.close('client-closed');
  t.equal(reg.bufferedBytes, 0, 'an ended session gives its bytes back');
});

t.test('buffered-bytes: a parked session that grows past the budget may be the one that ends', async (t) => {
  const { reg } = registry({ maxBufferedBytes: 1000 });
  const small = new Fake(reg, 'alice').park();
  small.grow(100);
  const big = new Fake(reg, 'bob').park();
  big.grow(950);
  t.ok(big.isEnded, 'it ended inside its own report');
  t.notOk(small.isEnded);
  t.equal(reg.bufferedBytes, 100);
});

t.test('a parked session holds a connection count for the address that parked it, until it resumes or ends', async (t) => {
  const counts = new ConnectionCounts({ maxConnections: 1000, maxConnectionsPerAddress: 2 });
  const { reg } = registry({}, counts);
  const s1 = new Fake(reg, 'alice', '2001:db8:1:2::10');
  t.equal(counts.total, 0, 'a live session holds nothing (its socket is counted by the listener)');
  s1.park();
  t.equal(counts.holding('2001:db8:1:2::/64'), 1, 'parked: counted under the address key (IPv6 by its /64)');
  s1.park();
  t.equal(counts.holding('2001:db8:1:2::/64'), 1, 'reported twice, held once');
  const s2 = new Fake(reg, 'alice', '2001:db8:1:2::11').park();
  t.equal(counts.check('2001:db8:1:2::/64'), 'address-limit', 'two parked sessions fill a limit of two');
  s1.resume('192.0.2.7');
  t.equal(counts.holding('2001:db8:1:2::/64'), 1, 'resumed: released');
  s2.close('client-closed');
  t.equal(counts.total, 0, 'ended while parked: released');
  s1.park();
  t.equal(counts.holding('192.0.2.7'), 1, 'parked again: under the address of the leg that parked it');
  s1.close('client-closed');
  t.equal(counts.total, 0);
});

t.test('the cluster record sees parking, resuming and the end, caps included', async (t) => {
  const log: string[] = [];
  const reg = new SessionRegistry<Fake>({ caps: { ...UNCAPPED, maxParkedPerUser: 1 }, record: { put: (id, parked) => log.push(`put ${id} ${parked}`), forget: (id) => log.push(`forget ${id}`) } });
  const a = new Fake(reg, 'alice');
  const b = new Fake(reg, 'alice');
  a.park();
  b.park();
  const { id: ia } = a.owner;
  const { id: ib } = b.owner;
  t.same(log, [`put ${ia} false`, `put ${ib} false`, `put ${ia} true`, `put ${ib} true`, `forget ${ia}`]);
});
