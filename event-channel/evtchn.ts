/**
 * Event channels, guest side (DESIGN.md, decision 3).
 *
 * Setup (`alloc_unbound`, `bind_interdomain`, `bind_virq`, `close`, `status`) is a
 * hypercall. A VIRQ port has no peer: the hypervisor sets it pending in this domain's
 * shared_info itself (as it does a port on bind) and wakes the vCPU it is bound to.
 * `send` is not: for each bound port the hypervisor handed this domain the event
 * *pair page* it shares with the remote domain (receiver = remote, sender = us) and
 * the remote vCPU's *wake page*. {@link EventChannels.notify} sets the remote port's
 * bit and its selector bit in the pair page, then bumps and notifies the wake word.
 *
 * Receiving: the kernel's idle loop wakes on its vCPU's wake word and calls
 * {@link EventChannels.fold}, which swaps each pair page's selector and pending words
 * with 0 and folds the bits into this domain's private `shared_info` (pending bit,
 * then — if unmasked — the vCPU's selector bit and `evtchn_upcall_pending`), exactly
 * as Xen's `evtchn_set_pending` would. Bits for ports not bound to that sender are
 * a peer's garbage: counted as spurious and dropped. {@link EventChannels.dispatch}
 * is Linux's `xen_evtchn_do_upcall`: clear `upcall_pending`, swap the selector with
 * 0, scan `pending & ~mask`, clear each pending bit before calling its handler.
 * Masking is local; unmask re-checks pending and re-raises (Xen's `evtchn_unmask`).
 *
 * vCPUs: a port notifies the vCPU it is bound to (vCPU 0 until `EVTCHNOP_bind_vcpu`
 * moves it): the peer's sends wake that vCPU's wake word, the fold raises the event
 * in that vCPU's `vcpu_info`, and only that vCPU dispatches it (Linux's per-CPU
 * event mask). The hypervisor tells every vCPU worker of a domain about each binding.
 *
 * @see xen/include/public/event_channel.h, xen/common/event_2l.c
 */
import { InvariantError } from '../rings/errors.ts';
import {
  DOMID_SELF, EVTCHNOP, EVTCHN_ALLOC_UNBOUND, EVTCHN_BIND_INTERDOMAIN, EVTCHN_BIND_VCPU, EVTCHN_BIND_VIRQ, EVTCHN_PAIR_PAGE, EVTCHN_PORT_ARG,
  EVTCHN_STATUS, EVTCHN_STATUS_VIRQ, EVTCHNSTAT, HYPERVISOR, NR_EVENT_CHANNELS, SHARED_INFO, VCPU_INFO, WAKE_PAGE, XEN_ERRNO,
  type DomId, type EvtchnPort,
} from '../hypervisor/abi.ts';
import type { BindingInfo, PortInfo } from '../hypervisor/hypervisor.ts';
import { HypercallPort } from '../hypervisor/hypercall.ts';
import { PvioError } from '../rings/errors.ts';
import { SpinTokens } from '../hypervisor/spin.ts';
import { raiseUpcall, setPortPending } from '../hypervisor/shared-info.ts';

/**
 * How a synchronous waiter waits (see {@link EventChannels.waitSync}):
 * - `poll`: spins on its wake word as long as it holds a spin token (blocks only
 *   when no token is free), never sleeps while it has one;
 * - `block`: sleeps in `Atomics.wait` at once;
 * - `adaptive`: spins up to `spinIterations` with a token, then sleeps.
 */
export type WaitMode = 'poll' | 'block' | 'adaptive';

const PAIR_PENDING_I32 = EVTCHN_PAIR_PAGE.fields.pending.offset >> 2;
const PAIR_SEL_I32 = EVTCHN_PAIR_PAGE.fields.sel.offset >> 2;
const PAIR_SEL_WORDS = EVTCHN_PAIR_PAGE.fields.sel.size >> 2;
const SI_PENDING_I32 = SHARED_INFO.fields.evtchn_pending.offset >> 2;
const SI_MASK_I32 = SHARED_INFO.fields.evtchn_mask.offset >> 2;
const VI_WORDS = VCPU_INFO.size >> 2;
const VI_SEL_I32 = VCPU_INFO.fields.evtchn_pending_sel.offset >> 2;
const I_WAKE = WAKE_PAGE.fields.wake.offset >> 2;
/** Byte 0 of vcpu_info word 0 is evtchn_upcall_pending; byte 1 is evtchn_upcall_mask. */
const UPCALL_PENDING_BITS = 0xff;
const UPCALL_MASK_BITS = 0xff00;

/** An event-channel hypercall failed; `errno` is Xen's (`EINVAL`, `ESRCH`, ...). */
export class EvtchnError extends PvioError {
  constructor(readonly op: string, readonly errno: number) {
    super('PVIO_ERR_EVTCHN', `${op} failed: ${errnoName(errno)}`);
  }
}
function errnoName(n: number): string {
  return Object.entries(XEN_ERRNO).find(([, v]) => v === n)?.[0] ?? `errno ${n}`;
}

/** A handler called once per delivered event on its port (Linux's irq handler). */
export type EvtchnHandler = (port: EvtchnPort) => void;

interface Binding {
  /** The vCPU of this domain the port notifies. */
  vcpu: number;
  remoteDom: DomId;
  remotePort: number;
  send: Int32Array;
  remoteWake: Int32Array;
}

/** Status of a port, as `EVTCHNOP_status` answers it. */
export interface EvtchnStatus {
  /** One of `EVTCHNSTAT` (closed 0, unbound 1, interdomain 2, virq 4). */
  readonly status: number;
  readonly vcpu: number;
  readonly remoteDom: number;
  readonly remotePort: number;
  /** The VIRQ, for a port with status `EVTCHNSTAT_virq` (`u.virq`). */
  readonly virq?: number;
}

/** One domain's event channels, as seen from one of its vCPU workers. */
export class EventChannels {
  private readonly si: Int32Array;
  private readonly bindings = new Map<number, Binding>();
  private readonly recvPages = new Map<number, Int32Array>();
  private readonly handlers = new Map<number, EvtchnHandler>();
  private readonly myVi: number;
  /**
   * Ports this vCPU dispatches (Linux's per-CPU `cpu_evtchn_mask`): those bound to
   * it; ports with no binding belong to vCPU 0.
   */
  private readonly mine = new Int32Array(NR_EVENT_CHANNELS >> 5);
  /**
   * Counters: sends that notified, sends suppressed (bit already pending), sends on
   * unbound ports, upcalls, events dispatched, spurious bits; and for
   * {@link waitSync}: sleeps (`Atomics.wait` calls that slept), wake-ups (sleeps
   * ended by a notification rather than the timeout) and spins that caught the event.
   */
  readonly counters = { sent: 0, suppressed: 0, dropped: 0, upcalls: 0, dispatched: 0, spurious: 0, sleeps: 0, wakeups: 0, spinHits: 0 };

  constructor(
    private readonly hc: HypercallPort,
    sharedInfo: SharedArrayBuffer,
    private readonly vcpuId: number,
    private readonly ownWake: Int32Array[],
    private readonly spin: SpinTokens | null = null,
  ) {
    this.si = new Int32Array(sharedInfo, 0, SHARED_INFO.size >> 2);
    this.myVi = vcpuId * VI_WORDS;
    if (vcpuId === 0) this.mine.fill(-1);
  }

  /** This worker's vCPU index. */
  get vcpu(): number {
    return this.vcpuId;
  }

  // ---- setup (hypercalls) --------------------------------------------------

  /**
   * Allocates a port in this domain that `remoteDom` may bind to.
   * @throws EvtchnError (ENOSPC when the table is full).
   * @see event_channel.h EVTCHNOP_alloc_unbound
   */
  allocUnbound(remoteDom: number): EvtchnPort {
    const F = EVTCHN_ALLOC_UNBOUND.fields;
    const p = this.hc.page;
    const o = HypercallPort.argOffset(0, EVTCHN_ALLOC_UNBOUND.size);
    p.setUint16(o + F.dom.offset, DOMID_SELF, true);
    p.setUint16(o + F.remote_dom.offset, remoteDom, true);
    const { result } = this.hc.call(HYPERVISOR.event_channel_op, EVTCHNOP.alloc_unbound, 1);
    if (result < 0) throw new EvtchnError('EVTCHNOP_alloc_unbound', -result);
    return p.getUint32(o + F.port.offset, true) as EvtchnPort;
  }

  /**
   * Binds a new local port to `remotePort` of `remoteDom` (which must be unbound and
   * allocated for us). The local port is set pending on return, as in Xen.
   * @throws EvtchnError (EINVAL for a port not offered to us, ESRCH for no such domain).
   * @see event_channel.h EVTCHNOP_bind_interdomain
   */
  bindInterdomain(remoteDom: number, remotePort: number): EvtchnPort {
    const F = EVTCHN_BIND_INTERDOMAIN.fields;
    const p = this.hc.page;
    const o = HypercallPort.argOffset(0, EVTCHN_BIND_INTERDOMAIN.size);
    p.setUint16(o + F.remote_dom.offset, remoteDom, true);
    p.setUint32(o + F.remote_port.offset, remotePort, true);
    const { result, info } = this.hc.call(HYPERVISOR.event_channel_op, EVTCHNOP.bind_interdomain, 1);
    if (result < 0) throw new EvtchnError('EVTCHNOP_bind_interdomain', -result);
    for (const i of info) this.applyInfo(i);
    return p.getUint32(o + F.local_port.offset, true) as EvtchnPort;
  }

  /**
   * Binds a new local port to VIRQ `virq` on vCPU `vcpu` of this domain: the
   * hypervisor raises it there (pvio raises `VIRQ_TIMER` only, on a `set_timer_op`
   * alarm). That vCPU's worker dispatches it; the binding cannot move (`bind_vcpu`
   * answers EINVAL), and sends on it are dropped.
   * @throws EvtchnError (EINVAL for a VIRQ pvio does not raise, ENOENT for no such
   *   vCPU, EEXIST when the VIRQ is already bound on that vCPU).
   * @see event_channel.h EVTCHNOP_bind_virq
   */
  bindVirq(virq: number, vcpu: number = this.vcpuId): EvtchnPort {
    const F = EVTCHN_BIND_VIRQ.fields;
    const p = this.hc.page;
    const o = HypercallPort.argOffset(0, EVTCHN_BIND_VIRQ.size);
    p.setUint32(o + F.virq.offset, virq, true);
    p.setUint32(o + F.vcpu.offset, vcpu, true);
    const { result, info } = this.hc.call(HYPERVISOR.event_channel_op, EVTCHNOP.bind_virq, 1);
    for (const i of info) this.applyInfo(i);
    if (result < 0) throw new EvtchnError('EVTCHNOP_bind_virq', -result);
    return p.getUint32(o + F.port.offset, true) as EvtchnPort;
  }

  /**
   * Closes a local port; an interdomain peer's end returns to unbound.
   * @throws EvtchnError (EINVAL for a port that is not open).
   * @see event_channel.h EVTCHNOP_close
   */
  close(port: EvtchnPort): void {
    this.handlers.delete(port);
    const o = HypercallPort.argOffset(0, EVTCHN_PORT_ARG.size);
    this.hc.page.setUint32(o + EVTCHN_PORT_ARG.fields.port.offset, port, true);
    const { result, info } = this.hc.call(HYPERVISOR.event_channel_op, EVTCHNOP.close, 1);
    for (const i of info) this.applyInfo(i);
    if (result < 0) throw new EvtchnError('EVTCHNOP_close', -result);
  }

  /**
   * Asks the hypervisor for a port's state.
   * @throws EvtchnError (EINVAL for a port number out of range).
   * @see event_channel.h EVTCHNOP_status
   */
  status(port: number, dom: number = DOMID_SELF): EvtchnStatus {
    const F = EVTCHN_STATUS.fields;
    const p = this.hc.page;
    const o = HypercallPort.argOffset(0, EVTCHN_STATUS.size);
    p.setUint16(o + F.dom.offset, dom, true);
    p.setUint32(o + F.port.offset, port, true);
    const { result } = this.hc.call(HYPERVISOR.event_channel_op, EVTCHNOP.status, 1);
    if (result < 0) throw new EvtchnError('EVTCHNOP_status', -result);
    const status = p.getUint32(o + F.status.offset, true);
    if (status === EVTCHNSTAT.virq) {
      // The union holds `u.virq` instead of the interdomain peer.
      return { status, vcpu: p.getUint32(o + F.vcpu.offset, true), remoteDom: 0, remotePort: 0, virq: p.getUint32(o + EVTCHN_STATUS_VIRQ.fields.virq.offset, true) };
    }
    return {
      status,
      vcpu: p.getUint32(o + F.vcpu.offset, true),
      remoteDom: p.getUint16(o + F.remote_dom.offset, true),
      remotePort: p.getUint32(o + F.remote_port.offset, true),
    };
  }

  /**
   * Binds `port` to vCPU `vcpu` of this domain: its events are then raised on that
   * vCPU's `vcpu_info` and its peer's sends wake that vCPU's worker, which must have
   * the port's handler. An event already pending moves with the port.
   * @throws EvtchnError (ENOENT for no such vCPU, EINVAL for a closed port).
   * @see event_channel.h EVTCHNOP_bind_vcpu
   */
  bindVcpu(port: EvtchnPort, vcpu: number): void {
    const F = EVTCHN_BIND_VCPU.fields;
    const p = this.hc.page;
    const o = HypercallPort.argOffset(0, EVTCHN_BIND_VCPU.size);
    p.setUint32(o + F.port.offset, port, true);
    p.setUint32(o + F.vcpu.offset, vcpu, true);
    const { result, info } = this.hc.call(HYPERVISOR.event_channel_op, EVTCHNOP.bind_vcpu, 1);
    for (const i of info) this.applyInfo(i);
    if (result < 0) throw new EvtchnError('EVTCHNOP_bind_vcpu', -result);
  }

  /** The vCPU `port` notifies, as far as this vCPU has been told (0 when unbound). */
  vcpuOf(port: number): number {
    return this.bindings.get(port)?.vcpu ?? 0;
  }

  private setMine(port: number, vcpu: number): void {
    const bit = 1 << (port & 31);
    if (vcpu === this.vcpuId) this.mine[port >> 5] |= bit;
    else this.mine[port >> 5] &= ~bit;
  }

  /** Applies binding info the hypervisor sent (in an answer or a push). */
  applyInfo(i: BindingInfo | PortInfo): void {
    if (i.kind === 'bound') {
      const send = new Int32Array(this.hc.frames.page(i.sendPage).buffer, this.hc.frames.page(i.sendPage).byteOffset, EVTCHN_PAIR_PAGE.size >> 2);
      const wake = this.hc.frames.page(i.remoteWake);
      this.bindings.set(i.port, {
        vcpu: i.vcpu, remoteDom: i.remoteDom as DomId, remotePort: i.remotePort, send,
        remoteWake: new Int32Array(wake.buffer, wake.byteOffset, 1),
      });
      this.setMine(i.port, i.vcpu);
      if (!this.recvPages.has(i.remoteDom)) {
        const r = this.hc.frames.page(i.recvPage);
        this.recvPages.set(i.remoteDom, new Int32Array(r.buffer, r.byteOffset, EVTCHN_PAIR_PAGE.size >> 2));
      }
    } else if (i.kind === 'virq') {
      // Raised by the hypervisor straight into shared_info: no pair page, no peer.
      this.bindings.delete(i.port);
      this.setMine(i.port, i.vcpu ?? 0);
    } else {
      this.bindings.delete(i.port);
      this.setMine(i.port, 0);
      if (i.kind === 'closed') this.handlers.delete(i.port);
    }
  }

  /** Whether `port` is bound to a peer (sends reach someone). */
  isBound(port: number): boolean {
    return this.bindings.has(port);
  }

  // ---- the fast path ---------------------------------------------------------

  /**
   * Sends an event on a local interdomain port: sets the remote port's bit in the
   * pair page and wakes the remote vCPU. If the bit was already set, the earlier
   * sender's wake-up is still due and this one is suppressed (counted). A send on an
   * unbound port is dropped silently, as in Xen.
   * @see event_channel.h EVTCHNOP_send
   */
  notify(port: EvtchnPort): void {
    let b = this.bindings.get(port);
    if (!b) {
      this.hc.drainPushes(); // the peer may have bound it a moment ago
      b = this.bindings.get(port);
      if (!b) {
        this.counters.dropped++;
        return;
      }
    }
    const rp = b.remotePort;
    const bit = 1 << (rp & 31);
    // The pending bit must be visible before the selector bit and the wake bump.
    const old = Atomics.or(b.send, PAIR_PENDING_I32 + (rp >> 5), bit);
    if (old & bit) {
      this.counters.suppressed++;
      return;
    }
    Atomics.or(b.send, PAIR_SEL_I32 + (rp >> 10), 1 << ((rp >> 5) & 31));
    Atomics.add(b.remoteWake, I_WAKE, 1);
    Atomics.notify(b.remoteWake, I_WAKE, 1);
    this.counters.sent++;
  }

  /** Registers the handler for `port` (replacing any earlier one). */
  on(port: EvtchnPort, handler: EvtchnHandler): void {
    this.handlers.set(port, handler);
  }

  /** Removes the handler of `port`. */
  off(port: EvtchnPort): void {
    this.handlers.delete(port);
  }

  /** Masks `port`: it may become pending but is not dispatched until unmasked. */
  mask(port: EvtchnPort): void {
    Atomics.or(this.si, SI_MASK_I32 + (port >> 5), 1 << (port & 31));
  }

  /**
   * Unmasks `port` and, if it is pending, raises the upcall again (edges that came
   * while masked are not lost). @see xen/common/event_2l.c evtchn_2l_unmask
   */
  unmask(port: EvtchnPort): void {
    const bit = 1 << (port & 31);
    Atomics.and(this.si, SI_MASK_I32 + (port >> 5), ~bit);
    if (Atomics.load(this.si, SI_PENDING_I32 + (port >> 5)) & bit) {
      const vcpu = this.vcpuOf(port);
      raiseUpcall(this.si, port, vcpu);
      this.kick(vcpu);
    }
  }

  /** Virtual cli/sti: `evtchn_upcall_mask` of this vCPU. */
  setUpcallMask(masked: boolean): void {
    if (masked) Atomics.or(this.si, this.myVi, UPCALL_MASK_BITS);
    else Atomics.and(this.si, this.myVi, ~UPCALL_MASK_BITS);
  }

  // ---- receiving -------------------------------------------------------------

  /**
   * Folds every pair page into shared_info. Only bits of ports bound to that
   * sender count; the rest is a peer's garbage (counted as spurious). Any vCPU may
   * fold (the swaps are atomic): each event raises the upcall of the vCPU its port
   * is bound to, and wakes that vCPU when it is another one.
   * @returns how many events were folded.
   */
  fold(): number {
    let n = 0;
    for (const [sender, page] of this.recvPages) {
      for (let s = 0; s < PAIR_SEL_WORDS; s++) {
        if (Atomics.load(page, PAIR_SEL_I32 + s) === 0) continue;
        let sel = Atomics.exchange(page, PAIR_SEL_I32 + s, 0);
        while (sel !== 0) {
          const b = 31 - Math.clz32(sel);
          sel &= ~(1 << b);
          const w = s * 32 + b;
          let bits = Atomics.exchange(page, PAIR_PENDING_I32 + w, 0);
          while (bits !== 0) {
            const bb = 31 - Math.clz32(bits);
            bits &= ~(1 << bb);
            const port = w * 32 + bb;
            const b = this.bindings.get(port);
            if (b?.remoteDom !== sender) {
              this.counters.spurious++;
              continue;
            }
            if (setPortPending(this.si, port, b.vcpu)) this.kick(b.vcpu);
            n++;
          }
        }
      }
    }
    return n;
  }

  /** Wakes vCPU `vcpu` of this domain if it is not the caller. */
  private kick(vcpu: number): void {
    if (vcpu === this.vcpuId) return;
    const w = this.ownWake[vcpu];
    if (!w) throw new InvariantError(`no wake page for vcpu ${vcpu}`);
    Atomics.add(w, I_WAKE, 1);
    Atomics.notify(w, I_WAKE, 1);
  }

  /**
   * The upcall: dispatches every pending, unmasked port of this vCPU to its handler,
   * clearing each pending bit before its handler runs. Does nothing while the
   * vCPU's upcall mask is set.
   * @returns how many events were dispatched.
   */
  dispatch(): number {
    const w0 = Atomics.load(this.si, this.myVi);
    if ((w0 & UPCALL_PENDING_BITS) === 0 || (w0 & UPCALL_MASK_BITS) !== 0) return 0;
    this.counters.upcalls++;
    let n = 0;
    // Clear upcall_pending first, so an event raised while we scan raises it again.
    Atomics.and(this.si, this.myVi, ~UPCALL_PENDING_BITS);
    for (let half = 0; half < 2; half++) {
      let sel = Atomics.exchange(this.si, this.myVi + VI_SEL_I32 + half, 0);
      while (sel !== 0) {
        const b = 31 - Math.clz32(sel);
        sel &= ~(1 << b);
        const l1 = half * 32 + b; // one selector bit covers 64 ports = two u32 words
        for (let k = 0; k < 2; k++) {
          const w = l1 * 2 + k;
          let bits = Atomics.load(this.si, SI_PENDING_I32 + w) & ~Atomics.load(this.si, SI_MASK_I32 + w) & this.mine[w];
          while (bits !== 0) {
            const bb = 31 - Math.clz32(bits);
            bits &= ~(1 << bb);
            Atomics.and(this.si, SI_PENDING_I32 + w, ~(1 << bb));
            const port = (w * 32 + bb) as EvtchnPort;
            n++;
            const h = this.handlers.get(port);
            if (h) h(port);
          }
        }
      }
    }
    this.counters.dispatched += n;
    return n;
  }

  /**
   * Waits synchronously for an event on `port` — for a driver that polls its ring in
   * a loop of its own (blocking this vCPU's event loop meanwhile, like Linux's
   * blk-mq polling), instead of taking the event as an upcall. Folds the pair pages
   * and consumes the port's pending bit without calling its handler.
   *
   * Spinning follows DESIGN.md decision 4: only while a spin token is held.
   * @param timeoutMs deadline; the wait returns false when it passes.
   * @returns true when an event arrived on `port`.
   */
  waitSync(port: EvtchnPort, mode: WaitMode, timeoutMs: number, spinIterations = 2000): boolean {
    const wake = this.ownWake[this.vcpuId];
    const w = SI_PENDING_I32 + (port >> 5);
    const bit = 1 << (port & 31);
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const seen = Atomics.load(wake, I_WAKE);
      this.fold();
      if (Atomics.load(this.si, w) & bit) {
        Atomics.and(this.si, w, ~bit);
        return true;
      }
      const left = deadline - performance.now();
      if (left <= 0) return false;
      if (mode !== 'block' && this.spin) {
        const n = mode === 'poll' ? 1 << 20 : spinIterations;
        if (this.spin.spinWhileEqual(wake, I_WAKE, seen, n)) {
          this.counters.spinHits++;
          continue;
        }
        if (mode === 'poll' && this.spin.available() > 0) continue; // spun out, still no event: poll on
      }
      const r = Atomics.wait(wake, I_WAKE, seen, Math.min(left, 100));
      if (r !== 'not-equal') this.counters.sleeps++;
      if (r === 'ok') this.counters.wakeups++;
    }
  }

  /** Whether the upcall of this vCPU is pending (work for {@link dispatch}). */
  upcallPending(): boolean {
    return (Atomics.load(this.si, this.myVi) & UPCALL_PENDING_BITS) !== 0;
  }

  /**
   * The pair page this domain writes into when it sends on `port` (receiver = the
   * peer). Exposed for adversarial tests, which write garbage here as a hostile
   * peer could; drivers never need it.
   */
  sendPageOf(port: EvtchnPort): Int32Array | undefined {
    return this.bindings.get(port)?.send;
  }

  /** The wake word of the peer vCPU `port` notifies (for adversarial tests). */
  remoteWakeOf(port: EvtchnPort): Int32Array | undefined {
    return this.bindings.get(port)?.remoteWake;
  }

  /** Ports with a binding to a peer, for teardown. */
  boundPorts(): number[] {
    return [...this.bindings.keys()];
  }

  /** `EVTCHNSTAT` values re-exported for callers. */
  static readonly STAT = EVTCHNSTAT;
  /** Largest port number + 1. */
  static readonly NR_PORTS = NR_EVENT_CHANNELS;
}
