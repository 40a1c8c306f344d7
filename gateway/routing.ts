/**
 * Request -> (VM, protocol) -> endpoint, from the directory only (CONTRACT section 2).
 * Nothing here dials, resolves a name, or looks at an address a client supplied: a client names a
 * VM; the address comes from the VM's record.
 */
import { isIP } from 'node:net';
import { OneportError } from './errors.js';
import { type Directory, type Endpoint, type Protocol, type VmRecord, PROTOCOLS, WELL_KNOWN_PORT } from './directory/directory.js';
import { TICKET_RE } from './auth/tickets.js';
import { parseHostPort } from './hostport.js';

export interface Authority {
  /** Lowercased host as the client wrote it (without brackets). */
  readonly host: string;
  readonly port: number;
  /** True when host is an IPv4 or IPv6 literal. */
  readonly literal: boolean;
}

/**
 * Parse a CONNECT request-target (RFC 9110 section 9.3.6: authority-form, host:port; a host is
 * required and the port is 1-65535). The host is lowercased, and marked when it is an address.
 */
export function parseAuthority(target: string): Authority | undefined {
  const parsed = parseHostPort(target);
  if (!parsed) return undefined;
  const host = parsed.host.toLowerCase();
  return { host, port: parsed.port, literal: isAddressLiteral(host) };
}

/**
 * Every way of writing an address is a literal to us: dotted quads, IPv6, and the short and
 * numeric forms that some resolvers accept (`127.1`, `2130706433`, `0x7f.1`).
 */
export function isAddressLiteral(host: string): boolean {
  if (isIP(host.split('%')[0] ?? '') !== 0) return true;
  return /^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}\.?$/i.test(host);
}

/** `<ticket>.<vm>`: the ticket in the first label, for clients that send no credentials. */
export function splitHostTicket(host: string): { ticket: string; vm: string } | undefined {
  const dot = host.indexOf('.');
  if (dot <= 0) return undefined;
  const ticket = host.slice(0, dot);
  const vm = host.slice(dot + 1);
  if (!TICKET_RE.test(ticket) || vm.length === 0) return undefined;
  return { ticket, vm };
}

export function isProtocol(s: string): s is Protocol {
  return (PROTOCOLS as readonly string[]).includes(s);
}

export function lookupVm(dir: Directory, name: string): VmRecord {
  const vm = dir.getVm(name);
  if (!vm) throw new OneportError('ONEPORT_ERR_UNKNOWN_VM');
  return vm;
}

export interface EndpointHints {
  /** The Desktop-Protocol header, or the protocol in a WebSocket path. */
  readonly protocol?: Protocol | undefined;
  /** The port in a CONNECT target. */
  readonly port?: number | undefined;
  /** The protocol a ticket was issued for, to break ties. */
  readonly ticketProtocol?: Protocol | undefined;
}

/**
 * CONTRACT section 3: the Desktop-Protocol header when present; else the endpoint whose
 * published port is the CONNECT port; else the well-known port (3389 rdp; 5900-5999 the VM's vnc
 * or spice endpoint). The port must be one the VM publishes for that protocol or the protocol's
 * well-known port; anything else is refused, so no port probing goes through us.
 */
export function selectEndpoint(vm: VmRecord, hints: EndpointHints): Endpoint {
  const { port } = hints;
  const portFits = (e: Endpoint): boolean =>
    port === undefined ||
    e.publishedPort === port ||
    (e.protocol === 'rdp' && port === WELL_KNOWN_PORT.rdp) ||
    (e.protocol !== 'rdp' && port >= 5900 && port <= 5999);

  if (hints.protocol) {
    const e = vm.endpoints.find((x) => x.protocol === hints.protocol);
    if (!e) throw new OneportError('ONEPORT_ERR_NO_SUCH_PROTOCOL');
    if (!portFits(e)) throw new OneportError('ONEPORT_ERR_PORT_NOT_PUBLISHED');
    return e;
  }
  const published = vm.endpoints.filter((e) => e.publishedPort === port);
  const candidates = published.length > 0 ? published : vm.endpoints.filter(portFits);
  if (candidates.length === 0) throw new OneportError('ONEPORT_ERR_PORT_NOT_PUBLISHED');
  if (hints.ticketProtocol) {
    const e = candidates.find((x) => x.protocol === hints.ticketProtocol);
    if (e) return e;
  }
  // Several candidates without a tie-breaker: VNC before SPICE on the shared 59xx range.
  const order: Protocol[] = ['vnc', 'spice', 'rdp'];
  candidates.sort((a, b) => order.indexOf(a.protocol) - order.indexOf(b.protocol));
  return candidates[0] as Endpoint;
}

/** Tunnels go only to VMs that are up. The cluster issue adds holding for recovering VMs. */
/** Refuse a VM that cannot take a tunnel now; with `hold`, a recovering or migrating VM passes (the caller waits for it). */
export function checkVmState(vm: VmRecord, opts: { hold?: boolean | undefined } = {}): void {
  if ((vm.state === 'recovering' || vm.state === 'migrating') && !opts.hold) {
    throw new OneportError('ONEPORT_ERR_VM_RECOVERING', undefined, { retryAfter: 5 });
  }
  if (vm.state === 'down') throw new OneportError('ONEPORT_ERR_VM_DOWN', undefined, { retryAfter: 30 });
}
