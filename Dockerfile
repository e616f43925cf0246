# nucseg on a CUDA PyTorch base. Build:  docker build -t nucseg .
# Run:    docker run --gpus all -v /path/to/data:/data -v $PWD/outputs:/opt/nucseg/outputs nucseg \
#           model=unetpp data=dsb2018 trainer=gpu trainer.precision=16-mixed
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 NUCSEG_DATA_DIR=/data
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/nucseg

# The base image's torch/torchvision pair satisfies pyproject's ranges and is kept as is.
COPY pyproject.toml README.md ./
COPY nucseg nucseg
COPY conf conf
RUN pip install --no-cache-dir -e ".[pretrained]"

VOLUME ["/data", "/opt/nucseg/outputs"]
ENTRYPOINT ["python", "-m", "nucseg.train"]
