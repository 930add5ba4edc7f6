FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY transport ./transport
COPY tenantmail ./tenantmail
COPY worker ./worker
COPY api ./api
COPY emulator ./emulator
COPY migrations ./migrations
COPY benchmarks ./benchmarks
RUN pip install --no-cache-dir -e .
USER nobody
CMD ["tenantmail", "worker"]
