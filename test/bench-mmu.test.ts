// `pvio bench mmu` (bench/mmu.ts) at small sizes: every mode × workload gives a JSON
// row with the fields the issue names, the counts are the model's (PV batched enters
// the hypervisor at least 10x less than shadow paging to build an address space; the
// fast system call enters it never, trap-and-emulate once per call), the ratios carry
// their predictions, the SVG chart names every mode; bad arguments exit 2 with one line.
import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { benchMmu, parseBenchMmuArgs, type MmuRatio, type MmuRow } from '../bench/mmu.ts';

const dir = mkdtempSync(join(tmpdir(), 'pvio-bench-mmu-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('pvio bench mmu', () => {
  it('writes a row per mode and workload, the ratios with their predictions, and a chart', async () => {
    const json = join(dir, 'mmu.json');
    const svg = join(dir, 'mmu.svg');
    // By default every run is a guest domain, the model's hypervisor in the hypervisor thread.
    const code = await benchMmu(['--rounds', '1', '--mappings', '700', '--switches', '40', '--syscalls', '500', '--json', json, '--svg', svg]);
    expect(code).toBe(0);
    const report = JSON.parse(readFileSync(json, 'utf8')) as { rows: MmuRow[]; ratios: MmuRatio[] };
    expect(report.rows).toHaveLength(12);
    for (const r of report.rows) {
      expect(['pv-batched', 'pv-single', 'shadow', 'trap-emulate']).toContain(r.mode);
      expect(['address-space', 'process-switch', 'syscall']).toContain(r.workload);
      for (const k of ['hypervisorEntries', 'validatedPtes', 'traps', 'tlbFlushes', 'modelledCycles', 'wallNs'] as const) {
        expect(typeof r[k], `${r.mode}/${r.workload}.${k}`).toBe('number');
      }
      expect(r.wallNs).toBeGreaterThan(0);
      expect(r.oneThreadWallNs).toBeGreaterThan(0);
    }
    const row = (w: string, m: string) => report.rows.find((r) => r.workload === w && r.mode === m)!;
    expect(row('address-space', 'shadow').hypervisorEntries).toBeGreaterThanOrEqual(10 * row('address-space', 'pv-batched').hypervisorEntries);
    expect(row('syscall', 'pv-batched').hypervisorEntries).toBe(0);
    expect(row('syscall', 'trap-emulate').hypervisorEntries).toBe(500);
    expect(row('process-switch', 'trap-emulate').hypervisorEntries).toBe(3 * 40);
    const goal = report.ratios.find((x) => x.id === 'address-space/entries/shadow-vs-pv-batched')!;
    expect(goal.met).toBe(true);
    expect(goal.measured).toBe(row('address-space', 'shadow').hypervisorEntries / row('address-space', 'pv-batched').hypervisorEntries);
    for (const x of report.ratios) expect(x.predicted.length).toBeGreaterThan(0);
    const chart = readFileSync(svg, 'utf8');
    expect(chart.startsWith('<svg')).toBe(true);
    for (const m of ['pv-batched', 'pv-single', 'shadow', 'trap-emulate']) expect(chart).toContain(m);
  });

  it('--one-thread runs the model in this thread, with the same counts', async () => {
    const json = join(dir, 'one.json');
    expect(await benchMmu(['--one-thread', '--rounds', '2', '--mappings', '700', '--switches', '40', '--syscalls', '500', '--json', json])).toBe(0);
    const one = JSON.parse(readFileSync(json, 'utf8')) as { rows: MmuRow[]; config: { host: string } };
    const hosted = JSON.parse(readFileSync(join(dir, 'mmu.json'), 'utf8')) as { rows: MmuRow[]; config: { host: string } };
    expect(one.config.host).toBe('one-thread');
    expect(hosted.config.host).toBe('hypervisor-thread');
    expect(one.rows.map((r) => [r.mode, r.workload, r.hypervisorEntries, r.validatedPtes])).toEqual(hosted.rows.map((r) => [r.mode, r.workload, r.hypervisorEntries, r.validatedPtes]));
  });

  it('refuses bad arguments with one line', () => {
    expect(() => parseBenchMmuArgs(['--rounds', '0'])).toThrow(/--rounds: 0 is not a number ≥ 1/);
    expect(() => parseBenchMmuArgs(['--costs', 'warp=3'])).toThrow(/bad cost 'warp=3'/);
    expect(() => parseBenchMmuArgs(['extra'])).toThrow(/unknown argument extra/);
    expect(parseBenchMmuArgs(['--costs', 'entry=1500']).costs.entry).toBe(1500);
  });
});
