# Settings for every kernel of a student's Jupyter server (POSIX sh, sourced: it only exports).
# Binder: the repository's `start` sources it at each launch. Hub image: docker/Dockerfile installs it as
# /usr/local/bin/before-notebook.d/ftlab-env.sh, which the Jupyter Docker Stacks source at start.
# Variables already set (by the hub's spawner, say) are kept.

# Pre-trained weights: the course backbone that ships with the course (README, "FTLAB_WEIGHTS").
# A Binder session starts from a fresh image, so `auto` would download ImageNet weights at every launch;
# a student can still choose per notebook with `%env FTLAB_WEIGHTS=imagenet` before the model is built.
export FTLAB_WEIGHTS="${FTLAB_WEIGHTS:-course}"

# Math threads: one per CPU this container may use (its cgroup CPU quota), not one per core of the host.
# PyTorch, TensorFlow and BLAS start a thread per core they see; on a shared node with a CPU limit those
# threads spin-wait against each other (PyTorch lesson on 2 busy cores: 390 s instead of 45 s).
ftlab_cpus() {
    ftlab_root=${FTLAB_CGROUP_ROOT:-/sys/fs/cgroup}
    ftlab_quota='' ftlab_period=''
    if [ -r "$ftlab_root/cpu.max" ]; then                       # cgroup v2: "max 100000" or "150000 100000"
        read -r ftlab_quota ftlab_period < "$ftlab_root/cpu.max"
    elif [ -r "$ftlab_root/cpu/cpu.cfs_quota_us" ]; then        # cgroup v1: -1 when unlimited
        ftlab_quota=$(cat "$ftlab_root/cpu/cpu.cfs_quota_us")
        ftlab_period=$(cat "$ftlab_root/cpu/cpu.cfs_period_us")
    fi
    ftlab_n=$(nproc 2>/dev/null || echo 1)                      # nproc honours the CPU affinity (cpuset)
    case "$ftlab_quota" in
        ''|max|-*) ;;
        *) if [ "${ftlab_period:-0}" -gt 0 ]; then
               ftlab_q=$((ftlab_quota / ftlab_period))
               if [ "$ftlab_q" -lt 1 ]; then ftlab_q=1; fi
               if [ "$ftlab_q" -lt "$ftlab_n" ]; then ftlab_n=$ftlab_q; fi
           fi ;;
    esac
    echo "$ftlab_n"
    unset ftlab_root ftlab_quota ftlab_period ftlab_n ftlab_q
}
FTLAB_CPUS=$(ftlab_cpus)
export FTLAB_CPUS
unset -f ftlab_cpus
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$FTLAB_CPUS}"
export MKL_NUM_THREADS="${MKL_NUM_THREADS:-$FTLAB_CPUS}"
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-$FTLAB_CPUS}"
export TF_NUM_INTRAOP_THREADS="${TF_NUM_INTRAOP_THREADS:-$FTLAB_CPUS}"
export TF_NUM_INTEROP_THREADS="${TF_NUM_INTEROP_THREADS:-$FTLAB_CPUS}"
