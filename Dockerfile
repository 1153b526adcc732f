# mysql-agent in the backup tool's image: the init containers and the sidecar all run it.
#
#   docker build -t mysql-agent:dev .                      # MariaDB 10.11 with mariadb-backup
#
# The agent is a static (musl) binary, so it drops into the runtime image whatever its libc.
# Only the MariaDB runtime is exercised by this project's tests; images for MySQL with
# Percona XtraBackup come with the packaging work (see the README's status section).
ARG RUNTIME_IMAGE=mariadb:10.11

FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# A workspace member: cargo needs its manifest to resolve the lock file.
COPY harness ./harness
RUN cargo build --release --locked -p mysql-agent --target x86_64-unknown-linux-musl

FROM ${RUNTIME_IMAGE}
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/mysql-agent /usr/local/bin/mysql-agent
# The mysql user of the mysql and mariadb images, so files in the data dir belong to mysqld.
USER 999:999
ENTRYPOINT ["/usr/local/bin/mysql-agent"]
