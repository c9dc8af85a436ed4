// Starts a worker that runs TypeScript. Node 20 does not pass `--import tsx` hooks to
// workers, so each worker begins here: register tsx's ESM loader, then import the
// `.ts` entry named in workerData.entry (a file URL) and call its `start(workerData)`.
import { workerData } from 'node:worker_threads';
import { register } from 'tsx/esm/api';

register();
const mod = await import(workerData.entry);
await mod.start(workerData);
