#!/usr/bin/env node
// The `pvio` executable. Node 20 cannot run TypeScript by itself and does not pass
// `--import tsx` hooks on to worker threads, so this plain-JS entry point registers
// tsx's loader in-process, then imports the TypeScript CLI (toolstack/cli.ts), whose
// `main(argv)` resolves to the exit code once every domain's worker has exited.
//
// process.exit() is never called: the process ends by itself when the event loop is
// empty, so no console line still in flight from a worker is lost.
import { register } from 'tsx/esm/api';

register();

try {
  const { main } = await import(new URL('../cli.ts', import.meta.url).href);
  const code = await main(process.argv.slice(2));
  process.exitCode = Number.isInteger(code) && code >= 0 && code <= 255 ? code : 1;
} catch (err) {
  // main() reports its own errors and returns a code; this is the safety net for a
  // CLI that failed to load or threw anyway.
  const e = /** @type {any} */ (err);
  process.stderr.write(`pvio: ${e && typeof e.code === 'string' && e.code.startsWith('PVIO_ERR_')
    ? e.message : (e && e.stack) || String(e)}\n`);
  process.exitCode = 1;
}
