"""The benchmarks: the FOMO-Synth benchmark (`fomo_synth`) and its resumable steps and report, the feature
benchmark, throughput and training-step timing, and the GPU campaign that runs them on a short loan."""
