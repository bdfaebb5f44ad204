// Writes the CRD YAML (manifests/crds/, charts/kvfleet/crds/) and the example specs of charts/kvfleet/values.schema.json
// from the schemas in operator/api/v1alpha1.ts.
//   node_modules/.bin/node scripts/gen-crds.ts          write the files
//   node_modules/.bin/node scripts/gen-crds.ts --check  exit 1 (naming the files) when a committed copy is stale
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { renderCrdFiles } from '../operator/api/render.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function read(file: string): string | undefined {
  try { return readFileSync(file, 'utf8'); } catch { return undefined; }
}

const check = process.argv.includes('--check');
const stale: string[] = [];
for (const [rel, text] of renderCrdFiles()) {
  const file = path.join(ROOT, rel);
  if (read(file) === text) continue;
  if (check) { stale.push(rel); continue; }
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, text);
  process.stdout.write(`wrote ${rel}\n`);
}
if (stale.length > 0) {
  process.stderr.write(`stale CRD YAML (run node_modules/.bin/node scripts/gen-crds.ts): ${stale.join(', ')}\n`);
  process.exitCode = 1;
}
