import { parentPort } from 'node:worker_threads';
import { CodecOps } from './ops.js';
import type { WorkerRequest, WorkerResponse } from './protocol.js';
import { decodeOpens, decodeSeals, encodeSealed } from './wire.js';

/** Set by the first message ('init'): the thread starts before the repository's keys are known. */
let ops: CodecOps | undefined;

parentPort!.on('message', (msg: WorkerRequest) => {
  if (msg.op === 'init') {
    const { keys } = msg;
    ops = new CodecOps({ encryption: Buffer.from(keys.encryption), blobId: Buffer.from(keys.blobId), gearSeed: Buffer.from(keys.gearSeed) }, msg.compressionLevel, msg.transforms);
    return;
  }
  if (msg.op === 'close') {
    // Messages arrive in order, so every request sent before this one has been answered.
    parentPort!.close();
    return;
  }
  let response: WorkerResponse;
  const transfer: ArrayBuffer[] = [];
  try {
    if (!ops) throw new Error('a request came before the keys');
    switch (msg.op) {
      case 'hash': {
        const hashed = ops.hash(new Uint8Array(msg.buffer), msg.spans);
        transfer.push(hashed.ids.buffer as ArrayBuffer);
        response = { seq: msg.seq, op: 'hash', hashed };
        break;
      }
      case 'seal': {
        const sealed = encodeSealed(ops.seal(new Uint8Array(msg.buffer), decodeSeals(msg.requests)));
        transfer.push(sealed.buffer as ArrayBuffer);
        response = { seq: msg.seq, op: 'seal', sealed };
        break;
      }
      case 'open': {
        response = { seq: msg.seq, op: 'open', opened: ops.open(new Uint8Array(msg.buffer), decodeOpens(msg.requests)) };
        break;
      }
    }
  } catch (err) {
    response = { seq: msg.seq, op: 'error', message: (err as Error).stack ?? String(err) };
  }
  parentPort!.postMessage(response, transfer);
});
