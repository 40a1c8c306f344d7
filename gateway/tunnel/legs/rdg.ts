/**
 * The RD Gateway client leg (MS-TSGU over HTTP, `rdg-ws` or `rdg-http`): the client has done the
 * handshake, created and authorized its tunnel, and asked for a channel to a VM. "Yes" is the
 * channel response and DATA packets both ways; "no" is the channel response with an HRESULT the
 * client reports (FreeRDP: `channel response errorCode=E_PROXY_...`), then a clean close.
 *
 * The pump frames the console's bytes as DATA packets (at most 65535 bytes each) and unframes the
 * client's, with backpressure both ways: a console the client cannot keep up with is paused while
 * the client's socket holds more than 1 MiB, and a client is not read while the console is busy.
 */
import { type TsguPacketReader, HResult, encodeData } from '../../../protocols/tsgu.js';
import type { ErrorCode, OneportError } from '../../errors.js';
import type { TsguFlow } from '../../rdg/flow.js';
import type { RdgTransport, TransportEnd } from '../../rdg/transport.js';
import { ReachFailure } from '../failures.js';
import type { ConsoleStream } from '../console-stream.js';
import { type CloseReason, Pump, type PumpOptions } from '../pump.js';
import type { ReachedConsole } from '../reach.js';
import type { AttachOptions, ClientLeg } from './leg.js';

/** How each refusal reads to an RD Gateway client: always a full HRESULT (FAILED(hr) is true). */
export function hresultFor(code: ErrorCode): number {
  switch (code) {
    case 'ONEPORT_ERR_AUTH_REQUIRED':
    case 'ONEPORT_ERR_BAD_CREDENTIALS':
    case 'ONEPORT_ERR_TICKET_INVALID':
    case 'ONEPORT_ERR_SESSION_INVALID':
      return HResult.E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED;
    case 'ONEPORT_ERR_BAD_REQUEST':
      return HResult.E_PROXY_COOKIE_BADPACKET;
    case 'ONEPORT_ERR_CONSOLE_UNREACHABLE':
    case 'ONEPORT_ERR_VM_DOWN':
    case 'ONEPORT_ERR_VM_RECOVERING':
      return HResult.E_PROXY_TS_CONNECTFAILED_HRESULT;
    case 'ONEPORT_ERR_INTERNAL':
    case 'ONEPORT_ERR_SHUTTING_DOWN':
    case 'ONEPORT_ERR_DIRECTORY_UNAVAILABLE':
      return HResult.E_PROXY_INTERNALERROR;
    default:
      // Not allowed, not assigned, unknown VM or port, an address literal, a cap, rate limits:
      // the resource authorization policy says no.
      return HResult.E_PROXY_RAP_ACCESSDENIED;
  }
}

/** What a tunnel's end says in the CLOSE_CHANNEL packet (FreeRDP records a non-zero one as its last error). */
const CLOSE_STATUS: Readonly<Partial<Record<CloseReason, number>>> = {
  shutdown: HResult.E_PROXY_CONNECTIONABORTED,
  rerouted: HResult.E_PROXY_CONNECTIONABORTED,
  revoked: HResult.E_PROXY_RAP_ACCESSDENIED,
  'session-expired': HResult.E_PROXY_SESSIONTIMEOUT,
  idle: HResult.E_PROXY_SESSIONTIMEOUT,
  'console-error': HResult.E_PROXY_TS_CONNECTFAILED_HRESULT,
};

export interface RdgLegOptions {
  readonly client: string;
  readonly acceptedAt: bigint;
  /** Extra fields for the refusal log line (the legacy pair's connection id, a relaying node). */
  readonly logFields?: Readonly<Record<string, unknown>>;
}

export class RdgLeg implements ClientLeg {
  readonly transport: 'rdg-ws' | 'rdg-http';
  readonly client: string;
  readonly acceptedAt: bigint;
  readonly logFields: Readonly<Record<string, unknown>> | undefined;
  private readonly abort = new AbortController();
  private readonly onEnd = (): void => this.abort.abort();

  constructor(
    private readonly channel: RdgTransport,
    private readonly flow: TsguFlow,
    private readonly reader: TsguPacketReader,
    opts: RdgLegOptions,
  ) {
    this.transport = channel.kind;
    this.client = opts.client;
    this.acceptedAt = opts.acceptedAt;
    this.logFields = opts.logFields;
    if (channel.ended) this.abort.abort();
    channel.once('end', this.onEnd);
  }

  get gone(): AbortSignal {
    return this.abort.signal;
  }

  attach(console: ReachedConsole, _target: unknown, opts: AttachOptions): Pump {
    this.channel.removeListener('end', this.onEnd);
    if (this.channel.ended || this.flow.stage !== 'opening') throw new ReachFailure('CLIENT_GONE');
    this.channel.write(this.flow.channelOpened(1));
    return new RdgPump(this.channel, this.flow, this.reader, console.socket, { idleTimeoutMs: opts.idleTimeoutMs, preface: console.preface });
  }

  refuse(err: OneportError): void {
    this.channel.removeListener('end', this.onEnd);
    if (!this.channel.ended) this.channel.write(this.flow.refusal(hresultFor(err.code)));
    this.channel.end();
  }
}

/**
 * A channel's bytes: DATA packets from the client to the console, the console's bytes as DATA
 * packets to the client; CLOSE_CHANNEL either way ends it, and so does either side going away.
 */
export class RdgPump extends Pump {
  private clientOver = false;
  private consoleOver = false;
  private lingering = false;

  constructor(
    private readonly channel: RdgTransport,
    private readonly flow: TsguFlow,
    private readonly reader: TsguPacketReader,
    console: ConsoleStream,
    opts: PumpOptions,
  ) {
    super(console, opts);
    channel.on('data', (chunk: Buffer) => {
      reader.push(chunk);
      this.readPackets();
    });
    channel.on('end', (why: TransportEnd) => {
      this.clientOver = true;
      this.reason ??= why === 'too-large' ? 'too-large' : why === 'client-closed' ? 'client-closed' : 'client-error';
      if (this.consoleOver) this.finish();
      else this.endAndLinger(this.console);
    });
    console.on('data', (chunk: Buffer) => {
      let ok = true;
      for (const packet of encodeData(chunk)) ok = this.channel.write(packet) && ok;
      if (!ok) {
        console.pause();
        this.channel.once('drain', () => console.resume());
      }
    });
    // The console is done sending: tell the client the channel is over, give it a moment to
    // answer, then close; the console's side is ended too (a half-open console has nothing more to say).
    console.on('end', () => {
      this.reason ??= 'console-closed';
      this.sayClose(CLOSE_STATUS[this.reason] ?? HResult.ERROR_SUCCESS);
      this.endAndLinger(console);
    });
    console.on('close', () => {
      this.consoleOver = true;
      this.reason ??= 'console-closed';
      if (this.clientOver) {
        this.finish();
        return;
      }
      this.sayClose(CLOSE_STATUS[this.reason] ?? HResult.ERROR_SUCCESS);
    });
    // Packets that came with the channel create (none from FreeRDP) are read now.
    this.readPackets();
    console.resume();
  }

  private readPackets(): void {
    for (;;) {
      const r = this.reader.next();
      if (r.kind === 'more') return;
      if (r.kind === 'error') {
        this.fail('client-error');
        return;
      }
      const step = this.flow.receive(r.packet);
      switch (step.kind) {
        case 'data':
          if (!this.console.write(step.data)) {
            this.channel.pause();
            this.console.once('drain', () => this.channel.resume());
          }
          break;
        case 'answer':
          for (const p of step.packets) this.channel.write(p);
          break;
        case 'close':
          for (const p of step.packets) this.channel.write(p);
          this.reason ??= 'client-closed';
          this.channel.end();
          this.endAndLinger(this.console);
          return;
        case 'closed':
          this.channel.end();
          return;
        default:
          // Tunnel or channel packets again, or a packet a client never sends: the stream is not trusted.
          this.fail('client-error');
          return;
      }
    }
  }

  /** CLOSE_CHANNEL with `status`, then close the transport once the client answered or after a moment. */
  private sayClose(status: number): void {
    if (this.lingering) return;
    this.lingering = true;
    if (!this.channel.ended) {
      if (this.flow.stage === 'open') this.channel.write(this.flow.refusal(status));
      const t = setTimeout(() => this.channel.end(), this.opts.lingerMs ?? 1000);
      t.unref();
      this.channel.once('end', () => clearTimeout(t));
    }
  }

  close(reason: CloseReason): void {
    this.reason ??= reason;
    this.sayClose(CLOSE_STATUS[reason] ?? HResult.ERROR_SUCCESS);
    this.console.destroy();
  }

  protected destroyClient(): void {
    this.channel.destroy();
  }
}
