/**
 * What a domain's vCPU worker receives when it starts: Xen's `start_info` in spirit
 * (domid, the XenStore and console pages and their event channels), plus pvio's
 * execution-model handles (the hypercall page, wake pages, the hypervisor's wake-up
 * word, the spin tokens, the handle port). Every buffer in it is logged in the
 * frame table's handle log as given to this domain.
 *
 * @see xen.h `struct start_info`
 */
import type { MessagePort } from 'node:worker_threads';
import type { ExtentHandle } from './frames.ts';

/** A page given at boot, with the MFN of page 0 and the extent buffer. */
export type BootPage = ExtentHandle;

/** The start-of-day information for one vCPU worker of a domain. */
export interface BootInfo {
  readonly domid: number;
  readonly name: string;
  /** This worker's vCPU index (0-based). */
  readonly vcpuId: number;
  readonly nrVcpus: number;
  /** Whether this is dom0 (privileged: runs xenstored, the console daemon, backends). */
  readonly privileged: boolean;
  /** The hypervisor's single wake-up word (Int32 at index 0). */
  readonly hvWake: SharedArrayBuffer;
  /** Process-wide spin tokens (see hypervisor/spin.ts). */
  readonly spinTokens: SharedArrayBuffer;
  /** This vCPU's hypercall page (shared with the hypervisor only). */
  readonly hypercallPage: BootPage;
  /** Wake pages of this domain's vCPUs, by vCPU index. */
  readonly wakePages: BootPage[];
  /** The domain's private shared_info frame. */
  readonly sharedInfo: BootPage;
  /** The grant table: one extent of `nrGrantFrames` pages of grant_entry_v1. */
  readonly grantTable: BootPage;
  readonly nrGrantEntries: number;
  /** XenStore ring page and its (unbound, remote dom0) port; null for dom0 (local xenstored). */
  readonly store: { readonly page: BootPage; readonly port: number } | null;
  /** Console ring page and its port; null for dom0 (writes straight to stdout). */
  readonly console: { readonly page: BootPage; readonly port: number } | null;
  /** Memory quota in pages. */
  readonly maxPages: number;
  /** Port on which the hypervisor posts frame handles (read with receiveMessageOnPort). */
  readonly handlePort: MessagePort;
  /**
   * Channels to the domain's other vCPU workers, by vCPU index (null at this vCPU's
   * own index): pvio's inter-processor messages, since each vCPU is its own heap.
   */
  readonly siblingPorts: ReadonlyArray<MessagePort | null>;
  /** Toolstack control channel (dom0: commands; domU: results); null if none. */
  readonly controlPort: MessagePort | null;
  /**
   * The guest program: a module URL and its arguments; `probe` false when the program
   * does its frontends' handshakes itself (the kernel connects none).
   */
  readonly guest: { readonly module: string; readonly args: unknown; readonly extra?: string; readonly probe?: boolean };
}
