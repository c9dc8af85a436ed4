/**
 * `npm run stress`: 10 million requests over a pvio blkif ring between two domains,
 * in poll and in adaptive mode, with random batch sizes, sequence checks on both
 * sides and indices starting just below 2^32. Prints the rate of each run; exits
 * non-zero on any lost, duplicated or reordered request.
 *
 * Usage: npm run stress [-- --count N]
 */
import { parseArgs } from 'node:util';
import { Machine } from '../toolstack/machine.ts';
import { PvioRingPair } from './pvio-pair.ts';
import type { WaitMode } from '../event-channel/evtchn.ts';

/** Runs the stress; @returns the exit status. */
export async function stress(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { count: { type: 'string', default: '10000000' } } });
  const count = Number(values.count);
  const m = await Machine.boot();
  let failed = false;
  try {
    const pair = await PvioRingPair.open(m, 0, 0xffff_ff00);
    for (const mode of ['poll', 'adaptive'] as WaitMode[]) {
      const t0 = performance.now();
      const r = await pair.run({ mode, depth: 32, batch: 8, randomBatch: true, count, seed: 42 }, mode, 20 * 60_000);
      const s = (performance.now() - t0) / 1000;
      const ok = r.front.total === count && r.front.errors === 0 && r.back.seqErrors === 0 && r.back.served === count + 1;
      failed ||= !ok;
      console.log(`${mode}: ${r.front.total} requests in ${s.toFixed(2)} s = ${(r.front.total / s / 1e6).toFixed(2)} M req/s; ` +
        `errors ${r.front.errors + r.back.seqErrors}; notifications ${r.front.notifications + r.back.notifications}; ${ok ? 'OK' : 'FAILED'}`);
    }
    await pair.close();
  } finally {
    await m.shutdown();
  }
  return failed ? 1 : 0;
}

process.exitCode = await stress(process.argv.slice(2));
