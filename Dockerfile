# Two images from one file, chosen with the VARIANT build argument:
#   docker build -t arctic-pretrain .                              GPU nodes (the default): CUDA PyTorch,
#                                                                  DeepSpeed with its fused ops prebuilt, flash-attn
#   docker run --gpus all --ipc=host -v /data:/data arctic-pretrain \
#       deepspeed --num_gpus 8 launch/train.py experiment=snowcoder_1b3 data.root=/data output_dir=/data/runs/snowcoder
#   docker build --build-arg VARIANT=cpu -t arctic-pretrain:cpu .  any machine: the quick start and the test suite,
#                                                                  installed by .ci/install: the README's install lines
#   docker run --rm arctic-pretrain:cpu python launch/pipeline.py experiment=demo
#   docker run --rm arctic-pretrain:cpu python -m pytest -q
ARG VARIANT=gpu

FROM nvcr.io/nvidia/pytorch:25.01-py3 AS gpu
ENV PIP_NO_CACHE_DIR=1 \
    TORCH_CUDA_ARCH_LIST="8.0 9.0" \
    DS_BUILD_FUSED_ADAM=1 \
    DS_BUILD_CPU_ADAM=1 \
    DS_BUILD_UTILS=1 \
    MAX_JOBS=16 \
    HF_HUB_ENABLE_HF_TRANSFER=0
WORKDIR /opt/arctic-pretrain
COPY pyproject.toml README.md constraints.txt ./
COPY arctic_pretrain ./arctic_pretrain
# The base image's torch stays (pip sees it satisfies the range); deepspeed compiles its ops against it.
# constraints.txt pins everything else as CI tests it (flash-attn and the gpu extra are not in the lock).
RUN pip install --no-build-isolation -c constraints.txt deepspeed \
 && pip install --no-build-isolation "flash-attn>=2.6,<3" \
 && pip install -c constraints.txt -e ".[gpu,data,eval,slurm,dev]" \
 && python -c "import deepspeed, flash_attn, transformers; print(deepspeed.__version__, flash_attn.__version__)"

FROM python:3.11-slim-bookworm AS cpu
# build-essential: the C headers the demo corpus is cut from, and a compiler for DeepSpeed's JIT ops; git: provenance;
# chromium: the headless browser tests/report screenshots the run report with
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential chromium git \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
    ARCTIC_PRETRAIN_CACHE=/opt/arctic-pretrain/.cache
WORKDIR /opt/arctic-pretrain
COPY pyproject.toml README.md constraints.txt ./
COPY .ci/install ./.ci/install
COPY arctic_pretrain ./arctic_pretrain
RUN .ci/install

# hadolint ignore=DL3006
FROM ${VARIANT}
WORKDIR /opt/arctic-pretrain
COPY conf ./conf
COPY launch ./launch
COPY benchmarks ./benchmarks
COPY tests ./tests
CMD ["bash"]
