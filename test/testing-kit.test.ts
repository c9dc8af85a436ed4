// pvio/testing (testing/index.ts): a driver tested in process against mocks of the
// other side, no domains. netback's data path (NetbackQueue) in both modes is fed
// raw tx requests by a MockFrontend (test/mock-vif.ts) and answers them; its grant copies and mappings
// go through a MockMachine's grant tables (a ref never granted is refused with
// GNTST_bad_gntref, so the packet gets NETIF_RSP_ERROR); a frame for the guest lands
// in the rx buffer the mock frontend posted, answered in its slot. A MockBackend
// answers a FrontRing's requests for a made-up layout (a frontend tested alone), and
// event channels between mock domains run the peer's handler.
import { describe, expect, it } from 'vitest';
import { MockBackend, MockMachine } from '../testing/index.ts';
import { mockVif, txRequest } from './mock-vif.ts';
import {
  NETIF_RSP_ERROR, NETIF_RSP_OKAY, NETIF_RX_REQUEST, NETIF_RX_RESPONSE, NETIF_RX_RING_ENTRY_SIZE, NETIF_TX_RESPONSE,
} from '../rings/netif.ts';
import { FrontRing } from '../rings/ring.ts';
import { defineLayout, field } from '../rings/layout.ts';
import { PAGE_SIZE, type GrantRef } from '../hypervisor/abi.ts';

const RX = NETIF_RX_REQUEST.fields;

describe.each([{ persistent: false }, { persistent: true }])('NetbackQueue against a mock frontend, persistent $persistent', ({ persistent }) => {
  it('forwards a good packet, refuses a bad grant, and delivers a frame into a posted rx buffer', () => {
    const delivered: Uint8Array[] = [];
    const { fe, be, tx, rx, fport, q, errors } = mockVif(persistent, (f) => delivered.push(f.slice()));
    let frontendEvents = 0;
    fe.evtchn.on(fport, () => frontendEvents++);
    // A 60-byte frame in a page granted read-only to the backend, and a request naming a ref never granted.
    const data = fe.memory.allocPage();
    for (let i = 0; i < 60; i++) data.bytes[i] = (i * 7) & 0xff;
    const gref = fe.gnttab.grantAccess(0, data.mfn, true);
    tx.request(txRequest(gref, 5, 60));
    tx.request(txRequest(4000, 6, 60));
    q.serve();
    expect(errors).toEqual([]);
    expect(delivered).toHaveLength(1);
    expect([...delivered[0]]).toEqual([...data.bytes.subarray(0, 60)]);
    const rsp = tx.responses(NETIF_TX_RESPONSE.size).map((b) => new DataView(b.buffer));
    expect(rsp.map((d) => [d.getUint16(0, true), d.getInt16(2, true)])).toEqual([[5, NETIF_RSP_OKAY], [6, NETIF_RSP_ERROR]]);
    expect(frontendEvents).toBeGreaterThan(0); // the frontend asked (rsp_event) and was notified
    expect(persistent ? be.counters.maps : be.counters.copyOps).toBeGreaterThan(persistent ? 2 : 0);

    // rx: a writable buffer posted in slot 0 gets the next frame for the guest.
    const buf = fe.memory.allocPage();
    const rxRef = fe.gnttab.grantAccess(0, buf.mfn, false);
    const req = new Uint8Array(NETIF_RX_RING_ENTRY_SIZE);
    new DataView(req.buffer).setUint16(RX.id.offset, 0, true);
    new DataView(req.buffer).setUint32(RX.gref.offset, rxRef, true);
    rx.request(req);
    const frame = Uint8Array.from({ length: 100 }, (_, i) => 255 - i);
    q.enqueueRx(frame, false);
    q.serve();
    const [r] = rx.responses(NETIF_RX_RESPONSE.size).map((b) => new DataView(b.buffer));
    expect([r.getUint16(0, true), r.getInt16(6, true)]).toEqual([0, 100]);
    expect([...buf.bytes.subarray(0, 100)]).toEqual([...frame]);
  });
});

describe('MockBackend and mock event channels', () => {
  it('a frontend of a made-up device, tested alone: the mock backend answers each request', () => {
    const ECHO = defineLayout('echo_request', 'test', 8, { id: field(0, 'u32', 'front'), value: field(4, 'u32', 'front') });
    const page = new Uint8Array(new SharedArrayBuffer(PAGE_SIZE));
    const front = FrontRing.init(page, ECHO.size);
    const back = new MockBackend(page, ECHO.size, (req) => {
      const d = new DataView(req.buffer);
      d.setUint32(4, d.getUint32(4, true) * 2, true);
      return req;
    });
    for (let i = 1; i <= 5; i++) {
      const e = new Uint8Array(8);
      new DataView(e.buffer).setUint32(0, i, true);
      new DataView(e.buffer).setUint32(4, i * 10, true);
      front.produceRequestFrom(e);
    }
    front.pushRequestsAndCheckNotify();
    back.serve();
    const got: number[][] = [];
    for (let n = front.unconsumedResponses(); n > 0; n--) {
      const b = new Uint8Array(8);
      front.consumeResponse(b, 8);
      got.push([new DataView(b.buffer).getUint32(0, true), new DataView(b.buffer).getUint32(4, true)]);
    }
    expect(got).toEqual([[1, 20], [2, 40], [3, 60], [4, 80], [5, 100]]);
    expect(back.served).toBe(5);
  });

  it("grants are checked as the hypervisor does; notifications run the peer's handler, now or when asked", () => {
    const mm = new MockMachine();
    const a = mm.dom(1);
    const b = mm.dom(2);
    const c = mm.dom(3);
    const pg = a.memory.allocPage();
    const ro = a.gnttab.grantAccess(2, pg.mfn, true);
    expect(b.gnttab.map([{ domid: 1, ref: ro, readonly: false }])[0].status).toBe(-8); // GNTST_permission_denied
    expect(c.gnttab.map([{ domid: 1, ref: ro, readonly: true }])[0].status).toBe(-8); // not granted to dom3
    expect(b.gnttab.map([{ domid: 1, ref: 999 as GrantRef, readonly: true }])[0].status).toBe(-3); // GNTST_bad_gntref
    const ok = b.gnttab.map([{ domid: 1, ref: ro, readonly: true }])[0];
    expect(ok.status).toBe(0);
    expect(a.gnttab.endAccess(ro)).toBe(false); // still mapped
    b.gnttab.unmap([ok.handle]);
    expect(a.gnttab.endAccess(ro)).toBe(true);
    const p = a.evtchn.allocUnbound(2);
    const q = b.evtchn.bindInterdomain(1, p);
    let got = 0;
    a.evtchn.on(p, () => got++);
    b.evtchn.notify(q);
    expect(got).toBe(1);
    mm.deferEvents = true;
    b.evtchn.notify(q);
    expect(got).toBe(1);
    expect(mm.runEvents()).toBe(1);
    expect(got).toBe(2);
  });
});
