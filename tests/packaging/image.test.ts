// The container image's runtime stage must carry every shared library the addon links (no Docker engine here, so
// the Dockerfile is checked against the addon this checkout built): each library `ldd` lists is either part of every
// glibc system or installed by name in the runtime stage.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const root = path.resolve(import.meta.dirname, '../..');
// libraries in every Ubuntu base image (glibc, the loader, libgcc_s which glibc itself needs)
const BASE = [/^linux-vdso/, /^libc\.so/, /^libm\.so/, /^ld-linux/, /^libpthread\.so/, /^libdl\.so/, /^librt\.so/, /^libgcc_s\.so/];
// the Debian/Ubuntu package that carries each other library the addon may link
const PACKAGE: Array<[RegExp, string]> = [[/^libgomp\.so/, 'libgomp1'], [/^libstdc\+\+\.so/, 'libstdc++6']];

function runtimeStage(dockerfile: string): string {
  const stages = dockerfile.split(/^FROM /m);
  const rt = stages.find((s) => /\bAS runtime\b/.test(s.split('\n')[0]));
  if (!rt) throw new Error('Dockerfile: no stage named runtime');
  return rt;
}

describe('container image', () => {
  it('installs every shared library the addon needs in the runtime stage, and loads the addon there', () => {
    const libs = execFileSync('ldd', [path.join(root, 'build/Release/kvfleet.node')], { encoding: 'utf8' })
      .split('\n').map((l) => l.trim().split(/\s+/)[0]).filter(Boolean).map((l) => path.basename(l));
    expect(libs).toContain('libgomp.so.1');   // OpenMP: the dependency the runtime stage once lacked
    const stage = runtimeStage(readFileSync(path.join(root, 'Dockerfile'), 'utf8'));
    const installed = new Set([...stage.matchAll(/apt-get install[^\n]*?((?:[ \t]+[a-z0-9][a-z0-9+.-]*)+)/g)]
      .flatMap((m) => m[1].trim().split(/\s+/)));
    for (const lib of libs) {
      if (BASE.some((re) => re.test(lib))) continue;
      const pkg = PACKAGE.find(([re]) => re.test(lib))?.[1];
      expect(pkg, `${lib}: which package carries it? add it to PACKAGE and to the runtime stage`).toBeDefined();
      expect(installed.has(pkg!), `${lib}: the runtime stage does not install ${pkg}`).toBe(true);
    }
    expect(stage).toMatch(/require\('\/app\/build\/Release\/kvfleet\.node'\)/);
  });
});
