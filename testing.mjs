// pvio's `pvio/testing` entry: registers tsx (as index.mjs does) and re-exports the
// in-process mocks of testing/index.ts (MockMachine, MockFrontend, MockBackend) for
// unit-testing one side of a driver without domains.
import { register } from 'tsx/esm/api';

register();

const kit = await import(new URL('./testing/index.ts', import.meta.url).href);

export const { MockMachine, MockDomain, MockFrontend, MockBackend } = kit;
