/**
 * The portal's static files: web/ at `/`, and the browser clients we ship from npm under fixed
 * prefixes (`/vendor/novnc/` is `@novnc/novnc`'s `core/` and `vendor/`; `/vendor/spice-html5/`
 * is `@spice-project/spice-html5`'s `src/`; `/vendor/ironrdp/` is
 * `@devolutions/iron-remote-desktop-rdp`'s one module). Everything is read once at start-up from those
 * folders into memory: no path from a request ever reaches the file system, so there is no
 * traversal to defend against. Served with their types, caching headers and a strict
 * Content-Security-Policy.
 */
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { dirname, extname, join } from 'node:path';
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
  // noVNC draws its local cursor from data: URLs; spice-html5 decodes images through data:/blob:.
  "img-src 'self' data: blob:",
  // spice-html5 plays video streams from blob: URLs.
  "media-src 'self' blob:",
  // 'self' covers wss:// to this host and port (CSP Level 3), which the viewers need.
  "connect-src 'self'",
  "worker-src 'none'",
  "object-src 'none'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
  "form-action 'self'",
].join('; ');

/**
 * The viewer page's policy: the same, plus what IronRDP's WebAssembly needs and nothing more:
 * 'wasm-unsafe-eval' to compile WebAssembly (it allows no JavaScript eval), and `data:` for
 * fetch, because the package carries its .wasm inline as a data: URL that it fetches (a data: URL
 * goes nowhere, so nothing can leave the page through it).
 */
export const VIEWER_CSP = CSP.replace("script-src 'self'", "script-src 'self' 'wasm-unsafe-eval'").replace("connect-src 'self'", "connect-src 'self' data:");

/** The pages that run IronRDP (VIEWER_CSP); every other page gets CSP. */
const WASM_PAGES = new Set(['/viewer.html']);

/** A folder of files served under a URL prefix. */
export interface Mount {
  /** URL prefix, starting and ending with `/`. */
  readonly prefix: string;
  /** Folder on disk. */
  readonly root: string;
  /** Only these sub-folders of `root` (default: all of it). */
  readonly only?: readonly string[];
  /** Relative paths to leave out (prefix match). */
  readonly skip?: readonly string[];
  /** Cache-Control for non-HTML files. */
  readonly cacheControl: string;
}

/** Where an npm package lives, found the way Node finds it (works from the sources and from dist/). */
function packageRoot(entry: string, levelsUp: number): string | undefined {
  try {
    let dir = dirname(createRequire(import.meta.url).resolve(entry));
    for (let i = 0; i < levelsUp; i++) dir = dirname(dir);
    return dir;
  } catch {
    return undefined;
  }
}

/**
 * The browser clients from npm. A package that is not installed is left out: the viewer page
 * then says it cannot load the client, and everything else still works.
 */
export function vendorMounts(): Mount[] {
  const mounts: Mount[] = [];
  // `@novnc/novnc` exports only core/rfb.js; the package root is two levels up.
  const novnc = packageRoot('@novnc/novnc', 1);
  // The vendored libraries change only with the package: an hour, then revalidate by ETag.
  const cacheControl = 'public, max-age=3600';
  if (novnc) mounts.push({ prefix: '/vendor/novnc/', root: novnc, only: ['core', 'vendor'], cacheControl });
  const spice = packageRoot('@spice-project/spice-html5/package.json', 0);
  // Its thirdparty/browser-es-module-loader is a polyfill for browsers without ES modules,
  // which would need 'unsafe-eval'; we do not serve it.
  if (spice) mounts.push({ prefix: '/vendor/spice-html5/', root: spice, only: ['src'], skip: ['src/thirdparty/browser-es-module-loader'], cacheControl });
  // IronRDP's WebAssembly RDP client: one ES module with the .wasm inside (web/rdp.js uses it).
  const ironrdp = packageRoot('@devolutions/iron-remote-desktop-rdp/package.json', 0);
  if (ironrdp) mounts.push({ prefix: '/vendor/ironrdp/', root: ironrdp, skip: ['package.json'], cacheControl });
  return mounts;
}

interface Asset {
  body: Buffer;
  type: string;
  etag: string;
  cacheControl: string;
}

export class Portal {
  private readonly assets = new Map<string, Asset>();

  /**
   * @param root the portal's own files (web/), served at `/`
   * @param mounts more folders under fixed prefixes; @default vendorMounts()
   */
  constructor(root: string, mounts: readonly Mount[] = vendorMounts()) {
    // Our own files may change with any deploy: short cache, then revalidate by ETag.
    this.load({ prefix: '/', root, cacheControl: 'public, max-age=300' }, '');
    for (const m of mounts) {
      for (const sub of m.only ?? ['']) this.load(m, sub);
    }
    const index = this.assets.get('/index.html');
    if (index) this.assets.set('/', index);
  }

  /** The URL paths served, for tests and diagnostics. */
  paths(): string[] {
    return [...this.assets.keys()];
  }

  private load(m: Mount, rel: string): void {
    if (m.skip?.some((s) => rel === s || rel.startsWith(`${s}/`))) return;
    let entries: string[];
    try {
      entries = readdirSync(join(m.root, rel));
    } catch {
      return;
    }
    for (const name of entries) {
      if (name.startsWith('.')) continue;
      const childRel = rel ? `${rel}/${name}` : name;
      const full = join(m.root, childRel);
      const st = statSync(full, { throwIfNoEntry: false });
      if (!st) continue;
      if (st.isDirectory()) {
        this.load(m, childRel);
        continue;
      }
      const type = TYPES[extname(name)];
      if (!type || !st.isFile()) continue;
      if (m.skip?.some((s) => childRel === s)) continue;
      const body = readFileSync(full);
      this.assets.set(`${m.prefix}${childRel}`, {
        body,
        type,
        etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 16)}"`,
        // HTML revalidates every time so a new version shows at once.
        cacheControl: type.startsWith('text/html') ? 'no-cache' : m.cacheControl,
      });
    }
  }

  /** Returns false when there is no such asset. */
  serve(req: IncomingMessage, res: ServerResponse): boolean {
    if (req.method !== 'GET' && req.method !== 'HEAD') return false;
    const asset = this.assets.get(pathOf(req));
    if (!asset) return false;
    const headers = {
      ...SECURITY_HEADERS,
      'Content-Type': asset.type,
      'Content-Security-Policy': WASM_PAGES.has(pathOf(req)) ? VIEWER_CSP : CSP,
      ETag: asset.etag,
      'Cache-Control': asset.cacheControl,
    };
    if (etagMatches(req.headers['if-none-match'], asset.etag)) {
      res.writeHead(304, headers);
      res.end();
      return true;
    }
    res.writeHead(200, { ...headers, 'Content-Length': asset.body.length });
    res.end(req.method === 'HEAD' ? undefined : asset.body);
    return true;
  }
}

/** If-None-Match may list several tags, or `*` (RFC 9110 section 13.1.2). */
function etagMatches(header: string | undefined, etag: string): boolean {
  if (!header) return false;
  if (header.trim() === '*') return true;
  return header.split(',').some((t) => t.trim().replace(/^W\//, '') === etag);
}
