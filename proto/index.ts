// The one loader of proto/kvfleet/v1: typed message shapes, service definitions, client constructors, and the
// helpers that add grpc.health.v1.Health and server reflection to a server.
//
// Loader options (fixed here, relied on everywhere):
//   keepCase: true      field names exactly as in the .proto (snake_case), so messages read like CONTRACTS.md
//   longs: String       uint64 fields arrive as decimal strings (seeds use all 64 bits); numbers are accepted on send
//   enums: String       enum values arrive as their names ('ADA_SNAPKV')
//   defaults: false     an absent field is undefined, so proto3 `optional` presence is observable
//   oneofs: true        the chosen member of a oneof is named in a virtual field (`prompt: 'text' | 'token_ids'`)
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { HealthImplementation, type ServingStatus } from 'grpc-health-check';
import { ReflectionService } from '@grpc/reflection';

export const PROTO_DIR = path.dirname(fileURLToPath(import.meta.url));
export const PROTO_FILE = path.join(PROTO_DIR, 'kvfleet/v1/kvfleet.proto');

export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: false,
  oneofs: true,
  includeDirs: [PROTO_DIR],
};

// ---- message shapes (as received; on send, uint64 fields also take numbers) ----
export type U64 = string | number | bigint;
export type Method = 'METHOD_UNSPECIFIED' | 'FULL' | 'SNAPKV' | 'PYRAMIDKV' | 'ADA_SNAPKV' | 'ADA_PYRAMIDKV';
export type Pooling = 'POOLING_UNSPECIFIED' | 'MAX' | 'AVG';
export type GqaReduce = 'GQA_REDUCE_UNSPECIFIED' | 'MEAN' | 'MAXIMUM';
export type FinishReason = 'FINISH_REASON_UNSPECIFIED' | 'LENGTH' | 'STOP' | 'EOS' | 'CANCELLED';

export interface TokenIds { ids?: number[] }
export interface SamplingParams {
  max_new_tokens?: number;
  temperature?: number;
  top_p?: number;
  top_k?: number;
  seed?: U64;
  stop?: string[];
  ignore_eos?: boolean;
}
export interface BudgetSpec {
  method?: Method;
  tokens_per_head?: number;
  keep_ratio?: number;
  window?: number;
  pool_kernel?: number;
  floor_alpha?: number;
  pyramid_beta?: number;
  decode_max_tokens_per_head?: number;
  pooling?: Pooling;
  gqa_reduce?: GqaReduce;
}
export interface BudgetSelector { name?: string; spec?: BudgetSpec; selector?: 'name' | 'spec' }
export interface GenerateRequest {
  request_id?: string;
  text?: string;
  token_ids?: TokenIds;
  prompt?: 'text' | 'token_ids';
  sampling?: SamplingParams;
  budget?: BudgetSelector;
  resume_token_ids?: number[];
}
export interface Usage { prompt_tokens?: number; completion_tokens?: number }
export interface KVStats {
  kept_tokens?: U64;
  full_tokens?: U64;
  min_head_tokens?: number;
  max_head_tokens?: number;
  pages?: number;
  peak_pages?: number;
}
export interface GenerateResponse {
  token_ids?: number[];
  text?: string;
  finish_reason?: FinishReason;
  usage?: Usage;
  kv_stats?: KVStats;
  worker_id?: string;
  seed?: U64;
}
export type GetCapacityRequest = Record<string, never>;
export interface Capacity {
  worker_id?: string;
  total_pages?: U64;
  free_pages?: U64;
  reserved_pages?: U64;
  page_size?: number;
  num_layers?: number;
  num_kv_heads?: number;
  running?: number;
  waiting?: number;
  draining?: boolean;
}
export type DrainRequest = Record<string, never>;
export interface DrainResponse { running?: number }
export type UndrainRequest = Record<string, never>;
export interface UndrainResponse { admitting?: boolean }

// ---- services ----
export interface GenerationHandlers extends grpc.UntypedServiceImplementation {
  Generate: grpc.handleServerStreamingCall<GenerateRequest, GenerateResponse>;
}
export interface WorkerHandlers extends grpc.UntypedServiceImplementation {
  GetCapacity: grpc.handleUnaryCall<GetCapacityRequest, Capacity>;
  Drain: grpc.handleUnaryCall<DrainRequest, DrainResponse>;
  Undrain: grpc.handleUnaryCall<UndrainRequest, UndrainResponse>;
}

export interface GenerationClient extends grpc.Client {
  Generate(req: GenerateRequest, md?: grpc.Metadata, opts?: grpc.CallOptions): grpc.ClientReadableStream<GenerateResponse>;
}
export interface WorkerClient extends grpc.Client {
  GetCapacity(req: GetCapacityRequest, md: grpc.Metadata, opts: grpc.CallOptions,
    cb: grpc.requestCallback<Capacity>): grpc.ClientUnaryCall;
  GetCapacity(req: GetCapacityRequest, cb: grpc.requestCallback<Capacity>): grpc.ClientUnaryCall;
  Drain(req: DrainRequest, md: grpc.Metadata, opts: grpc.CallOptions,
    cb: grpc.requestCallback<DrainResponse>): grpc.ClientUnaryCall;
  Drain(req: DrainRequest, cb: grpc.requestCallback<DrainResponse>): grpc.ClientUnaryCall;
  Undrain(req: UndrainRequest, md: grpc.Metadata, opts: grpc.CallOptions,
    cb: grpc.requestCallback<UndrainResponse>): grpc.ClientUnaryCall;
  Undrain(req: UndrainRequest, cb: grpc.requestCallback<UndrainResponse>): grpc.ClientUnaryCall;
}
type ClientCtor<C> = new (address: string, credentials: grpc.ChannelCredentials, options?: grpc.ClientOptions) => C;

interface Loaded {
  packageDefinition: protoLoader.PackageDefinition;
  generationService: grpc.ServiceDefinition;
  workerService: grpc.ServiceDefinition;
  GenerationClient: ClientCtor<GenerationClient>;
  WorkerClient: ClientCtor<WorkerClient>;
}

let loaded: Loaded | undefined;

/** Loads the proto once per process. */
export function kvfleetProto(): Loaded {
  if (loaded) return loaded;
  const packageDefinition = protoLoader.loadSync(PROTO_FILE, LOADER_OPTIONS);
  const g = grpc.loadPackageDefinition(packageDefinition) as unknown as {
    kvfleet: { v1: { Generation: grpc.ServiceClientConstructor; Worker: grpc.ServiceClientConstructor } };
  };
  const v1 = g.kvfleet.v1;
  loaded = {
    packageDefinition,
    generationService: v1.Generation.service,
    workerService: v1.Worker.service,
    GenerationClient: v1.Generation as unknown as ClientCtor<GenerationClient>,
    WorkerClient: v1.Worker as unknown as ClientCtor<WorkerClient>,
  };
  return loaded;
}

export function addGenerationService(server: grpc.Server, impl: GenerationHandlers): void {
  server.addService(kvfleetProto().generationService, impl);
}
export function addWorkerService(server: grpc.Server, impl: WorkerHandlers): void {
  server.addService(kvfleetProto().workerService, impl);
}
export function generationClient(address: string, creds = grpc.credentials.createInsecure(),
  options?: grpc.ClientOptions): GenerationClient {
  return new (kvfleetProto().GenerationClient)(address, creds, options);
}
export function workerClient(address: string, creds = grpc.credentials.createInsecure(),
  options?: grpc.ClientOptions): WorkerClient {
  return new (kvfleetProto().WorkerClient)(address, creds, options);
}

export const SERVICE_NAMES = { generation: 'kvfleet.v1.Generation', worker: 'kvfleet.v1.Worker' } as const;

/** Adds grpc.health.v1.Health; the returned handle flips every listed service (and '') at once. */
export function addHealth(server: grpc.Server, services: string[]): { set(status: ServingStatus): void } {
  const all = ['', ...services];
  const health = new HealthImplementation(Object.fromEntries(all.map((s) => [s, 'SERVING' as ServingStatus])));
  health.addToServer(server);
  return { set: (status) => { for (const s of all) health.setStatus(s, status); } };
}

/** Adds gRPC server reflection (v1 and v1alpha) describing kvfleet.v1. */
export function addReflection(server: grpc.Server): void {
  new ReflectionService(kvfleetProto().packageDefinition).addToServer(server);
}

/** Binds a server on 127.0.0.1:port (0 = free port) and returns the port. */
export function bindInsecure(server: grpc.Server, host = '127.0.0.1', port = 0,
  creds = grpc.ServerCredentials.createInsecure()): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(`${host}:${port}`, creds, (err, p) => (err ? reject(err) : resolve(p)));
  });
}
