# nucseg in a container, on the tested dependency pins (requirements/constraints.txt). PyPI's Linux torch wheels
# carry their CUDA libraries, so the same image trains on a CPU or, with --gpus all, on NVIDIA GPUs.
#
# Build:  docker build -t nucseg .
# Train:  docker run --gpus all --shm-size=8g -v /path/to/data:/data -v $PWD/outputs:/work/outputs \
#           -v nucseg-cache:/work/.cache nucseg train model=unetpp data=dsb2018 trainer=gpu
# Predict: docker run -v $PWD:/work nucseg predict ckpt_path=outputs/.../model.ckpt input=images output=masks
#
# --shm-size: the GPU presets load with 8 worker processes that hand batches over through /dev/shm; Docker's
# 64 MB default makes them fail with "bus error" (the CPU presets load in the main process and need no more).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    NUCSEG_DATA_DIR=/data NUCSEG_ROOT=/work
# libgl1 / libglib2.0-0: OpenCV (albumentations) needs them at import; Debian's stable versions, not pinned
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/nucseg
COPY requirements/constraints.txt requirements/constraints.txt
COPY pyproject.toml setup.py README.md LICENSE ./
COPY nucseg nucseg
COPY conf conf
# a regular (not editable) install: the configs travel inside the package
RUN pip install -c requirements/constraints.txt ".[pretrained,export]"

# outputs/ and the decode cache under NUCSEG_ROOT; the data read in place from /data
WORKDIR /work
VOLUME ["/data", "/work/outputs", "/work/.cache"]
ENTRYPOINT ["nucseg"]
CMD ["--help"]
