// pvio's package entry (`import { Machine } from 'pvio'`). Node 20 cannot run
// TypeScript by itself, so this plain-JS module registers tsx's loader in the process
// (as toolstack/bin/pvio.mjs does; domain workers register it themselves through
// hypervisor/worker-bootstrap.mjs), then re-exports the public API of
// toolstack/api.ts. Declarations for TypeScript users are generated into types/ when
// the package is packed (npm run build:types), and named by package.json's "exports".
import { register } from 'tsx/esm/api';

register();

const api = await import(new URL('./toolstack/api.ts', import.meta.url).href);

export const {
  Machine, MachineError, dom0Vif, XenbusState,
  ConfigError, parseConfig, loadConfig, parseDiskSpec, parseVifSpec, DEFAULT_VIF_BRIDGE, DEFAULT_VIF_MTU,
  PvioError, ProtocolError, TimeoutError, InvariantError,
  Vchan, VchanError, vchanClient, vchanServer, vchanPath,
} = api;
