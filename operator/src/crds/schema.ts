/**
 * A small typed builder for CRD OpenAPI v3 schemas: one definition yields both the schema written into the
 * CustomResourceDefinition YAML and the TypeScript type of the custom resource, so the two cannot drift.
 *
 * Only what a Kubernetes 1.20 structural schema allows is expressible here (no CEL, no `$ref`, no
 * `patternProperties`), and every builder takes a description because `kubectl explain` prints exactly that.
 */

/** The subset of apiextensions.k8s.io/v1 JSONSchemaProps the builder emits (keys as they appear on the wire). */
export interface JSONSchemaProps {
  type?: 'object' | 'array' | 'string' | 'integer' | 'number' | 'boolean';
  description?: string;
  format?: string;
  default?: unknown;
  enum?: readonly (string | number | boolean)[];
  minimum?: number;
  maximum?: number;
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  minItems?: number;
  maxItems?: number;
  minProperties?: number;
  maxProperties?: number;
  required?: string[];
  properties?: Record<string, JSONSchemaProps>;
  additionalProperties?: JSONSchemaProps;
  items?: JSONSchemaProps;
  anyOf?: JSONSchemaProps[];
  allOf?: JSONSchemaProps[];
  oneOf?: JSONSchemaProps[];
  not?: JSONSchemaProps;
  'x-kubernetes-int-or-string'?: true;
  'x-kubernetes-list-type'?: 'atomic' | 'set' | 'map';
  'x-kubernetes-list-map-keys'?: string[];
  'x-kubernetes-map-type'?: 'atomic' | 'granular';
}

/**
 * A schema node plus the TypeScript type `T` of its values. `O` is true when the field may be omitted in its
 * parent object (optional, or defaulted by the apiserver: objects built in code may still leave it out).
 */
export interface Field<T, O extends boolean = false> {
  readonly schema: JSONSchemaProps;
  readonly optional: O;
  /** Phantom member carrying `T`; never set at run time. */
  readonly _type?: T;
}

/** Any field: `Field` is covariant in its value type, so every field is assignable to this. */
type AnyField = Field<unknown, boolean>;

/** The value type of a field. */
export type Infer<F> = F extends Field<infer T, boolean> ? T : never;

type OptionalKeys<P> = { [K in keyof P]: P[K] extends Field<unknown, true> ? K : never }[keyof P];
type RequiredKeys<P> = Exclude<keyof P, OptionalKeys<P>>;
type Simplify<T> = { [K in keyof T]: T[K] } & {};

/** Object type of a property map: optional fields become `?:` members. */
export type ObjectOf<P extends Record<string, AnyField>> = Simplify<
  { [K in RequiredKeys<P>]: Infer<P[K]> } & { [K in OptionalKeys<P>]?: Infer<P[K]> }
>;

function field<T>(schema: JSONSchemaProps): Field<T, false> {
  return { schema, optional: false };
}

/** Marks a field as optional in its parent object. */
export function optional<T>(f: Field<T, boolean>): Field<T, true> {
  return { schema: f.schema, optional: true };
}

/** Sets the apiserver default of a field; a defaulted field is optional for whoever writes the object. */
export function withDefault<T>(f: Field<T, boolean>, value: T): Field<T, true> {
  return { schema: { ...f.schema, default: value }, optional: true };
}

/** Options of a string field. */
export interface StringOptions {
  pattern?: string;
  minLength?: number;
  maxLength?: number;
  format?: string;
}

/** A string. */
export function string(description: string, opts: StringOptions = {}): Field<string> {
  return field({ type: 'string', description, ...opts });
}

/** A string restricted to `values`. */
export function stringEnum<const V extends readonly string[]>(description: string, values: V): Field<V[number]> {
  return field({ type: 'string', description, enum: [...values] });
}

/** An RFC 3339 timestamp (`format: date-time`, checked by the apiserver). */
export function dateTime(description: string): Field<string> {
  return field({ type: 'string', format: 'date-time', description });
}

/** Options of an integer field. */
export interface IntegerOptions {
  minimum?: number;
  maximum?: number;
  format?: 'int32' | 'int64';
}

/** An integer. */
export function integer(description: string, opts: IntegerOptions = {}): Field<number> {
  return field({ type: 'integer', description, ...opts });
}

/** A boolean. */
export function boolean(description: string): Field<boolean> {
  return field({ type: 'boolean', description });
}

/**
 * An integer or a string (`x-kubernetes-int-or-string`, the only form 1.20 accepts: the exact
 * `anyOf: [{type: integer}, {type: string}]` with value validations beside it, where `minimum`/`maximum` only
 * apply to numbers and `pattern`/`maxLength` only to strings).
 */
export function intOrString(
  description: string,
  opts: { minimum?: number; maximum?: number; pattern?: string; maxLength?: number } = {},
): Field<number | string> {
  return field({
    description,
    'x-kubernetes-int-or-string': true,
    anyOf: [{ type: 'integer' }, { type: 'string' }],
    ...opts,
  });
}

/** Options of an array field. */
export interface ArrayOptions {
  minItems?: number;
  maxItems?: number;
  /** `map` needs `listMapKeys` naming required scalar fields of the items; `set` needs scalar items. */
  listType?: 'atomic' | 'set' | 'map';
  listMapKeys?: string[];
}

/** An array of `items`. */
export function array<T>(description: string, items: Field<T, boolean>, opts: ArrayOptions = {}): Field<T[]> {
  const schema: JSONSchemaProps = { type: 'array', description, items: items.schema };
  if (opts.minItems !== undefined) schema.minItems = opts.minItems;
  if (opts.maxItems !== undefined) schema.maxItems = opts.maxItems;
  if (opts.listType !== undefined) schema['x-kubernetes-list-type'] = opts.listType;
  if (opts.listMapKeys !== undefined) schema['x-kubernetes-list-map-keys'] = opts.listMapKeys;
  return field(schema);
}

/** A map of string to string (labels, selector terms). */
export function stringMap(description: string, value: Field<string, boolean>): Field<Record<string, string>> {
  return field({ type: 'object', description, additionalProperties: value.schema });
}

/** Junctors of an object schema: value validations only (no type/description inside, per structural rules). */
export interface ObjectOptions {
  anyOf?: JSONSchemaProps[];
  oneOf?: JSONSchemaProps[];
  not?: JSONSchemaProps;
}

/** An object with the given properties; the non-optional ones are `required`. */
export function object<P extends Record<string, AnyField>>(
  description: string,
  props: P,
  opts: ObjectOptions = {},
): Field<ObjectOf<P>> {
  const properties: Record<string, JSONSchemaProps> = {};
  const required: string[] = [];
  for (const [key, f] of Object.entries(props)) {
    properties[key] = f.schema;
    if (!f.optional) required.push(key);
  }
  const schema: JSONSchemaProps = { type: 'object', description };
  if (required.length > 0) schema.required = required;
  schema.properties = properties;
  if (opts.anyOf !== undefined) schema.anyOf = opts.anyOf;
  if (opts.oneOf !== undefined) schema.oneOf = opts.oneOf;
  if (opts.not !== undefined) schema.not = opts.not;
  return field(schema);
}
