// Smoke test of `pvio bench blk --quick` (bench/blk.ts): one short run end to end —
// a machine with guests on a test file, the readSync/FileHandle baselines, the NBD
// rows when fio and qemu-nbd are installed — and the JSON report's shape.
import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { benchBlk, parseBenchBlkArgs, BENCH_BLK_USAGE, type BlkReport } from '../bench/blk.ts';

const dir = mkdtempSync(join(tmpdir(), 'pvio-bench-blk-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('pvio bench blk', () => {
  it('parses its options and refuses unknown ones', async () => {
    expect(parseBenchBlkArgs(['--quick'])).toMatchObject({ quick: true, rounds: 2, sizeMiB: 32, odirect: true, nbd: true });
    expect(parseBenchBlkArgs([])).toMatchObject({ rounds: 7, sizeMiB: 256, warmupMs: 150, measureMs: 300 });
    expect(() => parseBenchBlkArgs(['--rounds', '0'])).toThrow(/--rounds/);
    expect(await benchBlk(['--bogus'])).toBe(2);
    expect(BENCH_BLK_USAGE).toMatch(/pvio bench blk/);
  });

  it('--quick runs every implementation and writes rows, ratios and a chart', async () => {
    const json = join(dir, 'blk.json');
    const svg = join(dir, 'blk.svg');
    const code = await benchBlk(['--quick', '--json', json, '--svg', svg, '--file', join(dir, 'disk.img')]);
    const report = JSON.parse(readFileSync(json, 'utf8')) as BlkReport;
    expect(report.rows.filter((r) => r.error)).toEqual([]);
    expect(code).toBe(0);

    const impls = new Set(report.rows.map((r) => r.impl));
    for (const impl of ['pvio', 'readSync', 'FileHandle'] as const) expect(impls.has(impl)).toBe(true);
    // The NBD rows ran, or were skipped with a reason (a tool missing, the export not there).
    for (const impl of ['fio-nbd-pvio', 'fio-nbd-qemu-nbd'] as const) {
      expect(impls.has(impl) || report.skipped.some((s) => s.impl === impl && s.reason.startsWith('skipped:'))).toBe(true);
    }
    // O_DIRECT: the baselines ran; pvio's O_DIRECT rows ran or say why not.
    expect(report.rows.some((r) => r.fileMode === 'o-direct' && r.impl === 'readSync')).toBe(true);
    expect(report.rows.some((r) => r.fileMode === 'o-direct' && r.impl === 'pvio')
      || report.skipped.some((s) => s.variant.startsWith('odirect'))).toBe(true);

    for (const r of report.rows) {
      expect(['randread', 'randwrite', 'seqread', 'seqwrite']).toContain(r.pattern);
      expect(r.iops).toBeGreaterThan(0);
      expect(r.mbPerSec).toBeGreaterThan(0);
      expect(r.mbPerSec!).toBeCloseTo((r.iops! * r.blockSize) / 1e6, -1);
      expect(r.p50LatencyUs).toBeGreaterThan(0);
      expect(r.p99LatencyUs!).toBeGreaterThanOrEqual(r.p50LatencyUs!);
      expect(r.rounds).toBe(2);
      if (r.impl === 'pvio') {
        expect(r.hypercallsPerOp).toBeGreaterThanOrEqual(0);
        expect(r.notificationsPerOp).toBeGreaterThan(0);
        expect(r.ratioVsReadSync).toBeGreaterThan(0);
        expect(r.ratioVsFileHandle).toBeGreaterThan(0);
        expect(r.perOp?.blkifRequests).toBeGreaterThanOrEqual(1);
      } else {
        expect(r.hypercallsPerOp).toBeNull();
        expect(r.notificationsPerOp).toBeNull();
      }
    }
    // Per-request grant maps cost hypercalls; persistent grants do not.
    const rr = (variant: string) => report.rows.find((r) => r.impl === 'pvio' && r.variant === variant && r.pattern === 'randread' && r.fileMode === 'page-cache');
    expect(rr('default')!.hypercallsPerOp).toBe(0);
    expect(rr('persistent-off')!.hypercallsPerOp).toBeGreaterThan(0);

    const goal = (id: string) => report.ratios.find((x) => x.id === id)!;
    for (const id of ['pvio-vs-readSync/4k-randread-qd32', 'pvio-vs-FileHandle/4k-randread-qd32', 'pvio-vs-readSync/1m-seqread',
      'persistent-on-vs-off/4k-randread-qd32']) {
      expect(goal(id).kind).toBe('goal');
      expect(goal(id).value).toBeGreaterThan(0);
      expect(typeof goal(id).met).toBe('boolean');
      expect(goal(id).perRound).toHaveLength(2);
    }
    expect(goal('fio-nbd-pvio-vs-qemu-nbd/4k-randread-qd32')).toBeDefined();
    expect(readFileSync(svg, 'utf8')).toMatch(/^<svg[\s\S]*pvio default randread[\s\S]*<\/svg>\n$/);
  }, 90_000);
});
