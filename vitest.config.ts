import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/setup/minio.ts', 'test/setup/kube.ts'],
    testTimeout: 120_000,
    hookTimeout: 300_000,
    // Two cores: run test files two at a time so process-spawning tests do not starve each other.
    maxWorkers: 2,
    minWorkers: 1,
  },
});
