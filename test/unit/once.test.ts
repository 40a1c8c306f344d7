/** gateway/once.ts: what frees a slot, a count or a hold frees once however often it is called. */
import t from 'tap';
import { once } from '../../gateway/once.js';

t.test('runs the first call only', async (t) => {
  let n = 0;
  const release = once(() => void n++);
  release();
  release();
  t.equal(n, 1);
});
