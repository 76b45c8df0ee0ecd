/** Errors of @kubernetes/client-node calls, for messages and retry decisions (agent/, velero/). */

/** The HTTP status of a client-node API error, if it is one. */
export function statusCode(err: unknown): number | undefined {
  const e = err as { code?: unknown; statusCode?: unknown } | null;
  const c = e?.code ?? e?.statusCode;
  return typeof c === 'number' ? c : undefined;
}

/**
 * A short text for an API error (client-node's ApiException carries the whole response body: its
 * `message` is taken) or for a failed connection (its message, with the system code).
 */
export function kubeErrorText(err: unknown): string {
  const code = statusCode(err);
  const body = (err as { body?: unknown } | null)?.body;
  if (code !== undefined) {
    let message: string | undefined;
    try {
      const parsed: unknown = typeof body === 'string' ? JSON.parse(body) : body;
      message = (parsed as { message?: string } | undefined)?.message;
    } catch {
      // not JSON
    }
    return `HTTP ${code}${message ? `: ${message}` : ''}`;
  }
  const e = err as { message?: string; code?: string; cause?: { code?: string; message?: string } } | null;
  const sys = e?.cause?.code ?? e?.code;
  return [e?.message ?? String(err), sys && !(e?.message ?? '').includes(sys) ? `(${sys})` : '']
    .filter(Boolean)
    .join(' ');
}
