// A small builder for Kubernetes structural OpenAPI v3 schemas whose TypeScript type is inferred from the same
// expression, so each CRD field is written exactly once: `TypeOf<typeof node>` is the type of the admitted object.
//
// Invariants the builders keep (Kubernetes "structural schema" rules):
// - every node has a `type`, except int-or-string nodes, which carry `x-kubernetes-int-or-string` and the
//   anyOf [integer, string] Kubernetes requires;
// - a property the TypeScript type marks as present is either listed in its object's `required` or has a
//   `default` (the API server fills defaults before anything reads the object);
// - `exclusiveMinimum`/`exclusiveMaximum` are the OpenAPI v3.0 booleans, as Kubernetes expects.

/** One rule of `x-kubernetes-validations` (CEL). */
export interface ValidationRule {
  rule: string;
  message?: string;
  messageExpression?: string;
  fieldPath?: string;
  reason?: 'FieldValueInvalid' | 'FieldValueForbidden' | 'FieldValueRequired' | 'FieldValueDuplicate';
}

/** The wire form of a JSONSchemaProps (the keys Kubernetes reads, `x-kubernetes-*` spelled with dashes). */
export interface JsonSchema {
  type?: 'object' | 'array' | 'string' | 'integer' | 'number' | 'boolean';
  description?: string;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  items?: JsonSchema;
  additionalProperties?: JsonSchema;
  enum?: (string | number)[];
  default?: unknown;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: boolean;
  exclusiveMaximum?: boolean;
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  format?: string;
  minItems?: number;
  maxItems?: number;
  anyOf?: JsonSchema[];
  'x-kubernetes-int-or-string'?: boolean;
  'x-kubernetes-preserve-unknown-fields'?: boolean;
  'x-kubernetes-list-type'?: 'atomic' | 'set' | 'map';
  'x-kubernetes-list-map-keys'?: string[];
  'x-kubernetes-map-type'?: 'atomic' | 'granular';
  'x-kubernetes-validations'?: ValidationRule[];
}

/** A schema node carrying the TypeScript type T of its values; P is true when the value is always present
 *  after admission (it has a default). The phantom fields exist only for the type checker. */
export interface Node<T, P extends boolean = boolean> {
  readonly schema: JsonSchema;
  readonly _type?: T;
  readonly _present?: P;
}

export type TypeOf<N> = N extends Node<infer T, boolean> ? T : never;

type Simplify<T> = { [K in keyof T]: T[K] } & {};
type Props = Record<string, Node<unknown, boolean>>;
type PresentKeys<P extends Props, R extends string> =
  { [K in keyof P]: K extends R ? K : P[K] extends Node<unknown, true> ? K : never }[keyof P];
type ObjectOf<P extends Props, R extends string> = Simplify<
  { -readonly [K in PresentKeys<P, R>]: TypeOf<P[K]> } &
  { -readonly [K in Exclude<keyof P, PresentKeys<P, R>>]?: TypeOf<P[K]> }>;

type Common = Pick<JsonSchema, 'description' | 'x-kubernetes-validations'>;
type NumberOpts = Common & Pick<JsonSchema, 'minimum' | 'maximum' | 'exclusiveMinimum' | 'exclusiveMaximum'>;
type StringOpts = Common & Pick<JsonSchema, 'minLength' | 'maxLength' | 'pattern' | 'format'>;
type ArrayOpts = Common & Pick<JsonSchema, 'minItems' | 'maxItems' | 'x-kubernetes-list-type' | 'x-kubernetes-list-map-keys'>;

const node = <T, P extends boolean>(schema: JsonSchema): Node<T, P> => ({ schema });

/** int32 range: the engine and the proto carry these fields as int32. */
export const INT32_MAX = 2 ** 31 - 1;

export function integer(o: NumberOpts & { default: number }): Node<number, true>;
export function integer(o?: NumberOpts): Node<number, false>;
export function integer(o: NumberOpts & { default?: number } = {}): Node<number> {
  return node({ type: 'integer', maximum: INT32_MAX, ...o });
}

export function number(o: NumberOpts & { default: number }): Node<number, true>;
export function number(o?: NumberOpts): Node<number, false>;
export function number(o: NumberOpts & { default?: number } = {}): Node<number> {
  return node({ type: 'number', ...o });
}

export function string(o: StringOpts & { default: string }): Node<string, true>;
export function string(o?: StringOpts): Node<string, false>;
export function string(o: StringOpts & { default?: string } = {}): Node<string> {
  return node({ type: 'string', ...o });
}

export function boolean(o: Common & { default: boolean }): Node<boolean, true>;
export function boolean(o?: Common): Node<boolean, false>;
export function boolean(o: Common & { default?: boolean } = {}): Node<boolean> {
  return node({ type: 'boolean', ...o });
}

export function enumOf<const V extends readonly string[]>(values: V, o: Common & { default: V[number] }): Node<V[number], true>;
export function enumOf<const V extends readonly string[]>(values: V, o?: Common): Node<V[number], false>;
export function enumOf<const V extends readonly string[]>(values: V, o: Common & { default?: string } = {}): Node<V[number]> {
  return node({ type: 'string', enum: [...values], ...o });
}

/** A Kubernetes quantity or port: an integer or a string. */
export function intOrString(o: Common & Pick<JsonSchema, 'pattern'> = {}): Node<number | string, false> {
  return node({ 'x-kubernetes-int-or-string': true, anyOf: [{ type: 'integer' }, { type: 'string' }], ...o });
}

export function array<T>(items: Node<T>, o: ArrayOpts & { default: T[] }): Node<T[], true>;
export function array<T>(items: Node<T>, o?: ArrayOpts): Node<T[], false>;
export function array<T>(items: Node<T>, o: ArrayOpts & { default?: T[] } = {}): Node<T[]> {
  return node({ type: 'array', items: items.schema, ...o });
}

/** A string-keyed map (`additionalProperties`). */
export function map<T>(values: Node<T>, o: Common & { default: Record<string, T> }): Node<Record<string, T>, true>;
export function map<T>(values: Node<T>, o?: Common): Node<Record<string, T>, false>;
export function map<T>(values: Node<T>, o: Common & { default?: Record<string, T> } = {}): Node<Record<string, T>> {
  return node({ type: 'object', additionalProperties: values.schema, ...o });
}

type ObjectOpts<R extends string> = Common & { required?: readonly R[]; 'x-kubernetes-map-type'?: 'atomic' | 'granular' };

export function object<P extends Props, R extends Extract<keyof P, string> = never>(props: P,
  o: ObjectOpts<R> & { default: object }): Node<ObjectOf<P, R>, true>;
export function object<P extends Props, R extends Extract<keyof P, string> = never>(props: P,
  o?: ObjectOpts<R>): Node<ObjectOf<P, R>, false>;
export function object<P extends Props, R extends Extract<keyof P, string> = never>(props: P,
  o: ObjectOpts<R> & { default?: object } = {}): Node<ObjectOf<P, R>> {
  const { required, ...rest } = o;
  const properties: Record<string, JsonSchema> = {};
  for (const [k, v] of Object.entries(props)) properties[k] = v.schema;
  return node({ type: 'object', properties, ...(required && required.length > 0 ? { required: [...required] } : {}), ...rest });
}

/** An object kept as given (no pruning below it): for fields whose shape Kubernetes itself owns. */
export function opaqueObject<T extends object>(o: Common = {}): Node<T, false> {
  return node({ type: 'object', 'x-kubernetes-preserve-unknown-fields': true, ...o });
}
