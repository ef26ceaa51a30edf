#!/bin/bash
# Multi-node training under SLURM: one torchrun per node, torchrun starting one process per GPU.
#
#   sbatch --nodes 2 scripts/slurm_train.sh segmentation /shared/data/BraTS2021 /shared/runs/seg-2node \
#       trainer.max_epochs=300
#
# Arguments after the run folder are key=value overrides. PROFILE (default gpu) picks the profile of a new
# run; a run folder that already holds checkpoints/last.pt is resumed (a requeued job) with the overrides.
#
# Where things must live:
# - the data and the run folder (argument 3) on a file system every node sees (NFS, Lustre, GPFS): rank 0
#   writes config.yaml, metrics.jsonl and checkpoints/ there, and --resume reads them from any node;
# - data.cache=disk: data.cache_dir defaults to <run folder>/cache, shared too. Each rank caches only its own
#   partition of the records (the shards do not overlap), so ranks never write the same cache file. A
#   node-local SSD is faster: data.cache_dir=/local/scratch/$SLURM_JOB_ID (then a resumed job on other
#   nodes rebuilds it);
# - data.cache=memory: each rank holds its own partition in RAM: size --mem for a node's ranks together.
#
# Rendezvous: c10d on the first node of the allocation, port 29500 (MASTER_PORT to change); the job id
# names the rendezvous, so two jobs on the same nodes do not meet. Under torchrun each process gets
# OMP_NUM_THREADS=1 unless set: set it to cpus-per-task / GPUs per node for the data-loading CPU side.
#
#SBATCH --job-name=medsight
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail
TASK=${1:?task}; DATA=${2:?data folder}; RUN=${3:?run folder (shared file system)}; shift 3
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
GPUS=${SLURM_GPUS_ON_NODE:-$(nvidia-smi -L | wc -l)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( SLURM_CPUS_PER_TASK / GPUS ))}
# resume when the run folder already holds a checkpoint (a requeued or continued job), else start
if [ -f "$RUN/checkpoints/last.pt" ]; then START=(--resume "$RUN")
else START=(--data "$DATA" --out "$RUN" --profile "${PROFILE:-gpu}"); fi
srun torchrun --nnodes "$SLURM_NNODES" --nproc_per_node "$GPUS" \
    --rdzv_backend c10d --rdzv_endpoint "$HEAD:${MASTER_PORT:-29500}" --rdzv_id "$SLURM_JOB_ID" \
    -m medsight train "$TASK" "${START[@]}" "$@"
