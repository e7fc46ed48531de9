"""SAE training throughput on a recorded activation cache: tokens/s (wall) and tokens per CPU-second, per site.

    python benchmarks/sae_train.py runs/<sae run>/activations [seconds]

Trains the default TopK SAE (2048 features, k 64, batch 256) on each cached site for a fixed wall time, in one
process, sites interleaved over three repeats; prints medians with `uptime`'s load beside them. CPU seconds make the
figure comparable across machine loads: tokens per CPU-second × 900 × cores = the tokens a 15-minute budget buys.
"""

import os
import statistics
import sys
import tempfile
import time

from sparsescope.sae.activations import ActivationCache, shuffled_batches
from sparsescope.sae.train import SAETrainConfig, train


def main() -> None:
    cache = ActivationCache.open(sys.argv[1])
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
    results: dict[str, list[tuple[float, float]]] = {site: [] for site in cache.sites}
    for _ in range(3):
        for site in cache.sites:
            cfg = SAETrainConfig(site=site, train_tokens=10**9, max_minutes=seconds / 60)
            cpu = time.process_time()
            with tempfile.TemporaryDirectory() as tmp:
                r = train(shuffled_batches(cache.array(site), cfg.batch_size), cache.meta["dims"][site], cfg,
                          f"{tmp}/sae", {})
            results[site].append((r.tokens_per_s, r.tokens / (time.process_time() - cpu)))
    print(f"load average {os.getloadavg()[0]:.1f} / {os.getloadavg()[1]:.1f} / {os.getloadavg()[2]:.1f}, "
          f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}, {seconds:.0f} s per repeat")
    for site, rows in results.items():
        wall = statistics.median(r[0] for r in rows)
        cpu = statistics.median(r[1] for r in rows)
        print(f"{site} (d_in {cache.meta['dims'][site]}): {wall:.0f} tok/s wall, {cpu:.0f} tok per CPU-second")


if __name__ == "__main__":
    main()
