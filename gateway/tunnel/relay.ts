/**
 * `a.pipe(b); b.pipe(a)` without the per-tunnel closures: the listeners are module-level
 * functions (an emitter calls them with `this` set to itself) and each stream finds its peer in
 * one property. Same behaviour as pipe for a tunnel: bytes in order, the source paused while the
 * peer's buffer is full and resumed on its `drain`, the peer ended when the source ends, nothing
 * written to a peer that already ended or was destroyed. About 7 KiB less per idle plain-TCP
 * tunnel than two pipes (bench: Node 20, 3,000 idle pairs).
 */
import type { Duplex } from 'node:stream';

const kPeer = Symbol('oneport.relayPeer');

type Relayed = Duplex & { [kPeer]?: Duplex };

function onData(this: Relayed, chunk: Buffer): void {
  const peer = this[kPeer] as Duplex;
  if (peer.writableEnded || peer.destroyed) return;
  if (!peer.write(chunk)) this.pause();
}

/** The peer's buffer drained: the stream feeding it may flow again. */
function onDrain(this: Relayed): void {
  (this[kPeer] as Duplex).resume();
}

function onEnd(this: Relayed): void {
  const peer = this[kPeer] as Duplex;
  if (!peer.writableEnded && !peer.destroyed) peer.end();
}

/** Relay both ways between `a` and `b` until either ends or is destroyed. */
export function relay(a: Duplex, b: Duplex): void {
  (a as Relayed)[kPeer] = b;
  (b as Relayed)[kPeer] = a;
  for (const s of [a, b]) {
    s.on('data', onData);
    s.on('drain', onDrain);
    s.on('end', onEnd);
  }
  // As pipe: flow unless the peer is already full (a stream paused before still flows now).
  for (const [from, to] of [[a, b], [b, a]] as const) {
    if (to.writableNeedDrain) from.pause();
    else from.resume();
  }
}
