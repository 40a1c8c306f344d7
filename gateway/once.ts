/**
 * `fn` made idempotent: the returned function runs it the first time it is called, and does
 * nothing after. What frees a slot, a count or a hold is handed out this way, so a release called
 * twice (a close and an error, say) frees once.
 */
export function once(fn: () => void): () => void {
  let done = false;
  return () => {
    if (done) return;
    done = true;
    fn();
  };
}
