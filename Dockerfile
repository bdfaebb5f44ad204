# syntax=docker/dockerfile:1
# One image for every kvfleet process: `kvfleet operator`, `kvfleet worker`, `kvfleet router` (the ENTRYPOINT is
# bin/kvfleet; the command picks the part). Build (needs a Docker engine with network access to Docker Hub,
# archive.ubuntu.com and registry.npmjs.org):
#
#   docker build -t ghcr.io/kvfleet/kvfleet:0.1.0 .
#   docker build --build-arg CUDA_ARCHITECTURES="80;90;100" -t ghcr.io/kvfleet/kvfleet:0.1.0 .
#
# Base images: nvidia/cuda:13.0.0-devel-ubuntu24.04 and nvidia/cuda:13.0.0-base-ubuntu24.04 (published CUDA 13.0.0
# tags; they could not be pulled on the machines this file was written on: no Docker engine there).
# The addon links the CUDA runtime statically (csrc/CMakeLists.txt), so the runtime stage needs only the driver
# libraries, which the NVIDIA container toolkit mounts at run time: the small `base` flavour is enough.
ARG CUDA_VERSION=13.0.0
ARG UBUNTU=ubuntu24.04

# ---------------------------------------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS builder
ARG CUDA_ARCHITECTURES="80;90"
ENV DEBIAN_FRONTEND=noninteractive
# Ubuntu's nodejs/npm only bootstrap `npm ci`; the `node` package it installs brings Node 24 into
# node_modules/node, which runs everything afterwards (bin/kvfleet prefers it).
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake g++ make python3 nodejs npm ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund \
 && node_modules/.bin/node --version | grep -q '^v24\.'
COPY csrc/ csrc/
# KVFLEET_NATIVE=OFF: no -march=native, the image must run on any x86-64 host; CUDA on (nvcc is on PATH).
RUN node_modules/.bin/node node_modules/cmake-js/bin/cmake-js compile -d csrc -O build \
      --CDCMAKE_BUILD_TYPE=Release --CDKVFLEET_NATIVE=OFF --CDKVFLEET_CUDA=ON \
      "--CDCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES}" \
 && test -f build/Release/kvfleet.node
# Production dependencies only, keeping the `node` package (a devDependency) that carries Node 24 itself.
RUN cp -r node_modules/node /tmp/node-pkg \
 && npm prune --omit=dev --no-audit --no-fund \
 && rm -rf node_modules/node && cp -r /tmp/node-pkg node_modules/node \
 && mkdir -p node_modules/.bin && ln -sf ../node/bin/node node_modules/.bin/node \
 && node_modules/.bin/node --version

# ---------------------------------------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-base-${UBUNTU} AS runtime
# The addon needs the OpenMP runtime (libgomp.so.1, csrc/CMakeLists.txt) and libstdc++; the `base` flavour ships
# neither guaranteed, so install them, and load the addon once at build time so a missing library fails the build,
# not the first pod (loading needs no GPU: the CUDA runtime reaches the driver only at the first CUDA call).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 libstdc++6 \
 && rm -rf /var/lib/apt/lists/*
# uid/gid 65532: the non-root user the chart's securityContext runs as (runAsUser 65532).
RUN groupadd --gid 65532 kvfleet && useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin kvfleet
WORKDIR /app
COPY --from=builder /app/node_modules/ node_modules/
COPY --from=builder /app/build/Release/kvfleet.node build/Release/kvfleet.node
COPY package.json ./
COPY bin/ bin/
COPY worker/ worker/
COPY router/ router/
COPY ledger/ ledger/
COPY operator/ operator/
COPY proto/ proto/
ENV NODE_ENV=production
RUN node_modules/.bin/node -e "const a = require('/app/build/Release/kvfleet.node'); if (typeof a !== 'object') process.exit(1)"
USER 65532:65532
# worker gRPC/metrics, router gRPC/metrics, operator metrics (each process opens only its own)
EXPOSE 50051 9400 9401 9402
ENTRYPOINT ["/app/bin/kvfleet"]
CMD ["--help"]
