// Smoke test of `pvio bench net --quick` (bench/net.ts): one short run end to end
// through the CLI — two pvio guest pairs (grant copy, persistent), the MessagePort
// relays (copy, transfer) and the minimal SAB ring relay, three frame sizes — and the
// JSON report's shape; plus the zero-drop search against a synthetic link whose
// capacity is known. The run is a child process killed at 55 s, so the test can fail
// but never hang.
import { afterAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  BENCH_NET_USAGE, benchNet, parseBenchNetArgs, searchZeroDrop, windowPassed,
  type NetMember, type NetReport, type WindowResult, type WindowSpec,
} from '../bench/net.ts';

const dir = mkdtempSync(join(tmpdir(), 'pvio-bench-net-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const PVIO = fileURLToPath(new URL('../toolstack/bin/pvio.mjs', import.meta.url));

/** A link that carries `capacity` packets/s: above it, the excess is dropped. */
function syntheticLink(capacity: number): NetMember & { rates: number[] } {
  const rates: number[] = [];
  return {
    impl: 'pvio', mode: 'persistent', queues: 1, rates,
    run: async (w: WindowSpec): Promise<WindowResult> => {
      rates.push(w.rate);
      const offered = w.rate === 0 ? capacity * 3 : w.rate;
      const sent = Math.round((offered * w.ms) / 1000);
      const received = Math.min(sent, Math.round((capacity * w.ms) / 1000));
      return { rate: w.rate, scheduled: sent, sent, received, bytes: received * 64, txMs: w.ms, rxMs: w.ms, drops: sent - received, notifications: null };
    },
  };
}

describe('pvio bench net', () => {
  it('parses its options and refuses unknown ones', async () => {
    expect(parseBenchNetArgs(['--quick'])).toMatchObject({ quick: true, rounds: 2, queues2: false, frames: [64, 1500, 65535] });
    expect(parseBenchNetArgs([])).toMatchObject({ quick: false, rounds: 7, windowMs: 300, steps: 5, queues2: true });
    expect(parseBenchNetArgs(['--frames', '64,1500']).frames).toEqual([64, 1500]);
    expect(() => parseBenchNetArgs(['--frames', '10'])).toThrow(/--frames/);
    expect(() => parseBenchNetArgs(['--rounds', '0'])).toThrow(/--rounds/);
    expect(parseBenchNetArgs(['--spin-tokens', '1']).spinTokens).toBe(1);
    expect(parseBenchNetArgs([]).spinTokens).toBe(2);
    expect(await benchNet(['--bogus'])).toBe(2);
    expect(BENCH_NET_USAGE).toMatch(/pvio bench net/);
  });

  it('the zero-drop search homes in on a link\'s capacity from below', async () => {
    const link = syntheticLink(100_000);
    const r = await searchZeroDrop(link, 64, { windowMs: 100, steps: 6 }, 0, () => {});
    expect(link.rates[0]).toBe(0); // the flood comes first
    expect(r.flood.drops).toBeGreaterThan(0);
    expect(r.zeroDropPps).toBeLessThanOrEqual(100_000);
    expect(r.zeroDropPps).toBeGreaterThan(95_000);
    expect(r.steps.every((w) => windowPassed(w, 100) === (w.rate <= 100_000))).toBe(true);
    // A link that never drops: the flood itself is the zero-drop rate, no paced window.
    const fast = { ...syntheticLink(0), run: async (w: WindowSpec): Promise<WindowResult> => ({ rate: w.rate, scheduled: 500, sent: 500, received: 500, bytes: 32_000, txMs: w.ms, rxMs: w.ms, drops: 0, notifications: 0 }) };
    const r2 = await searchZeroDrop(fast, 64, { windowMs: 100, steps: 4 }, 0, () => {});
    expect(r2.steps).toEqual([]);
    expect(r2.zeroDropPps).toBeCloseTo(5000, 0);
  });

  it('--quick runs every implementation and writes rows, goals and a chart', async () => {
    const json = join(dir, 'net.json');
    const svg = join(dir, 'net.svg');
    const run = await new Promise<{ code: number | null; signal: string | null; stderr: string }>((resolve) => {
      execFile(process.execPath, [PVIO, 'bench', 'net', '--quick', '--json', json, '--svg', svg],
        { timeout: 55_000, killSignal: 'SIGKILL', maxBuffer: 64 << 20 },
        (err, _stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : null) : 0, signal: err?.signal ?? null, stderr }));
    });
    expect(run.signal, `killed after 55 s; stderr tail:\n${run.stderr.slice(-2000)}`).toBeNull();
    const report = JSON.parse(readFileSync(json, 'utf8')) as NetReport;
    expect(report.rows.filter((r) => r.error)).toEqual([]);
    expect(run.code, run.stderr.slice(-2000)).toBe(0);

    for (const impl of ['pvio', 'messageport-relay', 'minimal-ring-relay'] as const) {
      const rows = report.rows.filter((r) => r.impl === impl);
      expect(rows.map((r) => r.frameBytes).sort((a, b) => a - b)).toEqual(impl === 'pvio' ? [64, 64, 1500, 1500, 65535, 65535] : impl === 'messageport-relay' ? [64, 64, 1500, 1500, 65535, 65535] : [64, 1500, 65535]);
    }
    expect(new Set(report.rows.filter((r) => r.impl === 'pvio').map((r) => r.mode))).toEqual(new Set(['copy', 'persistent']));
    expect(new Set(report.rows.filter((r) => r.impl === 'messageport-relay').map((r) => r.mode))).toEqual(new Set(['copy', 'transfer']));
    for (const r of report.rows) {
      expect(r.pps).toBeGreaterThan(0);
      expect(r.gbitPerSec!).toBeCloseTo((r.pps! * r.frameBytes * 8) / 1e9, 6);
      expect(r.zeroDropPps).toBeGreaterThanOrEqual(0);
      expect(r.dropsPerPacket).toBeGreaterThanOrEqual(0);
      expect(r.dropsPerPacket).toBeLessThanOrEqual(1);
      expect(r.rounds).toBe(2);
      expect(r.queues).toBe(1);
      if (r.impl === 'messageport-relay') expect(r.notificationsPerPacket).toBeNull();
      else expect(r.notificationsPerPacket).toBeGreaterThan(0);
      if (r.impl === 'pvio') {
        // Grant copies in copy mode, kept mappings in persistent mode: two per packet (tx and rx) for a 64-byte frame.
        if (r.frameBytes === 64) expect(r.perPacket![r.mode === 'copy' ? 'grantCopies' : 'persistentHits']).toBeGreaterThanOrEqual(2);
      }
    }

    const goal = (id: string) => report.ratios.find((x) => x.id === id)!;
    for (const id of ['pvio-vs-messageport-relay/64B-zero-drop-pps', 'pvio-vs-messageport-relay/1500B-zero-drop-gbit']) {
      expect(goal(id).kind).toBe('goal');
      expect(goal(id).value).toBeGreaterThan(0);
      expect(typeof goal(id).met).toBe('boolean');
      expect(goal(id).perRound.length).toBeGreaterThanOrEqual(1);
    }
    const drops = goal('pvio-drops-at-highest-offered-rate');
    expect(drops.kind).toBe('goal');
    expect(typeof drops.value).toBe('number');
    expect(drops.met).toBe(true);
    const chart = readFileSync(svg, 'utf8');
    expect(chart).toMatch(/^<svg[\s\S]*<\/svg>\n$/);
    for (const label of ['frame size, bytes', 'zero-drop packets per second', 'pvio persistent 1q', 'pvio copy 1q', 'messageport-relay transfer', 'minimal-ring-relay copy']) {
      expect(chart).toContain(label);
    }
  }, 60_000);
});
