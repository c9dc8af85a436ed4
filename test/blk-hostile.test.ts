// Adversarial suite: a hostile frontend against blkback, between real worker domains.
//
// The hostile guest (test/guests/hostile-blkfront.ts) does the blkif handshake by hand
// and then writes raw bytes into its ring slots and publishes req_prod itself. Cases:
// a producer index beyond the ring; nr_segments 0 on a READ, 12 on a direct request,
// over the advertised 256 on an INDIRECT; first_sect > last_sect and last_sect > 7;
// sectors beyond the disk's end and sums near 2^53 (and a sector_number at or above
// 2^53, which pvio's codec cannot represent); grant refs never granted, beyond the
// table, granted to another domain, read-only for a READ; a bad indirect page gref
// and bad descriptors inside an indirect page; unknown operations; WRITEs to a
// read-only disk; the same gref twice in one request with persistent grants; a
// request rewritten after publication (double fetch); a flood that keeps the ring full.
// Also: a WRITE_BARRIER behind other requests of one batch (it used to wait for the
// next notification with a synchronous store), and a mix of bad and good requests on
// an asynchronous store that answers out of order.
//
// Every case gets BLKIF_RSP_ERROR / BLKIF_RSP_EOPNOTSUPP with its id (padding zeroed,
// exactly one response per request), or, for an impossible req_prod or an
// unrepresentable u64, a device disabled with a protocol error and nothing more
// consumed from it. Throughout: a bystander guest's disk keeps serving (its completed
// reads counter rises during every case), dom0 stays up and answers, its console
// shows nothing but the expected "broke the protocol" lines, pages of the hostile
// guest outside a request's grants (and pages of refused requests) keep their bytes,
// the handle audit is clean, and every ring slot blkback consumed was copied exactly
// once (BackRing.counters.requestCopies).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Machine, type GuestHandle } from '../toolstack/machine.ts';
import {
  BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_DISCARD, BLKIF_OP_RESERVED_1,
  BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP, VDISK_READONLY,
} from '../rings/blkif.ts';
import { rpcGuest, guestPath, eventually, domainInfo, captureDom0Console } from './helpers.ts';
import type { RawRequest, RawResponse, RawSegment } from './guests/hostile-blkfront.ts';

const dir = mkdtempSync(join(tmpdir(), 'pvio-hostile-'));
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const DISK_BYTES = 1 << 20;
const SECTORS = DISK_BYTES / 512;
const TWO53 = 2 ** 53;
/** A grant ref the hostile guest never grants (its table has 32768 entries; it grants a few dozen). */
const NEVER_GRANTED = 20_000;
/** A grant ref beyond any grant table. */
const BEYOND_TABLE = 0xffff_ffff;

function image(name: string, bytes: number): { path: string; data: Buffer } {
  const data = randomBytes(bytes);
  const path = join(dir, name);
  writeFileSync(path, data);
  return { path, data };
}
const virtualDevice = (vdev: string) => (202 << 8) | ((vdev.charCodeAt(3) - 97) << 4);

type Conn = {
  size: number; sectors: number; info: number;
  feature: { persistent: boolean; maxIndirectSegments: number; flush: boolean; barrier: boolean; discard: boolean };
};
type Io = { responses: RawResponse[]; timedOut: boolean; extra: number };
type DiskStats = {
  state: string; inFlight: number; requests: number; errors: number; protocolError: string | null; slotsConsumed: number; slotCopies: number;
  negotiated: { persistent: boolean } | null;
};
type ReadCount = { completed: number; errors: number; lastError: string };

let m: Machine;
let bystander: GuestHandle;
let h: GuestHandle;
const conns: Record<string, Conn> = {};
const images: Record<string, { path: string; data: Buffer }> = {};
const grefs: Record<string, number> = {};
const mfns: Record<string, number> = {};
/** Lines dom0 itself printed (its own console is the worker's stdout: `(Domain-0) ...`). */
const dom0Lines: string[] = [];
let restoreStdout = () => {};

/** Pages that a correct blkback never writes: canaries and the targets of refused requests. */
const untouchable: string[] = [];

async function page(name: string, grant: 'rw' | 'ro' | 'none' | 'other', fill: number, domid?: number): Promise<number> {
  const r = (await h.call('page', { name, grant, fill, domid })) as { gref: number | null; mfn: number };
  grefs[name] = r.gref ?? -1;
  mfns[name] = r.mfn;
  return r.gref ?? -1;
}

async function attach(vdev: string, opts: { readOnly?: boolean; persistent?: boolean; asyncStore?: boolean } = {}): Promise<Conn> {
  images[vdev] = image(`${vdev}.img`, DISK_BYTES);
  await m.dom0Request({
    type: 'addDisk', domid: h.domid, vdev, virtualDevice: virtualDevice(vdev), path: images[vdev].path, readOnly: opts.readOnly ?? false,
    asyncStore: opts.asyncStore,
  });
  conns[vdev] = (await h.call('connect', { devid: virtualDevice(vdev), persistent: opts.persistent ?? false }, 15_000)) as Conn;
  return conns[vdev];
}

async function stats(vdev: string): Promise<DiskStats> {
  const s = (await m.dom0Stats()) as { disks: Record<string, DiskStats> };
  return s.disks[`hostile/${vdev}`];
}

/** Publishes `reqs` on `vdev` and returns the responses (exactly one each, none extra, none late). */
async function io(vdev: string, reqs: RawRequest[]): Promise<RawResponse[]> {
  const r = (await h.call('io', { devid: virtualDevice(vdev), reqs, timeoutMs: 5000 }, 10_000)) as Io;
  expect(r.timedOut).toBe(false);
  expect(r.extra).toBe(0);
  expect(r.responses).toHaveLength(reqs.length);
  return r.responses;
}

/** The response for `id` among `rsps`: exactly one, with zeroed padding. */
function rspFor(rsps: RawResponse[], id: number): RawResponse {
  const found = rsps.filter((r) => r.id === id);
  expect(found, `responses for id ${id}`).toHaveLength(1);
  expect(found[0].padZero).toBe(true);
  return found[0];
}

/** Asserts each `[id, operation, status]` got exactly that response. */
function expectAll(rsps: RawResponse[], want: Array<[number, number, number]>): void {
  for (const [id, operation, status] of want) {
    expect({ id, ...pick(rspFor(rsps, id)) }).toEqual({ id, operation, status });
  }
}
const pick = (r: RawResponse) => ({ operation: r.operation, status: r.status });

const readCount = async () => (await bystander.call('readLoopCount', { name: 'xvda' }, 5000)) as ReadCount;

/**
 * Runs one hostile case and checks the machine around it: the bystander's completed
 * reads rise (within 5 s of the case's end: a stalled blkback would stall them for
 * good), dom0 still answers within its deadline, and dom0 is still running.
 */
async function underAttack<T>(what: string, fn: () => Promise<T>): Promise<T> {
  const before = (await readCount()).completed;
  const out = await fn();
  await eventually(async () => (await readCount()).completed > before, 5000, `bystander reads during ${what}`);
  expect((await domainInfo(m, 0))?.state).toBe('running');
  expect(Object.keys(((await m.dom0Stats()) as { disks: object }).disks).length).toBeGreaterThan(0);
  return out;
}

const rd = (id: number, sector: number, segs: RawSegment[], nrSegments?: number): RawRequest =>
  ({ kind: 'rw', operation: BLKIF_OP_READ, id, sector, segs, nrSegments });
const wr = (id: number, sector: number, segs: RawSegment[], nrSegments?: number): RawRequest =>
  ({ kind: 'rw', operation: BLKIF_OP_WRITE, id, sector, segs, nrSegments });
const seg = (gref: number, first = 0, last = 7): RawSegment => ({ gref, first, last });

beforeAll(async () => {
  restoreStdout = captureDom0Console(dom0Lines);

  m = await Machine.boot({ requestTimeoutMs: 10_000, onConsole: () => {} });
  const by = image('bystander.img', DISK_BYTES);
  bystander = await rpcGuest(m, 'bystander', { disks: [{ path: by.path, vdev: 'xvda', virtualDevice: virtualDevice('xvda'), readOnly: true }] });
  await bystander.call('readLoop', { name: 'xvda', parallel: 4 });
  h = await m.createGuest({ name: 'hostile', memoryMiB: 32, vcpus: 1, kernel: guestPath('hostile-blkfront.ts'), probeDevices: false });
  await h.call('info'); // its main runs: boot-time blkfront probing is over, so the disks below are ours by hand

  // xvda: read-write, per-request grants. xvdb: read-only. xvdc: persistent grants.
  // xvdd, xvde: each broken on purpose by one fatal case. xvdf: an asynchronous store
  // (completions by id through libuv, out of order).
  await attach('xvda');
  await attach('xvdb', { readOnly: true });
  await attach('xvdc', { persistent: true });
  await attach('xvdd');
  await attach('xvde');
  await attach('xvdf', { asyncStore: true });

  await page('data', 'rw', 0x11);
  for (let i = 0; i < 16; i++) await page(`d${i}`, 'rw', 0x12);
  await page('ind', 'rw', 0x13);
  await page('ind-ro', 'ro', 0x14);
  await page('wsrc', 'ro', 0x5a);
  await page('pdata', 'rw', 0x15);
  // Never written by a correct blkback:
  await page('c-granted', 'rw', 0xc1); // granted to dom0, never named in a request
  await page('c-none', 'none', 0xc2); // never granted
  await page('v-ro', 'ro', 0xa2); // granted read-only, named by READs
  await page('v-other', 'other', 0xa3, bystander.domid); // granted to the bystander, named by READs
  await page('v-bad', 'rw', 0xa4); // named by READs that fail validation
  await page('v-mixed', 'rw', 0xa5); // the good segment of READs whose other segment is bad
  for (let i = 0; i < 5; i++) await page(`v-ind${i}`, 'rw', 0xb0 + i); // indirect pages with bad descriptors
  await page('v-pers', 'rw', 0xa6); // persistent: named twice in one request
  untouchable.push('c-granted', 'c-none', 'v-ro', 'v-other', 'v-bad', 'v-mixed', 'v-pers');
}, 60_000);

afterAll(async () => {
  restoreStdout();
  await bystander?.call('readLoopStop', { name: 'xvda' }).catch(() => undefined);
  await m?.shutdown();
  rmSync(dir, { recursive: true, force: true });
});

describe('blkback against a hostile frontend', () => {
  it('serves well-formed raw requests (the control: the raw writer speaks blkif)', async () => {
    expect(conns.xvda).toMatchObject({ size: 32, sectors: SECTORS, info: 0 });
    expect(conns.xvda.feature.maxIndirectSegments).toBe(256);
    expect(conns.xvdb.info & VDISK_READONLY).toBe(VDISK_READONLY);
    await underAttack('control', async () => {
      const img = images.xvda.data;
      const dsegs = Array.from({ length: 16 }, (_, i) => seg(grefs[`d${i}`]));
      await h.call('descs', { name: 'ind', descs: dsegs });
      await h.call('descs', { name: 'ind-ro', descs: dsegs.slice(0, 2) });
      const rsps = await io('xvda', [
        rd(1, 8, [seg(grefs.data)]),
        // The last sector of the disk: in range.
        rd(2, SECTORS - 1, [seg(grefs.d0, 0, 0)]),
        { kind: 'indirect', indirectOp: BLKIF_OP_READ, nrSegments: 16, id: 3, sector: 64, grefs: [grefs.ind] },
      ]);
      expectAll(rsps, [[1, BLKIF_OP_READ, BLKIF_RSP_OKAY], [2, BLKIF_OP_READ, BLKIF_RSP_OKAY], [3, BLKIF_OP_READ, BLKIF_RSP_OKAY]]);
      expect(await h.call('pageSha', { name: 'data' })).toBe(sha(img.subarray(8 * 512, 16 * 512)));
      for (let i = 0; i < 16; i++) {
        expect(await h.call('pageSha', { name: `d${i}` })).toBe(sha(img.subarray((64 + 8 * i) * 512, (72 + 8 * i) * 512)));
      }
      // An indirect page granted read-only and a WRITE from a read-only grant are fine:
      // blkback maps both read-only when grants are not persistent.
      const w = await io('xvda', [
        { kind: 'indirect', indirectOp: BLKIF_OP_READ, nrSegments: 2, id: 4, sector: 0, grefs: [grefs['ind-ro']] },
        wr(5, 1000, [seg(grefs.wsrc)]),
      ]);
      expectAll(w, [[4, BLKIF_OP_READ, BLKIF_RSP_OKAY], [5, BLKIF_OP_WRITE, BLKIF_RSP_OKAY]]);
      expect(sha(readFileSync(images.xvda.path).subarray(1000 * 512, 1008 * 512))).toBe(sha(new Uint8Array(4096).fill(0x5a)));
    });
  });

  it('a producer index beyond the ring disables that ring only, and blkback does not spin on it', async () => {
    await underAttack('req_prod overflow', async () => {
      const devid = virtualDevice('xvdd');
      expectAll(await io('xvdd', [rd(10, 0, [seg(grefs.data)])]), [[10, BLKIF_OP_READ, BLKIF_RSP_OKAY]]);
      const before = await stats('xvdd');
      // 40 requests claimed on a 32-slot ring with nothing outstanding: req_prod - req_cons > size.
      const idx = (await h.call('indices', { devid })) as { reqProdPvt: number; rspProd: number };
      await h.call('submit', { devid, reqs: [rd(11, 0, [seg(grefs.data)])], reqProd: idx.reqProdPvt + 40 });
      await eventually(async () => (await stats('xvdd')).protocolError, 5000, 'protocol error on xvdd');
      expect((await stats('xvdd')).protocolError).toMatch(/impossible req_prod/);
      // The hostile guest keeps notifying, and even publishes a plausible req_prod again:
      // blkback must not look at that ring again (nothing consumed, nothing answered).
      await h.call('hammer', { devid, n: 2000 });
      await h.call('submit', { devid, reqs: [], reqProd: idx.reqProdPvt + 1 });
      await h.call('hammer', { devid, n: 2000 });
      const t0 = Date.now();
      const after = await stats('xvdd');
      expect(Date.now() - t0).toBeLessThan(2000); // dom0 answers promptly: no loop on the dead ring
      expect(after.requests).toBe(before.requests);
      expect(after.slotsConsumed).toBe(before.slotsConsumed);
      expect(((await h.call('indices', { devid })) as { rspProd: number }).rspProd).toBe(idx.rspProd);
      // The same frontend's other disks still serve.
      expectAll(await io('xvda', [rd(12, 0, [seg(grefs.data)])]), [[12, BLKIF_OP_READ, BLKIF_RSP_OKAY]]);
    });
  });

  it('segment counts: 0 on a READ, 12 (and 255) on a direct request, 0 and 257 on an INDIRECT, bad inner operations', async () => {
    await underAttack('segment counts', async () => {
      const v = grefs['v-bad'];
      const twelve = Array.from({ length: 11 }, () => seg(v));
      await h.call('descs', { name: 'v-ind0', descs: Array.from({ length: 257 }, () => seg(v)) });
      const ind = grefs['v-ind0'];
      const f = conns.xvda.feature;
      const rsps = await io('xvda', [
        rd(20, 0, [], 0),
        rd(21, 0, twelve, 12),
        wr(22, 0, twelve, 12),
        rd(23, 0, twelve, 255),
        { kind: 'indirect', indirectOp: BLKIF_OP_READ, nrSegments: 0, id: 24, sector: 0, grefs: [ind] },
        { kind: 'indirect', indirectOp: BLKIF_OP_READ, nrSegments: 257, id: 25, sector: 0, grefs: [ind] },
        { kind: 'indirect', indirectOp: BLKIF_OP_READ, nrSegments: 4096, id: 26, sector: 0, grefs: [ind, ind, ind, ind, ind, ind, ind, ind] },
        { kind: 'indirect', indirectOp: BLKIF_OP_FLUSH_DISKCACHE, nrSegments: 1, id: 27, sector: 0, grefs: [ind] },
        { kind: 'indirect', indirectOp: 0xff, nrSegments: 1, id: 28, sector: 0, grefs: [ind] },
        { kind: 'rw', operation: BLKIF_OP_WRITE_BARRIER, id: 29, sector: 0, segs: twelve, nrSegments: 12 },
        { kind: 'rw', operation: BLKIF_OP_FLUSH_DISKCACHE, id: 30, sector: 0, segs: [seg(v)] },
      ]);
      expect(f.barrier && f.flush).toBe(true);
      expectAll(rsps, [
        [20, BLKIF_OP_READ, BLKIF_RSP_ERROR], [21, BLKIF_OP_READ, BLKIF_RSP_ERROR], [22, BLKIF_OP_WRITE, BLKIF_RSP_ERROR],
        [23, BLKIF_OP_READ, BLKIF_RSP_ERROR],
        // An indirect request is answered with its inner operation, as Linux does.
        [24, BLKIF_OP_READ, BLKIF_RSP_ERROR], [25, BLKIF_OP_READ, BLKIF_RSP_ERROR], [26, BLKIF_OP_READ, BLKIF_RSP_ERROR],
        [27, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_RSP_ERROR], [28, 0xff, BLKIF_RSP_ERROR],
        [29, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_ERROR], [30, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_RSP_ERROR],
      ]);
      expect(await h.call('touched', { names: ['v-bad'] })).toEqual([]);
    });
  });

  it('sector ranges: first_sect > last_sect, last_sect > 7, beyond the disk\'s end, sums near 2^53', async () => {
    await underAttack('sector ranges', async () => {
      const v = grefs['v-bad'];
      await h.call('descs', { name: 'v-ind1', descs: [seg(v), seg(v)] });
      const f = conns.xvda.feature;
      const rsps = await io('xvda', [
        rd(40, 0, [seg(v, 3, 2)]),
        rd(41, 0, [seg(v, 0, 8)]),
        rd(42, 0, [seg(v, 0, 255)]),
        rd(43, 0, [seg(grefs['v-mixed']), seg(v, 7, 6)]),
        rd(44, SECTORS - 7, [seg(v)]), // one sector past the end
        rd(45, SECTORS, [seg(v, 0, 0)]), // starts at the end
        rd(46, TWO53 - 8, [seg(v)]), // ends exactly at 2^53
        rd(47, TWO53 - 1, [seg(v)]), // the sum is not representable
        wr(48, TWO53 - 1, [seg(v, 0, 0)]),
        { kind: 'indirect', indirectOp: BLKIF_OP_READ, nrSegments: 2, id: 49, sector: TWO53 - 1, grefs: [grefs['v-ind1']] },
        { kind: 'discard', flag: 0, id: 50, sector: TWO53 - 1, nrSectors: TWO53 - 1 },
        { kind: 'discard', flag: 0, id: 51, sector: SECTORS - 8, nrSectors: 16 },
        // Zero sectors at the very end: in range, nothing to do.
        { kind: 'discard', flag: 0, id: 52, sector: SECTORS, nrSectors: 0 },
      ]);
      const discard = f.discard ? BLKIF_RSP_ERROR : BLKIF_RSP_EOPNOTSUPP;
      expectAll(rsps, [[52, BLKIF_OP_DISCARD, f.discard ? BLKIF_RSP_OKAY : BLKIF_RSP_EOPNOTSUPP]]);
      expectAll(rsps, [
        [40, BLKIF_OP_READ, BLKIF_RSP_ERROR], [41, BLKIF_OP_READ, BLKIF_RSP_ERROR], [42, BLKIF_OP_READ, BLKIF_RSP_ERROR],
        [43, BLKIF_OP_READ, BLKIF_RSP_ERROR], [44, BLKIF_OP_READ, BLKIF_RSP_ERROR], [45, BLKIF_OP_READ, BLKIF_RSP_ERROR],
        [46, BLKIF_OP_READ, BLKIF_RSP_ERROR], [47, BLKIF_OP_READ, BLKIF_RSP_ERROR], [48, BLKIF_OP_WRITE, BLKIF_RSP_ERROR],
        [49, BLKIF_OP_READ, BLKIF_RSP_ERROR], [50, BLKIF_OP_DISCARD, discard], [51, BLKIF_OP_DISCARD, discard],
      ]);
      expect(await h.call('touched', { names: ['v-bad', 'v-mixed'] })).toEqual([]);
      expect(sha(readFileSync(images.xvda.path).subarray((SECTORS - 8) * 512))).toBe(sha(images.xvda.data.subarray((SECTORS - 8) * 512)));
    });
  });

  it('a sector_number at or above 2^53 (not representable without BigInt) disables the device', async () => {
    await underAttack('u64 sector', async () => {
      const rsp = (await h.call('io', {
        devid: virtualDevice('xvde'), timeoutMs: 300,
        reqs: [{ kind: 'rw', operation: BLKIF_OP_READ, id: 60, sector: { hi: 0xffff_ffff, lo: 0xffff_fff8 }, segs: [seg(grefs['v-bad'])] }],
      })) as Io;
      // pvio's codec refuses u64 values >= 2^53 as garbage (DESIGN.md: no BigInt on the
      // data path); Linux would answer BLKIF_RSP_ERROR (the u64 sum wraps, `end < start`).
      expect(rsp.responses).toEqual([]);
      await eventually(async () => (await stats('xvde')).protocolError, 5000, 'protocol error on xvde');
      expect((await stats('xvde')).protocolError).toMatch(/2\^53/);
      expect(await h.call('touched', { names: ['v-bad'] })).toEqual([]);
      expectAll(await io('xvda', [rd(61, 0, [seg(grefs.data)])]), [[61, BLKIF_OP_READ, BLKIF_RSP_OKAY]]);
    });
  });

  it('grants: never granted, beyond the table, granted to another domain, read-only for a READ', async () => {
    await underAttack('grants', async () => {
      const rsps = await io('xvda', [
        rd(70, 0, [seg(NEVER_GRANTED)]),
        rd(71, 0, [seg(BEYOND_TABLE)]),
        rd(72, 0, [seg(grefs['v-other'])]),
        rd(73, 0, [seg(grefs['v-ro'])]),
        rd(74, 0, [seg(grefs['v-mixed']), seg(NEVER_GRANTED)]),
        rd(75, 0, [seg(grefs['v-mixed']), seg(grefs['v-ro'])]),
        wr(76, 0, [seg(grefs['v-other'])]),
        wr(77, 0, [seg(NEVER_GRANTED)]),
      ]);
      expectAll(rsps, [
        [70, BLKIF_OP_READ, BLKIF_RSP_ERROR], [71, BLKIF_OP_READ, BLKIF_RSP_ERROR], [72, BLKIF_OP_READ, BLKIF_RSP_ERROR],
        [73, BLKIF_OP_READ, BLKIF_RSP_ERROR], [74, BLKIF_OP_READ, BLKIF_RSP_ERROR], [75, BLKIF_OP_READ, BLKIF_RSP_ERROR],
        [76, BLKIF_OP_WRITE, BLKIF_RSP_ERROR], [77, BLKIF_OP_WRITE, BLKIF_RSP_ERROR],
      ]);
      expect(await h.call('touched', { names: ['v-other', 'v-ro', 'v-mixed'] })).toEqual([]);
      expect(sha(readFileSync(images.xvda.path).subarray(0, 4096))).toBe(sha(images.xvda.data.subarray(0, 4096)));
    });
  });

  it('indirect pages: a gref never granted or granted elsewhere, and bad descriptors inside a granted page', async () => {
    await underAttack('indirect', async () => {
      const good = seg(grefs['v-mixed']);
      await h.call('descs', { name: 'v-ind1', descs: [good, seg(grefs['v-bad'], 5, 4)] });
      await h.call('descs', { name: 'v-ind2', descs: [good, seg(grefs['v-bad'], 0, 8)] });
      await h.call('descs', { name: 'v-ind3', descs: [good, seg(NEVER_GRANTED)] });
      await h.call('descs', { name: 'v-ind4', descs: [good, seg(grefs['v-ro'])] });
      const ind = (id: number, g: number, nrSegments = 2): RawRequest => ({ kind: 'indirect', indirectOp: BLKIF_OP_READ, nrSegments, id, sector: 0, grefs: [g] });
      const rsps = await io('xvda', [
        ind(80, NEVER_GRANTED),
        ind(81, BEYOND_TABLE),
        ind(82, grefs['v-other']),
        ind(83, grefs['v-ind1']),
        ind(84, grefs['v-ind2']),
        ind(85, grefs['v-ind3']),
        ind(86, grefs['v-ind4']),
        // 2 pages' worth of segments, the second indirect gref never granted.
        ind(87, grefs['v-ind1'], 600),
      ]);
      expectAll(rsps, [80, 81, 82, 83, 84, 85, 86].map((id) => [id, BLKIF_OP_READ, BLKIF_RSP_ERROR] as [number, number, number]));
      expectAll(rsps, [[87, BLKIF_OP_READ, BLKIF_RSP_ERROR]]);
      expect(await h.call('touched', { names: ['v-mixed', 'v-bad', 'v-ro'] })).toEqual([]);
    });
  });

  it('unknown operations (4, 7, 255) and unoffered ones get EOPNOTSUPP with their id', async () => {
    await underAttack('unknown operations', async () => {
      const v = seg(grefs['v-bad']);
      const rsps = await io('xvda', [
        { kind: 'rw', operation: BLKIF_OP_RESERVED_1, id: 90, sector: 0, segs: [v] },
        { kind: 'rw', operation: 7, id: 91, sector: 0, segs: [v] },
        { kind: 'rw', operation: 0xff, id: 92, sector: 0, segs: [v] },
        { kind: 'rw', operation: 0xff, id: 93, sector: TWO53 - 1, segs: [], nrSegments: 0 },
        // A secure discard is never offered (discard-secure=0).
        { kind: 'discard', flag: 1, id: 94, sector: 0, nrSectors: 8 },
      ]);
      expectAll(rsps, [
        [90, BLKIF_OP_RESERVED_1, BLKIF_RSP_EOPNOTSUPP], [91, 7, BLKIF_RSP_EOPNOTSUPP], [92, 0xff, BLKIF_RSP_EOPNOTSUPP],
        [93, 0xff, BLKIF_RSP_EOPNOTSUPP], [94, BLKIF_OP_DISCARD, BLKIF_RSP_EOPNOTSUPP],
      ]);
      expect(await h.call('touched', { names: ['v-bad'] })).toEqual([]);
    });
  });

  it('a WRITE to a read-only disk is refused, however it is dressed', async () => {
    await underAttack('read-only disk', async () => {
      await h.call('descs', { name: 'ind', descs: [seg(grefs.wsrc), seg(grefs.wsrc)] });
      const rsps = await io('xvdb', [
        wr(100, 0, [seg(grefs.wsrc)]),
        { kind: 'indirect', indirectOp: BLKIF_OP_WRITE, nrSegments: 2, id: 101, sector: 8, grefs: [grefs.ind] },
        { kind: 'rw', operation: BLKIF_OP_WRITE_BARRIER, id: 102, sector: 16, segs: [seg(grefs.wsrc)] },
        { kind: 'discard', flag: 0, id: 103, sector: 0, nrSectors: 8 },
        rd(104, 24, [seg(grefs.data)]),
      ]);
      expectAll(rsps, [
        [100, BLKIF_OP_WRITE, BLKIF_RSP_ERROR], [101, BLKIF_OP_WRITE, BLKIF_RSP_ERROR],
        [103, BLKIF_OP_DISCARD, BLKIF_RSP_EOPNOTSUPP], [104, BLKIF_OP_READ, BLKIF_RSP_OKAY],
      ]);
      // A barrier with data on a read-only disk: refused (ERROR), or not offered at all.
      expect([BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP]).toContain(rspFor(rsps, 102).status);
      expect(rspFor(rsps, 102).operation).toBe(BLKIF_OP_WRITE_BARRIER);
      expect(sha(readFileSync(images.xvdb.path))).toBe(sha(images.xvdb.data));
      expect(await h.call('pageSha', { name: 'data' })).toBe(sha(images.xvdb.data.subarray(24 * 512, 32 * 512)));
    });
  });

  // pvio refuses the request outright; Linux logs "requesting a grant already in use" and
  // maps the second use again as a per-request (non-persistent) mapping.
  it('persistent grants: the same gref twice in one request is refused, and the gref is not left stuck', async () => {
    await underAttack('persistent grants', async () => {
      expect(conns.xvdc.feature.persistent).toBe(true);
      const p = grefs.pdata;
      const vp = grefs['v-pers'];
      await h.call('descs', { name: 'ind', descs: [seg(grefs.d1), seg(vp), seg(grefs.d2), seg(vp)] });
      const rsps = await io('xvdc', [
        rd(110, 0, [seg(vp), seg(vp)]),
        { kind: 'indirect', indirectOp: BLKIF_OP_READ, nrSegments: 4, id: 111, sector: 0, grefs: [grefs.ind] },
        // Persistent grants are mapped writable whatever the operation: read-only grants are refused.
        rd(112, 0, [seg(grefs['v-ro'])]),
        wr(113, 0, [seg(grefs.wsrc)]),
      ]);
      expectAll(rsps, [
        [110, BLKIF_OP_READ, BLKIF_RSP_ERROR], [111, BLKIF_OP_READ, BLKIF_RSP_ERROR],
        [112, BLKIF_OP_READ, BLKIF_RSP_ERROR], [113, BLKIF_OP_WRITE, BLKIF_RSP_ERROR],
      ]);
      expect((await stats('xvdc')).negotiated?.persistent).toBe(true);
      expect(await h.call('touched', { names: ['v-pers', 'v-ro'] })).toEqual([]);
      expect(sha(readFileSync(images.xvdc.path).subarray(0, 4096))).toBe(sha(images.xvdc.data.subarray(0, 4096)));
      // The refused gref is not left "in use": named once, in two requests one after the other, it serves.
      expectAll(await io('xvdc', [rd(114, 8, [seg(p)])]), [[114, BLKIF_OP_READ, BLKIF_RSP_OKAY]]);
      expectAll(await io('xvdc', [rd(115, 16, [seg(p)])]), [[115, BLKIF_OP_READ, BLKIF_RSP_OKAY]]);
      expect(await h.call('pageSha', { name: 'pdata' })).toBe(sha(images.xvdc.data.subarray(16 * 512, 24 * 512)));
    });
  });

  it.each(['xvda', 'xvdf'])('a WRITE_BARRIER behind other requests in one batch is served without another notification (%s)', async (vdev) => {
    await underAttack('barrier mid-batch', async () => {
      expect(conns[vdev].feature.barrier).toBe(true);
      const rsps = await io(vdev, [
        rd(120, 0, [seg(grefs.data)]),
        { kind: 'rw', operation: BLKIF_OP_WRITE_BARRIER, id: 121, sector: 0, segs: [], nrSegments: 0 },
        rd(122, 8, [seg(grefs.data)]),
        { kind: 'rw', operation: BLKIF_OP_WRITE_BARRIER, id: 123, sector: 2000, segs: [seg(grefs.wsrc)] },
      ]);
      expectAll(rsps, [
        [120, BLKIF_OP_READ, BLKIF_RSP_OKAY], [121, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_OKAY],
        [122, BLKIF_OP_READ, BLKIF_RSP_OKAY], [123, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_OKAY],
      ]);
      // The barrier waits for what came before it, and what comes after waits for the barrier.
      const at = (id: number) => rsps.findIndex((r) => r.id === id);
      expect(at(121)).toBeGreaterThan(at(120));
      expect(at(122)).toBeGreaterThan(at(121));
      expect(at(123)).toBeGreaterThan(at(122));
      expect(sha(readFileSync(images[vdev].path).subarray(2000 * 512, 2008 * 512))).toBe(sha(new Uint8Array(4096).fill(0x5a)));
    });
  });

  it('an asynchronous store: bad requests interleaved with good ones are each answered once, in any order', async () => {
    await underAttack('asynchronous store', async () => {
      const v = grefs['v-bad'];
      const good = (id: number, sector: number, name: string) => rd(id, sector, [seg(grefs[name])]);
      const rsps = await io('xvdf', [
        good(130, 0, 'd5'), rd(131, 0, [seg(v, 4, 3)]), good(132, 8, 'd6'), { kind: 'rw', operation: 0xff, id: 133, sector: 0, segs: [] },
        good(134, 16, 'd7'), rd(135, SECTORS, [seg(v)]), rd(136, 0, [seg(NEVER_GRANTED)]), wr(137, 24, [seg(grefs.wsrc)]),
        rd(138, 0, [seg(grefs['v-ro'])]),
      ]);
      expectAll(rsps, [
        [130, BLKIF_OP_READ, BLKIF_RSP_OKAY], [131, BLKIF_OP_READ, BLKIF_RSP_ERROR], [132, BLKIF_OP_READ, BLKIF_RSP_OKAY],
        [133, 0xff, BLKIF_RSP_EOPNOTSUPP], [134, BLKIF_OP_READ, BLKIF_RSP_OKAY], [135, BLKIF_OP_READ, BLKIF_RSP_ERROR],
        [136, BLKIF_OP_READ, BLKIF_RSP_ERROR], [137, BLKIF_OP_WRITE, BLKIF_RSP_OKAY], [138, BLKIF_OP_READ, BLKIF_RSP_ERROR],
      ]);
      const img = images.xvdf.data;
      expect(await h.call('pageSha', { name: 'd5' })).toBe(sha(img.subarray(0, 4096)));
      expect(await h.call('pageSha', { name: 'd6' })).toBe(sha(img.subarray(8 * 512, 16 * 512)));
      expect(await h.call('pageSha', { name: 'd7' })).toBe(sha(img.subarray(16 * 512, 24 * 512)));
      expect(sha(readFileSync(images.xvdf.path).subarray(24 * 512, 32 * 512))).toBe(sha(new Uint8Array(4096).fill(0x5a)));
      expect(await h.call('touched', { names: ['v-bad', 'v-ro'] })).toEqual([]);
      expect((await stats('xvdf')).inFlight).toBe(0);
    });
  });

  it('a request rewritten after publication is copied out once and answered once (double fetch)', async () => {
    await underAttack('double fetch', async () => {
      const before = await stats('xvda');
      const d = seg(grefs.data);
      // Every variant is legal input, and so is any torn mix of them: hi halves of u64
      // fields stay 0 (no value reaches 2^53) and every gref is `data` or never granted.
      const variants: RawRequest[] = [
        rd(0, 0, [d]),
        { kind: 'rw', operation: 0xff, id: 0, sector: 0, segs: [d] },
        rd(0, 0, Array.from({ length: 11 }, () => d), 200),
        rd(0, 0, [seg(NEVER_GRANTED)]),
        rd(0, SECTORS - 1, [d]),
        rd(0, 0, [seg(grefs.data, 7, 0)]),
        rd(0, 0, [], 0),
      ];
      const rounds = (await h.call('doubleFetch', { devid: virtualDevice('xvda'), rounds: 40, variants, id: 0x10_0000, msPerRound: 1000 }, 30_000)) as
        Array<{ rewrites: number; timedOut: boolean; clobbered: boolean; response: RawResponse | null }>;
      expect(rounds).toHaveLength(40);
      for (const r of rounds) expect(r.timedOut).toBe(false);
      // The slot was being rewritten while blkback served it.
      expect(rounds.reduce((n, r) => n + r.rewrites, 0)).toBeGreaterThan(40);
      // Each answer is consistent with one copy of the slot: READ → OKAY or ERROR, 255 → EOPNOTSUPP.
      rounds.forEach((r, i) => {
        expect(r.clobbered, `round ${i}`).toBe(false);
        const rsp = r.response!;
        expect(rsp.padZero).toBe(true);
        if (rsp.operation === 0xff) expect(rsp.status).toBe(BLKIF_RSP_EOPNOTSUPP);
        else {
          expect(rsp.operation, `round ${i}`).toBe(BLKIF_OP_READ);
          expect([BLKIF_RSP_OKAY, BLKIF_RSP_ERROR]).toContain(rsp.status);
        }
      });
      const after = await stats('xvda');
      expect(after.protocolError).toBeNull();
      expect(after.slotsConsumed - before.slotsConsumed).toBe(40);
      expect(after.slotCopies - before.slotCopies).toBe(40);
      const idx = (await h.call('indices', { devid: virtualDevice('xvda') })) as { rspProd: number; rspCons: number; reqProd: number };
      expect(idx.rspProd).toBe(idx.rspCons);
      expect(idx.rspProd).toBe(idx.reqProd);
      await h.call('refill', { name: 'data' });
    });
  });

  it('a flood: the ring kept full for 3 s; every request answered once, others keep being served', async () => {
    const v = grefs['v-bad'];
    const templates: RawRequest[] = [
      rd(0, 0, [seg(grefs.data)]),
      rd(0, 8, [seg(grefs.d3), seg(grefs.d4)]),
      { kind: 'indirect', indirectOp: BLKIF_OP_READ, nrSegments: 16, id: 0, sector: 128, grefs: [grefs['ind-ro']] },
      rd(0, 0, [seg(v, 5, 1)]),
      { kind: 'rw', operation: 0xee, id: 0, sector: 0, segs: [] },
      rd(0, SECTORS, [seg(v)]),
      rd(0, 0, [seg(NEVER_GRANTED)]),
    ];
    await h.call('descs', { name: 'ind-ro', descs: Array.from({ length: 16 }, (_, i) => seg(grefs[`d${i}`])) });
    const before = await stats('xvda');
    const r0 = (await readCount()).completed;
    const flood = h.call('flood', { devid: virtualDevice('xvda'), ms: 3000, templates }, 20_000) as Promise<{
      sent: number; received: number; unknownIds: number; badPadding: number; statuses: Record<string, number>;
      fullPasses: number; drained: boolean; stillInFlight: number;
    }>;
    await new Promise((r) => setTimeout(r, 1000));
    const r1 = (await readCount()).completed;
    await new Promise((r) => setTimeout(r, 1500));
    const r2 = (await readCount()).completed;
    const f = await flood;
    // The bystander kept reading during the flood, not just after it.
    expect(r1).toBeGreaterThan(r0);
    expect(r2).toBeGreaterThan(r1);
    expect(f.drained).toBe(true);
    expect(f.stillInFlight).toBe(0);
    expect(f.unknownIds).toBe(0);
    expect(f.badPadding).toBe(0);
    expect(f.received).toBe(f.sent);
    expect(f.sent).toBeGreaterThan(1000);
    expect(f.fullPasses).toBeGreaterThan(10);
    expect(f.statuses[BLKIF_RSP_OKAY]).toBeGreaterThan(0);
    expect(f.statuses[BLKIF_RSP_ERROR]).toBeGreaterThan(0);
    expect(f.statuses[BLKIF_RSP_EOPNOTSUPP]).toBeGreaterThan(0);
    const after = await stats('xvda');
    expect(after.protocolError).toBeNull();
    expect(after.requests - before.requests).toBe(f.sent);
    expect((await domainInfo(m, 0))?.state).toBe('running');
  });

  it('over the whole suite: every slot copied once, untouchable pages intact, the audit clean, dom0 quiet, the bystander never failed', async () => {
    for (const vdev of ['xvda', 'xvdb', 'xvdc', 'xvdd', 'xvde', 'xvdf']) {
      const s = await stats(vdev);
      expect(s.slotsConsumed, vdev).toBeGreaterThan(0);
      expect(s.slotCopies, vdev).toBe(s.slotsConsumed);
      const broken = vdev === 'xvdd' || vdev === 'xvde';
      expect(s.protocolError === null, vdev).toBe(!broken);
      if (!broken) expect(s.state, vdev).toBe('Connected');
    }
    for (const vdev of ['xvda', 'xvdb', 'xvdc', 'xvdf']) {
      const idx = (await h.call('indices', { devid: virtualDevice(vdev) })) as { rspProd: number; rspCons: number; reqProd: number };
      expect(idx.rspProd, vdev).toBe(idx.reqProd); // every request answered...
      expect(idx.rspCons, vdev).toBe(idx.rspProd); // ...and each answer was read, none extra
    }
    expect(await h.call('touched', { names: untouchable })).toEqual([]);
    const audit = await m.audit();
    expect(audit.violations).toEqual([]);
    // dom0 never got a handle to a page no request named (c-*), to one it may not map
    // (v-other: granted to the bystander; v-ro: read-only, named only by READs and with
    // persistent grants), or to one named only by requests refused before their grants
    // are looked at (v-bad).
    const dom0Got = new Set(audit.log.filter((e) => e.domid === 0 && e.owner === h.domid).map((e) => e.extentBase));
    for (const name of ['c-granted', 'c-none', 'v-other', 'v-ro', 'v-bad']) expect(dom0Got.has(mfns[name]), name).toBe(false);
    expect(dom0Got.has(mfns.data)).toBe(true); // (the log does record the pages blkback mapped)
    // dom0 printed the two expected protocol errors and nothing else.
    expect(dom0Lines).toHaveLength(2);
    for (const l of dom0Lines) expect(l).toMatch(/blkback hostile\/xvd[de]: frontend dom\d+ broke the protocol, ring disabled/);
    const c = await readCount();
    expect(c.errors).toBe(0);
    expect(c.completed).toBeGreaterThan(100);
  });
});
