// The router's request encoding towards workers. A forwarded GenerateRequest is mostly its prompt: token ids the
// router already holds as numbers. The generated encoder (proto-loader / protobufjs) first copies the whole request
// through fromObject (every id converted one by one) and then writes it; for a 2K-token prompt that is most of the
// router's own CPU time on the request. Here the two packed id fields are written straight into one buffer and only
// the small remainder (request_id, sampling, budget) goes through the generated encoder.
//
// The bytes differ from the generated encoder's only in field order (prompt ids after the other fields), which
// protobuf parsers accept (the encoding spec: fields may appear in any order); tests/router/wire.test.ts decodes
// both with the generated decoder and compares.
import * as grpc from '@grpc/grpc-js';
import { kvfleetProto, type GenerateRequest, type GenerationClient } from '../proto/index.ts';

// GenerateRequest: token_ids = 3 (TokenIds, a message: ids = 1, packed uint32), resume_token_ids = 6 (packed uint32)
const TAG_TOKEN_IDS = (3 << 3) | 2;
const TAG_IDS = (1 << 3) | 2;
const TAG_RESUME = (6 << 3) | 2;

function varintSize(v: number): number {
  return v < 0x80 ? 1 : v < 0x4000 ? 2 : v < 0x200000 ? 3 : v < 0x10000000 ? 4 : 5;
}

/** Bytes of the packed varints of ids, each taken as uint32 the way the generated encoder takes it (`>>> 0`). */
function packedSize(ids: readonly number[]): number {
  let n = 0;
  for (let i = 0; i < ids.length; i++) n += varintSize(ids[i] >>> 0);
  return n;
}

function writeVarint(buf: Buffer, pos: number, v: number): number {
  while (v >= 0x80) { buf[pos++] = (v & 0x7f) | 0x80; v >>>= 7; }
  buf[pos++] = v;
  return pos;
}

function writePacked(buf: Buffer, pos: number, ids: readonly number[]): number {
  for (let i = 0; i < ids.length; i++) pos = writeVarint(buf, pos, ids[i] >>> 0);
  return pos;
}

type Serialize = (req: GenerateRequest) => Buffer;

/** The GenerateRequest serializer for router→worker calls; a request without token ids (text) goes through `generic`
 *  as it is. */
export function workerRequestSerializer(generic: Serialize): Serialize {
  return (req) => {
    const ids = req.token_ids?.ids;
    if (req.prompt === 'text' || req.text !== undefined || !ids) return generic(req);
    const resume = req.resume_token_ids ?? [];
    const rest = generic({ request_id: req.request_id, sampling: req.sampling, budget: req.budget });
    const idsLen = packedSize(ids);
    // TokenIds body: the packed field, left out when empty (as the generated encoder leaves it out)
    const tokLen = ids.length > 0 ? 1 + varintSize(idsLen) + idsLen : 0;
    const resumeLen = resume.length > 0 ? packedSize(resume) : 0;
    const size = rest.length + 1 + varintSize(tokLen) + tokLen + (resume.length > 0 ? 1 + varintSize(resumeLen) + resumeLen : 0);
    const out = Buffer.allocUnsafe(size);
    let pos = rest.copy(out, 0);
    out[pos++] = TAG_TOKEN_IDS;
    pos = writeVarint(out, pos, tokLen);
    if (ids.length > 0) {
      out[pos++] = TAG_IDS;
      pos = writeVarint(out, pos, idsLen);
      pos = writePacked(out, pos, ids);
    }
    if (resume.length > 0) {
      out[pos++] = TAG_RESUME;
      pos = writeVarint(out, pos, resumeLen);
      pos = writePacked(out, pos, resume);
    }
    if (pos !== size) throw new Error(`router: encoded ${pos} of ${size} request bytes`);
    return out;
  };
}

let ctor: (new (address: string, creds: grpc.ChannelCredentials, options?: grpc.ClientOptions) => GenerationClient) | undefined;

/** A Generation client whose requests are encoded by workerRequestSerializer (responses as usual). */
export function workerGenerationClient(address: string, creds: grpc.ChannelCredentials, options?: grpc.ClientOptions): GenerationClient {
  if (!ctor) {
    const def = kvfleetProto().generationService.Generate as grpc.MethodDefinition<GenerateRequest, unknown>;
    ctor = grpc.makeGenericClientConstructor({ Generate: { ...def, requestSerialize: workerRequestSerializer(def.requestSerialize) } },
      'kvfleet.v1.Generation') as unknown as typeof ctor;
  }
  return new ctor!(address, creds, options);
}
