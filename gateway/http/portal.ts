/**
 * The portal's static files (web/), read once at start-up from a fixed list: no path from a
 * request ever reaches the file system. Served with their types, caching headers and a strict
 * Content-Security-Policy.
 */
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { extname, join } from 'node:path';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { SECURITY_HEADERS, pathOf } from './respond.js';

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.json': 'application/json',
};

export const CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
  "form-action 'self'",
].join('; ');

interface Asset {
  body: Buffer;
  type: string;
  etag: string;
}

export class Portal {
  private readonly assets = new Map<string, Asset>();

  constructor(root: string) {
    this.load(root, '');
  }

  private load(root: string, prefix: string): void {
    let entries: string[];
    try {
      entries = readdirSync(join(root, prefix));
    } catch {
      return;
    }
    for (const name of entries) {
      const rel = prefix ? `${prefix}/${name}` : name;
      const full = join(root, rel);
      if (statSync(full).isDirectory()) {
        this.load(root, rel);
        continue;
      }
      const type = TYPES[extname(name)];
      if (!type) continue;
      const body = readFileSync(full);
      this.assets.set(`/${rel}`, { body, type, etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 16)}"` });
    }
    const index = this.assets.get('/index.html');
    if (index) this.assets.set('/', index);
  }

  /** Returns false when there is no such asset. */
  serve(req: IncomingMessage, res: ServerResponse): boolean {
    if (req.method !== 'GET' && req.method !== 'HEAD') return false;
    const asset = this.assets.get(pathOf(req));
    if (!asset) return false;
    const headers = {
      ...SECURITY_HEADERS,
      'Content-Type': asset.type,
      'Content-Security-Policy': CSP,
      ETag: asset.etag,
      // HTML revalidates every time so a new version shows at once; the rest may be cached briefly.
      'Cache-Control': asset.type.startsWith('text/html') ? 'no-cache' : 'public, max-age=300',
    };
    if (req.headers['if-none-match'] === asset.etag) {
      res.writeHead(304, headers);
      res.end();
      return true;
    }
    res.writeHead(200, { ...headers, 'Content-Length': asset.body.length });
    res.end(req.method === 'HEAD' ? undefined : asset.body);
    return true;
  }
}
