# qwen-edit-bot: build in the Rust image, run from a slim Debian of the same release (same glibc)
# as a non-root user. Build:
#   docker build -t qwen-edit-bot --build-arg QEB_GIT_COMMIT=$(git rev-parse --short HEAD) .

FROM rust:1.95-slim-bookworm AS build
# So that a failing stage of a pipe fails the RUN (the stub step below has one).
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src

# 1. Dependencies only, cached until Cargo.toml, Cargo.lock or build.rs changes. Cargo needs
#    every target the manifest names to exist before it builds anything, so each gets a stub:
#    src/main.rs, src/lib.rs, and the file of each [[bench]]/[[test]]/[[example]] (its `path`,
#    else the default from its `name`), read from Cargo.toml so new targets need no edit here.
#    (`build.rs*` copies build.rs when there is one, and nothing otherwise.)
COPY Cargo.toml Cargo.lock build.rs* ./
RUN mkdir -p src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && awk -F'"' ' \
        function out() { if (kind != "") print (path != "" ? path : dir[kind] "/" name ".rs"); kind = name = path = "" } \
        BEGIN { dir["bench"] = "benches"; dir["test"] = "tests"; dir["example"] = "examples" } \
        /^\[/ { out() } \
        /^\[\[(bench|test|example)\]\]/ { kind = substr($0, 3, index($0, "]]") - 3) } \
        kind != "" && /^name *=/ { name = $2 } \
        kind != "" && /^path *=/ { path = $2 } \
        END { out() }' Cargo.toml \
       | while read -r stub; do mkdir -p "$(dirname "$stub")" && echo 'fn main() {}' > "$stub"; done \
    && cargo build --release --locked

# 2. The real sources. Tests and benches stay stubs: a release build does not compile them, so
#    changing them does not rebuild the image. The stub build's outputs are newer than the
#    copied files (COPY keeps their mtimes), hence the touch, so cargo rebuilds this crate.
#    QEB_GIT_COMMIT is declared only now, so a new commit does not invalidate the layer above;
#    build.rs puts it in `qwen-edit-bot --version` (there is no git in here). SOURCE_DATE_EPOCH,
#    when passed, fixes the build date it stamps beside it (reproducible builds).
COPY src ./src
ARG QEB_GIT_COMMIT=unknown
ARG SOURCE_DATE_EPOCH
ENV QEB_GIT_COMMIT=${QEB_GIT_COMMIT}
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && install -m 0755 target/release/qwen-edit-bot /usr/local/bin/qwen-edit-bot

FROM debian:bookworm-slim
# The bot's TLS (rustls with webpki-roots: reqwest "rustls-tls", teloxide "rustls", serenity
# "rustls_backend") carries its own root certificates and does not read the system store;
# ca-certificates is there anyway so the image keeps working if a dependency moves to the
# system roots, and for tools run inside the container.
# DL3008 (pin apt versions): the base image tag already fixes the Debian release, and pinning a
# point version breaks the build as soon as Debian ships a security update of the package.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 bot \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --shell /usr/sbin/nologin bot \
    && mkdir -p /data /etc/qwen-edit-bot \
    && chown 10001:10001 /data
COPY --from=build /usr/local/bin/qwen-edit-bot /usr/local/bin/qwen-edit-bot
# Reference only: mount the real file at /etc/qwen-edit-bot/config.toml (read-only is fine).
COPY config.toml.example /etc/qwen-edit-bot/config.toml.example

# Overrides of the mounted config (QEB_<SECTION>__<KEY>): listen on every interface inside the
# container (publish the port only privately), and keep the store on the volume.
ENV QEB_HTTP__LISTEN=0.0.0.0:9464 \
    QEB_QUOTA__DATABASE=/data/qwen-edit-bot.sqlite3

# Numeric, so Kubernetes' runAsNonRoot can check it; a new named volume takes /data's owner.
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
# GET /livez, /readyz, /metrics. Telegram webhook mode also listens on telegram.webhook_listen
# (0.0.0.0:8443 by default): publish that port too when you use it.
EXPOSE 9464

# Probes GET /livez on http.listen (the override above); no curl in the image.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["qwen-edit-bot", "health", "--config", "/etc/qwen-edit-bot/config.toml"]
# On SIGTERM the bot stops taking updates and gives running jobs shutdown_grace_secs (default
# 60) to finish: Docker's default 10 s stop timeout is too short, so run with
# `docker run --stop-timeout 70` (compose: stop_grace_period: 70s).
STOPSIGNAL SIGTERM

ARG QEB_GIT_COMMIT=unknown
# Where the source lives; not known to the repository itself, so pass it when publishing:
#   --build-arg QEB_SOURCE_URL=$(git remote get-url origin)
ARG QEB_SOURCE_URL=""
LABEL org.opencontainers.image.title="qwen-edit-bot" \
      org.opencontainers.image.description="Chat bot that brings Qwen-Image-Edit (DashScope) into Discord and Telegram, with quotas" \
      org.opencontainers.image.source="${QEB_SOURCE_URL}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.revision="${QEB_GIT_COMMIT}"

ENTRYPOINT ["qwen-edit-bot"]
CMD ["run", "--config", "/etc/qwen-edit-bot/config.toml"]
