// The floor under any router on this machine: a bare grpc-js process between client and worker that forwards each
// Generate call to one fixed worker address and streams the answer back, with no tokenizer, no ledger and no
// metrics. `kvfleet bench router` times calls through it beside the router's, so what the router adds splits into
// the extra process hop (this) and the router's own work (the rest). Usage: grpc-hop-child.ts WORKER_ADDR; it prints
// "hop listening on PORT" and exits when its stdin closes (the bench, its parent, went away).
import * as grpc from '@grpc/grpc-js';
import { addGenerationService, generationClient, type GenerateRequest, type GenerateResponse } from '../proto/index.ts';

const target = process.argv[2];
if (!target) { process.stderr.write('grpc-hop-child: usage: grpc-hop-child.ts WORKER_ADDR\n'); process.exit(2); }
// the same channel options as the router's worker clients
const client = generationClient(target, grpc.credentials.createInsecure(), { 'grpc.max_send_message_length': 64 << 20 });
const server = new grpc.Server();
addGenerationService(server, {
  Generate(call: grpc.ServerWritableStream<GenerateRequest, GenerateResponse>) {
    const deadline = call.getDeadline();
    const ws = client.Generate(call.request, new grpc.Metadata(), deadline instanceof Date || typeof deadline === 'number' ? { deadline } : {});
    const onCancel = () => ws.cancel();
    call.on('cancelled', onCancel);
    ws.on('data', (m: GenerateResponse) => call.write(m));
    ws.on('error', (e: grpc.ServiceError) => { call.removeListener('cancelled', onCancel); call.emit('error', e); });
    ws.on('end', () => { call.removeListener('cancelled', onCancel); call.end(); });
  },
});
server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) { process.stderr.write(`grpc-hop-child: ${err.message}\n`); process.exit(1); }
  process.stdout.write(`hop listening on ${port}\n`);
});
process.stdin.resume();
process.stdin.on('end', () => { client.close(); server.forceShutdown(); process.exit(0); });
