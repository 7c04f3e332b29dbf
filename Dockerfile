# One image for every service of docker-compose.yml (migrate, web, worker, beat, feed).
# Build stage: the production dependencies of uv.lock (requirements.lock, hash-checked) in a venv.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /venv
COPY requirements.lock /tmp/requirements.lock
RUN /venv/bin/pip install --require-hashes -r /tmp/requirements.lock

# Runtime stage: the venv and the app's files (.dockerignore keeps out .venv, .git, node_modules,
# databases, tests and docs), static files collected, running as an unprivileged user.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=/app PATH=/venv/bin:$PATH
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin livefolio
WORKDIR /app
COPY --from=build /venv /venv
COPY . .
RUN DJANGO_SECRET_KEY=build python manage.py collectstatic --noinput
USER livefolio
EXPOSE 8000
# The web service's health (database and Redis reachable); docker-compose.yml turns it off for
# the services that serve no HTTP.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz?check=database&check=redis', timeout=4).status != 200)"]
CMD ["python", "-m", "streaming.serve", "-b", "0.0.0.0", "-p", "8000", "portfolio.asgi:application"]
