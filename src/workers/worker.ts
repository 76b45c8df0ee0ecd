import { parentPort, workerData } from 'node:worker_threads';
import type { MasterKeys } from '../transform/keys.js';
import { CodecOps } from './ops.js';
import type { WorkerRequest, WorkerResponse } from './protocol.js';

const { keys, compressionLevel } = workerData as { keys: MasterKeys; compressionLevel: number };
const ops = new CodecOps(
  { encryption: Buffer.from(keys.encryption), blobId: Buffer.from(keys.blobId), gearSeed: Buffer.from(keys.gearSeed) },
  compressionLevel,
);

parentPort!.on('message', (msg: WorkerRequest) => {
  let response: WorkerResponse;
  const transfer: ArrayBuffer[] = [];
  try {
    switch (msg.op) {
      case 'hash': {
        const ids = ops.hash(new Uint8Array(msg.buffer), msg.spans);
        transfer.push(ids.buffer as ArrayBuffer);
        response = { seq: msg.seq, op: 'hash', ids };
        break;
      }
      case 'seal': {
        response = { seq: msg.seq, op: 'seal', sealed: ops.seal(new Uint8Array(msg.buffer), msg.requests) };
        break;
      }
      case 'open': {
        const opened = ops.open(msg.requests);
        for (const o of opened) if ('plain' in o) transfer.push(o.plain.buffer as ArrayBuffer);
        response = { seq: msg.seq, op: 'open', opened };
        break;
      }
    }
  } catch (err) {
    response = { seq: msg.seq, op: 'error', message: (err as Error).stack ?? String(err) };
  }
  parentPort!.postMessage(response, transfer);
});
