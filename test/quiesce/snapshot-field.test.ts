/**
 * The snapshot's optional `quiesce` field (docs/design.md, "Snapshots"): written and read back,
 * absent in older snapshots, malformed ones rejected as damage.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { FormatError } from '../../src/repo/binary.js';
import { type Snapshot, decodeSnapshot, encodeSnapshot } from '../../src/repo/snapshot/snapshot.js';

const key = randomBytes(32);
const base: Snapshot = {
  version: 1,
  time: '2026-12-07T01:00:00.000Z',
  hostname: 'node-7',
  username: 'root',
  paths: ['/data/ckpt'],
  tags: [],
  tree: 'ab'.repeat(32),
  program: 'tender 0.1.0',
};

describe('snapshot quiesce field', () => {
  it('round-trips, and is absent from snapshots without it', () => {
    const quiesce = [
      { path: '/data/ckpt', quiesced: true, frozenMs: 12 },
      { path: '/data/logs', quiesced: false, reasons: ['pre-hook: POST http://10.0.0.7:8080/q answered HTTP 500'], postHookError: 'x' },
    ];
    expect(decodeSnapshot(key, encodeSnapshot(key, { ...base, quiesce })).quiesce).toEqual(quiesce);
    expect('quiesce' in decodeSnapshot(key, encodeSnapshot(key, base))).toBe(false);
  });

  it('rejects malformed entries as damage', () => {
    for (const quiesce of [{}, [{ quiesced: true }], [{ path: '/x', quiesced: 'yes' }], [{ path: '/x', quiesced: true, reasons: 'no' }], [{ path: '/x', quiesced: true, frozenMs: -1 }], [null]]) {
      const stored = encodeSnapshot(key, { ...base, quiesce } as unknown as Snapshot);
      expect(() => decodeSnapshot(key, stored), JSON.stringify(quiesce)).toThrow(FormatError);
    }
  });
});
