// blkback's persistent-grant cache: least-recently-used eviction in batches of 5% of
// the limit (Linux's LRU_PERCENT_CLEAN), never evicting a grant in use.
import { describe, expect, it } from 'vitest';
import { PersistentGrantCache, type PersistentGrant } from '../blkback/blkback.ts';
import type { GrantHandle } from '../hypervisor/abi.ts';

function grant(ref: number): PersistentGrant {
  const g: PersistentGrant = { ref, handle: (1000 + ref) as GrantHandle, page: new Uint8Array(0), active: 0, lastUse: 0, mapping: null! };
  g.mapping = { page: g.page, handle: null, persistent: g };
  return g;
}

describe('PersistentGrantCache', () => {
  it('evicts the least recently used idle grants, 5% of the limit at a time', () => {
    const c = new PersistentGrantCache(40); // 5% of 40 = 2 per eviction
    const evicted: GrantHandle[] = [];
    for (let r = 0; r < 40; r++) expect(c.add(grant(r), evicted)).toBe(true);
    expect(evicted).toEqual([]);
    // Use 0..4 again: 5 and 6 are now the least recently used.
    for (let r = 0; r < 5; r++) expect(c.get(r)?.ref).toBe(r);
    expect(c.add(grant(100), evicted)).toBe(true);
    expect(evicted).toEqual([1005, 1006]);
    expect(c.map.size).toBe(39);
    expect(c.get(5)).toBeUndefined();
    expect(c.get(100)?.ref).toBe(100);
  });

  it('never evicts a grant in use, and refuses to add when every grant is in use', () => {
    const c = new PersistentGrantCache(20); // 1 per eviction
    const evicted: GrantHandle[] = [];
    for (let r = 0; r < 20; r++) c.add(grant(r), evicted);
    for (let r = 0; r < 19; r++) c.get(r)!.active = 1;
    expect(c.add(grant(50), evicted)).toBe(true);
    expect(evicted).toEqual([1019]); // the only idle one, though the most recent
    c.get(50)!.active = 1;
    expect(c.add(grant(51), evicted)).toBe(false);
    expect(c.map.size).toBe(20);
  });
});
