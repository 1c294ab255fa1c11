"""`journeys bench`: the benchmark harness (issue 5).

Benchmarks are measurements, not timed tests: this package generates N demo
events (cached per N and seed), runs each selected measurement once in the same
run, prints one table and writes `bench/results.json` with the machine, the
package versions, every figure and each target's verdict. Work that opens an
embedded ClickHouse (chDB) runs in child processes: chDB holds one data path per
process, and a child's own peak RSS is the honest memory figure.

Modules:
- `harness`: `BenchContext` (shared with the stream measurements), the runner,
  targets, the table and results.json;
- `dataset`: demo generation for N events, cached;
- `child`: runs a measurement step in a child process and reads back its JSON
  and its resource usage;
- `embedded`: `journeys run` end to end beside the read-and-decode limit;
- `queries`: the analyst views on a touchpoint table replicated to 10M rows;
- `peer`: pm4py's directly-follows graph and variants on the same event log;
- `stream` (when present): the Kafka/Faust throughput and latency measurements.

docs/bench.md says what each figure means and what is fair about it.
"""
