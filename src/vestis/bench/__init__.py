"""Speed benchmarks (`vestis bench extract | search | query | serve`; PROTOCOLS.md section 5).

One module per benchmark, and the parts they share (import them directly; this package imports nothing):
  extract   bench_extract: images/s of the trunk paths and of end-to-end extraction
  search    bench_search: manipulation + index search latency and recall at catalogue scale, the speed goal
  gallery   augmented_gallery: the 200,000-item gallery `search` builds from a run's own embeddings
  query     bench_query: one manipulation query through the engine on a built index
  serve     bench_serve: HTTP load test of `vestis serve` on loopback
  index     bench_index: the index kinds on synthetic clustered vectors (`python -m vestis.bench.index`)
  timing    time_calls -> Timings: repeated passes, median over passes of p50 / p99
  recall    exact_scores, recall_at_k: recall@k (plain and with ties) against exact search
  adapter   BenchRun: every engine / model / training call the benchmarks make, in one place
The machine a figure was measured on is `vestis.machine` (shared with the evaluation reports).
"""
