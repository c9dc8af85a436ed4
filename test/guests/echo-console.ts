// Test guest for `pvio console`: runs until shut down; every line typed at its
// console comes back as `echo: <line>` (so a test can see both directions).
import type { Kernel } from '../../hypervisor/kernel.ts';

export default async function main(k: Kernel): Promise<void> {
  let partial = '';
  k.console.onInput((text) => {
    partial += text;
    const lines = partial.split('\n');
    partial = lines.pop()!;
    for (const l of lines) k.console.log(`echo: ${l}`);
  });
  k.console.log('echo-console: ready');
  await new Promise(() => setInterval(() => {}, 1000));
}
