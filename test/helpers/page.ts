/**
 * Reading pixels from a page's canvas in tests. The portal's CSP forbids eval, so conditions are
 * not evaluated from strings in the page (Playwright's waitForFunction evals); instead a plain
 * function is called through the DevTools protocol, polled from here until it holds.
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type BrowserContext, type Page, chromium } from 'playwright-core';
import { until } from './wait.js';

const ARTIFACTS = fileURLToPath(new URL('../../test-artifacts/', import.meta.url));

/** Where a test keeps `name` (a screenshot) for people to look at: test-artifacts/, created on first use. */
export function artifact(name: string): string {
  mkdirSync(ARTIFACTS, { recursive: true });
  return join(ARTIFACTS, name);
}

/**
 * Debian's Chromium, headless, with a fresh profile removed at teardown; never a downloaded
 * browser. The gateway's certificate comes from the test's own CA, hence ignoreHTTPSErrors.
 */
export async function launchChromium(t: { teardown(fn: () => unknown): void }): Promise<BrowserContext> {
  const profile = mkdtempSync(join(tmpdir(), 'oneport-chromium-'));
  t.teardown(() => rmSync(profile, { recursive: true, force: true }));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-features=LocalNetworkAccessChecks'],
    ignoreHTTPSErrors: true,
    viewport: { width: 800, height: 600 },
    timeout: 60_000,
  });
  t.teardown(() => context.close());
  return context;
}

/** What the page-side functions below see: just enough of the DOM (the tests compile without DOM types). */
interface PageCanvas {
  width: number;
  height: number;
  getContext(kind: '2d'): { getImageData(x: number, y: number, w: number, h: number): { data: ArrayLike<number> } } | null;
}
interface PageGlobals {
  document: { querySelector(selector: string): PageCanvas | null };
}

/** Where canvasIsColour looks by default: the centre and two corners. */
const CENTRE_AND_CORNERS: ReadonlyArray<readonly [number, number]> = [[0.5, 0.5], [0.1, 0.1], [0.9, 0.9]];

/** Runs in the page: does the viewer's canvas show `want` at each of `points` (fractions of its size)? */
function canvasIsColour([want, points]: [number[], Array<[number, number]>]): boolean {
  const c = (globalThis as unknown as PageGlobals).document.querySelector('#screen canvas');
  if (!c || c.width < 10 || c.height < 10) return false;
  const ctx = c.getContext('2d');
  if (!ctx) return false;
  for (const [fx, fy] of points) {
    const d = ctx.getImageData(Math.floor(c.width * fx!), Math.floor(c.height * fy!), 1, 1).data;
    if (Math.abs(d[0]! - want[0]!) > 2 || Math.abs(d[1]! - want[1]!) > 2 || Math.abs(d[2]! - want[2]!) > 2) return false;
  }
  return true;
}

/**
 * Runs in the page: does the viewer's canvas show a text screen (a BIOS): a black background with
 * a fair number of light grey text pixels in the top rows?
 */
function canvasShowsText(): boolean {
  const c = (globalThis as unknown as PageGlobals).document.querySelector('#screen canvas');
  if (!c || c.width < 100 || c.height < 100) return false;
  const ctx = c.getContext('2d');
  if (!ctx) return false;
  const corner = ctx.getImageData(c.width - 5, c.height - 5, 1, 1).data;
  if (corner[0]! > 10 || corner[1]! > 10 || corner[2]! > 10) return false;
  const top = ctx.getImageData(0, 0, c.width, Math.min(c.height, 120)).data;
  let grey = 0;
  for (let i = 0; i < top.length; i += 4) {
    const r = top[i]!;
    if (r > 150 && Math.abs(r - top[i + 1]!) < 8 && Math.abs(r - top[i + 2]!) < 8) grey++;
  }
  return grey > 200;
}

export function waitForCanvasColour(page: Page, rgb: readonly number[], timeoutMs = 30_000, points = CENTRE_AND_CORNERS): Promise<void> {
  const args: [number[], Array<[number, number]>] = [[...rgb], points.map(([x, y]) => [x, y])];
  return until(() => page.evaluate(canvasIsColour, args), { what: `the canvas shows rgb(${rgb.join(',')})`, timeoutMs, intervalMs: 100 });
}

export function waitForCanvasText(page: Page, timeoutMs = 60_000): Promise<void> {
  return until(() => page.evaluate(canvasShowsText), { what: 'the canvas shows a text screen', timeoutMs, intervalMs: 100 });
}

/** Horizontal overflow of the page in CSS pixels (0 when nothing sticks out sideways). */
export function sidewaysOverflow(page: Page): Promise<number> {
  return page.evaluate(() => {
    const g = globalThis as unknown as { document: { documentElement: { scrollWidth: number } }; innerWidth: number };
    return g.document.documentElement.scrollWidth - g.innerWidth;
  });
}

/** Log in through the portal's form, as a person would (the caller waits for what comes next). */
export async function loginViaPortal(page: Page, url: string, user: string, password: string): Promise<void> {
  await page.goto(url);
  await page.fill('#login input[name=user]', user);
  await page.fill('#login input[name=password]', password);
  await page.click('#login button[type=submit]');
}

export interface PageWatch {
  /** Script errors, CSP violations and failed requests (but the portal's first /api/me, a 401 by design). */
  readonly problems: string[];
  /** Every console line, `type: text`. */
  readonly console: string[];
  /** The URL of every WebSocket the page opened. */
  readonly sockets: string[];
}

/**
 * Watch a viewer page for what a test must not see. `expected`: console errors that are the
 * expected retries (a refused attempt while a server restarts), not page errors.
 */
export function watchPage(page: Page, expected: RegExp = /$^/): PageWatch {
  const watch: PageWatch = { problems: [], console: [], sockets: [] };
  page.on('console', (m) => {
    watch.console.push(`${m.type()}: ${m.text()}`);
    const fine = m.text().startsWith('Failed to load resource') || expected.test(m.text());
    if ((m.type() === 'error' && !fine) || /Content.Security.Policy/i.test(m.text())) watch.problems.push(m.text());
  });
  page.on('response', (r) => {
    if (r.status() >= 400 && !(r.status() === 401 && new URL(r.url()).pathname === '/api/me')) watch.problems.push(`${r.status()} ${r.url()}`);
  });
  page.on('pageerror', (e) => watch.problems.push(String(e)));
  page.on('websocket', (ws) => watch.sockets.push(ws.url()));
  return watch;
}
