// The one typed boundary to the native engine (csrc/, built by cmake-js into build/Release/kvfleet.node).
// Every native function is declared here once; native errors become EngineError subclasses here and nowhere else.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const ADDON_PATH = process.env.KVFLEET_ADDON ?? path.join(ROOT, 'build/Release/kvfleet.node');

export interface DeviceInfo {
  cudaCompiled: boolean;
  cudaUsable: boolean;
  deviceCount: number;
  name: string;
  reason: string;
  computeCapability: string;
  totalMemory: number;
}

interface NativeAddon {
  abiVersion: number;
  deviceInfo(): DeviceInfo;
}

// ---- errors: one class per native error kind ----
export class EngineError extends Error {
  readonly code: string;
  constructor(message: string, code = 'INTERNAL') { super(message); this.name = new.target.name; this.code = code; }
}
export class BadModelError extends EngineError { constructor(m: string) { super(m, 'BAD_MODEL'); } }
export class OutOfPagesError extends EngineError { constructor(m: string) { super(m, 'OUT_OF_PAGES'); } }
export class BadArgumentError extends EngineError { constructor(m: string) { super(m, 'BAD_ARGUMENT'); } }
export class InternalEngineError extends EngineError { constructor(m: string) { super(m, 'INTERNAL'); } }
export class AddonMissingError extends EngineError { constructor(m: string) { super(m, 'ADDON_MISSING'); } }

/** Converts whatever the addon threw into the typed class for its `code`. */
export function toEngineError(err: unknown): EngineError {
  if (err instanceof EngineError) return err;
  const e = err as { message?: string; code?: string };
  const msg = e?.message ?? String(err);
  switch (e?.code) {
    case 'BAD_MODEL': return new BadModelError(msg);
    case 'OUT_OF_PAGES': return new OutOfPagesError(msg);
    case 'BAD_ARGUMENT': return new BadArgumentError(msg);
    default: return new InternalEngineError(msg);
  }
}

let addon: NativeAddon | undefined;

/** Loads the addon once; a missing build is an AddonMissingError that says how to build it. */
export function native(): NativeAddon {
  if (addon) return addon;
  if (!existsSync(ADDON_PATH)) {
    throw new AddonMissingError(`the engine addon is not built (${ADDON_PATH} is missing): run \`npm run build\``);
  }
  const require = createRequire(import.meta.url);
  addon = require(ADDON_PATH) as NativeAddon;
  return addon;
}

export function deviceInfo(): DeviceInfo {
  try { return native().deviceInfo(); } catch (err) { throw toEngineError(err); }
}
