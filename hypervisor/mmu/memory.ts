/**
 * Machine memory for the CPU/MMU model: 4 KiB frames by MFN, each with one owner, a
 * P2M per domain and the machine-wide M2P ({@link PhysMap}), and grants of single
 * frames from one domain to another. The hypervisor side reads and writes any frame;
 * a vCPU (the model's hardware) reaches a frame only through a translation.
 *
 * Frames are SharedArrayBuffers, as pvio's frames are (DESIGN.md, decision 1), so a
 * model hosted in the hypervisor thread can share them with vCPUs in domain workers.
 * A frame given back is forgotten, never reused for another owner.
 */
import { DOMID_XEN } from '../abi.ts';
import { PhysMap } from './pagetable.ts';

/** A frame's views: 1024 u32 words (page-table entries as halves) and 4096 bytes. */
export interface ModelFrame {
  readonly words: Uint32Array;
  readonly bytes: Uint8Array;
}

/**
 * What the model's hypervisor needs of machine memory: frames by MFN, who owns them,
 * who may map them, the P2M/M2P, and frames of its own for shadow tables.
 * {@link ModelMemory} is one (in one thread); the hypervisor thread's frame table is
 * another (hypervisor/mmu/host.ts).
 */
export interface MmuMemory {
  /** P2M per domain and the machine-wide M2P. */
  readonly phys: PhysMap;
  /** The 1024 u32 words of `mfn`. @throws RangeError for a frame that does not exist. */
  words(mfn: number): Uint32Array;
  /** The 4096 bytes of `mfn`. @throws RangeError for a frame that does not exist. */
  bytes(mfn: number): Uint8Array;
  /** Whether `mfn` exists (allocated, not freed). */
  exists(mfn: number): boolean;
  /** Whether `domid` owns `mfn`. */
  owns(domid: number, mfn: number): boolean;
  /** Whether `domid` may map `mfn` (it owns it, or it was granted, writable or not). */
  mayMap(domid: number, mfn: number, writable: boolean): boolean;
  /** A new zeroed frame owned by the hypervisor (`DOMID_XEN`) for a shadow table of `domid`, which its vCPUs walk. @returns its MFN. */
  allocShadow(domid: number): number;
}

/** The machine's frames, owners, P2M/M2P and grants, in one thread. */
export class ModelMemory implements MmuMemory {
  readonly phys = new PhysMap();
  private readonly frames = new Map<number, ModelFrame>();
  private readonly owners = new Map<number, number>();
  private readonly nextPfn = new Map<number, number>();
  /** `grantee:mfn` → writable. */
  private readonly grants = new Map<string, boolean>();
  private nextMfn: number;

  /** @param firstMfn the first machine frame number handed out (MFNs count up from it). */
  constructor(firstMfn = 0x1000) {
    this.nextMfn = firstMfn;
  }

  /**
   * Allocates `n` frames to `domid`, at its next free pseudo-physical frames (P2M
   * and M2P updated). @returns their MFNs, in pfn order.
   */
  alloc(domid: number, n: number): number[] {
    const out: number[] = [];
    let pfn = this.nextPfn.get(domid) ?? 0;
    for (let i = 0; i < n; i++) {
      const mfn = this.allocFrame(domid);
      this.phys.set(domid, pfn++, mfn);
      out.push(mfn);
    }
    this.nextPfn.set(domid, pfn);
    return out;
  }

  /** Allocates one frame owned by `owner` with no pseudo-physical frame (the hypervisor's own, e.g. a shadow table). */
  allocFrame(owner: number): number {
    const mfn = this.nextMfn++;
    const buf = new SharedArrayBuffer(4096);
    this.frames.set(mfn, { words: new Uint32Array(buf), bytes: new Uint8Array(buf) });
    this.owners.set(mfn, owner);
    return mfn;
  }

  /** @see MmuMemory.allocShadow */
  allocShadow(_domid: number): number {
    return this.allocFrame(DOMID_XEN);
  }

  /** Gives frame `mfn` back: its buffer is dropped and its number never reused. */
  free(mfn: number): void {
    const m2p = this.phys.pfnOf(mfn);
    if (m2p) this.phys.clear(m2p.domid, m2p.pfn);
    this.frames.delete(mfn);
    this.owners.delete(mfn);
  }

  /** The u32 words of frame `mfn`. @throws RangeError for a frame that does not exist. */
  words(mfn: number): Uint32Array {
    const f = this.frames.get(mfn);
    if (!f) throw new RangeError(`no frame ${mfn}`);
    return f.words;
  }

  /** The bytes of frame `mfn`. @throws RangeError for a frame that does not exist. */
  bytes(mfn: number): Uint8Array {
    const f = this.frames.get(mfn);
    if (!f) throw new RangeError(`no frame ${mfn}`);
    return f.bytes;
  }

  /** Whether frame `mfn` exists. */
  exists(mfn: number): boolean {
    return this.frames.has(mfn);
  }

  /** The owner of `mfn`, or undefined. */
  owner(mfn: number): number | undefined {
    return this.owners.get(mfn);
  }

  /** Records that `owner` granted `grantee` access to its frame `mfn` (`readonly` or not). @throws Error when `owner` does not own it. */
  grant(owner: number, grantee: number, mfn: number, readonly: boolean): void {
    if (this.owners.get(mfn) !== owner) throw new Error(`dom${owner} does not own mfn ${mfn}`);
    this.grants.set(`${grantee}:${mfn}`, !readonly);
  }

  /** Whether `domid` may map `mfn` (`writable` or read-only): it owns it, or was granted it so. */
  mayMap(domid: number, mfn: number, writable: boolean): boolean {
    if (this.owners.get(mfn) === domid) return true;
    const g = this.grants.get(`${domid}:${mfn}`);
    return g !== undefined && (g || !writable);
  }

  /** Whether `domid` owns `mfn`. */
  owns(domid: number, mfn: number): boolean {
    return this.owners.get(mfn) === domid;
  }
}
