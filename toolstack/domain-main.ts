/**
 * Entry of every domain vCPU worker (started by the hypervisor through
 * hypervisor/worker-bootstrap.mjs). It builds the vCPU's {@link Kernel}, runs the
 * event loop, waits for the first unpause, connects XenStore, and on vCPU 0:
 * probes the frontends the toolstack attached (a domU's disks and vifs), imports the guest
 * module and calls its default export with the kernel. Its result goes to the
 * toolstack; then devices are torn down in order (Closing → Closed, grants ended,
 * ports closed) and the domain shuts down with SCHEDOP_shutdown(poweroff).
 *
 * A guest that throws is a crashed domain: its error is printed on its console and
 * it shuts down with SHUTDOWN_crash at once, without closing its devices, exactly
 * like a kernel panic — its backends clean up on `@releaseDomain`.
 */
import { SHUTDOWN } from '../hypervisor/abi.ts';
import type { BootInfo } from '../hypervisor/boot.ts';
import { Kernel, type GuestMain, type SecondaryMain } from '../hypervisor/kernel.ts';
import { probeBlkfronts, watchBlkfronts } from '../blkfront/xenbus.ts';
import { probeNetfronts, watchNetfronts } from '../netfront/xenbus.ts';

/** What the race between the guest's program and a shutdown request yields for the latter. */
const SHUTDOWN_ASKED = Symbol('shutdown asked');

/** Worker entry, called by the bootstrap with `workerData`. */
export async function start(data: { boot: BootInfo }): Promise<void> {
  const k = new Kernel(data.boot);
  const idle = k.runIdleLoop();
  await k.waitUnpaused();
  if (k.vcpuId !== 0) {
    // Secondary vCPUs run the guest module's `secondary` export if it has one (work
    // vCPU 0 hands them through k.callVcpu), then serve the events bound to them
    // until the domain is destroyed.
    try {
      const mod = (await import(data.boot.guest.module)) as { secondary?: SecondaryMain };
      if (typeof mod.secondary === 'function') await mod.secondary(k);
      k.serveVcpuCalls({}); // answer calls now, whether or not `secondary` served any
    } catch (e) {
      k.console.log(`vcpu ${k.vcpuId} crashed: ${e instanceof Error && e.stack ? e.stack : String(e)}`);
      k.shutdown(SHUTDOWN.crash);
    }
    await idle;
    return;
  }
  let reason: number = SHUTDOWN.poweroff;
  try {
    k.connectXenStore();
    if (!k.privileged && data.boot.guest.probe !== false) {
      const disks = await probeBlkfronts(k);
      for (const [name, dev] of disks) k.devices.set(name, dev);
      const nics = await probeNetfronts(k);
      for (const [name, nic] of nics) k.devices.set(name, nic);
      // Disks and vifs attached later (hot-plug) connect as they come.
      const unwatchDisks = await watchBlkfronts(k, [...disks.values()].map((d) => String(d.virtualDevice)));
      const unwatchNics = await watchNetfronts(k, [...nics.keys()].map((n) => n.slice('eth'.length)));
      k.onTeardown(async () => {
        await unwatchDisks().catch(() => undefined);
        await unwatchNics().catch(() => undefined);
      });
    }
    // The toolstack asks for an orderly shutdown by writing control/shutdown
    // ("poweroff", "halt"), as xl shutdown does; the guest clears the key (its
    // acknowledgement, as Linux's xenbus control handler does), closes its devices
    // and powers off, whether or not its program has finished.
    let shutdownAsked!: () => void;
    const asked = new Promise<typeof SHUTDOWN_ASKED>((r) => (shutdownAsked = () => r(SHUTDOWN_ASKED)));
    if (!k.privileged) {
      const ctl = `/local/domain/${k.domid}/control/shutdown`;
      const unwatchCtl = await k.xenbus.watch(ctl, () => {
        void k.xenbus.readOptional(ctl).then(async (v) => {
          if (v !== 'poweroff' && v !== 'halt') return;
          await k.xenbus.write(ctl, '').catch(() => undefined);
          k.console.log(`shutdown requested (${v})`);
          shutdownAsked();
        }, () => undefined);
      });
      k.onTeardown(() => unwatchCtl().catch(() => undefined));
    }
    const mod = (await import(data.boot.guest.module)) as { default?: GuestMain; main?: GuestMain };
    const main = mod.default ?? mod.main;
    if (typeof main !== 'function') throw new Error(`${data.boot.guest.module} has no default export`);
    const value = await Promise.race([main(k), asked]);
    if (value !== SHUTDOWN_ASKED) k.control?.postMessage({ type: 'result', value });
  } catch (e) {
    reason = SHUTDOWN.crash;
    const msg = e instanceof Error ? e.message : String(e);
    k.console.log(`guest crashed: ${e instanceof Error && e.stack ? e.stack : msg}`);
    k.control?.postMessage({ type: 'error', error: msg });
  }
  if (reason === SHUTDOWN.poweroff) await k.runTeardown();
  await k.drainConsole();
  k.control?.close();
  k.shutdown(reason);
  k.stop();
  await idle;
}
