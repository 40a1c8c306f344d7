/**
 * The bytes a resumable session keeps for replay, by absolute stream offset (like Teleport's
 * managed connection buffer): append what is sent, drop what the peer acknowledged, read again
 * from any offset still held. No transport, no timers: a plain type, tested alone.
 */
export class ReplayBuffer {
  private readonly chunks: Buffer[] = [];
  /** Offset of the first byte held. */
  private start = 0;
  private held = 0;

  /** Offset just past the last byte appended (total bytes ever appended). */
  get end(): number {
    return this.start + this.held;
  }

  /** Offset of the oldest byte still held (= highest acknowledged offset). */
  get acked(): number {
    return this.start;
  }

  /** Bytes held. */
  get size(): number {
    return this.held;
  }

  append(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.held += chunk.length;
  }

  /**
   * The peer has every byte before `offset`: forget them. Returns false (and changes nothing)
   * for an offset outside what was sent, or behind what was already acknowledged.
   */
  ackTo(offset: number): boolean {
    if (!Number.isSafeInteger(offset) || offset < this.start || offset > this.end) return false;
    while (this.chunks.length > 0 && this.start + this.chunks[0]!.length <= offset) {
      const c = this.chunks.shift()!;
      this.start += c.length;
      this.held -= c.length;
    }
    const first = this.chunks[0];
    if (first && offset > this.start) {
      const cut = offset - this.start;
      this.chunks[0] = first.subarray(cut);
      this.start += cut;
      this.held -= cut;
    }
    return true;
  }

  /** Can a peer that has received `offset` bytes be served from here? */
  canReplayFrom(offset: number): boolean {
    return Number.isSafeInteger(offset) && offset >= this.start && offset <= this.end;
  }

  /** The bytes from `offset` to the end, as the chunks held (no copy). Empty when out of range. */
  since(offset: number): Buffer[] {
    if (!this.canReplayFrom(offset)) return [];
    const out: Buffer[] = [];
    let at = this.start;
    for (const c of this.chunks) {
      const next = at + c.length;
      if (next > offset) out.push(offset > at ? c.subarray(offset - at) : c);
      at = next;
    }
    return out;
  }
}
