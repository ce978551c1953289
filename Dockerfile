# Multi-stage build: compile in the Rust image, run from a slim Debian as a non-root user.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
RUN cargo build --release --locked --bin qwen-edit-bot

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin bot \
    && mkdir -p /data /etc/qwen-edit-bot && chown bot /data
COPY --from=build /src/target/release/qwen-edit-bot /usr/local/bin/qwen-edit-bot
COPY config.toml.example /etc/qwen-edit-bot/config.toml.example
USER bot
WORKDIR /data
VOLUME ["/data"]
# Metrics and health (http.listen must be 0.0.0.0:9464 in the mounted config to reach it).
EXPOSE 9464
ENTRYPOINT ["qwen-edit-bot"]
CMD ["run", "--config", "/etc/qwen-edit-bot/config.toml"]
