/**
 * The viewer's reconnect policy (web/reconnect.js, plain JavaScript served to browsers): jittered
 * exponential backoff, a cap, a budget, and a reset after a stable connection; which attempts are
 * reconnects; and the resume token a reconnect uses instead of a new ticket. Fake time only.
 */
import t from 'tap';
import { DEFAULTS, RESUME_MARGIN_MS, Reconnector, ResumeToken, backoffDelay, type AttemptInfo, type ReconnectStatus } from '../../web/reconnect.js';

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

t.test('attempts after a loss are reconnects; the first one and a user\'s start() are not', async (t) => {
  const clock = fakeTime();
  const calls: AttemptInfo[] = [];
  const statuses: ReconnectStatus[] = [];
  const r = new Reconnector((a) => calls.push(a), (s) => statuses.push(s), { maxAttempts: 2 }, { ...clock, random: () => 1 });
  r.start();
  t.same(calls.at(-1), { attempt: 1, reconnecting: false }, 'the first connection');
  t.equal(statuses.at(-1)!.reconnecting, false);
  r.connected();
  clock.advance(60_000);
  r.lost({ reason: 'the desktop moved', retryMs: 0 });
  t.equal(statuses.at(-1)!.reconnecting, true, 'waiting to reconnect');
  clock.advance(0);
  t.same(calls.at(-1), { attempt: 1, reconnecting: true }, 'after a stable connection the count starts over, but it is a reconnect');
  t.equal(statuses.at(-1)!.state, 'connecting');
  t.equal(statuses.at(-1)!.reconnecting, true, 'the status says so (the viewer shows "Reconnecting")');
  r.lost();
  r.retryNow();
  t.same(calls.at(-1), { attempt: 2, reconnecting: true }, 'retryNow is a reconnect too');
  r.lost();
  t.equal(r.state, 'stopped', 'budget spent');
  r.start();
  t.same(calls.at(-1), { attempt: 1, reconnecting: false }, 'the user\'s Reconnect starts afresh');
});

t.test('the resume token of the last ticket answer: kept, used until shortly before it expires, forgotten when refused', async (t) => {
  let now = Date.parse('2026-01-01T00:00:00Z');
  const token = new ResumeToken({ now: () => now });
  t.equal(token.path('desk', 'vnc'), undefined, 'nothing before a ticket answer');
  token.remember({ ticket: 'abc', resume: 'v1.eyJ4IjoxfQ.sig+/=', resumeExpiresAt: new Date(now + 600_000).toISOString() });
  t.ok(token.usable());
  t.equal(token.path('desk', 'vnc'), '/tunnel/desk/vnc?resume=v1.eyJ4IjoxfQ.sig%2B%2F%3D', 'a tunnel path with the token, URL-encoded');
  t.equal(token.path('my desk/2', 'spice'), '/tunnel/my%20desk%2F2/spice?resume=v1.eyJ4IjoxfQ.sig%2B%2F%3D', 'the VM name encoded too');

  t.equal(token.refused(4502), false, 'a console that does not answer is no reason to drop the token');
  t.equal(token.refused(4001), false, 'nor a reroute');
  t.equal(token.refused(1006), false, 'nor a lost connection');
  t.equal(token.refused(undefined), false, 'nor an unknown end');
  t.ok(token.usable(), 'still usable');

  now += 600_000 - RESUME_MARGIN_MS - 1;
  t.ok(token.usable(), 'usable until the margin before expiry');
  now += 1;
  t.notOk(token.usable(), 'not started with less than the margin left');
  t.equal(token.path('desk', 'vnc'), undefined, 'so the viewer gets a fresh ticket');

  token.remember({ resume: 'second', resumeExpiresAt: new Date(now + 600_000).toISOString() });
  t.equal(token.path('desk', 'vnc'), '/tunnel/desk/vnc?resume=second', 'a new ticket answer brings a new token');
  t.equal(token.refused(4401), true, 'a refused token (4401)...');
  t.equal(token.path('desk', 'vnc'), undefined, '...is forgotten: the next attempt gets a fresh ticket');
  t.equal(token.refused(4401), true, 'refused again: still nothing to use');

  token.remember({ resume: 'third', resumeExpiresAt: new Date(now + 600_000).toISOString() });
  token.remember({ ticket: 'no resume token in this answer' });
  t.equal(token.path('desk', 'vnc'), undefined, 'an answer without a token forgets the old one');
  token.remember({ resume: 'fourth', resumeExpiresAt: 'not a date' });
  t.notOk(token.usable(), 'nor is a token with an unreadable expiry kept');
  token.remember(null);
  t.notOk(token.usable());
});

t.test('a viewer-like loop: reconnects use the resume token, a refusal falls back to one fresh ticket at once', async (t) => {
  // The policy of web/viewer.js without the DOM: each attempt either resumes or fetches a ticket.
  const clock = fakeTime();
  let now = 0;
  const token = new ResumeToken({ now: () => now });
  const used: string[] = [];
  let ticketNext = false;
  const r = new Reconnector(
    ({ reconnecting }) => {
      const path = reconnecting && !ticketNext ? token.path('desk', 'vnc') : undefined;
      ticketNext = false;
      if (path) used.push('resume');
      else {
        used.push('ticket');
        token.remember({ resume: `r${used.length}`, resumeExpiresAt: new Date(now + 600_000).toISOString() });
      }
    },
    () => {},
    {},
    { ...clock, random: () => 1 },
  );
  r.start();
  r.connected();
  const end = (code: number, info: { retryMs?: number; reason?: string } = {}): void => {
    const viaResume = used.at(-1) === 'resume';
    r.lost(viaResume && token.refused(code) ? { retryMs: 0, reason: 'resume refused' } : info);
  };
  end(4001, { retryMs: 100 });
  clock.advance(100);
  end(4502);
  clock.advance(20_000);
  r.connected();
  end(1006);
  clock.advance(20_000);
  end(4401);
  clock.advance(0);
  t.same(used, ['ticket', 'resume', 'resume', 'resume', 'ticket'], 'resumes after each loss; one ticket right after the refusal');
  r.connected();
  now += 11 * 60_000;
  end(1006);
  clock.advance(20_000);
  t.equal(used.at(-1), 'ticket', 'a token past its time is not tried: a ticket instead');
  t.equal(r.state, 'connecting');
});
