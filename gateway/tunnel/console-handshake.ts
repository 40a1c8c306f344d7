/**
 * The console handshake: the stage between reaching a console and attaching the client leg
 * (broker.ts: ... -> reach -> console handshake -> attach -> register), the same for every leg
 * (CONNECT, WebSocket, `oneport.v1`). It does two things, one pass over the first bytes:
 *
 * - Console credentials stay in the directory (an endpoint's `password`): the gateway logs in to
 *   a VNC console itself (RFC 6143 VNC Authentication) before the client is answered, so a
 *   wrong stored password is a clear refusal (502 / close 4511), then offers the client security
 *   type None; on SPICE it swaps each channel's ticket for one made from the password
 *   (openings.ts).
 * - What flows is what was declared (`protocolCheck`, on unless the VM or tunnel.protocolCheck
 *   turns it off): a VNC console's first bytes must be an RFB banner (checked before the client
 *   is answered, then replayed), a SPICE client's `REDQ`, an RDP client's TPKT.
 *
 * Where the console is reached through another node, the hop is a transparent byte stream: the
 * entry node does the handshake and the owner (its leg is a 'hop') does nothing, so it never
 * runs twice. A leg that speaks the protocol's opening to the console itself (RDCleanPath) has
 * its own handshake instead (ClientLeg.handshake): the broker does not call this one for it.
 *
 * Every step has the one deadline (tunnel.handshakeTimeoutMs) and bounded bytes (the codecs'
 * caps). Each outcome is counted (`oneport_console_handshakes_total{protocol,result}`); each
 * failure logged with the VM (rate-limited; a refused stored password at warn: an administrator
 * has to fix it). Passwords never reach a log line or a client.
 */
import type { Logger, RateLimitedLog } from '../log.js';
import type { Metrics } from '../metrics.js';
import { OneportError } from '../errors.js';
import type { Parse } from '../../protocols/parse.js';
import { rdpDetector, rdpPreconnectionDetector } from '../../protocols/rdp.js';
import { spiceDetector } from '../../protocols/spice.js';
import {
  RFB_SECURITY_VNC_AUTH,
  type RfbVersion,
  chooseConsoleSecurity,
  parseProtocolVersion,
  parseSecurityOffer,
  parseSecurityResult,
  parseVncAuthChallenge,
  protocolVersionMessage,
  securityChoiceMessage,
  vncAuthResponse,
} from '../../protocols/vnc-auth.js';
import { type ConsoleStream, HANDSHAKE_ERROR, type HandshakeFailure, type Opening, OpeningStream } from './console-stream.js';
import { ReachFailure } from './failures.js';
import { firstBytesCheck, spiceTicketOpening, vncNoneOpening } from './openings.js';
import { NO_PREFACE, type ReachedConsole } from './reach.js';
import type { TunnelTarget } from './request.js';

export interface HandshakeDeps {
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly noisyLog: RateLimitedLog;
  readonly handshake: {
    /** The whole handshake's deadline (config tunnel.handshakeTimeoutMs). */
    readonly timeoutMs: number;
    /** Check first bytes where the VM says nothing (config tunnel.protocolCheck). */
    readonly protocolCheck: boolean;
  };
}

export interface HandshakeLeg {
  readonly transport: string;
  readonly client: string;
  readonly gone: AbortSignal;
}

class HandshakeError extends Error {
  constructor(
    readonly failure: HandshakeFailure,
    readonly detail: string,
  ) {
    super(detail);
  }
}

/**
 * Run the handshake for `target` on a console just reached. Resolves with what the leg attaches
 * to (the console itself, or an OpeningStream in front of it); rejects with a OneportError (or
 * CLIENT_GONE), leaving the console socket for the caller to destroy.
 */
export async function consoleHandshake(deps: HandshakeDeps, target: TunnelTarget, reached: ReachedConsole, leg: HandshakeLeg): Promise<ReachedConsole> {
  if (leg.transport === 'hop') return reached;
  const { endpoint, vm } = target;
  const check = vm.protocolCheck ?? deps.handshake.protocolCheck;
  const password = endpoint.password;
  const outcome = (failure: HandshakeFailure | undefined, detail?: string): void => recordOutcome(deps, target, leg.client, failure, detail);
  let opening: Opening | undefined;
  try {
    if (endpoint.protocol === 'vnc' && password !== undefined) {
      await withReader(reached.socket, deps.handshake.timeoutMs, leg.gone, (r) => vncLogin(r, password));
      opening = vncNoneOpening();
    } else if (endpoint.protocol === 'vnc' && check) {
      await withReader(reached.socket, deps.handshake.timeoutMs, leg.gone, (r) => r.peek(rfbBanner, 'RFB banner'));
    } else if (endpoint.protocol === 'spice' && password !== undefined) {
      opening = spiceTicketOpening(password);
    } else if (endpoint.protocol === 'spice' && check) {
      opening = firstBytesCheck('SPICE (REDQ)', [spiceDetector]);
    } else if (endpoint.protocol === 'rdp' && check) {
      opening = firstBytesCheck('RDP (TPKT + X.224)', [rdpDetector, rdpPreconnectionDetector]);
    }
  } catch (e) {
    if (!(e instanceof HandshakeError)) throw e;
    outcome(e.failure, e.detail);
    throw new OneportError(HANDSHAKE_ERROR[e.failure], undefined, { cause: e });
  }
  if (!opening) {
    if (check || password !== undefined) outcome(undefined);
    return reached;
  }
  const socket = new OpeningStream(reached.socket, opening, { timeoutMs: deps.handshake.timeoutMs, onEnd: (r) => outcome(r.failure, r.detail) });
  // Counted at the stream's own level: what the client and the console each sent the other.
  return { socket, preface: NO_PREFACE };
}

function recordOutcome(deps: HandshakeDeps, target: TunnelTarget, client: string, failure: HandshakeFailure | undefined, detail = ''): void {
  const protocol = target.endpoint.protocol;
  deps.metrics.consoleHandshakes.inc({ protocol, result: failure ?? 'ok' });
  if (failure === undefined || deps.noisyLog.take(`handshake:${target.vm.name}:${failure}`) < 0) return;
  const fields = { event: 'console-handshake-failed', vm: target.vm.name, protocol, user: target.user.name, client, result: failure, detail: printable(detail) };
  const message = failure === 'console-auth' ? `the ${protocol} console of ${target.vm.name} refused its stored credentials` : `${target.vm.name}: ${failure === 'client-protocol' ? 'the client' : 'the console'} did not speak ${protocol}`;
  if (failure === 'console-auth') deps.log.warn(fields, message);
  else deps.log.info(fields, message);
}

/** Console text (a refusal reason) as it may go into a log: printable, short. */
function printable(s: string): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\u0000-\u001f\u007f-\u009f]/g, '?').slice(0, 200);
}

// ---- before the client is answered: reading the console under the deadline -------------------

/** The most console bytes held before the client is answered: a banner, a security offer with its reason, a challenge. */
const CONSOLE_READ_MAX = 4096; // 4 KiB

/** Reads whole messages off the console socket with the protocols/ parsers. */
class ConsoleReader {
  private held = Buffer.alloc(0);
  private ended = false;
  private wake: (() => void) | undefined;
  private readonly onData = (d: Buffer): void => {
    this.held = Buffer.concat([this.held, d]);
    this.wake?.();
  };
  private readonly onEnd = (): void => {
    this.ended = true;
    this.wake?.();
  };
  private readonly onAbort = (): void => this.wake?.();

  constructor(
    readonly socket: ConsoleStream,
    private readonly signal: AbortSignal,
  ) {
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('close', this.onEnd);
    signal.addEventListener('abort', this.onAbort, { once: true });
    // A console reached through another node comes paused (the hop read its answer's head).
    socket.resume();
  }

  /** The next message, consumed. */
  read<T>(parse: (b: Buffer) => Parse<T>, what: string): Promise<T> {
    return this.next(parse, what, true);
  }

  /** The next message, left to be read again (replayed to the client). */
  peek<T>(parse: (b: Buffer) => Parse<T>, what: string): Promise<T> {
    return this.next(parse, what, false);
  }

  private async next<T>(parse: (b: Buffer) => Parse<T>, what: string, consume: boolean): Promise<T> {
    for (;;) {
      const p = parse(this.held);
      if (p.kind === 'done') {
        if (consume) this.held = this.held.subarray(p.length);
        return p.value;
      }
      if (p.kind === 'error') throw new HandshakeError('console-protocol', `${what}: ${p.reason}`);
      if (this.held.length > CONSOLE_READ_MAX) throw new HandshakeError('console-protocol', `${what}: more than ${CONSOLE_READ_MAX} bytes`);
      if (this.ended) throw new HandshakeError('console-protocol', `the console closed before its ${what}`);
      if (this.signal.aborted) throw new ReachFailure('CLIENT_GONE');
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
  }

  /** Stop reading; what was read and not consumed goes back on the socket for the pump. */
  release(): void {
    this.socket.off('data', this.onData);
    this.socket.off('end', this.onEnd);
    this.socket.off('close', this.onEnd);
    this.signal.removeEventListener('abort', this.onAbort);
    this.socket.pause();
    if (this.held.length > 0) this.socket.unshift(this.held);
  }
}

/** Run `steps` on the console under the deadline; also ends when the client leaves. */
async function withReader<T>(socket: ConsoleStream, timeoutMs: number, gone: AbortSignal, steps: (r: ConsoleReader) => Promise<T>): Promise<T> {
  const deadline = AbortSignal.timeout(timeoutMs);
  const either = AbortSignal.any([deadline, gone]);
  const reader = new ConsoleReader(socket, either);
  try {
    return await steps(reader);
  } catch (e) {
    if (gone.aborted) throw new ReachFailure('CLIENT_GONE');
    if (deadline.aborted) throw new HandshakeError('console-protocol', `the console did not finish its handshake within ${timeoutMs} ms`);
    throw e;
  } finally {
    reader.release();
  }
}

/** The console's RFB banner (RFC 6143 7.1.1): the check for a VNC endpoint. */
function rfbBanner(b: Buffer): Parse<RfbVersion> {
  const p = parseProtocolVersion(b);
  return p.kind === 'done' ? { kind: 'done', value: p.value.version, length: p.length } : p;
}

/**
 * Log in to a VNC console as its client (RFC 6143 7.1-7.2): the highest version both speak, then
 * None if the console offers it, else VNC Authentication with the stored password.
 */
async function vncLogin(r: ConsoleReader, password: string): Promise<void> {
  const server = await r.read(parseProtocolVersion, 'RFB banner');
  const version = server.version;
  r.socket.write(protocolVersionMessage(version));
  const offer = await r.read((b) => parseSecurityOffer(version, b), 'RFB security offer');
  if (offer.kind === 'refused') throw new HandshakeError('console-auth', `the VNC console refused the connection: ${offer.reason}`);
  const type = chooseConsoleSecurity(offer.types);
  if (type === undefined) throw new HandshakeError('console-auth', `the VNC console offers security types ${offer.types.join(', ')}; the gateway answers None and VNC Authentication only`);
  if (version !== '3.3') r.socket.write(securityChoiceMessage(type));
  if (type === RFB_SECURITY_VNC_AUTH) {
    const challenge = await r.read(parseVncAuthChallenge, 'VNC Authentication challenge');
    r.socket.write(vncAuthResponse(challenge, password));
  }
  // 3.3 and 3.7 send no SecurityResult after None.
  if (type !== RFB_SECURITY_VNC_AUTH && version !== '3.8') return;
  const result = await r.read((b) => parseSecurityResult(version, b), 'RFB SecurityResult');
  if (!result.accepted) throw new HandshakeError('console-auth', `the VNC console refused the stored password${result.reason ? `: ${result.reason}` : ''}`);
}
