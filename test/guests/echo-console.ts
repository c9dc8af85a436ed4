// Test guest for `pvio console`: runs until shut down; every line typed at its
// console comes back as `echo: <line>` (so a test can see both directions).
// `args.readerDelayMs` waits that long before reading the console, so a test can
// type before the program has a reader.
import type { Kernel } from '../../hypervisor/kernel.ts';

export default async function main(k: Kernel): Promise<void> {
  const delay = (k.args as { readerDelayMs?: number } | null)?.readerDelayMs ?? 0;
  k.console.log('echo-console: ready');
  if (delay > 0) await new Promise((r) => setTimeout(r, delay));
  let partial = '';
  k.console.onInput((text) => {
    partial += text;
    const lines = partial.split('\n');
    partial = lines.pop()!;
    for (const l of lines) k.console.log(`echo: ${l}`);
  });
  await new Promise(() => setInterval(() => {}, 1000));
}
