import { describe, expect, it } from 'vitest';
import { deviceInfo, native } from '../worker/engine.ts';

describe('native addon', () => {
  it('loads and reports its ABI version', () => {
    expect(native().abiVersion).toBe(1);
  });
  it('answers whether a usable GPU exists, with a reason when none does', () => {
    const d = deviceInfo();
    expect(typeof d.cudaCompiled).toBe('boolean');
    if (d.cudaUsable) {
      expect(d.deviceCount).toBeGreaterThan(0);
      expect(d.name.length).toBeGreaterThan(0);
    } else {
      expect(d.reason.length).toBeGreaterThan(0);
    }
  });
});
