// Admission from a CRD's structural schema (openAPIV3Schema): pruning of unknown fields, `default`s, the
// OpenAPI value checks, and `x-kubernetes-validations` CEL rules evaluated with @bufbuild/cel.
// Field paths in causes are written the way the real API server writes them: `spec.items[0].name`, `spec.m[key]`.

import { celEnv, isCelError, parse, plan } from '@bufbuild/cel';
import { strings } from '@bufbuild/cel/ext';
import { clone, deepEqual, isObject, type Json, type JsonObject } from './patch.ts';

export interface ValidationRule {
  rule: string;
  message?: string;
  messageExpression?: string;
  fieldPath?: string;
  reason?: string;
  optionalOldSelf?: boolean;
}

export interface Schema {
  type?: string;
  properties?: Record<string, Schema>;
  required?: string[];
  items?: Schema;
  additionalProperties?: Schema | boolean;
  enum?: Json[];
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: boolean;
  exclusiveMaximum?: boolean;
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  minItems?: number;
  maxItems?: number;
  uniqueItems?: boolean;
  minProperties?: number;
  maxProperties?: number;
  multipleOf?: number;
  nullable?: boolean;
  default?: Json;
  format?: string;
  allOf?: Schema[];
  anyOf?: Schema[];
  oneOf?: Schema[];
  not?: Schema;
  'x-kubernetes-preserve-unknown-fields'?: boolean;
  'x-kubernetes-int-or-string'?: boolean;
  'x-kubernetes-embedded-resource'?: boolean;
  'x-kubernetes-list-type'?: string;
  'x-kubernetes-list-map-keys'?: string[];
  'x-kubernetes-validations'?: ValidationRule[];
}

/** One entry of Status.details.causes. */
export interface Cause { reason: string; message: string; field: string }

const child = (path: string, key: string) => (path === '' ? key : `${path}.${key}`);
const show = (v: Json) => JSON.stringify(v);

function typeName(v: Json): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'number';
  return typeof v;
}

// ---------------------------------------------------------------------------------------------------------------
// Pruning and defaulting

/**
 * Drops fields the schema does not declare (collecting their paths in `unknown`), turns nulls of non-nullable
 * fields into their default or drops them, and fills `default`s of absent properties. `root` keeps apiVersion,
 * kind and metadata, which belong to the API server rather than to the schema.
 */
export function pruneAndDefault(value: Json, schema: Schema, path: string, unknown: string[], root = false): Json {
  if (Array.isArray(value)) {
    return schema.items ? value.map((v, i) => pruneAndDefault(v, schema.items!, `${path}[${i}]`, unknown)) : value;
  }
  if (!isObject(value)) return value;
  const out: JsonObject = {};
  const props = schema.properties ?? {};
  const preserve = schema['x-kubernetes-preserve-unknown-fields'] === true;
  const extra = schema.additionalProperties;
  for (const [k, v] of Object.entries(value)) {
    if (root && (k === 'apiVersion' || k === 'kind' || k === 'metadata')) { out[k] = v; continue; }
    const sub = props[k] ?? (isObject(extra) ? extra as Schema : undefined);
    const at = props[k] || !isObject(extra) ? child(path, k) : `${path}[${k}]`;
    if (sub) {
      if (v === null && !sub.nullable) {
        if (sub.default !== undefined) out[k] = clone(sub.default);
        continue;
      }
      out[k] = pruneAndDefault(v, sub, at, unknown);
    } else if (preserve || extra === true) {
      out[k] = v;
    } else {
      unknown.push(at);
    }
  }
  for (const [k, sub] of Object.entries(props)) {
    if (out[k] === undefined && sub.default !== undefined && !(root && k === 'metadata')) {
      out[k] = pruneAndDefault(clone(sub.default), sub, child(path, k), []);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// OpenAPI value checks

function checkType(v: Json, s: Schema, path: string, causes: Cause[]): boolean {
  if (s['x-kubernetes-int-or-string']) {
    if (typeof v === 'string' || (typeof v === 'number' && Number.isInteger(v))) return true;
    causes.push({ reason: 'FieldValueInvalid', field: path,
      message: `Invalid value: "${typeName(v)}": ${path} in body must be of type int-or-string: "${typeName(v)}"` });
    return false;
  }
  if (s.type === undefined) return true;
  const ok = s.type === 'object' ? isObject(v)
    : s.type === 'array' ? Array.isArray(v)
    : s.type === 'integer' ? typeof v === 'number' && Number.isInteger(v)
    : s.type === 'number' ? typeof v === 'number'
    : typeof v === s.type;
  if (!ok) {
    causes.push({ reason: 'FieldValueTypeInvalid', field: path,
      message: `Invalid value: "${typeName(v)}": ${path} in body must be of type ${s.type}: "${typeName(v)}"` });
  }
  return ok;
}

/** Validates `value` against `schema`, appending one cause per violation. */
export function validateSchema(value: Json, s: Schema, path: string, causes: Cause[], skipRoot?: (k: string) => boolean): void {
  if (value === null) {
    if (!s.nullable && s.type !== undefined) {
      causes.push({ reason: 'FieldValueTypeInvalid', field: path,
        message: `Invalid value: "null": ${path} in body must be of type ${s.type}: "null"` });
    }
    return;
  }
  if (!checkType(value, s, path, causes)) return;
  if (s.enum && !s.enum.some((e) => deepEqual(e, value))) {
    causes.push({ reason: 'FieldValueNotSupported', field: path,
      message: `Unsupported value: ${show(value)}: supported values: ${s.enum.map(show).join(', ')}` });
  }
  if (typeof value === 'number') {
    if (s.minimum !== undefined && (s.exclusiveMinimum ? value <= s.minimum : value < s.minimum)) {
      causes.push({ reason: 'FieldValueInvalid', field: path, message: `Invalid value: ${value}: ${path} in body should be `
        + `greater than ${s.exclusiveMinimum ? '' : 'or equal to '}${s.minimum}` });
    }
    if (s.maximum !== undefined && (s.exclusiveMaximum ? value >= s.maximum : value > s.maximum)) {
      causes.push({ reason: 'FieldValueInvalid', field: path, message: `Invalid value: ${value}: ${path} in body should be `
        + `less than ${s.exclusiveMaximum ? '' : 'or equal to '}${s.maximum}` });
    }
    if (s.multipleOf !== undefined && Math.abs(value / s.multipleOf - Math.round(value / s.multipleOf)) > 1e-9) {
      causes.push({ reason: 'FieldValueInvalid', field: path,
        message: `Invalid value: ${value}: ${path} in body should be a multiple of ${s.multipleOf}` });
    }
  }
  if (typeof value === 'string') {
    const len = [...value].length;
    if (s.minLength !== undefined && len < s.minLength) {
      causes.push({ reason: 'FieldValueInvalid', field: path,
        message: `Invalid value: ${show(value)}: ${path} in body should be at least ${s.minLength} chars long` });
    }
    if (s.maxLength !== undefined && len > s.maxLength) {
      causes.push({ reason: 'FieldValueTooLong', field: path, message: `Too long: may not be more than ${s.maxLength} bytes` });
    }
    if (s.pattern !== undefined && !new RegExp(s.pattern, 'u').test(value)) {
      causes.push({ reason: 'FieldValueInvalid', field: path,
        message: `Invalid value: ${show(value)}: ${path} in body should match '${s.pattern}'` });
    }
  }
  if (Array.isArray(value)) {
    if (s.minItems !== undefined && value.length < s.minItems) {
      causes.push({ reason: 'FieldValueInvalid', field: path,
        message: `Invalid value: ${value.length}: ${path} in body should have at least ${s.minItems} items` });
    }
    if (s.maxItems !== undefined && value.length > s.maxItems) {
      causes.push({ reason: 'FieldValueTooMany', field: path, message: `Too many: ${value.length}: must have at most ${s.maxItems} items` });
    }
    const listType = s['x-kubernetes-list-type'];
    if (s.uniqueItems || listType === 'set') {
      value.forEach((v, i) => {
        if (value.findIndex((w) => deepEqual(v, w)) !== i) {
          causes.push({ reason: 'FieldValueDuplicate', field: `${path}[${i}]`, message: `Duplicate value: ${show(v)}` });
        }
      });
    }
    if (listType === 'map') {
      const keys = s['x-kubernetes-list-map-keys'] ?? [];
      value.forEach((v, i) => {
        const id = keys.map((k) => (isObject(v) ? v[k] : undefined));
        if (value.findIndex((w) => deepEqual(keys.map((k) => (isObject(w) ? w[k] : undefined)), id)) !== i) {
          causes.push({ reason: 'FieldValueDuplicate', field: `${path}[${i}]`, message: `Duplicate value: ${show(v)}` });
        }
      });
    }
    if (s.items) value.forEach((v, i) => validateSchema(v, s.items!, `${path}[${i}]`, causes));
  }
  if (isObject(value)) {
    for (const r of s.required ?? []) {
      if (value[r] === undefined && !skipRoot?.(r)) {
        causes.push({ reason: 'FieldValueRequired', field: child(path, r), message: 'Required value' });
      }
    }
    const n = Object.keys(value).length;
    if (s.minProperties !== undefined && n < s.minProperties) {
      causes.push({ reason: 'FieldValueInvalid', field: path, message: `Invalid value: ${n}: ${path} in body should have at least ${s.minProperties} properties` });
    }
    if (s.maxProperties !== undefined && n > s.maxProperties) {
      causes.push({ reason: 'FieldValueTooMany', field: path, message: `Too many: ${n}: must have at most ${s.maxProperties} items` });
    }
    for (const [k, v] of Object.entries(value)) {
      if (skipRoot?.(k)) continue;
      const sub = s.properties?.[k];
      if (sub) validateSchema(v, sub, child(path, k), causes);
      else if (isObject(s.additionalProperties)) validateSchema(v, s.additionalProperties, `${path}[${k}]`, causes);
    }
  }
  for (const sub of s.allOf ?? []) validateSchema(value, sub, path, causes);
  const passes = (sub: Schema) => { const c: Cause[] = []; validateSchema(value, sub, path, c); return c.length === 0; };
  if (s.anyOf && !s.anyOf.some(passes)) {
    causes.push({ reason: 'FieldValueInvalid', field: path, message: `Invalid value: ${show(value)}: ${path} in body must match at least one schema (anyOf)` });
  }
  if (s.oneOf && s.oneOf.filter(passes).length !== 1) {
    causes.push({ reason: 'FieldValueInvalid', field: path, message: `Invalid value: ${show(value)}: ${path} in body must match exactly one schema (oneOf)` });
  }
  if (s.not && passes(s.not)) {
    causes.push({ reason: 'FieldValueInvalid', field: path, message: `Invalid value: ${show(value)}: ${path} in body must not validate the schema (not)` });
  }
}

// ---------------------------------------------------------------------------------------------------------------
// CEL: x-kubernetes-validations

const env = celEnv({ funcs: strings });
type Program = ReturnType<typeof plan>;
const programs = new Map<string, Program>();

/** Parses and plans a CEL expression once; throws the parser's error for a malformed rule. */
function program(expr: string): Program {
  let p = programs.get(expr);
  if (!p) {
    p = plan(env, parse(expr));
    programs.set(expr, p);
  }
  return p;
}

/**
 * The value as CEL sees it: integer-typed fields become CEL `int` (bigint) so `self.min <= self.max` and
 * `self.replicas + 1` type-check as they do in Kubernetes; `number` fields stay `double`.
 */
function toCel(v: Json, s: Schema | undefined): unknown {
  if (Array.isArray(v)) return v.map((x) => toCel(x, s?.items));
  if (isObject(v)) {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) {
      out[k] = toCel(x, s?.properties?.[k] ?? (isObject(s?.additionalProperties) ? s.additionalProperties as Schema : undefined));
    }
    return out;
  }
  if (typeof v === 'number' && Number.isInteger(v) && s?.type !== 'number') return BigInt(v);
  return v;
}

const usesOldSelf = (rule: string) => /\boldSelf\b/.test(rule);

/** Every rule and messageExpression in the schema parses; a CRD carrying one that does not is rejected. */
export function compileRules(s: Schema, path: string, causes: Cause[]): void {
  (s['x-kubernetes-validations'] ?? []).forEach((r, i) => {
    const at = `${path}.x-kubernetes-validations[${i}]`;
    for (const [field, expr] of [['rule', r.rule], ['messageExpression', r.messageExpression]] as const) {
      if (expr === undefined) continue;
      try { program(expr); } catch (e) {
        causes.push({ reason: 'FieldValueInvalid', field: `${at}.${field}`,
          message: `Invalid value: ${show(expr)}: compilation failed: ${(e as Error).message}` });
      }
    }
  });
  for (const [k, sub] of Object.entries(s.properties ?? {})) compileRules(sub, `${path}.properties[${k}]`, causes);
  if (s.items) compileRules(s.items, `${path}.items`, causes);
  if (isObject(s.additionalProperties)) compileRules(s.additionalProperties as Schema, `${path}.additionalProperties`, causes);
}

/**
 * Evaluates the CEL rules of `s` and of every schema below it against `value`. `old` is the value at the same
 * path before the update (undefined on create, or when the path cannot be correlated); transition rules,
 * those that use `oldSelf`, run only when it exists.
 */
export function validateCel(value: Json | undefined, old: Json | undefined, s: Schema, path: string, causes: Cause[],
  skipRoot?: (k: string) => boolean): void {
  if (value === undefined || value === null) return;
  for (const r of s['x-kubernetes-validations'] ?? []) {
    const transition = usesOldSelf(r.rule);
    if (transition && old === undefined && !r.optionalOldSelf) continue;
    const bindings: Record<string, unknown> = { self: toCel(value, s) };
    if (transition) bindings.oldSelf = old === undefined ? null : toCel(old, s);
    const result = program(r.rule)(bindings as never);
    if (result === true) continue;
    const field = r.fieldPath ? (path + r.fieldPath).replace(/^\./, '') : path;
    let message: string;
    if (isCelError(result)) {
      message = `${result.message} evaluating rule: ${r.rule}`;
    } else if (r.messageExpression) {
      const m = program(r.messageExpression)(bindings as never);
      message = typeof m === 'string' && m !== '' ? m : r.message ?? `failed rule: ${r.rule}`;
    } else {
      message = r.message ?? `failed rule: ${r.rule}`;
    }
    causes.push({ reason: r.reason ?? 'FieldValueInvalid', field, message: `Invalid value: "${typeName(value)}": ${message}` });
  }
  if (isObject(value)) {
    const o = isObject(old) ? old : undefined;
    for (const [k, v] of Object.entries(value)) {
      if (skipRoot?.(k)) continue;
      const sub = s.properties?.[k];
      if (sub) validateCel(v, o?.[k], sub, child(path, k), causes);
      else if (isObject(s.additionalProperties)) validateCel(v, o?.[k], s.additionalProperties as Schema, `${path}[${k}]`, causes);
    }
  } else if (Array.isArray(value) && s.items) {
    // Items of a list correlate with their old selves only in map lists, by the list's keys.
    const keys = s['x-kubernetes-list-type'] === 'map' ? s['x-kubernetes-list-map-keys'] ?? [] : undefined;
    const olds = Array.isArray(old) ? old : [];
    value.forEach((v, i) => {
      const before = keys && isObject(v)
        ? olds.find((o) => isObject(o) && keys.every((k) => deepEqual(o[k], v[k])))
        : undefined;
      validateCel(v, before, s.items!, `${path}[${i}]`, causes);
    });
  }
}
