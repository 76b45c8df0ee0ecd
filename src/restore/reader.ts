import { BlobType } from '../repo/blob.js';
import { packKey } from '../repo/pack/pack.js';
import { corrupt, type IndexView, type Repository } from '../repo/repository.js';
import type { FileChunk } from '../repo/snapshot/file-chunks.js';
import type { BufferPool, PooledBuffer } from '../util/buffer-pool.js';
import type { OpenRequest } from '../workers/ops.js';
import type { CodecExecutor } from '../workers/pool.js';
import type { PackRead } from './plan.js';

/** The repository as one restore sees it: lookups and pack numbers from one index view. */
export interface RestoreSource {
  repo: Repository;
  view: IndexView;
}

/** Reused shared buffers for restore: packs are read into one, workers write plaintext into another. */
export interface BufferPair {
  reads: BufferPool;
  plaintext: BufferPool;
}

/** Hands each blob's plaintext to the caller (valid until the promise it returns settles). */
export type UseBlob = (ref: FileChunk, plaintext: Uint8Array) => Promise<void>;

/**
 * A worker message opens blobs of at least this much plaintext: a default chunk (1 MiB on
 * average) goes alone, so the blobs of one read are opened by all workers at once; the tiny blobs
 * of small files go together, so that a read of a thousand of them is not a thousand messages.
 */
const openGroupBytes = 1024 * 1024;

/**
 * Reads ranges of packs into pooled buffers and has the workers decrypt, decompress and verify
 * their blobs into other pooled buffers. The steps of one read:
 *
 *   reserve (a read buffer: waits while all are in use) → plaintext buffer → ranged get, and at
 *   the same time the bases of its delta blobs into their target regions
 *   (Repository.attachDeltaBases) → open the blobs in groups, each group in its own worker
 *   message (a delta is XORed onto its base in place) → `use` each group's blobs as soon as it
 *   is open
 */
export class PackReader {
  constructor(
    private readonly src: RestoreSource,
    private readonly executor: CodecExecutor,
  ) {}

  /**
   * Waits for a read buffer of `pools`: the caller reserves before it starts a read, so reads in
   * flight (read-ahead) are bounded by the pool, and a caller that plans reads in file order
   * issues them in that order.
   */
  reserve(pools: BufferPair): Promise<PooledBuffer> {
    return pools.reads.acquire();
  }

  /**
   * Fetches `read` into `sealed` (from reserve; always returned to its pool), opens its blobs
   * and calls `use` for each. Blobs of different groups are used concurrently, in any order.
   * Throws naming the pack when it is missing, short or damaged, once every `use` begun has ended.
   */
  async read(pools: BufferPair, sealed: PooledBuffer, read: PackRead, use: UseBlob): Promise<void> {
    const packId = this.src.view.packIdAt(read.packIndex);
    let sealedHeld = true;
    const releaseSealed = () => {
      if (sealedHeld) pools.reads.release(sealed);
      sealedHeld = false;
    };
    let plain: PooledBuffer | undefined;
    try {
      plain = await pools.plaintext.acquire();
      const requests = openRequests(read, plain.buffer);
      // The range, and at the same time the bases of its delta blobs (other packs' ranges), each
      // loaded into its blob's target region: the delta is opened onto it. Both end before the
      // buffers can go back, whichever fails.
      const fetched = await Promise.allSettled([
        this.src.repo.readPackRange(packId, read.offset, read.length, sealed.view),
        this.src.repo.attachDeltaBases(requests, this.src.view),
      ]);
      const fetchFailed = fetched.find((s) => s.status === 'rejected');
      if (fetchFailed) throw fetchFailed.reason;
      const view = plain.view;
      let opened = 0;
      const groups = groupRequests(requests).map(async ([from, to]) => {
        const results = await this.executor.open(sealed.buffer, requests.slice(from, to));
        // The sealed bytes are not needed once every group is open: the next read may have them.
        if ((opened += to - from) === requests.length) releaseSealed();
        for (let i = from; i < to; i++) {
          const problem = results[i - from];
          if (problem !== null) throw corrupt(packKey(packId), `is damaged: ${problem}`);
        }
        for (let i = from; i < to; i++) {
          const at = requests[i]!.targetOffset!;
          await use(read.refs[i]!, view.subarray(at, at + requests[i]!.rawLength));
        }
      });
      // Every group ends before the buffers go back: a worker may still be reading them.
      const failed = (await Promise.allSettled(groups)).find((s) => s.status === 'rejected');
      if (failed) throw failed.reason;
    } finally {
      releaseSealed();
      if (plain) pools.plaintext.release(plain);
    }
  }
}

/** Open requests for the blobs of `read`, their plaintexts back to back in `target`. */
function openRequests(read: PackRead, target: SharedArrayBuffer): OpenRequest[] {
  let at = 0;
  return read.refs.map((ref) => {
    const request: OpenRequest = {
      type: BlobType.data,
      id: ref.id,
      flags: ref.loc.flags,
      rawLength: ref.loc.rawLength,
      offset: ref.loc.offset - read.offset,
      storedLength: ref.loc.storedLength,
      target,
      targetOffset: at,
    };
    at += ref.loc.rawLength;
    return request;
  });
}

/** [from, to) ranges of consecutive requests with at least openGroupBytes of plaintext each (the last may have less). */
function groupRequests(requests: readonly OpenRequest[]): Array<[number, number]> {
  const groups: Array<[number, number]> = [];
  let from = 0;
  let bytes = 0;
  for (let i = 0; i < requests.length; i++) {
    bytes += requests[i]!.rawLength;
    if (bytes >= openGroupBytes || i === requests.length - 1) {
      groups.push([from, i + 1]);
      from = i + 1;
      bytes = 0;
    }
  }
  return groups;
}
