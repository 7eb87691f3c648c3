# Build: docker build -t warden .
# Run:   docker run --rm -p 127.0.0.1:9090:9090 -p 127.0.0.1:1883:1883 warden
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && strip target/release/warden

FROM debian:bookworm-slim
RUN useradd --system --home /var/lib/warden warden && mkdir -p /var/lib/warden /etc/warden \
    && chown warden:warden /var/lib/warden
COPY --from=build /src/target/release/warden /usr/local/bin/warden
COPY policies /etc/warden/policies
COPY examples/warden.toml /etc/warden/warden.toml.example
# In a container the embedded broker and the API must listen beyond loopback;
# put a token_file in place before exposing /api/v1 further than the host.
RUN printf '[node]\nstate_dir = "/var/lib/warden"\n[mqtt]\nlisten = "0.0.0.0:1883"\n[policy]\ndir = "/etc/warden/policies"\n[http]\nlisten = "0.0.0.0:9090"\n' > /etc/warden/warden.toml
USER warden
VOLUME /var/lib/warden
EXPOSE 1883 9090
ENTRYPOINT ["/usr/local/bin/warden"]
CMD ["run", "--config", "/etc/warden/warden.toml"]
