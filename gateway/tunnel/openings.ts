/**
 * The in-stream openings of the console handshake (console-handshake.ts): pure state machines
 * over each side's first bytes, run by an OpeningStream (console-stream.ts) after the client leg
 * was answered. Each is built from the codecs in protocols/ and holds at most what their caps
 * allow.
 *
 * - `firstBytesCheck`: the client's first bytes must be the declared protocol (SPICE `REDQ`, RDP
 *   TPKT + X.224 Connection Request or an MS-RDPEPS preconnection PDU); held until a detector
 *   says match, then passed on.
 * - `vncNoneOpening`: the console was already logged in to with its password (RFC 6143 7.1-7.2);
 *   towards the client the gateway is an RFB server that offers only security type None, in the
 *   version the client asks for. From ClientInit on both sides speak the same bytes.
 * - `spiceTicketOpening`: the client's link message and the console's reply pass through; the
 *   client's encrypted ticket is thrown away and one made from the console's password with the
 *   key the console just sent goes instead (spice-auth.ts). A refused ticket (link result
 *   PERMISSION_DENIED) reaches the client, then the tunnel ends as `console-auth`.
 */
import type { Detector } from '../../protocols/detector.js';
import {
  type RfbVersion,
  RFB_SECURITY_NONE,
  noneSecurityOffer,
  noneSecurityResult,
  parseProtocolVersion,
  parseSecurityChoice,
  protocolVersionMessage,
} from '../../protocols/vnc-auth.js';
import {
  SPICE_COMMON_CAP,
  SPICE_LINK_ERR,
  type SpiceLinkMess,
  hasSpiceCap,
  parseSpiceAuthMechanism,
  parseSpiceLinkMess,
  parseSpiceLinkReply,
  parseSpiceLinkResult,
  spiceAuthMechanismMessage,
  spiceClientAuthBytes,
  spiceTicket,
} from '../../protocols/spice-auth.js';
import type { HandshakeFailure, Opening, OpeningStep } from './console-stream.js';

/** Most client bytes held while a first-bytes check waits for a verdict. */
export const FIRST_BYTES_MAX = 4096; // 4 KiB

const NOTHING: OpeningStep = Object.freeze({});

function fail(failure: HandshakeFailure, detail: string, toClient?: Buffer[]): OpeningStep {
  return { outcome: { failure, detail }, ...(toClient ? { toClient } : {}) };
}

/** The client's first bytes must satisfy one of `detectors` (three-way: held while they say "more"). */
export function firstBytesCheck(protocol: string, detectors: readonly Detector<unknown>[], maxBytes = FIRST_BYTES_MAX): Opening {
  let held = Buffer.alloc(0);
  let done = false;
  return {
    start: () => NOTHING,
    fromConsole: (chunk) => ({ toClient: [chunk] }),
    fromClient(chunk) {
      if (done) return { toConsole: [chunk] };
      held = Buffer.concat([held, chunk]);
      const answers = detectors.map((d) => d.detect(held).kind);
      if (answers.includes('match')) {
        done = true;
        return { toConsole: [held], outcome: 'done' };
      }
      if (answers.every((a) => a === 'no')) return fail('client-protocol', `the client's first bytes are not ${protocol}`);
      if (held.length >= maxBytes) return fail('client-protocol', `no ${protocol} opening in the client's first ${maxBytes} bytes`);
      return NOTHING;
    },
    waitingFor: () => 'client',
  };
}

/** Towards the client, an RFB server offering only None; the console behind it is already logged in to. */
export function vncNoneOpening(): Opening {
  let held = Buffer.alloc(0);
  let state: 'version' | 'choice' = 'version';
  let version: RfbVersion = '3.8';
  const passOn = (rest: Buffer, toClient: Buffer[]): OpeningStep => ({ toClient, toConsole: [rest], outcome: 'done' });
  return {
    // The highest version we speak; the client answers with the one it wants.
    start: () => ({ toClient: [protocolVersionMessage('3.8')] }),
    fromConsole: (chunk) => ({ toClient: [chunk] }),
    fromClient(chunk) {
      held = Buffer.concat([held, chunk]);
      if (state === 'version') {
        const v = parseProtocolVersion(held);
        if (v.kind === 'more') return NOTHING;
        if (v.kind === 'error') return fail('client-protocol', `RFB client version: ${v.reason}`);
        version = v.value.version;
        held = held.subarray(v.length);
        if (version === '3.3') return passOn(held, [noneSecurityOffer(version), noneSecurityResult(version)]);
        state = 'choice';
        const step = this.fromClient(Buffer.alloc(0));
        return { ...step, toClient: [noneSecurityOffer(version), ...(step.toClient ?? [])] };
      }
      const c = parseSecurityChoice(held);
      if (c.kind !== 'done') return NOTHING;
      if (c.value !== RFB_SECURITY_NONE) return fail('client-protocol', `the RFB client chose security type ${c.value}; only None is offered`);
      return passOn(held.subarray(c.length), [noneSecurityResult(version)]);
    },
    waitingFor: () => 'client',
  };
}

/** Swap each SPICE channel's ticket for one made from `password` under the key the console sent. */
export function spiceTicketOpening(password: string): Opening {
  let client = Buffer.alloc(0);
  let fromConsole = Buffer.alloc(0);
  let state: 'link' | 'reply' | 'ticket' | 'result' = 'link';
  let mess: SpiceLinkMess | undefined;
  let publicKey: Buffer | undefined;

  const onClient = (): OpeningStep => {
    if (state === 'link') {
      const p = parseSpiceLinkMess(client);
      if (p.kind === 'more') return NOTHING;
      if (p.kind === 'error') return fail('client-protocol', `SPICE link message: ${p.reason}`);
      mess = p.value;
      const raw = client.subarray(0, p.length);
      client = client.subarray(p.length);
      state = 'reply';
      return { toConsole: [raw] };
    }
    if (state === 'reply') {
      // Nothing is due from the client before the console's reply: hold a ticket's worth at most.
      return mess && client.length > spiceClientAuthBytes(mess) ? fail('client-protocol', 'the SPICE client sent more than its ticket before the reply') : NOTHING;
    }
    if (state !== 'ticket' || !mess || !publicKey) return NOTHING;
    const need = spiceClientAuthBytes(mess);
    if (client.length < need) return NOTHING;
    const selects = hasSpiceCap(mess.commonCaps, SPICE_COMMON_CAP.PROTOCOL_AUTH_SELECTION);
    if (selects) {
      const m = parseSpiceAuthMechanism(client);
      if (m.kind === 'done' && m.value !== SPICE_COMMON_CAP.AUTH_SPICE) return fail('client-protocol', `the SPICE client chose auth mechanism ${m.value}; with a stored console password only the SPICE ticket is answered`);
    }
    const ticket = spiceTicket(password, publicKey);
    if (!ticket.ok) return fail(ticket.code === 'bad-key' ? 'console-protocol' : 'console-auth', `SPICE ticket: ${ticket.reason}`);
    const rest = client.subarray(need);
    client = Buffer.alloc(0);
    state = 'result';
    return { toConsole: [...(selects ? [spiceAuthMechanismMessage()] : []), ticket.value, rest] };
  };

  return {
    start: () => NOTHING,
    fromClient(chunk) {
      if (state === 'result') return { toConsole: [chunk] };
      client = Buffer.concat([client, chunk]);
      const step = onClient();
      // The link message went on; the rest of what the client sent is looked at in the next state.
      if (state === 'reply' && step.outcome === undefined && client.length > 0) {
        const more = onClient();
        return { ...more, toConsole: [...(step.toConsole ?? []), ...(more.toConsole ?? [])] };
      }
      return step;
    },
    fromConsole(chunk) {
      if (state === 'link' || state === 'ticket') return { toClient: [chunk] };
      fromConsole = Buffer.concat([fromConsole, chunk]);
      if (state === 'reply') {
        const r = parseSpiceLinkReply(fromConsole);
        if (r.kind === 'more') return NOTHING;
        if (r.kind === 'error') return fail('console-protocol', `SPICE link reply: ${r.reason}`);
        const raw = fromConsole.subarray(0, r.length);
        const rest = fromConsole.subarray(r.length);
        fromConsole = Buffer.alloc(0);
        // A console that refuses the link (no such channel, ...) says so itself: nothing to swap.
        if (r.value.error !== SPICE_LINK_ERR.OK) return { toClient: [raw, rest], outcome: 'done' };
        publicKey = r.value.publicKey;
        state = 'ticket';
        const step = onClient();
        return { ...step, toClient: [raw, rest, ...(step.toClient ?? [])] };
      }
      const result = parseSpiceLinkResult(fromConsole);
      if (result.kind !== 'done') return NOTHING;
      const all = fromConsole;
      fromConsole = Buffer.alloc(0);
      if (result.value === SPICE_LINK_ERR.PERMISSION_DENIED) return fail('console-auth', 'the SPICE console refused the stored password (link result PERMISSION_DENIED)', [all]);
      return { toClient: [all], outcome: 'done' };
    },
    waitingFor: () => (state === 'reply' || state === 'result' ? 'console' : 'client'),
  };
}
