// vitest globalSetup: one redis-server for every suite that needs one (inject('redisUrl')); suites that
// restart Redis start their own with startRedis().
import type { TestProject } from 'vitest/node';
import { startRedis } from './redis.ts';

declare module 'vitest' {
  export interface ProvidedContext { redisUrl: string; redisPid: number }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const redis = await startRedis();
  project.provide('redisUrl', redis.url);
  project.provide('redisPid', redis.pid);
  return () => redis.stop();
}
