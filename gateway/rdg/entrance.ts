/**
 * The RD Gateway entrance (MS-TSGU, HTTP transport) on the one port, after TLS: stock RDP clients
 * (mstsc, the Remote Desktop apps, thin clients, FreeRDP `/g: /gt:http /gat:`) reach a VM's RDP
 * console through the gateway they were told to use, with a console ticket as the PAA cookie.
 *
 *   RDG_OUT_DATA /remoteDesktopGateway/ + Upgrade: websocket  -> 101, MS-TSGU in binary frames (rdg-ws)
 *   RDG_OUT_DATA /remoteDesktopGateway/                       -> 200, 10-byte seed, chunked packets  \ rdg-http,
 *   RDG_IN_DATA  /remoteDesktopGateway/ (Content-Length: 0)   -> 200; then again, chunked: packets   / joined by RDG-Connection-Id
 *
 * then handshake -> tunnel create (the PAA cookie must look like an RDP console ticket) -> tunnel
 * authorize -> channel create: the resource names the VM, the ticket is checked and redeemed for
 * it by the broker (tunnel/broker.ts), which dials only the VM's RDP endpoint from the directory.
 * Every stage is bounded: request heads (`http.maxHeaderBytes`), the whole setup up to channel
 * create (`rdg.setupTimeoutMs`), the pair (`rdg.pairTimeoutMs`, `rdg.maxUnpaired`), packets,
 * frames and chunks (64 KiB). A refusal is an HTTP status before the packets start, and the
 * answer of the packet being answered after (an HRESULT), then a close; never silence.
 *
 * In a cluster the two legacy requests may reach different nodes (an L4 balancer without
 * affinity): the node holding the OUT records it (`RdgClusterLink.announce`), and the node the IN
 * reached relays that request to it over node TLS (cluster/rdg-link.ts).
 */
import { isIP } from 'node:net';
import type { Duplex } from 'node:stream';
import type tls from 'node:tls';
import { randomBytes } from 'node:crypto';
import {
  type RdgHeadError, type RdgRequestHead, RDG_IN_DATA, RDG_OUT_DATA, TsguPacketReader, parseRdgRequestHead, websocketAccept,
} from '../../protocols/tsgu.js';
import { TICKET_RE, ticketProtocol } from '../auth/tickets.js';
import type { GatewayContext } from '../context.js';
import { connInfo, normaliseAddress } from '../conninfo.js';
import { OneportError } from '../errors.js';
import { guard } from '../http/guard.js';
import { writeRawError } from '../http/respond.js';
import { isAddressLiteral } from '../routing.js';
import { openTunnel, refuseTunnel } from '../tunnel/broker.js';
import { answerOnlyLeg } from '../tunnel/legs/leg.js';
import { RdgLeg } from '../tunnel/legs/rdg.js';
import type { TunnelRequest } from '../tunnel/request.js';
import { type Stage, TsguFlow } from './flow.js';
import { LegacyPairs, type OutHalf } from './pairing.js';
import { LegacyTransport, type RdgTransport, type RdgTransportKind, SEED_LENGTH, WebSocketTransport } from './transport.js';

export const RDG_PATH = '/remotedesktopgateway/';
/** A relayed IN request (cluster): the node that relayed it, and the client's address it saw. */
export const RDG_HOP_HEADER = 'oneport-hop';
export const RDG_CLIENT_HEADER = 'oneport-client';
const CONNECTION_ID = /^[A-Za-z0-9{}_-]{1,64}$/;

/** How the legacy pair finds its other half on another node (cluster/rdg-link.ts). */
export interface RdgClusterLink {
  readonly self: string;
  /** This node holds the OUT request of pair `id` for `ttlMs`. */
  announce(id: string, ttlMs: number): Promise<void>;
  forget(id: string): void;
  /** The node holding the OUT request of pair `id`, if known. */
  locate(id: string): Promise<string | undefined>;
  /** Carry this IN request (its head already rewritten for the hop) to `node`, and relay its bytes. */
  relay(node: string, socket: Duplex, head: Buffer, client: string): Promise<void>;
  /** With workers: the worker of this node holding the OUT request (for an IN request another node relayed here). */
  locateLocal?(id: string): Promise<string | undefined>;
}

interface Head {
  readonly head: RdgRequestHead;
  /** The head's own bytes. */
  readonly raw: Buffer;
  /** Bytes after the head (the start of a body, or of WebSocket frames). */
  readonly rest: Buffer;
}

type HeadResult = { readonly ok: true; readonly value: Head } | { readonly ok: false; readonly code: RdgHeadError | 'timeout' | 'closed' };

/** Read one request head from `socket` (after `initial`), bounded in bytes and by `signal`. */
export function readRdgHead(socket: Duplex, initial: Buffer, maxBytes: number, signal: AbortSignal): Promise<HeadResult> {
  return new Promise((resolve) => {
    let buf = initial;
    const finish = (r: HeadResult): void => {
      socket.removeListener('data', onData);
      socket.removeListener('end', onClosed);
      socket.removeListener('close', onClosed);
      signal.removeEventListener('abort', onAbort);
      socket.pause();
      resolve(r);
    };
    const evaluate = (): boolean => {
      const p = parseRdgRequestHead(buf, maxBytes);
      if (p.kind === 'more') return false;
      if (p.kind === 'error') finish({ ok: false, code: p.code });
      else finish({ ok: true, value: { head: p.value, raw: buf.subarray(0, p.length), rest: buf.subarray(p.length) } });
      return true;
    };
    const onData = (chunk: Buffer): void => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      evaluate();
    };
    const onClosed = (): void => finish({ ok: false, code: 'closed' });
    const onAbort = (): void => finish({ ok: false, code: 'timeout' });
    if (signal.aborted) {
      onAbort();
      return;
    }
    if (buf.length > 0 && evaluate()) return;
    socket.on('data', onData);
    socket.on('end', onClosed);
    socket.on('close', onClosed);
    signal.addEventListener('abort', onAbort, { once: true });
    socket.resume();
  });
}

const OUT_HEAD = 'HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n';
const IN_PROBE_ANSWER = 'HTTP/1.1 200 OK\r\nContent-Length: 0\r\nCache-Control: no-cache\r\n\r\n';
const LAST_CHUNK = '0\r\n\r\n';
const PRE_CHANNEL: ReadonlySet<Stage> = new Set(['handshake', 'tunnel-create', 'tunnel-auth', 'channel-create', 'opening']);

export class RdgEntrance {
  private readonly pairs: LegacyPairs;

  constructor(
    private readonly ctx: GatewayContext,
    private readonly cluster?: RdgClusterLink,
  ) {
    this.pairs = new LegacyPairs({ maxUnpaired: ctx.config.rdg.maxUnpaired, pairTimeoutMs: ctx.config.rdg.pairTimeoutMs });
  }

  /** Halves of legacy pairs waiting for their other half on this node. */
  get unpaired(): number {
    return this.pairs.unpaired;
  }

  /** A TLS connection whose first bytes are an RDG request (route.ts). */
  handle(socket: tls.TLSSocket, initial: Buffer): void {
    guard(this.ctx, 'rdg', this.request(socket, initial), (e) => writeRawError(socket, e));
  }

  private async request(socket: tls.TLSSocket, initial: Buffer): Promise<void> {
    const info = connInfo(socket);
    const acceptedAt = info?.acceptedAt ?? process.hrtime.bigint();
    let client = info?.remoteAddress ?? socket.remoteAddress ?? 'unknown';
    const deadline = AbortSignal.timeout(this.ctx.config.rdg.setupTimeoutMs);
    const first = await readRdgHead(socket, initial, this.ctx.config.http.maxHeaderBytes, deadline);
    if (!first.ok) return this.refuseHead(socket, 'rdg-http', client, first.code);
    const { head } = first.value;
    const kind: RdgTransportKind = head.websocket ? 'rdg-ws' : 'rdg-http';
    const refuse = (err: OneportError): void => void refuseTunnel(this.ctx.broker, answerOnlyLeg(kind, client, (e) => writeRawError(socket, e)), err);

    // A relayed IN request: only a cluster node may send one, and it says whose it is.
    const hop = headerOf(head, RDG_HOP_HEADER);
    let relayedBy: string | undefined;
    if (hop !== undefined) {
      const from = this.ctx.peerNode(socket);
      const relayedClient = headerOf(head, RDG_CLIENT_HEADER);
      if (from === undefined || head.method !== RDG_IN_DATA || relayedClient === undefined || isIP(relayedClient) === 0) {
        return refuse(new OneportError('ONEPORT_ERR_FORBIDDEN', 'relayed RD Gateway requests come only from cluster nodes'));
      }
      client = normaliseAddress(relayedClient);
      relayedBy = from;
    }
    if (head.path.toLowerCase() !== RDG_PATH) return refuse(new OneportError('ONEPORT_ERR_NOT_FOUND', 'the RD Gateway is at /remoteDesktopGateway/'));
    if (head.method === RDG_OUT_DATA && head.websocket) return this.websocket(socket, first.value, client, acceptedAt, deadline);
    const id = head.connectionId;
    if (id === null || !CONNECTION_ID.test(id)) return refuse(new OneportError('ONEPORT_ERR_BAD_REQUEST', 'RDG-Connection-Id missing or malformed'));
    if (head.method === RDG_OUT_DATA) return this.legacyOut(socket, id, client, acceptedAt, refuse);
    return this.legacyIn(socket, first.value, id, client, acceptedAt, deadline, relayedBy, refuse);
  }

  private refuseHead(socket: Duplex, kind: RdgTransportKind, client: string, code: RdgHeadError | 'timeout' | 'closed'): void {
    if (code === 'closed' || code === 'timeout') {
      // Nothing (more) to answer: a client that went away, or one silent past the deadline.
      socket.destroy();
      if (code === 'timeout') refuseTunnel(this.ctx.broker, answerOnlyLeg(kind, client, () => undefined), new OneportError('ONEPORT_ERR_BAD_REQUEST', 'RD Gateway request head not complete within rdg.setupTimeoutMs'));
      return;
    }
    const err = code === 'head-too-large' || code === 'too-many-headers'
      ? new OneportError('ONEPORT_ERR_HEADERS_TOO_LARGE')
      : new OneportError('ONEPORT_ERR_BAD_REQUEST', `bad RD Gateway request: ${code}`);
    refuseTunnel(this.ctx.broker, answerOnlyLeg(kind, client, (e) => writeRawError(socket, e)), err);
  }

  private websocket(socket: tls.TLSSocket, first: Head, client: string, acceptedAt: bigint, deadline: AbortSignal): void {
    const { head, rest } = first;
    if (head.websocketKey === null || (head.websocketVersion !== null && head.websocketVersion !== '13')) {
      refuseTunnel(this.ctx.broker, answerOnlyLeg('rdg-ws', client, (e) => writeRawError(socket, e)), new OneportError('ONEPORT_ERR_BAD_REQUEST', 'WebSocket upgrade needs Sec-WebSocket-Key and version 13'));
      return;
    }
    socket.write(
      'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
        `Sec-WebSocket-Accept: ${websocketAccept(head.websocketKey)}\r\n\r\n`,
    );
    const transport = new WebSocketTransport(socket, Buffer.from(rest), { pingIntervalMs: this.ctx.config.tunnel.wsPingIntervalMs });
    this.run(transport, client, acceptedAt, deadline);
    socket.resume();
  }

  private async legacyOut(socket: tls.TLSSocket, id: string, client: string, acceptedAt: bigint, refuse: (e: OneportError) => void): Promise<void> {
    if (this.pairs.unpaired >= this.ctx.config.rdg.maxUnpaired) return refuse(new OneportError('ONEPORT_ERR_RATE_LIMITED', 'too many RD Gateway requests wait for their other half', { retryAfter: 5 }));
    if (this.pairs.has(id)) return refuse(new OneportError('ONEPORT_ERR_BAD_REQUEST', 'two RDG_OUT_DATA with one RDG-Connection-Id'));
    // Recorded before the 200: the client opens its IN request as soon as it has the seed, maybe on another node.
    await this.cluster?.announce(id, this.ctx.config.rdg.pairTimeoutMs).catch(() => undefined);
    if (socket.destroyed) return;
    socket.write(`${OUT_HEAD}${SEED_LENGTH.toString(16)}\r\n`);
    socket.write(Buffer.concat([randomBytes(SEED_LENGTH), Buffer.from('\r\n')]));
    const half: OutHalf = { socket, client, acceptedAt };
    const parked = this.pairs.park(id, half, () => {
      this.cluster?.forget(id);
      refuseTunnel(this.ctx.broker, answerOnlyLeg('rdg-http', client, () => socket.end(LAST_CHUNK)), new OneportError('ONEPORT_ERR_BAD_REQUEST', 'RDG_IN_DATA did not come within rdg.pairTimeoutMs'));
    });
    if (parked !== 'parked') {
      socket.end(LAST_CHUNK);
      refuse(new OneportError(parked === 'full' ? 'ONEPORT_ERR_RATE_LIMITED' : 'ONEPORT_ERR_BAD_REQUEST', parked === 'full' ? 'too many unpaired RD Gateway requests' : 'two RDG_OUT_DATA with one RDG-Connection-Id'));
    }
  }

  private async legacyIn(socket: tls.TLSSocket, first: Head, id: string, client: string, acceptedAt: bigint, deadline: AbortSignal, relayedBy: string | undefined, refuse: (e: OneportError) => void): Promise<void> {
    let current = first;
    // FreeRDP first sends the IN request with Content-Length: 0 and waits for a 200; then the
    // long one, chunked, on the same connection. A relayed IN is always the long one.
    if (!current.head.chunked && (current.head.contentLength ?? 0) === 0) {
      socket.write(IN_PROBE_ANSWER);
      const next = await readRdgHead(socket, Buffer.from(current.rest), this.ctx.config.http.maxHeaderBytes, deadline);
      if (!next.ok) return this.refuseHead(socket, 'rdg-http', client, next.code);
      current = next.value;
    }
    const { head } = current;
    if (head.method !== RDG_IN_DATA || !head.chunked || head.connectionId !== id) {
      return refuse(new OneportError('ONEPORT_ERR_BAD_REQUEST', 'expected the chunked RDG_IN_DATA of the same RDG-Connection-Id'));
    }
    const found = await this.findOut(socket, id, client, deadline, relayedBy);
    if (found === 'full') return refuse(new OneportError('ONEPORT_ERR_RATE_LIMITED', 'too many unpaired RD Gateway requests', { retryAfter: 5 }));
    if (found === 'duplicate') return refuse(new OneportError('ONEPORT_ERR_BAD_REQUEST', 'two RDG_IN_DATA with one RDG-Connection-Id'));
    if (found === undefined) {
      if (!socket.destroyed) refuse(new OneportError('ONEPORT_ERR_NOT_FOUND', 'no RDG_OUT_DATA with this RDG-Connection-Id'));
      return;
    }
    if (typeof found === 'string') {
      // The OUT request is on another node (or worker): carry this one there. Relayed here already, it carries the hop headers.
      const hopHead =
        relayedBy !== undefined
          ? Buffer.concat([current.raw, current.rest])
          : Buffer.concat([current.raw.subarray(0, current.raw.length - 2), Buffer.from(`Oneport-Hop: ${this.cluster!.self}\r\nOneport-Client: ${client}\r\n\r\n`, 'latin1'), current.rest]);
      await this.cluster!.relay(found, socket, hopHead, client).catch((e: unknown) => refuse(e instanceof OneportError ? e : new OneportError('ONEPORT_ERR_CONSOLE_UNREACHABLE', `the node holding RDG_OUT_DATA (${found}) did not take the relay`)));
      return;
    }
    this.cluster?.forget(id);
    const transport = new LegacyTransport(found.socket, socket, Buffer.from(current.rest), { keepAliveMs: this.ctx.config.tunnel.wsPingIntervalMs });
    this.run(transport, found.client, found.acceptedAt < acceptedAt ? found.acceptedAt : acceptedAt, deadline);
    socket.resume();
    found.socket.resume();
  }

  /**
   * The OUT half of pair `id`: parked here (now or before the deadline), or the node that holds
   * it (cluster; a request another node relayed here is only looked for among this node's
   * workers, and one a worker relayed not at all, so a relay never loops).
   */
  private async findOut(socket: Duplex, id: string, client: string, deadline: AbortSignal, relayedBy: string | undefined): Promise<OutHalf | string | 'full' | 'duplicate' | undefined> {
    const local = this.pairs.take(id, client);
    if (local) return local;
    const stop = new AbortController();
    const onGone = (): void => stop.abort();
    socket.once('close', onGone);
    deadline.addEventListener('abort', onGone, { once: true });
    try {
      const waiting = this.pairs.wait(id, client, stop.signal);
      if (typeof waiting === 'string') return waiting;
      const link = this.cluster;
      const locate = relayedBy === undefined ? link?.locate.bind(link) : relayedBy === 'worker' ? undefined : link?.locateLocal?.bind(link);
      if (!link || !locate) return await waiting;
      // Poll the directory for the node that announced it while waiting for it here.
      const remote = (async (): Promise<string | undefined> => {
        for (let delay = 50; !stop.signal.aborted; delay = Math.min(delay * 2, 500)) {
          const node = await locate(id).catch(() => undefined);
          if (node !== undefined && node !== link.self) return node;
          await new Promise((r) => setTimeout(r, delay).unref());
        }
        return undefined;
      })();
      const winner = await Promise.race([waiting, remote]);
      stop.abort();
      return winner ?? (await waiting) ?? (await remote);
    } finally {
      socket.removeListener('close', onGone);
      deadline.removeEventListener('abort', onGone);
    }
  }

  /** The MS-TSGU flow on a transport, up to the channel; the broker and the pump take it from there. */
  private run(transport: RdgTransport, client: string, acceptedAt: bigint, deadline: AbortSignal): void {
    const { broker } = this.ctx;
    const flow = new TsguFlow();
    const reader = new TsguPacketReader();
    const leg = new RdgLeg(transport, flow, reader, { client, acceptedAt });
    const protocolError = (reason: string): void => {
      transport.destroy();
      refuseTunnel(broker, answerOnlyLeg(transport.kind, client, () => undefined), new OneportError('ONEPORT_ERR_BAD_REQUEST', `MS-TSGU: ${reason}`));
    };
    const onDeadline = (): void => {
      if (flow.stage === 'opening' || !PRE_CHANNEL.has(flow.stage)) return;
      refuseTunnel(broker, leg, new OneportError('ONEPORT_ERR_BAD_REQUEST', `MS-TSGU: no channel within rdg.setupTimeoutMs (stage ${flow.stage})`));
    };
    deadline.addEventListener('abort', onDeadline, { once: true });
    transport.once('end', () => deadline.removeEventListener('abort', onDeadline));
    let checking = false;
    let ticket = '';
    const step = (): void => {
      while (!checking && PRE_CHANNEL.has(flow.stage) && !transport.ended) {
        const r = reader.next();
        if (r.kind === 'more') return;
        if (r.kind === 'error') return protocolError(r.code);
        const s = flow.receive(r.packet);
        switch (s.kind) {
          case 'answer':
            for (const p of s.packets) transport.write(p);
            break;
          case 'tunnel':
            checking = true;
            transport.pause();
            this.checkCookie(s.cookie, client).then(
              (t) => {
                checking = false;
                ticket = t;
                transport.write(flow.tunnelAccepted());
                transport.resume();
                step();
              },
              (e: unknown) => void refuseTunnel(broker, leg, e),
            );
            return;
          case 'channel': {
            deadline.removeEventListener('abort', onDeadline);
            const vmName = s.resource.trim().toLowerCase();
            if (vmName.length === 0 || isAddressLiteral(vmName)) {
              refuseTunnel(broker, leg, new OneportError('ONEPORT_ERR_ADDRESS_LITERAL', 'the RD Gateway resource must be a VM name'));
              return;
            }
            const request: TunnelRequest = {
              vmName,
              credential: { kind: 'ticket', ticket },
              hints: { protocol: 'rdp', port: s.port },
              tls: true,
              client,
              hold: true,
            };
            guard(this.ctx, 'rdg', openTunnel(broker, request, leg), () => transport.destroy());
            break;
          }
          case 'close':
            for (const p of s.packets) transport.write(p);
            transport.end();
            refuseTunnel(broker, answerOnlyLeg(transport.kind, client, () => undefined), new OneportError('ONEPORT_ERR_BAD_REQUEST', 'MS-TSGU: unsupported version or authentication (PAA only)'));
            return;
          case 'violation':
            return protocolError(s.reason);
          default:
            return protocolError(`unexpected ${s.kind} before the channel`);
        }
      }
    };
    transport.on('data', (chunk: Buffer) => {
      if (!PRE_CHANNEL.has(flow.stage)) return;
      reader.push(chunk);
      step();
    });
  }

  /**
   * The PAA cookie must look like a console ticket for RDP; whether it is one (signature, VM,
   * expiry, single use) is decided at channel create, when the VM is named.
   */
  private async checkCookie(cookie: string | undefined, client: string): Promise<string> {
    await this.ctx.auth.checkAddress(client);
    if (cookie === undefined || !TICKET_RE.test(cookie) || ticketProtocol(cookie) !== 'rdp') {
      await this.ctx.auth.countFailure(client, 'ticket');
      throw new OneportError('ONEPORT_ERR_TICKET_INVALID', 'the PAA cookie is not an RDP console ticket');
    }
    return cookie;
  }
}

function headerOf(head: RdgRequestHead, name: string): string | undefined {
  return head.headers.find(([n]) => n.toLowerCase() === name)?.[1];
}
