# tenantmail image. Stages:
#   build      compiles nothing of ours, but pip may build wheels: it has the tools, the runtime does not
#   build-dev  the same install plus the emulator extra (its code and trustme, PyYAML, aiosmtpd)
#   dev        runtime + build-dev's install: the `--profile dev` emulator (docker-compose.dev.yml)
#   runtime    the default target: the app in a venv, no compilers, no emulator, no benchmarks,
#              running as uid 10001 with its state in the /var/lib/tenantmail volume
# See docs/deployment.md.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/tenantmail
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY transport ./transport
COPY worker ./worker
COPY api ./api
COPY tenantmail ./tenantmail
COPY migrations ./migrations
RUN /opt/tenantmail/bin/pip install .

FROM build AS build-dev
COPY emulator ./emulator
RUN /opt/tenantmail/bin/pip install ".[emulator]"

FROM python:3.11-slim AS base
RUN groupadd --system --gid 10001 tenantmail \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/tenantmail \
      --shell /usr/sbin/nologin tenantmail \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/tenantmail
ENV VIRTUAL_ENV=/opt/tenantmail \
    PATH=/opt/tenantmail/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TENANTMAIL_STATE_DIR=/var/lib/tenantmail
WORKDIR /var/lib/tenantmail

FROM base AS dev
COPY --from=build-dev /opt/tenantmail /opt/tenantmail
# Where the emulator writes its CA for the other services (the emulator-ca volume takes this owner).
RUN install -d -o 10001 -g 10001 -m 0755 /run/tenantmail-emulator
USER 10001:10001
VOLUME ["/var/lib/tenantmail"]
CMD ["tenantmail", "emulator", "--host", "0.0.0.0", "--port", "8443"]

FROM base AS runtime
COPY --from=build /opt/tenantmail /opt/tenantmail
USER 10001:10001
VOLUME ["/var/lib/tenantmail"]
CMD ["tenantmail", "worker"]
