FROM python:3.11-slim

# No compiler needed: every dependency ships wheels (asyncpg, coincurve, pgserver).
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    RUNNER_DATA_DIR=/data RUNNER_LOG_FORMAT=json

RUN useradd --create-home --uid 10001 runner && mkdir -p /data && chown runner /data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY runner ./runner
COPY api ./api
COPY migrations ./migrations
RUN pip install . && rm -rf /app/*

USER runner
WORKDIR /home/runner
EXPOSE 8080
CMD ["runner", "serve", "--host", "0.0.0.0"]
