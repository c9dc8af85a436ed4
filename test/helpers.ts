// Shared helpers for tests that boot a machine with real worker domains.
import { fileURLToPath } from 'node:url';
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Machine, type GuestHandle, type GuestSpec } from '../toolstack/machine.ts';

/** Path of a test guest module in test/guests/. */
export function guestPath(name: string): string {
  return fileURLToPath(new URL(`./guests/${name}`, import.meta.url));
}

/** Creates an RPC test guest (test/guests/rpc.ts). */
export function rpcGuest(m: Machine, name: string, extra: Partial<GuestSpec> = {}): Promise<GuestHandle> {
  return m.createGuest({ name, memoryMiB: 16, vcpus: 1, kernel: guestPath('rpc.ts'), ...extra });
}

/** Polls `fn` until it returns a truthy value or `ms` pass. @throws Error on timeout. */
export async function eventually<T>(fn: () => Promise<T> | T, ms = 10_000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Per-domain hypervisor numbers from a snapshot. */
export async function domainInfo(m: Machine, domid: number): Promise<{ state: string; mappings: number; ports: number } | undefined> {
  const s = (await m.hypervisorStats()) as { domains: Array<{ domid: number; state: string; mappings: number; ports: number }> };
  return s.domains.find((d) => d.domid === domid);
}

/** dom0's counters of one disk (`guest/xvda`), as `Machine.dom0Stats` reports them. */
export async function dom0Disk<T>(m: Machine, name: string): Promise<T> {
  const s = (await m.dom0Stats()) as { disks: Record<string, T> };
  return s.disks[name];
}

/** SHA-256 of `b`, hex. */
export function sha256(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

/** Writes a disk image of `bytes` random bytes as `dir/name`. @returns its path and contents. */
export function randomImage(dir: string, name: string, bytes: number): { path: string; data: Buffer } {
  const data = randomBytes(bytes);
  const path = join(dir, name);
  writeFileSync(path, data);
  return { path, data };
}

/**
 * Collects dom0's console lines (its worker's stdout reaches this process's stdout,
 * each line tagged `(Domain-0)`) into `lines`, while still printing everything.
 * @returns a function that puts `process.stdout.write` back.
 */
export function captureDom0Console(lines: string[]): () => void {
  const write = process.stdout.write.bind(process.stdout);
  let partial = '';
  process.stdout.write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
    partial += typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString();
    const split = partial.split('\n');
    partial = split.pop()!;
    for (const l of split) if (l.includes('(Domain-0)')) lines.push(l);
    return (write as (c: string | Uint8Array, ...r: unknown[]) => boolean)(chunk, ...rest);
  }) as typeof process.stdout.write;
  return () => {
    process.stdout.write = write;
  };
}

/**
 * A measuring window for the backend share tests: waits 300 ms to settle, then
 * returns what `served()` ([a's, b's] running counts) grew by over one second.
 */
export function shareWindow(served: () => Promise<[number, number]>): () => Promise<[number, number]> {
  return async () => {
    await new Promise((r) => setTimeout(r, 300));
    const x = await served();
    await new Promise((r) => setTimeout(r, 1000));
    const y = await served();
    return [y[0] - x[0], y[1] - x[1]];
  };
}

/** a's share over b's of a window (b's counted as at least 1). */
export function shareRatio([x, y]: [number, number]): number {
  return x / Math.max(1, y);
}

/**
 * The weight steps both backend share tests take, each followed by one `window()`
 * measuring what dom0 served guests `a` and `b` ([a's, b's]): a at 512 (a gets 1.5–2.7×
 * b's), then b at 512 too (within 1.3× on the weighted path), then a back at 256 (b gets
 * 1.5–2.7×). `minServed`: the least a guest must get in the first weighted window.
 * @returns the three windows.
 */
export async function checkWeightedShares(m: Machine, a: number, b: number, window: () => Promise<[number, number]>, minServed: number):
  Promise<{ heavyA: [number, number]; both: [number, number]; heavyB: [number, number] }> {
  const { expect } = await import('vitest');
  const ratio = shareRatio;
  await m.setSchedParams(a, { weight: 512 });
  const heavyA = await window();
  expect(Math.min(...heavyA), `served ${heavyA}`).toBeGreaterThan(minServed);
  expect(ratio(heavyA), `512:256: served ${heavyA}`).toBeGreaterThan(1.5);
  expect(ratio(heavyA), `512:256: served ${heavyA}`).toBeLessThan(2.7);
  await m.setSchedParams(b, { weight: 512 }); // equal again, on the weighted path
  const both = await window();
  expect(ratio(both), `512:512: served ${both}`).toBeGreaterThan(1 / 1.3);
  expect(ratio(both), `512:512: served ${both}`).toBeLessThan(1.3);
  await m.setSchedParams(a, { weight: 256 });
  const heavyB = await window();
  expect(1 / ratio(heavyB), `256:512: served ${heavyB}`).toBeGreaterThan(1.5);
  expect(1 / ratio(heavyB), `256:512: served ${heavyB}`).toBeLessThan(2.7);
  return { heavyA, both, heavyB };
}
