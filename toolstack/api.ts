/**
 * pvio as a library: what `import { ... } from 'pvio'` gives (the package's entry,
 * index.mjs, registers tsx and re-exports this module; its declarations are
 * generated into `types/` when the package is packed).
 *
 * ```js
 * import { Machine } from 'pvio';
 * const m = await Machine.boot();
 * const g = await m.createGuest({ name: 'reader', memoryMiB: 32, vcpus: 1, kernel: './guest.mjs',
 *   disks: [parseDiskSpec('file:disk.img,xvda,r', process.cwd())] });
 * const { value } = await g.exit;     // what the guest's default export returned
 * await m.shutdown();
 * ```
 *
 * A guest program is an ES module (`.mjs`, `.js` or `.ts`) whose default export
 * receives the guest's {@link Kernel}: its disks (`Blkfront`) and NICs (`Netfront`)
 * are in `k.devices`, already connected; `k.args` is what `GuestSpec.args` carried.
 */
export { Machine, MachineError, dom0Vif } from './machine.ts';
export type { DomainEvent, DomainExit, GuestHandle, GuestSpec, MachineEvents, MachineOptions, MachineSnapshot, XenbusEvent } from './machine.ts';
export { XenbusState } from '../xenstore/xenbus.ts';
export { ConfigError, parseConfig, loadConfig, parseDiskSpec, parseVifSpec, DEFAULT_VIF_BRIDGE, DEFAULT_VIF_MTU } from './config.ts';
export type { DiskSpec, DomainConfig, VifSpec, VifRate } from './config.ts';
export { PvioError, ProtocolError, TimeoutError, InvariantError } from '../rings/errors.ts';
export type { Kernel, GuestMain, SecondaryMain, GuestConsole, DeviceEvent } from '../hypervisor/kernel.ts';
export type { Blkfront, BlkfrontHandshakeError } from '../blkfront/xenbus.ts';
export type { Netfront, NetfrontHandshakeError } from '../netfront/xenbus.ts';
export type { SendOptions, NetfrontCounters } from '../netfront/netfront.ts';
export { Vchan, VchanError, vchanClient, vchanServer, vchanPath } from '../vchan/vchan.ts';
export type { VchanClientOptions, VchanServerOptions } from '../vchan/vchan.ts';
export type { BridgePortContext, BridgePortModule } from '../netback/bridge.ts';
