# The GPU-node image: CUDA PyTorch, DeepSpeed with its fused kernels prebuilt, flash-attn.
#   docker build -t arctic-pretrain .
#   docker run --gpus all --ipc=host -v /data:/data arctic-pretrain \
#       deepspeed --num_gpus 8 launch/train.py experiment=snowcoder_1b3 data.root=/data run_dir=/data/runs/snowcoder
FROM nvcr.io/nvidia/pytorch:25.01-py3

ENV PIP_NO_CACHE_DIR=1 \
    TORCH_CUDA_ARCH_LIST="8.0 9.0" \
    DS_BUILD_FUSED_ADAM=1 \
    DS_BUILD_CPU_ADAM=1 \
    DS_BUILD_UTILS=1 \
    MAX_JOBS=16 \
    HF_HUB_ENABLE_HF_TRANSFER=0

WORKDIR /opt/arctic-pretrain
COPY pyproject.toml README.md ./
COPY arctic_pretrain ./arctic_pretrain
# The base image's torch stays (pip sees it satisfies the range); deepspeed compiles its ops against it.
RUN pip install --no-build-isolation "deepspeed>=0.16,<0.20" \
 && pip install --no-build-isolation "flash-attn>=2.6" \
 && pip install -e ".[gpu,data,eval,slurm,dev]" \
 && python -c "import deepspeed, flash_attn, transformers; print(deepspeed.__version__, flash_attn.__version__)"
COPY conf ./conf
COPY launch ./launch
COPY benchmarks ./benchmarks
COPY tests ./tests

CMD ["bash"]
