// Test guest: reads all of xvda through blkfront and returns its SHA-256.
import { createHash } from 'node:crypto';
import type { Kernel } from '../../hypervisor/kernel.ts';
import type { Blkfront } from '../../blkfront/xenbus.ts';

export default async function main(k: Kernel): Promise<unknown> {
  const d = k.devices.get('xvda') as Blkfront;
  const h = createHash('sha256');
  const chunk = 2048; // sectors (1 MiB)
  for (let s = 0; s < d.sectors; s += chunk) h.update(await d.read(s, Math.min(chunk, d.sectors - s)));
  const digest = h.digest('hex');
  k.console.log(`xvda sha256 ${digest}`);
  return { digest, sectors: d.sectors, counters: { ...d.counters } };
}
