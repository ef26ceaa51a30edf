#!/bin/bash
# K-fold cross-validation under SLURM: one array element per fold, each on its own node(s) and GPUs, torchrun
# inside (every rank trains the fold; rank 0 predicts its out-of-fold cases and writes fold_N/fold.json).
#
#   sbatch --array 0-4 scripts/slurm_cv.sh segmentation /shared/data/BraTS2021 /shared/runs/seg-cv 5 \
#       trainer.max_epochs=300
#   # when every element has finished (or: sbatch --dependency afterok:<array job id> ...):
#   medsight cv segmentation --data /shared/data/BraTS2021 --out /shared/runs/seg-cv --folds 5 --collect
#
# Arguments: task, data folder, cross-validation folder (a file system every node sees), number of folds,
# then key=value overrides. PROFILE (default gpu) picks the task profile. A requeued element resumes its fold
# where it stopped (fold_N/checkpoints/last.pt); a finished fold is not trained again. The fold assignment is
# dealt once into <cv folder>/folds.json: run one element first, or let the first to start write it (every
# element deals the same folds from the same groups and seed, so a race writes the same file).
# Rendezvous and threads as in scripts/slurm_train.sh.
#
#SBATCH --job-name=medsight-cv
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --output=%x-%A_%a.out
set -euo pipefail
TASK=${1:?task}; DATA=${2:?data folder}; CV=${3:?cv folder (shared file system)}; FOLDS=${4:?number of folds}
shift 4
FOLD=${SLURM_ARRAY_TASK_ID:?submit as an array: sbatch --array 0-$((FOLDS - 1)) ...}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
GPUS=${SLURM_GPUS_ON_NODE:-$(nvidia-smi -L | wc -l)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( SLURM_CPUS_PER_TASK / GPUS ))}
# each element's own rendezvous port, so two folds sharing a node do not meet
PORT=$(( ${MASTER_PORT:-29500} + FOLD ))
srun torchrun --nnodes "$SLURM_NNODES" --nproc_per_node "$GPUS" \
    --rdzv_backend c10d --rdzv_endpoint "$HEAD:$PORT" --rdzv_id "${SLURM_ARRAY_JOB_ID}_${FOLD}" \
    -m medsight cv "$TASK" --data "$DATA" --out "$CV" --folds "$FOLDS" --fold "$FOLD" \
    --profile "${PROFILE:-gpu}" --resamples 0 "$@"
