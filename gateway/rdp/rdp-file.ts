/**
 * `.rdp` files for stock RDP clients (mstsc, the Remote Desktop apps, FreeRDP, thin clients), as
 * the portal's "Download .rdp" hands them out, each with a fresh console ticket:
 *
 * - `gateway`: through the RD Gateway endpoint on the one port (MS-TSGU inside TLS): the ticket is
 *   the gateway access token (a PAA cookie, `gatewaycredentialssource:i:5`) and never crosses the
 *   network in clear text.
 * - `native`: straight to the one port, the ticket riding as `<ticket>.<vm>` in both the routing
 *   token (`loadbalanceinfo`) and the preconnection blob (`pcb`), before TLS (README "Native RDP").
 *
 * A line is `name:type:value` (type `s` string, `i` integer), CR LF between lines. Values come
 * from the directory (VM names are DNS names), a checked Host header and base32 tickets, and are
 * checked again here: a CR, LF or any other control character would start a setting of its own.
 */
import { formatHostPort, parseHostPort } from '../hostport.js';

export type RdpFileVariant = 'gateway' | 'native';
export function isRdpFileVariant(s: string): s is RdpFileVariant {
  return s === 'gateway' || s === 'native';
}

export interface RdpFileInput {
  readonly variant: RdpFileVariant;
  readonly vm: string;
  /** The RDP endpoint's published port (what `full address` names behind a gateway). */
  readonly publishedPort: number;
  /** The gateway as the browser reached it: `host[:port]` (a checked Host header). */
  readonly gateway: string;
  readonly ticket: string;
}

type Setting = readonly [name: string, value: string | number];

/** `host:port`, the port written out: a Host header without one came over https, so 443. */
export function gatewayAddress(host: string): string {
  if (parseHostPort(host)) return host;
  return formatHostPort(host.replace(/^\[(.*)\]$/, '$1'), 443);
}

function line([name, value]: Setting): string {
  const text = String(value);
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(text)) throw new RangeError(`.rdp setting ${name}: control characters would inject settings`);
  return `${name}:${typeof value === 'number' ? 'i' : 's'}:${text}`;
}

export function rdpFile(input: RdpFileInput): string {
  const gateway = gatewayAddress(input.gateway);
  const target = `${input.ticket}.${input.vm}`;
  const settings: Setting[] =
    input.variant === 'gateway'
      ? [
          ['full address', input.publishedPort === 3389 ? input.vm : `${input.vm}:${input.publishedPort}`],
          ['gatewayhostname', gateway],
          // 1: always use the gateway; 5: authenticate to it with the access token (PAA cookie).
          ['gatewayusagemethod', 1],
          ['gatewaycredentialssource', 5],
          ['gatewayprofileusagemethod', 1],
          ['gatewayaccesstoken', input.ticket],
        ]
      : [
          ['full address', gateway],
          // Both carriers, the same text: clients send whichever they support (FreeRDP repeats only
          // the routing token when it retries).
          ['loadbalanceinfo', target],
          ['pcb', target],
        ];
  settings.push(
    // 2: warn when the desktop's certificate cannot be checked (desktops often have self-signed ones).
    ['authentication level', 2],
    ['screen mode id', 2],
  );
  return `${settings.map(line).join('\r\n')}\r\n`;
}
