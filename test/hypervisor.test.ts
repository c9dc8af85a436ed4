// In-process checks of the hypervisor's bookkeeping: the frame table (extents, no
// reuse of a freed frame, mapped frames survive), the handle audit (it does flag a
// handle a domain should not hold), spin tokens, and the ABI struct sizes.
import { describe, expect, it } from 'vitest';
import { FrameTable } from '../hypervisor/frames.ts';
import { Hypervisor } from '../hypervisor/hypervisor.ts';
import { SpinTokens } from '../hypervisor/spin.ts';
import {
  DOMID_XEN, EVTCHN_ALLOC_UNBOUND, EVTCHN_BIND_INTERDOMAIN, EVTCHN_STATUS, GNTTAB_COPY, GNTTAB_MAP_GRANT_REF,
  GNTTAB_UNMAP_GRANT_REF, GRANT_ENTRY_V1, HYPERCALL_PAGE, SHARED_INFO, VCPU_INFO, XEN_MEMORY_RESERVATION,
  type DomId,
} from '../hypervisor/abi.ts';

const d = (n: number) => n as DomId;

describe('frame table', () => {
  it('allocates an extent as consecutive MFNs over one buffer', () => {
    const ft = new FrameTable();
    const ext = ft.alloc(d(1), 2);
    expect(ext).toHaveLength(4);
    expect(ext.map((f) => f.mfn - ext[0].mfn)).toEqual([0, 1, 2, 3]);
    expect(new Set(ext.map((f) => f.buffer)).size).toBe(1);
    expect(ext[0].buffer!.byteLength).toBe(4 * 4096);
    expect(ext.map((f) => f.pageIndex)).toEqual([0, 1, 2, 3]);
  });

  it('drops a freed frame\'s buffer and never reuses its MFN or buffer', () => {
    const ft = new FrameTable();
    const [f] = ft.alloc(d(1), 0);
    const buf = f.buffer;
    expect(ft.freeExtent(f.mfn)).toBe(1);
    expect(ft.get(f.mfn)).toBeUndefined();
    const [g] = ft.alloc(d(2), 0);
    expect(g.mfn).not.toBe(f.mfn);
    expect(g.buffer).not.toBe(buf);
  });

  it('keeps a frame that another domain still maps', () => {
    const ft = new FrameTable();
    const [f] = ft.alloc(d(1), 0);
    f.mapCount = 1;
    expect(ft.freeExtent(f.mfn)).toBe(0);
    expect(ft.get(f.mfn)).toBe(f);
  });

  it('posts an extent to each vCPU of a domain once and logs it once per domain', () => {
    const ft = new FrameTable();
    const [f] = ft.alloc(d(1), 0);
    expect(ft.give(d(1), 0, f, 'test')).not.toBeNull();
    expect(ft.give(d(1), 0, f, 'again')).toBeNull();
    // vCPU 1 is another heap: it needs the buffer too.
    expect(ft.give(d(1), 1, f, 'other vcpu')?.buffer).toBe(f.buffer);
    expect(ft.give(d(1), 1, f, 'again')).toBeNull();
    expect(ft.log).toEqual([{ domid: 1, extentBase: f.mfn, pages: 1, owner: 1, reason: 'test' }]);
  });
});

describe('handle audit', () => {
  it('passes legitimate handles and flags the rest', () => {
    const hv = new Hypervisor(SpinTokens.createBuffer(1));
    const [own] = hv.frames.alloc(d(1), 0);
    const [other] = hv.frames.alloc(d(2), 0);
    const [shared] = hv.frames.alloc(DOMID_XEN, 0, 'wake', [d(1)]);
    const [notShared] = hv.frames.alloc(DOMID_XEN, 0, 'wake', [d(3)]);
    hv.frames.give(d(1), 0, own, 'ram');
    hv.frames.give(d(1), 0, other, 'map_grant_ref dom2 ref 9');
    hv.frames.give(d(1), 0, shared, 'wake page');
    expect(hv.auditHandles().violations).toEqual([]);
    hv.frames.give(d(3), 0, other, 'increase_reservation');
    hv.frames.give(d(1), 0, notShared, 'wake page');
    const v = hv.auditHandles().violations;
    expect(v).toHaveLength(2);
    expect(v[0]).toMatch(/dom3 got frame \d+ of dom2/);
    expect(v[1]).toMatch(/dom1 got hypervisor frame \d+ it does not share/);
  });
});

describe('spin tokens', () => {
  it('lets at most N threads spin and returns tokens on release', () => {
    const t = new SpinTokens(SpinTokens.createBuffer(2));
    expect(t.tryAcquire()).toBe(true);
    expect(t.tryAcquire()).toBe(true);
    expect(t.tryAcquire()).toBe(false);
    t.release();
    expect(t.available()).toBe(1);
    const w = new Int32Array(1);
    expect(t.spinWhileEqual(w, 0, 0, 100)).toBe(false); // no change: spun out, token returned
    expect(t.available()).toBe(1);
    t.tryAcquire();
    expect(t.spinWhileEqual(w, 0, 5, 100)).toBe(false); // no token: blocks at once
    expect(t.counters.refused).toBeGreaterThan(0);
  });
});

describe('ABI struct sizes (x86_64, from xen-pv-abi.md)', () => {
  it('matches Xen', () => {
    expect(GRANT_ENTRY_V1.size).toBe(8);
    expect(GNTTAB_MAP_GRANT_REF.size).toBe(32);
    expect(GNTTAB_MAP_GRANT_REF.fields.status.offset).toBe(18);
    expect(GNTTAB_MAP_GRANT_REF.fields.handle.offset).toBe(20);
    expect(GNTTAB_UNMAP_GRANT_REF.size).toBe(24);
    expect(GNTTAB_UNMAP_GRANT_REF.fields.status.offset).toBe(20);
    expect(GNTTAB_COPY.size).toBe(40);
    expect(GNTTAB_COPY.fields.len.offset).toBe(32);
    expect(GNTTAB_COPY.fields.status.offset).toBe(36);
    expect(EVTCHN_ALLOC_UNBOUND.size).toBe(8);
    expect(EVTCHN_BIND_INTERDOMAIN.fields.local_port.offset).toBe(8);
    expect(EVTCHN_STATUS.size).toBe(24);
    expect(XEN_MEMORY_RESERVATION.size).toBe(32);
    expect(SHARED_INFO.fields.evtchn_pending.offset).toBe(2048);
    expect(SHARED_INFO.fields.evtchn_mask.offset).toBe(2560);
    expect(VCPU_INFO.fields.evtchn_pending_sel.offset).toBe(8);
    expect(HYPERCALL_PAGE.fields.args.offset + HYPERCALL_PAGE.fields.args.size).toBe(4096);
  });
});
