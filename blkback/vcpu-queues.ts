/**
 * blkback queues served by dom0's other vCPUs. vCPU 0 runs XenStore and each
 * device's negotiation (blkback/xenbus.ts); when dom0 has several vCPUs and a disk's
 * store can be opened twice, it hands queue N to vCPU N mod nrVcpus through
 * `k.callVcpu`. That vCPU opens its own store on the same file, maps the queue's
 * ring, binds its port to itself (`EVTCHNOP_bind_vcpu`) and serves it on its own
 * thread — as Linux's blkback runs one kthread per ring. A protocol error there is
 * reported back to vCPU 0.
 *
 * Operations served to vCPU 0 (structured-clone arguments and results):
 * - `blkback.connect` {key, disk, ctx, params} → {vcpu};
 * - `blkback.disconnect` {key} → the queue's final {@link BlkbackQueueStats} (null if unknown);
 * - `blkback.stats` {keys} → a {@link BlkbackQueueStats} or null per key;
 * - `blkback.resize` {key, sizeBytes} → the store's new size in bytes;
 * - `blkback.setWeight` {domid, weight} → true: serve that guest's queues with its
 *   scheduling weight (null: forget it; rings/weighted-scheduler.ts).
 *
 * @see Linux drivers/block/xen-blkback/xenbus.c (one xen_blkif_schedule thread per ring)
 */
import type { Kernel } from '../hypervisor/kernel.ts';
import { SECTOR_SIZE } from '../rings/blkif.ts';
import { BlkbackScheduler, StoreMux } from './blkback.ts';
import { BlkbackQueue, type BlkbackQueueParams, type BlkbackQueueStats } from './queue.ts';
import { openStore, type StoreContext, type StoreDisk } from './open-store.ts';
import type { StorageBackend, StoreSpec } from './storage.ts';

/** `blkback.connect`'s argument. */
export interface RemoteQueueConnect {
  /** Names the queue in later calls (unique per connection). */
  readonly key: string;
  /** How to open the disk's store here (the same file as vCPU 0's). */
  readonly disk: StoreDisk;
  readonly ctx: StoreContext;
  readonly params: BlkbackQueueParams;
}

/**
 * Whether a store of this spec may be opened once per vCPU on the same target:
 * a raw file (buffered or O_DIRECT), with latency or error wrappers. Not a
 * copy-on-write overlay (its cluster map lives in one heap), a user's module (it may
 * keep state), or a trace (one writer per file).
 */
export function storeIsShareable(spec: StoreSpec | undefined): boolean {
  return (spec?.type ?? 'raw') === 'raw' && spec?.trace === undefined;
}

/** Registers the `blkback.*` operations on a secondary vCPU of dom0. */
export function serveBlkbackQueues(k: Kernel): void {
  const sched = new BlkbackScheduler();
  const queues = new Map<string, { q: BlkbackQueue; store: StorageBackend }>();
  k.serveVcpuCalls({
    'blkback.connect': async (a: RemoteQueueConnect) => {
      if (queues.has(a.key)) throw new Error(`queue ${a.key} is already connected`);
      const store = await openStore(a.disk, a.ctx);
      try {
        const q = BlkbackQueue.connect(k, sched, new StoreMux(store), a.params, (message) => {
          void k.callVcpu(0, 'blkback.ringError', { key: a.key, message }).catch(() => undefined);
        });
        queues.set(a.key, { q, store });
      } catch (e) {
        await store.close().catch(() => undefined);
        throw e;
      }
      return { vcpu: k.vcpuId };
    },
    'blkback.disconnect': async (a: { key: string }): Promise<BlkbackQueueStats | null> => {
      const e = queues.get(a.key);
      if (!e) return null;
      queues.delete(a.key);
      try {
        return await e.q.close();
      } finally {
        await e.store.close();
      }
    },
    'blkback.setWeight': (a: { domid: number; weight: number | null }) => {
      if (a.weight === null) sched.forgetDomain(a.domid);
      else sched.setWeight(a.domid, a.weight);
      return true;
    },
    'blkback.stats': (a: { keys: string[] }) => a.keys.map((key) => queues.get(key)?.q.stats() ?? null),
    'blkback.resize': async (a: { key: string; sizeBytes: number }) => {
      const e = queues.get(a.key);
      if (!e) throw new Error(`no queue ${a.key}`);
      // vCPU 0's store already resized the file; this one picks up the new size.
      await e.store.resize(a.sizeBytes);
      e.q.setSectors(Math.floor(e.store.sizeBytes / SECTOR_SIZE));
      return e.store.sizeBytes;
    },
  });
}
