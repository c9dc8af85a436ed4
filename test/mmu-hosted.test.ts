// The CPU/MMU model hosted in the hypervisor thread (hypervisor/mmu/host.ts,
// hosted.ts): a guest domain boots the model's kernel on frames it populated, and every
// entry is a real hypercall through its hypercall page. In every mode and workload the
// guest's counts equal those of the same run in one thread, the guest sees the same
// memory and faults, and the hypervisor's own accounting of the domain's entries agrees;
// shadow tables are hypervisor frames shared only with the domain they serve (the
// handle audit passes).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Machine } from '../toolstack/machine.ts';
import { KERNEL_MODES } from '../hypervisor/mmu/guest-kernel.ts';
import { WORKLOADS, runWorkload, type WorkloadResult, type WorkloadName } from '../hypervisor/mmu/workloads.ts';
import { fileURLToPath } from 'node:url';

const GUEST = fileURLToPath(new URL('../bench/guests/mmu-guest.ts', import.meta.url));
const SIZES: Record<WorkloadName, { n: number; procs?: number; pages?: number }> = {
  'address-space': { n: 600 }, 'process-switch': { n: 30, procs: 3, pages: 8 }, syscall: { n: 200 },
};

let m: Machine;
beforeAll(async () => {
  m = await Machine.boot({ onConsole: () => {} });
});
afterAll(async () => {
  await m?.shutdown();
});

describe('the model hosted in the hypervisor thread', () => {
  for (const w of WORKLOADS) {
    it(`${w}: every mode counts as in one thread and the hypervisor agrees`, async () => {
      for (const mode of KERNEL_MODES) {
        const g = await m.createGuest({ name: `mmu-${mode}`, memoryMiB: 16, vcpus: 1, kernel: GUEST, args: { mode, workload: w, sizes: SIZES[w] } });
        const exit = await g.exit;
        expect(exit.error, `${mode}: ${exit.error}`).toBeUndefined();
        const v = exit.value as { result: WorkloadResult; hypervisor: { entries: Record<string, number>; hypervisorEntries: number; validatedPtes: number } };
        const local = runWorkload(mode, w, SIZES[w]);
        const pick = (r: WorkloadResult) => ({ e: r.hypervisorEntries, by: r.entries, ptes: r.validatedPtes, traps: r.traps, flushes: r.tlbFlushes, misses: r.tlbMisses, view: r.guestView });
        expect(pick(v.result), `${w} ${mode}`).toEqual(pick(local));
        // The hypervisor counted at least the workload's entries itself (it also saw the boot's).
        for (const [reason, n] of Object.entries(v.result.entries)) expect(v.hypervisor.entries[reason], `${mode} ${reason}`).toBeGreaterThanOrEqual(n);
        expect(v.hypervisor.hypervisorEntries).toBeGreaterThanOrEqual(v.result.hypervisorEntries);
      }
      const audit = await m.audit();
      expect(audit.violations).toEqual([]);
    }, 120_000);
  }

  it('shadow tables are hypervisor frames shared with their domain, in the handle log', async () => {
    const g = await m.createGuest({ name: 'mmu-shadow-log', memoryMiB: 16, vcpus: 1, kernel: GUEST, args: { mode: 'shadow', workload: 'address-space', sizes: { n: 100 } } });
    await g.exit;
    const audit = await m.audit() as { violations: string[]; log: Array<{ domid: number; owner: number; reason: string }> };
    expect(audit.violations).toEqual([]);
    const shadows = audit.log.filter((e) => e.domid === g.domid && e.reason === 'shadow table');
    expect(shadows.length).toBeGreaterThan(3);
    for (const e of shadows) expect(e.owner).toBe(0x7ff2);
  });
});
