// pvio's `pvio/kit` entry: registers tsx (as index.mjs does) and re-exports the
// driver-author primitives of kit/index.ts.
import { register } from 'tsx/esm/api';

register();

const kit = await import(new URL('./kit/index.ts', import.meta.url).href);

export const {
  defineLayout, field, FrontRing, BackRing, SRING_HEADER, SRING_RING_OFFSET, ByteRingProducer, ByteRingConsumer,
  XenbusFrontend, XenbusBackend, backendDir, frontendDir, XenbusState, switchState, readState, waitForState, readUintKey,
  watchFrontends, PAGE_SIZE, GNTST, ProtocolError, TimeoutError, PvioError,
} = kit;
