"""Many GPUs: `mfu run` under torchrun (or `--nproc N`), one rank per GPU, rank 0 writing the run.

launch.py   what torchrun told this process (rank, local rank, world size, rendezvous), and
            starting torchrun for `--nproc`
group.py    the data plane: the process group the worker's cases use (NCCL on CUDA, gloo on CPU),
            and the store-based exchanges that agree on what every rank does next
"""
