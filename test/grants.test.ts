// Grant-table rules between real worker domains, with the GNTST codes Xen's
// grant_table.c gives: bad_gntref, general_error (wrong domid, invalid/ended entry,
// writable map of a read-only grant), bad_handle, bad_copy_arg; and the end-access
// rule (no revoke while GTF_reading/GTF_writing are set).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Machine, type GuestHandle } from '../toolstack/machine.ts';
import { GNTST, GTF } from '../hypervisor/abi.ts';
import { rpcGuest } from './helpers.ts';

let m: Machine;
let a: GuestHandle; // granter
let b: GuestHandle; // mapper
let c: GuestHandle; // a third domain
type MapOut = { status: number; handle: number; mfn: number };

beforeAll(async () => {
  m = await Machine.boot();
  [a, b, c] = await Promise.all([rpcGuest(m, 'granter'), rpcGuest(m, 'mapper'), rpcGuest(m, 'other')]);
});
afterAll(async () => {
  await m?.shutdown();
});

describe('grant tables v1 across domains', () => {
  it('maps a writable grant, shares bytes both ways, and refuses to end access while mapped', async () => {
    const [p] = (await a.call('allocPages', { n: 1 })) as number[];
    await a.call('fill', { mfn: p, text: 'hello from granter' });
    const ref = (await a.call('grant', { domid: b.domid, mfn: p, readonly: false })) as number;
    const [r] = (await b.call('map', { reqs: [{ domid: a.domid, ref, readonly: false }] })) as MapOut[];
    expect(r.status).toBe(GNTST.okay);
    expect(r.mfn).toBe(p);
    expect(await b.call('readMapped', { handle: r.handle, len: 18 })).toBe('hello from granter');
    await b.call('writeMapped', { handle: r.handle, text: 'HELLO' });
    expect(await a.call('readPage', { mfn: p, len: 5 })).toBe('HELLO');
    const flags = (await a.call('grantFlags', { ref })) as number;
    expect(flags & (GTF.reading | GTF.writing)).toBe(GTF.reading | GTF.writing);
    expect(await a.call('endAccess', { ref })).toBe(false);
    expect(await b.call('unmap', { handles: [r.handle] })).toEqual([GNTST.okay]);
    expect(((await a.call('grantFlags', { ref })) as number) & (GTF.reading | GTF.writing)).toBe(0);
    expect(await a.call('endAccess', { ref })).toBe(true);
    // An ended entry no longer maps.
    const [again] = (await b.call('map', { reqs: [{ domid: a.domid, ref, readonly: true }] })) as MapOut[];
    expect(again.status).toBe(GNTST.general_error);
  });

  it('answers the GNTST codes of grant_table.c for bad maps, in one batch', async () => {
    const [p1, p2] = (await a.call('allocPages', { n: 2 })) as number[];
    const ro = (await a.call('grant', { domid: b.domid, mfn: p1, readonly: true })) as number;
    const forC = (await a.call('grant', { domid: c.domid, mfn: p2, readonly: false })) as number;
    const res = (await b.call('map', {
      reqs: [
        { domid: a.domid, ref: 1_000_000, readonly: true }, // beyond the table
        { domid: a.domid, ref: forC, readonly: false }, // granted to another domain
        { domid: a.domid, ref: 300, readonly: true }, // never granted (invalid entry)
        { domid: a.domid, ref: ro, readonly: false }, // writable map of a read-only grant
        { domid: a.domid, ref: ro, readonly: true }, // fine
      ],
    })) as MapOut[];
    expect(res.map((r) => r.status)).toEqual([GNTST.bad_gntref, GNTST.general_error, GNTST.general_error, GNTST.general_error, GNTST.okay]);
    // The read-only map sets GTF_reading only.
    expect(((await a.call('grantFlags', { ref: ro })) as number) & (GTF.reading | GTF.writing)).toBe(GTF.reading);
    expect(await b.call('unmap', { handles: [res[4].handle, 987654] })).toEqual([GNTST.okay, GNTST.bad_handle]);
    // The domain it was granted to maps it fine.
    const [cr] = (await c.call('map', { reqs: [{ domid: a.domid, ref: forC, readonly: false }] })) as MapOut[];
    expect(cr.status).toBe(GNTST.okay);
    expect(await c.call('unmap', { handles: [cr.handle] })).toEqual([GNTST.okay]);
  });

  it('copies through a grant in the hypervisor, and refuses a copy that crosses a page', async () => {
    const [src] = (await a.call('allocPages', { n: 1 })) as number[];
    const [dst] = (await b.call('allocPages', { n: 1 })) as number[];
    await a.call('fill', { mfn: src, text: 'copied by GNTTABOP_copy', offset: 100 });
    const ref = (await a.call('grant', { domid: b.domid, mfn: src, readonly: true })) as number;
    const st = (await b.call('copy', {
      reqs: [
        { source: { ref, domid: a.domid, offset: 100 }, dest: { mfn: dst, offset: 8 }, len: 23 },
        { source: { ref, domid: a.domid, offset: 4000 }, dest: { mfn: dst, offset: 0 }, len: 200 },
        { source: { mfn: dst, offset: 0 }, dest: { ref, domid: a.domid, offset: 0 }, len: 4 }, // read-only grant as destination
      ],
    })) as number[];
    expect(st).toEqual([GNTST.okay, GNTST.bad_copy_arg, GNTST.general_error]);
    expect(await b.call('readPage', { mfn: dst, offset: 8, len: 23 })).toBe('copied by GNTTABOP_copy');
    // The copy held the grant only while copying.
    expect(await a.call('endAccess', { ref })).toBe(true);
  });

  it('serves a batch longer than one slice by preemption and re-issue', async () => {
    const pagesA = (await a.call('allocPages', { n: 100 })) as number[];
    const refs: number[] = [];
    for (const p of pagesA) refs.push((await a.call('grant', { domid: b.domid, mfn: p, readonly: true })) as number);
    const before = (await m.hypervisorStats()) as { preemptions: number };
    const res = (await b.call('map', { reqs: refs.map((ref) => ({ domid: a.domid, ref, readonly: true })) })) as MapOut[];
    expect(res.every((r) => r.status === GNTST.okay)).toBe(true);
    expect(res.map((r) => r.mfn)).toEqual(pagesA);
    const after = (await m.hypervisorStats()) as { preemptions: number };
    expect(after.preemptions).toBeGreaterThan(before.preemptions);
    expect(await b.call('unmap', { handles: res.map((r) => r.handle) })).toEqual(res.map(() => GNTST.okay));
  });

  it('maps a multi-page ring only as consecutive pages of one extent, in order', async () => {
    const base = (await a.call('allocExtent', { order: 1, page: 1, text: 'second page' })) as number;
    const r0 = (await a.call('grant', { domid: b.domid, mfn: base, readonly: false })) as number;
    const r1 = (await a.call('grant', { domid: b.domid, mfn: base + 1, readonly: false })) as number;
    const ok = (await b.call('mapRing', { domid: a.domid, refs: [r0, r1], readPage: 1, len: 11 })) as { ok: boolean; length: number; text: string };
    expect(ok).toEqual({ ok: true, length: 8192, text: 'second page' });
    const reversed = (await b.call('mapRing', { domid: a.domid, refs: [r1, r0], readPage: 0, len: 1 })) as { ok: boolean; status: number };
    expect(reversed).toMatchObject({ ok: false, status: GNTST.general_error });
    const [lone] = (await a.call('allocPages', { n: 1 })) as number[];
    const r2 = (await a.call('grant', { domid: b.domid, mfn: lone, readonly: false })) as number;
    expect(await b.call('mapRing', { domid: a.domid, refs: [r0, r2], readPage: 0, len: 1 })).toMatchObject({ ok: false });
    // Refused maps were undone: the granter can end every grant.
    for (const r of [r0, r1, r2]) expect(await a.call('endAccess', { ref: r })).toBe(true);
  });

  it('enforces the domain memory quota (pages)', async () => {
    // The guests have 16 MiB = 4096 pages.
    expect(await c.call('allocTooMuch', { n: 5000 })).toBe('PVIO_ERR_NOMEM');
    expect(await c.call('allocTooMuch', { n: 100 })).toBe('allocated');
  });
});
