/**
 * Sealing the ticket/token signing key ring in Redis with a key only the nodes hold, so that read
 * access to Redis does not let anyone mint console tickets, resume tokens or API sessions.
 *
 * The seal key (32 bytes) is derived from the cluster CA key on nodes that hold it (HKDF-SHA256),
 * and handed to a node that joins with a token in the join answer (over TLS pinned to the CA), which
 * keeps it in `<state>/seal.key` (0600). A sealed ring is JSON `{"sealed":1,"kid","iv","ct","tag"}`:
 * AES-256-GCM of the ring's JSON. `open` passes a ring written before sealing existed through
 * unchanged, so existing clusters stay readable; the next rotation writes it sealed.
 */
import { createCipheriv, createDecipheriv, createHash, createPrivateKey, hkdfSync, randomBytes } from 'node:crypto';

const AAD = Buffer.from('oneport key ring v1');

/** The seal key of the cluster whose CA key is `caKeyPem` (the same on every node holding it). */
export function sealKeyFromCa(caKeyPem: string): Buffer {
  const der = createPrivateKey(caKeyPem).export({ type: 'pkcs8', format: 'der' });
  return Buffer.from(hkdfSync('sha256', der, 'oneport', 'key-ring seal v1', 32));
}

interface Sealed {
  readonly sealed: 1;
  /** Which seal key (first 8 bytes of its SHA-256, hex): a mismatch is told apart from damage. */
  readonly kid: string;
  readonly iv: string;
  readonly ct: string;
  readonly tag: string;
}

export class KeyRingSeal {
  readonly kid: string;

  constructor(private readonly key: Buffer) {
    if (key.length !== 32) throw new Error('a seal key is 32 bytes');
    this.kid = createHash('sha256').update(key).digest('hex').slice(0, 16);
  }

  seal(json: string): string {
    const iv = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', this.key, iv);
    c.setAAD(AAD);
    const ct = Buffer.concat([c.update(json, 'utf8'), c.final()]);
    return JSON.stringify({ sealed: 1, kid: this.kid, iv: iv.toString('base64'), ct: ct.toString('base64'), tag: c.getAuthTag().toString('base64') } satisfies Sealed);
  }

  /** The ring's JSON: opened when sealed (undefined if it cannot be), as it is when not. */
  open(text: string): string | undefined {
    const s = sealedForm(text);
    if (!s) return text;
    if (s.kid !== this.kid) return undefined;
    try {
      const d = createDecipheriv('aes-256-gcm', this.key, Buffer.from(s.iv, 'base64'));
      d.setAAD(AAD);
      d.setAuthTag(Buffer.from(s.tag, 'base64'));
      return Buffer.concat([d.update(Buffer.from(s.ct, 'base64')), d.final()]).toString('utf8');
    } catch {
      return undefined;
    }
  }
}

/** The sealed form in `text`, or undefined for a plain ring (or anything else). */
export function sealedForm(text: string): Sealed | undefined {
  try {
    const v = JSON.parse(text) as Partial<Sealed> | null;
    if (v?.sealed !== 1 || typeof v.kid !== 'string' || typeof v.iv !== 'string' || typeof v.ct !== 'string' || typeof v.tag !== 'string') return undefined;
    return v as Sealed;
  } catch {
    return undefined;
  }
}
