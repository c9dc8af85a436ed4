// Test guest that never finishes on its own (for SIGINT tests): prints, then waits.
import type { Kernel } from '../../hypervisor/kernel.ts';

export default async function main(k: Kernel): Promise<void> {
  k.console.log('forever: running');
  await new Promise(() => setInterval(() => {}, 1000));
}
