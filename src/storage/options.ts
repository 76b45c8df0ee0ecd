/**
 * Settings for opening a storage location (see openStorage in open.ts). Here, not in open.ts, so
 * that the backends (s3.ts) and open.ts both import it and imports point one way: open → s3.
 */
export interface StorageOptions {
  /** S3 endpoint URL override (else AWS_ENDPOINT_URL / AWS defaults). */
  s3Endpoint?: string;
  /** CA bundle for TLS to the S3 endpoint. */
  caBundle?: string;
  /** S3 region (else AWS_REGION / AWS_DEFAULT_REGION / us-east-1), e.g. a Velero storage location's. */
  s3Region?: string;
}
