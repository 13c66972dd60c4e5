# chatgw container image.
#
#   podman build -t chatgw .      (or docker build)
#   podman run --rm -p 8888:8888 --read-only chatgw
#
# Stage 1 builds with the Debian -dev packages, exactly as `make build` does (the same CMake
# configure and build). Stage 2 is bookworm-slim with the runtime libraries only, runs as the
# unprivileged uid 10001 and writes nothing to its root filesystem, so it runs with
# readOnlyRootFilesystem. The default policy lives in /etc/chatgw/scripts (Kubernetes mounts
# the chatgw-policy ConfigMap over it as a directory) and the web client in
# /usr/share/chatgw/web.
FROM docker.io/library/debian:bookworm-slim AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cmake make gcc libc6-dev pkg-config libuv1-dev node-llhttp liblua5.4-dev \
      libjansson-dev libssl-dev libhiredis-dev zlib1g-dev libcurl4-openssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# the same configure and build as `make build`, then a smoke check of the default policy
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo \
 && cmake --build build -j "$(nproc)" --target chatgw \
 && ./build/chatgw version \
 && ./build/chatgw check scripts \
 && mkdir -p /out/scripts /out/web \
 && install -s -m 0755 build/chatgw /out/chatgw \
 && cp scripts/*.lua /out/scripts/ \
 && if [ -d web ]; then cp -a web/. /out/web/; fi

FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libuv1 liblua5.4-0 libjansson4 libssl3 libhiredis0.14 zlib1g libcurl4 ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && groupadd --system --gid 10001 chatgw \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin chatgw
COPY --from=build /out/chatgw /usr/local/bin/chatgw
COPY --from=build /out/scripts/ /etc/chatgw/scripts/
COPY --from=build /out/web/ /usr/share/chatgw/web/
# Defaults for the container; every key still yields to CHATGW_<KEY> from the pod spec or a flag.
ENV CHATGW_LISTEN=0.0.0.0:8888 \
    CHATGW_SCRIPTS_DIR=/etc/chatgw/scripts \
    CHATGW_WEB_DIR=/usr/share/chatgw/web
WORKDIR /
USER 10001:10001
EXPOSE 8888
STOPSIGNAL SIGTERM
ENTRYPOINT ["chatgw"]
CMD ["serve"]
