/**
 * Not a guest: a worker (started through hypervisor/worker-bootstrap.mjs) that plays
 * the hypervisor writing vCPU 0's `vcpu_time_info` as fast as it can, with
 * {@link writeVcpuTimeInfo}, so a test can read it concurrently and check that the
 * seqlock never lets a torn set of fields through. Every field of update `n` derives
 * from `n`: `tsc_timestamp = BASE + n`, `system_time = 3n`, `tsc_to_system_mul = n`,
 * `tsc_shift = n mod 64`, with a short gap after each. Runs until word 0 of `control` is non-zero or 20 s pass;
 * word 1 counts the updates.
 */
import { writeVcpuTimeInfo } from '../../hypervisor/time.ts';

/** `tsc_timestamp` of update 0. */
export const SEQLOCK_WRITER_BASE = 1e12;

/** Worker entry. */
export function start(data: { sharedInfo: SharedArrayBuffer; control: SharedArrayBuffer }): void {
  const si = new Int32Array(data.sharedInfo);
  const ctl = new Int32Array(data.control);
  const deadline = Date.now() + 20_000;
  for (let n = 1; Atomics.load(ctl, 0) === 0; n++) {
    writeVcpuTimeInfo(si, 0, SEQLOCK_WRITER_BASE + n, 3 * n, n, n % 64, 1);
    Atomics.store(ctl, 1, n);
    // A short, varying gap with the version even (the real writer updates once per
    // hypercall served; back-to-back updates would starve any seqlock reader).
    for (let i = n % 512; i > 0; i--) Atomics.load(ctl, 0);
    if ((n & 0xfff) === 0 && Date.now() > deadline) break;
  }
}
