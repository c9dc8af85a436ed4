/**
 * The guest side of a synchronous hypercall (DESIGN.md, decision 2).
 *
 * A call: write Xen's argument structs into this vCPU's hypercall page at `args`,
 * fill the header (op, cmd, count, start, seq), store `state = PENDING`, bump the
 * hypervisor's single wake-up word and notify it, then wait for `state = DONE`:
 * spin first if a spin token is free (the hypervisor usually answers in a few µs
 * when it is awake), else block in `Atomics.wait` with a deadline. Frame handles
 * the answer carries were posted on this vCPU's handle port *before* the DONE
 * store, so `receiveMessageOnPort` finds them at once. A batch the hypervisor
 * preempted (`preempted = 1`) is re-issued from `progress`, as Xen's continuations.
 *
 * The hypervisor may also post unsolicited messages (new event-channel bindings
 * made by a peer); it bumps `pushSeq` in the page when it does, and
 * {@link HypercallPort.drainPushes} hands them to the kernel.
 */
import { receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { TimeoutError, InvariantError, invariant } from '../rings/errors.ts';
import { HC_ARGS_BYTES, HC_ARGS_OFFSET, HC_STATE, HYPERCALL_NAME, HYPERCALL_PAGE, PAGE_SIZE } from './abi.ts';
import type { ExtentHandle } from './frames.ts';
import type { HandleMessage } from './hypervisor.ts';
import { SpinTokens } from './spin.ts';

const HC = HYPERCALL_PAGE.fields;
const I_STATE = HC.state.offset >> 2;
const I_PUSHSEQ = HC.pushSeq.offset >> 2;
const I_PAUSED = HC.paused.offset >> 2;
/** How long a vCPU waits for the hypervisor before giving up (ms). */
export const HYPERCALL_DEADLINE_MS = 30_000;
const GUEST_SPIN_ITERATIONS = 4000;

/** The extent buffers this domain (this worker) holds, by MFN. */
export class FrameCache {
  private readonly extents = new Map<number, ExtentHandle>();
  /** MFN → extent base, for every page of every extent held. */
  private readonly pageToBase = new Map<number, number>();

  /** Records an extent handle posted by the hypervisor. */
  add(h: ExtentHandle): void {
    if (this.extents.has(h.mfn)) return;
    this.extents.set(h.mfn, h);
    for (let i = 0; i < 1 << h.order; i++) this.pageToBase.set(h.mfn + i, h.mfn);
  }

  /** Whether the page `mfn` is held. */
  has(mfn: number): boolean {
    return this.pageToBase.has(mfn);
  }

  /**
   * The 4096 bytes of page `mfn`, as a view of its extent buffer.
   * @throws RangeError when this domain holds no handle for `mfn`.
   */
  page(mfn: number): Uint8Array {
    const base = this.pageToBase.get(mfn);
    if (base === undefined) throw new RangeError(`no handle for frame ${mfn}`);
    const h = this.extents.get(base)!;
    return new Uint8Array(h.buffer, (mfn - base) * PAGE_SIZE, PAGE_SIZE);
  }

  /**
   * The whole extent starting at `mfn` (2^order pages), e.g. a multi-page ring.
   * @throws RangeError when `mfn` is not the base of a held extent.
   */
  extent(mfn: number): ExtentHandle {
    const h = this.extents.get(mfn);
    if (!h) throw new RangeError(`no extent at frame ${mfn}`);
    return h;
  }

  /** Forgets an extent (after it is freed or unmapped for good). */
  drop(mfn: number): void {
    const h = this.extents.get(mfn);
    if (!h) return;
    this.extents.delete(mfn);
    for (let i = 0; i < 1 << h.order; i++) this.pageToBase.delete(mfn + i);
  }
}

/** The result of one hypercall: Xen's return value and the info it carried. */
export interface HypercallResult {
  /** Xen's return value: 0 or a count on success, `-errno` on failure. */
  readonly result: number;
  /** Binding/port info the answer carried (event-channel ops). */
  readonly info: HandleMessage['info'];
}

/** A vCPU's hypercall page and handle port. One per vCPU worker. */
export class HypercallPort {
  private readonly hc: Int32Array;
  /** The page, for writing argument structs (offsets from HC_ARGS_OFFSET). */
  readonly page: DataView;
  private readonly hvWake: Int32Array;
  private readonly tokens: SpinTokens;
  private seq = 0;
  private lastPushSeq = 0;
  readonly frames = new FrameCache();
  /** Hypercalls issued, by name; waits that spun vs blocked. */
  readonly counters = { calls: {} as Record<string, number>, reissues: 0, spun: 0, blocked: 0 };

  constructor(
    hypercallPage: ExtentHandle,
    hvWake: SharedArrayBuffer,
    spinTokens: SharedArrayBuffer,
    private readonly port: MessagePort,
    private readonly onPush: (m: HandleMessage) => void,
  ) {
    this.hc = new Int32Array(hypercallPage.buffer, 0, PAGE_SIZE / 4);
    this.page = new DataView(hypercallPage.buffer, 0, PAGE_SIZE);
    this.hvWake = new Int32Array(hvWake);
    this.tokens = new SpinTokens(spinTokens);
  }

  /** Byte offset of argument entry `i` of `size` bytes, for DataView writes. */
  static argOffset(i: number, size: number): number {
    return HC_ARGS_OFFSET + i * size;
  }

  /** How many argument structs of `size` bytes fit in one call. */
  static maxBatch(size: number): number {
    return Math.floor(HC_ARGS_BYTES / size);
  }

  /** Whether the hypervisor has this domain paused. */
  isPaused(): boolean {
    return Atomics.load(this.hc, I_PAUSED) !== 0;
  }

  /**
   * Issues hypercall `op` with sub-op `cmd` over `count` argument structs already
   * written in the page, re-issuing after preemption until the batch is done.
   * @returns Xen's return value and any info the hypervisor posted.
   * @throws TimeoutError when the hypervisor does not answer within the deadline.
   */
  call(op: number, cmd: number, count: number): HypercallResult {
    const name = HYPERCALL_NAME[op] ?? String(op);
    this.counters.calls[name] = (this.counters.calls[name] ?? 0) + 1;
    let start = 0;
    const info: Array<HandleMessage['info'][number]> = [];
    for (;;) {
      const seq = (this.seq = (this.seq + 1) >>> 0);
      const p = this.page;
      p.setUint32(HC.op.offset, op, true);
      p.setUint32(HC.cmd.offset, cmd, true);
      p.setUint32(HC.count.offset, count, true);
      p.setUint32(HC.start.offset, start, true);
      p.setUint32(HC.seq.offset, seq, true);
      // The header and arguments above must be visible before PENDING is.
      Atomics.store(this.hc, I_STATE, HC_STATE.PENDING);
      Atomics.add(this.hvWake, 0, 1);
      Atomics.notify(this.hvWake, 0, 1);
      this.waitDone();
      const result = p.getInt32(HC.result.offset, true);
      const posted = p.getUint32(HC.posted.offset, true);
      const preempted = p.getUint32(HC.preempted.offset, true);
      const progress = p.getUint32(HC.progress.offset, true);
      Atomics.store(this.hc, I_STATE, HC_STATE.IDLE);
      if (posted) this.receive(seq, info);
      if (!preempted) return { result, info };
      invariant(progress > start && progress <= count, 'hypervisor preempted without progress');
      this.counters.reissues++;
      start = progress;
    }
  }

  private waitDone(): void {
    if (this.tokens.spinWhileEqual(this.hc, I_STATE, HC_STATE.PENDING, GUEST_SPIN_ITERATIONS)) {
      this.counters.spun++;
      return;
    }
    this.counters.blocked++;
    const deadline = performance.now() + HYPERCALL_DEADLINE_MS;
    while (Atomics.load(this.hc, I_STATE) === HC_STATE.PENDING) {
      const left = deadline - performance.now();
      if (left <= 0) throw new TimeoutError(`hypervisor did not answer within ${HYPERCALL_DEADLINE_MS} ms`);
      Atomics.wait(this.hc, I_STATE, HC_STATE.PENDING, left);
    }
  }

  /** Reads messages until the answer to `seq`; pushes met on the way go to the kernel. */
  private receive(seq: number, info: Array<HandleMessage['info'][number]>): void {
    for (;;) {
      const r = receiveMessageOnPort(this.port);
      if (!r) throw new InvariantError(`hypervisor posted no answer for call ${seq}`);
      const m = r.message as HandleMessage;
      for (const h of m.handles) this.frames.add(h);
      if (m.push) {
        this.onPush(m);
        continue;
      }
      info.push(...m.info);
      if (m.seq === seq) return;
    }
  }

  /**
   * Hands every unsolicited message the hypervisor posted since the last drain to
   * the kernel (cheap when there is none: one Atomics.load).
   */
  drainPushes(): void {
    const s = Atomics.load(this.hc, I_PUSHSEQ);
    if (s === this.lastPushSeq) return;
    this.lastPushSeq = s;
    for (;;) {
      const r = receiveMessageOnPort(this.port);
      if (!r) return;
      const m = r.message as HandleMessage;
      for (const h of m.handles) this.frames.add(h);
      this.onPush(m);
    }
  }
}
