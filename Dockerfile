# One image for every process: Rasa server, action server, scheduler, nurse console.
# The model is trained at build time so containers start without training.
FROM python:3.10-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    RASA_TELEMETRY_ENABLED=false \
    SQLALCHEMY_SILENCE_UBER_WARNING=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1001 hospital

WORKDIR /app
COPY pyproject.toml constraints.txt ./
# Install dependencies first (cached layer), then the project itself.
RUN pip install --upgrade "pip>=23,<25" \
    && mkdir -p bot actions channels nlu scheduler sandbox console \
    && for p in bot actions channels nlu scheduler sandbox console; do touch $p/__init__.py; done \
    && pip install -c constraints.txt -e . \
    && rm -rf bot actions channels nlu scheduler sandbox console

COPY --chown=hospital:hospital . .
RUN pip install -c constraints.txt --no-deps -e . \
    && rasa train --data data/nlu data/dialogue --fixed-model-name current --out models \
    && python -m bot.triage.departments \
    && rm -rf .rasa \
    && mkdir -p var && chown -R hospital:hospital /app

USER hospital
EXPOSE 5005 5055 5077 5088
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s CMD curl -fsS http://127.0.0.1:5005/status || exit 1

# Default: the Rasa server with the channels. Override the command for the other processes:
#   docker run IMAGE rasa run actions --actions actions
#   docker run IMAGE python -m scheduler
#   docker run -e CONSOLE_SECRET=... IMAGE python -m console serve --host 0.0.0.0
CMD ["sh", "-c", "python -m bot.db upgrade && python -m bot.seed --if-empty && rasa run --model models/current.tar.gz --port 5005 --endpoints endpoints.yml --credentials credentials.yml"]
