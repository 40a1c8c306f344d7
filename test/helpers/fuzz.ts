/**
 * The fuzzed corpus's seed and size, in one place. `npm test` always runs the committed seed, so a
 * failure there is reproducible by anyone; to look for new bugs, run the fuzz files with another
 * seed or more runs:
 *
 *   ONEPORT_FUZZ_SEED=12345 ONEPORT_FUZZ_SCALE=20 npx tap test/unit/fuzz-parsers.test.ts
 *
 * fast-check prints the seed and the shrunk counterexample of any failure; commit the input as a
 * hand-written case (test/fixtures/hostile-corpus.ts) once it is fixed.
 */

/** The committed seed. Change it only together with the numbers of runs it was sized for. */
export const COMMITTED_SEED = 0x0e_f0_27;

function envNumber(name: string): number | undefined {
  const text = process.env[name];
  if (text === undefined || text === '') return undefined;
  const n = Number(text);
  if (!Number.isFinite(n)) throw new Error(`${name} must be a number, got ${JSON.stringify(text)}`);
  return n;
}

export const FUZZ_SEED = Math.trunc(envNumber('ONEPORT_FUZZ_SEED') ?? COMMITTED_SEED);
const SCALE = Math.max(0.01, envNumber('ONEPORT_FUZZ_SCALE') ?? 1);

/** A number of runs sized for the committed seed on a loaded 2-core machine, times ONEPORT_FUZZ_SCALE. */
export function runs(n: number): number {
  return Math.max(1, Math.round(n * SCALE));
}

/** fast-check parameters: the seed, and `n` runs (scaled). */
export function fuzz(n: number): { seed: number; numRuns: number } {
  return { seed: FUZZ_SEED, numRuns: runs(n) };
}
