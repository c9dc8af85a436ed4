// Two-worker ring stress (issue 3): a frontend domain and a backend domain over a
// real blkif ring, sequence numbers checked on both sides, random batch sizes,
// indices starting just below 2^32 so the wrap is crossed, in each wait mode
// (block mode with 32 or more in flight). `npm run stress` runs 10 million.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Machine } from '../toolstack/machine.ts';
import { PvioRingPair } from '../bench/pvio-pair.ts';
import type { WaitMode } from '../event-channel/evtchn.ts';

let m: Machine;
let pair: PvioRingPair;
beforeAll(async () => {
  m = await Machine.boot();
  pair = await PvioRingPair.open(m, 0, 0xffff_ff00);
});
afterAll(async () => {
  await pair?.close();
  await m?.shutdown();
});

const cases: Array<[WaitMode, number, number]> = [
  ['poll', 32, 100_000],
  ['adaptive', 32, 100_000],
  ['block', 32, 20_000],
  ['adaptive', 1, 5_000],
];

describe('ring stress between two domains', () => {
  for (const [mode, depth, count] of cases) {
    it(`${mode}, ${depth} in flight, random batches: ${count} requests, none lost, duplicated or reordered`, async () => {
      const r = await pair.run({ mode, depth, batch: 8, randomBatch: true, count, seed: count + depth }, mode, 60_000);
      expect(r.front.total).toBe(count);
      expect(r.front.errors).toBe(0);
      expect(r.back.seqErrors).toBe(0);
      expect(r.back.served).toBe(count + 1); // + the stop sentinel
      if (mode === 'poll') expect(r.front.notifications + r.back.notifications).toBeLessThan(count / 100);
    });
  }

  it('an idle pair in adaptive mode sleeps instead of spinning', async () => {
    const before = process.cpuUsage();
    const t0 = performance.now();
    const sides = await pair.idle(1000);
    const cpu = process.cpuUsage(before);
    const secs = (performance.now() - t0) / 1000;
    expect(sides.every((s) => !s.gotEvent && s.sleeps > 0)).toBe(true);
    // The whole process (hypervisor, dom0, both guests) stays well under a core.
    expect((cpu.user + cpu.system) / 1e6 / secs).toBeLessThan(0.25);
  });
});
