/**
 * Cleanup that must run when the user interrupts a command (Ctrl-C): e.g. a backup removes its
 * session marker so a prune does not wait a grace period for it. Handlers are bounded in time.
 */
const handlers = new Set<() => Promise<void>>();

/** Registers `cleanup`; returns a function that unregisters it. */
export function onInterrupt(cleanup: () => Promise<void>): () => void {
  handlers.add(cleanup);
  return () => handlers.delete(cleanup);
}

export async function runInterruptHandlers(timeoutMs: number): Promise<void> {
  const all = Promise.allSettled([...handlers].map((h) => h()));
  await Promise.race([all, new Promise((resolve) => setTimeout(resolve, timeoutMs).unref())]);
}
