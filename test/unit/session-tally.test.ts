/**
 * The session caps' count without a cluster (gateway/tunnel/session-caps.ts SessionTally), shared
 * by one process and by a primary for its workers (workers/remote.ts NodeSessionCounts).
 */
import t from 'tap';
import { SessionTally } from '../../gateway/tunnel/session-caps.js';
import { NodeSessionCounts } from '../../gateway/workers/remote.js';

const s = (id: string, user: string, vm: string) => ({ id, user, vm });

t.test('a new session is refused at its user\'s cap, then at its VM\'s; a removal frees a place; 0 is no cap', async (t) => {
  const tally = new SessionTally();
  const caps = { user: 2, vm: 3 };
  t.equal(tally.full(s('1', 'alice', 'desk'), caps), undefined);
  tally.add(s('1', 'alice', 'desk'));
  tally.add(s('2', 'alice', 'lab'));
  t.equal(tally.full(s('3', 'alice', 'other'), caps), 'user', 'alice holds 2 of 2');
  t.equal(tally.full(s('3', 'bob', 'desk'), caps), undefined, 'bob is not alice');
  tally.add(s('3', 'bob', 'desk'));
  tally.add(s('4', 'carol', 'desk'));
  t.equal(tally.full(s('5', 'dave', 'desk'), caps), 'vm', 'desk holds 3 of 3');
  t.equal(tally.full(s('5', 'alice', 'desk'), caps), 'user', 'the user\'s cap is named first');
  tally.remove(s('4', 'carol', 'desk'));
  t.equal(tally.full(s('5', 'dave', 'desk'), caps), undefined, 'a place on desk again');
  t.equal(tally.full(s('5', 'alice', 'x'), { user: 0, vm: 0 }), undefined, '0: no cap');
  tally.remove(s('1', 'alice', 'desk'));
  tally.remove(s('2', 'alice', 'lab'));
  t.equal(tally.full(s('6', 'alice', 'y'), { user: 1, vm: 0 }), undefined, 'alice holds none: her count is gone');
});

t.test('a primary counts a session once however many of its workers hold a part, and frees it with the last', async (t) => {
  const counts = new NodeSessionCounts();
  const caps = { user: 1, vm: 0 };
  t.equal(counts.admit(1, s('a', 'alice', 'desk'), caps), 'ok');
  t.equal(counts.admit(2, s('a', 'alice', 'desk'), caps), 'ok', 'another channel of the same session, on worker 2');
  t.equal(counts.admit(2, s('b', 'alice', 'lab'), caps), 'user', 'a second session of alice');
  counts.release(1, 'a');
  t.equal(counts.admit(1, s('b', 'alice', 'lab'), caps), 'user', 'worker 2 still holds a part of the first');
  counts.forget(2);
  t.equal(counts.admit(1, s('b', 'alice', 'lab'), caps), 'ok', 'worker 2 died: the first session is no longer held');
});
