# hubmerge web app: a Hugging Face Space (Docker SDK, port 7860) or plain `docker run`.
#   docker build -t hubmerge .
#   docker run -p 7860:7860 -v hubmerge-data:/data hubmerge              # real Hub
#   docker run -p 7860:7860 -e HUBMERGE_DEMO=1 hubmerge                   # offline demo
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HUBMERGE_HOST=0.0.0.0 \
    HUBMERGE_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False \
    HF_HUB_DISABLE_TELEMETRY=1

# Spaces run the container as user 1000; so does plain docker run.
RUN useradd --create-home --uid 1000 user \
    && mkdir -p /data && chown user:user /data
WORKDIR /home/user/app

# CPU wheels of torch keep the image small; a GPU Space can swap the index URL.
COPY --chown=user:user pyproject.toml README.md ./
COPY --chown=user:user merging ./merging
COPY --chown=user:user evaluation ./evaluation
COPY --chown=user:user app ./app
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu ".[app,eval]"

USER user
ENV HOME=/home/user \
    HF_HOME=/data/.huggingface
# The data dir is /data/hubmerge when /data is writable (a Space's persistent storage or a
# mounted volume), else ~/.cache/hubmerge inside the container. HF_HOME falls back likewise.
RUN mkdir -p /home/user/.cache
EXPOSE 7860
CMD ["sh", "-c", "[ -w /data ] || export HF_HOME=$HOME/.cache/huggingface; exec python -m app"]
