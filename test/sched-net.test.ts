// netback's service between guests follows their credit-scheduler weights
// (netback/netback.ts NetbackScheduler, rings/weighted-scheduler.ts):
// - a pass's budget, on a NetbackQueue fed by a mock frontend: a finite budget bounds
//   the packets of the pass (tx packets taken + queued rx frames written, the unit),
//   keeping up to half for frames waiting for the guest; no budget is the pass netback
//   makes without weights (64 tx packets, every rx frame the buffers take);
// - on a running machine: two guests sending 64-byte frames flat out through dom0's
//   bridge to a port that costs dom0 20 µs of CPU per frame (so dom0 is the
//   bottleneck, the only case where weights can show): equal weights → packets
//   forwarded within 1.3× of each other; 512 vs 256 → 1.5× to 2.7×, either way round;
//   the weights are forgotten when a guest goes.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { NetbackScheduler, TX_BATCH } from '../netback/netback.ts';
import { mockVif, txRequest } from './mock-vif.ts';
import { NETIF_RX_REQUEST, NETIF_RX_RING_ENTRY_SIZE } from '../rings/netif.ts';
import { CSCHED_DEFAULT_WEIGHT } from '../hypervisor/abi.ts';
import { Machine, type GuestHandle } from '../toolstack/machine.ts';
import { checkWeightedShares, shareRatio, shareWindow, guestPath } from './helpers.ts';

const RXQ = NETIF_RX_REQUEST.fields;

describe('netback: a pass bounded by its budget, in packets', () => {
  it('a budget bounds tx + rx; frames waiting for the guest keep up to half; no budget is the unweighted pass', () => {
    let delivered = 0;
    const { fe, tx, rx, q, errors } = mockVif(true, () => delivered++);
    expect(q.frontDomid).toBe(1);

    const data = fe.memory.allocPage();
    const gref = fe.gnttab.grantAccess(0, data.mfn, true);
    for (let i = 0; i < 100; i++) tx.request(txRequest(gref, i, 60));
    expect(q.serve(10)).toBe(true);
    expect([delivered, q.counters.requests]).toEqual([10, 10]);
    expect(q.serve(0.5)).toBe(true); // at least one packet
    expect([delivered, q.counters.requests]).toEqual([11, 11]);
    expect(q.serve()).toBe(true); // unweighted: a full tx batch
    expect([delivered, q.counters.requests]).toEqual([11 + TX_BATCH, 11 + TX_BATCH]);

    // Ten frames queued for the guest (no rx buffer posted yet), then eight buffers.
    for (let i = 0; i < 10; i++) q.enqueueRx(new Uint8Array(100).fill(i), false);
    expect(q.rxBacklog).toBe(10);
    for (let i = 0; i < 8; i++) {
      const buf = fe.memory.allocPage();
      const req = new Uint8Array(NETIF_RX_RING_ENTRY_SIZE);
      const d = new DataView(req.buffer);
      d.setUint16(RXQ.id.offset, i, true);
      d.setUint32(RXQ.gref.offset, fe.gnttab.grantAccess(0, buf.mfn, false), true);
      rx.request(req);
    }
    // 25 tx packets and 10 rx frames wait: a budget of 6 keeps 3 for rx.
    expect(q.serve(6)).toBe(true);
    expect(delivered).toBe(11 + TX_BATCH + 3);
    expect(q.rxBacklog).toBe(7);
    expect(q.counters.rxPackets).toBe(3);
    expect(q.counters.requests).toBe(11 + TX_BATCH + 6);
    // Unweighted: the rest of the tx ring (22), and every frame the 5 buffers left take.
    expect(q.serve()).toBe(false);
    expect(delivered).toBe(100);
    expect(q.rxBacklog).toBe(2);
    expect(q.counters.rxPackets).toBe(8);
    expect(q.counters.requests).toBe(100 + 8);
    expect(errors).toEqual([]);
  });

  it('NetbackScheduler: plain until a weight differs, weighted after, plain again when the guest is forgotten', () => {
    const s = new NetbackScheduler();
    expect(s.isWeighted()).toBe(false);
    s.setWeight(7, CSCHED_DEFAULT_WEIGHT);
    expect(s.isWeighted()).toBe(false);
    s.setWeight(7, 512);
    expect([s.isWeighted(), s.weightOf(7), s.weightOf(8)]).toEqual([true, 512, CSCHED_DEFAULT_WEIGHT]);
    s.forgetDomain(7);
    expect([s.isWeighted(), s.weightOf(7)]).toEqual([false, CSCHED_DEFAULT_WEIGHT]);
    expect(() => s.setWeight(7, 0)).toThrow(RangeError);
  });
});

// ---------------------------------------------------------------------------
// A running machine

const BUSY_PORT = fileURLToPath(new URL('./fixtures/busy-port.ts', import.meta.url));
/** The busy port's MAC (locally administered). */
const SINK = [0x02, 0, 0, 0, 0, 0x5c];
const SINK_MAC = SINK.map((b) => b.toString(16).padStart(2, '0')).join(':');

let m: Machine;
beforeAll(async () => {
  m = await Machine.boot({ onConsole: () => {} });
}, 60_000);
afterAll(async () => {
  await m?.shutdown();
});

type VifStats = { txPackets: number; rxPackets: number; requests: number };
type SchedStats = { rounds: number; weightedRounds: number; weighted: boolean };

describe('dom0 serves guests\' vifs by their weights', () => {
  it('two guests sending flat out: equal weights ≈ equal service; 512 vs 256 ≈ 2:1, either way round', async () => {
    const guests: GuestHandle[] = [];
    try {
      // Every frame to the sink costs dom0 20 µs of CPU: dom0, not the guests, is the bottleneck.
      await m.addBridgePort('xenbr0', BUSY_PORT, { mac: SINK });
      for (const name of ['na', 'nb']) {
        guests.push(await m.createGuest({ name, memoryMiB: 32, vcpus: 1, kernel: guestPath('sched-sender.ts'), vifs: [{ persistent: true }] }));
      }
      const [a, b] = guests;
      const vifName = (g: GuestHandle) => `${g === a ? 'na' : 'nb'}/vif${g.domid}.0`;
      const stats = async () => (await m.dom0Stats()) as { vifs: Record<string, VifStats>; netbackSched: SchedStats };
      for (const g of guests) await g.call('start', { dst: SINK_MAC, bytes: 64 });
      const served = async (): Promise<[number, number]> => {
        const s = await stats();
        return [s.vifs[vifName(a)].txPackets, s.vifs[vifName(b)].txPackets];
      };
      /** Packets dom0 forwarded from each guest over one second, after a settling time. */
      const window = shareWindow(served);
      const ratio = shareRatio;

      const equal = await window();
      // At 20 µs a frame dom0 forwards at most 50 k frames/s; well below that and something else is the bottleneck.
      expect(equal[0] + equal[1], `served ${equal}`).toBeGreaterThan(5000);
      expect(ratio(equal), `default weights: served ${equal}`).toBeGreaterThan(1 / 1.3);
      expect(ratio(equal), `default weights: served ${equal}`).toBeLessThan(1.3);
      expect((await stats()).netbackSched.weighted).toBe(false);

      const { heavyA, both, heavyB } = await checkWeightedShares(m, a.domid, b.domid, window, 1000);
      const s = await stats();
      expect(s.netbackSched.weighted).toBe(true);
      expect(s.netbackSched.weightedRounds).toBeGreaterThan(0);
      // The frames went to the sink only (nothing flooded back to the other sender).
      for (const g of guests) expect(s.vifs[vifName(g)].rxPackets, vifName(g)).toBeLessThanOrEqual(1);
      for (const g of guests) expect(((await g.call('count')) as { errors: number }).errors).toBe(0);
      console.log(`netback packets forwarded per second (a, b): equal ${equal}, 512:256 ${heavyA}, 512:512 ${both}, 256:512 ${heavyB}`);

      // The guest that weighs 512 goes: dom0 forgets its weight, and with b's back to the default the rounds are plain again.
      await stopGuest(b);
      await m.setSchedParams(a.domid, { weight: CSCHED_DEFAULT_WEIGHT });
      const deadline = Date.now() + 10_000;
      while ((await stats()).netbackSched.weighted && Date.now() < deadline) await sleep(50);
      expect((await stats()).netbackSched.weighted).toBe(false);
    } finally {
      for (const g of guests) await stopGuest(g);
    }
  }, 60_000);
});

const exited = new Set<GuestHandle>();
/** Stops guest `g` (once) and waits for its domain to end. */
async function stopGuest(g: GuestHandle): Promise<void> {
  if (exited.has(g)) return;
  exited.add(g);
  await g.call('exit').catch(() => undefined);
  await g.exit;
}
