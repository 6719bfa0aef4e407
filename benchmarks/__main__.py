"""``make bench``: run every benchmark in this folder."""

from benchmarks import (
    bench_attribution,
    bench_batches,
    bench_composition,
    bench_hooked_forward,
    bench_information_flow,
    bench_large_checkpoints,
    bench_patching,
    bench_task_circuit,
)

if __name__ == "__main__":
    bench_hooked_forward.main()
    bench_composition.main()
    bench_information_flow.main()
    bench_batches.main()
    bench_attribution.main()
    bench_patching.main()
    bench_task_circuit.main()
    bench_large_checkpoints.main()
