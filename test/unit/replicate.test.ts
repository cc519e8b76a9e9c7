// The choices `vdiskfs replicate` makes before it runs anything: snapshot names, the last common snapshot,
// and which of its own snapshots it prunes (never the user's, never the newest `keep`).
import { describe, expect, it } from 'vitest';
import { isReplicaName, lastCommon, snapshotName, toPrune } from '../../src/cli/replicate.js';

const snap = (name: string, id: string) => ({ name, id, created: '', size: 0, heldBytes: 0 });

describe('replicate', () => {
  it('names snapshots by UTC time, unique within the second', () => {
    const t = new Date('2026-12-03T07:08:09.123Z');
    expect(snapshotName('repl', t, new Set())).toBe('repl-20261203-070809');
    expect(snapshotName('repl', t, new Set(['repl-20261203-070809']))).toBe('repl-20261203-070809.2');
    expect(snapshotName('repl', t, new Set(['repl-20261203-070809', 'repl-20261203-070809.2']))).toBe('repl-20261203-070809.3');
  });

  it('recognises only its own names for the prefix', () => {
    expect(isReplicaName('repl', 'repl-20261203-070809')).toBe(true);
    expect(isReplicaName('repl', 'repl-20261203-070809.2')).toBe(true);
    expect(isReplicaName('repl', 'repl-monday')).toBe(false);
    expect(isReplicaName('repl', 'xrepl-20261203-070809')).toBe(false);
    expect(isReplicaName('a.b', 'a.b-20261203-070809')).toBe(true);
    expect(isReplicaName('a.b', 'axb-20261203-070809')).toBe(false);
  });

  it('finds the newest source snapshot the target holds by identity, not by name', () => {
    const src = [snap('s1', 'u1'), snap('s2', 'u2'), snap('s3', 'u3')];
    expect(lastCommon(src, [snap('s1', 'u1'), snap('s2', 'u2')])?.name).toBe('s2');
    expect(lastCommon(src, [snap('s2', 'other'), snap('s1', 'u1')])?.name).toBe('s1');
    expect(lastCommon(src, [snap('s3', 'x')])).toBeUndefined();
    expect(lastCommon(src, [])).toBeUndefined();
  });

  it('prunes the oldest of its own snapshots beyond keep', () => {
    const snaps = [snap('repl-20261201-000000', 'a'), snap('monday', 'm'), snap('repl-20261202-000000', 'b'), snap('repl-20261203-000000', 'c')];
    expect(toPrune('repl', snaps, 2)).toEqual(['repl-20261201-000000']);
    expect(toPrune('repl', snaps, 1)).toEqual(['repl-20261201-000000', 'repl-20261202-000000']);
    expect(toPrune('repl', snaps, 3)).toEqual([]);
  });
});
