// Test guest for the control-socket test: runs until shut down; each disk hot-plugged
// into it is read whole through blkfront and its SHA-256 written to the guest's own
// XenStore directory, `data/<name>-sha256` (e.g. data/xvdb-sha256).
import { createHash } from 'node:crypto';
import type { Kernel } from '../../hypervisor/kernel.ts';
import type { Blkfront } from '../../blkfront/xenbus.ts';

export default async function main(k: Kernel): Promise<void> {
  k.onDevice((e) => {
    if (e.change !== 'added' || !e.name.startsWith('xvd')) return;
    void (async () => {
      const d = e.device as Blkfront;
      const h = createHash('sha256');
      for (let s = 0; s < d.sectors; s += 256) h.update(await d.read(s, Math.min(256, d.sectors - s)));
      await k.xenbus.write(`/local/domain/${k.domid}/data/${e.name}-sha256`, h.digest('hex'));
    })().catch((err: Error) => k.console.log(`reading ${e.name}: ${err.message}`));
  });
  k.console.log('hotplug-reader: running');
  await new Promise(() => setInterval(() => {}, 1000));
}
