import { defineConfig } from 'vitest/config';

// Integration tests mount FUSE filesystems and loop devices: run files one at a time (2-core machines),
// with generous per-test timeouts. Unit tests are fast either way.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 60_000,
    pool: 'forks',
  },
});
