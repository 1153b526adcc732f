# mysql-agent in the backup tool's image: the init containers and the sidecar all run it.
# The agent is a static (musl) binary, so it drops into whichever runtime image matches the
# server; RUNTIME_IMAGE picks it (see manifests/overlays/<flavor>):
#
#   MySQL 5.7     docker build --build-arg RUNTIME_IMAGE=percona/percona-xtrabackup:2.4 -t mysql-agent:mysql-5.7 .
#   MySQL 8.0     docker build --build-arg RUNTIME_IMAGE=percona/percona-xtrabackup:8.0 -t mysql-agent:mysql-8.0 .
#   MySQL 8.4     docker build --build-arg RUNTIME_IMAGE=percona/percona-xtrabackup:8.4 -t mysql-agent:mysql-8.4 .
#   MariaDB 10.11 docker build --build-arg RUNTIME_IMAGE=mariadb:10.11 -t mysql-agent:mariadb-10.11 .
#
# The agent checks at start-up that the image's tool can handle the server it runs beside.
ARG RUNTIME_IMAGE=mariadb:10.11

FROM rust:1.95-bookworm AS build
# musl-gcc: zstd's and ring's C parts are compiled for the static musl target.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# A workspace member: cargo needs its manifest to resolve the lock file.
COPY harness ./harness
RUN cargo build --release --locked -p mysql-agent --target x86_64-unknown-linux-musl

FROM ${RUNTIME_IMAGE}
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/mysql-agent /usr/local/bin/mysql-agent
# The mysql user of the mysql and mariadb images, so files in the data dir belong to mysqld
# (the StatefulSet sets the same uid for every container).
USER 999:999
ENTRYPOINT ["/usr/local/bin/mysql-agent"]
