// A NetbackQueue in dom0 of a MockMachine, facing mock tx and rx frontends of dom1,
// for tests of netback's data path without workers (test/testing-kit.test.ts,
// test/sched-net.test.ts).
import { MockFrontend, MockMachine } from '../testing/index.ts';
import { NetbackQueue } from '../netback/netback.ts';
import { NETIF_RX_RING_ENTRY_SIZE, NETIF_TX_REQUEST, NETIF_TX_RING_ENTRY_SIZE } from '../rings/netif.ts';

const TX = NETIF_TX_REQUEST.fields;

/** A tx request: one slot of `size` bytes at offset 0 of `gref`, no flags. */
export function txRequest(gref: number, id: number, size: number): Uint8Array {
  const b = new Uint8Array(NETIF_TX_RING_ENTRY_SIZE);
  const d = new DataView(b.buffer);
  d.setUint32(TX.gref.offset, gref, true);
  d.setUint16(TX.id.offset, id, true);
  d.setUint16(TX.size.offset, size, true);
  return b;
}

/**
 * Sets up vif1.0: dom1's tx and rx rings (mock frontends), mapped by dom0, one
 * interdomain event channel for both, and a NetbackQueue (sg and checksum offload,
 * no rate limit) that hands frames to `deliver` and errors to `errors`.
 */
export function mockVif(persistent: boolean, deliver: (frame: Uint8Array) => void) {
  const mm = new MockMachine();
  const fe = mm.dom(1);
  const be = mm.dom(0);
  const tx = new MockFrontend(fe, 0, NETIF_TX_RING_ENTRY_SIZE);
  const rx = new MockFrontend(fe, 0, NETIF_RX_RING_ENTRY_SIZE);
  const [mt, mr] = be.gnttab.map([{ domid: 1, ref: tx.ref, readonly: false }, { domid: 1, ref: rx.ref, readonly: false }]);
  const fport = fe.evtchn.allocUnbound(0);
  const bport = be.evtchn.bindInterdomain(1, fport);
  const errors: Error[] = [];
  const q = new NetbackQueue({
    name: 'vif1.0', frontDomid: 1, txMem: mt.page!, rxMem: mr.page!, txPort: bport, rxPort: bport, persistent, sg: true,
    csumOffload: true, rate: null, deliver, onError: (e) => errors.push(e), kick: () => undefined,
  }, be.asEventChannels(), be.asGrantTable(), be.asMemory());
  return { mm, fe, be, tx, rx, fport, bport, q, errors };
}
