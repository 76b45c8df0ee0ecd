/**
 * Ctrl-C or a pod's SIGTERM: every operation running in this process is cancelled through its
 * AbortSignal and unwinds by itself (a backup stores and indexes what it has, then ends its
 * session); the process exits once the command returns, or at the deadline bin/tender.js sets.
 */
const running = new Set<AbortController>();

/** Registers an operation's controller; returns a function that unregisters it. */
export function cancelOnInterrupt(controller: AbortController): () => void {
  running.add(controller);
  return () => running.delete(controller);
}

/** Cancels every registered operation; false when none was running. */
export function interruptRunningOperations(signalName: string): boolean {
  if (running.size === 0) return false;
  for (const controller of running) controller.abort(new Error(`interrupted by ${signalName}`));
  return true;
}
