/**
 * `openStore`: builds the store that serves one disk from the disk's machine-config
 * entry (`toolstack/config.ts`): its target path, its mode and its
 * {@link StoreSpec} (`store=`, `base=`, `module=`, `latency-us=`, `error-rate=`,
 * `error-seed=`, `trace=`).
 *
 * The inner store is, by `spec.type`:
 * - `'raw'` (default, also with no spec): `RawFileStore` over the target file, or with
 *   `direct` a `DirectFileStore` (O_DIRECT through an aligned bounce pool);
 * - `'cow'`: `CowStore`, the target being the overlay over the read-only `base`;
 * - `'module'`: whatever the default export of the module `module` returns
 *   ({@link StoreModule}: called with `{ path, readOnly }`).
 *
 * Then the experiment wrappers (store-wrappers.ts), each only when configured, in
 * this order from the inside out: `ErrorStore` (`errorRate` > 0), `LatencyStore`
 * (`latencyUs` > 0), `TraceStore` (`trace`) — the trace outermost, so it records
 * the errors and the latency the guest sees.
 */

import { pathToFileURL } from 'node:url';
import { CowStore } from './cow-store.ts';
import { RawFileStore } from './raw-file-store.ts';
import { DirectFileStore } from './direct-file-store.ts';
import { ErrorStore, LatencyStore, TraceStore } from './store-wrappers.ts';
import { StorageError, type StorageBackend, type StoreModule, type StoreSpec } from './storage.ts';

/** The part of a disk's config that picks its store. */
export interface StoreDisk {
  /** The disk's target: the image (raw), the overlay (cow), or the module's `path`. */
  readonly path: string;
  /** Open read-only: writes answer -1 and the disk is advertised read-only. */
  readonly readOnly: boolean;
  /** The store and its wrappers; absent means a raw file with no wrappers. */
  readonly store?: StoreSpec;
}

/** Where the store is opened. */
export interface StoreContext {
  /** The guest whose disk this is (written in trace lines). */
  readonly domid: number;
  /** RawFileStore's completion mode (default true: synchronous); other stores ignore it. */
  readonly sync?: boolean;
}

/**
 * Opens `disk`'s store with its wrappers; see the module comment. The caller owns
 * the result and closes it.
 * @throws {StorageError} when a file cannot be opened, the spec is incomplete
 *   (`EINVAL`: cow without `base`, module without `module`), a wrapper's option is
 *   out of range (`EINVAL`), or a user's module cannot be imported, has no function
 *   as its default export, throws, or returns something that is not a
 *   StorageBackend (or a writable one for a read-only disk). Nothing stays open
 *   when it throws.
 */
export async function openStore(disk: StoreDisk, ctx: StoreContext): Promise<StorageBackend> {
  const spec: StoreSpec = disk.store ?? { type: 'raw' };
  let store = await openInner(disk, spec, ctx);
  try {
    if (spec.errorRate !== undefined && spec.errorRate !== 0) store = new ErrorStore(store, spec.errorRate, spec.errorSeed);
    if (spec.latencyUs !== undefined && spec.latencyUs !== 0) store = new LatencyStore(store, spec.latencyUs);
    if (spec.trace !== undefined) store = new TraceStore(store, spec.trace, ctx.domid);
  } catch (err) {
    await store.close().catch(() => {});
    throw err;
  }
  return store;
}

/** A StorageError for a spec that cannot be opened as given. */
function invalid(path: string, message: string): StorageError {
  return new StorageError(path, 'EINVAL', `cannot open ${path}: EINVAL (${message})`);
}

/** The store named by `spec.type`, without wrappers. */
async function openInner(disk: StoreDisk, spec: StoreSpec, ctx: StoreContext): Promise<StorageBackend> {
  switch (spec.type) {
    case 'raw':
      if (spec.direct) return DirectFileStore.open(disk.path, { readOnly: disk.readOnly, sync: ctx.sync });
      return RawFileStore.open(disk.path, { readOnly: disk.readOnly, sync: ctx.sync });
    case 'cow':
      if (spec.base === undefined) throw invalid(disk.path, 'store=cow needs base=PATH');
      return CowStore.open({ base: spec.base, overlay: disk.path, readOnly: disk.readOnly });
    case 'module':
      if (spec.module === undefined) throw invalid(disk.path, 'store=module needs module=PATH');
      return openModuleStore(spec.module, disk);
    default:
      throw invalid(disk.path, `unknown store type ${JSON.stringify(spec.type)}`);
  }
}

/** Imports `module`, calls its default export ({@link StoreModule}) and checks what it returns. */
async function openModuleStore(module: string, disk: StoreDisk): Promise<StorageBackend> {
  let factory: unknown;
  try {
    factory = ((await import(pathToFileURL(module).href)) as { default?: unknown }).default;
  } catch (err) {
    throw StorageError.fromSystemError('load store module', module, err);
  }
  const what = `store module ${module}`;
  if (typeof factory !== 'function') throw invalid(module, `the default export of ${what} is not a function`);
  let store: unknown;
  try {
    store = await (factory as StoreModule)({ path: disk.path, readOnly: disk.readOnly });
  } catch (err) {
    if (err instanceof StorageError) throw err;
    throw new StorageError(module, undefined, `cannot open ${disk.path} with ${what}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  if (!isStorageBackend(store)) throw invalid(module, `${what} did not return a StorageBackend`);
  if (disk.readOnly && !store.readOnly) {
    await store.close().catch(() => {});
    throw invalid(module, `${what} returned a writable store for the read-only disk ${disk.path}`);
  }
  return store;
}

/** True when `x` has every member of {@link StorageBackend} with the right type. */
function isStorageBackend(x: unknown): x is StorageBackend {
  const s = x as Record<keyof StorageBackend, unknown> | null;
  return typeof s === 'object' && s !== null
    && typeof s.submit === 'function' && typeof s.setCompletionHandler === 'function'
    && typeof s.close === 'function' && typeof s.resize === 'function'
    && typeof s.sizeBytes === 'number' && typeof s.discardGranularity === 'number'
    && typeof s.readOnly === 'boolean' && typeof s.canFlush === 'boolean'
    && typeof s.canDiscard === 'boolean' && typeof s.discardZeroes === 'boolean'
    && typeof s.counters === 'object' && s.counters !== null;
}
