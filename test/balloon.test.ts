// Guest memory by pseudo-physical frame (issue 7: the hypervisor-kept P2M/M2P, and
// the balloon). Real worker domains (test/guests/balloon.ts):
// - the P2M and M2P a guest reads by hypercall agree with each other, with the frames
//   it was given, and with the hypervisor's own table (the audit's P2M, checked
//   there against the frame table); the boot pages are pfns 0 and 1,
//   increase_reservation gives the lowest free pfns, decrease_reservation forgets them;
// - populate_physmap puts frames at the pfns named and writes the MFNs back; a pfn
//   already populated, a pfn past a PTE's reach or the quota stops the batch (a short
//   count, as Xen); a bad order, a list past the page or another domain is refused;
// - the balloon: a guest with its driver started grows to its target, shrinks when
//   the toolstack lowers it (Machine.setMemoryTarget: ramPages drops to the target,
//   the MFNs given back leave its P2M and never reach another domain, by the handle
//   audit), grows back with new MFNs at its old pfns, and stops at its quota when the
//   target is above it; `memory/` is dom0's (the guest cannot write its target);
// - the audit's P2M checks do flag a frame without a pfn or an entry made behind the
//   hypervisor's back (in-process);
// - `pvio mem-set` through a machine's control socket, and its bad input.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Machine, type GuestHandle } from '../toolstack/machine.ts';
import { machineHandlers, parseMemSizeKiB } from '../toolstack/control-ops.ts';
import { parseCli, UsageError } from '../toolstack/args.ts';
import { XENMEM, XEN_ERRNO, type DomId } from '../hypervisor/abi.ts';
import { Hypervisor, type Domain } from '../hypervisor/hypervisor.ts';
import { SpinTokens } from '../hypervisor/spin.ts';
import type { BalloonStatus } from '../xenstore/balloon.ts';
import { eventually, guestPath, rpcGuest } from './helpers.ts';

let m: Machine;
beforeAll(async () => {
  m = await Machine.boot({ onConsole: () => {} });
});
afterAll(async () => {
  await m?.shutdown();
});

const balloonGuest = (name: string, memoryMiB: number, extra?: string) =>
  m.createGuest({ name, memoryMiB, vcpus: 1, kernel: guestPath('balloon.ts'), extra });
const ramPages = async (domid: number) => (await m.domains()).find((d) => d.domid === domid)?.ramPages ?? -1;
/** The hypervisor's P2M of `domid` (from the audit, which must pass). */
async function hvP2m(domid: number): Promise<Map<number, number>> {
  const a = await m.audit();
  expect(a.violations).toEqual([]);
  return new Map(a.physmap[domid]);
}

describe('the P2M and M2P, kept by the hypervisor, read by the guest', () => {
  let g: GuestHandle;
  beforeAll(async () => {
    g = await balloonGuest('p2m', 2); // 512 pages
  });
  afterAll(async () => {
    await g?.call('exit');
    await g?.exit;
  });

  it('boot pages at pfns 0 and 1; increase_reservation takes the lowest free pfns; guest and hypervisor agree', async () => {
    const a = await m.audit();
    expect(a.violations).toEqual([]);
    const store = a.log.find((e) => e.domid === g.domid && e.reason === 'start_info.store_mfn')!.extentBase;
    const cons = a.log.find((e) => e.domid === g.domid && e.reason === 'start_info.console_mfn')!.extentBase;
    const p2m0 = new Map(a.physmap[g.domid]);
    expect(p2m0.get(0)).toBe(store);
    expect(p2m0.get(1)).toBe(cons);
    expect(await g.call('m2p', { mfns: [store, cons] })).toEqual([0, 1]);

    const mfns = (await g.call('obtain', { n: 5 })) as number[];
    expect(new Set(mfns).size).toBe(5);
    const pfns = (await g.call('m2p', { mfns })) as number[];
    const lowestFree: number[] = [];
    for (let p = 0; lowestFree.length < 5; p++) if (!p2m0.has(p)) lowestFree.push(p);
    expect([...pfns].sort((x, y) => x - y)).toEqual(lowestFree);
    expect(await g.call('p2m', { pfns })).toEqual(mfns);
    const hv = await hvP2m(g.domid);
    for (const [i, pfn] of pfns.entries()) expect(hv.get(pfn)).toBe(mfns[i]);
    expect(hv.size).toBe(await ramPages(g.domid));
    expect((await g.call('info')) as { current: number }).toMatchObject({ current: hv.size, max: 512 });
    // A hole reads INVALID_MFN; a frame that is not our RAM (our shared_info page,
    // dom0's hypercall page, an MFN never allocated) INVALID_M2P_ENTRY.
    expect(await g.call('p2m', { pfns: [400_000] })).toEqual([null]);
    const sharedInfo = a.log.find((e) => e.domid === g.domid && e.reason === 'shared_info')!.extentBase;
    const dom0Page = a.log.find((e) => e.domid === 0 && e.owner === 0)!.extentBase;
    expect(await g.call('m2p', { mfns: [sharedInfo, dom0Page, 1] })).toEqual([null, null, null]);
  });

  it('decrease_reservation forgets the pfn; the next increase_reservation refills the lowest hole with a new frame', async () => {
    const [mfn] = (await g.call('obtain', { n: 1 })) as number[];
    const [pfn] = (await g.call('m2p', { mfns: [mfn] })) as number[];
    const before = await ramPages(g.domid);
    expect(await g.call('release', { mfns: [mfn] })).toBe(1);
    expect(await ramPages(g.domid)).toBe(before - 1);
    expect(await g.call('m2p', { mfns: [mfn] })).toEqual([null]);
    expect(await g.call('p2m', { pfns: [pfn] })).toEqual([null]);
    expect((await hvP2m(g.domid)).has(pfn)).toBe(false);
    const [again] = (await g.call('obtain', { n: 1 })) as number[];
    expect(again).not.toBe(mfn); // MFNs are never reused
    expect(await g.call('m2p', { mfns: [again] })).toEqual([pfn]); // the lowest free pfn was the hole
  });

  it('populate_physmap: frames at the pfns named, MFNs written back; a populated pfn stops the batch', async () => {
    const mfns = (await g.call('populate', { pfns: [1000, 1001, 5000] })) as number[];
    expect(mfns).toHaveLength(3);
    expect(await g.call('p2m', { pfns: [1000, 1001, 5000] })).toEqual(mfns);
    expect(await g.call('m2p', { mfns })).toEqual([1000, 1001, 5000]);
    expect(await g.call('touch', { mfn: mfns[2], text: 'pfn 5000' })).toBe('pfn 5000');
    const hv = await hvP2m(g.domid);
    expect([hv.get(1000), hv.get(1001), hv.get(5000)]).toEqual(mfns);

    // Already populated: Xen's p2m says -EBUSY inside; the call answers the count done.
    expect(await g.call('populate', { pfns: [5000] })).toEqual([]);
    const short = (await g.call('populate', { pfns: [2000, 1000, 2001] })) as number[];
    expect(short).toHaveLength(1);
    expect(await g.call('p2m', { pfns: [2000, 1000, 2001] })).toEqual([short[0], mfns[0], null]);
    // Past a PTE's 40-bit frame field.
    expect(await g.call('populate', { pfns: [2 ** 40] })).toEqual([]);

    // An extent of order 1: one MFN base back, two consecutive frames at two pfns.
    const [base] = (await g.call('populateOrder', { pfns: [3000], order: 1 })) as number[];
    expect(await g.call('p2m', { pfns: [3000, 3001] })).toEqual([base, base + 1]);
    // An extent over a populated pfn is refused whole.
    expect(await g.call('populateOrder', { pfns: [2999], order: 1 })).toEqual([]);
    expect(await g.call('p2m', { pfns: [2999] })).toEqual([null]);
    expect(await g.call('populateOrder', { pfns: [4000], order: 5 })).toEqual({ errno: XEN_ERRNO.EINVAL });
    expect((await m.audit()).violations).toEqual([]);
  });

  it('populate_physmap stops at the quota (maxPages), as increase_reservation does', async () => {
    const { current, max } = (await g.call('info')) as { current: number; max: number };
    const left = max - current;
    expect(left).toBeGreaterThan(3);
    const pfns = Array.from({ length: left + 3 }, (_, i) => 10_000 + i);
    const got = (await g.call('populate', { pfns })) as number[];
    expect(got).toHaveLength(left);
    expect(await ramPages(g.domid)).toBe(max);
    expect(await g.call('p2m', { pfns: pfns.slice(left - 1, left + 1) })).toEqual([got[left - 1], null]);
    expect(await g.call('obtain', { n: 1 })).toEqual([]);
    // Given back, a pfn can be populated again: a new frame.
    expect(await g.call('release', { mfns: [got[0]] })).toBe(1);
    const [again] = (await g.call('populate', { pfns: [10_000] })) as number[];
    expect(again).not.toBe(got[0]);
    expect((await hvP2m(g.domid)).get(10_000)).toBe(again);
  });

  it('refused outright: another domain, a bad order, a list past the page, a count of 2^53 and more', async () => {
    const res = (args: object) => g.call('rawReservation', args);
    expect(await res({ cmd: XENMEM.populate_physmap, nr: 1, domid: 0, list: [[7000, 0]] })).toBe(-XEN_ERRNO.EPERM);
    expect(await res({ cmd: XENMEM.populate_physmap, nr: 1, order: 5, list: [[7000, 0]] })).toBe(-XEN_ERRNO.EINVAL);
    expect(await res({ cmd: XENMEM.populate_physmap, nr: 600 })).toBe(-XEN_ERRNO.EINVAL);
    expect(await res({ cmd: XENMEM.decrease_reservation, nr: 0, nrHi: 0x0100_0000 })).toBe(-XEN_ERRNO.EINVAL);
    // A frame number of 2^53 or more fails its entry, not the hypervisor.
    expect(await res({ cmd: XENMEM.populate_physmap, nr: 1, list: [[1, 0x0100_0000]] })).toBe(0);
    expect(await res({ cmd: XENMEM.decrease_reservation, nr: 1, list: [[1, 0x0100_0000]] })).toBe(0);
    const tr = (args: object) => g.call('rawTranslate', args);
    expect(await tr({ cmd: XENMEM.translate_gpfn_list, nr: 501 })).toBe(-XEN_ERRNO.EINVAL);
    expect(await tr({ cmd: XENMEM.translate_gpfn_list, nr: 1, domid: 0 })).toBe(-XEN_ERRNO.EPERM);
    expect(await tr({ cmd: XENMEM.pvio_machphys_lookup, nr: 1, domid: 999 })).toBe(-XEN_ERRNO.ESRCH);
    expect((await m.audit()).violations).toEqual([]);
  });
});

describe('the balloon driver follows memory/target', () => {
  it('down to the target, MFNs given back never reach another domain; up again with new MFNs; stops at the quota', async () => {
    const g = await balloonGuest('ballooned', 16, 'balloon'); // 4096 pages; the driver starts at boot
    const other = await rpcGuest(m, 'bystander');
    const xs = (key: string) => m.xenstoreRead(`/local/domain/${g.domid}/${key}`).catch(() => null);
    const status = () => g.call('balloonStatus') as Promise<BalloonStatus>;
    try {
      // dom0 wrote the memory keys (KiB); memory/ is dom0's: the guest reads, cannot write.
      expect(await xs('memory/static-max')).toBe('16384');
      expect(await xs('memory/target')).toBe('16384');
      expect(await g.call('writeTarget', { value: '1' })).toBe('EACCES');

      // The initial target is the whole quota: the driver grows the reservation to it.
      await eventually(async () => (await ramPages(g.domid)) === 4096, 30_000, 'the reservation to reach 4096 pages');
      await eventually(async () => (await xs('data/balloon/current')) === '16384', 10_000, 'data/balloon/current = 16384');
      const full = await hvP2m(g.domid);
      expect(full.size).toBe(4096);

      // Down to 8 MiB = 2048 pages.
      await m.setMemoryTarget(g.domid, 8192);
      expect(await xs('memory/target')).toBe('8192');
      await eventually(async () => (await ramPages(g.domid)) === 2048, 30_000, 'the reservation to drop to 2048 pages');
      await eventually(async () => (await xs('data/balloon/current')) === '8192', 10_000, 'data/balloon/current = 8192');
      const half = await hvP2m(g.domid);
      expect(half.size).toBe(2048);
      const kept = new Set(half.values());
      const returned = [...full.values()].filter((x) => !kept.has(x));
      expect(returned).toHaveLength(2048);
      expect(await g.call('m2p', { mfns: returned.slice(0, 100) })).toEqual(Array(100).fill(null));
      const holes = [...full.keys()].filter((pfn) => !half.has(pfn));
      expect(await g.call('p2m', { pfns: holes.slice(0, 100) })).toEqual(Array(100).fill(null));
      expect(((await status()).ballooned)).toBe(2048);

      // Another domain allocates now: none of the returned frames comes to it, and
      // the handle log shows each returned frame was only ever given to the guest.
      const theirs = (await other.call('allocPages', { n: 64 })) as number[];
      const back = new Set(returned);
      expect(theirs.filter((x) => back.has(x))).toEqual([]);
      const audit = await m.audit();
      expect(audit.violations).toEqual([]);
      for (const [domid, pairs] of Object.entries(audit.physmap)) {
        for (const [, mfn] of pairs) if (back.has(mfn)) throw new Error(`returned frame ${mfn} is in dom${domid}'s P2M`);
      }
      const given = audit.log.filter((e) => [...Array(e.pages).keys()].some((i) => back.has(e.extentBase + i)));
      expect(given.length).toBeGreaterThan(0);
      expect(given.filter((e) => e.domid !== g.domid)).toEqual([]);

      // Up to 12 MiB = 3072 pages: new frames, at the pfns given back.
      await m.setMemoryTarget(g.domid, 12288);
      await eventually(async () => (await ramPages(g.domid)) === 3072, 30_000, 'the reservation to rise to 3072 pages');
      await eventually(async () => (await xs('data/balloon/current')) === '12288', 10_000, 'data/balloon/current = 12288');
      const up = await hvP2m(g.domid);
      const before = new Set(full.values());
      const fresh = [...up.entries()].filter(([, mfn]) => !before.has(mfn));
      expect(fresh).toHaveLength(1024);
      for (const [pfn, mfn] of fresh) {
        expect(back.has(mfn)).toBe(false);
        expect(full.has(pfn)).toBe(true); // a hole refilled (populate_physmap at the ballooned pfn)
      }
      expect((await status()).ballooned).toBe(1024);

      // Above the quota: the toolstack refuses it (libxl's ERROR_INVAL); written anyway, the driver stops at maxPages.
      await expect(m.setMemoryTarget(g.domid, 32768)).rejects.toThrow(/above dom\d+'s static-max of 16384 KiB/);
      await m.xenstoreWrite(`/local/domain/${g.domid}/memory/target`, '32768');
      await eventually(async () => (await ramPages(g.domid)) === 4096, 30_000, 'the reservation to reach the quota');
      await eventually(async () => (await xs('data/balloon/current')) === '16384', 10_000, 'data/balloon/current = 16384');
      await eventually(async () => !(await status()).busy, 10_000, 'the driver to settle');
      const s = await status();
      expect(s).toMatchObject({ targetKiB: 32768, targetPages: 4096, currentPages: 4096, maxPages: 4096, stalled: false });
      expect(await ramPages(g.domid)).toBe(4096);

      // Not a number of KiB: ignored.
      await m.xenstoreWrite(`/local/domain/${g.domid}/memory/target`, 'lots');
      await eventually(async () => (await xs('memory/target')) === 'lots', 5000, 'the bad target written');
      await new Promise((r) => setTimeout(r, 200));
      expect((await status()).targetKiB).toBe(32768);
      expect((await m.audit()).violations).toEqual([]);
    } finally {
      await g.call('exit').catch(() => undefined);
      await other.call('exit').catch(() => undefined);
      await g.exit;
      await other.exit;
    }
  });

  it('below what the guest can give (no free pages): it stops there, stalled, and Machine refuses bad targets', async () => {
    const g = await balloonGuest('stuck', 4, 'balloon'); // 1024 pages
    try {
      await eventually(async () => (await ramPages(g.domid)) === 1024, 30_000, 'the reservation to reach 1024 pages');
      await eventually(async () => !(await g.call('balloonStatus') as BalloonStatus).busy, 10_000, 'the driver to settle');
      // The guest takes every free page for itself: the driver has nothing to give.
      expect(((await g.call('hoard')) as number[]).length).toBeGreaterThan(1000);
      expect(((await g.call('info')) as { free: number }).free).toBe(0);
      await m.setMemoryTarget(g.domid, 0);
      await eventually(async () => (await g.call('balloonStatus') as BalloonStatus).stalled, 30_000, 'the driver to stall');
      const s = (await g.call('balloonStatus')) as BalloonStatus;
      expect(s.targetPages).toBe(0);
      expect(s.currentPages).toBe(await ramPages(g.domid));
      expect(s.currentPages).toBeGreaterThan(0); // the boot pages and the pages in use stay
      await expect(m.setMemoryTarget(g.domid, 1.5)).rejects.toThrow(/not a whole number of KiB/);
      await expect(m.setMemoryTarget(9999, 1024)).rejects.toThrow(/no domain 9999/);
      await expect(m.setMemoryTarget(0, 1024)).rejects.toThrow(/not a guest/);
    } finally {
      await g.call('exit').catch(() => undefined);
      await g.exit;
    }
  });

  it('the mem-set control command (the handler behind `pvio mem-set`)', async () => {
    const g = await balloonGuest('memset', 8, 'balloon');
    try {
      const h = machineHandlers(m, () => {});
      await h['mem-set'](['memset', '6m']);
      expect(await m.xenstoreRead(`/local/domain/${g.domid}/memory/target`)).toBe('6144');
      await eventually(async () => (await ramPages(g.domid)) === 1536, 30_000, 'the reservation to reach 1536 pages');
      await expect(h['mem-set'](['memset', '12x'])).rejects.toThrow(/^bad memory size '12x'/);
      await expect(h['mem-set'](['memset', '9'])).rejects.toThrow(/above dom\d+'s static-max of 8192 KiB/);
      await expect(h['mem-set'](['nosuch', '4'])).rejects.toThrow(/no domain named 'nosuch'/);
    } finally {
      await g.call('exit').catch(() => undefined);
      await g.exit;
    }
  });
});

describe('the audit checks the P2M against the frame table (in-process)', () => {
  it('flags a RAM frame without a pfn and a P2M entry the hypervisor did not make', () => {
    const hv = new Hypervisor(SpinTokens.createBuffer(1));
    // A stand-in for a live domain: the audit reads only these fields.
    hv.domains.set(5, { domid: 5, state: 'running', ramPages: 1 } as unknown as Domain);
    const [f] = hv.frames.alloc(5 as DomId, 0, 'ram');
    expect(hv.auditHandles().violations).toEqual([
      `dom5's RAM frame ${f.mfn} has no pfn`,
      'dom5: P2M holds 0 pfns, 0 of its live RAM frames have one, ramPages 1',
    ]);
    hv.physmap.set(5, 7, f.mfn); // behind the hypervisor's back: its count does not know it
    const a = hv.auditHandles();
    expect(a.violations).toEqual(['dom5: P2M holds 0 pfns, 1 of its live RAM frames have one, ramPages 1']);
    expect(a.physmap[5]).toEqual([[7, f.mfn]]);
  });
});

describe('pvio mem-set parsing', () => {
  it('sizes as xl reads them: MiB by default, units b k m g t', () => {
    expect(parseMemSizeKiB('512')).toBe(512 * 1024);
    expect(parseMemSizeKiB('512m')).toBe(512 * 1024);
    expect(parseMemSizeKiB('2G')).toBe(2 * 1024 * 1024);
    expect(parseMemSizeKiB('65536k')).toBe(65536);
    expect(parseMemSizeKiB('1t')).toBe(2 ** 30);
    expect(parseMemSizeKiB('4097b')).toBe(4);
    for (const bad of ['', '12x', '-1', '1.5', '1 m', '1mb', '99999999999999999']) {
      expect(() => parseMemSizeKiB(bad), bad).toThrow(/^bad memory size/);
    }
  });

  it('the command line: two arguments', () => {
    expect(parseCli(['mem-set', 'vm', '256'])).toEqual({ command: 'control', op: 'mem-set', args: ['vm', '256'] });
    expect(() => parseCli(['mem-set', 'vm'])).toThrow(UsageError);
    expect(() => parseCli(['mem-set', 'vm'])).toThrow(/'mem-set' needs 2 arguments/);
  });
});

describe('pvio mem-set against a running machine', () => {
  const PVIO = fileURLToPath(new URL('../toolstack/bin/pvio.mjs', import.meta.url));
  const dir = mkdtempSync(join(tmpdir(), 'pvio-balloon-'));
  const env = { ...process.env, XDG_RUNTIME_DIR: join(dir, 'run') };
  const M = ['--machine', 'bal'];
  const pvio = (args: string[], timeoutMs = 30_000) => new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
    execFile(process.execPath, [PVIO, ...args], { env, timeout: timeoutMs }, (e, stdout, stderr) =>
      resolve({ code: e ? (typeof e.code === 'number' ? e.code : 1) : 0, stdout, stderr }));
  });
  afterAll(async () => {
    await pvio(['shutdown', ...M]);
    rmSync(dir, { recursive: true, force: true });
  });

  it('sets the target; the guest\'s balloon follows; bad input gets one line and a non-zero status', async () => {
    const cfg = join(dir, 'b.cfg');
    writeFileSync(cfg, `name = "bal"\nmemory = 16\nvcpus = 1\nkernel = "${guestPath('balloon.ts')}"\nextra = "balloon"\n`);
    const up = await pvio(['up', cfg, '--detach', ...M], 120_000);
    expect(up.code, up.stderr).toBe(0);
    const read = async () => (await pvio(['xenstore-read', '/local/domain/1/data/balloon/current', ...M])).stdout.trim();
    await eventually(async () => (await read()) === '16384', 30_000, 'the guest to balloon up to 16 MiB');
    const r = await pvio(['mem-set', 'bal', '8', ...M]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe('');
    expect((await pvio(['xenstore-read', '/local/domain/1/memory/target', ...M])).stdout).toBe('8192\n');
    await eventually(async () => (await read()) === '8192', 30_000, 'the guest to balloon down to 8 MiB');
    const cases: Array<[string[], number, RegExp]> = [
      [['mem-set', 'bal', '12x', ...M], 1, /^pvio: bad memory size '12x'/],
      [['mem-set', 'bal', '64', ...M], 1, /^pvio: memory target 65536 KiB is above dom1's static-max of 16384 KiB\n$/],
      [['mem-set', 'nosuch', '8', ...M], 1, /^pvio: no domain named 'nosuch'\n$/],
      [['mem-set', 'bal', ...M], 2, /^pvio: 'mem-set' needs 2 arguments/],
    ];
    for (const [args, code, msg] of cases) {
      const x = await pvio(args);
      expect(x.code, args.join(' ')).toBe(code);
      expect(x.stderr, args.join(' ')).toMatch(msg);
      expect(x.stderr.trim().split('\n'), args.join(' ')).toHaveLength(1);
    }
  }, 180_000);
});
