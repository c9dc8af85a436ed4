// Adversarial suite: a hostile frontend against netback, between real worker domains.
//
// The hostile guest (test/guests/hostile-netfront.ts) does the netif handshake by hand
// and then writes raw bytes into its tx and rx ring slots and publishes req_prod
// itself. It has nine vifs on xenbr0: vif .0 in grant-copy mode and vif .1 with pvio's
// persistent pool take every non-fatal case; .2 to .8 are each broken on purpose by
// one fatal case. Two well-behaved bystander guests (test/guests/net-bystander.ts,
// real netfronts) on the same bridge keep echo frames going between them throughout.
//
// Cases, in both data-path modes unless said otherwise (each slot's response is
// checked by request id: exactly one per data slot with the exact status, one
// NETIF_RSP_NULL per extra-info slot, no other status ever — NETIF_RSP_DROPPED is
// never used on tx —, and nothing late or extra):
// - the control: well-formed packets of 1, 3 and 19 slots (XEN_NETIF_NR_SLOTS_MIN: 18
//   follow-on slots), from a read-only grant (tx only reads), with a GSO extra and with
//   an extra chain as long as allowed (4), an extra_info flag on a follow-on slot (not
//   special: a data slot), 14-byte frames, one ending exactly at its page's end → OKAY,
//   and the second bystander receives exactly those frames, byte for byte;
// - slot counts: 20 and 21 slots (19 and 20 follow-ons: over 18) → ERROR on every slot
//   (Linux drops them the same way); 19 slots plus a GSO extra → OKAY (extras do not
//   count); a packet of 22 slots (over fatal_skb_slots = 20 follow-ons) → fatal (.2
//   copy, .3 persistent);
// - sizes: a first slot smaller than the sum of the others, equal to it (an empty first
//   fragment), larger so that the first fragment runs past its page → ERROR; larger
//   but fitting → OKAY; a packet of 13, 1 or 0 bytes (under the Ethernet header) →
//   ERROR, 14 → OKAY; offset+size > 4096 in a first or a follow-on slot, offset 65535 →
//   ERROR (Linux disables the vif for a slot crossing its page; pvio errors the packet);
//   a zero-length follow-on → OKAY;
// - grants: a gref never granted, beyond the table, granted to another domain, granted
//   and revoked → ERROR; a bad gref in a follow-on slot, or a bad first slot with a good
//   follow-on → ERROR on every slot; good packets between bad ones in one batch (one
//   GNTTABOP_copy) → OKAY;
// - extra-info: an unknown type (9), type 0 (NONE), GSO with MSS 0 or an unknown GSO
//   type, an unknown type inside a chain → ERROR plus NULLs (Linux disables the vif for
//   an unknown extra type; pvio errors the packet); a GSO extra before follow-on slots
//   and extra flags other than MORE → OKAY; a MORE chain of 5 extras (more than there
//   are types) → fatal (.4);
// - rx: buffers posted with a read-only grant, a gref never granted, one beyond the
//   table, one granted to another domain → that frame's slot answered ERROR with its
//   id in the request's own slot, the page untouched; good buffers get exactly the
//   frame's bytes (a 9000-byte frame over three, with more_data) and nothing past it;
// - a producer index beyond the ring: tx (.5) and rx (.6) → fatal;
// - a packet published only in part (its last published slot says more_data, .7; or
//   its first slot says extra_info and nothing follows, .8): fatal, as in Linux ("Asked
//   for N slots but exceeds this limit", "Missing extra info"); a good packet published
//   ahead of it in the same batch is still answered OKAY and forwarded, as Linux submits
//   the packets built before a fatal one. netback used to wait for
//   the rest by reporting work left after every pass, so one such slot kept dom0's vCPU
//   re-serving (and re-copying) the queue ~200 000 times a second;
// - a double fetch: a published slot rewritten while netback serves it; each round gets
//   exactly one response consistent with one copy of the slot, and netback copied each
//   slot exactly once (`slotCopies` in dom0's vif counters);
// - a flood keeping the tx ring full of valid packets for 3 s (copy mode): every slot
//   answered once with its status, the bystanders keep exchanging frames during it, and
//   dom0 answers its stats request promptly.
//
// A fatal case disables that vif with a protocol error: no response for the offending
// packet, nothing more consumed from it afterwards however often the guest notifies or
// republishes (slot copies, passes and counters frozen), and the rest of the machine
// unaffected. Throughout: the bystanders' round trips keep rising (within 5 s of every
// case), dom0 stays up and answers, its console shows exactly one "broke the protocol"
// line per fatal vif and nothing else, pages of the hostile guest that no request may
// write keep their bytes, the handle audit is clean, and on the healthy vifs every
// published slot was answered and copied out of the ring exactly once.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Machine, dom0Vif, type GuestHandle } from '../toolstack/machine.ts';
import {
  NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY, NETRXF_more_data, NETTXF_extra_info, NETTXF_more_data,
  XEN_NETIF_EXTRA_FLAG_MORE, XEN_NETIF_EXTRA_TYPE_GSO, XEN_NETIF_EXTRA_TYPE_HASH, XEN_NETIF_EXTRA_TYPE_NONE,
  XEN_NETIF_GSO_TYPE_TCPV4,
} from '../rings/netif.ts';
import { guestPath, eventually, domainInfo, captureDom0Console } from './helpers.ts';
import type { FloodPacket, RawExtra, RawRxResponse, RawSlot, RawTxRequest, RawTxResponse } from './guests/hostile-netfront.ts';

/** A grant ref the hostile guest never grants (its table has 32768 entries; it grants a few dozen). */
const NEVER_GRANTED = 20_000;
/** A grant ref beyond any grant table. */
const BEYOND_TABLE = 0xffff_ffff;
const CAPTURE_ETHERTYPE = 0x88b5;
/** The vifs of the hostile guest: .0 and .1 take the non-fatal cases; each other one is broken by one fatal case. */
const VIFS = [
  { devid: 0, persistent: false },
  { devid: 1, persistent: true },
  { devid: 2, persistent: false }, // 22 slots
  { devid: 3, persistent: true }, // 22 slots
  { devid: 4, persistent: false }, // an extra chain of 5
  { devid: 5, persistent: false }, // tx req_prod beyond the ring
  { devid: 6, persistent: false }, // rx req_prod beyond the ring
  { devid: 7, persistent: false }, // a packet published in part
  { devid: 8, persistent: false }, // an extra-info chain published in part
];
const FATAL = [2, 3, 4, 5, 6, 7, 8];
const MODES = [{ mode: 'grant copy', devid: 0 }, { mode: 'persistent', devid: 1 }];

type VifStats = {
  state: string; protocolError: string | null; negotiated: { persistent: boolean; sg: boolean } | null;
  txPackets: number; txErrors: number; txSlots: number; slotCopies: number; passes: number;
  rxPackets: number; rxDropped: number; rxSlots: number; grantCopies: number; grantMaps: number;
};
type Indices = { reqProd: number; rspProd: number; reqProdPvt: number; rspCons: number; size: number };
type Pings = { completed: number; lost: number; bad: number; sendErrors: number; rxErrors: number; lastError: string; broken: boolean };

let m: Machine;
let h: GuestHandle;
let a: GuestHandle;
let b: GuestHandle;
let macA = '';
let macB = '';
const macs: Record<number, string> = {};
/** What each named page of the hostile guest holds, as far as the test knows. */
const mirror = new Map<string, Uint8Array>();
const grefs: Record<string, number> = {};
const mfns: Record<string, number> = {};
const nameOfGref = new Map<number, string>();
/** Lines dom0 itself printed (its own console is the worker's stdout: `(Domain-0) ...`). */
const dom0Lines: string[] = [];
let restoreStdout = () => {};
/** Pages that a correct netback never writes. */
const untouchable: string[] = [];

const macBytes = (mac: string) => mac.split(':').map((x) => parseInt(x, 16));
/** An Ethernet header to `dst` from `src`, ethertype {@link CAPTURE_ETHERTYPE}. */
const header = (dst: string, src: string) => [...macBytes(dst), ...macBytes(src), CAPTURE_ETHERTYPE >> 8, CAPTURE_ETHERTYPE & 0xff];

/** A page of the hostile guest filled with `fill`, granted as told (`ended`: granted, then revoked). @returns its gref (-1: none). */
async function page(name: string, grant: 'rw' | 'ro' | 'none' | 'other' | 'ended', fill: number, domid?: number): Promise<number> {
  const g = grant === 'ended' ? 'rw' : grant;
  const r = (await h.call('page', { name, grant: g, fill, domid })) as { gref: number | null; mfn: number };
  if (grant === 'ended') expect(await h.call('endAccess', { name })).toBe(true);
  grefs[name] = r.gref ?? -1;
  mfns[name] = r.mfn;
  if (r.gref !== null) nameOfGref.set(r.gref, name);
  mirror.set(name, new Uint8Array(4096).fill(fill));
  return r.gref ?? -1;
}
/** Writes `bytes` into a page of the hostile guest (and into the test's picture of it). */
async function write(name: string, offset: number, bytes: number[]): Promise<void> {
  await h.call('write', { name, offset, bytes });
  mirror.get(name)!.set(bytes, offset);
}

/** A data slot. */
const slot = (gref: number, id: number, size: number, offset = 0, flags = 0): RawTxRequest => ({ gref, id, size, offset, flags });
/** A GSO extra (valid unless told otherwise). */
const gso = (flags = 0, size = 1400, type = XEN_NETIF_GSO_TYPE_TCPV4): RawExtra => ({ kind: 'extra', type: XEN_NETIF_EXTRA_TYPE_GSO, flags, gso: { size, type } });
/** An extra of any type. */
const extra = (type: number, flags = 0): RawExtra => ({ kind: 'extra', type, flags, u: [1, 2, 3, 4, 5, 6] });

/**
 * A packet: a first slot (`first`: gref, offset, its fragment's length) and follow-on
 * fragments, ids `id`, `id + 1`, ...; the first slot's size is the total, `more_data`
 * chains them, `extras` go after the first slot (with `extra_info` on it).
 */
function packet(id: number, frags: Array<{ gref: number; offset?: number; len: number }>, extras: RawExtra[] = []): RawSlot[] {
  const total = frags.reduce((n, f) => n + f.len, 0);
  const out: RawSlot[] = [];
  frags.forEach((f, i) => {
    let flags = i < frags.length - 1 ? NETTXF_more_data : 0;
    if (i === 0 && extras.length > 0) flags |= NETTXF_extra_info;
    out.push(slot(f.gref, id + i, i === 0 ? total : f.len, f.offset ?? 0, flags));
    if (i === 0) out.push(...extras);
  });
  return out;
}

/** The frame a good packet carries, from the pages' known contents (a first fragment of total − Σ others). */
function frameOf(slots: RawSlot[]): number[] {
  const data = slots.filter((s): s is RawTxRequest => s.kind !== 'extra');
  const rest = data.slice(1).reduce((n, s) => n + s.size, 0);
  const out: number[] = [];
  data.forEach((s, i) => {
    const len = i === 0 ? s.size - rest : s.size;
    const bytes = mirror.get(nameOfGref.get(s.gref)!)!;
    out.push(...bytes.subarray(s.offset ?? 0, (s.offset ?? 0) + len));
  });
  return out;
}

/** dom0's counters of the hostile guest's vif `devid`. */
async function stats(devid: number): Promise<VifStats> {
  const s = (await m.dom0Stats()) as { vifs: Record<string, VifStats> };
  return s.vifs[`hostile/vif${h.domid}.${devid}`];
}
/** The hostile guest's view of vif `devid`'s ring indices (shared and private). */
async function indices(devid: number): Promise<{ tx: Indices; rx: Indices; events: number }> {
  return (await h.call('indices', { devid })) as { tx: Indices; rx: Indices; events: number };
}

/** Publishes `slots` on vif `devid` and returns the responses (exactly one per slot, none extra, none late). */
async function tx(devid: number, slots: RawSlot[]): Promise<RawTxResponse[]> {
  const r = (await h.call('tx', { devid, slots, timeoutMs: 5000 }, 10_000)) as { responses: RawTxResponse[]; timedOut: boolean; extra: number };
  expect(r.timedOut).toBe(false);
  expect(r.extra).toBe(0);
  expect(r.responses).toHaveLength(slots.length);
  for (const rsp of r.responses) expect([NETIF_RSP_OKAY, NETIF_RSP_ERROR, NETIF_RSP_NULL]).toContain(rsp.status);
  return r.responses;
}

/**
 * Asserts the responses to `slots`: each data slot's id answered exactly once with
 * `status(id)`, and exactly one NULL per extra-info slot.
 */
function expectStatuses(rsps: RawTxResponse[], slots: RawSlot[], status: (id: number) => number): void {
  const ids = slots.filter((s): s is RawTxRequest => s.kind !== 'extra').map((s) => s.id);
  for (const id of ids) {
    const found = rsps.filter((r) => r.id === id && r.status !== NETIF_RSP_NULL);
    expect(found, `responses for id ${id}`).toHaveLength(1);
    expect({ id, status: found[0].status }).toEqual({ id, status: status(id) });
  }
  expect(rsps.filter((r) => r.status === NETIF_RSP_NULL)).toHaveLength(slots.filter((s) => s.kind === 'extra').length);
}

/** Takes the frames the second bystander captured and expects exactly `frames`, in order. */
async function expectDelivered(frames: number[][]): Promise<void> {
  const got = (await b.call('captured', { min: frames.length, timeoutMs: frames.length > 0 ? 3000 : 0, idleMs: 150 }, 10_000)) as number[][];
  expect(got.map((f) => f.length)).toEqual(frames.map((f) => f.length));
  expect(got).toEqual(frames);
}

/** Both bystanders' echo counters. */
const pings = async () => {
  const [pa, pb] = (await Promise.all([a.call('loopCount', {}, 5000), b.call('loopCount', {}, 5000)])) as Pings[];
  return { a: pa, b: pb };
};

/**
 * Runs one hostile case and checks the machine around it: both bystanders' completed
 * round trips rise (within 5 s of the case's end: a stalled netback or bridge would
 * stall them for good), dom0 answers its stats request, and it is still running.
 */
async function underAttack<T>(what: string, fn: () => Promise<T>): Promise<T> {
  const before = await pings();
  const out = await fn();
  await eventually(async () => {
    const p = await pings();
    return p.a.completed > before.a.completed && p.b.completed > before.b.completed;
  }, 5000, `bystander round trips during ${what}`);
  expect((await domainInfo(m, 0))?.state).toBe('running');
  const t0 = Date.now();
  expect(Object.keys(((await m.dom0Stats()) as { vifs: object }).vifs).length).toBe(VIFS.length + 2);
  expect(Date.now() - t0).toBeLessThan(2000);
  return out;
}

/**
 * A fatal case on vif `devid`: a good packet first (answered OKAY, so the vif served),
 * then `attack`; the vif must be disabled with a protocol error matching `msg`, the
 * offending slots unanswered, and nothing more consumed afterwards, whatever the guest
 * publishes or however often it notifies.
 */
/**
 * A fatal case on vif `devid`: `attack` makes netback disable it with `msg`; `before`
 * frames are good packets the attack published ahead of the fatal one, which netback
 * still answers (OKAY) and forwards, as Linux submits the packets built before it.
 */
async function expectFatal(devid: number, msg: RegExp, attack: () => Promise<void>, before: number[][] = []): Promise<void> {
  await underAttack(`fatal case on vif ${devid}`, async () => {
    const good = packet(10, [{ gref: grefs[`h${devid}`], len: 60 }]);
    expectStatuses(await tx(devid, good), good, () => NETIF_RSP_OKAY);
    await expectDelivered([frameOf(good)]);
    const i0 = await indices(devid);
    const s0 = await stats(devid);
    await attack();
    await eventually(async () => (await stats(devid)).protocolError, 5000, `protocol error on vif ${devid}`);
    const dead = await stats(devid);
    expect(dead.protocolError).toMatch(msg);
    const iDead = await indices(devid);
    expect(iDead.tx.rspProd - i0.tx.rspProd).toBe(before.length); // the packets ahead of the fatal one, answered
    await expectDelivered(before);
    expect(dead.passes - s0.passes).toBeLessThan(50); // a few passes, no spinning on the bad ring
    expect(dead.state).toBe('Connected'); // as Linux: the vif is disabled, the XenBus state stays
    // The guest keeps notifying and publishes a well-formed packet (and plausible
    // indices) on both rings: netback must not look at this vif again.
    await h.call('hammer', { devid, n: 2000 });
    const idx = await indices(devid);
    await h.call('txSubmit', { devid, slots: packet(20, [{ gref: grefs[`h${devid}`], len: 60 }]) });
    await h.call('rxPost', { devid, reqs: [{ id: 1, gref: grefs[`rxg${devid}`] }], reqProd: idx.rx.reqProdPvt + 1 });
    await h.call('hammer', { devid, n: 2000 });
    await b.call('send', { frames: [[...header(macs[devid], macB), ...new Array(50).fill(7)]] });
    await new Promise((r) => setTimeout(r, 200));
    const t0 = Date.now();
    const after = await stats(devid);
    expect(Date.now() - t0).toBeLessThan(2000); // dom0 answers promptly: no loop on the dead vif
    for (const key of ['txSlots', 'slotCopies', 'passes', 'txPackets', 'txErrors', 'rxSlots', 'rxPackets'] as const) {
      expect(after[key], key).toBe(dead[key]);
    }
    const i1 = await indices(devid);
    expect(i1.tx.rspProd).toBe(iDead.tx.rspProd); // nothing answered after the vif was disabled
    expect(i1.rx.rspProd).toBe(i0.rx.rspProd);
    await expectDelivered([]);
  });
}

beforeAll(async () => {
  restoreStdout = captureDom0Console(dom0Lines);

  m = await Machine.boot({ requestTimeoutMs: 10_000, onConsole: () => {} });
  const bystander = (name: string) => m.createGuest({ name, memoryMiB: 32, vcpus: 1, kernel: guestPath('net-bystander.ts'), vifs: [{}] });
  [a, b] = await Promise.all([bystander('by-a'), bystander('by-b')]);
  [macA, macB] = ((await Promise.all([a.call('info'), b.call('info')])) as Array<{ mac: string }>).map((i) => i.mac);
  // Both directions, so the bridge has learnt both MACs before the hostile vifs join
  // (no frame of theirs is flooded into the hostile guest's rx queues).
  await a.call('pingLoop', { peer: macB, parallel: 2 });
  await b.call('pingLoop', { peer: macA, parallel: 2 });
  await eventually(async () => {
    const p = await pings();
    return p.a.completed > 5 && p.b.completed > 5;
  }, 10_000, 'bystanders exchanging frames');

  h = await m.createGuest({ name: 'hostile', memoryMiB: 32, vcpus: 1, kernel: guestPath('hostile-netfront.ts'), probeDevices: false });
  await h.call('info'); // its main runs: boot-time netfront probing is over, so the vifs below are ours by hand
  for (const v of VIFS) {
    await m.dom0Request({ type: 'addVif', domid: h.domid, vif: dom0Vif(h.domid, v.devid, { persistent: v.persistent }) });
    const c = (await h.call('connect', { devid: v.devid, persistent: v.persistent }, 15_000)) as { mac: string; txSize: number; rxSize: number; feature: { persistent: boolean } };
    expect(c).toMatchObject({ txSize: 256, rxSize: 256, feature: { persistent: v.persistent } });
    macs[v.devid] = c.mac;
  }
  for (const v of VIFS) {
    // Frame pages: a header to the second bystander at offset 0 (read-write and read-only grants).
    await page(`h${v.devid}`, 'rw', 0x40 + v.devid);
    await write(`h${v.devid}`, 0, header(macB, macs[v.devid]));
    await page(`rxg${v.devid}`, 'rw', 0x50 + v.devid);
  }
  for (const d of [0, 1]) {
    await page(`ro${d}`, 'ro', 0x48 + d);
    await write(`ro${d}`, 0, header(macB, macs[d]));
    // Headers elsewhere in the page, for the offset cases.
    await write(`h${d}`, 100, header(macB, macs[d]));
    await write(`h${d}`, 4082, header(macB, macs[d]));
    // A header to the vif itself: the bridge filters such frames (double fetch, flood).
    await page(`self${d}`, 'rw', 0x58 + d);
    await write(`self${d}`, 0, header(macs[d], macs[d]));
  }
  // Follow-on fragments: any bytes.
  for (let i = 0; i < 21; i++) {
    await page(`f${i}`, 'rw', 0x20 + i);
    await write(`f${i}`, 0, Array.from({ length: 64 }, (_, j) => (i * 31 + j) & 0xff));
  }
  // Never written by a correct netback:
  await page('c-granted', 'rw', 0xc1); // granted to dom0, never named in a request
  await page('c-none', 'none', 0xc2); // never granted
  await page('v-other', 'other', 0xa3, b.domid); // granted to the bystander, named by tx and rx requests
  await page('v-ended', 'ended', 0xa4); // granted and revoked, named by tx requests
  untouchable.push('c-granted', 'c-none', 'v-other', 'v-ended', 'f0', 'f1', 'h0', 'h1', 'ro0', 'ro1');
}, 60_000);

afterAll(async () => {
  restoreStdout();
  await a?.call('loopStop', {}).catch(() => undefined);
  await b?.call('loopStop', {}).catch(() => undefined);
  await m?.shutdown();
});

describe('netback against a hostile frontend', () => {
  it.each(MODES)('serves well-formed raw packets (the control: the raw writer speaks netif), $mode', async ({ devid }) => {
    await underAttack('control', async () => {
      const hd = grefs[`h${devid}`];
      const before = await stats(devid);
      expect(before.negotiated).toMatchObject({ persistent: devid === 1, sg: true });
      const pkts: RawSlot[][] = [
        packet(100, [{ gref: hd, len: 60 }]),
        // A read-only grant is fine: tx only reads.
        packet(101, [{ gref: grefs[`ro${devid}`], len: 1514 }]),
        packet(102, [{ gref: hd, offset: 100, len: 3000 }, { gref: grefs.f0, len: 1500 }, { gref: grefs.f1, offset: 96, len: 500 }]),
        packet(105, [{ gref: hd, len: 1000 }], [gso()]),
        // 19 slots: XEN_NETIF_NR_SLOTS_MIN (18) follow-on slots, which every backend must take.
        packet(110, [{ gref: hd, len: 100 }, ...Array.from({ length: 18 }, (_, i) => ({ gref: grefs[`f${i}`], len: 100 }))]),
        // An extra chain as long as allowed: 4 (one per extra type).
        packet(130, [{ gref: hd, len: 200 }], [gso(XEN_NETIF_EXTRA_FLAG_MORE), extra(XEN_NETIF_EXTRA_TYPE_HASH, XEN_NETIF_EXTRA_FLAG_MORE),
          extra(XEN_NETIF_EXTRA_TYPE_HASH, XEN_NETIF_EXTRA_FLAG_MORE), extra(XEN_NETIF_EXTRA_TYPE_HASH)]),
        // extra_info on a follow-on slot means nothing: the next slot is data.
        [slot(hd, 131, 300, 0, NETTXF_more_data), slot(grefs.f2, 132, 100, 0, NETTXF_more_data | NETTXF_extra_info), slot(grefs.f3, 133, 100)],
        // The smallest frame (an Ethernet header), and one ending exactly at its page's end.
        packet(134, [{ gref: hd, len: 14 }]),
        packet(135, [{ gref: hd, offset: 4082, len: 14 }]),
      ];
      const slots = pkts.flat();
      const rsps = await tx(devid, slots);
      expectStatuses(rsps, slots, () => NETIF_RSP_OKAY);
      // Each extra's NULL comes right after its packet's first response, in ring order.
      const first = rsps.findIndex((r) => r.id === 130);
      expect(rsps.slice(first + 1, first + 5).map((r) => r.status)).toEqual([1, 1, 1, 1]);
      await expectDelivered(pkts.map(frameOf));
      const after = await stats(devid);
      expect(after.txPackets - before.txPackets).toBe(pkts.length);
      expect(after.txErrors - before.txErrors).toBe(0);
      expect(after.slotCopies - before.slotCopies).toBe(slots.length);
      expect(await h.call('touched', { names: untouchable })).toEqual([]);
    });
  });

  it.each(MODES)('slot counts: 20 and 21 slots are dropped (ERROR on every slot); extras do not count, $mode', async ({ devid }) => {
    await underAttack('slot counts', async () => {
      const hd = grefs[`h${devid}`];
      const follow = (n: number) => Array.from({ length: n }, (_, i) => ({ gref: grefs[`f${i}`], len: 50 }));
      const p20 = packet(200, [{ gref: hd, len: 50 }, ...follow(19)]);
      const p21 = packet(220, [{ gref: hd, len: 50 }, ...follow(20)]);
      const good = packet(250, [{ gref: hd, len: 64 }]);
      const p19x = packet(260, [{ gref: hd, len: 50 }, ...follow(18)], [gso()]);
      expect(p20).toHaveLength(20);
      expect(p21).toHaveLength(21);
      const slots = [...p20, ...p21, ...good, ...p19x];
      const rsps = await tx(devid, slots);
      expectStatuses(rsps, slots, (id) => (id < 250 ? NETIF_RSP_ERROR : NETIF_RSP_OKAY));
      await expectDelivered([frameOf(good), frameOf(p19x)]);
    });
  });

  it.each(MODES)('sizes: fragments that do not add up, packets under 14 bytes, slots past their page, $mode', async ({ devid }) => {
    await underAttack('sizes', async () => {
      const hd = grefs[`h${devid}`];
      const f0 = grefs.f0;
      const bad: RawSlot[][] = [
        // First slot smaller than the sum of the others.
        [slot(hd, 300, 100, 0, NETTXF_more_data), slot(f0, 301, 80, 0, NETTXF_more_data), slot(grefs.f1, 302, 80)],
        // Equal to it: an empty first fragment.
        [slot(hd, 303, 160, 0, NETTXF_more_data), slot(f0, 304, 80, 0, NETTXF_more_data), slot(grefs.f1, 305, 80)],
        // Larger, so that the first fragment (4500 bytes) runs past its page.
        [slot(hd, 306, 5000, 0, NETTXF_more_data), slot(f0, 307, 500)],
        // Under an Ethernet header.
        [slot(hd, 310, 13)], [slot(hd, 311, 1)], [slot(hd, 312, 0)],
        // offset + size > 4096: in a first slot, by one byte, in a follow-on slot, and offset 65535.
        [slot(hd, 313, 200, 4000)], [slot(hd, 314, 14, 4083)],
        [slot(hd, 315, 110, 0, NETTXF_more_data), slot(f0, 316, 10, 4090)],
        [slot(hd, 317, 14, 0xffff)],
      ];
      const good: RawSlot[][] = [
        // Larger than the others and fitting: the first fragment is total − Σ others (2900 bytes).
        [slot(hd, 308, 3000, 0, NETTXF_more_data), slot(f0, 309, 100)],
        // A zero-length follow-on slot.
        [slot(hd, 318, 100, 0, NETTXF_more_data), slot(f0, 319, 0)],
      ];
      const slots = [...bad.slice(0, 3).flat(), ...good[0], ...bad.slice(3).flat(), ...good[1]];
      const okIds = new Set([308, 309, 318, 319]);
      const before = await stats(devid);
      expectStatuses(await tx(devid, slots), slots, (id) => (okIds.has(id) ? NETIF_RSP_OKAY : NETIF_RSP_ERROR));
      await expectDelivered(good.map(frameOf));
      const after = await stats(devid);
      expect(after.txErrors - before.txErrors).toBe(bad.length);
      expect(after.txPackets - before.txPackets).toBe(good.length);
    });
  });

  it.each(MODES)('grants: never granted, beyond the table, granted elsewhere, revoked; bad and good packets in one batch, $mode', async ({ devid }) => {
    await underAttack('grants', async () => {
      const hd = grefs[`h${devid}`];
      const pkts: Array<{ slots: RawSlot[]; ok: boolean }> = [
        { slots: packet(400, [{ gref: NEVER_GRANTED, len: 60 }]), ok: false },
        { slots: packet(401, [{ gref: BEYOND_TABLE, len: 60 }]), ok: false },
        { slots: packet(402, [{ gref: grefs['v-other'], len: 60 }]), ok: false },
        { slots: packet(403, [{ gref: grefs[`ro${devid}`], len: 60 }]), ok: true },
        { slots: packet(404, [{ gref: hd, len: 60 }, { gref: NEVER_GRANTED, len: 40 }]), ok: false },
        { slots: packet(406, [{ gref: BEYOND_TABLE, len: 60 }, { gref: grefs.f0, len: 40 }]), ok: false },
        { slots: packet(408, [{ gref: hd, len: 200 }, { gref: grefs.f1, len: 40 }]), ok: true },
        { slots: packet(410, [{ gref: grefs['v-ended'], len: 60 }]), ok: false },
        { slots: packet(411, [{ gref: hd, len: 90 }]), ok: true },
      ];
      const slots = pkts.flatMap((p) => p.slots);
      const okIds = new Set(pkts.filter((p) => p.ok).flatMap((p) => p.slots.map((s) => (s as RawTxRequest).id)));
      const before = await stats(devid);
      expectStatuses(await tx(devid, slots), slots, (id) => (okIds.has(id) ? NETIF_RSP_OKAY : NETIF_RSP_ERROR));
      await expectDelivered(pkts.filter((p) => p.ok).map((p) => frameOf(p.slots)));
      const after = await stats(devid);
      expect(after.txErrors - before.txErrors).toBe(pkts.filter((p) => !p.ok).length);
      if (devid === 0) {
        // Copy mode never maps a guest page: the good and the bad packets' data went
        // through the pass's batched GNTTABOP_copy, and only the bad copies failed (above).
        expect(after.grantMaps).toBe(0);
      }
    });
  });

  it.each(MODES)('extra-info: unknown and bad types are refused per packet (ERROR + NULL); flags other than MORE are ignored, $mode', async ({ devid }) => {
    await underAttack('extra-info', async () => {
      const hd = grefs[`h${devid}`];
      const pkts: Array<{ slots: RawSlot[]; ok: boolean }> = [
        { slots: packet(500, [{ gref: hd, len: 60 }], [extra(9)]), ok: false },
        { slots: packet(501, [{ gref: hd, len: 60 }], [extra(XEN_NETIF_EXTRA_TYPE_NONE)]), ok: false },
        { slots: packet(502, [{ gref: hd, len: 60 }], [gso(0, 0)]), ok: false },
        { slots: packet(503, [{ gref: hd, len: 60 }], [gso(0, 1400, 9)]), ok: false },
        // A GSO extra between the first slot and the follow-ons.
        { slots: packet(504, [{ gref: hd, len: 1000 }, { gref: grefs.f0, len: 600 }], [gso()]), ok: true },
        { slots: packet(506, [{ gref: hd, len: 60 }], [gso(XEN_NETIF_EXTRA_FLAG_MORE), extra(9, XEN_NETIF_EXTRA_FLAG_MORE), extra(XEN_NETIF_EXTRA_TYPE_HASH)]), ok: false },
        // Unknown extra flags without MORE end the chain.
        { slots: packet(507, [{ gref: hd, len: 70 }], [gso(0xfe)]), ok: true },
      ];
      const slots = pkts.flatMap((p) => p.slots);
      const okIds = new Set(pkts.filter((p) => p.ok).flatMap((p) => p.slots.filter((s) => s.kind !== 'extra').map((s) => (s as RawTxRequest).id)));
      expectStatuses(await tx(devid, slots), slots, (id) => (okIds.has(id) ? NETIF_RSP_OKAY : NETIF_RSP_ERROR));
      await expectDelivered(pkts.filter((p) => p.ok).map((p) => frameOf(p.slots)));
    });
  });

  it.each(MODES)('rx: buffers read-only, never granted, beyond the table or granted elsewhere get ERROR in their own slot; good ones get the frame and nothing more, $mode', async ({ devid }) => {
    await underAttack('rx buffers', async () => {
      const fill = 0x60 + devid;
      for (let i = 0; i < 4; i++) await page(`rx${devid}-${i}`, 'rw', fill);
      await page(`rx${devid}-ro`, 'ro', 0x62);
      const good = (i: number) => grefs[`rx${devid}-${i}`];
      const i0 = await indices(devid);
      const reqs = [
        { id: 600, gref: good(0) }, { id: 601, gref: grefs[`rx${devid}-ro`] }, { id: 602, gref: NEVER_GRANTED },
        { id: 603, gref: BEYOND_TABLE }, { id: 604, gref: grefs['v-other'] },
        { id: 605, gref: good(1) }, { id: 606, gref: good(2) }, { id: 607, gref: good(3) },
      ];
      await h.call('rxPost', { devid, reqs });
      const before = await stats(devid);
      const frames = [100, 101, 102, 103, 104, 9000].map((len, k) => {
        const f = [...header(macs[devid], macB)];
        for (let i = f.length; i < len; i++) f.push((k * 37 + i) & 0xff);
        return f;
      });
      await b.call('send', { frames });
      const r = (await h.call('rxPoll', { devid, n: 8, timeoutMs: 5000 }, 10_000)) as { responses: RawRxResponse[]; timedOut: boolean; extra: number };
      expect(r.timedOut).toBe(false);
      expect(r.extra).toBe(0);
      // Each response in the slot of the request that gave its buffer, with that request's id.
      expect(r.responses.map((x) => x.idx)).toEqual(reqs.map((_, i) => i0.rx.reqProdPvt + i));
      expect(r.responses.map((x) => ({ id: x.id, offset: x.offset, flags: x.flags, status: x.status }))).toEqual([
        { id: 600, offset: 0, flags: 0, status: 100 },
        ...[601, 602, 603, 604].map((id) => ({ id, offset: 0, flags: 0, status: NETIF_RSP_ERROR })),
        { id: 605, offset: 0, flags: NETRXF_more_data, status: 4096 },
        { id: 606, offset: 0, flags: NETRXF_more_data, status: 4096 },
        { id: 607, offset: 0, flags: 0, status: 9000 - 8192 },
      ]);
      const bytes = async (name: string) => (await h.call('pageBytes', { name })) as number[];
      const expectPage = async (name: string, part: number[]) => {
        const p = await bytes(name);
        expect(p.slice(0, part.length)).toEqual(part);
        expect(p.slice(part.length).every((x) => x === fill), `${name} past the frame`).toBe(true);
      };
      await expectPage(`rx${devid}-0`, frames[0]);
      await expectPage(`rx${devid}-1`, frames[5].slice(0, 4096));
      await expectPage(`rx${devid}-2`, frames[5].slice(4096, 8192));
      await expectPage(`rx${devid}-3`, frames[5].slice(8192));
      expect(await h.call('touched', { names: [`rx${devid}-ro`, 'v-other', 'c-none', 'c-granted'] })).toEqual([]);
      const after = await stats(devid);
      expect(after.rxPackets - before.rxPackets).toBe(2);
      expect(after.rxDropped - before.rxDropped).toBe(4);
      expect(after.protocolError).toBeNull();
      untouchable.push(`rx${devid}-ro`);
    });
  });

  it.each(MODES)('a slot rewritten after publication is copied out once and answered once (double fetch), $mode', async ({ devid }) => {
    await underAttack('double fetch', async () => {
      const before = await stats(devid);
      const self = grefs[`self${devid}`];
      // Every variant is a one-slot packet (flags 0), and so is any torn mix of them.
      const variants: RawTxRequest[] = [
        slot(self, 0, 60), slot(NEVER_GRANTED, 0, 60), slot(self, 0, 60, 4090), slot(self, 0, 10),
        slot(BEYOND_TABLE, 0, 1514), slot(self, 0, 1514),
      ];
      const rounds = (await h.call('doubleFetch', { devid, rounds: 40, variants, id: 0x7000, msPerRound: 1000 }, 30_000)) as
        Array<{ rewrites: number; timedOut: boolean; clobbered: boolean; response: RawTxResponse | null }>;
      expect(rounds).toHaveLength(40);
      for (const r of rounds) expect(r.timedOut).toBe(false);
      // The slot was being rewritten while netback served it.
      expect(rounds.reduce((n, r) => n + r.rewrites, 0)).toBeGreaterThan(40);
      rounds.forEach((r, i) => {
        expect(r.clobbered, `round ${i}`).toBe(false);
        expect([NETIF_RSP_OKAY, NETIF_RSP_ERROR], `round ${i}`).toContain(r.response!.status);
      });
      const after = await stats(devid);
      expect(after.protocolError).toBeNull();
      expect(after.slotCopies - before.slotCopies).toBe(40);
      expect(after.txPackets + after.txErrors - before.txPackets - before.txErrors).toBe(40);
      const idx = await indices(devid);
      expect(idx.tx.rspProd).toBe(idx.tx.rspCons);
      expect(idx.tx.rspProd).toBe(idx.tx.reqProd);
      await expectDelivered([]); // (the frames went to the vif's own MAC: filtered by the bridge)
    });
  });

  it('a flood: the tx ring kept full of valid packets for 3 s; every slot answered once, the bystanders keep exchanging frames, dom0 answers', async () => {
    const devid = 0;
    const self = grefs.self0;
    const packets: FloodPacket[] = [
      { slots: packet(0, [{ gref: self, len: 60 }]), expect: NETIF_RSP_OKAY },
      { slots: packet(0, [{ gref: self, len: 3000 }, { gref: grefs.f0, len: 1500 }, { gref: grefs.f1, len: 500 }]), expect: NETIF_RSP_OKAY },
      { slots: packet(0, [{ gref: self, len: 1514 }], [gso()]), expect: NETIF_RSP_OKAY },
    ];
    // (Every frame is addressed to the vif itself: the bridge learns and filters each one.)
    const before = await stats(devid);
    const p0 = await pings();
    const flood = h.call('flood', { devid, ms: 3000, packets }, 20_000) as Promise<{
      sentSlots: number; sentPackets: number; received: number; unknownIds: number; wrongStatus: number; unexpectedNull: number;
      statuses: Record<string, number>; fullPasses: number; drained: boolean; stillInFlight: number; extrasOut: number;
    }>;
    await new Promise((r) => setTimeout(r, 1000));
    const p1 = await pings();
    const t0 = Date.now();
    await m.dom0Stats();
    const statsMs = Date.now() - t0;
    await new Promise((r) => setTimeout(r, 1200));
    const p2 = await pings();
    const f = await flood;
    // The bystanders kept exchanging frames during the flood, not just after it.
    expect(p1.a.completed).toBeGreaterThan(p0.a.completed);
    expect(p1.b.completed).toBeGreaterThan(p0.b.completed);
    expect(p2.a.completed).toBeGreaterThan(p1.a.completed);
    expect(p2.b.completed).toBeGreaterThan(p1.b.completed);
    expect(statsMs).toBeLessThan(2000);
    expect(f.drained).toBe(true);
    expect(f.stillInFlight).toBe(0);
    expect(f.extrasOut).toBe(0);
    expect(f.unknownIds).toBe(0);
    expect(f.wrongStatus).toBe(0);
    expect(f.unexpectedNull).toBe(0);
    expect(f.received).toBe(f.sentSlots);
    expect(f.sentPackets).toBeGreaterThan(1000);
    expect(f.fullPasses).toBeGreaterThan(10);
    expect(Object.keys(f.statuses).sort()).toEqual([String(NETIF_RSP_OKAY), String(NETIF_RSP_NULL)].sort());
    const after = await stats(devid);
    expect(after.protocolError).toBeNull();
    expect(after.txPackets - before.txPackets).toBe(f.sentPackets);
    expect(after.slotCopies - before.slotCopies).toBe(f.sentSlots);
    await expectDelivered([]);
    expect((await domainInfo(m, 0))?.state).toBe('running');
  });

  describe('fatal: the vif is disabled, nothing more is consumed from it', () => {
    it.each([{ mode: 'grant copy', devid: 2 }, { mode: 'persistent', devid: 3 }])('a packet of 22 slots (21 follow-ons, over fatal_skb_slots), $mode', async ({ devid }) => {
      await expectFatal(devid, /packet of more than 21 slots/, async () => {
        const p22 = packet(30, [{ gref: grefs[`h${devid}`], len: 50 }, ...Array.from({ length: 21 }, (_, i) => ({ gref: grefs[`f${i}`], len: 50 }))]);
        expect(p22).toHaveLength(22);
        await h.call('txSubmit', { devid, slots: p22 });
      });
    });

    it('an extra-info chain of 5 (MORE on each of the first 4: more than there are extra types)', async () => {
      await expectFatal(4, /extra-info chain longer/, async () => {
        const more = XEN_NETIF_EXTRA_FLAG_MORE;
        await h.call('txSubmit', { devid: 4, slots: packet(30, [{ gref: grefs.h4, len: 60 }], [gso(more), gso(more), gso(more), gso(more), gso()]) });
      });
    });

    it('a tx producer index beyond the ring (req_prod − rsp_prod > 256)', async () => {
      await expectFatal(5, /impossible req_prod/, async () => {
        const idx = await indices(5);
        await h.call('txSubmit', { devid: 5, slots: [], reqProd: idx.tx.reqProdPvt + 300 });
      });
    });

    it('an rx producer index beyond the ring, found when a frame comes for the vif', async () => {
      await expectFatal(6, /impossible req_prod/, async () => {
        await h.call('rxPost', { devid: 6, reqs: [], reqProd: 1000 });
        await b.call('send', { frames: [[...header(macs[6], macB), ...new Array(50).fill(1)]] });
      });
    });

    it('a packet published in part (its last published slot says more_data) is fatal, and netback never spins on it', async () => {
      const ahead = packet(25, [{ gref: grefs.h7, len: 60 }]);
      await expectFatal(7, /slots run past req_prod \(published in part\)/, async () => {
        const p = packet(30, [{ gref: grefs.h7, len: 50 }, { gref: grefs.f0, len: 50 }, { gref: grefs.f1, len: 50 }]);
        // A good packet, then only the first two slots of the next: the second says more follows.
        await h.call('txSubmit', { devid: 7, slots: [...ahead, ...p.slice(0, 2)] });
      }, [frameOf(ahead)]);
    });

    it('an extra-info chain published in part (the first slot says extra_info, nothing follows) is fatal too', async () => {
      await expectFatal(8, /extra-info slots run past req_prod \(published in part\)/, async () => {
        const p = packet(30, [{ gref: grefs.h8, len: 60 }], [gso()]);
        await h.call('txSubmit', { devid: 8, slots: p.slice(0, 1) });
      });
    });
  });

  it('over the whole suite: every slot answered and copied once, untouchable pages intact, the audit clean, dom0 quiet, the bystanders never failed', async () => {
    for (const devid of [0, 1]) {
      const s = await stats(devid);
      const idx = await indices(devid);
      expect(s.protocolError, `vif ${devid}`).toBeNull();
      expect(s.state).toBe('Connected');
      expect(idx.tx.reqProd).toBeGreaterThan(0);
      expect(idx.tx.rspProd, `vif ${devid}`).toBe(idx.tx.reqProd); // every slot answered...
      expect(idx.tx.rspCons, `vif ${devid}`).toBe(idx.tx.rspProd); // ...and each answer was read, none extra
      expect(s.slotCopies, `vif ${devid}`).toBe(idx.tx.reqProd); // each slot copied out of the ring once
      expect(idx.rx.rspProd).toBe(idx.rx.reqProd);
    }
    for (const devid of FATAL) expect((await stats(devid)).protocolError, `vif ${devid}`).not.toBeNull();
    expect(await h.call('touched', { names: untouchable })).toEqual([]);
    const audit = await m.audit();
    expect(audit.violations).toEqual([]);
    // dom0 never got a handle to a page no request named (c-*), nor to one it may not
    // map (v-other: granted to the bystander; v-ended: revoked; rx*-ro: read-only, named
    // by rx requests only).
    const dom0Got = new Set(audit.log.filter((e) => e.domid === 0 && e.owner === h.domid).map((e) => e.extentBase));
    for (const name of ['c-granted', 'c-none', 'v-other', 'v-ended', 'rx0-ro', 'rx1-ro']) expect(dom0Got.has(mfns[name]), name).toBe(false);
    expect(dom0Got.has(mfns.h1)).toBe(true); // (the log does record the pages netback mapped: persistent mode)
    // dom0 printed one protocol error per fatal vif and nothing else.
    expect(dom0Lines).toHaveLength(FATAL.length);
    for (const devid of FATAL) {
      expect(dom0Lines.filter((l) => l.includes(`netback vif${h.domid}.${devid}: frontend dom${h.domid} broke the protocol, queue disabled`))).toHaveLength(1);
    }
    const p = await pings();
    for (const x of [p.a, p.b]) {
      expect(x.bad).toBe(0);
      expect(x.lost).toBe(0);
      expect(x.sendErrors).toBe(0);
      expect(x.rxErrors).toBe(0);
      expect(x.broken).toBe(false);
      expect(x.completed).toBeGreaterThan(100);
    }
  });
});
