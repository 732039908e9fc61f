# syntax=docker/dockerfile:1
# Multi-stage build: compile on Debian bookworm, run on distroless (no shell, no package manager)
# as a non-root user with a read-only root filesystem and one writable volume, /data.
#
#   docker build -t ferry .
#   docker run -d --name ferry --read-only --cap-drop ALL \
#     --security-opt seccomp=tuning/seccomp-io_uring.json \
#     --ulimit memlock=-1 --ulimit nofile=1048576 \
#     -v ferry-data:/data -v "$PWD/certs:/certs:ro" -p 7443:7443 ferry
#
# or: docker compose -f tuning/compose.yaml up -d
#
# io_uring needs a seccomp profile that allows io_uring_setup, io_uring_enter and
# io_uring_register (Docker's default profile blocks them; never use `unconfined`):
# tuning/seccomp-io_uring.json is the default-deny profile with them added. It also needs locked
# memory (glommio registers about 1 MiB per shard). The node exits with one line naming the fix
# when either is missing. `docker stop` sends SIGTERM: the node drains within stop_timeout_s
# (8 s, inside docker's 10 s default).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ferry \
 && install -D -m 0755 target/release/ferry /out/ferry \
 && install -d -m 0700 /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ferry /usr/local/bin/ferry
COPY --from=build --chown=65532:65532 /out/data /data
VOLUME /data
# TLS on all interfaces; no plaintext listener; the admin endpoint stays inside the container.
ENV FERRY_DATA_DIR=/data \
    FERRY_LISTEN= \
    FERRY_LISTEN_TLS=0.0.0.0:7443 \
    FERRY_TLS_CERT=/certs/cert.pem \
    FERRY_TLS_KEY=/certs/key.pem \
    FERRY_ADMIN_LISTEN=127.0.0.1:7701
EXPOSE 7443
USER nonroot
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/ferry", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/ferry"]
CMD ["run"]
