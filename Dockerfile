# hubmerge web app: a Hugging Face Space (Docker SDK, port 7860) or plain `docker run`.
#   docker build -t hubmerge .
#   docker run -p 7860:7860 -v hubmerge-data:/data hubmerge              # real Hub
#   docker run -p 7860:7860 -e HUBMERGE_DEMO=1 hubmerge                   # offline demo
# Build arguments (the defaults are what a Space builds):
#   BASE_IMAGE   a Debian-like image with python3 (>= 3.10) and its venv module
#   TORCH        what pip installs torch from: a requirement, or a wheel file
#   TORCH_INDEX  the index TORCH comes from; empty: pip's own configuration
# scripts/container-check builds this same file with podman from a local base image and wheel.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG TORCH=torch
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH \
    HUBMERGE_HOST=0.0.0.0 \
    HUBMERGE_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False \
    HF_HUB_DISABLE_TELEMETRY=1

# Spaces run the container as user 1000; so does plain docker run.
RUN useradd --create-home --uid 1000 user \
    && mkdir -p /data && chown user:user /data
# A venv works the same on every base (a distribution's own python refuses system-wide
# installs, PEP 668); PATH puts its python and pip first.
RUN python3 -m venv /opt/venv
# torch first and on its own, from CPU wheels: the image stays small (pip's default torch is
# the CUDA build with gigabytes of nvidia packages); a GPU Space can swap TORCH_INDEX.
RUN pip install ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "$TORCH"
WORKDIR /home/user/app
COPY --chown=user:user pyproject.toml README.md ./
COPY --chown=user:user merging ./merging
COPY --chown=user:user evaluation ./evaluation
COPY --chown=user:user app ./app
RUN pip install ".[app,eval]"
# Compile the numba merge loops once, into the package's cache (read by every later start;
# numba recompiles by itself on a CPU that the cached code does not fit): the first TIES or
# DARE merge of a fresh container would otherwise wait ~15-30 s for them.
RUN python -m merging.warm_loops

USER user
ENV HOME=/home/user \
    HF_HOME=/data/.huggingface
# The data dir is /data/hubmerge when /data is writable (a Space's persistent storage or a
# mounted volume), else ~/.cache/hubmerge inside the container. HF_HOME falls back likewise.
RUN mkdir -p /home/user/.cache
EXPOSE 7860
CMD ["sh", "-c", "[ -w /data ] || export HF_HOME=$HOME/.cache/huggingface; exec python -m app"]
