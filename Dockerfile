# One image for every kala-celery process: the API (granian), beat, worker and Flower.
#   docker build -t kala-celery .
#   docker run -e KALA_API_TOKEN=... -e KALA_DATABASE_URL=... -e KALA_BROKER_URL=... kala-celery
# Shell jobs run inside the worker container: build FROM this image to add the tools they need.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY kala_celery ./kala_celery
RUN pip install ".[postgres,server]" \
    && cd / && rm -rf /src

RUN useradd --system --user-group --uid 10001 --home-dir /var/lib/kala --create-home \
        --shell /usr/sbin/nologin kala
USER kala
WORKDIR /var/lib/kala
ENV KALA_DATA_DIR=/var/lib/kala

EXPOSE 8000 5555
# The API alone; it refuses a non-loopback address unless KALA_API_TOKEN is set.
# docker-compose.yml gives each service its own command.
CMD ["kala-celery", "api", "--interface", "0.0.0.0", "--port", "8000"]
