import { defineConfig } from 'vitest/config';

// Test files that start workers must not run side by side: spin tokens do not span
// processes (DESIGN.md, decision 4), and the machine has two cores. The whole suite
// therefore runs one file at a time; the pure-logic files are fast anyway.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    teardownTimeout: 20_000,
  },
});
