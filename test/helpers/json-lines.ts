/** A spawned process's JSON log lines, one call per line as it comes; lines that are not JSON are skipped. */
import type { Readable } from 'node:stream';

export function onJsonLines<T = Record<string, unknown>>(stream: Readable, fn: (line: T) => void): void {
  let buf = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    buf += chunk;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const text = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      let parsed: T;
      try {
        parsed = JSON.parse(text) as T;
      } catch {
        continue;
      }
      fn(parsed);
    }
  });
}
