/**
 * The viewer's reconnect policy (web/reconnect.js, plain JavaScript served to browsers): jittered
 * exponential backoff, a cap, a budget, and a reset after a stable connection. Fake time only.
 */
import t from 'tap';
import { DEFAULTS, Reconnector, backoffDelay, type ReconnectStatus } from '../../web/reconnect.js';

function fakeTime() {
  let now = 0;
  const timers: Array<{ at: number; fn: () => void; id: number }> = [];
  let next = 1;
  return {
    now: () => now,
    setTimeout: (fn: () => void, ms: number) => {
      timers.push({ at: now + ms, fn, id: next });
      return next++;
    },
    clearTimeout: (id: unknown) => {
      const i = timers.findIndex((x) => x.id === id);
      if (i >= 0) timers.splice(i, 1);
    },
    /** Advance the clock, firing due timers in order. */
    advance(ms: number) {
      const end = now + ms;
      for (;;) {
        timers.sort((a, b) => a.at - b.at);
        const due = timers[0];
        if (!due || due.at > end) break;
        timers.shift();
        now = due.at;
        due.fn();
      }
      now = end;
    },
    pending: () => timers.length,
  };
}

t.test('backoff doubles from the base, is jittered within [d/2, d], and stops growing at the cap', async (t) => {
  const opts = { ...DEFAULTS, baseMs: 500, capMs: 8000 };
  t.equal(backoffDelay(1, opts, () => 0), 250);
  t.equal(backoffDelay(1, opts, () => 1), 500);
  t.equal(backoffDelay(2, opts, () => 1), 1000);
  t.equal(backoffDelay(4, opts, () => 1), 4000);
  t.equal(backoffDelay(5, opts, () => 1), 8000);
  t.equal(backoffDelay(30, opts, () => 1), 8000, 'capped');
  t.equal(backoffDelay(30, opts, () => 0), 4000, 'jitter never goes below half');
  for (let i = 0; i < 200; i++) {
    const d = backoffDelay(3, opts);
    t.ok(d >= 1000 && d <= 2000, `attempt 3 waits 1-2 s, got ${d}`);
    if (d < 1000 || d > 2000) break;
  }
});

t.test('retries with growing delays, then stops after the budget', async (t) => {
  const clock = fakeTime();
  const statuses: ReconnectStatus[] = [];
  let connects = 0;
  const r = new Reconnector(() => connects++, (s) => statuses.push(s), { baseMs: 100, capMs: 1000, maxAttempts: 4 }, { ...clock, random: () => 1 });
  r.start();
  t.equal(connects, 1, 'the first attempt is immediate');
  const waits: number[] = [];
  for (let i = 0; i < 4; i++) {
    r.lost({ reason: 'connection lost' });
    const last = statuses.at(-1)!;
    if (last.state !== 'waiting') break;
    waits.push(last.delayMs!);
    clock.advance(last.delayMs! - 1);
    t.equal(connects, i + 1, 'not before the delay');
    clock.advance(1);
    t.equal(connects, i + 2, 'then it tries again');
  }
  t.same(waits, [100, 200, 400], 'exponential');
  t.equal(r.state, 'stopped', 'the budget of 4 attempts is spent');
  t.match(statuses.at(-1)!.reason, /gave up after 4 attempts: connection lost/);
  t.equal(clock.pending(), 0, 'no timer left behind');
  r.start();
  t.equal(connects, 5, 'start() again begins a fresh budget');
  t.equal(r.attempts, 1);
});

t.test('a connection that stayed up resets the count; a short one does not', async (t) => {
  const clock = fakeTime();
  const r = new Reconnector(() => {}, () => {}, { baseMs: 100, capMs: 1000, maxAttempts: 3, stableMs: 5000 }, { ...clock, random: () => 1 });
  r.start();
  r.connected();
  clock.advance(100);
  r.lost();
  clock.advance(100);
  t.equal(r.attempts, 2, 'a flapping connection counts against the budget');
  r.connected();
  clock.advance(6000);
  r.lost();
  clock.advance(100);
  t.equal(r.attempts, 1, 'after a stable connection the count starts over');
});

t.test('fatal losses stop at once; reroutes come back after the delay asked for; duplicates are ignored', async (t) => {
  const clock = fakeTime();
  let connects = 0;
  const r = new Reconnector(() => connects++, () => {}, {}, clock);
  r.start();
  r.lost({ retryMs: 0, reason: 'the desktop moved' });
  r.lost({ reason: 'a second report of the same loss' });
  t.equal(clock.pending(), 1, 'one timer for one loss');
  clock.advance(0);
  t.equal(connects, 2, 'a reroute reconnects at once');
  r.lost({ fatal: true, reason: 'not allowed' });
  t.equal(r.state, 'stopped');
  t.equal(clock.pending(), 0);
  clock.advance(60_000);
  t.equal(connects, 2, 'nothing more after a fatal loss');
});

t.test('retryNow skips the wait; stop cancels it', async (t) => {
  const clock = fakeTime();
  let connects = 0;
  const r = new Reconnector(() => connects++, () => {}, {}, clock);
  r.start();
  r.lost();
  r.retryNow();
  t.equal(connects, 2);
  t.equal(clock.pending(), 0, 'the pending timer was cancelled');
  r.retryNow();
  t.equal(connects, 2, 'retryNow does nothing unless waiting');
  r.lost();
  r.stop('you disconnected');
  t.equal(clock.pending(), 0);
  t.equal(r.state, 'stopped');
});
