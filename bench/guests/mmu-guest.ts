// Guest for `pvio bench mmu --hosted` and test/mmu-hosted.test.ts: boots the CPU/MMU
// model's guest kernel in this domain with the model's hypervisor in the hypervisor
// thread (every entry a real hypercall), runs one workload, and returns its result
// with the hypervisor's own accounting of this domain's entries.
// args: { mode, workload, sizes }
import type { Kernel } from '../../hypervisor/kernel.ts';
import { bootHostedKernel } from '../../hypervisor/mmu/hosted.ts';
import type { KernelMode } from '../../hypervisor/mmu/guest-kernel.ts';
import { counterSyscall, framesFor, runOn, type WorkloadName, type WorkloadSizes } from '../../hypervisor/mmu/workloads.ts';

export default async function main(k: Kernel): Promise<unknown> {
  const a = k.args as { mode: KernelMode; workload: WorkloadName; sizes: WorkloadSizes };
  const sys = counterSyscall();
  const { kernel, port } = bootHostedKernel(k, a.mode, framesFor(a.workload, a.sizes), sys.handler);
  sys.attach(kernel);
  const result = runOn(kernel, a.workload, a.sizes);
  return { result, hypervisor: port.stats(), hypercalls: { ...k.hypercall.counters.calls } };
}
