# One image for every role: controller, node (worker) and the CLI.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# bubblewrap: each run's sandbox (see docs/security.md); util-linux's setpriv comes with the base image
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 cluster
WORKDIR /app
COPY pyproject.toml README.md ./
COPY cluster ./cluster
COPY tasks ./tasks
RUN pip install --no-cache-dir ".[kubernetes]"
USER cluster
ENTRYPOINT ["cluster"]
CMD ["--help"]
