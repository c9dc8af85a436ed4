/**
 * The 2-level event-channel ABI on a `shared_info` page (x86_64): the one place
 * that sets a port pending, used by the hypervisor (ports set pending on bind) and
 * by a guest folding its event pair pages — both do exactly what Xen's
 * `evtchn_2l_set_pending` does.
 *
 * Bit `p` of the u64 bitmaps is bit `p & 31` of u32 word `p >> 5` (little-endian),
 * so 32-bit Atomics manipulate them; one selector bit covers 64 ports.
 *
 * @see xen/common/event_2l.c, xen/include/public/xen.h (shared_info, vcpu_info)
 */
import { SHARED_INFO, VCPU_INFO } from './abi.ts';

const SI_PENDING_I32 = SHARED_INFO.fields.evtchn_pending.offset >> 2;
const SI_MASK_I32 = SHARED_INFO.fields.evtchn_mask.offset >> 2;
const VI_WORDS = VCPU_INFO.size >> 2;
const VI_SEL_I32 = VCPU_INFO.fields.evtchn_pending_sel.offset >> 2;

/**
 * Sets the selector bit of `port` and `evtchn_upcall_pending` (byte 0 of
 * vcpu_info, set through the word holding it) for `vcpu`.
 */
export function raiseUpcall(si: Int32Array, port: number, vcpu: number): void {
  const vi = vcpu * VI_WORDS;
  const sel = port >> 6;
  Atomics.or(si, vi + VI_SEL_I32 + (sel >> 5), 1 << (sel & 31));
  Atomics.or(si, vi, 1);
}

/**
 * Marks `port` pending in `si` (an Int32Array over shared_info); if it was not
 * pending and is not masked, raises the upcall of `vcpu`.
 * @returns true when the upcall was raised (the caller then wakes that vCPU).
 */
export function setPortPending(si: Int32Array, port: number, vcpu: number): boolean {
  const w = port >> 5;
  const bit = 1 << (port & 31);
  const old = Atomics.or(si, SI_PENDING_I32 + w, bit);
  if (old & bit) return false;
  if (Atomics.load(si, SI_MASK_I32 + w) & bit) return false;
  raiseUpcall(si, port, vcpu);
  return true;
}

/** Whether `port` is pending and not masked in `si` (an event a vCPU would dispatch). */
export function isPortDeliverable(si: Int32Array, port: number): boolean {
  const w = port >> 5;
  const bit = 1 << (port & 31);
  return (Atomics.load(si, SI_PENDING_I32 + w) & bit) !== 0 && (Atomics.load(si, SI_MASK_I32 + w) & bit) === 0;
}
