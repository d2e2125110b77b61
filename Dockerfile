# syntax=docker/dockerfile:1

# ---- build ------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# The cargo registry and target directory live in build caches, so a rebuild
# after a source change only recompiles the workspace crates. Binaries are
# copied out of the cache within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --workspace --release --locked \
    && mkdir -p /out \
    && for bin in verify-api verify-worker verify-sink verify-load; do \
           install -m 0755 "target/release/$bin" /out/ || exit 1; \
       done

# ---- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 verify \
    && useradd --uid 10001 --gid verify --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin verify
COPY --from=builder /out/ /usr/local/bin/
USER verify:verify
ENV RUST_LOG=info
EXPOSE 8080 9090
# Database migrations are embedded in verify-api. Pick the program with the
# compose service's command: verify-api, verify-worker, verify-sink, verify-load.
CMD ["verify-api"]
