import type { KubeConfig } from '@kubernetes/client-node';
import { TenderError } from '../errors/errors.js';

/**
 * The kubeconfig `file` (--kubeconfig or KUBECONFIG), else the in-cluster service account. The
 * Kubernetes client is imported here, on use: it costs every other command half a second of startup.
 */
export async function loadKubeConfig(file: string | undefined): Promise<KubeConfig> {
  const { KubeConfig } = await import('@kubernetes/client-node');
  const kc = new KubeConfig();
  if (file) {
    try {
      kc.loadFromFile(file);
    } catch (err) {
      throw new TenderError('TENDER_USAGE', `cannot load the kubeconfig ${file}: ${(err as Error).message}`, { hint: 'fix --kubeconfig or KUBECONFIG' });
    }
    return kc;
  }
  if (!process.env.KUBERNETES_SERVICE_HOST) {
    throw new TenderError('TENDER_USAGE', 'not running in a Kubernetes pod, and no kubeconfig given', {
      hint: 'pass --kubeconfig or set KUBECONFIG (outside a cluster)',
    });
  }
  kc.loadFromCluster();
  return kc;
}
