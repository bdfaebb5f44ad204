// Label and field selectors as the API server parses them from ?labelSelector= and ?fieldSelector=.
// A selector that cannot be parsed is a SelectorError; the server answers 400 BadRequest with its message.

export class SelectorError extends Error {}

export type Matcher<T> = (x: T) => boolean;
type Labels = Record<string, string> | undefined;

/** Splits on commas that are not inside parentheses: `a in (x,y),b` → [`a in (x,y)`, `b`]. */
function splitTop(s: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let cur = '';
  for (const ch of s) {
    if (ch === '(') depth++;
    if (ch === ')') depth--;
    if (ch === ',' && depth === 0) { parts.push(cur); cur = ''; } else cur += ch;
  }
  parts.push(cur);
  return parts.map((p) => p.trim()).filter((p) => p !== '');
}

const KEY = String.raw`[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?`;
const VALUE = String.raw`([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?`;

/** Parses a label selector string (=, ==, !=, in, notin, exists, !exists); '' selects everything. */
export function parseLabelSelector(selector: string): Matcher<Labels> {
  const reqs: Matcher<Labels>[] = [];
  for (const part of splitTop(selector)) {
    let m: RegExpMatchArray | null;
    if ((m = part.match(new RegExp(`^(${KEY})\\s+(in|notin)\\s+\\(([^)]*)\\)$`)))) {
      const key = m[1];
      const values = new Set(m[4].split(',').map((v) => v.trim()).filter((v) => v !== ''));
      if (values.size === 0) throw new SelectorError(`labelSelector "${selector}": ${m[3]} needs at least one value`);
      const inSet = m[3] === 'in';
      reqs.push((l) => (l?.[key] !== undefined && values.has(l[key])) === inSet);
    } else if ((m = part.match(new RegExp(`^(${KEY})\\s*(==|=|!=)\\s*(${VALUE})$`)))) {
      const [key, op, value] = [m[1], m[3], m[4]];
      if (op === '!=') reqs.push((l) => l?.[key] !== value);
      else reqs.push((l) => l?.[key] === value);
    } else if ((m = part.match(new RegExp(`^!\\s*(${KEY})$`)))) {
      const key = m[1];
      reqs.push((l) => l?.[key] === undefined);
    } else if ((m = part.match(new RegExp(`^(${KEY})$`)))) {
      const key = m[1];
      reqs.push((l) => l?.[key] !== undefined);
    } else {
      throw new SelectorError(`unable to parse requirement "${part}" of labelSelector "${selector}"`);
    }
  }
  return (l) => reqs.every((r) => r(l));
}

/** Parses a field selector (`a=b`, `a==b`, `a!=b`, comma-joined) over the given supported field labels. */
export function parseFieldSelector(selector: string, supported: readonly string[]): Matcher<Record<string, string>> {
  const reqs: Matcher<Record<string, string>>[] = [];
  for (const part of splitTop(selector)) {
    const m = part.match(/^([^=!\s]+)\s*(==|=|!=)\s*(.*)$/);
    if (!m) throw new SelectorError(`invalid fieldSelector requirement "${part}"`);
    const [field, op, value] = [m[1], m[2], m[3].trim()];
    if (!supported.includes(field)) {
      throw new SelectorError(`field label not supported: ${field}`);
    }
    reqs.push(op === '!=' ? (f) => (f[field] ?? '') !== value : (f) => (f[field] ?? '') === value);
  }
  return (f) => reqs.every((r) => r(f));
}

interface LabelSelectorObject {
  matchLabels?: Record<string, string>;
  matchExpressions?: { key: string; operator: string; values?: string[] }[];
}

/** metav1.LabelSelector → its string form (what Scale.status.selector carries). */
export function labelSelectorString(sel: LabelSelectorObject | undefined): string {
  if (!sel) return '';
  const parts = Object.entries(sel.matchLabels ?? {}).map(([k, v]) => `${k}=${v}`);
  for (const e of sel.matchExpressions ?? []) {
    const vals = [...(e.values ?? [])].sort().join(',');
    switch (e.operator) {
      case 'In': parts.push(`${e.key} in (${vals})`); break;
      case 'NotIn': parts.push(`${e.key} notin (${vals})`); break;
      case 'Exists': parts.push(e.key); break;
      case 'DoesNotExist': parts.push(`!${e.key}`); break;
      default: throw new SelectorError(`unknown label selector operator "${e.operator}"`);
    }
  }
  return parts.sort().join(',');
}
