/**
 * `pvio/kit`: the primitives a new split driver is built from, and nothing else —
 * a device type is a layout, a frontend class and a backend class
 * (docs/writing-a-split-driver.md walks through vchan, built only from these).
 *
 * | need | primitive | module |
 * |---|---|---|
 * | a shared structure's layout, as a table of offsets, types and writers | `defineLayout`, `field` | rings/layout.ts |
 * | a request/response ring (io/ring.h), each end | `FrontRing.init`, `BackRing.attach` | rings/ring.ts |
 * | a byte-stream ring (console, XenStore, vchan) | `ByteRingProducer`, `ByteRingConsumer` | rings/byte-ring.ts |
 * | pages, granting, mapping, grant copies | the guest kernel's `k.memory`, `k.gnttab` (`GrantTable`: `grantAccess`, `endAccess`, `map`, `mapRing`, `unmap`, `copy`) | hypervisor/guest-memory.ts, grant-table/gnttab.ts |
 * | event channels | `k.evtchn` (`EventChannels`: `allocUnbound`, `bindInterdomain`, `notify`, `on`, `close`) | event-channel/evtchn.ts |
 * | XenStore keys | `k.xenbus` (`XenbusClient`: `read`, `write`, `watch`, `transaction`, `setPerms` in a transaction), `readUintKey` | xenstore/client.ts, xenstore/xenbus.ts |
 * | the XenBus state walks, both ends | `XenbusFrontend`, `XenbusBackend` (extend; fill in keys and rings) | xenstore/xenbus-device.ts |
 * | hot-plug of a device type | `watchFrontends` | xenstore/xenbus.ts |
 * | errors | `ProtocolError` (a peer broke the protocol: disable that device), `TimeoutError` | rings/errors.ts |
 *
 * Test one side alone with `pvio/testing` (mock domains, a mock frontend, a mock backend).
 */
export { defineLayout, field } from '../rings/layout.ts';
export type { Layout, FieldSpec, FieldType, FieldWriter } from '../rings/layout.ts';
export { FrontRing, BackRing, SRING_HEADER, SRING_RING_OFFSET } from '../rings/ring.ts';
export { ByteRingProducer, ByteRingConsumer } from '../rings/byte-ring.ts';
export type { ByteRingSpec } from '../rings/byte-ring.ts';
export { XenbusFrontend, XenbusBackend, backendDir, frontendDir } from '../xenstore/xenbus-device.ts';
export type { XenbusHost } from '../xenstore/xenbus-device.ts';
export { XenbusState, switchState, readState, waitForState, readUintKey, watchFrontends } from '../xenstore/xenbus.ts';
export type { XenbusClient, XenbusTransaction } from '../xenstore/client.ts';
export type { GrantTable, MapRequest, MapResult, CopyRequest } from '../grant-table/gnttab.ts';
export type { EventChannels } from '../event-channel/evtchn.ts';
export type { GuestMemory, GuestPage, GuestExtent } from '../hypervisor/guest-memory.ts';
export type { Kernel } from '../hypervisor/kernel.ts';
export { PAGE_SIZE, GNTST } from '../hypervisor/abi.ts';
export type { GrantRef, GrantHandle, EvtchnPort } from '../hypervisor/abi.ts';
export { ProtocolError, TimeoutError, PvioError } from '../rings/errors.ts';
