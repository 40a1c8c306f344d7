// oneport.v1 client channel: a WebSocket-like object (what noVNC's RFB accepts in place of a URL)
// whose client leg survives network flaps. It speaks the oneport.v1 subprotocol (README
// "Transparent resume"): counts the bytes each way, acknowledges what it received, keeps what it
// sent until the gateway acknowledges it, and when the leg drops abnormally it reconnects with the
// resume token, the session id and its byte count; the gateway replays what was missed and the
// channel resends what the gateway did not get. The consumer sees one uninterrupted stream.
//
// A gateway that goes away on purpose (a drain) while the session is held on another node says
// 4001 with `"resume": true` and the node to come back through: the channel resumes the session
// after `retryMs`, through the same address (a balancer sends it to an up node), or through
// `opts.route(node)` when given.
//
// It gives up (a real close, with the gateway's code) when the gateway says the session is gone
// (4001 without `resume`: reconnect fresh), refuses (4003/4004/4401/4429...), ends the session (4008: its time is
// up), or the grace period passes; the viewer then starts over with its own backoff (reconnect.js)
// unless the code says retrying cannot help.
//
// Works in browsers and in Node (pass `WebSocket` from the `ws` package).

const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

/** Close codes after which resuming is pointless. */
const FINAL = new Set([1000, 1001, 4001, 4003, 4004, 4008, 4400, 4401, 4409, 4429, 4502, 4503, 4511, 4512]);

/** A 4001 whose reason says the session is kept (`{"resume":true,"retryMs":n,"node":id}`), else undefined. */
function keptSession(code, reason) {
  if (code !== 4001) return undefined;
  try {
    const r = JSON.parse(reason);
    return r !== null && typeof r === 'object' && r.resume === true ? r : undefined;
  } catch {
    return undefined;
  }
}

export class OneportChannel {
  /**
   * @param {string} url  wss://host/tunnel/<vm>/<protocol>?ticket=... (or ?resume=<token>)
   * @param {{ resume: string, WebSocket?: typeof WebSocket, wsOptions?: object,
   *           onStatus?: (s: {state: string, attempt?: number, session?: string}) => void,
   *           route?: (node: string) => string | undefined,
   *           ackBytes?: number, ackIntervalMs?: number, retryMs?: number }} opts
   *   route: the URL (any path; its origin is used) to resume through when a draining gateway
   *   names a node; without it, or when it returns undefined, the same address (a balancer's).
   */
  constructor(url, opts) {
    this.url = url;
    this.opts = opts;
    this.WS = opts.WebSocket ?? globalThis.WebSocket;
    this.readyState = CONNECTING;
    this.binaryType = 'arraybuffer';
    this.protocol = 'binary';
    this.onopen = null;
    this.onmessage = null;
    this.onclose = null;
    this.onerror = null;
    this.session = undefined;
    this.graceMs = 30_000;
    this.received = 0; // bytes received from the gateway
    this.sent = 0; // bytes handed to send()
    this.acked = 0; // bytes the gateway acknowledged
    this.unacked = []; // [{offset, bytes}] sent but not acknowledged
    this.unackedIn = 0;
    this.ackTimer = undefined;
    this.leg = undefined;
    this.droppedAt = 0;
    this.attempt = 0;
    this.listeners = { open: [], message: [], close: [], error: [] };
    this.connect(url);
  }

  addEventListener(type, fn) {
    this.listeners[type]?.push(fn);
  }

  removeEventListener(type, fn) {
    const l = this.listeners[type];
    if (l) this.listeners[type] = l.filter((f) => f !== fn);
  }

  // Listeners first, then the on<type> handler: a consumer that listens before handing the channel
  // to noVNC (the viewer reads the close code) hears it before noVNC, which sets onclose, reports
  // the disconnect; with a browser WebSocket that order comes from the order of registration.
  emit(type, ev) {
    for (const fn of this.listeners[type] ?? []) fn.call(this, ev);
    const handler = this[`on${type}`];
    if (typeof handler === 'function') handler.call(this, ev);
  }

  status(state) {
    this.opts.onStatus?.({ state, attempt: this.attempt, session: this.session });
  }

  connect(url) {
    const ws = new this.WS(url, ['oneport.v1'], this.opts.wsOptions);
    ws.binaryType = 'arraybuffer';
    this.leg = ws;
    // Nothing is sent on a leg before its hello: the gateway's count would not include it, so it
    // would be resent after the hello and reach the console twice (all unacknowledged bytes are
    // sent once the hello says where to start).
    this.legReady = false;
    ws.onmessage = (ev) => this.onLegMessage(ws, ev.data);
    ws.onerror = () => {};
    ws.onclose = (ev) => this.onLegClose(ws, ev.code, ev.reason);
  }

  onLegMessage(ws, data) {
    if (ws !== this.leg) return;
    if (typeof data === 'string') {
      let msg;
      try {
        msg = JSON.parse(data);
      } catch {
        return;
      }
      if (msg.type === 'hello') this.onHello(msg);
      else if (msg.type === 'ack') this.trim(msg.received);
      return;
    }
    const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    this.received += bytes.byteLength;
    this.unackedIn += bytes.byteLength;
    if (this.unackedIn >= (this.opts.ackBytes ?? 64 * 1024)) this.ack();
    else if (this.ackTimer === undefined) this.ackTimer = setTimeout(() => this.ack(), this.opts.ackIntervalMs ?? 500);
    const copy = bytes.slice().buffer;
    this.emit('message', { data: copy });
  }

  onHello(msg) {
    this.session = msg.session;
    if (typeof msg.graceMs === 'number') this.graceMs = msg.graceMs;
    // The gateway has everything up to msg.received: resend the rest, in order.
    this.trim(msg.received);
    this.legReady = true;
    for (const { offset, bytes } of this.unacked) {
      const from = Math.max(0, msg.received - offset);
      if (from < bytes.byteLength) this.leg.send(bytes.subarray(from));
    }
    this.attempt = 0;
    if (this.readyState === CONNECTING) {
      this.readyState = OPEN;
      this.status('open');
      this.emit('open', {});
    } else {
      this.status('resumed');
    }
  }

  ack() {
    clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    this.unackedIn = 0;
    if (this.leg?.readyState === OPEN) this.leg.send(JSON.stringify({ type: 'ack', received: this.received }));
  }

  trim(received) {
    if (typeof received !== 'number' || received <= this.acked) return;
    this.acked = Math.min(received, this.sent);
    while (this.unacked.length && this.unacked[0].offset + this.unacked[0].bytes.byteLength <= this.acked) this.unacked.shift();
  }

  send(data) {
    if (this.readyState !== OPEN) throw new Error('channel is not open');
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    const copy = bytes.slice();
    this.unacked.push({ offset: this.sent, bytes: copy });
    this.sent += copy.byteLength;
    if (this.leg?.readyState === OPEN && this.legReady) this.leg.send(copy);
  }

  close(code = 1000, reason = '') {
    if (this.readyState >= CLOSING) return;
    this.readyState = CLOSING;
    const leg = this.leg;
    this.leg = undefined;
    if (leg && leg.readyState <= OPEN) leg.close(code, reason);
    this.finish(code, reason);
  }

  finish(code, reason) {
    clearTimeout(this.ackTimer);
    this.readyState = CLOSED;
    this.status('closed');
    this.emit('close', { code, reason, wasClean: code === 1000 });
  }

  onLegClose(ws, code, reason) {
    if (ws !== this.leg) return;
    this.leg = undefined;
    const kept = keptSession(code, reason);
    if (this.readyState !== OPEN || this.session === undefined || (FINAL.has(code) && !kept)) {
      if (this.readyState !== CLOSED) this.finish(code, reason);
      return;
    }
    // The leg dropped, or its gateway is going away: come back to the same session, within the grace period.
    if (this.droppedAt === 0) this.droppedAt = Date.now();
    if (kept) this.moveTo(kept);
    this.resume(kept ? Math.max(0, Number(kept.retryMs) || 0) : undefined);
  }

  /** A draining gateway named the node to resume through. */
  moveTo(kept) {
    if (typeof kept.node !== 'string' || typeof this.opts.route !== 'function') return;
    const url = this.opts.route(kept.node);
    if (typeof url === 'string') this.url = url;
  }

  resume(waitMs) {
    if (Date.now() - this.droppedAt > this.graceMs) {
      this.finish(4001, JSON.stringify({ retryMs: 0, fresh: true }));
      return;
    }
    this.attempt++;
    this.status('resuming');
    const base = new URL(this.url);
    const url = `${base.origin}${base.pathname}?resume=${encodeURIComponent(this.opts.resume)}&session=${encodeURIComponent(this.session)}&received=${this.received}`;
    const delay = waitMs ?? (this.attempt === 1 ? 0 : Math.min(2000, (this.opts.retryMs ?? 100) * 2 ** (this.attempt - 2)) * (0.5 + Math.random() / 2));
    setTimeout(() => {
      if (this.readyState !== OPEN) return;
      this.connect(url);
      const leg = this.leg;
      const prev = leg.onclose;
      leg.onclose = (ev) => {
        const kept = keptSession(ev.code, ev.reason);
        if (leg === this.leg && (!FINAL.has(ev.code) || kept) && this.session !== undefined) {
          this.leg = undefined;
          if (this.droppedAt === 0) this.droppedAt = Date.now();
          if (kept) this.moveTo(kept);
          this.resume(kept ? Math.max(0, Number(kept.retryMs) || 0) : undefined);
          return;
        }
        if (leg === this.leg && this.droppedAt !== 0) this.droppedAt = 0;
        prev.call(leg, ev);
      };
      leg.onopen = () => {
        this.droppedAt = 0;
      };
    }, delay);
  }
}
